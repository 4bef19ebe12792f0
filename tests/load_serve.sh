#!/bin/sh
# load_serve.sh QWEN_IMAGE MODEL_DIR [C R] — C concurrent clients × R
# requests each (default 8 × 5) of POST /v1/images/generations against a
# server with --queue 4 on the loopback address with the tiny model.
# Reports completed / rejected (429) counts, p50 / p99 latency of the
# completed ones, and the server's RSS before and after. Fails when a request
# gets anything but 200 or 429, when nothing completes or nothing is
# rejected, when the RSS grows by more than RSS_BOUND_MB (default 64), or
# when the server's log has a sanitizer report (run it on an ASan build to
# check for leaks: the server exits cleanly at the end, so LeakSanitizer runs).
set -u
BIN=$1
MODEL=$2
C=${3:-8}
R=${4:-5}
BOUND=${RSS_BOUND_MB:-64}
. "$(dirname "$0")/serve_lib.sh"
serve_start server "$MODEL" --threads 2 --queue 4
rss() { awk '/VmRSS/ {print int($2 / 1024)}' /proc/$PID/status; }
BODY='{"prompt":"load","size":"32x32","steps":2,"seed":1}'
# one warm round first, so the before figure includes what a first request allocates for good
curl -s --max-time 30 -o /dev/null -d "$BODY" "http://127.0.0.1:$PORT/v1/images/generations"
before=$(rss)
t0=$(date +%s.%N)
for c in $(seq 1 $C); do
    (for r in $(seq 1 $R); do
        curl -s --max-time 60 -o /dev/null -w '%{http_code} %{time_total}\n' -d "$BODY" \
            "http://127.0.0.1:$PORT/v1/images/generations"
    done >"$T/client$c") &
    clients="${clients:-} $!"
done
wait $clients
t1=$(date +%s.%N)
after=$(rss)
cat "$T"/client* >"$T/all"
done_n=$(grep -c '^200 ' "$T/all"); rej=$(grep -c '^429 ' "$T/all"); other=$(grep -vc '^200 \|^429 ' "$T/all")
grep '^200 ' "$T/all" | awk '{print $2}' | sort -n >"$T/lat"
pct() { awk -v p=$1 '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; if (NR) printf "%.3f", a[i]; else print "-"}' "$T/lat"; }
echo "load: $C clients x $R requests in $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s: completed $done_n, rejected (429) $rej, other $other"
echo "latency of completed: p50 $(pct 50) s, p99 $(pct 99) s"
echo "server RSS: before $before MiB, after $after MiB (bound +$BOUND MiB)"
serve_stop INT; rc=$?
[ "$other" -eq 0 ] || { echo "FAIL - $other answers other than 200/429"; grep -v '^200 \|^429 ' "$T/all" | head; fails=1; }
[ "$done_n" -gt 0 ] && [ "$rej" -gt 0 ] || { echo "FAIL - expected some completed and some rejected"; fails=1; }
[ $((after - before)) -le "$BOUND" ] || { echo "FAIL - RSS grew by $((after - before)) MiB"; fails=1; }
[ $rc -eq 0 ] || { echo "FAIL - server exit status $rc"; fails=1; }
if grep -q "Sanitizer\|runtime error:" "$T/server.log"; then
    echo "FAIL - sanitizer report:"; grep -A30 "Sanitizer\|runtime error:" "$T/server.log" | head -40; fails=1
fi
[ $fails -eq 0 ] && echo "ok - load test"
exit $fails

#!/bin/sh
# test_serve_nginx.sh QWEN_IMAGE MODEL_DIR — scripts/serve-nginx.conf on
# loopback: nginx fronting two `qwen-image serve` processes; requests spread
# over both; async job ids found through either; one process stopped
# mid-run: its running job's client gets a clear JSON error, the other keeps
# serving. Exits 77 (skipped) without nginx.
set -u
BIN=$1
MODEL=$2
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "skip: no nginx"; exit 77; }
CONF=$(dirname "$0")/../scripts/serve-nginx.conf
. "$(dirname "$0")/serve_lib.sh"
serve_start A "$MODEL" --threads 1 --max-steps 1000; PID_A=$PID; PORT_A=$PORT
serve_start B "$MODEL" --threads 1 --max-steps 1000; PID_B=$PID; PORT_B=$PORT
LB=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed "s/127.0.0.1:8081/127.0.0.1:$PORT_A/; s/127.0.0.1:8082/127.0.0.1:$PORT_B/; s/listen 127.0.0.1:8080/listen 127.0.0.1:$LB/; \
     s|^http {|master_process off; pid $T/nginx.pid; error_log $T/nginx-error.log; http { access_log $T/nginx-access.log; \
     client_body_temp_path $T; proxy_temp_path $T; fastcgi_temp_path $T; uwsgi_temp_path $T; scgi_temp_path $T;|" \
    "$CONF" >"$T/nginx.conf"
"$NGINX" -p "$T" -c "$T/nginx.conf" -g 'daemon off;' 2>"$T/nginx.out" &
echo $! >>"$T/pids"
for i in $(seq 1 50); do curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$LB/health" && break; sleep 0.1; done
L="http://127.0.0.1:$LB"
gen() { curl -s --max-time 60 -o "$T/body" -w '%{http_code}' -d "$1" "$L/v1/images/generations"; }

# spread: two at a time, three rounds; both instances complete some
for r in 1 2 3; do
    gen '{"prompt":"spread","size":"32x32","steps":20,"seed":1}' >"$T/s1" &
    g1=$!
    curl -s --max-time 60 -o /dev/null -w '%{http_code}' -d '{"prompt":"spread","size":"32x32","steps":20,"seed":2}' \
        "$L/v1/images/generations" >"$T/s2"
    wait $g1
    [ "$(cat "$T/s1")$(cat "$T/s2")" = 200200 ] || bad "round $r: $(cat "$T/s1") $(cat "$T/s2")"
done
a=$(curl -s "http://127.0.0.1:$PORT_A/health" | jq .completed); b=$(curl -s "http://127.0.0.1:$PORT_B/health" | jq .completed)
[ "$a" -gt 0 ] && [ "$b" -gt 0 ] && ok "requests spread over both instances (A $a, B $b)" || bad "not spread: A $a, B $b"

# async jobs: the id is found through the balancer whichever instance has it
ids=""
for i in 1 2 3 4; do ids="$ids $(curl -s -d '{"prompt":"j","size":"32x32","steps":2}' "$L/v1/jobs" | jq -r .id)"; done
n=0
for id in $ids; do [ "$(curl -s -o /dev/null -w '%{http_code}' "$L/v1/jobs/$id")" = 200 ] && n=$((n + 1)); done
[ $n = 4 ] && ok "4/4 job ids answered through nginx" || bad "$n/4 job ids answered"

# response_format url through the balancer: the link names the balancer, and fetching it through
# the balancer finds the instance holding the image (404 from the other → the next is asked)
n=0
for i in 1 2 3 4; do
    url=$(curl -s --max-time 60 -d '{"prompt":"u","size":"32x32","steps":1,"response_format":"url"}' \
        "$L/v1/images/generations" | jq -r '.data[0].url')
    case $url in "$L/v1/files/"*) [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] && n=$((n + 1)) ;; esac
done
[ $n = 4 ] && ok "4/4 image URLs name the balancer and are fetched through it" || bad "$n/4 image URLs fetched ($url)"

# stop the instance running a long job: its client gets a clear error, the other serves on
curl -s --max-time 60 -o "$T/long" -w '%{http_code}' -d '{"prompt":"long","size":"32x32","steps":1000}' \
    "$L/v1/images/generations" >"$T/long.status" &
LC=$!
for i in $(seq 1 100); do
    ra=$(curl -s "http://127.0.0.1:$PORT_A/health" | jq -r .running); rb=$(curl -s "http://127.0.0.1:$PORT_B/health" | jq -r .running)
    [ "$ra" != null ] || [ "$rb" != null ] && break; sleep 0.1
done
if [ "$ra" != null ]; then VICTIM=$PID_A; else VICTIM=$PID_B; fi
kill -INT $VICTIM; wait $VICTIM
wait $LC
st=$(cat "$T/long.status"); msg=$(jq -r .error.message "$T/long" 2>/dev/null)
[ "$st" = 503 ] && [ -n "$msg" ] && [ "$msg" != null ] && ok "the stopped instance's client got $st: $msg" \
    || bad "stopped instance's client: status $st, body $(head -c 200 "$T/long")"
okn=0
for i in 1 2 3 4; do [ "$(gen '{"prompt":"after","size":"32x32","steps":2}')" = 200 ] && okn=$((okn + 1)); done
[ $okn = 4 ] && ok "4/4 requests served by the remaining instance" || bad "$okn/4 served after the stop"
kill -QUIT $(cat "$T/nginx.pid") 2>/dev/null
echo "failures: $fails"
exit $fails

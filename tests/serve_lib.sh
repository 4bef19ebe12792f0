# serve_lib.sh — what the server test scripts share; sourced, not run:
#     BIN=$1; MODEL=$2; . "$(dirname "$0")/serve_lib.sh"
# Gives a scratch folder $T, removed at exit after every process listed in
# $T/pids is killed (servers, and whatever else a script appends there);
# ok / bad, which print a check's line and count failures in $fails; and
# serve_start / serve_stop for `$BIN serve` on a free loopback port.
T=$(mktemp -d)
trap 'for p in $(cat "$T/pids" 2>/dev/null); do kill -KILL $p 2>/dev/null; done; rm -rf "$T"' EXIT
fails=0
ok() { echo "ok - $1"; }
bad() { echo "FAIL - $1"; fails=$((fails + 1)); }

# serve_start NAME MODEL [ARGS...]: `$BIN serve -m MODEL --port 0 ARGS` in
# the background, its output in $T/NAME.log; waits (60 s at most) for its
# "serving on" line and sets PORT and PID. A server that exits or does not
# start in time: its log, a FAIL line, and the script exits 1.
serve_start() {
    name=$1; model=$2; shift 2
    : >"$T/$name.log" # the server writes it in the background: sed must find it at once
    "$BIN" serve -m "$model" --port 0 "$@" >"$T/$name.log" 2>&1 &
    PID=$!
    echo $PID >>"$T/pids"
    for i in $(seq 1 600); do
        PORT=$(sed -n 's|.*serving on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$T/$name.log")
        [ -n "$PORT" ] && return 0
        kill -0 $PID 2>/dev/null || break
        sleep 0.1
    done
    cat "$T/$name.log"; echo "FAIL - server $name did not start"; exit 1
}

# serve_stop [SIGNAL]: sends the last started server SIGNAL (TERM: drain the
# running job; INT: stop now) and waits for it; returns its exit status.
serve_stop() {
    kill -"${1:-TERM}" $PID
    wait $PID
}

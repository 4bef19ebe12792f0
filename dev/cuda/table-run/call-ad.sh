#!/bin/sh
# Run AD (seventh session): the suite's checks after the GEMM tuning, the shared-memory softmax and the merges, then
# bf16 and fp8 rows, the same with the tuning off, and diffusers beside them — in the background, cut at LIMIT
# seconds, the logs packed into $OUT/logs.tgz whatever happens.
#   there:  LIMIT=540 sh dev/cuda/table-run/call-ab.sh
set -u
T=$OUT/t
mkdir -p "$T"
(
  OUT=$T sh dev/cuda/table-run/run.sh checks
  BENCH_LIMIT=90 OUT=$T sh dev/cuda/table-run/run.sh ours tune0 peer
) >"$T/run.log" 2>&1 &
p=$!
i=0
while kill -0 $p 2>/dev/null && [ $i -lt "${LIMIT:-540}" ]; do sleep 5; i=$((i + 5)); done
kill $p 2>/dev/null
cp "$T/summary.txt" "$OUT/summary.txt"
(cd "$T" && tar czf "$OUT/logs.tgz" .) && rm -rf "$T"
grep -v '^  ' "$OUT/summary.txt" | cut -c1-230 | tail -80

#!/bin/sh
# Run AD (seventh session): the suite's checks after the GEMM tuning, the shared-memory softmax and the merges, then
# bf16 and fp8 rows, the same with the tuning off, and diffusers beside them — in the background, cut at LIMIT
# seconds, the logs packed into $OUT/logs.tgz whatever happens.
#   there:  LIMIT=540 sh dev/cuda/table-run/call-ab.sh
set -u
. "$(dirname "$0")/../common.sh"
body() {
  OUT=$T sh dev/cuda/table-run/run.sh checks
  BENCH_LIMIT=90 OUT=$T sh dev/cuda/table-run/run.sh ours tune0 peer
}
dev_bounded "${LIMIT:-540}" body
grep -v '^  ' "$OUT/summary.txt" | cut -c1-230 | tail -80

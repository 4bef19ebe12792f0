#!/bin/sh
# 2026-12-04 (fifth session) call 1: `qwen-image bench --vram 8G / 6G / 3G` (Q4_K transformer, the bench's bf16
# text encoder), the transformer call and end to end from one set-up each, each beside hold_memory (all but the
# budget held with plain cudaMalloc). Logs under $OUT.
#   here:  QI_DIST_ARCHS=90a scripts/device-build.sh qwen-image hold_memory
#          tar cf - dist | xz -9 -T2 > devpack/c1.tar.xz        (carry devpack/c1.tar.xz)
set -u
[ -d dist ] || tar xJf devpack/c1.tar.xz
HELD_LIMIT=${HELD_LIMIT:-180} sh dev/cuda/vram-run/run.sh budgets
for f in "$OUT"/bench_q4_k_*.log; do
  echo "== $f"; grep -h 'beside\|memory plan\|1024x1024\|peak\|set up\|host→device' "$f" | cut -c1-400
done

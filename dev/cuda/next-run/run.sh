#!/bin/sh
# What the 2026-12-04 (third) session wrote but could not run (its device time was spent):
#   fp8   the cuBLASLt fp8 GEMM (off by default): its claims, the format fixtures with it on, and the
#         per-call time with it on and off (issue 12 item 3)
#   e2e   `qwen-image bench --only e2e`: end to end with the server's step previews beside without
#         (issue 13 item 3: < 3% of a step) and a repeated prompt from the prompt cache (item 4)
#   here:   QI_DIST_ARCHS=90a scripts/device-build.sh test_cuda_backend_caps test_formats qwen-image
#           mkdir -p devpack && tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/next-run/run.sh [fp8] [e2e]      (logs under $OUT; carry devpack)
set -u
OUT=${OUT:-/tmp/next-out}
mkdir -p "$OUT"
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_tiny_text_encoder
dev_link_source
for what in ${*:-fp8 e2e}; do
  case $what in
    fp8)
      dist/run.sh test_cuda_backend_caps >"$OUT/caps.log" 2>&1; note "caps: rc=$? $(tail -1 "$OUT/caps.log")"
      QI_CUDA_FP8_GEMM=1 dist/run.sh test_formats -d cuda >"$OUT/formats_fp8.log" 2>&1
      note "formats -d cuda, fp8 GEMM on: rc=$? $(tail -1 "$OUT/formats_fp8.log")"
      for v in 1 0; do
        QI_CUDA_FP8_GEMM=$v timeout 200 dist/run.sh qwen-image bench --type fp8 --only dit --runs 5 --warmup 2 \
          >"$OUT/dit_fp8_gemm$v.log" 2>&1
        note "bench fp8, QI_CUDA_FP8_GEMM=$v: rc=$?"; grep 'GEMM\|transformer call' "$OUT/dit_fp8_gemm$v.log" | tee -a "$OUT/summary.txt"
      done ;;
    e2e)
      timeout 300 dist/run.sh qwen-image bench --only e2e --runs 3 --warmup 1 >"$OUT/e2e.log" 2>&1
      note "bench e2e: rc=$?"; grep '^| end to end' "$OUT/e2e.log" | tee -a "$OUT/summary.txt" ;;
  esac
done

#!/bin/sh
# One device call: the GEMM tuning claim (test_cuda_backend_caps), the bf16 transformer call with tuning off and
# on (same machine, back to back), then the per-kernel profile of one call and one VAE decode (run.sh) — in the
# background, cut at LIMIT seconds, the logs packed into $OUT/logs.tgz whatever happens.
#   there:  LIMIT=500 sh dev/cuda/prof-run/tune-call.sh
set -u
. "$(dirname "$0")/../common.sh"
body() {
  timeout 120 dist/run.sh test_cuda_backend_caps >"$T/caps.log" 2>&1
  echo "caps: rc=$? $(grep -c PASS "$T/caps.log") pass lines; $(tail -1 "$T/caps.log")" >>"$T/summary.txt"
  grep -A5 "gemm_tuning" "$T/caps.log" >>"$T/summary.txt"
  for tune in 0 1; do
    QI_CUDA_GEMM_TUNE=$tune timeout 110 dist/run.sh qwen-image bench --runs 5 --warmup 1 --only dit --type ${TYPE:-bf16} \
      >"$T/dit-tune$tune.log" 2>&1
    echo "bench dit tune=$tune: rc=$?" >>"$T/summary.txt"
    grep -E '^\| (transformer call|GEMM alg)' "$T/dit-tune$tune.log" | cut -c1-260 >>"$T/summary.txt"
  done
  OUT=$T PROF_LIMIT=150 sh dev/cuda/prof-run/run.sh dit vae >>"$T/summary.txt" 2>&1
}
dev_bounded "${LIMIT:-500}" body
cut -c1-230 "$OUT/summary.txt" | head -150

#!/bin/sh
# The block GEMM (src/backend/cuda/cuda_block_gemm.cu) on the H200, first run: its claims, the ops table and
# the format fixtures with every GGUF linear through it, the crossover against the expansion per shape
# (bench --only gemm), then whole Q4_K transformer calls at three settings of QI_CUDA_BLOCK_GEMM_ROWS.
# Also re-checks what the seventh session left compile-checked (the GEMM tuning claims, the bf16 call).
# In the background, cut at LIMIT seconds, logs packed into $OUT/logs.tgz whatever happens.
#   here:   rm -rf dist && QI_DIST_ARCHS=90a scripts/device-build.sh
#           tar cf - dist | xz -T1 --lzma2=preset=9e,dict=512MiB > devpack/dist.tar.xz
#   there:  LIMIT=560 sh dev/cuda/block-gemm-run/call.sh [claims] [gemm] [dit] [startup]
#           (all four take more than one call's 10 minutes: claims gemm, then dit startup)
set -u
. "$(dirname "$0")/../common.sh"
STEPS=${*:-claims gemm dit}
run() { # run NAME TIMEOUT CMD...: the log as $T/NAME.log, a summary line with the exit code and the pass line
  _n=$1 _t=$2
  shift 2
  timeout "$_t" "$@" >"$T/$_n.log" 2>&1
  echo "$_n: rc=$? $(grep -E 'passed|failed|claims hold|^ok|FAIL' "$T/$_n.log" | tail -2 | tr '\n' ' ')" >>"$T/summary.txt"
}
body() {
  dev_unpack_dist
  dev_link_source
  dev_tiny_text_encoder
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv >"$T/gpu.txt" 2>&1
  for s in $STEPS; do
    case $s in
    claims)
      run caps 120 dist/run.sh test_cuda_backend_caps
      grep -E "block|tuned|FAIL" "$T/caps.log" | head -20 >>"$T/summary.txt"
      run kept 200 dist/run.sh test_cuda_kept_overlap
      grep -E "block GEMM|FAIL" "$T/kept.log" | head -6 >>"$T/summary.txt"
      run kernels 200 dist/run.sh test_cuda_kernels
      run ops 120 dist/run.sh test_backend_ops -b cuda
      run ops_block 120 env QI_CUDA_BLOCK_GEMM_ROWS=1000000 dist/run.sh test_backend_ops -b cuda
      run formats_block 200 env QI_CUDA_BLOCK_GEMM_ROWS=1000000 dist/run.sh test_formats -d cuda
      grep -E "rel|err|L2" "$T/formats_block.log" | head -12 >>"$T/summary.txt"
      ;;
    caps) # the backend's claims alone
      run caps 120 dist/run.sh test_cuda_backend_caps
      grep -E "block|FAIL" "$T/caps.log" | head -20 >>"$T/summary.txt"
      ;;
    gemm)
      for t in q4_k q8_0; do
        run "gemm_$t" 240 dist/run.sh qwen-image bench --only gemm --type "$t" --runs 5 --warmup 2
        grep "^| block GEMM" "$T/gemm_$t.log" | cut -d'|' -f3-5 >>"$T/summary.txt"
      done
      run gemm_q4_k_nosplit 240 env QI_CUDA_BLOCK_GEMM_SPLIT=0 dist/run.sh qwen-image bench --only gemm --type q4_k --runs 5 --warmup 2
      grep "^| block GEMM" "$T/gemm_q4_k_nosplit.log" | cut -d'|' -f3-4 | sed 's/^/nosplit /' >>"$T/summary.txt"
      ;;
    dit)
      for r in ${DIT_ROWS:-0 256 1000000}; do
        run "dit_q4_k_$r" 200 env QI_CUDA_BLOCK_GEMM_ROWS=$r dist/run.sh qwen-image bench --only dit --type q4_k --runs 5 --warmup 2
        grep -E "^\| transformer call \||GEMM path|overlapped" "$T/dit_q4_k_$r.log" | cut -c1-160 >>"$T/summary.txt"
      done
      [ "${DIT_NOHINT:-1}" = 1 ] && run dit_q4_k_256_nohint 200 env QI_CUDA_BLOCK_GEMM_ROWS=256 QI_CUDA_KEPT_OVERLAP=0 dist/run.sh qwen-image bench --only dit --type q4_k --runs 5 --warmup 2
      grep -E "^\| transformer call \||GEMM path" "$T/dit_q4_k_256_nohint.log" | cut -c1-160 >>"$T/summary.txt"
      run dit_bf16 200 dist/run.sh qwen-image bench --only dit --runs 5 --warmup 2
      grep -E "^\| transformer call \||tuning" "$T/dit_bf16.log" | cut -c1-200 >>"$T/summary.txt"
      ;;
    suite) # the CUDA suite three ways (default, QI_CUDA_GENERIC=1, compute_80 PTX: a dist built with QI_DIST_PTX80=1)
      OUT=$T/suite sh dev/cuda/portable-run/run.sh default generic ptx80 >"$T/suite.log" 2>&1
      grep -v '^  ' "$T/suite/summary.txt" | cut -c1-160 >>"$T/summary.txt"
      ;;
    startup) # process start → first fp8 image, the NaN scan split over a pool vs on the loading thread
      OUT=$T/startup sh dev/cuda/startup-run/run.sh fp8 fp8-scan1 >"$T/startup.log" 2>&1
      grep -E "run 2|scan" "$T/startup/summary.txt" | cut -c1-200 >>"$T/summary.txt"
      ;;
    esac
  done
}
dev_bounded "${LIMIT:-560}" body
cat "$OUT/summary.txt" | cut -c1-240 | tail -90

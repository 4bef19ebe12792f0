#!/bin/sh
# Weights kept in their file type on the device (fp8 + scale, GGUF blocks):
# the CUDA claims, the format fixtures through qi_generate on the GPU, and
# `qwen-image bench` with the transformer's block linears in bf16, fp8, Q8_0
# and Q4_K (full-size random weights), in one device call.
#   here:   scripts/device-build.sh test_backend_ops test_cuda_backend_caps test_cuda_kernels \
#             test_cuda_pipeline test_formats test_engine qwen-image
#           mkdir -p devpack && tar cf - dist | xz -1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/kept-run/run.sh [tests] [bench]   (logs under $OUT)
set -u
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_tiny_text_encoder
dev_link_source /work/main
dev_gpu_txt
t() { # name, args...
  n=$1; shift; s=$(date +%s)
  dist/run.sh "$n" "$@" >"$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log" 2>&1
  echo "$n $*: rc=$? ($(($(date +%s) - s)) s): $(tail -1 "$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log")" | tee -a "$OUT/summary.txt"
}
for what in ${*:-tests bench}; do
  case $what in
    tests)
      t test_cuda_backend_caps
      t test_formats -d cuda
      [ -x dist/bin/test_backend_ops ] && t test_backend_ops -b cuda
      [ -x dist/bin/test_cuda_kernels ] && t test_cuda_kernels
      t test_cuda_pipeline
      [ -x dist/bin/test_engine ] && t test_engine; true ;;
    bench)
      for ty in bf16 fp8 q8_0 q4_k; do
        dist/run.sh qwen-image bench --runs 5 --warmup 2 --only dit --type $ty >>"$OUT/bench_dit.log" 2>&1
        echo "bench dit $ty rc=$?" | tee -a "$OUT/summary.txt"
      done
      for ty in fp8 q4_k bf16; do
        dist/run.sh qwen-image bench --runs 3 --warmup 1 --only e2e --type $ty >>"$OUT/bench_e2e.log" 2>&1
        echo "bench e2e $ty rc=$?" | tee -a "$OUT/summary.txt"
      done ;;
  esac
done

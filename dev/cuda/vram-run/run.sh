#!/bin/sh
# --vram on the H200: the CUDA claims of the memory plan (test_cuda_vram), then
# `qwen-image bench --vram 8G / 6G / 3G` (Q4_K transformer, the bench's bf16 text
# encoder: it streams at these budgets) each run beside dev/cuda/hold_memory,
# which holds all but that much of the GPU with plain cudaMalloc, so the budget
# is proved real. Logs under $OUT.
#   here:   scripts/device-build.sh test_cuda_vram test_cuda_pipeline qwen-image hold_memory
#           mkdir -p devpack && tar cf - dist | xz -1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/vram-run/run.sh [tests] [bench] [bench-fp8] [bench-bf16]
set -u
[ -d dist ] || tar xJf devpack/dist.tar.xz
f=tests/data/tiny-model/text_encoder/model.safetensors; [ -f $f ] || xz -dk $f.xz  # kept compressed in git
mkdir -p /work
[ -e /work/main ] || ln -s "$PWD" /work/main   # the binaries carry this machine's data paths
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
t() { # name, args...
  n=$1; shift; s=$(date +%s)
  dist/run.sh "$n" "$@" >"$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log" 2>&1
  echo "$n $*: rc=$? ($(($(date +%s) - s)) s): $(tail -1 "$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log")" | tee -a "$OUT/summary.txt"
}
# bench beside hold_memory: budget, type, what (dit | e2e)
held_bench() {
  v=$1; ty=$2; what=$3; log="$OUT/bench_${ty}_${v}.log"
  dist/run.sh hold_memory --leave "$v" >"$OUT/hold_$v.log" 2>&1 &
  pid=$!
  i=0; while ! grep -q ready "$OUT/hold_$v.log" 2>/dev/null && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$OUT/hold_$v.log" 2>&1
  echo "== --vram $v, $ty, $what (beside: $(head -1 "$OUT/hold_$v.log"))" >>"$log"
  dist/run.sh qwen-image bench --runs 3 --warmup 1 --only "$what" --type "$ty" --vram "$v" >>"$log" 2>&1
  rc=$?
  kill "$pid"; wait "$pid" 2>/dev/null
  echo "bench $what $ty --vram $v: rc=$rc" | tee -a "$OUT/summary.txt"
}
for what in ${*:-tests bench}; do
  case $what in
    tests)
      t test_cuda_vram
      t test_cuda_pipeline ;;
    bench)
      for v in 8G 6G 3G; do held_bench $v q4_k dit; held_bench $v q4_k e2e; done ;;
    bench-fp8)
      for v in 8G 6G; do held_bench $v fp8 dit; done ;;
    bench-bf16)
      for v in 24G 8G; do held_bench $v bf16 dit; done ;;
  esac
done

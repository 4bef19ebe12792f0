#!/bin/sh
# Issue 12's bench table in one device call, beside its peer: `qwen-image bench` per transformer call and end to
# end for bf16, fp8 and Q4_K (+ Q8_0 and the generic kernels per call), then diffusers (eager and
# compile_repeated_blocks, 1024²) in the same call; then, given time, the startup rows and the --vram 3G row with
# diffusers' group offload beside it. Stages run in the order given; each logs under $OUT and adds to
# $OUT/summary.txt; the call's limit cuts the last ones short, never the first.
#   here:   QI_DIST_ARCHS=90a scripts/device-build.sh test_cuda_backend_caps test_cuda_kept_overlap test_formats \
#             test_backend_ops test_cuda_vram test_cuda_kernels test_cuda_pipeline test_vae_encode_tiles qwen-image hold_memory
#           tar cf - dist | xz -9 -T1 > devpack/table.tar.xz
#           git --git-dir=<diffusers mirror> archive HEAD src/diffusers | xz -9 > devpack/diffusers-src.tar.xz
#   there:  sh dev/cuda/table-run/run.sh [checks] [ours] [peer] [ours2] [loadtest] [fast] [startup] [offload] [3g]
set -u
OUT=${OUT:-/tmp/table-out}
mkdir -p "$OUT"
. "$(dirname "$0")/../common.sh"
dev_unpack_dist devpack/table.tar.xz
dev_tiny_text_encoder
dev_link_source
dev_gpu_txt
if [ ! -d .peer/src/diffusers ] && [ -f devpack/diffusers-src.tar.xz ]; then
  mkdir -p .peer && tar xJf devpack/diffusers-src.tar.xz -C .peer
fi
b() { # log name, bench args...
  n=$1; shift; s=$(date +%s)
  timeout "${BENCH_LIMIT:-240}" dist/run.sh qwen-image bench --runs 3 --warmup 1 "$@" >"$OUT/$n.log" 2>&1
  note "bench $n ($*): rc=$? ($(($(date +%s) - s)) s)"
  grep '^| transformer call \|^| end to end\|^| VAE\|^| text enc\|CUDA kernels\|GEMM' "$OUT/$n.log" | cut -c1-220 | tee -a "$OUT/summary.txt"
}
for what in ${*:-checks ours peer ours2 startup}; do
  note "== $what $(date -u +%H:%M:%S)"
  case $what in
    checks)
      for t in test_cuda_backend_caps test_cuda_kept_overlap "test_formats -d cuda" "test_backend_ops -b cuda" \
               test_cuda_vram test_cuda_kernels test_cuda_pipeline "test_vae_encode_tiles -b cuda"; do
        n=$(echo "$t" | tr -c 'a-z0-9_' _)
        # shellcheck disable=SC2086
        timeout 120 dist/run.sh $t >"$OUT/$n.log" 2>&1; note "$t: rc=$? $(tail -1 "$OUT/$n.log")"
      done ;;
    ours) # bf16 and fp8: every row (calls, text encoder, VAE, end to end)
      b bf16 --type bf16
      b fp8 --type fp8 ;;
    ours2) # the other types per call and end to end, the generic kernels, the fp8 switches
      b q4_k --type q4_k --only dit
      b q4_k_e2e --type q4_k --only e2e
      b q8_0 --type q8_0 --only dit
      QI_CUDA_GENERIC=1 b generic --type bf16 --only dit
      QI_CUDA_FP8_SHARED=0 b fp8_unshared --type fp8 --only dit
      QI_CUDA_FP8_FAST_ACCUM=1 b fp8_fast_accum --type fp8 --only dit
      QI_CUDA_FP8_FAST_ACCUM=1 timeout 120 dist/run.sh test_formats -d cuda >"$OUT/formats_fast_accum.log" 2>&1
      note "test_formats -d cuda, QI_CUDA_FP8_FAST_ACCUM=1: rc=$? $(tail -1 "$OUT/formats_fast_accum.log")"
      grep 'rel L2' "$OUT/formats_fast_accum.log" | tee -a "$OUT/summary.txt" ;;
    peer)
      s=$(date +%s)
      PYTHONPATH=$PWD/.peer/src timeout 300 python3 bench/diffusers_peer.py --compile --sizes 1024 --runs 5 \
        --warmup 2 >"$OUT/peer.log" 2>&1
      note "diffusers peer: rc=$? ($(($(date +%s) - s)) s)"; grep '^| \|^#' "$OUT/peer.log" | tee -a "$OUT/summary.txt" ;;
    loadtest) # the transformer loaded beside the text encoder, through the second upload lane: the same image
      timeout 120 dist/run.sh test_load_overlap -d cuda >"$OUT/load_overlap.log" 2>&1
      note "test_load_overlap -d cuda: rc=$? $(tail -1 "$OUT/load_overlap.log")" ;;
    fast) # cuBLASLt's fast fp8 accumulation: the call, and the fixtures' errors with it
      QI_CUDA_FP8_FAST_ACCUM=1 b fp8_fast_accum --type fp8 --only dit
      QI_CUDA_FP8_FAST_ACCUM=1 timeout 120 dist/run.sh test_formats -d cuda >"$OUT/formats_fast_accum.log" 2>&1
      note "test_formats -d cuda, QI_CUDA_FP8_FAST_ACCUM=1: rc=$? $(tail -1 "$OUT/formats_fast_accum.log")"
      grep 'rel L2' "$OUT/formats_fast_accum.log" | cut -c1-160 | tee -a "$OUT/summary.txt" ;;
    startup)
      OUT=$OUT/startup timeout 300 sh dev/cuda/startup-run/run.sh fp8 fp8-old bf16 q4_k
      cat "$OUT/startup/summary.txt" >>"$OUT/summary.txt" ;;
    offload)
      PYTHONPATH=$PWD/.peer/src timeout 200 python3 bench/diffusers_peer.py --offload --runs 3 >"$OUT/offload.log" 2>&1
      note "diffusers group offload: rc=$?"; grep '^| \|^#' "$OUT/offload.log" | tee -a "$OUT/summary.txt" ;;
    3g)
      mkdir -p "$OUT/v"; HELD_LIMIT=${HELD_LIMIT:-300} OUT=$OUT/v sh dev/cuda/vram-run/run.sh bench-3g-all
      cat "$OUT/v/summary.txt" >>"$OUT/summary.txt" ;;
    *) note "unknown stage $what" ;;
  esac
done
note "== done $(date -u +%H:%M:%S)"

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
#   there:  sh dev/cuda/table-run/run.sh [checks] [ours] [tune0] [peer] [ours2] [loadtest] [fast] [startup] [vae] [profile] [offload] [3g]
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
               test_cuda_vram test_cuda_kernels test_cuda_pipeline "test_vae_encode_tiles -b cuda" \
               "test_load_overlap -d cuda"; do
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
      QI_CUDA_FP8_FAST_ACCUM=0 b fp8_exact_accum --type fp8 --only dit ;;
    peer)
      s=$(date +%s)
      PYTHONPATH=$PWD/.peer/src timeout 300 python3 bench/diffusers_peer.py --compile --sizes 1024 --runs 5 \
        --warmup 2 >"$OUT/peer.log" 2>&1
      note "diffusers peer: rc=$? ($(($(date +%s) - s)) s)"; grep '^| \|^#' "$OUT/peer.log" | tee -a "$OUT/summary.txt" ;;
    tune0) # the GEMM algorithm tuning off (QI_CUDA_GEMM_TUNE=0: cuBLASLt's first algorithm), per call and VAE
      QI_CUDA_GEMM_TUNE=0 b bf16_tune0 --type bf16 --only dit
      QI_CUDA_GEMM_TUNE=0 b fp8_tune0_vae --type fp8 --only vae ;;
    loadtest) # the transformer loaded beside the text encoder, through the second upload lane: the same image
      timeout 120 dist/run.sh test_load_overlap -d cuda >"$OUT/load_overlap.log" 2>&1
      note "test_load_overlap -d cuda: rc=$? $(tail -1 "$OUT/load_overlap.log")" ;;
    fast) # cuBLASLt's fast fp8 accumulation (the default) against QI_CUDA_FP8_FAST_ACCUM=0: the call, the errors
      b fp8_fast_accum --type fp8 --only dit
      QI_CUDA_FP8_FAST_ACCUM=0 b fp8_exact_accum --type fp8 --only dit
      QI_CUDA_FP8_FAST_ACCUM=0 timeout 120 dist/run.sh test_formats -d cuda >"$OUT/formats_exact_accum.log" 2>&1
      note "test_formats -d cuda, QI_CUDA_FP8_FAST_ACCUM=0: rc=$? $(tail -1 "$OUT/formats_exact_accum.log")"
      grep 'rel L2' "$OUT/formats_exact_accum.log" | cut -c1-160 | tee -a "$OUT/summary.txt" ;;
    startup)
      OUT=$OUT/startup timeout 300 sh dev/cuda/startup-run/run.sh fp8 fp8-old bf16 q4_k
      cat "$OUT/startup/summary.txt" >>"$OUT/summary.txt" ;;
    vae) # the VAE decode's switches (dev/cuda/NOTES.md): the op table with all of them on, then the decode → RGB8 row
      # of each setting, first the code before them (cache and direct off)
      QI_CUDA_CONV_ROWS=4 QI_CUDA_CONV_RESIDENT=1 QI_CUDA_NORM_WIDE=1 QI_CUDA_CONV_IM2COL_CI=192 timeout 120 \
        dist/run.sh test_backend_ops -b cuda >"$OUT/ops_vae_switches.log" 2>&1
      note "test_backend_ops -b cuda, every VAE switch on: rc=$? $(tail -1 "$OUT/ops_vae_switches.log")"
      for spec in "QI_CUDA_CONV_CACHE=0 QI_CUDA_CONV_DIRECT=0" "QI_VAE_DEFAULTS=1" "QI_CUDA_CONV_RESIDENT=1" \
                  "QI_CUDA_CONV_RESIDENT=1 QI_CUDA_NORM_WIDE=1" "QI_CUDA_CONV_RESIDENT=1 QI_CUDA_NORM_WIDE=1 QI_CUDA_CONV_ROWS=4"; do
        n=vae_$(echo "$spec" | tr -c 'A-Z0-9' _ | cut -c1-60)
        # shellcheck disable=SC2086
        env $spec timeout 120 dist/run.sh qwen-image bench --only vae --runs 10 --warmup 3 --type fp8 >"$OUT/$n.log" 2>&1
        note "vae [$spec]: rc=$? $(grep '^| VAE decode' "$OUT/$n.log" | cut -d'|' -f2,4 | tr '\n' ' ')"
      done ;;
    profile) # where the Q4_K bench's set-up spends its host time: all threads' backtraces every 10 s (cuda-gdb
      # attaches to a program with no GPU code in it; dist/bin/qwen-image-syms: qwen-image with its symbol table)
      mkdir -p "$OUT/prof"; prog=qwen-image; [ -x dist/bin/qwen-image-syms ] && prog=qwen-image-syms
      dist/run.sh $prog bench --type "${PROFILE_TYPE:-q4_k}" --only dit --runs 1 --warmup 0 >"$OUT/prof/bench.log" 2>&1 &
      bpid=$!; i=0
      while kill -0 $bpid 2>/dev/null && [ $i -lt "${PROFILE_SAMPLES:-14}" ]; do
        sleep "${PROFILE_EVERY:-9}"; i=$((i + 1))
        timeout 60 cuda-gdb -batch -p $bpid -ex "thread apply all bt 14" >"$OUT/prof/s$i.txt" 2>&1
      done
      wait $bpid; note "profile ${PROFILE_TYPE:-q4_k}: rc=$? after $i samples: $(grep 'set up' "$OUT/prof/bench.log" | cut -c1-200)"
      (cd "$OUT" && tar czf prof.tgz prof && rm -rf prof) ;;
    offload)
      PYTHONPATH=$PWD/.peer/src timeout "${OFFLOAD_LIMIT:-300}" python3 -u bench/diffusers_peer.py --offload \
        --offload-stream "${OFFLOAD_STREAM:-on}" --runs 3 >"$OUT/offload.log" 2>&1
      note "diffusers group offload: rc=$?"; grep '^| \|^#' "$OUT/offload.log" | tee -a "$OUT/summary.txt" ;;
    3g)
      mkdir -p "$OUT/v"; HELD_LIMIT=${HELD_LIMIT:-300} OUT=$OUT/v sh dev/cuda/vram-run/run.sh bench-3g-all
      cat "$OUT/v/summary.txt" >>"$OUT/summary.txt" ;;
    *) note "unknown stage $what" ;;
  esac
done
note "== done $(date -u +%H:%M:%S)"

#!/bin/sh
# The overlap of kept-weight expansions with the GEMMs (issue 12 item 3; cuda_kept.cu,
# prefetch_weight), written without a GPU: its claims, the claims it must keep, and the
# transformer call at 1024² in Q4_K / Q8_0 with the overlap off, on, and on with each knob (fp8, whose
# fp8 GEMM needs no expansion, off and on), in one device call.
#   here:   QI_DIST_ARCHS=90a scripts/device-build.sh test_cuda_kept_overlap test_cuda_backend_caps \
#             test_formats test_cuda_pipeline test_cuda_vram qwen-image
#           mkdir -p devpack && tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/overlap-run/run.sh [tests] [bench]   (logs and summary.txt under $OUT; carry devpack)
# What proves it: summary.txt's test lines end "N passed, 0 failed" (test_cuda_kept_overlap prints
# how many expansions the hints queued and read: 21 of 21 per tiny call, two and three buffers), and each
# bench line's
# "transformer call | 1024x1024" time with the overlap on is below the one with QI_CUDA_KEPT_OVERLAP=0
# while its "expansions overlapped" row shows the hints were read (on: every one queued was read, 717
# per eager call or recording: the 60 blocks' 12 linears less the last block's 3 text ones; off: 0).
set -u
OUT=${OUT:-/tmp/overlap-out}
mkdir -p "$OUT"
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_tiny_text_encoder
dev_link_source
t() { # log name, program, args... (environment from the caller)
  n=$1; shift; s=$(date +%s)
  timeout 300 dist/run.sh "$@" >"$OUT/$n.log" 2>&1
  note "$n: rc=$? ($(($(date +%s) - s)) s): $(tail -1 "$OUT/$n.log")"
}
for what in ${*:-tests bench}; do
  case $what in
    tests)
      t overlap test_cuda_kept_overlap
      grep 'queued' "$OUT/overlap.log" | tee -a "$OUT/summary.txt"
      t caps test_cuda_backend_caps
      QI_CUDA_KEPT_OVERLAP=0 t caps_one_buffer test_cuda_backend_caps
      t formats test_formats -d cuda
      t vram test_cuda_vram
      t pipeline test_cuda_pipeline ;;
    bench)
      # knobs per type: Q4_K every setting, Q8_0 the main ones, fp8 (its default fp8 GEMM reads the stored
      # bytes, nothing to overlap but the first/last layers) only off/on: no slower with the overlap
      for run in "q4_k QI_CUDA_KEPT_OVERLAP=0" "q4_k QI_CUDA_KEPT_OVERLAP=1" "q4_k QI_CUDA_KEPT_OVERLAP=3" \
                 "q4_k QI_CUDA_PREFETCH_SMS=66" "q4_k QI_CUDA_PREFETCH_SMS=33" "q4_k QI_CUDA_PREFETCH_SMS=16" \
                 "q4_k QI_CUDA_PREFETCH_PRIORITY=1" "q8_0 QI_CUDA_KEPT_OVERLAP=0" "q8_0 QI_CUDA_KEPT_OVERLAP=1" \
                 "q8_0 QI_CUDA_KEPT_OVERLAP=3" "q8_0 QI_CUDA_PREFETCH_SMS=33" "q8_0 QI_CUDA_PREFETCH_PRIORITY=1" \
                 "fp8 QI_CUDA_KEPT_OVERLAP=0" "fp8 QI_CUDA_KEPT_OVERLAP=1"; do
        set -- $run; ty=$1; knob=$2
        log="$OUT/bench_$ty.log"
        echo "=== $ty $knob" >>"$log"
        env $knob timeout 200 dist/run.sh qwen-image bench --type $ty --only dit --runs 5 --warmup 2 >>"$log" 2>&1
        note "bench $ty $knob: rc=$?"
        sed -n "/^=== $ty $knob\$/,\$p" "$log" | grep '1024x1024\|overlapped' | tee -a "$OUT/summary.txt"
      done ;;
  esac
done

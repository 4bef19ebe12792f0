#!/bin/sh
# Process start → first 1024² image (issue 12's bench row), for the transformer
# stored as bf16, fp8 and Q4_K: `qwen-image generate` on a full-size sparse model
# folder (`bench --write-sparse DIR --type T`: every tensor of the real manifest,
# the data a hole that reads as zeros, so the page cache always "holds" it and the
# time is ours — parsing, conversion, upload — not the disk's), 8 steps, 1024².
# Wall time from the shell around the whole process; the CLI's summary line gives
# text / transformer load / denoise / VAE and the open's time; the log lines above it split the open
# (tokenizer + text encoder, VAE, transformer, and how much of their loads overlapped).
#   here:  QI_DIST_ARCHS=90a scripts/device-build.sh qwen-image; tar cf - dist | xz -9 -T2 > devpack/dist.tar.xz
#   there: sh dev/cuda/startup-run/run.sh [types...]   (default: fp8 q4_k bf16; logs under $OUT)
# A type may end in a variant of the weight upload, for A/B rows in one call: TYPE-old runs with
# QI_LOAD_FAST=0 (the upload before the load branch: threads started per chunk, memcpy from the
# mapping, each weight's staging starting at buffer 0), TYPE-nopread with QI_LOAD_PREAD=0, TYPE-pread with
# QI_LOAD_PREAD=1 (off by default since runs Z and AA; before them TYPE alone ran with it on); TYPE-tune0
# with QI_CUDA_GEMM_TUNE=0 (the first step's new GEMM plans keep cuBLASLt's first algorithm, untimed);
# TYPE-scan1 with QI_SCAN_THREADS=1 (the weights' NaN/Inf scan on the loading thread alone, as before the
# scan was split over a pool of min(cores, 16) threads).
set -u
OUT=${OUT:-/tmp/startup-out}
mkdir -p "$OUT"
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_link_source
now() { date +%s.%N; }
for ty in ${*:-fp8 q4_k bf16}; do
  d=/tmp/sp_$ty
  base=${ty%%-*}; unset QI_LOAD_FAST QI_LOAD_PREAD QI_CUDA_GEMM_TUNE QI_SCAN_THREADS
  case $ty in *-old) export QI_LOAD_FAST=0 ;; *-nopread) export QI_LOAD_PREAD=0 ;; *-pread) export QI_LOAD_PREAD=1 ;;
    *-tune0) export QI_CUDA_GEMM_TUNE=0 ;; *-scan1) export QI_SCAN_THREADS=1 ;; esac
  dist/run.sh qwen-image bench --write-sparse $d --type $base >"$OUT/write_$ty.log" 2>&1 || { echo "$ty: write failed" | tee -a "$OUT/summary.txt"; continue; }
  # run 1 also warms the page cache's metadata; run 2 is the row (the transformer loads beside the text
  # encoder and VAE); run seq is run 2 with the loads one after another (QI_LOAD_SEQUENTIAL=1), the yardstick
  for run in 1 2 seq; do
    seq=0; [ $run = seq ] && seq=1
    s=$(now)
    QI_LOAD_SEQUENTIAL=$seq dist/run.sh qwen-image generate -m $d --device cuda -p "a capybara in a suit" \
      -W 1024 -H 1024 --steps 8 --seed 1 -o /tmp/startup_$ty.png >"$OUT/gen_${ty}_$run.log" 2>&1
    rc=$?; e=$(now)
    echo "$ty run $run: rc=$rc, process start -> exit $(awk "BEGIN{printf \"%.2f\", $e - $s}") s; $(grep 'image(s)' "$OUT/gen_${ty}_$run.log")" | tee -a "$OUT/summary.txt"
    grep -E 'NaN/Inf scan|loaded tokenizer \+ text encoder|loaded transformer from|load overlap|one after another|cuda upload:' \
      "$OUT/gen_${ty}_$run.log" | sed "s/^/  $ty $run: /" | tee -a "$OUT/summary.txt"
  done
  rm -rf $d
done

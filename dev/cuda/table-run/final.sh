#!/bin/sh
# The session's last device call in one script: the checks and the VAE switches, the startup rows (the new
# upload against QI_LOAD_FAST=0), fp8 and bf16 with diffusers beside them, Q4_K end to end — in the background,
# cut at LIMIT seconds so that the logs are always packed into $OUT/logs.tgz (the device returns 8 files).
#   there:  LIMIT=540 sh dev/cuda/table-run/final.sh
set -u
. "$(dirname "$0")/../common.sh"
if [ ! -d .peer/src/diffusers ] && [ -f devpack/diffusers-src.tar.xz ]; then
  mkdir -p .peer && tar xJf devpack/diffusers-src.tar.xz -C .peer
fi
body() {
  OUT=$T sh dev/cuda/table-run/run.sh checks vae
  OUT=$T/startup timeout 110 sh dev/cuda/startup-run/run.sh fp8 fp8-old
  cat "$T/startup/summary.txt" >>"$T/summary.txt"
  BENCH_LIMIT=70 OUT=$T sh dev/cuda/table-run/run.sh ours peer
  timeout 80 dist/run.sh qwen-image bench --runs 3 --warmup 1 --type q4_k --only e2e >"$T/q4_k_e2e.log" 2>&1
  echo "bench q4_k e2e: rc=$?" >>"$T/summary.txt"
  grep '^| end to end' "$T/q4_k_e2e.log" | cut -c1-220 >>"$T/summary.txt"
}
dev_bounded "${LIMIT:-540}" body
grep -v '^  ' "$OUT/summary.txt" | cut -c1-230 | tail -80

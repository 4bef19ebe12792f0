#!/bin/sh
# Run AE (seventh session): the VAE decode after the shared-memory softmax and the 8-per-thread conv bias
# (bench --only vae), then the CUDA suite three ways (portable-run: default, QI_CUDA_GENERIC=1, compute_80 PTX) —
# in the background, cut at LIMIT seconds, the logs packed into $OUT/logs.tgz whatever happens.
#   here:   rm -rf dist && QI_DIST_ARCHS=90a QI_DIST_PTX80=1 scripts/device-build.sh
#           tar cf - dist | xz -9 -T2 > devpack/dist.tar.xz
#   there:  LIMIT=550 sh dev/cuda/portable-run/call-ae.sh
set -u
. "$(dirname "$0")/../common.sh"
body() {
  dev_unpack_dist
  for i in 1 2; do
    timeout 90 dist/run.sh qwen-image bench --only vae --runs 10 --warmup 3 --type fp8 >"$T/vae_$i.log" 2>&1
    echo "bench --only vae ($i): rc=$? $(grep '^| VAE decode' "$T/vae_$i.log" | cut -d'|' -f2,4 | tr '\n' ' ')" >>"$T/summary.txt"
  done
  OUT=$T sh dev/cuda/portable-run/run.sh default generic ptx80
}
dev_bounded "${LIMIT:-550}" body
grep -v '^  ' "$OUT/summary.txt" | cut -c1-200 | tail -90

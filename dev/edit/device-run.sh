#!/bin/sh
# The Edit claims on the GPU machine (CUDA backend, bf16).
#   here:   scripts/device-build.sh test_vision test_edit_prompt test_edit_denoise test_edit_pipeline test_backend_ops
#           mkdir -p devpack && tar cf - dist | xz -6 -T2 > devpack/dist.tar.xz
#   there:  sh dev/edit/device-run.sh          (carry: devpack; logs under $OUT)
set -u
[ -d dist ] || tar xJf devpack/dist.tar.xz
f=tests/data/tiny-model/text_encoder/model.safetensors; [ -f $f ] || xz -dk $f.xz  # kept compressed in git
mkdir -p /work
[ -e /work/wt-edit ] || ln -s "$PWD" /work/wt-edit   # the binaries carry this machine's data paths
nvidia-smi --query-gpu=name,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
t() { # program, args...
  n=$1; shift; log="$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log"
  dist/run.sh "$n" "$@" >"$log" 2>&1
  echo "$n $*: rc=$?: $(tail -1 "$log")" | tee -a "$OUT/summary.txt"
}
t test_backend_ops -b cuda erf
t test_vision -b cuda
t test_edit_prompt -b cuda
t test_edit_denoise -b cuda
t test_edit_pipeline -b cuda

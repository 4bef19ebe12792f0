# common.sh — the set-up every dev/cuda/*/run.sh does first on the device
# machine, written once. Sourced, not run, from the repository root (POSIX sh:
# the device's /bin/sh is dash):
#   . "$(dirname "$0")/../common.sh"
# Each step is a function the script calls, so a script takes only the steps
# it needs (and `note`, their summary line). They set no variables of the
# caller.

# dist/ (scripts/device-build.sh's output) from its tarball, unless already
# unpacked; $1: the tarball (default devpack/dist.tar.xz).
dev_unpack_dist() {
  [ -d dist ] || tar xJf "${1:-devpack/dist.tar.xz}"
}

# The tiny model's text encoder, kept xz-compressed in git (the checkout
# travels to the device under 64 MiB; configure unpacks it here, the device
# does not configure), decompressed beside its .xz.
dev_tiny_text_encoder() {
  [ -f tests/data/tiny-model/text_encoder/model.safetensors ] ||
    xz -dk tests/data/tiny-model/text_encoder/model.safetensors.xz
}

# The programs carry the absolute data paths (tokenizer, manifest, tests/data)
# of the checkout they were built in: that path, linked to this checkout where
# it does not exist. $1: the path (default: dist/SOURCE_DIR, else /work/main).
dev_link_source() {
  set -- "${1:-$(cat dist/SOURCE_DIR 2>/dev/null || echo /work/main)}"
  if [ ! -e "$1" ]; then mkdir -p "$(dirname "$1")" && ln -s "$PWD" "$1"; fi
}

# The GPU's name, driver and memory into $OUT/gpu.txt; $1: other
# nvidia-smi --query-gpu fields instead.
dev_gpu_txt() {
  nvidia-smi --query-gpu="${1:-name,driver_version,memory.used,memory.total}" --format=csv >"$OUT/gpu.txt" 2>&1
}

# A line for the run's summary: printed, and appended to $OUT/summary.txt.
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# A device call's body cut at a time limit, its logs always brought back: runs
# the function named $2 in the background with its output in $OUT/t/run.log
# (the body writes its logs under $T = $OUT/t, its summary lines to
# $T/summary.txt), waits up to $1 seconds, stops it, then copies the summary to
# $OUT/summary.txt and packs $T into $OUT/logs.tgz (the device returns at most
# 8 files) whatever happened.
dev_bounded() {
  T=$OUT/t
  mkdir -p "$T"
  "$2" >"$T/run.log" 2>&1 &
  _pid=$!
  _i=0
  while kill -0 $_pid 2>/dev/null && [ $_i -lt "$1" ]; do sleep 5; _i=$((_i + 5)); done
  kill $_pid 2>/dev/null
  cp "$T/summary.txt" "$OUT/summary.txt"
  (cd "$T" && tar czf "$OUT/logs.tgz" .) && rm -rf "$T"
}

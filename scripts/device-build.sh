#!/bin/sh
# Builds the CUDA programs here for the GPU machine, which lacks our Debian
# libraries: links them statically where a .a exists (QI_STATIC_DEPS=ON),
# copies the programs to dist/bin and every non-system shared library they
# still need (ldd) to dist/lib, and writes dist/run.sh, which sets the library
# path there (ours first, then the machine's CUDA for cuBLAS) and runs a program.
#
#   dist/bin         built for QI_DIST_ARCHS (default "release": sm_80, sm_86,
#                    sm_89, sm_90a, sm_100, sm_120 and compute_120 PTX; see
#                    QI_CUDA_ARCHS in CMakeLists.txt)
#   dist/ptx80/bin   the same programs as compute_80 PTX only: the driver
#                    JIT-compiles the Ampere code on whatever GPU runs them
#                    (skip with QI_DIST_PTX80=0)
#   dist/cuda-tests.txt  the `ctest -L cuda` suite as lines "name|ENV=1 …|program args"
#                    (dev/cuda/portable-run/run.sh runs it from dist)
#   dist/SOURCE_DIR  this checkout's path: the test programs read their data there
#
#   scripts/device-build.sh [targets...]       # here (default: the CUDA suite's programs and qwen-image)
#   QI_DIST_ARCHS=90a scripts/device-build.sh  # one architecture, no PTX build: quick
#   dist/run.sh test_backend_ops -b cuda       # there, from the repository root
#   dist/run.sh --ptx80 test_cuda_kernels      # there: the compute_80 PTX build
#   dist/run.sh --ldd test_cuda_kernels        # there: show what resolves where
#
# dist/ is git-ignored; carry it with the device tool (carry: ["dist"]), or
# `tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz` (the device copy's limit is 64 MiB in all).
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARCHS=${QI_DIST_ARCHS:-release}
PTX80=${QI_DIST_PTX80:-1}
[ "$ARCHS" = release ] || PTX80=${QI_DIST_PTX80:-0}
TARGETS=${*:-test_backend_ops test_cuda_backend_caps test_cuda_bench test_cuda_kernels test_cuda_kept_overlap test_cuda_pipeline \
  test_cuda_rng test_cuda_vram test_formats test_lora_runtime test_engine test_parallel test_pipeline_parallel \
  test_img2img test_vision test_edit_prompt test_edit_denoise test_edit_pipeline test_vae_encode_tiles test_host_pool \
  hold_memory qwen-image}

build() { # build dir, QI_CUDA_ARCHS, dist bin dir
  # OpenBLAS as the shared library (copied into dist/lib below): statically it is ~26 MB of
  # every program, and the device copy (repository + carried pack) is limited to 64 MiB.
  blas=/usr/lib/$(gcc -print-multiarch)/openblas-openmp/libopenblas.so
  [ -e "$blas" ] && blas_opt="-DQI_OPENBLAS=$blas" || blas_opt=
  cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=Release -DQI_CUDA=ON -DQI_STATIC_DEPS=ON -DQI_CUDA_ARCHS="$2" $blas_opt >/dev/null
  cmake --build "$1" -j2 --target $TARGETS
  mkdir -p "$3"
  for t in $TARGETS; do
    cp "$1/$t" "$3/"
    strip "$3/$t"
  done
}

rm -rf dist
mkdir -p dist/lib
build "$ROOT/build-cuda-dist" "$ARCHS" dist/bin
[ "$PTX80" = 1 ] && build "$ROOT/build-cuda-ptx80" ptx80 dist/ptx80/bin
echo "$ROOT" > dist/SOURCE_DIR
echo "$ARCHS" > dist/ARCHS

# The CUDA test suite as ctest runs it (names, environment, arguments), for a
# machine without this build tree.
ctest --test-dir "$ROOT/build-cuda-dist" -L cuda --show-only=json-v1 | python3 -c '
import json, os, sys
for t in json.load(sys.stdin)["tests"]:
    if "command" not in t: continue  # its program is not among the targets built
    env = []
    for p in t.get("properties", []):
        if p["name"] == "ENVIRONMENT": env = p["value"]
    cmd = t.get("command")
    if not cmd:  # its program is not among the targets built
        sys.stderr.write("cuda-tests.txt: %s left out (program not built)\n" % t["name"]); continue
    print("%s|%s|%s" % (t["name"], " ".join(env), " ".join([os.path.basename(cmd[0])] + cmd[1:])))
' > dist/cuda-tests.txt

# Shared libraries the programs need, less the C runtime, the C++ runtime (the
# GPU machine's own is newer) and CUDA's (the GPU machine has its own CUDA 13).
for t in $TARGETS; do ldd "dist/bin/$t"; done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcublas*|libcudart*|libcuda.so*) ;;
      *) cp -L "$path" "dist/lib/$name" ;;
    esac
  done
cat > dist/run.sh <<'EOS'
#!/bin/sh
# Runs a program of dist/bin (--ptx80: of dist/ptx80/bin) with dist/lib and
# the machine's cuBLAS on the library path.
DIST=$(cd "$(dirname "$0")" && pwd)
CUBLAS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
  [ -e "$d/libcublasLt.so.13" ] && { CUBLAS=$d; break; }
done
if [ -z "$CUBLAS" ]; then
  f=$(find / -name 'libcublasLt.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$f" ] && CUBLAS=$(dirname "$f")
fi
export LD_LIBRARY_PATH="$DIST/lib${CUBLAS:+:$CUBLAS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=$DIST/bin
if [ "$1" = "--ptx80" ]; then shift; BIN=$DIST/ptx80/bin; fi
if [ "$1" = "--ldd" ]; then shift; exec ldd "$BIN/$1"; fi
prog=$1; shift
exec "$BIN/$prog" "$@"
EOS
chmod +x dist/run.sh
du -sh dist dist/bin dist/lib
[ -d dist/ptx80 ] && du -sh dist/ptx80
ls -la dist/bin dist/lib
printf 'xz -9 of dist: '
tar cf - dist | xz -9 -T1 | wc -c | awk '{printf "%.1f MiB (the device copy takes 64 MiB with the repository)\n", $1 / 1048576}'

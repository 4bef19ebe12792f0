#!/bin/sh
# Builds the CUDA build here for the GPU machine, which lacks our Debian
# libraries: links them statically where a .a exists (QI_STATIC_DEPS=ON),
# copies the programs to dist/bin and every non-system shared library they
# still need (ldd) to dist/lib, and writes dist/run.sh, which sets the library
# path there (ours first, then the machine's CUDA for cuBLAS) and runs a program:
#
#   scripts/device-build.sh [targets...]       # here (default: the CUDA tests and qwen-image)
#   dist/run.sh test_backend_ops -b cuda       # there, from the repository root
#   dist/run.sh --ldd test_cuda_kernels        # there: show what resolves where
#
# dist/ is git-ignored; carry it with the device tool (carry: ["dist"]).
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=$ROOT/build-cuda-dist
TARGETS=${*:-test_backend_ops test_cuda_kernels test_cuda_bench qwen-image}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQI_CUDA=ON -DQI_STATIC_DEPS=ON >/dev/null
cmake --build "$BUILD" -j2 --target $TARGETS
rm -rf dist
mkdir -p dist/bin dist/lib
for t in $TARGETS; do
  cp "$BUILD/$t" dist/bin/
  strip dist/bin/"$t"
done
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
cat > dist/run.sh <<'EOF'
#!/bin/sh
# Runs a program of dist/bin with dist/lib and the machine's cuBLAS on the library path.
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
if [ "$1" = "--ldd" ]; then shift; exec ldd "$DIST/bin/$1"; fi
prog=$1; shift
exec "$DIST/bin/$prog" "$@"
EOF
chmod +x dist/run.sh
du -sh dist
ls -la dist/bin dist/lib

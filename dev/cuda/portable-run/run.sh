#!/bin/sh
# Issue 12, deliverable 1 (portable build) on one H200: the CUDA test suite
# three ways — default kernels (Hopper's wgmma/TMA attention), the generic
# kernels forced (QI_CUDA_GENERIC=1: what sm_80/86/89/100/120 GPUs run), and
# the compute_80 PTX build (dist/ptx80: the driver JIT-compiles the Ampere
# code) — then the pipeline cases with the generic kernels, then
# `qwen-image bench --only dit` (full-size sparse model, random weights) per
# transformer call: Hopper vs generic, alternating, and the PTX build.
#   here:   scripts/device-build.sh          (release archs into dist/bin, compute_80 PTX into dist/ptx80/bin)
#           mkdir -p devpack && tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/portable-run/run.sh [default] [generic] [pipeline] [ptx80] [bench]
#           (no argument: all five; each stage logs under $OUT/<stage>/, one line
#           per program in $OUT/summary.txt; a failing stage does not stop the next)
set -u
set -x
OUT=${OUT:-/tmp/portable-out}
mkdir -p "$OUT"
exec 2>>"$OUT/trace.log" # set -x trace and stray stderr; program output goes to per-program logs
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_tiny_text_encoder
dev_link_source
dev_gpu_txt name,compute_cap,driver_version,memory.used,memory.total
echo "dist built for: $(cat dist/ARCHS 2>/dev/null)" | tee -a "$OUT/summary.txt"
# the PTX build's JIT results are cached across its programs (the library's code is the same in each)
export CUDA_CACHE_PATH=/tmp/qi-ptx-cache CUDA_CACHE_MAXSIZE=4294967296

# One program: stage, log name, then [VAR=value ...] program args (dist/run.sh's, --ptx80 first if so).
one() {
  stage=$1; name=$2; shift 2
  mkdir -p "$OUT/$stage"; log="$OUT/$stage/$name.log"; s=$(date +%s)
  env "$@" </dev/null >"$log" 2>&1
  rc=$?
  note "[$stage] $name: rc=$rc ($(($(date +%s) - s)) s): $(grep -v '^\s*$' "$log" | tail -1)"
}

# Every test of `ctest -L cuda` (dist/cuda-tests.txt: name|ENV|program args) with extra env/flag.
suite() { # stage, dist/run.sh flag ("" or --ptx80), extra VAR=value ...
  stage=$1; flag=$2; shift 2
  [ -s dist/cuda-tests.txt ] || { note "[$stage] dist/cuda-tests.txt missing: rebuild with scripts/device-build.sh"; return; }
  while IFS='|' read -r name tenv cmd; do
    [ -x "dist/bin/${cmd%% *}" ] || { note "[$stage] $name: ${cmd%% *} not in this dist"; continue; }
    # shellcheck disable=SC2086 # the test's env and command split on spaces, as ctest ran them
    one "$stage" "$name" $tenv QI_CLI_PATH="$PWD/dist/bin/qwen-image" "$@" timeout 900 dist/run.sh $flag $cmd
  done < dist/cuda-tests.txt
}

pipeline() { # the pipeline cases (GPU, and GPU+CPU split) with the generic kernels
  for t in test_cuda_pipeline test_engine test_parallel test_pipeline_parallel; do
    [ -x dist/bin/$t ] || { note "[pipeline] $t: not in this dist"; continue; }
    one pipeline "$t" QI_CUDA_GENERIC=1 QI_CLI_PATH="$PWD/dist/bin/qwen-image" timeout 900 dist/run.sh $t
  done
}

bench() { # per transformer call, Hopper vs generic alternating (same machine state), then the PTX build
  i=0
  for v in hopper generic hopper generic ptx80; do
    i=$((i + 1)); log="$OUT/bench/dit_${i}_$v.log"; mkdir -p "$OUT/bench"
    case $v in
      hopper) env timeout 600 dist/run.sh qwen-image bench --runs 5 --warmup 2 --only dit >"$log" 2>&1 ;;
      generic) env QI_CUDA_GENERIC=1 timeout 600 dist/run.sh qwen-image bench --runs 5 --warmup 2 --only dit >"$log" 2>&1 ;;
      ptx80) [ -x dist/ptx80/bin/qwen-image ] || { note "[bench] no dist/ptx80/bin/qwen-image"; continue; }
             env timeout 600 dist/run.sh --ptx80 qwen-image bench --runs 5 --warmup 2 --only dit >"$log" 2>&1 ;;
    esac
    note "[bench] $i $v: rc=$?"
    grep "CUDA kernels\|transformer call |" "$log" | sed "s/^/[bench] $v /" | tee -a "$OUT/summary.txt"
  done
}

for what in ${*:-default generic pipeline ptx80 bench}; do
  note "== $what $(date -u +%H:%M:%S)"
  case $what in
    default) suite default "" ;;
    generic) suite generic "" QI_CUDA_GENERIC=1 ;;
    pipeline) pipeline ;;
    ptx80) if [ -d dist/ptx80/bin ]; then suite ptx80 --ptx80 QI_TEST_CODE_ARCH=800
           else note "[ptx80] dist/ptx80/bin missing (QI_DIST_PTX80=0?)"; fi ;;
    bench) bench ;;
    *) note "unknown stage $what (default generic pipeline ptx80 bench)" ;;
  esac
done
note "== done $(date -u +%H:%M:%S)"

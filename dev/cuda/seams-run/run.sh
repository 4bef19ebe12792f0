#!/bin/sh
# Issue 10 (the four seams) on the GPU machine: every CUDA-labelled test of the
# new layout, the CPU+GPU pipeline tests, then `qwen-image bench` of the code
# before the refactor (dist-base/, commit fa61b70) and after it (dist/), in one
# call, alternating, so both rows share the machine's state.
#   here:   scripts/device-build.sh <targets>; build fa61b70 the same way into dist-base/;
#           tar cf - dist dist-base | xz > devpack/dist.tar.xz
#   there:  sh dev/cuda/seams-run/run.sh [tests] [bench-e2e] [bench-dit] [timings]  (logs under $OUT)
set -u
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
# the binaries carry the absolute data paths of the machines they were built on
dev_link_source /work/main
dev_link_source /work/wt-baseline
dev_gpu_txt
run_tests() {
  for t in test_backend_ops test_cuda_backend_caps test_cuda_kernels test_cuda_rng test_cuda_pipeline \
           test_parallel test_pipeline_parallel test_engine; do
    args=""; [ "$t" = test_backend_ops ] && args="-b cuda"
    s=$(date +%s)
    dist/run.sh $t $args >"$OUT/$t.log" 2>&1
    rc=$?
    echo "$t $args: rc=$rc ($(($(date +%s) - s)) s): $(tail -1 "$OUT/$t.log")" | tee -a "$OUT/summary.txt"
  done
}
run_bench() { # $1: e2e or dit; before and after, twice, alternating
  for v in base new base new; do
    d=dist; [ $v = base ] && d=dist-base
    $d/run.sh qwen-image bench --runs 7 --only $1 >>"$OUT/bench_$1_$v.log" 2>&1
    echo "bench $1 $v rc=$?" | tee -a "$OUT/summary.txt"
  done
}
for what in ${*:-tests}; do
  case $what in
    tests) run_tests ;;
    bench-e2e) run_bench e2e ;;
    bench-dit) run_bench dit ;;
    timings) dist/run.sh test_cuda_bench >"$OUT/test_cuda_bench.log" 2>&1
             echo "test_cuda_bench rc=$?: $(tail -1 "$OUT/test_cuda_bench.log")" | tee -a "$OUT/summary.txt" ;;
  esac
done

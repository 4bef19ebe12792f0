#!/bin/sh
# Per-kernel times of one eager 1024² transformer call and one VAE decode under Nsight Compute
# (one metric, gpu__time_duration; clocks and caches left alone), summed by kernel name and listed in
# launch order for one transformer block, to see where a call's milliseconds go.
#   there:  sh dev/cuda/prof-run/run.sh [dit] [vae]      (logs and tables under $OUT/prof)
set -u
P=$OUT/prof
mkdir -p "$P"
NCU="ncu --clock-control none --cache-control none --target-processes all --metrics gpu__time_duration.sum --csv --print-units base"
TYPE=${PROF_TYPE:-bf16}
# set-up fills and the GEMM tuning's hashes are not profiled
SKIP='regex:^(?!random_bf16_kernel|randn_philox|random_bytes|block_scales|output_hash_k)'
for what in "$@"; do
  case $what in
    dit) # eager (graphs off): the warm-up call (it tunes the GEMMs), then the call summarised
      QI_CUDA_GRAPHS=0 timeout ${PROF_LIMIT:-300} $NCU -k "$SKIP" \
        --launch-count ${PROF_COUNT:-3300} dist/run.sh qwen-image bench --only dit --type $TYPE --runs 1 --warmup 1 \
        >"$P/dit-$TYPE.csv" 2>"$P/dit-$TYPE.err"
      echo "ncu dit $TYPE: rc=$? lines=$(wc -l <"$P/dit-$TYPE.csv")"
      python3 dev/cuda/prof-run/summarise.py dit "$P/dit-$TYPE.csv" >"$P/dit-$TYPE.txt" 2>&1; head -60 "$P/dit-$TYPE.txt" ;;
    vae)
      QI_CUDA_GRAPHS=0 timeout ${PROF_LIMIT:-300} $NCU -k "$SKIP" dist/run.sh qwen-image bench --only vae --runs 1 --warmup 1 \
        >"$P/vae.csv" 2>"$P/vae.err"
      echo "ncu vae: rc=$? lines=$(wc -l <"$P/vae.csv")"
      python3 dev/cuda/prof-run/summarise.py vae "$P/vae.csv" >"$P/vae.txt" 2>&1; head -50 "$P/vae.txt" ;;
  esac
done

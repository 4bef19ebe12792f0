#!/bin/sh
# 2026-12-04 (fourth) call B: the overlap claims and Q4_K call off/on, --vram 3G (call), --pinned 0 at 8G,
# process start -> first fp8 image. Logs under $OUT.
set -u
. "$(dirname "$0")/../common.sh"
dev_unpack_dist devpack/b.tar.xz
dev_tiny_text_encoder
dev_link_source
timeout 120 dist/run.sh test_cuda_kept_overlap >"$OUT/overlap.log" 2>&1
echo "test_cuda_kept_overlap: rc=$? $(tail -1 "$OUT/overlap.log")"; grep queued "$OUT/overlap.log"
for k in 0 1; do
  QI_CUDA_KEPT_OVERLAP=$k timeout 100 dist/run.sh qwen-image bench --type q4_k --only dit --runs 3 --warmup 1 >"$OUT/q4k_$k.log" 2>&1
  echo "q4_k QI_CUDA_KEPT_OVERLAP=$k: rc=$?"; grep '1024x1024\|overlapped' "$OUT/q4k_$k.log"
done
mkdir -p "$OUT/v"
OUT=$OUT/v timeout 200 sh dev/cuda/vram-run/run.sh 3g-dit; grep '1024x1024\|peak\|GB/s\|set up' "$OUT"/v/bench_q4_k_3G*.log | head -12
OUT=$OUT/v timeout 150 sh dev/cuda/vram-run/run.sh pinned0; grep '1024x1024\|GB/s\|ring' "$OUT"/v/bench_q4_k_8G*.log | head -8
OUT=$OUT/s timeout 120 sh dev/cuda/startup-run/run.sh fp8; cat "$OUT"/s/summary.txt

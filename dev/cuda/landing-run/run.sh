#!/bin/sh
# One device call for what landed this session: every CUDA claim (kept weights,
# format fixtures and runtime LoRA on the GPU, the pipeline), then the server on
# the full-size random-weight model: request → first preview and request → PNG
# of an 8-step 1024² image beside the CLI's time, and an out-of-memory request
# followed by a normal one in the same server process (--vram 60G: on the H200
# an 8192²×4 request would fit the whole GPU and simply run for many minutes).
#   here:   scripts/device-build.sh qwen-image test_cuda_backend_caps test_formats test_lora_runtime \
#             test_cuda_pipeline test_backend_ops test_cuda_kernels test_engine
#           mkdir -p devpack && tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz
#   there:  sh dev/cuda/landing-run/run.sh [tests] [serve]     (logs under $OUT)
set -u
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
dev_tiny_text_encoder
dev_link_source /work/main
dev_gpu_txt
t() { # program, args...
  n=$1; shift; s=$(date +%s); log="$OUT/$n$(echo "$*" | tr -c 'a-z0-9' _).log"
  [ -x dist/bin/$n ] || { echo "$n: not in this dist" | tee -a "$OUT/summary.txt"; return; }
  dist/run.sh "$n" "$@" >"$log" 2>&1
  echo "$n $*: rc=$? ($(($(date +%s) - s)) s): $(tail -1 "$log")" | tee -a "$OUT/summary.txt"
}
serve_run() {
  Q=dist/run.sh; L="$OUT/serve.log"
  $Q qwen-image bench --write-sparse /tmp/sp >>"$L" 2>&1
  $Q qwen-image serve -m /tmp/sp --device cuda --random-weights 7 --port 8123 --max-size 8192 --vram 60G --quiet >>"$L" 2>&1 &
  pid=$!
  python3 dev/cuda/landing-run/client.py http://127.0.0.1:8123 2>&1 | tee -a "$OUT/summary.txt"
  kill -TERM $pid; wait $pid; echo "serve: exit $? after SIGTERM" | tee -a "$OUT/summary.txt"
  # the CLI, same model and request, for the server's overhead
  $Q qwen-image generate -m /tmp/sp --device cuda --random-weights 7 -p "a capybara in a suit" -W 1024 -H 1024 \
    --steps 8 --seed 1 -o /tmp/cli.png >"$OUT/cli.log" 2>&1
  echo "cli: $(tail -1 "$OUT/cli.log")" | tee -a "$OUT/summary.txt"
}
for what in ${*:-tests bench serve}; do
  case $what in
    tests)
      t test_cuda_backend_caps
      t test_formats -d cuda
      t test_lora_runtime -d cuda
      t test_cuda_pipeline
      t test_backend_ops -b cuda
      t test_cuda_kernels
      t test_engine ;;
    serve) serve_run ;;
    bench) # the per-step finite check's cost beside the transformer call (bf16)
      dist/run.sh qwen-image bench --runs 5 --warmup 2 --only dit >"$OUT/bench_dit.log" 2>&1
      echo "bench dit rc=$?" | tee -a "$OUT/summary.txt"; grep -i 'finite\|transformer call |' "$OUT/bench_dit.log" | tee -a "$OUT/summary.txt" ;;
  esac
done

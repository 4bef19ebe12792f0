#!/bin/sh
# Issue 14 item 7 in one device call: a Qwen-Image-Edit-2509 request with one
# 1024² reference picture at 4 and 8 steps (cfg 1, Lightning schedule), end
# to end and by stage, full size with random bf16 weights — ours
# (`qwen-image bench --edit`) beside diffusers' QwenImageEditPlusPipeline
# eager and with compile_repeated_blocks (bench/diffusers_peer.py --edit),
# same GPU, same shapes, same prompt and picture.
#
# Layout expected in the repository root on the device:
#   dist/ or devpack/dist.tar.xz   scripts/device-build.sh's output (dist/run.sh, dist/bin/qwen-image)
#   .peer/src/diffusers/ or devpack/diffusers-src.tar.xz   diffusers' source (the tarball holds
#                                  src/diffusers/...; it is unpacked into .peer/, PYTHONPATH=.peer/src)
#   python3 with torch (CUDA), transformers 5.x, Pillow, numpy (as for bench/RESULTS.md run C)
#   tests/data/tiny-model/tokenizer   the Qwen2.5 tokenizer (in git): both benches' tokenizer
#
#   here:   scripts/device-build.sh qwen-image
#           mkdir -p devpack && tar cf - dist | xz -9 -T1 > devpack/dist.tar.xz
#           git --git-dir=/work/.mirror/huggingface+diffusers/repo archive HEAD src/diffusers \
#             | xz -9 -T1 > devpack/diffusers-src.tar.xz
#   there:  sh dev/cuda/edit-run/run.sh [dry] [ours] [peer]     (no argument: all three, in that order)
#           logs under $OUT: ours.log / ours.md (our rows), peer.log (diffusers' rows), summary.txt
#           (every row of both), versions.txt, gpu.txt. QI_EDIT_RUNS / QI_EDIT_WARMUP: runs, warm-ups (5 / 2).
set -u
OUT=${OUT:-/tmp/edit-out}
mkdir -p "$OUT"
RUNS=${QI_EDIT_RUNS:-5}
WARM=${QI_EDIT_WARMUP:-2}
. "$(dirname "$0")/../common.sh"
dev_unpack_dist
if [ ! -d .peer/src/diffusers ] && [ -f devpack/diffusers-src.tar.xz ]; then
  mkdir -p .peer && tar xJf devpack/diffusers-src.tar.xz -C .peer
fi
export PYTHONPATH=$PWD/.peer/src${PYTHONPATH:+:$PYTHONPATH}
dev_link_source
dev_gpu_txt
python3 -c 'import torch, transformers, diffusers; print("torch", torch.__version__, "| transformers",
  transformers.__version__, "| diffusers", diffusers.__version__, diffusers.__file__)' >"$OUT/versions.txt" 2>&1
note "$(cat "$OUT/gpu.txt" | tail -1); $(cat "$OUT/versions.txt" | tail -1)"
for what in ${*:-dry ours peer}; do
  s=$(date +%s)
  case $what in
    dry) # the peer's processor and configs on the CPU: a broken peer shows here in seconds
      timeout 120 python3 bench/diffusers_peer.py --edit --dry >"$OUT/peer_dry.log" 2>&1
      note "peer --dry: rc=$? ($(($(date +%s) - s)) s): $(tail -1 "$OUT/peer_dry.log")" ;;
    ours)
      timeout 240 dist/run.sh qwen-image bench --edit --runs "$RUNS" --warmup "$WARM" -o "$OUT/ours.md" \
        >"$OUT/ours.log" 2>&1
      note "ours: rc=$? ($(($(date +%s) - s)) s)"
      grep '^| \|^bench' "$OUT/ours.log" | tee -a "$OUT/summary.txt" ;;
    peer) # eager rows first, then compile_repeated_blocks (rows are flushed as they come)
      timeout 420 python3 bench/diffusers_peer.py --edit --compile --runs "$RUNS" --warmup "$WARM" \
        >"$OUT/peer.log" 2>&1
      note "peer: rc=$? ($(($(date +%s) - s)) s)"
      grep '^| \|^# ' "$OUT/peer.log" | tee -a "$OUT/summary.txt"
      [ -s "$OUT/peer.log" ] && tail -5 "$OUT/peer.log" | grep -i 'error\|Traceback' | tee -a "$OUT/summary.txt" ;;
  esac
done

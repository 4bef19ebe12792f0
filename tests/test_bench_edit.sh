#!/bin/sh
# test_bench_edit.sh QWEN_IMAGE EDIT_MODEL_DIR — `qwen-image bench --edit`
# on the CPU with the tiny Edit model (the H200 times the full size, see
# dev/cuda/edit-run/run.sh): every row is printed with a positive time and
# the -o table holds the same rows; --edit with --vram is refused; and
# `--write-sparse --edit` writes the full-size Edit folder's headers (the
# Edit pipeline class, the 7B vision tower's config); --only's names.
set -u
BIN=$1
MODEL=$2
T=$(mktemp -d)
trap 'rm -rf $T' EXIT
fails=0
ok() { echo "ok - $1"; }
bad() { echo "FAIL - $1"; fails=$((fails + 1)); }

"$BIN" bench --edit -m "$MODEL" --device cpu --runs 1 --warmup 0 --edit-size 32 --edit-vl-area 12544 \
    --edit-vae-area 4096 -o "$T/rows.md" >"$T/out.txt" 2>&1
rc=$?
cat "$T/out.txt"
[ $rc -eq 0 ] && ok "bench --edit on the tiny Edit model exits 0" || bad "bench --edit exited $rc"
for steps in 4 8; do
    grep -Eq "^\| Edit-2509 end to end \| 32² picture → 32x32, $steps steps, cfg 1 \| [0-9]+\.[0-9]+ s \|" "$T/out.txt" \
        && ok "end-to-end row, $steps steps" || bad "no end-to-end row for $steps steps"
    grep -Eq "^\| Edit-2509 denoising step \| 4 \+ 16 condition tokens, $steps steps \| [0-9.]+ ms" "$T/out.txt" \
        && ok "per-step row, $steps steps (4 output + 16 condition tokens)" || bad "no per-step row for $steps steps"
done
grep -Eq "^\| Edit-2509 step, marginal \| \(8-step − 4-step\) / 4 \| -?[0-9.]+ ms" "$T/out.txt" \
    && ok "marginal step row" || bad "no marginal step row"
grep -Eq "^\| Edit vision tower \| 128x128 → 140x140, 100 patches \| [0-9.]+ ms \| 25 image tokens" "$T/out.txt" \
    && ok "vision tower row (112² area: 128² → 140², 100 patches, 25 tokens)" || bad "no vision tower row"
grep -Eq "^\| Edit text encoder \| [0-9]+ tokens \(25 image\) \| [0-9.]+ ms" "$T/out.txt" \
    && ok "text encoder row" || bad "no text encoder row"
grep -Eq "^\| Edit VAE encode \| 64x64 \| [0-9.]+ ms" "$T/out.txt" && ok "VAE encoder row (64² area)" \
    || bad "no VAE encoder row"
if grep -v marginal "$T/out.txt" | grep -Eq "\| 0\.000 s \||\| 0\.0 ms \|"; then bad "a row timed nothing"; else ok "no row timed 0"; fi
n=$(grep -c "^| Edit" "$T/rows.md" 2>/dev/null || echo 0)
[ "$n" -eq 8 ] && ok "the -o table has the 8 Edit rows" || bad "the -o table has $n Edit rows, expected 8"

"$BIN" bench --edit --vram 8G -m "$MODEL" --device cpu >"$T/vram.txt" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "vram" "$T/vram.txt" && ok "--edit --vram is refused (exit 2)" || bad "--edit --vram: exit $rc"

"$BIN" bench --write-sparse "$T/sparse" --edit >"$T/sparse.txt" 2>&1 || bad "--write-sparse --edit failed"
grep -q '"_class_name": "QwenImageEditPlusPipeline"' "$T/sparse/model_index.json" 2>/dev/null \
    && ok "the sparse folder is an Edit-Plus pipeline" || bad "model_index.json is not QwenImageEditPlusPipeline"
grep -q '"vision_config": {"depth": 32, .*"hidden_size": 1280, .*"fullatt_block_indexes": \[7, 15, 23, 31\]' \
    "$T/sparse/text_encoder/config.json" 2>/dev/null && ok "its text encoder config has the 7B vision tower" \
    || bad "no 7B vision_config in the text encoder config"
[ "$(du -sk "$T/sparse" | cut -f1)" -lt 4096 ] && ok "the sparse folder takes under 4 MB of disk" \
    || bad "the sparse folder is not sparse"

# --only names a row set; an unknown one is refused, not an empty table. `--only gemm` (the block
# GEMM against the expansion, CUDA with a GGUF --type) says why it times nothing on the CPU.
"$BIN" bench --only nope -m "$MODEL" --device cpu >"$T/only.txt" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "expected dit, te, vae, e2e or gemm" "$T/only.txt" && ok "--only nope is refused (exit 2)" \
    || bad "--only nope: exit $rc"
"$BIN" bench --only gemm -m "$MODEL" --device cpu --runs 1 --warmup 0 >"$T/gemm.txt" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -Eq "^\| block GEMM \| \| \| not timed: (needs --device cuda|a build without CUDA)" "$T/gemm.txt" \
    && ok "--only gemm on the CPU: a row saying why nothing is timed" || bad "--only gemm on the CPU: exit $rc"

[ $fails -eq 0 ] && echo "bench --edit: all claims hold" || echo "bench --edit: $fails failed"
exit $fails

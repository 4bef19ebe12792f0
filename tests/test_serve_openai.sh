#!/bin/sh
# test_serve_openai.sh QWEN_IMAGE MODEL_DIR NPM_DIR — the official `openai` npm
# package, unchanged, pointed at `qwen-image serve` (tests/openai_client.mjs):
# images.generate with b64_json and with stream + partial_images, and
# images.edit (multipart, one picture), and on a Qwen-Image-Edit model
# images.edit with two pictures, each image byte-identical to `generate`'s. The package is installed into NPM_DIR from the
# npm registry on first use (pinned version); without node/npm or the registry
# the test is skipped (exit 77), saying why.
set -u
BIN=$1; MODEL=$2; NPM_DIR=$3
OPENAI_VERSION=7.60.0
command -v node >/dev/null && command -v npm >/dev/null || { echo "skip: node and npm are not installed"; exit 77; }
if [ ! -f "$NPM_DIR/node_modules/openai/package.json" ]; then
    mkdir -p "$NPM_DIR"
    timeout 120 npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "openai@$OPENAI_VERSION" >"$NPM_DIR/install.log" 2>&1 ||
        { cat "$NPM_DIR/install.log"; echo "skip: could not install openai@$OPENAI_VERSION from the npm registry"; exit 77; }
fi
. "$(dirname "$0")/serve_lib.sh"
serve_start serve "$MODEL" --threads 2
cp "$(dirname "$0")/openai_client.mjs" "$NPM_DIR/"   # resolves 'openai' from NPM_DIR/node_modules
cp "$MODEL/../edit/inputs/in_b.png" "$T/in_b.png"
timeout 120 node "$NPM_DIR/openai_client.mjs" "http://127.0.0.1:$PORT" "$T" "$T/in_b.png" || fails=$((fails + 1))
for s in 2 4; do
    "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -n blur --cfg 3 -W 32 -H 48 --steps $s --seed 7 \
        -o "$T/cli$s.png" --quiet
done
cmp -s "$T/openai.png" "$T/cli2.png" && echo "ok - the client's image is byte-identical to generate's" ||
    { echo "FAIL - the client's image differs from generate's"; fails=$((fails + 1)); }
cmp -s "$T/openai_stream.png" "$T/cli4.png" && echo "ok - the streamed completed image is byte-identical to generate's" ||
    { echo "FAIL - the streamed image differs from generate's"; fails=$((fails + 1)); }
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -W 32 -H 48 --steps 4 --seed 7 --image in_b.png \
    --strength 0.5 -o cli_edit.png --quiet)
cmp -s "$T/openai_edit.png" "$T/cli_edit.png" && echo "ok - images.edit gives generate --image's bytes" ||
    { echo "FAIL - images.edit's image differs from generate --image's"; fails=$((fails + 1)); }
serve_stop TERM
# a Qwen-Image-Edit model (the tiny 2509 folder, small picture areas): the client's list of pictures
EDM="$MODEL/../edit/model-2509"
serve_start edit "$EDM" --threads 2 --edit-vl-area 3136 --edit-vae-area 4096
cp "$MODEL/../edit/inputs/in_c.png" "$T/in_c.png"
timeout 120 node "$NPM_DIR/openai_client.mjs" --edit-model "http://127.0.0.1:$PORT" "$T" "$T/in_b.png" "$T/in_c.png" ||
    fails=$((fails + 1))
(cd "$T" && "$BIN" generate -m "$EDM" --threads 2 -p "swap them" -W 32 -H 48 --steps 2 --seed 22 --image in_b.png \
    --image in_c.png --edit-vl-area 3136 --edit-vae-area 4096 -o cli_edit2.png --quiet)
cmp -s "$T/openai_edit2.png" "$T/cli_edit2.png" && echo "ok - images.edit on an Edit model gives generate's bytes" ||
    { echo "FAIL - images.edit on an Edit model differs from generate --image --image's"; fails=$((fails + 1)); }
serve_stop TERM
echo "failures: $fails"
exit $fails

#!/bin/sh
# test_serve_page.sh QWEN_IMAGE MODEL_DIR SCREENSHOT — the web page of
# `qwen-image serve` in a real headless browser (Debian's chromium, driven
# through chromium-driver's WebDriver HTTP API with curl + jq): fill the
# form, generate, see the step preview, the progress bar and the finished
# image (byte-identical to `generate`'s) appear in the page and its history;
# "use these settings again"; cancel a running job. Saves a screenshot to
# SCREENSHOT. Exits 77 (skipped) when chromium or chromedriver is missing.
set -u
BIN=$1
MODEL=$2
SHOT=$3
command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "skip: no chromium/chromedriver"; exit 77; }
. "$(dirname "$0")/serve_lib.sh"

serve_start server "$MODEL" --threads 2 --max-steps 1000
DPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chromedriver --port=$DPORT >"$T/driver.log" 2>&1 &
echo $! >>"$T/pids"
for i in $(seq 1 100); do curl -s --max-time 2 "http://127.0.0.1:$DPORT/status" | grep -q '"ready":true' && break; sleep 0.1; done

WD="http://127.0.0.1:$DPORT"
post() { curl -s --max-time 30 -H 'Content-Type: application/json' -d "$2" "$WD$1"; }
SID=$(post /session '{"capabilities":{"alwaysMatch":{"browserName":"chrome","goog:chromeOptions":{"binary":"'"$(command -v chromium)"'","args":["--headless=new","--no-sandbox","--disable-gpu","--window-size=1200,900"]}}}}' | jq -r .value.sessionId)
[ -n "$SID" ] && [ "$SID" != null ] || { cat "$T/driver.log" | tail -5; echo "FAIL - no browser session"; exit 1; }
S="/session/$SID"
js() { post "$S/execute/sync" "$(jq -nc --arg s "$1" '{script: $s, args: []}')" | jq -r .value; }
el() { post "$S/element" "$(jq -nc --arg v "$1" '{using: "css selector", value: $v}')" | jq -r '.value[]'; }
click() { post "$S/element/$(el "$1")/click" '{}' >/dev/null; }
type_in() { E=$(el "$1"); post "$S/element/$E/clear" '{}' >/dev/null; post "$S/element/$E/value" "$(jq -nc --arg t "$2" '{text: $t}')" >/dev/null; }
select_value() { js "document.querySelector('$1').value = '$2'; document.querySelector('$1').dispatchEvent(new Event('change')); return 1" >/dev/null; }
# wait_js EXPR SECONDS: until the expression is true in the page
wait_js() { for i in $(seq 1 $(($2 * 10))); do [ "$(js "return !!($1)")" = true ] && return 0; sleep 0.1; done; return 1; }

post "$S/url" "{\"url\":\"http://127.0.0.1:$PORT/\"}" >/dev/null
[ "$(js 'return document.title')" = qwen-image ] && ok "the page loads (title qwen-image)" || bad "page title"
wait_js "document.getElementById('model').textContent.includes('cpu')" 5 && ok "the page shows the model and device" \
    || bad "no model line"
[ "$(js "return document.querySelectorAll('#aspect option:not([value=auto])').length")" = 8 ] && ok "seven official sizes + custom" \
    || bad "size options"

# fill the form the way a person does: type, pick, click
type_in '#prompt' 'a red fox in the snow'
select_value '#aspect' custom
type_in '#width' 32
type_in '#height' 48
select_value '#preset' custom
type_in '#steps' 150
select_value '#seedmode' fixed
type_in '#seed' 11
# record every progress value and whether a preview showed while running
js "window.seen = {progress: [], preview: false}; setInterval(() => { const b = document.getElementById('bar');
    window.seen.progress.push(b.value); if (document.querySelector('#preview img')) window.seen.preview = true; }, 20);
    return 1" >/dev/null
click '#go'
wait_js "document.getElementById('final')" 30 && ok "the finished image appears" || bad "no finished image"
[ "$(js 'return window.seen.preview')" = true ] && ok "a step preview appeared while running" || bad "no preview seen"
[ "$(js 'return window.seen.progress.some(v => v > 0 && v < 1)')" = true ] && ok "the progress bar moved through the steps" \
    || bad "no intermediate progress: $(js 'return JSON.stringify(window.seen.progress.slice(-20))')"
[ "$(js "return document.getElementById('bar').value")" = 1 ] && ok "progress ends at 1" || bad "progress not 1"
[ "$(js "return document.querySelectorAll('#gallery .card').length")" = 1 ] && ok "the image is in the history" || bad "history"
js "return document.getElementById('final').src.split(',')[1]" | base64 -d >"$T/page.png"
"$BIN" generate -m "$MODEL" --threads 2 -p 'a red fox in the snow' -W 32 -H 48 --steps 150 --seed 11 -o "$T/cli.png" --quiet
cmp -s "$T/page.png" "$T/cli.png" && ok "the page's image is byte-identical to generate's" || bad "page image differs from the CLI's"
curl -s --max-time 30 "$WD$S/screenshot" | jq -r .value | base64 -d >"$SHOT" && [ -s "$SHOT" ] \
    && ok "screenshot saved: $SHOT ($(wc -c <"$SHOT") bytes)" || bad "no screenshot"

# "use these settings again" puts them back after the form changed
type_in '#prompt' 'something else'
click '#gallery .card button'
[ "$(js "return document.getElementById('prompt').value")" = 'a red fox in the snow' ] && \
    [ "$(js "return document.getElementById('seed').value")" = 11 ] && ok "use these settings again" || bad "settings not restored"

# cancel a running job from the page
type_in '#steps' 1000
click '#go'
wait_js "document.getElementById('status').textContent.startsWith('running — step')" 20 || bad "long job never ran"
click '#cancel'
wait_js "document.getElementById('status').textContent.startsWith('cancelled')" 10 && ok "cancel stops the running job" \
    || bad "cancel: status '$(js "return document.getElementById('status').textContent")'"
[ "$(js "return document.getElementById('go').disabled")" = false ] && ok "the form is usable again" || bad "form stuck"

# a picture: image-to-image through /v1/images/edits, the bytes of generate --image (run beside the file)
EDIN="$MODEL/../edit/inputs"
cp "$EDIN/in_b.png" "$EDIN/in_c.png" "$T/"
pick_files() { post "$S/element/$(el '#pictures')/value" "$(jq -nc --arg t "$1" '{text: $t}')" >/dev/null; }
type_in '#prompt' 'a cat'
type_in '#steps' 4
type_in '#seed' 7
type_in '#strength' 0.5
pick_files "$T/in_b.png"
click '#go'
wait_js "document.querySelectorAll('#gallery .card').length === 2" 30 && ok "the img2img image appears" \
    || bad "no img2img image: $(js "return document.getElementById('status').textContent")"
js "return document.getElementById('final').src.split(',')[1]" | base64 -d >"$T/page_i2i.png"
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p 'a cat' -W 32 -H 48 --steps 4 --seed 7 --image in_b.png \
    --strength 0.5 -o cli_i2i.png --quiet)
cmp -s "$T/page_i2i.png" "$T/cli_i2i.png" && ok "the page's img2img image is byte-identical to generate --image's" \
    || bad "page img2img image differs from the CLI's"
curl -s -X DELETE --max-time 10 "$WD$S" >/dev/null
serve_stop INT

# an Edit model: the picture input takes several references, strength is gone, the size follows them
EDM="$MODEL/../edit/model-2509"
serve_start edit "$EDM" --threads 2 --edit-vl-area 3136 --edit-vae-area 4096
SID=$(post /session '{"capabilities":{"alwaysMatch":{"browserName":"chrome","goog:chromeOptions":{"binary":"'"$(command -v chromium)"'","args":["--headless=new","--no-sandbox","--disable-gpu","--window-size=1200,900"]}}}}' | jq -r .value.sessionId)
S="/session/$SID"
post "$S/url" "{\"url\":\"http://127.0.0.1:$PORT/\"}" >/dev/null
wait_js "document.getElementById('pictures').multiple" 5 && ok "Edit model: the picture input takes several" \
    || bad "Edit model: single picture input"
[ "$(js "return document.getElementById('strength-row').hidden && document.getElementById('aspect').value")" = auto ] \
    && ok "Edit model: no strength, size from the pictures" || bad "Edit model: strength or size"
type_in '#prompt' 'swap them'
select_value '#aspect' custom
type_in '#width' 32
type_in '#height' 48
select_value '#preset' custom
type_in '#steps' 2
select_value '#seedmode' fixed
type_in '#seed' 22
pick_files "$T/in_b.png
$T/in_c.png"
click '#go'
wait_js "document.getElementById('final')" 30 && ok "the Edit image appears" \
    || bad "no Edit image: $(js "return document.getElementById('status').textContent")"
js "return document.getElementById('final').src.split(',')[1]" | base64 -d >"$T/page_edit.png"
(cd "$T" && "$BIN" generate -m "$EDM" --threads 2 -p 'swap them' -W 32 -H 48 --steps 2 --seed 22 --image in_b.png \
    --image in_c.png --edit-vl-area 3136 --edit-vae-area 4096 -o cli_edit.png --quiet)
cmp -s "$T/page_edit.png" "$T/cli_edit.png" && ok "the page's Edit image is byte-identical to generate's" \
    || bad "page Edit image differs from the CLI's"
curl -s -X DELETE --max-time 10 "$WD$S" >/dev/null
serve_stop INT
echo "failures: $fails"
exit $fails

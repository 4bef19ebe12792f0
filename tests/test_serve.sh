#!/bin/sh
# test_serve.sh QWEN_IMAGE MODEL_DIR — `qwen-image serve` on the loopback
# address with the tiny model: every endpoint and error status, a served PNG
# byte-identical to `generate`'s, SSE event order, cancel, 429, disconnect,
# slow clients, SIGTERM drain and SIGINT stop. Needs curl, jq, python3.
# Each check prints "ok - ..." or "FAIL - ..."; the exit status is the count
# of failures. Bounded: every curl has --max-time, the whole run ~30 s.
set -u
BIN=$1
MODEL=$2
. "$(dirname "$0")/serve_lib.sh"
check() { if [ "$2" = "$3" ]; then ok "$1 ($3)"; else bad "$1: expected '$3', got '$2'"; fi; }

# start NAME ARGS...: a server of MODEL on a free port (serve_start); sets PORT, PID
start() {
    name=$1; shift
    serve_start "$name" "$MODEL" --threads 2 "$@"
}
U() { echo "http://127.0.0.1:$PORT$1"; }
# req METHOD PATH [BODY]: prints the status; the body in $T/body, headers in $T/hdr
req() {
    if [ $# -ge 3 ]; then
        curl -s --max-time 30 -o "$T/body" -D "$T/hdr" -w '%{http_code}' -X "$1" $AUTH -H 'Content-Type: application/json' \
            --data-binary "$3" "$(U "$2")"
    else
        curl -s --max-time 30 -o "$T/body" -D "$T/hdr" -w '%{http_code}' -X "$1" $AUTH "$(U "$2")"
    fi
}
field() { jq -r "$1" "$T/body"; }
wait_job() { # wait_job ID STATE...: until the job is in one of the states (10 s)
    id=$1; shift
    for i in $(seq 1 100); do
        st=$(curl -s --max-time 5 $AUTH "$(U /v1/jobs/$id)" | jq -r .status)
        for s in "$@"; do [ "$st" = "$s" ] && return 0; done
        sleep 0.1
    done
    return 1
}
LONG='{"prompt":"a long job","size":"32x32","steps":1000,"seed":1}' # always cancelled

# ---- server A: an API key, a queue of 1, small bodies --------------------------------
start A --api-key sekret --queue 1 --max-body 4096 --max-steps 1000 --timeout 2 --url-ttl 3
AUTH=""
check "GET /health without the key" "$(req GET /health)" 200
check "/health status" "$(field .status)" ok
check "GET /v1/models without the key" "$(req GET /v1/models)" 401
check "401 error type" "$(field .error.code)" invalid_api_key
check "wrong key" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' "$(U /v1/models)")" 401
AUTH="--oauth2-bearer sekret"
check "GET /v1/models" "$(req GET /v1/models)" 200
check "models id" "$(field '.data[0].id')" qwen-image
check "GET / (the page)" "$(curl -s --max-time 5 -o "$T/page" -w '%{http_code}' "$(U /)")" 200
grep -q '<form id="form">' "$T/page" && ok "the page has the form" || bad "the page has no form"
if command -v node >/dev/null; then # the page's script parses (it is served as it was written)
    sed -n '/<script>/,/<\/script>/p' "$T/page" | sed '1d;$d' >"$T/page.js"
    node --check "$T/page.js" && ok "the page's script parses (node --check)" || bad "the page's script does not parse"
fi

# the same request through the server and the CLI: the same bytes
check "POST /v1/images/generations" \
    "$(req POST /v1/images/generations '{"model":"any","prompt":"a cat","size":"32x48","steps":2,"seed":7,"negative_prompt":"blur","cfg":3}')" 200
field '.data[0].b64_json' | base64 -d >"$T/served.png"
"$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -n blur --cfg 3 -W 32 -H 48 --steps 2 --seed 7 -o "$T/cli.png" --quiet
cmp -s "$T/served.png" "$T/cli.png" && ok "served PNG byte-identical to generate's ($(wc -c <"$T/cli.png") bytes)" \
    || bad "served PNG differs from generate's"

# response_format "url": a link on this server, fetched without the key, the same bytes; gone after --url-ttl
check "response_format url" \
    "$(req POST /v1/images/generations '{"prompt":"a cat","size":"32x48","steps":2,"seed":7,"negative_prompt":"blur","cfg":3,"response_format":"url"}')" 200
URL=$(field '.data[0].url')
echo "$URL" | grep -Eq "^http://127\.0\.0\.1:$PORT/v1/files/[0-9a-f]{32}\.png\$" && ok "url: $URL" || bad "url: '$URL'"
check "GET the url without the key" "$(curl -s --max-time 5 -o "$T/url.png" -D "$T/hdr" -w '%{http_code}' "$URL")" 200
grep -qi '^content-type: image/png' "$T/hdr" && ok "url: Content-Type image/png" || bad "url: $(grep -i content-type "$T/hdr")"
cmp -s "$T/url.png" "$T/cli.png" && ok "url: the same bytes as generate's" || bad "url: bytes differ from generate's"
check "url: a name never given" "$(req GET /v1/files/0123456789abcdef0123456789abcdef.png)" 404
check "url: 404 is JSON" "$(field .error.code)" file_not_found
check "url: POST" "$(req POST /v1/files/x.png '{}')" 405
bad_url() { check "$1" "$(req POST "$2" "$3")" 400; check "$1: param" "$(field .error.param)" response_format; }
bad_url "url with stream" /v1/images/generations '{"prompt":"x","size":"32x32","steps":1,"stream":true,"response_format":"url"}'
bad_url "url for an async job" /v1/jobs '{"prompt":"x","size":"32x32","steps":1,"response_format":"url"}'
bad_url "response_format unknown" /v1/images/generations '{"prompt":"x","response_format":"xml"}'
sleep 3.2
check "url: gone after --url-ttl 3" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$URL")" 404
check "n=2 output_format=jpeg" \
    "$(req POST /v1/images/generations '{"prompt":"x","size":"32x32","steps":1,"n":2,"output_format":"jpeg","seed":3}')" 200
check "two images" "$(field '.data | length')" 2
check "JPEG magic" "$(field '.data[1].b64_json' | base64 -d | head -c 3 | od -An -tx1 | tr -d ' ')" ffd8ff

# malformed requests: each answered, the server still serving
bad_req() { # bad_req NAME BODY STATUS PARAM
    check "$1" "$(req POST /v1/images/generations "$2")" "$3"
    [ -n "${4:-}" ] && check "$1: param" "$(field .error.param)" "$4"
}
bad_req "bad JSON" '{"prompt": "x",' 400
bad_req "not an object" '[1,2]' 400
bad_req "prompt missing" '{"size":"32x32"}' 400 prompt
bad_req "prompt wrong type" '{"prompt":5}' 400 prompt
bad_req "negative size" '{"prompt":"x","size":"-32x32"}' 400 size
bad_req "size not a multiple of 16" '{"prompt":"x","size":"30x32"}' 400 size
bad_req "size over --max-size" '{"prompt":"x","size":"4096x4096"}' 400 size
bad_req "n too large" '{"prompt":"x","n":99}' 400 n
bad_req "steps wrong type" '{"prompt":"x","steps":"8"}' 400 steps
bad_req "steps over --max-steps" '{"prompt":"x","steps":5000}' 400 steps
bad_req "cfg out of range" '{"prompt":"x","cfg":-1}' 400 cfg
bad_req "seed fractional" '{"prompt":"x","seed":1.5}' 400 seed
bad_req "unknown output_format" '{"prompt":"x","output_format":"gif"}' 400 output_format
bad_req "loras on a server with no --lora-dir" '{"prompt":"x","loras":[{"name":"nope","strength":1}]}' 400 loras
bad_req "partial_images out of range" '{"prompt":"x","partial_images":7}' 400 partial_images
printf '{"prompt":"\377\376 bad"}' >"$T/utf8.json"
check "invalid UTF-8" "$(curl -s --max-time 5 -o "$T/body" -w '%{http_code}' $AUTH --data-binary @"$T/utf8.json" "$(U /v1/images/generations)")" 400
check "invalid UTF-8: param" "$(field .error.param)" prompt
head -c 8000 /dev/zero | tr '\0' a | sed 's/^/{"prompt":"/; s/$/"}/' >"$T/big.json"
check "body over --max-body" "$(curl -s --max-time 5 -o "$T/body" -w '%{http_code}' $AUTH --data-binary @"$T/big.json" "$(U /v1/images/generations)")" 413
check "413 is JSON" "$(field .error.code)" body_too_large
check "unknown path" "$(req GET /v1/nothing)" 404
check "wrong method" "$(req GET /v1/images/generations)" 405
check "edits with a JSON body" "$(req POST /v1/images/edits '{}')" 400
check "unknown job" "$(req GET /v1/jobs/nope)" 404
check "still serving" "$(req GET /health)" 200

# async job + its events in order
check "POST /v1/jobs" "$(req POST /v1/jobs '{"prompt":"async","size":"32x32","steps":3,"seed":5}')" 202
ID=$(field .id)
curl -s -N --max-time 20 $AUTH "$(U /v1/jobs/$ID/events)" | sed -n 's/^event: //p' | tr '\n' ' ' >"$T/events"
order=$(sed 's/preview //g; s/progress \(progress \)*/progress+ /g' "$T/events")
check "job events: progress..., completed last" "$order" "progress+ completed "
grep -q preview "$T/events" && ok "job events carry previews" || bad "no preview event: $(cat "$T/events")"
check "GET completed job" "$(req GET /v1/jobs/$ID)" 200
check "job status" "$(field .status)" completed
check "job progress" "$(field .progress)" 1

# OpenAI streaming: partial images, then the completed image (= the blocking one)
curl -s -N --max-time 20 $AUTH -H 'Content-Type: application/json' --data-binary \
    '{"prompt":"a cat","size":"32x48","steps":4,"seed":7,"negative_prompt":"blur","cfg":3,"stream":true,"partial_images":2}' \
    "$(U /v1/images/generations)" >"$T/sse"
check "stream events" "$(sed -n 's/^event: //p' "$T/sse" | tr '\n' ' ')" \
    "image_generation.partial_image image_generation.partial_image image_generation.completed "
sed -n 's/^data: //p' "$T/sse" | tail -1 | jq -r .b64_json | base64 -d >"$T/streamed.png"
"$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -n blur --cfg 3 -W 32 -H 48 --steps 4 --seed 7 -o "$T/cli4.png" --quiet
cmp -s "$T/streamed.png" "$T/cli4.png" && ok "streamed image byte-identical to generate's" || bad "streamed image differs"

# queue of 1: one running, one waiting, the next 429 with Retry-After; cancel both
req POST /v1/jobs "$LONG" >/dev/null; J1=$(field .id)
wait_job $J1 running || bad "long job never ran"
check "second job queued" "$(req POST /v1/jobs "$LONG")" 202; J2=$(field .id)
check "queue_position" "$(field .queue_position)" 0
check "third job: queue full" "$(req POST /v1/jobs "$LONG")" 429
grep -qi '^retry-after: [1-9]' "$T/hdr" && ok "Retry-After header" || bad "no Retry-After"
check "DELETE queued job" "$(req DELETE /v1/jobs/$J2)" 200
check "queued job cancelled at once" "$(field .status)" cancelled
for i in $(seq 1 100); do # until it has made a step (and its preview)
    [ "$(req GET /v1/jobs/$J1)" = 200 ] && [ "$(field .step)" -ge 1 ] && break
    sleep 0.1
done
check "GET running job" "$(req GET /v1/jobs/$J1)" 200
[ "$(field .step)" -ge 1 ] && ok "running job reports its step ($(field .step)/$(field .steps))" || bad "no step"
[ "$(field '.preview | length')" -gt 100 ] && ok "running job has a preview" || bad "no preview while running"
check "DELETE running job" "$(req DELETE /v1/jobs/$J1)" 200
wait_job $J1 cancelled && ok "running job cancelled at its next step" || bad "running job not cancelled"

# a blocking client that disconnects cancels its job
before=$(curl -s $AUTH "$(U /health)" | jq .cancelled)
curl -s --max-time 1 $AUTH --data-binary "$LONG" "$(U /v1/images/generations)" >/dev/null
for i in $(seq 1 50); do
    [ "$(curl -s $AUTH "$(U /health)" | jq .cancelled)" -gt "$before" ] && break
    sleep 0.1
done
check "disconnect cancels the job" "$(curl -s $AUTH "$(U /health)" | jq '.cancelled > '"$before")" true

# a slow client (headers never finished) is dropped after --timeout; others are served meanwhile
python3 - "$PORT" >"$T/slow" <<'EOF' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Le")
t0 = time.time()
s.settimeout(10)
try:
    data = s.recv(100)
except Exception as e:
    data = repr(e).encode()
print("closed after %.1f s: %r" % (time.time() - t0, data))
EOF
SLOW=$!
check "served while a slow client hangs" "$(req GET /health)" 200
wait $SLOW
grep -q "closed after [2-4]\.[0-9] s: b''" "$T/slow" && ok "slow client dropped: $(cat "$T/slow")" \
    || bad "slow client: $(cat "$T/slow")"

# SIGTERM drains: the running job finishes, new requests get 503, then exit 0
# (long enough to still run at the checks: 120 steps of 32x32 took ~1 s on an idle 2-core machine, so the
# server could finish and exit before the first check; 600 steps take ~5 s, and the events wait up to 300 s)
req POST /v1/jobs '{"prompt":"drain","size":"32x32","steps":600,"seed":1}' >/dev/null; JD=$(field .id)
wait_job $JD running
kill -TERM $PID
for i in $(seq 1 20); do [ "$(req GET /health)" = 503 ] && break; sleep 0.05; done
check "draining: /health" "$(req GET /health)" 503
check "draining: new job" "$(req POST /v1/jobs "$LONG")" 503
curl -s --max-time 300 -N $AUTH "$(U /v1/jobs/$JD/events)" | sed -n 's/^event: //p' | tail -1 >"$T/last"
check "draining: the running job completes" "$(cat "$T/last")" completed
wait $PID; check "SIGTERM exit status" $? 0


# ---- server C: per-request LoRAs from --lora-dir (swapped in beside the weights) ------------
mkdir -p "$T/loras"
cp "$MODEL/../shared/reference/public/lora.safetensors" "$T/loras/lightning.safetensors"
start C --lora-dir "$T/loras"
AUTH=""
check "models lists the folder's LoRAs" "$(req GET /v1/models >/dev/null; field '.data[0].loras_available[0]')" \
    lightning.safetensors
L1='{"prompt":"a cat","size":"32x48","steps":2,"seed":7,"negative_prompt":"blur","cfg":3,'
check "request with loras" "$(req POST /v1/images/generations "$L1"'"loras":[{"name":"lightning","strength":0.8}]}')" 200
field '.data[0].b64_json' | base64 -d >"$T/served_lora.png"
"$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -n blur --cfg 3 -W 32 -H 48 --steps 2 --seed 7 --quiet \
    --lora "$T/loras/lightning.safetensors:0.8" --lora-mode runtime -o "$T/cli_lora.png"
cmp -s "$T/served_lora.png" "$T/cli_lora.png" && ok "a request's LoRA gives generate --lora's bytes" \
    || bad "LoRA image differs from generate --lora's"
cmp -s "$T/served_lora.png" "$T/cli.png" && bad "the LoRA changed nothing" || ok "the LoRA changes the image"
check "the next request without loras" "$(req POST /v1/images/generations "$L1"'"n":1}')" 200
field '.data[0].b64_json' | base64 -d >"$T/served_nolora.png"
cmp -s "$T/served_nolora.png" "$T/cli.png" && ok "the LoRA is swapped out again: generate's bytes without it" \
    || bad "after a LoRA request, a request without one differs from generate's"
for b in '[{"name":"nope"}]' '[{"name":"../lightning.safetensors"}]' '[{"name":"lightning","strength":"x"}]' \
         '"lightning"' '[{"name":"lightning","strength":1e9}]'; do
    check "loras $b" "$(req POST /v1/images/generations '{"prompt":"x","size":"32x32","steps":1,"loras":'"$b"'}')" 400
    check "loras $b: param" "$(field .error.param)" loras
done
# /v1/images/edits (multipart): img2img and inpaint give generate --image/--mask's bytes (the CLI
# runs beside the files so the parameters text names them alike)
EDIN="$MODEL/../edit/inputs"
cp "$EDIN/in_b.png" "$EDIN/mask_a.png" "$T/"
edit() { # edit FORM-ARGS...: prints the status; the body in $T/body
    curl -s --max-time 30 -o "$T/body" -w '%{http_code}' $AUTH "$@" "$(U /v1/images/edits)"
}
check "POST /v1/images/edits (img2img)" "$(cd "$T" && edit -F image=@in_b.png -F prompt="a cat" -F size=32x48 \
    -F steps=4 -F seed=7 -F strength=0.5)" 200
field '.data[0].b64_json' | base64 -d >"$T/edit.png"
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -W 32 -H 48 --steps 4 --seed 7 --quiet \
    --image in_b.png --strength 0.5 -o cli_edit.png)
cmp -s "$T/edit.png" "$T/cli_edit.png" && ok "edits image byte-identical to generate --image's" \
    || bad "edits image differs from generate --image's"
# the same multipart body as an async job: 202, then the job's image is the same bytes
check "POST /v1/jobs multipart (img2img job)" "$(cd "$T" && curl -s --max-time 30 -o "$T/body" -w '%{http_code}' $AUTH \
    -F image=@in_b.png -F prompt="a cat" -F size=32x48 -F steps=4 -F seed=7 -F strength=0.5 "$(U /v1/jobs)")" 202
JID=$(field .id)
wait_job "$JID" completed && ok "img2img job completed" || bad "img2img job: $(curl -s $AUTH "$(U /v1/jobs/$JID)" | head -c 300)"
req GET "/v1/jobs/$JID" >/dev/null
field '.data[0].b64_json' | base64 -d >"$T/edit_job.png"
cmp -s "$T/edit_job.png" "$T/cli_edit.png" && ok "img2img job's image byte-identical to generate --image's" \
    || bad "img2img job's image differs from generate --image's"
check "edits with image[] and a mask (inpaint)" "$(cd "$T" && edit -F 'image[]=@in_b.png' -F mask=@mask_a.png \
    -F prompt="a cat" -F size=32x48 -F steps=4 -F seed=7 -F strength=0.8 -F output_format=png)" 200
field '.data[0].b64_json' | base64 -d >"$T/inpaint.png"
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -W 32 -H 48 --steps 4 --seed 7 --quiet \
    --image in_b.png --mask mask_a.png --strength 0.8 -o cli_inpaint.png)
cmp -s "$T/inpaint.png" "$T/cli_inpaint.png" && ok "inpaint image byte-identical to generate --mask's" \
    || bad "inpaint image differs from generate --mask's"
cmp -s "$T/inpaint.png" "$T/edit.png" && bad "the mask and strength changed nothing" || ok "inpaint differs from img2img"
printf 'not a picture' >"$T/junk.png"
bad_edit() { # bad_edit NAME PARAM FORM-ARGS...
    name=$1; param=$2; shift 2
    check "edits: $name" "$(cd "$T" && edit "$@")" 400
    check "edits: $name: param" "$(field .error.param)" "$param"
}
bad_edit "no image" image -F prompt=x
bad_edit "two images on a non-Edit model" image -F 'image[]=@in_b.png' -F 'image[]=@in_b.png' -F prompt=x
bad_edit "undecodable image" image -F image=@junk.png -F prompt=x
bad_edit "undecodable mask" mask -F image=@in_b.png -F mask=@junk.png -F prompt=x
python3 -c 'import struct,sys,zlib; ihdr=b"IHDR"+struct.pack(">IIBBBBB",9000,9000,8,2,0,0,0)
sys.stdout.buffer.write(b"\x89PNG\r\n\x1a\n"+struct.pack(">I",13)+ihdr+struct.pack(">I",zlib.crc32(ihdr)))' >"$T/huge.png"
bad_edit "a 9000x9000 picture (over 4 x --max-size)" image -F image=@huge.png -F prompt=x
grep -q "at most 8192x8192" "$T/body" && ok "the message gives the limit" || bad "no limit in: $(cat "$T/body")"
bad_edit "strength 0" strength -F image=@in_b.png -F prompt=x -F strength=0
bad_edit "strength 1.5" strength -F image=@in_b.png -F prompt=x -F strength=1.5
bad_edit "steps not a number" steps -F image=@in_b.png -F prompt=x -F steps=many
bad_edit "no prompt" prompt -F image=@in_b.png
bad_edit "loras not JSON" loras -F image=@in_b.png -F prompt=x -F 'loras=[{'
check "still serving after bad edits" "$(req GET /health)" 200
req GET /v1/models >/dev/null; check "models mode of a Qwen-Image model" "$(field ".data[0].mode")" t2i
# A1111 img2img: init_images (base64, a data-URL prefix allowed) and denoising_strength give
# generate --image/--strength's bytes; with a base64 mask, generate --mask's. The pictures are
# recorded as init_images[0] and mask, so the CLI runs on files of those names.
cp "$EDIN/in_b.png" "$T/init_images[0]"; cp "$EDIN/mask_a.png" "$T/mask"
B64B=$(base64 -w0 "$EDIN/in_b.png"); B64M=$(base64 -w0 "$EDIN/mask_a.png")
I2I='"prompt":"a cat","width":32,"height":48,"steps":4,"seed":7,"sampler_name":"Euler"'
check "POST /sdapi/v1/img2img" "$(req POST /sdapi/v1/img2img \
    "{$I2I,\"denoising_strength\":0.5,\"init_images\":[\"data:image/png;base64,$B64B\"]}")" 200
field '.images[0]' | base64 -d >"$T/a1111_i2i.png"
check "img2img parameters do not echo the pictures" "$(field .parameters.init_images)" null
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -W 32 -H 48 --steps 4 --seed 7 --quiet \
    --image 'init_images[0]' --strength 0.5 -o cli_a1111_i2i.png)
cmp -s "$T/a1111_i2i.png" "$T/cli_a1111_i2i.png" && ok "img2img image byte-identical to generate --image's" \
    || bad "img2img image differs from generate --image's"
check "img2img with a mask (inpaint)" "$(req POST /sdapi/v1/img2img \
    "{$I2I,\"denoising_strength\":0.8,\"init_images\":[\"$B64B\"],\"mask\":\"$B64M\"}")" 200
field '.images[0]' | base64 -d >"$T/a1111_inp.png"
(cd "$T" && "$BIN" generate -m "$MODEL" --threads 2 -p "a cat" -W 32 -H 48 --steps 4 --seed 7 --quiet \
    --image 'init_images[0]' --mask mask --strength 0.8 -o cli_a1111_inp.png)
cmp -s "$T/a1111_inp.png" "$T/cli_a1111_inp.png" && ok "img2img+mask image byte-identical to generate --mask's" \
    || bad "img2img+mask image differs from generate --mask's"
bad_i2i() { # bad_i2i NAME PARAM BODY-FIELDS
    check "img2img: $1" "$(req POST /sdapi/v1/img2img "{\"prompt\":\"x\",\"steps\":1,$3}")" 400
    check "img2img: $1: param" "$(field .error.param)" "$2"
}
bad_i2i "no init_images" init_images '"width":32'
bad_i2i "empty init_images" init_images '"init_images":[]'
bad_i2i "init_images not a list" init_images "\"init_images\":\"$B64B\""
bad_i2i "malformed base64" init_images '"init_images":["iVBOR*w0KGgo="]'
bad_i2i "a lone base64 character" init_images '"init_images":["QUJD="]'
bad_i2i "base64 of no picture" init_images '"init_images":["bm90IGEgcGljdHVyZQ=="]'
bad_i2i "two pictures on a non-Edit model" init_images "\"init_images\":[\"$B64B\",\"$B64B\"]"
bad_i2i "malformed mask" mask "\"init_images\":[\"$B64B\"],\"mask\":\"@@\""
bad_i2i "denoising_strength 0" denoising_strength "\"init_images\":[\"$B64B\"],\"denoising_strength\":0"
bad_i2i "inpainting_mask_invert 1" inpainting_mask_invert "\"init_images\":[\"$B64B\"],\"inpainting_mask_invert\":1"
bad_i2i "batch_size x n_iter over --max-batch" batch_size "\"init_images\":[\"$B64B\"],\"batch_size\":2,\"n_iter\":3"
check "img2img: not JSON" "$(req POST /sdapi/v1/img2img '{')" 400
check "still serving after bad img2img" "$(req GET /health)" 200
serve_stop TERM

# --edit: single files say Edit through the flag, which the test-only area flags need
"$BIN" serve -m "$MODEL" --edit-vl-area 3136 --port 0 >"$T/noedit.log" 2>&1
check "serve --edit-vl-area without an Edit model: usage error" $? 2
grep -q "need a Qwen-Image-Edit model" "$T/noedit.log" && ok "the message says why" || bad "$(cat "$T/noedit.log")"
"$BIN" serve -m "$T/no-such-model" --edit --edit-vl-area 3136 --port 0 >"$T/edit_flag.log" 2>&1
grep -q "no such folder" "$T/edit_flag.log" && ok "serve takes --edit (it went on to open the model)" \
    || bad "--edit not taken: $(cat "$T/edit_flag.log")"

# ---- server E: a Qwen-Image-Edit model (the tiny 2509 folder; small picture areas: fast) --------
# the pictures are the references: /v1/images/edits and /sdapi/v1/img2img give the bytes of
# generate --image A --image B with the same model, prompt, seed, steps and size
MODEL_SAVED=$MODEL; MODEL="$MODEL/../edit/model-2509"
start E --edit-vl-area 3136 --edit-vae-area 4096
MODEL=$MODEL_SAVED
req GET /v1/models >/dev/null; check "models mode of an Edit model" "$(field ".data[0].mode")" edit
check "models max_images" "$(field '.data[0].max_images')" 3
cp "$EDIN/in_c.png" "$T/init_images[1]"; B64C=$(base64 -w0 "$EDIN/in_c.png")
EP="Place the green rectangle from Picture 1 onto the background of Picture 2"
(cd "$T" && "$BIN" generate -m "$MODEL/../edit/model-2509" --threads 2 -p "$EP" --steps 2 --seed 22 -W 32 -H 48 \
    --image 'init_images[0]' --image 'init_images[1]' --edit-vl-area 3136 --edit-vae-area 4096 --quiet -o cli_edit2.png)
check "edits with two pictures (Edit)" "$(cd "$T" && edit -F 'image[]=@init_images[0]' -F 'image[]=@init_images[1]' \
    -F "prompt=$EP" -F steps=2 -F seed=22 -F size=32x48)" 200
check "Edit answer size" "$(field .size)" 32x48
field '.data[0].b64_json' | base64 -d >"$T/edit2.png"
cmp -s "$T/edit2.png" "$T/cli_edit2.png" && ok "Edit image byte-identical to generate --image --image's" \
    || bad "Edit image differs from generate's"
check "Edit as an async job (multipart /v1/jobs)" "$(cd "$T" && curl -s --max-time 30 -o "$T/body" -w '%{http_code}' \
    $AUTH -F 'image[]=@init_images[0]' -F 'image[]=@init_images[1]' -F "prompt=$EP" -F steps=2 -F seed=22 -F size=32x48 \
    "$(U /v1/jobs)")" 202
EJ=$(field .id)
wait_job "$EJ" completed && req GET "/v1/jobs/$EJ" >/dev/null && field '.data[0].b64_json' | base64 -d >"$T/edit2_job.png"
cmp -s "$T/edit2_job.png" "$T/cli_edit2.png" && ok "the Edit job's image byte-identical to generate's" \
    || bad "the Edit job's image differs from generate's"
check "A1111 img2img on an Edit model" "$(req POST /sdapi/v1/img2img "{\"prompt\":\"$EP\",\"negative_prompt\":\"\",
    \"cfg_scale\":1,\"steps\":2,\"seed\":22,\"width\":32,\"height\":48,\"denoising_strength\":0.75,
    \"init_images\":[\"data:image/png;base64,$B64B\",\"$B64C\"]}")" 200
field '.images[0]' | base64 -d >"$T/a1111_edit2.png"
cmp -s "$T/a1111_edit2.png" "$T/cli_edit2.png" && ok "A1111 Edit image byte-identical (denoising_strength ignored)" \
    || bad "A1111 Edit image differs from generate's"
bad_edit "Edit: 4 pictures" image -F 'image[]=@in_b.png' -F 'image[]=@in_b.png' -F 'image[]=@in_b.png' \
    -F 'image[]=@in_b.png' -F prompt=x
bad_edit "Edit: a mask" mask -F image=@in_b.png -F mask=@mask_a.png -F prompt=x
grep -q "does not inpaint" "$T/body" && ok "the mask 400 says why" || bad "no reason in: $(cat "$T/body")"
bad_edit "Edit: strength" strength -F image=@in_b.png -F strength=0.5 -F prompt=x
bad_edit "Edit: n 2" n -F image=@in_b.png -F n=2 -F prompt=x
bad_edit "Edit: no picture" image -F prompt=x
# no size: the output is the last picture's aspect at 1024², checked before queueing (the 2509 folder's
# scheduler has shift_terminal, so 1 step is refused for that size, not for a size of 0)
bad_edit "Edit: 1 step, size from the picture" steps -F image=@in_b.png -F prompt=x -F steps=1
grep -q "shift_terminal" "$T/body" && ! grep -q "image_seq_len" "$T/body" \
    && ok "the schedule was checked for the picture's size" || bad "size-0 check: $(cat "$T/body")"
check "Edit: generations without a picture" "$(req POST /v1/images/generations '{"prompt":"x"}')" 400
grep -q "/v1/images/edits" "$T/body" && ok "the 400 points at /v1/images/edits" || bad "no pointer in: $(cat "$T/body")"
check "Edit: generations: param" "$(field .error.param)" image
check "Edit: /v1/jobs without a picture" "$(req POST /v1/jobs '{"prompt":"x"}')" 400
check "Edit: txt2img" "$(req POST /sdapi/v1/txt2img '{"prompt":"x"}')" 400
check "Edit: txt2img: param" "$(field .error.param)" init_images
bad_i2i "Edit: 4 init_images" init_images "\"init_images\":[\"$B64B\",\"$B64B\",\"$B64B\",\"$B64B\"]"
bad_i2i "Edit: a mask" mask "\"init_images\":[\"$B64B\"],\"mask\":\"$B64B\""
check "still serving after bad Edit requests" "$(req GET /health)" 200
serve_stop TERM

# ---- server D: a scheduler with shift_terminal: a 1-step request is a 400 saying why ------------
mkdir -p "$T/model_st/scheduler"
for f in "$MODEL"/*; do [ "$(basename "$f")" = scheduler ] || ln -s "$f" "$T/model_st/"; done
sed 's/"shift_terminal": null/"shift_terminal": 0.02/' "$MODEL/scheduler/scheduler_config.json" \
    >"$T/model_st/scheduler/scheduler_config.json"
MODEL_SAVED=$MODEL; MODEL="$T/model_st"
start D
MODEL=$MODEL_SAVED
check "1 step with shift_terminal" "$(req POST /v1/images/generations '{"prompt":"x","size":"32x32","steps":1}')" 400
grep -q "shift_terminal" "$T/body" && ok "the 400 says why: $(field .error.message | cut -c1-80)" \
    || bad "no reason in: $(cat "$T/body")"
check "1 step with shift_terminal: param" "$(field .error.param)" steps
check "an async job too: 400 at submission" "$(req POST /v1/jobs '{"prompt":"x","size":"32x32","steps":1}')" 400
check "2 steps with shift_terminal" "$(req POST /v1/images/generations '{"prompt":"x","size":"32x32","steps":2}')" 200
serve_stop TERM

# ---- server B: no key; SIGINT cancels the running job at its next step ----------------
start B --max-steps 1000
AUTH=""
check "no key needed" "$(req GET /v1/models)" 200
check "loras without --lora-dir" "$(req POST /v1/images/generations '{"prompt":"x","loras":[{"name":"a"}]}')" 400
grep -q -- "--lora-dir" "$T/body" && ok "the message names --lora-dir" || bad "no --lora-dir in: $(cat "$T/body")"
# the A1111 subset: txt2img gives generate's bytes; progress shows the running job and its preview
check "POST /sdapi/v1/txt2img" "$(req POST /sdapi/v1/txt2img \
    '{"prompt":"a cat","negative_prompt":"blur","cfg_scale":3,"width":32,"height":48,"steps":2,"seed":7,"sampler_name":"Euler"}')" 200
field '.images[0]' | base64 -d >"$T/a1111.png"
cmp -s "$T/a1111.png" "$T/cli.png" && ok "txt2img image byte-identical to generate's" || bad "txt2img image differs"
check "txt2img info seed" "$(field .info | jq .seed)" 7
check "txt2img bad cfg_scale" "$(req POST /sdapi/v1/txt2img '{"prompt":"x","cfg_scale":"high"}')" 400
check "txt2img bad cfg_scale: param" "$(field .error.param)" cfg_scale
req POST /v1/jobs "$LONG" >/dev/null; JB=$(field .id)
wait_job $JB running
for i in $(seq 1 100); do
    [ "$(req GET /sdapi/v1/progress)" = 200 ] && [ "$(field '.current_image | length')" -gt 100 ] && break
    sleep 0.1
done
check "GET /sdapi/v1/progress" "$(req GET /sdapi/v1/progress)" 200
[ "$(field .state.sampling_step)" -ge 1 ] && [ "$(field '.current_image | length')" -gt 100 ] \
    && ok "progress: step $(field .state.sampling_step)/$(field .state.sampling_steps) with current_image" \
    || bad "progress: $(head -c 200 "$T/body")"
t0=$(date +%s)
serve_stop INT; rc=$?
check "SIGINT exit status" $rc 0
[ $(( $(date +%s) - t0 )) -le 5 ] && ok "SIGINT stopped within 5 s" || bad "SIGINT took too long"
grep -q "stopped" "$T/B.log" && ok "B logged its stop" || bad "B did not stop cleanly"
if grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T"/*.log; then
    bad "sanitizer reports"; grep -A20 "Sanitizer\|runtime error" "$T"/*.log | head -60
else
    ok "no sanitizer reports in the server logs"
fi
echo "failures: $fails"
exit $fails

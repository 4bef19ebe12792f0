/*
 * fuzz_serve_request.c — request bodies of `qwen-image serve` through the
 * parsers the endpoints use (app/serve_request.c): the first input byte
 * picks the endpoint (bit 0 clear: POST /v1/images/generations and
 * /v1/jobs, the OpenAI-style body; set: an A1111 body translated and then
 * parsed as the first — bit 1 clear: /sdapi/v1/txt2img, set:
 * /sdapi/v1/img2img with base64 pictures) and bit 2 the model (set: a
 * Qwen-Image-Edit model), the rest is the body. The server's limits are its
 * defaults (--max-size 2048, --max-steps 100, --max-batch 4).
 *
 * Oracles beyond the sanitizers: a refusal is 400 with a message (naming
 * the field when it blames one) or 500; an accepted job has a non-empty
 * valid UTF-8 prompt, a size of multiples of 16 within --max-size, n, steps,
 * compression and partial images within their ranges, cfg in [0, QI_CFG_MAX],
 * a seed below 2^53; an A1111 translation is a JSON object whose refusal
 * by the generation parser names a field (what A1111 sent, e.g. a prompt
 * that is not a string); an accepted img2img has 1 picture (an Edit model:
 * 1 to 3, no mask, one image), each non-empty, and 0 < strength <= 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/tokenizer.h"
#include "serve_request.h"

static serve_opts opt = {.max_size = 2048, .max_steps = 100, .max_batch = 4};

static void check_refusal(const serve_req_error *e) {
    size_t len = strnlen(e->msg, sizeof e->msg);
    if (len == 0 || len == sizeof e->msg) fuzz_fail("refused with an empty or unterminated message");
    if (e->status != 400 && e->status != 500) fuzz_fail("refused with status %d", e->status);
    if (e->param && !strstr(e->msg, e->param)) fuzz_fail("the message does not name '%s': %s", e->param, e->msg);
}

static void check_job(const job *j) {
    const int max = opt.max_size;
    if (!j->prompt || !*j->prompt || qi_utf8_first_invalid(j->prompt, strlen(j->prompt)) != SIZE_MAX)
        fuzz_fail("accepted a job without a valid prompt");
    if (j->negative && qi_utf8_first_invalid(j->negative, strlen(j->negative)) != SIZE_MAX)
        fuzz_fail("accepted an ill-formed negative prompt");
    if (j->width < 16 || j->height < 16 || j->width % 16 || j->height % 16 || j->width > max || j->height > max)
        fuzz_fail("accepted a size of %dx%d", j->width, j->height);
    if (j->n < 1 || j->n > opt.max_batch || j->steps < 1 || j->steps > opt.max_steps || j->quality < 0 ||
        j->quality > 100 || j->partial_images < 0 || j->partial_images > 3)
        fuzz_fail("accepted n %d steps %d quality %d partial %d", j->n, j->steps, j->quality, j->partial_images);
    if (!(j->cfg >= 0 && j->cfg <= QI_CFG_MAX)) fuzz_fail("accepted cfg %g", j->cfg);
    if (j->seed > 9007199254740991ull) fuzz_fail("accepted seed %llu", (unsigned long long)j->seed);
    if (j->format != QI_IMAGE_PNG && j->format != QI_IMAGE_JPEG && j->format != QI_IMAGE_WEBP)
        fuzz_fail("accepted format %d", (int)j->format);
}

/* 0 when accepted; the job's strings are freed. *n: its image count. */
static int parse_generation(const char *body, size_t len, int *n) {
    job j;
    memset(&j, 0, sizeof j);
    serve_req_error e;
    int stream = -1;
    int rc = serve_parse_generation_body(&opt, body, len, 42, &j, &stream, &e);
    if (stream != 0 && stream != 1) fuzz_fail("stream is %d", stream);
    if (rc) check_refusal(&e);
    else check_job(&j);
    if (n) *n = j.n;
    free(j.prompt);
    free(j.negative);
    return rc;
}

static void check_pictures(const serve_pictures *p) {
    int most = opt.model.edit ? SERVE_MAX_PICTURES : 1;
    if (p->n_images < 1 || p->n_images + p->n_extra > most)
        fuzz_fail("accepted %d + %d pictures (at most %d)", p->n_images, p->n_extra, most);
    for (int k = 0; k < p->n_images; k++)
        if (!p->image[k] || !p->image_len[k]) fuzz_fail("accepted an empty picture %d", k);
    if (p->mask && (!p->mask_len || opt.model.edit)) fuzz_fail("accepted a mask of %zu bytes", p->mask_len);
    if (!(p->strength > 0 && p->strength <= 1)) fuzz_fail("accepted strength %g", p->strength);
}

static void a1111(const char *body, size_t len, int img2img) {
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return; /* answered by serve_a1111.c itself */
    }
    serve_req_error e;
    serve_pictures p;
    char *t = img2img ? serve_a1111_img2img_translate(&opt, o, &p, &e) : serve_a1111_translate(&opt, o, &e);
    cJSON_Delete(o);
    if (!t) {
        check_refusal(&e);
        if (img2img && (p.n_images || p.mask)) fuzz_fail("a refused img2img kept its pictures");
        return;
    }
    if (img2img) check_pictures(&p);
    cJSON *back = cJSON_Parse(t);
    if (!cJSON_IsObject(back)) fuzz_fail("the A1111 translation is not a JSON object: %s", t);
    cJSON_Delete(back);
    int n = 0;
    if (!parse_generation(t, strlen(t), &n) && img2img && opt.model.edit && n != 1)
        fuzz_fail("accepted %d images from an Edit model", n);
    free(t);
    if (img2img) serve_pictures_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    opt.model.edit = data[0] >> 2 & 1;
    if (data[0] & 1) a1111(body, size - 1, data[0] >> 1 & 1);
    else parse_generation(body, size - 1, NULL);
    return 0;
}

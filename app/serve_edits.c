/*
 * serve_edits.c — POST /v1/images/edits: OpenAI's multipart/form-data edit
 * request (README "Serving"). The body (already whole and within --max-body)
 * goes through libmicrohttpd's post processor; the text fields become the
 * JSON object /v1/images/generations takes (so both check them alike), and
 * the picture (`image` or `image[]`) and optional `mask` are decoded in
 * memory. With a Qwen-Image model: one picture, image-to-image; with a mask,
 * inpainting (white = repaint); `strength` (0 < S <= 1) defaults to 0.6,
 * diffusers' QwenImageImg2ImgPipeline default. With a Qwen-Image-Edit model
 * (serve_opts.model.edit): 1 to 3 pictures, the references in order, as
 * `generate --image` takes them; a mask or a strength is a 400 (as generate
 * refuses --mask and --strength), so a request never means something else
 * than it says.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"
#include "serve_api.h"
#include "serve_request.h"

#define EDITS_FIELD_MAX 64  /* text fields kept */
#define EDITS_NAME_MAX 200  /* an uploaded file's name, kept for the parameters text */

typedef struct form_part {
    char key[32];
    char filename[EDITS_NAME_MAX];
    char *data;
    size_t len, cap;
} form_part;

typedef struct form {
    form_part part[EDITS_FIELD_MAX];
    int n;
    int too_many; /* more parts than kept */
} form;

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                               const char *content_type, const char *transfer_encoding, const char *data,
                               uint64_t off, size_t size) {
    (void)kind, (void)content_type, (void)transfer_encoding;
    form *f = cls;
    if (off == 0) { /* a new part */
        if (f->n == EDITS_FIELD_MAX) {
            f->too_many = 1;
            return MHD_NO;
        }
        form_part *p = &f->part[f->n++];
        snprintf(p->key, sizeof p->key, "%s", key ? key : "");
        snprintf(p->filename, sizeof p->filename, "%s", filename ? filename : "");
    }
    if (f->n == 0) return MHD_NO;
    form_part *p = &f->part[f->n - 1];
    if (p->len + size + 1 > p->cap) {
        size_t cap = (p->len + size + 1) * 2;
        char *d = realloc(p->data, cap);
        if (!d) return MHD_NO;
        p->data = d, p->cap = cap;
    }
    if (size) memcpy(p->data + p->len, data, size);
    p->len += size;
    p->data[p->len] = 0;
    return MHD_YES;
}

static void form_free(form *f) {
    for (int i = 0; i < f->n; i++) free(f->part[i].data);
}

static int is_image_key(const char *k) { return !strcmp(k, "image") || !strcmp(k, "image[]"); }

/* The text fields as the JSON object generations reads: numbers and booleans
 * where the text is one (else the string, which the checks then refuse
 * naming the field), `loras` parsed as JSON. NULL on out of memory; *bad
 * names a field whose JSON does not parse. */
static cJSON *fields_json(const form *f, const char **bad) {
    static const char *const numeric[] = {"n", "steps", "cfg", "seed", "output_compression", "partial_images"};
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < f->n; i++) {
        const form_part *p = &f->part[i];
        if (is_image_key(p->key) || !strcmp(p->key, "mask") || !strcmp(p->key, "strength")) continue;
        cJSON *v = NULL;
        const char *text = p->data ? p->data : "";
        if (!strcmp(p->key, "loras")) {
            if (!(v = cJSON_Parse(text))) {
                *bad = "loras";
                cJSON_Delete(o);
                return NULL;
            }
        } else if (!strcmp(p->key, "stream") && (!strcmp(text, "true") || !strcmp(text, "false"))) {
            v = cJSON_CreateBool(!strcmp(text, "true"));
        } else {
            int num = 0;
            for (size_t k = 0; k < sizeof numeric / sizeof numeric[0]; k++) num |= !strcmp(p->key, numeric[k]);
            char *end = NULL;
            double d = num && *text ? strtod(text, &end) : 0;
            v = num && end && !*end ? cJSON_CreateNumber(d) : cJSON_CreateString(text);
        }
        cJSON_DeleteItemFromObjectCaseSensitive(o, p->key); /* the last one counts */
        cJSON_AddItemToObject(o, p->key, v);
    }
    return o;
}

#define BAD(c, param, ...) serve_send_error(c, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__)

/* The largest picture side taken: 4 × --max-size (the picture is resized to
 * the output, at most --max-size a side; a larger one only costs memory: a
 * PNG of zeros compresses ~1000:1, so --max-body alone does not bound it). */
static int max_side(const serve *s) { return s->opt.max_size * 4 < 16384 ? s->opt.max_size * 4 : 16384; }

int serve_job_take_pictures(const serve *s, job *j, const serve_picture *img, int n, const serve_picture *mask,
                            const serve_picture_fields *f, serve_req_error *e) {
    char err[1024], what[64];
    int side = max_side(s);
    e->status = 400;
    for (int k = 0; k < n && k < SERVE_MAX_PICTURES; k++) {
        uint8_t **rgb = k ? &j->more_rgb[k - 1] : &j->init_rgb;
        int *w = k ? &j->more_w[k - 1] : &j->init_w, *h = k ? &j->more_h[k - 1] : &j->init_h;
        snprintf(what, sizeof what, n > 1 ? "%s %d" : "%s", f->image, k + 1);
        if (qi_image_read_mem(what, img[k].data, img[k].len, side, rgb, w, h, err, sizeof err)) {
            snprintf(e->msg, sizeof e->msg, "%s", err);
            e->param = f->image;
            return -1;
        }
        char **name = k ? &j->more_name[k - 1] : &j->init_name;
        if (k) j->n_more = k;
        if (!(*name = strdup(img[k].name))) goto nomem;
    }
    if (mask) {
        if (qi_image_read_mem(f->mask, mask->data, mask->len, side, &j->mask_rgb, &j->mask_w, &j->mask_h, err,
                              sizeof err)) {
            snprintf(e->msg, sizeof e->msg, "%s", err);
            e->param = f->mask;
            return -1;
        }
        if (!(j->mask_name = strdup(mask->name))) goto nomem;
    }
    return 0;
nomem:
    e->status = 500, e->param = NULL;
    snprintf(e->msg, sizeof e->msg, "out of memory");
    return -1;
}

/* The pictures and strength into j; 0, or -1 after answering 400. */
static int take_pictures(const serve *s, const form *f, struct MHD_Connection *c, job *j) {
    serve_picture img[SERVE_MAX_PICTURES], mask = {0};
    const form_part *strength = NULL;
    int n_img = 0, has_mask = 0;
    for (int i = 0; i < f->n; i++) {
        const form_part *p = &f->part[i];
        serve_picture pic = {p->data ? p->data : "", p->len, p->filename};
        if (is_image_key(p->key)) {
            if (!pic.name[0]) pic.name = "image";
            if (n_img < SERVE_MAX_PICTURES) img[n_img] = pic;
            n_img++;
        } else if (!strcmp(p->key, "mask")) {
            mask = pic, has_mask = 1;
            if (!mask.name[0]) mask.name = "mask";
        } else if (!strcmp(p->key, "strength")) {
            strength = p;
        }
    }
    if (n_img == 0)
        return BAD(c, "image", "'image' is required: %s, a PNG, JPEG or WebP file part (curl -F image=@in.png%s)",
                   s->opt.model.edit ? "1 to 3 reference pictures" : "the picture to edit",
                   s->opt.model.edit ? " -F image=@other.png" : ""), -1;
    static const serve_picture_fields fields = {"image", "mask", "strength", "n"};
    serve_req_error e;
    if (serve_check_pictures(&s->opt, n_img, has_mask, strength != NULL, j->n, &fields, &e) ||
        serve_job_take_pictures(s, j, img, n_img, has_mask ? &mask : NULL, &fields, &e))
        return serve_send_error(c, e.status, e.status == 400 ? "invalid_request_error" : "server_error", e.param,
                                e.status == 400 ? "invalid_value" : NULL, "%s", e.msg), -1;
    j->strength = 0.6;
    if (strength) {
        char *end = NULL;
        double v = strtod(strength->data ? strength->data : "", &end);
        if (!strength->data || end == strength->data || *end || !(v > 0 && v <= 1))
            return BAD(c, "strength", "'strength' must be a number with 0 < strength <= 1 (how much of the "
                                      "picture is repainted); got \"%.40s\"", strength->data ? strength->data : ""),
                   -1;
        j->strength = v;
    }
    return 0;
}

/* The multipart body → a job (refs 1), or NULL after answering. */
static job *parse_edit(serve *s, const http_req *r, int *stream) {
    form *f = calloc(1, sizeof *f);
    if (!f) return serve_send_error(r->conn, 500, "server_error", NULL, NULL, "out of memory"), NULL;
    struct MHD_PostProcessor *pp = MHD_create_post_processor(r->conn, 64 * 1024, on_part, f);
    if (!pp) {
        free(f);
        BAD(r->conn, NULL, "the body must be multipart/form-data (OpenAI's edit request: curl -F image=@in.png "
                           "-F prompt=...)");
        return NULL;
    }
    int ok = MHD_post_process(pp, r->body, r->body_len) == MHD_YES;
    ok &= MHD_destroy_post_processor(pp) == MHD_YES;
    job *j = NULL;
    const char *bad = NULL;
    cJSON *o = NULL;
    if (!ok || f->too_many)
        BAD(r->conn, NULL, f->too_many ? "more than %d form fields" : "the multipart/form-data body does not parse",
            EDITS_FIELD_MAX);
    else if (!(o = fields_json(f, &bad)))
        bad ? BAD(r->conn, bad, "'%s' must be JSON text, e.g. [{\"name\": \"a.safetensors\", \"strength\": 1}]", bad)
            : serve_send_error(r->conn, 500, "server_error", NULL, NULL, "out of memory");
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (text) {
        http_req as_json = {r->conn, r->method, r->url, text, strlen(text)};
        j = serve_parse_generation(s, &as_json, stream);
        if (j && take_pictures(s, f, r->conn, j)) {
            serve_job_put(s, j);
            j = NULL;
        }
    } else if (o) {
        serve_send_error(r->conn, 500, "server_error", NULL, NULL, "out of memory");
    }
    free(text);
    form_free(f);
    free(f);
    return j;
}

int serve_edits(serve *s, const http_req *r, int async) {
    int stream = 0;
    job *j = parse_edit(s, r, &stream);
    if (!j) return MHD_YES;
    return serve_answer_job(s, r, j, async ? 0 : stream, async);
}

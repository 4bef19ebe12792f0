/*
 * serve_request.c — request bodies → job fields (serve_request.h). Pure:
 * every refusal is written to a serve_req_error, which serve_api.c sends.
 */
#define _POSIX_C_SOURCE 200809L
#include "serve_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/tokenizer.h" /* qi_utf8_first_invalid */

/* Records "bad request" naming the field; returns -1. */
static int bad(serve_req_error *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(serve_req_error *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = 400;
    e->param = param;
    return -1;
}

static int out_of_memory(serve_req_error *e) {
    snprintf(e->msg, sizeof e->msg, "out of memory");
    e->status = 500;
    e->param = NULL;
    return -1;
}

/* An optional integer field in [lo, hi]: 0 (set or absent), or -1. */
static int get_int(serve_req_error *e, const cJSON *o, const char *name, long lo, long hi, long *out) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!f || cJSON_IsNull(f)) return 0;
    double v = cJSON_IsNumber(f) ? f->valuedouble : NAN;
    if (!(v == floor(v)) || v < (double)lo || v > (double)hi)
        return bad(e, name, "'%s' must be an integer from %ld to %ld", name, lo, hi);
    *out = (long)v;
    return 0;
}

/* An optional string field (valid UTF-8); NULL when absent. *fail set on a bad one. */
static const char *get_str(serve_req_error *e, const cJSON *o, const char *name, int *fail) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!f || cJSON_IsNull(f) || *fail) return NULL;
    if (!cJSON_IsString(f)) {
        *fail = bad(e, name, "'%s' must be a string", name);
        return NULL;
    }
    if (qi_utf8_first_invalid(f->valuestring, strlen(f->valuestring)) == SIZE_MAX) return f->valuestring;
    *fail = bad(e, name, "'%s' is not valid UTF-8", name);
    return NULL;
}

static int parse_size(const serve_opts *opt, serve_req_error *e, const char *size, job *j) {
    if (!size || !strcmp(size, "auto")) return 0;
    int w = 0, h = 0, used = 0;
    if (sscanf(size, "%5dx%5d%n", &w, &h, &used) != 2 || size[used] || w <= 0 || h <= 0 || w % 16 || h % 16 ||
        w > opt->max_size || h > opt->max_size)
        return bad(e, "size", "'size' must be \"WxH\" with W and H positive multiples of 16, at most %d (--max-size); "
                              "got \"%s\"", opt->max_size, size);
    j->width = w, j->height = h;
    j->size_given = 1;
    return 0;
}

static int parse_format(serve_req_error *e, const char *fmt, job *j) {
    if (!fmt || !strcmp(fmt, "png")) j->format = QI_IMAGE_PNG;
    else if (!strcmp(fmt, "jpeg")) j->format = QI_IMAGE_JPEG;
    else if (!strcmp(fmt, "webp")) j->format = QI_IMAGE_WEBP;
    else return bad(e, "output_format", "'output_format' must be png, jpeg or webp; got \"%s\"", fmt);
    return 0;
}

/* The strings of a generation request: prompt, negative prompt, size, formats, scheduler. */
static int parse_strings(const serve_opts *opt, serve_req_error *e, const cJSON *o, job *j) {
    int fail = 0;
    const char *prompt = get_str(e, o, "prompt", &fail), *neg = get_str(e, o, "negative_prompt", &fail);
    const char *size = get_str(e, o, "size", &fail), *fmt = get_str(e, o, "output_format", &fail);
    const char *rf = get_str(e, o, "response_format", &fail), *sched = get_str(e, o, "scheduler", &fail);
    get_str(e, o, "model", &fail), get_str(e, o, "user", &fail);
    if (fail) return -1;
    if (!prompt || !*prompt) return bad(e, "prompt", "'prompt' is required: a non-empty string");
    if (rf && strcmp(rf, "b64_json") && strcmp(rf, "url"))
        return bad(e, "response_format", "'response_format' must be \"b64_json\" or \"url\"; got \"%s\"", rf);
    j->response_url = rf && !strcmp(rf, "url");
    if (sched && strcmp(sched, "lightning") && strcmp(sched, "model"))
        return bad(e, "scheduler", "'scheduler' must be \"lightning\" or \"model\"; got \"%s\"", sched);
    j->scheduler = !sched ? NULL : !strcmp(sched, "lightning") ? "lightning" : "model";
    if (parse_size(opt, e, size, j) || parse_format(e, fmt, j)) return -1;
    j->prompt = strdup(prompt);
    j->negative = neg ? strdup(neg) : NULL;
    if (!j->prompt || (neg && !j->negative)) return out_of_memory(e);
    return 0;
}

/* DIR/name, or DIR/name.safetensors, when it is a regular file in --lora-dir
 * (a bare file name: no '/', no leading '.', so nothing outside the folder
 * is reachable). A new string, or NULL. */
static char *lora_in_dir(const char *dir, const char *name) {
    if (!*name || name[0] == '.' || strchr(name, '/') || strlen(name) > 255) return NULL;
    static const char *const ext[] = {"", ".safetensors"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(dir) + strlen(name) + strlen(ext[i]) + 2;
        char *path = malloc(n);
        if (!path) return NULL;
        snprintf(path, n, "%s/%s%s", dir, name, ext[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return path;
        free(path);
    }
    return NULL;
}

/* `loras`: [{"name": FILE in --lora-dir, "strength": S (default 1)}], at most
 * QI_APP_MAX_LORAS; it replaces the server's --lora set for this request
 * ([] = none). */
static int parse_loras(const serve_opts *opt, serve_req_error *e, const cJSON *loras, job *j) {
    if (!cJSON_IsArray(loras)) return bad(e, "loras", "'loras' must be an array of {\"name\", \"strength\"}");
    int n = cJSON_GetArraySize(loras);
    if (n > 0 && !opt->lora_dir)
        return bad(e, "loras", "'loras': this server has no LoRA folder; start it with --lora-dir DIR");
    if (n > QI_APP_MAX_LORAS) return bad(e, "loras", "'loras' has %d entries; at most %d", n, QI_APP_MAX_LORAS);
    j->n_loras = 0;
    for (const cJSON *l = loras->child; l; l = l->next) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(l, "name");
        const cJSON *strength = cJSON_GetObjectItemCaseSensitive(l, "strength");
        if (!cJSON_IsObject(l) || !cJSON_IsString(name))
            return bad(e, "loras", "'loras' entry %d must be an object with a string \"name\"", j->n_loras);
        double v = 1.0;
        if (strength && !cJSON_IsNull(strength)) {
            if (!cJSON_IsNumber(strength) || !(fabs(strength->valuedouble) <= 100))
                return bad(e, "loras", "'loras' entry %d: \"strength\" must be a number from -100 to 100",
                           j->n_loras);
            v = strength->valuedouble;
        }
        char *path = lora_in_dir(opt->lora_dir, name->valuestring);
        if (!path)
            return bad(e, "loras", "'loras' entry %d: no LoRA file \"%.200s\" in the server's LoRA folder (GET "
                       "/v1/models lists them)", j->n_loras, name->valuestring);
        j->lora_path[j->n_loras] = path;
        j->lora_strength[j->n_loras++] = (float)v;
    }
    return 0;
}

static int parse_numbers(const serve_opts *opt, serve_req_error *e, const cJSON *o, uint64_t random_seed, job *j) {
    long n = 1, steps = 8, quality = 0, partial = 0;
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(o, "cfg"), *loras = cJSON_GetObjectItemCaseSensitive(o,
                                                                                                             "loras");
    if (get_int(e, o, "n", 1, opt->max_batch, &n) || get_int(e, o, "steps", 1, opt->max_steps, &steps) ||
        get_int(e, o, "output_compression", 0, 100, &quality) || get_int(e, o, "partial_images", 0, 3, &partial))
        return -1;
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(o, "seed");
    j->seed = random_seed;
    if (sd && !cJSON_IsNull(sd)) {
        double v = cJSON_IsNumber(sd) ? sd->valuedouble : -1;
        if (!(v >= 0 && v <= 9007199254740991.0 && v == floor(v)))
            return bad(e, "seed", "'seed' must be an integer from 0 to 2^53-1");
        j->seed = (uint64_t)v;
    }
    j->cfg = 1.0;
    if (cfg && !cJSON_IsNull(cfg)) {
        if (!cJSON_IsNumber(cfg) || !(cfg->valuedouble >= 0 && cfg->valuedouble <= QI_CFG_MAX))
            return bad(e, "cfg", "'cfg' must be a number from 0 to %d (true CFG scale; needs negative_prompt)",
                       QI_CFG_MAX);
        j->cfg = cfg->valuedouble;
    }
    if (loras && !cJSON_IsNull(loras) && parse_loras(opt, e, loras, j)) return -1;
    j->n = (int)n, j->steps = (int)steps, j->quality = (int)quality, j->partial_images = (int)partial;
    return 0;
}

int serve_parse_generation_body(const serve_opts *opt, const char *body, size_t len, uint64_t random_seed, job *j,
                                int *stream, serve_req_error *e) {
    *stream = 0;
    cJSON *o = cJSON_ParseWithLength(body, len);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return bad(e, NULL, "the body must be a JSON object");
    }
    j->width = j->height = 1024 <= opt->max_size ? 1024 : opt->max_size / 16 * 16;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stream");
    int rc = st && !cJSON_IsNull(st) && !cJSON_IsBool(st) ? bad(e, "stream", "'stream' must be true or false") : 0;
    *stream = cJSON_IsTrue(st);
    if (!rc) rc = parse_strings(opt, e, o, j);
    if (!rc) rc = parse_numbers(opt, e, o, random_seed, j);
    cJSON_Delete(o);
    return rc;
}

/* ---- AUTOMATIC1111 txt2img ------------------------------------------------------------ */

/* One optional number field in [lo, hi] (integer when integral); 0 or -1. */
static int num(serve_req_error *e, const cJSON *o, const char *name, double lo, double hi, int integral,
               double *out) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!f || cJSON_IsNull(f)) return 0;
    double v = cJSON_IsNumber(f) ? f->valuedouble : NAN;
    if (!(v >= lo && v <= hi) || (integral && v != floor(v)))
        return bad(e, name, "'%s' must be %s from %g to %g", name, integral ? "an integer" : "a number", lo, hi);
    *out = v;
    return 0;
}

/* The fields txt2img and img2img share → the generation body (a new
 * object), or NULL with *e set. size_default: add "size" (1024² unless
 * width/height say otherwise) even when neither is given; img2img leaves
 * it to the generation parser, or with an Edit model to the pictures. */
static cJSON *a1111_common(const serve_opts *opt, const cJSON *o, int size_default, serve_req_error *e) {
    double w = 1024, h = 1024, steps = 8, cfg = 1, seed = -1, batch = 1, iters = 1;
    if (num(e, o, "width", 16, opt->max_size, 1, &w) || num(e, o, "height", 16, opt->max_size, 1, &h) ||
        num(e, o, "steps", 1, opt->max_steps, 1, &steps) || num(e, o, "cfg_scale", 0, QI_CFG_MAX, 0, &cfg) ||
        num(e, o, "seed", -1, 9007199254740991.0, 1, &seed) ||
        num(e, o, "batch_size", 1, opt->max_batch, 1, &batch) || num(e, o, "n_iter", 1, opt->max_batch, 1, &iters))
        return NULL;
    if (batch * iters > opt->max_batch) /* both are how many images; the server makes them in one job */
        return bad(e, "batch_size", "'batch_size' %g x 'n_iter' %g images: at most %d (--max-batch)", batch, iters,
                   opt->max_batch), NULL;
    cJSON *t = cJSON_CreateObject();
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "negative_prompt");
    if (p) cJSON_AddItemToObject(t, "prompt", cJSON_Duplicate(p, 1));
    if (n && !(cJSON_IsString(n) && !*n->valuestring)) /* A1111 sends "" for none */
        cJSON_AddItemToObject(t, "negative_prompt", cJSON_Duplicate(n, 1));
    int sized = cJSON_GetObjectItemCaseSensitive(o, "width") || cJSON_GetObjectItemCaseSensitive(o, "height");
    if (size_default || sized) {
        char size[32];
        snprintf(size, sizeof size, "%dx%d", (int)w, (int)h);
        cJSON_AddStringToObject(t, "size", size);
    }
    cJSON_AddNumberToObject(t, "steps", steps);
    cJSON_AddNumberToObject(t, "cfg", cfg);
    cJSON_AddNumberToObject(t, "n", batch * iters);
    if (seed >= 0) cJSON_AddNumberToObject(t, "seed", seed);
    return t;
}

static char *print_body(cJSON *t, serve_req_error *e) {
    char *text = t ? cJSON_PrintUnformatted(t) : NULL;
    cJSON_Delete(t);
    if (t && !text) out_of_memory(e);
    return text;
}

char *serve_a1111_translate(const serve_opts *opt, const cJSON *o, serve_req_error *e) {
    return print_body(a1111_common(opt, o, 1, e), e);
}

/* ---- pictures ---------------------------------------------------------------------- */

int serve_check_pictures(const serve_opts *opt, int n_images, int has_mask, int strength_given, int n,
                         const serve_picture_fields *f, serve_req_error *e) {
    if (!opt->model.edit) {
        if (n_images > 1)
            return bad(e, f->image, "'%s': %d pictures given; this server's model takes one (image-to-image; "
                       "several reference pictures need a Qwen-Image-Edit model, which takes 1 to %d)", f->image,
                       n_images, SERVE_MAX_PICTURES);
        return 0;
    }
    if (n_images > SERVE_MAX_PICTURES)
        return bad(e, f->image, "'%s': %d pictures given; Qwen-Image-Edit takes 1 to %d reference pictures",
                   f->image, n_images, SERVE_MAX_PICTURES);
    if (has_mask)
        return bad(e, f->mask, "'%s': this server's model is Qwen-Image-Edit, which does not inpaint: the pictures "
                   "are references the prompt edits; leave the mask out (inpainting needs a Qwen-Image model)",
                   f->mask);
    if (strength_given)
        return bad(e, f->strength, "'%s': Qwen-Image-Edit always starts from pure noise (the pictures are "
                   "references, not a starting point); leave it out", f->strength);
    if (n > 1)
        return bad(e, f->n, "'%s': Qwen-Image-Edit makes one image per request; got %d", f->n, n);
    return 0;
}

/* Standard base64 (RFC 4648) with optional '=' padding and whitespace, after
 * an optional data-URL header ("data:image/png;base64,"), as A1111 sends
 * pictures. A new buffer (*len bytes), or NULL when the text is not that. */
static uint8_t *base64_decode(const char *text, size_t *len) {
    if (!strncmp(text, "data:", 5)) {
        const char *comma = strchr(text, ',');
        if (!comma) return NULL;
        text = comma + 1;
    }
    size_t n = strlen(text);
    uint8_t *out = malloc(n / 4 * 3 + 3), *o = out;
    if (!out) return NULL;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (const char *c = text; *c; c++) {
        int v = *c >= 'A' && *c <= 'Z' ? *c - 'A' : *c >= 'a' && *c <= 'z' ? *c - 'a' + 26
              : *c >= '0' && *c <= '9' ? *c - '0' + 52 : *c == '+' ? 62 : *c == '/' ? 63 : -1;
        if (*c == ' ' || *c == '\n' || *c == '\r' || *c == '\t') continue;
        if (*c == '=') {
            pad++;
            continue;
        }
        if (v < 0 || pad) { /* a stray character, or data after the padding */
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        if ((bits += 6) >= 8) *o++ = (uint8_t)(acc >> (bits -= 8));
    }
    /* 6 or more bits left over: a lone character (not a whole byte); padding
     * beyond the last group's */
    if (bits >= 6 || pad > 2 || o == out) {
        free(out);
        return NULL;
    }
    *len = (size_t)(o - out);
    return out;
}

void serve_pictures_free(serve_pictures *p) {
    for (int k = 0; k < p->n_images; k++) free(p->image[k]);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

/* init_images and mask: base64 pictures into p; 0 or -1. */
static int a1111_pictures(const cJSON *o, serve_pictures *p, serve_req_error *e) {
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(o, "init_images");
    const cJSON *mask = cJSON_GetObjectItemCaseSensitive(o, "mask");
    if (!init || cJSON_IsNull(init) || (cJSON_IsArray(init) && !cJSON_GetArraySize(init)))
        return bad(e, "init_images", "'init_images' is required: a list of 1 to %d pictures, each a base64 PNG, "
                   "JPEG or WebP (a \"data:image/png;base64,\" prefix is allowed)", SERVE_MAX_PICTURES);
    if (!cJSON_IsArray(init)) return bad(e, "init_images", "'init_images' must be a list of base64 strings");
    int k = 0;
    for (const cJSON *it = init->child; it; it = it->next, k++) {
        if (k >= SERVE_MAX_PICTURES) { /* counted, not decoded: the model check names the limit */
            p->n_extra++;
            continue;
        }
        if (!cJSON_IsString(it) || !(p->image[k] = base64_decode(it->valuestring, &p->image_len[k])))
            return bad(e, "init_images", "'init_images' entry %d is not a base64 string (a picture file's bytes, "
                       "standard alphabet, optionally after \"data:image/...;base64,\")", k);
        p->n_images = k + 1;
    }
    if (mask && !cJSON_IsNull(mask) && !(cJSON_IsString(mask) && !*mask->valuestring)) {
        if (!cJSON_IsString(mask) || !(p->mask = base64_decode(mask->valuestring, &p->mask_len)))
            return bad(e, "mask", "'mask' is not a base64 string (a picture file's bytes; white = repaint)");
    }
    return 0;
}

char *serve_a1111_img2img_translate(const serve_opts *opt, const cJSON *o, serve_pictures *p, serve_req_error *e) {
    memset(p, 0, sizeof *p);
    p->strength = 0.75; /* A1111's default denoising_strength */
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(o, "inpainting_mask_invert");
    if (inv && !cJSON_IsNull(inv) && !(cJSON_IsNumber(inv) && inv->valuedouble == 0) && !cJSON_IsFalse(inv))
        return bad(e, "inpainting_mask_invert", "'inpainting_mask_invert': only 0 is served (white = repaint); "
                   "invert the mask picture instead"), NULL;
    if (num(e, o, "denoising_strength", 0, 1, 0, &p->strength)) return NULL;
    if (!(p->strength > 0))
        return bad(e, "denoising_strength", "'denoising_strength' must be above 0 (0 would keep the picture as "
                   "it is)"), NULL;
    cJSON *t = a1111_common(opt, o, 0, e);
    if (!t) return NULL;
    static const serve_picture_fields fields = {"init_images", "mask", "denoising_strength", "batch_size"};
    /* A1111 clients always send denoising_strength: with an Edit model it is ignored, not refused */
    if (a1111_pictures(o, p, e) ||
        serve_check_pictures(opt, p->n_images + p->n_extra, p->mask != NULL, 0,
                             cJSON_GetObjectItemCaseSensitive(t, "n")->valueint, &fields, e)) {
        cJSON_Delete(t);
        serve_pictures_free(p);
        return NULL;
    }
    char *text = print_body(t, e);
    if (!text) serve_pictures_free(p);
    return text;
}

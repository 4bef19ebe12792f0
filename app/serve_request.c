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
    if (rf && strcmp(rf, "b64_json"))
        return bad(e, "response_format", "'response_format' \"%s\" is not served yet; use b64_json", rf);
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

char *serve_a1111_translate(const serve_opts *opt, const cJSON *o, serve_req_error *e) {
    double w = 1024, h = 1024, steps = 8, cfg = 1, seed = -1, batch = 1;
    if (num(e, o, "width", 16, opt->max_size, 1, &w) || num(e, o, "height", 16, opt->max_size, 1, &h) ||
        num(e, o, "steps", 1, opt->max_steps, 1, &steps) || num(e, o, "cfg_scale", 0, QI_CFG_MAX, 0, &cfg) ||
        num(e, o, "seed", -1, 9007199254740991.0, 1, &seed) || num(e, o, "batch_size", 1, opt->max_batch, 1, &batch))
        return NULL;
    cJSON *t = cJSON_CreateObject();
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "negative_prompt");
    if (p) cJSON_AddItemToObject(t, "prompt", cJSON_Duplicate(p, 1));
    if (n && !(cJSON_IsString(n) && !*n->valuestring)) /* A1111 sends "" for none */
        cJSON_AddItemToObject(t, "negative_prompt", cJSON_Duplicate(n, 1));
    char size[32];
    snprintf(size, sizeof size, "%dx%d", (int)w, (int)h);
    cJSON_AddStringToObject(t, "size", size);
    cJSON_AddNumberToObject(t, "steps", steps);
    cJSON_AddNumberToObject(t, "cfg", cfg);
    cJSON_AddNumberToObject(t, "n", batch);
    if (seed >= 0) cJSON_AddNumberToObject(t, "seed", seed);
    char *text = cJSON_PrintUnformatted(t);
    cJSON_Delete(t);
    if (!text) out_of_memory(e);
    return text;
}

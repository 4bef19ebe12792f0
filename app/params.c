/*
 * params.c — the `parameters` text stored in every image generate writes,
 * and reading it back (--from-parameters): what reproduces that image.
 *
 *     <prompt>
 *     Negative prompt: <negative>            (only when true CFG ran)
 *     Steps: 8, Sampler: Euler (flow), CFG scale: 4, Seed: 42, Batch index: 1, Batch size: 2, …
 *
 * The layout is A1111's (what image browsers and ComfyUI readers parse): the
 * prompt, then the last line of "Key: value" pairs separated by ", ". A value
 * holding a comma, a quote, a line break or edge spaces is written as a
 * double-quoted string with \" \\ \n \r \t escapes. The whole text is kept —
 * no length cap — and is valid UTF-8 because every part of it is checked
 * before the run.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app.h"
#include "io/image.h"

/* ---- writing --------------------------------------------------------------------- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static int needs_quotes(const char *v) {
    size_t n = strlen(v);
    return !n || v[0] == ' ' || v[n - 1] == ' ' || strpbrk(v, ",\"\n\r\t\\") != NULL;
}

/* ", Key: value" (no comma before the first key), the value quoted if needed. */
static void sb_kv(sbuf *b, const char *key, const char *v) {
    sb_printf(b, "%s%s: ", b->len && b->s[b->len - 1] != '\n' ? ", " : "", key);
    if (!needs_quotes(v)) {
        sb_put(b, v, strlen(v));
        return;
    }
    sb_put(b, "\"", 1);
    for (const char *c = v; *c; c++) {
        const char *esc = *c == '"' ? "\\\"" : *c == '\\' ? "\\\\" : *c == '\n' ? "\\n" : *c == '\r' ? "\\r"
                                                                                 : *c == '\t' ? "\\t" : NULL;
        if (esc) sb_put(b, esc, 2);
        else sb_put(b, c, 1);
    }
    sb_put(b, "\"", 1);
}

/* The shortest decimal that reads back as the same float. */
static void float_text(double v, char *out, size_t cap) {
    float f = (float)v;
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, cap, "%.*g", digits, (double)f);
        if ((float)strtod(out, NULL) == f) return;
    }
}

static const char *noise_dtype_name(const gen_args *a) {
    if (a->noise_dtype) return a->noise_dtype == 1 ? "f32" : "bf16";
    /* auto: the run's activation dtype (CPU float32, CUDA bfloat16) */
    const char *dev = a->devices ? a->devices : a->device;
    return dev && !strncmp(dev, "cuda", 4) ? "bf16" : "f32";
}

static void put_settings(sbuf *b, const gen_args *a, int index, int count, const char *scheduler_hash) {
    char num[64];
    int cfg_ran = a->cfg > 1.0 && a->negative;
    sb_printf(b, "Steps: %ld, Sampler: Euler (flow), CFG scale: ", a->steps);
    if (cfg_ran) {
        float_text(a->cfg, num, sizeof num);
        sb_put(b, num, strlen(num));
    } else if (a->cfg > 1.0) {
        float_text(a->cfg, num, sizeof num);
        sb_printf(b, "1 (true CFG off: --cfg %s needs -n)", num);
    } else {
        sb_put(b, "1", 1);
    }
    sb_printf(b, ", Seed: %llu", a->seed);
    if (count > 1) sb_printf(b, ", Batch index: %d, Batch size: %d", index, count);
    if (!a->edit || a->size_given) sb_printf(b, ", Size: %ldx%ld", a->width, a->height); /* Edit: from the pictures */
    if (a->image && a->edit) { /* Qwen-Image-Edit: the pictures by name, in order */
        const char *pictures[3] = {a->image, a->more_images[0], a->more_images[1]};
        for (int k = 0; k < 1 + a->n_more_images; k++) {
            char key[32];
            snprintf(key, sizeof key, "Edit image %d", k + 1);
            sb_kv(b, key, pictures[k]);
        }
        if (a->edit_vl_area) sb_printf(b, ", Edit VL area: %ld", a->edit_vl_area);
        if (a->edit_vae_area) sb_printf(b, ", Edit VAE area: %ld", a->edit_vae_area);
    } else if (a->image) { /* img2img / inpainting: the pictures by name (re-read on --from-parameters) */
        float_text(a->strength, num, sizeof num);
        sb_printf(b, ", Denoising strength: %s", num);
        sb_kv(b, "Init image", a->image);
        if (a->mask) sb_kv(b, "Mask", a->mask);
    }
    if (a->model) sb_kv(b, "Model", a->model);
    if (a->diffusion_model) sb_kv(b, "Diffusion model", a->diffusion_model);
    if (a->text_encoder) sb_kv(b, "Text encoder", a->text_encoder);
    if (a->vae) sb_kv(b, "VAE", a->vae);
    if (a->mmproj) sb_kv(b, "Mmproj", a->mmproj); /* only when given: a found one is found again */
    sb_kv(b, "Scheduler", a->scheduler ? a->scheduler : "model");
    if (scheduler_hash && *scheduler_hash) sb_kv(b, "Scheduler hash", scheduler_hash);
    sb_kv(b, "RNG", a->rng == QI_RNG_CUDA ? "cuda" : "cpu");
    sb_kv(b, "Noise dtype", noise_dtype_name(a));
    if (a->max_seq_len != 512) sb_printf(b, ", Max sequence length: %ld", a->max_seq_len);
}

static void put_loras(sbuf *b, const gen_args *a) {
    if (!a->n_loras) return;
    char num[64];
    sb_put(b, ", LoRA: ", 8); /* names and strengths, for people */
    for (int i = 0; i < a->n_loras; i++) {
        const char *base = strrchr(a->lora_path[i], '/');
        float_text(a->lora_strength[i], num, sizeof num);
        sb_printf(b, "%s%s:%s", i ? " " : "", base ? base + 1 : a->lora_path[i], num);
    }
    sbuf files = {0}; /* the paths as given, one per line, for --from-parameters */
    for (int i = 0; i < a->n_loras; i++) {
        float_text(a->lora_strength[i], num, sizeof num);
        if (i) sb_put(&files, "\n", 1);
        sb_put(&files, a->lora_path[i], strlen(a->lora_path[i]));
        sb_printf(&files, ":%s", num);
    }
    if (files.oom) b->oom = 1;
    else sb_kv(b, "LoRA files", files.s);
    free(files.s);
    /* fused and run-time LoRAs differ in the last bits: a rerun takes the same mode */
    if (a->lora_mode == QI_LORA_FUSE) sb_kv(b, "LoRA mode", "fuse");
    if (a->lora_mode == QI_LORA_RUNTIME) sb_kv(b, "LoRA mode", "runtime");
}

char *qi_params_text(const gen_args *a, int index, int count, const prompt_note *note, const char *scheduler_hash) {
    sbuf b = {0};
    int per_prompt = count / a->n_prompts;
    int p = index / (per_prompt ? per_prompt : 1); /* --batch-index: one prompt, N images */
    const char *prompt = a->prompts[p];
    sb_put(&b, prompt, strlen(prompt));
    sb_put(&b, "\n", 1);
    if (a->cfg > 1.0 && a->negative) {
        sb_put(&b, "Negative prompt: ", 17);
        sb_put(&b, a->negative, strlen(a->negative));
        sb_put(&b, "\n", 1);
    }
    put_settings(&b, a, index, count, scheduler_hash);
    for (int i = 0; a->n_prompts > 1 && i < a->n_prompts; i++) { /* the whole request, to rerun it */
        char key[32];
        snprintf(key, sizeof key, "Prompt %d", i);
        sb_kv(&b, key, a->prompts[i]);
    }
    if (note && note[p].kept < note[p].tokens)
        sb_printf(&b, ", Prompt tokens: %d (the model read the first %d)", note[p].tokens, note[p].kept);
    put_loras(&b, a);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* ---- reading --------------------------------------------------------------------- */

/* One value at *s (quoted or up to ", "), malloc'd; *s moves past it. */
static char *read_value(const char **s) {
    const char *c = *s;
    sbuf b = {0};
    sb_put(&b, "", 0);
    if (*c == '"') {
        for (c++; *c && *c != '"'; c++) {
            if (*c == '\\' && c[1]) {
                c++;
                char e = *c == 'n' ? '\n' : *c == 'r' ? '\r' : *c == 't' ? '\t' : *c;
                sb_put(&b, &e, 1);
            } else {
                sb_put(&b, c, 1);
            }
        }
        if (*c != '"') {
            free(b.s);
            return NULL;
        }
        c++;
    } else {
        const char *end = strstr(c, ", ");
        if (!end) end = c + strlen(c);
        sb_put(&b, c, (size_t)(end - c));
        c = end;
    }
    *s = c;
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

static char *keep(gen_args *a, char *s) {
    if (s && a->n_owned < (int)(sizeof a->owned / sizeof a->owned[0])) a->owned[a->n_owned++] = s;
    else if (s) { /* more strings than slots: cannot happen with the keys below */
        free(s);
        return NULL;
    }
    return s;
}

static int bad_value(const char *source, const char *key, const char *v) {
    return qi_app_usage_error("%s: parameters: '%s: %s' is not a value generate accepts", source, key, v);
}

static int parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int apply_loras(const char *source, char *v, gen_args *a) {
    a->n_loras = 0;
    for (char *line = strtok(v, "\n"); line; line = strtok(NULL, "\n"))
        if (qi_app_add_lora(line, a)) return qi_app_usage_error("%s: parameters: LoRA files", source);
    return 0;
}

/* One "Key: value" applied to a; unknown keys (Sampler, LoRA, …) are for people. */
static int apply_kv(const char *source, const char *key, char *v, gen_args *a, char *hash, size_t cap) {
    char *end;
    if (!strcmp(key, "Steps")) return parse_long(v, 1, 1000, &a->steps) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "CFG scale")) {
        a->cfg = strtod(v, &end); /* "1 (true CFG off: …)" reads as 1 */
        return end == v || (*end && *end != ' ') ? bad_value(source, key, v) : 0;
    }
    if (!strcmp(key, "Seed")) {
        a->seed = strtoull(v, &end, 10);
        return end == v || *end ? bad_value(source, key, v) : 0;
    }
    if (!strcmp(key, "Batch index")) return parse_long(v, 0, 4095, &a->batch_index) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "Batch size")) return parse_long(v, 1, 4096, &a->batch_size) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "Size")) {
        a->size_given = 1;
        return sscanf(v, "%ldx%ld", &a->width, &a->height) != 2 ? bad_value(source, key, v) : 0;
    }
    if (!strcmp(key, "Edit VL area"))
        return parse_long(v, 1024, 1L << 26, &a->edit_vl_area) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "Edit VAE area"))
        return parse_long(v, 1024, 1L << 26, &a->edit_vae_area) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "Denoising strength")) {
        a->strength = strtod(v, &end);
        a->strength_given = 1;
        return end == v || *end || !(a->strength > 0 && a->strength <= 1) ? bad_value(source, key, v) : 0;
    }
    if (!strcmp(key, "Max sequence length"))
        return parse_long(v, 1, 1024, &a->max_seq_len) ? bad_value(source, key, v) : 0;
    if (!strcmp(key, "RNG")) {
        if (strcmp(v, "cpu") && strcmp(v, "cuda")) return bad_value(source, key, v);
        a->rng = !strcmp(v, "cuda") ? QI_RNG_CUDA : QI_RNG_CPU;
        return 0;
    }
    if (!strcmp(key, "Noise dtype")) {
        if (strcmp(v, "f32") && strcmp(v, "bf16")) return bad_value(source, key, v);
        a->noise_dtype = !strcmp(v, "f32") ? 1 : 2;
        return 0;
    }
    if (!strcmp(key, "Scheduler hash")) {
        snprintf(hash, cap, "%s", v);
        return 0;
    }
    if (!strcmp(key, "LoRA files")) return apply_loras(source, v, a);
    if (!strcmp(key, "LoRA mode")) {
        if (strcmp(v, "fuse") && strcmp(v, "runtime")) return bad_value(source, key, v);
        a->lora_mode = !strcmp(v, "fuse") ? QI_LORA_FUSE : QI_LORA_RUNTIME;
        return 0;
    }
    return 1; /* not applied: the caller frees v */
}

/* The last line's "Key: value" pairs. */
static int parse_settings(const char *line, const char *source, gen_args *a, char *hash, size_t cap,
                          int *n_listed) {
    if (strncmp(line, "Steps: ", 7))
        return qi_app_usage_error("%s: parameters: the last line does not start with 'Steps: ' (not written by "
                                  "qwen-image or A1111?)", source);
    a->batch_index = a->batch_size = 0;
    for (const char *c = line; *c;) {
        const char *colon = strstr(c, ": ");
        if (!colon || colon - c > 64) return qi_app_usage_error("%s: parameters: cannot read '%.40s'", source, c);
        char key[65];
        snprintf(key, sizeof key, "%.*s", (int)(colon - c), c);
        c = colon + 2;
        char *v = read_value(&c);
        if (!v) return qi_app_usage_error("%s: parameters: unterminated value of '%s'", source, key);
        int pi = -1, used = 0;
        if (sscanf(key, "Prompt %d%n", &pi, &used) == 1 && !key[used]) {
            if (pi < 0 || pi >= QI_APP_MAX_PROMPTS) return bad_value(source, key, v);
            a->prompts[pi] = keep(a, v);
            if (pi >= *n_listed) *n_listed = pi + 1;
        } else if (!strcmp(key, "Model")) a->model = keep(a, v);
        else if (!strcmp(key, "Diffusion model")) a->diffusion_model = keep(a, v);
        else if (!strcmp(key, "Text encoder")) a->text_encoder = keep(a, v);
        else if (!strcmp(key, "VAE")) a->vae = keep(a, v);
        else if (!strcmp(key, "Mmproj")) a->mmproj = keep(a, v);
        else if (!strcmp(key, "Init image")) a->image = keep(a, v);
        else if (sscanf(key, "Edit image %d%n", &pi, &used) == 1 && !key[used] && pi >= 1 && pi <= 3) {
            a->edit = 1; /* the pictures of a Qwen-Image-Edit run (single files need no --edit then) */
            if (pi == 1) a->image = keep(a, v);
            else a->more_images[pi - 2] = keep(a, v);
            if (pi - 1 > a->n_more_images) a->n_more_images = pi - 1;
        }
        else if (!strcmp(key, "Mask")) a->mask = keep(a, v);
        else if (!strcmp(key, "Scheduler")) a->scheduler = strcmp(v, "model") ? keep(a, v) : (free(v), NULL);
        else {
            int rc = apply_kv(source, key, v, a, hash, cap);
            free(v);
            if (rc > 1) return rc;
        }
        if (*c && strncmp(c, ", ", 2)) return qi_app_usage_error("%s: parameters: expected ', ' after '%s'", source, key);
        if (*c) c += 2;
    }
    return 0;
}

int qi_params_parse(const char *text, const char *source, gen_args *a, char *hash, size_t cap) {
    hash[0] = 0;
    const char *last = strrchr(text, '\n');
    if (!last) return qi_app_usage_error("%s: parameters: no prompt line before the settings", source);
    int n_listed = 0; /* "Prompt i" keys: the request's prompts when it had several */
    memset(a->prompts, 0, sizeof a->prompts);
    int rc = parse_settings(last + 1, source, a, hash, cap, &n_listed);
    if (rc) return rc;
    for (int i = 0; i < n_listed; i++)
        if (!a->prompts[i]) return qi_app_usage_error("%s: parameters: Prompt %d is missing", source, i);
    /* the prompt runs to the first line that starts "Negative prompt: " */
    size_t head = (size_t)(last - text);
    const char *neg = NULL;
    if (!strncmp(text, "Negative prompt: ", 17)) neg = text;
    else {
        const char *n = strstr(text, "\nNegative prompt: ");
        if (n && n < last) neg = n + 1;
    }
    size_t plen = neg ? (size_t)(neg - text) - (neg > text) : head;
    if (!n_listed) a->prompts[0] = keep(a, strndup(text, plen)); /* else the first line is one of them */
    a->n_prompts = n_listed ? n_listed : 1;
    a->negative = neg ? keep(a, strndup(neg + 17, (size_t)(last - neg - 17))) : NULL;
    if (!a->prompts[0] || (neg && !a->negative)) return qi_app_runtime_error("out of memory"), 1;
    a->batch = 1;
    return 0;
}

/* ---- files ----------------------------------------------------------------------- */

static char *read_text_file(const char *path, size_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

char *qi_params_read(const char *path) {
    const char *dot = strrchr(path, '.');
    qi_error err = {{0}};
    char *text = NULL;
    if (dot && !strcasecmp(dot, ".png")) {
        uint8_t *rgb = NULL;
        int w, h;
        if (qi_png_read(path, &rgb, &w, &h, &text, &err)) return qi_app_runtime_error(err.msg), NULL;
        free(rgb);
    } else if (dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"))) {
        if (qi_jpeg_read_comment(path, &text, &err)) return qi_app_runtime_error(err.msg), NULL;
    } else {
        size_t n = 0;
        text = read_text_file(path, (size_t)64 << 20, &n);
        if (!text) {
            fprintf(stderr, "qwen-image: error: --from-parameters %s: cannot read the file (or over 64 MiB)\n", path);
            return NULL;
        }
        while (n && (text[n - 1] == '\n' || text[n - 1] == '\r')) text[--n] = 0; /* an editor's final newline */
        return text;
    }
    if (!text) fprintf(stderr, "qwen-image: error: --from-parameters %s: the image has no parameters text\n", path);
    return text;
}

int qi_params_file_hash(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, 64 bits: tells a changed file, no more */
    unsigned char buf[1 << 14];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
    int bad = ferror(f);
    fclose(f);
    if (bad) return -1;
    snprintf(out, cap, "fnv1a64:%016llx", (unsigned long long)h);
    return 0;
}

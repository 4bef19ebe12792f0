/*
 * source_gguf.c — a qi_source over one GGUF file (city96 / QuantStack
 * Qwen-Image transformers, spec vae-and-formats.md B.7.3).
 *
 * The reader (io/gguf.h) parses and validates the container and already
 * gives shapes outermost first (GGUF's `ne` reversed); this file only maps
 * names (the component's prefix stripped, source.h), lists the tensors
 * sorted by mapped name, and answers metadata from the GGUF key/values.
 * Block-quantised tensors are handed on as their block type; what can run
 * them is the backend's business (ops->supports). A text encoder GGUF
 * (llama.cpp `qwen2vl`) has its names mapped to the transformers names
 * (qi_names_llamacpp_text_encoder) and its architecture checked.
 *
 */
#include <stdio.h>
#include <stdlib.h>

#include "io/source.h"

#include "io/gguf.h"

typedef struct gg_impl {
    qi_gguf_file *f;
    char **strings;            /* NUL-terminated copies handed out by meta_string */
    int n_strings;
} gg_impl;

static const gg_impl *impl_of(const qi_source *s) { return s->impl; }

/* Shared with source_mmproj.c (source.h): the fill and the numeric metadata. */
void qi_source_gguf_fill(const qi_source *s, const qi_name_entry *e, qi_source_tensor *out) {
    const qi_gguf_tensor *t = e->tensor;
    qi_source_tensor_set(out, e->name, t->name, s->path, t->dtype, t->ndim, t->shape, t->data, t->nbytes);
}

int qi_source_gguf_has_meta(const qi_source *s, const char *key) { return qi_gguf_has_key(qi_source_gguf(s), key); }

/* GGUF strings are length-counted, not NUL-terminated, in the mapping: the
 * source hands out a terminated copy that lives as long as the source. */
static qi_status gg_meta_string(const qi_source *s, const char *key, const char **out, qi_error *err) {
    gg_impl *im = s->impl;
    const char *str = NULL;
    size_t len = 0;
    *out = NULL;
    qi_status st = qi_gguf_get_string(im->f, key, &str, &len, err);
    if (st != QI_OK) return st;
    char **grown = realloc(im->strings, (size_t)(im->n_strings + 1) * sizeof *grown);
    char *copy = malloc(len + 1);
    if (grown) im->strings = grown;
    if (!grown || !copy) {
        free(copy);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory reading key '%s'", s->path, key);
    }
    memcpy(copy, str, len);
    copy[len] = 0;
    im->strings[im->n_strings++] = copy;
    *out = copy;
    return QI_OK;
}

qi_status qi_source_gguf_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err) {
    return qi_gguf_get_int(qi_source_gguf(s), key, out, err);
}

qi_status qi_source_gguf_meta_float(const qi_source *s, const char *key, double *out, qi_error *err) {
    return qi_gguf_get_float(qi_source_gguf(s), key, out, err);
}

static const struct qi_gguf_file *gg_gguf(const qi_source *s) { return impl_of(s)->f; }

static void gg_close(qi_source *s) {
    gg_impl *im = s->impl;
    if (!im) return;
    if (im->f) qi_gguf_close(im->f);
    for (int i = 0; i < im->n_strings; i++) free(im->strings[i]);
    free(im->strings);
    free(im);
    s->impl = NULL;
}

static const qi_source_ops gguf_ops = {
    .kind = "GGUF file",
    .fill = qi_source_gguf_fill,
    .has_meta = qi_source_gguf_has_meta,
    .meta_string = gg_meta_string,
    .meta_int = qi_source_gguf_meta_int,
    .meta_float = qi_source_gguf_meta_float,
    .gguf = gg_gguf,
    .close = gg_close,
};

static int file_has(const void *ctx, const char *name) {
    return qi_gguf_find((qi_gguf_file *)ctx, name) != NULL;
}

/* A text encoder GGUF must be llama.cpp's `qwen2vl` (Qwen2.5-VL's language
 * model). A text-only `qwen2` conversion holds the same kind of weights but
 * with the plain-RoPE metadata of another model; refused with what to use. */
static qi_status check_text_encoder_arch(const qi_source *s, qi_error *err) {
    const char *arch;
    size_t len;
    qi_status st = qi_gguf_get_string(impl_of(s)->f, "general.architecture", &arch, &len, err);
    if (st != QI_OK)
        return qi_fail_ctx(err, st, "%s: not a llama.cpp text encoder GGUF (no architecture)", s->path);
    if (len == 7 && memcmp(arch, "qwen2vl", 7) == 0) return QI_OK;
    if (len == 5 && memcmp(arch, "qwen2", 5) == 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: general.architecture is 'qwen2' (a text-only Qwen2 conversion); Qwen-Image needs "
                       "the Qwen2.5-VL-7B-Instruct language model as llama.cpp converts it ('qwen2vl', e.g. "
                       "Qwen2.5-VL-7B-Instruct-Q8_0.gguf), or ComfyUI's qwen_2.5_vl_7b*.safetensors",
                       s->path);
    return qi_fail(err, QI_ERR_FORMAT,
                   "%s: general.architecture is '%.*s'; a text encoder GGUF must be llama.cpp's 'qwen2vl' "
                   "(Qwen2.5-VL-7B-Instruct, e.g. Qwen2.5-VL-7B-Instruct-Q8_0.gguf)",
                   s->path, (int)(len < 64 ? len : 64), arch);
}

/* Lists tensor t under `prefix`: llama.cpp text-encoder names mapped to
 * transformers', everything else the stored name past the prefix. */
static qi_status add_entry(qi_source *s, const qi_gguf_tensor *t, size_t plen, qi_error *err) {
    char mapped[256];
    if (s->component == QI_COMPONENT_TEXT_ENCODER &&
        qi_names_llamacpp_text_encoder(t->name + plen, mapped, sizeof mapped))
        return qi_name_table_add(&s->names, mapped, 1, t, s->path, err);
    return qi_name_table_add(&s->names, t->name + plen, 0, t, s->path, err);
}

/* Refuses scaled files, finds the prefix, lists the tensors under it. */
static qi_status index_file(qi_source *s, gg_impl *im, qi_error *err) {
    int n = qi_gguf_tensor_count(im->f);
    for (int i = 0; i < n; i++) {
        qi_status st = qi_source_refuse_scales(s->path, qi_gguf_tensor_at(im->f, i)->name, err);
        if (st != QI_OK) return st;
    }
    if (s->component == QI_COMPONENT_TEXT_ENCODER) {
        qi_status st = check_text_encoder_arch(s, err);
        if (st != QI_OK) return st;
    }
    const char *prefix = qi_source_find_prefix(s->component, s->path, file_has, im->f, err);
    if (!prefix) return QI_ERR_FORMAT;
    snprintf(s->prefix, sizeof s->prefix, "%s", prefix);
    s->naming = s->component == QI_COMPONENT_TEXT_ENCODER ? "llama.cpp qwen2vl" : "diffusers";
    size_t plen = strlen(prefix);
    for (int i = 0; i < n; i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(im->f, i);
        if (strncmp(t->name, prefix, plen) != 0) continue;
        qi_status st = add_entry(s, t, plen, err);
        if (st != QI_OK) return st;
    }
    /* GGUF keeps the writer's order; lookups want name order */
    qi_name_table_sort(&s->names);
    return QI_OK;
}

qi_status qi_source_open_gguf(const char *path, qi_component comp, qi_source **out, qi_error *err) {
    *out = NULL;
    if (!path) return qi_fail(err, QI_ERR_ARG, "%s: no file given", qi_component_name(comp));
    qi_source *s = qi_source_new(&gguf_ops, comp, path);
    gg_impl *im = s ? calloc(1, sizeof *im) : NULL;
    if (!im) {
        free(s);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    }
    s->impl = im;
    qi_status st = qi_gguf_open(path, &im->f, err);
    if (st == QI_OK) st = index_file(s, im, err);
    if (st != QI_OK) {
        qi_source_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

/*
 * source_gguf.c — a qi_source over one GGUF file (city96 / QuantStack
 * Qwen-Image transformers, spec vae-and-formats.md B.7.3).
 *
 * The reader (io/gguf.h) parses and validates the container and already
 * gives shapes outermost first (GGUF's `ne` reversed); this file only maps
 * names (the component's prefix stripped, source.h), lists the tensors
 * sorted by mapped name, and answers metadata from the GGUF key/values.
 * Block-quantised tensors are handed on as their block type; what can run
 * them is the backend's business (ops->supports).
 *
 */
#include <stdio.h>
#include <stdlib.h>

#include "io/source.h"

#include "io/gguf.h"

typedef struct gg_entry {
    const char *name;          /* mapped: the stored name past the prefix */
    const qi_gguf_tensor *t;
} gg_entry;

typedef struct gg_impl {
    qi_gguf_file *f;
    gg_entry *entries;         /* sorted by mapped name */
    int n;
    char **strings;            /* NUL-terminated copies handed out by meta_string */
    int n_strings;
} gg_impl;

static const gg_impl *impl_of(const qi_source *s) { return s->impl; }

static int gg_count(const qi_source *s) { return impl_of(s)->n; }

static void fill(const qi_source *s, const gg_entry *e, qi_source_tensor *out) {
    memset(out, 0, sizeof *out);
    out->name = e->name;
    out->stored_name = e->t->name;
    out->file = s->path;
    out->dtype = e->t->dtype;
    out->ndim = e->t->ndim;
    for (int i = 0; i < e->t->ndim && i < QI_SOURCE_MAX_DIMS; i++) out->shape[i] = e->t->shape[i];
    out->scale_form = QI_SCALE_NONE;
    out->scale = 1.0f;
    out->data = e->t->data;
    out->nbytes = e->t->nbytes;
}

static void gg_at(const qi_source *s, int i, qi_source_tensor *out) { fill(s, &impl_of(s)->entries[i], out); }

static int cmp_key(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const gg_entry *)elem)->name);
}

static int cmp_entries(const void *a, const void *b) {
    return strcmp(((const gg_entry *)a)->name, ((const gg_entry *)b)->name);
}

static int gg_find(const qi_source *s, const char *name, qi_source_tensor *out) {
    const gg_impl *im = impl_of(s);
    const gg_entry *e = bsearch(name, im->entries, (size_t)im->n, sizeof *e, cmp_key);
    if (!e) return 0;
    fill(s, e, out);
    return 1;
}

static int gg_has_meta(const qi_source *s, const char *key) { return qi_gguf_has_key(impl_of(s)->f, key); }

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

static qi_status gg_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err) {
    return qi_gguf_get_int(impl_of(s)->f, key, out, err);
}

static void gg_close(qi_source *s) {
    gg_impl *im = s->impl;
    if (!im) return;
    if (im->f) qi_gguf_close(im->f);
    for (int i = 0; i < im->n_strings; i++) free(im->strings[i]);
    free(im->strings);
    free(im->entries);
    free(im);
    s->impl = NULL;
}

static const qi_source_ops gguf_ops = {
    .kind = "GGUF file",
    .count = gg_count,
    .at = gg_at,
    .find = gg_find,
    .has_meta = gg_has_meta,
    .meta_string = gg_meta_string,
    .meta_int = gg_meta_int,
    .close = gg_close,
};

static int file_has(const void *ctx, const char *name) {
    return qi_gguf_find((qi_gguf_file *)ctx, name) != NULL;
}

/* Refuses scaled files, finds the prefix, lists the tensors under it. */
static qi_status index_file(qi_source *s, gg_impl *im, qi_error *err) {
    int n = qi_gguf_tensor_count(im->f);
    for (int i = 0; i < n; i++) {
        qi_status st = qi_source_refuse_scales(s->path, qi_gguf_tensor_at(im->f, i)->name, err);
        if (st != QI_OK) return st;
    }
    const char *prefix = qi_source_find_prefix(s->component, s->path, file_has, im->f, err);
    if (!prefix) return QI_ERR_FORMAT;
    size_t plen = strlen(prefix);
    im->entries = malloc((size_t)(n > 0 ? n : 1) * sizeof *im->entries);
    if (!im->entries) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", s->path);
    for (int i = 0; i < n; i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(im->f, i);
        if (strncmp(t->name, prefix, plen) == 0) im->entries[im->n++] = (gg_entry){t->name + plen, t};
    }
    /* GGUF keeps the writer's order; lookups want name order */
    qsort(im->entries, (size_t)im->n, sizeof *im->entries, cmp_entries);
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

/*
 * source_scales.c — the scale tensors of scaled-fp8 safetensors checkpoints
 * (spec vae-and-formats.md B.5.2, B.6): which weight each belongs to, in
 * what form, and which side tensors are consumed rather than listed.
 *
 * The four conventions users have, one rule for all:
 *   - plain cast (Comfy-Org qwen_image_fp8_e4m3fn): F8 weights, no scale;
 *   - `<layer>.scale_weight` (ComfyUI's older "scaled fp8", LightX2V
 *     --comfyui_mode), with a `scaled_fp8` marker tensor;
 *   - `<layer>.weight_scale` [out, 1] or [out] (LightX2V native, per output
 *     row), or a scalar;
 *   - `<layer>.comfy_quant` (U8 bytes of a JSON object naming the format) +
 *     `<layer>.weight_scale` (+ `<layer>.input_scale`), or the same objects
 *     in `__metadata__["_quantization_metadata"]`.
 * W[o, i] = f8(W8[o, i]) · s when s has one element, · s[o] when it has one
 * per output row; anything else is an error naming the file and tensor.
 *
 * Activation scales (`input_scale`, `scale_input`) are for fp8 × fp8 GEMMs
 * that quantise the activations too; this engine multiplies float32 (CPU)
 * or bf16 (CUDA) activations by the dequantised weight, so they do not
 * apply: checked (one finite value) and dropped, as the reference loaders
 * (diffusers on the dequantised state dict) do.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/safetensors.h"
#include "io/source.h"

typedef struct scale_entry {
    const char *weight;   /* stored name of the weight it scales */
    qi_scale_form form;
    float scale;          /* QI_SCALE_TENSOR */
    float *row_scale;     /* QI_SCALE_ROW: [out], owned (aligned, float32) */
} scale_entry;

struct qi_scale_table {
    scale_entry *items;   /* sorted by weight name */
    int n, cap;
    const char **side;    /* consumed stored names (scales, markers, configs), sorted */
    int n_side, cap_side;
    const char *convention; /* for `inspect`: the first convention met, or NULL */
};

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static const char *last_component(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? dot + 1 : name;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
static int cmp_item(const void *a, const void *b) {
    return strcmp(((const scale_entry *)a)->weight, ((const scale_entry *)b)->weight);
}
static int cmp_key_item(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const scale_entry *)elem)->weight);
}

static qi_status add_side(qi_scale_table *t, const char *name, qi_error *err) {
    if (t->n_side == t->cap_side) {
        int cap = t->cap_side ? 2 * t->cap_side : 64;
        const char **grown = realloc(t->side, (size_t)cap * sizeof *grown);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "out of memory reading scale tensors");
        t->side = grown;
        t->cap_side = cap;
    }
    t->side[t->n_side++] = name;
    return QI_OK;
}

/* The values of a scale tensor as float32 (F32, BF16 or F16 stored; any
 * alignment), each finite. *out malloc'd, *n its count. */
static qi_status read_scale(const qi_st_tensor *s, float **out, int64_t *n, qi_error *err) {
    *out = NULL;
    *n = 1;
    for (int i = 0; i < s->ndim; i++) *n *= s->shape[i];
    if (s->dtype != QI_F32 && s->dtype != QI_BF16 && s->dtype != QI_F16)
        return qi_fail(err, QI_ERR_FORMAT, "%s: scale tensor '%s' has dtype %s; expected F32 (or BF16, F16)",
                       s->file->path, s->name, qi_dtype_name(s->dtype));
    float *v = malloc((size_t)(*n > 0 ? *n : 1) * sizeof *v);
    if (!v) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory reading '%s'", s->file->path, s->name);
    qi_to_f32(v, s->data, s->dtype, (size_t)*n);
    for (int64_t i = 0; i < *n; i++)
        if (!isfinite(v[i])) {
            double bad = v[i];
            free(v);
            return qi_fail(err, QI_ERR_FORMAT, "%s: scale tensor '%s' holds a non-finite value (%g at %lld); "
                           "the file is damaged", s->file->path, s->name, bad, (long long)i);
        }
    *out = v;
    return QI_OK;
}

/* `<layer>.<suffix>` → the weight `<layer>.weight` it scales, checked: it
 * exists, is fp8, and the scale has one value or one per output row. */
static qi_status add_weight_scale(qi_scale_table *t, const qi_st_set *set, const qi_st_tensor *s,
                                  const char *suffix, qi_error *err) {
    char wname[512];
    size_t layer = strlen(s->name) - strlen(suffix);
    snprintf(wname, sizeof wname, "%.*s.weight", (int)layer, s->name);
    const qi_st_tensor *w = qi_st_find(set, wname);
    if (!w)
        return qi_fail(err, QI_ERR_FORMAT, "%s: scale tensor '%s' has no weight '%s' to scale", s->file->path,
                       s->name, wname);
    if (w->dtype != QI_F8_E4M3 && w->dtype != QI_F8_E5M2)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: scale tensor '%s' scales '%s' of dtype %s; only F8_E4M3 "
                       "and F8_E5M2 weights are read with a scale (int8 and nvfp4 checkpoints are not supported)",
                       s->file->path, s->name, wname, qi_dtype_name(w->dtype));
    if (t->n && bsearch(w->name, t->items, (size_t)t->n, sizeof *t->items, cmp_key_item))
        return qi_fail(err, QI_ERR_FORMAT, "%s: weight '%s' has two scale tensors (second: '%s')", s->file->path,
                       wname, s->name);
    float *v;
    int64_t n;
    qi_status st = read_scale(s, &v, &n, err);
    if (st != QI_OK) return st;
    int64_t out = w->ndim ? w->shape[0] : 1;
    int row_shape = w->ndim == 2 && n == out &&
                    ((s->ndim == 2 && s->shape[1] == 1) || s->ndim == 1);
    if (n != 1 && !row_shape) {
        char got[96], ws[96];
        qi_st_shape_str(s->ndim, s->shape, got, sizeof got);
        qi_st_shape_str(w->ndim, w->shape, ws, sizeof ws);
        free(v);
        return qi_fail(err, QI_ERR_FORMAT, "%s: scale tensor '%s' has shape %s; for weight '%s' %s it must hold one "
                       "value ([] or [1]) or one per output row ([%lld, 1] or [%lld])", s->file->path, s->name, got,
                       wname, ws, (long long)out, (long long)out);
    }
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        scale_entry *grown = realloc(t->items, (size_t)cap * sizeof *grown);
        if (!grown) {
            free(v);
            return qi_fail(err, QI_ERR_NOMEM, "out of memory reading scale tensors");
        }
        t->items = grown;
        t->cap = cap;
    }
    scale_entry *e = &t->items[t->n++];
    e->weight = w->name;
    e->form = n == 1 ? QI_SCALE_TENSOR : QI_SCALE_ROW;
    e->scale = n == 1 ? v[0] : 1.0f;
    e->row_scale = n == 1 ? NULL : v;
    if (n == 1) free(v);
    qsort(t->items, (size_t)t->n, sizeof *t->items, cmp_item); /* kept sorted for the duplicate check */
    return add_side(t, s->name, err);
}

/* One comfy_quant object (from a tensor or from __metadata__): its format
 * must be an fp8 one; the others of that scheme are refused by name. */
static qi_status check_quant_format(const cJSON *obj, const char *file, const char *what, qi_error *err) {
    const cJSON *f = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, "format") : NULL;
    if (!cJSON_IsString(f))
        return qi_fail(err, QI_ERR_FORMAT, "%s: %s is not a JSON object with a string \"format\"", file, what);
    if (strcmp(f->valuestring, "float8_e4m3fn") && strcmp(f->valuestring, "float8_e5m2"))
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: %s has format \"%s\"; only float8_e4m3fn and float8_e5m2 "
                       "layers are supported (nvfp4, int8 and mxfp8 files are not)", file, what, f->valuestring);
    return QI_OK;
}

/* `<layer>.comfy_quant`: U8 bytes of a JSON object; its weight must have a
 * `weight_scale` (read when that tensor is met). */
static qi_status read_comfy_quant(const qi_st_set *set, const qi_st_tensor *q, qi_error *err) {
    char what[600];
    snprintf(what, sizeof what, "tensor '%s'", q->name);
    if (q->dtype != QI_U8 || q->ndim != 1)
        return qi_fail(err, QI_ERR_FORMAT, "%s: %s must be U8 bytes of a JSON object, found %s", q->file->path, what,
                       qi_dtype_name(q->dtype));
    cJSON *j = NULL;
    char where[QI_PATH_MAX + 600];
    snprintf(where, sizeof where, "%s: %s", q->file->path, what);
    qi_status st = qi_json_parse((const char *)q->data, q->nbytes, where, &j, err);
    if (st == QI_OK) st = check_quant_format(j, q->file->path, what, err);
    cJSON_Delete(j);
    if (st != QI_OK) return st;
    char sname[512];
    size_t layer = strlen(q->name) - strlen(".comfy_quant");
    snprintf(sname, sizeof sname, "%.*s.weight_scale", (int)layer, q->name);
    if (!qi_st_find(set, sname))
        return qi_fail(err, QI_ERR_FORMAT, "%s: %s declares an fp8 layer but '%s' is missing", q->file->path, what,
                       sname);
    return QI_OK;
}

/* An activation scale: one finite value, then dropped (see the top). */
static qi_status read_input_scale(const qi_st_tensor *s, qi_error *err) {
    float *v;
    int64_t n;
    qi_status st = read_scale(s, &v, &n, err);
    if (st != QI_OK) return st;
    free(v);
    if (n != 1)
        return qi_fail(err, QI_ERR_FORMAT, "%s: activation scale '%s' has %lld values; expected one",
                       s->file->path, s->name, (long long)n);
    return QI_OK;
}

/* __metadata__["_quantization_metadata"] = {"layers": {"<layer>": {...}}}. */
static qi_status check_quant_metadata(const qi_st_file *f, qi_error *err) {
    if (!f->metadata_json) return QI_OK;
    cJSON *meta = NULL, *parsed = NULL;
    char where[QI_PATH_MAX + 64];
    snprintf(where, sizeof where, "%s: __metadata__", f->path);
    qi_status st = qi_json_parse(f->metadata_json, strlen(f->metadata_json), where, &meta, err);
    const cJSON *q = meta ? cJSON_GetObjectItemCaseSensitive(meta, "_quantization_metadata") : NULL;
    if (q && cJSON_IsString(q)) {
        snprintf(where, sizeof where, "%s: __metadata__ '_quantization_metadata'", f->path);
        st = qi_json_parse(q->valuestring, strlen(q->valuestring), where, &parsed, err);
    }
    if (q && st == QI_OK) {
        const cJSON *layers = parsed ? cJSON_GetObjectItemCaseSensitive(parsed, "layers") : NULL;
        if (!cJSON_IsObject(layers))
            st = qi_fail(err, QI_ERR_FORMAT, "%s: __metadata__ '_quantization_metadata' is not a JSON string of "
                         "{\"layers\": {...}}", f->path);
        for (const cJSON *l = layers ? layers->child : NULL; st == QI_OK && l; l = l->next) {
            char what[600];
            snprintf(what, sizeof what, "_quantization_metadata layer '%s'", l->string);
            st = check_quant_format(l, f->path, what, err);
        }
        cJSON_Delete(parsed);
    }
    cJSON_Delete(meta);
    return st;
}

/* Known scale names, and the ones that belong to conventions this engine
 * does not read (block-wise `weight_scale_inv`, nvfp4's `weight_scale_2`). */
static qi_status classify(qi_scale_table *t, const qi_st_set *set, const qi_st_tensor *x, qi_error *err) {
    const char *base = last_component(x->name);
    if (!strcmp(base, "scaled_fp8")) {
        if (!t->convention) t->convention = "scaled_fp8 (per-tensor scale_weight)";
        return add_side(t, x->name, err);
    }
    if (has_suffix(x->name, ".comfy_quant")) {
        t->convention = "comfy_quant (per-layer JSON + weight_scale)";
        qi_status st = read_comfy_quant(set, x, err);
        return st ? st : add_side(t, x->name, err);
    }
    if (!strcmp(base, "scale_weight")) return add_weight_scale(t, set, x, ".scale_weight", err);
    if (!strcmp(base, "weight_scale")) return add_weight_scale(t, set, x, ".weight_scale", err);
    if (!strcmp(base, "input_scale") || !strcmp(base, "scale_input")) {
        qi_status st = read_input_scale(x, err);
        return st ? st : add_side(t, x->name, err);
    }
    if (strstr(base, "scale"))
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: tensor '%s' is a scale of a convention this engine does not "
                       "know (it reads scale_weight, weight_scale, input_scale/scale_input, comfy_quant and the "
                       "scaled_fp8 marker); refusing rather than reading its weight unscaled", x->file->path, x->name);
    return QI_OK;
}

qi_status qi_scale_table_build(const qi_st_set *set, qi_scale_table **out, qi_error *err) {
    *out = NULL;
    qi_scale_table *t = calloc(1, sizeof *t);
    if (!t) return qi_fail(err, QI_ERR_NOMEM, "out of memory reading scale tensors");
    qi_status st = QI_OK;
    for (int i = 0; st == QI_OK && i < set->n_files; i++) st = check_quant_metadata(set->files[i], err);
    for (int i = 0; st == QI_OK && i < set->n_tensors; i++) st = classify(t, set, set->index[i], err);
    if (st != QI_OK) {
        qi_scale_table_free(t);
        return st;
    }
    if (t->n && (!t->convention || strncmp(t->convention, "comfy_quant", 11) != 0)) {
        int per_row = 0;
        for (int i = 0; i < t->n; i++) per_row |= t->items[i].form == QI_SCALE_ROW;
        if (per_row) t->convention = "per-row weight_scale (LightX2V)";
        else if (!t->convention) t->convention = "per-tensor scale";
    }
    /* qsort with a NULL base is undefined even for zero elements (UBSan says so). */
    if (t->n_side) qsort(t->side, (size_t)t->n_side, sizeof *t->side, cmp_str);
    *out = t;
    return QI_OK;
}

int qi_scale_table_consumes(const qi_scale_table *t, const char *stored_name) {
    return t && t->n_side && bsearch(&stored_name, t->side, (size_t)t->n_side, sizeof *t->side, cmp_str) != NULL;
}

void qi_scale_table_apply(const qi_scale_table *t, const char *stored_name, qi_source_tensor *out) {
    const scale_entry *e = t && t->n ? bsearch(stored_name, t->items, (size_t)t->n, sizeof *t->items, cmp_key_item)
                                     : NULL;
    if (!e) return;
    out->scale_form = e->form;
    out->scale = e->scale;
    out->row_scale = e->row_scale;
}

const char *qi_scale_table_convention(const qi_scale_table *t) { return t ? t->convention : NULL; }

void qi_scale_table_free(qi_scale_table *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) free(t->items[i].row_scale);
    free(t->items);
    free(t->side);
    free(t);
}

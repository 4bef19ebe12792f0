/*
 * source.c — what every kind of weight source shares: picking the kind for a
 * path, the checked lookup (qi_source_get, with qi_st_get's messages), the
 * attached config.json, the component's name prefix and the refusal of
 * scaled-fp8 files.
 *
 * The kinds themselves live in source_safetensors.c (a diffusers folder, a
 * single file) and source_gguf.c.
 */
#include "io/source.h"

#include "base/finite.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "io/gguf.h"
#include "io/safetensors.h" /* qi_st_shape_str */

const char *qi_component_name(qi_component c) {
    switch (c) {
    case QI_COMPONENT_TOKENIZER: return "tokenizer";
    case QI_COMPONENT_TRANSFORMER: return "transformer";
    case QI_COMPONENT_TEXT_ENCODER: return "text encoder";
    case QI_COMPONENT_VAE: return "vae";
    case QI_COMPONENT_COUNT: break;
    }
    return "component";
}

qi_source *qi_source_new(const qi_source_ops *ops, qi_component comp, const char *path) {
    qi_source *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->ops = ops;
    s->component = comp;
    snprintf(s->path, sizeof s->path, "%s", path);
    snprintf(s->where, sizeof s->where, "%s", path);
    return s;
}

void qi_source_close(qi_source *s) {
    if (!s) return;
    if (s->ops && s->ops->close) s->ops->close(s);
    qi_name_table_free(&s->names);
    cJSON_Delete(s->config);
    free(s);
}

/* ---- the name table ------------------------------------------------------------- */

qi_status qi_name_table_add(qi_name_table *t, const char *name, int copy, const void *tensor, const char *file,
                            qi_error *err) {
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        qi_name_entry *grown = realloc(t->entries, (size_t)cap * sizeof *grown);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", file);
        t->entries = grown;
        t->cap = cap;
    }
    qi_name_entry e = {name, tensor, NULL};
    if (copy) {
        size_t len = strlen(name) + 1;
        if (!(e.owned = malloc(len))) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", file);
        memcpy(e.owned, name, len);
        e.name = e.owned;
    }
    t->entries[t->n++] = e;
    return QI_OK;
}

static int cmp_entries(const void *a, const void *b) {
    return strcmp(((const qi_name_entry *)a)->name, ((const qi_name_entry *)b)->name);
}

static int cmp_key(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const qi_name_entry *)elem)->name);
}

void qi_name_table_sort(qi_name_table *t) {
    if (t->n > 1) qsort(t->entries, (size_t)t->n, sizeof *t->entries, cmp_entries);
}

const qi_name_entry *qi_name_table_find(const qi_name_table *t, const char *name) {
    return t->n ? bsearch(name, t->entries, (size_t)t->n, sizeof *t->entries, cmp_key) : NULL;
}

void qi_name_table_free(qi_name_table *t) {
    for (int i = 0; i < t->n; i++) free(t->entries[i].owned);
    free(t->entries);
    *t = (qi_name_table){0};
}

void qi_source_tensor_set(qi_source_tensor *out, const char *name, const char *stored_name, const char *file,
                          qi_dtype dtype, int ndim, const int64_t *shape, const void *data, size_t nbytes) {
    memset(out, 0, sizeof *out);
    out->name = name;
    out->stored_name = stored_name;
    out->file = file;
    out->dtype = dtype;
    out->ndim = ndim;
    for (int i = 0; i < ndim && i < QI_SOURCE_MAX_DIMS; i++) out->shape[i] = shape[i];
    out->scale_form = QI_SCALE_NONE;
    out->scale = 1.0f;
    out->data = data;
    out->nbytes = nbytes;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

qi_status qi_source_open(const char *path, qi_component comp, qi_source **out, qi_error *err) {
    *out = NULL;
    static const char accepted[] =
        "give a diffusers component folder (config.json + *.safetensors), a .safetensors file or "
        "a .gguf file";
    if (!path || !*path) return qi_fail(err, QI_ERR_ARG, "%s: no path given; %s", qi_component_name(comp), accepted);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return qi_fail(err, QI_ERR_IO, "%s: no such file or directory; %s", path, accepted);
    if (S_ISDIR(sb.st_mode)) return qi_source_open_folder(path, comp, out, err);
    if (has_suffix(path, ".gguf")) return qi_source_open_gguf(path, comp, out, err);
    if (has_suffix(path, ".safetensors")) return qi_source_open_safetensors(path, comp, out, err);
    return qi_fail(err, QI_ERR_ARG, "%s: not a model source; %s", path, accepted);
}

qi_status qi_source_set_config(qi_source *s, const char *config_path, qi_error *err) {
    cJSON *j;
    qi_status st = qi_json_load(config_path, &j, err);
    if (st != QI_OK) return st;
    cJSON_Delete(s->config);
    s->config = j;
    snprintf(s->config_path, sizeof s->config_path, "%s", config_path);
    return QI_OK;
}

const char *qi_source_path(const qi_source *s) { return s->path; }
const char *qi_source_kind(const qi_source *s) { return s->ops->kind; }
qi_component qi_source_component(const qi_source *s) { return s->component; }
int qi_source_tensor_count(const qi_source *s) { return s->names.n; }

void qi_source_tensor_at(const qi_source *s, int i, qi_source_tensor *out) {
    s->ops->fill(s, &s->names.entries[i], out);
}

int qi_source_find(const qi_source *s, const char *name, qi_source_tensor *out) {
    const qi_name_entry *e = name ? qi_name_table_find(&s->names, name) : NULL;
    if (!e) return 0;
    s->ops->fill(s, e, out);
    return 1;
}

const cJSON *qi_source_config(const qi_source *s, const char **config_path) {
    if (config_path) *config_path = s->config ? s->config_path : NULL;
    return s->config;
}

qi_weight_scale qi_source_tensor_scale(const qi_source_tensor *t) {
    qi_weight_scale sc = {t->scale_form, t->scale_form == QI_SCALE_TENSOR ? t->scale : 1.0f,
                          t->scale_form == QI_SCALE_ROW ? t->row_scale : NULL};
    return sc;
}

qi_status qi_source_tensor_to_f32(const qi_source_tensor *t, float *dst, qi_error *err) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    int64_t cols = t->ndim ? t->shape[t->ndim - 1] : 1, rows = cols ? n / cols : 0;
    if (qi_to_f32(dst, t->data, t->dtype, (size_t)n) != 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: tensor '%s' of type %s cannot be read as numbers",
                       t->file, t->stored_name, qi_dtype_name(t->dtype));
    if (t->scale_form == QI_SCALE_TENSOR)
        for (int64_t i = 0; i < n; i++) dst[i] *= t->scale;
    else if (t->scale_form == QI_SCALE_ROW)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < cols; k++) dst[r * cols + k] *= t->row_scale[r];
    return QI_OK;
}

/* ---- the checked lookup ---------------------------------------------------------- */

/* Element float types and the GGUF block types: what a weight may be stored as. */
static int is_weight_dtype(qi_dtype t) {
    return t == QI_F32 || t == QI_F16 || t == QI_BF16 || t == QI_F8_E4M3 || t == QI_F8_E5M2 ||
           (t >= QI_Q4_0 && t < QI_DTYPE_COUNT);
}

static qi_status check_shape(const qi_source_tensor *out, const char *name, int ndim,
                             const int64_t *shape, qi_error *err);

qi_status qi_source_get(const qi_source *s, const char *name, int ndim, const int64_t *shape,
                        qi_source_tensor *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    if (!qi_source_find(s, name, out))
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' not found (wrong model or variant?)",
                       s->where, name ? name : "(null)");
    if (!is_weight_dtype(out->dtype))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s' has dtype %s; expected a float type (F32, F16, BF16, "
                       "F8_E4M3, F8_E5M2)",
                       out->file, name, qi_dtype_name(out->dtype));
    if (ndim >= 0 && shape) {
        qi_status st = check_shape(out, name, ndim, shape, err);
        if (st != QI_OK) return st;
    }
    /* Every weight a model binds is scanned here, once, as it loads: a NaN or
     * Inf in a file otherwise becomes an all-black image and exit 0. */
    int64_t n = 1;
    for (int i = 0; i < out->ndim; i++) n *= out->shape[i];
    return qi_check_weight_finite(out->file, name, out->data, out->dtype, n, &s->scan, err);
}

static qi_status check_shape(const qi_source_tensor *out, const char *name, int ndim,
                             const int64_t *shape, qi_error *err) {
    int same = ndim == out->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] < 0 || shape[i] == out->shape[i];
    if (!same) {
        char want[256], got[256];
        qi_st_shape_str(ndim > QI_SOURCE_MAX_DIMS ? QI_SOURCE_MAX_DIMS : ndim, shape, want, sizeof want);
        qi_st_shape_str(out->ndim, out->shape, got, sizeof got);
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': expected shape %s, found %s", out->file,
                       name, want, got);
    }
    return QI_OK;
}

/* ---- metadata ------------------------------------------------------------------------ */

int qi_source_has_meta(const qi_source *s, const char *key) {
    return s->ops->has_meta && key ? s->ops->has_meta(s, key) : 0;
}

qi_status qi_source_meta_string(const qi_source *s, const char *key, const char **out, qi_error *err) {
    *out = NULL;
    if (!s->ops->meta_string)
        return qi_fail(err, QI_ERR_FORMAT, "%s: no metadata key '%s' (the file has no metadata)", s->path,
                       key);
    return s->ops->meta_string(s, key, out, err);
}

qi_status qi_source_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err) {
    *out = 0;
    if (!s->ops->meta_int)
        return qi_fail(err, QI_ERR_FORMAT, "%s: no metadata key '%s' (the file has no metadata)", s->path,
                       key);
    return s->ops->meta_int(s, key, out, err);
}

qi_status qi_source_meta_float(const qi_source *s, const char *key, double *out, qi_error *err) {
    *out = 0;
    if (!s->ops->meta_float)
        return qi_fail(err, QI_ERR_FORMAT, "%s: no metadata key '%s' (the file has no metadata)", s->path,
                       key);
    return s->ops->meta_float(s, key, out, err);
}

const struct qi_gguf_file *qi_source_gguf(const qi_source *s) { return s->ops->gguf ? s->ops->gguf(s) : NULL; }
const char *qi_source_prefix(const qi_source *s) { return s->prefix; }
const char *qi_source_naming(const qi_source *s) { return s->naming ? s->naming : "as stored"; }

/* ---- name prefixes and scale tensors ---------------------------------------------------- */

/* The transformer's prefixes (spec vae-and-formats.md B.4: ComfyUI
 * checkpoints, stable-diffusion.cpp, pipelines saved whole). Each is tried
 * with the whole anchor name, so `model.` cannot match a
 * `model.diffusion_model.` file; bare names win in a file holding both. */
static const char *const transformer_prefixes[] = {"", "model.diffusion_model.", "diffusion_model.",
                                                   "transformer.", "model."};

/* The text encoder's and the VAE's prefixes in files that bundle components
 * (ComfyUI checkpoints, stable-diffusion.cpp), tried with each anchor. A file
 * with none of them keeps its names as stored: the loader's own "not found"
 * message then says what it expected. */
static const char *const te_prefixes[] = {"", "text_encoders.qwen25_7b.transformer.", "text_encoders.llm.",
                                          "text_encoder."};
static const char *const te_anchors[] = {"model.embed_tokens.weight", "model.language_model.embed_tokens.weight",
                                         "token_embd.weight"};
static const char *const vae_prefixes[] = {"", "first_stage_model.", "vae."};
static const char *const vae_anchors[] = {"decoder.conv_in.weight", "decoder.conv1.weight"};

static const char *first_prefix(const char *const *prefixes, size_t n_prefixes, const char *const *anchors,
                                size_t n_anchors, int (*has)(const void *ctx, const char *name), const void *ctx) {
    for (size_t i = 0; i < n_prefixes; i++)
        for (size_t a = 0; a < n_anchors; a++) {
            char name[160];
            snprintf(name, sizeof name, "%s%s", prefixes[i], anchors[a]);
            if (has(ctx, name)) return prefixes[i];
        }
    return NULL;
}

const char *qi_source_find_prefix(qi_component comp, const char *file,
                                  int (*has)(const void *ctx, const char *name), const void *ctx,
                                  qi_error *err) {
    const char *p;
    if (comp == QI_COMPONENT_TEXT_ENCODER) {
        p = first_prefix(te_prefixes, QI_ARRAY_LEN(te_prefixes), te_anchors, QI_ARRAY_LEN(te_anchors), has, ctx);
        return p ? p : "";
    }
    if (comp == QI_COMPONENT_VAE) {
        p = first_prefix(vae_prefixes, QI_ARRAY_LEN(vae_prefixes), vae_anchors, QI_ARRAY_LEN(vae_anchors), has, ctx);
        return p ? p : "";
    }
    if (comp != QI_COMPONENT_TRANSFORMER) return "";
    static const char *const anchor[] = {"img_in.weight"};
    p = first_prefix(transformer_prefixes, QI_ARRAY_LEN(transformer_prefixes), anchor, 1, has, ctx);
    if (p) return p;
    qi_fail(err, QI_ERR_FORMAT,
            "%s: no tensor '%s' (bare or under model.diffusion_model., diffusion_model., "
            "transformer. or model.): is this a Qwen-Image transformer file?",
            file, anchor[0]);
    return NULL;
}

/* Suffixes (and whole names) of the scale and marker tensors of the three
 * scaled-fp8 spellings (spec vae-and-formats.md B.5.2). */
static const char *const scale_suffixes[] = {".scale_weight", ".weight_scale", ".comfy_quant",
                                             ".scale_input", ".input_scale", ".weight_scale_2"};

qi_status qi_source_refuse_scales(const char *file, const char *stored_name, qi_error *err) {
    const char *base = strrchr(stored_name, '.');
    base = base ? base + 1 : stored_name;
    int hit = strcmp(base, "scaled_fp8") == 0;
    for (size_t i = 0; !hit && i < QI_ARRAY_LEN(scale_suffixes); i++)
        hit = has_suffix(stored_name, scale_suffixes[i]);
    if (!hit) return QI_OK;
    return qi_fail(err, QI_ERR_UNSUPPORTED,
                   "%s: tensor '%s' belongs to a scaled fp8 checkpoint; scaled fp8 files are not "
                   "supported yet (bf16, fp16 and plain fp8 files are)",
                   file, stored_name);
}

/* ---- what a file holds ------------------------------------------------------------------ */

static int set_has_name(const void *ctx, const char *name) { return qi_st_find(ctx, name) != NULL; }

/* The components whose anchors (spec B.9) are in a safetensors set. */
static int identify_set(const qi_st_set *set) {
    int mask = 0;
    static const char *const dit_anchor[] = {"img_in.weight"};
    if (first_prefix(transformer_prefixes, QI_ARRAY_LEN(transformer_prefixes), dit_anchor, 1, set_has_name, set))
        mask |= 1 << QI_COMPONENT_TRANSFORMER;
    if (first_prefix(te_prefixes, QI_ARRAY_LEN(te_prefixes), te_anchors, 2, set_has_name, set))
        mask |= 1 << QI_COMPONENT_TEXT_ENCODER;
    if (first_prefix(vae_prefixes, QI_ARRAY_LEN(vae_prefixes), vae_anchors, QI_ARRAY_LEN(vae_anchors), set_has_name,
                     set))
        mask |= 1 << QI_COMPONENT_VAE;
    return mask;
}

qi_status qi_source_identify(const char *path, int *mask, qi_error *err) {
    *mask = 0;
    if (has_suffix(path, ".gguf")) {
        qi_gguf_file *f;
        qi_status st = qi_gguf_open(path, &f, err);
        if (st != QI_OK) return st;
        const char *arch = NULL;
        size_t len = 0;
        qi_error ignored;
        if (qi_gguf_get_string(f, "general.architecture", &arch, &len, &ignored) == QI_OK) {
            if (len == 10 && !memcmp(arch, "qwen_image", 10)) *mask = 1 << QI_COMPONENT_TRANSFORMER;
            if ((len == 7 && !memcmp(arch, "qwen2vl", 7)) || (len == 5 && !memcmp(arch, "qwen2", 5)))
                *mask = 1 << QI_COMPONENT_TEXT_ENCODER;
        } else if (qi_gguf_find(f, "img_in.weight") || qi_gguf_find(f, "model.diffusion_model.img_in.weight")) {
            *mask = 1 << QI_COMPONENT_TRANSFORMER; /* stable-diffusion.cpp conversions carry no metadata */
        }
        qi_gguf_close(f);
        return QI_OK;
    }
    qi_st_set *set;
    qi_status st = qi_st_set_open_file(path, &set, err);
    if (st != QI_OK) return st;
    *mask = identify_set(set);
    qi_st_set_close(set);
    return QI_OK;
}

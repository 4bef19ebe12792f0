/*
 * source_mmproj.c — a qi_source over llama.cpp's mmproj GGUF of Qwen2.5-VL
 * (the vision tower that a llama.cpp text-encoder GGUF leaves out), under
 * the transformers names model/vision.c binds.
 *
 * What llama.cpp's converter (convert_hf_to_gguf.py, Qwen2VLVisionModel;
 * read, not copied) writes, and how it is read back here:
 *   general.architecture "clip", clip.projector_type "qwen2.5vl_merger",
 *   clip.has_vision_encoder, clip.use_silu;
 *   clip.vision.{block_count, embedding_length, feed_forward_length,
 *   projection_dim, patch_size, attention.head_count, n_wa_pattern,
 *   image_mean, image_std} (window_size, spatial_merge_size optional)
 *                                   → a `vision_config` attached as the
 *                                     source's config (fullatt_block_indexes
 *                                     = n·k − 1: every n-th block is full
 *                                     attention, as the converter derives n);
 *   v.patch_embd.weight, v.patch_embd.weight.1 — the Conv3d kernel
 *     [C, 3, 2, p, p] split into its two temporal slices [C, 3, p, p]
 *                                   → recombined into one owned tensor
 *                                     visual.patch_embed.proj.weight;
 *   v.blk.N.attn_q / attn_k / attn_v (the fused qkv split by rows)
 *                                   → visual.blocks.N.attn.q / k / v (vision.c
 *                                     binds split q, k, v as they are);
 *   v.blk.N.attn_out, ln1, ln2, ffn_gate, ffn_up, ffn_down
 *                                   → attn.proj, norm1, norm2, mlp.gate_proj,
 *                                     mlp.up_proj, mlp.down_proj;
 *   v.post_ln → visual.merger.ln_q; mm.0, mm.2 → visual.merger.mlp.0, .2.
 * Shapes come from io/gguf.c already in PyTorch order (GGUF's ne reversed).
 * Any other tensor, projector or architecture is refused, naming it: a
 * tensor this map does not know could change what the tower computes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/types.h"
#include "io/gguf.h"
#include "io/source.h"

#define MM_PATCH0 "v.patch_embd.weight"
#define MM_PATCH1 "v.patch_embd.weight.1"
#define MM_PATCH_NAME "visual.patch_embed.proj.weight"
#define MM_MAX_BLOCKS 128 /* = QI_VISION_MAX_DEPTH */

typedef struct mm_impl {
    qi_gguf_file *f;
    void *patch;              /* [C, 3, 2, p, p] in the stored element type, owned */
    size_t patch_bytes;
    qi_dtype patch_dtype;
    int64_t patch_shape[5];
} mm_impl;

static const mm_impl *impl_of(const qi_source *s) { return s->impl; }

/* ---- names -------------------------------------------------------------------------- */

static const struct {
    const char *llama, *hf;
} block_names[] = {
    {"attn_q", "attn.q"},        {"attn_k", "attn.k"},       {"attn_v", "attn.v"},
    {"attn_out", "attn.proj"},   {"ln1", "norm1"},           {"ln2", "norm2"},
    {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"}, {"ffn_down", "mlp.down_proj"},
};

int qi_names_llamacpp_mmproj(const char *stored, char *out, size_t cap) {
    static const struct {
        const char *llama, *hf;
    } whole[] = {
        {"v.post_ln.weight", "visual.merger.ln_q.weight"}, {"mm.0.weight", "visual.merger.mlp.0.weight"},
        {"mm.0.bias", "visual.merger.mlp.0.bias"},         {"mm.2.weight", "visual.merger.mlp.2.weight"},
        {"mm.2.bias", "visual.merger.mlp.2.bias"},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(whole); i++)
        if (!strcmp(stored, whole[i].llama)) return snprintf(out, cap, "%s", whole[i].hf) < (int)cap;
    int blk;
    char part[32], kind[16];
    if (sscanf(stored, "v.blk.%d.%31[^.].%15s", &blk, part, kind) != 3 || blk < 0 || blk >= MM_MAX_BLOCKS ||
        (strcmp(kind, "weight") && strcmp(kind, "bias")))
        return 0;
    char canon[96]; /* refuses spellings sscanf lets through ("v.blk.+1.", "v.blk.01.") */
    snprintf(canon, sizeof canon, "v.blk.%d.%s.%s", blk, part, kind);
    if (strcmp(canon, stored)) return 0;
    for (size_t i = 0; i < QI_ARRAY_LEN(block_names); i++)
        if (!strcmp(part, block_names[i].llama))
            return snprintf(out, cap, "visual.blocks.%d.%s.%s", blk, block_names[i].hf, kind) < (int)cap;
    return 0;
}

/* ---- the source's ops ----------------------------------------------------------------- */

/* A tensor as stored, or (no tensor) the recombined patch embedding. */
static void mm_fill(const qi_source *s, const qi_name_entry *e, qi_source_tensor *out) {
    const mm_impl *im = impl_of(s);
    if (e->tensor) {
        qi_source_gguf_fill(s, e, out);
        return;
    }
    qi_source_tensor_set(out, e->name, MM_PATCH0 " + " MM_PATCH1, s->path, im->patch_dtype, 5, im->patch_shape,
                         im->patch, im->patch_bytes);
}

static const struct qi_gguf_file *mm_gguf(const qi_source *s) { return impl_of(s)->f; }

static void mm_close(qi_source *s) {
    mm_impl *im = s->impl;
    if (!im) return;
    if (im->f) qi_gguf_close(im->f);
    free(im->patch);
    free(im);
    s->impl = NULL;
}

static const qi_source_ops mmproj_ops = {
    .kind = "mmproj GGUF file",
    .fill = mm_fill,
    .has_meta = qi_source_gguf_has_meta,
    .meta_int = qi_source_gguf_meta_int,
    .meta_float = qi_source_gguf_meta_float,
    .gguf = mm_gguf,
    .close = mm_close,
};

/* ---- metadata → vision_config ------------------------------------------------------------ */

#define MM_WHY "a Qwen2.5-VL mmproj"

/* A string key equal to `want`; *got (may be NULL) the value for messages. */
static int meta_is(const qi_gguf_file *f, const char *key, const char *want, char *got, size_t cap) {
    const char *v = NULL;
    size_t len = 0;
    qi_error ignored;
    if (got && cap) got[0] = 0;
    if (qi_gguf_get_string(f, key, &v, &len, &ignored) != QI_OK) return 0;
    if (got) snprintf(got, cap, "%.*s", (int)(len < 64 ? len : 64), v);
    return strlen(want) == len && !memcmp(v, want, len);
}

/* What the file is, before anything is read from it: a clip file of the
 * Qwen2.5-VL projector, SiLU-gated, with a vision encoder. */
static qi_status check_kind(const qi_source *s, const qi_gguf_file *f, qi_error *err) {
    char got[72];
    if (!meta_is(f, "general.architecture", "clip", got, sizeof got))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: general.architecture is '%s', not 'clip': not a llama.cpp mmproj file%s", s->path,
                       got[0] ? got : "(none)",
                       !strcmp(got, "qwen2vl") ? " (this is the text encoder; its vision tower is the separate "
                                                 "mmproj-*.gguf beside it)"
                                               : "");
    if (!meta_is(f, "clip.projector_type", "qwen2.5vl_merger", got, sizeof got))
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: clip.projector_type is '%s'; Qwen-Image-Edit reads pictures with Qwen2.5-VL-7B's "
                       "tower, whose mmproj says 'qwen2.5vl_merger' (e.g. mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf "
                       "beside Qwen2.5-VL-7B-Instruct-*.gguf)",
                       s->path, got[0] ? got : "(none)");
    int yes = 1;
    qi_error ignored;
    if (qi_gguf_has_key(f, "clip.has_vision_encoder") &&
        (qi_gguf_get_bool(f, "clip.has_vision_encoder", &yes, &ignored) != QI_OK || !yes))
        return qi_fail(err, QI_ERR_FORMAT, "%s: clip.has_vision_encoder is not true: no vision tower in it",
                       s->path);
    if (qi_gguf_has_key(f, "clip.use_gelu") && qi_gguf_get_bool(f, "clip.use_gelu", &yes, &ignored) == QI_OK && yes)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: clip.use_gelu is true; the Qwen2.5-VL tower's MLP is SiLU-gated", s->path);
    return QI_OK;
}

/* An integer key in [lo, hi]; a missing key is def (def < 0: an error). */
static qi_status meta_int(const qi_source *s, const qi_gguf_file *f, const char *key, int64_t def, int64_t lo,
                          int64_t hi, int *out, qi_error *err) {
    int64_t v = def;
    if (def < 0 || qi_gguf_has_key(f, key)) {
        qi_status st = qi_gguf_get_int(f, key, &v, err);
        if (st != QI_OK) return qi_fail_ctx(err, st, "%s", MM_WHY);
    }
    qi_status st = qi_check_range(s->path, key, v, lo, hi, MM_WHY, err);
    if (st == QI_OK) *out = (int)v;
    return st;
}

/* The picture normalisation of the file must be the one the engine applies
 * (Qwen2.5-VL's processor: CLIP's mean and std, qi_vl_preprocess_default). */
static qi_status check_norm(const qi_source *s, const qi_gguf_file *f, const char *key, const double want[3],
                            qi_error *err) {
    if (!qi_gguf_has_key(f, key)) return QI_OK;
    qi_gguf_array a;
    qi_status st = qi_gguf_get_array(f, key, &a, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "%s", s->path);
    double v[3] = {0};
    for (uint64_t i = 0; i < 3 && i < a.count && !st; i++) st = qi_gguf_array_float(&a, i, &v[i], err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "%s", s->path);
    if (a.count != 3 || fabs(v[0] - want[0]) > 1e-6 || fabs(v[1] - want[1]) > 1e-6 || fabs(v[2] - want[2]) > 1e-6)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: %s is not Qwen2.5-VL's (%.8g, %.8g, %.8g); the engine normalises pictures with that "
                       "processor's values",
                       s->path, key, want[0], want[1], want[2]);
    return QI_OK;
}

typedef struct mm_config {
    int depth, hidden, heads, ffn, out, patch, merge, window, wa_pattern;
} mm_config;

static qi_status read_config(const qi_source *s, const qi_gguf_file *f, mm_config *c, qi_error *err) {
    static const double mean[3] = {0.48145466, 0.4578275, 0.40821073};
    static const double std_[3] = {0.26862954, 0.26130258, 0.27577711};
    qi_status st;
    if ((st = check_kind(s, f, err)) ||
        (st = meta_int(s, f, "clip.vision.block_count", -1, 1, MM_MAX_BLOCKS, &c->depth, err)) ||
        (st = meta_int(s, f, "clip.vision.embedding_length", -1, 1, 65536, &c->hidden, err)) ||
        (st = meta_int(s, f, "clip.vision.attention.head_count", -1, 1, 1024, &c->heads, err)) ||
        (st = meta_int(s, f, "clip.vision.feed_forward_length", -1, 1, 1 << 20, &c->ffn, err)) ||
        (st = meta_int(s, f, "clip.vision.projection_dim", -1, 1, 65536, &c->out, err)) ||
        (st = meta_int(s, f, "clip.vision.patch_size", -1, 1, 64, &c->patch, err)) ||
        (st = meta_int(s, f, "clip.vision.spatial_merge_size", 2, 1, 8, &c->merge, err)) ||
        /* not written for Qwen2.5-VL: llama.cpp uses the model's 112 pixels */
        (st = meta_int(s, f, "clip.vision.window_size", 112, 1, 4096, &c->window, err)) ||
        (st = meta_int(s, f, "clip.vision.n_wa_pattern", -1, 1, c->depth, &c->wa_pattern, err)) ||
        (st = check_norm(s, f, "clip.vision.image_mean", mean, err)) ||
        (st = check_norm(s, f, "clip.vision.image_std", std_, err)))
        return st;
    /* clip.vision.attention.layer_norm_epsilon is not read: the reference's
     * vision blocks fix 1e-6 whatever the config says (vision.c does too). */
    return QI_OK;
}

/* The config as vision.c reads config.json's `vision_config`; NULL when out of memory. */
static cJSON *config_json(const mm_config *c, int in_channels) {
    cJSON *root = cJSON_CreateObject(), *v = cJSON_AddObjectToObject(root, "vision_config");
    cJSON *full = v ? cJSON_AddArrayToObject(v, "fullatt_block_indexes") : NULL;
    cJSON *rope = v ? cJSON_AddObjectToObject(v, "rope_parameters") : NULL;
    if (!full || !rope) {
        cJSON_Delete(root);
        return NULL;
    }
    const struct {
        const char *key;
        int v;
    } ints[] = {{"depth", c->depth},           {"hidden_size", c->hidden},  {"num_heads", c->heads},
                {"intermediate_size", c->ffn}, {"out_hidden_size", c->out}, {"in_channels", in_channels},
                {"patch_size", c->patch},      {"temporal_patch_size", 2},  {"spatial_merge_size", c->merge},
                {"window_size", c->window}};
    int ok = 1;
    for (size_t i = 0; i < QI_ARRAY_LEN(ints); i++) ok = ok && cJSON_AddNumberToObject(v, ints[i].key, ints[i].v);
    /* blocks n−1, 2n−1, …: full attention (llama.cpp: (block + 1) % n == 0) */
    for (int b = c->wa_pattern - 1; b < c->depth && ok; b += c->wa_pattern)
        ok = cJSON_AddItemToArray(full, cJSON_CreateNumber(b));
    ok = ok && cJSON_AddStringToObject(v, "hidden_act", "silu") &&
         cJSON_AddNumberToObject(rope, "rope_theta", 10000.0);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- tensors ----------------------------------------------------------------------------- */

/* The two temporal slices [C, 3, p, p] → [C, 3, 2, p, p]: for every
 * (channel out, channel in), slice 0's p·p values then slice 1's (the
 * Conv3d kernel's time axis sits between the input channel and the rows). */
static qi_status recombine_patch(const qi_source *s, mm_impl *im, qi_error *err) {
    const qi_gguf_tensor *a = qi_gguf_find(im->f, MM_PATCH0), *b = qi_gguf_find(im->f, MM_PATCH1);
    if (!a || !b)
        return qi_fail(err, QI_ERR_FORMAT, "%s: no '%s' (%s): the patch embedding's temporal slices are missing",
                       s->path, a ? MM_PATCH1 : MM_PATCH0, MM_WHY);
    int same = a->dtype == b->dtype && a->ndim == 4 && b->ndim == 4;
    for (int i = 0; same && i < 4; i++) same = a->shape[i] == b->shape[i];
    if (!same)
        return qi_fail(err, QI_ERR_FORMAT, "%s: '%s' and '%s' differ in type or shape (expected two [C, 3, p, p])",
                       s->path, MM_PATCH0, MM_PATCH1);
    size_t es = qi_dtype_size(a->dtype);
    if (!es || qi_dtype_is_block(a->dtype))
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: '%s' is %s; the patch embedding must be F32, F16 or BF16",
                       s->path, MM_PATCH0, qi_dtype_name(a->dtype));
    size_t slice = (size_t)(a->shape[2] * a->shape[3]) * es, pairs = (size_t)(a->shape[0] * a->shape[1]);
    if (a->nbytes != pairs * slice || b->nbytes != a->nbytes)
        return qi_fail(err, QI_ERR_FORMAT, "%s: '%s' holds %zu bytes, expected %zu", s->path, MM_PATCH0, a->nbytes,
                       pairs * slice);
    if (!(im->patch = malloc(2 * a->nbytes)))
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for the patch embedding", s->path);
    for (size_t k = 0; k < pairs; k++) {
        memcpy((char *)im->patch + (2 * k) * slice, (const char *)a->data + k * slice, slice);
        memcpy((char *)im->patch + (2 * k + 1) * slice, (const char *)b->data + k * slice, slice);
    }
    im->patch_bytes = 2 * a->nbytes;
    im->patch_dtype = a->dtype;
    int64_t shape[5] = {a->shape[0], a->shape[1], 2, a->shape[2], a->shape[3]};
    memcpy(im->patch_shape, shape, sizeof shape);
    return QI_OK;
}

/* Every stored tensor mapped (the patch slices to one entry), sorted. */
static qi_status index_tensors(qi_source *s, mm_impl *im, qi_error *err) {
    int n = qi_gguf_tensor_count(im->f);
    for (int i = 0; i < n; i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(im->f, i);
        char name[96];
        qi_status st = QI_OK;
        if (!strcmp(t->name, MM_PATCH1)) continue;
        if (!strcmp(t->name, MM_PATCH0)) {
            st = qi_name_table_add(&s->names, MM_PATCH_NAME, 0, NULL, s->path, err);
        } else if (qi_names_llamacpp_mmproj(t->name, name, sizeof name)) {
            st = qi_name_table_add(&s->names, name, 1, t, s->path, err);
        } else {
            return qi_fail(err, QI_ERR_UNSUPPORTED,
                           "%s: tensor '%s' is not part of llama.cpp's Qwen2.5-VL mmproj layout (v.patch_embd, "
                           "v.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,ffn_gate,ffn_up,ffn_down}, v.post_ln, "
                           "mm.0, mm.2)",
                           s->path, t->name);
        }
        if (st != QI_OK) return st;
    }
    qi_name_table_sort(&s->names);
    return QI_OK;
}

static qi_status open_impl(qi_source *s, mm_impl *im, qi_error *err) {
    qi_status st = qi_gguf_open(s->path, &im->f, err);
    mm_config c;
    if (!st) st = read_config(s, im->f, &c, err);
    if (!st) st = recombine_patch(s, im, err);
    if (!st) st = index_tensors(s, im, err);
    if (st) return st;
    if (!(s->config = config_json(&c, (int)im->patch_shape[1])))
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", s->path);
    snprintf(s->config_path, sizeof s->config_path, "%.4000s (GGUF metadata)", s->path);
    snprintf(s->prefix, sizeof s->prefix, "%s", "");
    s->naming = "llama.cpp mmproj (qwen2.5vl_merger)";
    return QI_OK;
}

qi_status qi_source_open_mmproj(const char *path, qi_source **out, qi_error *err) {
    *out = NULL;
    if (!path || !*path) return qi_fail(err, QI_ERR_ARG, "mmproj: no file given");
    qi_source *s = qi_source_new(&mmproj_ops, QI_COMPONENT_TEXT_ENCODER, path);
    mm_impl *im = s ? calloc(1, sizeof *im) : NULL;
    if (!im) {
        free(s);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    }
    s->impl = im;
    qi_status st = open_impl(s, im, err);
    if (st != QI_OK) {
        qi_source_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

/*
 * vision.c — the Qwen2.5-VL vision tower on the backend op table, and the
 * host-side picture preparation (sizes, patches) of Qwen-Image-Edit.
 *
 * Owns: reading `vision_config` (or deriving it from shapes), binding the
 * `visual.*` weights (q, k, v bound as row ranges of the fused qkv weight,
 * so the backend sees three plain linears), the window order, the 2-D rotary
 * tables, the forward, and the processor's size rules and patch layout.
 * Does not own: resampling pictures (io), where the output goes in the
 * prompt (edit_prompt.c).
 *
 * Reference read (not copied): transformers' Qwen2_5_VisionTransformer
 * (get_window_index, rot_pos_emb, Qwen2_5_VLVisionBlock, PatchMerger) and
 * Qwen2VLImageProcessor (smart_resize, the pixel_values layout); the
 * pitfalls in shared/reference/edit/README.md E2 and E6.
 */
#include "model/vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/types.h"
#include "io/model_dir.h"

/* ---- config ------------------------------------------------------------------- */

static const char *const name_prefixes[] = {"visual.", "model.visual."};

static const char *find_prefix(const qi_source *src) {
    for (size_t i = 0; i < QI_ARRAY_LEN(name_prefixes); i++) {
        char name[128];
        snprintf(name, sizeof name, "%spatch_embed.proj.weight", name_prefixes[i]);
        qi_source_tensor t;
        if (qi_source_find(src, name, &t)) return name_prefixes[i];
    }
    return NULL;
}

int qi_vision_present(const qi_source *src) { return src && find_prefix(src) != NULL; }

static qi_status check_config(const char *path, qi_vision_config *c, qi_error *err) {
    const struct {
        const char *key;
        int v, lo, hi;
    } b[] = {
        {"depth", c->depth, 1, QI_VISION_MAX_DEPTH},
        {"hidden_size", c->hidden_size, 1, 65536},
        {"num_heads", c->num_heads, 1, 1024},
        {"intermediate_size", c->intermediate_size, 1, 1 << 20},
        {"out_hidden_size", c->out_hidden_size, 1, 65536},
        {"in_channels", c->in_channels, 3, 3},
        {"patch_size", c->patch_size, 1, 64},
        {"temporal_patch_size", c->temporal_patch_size, 1, 8},
        {"spatial_merge_size", c->spatial_merge_size, 1, 8},
        {"window_size", c->window_size, 1, 4096},
    };
    qi_status st = QI_OK;
    for (size_t i = 0; i < QI_ARRAY_LEN(b) && !st; i++)
        st = qi_check_range(path, b[i].key, b[i].v, b[i].lo, b[i].hi, "the vision tower's config", err);
    if (st) return st;
    if (c->hidden_size % c->num_heads || (c->hidden_size / c->num_heads) % 4)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: vision hidden_size %d / num_heads %d must be a whole head dim that is a "
                       "multiple of 4 (2-D rotary)",
                       path, c->hidden_size, c->num_heads);
    c->head_dim = c->hidden_size / c->num_heads;
    if (c->window_size % (c->patch_size * c->spatial_merge_size))
        return qi_fail(err, QI_ERR_FORMAT, "%s: vision window_size %d is not a multiple of patch·merge %d",
                       path, c->window_size, c->patch_size * c->spatial_merge_size);
    for (int i = 0; i < c->n_fullatt; i++)
        if (c->fullatt[i] < 0)
            return qi_fail(err, QI_ERR_FORMAT, "%s: fullatt_block_indexes has %d", path, c->fullatt[i]);
    c->patch_dim = c->in_channels * c->temporal_patch_size * c->patch_size * c->patch_size;
    c->rms_norm_eps = 1e-6;
    return QI_OK;
}

static qi_status parse_config(const cJSON *root, const char *path, qi_vision_config *c, qi_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    if (!cJSON_IsObject(v))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no \"vision_config\" object; the Edit models' text_encoder/config.json "
                       "has one (is this a Qwen2.5-VL config?)",
                       path);
    qi_status st;
    if ((st = qi_json_get_int(v, "depth", path, &c->depth, err)) ||
        (st = qi_json_get_int(v, "hidden_size", path, &c->hidden_size, err)) ||
        (st = qi_json_get_int(v, "num_heads", path, &c->num_heads, err)) ||
        (st = qi_json_get_int(v, "intermediate_size", path, &c->intermediate_size, err)) ||
        (st = qi_json_get_int(v, "out_hidden_size", path, &c->out_hidden_size, err)) ||
        (st = qi_json_get_int_opt(v, "in_channels", path, 3, &c->in_channels, err)) ||
        (st = qi_json_get_int_opt(v, "patch_size", path, 14, &c->patch_size, err)) ||
        (st = qi_json_get_int_opt(v, "temporal_patch_size", path, 2, &c->temporal_patch_size, err)) ||
        (st = qi_json_get_int_opt(v, "spatial_merge_size", path, 2, &c->spatial_merge_size, err)) ||
        (st = qi_json_get_int_opt(v, "window_size", path, 112, &c->window_size, err)) ||
        (st = qi_json_get_int_array(v, "fullatt_block_indexes", path, c->fullatt, QI_VISION_MAX_DEPTH,
                                    &c->n_fullatt, err)))
        return st;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(v, "rope_parameters");
    c->rope_theta = 10000.0;
    if (cJSON_IsObject(rp) && (st = qi_json_get_double_opt(rp, "rope_theta", path, 10000.0, &c->rope_theta, err)))
        return st;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(v, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: vision_config.hidden_act is '%s'; the Qwen2.5-VL tower's MLP is SiLU-gated",
                       path, act->valuestring);
    return check_config(path, c, err);
}

/* No config.json (ComfyUI's single file): the sizes from the shapes, the rest
 * Qwen2.5-VL-7B's (the only tower Qwen-Image-Edit ships). */
static qi_status config_of_shapes(const qi_source *src, const char *prefix, qi_vision_config *c,
                                  qi_error *err) {
    char name[160];
    qi_source_tensor t;
    const char *path = qi_source_path(src);
    snprintf(name, sizeof name, "%spatch_embed.proj.weight", prefix);
    qi_source_find(src, name, &t);
    if (t.ndim != 5)
        return qi_fail(err, QI_ERR_FORMAT, "%s: '%s' has %d dims; expected [hidden, 3, 2, 14, 14]", path, name,
                       t.ndim);
    c->hidden_size = (int)t.shape[0];
    c->in_channels = (int)t.shape[1];
    c->temporal_patch_size = (int)t.shape[2];
    c->patch_size = (int)t.shape[3];
    for (c->depth = 0; c->depth < QI_VISION_MAX_DEPTH; c->depth++) {
        snprintf(name, sizeof name, "%sblocks.%d.norm1.weight", prefix, c->depth);
        if (!qi_source_find(src, name, &t)) break;
    }
    snprintf(name, sizeof name, "%sblocks.0.mlp.gate_proj.weight", prefix);
    if (!qi_source_find(src, name, &t))
        return qi_fail(err, QI_ERR_FORMAT, "%s: no '%s'", path, name);
    c->intermediate_size = (int)t.shape[0];
    snprintf(name, sizeof name, "%smerger.mlp.2.weight", prefix);
    if (!qi_source_find(src, name, &t))
        return qi_fail(err, QI_ERR_FORMAT, "%s: no '%s'", path, name);
    c->out_hidden_size = (int)t.shape[0];
    c->spatial_merge_size = 2;
    c->window_size = 112;
    c->rope_theta = 10000.0;
    if (c->hidden_size % 80)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: vision width %d is not Qwen2.5-VL-7B's layout (head dim 80); give the "
                       "text encoder's config.json beside the file",
                       path, c->hidden_size);
    c->num_heads = c->hidden_size / 80;
    c->n_fullatt = 0;
    for (int i = 7; i < c->depth; i += 8) c->fullatt[c->n_fullatt++] = i;
    return check_config(path, c, err);
}

/* ---- weights ------------------------------------------------------------------- */

typedef struct vt_block {
    qi_tensor norm1, norm2;                 /* [C] */
    qi_tensor q_w, k_w, v_w, q_b, k_b, v_b; /* [C, C], [C]: rows of the fused qkv */
    qi_tensor proj_w, proj_b;               /* [C, C], [C] */
    qi_tensor gate_w, gate_b, up_w, up_b;   /* [I, C], [I] */
    qi_tensor down_w, down_b;               /* [C, I], [C] */
    int full_attention;
} vt_block;

struct qi_vision {
    qi_vision_config cfg;
    qi_backend *be;
    const qi_source *src;
    const char *prefix;
    qi_tensor patch_w;                /* [C, patch_dim] (the Conv3d weight, flattened) */
    vt_block *blocks;                 /* [depth] */
    qi_tensor ln_q;                   /* [C] */
    qi_tensor mlp0_w, mlp0_b;         /* [4C, 4C], [4C] */
    qi_tensor mlp2_w, mlp2_b;         /* [out, 4C], [out] */
};

/* Binds rows [row0, row0 + rows) of the tensor `name` (shape checked against
 * want[0..ndim)) as a weight of shape [rows, cols] (cols = the product of the
 * other dims; 1-D tensors: [rows]). */
static qi_status bind_rows(qi_vision *vt, const char *name, int ndim, const int64_t *want, int64_t row0,
                           int64_t rows, qi_tensor *w, qi_error *err) {
    char full[192];
    snprintf(full, sizeof full, "%s%s", vt->prefix, name);
    qi_source_tensor t;
    qi_status st = qi_source_get(vt->src, full, ndim, want, &t, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "vision tower");
    int64_t cols = 1;
    for (int i = 1; i < ndim; i++) cols *= t.shape[i];
    int64_t row_bytes = qi_row_bytes(t.dtype, cols);
    if (row_bytes < 0 || (ndim == 1 && qi_dtype_is_block(t.dtype) && row0))
        return qi_fail(err, QI_ERR_UNSUPPORTED, "vision tower weight '%s': type %s cannot be split by rows",
                       full, qi_dtype_name(t.dtype));
    qi_weight_scale sc = qi_source_tensor_scale(&t);
    if (sc.form == QI_SCALE_ROW) sc.row_scale += row0;
    int64_t ne[2] = {rows, cols};
    const uint8_t *host = (const uint8_t *)t.data + row0 * row_bytes;
    st = vt->be->ops->weight(vt->be, w, t.dtype, ndim == 1 ? 1 : 2, ne, host, &sc, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "vision tower weight '%s'", full);
    return QI_OK;
}

static qi_status bind(qi_vision *vt, const char *name, int64_t d0, int64_t d1, qi_tensor *w, qi_error *err) {
    int64_t want[2] = {d0, d1};
    return bind_rows(vt, name, d1 ? 2 : 1, want, 0, d0, w, err);
}

static qi_status bind_block(qi_vision *vt, int i, vt_block *b, qi_error *err) {
    const qi_vision_config *c = &vt->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size;
    char n[160];
    qi_status st = QI_OK;
#define VT_NAME(s) (snprintf(n, sizeof n, "blocks.%d.%s", i, s), n)
    int64_t qkv_w[2] = {3 * C, C}, qkv_b[1] = {3 * C};
    qi_tensor *ws[3] = {&b->q_w, &b->k_w, &b->v_w}, *bs[3] = {&b->q_b, &b->k_b, &b->v_b};
    static const char *const split[3][2] = {{"attn.q.weight", "attn.q.bias"},
                                            {"attn.k.weight", "attn.k.bias"},
                                            {"attn.v.weight", "attn.v.bias"}};
    char full[192];
    qi_source_tensor t;
    snprintf(full, sizeof full, "%sblocks.%d.attn.q.weight", vt->prefix, i);
    int is_split = qi_source_find(vt->src, full, &t); /* llama.cpp's mmproj: q, k, v as three tensors */
    for (int k = 0; k < 3 && !st; k++) {
        if (is_split) {
            st = bind(vt, VT_NAME(split[k][0]), C, C, ws[k], err);
            if (!st) st = bind(vt, VT_NAME(split[k][1]), C, 0, bs[k], err);
            continue;
        }
        st = bind_rows(vt, VT_NAME("attn.qkv.weight"), 2, qkv_w, k * C, C, ws[k], err);
        if (!st) st = bind_rows(vt, VT_NAME("attn.qkv.bias"), 1, qkv_b, k * C, C, bs[k], err);
    }
    if (!st) st = bind(vt, VT_NAME("norm1.weight"), C, 0, &b->norm1, err);
    if (!st) st = bind(vt, VT_NAME("norm2.weight"), C, 0, &b->norm2, err);
    if (!st) st = bind(vt, VT_NAME("attn.proj.weight"), C, C, &b->proj_w, err);
    if (!st) st = bind(vt, VT_NAME("attn.proj.bias"), C, 0, &b->proj_b, err);
    if (!st) st = bind(vt, VT_NAME("mlp.gate_proj.weight"), I, C, &b->gate_w, err);
    if (!st) st = bind(vt, VT_NAME("mlp.gate_proj.bias"), I, 0, &b->gate_b, err);
    if (!st) st = bind(vt, VT_NAME("mlp.up_proj.weight"), I, C, &b->up_w, err);
    if (!st) st = bind(vt, VT_NAME("mlp.up_proj.bias"), I, 0, &b->up_b, err);
    if (!st) st = bind(vt, VT_NAME("mlp.down_proj.weight"), C, I, &b->down_w, err);
    if (!st) st = bind(vt, VT_NAME("mlp.down_proj.bias"), C, 0, &b->down_b, err);
#undef VT_NAME
    b->full_attention = 0;
    for (int k = 0; k < c->n_fullatt; k++)
        if (c->fullatt[k] == i) b->full_attention = 1;
    return st;
}

static void release(qi_vision *vt, qi_tensor *w) {
    if (w->data) vt->be->ops->weight_free(vt->be, w);
}

void qi_vision_free(qi_vision *vt) {
    if (!vt) return;
    release(vt, &vt->patch_w);
    release(vt, &vt->ln_q);
    release(vt, &vt->mlp0_w);
    release(vt, &vt->mlp0_b);
    release(vt, &vt->mlp2_w);
    release(vt, &vt->mlp2_b);
    for (int i = 0; vt->blocks && i < vt->cfg.depth; i++) {
        vt_block *b = &vt->blocks[i];
        qi_tensor *ws[] = {&b->norm1,  &b->norm2,  &b->q_w,    &b->k_w,  &b->v_w,  &b->q_b,
                           &b->k_b,    &b->v_b,    &b->proj_w, &b->proj_b, &b->gate_w, &b->gate_b,
                           &b->up_w,   &b->up_b,   &b->down_w, &b->down_b};
        for (size_t k = 0; k < QI_ARRAY_LEN(ws); k++) release(vt, ws[k]);
    }
    free(vt->blocks);
    free(vt);
}

qi_status qi_vision_load(const qi_source *src, qi_backend *be, qi_vision **out, qi_error *err) {
    *out = NULL;
    if (!src || !be) return qi_fail(err, QI_ERR_ARG, "vision tower: no source or backend given");
    const char *prefix = find_prefix(src);
    if (!prefix)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no vision tower ('visual.patch_embed.proj.weight'): an Edit model needs the "
                       "full Qwen2.5-VL text encoder; a llama.cpp GGUF keeps it in a separate mmproj file: "
                       "give it with --mmproj FILE (mmproj-Qwen2.5-VL-7B-Instruct-*.gguf, found "
                       "automatically when it is the only mmproj*.gguf beside the text encoder)",
                       qi_source_path(src));
    qi_vision *vt = calloc(1, sizeof *vt);
    if (!vt) return qi_fail(err, QI_ERR_NOMEM, "vision tower: out of memory");
    vt->be = be;
    vt->src = src;
    vt->prefix = prefix;
    const char *cfg_path;
    const cJSON *root = qi_source_config(src, &cfg_path);
    qi_status st = root ? parse_config(root, cfg_path, &vt->cfg, err) : config_of_shapes(src, prefix, &vt->cfg, err);
    const qi_vision_config *c = &vt->cfg;
    if (!st && !(vt->blocks = calloc((size_t)c->depth, sizeof *vt->blocks)))
        st = qi_fail(err, QI_ERR_NOMEM, "vision tower: out of memory");
    int64_t C = c->hidden_size, M = C * c->spatial_merge_size * c->spatial_merge_size;
    if (!st) {
        int64_t want[5] = {C, c->in_channels, c->temporal_patch_size, c->patch_size, c->patch_size};
        st = bind_rows(vt, "patch_embed.proj.weight", 5, want, 0, C, &vt->patch_w, err);
    }
    for (int i = 0; !st && i < c->depth; i++) st = bind_block(vt, i, &vt->blocks[i], err);
    if (!st) st = bind(vt, "merger.ln_q.weight", C, 0, &vt->ln_q, err);
    if (!st) st = bind(vt, "merger.mlp.0.weight", M, M, &vt->mlp0_w, err);
    if (!st) st = bind(vt, "merger.mlp.0.bias", M, 0, &vt->mlp0_b, err);
    if (!st) st = bind(vt, "merger.mlp.2.weight", c->out_hidden_size, M, &vt->mlp2_w, err);
    if (!st) st = bind(vt, "merger.mlp.2.bias", c->out_hidden_size, 0, &vt->mlp2_b, err);
    if (st) {
        qi_vision_free(vt);
        return st;
    }
    *out = vt;
    return QI_OK;
}

const qi_vision_config *qi_vision_get_config(const qi_vision *vt) { return &vt->cfg; }

/* ---- window order and rotary tables (host) ---------------------------------------- */

/* The merged units (gh × gw of them, row-major ids) in window order:
 * windows of `win` units per side, row-major, units row-major inside
 * (empty edge windows skipped). order[k] = the unit at window position k;
 * win_len[w] = units in window w; returns the window count. */
static int window_order(int gh, int gw, int win, int *order, int *win_len) {
    int k = 0, n_win = 0;
    for (int wr = 0; wr < (gh + win - 1) / win; wr++)
        for (int wc = 0; wc < (gw + win - 1) / win; wc++) {
            int start = k;
            for (int r = wr * win; r < gh && r < (wr + 1) * win; r++)
                for (int c = wc * win; c < gw && c < (wc + 1) * win; c++) order[k++] = r * gw + c;
            win_len[n_win++] = k - start;
        }
    return n_win;
}

/* cos/sin [P, Dh/2] for the patches in window order: entry j < Dh/4 is
 * h·inv_freq[j], entry Dh/4 + j is w·inv_freq[j], inv_freq[j] =
 * 1/θ^(2j/(Dh/2)) in float32 as torch computes it (VisionRotaryEmbedding on
 * dim Dh/2; the rotate_half pairs then share these angles). */
static void rotary_tables(const qi_vision_config *c, int gw_units, const int *order, int n_units, float *cos_t,
                          float *sin_t) {
    int half = c->head_dim / 2, quarter = c->head_dim / 4, m = c->spatial_merge_size;
    float inv_freq[1024];
    for (int j = 0; j < quarter && j < 1024; j++)
        inv_freq[j] = 1.0f / powf((float)c->rope_theta, (float)(2 * j) / (float)half);
    int64_t row = 0;
    for (int k = 0; k < n_units; k++) {
        int ur = order[k] / gw_units, uc = order[k] % gw_units;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++, row++) {
                float ph = (float)(ur * m + i), pw = (float)(uc * m + j);
                for (int f = 0; f < quarter; f++) {
                    float ah = ph * inv_freq[f], aw = pw * inv_freq[f];
                    cos_t[row * half + f] = (float)cos((double)ah);
                    sin_t[row * half + f] = (float)sin((double)ah);
                    cos_t[row * half + quarter + f] = (float)cos((double)aw);
                    sin_t[row * half + quarter + f] = (float)sin((double)aw);
                }
            }
    }
}

/* ---- forward ------------------------------------------------------------------------ */

typedef struct vt_acts {
    qi_tensor x, h;          /* [P, C] residual stream, normed input */
    qi_tensor q, k, v, attn; /* [P, C] */
    qi_tensor gate, up;      /* [P, I] */
    qi_tensor cos_t, sin_t;  /* F32 [P, Dh/2] */
    qi_tensor win_off;       /* I32 [windows + 1]: each window's first row, then P */
    qi_tensor pix;           /* [P, patch_dim] */
    qi_tensor merged, out;   /* [P/4, 4C], [P/4, out] */
} vt_acts;

static qi_status alloc_acts(qi_vision *vt, int64_t P, int n_win, vt_acts *a, qi_error *err) {
    qi_backend *be = vt->be;
    const qi_vision_config *c = &vt->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size, mm = c->spatial_merge_size * c->spatial_merge_size;
    int64_t tab[2] = {P, c->head_dim / 2}, offs = (int64_t)n_win + 1;
    qi_status st;
    if ((st = qi_be_act2(be, &a->pix, P, c->patch_dim, err)) || (st = qi_be_act2(be, &a->x, P, C, err)) ||
        (st = qi_be_act2(be, &a->h, P, C, err)) || (st = qi_be_act2(be, &a->q, P, C, err)) ||
        (st = qi_be_act2(be, &a->k, P, C, err)) || (st = qi_be_act2(be, &a->v, P, C, err)) ||
        (st = qi_be_act2(be, &a->attn, P, C, err)) || (st = qi_be_act2(be, &a->gate, P, I, err)) ||
        (st = qi_be_act2(be, &a->up, P, I, err)) ||
        (st = qi_be_act2(be, &a->merged, P / mm, C * mm, err)) ||
        (st = qi_be_act2(be, &a->out, P / mm, c->out_hidden_size, err)) ||
        (st = be->ops->tensor(be, &a->cos_t, QI_F32, 2, tab, err)) ||
        (st = be->ops->tensor(be, &a->sin_t, QI_F32, 2, tab, err)) ||
        (st = be->ops->tensor(be, &a->win_off, QI_I32, 1, &offs, err)))
        return qi_fail_ctx(err, st, "vision tower (%lld patches)", (long long)P);
    return QI_OK;
}

/* Attention of all P rows among themselves (full-attention blocks) or, with
 * `windows`, of each window's rows among themselves: every window in one
 * attention_segments call (a launch per window and head was most of the
 * tower's time on a GPU). */
static void attend(qi_vision *vt, vt_acts *a, int64_t P, int windows) {
    const qi_vision_config *c = &vt->cfg;
    const int64_t H = c->num_heads, Dh = c->head_dim;
    qi_tensor q = qi_view4(&a->q, 1, P, H, Dh), k = qi_view4(&a->k, 1, P, H, Dh);
    qi_tensor v = qi_view4(&a->v, 1, P, H, Dh), o = qi_view4(&a->attn, 1, P, H, Dh);
    float scale = (float)(1.0 / sqrt((double)c->head_dim));
    if (windows) vt->be->ops->attention_segments(vt->be, &q, &k, &v, &a->win_off, scale, &o);
    else vt->be->ops->attention(vt->be, &q, &k, &v, NULL, 0, scale, &o);
}

/* One block on a->x [P, C] (window order; a->win_off: where each window starts). */
static void block_forward(qi_vision *vt, const vt_block *b, int64_t P, vt_acts *a) {
    qi_backend *be = vt->be;
    const qi_backend_ops *op = be->ops;
    const qi_vision_config *c = &vt->cfg;
    float eps = (float)c->rms_norm_eps;
    op->rms_norm(be, &a->x, &b->norm1, eps, &a->h);
    op->linear(be, &a->h, &b->q_w, &b->q_b, QI_ACT_NONE, &a->q);
    op->linear(be, &a->h, &b->k_w, &b->k_b, QI_ACT_NONE, &a->k);
    op->linear(be, &a->h, &b->v_w, &b->v_b, QI_ACT_NONE, &a->v);
    qi_tensor q4 = qi_view4(&a->q, 1, P, c->num_heads, c->head_dim);
    qi_tensor k4 = qi_view4(&a->k, 1, P, c->num_heads, c->head_dim);
    op->rope(be, &q4, &a->cos_t, &a->sin_t, QI_ROPE_HALF);
    op->rope(be, &k4, &a->cos_t, &a->sin_t, QI_ROPE_HALF);
    attend(vt, a, P, !b->full_attention);
    op->linear(be, &a->attn, &b->proj_w, &b->proj_b, QI_ACT_NONE, &a->h);
    op->add_gated(be, &a->x, NULL, 0, &a->h);
    op->rms_norm(be, &a->x, &b->norm2, eps, &a->h);
    op->linear(be, &a->h, &b->gate_w, &b->gate_b, QI_ACT_NONE, &a->gate);
    op->linear(be, &a->h, &b->up_w, &b->up_b, QI_ACT_NONE, &a->up);
    op->silu_mul(be, &a->gate, &a->up, &a->gate);
    op->linear(be, &a->gate, &b->down_w, &b->down_b, QI_ACT_NONE, &a->h);
    op->add_gated(be, &a->x, NULL, 0, &a->h);
}

/* Host buffers of one encode: pixels and rotary tables in window order. */
typedef struct vt_host {
    int *order, *win_len, *win_off; /* [units], [windows], [windows + 1] */
    float *pix, *cos_t, *sin_t, *out;
} vt_host;

static void host_free(vt_host *h) {
    free(h->order);
    free(h->win_len);
    free(h->win_off);
    free(h->pix);
    free(h->cos_t);
    free(h->sin_t);
    free(h->out);
}

static qi_status run(qi_vision *vt, const vt_host *h, int64_t P, int n_win, qi_error *err) {
    qi_backend *be = vt->be;
    const qi_backend_ops *op = be->ops;
    vt_acts a;
    qi_status st = alloc_acts(vt, P, n_win, &a, err);
    if (!st) st = op->upload(be, &a.pix, h->pix, err);
    if (!st) st = op->upload(be, &a.win_off, h->win_off, err);
    if (!st) st = op->upload(be, &a.cos_t, h->cos_t, err);
    if (!st) st = op->upload(be, &a.sin_t, h->sin_t, err);
    if (st) return qi_fail_ctx(err, st, "vision tower");
    op->linear(be, &a.pix, &vt->patch_w, NULL, QI_ACT_NONE, &a.x);
    for (int i = 0; i < vt->cfg.depth; i++) block_forward(vt, &vt->blocks[i], P, &a);
    op->rms_norm(be, &a.x, &vt->ln_q, (float)vt->cfg.rms_norm_eps, &a.h);
    qi_tensor h4 = qi_view2(&a.h, a.merged.ne[0], a.merged.ne[1]); /* 4 patches' rows side by side */
    op->linear(be, &h4, &vt->mlp0_w, &vt->mlp0_b, QI_ACT_GELU_ERF, &a.merged);
    op->linear(be, &a.merged, &vt->mlp2_w, &vt->mlp2_b, QI_ACT_NONE, &a.out);
    st = op->download(be, &a.out, h->out, err);
    return st ? qi_fail_ctx(err, st, "vision tower") : QI_OK;
}

qi_status qi_vision_encode(qi_vision *vt, const float *pixel_rows, int grid_h, int grid_w, float *out,
                           qi_error *err) {
    if (!vt || !pixel_rows || !out) return qi_fail(err, QI_ERR_ARG, "vision tower: NULL argument");
    const qi_vision_config *c = &vt->cfg;
    int m = c->spatial_merge_size, mm = m * m;
    if (grid_h < m || grid_w < m || grid_h % m || grid_w % m || grid_h > 16384 || grid_w > 16384)
        return qi_fail(err, QI_ERR_ARG,
                       "vision tower: patch grid %d×%d must be positive multiples of the merge size %d "
                       "(resize with qi_vl_smart_resize first)",
                       grid_h, grid_w, m);
    int gh = grid_h / m, gw = grid_w / m, units = gh * gw, win = c->window_size / (c->patch_size * m);
    int64_t P = (int64_t)units * mm, D = c->patch_dim, half = c->head_dim / 2, O = c->out_hidden_size;
    int max_win = ((gh + win - 1) / win) * ((gw + win - 1) / win);
    vt_host h = {0};
    h.order = malloc((size_t)units * sizeof(int));
    h.win_len = malloc((size_t)max_win * sizeof(int));
    h.win_off = malloc((size_t)(max_win + 1) * sizeof(int));
    h.pix = malloc((size_t)(P * D) * sizeof(float));
    h.cos_t = malloc((size_t)(P * half) * sizeof(float));
    h.sin_t = malloc((size_t)(P * half) * sizeof(float));
    h.out = malloc((size_t)units * (size_t)O * sizeof(float));
    if (!h.order || !h.win_len || !h.win_off || !h.pix || !h.cos_t || !h.sin_t || !h.out) {
        host_free(&h);
        return qi_fail(err, QI_ERR_NOMEM, "vision tower: out of memory (%lld patches)", (long long)P);
    }
    int n_win = window_order(gh, gw, win, h.order, h.win_len);
    h.win_off[0] = 0; /* windows back to back, P rows in all (grid sides <= 16384: P fits an int) */
    for (int w = 0; w < n_win; w++) h.win_off[w + 1] = h.win_off[w] + h.win_len[w] * mm;
    /* Window order: a unit's mm patch rows travel together. */
    for (int k = 0; k < units; k++)
        memcpy(h.pix + (size_t)k * mm * D, pixel_rows + (size_t)h.order[k] * mm * D, (size_t)(mm * D) * sizeof(float));
    rotary_tables(c, gw, h.order, units, h.cos_t, h.sin_t);

    size_t mark = vt->be->ops->mark(vt->be);
    qi_status st = run(vt, &h, P, n_win, err);
    vt->be->ops->reset(vt->be, mark);
    if (!st) /* back to picture order */
        for (int k = 0; k < units; k++)
            memcpy(out + (size_t)h.order[k] * O, h.out + (size_t)k * O, (size_t)O * sizeof(float));
    host_free(&h);
    return st;
}

/* ---- picture preparation -------------------------------------------------------------- */

qi_vl_preprocess qi_vl_preprocess_default(void) {
    qi_vl_preprocess p = {
        .patch_size = 14,
        .merge_size = 2,
        .temporal_patch_size = 2,
        .min_pixels = 56 * 56,
        .max_pixels = 28 * 28 * 1280 * 16,
        .rescale_factor = 1.0 / 255.0,
        .mean = {0.48145466, 0.4578275, 0.40821073},
        .std = {0.26862954, 0.26130258, 0.27577711},
    };
    return p;
}

void qi_edit_calculate_dimensions(int64_t area, int src_w, int src_h, int *out_w, int *out_h) {
    double ratio = (double)src_w / (double)src_h;
    double width = sqrt((double)area * ratio);
    double height = width / ratio;
    *out_w = (int)(rint(width / 32.0) * 32.0);
    *out_h = (int)(rint(height / 32.0) * 32.0);
}

qi_status qi_vl_smart_resize(int height, int width, const qi_vl_preprocess *pp, int *out_h, int *out_w,
                             qi_error *err) {
    int factor = pp->patch_size * pp->merge_size;
    if (height < 1 || width < 1)
        return qi_fail(err, QI_ERR_ARG, "picture of %d×%d pixels: both sides must be at least 1", width, height);
    double big = height > width ? height : width, small = height > width ? width : height;
    if (big / small > 200)
        return qi_fail(err, QI_ERR_ARG,
                       "picture of %d×%d pixels: aspect ratio over 200 (the Qwen2-VL processor refuses it)",
                       width, height);
    double h = rint((double)height / factor) * factor, w = rint((double)width / factor) * factor;
    if (h * w > (double)pp->max_pixels) {
        double beta = sqrt((double)height * width / (double)pp->max_pixels);
        h = fmax(factor, floor(height / beta / factor) * factor);
        w = fmax(factor, floor(width / beta / factor) * factor);
    } else if (h * w < (double)pp->min_pixels) {
        double beta = sqrt((double)pp->min_pixels / ((double)height * width));
        h = ceil(height * beta / factor) * factor;
        w = ceil(width * beta / factor) * factor;
    }
    *out_h = (int)h;
    *out_w = (int)w;
    return QI_OK;
}

void qi_vl_patchify(const uint8_t *rgb, int height, int width, const qi_vl_preprocess *pp, float *rows) {
    int p = pp->patch_size, m = pp->merge_size, T = pp->temporal_patch_size;
    int gh = height / p, gw = width / p;
    /* transformers fuses rescale into normalise: float32 tensors of mean and
     * std times the Python scalar 1/rf (a float32 multiply), then float32
     * (x − mean') / std'. Bit-exact only in this order (README E2). */
    float mean[3], std[3], inv_rf = (float)(1.0 / pp->rescale_factor);
    for (int ch = 0; ch < 3; ch++) {
        mean[ch] = (float)pp->mean[ch] * inv_rf;
        std[ch] = (float)pp->std[ch] * inv_rf;
    }
    size_t D = (size_t)3 * T * p * p;
    float *row = rows;
    for (int br = 0; br < gh / m; br++)
        for (int bc = 0; bc < gw / m; bc++)
            for (int i = 0; i < m; i++)
                for (int j = 0; j < m; j++, row += D) {
                    int y0 = (br * m + i) * p, x0 = (bc * m + j) * p;
                    float *dst = row;
                    for (int ch = 0; ch < 3; ch++)
                        for (int t = 0; t < T; t++)
                            for (int y = 0; y < p; y++)
                                for (int x = 0; x < p; x++)
                                    *dst++ = ((float)rgb[((size_t)(y0 + y) * width + (x0 + x)) * 3 + ch] - mean[ch]) /
                                             std[ch];
                }
}

/*
 * dit_config.c — what is known about a transformer before its weights load:
 * its configuration (a config.json, or derived from tensor shapes), its RoPE
 * tables, its FLOP count, the device memory one denoising step needs, and which streaming
 * unit each of its weights belongs to (the residency planner's inputs).
 * Split from dit.c, which owns the weights and the forward pass.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/model_dir.h"
#include "io/source.h"
#include "model/dit.h"

#define DIT_TIME_CHANNELS QI_DIT_TIME_CHANNELS
#define DIT_ROPE_THETA 10000.0f
#define DIT_ROPE_LIMIT 4096 /* diffusers' position tables hold -4096..4095 */

/* ---- config ------------------------------------------------------------------ */

/* The bounds of every integer of a transformer config (Qwen-Image's own
 * values in the comments): generous for variants, small enough that no width,
 * product or offset computed from them overflows an int. */
static qi_status check_bounds(const qi_dit_config *c, const char *path, int n_axes, qi_error *err) {
    const struct {
        const char *key;
        int v, lo, hi;
    } b[] = {
        {"num_layers", c->num_layers, 1, 1024},                 /* 60 */
        {"num_attention_heads", c->num_heads, 1, 1024},         /* 24 */
        {"attention_head_dim", c->head_dim, 2, 1024},           /* 128 */
        {"joint_attention_dim", c->joint_dim, 1, 65536},        /* 3584 */
        {"in_channels", c->in_channels, 1, 65536},              /* 64 */
        {"out_channels", c->out_channels, 1, 65536},            /* 16 */
        {"patch_size", c->patch_size, 1, 16},                   /* 2 */
        {"axes_dims_rope[0]", n_axes > 0 ? c->axes_dims_rope[0] : 0, 0, 1024}, /* 16 */
        {"axes_dims_rope[1]", n_axes > 1 ? c->axes_dims_rope[1] : 0, 0, 1024}, /* 56 */
        {"axes_dims_rope[2]", n_axes > 2 ? c->axes_dims_rope[2] : 0, 0, 1024}, /* 56 */
    };
    qi_status st = QI_OK;
    for (size_t i = 0; i < QI_ARRAY_LEN(b) && !st; i++)
        st = qi_check_range(path, b[i].key, b[i].v, b[i].lo, b[i].hi, "the transformer's config", err);
    if (!st) /* the model width, and its MLP's 4× */
        st = qi_check_range(path, "num_attention_heads × attention_head_dim", (int64_t)c->num_heads * c->head_dim,
                            1, 65536, "the transformer's width", err);
    return st;
}

/* Checks a config however it was found; `path` names its origin in errors. */
static qi_status check_config(qi_dit_config *c, const char *path, int n_axes, qi_error *err) {
    qi_status st = check_bounds(c, path, n_axes, err);
    if (st) return st;
    if (c->head_dim % 2)
        return qi_fail(err, QI_ERR_FORMAT, "%s: attention_head_dim is %d; it must be even (RoPE rotates pairs)",
                       path, c->head_dim);
    if (n_axes != 3 || c->axes_dims_rope[0] % 2 || c->axes_dims_rope[1] % 2 ||
        c->axes_dims_rope[2] % 2 || c->axes_dims_rope[0] < 0 || c->axes_dims_rope[1] < 0 ||
        c->axes_dims_rope[2] < 0 ||
        c->axes_dims_rope[0] + c->axes_dims_rope[1] + c->axes_dims_rope[2] != c->head_dim)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: axes_dims_rope must be 3 even numbers summing to attention_head_dim "
                       "(%d)", path, c->head_dim);
    c->inner_dim = c->num_heads * c->head_dim;
    c->mlp_dim = 4 * c->inner_dim;
    return QI_OK;
}

/* A diffusers config.json (spec denoiser.md §1). */
static qi_status config_from_json(const cJSON *j, const char *path, qi_dit_config *c, qi_error *err) {
    memset(c, 0, sizeof *c);
    int n_axes = 0;
    qi_status st = QI_OK;
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "_class_name");
    if (cJSON_IsString(cls) && strcmp(cls->valuestring, "QwenImageTransformer2DModel") != 0)
        st = qi_fail(err, QI_ERR_UNSUPPORTED,
                     "%s: _class_name is '%s'; only QwenImageTransformer2DModel is supported", path,
                     cls->valuestring);
    if (st == QI_OK) st = qi_json_get_int(j, "num_layers", path, &c->num_layers, err);
    if (st == QI_OK) st = qi_json_get_int(j, "num_attention_heads", path, &c->num_heads, err);
    if (st == QI_OK) st = qi_json_get_int(j, "attention_head_dim", path, &c->head_dim, err);
    if (st == QI_OK) st = qi_json_get_int(j, "joint_attention_dim", path, &c->joint_dim, err);
    if (st == QI_OK) st = qi_json_get_int(j, "in_channels", path, &c->in_channels, err);
    if (st == QI_OK) st = qi_json_get_int(j, "out_channels", path, &c->out_channels, err);
    if (st == QI_OK) st = qi_json_get_int(j, "patch_size", path, &c->patch_size, err);
    if (st == QI_OK)
        st = qi_json_get_int_array(j, "axes_dims_rope", path, c->axes_dims_rope, 3, &n_axes, err);
    /* Variant switches. They are constructor arguments defaulting to false,
     * and the released Qwen-Image config predates three of them, so absence
     * means false; any that is true selects a model this engine does not run. */
    /* zero_cond_t (Edit-2511) only changes how condition tokens are modulated */
    if (st == QI_OK) st = qi_json_get_bool_opt(j, "zero_cond_t", path, 0, &c->zero_cond_t, err);
    static const char *const variants[] = {"guidance_embeds",
                                           "use_additional_t_cond", "use_layer3d_rope"};
    for (size_t i = 0; i < QI_ARRAY_LEN(variants) && st == QI_OK; i++) {
        int on = 0;
        st = qi_json_get_bool_opt(j, variants[i], path, 0, &on, err);
        if (st == QI_OK && on)
            st = qi_fail(err, QI_ERR_UNSUPPORTED,
                         "%s: %s is true; that Qwen-Image variant is not supported (only the "
                         "text-to-image transformer, with %s false)", path, variants[i], variants[i]);
    }
    if (st != QI_OK) return st;
    return check_config(c, path, n_axes, err);
}

qi_dit_config qi_dit_released_config(void) {
    qi_dit_config c = {.num_layers = 60, .num_heads = 24, .head_dim = 128, .joint_dim = 3584, .in_channels = 64,
                       .out_channels = 16, .patch_size = 2, .axes_dims_rope = {16, 56, 56}};
    c.inner_dim = c.num_heads * c.head_dim;
    c.mlp_dim = 4 * c.inner_dim;
    return c;
}

/* dims[0..n) of a tensor the derivation needs; the error says why it is needed. */
static qi_status shape_of(const qi_source *src, const char *name, int ndim, int64_t *dims,
                          qi_error *err) {
    qi_source_tensor t;
    if (!qi_source_find(src, name, &t) || t.ndim != ndim)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no config.json, and no %d-D tensor '%s' to derive the transformer's "
                       "configuration from", qi_source_path(src), ndim, name);
    for (int i = 0; i < ndim; i++) dims[i] = t.shape[i];
    return QI_OK;
}

/* 1 + the largest N of a `transformer_blocks.N.` name; 0 if none. */
static int count_blocks(const qi_source *src) {
    static const char stem[] = "transformer_blocks.";
    int n = 0;
    for (int i = 0; i < qi_source_tensor_count(src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        if (strncmp(t.name, stem, sizeof stem - 1) != 0) continue;
        char *end;
        long b = strtol(t.name + sizeof stem - 1, &end, 10);
        if (*end == '.' && b >= 0 && b < 100000 && b + 1 > n) n = (int)b + 1;
    }
    return n;
}

/* The configuration from tensor shapes alone (a single file, a GGUF): the
 * only hyperparameters are these (spec denoiser.md §1); the RoPE axes are
 * not in any shape, so only the released model's head_dim has known ones.
 * Variant models show up as tensors this config does not explain and are
 * refused by the "no extra tensors" check. */
static qi_status config_from_shapes(const qi_source *src, qi_dit_config *c, qi_error *err) {
    memset(c, 0, sizeof *c);
    const char *path = qi_source_path(src);
    int64_t img_in[2] = {0}, txt_in[2] = {0}, proj_out[2] = {0}, norm_q[1] = {0};
    qi_status st = shape_of(src, "img_in.weight", 2, img_in, err);
    if (st == QI_OK) st = shape_of(src, "txt_in.weight", 2, txt_in, err);
    if (st == QI_OK) st = shape_of(src, "proj_out.weight", 2, proj_out, err);
    if (st == QI_OK) st = shape_of(src, "transformer_blocks.0.attn.norm_q.weight", 1, norm_q, err);
    if (st != QI_OK) return st;
    int64_t inner = img_in[0], head_dim = norm_q[0];
    c->patch_size = 2;
    int64_t p2 = (int64_t)c->patch_size * c->patch_size;
    if (head_dim < 2 || inner % head_dim || proj_out[0] % p2 || inner > INT32_MAX ||
        txt_in[1] > INT32_MAX || img_in[1] > INT32_MAX || proj_out[0] > INT32_MAX)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor shapes do not make a Qwen-Image transformer: img_in.weight has "
                       "%lld rows, attn.norm_q.weight %lld elements, proj_out.weight %lld rows "
                       "(need a multiple of the head size and of patch² = 4)",
                       path, (long long)inner, (long long)head_dim, (long long)proj_out[0]);
    c->num_layers = count_blocks(src);
    c->head_dim = (int)head_dim;
    c->num_heads = (int)(inner / head_dim);
    c->joint_dim = (int)txt_in[1];
    c->in_channels = (int)img_in[1];
    c->out_channels = (int)(proj_out[0] / p2);
    if (c->head_dim != 128)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: no config.json, and the RoPE axes of a transformer with head size %d "
                       "cannot be derived from its shapes (only Qwen-Image's 128 = 16 + 56 + 56 is "
                       "known); give its diffusers config.json with the file",
                       path, c->head_dim);
    c->axes_dims_rope[0] = 16;
    c->axes_dims_rope[1] = 56;
    c->axes_dims_rope[2] = 56;
    return check_config(c, path, 3, err);
}

qi_status qi_dit_read_config(const qi_source *src, qi_dit_config *out, qi_error *err) {
    const char *path;
    const cJSON *j = qi_source_config(src, &path);
    return j ? config_from_json(j, path, out, err) : config_from_shapes(src, out, err);
}
/* ---- FLOP count --------------------------------------------------------------------- */

double qi_dit_forward_flops(const qi_dit_config *c, int batch, int img_tokens, int txt_tokens) {
    double B = batch, Li = img_tokens, Lt = txt_tokens, L = Li + Lt;
    double D = c->inner_dim, F = c->mlp_dim, J = c->joint_dim;
    double out = (double)c->out_channels * c->patch_size * c->patch_size;
    double block = 2 * B * (D * 12 * D)         /* img_mod + txt_mod */
                   + 2 * B * L * (4 * D * D)    /* Q, K, V, out of each stream */
                   + 2 * B * L * (2 * D * F)    /* MLP up and down */
                   + 2 * 2 * B * L * L * D;     /* QKᵀ and PV over all heads */
    double top = 2 * B * (DIT_TIME_CHANNELS * D + D * D) /* timestep MLP */
                 + 2 * B * Li * c->in_channels * D + 2 * B * Lt * J * D /* img_in, txt_in */
                 + 2 * B * D * 2 * D + 2 * B * Li * D * out;             /* norm_out, proj_out */
    return top + c->num_layers * block;
}

/* ---- rotary tables (spec §1.5) ----------------------------------------------------- */

/* The text's first position: the largest max(h//2, w//2) over every segment. */
static int text_offset(int grid_h, int grid_w, const qi_dit_cond *cond) {
    int txt0 = (grid_h / 2 > grid_w / 2 ? grid_h / 2 : grid_w / 2);
    for (int k = 0; cond && k < cond->n; k++) {
        int m = cond->hw[k][0] / 2 > cond->hw[k][1] / 2 ? cond->hw[k][0] / 2 : cond->hw[k][1] / 2;
        if (m > txt0) txt0 = m;
    }
    return txt0;
}

/* One image segment's rows at pos (3 ints each): frame `frame`, the grid
 * centred with ceil: row r at r - ceil(h/2) (spec §6 trap 5). */
static void segment_positions(int frame, int gh, int gw, int *pos) {
    int h_half = gh - gh / 2, w_half = gw - gw / 2;
    for (int r = 0; r < gh; r++)
        for (int c = 0; c < gw; c++) {
            int *p = pos + (size_t)(r * gw + c) * 3;
            p[0] = frame;
            p[1] = r - h_half;
            p[2] = c - w_half;
        }
}

void qi_dit_rope_positions_cond(int grid_h, int grid_w, const qi_dit_cond *cond, int txt_len, int *pos) {
    /* Text token j sits at txt0 + j on all three axes. */
    int txt0 = text_offset(grid_h, grid_w, cond);
    for (int j = 0; j < txt_len; j++) pos[j * 3 + 0] = pos[j * 3 + 1] = pos[j * 3 + 2] = txt0 + j;
    size_t row = (size_t)txt_len;
    segment_positions(0, grid_h, grid_w, pos + row * 3);
    row += (size_t)grid_h * grid_w;
    for (int k = 0; cond && k < cond->n; k++) {
        segment_positions(k + 1, cond->hw[k][0], cond->hw[k][1], pos + row * 3);
        row += (size_t)cond->hw[k][0] * cond->hw[k][1];
    }
}

void qi_dit_rope_positions(int grid_h, int grid_w, int txt_len, int *pos) {
    qi_dit_rope_positions_cond(grid_h, grid_w, NULL, txt_len, pos);
}

int64_t qi_dit_image_tokens(int grid_h, int grid_w, const qi_dit_cond *cond) {
    int64_t n = (int64_t)grid_h * grid_w;
    for (int k = 0; cond && k < cond->n; k++) n += (int64_t)cond->hw[k][0] * cond->hw[k][1];
    return n;
}

qi_status qi_dit_rope_tables(const qi_dit_config *c, int grid_h, int grid_w, int txt_len,
                             float *cos_tab, float *sin_tab, qi_error *err) {
    return qi_dit_rope_tables_cond(c, grid_h, grid_w, NULL, txt_len, cos_tab, sin_tab, err);
}

qi_status qi_dit_rope_tables_cond(const qi_dit_config *c, int grid_h, int grid_w, const qi_dit_cond *cond,
                                  int txt_len, float *cos_tab, float *sin_tab, qi_error *err) {
    int txt0 = text_offset(grid_h, grid_w, cond), side = grid_h > grid_w ? grid_h : grid_w;
    for (int k = 0; cond && k < cond->n; k++)
        for (int a = 0; a < 2; a++)
            if (cond->hw[k][a] > side) side = cond->hw[k][a];
    if (txt0 + txt_len > DIT_ROPE_LIMIT || side - side / 2 > DIT_ROPE_LIMIT)
        return qi_fail(err, QI_ERR_ARG,
                       "transformer: a %dx%d patch grid (and its condition pictures) with %d text tokens "
                       "needs RoPE positions beyond %d; use a smaller image or prompt", grid_h, grid_w, txt_len,
                       DIT_ROPE_LIMIT);
    int pairs = c->head_dim / 2, L = txt_len + (int)qi_dit_image_tokens(grid_h, grid_w, cond);
    /* θ per pair, float32 as diffusers: 1 / 10000^(float(2k) / dim) of its axis. */
    float theta[512];
    int axis_of[512];
    if (pairs > 512) return qi_fail(err, QI_ERR_UNSUPPORTED, "transformer: head_dim over 1024");
    for (int a = 0, m = 0; a < 3; a++)
        for (int k = 0; k < c->axes_dims_rope[a] / 2; k++, m++) {
            float e = (float)(2 * k) / (float)c->axes_dims_rope[a];
            theta[m] = 1.0f / powf(DIT_ROPE_THETA, e);
            axis_of[m] = a;
        }
    int *pos = malloc((size_t)L * 3 * sizeof *pos);
    if (!pos) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (RoPE tables)");
    qi_dit_rope_positions_cond(grid_h, grid_w, cond, txt_len, pos);
    for (int i = 0; i < L; i++)
        for (int m = 0; m < pairs; m++) {
            float angle = (float)pos[i * 3 + axis_of[m]] * theta[m];
            cos_tab[(size_t)i * pairs + m] = cosf(angle);
            sin_tab[(size_t)i * pairs + m] = sinf(angle);
        }
    free(pos);
    return QI_OK;
}

/* ---- sizes for the residency planner ---------------------------------------------- */

/* Arena tensors are rounded up to 256 bytes (cuBLASLt's best alignment). */
static size_t rounded(int64_t elems, size_t es) { return ((size_t)elems * es + 255) & ~(size_t)255; }

size_t qi_dit_step_bytes(const qi_dit_config *c, size_t act_size, int batch, int img_tokens, int txt_tokens,
                         int steps, int calls) {
    int64_t B = batch, Li = img_tokens, Lt = txt_tokens, Lj = Li + Lt, D = c->inner_dim, F = c->mlp_dim;
    int64_t S = 2 * (int64_t)c->num_layers, es = (int64_t)act_size;
    size_t step_bytes = (size_t)((S + 1) * B * 6 * D * es);
    int64_t W = (int64_t)(QI_DIT_SCHEDULE_BYTES / step_bytes);
    if (W < 1) W = 1;
    if (W > steps) W = steps;
    /* one qi_dit_call (call_init, schedule_alloc) and its RoPE tables (F32) */
    size_t call = rounded(B * DIT_TIME_CHANNELS, act_size) + rounded(B * Lj, 4) +
                  rounded((S + 1) * B * 6 * D, act_size) + rounded(S * W * B * 6 * D, act_size) +
                  rounded(W * B * 2 * D, act_size) + rounded(W * S * B, 4) + 2 * rounded(Lj * (c->head_dim / 2), 4);
    /* one run (alloc_acts, then the text RMSNorm's output) */
    size_t run = rounded((S + 1) * B * 6 * D, act_size) + 6 * rounded(B * Li * D, act_size) +
                 6 * rounded(B * Lt * D, act_size) + 4 * rounded(B * Lj * D, act_size) +
                 (B > 1 ? rounded(B * Li * D, act_size) + rounded(B * Lt * D, act_size) : 0) +
                 rounded(B * Li * F, act_size) + rounded(B * Lt * F, act_size) +
                 rounded(B * Lt * c->joint_dim, act_size);
    return (size_t)calls * call + run;
}

qi_dit_unit qi_dit_weight_unit(const char *name, int ndim, int *block) {
    static const char stem[] = "transformer_blocks.";
    *block = -1;
    if (ndim != 2 || strncmp(name, stem, sizeof stem - 1) != 0) return QI_DIT_UNIT_GLOBAL;
    char *end;
    long b = strtol(name + sizeof stem - 1, &end, 10);
    if (*end != '.' || b < 0 || b > 100000) return QI_DIT_UNIT_GLOBAL;
    *block = (int)b;
    return !strncmp(end, ".img_mod.", 9) || !strncmp(end, ".txt_mod.", 9) ? QI_DIT_UNIT_MOD : QI_DIT_UNIT_BLOCK;
}

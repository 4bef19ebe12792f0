/*
 * vae.c — the Qwen-Image VAE decoder on one image (spec vae-and-formats.md
 * part A): config reading, weight binding with the causal-conv reduction,
 * the forward pass written against the backend op table, and diffusers'
 * tiled decode.
 *
 * It owns: the decoder weights (bound by their diffusers names, shapes checked
 * at load), the last-temporal-slice copies of the 3×3×3 conv weights, and the
 * activation plan of one decode. It does not own the encoder, the latent
 * (de)normalisation (the pipeline applies qi_vae_latents_mean/std) or the
 * pixel conversion (io/image.c's qi_rgb_to_u8: qi_vae_decode_u8 applies it,
 * or has the backend apply it on the device before the download).
 *
 * Activations, all [C, H, W] of one image, live in the backend arena: two
 * "slots" sized for the largest activation of the decode, used ping-pong (each
 * block reads one and writes the other), plus block-local scratch between a
 * mark and a reset. The peak is therefore two slots + one block's scratch,
 * about three of the largest tensors (spec A.10).
 */
#include "model/vae.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/model_dir.h"
#include "io/source.h"

#define VAE_MAX_LEVELS 8
/* Working-set cap of one band of the nearest-2× upsample + 3×3 conv step and
 * of one block of attention scores. */
#define VAE_DEFAULT_BAND_BYTES ((size_t)64 << 20)

/* ---- weights ------------------------------------------------------------- */

/* QwenImageResidualBlock(in, out) (spec A.3.3). */
typedef struct vae_resblock {
    int in_ch, out_ch;
    qi_tensor norm1;                  /* gamma [in] */
    qi_tensor conv1_w, conv1_b;       /* [out, in, 3, 3] (last temporal tap), [out] */
    qi_tensor norm2;                  /* gamma [out] */
    qi_tensor conv2_w, conv2_b;       /* [out, out, 3, 3], [out] */
    int has_shortcut;                 /* in != out */
    qi_tensor shortcut_w, shortcut_b; /* [out, in, 1, 1], [out] */
} vae_resblock;

/* QwenImageAttentionBlock(C): single head over the h·w positions (A.3.4). */
typedef struct vae_attention {
    int ch;
    qi_tensor norm;           /* gamma [C] */
    qi_tensor qkv_w, qkv_b;   /* [3C, C] (rows: q, k, v), [3, C] */
    qi_tensor proj_w, proj_b; /* [C, C], [C] */
} vae_attention;

/* decoder.up_blocks.L: num_res_blocks + 1 residual blocks, then (except the
 * last level) nearest 2× + 3×3 conv halving the channels (A.3.5). */
typedef struct vae_level {
    int n_res;
    vae_resblock *res;
    int has_upsampler;
    qi_tensor up_w, up_b; /* resample.1: [out/2, out, 3, 3], [out/2] */
} vae_level;

/* encoder.down_blocks of one level: num_res_blocks residual blocks, then
 * (except the last level) the stride-2 3×3 conv after a (0, 1, 0, 1) zero pad. */
typedef struct vae_down_level {
    int n_res;
    vae_resblock *res;
    int has_downsampler;
    qi_tensor down_w, down_b; /* resample.1: [C, C, 3, 3], [C] */
} vae_down_level;

/* The encoder (qi_vae_load_encoder): Wan's encoder on one frame, then quant_conv. */
typedef struct vae_encoder {
    int loaded;
    int dims[VAE_MAX_LEVELS + 1];         /* base·[1, dim_mult...] */
    qi_tensor conv_in_w, conv_in_b;       /* [dims0, 3, 3, 3] (last temporal tap), [dims0] */
    vae_down_level levels[VAE_MAX_LEVELS];
    vae_resblock mid_res[2];
    vae_attention mid_attn;
    qi_tensor norm_out;                   /* gamma [dims_last] */
    qi_tensor conv_out_w, conv_out_b;     /* [2z, dims_last, 3, 3], [2z] */
    qi_tensor quant_w, quant_b;           /* [2z, 2z, 1, 1], [2z] */
} vae_encoder;

struct qi_vae {
    qi_backend *be;
    const qi_source *src; /* the caller's: the CPU backend's weights point into its mapping */

    /* config.json */
    int base_dim, z_dim, num_res_blocks;
    int n_levels;                    /* len(dim_mult) */
    int dim_mult[VAE_MAX_LEVELS];
    int dims[VAE_MAX_LEVELS + 1];    /* decoder ladder base·[m_last, reversed(dim_mult)] */
    int scale;                       /* pixels per latent cell: 2^(n_levels − 1) */
    float *latents_mean, *latents_std; /* [z_dim] each */

    /* decoder */
    qi_tensor post_quant_w, post_quant_b; /* [z, z, 1, 1], [z] */
    qi_tensor conv_in_w, conv_in_b;       /* [dims0, z, 3, 3], [dims0] */
    vae_resblock mid_res[2];
    vae_attention mid_attn;
    vae_level levels[VAE_MAX_LEVELS];
    qi_tensor norm_out;                   /* gamma [dims_last] */
    qi_tensor conv_out_w, conv_out_b;     /* [3, dims_last, 3, 3], [3] */

    vae_encoder enc;

    /* bookkeeping: every bound weight (for weight_free) and every buffer
     * the vae allocated for a weight (the temporal slices) */
    qi_tensor **bound;
    int n_bound, cap_bound;
    void **owned;
    int n_owned, cap_owned;

    int n_attn_scales; /* len(attn_scales): the encoder supports none (Qwen-Image has none) */

    qi_vae_tiling tiling;
    size_t band_bytes; /* see qi_vae_set_band_bytes */
};

int qi_vae_binds(const char *name) {
    return !strncmp(name, "decoder.", 8) || !strncmp(name, "post_quant_conv.", 16);
}

const float *qi_vae_latents_mean(const qi_vae *v) { return v->latents_mean; }
const float *qi_vae_latents_std(const qi_vae *v) { return v->latents_std; }
int qi_vae_z_dim(const qi_vae *v) { return v->z_dim; }
int qi_vae_scale_factor(const qi_vae *v) { return v->scale; }

/* ---- config ---------------------------------------------------------------- */

static qi_status read_config(qi_vae *v, const cJSON *cfg, const char *path, qi_error *err) {
    qi_status st;
    double mean[64], std[64];
    int n_mean = 0, n_std = 0, input_channels = 3;
    if ((st = qi_json_get_int(cfg, "base_dim", path, &v->base_dim, err)) ||
        (st = qi_json_get_int(cfg, "z_dim", path, &v->z_dim, err)) ||
        (st = qi_json_get_int_array(cfg, "dim_mult", path, v->dim_mult, VAE_MAX_LEVELS,
                                    &v->n_levels, err)) ||
        (st = qi_json_get_int(cfg, "num_res_blocks", path, &v->num_res_blocks, err)) ||
        (st = qi_json_get_double_array(cfg, "latents_mean", path, mean, 64, &n_mean, err)) ||
        (st = qi_json_get_double_array(cfg, "latents_std", path, std, 64, &n_std, err)) ||
        (st = qi_json_get_int_opt(cfg, "input_channels", path, 3, &input_channels, err)))
        goto done;

    /* attn_scales: the decoder has no attention inside its levels whatever
     * this says (diffusers ignores it there), but the key must be present. */
    const cJSON *attn = cJSON_GetObjectItemCaseSensitive(cfg, "attn_scales");
    if (!attn) {
        st = qi_fail(err, QI_ERR_FORMAT, "%s: key 'attn_scales' is missing", path);
        goto done;
    }
    if (!cJSON_IsArray(attn)) {
        st = qi_fail(err, QI_ERR_FORMAT, "%s: key 'attn_scales' must be an array", path);
        goto done;
    }
    v->n_attn_scales = cJSON_GetArraySize(attn);
    /* "temperal" (sic): one bool per downsampling level; only its length
     * matters for one frame (it selects time_conv, never applied to images). */
    const cJSON *temporal = cJSON_GetObjectItemCaseSensitive(cfg, "temperal_downsample");
    if (!temporal) {
        st = qi_fail(err, QI_ERR_FORMAT, "%s: key 'temperal_downsample' is missing", path);
        goto done;
    }
    int n_temporal = cJSON_IsArray(temporal) ? cJSON_GetArraySize(temporal) : -1;
    for (int i = 0; i < n_temporal; i++)
        if (!cJSON_IsBool(cJSON_GetArrayItem(temporal, i))) n_temporal = -1;
    if (n_temporal < 0) {
        st = qi_fail(err, QI_ERR_FORMAT, "%s: key 'temperal_downsample' must be an array of booleans",
                     path);
        goto done;
    }

    /* every size bounded before a width is computed from it (Qwen-Image's values in the comments) */
    const char *why = "the VAE's config";
    if ((st = qi_check_range(path, "base_dim", v->base_dim, 1, 4096, why, err)) ||          /* 96 */
        (st = qi_check_range(path, "z_dim", v->z_dim, 1, 64, why, err)) ||                  /* 16 */
        (st = qi_check_range(path, "num_res_blocks", v->num_res_blocks, 0, 64, why, err)) || /* 2 */
        (st = qi_check_range(path, "the number of dim_mult entries", v->n_levels, 1, VAE_MAX_LEVELS, why, err)))
        goto done;
    for (int i = 0; i < v->n_levels && !st; i++) {
        char key[32];
        snprintf(key, sizeof key, "dim_mult[%d]", i); /* 1, 2, 4, 4 */
        st = qi_check_range(path, key, v->dim_mult[i], 1, 65536 / v->base_dim, "base_dim × dim_mult at most 65536",
                            err);
    }
    if (st) goto done;
    if (n_temporal != v->n_levels - 1) {
        st = qi_fail(err, QI_ERR_FORMAT,
                     "%s: temperal_downsample has %d entries, expected len(dim_mult) - 1 = %d", path,
                     n_temporal, v->n_levels - 1);
        goto done;
    }
    if (n_mean != v->z_dim || n_std != v->z_dim) {
        st = qi_fail(err, QI_ERR_FORMAT,
                     "%s: latents_mean has %d and latents_std %d values, expected z_dim = %d each",
                     path, n_mean, n_std, v->z_dim);
        goto done;
    }
    if (input_channels != 3) {
        st = qi_fail(err, QI_ERR_UNSUPPORTED,
                     "%s: input_channels = %d; only RGB VAEs (3) are supported", path,
                     input_channels);
        goto done;
    }
    v->latents_mean = malloc(sizeof(float) * (size_t)v->z_dim);
    v->latents_std = malloc(sizeof(float) * (size_t)v->z_dim);
    if (!v->latents_mean || !v->latents_std) {
        st = qi_fail(err, QI_ERR_NOMEM, "out of memory reading %s", path);
        goto done;
    }
    for (int c = 0; c < v->z_dim; c++) {
        v->latents_mean[c] = (float)mean[c]; /* torch.tensor(list) is float32 */
        v->latents_std[c] = (float)std[c];
        if (!(v->latents_std[c] > 0)) {
            st = qi_fail(err, QI_ERR_FORMAT, "%s: latents_std[%d] = %g must be positive", path, c,
                         std[c]);
            goto done;
        }
    }
    /* decoder ladder: dims = base·[m_last] + base·reversed(dim_mult) (A.2) */
    int L = v->n_levels;
    v->dims[0] = v->base_dim * v->dim_mult[L - 1];
    for (int i = 0; i < L; i++) v->dims[i + 1] = v->base_dim * v->dim_mult[L - 1 - i];
    v->scale = 1 << (L - 1);
done:
    return st;
}

/* ---- weight binding ----------------------------------------------------------- */

static qi_status remember(void ***list, int *n, int *cap, void *item, qi_error *err) {
    if (*n == *cap) {
        int ncap = *cap ? 2 * *cap : 64;
        void **grown = realloc(*list, sizeof(void *) * (size_t)ncap);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory binding weights");
        *list = grown;
        *cap = ncap;
    }
    (*list)[(*n)++] = item;
    return QI_OK;
}

/* Hands `host` (dtype dt, shape ne) to the backend as weight *w. */
static qi_status bind_host(qi_vae *v, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                           const void *host, const char *name, qi_error *err) {
    qi_status st = v->be->ops->weight(v->be, w, dt, ndim, ne, host, NULL, err);
    if (st) return qi_fail_ctx(err, st, "vae tensor %s", name);
    return remember((void ***)&v->bound, &v->n_bound, &v->cap_bound, w, err);
}

/* A file tensor of shape file_shape, bound as-is under the shape bind_ne
 * (same element count: trailing unit dims dropped, 1×1 convs as matrices). */
static qi_status bind(qi_vae *v, const char *name, int file_ndim, const int64_t *file_shape,
                      qi_tensor *w, int ndim, const int64_t *bind_ne, qi_error *err) {
    qi_source_tensor t;
    qi_status st = qi_source_get(v->src, name, file_ndim, file_shape, &t, err);
    if (st) return st;
    if (t.scale_form != QI_SCALE_NONE) /* never read a scaled weight as unscaled */
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: vae tensor '%s' is scaled fp8; the VAE reads bf16, f16 or "
                       "f32 weights (use ComfyUI's qwen_image_vae.safetensors)", t.file, t.stored_name);
    return bind_host(v, w, t.dtype, ndim, bind_ne, t.data, name, err);
}

static qi_status bind_vector(qi_vae *v, const char *name, int64_t n, qi_tensor *w, qi_error *err) {
    int64_t ne[1] = {n};
    return bind(v, name, 1, ne, w, 1, ne, err);
}

/* RMS-norm gamma, stored [C, 1, 1, 1] (residual blocks, head) or [C, 1, 1]
 * (attention); bound as [C]. */
static qi_status bind_gamma(qi_vae *v, const char *name, int64_t c, int file_ndim, qi_tensor *w,
                            qi_error *err) {
    int64_t shape[4] = {c, 1, 1, 1}, ne[1] = {c};
    return bind(v, name, file_ndim, shape, w, 1, ne, err);
}

/* `prefix.weight` [co, ci, 3, 3, 3] causal conv → its last temporal slice
 * [co, ci, 3, 3] (spec A.3.1: one frame sees [0, 0, x] in time), copied into a
 * buffer the vae owns; `prefix.bias` [co]. */
static qi_status bind_causal_conv3(qi_vae *v, const char *prefix, int64_t co, int64_t ci,
                                   qi_tensor *w, qi_tensor *b, qi_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int64_t shape[5] = {co, ci, 3, 3, 3};
    qi_source_tensor found, *t = &found;
    qi_status st = qi_source_get(v->src, name, 5, shape, t, err);
    if (st) return st;
    if (t->scale_form != QI_SCALE_NONE) /* never read a scaled weight as unscaled */
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: vae tensor '%s' is scaled fp8; the VAE reads bf16, f16 or "
                       "f32 weights", t->file, t->stored_name);
    if (t->dtype >= QI_Q4_0) /* blocks of 32/256 elements: no per-element slicing */
        return qi_fail(err, QI_ERR_UNSUPPORTED, "vae tensor %s: block-quantised %s is not supported",
                       name, qi_dtype_name(t->dtype));
    /* keep half-width types as they are (the backend converts), widen the rest */
    qi_dtype dt = (t->dtype == QI_F32 || t->dtype == QI_BF16 || t->dtype == QI_F16) ? t->dtype : QI_F32;
    size_t in_es = qi_dtype_size(t->dtype), out_es = qi_dtype_size(dt);
    char *slice = malloc((size_t)(co * ci) * 9 * out_es);
    if (!slice) return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory for %s", name);
    if ((st = remember(&v->owned, &v->n_owned, &v->cap_owned, slice, err))) {
        free(slice);
        return st;
    }
    const char *src = t->data;
    for (int64_t oi = 0; oi < co * ci; oi++) {
        /* element (o, i, t=2, y, x) at ((oi·3 + 2)·3 + y)·3 + x */
        const char *tap = src + (size_t)(oi * 27 + 18) * in_es;
        if (dt == t->dtype)
            memcpy(slice + (size_t)oi * 9 * out_es, tap, 9 * out_es);
        else if (qi_to_f32((float *)(void *)(slice + (size_t)oi * 9 * out_es), tap, t->dtype, 9))
            return qi_fail(err, QI_ERR_FORMAT, "vae tensor %s: dtype %s is not a float type", name,
                           qi_dtype_name(t->dtype));
    }
    int64_t ne[4] = {co, ci, 3, 3};
    if ((st = bind_host(v, w, dt, 4, ne, slice, name, err))) return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind_vector(v, name, co, b, err);
}

/* A kernel-1 causal conv `prefix` ([co, ci, 1, 1, 1]) as a 1×1 conv2d weight. */
static qi_status bind_causal_conv1(qi_vae *v, const char *prefix, int64_t co, int64_t ci,
                                   qi_tensor *w, qi_tensor *b, qi_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int64_t shape[5] = {co, ci, 1, 1, 1}, ne[4] = {co, ci, 1, 1};
    qi_status st = bind(v, name, 5, shape, w, 4, ne, err);
    if (st) return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind_vector(v, name, co, b, err);
}

static qi_status bind_resblock(qi_vae *v, const char *prefix, int in, int out, vae_resblock *rb,
                               qi_error *err) {
    char name[256];
    qi_status st;
    rb->in_ch = in;
    rb->out_ch = out;
    snprintf(name, sizeof name, "%s.norm1.gamma", prefix);
    if ((st = bind_gamma(v, name, in, 4, &rb->norm1, err))) return st;
    snprintf(name, sizeof name, "%s.conv1", prefix);
    if ((st = bind_causal_conv3(v, name, out, in, &rb->conv1_w, &rb->conv1_b, err))) return st;
    snprintf(name, sizeof name, "%s.norm2.gamma", prefix);
    if ((st = bind_gamma(v, name, out, 4, &rb->norm2, err))) return st;
    snprintf(name, sizeof name, "%s.conv2", prefix);
    if ((st = bind_causal_conv3(v, name, out, out, &rb->conv2_w, &rb->conv2_b, err))) return st;
    rb->has_shortcut = in != out;
    if (rb->has_shortcut) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        if ((st = bind_causal_conv1(v, name, out, in, &rb->shortcut_w, &rb->shortcut_b, err)))
            return st;
    }
    return QI_OK;
}

static qi_status bind_attention(qi_vae *v, const char *prefix, int c, vae_attention *a,
                                qi_error *err) {
    char name[256];
    qi_status st;
    a->ch = c;
    snprintf(name, sizeof name, "%s.norm.gamma", prefix);
    if ((st = bind_gamma(v, name, c, 3, &a->norm, err))) return st;
    int64_t qkv_shape[4] = {3 * (int64_t)c, c, 1, 1}, qkv_ne[2] = {3 * (int64_t)c, c};
    snprintf(name, sizeof name, "%s.to_qkv.weight", prefix);
    if ((st = bind(v, name, 4, qkv_shape, &a->qkv_w, 2, qkv_ne, err))) return st;
    int64_t qkvb_shape[1] = {3 * (int64_t)c}, qkvb_ne[2] = {3, c};
    snprintf(name, sizeof name, "%s.to_qkv.bias", prefix);
    if ((st = bind(v, name, 1, qkvb_shape, &a->qkv_b, 2, qkvb_ne, err))) return st;
    int64_t proj_shape[4] = {c, c, 1, 1}, proj_ne[2] = {c, c};
    snprintf(name, sizeof name, "%s.proj.weight", prefix);
    if ((st = bind(v, name, 4, proj_shape, &a->proj_w, 2, proj_ne, err))) return st;
    snprintf(name, sizeof name, "%s.proj.bias", prefix);
    return bind_vector(v, name, c, &a->proj_b, err);
}

/* The decoder's module tree (spec A.4), diffusers names. time_conv tensors of
 * upsample3d levels are never read (A.3.5, trap 4). */
static qi_status bind_decoder(qi_vae *v, qi_error *err) {
    qi_status st;
    char prefix[128];
    int z = v->z_dim, L = v->n_levels;
    if ((st = bind_causal_conv1(v, "post_quant_conv", z, z, &v->post_quant_w, &v->post_quant_b, err)))
        return st;
    if ((st = bind_causal_conv3(v, "decoder.conv_in", v->dims[0], z, &v->conv_in_w, &v->conv_in_b,
                                err)))
        return st;
    for (int r = 0; r < 2; r++) {
        snprintf(prefix, sizeof prefix, "decoder.mid_block.resnets.%d", r);
        if ((st = bind_resblock(v, prefix, v->dims[0], v->dims[0], &v->mid_res[r], err))) return st;
    }
    if ((st = bind_attention(v, "decoder.mid_block.attentions.0", v->dims[0], &v->mid_attn, err)))
        return st;
    for (int i = 0; i < L; i++) {
        vae_level *lvl = &v->levels[i];
        /* levels after the first start from the previous upsampler's halved width */
        int in = i == 0 ? v->dims[0] : v->dims[i] / 2, out = v->dims[i + 1];
        lvl->n_res = v->num_res_blocks + 1;
        lvl->res = calloc((size_t)lvl->n_res, sizeof *lvl->res);
        if (!lvl->res) return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory");
        for (int r = 0; r < lvl->n_res; r++) {
            snprintf(prefix, sizeof prefix, "decoder.up_blocks.%d.resnets.%d", i, r);
            if ((st = bind_resblock(v, prefix, r == 0 ? in : out, out, &lvl->res[r], err))) return st;
        }
        lvl->has_upsampler = i != L - 1;
        if (lvl->has_upsampler) {
            char name[160];
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.resample.1.weight", i);
            int64_t shape[4] = {out / 2, out, 3, 3};
            if ((st = bind(v, name, 4, shape, &lvl->up_w, 4, shape, err))) return st;
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.resample.1.bias", i);
            if ((st = bind_vector(v, name, out / 2, &lvl->up_b, err))) return st;
        }
    }
    int last = v->dims[L];
    if ((st = bind_gamma(v, "decoder.norm_out.gamma", last, 4, &v->norm_out, err))) return st;
    return bind_causal_conv3(v, "decoder.conv_out", 3, last, &v->conv_out_w, &v->conv_out_b, err);
}

qi_vae_tiling qi_vae_tiling_default(void) {
    return (qi_vae_tiling){.mode = QI_VAE_TILE_AUTO,
                           .tile_latent = 32,
                           .stride_latent = 24,
                           .max_untiled_bytes = (size_t)4 << 30};
}

/* The config of a VAE file that has none (ComfyUI's qwen_image_vae.safetensors):
 * Qwen-Image's VAE architecture (spec A.2: dim_mult [1, 2, 4, 4], 2 residual
 * blocks, temporal downsampling [false, true, true], Wan 2.1's latent
 * statistics, which Qwen-Image's config repeats) with the widths read from
 * the shapes: z_dim from post_quant_conv, base_dim from the decoder's output
 * norm (base · dim_mult[0]). Every weight's shape is then checked against it
 * by bind_decoder, so another network fails there naming the tensor. */
static qi_status config_of_shapes(const qi_source *src, cJSON **out, qi_error *err) {
    static const double mean[16] = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                    0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
    static const double std[16] = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
    static const int dim_mult[4] = {1, 2, 4, 4};
    *out = NULL;
    qi_source_tensor pq, norm;
    if (!qi_source_find(src, "post_quant_conv.weight", &pq) || !qi_source_find(src, "decoder.norm_out.gamma", &norm) ||
        pq.ndim < 1 || norm.ndim < 1)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no config.json and no 'post_quant_conv.weight' / 'decoder.norm_out.gamma' (Wan names "
                       "'conv2.weight' / 'decoder.head.0.gamma') to derive one from: is this a Qwen-Image VAE?",
                       qi_source_path(src));
    if (pq.shape[0] != 16)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: %lld latent channels; Qwen-Image's VAE has 16 (the Wan 2.2 VAE, 48, is another network)",
                       qi_source_path(src), (long long)pq.shape[0]);
    cJSON *j = cJSON_CreateObject();
    cJSON *temporal = cJSON_CreateArray();
    int ok = j && temporal;
    if (ok) {
        cJSON_AddNumberToObject(j, "base_dim", (double)norm.shape[0]);
        cJSON_AddNumberToObject(j, "z_dim", (double)pq.shape[0]);
        cJSON_AddItemToObject(j, "dim_mult", cJSON_CreateIntArray(dim_mult, 4));
        cJSON_AddNumberToObject(j, "num_res_blocks", 2);
        cJSON_AddItemToObject(j, "attn_scales", cJSON_CreateArray());
        cJSON_AddItemToArray(temporal, cJSON_CreateFalse());
        cJSON_AddItemToArray(temporal, cJSON_CreateTrue());
        cJSON_AddItemToArray(temporal, cJSON_CreateTrue());
        cJSON_AddItemToObject(j, "temperal_downsample", temporal);
        cJSON_AddItemToObject(j, "latents_mean", cJSON_CreateDoubleArray(mean, 16));
        cJSON_AddItemToObject(j, "latents_std", cJSON_CreateDoubleArray(std, 16));
    } else {
        cJSON_Delete(temporal);
    }
    if (!ok) {
        cJSON_Delete(j);
        return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory");
    }
    *out = j;
    return QI_OK;
}

qi_status qi_vae_load(const qi_source *src, qi_backend *be, qi_vae **out, qi_error *err) {
    *out = NULL;
    if (!src || !be) return qi_fail(err, QI_ERR_ARG, "qi_vae_load: NULL argument");
    qi_vae *v = calloc(1, sizeof *v);
    if (!v) return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory");
    v->be = be;
    v->tiling = qi_vae_tiling_default();
    v->band_bytes = VAE_DEFAULT_BAND_BYTES;
    v->src = src;
    qi_status st;
    const char *path;
    const cJSON *cfg = qi_source_config(src, &path);
    cJSON *derived = NULL;
    if (!cfg) {
        /* a single file (ComfyUI's, Wan names mapped by the source): no config */
        if ((st = config_of_shapes(src, &derived, err))) goto fail;
        cfg = derived;
        path = qi_source_path(src);
    }
    st = read_config(v, cfg, path, err);
    cJSON_Delete(derived);
    if (st) goto fail;
    if ((st = bind_decoder(v, err))) goto fail; /* errors name the file and the tensor */
    *out = v;
    return QI_OK;
fail:
    qi_vae_free(v);
    return st;
}

void qi_vae_free(qi_vae *v) {
    if (!v) return;
    for (int i = 0; i < v->n_bound; i++) v->be->ops->weight_free(v->be, v->bound[i]);
    for (int i = 0; i < v->n_owned; i++) free(v->owned[i]);
    for (int i = 0; i < VAE_MAX_LEVELS; i++) free(v->levels[i].res);
    for (int i = 0; i < VAE_MAX_LEVELS; i++) free(v->enc.levels[i].res);
    free(v->bound);
    free(v->owned);
    free(v->latents_mean);
    free(v->latents_std);
    free(v);
}

/* ---- forward --------------------------------------------------------------------- */

/* A [c, h, w] view at the start of a slot (slots are 1-D, sized for the
 * largest activation). */
static qi_tensor chw(const qi_tensor *slot, int64_t c, int64_t h, int64_t w) {
    qi_tensor t = *slot;
    t.ndim = 3;
    t.ne[0] = c;
    t.ne[1] = h;
    t.ne[2] = w;
    for (int i = 3; i < QI_MAX_DIMS; i++) t.ne[i] = 0;
    return t;
}

/* Flips *cur to the other slot and returns it as [c, h, w]. */
static qi_tensor other_slot(const qi_tensor slot[2], int *cur, int64_t c, int64_t h, int64_t w) {
    *cur ^= 1;
    return chw(&slot[*cur], c, h, w);
}

static qi_tensor as2d(const qi_tensor *t, int64_t d0, int64_t d1) {
    qi_tensor v = chw(t, d0, d1, 1);
    v.ndim = 2;
    v.ne[2] = 0;
    return v;
}

/* y[out, H, W] = conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x) (A.3.3).
 * x and y are different slots; scratch: one [max(in, out), H, W]. */
static qi_status resblock_forward(qi_backend *be, const vae_resblock *rb, const qi_tensor *x,
                                  qi_tensor *y, qi_error *err) {
    const qi_backend_ops *op = be->ops;
    int64_t H = x->ne[1], W = x->ne[2];
    size_t mark = op->mark(be);
    qi_tensor t;
    qi_status st;
    if (op->channel_rms_norm_act && op->conv2d_fused) {
        /* fused ops: norm + SiLU in one pass, the residual added by conv2 */
        int64_t c_max = rb->in_ch > rb->out_ch ? rb->in_ch : rb->out_ch;
        if ((st = qi_be_act3(be, &t, c_max, H, W, err))) return st;
        qi_tensor t_in = chw(&t, rb->in_ch, H, W), t_out = chw(&t, rb->out_ch, H, W);
        op->channel_rms_norm_act(be, x, &rb->norm1, NULL, QI_ACT_SILU, &t_in);
        op->conv2d(be, &t_in, &rb->conv1_w, &rb->conv1_b, 1, y);
        op->channel_rms_norm_act(be, y, &rb->norm2, NULL, QI_ACT_SILU, &t_out);
        if (rb->has_shortcut) {
            op->conv2d(be, x, &rb->shortcut_w, &rb->shortcut_b, 0, y); /* y = shortcut(x) */
            op->conv2d_fused(be, &t_out, 0, &rb->conv2_w, &rb->conv2_b, 1, y, y);
        } else {
            op->conv2d_fused(be, &t_out, 0, &rb->conv2_w, &rb->conv2_b, 1, x, y);
        }
        op->reset(be, mark);
        return QI_OK;
    }
    if ((st = qi_be_act3(be, &t, rb->in_ch, H, W, err))) return st;
    op->channel_rms_norm(be, x, &rb->norm1, NULL, &t); /* t = silu(norm1(x)) */
    op->activate(be, &t, QI_ACT_SILU, &t);
    op->conv2d(be, &t, &rb->conv1_w, &rb->conv1_b, 1, y); /* y = conv1(t) [out, H, W] */
    op->reset(be, mark);

    op->channel_rms_norm(be, y, &rb->norm2, NULL, y); /* y = silu(norm2(y)), in place */
    op->activate(be, y, QI_ACT_SILU, y);
    if ((st = qi_be_act3(be, &t, rb->out_ch, H, W, err))) return st;
    op->conv2d(be, y, &rb->conv2_w, &rb->conv2_b, 1, &t); /* t = conv2(y); y is free again */
    if (rb->has_shortcut) {
        op->conv2d(be, x, &rb->shortcut_w, &rb->shortcut_b, 0, y); /* y = shortcut(x) + t */
        op->add_gated(be, y, NULL, 0, &t);
    } else {
        op->axpby(be, 1.0f, x, 1.0f, &t, y); /* y = x + t */
    }
    op->reset(be, mark);
    return QI_OK;
}

/* Query rows per attention call so that a backend that materialises the
 * [rows, N] score matrix stays within `budget` bytes (at 1024² a whole
 * 16384² f32 matrix would be 1 GB, spec A.10). */
static int64_t attention_query_rows(int64_t N, size_t budget) {
    int64_t rows = (int64_t)(budget / ((size_t)N * sizeof(float)));
    return rows < 1 ? 1 : rows > N ? N : rows;
}

/* y = x + proj(attention(qkv(norm(x)))) over the N = H·W positions (A.3.4).
 * y doubles as storage for the normalised input and the attention output;
 * scratch: four [N, C]. */
static qi_status attention_forward(qi_backend *be, const vae_attention *a, const qi_tensor *x,
                                   qi_tensor *y, size_t budget, qi_error *err) {
    const qi_backend_ops *op = be->ops;
    int64_t C = a->ch, N = x->ne[1] * x->ne[2];
    size_t mark = op->mark(be);
    qi_tensor u_t, q, k, v;
    qi_status st;
    if ((st = qi_be_act2(be, &u_t, N, C, err)) || (st = qi_be_act2(be, &q, N, C, err)) ||
        (st = qi_be_act2(be, &k, N, C, err)) || (st = qi_be_act2(be, &v, N, C, err)))
        return st;
    op->channel_rms_norm(be, x, &a->norm, NULL, y); /* u [C, N] in y */
    qi_tensor u = as2d(y, C, N);
    op->transpose2d(be, &u, &u_t); /* u_t [N, C]: positions as rows */
    /* the 1×1 to_qkv conv as three linears over its row thirds: q, k, v [N, C] */
    qi_tensor wq = qi_slice_rows(&a->qkv_w, 0, C), wk = qi_slice_rows(&a->qkv_w, C, C),
              wv = qi_slice_rows(&a->qkv_w, 2 * C, C);
    qi_tensor bq = qi_slice_rows(&a->qkv_b, 0, 1), bk = qi_slice_rows(&a->qkv_b, 1, 1),
              bv = qi_slice_rows(&a->qkv_b, 2, 1);
    op->linear(be, &u_t, &wq, &bq, QI_ACT_NONE, &q);
    op->linear(be, &u_t, &wk, &bk, QI_ACT_NONE, &k);
    op->linear(be, &u_t, &wv, &bv, QI_ACT_NONE, &v);
    /* one head of width C, [1, N, 1, C]: o = softmax(q kᵀ / √C) v, a block of
     * query rows at a time (every query sees all N keys) */
    qi_tensor k4 = qi_view4(&k, 1, N, 1, C), v4 = qi_view4(&v, 1, N, 1, C);
    qi_tensor o = as2d(y, N, C);
    float scale = (float)(1.0 / sqrt((double)C));
    int64_t block = attention_query_rows(N, budget);
    for (int64_t r0 = 0; r0 < N; r0 += block) {
        int64_t nr = N - r0 < block ? N - r0 : block;
        qi_tensor qb = qi_slice_rows(&q, r0, nr), ob = qi_slice_rows(&o, r0, nr);
        qi_tensor q4 = qi_view4(&qb, 1, nr, 1, C), o4 = qi_view4(&ob, 1, nr, 1, C);
        op->attention(be, &q4, &k4, &v4, NULL, 0, scale, &o4);
    }
    qi_tensor p = u_t; /* u_t is dead: proj output [N, C] */
    op->linear(be, &o, &a->proj_w, &a->proj_b, QI_ACT_NONE, &p);
    qi_tensor y2 = as2d(y, C, N);
    op->transpose2d(be, &p, &y2); /* back to [C, N] */
    op->add_gated(be, y, NULL, 0, x);
    op->reset(be, mark);
    return QI_OK;
}

/* Output rows per band of the upsample step so that one band's upsampled
 * input stays within `budget` bytes; 2H means "all at once". Even, >= 2. */
static int64_t upsample_band_rows(int64_t C, int64_t H, int64_t W, size_t es, size_t budget) {
    if ((size_t)(C * 4 * H * W) * es <= budget) return 2 * H;
    int64_t rows = (int64_t)(budget / ((size_t)(C * 2 * W) * es)) - 4; /* minus the halo */
    rows &= ~(int64_t)1;
    if (rows < 2) rows = 2;
    return rows < 2 * H ? rows : 2 * H;
}

/* y[Co, 2H, 2W] = conv3x3(nearest2x(x[C, H, W])) (A.3.5). The upsampled input
 * would be the largest tensor of the decode (4× x), so past `budget` it is
 * built one band of output rows at a time: the band's input rows plus one
 * halo row each side are copied out, upsampled and convolved, and the rows
 * whose 3×3 window lay inside the band are copied into y. */
static qi_status upsample_forward(qi_backend *be, const vae_level *lvl, const qi_tensor *x,
                                  qi_tensor *y, size_t budget, qi_error *err) {
    const qi_backend_ops *op = be->ops;
    int64_t C = x->ne[0], H = x->ne[1], W = x->ne[2], Co = y->ne[0];
    size_t mark = op->mark(be);
    qi_tensor up, xb, yb;
    qi_status st;
    if (op->conv2d_fused) { /* the backend reads the upsampled input without storing it */
        op->conv2d_fused(be, x, 1, &lvl->up_w, &lvl->up_b, 1, NULL, y);
        return QI_OK;
    }
    int64_t band = upsample_band_rows(C, H, W, qi_dtype_size(x->dtype), budget);
    if (band >= 2 * H) {
        if ((st = qi_be_act3(be, &up, C, 2 * H, 2 * W, err))) return st;
        op->upsample2x(be, x, &up);
        op->conv2d(be, &up, &lvl->up_w, &lvl->up_b, 1, y);
        op->reset(be, mark);
        return QI_OK;
    }
    qi_tensor x_rows = as2d(x, C * H, W), y_rows = as2d(y, Co * 2 * H, 2 * W);
    for (int64_t o0 = 0; o0 < 2 * H; o0 += band) {
        int64_t o1 = o0 + band < 2 * H ? o0 + band : 2 * H;
        /* output row g reads upsampled rows g−1..g+1 = input rows ⌊(g−1)/2⌋..⌊(g+1)/2⌋ */
        int64_t i0 = o0 / 2 - 1 > 0 ? o0 / 2 - 1 : 0, i1 = o1 / 2 + 1 < H ? o1 / 2 + 1 : H;
        int64_t n_in = i1 - i0;
        if ((st = qi_be_act3(be, &xb, C, n_in, W, err)) ||
            (st = qi_be_act3(be, &up, C, 2 * n_in, 2 * W, err)) ||
            (st = qi_be_act3(be, &yb, Co, 2 * n_in, 2 * W, err)))
            return st;
        qi_tensor xb_rows = as2d(&xb, C * n_in, W);
        for (int64_t c = 0; c < C; c++) op->copy_rows(be, &x_rows, c * H + i0, &xb_rows, c * n_in, n_in);
        op->upsample2x(be, &xb, &up);
        op->conv2d(be, &up, &lvl->up_w, &lvl->up_b, 1, &yb); /* yb row u = global row 2·i0 + u */
        qi_tensor yb_rows = as2d(&yb, Co * 2 * n_in, 2 * W);
        for (int64_t c = 0; c < Co; c++)
            op->copy_rows(be, &yb_rows, c * 2 * n_in + (o0 - 2 * i0), &y_rows, c * 2 * H + o0, o1 - o0);
        op->reset(be, mark);
    }
    return QI_OK;
}

/* The activation plan of one decode at latent h × w, in elements: the slot
 * size (largest activation) and the largest block scratch. It walks the
 * same structure as decode_latent. */
static void plan_decode(const qi_vae *v, int64_t h, int64_t w, size_t es, size_t band_bytes,
                        int64_t *slot, int64_t *scratch) {
    int64_t s = (int64_t)(v->z_dim > v->dims[0] ? v->z_dim : v->dims[0]) * h * w;
    int64_t sc = (int64_t)v->z_dim * h * w; /* the uploaded latent */
    int64_t attn = 4 * (int64_t)v->dims[0] * h * w;
    if (attn > sc) sc = attn;
    int64_t H = h, W = w;
    for (int i = 0; i < v->n_levels; i++) {
        const vae_level *lvl = &v->levels[i];
        for (int r = 0; r < lvl->n_res; r++) {
            int64_t c = lvl->res[r].in_ch > lvl->res[r].out_ch ? lvl->res[r].in_ch : lvl->res[r].out_ch;
            if (c * H * W > s) s = c * H * W;
            if (c * H * W > sc) sc = c * H * W;
        }
        if (lvl->has_upsampler) {
            int64_t C = lvl->res[lvl->n_res - 1].out_ch, Co = lvl->up_w.ne[0];
            int64_t band = upsample_band_rows(C, H, W, es, band_bytes);
            int64_t up = band >= 2 * H ? C * 4 * H * W
                                       : (C * W + (C + Co) * 4 * W) * (band / 2 + 2);
            if (up > sc) sc = up;
            H *= 2;
            W *= 2;
            if (Co * H * W > s) s = Co * H * W;
        }
    }
    /* conv_out's output, and the bytes download_rgb8 makes of it */
    int64_t head = 3 * H * W + (3 * H * W + (int64_t)es - 1) / (int64_t)es;
    if (head > sc) sc = head;
    *slot = s;
    *scratch = sc;
}

size_t qi_vae_untiled_bytes(const qi_vae *v, int lat_h, int lat_w) {
    int64_t slot, scratch;
    size_t es = qi_dtype_size(v->be->act_dtype);
    plan_decode(v, lat_h, lat_w, es, v->band_bytes, &slot, &scratch);
    return (size_t)(2 * slot + scratch) * es;
}

/* post_quant_conv → decoder → out[3, s·h, s·w] host float32 (not clamped),
 * or, with out8, the backend's download_rgb8 of it: out8 [s·h, s·w, 3] bytes
 * and *nonfinite. z: [z_dim, h, w] host float32. */
static qi_status decode_latent(qi_vae *v, const float *z, int64_t h, int64_t w, float *out, uint8_t *out8,
                               int64_t *nonfinite, qi_error *err) {
    qi_backend *be = v->be;
    const qi_backend_ops *op = be->ops;
    int64_t slot_n, scratch_n;
    plan_decode(v, h, w, qi_dtype_size(be->act_dtype), v->band_bytes, &slot_n, &scratch_n);
    size_t mark = op->mark(be);
    qi_tensor slot[2], zt, out_t;
    qi_status st;
    int64_t one[1] = {slot_n};
    if ((st = qi_be_act(be, &slot[0], 1, one, err)) || (st = qi_be_act(be, &slot[1], 1, one, err)))
        goto done;
    size_t body = op->mark(be); /* block scratch lives above the slots */
    if ((st = qi_be_act3(be, &zt, v->z_dim, h, w, err)) || (st = op->upload(be, &zt, z, err)))
        goto done;

    /* Every step reads x from one slot and writes y into the other. */
    int cur = 0;
    int64_t H = h, W = w;
    qi_tensor x = chw(&slot[cur], v->z_dim, H, W), y;
    op->conv2d(be, &zt, &v->post_quant_w, &v->post_quant_b, 0, &x); /* post_quant_conv 1×1 */
    op->reset(be, body);

    int64_t C = v->dims[0];
    y = other_slot(slot, &cur, C, H, W);
    op->conv2d(be, &x, &v->conv_in_w, &v->conv_in_b, 1, &y); /* conv_in, last temporal tap */
    x = y;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = resblock_forward(be, &v->mid_res[0], &x, &y, err))) goto done;
    x = y;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = attention_forward(be, &v->mid_attn, &x, &y, v->band_bytes, err))) goto done;
    x = y;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = resblock_forward(be, &v->mid_res[1], &x, &y, err))) goto done;
    x = y;
    for (int i = 0; i < v->n_levels; i++) {
        const vae_level *lvl = &v->levels[i];
        for (int r = 0; r < lvl->n_res; r++) {
            y = other_slot(slot, &cur, lvl->res[r].out_ch, H, W);
            if ((st = resblock_forward(be, &lvl->res[r], &x, &y, err))) goto done;
            x = y;
        }
        if (lvl->has_upsampler) {
            H *= 2;
            W *= 2;
            y = other_slot(slot, &cur, lvl->up_w.ne[0], H, W);
            if ((st = upsample_forward(be, lvl, &x, &y, v->band_bytes, err))) goto done;
            x = y;
        }
    }
    /* head: silu(norm_out(x)) in place, conv_out to RGB */
    if (op->channel_rms_norm_act) {
        op->channel_rms_norm_act(be, &x, &v->norm_out, NULL, QI_ACT_SILU, &x);
    } else {
        op->channel_rms_norm(be, &x, &v->norm_out, NULL, &x);
        op->activate(be, &x, QI_ACT_SILU, &x);
    }
    if ((st = qi_be_act3(be, &out_t, 3, H, W, err))) goto done;
    op->conv2d(be, &x, &v->conv_out_w, &v->conv_out_b, 1, &out_t);
    st = out8 ? op->download_rgb8(be, &out_t, out8, nonfinite, err) : op->download(be, &out_t, out, err);
done:
    op->reset(be, mark);
    return st;
}

/* ---- tiling ------------------------------------------------------------------------ */

qi_status qi_vae_set_tiling(qi_vae *v, const qi_vae_tiling *t, qi_error *err) {
    if (t->mode != QI_VAE_TILE_AUTO && t->mode != QI_VAE_TILE_OFF && t->mode != QI_VAE_TILE_ON)
        return qi_fail(err, QI_ERR_ARG, "vae tiling: unknown mode %d", (int)t->mode);
    if (t->tile_latent < 1 || t->tile_latent > 4096)
        return qi_fail(err, QI_ERR_ARG, "vae tiling: tile_latent = %d, expected 1..4096",
                       t->tile_latent);
    if (t->stride_latent < 1 || t->stride_latent > t->tile_latent)
        return qi_fail(err, QI_ERR_ARG,
                       "vae tiling: stride_latent = %d, expected 1..tile_latent (%d)",
                       t->stride_latent, t->tile_latent);
    v->tiling = *t;
    return QI_OK;
}

int qi_vae_will_tile(const qi_vae *v, int lat_h, int lat_w) {
    const qi_vae_tiling *t = &v->tiling;
    /* diffusers tiles only latents larger than one tile in some axis */
    int larger = lat_h > t->tile_latent || lat_w > t->tile_latent;
    switch (t->mode) {
    case QI_VAE_TILE_ON: return larger;
    case QI_VAE_TILE_AUTO: return larger && qi_vae_untiled_bytes(v, lat_h, lat_w) > t->max_untiled_bytes;
    default: return 0;
    }
}

/* diffusers blend_v: the first e rows of `b` fade in from the last e rows of
 * `a` (the tile above, same width): b[y] = a[ah − e + y]·(1 − y/e) + b[y]·(y/e).
 * nc channels: 3 (decoded pixels) or 2·z_dim (encoded moments). */
static void blend_rows(const float *a, int ah, float *b, int bh, int w, int nc, int extent) {
    int e = extent < ah ? extent : ah;
    if (bh < e) e = bh;
    for (int c = 0; c < nc; c++)
        for (int y = 0; y < e; y++) {
            /* torch evaluates the weights in double and multiplies in float32 */
            float wa = (float)(1.0 - (double)y / e), wb = (float)((double)y / e);
            const float *ar = a + ((size_t)c * ah + (ah - e + y)) * w;
            float *br = b + ((size_t)c * bh + y) * w;
            for (int x = 0; x < w; x++) br[x] = ar[x] * wa + br[x] * wb;
        }
}

/* diffusers blend_h: the same along x with the tile to the left (same height). */
static void blend_cols(const float *a, int aw, float *b, int bw, int h, int nc, int extent) {
    int e = extent < aw ? extent : aw;
    if (bw < e) e = bw;
    for (int x = 0; x < e; x++) {
        float wa = (float)(1.0 - (double)x / e), wb = (float)((double)x / e);
        for (int c = 0; c < nc; c++)
            for (int y = 0; y < h; y++) {
                size_t row = (size_t)c * h + y;
                b[row * bw + x] = a[row * aw + (aw - e + x)] * wa + b[row * bw + x] * wb;
            }
    }
}

/* Cells of a tile starting at `start` along an axis of n cells (clipped at the end). */
static int tile_extent(int n, int start, int T) { return n - start < T ? n - start : T; }

/* One tiled pass of diffusers' tiled_decode / tiled_encode (spec A.9) over a
 * latent grid of h × w cells: tiles of T cells every S cells, run one at a
 * time so that a pass holds one tile's activations, not the whole image's.
 *
 * Why the tiles overlap: a tile is run alone, so near its edges the convs see
 * zero padding instead of the neighbouring cells, and two tiles cut side by
 * side would disagree along the cut (a visible seam). Consecutive tiles
 * therefore share T − S cells, and the seam is hidden by a linear cross-fade
 * over that band: in row-major order each tile, in place, fades in from the
 * tile above (blend_rows) and then from the tile to the left (blend_cols),
 * as those stand after their own blends; then its top-left S × S cells (less
 * at the bottom / right edge) are kept. The rest of a tile is dropped: the
 * next tiles' blended copies of those cells are kept instead.
 *
 * The outputs are in their own units: `unit` values per latent cell along an
 * axis (f = 8 pixels for the decoder, 1 for the encoder's moments), so the
 * blend band and the kept square scale by `unit`. The caller fills row[c]
 * with tile (r, c)'s output, [nc, unit·th, unit·tw], then calls
 * vae_tile_place; vae_tiles_next_row after each row of tiles. */
typedef struct vae_tiles {
    int h, w;           /* the latent grid, cells */
    int T, S;           /* tile side and stride, latent cells (1 <= S <= T) */
    int n_rows, n_cols; /* tiles down and across: ceil(h / S), ceil(w / S) */
    int unit;           /* output values per latent cell along an axis: f (pixels) or 1 (moments) */
    int nc;             /* output channels: 3 (pixels) or 2·z_dim (moments) */
    int blend;          /* the cross-faded band, output values: unit·(T − S) */
    int keep;           /* side of the kept top-left square, output values: unit·S */
    float **above;      /* [n_cols] the previous row's tile outputs, after their blends */
    float **row;        /* [n_cols] this row's */
} vae_tiles;

/* The grid of tiles for an h × w latent, with empty tile rows; -1 when out of
 * memory (vae_tiles_free still frees what was made). */
static int vae_tiles_init(vae_tiles *t, const qi_vae *v, int h, int w, int unit, int nc) {
    int T = v->tiling.tile_latent, S = v->tiling.stride_latent;
    *t = (vae_tiles){.h = h, .w = w, .T = T, .S = S, .n_rows = (h + S - 1) / S, .n_cols = (w + S - 1) / S,
                     .unit = unit, .nc = nc, .blend = unit * (T - S), .keep = unit * S};
    t->above = calloc((size_t)t->n_cols, sizeof(float *));
    t->row = calloc((size_t)t->n_cols, sizeof(float *));
    return t->above && t->row ? 0 : -1;
}

/* Tile (r, c): its latent origin (i, j) and size th × tw (clipped at the end). */
static void vae_tile_at(const vae_tiles *t, int r, int c, int *i, int *j, int *th, int *tw) {
    *i = r * t->S;
    *j = c * t->S;
    *th = tile_extent(t->h, *i, t->T);
    *tw = tile_extent(t->w, *j, t->T);
}

/* Blends tile (r, c), row[c], with the tile above and the tile to the left,
 * then copies its kept square into out [nc, unit·h, unit·w]. */
static void vae_tile_place(vae_tiles *t, int r, int c, float *out) {
    int i, j, th, tw, u = t->unit, S = t->S, T = t->T;
    vae_tile_at(t, r, c, &i, &j, &th, &tw);
    int oh = u * th, ow = u * tw, H = u * t->h, W = u * t->w; /* the tile and the whole output, in output values */
    if (r > 0) blend_rows(t->above[c], u * tile_extent(t->h, (r - 1) * S, T), t->row[c], oh, ow, t->nc, t->blend);
    if (c > 0) blend_cols(t->row[c - 1], u * tile_extent(t->w, (c - 1) * S, T), t->row[c], ow, oh, t->nc, t->blend);
    int kh = oh < t->keep ? oh : t->keep, kw = ow < t->keep ? ow : t->keep; /* less at the bottom / right edge */
    for (int ch = 0; ch < t->nc; ch++)
        for (int y = 0; y < kh; y++)
            memcpy(out + ((size_t)ch * H + u * i + y) * W + u * j, t->row[c] + ((size_t)ch * oh + y) * (size_t)ow,
                   sizeof(float) * (size_t)kw);
}

/* The row of tiles just placed becomes the row above the next one. */
static void vae_tiles_next_row(vae_tiles *t) {
    for (int c = 0; c < t->n_cols; c++) {
        free(t->above[c]);
        t->above[c] = t->row[c];
        t->row[c] = NULL;
    }
}

static void vae_tiles_free(vae_tiles *t) {
    for (int c = 0; t->above && c < t->n_cols; c++) free(t->above[c]);
    for (int c = 0; t->row && c < t->n_cols; c++) free(t->row[c]);
    free(t->above);
    free(t->row);
}

/* diffusers tiled_decode (spec A.9): tiles of T latent cells every S cells,
 * each decoded alone and placed as vae_tiles says (blend band f·(T − S),
 * kept square f·S pixels). No clamp. */
static qi_status decode_tiled(qi_vae *v, const float *z, int h, int w, float *rgb, qi_error *err) {
    int T = v->tiling.tile_latent, f = v->scale;
    qi_status st = QI_OK;
    vae_tiles t;
    int no_grid = vae_tiles_init(&t, v, h, w, f, 3);
    float *zt = malloc(sizeof(float) * (size_t)v->z_dim * T * T);
    if (no_grid || !zt) {
        st = qi_fail(err, QI_ERR_NOMEM, "vae: out of memory for tiles");
        goto done;
    }
    for (int r = 0; r < t.n_rows; r++) {
        for (int c = 0; c < t.n_cols; c++) {
            int i, j, th, tw;
            vae_tile_at(&t, r, c, &i, &j, &th, &tw);
            for (int ch = 0; ch < v->z_dim; ch++)
                for (int y = 0; y < th; y++)
                    memcpy(zt + ((size_t)ch * th + y) * tw, z + ((size_t)ch * h + i + y) * w + j,
                           sizeof(float) * (size_t)tw);
            t.row[c] = malloc(sizeof(float) * 3 * (size_t)(f * th) * (size_t)(f * tw));
            if (!t.row[c]) {
                st = qi_fail(err, QI_ERR_NOMEM, "vae: out of memory for a %dx%d tile", f * tw, f * th);
                goto done;
            }
            if ((st = decode_latent(v, zt, th, tw, t.row[c], NULL, NULL, err))) goto done;
            vae_tile_place(&t, r, c, rgb);
        }
        vae_tiles_next_row(&t);
    }
done:
    vae_tiles_free(&t);
    free(zt);
    return st;
}

/* ---- decode ---------------------------------------------------------------------------- */

void qi_vae_set_band_bytes(qi_vae *v, size_t bytes) {
    v->band_bytes = bytes ? bytes : VAE_DEFAULT_BAND_BYTES;
}

static qi_status check_decode_args(const char *fn, const qi_vae *v, const void *vae_in, int lat_h, int lat_w,
                                   const void *out, qi_error *err) {
    if (!v || !vae_in || !out) return qi_fail(err, QI_ERR_ARG, "%s: NULL argument", fn);
    if (lat_h < 1 || lat_w < 1 || (int64_t)lat_h * v->scale > 65536 ||
        (int64_t)lat_w * v->scale > 65536)
        return qi_fail(err, QI_ERR_ARG,
                       "%s: latent size %dx%d (h x w) is out of range (1..%d cells)",
                       fn, lat_h, lat_w, 65536 / v->scale);
    return QI_OK;
}

qi_status qi_vae_decode(qi_vae *v, const float *vae_in, int lat_h, int lat_w, float *rgb_out,
                        qi_error *err) {
    qi_status st = check_decode_args("qi_vae_decode", v, vae_in, lat_h, lat_w, rgb_out, err);
    if (st) return st;
    if (qi_vae_will_tile(v, lat_h, lat_w)) return decode_tiled(v, vae_in, lat_h, lat_w, rgb_out, err);
    st = decode_latent(v, vae_in, lat_h, lat_w, rgb_out, NULL, NULL, err);
    if (st) return st;
    /* the untiled path clamps to [-1, 1] (A.5 step 15); NaN stays NaN as in torch */
    size_t n = (size_t)3 * lat_h * v->scale * lat_w * v->scale;
    for (size_t i = 0; i < n; i++) {
        if (rgb_out[i] < -1.0f) rgb_out[i] = -1.0f;
        if (rgb_out[i] > 1.0f) rgb_out[i] = 1.0f;
    }
    return QI_OK;
}

int qi_vae_u8_on_device(const qi_vae *v, int lat_h, int lat_w) {
    return v->be->ops->download_rgb8 != NULL && !qi_vae_will_tile(v, lat_h, lat_w);
}

qi_status qi_vae_decode_u8(qi_vae *v, const float *vae_in, int lat_h, int lat_w, uint8_t *rgb8,
                           int64_t *nonfinite, qi_error *err) {
    qi_status st = check_decode_args("qi_vae_decode_u8", v, vae_in, lat_h, lat_w, rgb8, err);
    if (st) return st;
    if (!nonfinite) return qi_fail(err, QI_ERR_ARG, "qi_vae_decode_u8: NULL nonfinite");
    /* whole on a backend that converts on the device: the clamp of the float
     * path is in the conversion already (clamping to [-1, 1] before
     * clamp(x·0.5 + 0.5, 0, 1) changes nothing), so the bytes are the same */
    if (qi_vae_u8_on_device(v, lat_h, lat_w))
        return decode_latent(v, vae_in, lat_h, lat_w, NULL, rgb8, nonfinite, err);
    int64_t H = (int64_t)lat_h * v->scale, W = (int64_t)lat_w * v->scale, n = 3 * H * W;
    float *rgb = malloc(sizeof(float) * (size_t)n);
    if (!rgb) return qi_fail(err, QI_ERR_NOMEM, "qi_vae_decode_u8: out of memory for a %lldx%lld picture",
                             (long long)W, (long long)H);
    /* unclamped, so an Inf is counted here as on the device */
    st = qi_vae_will_tile(v, lat_h, lat_w) ? decode_tiled(v, vae_in, lat_h, lat_w, rgb, err)
                                           : decode_latent(v, vae_in, lat_h, lat_w, rgb, NULL, NULL, err);
    if (!st) {
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += !isfinite(rgb[i]);
        *nonfinite = bad;
        qi_rgb_to_u8(rgb, (int)H, (int)W, rgb8);
    }
    free(rgb);
    return st;
}

/* ---- encoder (img2img, inpainting, editing) ------------------------------------------ */

/* The encoder's module tree, diffusers names (Wan's mapped by the source):
 * encoder.down_blocks is one flat list, per level num_res_blocks residual
 * blocks then the level's resampler. The downsample3d levels' time_conv is
 * never read: on the first (only) frame the reference caches the input and
 * skips it. */
static qi_status bind_encoder(qi_vae *v, qi_error *err) {
    vae_encoder *e = &v->enc;
    qi_status st;
    char prefix[160];
    int z2 = 2 * v->z_dim, L = v->n_levels, k = 0;
    e->dims[0] = v->base_dim;
    for (int i = 0; i < L; i++) e->dims[i + 1] = v->base_dim * v->dim_mult[i];
    if ((st = bind_causal_conv3(v, "encoder.conv_in", e->dims[0], 3, &e->conv_in_w, &e->conv_in_b, err)))
        return st;
    for (int i = 0; i < L; i++) {
        vae_down_level *lvl = &e->levels[i];
        lvl->n_res = v->num_res_blocks;
        lvl->res = calloc((size_t)(lvl->n_res ? lvl->n_res : 1), sizeof *lvl->res);
        if (!lvl->res) return qi_fail(err, QI_ERR_NOMEM, "vae: out of memory");
        for (int r = 0; r < lvl->n_res; r++, k++) {
            snprintf(prefix, sizeof prefix, "encoder.down_blocks.%d", k);
            int in = r == 0 ? e->dims[i] : e->dims[i + 1];
            if ((st = bind_resblock(v, prefix, in, e->dims[i + 1], &lvl->res[r], err))) return st;
        }
        lvl->has_downsampler = i != L - 1;
        if (lvl->has_downsampler) {
            char name[192];
            int64_t c = e->dims[i + 1], shape[4] = {c, c, 3, 3};
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resample.1.weight", k);
            if ((st = bind(v, name, 4, shape, &lvl->down_w, 4, shape, err))) return st;
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resample.1.bias", k);
            if ((st = bind_vector(v, name, c, &lvl->down_b, err))) return st;
            k++;
        }
    }
    int last = e->dims[L];
    for (int r = 0; r < 2; r++) {
        snprintf(prefix, sizeof prefix, "encoder.mid_block.resnets.%d", r);
        if ((st = bind_resblock(v, prefix, last, last, &e->mid_res[r], err))) return st;
    }
    if ((st = bind_attention(v, "encoder.mid_block.attentions.0", last, &e->mid_attn, err))) return st;
    if ((st = bind_gamma(v, "encoder.norm_out.gamma", last, 4, &e->norm_out, err))) return st;
    if ((st = bind_causal_conv3(v, "encoder.conv_out", z2, last, &e->conv_out_w, &e->conv_out_b, err)))
        return st;
    return bind_causal_conv1(v, "quant_conv", z2, z2, &e->quant_w, &e->quant_b, err);
}

qi_status qi_vae_load_encoder(qi_vae *v, qi_error *err) {
    if (!v) return qi_fail(err, QI_ERR_ARG, "qi_vae_load_encoder: NULL vae");
    if (v->enc.loaded) return QI_OK;
    if (v->n_attn_scales != 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: the VAE config lists attn_scales (attention inside the "
                       "encoder levels); Qwen-Image's VAE has none and only that is supported",
                       qi_source_path(v->src));
    int n_bound = v->n_bound, n_owned = v->n_owned;
    qi_status st = bind_encoder(v, err);
    if (st) { /* undone, so that a later call starts clean (and frees nothing twice) */
        for (int i = n_bound; i < v->n_bound; i++) v->be->ops->weight_free(v->be, v->bound[i]);
        for (int i = n_owned; i < v->n_owned; i++) free(v->owned[i]);
        for (int i = 0; i < VAE_MAX_LEVELS; i++) free(v->enc.levels[i].res);
        v->n_bound = n_bound;
        v->n_owned = n_owned;
        memset(&v->enc, 0, sizeof v->enc);
        return qi_fail_ctx(err, st, "loading the VAE encoder (img2img / inpainting / editing need it)");
    }
    v->enc.loaded = 1;
    return QI_OK;
}

int qi_vae_has_encoder(const qi_vae *v) { return v && v->enc.loaded; }

/* Channel width of the encoder at ladder step i (0: conv_in's output, i: the
 * output of level i − 1): base·[1, dim_mult...] from the config, the widths
 * bind_encoder binds, so that an encode can be sized before the encoder loads. */
static int64_t enc_dim(const qi_vae *v, int i) { return (int64_t)v->base_dim * (i == 0 ? 1 : v->dim_mult[i - 1]); }

/* The activation plan of one encode at H × W pixels, in elements: the slot
 * size (largest activation) and the largest block scratch; walks the same
 * structure as encode_image. */
static void plan_encode(const qi_vae *v, int64_t H, int64_t W, int64_t *slot, int64_t *scratch) {
    int64_t s = 3 * H * W, sc = 3 * H * W; /* the uploaded picture */
    if (enc_dim(v, 0) * H * W > s) s = enc_dim(v, 0) * H * W;
    for (int i = 0; i < v->n_levels; i++) {
        int64_t c = enc_dim(v, i) > enc_dim(v, i + 1) ? enc_dim(v, i) : enc_dim(v, i + 1);
        if (c * H * W > s) s = c * H * W;
        if (c * H * W > sc) sc = c * H * W; /* a residual block's scratch, the downsampler's stride-1 conv */
        if (i != v->n_levels - 1) {     /* the downsampler */
            H /= 2;
            W /= 2;
        }
    }
    int64_t last = enc_dim(v, v->n_levels), attn = 4 * last * H * W, z2 = 2 * (int64_t)v->z_dim * H * W;
    if (attn > sc) sc = attn;
    if (z2 > s) s = z2;
    *slot = s;
    *scratch = sc;
}

/* Each arena allocation is rounded up to the backend's alignment (256 bytes
 * at most: CUDA's); at most 6 are alive at an encode's peak (2 slots and an
 * attention's 4 scratch tensors). */
#define VAE_ENCODE_ALIGN_SLACK ((size_t)8 * 256)

size_t qi_vae_encode_untiled_bytes(const qi_vae *v, int height, int width) {
    int64_t slot, scratch;
    plan_encode(v, height, width, &slot, &scratch);
    return (size_t)(2 * slot + scratch) * qi_dtype_size(v->be->act_dtype) + VAE_ENCODE_ALIGN_SLACK;
}

size_t qi_vae_encode_tiled_bytes(const qi_vae *v, int height, int width) {
    int tile = v->tiling.tile_latent * v->scale;
    return qi_vae_encode_untiled_bytes(v, height < tile ? height : tile, width < tile ? width : tile);
}

int qi_vae_will_tile_encode(const qi_vae *v, int height, int width) {
    const qi_vae_tiling *t = &v->tiling;
    /* diffusers' _encode tiles only pictures larger than one tile in some axis */
    int larger = height > t->tile_latent * v->scale || width > t->tile_latent * v->scale;
    switch (t->mode) {
    case QI_VAE_TILE_ON: return larger;
    case QI_VAE_TILE_AUTO: return larger && qi_vae_encode_untiled_bytes(v, height, width) > t->max_untiled_bytes;
    default: return 0;
    }
}

/* x[C, H, W] → y[C, H/2, W/2]: the zero pad (0, 1, 0, 1) and the stride-2 3×3
 * conv, computed as the padding-1 stride-1 conv read at odd rows and columns
 * (output (i, j) of the strided conv sees input rows 2i..2i+2, the same
 * window as the stride-1 conv's output 2i+1; row H is the pad's zero row). */
static qi_status downsample_forward(qi_backend *be, const vae_down_level *lvl, const qi_tensor *x, qi_tensor *y,
                                    qi_error *err) {
    const qi_backend_ops *op = be->ops;
    size_t mark = op->mark(be);
    qi_tensor full;
    qi_status st = qi_be_act3(be, &full, y->ne[0], x->ne[1], x->ne[2], err);
    if (st) return st;
    op->conv2d(be, x, &lvl->down_w, &lvl->down_b, 1, &full);
    op->subsample2x(be, &full, 1, y);
    op->reset(be, mark);
    return QI_OK;
}

/* rgb[3, H, W] host → moments[2z, H/8, W/8] host (quant_conv's output: mean
 * rows first, then logvar). */
static qi_status encode_image(qi_vae *v, const float *rgb, int64_t H, int64_t W, float *moments, qi_error *err) {
    qi_backend *be = v->be;
    const qi_backend_ops *op = be->ops;
    const vae_encoder *e = &v->enc;
    int64_t slot_n, scratch_n;
    plan_encode(v, H, W, &slot_n, &scratch_n);
    size_t mark = op->mark(be);
    qi_tensor slot[2], out_t;
    qi_status st;
    int64_t one[1] = {slot_n};
    if ((st = qi_be_act(be, &slot[0], 1, one, err)) || (st = qi_be_act(be, &slot[1], 1, one, err))) goto done;
    int cur = 0;
    qi_tensor x = chw(&slot[cur], 3, H, W), y;
    if ((st = op->upload(be, &x, rgb, err))) goto done;
    y = other_slot(slot, &cur, e->dims[0], H, W);
    op->conv2d(be, &x, &e->conv_in_w, &e->conv_in_b, 1, &y); /* conv_in, last temporal tap */
    x = y;
    for (int i = 0; i < v->n_levels; i++) {
        const vae_down_level *lvl = &e->levels[i];
        for (int r = 0; r < lvl->n_res; r++) {
            y = other_slot(slot, &cur, lvl->res[r].out_ch, H, W);
            if ((st = resblock_forward(be, &lvl->res[r], &x, &y, err))) goto done;
            x = y;
        }
        if (lvl->has_downsampler) {
            H /= 2;
            W /= 2;
            y = other_slot(slot, &cur, x.ne[0], H, W);
            if ((st = downsample_forward(be, lvl, &x, &y, err))) goto done;
            x = y;
        }
    }
    int64_t C = x.ne[0], z2 = 2 * (int64_t)v->z_dim;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = resblock_forward(be, &e->mid_res[0], &x, &y, err))) goto done;
    x = y;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = attention_forward(be, &e->mid_attn, &x, &y, v->band_bytes, err))) goto done;
    x = y;
    y = other_slot(slot, &cur, C, H, W);
    if ((st = resblock_forward(be, &e->mid_res[1], &x, &y, err))) goto done;
    x = y;
    /* head: silu(norm_out(x)) in place, conv_out to 2z channels, quant_conv */
    op->channel_rms_norm(be, &x, &e->norm_out, NULL, &x);
    op->activate(be, &x, QI_ACT_SILU, &x);
    y = other_slot(slot, &cur, z2, H, W);
    op->conv2d(be, &x, &e->conv_out_w, &e->conv_out_b, 1, &y);
    out_t = other_slot(slot, &cur, z2, H, W);
    op->conv2d(be, &y, &e->quant_w, &e->quant_b, 0, &out_t);
    st = op->download(be, &out_t, moments, err);
done:
    op->reset(be, mark);
    return st;
}

/* diffusers' tiled_encode (AutoencoderKLQwenImage): the picture cut into
 * tiles of T·f pixels every S·f (f = 8, so every tile edge lies on the
 * latent grid and each tile is a whole encode of its own), each tile's
 * moments [2z, ≤T, ≤T] placed as vae_tiles says, in latent cells (blend
 * band T − S, kept square S): the decoder's tiling in the other direction
 * (decode_tiled), on the moments. The encoder's receptive field is wider
 * than the overlap (its 3×3 convs reach about 110 pixels each way; the
 * middle attention sees the whole tile), so this approximates the whole
 * encode near tile edges, as diffusers' does. */
static qi_status encode_tiled(qi_vae *v, const float *rgb, int H, int W, float *moments, qi_error *err) {
    int T = v->tiling.tile_latent, f = v->scale, z2 = 2 * v->z_dim;
    qi_status st = QI_OK;
    vae_tiles t;
    int no_grid = vae_tiles_init(&t, v, H / f, W / f, 1, z2);
    float *px = malloc(sizeof(float) * 3 * (size_t)(f * T) * (size_t)(f * T));
    if (no_grid || !px) {
        st = qi_fail(err, QI_ERR_NOMEM, "vae: out of memory for encoder tiles");
        goto done;
    }
    for (int r = 0; r < t.n_rows; r++) {
        for (int c = 0; c < t.n_cols; c++) {
            int i, j, th, tw;
            vae_tile_at(&t, r, c, &i, &j, &th, &tw);
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < f * th; y++)
                    memcpy(px + ((size_t)ch * f * th + y) * (size_t)(f * tw),
                           rgb + ((size_t)ch * H + (size_t)f * i + y) * W + (size_t)f * j,
                           sizeof(float) * (size_t)(f * tw));
            t.row[c] = malloc(sizeof(float) * (size_t)z2 * (size_t)th * (size_t)tw);
            if (!t.row[c]) {
                st = qi_fail(err, QI_ERR_NOMEM, "vae: out of memory for a %dx%d encoder tile", f * tw, f * th);
                goto done;
            }
            if ((st = encode_image(v, px, f * th, f * tw, t.row[c], err))) goto done;
            vae_tile_place(&t, r, c, moments);
        }
        vae_tiles_next_row(&t);
    }
done:
    vae_tiles_free(&t);
    free(px);
    return st;
}

qi_status qi_vae_encode(qi_vae *v, const float *rgb, int height, int width, float *mean, float *logvar,
                        qi_error *err) {
    if (!v || !rgb || !mean || !logvar) return qi_fail(err, QI_ERR_ARG, "qi_vae_encode: NULL argument");
    if (!v->enc.loaded)
        return qi_fail(err, QI_ERR_ARG, "qi_vae_encode: the encoder is not loaded (call qi_vae_load_encoder)");
    if (height < v->scale || width < v->scale || height % v->scale || width % v->scale || height > 65536 ||
        width > 65536)
        return qi_fail(err, QI_ERR_ARG, "qi_vae_encode: picture %dx%d (h x w): each side must be a multiple "
                       "of %d in %d..65536", height, width, v->scale, v->scale);
    int64_t h = height / v->scale, w = width / v->scale, n = (int64_t)v->z_dim * h * w;
    float *moments = malloc(sizeof(float) * 2 * (size_t)n);
    if (!moments) return qi_fail(err, QI_ERR_NOMEM, "qi_vae_encode: out of memory for %lldx%lld latents",
                                 (long long)h, (long long)w);
    qi_status st = qi_vae_will_tile_encode(v, height, width) ? encode_tiled(v, rgb, height, width, moments, err)
                                                              : encode_image(v, rgb, height, width, moments, err);
    if (st == QI_OK) {
        memcpy(mean, moments, sizeof(float) * (size_t)n);
        memcpy(logvar, moments + n, sizeof(float) * (size_t)n);
    }
    free(moments);
    return st;
}

void qi_vae_sample_posterior(const float *mean, const float *logvar, const float *eps, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) {
        float lv = logvar[i] < -30.0f ? -30.0f : logvar[i] > 20.0f ? 20.0f : logvar[i];
        out[i] = mean[i] + expf(0.5f * lv) * eps[i];
    }
}

void qi_vae_normalize_latents(const qi_vae *v, const float *z, int64_t hw, int divide, float *out) {
    for (int c = 0; c < v->z_dim; c++) {
        float m = v->latents_mean[c], s = v->latents_std[c], inv = 1.0f / s;
        for (int64_t i = 0; i < hw; i++) {
            float d = z[c * hw + i] - m;
            out[c * hw + i] = divide ? d / s : d * inv;
        }
    }
}

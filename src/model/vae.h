/*
 * vae.h — the Qwen-Image VAE decoder (AutoencoderKLQwenImage, a Wan-2.1-style
 * causal 3-D VAE) run on one image: latent [16, h, w] → RGB [3, 8h, 8w].
 *
 *     qi_source *src;   // io/source.h
 *     qi_vae *vae;
 *     if (qi_source_open("<model>/vae", QI_COMPONENT_VAE, &src, &err) != QI_OK) ...
 *     if (qi_vae_load(src, be, &vae, &err) != QI_OK) ...
 *     // vae_in: [16, 1, h, w] float32, already de-normalised (spec denoiser.md §3.6:
 *     //         z / float32(1/std) + mean with qi_vae_latents_mean/std)
 *     float *rgb = malloc(sizeof(float) * 3 * 8 * h * 8 * w);
 *     qi_vae_decode(vae, vae_in, h, w, rgb, &err);   // rgb [3, 8h, 8w], [-1, 1]
 *     qi_rgb_to_u8(rgb, 8 * h, 8 * w, pixels);        // io/image.h
 *     qi_vae_free(vae);
 *     qi_source_close(src);
 *
 * What decode computes (spec vae-and-formats.md A.3–A.5): for one frame every
 * 3×3×3 causal conv is a 2-D 3×3 conv with the LAST temporal slice of its
 * weight (the first frame sees zero padding [0, 0, x] in time), the
 * upsamplers' time_conv is skipped (first-chunk rule), and the result equals
 * diffusers' untiled `vae.decode(z)`, clamped to [-1, 1] — the reference
 * `vae_out`.
 *
 * Large images are decoded in overlapping tiles blended as diffusers'
 * `tiled_decode` does (A.9): automatically when an untiled decode would need
 * more activation memory than a budget, or always when asked (tests). A tiled
 * result is not clamped (neither is diffusers'); the u8 conversion clamps.
 *
 * The encoder (img2img, editing) is not loaded here.
 */
#ifndef QI_VAE_H
#define QI_VAE_H

#include <stddef.h>

#include "backend/backend.h"
#include "base/base.h"
#include "io/source.h"

typedef struct qi_vae qi_vae;

/* Reads the config.json of `src` (a QI_COMPONENT_VAE source, e.g. a
 * diffusers vae folder; one without a config is QI_ERR_UNSUPPORTED for now:
 * base_dim, z_dim, dim_mult, num_res_blocks, attn_scales,
 * temperal_downsample, latents_mean, latents_std are required;
 * input_channels may be absent and must be 3) and binds every decoder weight
 * of the source with its shape checked. The 3×3×3 causal conv weights are
 * reduced to their last temporal slice at load (kept in the file's dtype),
 * so the decoder holds about a third of its file size. `be` must outlive the
 * vae, `src` must stay open until qi_vae_free (CPU weights point into it). */
qi_status qi_vae_load(const qi_source *src, qi_backend *be, qi_vae **out, qi_error *err);
void qi_vae_free(qi_vae *v);
/* Whether qi_vae_load binds a tensor of this (diffusers) name: the decoder's
 * and post_quant_conv's; the encoder is never loaded. For memory plans. */
int qi_vae_binds(const char *name);

/* The latent statistics of the config, z_dim values each (16 for Qwen-Image). */
const float *qi_vae_latents_mean(const qi_vae *v);
const float *qi_vae_latents_std(const qi_vae *v);
int qi_vae_z_dim(const qi_vae *v);
int qi_vae_scale_factor(const qi_vae *v); /* pixels per latent cell: 8 */

/* Decodes one image. vae_in [z_dim, 1, lat_h, lat_w] float32 host (the
 * reference `vae_in` of one image); rgb_out [3, f·lat_h, f·lat_w] float32 host,
 * f = qi_vae_scale_factor (8). Uses the backend's arena between its mark at
 * entry and resets it on return. */
qi_status qi_vae_decode(qi_vae *v, const float *vae_in, int lat_h, int lat_w, float *rgb_out,
                        qi_error *err);

/* ---- tiling (spec A.9) -------------------------------------------------- */

typedef enum qi_vae_tile_mode {
    QI_VAE_TILE_AUTO = 0, /* tile when the untiled activation estimate exceeds the budget */
    QI_VAE_TILE_OFF,      /* never tile (reference comparisons) */
    QI_VAE_TILE_ON        /* tile whenever the latent is larger than one tile (diffusers'
                             enable_tiling()) */
} qi_vae_tile_mode;

typedef struct qi_vae_tiling {
    qi_vae_tile_mode mode;
    int tile_latent;          /* tile size in latent cells: 32 (diffusers: 256 px) */
    int stride_latent;        /* tile step in latent cells: 24 (192 px); blend = tile - stride */
    size_t max_untiled_bytes; /* AUTO budget for the untiled activations: 4 GiB */
} qi_vae_tiling;

qi_vae_tiling qi_vae_tiling_default(void);
/* Checks 1 <= stride_latent <= tile_latent; the error names the bad field. */
qi_status qi_vae_set_tiling(qi_vae *v, const qi_vae_tiling *t, qi_error *err);

/* The arena bytes an untiled decode of lat_h × lat_w would use at its peak
 * (what AUTO compares with max_untiled_bytes). */
size_t qi_vae_untiled_bytes(const qi_vae *v, int lat_h, int lat_w);
/* Whether qi_vae_decode would tile this size with the current settings. */
int qi_vae_will_tile(const qi_vae *v, int lat_h, int lat_w);

/* Working-set cap, in bytes, of the two steps that would otherwise build the
 * largest temporaries: the nearest-2× upsample + conv (run in bands of output
 * rows past it) and the middle attention (run in blocks of query rows, so a
 * backend's [rows, N] score matrix stays under it). Same result either way.
 * 0 = default 64 MiB; tests set it tiny to exercise the banded paths. */
void qi_vae_set_band_bytes(qi_vae *v, size_t bytes);

#endif

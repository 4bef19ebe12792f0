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
 * The encoder (img2img, inpainting, editing) is bound on demand by
 * qi_vae_load_encoder: the Wan encoder on one frame (every causal conv reads
 * its last temporal tap; the downsample3d levels' time_conv is skipped, as the
 * reference's first chunk skips it), then quant_conv; qi_vae_encode returns
 * the posterior's mean and logvar, whole or in tiles by the same rule as the
 * decode (its own activation estimate against the same budget).
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

/* Decodes one image to 8-bit pixels: rgb8 [f·lat_h, f·lat_w, 3] host bytes,
 * exactly io/image.h's qi_rgb_to_u8 of what qi_vae_decode gives, and
 * *nonfinite = how many of those float values are NaN or ±Inf (the bytes
 * are then not to be trusted). On a backend with download_rgb8 a whole
 * decode converts on the device and only the bytes cross to the host; a
 * tiled decode (blended on the host in float32) and other backends convert
 * on the host. */
qi_status qi_vae_decode_u8(qi_vae *v, const float *vae_in, int lat_h, int lat_w, uint8_t *rgb8,
                           int64_t *nonfinite, qi_error *err);

/* ---- encoder ------------------------------------------------------------ */

/* Binds the encoder's weights from the source the decoder came from (it must
 * still be open). Text-to-image never calls it. Idempotent. */
qi_status qi_vae_load_encoder(qi_vae *v, qi_error *err);
int qi_vae_has_encoder(const qi_vae *v);

/* Encodes one picture. rgb [3, height, width] float32 host in [-1, 1]
 * (2·(u8/255) − 1), each side a multiple of qi_vae_scale_factor; mean and
 * logvar [z_dim, height/8, width/8] host: the reference `vae_enc.mean` /
 * `vae_enc.logvar` (logvar not clamped here). Whole, or in tiles as
 * diffusers' tiled_encode when qi_vae_will_tile_encode says so (the same
 * tiling settings as the decode: tiles of 8·tile_latent pixels every
 * 8·stride_latent, the moments blended over the overlap; near tile edges it
 * approximates the whole encode, as diffusers' does). Uses the backend's
 * arena and resets it. */
qi_status qi_vae_encode(qi_vae *v, const float *rgb, int height, int width, float *mean, float *logvar,
                        qi_error *err);

/* The posterior sample diffusers' DiagonalGaussianDistribution draws:
 * out = mean + exp(0.5·clamp(logvar, −30, 20))·eps, n values (out may alias mean). */
void qi_vae_sample_posterior(const float *mean, const float *logvar, const float *eps, size_t n, float *out);

/* out[c] = (z[c] − latents_mean[c]) · (1/latents_std[c]) (divide = 0: img2img
 * and inpaint multiply by the float32 reciprocal) or / latents_std[c]
 * (divide = 1: the Edit pipeline divides; not bit-equal). z, out [z_dim, hw];
 * out may alias z. */
void qi_vae_normalize_latents(const qi_vae *v, const float *z, int64_t hw, int divide, float *out);

/* ---- tiling (spec A.9) -------------------------------------------------- */

typedef enum qi_vae_tile_mode {
    QI_VAE_TILE_AUTO = 0, /* tile when the untiled activation estimate exceeds the budget
                             (decode and encode each by its own estimate) */
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
/* 1 when qi_vae_decode_u8 of this size makes its bytes on the device
 * (a whole decode on a backend with download_rgb8). */
int qi_vae_u8_on_device(const qi_vae *v, int lat_h, int lat_w);

/* The same for the encoder, at height × width PIXELS (multiples of 8): the
 * arena bytes a whole encode uses at its peak (sized from the config, so it
 * may be asked before qi_vae_load_encoder), what one tile of the current
 * tiling uses (the whole picture when it is smaller than a tile), and
 * whether qi_vae_encode would tile (AUTO: the whole encode's bytes above
 * max_untiled_bytes). */
size_t qi_vae_encode_untiled_bytes(const qi_vae *v, int height, int width);
size_t qi_vae_encode_tiled_bytes(const qi_vae *v, int height, int width);
int qi_vae_will_tile_encode(const qi_vae *v, int height, int width);

/* Working-set cap, in bytes, of the two steps that would otherwise build the
 * largest temporaries: the nearest-2× upsample + conv (run in bands of output
 * rows past it) and the middle attention (run in blocks of query rows, so a
 * backend's [rows, N] score matrix stays under it). Same result either way.
 * 0 = default 64 MiB; tests set it tiny to exercise the banded paths. */
void qi_vae_set_band_bytes(qi_vae *v, size_t bytes);

#endif

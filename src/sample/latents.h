/*
 * latents.h — latent geometry, packing, initial noise and the VAE input
 * (spec: denoiser.md §3.1–3.3, §3.6; noise: text-and-noise.md §4).
 *
 * Two layouts of the same latents:
 *   diffusers  [B, 16, H, W]   (= [B, 1, 16, H, W] with the frame dim, and the
 *                              VAE's [B, 16, 1, H, W]: the dim of size 1 does
 *                              not change the memory order)
 *   packed     [B, h·w, 64]    token r·w + c, channel ch·4 + dy·2 + dx holds
 *                              lat[b, ch, 2r + dy, 2c + dx]
 * with H = 2·(height // 16), W = 2·(width // 16), h = H/2, w = W/2. Sizes not
 * divisible by 16 are floored, as diffusers does.
 */
#ifndef QI_LATENTS_H
#define QI_LATENTS_H

#include "base/base.h"

#define QI_LATENT_CHANNELS 16
#define QI_PACKED_CHANNELS 64

typedef struct qi_latent_shape {
    int lat_h, lat_w;   /* H, W: latent rows / columns (pixels / 8, even) */
    int grid_h, grid_w; /* h, w: 2x2 patches (pixels / 16) */
    int64_t tokens;     /* h·w = packed sequence length = image_seq_len */
    int64_t per_image;  /* 16·H·W = h·w·64 floats per image (either layout) */
} qi_latent_shape;

/* The geometry of a height x width image; error if either is below 16 px. */
qi_status qi_latent_shape_of(int height, int width, qi_latent_shape *out, qi_error *err);

/* [B, 16, H, W] -> [B, h·w, 64]. lat_h, lat_w even. */
void qi_latents_pack(const float *lat, int B, int lat_h, int lat_w, float *packed);
/* [B, h·w, 64] -> [B, 16, H, W]: the exact inverse. */
void qi_latents_unpack(const float *packed, int B, int lat_h, int lat_w, float *lat);

/* The pipeline's initial latents, packed: randn of shape [B, 1, 16, H, W]
 * drawn as one flat stream from a generator seeded with `seed`, in `dtype`
 * (QI_F32 or QI_BF16; the dtype of the prompt embeddings), then packed.
 *   QI_RNG_CPU:  torch's CPU generator (bit-exact, rng.h);
 *   QI_RNG_CUDA: torch's CUDA generator on an H200-sized grid (1056 blocks),
 *                recomputed on the CPU (float32 within ~3e-6 of the GPU; the
 *                pipeline may use qi_randn_philox_cuda instead on a GPU).
 * packed_out holds B·h·w·64 floats. */
qi_status qi_initial_noise(uint64_t seed, qi_rng_kind rng, qi_dtype dtype, int B, int height,
                           int width, float *packed_out, qi_error *err);

/* The VAE's input from the final packed latents: unpack, then per latent
 * channel undo the normalisation as diffusers does it, z / (1/std) + mean
 * with 1/std rounded to float32 first (bit-exact with diffusers; z·std + mean
 * differs by 1 ulp on ~15% of values). latents_mean16 / latents_std16 are
 * the VAE config's 16 values. vae_in is [B, 16, 1, H, W]. */
void qi_latents_to_vae_in(const float *packed, int B, int height, int width,
                          const float *latents_mean16, const float *latents_std16,
                          float *vae_in);

#endif

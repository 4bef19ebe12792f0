/*
 * latents.c — latent geometry, 2x2 packing, initial noise, VAE input
 * (spec: denoiser.md §3.1–3.3, §3.6). Layouts are described in latents.h.
 */
#include "sample/latents.h"

#include <stdlib.h>

#include "sample/rng.h"

qi_status qi_latent_shape_of(int height, int width, qi_latent_shape *out, qi_error *err) {
    if (height < 16 || width < 16 || height > 65536 || width > 65536)
        return qi_fail(err, QI_ERR_ARG,
                       "image size %dx%d: width and height must be in 16..65536 pixels "
                       "(multiples of 16)",
                       width, height);
    qi_latent_shape s;
    s.grid_h = height / 16; /* floored, as diffusers does */
    s.grid_w = width / 16;
    s.lat_h = 2 * s.grid_h;
    s.lat_w = 2 * s.grid_w;
    s.tokens = (int64_t)s.grid_h * s.grid_w;
    s.per_image = s.tokens * QI_PACKED_CHANNELS;
    *out = s;
    return QI_OK;
}

void qi_latents_pack(const float *lat, int B, int lat_h, int lat_w, float *packed) {
    const int h = lat_h / 2, w = lat_w / 2;
    const int64_t plane = (int64_t)lat_h * lat_w;
    for (int b = 0; b < B; b++) {
        const float *src = lat + (int64_t)b * QI_LATENT_CHANNELS * plane;
        float *dst = packed + (int64_t)b * h * w * QI_PACKED_CHANNELS;
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++) {
                float *token = dst + ((int64_t)r * w + c) * QI_PACKED_CHANNELS;
                for (int ch = 0; ch < QI_LATENT_CHANNELS; ch++)
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            token[ch * 4 + dy * 2 + dx] =
                                src[ch * plane + (int64_t)(2 * r + dy) * lat_w + (2 * c + dx)];
            }
    }
}

void qi_latents_unpack(const float *packed, int B, int lat_h, int lat_w, float *lat) {
    const int h = lat_h / 2, w = lat_w / 2;
    const int64_t plane = (int64_t)lat_h * lat_w;
    for (int b = 0; b < B; b++) {
        const float *src = packed + (int64_t)b * h * w * QI_PACKED_CHANNELS;
        float *dst = lat + (int64_t)b * QI_LATENT_CHANNELS * plane;
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++) {
                const float *token = src + ((int64_t)r * w + c) * QI_PACKED_CHANNELS;
                for (int ch = 0; ch < QI_LATENT_CHANNELS; ch++)
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            dst[ch * plane + (int64_t)(2 * r + dy) * lat_w + (2 * c + dx)] =
                                token[ch * 4 + dy * 2 + dx];
            }
    }
}

qi_status qi_initial_noise(uint64_t seed, qi_rng_kind rng, qi_dtype dtype, int B, int height,
                           int width, float *packed_out, qi_error *err) {
    if (B < 1 || B > 4096)
        return qi_fail(err, QI_ERR_ARG, "initial noise: batch must be in 1..4096, got %d", B);
    if (dtype != QI_F32 && dtype != QI_BF16)
        return qi_fail(err, QI_ERR_ARG, "initial noise: dtype %s is not supported (F32 or BF16)",
                       qi_dtype_name(dtype));
    if (rng != QI_RNG_CPU && rng != QI_RNG_CUDA)
        return qi_fail(err, QI_ERR_ARG, "initial noise: unknown generator kind %d", (int)rng);
    if (!packed_out) return qi_fail(err, QI_ERR_ARG, "initial noise: output buffer is NULL");
    qi_latent_shape s;
    qi_status st = qi_latent_shape_of(height, width, &s, err);
    if (st != QI_OK) return st;

    /* One torch.randn over [B, 1, 16, H, W]: image b is elements
     * [b·N, (b+1)·N) of one stream (spec §4.1). */
    const int64_t total = (int64_t)B * s.per_image;
    float *noise = malloc((size_t)total * sizeof *noise);
    if (!noise)
        return qi_fail(err, QI_ERR_NOMEM, "initial noise: out of memory for %lld floats",
                       (long long)total);
    if (rng == QI_RNG_CPU) {
        st = qi_randn_cpu(seed, dtype, total, noise, err);
    } else {
        qi_randn_philox_cpu(seed, 0, total, QI_PHILOX_GRID_H200, dtype, noise);
        st = QI_OK;
    }
    if (st == QI_OK) qi_latents_pack(noise, B, s.lat_h, s.lat_w, packed_out);
    free(noise);
    return st;
}

void qi_latents_to_vae_in(const float *packed, int B, int height, int width,
                          const float *latents_mean16, const float *latents_std16,
                          float *vae_in) {
    const int lat_h = 2 * (height / 16), lat_w = 2 * (width / 16);
    qi_latents_unpack(packed, B, lat_h, lat_w, vae_in);
    const int64_t plane = (int64_t)lat_h * lat_w;
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < QI_LATENT_CHANNELS; ch++) {
            /* diffusers: latents_std = 1.0 / tensor(std) (float32), then
             * latents / latents_std + latents_mean. */
            const float inv_std = 1.0f / latents_std16[ch];
            const float mean = latents_mean16[ch];
            float *z = vae_in + ((int64_t)b * QI_LATENT_CHANNELS + ch) * plane;
            for (int64_t i = 0; i < plane; i++) z[i] = z[i] / inv_std + mean;
        }
}

/*
 * image_prep.h — input pictures and masks made into what the img2img and
 * inpaint pipelines feed the VAE, as diffusers' VaeImageProcessor does it
 * (reference edit/README.md E11, E14):
 *
 *     uint8_t *rgb; int w, h;
 *     qi_png_read("in.png", &rgb, &w, &h, NULL, &err);               // io/image.h
 *     uint8_t *sized = malloc(3 * W * H);
 *     qi_resize_lanczos_u8(rgb, w, h, 3, sized, W, H, &err);         // PIL's resize(LANCZOS)
 *     float *pixels = malloc(sizeof(float) * 3 * W * H);
 *     qi_u8_to_vae_pixels(sized, W, H, pixels);                      // [3, H, W], 2·(u8/255) − 1
 *
 * The resize is Pillow's `Image.resize((W, H), Image.LANCZOS)` on 8-bit data
 * bit for bit: the same separable Lanczos-3 coefficients (double), the same
 * fixed-point rounding of them (22 fraction bits), horizontal pass first into
 * an 8-bit intermediate over only the rows the vertical pass reads, then the
 * vertical pass; the same size is a plain copy. No crop: the aspect ratio
 * follows W×H.
 */
#ifndef QI_IMAGE_PREP_H
#define QI_IMAGE_PREP_H

#include <stdint.h>

#include "base/base.h"

/* in [in_h, in_w, channels] u8 → out [out_h, out_w, channels] u8 (channels
 * 1..4). Errors: a size below 1 or over 65536, out of memory. */
qi_status qi_resize_lanczos_u8(const uint8_t *in, int in_w, int in_h, int channels, uint8_t *out, int out_w,
                               int out_h, qi_error *err);

/* PIL's convert("L") of RGB: (R·19595 + G·38470 + B·7471 + 2^15) >> 16 per
 * pixel (grey stays itself). rgb [n, 3] → luma [n]. */
void qi_rgb_to_luma_u8(const uint8_t *rgb, int64_t n, uint8_t *luma);

/* rgb [H, W, 3] u8 → out [3, H, W] float32, 2·(u8/255) − 1 in float32 (the
 * reference `init_image`). */
void qi_u8_to_vae_pixels(const uint8_t *rgb, int width, int height, float *out);

/* A resized L mask [n] → out [n] in {0, 1}: u8/255 ≥ 0.5 (the reference
 * `mask_condition`, 1 = repaint). */
void qi_mask_binarize(const uint8_t *luma, int64_t n, float *out);

/* pixels [3, H, W] (in place) · (mask < 0.5): repainted pixels become 0
 * (the reference `masked_image`). mask [H, W] in {0, 1}. */
void qi_mask_apply(float *pixels, const float *mask, int width, int height);

/* The binary mask [H, W] at the latent grid [H/f, W/f] by torch's nearest
 * interpolation (source index ⌊i·H/h⌋ with the scale in float32), repeated
 * over `channels` → out [channels, H/f, W/f] (unpacked latent layout). */
void qi_mask_to_latent_grid(const float *mask, int width, int height, int factor, int channels, float *out);

#endif

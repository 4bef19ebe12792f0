/*
 * image_check.h — how the tests compare pictures: bit for bit (two runs that
 * must agree: a cache hit, a swapped LoRA set, a memory plan, a failed
 * allocation absorbed) and level by level (a run against another device's or
 * a reference case's `image_u8`). One definition, so that "the same image"
 * means the same thing in every test program.
 */
#ifndef QI_TEST_IMAGE_CHECK_H
#define QI_TEST_IMAGE_CHECK_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "qwen_image.h"

/* Bytes of a's pixels ([count, H, W, 3]) and floats of its latents ([count, 16, H/8, W/8]). */
static inline size_t image_pixel_bytes(const qi_image *a) { return (size_t)a->count * a->height * a->width * 3; }
static inline size_t image_latent_count(const qi_image *a) {
    return (size_t)a->count * 16 * (size_t)(a->height / 8) * (size_t)(a->width / 8);
}

/* Both hold pixels, of the same count and size, equal byte for byte. */
static inline int same_pixels(const qi_image *a, const qi_image *b) {
    return a->rgb && b->rgb && a->count == b->count && a->width == b->width && a->height == b->height &&
           !memcmp(a->rgb, b->rgb, image_pixel_bytes(a));
}

/* same_pixels, and the latents the VAE decoded equal bit for bit too (a
 * difference below one level of the pixels still counts). */
static inline int same_image(const qi_image *a, const qi_image *b) {
    return same_pixels(a, b) && a->latents && b->latents &&
           !memcmp(a->latents, b->latents, image_latent_count(a) * sizeof(float));
}

/* The largest absolute difference, in levels, of the n bytes at a and b;
 * *mean (where not NULL) their mean absolute difference (0 for n = 0). */
static inline int pixel_diff(const uint8_t *a, const uint8_t *b, size_t n, double *mean) {
    int worst = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        worst = d > worst ? d : worst;
        sum += d;
    }
    if (mean) *mean = n ? sum / (double)n : 0;
    return worst;
}

/* The n bytes at rgb against the `image_u8` tensor of a reference case's
 * tensors file: pixel_diff's answer, or -1 (and *mean -1) where the file has
 * no image_u8 or it holds another number of bytes (another size or layout). */
static inline int ref_image_diff(const qi_st_file *ref, const uint8_t *rgb, size_t n, double *mean) {
    const qi_st_tensor *u8 = ref ? qi_st_file_find(ref, "image_u8") : NULL;
    if (!rgb || !u8 || u8->nbytes != n) {
        if (mean) *mean = -1;
        return -1;
    }
    return pixel_diff(rgb, u8->data, n, mean);
}

#endif

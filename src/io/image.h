/*
 * image.h — decoded pixels to 8-bit RGB, and image files.
 *
 *     qi_rgb_to_u8(rgb, H, W, pixels);      // VAE output [3, H, W] → [H, W, 3] u8
 *     qi_image_save("out.png", pixels, W, H, "a cat\nSteps: 8, Seed: 42", NULL, &err);
 *
 * The conversion is diffusers' VaeImageProcessor.postprocess (spec
 * vae-and-formats.md A.7) bit for bit on float32 data: v = clamp(x·0.5 + 0.5,
 * 0, 1), u8 = round_half_to_even(v·255).
 *
 * Files: the format follows the extension (.png, .jpg/.jpeg, .webp, any
 * case). PNG carries the caller's text in a `parameters` chunk (tEXt when the
 * text is ASCII, iTXt/UTF-8 otherwise — what PIL, and so A1111/ComfyUI
 * readers, expect); JPEG carries it as COM markers (65533 bytes each: a
 * longer text spans several, cut between characters); WebP carries none. The
 * text is kept whole and must be valid UTF-8 (QI_ERR_ARG otherwise). Every
 * write goes to a temporary file in the destination directory that is renamed
 * over the destination only once complete, so a failed write leaves nothing
 * behind (and never a truncated image under the final name).
 */
#ifndef QI_IMAGE_H
#define QI_IMAGE_H

#include <stdint.h>
#include <stdio.h>

#include "base/base.h"

/* rgb [3, H, W] float32 (VAE output, ~[-1, 1]) → out [H, W, 3] uint8
 * (reference `image_u8`). NaN becomes 0. */
void qi_rgb_to_u8(const float *rgb, int height, int width, uint8_t *out);

/* rgb [3, H, W] → out [H, W, 3] float32 in [0, 1] (reference `image_float`,
 * diffusers output_type="np"). */
void qi_rgb_to_unit(const float *rgb, int height, int width, float *out);

/* qi_image_format (PNG, JPEG, WebP) is public: qwen_image.h. */

/* The format named by path's extension; QI_ERR_ARG naming the extension
 * otherwise. */
qi_status qi_image_format_of(const char *path, qi_image_format *out, qi_error *err);

typedef struct qi_image_save_options {
    int quality;       /* JPEG and lossy WebP quality, 1..100: 95 */
    int webp_lossless; /* nonzero: lossless WebP (quality ignored): 0 */
} qi_image_save_options;

qi_image_save_options qi_image_save_options_default(void);

/* Writes rgb [height, width, 3] uint8 to path in the format of its
 * extension. parameters (UTF-8, may be NULL) is stored as described above.
 * opt NULL = defaults. Errors name the path. */
qi_status qi_image_save(const char *path, const uint8_t *rgb, int width, int height,
                        const char *parameters, const qi_image_save_options *opt, qi_error *err);

/* The same bytes qi_image_save writes, in memory: *bytes (malloc'd, free()
 * it) of *len. Errors name the format. */
qi_status qi_image_encode_rgb(const uint8_t *rgb, int width, int height, qi_image_format fmt,
                              const char *parameters, const qi_image_save_options *opt, uint8_t **bytes,
                              size_t *len, qi_error *err);

/* Reads a PNG as 8-bit RGB (palette, grey, 16-bit and alpha are converted:
 * alpha is dropped). *rgb [height, width, 3] is malloc'd; *parameters gets a
 * malloc'd copy of the `parameters` text (tEXt, zTXt or iTXt) or NULL when
 * absent (pass parameters = NULL to skip it). */
qi_status qi_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters,
                      qi_error *err);
/* The same from an open stream at its start; name is for messages. */
qi_status qi_png_read_fp(const char *name, FILE *fp, uint8_t **rgb, int *width, int *height, char **parameters,
                         qi_error *err);

/* A picture (PNG, JPEG or WebP, by its first bytes) as 8-bit RGB: *rgb
 * [height, width, 3] malloc'd. Alpha is dropped, grey repeated, palettes
 * expanded, 16-bit samples cut to their high byte (image_read.c). More than
 * 16384 pixels a side is QI_ERR_ARG. */
qi_status qi_image_read_rgb(const char *path, uint8_t **rgb, int *width, int *height, qi_error *err);
/* The same from bytes in memory (an uploaded file); name is for messages
 * (e.g. the form field "image"). max_side (0: 16384) refuses larger
 * pictures (QI_ERR_ARG) before their pixels are allocated. */
qi_status qi_image_read_rgb_mem(const char *name, const void *data, size_t size, int max_side, uint8_t **rgb,
                                int *width, int *height, qi_error *err);

#define QI_JPEG_COMMENT_MAX 65533 /* bytes of one COM segment */

/* The text of a JPEG's COM segments (before the first scan), joined in
 * order: *text malloc'd, or NULL when the file has none. */
qi_status qi_jpeg_read_comment(const char *path, char **text, qi_error *err);

#endif

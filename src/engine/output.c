/*
 * output.c — the public image outputs of qwen_image.h: encoding a generated
 * image in memory (PNG / JPEG / WebP with the parameters text), writing it
 * to a file, and writing the latents the VAE decoded. The encoders and the
 * temporary-file discipline are io/image.c's; this file checks the public
 * arguments and turns qi_error into the caller's buffer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/plan.h"
#include "io/image.h"
#include "io/safetensors.h"

/* err's message into the caller's buffer (errbuf may be NULL). */
static qi_status to_buf(qi_status st, const qi_error *err, char *errbuf, size_t errcap) {
    if (st && errbuf && errcap) snprintf(errbuf, errcap, "%s", err->msg);
    return st;
}

void qi_image_free(qi_image *img) {
    if (!img) return;
    free(img->rgb);
    free(img->latents);
    memset(img, 0, sizeof *img);
}

void qi_free_bytes(uint8_t *bytes) { free(bytes); }

qi_status qi_image_read(const char *path, uint8_t **rgb, int *width, int *height, char *errbuf, size_t errcap) {
    qi_error err;
    if (!path || !rgb || !width || !height)
        return to_buf(qi_fail(&err, QI_ERR_ARG, "qi_image_read: NULL argument"), &err, errbuf, errcap);
    return to_buf(qi_image_read_rgb(path, rgb, width, height, &err), &err, errbuf, errcap);
}

qi_status qi_image_read_mem(const char *name, const void *data, size_t size, int max_side, uint8_t **rgb, int *width,
                            int *height, char *errbuf, size_t errcap) {
    qi_error err;
    if (!rgb || !width || !height)
        return to_buf(qi_fail(&err, QI_ERR_ARG, "qi_image_read_mem: NULL argument"), &err, errbuf, errcap);
    return to_buf(qi_image_read_rgb_mem(name ? name : "image", data, size, max_side, rgb, width, height, &err), &err, errbuf,
                  errcap);
}

qi_status qi_image_format_from_path(const char *path, qi_image_format *out, char *errbuf, size_t errcap) {
    qi_error err;
    if (!path || !out) return to_buf(qi_fail(&err, QI_ERR_ARG, "qi_image_format_from_path: NULL argument"), &err,
                                     errbuf, errcap);
    return to_buf(qi_image_format_of(path, out, &err), &err, errbuf, errcap);
}

/* Image `index` of img: its pixels, or an error naming what is wrong. */
static qi_status image_pixels(const qi_image *img, int index, const uint8_t **rgb, qi_error *err) {
    if (!img || !img->rgb) return qi_fail(err, QI_ERR_ARG, "no image (NULL or already freed)");
    if (index < 0 || index >= img->count)
        return qi_fail(err, QI_ERR_ARG, "image index %d: the result holds %d image(s)", index, img->count);
    *rgb = img->rgb + (size_t)index * img->width * img->height * 3;
    return QI_OK;
}

static qi_status save_options(int quality, qi_image_save_options *o, qi_error *err) {
    *o = qi_image_save_options_default();
    if (quality < 0 || quality > 100) return qi_fail(err, QI_ERR_ARG, "quality %d: expected 1..100 (0: 95)", quality);
    if (quality) o->quality = quality;
    return QI_OK;
}

qi_status qi_image_encode(const qi_image *img, int index, qi_image_format fmt, int quality, const char *parameters,
                          uint8_t **bytes, size_t *len, char *errbuf, size_t errcap) {
    qi_error err;
    const uint8_t *rgb = NULL;
    qi_image_save_options o;
    if (!bytes || !len) return to_buf(qi_fail(&err, QI_ERR_ARG, "qi_image_encode: NULL output"), &err, errbuf, errcap);
    *bytes = NULL;
    *len = 0;
    qi_status st = image_pixels(img, index, &rgb, &err);
    if (!st) st = save_options(quality, &o, &err);
    if (!st) st = qi_image_encode_rgb(rgb, img->width, img->height, fmt, parameters, &o, bytes, len, &err);
    return to_buf(st, &err, errbuf, errcap);
}

qi_status qi_image_write(const qi_image *img, int index, const char *path, int quality, const char *parameters,
                         char *errbuf, size_t errcap) {
    qi_error err;
    const uint8_t *rgb = NULL;
    qi_image_save_options o;
    qi_status st = image_pixels(img, index, &rgb, &err);
    if (!st) st = save_options(quality, &o, &err);
    if (!st) st = qi_image_save(path, rgb, img->width, img->height, parameters, &o, &err);
    return to_buf(st, &err, errbuf, errcap);
}

qi_status qi_image_save_latents(const qi_image *img, const char *path, char *errbuf, size_t errcap) {
    qi_error err;
    qi_status st = QI_OK;
    if (!img || !img->latents || !path)
        st = qi_fail(&err, QI_ERR_ARG, "qi_image_save_latents: %s", path ? "no latents in the image" : "no path");
    qi_st_write_item item = {.name = "vae_in", .dtype = QI_F32, .ndim = 5};
    if (!st) {
        int64_t shape[5] = {img->count, QI_LATENT_CHANNELS, 1, img->height / 8, img->width / 8};
        memcpy(item.shape, shape, sizeof shape);
        item.data = img->latents;
        st = qi_st_write(path, &item, 1, &err);
    }
    return to_buf(st, &err, errbuf, errcap);
}

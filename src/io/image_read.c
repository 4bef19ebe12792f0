/*
 * image_read.c — pictures in (img2img and inpainting inputs): PNG, JPEG or
 * WebP, told apart by their first bytes, decoded to 8-bit RGB as PIL's
 * convert("RGB") would give them (alpha dropped, grey repeated, palette
 * expanded, 16-bit PNG samples by their high byte).
 */
#define _POSIX_C_SOURCE 200809L /* fmemopen */
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <webp/decode.h>

#include "io/image.h"

#define READ_MAX_SIDE 16384 /* the engine takes pictures up to this many pixels a side */
#define READ_MAX_BYTES ((long)1 << 30)

typedef struct jpeg_read_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg sees a jpeg_error_mgr */
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jpeg_read_ctx;

static void jpeg_read_on_error(j_common_ptr cinfo) {
    jpeg_read_ctx *c = (jpeg_read_ctx *)(void *)cinfo->err;
    c->pub.format_message(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

static void jpeg_read_on_message(j_common_ptr cinfo) { (void)cinfo; }

static qi_status jpeg_read_rgb(const char *path, FILE *fp, int max_side, uint8_t **rgb, int *w, int *h,
                               qi_error *err) {
    struct jpeg_decompress_struct cinfo;
    jpeg_read_ctx c;
    uint8_t *volatile out = NULL;
    memset(&c, 0, sizeof c);
    cinfo.err = jpeg_std_error(&c.pub);
    c.pub.error_exit = jpeg_read_on_error;
    c.pub.output_message = jpeg_read_on_message;
    if (setjmp(c.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(out);
        return qi_fail(err, QI_ERR_FORMAT, "%s: bad JPEG: %s", path, c.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, fp);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.image_width > (unsigned)max_side || cinfo.image_height > (unsigned)max_side) {
        jpeg_destroy_decompress(&cinfo);
        return qi_fail(err, QI_ERR_ARG, "%s: %ux%u pixels; pictures may be at most %dx%d", path, cinfo.image_width,
                       cinfo.image_height, max_side, max_side);
    }
    cinfo.out_color_space = JCS_RGB; /* grey and CMYK/YCCK converted by libjpeg */
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * 3;
    out = malloc(stride * cinfo.output_height + 1);
    if (!out) {
        jpeg_destroy_decompress(&cinfo);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %ux%u pixels", path, cinfo.output_width,
                       cinfo.output_height);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    *w = (int)cinfo.output_width;
    *h = (int)cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    *rgb = out;
    return QI_OK;
}

static qi_status webp_read_rgb(const char *path, FILE *fp, int max_side, uint8_t **rgb, int *w, int *h,
                               qi_error *err) {
    if (fseek(fp, 0, SEEK_END) != 0) return qi_fail(err, QI_ERR_IO, "%s: cannot read", path);
    long n = ftell(fp);
    if (n <= 0 || n > READ_MAX_BYTES) return qi_fail(err, QI_ERR_FORMAT, "%s: a WebP file of %ld bytes", path, n);
    uint8_t *data = malloc((size_t)n);
    if (!data) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    rewind(fp);
    if (fread(data, 1, (size_t)n, fp) != (size_t)n) {
        free(data);
        return qi_fail(err, QI_ERR_IO, "%s: short read", path);
    }
    qi_status st = QI_OK;
    if (!WebPGetInfo(data, (size_t)n, w, h)) st = qi_fail(err, QI_ERR_FORMAT, "%s: bad WebP header", path);
    else if (*w > max_side || *h > max_side)
        st = qi_fail(err, QI_ERR_ARG, "%s: %dx%d pixels; pictures may be at most %dx%d", path, *w, *h, max_side,
                     max_side);
    else if (!(*rgb = WebPDecodeRGB(data, (size_t)n, w, h)))
        st = qi_fail(err, QI_ERR_FORMAT, "%s: bad WebP data", path);
    free(data);
    if (st == QI_OK) { /* into our allocator's memory (callers free() it) */
        size_t bytes = (size_t)*w * *h * 3;
        uint8_t *own = malloc(bytes + 1);
        if (own) memcpy(own, *rgb, bytes);
        WebPFree(*rgb);
        *rgb = own;
        if (!own) st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    }
    return st;
}

/* Tells the format apart by its first bytes and decodes from fp (at its
 * start). A picture with a side over max_side is refused before its pixels
 * are allocated (PNG: by the IHDR chunk, always the first). */
static qi_status image_read_fp(const char *name, FILE *fp, int max_side, uint8_t **rgb, int *width, int *height,
                               qi_error *err) {
    *rgb = NULL;
    *width = *height = 0;
    unsigned char magic[24] = {0};
    size_t got = fread(magic, 1, sizeof magic, fp);
    rewind(fp);
    if (got >= 8 && !memcmp(magic, "\x89PNG\r\n\x1a\n", 8)) {
        uint32_t w = got >= 24 ? (uint32_t)magic[16] << 24 | magic[17] << 16 | magic[18] << 8 | magic[19] : 0;
        uint32_t h = got >= 24 ? (uint32_t)magic[20] << 24 | magic[21] << 16 | magic[22] << 8 | magic[23] : 0;
        if (w > (uint32_t)max_side || h > (uint32_t)max_side)
            return qi_fail(err, QI_ERR_ARG, "%s: %ux%u pixels; pictures may be at most %dx%d", name, (unsigned)w,
                           (unsigned)h, max_side, max_side);
        return qi_png_read_fp(name, fp, rgb, width, height, NULL, err);
    }
    if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
        return jpeg_read_rgb(name, fp, max_side, rgb, width, height, err);
    if (got >= 12 && !memcmp(magic, "RIFF", 4) && !memcmp(magic + 8, "WEBP", 4))
        return webp_read_rgb(name, fp, max_side, rgb, width, height, err);
    return qi_fail(err, QI_ERR_FORMAT, "%s: not a PNG, JPEG or WebP picture", name);
}

qi_status qi_image_read_rgb(const char *path, uint8_t **rgb, int *width, int *height, qi_error *err) {
    *rgb = NULL;
    *width = *height = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return qi_fail(err, QI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    qi_status st = image_read_fp(path, fp, READ_MAX_SIDE, rgb, width, height, err);
    fclose(fp);
    return st;
}

/* fmemopen gives the decoders (which read FILE streams) the bytes without a
 * temporary file. */
qi_status qi_image_read_rgb_mem(const char *name, const void *data, size_t size, int max_side, uint8_t **rgb,
                                int *width, int *height, qi_error *err) {
    *rgb = NULL;
    *width = *height = 0;
    if (!data || size == 0) return qi_fail(err, QI_ERR_FORMAT, "%s: empty; expected a PNG, JPEG or WebP picture", name);
    if (size > (size_t)READ_MAX_BYTES) return qi_fail(err, QI_ERR_ARG, "%s: %zu bytes is too large", name, size);
    FILE *fp = fmemopen((void *)data, size, "rb");
    if (!fp) return qi_fail(err, QI_ERR_NOMEM, "%s: cannot open %zu bytes as a stream: %s", name, size, strerror(errno));
    qi_status st = image_read_fp(name, fp, max_side > 0 && max_side < READ_MAX_SIDE ? max_side : READ_MAX_SIDE, rgb,
                                 width, height, err);
    fclose(fp);
    return st;
}

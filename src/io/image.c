/*
 * image.c — pixel conversion (diffusers postprocess) and PNG / JPEG / WebP
 * files through libpng, libjpeg and libwebp.
 *
 * It owns the write-to-temporary-then-rename discipline for every image file
 * the engine writes. It does not resize, nor read JPEG/WebP pixels (only PNG,
 * for tests and img2img-style inputs later); of a JPEG it reads the comment.
 *
 * libpng and libjpeg report errors by longjmp: every function that calls
 * setjmp keeps the state it changes afterwards in a context struct owned by
 * its caller, so nothing the cleanup reads is an indeterminate local.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/image.h"
#include "model/tokenizer.h" /* qi_utf8_first_invalid */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>
#include <webp/types.h>

#define PARAMETERS_KEY "parameters"

/* ---- pixels ---------------------------------------------------------------- */

/* clamp(x·0.5 + 0.5, 0, 1) in float32, as torch does (spec A.7); NaN passes. */
static inline float unit_of(float x) {
    float v = x * 0.5f + 0.5f; /* x·0.5 is exact, so a fused multiply-add rounds the same */
    if (v < 0.0f) v = 0.0f;
    if (v > 1.0f) v = 1.0f;
    return v;
}

void qi_rgb_to_unit(const float *rgb, int height, int width, float *out) {
    size_t plane = (size_t)height * width;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) out[p * 3 + c] = unit_of(rgb[c * plane + p]);
}

void qi_rgb_to_u8(const float *rgb, int height, int width, uint8_t *out) {
    size_t plane = (size_t)height * width;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float s = unit_of(rgb[c * plane + p]) * 255.0f; /* float32 multiply, as NumPy */
            /* NumPy's round is half-to-even: rint in the default rounding
             * mode, not roundf (half away from zero) */
            out[p * 3 + c] = s == s ? (uint8_t)nearbyintf(s) : 0;
        }
}

/* ---- formats --------------------------------------------------------------------- */

qi_status qi_image_format_of(const char *path, qi_image_format *out, qi_error *err) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    const char *ext = dot ? dot : "";
    if (!strcasecmp(ext, ".png"))
        *out = QI_IMAGE_PNG;
    else if (!strcasecmp(ext, ".jpg") || !strcasecmp(ext, ".jpeg"))
        *out = QI_IMAGE_JPEG;
    else if (!strcasecmp(ext, ".webp"))
        *out = QI_IMAGE_WEBP;
    else if (!*ext)
        return qi_fail(err, QI_ERR_ARG,
                       "%s: no image extension; name the file .png, .jpg, .jpeg or .webp", path);
    else
        return qi_fail(err, QI_ERR_ARG,
                       "%s: unknown image extension '%s'; use .png, .jpg, .jpeg or .webp", path, ext);
    return QI_OK;
}

qi_image_save_options qi_image_save_options_default(void) {
    return (qi_image_save_options){.quality = 95, .webp_lossless = 0};
}

/* ---- temporary file, renamed into place when complete -------------------------------- */

typedef struct tmp_file {
    char path[4200]; /* "<final path>.<pid>-<n>.tmp": same directory as the final file */
    FILE *fp;
} tmp_file;

static qi_status tmp_open(const char *path, tmp_file *t, qi_error *err) {
    t->fp = NULL;
    t->path[0] = 0;
    if (strlen(path) >= 4096) return qi_fail(err, QI_ERR_ARG, "output path too long: %.64s...", path);
    for (int n = 0; n < 100; n++) {
        snprintf(t->path, sizeof t->path, "%s.%ld-%d.tmp", path, (long)getpid(), n);
        int fd = open(t->path, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd < 0) {
            if (errno == EEXIST) continue;
            int e = errno;
            t->path[0] = 0;
            int dir_problem = e == ENOENT || e == ENOTDIR || e == EACCES || e == EPERM || e == EROFS;
            return qi_fail(err, QI_ERR_IO, "cannot write %s: %s%s", path, strerror(e),
                           dir_problem ? " (does its directory exist and is it writable?)" : "");
        }
        t->fp = fdopen(fd, "wb");
        if (!t->fp) {
            int e = errno;
            close(fd);
            unlink(t->path);
            t->path[0] = 0;
            return qi_fail(err, QI_ERR_IO, "cannot write %s: %s", path, strerror(e));
        }
        return QI_OK;
    }
    t->path[0] = 0;
    return qi_fail(err, QI_ERR_IO, "cannot write %s: no free temporary name beside it", path);
}

static void tmp_abort(tmp_file *t) {
    if (t->fp) fclose(t->fp);
    t->fp = NULL;
    if (t->path[0]) unlink(t->path);
    t->path[0] = 0;
}

/* Closes the temporary file (catching late write errors such as a full disk)
 * and renames it over path; on any failure it is removed. */
static qi_status tmp_commit(tmp_file *t, const char *path, qi_error *err) {
    /* fsync before the rename: after a crash the final name must never point
     * at a file whose data had not reached the disk */
    int bad = fflush(t->fp) != 0 || ferror(t->fp) || fsync(fileno(t->fp)) != 0;
    int e = errno;
    if (fclose(t->fp) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    t->fp = NULL;
    if (bad) {
        tmp_abort(t);
        return qi_fail(err, QI_ERR_IO, "error writing %s: %s", path, strerror(e));
    }
    if (rename(t->path, path) != 0) {
        e = errno;
        tmp_abort(t);
        return qi_fail(err, QI_ERR_IO, "cannot write %s: %s", path, strerror(e));
    }
    t->path[0] = 0;
    return QI_OK;
}

/* ---- PNG ------------------------------------------------------------------------------ */

typedef struct png_ctx {
    jmp_buf jmp;
    char msg[200];
    png_structp png;
    png_infop info, end_info;
    png_bytep *rows;
    struct byte_buf *out; /* png_write's destination */
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

/* A growing block of bytes the encoders write into. */
typedef struct byte_buf {
    uint8_t *data;
    size_t len, cap;
} byte_buf;

static int byte_buf_put(byte_buf *b, const void *src, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p) return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static void png_put_bytes(png_structp png, png_bytep data, png_size_t n) {
    png_ctx *c = png_get_error_ptr(png);
    if (byte_buf_put(c->out, data, n)) png_error(png, "out of memory");
}

static void png_flush_none(png_structp png) { (void)png; }

/* Encodes into c->out. Returns 0, or -1 with c->msg set. */
static int png_write(png_ctx *c, const uint8_t *rgb, int width, int height, const char *parameters) {
    c->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!c->png || !(c->info = png_create_info_struct(c->png))) {
        snprintf(c->msg, sizeof c->msg, "out of memory");
        png_destroy_write_struct(&c->png, NULL);
        return -1;
    }
    if (setjmp(c->jmp)) {
        png_destroy_write_struct(&c->png, &c->info);
        return -1;
    }
    png_set_write_fn(c->png, c, png_put_bytes, png_flush_none);
    png_set_IHDR(c->png, c->info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (parameters) {
        /* tEXt is Latin-1: UTF-8 text goes into iTXt, as PIL's add_text does */
        png_text text;
        memset(&text, 0, sizeof text);
        text.key = PARAMETERS_KEY;
        text.text = (char *)parameters;
        if (is_ascii(parameters)) {
            text.compression = PNG_TEXT_COMPRESSION_NONE;
            text.text_length = strlen(parameters);
        } else {
            text.compression = PNG_ITXT_COMPRESSION_NONE;
            text.itxt_length = strlen(parameters);
        }
        png_set_text(c->png, c->info, &text, 1);
    }
    png_write_info(c->png, c->info);
    for (int y = 0; y < height; y++) png_write_row(c->png, rgb + (size_t)y * width * 3);
    png_write_end(c->png, NULL);
    png_destroy_write_struct(&c->png, &c->info);
    return 0;
}

/* Copies the `parameters` text of info (if any) into *out (once). */
static void png_take_parameters(png_structp png, png_infop info, char **out) {
    png_textp texts;
    int n = 0;
    if (*out || !info || !png_get_text(png, info, &texts, &n)) return;
    for (int i = 0; i < n; i++)
        if (!strcmp(texts[i].key, PARAMETERS_KEY) && texts[i].text) {
            *out = strdup(texts[i].text);
            return;
        }
}

typedef struct png_read_out {
    uint8_t *rgb;
    int width, height;
    char *parameters;
} png_read_out;

#define PNG_CHUNK_MAX 8000000 /* bytes of one chunk, inflated text included */

static int png_read(png_ctx *c, FILE *fp, png_read_out *o, int want_parameters) {
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!c->png || !(c->info = png_create_info_struct(c->png)) ||
        !(c->end_info = png_create_info_struct(c->png))) {
        snprintf(c->msg, sizeof c->msg, "out of memory");
        png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
        return -1;
    }
    if (setjmp(c->jmp)) {
        png_destroy_read_struct(&c->png, &c->info, &c->end_info);
        return -1;
    }
    /* libpng's suggested caps: bytes of one chunk (a zTXt/iTXt's inflated
     * text included) and count of ancillary chunks. */
    /* the stream's size by seeking: a file and an fmemopen'd upload alike */
    long at = ftell(fp), end = fseek(fp, 0, SEEK_END) == 0 ? ftell(fp) : -1;
    if (at < 0 || fseek(fp, at, SEEK_SET) != 0) end = -1;
    long long file_size = end > 0 ? end : 0;
    png_set_chunk_malloc_max(c->png, PNG_CHUNK_MAX);
    png_set_chunk_cache_max(c->png, 1000);
    png_init_io(c->png, fp);
    png_read_info(c->png, c->info);
    png_uint_32 w = png_get_image_width(c->png, c->info), h = png_get_image_height(c->png, c->info);
    int depth = png_get_bit_depth(c->png, c->info), type = png_get_color_type(c->png, c->info);
    if (w > 65536 || h > 65536) {
        snprintf(c->msg, sizeof c->msg, "%ux%u pixels is larger than 65536x65536", (unsigned)w,
                 (unsigned)h);
        png_destroy_read_struct(&c->png, &c->info, &c->end_info);
        return -1;
    }
    /* Deflate expands at most 1032:1, so rows that need more than 1032 bytes
     * per byte of the file cannot be there: refused before the pixels are
     * allocated (a 60-byte file claiming 65536x65536 asked for 12 GiB). */
    uint64_t raw = (uint64_t)h * (1 + (uint64_t)png_get_rowbytes(c->png, c->info));
    if (raw / 1032 > (uint64_t)file_size) {
        snprintf(c->msg, sizeof c->msg,
                 "%ux%u pixels need %llu bytes of image data, more than a %lld-byte file can hold "
                 "(truncated or corrupt header)",
                 (unsigned)w, (unsigned)h, (unsigned long long)raw, file_size);
        png_destroy_read_struct(&c->png, &c->info, &c->end_info);
        return -1;
    }
    /* everything to 8-bit RGB */
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(c->png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(c->png);
    if (depth == 16) png_set_strip_16(c->png);
    if (type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(c->png);
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(c->png);
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    if (png_get_rowbytes(c->png, c->info) != (size_t)w * 3) {
        snprintf(c->msg, sizeof c->msg, "unexpected row layout after conversion to RGB");
        png_destroy_read_struct(&c->png, &c->info, &c->end_info);
        return -1;
    }
    o->width = (int)w;
    o->height = (int)h;
    o->rgb = malloc((size_t)w * h * 3 + 1);
    c->rows = malloc(sizeof(png_bytep) * (h ? h : 1));
    if (!o->rgb || !c->rows) {
        snprintf(c->msg, sizeof c->msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        png_destroy_read_struct(&c->png, &c->info, &c->end_info);
        return -1;
    }
    for (png_uint_32 y = 0; y < h; y++) c->rows[y] = o->rgb + (size_t)y * w * 3;
    png_read_image(c->png, c->rows);
    png_read_end(c->png, c->end_info);
    if (want_parameters) {
        png_take_parameters(c->png, c->info, &o->parameters);
        png_take_parameters(c->png, c->end_info, &o->parameters);
    }
    png_destroy_read_struct(&c->png, &c->info, &c->end_info);
    return 0;
}

/* Walks the chunk headers after the signature: 0 when every chunk lies
 * inside the file, else -1 with why. libpng 1.6 allocates what a text
 * chunk's length field claims (up to 2 GiB) before finding the file ends. */
static int png_chunks_fit(FILE *fp, char *why, size_t cap) {
    /* the stream's size by seeking (a file or fmemopen'd upload alike) */
    if (fseek(fp, 0, SEEK_END) != 0) return 0; /* libpng reports what follows */
    long end = ftell(fp);
    if (end < 0) return 0;
    uint64_t size = (uint64_t)end;
    uint64_t at = 8;
    unsigned char h[8];
    while (at + 8 <= size) {
        if (fseek(fp, (long)at, SEEK_SET) != 0 || fread(h, 1, 8, fp) != 8) return 0;
        uint64_t len = (uint64_t)h[0] << 24 | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 8 | h[3];
        if (at + 12 + len > size) {
            snprintf(why, cap, "chunk '%c%c%c%c' at byte %llu claims %llu bytes, past the end of the %lld-byte file "
                               "(truncated?)", isprint(h[4]) ? h[4] : '?', isprint(h[5]) ? h[5] : '?',
                     isprint(h[6]) ? h[6] : '?', isprint(h[7]) ? h[7] : '?', (unsigned long long)at,
                     (unsigned long long)len, (long long)size);
            return -1;
        }
        if (!memcmp(h + 4, "IEND", 4)) return 0;
        at += 12 + len;
    }
    return 0;
}

qi_status qi_png_read_fp(const char *name, FILE *fp, uint8_t **rgb, int *width, int *height, char **parameters,
                         qi_error *err) {
    *rgb = NULL;
    *width = *height = 0;
    if (parameters) *parameters = NULL;
    unsigned char sig[8];
    if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8)) return qi_fail(err, QI_ERR_FORMAT, "%s: not a PNG file", name);
    char why[160];
    if (png_chunks_fit(fp, why, sizeof why)) return qi_fail(err, QI_ERR_FORMAT, "%s: bad PNG: %s", name, why);
    rewind(fp);
    png_ctx c;
    memset(&c, 0, sizeof c);
    png_read_out o = {0};
    int rc = png_read(&c, fp, &o, parameters != NULL);
    free(c.rows);
    if (rc) {
        free(o.rgb);
        free(o.parameters);
        return qi_fail(err, QI_ERR_FORMAT, "%s: bad PNG: %s", name, c.msg);
    }
    *rgb = o.rgb;
    *width = o.width;
    *height = o.height;
    if (parameters) *parameters = o.parameters;
    return QI_OK;
}

qi_status qi_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters,
                      qi_error *err) {
    *rgb = NULL;
    *width = *height = 0;
    if (parameters) *parameters = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return qi_fail(err, QI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    qi_status st = qi_png_read_fp(path, fp, rgb, width, height, parameters, err);
    fclose(fp);
    return st;
}

/* ---- JPEG -------------------------------------------------------------------------------- */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg sees a jpeg_error_mgr */
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    struct jpeg_compress_struct cinfo;
    struct jpeg_destination_mgr dest;
    JOCTET chunk[1 << 16]; /* libjpeg fills this; it is appended to out when full and at the end */
    struct byte_buf *out;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_ctx *c = (jpeg_ctx *)(void *)cinfo->err;
    c->pub.format_message(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; } /* warnings: silent */

static jpeg_ctx *jpeg_ctx_of(j_compress_ptr cinfo) { return (jpeg_ctx *)(void *)cinfo->err; }

static void jpeg_dest_init(j_compress_ptr cinfo) {
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    c->dest.next_output_byte = c->chunk;
    c->dest.free_in_buffer = sizeof c->chunk;
}

/* Appends n bytes of the chunk to out; out of memory ends the encode as libjpeg's own errors do. */
static void jpeg_dest_put(jpeg_ctx *c, size_t n) {
    if (byte_buf_put(c->out, c->chunk, n)) {
        snprintf(c->msg, sizeof c->msg, "out of memory");
        longjmp(c->jmp, 1);
    }
}

static boolean jpeg_dest_empty(j_compress_ptr cinfo) {
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    jpeg_dest_put(c, sizeof c->chunk); /* libjpeg calls this with the whole chunk full */
    jpeg_dest_init(cinfo);
    return TRUE;
}

static void jpeg_dest_term(j_compress_ptr cinfo) {
    jpeg_ctx *c = jpeg_ctx_of(cinfo);
    jpeg_dest_put(c, sizeof c->chunk - c->dest.free_in_buffer);
}

/* Encodes into c->out. Returns 0, or -1 with c->msg set. */
static int jpeg_write(jpeg_ctx *c, const uint8_t *rgb, int width, int height, const char *parameters,
                      int quality) {
    c->cinfo.err = jpeg_std_error(&c->pub);
    c->pub.error_exit = jpeg_on_error;
    c->pub.output_message = jpeg_on_message;
    if (setjmp(c->jmp)) {
        jpeg_destroy_compress(&c->cinfo);
        return -1;
    }
    jpeg_create_compress(&c->cinfo);
    c->dest.init_destination = jpeg_dest_init;
    c->dest.empty_output_buffer = jpeg_dest_empty;
    c->dest.term_destination = jpeg_dest_term;
    c->cinfo.dest = &c->dest;
    c->cinfo.image_width = (JDIMENSION)width;
    c->cinfo.image_height = (JDIMENSION)height;
    c->cinfo.input_components = 3;
    c->cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c->cinfo);
    jpeg_set_quality(&c->cinfo, quality, TRUE);
    jpeg_start_compress(&c->cinfo, TRUE);
    /* a COM segment holds at most 65533 bytes: longer text spans several, cut
     * between characters, in order (qi_jpeg_read_comment joins them) */
    for (const char *p = parameters, *end = p ? p + strlen(p) : NULL; p && p < end;) {
        size_t n = (size_t)(end - p) > QI_JPEG_COMMENT_MAX ? QI_JPEG_COMMENT_MAX : (size_t)(end - p);
        while (p + n < end && n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80) n--; /* not inside a character */
        jpeg_write_marker(&c->cinfo, JPEG_COM, (const JOCTET *)p, (unsigned)n);
        p += n;
    }
    while (c->cinfo.next_scanline < c->cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c->cinfo.next_scanline * width * 3);
        jpeg_write_scanlines(&c->cinfo, &row, 1);
    }
    jpeg_finish_compress(&c->cinfo);
    jpeg_destroy_compress(&c->cinfo);
    return 0;
}

/* ---- encode and save --------------------------------------------------------------------------- */

static qi_status check_encode_args(const char *what, qi_image_format fmt, int width, int height,
                                   const qi_image_save_options *o, qi_error *err) {
    if (fmt != QI_IMAGE_PNG && fmt != QI_IMAGE_JPEG && fmt != QI_IMAGE_WEBP)
        return qi_fail(err, QI_ERR_ARG, "%s: unknown image format %d (expected PNG, JPEG or WebP)", what, (int)fmt);
    if (o->quality < 1 || o->quality > 100)
        return qi_fail(err, QI_ERR_ARG, "%s: quality %d is out of range 1..100", what, o->quality);
    int max_side = fmt == QI_IMAGE_WEBP ? WEBP_MAX_DIMENSION : fmt == QI_IMAGE_JPEG ? 65500 : 1 << 20;
    if (width < 1 || height < 1 || width > max_side || height > max_side)
        return qi_fail(err, QI_ERR_ARG, "%s: image size %dx%d is outside this format's 1..%d", what, width,
                       height, max_side);
    return QI_OK;
}

/* The parameters text must be UTF-8: PNG readers drop an iTXt chunk that is
 * not, and a JPEG comment that is not cannot be read back as text. */
static qi_status check_parameters(const char *what, const char *parameters, qi_error *err) {
    if (!parameters) return QI_OK;
    size_t bad = qi_utf8_first_invalid(parameters, strlen(parameters));
    if (bad != SIZE_MAX)
        return qi_fail(err, QI_ERR_ARG, "%s: the parameters text is not valid UTF-8 (byte %zu)", what, bad);
    return QI_OK;
}

/* The encoders without argument checks; msg gets the encoder's reason on failure. */
static int encode_any(const uint8_t *rgb, int width, int height, qi_image_format fmt, const char *parameters,
                      const qi_image_save_options *o, uint8_t **bytes, size_t *len, char *msg, size_t msg_cap) {
    int rc = 0;
    if (fmt == QI_IMAGE_PNG) {
        png_ctx *c = calloc(1, sizeof *c);
        byte_buf b = {0};
        if (c) c->out = &b;
        rc = c ? png_write(c, rgb, width, height, parameters) : -1;
        snprintf(msg, msg_cap, "%s", c ? c->msg : "out of memory");
        free(c);
        if (rc) free(b.data);
        *bytes = rc ? NULL : b.data;
        *len = rc ? 0 : b.len;
    } else if (fmt == QI_IMAGE_JPEG) {
        jpeg_ctx *c = calloc(1, sizeof *c);
        byte_buf b = {0};
        if (c) c->out = &b;
        rc = c ? jpeg_write(c, rgb, width, height, parameters, o->quality) : -1;
        snprintf(msg, msg_cap, "%s", c ? c->msg : "out of memory");
        free(c);
        if (rc) free(b.data);
        *bytes = rc ? NULL : b.data;
        *len = rc ? 0 : b.len;
    } else {
        uint8_t *data = NULL;
        size_t n = o->webp_lossless ? WebPEncodeLosslessRGB(rgb, width, height, width * 3, &data)
                                    : WebPEncodeRGB(rgb, width, height, width * 3, (float)o->quality, &data);
        /* libwebp's buffer is released with WebPFree: hand the caller a malloc'd copy */
        *bytes = n ? malloc(n) : NULL;
        if (*bytes) memcpy(*bytes, data, n);
        rc = *bytes ? 0 : -1;
        *len = rc ? 0 : n;
        snprintf(msg, msg_cap, "%s", n ? "out of memory" : "the WebP encoder failed");
        WebPFree(data);
    }
    return rc;
}

qi_status qi_image_encode_rgb(const uint8_t *rgb, int width, int height, qi_image_format fmt,
                              const char *parameters, const qi_image_save_options *opt, uint8_t **bytes,
                              size_t *len, qi_error *err) {
    *bytes = NULL;
    *len = 0;
    static const char *const names[] = {"PNG", "JPEG", "WebP"};
    const char *what = fmt >= QI_IMAGE_PNG && fmt <= QI_IMAGE_WEBP ? names[fmt] : "image";
    if (!rgb) return qi_fail(err, QI_ERR_ARG, "%s encoder: no pixels", what);
    qi_image_save_options o = opt ? *opt : qi_image_save_options_default();
    qi_status st = check_encode_args(what, fmt, width, height, &o, err);
    if (!st) st = check_parameters(what, parameters, err);
    if (st) return st;
    char msg[JMSG_LENGTH_MAX + 200];
    if (encode_any(rgb, width, height, fmt, parameters, &o, bytes, len, msg, sizeof msg))
        return qi_fail(err, QI_ERR_NOMEM, "%s encoder: %s", what, msg);
    return QI_OK;
}

qi_status qi_image_save(const char *path, const uint8_t *rgb, int width, int height,
                        const char *parameters, const qi_image_save_options *opt, qi_error *err) {
    if (!path || !rgb) return qi_fail(err, QI_ERR_ARG, "qi_image_save: NULL argument");
    qi_image_format fmt;
    qi_status st = qi_image_format_of(path, &fmt, err);
    if (st) return st;
    qi_image_save_options o = opt ? *opt : qi_image_save_options_default();
    if ((st = check_encode_args(path, fmt, width, height, &o, err))) return st;
    if ((st = check_parameters(path, parameters, err))) return st;

    tmp_file t;
    if ((st = tmp_open(path, &t, err))) return st;
    char msg[JMSG_LENGTH_MAX + 200] = "";
    uint8_t *bytes = NULL;
    size_t n = 0;
    int rc = encode_any(rgb, width, height, fmt, parameters, &o, &bytes, &n, msg, sizeof msg);
    if (!rc && fwrite(bytes, 1, n, t.fp) != n) rc = -1, snprintf(msg, sizeof msg, "%s", strerror(errno));
    free(bytes);
    if (rc) {
        tmp_abort(&t);
        return qi_fail(err, QI_ERR_IO, "error writing %s: %s", path, msg);
    }
    return tmp_commit(&t, path, err);
}

/* ---- JPEG comment ------------------------------------------------------------------------------ */

/* Walks the JPEG's marker segments up to the first scan, appending every COM
 * segment's bytes to *out (a malloc'd string; NULL when there is none). */
static qi_status jpeg_comments(FILE *f, const char *path, char **out, qi_error *err) {
    unsigned char h[4];
    size_t len = 0;
    if (fread(h, 1, 2, f) != 2 || h[0] != 0xFF || h[1] != 0xD8)
        return qi_fail(err, QI_ERR_FORMAT, "%s: not a JPEG file (no SOI marker)", path);
    for (;;) {
        if (fread(h, 1, 4, f) != 4 || h[0] != 0xFF)
            return qi_fail(err, QI_ERR_FORMAT, "%s: JPEG marker segments are cut short or malformed", path);
        size_t n = ((size_t)h[2] << 8 | h[3]);
        if (h[1] == 0xDA || h[1] == 0xD9 || n < 2) return QI_OK; /* start of scan: no metadata after it */
        n -= 2;
        if (h[1] != 0xFE) {
            if (fseek(f, (long)n, SEEK_CUR)) return qi_fail(err, QI_ERR_FORMAT, "%s: truncated JPEG", path);
            continue;
        }
        char *p = realloc(*out, len + n + 1);
        if (!p) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for the JPEG comment", path);
        *out = p;
        if (fread(p + len, 1, n, f) != n) return qi_fail(err, QI_ERR_FORMAT, "%s: truncated JPEG comment", path);
        len += n;
        p[len] = 0;
    }
}

qi_status qi_jpeg_read_comment(const char *path, char **text, qi_error *err) {
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qi_fail(err, QI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    qi_status st = jpeg_comments(f, path, text, err);
    fclose(f);
    if (st) {
        free(*text);
        *text = NULL;
    }
    return st;
}

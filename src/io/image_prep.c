/*
 * image_prep.c — Pillow's 8-bit Lanczos resize, the RGB → L conversion and
 * the pixel / mask conversions of the img2img and inpaint pipelines (see
 * image_prep.h for what each matches).
 */
#include "io/image_prep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANCZOS_SUPPORT 3.0
#define PI_D 3.14159265358979323846 /* M_PI, not C11 */
#define PREC_BITS 22 /* Pillow's PRECISION_BITS for 8-bit data: 32 − 8 − 2 */

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= PI_D;
    return sin(x) / x;
}

static double lanczos(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

/* The taps of one axis: for output o, source start bounds[2o], count
 * bounds[2o + 1] and fixed-point weights kk[o·ksize ...]. Pillow computes the
 * weights in double, normalises them to sum 1, then rounds each to 22
 * fraction bits (away from zero at .5). Returns ksize, 0 when out of memory. */
static int axis_taps(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = LANCZOS_SUPPORT * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = malloc(sizeof(double) * (size_t)ksize);
    int *bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    int32_t *kk = calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t));
    if (!w || !bounds || !kk) {
        free(w);
        free(bounds);
        free(kk);
        return 0;
    }
    for (int o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale, total = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = lanczos((x + xmin - center + 0.5) * ss);
            total += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            double k = total != 0.0 ? w[x] / total : w[x];
            kk[(size_t)o * ksize + x] = k < 0 ? (int32_t)(-0.5 + k * (1 << PREC_BITS)) : (int32_t)(0.5 + k * (1 << PREC_BITS));
        }
        bounds[2 * o] = xmin;
        bounds[2 * o + 1] = xmax;
    }
    free(w);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

static uint8_t clip8(int64_t v) {
    v >>= PREC_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* One pass along x (step = channels) or y (step = row bytes): out element
 * (o, rest) = Σ_k in[bounds[2o] + k] · kk[o][k], rounded half up. */
static void resample_rows(const uint8_t *in, int in_w, int ch, int rows, int out_w, const int *bounds,
                          const int32_t *kk, int ksize, uint8_t *out) {
    /* Rows are independent and the sums are integers: any split gives the same bytes. A 1024² picture
     * to the vision tower's 392² is ~26 M multiply-adds, ~20 ms on one core: part of every Edit request. */
#pragma omp parallel for schedule(static) if ((int64_t)rows * out_w * ksize > (1 << 16))
    for (int y = 0; y < rows; y++)
        for (int o = 0; o < out_w; o++) {
            const int32_t *k = kk + (size_t)o * ksize;
            for (int c = 0; c < ch; c++) {
                int64_t s = 1 << (PREC_BITS - 1);
                for (int x = 0; x < bounds[2 * o + 1]; x++)
                    s += (int64_t)in[((size_t)y * in_w + bounds[2 * o] + x) * ch + c] * k[x];
                out[((size_t)y * out_w + o) * ch + c] = clip8(s);
            }
        }
}

static void resample_cols(const uint8_t *in, int w, int ch, int out_h, const int *bounds, const int32_t *kk,
                          int ksize, int row0, uint8_t *out) {
    size_t stride = (size_t)w * ch;
#pragma omp parallel for schedule(static) if ((int64_t)out_h * (int64_t)stride * ksize > (1 << 16))
    for (int o = 0; o < out_h; o++) {
        const int32_t *k = kk + (size_t)o * ksize;
        for (size_t i = 0; i < stride; i++) {
            int64_t s = 1 << (PREC_BITS - 1);
            for (int y = 0; y < bounds[2 * o + 1]; y++) s += (int64_t)in[(size_t)(bounds[2 * o] - row0 + y) * stride + i] * k[y];
            out[(size_t)o * stride + i] = clip8(s);
        }
    }
}

qi_status qi_resize_lanczos_u8(const uint8_t *in, int in_w, int in_h, int channels, uint8_t *out, int out_w,
                               int out_h, qi_error *err) {
    if (in_w < 1 || in_h < 1 || out_w < 1 || out_h < 1 || in_w > 65536 || in_h > 65536 || out_w > 65536 ||
        out_h > 65536 || channels < 1 || channels > 4)
        return qi_fail(err, QI_ERR_ARG, "resize: %dx%d → %dx%d with %d channels is out of range (1..65536 pixels "
                       "a side, 1..4 channels)", in_w, in_h, out_w, out_h, channels);
    if (in_w == out_w && in_h == out_h) { /* PIL returns a copy */
        memcpy(out, in, (size_t)in_w * in_h * channels);
        return QI_OK;
    }
    int *bx = NULL, *by = NULL;
    int32_t *kx = NULL, *ky = NULL;
    int ksx = axis_taps(in_w, out_w, &bx, &kx), ksy = axis_taps(in_h, out_h, &by, &ky);
    uint8_t *tmp = NULL;
    qi_status st = QI_OK;
    if (!ksx || !ksy) {
        st = qi_fail(err, QI_ERR_NOMEM, "resize: out of memory for the filter taps");
        goto done;
    }
    int need_h = in_w != out_w, need_v = in_h != out_h;
    /* the horizontal pass covers only the source rows the vertical one reads */
    int row0 = need_v ? by[0] : 0, row1 = need_v ? by[2 * (out_h - 1)] + by[2 * (out_h - 1) + 1] : in_h;
    if (need_h && need_v) {
        tmp = malloc((size_t)out_w * (size_t)(row1 - row0) * channels);
        if (!tmp) {
            st = qi_fail(err, QI_ERR_NOMEM, "resize: out of memory for a %dx%d intermediate", out_w, row1 - row0);
            goto done;
        }
        resample_rows(in + (size_t)row0 * in_w * channels, in_w, channels, row1 - row0, out_w, bx, kx, ksx, tmp);
        resample_cols(tmp, out_w, channels, out_h, by, ky, ksy, row0, out);
    } else if (need_h) {
        resample_rows(in, in_w, channels, in_h, out_w, bx, kx, ksx, out);
    } else {
        resample_cols(in, in_w, channels, out_h, by, ky, ksy, 0, out);
    }
done:
    free(bx);
    free(by);
    free(kx);
    free(ky);
    free(tmp);
    return st;
}

void qi_rgb_to_luma_u8(const uint8_t *rgb, int64_t n, uint8_t *luma) {
    for (int64_t i = 0; i < n; i++)
        luma[i] = (uint8_t)(((uint32_t)rgb[3 * i] * 19595u + (uint32_t)rgb[3 * i + 1] * 38470u +
                             (uint32_t)rgb[3 * i + 2] * 7471u + 0x8000u) >> 16);
}

void qi_u8_to_vae_pixels(const uint8_t *rgb, int width, int height, float *out) {
    size_t n = (size_t)width * height;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < n; i++) out[c * n + i] = 2.0f * ((float)rgb[3 * i + c] / 255.0f) - 1.0f;
}

void qi_mask_binarize(const uint8_t *luma, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)luma[i] / 255.0f >= 0.5f ? 1.0f : 0.0f;
}

void qi_mask_apply(float *pixels, const float *mask, int width, int height) {
    size_t n = (size_t)width * height;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < n; i++) pixels[c * n + i] *= mask[i] < 0.5f ? 1.0f : 0.0f;
}

void qi_mask_to_latent_grid(const float *mask, int width, int height, int factor, int channels, float *out) {
    int h = height / factor, w = width / factor;
    float sy = (float)height / (float)h, sx = (float)width / (float)w;
    for (int i = 0; i < h; i++) {
        int y = (int)floorf((float)i * sy);
        if (y > height - 1) y = height - 1;
        for (int j = 0; j < w; j++) {
            int x = (int)floorf((float)j * sx);
            if (x > width - 1) x = width - 1;
            for (int c = 0; c < channels; c++) out[((size_t)c * h + i) * w + j] = mask[(size_t)y * width + x];
        }
    }
}

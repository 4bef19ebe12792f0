/*
 * resize_torch.c — torch's uint8 antialiased bicubic resize (see
 * resize_torch.h). Reference read: PyTorch UpSampleKernel.cpp
 * (_compute_indices_min_size_weights_aa, HelperInterpCubic::aa_filter,
 * _compute_index_ranges_int16_weights) and UpSampleKernelAVXAlgos.h
 * (ImagingResampleHorizontal / Vertical).
 */
#include "io/resize_torch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keys' cubic convolution kernel with a = −0.5 (torch's antialias filter). */
static double cubic_aa(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
    return 0.0;
}

/* One axis's taps: for output i, input [xmin[i], xmin[i] + xsize[i]) with
 * int16 weights k[i·ksize + j] of `*precision` fraction bits. */
typedef struct axis_taps {
    int ksize;
    int *xmin, *xsize;
    int16_t *k;
    unsigned precision;
} axis_taps;

static void taps_free(axis_taps *t) {
    free(t->xmin);
    free(t->xsize);
    free(t->k);
}

static int taps_make(int in, int out, axis_taps *t) {
    double scale = (double)in / (double)out;
    double support = scale >= 1.0 ? 4 * 0.5 * scale : 4 * 0.5;
    double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    t->ksize = (int)ceil(support) * 2 + 1;
    t->xmin = malloc((size_t)out * sizeof(int));
    t->xsize = malloc((size_t)out * sizeof(int));
    t->k = malloc((size_t)out * t->ksize * sizeof(int16_t));
    double *w = calloc((size_t)out * t->ksize, sizeof(double));
    if (!t->xmin || !t->xsize || !t->k || !w) {
        free(w);
        return -1;
    }
    double wt_max = 0.0;
    for (int i = 0; i < out; i++) {
        double center = scale * (i + 0.5), total = 0.0;
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int64_t n = hi - lo;
        if (n < 0) n = 0;
        if (n > t->ksize) n = t->ksize;
        t->xmin[i] = (int)lo;
        t->xsize[i] = (int)n;
        double *wi = w + (size_t)i * t->ksize;
        for (int j = 0; j < n; j++) total += (wi[j] = cubic_aa((j + lo - center + 0.5) * invscale));
        for (int j = 0; j < n && total != 0.0; j++) {
            wi[j] /= total;
            if (wi[j] > wt_max) wt_max = wi[j];
        }
    }
    unsigned p;
    for (p = 0; p < 22; p++)
        if ((int)(0.5 + wt_max * (1 << (p + 1))) >= (1 << 15)) break;
    t->precision = p;
    for (size_t j = 0; j < (size_t)out * t->ksize; j++) {
        double v = w[j] * (1 << p);
        t->k[j] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
    }
    free(w);
    return 0;
}

static uint8_t clip_shift(int32_t ss, unsigned p) {
    int32_t v = ss >> p; /* arithmetic: floor, as the kernel's srai */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Rows of `rows` pixels: in [rows, in_w, C] → out [rows, out_w, C]. */
static void pass_horizontal(const uint8_t *in, int rows, int in_w, int C, const axis_taps *t, int out_w, uint8_t *out) {
    for (int y = 0; y < rows; y++)
        for (int x = 0; x < out_w; x++) {
            const int16_t *k = t->k + (size_t)x * t->ksize;
            for (int c = 0; c < C; c++) {
                int32_t ss = t->precision ? 1 << (t->precision - 1) : 0;
                for (int j = 0; j < t->xsize[x]; j++)
                    ss += in[((size_t)y * in_w + t->xmin[x] + j) * C + c] * k[j];
                out[((size_t)y * out_w + x) * C + c] = clip_shift(ss, t->precision);
            }
        }
}

/* in [in_h, W, C] → out [out_h, W, C]. */
static void pass_vertical(const uint8_t *in, int W, int C, const axis_taps *t, int out_h, uint8_t *out) {
    size_t row = (size_t)W * C;
    for (int y = 0; y < out_h; y++) {
        const int16_t *k = t->k + (size_t)y * t->ksize;
        for (size_t i = 0; i < row; i++) {
            int32_t ss = t->precision ? 1 << (t->precision - 1) : 0;
            for (int j = 0; j < t->xsize[y]; j++) ss += in[(size_t)(t->xmin[y] + j) * row + i] * k[j];
            out[(size_t)y * row + i] = clip_shift(ss, t->precision);
        }
    }
}

qi_status qi_resize_bicubic_aa_u8(const uint8_t *in, int in_w, int in_h, int channels, uint8_t *out, int out_w,
                                  int out_h, qi_error *err) {
    if (!in || !out) return qi_fail(err, QI_ERR_ARG, "bicubic resize: NULL picture");
    if (channels < 1 || channels > 4 || in_w < 1 || in_h < 1 || out_w < 1 || out_h < 1 || in_w > 65536 ||
        in_h > 65536 || out_w > 65536 || out_h > 65536)
        return qi_fail(err, QI_ERR_ARG, "bicubic resize: %dx%d (%d channels) to %dx%d: sizes must be 1 … 65536, "
                       "channels 1 … 4", in_w, in_h, channels, out_w, out_h);
    axis_taps th = {0}, tv = {0};
    uint8_t *mid = NULL;
    int need_h = in_w != out_w, need_v = in_h != out_h, ok = 1;
    if (need_h) ok = taps_make(in_w, out_w, &th) == 0;
    if (ok && need_v) ok = taps_make(in_h, out_h, &tv) == 0;
    if (ok && need_h && need_v) ok = (mid = malloc((size_t)in_h * out_w * channels)) != NULL;
    if (!ok) {
        taps_free(&th);
        taps_free(&tv);
        return qi_fail(err, QI_ERR_NOMEM, "bicubic resize: out of memory (%dx%d to %dx%d)", in_w, in_h, out_w, out_h);
    }
    if (need_h && need_v) {
        pass_horizontal(in, in_h, in_w, channels, &th, out_w, mid);
        pass_vertical(mid, out_w, channels, &tv, out_h, out);
    } else if (need_h) {
        pass_horizontal(in, in_h, in_w, channels, &th, out_w, out);
    } else if (need_v) {
        pass_vertical(in, in_w, channels, &tv, out_h, out);
    } else {
        memcpy(out, in, (size_t)in_h * in_w * channels);
    }
    free(mid);
    taps_free(&th);
    taps_free(&tv);
    return QI_OK;
}

/*
 * quant.c — the quantisers (quant.h): per block, a fit that minimises the
 * squared error, then the packing of blocks.h's layouts in reverse.
 *
 * Fitting, one scheme for every type:
 *   - symmetric levels (Q8_0, Q4_0, Q5_0, the 16-element groups of Q6_K and
 *     Q3_K): y = d·q, q in [lo, hi]. Candidates put the element of largest
 *     magnitude on a level near either end; each candidate's q are refitted
 *     by least squares (d = Σxq / Σq²), re-rounded, and the one with the
 *     least squared error wins (fit_sym);
 *   - levels with an offset (Q4_1, Q5_1, the groups of Q4_K, Q5_K, Q2_K):
 *     y = d·q + b, q in [0, L]. Candidates spread [min, max] over L ± a
 *     fraction of a level; each is refitted by least squares in (d, b); for
 *     the K types b ≤ 0 (the stored minimum is subtracted: y = dl·q − ml,
 *     ml ≥ 0), so a positive b is clamped to 0 (fit_affine);
 *   - K types store each group's scale (and minimum) as a small integer times
 *     an f16 super-scale: the super-scale maps the largest group scale onto
 *     the top integer, each group's integers are moved by ±1 where that
 *     lowers its error as stored; then every element is rounded again against the
 *     scales as stored (f16 · integer, float32), so what is written is the
 *     best q for what the dequantiser computes.
 * f16 fields are rounded to nearest even (qi_f32_to_f16).
 *
 * Compiled with -ffp-contract=off, like types.c: the final re-rounding
 * computes dl = d·sc and ml = dmin·m as the dequantiser does.
 */
#include "base/quant.h"

#include <math.h>

#include "base/types.h"

#define CANDIDATES 16 /* per fit: enough that more changes the RMSE by < 0.1% (dev/quant) */

/* ---- helpers --------------------------------------------------------------- */

static inline float f16_round(float x) { return qi_f16_to_f32(qi_f32_to_f16(x)); }

static inline void put_f16(uint8_t *p, float x) {
    uint16_t h = qi_f32_to_f16(x);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

/* round(v) clamped to [lo, hi]; NaN (0/0) → lo. */
static inline int qround(float v, int lo, int hi) {
    float r = nearbyintf(v);
    if (!(r >= (float)lo)) return lo;
    if (r > (float)hi) return hi;
    return (int)r;
}

/* Σ (x − d·q(x))² with q = round(x / d) in [lo, hi]; also Σxq, Σq². */
static double sym_pass(const float *x, int n, float d, int lo, int hi, double *sxq, double *sqq) {
    double err = 0, a = 0, b = 0;
    for (int i = 0; i < n; i++) {
        int q = d != 0 ? qround(x[i] / d, lo, hi) : 0;
        double e = (double)x[i] - (double)d * q;
        err += e * e;
        a += (double)x[i] * q;
        b += (double)q * q;
    }
    if (sxq) *sxq = a, *sqq = b;
    return err;
}

/* The d of y = d·q (q in [lo, hi], lo < 0 < hi) with the least squared
 * error over n values; 0 when all are zero. */
static float fit_sym(const float *x, int n, int lo, int hi) {
    float amax = 0, m = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), m = x[i];
    if (amax == 0) return 0;
    float best_d = m / (float)hi;
    double best = sym_pass(x, n, best_d, lo, hi, NULL, NULL);
    for (int side = 0; side < 2; side++) {
        float end = side ? (float)hi : (float)lo;
        for (int k = 0; k < CANDIDATES; k++) {
            /* the largest value on level end·(1 − k/(3·CANDIDATES)): from the
             * end level to two thirds of it, where clipping starts to pay */
            float t = end * (1.0f - (float)k / (3.0f * CANDIDATES));
            double sxq, sqq;
            sym_pass(x, n, m / t, lo, hi, &sxq, &sqq);
            if (sqq == 0) continue;
            float d = (float)(sxq / sqq);
            double e = sym_pass(x, n, d, lo, hi, NULL, NULL);
            if (e < best) best = e, best_d = d;
        }
    }
    return best_d;
}

/* Σ (x − (d·q + b))² with q = round((x − b) / d) in [0, L]. Also the sums a
 * least-squares refit needs: Σq, Σq², Σx, Σxq. */
static double affine_pass(const float *x, int n, float d, float b, int L, double s[4]) {
    double err = 0, sq = 0, sqq = 0, sx = 0, sxq = 0;
    for (int i = 0; i < n; i++) {
        int q = d > 0 ? qround((x[i] - b) / d, 0, L) : 0;
        double e = (double)x[i] - ((double)d * q + b);
        err += e * e;
        sq += q, sqq += (double)q * q, sx += x[i], sxq += (double)x[i] * q;
    }
    if (s) s[0] = sq, s[1] = sqq, s[2] = sx, s[3] = sxq;
    return err;
}

/* The (d ≥ 0, b) of y = d·q + b, q in [0, L], with the least squared error;
 * b ≤ 0 when nonpos_b (the K types subtract a non-negative minimum). */
static void fit_affine(const float *x, int n, int L, int nonpos_b, float *d_out, float *b_out) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    if (nonpos_b && lo > 0) lo = 0;
    *d_out = 0, *b_out = lo;
    if (!(hi > lo)) return;
    float best_d = (hi - lo) / (float)L, best_b = lo;
    double best = affine_pass(x, n, best_d, best_b, L, NULL);
    for (int k = 0; k < CANDIDATES; k++) {
        /* [lo, hi] spread over L − 0.5 … L + 1 levels */
        float d0 = (hi - lo) / ((float)L - 0.5f + 1.5f * (float)k / CANDIDATES), s0 = lo;
        double s[4];
        affine_pass(x, n, d0, s0, L, s);
        double det = n * s[1] - s[0] * s[0];
        if (det <= 0) continue;
        double d = (n * s[3] - s[0] * s[2]) / det, b = (s[2] - d * s[0]) / n;
        if (nonpos_b && b > 0) b = 0, d = s[3] / s[1];
        if (!(d > 0)) continue;
        double e = affine_pass(x, n, (float)d, (float)b, L, NULL);
        if (e < best) best = e, best_d = (float)d, best_b = (float)b;
    }
    *d_out = best_d, *b_out = best_b;
}

/* ---- 32-element blocks ----------------------------------------------------- */

/* Q8_0: d f16, qs i8[32]. */
static void q8_0_block(const float *x, uint8_t *b) {
    float d = f16_round(fit_sym(x, 32, -128, 127));
    put_f16(b, d);
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)(d != 0 ? qround(x[i] / d, -128, 127) : 0);
}

/* Nibbles: element j < 16 in the low half of byte j, j + 16 in the high half. */
static void pack_nibbles(const int *q, uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
}

/* Fifth bits: bit i of the little-endian u32 qh is bit 4 of element i. */
static void pack_fifth_bits(const int *q, uint8_t *qh) {
    for (int k = 0; k < 4; k++) qh[k] = 0;
    for (int i = 0; i < 32; i++) qh[i >> 3] |= (uint8_t)(((q[i] >> 4) & 1) << (i & 7));
}

/* Q4_0 (bits 4, 18 bytes) and Q5_0 (bits 5, 22 bytes): y = (q − 2^(bits−1))·d. */
static void qx_0_block(const float *x, uint8_t *b, int bits) {
    int half = 1 << (bits - 1), q[32];
    float d = f16_round(fit_sym(x, 32, -half, half - 1));
    put_f16(b, d);
    for (int i = 0; i < 32; i++) q[i] = (d != 0 ? qround(x[i] / d, -half, half - 1) : 0) + half;
    if (bits == 5) pack_fifth_bits(q, b + 2);
    pack_nibbles(q, b + (bits == 5 ? 6 : 2));
}

/* Q4_1 / Q5_1: d, m f16; y = q·d + m, q in [0, 2^bits − 1]. */
static void qx_1_block(const float *x, uint8_t *b, int bits) {
    int L = (1 << bits) - 1, q[32];
    float d, m;
    fit_affine(x, 32, L, 0, &d, &m);
    d = f16_round(d), m = f16_round(m);
    put_f16(b, d);
    put_f16(b + 2, m);
    for (int i = 0; i < 32; i++) q[i] = d > 0 ? qround((x[i] - m) / d, 0, L) : 0;
    if (bits == 5) pack_fifth_bits(q, b + 4);
    pack_nibbles(q, b + (bits == 5 ? 8 : 4));
}

/* ---- 256-element K blocks -------------------------------------------------- */

/* The f16 super-scale and integer sub-scales [0, top] for n group values
 * v ≥ 0: the largest lands on `top`. */
static float k_scales_unsigned(const float *v, int n, int top, int *out) {
    float vmax = 0;
    for (int j = 0; j < n; j++) vmax = fmaxf(vmax, v[j]);
    float d = f16_round(vmax / (float)top);
    for (int j = 0; j < n; j++) out[j] = d > 0 ? qround(v[j] / d, 0, top) : 0;
    return d;
}

/* Squared error of a group of n under the stored y = dl·q − ml, q in [0, L]
 * rounded against exactly those values. */
static double group_err(const float *x, int n, float dl, float ml, int lo, int hi) {
    double e = 0;
    for (int i = 0; i < n; i++) {
        int q = dl != 0 ? qround((x[i] + ml) / dl, lo, hi) : 0;
        float y = dl * (float)q - ml;
        e += ((double)x[i] - y) * ((double)x[i] - y);
    }
    return e;
}

/* The integer scale (and minimum, when mn is given) of one group moved by
 * ±1 where that lowers the group's error as stored: rounding each scale on
 * its own is not the best pair once both are integers. */
static void refine_group(const float *x, int n, float d, float dmin, int lo, int hi, int top_lo, int top,
                         int *sc, int *mn) {
    int best_s = *sc, best_m = mn ? *mn : 0;
    double best = group_err(x, n, d * (float)best_s, dmin * (float)best_m, lo, hi);
    for (int ds = -1; ds <= 1; ds++)
        for (int dm = mn ? -1 : 0; dm <= (mn ? 1 : 0); dm++) {
            int s = *sc + ds, m = (mn ? *mn : 0) + dm;
            if ((ds == 0 && dm == 0) || s < top_lo || s > top || m < 0 || m > top) continue;
            double e = group_err(x, n, d * (float)s, dmin * (float)m, lo, hi);
            if (e < best) best = e, best_s = s, best_m = m;
        }
    *sc = best_s;
    if (mn) *mn = best_m;
}

/* Q4_K (five_bit 0, 144 bytes) and Q5_K (1, 176 bytes): 8 groups of 32,
 * y = (d·sc)·q − dmin·mn with six-bit sc, mn. */
static void qk_block(const float *x, uint8_t *b, int five_bit) {
    int L = five_bit ? 31 : 15, sc[8], mn[8];
    float gd[8], gm[8];
    for (int j = 0; j < 8; j++) {
        float d, off;
        fit_affine(x + 32 * j, 32, L, 1, &d, &off);
        gd[j] = d, gm[j] = -off;
    }
    float d = k_scales_unsigned(gd, 8, 63, sc), dmin = k_scales_unsigned(gm, 8, 63, mn);
    for (int j = 0; j < 8; j++) refine_group(x + 32 * j, 32, d, dmin, 0, L, 0, 63, &sc[j], &mn[j]);
    put_f16(b, d);
    put_f16(b + 2, dmin);
    uint8_t *scales = b + 4;
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) { /* the inverse of qb_k_scale_min */
        if (j < 4) {
            scales[j] |= (uint8_t)sc[j];
            scales[j + 4] |= (uint8_t)mn[j];
        } else {
            scales[j + 4] = (uint8_t)((sc[j] & 15) | (mn[j] & 15) << 4);
            scales[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            scales[j] |= (uint8_t)((mn[j] >> 4) << 6);
        }
    }
    uint8_t *qh = b + 16, *qs = b + (five_bit ? 48 : 16);
    if (five_bit) memset(qh, 0, 32);
    memset(qs, 0, 128);
    for (int j = 0; j < 8; j++) {
        float dl = d * (float)sc[j], ml = dmin * (float)mn[j];
        for (int l = 0; l < 32; l++) {
            int q = dl > 0 ? qround((x[32 * j + l] + ml) / dl, 0, L) : 0;
            qs[32 * (j / 2) + l] |= (uint8_t)((q & 15) << (j % 2 ? 4 : 0));
            if (five_bit) qh[l] |= (uint8_t)(((q >> 4) & 1) << j);
        }
    }
}

/* Q2_K, 84 bytes: 16 groups of 16, four-bit sc and mn,
 * y = (d·sc)·q − dmin·mn, q in [0, 3]. */
static void q2_k_block(const float *x, uint8_t *b) {
    int sc[16], mn[16];
    float gd[16], gm[16];
    for (int g = 0; g < 16; g++) {
        float d, off;
        fit_affine(x + 16 * g, 16, 3, 1, &d, &off);
        gd[g] = d, gm[g] = -off;
    }
    float d = k_scales_unsigned(gd, 16, 15, sc), dmin = k_scales_unsigned(gm, 16, 15, mn);
    for (int k = 0; k < 16; k++) refine_group(x + 16 * k, 16, d, dmin, 0, 3, 0, 15, &sc[k], &mn[k]);
    /* group k = 8h + 2g + s covers elements 128h + 32g + 16s + [0, 16) = 16k + [0, 16) */
    for (int k = 0; k < 16; k++) b[k] = (uint8_t)(sc[k] | mn[k] << 4);
    memset(b + 16, 0, 64);
    for (int i = 0; i < 256; i++) {
        int k = i >> 4, h = i >> 7, g = (i >> 5) & 3, s = (i >> 4) & 1, l = i & 15;
        float dl = d * (float)sc[k], ml = dmin * (float)mn[k];
        int q = dl > 0 ? qround((x[i] + ml) / dl, 0, 3) : 0;
        b[16 + 32 * h + 16 * s + l] |= (uint8_t)(q << (2 * g));
    }
    put_f16(b + 80, d);
    put_f16(b + 82, dmin);
}

/* Signed group scales: the f16 super-scale and integers in [−top, top]. */
static float k_scales_signed(const float *v, int n, int top, int *out) {
    float vmax = 0;
    for (int j = 0; j < n; j++) vmax = fmaxf(vmax, fabsf(v[j]));
    float d = f16_round(vmax / (float)top);
    for (int j = 0; j < n; j++) out[j] = d > 0 ? qround(v[j] / d, -top, top) : 0;
    return d;
}

/* Q6_K, 210 bytes: 16 groups of 16, int8 scales, y = (d·sc)·q, q in [−32, 31]. */
static void q6_k_block(const float *x, uint8_t *b) {
    int sc[16];
    float gs[16];
    for (int g = 0; g < 16; g++) gs[g] = fit_sym(x + 16 * g, 16, -32, 31);
    float d = k_scales_signed(gs, 16, 127, sc);
    for (int k = 0; k < 16; k++) refine_group(x + 16 * k, 16, d, 0, -32, 31, -127, 127, &sc[k], NULL);
    memset(b, 0, 192);
    for (int k = 0; k < 16; k++) b[192 + k] = (uint8_t)(int8_t)sc[k];
    put_f16(b + 208, d);
    /* element i = 128h + 32k + l is in group i / 16 = 8h + 2k + l / 16 */
    for (int i = 0; i < 256; i++) {
        int h = i >> 7, k = (i >> 5) & 3, l = i & 31;
        float dl = d * (float)sc[i >> 4];
        int q = (dl != 0 ? qround(x[i] / dl, -32, 31) : 0) + 32;
        b[64 * h + l + 32 * (k % 2)] |= (uint8_t)((q & 15) << (k < 2 ? 0 : 4));
        b[128 + 32 * h + l] |= (uint8_t)((q >> 4) << (2 * k));
    }
}

/* Q3_K, 110 bytes: 16 groups of 16, six-bit signed scales (stored + 32),
 * y = (d·sc)·q, q in [−4, 3] stored as q + 4: two bits in qs, the third in
 * hmask. */
static void q3_k_block(const float *x, uint8_t *b) {
    int sc[16];
    float gs[16];
    for (int g = 0; g < 16; g++) gs[g] = fit_sym(x + 16 * g, 16, -4, 3);
    float d = k_scales_signed(gs, 16, 31, sc);
    for (int k = 0; k < 16; k++) refine_group(x + 16 * k, 16, d, 0, -4, 3, -32, 31, &sc[k], NULL);
    memset(b, 0, 108);
    uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
    for (int k = 0; k < 16; k++) { /* the inverse of qb_q3_k_scale */
        int u = sc[k] + 32;
        if (k < 8) scales[k] |= (uint8_t)(u & 15);
        else scales[k - 8] |= (uint8_t)((u & 15) << 4);
        scales[8 + k % 4] |= (uint8_t)((u >> 4) << (2 * (k / 4)));
    }
    for (int i = 0; i < 256; i++) {
        int h = i >> 7, g = (i >> 5) & 3, t = i & 31;
        float dl = d * (float)sc[i >> 4];
        int q = (dl != 0 ? qround(x[i] / dl, -4, 3) : 0) + 4;
        qs[32 * h + t] |= (uint8_t)((q & 3) << (2 * g));
        if (q & 4) hmask[t] |= (uint8_t)(1 << (4 * h + g));
    }
    put_f16(b + 108, d);
}

/* ---- float8 ---------------------------------------------------------------- */

uint8_t qi_f32_to_f8e4m3(float f) {
    if (isnan(f)) return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7e;
    if (a < 0.015625f) /* below 2^-6: subnormal steps of 2^-9 (8 → the smallest normal, 0x08) */
        return sign | (uint8_t)nearbyintf(a * 512.0f);
    int e;
    float m = frexpf(a, &e); /* a = m · 2^e, m in [0.5, 1) */
    int man = (int)nearbyintf((m * 2.0f - 1.0f) * 8.0f), exp = e - 1 + 7;
    if (man == 8) man = 0, exp++;
    if (exp > 15 || (exp == 15 && man == 7)) return sign | 0x7e; /* 464 and up round onto 448 */
    return sign | (uint8_t)(exp << 3 | man);
}

void qi_quantize_f8e4m3(const float *src, uint8_t *dst, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) dst[i] = qi_f32_to_f8e4m3(src[i] / scale);
}

/* ---- entry ----------------------------------------------------------------- */

int qi_quant_supported(qi_dtype t) {
    switch (t) {
    case QI_F32: case QI_F16: case QI_BF16: case QI_Q4_0: case QI_Q4_1: case QI_Q5_0:
    case QI_Q5_1: case QI_Q8_0: case QI_Q2_K: case QI_Q3_K: case QI_Q4_K: case QI_Q5_K:
    case QI_Q6_K:
        return 1;
    default:
        return 0;
    }
}

/* A block that decodes worse than all zeros (f16 scales that underflow on
 * values near 1e-7) is written as zeros: every block type decodes all-zero
 * bytes to 0. */
static void zero_if_worse(qi_dtype t, const float *x, uint8_t *b) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    float y[256];
    tt->to_f32(b, y, tt->block_elems);
    double e = 0, z = 0;
    for (int64_t i = 0; i < tt->block_elems; i++) e += ((double)y[i] - x[i]) * ((double)y[i] - x[i]), z += (double)x[i] * x[i];
    if (e > z) memset(b, 0, tt->block_bytes);
}

int qi_quantize(qi_dtype t, const float *src, void *dst, int64_t n) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    if (!qi_quant_supported(t) || !tt || n < 0 || n % tt->block_elems) return -1;
    uint8_t *o = dst;
    int64_t nb = n / tt->block_elems;
    for (int64_t k = 0; k < nb; k++, src += tt->block_elems, o += tt->block_bytes) {
        switch (t) {
        case QI_F32: memcpy(o, src, 4); break;
        case QI_F16: put_f16(o, src[0]); break;
        case QI_BF16: {
            uint16_t h = qi_f32_to_bf16(src[0]);
            o[0] = (uint8_t)(h & 0xff), o[1] = (uint8_t)(h >> 8);
            break;
        }
        case QI_Q8_0: q8_0_block(src, o); break;
        case QI_Q4_0: qx_0_block(src, o, 4); break;
        case QI_Q5_0: qx_0_block(src, o, 5); break;
        case QI_Q4_1: qx_1_block(src, o, 4); break;
        case QI_Q5_1: qx_1_block(src, o, 5); break;
        case QI_Q2_K: q2_k_block(src, o); break;
        case QI_Q3_K: q3_k_block(src, o); break;
        case QI_Q4_K: qk_block(src, o, 0); break;
        case QI_Q5_K: qk_block(src, o, 1); break;
        case QI_Q6_K: q6_k_block(src, o); break;
        default: return -1;
        }
        if (tt->block_elems > 1) zero_if_worse(t, src, o);
    }
    return 0;
}

/*
 * types.c — the type-traits table, element conversions (f16, bf16, f8) and
 * the dequantisation of every GGUF block type.
 *
 * Block layouts and formulas: spec vae-and-formats.md §B.7.2. Each formula is
 * evaluated in float32 in the order written there, one rounding per
 * operation; this file is compiled with -ffp-contract=off so no multiply-add
 * is fused (a fused `d·q − m` rounds once and differs in the last bit).
 * Integers (quant values, 6-bit scales) convert to float exactly.
 *
 * Blocks are read byte by byte: a block of 18 or 210 bytes is not aligned
 * for its f16 fields, and the mapping behind it may be anywhere.
 */
#include "base/types.h"

#include <math.h>
#include <stdio.h>

/* ---- element conversions ----------------------------------------------- */

float qi_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        float f = ldexpf((float)man, -24); /* zero or subnormal: exact */
        return sign ? -f : f;
    }
    if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t qi_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (a < 6.103515625e-05f) {                          /* subnormal half: RNE in units of 2^-24 */
        float q = a * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)nearbyintf(q));
    }
    uint32_t mag = u & 0x7fffffffu;
    uint32_t exp = (mag >> 23) - 112, man = mag & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float qi_f8e4m3_to_f32(uint8_t v) {
    /* e4m3fn: bias 7, no infinities, 0x7f/0xff are NaN */
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float f;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) f = ldexpf((float)man, -9);
    else f = ldexpf((float)(8 + man), (int)exp - 10);
    return sign ? -f : f;
}

float qi_f8e5m2_to_f32(uint8_t v) { return qi_f16_to_f32((uint16_t)((uint16_t)v << 8)); }

/* f16 / bf16 stored little-endian at p (any alignment). */
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline float half_at(const uint8_t *p) { return qi_f16_to_f32(le16(p)); }

static void f32_row(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void f16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = half_at(s + 2 * i);
}

static void bf16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = qi_bf16_to_f32(le16(s + 2 * i));
}

static void f8e4m3_row(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = qi_f8e4m3_to_f32(s[i]);
}

static void f8e5m2_row(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = qi_f8e5m2_to_f32(s[i]);
}

/* ---- 32-element blocks --------------------------------------------------- */

/* Q8_0, 34 bytes: d f16, qs i8[32].  y[i] = d · qs[i] */
static void q8_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 32; k++, b += 34, dst += 32) {
        float d = half_at(b);
        for (int i = 0; i < 32; i++) dst[i] = d * (float)(int8_t)b[2 + i];
    }
}

/* Q4_0, 18 bytes: d f16, qs u8[16].  y[j] = (lo − 8) · d, y[j+16] = (hi − 8) · d */
static void q4_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 32; k++, b += 18, dst += 32) {
        float d = half_at(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((qs[j] & 15) - 8) * d;
            dst[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

/* Q4_1, 20 bytes: d f16, m f16, qs u8[16].  y = q · d + m */
static void q4_1_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 32; k++, b += 20, dst += 32) {
        float d = half_at(b), m = half_at(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(qs[j] & 15) * d + m;
            dst[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

/* The 32 five-bit values of a Q5 block: low nibbles of qs, fifth bit from
 * the little-endian u32 qh (bit j for element j). */
static void q5_values(const uint8_t *qh4, const uint8_t *qs, int q[32]) {
    uint32_t qh = (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 |
                  (uint32_t)qh4[3] << 24;
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        q[j + 16] = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
    }
}

/* Q5_0, 22 bytes: d f16, qh u8[4], qs u8[16].  y = (q − 16) · d */
static void q5_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 32; k++, b += 22, dst += 32) {
        float d = half_at(b);
        int q[32];
        q5_values(b + 2, b + 6, q);
        for (int i = 0; i < 32; i++) dst[i] = (float)(q[i] - 16) * d;
    }
}

/* Q5_1, 24 bytes: d f16, m f16, qh u8[4], qs u8[16].  y = q · d + m */
static void q5_1_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 32; k++, b += 24, dst += 32) {
        float d = half_at(b), m = half_at(b + 2);
        int q[32];
        q5_values(b + 4, b + 8, q);
        for (int i = 0; i < 32; i++) dst[i] = (float)q[i] * d + m;
    }
}

/* ---- 256-element K blocks ------------------------------------------------- */

/* Q2_K, 84 bytes: scales u8[16], qs u8[64], d f16, dmin f16.
 * i = 128h + 32g + 16s + l; sc = scales[8h + 2g + s];
 * q = (qs[32h + 16s + l] >> 2g) & 3;  y = (d · (sc & 15)) · q − dmin · (sc >> 4) */
static void q2_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 256; k++, b += 84, dst += 256) {
        const uint8_t *scales = b, *qs = b + 16;
        float d = half_at(b + 80), dmin = half_at(b + 82);
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 4; g++)
                for (int s = 0; s < 2; s++) {
                    int sc = scales[8 * h + 2 * g + s];
                    float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
                    float *y = dst + 128 * h + 32 * g + 16 * s;
                    for (int l = 0; l < 16; l++)
                        y[l] = dl * (float)((qs[32 * h + 16 * s + l] >> (2 * g)) & 3) - ml;
                }
    }
}

/* Q3_K's 16 signed six-bit scales from its 12 packed bytes. */
static void q3_k_scales(const uint8_t *scales, int out[16]) {
    for (int k = 0; k < 16; k++) {
        int lo = k < 8 ? scales[k] & 15 : scales[k - 8] >> 4;
        int hi = (scales[8 + (k % 4)] >> (2 * (k / 4))) & 3;
        out[k] = (lo | hi << 4) - 32;
    }
}

/* Q3_K, 110 bytes: hmask u8[32], qs u8[64], scales u8[12], d f16.
 * i = 128h + 32g + 16s + l, t = 16s + l;
 * q = ((qs[32h + t] >> 2g) & 3) − (hmask bit (4h + g) of byte t ? 0 : 4);
 * y = (d · S[8h + 2g + s]) · q */
static void q3_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / 256; k++, b += 110, dst += 256) {
        const uint8_t *hmask = b, *qs = b + 32;
        float d = half_at(b + 108);
        int S[16];
        q3_k_scales(b + 96, S);
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 4; g++)
                for (int s = 0; s < 2; s++) {
                    float dl = d * (float)S[8 * h + 2 * g + s];
                    float *y = dst + 128 * h + 32 * g + 16 * s;
                    for (int l = 0; l < 16; l++) {
                        int t = 16 * s + l;
                        int q = ((qs[32 * h + t] >> (2 * g)) & 3) -
                                (((hmask[t] >> (4 * h + g)) & 1) ? 0 : 4);
                        y[l] = dl * (float)q;
                    }
                }
    }
}

/* Q4_K / Q5_K: the 8 (scale, min) pairs packed in 12 bytes, six bits each. */
static void k_scale_min(const uint8_t *scales, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *mn = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
        *mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* Q4_K (144 bytes: d, dmin f16, scales u8[12], qs u8[128]) and Q5_K (176
 * bytes: the same plus qh u8[32] before qs). i = 32j + l;
 * b = qs[32·(j/2) + l]; q = j even ? b & 15 : b >> 4; Q5_K: q += 16·((qh[l] >> j) & 1);
 * y = (d · sc_j) · q − dmin · mn_j */
static void qk_row(const uint8_t *b, float *dst, int64_t n, int five_bit) {
    size_t block_bytes = five_bit ? 176 : 144;
    for (int64_t k = 0; k < n / 256; k++, b += block_bytes, dst += 256) {
        float d = half_at(b), dmin = half_at(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (five_bit ? 48 : 16);
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            k_scale_min(scales, j, &sc, &mn);
            float dl = d * (float)sc, ml = dmin * (float)mn;
            for (int l = 0; l < 32; l++) {
                int byte = qs[32 * (j / 2) + l];
                int q = (j % 2 == 0) ? byte & 15 : byte >> 4;
                if (five_bit) q += 16 * ((qh[l] >> j) & 1);
                dst[32 * j + l] = dl * (float)q - ml;
            }
        }
    }
}

static void q4_k_row(const void *src, float *dst, int64_t n) { qk_row(src, dst, n, 0); }
static void q5_k_row(const void *src, float *dst, int64_t n) { qk_row(src, dst, n, 1); }

/* Q6_K, 210 bytes: ql u8[128], qh u8[64], scales i8[16], d f16.
 * i = 128h + 32k + l; b = ql[64h + l + 32·(k mod 2)]; lo = k < 2 ? b & 15 : b >> 4;
 * hi = (qh[32h + l] >> 2k) & 3; q = (lo | hi << 4) − 32;
 * y = (d · scales[8h + 2k + l/16]) · q */
static void q6_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *b = src;
    for (int64_t blk = 0; blk < n / 256; blk++, b += 210, dst += 256) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        float d = half_at(b + 208);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < 32; l++) {
                    int byte = ql[64 * h + l + 32 * (k % 2)];
                    int lo = k < 2 ? byte & 15 : byte >> 4;
                    int hi = (qh[32 * h + l] >> (2 * k)) & 3;
                    int q = (lo | hi << 4) - 32;
                    float dl = d * (float)scales[8 * h + 2 * k + l / 16];
                    dst[128 * h + 32 * k + l] = dl * (float)q;
                }
    }
}

/* ---- the table ------------------------------------------------------------ */

static const qi_dtype_traits traits[QI_DTYPE_COUNT] = {
    /*           name   block bytes float ggml to_f32 */
    [QI_F32] = {"F32", 1, 4, 1, 0, f32_row},
    [QI_F16] = {"F16", 1, 2, 1, 1, f16_row},
    [QI_BF16] = {"BF16", 1, 2, 1, 30, bf16_row},
    [QI_F8_E4M3] = {"F8_E4M3", 1, 1, 1, -1, f8e4m3_row},
    [QI_F8_E5M2] = {"F8_E5M2", 1, 1, 1, -1, f8e5m2_row},
    [QI_I32] = {"I32", 1, 4, 0, 26, NULL},
    [QI_I64] = {"I64", 1, 8, 0, 27, NULL},
    [QI_U8] = {"U8", 1, 1, 0, -1, NULL},
    [QI_Q4_0] = {"Q4_0", 32, 18, 1, 2, q4_0_row},
    [QI_Q4_1] = {"Q4_1", 32, 20, 1, 3, q4_1_row},
    [QI_Q5_0] = {"Q5_0", 32, 22, 1, 6, q5_0_row},
    [QI_Q5_1] = {"Q5_1", 32, 24, 1, 7, q5_1_row},
    [QI_Q8_0] = {"Q8_0", 32, 34, 1, 8, q8_0_row},
    [QI_Q2_K] = {"Q2_K", 256, 84, 1, 10, q2_k_row},
    [QI_Q3_K] = {"Q3_K", 256, 110, 1, 11, q3_k_row},
    [QI_Q4_K] = {"Q4_K", 256, 144, 1, 12, q4_k_row},
    [QI_Q5_K] = {"Q5_K", 256, 176, 1, 13, q5_k_row},
    [QI_Q6_K] = {"Q6_K", 256, 210, 1, 14, q6_k_row},
};

const qi_dtype_traits *qi_type_traits(qi_dtype t) {
    return (unsigned)t < QI_DTYPE_COUNT ? &traits[t] : NULL;
}

int qi_dtype_is_block(qi_dtype t) { return (unsigned)t < QI_DTYPE_COUNT && traits[t].block_elems > 1; }
int qi_dtype_is_float(qi_dtype t) { return (unsigned)t < QI_DTYPE_COUNT && traits[t].to_f32; }

/* Element size; 0 for block types, which have none (see qi_row_bytes). */
size_t qi_dtype_size(qi_dtype t) {
    return (unsigned)t < QI_DTYPE_COUNT && traits[t].block_elems == 1 ? traits[t].block_bytes : 0;
}

const char *qi_dtype_name(qi_dtype t) { return (unsigned)t < QI_DTYPE_COUNT ? traits[t].name : "?"; }

int64_t qi_row_bytes(qi_dtype t, int64_t n) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    if (!tt || n < 0 || n % tt->block_elems != 0) return -1;
    int64_t blocks = n / tt->block_elems;
    if (blocks > INT64_MAX / (int64_t)tt->block_bytes) return -1;
    return blocks * (int64_t)tt->block_bytes;
}

qi_status qi_shape_bytes(qi_dtype t, int ndim, const int64_t *shape, size_t *out,
                         const char *what, qi_error *err) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    *out = 0;
    if (!tt) return qi_fail(err, QI_ERR_ARG, "%s: invalid dtype %d", what, (int)t);
    if (ndim < 0) return qi_fail(err, QI_ERR_ARG, "%s: negative ndim %d", what, ndim);
    int64_t last = ndim ? shape[ndim - 1] : 1, rows = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return qi_fail(err, QI_ERR_ARG, "%s: dim %d is negative (%lld)", what, i,
                           (long long)shape[i]);
        if (i == ndim - 1) break;
        if (shape[i] != 0 && rows > INT64_MAX / shape[i])
            return qi_fail(err, QI_ERR_FORMAT, "%s: overflows a 64-bit element count", what);
        rows *= shape[i];
    }
    int64_t row = qi_row_bytes(t, last);
    if (row < 0 && last % tt->block_elems != 0)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: a %s row must be a whole number of %lld-element blocks, but the last "
                       "dim is %lld",
                       what, tt->name, (long long)tt->block_elems, (long long)last);
    if (row < 0 || (row != 0 && rows > INT64_MAX / row) || (uint64_t)(rows * row) > SIZE_MAX)
        return qi_fail(err, QI_ERR_FORMAT, "%s: overflows a 64-bit byte count", what);
    *out = (size_t)(rows * row);
    return QI_OK;
}

int qi_to_f32(float *dst, const void *src, qi_dtype t, size_t n) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    if (!tt || !tt->to_f32 || n > (size_t)INT64_MAX || (int64_t)n % tt->block_elems != 0) return -1;
    tt->to_f32(src, dst, (int64_t)n);
    return 0;
}

/* ---- ggml type ids ------------------------------------------------------- */

/* Every id the spec lists (§B.7.2), for messages about the unsupported ones. */
static const char *const ggml_names[] = {
    [0] = "F32",      [1] = "F16",     [2] = "Q4_0",     [3] = "Q4_1",    [6] = "Q5_0",
    [7] = "Q5_1",     [8] = "Q8_0",    [9] = "Q8_1",     [10] = "Q2_K",   [11] = "Q3_K",
    [12] = "Q4_K",    [13] = "Q5_K",   [14] = "Q6_K",    [15] = "Q8_K",   [16] = "IQ2_XXS",
    [17] = "IQ2_XS",  [18] = "IQ3_XXS", [19] = "IQ1_S",  [20] = "IQ4_NL", [21] = "IQ3_S",
    [22] = "IQ2_S",   [23] = "IQ4_XS", [24] = "I8",      [25] = "I16",    [26] = "I32",
    [27] = "I64",     [28] = "F64",    [29] = "IQ1_M",   [30] = "BF16",   [34] = "TQ1_0",
    [35] = "TQ2_0",
};

const char *qi_ggml_type_name(int ggml_type) {
    if (ggml_type < 0 || ggml_type >= (int)QI_ARRAY_LEN(ggml_names)) return NULL;
    return ggml_names[ggml_type];
}

int qi_dtype_from_ggml(int ggml_type, qi_dtype *out) {
    if (ggml_type < 0) return -1;
    for (int t = 0; t < QI_DTYPE_COUNT; t++)
        if (traits[t].ggml_type == ggml_type) {
            *out = (qi_dtype)t;
            return 0;
        }
    return -1;
}

const char *qi_ggml_supported_list(void) {
    return "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, I32, I64";
}

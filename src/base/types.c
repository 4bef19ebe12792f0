/*
 * types.c — the type-traits table, element conversions (f16, bf16, f8) and
 * the dequantisation of every GGUF block type.
 *
 * The block formulas live in blocks.h (shared with the CUDA backend); this
 * file is compiled with -ffp-contract=off so no multiply-add is fused there
 * (a fused `d·q − m` rounds once and differs in the last bit).
 */
#include "base/types.h"

#include "base/blocks.h"

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

/* ---- block types ---------------------------------------------------------- */

/* A row of whole blocks through the per-element formulas of blocks.h, which
 * the CUDA backend compiles too: one implementation of each type. */
#define BLOCK_ROW(fn, elems, bytes, value)                                   \
    static void fn(const void *src, float *dst, int64_t n) {                 \
        const uint8_t *b = src;                                              \
        for (int64_t k = 0; k < n / (elems); k++, b += (bytes), dst += (elems)) \
            for (int i = 0; i < (elems); i++) dst[i] = value(b, i);          \
    }

BLOCK_ROW(q8_0_row, 32, 34, qb_q8_0)
BLOCK_ROW(q4_0_row, 32, 18, qb_q4_0)
BLOCK_ROW(q4_1_row, 32, 20, qb_q4_1)
BLOCK_ROW(q5_0_row, 32, 22, qb_q5_0)
BLOCK_ROW(q5_1_row, 32, 24, qb_q5_1)
BLOCK_ROW(q2_k_row, 256, 84, qb_q2_k)
BLOCK_ROW(q3_k_row, 256, 110, qb_q3_k)
BLOCK_ROW(q4_k_row, 256, 144, qb_q4_k)
BLOCK_ROW(q5_k_row, 256, 176, qb_q5_k)
BLOCK_ROW(q6_k_row, 256, 210, qb_q6_k)

/* ---- the table ------------------------------------------------------------ */

static const qi_dtype_traits traits[QI_DTYPE_COUNT] = {
    /*           name   block bytes float ggml to_f32  f16 d, m fields */
    [QI_F32] = {"F32", 1, 4, 1, 0, f32_row, {-1, -1}},
    [QI_F16] = {"F16", 1, 2, 1, 1, f16_row, {-1, -1}},
    [QI_BF16] = {"BF16", 1, 2, 1, 30, bf16_row, {-1, -1}},
    [QI_F8_E4M3] = {"F8_E4M3", 1, 1, 1, -1, f8e4m3_row, {-1, -1}},
    [QI_F8_E5M2] = {"F8_E5M2", 1, 1, 1, -1, f8e5m2_row, {-1, -1}},
    [QI_I32] = {"I32", 1, 4, 0, 26, NULL, {-1, -1}},
    [QI_I64] = {"I64", 1, 8, 0, 27, NULL, {-1, -1}},
    [QI_U8] = {"U8", 1, 1, 0, -1, NULL, {-1, -1}},
    [QI_Q4_0] = {"Q4_0", 32, 18, 1, 2, q4_0_row, {0, -1}},
    [QI_Q4_1] = {"Q4_1", 32, 20, 1, 3, q4_1_row, {0, 2}},
    [QI_Q5_0] = {"Q5_0", 32, 22, 1, 6, q5_0_row, {0, -1}},
    [QI_Q5_1] = {"Q5_1", 32, 24, 1, 7, q5_1_row, {0, 2}},
    [QI_Q8_0] = {"Q8_0", 32, 34, 1, 8, q8_0_row, {0, -1}},
    [QI_Q2_K] = {"Q2_K", 256, 84, 1, 10, q2_k_row, {80, 82}},
    [QI_Q3_K] = {"Q3_K", 256, 110, 1, 11, q3_k_row, {108, -1}},
    [QI_Q4_K] = {"Q4_K", 256, 144, 1, 12, q4_k_row, {0, 2}},
    [QI_Q5_K] = {"Q5_K", 256, 176, 1, 13, q5_k_row, {0, 2}},
    [QI_Q6_K] = {"Q6_K", 256, 210, 1, 14, q6_k_row, {208, -1}},
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

/*
 * rng.c — torch-identical Gaussian noise on the CPU (spec: text-and-noise.md §4).
 *
 * Owns the MT19937 engine and the three CPU `normal_` kernels of torch
 * (float32 AVX2 16-block, generic 16-block for bf16/f16, scalar double for
 * n < 16), and a CPU recomputation of the CUDA generator (Philox4x32-10 +
 * cuRAND's Box–Muller).
 *
 * This file is compiled with -ffp-contract=off (CMakeLists.txt): every float
 * operation below is rounded on its own, and the multiply-adds that torch's
 * build fuses are written as fmaf() explicitly. Do not "simplify" the
 * arithmetic: the order of operations is the specification.
 */
#include "sample/rng.h"

#include <math.h>
#include <stdlib.h>

/* ======================================================================== */
/* MT19937 (§4.2)                                                            */
/* ======================================================================== */

enum { MT_N = 624, MT_M = 397 };

void qi_mt19937_seed(qi_mt19937 *mt, uint32_t seed) {
    mt->state[0] = seed;
    for (uint32_t j = 1; j < MT_N; j++) {
        uint32_t prev = mt->state[j - 1];
        mt->state[j] = 1812433253u * (prev ^ (prev >> 30)) + j;
    }
    mt->pos = MT_N; /* the first draw regenerates the block */
}

static void mt19937_twist(qi_mt19937 *mt) {
    for (int k = 0; k < MT_N; k++) {
        uint32_t y = (mt->state[k] & 0x80000000u) | (mt->state[(k + 1) % MT_N] & 0x7FFFFFFFu);
        uint32_t mixed = mt->state[(k + MT_M) % MT_N] ^ (y >> 1);
        mt->state[k] = (y & 1u) ? mixed ^ 0x9908B0DFu : mixed;
    }
    mt->pos = 0;
}

uint32_t qi_mt19937_next32(qi_mt19937 *mt) {
    if (mt->pos >= MT_N) mt19937_twist(mt);
    uint32_t y = mt->state[mt->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C5680u;
    y ^= (y << 15) & 0xEFC60000u;
    y ^= y >> 18;
    return y;
}

uint64_t qi_mt19937_next64(qi_mt19937 *mt) {
    uint64_t hi = qi_mt19937_next32(mt);
    uint64_t lo = qi_mt19937_next32(mt);
    return (hi << 32) | lo;
}

/* ======================================================================== */
/* Element types: uniforms and rounding                                     */
/* ======================================================================== */

/* RNE of a float to the element type, returned as float (identity for f32). */
static float round_to(qi_dtype dtype, float x) {
    switch (dtype) {
    case QI_BF16: return qi_bf16_to_f32(qi_f32_to_bf16(x));
    case QI_F16: return qi_f16_to_f32(qi_f32_to_f16(x));
    default: return x;
    }
}

/* torch's uniform_real for [0, 1): keep the low `digits` bits of one 32-bit
 * draw and scale (exact). float32 24 bits, bf16 8 bits, f16 11 bits. */
static float uniform01(qi_mt19937 *mt, qi_dtype dtype) {
    uint32_t r = qi_mt19937_next32(mt);
    switch (dtype) {
    case QI_BF16: return (float)(r & 0xFFu) * 0x1p-8f;
    case QI_F16: return (float)(r & 0x7FFu) * 0x1p-11f;
    default: return (float)(r & 0xFFFFFFu) * 0x1p-24f;
    }
}

/* ======================================================================== */
/* float32 16-block kernel, x86 AVX2 flavour (§4.4)                         */
/* ======================================================================== */

/* Cephes-style polynomials of avx_mathfun.h, float32, fused where GCC fuses. */
static const float SQRTHF = 0.707106781186547524f;
static const float LP[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                            -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                            2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
static const float LQ1 = -2.12194440e-4f;
static const float LQ2 = 0.693359375f;
static const float FOPI = 1.27323954473516f; /* 4/pi */
static const float DP1 = 0.78515625f;
static const float DP2 = 2.4187564849853515625e-4f;
static const float DP3 = 3.77489497744594108e-8f;
static const float SP0 = -1.9515295891E-4f, SP1 = 8.3321608736E-3f, SP2 = -1.6666654611E-1f;
static const float CP0 = 2.443315711809948E-5f, CP1 = -1.388731625493765E-3f,
                   CP2 = 4.166664568298827E-2f;
static const float TWO_PI_F = 6.28318530717958647692f; /* float32(2 pi) = 0x40C90FDB */

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
static float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* log256_ps for one lane; x > 0 and normal (x >= 2^-24 here). */
static float avx_log(float x) {
    uint32_t bits = f32_bits(x);
    float e = (float)((int32_t)(bits >> 23) - 127) + 1.0f;
    float m = f32_from_bits((bits & 0x807FFFFFu) | 0x3F000000u); /* [0.5, 1) */
    if (m < SQRTHF) {
        e = e - 1.0f;
        m = (m - 1.0f) + m;
    } else {
        m = m - 1.0f;
    }
    float z = m * m;
    float y = LP[0];
    for (int k = 1; k < 9; k++) y = fmaf(y, m, LP[k]);
    float t = y * m;
    y = fmaf(t, z, e * LQ1);
    y = y - z * 0.5f;
    return (m + y) + e * LQ2;
}

/* sincos256_ps for one lane; x >= 0. */
static void avx_sincos(float x, float *sin_out, float *cos_out) {
    int32_t j = (int32_t)(x * FOPI); /* truncation, as cvttps */
    j = (j + 1) & ~1;
    float yf = (float)j;
    x = fmaf(yf, -DP1, x);
    x = fmaf(yf, -DP2, x);
    x = fmaf(yf, -DP3, x);
    float z = x * x;

    float c = fmaf(fmaf(CP0, z, CP1), z, CP2);
    float t = c * z;
    c = fmaf(t, z, -(z * 0.5f));
    c = c + 1.0f;

    float s = fmaf(fmaf(SP0, z, SP1), z, SP2);
    t = s * z;
    s = fmaf(t, x, x);

    float sn = s, cs = c;
    if ((j & 2) != 0) {
        sn = c;
        cs = s;
    }
    if ((j & 4) != 0) sn = -sn;
    if (((j - 2) & 4) == 0) cs = -cs;
    *sin_out = sn;
    *cos_out = cs;
}

/* normal_fill_16_AVX2 on d[0..16): lanes j = 0..7 pair d[j] (radius) with
 * d[j+8] (angle). "+ 0" is torch's `value·std + mean`: it turns -0 into +0. */
static void block16_f32_avx2(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * avx_log(u1));
        float theta = TWO_PI_F * u2;
        float sn, cs;
        avx_sincos(theta, &sn, &cs);
        d[j] = radius * cs + 0.0f;
        d[j + 8] = radius * sn + 0.0f;
    }
}

/* ======================================================================== */
/* Generic 16-block kernel for bf16 / f16 (§4.6)                            */
/* ======================================================================== */

/* Every step of torch's scalar_t arithmetic rounds to the element type T.
 * The transcendental functions are evaluated in double and rounded (a
 * correctly rounded float result in practice; glibc's logf/cosf/sinf give the
 * same values after bf16/f16 rounding). */
static void block16_generic(float *d, qi_dtype dtype) {
    const double two_pi = 6.283185307179586; /* 2.0f * c10::pi<double> */
    for (int j = 0; j < 8; j++) {
        float u1 = round_to(dtype, 1.0f - d[j]);
        float u2 = d[j + 8];
        float log_u1 = round_to(dtype, (float)log((double)u1));
        float minus_two_log = round_to(dtype, -2.0f * log_u1);
        float radius = round_to(dtype, sqrtf(minus_two_log));
        float theta = round_to(dtype, (float)(two_pi * (double)u2));
        float cs = round_to(dtype, (float)cos((double)theta));
        float sn = round_to(dtype, (float)sin((double)theta));
        d[j] = round_to(dtype, round_to(dtype, round_to(dtype, radius * cs) * 1.0f) + 0.0f);
        d[j + 8] = round_to(dtype, round_to(dtype, round_to(dtype, radius * sn) * 1.0f) + 0.0f);
    }
}

/* ======================================================================== */
/* torch.randn on the CPU generator                                         */
/* ======================================================================== */

void qi_cpu_generator_seed(qi_cpu_generator *g, uint64_t seed) {
    qi_mt19937_seed(&g->mt, (uint32_t)(seed & 0xFFFFFFFFu));
    g->has_cached_normal = 0;
    g->cached_normal = 0.0;
}

/* The scalar kernel's normal(): two 53-bit uniforms, Box–Muller in double,
 * the second value kept in the generator (§4.5). */
static double scalar_normal(qi_cpu_generator *g) {
    if (g->has_cached_normal) {
        g->has_cached_normal = 0;
        return g->cached_normal * 1.0 + 0.0;
    }
    const uint64_t mask53 = (UINT64_C(1) << 53) - 1;
    double u1 = (double)(qi_mt19937_next64(&g->mt) & mask53) * 0x1p-53;
    double u2 = (double)(qi_mt19937_next64(&g->mt) & mask53) * 0x1p-53;
    double radius = sqrt(-2.0 * log1p(-u2)); /* u2 feeds the radius, u1 the angle */
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->cached_normal = radius * sin(theta);
    g->has_cached_normal = 1;
    return radius * cos(theta) * 1.0 + 0.0;
}

qi_status qi_cpu_generator_randn(qi_cpu_generator *g, qi_dtype dtype, int64_t n, float *out,
                                 qi_error *err) {
    if (dtype != QI_F32 && dtype != QI_BF16 && dtype != QI_F16)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "randn on the CPU generator: dtype %s is not supported (use F32, BF16 or "
                       "F16)",
                       qi_dtype_name(dtype));
    if (n < 0) return qi_fail(err, QI_ERR_ARG, "randn: negative element count %lld", (long long)n);
    if (n > 0 && !out) return qi_fail(err, QI_ERR_ARG, "randn: output buffer is NULL");

    if (n < 16) { /* scalar double kernel, element by element */
        for (int64_t i = 0; i < n; i++) out[i] = round_to(dtype, (float)scalar_normal(g));
        return QI_OK;
    }

    /* 16-block kernels: all uniforms first, then the blocks in place. */
    for (int64_t i = 0; i < n; i++) out[i] = uniform01(&g->mt, dtype);
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        if (dtype == QI_F32)
            block16_f32_avx2(out + i);
        else
            block16_generic(out + i, dtype);
    }
    if (n % 16 != 0) {
        /* Tail: 16 fresh uniforms over the last 16 slots, overwriting part of
         * the last full block, transformed as one block. */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform01(&g->mt, dtype);
        if (dtype == QI_F32)
            block16_f32_avx2(tail);
        else
            block16_generic(tail, dtype);
    }
    return QI_OK;
}

qi_status qi_randn_cpu(uint64_t seed, qi_dtype dtype, int64_t n, float *out, qi_error *err) {
    qi_cpu_generator *g = malloc(sizeof *g);
    if (!g) return qi_fail(err, QI_ERR_NOMEM, "randn: out of memory for the generator state");
    qi_cpu_generator_seed(g, seed);
    qi_status st = qi_cpu_generator_randn(g, dtype, n, out, err);
    free(g);
    return st;
}

/* ======================================================================== */
/* CUDA generator: Philox4x32-10 + cuRAND Box–Muller (§4.7)                 */
/* ======================================================================== */

void qi_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

enum { PHILOX_BLOCK = 256, PHILOX_UNROLL = 4 };

int64_t qi_philox_grid(int64_t n, int64_t grid_cap) {
    if (grid_cap <= 0) grid_cap = QI_PHILOX_GRID_H200;
    int64_t grid = (n + PHILOX_BLOCK - 1) / PHILOX_BLOCK;
    if (grid > grid_cap) grid = grid_cap;
    return grid < 1 ? 1 : grid;
}

uint64_t qi_philox_offset_increment(int64_t n, int64_t grid_cap) {
    int64_t stride = qi_philox_grid(n, grid_cap) * PHILOX_BLOCK;
    if (n < 1) n = 1;
    return (uint64_t)(((n - 1) / (stride * PHILOX_UNROLL) + 1) * PHILOX_UNROLL);
}

/* cuRAND's _curand_box_muller with accurate sin/cos (the GPU uses __sincosf,
 * which is where the CPU and GPU values part by up to ~2.3e-6). Returns the
 * pair (sine value, cosine value): the first element uses the sine. */
static void philox_box_muller(uint32_t x, uint32_t y, float *first, float *second) {
    const float inv_2pow32 = 0x1p-32f;
    const float inv_2pow32_2pi = f32_from_bits(0x30C90FDBu); /* float(2^-32 * float(2 pi)) */
    float u = fmaf((float)x, inv_2pow32, inv_2pow32 / 2.0f); /* (0, 1] */
    float v = fmaf((float)y, inv_2pow32_2pi, inv_2pow32_2pi / 2.0f);
    float s = sqrtf(-2.0f * logf(u));
    *first = (float)sin((double)v) * s;
    *second = (float)cos((double)v) * s;
}

void qi_randn_philox_cpu(uint64_t seed, uint64_t offset, int64_t n, int64_t grid_blocks,
                         qi_dtype dtype, float *out) {
    if (n <= 0 || !out) return;
    const int64_t stride = qi_philox_grid(n, grid_blocks) * PHILOX_BLOCK;
    const int64_t draws = (int64_t)(qi_philox_offset_increment(n, grid_blocks) / PHILOX_UNROLL);
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint64_t first_counter = offset / 4;

    /* Thread t's draw k yields elements t + k·4·stride + q·stride, q = 0..3;
     * threads past the last element still exist but write nothing. */
    for (int64_t t = 0; t < stride && t < n; t++) {
        for (int64_t k = 0; k < draws; k++) {
            uint64_t ctr64 = first_counter + (uint64_t)k;
            uint32_t counter[4] = {(uint32_t)ctr64, (uint32_t)(ctr64 >> 32), (uint32_t)t,
                                   (uint32_t)((uint64_t)t >> 32)};
            uint32_t bits[4];
            qi_philox4x32_10(counter, key, bits);
            float normal[4];
            philox_box_muller(bits[0], bits[1], &normal[0], &normal[1]);
            philox_box_muller(bits[2], bits[3], &normal[2], &normal[3]);
            for (int q = 0; q < 4; q++) {
                int64_t e = t + k * 4 * stride + q * stride;
                if (e < n) out[e] = round_to(dtype, normal[q] * 1.0f + 0.0f);
            }
        }
    }
}

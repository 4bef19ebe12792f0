/*
 * blocks.h — element i of a GGUF quantised block, as one formula per type,
 * shared by the host (types.c: the row-to-float32 functions of the type
 * traits) and the CUDA backend (weights kept in their file type on the
 * device, dequantised there). One implementation, two compilers.
 *
 * Block layouts and formulas: spec vae-and-formats.md §B.7.2. Each formula is
 * evaluated in float32 in the order written there with one rounding per
 * operation: the host compiles types.c with -ffp-contract=off, and device
 * code uses the _rn intrinsics, which nvcc never fuses into a multiply-add
 * (a fused `d·q − m` rounds once and differs in the last bit). So the device
 * gives the host's values bit for bit. Integers (quant values, six-bit
 * scales) convert to float exactly.
 *
 * Blocks are read byte by byte: a block of 18 or 210 bytes is not aligned
 * for its f16 fields, and the mapping behind it may be anywhere.
 *
 *     const uint8_t *blk = row + (i / 256) * 144;           // a Q4_K row
 *     float y = qb_q4_k(blk, (int)(i % 256));
 */
#ifndef QI_BLOCKS_H
#define QI_BLOCKS_H

#include <stdint.h>

#ifdef __CUDACC__
#define QB_FN static __host__ __device__ __forceinline__
#else
#define QB_FN static inline
#endif

#if defined(__CUDA_ARCH__)
#define QB_MUL(a, b) __fmul_rn((a), (b))
#define QB_ADD(a, b) __fadd_rn((a), (b))
#define QB_SUB(a, b) __fsub_rn((a), (b))
#else
#define QB_MUL(a, b) ((a) * (b))
#define QB_ADD(a, b) ((a) + (b))
#define QB_SUB(a, b) ((a) - (b))
#endif

/* IEEE half at p (little-endian, any alignment) -> float, exactly. */
QB_FN float qb_half(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise (exact) */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v;
    v.u = u;
    return v.f;
}

/* float8 e4m3fn (bias 7, no infinities, 0x7f/0xff NaN) -> float, exactly. */
QB_FN float qb_f8e4m3(uint8_t v) {
    uint32_t sign = (uint32_t)(v >> 7) << 31, exp = (v >> 3) & 0xf, man = v & 7;
    union {
        uint32_t u;
        float f;
    } r;
    if (exp == 15 && man == 7) {
        r.u = sign | 0x7fc00000u;
    } else if (exp == 0) {
        r.f = (float)man * 0.001953125f; /* man · 2^-9: exact */
        r.u |= sign;
    } else {
        r.u = sign | ((exp + 120) << 23) | (man << 20);
    }
    return r.f;
}

/* float8 e5m2 is the high byte of an IEEE half. */
QB_FN float qb_f8e5m2(uint8_t v) {
    uint8_t h[2] = {0, v};
    return qb_half(h);
}

/* ---- 32-element blocks ----------------------------------------------------- */

/* Q8_0, 34 bytes: d f16, qs i8[32].  y[i] = d · qs[i] */
QB_FN float qb_q8_0(const uint8_t *b, int i) { return QB_MUL(qb_half(b), (float)(int8_t)b[2 + i]); }

/* Q4_0, 18 bytes: d f16, qs u8[16].  y[j] = (lo − 8) · d, y[j+16] = (hi − 8) · d */
QB_FN float qb_q4_0(const uint8_t *b, int i) {
    int byte = b[2 + (i & 15)], q = i < 16 ? byte & 15 : byte >> 4;
    return QB_MUL((float)(q - 8), qb_half(b));
}

/* Q4_1, 20 bytes: d f16, m f16, qs u8[16].  y = q · d + m */
QB_FN float qb_q4_1(const uint8_t *b, int i) {
    int byte = b[4 + (i & 15)], q = i < 16 ? byte & 15 : byte >> 4;
    return QB_ADD(QB_MUL((float)q, qb_half(b)), qb_half(b + 2));
}

/* The five-bit value i of a Q5 block: a nibble of qs, the fifth bit from the
 * little-endian u32 qh (bit i for element i). */
QB_FN int qb_q5_value(const uint8_t *qh4, const uint8_t *qs, int i) {
    int byte = qs[i & 15], lo = i < 16 ? byte & 15 : byte >> 4;
    int hi = (qh4[i >> 3] >> (i & 7)) & 1;
    return lo | hi << 4;
}

/* Q5_0, 22 bytes: d f16, qh u8[4], qs u8[16].  y = (q − 16) · d */
QB_FN float qb_q5_0(const uint8_t *b, int i) {
    return QB_MUL((float)(qb_q5_value(b + 2, b + 6, i) - 16), qb_half(b));
}

/* Q5_1, 24 bytes: d f16, m f16, qh u8[4], qs u8[16].  y = q · d + m */
QB_FN float qb_q5_1(const uint8_t *b, int i) {
    return QB_ADD(QB_MUL((float)qb_q5_value(b + 4, b + 8, i), qb_half(b)), qb_half(b + 2));
}

/* ---- 256-element K blocks -------------------------------------------------- */

/* Q2_K, 84 bytes: scales u8[16], qs u8[64], d f16, dmin f16.
 * i = 128h + 32g + 16s + l; sc = scales[8h + 2g + s];
 * q = (qs[32h + 16s + l] >> 2g) & 3;  y = (d · (sc & 15)) · q − dmin · (sc >> 4) */
QB_FN float qb_q2_k(const uint8_t *b, int i) {
    int h = i >> 7, g = (i >> 5) & 3, s = (i >> 4) & 1, l = i & 15;
    int sc = b[8 * h + 2 * g + s];
    int q = (b[16 + 32 * h + 16 * s + l] >> (2 * g)) & 3;
    float dl = QB_MUL(qb_half(b + 80), (float)(sc & 15)), ml = QB_MUL(qb_half(b + 82), (float)(sc >> 4));
    return QB_SUB(QB_MUL(dl, (float)q), ml);
}

/* Q3_K's signed six-bit scale k (0..15) from its 12 packed bytes. */
QB_FN int qb_q3_k_scale(const uint8_t *scales, int k) {
    int lo = k < 8 ? scales[k] & 15 : scales[k - 8] >> 4;
    int hi = (scales[8 + (k % 4)] >> (2 * (k / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* Q3_K, 110 bytes: hmask u8[32], qs u8[64], scales u8[12], d f16.
 * i = 128h + 32g + 16s + l, t = 16s + l;
 * q = ((qs[32h + t] >> 2g) & 3) − (hmask bit (4h + g) of byte t ? 0 : 4);
 * y = (d · S[8h + 2g + s]) · q */
QB_FN float qb_q3_k(const uint8_t *b, int i) {
    int h = i >> 7, g = (i >> 5) & 3, s = (i >> 4) & 1, t = i & 31;
    int q = ((b[32 + 32 * h + t] >> (2 * g)) & 3) - (((b[t] >> (4 * h + g)) & 1) ? 0 : 4);
    float dl = QB_MUL(qb_half(b + 108), (float)qb_q3_k_scale(b + 96, 8 * h + 2 * g + s));
    return QB_MUL(dl, (float)q);
}

/* Q4_K / Q5_K: the (scale, min) pair j of 8, packed six bits each in 12 bytes. */
QB_FN void qb_k_scale_min(const uint8_t *scales, int j, int *sc, int *mn) {
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
QB_FN float qb_qk(const uint8_t *b, int i, int five_bit) {
    int j = i >> 5, l = i & 31, sc, mn;
    qb_k_scale_min(b + 4, j, &sc, &mn);
    int byte = b[(five_bit ? 48 : 16) + 32 * (j / 2) + l];
    int q = (j % 2 == 0) ? byte & 15 : byte >> 4;
    if (five_bit) q += 16 * ((b[16 + l] >> j) & 1);
    float dl = QB_MUL(qb_half(b), (float)sc), ml = QB_MUL(qb_half(b + 2), (float)mn);
    return QB_SUB(QB_MUL(dl, (float)q), ml);
}

QB_FN float qb_q4_k(const uint8_t *b, int i) { return qb_qk(b, i, 0); }
QB_FN float qb_q5_k(const uint8_t *b, int i) { return qb_qk(b, i, 1); }

/* Q6_K, 210 bytes: ql u8[128], qh u8[64], scales i8[16], d f16.
 * i = 128h + 32k + l; b = ql[64h + l + 32·(k mod 2)]; lo = k < 2 ? b & 15 : b >> 4;
 * hi = (qh[32h + l] >> 2k) & 3; q = (lo | hi << 4) − 32;
 * y = (d · scales[8h + 2k + l/16]) · q */
QB_FN float qb_q6_k(const uint8_t *b, int i) {
    int h = i >> 7, k = (i >> 5) & 3, l = i & 31;
    int byte = b[64 * h + l + 32 * (k % 2)];
    int lo = k < 2 ? byte & 15 : byte >> 4;
    int hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    int q = (lo | hi << 4) - 32;
    float dl = QB_MUL(qb_half(b + 208), (float)(int8_t)b[192 + 8 * h + 2 * k + l / 16]);
    return QB_MUL(dl, (float)q);
}

#endif

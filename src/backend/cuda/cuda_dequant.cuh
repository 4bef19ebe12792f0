/*
 * cuda_dequant.cuh — reading a weight kept on the device in its file type.
 *
 * fp8 (with its per-tensor or per-row scale) and the GGUF block types stay in
 * their stored bytes on the device (an fp8 transformer takes ~20 GB, a Q4_K
 * one ~12 GB, not 41). An op that needs real values asks for element i:
 * the stored value decoded by blocks.h (the host's formulas, compiled here),
 * times its scale in float32, then rounded to bf16 — exactly what the host
 * conversion at load gave before, so results do not change by a bit.
 */
#ifndef QI_CUDA_DEQUANT_CUH
#define QI_CUDA_DEQUANT_CUH

#include <cuda_bf16.h>
#include <stdint.h>

extern "C" {
#include "backend/backend.h"
#include "base/types.h"
}
#include "base/blocks.h"

/* The types a 2-D weight keeps on the device (not converted at load). */
static inline int qc_kept_type(int dt) {
    return dt == QI_F8_E4M3 || dt == QI_F8_E5M2 || qi_dtype_is_block((qi_dtype)dt);
}

/* Element i of a weight stored as dt (rows are whole blocks, so the block of
 * element i is i / block size counted over the whole tensor). */
__device__ __forceinline__ float qc_stored_value(const uint8_t *w, int dt, int64_t i) {
    switch (dt) {
    case QI_F8_E4M3: return qb_f8e4m3(w[i]);
    case QI_F8_E5M2: return qb_f8e5m2(w[i]);
    case QI_Q8_0: return qb_q8_0(w + (i >> 5) * 34, (int)(i & 31));
    case QI_Q4_0: return qb_q4_0(w + (i >> 5) * 18, (int)(i & 31));
    case QI_Q4_1: return qb_q4_1(w + (i >> 5) * 20, (int)(i & 31));
    case QI_Q5_0: return qb_q5_0(w + (i >> 5) * 22, (int)(i & 31));
    case QI_Q5_1: return qb_q5_1(w + (i >> 5) * 24, (int)(i & 31));
    case QI_Q2_K: return qb_q2_k(w + (i >> 8) * 84, (int)(i & 255));
    case QI_Q3_K: return qb_q3_k(w + (i >> 8) * 110, (int)(i & 255));
    case QI_Q4_K: return qb_q4_k(w + (i >> 8) * 144, (int)(i & 255));
    case QI_Q5_K: return qb_q5_k(w + (i >> 8) * 176, (int)(i & 255));
    case QI_Q6_K: return qb_q6_k(w + (i >> 8) * 210, (int)(i & 255));
    default: return 0.0f;
    }
}

/* The GGUF block types' elements and bytes per block (base/types.c's traits,
 * as constants the device code folds away). */
__host__ __device__ constexpr int qc_block_elems(int dt) {
    return dt == QI_Q8_0 || dt == QI_Q4_0 || dt == QI_Q4_1 || dt == QI_Q5_0 || dt == QI_Q5_1 ? 32 : 256;
}
__host__ __device__ constexpr int qc_block_bytes(int dt) {
    return dt == QI_Q8_0   ? 34
           : dt == QI_Q4_0 ? 18
           : dt == QI_Q4_1 ? 20
           : dt == QI_Q5_0 ? 22
           : dt == QI_Q5_1 ? 24
           : dt == QI_Q2_K ? 84
           : dt == QI_Q3_K ? 110
           : dt == QI_Q4_K ? 144
           : dt == QI_Q5_K ? 176
                           : 210; /* Q6_K */
}

/* Eight stored values from element i (i % 8 == 0). They lie in one block and,
 * in every block type, in one scale group (groups are 16 or 32 wide), so the
 * block's halves and scales are decoded once for the eight instead of once
 * per element as qc_stored_value does; each value is then the same
 * expression of blocks.h's formula on the same operands, so the results are
 * bit-identical to it (the claim kept_weights_match_weights_converted_at_load
 * checks every type; the block GEMM, cuda_block_gemm.cu, decodes its
 * tiles with it too). Decoding per element was ALU-bound: ~10× the time the
 * bytes take to move (run G: a Q4_K transformer call 235 ms vs bf16 111). */
template <int DT>
__device__ __forceinline__ void qc_stored8(const uint8_t *w, int64_t i, float v[8]) {
    if (DT == QI_F8_E4M3 || DT == QI_F8_E5M2) {
        uint2 raw = *(const uint2 *)(w + i); /* device weights are 256-byte aligned, i % 8 == 0 */
        const uint8_t *b = (const uint8_t *)&raw;
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = DT == QI_F8_E4M3 ? qb_f8e4m3(b[j]) : qb_f8e5m2(b[j]);
    } else if (DT == QI_Q8_0 || DT == QI_Q4_0 || DT == QI_Q4_1 || DT == QI_Q5_0 || DT == QI_Q5_1) {
        const uint8_t *b = w + (i >> 5) * qc_block_bytes(DT);
        const int o = (int)(i & 31);
        const float d = qb_half(b);
        const float m = (DT == QI_Q4_1 || DT == QI_Q5_1) ? qb_half(b + 2) : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int e = o + j;
            if (DT == QI_Q8_0) {
                v[j] = QB_MUL(d, (float)(int8_t)b[2 + e]);
            } else if (DT == QI_Q4_0 || DT == QI_Q4_1) {
                const int byte = b[(DT == QI_Q4_0 ? 2 : 4) + (e & 15)], q = e < 16 ? byte & 15 : byte >> 4;
                v[j] = DT == QI_Q4_0 ? QB_MUL((float)(q - 8), d) : QB_ADD(QB_MUL((float)q, d), m);
            } else if (DT == QI_Q5_0) {
                v[j] = QB_MUL((float)(qb_q5_value(b + 2, b + 6, e) - 16), d);
            } else {
                v[j] = QB_ADD(QB_MUL((float)qb_q5_value(b + 4, b + 8, e), d), m);
            }
        }
    } else {
        const uint8_t *b = w + (i >> 8) * qc_block_bytes(DT);
        const int o = (int)(i & 255);
        if (DT == QI_Q2_K) { /* o = 128h + 32g + 16s + l */
            const int h = o >> 7, g = (o >> 5) & 3, s = (o >> 4) & 1, l0 = o & 15;
            const int sc = b[8 * h + 2 * g + s];
            const float dl = QB_MUL(qb_half(b + 80), (float)(sc & 15)), ml = QB_MUL(qb_half(b + 82), (float)(sc >> 4));
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int q = (b[16 + 32 * h + 16 * s + l0 + j] >> (2 * g)) & 3;
                v[j] = QB_SUB(QB_MUL(dl, (float)q), ml);
            }
        } else if (DT == QI_Q3_K) {
            const int h = o >> 7, g = (o >> 5) & 3, s = (o >> 4) & 1, t0 = o & 31;
            const float dl = QB_MUL(qb_half(b + 108), (float)qb_q3_k_scale(b + 96, 8 * h + 2 * g + s));
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int t = t0 + j;
                const int q = ((b[32 + 32 * h + t] >> (2 * g)) & 3) - (((b[t] >> (4 * h + g)) & 1) ? 0 : 4);
                v[j] = QB_MUL(dl, (float)q);
            }
        } else if (DT == QI_Q4_K || DT == QI_Q5_K) {
            const int five = DT == QI_Q5_K, jg = o >> 5, l0 = o & 31;
            int sc, mn;
            qb_k_scale_min(b + 4, jg, &sc, &mn);
            const float dl = QB_MUL(qb_half(b), (float)sc), ml = QB_MUL(qb_half(b + 2), (float)mn);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int l = l0 + j, byte = b[(five ? 48 : 16) + 32 * (jg / 2) + l];
                int q = (jg % 2 == 0) ? byte & 15 : byte >> 4;
                if (five) q += 16 * ((b[16 + l] >> jg) & 1);
                v[j] = QB_SUB(QB_MUL(dl, (float)q), ml);
            }
        } else { /* Q6_K: o = 128h + 32k + l */
            const int h = o >> 7, k = (o >> 5) & 3, l0 = o & 31;
            const float dl = QB_MUL(qb_half(b + 208), (float)(int8_t)b[192 + 8 * h + 2 * k + l0 / 16]);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int l = l0 + j, byte = b[64 * h + l + 32 * (k % 2)];
                const int lo = k < 2 ? byte & 15 : byte >> 4, hi = (b[128 + 32 * h + l] >> (2 * k)) & 3;
                v[j] = QB_MUL(dl, (float)((lo | hi << 4) - 32));
            }
        }
    }
}

/* How a kept weight's values become real ones (the scale of qi_tensor). */
typedef struct qc_kept {
    const uint8_t *data;
    int dt;
    int form;             /* qi_scale_form */
    float scale;          /* QI_SCALE_TENSOR */
    const float *row_scale; /* QI_SCALE_ROW, device memory [rows] */
    int64_t row_len;      /* elements per row (the last dim) */
} qc_kept;

/* The description of kept weight w (cuda_kept.cu). */
qc_kept qc_kept_of(const qi_tensor *w);

/* Elements i..i+7 (i % 8 == 0) as the op sees them, as qc_kept_bf16 gives
 * each: stored · scale, rounded to bf16 once. The eight share one scale:
 * callers ensure a per-row scale's rows are a multiple of 8 long. */
template <int DT>
__device__ __forceinline__ void qc_kept8_bf16(const qc_kept &k, int64_t i, __nv_bfloat16 v[8]) {
    float f[8];
    qc_stored8<DT>(k.data, i, f);
    const float s = k.form == QI_SCALE_TENSOR ? k.scale : k.form == QI_SCALE_ROW ? k.row_scale[i / k.row_len] : 1.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = __float2bfloat16_rn(k.form == QI_SCALE_NONE ? f[j] : __fmul_rn(f[j], s));
}

/* Element i as the op sees it: stored · scale, rounded to bf16 once. */
__device__ __forceinline__ __nv_bfloat16 qc_kept_bf16(const qc_kept &k, int64_t i) {
    float v = qc_stored_value(k.data, k.dt, i);
    if (k.form == QI_SCALE_TENSOR) v = __fmul_rn(v, k.scale);
    else if (k.form == QI_SCALE_ROW) v = __fmul_rn(v, k.row_scale[i / k.row_len]);
    return __float2bfloat16_rn(v);
}

#endif

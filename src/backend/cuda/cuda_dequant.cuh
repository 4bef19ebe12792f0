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

/* Element i as the op sees it: stored · scale, rounded to bf16 once. */
__device__ __forceinline__ __nv_bfloat16 qc_kept_bf16(const qc_kept &k, int64_t i) {
    float v = qc_stored_value(k.data, k.dt, i);
    if (k.form == QI_SCALE_TENSOR) v = __fmul_rn(v, k.scale);
    else if (k.form == QI_SCALE_ROW) v = __fmul_rn(v, k.row_scale[i / k.row_len]);
    return __float2bfloat16_rn(v);
}

#endif

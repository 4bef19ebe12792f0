/*
 * cuda_kept.cu — weights kept on the device in their file type (fp8 with its
 * scale, GGUF blocks): dequantisation into the bf16 weight scratch before a
 * GEMM, and seeded random contents for benchmarks.
 *
 * The correct path, not yet the fast one: each linear with a kept weight
 * first writes the weight as bf16 into c->wscratch (2 bytes per element,
 * from 0.56–1 read), then runs the bf16 GEMM. At 1024² a transformer call
 * reads its weights once either way, so the extra traffic is ~2× the bf16
 * weight bytes per call (~40 GB on an H200 at ~4 TB/s: ~10–20 ms); fp8 and
 * block GEMMs that read the stored bytes directly are the speed work of the
 * GPU issue.
 */
#include <math.h>

#include "backend/cuda/cuda_dequant.cuh"
#include "backend/cuda/cuda_internal.h"

/* 8 elements per thread: one 16-byte store of bf16. DT is the stored type
 * as a template argument, so the type switch and, within the 8 elements
 * (which share one block and one sub-block), the block header decoding fold
 * away. */
template <int DT>
__device__ __forceinline__ __nv_bfloat16 kept_value(const qc_kept &k, int64_t i) {
    float v = qc_stored_value(k.data, DT, i);
    if (k.form == QI_SCALE_TENSOR) v = __fmul_rn(v, k.scale);
    else if (k.form == QI_SCALE_ROW) v = __fmul_rn(v, k.row_scale[i / k.row_len]);
    return __float2bfloat16_rn(v);
}

template <int DT>
__global__ void dequant_bf16_k(qc_kept k, int64_t n, __nv_bfloat16 *out) {
    int64_t units = n / 8;
    for (int64_t u = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; u < units;
         u += (int64_t)gridDim.x * blockDim.x) {
        __align__(16) __nv_bfloat16 v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = kept_value<DT>(k, u * 8 + j);
        *(uint4 *)(out + u * 8) = *(const uint4 *)v;
    }
    for (int64_t i = units * 8 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = kept_value<DT>(k, i);
}

qc_kept qc_kept_of(const qi_tensor *w) {
    qc_kept k;
    k.data = (const uint8_t *)w->data;
    k.dt = (int)w->dtype;
    k.form = (int)w->scale_form;
    k.scale = w->scale;
    k.row_scale = w->row_scale;
    k.row_len = w->ne[w->ndim - 1] > 0 ? w->ne[w->ndim - 1] : 1;
    return k;
}

int qc_dequant_to_scratch(cuda_impl *c, const qi_tensor *w, qi_tensor *out) {
    int64_t n = qi_numel(w);
    if ((size_t)n * 2 > c->wscratch_bytes) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: weight scratch of %zu bytes cannot hold a %s weight of %lld "
                "elements (it is sized at load)", c->wscratch_bytes, qi_dtype_name(w->dtype), (long long)n);
        return 1;
    }
    int64_t units = n / 8 + 1;
    int64_t blocks = (units + 255) / 256;
    int grid = (int)(blocks < (int64_t)c->sm_count * 16 ? blocks : (int64_t)c->sm_count * 16);
    grid = grid < 1 ? 1 : grid;
    qc_kept k = qc_kept_of(w);
    __nv_bfloat16 *o = (__nv_bfloat16 *)c->wscratch;
    switch (w->dtype) {
#define DEQUANT_CASE(T) \
    case T: dequant_bf16_k<T><<<grid, 256, 0, c->stream>>>(k, n, o); break;
        DEQUANT_CASE(QI_F8_E4M3) DEQUANT_CASE(QI_F8_E5M2) DEQUANT_CASE(QI_Q8_0) DEQUANT_CASE(QI_Q4_0)
        DEQUANT_CASE(QI_Q4_1) DEQUANT_CASE(QI_Q5_0) DEQUANT_CASE(QI_Q5_1) DEQUANT_CASE(QI_Q2_K)
        DEQUANT_CASE(QI_Q3_K) DEQUANT_CASE(QI_Q4_K) DEQUANT_CASE(QI_Q5_K) DEQUANT_CASE(QI_Q6_K)
#undef DEQUANT_CASE
    default:
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: no device decoder for %s weights", qi_dtype_name(w->dtype));
        return 1;
    }
    if (qc_check_launch(c, "dequantise weight")) return 1;
    *out = *w;
    out->dtype = QI_BF16;
    out->data = c->wscratch;
    out->scale = 1.0f;
    out->scale_form = QI_SCALE_NONE;
    out->row_scale = NULL;
    return 0;
}

/* ---- random contents of kept weights (benchmarks) ---------------------------- */

/* Where a block type keeps its f16 scale d (and min dmin, or -1), and the
 * rough largest |quant × sub-scale| so that d makes values of about `amp`. */
typedef struct block_fields {
    int d_off, m_off;
    float span;
} block_fields;

static block_fields fields_of(int dt) {
    switch (dt) {
    case QI_Q8_0: return {0, -1, 128.0f};
    case QI_Q4_0: return {0, -1, 8.0f};
    case QI_Q4_1: return {0, 2, 16.0f};
    case QI_Q5_0: return {0, -1, 16.0f};
    case QI_Q5_1: return {0, 2, 32.0f};
    case QI_Q2_K: return {80, 82, 45.0f};
    case QI_Q3_K: return {108, -1, 128.0f};
    case QI_Q4_K: return {0, 2, 945.0f};
    case QI_Q5_K: return {0, 2, 1953.0f};
    case QI_Q6_K: return {208, -1, 4096.0f};
    default: return {-1, -1, 1.0f};
    }
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Random bytes; fp8 bytes that decode to NaN become zero-exponent ones. */
__global__ void random_bytes_k(uint8_t *out, size_t n, uint64_t key, int fp8) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint8_t b = (uint8_t)(mix64(key + i * 0x9E3779B97F4A7C15ull) >> 56);
        if (fp8 && (b & 0x7f) == 0x7f) b &= 0x87;
        out[i] = b;
    }
}

/* Overwrites each block's d (and dmin) with fixed halves: finite values of a
 * chosen size instead of random exponents. */
__global__ void block_scales_k(uint8_t *w, size_t blocks, int block_bytes, int d_off, int m_off, uint16_t d,
                               uint16_t m) {
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < blocks; b += (size_t)gridDim.x * blockDim.x) {
        uint8_t *p = w + b * (size_t)block_bytes;
        p[d_off] = (uint8_t)(d & 255);
        p[d_off + 1] = (uint8_t)(d >> 8);
        if (m_off >= 0) {
            p[m_off] = (uint8_t)(m & 255);
            p[m_off + 1] = (uint8_t)(m >> 8);
        }
    }
}

/* Seeded random contents for a kept weight of `rows` × `row_len`, values of
 * about ±1/√row_len like random_fill's bf16 ones; for fp8 the per-tensor
 * scale that brings the raw bytes (up to ±448) there is returned in *scale. */
int qc_random_kept(cuda_impl *c, qi_tensor *w, uint64_t key, float *scale) {
    size_t bytes = qi_nbytes(w);
    int64_t row_len = w->ne[w->ndim - 1];
    float amp = 1.0f / sqrtf((float)(row_len > 0 ? row_len : 1));
    int fp8 = w->dtype == QI_F8_E4M3 || w->dtype == QI_F8_E5M2;
    int blocks = (int)((bytes + 255) / 256 < 4096 ? (bytes + 255) / 256 : 4096);
    random_bytes_k<<<blocks < 1 ? 1 : blocks, 256, 0, c->stream>>>((uint8_t *)w->data, bytes, key, fp8);
    *scale = 1.0f;
    if (fp8) {
        /* e5m2's random bytes reach 57344: scale by the type's largest finite value */
        *scale = amp / (w->dtype == QI_F8_E4M3 ? 448.0f : 57344.0f) * 4.0f;
    } else {
        block_fields f = fields_of(w->dtype);
        const qi_dtype_traits *tt = qi_type_traits(w->dtype);
        size_t nblocks = bytes / tt->block_bytes;
        uint16_t d = qi_f32_to_f16(amp / f.span * 2.0f), m = qi_f32_to_f16(amp / f.span);
        if (w->dtype == QI_Q4_1 || w->dtype == QI_Q5_1) m = qi_f32_to_f16(-amp); /* y = q·d + m: centred */
        block_scales_k<<<blocks < 1 ? 1 : blocks, 256, 0, c->stream>>>((uint8_t *)w->data, nblocks,
                                                                      (int)tt->block_bytes, f.d_off, f.m_off, d, m);
    }
    return qc_check_launch(c, "random weights");
}

/*
 * cuda_kept.cu — weights kept on the device in their file type (fp8 with its
 * scale, GGUF blocks): dequantisation into the bf16 weight scratch before a
 * GEMM, and seeded random contents for benchmarks.
 *
 * Each linear with a kept weight first writes the weight as bf16 into a
 * buffer of c->wscratch (2 bytes per element, from 0.56–1 read), then runs
 * the bf16 GEMM: ~2× the bf16 weight bytes of extra traffic per call, ~20 ms
 * per 1024² transformer call on an H200 (run L) when each expansion runs
 * between two GEMMs. fp8 and block GEMMs that read the stored bytes directly
 * are the next step (the GPU issue).
 *
 * The overlap: the model names the weights of its next linears
 * (prefetch_weight) and each one's expansion is queued on a second stream
 * into a free buffer (two buffers; three with QI_CUDA_KEPT_OVERLAP=3, so a
 * hint two linears ahead is taken too), where it runs while the GEMMs before
 * it do; a hint that finds no free buffer is dropped. Ordering, by events only (so stream capture records it as a branch
 * of the graph, forked from and joined back into the capturing stream):
 *   - the expansion waits for everything queued on `stream` before the hint
 *     (expand_fork), the last GEMM that read its buffer among it;
 *   - the linear that reads it waits for its `ready` event;
 *   - a write on `stream` into a buffer whose expansion is still "side"
 *     (never read) waits for `ready` first (qc_wbuf_claim).
 * The same kernel writes the same bf16 values whichever stream and grid run
 * it (each unit of 8 is computed alone), so results are bit-identical with
 * the overlap on or off; the GEMM reads the same values at another address
 * (cuBLASLt plans are keyed by alignment, and every buffer is 256-aligned).
 */
#include <math.h>

#include "backend/cuda/cuda_dequant.cuh"
#include "backend/cuda/cuda_internal.h"

/* Element i, per element: the tail of a weight whose size is not a multiple
 * of 8, and rows of a per-row scale that are not. */
template <int DT>
__device__ __forceinline__ __nv_bfloat16 kept_value(const qc_kept &k, int64_t i) {
    float v = qc_stored_value(k.data, DT, i);
    if (k.form == QI_SCALE_TENSOR) v = __fmul_rn(v, k.scale);
    else if (k.form == QI_SCALE_ROW) v = __fmul_rn(v, k.row_scale[i / k.row_len]);
    return __float2bfloat16_rn(v);
}

/* 8 elements per thread: one 16-byte store of bf16. DT is the stored type as
 * a template argument, so the type switch folds away. by_unit: the scale is
 * the same for the 8 (none, per tensor, or per row with rows a multiple of 8
 * long); otherwise every element takes the per-element path. */
template <int DT>
__global__ void dequant_bf16_k(qc_kept k, int64_t n, int by_unit, __nv_bfloat16 *out) {
    int64_t units = n / 8;
    for (int64_t u = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; u < units;
         u += (int64_t)gridDim.x * blockDim.x) {
        __align__(16) __nv_bfloat16 v[8];
        if (by_unit) {
            qc_kept8_bf16<DT>(k, u * 8, v);
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = kept_value<DT>(k, u * 8 + j);
        }
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

/* Queues the bf16 expansion of kept weight w into dst on stream s with at
 * most max_grid blocks (0: as many as the bytes want, up to 16 per SM);
 * returns 1 after recording an error. */
static int expand_into(cuda_impl *c, const qi_tensor *w, void *dst, cudaStream_t s, int max_grid) {
    int64_t n = qi_numel(w);
    int64_t units = n / 8 + 1;
    int64_t blocks = (units + 255) / 256;
    int64_t cap = max_grid > 0 ? max_grid : (int64_t)c->sm_count * 16;
    int grid = (int)(blocks < cap ? blocks : cap);
    grid = grid < 1 ? 1 : grid;
    qc_kept k = qc_kept_of(w);
    /* whole units of 8 share a scale unless rows of a per-row scale are not a multiple of 8 long; fp8's 8-byte
       loads need the data 8-byte aligned (device allocations are 256-byte aligned; this guards views) */
    int by_unit = (k.form != QI_SCALE_ROW || k.row_len % 8 == 0) && ((uintptr_t)k.data % 8 == 0);
    __nv_bfloat16 *o = (__nv_bfloat16 *)dst;
    switch (w->dtype) {
#define DEQUANT_CASE(T) \
    case T: dequant_bf16_k<T><<<grid, 256, 0, s>>>(k, n, by_unit, o); break;
        DEQUANT_CASE(QI_F8_E4M3) DEQUANT_CASE(QI_F8_E5M2) DEQUANT_CASE(QI_Q8_0) DEQUANT_CASE(QI_Q4_0)
        DEQUANT_CASE(QI_Q4_1) DEQUANT_CASE(QI_Q5_0) DEQUANT_CASE(QI_Q5_1) DEQUANT_CASE(QI_Q2_K)
        DEQUANT_CASE(QI_Q3_K) DEQUANT_CASE(QI_Q4_K) DEQUANT_CASE(QI_Q5_K) DEQUANT_CASE(QI_Q6_K)
#undef DEQUANT_CASE
    default:
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: no device decoder for %s weights", qi_dtype_name(w->dtype));
        return 1;
    }
    return qc_check_launch(c, "dequantise weight");
}

/* ---- the buffers of the weight scratch ------------------------------------------ */

/* Whether the copy held in a buffer is kept weight w's: the same stored
 * bytes read the same way (a weight's address is unique while it lives;
 * every buffer is forgotten when a weight is made or freed). */
static int holds(const qc_wbuf *b, const qi_tensor *w) {
    const qi_tensor *h = &b->held;
    return h->data && h->data == w->data && h->dtype == w->dtype && qi_numel(h) == qi_numel(w) &&
           h->scale_form == w->scale_form && h->scale == w->scale && h->row_scale == w->row_scale &&
           h->ne[h->ndim - 1] == w->ne[w->ndim - 1];
}

/* `stream` waits for b's expansion if it is still on the expand stream. */
static void join(cuda_impl *c, qc_wbuf *b) {
    if (!b->side) return;
    cudaError_t e = cudaStreamWaitEvent(c->stream, b->ready, 0);
    if (e != cudaSuccess) qc_fail(c, QI_ERR_BACKEND, "cuda backend: waiting for a weight expansion: %s",
                                  cudaGetErrorString(e));
    b->side = 0;
}

void qc_wbuf_settle(cuda_impl *c, int forget) {
    for (int i = 0; i < c->wbuf_count; i++) {
        join(c, &c->wbuf[i]);
        if (forget) c->wbuf[i].held.data = NULL;
    }
}

void qc_wbuf_layout(cuda_impl *c) {
    int n = c->wbuf_count < 1 ? 1 : c->wbuf_count;
    c->wbuf_bytes = c->wscratch ? (c->wscratch_bytes / (size_t)n) & ~(size_t)255 : 0;
    for (int i = 0; i < c->wbuf_count; i++) {
        c->wbuf[i].ptr = c->wscratch ? (char *)c->wscratch + (size_t)i * c->wbuf_bytes : NULL;
        c->wbuf[i].held.data = NULL;
        c->wbuf[i].side = 0;
    }
}

/* The buffer to write next: free (holding nothing unread) and least
 * recently used, so the buffer the last GEMM read is kept for last; if
 * `free_only` is 0 and none is free, the oldest held one. NULL if none. */
static qc_wbuf *pick(cuda_impl *c, int free_only) {
    qc_wbuf *best = NULL;
    for (int pass = 0; pass < 2 && !best; pass++) {
        if (pass == 1 && free_only) break;
        for (int i = 0; i < c->wbuf_count; i++) {
            qc_wbuf *b = &c->wbuf[i];
            if (pass == 0 && b->held.data) continue;
            if (!best || b->used < best->used) best = b;
        }
    }
    return best;
}

void *qc_wbuf_claim(cuda_impl *c, size_t bytes) {
    if (!c->wscratch || bytes > c->wbuf_bytes) return NULL;
    qc_wbuf *b = pick(c, 0);
    if (!b) return NULL;
    join(c, b); /* its unread expansion may still be writing */
    b->held.data = NULL;
    b->used = ++c->wbuf_clock;
    return b->ptr;
}

int qc_dequant_to_scratch(cuda_impl *c, const qi_tensor *w, qi_tensor *out) {
    int64_t n = qi_numel(w);
    if (!c->wscratch || (size_t)n * 2 > c->wbuf_bytes) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: weight scratch of %zu bytes cannot hold a %s weight of %lld "
                "elements (it is sized at load)", c->wbuf_bytes, qi_dtype_name(w->dtype), (long long)n);
        return 1;
    }
    void *dst = NULL;
    for (int i = 0; i < c->wbuf_count && !dst; i++) {
        qc_wbuf *b = &c->wbuf[i];
        if (!holds(b, w)) continue;
        join(c, b); /* the GEMM waits for the prefetched expansion */
        b->held.data = NULL;
        b->used = ++c->wbuf_clock;
        c->prefetch_used++;
        dst = b->ptr;
    }
    if (!dst) {
        dst = qc_wbuf_claim(c, (size_t)n * 2);
        if (expand_into(c, w, dst, c->stream, 0)) return 1;
    }
    *out = *w;
    out->dtype = QI_BF16;
    out->data = dst;
    out->scale = 1.0f;
    out->scale_form = QI_SCALE_NONE;
    out->row_scale = NULL;
    return 0;
}

int qc_wbuf_has(const cuda_impl *c, const qi_tensor *w) {
    for (int i = 0; i < c->wbuf_count; i++)
        if (holds(&c->wbuf[i], w)) return 1;
    return 0;
}

/* Only kept 2-D weights that a linear would expand, into a free buffer: a
 * hint that cannot be taken is dropped (the linear expands the weight
 * itself, as without the overlap). */
void qc_prefetch_weight(qi_backend *be, const qi_tensor *w) {
    cuda_impl *c = cuda_of(be);
    if (!c->kept_overlap || !w || !w->data || w->ndim != 2 || !qc_kept_type(w->dtype)) return;
    if (qc_fp8_takes_weight(c, w) || !c->wscratch || (size_t)qi_numel(w) * 2 > c->wbuf_bytes) return;
    for (int i = 0; i < c->wbuf_count; i++)
        if (holds(&c->wbuf[i], w)) return; /* queued already */
    qc_wbuf *b = pick(c, 1);
    if (!b) return;
    cudaError_t e = cudaEventRecord(c->expand_fork, c->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->expand_stream, c->expand_fork, 0);
    if (e != cudaSuccess) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: prefetch_weight: %s", cudaGetErrorString(e));
        return;
    }
    int failed = expand_into(c, w, b->ptr, c->expand_stream, c->prefetch_grid);
    if ((e = cudaEventRecord(b->ready, c->expand_stream)) != cudaSuccess) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: prefetch_weight: %s", cudaGetErrorString(e));
        return;
    }
    b->side = 1; /* joined even when the launch failed: a recording must not end with the branch open */
    b->used = ++c->wbuf_clock;
    if (failed) {
        join(c, b);
        return;
    }
    b->held = *w;
    c->prefetch_queued++;
}

/* ---- random contents of kept weights (benchmarks) ---------------------------- */

/* The rough largest |quant × sub-scale| of a block type, so that its f16
 * scale d (where the type's traits say it is) makes values of about `amp`. */
static float span_of(int dt) {
    switch (dt) {
    case QI_Q8_0: return 128.0f;
    case QI_Q4_0: return 8.0f;
    case QI_Q4_1: return 16.0f;
    case QI_Q5_0: return 16.0f;
    case QI_Q5_1: return 32.0f;
    case QI_Q2_K: return 45.0f;
    case QI_Q3_K: return 128.0f;
    case QI_Q4_K: return 945.0f;
    case QI_Q5_K: return 1953.0f;
    case QI_Q6_K: return 4096.0f;
    default: return 1.0f;
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
        const qi_dtype_traits *tt = qi_type_traits(w->dtype);
        size_t nblocks = bytes / tt->block_bytes;
        float span = span_of(w->dtype);
        uint16_t d = qi_f32_to_f16(amp / span * 2.0f), m = qi_f32_to_f16(amp / span);
        if (w->dtype == QI_Q4_1 || w->dtype == QI_Q5_1) m = qi_f32_to_f16(-amp); /* y = q·d + m: centred */
        block_scales_k<<<blocks < 1 ? 1 : blocks, 256, 0, c->stream>>>(
            (uint8_t *)w->data, nblocks, (int)tt->block_bytes, tt->f16_field[0], tt->f16_field[1], d, m);
    }
    return qc_check_launch(c, "random weights");
}

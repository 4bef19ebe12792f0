/*
 * cuda_fp8_gemm.cu — `linear` with an fp8 e4m3 weight on the fp8 tensor
 * cores (compute capability 8.9 and newer: Ada, Hopper, Blackwell) through
 * cuBLASLt, instead of expanding the weight to bf16 and running a bf16 GEMM.
 *
 *   y[M, N] = act((x_q[M, K] · W_q[N, K]ᵀ) · scale_x · scale_w[·] + b)
 *
 * x (bf16) is quantised to e4m3 with one dynamic per-tensor scale:
 * scale_x = amax(|x|) / 448 (448: e4m3's largest finite value), found by a
 * reduction kernel whose last block writes the scale on the device — no
 * host sync, so a CUDA graph records the whole sequence. x_q lives in a
 * buffer of the kept-weight scratch (c->wscratch, each buffer sized at load
 * for a bf16 copy of the largest kept weight), which this path does not
 * otherwise need, or in the general scratch when it is larger than that.
 * linear_shared (several linears of one x: q/k/v) quantises x once and runs
 * each GEMM on the same x_q, each weight's scale in its own device slot.
 *
 * cuBLASLt computes column-major D = op(A)·op(B); row-major y[M, N] is
 * column-major yᵀ[N, M] = W[N, K] · xᵀ, so A = W (stored [N, K] row-major =
 * column-major [K, N], transposed: op(A) = W) and B = x_q (column-major
 * [K, M], not transposed): the "TN" layout cuBLASLt requires for fp8. The
 * per-tensor scales reach it as device floats (A_SCALE_POINTER = scale_w,
 * B_SCALE_POINTER = scale_x). Per-output-row weight scales (LightX2V files)
 * go as scale_w = 1 and a small kernel multiplies output column o by s[o]
 * (with the bias and the activation) afterwards: cuBLASLt 13's
 * OUTER_VEC_32F scale mode would do it in the epilogue, but it wants a
 * per-token vector for B too and was not verified on sm_90 here.
 *
 * Accuracy: e4m3 keeps 3 mantissa bits, so each activation is rounded with
 * a relative error up to 2^-4 (rms ≈ 2.4% of the value); the weight is used
 * exactly as stored. A linear's output then differs from the float32 product
 * by ≈ 2.4% relative L2 (bf16 activations: ≈ 0.3%). QI_CUDA_FP8_GEMM=0 turns
 * the path off (the expansion path, bit-identical to before).
 *
 * Which linears: in and out features multiples of 16 and both at least 128.
 * The transformer's first and last layers (img_in: 64 latent channels in,
 * proj_out: 64 out) stay on the expansion path: proj_out's error goes
 * straight into the prediction, which CFG then multiplies. Measured on the
 * format fixtures by rounding the CPU pipeline's activations to e4m3 at
 * every fp8 linear: the ComfyUI scaled_fp8 file (its 64-channel layers
 * fp8 too) with CFG 3 gave vae_in rel L2 7.6e-2 with them, 2.1e-2 without
 * them (as the files whose 64-channel layers are bf16: 1.8e-2); both layers
 * are a rounding error of the call's FLOPs.
 *
 * Defensive: any case it cannot take (e5m2, shapes not multiples of 16,
 * misaligned pointers, x_q not fitting the scratch) and any cuBLASLt refusal
 * (no algorithm from the heuristic, a failing matmul call) returns 0 before
 * anything that changes y is queued, and `linear` runs the expansion path.
 */
#include <cuda_fp8.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "backend/cuda/cuda_fp8_amax.cuh"
#include "backend/cuda/cuda_internal.h"

#define FP8_PLANS 128 /* ~15 problems per image size: room for several sizes */
#define FP8_MIN_DIM 128
/* On unless QI_CUDA_FP8_GEMM=0 (1); 0: off unless QI_CUDA_FP8_GEMM=1.
 * On since its claims passed on an H200 (run N, bench/RESULTS.md:
 * test_cuda_backend_caps 14/14, test_formats -d cuda 20/20; a 1024² call
 * 89 ms against 132 expanded). */
#define FP8_GEMM_DEFAULT 1

/* One cuBLASLt problem: shape, epilogue, pointer alignment, and what the
 * heuristic said (ok = 0: no algorithm, the case falls back every time). */
typedef struct fp8_plan {
    int used, ok;
    int m, n, k, epilogue, align_a, align_d;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
} fp8_plan;

struct qc_fp8 {
    fp8_scales *dev; /* device */
    int fast_accum;  /* cuBLASLt's fast fp8 accumulation (default; QI_CUDA_FP8_FAST_ACCUM=0: off) */
    int shared_on;   /* linear_shared taken (QI_CUDA_FP8_SHARED=0: off) */
    fp8_plan plans[FP8_PLANS];
    int plan_next;
};

/* ---- activation quantisation ------------------------------------------------- */

/* amax of x[n] (n a multiple of 8, x 16-byte aligned); the last block to
 * finish turns it into scale_x, stores the weight scales ws, and resets the
 * counters for the next call. fmaxf drops NaN (a NaN input stays NaN through x_q). */
__global__ void fp8_amax_k(const bf16 *x, int64_t n, fp8_wscales ws, fp8_scales *st) {
    float m = 0.0f;
    for (int64_t u = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; u < n / 8; u += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        load_v<8>(x + u * 8, f);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(f[j]));
    }
    fp8_amax_fold(m, ws, st);
}

/* x_q[i] = e4m3(x[i] / scale_x), saturating (the largest |x| maps to 448;
 * rounding of the division may land a hair above it). 8 elements a thread:
 * one 16-byte load, one 8-byte store. */
__global__ void fp8_quant_k(const bf16 *x, int64_t n, const fp8_scales *st, uint8_t *xq) {
    float inv = 1.0f / st->scale_x;
    for (int64_t u = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; u < n / 8; u += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        load_v<8>(x + u * 8, f);
        __align__(8) __nv_fp8x2_storage_t q[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            q[j] = __nv_cvt_float2_to_fp8x2(make_float2(f[2 * j] * inv, f[2 * j + 1] * inv), __NV_SATFINITE, __NV_E4M3);
        *(uint2 *)(xq + u * 8) = *(const uint2 *)q;
    }
}

/* y[M, N] in place: y·s[o] (per-row weight scales, or none) + b[o]·bscale,
 * then act; N a multiple of 8, y 16-byte aligned. */
__global__ void fp8_finish_k(bf16 *y, int64_t M, int64_t N, const float *row_scale, const void *bias, int bias_dt,
                             float bias_scale, int act) {
    int64_t units = M * N / 8;
    for (int64_t u = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; u < units; u += (int64_t)gridDim.x * blockDim.x) {
        int64_t o0 = (u * 8) % N;
        float f[8];
        load_v<8>(y + u * 8, f);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float v = row_scale ? f[j] * row_scale[o0 + j] : f[j];
            if (bias) v += ld_param(bias, bias_dt, o0 + j) * bias_scale;
            f[j] = apply_act(v, act);
        }
        store_v<8>(y + u * 8, f);
    }
}

/* ---- cuBLASLt plans ------------------------------------------------------------ */

/* Destroys a plan's descriptors, keeping its key. */
static void plan_release(fp8_plan *p) {
    if (p->a_layout) cublasLtMatrixLayoutDestroy(p->a_layout);
    if (p->b_layout) cublasLtMatrixLayoutDestroy(p->b_layout);
    if (p->d_layout) cublasLtMatrixLayoutDestroy(p->d_layout);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    p->desc = NULL, p->a_layout = p->b_layout = p->d_layout = NULL;
}

static void plan_free(fp8_plan *p) {
    plan_release(p);
    memset(p, 0, sizeof *p);
}

/* Why a case went to the expansion path, kept for qi_cuda_fp8_gemm_state:
 * a path that silently never runs would otherwise look like a slow one. */
static void fallback(cuda_impl *c, const char *why, int m, int n, int k, int status) {
    snprintf(c->fp8_fallback, sizeof c->fp8_fallback, "%s (m %d, n %d, k %d, status %d)", why, m, n, k, status);
}

#define LT_TRY(call)                                                                                               \
    do {                                                                                                           \
        cublasStatus_t lt_s_ = (call);                                                                             \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) {                                                                      \
            fallback(c, #call, p->m, p->n, p->k, (int)lt_s_);                                                      \
            return 0;                                                                                              \
        }                                                                                                          \
    } while (0)

/* Descriptors for column-major D[m, n] (bf16) = scale_w·scale_x · Aᵀ·B with
 * A e4m3 [k, m] (ld k), B e4m3 [k, n] (ld k), and the heuristic's first
 * algorithm; 1 when cuBLASLt offers one. */
static int plan_build(cuda_impl *c, fp8_plan *p, const void *bias) {
    struct qc_fp8 *f = c->fp8;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->epilogue;
    cudaDataType_t bias_type = CUDA_R_16BF; /* fp8 inputs with a bf16 D: the bias is bf16 (cublasLt.h) */
    const float *sw = &f->dev->scale_w[0].v, *sx = &f->dev->scale_x; /* sw: set again at each call */
    int8_t fast = (int8_t)f->fast_accum;
    LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
    if (bias) { /* the heuristic reads the pointer's alignment */
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                              sizeof bias_type));
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    LT_TRY(cublasLtMatrixLayoutCreate(&p->a_layout, CUDA_R_8F_E4M3, p->k, p->m, p->k));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->b_layout, CUDA_R_8F_E4M3, p->k, p->n, p->k));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->d_layout, CUDA_R_16BF, p->m, p->n, p->m));
    int found = 0;
    cublasStatus_t s = qc_lt_best_algo(c, p->desc, p->a_layout, p->b_layout, p->d_layout, (uint32_t)p->align_a,
                                       256 /* x_q: the start of a scratch buffer */, (uint32_t)p->align_d, &p->algo,
                                       &found);
    if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
        fallback(c, found < 1 ? "cuBLASLt heuristic: no algorithm" : "cuBLASLt heuristic failed", p->m, p->n, p->k,
                 (int)s);
        return 0;
    }
    return 1;
}

/* The cached plan for the problem (built on first use: run the op sequence
 * once before recording a graph, as for every cuBLASLt plan); NULL when
 * cuBLASLt has no algorithm for it. */
static fp8_plan *plan_for(cuda_impl *c, int m, int n, int k, int epilogue, int align_a, int align_d,
                          const void *bias) {
    struct qc_fp8 *f = c->fp8;
    for (int i = 0; i < FP8_PLANS; i++) {
        fp8_plan *p = &f->plans[i];
        if (p->used && p->m == m && p->n == n && p->k == k && p->epilogue == epilogue && p->align_a == align_a &&
            p->align_d == align_d)
            return p->ok ? p : NULL;
    }
    fp8_plan *p = &f->plans[f->plan_next];
    f->plan_next = (f->plan_next + 1) % FP8_PLANS;
    plan_free(p);
    p->used = 1;
    p->m = m, p->n = n, p->k = k, p->epilogue = epilogue, p->align_a = align_a, p->align_d = align_d;
    p->ok = plan_build(c, p, bias);
    if (!p->ok) plan_release(p); /* the key stays: the next call falls back at once */
    return p->ok ? p : NULL;
}

/* ---- the op ---------------------------------------------------------------------- */

static unsigned grid_for(const cuda_impl *c, int64_t units) {
    int64_t b = (units + 255) / 256, cap = (int64_t)c->sm_count * 4;
    return (unsigned)(b < 1 ? 1 : b < cap ? b : cap);
}

/* Whether x_q (n bytes) has a place: a buffer of the kept-weight scratch
 * (each sized for a bf16 copy of the largest kept weight: 2·N·K bytes, x_q
 * needs M·K), else the general scratch (512 MiB); both made before any graph
 * is recorded. No: the expansion answers. */
static int xq_fits(const cuda_impl *c, int64_t n) {
    return (c->wscratch && (size_t)n <= c->wbuf_bytes) || (c->scratch && (size_t)n <= c->scratch_bytes);
}

/* Where x_q goes, free while this op runs: a buffer claimed from the weight
 * scratch (one no queued expansion of prefetch_weight is writing), else the
 * general scratch. */
static void *xq_buffer(cuda_impl *c, int64_t n) {
    void *p = c->wscratch && (size_t)n <= c->wbuf_bytes ? qc_wbuf_claim(c, (size_t)n) : NULL;
    return p ? p : (size_t)n <= c->scratch_bytes ? c->scratch : NULL;
}

int qc_fp8_takes_weight(const cuda_impl *c, const qi_tensor *w) {
    if (!c->fp8 || !c->fp8_on || w->dtype != QI_F8_E4M3 || w->ndim != 2) return 0;
    int64_t N = w->ne[0], K = w->ne[1];
    if (N % 16 || K % 16 || N > INT32_MAX || K > INT32_MAX) return 0;
    if (N < FP8_MIN_DIM || K < FP8_MIN_DIM) return 0; /* the 64-channel first and last layers: see the top */
    if (w->scale_form == QI_SCALE_ROW && !w->row_scale) return 0;
    return qc_aligned16(w->data);
}

/* Whether this path takes linear(x, w, b, act) -> y at all (before any plan). */
static int fp8_takes(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                     const qi_tensor *y, int64_t M, int64_t N, int64_t K) {
    if (!c->fp8 || !c->fp8_on || w->dtype != QI_F8_E4M3 || w->ndim != 2) return 0;
    const char *why = NULL;
    int by_design = 0; /* left to the expansion path on purpose: not a fallback worth recording */
    if (x->dtype != QI_BF16 || y->dtype != QI_BF16 || w->ne[1] != K || qi_numel(y) != M * N) why = "types or shapes";
    else if (b && (qi_numel(b) != N || !qc_param_type(b->dtype))) why = "bias";
    else if (M < 1 || N % 16 || K % 16 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) why = "not multiples of 16";
    else if (N < FP8_MIN_DIM || K < FP8_MIN_DIM) { /* the 64-channel first and last layers: see the top */
        why = "first or last layer";
        by_design = 1;
    } else if (w->scale_form == QI_SCALE_ROW && !w->row_scale) why = "per-row scale missing";
    else if (!qc_aligned16(x->data) || !qc_aligned16(w->data) || !qc_aligned16(y->data)) why = "alignment";
    else if (!xq_fits(c, M * K)) why = "x_q does not fit the scratch";
    if (why && !by_design) fallback(c, why, (int)N, (int)M, (int)K, 0);
    return why == NULL;
}

/* One fp8 linear, decided before anything is queued: its plan, and whether
 * cuBLASLt's epilogue finishes it (direct) or fp8_finish_k does. */
typedef struct fp8_job {
    const qi_tensor *w, *b;
    qi_act act;
    qi_tensor *y;
    fp8_plan *p;
    fp8_plan key; /* p's key when chosen (m … align_d; no descriptors): a later plan_for may reuse p's slot */
    int direct, row;
} fp8_job;

/* 1 when the fp8 path takes linear(x, w, b, act) -> y, with j filled in;
 * 0 when it does not (nothing queued). Builds the plans on first use. */
static int fp8_prepare(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, qi_act act,
                       qi_tensor *y, fp8_job *j) {
    int64_t K = x->ne[x->ndim - 1], M = qi_rows(x), N = w->ne[0];
    if (!fp8_takes(c, x, w, b, y, M, N, K)) return 0;
    int row = w->scale_form == QI_SCALE_ROW;
    int bias_epi = b && b->dtype == QI_BF16 && b->scale == 1.0f && qc_aligned16(b->data);
    /* what the epilogue can do: the bias (before a per-row scale it would be wrong) and tanh GELU */
    int direct = !row && (!b || bias_epi) && (act == QI_ACT_NONE || act == QI_ACT_GELU_TANH);
    int align_a = qc_ptr_align(w->data), align_d = qc_ptr_align(y->data);
    fp8_plan *p = NULL;
    if (direct) {
        cublasLtEpilogue_t epi = act == QI_ACT_GELU_TANH ? (b ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU)
                                 : b                     ? CUBLASLT_EPILOGUE_BIAS
                                                         : CUBLASLT_EPILOGUE_DEFAULT;
        p = plan_for(c, (int)N, (int)M, (int)K, (int)epi, align_a, align_d, b ? b->data : NULL);
        if (!p && epi == CUBLASLT_EPILOGUE_DEFAULT) return 0;
        direct = p != NULL; /* no algorithm with that epilogue: the finishing kernel does it */
    }
    if (!p) p = plan_for(c, (int)N, (int)M, (int)K, (int)CUBLASLT_EPILOGUE_DEFAULT, align_a, align_d, NULL);
    if (!p) return 0;
    j->w = w, j->b = b, j->act = act, j->y = y, j->p = p, j->direct = direct, j->row = row;
    memset(&j->key, 0, sizeof j->key);
    j->key.m = p->m, j->key.n = p->n, j->key.k = p->k, j->key.epilogue = p->epilogue;
    j->key.align_a = p->align_a, j->key.align_d = p->align_d;
    return 1;
}

/* Whether j's plan still is the one fp8_prepare chose (the ring of plans
 * may have handed its slot to a later problem meanwhile). */
static int job_plan_holds(const fp8_job *j) {
    const fp8_plan *p = j->p, *k = &j->key;
    return p->used && p->ok && p->m == k->m && p->n == k->n && p->k == k->k && p->epilogue == k->epilogue &&
           p->align_a == k->align_a && p->align_d == k->align_d;
}

/* The weight's per-tensor scale as the GEMM reads it (1: none, or per row). */
static float wscale_of(const qi_tensor *w) { return w->scale_form == QI_SCALE_TENSOR ? w->scale : 1.0f; }

/* x [M, K] (bf16) -> e4m3 in a scratch buffer, returned (NULL after a
 * recorded launch error). The amax reduction, which also stores the n
 * weight scales ws in scale_w[0..n), then the quantisation; with src, the
 * LayerNorm kernel that writes x does the reduction's part (the same
 * amax, of the values as stored: the same scale_x). */
static uint8_t *fp8_quantise(cuda_impl *c, const qi_tensor *x, const qi_ln_mod_src *src, const fp8_wscales *ws) {
    int64_t n = qi_numel(x);
    uint8_t *xq = (uint8_t *)xq_buffer(c, n);
    if (src) {
        fp8_amax_out ao = {c->fp8->dev, *ws};
        qc_ln_mod_amax(c, src, (qi_tensor *)x, ao);
    } else {
        fp8_amax_k<<<grid_for(c, n / 8), 256, 0, c->stream>>>((const bf16 *)x->data, n, *ws, c->fp8->dev);
    }
    fp8_quant_k<<<grid_for(c, n / 8), 256, 0, c->stream>>>((const bf16 *)x->data, n, c->fp8->dev, xq);
    return qc_check_launch(c, "linear (fp8 activation quantisation)") ? NULL : xq;
}

/* The GEMM of job j on x_q (M rows), its weight scale read from scale_w[slot]:
 * 1 when queued, 0 when cuBLASLt refused the call (nothing written to y: the
 * expansion path answers), -1 on a recorded error. */
static int fp8_gemm(cuda_impl *c, const fp8_job *j, const uint8_t *xq, int64_t M, int slot) {
    fp8_plan *p = j->p;
    const qi_tensor *b = j->b;
    int64_t N = j->w->ne[0];
    const float *sw = &c->fp8->dev->scale_w[slot].v;
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
    const void *bias = j->direct && b ? b->data : NULL;
    if (bias) cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t s = cublasLtMatmul(c->lt, p->desc, &alpha, j->w->data, p->a_layout, xq, p->b_layout, &beta,
                                      j->y->data, p->d_layout, j->y->data, p->d_layout, &p->algo, c->lt_workspace,
                                      c->lt_workspace_bytes, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        fallback(c, "cublasLtMatmul", p->m, p->n, p->k, (int)s);
        p->ok = 0;
        return 0;
    }
    if (!j->direct && (j->row || b || j->act != QI_ACT_NONE)) {
        fp8_finish_k<<<grid_for(c, M * N / 8), 256, 0, c->stream>>>(
            (bf16 *)j->y->data, M, N, j->row ? j->w->row_scale : NULL, b ? b->data : NULL, b ? (int)b->dtype : 0,
            b ? b->scale : 1.0f, (int)j->act);
        if (qc_check_launch(c, "linear (fp8 GEMM scales, bias, activation)")) return -1;
    }
    c->fp8_calls++;
    return 1;
}

int qc_fp8_linear(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, qi_act act, qi_tensor *y) {
    fp8_job j;
    if (!fp8_prepare(c, x, w, b, act, y, &j)) return 0;
    fp8_wscales ws = {{wscale_of(w)}, 1};
    const uint8_t *xq = fp8_quantise(c, x, NULL, &ws);
    return xq ? fp8_gemm(c, &j, xq, qi_rows(x), 0) : -1;
}

/* Why sharing is exact: x is quantised with the same kernel, from the same
 * amax and so the same scale_x as each linear alone would; the weight
 * scales all reach the device with the amax, each in its own slot, and
 * GEMM k reads slot k. What goes, counted in bytes for a 1024² call (B 1,
 * image M 4096, text M 128, K 3072, 60 blocks):
 *  - per linear after the first, the reduction's read of x (2·M·K) and the
 *    quantisation's read and write (3·M·K), and two launches: q/k/v of both
 *    streams, 2 × 5 × (4096 + 128) × 3072 = 129.8 MB a block, 7.79 GB a call;
 *  - with src, the reduction's read of x (2·M·K) and its launch: the image
 *    q/k/v and FFN-up inputs and the text q/k/v input, (2 × 4096 + 128) ×
 *    2 × 3072 = 51.1 MB a block, and the text FFN-up input, 0.79 MB in 59
 *    blocks (not the last): 3.11 GB a call.
 * 10.90 GB a call in all, and 719 launches; the modulation pairs (M = B
 * rows) save 120 launches more. */
int qc_fp8_linear_shared(cuda_impl *c, const qi_tensor *x, const qi_ln_mod_src *src, int n,
                         const qi_tensor *const *w, const qi_tensor *const *b, const qi_act *act,
                         qi_tensor *const *y, int *started) {
    *started = 0;
    if (n < 1 || n > FP8_SHARE_MAX || !c->fp8 || !c->fp8_on || !c->fp8->shared_on) return 0;
    if (src && !qc_ln_mod_amax_takes(src, x)) return 0;
    fp8_job jobs[FP8_SHARE_MAX];
    fp8_wscales ws;
    ws.n = n;
    for (int k = 0; k < n; k++) {
        if (!fp8_prepare(c, x, w[k], b[k], act[k], y[k], &jobs[k])) return 0;
        ws.v[k] = wscale_of(w[k]);
    }
    for (int k = 0; k < n; k++)
        if (!job_plan_holds(&jobs[k])) return 0; /* a wrap of the ring: the linears one by one */
    const uint8_t *xq = fp8_quantise(c, x, src, &ws);
    *started = 1; /* x is made (src): from here on the caller must not make it again */
    if (!xq) return -1;
    int64_t M = qi_rows(x);
    for (int k = 0; k < n; k++) {
        int r = fp8_gemm(c, &jobs[k], xq, M, k);
        if (r != 1) return r < 0 ? -1 : k;
    }
    return n;
}

/* ---- creation, the switch, the end ------------------------------------------------ */

qi_status qc_fp8_init(cuda_impl *c, qi_error *err) {
    const char *env = getenv("QI_CUDA_FP8_GEMM");
    c->fp8_supported = c->device_cc >= 89;
    c->fp8_on = c->fp8_supported && (env && env[0] ? env[0] == '1' : FP8_GEMM_DEFAULT);
    if (!c->fp8_supported) return QI_OK;
    struct qc_fp8 *f = (struct qc_fp8 *)calloc(1, sizeof *f);
    if (!f) return qi_fail(err, QI_ERR_NOMEM, "cuda backend: out of host memory");
    cudaError_t e = cudaMalloc((void **)&f->dev, sizeof *f->dev);
    if (e == cudaSuccess) e = cudaMemset(f->dev, 0, sizeof *f->dev);
    if (e != cudaSuccess) {
        cudaFree(f->dev);
        free(f);
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: the fp8 GEMM's scale buffer: %s", cudaGetErrorString(e));
    }
    /* cuBLASLt's fast accumulation (partial sums not promoted to float32 as
     * often): 5% off a 1024² call, and on the H200 the fp8 fixtures' errors
     * stay where they are without it (bench/RESULTS.md runs V, W), so it is
     * the default; QI_CUDA_FP8_FAST_ACCUM=0 turns it off. */
    const char *fa = getenv("QI_CUDA_FP8_FAST_ACCUM");
    f->fast_accum = !(fa && fa[0] == '0');
    /* QI_CUDA_FP8_SHARED=0: every linear quantises its own x (the path before
     * linear_shared, bit-identical), so a bench can time both in one call. */
    const char *sh = getenv("QI_CUDA_FP8_SHARED");
    f->shared_on = !(sh && sh[0] == '0');
    c->fp8 = f;
    return QI_OK;
}

void qc_fp8_destroy(cuda_impl *c) {
    if (!c->fp8) return;
    for (int i = 0; i < FP8_PLANS; i++) plan_free(&c->fp8->plans[i]);
    cudaFree(c->fp8->dev);
    free(c->fp8);
    c->fp8 = NULL;
}

extern "C" int qi_cuda_set_fp8_gemm(qi_backend *be, int on) {
    cuda_impl *c = cuda_of(be);
    c->fp8_on = on && c->fp8 != NULL;
    return c->fp8_on;
}

extern "C" const char *qi_cuda_fp8_gemm_state(qi_backend *be) {
    cuda_impl *c = cuda_of(be);
    if (!c->fp8_supported) return "off (the device is older than compute capability 8.9: no fp8 tensor cores)";
    if (!c->fp8_on) return "off (QI_CUDA_FP8_GEMM=0 or switched off: e4m3 weights are expanded to bf16)";
    if (!c->fp8_fallback[0])
        return c->fp8 && !c->fp8->fast_accum
                   ? "on (cuBLASLt e4m3 x e4m3 with per-tensor dynamic activation scale; QI_CUDA_FP8_FAST_ACCUM=0)"
                   : "on (cuBLASLt e4m3 x e4m3 with per-tensor dynamic activation scale, fast accumulation)";
    snprintf(c->fp8_state, sizeof c->fp8_state, "on (cuBLASLt e4m3 x e4m3 with per-tensor dynamic activation "
             "scale); last case left to the expansion: %s", c->fp8_fallback);
    return c->fp8_state;
}

extern "C" void qi_cuda_gemm_counts(qi_backend *be, unsigned long long *fp8, unsigned long long *expanded) {
    cuda_impl *c = cuda_of(be);
    if (fp8) *fp8 = c->fp8_calls;
    if (expanded) *expanded = c->expand_calls;
}

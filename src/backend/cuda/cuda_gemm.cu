/*
 * cuda_gemm.cu — the bf16 GEMM through cuBLASLt: one cached plan per
 * problem (shape, layouts, epilogue, output type, alignment), its algorithm
 * chosen once, used by `linear`, the im2col conv and attention by GEMMs.
 *
 * Choosing the algorithm. cuBLASLt's heuristic ranks algorithms from the
 * problem's description alone; its first is good, not always the fastest on
 * this GPU for our shapes. With tuning on (the default; QI_CUDA_GEMM_TUNE=0
 * off), a plan made outside a graph recording runs the heuristic's first
 * TUNE_ALGOS candidates on the call's own operands into its own output,
 * TUNE_REPS times each after one warm-up run, timed by events, and keeps the
 * fastest candidate that sums over k like the heuristic's first (the same
 * split-K count and reduction scheme, as cuBLASLt describes them) and whose
 * output is bit-identical to it — so tuning changes time, never results: a
 * candidate that sums in another order (split-K, stream-K) differs in the
 * last bits and is passed over. Outputs are compared by a 64-bit hash of
 * their elements (D may be the scratch itself, so there is nowhere to keep a
 * copy), and only on real data: a first call whose output is mostly zeros
 * (zero inputs agree under any order) leaves the plan untuned. A plan made
 * while a graph is recorded keeps the heuristic's first (nothing can be
 * timed then).
 * The first call of each shape pays for it once per process: ~15 shapes per
 * transformer call, each a few GEMM times × TUNE_ALGOS. Measured on an H200
 * (run AD, bf16 transformer call): 1328² 220.6 → 204.8 ms, 1024² 112.4 →
 * 112.2, 512² 35.2 either way; 41 of 65 plans took another algorithm and
 * 131 faster-or-not candidates were passed over for other bits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define TUNE_ALGOS 8
#define TUNE_REPS 3
#define TUNE_MIN_MNK 1e9 /* m·n·k below which a plan keeps the heuristic's first */

void qc_plan_destroy(lt_plan *p) {
    if (!p->used) return;
    cublasLtMatrixLayoutDestroy(p->a_layout);
    cublasLtMatrixLayoutDestroy(p->b_layout);
    cublasLtMatrixLayoutDestroy(p->d_layout);
    cublasLtMatmulDescDestroy(p->desc);
    p->used = 0;
}

/* What every algorithm must accept: our workspace, operands at addresses
 * that are multiples of al_a, al_b and al_d (C and D) bytes. */
static cublasStatus_t make_preference(cuda_impl *c, uint32_t al_a, uint32_t al_b, uint32_t al_d,
                                      cublasLtMatmulPreference_t *pref) {
    cublasStatus_t s = cublasLtMatmulPreferenceCreate(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    uint64_t ws = c->lt_workspace_bytes;
    cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d);
    cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t qc_lt_best_algo(cuda_impl *c, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                               cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t d, uint32_t al_a, uint32_t al_b,
                               uint32_t al_d, cublasLtMatmulAlgo_t *algo, int *found) {
    cublasLtMatmulPreference_t pref;
    *found = 0;
    cublasStatus_t s = make_preference(c, al_a, al_b, al_d, &pref);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    s = cublasLtMatmulAlgoGetHeuristic(c->lt, desc, a, b, d, d, pref, 1, &res, found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && *found >= 1) s = res.state; /* the algorithm is valid only then */
    if (s == CUBLAS_STATUS_SUCCESS && *found >= 1) *algo = res.algo;
    return s;
}

/* Builds descriptors and asks the heuristic for the best algorithm. */
static int plan_build(cuda_impl *c, lt_plan *p, const char *op) {
    cublasStatus_t s;
    cublasOperation_t ta = p->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->epilogue;
    if ((s = cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS)
        goto fail;
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cublasLtMatrixLayoutCreate(&p->a_layout, CUDA_R_16BF, p->transa ? p->k : p->m,
                               p->transa ? p->m : p->k, p->lda);
    cublasLtMatrixLayoutCreate(&p->b_layout, CUDA_R_16BF, p->transb ? p->n : p->k,
                               p->transb ? p->k : p->n, p->ldb);
    cublasLtMatrixLayoutCreate(&p->d_layout, (cudaDataType_t)p->d_type, p->m, p->n, p->ldd);
    {
        uint32_t al = (uint32_t)p->align;
        int found = 0;
        s = qc_lt_best_algo(c, p->desc, p->a_layout, p->b_layout, p->d_layout, al, al, al, &p->algo, &found);
        if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
            p->used = 1;
            qc_plan_destroy(p);
            qc_fail(c, QI_ERR_BACKEND, "cuda backend: %s: cuBLASLt has no algorithm for %d×%d×%d "
                    "(epilogue %d, alignment %d): status %d", op, p->m, p->n, p->k, p->epilogue,
                    p->align, (int)s);
            return 1;
        }
    }
    p->used = 1;
    return 0;
fail:
    qc_fail(c, QI_ERR_BACKEND, "cuda backend: %s: cuBLASLt descriptor: status %d", op, (int)s);
    return 1;
}

/* A hash of the m×n column-major elements of D (es bytes each, columns ldd
 * apart) that depends on every bit and its position: the sum of a mixed
 * (value, index) per element, so blocks may add in any order — into out[0];
 * how many elements are not ±0 into out[1]. */
__global__ void output_hash_k(const unsigned char *D, int64_t m, int64_t n, int64_t ldd, int es,
                              unsigned long long *out) {
    unsigned long long acc = 0, nonzero = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < m * n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t col = i / m, row = i % m;
        const unsigned char *e = D + (col * ldd + row) * es;
        unsigned long long v = es == 4 ? *(const unsigned int *)e : *(const unsigned short *)e;
        nonzero += (v & (es == 4 ? 0x7fffffffull : 0x7fffull)) != 0; /* ±0 are zeros */
        unsigned long long z = v ^ ((unsigned long long)i * 0x9E3779B97F4A7C15ull); /* splitmix64's finaliser */
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        acc += z ^ (z >> 31);
    }
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_down_sync(0xffffffffu, acc, o);
        nonzero += __shfl_down_sync(0xffffffffu, nonzero, o);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&out[0], acc);
        atomicAdd(&out[1], nonzero);
    }
}

/* The hash of p's output D and its count of nonzero elements, on the host (a
 * synchronisation); 0 with an error. */
static int output_hash(cuda_impl *c, const lt_plan *p, const void *D, unsigned long long out[2]) {
    if (!c->tune_hash && cudaMalloc(&c->tune_hash, 2 * sizeof *c->tune_hash) != cudaSuccess) {
        c->tune_hash = NULL;
        return 0;
    }
    const int es = p->d_type == (int)CUDA_R_32F ? 4 : 2;
    int64_t total = (int64_t)p->m * p->n, blocks = (total + 255) / 256;
    if (blocks > 4 * (int64_t)c->sm_count) blocks = 4 * (int64_t)c->sm_count;
    if (blocks < 1) return 0;
    if (cudaMemsetAsync(c->tune_hash, 0, 2 * sizeof *c->tune_hash, c->stream) != cudaSuccess) return 0;
    output_hash_k<<<(unsigned)blocks, 256, 0, c->stream>>>((const unsigned char *)D, p->m, p->n, p->ldd, es,
                                                           c->tune_hash);
    return cudaGetLastError() == cudaSuccess &&
           cudaMemcpyAsync(out, c->tune_hash, 2 * sizeof *out, cudaMemcpyDeviceToHost, c->stream) == cudaSuccess &&
           cudaStreamSynchronize(c->stream) == cudaSuccess;
}

/* Milliseconds per run of algo on the call's operands (TUNE_REPS runs after
 * one), and the output's hash and nonzero count; -1 when cuBLASLt refuses
 * the algorithm. */
static float time_algo(cuda_impl *c, const lt_plan *p, const cublasLtMatmulAlgo_t *algo, float alpha,
                       const void *A, const void *B, void *D, unsigned long long hash[2]) {
    const float beta = 0.0f;
    float ms = -1.0f;
    for (int r = 0; r <= TUNE_REPS; r++) {
        if (r == 1) cudaEventRecord(c->tune_ev[0], c->stream);
        if (cublasLtMatmul(c->lt, p->desc, &alpha, A, p->a_layout, B, p->b_layout, &beta, D, p->d_layout, D,
                           p->d_layout, algo, c->lt_workspace, c->lt_workspace_bytes, c->stream) !=
            CUBLAS_STATUS_SUCCESS)
            return -1.0f;
    }
    cudaEventRecord(c->tune_ev[1], c->stream);
    if (cudaEventSynchronize(c->tune_ev[1]) != cudaSuccess ||
        cudaEventElapsedTime(&ms, c->tune_ev[0], c->tune_ev[1]) != cudaSuccess || !output_hash(c, p, D, hash))
        return -1.0f;
    return ms / TUNE_REPS;
}

/* How an algorithm sums over k: its split-K count and reduction scheme
 * (0 where cuBLASLt does not say). */
static void sum_order(const cublasLtMatmulAlgo_t *algo, uint32_t *splitk, uint32_t *scheme) {
    size_t got = 0;
    int32_t v = 0;
    *splitk = *scheme = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &v, sizeof v, &got) ==
        CUBLAS_STATUS_SUCCESS && got == sizeof v)
        *splitk = (uint32_t)v;
    uint32_t u = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &u, sizeof u, &got) ==
        CUBLAS_STATUS_SUCCESS && got == sizeof u)
        *scheme = u;
}

/* Replaces p's algorithm by the fastest candidate that sums like the
 * heuristic's first (the same split-K count and reduction scheme) and whose
 * output matches it bit for bit on this call's operands (see the top of the
 * file). The bits are compared on real data only: when fewer than half of
 * the outputs are nonzero (zero inputs, padding) every algorithm may agree,
 * so the plan keeps its algorithm. Leaves the plan as built on anything
 * unexpected, and only clears CUDA errors it caused. */
static void plan_tune(cuda_impl *c, lt_plan *p, float alpha, const void *A, const void *B, void *D) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaPeekAtLastError() != cudaSuccess) return; /* someone else's error: theirs to report */
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return;
    for (int i = 0; i < 2; i++)
        if (!c->tune_ev[i] && cudaEventCreate(&c->tune_ev[i]) != cudaSuccess) {
            c->tune_ev[i] = NULL;
            cudaGetLastError();
            return;
        }
    cublasLtMatmulPreference_t pref;
    const uint32_t al = (uint32_t)p->align;
    if (make_preference(c, al, al, al, &pref) != CUBLAS_STATUS_SUCCESS) return;
    cublasLtMatmulHeuristicResult_t res[TUNE_ALGOS];
    int found = 0;
    memset(res, 0, sizeof res);
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->a_layout, p->b_layout, p->d_layout,
                                                      p->d_layout, pref, TUNE_ALGOS, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found < 2) return;
    /* the plan's algorithm is the heuristic's first: the reference for time and bits */
    unsigned long long ref[2] = {0, 0}, got[2] = {0, 0};
    const float ref_ms = time_algo(c, p, &p->algo, alpha, A, B, D, ref);
    if (ref_ms < 0) {
        cudaGetLastError();
        return;
    }
    if (ref[1] < (unsigned long long)p->m * (unsigned long long)p->n / 2) return; /* degenerate data */
    uint32_t ref_splitk, ref_scheme, splitk, scheme;
    sum_order(&p->algo, &ref_splitk, &ref_scheme);
    float best_ms = ref_ms;
    int best = -1;
    for (int i = 1; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        sum_order(&res[i].algo, &splitk, &scheme);
        if (splitk != ref_splitk || scheme != ref_scheme) {
            c->tune_differs++;
            continue;
        }
        const float ms = time_algo(c, p, &res[i].algo, alpha, A, B, D, got);
        if (ms < 0) {
            cudaGetLastError();
            continue;
        }
        if (got[0] != ref[0]) c->tune_differs++;
        else if (ms < best_ms) best_ms = ms, best = i;
    }
    c->tune_plans++;
    if (best >= 0) {
        p->algo = res[best].algo;
        c->tune_changed++;
        c->tune_saved_ms += ref_ms - best_ms;
    }
}

int qc_gemm(cuda_impl *c, int transa, int transb, int m, int n, int k, const void *A, int lda,
            const void *B, int ldb, void *D, int ldd, cudaDataType_t d_type, float alpha,
            const void *bias, cublasLtEpilogue_t epilogue, const char *op) {
    int align = qc_ptr_align(A);
    if (qc_ptr_align(B) < align) align = qc_ptr_align(B);
    if (qc_ptr_align(D) < align) align = qc_ptr_align(D);
    lt_plan key;
    memset(&key, 0, sizeof key);
    key.transa = transa, key.transb = transb, key.m = m, key.n = n, key.k = k;
    key.lda = lda, key.ldb = ldb, key.ldd = ldd, key.epilogue = (int)epilogue;
    key.d_type = (int)d_type, key.align = align;
    lt_plan *p = NULL;
    int fresh = 0;
    for (int i = 0; i < QI_CUDA_PLANS && !p; i++) {
        lt_plan *q = &c->plans[i];
        if (q->used && q->transa == transa && q->transb == transb && q->m == m && q->n == n &&
            q->k == k && q->lda == lda && q->ldb == ldb && q->ldd == ldd &&
            q->epilogue == (int)epilogue && q->d_type == (int)d_type && q->align == align)
            p = q;
    }
    if (!p) {
        p = &c->plans[c->plan_next];
        c->plan_next = (c->plan_next + 1) % QI_CUDA_PLANS;
        qc_plan_destroy(p);
        *p = key;
        if (plan_build(c, p, op)) return 1;
        fresh = 1;
    }
    if (bias)
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    /* small products are launch-bound (nothing to win) and their shapes vary most (prompt lengths) */
    if (fresh && c->gemm_tune && (double)m * n * k >= TUNE_MIN_MNK) plan_tune(c, p, alpha, A, B, D);
    float beta = 0.0f;
    cublasStatus_t s = cublasLtMatmul(c->lt, p->desc, &alpha, A, p->a_layout, B, p->b_layout, &beta, D,
                                      p->d_layout, D, p->d_layout, &p->algo, c->lt_workspace,
                                      c->lt_workspace_bytes, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: %s: cublasLtMatmul %d×%d×%d failed: status %d", op, m,
                n, k, (int)s);
        return 1;
    }
    return 0;
}


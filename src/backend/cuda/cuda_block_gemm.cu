/*
 * cuda_block_gemm.cu — linears whose weight stays in its GGUF blocks, read by
 * the GEMM itself: y[M, N] = act(x[M, K] · W[N, K]ᵀ + b).
 *
 * The other way (cuda_kept.cu) writes the whole weight as bf16 into a scratch
 * buffer and hands it to cuBLASLt: 2 bytes written and read again per element
 * on top of the 0.56 (Q4_K) – 1.06 (Q8_0) the blocks take. At many rows the
 * GEMM's arithmetic hides that; at few rows (the text stream's 128, a prompt's
 * tokens in the text encoder, the modulation's batch rows) the GEMM is as
 * bound by memory as the expansion, which then costs 2–4× what the GEMM does.
 * Here each block tile of W is decoded once per (row tile of x) into shared
 * memory — the same bf16 values the expansion writes (qc_kept8_bf16) — and
 * multiplied there on the tensor cores with mma.sync, which every GPU from
 * sm_80 runs: nothing but the blocks is read from W's side.
 *
 * Results: the products of the same bf16 operands as the expansion path's,
 * summed in float32 in another order, + bias, activation, one rounding to
 * bf16 (as cuBLASLt's epilogue or qc_bias_act_f32 does). Not bit-identical to
 * the cuBLASLt path, so it is taken only where asked: rows ≤ block_gemm_rows
 * (QI_CUDA_BLOCK_GEMM_ROWS at creation, qi_cuda_set_block_gemm_rows), and only
 * when the weight's expansion is not already waiting in a buffer (prefetched:
 * that one costs nothing more).
 *
 * Measured on an H200 (run AF, `bench --only gemm`): slower than the expansion
 * + cuBLASLt at every shape, 0.70× at 1 row of 3072 × 3072 Q4_K, 0.44× at 128,
 * 0.11× at 4096, so nothing asks for it by default. Each step's decode reads
 * its W bytes from global memory inside the loop (dependent loads) with few
 * warps to hide them: ~3 µs a step where the tensor cores need ~0.1; and at
 * many rows each W tile is decoded once per 64 rows of x. A kernel that won
 * would stage the raw blocks by cp.async steps ahead and share one decode
 * among all of x's rows (wgmma, decoding producer warps).
 *
 * Split K: a block walks its K-steps one after another, and each step waits
 * for its W bytes (the decode reads them right before it writes the tile;
 * they are asked of L2 a step ahead, bg_prefetch_w, so the wait is L2's
 * latency where the prefetch was in time, memory's ~0.6 µs where not), so a
 * block's time is about its step count × that latency: 48 steps at K 3072,
 * up to ~30 µs, where the grid of a few-row product is too small to hide it
 * (128 rows × 3072 outputs: 96 blocks). So when the
 * grid is under two blocks per SM, K is split over gridDim.z until there are
 * ~4 per SM (at least 4 steps each); each split writes its float32 sums into
 * the backend's scratch and a second kernel adds the splits in order, then
 * bias, activation, one rounding. The sums are then split-dependent, but the
 * split is a function of the shape and the GPU alone: the same call gives the
 * same bits every time. QI_CUDA_BLOCK_GEMM_SPLIT=0 at creation: never split.
 *
 * Tiles: 64 rows of x × 64 rows of W per block of 4 warps (each a 32 × 32
 * quarter: 2 × 4 m16n8 products per 16 of K), K in steps of 64, two stages:
 * x's next tile comes by cp.async and W's next tile is decoded while the
 * tensor cores work on the current ones. Rows of shared memory are 72
 * elements (9 chunks of 16 bytes, odd), so the 8 rows one ldmatrix reads lie
 * in 8 different bank groups without a swizzle.
 */
#include <stdint.h>

#include "backend/cuda/cuda_dequant.cuh"
#include "backend/cuda/cuda_flash_common.h" /* cp.async, ldmatrix, mma.sync */
#include "backend/cuda/cuda_internal.h"

#define BG_BM 64      /* rows of x per block */
#define BG_BN 64      /* rows of W (outputs) per block */
#define BG_BK 64      /* K per stage */
#define BG_PITCH 72   /* elements per shared-memory row: 9 chunks, odd */
#define BG_THREADS 128

typedef __nv_bfloat16 bg_bf16;

/* x rows m0.. of K-step kt into xs (64 × 64 elements: 512 chunks of 16 bytes,
 * 4 per thread); rows past M are zeros (cp.async reads 0 bytes of them). */
static __device__ __forceinline__ void bg_load_x(bg_bf16 *xs, const bg_bf16 *x, int M, int K, int m0, int kt) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int c = threadIdx.x + BG_THREADS * j, r = c >> 3, ch = c & 7;
        const int m = m0 + r;
        const bg_bf16 *src = x + (int64_t)(m < M ? m : 0) * K + kt * BG_BK + ch * 8;
        cp_async16(xs + r * BG_PITCH + ch * 8, src, m < M ? 16 : 0);
    }
}

/* W rows n0.. of K-step kt decoded into ws (512 units of 8, 4 per thread);
 * rows past N are zeros. */
template <int DT>
static __device__ __forceinline__ void bg_decode_w(bg_bf16 *ws, const qc_kept &w, int N, int K, int n0, int kt) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int c = threadIdx.x + BG_THREADS * j, r = c >> 3, ch = c & 7;
        const int n = n0 + r;
        __align__(16) bg_bf16 v[8];
        if (n < N) {
            qc_kept8_bf16<DT>(w, (int64_t)n * K + kt * BG_BK + ch * 8, v);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = __float2bfloat16_rn(0.0f);
        }
        *(uint4 *)(ws + r * BG_PITCH + ch * 8) = *(const uint4 *)v;
    }
}

/* Asks L2 for the W bytes K-step kt decodes (the lines of each row's blocks
 * that hold elements kt·64 .. kt·64+63: three 128-byte lines at most in
 * every type), a step before the decode reads them, so that a block's chain
 * of steps waits on L2 rather than on memory. Threads whose chunk index is
 * 0..2 take one line of each of their four rows. A hint: no result changes. */
template <int DT>
static __device__ __forceinline__ void bg_prefetch_w(const qc_kept &w, int N, int K, int n0, int kt) {
    const int ch = threadIdx.x & 7;
    if (ch > 2) return;
    constexpr int be = qc_block_elems(DT), bb = qc_block_bytes(DT);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int n = n0 + ((threadIdx.x + BG_THREADS * j) >> 3);
        if (n >= N) continue;
        const int64_t first = (int64_t)n * K + kt * BG_BK; /* whole rows of whole blocks: the block index runs on */
        const uint8_t *lo = w.data + first / be * bb, *hi = w.data + ((first + BG_BK - 1) / be + 1) * bb;
        const uint8_t *line = (const uint8_t *)((uintptr_t)lo & ~(uintptr_t)127) + 128 * ch;
        if (line < hi) asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
    }
}

/* acc += xs[wm.., :] · ws[wn.., :]ᵀ over one 64-wide K-step: the warp's 32 × 32
 * quarter, 4 k16 steps of 2 (m16) × 4 (n8) mma.sync products. Fragments by
 * ldmatrix: x as the row-major A (lanes 0–15 rows, 16–31 the second 8 of
 * k), W's rows as the "col" B (W[n][k] is B[k][n] with k contiguous). */
static __device__ __forceinline__ void bg_mma_step(float acc[2][4][4], const bg_bf16 *xs, const bg_bf16 *ws, int wm,
                                                   int wn, int lane) {
#pragma unroll
    for (int ks = 0; ks < BG_BK / 16; ks++) {
        uint32_t a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
            ldmatrix_x4(a[mi][0], a[mi][1], a[mi][2], a[mi][3],
                        xs + (wm + mi * 16 + (lane & 15)) * BG_PITCH + ks * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int nj = 0; nj < 2; nj++) /* two n8 tiles per ldmatrix: (k 0–7, k 8–15) of each */
            ldmatrix_x4(b[2 * nj][0], b[2 * nj][1], b[2 * nj + 1][0], b[2 * nj + 1][1],
                        ws + (wn + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * BG_PITCH + ks * 16 +
                            ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
    }
}

/* y = act(acc + bias), one rounding; pairs of columns as one 4-byte store
 * where N is even and y 4-byte aligned (then every pair is: n is even). */
static __device__ __forceinline__ void bg_store(const float acc[2][4][4], bg_bf16 *y, const void *bias, int bdt,
                                                float bscale, int act, int M, int N, int m_base, int n_base,
                                                int lane) {
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++) { /* rows g and g + 8 of the m16n8 tile */
                const int m = m_base + mi * 16 + (lane >> 2) + 8 * h, n = n_base + ni * 8 + (lane & 3) * 2;
                if (m >= M || n >= N) continue;
                float v[2];
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float b = bias && n + e < N ? ld_param(bias, bdt, n + e) * bscale : 0.0f;
                    v[e] = apply_act(acc[mi][ni][2 * h + e] + b, act);
                }
                bg_bf16 *dst = y + (int64_t)m * N + n;
                if ((N & 1) == 0 && ((uintptr_t)y & 3) == 0) {
                    *(__nv_bfloat162 *)dst = __floats2bfloat162_rn(v[0], v[1]);
                } else {
                    dst[0] = __float2bfloat16_rn(v[0]);
                    if (n + 1 < N) dst[1] = __float2bfloat16_rn(v[1]);
                }
            }
}

/* The float32 sums of split z into partial[z][M][N] (no bias, no activation). */
static __device__ __forceinline__ void bg_store_partial(const float acc[2][4][4], float *partial, int M, int N,
                                                        int m_base, int n_base, int lane) {
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m_base + mi * 16 + (lane >> 2) + 8 * h, n = n_base + ni * 8 + (lane & 3) * 2;
                if (m >= M || n >= N) continue;
                float *dst = partial + ((int64_t)blockIdx.z * M + m) * N + n;
                dst[0] = acc[mi][ni][2 * h];
                if (n + 1 < N) dst[1] = acc[mi][ni][2 * h + 1];
            }
}

/* y = act(Σ_z partial[z] + bias), the splits added in order, one rounding. */
__global__ void block_gemm_reduce_k(const float *partial, int splits, int64_t MN, int N, const void *bias, int bdt,
                                    float bscale, int act, bg_bf16 *y) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < MN; i += (int64_t)gridDim.x * blockDim.x) {
        float s = partial[i];
        for (int z = 1; z < splits; z++) s += partial[z * MN + i];
        const float b = bias ? ld_param(bias, bdt, i % N) * bscale : 0.0f;
        y[i] = __float2bfloat16_rn(apply_act(s + b, act));
    }
}

/* Block (x: 64 outputs, y: 64 rows, z: a split of K into steps_per_split 64-steps). partial NULL: one split,
 * y written here; else the split's sums into partial for block_gemm_reduce_k. */
template <int DT>
__global__ void __launch_bounds__(BG_THREADS) block_gemm_k(const bg_bf16 *x, qc_kept w, const void *bias, int bdt,
                                                           float bscale, int act, bg_bf16 *y, float *partial, int M,
                                                           int N, int K, int steps_per_split) {
    __shared__ __align__(16) bg_bf16 xs[2][BG_BM * BG_PITCH];
    __shared__ __align__(16) bg_bf16 ws[2][BG_BN * BG_PITCH];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int m0 = blockIdx.y * BG_BM, n0 = blockIdx.x * BG_BN;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int first = blockIdx.z * steps_per_split;
    const int steps = min(K / BG_BK - first, steps_per_split); /* >= 1: the host makes no empty split */
    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;

    bg_load_x(xs[0], x, M, K, m0, first);
    cp_async_commit();
    if (steps > 1) bg_prefetch_w<DT>(w, N, K, n0, first + 1);
    bg_decode_w<DT>(ws[0], w, N, K, n0, first);
    cp_async_wait_all();
    __syncthreads();
    for (int kt = 0; kt < steps; kt++) {
        const int cur = kt & 1, nxt = cur ^ 1;
        if (kt + 1 < steps) { /* the stage the last step read: free since its closing barrier */
            bg_load_x(xs[nxt], x, M, K, m0, first + kt + 1);
            cp_async_commit();
        }
        if (kt + 2 < steps) bg_prefetch_w<DT>(w, N, K, n0, first + kt + 2); /* decoded in the next iteration */
        bg_mma_step(acc, xs[cur], ws[cur], wm, wn, lane);
        if (kt + 1 < steps) bg_decode_w<DT>(ws[nxt], w, N, K, n0, first + kt + 1);
        cp_async_wait_all();
        __syncthreads();
    }
    if (partial) bg_store_partial(acc, partial, M, N, m0 + wm, n0 + wn, lane);
    else bg_store(acc, y, bias, bdt, bscale, act, M, N, m0 + wm, n0 + wn, lane);
}

/* How many splits of K a product of this grid gets (see the top): 1 when the
 * grid fills two blocks per SM already, or the float32 partials would not
 * fit the scratch; else about 4 blocks per SM, at least 4 steps a split. */
static int split_count(const cuda_impl *c, int64_t blocks, int64_t M, int64_t N, int steps) {
    if (!c->block_gemm_split || blocks >= 2 * (int64_t)c->sm_count) return 1;
    int64_t want = (4 * (int64_t)c->sm_count + blocks - 1) / blocks, most = steps / 4;
    int64_t splits = want < most ? want : most;
    while (splits > 1 && (size_t)(splits * M * N) * sizeof(float) > c->scratch_bytes) splits--;
    return splits < 1 ? 1 : (int)splits;
}

/* Whether linear(x, w) with M rows goes through the block GEMM: a GGUF block
 * weight, asked for at this many rows, shapes the tiles take (K a whole
 * number of 64-steps, at least one, so of blocks of 32 too and of the units
 * of 8 a per-row scale needs; x rows 16-byte aligned; at least one output), and
 * no expansion of w already waiting in a buffer. */
int qc_block_gemm_takes(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, int64_t M) {
    if (c->block_gemm_rows <= 0 || M > c->block_gemm_rows || M < 1) return 0;
    if (!qi_dtype_is_block(w->dtype) || w->ndim != 2 || x->dtype != QI_BF16) return 0;
    int64_t K = w->ne[1], N = w->ne[0];
    if (K < BG_BK || N < 1 || K % BG_BK != 0 || K % qi_type_traits(w->dtype)->block_elems != 0) return 0;
    if (K > INT32_MAX || N > INT32_MAX || (M + BG_BM - 1) / BG_BM > 65535 || !qc_aligned16(x->data)) return 0;
    return !qc_wbuf_has(c, w);
}

int qc_block_gemm(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, qi_act act,
                  qi_tensor *y) {
    const int64_t K = w->ne[1], N = w->ne[0], M = qi_rows(x);
    if (y->dtype != QI_BF16 || x->ne[x->ndim - 1] != K || qi_numel(y) != M * N || (b && qi_numel(b) != N)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: block GEMM: x, w (%s), y shapes or types do not match",
                qi_dtype_name(w->dtype));
        return 1;
    }
    const int steps = (int)(K / BG_BK);
    dim3 grid((unsigned)((N + BG_BN - 1) / BG_BN), (unsigned)((M + BG_BM - 1) / BG_BM));
    int splits = split_count(c, (int64_t)grid.x * grid.y, M, N, steps);
    const int per_split = (steps + splits - 1) / splits;
    splits = (steps + per_split - 1) / per_split; /* none left empty */
    grid.z = (unsigned)splits;
    float *partial = splits > 1 ? (float *)c->scratch : NULL;
    const qc_kept k = qc_kept_of(w);
    const bg_bf16 *xd = (const bg_bf16 *)x->data;
    bg_bf16 *yd = (bg_bf16 *)y->data;
    const void *bd = b ? b->data : NULL;
    const int bdt = b ? (int)b->dtype : 0;
    const float bs = b ? b->scale : 1.0f;
    switch (w->dtype) {
#define BLOCK_GEMM_CASE(T)                                                                                     \
    case T:                                                                                                    \
        block_gemm_k<T><<<grid, BG_THREADS, 0, c->stream>>>(xd, k, bd, bdt, bs, (int)act, yd, partial, (int)M,  \
                                                            (int)N, (int)K, per_split);                        \
        break;
        BLOCK_GEMM_CASE(QI_Q8_0) BLOCK_GEMM_CASE(QI_Q4_0) BLOCK_GEMM_CASE(QI_Q4_1) BLOCK_GEMM_CASE(QI_Q5_0)
        BLOCK_GEMM_CASE(QI_Q5_1) BLOCK_GEMM_CASE(QI_Q2_K) BLOCK_GEMM_CASE(QI_Q3_K) BLOCK_GEMM_CASE(QI_Q4_K)
        BLOCK_GEMM_CASE(QI_Q5_K) BLOCK_GEMM_CASE(QI_Q6_K)
#undef BLOCK_GEMM_CASE
    default:
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: block GEMM: no decoder for %s weights",
                qi_dtype_name(w->dtype));
        return 1;
    }
    int bad = qc_check_launch(c, "block GEMM");
    if (!bad && partial) {
        const int64_t MN = M * N;
        int64_t blocks = (MN + 255) / 256, cap = (int64_t)c->sm_count * 8;
        block_gemm_reduce_k<<<(unsigned)(blocks < cap ? blocks : cap), 256, 0, c->stream>>>(
            partial, splits, MN, (int)N, bd, bdt, bs, (int)act, yd);
        bad = qc_check_launch(c, "block GEMM reduce");
    }
    if (!bad) c->block_gemm_calls++;
    return bad;
}

/*
 * cuda_fp8_amax.cuh — the device state of the fp8 GEMM's dynamic activation
 * scale (cuda_fp8_gemm.cu) and the one way a kernel folds max |x| into it,
 * shared by the fp8 GEMM's own reduction and the LayerNorm kernels that
 * produce x (cuda_ops.cu), so the reduction over x can ride on the kernel
 * that writes x instead of reading it again.
 *
 * Whoever folds: every block of one launch calls fp8_amax_fold once (with
 * its own max over the values AS STORED, i.e. after rounding to bf16, so
 * the result equals a reduction that reads x back); the last block to
 * finish turns the global max into scale_x = amax / 448, stores the weight
 * scales of the GEMMs that follow, and resets the counters for the next
 * launch. No host sync: a CUDA graph records it as it is.
 */
#ifndef QI_CUDA_FP8_AMAX_CUH
#define QI_CUDA_FP8_AMAX_CUH

#include "backend/cuda/cuda_internal.h"

#define E4M3_MAX 448.0f
/* The most linears one quantised x serves in one linear_shared call: the
 * attention's q/k/v per stream (3), the modulation pair (2). More: declined. */
#define FP8_SHARE_MAX 4

/* Each scale cuBLASLt reads sits at a 16-byte boundary: cuBLASLt 13.1 on
 * an H200 offers algorithms for scale pointers 4 bytes apart and then
 * answers every cublasLtMatmul with CUBLAS_STATUS_NOT_SUPPORTED (status
 * 15); 16 bytes apart they run (dev/cuda/fp8-probe, 2026-12-04). */
typedef struct fp8_wscale {
    float v; /* a weight's per-tensor scale (1 for none or per-row) */
    float pad[3];
} fp8_wscale;

/* Zeroed at creation; the last block of each fold puts amax_bits and
 * blocks_done back to zero. */
typedef struct fp8_scales {
    unsigned amax_bits;   /* max |x| as float bits (non-negative floats order as unsigned) */
    unsigned blocks_done; /* blocks of the current launch finished */
    unsigned pad0[2];
    float scale_x; /* amax / 448: x ≈ x_q · scale_x */
    float pad1[3];
    fp8_wscale scale_w[FP8_SHARE_MAX]; /* [k]: the k-th GEMM's weight scale after one quantisation */
} fp8_scales;
static_assert(offsetof(fp8_scales, scale_x) % 16 == 0 && offsetof(fp8_scales, scale_w) % 16 == 0 &&
                  sizeof(fp8_wscale) == 16,
              "cuBLASLt's scale pointers must be 16-byte aligned");

/* The weight scales the last block stores beside scale_x (by value: a
 * kernel argument, so a recorded graph replays them as they were). */
typedef struct fp8_wscales {
    float v[FP8_SHARE_MAX];
    int n;
} fp8_wscales;

/* Where a producing kernel folds its output's amax: st NULL: it does not. */
typedef struct fp8_amax_out {
    fp8_scales *st;
    fp8_wscales ws;
} fp8_amax_out;

/* max over the block (any blockDim.x multiple of 32, up to 1024); valid in thread 0. */
static __device__ __forceinline__ float fp8_block_max(float v) {
    __shared__ float part[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
    if (warp == 0)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Every thread of every block of the launch calls this once, last, with its
 * max |x| (m >= 0) over what it stored. fmaxf drops NaN (a NaN input stays
 * NaN through x_q). */
static __device__ __forceinline__ void fp8_amax_fold(float m, const fp8_wscales &ws, fp8_scales *st) {
    m = fp8_block_max(m);
    if (threadIdx.x != 0) return;
    atomicMax(&st->amax_bits, __float_as_uint(m));
    __threadfence();
    if (atomicAdd(&st->blocks_done, 1u) != gridDim.x - 1) return;
    float amax = __uint_as_float(atomicExch(&st->amax_bits, 0u)); /* every block's max is in */
    st->blocks_done = 0;
    st->scale_x = amax > 0.0f ? amax / E4M3_MAX : 1.0f; /* all zeros: any scale, x_q = 0 */
    for (int k = 0; k < ws.n; k++) st->scale_w[k].v = ws.v[k];
}

/* x = layer_norm_mod(src) or add_gated_layer_norm_mod(src) (cuda_ops.cu),
 * bit-identical to those ops, by their register kernels, folding max |x|
 * into ao. _takes: whether those kernels take the case (bf16, D a multiple
 * of 8 up to 4096, aligned); the launch is only made after it said yes. */
int qc_ln_mod_amax_takes(const qi_ln_mod_src *src, const qi_tensor *x);
void qc_ln_mod_amax(cuda_impl *c, const qi_ln_mod_src *src, qi_tensor *x, fp8_amax_out ao);

#endif

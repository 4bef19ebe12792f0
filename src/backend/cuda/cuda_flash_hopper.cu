/*
 * cuda_flash_hopper.cu — flash attention for head dim 128 on Hopper tensor
 * cores (wgmma), the DiT's and the text encoder's attention.
 *
 * A block owns BR = 64·NWG query rows of one (batch, head); each warpgroup
 * (4 warps) owns 64 of them. Per tile of BC keys:
 *   S[64, BC] = Q Kᵀ   wgmma, A = Q and B = K straight from shared memory
 *                      (both K-major: head dims contiguous);
 *   online softmax on S in registers (float32; base-2 exponent with the scale
 *   folded in), masks applied as a per-key additive bias (0 / −inf) and, on
 *   the causal diagonal, per element;
 *   O[64, 128] += P V  wgmma, A = P from registers (bf16, the accumulator
 *                      layout reused as the A fragment layout), B = V from
 *                      shared memory as stored (MN-major: keys × dims).
 * Q, K and V tiles live in shared memory in the 128-byte-swizzle layout the
 * tensor cores read: [head-dim half][rows][64 dims], 16-byte chunk c of row r
 * at chunk position c ^ (r % 8), each half 1024-byte aligned. K/V tiles are
 * double-buffered and filled with cp.async while the previous tile computes.
 */
#include <stdio.h>

#include "backend/cuda/cuda_flash_common.h"

/* ---- kernel --------------------------------------------------------------------- */

#define DH FLASH_DH

/* Async load of ROWS rows [row0, +ROWS) of a [*, stride] bf16 matrix (zero
 * rows at or past limit) into a swizzled tile. */
template <int ROWS, int NT>
static __device__ __forceinline__ void load_tile(bf16 *tile, const bf16 *g, size_t stride, int row0, int limit) {
    for (int i = threadIdx.x; i < ROWS * 16; i += NT) {
        const int r = i >> 4, ch = i & 15, gr = row0 + r;
        const bool ok = gr < limit;
        cp_async16(tile + sw_off(ROWS, r, ch), g + (size_t)(ok ? gr : 0) * stride + ch * 8, ok ? 16 : 0);
    }
}

/* bias[j] = 0 for a visible key, −inf for a padded or out-of-range one.
 * Returns whether any key of the tile this thread wrote is dropped. */
template <int BC, int NT>
static __device__ __forceinline__ int load_bias(float *bias, const int32_t *mask, int key0, int Lk) {
    int dropped = 0;
    for (int i = threadIdx.x; i < BC; i += NT) {
        const int key = key0 + i;
        const bool keep = key < Lk && (!mask || mask[key]);
        bias[i] = keep ? 0.0f : -INFINITY;
        dropped |= !keep;
    }
    return dropped;
}

template <int BC> static __device__ __forceinline__ void wgmma_s(float *s, uint64_t da, uint64_t db, int acc) {
    if constexpr (BC == 64) wgmma_ss_n64(s, da, db, acc);
    else wgmma_ss_n128(s, da, db, acc);
}

/* Schedule per warpgroup (after FlashAttention-3): iteration j issues
 * S_j = Q K_jᵀ and O += P_{j−1} V_{j−1} back to back, runs the softmax of S_j
 * while the second product is still on the tensor cores, then rescales O.
 * Loads run one tile ahead: iteration j fills K_{j+1} (into K_{j−1}'s buffer)
 * and V_j (into V_{j−2}'s); the barrier closing each iteration separates a
 * buffer's last reader from its next writer. */
template <int BC, int NWG>
__global__ void __launch_bounds__(NWG * 128, 1) flash_hopper_k(attn_params p) {
#if QC_HOPPER_CODE
    constexpr int NT = NWG * 128, BR = 64 * NWG, SN = BC / 2; /* S registers per thread */
    extern __shared__ unsigned char smem_raw[];
    bf16 *sQ = (bf16 *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023); /* [NCB][BR][64] */
    bf16 *sK = sQ + BR * DH;                                               /* [2][NCB][BC][64] */
    bf16 *sV = sK + 2 * BC * DH;                                           /* [2][NCB][BC][64] */
    float *sBias = (float *)(sV + 2 * BC * DH);                            /* [2][BC] */

    const int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int qb = (int)gridDim.x - 1 - (int)blockIdx.x; /* heaviest causal blocks first */
    const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group, q0 = qb * BR;
    const size_t q_stride = (size_t)p.H * DH, kv_stride = (size_t)p.Hkv * DH;
    const bf16 *qg = p.q + ((size_t)b * p.Lq * p.H + h) * DH;
    const bf16 *kg = p.k + ((size_t)b * p.Lk * p.Hkv + hk) * DH;
    const bf16 *vg = p.v + ((size_t)b * p.Lk * p.Hkv + hk) * DH;
    const int32_t *mask = p.mask ? p.mask + (size_t)b * p.Lk : NULL;

    int kend = p.Lk;
    if (p.causal) kend = min(p.Lk, q0 + BR + p.causal_off);
    const int nkb = kend > 0 ? (kend + BC - 1) / BC : 0;

    load_tile<BR, NT>(sQ, qg, q_stride, q0, p.Lq);
    int dropped = 0;
    if (nkb > 0) {
        load_tile<BC, NT>(sK, kg, kv_stride, 0, p.Lk);
        dropped = load_bias<BC, NT>(sBias, mask, 0, p.Lk);
    }
    cp_async_commit();
    cp_async_wait_all();
    fence_proxy_async();
    int tile_has_drops = __syncthreads_or(dropped); /* for tile 0 */

    float o[DH / 2];
#pragma unroll
    for (int i = 0; i < DH / 2; i++) o[i] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    uint32_t pa[BC / 16][4]; /* P_{j−1} as A fragments, 16 keys each */
    const int qrow0 = q0 + wg * 64 + warp * 16 + g; /* this thread's rows: qrow0, qrow0 + 8 */
    const bf16 *sQw = sQ + wg * 64 * 64;           /* this warpgroup's 64 rows */

    for (int kb = 0; kb < nkb; kb++) {
        const int cur = kb & 1, key0 = kb * BC;
        dropped = 0;
        if (kb + 1 < nkb) {
            load_tile<BC, NT>(sK + (cur ^ 1) * BC * DH, kg, kv_stride, key0 + BC, p.Lk);
            dropped = load_bias<BC, NT>(sBias + (cur ^ 1) * BC, mask, key0 + BC, p.Lk);
        }
        load_tile<BC, NT>(sV + cur * BC * DH, vg, kv_stride, key0, p.Lk);
        cp_async_commit();
        const bf16 *tK = sK + cur * BC * DH, *tVprev = sV + (cur ^ 1) * BC * DH;

        /* S_j = Q K_jᵀ (8 steps of 16 head dims), then O += P_{j−1} V_{j−1}. */
        float s[SN];
        fence_regs<SN>(s);
        fence_regs<DH / 2>(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < DH / 16; kk++) {
            const uint64_t da = sw128_desc(sQw + (kk >> 2) * BR * 64 + (kk & 3) * 16, 16, 1024);
            const uint64_t db = sw128_desc(tK + (kk >> 2) * BC * 64 + (kk & 3) * 16, 16, 1024);
            wgmma_s<BC>(s, da, db, kk > 0);
        }
        wgmma_commit();
        if (kb > 0) {
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++)
                wgmma_rs_n128(o, pa[kk], sw128_desc(tVprev + kk * 16 * 64, BC * 64 * 2, 1024));
            wgmma_commit();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); /* S_j done, PV may run */
        } else {
            wgmma_wait_all();
        }
        fence_regs<SN>(s);

        /* Masks: per-key bias when the tile drops any key; causal per element on the diagonal. */
        if (tile_has_drops) {
            const float *bias = sBias + cur * BC;
#pragma unroll
            for (int j = 0; j < BC / 8; j++) {
                const float2 bv = *(const float2 *)(bias + j * 8 + 2 * t);
                s[j * 4 + 0] += bv.x, s[j * 4 + 1] += bv.y, s[j * 4 + 2] += bv.x, s[j * 4 + 3] += bv.y;
            }
        }
        if (p.causal && key0 + BC - 1 > q0 + p.causal_off) causal_mask<BC>(s, key0, qrow0, p.causal_off, t);

        float corr[2];
        online_softmax<BC>(s, m_run, l_run, corr, p.scale_log2);

        /* P_{j−1} V_{j−1} has landed: rescale O to this tile's max, keep P_j. */
        wgmma_wait_all();
        fence_regs<DH / 2>(o);
        rescale_rows<DH>(o, corr);
        pack_p<BC>(s, pa);

        cp_async_wait_all(); /* K_{j+1} and V_j have landed */
        fence_proxy_async();
        tile_has_drops = __syncthreads_or(dropped); /* no warpgroup still reads what the next fills */
    }
    if (nkb > 0) { /* the last tile's P V */
        const bf16 *tV = sV + ((nkb - 1) & 1) * BC * DH;
        fence_regs<DH / 2>(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++)
            wgmma_rs_n128(o, pa[kk], sw128_desc(tV + kk * 16 * 64, BC * 64 * 2, 1024));
        wgmma_commit();
        wgmma_wait_all();
        fence_regs<DH / 2>(o);
    }

    /* Normalise (rows that saw no key give 0, as on the CPU), stage in this
     * warpgroup's rows of sQ, then 16-byte coalesced stores. */
    float inv[2];
    row_inverse(l_run, inv);
#pragma unroll
    for (int j = 0; j < DH / 8; j++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = wg * 64 + warp * 16 + g + 8 * r;
            *(__nv_bfloat162 *)(sQ + sw_off(BR, row, j) + 2 * t) =
                __floats2bfloat162_rn(o[j * 4 + 2 * r] * inv[r], o[j * 4 + 2 * r + 1] * inv[r]);
        }
    __syncthreads();
    bf16 *og = p.o + ((size_t)b * p.Lq * p.H + h) * DH;
    for (int i = threadIdx.x; i < BR * 16; i += NT) {
        const int r = i >> 4, ch = i & 15, grow = q0 + r;
        if (grow < p.Lq) *(uint4 *)(og + (size_t)grow * q_stride + ch * 8) = *(const uint4 *)(sQ + sw_off(BR, r, ch));
    }
#endif
}

template <int BC, int NWG> static void launch(cuda_impl *c, const attn_params *p) {
    constexpr int BR = 64 * NWG;
    const size_t smem = (size_t)(BR + 4 * BC) * DH * sizeof(bf16) + 2 * BC * sizeof(float) + 1024;
    static bool attr_set = false;
    if (!attr_set) {
        cudaFuncSetAttribute(flash_hopper_k<BC, NWG>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        attr_set = true;
    }
    dim3 grid((unsigned)((p->Lq + BR - 1) / BR), (unsigned)p->H, (unsigned)p->B);
    flash_hopper_k<BC, NWG><<<grid, NWG * 128, smem, c->stream>>>(*p);
}

/* The one instance the dispatch picks (Hopper without the driver's TMA entry
 * point): 64-key tiles, 3 warpgroups. The kernel is written for any BC, NWG;
 * the other rungs of the ladder (64x2, 128x2) are in
 * dev/cuda/flash_variants.cu.txt. */
void qc_flash_hopper(cuda_impl *c, const attn_params *p, int variant) {
    (void)variant;
    if (!c->hopper) { /* the kernel is empty in any code but sm_90a's */
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: the wgmma attention kernel needs sm_90a code on a "
                "compute capability 9.x device (this one: %d.%d, code sm_%d)", c->device_cc / 10,
                c->device_cc % 10, c->code_arch / 10);
        return;
    }
    launch<64, 3>(c, p);
}

/*
 * cuda_flash_tma.cu — flash attention for head dim 128 with warp-specialised
 * roles, the default on Hopper (after FlashAttention-3's design).
 *
 * A block owns BR = 64·NWG query rows of one (batch, head). Its NWG consumer
 * warpgroups compute exactly as in cuda_flash_hopper.cu (S = Q Kᵀ and
 * O += P V on wgmma, online softmax in registers, the P V of tile j−1 running
 * while the softmax of tile j computes). One extra producer warpgroup streams
 * tiles with the tensor memory accelerator (TMA) into a ring of STAGES K/V
 * buffers. Ring slots are handed over with mbarriers:
 *   full_k[s], full_v[s]  the TMA has written the slot (transaction bytes);
 *   empty[s]              every consumer warpgroup has finished reading it.
 * So warpgroups never wait for each other, only for data, and drift apart:
 * one's softmax overlaps another's products, which a block-wide barrier per
 * tile (as in cuda_flash_hopper.cu) prevents.
 *
 * The TMA writes tiles in the 128-byte-swizzle layout wgmma reads and fills
 * rows past the end of the sequence with zeros. Key masks (padding, and keys
 * past Lk in the last tile) come from a small pre-pass: an additive bias per
 * key (0 / −inf) and a flag per tile, so tiles with no dropped key skip it.
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdio.h>

#include "backend/cuda/cuda_flash_common.h"

#define DH FLASH_DH

/* bias[b][key] (keys padded to whole tiles) and drop[b][tile]. */
__global__ void key_bias_k(const int32_t *mask, int Lk, int nkb, float *bias, uint8_t *drop) {
    const int j = blockIdx.x, b = blockIdx.y, bc = blockDim.x, key = j * bc + threadIdx.x;
    const bool keep = key < Lk && (!mask || mask[(size_t)b * Lk + key]);
    bias[((size_t)b * nkb + j) * bc + threadIdx.x] = keep ? 0.0f : -INFINITY;
    const int any = __syncthreads_or(!keep);
    if (threadIdx.x == 0) drop[(size_t)b * nkb + j] = (uint8_t)any;
}

template <int BC> static __device__ __forceinline__ void wgmma_s(float *s, uint64_t da, uint64_t db, int acc) {
    if constexpr (BC == 64) wgmma_ss_n64(s, da, db, acc);
    else wgmma_ss_n128(s, da, db, acc);
}

/* Registers: the block is NWG consumer warpgroups and one producer warpgroup
 * (each of the SM's 4 register-file quarters holds one warp of every
 * warpgroup). The producer gives its registers back (setmaxnreg) so that the
 * consumers can hold S, P and O: (NWG·regs + 24)·32 ≤ 16384 per quarter. */
#define TMA_CONSUMER_REGS(NWG) ((NWG) == 2 ? 240 : 160)

template <int BC, int NWG, int STAGES>
__global__ void __launch_bounds__((NWG + 1) * 128, 1)
    flash_tma_k(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                const __grid_constant__ CUtensorMap tm_v, attn_params p, const float *key_bias,
                const uint8_t *tile_drop) {
#if QC_HOPPER_CODE
    constexpr int BR = 64 * NWG, SN = BC / 2;
    constexpr uint32_t TILE_BYTES = BC * DH * sizeof(bf16);
    extern __shared__ unsigned char smem_raw[];
    bf16 *sQ = (bf16 *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023); /* [2][BR][64] */
    bf16 *sK = sQ + BR * DH;                                               /* [STAGES][2][BC][64] */
    bf16 *sV = sK + STAGES * BC * DH;                                      /* [STAGES][2][BC][64] */
    uint64_t *bars = (uint64_t *)(sV + STAGES * BC * DH);
    uint64_t *full_q = bars, *full_k = bars + 1, *full_v = full_k + STAGES, *empty = full_v + STAGES;

    /* the warp index through a shuffle: the compiler then knows it is warp-uniform, so
     * the role branches below do not make the wgmma code look divergent */
    const int warp = __shfl_sync(0xffffffffu, (int)threadIdx.x / 32, 0), lane = threadIdx.x % 32;
    const int qb = (int)gridDim.x - 1 - (int)blockIdx.x; /* heaviest causal blocks first */
    const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group, q0 = qb * BR;
    int kend = p.Lk;
    if (p.causal) kend = min(p.Lk, q0 + BR + p.causal_off);
    const int nkb = kend > 0 ? (kend + BC - 1) / BC : 0;
    const int nkb_all = (p.Lk + BC - 1) / BC; /* tiles per batch row of key_bias */

    if (threadIdx.x == 0) {
        mbar_init(full_q, 1);
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full_k[s], 1);
            mbar_init(&full_v[s], 1);
            mbar_init(&empty[s], NWG);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (warp >= NWG * 4) { /* producer warpgroup: one thread issues every copy */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
        if (warp == NWG * 4 && lane == 0) {
            mbar_expect_tx(full_q, BR * DH * sizeof(bf16));
            tma_load_4d(sQ, &tm_q, 0, h, q0, b, full_q);
            tma_load_4d(sQ + BR * 64, &tm_q, 64, h, q0, b, full_q);
            for (int j = 0; j < nkb; j++) {
                const int s = j % STAGES, u = j / STAGES;
                if (u > 0) mbar_wait(&empty[s], (u - 1) & 1);
                bf16 *k_dst = sK + s * BC * DH, *v_dst = sV + s * BC * DH;
                mbar_expect_tx(&full_k[s], TILE_BYTES);
                tma_load_4d(k_dst, &tm_k, 0, hk, j * BC, b, &full_k[s]);
                tma_load_4d(k_dst + BC * 64, &tm_k, 64, hk, j * BC, b, &full_k[s]);
                mbar_expect_tx(&full_v[s], TILE_BYTES);
                tma_load_4d(v_dst, &tm_v, 0, hk, j * BC, b, &full_v[s]);
                tma_load_4d(v_dst + BC * 64, &tm_v, 64, hk, j * BC, b, &full_v[s]);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(TMA_CONSUMER_REGS(NWG)) : "memory");

    /* consumers */
    const int wg = warp / 4, wq = warp % 4, g = lane / 4, t = lane % 4;
    const int qrow0 = q0 + wg * 64 + wq * 16 + g; /* this thread's rows: qrow0, qrow0 + 8 */
    const bf16 *sQw = sQ + wg * 64 * 64;
    float o[DH / 2];
#pragma unroll
    for (int i = 0; i < DH / 2; i++) o[i] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    uint32_t pa[BC / 16][4];

    mbar_wait(full_q, 0);
    for (int j = 0; j < nkb; j++) {
        const int s = j % STAGES, u = j / STAGES, key0 = j * BC;
        const bf16 *tK = sK + s * BC * DH;
        mbar_wait(&full_k[s], u & 1);

        /* S_j = Q K_jᵀ, then O += P_{j−1} V_{j−1} behind it. */
        float sc[SN];
        fence_regs<SN>(sc);
        fence_regs<DH / 2>(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < DH / 16; kk++) {
            const uint64_t da = sw128_desc(sQw + (kk >> 2) * BR * 64 + (kk & 3) * 16, 16, 1024);
            const uint64_t db = sw128_desc(tK + (kk >> 2) * BC * 64 + (kk & 3) * 16, 16, 1024);
            wgmma_s<BC>(sc, da, db, kk > 0);
        }
        wgmma_commit();
        int sp = 0;
        if (j > 0) {
            sp = (j - 1) % STAGES;
            mbar_wait(&full_v[sp], ((j - 1) / STAGES) & 1);
            const bf16 *tV = sV + sp * BC * DH;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++)
                wgmma_rs_n128(o, pa[kk], sw128_desc(tV + kk * 16 * 64, BC * 64 * 2, 1024));
            wgmma_commit();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        } else {
            wgmma_wait_all();
        }
        fence_regs<SN>(sc);

        if (key_bias && tile_drop[(size_t)b * nkb_all + j]) {
            const float *bias = key_bias + ((size_t)b * nkb_all + j) * BC;
#pragma unroll
            for (int jj = 0; jj < BC / 8; jj++) {
                const float2 bv = *(const float2 *)(bias + jj * 8 + 2 * t);
                sc[jj * 4 + 0] += bv.x, sc[jj * 4 + 1] += bv.y, sc[jj * 4 + 2] += bv.x, sc[jj * 4 + 3] += bv.y;
            }
        }
        if (p.causal && key0 + BC - 1 > q0 + p.causal_off) causal_mask<BC>(sc, key0, qrow0, p.causal_off, t);
        float corr[2];
        online_softmax<BC>(sc, m_run, l_run, corr, p.scale_log2);

        wgmma_wait_all(); /* P_{j−1} V_{j−1} done: its slot can be refilled */
        fence_regs<DH / 2>(o);
        if (j > 0 && wq == 0 && lane == 0) mbar_arrive(&empty[sp]);
        rescale_rows<DH>(o, corr);
        pack_p<BC>(sc, pa);
    }
    if (nkb > 0) { /* the last tile's P V */
        const int sp = (nkb - 1) % STAGES;
        mbar_wait(&full_v[sp], ((nkb - 1) / STAGES) & 1);
        const bf16 *tV = sV + sp * BC * DH;
        fence_regs<DH / 2>(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) wgmma_rs_n128(o, pa[kk], sw128_desc(tV + kk * 16 * 64, BC * 64 * 2, 1024));
        wgmma_commit();
        wgmma_wait_all();
        fence_regs<DH / 2>(o);
    }

    /* Normalise, stage in this warpgroup's rows of sQ (its own products are
     * done with them), then 16-byte stores by all consumer threads. */
    float inv[2];
    row_inverse(l_run, inv);
#pragma unroll
    for (int jj = 0; jj < DH / 8; jj++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = wg * 64 + wq * 16 + g + 8 * r;
            *(__nv_bfloat162 *)(sQ + sw_off(BR, row, jj) + 2 * t) =
                __floats2bfloat162_rn(o[jj * 4 + 2 * r] * inv[r], o[jj * 4 + 2 * r + 1] * inv[r]);
        }
    asm volatile("bar.sync 1, %0;\n" ::"r"(NWG * 128) : "memory"); /* consumers only */
    const size_t q_stride = (size_t)p.H * DH;
    bf16 *og = p.o + ((size_t)b * p.Lq * p.H + h) * DH;
    for (int i = threadIdx.x; i < BR * 16; i += NWG * 128) {
        const int r = i >> 4, ch = i & 15, grow = q0 + r;
        if (grow < p.Lq) *(uint4 *)(og + (size_t)grow * q_stride + ch * 8) = *(const uint4 *)(sQ + sw_off(BR, r, ch));
    }
#endif
}

/* ---- host ------------------------------------------------------------------------------ */

/* A [B, L, heads, 128] bf16 tensor as a 4-D TMA map with boxes of 64 dims × rows. */
static int make_map(cuda_impl *c, CUtensorMap *m, const bf16 *ptr, int B, int L, int heads, int rows) {
    const cuuint64_t dims[4] = {DH, (cuuint64_t)heads, (cuuint64_t)L, (cuuint64_t)B};
    const cuuint64_t strides[3] = {DH * sizeof(bf16), (cuuint64_t)heads * DH * sizeof(bf16),
                                   (cuuint64_t)L * heads * DH * sizeof(bf16)};
    const cuuint32_t box[4] = {64, 1, (cuuint32_t)rows, 1}, elem[4] = {1, 1, 1, 1};
    CUresult r = ((PFN_cuTensorMapEncodeTiled_v12000)c->tmap_encode)(
        m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, (void *)ptr, dims, strides, box, elem,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: attention: cuTensorMapEncodeTiled failed (%d)", (int)r);
        return 1;
    }
    return 0;
}

template <int BC, int NWG, int STAGES> static void launch(cuda_impl *c, const attn_params *p) {
    constexpr int BR = 64 * NWG;
    CUtensorMap tq, tk, tv;
    if (make_map(c, &tq, p->q, p->B, p->Lq, p->H, BR) || make_map(c, &tk, p->k, p->B, p->Lk, p->Hkv, BC) ||
        make_map(c, &tv, p->v, p->B, p->Lk, p->Hkv, BC))
        return;
    /* Key bias and per-tile flags, when a mask is given or the last tile runs past Lk. */
    const float *bias = NULL;
    const uint8_t *drop = NULL;
    const int nkb_all = (p->Lk + BC - 1) / BC;
    if (p->mask || p->Lk % BC) {
        size_t bias_bytes = ((size_t)p->B * nkb_all * BC * sizeof(float) + 255) & ~(size_t)255;
        if (bias_bytes + (size_t)p->B * nkb_all > c->scratch_bytes) {
            qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: attention key mask does not fit the scratch");
            return;
        }
        bias = (const float *)c->scratch;
        drop = (const uint8_t *)(c->scratch + bias_bytes);
        key_bias_k<<<dim3((unsigned)nkb_all, (unsigned)p->B), BC, 0, c->stream>>>(p->mask, p->Lk, nkb_all,
                                                                                  (float *)bias, (uint8_t *)drop);
    }
    const size_t smem = (size_t)(BR + 2 * STAGES * BC) * DH * sizeof(bf16) + (1 + 3 * STAGES) * 8 + 1024;
    static bool attr_set = false;
    if (!attr_set) {
        cudaFuncSetAttribute(flash_tma_k<BC, NWG, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        attr_set = true;
    }
    dim3 grid((unsigned)((p->Lq + BR - 1) / BR), (unsigned)p->H, (unsigned)p->B);
    flash_tma_k<BC, NWG, STAGES><<<grid, (NWG + 1) * 128, smem, c->stream>>>(tq, tk, tv, *p, bias, drop);
}

/* The two instances pick_tma chooses between (cuda_attention.cu); 128x2 is
 * in dev/cuda/flash_variants.cu.txt. */
void qc_flash_tma(cuda_impl *c, const attn_params *p, int variant) {
    if (!c->hopper || !c->tmap_encode) { /* the kernel is empty in any code but sm_90a's */
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: the TMA attention kernel needs sm_90a code on a "
                "compute capability 9.x device and the driver's cuTensorMapEncodeTiled (this one: %d.%d, "
                "code sm_%d)", c->device_cc / 10, c->device_cc % 10, c->code_arch / 10);
        return;
    }
    if (variant == QC_ATTN_TMA_64x3) launch<64, 3, 3>(c, p);
    else launch<64, 2, 4>(c, p);
}

/*
 * cuda_attention.cu — scaled dot-product attention for the CUDA backend.
 *
 * Three families of kernels:
 *  - flash_k: a portable flash-attention kernel (online softmax, float32 running max /
 *    sum / output, bf16 tensor-core products through mma.sync m16n8k16) for
 *    head dims 16, 32, 64, 80 (the vision tower) and 128. One block owns
 *    BR = 16·NW query rows of one (batch, head); each warp owns 16 of them
 *    and keeps its Q fragments, its score tile and its output accumulator in
 *    registers. K/V tiles of 64 keys stream through double-buffered shared
 *    memory (cp.async), rows swizzled (or padded: tile_shape) in 16-byte
 *    chunks so ldmatrix reads are conflict-free. Key padding mask,
 *    causal masking (query i sees keys j <= i + Lk - Lq) and GQA (head h reads
 *    kv head h / (H / Hkv)) are applied in the score tile. With segment
 *    offsets (attention_segments) each block takes its rows from one
 *    segment and sees only that segment's keys: many windows, one launch.
 *  - flash_hopper_k (cuda_flash_hopper.cu) and flash_tma_k (cuda_flash_tma.cu):
 *    the same algorithm on Hopper's wgmma for head dim 128; the TMA-fed,
 *    warp-specialised one is the default there (pick_tma chooses its shape).
 *  - attention by GEMMs (any head dim, e.g. the VAE's single 384-wide head):
 *    per (batch, head) and chunk of queries, S = Q·Kᵀ in float32 through
 *    cuBLASLt into scratch, a row softmax into bf16 P, then O = P·V.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cuda/cuda_flash_common.h" /* PTX wrappers shared with the Hopper kernels */

#define BC 64 /* keys per tile */

/* ---- flash kernel -------------------------------------------------------------- */

/* Shared-memory layout of a [rows][DH] bf16 tile. Power-of-two head dims:
 * rows of DH elements, 16-byte chunks swizzled (chunk ch of row r sits at
 * ch ^ (r & MASK)), so the 8 rows one ldmatrix reads at one chunk fall in 8
 * different bank groups. That XOR would leave the row when the chunk count is
 * not a power of two (DH 80: 10 chunks, 9 ^ 7 = 14), so such dims pad each
 * row to an odd number of chunks instead (80 -> 88 elements, 11 chunks):
 * rows r..r+7 then start 11·r mod 8 = 8 distinct bank groups apart, equally
 * conflict-free, with no swizzle. */
template <int DH> struct tile_shape {
    static constexpr bool POW2 = (DH & (DH - 1)) == 0;
    static constexpr int PITCH = POW2 ? DH : ((DH / 8) % 2 ? DH : DH + 8); /* elements per row */
    static_assert(DH % 16 == 0, "head dims are whole mma k-steps");
};

/* Element offset of 16-byte chunk `ch` of row `row` in a [rows][DH] tile. */
template <int DH> static __device__ __forceinline__ int swz(int row, int ch) {
    constexpr int CH = DH / 8, MASK = (CH < 8 ? CH : 8) - 1;
    if (tile_shape<DH>::POW2) return row * DH + ((ch ^ (row & MASK)) * 8);
    return row * tile_shape<DH>::PITCH + ch * 8;
}

/* Async load of ROWS rows [row0, row0+ROWS) of a [*, stride] bf16 matrix into
 * a swizzled tile; rows at or past `limit` are zero-filled. */
template <int ROWS, int DH, int NT>
static __device__ __forceinline__ void load_tile(bf16 *tile, const bf16 *g, size_t stride, int row0,
                                                 int limit) {
    constexpr int CH = DH / 8;
    for (int i = threadIdx.x; i < ROWS * CH; i += NT) {
        int r = i / CH, ch = i % CH, gr = row0 + r;
        bool ok = gr < limit;
        cp_async16(tile + swz<DH>(r, ch), g + (size_t)(ok ? gr : 0) * stride + ch * 8, ok ? 16 : 0);
    }
}

/* Writes the key mask of the tile at key0 into keep[BC] (1: visible; keys
 * at or past Lk: 0) and returns whether it drops any key. A block-wide vote:
 * every thread calls it; its barrier also orders this write after the
 * previous tile's reads (which end at that tile's closing barrier). */
static __device__ __forceinline__ int stage_tile_mask(int *keep, const int32_t *mask, int key0, int Lk) {
    int k = 1;
    if (threadIdx.x < BC) {
        const int key = key0 + threadIdx.x;
        k = key < Lk && mask[key] != 0;
        keep[threadIdx.x] = k;
    }
    return __syncthreads_or(!k);
}

/* With segment offsets: which segment's rows block blockIdx.x takes. Blocks
 * go to segments in order, ceil(len / BR) each; *qb becomes the block's index
 * inside its segment, *r0 the segment's first row, *len its length. Offsets
 * are clamped to [0, Lq] (a malformed list then leaves rows unwritten, never
 * reads outside the tensors). Returns 0 for a block past the last segment.
 * A linear walk: segments are windows, a few dozen per launch. */
template <int BR>
static __device__ __forceinline__ int segment_of_block(const attn_params &p, int *qb, int *r0, int *len) {
    int blk = (int)blockIdx.x;
    for (int s = 0; s < p.nseg; s++) {
        const int a = min(max(p.seg[s], 0), p.Lq), e = min(max(p.seg[s + 1], a), p.Lq);
        const int nb = (e - a + BR - 1) / BR;
        if (blk < nb) {
            *qb = blk, *r0 = a, *len = e - a;
            return 1;
        }
        blk -= nb;
    }
    return 0;
}

template <int DH, int NW>
__global__ void __launch_bounds__(NW * 32, 1) flash_k(attn_params p) {
    constexpr int NT = NW * 32, BR = 16 * NW, CH = DH / 8, KD = DH / 16;
    static_assert(NT >= BC, "one thread per key of a tile reads its mask");
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int PITCH = tile_shape<DH>::PITCH;
    bf16 *sQ = (bf16 *)smem;         /* [BR][DH], later the output staging */
    bf16 *sK = sQ + BR * PITCH;      /* [2][BC][DH] */
    bf16 *sV = sK + 2 * BC * PITCH;  /* [2][BC][DH] */

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int qb = (int)gridDim.x - 1 - (int)blockIdx.x; /* heaviest causal blocks first */
    int Lq = p.Lq, Lk = p.Lk, r0 = 0;             /* this block's rows: r0 + [0, Lq) */
    if (p.seg) {                                  /* one segment's rows and keys */
        if (!segment_of_block<BR>(p, &qb, &r0, &Lq)) return; /* a spare block: all of it leaves */
        Lk = Lq;
    }
    const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group, q0 = qb * BR;
    const size_t q_stride = (size_t)p.H * DH, kv_stride = (size_t)p.Hkv * DH;
    const bf16 *qg = p.q + (((size_t)b * p.Lq + r0) * p.H + h) * DH;
    const bf16 *kg = p.k + (((size_t)b * p.Lk + r0) * p.Hkv + hk) * DH;
    const bf16 *vg = p.v + (((size_t)b * p.Lk + r0) * p.Hkv + hk) * DH;
    const int32_t *mask = p.mask ? p.mask + (size_t)b * p.Lk + r0 : NULL;

    int kend = Lk; /* keys past kend are invisible to every query of the block */
    if (p.causal) kend = min(Lk, q0 + BR + p.causal_off);
    const int nkb = kend > 0 ? (kend + BC - 1) / BC : 0;

    load_tile<BR, DH, NT>(sQ, qg, q_stride, q0, Lq);
    if (nkb > 0) {
        load_tile<BC, DH, NT>(sK, kg, kv_stride, 0, Lk);
        load_tile<BC, DH, NT>(sV, vg, kv_stride, 0, Lk);
    }
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    /* This warp's 16 query rows as A fragments, one per 16 dims. */
    uint32_t qf[KD][4];
    {
        const int mat = lane >> 3, row = warp * 16 + (lane & 7) + (mat & 1) * 8;
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
            ldmatrix_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], sQ + swz<DH>(row, 2 * kk + (mat >> 1)));
    }

    float o[DH / 8][4];
#pragma unroll
    for (int d = 0; d < DH / 8; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    const int qrow0 = q0 + warp * 16 + g; /* rows qrow0 and qrow0 + 8 */

    __shared__ int sKeep[BC]; /* this tile's key mask (1: visible), when there is a mask */
    for (int kb = 0; kb < nkb; kb++) {
        const int cur = kb & 1, key0 = kb * BC;
        /* tiles that drop no key (most of them) skip the per-element masking */
        const int tile_drops = mask ? stage_tile_mask(sKeep, mask, key0, Lk) : key0 + BC > Lk;
        if (kb + 1 < nkb) {
            load_tile<BC, DH, NT>(sK + (cur ^ 1) * BC * PITCH, kg, kv_stride, (kb + 1) * BC, Lk);
            load_tile<BC, DH, NT>(sV + (cur ^ 1) * BC * PITCH, vg, kv_stride, (kb + 1) * BC, Lk);
        }
        cp_async_commit();
        const bf16 *tK = sK + cur * BC * PITCH, *tV = sV + cur * BC * PITCH;

        /* S = Q Kᵀ for 64 keys: 8 tiles of 16×8. */
        float s[BC / 8][4];
#pragma unroll
        for (int j = 0; j < BC / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        {
            const int mat = lane >> 3, krow = (lane & 7) + (mat >> 1) * 8;
#pragma unroll
            for (int kk = 0; kk < KD; kk++)
#pragma unroll
                for (int j = 0; j < BC / 8; j += 2) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4(b0, b1, b2, b3, tK + swz<DH>(j * 8 + krow, 2 * kk + (mat & 1)));
                    mma_bf16(s[j], qf[kk], b0, b1);
                    mma_bf16(s[j + 1], qf[kk], b2, b3);
                }
        }

        /* Masks: keys past Lk, padded keys, keys after the causal limit. */
        const bool edge = tile_drops || (p.causal && key0 + BC - 1 > q0 + p.causal_off);
        if (edge) {
#pragma unroll
            for (int j = 0; j < BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int kj = j * 8 + 2 * t + (e & 1), key = key0 + kj, qrow = qrow0 + (e >> 1) * 8;
                    bool drop = key >= Lk || (mask && !sKeep[kj]) || (p.causal && key > qrow + p.causal_off);
                    if (drop) s[j][e] = -INFINITY;
                }
        }

        /* Online softmax, per row r (row g: elements 0,1; row g+8: elements 2,3). */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = m_run[r];
#pragma unroll
            for (int j = 0; j < BC / 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float msc = mx == -INFINITY ? 0.0f : mx * p.scale_log2;
            const float corr = fast_exp2(m_run[r] * p.scale_log2 - msc);
            m_run[r] = mx;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < BC / 8; j++) {
                float p0 = fast_exp2(s[j][2 * r] * p.scale_log2 - msc);
                float p1 = fast_exp2(s[j][2 * r + 1] * p.scale_log2 - msc);
                s[j][2 * r] = p0;
                s[j][2 * r + 1] = p1;
                sum += p0 + p1;
            }
            l_run[r] = l_run[r] * corr + sum;
#pragma unroll
            for (int d = 0; d < DH / 8; d++) {
                o[d][2 * r] *= corr;
                o[d][2 * r + 1] *= corr;
            }
        }

        /* O += P V: P (16×64, bf16) as 4 A fragments, V through ldmatrix.trans. */
        {
            const int mat = lane >> 3, vrow = (lane & 7) + (mat & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t pa[4];
                pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int d = 0; d < DH / 8; d += 2) {
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, tV + swz<DH>(kk * 16 + vrow, d + (mat >> 1)));
                    mma_bf16(o[d], pa, b0, b1);
                    mma_bf16(o[d + 1], pa, b2, b3);
                }
            }
        }
        cp_async_wait_all(); /* next tile landed */
        __syncthreads();     /* and every warp is done with this one before it is refilled */
    }

    /* Normalise; rows that saw no key (all masked) give 0, as on the CPU. */
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    /* Stage this warp's 16 rows in its own part of sQ, then 16-byte stores. */
#pragma unroll
    for (int d = 0; d < DH / 8; d++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = warp * 16 + g + 8 * r;
            *(__nv_bfloat162 *)(sQ + swz<DH>(row, d) + 2 * t) =
                __floats2bfloat162_rn(o[d][2 * r] * inv[r], o[d][2 * r + 1] * inv[r]);
        }
    __syncwarp();
    bf16 *og = p.o + (((size_t)b * p.Lq + r0) * p.H + h) * DH;
    for (int i = lane; i < 16 * CH; i += 32) {
        const int row = warp * 16 + i / CH, ch = i % CH, grow = q0 + row;
        if (grow < Lq) *(uint4 *)(og + (size_t)grow * q_stride + ch * 8) = *(const uint4 *)(sQ + swz<DH>(row, ch));
    }
}

template <int DH, int NW> static void launch_flash(cuda_impl *c, const attn_params &p) {
    constexpr int BR = 16 * NW;
    const size_t smem = (size_t)(BR + 4 * BC) * tile_shape<DH>::PITCH * sizeof(bf16);
    static bool attr_set = false; /* per template instance; the limit is per function */
    if (!attr_set) {
        cudaFuncSetAttribute(flash_k<DH, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        attr_set = true;
    }
    /* Segments: ceil(len / BR) blocks each, at most ceil(L / BR) + nseg in all;
     * the spare ones leave at once. */
    dim3 grid((unsigned)((p.Lq + BR - 1) / BR + (p.seg ? p.nseg : 0)), (unsigned)p.H, (unsigned)p.B);
    flash_k<DH, NW><<<grid, NW * 32, smem, c->stream>>>(p);
}

/* ---- attention by GEMMs ------------------------------------------------------------ */

/* P[i, :] = softmax(S[i, :] · scale + mask) in bf16, one block of 256
 * threads per row. The row is read from global memory once: with ROW_IN_SMEM
 * it is copied into shared memory (16-byte loads) and the max, the sum and
 * the output read it there; without (rows too long for shared memory) the
 * three passes read global memory. Each thread visits the same elements in
 * the same order either way (j = thread, thread + 256, …) and the block
 * reductions are the same, so both give the same bits. Reading the row three
 * times from global memory took 107 µs per 1024 rows of 16384 keys (the VAE's
 * mid attention at 1024²: 96 MB moved, ~25 µs of HBM time; run AC). */
template <bool ROW_IN_SMEM>
__global__ void softmax_rows_k(const float *S, bf16 *P, int Lk, const int32_t *mask, int causal,
                               int causal_off, int q_first, float scale_log2) {
    extern __shared__ __align__(16) float row_sh[];
    __shared__ float sh[32];
    const int i = blockIdx.x;
    const float *sr = S + (size_t)i * Lk;
    bf16 *pr = P + (size_t)i * Lk;
    if (ROW_IN_SMEM) { /* Lk % 4 == 0 and S 16-byte aligned: the launcher checks */
        for (int j = threadIdx.x; j < Lk / 4; j += blockDim.x)
            ((float4 *)row_sh)[j] = __ldcs(((const float4 *)sr) + j); /* read once: stream past the caches */
        __syncthreads();
        sr = row_sh;
    }
    const int last = causal ? q_first + i + causal_off : Lk - 1; /* last visible key */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < Lk; j += blockDim.x)
        if (j <= last && (!mask || mask[j])) mx = fmaxf(mx, sr[j]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x / 32] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / 32; w++) mx = fmaxf(mx, sh[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < Lk; j += blockDim.x)
        if (j <= last && (!mask || mask[j])) sum += exp2f((sr[j] - mx) * scale_log2);
    sum = warp_sum(sum);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x / 32] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) sum += sh[w];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f; /* all masked: a zero row, output 0 */
    for (int j = threadIdx.x; j < Lk; j += blockDim.x) {
        bool keep = j <= last && (!mask || mask[j]);
        pr[j] = __float2bfloat16_rn(keep ? exp2f((sr[j] - mx) * scale_log2) * inv : 0.0f);
    }
}

/* Launches the softmax of n rows, the row in shared memory when it fits
 * (up to 160 KiB, or what the device lets a block have: 64 KiB rows, the
 * VAE's 16384 keys at 1024², fit from Ampere on). */
static void softmax_rows(cuda_impl *c, const float *S, bf16 *P, int n, const attn_params &p, const int32_t *mask,
                         int q_first) {
    if (c->softmax_smem == 0) { /* the kernel's dynamic shared memory limit, raised once per backend */
        /* dynamic + the kernel's static 128 bytes must fit the device's opt-in limit */
        int dev_max = 0;
        cudaFuncAttributes fa;
        int want = -1;
        if (cudaDeviceGetAttribute(&dev_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->device) == cudaSuccess &&
            cudaFuncGetAttributes(&fa, softmax_rows_k<true>) == cudaSuccess) {
            want = dev_max - (int)fa.sharedSizeBytes;
            if (want > (160 << 10)) want = 160 << 10;
        }
        c->softmax_smem = want > 0 && cudaFuncSetAttribute(softmax_rows_k<true>,
                                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                           want) == cudaSuccess ? want : -1;
        if (c->softmax_smem < 0) cudaGetLastError(); /* the refusal's error, not left for the next check */
    }
    const size_t row_bytes = (size_t)p.Lk * sizeof(float);
    if (p.Lk % 4 == 0 && qc_aligned16(S) && c->softmax_smem > 0 && row_bytes <= (size_t)c->softmax_smem)
        softmax_rows_k<true><<<n, 256, row_bytes, c->stream>>>(S, P, p.Lk, mask, p.causal, p.causal_off, q_first,
                                                                p.scale_log2);
    else
        softmax_rows_k<false><<<n, 256, 0, c->stream>>>(S, P, p.Lk, mask, p.causal, p.causal_off, q_first,
                                                         p.scale_log2);
}

static void attention_gemm(cuda_impl *c, const attn_params &p, int Dh) {
    const size_t q_stride = (size_t)p.H * Dh, kv_stride = (size_t)p.Hkv * Dh;
    const size_t row_bytes = (size_t)p.Lk * (sizeof(float) + sizeof(bf16)) + 512;
    int64_t qc = (int64_t)(c->scratch_bytes / row_bytes);
    if (qc > p.Lq) qc = p.Lq;
    if (qc < 1) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: attention over %d keys does not fit the scratch", p.Lk);
        return;
    }
    float *S = (float *)c->scratch;
    bf16 *P = (bf16 *)(c->scratch + (((size_t)qc * p.Lk * sizeof(float) + 255) & ~(size_t)255));
    for (int b = 0; b < p.B; b++)
        for (int h = 0; h < p.H; h++) {
            const int hk = h / p.group;
            const bf16 *kb = p.k + ((size_t)b * p.Lk * p.Hkv + hk) * Dh;
            const bf16 *vb = p.v + ((size_t)b * p.Lk * p.Hkv + hk) * Dh;
            const int32_t *mask = p.mask ? p.mask + (size_t)b * p.Lk : NULL;
            for (int64_t i0 = 0; i0 < p.Lq; i0 += qc) {
                const int n = (int)(p.Lq - i0 < qc ? p.Lq - i0 : qc);
                const bf16 *qb = p.q + ((size_t)b * p.Lq * p.H + h) * Dh + (size_t)i0 * q_stride;
                bf16 *ob = p.o + ((size_t)b * p.Lq * p.H + h) * Dh + (size_t)i0 * q_stride;
                /* S[n, Lk] = Q Kᵀ (column-major Sᵀ = K · Qᵀ). */
                if (qc_gemm(c, 1, 0, p.Lk, n, Dh, kb, (int)kv_stride, qb, (int)q_stride, S, p.Lk,
                            CUDA_R_32F, 1.0f, NULL, CUBLASLT_EPILOGUE_DEFAULT, "attention QK"))
                    return;
                softmax_rows(c, S, P, n, p, mask, (int)i0);
                if (qc_check_launch(c, "attention softmax")) return;
                /* O[n, Dh] = P V (column-major Oᵀ = Vᵀ · Pᵀ). */
                if (qc_gemm(c, 0, 0, Dh, n, p.Lk, vb, (int)kv_stride, P, p.Lk, ob, (int)q_stride,
                            CUDA_R_16BF, 1.0f, NULL, CUBLASLT_EPILOGUE_DEFAULT, "attention PV"))
                    return;
            }
        }
}

/* ---- op ------------------------------------------------------------------------------ */

/* The TMA kernel with 3 warpgroups (192 query rows per block) is ~12% faster
 * per row than the one with 2 (128 rows; measured on an H200 at 4224 tokens),
 * but its blocks come in coarser waves: take it when its whole waves of work
 * still cost less, e.g. at 1024² (528 blocks = 4 full waves of 132) and not at
 * 512² (144 blocks: a second, nearly empty wave). */
static int pick_tma(const cuda_impl *c, const attn_params &p) {
    const int64_t sms = c->sm_count > 0 ? c->sm_count : 132;
    const int64_t b2 = (int64_t)((p.Lq + 127) / 128) * p.H * p.B, b3 = (int64_t)((p.Lq + 191) / 192) * p.H * p.B;
    const double t2 = (double)((b2 + sms - 1) / sms) * 128.0, t3 = (double)((b3 + sms - 1) / sms) * 192.0 * 0.88;
    return t3 < t2 ? QC_ATTN_TMA_64x3 : QC_ATTN_TMA_64x2;
}

/* Checks the operands and fills p (no segments); 0 when there is nothing to
 * run or an error was recorded. */
static int attn_setup(cuda_impl *c, const char *op, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                      const qi_tensor *key_mask, int causal, float scale, qi_tensor *out, attn_params *p) {
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || out->ndim != 4) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: %s needs 4-D q, k, v, out [B, L, H, Dh]", op);
        return 0;
    }
    const int64_t B = q->ne[0], Lq = q->ne[1], H = q->ne[2], Dh = q->ne[3];
    const int64_t Lk = k->ne[1], Hkv = k->ne[2];
    if (k->ne[0] != B || v->ne[0] != B || v->ne[1] != Lk || v->ne[2] != Hkv || k->ne[3] != Dh ||
        v->ne[3] != Dh || Hkv <= 0 || H % Hkv != 0 || qi_numel(out) != qi_numel(q) ||
        (key_mask && (key_mask->dtype != QI_I32 || qi_numel(key_mask) != B * Lk))) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: %s shapes do not agree (q [B, Lq, H, Dh], k/v "
                "[B, Lk, Hkv, Dh] with H %% Hkv == 0, mask I32 [B, Lk])", op);
        return 0;
    }
    if (q->dtype != QI_BF16 || k->dtype != QI_BF16 || v->dtype != QI_BF16 || out->dtype != QI_BF16) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: %s needs bf16 q, k, v, out", op);
        return 0;
    }
    if (B * Lq * H == 0) return 0;
    if (Lq > INT32_MAX || Lk > INT32_MAX || H > 65535 || B > 65535) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: %s dims too large", op);
        return 0;
    }
    p->q = (const bf16 *)q->data, p->k = (const bf16 *)k->data, p->v = (const bf16 *)v->data;
    p->o = (bf16 *)out->data;
    p->mask = key_mask ? (const int32_t *)key_mask->data : NULL;
    p->B = (int)B, p->Lq = (int)Lq, p->Lk = (int)Lk, p->H = (int)H, p->Hkv = (int)Hkv, p->group = (int)(H / Hkv);
    p->scale_log2 = scale * 1.4426950408889634f;
    p->causal = causal != 0, p->causal_off = (int)(Lk - Lq);
    p->seg = NULL, p->nseg = 0;
    return 1;
}

/* Segments without a flash kernel (head dims it lacks, unaligned rows): the
 * offsets come to the host (a synchronisation, so never while a graph is
 * recorded) and each segment of each batch runs through GEMMs. */
static void attention_gemm_segments(cuda_impl *c, const attn_params &p, int Dh) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(c->stream, &cs);
    if (cs != cudaStreamCaptureStatusNone) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: attention_segments at head dim %d (or on unaligned rows) "
                "reads its offsets on the host, which a graph recording cannot; use head dim 16, 32, 64, 80 "
                "or 128 with 16-byte aligned rows", Dh);
        return;
    }
    int32_t *off = (int32_t *)malloc((size_t)(p.nseg + 1) * sizeof(int32_t));
    if (!off) {
        qc_fail(c, QI_ERR_NOMEM, "cuda backend: attention_segments: out of memory for %d offsets", p.nseg + 1);
        return;
    }
    cudaError_t e = cudaMemcpyAsync(off, p.seg, (size_t)(p.nseg + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                    c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: attention_segments: reading the offsets: %s", cudaGetErrorString(e));
        free(off);
        return;
    }
    const size_t q_row = (size_t)p.H * Dh, kv_row = (size_t)p.Hkv * Dh;
    for (int s = 0; s < p.nseg && c->err_status == QI_OK; s++) {
        const int a = off[s] < 0 ? 0 : off[s] > p.Lq ? p.Lq : off[s]; /* clamped as the flash kernel does */
        const int z = off[s + 1] < a ? a : off[s + 1] > p.Lq ? p.Lq : off[s + 1];
        for (int b = 0; b < p.B && z > a; b++) {
            attn_params sub = p;
            const size_t row = (size_t)b * p.Lq + a;
            sub.q = p.q + row * q_row, sub.k = p.k + row * kv_row, sub.v = p.v + row * kv_row;
            sub.o = p.o + row * q_row;
            sub.B = 1, sub.Lq = sub.Lk = z - a, sub.causal_off = 0;
            sub.seg = NULL, sub.nseg = 0;
            attention_gemm(c, sub, Dh);
        }
    }
    free(off);
}

static bool flash_dim(int64_t Dh) { return Dh == 16 || Dh == 32 || Dh == 64 || Dh == 80 || Dh == 128; }

/* Picks the kernel for p (c->attn_variant, the head dim, the device) and runs it. */
static void attn_dispatch(cuda_impl *c, const attn_params &p, int Dh) {
    /* Flash kernels need 16-byte aligned rows; anything else goes through GEMMs. */
    const bool aligned = qc_aligned16(p.q) && qc_aligned16(p.k) && qc_aligned16(p.v) && qc_aligned16(p.o);
    int variant = c->attn_variant;
    /* Variants retired to dev/cuda/ (flash_variants.cu.txt) keep their names
     * (qi_cuda_set_attention_kernel) and run what "auto" picks. */
    if (variant == QC_ATTN_WGMMA_64x2 || variant == QC_ATTN_WGMMA_128x2 || variant == QC_ATTN_TMA_128x2)
        variant = QC_ATTN_AUTO;
    if (!aligned || !flash_dim(Dh)) variant = QC_ATTN_GEMM;
    if (p.seg && variant != QC_ATTN_GEMM) variant = QC_ATTN_MMA; /* only flash_k reads segment offsets */
    if (variant >= QC_ATTN_WGMMA_64x2 && (Dh != 128 || !c->hopper)) variant = QC_ATTN_MMA;
    if (variant >= QC_ATTN_TMA_64x2 && !c->tmap_encode) variant = QC_ATTN_WGMMA_64x3;
    if (variant == QC_ATTN_AUTO)
        variant = Dh != 128 || !c->hopper ? QC_ATTN_MMA : c->tmap_encode ? pick_tma(c, p) : QC_ATTN_WGMMA_64x3;
    switch (variant) {
    case QC_ATTN_GEMM:
        if (p.seg) attention_gemm_segments(c, p, Dh);
        else attention_gemm(c, p, Dh);
        return;
    case QC_ATTN_MMA:
        if (Dh == 128) launch_flash<128, 8>(c, p);
        else if (Dh == 80) launch_flash<80, 4>(c, p); /* 64-row blocks: one per vision window */
        else if (Dh == 64) launch_flash<64, 8>(c, p);
        else if (Dh == 32) launch_flash<32, 4>(c, p);
        else launch_flash<16, 4>(c, p);
        break;
    case QC_ATTN_WGMMA_64x2: case QC_ATTN_WGMMA_128x2: case QC_ATTN_WGMMA_64x3: qc_flash_hopper(c, &p, variant); break;
    default: qc_flash_tma(c, &p, variant); break;
    }
    qc_check_launch(c, p.seg ? "attention_segments" : "attention");
}

extern "C" void qc_attention(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                             const qi_tensor *key_mask, int causal, float scale, qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    attn_params p;
    if (attn_setup(c, "attention", q, k, v, key_mask, causal, scale, out, &p)) attn_dispatch(c, p, (int)q->ne[3]);
}

extern "C" void qc_attention_segments(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                                      const qi_tensor *seg, float scale, qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    if (!seg || seg->dtype != QI_I32 || seg->ndim != 1 || seg->ne[0] < 1 || seg->ne[0] > INT32_MAX / 2 ||
        q->ndim != 4 || k->ndim != 4 || k->ne[1] != q->ne[1]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: attention_segments needs offsets I32 [S + 1] and as many keys as "
                "queries (q [B, L, H, Dh], k/v [B, L, Hkv, Dh])");
        return;
    }
    attn_params p;
    if (!attn_setup(c, "attention_segments", q, k, v, NULL, 0, scale, out, &p)) return;
    p.seg = (const int32_t *)seg->data, p.nseg = (int)(seg->ne[0] - 1);
    if (p.nseg > 0) attn_dispatch(c, p, (int)q->ne[3]);
}

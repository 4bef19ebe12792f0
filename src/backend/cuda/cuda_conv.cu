/*
 * cuda_conv.cu — the VAE's 3×3 convolution as an implicit GEMM on the tensor
 * cores (no column matrix), with the nearest-2× upsample folded into its
 * input gather and bias + residual in its epilogue; and the fused channel
 * RMS norm + activation.
 *
 * Conv as a GEMM: y[co, p] = Σ_k W[co, k] · X[k, p] with k = (ci, tap) and
 * p a pixel. A block owns BM = 32·MT output channels × 128 pixels (2 rows ×
 * 64 columns); its 4 warps split that 2 (channels) × 2 (rows), so a warp owns
 * MT·16 channels × 64 pixels of one row. K runs over chunks of 16 input
 * channels; per chunk, shared memory holds
 *   A: the weights of the chunk, reordered per call into [chunk][co][tap·16 + ci]
 *      (so a tap's 16 channels are one k16 step), copied by cp.async;
 *   B: the input's halo (4 rows × 66 columns around the tile) as [pixel][16 ch],
 *      gathered through registers (the image is [C, H, W]: channels are far
 *      apart in memory, pixels adjacent), zero outside the image.
 * Each tap is then a k16 step whose B rows are the halo pixels shifted by
 * (dy, dx): ldmatrix takes any row, so no data moves per tap. Two stages:
 * the next chunk's loads are in flight while this one's 9 steps run.
 * mma.sync m16n8k16 bf16 with float32 accumulators; one rounding on store.
 * QI_CUDA_CONV_ROWS=4 takes 4 output rows per block (8 warps, 256 pixels):
 * each weight chunk loaded into shared memory then serves twice the pixels,
 * and the halo is 6 rows for 4 instead of 4 for 2.
 *
 * Each weight's reordered layout is made once, on the first conv that reads
 * it, and kept beside the weight (freed with it); weights the backend did not
 * make (an F32 kernel in the arena, a test's tensor) are reordered into the
 * scratch per call as before (QI_CUDA_CONV_CACHE=0: always).
 *
 * Convs with at most 4 outputs (the decoder's conv_out to RGB) run on the
 * CUDA cores instead (conv3x3_direct_k): the tensor-core tile would be 32
 * channels of which 3 are used.
 */
#include <stdio.h>
#include <stdlib.h>

#include "backend/cuda/cuda_flash_common.h" /* smem_u32, cp.async, ldmatrix, mma.sync */
#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "backend/cuda/cuda_backend.h" /* qi_cuda_set_conv_variant */
}

/* ---- PTX wrappers: cuda_flash_common.h's, and cp.async without a source size ---------- */

static __device__ __forceinline__ void cv_cp_async16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}
static __device__ __forceinline__ void cv_ldmatrix_x4(uint32_t *r, const void *p) { ldmatrix_x4(r[0], r[1], r[2], r[3], p); }

/* ---- implicit-GEMM 3×3 conv ---------------------------------------------------------- */

#define CV_TW 64                             /* tile columns */
#define CV_HW (CV_TW + 2)                    /* halo columns */
#define CV_KC 16                             /* input channels per chunk */
#define CV_AK (9 * CV_KC)                    /* k per chunk: 144 */
#define CV_AS (CV_AK + 8)                    /* A row stride (elements): 304 B, ldmatrix conflict-free */
#define CV_BS (CV_KC + 8)                    /* B pixel stride (elements): 48 B, ldmatrix conflict-free */

/* A block of TH tile rows (one per warp row; 2 warps a row): its threads,
 * halo pixels (TH + 2 rows × 66: 264 for TH 2) and halo pixels per thread. */
template <int TH> struct cv_geom {
    static constexpr int threads = 64 * TH;
    static constexpr int hpix = (TH + 2) * CV_HW;
    static constexpr int hslots = (hpix + threads - 1) / threads;
};

template <int MT, int TH> static constexpr size_t conv_smem_bytes() {
    return 2 * ((size_t)32 * MT * CV_AS + (size_t)cv_geom<TH>::hpix * CV_BS) * sizeof(bf16);
}

/* wr[cb][co][tap·16 + j] = w[co][cb·16 + j][tap] · scale, zero past Co / Ci. */
__global__ void conv_reorder_w_k(const void *w, int wdt, float wscale, int Co, int Ci, int co_pad, int ncb,
                                 bf16 *wr) {
    const int64_t n = (int64_t)ncb * co_pad * CV_AK;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int k = (int)(i % CV_AK), co = (int)((i / CV_AK) % co_pad), cb = (int)(i / ((int64_t)CV_AK * co_pad));
        const int tap = k / CV_KC, ci = cb * CV_KC + k % CV_KC;
        const float v = co < Co && ci < Ci ? ld_param(w, wdt, ((int64_t)co * Ci + ci) * 9 + tap) * wscale : 0.0f;
        wr[i] = __float2bfloat16_rn(v);
    }
}

typedef struct conv_args {
    const bf16 *x;     /* [Ci, Hin, Win] */
    const bf16 *wr;    /* reordered weights [ncb][co_pad][144] */
    const void *bias;  /* [Co] any float dtype, or NULL */
    const bf16 *res;   /* [Co, H, W] or NULL; may equal y */
    bf16 *y;           /* [Co, H, W] */
    int Ci, Hin, Win, up; /* up: the conv input is x upsampled 2× (H = 2·Hin) */
    int Co, H, W, co_pad, ncb, n_co_blocks, tiles_x;
    int bdt;
    float bscale;
} conv_args;

/* One chunk's 9 taps (k16 steps) into a warp's MT·16 channels × 64 pixels:
 * A rows a_row (+16m) at k half a_k of the chunk's weights sA; B the halo
 * pixels of tile row wn shifted by the tap (dy, dx) in sB. */
template <int MT>
static __device__ __forceinline__ void conv_chunk_mma(float (&acc)[MT][8][4], const bf16 *sA, const bf16 *sB,
                                                      int a_row, int a_k, int b_px, int b_k, int wn) {
#pragma unroll
    for (int tap = 0; tap < 9; tap++) {
        const int dy = tap / 3, dx = tap % 3;
        uint32_t a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; m++) cv_ldmatrix_x4(a[m], sA + (a_row + m * 16) * CV_AS + tap * CV_KC + a_k);
        const bf16 *brow = sB + ((wn + dy) * CV_HW + dx + b_px) * CV_BS + b_k;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            uint32_t b[4];
            cv_ldmatrix_x4(b, brow + q * 16 * CV_BS);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                mma_bf16(acc[m][2 * q], a[m], b[0], b[1]);
                mma_bf16(acc[m][2 * q + 1], a[m], b[2], b[3]);
            }
        }
    }
}

/* Epilogue of a warp's tile: + bias + residual, one rounding, into output
 * row yrow from column tx0, channels cw0 … cw0 + MT·16. The thread holds rows
 * g, g+8 of each 16-channel tile and pixel pairs (2t, 2t+1) of each 8-pixel tile. */
template <int MT>
static __device__ __forceinline__ void conv_epilogue(const conv_args &p, const float (&acc)[MT][8][4], int cw0,
                                                     int yrow, int tx0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    if (yrow >= p.H) return;
    const bool pairs = (p.W & 1) == 0;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int co = cw0 + m * 16 + g + half * 8;
            if (co >= p.Co) continue;
            const float bv = p.bias ? ld_param(p.bias, p.bdt, co) * p.bscale : 0.0f;
            const size_t row = ((size_t)co * p.H + yrow) * p.W;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                const int px = tx0 + n * 8 + 2 * t;
                float v0 = acc[m][n][2 * half] + bv, v1 = acc[m][n][2 * half + 1] + bv;
                if (pairs && px + 1 < p.W) {
                    if (p.res) {
                        const float2 r = __bfloat1622float2(*(const __nv_bfloat162 *)(p.res + row + px));
                        v0 += r.x, v1 += r.y;
                    }
                    *(__nv_bfloat162 *)(p.y + row + px) = __floats2bfloat162_rn(v0, v1);
                } else {
                    if (px < p.W) {
                        if (p.res) v0 += __bfloat162float(p.res[row + px]);
                        p.y[row + px] = __float2bfloat16_rn(v0);
                    }
                    if (px + 1 < p.W) {
                        if (p.res) v1 += __bfloat162float(p.res[row + px + 1]);
                        p.y[row + px + 1] = __float2bfloat16_rn(v1);
                    }
                }
            }
        }
}

/* ---- the halo gather, the same in both kernels -------------------------------------------
 * A thread owns halo pixels hp = tid + s·threads (s < hslots) of the
 * (TH + 2) × 66 around a tile, the same slots for every chunk: their plane
 * offsets are found once per tile, and each chunk is one gather of hslots ×
 * 16 channels into registers (issued before the chunk's taps, so the loads
 * fly under them) and one store to shared memory (after). Force-inlined with
 * the loops unrolled over TH's constants, so each kernel compiles as if it
 * held its own copy. breg and hoff stay in registers, except that the
 * resident kernel's run-time pick of hoff or hoff_next puts those two in a
 * 16-byte stack frame. */

/* This thread's halo pixels of the tile at (tx0, ty0): offset into one input
 * channel plane, or -1 outside the image (zero padding), past the halo, or
 * when !live (the resident kernel's tile past the last). */
template <int TH>
static __device__ __forceinline__ void cv_halo_offsets(int (&hoff)[cv_geom<TH>::hslots], const conv_args &p, int tid,
                                                       int tx0, int ty0, bool live) {
#pragma unroll
    for (int s = 0; s < cv_geom<TH>::hslots; s++) {
        const int hp = tid + s * cv_geom<TH>::threads;
        hoff[s] = -1;
        if (live && hp < cv_geom<TH>::hpix) {
            const int Y = ty0 - 1 + hp / CV_HW, X = tx0 - 1 + hp % CV_HW;
            if (Y >= 0 && Y < p.H && X >= 0 && X < p.W)
                hoff[s] = p.up ? (Y >> 1) * p.Win + (X >> 1) : Y * p.Win + X;
        }
    }
}

/* breg[s][j] = channels (2j, 2j+1) of chunk cb at halo pixel s, packed as
 * bf16x2; zero past Ci and where hoff is -1. plane = Hin·Win. */
template <int TH>
static __device__ __forceinline__ void cv_gather_halo(uint32_t (&breg)[cv_geom<TH>::hslots][CV_KC / 2],
                                                      const conv_args &p, const int (&hoff)[cv_geom<TH>::hslots],
                                                      int cb, int plane) {
    const unsigned short *xs = (const unsigned short *)p.x;
    const int ci0 = cb * CV_KC;
#pragma unroll
    for (int s = 0; s < cv_geom<TH>::hslots; s++)
#pragma unroll
        for (int j = 0; j < CV_KC / 2; j++) {
            const int ci = ci0 + 2 * j;
            uint32_t lo = 0, hi = 0;
            if (hoff[s] >= 0) {
                const size_t o = (size_t)ci * plane + hoff[s];
                if (ci < p.Ci) lo = __ldg(xs + o);
                if (ci + 1 < p.Ci) hi = __ldg(xs + o + plane);
            }
            breg[s][j] = lo | (hi << 16);
        }
}

/* The gathered chunk into a halo buffer sB [hpix][CV_BS]. */
template <int TH>
static __device__ __forceinline__ void cv_store_halo(bf16 *sB, const uint32_t (&breg)[cv_geom<TH>::hslots][CV_KC / 2],
                                                     int tid) {
#pragma unroll
    for (int s = 0; s < cv_geom<TH>::hslots; s++) {
        const int hp = tid + s * cv_geom<TH>::threads;
        if (hp < cv_geom<TH>::hpix) { /* two 16-byte stores; pixels 48 B apart: conflict-free */
            uint4 *d = (uint4 *)(sB + hp * CV_BS);
            d[0] = make_uint4(breg[s][0], breg[s][1], breg[s][2], breg[s][3]);
            d[1] = make_uint4(breg[s][4], breg[s][5], breg[s][6], breg[s][7]);
        }
    }
}

template <int MT> static __device__ __forceinline__ void cv_zero_acc(float (&acc)[MT][8][4]) {
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < 8; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
}

/* TH 2: 128 threads, two blocks an SM; TH 4: 256 threads, one (the
 * accumulators, MT·32 floats a thread, would not fit 128 registers). */
template <int MT, int TH>
__global__ void __launch_bounds__(64 * TH, TH == 2 ? 2 : 1) conv3x3_k(const conv_args p) {
    constexpr int CV_THREADS = cv_geom<TH>::threads, CV_HPIX = cv_geom<TH>::hpix, CV_HSLOTS = cv_geom<TH>::hslots;
    constexpr int BM = 32 * MT, A_EL = BM * CV_AS, B_EL = CV_HPIX * CV_BS;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *const sA0 = (bf16 *)smem, *const sB0 = sA0 + A_EL;
    bf16 *const sA1 = sB0 + B_EL, *const sB1 = sA1 + A_EL;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp & 1, wn = warp >> 1; /* channel half, tile row */
    const int co_blk = (int)(blockIdx.x % (unsigned)p.n_co_blocks), tile = (int)(blockIdx.x / (unsigned)p.n_co_blocks);
    const int co0 = co_blk * BM, tx0 = (tile % p.tiles_x) * CV_TW, ty0 = (tile / p.tiles_x) * TH;
    const int plane = p.Hin * p.Win;

    int hoff[CV_HSLOTS]; /* this thread's halo pixels: the same for every chunk */
    cv_halo_offsets<TH>(hoff, p, tid, tx0, ty0, true);

    auto load_a = [&](int cb, bf16 *sA) {
        const bf16 *src = p.wr + ((size_t)cb * p.co_pad + co0) * CV_AK;
        for (int i = tid; i < BM * (CV_AK / 8); i += CV_THREADS) {
            const int r = i / (CV_AK / 8), piece = i % (CV_AK / 8);
            cv_cp_async16(sA + r * CV_AS + piece * 8, src + (size_t)r * CV_AK + piece * 8);
        }
    };
    uint32_t breg[CV_HSLOTS][CV_KC / 2]; /* the next chunk's halo, in flight during this one's taps */

    float acc[MT][8][4];
    cv_zero_acc<MT>(acc);

    load_a(0, sA0);
    cp_async_commit();
    cv_gather_halo<TH>(breg, p, hoff, 0, plane);
    cv_store_halo<TH>(sB0, breg, tid);
    cp_async_wait_all();
    __syncthreads();

    /* ldmatrix row addresses: A rows (lane & 15) at k half (lane >> 4); B
     * pixels 16q + (lane >> 4)·8 + (lane & 7) at k half ((lane >> 3) & 1). */
    const int a_row = wm * MT * 16 + (lane & 15), a_k = (lane >> 4) * 8;
    const int b_px = (lane >> 4) * 8 + (lane & 7), b_k = ((lane >> 3) & 1) * 8;

    for (int cb = 0; cb < p.ncb; cb++) {
        const bool odd = cb & 1, more = cb + 1 < p.ncb;
        const bf16 *sA = odd ? sA1 : sA0, *sB = odd ? sB1 : sB0;
        if (more) {
            load_a(cb + 1, odd ? sA0 : sA1);
            cp_async_commit();
            cv_gather_halo<TH>(breg, p, hoff, cb + 1, plane);
        }
        conv_chunk_mma<MT>(acc, sA, sB, a_row, a_k, b_px, b_k, wn);
        if (more) cv_store_halo<TH>(odd ? sB0 : sB1, breg, tid);
        cp_async_wait_all();
        __syncthreads();
    }

    conv_epilogue<MT>(p, acc, co0 + wm * MT * 16, ty0 + wn, tx0, lane);
}

/* The weights resident (default; QI_CUDA_CONV_RESIDENT=0: off): when every chunk of a
 * one-channel-block conv fits in shared memory beside two halo buffers (L3's
 * 96 → 96: 6 chunks × 96 × 304 B = 171 KiB + 2 × 18.6 KiB), one block an SM
 * loads them once and walks the pixel tiles (4 rows × 64, 8 warps as TH 4)
 * blockIdx.x, + gridDim.x, …: the halo of the next tile's first chunk is
 * gathered while the last chunk of this one runs, so the pipeline never
 * drains between tiles, and no weight byte is read twice. */
template <int MT>
__global__ void __launch_bounds__(256, 1) conv3x3_resident_k(const conv_args p) {
    constexpr int TH = 4, THREADS = cv_geom<TH>::threads, HPIX = cv_geom<TH>::hpix, HSLOTS = cv_geom<TH>::hslots;
    constexpr int BM = 32 * MT, A_EL = BM * CV_AS, B_EL = HPIX * CV_BS;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *const sB0 = (bf16 *)smem, *const sB1 = sB0 + B_EL, *const sA = sB1 + B_EL; /* sA: ncb chunks */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp & 1, wn = warp >> 1; /* channel half, tile row */
    const int ntiles = p.tiles_x * ((p.H + TH - 1) / TH);
    const int plane = p.Hin * p.Win;

    for (int i = tid; i < p.ncb * BM * (CV_AK / 8); i += THREADS) { /* every chunk's weights, once */
        const int r = i / (CV_AK / 8), piece = i % (CV_AK / 8); /* r = cb · BM + row; co_pad = BM */
        cv_cp_async16(sA + r * CV_AS + piece * 8, p.wr + (size_t)r * CV_AK + piece * 8);
    }
    cp_async_commit();

    /* A tile's halo pixels (-1 also for a tile past the last: its gather loads nothing). */
    auto set_hoff = [&](int tile, int (&hoff)[HSLOTS]) {
        cv_halo_offsets<TH>(hoff, p, tid, (tile % p.tiles_x) * CV_TW, (tile / p.tiles_x) * TH, tile < ntiles);
    };
    uint32_t breg[HSLOTS][CV_KC / 2];

    int tile = blockIdx.x, hoff[HSLOTS], hoff_next[HSLOTS];
    set_hoff(tile, hoff);
    cv_gather_halo<TH>(breg, p, hoff, 0, plane);
    cv_store_halo<TH>(sB0, breg, tid);
    cp_async_wait_all();
    __syncthreads();

    const int a_row = wm * MT * 16 + (lane & 15), a_k = (lane >> 4) * 8;
    const int b_px = (lane >> 4) * 8 + (lane & 7), b_k = ((lane >> 3) & 1) * 8;
    int buf = 0; /* the halo buffer this chunk reads */
    for (; tile < ntiles; tile += gridDim.x) {
        const int next = tile + (int)gridDim.x;
        set_hoff(next, hoff_next);
        float acc[MT][8][4];
        cv_zero_acc<MT>(acc);
        for (int cb = 0; cb < p.ncb; cb++) {
            const bool last = cb + 1 == p.ncb, more = !last || next < ntiles;
            if (more) cv_gather_halo<TH>(breg, p, last ? hoff_next : hoff, last ? 0 : cb + 1, plane);
            conv_chunk_mma<MT>(acc, sA + cb * A_EL, buf ? sB1 : sB0, a_row, a_k, b_px, b_k, wn);
            if (more) /* into the other buffer: its readers passed the last barrier */
                cv_store_halo<TH>(buf ? sB0 : sB1, breg, tid);
            __syncthreads();
            buf ^= 1;
        }
        conv_epilogue<MT>(p, acc, wm * MT * 16, (tile / p.tiles_x) * TH + wn, (tile % p.tiles_x) * CV_TW, lane);
#pragma unroll
        for (int s = 0; s < HSLOTS; s++) hoff[s] = hoff_next[s];
    }
}

template <int MT> static constexpr size_t conv_resident_smem(int ncb) {
    return (2 * (size_t)cv_geom<4>::hpix * CV_BS + (size_t)ncb * 32 * MT * CV_AS) * sizeof(bf16);
}

template <int MT> static void launch_conv3x3_resident(cuda_impl *c, conv_args a, size_t smem) {
    static bool attr_set = false; /* the limit is per function: set to the device's most, once */
    if (!attr_set) {
        cudaFuncSetAttribute(conv3x3_resident_k<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c->smem_optin);
        attr_set = true;
    }
    a.n_co_blocks = 1;
    a.tiles_x = (a.W + CV_TW - 1) / CV_TW;
    const int64_t tiles = (int64_t)a.tiles_x * ((a.H + 3) / 4);
    const int grid = (int)(tiles < c->sm_count ? tiles : c->sm_count);
    conv3x3_resident_k<MT><<<grid, 256, smem, c->stream>>>(a);
}

/* The resident kernel when it takes the case (one channel block, every
 * chunk in shared memory); 0: the caller launches conv3x3_k. */
static int conv3x3_resident(cuda_impl *c, int mt, const conv_args &a) {
    const int64_t tiles = (int64_t)((a.W + CV_TW - 1) / CV_TW) * ((a.H + 3) / 4);
    if (!c->conv_resident || a.co_pad != 32 * mt || tiles > INT32_MAX) return 0;
    size_t smem;
    switch (mt) {
    case 1: smem = conv_resident_smem<1>(a.ncb); break;
    case 2: smem = conv_resident_smem<2>(a.ncb); break;
    case 3: smem = conv_resident_smem<3>(a.ncb); break;
    default: smem = conv_resident_smem<4>(a.ncb); break;
    }
    if (smem > c->smem_optin) return 0;
    switch (mt) {
    case 1: launch_conv3x3_resident<1>(c, a, smem); break;
    case 2: launch_conv3x3_resident<2>(c, a, smem); break;
    case 3: launch_conv3x3_resident<3>(c, a, smem); break;
    default: launch_conv3x3_resident<4>(c, a, smem); break;
    }
    return 1;
}

template <int MT, int TH> static void launch_conv3x3(cuda_impl *c, conv_args a) {
    constexpr int BM = 32 * MT;
    const size_t smem = conv_smem_bytes<MT, TH>();
    static bool attr_set = false; /* the limit is per function */
    if (!attr_set) {
        cudaFuncSetAttribute(conv3x3_k<MT, TH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        attr_set = true;
    }
    a.n_co_blocks = (a.Co + BM - 1) / BM;
    a.tiles_x = (a.W + CV_TW - 1) / CV_TW;
    const int64_t blocks = (int64_t)a.n_co_blocks * a.tiles_x * ((a.H + TH - 1) / TH);
    conv3x3_k<MT, TH><<<(unsigned)blocks, cv_geom<TH>::threads, smem, c->stream>>>(a);
}

template <int TH> static void launch_conv3x3_mt(cuda_impl *c, int mt, const conv_args &a) {
    switch (mt) {
    case 1: launch_conv3x3<1, TH>(c, a); break;
    case 2: launch_conv3x3<2, TH>(c, a); break;
    case 3: launch_conv3x3<3, TH>(c, a); break;
    default: launch_conv3x3<4, TH>(c, a); break;
    }
}

template <int TH> static size_t conv_smem_size_th(int mt) {
    switch (mt) {
    case 1: return conv_smem_bytes<1, TH>();
    case 2: return conv_smem_bytes<2, TH>();
    case 3: return conv_smem_bytes<3, TH>();
    default: return conv_smem_bytes<4, TH>();
    }
}

static size_t conv_smem_size(int mt, int rows) {
    return rows == 4 ? conv_smem_size_th<4>(mt) : conv_smem_size_th<2>(mt);
}

/* Channel tile: 32·MT channels, chosen to waste the fewest rows of the last block. */
static int conv_mt(int64_t Co) {
    if (Co <= 32) return 1;
    if (Co <= 64) return 2;
    if (Co % 128 == 0) return 4;
    if (Co % 96 == 0) return 3;
    return 4;
}

/* The channel tile this device runs for Co outputs (4 needs 101 KiB of
 * shared memory with 2 rows: not on sm_86/89/120). */
static int conv_mt_fit(const cuda_impl *c, int64_t Co) {
    int mt = conv_mt(Co);
    while (mt > 1 && conv_smem_size(mt, c->conv_rows) > c->smem_optin) mt--;
    return mt;
}

/* ---- the switches ------------------------------------------------------------------------ */

void qc_conv_options_init(cuda_impl *c) {
    const char *cache = getenv("QI_CUDA_CONV_CACHE"), *direct = getenv("QI_CUDA_CONV_DIRECT"),
               *rows = getenv("QI_CUDA_CONV_ROWS"), *im2col_ci = getenv("QI_CUDA_CONV_IM2COL_CI"),
               *resident = getenv("QI_CUDA_CONV_RESIDENT"), *wide = getenv("QI_CUDA_NORM_WIDE");
    c->conv_cache = !(cache && cache[0] == '0');
    c->conv_direct = !(direct && direct[0] == '0');
    c->conv_rows = rows && rows[0] == '4' ? 4 : 2;
    c->conv_im2col_ci = im2col_ci && atoi(im2col_ci) > 0 ? atoi(im2col_ci) : 128;
    /* run Z: the VAE decode → RGB8 26.6 ms with it, 27.6 without; every conv case bit-identical on a rerun */
    c->conv_resident = !(resident && resident[0] == '0');
    c->norm_wide = wide && wide[0] == '1';
}

extern "C" int qi_cuda_set_conv_variant(qi_backend *be, int rows, int direct, int resident) {
    if (rows != 2 && rows != 4) return -1;
    cuda_impl *c = cuda_of(be);
    c->conv_rows = rows; /* a kept layout made for another channel tile is not used (conv_layout) */
    c->conv_direct = direct != 0;
    c->conv_resident = resident != 0;
    return 0;
}

/* ---- per-weight layouts --------------------------------------------------------------- */

/* One 3×3 conv weight the backend made: its reordered layout once a conv read it. */
typedef struct qc_conv_w {
    const void *w;  /* the weight's device memory: the key (unique while the weight lives) */
    bf16 *wr;       /* [ncb][co_pad][144], NULL until the first conv that reads it */
    size_t bytes;   /* of wr */
    int co_pad;     /* the layout's padded Co; -1: no device memory for it (reorder per call) */
} qc_conv_w;

static int conv_kernel_shape(const int64_t *ne, int ndim) {
    return ndim == 4 && ne[2] == 3 && ne[3] == 3 && ne[0] > 0 && ne[1] > 0;
}

size_t qc_conv_layout_bytes(const cuda_impl *c, qi_dtype dt, const int64_t *ne) {
    if (!c->conv_cache || !qc_param_type(dt) || !conv_kernel_shape(ne, 4)) return 0;
    const int64_t BM = 32 * conv_mt_fit(c, ne[0]);
    return (size_t)((ne[0] + BM - 1) / BM * BM) * (size_t)((ne[1] + CV_KC - 1) / CV_KC) * CV_AK * sizeof(bf16);
}

void qc_conv_weight_made(cuda_impl *c, const qi_tensor *w) {
    if (!c->conv_cache || !w->data || !qc_param_type(w->dtype) || !conv_kernel_shape(w->ne, w->ndim)) return;
    if (c->conv_ws_n == c->conv_ws_cap) {
        int cap = c->conv_ws_cap ? 2 * c->conv_ws_cap : 64;
        qc_conv_w *g = (qc_conv_w *)realloc(c->conv_ws, (size_t)cap * sizeof *g);
        if (!g) return; /* no entry: this weight is reordered per call */
        c->conv_ws = g;
        c->conv_ws_cap = cap;
    }
    qc_conv_w *e = &c->conv_ws[c->conv_ws_n++];
    e->w = w->data;
    e->wr = NULL;
    e->bytes = 0;
    e->co_pad = 0;
}

void qc_conv_weight_freed(cuda_impl *c, const void *data) {
    for (int i = 0; i < c->conv_ws_n; i++) {
        if (c->conv_ws[i].w != data) continue;
        if (c->conv_ws[i].wr) {
            cudaFree(c->conv_ws[i].wr);
            c->weight_bytes = c->weight_bytes >= c->conv_ws[i].bytes ? c->weight_bytes - c->conv_ws[i].bytes : 0;
        }
        c->conv_ws[i] = c->conv_ws[--c->conv_ws_n];
        return;
    }
}

void qc_conv_weights_destroy(cuda_impl *c) {
    for (int i = 0; i < c->conv_ws_n; i++) cudaFree(c->conv_ws[i].wr);
    free(c->conv_ws);
    c->conv_ws = NULL;
    c->conv_ws_n = c->conv_ws_cap = 0;
}

/* Queues w's reordered layout ([ncb][co_pad][144] bf16) into wr. */
static void conv_reorder(cuda_impl *c, const qi_tensor *w, int64_t Co, int64_t Ci, int64_t co_pad, int64_t ncb,
                         bf16 *wr) {
    const int64_t nw = ncb * co_pad * CV_AK;
    int rblocks = (int)((nw + 255) / 256 < 4096 ? (nw + 255) / 256 : 4096);
    conv_reorder_w_k<<<rblocks, 256, 0, c->stream>>>(w->data, (int)w->dtype, w->scale, (int)Co, (int)Ci,
                                                    (int)co_pad, (int)ncb, wr);
}

/* w's kept layout for a BM-channel tile, made now if this is its first conv;
 * NULL if w has none (not a weight the backend made, the cache off, no
 * memory, a recording in progress, a tile of another size): the caller
 * reorders into the scratch. */
static const bf16 *conv_layout(cuda_impl *c, const qi_tensor *w, int64_t Co, int64_t Ci, int64_t co_pad,
                               int64_t ncb) {
    if (!c->conv_cache || !c->conv_ws_n) return NULL;
    const bf16 *out = NULL;
    pthread_mutex_lock(&c->load_mu); /* weight_free edits the table under it */
    for (int i = 0; i < c->conv_ws_n; i++) {
        qc_conv_w *e = &c->conv_ws[i];
        if (e->w != w->data) continue;
        if (e->wr) {
            out = e->co_pad == co_pad ? e->wr : NULL;
        } else if (e->co_pad == 0) {
            cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
            const size_t bytes = (size_t)(ncb * co_pad * CV_AK) * sizeof(bf16);
            if (cudaStreamIsCapturing(c->stream, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone)
                break; /* no allocation inside a recording: made on a later eager call */
            if (cudaMalloc((void **)&e->wr, bytes) != cudaSuccess) {
                cudaGetLastError(); /* not sticky; this weight reorders per call from now on */
                e->wr = NULL;
                e->co_pad = -1;
                break;
            }
            e->bytes = bytes;
            e->co_pad = (int)co_pad;
            c->weight_bytes += bytes;
            if (c->weight_bytes > c->weight_peak) c->weight_peak = c->weight_bytes;
            conv_reorder(c, w, Co, Ci, co_pad, ncb, e->wr);
            out = e->wr;
        }
        break;
    }
    pthread_mutex_unlock(&c->load_mu);
    return out;
}

static int conv3x3_direct(cuda_impl *c, const conv_args &a, const qi_tensor *w);

int qc_conv3x3_implicit(cuda_impl *c, const qi_tensor *x, int upsample, const qi_tensor *w, const qi_tensor *b,
                        const qi_tensor *res, qi_tensor *y) {
    const int64_t Ci = x->ne[0], Hin = x->ne[1], Win = x->ne[2], Co = w->ne[0];
    const int64_t H = upsample ? 2 * Hin : Hin, W = upsample ? 2 * Win : Win;
    if (c->conv_mode == QC_CONV_IM2COL || x->dtype != QI_BF16 || y->dtype != QI_BF16 || (res && res->dtype != QI_BF16) ||
        w->ndim != 4 || w->ne[2] != 3 || w->ne[3] != 3 || Ci * Hin * Win > INT32_MAX || Co * H * W > INT32_MAX ||
        H * W == 0 || Co == 0)
        return 0;
    conv_args a;
    memset(&a, 0, sizeof a);
    a.x = (const bf16 *)x->data;
    a.bias = b ? b->data : NULL;
    a.bdt = b ? (int)b->dtype : 0;
    a.bscale = b ? b->scale : 1.0f;
    a.res = res ? (const bf16 *)res->data : NULL;
    a.y = (bf16 *)y->data;
    a.Ci = (int)Ci, a.Hin = (int)Hin, a.Win = (int)Win, a.up = upsample;
    a.Co = (int)Co, a.H = (int)H, a.W = (int)W;
    /* a few outputs (conv_out: 3): the CUDA cores, unless a path is forced */
    if (c->conv_direct && c->conv_mode == QC_CONV_AUTO && conv3x3_direct(c, a, w)) return 1;
    /* auto: on an H200 this kernel runs at ~230 TFLOP/s (mma.sync); cuBLASLt on
     * the column matrix is faster for >= 192 input channels (a long K) unless
     * the input would first be upsampled (4× the column matrix, plus the
     * upsampled copy) or there are only a few outputs (conv_out: N = 3);
     * QI_CUDA_CONV_IM2COL_CI moves the bound (to time the kernel's variants) */
    if (c->conv_mode == QC_CONV_AUTO && !upsample && Ci > c->conv_im2col_ci && Co >= 32) return 0;
    const int mt = conv_mt_fit(c, Co), BM = 32 * mt;
    const int64_t co_pad = (Co + BM - 1) / BM * BM, ncb = (Ci + CV_KC - 1) / CV_KC;
    const size_t wr_bytes = (size_t)(ncb * co_pad * CV_AK) * sizeof(bf16);
    const int64_t blocks = (Co + BM - 1) / BM * ((W + CV_TW - 1) / CV_TW) * ((H + c->conv_rows - 1) / c->conv_rows);
    if (blocks > INT32_MAX) return 0;
    const bf16 *wr = conv_layout(c, w, Co, Ci, co_pad, ncb);
    if (!wr) {
        if (wr_bytes > c->scratch_bytes) return 0;
        conv_reorder(c, w, Co, Ci, co_pad, ncb, (bf16 *)c->scratch);
        wr = (const bf16 *)c->scratch;
    }
    a.wr = wr;
    a.co_pad = (int)co_pad, a.ncb = (int)ncb;
    if (conv3x3_resident(c, mt, a)) {
    } else if (c->conv_rows == 4) {
        launch_conv3x3_mt<4>(c, mt, a);
    } else {
        launch_conv3x3_mt<2>(c, mt, a);
    }
    qc_check_launch(c, "conv2d 3x3 (implicit GEMM)");
    return 1;
}

/* ---- a few outputs on the CUDA cores ---------------------------------------------------- */

#define CD_TW 32      /* tile columns: 8 threads × 4 pixels */
#define CD_TH 32      /* tile rows: one per 8 threads */
#define CD_HR (CD_TH + 2)
#define CD_HC (CD_TW + 2)
#define CD_HS 36      /* halo row stride (floats): 34 used; rows 16-byte aligned */
#define CD_CC 8       /* input channels per halo fill */
#define CD_THREADS 256

static size_t conv_direct_smem(int64_t Ci) {
    return ((size_t)Ci * 9 * 4 + (size_t)CD_CC * CD_HR * CD_HS) * sizeof(float);
}

/* y[co, Y, X] = b[co] + res + Σ_ci,tap w[co, ci, tap] · x[ci, Y + dy - 1, X + dx - 1]
 * for CO <= 4 outputs, float32 throughout, one rounding on store. A block
 * owns 32 × 32 pixels; thread (ty, tx) the 4 pixels 4tx … 4tx + 3 of row ty,
 * all CO outputs. Shared memory: every weight as [ci][tap][4] floats (the
 * outputs padded to 4: one 16-byte broadcast read per tap), and the halo of
 * CD_CC input channels at a time as [ch][34 rows][36] floats. */
template <int CO>
__global__ void __launch_bounds__(CD_THREADS, 2) conv3x3_direct_k(const conv_args p, const void *w, int wdt,
                                                               float wscale) {
    extern __shared__ __align__(16) float cd_smem[];
    float *const sw = cd_smem, *const sx = cd_smem + (size_t)p.Ci * 36;
    const int tid = threadIdx.x, tx = tid & 7, ty = tid >> 3;
    const int x0 = blockIdx.x * CD_TW, y0 = blockIdx.y * CD_TH;
    const int64_t plane = (int64_t)p.Hin * p.Win;
    for (int i = tid; i < p.Ci * 36; i += CD_THREADS) {
        const int co = i & 3, k = i >> 2, ci = k / 9, tap = k % 9;
        sw[i] = co < CO ? ld_param(w, wdt, ((int64_t)co * p.Ci + ci) * 9 + tap) * wscale : 0.0f;
    }
    float acc[CO][4];
#pragma unroll
    for (int o = 0; o < CO; o++) acc[o][0] = acc[o][1] = acc[o][2] = acc[o][3] = 0.0f;
    for (int c0 = 0; c0 < p.Ci; c0 += CD_CC) {
        __syncthreads(); /* the last chunk's reads are done (and, the first time, the weights written) */
        for (int i = tid; i < CD_CC * CD_HR * CD_HC; i += CD_THREADS) {
            const int ch = i / (CD_HR * CD_HC), r = (i / CD_HC) % CD_HR, j = i % CD_HC;
            const int ci = c0 + ch, Y = y0 - 1 + r, X = x0 - 1 + j;
            float v = 0.0f;
            if (ci < p.Ci && Y >= 0 && Y < p.H && X >= 0 && X < p.W)
                v = __bfloat162float(p.x[ci * plane + (p.up ? (int64_t)(Y >> 1) * p.Win + (X >> 1)
                                                            : (int64_t)Y * p.Win + X)]);
            sx[(ch * CD_HR + r) * CD_HS + j] = v;
        }
        __syncthreads();
        const int nc = p.Ci - c0 < CD_CC ? p.Ci - c0 : CD_CC;
        for (int ch = 0; ch < nc; ch++) {
            const float *wc = sw + (size_t)(c0 + ch) * 36;
#pragma unroll
            for (int dy = 0; dy < 3; dy++) {
                const float *row = sx + (ch * CD_HR + ty + dy) * CD_HS + 4 * tx;
                const float4 u = *(const float4 *)row;
                const float2 u2 = *(const float2 *)(row + 4);
                const float v[6] = {u.x, u.y, u.z, u.w, u2.x, u2.y};
#pragma unroll
                for (int dx = 0; dx < 3; dx++) {
                    const float4 wv = *(const float4 *)(wc + (dy * 3 + dx) * 4);
#pragma unroll
                    for (int o = 0; o < CO; o++) {
                        const float wo = o == 0 ? wv.x : o == 1 ? wv.y : o == 2 ? wv.z : wv.w;
#pragma unroll
                        for (int q = 0; q < 4; q++) acc[o][q] = fmaf(wo, v[q + dx], acc[o][q]);
                    }
                }
            }
        }
    }
    const int Y = y0 + ty;
    if (Y >= p.H) return;
#pragma unroll
    for (int o = 0; o < CO; o++) {
        const float bv = p.bias ? ld_param(p.bias, p.bdt, o) * p.bscale : 0.0f;
        const int64_t row = ((int64_t)o * p.H + Y) * p.W;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int X = x0 + 4 * tx + q;
            if (X >= p.W) continue;
            float v = acc[o][q] + bv;
            if (p.res) v += __bfloat162float(p.res[row + X]); /* read before the write: res may be y */
            p.y[row + X] = __float2bfloat16_rn(v);
        }
    }
}

template <int CO> static void launch_conv3x3_direct(cuda_impl *c, const conv_args &a, const qi_tensor *w,
                                                    size_t smem) {
    static int attr_set = 0; /* the limit is per function: set to the device's most, once */
    if (!attr_set) {
        cudaFuncSetAttribute(conv3x3_direct_k<CO>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c->smem_optin);
        attr_set = 1;
    }
    const dim3 grid((unsigned)((a.W + CD_TW - 1) / CD_TW), (unsigned)((a.H + CD_TH - 1) / CD_TH));
    conv3x3_direct_k<CO><<<grid, CD_THREADS, smem, c->stream>>>(a, w->data, (int)w->dtype, w->scale);
}

/* The direct kernel when it takes the case (Co <= 4, every weight in shared
 * memory); 0: the caller runs the GEMM paths. */
static int conv3x3_direct(cuda_impl *c, const conv_args &a, const qi_tensor *w) {
    const size_t smem = conv_direct_smem(a.Ci);
    if (a.Co > 4 || smem > c->smem_optin || a.H > 65535 * CD_TH) return 0;
    switch (a.Co) {
    case 1: launch_conv3x3_direct<1>(c, a, w, smem); break;
    case 2: launch_conv3x3_direct<2>(c, a, w, smem); break;
    case 3: launch_conv3x3_direct<3>(c, a, w, smem); break;
    default: launch_conv3x3_direct<4>(c, a, w, smem); break;
    }
    qc_check_launch(c, "conv2d 3x3 (direct, few outputs)");
    return 1;
}

/* y = conv2d(up ? upsample2x(x) : x) + b + res. The implicit kernel takes the
 * VAE's 3×3, pad 1 convolutions; anything else goes through the plain ops
 * (an upsampled copy in the arena, conv2d, add). */
extern "C" void qc_conv2d_fused(qi_backend *be, const qi_tensor *x, int upsample, const qi_tensor *w,
                                const qi_tensor *b, int pad, const qi_tensor *res, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 3 || w->ndim != 4 || y->ndim != 3 || x->ne[0] != w->ne[1]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: conv2d_fused needs x [Ci, H, W], w [Co, Ci, kh, kw], y [Co, H', W']");
        return;
    }
    const int64_t Hc = upsample ? 2 * x->ne[1] : x->ne[1], Wc = upsample ? 2 * x->ne[2] : x->ne[2];
    const int64_t Ho = Hc + 2 * pad - w->ne[2] + 1, Wo = Wc + 2 * pad - w->ne[3] + 1;
    if (y->ne[0] != w->ne[0] || y->ne[1] != Ho || y->ne[2] != Wo || (res && qi_numel(res) != qi_numel(y))) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: conv2d_fused output (and residual) must be [%lld, %lld, %lld]",
                (long long)w->ne[0], (long long)Ho, (long long)Wo);
        return;
    }
    if (!qc_param_type(w->dtype)) { /* the implicit kernel reads w unchecked */
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d_fused: cannot read a weight of type %s (BF16, "
                "F16 or F32)", qi_dtype_name(w->dtype));
        return;
    }
    if (pad == 1 && w->ne[2] == 3 && w->ne[3] == 3 && qc_conv3x3_implicit(c, x, upsample, w, b, res, y)) return;
    qi_tensor in = *x;
    size_t mark = c->arena_used;
    if (upsample) {
        int64_t ne[3] = {x->ne[0], Hc, Wc};
        qi_error err;
        if (be->ops->tensor(be, &in, x->dtype, 3, ne, &err) != QI_OK) {
            qc_fail(c, QI_ERR_NOMEM, "%s", err.msg);
            return;
        }
        qc_upsample2x(be, x, &in);
    }
    if (res && res->data == y->data) { /* the product must not overwrite the residual */
        qi_tensor tmp;
        qi_error err;
        if (be->ops->tensor(be, &tmp, y->dtype, 3, y->ne, &err) != QI_OK) {
            qc_fail(c, QI_ERR_NOMEM, "%s", err.msg);
            c->arena_used = mark;
            return;
        }
        qc_conv2d(be, &in, w, b, pad, &tmp);
        qc_add_gated(be, y, NULL, 0, &tmp);
    } else {
        qc_conv2d(be, &in, w, b, pad, y);
        if (res) qc_add_gated(be, y, NULL, 0, res);
    }
    c->arena_used = mark; /* stream order keeps the temporaries alive for the queued work */
}

/* ---- channel RMS norm + activation ---------------------------------------------------- */

static __device__ __forceinline__ void unpack8(const uint4 u, float *f) {
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x, f[2 * i + 1] = t.y;
    }
}

/* PG·8 pixels × all channels per block of 256 threads (PG pixel groups ×
 * CG = 256 / PG channel groups): thread (cg = tid / PG, pg = tid % PG) reads
 * channels cg, cg + CG, … of pixels p0 + 8·pg … + 7 with 16-byte loads and
 * keeps them in registers (CPT channels each, C <= CG·CPT; CPT 0: C larger,
 * the second pass re-reads x); the per-pixel sums of squares meet in shared
 * memory; the second pass normalises and writes y. PG 8 (64 pixels) is the
 * default; QI_CUDA_NORM_WIDE=1 keeps 12 channels a thread and widens the
 * block instead (C <= 96: 256 pixels, a warp reading 512 contiguous bytes of
 * one channel; C <= 192: 128), so each block visits each channel's plane
 * once per 256 or 128 pixels instead of 64. */
template <int CPT, int PG>
__global__ void __launch_bounds__(256) channel_rms_norm_vec_k(const bf16 *x, const void *gamma, const void *bias,
                                                              int gdt, int bdt, float gscale, float bscale,
                                                              int act, bf16 *y, int C, int64_t HW) {
    constexpr int CG = 256 / PG, NP = PG * 8; /* channel groups; pixels a block */
    __shared__ float red[CG][NP + 1];
    __shared__ float inv_s[NP];
    const int tid = threadIdx.x, cg = (int)(threadIdx.x / PG), pg = (int)(threadIdx.x % PG);
    const int64_t p0 = (int64_t)blockIdx.x * NP + pg * 8;
    const bool ok = p0 < HW; /* HW % 8 == 0: a vector is all in or all out */
    float ss[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint4 keep[CPT > 0 ? CPT : 1];
    if (ok) {
        if constexpr (CPT > 0) {
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const int ch = cg + CG * i;
                if (ch < C) {
                    keep[i] = *(const uint4 *)(x + (size_t)ch * HW + p0);
                    float f[8];
                    unpack8(keep[i], f);
#pragma unroll
                    for (int j = 0; j < 8; j++) ss[j] += f[j] * f[j];
                }
            }
        } else {
            for (int ch = cg; ch < C; ch += CG) {
                float f[8];
                load_v<8>(x + (size_t)ch * HW + p0, f);
#pragma unroll
                for (int j = 0; j < 8; j++) ss[j] += f[j] * f[j];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 8; j++) red[cg][pg * 8 + j] = ss[j];
    __syncthreads();
    static_assert(NP <= 256, "one thread per pixel of the block");
    if (tid < NP) {
        float s = 0.0f;
#pragma unroll 8
        for (int i = 0; i < CG; i++) s += red[i][tid];
        inv_s[tid] = sqrtf((float)C) / fmaxf(sqrtf(s), 1e-12f);
    }
    __syncthreads();
    if (!ok) return;
    float inv[8];
#pragma unroll
    for (int j = 0; j < 8; j++) inv[j] = inv_s[pg * 8 + j];
    auto finish = [&](int ch, float *f) {
        const float gv = gamma ? ld_param(gamma, gdt, ch) * gscale : 1.0f;
        const float bv = bias ? ld_param(bias, bdt, ch) * bscale : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = apply_act(f[j] * inv[j] * gv + bv, act);
        store_v<8>(y + (size_t)ch * HW + p0, f);
    };
    if constexpr (CPT > 0) {
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const int ch = cg + CG * i;
            if (ch < C) {
                float f[8];
                unpack8(keep[i], f);
                finish(ch, f);
            }
        }
    } else {
        for (int ch = cg; ch < C; ch += CG) {
            float f[8];
            load_v<8>(x + (size_t)ch * HW + p0, f); /* the same elements this thread read: y may alias x */
            finish(ch, f);
        }
    }
}

/* Any dtype / size: one thread per pixel, looping over the channels (adjacent
 * threads read adjacent pixels, so each channel's loads coalesce). */
template <typename T>
__global__ void channel_rms_norm_k(const T *x, const void *gamma, const void *bias, int gdt, int bdt, float gscale,
                                   float bscale, int act, T *y, int64_t C, int64_t HW) {
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < HW; p += (int64_t)gridDim.x * blockDim.x) {
        float ss = 0.0f;
        for (int64_t ch = 0; ch < C; ch++) {
            float v = to_f(x[ch * HW + p]);
            ss += v * v;
        }
        float inv = sqrtf((float)C) / fmaxf(sqrtf(ss), 1e-12f);
        for (int64_t ch = 0; ch < C; ch++) {
            float v = to_f(x[ch * HW + p]) * inv * (gamma ? ld_param(gamma, gdt, ch) * gscale : 1.0f);
            y[ch * HW + p] = from_f<T>(apply_act(v + (bias ? ld_param(bias, bdt, ch) * bscale : 0.0f), act));
        }
    }
}

extern "C" void qc_channel_rms_norm_act(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                                        const qi_tensor *bias, qi_act act, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype || qi_numel(x) != qi_numel(y)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: channel_rms_norm: x and y differ in dtype or size");
        return;
    }
    const int64_t C = x->ne[0], HW = C ? qi_numel(x) / C : 0;
    if (HW == 0) return;
    const void *gd = gamma ? gamma->data : NULL, *bd = bias ? bias->data : NULL;
    const int gdt = gamma ? (int)gamma->dtype : 0, bdt = bias ? (int)bias->dtype : 0;
    const float gs = gamma ? gamma->scale : 1.0f, bs = bias ? bias->scale : 1.0f;
    if (x->dtype == QI_BF16 && HW % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data) && C <= INT32_MAX &&
        (HW + 63) / 64 <= INT32_MAX) {
        const unsigned g = (unsigned)((HW + 63) / 64);
        const bf16 *xs = (const bf16 *)x->data;
        bf16 *ys = (bf16 *)y->data;
        if (c->norm_wide && C <= 96)
            channel_rms_norm_vec_k<12, 32><<<(unsigned)((HW + 255) / 256), 256, 0, c->stream>>>(
                xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
        else if (c->norm_wide && C <= 192)
            channel_rms_norm_vec_k<12, 16><<<(unsigned)((HW + 127) / 128), 256, 0, c->stream>>>(
                xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
        else if (C <= 96) channel_rms_norm_vec_k<3, 8><<<g, 256, 0, c->stream>>>(xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
        else if (C <= 192) channel_rms_norm_vec_k<6, 8><<<g, 256, 0, c->stream>>>(xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
        else if (C <= 384) channel_rms_norm_vec_k<12, 8><<<g, 256, 0, c->stream>>>(xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
        else channel_rms_norm_vec_k<0, 8><<<g, 256, 0, c->stream>>>(xs, gd, bd, gdt, bdt, gs, bs, (int)act, ys, (int)C, HW);
    } else if (x->dtype == QI_BF16 || x->dtype == QI_F32) {
        int64_t blocks = (HW + 255) / 256, cap = (int64_t)c->sm_count * 16;
        unsigned g = (unsigned)(blocks < cap ? blocks : cap);
        if (x->dtype == QI_BF16)
            channel_rms_norm_k<bf16><<<g, 256, 0, c->stream>>>((const bf16 *)x->data, gd, bd, gdt, bdt, gs, bs,
                                                              (int)act, (bf16 *)y->data, C, HW);
        else
            channel_rms_norm_k<float><<<g, 256, 0, c->stream>>>((const float *)x->data, gd, bd, gdt, bdt, gs, bs,
                                                               (int)act, (float *)y->data, C, HW);
    } else {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: channel_rms_norm on %s activations (BF16 or F32 only)",
                qi_dtype_name(x->dtype));
        return;
    }
    qc_check_launch(c, "channel_rms_norm");
}

/*
 * cuda_internal.h — what the CUDA backend's .cu files share: the backend's
 * state (stream, arena, cuBLASLt handle and plans, scratch, staging), the
 * sticky error that the void ops report through `sync`, and small device
 * helpers (bf16 <-> float, vector loads, dtype-generic parameter reads).
 *
 * Not a public header: only src/backend/cuda/*.cu include it.
 */
#ifndef QI_CUDA_INTERNAL_H
#define QI_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <pthread.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "backend/backend.h"
}

typedef __nv_bfloat16 bf16;

/* One cached cuBLASLt problem: descriptors and the chosen algorithm for a
 * (shape, layout, epilogue, alignment) combination. Built on first use. */
typedef struct lt_plan {
    int used;
    int transa, transb, m, n, k, lda, ldb, ldd, epilogue, d_type, align;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

#define QI_CUDA_PLANS 192

/* One buffer of the kept-weight scratch (cuda_kept.cu). A buffer holds at
 * most one expansion that no linear has read yet ("held"); one queued on the
 * expand stream is "side" until the compute stream has waited for `ready`.
 * Invariant: side implies held. */
#define QC_WBUFS 3 /* at most: 2 by default, 3 with QI_CUDA_KEPT_OVERLAP=3 */
typedef struct qc_wbuf {
    char *ptr;              /* into wscratch */
    qi_tensor held;         /* the kept weight whose bf16 copy was queued here; data NULL: none */
    int side;               /* queued on expand_stream; `stream` has not yet waited for `ready` */
    unsigned long long used; /* wbuf_clock at its last use (a write or a read queued) */
    cudaEvent_t ready;      /* recorded on expand_stream after the expansion */
} qc_wbuf;

typedef struct cuda_impl {
    int device;
    int sm_count;
    cudaStream_t stream;

    /* activations: one cudaMalloc, bump pointer */
    char *arena;
    size_t arena_cap, arena_used, arena_peak;

    /* cuBLASLt */
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    lt_plan plans[QI_CUDA_PLANS];
    int plan_next; /* round-robin eviction */
    /* algorithm tuning of new plans (cuda_gemm.cu): on/off, its event pair and
     * hash slot (made on first use), and what it did since creation */
    int gemm_tune;
    cudaEvent_t tune_ev[2];
    unsigned long long *tune_hash; /* [2]: an output's hash, its nonzero count */
    unsigned long long tune_plans, tune_changed, tune_differs;
    double tune_saved_ms;

    /* device scratch for ops that need temporaries (conv im2col, attention by
     * GEMMs, F32 weight conversion); fixed at creation */
    char *scratch;
    size_t scratch_bytes;

    /* count_nonfinite's device counter (8 bytes, made on first use) */
    unsigned long long *nonfinite_count;

    /* pinned host staging for upload / download / weight, double-buffered */
    void *staging[2];
    size_t staging_bytes;
    cudaEvent_t staging_free[2];
    int load_threads;    /* host threads converting into the staging buffers; 0: auto (below) */
    int load_cores;      /* auto: the cores, shared by the lanes busy at the time (<= MAX_LOAD_THREADS each) */
    int load_pread;      /* straight copies from a file mapping read by pread (QI_LOAD_PREAD, QI_LOAD_FAST) */
    int load_rotate;     /* a lane's staging buffers alternate across weights, not only within one */
    struct qi_work_pool *work_pool; /* waiting threads that fill the staging (backend/work_pool.h); NULL: old path */

    /* Weights made from two host threads at once (the engine loads the
     * transformer beside the text encoder): `weight` takes load_mu for its
     * bookkeeping (allocation, counters, the kept-weight scratch) but not for
     * the conversion and copy, which run on a free lane. Lane 0 is the
     * staging pair above on `stream`; lane 1, made on first need, has its
     * own pair and stream, and `stream` waits for each of its weights. */
    pthread_mutex_t load_mu;
    int load_mu_made;
    int lane_busy[2];    /* written under load_mu, read by parallel_convert without it: atomics */
    int lane_next[2];    /* the staging buffer a lane fills next (only its holder touches it) */
    struct {             /* what each lane's uploads cost (only its holder writes them): load_report */
        double fill_s, wait_s;
        unsigned long long bytes;
    } lane_stat[2];
    double alloc_s;      /* cudaMalloc of weights (under load_mu) */
    unsigned long long alloc_count;
    void *lane_staging[2];
    cudaEvent_t lane_free[2];
    cudaEvent_t lane_done;
    cudaStream_t lane_stream;

    /* bf16 copies of kept weights (fp8, GGUF blocks: cuda_kept.cu) for the
     * GEMMs that read them: one allocation of wscratch_bytes, split into
     * wbuf_count buffers of wbuf_bytes each (2 with the overlap: the next
     * linear's weight is expanded into one while the GEMM reads another);
     * each sized at load to the largest kept weight, so the addresses are
     * fixed before any graph is recorded */
    void *wscratch;
    size_t wscratch_bytes;
    int kept_weights;    /* kept weights alive: the scratch goes with the last one */
    int wscratch_fixed;  /* the plan reserved the scratch (`reserve`): weights no longer size it */
    int wbuf_count;      /* QI_CUDA_KEPT_OVERLAP at creation: 0 → 1 buffer, 3 → 3, else 2 */
    size_t wbuf_bytes;   /* each buffer: wscratch_bytes / wbuf_count (256-byte multiple) */
    qc_wbuf wbuf[QC_WBUFS];
    unsigned long long wbuf_clock; /* orders the buffers' uses (least recently used is written next) */
    /* the overlap (`prefetch_weight`, cuda_kept.cu): expansions queued on
     * their own stream, forked from and joined back into `stream` by events,
     * so a recording captures them as a branch of the graph */
    cudaStream_t expand_stream;
    cudaEvent_t expand_fork;  /* recorded on `stream` by each prefetch: the expansion waits for it */
    int kept_overlap;    /* prefetch_weight acts (wbuf_count 2 and not switched off) */
    int prefetch_grid;   /* blocks of a prefetched expansion (QI_CUDA_PREFETCH_SMS × 8); 0: as a linear's own */
    unsigned long long prefetch_queued, prefetch_used; /* expansions queued by prefetch_weight; read by a linear */

    /* streamed weights (`weight_host`, `stage`): pinned host copies, copied
     * into device slots on their own stream, ordered against the compute
     * stream by events (made on the first slot) */
    cudaStream_t copy_stream;
    cudaEvent_t compute_mark; /* recorded on `stream` by each stage: the copies wait for it */
    size_t host_bytes;        /* host memory held by host weights (pinned and pageable) */
    /* where host weights live (cuda_host.cu, backend/host_pool.h): pinned
     * chunks up to the pinned budget, ordinary ones past it */
    struct qi_host_pool *hpool;
    /* the bounce ring that stages weights in ordinary memory: QC_RING_CHUNKS
     * pinned buffers of QC_RING_BYTES (made on the first such stage), each
     * filled on the host then copied on copy_stream; ring_done[k] is recorded
     * after the last copy out of ring[k], and the host waits on it before
     * writing ring[k] again */
    void *ring[4];
    cudaEvent_t ring_done[4];
    int ring_cur;             /* the buffer being filled; -1: none yet */
    size_t ring_off;          /* bytes of it filled (256-byte steps) */
    unsigned long long h2d_pinned, h2d_bounced; /* bytes staged straight from pinned memory / through the ring */
    int dequant_at_load; /* QI_CUDA_DEQUANT_AT_LOAD=1: every float weight becomes bf16 at load */

    size_t weight_bytes; /* device memory held by weights */
    size_t weight_peak;  /* the most weights held at once */
    uint64_t random_seed; /* nonzero: `weight` fills random values instead of copying (benchmarks) */
    uint64_t random_count; /* weights made so far: each gets its own stream */
    int attn_variant;    /* qc_attn_variant: which attention kernel (tests and benchmarks pick) */
    int conv_mode;       /* qc_conv_mode: how 3×3, pad-1 convs run */
    /* the implicit-GEMM conv's switches (cuda_conv.cu; env at creation, the
     * lead's A/B knobs): conv_cache QI_CUDA_CONV_CACHE (default 1): each
     * weight's reordered layout made once, not per call; conv_direct
     * QI_CUDA_CONV_DIRECT (default 1): Co <= 4 on the CUDA cores in auto mode;
     * conv_rows QI_CUDA_CONV_ROWS (2 or 4, default 2): output rows per block;
     * conv_im2col_ci QI_CUDA_CONV_IM2COL_CI (default 128): auto runs a conv
     * that is not upsampled with more input channels than this through im2col */
    int conv_cache, conv_direct, conv_rows, conv_im2col_ci;
    int conv_resident;   /* default (QI_CUDA_CONV_RESIDENT=0: off): one-channel-block convs whose weights fit in shared
                          * memory keep them there and walk the pixel tiles (cuda_conv.cu) */
    int norm_wide;       /* QI_CUDA_NORM_WIDE=1: channel_rms_norm's wider blocks for C <= 192 (cuda_conv.cu) */
    /* the reordered layouts of 3×3 conv weights (cuda_conv.cu), keyed by the
     * weight's device address: an entry is made with the weight (`weight`),
     * its layout on the first conv that reads it, both freed with the weight
     * (under load_mu) */
    struct qc_conv_w *conv_ws;
    int conv_ws_n, conv_ws_cap;
    /* kernel selection (cuda_select.cu, once at creation) */
    int hopper;          /* wgmma and TMA kernels: a 9.x device running sm_90a code, not forced generic */
    void *tmap_encode;   /* the driver's cuTensorMapEncodeTiled, NULL if unavailable or not hopper */
    int device_cc;       /* the device's compute capability × 10 (90 for an H200) */
    int code_arch;       /* __CUDA_ARCH__ of the code the driver loaded (900; 800 for compute_80 PTX) */
    int generic_forced;  /* QI_CUDA_GENERIC=1 */
    int softmax_smem;    /* attention by GEMMs: the softmax's shared memory limit (0: not set yet, -1: refused) */
    size_t smem_optin;   /* the most shared memory one block may opt into; forced generic: at most
                          * 99 KiB, the budget of sm_86/89/120, so the H200 runs what those GPUs run */

    /* fp8 GEMM through cuBLASLt (cuda_fp8_gemm.cu): its state (NULL below
     * compute capability 8.9), whether it runs, and how many linears ran
     * through it or through the bf16 expansion of a kept weight */
    struct qc_fp8 *fp8;
    int fp8_supported;   /* device_cc >= 89 */
    int fp8_on;          /* supported and not QI_CUDA_FP8_GEMM=0 / qi_cuda_set_fp8_gemm(be, 0) */
    unsigned long long fp8_calls, expand_calls;
    /* the block GEMM (cuda_block_gemm.cu): linears of a GGUF weight with at
     * most this many rows read its blocks themselves (0: never; default
     * QI_CUDA_BLOCK_GEMM_ROWS, else 0), and how many did */
    int64_t block_gemm_rows;
    int block_gemm_split; /* K split over blocks for small grids (default; QI_CUDA_BLOCK_GEMM_SPLIT=0: never) */
    unsigned long long block_gemm_calls;
    char fp8_fallback[160], fp8_state[320]; /* why the last e4m3 linear went to the expansion ("": none yet) */

    /* first error of a void op, returned (and cleared) by sync */
    qi_status err_status;
    char err_msg[1024];
} cuda_impl;

static inline cuda_impl *cuda_of(qi_backend *be) { return (cuda_impl *)be->impl; }

/* A CUDA error as the status a caller gets: out of memory as QI_ERR_NOMEM. */
static inline qi_status cuda_err(qi_error *err, cudaError_t e, const char *what) {
    return qi_fail(err, e == cudaErrorMemoryAllocation ? QI_ERR_NOMEM : QI_ERR_BACKEND, "cuda backend: %s: %s", what,
                   cudaGetErrorString(e));
}

/* Makes c's device current for one entry point; returns the caller's device
 * to hand to device_leave, or -1 when it already was c's (nothing to undo).
 * A failing cudaSetDevice is left for the entry point's own calls to report. */
static inline int device_enter(const cuda_impl *c) {
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess || prev == c->device) return -1;
    return cudaSetDevice(c->device) == cudaSuccess ? prev : -1;
}

static inline void device_leave(int prev) {
    if (prev >= 0) cudaSetDevice(prev);
}

/* Records the first failure of an op; later ones are dropped. */
void qc_fail(cuda_impl *c, qi_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Records a launch error (cudaGetLastError) under the op's name; returns 0 if none. */
int qc_check_launch(cuda_impl *c, const char *op);

/* ---- weights kept in their file type (cuda_kept.cu) ---- */
/* Describes in *out kept weight w as bf16 in a buffer of the weight scratch
 * for the GEMM queued next on `stream`: the copy prefetch_weight queued, or
 * one written now; records an error and returns 1 on failure. */
int qc_dequant_to_scratch(cuda_impl *c, const qi_tensor *w, qi_tensor *out);
/* Whether a buffer of the weight scratch holds (or is being given) w's
 * expansion: a linear of w then reads that. */
int qc_wbuf_has(const cuda_impl *c, const qi_tensor *w);
/* The block GEMM (cuda_block_gemm.cu): whether linear(x, w) of M rows runs
 * there (see block_gemm_rows), and the linear itself; the latter records an
 * error and returns 1 on failure. */
int qc_block_gemm_takes(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, int64_t M);
int qc_block_gemm(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, qi_act act,
                  qi_tensor *y);
/* The op table's prefetch_weight: w's bf16 copy queued on the expand stream
 * into the least recently used free buffer, when the overlap is on and a
 * linear would expand w (see backend.h). */
void qc_prefetch_weight(qi_backend *be, const qi_tensor *w);
/* A buffer of the weight scratch that ops queued next on `stream` may write
 * (`bytes` at most: NULL if none is that large): a free one, else the
 * oldest held one, given up after `stream` waited for its expansion. */
void *qc_wbuf_claim(cuda_impl *c, size_t bytes);
/* Makes `stream` wait for every expansion still on the expand stream, and
 * with `forget` drops what the buffers hold (before and after a recording,
 * when weights change or the scratch moves). */
void qc_wbuf_settle(cuda_impl *c, int forget);
/* Points the buffers into c->wscratch (after it was (re)allocated; forgets). */
void qc_wbuf_layout(cuda_impl *c);
/* Seeded random contents of a kept weight (benchmarks); *scale: its per-tensor scale. */
int qc_random_kept(cuda_impl *c, qi_tensor *w, uint64_t key, float *scale);

/* ---- host weights and slots (cuda_host.cu) ---- */
#define QC_RING_CHUNKS 4
#define QC_RING_BYTES ((size_t)64 << 20)
/* The pool (budget: QI_PINNED_MAX, else half the RAM) and its teardown. */
qi_status qc_host_init(cuda_impl *c, qi_error *err);
void qc_host_destroy(cuda_impl *c);
/* Host memory for a host weight of `bytes`: pinned while the budget lasts. */
qi_status qc_host_alloc(cuda_impl *c, size_t bytes, void **out, int *pinned, qi_error *err);
/* 1: p is a pinned host weight's, 0: a pageable one's, -1: not a host weight. */
int qc_host_kind(const cuda_impl *c, const void *p);
void qc_host_free(cuda_impl *c, void *p);
/* embedding's path for a table in ordinary memory (a kernel cannot read it):
 * the rows ids names gathered on the host into c->scratch as a table of its
 * own, *ids_out its row numbers 0..n-1. Synchronous (not in a graph: the text
 * encoder runs eagerly). Returns 1 with an error recorded on failure. */
int qc_host_gather_rows(cuda_impl *c, const qi_tensor *table, const qi_tensor *ids, qi_tensor *rows,
                        qi_tensor *ids_out);
/* dst[0..bytes) = src, split over the load threads (cuda_backend.cu). */
void qc_host_copy(const cuda_impl *c, void *dst, const void *src, size_t bytes);
qi_status cuda_slot_new(qi_backend *be, size_t bytes, qi_slot **out, qi_error *err);
void cuda_slot_free(qi_backend *be, qi_slot *s);
qi_status cuda_stage(qi_backend *be, qi_slot *s, const qi_tensor *src, qi_tensor *dst, int n, qi_error *err);
void cuda_stage_wait(qi_backend *be, qi_slot *s);
void cuda_host_budget(qi_backend *be, size_t pinned_max);

/* ---- fp8 GEMM (cuda_fp8_gemm.cu) ---- */
/* Reads QI_CUDA_FP8_GEMM / QI_CUDA_FP8_FAST_ACCUM and makes the device
 * scale buffer (after qc_select_kernels: needs device_cc). */
qi_status qc_fp8_init(cuda_impl *c, qi_error *err);
void qc_fp8_destroy(cuda_impl *c);
/* Whether the fp8 GEMM would take linear's weight w, judging by w alone
 * (prefetch_weight does not expand what it takes). */
int qc_fp8_takes_weight(const cuda_impl *c, const qi_tensor *w);
/* y = act(x · wᵀ (scaled) + b) for an e4m3 weight w on the fp8 tensor cores:
 * 1 when queued, 0 when it does not take the case (nothing written to y, no
 * error: `linear` expands the weight instead), -1 on a recorded error. */
int qc_fp8_linear(cuda_impl *c, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, qi_act act,
                  qi_tensor *y);
/* linear_shared's fp8 side: the n linears of x (1 <= n <= 4) with x
 * quantised once (src: x made first by the LayerNorm kernel, which also
 * takes its amax). Returns how many of the linears it queued, in order (n
 * unless cuBLASLt refused GEMM k: then k, and linears k.. are the caller's
 * to run with `linear`), or -1 on a recorded error. *started: whether
 * anything was queued (x made, with src); 0 means it declined whole: any
 * linear the fp8 path would not take, or src not one the register
 * LayerNorm kernels take. */
int qc_fp8_linear_shared(cuda_impl *c, const qi_tensor *x, const qi_ln_mod_src *src, int n,
                         const qi_tensor *const *w, const qi_tensor *const *b, const qi_act *act,
                         qi_tensor *const *y, int *started);

/* ---- convolution (cuda_conv.cu) ---- */
typedef enum qc_conv_mode {
    QC_CONV_AUTO = 0, /* implicit GEMM where it measured faster, else im2col */
    QC_CONV_IMPLICIT, /* implicit GEMM whenever it can take the case */
    QC_CONV_IM2COL    /* column matrix + cuBLASLt (upsample materialised) */
} qc_conv_mode;

/* The conv switches above from the environment (QI_CUDA_CONV_CACHE, _DIRECT,
 * _ROWS, _IM2COL_CI, _RESIDENT, QI_CUDA_NORM_WIDE), at creation. */
void qc_conv_options_init(cuda_impl *c);
/* Weight bookkeeping for the per-weight conv layouts (under load_mu): w was
 * made on the device (an entry if it is a 3×3 conv kernel the implicit GEMM
 * reads); the weight at `data` is being freed (its layout goes with it;
 * queued work has finished); everything, at destroy. */
void qc_conv_weight_made(cuda_impl *c, const qi_tensor *w);
void qc_conv_weight_freed(cuda_impl *c, const void *data);
void qc_conv_weights_destroy(cuda_impl *c);
/* Device bytes of the reordered layout a weight of stored type dt and shape
 * ne[4] would get (0: not a conv kernel that has one, or the cache is off). */
size_t qc_conv_layout_bytes(const cuda_impl *c, qi_dtype dt, const int64_t *ne);

/* ---- attention (cuda_attention.cu, cuda_flash_hopper.cu) ---- */
typedef enum qc_attn_variant {
    QC_ATTN_AUTO = 0,
    QC_ATTN_MMA,        /* mma.sync flash kernel (head dims 16, 32, 64, 80, 128) */
    QC_ATTN_GEMM,       /* S = QKᵀ, softmax, PV through cuBLASLt (any head dim) */
    QC_ATTN_WGMMA_64x2, /* retired to dev/cuda/flash_variants.cu.txt: runs as AUTO */
    QC_ATTN_WGMMA_128x2, /* retired, as 64x2 */
    QC_ATTN_WGMMA_64x3, /* Hopper wgmma flash kernel, head dim 128: 64-key tiles, 3 warpgroups */
    QC_ATTN_TMA_64x2,   /* warp-specialised wgmma kernel fed by TMA (cuda_flash_tma.cu) */
    QC_ATTN_TMA_128x2,  /* retired, as 64x2 */
    QC_ATTN_TMA_64x3,
    QC_ATTN_VARIANTS
} qc_attn_variant;

typedef struct attn_params {
    const bf16 *q, *k, *v;
    bf16 *o;
    const int32_t *mask; /* [B, Lk] or NULL */
    int B, Lq, Lk, H, Hkv, group;
    float scale_log2; /* scale · log2(e): softmax runs in base 2 */
    int causal, causal_off;
    /* attention_segments (flash_k only): row offsets [nseg + 1] on the device;
     * each segment's rows attend to that segment's keys alone (Lq == Lk) */
    const int32_t *seg;
    int nseg;
} attn_params;

/* Launch the Hopper kernels for head dim 128 (variant one of theirs); they
 * record an error unless c->hopper (their code exists only for sm_90a). */
void qc_flash_hopper(cuda_impl *c, const attn_params *p, int variant);
void qc_flash_tma(cuda_impl *c, const attn_params *p, int variant);

/* ---- GEMM (cuda_gemm.cu) ---- */
/* Column-major D[m,n] = alpha · op(A)[m,k] · op(B)[k,n] (+ bias[m]) then
 * epilogue; A, B bf16; D bf16 (d_type CUDA_R_16BF) or float (CUDA_R_32F).
 * Returns 0 on success (else the error is recorded). */
int qc_gemm(cuda_impl *c, int transa, int transb, int m, int n, int k, const void *A, int lda,
            const void *B, int ldb, void *D, int ldd, cudaDataType_t d_type, float alpha,
            const void *bias, cublasLtEpilogue_t epilogue, const char *op);
/* cuBLASLt's first algorithm for desc on layouts a, b, d (D written over C,
 * the same layout) within c's workspace, for operands whose addresses are
 * multiples of al_a, al_b and al_d (C and D) bytes; shared by qc_gemm's and
 * the fp8 GEMM's plans. Returns the first failing status (making the
 * preference, the heuristic, or its result's state); *found: how many
 * algorithms came back (0 or 1); *algo is set only on success. */
cublasStatus_t qc_lt_best_algo(cuda_impl *c, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                               cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t d, uint32_t al_a, uint32_t al_b,
                               uint32_t al_d, cublasLtMatmulAlgo_t *algo, int *found);
/* Frees a plan's descriptors (an unused one: nothing). */
void qc_plan_destroy(lt_plan *p);

/* ---- ops defined in cuda_ops.cu / cuda_attention.cu ---- */
extern "C" {
void qc_embedding(qi_backend *be, const qi_tensor *table, const qi_tensor *ids, qi_tensor *out);
void qc_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps, qi_tensor *y);
void qc_layer_norm_mod(qi_backend *be, const qi_tensor *x, const qi_tensor *shift,
                       const qi_tensor *scale, int64_t mod_stride, float eps, qi_tensor *y);
void qc_add_gated(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                  const qi_tensor *y);
void qc_activate(qi_backend *be, const qi_tensor *x, qi_act act, qi_tensor *y);
void qc_silu_mul(qi_backend *be, const qi_tensor *gate, const qi_tensor *up, qi_tensor *y);
void qc_axpby(qi_backend *be, float a, const qi_tensor *x, float b, const qi_tensor *y,
              qi_tensor *out);
void qc_copy_rows(qi_backend *be, const qi_tensor *src, int64_t src_row0, qi_tensor *dst,
                  int64_t dst_row0, int64_t nrows);
void qc_rope(qi_backend *be, qi_tensor *x, const qi_tensor *cos_tab, const qi_tensor *sin_tab,
             qi_rope_mode mode);
void qc_attention(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                  const qi_tensor *key_mask, int causal, float scale, qi_tensor *out);
void qc_attention_segments(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                           const qi_tensor *seg, float scale, qi_tensor *out);
void qc_cfg_combine(qi_backend *be, const qi_tensor *cond, const qi_tensor *uncond, float s,
                    qi_tensor *out);
void qc_conv2d(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, int pad,
               qi_tensor *y);
void qc_upsample2x(qi_backend *be, const qi_tensor *x, qi_tensor *y);
void qc_subsample2x(qi_backend *be, const qi_tensor *x, int offset, qi_tensor *y);
void qc_channel_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                         const qi_tensor *bias, qi_tensor *y);
void qc_transpose2d(qi_backend *be, const qi_tensor *x, qi_tensor *y);
void qc_rms_norm_rope(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps, const qi_tensor *cos_tab,
                      const qi_tensor *sin_tab, qi_rope_mode mode, qi_tensor *dst, int64_t dst_row0);
void qc_channel_rms_norm_act(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma, const qi_tensor *bias,
                             qi_act act, qi_tensor *y);
void qc_conv2d_fused(qi_backend *be, const qi_tensor *x, int upsample, const qi_tensor *w, const qi_tensor *b,
                     int pad, const qi_tensor *res, qi_tensor *y);
void qc_add_gated_layer_norm_mod(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                                 const qi_tensor *y, const qi_tensor *shift, const qi_tensor *scale,
                                 int64_t mod_stride, float eps, qi_tensor *out);
}

/* The 3×3, pad 1 conv of x (upsampled 2× first when `upsample`) as an implicit
 * GEMM, + b + res, into y (cuda_conv.cu). Returns 0 without doing anything
 * when it cannot take the case (dtypes, sizes) or im2col is faster / chosen. */
int qc_conv3x3_implicit(cuda_impl *c, const qi_tensor *x, int upsample, const qi_tensor *w, const qi_tensor *b,
                        const qi_tensor *res, qi_tensor *y);

/* Adds bias[N] (any float dtype, times bias_scale) and applies act to y[M, N]
 * in place (y bf16 or f32); used when the GEMM epilogue cannot. */
void qc_bias_act(cuda_impl *c, qi_tensor *y, const qi_tensor *bias, qi_act act);
/* The same from a float32 GEMM result acc (same shape as y) into bf16 y. */
void qc_bias_act_f32(cuda_impl *c, const float *acc, qi_tensor *y, const qi_tensor *bias, qi_act act);
/* Converts n elements of a float tensor (F32/BF16/F16, times scale) into bf16 at dst. */
void qc_to_bf16(cuda_impl *c, const void *src, qi_dtype dt, float scale, bf16 *dst, int64_t n);

/* ---- device helpers ---- */

/* A float read of element i of a parameter vector of any float dtype
 * (norm weights, biases, modulation rows, rope tables). */
static __device__ __forceinline__ float ld_param(const void *p, int dt, int64_t i) {
    switch (dt) {
    case QI_BF16: return __bfloat162float(((const bf16 *)p)[i]);
    case QI_F16: return __half2float(((const __half *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T> static __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

/* V consecutive elements as floats; V == 8 uses 16-byte accesses (the caller
 * guarantees alignment), V == 1 plain ones. */
template <int V> static __device__ __forceinline__ void load_v(const bf16 *p, float *f) {
    if constexpr (V == 8) {
        uint4 u = *(const uint4 *)p;
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = __bfloat1622float2(h[i]);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) f[i] = __bfloat162float(p[i]);
    }
}
template <int V> static __device__ __forceinline__ void load_v(const float *p, float *f) {
    if constexpr (V == 8) {
        float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
        f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) f[i] = p[i];
    }
}
template <int V> static __device__ __forceinline__ void store_v(bf16 *p, const float *f) {
    if constexpr (V == 8) {
        uint4 u;
        __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
        *(uint4 *)p = u;
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) p[i] = __float2bfloat16_rn(f[i]);
    }
}
template <int V> static __device__ __forceinline__ void store_v(float *p, const float *f) {
    if constexpr (V == 8) {
        ((float4 *)p)[0] = make_float4(f[0], f[1], f[2], f[3]);
        ((float4 *)p)[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) p[i] = f[i];
    }
}

static __device__ __forceinline__ float gelu_tanh(float u) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * u * (1.0f + tanhf(k * (u + 0.044715f * u * u * u)));
}
static __device__ __forceinline__ float silu(float u) { return u / (1.0f + __expf(-u)); }
static __device__ __forceinline__ float gelu_erf(float u) { return 0.5f * u * (1.0f + erff(u * 0.7071067811865476f)); }
static __device__ __forceinline__ float apply_act(float u, int act) {
    return act == QI_ACT_GELU_TANH ? gelu_tanh(u)
           : act == QI_ACT_SILU    ? silu(u)
           : act == QI_ACT_GELU_ERF ? gelu_erf(u)
                                    : u;
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Whether ld_param reads dtype dt: the types a weight or parameter vector
 * may have when an op reads it element by element. */
static inline int qc_param_type(int dt) { return dt == QI_BF16 || dt == QI_F16 || dt == QI_F32; }

static inline int qc_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
/* The largest power of two, up to 256, that p's address is a multiple of:
 * the alignment cuBLASLt's heuristic is told (a plan is kept per value). */
static inline int qc_ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 1 && (u & (uintptr_t)(a - 1))) a >>= 1;
    return a;
}
static inline unsigned qc_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b);
}

/* ---- the upload (cuda_upload.cu) ---------------------------------------- */

/* How a weight's stored values become real ones while converting: each
 * element of row r (= element index / row_len) times its scale, in float32
 * before the rounding to the device type (backend.h, qi_weight_scale). */
typedef struct convert_scale {
    qi_scale_form form;
    float scale;            /* QI_SCALE_TENSOR */
    const float *row_scale; /* QI_SCALE_ROW */
    int64_t row_len;        /* elements per row (the last dim) */
} convert_scale;

static const convert_scale qc_no_scale = {QI_SCALE_NONE, 1.0f, NULL, 1};

/* Where an upload's chunks go through: two pinned staging buffers, the
 * events that say each is free again, the stream that copies them, and which
 * buffer is filled next. */
typedef struct upload_lane {
    void *const *staging;
    cudaEvent_t const *free;
    cudaStream_t stream;
    int *next;
    double *fill_s, *wait_s; /* seconds reading into the staging, waiting for a buffer's copy */
    unsigned long long *bytes;
} upload_lane;

/* Host data -> out_dt (n elements, the tensor's g0 … g0+n), split over the load threads. */
void qc_convert(const cuda_impl *c, void *dst, qi_dtype out_dt, const void *src, qi_dtype dt, size_t n,
                const convert_scale *sc, size_t g0);
upload_lane qc_lane_of(cuda_impl *c, int k);
/* Host data of type src_dt -> the device tensor `dev` of type dst_dt through lane l. */
qi_status qc_lane_upload(const cuda_impl *c, upload_lane l, void *dev, qi_dtype dst_dt, const void *host,
                         qi_dtype src_dt, size_t n, const convert_scale *sc, qi_error *err);
qi_status qc_lane_take(cuda_impl *c, int *lane, qi_error *err); /* under load_mu */
qi_status qc_lane_give(cuda_impl *c, int lane, qi_error *err);  /* under load_mu */
/* The load settings (QI_LOAD_FAST, QI_LOAD_PREAD, QI_CUDA_LOAD_THREADS) and the work pool. */
qi_status qc_upload_init(cuda_impl *c, qi_error *err);
void qc_upload_destroy(cuda_impl *c); /* lane 1, the pool, load_mu */
void qc_load_report(qi_backend *be, char *line, size_t cap); /* the op */

#endif

/*
 * cuda_backend.h — the CUDA backend's extras beyond the op table, for code
 * that knows it runs on CUDA (tests timing with CUDA events, graph capture,
 * the GPU noise generator). C-callable; every function takes a backend made
 * by qi_backend_cuda_create.
 */
#ifndef QI_CUDA_BACKEND_H
#define QI_CUDA_BACKEND_H

#include <stddef.h>

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The backend's one stream (a cudaStream_t): every op is queued on it. */
void *qi_cuda_stream(qi_backend *be);
/* The CUDA device ordinal the backend runs on. */
int qi_cuda_device(qi_backend *be);
/* Peak bytes of the activation arena used so far, and its capacity. */
size_t qi_cuda_arena_peak(qi_backend *be);
size_t qi_cuda_arena_capacity(qi_backend *be);
/* Device bytes held by weights. */
size_t qi_cuda_weight_bytes(qi_backend *be);
/* The kernels the backend runs, chosen at creation (cuda_select.cu):
 * "hopper" (wgmma / TMA flash attention: a compute capability 9.x device
 * running this build's sm_90a code) or "generic" (mma.sync kernels: any GPU
 * from sm_80; QI_CUDA_GENERIC=1 in the environment forces it). */
const char *qi_cuda_kernel_family(qi_backend *be);
/* __CUDA_ARCH__ of the code the driver loaded (900 for sm_90a; 800 when the
 * compute_80 PTX was JIT-compiled), and the device's compute capability × 10. */
int qi_cuda_code_arch(qi_backend *be);
int qi_cuda_device_cc(qi_backend *be);

/* The fp8 GEMM (cuda_fp8_gemm.cu): on a device of compute capability 8.9 or
 * newer, `linear` with an F8_E4M3 weight (plain, per-tensor or per-row
 * scale) whose dims are multiples of 16 and at least 128 quantises the bf16 activations to
 * e4m3 (one dynamic per-tensor scale) and runs cuBLASLt's fp8 GEMM instead
 * of expanding the weight to bf16. QI_CUDA_FP8_GEMM=0 in the environment
 * turns it off at creation. state: a sentence saying on/off and why.
 * set_fp8_gemm (tests, benchmarks) turns it on or off; returns whether it
 * is on now (never on a device without fp8 tensor cores). gemm_counts: how
 * many linears with a kept weight ran through the fp8 GEMM and how many
 * through the bf16 expansion, since creation (queued, graph recordings
 * included). */
const char *qi_cuda_fp8_gemm_state(qi_backend *be);
int qi_cuda_set_fp8_gemm(qi_backend *be, int on);
void qi_cuda_gemm_counts(qi_backend *be, unsigned long long *fp8, unsigned long long *expanded);

/* GEMM algorithm tuning (cuda_gemm.cu): a new bf16 GEMM plan made outside a
 * graph recording times cuBLASLt's first 8 algorithms on its own operands
 * and keeps the fastest that sums over k like the first and whose output is
 * bit-identical to the first's (so results never change; a first call whose
 * output is mostly zeros leaves the plan untuned). Environment, read at creation: QI_CUDA_GEMM_TUNE=0
 * turns it off. set_gemm_tune (tests, benchmarks; not while a graph is
 * recorded: it waits for the stream) turns it on or off, drops every cached
 * plan (the next calls make them again) and returns whether it was on;
 * gemm_tune_on says whether it is on. tune_counts: since creation, the plans tuned, those given another
 * algorithm, candidates passed over for different bits, and the
 * milliseconds per use saved summed over plans (each may be NULL). */
int qi_cuda_set_gemm_tune(qi_backend *be, int on);
int qi_cuda_gemm_tune_on(qi_backend *be);
void qi_cuda_gemm_tune_counts(qi_backend *be, unsigned long long *plans, unsigned long long *changed,
                              unsigned long long *differs, double *saved_ms);

/* The overlap of kept-weight expansions (cuda_kept.cu): the op table's
 * prefetch_weight queues a coming linear's bf16 expansion on a second
 * stream into a free weight buffer, while the GEMMs before it run.
 * Environment, read at creation: QI_CUDA_KEPT_OVERLAP=0 (one buffer, no
 * prefetch: half the scratch memory; =3: three buffers, hints two linears
 * ahead taken; else two), QI_CUDA_PREFETCH_SMS=N (a prefetched
 * expansion's grid: what N SMs hold; default the full grid),
 * QI_CUDA_PREFETCH_PRIORITY=1 (the compute stream at the highest priority).
 * set_kept_overlap (tests, benchmarks) turns prefetching on or off (never on
 * when created with QI_CUDA_KEPT_OVERLAP=0) and returns whether it was on;
 * results are bit-identical either way. kept_counts: since creation, the
 * linears whose kept weight was expanded (bf16 path), the expansions queued
 * by prefetch_weight, and how many of those a linear read (each may be NULL). */
int qi_cuda_set_kept_overlap(qi_backend *be, int on);
void qi_cuda_kept_counts(qi_backend *be, unsigned long long *expanded, unsigned long long *queued,
                         unsigned long long *used);

/* The block GEMM (cuda_block_gemm.cu): a linear of a GGUF-block weight with
 * at most `rows` rows of x reads the blocks in the GEMM (decoded into shared
 * memory, mma.sync on any GPU from sm_80) instead of expanding the weight to
 * bf16 first, unless a prefetched expansion of it is waiting. 0: never (the
 * default: on an H200 it is slower than the expansion at every shape, run AF;
 * QI_CUDA_BLOCK_GEMM_ROWS=N at creation sets N). Its results are
 * the same products summed in another order: not bit-identical to the
 * expansion's. Returns the previous setting. set_block_gemm_split: whether
 * a product with a small grid splits K over more blocks (default on;
 * QI_CUDA_BLOCK_GEMM_SPLIT=0 at creation: off); returns the previous one.
 * block_gemm_calls: the linears it ran since creation. */
int64_t qi_cuda_set_block_gemm_rows(qi_backend *be, int64_t rows);
int qi_cuda_set_block_gemm_split(qi_backend *be, int on);
unsigned long long qi_cuda_block_gemm_calls(qi_backend *be);

/* Chooses the attention kernel (for tests and benchmarks): "auto" (default),
 * "mma" (portable flash kernel), "gemm" (through cuBLASLt), "wgmma64x3"
 * (Hopper flash kernel for head dim 128: 64-key tiles × 3 warpgroups),
 * "tma64x2", "tma64x3" (the same, warp-specialised and fed by TMA). Kernels
 * that cannot take a shape fall back as "auto" does. "wgmma64x2",
 * "wgmma128x2" and "tma128x2" are retired to dev/cuda/ (NOTES.md) and run as
 * "auto". Returns 0, or -1 for an unknown name. */
int qi_cuda_set_attention_kernel(qi_backend *be, const char *name);

/* Chooses how 3×3, pad-1 convolutions run (for tests and benchmarks):
 * "auto" (default: whichever measured faster for the shape), "implicit"
 * (implicit GEMM on the tensor cores, no column matrix, upsample and residual
 * fused) or "im2col" (column matrix + cuBLASLt). The environment variable
 * QI_CUDA_CONV sets the initial choice. Returns 0, or -1 for an unknown name. */
int qi_cuda_set_conv_kernel(qi_backend *be, const char *name);
/* The implicit-GEMM conv's variants (for tests and benchmarks; the
 * environment variables QI_CUDA_CONV_ROWS, QI_CUDA_CONV_DIRECT and
 * QI_CUDA_CONV_RESIDENT set the initial ones): `rows` output rows per block,
 * 2 (default) or 4; `direct` 1: convs with at most 4 outputs run on the CUDA
 * cores in "auto" (default), 0: as the other convs; `resident` 1: a conv of
 * one channel block whose weights fit in shared memory keeps them there and
 * walks the pixel tiles (default 0). Returns 0, or -1 for rows other than 2 or 4. */
int qi_cuda_set_conv_variant(qi_backend *be, int rows, int direct, int resident);

/* Host memory for streamed weights (cuda_host.cu): weight_host places each
 * weight in pinned chunks while they stay within the pinned budget (the op
 * table's host_budget; default QI_PINNED_MAX, else half the RAM or of the
 * cgroup limit), past it in ordinary memory, staged through a pinned bounce
 * ring. */
typedef struct qi_cuda_host {
    size_t pinned_max;                 /* the pinned budget, bytes */
    size_t pinned_held, pageable_held; /* bytes of pinned / ordinary chunks held for host weights */
    size_t ring_bytes;                 /* the bounce ring (pinned besides the budget); 0: not made */
    unsigned long long staged_pinned;  /* bytes staged into slots straight from pinned memory, since creation */
    unsigned long long staged_bounced; /* bytes staged through the ring, since creation */
} qi_cuda_host;
void qi_cuda_host_info(qi_backend *be, qi_cuda_host *out);
/* The link's host-to-device peak: the median GB/s of `runs` plain cudaMemcpy
 * calls of `bytes`, from pinned memory and from ordinary (pageable) memory. */
qi_status qi_cuda_link_peak(qi_backend *be, size_t bytes, int runs, double *pinned_gbps, double *pageable_gbps,
                            qi_error *err);

/* CUDA graphs: ops queued between capture_begin and capture_end are recorded,
 * not run; graph_launch replays them (on the same tensors, reading their
 * current contents). Every op may be captured; upload, download, sync, weight
 * and weight_free may not. Run the op sequence once before capturing it, so
 * cuBLASLt plans and kernel attributes are set up outside the capture. */
typedef struct qi_cuda_graph qi_cuda_graph;
qi_status qi_cuda_capture_begin(qi_backend *be, qi_error *err);
qi_status qi_cuda_capture_end(qi_backend *be, qi_cuda_graph **out, qi_error *err);
qi_status qi_cuda_graph_launch(qi_backend *be, qi_cuda_graph *g, qi_error *err);
void qi_cuda_graph_free(qi_cuda_graph *g);

#ifdef __cplusplus
}
#endif

#endif

/*
 * backend.h — the op table every compute backend implements.
 *
 * Model code (text_encoder.c, dit.c, vae.c) is written once against this
 * table and never touches device memory directly. A backend owns:
 *   - weights: created once from a mapped file tensor (or from float32 host
 *     data after LoRA fusion) and kept for the engine's life;
 *   - an activation arena: bump allocation, reset by the model code between
 *     calls (qi_be_mark / qi_be_reset), so nothing is allocated per step.
 *
 * Tensors are dense, row-major, outermost dimension first. A "row" is the
 * last dimension; ops that say [M, K] accept any shape whose trailing dim is
 * K and treat the product of the others as M. Views (a reshape of the same
 * memory) are plain struct copies with another shape: see qi_view().
 *
 * Activations are float32 on the CPU backend and bf16 on the CUDA backend;
 * model code does not care (it only asks for QI_ACT, the backend's
 * activation type). Weights keep their file type on the CPU backend
 * (f32/f16/bf16, fp8 with its scale, every GGUF block type): `linear` and
 * `embedding` dequantise rows on the fly, so the real transformer never needs
 * an 82 GB float32 copy.
 */
#ifndef QI_BACKEND_H
#define QI_BACKEND_H

#include "base/base.h"

#define QI_MAX_DIMS 5

/* How a weight's stored values become real ones (scaled fp8 checkpoints):
 * value = stored · scale (one per tensor) or stored[o, :] · row_scale[o]
 * (one per output row, [ne[0]] float32 in the backend's memory). */
typedef enum qi_scale_form {
    QI_SCALE_NONE = 0, /* stored values are the values (scale unused) */
    QI_SCALE_TENSOR,   /* one float32 `scale` for the whole tensor */
    QI_SCALE_ROW       /* `row_scale[ne[0]]`, one per output row */
} qi_scale_form;

/* The scale handed to `weight` with a weight's stored bytes (NULL: none). */
typedef struct qi_weight_scale {
    qi_scale_form form;
    float scale;            /* QI_SCALE_TENSOR */
    const float *row_scale; /* QI_SCALE_ROW: [ne[0]] host floats, alive as long as `host` is */
} qi_weight_scale;

typedef struct qi_tensor {
    qi_dtype dtype;
    int ndim;
    int64_t ne[QI_MAX_DIMS]; /* shape, outermost first */
    void *data;              /* memory of the owning backend (host or device) */
    float scale;             /* dequantisation scale (QI_SCALE_TENSOR); 1 otherwise */
    qi_scale_form scale_form;
    const float *row_scale;  /* QI_SCALE_ROW: [ne[0]] in the backend's memory */
} qi_tensor;

int64_t qi_numel(const qi_tensor *t);
size_t qi_nbytes(const qi_tensor *t);
int64_t qi_rows(const qi_tensor *t); /* numel / last dim */

/* Same memory, another shape (numel must match; asserts). */
qi_tensor qi_view(const qi_tensor *t, int ndim, const int64_t *ne);
qi_tensor qi_view2(const qi_tensor *t, int64_t d0, int64_t d1);
qi_tensor qi_view3(const qi_tensor *t, int64_t d0, int64_t d1, int64_t d2);
qi_tensor qi_view4(const qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Rows [row0, row0+nrows) of t seen as [rows, last] (contiguous slice). */
qi_tensor qi_slice_rows(const qi_tensor *t, int64_t row0, int64_t nrows);

/* Formats "[2, 3, 4]" into buf. */
const char *qi_shape_str(const qi_tensor *t, char *buf, size_t cap);

typedef enum qi_act {
    QI_ACT_NONE = 0,
    QI_ACT_GELU_TANH, /* 0.5·u·(1 + tanh(√(2/π)(u + 0.044715u³))) */
    QI_ACT_SILU,
    QI_ACT_GELU_ERF /* 0.5·u·(1 + erf(u/√2)): torch's exact GELU (the vision tower's merger) */
} qi_act;

typedef enum qi_rope_mode {
    QI_ROPE_INTERLEAVED = 0, /* pairs (x[2m], x[2m+1]) — the Qwen-Image DiT */
    QI_ROPE_HALF = 1         /* pairs (x[m], x[m+D/2]) — Qwen2.5 "rotate_half" */
} qi_rope_mode;

/* The op linear_shared runs first to make its x, when asked to:
 *   proj NULL: layer_norm_mod(x, shift, scale, mod_stride, eps) -> x_out;
 *   else: add_gated_layer_norm_mod(x, gate, gate_stride, proj, shift, scale,
 *         mod_stride, eps) -> x_out (x updated in place, as that op does).
 * Its fields are those ops' arguments. */
typedef struct qi_ln_mod_src {
    qi_tensor *x;          /* the stream [B, L, D] */
    const qi_tensor *gate; /* add_gated's gate rows, NULL: none */
    int64_t gate_stride;
    const qi_tensor *proj; /* add_gated's y; NULL: no add (layer_norm_mod alone) */
    const qi_tensor *shift, *scale;
    int64_t mod_stride;
    float eps;
} qi_ln_mod_src;

typedef struct qi_backend qi_backend;
typedef struct qi_graph qi_graph; /* a recorded op sequence (graph_begin / graph_end) */
typedef struct qi_slot qi_slot;   /* a device buffer host weights are staged into (stage) */

/* What a caller may ask a backend before relying on it (ops->supports):
 * model and pipeline code ask these, never a backend's name. For the
 * weight-taking entries (QI_CAP_WEIGHT, QI_CAP_LINEAR, QI_CAP_CONV2D,
 * QI_CAP_EMBEDDING) `type` is the storage type of the host data handed to
 * `weight` (the file's type): the answer is whether a weight made from such
 * data works in that op, whatever the backend keeps it as (CUDA converts to
 * bf16 at load). The others ignore `type`. What each backend answers is
 * tabled beside its supports function; tests/test_backend_caps.c runs a
 * weight of every type through every weight-taking op to hold it to that. */
typedef enum qi_cap {
    QI_CAP_WEIGHT = 0,     /* `weight` accepts host data of this type */
    QI_CAP_LINEAR,         /* `linear` reads a weight stored as this type */
    QI_CAP_CONV2D,         /* `conv2d` reads a weight stored as this type */
    QI_CAP_EMBEDDING,      /* `embedding` reads a table stored as this type */
    QI_CAP_GRAPHS,         /* graph_begin / graph_end / graph_launch and persistent buffers */
    QI_CAP_RANDOM_WEIGHTS, /* random_weights (benchmarks) */
    QI_CAP_CUDA_RNG,       /* draws torch's CUDA-generator noise on the device (qi_randn_philox_cuda) */
    QI_CAP_COUNT
} qi_cap;

/* Every slot is required unless its group below says "optional" (NULL when a
 * backend lacks them): random_weights, mem_usage, the fused ops, linear_shared,
 * native_stream, and the persistent/graph group, which is all five slots or
 * none. Each constructor checks its table with qi_backend_check_ops.
 *
 * Threads: a backend is used by one thread at a time. Ops, graph_* and the
 * arena calls (tensor, mark, reset) run on the calling thread's device and
 * OpenMP settings: a thread other than the creator calls make_current first.
 * Entry points that allocate, free or copy (weight, persistent, weight_free,
 * upload, download, sync, destroy) select their device themselves and give
 * the caller's back, so freeing from any thread is safe. */
typedef struct qi_backend_ops {
    const char *name; /* for messages and logs only: never compared */
    void (*destroy)(qi_backend *be);
    /* Whether the backend can do `cap` (with weights of storage type `type`
     * where the capability takes one). */
    int (*supports)(const qi_backend *be, qi_cap cap, qi_dtype type);
    /* Makes the backend's device current on the calling thread (a thread that
     * queues work on a backend it did not create calls this first); the CPU
     * backend sets the thread's OpenMP thread count to its own. */
    qi_status (*make_current)(qi_backend *be, qi_error *err);
    /* Optional. The native queue collective libraries order their work on
     * (the CUDA stream); the slot is NULL where there is none (CPU). */
    void *(*native_stream)(qi_backend *be);

    /* ---- memory ---- */
    /* Arena allocation of an activation tensor (contents undefined). */
    qi_status (*tensor)(qi_backend *be, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                        qi_error *err);
    size_t (*mark)(qi_backend *be);            /* arena position */
    void (*reset)(qi_backend *be, size_t mark); /* free everything after mark */
    /* Weights live outside the arena until weight_free / destroy. `host` is a
     * pointer into a file mapping with storage type `dt` (an element type or a
     * GGUF block type: blocks run along ne[ndim-1], which must be a whole
     * number of them); `scale` (NULL: none) says how the stored values become
     * real ones (scaled fp8: per tensor or per output row ne[0]). Every op
     * that reads the weight sees stored · scale. The CPU backend keeps
     * pointing at `host` and `scale->row_scale` (zero copy, the caller keeps
     * both alive); a device backend copies and converts (CUDA: to bf16, the
     * scale applied in float32 before the rounding, block types dequantised
     * on the host). */
    qi_status (*weight)(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                        const void *host, const qi_weight_scale *scale, qi_error *err);
    void (*weight_free)(qi_backend *be, qi_tensor *w);
    /* Host <-> backend copies of float32 data (converted to/from the tensor's
     * dtype; t must be F32/BF16/F16 activations, or I32 with int32 host data). */
    qi_status (*upload)(qi_backend *be, qi_tensor *t, const void *host, qi_error *err);
    qi_status (*download)(qi_backend *be, const qi_tensor *t, void *host, qi_error *err);
    qi_status (*sync)(qi_backend *be, qi_error *err); /* wait for queued work */

    /* ---- dense ---- */
    /* y[M,N] = act(x[M,K] · w[N,K]ᵀ + b[N]); b may be NULL. */
    void (*linear)(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                   qi_act act, qi_tensor *y);
    /* out[n, :] = table[ids[n], :]; ids I32 [N], table [V, D] (a weight, or a
     * host weight from weight_host: the N rows are gathered from host memory
     * in place, the one op that reads a host weight). */
    void (*embedding)(qi_backend *be, const qi_tensor *table, const qi_tensor *ids, qi_tensor *out);

    /* ---- norms ---- */
    /* y = x / sqrt(mean(x²) + eps) · w, per row; w [D] may be NULL. y may alias x. */
    void (*rms_norm)(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps, qi_tensor *y);
    /* y = LN(x) · (1 + scale) + shift. x, y [B, L, D]; shift, scale are rows of
     * a modulation tensor, each [B, D] with row stride `mod_stride` elements
     * (so chunks of a [B, 6D] vector can be passed without copying: data
     * pointer at the chunk, stride 6D). LN has no affine, population variance. */
    void (*layer_norm_mod)(qi_backend *be, const qi_tensor *x, const qi_tensor *shift,
                           const qi_tensor *scale, int64_t mod_stride, float eps, qi_tensor *y);

    /* ---- elementwise ---- */
    /* x[B, L, D] += gate[B, D] (row stride gate_stride) · y[B, L, D]; gate NULL: x += y. */
    void (*add_gated)(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                      const qi_tensor *y);
    /* y = act(x) elementwise; may alias. */
    void (*activate)(qi_backend *be, const qi_tensor *x, qi_act act, qi_tensor *y);
    /* y[M, N] = silu(gate_up[M, 0:N]) · gate_up[M, N:2N] when up == NULL, else
     * y = silu(gate) · up with gate, up [M, N]. */
    void (*silu_mul)(qi_backend *be, const qi_tensor *gate, const qi_tensor *up, qi_tensor *y);
    /* out = a·x + b·y (same shapes; out may alias x or y). */
    void (*axpby)(qi_backend *be, float a, const qi_tensor *x, float b, const qi_tensor *y,
                  qi_tensor *out);
    /* dst rows [dst_row0, +nrows) = src rows [src_row0, +nrows); both seen as
     * [rows, D] with the same D. Used for text/image concatenation. */
    void (*copy_rows)(qi_backend *be, const qi_tensor *src, int64_t src_row0, qi_tensor *dst,
                      int64_t dst_row0, int64_t nrows);

    /* ---- attention ---- */
    /* x [B, L, H, Dh] rotated in place by angles from cos/sin tables
     * [L, Dh/2] (F32, uploaded once per shape). */
    void (*rope)(qi_backend *be, qi_tensor *x, const qi_tensor *cos_tab, const qi_tensor *sin_tab,
                 qi_rope_mode mode);
    /* out[B, Lq, H, Dh] = softmax(q kᵀ · scale + mask) v per head.
     * k, v [B, Lk, Hkv, Dh] with H % Hkv == 0 (GQA: head h reads kv head
     * h / (H/Hkv)). key_mask I32 [B, Lk] (1 keep, 0 drop) or NULL. causal:
     * query i sees keys j <= i + (Lk - Lq). */
    void (*attention)(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                      const qi_tensor *key_mask, int causal, float scale, qi_tensor *out);
    /* Attention inside segments of rows, in one call: seg I32 [S + 1] holds
     * row offsets 0 = seg[0] <= seg[1] <= ... <= seg[S] = L, and rows
     * [seg[s], seg[s+1]) of every batch attend only to keys of those rows:
     * the same as `attention` (no mask, not causal) on each segment's slice.
     * q, out [B, L, H, Dh], k, v [B, L, Hkv, Dh] (GQA as above). For many
     * small windows (the vision tower) in one launch instead of one each.
     * Offsets that break the rule are an error where the backend can see them
     * (CPU); CUDA reads them on the device, never outside [0, L], and leaves
     * rows no segment covers unwritten. */
    void (*attention_segments)(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                               const qi_tensor *seg, float scale, qi_tensor *out);

    /* ---- flow matching ---- */
    /* True CFG with norm rescale, per token over the last dim:
     *   comb = uncond + s·(cond − uncond);  out = comb · ‖cond‖ / ‖comb‖.
     * out may alias cond or uncond (the pipeline combines in place). */
    void (*cfg_combine)(qi_backend *be, const qi_tensor *cond, const qi_tensor *uncond, float s,
                        qi_tensor *out);

    /* ---- VAE (one image, [C, H, W]) ---- */
    /* y[Co, H', W'] = conv2d(x[Ci, H, W], w[Co, Ci, kh, kw]) + b, zero padding
     * `pad` on each side, stride 1. w is F32 or the backend's weight type. */
    void (*conv2d)(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                   int pad, qi_tensor *y);
    /* y[C, 2H, 2W] = nearest 2× upsample of x[C, H, W]. */
    void (*upsample2x)(qi_backend *be, const qi_tensor *x, qi_tensor *y);
    /* y[C, i, j] = x[C, 2i + offset, 2j + offset], offset 0 or 1, y [C, Ho, Wo]
     * with 2·(Ho − 1) + offset < H (same for W). The VAE encoder's stride-2 3×3
     * conv with zero padding (0, 1, 0, 1) is conv2d(pad 1) then offset 1. */
    void (*subsample2x)(qi_backend *be, const qi_tensor *x, int offset, qi_tensor *y);
    /* Per pixel over channels: y = x / max(‖x‖₂, 1e-12) · √C · gamma[C] (+ bias).
     * x, y [C, H, W]. bias may be NULL. y may alias x. */
    void (*channel_rms_norm)(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                             const qi_tensor *bias, qi_tensor *y);
    /* y[W, H] = x[H, W]ᵀ (2-D transpose, e.g. [C, HW] <-> [HW, C]). */
    void (*transpose2d)(qi_backend *be, const qi_tensor *x, qi_tensor *y);

    /* ---- optional (NULL when a backend lacks them) ---- */
    /* Benchmarks: from now on `weight` ignores the host data and fills each
     * weight with seeded uniform random values (±1/√fan_in; never zeros), so
     * the full-size model can be timed from a sparse file with no real weights. */
    qi_status (*random_weights)(qi_backend *be, uint64_t seed, qi_error *err);
    /* Device memory in use now and at its peak, bytes (weights + arena + workspaces). */
    void (*mem_usage)(qi_backend *be, size_t *now, size_t *peak);
    /* How many elements of the activation t (F32/BF16/F16) are NaN or ±Inf,
     * into *count (host). Synchronous: one reduction and one small copy
     * back. Denoising calls it on the latents after each step, so a run that
     * goes non-finite ends with an error naming the step, not a black PNG. */
    qi_status (*count_nonfinite)(qi_backend *be, const qi_tensor *t, int64_t *count, qi_error *err);
    /* The decoded picture x [3, H, W] (F32/BF16/F16 activation) downloaded as
     * 8-bit pixels rgb8 [H, W, 3] in host memory, each byte what io/image.c's
     * qi_rgb_to_u8 makes of x's value as a float32 (clamp(x·0.5 + 0.5, 0, 1)
     * · 255 rounded half to even; NaN → 0), and *nonfinite = how many of x's
     * values are NaN or ±Inf. Synchronous, like download. The VAE decode's
     * last step: a quarter of the bytes of a float32 download, and no pass
     * over the picture on the host (model/vae.c). Takes 3·H·W bytes of the
     * arena for the duration of the call. */
    qi_status (*download_rgb8)(qi_backend *be, const qi_tensor *x, uint8_t *rgb8, int64_t *nonfinite,
                               qi_error *err);

    /* ---- fused ops (NULL when a backend lacks them: model code then
     * composes the plain ops above, with the same result) ---- */
    /* Per-head RMSNorm then RoPE, written into rows of another tensor:
     *   dst[b, dst_row0 + l, h, :] = rope(rms_norm(x[b, l, h, :]) · w, row dst_row0 + l)
     * x [B, L, H, Dh]; dst [B, Ld, H, Dh] with dst_row0 + L <= Ld; w [Dh] or NULL;
     * cos/sin tables F32 [>= dst_row0 + L, Dh/2], indexed by the DESTINATION row
     * (so a joint sequence's tables serve both streams). dst may be x itself
     * (dst_row0 0, same shape). = rms_norm, copy_rows, rope. */
    void (*rms_norm_rope)(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps,
                          const qi_tensor *cos_tab, const qi_tensor *sin_tab, qi_rope_mode mode,
                          qi_tensor *dst, int64_t dst_row0);
    /* y = act(channel_rms_norm(x, gamma, bias)) (see channel_rms_norm); y may alias x. */
    void (*channel_rms_norm_act)(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                                 const qi_tensor *bias, qi_act act, qi_tensor *y);
    /* y = conv2d(upsample ? upsample2x(x) : x, w, b, pad) + res (res NULL: none).
     * res has y's shape and may be y itself (each element is read before it is
     * written); y must not overlap x. The upsampled input is never stored. */
    void (*conv2d_fused)(qi_backend *be, const qi_tensor *x, int upsample, const qi_tensor *w,
                         const qi_tensor *b, int pad, const qi_tensor *res, qi_tensor *y);
    /* add_gated(x, gate, gate_stride, y), then
     * layer_norm_mod(x, shift, scale, mod_stride, eps, out) on the updated x,
     * in one pass. x, y, out [B, L, D]; out must not overlap x or y. */
    void (*add_gated_layer_norm_mod)(qi_backend *be, qi_tensor *x, const qi_tensor *gate,
                                     int64_t gate_stride, const qi_tensor *y, const qi_tensor *shift,
                                     const qi_tensor *scale, int64_t mod_stride, float eps,
                                     qi_tensor *out);

    /* Several linears of ONE input, in one call: for k = 0..n-1 in order,
     *   linear(x, w[k], b[k], act[k], y[k])
     * with results bit-identical to those n calls. It lets a backend prepare
     * x once for all of them (CUDA: the fp8 GEMM quantises x to e4m3 once
     * instead of n times: the attention's q/k/v, the modulation pairs).
     * src NULL: x is given. Else the op first makes x itself, as the op src
     * names would (bit-identical, x written, src->x updated by an add_gated
     * as that op updates it), so a backend can take what it needs of x while
     * writing it (CUDA: the fp8 scale's max |x|, not a pass over x after).
     * b[k] may be NULL; no y[k] may overlap x (or src's tensors). Unlike the
     * fused ops above it may decline: it returns 1 when it queued all of
     * it, 0 when it queued nothing because it has no better way than the
     * plain ops (then the caller makes them: src's op, then the n `linear`
     * calls, with whatever hints it puts between). Optional: NULL where a
     * backend has no use for it (CPU). */
    int (*linear_shared)(qi_backend *be, const qi_tensor *x, const qi_ln_mod_src *src, int n,
                         const qi_tensor *const *w, const qi_tensor *const *b, const qi_act *act,
                         qi_tensor *const *y);

    /* ---- hints (optional: NULL where a backend has no use for them, e.g. the
     * CPU backend) ---- */
    /* w is the weight of a linear the model will queue soon: it names the
     * coming linears in their order, the nearest first, before it queues the
     * current one. A backend that must prepare such a weight before its GEMM
     * (CUDA: a kept fp8/GGUF weight expanded to bf16) may start that now on
     * another queue, after every op queued before this call, overlapping the
     * ops queued after it, or drop the hint (no room). w is one the ops
     * read: a weight or a staged view, not a host weight (weight_host). Only
     * a hint: results are bit-identical with or without it, whatever linear
     * runs next; allowed while recording. */
    void (*prefetch_weight)(qi_backend *be, const qi_tensor *w);

    /* ---- residency under a budget (engine/residency.h; each optional: NULL
     * means weights take their stored bytes, the free memory is unknown, the
     * arena keeps its size) ---- */
    /* Device bytes `weight` would hold for host data of type dt and shape ne
     * (allocation granularity included); *scratch: the device scratch a
     * linear reading such a weight needs besides (one buffer shared by every
     * weight: the largest counts), 0 if none. */
    size_t (*weight_size)(const qi_backend *be, qi_dtype dt, int ndim, const int64_t *ne, size_t *scratch);
    /* Free and total device memory now, bytes. */
    qi_status (*mem_info)(qi_backend *be, size_t *free_bytes, size_t *total_bytes, qi_error *err);
    /* Sizes the buffers that depend on the plan: the activation arena
     * (`arena` bytes; nothing may live in it: mark 0, else QI_ERR_ARG) and the
     * scratch a linear expands a kept (quantised) weight into (`weight_scratch`
     * bytes, fixed from then on; 0: sized by the kept weights as they load,
     * embedding tables included). Recordings read the old buffers: drop them
     * first. On failure the backend has no arena until a reserve succeeds. */
    qi_status (*reserve)(qi_backend *be, size_t arena, size_t weight_scratch, qi_error *err);

    /* ---- streamed weights (all five or none): weights kept in host memory
     * and copied into device slots just before the ops that read them ---- */
    /* As `weight` (the same arguments, the same conversions: what `weight`
     * would keep on the device, kept types as stored), but held in host memory
     * (CUDA: pinned, mapped) where no op reads it but `embedding` (in place)
     * and `stage`. Freed by weight_free. */
    qi_status (*weight_host)(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                             const void *host, const qi_weight_scale *scale, qi_error *err);
    /* A device buffer of `bytes` that host weights are staged into; freed by slot_free. */
    qi_status (*slot_new)(qi_backend *be, size_t bytes, qi_slot **out, qi_error *err);
    void (*slot_free)(qi_backend *be, qi_slot *s);
    /* Queues the copy of host weights src[0..n) into s, each at the next
     * 256-byte boundary, on the backend's copy queue: it starts once every op
     * queued before this call has run (so the slot's previous weights are no
     * longer read) and overlaps the ops queued after it. dst[i] describes
     * src[i]'s copy in the slot. The weights must fit (QI_ERR_ARG otherwise:
     * nothing queued). */
    qi_status (*stage)(qi_backend *be, qi_slot *s, const qi_tensor *src, qi_tensor *dst, int n, qi_error *err);
    /* Ops queued after this call wait for s's last stage to complete. */
    void (*stage_wait)(qi_backend *be, qi_slot *s);
    /* Optional (outside the group): how much host memory weight_host may pin
     * from now on (CUDA: `--pinned`, qi_open_options.pinned_bytes; weights
     * already placed stay). Past it host weights are ordinary memory, staged
     * through the backend's bounce buffers. */
    void (*host_budget)(qi_backend *be, size_t pinned_max);
    /* Optional (outside the group): one line on the weight uploads made so
     * far, for the open's log (CUDA: bytes and weights, seconds reading into
     * the staging and waiting for its copies, allocating; the threads, pread). */
    void (*load_report)(qi_backend *be, char *line, size_t cap);

    /* ---- persistent buffers and recorded op sequences (NULL when a backend
     * lacks them, e.g. the CPU backend: callers then run their ops eagerly) ---- */
    /* A tensor outside the arena of exactly dtype dt (unlike `weight`, nothing
     * is converted; contents undefined), kept until weight_free / destroy. For
     * inputs that must stay at one address across calls, since a recorded
     * graph reads them there (fill with `upload`). */
    qi_status (*persistent)(qi_backend *be, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                            qi_error *err);
    /* Ops queued between graph_begin and graph_end are recorded, not run;
     * graph_launch replays them, queued like one op, on the same memory (the
     * tensors' contents at replay time). Between begin and end only ops and
     * arena bookkeeping (tensor, mark, reset) may be called: no upload,
     * download, sync, weight, persistent or weight_free. Run the sequence
     * once before recording it, so lazy set-up (GEMM plans, kernel
     * attributes) happens outside. graph_end also ends a recording after a
     * failure (then *out is NULL and the op's error is returned). */
    qi_status (*graph_begin)(qi_backend *be, qi_error *err);
    qi_status (*graph_end)(qi_backend *be, qi_graph **out, qi_error *err);
    qi_status (*graph_launch)(qi_backend *be, qi_graph *g, qi_error *err);
    void (*graph_free)(qi_backend *be, qi_graph *g); /* g may be NULL */
} qi_backend_ops;

struct qi_backend {
    const qi_backend_ops *ops;
    qi_dtype act_dtype; /* activation dtype: F32 on CPU, BF16 on CUDA */
    void *impl;
    size_t arena_bytes; /* the activation arena's capacity (what `tensor` can hand out in all): requests are
                           checked against it before any work */
};

/* Backend constructors. */
qi_status qi_backend_cpu_create(int threads, size_t arena_bytes, qi_backend **out, qi_error *err);
/* Available only in builds with CUDA (QI_WITH_CUDA); otherwise returns
 * QI_ERR_UNSUPPORTED with the rebuild hint. On success `device` is the
 * calling thread's current CUDA device (the creator needs no make_current). */
qi_status qi_backend_cuda_create(int device, size_t arena_bytes, qi_backend **out, qi_error *err);
/* A backend by device name: "cpu", "cuda" (= cuda:0) or "cuda:N". `threads`
 * is the CPU backend's thread count (0 = all cores); arena_bytes 0 = default.
 * The error names the device string and the accepted forms. */
qi_status qi_backend_create(const char *device, int threads, size_t arena_bytes, qi_backend **out,
                            qi_error *err);
/* Whether be can do cap (with weight type `type` where it applies); 0 for a
 * NULL backend. */
int qi_backend_supports(const qi_backend *be, qi_cap cap, qi_dtype type);
/* Checks that an op table sets every required slot (see qi_backend_ops) and
 * all or none of the persistent/graph group; the error names the backend and
 * the first empty slot. Every constructor calls it before building anything. */
qi_status qi_backend_check_ops(const qi_backend_ops *ops, qi_error *err);

/* Convenience: an activation tensor of the backend's activation dtype. */
qi_status qi_be_act(qi_backend *be, qi_tensor *t, int ndim, const int64_t *ne, qi_error *err);
qi_status qi_be_act2(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, qi_error *err);
qi_status qi_be_act3(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, qi_error *err);
qi_status qi_be_act4(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                     qi_error *err);

#endif

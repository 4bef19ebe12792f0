/*
 * cuda_backend.cu — the CUDA backend's frame: creation, the activation arena,
 * weights (converted to bf16 on upload: cuda_upload.cu), host <-> device copies, the sticky
 * error, `linear` (its GEMMs: cuda_gemm.cu), and the op table.
 *
 * Everything is queued on one stream per backend. Ops return nothing, so a
 * failing op records its message in the backend and `sync` returns it.
 * Nothing is allocated on the device after creation except weights and
 * persistent buffers: the arena, cuBLASLt's workspace and the scratch buffer
 * are made once, so a denoising step can be captured as a CUDA graph (the
 * op table's graph_* ops, used by pipeline.c).
 *
 * Devices and threads: the backend owns its device index. Creation leaves
 * that device current on the creating thread. Entry points that allocate,
 * free or copy (weight, persistent, weight_free, upload, download, sync,
 * destroy) select the device themselves and give the caller's back, so they
 * work from any thread whatever device is current there. Ops and graph_*
 * launch on the current device: another thread calls make_current first.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_select.h"

extern "C" {
#include "backend/cuda/cuda_backend.h"
#include "base/types.h" /* qi_row_bytes, qi_dtype_is_float */
}
#include "backend/cuda/cuda_dequant.cuh" /* qc_kept_type */

#define LT_WORKSPACE_BYTES ((size_t)64 << 20)
#define SCRATCH_BYTES ((size_t)512 << 20)
#define STAGING_BYTES ((size_t)64 << 20)

/* ---- errors ------------------------------------------------------------- */

void qc_fail(cuda_impl *c, qi_status st, const char *fmt, ...) {
    if (c->err_status != QI_OK) return;
    c->err_status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    va_end(ap);
}

int qc_check_launch(cuda_impl *c, const char *op) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return 0;
    qc_fail(c, QI_ERR_BACKEND, "cuda backend: %s: %s", op, cudaGetErrorString(e));
    return 1;
}

/* ---- memory --------------------------------------------------------------- */

static void set_shape(qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne) {
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    t->scale = 1.0f;
    for (int i = 0; i < ndim; i++) t->ne[i] = ne[i];
}

static qi_status cuda_tensor(qi_backend *be, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                             qi_error *err) {
    cuda_impl *c = cuda_of(be);
    if (ndim < 1 || ndim > QI_MAX_DIMS)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: tensor with %d dims (1..%d)", ndim, QI_MAX_DIMS);
    set_shape(t, dt, ndim, ne);
    size_t bytes = (qi_nbytes(t) + 255) & ~(size_t)255; /* 256-byte aligned: cuBLASLt's best */
    if (c->arena_used + bytes > c->arena_cap) {
        char shape[128];
        return qi_fail(err, QI_ERR_NOMEM,
                       "cuda backend: activation arena full (%zu MiB) allocating %s %s; create the "
                       "backend with a larger arena or use a smaller image",
                       c->arena_cap >> 20, qi_dtype_name(dt), qi_shape_str(t, shape, sizeof shape));
    }
    t->data = c->arena + c->arena_used;
    c->arena_used += bytes;
    if (c->arena_used > c->arena_peak) c->arena_peak = c->arena_used;
    return QI_OK;
}

static size_t cuda_mark(qi_backend *be) { return cuda_of(be)->arena_used; }

static void cuda_reset(qi_backend *be, size_t mark) {
    cuda_impl *c = cuda_of(be);
    if (mark <= c->arena_used) c->arena_used = mark;
}

/* Benchmark weights: uniform in ±1/√fan_in for matrices (fan_in = numel / rows),
 * 1 ± 0.1 for vectors (norm scales, biases), from a counter-based hash of
 * (seed, weight index, element): reproducible, never zero, no host traffic. */
__global__ void random_bf16_kernel(__nv_bfloat16 *out, size_t n, uint64_t key, float center, float half_width) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = key + i * 0x9E3779B97F4A7C15ull; /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f; /* [-1, 1) */
        out[i] = __float2bfloat16(center + half_width * u);
    }
}

/* Elements [i0, i0 + n) of weight w's random values into dev[0..n): the
 * same values whether w is made whole or in pieces (the hash's key moves by
 * i0 steps). key: from random_key, once per weight. */
static qi_status random_piece(cuda_impl *c, const qi_tensor *w, uint64_t key, size_t i0, size_t n, void *dev,
                              qi_error *err) {
    size_t all = (size_t)qi_numel(w);
    int64_t rows = w->ndim >= 2 ? w->ne[0] : 1;
    float fan_in = (float)(all / (size_t)(rows > 0 ? rows : 1));
    float center = w->ndim >= 2 ? 0.0f : 1.0f, half = w->ndim >= 2 ? 1.0f / sqrtf(fan_in > 0 ? fan_in : 1) : 0.1f;
    int blocks = (int)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
    if (blocks < 1) blocks = 1;
    random_bf16_kernel<<<blocks, 256, 0, c->stream>>>((__nv_bfloat16 *)dev, n, key + i0 * 0x9E3779B97F4A7C15ull,
                                                       center, half);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "random weights");
}

/* Each weight's own hash key, in the order weights are made. */
static uint64_t random_key(cuda_impl *c) {
    return c->random_seed * 0x2545F4914F6CDD1Dull + (++c->random_count) * 0x9E3779B97F4A7C15ull;
}

static qi_status random_fill(cuda_impl *c, const qi_tensor *w, void *dev, qi_error *err) {
    return random_piece(c, w, random_key(c), 0, (size_t)qi_numel(w), dev, err);
}

static qi_status cuda_random_weights(qi_backend *be, uint64_t seed, qi_error *err) {
    (void)err;
    cuda_of(be)->random_seed = seed ? seed : 1;
    return QI_OK;
}

static void cuda_mem_usage(qi_backend *be, size_t *now, size_t *peak) {
    cuda_impl *c = cuda_of(be);
    size_t fixed = c->scratch_bytes + c->lt_workspace_bytes;
    if (now) *now = c->weight_bytes + c->arena_used + fixed;
    if (peak) *peak = c->weight_peak + c->arena_peak + fixed;
}

/* The type a weight made from host data of type dt is kept as on the device:
 * a 2-D fp8 or GGUF block weight as it is in the file (with its scale:
 * cuda_kept.cu; linear and embedding read it), every other float type as
 * BF16 (converted on the host, the scale applied in float32 first), I32 as
 * it is; -1 when `weight` refuses dt. */
static int weight_store_type(const cuda_impl *c, qi_dtype dt, int ndim) {
    if (dt == QI_I32) return QI_I32;
    if (!qi_dtype_is_float(dt)) return -1;
    return ndim == 2 && qc_kept_type(dt) && !(c && c->dequant_at_load) ? (int)dt : QI_BF16;
}

/* Frees the kept-weight scratch once no queued work reads or writes it. */
static void drop_wscratch(cuda_impl *c) {
    qc_wbuf_settle(c, 1);
    cudaStreamSynchronize(c->stream);
    cudaFree(c->wscratch);
    c->weight_bytes -= c->wscratch_bytes;
    c->wscratch = NULL;
    c->wscratch_bytes = 0;
    qc_wbuf_layout(c);
}

/* Grows the kept-weight scratch so that each of its buffers holds `elems`
 * bf16 values (during load). */
static qi_status ensure_wscratch(cuda_impl *c, size_t elems, qi_error *err) {
    size_t each = (elems * 2 + 255) & ~(size_t)255, need = each * (size_t)c->wbuf_count;
    if (need <= c->wscratch_bytes) return QI_OK;
    drop_wscratch(c);
    cudaError_t e = cudaMalloc(&c->wscratch, need);
    if (e != cudaSuccess) {
        c->wscratch = NULL;
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: no device memory for the %zu MiB bf16 scratch that "
                       "quantised weights are expanded into (%d buffer%s; unset QI_CUDA_KEPT_OVERLAP keeps one) "
                       "(%zu MiB of weights already held)", need >> 20, c->wbuf_count, c->wbuf_count > 1 ? "s" : "",
                       c->weight_bytes >> 20);
    }
    c->wscratch_bytes = need;
    c->weight_bytes += need;
    if (c->weight_bytes > c->weight_peak) c->weight_peak = c->weight_bytes;
    qc_wbuf_layout(c);
    return QI_OK;
}

/* Benchmarks: seeded random contents of the kept weight at w->data (on the
 * device) from `key`; an fp8 weight gets the per-tensor scale that sizes its
 * values (it depends on the type and the row length only). */
static qi_status kept_random_keyed(cuda_impl *c, qi_tensor *w, uint64_t key, qi_error *err) {
    float s = 1.0f;
    if (qc_random_kept(c, w, key, &s)) {
        qi_status st = c->err_status;
        c->err_status = QI_OK;
        return qi_fail(err, st ? st : QI_ERR_BACKEND, "%s", c->err_msg);
    }
    if (s != 1.0f) {
        w->scale_form = QI_SCALE_TENSOR;
        w->scale = s;
    }
    return QI_OK;
}

static qi_status kept_random(cuda_impl *c, qi_tensor *w, qi_error *err) {
    return kept_random_keyed(c, w, random_key(c), err);
}

/* A kept weight's scale beside it: per tensor in the struct, per row a
 * device array of ne[0] floats (freed with the weight, wherever its bytes are). */
static qi_status kept_scale(cuda_impl *c, qi_tensor *w, const qi_weight_scale *scale, qi_error *err) {
    if (!scale || scale->form == QI_SCALE_NONE) return QI_OK;
    w->scale_form = scale->form;
    if (scale->form == QI_SCALE_TENSOR) {
        w->scale = scale->scale;
        return QI_OK;
    }
    float *rs = NULL;
    size_t rs_bytes = (size_t)w->ne[0] * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&rs, rs_bytes);
    if (e == cudaSuccess) e = cudaMemcpy(rs, scale->row_scale, rs_bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cudaFree(rs);
        w->scale_form = QI_SCALE_NONE;
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: no device memory for the %lld row scales of a %s weight",
                       (long long)w->ne[0], qi_dtype_name(w->dtype));
    }
    w->row_scale = rs;
    c->weight_bytes += rs_bytes;
    return QI_OK;
}

/* What `weight` and `weight_host` start with: the checks, w described as
 * the device keeps it (set_shape: bf16 has the scale applied, no scale
 * left), and in *sc how converting to that type scales. */
static qi_status weight_prepare(const cuda_impl *c, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                                const qi_weight_scale *scale, convert_scale *sc, qi_error *err) {
    memset(w, 0, sizeof *w);
    if (weight_store_type(c, dt, ndim) < 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "cuda backend: weights of type %s are not supported "
                       "(F32, F16, BF16, F8_E4M3, F8_E5M2, Q4_0 … Q6_K or I32)", qi_dtype_name(dt));
    qi_dtype dev_dt = (qi_dtype)weight_store_type(c, dt, ndim);
    if (ndim < 1 || ndim > QI_MAX_DIMS)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: weight with %d dims (1..%d)", ndim, QI_MAX_DIMS);
    if (qi_row_bytes(dt, ne[ndim - 1]) < 0)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: a %s weight whose last dim %lld is not a whole number "
                       "of blocks", qi_dtype_name(dt), (long long)ne[ndim - 1]);
    *sc = qc_no_scale;
    if (scale && scale->form != QI_SCALE_NONE) {
        if (scale->form == QI_SCALE_ROW && !scale->row_scale)
            return qi_fail(err, QI_ERR_ARG, "cuda backend: a per-row scale without its values");
        sc->form = scale->form;
        sc->scale = scale->scale;
        sc->row_scale = scale->row_scale;
        sc->row_len = 1;
        for (int i = 1; i < ndim; i++) sc->row_len *= ne[i]; /* rows are ne[0] */
        if (sc->row_len < 1) sc->row_len = 1;
    }
    set_shape(w, dev_dt, ndim, ne);
    return QI_OK;
}

/* The first part of `weight` (under load_mu): the checks, the kept-weight
 * scratch, the device memory, a lane. */
static qi_status weight_begin(cuda_impl *c, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                              const qi_weight_scale *scale, convert_scale *sc, void **dev, int *lane,
                              qi_error *err) {
    qi_status st = weight_prepare(c, w, dt, ndim, ne, scale, sc, err);
    if (st != QI_OK) return st;
    size_t n = (size_t)qi_numel(w), bytes = qi_nbytes(w);
    qc_wbuf_settle(c, 1); /* what the buffers hold is named by weight addresses: a new weight may reuse one */
    if (qc_kept_type(w->dtype) && !c->wscratch_fixed && (st = ensure_wscratch(c, n, err)) != QI_OK) return st;
    double t0 = qi_now_s();
    cudaError_t e = cudaMalloc(dev, bytes ? bytes : 1);
    c->alloc_s += qi_now_s() - t0;
    c->alloc_count++;
    if (e != cudaSuccess) {
        char shape[128];
        *dev = NULL;
        qi_shape_str(w, shape, sizeof shape);
        memset(w, 0, sizeof *w);
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: no device memory for weight %s %s (%zu MiB; "
                       "%zu MiB of weights already held)", qi_dtype_name(dt), shape, bytes >> 20,
                       c->weight_bytes >> 20);
    }
    if ((st = qc_lane_take(c, lane, err)) != QI_OK) {
        cudaFree(*dev);
        *dev = NULL;
        memset(w, 0, sizeof *w);
    }
    return st;
}

/* A weight on the device. Two threads may make weights at once: the host
 * conversion and the copy of each run outside load_mu on its own lane, so
 * one load's reading and converting overlaps the other's. Random (benchmark)
 * contents are made under the lock, in the order weights are made. */
static qi_status weight_on_device(cuda_impl *c, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                                  const void *host, const qi_weight_scale *scale, qi_error *err) {
    convert_scale sc;
    void *dev = NULL;
    int lane = 0;
    pthread_mutex_lock(&c->load_mu);
    qi_status st = weight_begin(c, w, dt, ndim, ne, scale, &sc, &dev, &lane, err);
    pthread_mutex_unlock(&c->load_mu);
    if (st != QI_OK) return st;
    qi_dtype dev_dt = w->dtype;
    int kept = qc_kept_type(dev_dt), random = c->random_seed && (kept || dev_dt == QI_BF16);
    size_t n = (size_t)qi_numel(w), bytes = qi_nbytes(w);
    if (!random) /* a kept weight: its stored bytes as they are */
        st = kept ? qc_lane_upload(c, qc_lane_of(c, lane), dev, QI_U8, host, QI_U8, bytes, &qc_no_scale, err)
                  : qc_lane_upload(c, qc_lane_of(c, lane), dev, dev_dt, host, dt, n, &sc, err);
    pthread_mutex_lock(&c->load_mu);
    qi_status gs = qc_lane_give(c, lane, err);
    if (st == QI_OK) st = gs;
    w->data = dev;
    if (st == QI_OK && random) st = kept ? kept_random(c, w, err) : random_fill(c, w, dev, err);
    else if (st == QI_OK && kept) st = kept_scale(c, w, scale, err);
    if (st != QI_OK) {
        cudaFree(dev); /* waits for the copies queued into it */
        memset(w, 0, sizeof *w);
    } else {
        c->weight_bytes += bytes;
        if (c->weight_bytes > c->weight_peak) c->weight_peak = c->weight_bytes;
        c->kept_weights += kept;
        qc_conv_weight_made(c, w);
    }
    pthread_mutex_unlock(&c->load_mu);
    return st;
}

static qi_status cuda_weight(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                             const void *host, const qi_weight_scale *scale, qi_error *err) {
    int prev = device_enter(cuda_of(be));
    qi_status st = weight_on_device(cuda_of(be), w, dt, ndim, ne, host, scale, err);
    device_leave(prev);
    return st;
}

/* A device buffer outside the arena, dtype as asked (F32 RoPE tables stay
 * F32), freed by weight_free; counted with the weights. */
static qi_status cuda_persistent(qi_backend *be, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                                 qi_error *err) {
    cuda_impl *c = cuda_of(be);
    if (ndim < 1 || ndim > QI_MAX_DIMS)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: persistent tensor with %d dims (1..%d)", ndim, QI_MAX_DIMS);
    set_shape(t, dt, ndim, ne);
    size_t bytes = qi_nbytes(t);
    int prev = device_enter(c);
    cudaError_t e = cudaMalloc(&t->data, bytes ? bytes : 1);
    device_leave(prev);
    if (e != cudaSuccess) {
        char shape[128];
        t->data = NULL;
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: no device memory for a persistent %s %s tensor (%zu "
                       "bytes): %s", qi_dtype_name(dt), qi_shape_str(t, shape, sizeof shape), bytes,
                       cudaGetErrorString(e));
    }
    c->weight_bytes += bytes;
    if (c->weight_bytes > c->weight_peak) c->weight_peak = c->weight_bytes;
    return QI_OK;
}

static void cuda_weight_free(qi_backend *be, qi_tensor *w) {
    cuda_impl *c = cuda_of(be);
    if (!w->data) return;
    int prev = device_enter(c);
    pthread_mutex_lock(&c->load_mu); /* a failed load frees its weights while another load makes some */
    qc_wbuf_settle(c, 1); /* a prefetched expansion may read it; its address may come back as another weight's */
    cudaStreamSynchronize(c->stream); /* queued work may still read it */
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream); /* or a queued stage */
    qc_conv_weight_freed(c, w->data); /* its conv layout, if it has one (queued work is done) */
    size_t bytes = qi_nbytes(w);
    if (qc_host_kind(c, w->data) >= 0) { /* a host weight (weight_host) */
        qc_host_free(c, w->data);
        c->host_bytes = c->host_bytes >= bytes ? c->host_bytes - bytes : 0;
        bytes = 0;
    } else {
        cudaFree(w->data);
    }
    if (w->scale_form == QI_SCALE_ROW && w->row_scale) { /* a kept weight's row scales */
        cudaFree((void *)w->row_scale);
        bytes += (size_t)w->ne[0] * sizeof(float);
        w->row_scale = NULL;
    }
    if (qc_kept_type(w->dtype) && w->ndim == 2 && --c->kept_weights == 0 && c->wscratch && !c->wscratch_fixed)
        drop_wscratch(c); /* the last kept weight is gone: so is its scratch */
    c->weight_bytes = c->weight_bytes >= bytes ? c->weight_bytes - bytes : 0;
    pthread_mutex_unlock(&c->load_mu);
    device_leave(prev);
    w->data = NULL;
}

/* ---- residency: sizes, free memory, the plan's buffers ------------------------------- */

/* What cudaMalloc takes for a buffer: large ones whole 2 MiB pages. */
static size_t alloc_rounded(size_t bytes) {
    const size_t page = (size_t)2 << 20;
    return bytes >= page / 2 ? (bytes + page - 1) / page * page : (bytes + 511) & ~(size_t)511;
}

static size_t cuda_weight_size(const qi_backend *be, qi_dtype dt, int ndim, const int64_t *ne, size_t *scratch) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    *scratch = 0;
    int st = weight_store_type(c, dt, ndim);
    if (st < 0 || ndim < 1 || ndim > QI_MAX_DIMS) return 0;
    int64_t rows = 1, row = qi_row_bytes((qi_dtype)st, ne[ndim - 1]);
    for (int i = 0; i + 1 < ndim; i++) rows *= ne[i];
    if (row < 0) return 0;
    size_t bytes = alloc_rounded((size_t)(rows * row));
    if (qc_kept_type((qi_dtype)st)) { /* one buffer per wbuf (two with the overlap) */
        *scratch = alloc_rounded((size_t)(rows * ne[ndim - 1]) * 2) * (size_t)(c->wbuf_count > 1 ? c->wbuf_count : 1);
        if (dt == QI_F8_E4M3 || dt == QI_F8_E5M2) bytes += alloc_rounded((size_t)rows * sizeof(float)); /* row scales */
    }
    if (ndim == 4) bytes += alloc_rounded(qc_conv_layout_bytes(c, (qi_dtype)st, ne)); /* made on first use */
    return bytes;
}

static qi_status cuda_mem_info(qi_backend *be, size_t *free_bytes, size_t *total_bytes, qi_error *err) {
    int prev = device_enter(cuda_of(be));
    cudaError_t e = cudaMemGetInfo(free_bytes, total_bytes);
    device_leave(prev);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "cudaMemGetInfo");
}

/* The arena, and the kept-weight scratch when the plan fixes it (else it
 * keeps growing with the kept weights as they load). */
static qi_status reserve_on_device(cuda_impl *c, qi_backend *be, size_t arena, size_t weight_scratch, qi_error *err) {
    if (c->arena_used)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: reserve with %zu bytes of the arena in use", c->arena_used);
    cudaStreamSynchronize(c->stream);
    cudaFree(c->arena);
    c->arena = NULL;
    c->arena_cap = be->arena_bytes = 0;
    cudaError_t e = cudaMalloc((void **)&c->arena, arena ? arena : 1);
    if (e != cudaSuccess) {
        c->arena = NULL;
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: cannot allocate a %zu MiB activation arena on device %d: %s",
                       arena >> 20, c->device, cudaGetErrorString(e));
    }
    c->arena_cap = be->arena_bytes = arena;
    c->arena_peak = 0;
    if (!weight_scratch) return QI_OK;
    c->wscratch_fixed = 0;
    if (c->wscratch) drop_wscratch(c); /* the old one, sized by the weights so far */
    /* weight_scratch is what weight_size said: every buffer's bytes together */
    qi_status st = ensure_wscratch(c, weight_scratch / (size_t)c->wbuf_count / 2, err);
    c->wscratch_fixed = st == QI_OK;
    return st;
}

static qi_status cuda_reserve(qi_backend *be, size_t arena, size_t weight_scratch, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    int prev = device_enter(c);
    qi_status st = reserve_on_device(c, be, arena, weight_scratch, err);
    device_leave(prev);
    return st;
}

/* ---- streamed weights: pinned host copies staged into device slots -------------------- */

/* A kept (2-D) weight larger than the scratch — a Q8_0 embedding table is
 * 0.54 GiB — made whole rows at a time in the scratch, each piece from its own
 * key, and copied back in stream order as the bf16 pieces are: no device
 * memory outside the plan at --vram 3G for a quantised text encoder either. */
static qi_status random_host_rows(cuda_impl *c, qi_tensor *w, void *host, qi_error *err) {
    size_t row = (size_t)qi_row_bytes(w->dtype, w->ne[1]);
    int64_t rows = w->ne[0], per = (int64_t)(c->scratch_bytes / row);
    uint64_t key = random_key(c);
    for (int64_t r0 = 0; r0 < rows; r0 += per) {
        qi_tensor piece = *w;
        piece.ne[0] = rows - r0 < per ? rows - r0 : per;
        piece.data = c->scratch;
        qi_status st = kept_random_keyed(c, &piece, key + (uint64_t)r0 * 0x9E3779B97F4A7C15ull, err);
        if (st != QI_OK) return st;
        w->scale_form = piece.scale_form;
        w->scale = piece.scale;
        cudaError_t e = cudaMemcpyAsync((char *)host + (size_t)r0 * row, c->scratch, (size_t)piece.ne[0] * row,
                                        cudaMemcpyDeviceToHost, c->stream);
        if (e != cudaSuccess) return cuda_err(err, e, "random host weight (copy)");
    }
    return QI_OK;
}

/* Benchmarks: the random contents `weight` would make, made on the device and
 * copied into the host copy at `host`. They are made in the fixed scratch
 * (no allocation, no sync): the copies back are queued on the stream, so the
 * next weight's kernel waits for this one's copy by stream order alone, and
 * pinned host copies are written asynchronously (a stage or embedding reading
 * them is ordered after on the GPU; weight_free syncs first). A bf16 weight
 * larger than the scratch (an embedding table) is made in scratch-sized
 * pieces, so no device memory outside the plan is needed even at --vram 3G;
 * a kept one that large in pieces of whole rows (random_host_rows). A
 * pageable destination makes each copy synchronous by itself. */
static qi_status random_host(cuda_impl *c, qi_tensor *w, void *host, qi_error *err) {
    size_t bytes = qi_nbytes(w);
    void *tmp = c->scratch;
    cudaError_t e = cudaSuccess;
    if (bytes > c->scratch_bytes && w->dtype == QI_BF16) {
        uint64_t key = random_key(c);
        size_t n = (size_t)qi_numel(w), piece = c->scratch_bytes / sizeof(uint16_t);
        qi_status st = QI_OK;
        for (size_t i0 = 0; i0 < n && st == QI_OK && e == cudaSuccess; i0 += piece) {
            size_t m = n - i0 < piece ? n - i0 : piece;
            st = random_piece(c, w, key, i0, m, c->scratch, err);
            if (st == QI_OK)
                e = cudaMemcpyAsync((char *)host + i0 * sizeof(uint16_t), c->scratch, m * sizeof(uint16_t),
                                    cudaMemcpyDeviceToHost, c->stream);
        }
        return st != QI_OK || e == cudaSuccess ? st : cuda_err(err, e, "random host weight (copy)");
    }
    if (bytes > c->scratch_bytes && qc_kept_type(w->dtype) && w->ndim == 2 &&
        (size_t)qi_row_bytes(w->dtype, w->ne[1]) <= c->scratch_bytes)
        return random_host_rows(c, w, host, err);
    if (bytes > c->scratch_bytes && (e = cudaMalloc(&tmp, bytes)) != cudaSuccess)
        return cuda_err(err, e, "random host weight (a device buffer larger than the scratch)");
    qi_tensor d = *w;
    d.data = tmp;
    qi_status st = qc_kept_type(w->dtype) ? kept_random(c, &d, err) : random_fill(c, w, tmp, err);
    w->scale_form = d.scale_form;
    w->scale = d.scale;
    if (st == QI_OK) e = cudaMemcpyAsync(host, tmp, bytes, cudaMemcpyDeviceToHost, c->stream);
    if (st == QI_OK && e == cudaSuccess && tmp != c->scratch) e = cudaStreamSynchronize(c->stream);
    if (st == QI_OK && e != cudaSuccess) st = cuda_err(err, e, "random host weight (copy)");
    if (tmp != c->scratch) cudaFree(tmp);
    return st;
}

static qi_status weight_in_host(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                                const void *host, const qi_weight_scale *scale, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    convert_scale sc;
    qi_status st = weight_prepare(c, w, dt, ndim, ne, scale, &sc, err);
    if (st != QI_OK) return st;
    int kept = qc_kept_type(w->dtype), pinned = 0;
    size_t n = (size_t)qi_numel(w), bytes = qi_nbytes(w);
    qc_wbuf_settle(c, 1);
    if (kept && !c->wscratch_fixed && (st = ensure_wscratch(c, n, err)) != QI_OK) return st;
    void *mem = NULL;
    if ((st = qc_host_alloc(c, bytes, &mem, &pinned, err)) != QI_OK) {
        char shape[128], msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        qi_shape_str(w, shape, sizeof shape);
        memset(w, 0, sizeof *w);
        return qi_fail(err, st, "cuda backend: streamed weight %s %s (%zu MiB): %s", qi_dtype_name(dt), shape,
                       bytes >> 20, msg);
    }
    if (c->random_seed && (kept || w->dtype == QI_BF16)) {
        st = random_host(c, w, mem, err);
    } else if (kept) {
        qc_convert(c, mem, QI_U8, host, QI_U8, bytes, &qc_no_scale, 0); /* the stored bytes */
        st = kept_scale(c, w, scale, err);
    } else {
        qc_convert(c, mem, w->dtype, host, dt, n, &sc, 0);
    }
    if (st != QI_OK) {
        cudaStreamSynchronize(c->stream); /* a queued copy may still write it */
        qc_host_free(c, mem);
        memset(w, 0, sizeof *w);
        return st;
    }
    w->data = mem;
    c->host_bytes += bytes;
    c->kept_weights += kept;
    return QI_OK;
}

void qc_host_copy(const cuda_impl *c, void *dst, const void *src, size_t bytes) {
    qc_convert(c, dst, QI_U8, src, QI_U8, bytes, &qc_no_scale, 0);
}

static qi_status cuda_weight_host(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                                  const void *host, const qi_weight_scale *scale, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    int prev = device_enter(c);
    pthread_mutex_lock(&c->load_mu); /* whole: the host pool and the counters are shared */
    qi_status st = weight_in_host(be, w, dt, ndim, ne, host, scale, err);
    pthread_mutex_unlock(&c->load_mu);
    device_leave(prev);
    return st;
}

static int host_transferable(qi_dtype dt) {
    return dt == QI_F32 || dt == QI_BF16 || dt == QI_F16 || dt == QI_I32;
}

static qi_status cuda_upload(qi_backend *be, qi_tensor *t, const void *host, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    if (!host_transferable(t->dtype))
        return qi_fail(err, QI_ERR_ARG, "cuda backend: upload into a %s tensor (F32/BF16/F16/I32 only)",
                       qi_dtype_name(t->dtype));
    qi_dtype src_dt = t->dtype == QI_I32 ? QI_I32 : QI_F32;
    int prev = device_enter(c), lane = 0;
    pthread_mutex_lock(&c->load_mu); /* a free lane: a load on another thread may hold lane 0 */
    qi_status st = qc_lane_take(c, &lane, err);
    pthread_mutex_unlock(&c->load_mu);
    if (st == QI_OK) {
        st = qc_lane_upload(c, qc_lane_of(c, lane), t->data, t->dtype, host, src_dt, (size_t)qi_numel(t),
                            &qc_no_scale, err);
        pthread_mutex_lock(&c->load_mu);
        qi_status gs = qc_lane_give(c, lane, err);
        pthread_mutex_unlock(&c->load_mu);
        if (st == QI_OK) st = gs;
    }
    device_leave(prev);
    return st;
}

static qi_status download_on_device(qi_backend *be, const qi_tensor *t, void *host, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    if (!host_transferable(t->dtype))
        return qi_fail(err, QI_ERR_ARG, "cuda backend: download of a %s tensor (F32/BF16/F16/I32 only)",
                       qi_dtype_name(t->dtype));
    if (c->err_status != QI_OK) { /* the data would be garbage: report why */
        qi_status st = c->err_status; /* the op's own status: out of memory stays QI_ERR_NOMEM */
        qi_fail(err, st, "%s", c->err_msg);
        c->err_status = QI_OK;
        return qi_fail_ctx(err, st, "cuda backend: download after a failed op");
    }
    size_t n = (size_t)qi_numel(t), esz = qi_dtype_size(t->dtype);
    qi_dtype host_dt = t->dtype == QI_I32 ? QI_I32 : QI_F32;
    size_t chunk = c->staging_bytes / 4;
    cudaError_t e;
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
        size_t m = n - i0 < chunk ? n - i0 : chunk;
        if ((e = cudaMemcpyAsync(c->staging[0], (const char *)t->data + i0 * esz, m * esz,
                                 cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess)
            return cuda_err(err, e, "download (copy)");
        if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess) return cuda_err(err, e, "download");
        /* over the load threads past 4 MiB: a decoded 1024² picture is 12.6 MB of float32 */
        qc_convert(c, (char *)host + i0 * qi_dtype_size(host_dt), host_dt, c->staging[0], t->dtype, m,
                   &qc_no_scale, 0);
    }
    return QI_OK;
}

static qi_status cuda_download(qi_backend *be, const qi_tensor *t, void *host, qi_error *err) {
    int prev = device_enter(cuda_of(be));
    qi_status st = download_on_device(be, t, host, err);
    device_leave(prev);
    return st;
}

/* Counts elements whose exponent bits are all ones (NaN or ±Inf), `mask`
 * being the type's exponent field; each thread sums a grid-stride slice and
 * one atomic per warp adds it to *count. Element width W: 2 or 4 bytes. */
template <typename U>
__global__ void count_nonfinite_k(const U *x, size_t n, U mask, unsigned long long *count) {
    unsigned long long c = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        c += (x[i] & mask) == mask;
    for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0 && c) atomicAdd(count, c);
}

/* One reduction over t and an 8-byte copy back (synchronous): the per-step
 * latents check of denoise.c. */
static qi_status cuda_count_nonfinite(qi_backend *be, const qi_tensor *t, int64_t *count, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    *count = 0;
    if (t->dtype != QI_F32 && t->dtype != QI_BF16 && t->dtype != QI_F16)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: count_nonfinite of a %s tensor (F32/BF16/F16 only)",
                       qi_dtype_name(t->dtype));
    int prev = device_enter(c);
    cudaError_t e = cudaSuccess;
    if (!c->nonfinite_count) e = cudaMalloc((void **)&c->nonfinite_count, sizeof *c->nonfinite_count);
    if (e == cudaSuccess) e = cudaMemsetAsync(c->nonfinite_count, 0, sizeof *c->nonfinite_count, c->stream);
    size_t n = (size_t)qi_numel(t);
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (blocks > (unsigned)c->sm_count * 8) blocks = (unsigned)c->sm_count * 8;
    if (blocks == 0) blocks = 1;
    if (e == cudaSuccess) {
        if (t->dtype == QI_F32)
            count_nonfinite_k<uint32_t><<<blocks, 256, 0, c->stream>>>((const uint32_t *)t->data, n, 0x7f800000u,
                                                                     c->nonfinite_count);
        else
            count_nonfinite_k<uint16_t><<<blocks, 256, 0, c->stream>>>(
                (const uint16_t *)t->data, n, (uint16_t)(t->dtype == QI_BF16 ? 0x7f80u : 0x7c00u), c->nonfinite_count);
        e = cudaGetLastError();
    }
    unsigned long long h = 0;
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(&h, c->nonfinite_count, sizeof h, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    device_leave(prev);
    if (e != cudaSuccess) return cuda_err(err, e, "count_nonfinite");
    *count = (int64_t)h;
    return QI_OK;
}

/* io/image.c's qi_rgb_to_u8 of one value, in the same float32 steps: x·0.5
 * is exact, so the fused multiply-add rounds as the host's two operations;
 * the comparisons let NaN through (as the host's do) and the multiply by 255
 * is kept unfused; rint rounds half to even, as NumPy's round. */
static __device__ __forceinline__ uint8_t u8_of(float x) {
    float v = __fmaf_rn(x, 0.5f, 0.5f);
    if (v < 0.0f) v = 0.0f;
    if (v > 1.0f) v = 1.0f;
    float s = __fmul_rn(v, 255.0f);
    return s == s ? (uint8_t)__float2int_rn(s) : (uint8_t)0;
}

static __device__ __forceinline__ float rgb_in(const float *x, int64_t i) { return x[i]; }
static __device__ __forceinline__ float rgb_in(const bf16 *x, int64_t i) { return __bfloat162float(x[i]); }
static __device__ __forceinline__ float rgb_in(const __half *x, int64_t i) { return __half2float(x[i]); }

/* x [3, plane] planar → out [plane, 3] interleaved bytes, one pixel per
 * thread (grid-stride), and the non-finite values counted as in
 * count_nonfinite_k (a warp sum, one atomic per warp). */
template <typename T>
__global__ void rgb8_k(const T *x, int64_t plane, uint8_t *out, unsigned long long *count) {
    unsigned long long c = 0;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < plane; p += (int64_t)gridDim.x * blockDim.x)
        for (int ch = 0; ch < 3; ch++) {
            float v = rgb_in(x, ch * plane + p);
            c += !isfinite(v);
            out[p * 3 + ch] = u8_of(v);
        }
    for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0 && c) atomicAdd(count, c);
}

/* backend.h download_rgb8: the bytes made in the arena, copied back through
 * the pinned staging buffer in pieces. */
static qi_status rgb8_on_device(cuda_impl *c, qi_backend *be, const qi_tensor *x, uint8_t *rgb8, int64_t *nonfinite,
                                qi_error *err) {
    if (x->ndim != 3 || x->ne[0] != 3 || (x->dtype != QI_F32 && x->dtype != QI_BF16 && x->dtype != QI_F16))
        return qi_fail(err, QI_ERR_ARG, "cuda backend: download_rgb8 of a %s tensor of %d dims (expected F32, BF16 "
                       "or F16 [3, H, W])", qi_dtype_name(x->dtype), x->ndim);
    if (c->err_status != QI_OK) { /* the picture would be garbage: report why */
        qi_status st = c->err_status;
        qi_fail(err, st, "%s", c->err_msg);
        c->err_status = QI_OK;
        return qi_fail_ctx(err, st, "cuda backend: download_rgb8 after a failed op");
    }
    int64_t plane = x->ne[1] * x->ne[2], bytes = 3 * plane;
    size_t mark = cuda_mark(be);
    qi_tensor u8;
    int64_t words = (bytes + 3) / 4; /* the arena hands out typed tensors: the bytes as I32 words */
    qi_status st = cuda_tensor(be, &u8, QI_I32, 1, &words, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "cuda backend: download_rgb8's %lld bytes", (long long)bytes);
    cudaError_t e = cudaSuccess;
    if (!c->nonfinite_count) e = cudaMalloc((void **)&c->nonfinite_count, sizeof *c->nonfinite_count);
    if (e == cudaSuccess) e = cudaMemsetAsync(c->nonfinite_count, 0, sizeof *c->nonfinite_count, c->stream);
    unsigned blocks = (unsigned)((plane + 255) / 256);
    if (blocks > (unsigned)c->sm_count * 8) blocks = (unsigned)c->sm_count * 8;
    if (blocks == 0) blocks = 1;
    uint8_t *dev = (uint8_t *)u8.data;
    if (e == cudaSuccess) {
        if (x->dtype == QI_BF16)
            rgb8_k<bf16><<<blocks, 256, 0, c->stream>>>((const bf16 *)x->data, plane, dev, c->nonfinite_count);
        else if (x->dtype == QI_F16)
            rgb8_k<__half><<<blocks, 256, 0, c->stream>>>((const __half *)x->data, plane, dev, c->nonfinite_count);
        else
            rgb8_k<float><<<blocks, 256, 0, c->stream>>>((const float *)x->data, plane, dev, c->nonfinite_count);
        e = cudaGetLastError();
    }
    unsigned long long h = 0;
    if (e == cudaSuccess) e = cudaMemcpyAsync(&h, c->nonfinite_count, sizeof h, cudaMemcpyDeviceToHost, c->stream);
    for (int64_t i0 = 0; e == cudaSuccess && i0 < bytes; i0 += (int64_t)c->staging_bytes) {
        size_t m = (size_t)(bytes - i0 < (int64_t)c->staging_bytes ? bytes - i0 : (int64_t)c->staging_bytes);
        e = cudaMemcpyAsync(c->staging[0], dev + i0, m, cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
        if (e == cudaSuccess) memcpy(rgb8 + i0, c->staging[0], m);
    }
    if (e == cudaSuccess && bytes == 0) e = cudaStreamSynchronize(c->stream);
    cuda_reset(be, mark);
    if (e != cudaSuccess) return cuda_err(err, e, "download_rgb8");
    *nonfinite = (int64_t)h;
    return QI_OK;
}

static qi_status cuda_download_rgb8(qi_backend *be, const qi_tensor *x, uint8_t *rgb8, int64_t *nonfinite,
                                    qi_error *err) {
    cuda_impl *c = cuda_of(be);
    int prev = device_enter(c);
    qi_status st = rgb8_on_device(c, be, x, rgb8, nonfinite, err);
    device_leave(prev);
    return st;
}

static qi_status cuda_sync(qi_backend *be, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    int prev = device_enter(c);
    qc_wbuf_settle(c, 0); /* queued work includes the prefetched expansions */
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    device_leave(prev);
    if (c->err_status != QI_OK) {
        qi_status st = c->err_status;
        c->err_status = QI_OK;
        return qi_fail(err, st, "%s", c->err_msg);
    }
    if (e != cudaSuccess) return cuda_err(err, e, "queued work failed");
    return QI_OK;
}

/* y[M,N] = act(x[M,K] · w[N,K]ᵀ + b). Row-major y is column-major yᵀ[N,M], so
 * cuBLASLt computes yᵀ = wᵀᵀ·xᵀ: A = w (transposed), B = x. */
static void cuda_linear(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                        qi_act act, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t K = x->ne[x->ndim - 1], M = qi_rows(x), N = w->ne[0];
    char s1[96], s2[96];
    qi_tensor expanded; /* a kept weight (fp8, GGUF blocks) as bf16 in the weight scratch */
    if (qc_kept_type(w->dtype) && w->ndim == 2 && x->dtype == QI_BF16) {
        int fp8 = qc_fp8_linear(c, x, w, b, act, y); /* e4m3 on the fp8 tensor cores (cuda_fp8_gemm.cu) */
        if (fp8) return;
        if (qc_block_gemm_takes(c, x, w, M)) { /* few rows: the GEMM reads the blocks (cuda_block_gemm.cu) */
            qc_block_gemm(c, x, w, b, act, y);
            return;
        }
        if (qc_dequant_to_scratch(c, w, &expanded)) return;
        w = &expanded;
        c->expand_calls++;
    }
    if (x->dtype != QI_BF16 || w->dtype != QI_BF16 || y->dtype != QI_BF16) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: linear needs bf16 x, w, y (got %s, %s, %s)",
                qi_dtype_name(x->dtype), qi_dtype_name(w->dtype), qi_dtype_name(y->dtype));
        return;
    }
    if (w->ne[w->ndim - 1] != K || qi_numel(w) != N * K || qi_numel(y) != M * N ||
        (b && qi_numel(b) != N)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: linear shapes x %s, w %s do not match", qi_shape_str(x, s1, 96),
                qi_shape_str(w, s2, 96));
        return;
    }
    if (M == 0 || N == 0) return;
    if (K > INT32_MAX || M > INT32_MAX || N > INT32_MAX) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: linear dims over 2^31");
        return;
    }
    int epi_bias = b && b->dtype == QI_BF16 && b->scale == 1.0f;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    int post_act = 0; /* what remains for qc_bias_act */
    if (act == QI_ACT_GELU_TANH)
        epi = epi_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : (b ? CUBLASLT_EPILOGUE_DEFAULT : CUBLASLT_EPILOGUE_GELU);
    else
        epi = epi_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    /* cuBLASLt's GELU epilogue is the tanh form: SiLU and exact GELU run after the GEMM */
    if (act == QI_ACT_SILU || act == QI_ACT_GELU_ERF || (b && !epi_bias)) post_act = 1;
    qi_tensor y2 = qi_view2(y, M, N);
    if (post_act && (size_t)(M * N) * sizeof(float) <= c->scratch_bytes) {
        /* float32 product into scratch, then bias + activation + one rounding */
        if (qc_gemm(c, 1, 0, (int)N, (int)M, (int)K, w->data, (int)K, x->data, (int)K, c->scratch, (int)N,
                    CUDA_R_32F, w->scale, NULL, CUBLASLT_EPILOGUE_DEFAULT, "linear"))
            return;
        qc_bias_act_f32(c, (const float *)c->scratch, &y2, b, act);
        return;
    }
    if (qc_gemm(c, 1, 0, (int)N, (int)M, (int)K, w->data, (int)K, x->data, (int)K, y->data, (int)N,
                CUDA_R_16BF, w->scale, epi_bias ? b->data : NULL, epi, "linear"))
        return;
    if (post_act) qc_bias_act(c, &y2, epi_bias ? NULL : b, act); /* too large for scratch: rounds twice */
}

/* linear_shared: taken when the fp8 GEMM takes every one of the linears
 * (x quantised once for all of them, its amax taken by the LayerNorm kernel
 * that makes it where src says so: cuda_fp8_gemm.cu); declined otherwise,
 * so the model's plain ops keep their order and prefetch hints. */
static int cuda_linear_shared(qi_backend *be, const qi_tensor *x, const qi_ln_mod_src *src, int n,
                              const qi_tensor *const *w, const qi_tensor *const *b, const qi_act *act,
                              qi_tensor *const *y) {
    cuda_impl *c = cuda_of(be);
    int started = 0;
    int done = qc_fp8_linear_shared(c, x, src, n, w, b, act, y, &started);
    if (!started) return 0;
    for (int k = done < 0 ? n : done; k < n; k++) cuda_linear(be, x, w[k], b[k], act[k], y[k]); /* refused GEMMs */
    return 1; /* an error is recorded on the backend, as `linear` leaves it */
}

/* ---- extras ------------------------------------------------------------------ */

extern "C" void *qi_cuda_stream(qi_backend *be) { return (void *)cuda_of(be)->stream; }
extern "C" int qi_cuda_device(qi_backend *be) { return cuda_of(be)->device; }
extern "C" size_t qi_cuda_arena_peak(qi_backend *be) { return cuda_of(be)->arena_peak; }
extern "C" size_t qi_cuda_arena_capacity(qi_backend *be) { return cuda_of(be)->arena_cap; }
extern "C" size_t qi_cuda_weight_bytes(qi_backend *be) { return cuda_of(be)->weight_bytes; }
extern "C" int qi_cuda_set_attention_kernel(qi_backend *be, const char *name) {
    static const char *names[QC_ATTN_VARIANTS] = {"auto", "mma", "gemm", "wgmma64x2", "wgmma128x2", "wgmma64x3", "tma64x2", "tma128x2", "tma64x3"};
    for (int i = 0; i < QC_ATTN_VARIANTS; i++)
        if (name && strcmp(name, names[i]) == 0) {
            cuda_of(be)->attn_variant = i;
            return 0;
        }
    return -1;
}

static int conv_mode_of(const char *name) {
    static const char *names[3] = {"auto", "implicit", "im2col"}; /* qc_conv_mode order */
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, names[i]) == 0) return i;
    return -1;
}

extern "C" int qi_cuda_set_conv_kernel(qi_backend *be, const char *name) {
    int m = conv_mode_of(name);
    if (m < 0) return -1;
    cuda_of(be)->conv_mode = m;
    return 0;
}


/* ---- the overlap of kept-weight expansions (cuda_kept.cu) ------------------------------- */

/* The stream every op is queued on. QI_CUDA_PREFETCH_PRIORITY=1 gives it the
 * device's highest priority (the expand stream keeps the default, lowest), so
 * where both have blocks waiting the GEMM's are scheduled first and a
 * prefetched expansion fills what the GEMM leaves idle. A measurement knob:
 * it also ranks the ops above other streams' work (NCCL's, copies'). */
static cudaError_t compute_stream_create(cuda_impl *c) {
    const char *prio = getenv("QI_CUDA_PREFETCH_PRIORITY");
    int lowest = 0, highest = 0;
    if (prio && prio[0] == '1' && cudaDeviceGetStreamPriorityRange(&lowest, &highest) == cudaSuccess)
        return cudaStreamCreateWithPriority(&c->stream, cudaStreamNonBlocking, highest);
    return cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
}

/* Off by default: QI_CUDA_KEPT_OVERLAP=1 turns it on (two weight buffers),
 * =3 with three, so the model's hint two linears ahead is taken too (its
 * expansion can start behind a long GEMM while the next one's is still
 * read); unset or 0: one buffer, prefetch_weight does nothing (the scratch
 * as before: half the memory). Why off: its first H200 run (bench/RESULTS.md
 * run Q) gave a Q4_K 1024² call of 128.6 ms eager / 133.2 ms replayed with
 * it on, against 127.5 ms replayed without it in run L; the same call's
 * "off" row did not finish in the call's time, so no gain is shown yet.
 * QI_CUDA_PREFETCH_SMS=N: a
 * prefetched expansion runs N × 8 blocks of 256 threads (what N SMs hold at
 * once), so it leaves the rest of the GPU to the GEMM it overlaps; 0 or
 * unset: the grid a linear's own expansion takes (up to 16 blocks per SM).
 * QI_CUDA_PREFETCH_PRIORITY=1: see compute_stream_create. */
static qi_status overlap_init(cuda_impl *c, qi_error *err) {
    const char *on = getenv("QI_CUDA_KEPT_OVERLAP"), *sms = getenv("QI_CUDA_PREFETCH_SMS");
    c->wbuf_count = on && on[0] == '1' ? 2 : on && on[0] == '3' ? 3 : 1;
    long n = sms ? strtol(sms, NULL, 10) : 0;
    c->prefetch_grid = n > 0 && n < c->sm_count ? (int)n * 8 : 0;
    if (c->wbuf_count < 2) return QI_OK;
    cudaError_t e = cudaStreamCreateWithFlags(&c->expand_stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->expand_fork, cudaEventDisableTiming);
    for (int i = 0; i < QC_WBUFS && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&c->wbuf[i].ready, cudaEventDisableTiming);
    if (e != cudaSuccess) return cuda_err(err, e, "the weight expansion stream (unset QI_CUDA_KEPT_OVERLAP to go without)");
    c->kept_overlap = 1;
    return QI_OK;
}

extern "C" int qi_cuda_set_kept_overlap(qi_backend *be, int on) {
    cuda_impl *c = cuda_of(be);
    int was = c->kept_overlap;
    int prev = device_enter(c);
    qc_wbuf_settle(c, 1); /* nothing left on the expand stream, nor held, when it stops or starts */
    device_leave(prev);
    c->kept_overlap = on && c->wbuf_count > 1 && c->expand_stream != NULL;
    return was;
}

extern "C" int qi_cuda_set_gemm_tune(qi_backend *be, int on) {
    cuda_impl *c = cuda_of(be);
    int was = c->gemm_tune;
    int prev = device_enter(c);
    cudaStreamSynchronize(c->stream); /* queued GEMMs may still use the plans */
    for (int i = 0; i < QI_CUDA_PLANS; i++) qc_plan_destroy(&c->plans[i]);
    device_leave(prev);
    c->gemm_tune = on != 0;
    return was;
}

extern "C" int qi_cuda_gemm_tune_on(qi_backend *be) { return cuda_of(be)->gemm_tune; }

extern "C" void qi_cuda_gemm_tune_counts(qi_backend *be, unsigned long long *plans, unsigned long long *changed,
                                         unsigned long long *differs, double *saved_ms) {
    cuda_impl *c = cuda_of(be);
    if (plans) *plans = c->tune_plans;
    if (changed) *changed = c->tune_changed;
    if (differs) *differs = c->tune_differs;
    if (saved_ms) *saved_ms = c->tune_saved_ms;
}

extern "C" int64_t qi_cuda_set_block_gemm_rows(qi_backend *be, int64_t rows) {
    cuda_impl *c = cuda_of(be);
    int64_t was = c->block_gemm_rows;
    c->block_gemm_rows = rows > 0 ? rows : 0;
    return was;
}

extern "C" int qi_cuda_set_block_gemm_split(qi_backend *be, int on) {
    cuda_impl *c = cuda_of(be);
    int was = c->block_gemm_split;
    c->block_gemm_split = on != 0;
    return was;
}

extern "C" unsigned long long qi_cuda_block_gemm_calls(qi_backend *be) { return cuda_of(be)->block_gemm_calls; }

extern "C" void qi_cuda_kept_counts(qi_backend *be, unsigned long long *expanded, unsigned long long *queued,
                                    unsigned long long *used) {
    cuda_impl *c = cuda_of(be);
    if (expanded) *expanded = c->expand_calls;
    if (queued) *queued = c->prefetch_queued;
    if (used) *used = c->prefetch_used;
}

/* ---- CUDA graphs ---------------------------------------------------------------------- */

struct qi_cuda_graph {
    cudaGraphExec_t exec;
};

extern "C" qi_status qi_cuda_capture_begin(qi_backend *be, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    /* a recording starts with empty weight buffers: what they hold now is not there when it replays, and
       its waits must be on events recorded inside it */
    qc_wbuf_settle(c, 1);
    /* relaxed: the first launch of a kernel may set its shared-memory limit */
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "graph capture begin");
}

extern "C" qi_status qi_cuda_capture_end(qi_backend *be, qi_cuda_graph **out, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    *out = NULL;
    cudaGraph_t graph = NULL;
    qc_wbuf_settle(c, 1); /* every expansion branch joined back before the capture ends; nothing held after */
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (c->err_status != QI_OK) { /* an op failed while recording */
        if (graph) cudaGraphDestroy(graph);
        qi_status st = c->err_status;
        c->err_status = QI_OK;
        return qi_fail(err, st, "graph capture: %s", c->err_msg);
    }
    if (e != cudaSuccess) return cuda_err(err, e, "graph capture end");
    qi_cuda_graph *g = (qi_cuda_graph *)calloc(1, sizeof *g);
    if (!g) {
        cudaGraphDestroy(graph);
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: out of host memory");
    }
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        free(g);
        return cuda_err(err, e, "graph instantiate");
    }
    *out = g;
    return QI_OK;
}

extern "C" qi_status qi_cuda_graph_launch(qi_backend *be, qi_cuda_graph *g, qi_error *err) {
    cudaError_t e = cudaGraphLaunch(g->exec, cuda_of(be)->stream);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "graph launch");
}

extern "C" void qi_cuda_graph_free(qi_cuda_graph *g) {
    if (!g) return;
    cudaGraphExecDestroy(g->exec);
    free(g);
}

/* The op table's graph ops: the functions above, the handle opaque. */
static qi_status cuda_graph_begin(qi_backend *be, qi_error *err) { return qi_cuda_capture_begin(be, err); }

static qi_status cuda_graph_end(qi_backend *be, qi_graph **out, qi_error *err) {
    qi_cuda_graph *g = NULL;
    qi_status st = qi_cuda_capture_end(be, &g, err);
    *out = reinterpret_cast<qi_graph *>(g);
    return st;
}

static qi_status cuda_graph_launch(qi_backend *be, qi_graph *g, qi_error *err) {
    if (!g) return qi_fail(err, QI_ERR_ARG, "cuda backend: graph_launch of no graph");
    return qi_cuda_graph_launch(be, reinterpret_cast<qi_cuda_graph *>(g), err);
}

static void cuda_graph_free(qi_backend *be, qi_graph *g) {
    (void)be;
    qi_cuda_graph_free(reinterpret_cast<qi_cuda_graph *>(g));
}

/* ---- table ----------------------------------------------------------------------- */

/* Releases everything on the backend's device (from any thread; the caller's
 * device is current again afterwards). */
static void cuda_destroy(qi_backend *be) {
    if (!be) return;
    cuda_impl *c = cuda_of(be);
    if (c) {
        int prev = device_enter(c);
        if (c->stream) cudaStreamSynchronize(c->stream);
        for (int i = 0; i < QI_CUDA_PLANS; i++) qc_plan_destroy(&c->plans[i]);
        for (int i = 0; i < 2; i++)
            if (c->tune_ev[i]) cudaEventDestroy(c->tune_ev[i]);
        if (c->tune_hash) cudaFree(c->tune_hash);
        qc_fp8_destroy(c);
        if (c->lt) cublasLtDestroy(c->lt);
        for (int i = 0; i < 2; i++) {
            if (c->staging[i]) cudaFreeHost(c->staging[i]);
            if (c->staging_free[i]) cudaEventDestroy(c->staging_free[i]);
        }
        qc_upload_destroy(c);
        qc_host_destroy(c); /* the host weights' chunks and the bounce ring (syncs the copy stream) */
        if (c->copy_stream) {
            cudaStreamSynchronize(c->copy_stream);
            cudaStreamDestroy(c->copy_stream);
        }
        if (c->compute_mark) cudaEventDestroy(c->compute_mark);
        if (c->expand_stream) {
            cudaStreamSynchronize(c->expand_stream);
            cudaStreamDestroy(c->expand_stream);
        }
        if (c->expand_fork) cudaEventDestroy(c->expand_fork);
        for (int i = 0; i < QC_WBUFS; i++)
            if (c->wbuf[i].ready) cudaEventDestroy(c->wbuf[i].ready);
        qc_conv_weights_destroy(c);
        cudaFree(c->nonfinite_count);
        cudaFree(c->lt_workspace);
        cudaFree(c->scratch);
        cudaFree(c->wscratch);
        cudaFree(c->arena);
        if (c->stream) cudaStreamDestroy(c->stream);
        device_leave(prev);
        free(c);
    }
    free(be);
}

/* What the CUDA backend can do, from what its code accepts:
 *
 *   type (host data)     WEIGHT  LINEAR  CONV2D  EMBEDDING
 *   F32 F16 BF16           1       1       1       1      converted to bf16 at load
 *   F8_E4M3 F8_E5M2        1       1       1       1      2-D: kept as stored, with the scale;
 *   Q4_0 … Q6_K            1       1       1       1      linear expands it to bf16 in scratch
 *                                                         (e4m3 on sm_89+: the fp8 GEMM instead,
 *                                                         cuda_fp8_gemm.cu),
 *                                                         embedding reads rows directly
 *                                                         (cuda_kept.cu); other shapes (conv)
 *                                                         converted to bf16 at load, the scale
 *                                                         applied in float32 first
 *   I32                    1       0       0       0      kept as I32; linear needs bf16,
 *                                                         conv2d/embedding a float type
 *   I64 U8                 0       0       0       0      `weight` refuses them
 *
 *   GRAPHS 1 (CUDA graphs), RANDOM_WEIGHTS 1, CUDA_RNG 1 (rng_philox.cu).
 * The ops record an UNSUPPORTED error for a weight they cannot read, so a 0
 * here is also what the op reports at sync. */
static int cuda_supports(const qi_backend *be, qi_cap cap, qi_dtype type) {
    (void)be;
    switch (cap) {
    case QI_CAP_WEIGHT: return weight_store_type(NULL, type, 2) >= 0;
    case QI_CAP_LINEAR:
    case QI_CAP_CONV2D:
    case QI_CAP_EMBEDDING: return qi_dtype_is_float(type);
    case QI_CAP_GRAPHS:
    case QI_CAP_RANDOM_WEIGHTS:
    case QI_CAP_CUDA_RNG: return 1;
    default: return 0;
    }
}

static qi_status cuda_make_current(qi_backend *be, qi_error *err) {
    cudaError_t e = cudaSetDevice(cuda_of(be)->device);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "cudaSetDevice");
}

static void *cuda_native_stream(qi_backend *be) { return (void *)cuda_of(be)->stream; }

static const qi_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .supports = cuda_supports,
    .make_current = cuda_make_current,
    .native_stream = cuda_native_stream,
    .tensor = cuda_tensor,
    .mark = cuda_mark,
    .reset = cuda_reset,
    .weight = cuda_weight,
    .weight_free = cuda_weight_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .linear = cuda_linear,
    .embedding = qc_embedding,
    .rms_norm = qc_rms_norm,
    .layer_norm_mod = qc_layer_norm_mod,
    .add_gated = qc_add_gated,
    .activate = qc_activate,
    .silu_mul = qc_silu_mul,
    .axpby = qc_axpby,
    .copy_rows = qc_copy_rows,
    .rope = qc_rope,
    .attention = qc_attention,
    .attention_segments = qc_attention_segments,
    .cfg_combine = qc_cfg_combine,
    .conv2d = qc_conv2d,
    .upsample2x = qc_upsample2x,
    .subsample2x = qc_subsample2x,
    .channel_rms_norm = qc_channel_rms_norm,
    .transpose2d = qc_transpose2d,
    .random_weights = cuda_random_weights,
    .mem_usage = cuda_mem_usage,
    .count_nonfinite = cuda_count_nonfinite,
    .download_rgb8 = cuda_download_rgb8,
    .rms_norm_rope = qc_rms_norm_rope,
    .channel_rms_norm_act = qc_channel_rms_norm_act,
    .conv2d_fused = qc_conv2d_fused,
    .add_gated_layer_norm_mod = qc_add_gated_layer_norm_mod,
    .linear_shared = cuda_linear_shared,
    .prefetch_weight = qc_prefetch_weight,
    .weight_size = cuda_weight_size,
    .mem_info = cuda_mem_info,
    .reserve = cuda_reserve,
    .weight_host = cuda_weight_host,
    .slot_new = cuda_slot_new,
    .slot_free = cuda_slot_free,
    .stage = cuda_stage,
    .stage_wait = cuda_stage_wait,
    .host_budget = cuda_host_budget,
    .load_report = qc_load_report,
    .persistent = cuda_persistent,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
};

/* The linears' switches from the environment, read at creation:
 * QI_CUDA_GEMM_TUNE=0: new GEMM plans keep cuBLASLt's first algorithm (cuda_gemm.cu);
 * QI_CUDA_BLOCK_GEMM_ROWS=N: GGUF linears of at most N rows read their blocks in the GEMM
 *   (cuda_block_gemm.cu; default 0: never), QI_CUDA_BLOCK_GEMM_SPLIT=0: without splitting K;
 * QI_CUDA_DEQUANT_AT_LOAD=1: fp8 and GGUF weights become bf16 at load (the old path, a yardstick). */
static void gemm_switches_init(cuda_impl *c) {
    const char *tune = getenv("QI_CUDA_GEMM_TUNE"), *rows = getenv("QI_CUDA_BLOCK_GEMM_ROWS");
    const char *split = getenv("QI_CUDA_BLOCK_GEMM_SPLIT"), *at_load = getenv("QI_CUDA_DEQUANT_AT_LOAD");
    c->gemm_tune = !(tune && tune[0] == '0');
    long long r = rows ? strtoll(rows, NULL, 10) : 0;
    c->block_gemm_rows = r > 0 ? r : 0;
    c->block_gemm_split = !(split && split[0] == '0');
    c->dequant_at_load = at_load && at_load[0] == '1';
}

extern "C" qi_status qi_backend_cuda_create(int device, size_t arena_bytes, qi_backend **out,
                                            qi_error *err) {
    *out = NULL;
    qi_status checked = qi_backend_check_ops(&cuda_ops, err);
    if (checked != QI_OK) return checked;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "cuda backend: no usable CUDA device (%s); check the NVIDIA "
                       "driver (nvidia-smi), or run on the CPU with --device cpu",
                       e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
    if (device < 0 || device >= count)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: device %d does not exist (this machine has %d)",
                       device, count);
    if ((e = cudaSetDevice(device)) != cudaSuccess) return cuda_err(err, e, "cudaSetDevice");
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return cuda_err(err, e, "cudaGetDeviceProperties");
    if (prop.major < 8)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "cuda backend: %s is compute capability %d.%d; bf16 "
                       "kernels need 8.0 or newer", prop.name, prop.major, prop.minor);

    qi_backend *be = (qi_backend *)calloc(1, sizeof *be);
    cuda_impl *c = (cuda_impl *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return qi_fail(err, QI_ERR_NOMEM, "cuda backend: out of host memory");
    }
    be->ops = &cuda_ops;
    be->act_dtype = QI_BF16;
    be->impl = c;
    c->device = device;
    c->sm_count = prop.multiProcessorCount;
    c->wbuf_count = 1; /* overlap_init says how many */
    qi_status st = QI_OK;
    if (arena_bytes == 0) { /* default: half the free memory, at most 32 GiB */
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        arena_bytes = free_b / 2 < ((size_t)32 << 30) ? free_b / 2 : ((size_t)32 << 30);
    }
    c->arena_cap = arena_bytes;
    c->lt_workspace_bytes = LT_WORKSPACE_BYTES;
    c->scratch_bytes = SCRATCH_BYTES;
    c->staging_bytes = STAGING_BYTES;
    c->load_mu_made = pthread_mutex_init(&c->load_mu, NULL) == 0;
    if (!c->load_mu_made) {
        st = qi_fail(err, QI_ERR_BACKEND, "cuda backend: cannot make the load mutex");
        goto fail;
    }
    if ((e = compute_stream_create(c)) != cudaSuccess) {
        st = cuda_err(err, e, "stream");
        goto fail;
    }
    if ((e = cudaMalloc((void **)&c->arena, arena_bytes)) != cudaSuccess) {
        st = qi_fail(err, QI_ERR_NOMEM, "cuda backend: cannot allocate a %zu MiB activation arena on "
                     "device %d: %s", arena_bytes >> 20, device, cudaGetErrorString(e));
        goto fail;
    }
    be->arena_bytes = arena_bytes;
    if ((e = cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->scratch, c->scratch_bytes)) != cudaSuccess) {
        st = cuda_err(err, e, "workspace allocation");
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        if ((e = cudaHostAlloc(&c->staging[i], c->staging_bytes, cudaHostAllocDefault)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&c->staging_free[i], cudaEventDisableTiming)) != cudaSuccess) {
            st = cuda_err(err, e, "pinned staging buffers");
            goto fail;
        }
    }
    if ((st = qc_host_init(c, err)) != QI_OK) goto fail;
    if ((st = qc_select_kernels(c, &prop, err)) != QI_OK) goto fail;
    if ((st = qc_upload_init(c, err)) != QI_OK) goto fail;
    gemm_switches_init(c);
    if ((st = overlap_init(c, err)) != QI_OK) goto fail;
    { /* QI_CUDA_CONV=auto|implicit|im2col (a fallback and a yardstick); default auto */
        int m = conv_mode_of(getenv("QI_CUDA_CONV"));
        c->conv_mode = m < 0 ? QC_CONV_AUTO : m;
        qc_conv_options_init(c);
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        st = qi_fail(err, QI_ERR_BACKEND, "cuda backend: cublasLtCreate failed (is libcublasLt.so.13 "
                     "from CUDA 13 on the library path?)");
        goto fail;
    }
    if ((st = qc_fp8_init(c, err)) != QI_OK) goto fail;
    *out = be;
    return QI_OK;
fail:
    cuda_destroy(be);
    return st;
}

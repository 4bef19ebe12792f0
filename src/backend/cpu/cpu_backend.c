/*
 * cpu_backend.c — the reference backend: float32 activations, OpenMP threads,
 * OpenBLAS for the matrix products.
 *
 * It is the yardstick the CUDA backend is tested against and what CI runs, so
 * it favours clarity and float32 exactness over speed: reductions (norms,
 * softmax sums) accumulate in double, every op is a plain loop.
 *
 * Weights are not copied: a weight tensor points into the file mapping with
 * its file type (f32/f16/bf16, fp8 with a per-tensor or per-row scale, any
 * GGUF block type). `linear` dequantises a band of weight rows to float32 at
 * a time through the type traits (base/types.h), `embedding` the rows it
 * gathers, so even the full 20B transformer needs only a few hundred MB of
 * scratch, never a whole-model float32 copy.
 *
 * Activations come from an arena: one large virtual reservation
 * (MAP_NORESERVE, so untouched pages cost nothing) with a bump pointer, sized
 * by default from the machine's physical memory and `ulimit -v`.
 *
 * Ops return nothing, as on every backend: an op that cannot run (scratch
 * memory refused, a weight type it cannot read) records the first such
 * failure in the backend, leaves its output undefined, and `sync` (or the
 * next `download`) returns the message and clears it, as CUDA's does.
 */
#define _GNU_SOURCE
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "base/types.h"

typedef struct cpu_impl {
    int threads;
    char *arena;       /* reservation base */
    size_t arena_cap;  /* bytes reserved */
    size_t arena_used; /* bump pointer */
    size_t arena_peak;
    int alloc_skip;    /* tests: op_alloc calls to let through before failing */
    int alloc_fail;    /* tests: op_alloc calls to fail after those */
    /* first failure of a void op, returned (and cleared) by sync */
    qi_status err_status;
    char err_msg[512];
} cpu_impl;

static cpu_impl *impl_of(qi_backend *be) { return (cpu_impl *)be->impl; }

/* ---- errors ---------------------------------------------------------------- */

/* Records the first failure of an op; later ones are dropped (they are
 * usually its consequences). */
static void cpu_fail(qi_backend *be, qi_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cpu_fail(qi_backend *be, qi_status st, const char *fmt, ...) {
    cpu_impl *c = impl_of(be);
    if (c->err_status != QI_OK) return;
    c->err_status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    va_end(ap);
}

/* Scratch memory for an op; NULL (with the failure recorded, naming the op,
 * what the memory was for and its size) when the allocation fails. */
static void *op_alloc(qi_backend *be, const char *op, const char *what, size_t bytes) {
    cpu_impl *c = impl_of(be);
    void *p = NULL;
    if (c->alloc_fail > 0 && c->alloc_skip == 0)
        c->alloc_fail--;
    else {
        if (c->alloc_skip > 0) c->alloc_skip--;
        p = malloc(bytes ? bytes : 1);
    }
    if (!p)
        cpu_fail(be, QI_ERR_NOMEM, "cpu backend: %s: out of memory allocating %zu bytes for %s", op, bytes,
                 what);
    return p;
}

void qi_backend_cpu_fail_allocs(qi_backend *be, int after, int count) {
    impl_of(be)->alloc_skip = after > 0 ? after : 0;
    impl_of(be)->alloc_fail = count > 0 ? count : 0;
}

/* The weight storage types the ops read (dequantised to float32 per row
 * band): the element float types and every GGUF block type. */
static int cpu_float_type(qi_dtype t) { return qi_dtype_is_float(t); }

/* OpenBLAS (OpenMP build) sizes each call by the CALLING thread's OpenMP
 * thread count, so a backend used from another thread (a rank of a
 * multi-device run) would otherwise run its BLAS on every core. */
static void blas_threads(qi_backend *be) {
    if (omp_get_max_threads() != impl_of(be)->threads) omp_set_num_threads(impl_of(be)->threads);
}
#define NT(be) num_threads(impl_of(be)->threads)

/* ---- memory -------------------------------------------------------------- */

static qi_status cpu_tensor(qi_backend *be, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                            qi_error *err) {
    cpu_impl *c = impl_of(be);
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    t->scale = 1.0f;
    for (int i = 0; i < ndim; i++) t->ne[i] = ne[i];
    size_t bytes = (qi_nbytes(t) + 63) & ~(size_t)63;
    if (c->arena_used + bytes > c->arena_cap) {
        char shape[128];
        return qi_fail(err, QI_ERR_NOMEM,
                       "cpu backend: activation arena full (%zu MiB reserved) allocating %s %s; "
                       "use a smaller image or batch",
                       c->arena_cap >> 20, qi_dtype_name(dt), qi_shape_str(t, shape, sizeof shape));
    }
    t->data = c->arena + c->arena_used;
    c->arena_used += bytes;
    if (c->arena_used > c->arena_peak) c->arena_peak = c->arena_used;
    return QI_OK;
}

static size_t cpu_mark(qi_backend *be) { return impl_of(be)->arena_used; }

static void cpu_reset(qi_backend *be, size_t mark) {
    cpu_impl *c = impl_of(be);
    if (mark <= c->arena_used) c->arena_used = mark;
}

static qi_status cpu_weight(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                            const void *host, const qi_weight_scale *scale, qi_error *err) {
    (void)be;
    memset(w, 0, sizeof *w);
    if (!cpu_float_type(dt) && dt != QI_I32) /* I32: index tables kept as they are */
        return qi_fail(err, QI_ERR_UNSUPPORTED, "cpu backend: weights of type %s are not supported "
                       "(F32, F16, BF16, F8_E4M3, F8_E5M2, %s or I32)", qi_dtype_name(dt),
                       "Q4_0 … Q6_K");
    if (ndim < 1 || ndim > QI_MAX_DIMS || qi_row_bytes(dt, ne[ndim - 1]) < 0)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: a %s weight with %d dims and last dim %lld (a row must "
                       "be a whole number of %s blocks)", qi_dtype_name(dt), ndim,
                       ndim >= 1 && ndim <= QI_MAX_DIMS ? (long long)ne[ndim - 1] : -1LL, qi_dtype_name(dt));
    qi_scale_form form = scale ? scale->form : QI_SCALE_NONE;
    if (form == QI_SCALE_ROW && !scale->row_scale)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: a per-row scale without its values");
    w->dtype = dt;
    w->ndim = ndim;
    w->scale = form == QI_SCALE_TENSOR ? scale->scale : 1.0f;
    w->scale_form = form;
    w->row_scale = form == QI_SCALE_ROW ? scale->row_scale : NULL; /* zero copy, as `host` */
    for (int i = 0; i < ndim; i++) w->ne[i] = ne[i];
    w->data = (void *)host; /* zero copy: the caller keeps `host` alive */
    return QI_OK;
}

static void cpu_weight_free(qi_backend *be, qi_tensor *w) {
    (void)be;
    w->data = NULL;
}

/* ---- residency: sizes, the arena, streamed weights --------------------------------- */

/* A weight points into its file: its stored bytes, no scratch. */
static size_t cpu_weight_size(const qi_backend *be, qi_dtype dt, int ndim, const int64_t *ne, size_t *scratch) {
    (void)be;
    *scratch = 0;
    int64_t rows = 1, row = ndim >= 1 ? qi_row_bytes(dt, ne[ndim - 1]) : 0;
    for (int i = 0; i + 1 < ndim; i++) rows *= ne[i];
    return row > 0 ? (size_t)rows * (size_t)row : 0;
}

/* A new arena reservation; no weight scratch here (linear dequantises per row band). */
static qi_status cpu_reserve(qi_backend *be, size_t bytes, size_t weight_scratch, qi_error *err) {
    (void)weight_scratch;
    cpu_impl *c = impl_of(be);
    if (c->arena_used)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: reserve with %zu bytes of the arena in use", c->arena_used);
    if (c->arena) munmap(c->arena, c->arena_cap);
    c->arena = NULL;
    c->arena_cap = be->arena_bytes = 0;
    void *m = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return qi_fail(err, QI_ERR_NOMEM, "cpu backend: cannot reserve %zu MiB of address space for activations",
                       bytes >> 20);
    c->arena = m;
    c->arena_cap = be->arena_bytes = bytes;
    c->arena_peak = 0;
    return QI_OK;
}

/* Host weights are plain weights here (they already are in host memory);
 * a slot is a host buffer and stage a real copy into it, so the model code's
 * streamed path reads what the slot holds, as on a device. */
struct qi_slot {
    char *buf;
    size_t bytes;
};

static qi_status cpu_slot_new(qi_backend *be, size_t bytes, qi_slot **out, qi_error *err) {
    (void)be;
    qi_slot *s = calloc(1, sizeof *s);
    if (s) s->buf = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
    if (!s || !s->buf) {
        free(s);
        *out = NULL;
        return qi_fail(err, QI_ERR_NOMEM, "cpu backend: no memory for a %zu MiB weight slot", bytes >> 20);
    }
    s->bytes = bytes;
    *out = s;
    return QI_OK;
}

static void cpu_slot_free(qi_backend *be, qi_slot *s) {
    (void)be;
    if (s) free(s->buf);
    free(s);
}

static qi_status cpu_stage(qi_backend *be, qi_slot *s, const qi_tensor *src, qi_tensor *dst, int n, qi_error *err) {
    (void)be;
    size_t off = 0;
    for (int i = 0; i < n; i++) off = ((off + 255) & ~(size_t)255) + qi_nbytes(&src[i]);
    if (off > s->bytes)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: %d weights of %zu bytes staged into a slot of %zu", n, off,
                       s->bytes);
    off = 0;
    for (int i = 0; i < n; i++) {
        off = (off + 255) & ~(size_t)255;
        dst[i] = src[i];
        dst[i].data = s->buf + off;
        memcpy(dst[i].data, src[i].data, qi_nbytes(&src[i]));
        off += qi_nbytes(&src[i]);
    }
    return QI_OK;
}

static void cpu_stage_wait(qi_backend *be, qi_slot *s) { (void)be, (void)s; }

static qi_status cpu_upload(qi_backend *be, qi_tensor *t, const void *host, qi_error *err) {
    (void)be;
    if (t->dtype != QI_F32 && t->dtype != QI_I32)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: upload into %s tensor", qi_dtype_name(t->dtype));
    memcpy(t->data, host, qi_nbytes(t));
    return QI_OK;
}

static qi_status cpu_download(qi_backend *be, const qi_tensor *t, void *host, qi_error *err) {
    cpu_impl *c = impl_of(be);
    if (c->err_status != QI_OK) { /* the data would be garbage: report why */
        qi_status st = c->err_status; /* the op's own status: out of memory stays QI_ERR_NOMEM */
        qi_fail(err, st, "%s", c->err_msg);
        c->err_status = QI_OK;
        return qi_fail_ctx(err, st, "cpu backend: download after a failed op");
    }
    if (t->dtype == QI_F32 || t->dtype == QI_I32) {
        memcpy(host, t->data, qi_nbytes(t));
        return QI_OK;
    }
    if (qi_to_f32(host, t->data, t->dtype, (size_t)qi_numel(t)) != 0)
        return qi_fail(err, QI_ERR_ARG, "cpu backend: download of %s tensor", qi_dtype_name(t->dtype));
    return QI_OK;
}

/* Ops run synchronously: sync only reports (and clears) the first failure. */
static qi_status cpu_sync(qi_backend *be, qi_error *err) {
    cpu_impl *c = impl_of(be);
    if (c->err_status == QI_OK) return QI_OK;
    qi_status st = c->err_status;
    c->err_status = QI_OK;
    return qi_fail(err, st, "%s", c->err_msg);
}

/* ---- dense ----------------------------------------------------------------- */

static inline float apply_act(float u, qi_act act) {
    switch (act) {
    case QI_ACT_GELU_TANH: {
        const float k = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * u * (1.0f + tanhf(k * (u + 0.044715f * u * u * u)));
    }
    case QI_ACT_SILU: return u / (1.0f + expf(-u));
    case QI_ACT_GELU_ERF: return 0.5f * u * (1.0f + erff(u * 0.7071067811865476f));
    default: return u;
    }
}

/* The multiplier of weight row r (the scale forms of backend.h). */
static inline float row_scale_of(const qi_tensor *w, int64_t r) {
    switch (w->scale_form) {
    case QI_SCALE_TENSOR: return w->scale;
    case QI_SCALE_ROW: return w->row_scale[r];
    default: return 1.0f;
    }
}

/* w seen as a matrix [rows, cols] (same memory, same scale): conv weights
 * [Co, Ci, kh, kw] as [Co, Ci·kh·kw], vectors as one row. */
static qi_tensor as_matrix(const qi_tensor *w, int64_t rows, int64_t cols) {
    qi_tensor m = *w;
    m.ndim = 2;
    m.ne[0] = rows;
    m.ne[1] = cols;
    return m;
}

/* Dequantises rows [r0, r0+n) of a weight matrix [N, K] to float32 at dst,
 * each row times its scale (one float32 multiply, as the references do).
 * Returns -1 (recorded under `op`) for a type the CPU cannot read. */
static int weight_rows_f32(qi_backend *be, const char *op, const qi_tensor *w, int64_t r0, int64_t n,
                           float *dst) {
    int64_t K = w->ne[w->ndim - 1];
    int64_t row_bytes = qi_row_bytes(w->dtype, K);
    if (!cpu_float_type(w->dtype) || row_bytes < 0) {
        cpu_fail(be, QI_ERR_UNSUPPORTED, "cpu backend: %s: cannot read a weight of type %s (F32, F16, "
                 "BF16, F8_E4M3, F8_E5M2 or a GGUF block type with whole blocks per row)", op,
                 qi_dtype_name(w->dtype));
        return -1;
    }
    qi_to_f32_fn to_f32 = qi_type_traits(w->dtype)->to_f32;
    const char *src = (const char *)w->data + (size_t)(r0 * row_bytes);
#pragma omp parallel for NT(be) schedule(static) if (n > 1)
    for (int64_t r = 0; r < n; r++) {
        float *d = dst + r * K, s = row_scale_of(w, r0 + r);
        to_f32(src + (size_t)(r * row_bytes), d, K);
        if (w->scale_form != QI_SCALE_NONE)
            for (int64_t k = 0; k < K; k++) d[k] *= s;
    }
    return 0;
}

/* A small parameter vector (bias, norm weight: [D]) as float32 in *out, or
 * *out = NULL for v NULL. Returns -1 with the failure recorded under `op`. */
static int vec_f32(qi_backend *be, const char *op, const qi_tensor *v, float **out) {
    *out = NULL;
    if (!v) return 0;
    int64_t n = qi_numel(v);
    float *f = op_alloc(be, op, "a parameter vector as float32", (size_t)n * sizeof(float));
    if (!f) return -1;
    qi_tensor row = as_matrix(v, 1, n);
    if (row.scale_form == QI_SCALE_ROW) row.scale_form = QI_SCALE_NONE; /* never set on vectors */
    if (weight_rows_f32(be, op, &row, 0, 1, f)) {
        free(f);
        return -1;
    }
    *out = f;
    return 0;
}

static void cpu_linear(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                       qi_act act, qi_tensor *y) {
    blas_threads(be);
    int64_t K = x->ne[x->ndim - 1], M = qi_rows(x), N = w->ne[0];
    const float *xs = x->data;
    float *ys = y->data;
    if (w->dtype == QI_F32 && w->scale_form == QI_SCALE_NONE) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, xs, (int)K,
                    w->data, (int)K, 0.0f, ys, (int)N);
    } else {
        /* Band of weight rows converted to float32 at a time: ~64 MB scratch. */
        int64_t band = (int64_t)((64u << 20) / ((size_t)K * 4));
        if (band < 1) band = 1;
        if (band > N) band = N;
        if (!cpu_float_type(w->dtype)) { /* before the scratch: report the real cause */
            weight_rows_f32(be, "linear", w, 0, 0, NULL);
            return;
        }
        float *wf = op_alloc(be, "linear", "a band of weight rows as float32", (size_t)(band * K) * sizeof(float));
        if (!wf) return;
        for (int64_t n0 = 0; n0 < N; n0 += band) {
            int64_t nb = N - n0 < band ? N - n0 : band;
            weight_rows_f32(be, "linear", w, n0, nb, wf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nb, (int)K, 1.0f, xs,
                        (int)K, wf, (int)K, 0.0f, ys + n0, (int)N);
        }
        free(wf);
    }
    if (!b && act == QI_ACT_NONE) return;
    float *bias = NULL;
    if (vec_f32(be, "linear", b, &bias)) return;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float v = ys[m * N + n] + (bias ? bias[n] : 0.0f);
            ys[m * N + n] = apply_act(v, act);
        }
    free(bias);
}

/* Each id's row dequantised straight into the output, ids spread over the
 * threads (weight_rows_f32 of one row runs on the calling thread). */
static void cpu_embedding(qi_backend *be, const qi_tensor *table, const qi_tensor *ids, qi_tensor *out) {
    int64_t D = table->ne[table->ndim - 1], n = qi_numel(ids);
    const int32_t *id = ids->data;
    if (weight_rows_f32(be, "embedding", table, 0, 0, NULL)) return; /* the type, checked once */
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t i = 0; i < n; i++) weight_rows_f32(be, "embedding", table, id[i], 1, (float *)out->data + i * D);
}

/* ---- norms ------------------------------------------------------------------ */

/* y[0..D) = x / sqrt(mean(x²) + eps) · w (w NULL: 1); y may be x. */
static void rms_norm_row(const float *x, const float *w, float eps, int64_t D, float *y) {
    double ss = 0;
    for (int64_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
    for (int64_t i = 0; i < D; i++) y[i] = x[i] * inv * (w ? w[i] : 1.0f);
}

/* Rotates the P pairs of one head vector v by the angles of one table row. */
static void rope_head(float *v, const float *cos_row, const float *sin_row, int64_t P, qi_rope_mode mode) {
    for (int64_t m = 0; m < P; m++) {
        float c = cos_row[m], s = sin_row[m];
        int64_t i0 = mode == QI_ROPE_INTERLEAVED ? 2 * m : m;
        int64_t i1 = mode == QI_ROPE_INTERLEAVED ? 2 * m + 1 : m + P;
        float a = v[i0], bb = v[i1];
        v[i0] = a * c - bb * s;
        v[i1] = a * s + bb * c;
    }
}

static void cpu_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps, qi_tensor *y) {
    int64_t D = x->ne[x->ndim - 1], R = qi_rows(x);
    float *wf;
    if (vec_f32(be, "rms_norm", w, &wf)) return;
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t r = 0; r < R; r++) rms_norm_row(xs + r * D, wf, eps, D, ys + r * D);
    free(wf);
}

static void cpu_layer_norm_mod(qi_backend *be, const qi_tensor *x, const qi_tensor *shift,
                               const qi_tensor *scale, int64_t mod_stride, float eps, qi_tensor *y) {
    int64_t D = x->ne[x->ndim - 1];
    int64_t B = x->ndim >= 3 ? x->ne[0] : 1, L = qi_rows(x) / B;
    const float *xs = x->data, *sh = shift ? shift->data : NULL, *sc = scale ? scale->data : NULL;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++) {
            const float *xr = xs + (b * L + l) * D;
            float *yr = ys + (b * L + l) * D;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < D; i++) mean += xr[i];
            mean /= (double)D;
            for (int64_t i = 0; i < D; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
            var /= (double)D;
            double inv = 1.0 / sqrt(var + eps);
            for (int64_t i = 0; i < D; i++) {
                float n = (float)(((double)xr[i] - mean) * inv);
                float s = sc ? sc[b * mod_stride + i] : 0.0f, t = sh ? sh[b * mod_stride + i] : 0.0f;
                yr[i] = n * (1.0f + s) + t;
            }
        }
}

/* ---- elementwise -------------------------------------------------------------- */

static void cpu_add_gated(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                          const qi_tensor *y) {
    int64_t D = x->ne[x->ndim - 1];
    int64_t B = x->ndim >= 3 ? x->ne[0] : 1, L = qi_rows(x) / B;
    float *xs = x->data;
    const float *ys = y->data, *g = gate ? gate->data : NULL;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t i = 0; i < D; i++) {
                int64_t o = (b * L + l) * D + i;
                xs[o] += (g ? g[b * gate_stride + i] : 1.0f) * ys[o];
            }
}

static void cpu_activate(qi_backend *be, const qi_tensor *x, qi_act act, qi_tensor *y) {
    int64_t n = qi_numel(x);
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t i = 0; i < n; i++) ys[i] = apply_act(xs[i], act);
}

static void cpu_silu_mul(qi_backend *be, const qi_tensor *gate, const qi_tensor *up, qi_tensor *y) {
    int64_t N = y->ne[y->ndim - 1], M = qi_rows(y);
    const float *g = gate->data, *u = up ? up->data : NULL;
    int64_t gstride = up ? N : 2 * N; /* fused [M, 2N] gate_up when up == NULL */
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float gv = g[m * gstride + n];
            float uv = u ? u[m * N + n] : g[m * gstride + N + n];
            ys[m * N + n] = gv / (1.0f + expf(-gv)) * uv;
        }
}

static void cpu_axpby(qi_backend *be, float a, const qi_tensor *x, float b, const qi_tensor *y,
                      qi_tensor *out) {
    int64_t n = qi_numel(out);
    const float *xs = x->data, *ys = y->data;
    float *os = out->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t i = 0; i < n; i++) os[i] = a * xs[i] + b * ys[i];
}

static void cpu_copy_rows(qi_backend *be, const qi_tensor *src, int64_t src_row0, qi_tensor *dst,
                          int64_t dst_row0, int64_t nrows) {
    (void)be;
    int64_t D = src->ne[src->ndim - 1];
    memmove((float *)dst->data + dst_row0 * D, (const float *)src->data + src_row0 * D,
            (size_t)(nrows * D) * sizeof(float));
}

/* ---- attention ---------------------------------------------------------------- */

static void cpu_rope(qi_backend *be, qi_tensor *x, const qi_tensor *cos_tab, const qi_tensor *sin_tab,
                     qi_rope_mode mode) {
    int64_t B = x->ne[0], L = x->ne[1], H = x->ne[2], Dh = x->ne[3], P = Dh / 2;
    float *xs = x->data;
    const float *ct = cos_tab->data, *st = sin_tab->data;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t h = 0; h < H; h++) rope_head(xs + ((b * L + l) * H + h) * Dh, ct + l * P, st + l * P, P, mode);
}

/* Per (batch, head): S = Q·Kᵀ and O = P·V as two BLAS products over strided
 * views (rows of one head are H·Dh apart), softmax in between. Scores are
 * float32 sums from BLAS; the softmax normaliser accumulates in double. */
static void cpu_attention(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                          const qi_tensor *key_mask, int causal, float scale, qi_tensor *out) {
    blas_threads(be);
    int64_t B = q->ne[0], Lq = q->ne[1], H = q->ne[2], Dh = q->ne[3];
    int64_t Lk = k->ne[1], Hkv = k->ne[2], group = H / Hkv;
    const float *qs = q->data, *ks = k->data, *vs = v->data;
    const int32_t *mask = key_mask ? key_mask->data : NULL;
    float *os = out->data;
    /* Queries in blocks so the score matrix stays small at any sequence length. */
    int64_t qblk = Lq < 512 ? Lq : 512;
    /* [qblk, Lk] scores, then probabilities */
    float *S = op_alloc(be, "attention", "a block of scores", (size_t)(qblk * Lk) * sizeof(float));
    if (!S) return;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t q0 = 0; q0 < Lq; q0 += qblk) {
                int64_t nq = Lq - q0 < qblk ? Lq - q0 : qblk, hk = h / group;
                const float *Q = qs + ((b * Lq + q0) * H + h) * Dh, *K = ks + (b * Lk * Hkv + hk) * Dh,
                            *V = vs + (b * Lk * Hkv + hk) * Dh;
                float *O = os + ((b * Lq + q0) * H + h) * Dh;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)Lk, (int)Dh, scale, Q,
                            (int)(H * Dh), K, (int)(Hkv * Dh), 0.0f, S, (int)Lk);
#pragma omp parallel for NT(be) schedule(static)
                for (int64_t r = 0; r < nq; r++) {
                    float *row = S + r * Lk;
                    int64_t i = q0 + r;
                    int64_t last = causal ? i + (Lk - Lq) : Lk - 1; /* last visible key */
                    float mx = -INFINITY;
                    int nan_seen = 0;
                    for (int64_t j = 0; j < Lk; j++) {
                        if (j > last || (mask && !mask[b * Lk + j])) row[j] = -INFINITY;
                        if (row[j] > mx) mx = row[j];
                        nan_seen |= row[j] != row[j];
                    }
                    /* A NaN score is skipped by the max: a row of NaN scores
                     * would look "all masked" and give zeros, hiding a NaN in
                     * the weights as a plausible output. Pass it on instead. */
                    if (mx == -INFINITY && nan_seen) {
                        for (int64_t j = 0; j < Lk; j++) row[j] = NAN;
                        continue;
                    }
                    if (mx == -INFINITY) { /* every key masked: no information, output 0 */
                        memset(row, 0, (size_t)Lk * sizeof(float));
                        continue;
                    }
                    double sum = 0;
                    for (int64_t j = 0; j < Lk; j++) {
                        float p = row[j] == -INFINITY ? 0.0f : expf(row[j] - mx);
                        row[j] = p;
                        sum += p;
                    }
                    float inv = (float)(1.0 / sum);
                    for (int64_t j = 0; j < Lk; j++) row[j] *= inv;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)Dh, (int)Lk, 1.0f, S, (int)Lk,
                            V, (int)(Hkv * Dh), 0.0f, O, (int)(H * Dh));
            }
    free(S);
}

/* Each segment of each batch as its own [1, len, H, Dh] attention: the
 * definition, so the op gives exactly what the per-window calls gave. */
static void cpu_attention_segments(qi_backend *be, const qi_tensor *q, const qi_tensor *k, const qi_tensor *v,
                                   const qi_tensor *seg, float scale, qi_tensor *out) {
    const int64_t B = q->ne[0], L = q->ne[1], H = q->ne[2], Dh = q->ne[3], Hkv = k->ne[2];
    if (seg->dtype != QI_I32 || seg->ndim != 1 || seg->ne[0] < 1 || k->ne[1] != L || v->ne[1] != L) {
        cpu_fail(be, QI_ERR_ARG, "cpu backend: attention_segments needs offsets I32 [S + 1] and as many keys "
                 "as queries (q [B, L, H, Dh], k/v [B, L, Hkv, Dh])");
        return;
    }
    const int32_t *off = seg->data;
    const int64_t S = seg->ne[0] - 1;
    for (int64_t s = 0; s <= S; s++)
        if ((s == 0 && off[0] != 0) || (s > 0 && off[s] < off[s - 1]) || (s == S && off[S] != L)) {
            cpu_fail(be, QI_ERR_ARG, "cpu backend: attention_segments: offset %lld is %d; offsets must rise "
                     "from 0 to L = %lld", (long long)s, off[s], (long long)L);
            return;
        }
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) {
            const int64_t row = b * L + off[s], n = off[s + 1] - off[s];
            if (n == 0) continue;
            qi_tensor qs = *q, ks = *k, vs = *v, os = *out;
            qs.ne[0] = ks.ne[0] = vs.ne[0] = os.ne[0] = 1;
            qs.ne[1] = ks.ne[1] = vs.ne[1] = os.ne[1] = n;
            qs.data = (float *)q->data + row * H * Dh, os.data = (float *)out->data + row * H * Dh;
            ks.data = (float *)k->data + row * Hkv * Dh, vs.data = (float *)v->data + row * Hkv * Dh;
            cpu_attention(be, &qs, &ks, &vs, NULL, 0, scale, &os);
        }
}

/* ---- flow matching -------------------------------------------------------------- */

static void cpu_cfg_combine(qi_backend *be, const qi_tensor *cond, const qi_tensor *uncond, float s,
                            qi_tensor *out) {
    int64_t D = cond->ne[cond->ndim - 1], R = qi_rows(cond);
    const float *c = cond->data, *u = uncond->data;
    float *o = out->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        double nc = 0, nm = 0;
        for (int64_t i = 0; i < D; i++) { /* read c before writing o: out may alias cond */
            float cv = c[r * D + i], comb = u[r * D + i] + s * (cv - u[r * D + i]);
            nc += (double)cv * cv;
            nm += (double)comb * comb;
            o[r * D + i] = comb;
        }
        float ratio = (float)(sqrt(nc) / sqrt(nm));
        for (int64_t i = 0; i < D; i++) o[r * D + i] *= ratio;
    }
}

/* ---- VAE ---------------------------------------------------------------------- */

/* conv2d as im2col + GEMM, in bands of output rows so the column buffer stays
 * near 128 MB even for 1024² images with hundreds of channels. `up`: the
 * input is x upsampled 2× (nearest), read through the gather, never stored;
 * `accumulate`: y += conv instead of y = conv (the bias is added either way). */
static void conv2d_impl(qi_backend *be, const qi_tensor *x, int up, const qi_tensor *w, const qi_tensor *b,
                        int pad, int accumulate, qi_tensor *y) {
    int64_t Ci = x->ne[0], Hx = x->ne[1], Wx = x->ne[2], H = Hx << up, W = Wx << up;
    int64_t Co = w->ne[0], kh = w->ne[2], kw = w->ne[3];
    int64_t Ho = H + 2 * pad - kh + 1, Wo = W + 2 * pad - kw + 1;
    int64_t Kc = Ci * kh * kw;
    const float *xs = x->data;
    float *ys = y->data;
    const char *op = up || accumulate ? "conv2d_fused" : "conv2d";
    if (qi_dtype_is_block(w->dtype)) { /* conv kernels are never block-quantised */
        cpu_fail(be, QI_ERR_UNSUPPORTED, "cpu backend: %s: cannot read a weight of type %s (F32, F16, BF16, "
                 "F8_E4M3 or F8_E5M2)", op, qi_dtype_name(w->dtype));
        return;
    }
    if (!cpu_float_type(w->dtype)) { /* before the scratch: report the real cause */
        weight_rows_f32(be, op, w, 0, 0, NULL);
        return;
    }
    int64_t band = (int64_t)((128u << 20) / ((size_t)Kc * Wo * 4));
    if (band < 1) band = 1;
    if (band > Ho) band = Ho;
    int need_col = !(kh == 1 && kw == 1 && pad == 0 && !up);
    float *wf = op_alloc(be, op, "the weights as float32", (size_t)(Co * Kc) * sizeof(float));
    float *bias = NULL, *col = NULL;
    if (!wf || vec_f32(be, op, b, &bias) ||
        (need_col && !(col = op_alloc(be, op, "a band of im2col columns", (size_t)(Kc * band * Wo) * sizeof(float))))) {
        free(wf);
        free(bias);
        return;
    }
    qi_tensor wm = as_matrix(w, Co, Kc);
    if (weight_rows_f32(be, op, &wm, 0, Co, wf)) {
        free(wf);
        free(bias);
        free(col);
        return;
    }
    for (int64_t r0 = 0; r0 < Ho; r0 += band) {
        int64_t nr = Ho - r0 < band ? Ho - r0 : band, P = nr * Wo;
        const float *B_mat;
        if (col) {
#pragma omp parallel for NT(be) schedule(static)
            for (int64_t kk = 0; kk < Kc; kk++) {
                int64_t ci = kk / (kh * kw), dy = (kk / kw) % kh, dx = kk % kw;
                float *dst = col + kk * P;
                for (int64_t r = 0; r < nr; r++) {
                    int64_t iy = r0 + r + dy - pad;
                    for (int64_t c = 0; c < Wo; c++) {
                        int64_t ix = c + dx - pad;
                        dst[r * Wo + c] = (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                              ? xs[(ci * Hx + (iy >> up)) * Wx + (ix >> up)]
                                              : 0.0f;
                    }
                }
            }
            B_mat = col;
        } else {
            B_mat = xs + r0 * W; /* 1×1: the input rows themselves, row stride H*W */
        }
        /* y[:, r0:r0+nr, :] = wf[Co, Kc] · col[Kc, P]; output row stride Ho*Wo. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Co, (int)P, (int)Kc, 1.0f, wf,
                    (int)Kc, B_mat, col ? (int)P : (int)(H * W), accumulate ? 1.0f : 0.0f, ys + r0 * Wo,
                    (int)(Ho * Wo));
    }
    if (bias) {
#pragma omp parallel for NT(be) schedule(static)
        for (int64_t co = 0; co < Co; co++)
            for (int64_t p = 0; p < Ho * Wo; p++) ys[co * Ho * Wo + p] += bias[co];
    }
    free(col);
    free(bias);
    free(wf);
}

static void cpu_conv2d(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b,
                       int pad, qi_tensor *y) {
    blas_threads(be);
    conv2d_impl(be, x, 0, w, b, pad, 0, y);
}

static void cpu_upsample2x(qi_backend *be, const qi_tensor *x, qi_tensor *y) {
    int64_t C = x->ne[0], H = x->ne[1], W = x->ne[2];
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < 2 * H; r++)
            for (int64_t q = 0; q < 2 * W; q++)
                ys[(c * 2 * H + r) * 2 * W + q] = xs[(c * H + r / 2) * W + q / 2];
}

static void cpu_subsample2x(qi_backend *be, const qi_tensor *x, int offset, qi_tensor *y) {
    int64_t C = y->ne[0], Hx = x->ne[1], Wx = x->ne[2], H = y->ne[1], W = y->ne[2];
    if (x->ndim != 3 || y->ndim != 3 || x->ne[0] != C || (offset != 0 && offset != 1) || 2 * (H - 1) + offset >= Hx ||
        2 * (W - 1) + offset >= Wx) {
        cpu_fail(be, QI_ERR_ARG, "cpu backend: subsample2x needs x [C, H, W], offset 0 or 1 and y [C, Ho, Wo] "
                 "with 2·(Ho − 1) + offset < H and 2·(Wo − 1) + offset < W");
        return;
    }
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < H; r++)
            for (int64_t q = 0; q < W; q++) ys[(c * H + r) * W + q] = xs[(c * Hx + 2 * r + offset) * Wx + 2 * q + offset];
}

static void cpu_channel_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                                 const qi_tensor *bias, qi_tensor *y) {
    int64_t C = x->ne[0], HW = qi_numel(x) / C;
    float *g, *bb;
    if (vec_f32(be, "channel_rms_norm", gamma, &g)) return;
    if (vec_f32(be, "channel_rms_norm", bias, &bb)) {
        free(g);
        return;
    }
    const float *xs = x->data;
    float *ys = y->data;
    float root_c = sqrtf((float)C);
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t p = 0; p < HW; p++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)xs[c * HW + p] * xs[c * HW + p];
        double nrm = sqrt(ss);
        float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
        for (int64_t c = 0; c < C; c++)
            ys[c * HW + p] = xs[c * HW + p] * inv * root_c * (g ? g[c] : 1.0f) + (bb ? bb[c] : 0.0f);
    }
    free(g);
    free(bb);
}

static void cpu_transpose2d(qi_backend *be, const qi_tensor *x, qi_tensor *y) {
    int64_t R = x->ne[0], C = x->ne[1];
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for NT(be) schedule(static)
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++) ys[c * R + r] = xs[r * C + c];
}

/* ---- fused ops: the plain ops' arithmetic in one call ------------------------------ */

/* rms_norm (same float32 steps as cpu_rms_norm), then the rotation of cpu_rope
 * with the destination row's angles, written into dst rows from dst_row0. */
static void cpu_rms_norm_rope(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps,
                              const qi_tensor *cos_tab, const qi_tensor *sin_tab, qi_rope_mode mode,
                              qi_tensor *dst, int64_t dst_row0) {
    int64_t B = x->ne[0], L = x->ne[1], H = x->ne[2], Dh = x->ne[3], P = Dh / 2, Ld = dst->ne[1];
    float *wf;
    if (vec_f32(be, "rms_norm_rope", w, &wf)) return;
    const float *xs = x->data, *ct = cos_tab->data, *st = sin_tab->data;
    float *ds = dst->data;
#pragma omp parallel for NT(be) schedule(static) collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++) {
            int64_t row = dst_row0 + l;
            for (int64_t h = 0; h < H; h++) {
                const float *xr = xs + ((b * L + l) * H + h) * Dh;
                float *o = ds + ((b * Ld + row) * H + h) * Dh; /* may be xr itself */
                rms_norm_row(xr, wf, eps, Dh, o);
                rope_head(o, ct + row * P, st + row * P, P, mode); /* then rotated in place */
            }
        }
    free(wf);
}

static void cpu_channel_rms_norm_act(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                                     const qi_tensor *bias, qi_act act, qi_tensor *y) {
    cpu_channel_rms_norm(be, x, gamma, bias, y);
    if (act != QI_ACT_NONE) cpu_activate(be, y, act, y);
}

/* The residual goes into y first (unless it is y) and the GEMM accumulates
 * onto it; the upsample is read through the im2col gather: no temporaries
 * beyond conv2d's own column band. */
static void cpu_conv2d_fused(qi_backend *be, const qi_tensor *x, int upsample, const qi_tensor *w,
                             const qi_tensor *b, int pad, const qi_tensor *res, qi_tensor *y) {
    if (res && res->data != y->data) memcpy(y->data, res->data, qi_nbytes(y));
    conv2d_impl(be, x, upsample != 0, w, b, pad, res != NULL, y);
}

static void cpu_add_gated_layer_norm_mod(qi_backend *be, qi_tensor *x, const qi_tensor *gate,
                                         int64_t gate_stride, const qi_tensor *y, const qi_tensor *shift,
                                         const qi_tensor *scale, int64_t mod_stride, float eps,
                                         qi_tensor *out) {
    cpu_add_gated(be, x, gate, gate_stride, y);
    cpu_layer_norm_mod(be, x, shift, scale, mod_stride, eps, out);
}

/* ---- table ------------------------------------------------------------------------ */

static void cpu_destroy(qi_backend *be) {
    if (!be) return;
    cpu_impl *c = impl_of(be);
    if (c && c->arena) munmap(c->arena, c->arena_cap);
    free(c);
    free(be);
}

/* What the CPU backend can do, from what its code accepts:
 *
 *   type (host data)     WEIGHT  LINEAR  CONV2D  EMBEDDING
 *   F32 F16 BF16           1       1       1       1      read in place, converted per row band
 *   F8_E4M3 F8_E5M2        1       1       1       1      (times the weight's scale, per tensor
 *                                                         or per row)
 *   Q4_0 … Q6_K            1       1       0       1      read in place, dequantised per row band
 *                                                         (types.c); rows of whole blocks
 *   I32                    1       0       0       0      kept, but no op reads it as weights
 *   I64 U8                 0       0       0       0      `weight` refuses them
 *
 *   GRAPHS 0 (ops run eagerly), RANDOM_WEIGHTS 0, CUDA_RNG 0.
 * The ops check the same predicates (cpu_float_type, qi_dtype_is_block for
 * conv2d) and record an error for anything else, so a 0 here is also what
 * the op reports at sync. */
static int cpu_supports(const qi_backend *be, qi_cap cap, qi_dtype type) {
    (void)be;
    switch (cap) {
    case QI_CAP_WEIGHT: return cpu_float_type(type) || type == QI_I32;
    case QI_CAP_LINEAR:
    case QI_CAP_EMBEDDING: return cpu_float_type(type);
    case QI_CAP_CONV2D: return cpu_float_type(type) && !qi_dtype_is_block(type);
    default: return 0;
    }
}

static qi_status cpu_make_current(qi_backend *be, qi_error *err) {
    (void)err;
    omp_set_num_threads(impl_of(be)->threads);
    return QI_OK;
}

/* Activations are float32 here: the exponent-bits test of finite.c. */
static qi_status cpu_count_nonfinite(qi_backend *be, const qi_tensor *t, int64_t *count, qi_error *err) {
    (void)be;
    *count = 0;
    if (t->dtype != QI_F32)
        return qi_fail(err, QI_ERR_ARG, "count_nonfinite: cpu activations are F32, got %s",
                       qi_dtype_name(t->dtype));
    const uint32_t *u = t->data;
    int64_t n = qi_numel(t), c = 0;
    for (int64_t i = 0; i < n; i++) c += (u[i] & 0x7f800000u) == 0x7f800000u;
    *count = c;
    return QI_OK;
}

static const qi_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .supports = cpu_supports,
    .make_current = cpu_make_current,
    .tensor = cpu_tensor,
    .mark = cpu_mark,
    .reset = cpu_reset,
    .weight = cpu_weight,
    .weight_free = cpu_weight_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .linear = cpu_linear,
    .embedding = cpu_embedding,
    .rms_norm = cpu_rms_norm,
    .layer_norm_mod = cpu_layer_norm_mod,
    .add_gated = cpu_add_gated,
    .activate = cpu_activate,
    .silu_mul = cpu_silu_mul,
    .axpby = cpu_axpby,
    .copy_rows = cpu_copy_rows,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .attention_segments = cpu_attention_segments,
    .cfg_combine = cpu_cfg_combine,
    .conv2d = cpu_conv2d,
    .upsample2x = cpu_upsample2x,
    .subsample2x = cpu_subsample2x,
    .channel_rms_norm = cpu_channel_rms_norm,
    .transpose2d = cpu_transpose2d,
    .rms_norm_rope = cpu_rms_norm_rope,
    .channel_rms_norm_act = cpu_channel_rms_norm_act,
    .conv2d_fused = cpu_conv2d_fused,
    .add_gated_layer_norm_mod = cpu_add_gated_layer_norm_mod,
    .count_nonfinite = cpu_count_nonfinite,
    .weight_size = cpu_weight_size,
    .reserve = cpu_reserve,
    .weight_host = cpu_weight,
    .slot_new = cpu_slot_new,
    .slot_free = cpu_slot_free,
    .stage = cpu_stage,
    .stage_wait = cpu_stage_wait,
};

/* The default activation arena: as much as the machine can hold (physical
 * memory; activations beyond it would only swap), and under `ulimit -v` half
 * of the address space still free (the other half is for the weights' file
 * mappings and the heap). Reserved, not touched: pages cost nothing until an
 * op writes them. */
static size_t default_arena_bytes(void) {
    uint64_t want = qi_host_memory_bytes();
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) want /= 2;
    if (want > (uint64_t)SIZE_MAX / 2) want = (uint64_t)SIZE_MAX / 2;
    return (size_t)want;
}

/* Reserves the arena: `want` bytes, or when the system refuses so much
 * address space at once (a strict overcommit policy, a tight `ulimit -v`),
 * the largest power-of-two fraction of it down to 64 MiB when `shrink`. */
static char *reserve_arena(size_t want, int shrink, size_t *got) {
    const size_t floor = (size_t)64 << 20;
    for (size_t n = want; n > 0; n = shrink && n / 2 >= floor ? n / 2 : 0) {
        void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m != MAP_FAILED) {
            *got = n;
            return m;
        }
    }
    return NULL;
}

qi_status qi_backend_cpu_create(int threads, size_t arena_bytes, qi_backend **out, qi_error *err) {
    *out = NULL;
    qi_status st = qi_backend_check_ops(&cpu_ops, err);
    if (st != QI_OK) return st;
    int cores = omp_get_num_procs();
    if (threads <= 0) threads = cores;
    if (threads > 4 * cores) /* more only slows a run (a 1 s job took 242 s with 4096 threads on 2 cores) */
        return qi_fail(err, QI_ERR_ARG, "cpu backend: %d threads; at most %d (4 x the %d cores here); 0 uses "
                       "every core", threads, 4 * cores, cores);
    int shrink = arena_bytes == 0;
    if (arena_bytes == 0) arena_bytes = default_arena_bytes();
    qi_backend *be = calloc(1, sizeof *be);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return qi_fail(err, QI_ERR_NOMEM, "cpu backend: out of memory");
    }
    c->threads = threads;
    c->arena = reserve_arena(arena_bytes, shrink, &c->arena_cap);
    if (!c->arena) {
        free(be);
        free(c);
        return qi_fail(err, QI_ERR_NOMEM, "cpu backend: cannot reserve %zu MiB of address space for "
                                          "activations%s", arena_bytes >> 20,
                       shrink ? " (nor 64 MiB): raise `ulimit -v`" : "");
    }
    /* OpenBLAS keeps one process-wide thread count; match ours. */
    openblas_set_num_threads(threads);
    be->ops = &cpu_ops;
    be->act_dtype = QI_F32;
    be->impl = c;
    be->arena_bytes = c->arena_cap;
    *out = be;
    return QI_OK;
}

#ifndef QI_WITH_CUDA
qi_status qi_backend_cuda_create(int device, size_t arena_bytes, qi_backend **out, qi_error *err) {
    (void)device;
    (void)arena_bytes;
    *out = NULL;
    return qi_fail(err, QI_ERR_UNSUPPORTED,
                   "this build has no CUDA backend; rebuild on a machine with nvcc (cmake -DQI_CUDA=ON)");
}
#endif

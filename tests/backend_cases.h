/*
 * backend_cases.h — the op cases every backend is tested on, and the pieces
 * the backend tests share (random inputs, tensors from host data, comparing).
 *
 * A case is one op of backend.h at one shape with one set of options; the
 * table at the end lists them, each with what it covers. A case builds its
 * inputs on the host with values every backend holds exactly (activations
 * rounded to bf16, the CUDA backend's activation type; weights as file
 * bytes), makes them on a backend, runs the op there and reads back the
 * tensors the op writes (outputs start as NaN, so an element never written
 * shows). A result is judged three ways (test_backend_ops.c):
 *   ref   the op's formula from backend.h, in double precision on the host
 *         (for the big shapes on a sample of rows: see bc_row_checked);
 *   twin  the same result computed another way on the same backend: for a
 *         fused op the composition of plain ops it replaces, as backend.h
 *         defines it; for an in-place call the out-of-place one;
 *   cpu   another backend's output against the CPU backend's.
 * Tolerances live with each op (bc_tols) and are explained at their
 * definitions. test_cuda_kernels.c runs the same cases with each CUDA kernel
 * variant forced.
 */
#ifndef QI_BACKEND_CASES_H
#define QI_BACKEND_CASES_H

#include "backend/backend.h"
#include "base/quant.h" /* GGUF block weights */
#include "base/types.h"
#include "test.h"

/* ---- random inputs --------------------------------------------------------------- */

static uint64_t bc_rng_state;

/* Uniform in [-1, 1) (splitmix64). */
static inline float bc_frand(void) {
    bc_rng_state += 0x9e3779b97f4a7c15ull;
    uint64_t z = bc_rng_state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static inline float bc_bf16_round(float f) { return qi_bf16_to_f32(qi_f32_to_bf16(f)); }

static inline void bc_must(qi_status st, const char *what, const qi_error *err) {
    if (st != QI_OK) {
        fprintf(stderr, "fatal: %s: %s\n", what, err->msg);
        exit(1);
    }
}

/* ---- tolerances -------------------------------------------------------------------
 * Against the double-precision formula (CPU backend: float32 activations):
 * storing a float32 result rounds by at most 2^-24 ≈ 6e-8 relative; sums of K
 * float32 terms add about √K·2^-24 for random signs (2^-24·K at worst).
 * BC_TOL_F32 = 1e-5 ≈ 170·2^-24 covers every reduction below (K ≤ 12288:
 * √K·2^-24 ≈ 7e-6 even before the blocking of sgemm shortens the sums) and the
 * few-ulp errors of expf / tanhf; rotations (two products and a sum, RoPE) get
 * BC_TOL_F32_ROT = 1e-6; copies are exact.
 *
 * Against the CPU backend (CUDA: bf16 activations): one bf16 rounding of an
 * output is at most 2^-9 relative per element, so relative L2 ≤ 2^-9 = 1.95e-3. */
#define BC_TOL_F32 1e-5
#define BC_TOL_F32_ROT 1e-6
/* ops computed in float32 from the (identical) bf16 inputs, one rounding on store */
#define BC_TOL_EXACT 2.5e-3
/* GEMMs: float32 accumulation in another order (~1e-6) plus the output rounding
 * (activations cuBLASLt cannot fuse, SiLU, are applied to the float32 product:
 * still one rounding); f32 / fp8 / GGUF-block file weights are exact or rounded
 * to bf16 once (≈ 1.1e-3 rms relative, with the output's ≈ 1.1e-3: ≈ 1.6e-3) */
#define BC_TOL_GEMM 3e-3
/* attention: P is rounded to bf16 before P·V (2^-9 relative per weight, averaging
 * down over keys), plus the output rounding */
#define BC_TOL_ATTN 5e-3
/* a bf16 input read back after another bf16 op (x += g·y rounds x twice) */
#define BC_TOL_TWO 4e-3
/* a fused op against its plain-op composition on a bf16 backend: the
 * composition rounds each intermediate to bf16 (two or three roundings of
 * RMS 2^-9/√3 ≈ 1.1e-3 each against the fused op's one): ~2.3e-3 expected */
#define BC_TOL_TWIN 4e-3

/* A case's tolerances (relative L2): ref = CPU against the double formula;
 * dev = another backend against the CPU; twin_cpu / twin_dev = a result
 * against its twin on the CPU / another backend (0: bit for bit). */
typedef struct bc_tols {
    double ref, dev, twin_cpu, twin_dev;
} bc_tols;

/* How 3×3 convolutions run on CUDA while a case runs (test_cuda_kernels.c
 * forces each; tolerances depend on it): 0 auto, 1 implicit GEMM, 2 im2col. */
static int bc_conv_mode;

/* ---- a case's host tensors ------------------------------------------------------- */

typedef enum bc_role {
    BC_NONE = 0, /* absent (an optional argument passed as NULL) */
    BC_ACT,      /* activation: the backend's activation dtype */
    BC_WEIGHT,   /* a weight made from file bytes of type wdt */
    BC_F32,      /* an F32 tensor (RoPE tables, a float32 conv kernel) */
    BC_I32       /* an I32 tensor (token ids, key masks) */
} bc_role;

#define BC_MAX_T 8

typedef struct bc_host {
    bc_role role;
    qi_dtype wdt;  /* BC_WEIGHT: the file's dtype */
    float scale;   /* BC_WEIGHT: one scale for the tensor (fp8), else 1 */
    int ndim;
    int64_t ne[4];
    int64_t n;     /* element count */
    float *val;    /* the values the op reads (weights decoded, scaled); NULL: starts as NaN */
    void *bytes;   /* BC_WEIGHT: the file bytes; BC_I32: int32 values */
    int out;       /* the op writes it: read back and judged */
} bc_host;

struct bc_op;

typedef struct bc_case {
    const struct bc_op *op;
    int64_t p[8];     /* the op's parameters, in the order of its BC_* macro */
    double f[2];      /* float parameters (fp8 scale, axpby's a and b, cfg scale) */
    int odd_ptr;      /* activations start one element into their memory (unaligned) */
    const char *why;  /* what the case covers */
} bc_case;

typedef struct bc_inst {
    const bc_case *c;
    bc_host t[BC_MAX_T];
} bc_inst;

typedef struct bc_op {
    const char *name;
    void (*build)(bc_inst *in);                                   /* host tensors */
    void (*run)(qi_backend *be, const bc_inst *in, qi_tensor *t);  /* the op on t[i] made from in->t[i] */
    void (*twin)(qi_backend *be, const bc_inst *in, qi_tensor *t); /* the same result another way, or NULL */
    int (*twin_for)(const bc_case *c); /* which cases have the twin (NULL: all) */
    void (*ref)(const bc_inst *in, int i, double *r);             /* formula for output i (NaN: unchecked) */
    void (*label)(const bc_case *c, char *buf, size_t cap);
    bc_tols tols;
    void (*adjust)(const bc_inst *in, int i, bc_tols *t); /* per-output / per-case tolerances, or NULL */
    int row_metric; /* error = worst row's relative L2 (the op's claim is per row) */
} bc_op;

static inline bc_host *bc_add(bc_inst *in, int i, bc_role role, int ndim, int64_t a, int64_t b, int64_t c,
                              int64_t d) {
    bc_host *h = &in->t[i];
    const int64_t ne[4] = {a, b, c, d};
    h->role = role;
    h->ndim = ndim;
    h->n = 1;
    h->scale = 1.0f;
    for (int k = 0; k < ndim; k++) h->n *= h->ne[k] = ne[k];
    return h;
}

/* An activation of random bf16-representable values in [-amp, amp). */
static inline bc_host *bc_act(bc_inst *in, int i, float amp, int ndim, int64_t a, int64_t b, int64_t c,
                              int64_t d) {
    bc_host *h = bc_add(in, i, BC_ACT, ndim, a, b, c, d);
    h->val = malloc((size_t)h->n * sizeof(float));
    for (int64_t k = 0; k < h->n; k++) h->val[k] = bc_bf16_round(amp * bc_frand());
    return h;
}

/* An output (starts as NaN on every backend). */
static inline bc_host *bc_out(bc_inst *in, int i, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    bc_host *h = bc_add(in, i, BC_ACT, ndim, a, b, c, d);
    h->out = 1;
    return h;
}

/* A weight of random values in [-amp, amp) stored as wdt (BF16, F32, or
 * F8_E4M3: random bytes, NaN codes avoided, times `scale`). */
static inline bc_host *bc_weight(bc_inst *in, int i, qi_dtype wdt, float amp, float scale, int ndim, int64_t a,
                                 int64_t b, int64_t c, int64_t d) {
    bc_host *h = bc_add(in, i, BC_WEIGHT, ndim, a, b, c, d);
    h->wdt = wdt;
    h->scale = scale;
    h->val = malloc((size_t)h->n * sizeof(float));
    if (qi_dtype_is_block(wdt)) { /* GGUF blocks: random values quantised; the op reads what they decode to */
        h->bytes = malloc((size_t)qi_row_bytes(wdt, h->n));
        for (int64_t k = 0; k < h->n; k++) h->val[k] = amp * bc_frand();
        if (qi_quantize(wdt, h->val, h->bytes, h->n) != 0 || qi_to_f32(h->val, h->bytes, wdt, (size_t)h->n) != 0) {
            fprintf(stderr, "fatal: cannot quantise a test weight to %s\n", qi_dtype_name(wdt));
            exit(1);
        }
        return h;
    }
    h->bytes = malloc((size_t)h->n * qi_dtype_size(wdt));
    for (int64_t k = 0; k < h->n; k++) {
        float f = amp * bc_frand();
        if (wdt == QI_BF16) {
            ((uint16_t *)h->bytes)[k] = qi_f32_to_bf16(f);
            h->val[k] = qi_bf16_to_f32(((uint16_t *)h->bytes)[k]);
        } else if (wdt == QI_F32) {
            ((float *)h->bytes)[k] = h->val[k] = f;
        } else { /* fp8 e4m3: 0x7f and 0xff are NaN */
            uint8_t v = (uint8_t)(bc_frand() * 127.0f + 128.0f);
            if ((v & 0x7f) == 0x7f) v ^= 1;
            ((uint8_t *)h->bytes)[k] = v;
            h->val[k] = qi_f8e4m3_to_f32(v) * scale;
        }
    }
    return h;
}

/* An F32 tensor (values filled by the caller). */
static inline bc_host *bc_f32(bc_inst *in, int i, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    bc_host *h = bc_add(in, i, BC_F32, ndim, a, b, c, d);
    h->val = malloc((size_t)h->n * sizeof(float));
    return h;
}

/* An I32 tensor (values filled by the caller). */
static inline int32_t *bc_i32(bc_inst *in, int i, int ndim, int64_t a, int64_t b) {
    bc_host *h = bc_add(in, i, BC_I32, ndim, a, b, 0, 0);
    h->bytes = malloc((size_t)h->n * sizeof(int32_t));
    return h->bytes;
}

/* cos / sin tables [rows, pairs] of random angles in [-π, π). */
static inline void bc_rope_tables(bc_inst *in, int ic, int is, int64_t rows, int64_t pairs) {
    bc_host *c = bc_f32(in, ic, 2, rows, pairs, 0, 0), *s = bc_f32(in, is, 2, rows, pairs, 0, 0);
    for (int64_t k = 0; k < rows * pairs; k++) {
        float a = 3.14159f * bc_frand();
        c->val[k] = cosf(a);
        s->val[k] = sinf(a);
    }
}

static inline void bc_inst_free(bc_inst *in) {
    for (int i = 0; i < BC_MAX_T; i++) {
        free(in->t[i].val);
        free(in->t[i].bytes);
    }
    memset(in, 0, sizeof *in);
}

/* The case's host tensors, from a seed of its own (so a filter or another
 * backend list gives every case the same data). */
static inline void bc_inst_build(const bc_case *c, uint64_t seed, bc_inst *in) {
    memset(in, 0, sizeof *in);
    in->c = c;
    bc_rng_state = seed;
    c->op->build(in);
}

/* ---- the case on a backend ------------------------------------------------------- */

/* t[i] on be from in->t[i]; an output starts as NaN. Weights are freed by bc_release. */
static inline qi_status bc_make(qi_backend *be, const bc_inst *in, qi_tensor *t, qi_error *err) {
    qi_status st = QI_OK;
    memset(t, 0, BC_MAX_T * sizeof *t);
    for (int i = 0; i < BC_MAX_T && st == QI_OK; i++) {
        const bc_host *h = &in->t[i];
        if (h->role == BC_NONE) continue;
        if (h->role == BC_WEIGHT) {
            qi_weight_scale sc = {h->scale != 1.0f ? QI_SCALE_TENSOR : QI_SCALE_NONE, h->scale, NULL};
            st = be->ops->weight(be, &t[i], h->wdt, h->ndim, h->ne, h->bytes, &sc, err);
            continue;
        }
        qi_dtype dt = h->role == BC_ACT ? be->act_dtype : h->role == BC_F32 ? QI_F32 : QI_I32;
        int odd = h->role == BC_ACT && in->c->odd_ptr;
        int64_t ne[4] = {h->ne[0], h->ne[1], h->ne[2], h->ne[3]};
        if (odd) { /* one element more, then the data pointer one element on */
            int64_t flat = h->n + 1;
            if ((st = be->ops->tensor(be, &t[i], dt, 1, &flat, err)) != QI_OK) break;
            t[i].data = (char *)t[i].data + qi_dtype_size(dt);
            t[i].ne[0] = h->n;
            t[i] = qi_view(&t[i], h->ndim, ne);
        } else if ((st = be->ops->tensor(be, &t[i], dt, h->ndim, ne, err)) != QI_OK) {
            break;
        }
        if (h->role == BC_I32) {
            st = be->ops->upload(be, &t[i], h->bytes, err);
        } else if (h->val) {
            st = be->ops->upload(be, &t[i], h->val, err);
        } else {
            float *nan = malloc((size_t)h->n * sizeof(float));
            for (int64_t k = 0; k < h->n; k++) nan[k] = NAN;
            st = be->ops->upload(be, &t[i], nan, err);
            free(nan);
        }
    }
    return st;
}

static inline void bc_release(qi_backend *be, const bc_inst *in, qi_tensor *t) {
    for (int i = 0; i < BC_MAX_T; i++)
        if (in->t[i].role == BC_WEIGHT && t[i].data) be->ops->weight_free(be, &t[i]);
}

/* Runs the case's op (twin 0) or its twin (1) on be; out[i] = the contents of
 * every output tensor i afterwards (malloc'd; others NULL). The backend's
 * arena is as before. QI_OK, or the op's error (reported by sync) in err. */
static inline qi_status bc_run(qi_backend *be, const bc_inst *in, int twin, float **out, qi_error *err) {
    qi_tensor t[BC_MAX_T];
    size_t mark = be->ops->mark(be);
    memset(out, 0, BC_MAX_T * sizeof *out);
    qi_status st = bc_make(be, in, t, err);
    if (st == QI_OK) {
        (twin ? in->c->op->twin : in->c->op->run)(be, in, t);
        st = be->ops->sync(be, err);
    }
    for (int i = 0; i < BC_MAX_T && st == QI_OK; i++) {
        if (!in->t[i].out) continue;
        out[i] = malloc((size_t)in->t[i].n * sizeof(float));
        st = be->ops->download(be, &t[i], out[i], err);
    }
    bc_release(be, in, t);
    be->ops->reset(be, mark);
    return st;
}

static inline void bc_outs_free(float **out) {
    for (int i = 0; i < BC_MAX_T; i++) free(out[i]), out[i] = NULL;
}

/* ---- comparing --------------------------------------------------------------------- */

/* Relative L2 error of a[0..n) against a reference (doubles rd, or floats rf),
 * over the elements whose reference is not NaN; per row of `row` elements and
 * the worst row taken when row > 0. NaN when a has a NaN anywhere (an
 * element never written), or when nothing was compared. */
static inline double bc_err(const float *a, const double *rd, const float *rf, int64_t n, int64_t row) {
    double worst = 0, num = 0, den = 0;
    int64_t compared = 0;
    for (int64_t i = 0; i < n; i++) {
        if (a[i] != a[i]) return NAN;
        double r = rd ? rd[i] : (double)rf[i];
        if (r == r) {
            num += (a[i] - r) * (a[i] - r);
            den += r * r;
            compared++;
        }
        if (row > 0 && (i + 1) % row == 0) {
            double e = den > 0 ? sqrt(num / den) : sqrt(num);
            if (e > worst || e != e) worst = e;
            num = den = 0;
        }
    }
    if (compared == 0) return NAN;
    return row > 0 ? worst : den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Whether row r of `rows` is checked against a double formula costing
 * `cost` operations per row: all of them while the whole costs at most ~2·10⁸
 * operations, else an even sample (first and last rows included). */
static inline int bc_row_checked(int64_t r, int64_t rows, double cost) {
    double total = (double)rows * cost, budget = 2e8;
    if (total <= budget) return 1;
    int64_t stride = (int64_t)(total / budget) + 1;
    return r % stride == 0 || r == rows - 1;
}

static inline void bc_fill_nan(double *r, int64_t n) {
    for (int64_t i = 0; i < n; i++) r[i] = NAN;
}

static inline double bc_act_f(qi_act a, double s) {
    if (a == QI_ACT_GELU_TANH) return 0.5 * s * (1 + tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
    if (a == QI_ACT_SILU) return s / (1 + exp(-s));
    if (a == QI_ACT_GELU_ERF) return 0.5 * s * (1 + erf(s * 0.7071067811865476));
    return s;
}

static inline const char *bc_act_name(qi_act a) {
    return a == QI_ACT_GELU_TANH ? " gelu" : a == QI_ACT_SILU ? " silu" : a == QI_ACT_GELU_ERF ? " gelu-erf" : "";
}

/* A view of rows [B, D] of a modulation tensor [B, 6D] at chunk `chunk`
 * (row stride 6D, as the DiT passes them). */
static inline qi_tensor bc_mod_chunk(const qi_tensor *mod, int64_t B, int64_t D, int chunk) {
    qi_tensor t = *mod;
    t.ndim = 2;
    t.ne[0] = B;
    t.ne[1] = D;
    t.data = (char *)mod->data + (size_t)(chunk * D) * qi_dtype_size(mod->dtype);
    return t;
}

/* An activation tensor from the arena (twins' temporaries); a failure here is
 * fatal: the arenas are sized for the largest case. */
static inline qi_tensor bc_tmp(qi_backend *be, int ndim, const int64_t *ne) {
    qi_tensor t;
    qi_error err;
    bc_must(be->ops->tensor(be, &t, be->act_dtype, ndim, ne, &err), "temporary tensor", &err);
    return t;
}

/* ---- tensors straight on a backend (graph and timing tests) -------------------------- */

/* An activation of uniform values in [-amp, amp). */
static inline qi_tensor bc_dev_rand(qi_backend *be, int ndim, const int64_t *ne, float amp) {
    qi_tensor t;
    qi_error err;
    bc_must(be->ops->tensor(be, &t, be->act_dtype, ndim, ne, &err), "tensor", &err);
    int64_t n = qi_numel(&t);
    float *h = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = amp * bc_frand();
    bc_must(be->ops->upload(be, &t, h, &err), "upload", &err);
    free(h);
    return t;
}

/* A bf16 weight of uniform values in [-amp, amp); *keep = its host bytes
 * (free them after weight_free: the CPU backend points into them). */
static inline qi_tensor bc_dev_weight(qi_backend *be, int ndim, const int64_t *ne, float amp, uint16_t **keep) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    uint16_t *h = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) h[i] = qi_f32_to_bf16(amp * bc_frand());
    qi_tensor w;
    qi_error err;
    bc_must(be->ops->weight(be, &w, QI_BF16, ndim, ne, h, NULL, &err), "weight", &err);
    *keep = h;
    return w;
}

/* Fills t with NaN (so an element a later op does not write shows). */
static inline void bc_dev_poison(qi_backend *be, qi_tensor *t) {
    int64_t n = qi_numel(t);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    qi_error err;
    bc_must(be->ops->upload(be, t, nan, &err), "poison", &err);
    free(nan);
}

#define BC_T(i) (in->t[i].role ? &t[i] : NULL) /* an optional argument */
#define BC_V(i) (in->t[i].val)

#include "backend_cases_ops.h"

#endif

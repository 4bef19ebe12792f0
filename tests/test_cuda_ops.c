/*
 * test_cuda_ops.c — every op of the CUDA backend against the CPU backend (the
 * reference semantics) on random inputs over a sweep of shapes, up to the
 * real model's sizes; then device timings of the ops that matter.
 *
 * Both backends get the same inputs: random floats rounded to bf16 (what the
 * CUDA backend stores), weights as the same bf16/f32/fp8 file bytes. The
 * CUDA outputs are poisoned with NaN first, so an element never written fails
 * the comparison. Errors are relative L2, ‖gpu − cpu‖ / ‖cpu‖, against a
 * tolerance written next to each op with its reason. Needs a GPU: label cuda.
 *
 * Env: QI_TEST_SEED (default: time), QI_CUDA_BENCH=0 skips the timings,
 * QI_TEST_WGMMA=0 leaves the Hopper attention kernels out, QI_TEST_ONLY=attention
 * runs only the attention claims and timings, QI_TEST_ONLY=fused only the fused
 * ops' (conv2d_fused, channel_rms_norm_act, rms_norm_rope; conv2d's implicit GEMM
 * is covered by test_conv2d).
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "test.h"

static qi_backend *cpu, *gpu;
static qi_error err;

/* ---- tolerances (relative L2) and why --------------------------------------------
 * One bf16 rounding of the output is at most 2^-9 relative per element, so
 * its relative L2 is at most 2^-9 = 1.95e-3. */
/* ops computed in float32 from the (identical) bf16 inputs, one rounding on store */
#define TOL_EXACT 2.5e-3
/* GEMMs: float32 accumulation in another order (~1e-6) plus the output rounding
 * (activations cuBLASLt cannot fuse, SiLU, are applied to the float32 product:
 * still one rounding); f32 / fp8 file weights are exact or rounded to bf16 once */
#define TOL_GEMM 3e-3
/* attention: P is rounded to bf16 before P·V (2^-9 relative per weight, averaging
 * down over keys), plus the output rounding */
#define TOL_ATTN 5e-3
/* a bf16 input read back after another bf16 op (x += g·y rounds x twice) */
#define TOL_TWO 4e-3

/* ---- random inputs -------------------------------------------------------------- */

static uint64_t rng_state;
static float frand(void) { /* uniform [-1, 1) */
    rng_state += 0x9e3779b97f4a7c15ull;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float bf16_round(float f) { return qi_bf16_to_f32(qi_f32_to_bf16(f)); }

static float *rand_host(int64_t n, float amp) {
    float *h = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = bf16_round(amp * frand());
    return h;
}

/* ---- paired tensors: the same data on the CPU and the GPU ------------------------- */

typedef struct pair {
    qi_tensor c, g;
    void *host; /* weights: the file bytes both backends were given (CPU keeps pointing here) */
} pair;

static void must(qi_status st, const char *what) {
    if (st != QI_OK) {
        fprintf(stderr, "fatal: %s: %s\n", what, err.msg);
        exit(1);
    }
}

/* Activation on both from host floats (already bf16-representable). */
static pair act(int ndim, const int64_t *ne, const float *host) {
    pair p = {0};
    must(cpu->ops->tensor(cpu, &p.c, QI_F32, ndim, ne, &err), "cpu tensor");
    must(gpu->ops->tensor(gpu, &p.g, QI_BF16, ndim, ne, &err), "gpu tensor");
    if (host) {
        must(cpu->ops->upload(cpu, &p.c, host, &err), "cpu upload");
        must(gpu->ops->upload(gpu, &p.g, host, &err), "gpu upload");
    }
    return p;
}
static pair act_rand(int ndim, const int64_t *ne, float amp) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    float *h = rand_host(n, amp);
    pair p = act(ndim, ne, h);
    free(h);
    return p;
}
/* An output: CPU plain, GPU filled with NaN so unwritten elements show. */
static pair out_poisoned(int ndim, const int64_t *ne) {
    pair p = act(ndim, ne, NULL);
    int64_t n = qi_numel(&p.g);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    must(gpu->ops->upload(gpu, &p.g, nan, &err), "poison");
    free(nan);
    return p;
}
/* Same-typed tensor on both sides for non-float data (F32 tables, I32 ids/masks). */
static pair typed(qi_dtype dt, int ndim, const int64_t *ne, const void *host) {
    pair p = {0};
    must(cpu->ops->tensor(cpu, &p.c, dt, ndim, ne, &err), "cpu tensor");
    must(gpu->ops->tensor(gpu, &p.g, dt, ndim, ne, &err), "gpu tensor");
    must(cpu->ops->upload(cpu, &p.c, host, &err), "cpu upload");
    must(gpu->ops->upload(gpu, &p.g, host, &err), "gpu upload");
    return p;
}
/* Weight from random values stored in file dtype dt (BF16, F32 or F8_E4M3). */
static pair weight(qi_dtype dt, int ndim, const int64_t *ne, float amp) {
    pair p = {0};
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    p.host = malloc((size_t)n * qi_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        float f = amp * frand();
        if (dt == QI_BF16) ((uint16_t *)p.host)[i] = qi_f32_to_bf16(f);
        else if (dt == QI_F32) ((float *)p.host)[i] = f;
        else { /* fp8 e4m3: random bytes, no NaN (0x7f, 0xff) */
            uint8_t v = (uint8_t)(frand() * 127.0f + 128.0f);
            if ((v & 0x7f) == 0x7f) v ^= 1;
            ((uint8_t *)p.host)[i] = v;
        }
    }
    must(cpu->ops->weight(cpu, &p.c, dt, ndim, ne, p.host, &err), "cpu weight");
    must(gpu->ops->weight(gpu, &p.g, dt, ndim, ne, p.host, &err), "gpu weight");
    return p;
}
static void weight_free(pair *p) {
    cpu->ops->weight_free(cpu, &p->c);
    gpu->ops->weight_free(gpu, &p->g);
    free(p->host);
}

/* ---- comparing and the table --------------------------------------------------------- */

typedef struct row {
    char op[40], shape[72];
    double err, tol;
} row;
static row rows[160];
static int nrows;

static double rel_err(const pair *p) {
    int64_t n = qi_numel(&p->c);
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    must(cpu->ops->sync(cpu, &err), "cpu sync");
    if (gpu->ops->sync(gpu, &err) != QI_OK) { /* a failed op fails its claim, not the program */
        printf("  gpu op failed: %s\n", err.msg);
        free(a);
        free(b);
        return NAN;
    }
    must(gpu->ops->download(gpu, &p->g, a, &err), "gpu download");
    must(cpu->ops->download(cpu, &p->c, b, &err), "cpu download");
    double e = qi_rel_l2(a, b, (size_t)n);
    for (int64_t i = 0; i < n; i++)
        if (a[i] != a[i]) e = NAN; /* NaN anywhere (an unwritten element) fails */
    free(a);
    free(b);
    return e;
}

static void claim(const char *op, const char *shape, double e, double tol) {
    printf("  %-22s %-44s rel L2 = %.3e (tol %.1e)\n", op, shape, e, tol);
    CHECK(e <= tol, "%s %s: rel L2 %.3e over tolerance %.1e", op, shape, e, tol);
    if (nrows < (int)QI_ARRAY_LEN(rows)) {
        row *r = &rows[nrows++];
        snprintf(r->op, sizeof r->op, "%s", op);
        snprintf(r->shape, sizeof r->shape, "%s", shape);
        r->err = e;
        r->tol = tol;
    }
}

static size_t cmark, gmark;
static void begin(void) {
    cmark = cpu->ops->mark(cpu);
    gmark = gpu->ops->mark(gpu);
}
static void end(void) {
    cpu->ops->reset(cpu, cmark);
    gpu->ops->reset(gpu, gmark);
}

/* A view of rows [.., D] of a modulation tensor [B, 6D] at chunk `chunk`. */
static qi_tensor mod_chunk(const qi_tensor *mod, int64_t B, int64_t D, int chunk) {
    qi_tensor t = *mod;
    t.ndim = 2;
    t.ne[0] = B;
    t.ne[1] = D;
    t.data = (char *)mod->data + (size_t)(chunk * D) * qi_dtype_size(mod->dtype);
    return t;
}

static qi_tensor g_rand(int ndim, const int64_t *ne, float amp);
static qi_tensor g_weight(int ndim, const int64_t *ne, float amp, uint16_t **keep);
static void poison(qi_tensor *g);

/* ---- claims ---------------------------------------------------------------------------- */

static void one_linear(int64_t M, int64_t K, int64_t N, int bias, qi_act act_kind, qi_dtype wdt,
                       float wscale) {
    begin();
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, bs[1] = {N}, ys[2] = {M, N};
    pair x = act_rand(2, xs, 1.0f);
    pair w = weight(wdt, 2, ws, wdt == QI_F8_E4M3 ? 1.0f : 1.0f / sqrtf((float)K));
    w.c.scale = w.g.scale = wscale;
    pair b = {0};
    if (bias) b = weight(QI_BF16, 1, bs, 0.5f);
    pair y = out_poisoned(2, ys);
    cpu->ops->linear(cpu, &x.c, &w.c, bias ? &b.c : NULL, act_kind, &y.c);
    gpu->ops->linear(gpu, &x.g, &w.g, bias ? &b.g : NULL, act_kind, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "%lldx%lldx%lld %s%s%s", (long long)M, (long long)K, (long long)N,
             qi_dtype_name(wdt), bias ? " +bias" : "",
             act_kind == QI_ACT_GELU_TANH ? " gelu" : act_kind == QI_ACT_SILU ? " silu" : "");
    claim("linear", shape, rel_err(&y), TOL_GEMM);
    weight_free(&w);
    if (bias) weight_free(&b);
    end();
}

static void test_linear(void) {
    one_linear(7, 40, 24, 0, QI_ACT_NONE, QI_BF16, 1.0f);      /* odd sizes: unaligned rows */
    one_linear(64, 256, 384, 1, QI_ACT_NONE, QI_BF16, 1.0f);
    one_linear(33, 128, 96, 1, QI_ACT_GELU_TANH, QI_BF16, 1.0f); /* GELU_BIAS epilogue */
    one_linear(33, 128, 96, 0, QI_ACT_GELU_TANH, QI_BF16, 1.0f); /* GELU epilogue */
    one_linear(33, 128, 96, 0, QI_ACT_SILU, QI_BF16, 1.0f);      /* SiLU kernel after */
    one_linear(129, 64, 72, 1, QI_ACT_SILU, QI_BF16, 1.0f);
    one_linear(50, 96, 80, 1, QI_ACT_NONE, QI_F32, 1.0f);        /* f32 file weights -> bf16 */
    one_linear(50, 96, 80, 0, QI_ACT_NONE, QI_F8_E4M3, 0.01f);   /* fp8 with a scale */
    one_linear(2, 3072, 18432, 1, QI_ACT_NONE, QI_BF16, 1.0f);   /* DiT modulation, B=2 */
    one_linear(4224, 3072, 3072, 1, QI_ACT_NONE, QI_BF16, 1.0f); /* DiT q/k/v/out */
    one_linear(4224, 3072, 12288, 1, QI_ACT_GELU_TANH, QI_BF16, 1.0f); /* DiT MLP up */
    one_linear(4224, 12288, 3072, 1, QI_ACT_NONE, QI_BF16, 1.0f);      /* DiT MLP down */
    one_linear(167, 3584, 18944, 0, QI_ACT_NONE, QI_BF16, 1.0f);       /* TE MLP gate/up */
}

static void test_embedding(void) {
    begin();
    int64_t ts[2] = {1000, 64}, is[1] = {37}, os[2] = {37, 64};
    pair table = weight(QI_BF16, 2, ts, 1.0f);
    int32_t ids[37];
    for (int i = 0; i < 37; i++) ids[i] = (int32_t)((frand() + 1.0f) * 499.9f);
    ids[0] = 0, ids[1] = 999;
    pair id = typed(QI_I32, 1, is, ids);
    pair out = out_poisoned(2, os);
    cpu->ops->embedding(cpu, &table.c, &id.c, &out.c);
    gpu->ops->embedding(gpu, &table.g, &id.g, &out.g);
    claim("embedding", "V 1000, D 64, 37 ids", rel_err(&out), TOL_EXACT);
    weight_free(&table);
    end();
}

static void one_rms(int64_t R, int64_t D, int with_w, int in_place) {
    begin();
    int64_t xs[2] = {R, D}, wsz[1] = {D};
    pair x = act_rand(2, xs, 2.0f);
    pair w = {0};
    if (with_w) w = weight(QI_BF16, 1, wsz, 1.0f);
    pair y = in_place ? x : out_poisoned(2, xs);
    cpu->ops->rms_norm(cpu, &x.c, with_w ? &w.c : NULL, 1e-6f, &y.c);
    gpu->ops->rms_norm(gpu, &x.g, with_w ? &w.g : NULL, 1e-6f, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld]%s%s", (long long)R, (long long)D, with_w ? " w" : "",
             in_place ? " in place" : "");
    claim("rms_norm", shape, rel_err(&y), TOL_EXACT);
    if (with_w) weight_free(&w);
    end();
}

static void test_rms_norm(void) {
    one_rms(5, 3584, 1, 0);        /* TE hidden: block per row */
    one_rms(4224 * 24, 128, 1, 1); /* DiT per-head q/k norm, in place */
    one_rms(7, 40, 0, 0);          /* unvectorised */
    one_rms(3, 2000, 1, 0);        /* long row, not a multiple of 8 */
    one_rms(1000, 64, 1, 0);       /* half-warp rows, 8 of 16 lanes busy */
}

static void one_ln(int64_t B, int64_t L, int64_t D, int mods) {
    begin();
    int64_t xs[3] = {B, L, D}, ms[2] = {B, 6 * D};
    pair x = act_rand(3, xs, 3.0f);
    pair mod = act_rand(2, ms, 1.0f);
    qi_tensor shc = mod_chunk(&mod.c, B, D, 3), shg = mod_chunk(&mod.g, B, D, 3);
    qi_tensor scc = mod_chunk(&mod.c, B, D, 4), scg = mod_chunk(&mod.g, B, D, 4);
    pair y = out_poisoned(3, xs);
    cpu->ops->layer_norm_mod(cpu, &x.c, mods ? &shc : NULL, mods ? &scc : NULL, 6 * D, 1e-6f, &y.c);
    gpu->ops->layer_norm_mod(gpu, &x.g, mods ? &shg : NULL, mods ? &scg : NULL, 6 * D, 1e-6f, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld]%s", (long long)B, (long long)L, (long long)D,
             mods ? " mod stride 6D" : " no mod");
    claim("layer_norm_mod", shape, rel_err(&y), TOL_EXACT);
    end();
}

static void test_layer_norm_mod(void) {
    one_ln(2, 300, 3072, 1);
    one_ln(1, 4224, 3072, 1);
    one_ln(2, 9, 40, 1); /* warp per row, unvectorised */
    one_ln(1, 5, 4096, 1); /* registers, 4 units per thread */
    one_ln(1, 7, 5120, 1); /* too long for registers: three passes */
    one_ln(2, 3, 512, 1);  /* registers, 1 unit */
    one_ln(1, 5, 1024, 0); /* registers, no modulation */
    one_ln(1, 17, 64, 0);
}

static void one_add_gated(int64_t B, int64_t L, int64_t D, int gated) {
    begin();
    int64_t xs[3] = {B, L, D}, ms[2] = {B, 6 * D};
    pair x = act_rand(3, xs, 1.0f), y = act_rand(3, xs, 1.0f), mod = act_rand(2, ms, 1.0f);
    qi_tensor gc = mod_chunk(&mod.c, B, D, 2), gg = mod_chunk(&mod.g, B, D, 2);
    cpu->ops->add_gated(cpu, &x.c, gated ? &gc : NULL, 6 * D, &y.c);
    gpu->ops->add_gated(gpu, &x.g, gated ? &gg : NULL, 6 * D, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld]%s", (long long)B, (long long)L, (long long)D,
             gated ? " gate stride 6D" : " no gate");
    claim("add_gated", shape, rel_err(&x), TOL_EXACT);
    end();
}

static void test_add_gated(void) {
    one_add_gated(2, 100, 3072, 1);
    one_add_gated(1, 4224, 3072, 1);
    one_add_gated(2, 7, 40, 1);
    one_add_gated(1, 33, 64, 0);
}

static void test_activate(void) {
    const qi_act kinds[3] = {QI_ACT_GELU_TANH, QI_ACT_SILU, QI_ACT_NONE};
    const char *names[3] = {"gelu_tanh", "silu", "none"};
    const int64_t sizes[2] = {4096 * 64, 100003};
    for (int k = 0; k < 3; k++)
        for (int s = 0; s < 2; s++) {
            begin();
            int64_t ne[1] = {sizes[s]};
            pair x = act_rand(1, ne, 4.0f), y = out_poisoned(1, ne);
            cpu->ops->activate(cpu, &x.c, kinds[k], &y.c);
            gpu->ops->activate(gpu, &x.g, kinds[k], &y.g);
            char shape[96];
            snprintf(shape, sizeof shape, "[%lld] %s", (long long)sizes[s], names[k]);
            claim("activate", shape, rel_err(&y), TOL_EXACT);
            end();
        }
}

static void one_silu_mul(int64_t M, int64_t N, int fused) {
    begin();
    int64_t gs[2] = {M, fused ? 2 * N : N}, ys[2] = {M, N};
    pair g = act_rand(2, gs, 3.0f), u = act_rand(2, ys, 1.0f), y = out_poisoned(2, ys);
    cpu->ops->silu_mul(cpu, &g.c, fused ? NULL : &u.c, &y.c);
    gpu->ops->silu_mul(gpu, &g.g, fused ? NULL : &u.g, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld] %s", (long long)M, (long long)N, fused ? "fused [M,2N]" : "split");
    claim("silu_mul", shape, rel_err(&y), TOL_EXACT);
    end();
}

static void test_silu_mul(void) {
    one_silu_mul(167, 18944, 0); /* TE MLP */
    one_silu_mul(167, 1000, 1);
    one_silu_mul(13, 37, 1);
    one_silu_mul(13, 37, 0);
}

static void test_axpby(void) {
    for (int alias = 0; alias < 2; alias++) {
        begin();
        int64_t ne[2] = {4096, 64};
        pair x = act_rand(2, ne, 1.0f), y = act_rand(2, ne, 1.0f);
        pair o = alias ? x : out_poisoned(2, ne);
        cpu->ops->axpby(cpu, 0.7f, &x.c, -0.3f, &y.c, &o.c);
        gpu->ops->axpby(gpu, 0.7f, &x.g, -0.3f, &y.g, &o.g);
        claim("axpby", alias ? "[4096, 64] out = x" : "[4096, 64]", rel_err(&o), TOL_EXACT);
        end();
    }
    begin();
    int64_t ne[1] = {1001};
    pair x = act_rand(1, ne, 1.0f), y = act_rand(1, ne, 1.0f), o = out_poisoned(1, ne);
    cpu->ops->axpby(cpu, 1.5f, &x.c, 0.25f, &y.c, &o.c);
    gpu->ops->axpby(gpu, 1.5f, &x.g, 0.25f, &y.g, &o.g);
    claim("axpby", "[1001]", rel_err(&o), TOL_EXACT);
    end();
}

static void test_copy_rows(void) {
    begin();
    int64_t ss[2] = {300, 3072}, ds[2] = {500, 3072};
    pair s = act_rand(2, ss, 1.0f), d = act_rand(2, ds, 1.0f);
    cpu->ops->copy_rows(cpu, &s.c, 10, &d.c, 200, 100);
    gpu->ops->copy_rows(gpu, &s.g, 10, &d.g, 200, 100);
    claim("copy_rows", "[300,3072] rows 10+100 -> [500,3072] @200", rel_err(&d), 0.0);
    /* overlapping source and destination within one tensor (memmove semantics) */
    cpu->ops->copy_rows(cpu, &d.c, 0, &d.c, 50, 300);
    gpu->ops->copy_rows(gpu, &d.g, 0, &d.g, 50, 300);
    claim("copy_rows", "overlapping rows 0+300 -> @50", rel_err(&d), 0.0);
    end();
}

static void one_rope(int64_t B, int64_t L, int64_t H, int64_t Dh, qi_rope_mode mode) {
    begin();
    int64_t xs[4] = {B, L, H, Dh}, ts[2] = {L, Dh / 2};
    pair x = act_rand(4, xs, 1.0f);
    float *cs = malloc((size_t)(L * Dh / 2) * sizeof(float)), *sn = malloc((size_t)(L * Dh / 2) * sizeof(float));
    for (int64_t i = 0; i < L * Dh / 2; i++) {
        float a = 3.14159f * frand();
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }
    pair ct = typed(QI_F32, 2, ts, cs), st = typed(QI_F32, 2, ts, sn);
    cpu->ops->rope(cpu, &x.c, &ct.c, &st.c, mode);
    gpu->ops->rope(gpu, &x.g, &ct.g, &st.g, mode);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld, %lld] %s", (long long)B, (long long)L, (long long)H,
             (long long)Dh, mode == QI_ROPE_INTERLEAVED ? "interleaved" : "half");
    claim("rope", shape, rel_err(&x), TOL_EXACT);
    free(cs);
    free(sn);
    end();
}

static void test_rope(void) {
    one_rope(1, 4224, 24, 128, QI_ROPE_INTERLEAVED); /* DiT joint sequence */
    one_rope(1, 167, 28, 128, QI_ROPE_HALF);         /* TE */
    one_rope(2, 19, 3, 32, QI_ROPE_INTERLEAVED);
    one_rope(1, 5, 2, 16, QI_ROPE_HALF);
    one_rope(1, 9, 2, 12, QI_ROPE_INTERLEAVED); /* Dh/2 not a multiple of 8: scalar kernel */
    one_rope(1, 9, 2, 12, QI_ROPE_HALF);
}

/* Attention kernels to compare for a head dim: the flash kernels that take it, and GEMMs. */
static const char *const kernels_128[] = {"mma", "wgmma64x2", "wgmma128x2", "wgmma64x3", "tma64x2", "tma128x2", "tma64x3", "gemm"};
static const char *const kernels_128_portable[] = {"mma", "gemm"};
static const char *const kernels_small[] = {"mma", "gemm"};
static int use_wgmma = 1;                  /* QI_TEST_WGMMA=0: kernels_128 stops before the wgmma ones */
static const char *default_kernel = "auto"; /* "mma" when the wgmma kernels are left out */
static int n_kernels_128(void) { return use_wgmma ? 8 : 1; }
static const char *const kernels_other[] = {"gemm"};

static void poison(qi_tensor *g) {
    int64_t n = qi_numel(g);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) nan[i] = NAN;
    must(gpu->ops->upload(gpu, g, nan, &err), "poison");
    free(nan);
}

/* valid_keys < 0: no mask; otherwise batch b keeps its first valid_keys - b keys
 * and every key from 128 on (text padding in front of image tokens); with
 * valid_keys == 0 batch 1 keeps none (a fully masked row). The CPU reference
 * is computed once; every kernel that takes the head dim is compared with it,
 * and flash kernels must give the same bits on a second run (no races). */
static void one_attention(int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t Hkv, int64_t Dh, int causal,
                          int64_t valid_keys) {
    begin();
    int64_t qs[4] = {B, Lq, H, Dh}, ks[4] = {B, Lk, Hkv, Dh}, ms[2] = {B, Lk};
    pair q = act_rand(4, qs, 2.0f), k = act_rand(4, ks, 2.0f), v = act_rand(4, ks, 1.0f);
    pair o = out_poisoned(4, qs);
    pair mask = {0};
    int32_t *mh = NULL;
    if (valid_keys >= 0) {
        mh = malloc((size_t)(B * Lk) * sizeof(int32_t));
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < Lk; j++)
                mh[b * Lk + j] = valid_keys == 0 ? b == 0 : j < valid_keys - b || j >= 128;
        mask = typed(QI_I32, 2, ms, mh);
    }
    float scale = 1.0f / sqrtf((float)Dh);
    cpu->ops->attention(cpu, &q.c, &k.c, &v.c, mh ? &mask.c : NULL, causal, scale, &o.c);
    const char *const *kernels = Dh == 128 ? (use_wgmma ? kernels_128 : kernels_128_portable) : Dh <= 64 && !(Dh & (Dh - 1)) ? kernels_small : kernels_other;
    int nk = Dh == 128 ? (use_wgmma ? 8 : 2) : Dh <= 64 && !(Dh & (Dh - 1)) ? 2 : 1;
    int64_t n = qi_numel(&o.g);
    float *first = malloc((size_t)n * sizeof(float)), *again = malloc((size_t)n * sizeof(float));
    for (int ki = 0; ki < nk; ki++) {
        CHECK(qi_cuda_set_attention_kernel(gpu, kernels[ki]) == 0, "kernel %s", kernels[ki]);
        poison(&o.g);
        gpu->ops->attention(gpu, &q.g, &k.g, &v.g, mh ? &mask.g : NULL, causal, scale, &o.g);
        char shape[96], op[40];
        snprintf(shape, sizeof shape, "B%lld Lq%lld Lk%lld H%lld/%lld Dh%lld%s%s", (long long)B, (long long)Lq,
                 (long long)Lk, (long long)H, (long long)Hkv, (long long)Dh, causal ? " causal" : "",
                 mh ? " mask" : "");
        snprintf(op, sizeof op, "attention %s", kernels[ki]);
        claim(op, shape, rel_err(&o), TOL_ATTN);
        if (strcmp(kernels[ki], "gemm") != 0 && qi_test_failed_checks == 0) {
            must(gpu->ops->download(gpu, &o.g, first, &err), "download");
            gpu->ops->attention(gpu, &q.g, &k.g, &v.g, mh ? &mask.g : NULL, causal, scale, &o.g);
            must(gpu->ops->sync(gpu, &err), "attention");
            must(gpu->ops->download(gpu, &o.g, again, &err), "download");
            CHECK(memcmp(first, again, (size_t)n * sizeof(float)) == 0, "attention %s %s: two runs differ",
                  kernels[ki], shape);
        }
    }
    qi_cuda_set_attention_kernel(gpu, default_kernel);
    free(first);
    free(again);
    free(mh);
    end();
}

static void test_attention(void) {
    /* DiT at 1024²: 128 text + 4096 image tokens, text padding masked */
    one_attention(1, 4224, 4224, 24, 24, 128, 0, 100);
    /* DiT at 512², batch 2 (true CFG), no padding */
    one_attention(2, 1152, 1152, 24, 24, 128, 0, -1);
    /* text encoder: 28 query heads over 4 kv heads, causal */
    one_attention(1, 167, 167, 28, 4, 128, 1, -1);
    one_attention(1, 40, 167, 28, 4, 128, 1, -1); /* Lq < Lk: causal offset */
    one_attention(2, 300, 300, 4, 4, 128, 1, 0);  /* causal and a fully masked batch */
    /* the tiny test model's head dims, batch 2 with padding; a fully masked batch */
    one_attention(2, 50, 50, 4, 4, 32, 0, 37);
    one_attention(2, 77, 77, 2, 2, 16, 0, 0);
    one_attention(2, 90, 90, 4, 2, 64, 1, 70);
    /* other head dims go through GEMMs: the VAE's single 384 head, an odd 80 */
    one_attention(1, 1024, 1024, 1, 1, 384, 0, -1);
    one_attention(2, 33, 47, 4, 2, 80, 1, 40);
}

static void one_cfg(int64_t R, int64_t D) {
    begin();
    int64_t ne[2] = {R, D};
    pair c = act_rand(2, ne, 1.0f), u = act_rand(2, ne, 1.0f), o = out_poisoned(2, ne);
    cpu->ops->cfg_combine(cpu, &c.c, &u.c, 4.0f, &o.c);
    gpu->ops->cfg_combine(gpu, &c.g, &u.g, 4.0f, &o.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld] s=4", (long long)R, (long long)D);
    claim("cfg_combine", shape, rel_err(&o), TOL_EXACT);
    end();
}

static void test_cfg_combine(void) {
    one_cfg(4096, 64);
    one_cfg(50, 3072);
}

static void one_conv(int64_t Ci, int64_t H, int64_t W, int64_t Co, int64_t k, int pad, int bias, int f32_w) {
    begin();
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, k, k}, bs[1] = {Co};
    int64_t ys[3] = {Co, H + 2 * pad - k + 1, W + 2 * pad - k + 1};
    pair x = act_rand(3, xs, 1.0f);
    float amp = 1.0f / sqrtf((float)(Ci * k * k));
    pair w = {0};
    if (f32_w) { /* an F32 activation tensor as the kernel (the op allows it) */
        int64_t n = Co * Ci * k * k;
        float *h = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) h[i] = bf16_round(amp * frand());
        w = typed(QI_F32, 4, ws, h);
        free(h);
    } else {
        w = weight(QI_BF16, 4, ws, amp);
    }
    pair b = {0};
    if (bias) b = weight(QI_BF16, 1, bs, 0.5f);
    pair y = out_poisoned(3, ys);
    cpu->ops->conv2d(cpu, &x.c, &w.c, bias ? &b.c : NULL, pad, &y.c);
    gpu->ops->conv2d(gpu, &x.g, &w.g, bias ? &b.g : NULL, pad, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld,%lld,%lld] -> %lld, %lldx%lld pad %d%s%s", (long long)Ci, (long long)H,
             (long long)W, (long long)Co, (long long)k, (long long)k, pad, bias ? " bias" : "", f32_w ? " f32 w" : "");
    claim("conv2d", shape, rel_err(&y), TOL_GEMM);
    if (!f32_w) weight_free(&w);
    if (bias) weight_free(&b);
    end();
}

static void test_conv2d(void) {
    /* 3×3 pad 1: the implicit GEMM (channel tiles of 32, 64, 96, 128; partial
     * pixel tiles, odd widths, channel counts not a multiple of 16) */
    qi_cuda_set_conv_kernel(gpu, "implicit");
    one_conv(384, 32, 40, 384, 3, 1, 1, 0);   /* 128-channel tiles, 24 chunks */
    one_conv(192, 24, 70, 192, 3, 1, 1, 0);   /* 96-channel tiles, a partial column tile */
    one_conv(16, 33, 64, 384, 3, 1, 1, 0);    /* conv_in: one chunk, odd rows */
    one_conv(40, 9, 13, 50, 3, 1, 1, 0);      /* 64-channel tiles with rows past Co */
    one_conv(16, 20, 24, 32, 3, 1, 1, 0);
    one_conv(16, 20, 24, 32, 3, 0, 0, 0);
    one_conv(64, 32, 32, 16, 1, 0, 1, 0);
    one_conv(8, 9, 11, 5, 3, 1, 1, 1);
    one_conv(128, 128, 128, 128, 3, 1, 1, 0); /* VAE-like */
    one_conv(96, 64, 64, 3, 3, 1, 1, 0);      /* conv_out to RGB */
    /* the column-matrix path stays correct (QI_CUDA_CONV=im2col selects it) */
    qi_cuda_set_conv_kernel(gpu, "im2col");
    one_conv(128, 128, 128, 128, 3, 1, 1, 0);
    one_conv(8, 9, 11, 5, 3, 1, 1, 1);
    qi_cuda_set_conv_kernel(gpu, "auto");
    one_conv(384, 32, 40, 384, 3, 1, 1, 0);   /* auto: im2col for long K */
}

static int force_im2col; /* test_conv2d_fused: im2col chosen for the case */

/* conv2d_fused: upsample folded into the gather, residual (separate or y itself). */
static void one_conv_fused(int64_t Ci, int64_t H, int64_t W, int64_t Co, int64_t k, int pad, int up, int res_mode) {
    begin();
    int64_t Hc = up ? 2 * H : H, Wc = up ? 2 * W : W;
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, k, k}, bs[1] = {Co};
    int64_t ys[3] = {Co, Hc + 2 * pad - k + 1, Wc + 2 * pad - k + 1};
    pair x = act_rand(3, xs, 1.0f);
    pair w = weight(QI_BF16, 4, ws, 1.0f / sqrtf((float)(Ci * k * k)));
    pair b = weight(QI_BF16, 1, bs, 0.5f);
    pair r = act_rand(3, ys, 1.0f);
    pair y = res_mode == 2 ? r : out_poisoned(3, ys); /* 2: the residual is y itself */
    const qi_tensor *rc = res_mode ? &r.c : NULL, *rg = res_mode ? &r.g : NULL;
    cpu->ops->conv2d_fused(cpu, &x.c, up, &w.c, &b.c, pad, rc, &y.c);
    gpu->ops->conv2d_fused(gpu, &x.g, up, &w.g, &b.g, pad, rg, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld,%lld,%lld]%s -> %lld, %lldx%lld pad %d%s", (long long)Ci, (long long)H,
             (long long)W, up ? " up2x" : "", (long long)Co, (long long)k, (long long)k, pad,
             res_mode == 2 ? " +res (= y)" : res_mode ? " +res" : "");
    /* the implicit GEMM rounds once; the plain-op fallback rounds the conv,
     * then the sum (TOL_TWO) */
    int implicit = k == 3 && pad == 1 && !force_im2col && (up || Ci <= 128 || Co < 32); /* as "auto" picks */
    claim("conv2d_fused", shape, rel_err(&y), implicit || !res_mode ? TOL_GEMM : TOL_TWO);
    weight_free(&w);
    weight_free(&b);
    end();
}

static void test_conv2d_fused(void) {
    one_conv_fused(384, 16, 16, 192, 3, 1, 1, 0);  /* VAE upsampler 128² -> 256², 192 out */
    one_conv_fused(192, 17, 23, 96, 3, 1, 1, 1);   /* odd sizes, upsampled; + residual */
    one_conv_fused(96, 30, 64, 96, 3, 1, 0, 2);    /* resblock conv2 with y += conv */
    one_conv_fused(5, 7, 9, 3, 3, 1, 1, 2);        /* tiny, odd, 3 outputs */
    one_conv_fused(16, 9, 10, 8, 3, 0, 1, 1);      /* pad 0: plain ops in the arena */
    one_conv_fused(24, 8, 12, 16, 1, 0, 0, 2);     /* 1×1 with res = y: through a temporary */
    one_conv_fused(384, 20, 24, 384, 3, 1, 0, 2);  /* auto picks im2col: conv, then the sum */
    qi_cuda_set_conv_kernel(gpu, "im2col");
    force_im2col = 1;
    one_conv_fused(64, 12, 20, 32, 3, 1, 1, 2);    /* the fallback for the fused case */
    force_im2col = 0;
    qi_cuda_set_conv_kernel(gpu, "auto");
}

static void one_norm_act(int64_t C, int64_t H, int64_t W, int bias, qi_act act_kind, int in_place) {
    begin();
    int64_t xs[3] = {C, H, W}, cs[1] = {C};
    pair x = act_rand(3, xs, 2.0f), y = in_place ? x : out_poisoned(3, xs);
    pair g = weight(QI_BF16, 1, cs, 1.0f), b = weight(QI_BF16, 1, cs, 0.5f);
    cpu->ops->channel_rms_norm_act(cpu, &x.c, &g.c, bias ? &b.c : NULL, act_kind, &y.c);
    gpu->ops->channel_rms_norm_act(gpu, &x.g, &g.g, bias ? &b.g : NULL, act_kind, &y.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld]%s%s%s", (long long)C, (long long)H, (long long)W,
             bias ? " +bias" : "", act_kind == QI_ACT_SILU ? " silu" : "", in_place ? " in place" : "");
    claim("channel_rms_norm_act", shape, rel_err(&y), TOL_EXACT);
    weight_free(&g);
    weight_free(&b);
    end();
}

static void test_channel_rms_norm_act(void) {
    one_norm_act(96, 64, 128, 0, QI_ACT_SILU, 0);  /* vector kernel: 64-pixel blocks */
    one_norm_act(384, 16, 24, 0, QI_ACT_SILU, 1);  /* 12 channels per thread, in place */
    one_norm_act(96, 33, 41, 1, QI_ACT_SILU, 0);   /* H·W not a multiple of 8: scalar kernel */
    one_norm_act(7, 8, 9, 1, QI_ACT_NONE, 0);      /* fewer channels than channel groups */
    one_norm_act(192, 32, 40, 0, QI_ACT_SILU, 0);  /* 6 channels per thread */
    one_norm_act(512, 8, 16, 1, QI_ACT_SILU, 0);   /* over 384: the second pass re-reads */
}

/* rms_norm_rope into rows of another tensor: the whole destination is
 * compared, so rows it must not touch are checked too. */
static void one_norm_rope(int64_t B, int64_t L, int64_t H, int64_t Dh, int64_t Ld, int64_t row0, qi_rope_mode mode,
                          int with_w, int in_place) {
    begin();
    int64_t xs[4] = {B, L, H, Dh}, ds[4] = {B, Ld, H, Dh}, ts[2] = {Ld, Dh / 2}, wsz[1] = {Dh};
    pair x = act_rand(4, xs, 2.0f);
    pair dst = in_place ? x : act_rand(4, ds, 1.0f);
    pair w = {0};
    if (with_w) w = weight(QI_BF16, 1, wsz, 1.0f);
    float *cs = malloc((size_t)(Ld * Dh / 2) * sizeof(float)), *sn = malloc((size_t)(Ld * Dh / 2) * sizeof(float));
    for (int64_t i = 0; i < Ld * Dh / 2; i++) {
        float a = 3.14159f * frand();
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }
    pair ct = typed(QI_F32, 2, ts, cs), st = typed(QI_F32, 2, ts, sn);
    cpu->ops->rms_norm_rope(cpu, &x.c, with_w ? &w.c : NULL, 1e-6f, &ct.c, &st.c, mode, &dst.c, row0);
    gpu->ops->rms_norm_rope(gpu, &x.g, with_w ? &w.g : NULL, 1e-6f, &ct.g, &st.g, mode, &dst.g, row0);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld,%lld,%lld,%lld] -> [%lld,%lld,..] @%lld %s%s", (long long)B, (long long)L,
             (long long)H, (long long)Dh, (long long)B, (long long)Ld, (long long)row0,
             mode == QI_ROPE_INTERLEAVED ? "inter" : "half", in_place ? " in place" : "");
    claim("rms_norm_rope", shape, rel_err(&dst), TOL_EXACT);
    if (with_w) weight_free(&w);
    free(cs);
    free(sn);
    end();
}

/* add_gated_layer_norm_mod against the CPU (x: one rounding; out: the norm
 * of the bf16-rounded x, TOL_TWO) and bit for bit against the two CUDA ops. */
static void one_ag_ln(int64_t B, int64_t L, int64_t D) {
    begin();
    int64_t xs[3] = {B, L, D}, ms[2] = {B, 6 * D};
    pair x = act_rand(3, xs, 1.0f), y = act_rand(3, xs, 1.0f), mod = act_rand(2, ms, 1.0f);
    pair out = out_poisoned(3, xs), x2 = act_rand(3, xs, 1.0f), out2 = out_poisoned(3, xs);
    int64_t n = qi_numel(&x.g);
    float *h = malloc((size_t)n * sizeof(float));
    must(gpu->ops->download(gpu, &x.g, h, &err), "download");
    must(gpu->ops->upload(gpu, &x2.g, h, &err), "upload");
    qi_tensor gc = mod_chunk(&mod.c, B, D, 2), gg = mod_chunk(&mod.g, B, D, 2);
    qi_tensor shc = mod_chunk(&mod.c, B, D, 3), shg = mod_chunk(&mod.g, B, D, 3);
    qi_tensor scc = mod_chunk(&mod.c, B, D, 4), scg = mod_chunk(&mod.g, B, D, 4);
    cpu->ops->add_gated_layer_norm_mod(cpu, &x.c, &gc, 6 * D, &y.c, &shc, &scc, 6 * D, 1e-6f, &out.c);
    gpu->ops->add_gated_layer_norm_mod(gpu, &x.g, &gg, 6 * D, &y.g, &shg, &scg, 6 * D, 1e-6f, &out.g);
    gpu->ops->add_gated(gpu, &x2.g, &gg, 6 * D, &y.g);
    gpu->ops->layer_norm_mod(gpu, &x2.g, &shg, &scg, 6 * D, 1e-6f, &out2.g);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld] x", (long long)B, (long long)L, (long long)D);
    claim("add_gated_layer_norm_mod", shape, rel_err(&x), TOL_EXACT);
    snprintf(shape, sizeof shape, "[%lld, %lld, %lld] out", (long long)B, (long long)L, (long long)D);
    claim("add_gated_layer_norm_mod", shape, rel_err(&out), TOL_TWO);
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    must(gpu->ops->sync(gpu, &err), "sync");
    must(gpu->ops->download(gpu, &out.g, a, &err), "download");
    must(gpu->ops->download(gpu, &out2.g, b, &err), "download");
    CHECK(memcmp(a, b, (size_t)n * sizeof(float)) == 0, "%s: fused differs from add_gated + layer_norm_mod", shape);
    free(a);
    free(b);
    free(h);
    end();
}

static void test_add_gated_layer_norm_mod(void) {
    one_ag_ln(1, 4096, 3072); /* DiT image stream */
    one_ag_ln(2, 77, 3072);   /* batch 2 */
    one_ag_ln(1, 9, 520);     /* one unit per thread, some idle */
    one_ag_ln(1, 5, 40);      /* small rows: the two ops' kernels */
}

static void test_rms_norm_rope(void) {
    one_norm_rope(1, 4096, 24, 128, 4224, 128, QI_ROPE_INTERLEAVED, 1, 0); /* DiT image q into the joint Q */
    one_norm_rope(1, 128, 24, 128, 4224, 0, QI_ROPE_INTERLEAVED, 1, 0);   /* DiT text q */
    one_norm_rope(2, 77, 3, 128, 90, 13, QI_ROPE_HALF, 1, 0);            /* batch 2, half pairs, odd rows */
    one_norm_rope(1, 25, 3, 128, 25, 0, QI_ROPE_INTERLEAVED, 0, 1);      /* in place, 75 rows (odd) */
    one_norm_rope(2, 9, 4, 32, 20, 11, QI_ROPE_INTERLEAVED, 1, 0);       /* other head dims: plain ops */
}

static void test_upsample2x(void) {
    begin();
    int64_t xs[3] = {32, 17, 23}, ys[3] = {32, 34, 46};
    pair x = act_rand(3, xs, 1.0f), y = out_poisoned(3, ys);
    cpu->ops->upsample2x(cpu, &x.c, &y.c);
    gpu->ops->upsample2x(gpu, &x.g, &y.g);
    claim("upsample2x", "[32, 17, 23]", rel_err(&y), 0.0);
    end();
}

static void test_channel_rms_norm(void) {
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        begin();
        int64_t xs[3] = {96, 33, 40}, cs[1] = {96};
        pair x = act_rand(3, xs, 2.0f), y = out_poisoned(3, xs);
        pair g = weight(QI_BF16, 1, cs, 1.0f), b = weight(QI_BF16, 1, cs, 0.5f);
        cpu->ops->channel_rms_norm(cpu, &x.c, &g.c, with_bias ? &b.c : NULL, &y.c);
        gpu->ops->channel_rms_norm(gpu, &x.g, &g.g, with_bias ? &b.g : NULL, &y.g);
        claim("channel_rms_norm", with_bias ? "[96, 33, 40] gamma+bias" : "[96, 33, 40] gamma", rel_err(&y),
              TOL_EXACT);
        weight_free(&g);
        weight_free(&b);
        end();
    }
}

static void test_transpose2d(void) {
    const int64_t shapes[2][2] = {{300, 517}, {16, 4096}};
    for (int s = 0; s < 2; s++) {
        begin();
        int64_t xs[2] = {shapes[s][0], shapes[s][1]}, ys[2] = {shapes[s][1], shapes[s][0]};
        pair x = act_rand(2, xs, 1.0f), y = out_poisoned(2, ys);
        cpu->ops->transpose2d(cpu, &x.c, &y.c);
        gpu->ops->transpose2d(gpu, &x.g, &y.g);
        char shape[64];
        snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)xs[0], (long long)xs[1]);
        claim("transpose2d", shape, rel_err(&y), 0.0);
        end();
    }
}

/* One DiT-like block fragment, run eagerly and as a replayed CUDA graph: the
 * replay gives the same bits, and reads the inputs' current contents. */
typedef struct frag {
    qi_tensor x, xres, h, q, k, v, o, y, mod, shift, scale, gate, ct, st, mask;
    qi_tensor wq, wk, wv, wo, bo;
} frag;

static void frag_run(frag *f) {
    qi_backend *g = gpu;
    g->ops->copy_rows(g, &f->x, 0, &f->xres, 0, 256);
    g->ops->layer_norm_mod(g, &f->x, &f->shift, &f->scale, 6 * 256, 1e-6f, &f->h);
    g->ops->linear(g, &f->h, &f->wq, NULL, QI_ACT_NONE, &f->q);
    g->ops->linear(g, &f->h, &f->wk, NULL, QI_ACT_NONE, &f->k);
    g->ops->linear(g, &f->h, &f->wv, NULL, QI_ACT_NONE, &f->v);
    qi_tensor q4 = qi_view4(&f->q, 1, 256, 2, 128), k4 = qi_view4(&f->k, 1, 256, 2, 128);
    qi_tensor v4 = qi_view4(&f->v, 1, 256, 2, 128), o4 = qi_view4(&f->o, 1, 256, 2, 128);
    g->ops->rms_norm(g, &q4, NULL, 1e-6f, &q4);
    g->ops->rope(g, &q4, &f->ct, &f->st, QI_ROPE_INTERLEAVED);
    g->ops->rope(g, &k4, &f->ct, &f->st, QI_ROPE_INTERLEAVED);
    g->ops->attention(g, &q4, &k4, &v4, &f->mask, 0, 0.0884f, &o4);
    g->ops->linear(g, &f->o, &f->wo, &f->bo, QI_ACT_GELU_TANH, &f->y);
    g->ops->add_gated(g, &f->xres, &f->gate, 6 * 256, &f->y);
}

static void test_graph_replay(void) {
    size_t mk = gpu->ops->mark(gpu);
    frag f;
    int64_t xs[3] = {1, 256, 256}, ms[2] = {1, 6 * 256}, ws[2] = {256, 256}, bs[1] = {256}, ts[2] = {256, 64};
    int64_t mks[2] = {1, 256};
    uint16_t *hw[5];
    f.x = g_rand(3, xs, 1.0f);
    f.mod = g_rand(2, ms, 0.5f);
    f.shift = mod_chunk(&f.mod, 1, 256, 0), f.scale = mod_chunk(&f.mod, 1, 256, 1), f.gate = mod_chunk(&f.mod, 1, 256, 2);
    qi_tensor *outs[7] = {&f.xres, &f.h, &f.q, &f.k, &f.v, &f.o, &f.y};
    for (int i = 0; i < 7; i++) must(gpu->ops->tensor(gpu, outs[i], QI_BF16, 3, xs, &err), "frag tensor");
    f.wq = g_weight(2, ws, 0.06f, &hw[0]), f.wk = g_weight(2, ws, 0.06f, &hw[1]), f.wv = g_weight(2, ws, 0.06f, &hw[2]);
    f.wo = g_weight(2, ws, 0.06f, &hw[3]), f.bo = g_weight(1, bs, 0.1f, &hw[4]);
    float *tab = malloc(256 * 64 * sizeof(float));
    for (int i = 0; i < 256 * 64; i++) tab[i] = frand();
    must(gpu->ops->tensor(gpu, &f.ct, QI_F32, 2, ts, &err), "cos");
    must(gpu->ops->tensor(gpu, &f.st, QI_F32, 2, ts, &err), "sin");
    must(gpu->ops->upload(gpu, &f.ct, tab, &err), "cos");
    must(gpu->ops->upload(gpu, &f.st, tab, &err), "sin");
    int32_t mh[256];
    for (int i = 0; i < 256; i++) mh[i] = i < 20 || i >= 40;
    must(gpu->ops->tensor(gpu, &f.mask, QI_I32, 2, mks, &err), "mask");
    must(gpu->ops->upload(gpu, &f.mask, mh, &err), "mask");

    int64_t n = 256 * 256;
    float *eager = malloc((size_t)n * sizeof(float)), *replay = malloc((size_t)n * sizeof(float));
    frag_run(&f);
    must(gpu->ops->sync(gpu, &err), "eager");
    must(gpu->ops->download(gpu, &f.xres, eager, &err), "download");
    qi_cuda_graph *graph = NULL;
    must(qi_cuda_capture_begin(gpu, &err), "capture begin");
    frag_run(&f);
    qi_status st = qi_cuda_capture_end(gpu, &graph, &err);
    CHECK(st == QI_OK, "capture: %s", err.msg);
    if (st == QI_OK) {
        poison(&f.xres);
        poison(&f.o);
        must(qi_cuda_graph_launch(gpu, graph, &err), "graph launch");
        must(gpu->ops->sync(gpu, &err), "replay");
        must(gpu->ops->download(gpu, &f.xres, replay, &err), "download");
        CHECK(memcmp(eager, replay, (size_t)n * sizeof(float)) == 0, "graph replay differs from eager run");
        /* new input contents: the replay must see them */
        float *h = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) h[i] = frand();
        must(gpu->ops->upload(gpu, &f.x, h, &err), "upload");
        frag_run(&f);
        must(gpu->ops->sync(gpu, &err), "eager 2");
        must(gpu->ops->download(gpu, &f.xres, eager, &err), "download");
        poison(&f.xres);
        must(qi_cuda_graph_launch(gpu, graph, &err), "graph launch");
        must(gpu->ops->sync(gpu, &err), "replay 2");
        must(gpu->ops->download(gpu, &f.xres, replay, &err), "download");
        CHECK(memcmp(eager, replay, (size_t)n * sizeof(float)) == 0, "replay on new inputs differs");
        double e = 0;
        for (int64_t i = 0; i < n; i++) e += eager[i] != eager[i] ? 1 : 0;
        CHECK(e == 0, "NaN in the block output");
        printf("  graph of 13 ops (ln, 4 linear, norm, 2 rope, attention, gated add): replay bit-identical\n");
        free(h);
        qi_cuda_graph_free(graph);
    }
    for (int i = 0; i < 5; i++) free(hw[i]);
    qi_tensor *ws2[5] = {&f.wq, &f.wk, &f.wv, &f.wo, &f.bo};
    for (int i = 0; i < 5; i++) gpu->ops->weight_free(gpu, ws2[i]);
    free(tab);
    free(eager);
    free(replay);
    gpu->ops->reset(gpu, mk);
}

/* A misuse is reported by the next sync with a message, not a crash. */
static void test_errors_reach_sync(void) {
    begin();
    qi_tensor x, w, y;
    int64_t xs[2] = {4, 8}, ws[2] = {6, 9}, ys[2] = {4, 6};
    must(gpu->ops->tensor(gpu, &x, QI_BF16, 2, xs, &err), "t");
    must(gpu->ops->tensor(gpu, &w, QI_BF16, 2, ws, &err), "t");
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 2, ys, &err), "t");
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &y);
    qi_status st = gpu->ops->sync(gpu, &err);
    printf("  mismatched linear -> status %d: %s\n", (int)st, err.msg);
    CHECK(st == QI_ERR_ARG, "expected QI_ERR_ARG, got %d", (int)st);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "the error is cleared once reported");
    int64_t huge[1] = {(int64_t)1 << 45};
    qi_tensor t;
    CHECK(gpu->ops->tensor(gpu, &t, QI_BF16, 1, huge, &err) == QI_ERR_NOMEM, "an oversized tensor is refused");
    end();
}

/* ---- timings ------------------------------------------------------------------------------ */

#define WARM 3
#define REPS 10

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of REPS runs of stmt after WARM, CUDA events on the backend's stream. */
#define TIME_MS(result, stmt)                                                                    \
    do {                                                                                         \
        cudaStream_t s_ = (cudaStream_t)qi_cuda_stream(gpu);                                     \
        cudaEvent_t e_[REPS][2];                                                                 \
        float ms_[REPS];                                                                         \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventCreate(&e_[i_][0]);                                                         \
            cudaEventCreate(&e_[i_][1]);                                                         \
        }                                                                                        \
        for (int i_ = 0; i_ < WARM; i_++) { stmt; }                                              \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventRecord(e_[i_][0], s_);                                                      \
            stmt;                                                                                \
            cudaEventRecord(e_[i_][1], s_);                                                      \
        }                                                                                        \
        must(gpu->ops->sync(gpu, &err), "timed op");                                             \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventElapsedTime(&ms_[i_], e_[i_][0], e_[i_][1]);                                \
            cudaEventDestroy(e_[i_][0]);                                                         \
            cudaEventDestroy(e_[i_][1]);                                                         \
        }                                                                                        \
        qsort(ms_, REPS, sizeof(float), cmp_float);                                              \
        (result) = 0.5 * (ms_[REPS / 2 - 1] + ms_[REPS / 2]);                                    \
    } while (0)

static qi_tensor g_rand(int ndim, const int64_t *ne, float amp) {
    qi_tensor t;
    must(gpu->ops->tensor(gpu, &t, QI_BF16, ndim, ne, &err), "bench tensor");
    int64_t n = qi_numel(&t);
    float *h = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = amp * frand();
    must(gpu->ops->upload(gpu, &t, h, &err), "bench upload");
    free(h);
    return t;
}
static qi_tensor g_weight(int ndim, const int64_t *ne, float amp, uint16_t **keep) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    uint16_t *h = malloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) h[i] = qi_f32_to_bf16(amp * frand());
    qi_tensor w;
    must(gpu->ops->weight(gpu, &w, QI_BF16, ndim, ne, h, &err), "bench weight");
    *keep = h;
    return w;
}

static void bench_linear(int64_t M, int64_t K, int64_t N, qi_act act_kind, const char *what) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, bs[1] = {N}, ys[2] = {M, N};
    uint16_t *hw, *hb;
    qi_tensor x = g_rand(2, xs, 1.0f), w = g_weight(2, ws, 1.0f / sqrtf((float)K), &hw);
    qi_tensor b = g_weight(1, bs, 0.5f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 2, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->linear(gpu, &x, &w, &b, act_kind, &y));
    double tflops = 2.0 * M * K * N / (ms * 1e-3) / 1e12;
    printf("  %-16s linear %5lldx%5lldx%5lld %-9s %8.3f ms  %6.1f TFLOP/s\n", what, (long long)M, (long long)K,
           (long long)N, act_kind == QI_ACT_GELU_TANH ? "+b gelu" : act_kind == QI_ACT_SILU ? "+b silu" : "+b",
           ms, tflops);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

static void bench_attention(int64_t B, int64_t L, int64_t H, int64_t Hkv, int64_t Dh, int causal, int masked,
                            const char *what, const char *kernel) {
    qi_cuda_set_attention_kernel(gpu, kernel);
    size_t mk = gpu->ops->mark(gpu);
    int64_t qs[4] = {B, L, H, Dh}, ks[4] = {B, L, Hkv, Dh}, ms2[2] = {B, L};
    qi_tensor q = g_rand(4, qs, 2.0f), k = g_rand(4, ks, 2.0f), v = g_rand(4, ks, 1.0f), o, mask;
    must(gpu->ops->tensor(gpu, &o, QI_BF16, 4, qs, &err), "o");
    if (masked) {
        int32_t *mh = malloc((size_t)(B * L) * sizeof(int32_t));
        for (int64_t i = 0; i < B * L; i++) mh[i] = (i % L) < 100 || (i % L) >= 128;
        must(gpu->ops->tensor(gpu, &mask, QI_I32, 2, ms2, &err), "mask");
        must(gpu->ops->upload(gpu, &mask, mh, &err), "mask");
        free(mh);
    }
    double ms;
    TIME_MS(ms, gpu->ops->attention(gpu, &q, &k, &v, masked ? &mask : NULL, causal, 1.0f / sqrtf((float)Dh), &o));
    double flop = 4.0 * B * H * L * L * Dh * (causal ? 0.5 : 1.0);
    printf("  %-16s attention %-10s B%lld L%lld H%lld/%lld Dh%lld%s%s %8.3f ms  %6.1f TFLOP/s\n", what, kernel,
           (long long)B, (long long)L, (long long)H, (long long)Hkv, (long long)Dh, causal ? " causal" : "",
           masked ? " mask" : "", ms, flop / (ms * 1e-3) / 1e12);
    qi_cuda_set_attention_kernel(gpu, default_kernel);
    gpu->ops->reset(gpu, mk);
}

static void bench_memory_ops(void) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {1, 4224, 3072}, ms2[2] = {1, 6 * 3072}, qs[4] = {1, 4224, 24, 128}, ts[2] = {4224, 64};
    qi_tensor x = g_rand(3, xs, 1.0f), y = g_rand(3, xs, 1.0f), mod = g_rand(2, ms2, 1.0f), q = g_rand(4, qs, 1.0f);
    qi_tensor out;
    must(gpu->ops->tensor(gpu, &out, QI_BF16, 3, xs, &err), "out");
    qi_tensor sh = mod_chunk(&mod, 1, 3072, 0), sc = mod_chunk(&mod, 1, 3072, 1), gt = mod_chunk(&mod, 1, 3072, 2);
    qi_tensor ct, st;
    must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, ts, &err), "cos");
    must(gpu->ops->tensor(gpu, &st, QI_F32, 2, ts, &err), "sin");
    float *h = malloc(4224 * 64 * sizeof(float));
    for (int i = 0; i < 4224 * 64; i++) h[i] = frand();
    must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
    must(gpu->ops->upload(gpu, &st, h, &err), "sin");
    free(h);
    uint16_t *hw;
    int64_t wn[1] = {128};
    qi_tensor nw = g_weight(1, wn, 1.0f, &hw);
    double ms, mb = 4224.0 * 3072 * 2 / 1e6; /* one [4224, 3072] bf16 tensor */
    TIME_MS(ms, gpu->ops->layer_norm_mod(gpu, &x, &sh, &sc, 6 * 3072, 1e-6f, &out));
    printf("  %-16s layer_norm_mod [4224, 3072]      %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    TIME_MS(ms, gpu->ops->add_gated(gpu, &x, &gt, 6 * 3072, &y));
    printf("  %-16s add_gated [4224, 3072]           %8.3f ms  %6.0f GB/s\n", "DiT", ms, 3 * mb / ms);
    TIME_MS(ms, gpu->ops->rms_norm(gpu, &q, &nw, 1e-6f, &q));
    printf("  %-16s rms_norm per head [4224·24, 128] %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    TIME_MS(ms, gpu->ops->rope(gpu, &q, &ct, &st, QI_ROPE_INTERLEAVED));
    printf("  %-16s rope [1, 4224, 24, 128]          %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    gpu->ops->weight_free(gpu, &nw);
    free(hw);
    gpu->ops->reset(gpu, mk);
}

static void bench_conv(int64_t Ci, int64_t H, int64_t W, int64_t Co) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 3, 3}, bs[1] = {Co}, ys[3] = {Co, H, W};
    uint16_t *hw, *hb;
    qi_tensor x = g_rand(3, xs, 1.0f), w = g_weight(4, ws, 0.02f, &hw), b = g_weight(1, bs, 0.1f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->conv2d(gpu, &x, &w, &b, 1, &y));
    double flop = 2.0 * Co * Ci * 9 * H * W;
    printf("  %-16s conv2d 3x3 [%lld,%lld,%lld] -> %lld %8.3f ms  %6.1f TFLOP/s\n", "VAE", (long long)Ci,
           (long long)H, (long long)W, (long long)Co, ms, flop / (ms * 1e-3) / 1e12);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

static int only_attention; /* QI_TEST_ONLY=attention */
static int only_fused;     /* QI_TEST_ONLY=fused: the fused ops' claims and timings */

/* conv2d_fused at a VAE shape: the implicit GEMM against im2col + cuBLASLt
 * (and, for the upsampling convs, the plain upsample2x + conv2d). */
static void bench_conv_fused(int64_t Ci, int64_t H, int64_t W, int64_t Co, int up, int res, const char *what) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t Hc = up ? 2 * H : H, Wc = up ? 2 * W : W;
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 3, 3}, bs[1] = {Co}, ys[3] = {Co, Hc, Wc}, us[3] = {Ci, Hc, Wc};
    uint16_t *hw, *hb;
    qi_tensor x = g_rand(3, xs, 1.0f), w = g_weight(4, ws, 0.02f, &hw), b = g_weight(1, bs, 0.1f, &hb), y, u;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms_new, ms_old;
    qi_cuda_set_conv_kernel(gpu, "implicit");
    TIME_MS(ms_new, gpu->ops->conv2d_fused(gpu, &x, up, &w, &b, 1, res ? &y : NULL, &y));
    qi_cuda_set_conv_kernel(gpu, "im2col");
    if (up) {
        must(gpu->ops->tensor(gpu, &u, QI_BF16, 3, us, &err), "u");
        TIME_MS(ms_old, { gpu->ops->upsample2x(gpu, &x, &u); gpu->ops->conv2d(gpu, &u, &w, &b, 1, &y); });
    } else {
        TIME_MS(ms_old, gpu->ops->conv2d_fused(gpu, &x, 0, &w, &b, 1, res ? &y : NULL, &y));
    }
    qi_cuda_set_conv_kernel(gpu, "auto");
    double flop = 2.0 * Co * Ci * 9 * Hc * Wc;
    int auto_implicit = up || Ci <= 128 || Co < 32;
    printf("  %-12s conv3x3 [%lld,%lld,%lld]%s -> %lld%s  implicit %7.3f ms %5.0f TFLOP/s | im2col%s %7.3f ms (%.2fx) auto: %s\n",
           what, (long long)Ci, (long long)H, (long long)W, up ? " up" : "", (long long)Co, res ? " +res" : "",
           ms_new, flop / (ms_new * 1e-3) / 1e12, up ? "+upsample" : "", ms_old, ms_old / ms_new,
           auto_implicit ? "implicit" : "im2col");
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

/* Where one 1024² transformer block's time goes: each op of a block timed
 * alone at the real shapes (image 4096 tokens, text 128, D 3072, MLP 12288),
 * summed per kind and × 60 blocks. */
static void bench_dit_block(void) {
    size_t mk = gpu->ops->mark(gpu);
    const int64_t Li = 4096, Lt = 128, Lj = Li + Lt, D = 3072, F = 12288, H = 24, Dh = 128;
    int64_t is[3] = {1, Li, D}, ts[3] = {1, Lt, D}, ifs[3] = {1, Li, F}, tfs[3] = {1, Lt, F}, ms2[2] = {1, 6 * D};
    int64_t js[4] = {1, Lj, H, Dh}, tab[2] = {Lj, Dh / 2}, mks[2] = {1, Lj};
    int64_t wdd[2] = {D, D}, wfd[2] = {F, D}, wdf[2] = {D, F}, bd[1] = {D}, bf[1] = {F}, nh[1] = {Dh};
    qi_tensor img = g_rand(3, is, 1.0f), txt = g_rand(3, ts, 1.0f), mod = g_rand(2, ms2, 0.5f);
    qi_tensor ni, nt, qi_, qt, pi, pt, fi, ft, Q, K, V, O, ct, st, mask;
    qi_tensor *acts[] = {&ni, &qi_, &pi}, *tacts[] = {&nt, &qt, &pt};
    for (int i = 0; i < 3; i++) must(gpu->ops->tensor(gpu, acts[i], QI_BF16, 3, is, &err), "t");
    for (int i = 0; i < 3; i++) must(gpu->ops->tensor(gpu, tacts[i], QI_BF16, 3, ts, &err), "t");
    must(gpu->ops->tensor(gpu, &fi, QI_BF16, 3, ifs, &err), "t");
    must(gpu->ops->tensor(gpu, &ft, QI_BF16, 3, tfs, &err), "t");
    Q = g_rand(4, js, 1.0f), K = g_rand(4, js, 1.0f), V = g_rand(4, js, 1.0f);
    must(gpu->ops->tensor(gpu, &O, QI_BF16, 4, js, &err), "t");
    must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, tab, &err), "t");
    must(gpu->ops->tensor(gpu, &st, QI_F32, 2, tab, &err), "t");
    float *h = malloc((size_t)(Lj * Dh / 2) * sizeof(float));
    for (int64_t i = 0; i < Lj * Dh / 2; i++) h[i] = frand();
    must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
    must(gpu->ops->upload(gpu, &st, h, &err), "sin");
    free(h);
    int32_t *mh = malloc((size_t)Lj * sizeof(int32_t));
    for (int64_t i = 0; i < Lj; i++) mh[i] = i < 100 || i >= 128;
    must(gpu->ops->tensor(gpu, &mask, QI_I32, 2, mks, &err), "mask");
    must(gpu->ops->upload(gpu, &mask, mh, &err), "mask");
    free(mh);
    uint16_t *hk[8];
    qi_tensor wdd_ = g_weight(2, wdd, 0.018f, &hk[0]), wfd_ = g_weight(2, wfd, 0.018f, &hk[1]);
    qi_tensor wdf_ = g_weight(2, wdf, 0.009f, &hk[2]), bd_ = g_weight(1, bd, 0.1f, &hk[3]);
    qi_tensor bf_ = g_weight(1, bf, 0.1f, &hk[4]), nw = g_weight(1, nh, 1.0f, &hk[5]);
    qi_tensor sh = mod_chunk(&mod, 1, D, 0), sc = mod_chunk(&mod, 1, D, 1), gt = mod_chunk(&mod, 1, D, 2);
    qi_tensor qi4 = qi_view4(&qi_, 1, Li, H, Dh), qt4 = qi_view4(&qt, 1, Lt, H, Dh);
    double t_ln_i, t_ln_t, t_lin_i, t_lin_t, t_up_i, t_up_t, t_dn_i, t_dn_t, t_nr_i, t_nr_t, t_att, t_ag_i, t_ag_t;
    TIME_MS(t_ln_i, gpu->ops->layer_norm_mod(gpu, &img, &sh, &sc, 6 * D, 1e-6f, &ni));
    TIME_MS(t_ln_t, gpu->ops->layer_norm_mod(gpu, &txt, &sh, &sc, 6 * D, 1e-6f, &nt));
    TIME_MS(t_lin_i, gpu->ops->linear(gpu, &ni, &wdd_, &bd_, QI_ACT_NONE, &qi_));
    TIME_MS(t_lin_t, gpu->ops->linear(gpu, &nt, &wdd_, &bd_, QI_ACT_NONE, &qt));
    TIME_MS(t_nr_i, gpu->ops->rms_norm_rope(gpu, &qi4, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &Q, Lt));
    TIME_MS(t_nr_t, gpu->ops->rms_norm_rope(gpu, &qt4, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &Q, 0));
    TIME_MS(t_att, gpu->ops->attention(gpu, &Q, &K, &V, &mask, 0, 0.0884f, &O));
    TIME_MS(t_ag_i, gpu->ops->add_gated(gpu, &img, &gt, 6 * D, &pi));
    TIME_MS(t_ag_t, gpu->ops->add_gated(gpu, &txt, &gt, 6 * D, &pt));
    double t_agln_i, t_agln_t;
    TIME_MS(t_agln_i, gpu->ops->add_gated_layer_norm_mod(gpu, &img, &gt, 6 * D, &pi, &sh, &sc, 6 * D, 1e-6f, &ni));
    TIME_MS(t_agln_t, gpu->ops->add_gated_layer_norm_mod(gpu, &txt, &gt, 6 * D, &pt, &sh, &sc, 6 * D, 1e-6f, &nt));
    TIME_MS(t_up_i, gpu->ops->linear(gpu, &ni, &wfd_, &bf_, QI_ACT_GELU_TANH, &fi));
    TIME_MS(t_up_t, gpu->ops->linear(gpu, &nt, &wfd_, &bf_, QI_ACT_GELU_TANH, &ft));
    TIME_MS(t_dn_i, gpu->ops->linear(gpu, &fi, &wdf_, &bd_, QI_ACT_NONE, &pi));
    TIME_MS(t_dn_t, gpu->ops->linear(gpu, &ft, &wdf_, &bd_, QI_ACT_NONE, &pt));
    double gemm_i = 4 * t_lin_i + t_up_i + t_dn_i, gemm_t = 4 * t_lin_t + t_up_t + t_dn_t;
    /* LN-mod, gated add + LN-mod (fused), gated add; 4 norm + rope */
    double mem = (t_ln_i + t_ln_t) + (t_agln_i + t_agln_t) + (t_ag_i + t_ag_t) + 2 * (t_nr_i + t_nr_t);
    double blk = gemm_i + gemm_t + t_att + mem;
    double fl_i = 2.0 * Li * D * D * 4 + 2.0 * 2 * Li * D * F, fl_t = fl_i * Lt / Li, fl_a = 4.0 * H * Lj * Lj * Dh;
    printf("DiT block at 1024²/txt128, each op timed alone (ms; × 60 for a call):\n");
    printf("  image linears  (q,k,v,out %.3f each; MLP up %.3f, down %.3f) %7.3f  %6.2f per call  %4.0f TFLOP/s\n",
           t_lin_i, t_up_i, t_dn_i, gemm_i, 60 * gemm_i, fl_i / (gemm_i * 1e-3) / 1e12);
    printf("  text linears   (q,k,v,out %.3f each; MLP up %.3f, down %.3f) %7.3f  %6.2f per call  %4.0f TFLOP/s\n",
           t_lin_t, t_up_t, t_dn_t, gemm_t, 60 * gemm_t, fl_t / (gemm_t * 1e-3) / 1e12);
    printf("  attention      (joint 4224, masked)                          %7.3f  %6.2f per call  %4.0f TFLOP/s\n", t_att,
           60 * t_att, fl_a / (t_att * 1e-3) / 1e12);
    printf("  memory-bound   (LN-mod %.3f+%.3f, gated add+LN-mod %.3f+%.3f, gated add %.3f+%.3f, 4 norm+rope %.3f+%.3f) %7.3f  %6.2f per call\n",
           t_ln_i, t_ln_t, t_agln_i, t_agln_t, t_ag_i, t_ag_t, t_nr_i, t_nr_t, mem, 60 * mem);
    printf("  block total                                                  %7.3f  %6.2f per call\n", blk, 60 * blk);
    for (int i = 0; i < 6; i++) free(hk[i]);
    qi_tensor *ws[6] = {&wdd_, &wfd_, &wdf_, &bd_, &bf_, &nw};
    for (int i = 0; i < 6; i++) gpu->ops->weight_free(gpu, ws[i]);
    gpu->ops->reset(gpu, mk);
}

static void bench_fused(void) {
    bench_dit_block();
    printf("fused-op timings (median of %d after %d warm-up, CUDA events):\n", REPS, WARM);
    /* every 3×3 conv shape of the 1024² decode (latent 128²) */
    bench_conv_fused(16, 128, 128, 384, 0, 0, "conv_in");
    bench_conv_fused(384, 128, 128, 384, 0, 1, "128² res");
    bench_conv_fused(384, 128, 128, 192, 1, 0, "up ->256²");
    bench_conv_fused(192, 256, 256, 384, 0, 0, "256² res0");
    bench_conv_fused(384, 256, 256, 384, 0, 1, "256² res");
    bench_conv_fused(384, 256, 256, 192, 1, 0, "up ->512²");
    bench_conv_fused(192, 512, 512, 192, 0, 1, "512² res");
    bench_conv_fused(192, 512, 512, 96, 1, 0, "up ->1024²");
    bench_conv_fused(96, 1024, 1024, 96, 0, 1, "1024² res");
    bench_conv_fused(96, 1024, 1024, 3, 0, 0, "conv_out");
    size_t mk = gpu->ops->mark(gpu);
    {
        int64_t xs[3] = {96, 1024, 1024}, cs[1] = {96};
        uint16_t *hg;
        qi_tensor x = g_rand(3, xs, 1.0f), y, g = g_weight(1, cs, 1.0f, &hg);
        must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, xs, &err), "y");
        double ms_f, ms_p, mb = 96.0 * 1024 * 1024 * 2 / 1e6;
        TIME_MS(ms_f, gpu->ops->channel_rms_norm_act(gpu, &x, &g, NULL, QI_ACT_SILU, &y));
        TIME_MS(ms_p, { gpu->ops->channel_rms_norm(gpu, &x, &g, NULL, &y); gpu->ops->activate(gpu, &y, QI_ACT_SILU, &y); });
        printf("  %-12s channel_rms_norm_act silu [96, 1024, 1024] %7.3f ms %5.0f GB/s | norm + activate %7.3f ms\n",
               "VAE", ms_f, 2 * mb / ms_f, ms_p);
        gpu->ops->weight_free(gpu, &g);
        free(hg);
    }
    gpu->ops->reset(gpu, mk);
    {
        int64_t xs[4] = {1, 4096, 24, 128}, ds[4] = {1, 4224, 24, 128}, ts[2] = {4224, 64}, wn[1] = {128};
        qi_tensor x = g_rand(4, xs, 1.0f), d, ct, st;
        must(gpu->ops->tensor(gpu, &d, QI_BF16, 4, ds, &err), "d");
        must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, ts, &err), "cos");
        must(gpu->ops->tensor(gpu, &st, QI_F32, 2, ts, &err), "sin");
        float *h = malloc(4224 * 64 * sizeof(float));
        for (int i = 0; i < 4224 * 64; i++) h[i] = frand();
        must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
        must(gpu->ops->upload(gpu, &st, h, &err), "sin");
        free(h);
        uint16_t *hw;
        qi_tensor nw = g_weight(1, wn, 1.0f, &hw);
        qi_tensor x2 = qi_view2(&x, 4096 * 24, 128), d2 = qi_view2(&d, 4224 * 24, 128);
        double ms_f, ms_p, mb = 4096.0 * 3072 * 2 / 1e6;
        TIME_MS(ms_f, gpu->ops->rms_norm_rope(gpu, &x, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &d, 128));
        TIME_MS(ms_p, {
            gpu->ops->rms_norm(gpu, &x2, &nw, 1e-6f, &x2);
            gpu->ops->copy_rows(gpu, &x2, 0, &d2, 128 * 24, 4096 * 24);
            gpu->ops->rope(gpu, &d, &ct, &st, QI_ROPE_INTERLEAVED);
        });
        printf("  %-12s rms_norm_rope [1, 4096, 24, 128] -> joint @128 %7.3f ms %5.0f GB/s | rms_norm + copy_rows + rope %7.3f ms\n",
               "DiT", ms_f, 2 * mb / ms_f, ms_p);
        gpu->ops->weight_free(gpu, &nw);
        free(hw);
    }
    gpu->ops->reset(gpu, mk);
}

static void bench_conv1x1(int64_t Ci, int64_t H, int64_t W, int64_t Co) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 1, 1}, bs[1] = {Co}, ys[3] = {Co, H, W};
    uint16_t *hw, *hb;
    qi_tensor x = g_rand(3, xs, 1.0f), w = g_weight(4, ws, 0.02f, &hw), b = g_weight(1, bs, 0.1f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->conv2d(gpu, &x, &w, &b, 0, &y));
    printf("  %-16s conv2d 1x1 [%lld,%lld,%lld] -> %lld %8.3f ms  %6.1f TFLOP/s\n", "VAE", (long long)Ci,
           (long long)H, (long long)W, (long long)Co, ms, 2.0 * Co * Ci * H * W / (ms * 1e-3) / 1e12);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

static void bench(void) {
    printf("timings (median of %d after %d warm-up, CUDA events):\n", REPS, WARM);
    if (!only_attention) {
        bench_linear(4224, 3072, 3072, QI_ACT_NONE, "DiT q/k/v/out");
        bench_linear(4224, 3072, 12288, QI_ACT_GELU_TANH, "DiT MLP up");
        bench_linear(4224, 12288, 3072, QI_ACT_NONE, "DiT MLP down");
        bench_linear(8192, 8192, 8192, QI_ACT_NONE, "ceiling");
        bench_linear(167, 3584, 37888, QI_ACT_NONE, "TE gate+up");
    }
    for (int ki = 0; ki < n_kernels_128(); ki++)
        bench_attention(1, 4224, 24, 24, 128, 0, 1, "DiT 1024²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < 7; ki++)
        bench_attention(1, 4224, 24, 24, 128, 0, 0, "DiT 1024²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < 7; ki++)
        bench_attention(1, 1152, 24, 24, 128, 0, 1, "DiT 512²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < 7; ki++)
        bench_attention(2, 4224, 24, 24, 128, 0, 1, "DiT 1024² CFG", kernels_128[ki]);
    bench_attention(1, 167, 28, 4, 128, 1, 0, "TE", default_kernel);
    bench_attention(1, 167, 28, 4, 128, 1, 0, "TE", "mma");
    bench_attention(1, 4096, 1, 1, 384, 0, 0, "VAE mid 512²", "auto");
    bench_attention(1, 16384, 1, 1, 384, 0, 0, "VAE mid 1024²", "auto");
    if (only_attention) return;
    bench_memory_ops();
    bench_conv(384, 128, 128, 384);
    bench_conv(192, 512, 512, 192);
    bench_conv1x1(1728, 512, 512, 192); /* the same GEMM without im2col */
}

int main(void) {
    const char *seed = getenv("QI_TEST_SEED");
    rng_state = seed ? strtoull(seed, NULL, 10) : (uint64_t)time(NULL);
    printf("seed %llu (QI_TEST_SEED to repeat)\n", (unsigned long long)rng_state);
    if (qi_backend_cuda_create(0, (size_t)12 << 30, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    must(qi_backend_cpu_create(0, 0, &cpu, &err), "cpu backend");
    const char *w = getenv("QI_TEST_WGMMA"), *only = getenv("QI_TEST_ONLY");
    if (w && strcmp(w, "0") == 0) {
        use_wgmma = 0;
        default_kernel = "mma";
        qi_cuda_set_attention_kernel(gpu, default_kernel);
    }
    only_attention = only && strcmp(only, "attention") == 0;
    only_fused = only && strcmp(only, "fused") == 0;
    if (only_attention) goto attention;
    if (only_fused) goto fused;
    RUN(test_errors_reach_sync);
    RUN(test_linear);
    RUN(test_embedding);
    RUN(test_rms_norm);
    RUN(test_layer_norm_mod);
    RUN(test_add_gated);
    RUN(test_activate);
    RUN(test_silu_mul);
    RUN(test_axpby);
    RUN(test_copy_rows);
    RUN(test_rope);
attention:
    RUN(test_attention);
    if (only_attention) goto table;
    RUN(test_cfg_combine);
    RUN(test_conv2d);
    RUN(test_upsample2x);
    RUN(test_channel_rms_norm);
    RUN(test_transpose2d);
    RUN(test_graph_replay);
fused:
    if (only_fused) RUN(test_conv2d);
    RUN(test_conv2d_fused);
    RUN(test_channel_rms_norm_act);
    RUN(test_rms_norm_rope);
    RUN(test_add_gated_layer_norm_mod);
table:

    printf("\n| op | shape | rel L2 | tolerance |\n|---|---|---|---|\n");
    for (int i = 0; i < nrows; i++)
        printf("| %s | %s | %.2e | %.1e |\n", rows[i].op, rows[i].shape, rows[i].err, rows[i].tol);
    printf("\n");
    const char *b = getenv("QI_CUDA_BENCH");
    if (only_fused) {
        if (!b || strcmp(b, "0") != 0) bench_fused();
    } else if (!b || strcmp(b, "0") != 0) {
        bench();
        bench_fused();
    }
    cpu->ops->destroy(cpu);
    gpu->ops->destroy(gpu);
    TEST_END();
}

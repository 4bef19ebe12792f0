/*
 * test_cuda_backend_caps.c — claims about what the CUDA backend promises:
 * its `supports` answers (every storage type through weight + linear /
 * conv2d / embedding), its optional slots, its op table passing the check,
 * the native stream, creation by name, and that the entry points that
 * allocate, free or copy select the backend's device themselves and give the
 * caller's back (destroy and weight_free after another device became
 * current on the creating thread). Needs a GPU ("cuda" label).
 */
#define _DEFAULT_SOURCE
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend_caps.h"
#include "test.h"

static qi_backend *gpu;

/* Tolerance 1e-2: activations and weights in bf16 (relative rounding 2^-9
 * per element, F32/F16 weights rounded at load) and a bf16 result. */
static void cuda_supports_says_what_the_ops_do(void) { caps_check_weight_ops(gpu, 1e-2); }

/* The scale is applied in float32 at load, then rounded to bf16: 1e-2. */
static void cuda_scaled_weights_give_scaled_results(void) { caps_check_scaled_weights(gpu, 1e-2); }

static void cuda_supports_the_documented_table(void) {
    const qi_dtype floats[] = {QI_F32, QI_F16, QI_BF16, QI_F8_E4M3, QI_F8_E5M2};
    for (size_t i = 0; i < QI_ARRAY_LEN(floats); i++)
        for (int cap = QI_CAP_WEIGHT; cap <= QI_CAP_EMBEDDING; cap++)
            CHECK(qi_backend_supports(gpu, (qi_cap)cap, floats[i]), "cap %d, %s", cap, qi_dtype_name(floats[i]));
    CHECK(qi_backend_supports(gpu, QI_CAP_WEIGHT, QI_I32));
    for (int cap = QI_CAP_LINEAR; cap <= QI_CAP_EMBEDDING; cap++)
        CHECK(!qi_backend_supports(gpu, (qi_cap)cap, QI_I32), "cap %d, I32", cap);
    for (int t = QI_Q4_0; t <= QI_Q6_K; t++) /* 2-D: kept as stored; other shapes: bf16 at load */
        for (int cap = QI_CAP_WEIGHT; cap <= QI_CAP_EMBEDDING; cap++)
            CHECK(qi_backend_supports(gpu, (qi_cap)cap, (qi_dtype)t), "cap %d, %s", cap, qi_dtype_name((qi_dtype)t));
    CHECK(qi_backend_supports(gpu, QI_CAP_GRAPHS, QI_F32));
    CHECK(qi_backend_supports(gpu, QI_CAP_RANDOM_WEIGHTS, QI_F32));
    CHECK(qi_backend_supports(gpu, QI_CAP_CUDA_RNG, QI_F32));
    caps_check_optional_slots(gpu);
}

/* GRAPHS is claimed: a recorded axpby replays on the tensors' new contents. */
static void cuda_graph_claim_holds(void) {
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor a, b, out;
    REQUIRE(!qi_be_act2(gpu, &a, 4, 8, &err) && !qi_be_act2(gpu, &b, 4, 8, &err) &&
            !qi_be_act2(gpu, &out, 4, 8, &err));
    float av[32], bv[32], got[32];
    for (int i = 0; i < 32; i++) av[i] = (float)i, bv[i] = 1.0f;
    REQUIRE(!gpu->ops->upload(gpu, &a, av, &err) && !gpu->ops->upload(gpu, &b, bv, &err), "%s", err.msg);
    gpu->ops->axpby(gpu, 2.0f, &a, 1.0f, &b, &out); /* once outside the recording */
    qi_graph *g = NULL;
    REQUIRE(gpu->ops->graph_begin(gpu, &err) == QI_OK, "%s", err.msg);
    gpu->ops->axpby(gpu, 2.0f, &a, 1.0f, &b, &out);
    REQUIRE(gpu->ops->graph_end(gpu, &g, &err) == QI_OK && g, "%s", err.msg);
    for (int i = 0; i < 32; i++) bv[i] = -3.0f;
    REQUIRE(!gpu->ops->upload(gpu, &b, bv, &err), "%s", err.msg);
    CHECK(gpu->ops->graph_launch(gpu, g, &err) == QI_OK, "%s", err.msg);
    CHECK(gpu->ops->download(gpu, &out, got, &err) == QI_OK, "%s", err.msg);
    for (int i = 0; i < 32; i++) CHECK(got[i] == 2.0f * i - 3.0f, "out[%d] = %g", i, got[i]);
    gpu->ops->graph_free(gpu, g);
    gpu->ops->reset(gpu, mark);
}

static void cuda_native_stream_is_its_stream(void) {
    REQUIRE(gpu->ops->native_stream != NULL);
    CHECK(gpu->ops->native_stream(gpu) == qi_cuda_stream(gpu));
    qi_error err;
    CHECK(gpu->ops->make_current(gpu, &err) == QI_OK, "%s", err.msg);
}

static void cuda_table_refuses_a_partial_graph_group(void) {
    qi_backend_ops ops = *gpu->ops;
    qi_error err = {{0}};
    ops.graph_free = NULL;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND);
    CHECK(strstr(err.msg, "cuda") && strstr(err.msg, "'graph_free'"), "%s", err.msg);
    ops = *gpu->ops;
    ops.attention = NULL;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND && strstr(err.msg, "'attention'"), "%s", err.msg);
}

static void create_by_name_reaches_cuda(void) {
    qi_backend *b = NULL;
    qi_error err = {{0}};
    CHECK(qi_backend_create("cuda", 0, (size_t)64 << 20, &b, &err) == QI_OK && b, "%s", err.msg);
    if (b) {
        CHECK(b->act_dtype == QI_BF16 && qi_cuda_device(b) == 0);
        b->ops->destroy(b);
    }
    int count = 0;
    cudaGetDeviceCount(&count);
    char name[32];
    snprintf(name, sizeof name, "cuda:%d", count); /* one past the last */
    b = (qi_backend *)1;
    CHECK(qi_backend_create(name, 0, (size_t)64 << 20, &b, &err) == QI_ERR_ARG && b == NULL, "%s", name);
    CHECK(strstr(err.msg, "does not exist"), "%s", err.msg);
}

/* On the creating thread, after another device became current: weight,
 * upload, download, sync, weight_free and destroy work on the backend's
 * device and leave the caller's current. With one GPU the "other" device is
 * the same one, and the claim reduces to "the current device is kept". */
static void entry_points_select_their_device_and_restore_the_callers(void) {
    int count = 0;
    cudaGetDeviceCount(&count);
    int mine = count > 1 ? 1 : 0, other = 0;
    if (count < 2) printf("  (one GPU: the cross-device part is not exercised)\n");
    qi_backend *b = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_backend_cuda_create(mine, (size_t)64 << 20, &b, &err) == QI_OK, "%s", err.msg);
    int cur = -1;
    cudaGetDevice(&cur);
    CHECK(cur == mine, "creation leaves its device current (%d, want %d)", cur, mine);
    REQUIRE(cudaSetDevice(other) == cudaSuccess);

    uint16_t wh[64];
    for (int i = 0; i < 64; i++) wh[i] = qi_f32_to_bf16((float)i);
    qi_tensor w, t;
    int64_t ne[2] = {8, 8};
    CHECK(b->ops->weight(b, &w, QI_BF16, 2, ne, wh, NULL, &err) == QI_OK, "%s", err.msg);
    struct cudaPointerAttributes attr;
    if (w.data && cudaPointerGetAttributes(&attr, w.data) == cudaSuccess)
        CHECK(attr.device == mine, "the weight lives on device %d, want %d", attr.device, mine);
    cudaGetDevice(&cur);
    CHECK(cur == other, "weight left device %d current, want %d", cur, other);

    float in[64], back[64];
    for (int i = 0; i < 64; i++) in[i] = (float)i;
    CHECK(b->ops->persistent(b, &t, QI_F32, 2, ne, &err) == QI_OK, "%s", err.msg);
    CHECK(b->ops->upload(b, &t, in, &err) == QI_OK, "%s", err.msg);
    CHECK(b->ops->sync(b, &err) == QI_OK, "%s", err.msg);
    CHECK(b->ops->download(b, &t, back, &err) == QI_OK, "%s", err.msg);
    CHECK(!memcmp(in, back, sizeof in), "the round trip through device %d", mine);
    cudaGetDevice(&cur);
    CHECK(cur == other, "transfers left device %d current, want %d", cur, other);

    b->ops->weight_free(b, &t);
    b->ops->weight_free(b, &w);
    CHECK(w.data == NULL && t.data == NULL);
    CHECK(qi_cuda_weight_bytes(b) == 0, "weight_free released everything (%zu bytes held)", qi_cuda_weight_bytes(b));
    b->ops->destroy(b);
    cudaGetDevice(&cur);
    CHECK(cur == other, "weight_free/destroy left device %d current, want %d", cur, other);
    CHECK(cudaGetLastError() == cudaSuccess, "no CUDA error left behind");
}

/* Runs linear (x[5, K] · wᵀ) and embedding (5 rows of w as a table) with
 * weight w on backend be; the outputs as float32 into y_lin, y_emb. */
static void lin_emb(qi_backend *be, const qi_tensor *w, const float *xv, float *y_lin, float *y_emb) {
    enum { M = 5 };
    int64_t N = w->ne[0], K = w->ne[1];
    size_t mark = be->ops->mark(be);
    qi_error err = {{0}};
    qi_tensor x, y, ids, e;
    int64_t xne[2] = {M, K}, ine[1] = {M};
    int32_t idv[M] = {3, 0, (int32_t)N - 1, 17, 5};
    REQUIRE(!qi_be_act(be, &x, 2, xne, &err) && !qi_be_act2(be, &y, M, N, &err) &&
            !be->ops->tensor(be, &ids, QI_I32, 1, ine, &err) && !qi_be_act2(be, &e, M, K, &err), "%s", err.msg);
    REQUIRE(!be->ops->upload(be, &x, xv, &err) && !be->ops->upload(be, &ids, idv, &err), "%s", err.msg);
    be->ops->linear(be, &x, w, NULL, QI_ACT_NONE, &y);
    be->ops->embedding(be, w, &ids, &e);
    CHECK(be->ops->sync(be, &err) == QI_OK, "%s", err.msg);
    CHECK(!be->ops->download(be, &y, y_lin, &err) && !be->ops->download(be, &e, y_emb, &err), "%s", err.msg);
    be->ops->reset(be, mark);
}

/* Weights kept on the device in their file type (fp8 plain, with a per-tensor
 * or a per-row scale, and every GGUF block type) give linear and embedding
 * results bit-identical to the same weights converted to bf16 at load (a
 * second backend with QI_CUDA_DEQUANT_AT_LOAD=1): the device decodes them
 * with the host's formulas. And they hold their stored bytes, not bf16's.
 * With the fp8 GEMM off: its e4m3 activations are claimed further down. */
static void kept_weights_match_with_the_fp8_gemm_off(void);

static void kept_weights_match_weights_converted_at_load(void) {
    /* the claim is the expansion path's: the fp8 GEMM and the block GEMM have their own */
    int fp8_was_on = qi_cuda_set_fp8_gemm(gpu, 0);
    int64_t block_rows = qi_cuda_set_block_gemm_rows(gpu, 0);
    kept_weights_match_with_the_fp8_gemm_off();
    qi_cuda_set_fp8_gemm(gpu, fp8_was_on);
    qi_cuda_set_block_gemm_rows(gpu, block_rows);
}

static void kept_weights_match_with_the_fp8_gemm_off(void) {
    qi_backend *ref = NULL;
    qi_error err = {{0}};
    setenv("QI_CUDA_DEQUANT_AT_LOAD", "1", 1);
    qi_status st = qi_backend_cuda_create(0, (size_t)64 << 20, &ref, &err);
    unsetenv("QI_CUDA_DEQUANT_AT_LOAD");
    REQUIRE(st == QI_OK, "%s", err.msg);
    enum { N = 64, K = 256, M = 5 };
    static float row_scales[N];
    for (int i = 0; i < N; i++) row_scales[i] = 0.01f * (float)(i + 1) * (i % 3 ? 1.0f : -1.0f);
    const qi_weight_scale tensor_scale = {QI_SCALE_TENSOR, 0.37f, NULL}, row_scale = {QI_SCALE_ROW, 0, row_scales};
    struct {
        qi_dtype t;
        const qi_weight_scale *scale;
    } cases[] = {{QI_F8_E4M3, NULL}, {QI_F8_E4M3, &tensor_scale}, {QI_F8_E4M3, &row_scale},
                 {QI_F8_E5M2, NULL}, {QI_F8_E5M2, &row_scale},   {QI_Q4_0, NULL}, {QI_Q4_1, NULL},
                 {QI_Q5_0, NULL},    {QI_Q5_1, NULL},            {QI_Q8_0, NULL}, {QI_Q2_K, NULL},
                 {QI_Q3_K, NULL},    {QI_Q4_K, NULL},            {QI_Q5_K, NULL}, {QI_Q6_K, &row_scale}};
    static uint8_t host[N * K * 8];
    static float wref[N * K], xv[M * K], a_lin[M * N], b_lin[M * N], a_emb[M * K], b_emb[M * K];
    for (int i = 0; i < M * K; i++) xv[i] = caps_frand();
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        qi_dtype t = cases[c].t;
        const char *sc = !cases[c].scale ? "no scale" : cases[c].scale->form == QI_SCALE_TENSOR ? "tensor scale"
                                                                                                  : "row scales";
        caps_host_data(t, N * K, host, wref);
        int64_t ne[2] = {N, K};
        qi_tensor wk, wc;
        REQUIRE(!gpu->ops->weight(gpu, &wk, t, 2, ne, host, cases[c].scale, &err), "%s", err.msg);
        REQUIRE(!ref->ops->weight(ref, &wc, t, 2, ne, host, cases[c].scale, &err), "%s", err.msg);
        CHECK(wk.dtype == t && qi_nbytes(&wk) == (size_t)(N * qi_row_bytes(t, K)) && wc.dtype == QI_BF16,
              "%s: kept as %s (%zu bytes), converted as %s", qi_dtype_name(t), qi_dtype_name(wk.dtype),
              qi_nbytes(&wk), qi_dtype_name(wc.dtype));
        lin_emb(gpu, &wk, xv, a_lin, a_emb);
        lin_emb(ref, &wc, xv, b_lin, b_emb);
        CHECK(!memcmp(a_lin, b_lin, sizeof a_lin), "%s, %s: linear differs from the weight converted at load",
              qi_dtype_name(t), sc);
        CHECK(!memcmp(a_emb, b_emb, sizeof a_emb), "%s, %s: embedding differs from the table converted at load",
              qi_dtype_name(t), sc);
        gpu->ops->weight_free(gpu, &wk);
        ref->ops->weight_free(ref, &wc);
    }
    CHECK(qi_cuda_weight_bytes(ref) == 0, "%zu bytes left", qi_cuda_weight_bytes(ref));
    ref->ops->destroy(ref);
}

/* ---- the fp8 GEMM (src/backend/cuda/cuda_fp8_gemm.cu) ------------------------------------ */

/* What every fp8 claim below measures against: float64 sums of the float
 * activations (as uploaded, before the device rounds them to bf16) times
 * the dequantised weight (stored e4m3 value × its scale), + bias, then act.
 *
 * The bound, relative L2 over the output ≤ 3e-2: the GEMM reads the weight
 * exactly as stored, and rounds each activation to e4m3 after dividing by
 * one per-tensor scale (amax/448). e4m3 keeps 3 mantissa bits: within a
 * binade [2^e, 2^(e+1)) the rounding error is uniform in ±2^(e-4), which
 * weighted by x² (a dot product's terms add in quadrature) gives a relative
 * rms error of 1/sqrt(12·64·7/3) ≈ 2.4e-2, for any activation distribution
 * that stays clear of e4m3's subnormals (2^-6 of 448/amax); the activations
 * being bf16 first adds exact ties (≈ 1 in 32). A CPU simulation of these
 * very cases (same data, bf16 → e4m3 round-to-nearest-even, bf16 output)
 * gave 2.0–2.6e-2 at both shapes: the bound leaves ~15% room. The bf16
 * expansion path answers with ≈ 3e-3 (2^-9 per activation), so the
 * counters, and the floor of 5e-3 in the plain case, say which path ran. */
enum { FP8_SAMPLES = 24 };

typedef struct fp8_problem {
    int64_t M, K, N;
    uint8_t *w;       /* [N, K] e4m3 bytes */
    float *x;         /* [M, K] */
    float lut[256];   /* e4m3 byte -> value */
    double *dot;      /* [FP8_SAMPLES, N]: x[row] · raw w[o] */
    int64_t rows[FP8_SAMPLES];
} fp8_problem;

static void fp8_problem_make(fp8_problem *p, int64_t M, int64_t K, int64_t N) {
    p->M = M, p->K = K, p->N = N;
    p->w = malloc((size_t)(N * K));
    p->x = malloc(sizeof(float) * (size_t)(M * K));
    p->dot = malloc(sizeof(double) * FP8_SAMPLES * (size_t)N);
    uint8_t bytes[256];
    for (int i = 0; i < 256; i++) bytes[i] = (uint8_t)i;
    qi_to_f32(p->lut, bytes, QI_F8_E4M3, 256);
    for (int64_t i = 0; i < N * K; i++) { /* top exponent bit clear: |w| < 2, no NaN */
        caps_rng = caps_rng * 1664525u + 1013904223u;
        p->w[i] = (uint8_t)(caps_rng >> 13) & 0xBF;
    }
    for (int64_t i = 0; i < M * K; i++) p->x[i] = caps_frand();
    for (int r = 0; r < FP8_SAMPLES; r++) /* spread over the rows, the last one included */
        p->rows[r] = r == FP8_SAMPLES - 1 ? M - 1 : ((int64_t)r * M / FP8_SAMPLES + r % 7) % M;
    for (int r = 0; r < FP8_SAMPLES; r++)
        for (int64_t o = 0; o < N; o++) {
            const float *xr = p->x + p->rows[r] * K;
            const uint8_t *wr = p->w + o * K;
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)xr[k] * p->lut[wr[k]];
            p->dot[r * N + o] = s;
        }
}

static void fp8_problem_free(fp8_problem *p) { free(p->w), free(p->x), free(p->dot); }

static double act_ref(double v, qi_act act) {
    if (act == QI_ACT_GELU_TANH) return 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    if (act == QI_ACT_SILU) return v / (1 + exp(-v));
    return v;
}

/* linear(x, w, b, act) on the GPU for the sampled rows of p, as floats
 * [FP8_SAMPLES, N] into got; the counters' increments into *fp8, *expanded. */
static void fp8_linear(const fp8_problem *p, const qi_tensor *w, const qi_tensor *b, qi_act act, float *got,
                       unsigned long long *fp8, unsigned long long *expanded) {
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor x, y;
    REQUIRE(!qi_be_act2(gpu, &x, p->M, p->K, &err) && !qi_be_act2(gpu, &y, p->M, p->N, &err), "%s", err.msg);
    REQUIRE(!gpu->ops->upload(gpu, &x, p->x, &err), "%s", err.msg);
    unsigned long long f0, e0, f1, e1;
    qi_cuda_gemm_counts(gpu, &f0, &e0);
    gpu->ops->linear(gpu, &x, w, b, act, &y);
    qi_cuda_gemm_counts(gpu, &f1, &e1);
    *fp8 = f1 - f0, *expanded = e1 - e0;
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    for (int r = 0; r < FP8_SAMPLES; r++) {
        qi_tensor row = qi_slice_rows(&y, p->rows[r], 1);
        CHECK(!gpu->ops->download(gpu, &row, got + r * p->N, &err), "%s", err.msg);
    }
    gpu->ops->reset(gpu, mark);
}

/* Relative L2 of got against act(scale[o] · dot + bias[o]) over the samples. */
static double fp8_error(const fp8_problem *p, const float *got, const qi_weight_scale *sc, const float *bias,
                        qi_act act) {
    double num = 0, den = 0;
    for (int r = 0; r < FP8_SAMPLES; r++)
        for (int64_t o = 0; o < p->N; o++) {
            double s = !sc ? 1.0 : sc->form == QI_SCALE_TENSOR ? sc->scale : sc->row_scale[o];
            double want = act_ref(s * p->dot[r * p->N + o] + (bias ? bias[o] : 0.0), act);
            double d = got[r * p->N + o] - want;
            num += d * d, den += want * want;
        }
    return den > 0 ? sqrt(num / den) : -1;
}

/* The claim at one shape: plain, per-tensor and per-row scales, with and
 * without a bias, with no activation, tanh GELU (cuBLASLt's epilogue) and
 * SiLU (the finishing kernel), each within 3e-2 of the float product and
 * answered by the fp8 GEMM (the counters). */
static void fp8_claims_at(int64_t M, int64_t K, int64_t N) {
    fp8_problem p;
    fp8_problem_make(&p, M, K, N);
    float *row_scales = malloc(sizeof(float) * (size_t)N), *bias = malloc(sizeof(float) * (size_t)N);
    float *got = malloc(sizeof(float) * FP8_SAMPLES * (size_t)N), *bias_bf16 = malloc(sizeof(float) * (size_t)N);
    for (int64_t o = 0; o < N; o++) {
        row_scales[o] = (o % 5 == 0 ? 40.0f : o % 3 == 0 ? 1e-3f : 0.5f) * (1.0f + 0.25f * caps_frand());
        bias[o] = 8.0f * caps_frand();
        bias_bf16[o] = qi_bf16_to_f32(qi_f32_to_bf16(bias[o])); /* the device keeps the bias as bf16 */
    }
    const qi_weight_scale tensor = {QI_SCALE_TENSOR, 0.37f, NULL}, rows = {QI_SCALE_ROW, 0, row_scales};
    struct {
        const qi_weight_scale *scale;
        int bias;
        qi_act act;
    } cases[] = {{NULL, 0, QI_ACT_NONE},   {&tensor, 0, QI_ACT_NONE},     {&rows, 0, QI_ACT_NONE},
                 {NULL, 1, QI_ACT_NONE},   {&tensor, 1, QI_ACT_NONE},     {&rows, 1, QI_ACT_NONE},
                 {&tensor, 1, QI_ACT_GELU_TANH}, {&rows, 0, QI_ACT_SILU}, {NULL, 1, QI_ACT_SILU}};
    qi_error err = {{0}};
    qi_tensor b;
    int64_t bne[1] = {N};
    REQUIRE(!gpu->ops->weight(gpu, &b, QI_F32, 1, bne, bias, NULL, &err), "%s", err.msg);
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        qi_tensor w;
        int64_t ne[2] = {N, K};
        REQUIRE(!gpu->ops->weight(gpu, &w, QI_F8_E4M3, 2, ne, p.w, cases[c].scale, &err), "%s", err.msg);
        unsigned long long fp8 = 0, expanded = 0;
        fp8_linear(&p, &w, cases[c].bias ? &b : NULL, cases[c].act, got, &fp8, &expanded);
        double e = fp8_error(&p, got, cases[c].scale, cases[c].bias ? bias_bf16 : NULL, cases[c].act);
        const char *sc = !cases[c].scale ? "plain" : cases[c].scale->form == QI_SCALE_TENSOR ? "per-tensor" : "per-row";
        printf("  fp8 GEMM %lldx%lldx%lld, %s scale%s, act %d: rel L2 %.3e (limit 3e-2; simulated 2.0-2.6e-2)\n",
               (long long)M, (long long)K, (long long)N, sc, cases[c].bias ? ", bias" : "", (int)cases[c].act, e);
        CHECK(e >= 0 && e <= 3e-2, "%s%s act %d: rel L2 %.3g", sc, cases[c].bias ? " bias" : "", (int)cases[c].act, e);
        CHECK(fp8 == 1 && expanded == 0, "%s: the fp8 GEMM did not answer (fp8 %llu, expanded %llu; %s)", sc, fp8,
              expanded, qi_cuda_fp8_gemm_state(gpu));
        if (!cases[c].scale && !cases[c].bias) /* fp8's rounding, not bf16's, is in the result */
            CHECK(e >= 5e-3, "plain: rel L2 %.3g is below fp8 activation rounding", e);
        gpu->ops->weight_free(gpu, &w);
    }
    gpu->ops->weight_free(gpu, &b);
    free(row_scales), free(bias), free(got), free(bias_bf16);
    fp8_problem_free(&p);
}

/* On a device without fp8 tensor cores the switch stays off; else on. */
static int fp8_gemm_available(void) {
    if (qi_cuda_device_cc(gpu) < 89) {
        CHECK(!qi_cuda_set_fp8_gemm(gpu, 1), "compute capability %d has no fp8 tensor cores", qi_cuda_device_cc(gpu));
        printf("  (compute capability %d: no fp8 GEMM; %s)\n", qi_cuda_device_cc(gpu), qi_cuda_fp8_gemm_state(gpu));
        return 0;
    }
    CHECK(qi_cuda_set_fp8_gemm(gpu, 1), "%s", qi_cuda_fp8_gemm_state(gpu));
    return 1;
}

/* The transformer's FFN shape at 1024² (tokens 4096 image + 128 text). */
static void fp8_gemm_matches_the_float_product_at_the_ffn_shape(void) {
    if (fp8_gemm_available()) fp8_claims_at(4096 + 128, 3072, 12288);
}

/* Few rows, an odd count (the modulation linears run with 1–2 rows, the
 * text stream with any prompt length); K long enough that the error over
 * 3 × 256 outputs is a steady estimate of the rms figure. */
static void fp8_gemm_matches_the_float_product_with_three_rows(void) {
    if (fp8_gemm_available()) fp8_claims_at(3, 3072, 256);
}

/* What the fp8 GEMM does not take runs the expansion path, bit-identical
 * to the switch being off: dims not multiples of 16 (7 × 24, K 40), the
 * transformer's 64-channel first and last layers (K 64, N 64), and e5m2. */
static void fp8_gemm_leaves_odd_shapes_and_e5m2_to_the_expansion(void) {
    if (!fp8_gemm_available()) return;
    struct {
        qi_dtype t;
        int64_t M, K, N;
    } cases[] = {{QI_F8_E4M3, 5, 24, 7},   {QI_F8_E4M3, 5, 40, 128}, {QI_F8_E4M3, 64, 64, 256},
                 {QI_F8_E4M3, 64, 256, 64}, {QI_F8_E5M2, 5, 256, 128}};
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        fp8_problem p;
        fp8_problem_make(&p, cases[c].M, cases[c].K, cases[c].N);
        qi_error err = {{0}};
        qi_tensor w;
        int64_t ne[2] = {p.N, p.K};
        REQUIRE(!gpu->ops->weight(gpu, &w, cases[c].t, 2, ne, p.w, NULL, &err), "%s", err.msg);
        static float on[FP8_SAMPLES * 256], off[FP8_SAMPLES * 256];
        unsigned long long fp8, expanded, fp8_off, expanded_off;
        fp8_linear(&p, &w, NULL, QI_ACT_NONE, on, &fp8, &expanded);
        qi_cuda_set_fp8_gemm(gpu, 0);
        fp8_linear(&p, &w, NULL, QI_ACT_NONE, off, &fp8_off, &expanded_off);
        qi_cuda_set_fp8_gemm(gpu, 1);
        CHECK(fp8 == 0 && expanded == 1 && fp8_off == 0 && expanded_off == 1, "%s %lldx%lldx%lld: fp8 %llu, "
              "expanded %llu", qi_dtype_name(cases[c].t), (long long)p.M, (long long)p.K, (long long)p.N, fp8, expanded);
        CHECK(!memcmp(on, off, sizeof(float) * FP8_SAMPLES * (size_t)p.N), "%s %lldx%lldx%lld: differs from the "
              "switch off", qi_dtype_name(cases[c].t), (long long)p.M, (long long)p.K, (long long)p.N);
        gpu->ops->weight_free(gpu, &w);
        fp8_problem_free(&p);
    }
}

/* A recorded fp8 linear replays on new activations with their own scale
 * (the amax reduction resets itself on the device): the replay equals an
 * eager run on the same inputs, bit for bit, and the inputs' scale moved. */
static void fp8_gemm_replays_in_a_graph_with_fresh_scales(void) {
    if (!fp8_gemm_available()) return;
    enum { M = 256, K = 512, N = 1024 };
    fp8_problem p;
    fp8_problem_make(&p, M, K, N);
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor w, x, y, ref;
    int64_t ne[2] = {N, K};
    const qi_weight_scale tensor = {QI_SCALE_TENSOR, 0.25f, NULL};
    REQUIRE(!gpu->ops->weight(gpu, &w, QI_F8_E4M3, 2, ne, p.w, &tensor, &err), "%s", err.msg);
    REQUIRE(!qi_be_act2(gpu, &x, M, K, &err) && !qi_be_act2(gpu, &y, M, N, &err) &&
            !qi_be_act2(gpu, &ref, M, N, &err) && !gpu->ops->upload(gpu, &x, p.x, &err), "%s", err.msg);
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &y); /* plans made outside the recording */
    qi_graph *g = NULL;
    REQUIRE(gpu->ops->graph_begin(gpu, &err) == QI_OK, "%s", err.msg);
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &y);
    REQUIRE(gpu->ops->graph_end(gpu, &g, &err) == QI_OK && g, "%s", err.msg);
    float *x3 = malloc(sizeof(float) * M * K), *a = malloc(sizeof(float) * M * N), *b = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) x3[i] = p.x[i] * (i == 77 ? 50.0f : 3.0f); /* a new amax and an outlier */
    REQUIRE(!gpu->ops->upload(gpu, &x, x3, &err), "%s", err.msg);
    CHECK(gpu->ops->graph_launch(gpu, g, &err) == QI_OK, "%s", err.msg);
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &ref);
    CHECK(!gpu->ops->download(gpu, &y, a, &err) && !gpu->ops->download(gpu, &ref, b, &err), "%s", err.msg);
    CHECK(!memcmp(a, b, sizeof(float) * M * N), "the replay differs from an eager run on the same activations");
    double num = 0, den = 0; /* and both follow the new activations: sampled row 1 is 3× the old one */
    for (int64_t o = 0; o < N; o++) {
        double want = 0.25 * 3.0 * p.dot[1 * N + o];
        double d = a[p.rows[1] * N + o] - want;
        num += d * d, den += want * want;
    }
    CHECK(den > 0 && sqrt(num / den) < 6e-2, "row %lld after the replay: rel L2 %.3g", (long long)p.rows[1],
          sqrt(num / (den > 0 ? den : 1)));
    gpu->ops->graph_free(gpu, g);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->reset(gpu, mark);
    free(x3), free(a), free(b);
    fp8_problem_free(&p);
}

/* ---- linear_shared: several fp8 linears of one x, quantised once ---------------------- */

enum { SH_M = 200, SH_K = 512, SH_N = 256, SH_LIN = 4 };

/* The linears of the shared claims: the first three one shape (q/k/v: one
 * cuBLASLt plan, so a scale pointer left at another slot would show), each
 * weight its own scale; a bias epilogue, tanh GELU (epilogue), SiLU and a
 * per-row scale (the finishing kernel). */
typedef struct shared_set {
    qi_tensor w[SH_LIN], b;
    const qi_tensor *wp[SH_LIN], *bp[SH_LIN];
    qi_act act[SH_LIN];
    int64_t n[SH_LIN];
    float row_scales[2 * SH_N];
} shared_set;

static void shared_set_make(shared_set *s) {
    static const qi_weight_scale t1 = {QI_SCALE_TENSOR, 0.37f, NULL}, t2 = {QI_SCALE_TENSOR, 2.5f, NULL};
    qi_weight_scale rows = {QI_SCALE_ROW, 0, s->row_scales};
    const qi_weight_scale *sc[SH_LIN] = {&t1, &t2, NULL, &rows};
    const qi_act act[SH_LIN] = {QI_ACT_NONE, QI_ACT_GELU_TANH, QI_ACT_SILU, QI_ACT_NONE};
    const int bias[SH_LIN] = {1, 1, 0, 1};
    float bias_v[2 * SH_N];
    for (int o = 0; o < 2 * SH_N; o++) s->row_scales[o] = 0.5f + 0.25f * caps_frand(), bias_v[o] = caps_frand();
    qi_error err = {{0}};
    int64_t bne[1] = {SH_N};
    REQUIRE(!gpu->ops->weight(gpu, &s->b, QI_F32, 1, bne, bias_v, NULL, &err), "%s", err.msg);
    uint8_t *wb = malloc(2 * SH_N * SH_K);
    for (int k = 0; k < SH_LIN; k++) {
        s->n[k] = k == SH_LIN - 1 ? 2 * SH_N : SH_N;
        for (int64_t i = 0; i < s->n[k] * SH_K; i++) { /* |w| < 2, no NaN (top exponent bit clear) */
            caps_rng = caps_rng * 1664525u + 1013904223u;
            wb[i] = (uint8_t)(caps_rng >> 13) & 0xBF;
        }
        int64_t ne[2] = {s->n[k], SH_K};
        REQUIRE(!gpu->ops->weight(gpu, &s->w[k], QI_F8_E4M3, 2, ne, wb, sc[k], &err), "%s", err.msg);
        s->wp[k] = &s->w[k];
        s->bp[k] = bias[k] && s->n[k] == SH_N ? &s->b : NULL;
        s->act[k] = act[k];
    }
    free(wb);
}

static void shared_set_free(shared_set *s) {
    for (int k = 0; k < SH_LIN; k++) gpu->ops->weight_free(gpu, &s->w[k]);
    gpu->ops->weight_free(gpu, &s->b);
}

/* Outputs y[k] [SH_M, n[k]] of the set, from the arena. */
static void shared_outputs(const shared_set *s, qi_tensor *y, qi_tensor **yp) {
    qi_error err = {{0}};
    for (int k = 0; k < SH_LIN; k++) {
        REQUIRE(!qi_be_act2(gpu, &y[k], SH_M, s->n[k], &err), "%s", err.msg);
        yp[k] = &y[k];
    }
}

/* Every y[k] as floats, one after the other (malloc'd). */
static float *shared_download(const shared_set *s, const qi_tensor *y) {
    qi_error err = {{0}};
    float *out = malloc(sizeof(float) * SH_M * 5 * SH_N), *o = out;
    for (int k = 0; k < SH_LIN; k++) {
        CHECK(!gpu->ops->download(gpu, &y[k], o, &err), "%s", err.msg);
        o += SH_M * s->n[k];
    }
    return out;
}

/* linear_shared over the set equals the same linears called one by one, bit
 * for bit (the same amax, scale_x and rounding; each GEMM its own weight
 * scale), every linear answered by the fp8 GEMM; recorded in a graph, the
 * replay on new activations (another amax) equals one-by-one eager calls
 * on them. Saved work is not visible here: the bench measures it. */
static void fp8_shared_linears_equal_them_one_by_one(void) {
    if (!fp8_gemm_available()) return;
    shared_set s;
    shared_set_make(&s);
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor x, ys[SH_LIN], yr[SH_LIN], *ysp[SH_LIN], *yrp[SH_LIN];
    float *xv = malloc(sizeof(float) * SH_M * SH_K);
    for (int i = 0; i < SH_M * SH_K; i++) xv[i] = caps_frand();
    REQUIRE(!qi_be_act2(gpu, &x, SH_M, SH_K, &err) && !gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    shared_outputs(&s, ys, ysp);
    shared_outputs(&s, yr, yrp);
    REQUIRE(gpu->ops->linear_shared != NULL);
    for (int round = 0; round < 2; round++) { /* 0: eager; 1: recorded, replayed on new x */
        unsigned long long f0, e0, f1, e1;
        qi_cuda_gemm_counts(gpu, &f0, &e0);
        int took = 1;
        qi_graph *g = NULL;
        if (round == 0) {
            took = gpu->ops->linear_shared(gpu, &x, NULL, SH_LIN, s.wp, s.bp, s.act, ysp);
        } else {
            REQUIRE(gpu->ops->graph_begin(gpu, &err) == QI_OK, "%s", err.msg);
            took = gpu->ops->linear_shared(gpu, &x, NULL, SH_LIN, s.wp, s.bp, s.act, ysp);
            REQUIRE(gpu->ops->graph_end(gpu, &g, &err) == QI_OK && g, "%s", err.msg);
            for (int i = 0; i < SH_M * SH_K; i++) xv[i] *= i == 333 ? 40.0f : 3.0f; /* a new amax */
            REQUIRE(!gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
            CHECK(gpu->ops->graph_launch(gpu, g, &err) == QI_OK, "%s", err.msg);
        }
        qi_cuda_gemm_counts(gpu, &f1, &e1);
        CHECK(took == 1 && f1 - f0 == SH_LIN && e1 == e0, "round %d: taken %d, fp8 %llu, expanded %llu (%s)", round,
              took, f1 - f0, e1 - e0, qi_cuda_fp8_gemm_state(gpu));
        for (int k = 0; k < SH_LIN; k++) gpu->ops->linear(gpu, &x, s.wp[k], s.bp[k], s.act[k], yrp[k]);
        CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
        float *a = shared_download(&s, ys), *b = shared_download(&s, yr);
        size_t total = 0, diff = 0, nonzero = 0;
        for (int k = 0; k < SH_LIN; k++) total += (size_t)(SH_M * s.n[k]);
        for (size_t i = 0; i < total; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0, nonzero += a[i] != 0;
        CHECK(diff == 0, "round %d: %zu of %zu outputs differ from the linears one by one", round, diff, total);
        CHECK(nonzero > total / 2, "round %d: only %zu of %zu outputs are nonzero", round, nonzero, total);
        printf("  linear_shared x %d, round %d (%s): %zu outputs, %zu differ\n", SH_LIN, round,
               round ? "graph replay, new amax" : "eager", total, diff);
        free(a), free(b);
        gpu->ops->graph_free(gpu, g);
    }
    gpu->ops->reset(gpu, mark);
    shared_set_free(&s);
    free(xv);
}

/* linear_shared with src: x made by the LayerNorm that also takes the fp8
 * amax. Against the plain ops (layer_norm_mod or add_gated_layer_norm_mod,
 * then the linears one by one) on the same inputs, bit for bit: x, the
 * stream an add_gated updated, and every output; all GEMMs fp8. The
 * stream's rows are far from zero-mean and the modulation wide, so the
 * amax is set by a few large values (a wrong or stale amax would move
 * every quantised value). */
static void fp8_shared_linears_make_their_layer_norm(void) {
    if (!fp8_gemm_available()) return;
    shared_set s;
    shared_set_make(&s);
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    int64_t D = SH_K, L = SH_M;
    float *hv = malloc(sizeof(float) * L * D), *mv = malloc(sizeof(float) * 6 * D), *pv = malloc(sizeof(float) * L * D);
    for (int64_t i = 0; i < L * D; i++) hv[i] = 3.0f + 2.0f * caps_frand(), pv[i] = caps_frand();
    for (int64_t i = 0; i < 6 * D; i++) mv[i] = i % 97 == 5 ? 20.0f : caps_frand();
    qi_tensor h[2], p, mods, xn[2], ys[SH_LIN], yr[SH_LIN], *ysp[SH_LIN], *yrp[SH_LIN];
    for (int k = 0; k < 2; k++) /* [0]: linear_shared's, [1]: the plain ops' */
        REQUIRE(!qi_be_act3(gpu, &h[k], 1, L, D, &err) && !gpu->ops->upload(gpu, &h[k], hv, &err) &&
                !qi_be_act3(gpu, &xn[k], 1, L, D, &err), "%s", err.msg);
    REQUIRE(!qi_be_act3(gpu, &p, 1, L, D, &err) && !gpu->ops->upload(gpu, &p, pv, &err) &&
            !qi_be_act2(gpu, &mods, 1, 6 * D, &err) && !gpu->ops->upload(gpu, &mods, mv, &err), "%s", err.msg);
    shared_outputs(&s, ys, ysp);
    shared_outputs(&s, yr, yrp);
    qi_tensor ch[6];
    for (int c = 0; c < 6; c++) {
        ch[c] = qi_view2(&mods, 6, D); /* chunk c: row c of [6, D], stride 6D as the model passes it */
        ch[c] = qi_slice_rows(&ch[c], c, 1);
    }
    for (int round = 0; round < 2; round++) { /* 0: layer_norm_mod; 1: add_gated_layer_norm_mod */
        const qi_tensor *proj = round ? &p : NULL, *gate = round ? &ch[2] : NULL;
        int n = round ? 1 : 3; /* the q/k/v case, the FFN-up case (its GELU: set's linear 1 is tanh GELU) */
        const qi_tensor *const *wp = round ? s.wp + 1 : s.wp, *const *bp = round ? s.bp + 1 : s.bp;
        const qi_act *act = round ? s.act + 1 : s.act;
        qi_tensor *const *ysn = round ? ysp + 1 : ysp, *const *yrn = round ? yrp + 1 : yrp;
        qi_ln_mod_src src = {&h[0], gate, 6 * D, proj, &ch[0], &ch[1], 6 * D, 1e-6f};
        unsigned long long f0, e0, f1, e1;
        qi_cuda_gemm_counts(gpu, &f0, &e0);
        int took = gpu->ops->linear_shared(gpu, &xn[0], &src, n, wp, bp, act, ysn);
        qi_cuda_gemm_counts(gpu, &f1, &e1);
        CHECK(took == 1 && f1 - f0 == (unsigned long long)n && e1 == e0, "round %d: taken %d, fp8 %llu, expanded %llu",
              round, took, f1 - f0, e1 - e0);
        if (round)
            gpu->ops->add_gated_layer_norm_mod(gpu, &h[1], gate, 6 * D, proj, &ch[0], &ch[1], 6 * D, 1e-6f, &xn[1]);
        else
            gpu->ops->layer_norm_mod(gpu, &h[1], &ch[0], &ch[1], 6 * D, 1e-6f, &xn[1]);
        for (int k = 0; k < n; k++) gpu->ops->linear(gpu, &xn[1], wp[k], bp[k], act[k], yrn[k]);
        CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
        size_t total = 0, diff = 0;
        const qi_tensor *pairs[][2] = {{&xn[0], &xn[1]}, {&h[0], &h[1]}, {ysn[0], yrn[0]},
                                       {n > 1 ? ysn[1] : ysn[0], n > 1 ? yrn[1] : yrn[0]},
                                       {n > 2 ? ysn[2] : ysn[0], n > 2 ? yrn[2] : yrn[0]}};
        for (size_t q = 0; q < QI_ARRAY_LEN(pairs); q++) {
            size_t cnt = (size_t)qi_numel(pairs[q][0]);
            float *a = malloc(sizeof(float) * cnt), *b = malloc(sizeof(float) * cnt);
            CHECK(!gpu->ops->download(gpu, pairs[q][0], a, &err) && !gpu->ops->download(gpu, pairs[q][1], b, &err),
                  "%s", err.msg);
            size_t dq = 0;
            for (size_t i = 0; i < cnt; i++) dq += memcmp(&a[i], &b[i], sizeof(float)) != 0;
            CHECK(dq == 0, "round %d, tensor %zu (0 x, 1 stream, 2.. outputs): %zu of %zu differ", round, q, dq, cnt);
            total += cnt, diff += dq;
            free(a), free(b);
        }
        printf("  linear_shared with %s, %d linear(s): %zu values, %zu differ from the plain ops\n",
               round ? "add_gated_layer_norm_mod" : "layer_norm_mod", n, total, diff);
    }
    gpu->ops->reset(gpu, mark);
    shared_set_free(&s);
    free(hv), free(mv), free(pv);
}

/* What linear_shared declines it declines whole, queuing nothing: more
 * linears than it shares x over, one weight the fp8 GEMM does not take (e5m2),
 * and every call with the fp8 GEMM off. */
static void fp8_shared_linears_decline_whole(void) {
    if (!fp8_gemm_available()) return;
    shared_set s;
    shared_set_make(&s);
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor x, y[SH_LIN], *yp[SH_LIN], w5;
    REQUIRE(!qi_be_act2(gpu, &x, SH_M, SH_K, &err), "%s", err.msg);
    shared_outputs(&s, y, yp);
    uint8_t *wb = calloc(SH_N * SH_K, 1);
    int64_t ne[2] = {SH_N, SH_K};
    REQUIRE(!gpu->ops->weight(gpu, &w5, QI_F8_E5M2, 2, ne, wb, NULL, &err), "%s", err.msg);
    const qi_tensor *many[5] = {s.wp[0], s.wp[1], s.wp[2], s.wp[0], s.wp[1]}, *mixed[2] = {s.wp[0], &w5};
    const qi_tensor *nob[5] = {NULL, NULL, NULL, NULL, NULL};
    qi_tensor *many_y[5] = {yp[0], yp[1], yp[2], yp[0], yp[1]};
    qi_act none[5] = {QI_ACT_NONE, QI_ACT_NONE, QI_ACT_NONE, QI_ACT_NONE, QI_ACT_NONE};
    unsigned long long f0, e0, f1, e1;
    qi_cuda_gemm_counts(gpu, &f0, &e0);
    CHECK(gpu->ops->linear_shared(gpu, &x, NULL, 5, many, nob, none, many_y) == 0, "five linears taken");
    CHECK(gpu->ops->linear_shared(gpu, &x, NULL, 2, mixed, nob, none, yp) == 0, "an e5m2 weight taken");
    qi_cuda_set_fp8_gemm(gpu, 0);
    CHECK(gpu->ops->linear_shared(gpu, &x, NULL, 3, s.wp, s.bp, s.act, yp) == 0, "taken with the fp8 GEMM off");
    qi_cuda_set_fp8_gemm(gpu, 1);
    qi_cuda_gemm_counts(gpu, &f1, &e1);
    CHECK(f1 == f0 && e1 == e0, "a declined call queued GEMMs (fp8 %llu, expanded %llu)", f1 - f0, e1 - e0);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    gpu->ops->weight_free(gpu, &w5);
    gpu->ops->reset(gpu, mark);
    shared_set_free(&s);
    free(wb);
}

/* linear(x, w, b, act) into y (float32 [M, N]) on the GPU. */
static void gpu_linear(const float *xv, int64_t M, int64_t K, int64_t N, const qi_tensor *w, const qi_tensor *b,
                        qi_act act, float *y) {
    qi_error err = {{0}};
    qi_tensor x, yt;
    size_t mark = gpu->ops->mark(gpu);
    REQUIRE(!qi_be_act2(gpu, &x, M, K, &err) && !qi_be_act2(gpu, &yt, M, N, &err), "%s", err.msg);
    REQUIRE(!gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    gpu->ops->linear(gpu, &x, w, b, act, &yt);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    CHECK(!gpu->ops->download(gpu, &yt, y, &err), "%s", err.msg);
    gpu->ops->reset(gpu, mark);
}

/* GEMM tuning (cuda_gemm.cu) changes time, never results: a plan tuned on
 * one input gives, on another input, the same bits as cuBLASLt's first
 * algorithm (tuning off) — for a bf16 output, a fused bias + GELU epilogue,
 * a float32 product before SiLU, an odd row count (all above the size tuning
 * starts at, TUNE_MIN_MNK). And a first call on zero
 * inputs (where every summation order agrees) leaves its plan untuned. */
static void gemm_tuning_keeps_every_bit(void) {
    static const struct {
        int64_t M, K, N;
        int bias;
        qi_act act;
    } cases[] = {{2048, 3072, 3072, 0, QI_ACT_NONE}, {1024, 3072, 12288, 1, QI_ACT_GELU_TANH},
                 {1024, 3072, 3072, 1, QI_ACT_SILU}, {333, 3072, 3072, 1, QI_ACT_NONE}};
    qi_error err = {{0}};
    int was = qi_cuda_set_gemm_tune(gpu, 0);
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        const int64_t M = cases[c].M, K = cases[c].K, N = cases[c].N;
        float *x1 = malloc(sizeof(float) * (size_t)(M * K)), *x2 = malloc(sizeof(float) * (size_t)(M * K));
        float *wv = malloc(sizeof(float) * (size_t)(N * K)), *bv = malloc(sizeof(float) * (size_t)N), *y[2];
        for (int i = 0; i < 2; i++) y[i] = malloc(sizeof(float) * (size_t)(M * N));
        REQUIRE(x1 && x2 && wv && bv && y[0] && y[1], "out of host memory");
        for (int64_t i = 0; i < M * K; i++) x1[i] = caps_frand(), x2[i] = caps_frand();
        for (int64_t i = 0; i < N * K; i++) wv[i] = 0.05f * caps_frand();
        for (int64_t i = 0; i < N; i++) bv[i] = caps_frand();
        qi_tensor w, b;
        int64_t wne[2] = {N, K}, bne[1] = {N};
        REQUIRE(!gpu->ops->weight(gpu, &w, QI_F32, 2, wne, wv, NULL, &err) &&
                    !gpu->ops->weight(gpu, &b, QI_F32, 1, bne, bv, NULL, &err), "%s", err.msg);
        const qi_tensor *bias = cases[c].bias ? &b : NULL;
        unsigned long long plans0 = 0, plans1 = 0, changed = 0, differs = 0;
        double saved = 0;
        qi_cuda_set_gemm_tune(gpu, 0); /* drops the plans: the call below makes its plan with the first algorithm */
        gpu_linear(x2, M, K, N, &w, bias, cases[c].act, y[0]);
        qi_cuda_set_gemm_tune(gpu, 1);
        qi_cuda_gemm_tune_counts(gpu, &plans0, NULL, NULL, NULL);
        gpu_linear(x1, M, K, N, &w, bias, cases[c].act, y[1]); /* makes the plan, tuned on x1 */
        gpu_linear(x2, M, K, N, &w, bias, cases[c].act, y[1]); /* the tuned plan on x2 */
        qi_cuda_gemm_tune_counts(gpu, &plans1, &changed, &differs, &saved);
        printf("  %lldx%lldx%lld%s act %d: plans tuned %llu, changed so far %llu, candidates refused %llu, "
               "saved %.3f ms per use so far\n", (long long)M, (long long)K, (long long)N,
               cases[c].bias ? " bias" : "", (int)cases[c].act, plans1 - plans0, changed, differs, saved);
        CHECK(plans1 > plans0, "%lldx%lldx%lld: no plan was tuned", (long long)M, (long long)K, (long long)N);
        CHECK(!memcmp(y[0], y[1], sizeof(float) * (size_t)(M * N)), "%lldx%lldx%lld act %d: tuned output differs",
              (long long)M, (long long)K, (long long)N, (int)cases[c].act);
        if (c == 0) { /* zero inputs, no bias: every output is 0 whatever the order, so nothing can be compared */
            memset(x1, 0, sizeof(float) * (size_t)(M * K));
            qi_cuda_set_gemm_tune(gpu, 1); /* a fresh plan */
            qi_cuda_gemm_tune_counts(gpu, &plans0, NULL, NULL, NULL);
            gpu_linear(x1, M, K, N, &w, NULL, cases[c].act, y[1]);
            qi_cuda_gemm_tune_counts(gpu, &plans1, NULL, NULL, NULL);
            CHECK(plans1 == plans0, "a plan was tuned on an all-zero output");
        }
        gpu->ops->weight_free(gpu, &w), gpu->ops->weight_free(gpu, &b);
        free(x1), free(x2), free(wv), free(bv), free(y[0]), free(y[1]);
    }
    qi_cuda_set_gemm_tune(gpu, was);
}

/* ---- the block GEMM (src/backend/cuda/cuda_block_gemm.cu) ------------------------------- */

/* linear(x, w, b, act) of M rows through the block GEMM (rows_limit) or the
 * expansion (0) into y; returns how many linears the block GEMM ran. */
static unsigned long long block_linear(int64_t rows_limit, const float *xv, int64_t M, int64_t K, int64_t N,
                                       const qi_tensor *w, const qi_tensor *b, qi_act act, float *y) {
    int64_t was = qi_cuda_set_block_gemm_rows(gpu, rows_limit);
    unsigned long long before = qi_cuda_block_gemm_calls(gpu);
    gpu_linear(xv, M, K, N, w, b, act, y);
    qi_cuda_set_block_gemm_rows(gpu, was);
    return qi_cuda_block_gemm_calls(gpu) - before;
}

/* The block GEMM multiplies the same bf16 values the expansion writes (one
 * decoder, qc_kept8_bf16) and sums the products in float32 in another order,
 * then adds the bias and applies the activation before one rounding, as the
 * expansion's GEMM does. So its outputs equal the expansion path's except
 * where the two float32 sums (~1e-6 apart, relative) straddle a bf16
 * rounding boundary (2^-8 apart): a few elements in 10^4 differ by one bf16
 * step. The bounds — relative L2 ≤ 1e-3 and no element more than 2^-7 of
 * the largest output off — leave that room and nothing more: a misplaced
 * fragment, a misdecoded block or a lost split of K moves most outputs by
 * O(1). block_vs_expansion checks one product of weight w both ways. */
static void block_vs_expansion(const qi_tensor *w, const float *xv, int64_t M, int64_t K, int64_t N,
                               const qi_tensor *bias, qi_act act, int split, const char *what) {
    float *got = malloc(sizeof(float) * (size_t)(M * N)), *want = malloc(sizeof(float) * (size_t)(M * N));
    REQUIRE(got && want, "out of host memory");
    int split_was = qi_cuda_set_block_gemm_split(gpu, split);
    CHECK(block_linear(0, xv, M, K, N, w, bias, act, want) == 0, "the expansion path ran the block GEMM");
    CHECK(block_linear(M, xv, M, K, N, w, bias, act, got) == 1, "%s, %lld rows: not the block GEMM", what,
          (long long)M);
    qi_cuda_set_block_gemm_split(gpu, split_was);
    double d2 = 0, r2 = 0, dmax = 0, rmax = 0;
    for (int64_t i = 0; i < M * N; i++) {
        double d = (double)got[i] - want[i];
        d2 += d * d, r2 += (double)want[i] * want[i];
        dmax = fabs(d) > dmax ? fabs(d) : dmax;
        rmax = fabs(want[i]) > rmax ? fabs(want[i]) : rmax;
    }
    double rel = sqrt(d2 / (r2 > 0 ? r2 : 1));
    CHECK(rel <= 1e-3 && dmax <= rmax / 128 && rmax > 0, "%s, %lldx%lldx%lld, act %d%s, K split %s: rel L2 %.2e, "
          "max |diff| %.3e of max |y| %.3e", what, (long long)M, (long long)K, (long long)N, (int)act,
          bias ? ", bias" : "", split ? "on" : "off", rel, dmax, rmax);
    free(got), free(want);
}

/* For every GGUF block type: rows from 1 to 130 (partial tiles of 64), 136
 * outputs (a partial tile), K 1024 (four Q*_K blocks, 16 steps of 64: the
 * small grid splits K in 4), bias and every activation, with and without the
 * split; per-row scales on one type. Then a grid of 102 blocks whose K (28
 * steps) splits unevenly (6 splits: five of 5 steps, one of 3). */
/* A bias of n values about `share` of the outputs' size for weights like
 * wref[0..nw) times x uniform in ±1 over K (|y| ≈ rms(w)·√(K/3)), so that a
 * lost or misplaced bias shows whatever the block type's scale. */
static void bias_like_outputs(const float *wref, int64_t nw, int64_t K, int64_t n, double share, qi_tensor *b) {
    double s2 = 0;
    for (int64_t i = 0; i < nw; i++) s2 += (double)wref[i] * wref[i];
    const float amp = (float)(share * sqrt(s2 / (double)nw) * sqrt((double)K / 3.0));
    float *bv = malloc(sizeof(float) * (size_t)n);
    REQUIRE(bv, "out of host memory");
    for (int64_t i = 0; i < n; i++) bv[i] = amp * caps_frand();
    qi_error err = {{0}};
    int64_t ne[1] = {n};
    REQUIRE(!gpu->ops->weight(gpu, b, QI_F32, 1, ne, bv, NULL, &err), "%s", err.msg);
    free(bv);
}

static void block_gemm_matches_the_expansion_for_every_block_type(void) {
    enum { K = 1024, N = 136, MMAX = 130, K2 = 1792, N2 = 2176 };
    static const qi_dtype types[] = {QI_Q8_0, QI_Q4_0, QI_Q4_1, QI_Q5_0, QI_Q5_1,
                                     QI_Q2_K, QI_Q3_K, QI_Q4_K, QI_Q5_K, QI_Q6_K};
    static const int64_t rows[] = {1, 7, 64, MMAX};
    static const qi_act acts[] = {QI_ACT_NONE, QI_ACT_GELU_TANH, QI_ACT_SILU, QI_ACT_GELU_ERF};
    uint8_t *host = malloc((size_t)N2 * K2 * 8);
    float *wref = malloc(sizeof(float) * (size_t)N2 * K2), *xv = malloc(sizeof(float) * (size_t)MMAX * K2);
    float row_scales[N];
    REQUIRE(host && wref && xv, "out of host memory");
    for (int i = 0; i < MMAX * K2; i++) xv[i] = caps_frand();
    for (int i = 0; i < N; i++) row_scales[i] = 0.5f + 0.01f * (float)i;
    const qi_weight_scale by_row = {QI_SCALE_ROW, 0, row_scales};
    qi_error err = {{0}};
    int64_t wne[2] = {N, K};
    for (size_t t = 0; t <= QI_ARRAY_LEN(types); t++) {
        const int scaled = t == QI_ARRAY_LEN(types); /* the last pass: Q6_K with per-row scales */
        const qi_dtype dt = scaled ? QI_Q6_K : types[t];
        char what[64];
        snprintf(what, sizeof what, "%s%s", qi_dtype_name(dt), scaled ? " (row scales)" : "");
        caps_host_data(dt, N * K, host, wref);
        qi_tensor w, b;
        REQUIRE(!gpu->ops->weight(gpu, &w, dt, 2, wne, host, scaled ? &by_row : NULL, &err), "%s", err.msg);
        bias_like_outputs(wref, N * K, K, N, 0.3, &b);
        for (size_t r = 0; r < QI_ARRAY_LEN(rows); r++)
            for (int split = 0; split <= 1; split++)
                block_vs_expansion(&w, xv, rows[r], K, N, (t + r) % 3 ? &b : NULL,
                                   acts[(t + r + (size_t)split) % QI_ARRAY_LEN(acts)], split, what);
        gpu->ops->weight_free(gpu, &w), gpu->ops->weight_free(gpu, &b);
    }
    static const qi_dtype uneven[] = {QI_Q4_K, QI_Q8_0};
    int64_t wne2[2] = {N2, K2};
    for (size_t t = 0; t < QI_ARRAY_LEN(uneven); t++) {
        caps_host_data(uneven[t], N2 * K2, host, wref);
        qi_tensor w, b;
        REQUIRE(!gpu->ops->weight(gpu, &w, uneven[t], 2, wne2, host, NULL, &err), "%s", err.msg);
        bias_like_outputs(wref, (int64_t)N2 * K2, K2, N2, 0.3, &b);
        block_vs_expansion(&w, xv, MMAX, K2, N2, &b, QI_ACT_GELU_TANH, 1, qi_dtype_name(uneven[t]));
        gpu->ops->weight_free(gpu, &w), gpu->ops->weight_free(gpu, &b);
    }
    free(host), free(wref), free(xv);
}

/* What the block GEMM cannot tile goes to the expansion, bit-identical to
 * it: K not a whole number of 64-steps (Q8_0, K 96), an fp8 weight, a bf16
 * weight, more rows than asked for; and an x that is not 16-byte aligned
 * (a view one element in) is not taken. */
static void block_gemm_leaves_the_rest_to_the_expansion(void) {
    enum { N = 72, M = 65 };
    static uint8_t host[N * 512 * 8];
    static float wref[N * 512], xv[M * 512], got[M * N], want[M * N];
    for (int i = 0; i < M * 512; i++) xv[i] = caps_frand();
    static const struct {
        qi_dtype t;
        int64_t K, limit;
        const char *why;
    } cases[] = {{QI_Q8_0, 96, 1000, "K 96"}, {QI_F8_E4M3, 256, 1000, "fp8"}, {QI_BF16, 256, 1000, "bf16"},
                 {QI_Q4_K, 256, 64, "65 rows over a limit of 64"}};
    qi_error err = {{0}};
    int fp8_was_on = qi_cuda_set_fp8_gemm(gpu, 0);
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        const int64_t K = cases[c].K;
        caps_host_data(cases[c].t, N * K, host, wref);
        qi_tensor w;
        int64_t wne[2] = {N, K};
        REQUIRE(!gpu->ops->weight(gpu, &w, cases[c].t, 2, wne, host, NULL, &err), "%s", err.msg);
        CHECK(block_linear(0, xv, M, K, N, &w, NULL, QI_ACT_NONE, want) == 0, "%s", cases[c].why);
        CHECK(block_linear(cases[c].limit, xv, M, K, N, &w, NULL, QI_ACT_NONE, got) == 0,
              "%s: the block GEMM ran", cases[c].why);
        CHECK(!memcmp(got, want, sizeof(float) * (size_t)(M * N)), "%s: differs from the expansion", cases[c].why);
        gpu->ops->weight_free(gpu, &w);
    }
    qi_cuda_set_fp8_gemm(gpu, fp8_was_on);

    /* x one element into its memory (a view not 16-byte aligned: cp.async cannot read its rows) */
    enum { K = 256 };
    caps_host_data(QI_Q4_K, N * K, host, wref);
    qi_tensor w, xbig, x, y;
    int64_t wne[2] = {N, K};
    size_t mark = gpu->ops->mark(gpu);
    REQUIRE(!gpu->ops->weight(gpu, &w, QI_Q4_K, 2, wne, host, NULL, &err) &&
                !qi_be_act2(gpu, &xbig, M + 1, K, &err) && !qi_be_act2(gpu, &y, M, N, &err),
            "%s", err.msg);
    x = qi_slice_rows(&xbig, 0, M);
    x.data = (uint16_t *)xbig.data + 1;
    REQUIRE(!gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    int64_t rows_was = qi_cuda_set_block_gemm_rows(gpu, 1000);
    unsigned long long before = qi_cuda_block_gemm_calls(gpu);
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &y);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_cuda_block_gemm_calls(gpu) == before, "the block GEMM took an x not 16-byte aligned");
    qi_cuda_set_block_gemm_rows(gpu, rows_was);
    gpu->ops->reset(gpu, mark);
    gpu->ops->weight_free(gpu, &w);
}

/* QI_CUDA_FP8_GEMM=0 at creation: the backend starts with the fp8 GEMM off. */
static void fp8_gemm_is_off_with_the_environment_switch(void) {
    qi_backend *b = NULL;
    qi_error err = {{0}};
    setenv("QI_CUDA_FP8_GEMM", "0", 1);
    qi_status st = qi_backend_cuda_create(0, (size_t)64 << 20, &b, &err);
    unsetenv("QI_CUDA_FP8_GEMM");
    REQUIRE(st == QI_OK, "%s", err.msg);
    CHECK(!strncmp(qi_cuda_fp8_gemm_state(b), "off", 3), "%s", qi_cuda_fp8_gemm_state(b));
    printf("  default backend: fp8 GEMM %s\n", qi_cuda_fp8_gemm_state(gpu));
    b->ops->destroy(b);
}

int main(void) {
    qi_error err;
    if (qi_backend_cuda_create(0, (size_t)256 << 20, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    RUN(cuda_supports_the_documented_table);
    RUN(cuda_supports_says_what_the_ops_do);
    RUN(cuda_scaled_weights_give_scaled_results);
    RUN(kept_weights_match_weights_converted_at_load);
    RUN(fp8_gemm_matches_the_float_product_at_the_ffn_shape);
    RUN(fp8_gemm_matches_the_float_product_with_three_rows);
    RUN(fp8_gemm_leaves_odd_shapes_and_e5m2_to_the_expansion);
    RUN(fp8_gemm_replays_in_a_graph_with_fresh_scales);
    RUN(fp8_shared_linears_equal_them_one_by_one);
    RUN(fp8_shared_linears_make_their_layer_norm);
    RUN(fp8_shared_linears_decline_whole);
    RUN(fp8_gemm_is_off_with_the_environment_switch);
    RUN(gemm_tuning_keeps_every_bit);
    RUN(block_gemm_matches_the_expansion_for_every_block_type);
    RUN(block_gemm_leaves_the_rest_to_the_expansion);
    RUN(cuda_graph_claim_holds);
    RUN(cuda_native_stream_is_its_stream);
    RUN(cuda_table_refuses_a_partial_graph_group);
    RUN(create_by_name_reaches_cuda);
    RUN(entry_points_select_their_device_and_restore_the_callers);
    gpu->ops->destroy(gpu);
    TEST_END();
}

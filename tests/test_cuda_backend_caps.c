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
 * with the host's formulas. And they hold their stored bytes, not bf16's. */
static void kept_weights_match_weights_converted_at_load(void) {
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
    RUN(cuda_graph_claim_holds);
    RUN(cuda_native_stream_is_its_stream);
    RUN(cuda_table_refuses_a_partial_graph_group);
    RUN(create_by_name_reaches_cuda);
    RUN(entry_points_select_their_device_and_restore_the_callers);
    gpu->ops->destroy(gpu);
    TEST_END();
}

/*
 * test_cuda_backend_caps.c — claims about what the CUDA backend promises:
 * its `supports` answers (every storage type through weight + linear /
 * conv2d / embedding), its optional slots, its op table passing the check,
 * the native stream, creation by name, and that the entry points that
 * allocate, free or copy select the backend's device themselves and give the
 * caller's back (destroy and weight_free after another device became
 * current on the creating thread). Needs a GPU ("cuda" label).
 */
#include <cuda_runtime_api.h>

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
    for (int t = QI_Q4_0; t <= QI_Q6_K; t++) /* dequantised on the host at load, kept as bf16 */
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

int main(void) {
    qi_error err;
    if (qi_backend_cuda_create(0, (size_t)256 << 20, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    RUN(cuda_supports_the_documented_table);
    RUN(cuda_supports_says_what_the_ops_do);
    RUN(cuda_scaled_weights_give_scaled_results);
    RUN(cuda_graph_claim_holds);
    RUN(cuda_native_stream_is_its_stream);
    RUN(cuda_table_refuses_a_partial_graph_group);
    RUN(create_by_name_reaches_cuda);
    RUN(entry_points_select_their_device_and_restore_the_callers);
    gpu->ops->destroy(gpu);
    TEST_END();
}

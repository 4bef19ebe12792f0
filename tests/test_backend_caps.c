/*
 * test_backend_caps.c — claims about what backends promise before they are
 * used: the CPU backend's `supports` answers, the op-table check every
 * constructor runs, the CPU backend's sticky error (a failed scratch
 * allocation inside an op is reported at sync, naming the op), and backend
 * creation by device name. The CUDA side is test_cuda_backend_caps.c.
 */
#include <stddef.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend_caps.h"
#include "test.h"

static qi_backend *be;

/* ---- supports ---------------------------------------------------------------- */

/* Tolerance 1e-5: float32 products of exactly decoded weights. */
static void cpu_supports_says_what_the_ops_do(void) { caps_check_weight_ops(be, 1e-5); }

/* Scales multiply in float32 before the product: the same 1e-5. */
static void cpu_scaled_weights_give_scaled_results(void) { caps_check_scaled_weights(be, 1e-5); }

static void cpu_supports_the_documented_table(void) {
    const qi_dtype floats[] = {QI_F32, QI_F16, QI_BF16, QI_F8_E4M3, QI_F8_E5M2};
    for (size_t i = 0; i < QI_ARRAY_LEN(floats); i++)
        for (int cap = QI_CAP_WEIGHT; cap <= QI_CAP_EMBEDDING; cap++)
            CHECK(qi_backend_supports(be, (qi_cap)cap, floats[i]), "cap %d, %s", cap, qi_dtype_name(floats[i]));
    CHECK(qi_backend_supports(be, QI_CAP_WEIGHT, QI_I32));
    CHECK(!qi_backend_supports(be, QI_CAP_LINEAR, QI_I32));
    for (int t = QI_Q4_0; t <= QI_Q6_K; t++) { /* GGUF blocks: dequantised per row band; no conv kernels */
        for (int cap = QI_CAP_WEIGHT; cap <= QI_CAP_EMBEDDING; cap++)
            CHECK(qi_backend_supports(be, (qi_cap)cap, (qi_dtype)t) == (cap != QI_CAP_CONV2D), "cap %d, %s", cap,
                  qi_dtype_name((qi_dtype)t));
    }
    CHECK(!qi_backend_supports(be, QI_CAP_GRAPHS, QI_F32));
    CHECK(!qi_backend_supports(be, QI_CAP_RANDOM_WEIGHTS, QI_F32));
    CHECK(!qi_backend_supports(be, QI_CAP_CUDA_RNG, QI_F32));
    CHECK(!qi_backend_supports(NULL, QI_CAP_WEIGHT, QI_F32), "no backend supports nothing");
    caps_check_optional_slots(be);
}

static void cpu_has_no_native_stream_and_make_current_works(void) {
    qi_error err;
    CHECK(be->ops->native_stream == NULL);
    CHECK(be->ops->make_current(be, &err) == QI_OK, "%s", err.msg);
}

/* ---- the op-table check ------------------------------------------------------ */

/* Stand-ins that fill graph slots of a table that is checked, never used. */
static void dummy_graph_free(qi_backend *b, qi_graph *g) { (void)b, (void)g; }
static qi_status dummy_graph_begin(qi_backend *b, qi_error *err) { (void)b, (void)err; return QI_OK; }
static qi_status dummy_graph_end(qi_backend *b, qi_graph **g, qi_error *err) {
    (void)b, (void)err;
    *g = NULL;
    return QI_OK;
}
static qi_status dummy_graph_launch(qi_backend *b, qi_graph *g, qi_error *err) { (void)b, (void)g, (void)err; return QI_OK; }
static qi_status dummy_persistent(qi_backend *b, qi_tensor *t, qi_dtype dt, int ndim, const int64_t *ne,
                                  qi_error *err) {
    (void)b, (void)t, (void)dt, (void)ndim, (void)ne, (void)err;
    return QI_OK;
}

/* The slots backend.h calls optional: NULL alone is accepted. */
static const size_t opt_slots[] = {
    offsetof(qi_backend_ops, native_stream),  offsetof(qi_backend_ops, random_weights),
    offsetof(qi_backend_ops, mem_usage),      offsetof(qi_backend_ops, count_nonfinite),
    offsetof(qi_backend_ops, download_rgb8),
    offsetof(qi_backend_ops, rms_norm_rope),
    offsetof(qi_backend_ops, channel_rms_norm_act), offsetof(qi_backend_ops, conv2d_fused),
    offsetof(qi_backend_ops, add_gated_layer_norm_mod), offsetof(qi_backend_ops, linear_shared),
    offsetof(qi_backend_ops, prefetch_weight),
    offsetof(qi_backend_ops, persistent),
    offsetof(qi_backend_ops, graph_begin),    offsetof(qi_backend_ops, graph_end),
    offsetof(qi_backend_ops, graph_launch),   offsetof(qi_backend_ops, graph_free),
    offsetof(qi_backend_ops, weight_size),    offsetof(qi_backend_ops, mem_info),
    offsetof(qi_backend_ops, reserve),  offsetof(qi_backend_ops, weight_host),
    offsetof(qi_backend_ops, slot_new),       offsetof(qi_backend_ops, slot_free),
    offsetof(qi_backend_ops, stage),          offsetof(qi_backend_ops, stage_wait),
    offsetof(qi_backend_ops, host_budget),
    offsetof(qi_backend_ops, load_report),
};

/* The slots of the streamed-weight group: optional together, so one emptied
 * alone from a table that sets the group is refused. */
static const size_t stream_slots[] = {
    offsetof(qi_backend_ops, weight_host), offsetof(qi_backend_ops, slot_new), offsetof(qi_backend_ops, slot_free),
    offsetof(qi_backend_ops, stage),       offsetof(qi_backend_ops, stage_wait),
};

static int stream_slot(size_t off) {
    for (size_t i = 0; i < QI_ARRAY_LEN(stream_slots); i++)
        if (stream_slots[i] == off) return 1;
    return 0;
}

static int optional_slot(size_t off) {
    for (size_t i = 0; i < QI_ARRAY_LEN(opt_slots); i++)
        if (opt_slots[i] == off) return 1;
    return 0;
}

/* Every slot of the table, emptied alone in a copy of the CPU table: the
 * optional ones pass, every other one is refused with a message naming the
 * backend and a slot no other refusal named. (The table is all pointers.) */
static void check_ops_refuses_every_required_slot_by_name(void) {
    enum { SLOTS = sizeof(qi_backend_ops) / sizeof(void *) };
    REQUIRE(sizeof(qi_backend_ops) % sizeof(void *) == 0);
    static char msgs[SLOTS][1024];
    int refused = 0;
    for (size_t s = 0; s < SLOTS; s++) {
        qi_backend_ops ops = *be->ops;
        memset((char *)&ops + s * sizeof(void *), 0, sizeof(void *));
        qi_error err = {{0}};
        qi_status st = qi_backend_check_ops(&ops, &err);
        int group_set = be->ops->weight_host != NULL; /* a full group loses one slot: refused */
        if (optional_slot(s * sizeof(void *)) && !(group_set && stream_slot(s * sizeof(void *)))) {
            CHECK(st == QI_OK, "optional slot %zu refused: %s", s, err.msg);
            continue;
        }
        CHECK(st == QI_ERR_BACKEND, "required slot %zu accepted when empty", s);
        CHECK(strstr(err.msg, "slot '") != NULL, "the message names the slot: %s", err.msg);
        const char *name = strstr(err.msg, "'");
        snprintf(msgs[refused], sizeof msgs[0], "%s", name ? name : "");
        for (int j = 0; j < refused; j++)
            CHECK(strcmp(msgs[j], msgs[refused]) != 0, "two slots refused under one name: %s", msgs[j]);
        refused++;
    }
    int expected = SLOTS - (int)QI_ARRAY_LEN(opt_slots) +
                   (be->ops->weight_host ? (int)QI_ARRAY_LEN(stream_slots) : 0);
    CHECK(refused == expected, "%d slots refused, expected %d", refused, expected);
}

static void check_ops_names_the_empty_slot(void) {
    qi_backend_ops ops = *be->ops;
    qi_error err = {{0}};
    ops.linear = NULL;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND);
    CHECK(strstr(err.msg, "cpu") && strstr(err.msg, "'linear'"), "%s", err.msg);
    ops = *be->ops;
    ops.make_current = NULL;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND);
    CHECK(strstr(err.msg, "'make_current'"), "%s", err.msg);
    ops = *be->ops;
    ops.name = "";
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND && strstr(err.msg, "'name'"), "%s", err.msg);
    CHECK(qi_backend_check_ops(NULL, &err) == QI_ERR_ARG);
}

static void check_ops_wants_the_graph_group_whole(void) {
    qi_backend_ops ops = *be->ops;
    qi_error err = {{0}};
    ops.graph_begin = dummy_graph_begin;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND, "one graph slot of five accepted");
    CHECK(strstr(err.msg, "'persistent'") && strstr(err.msg, "all five or none"), "%s", err.msg);
    ops.graph_free = dummy_graph_free;
    ops.persistent = dummy_persistent;
    ops.graph_end = dummy_graph_end;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_ERR_BACKEND, "four of five accepted");
    CHECK(strstr(err.msg, "'graph_launch'"), "%s", err.msg);
    ops.graph_launch = dummy_graph_launch;
    CHECK(qi_backend_check_ops(&ops, &err) == QI_OK, "all five: %s", err.msg);
}

/* ---- sticky errors ------------------------------------------------------------- */

static void weight_bf16(qi_tensor *w, int ndim, const int64_t *ne, uint16_t *host, float *ref) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    for (int64_t i = 0; i < n; i++) {
        host[i] = qi_f32_to_bf16(caps_frand());
        if (ref) ref[i] = qi_bf16_to_f32(host[i]);
    }
    qi_error err;
    if (be->ops->weight(be, w, QI_BF16, ndim, ne, host, NULL, &err)) abort();
}

/* linear's tile scratch refused: sync says NOMEM naming linear and the size,
 * the next sync is clean, and the same call then computes the right thing. */
static void failed_scratch_in_linear_is_reported_at_sync_then_works(void) {
    enum { M = 3, K = 16, N = 5 };
    size_t mark = be->ops->mark(be);
    uint16_t wh[N * K];
    float wref[N * K], xv[M * K];
    qi_tensor w, x, y;
    int64_t wne[2] = {N, K}, xne[2] = {M, K};
    qi_error err = {{0}};
    weight_bf16(&w, 2, wne, wh, wref);
    REQUIRE(!caps_act(be, &x, 2, xne, xv) && !qi_be_act2(be, &y, M, N, &err));
    qi_backend_cpu_fail_allocs(be, 0, 1);
    be->ops->linear(be, &x, &w, NULL, QI_ACT_NONE, &y);
    CHECK(be->ops->sync(be, &err) == QI_ERR_NOMEM, "a refused allocation must surface at sync");
    CHECK(strstr(err.msg, "linear") && strstr(err.msg, "bytes"), "names the op and the size: %s", err.msg);
    CHECK(be->ops->sync(be, &err) == QI_OK, "sync clears the error: %s", err.msg);
    be->ops->linear(be, &x, &w, NULL, QI_ACT_NONE, &y);
    CHECK(be->ops->sync(be, &err) == QI_OK, "%s", err.msg);
    double worst = 0;
    const float *ys = y.data;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)xv[m * K + k] * wref[n * K + k];
            worst = fmax(worst, fabs(ys[m * N + n] - s));
        }
    CHECK(worst < 1e-5, "linear after the failure: max error %g", worst);
    be->ops->weight_free(be, &w);
    be->ops->reset(be, mark);
}

/* Each allocation site of each op that allocates scratch, refused alone, is
 * reported by sync naming the op; the op leaks nothing (ASan build) and the
 * error is gone after that sync. */
static void every_allocation_site_names_its_op(void) {
    size_t mark = be->ops->mark(be);
    qi_error err = {{0}};
    qi_tensor q, k, v, o, img, img2, img_up, x, y, vec8, vec4, w3, wl, cos_t, sin_t;
    int64_t qne[4] = {1, 4, 2, 8}, ine[3] = {4, 6, 6}, v8[1] = {8}, v4[1] = {4}, w3ne[4] = {4, 4, 3, 3},
            wlne[2] = {4, 8};
    REQUIRE(!qi_be_act(be, &q, 4, qne, &err) && !qi_be_act(be, &k, 4, qne, &err) &&
            !qi_be_act(be, &v, 4, qne, &err) && !qi_be_act(be, &o, 4, qne, &err) &&
            !qi_be_act(be, &img, 3, ine, &err) && !qi_be_act(be, &img2, 3, ine, &err) &&
            !qi_be_act3(be, &img_up, 4, 12, 12, &err) && !qi_be_act2(be, &cos_t, 4, 4, &err) &&
            !qi_be_act2(be, &sin_t, 4, 4, &err) && !qi_be_act2(be, &x, 3, 8, &err) &&
            !qi_be_act2(be, &y, 3, 4, &err));
    qi_tensor *zero[] = {&q, &k, &v, &img, &cos_t, &sin_t, &x};
    for (size_t i = 0; i < QI_ARRAY_LEN(zero); i++) memset(zero[i]->data, 0, qi_nbytes(zero[i]));
    uint16_t h8[8], h4[4], h3[4 * 4 * 9], hl[4 * 8];
    weight_bf16(&vec8, 1, v8, h8, NULL);
    weight_bf16(&vec4, 1, v4, h4, NULL);
    weight_bf16(&w3, 4, w3ne, h3, NULL);
    weight_bf16(&wl, 2, wlne, hl, NULL);
    struct {
        const char *op;
        int after; /* allocations of the op that succeed before the refused one */
    } cases[] = {{"linear", 0},        {"linear", 1},           {"attention", 0},     {"rms_norm", 0},
                 {"channel_rms_norm", 0}, {"channel_rms_norm", 1}, {"rms_norm_rope", 0}, {"conv2d", 0},
                 {"conv2d", 1},        {"conv2d", 2},           {"conv2d_fused", 0},  {"conv2d_fused", 1}};
    for (size_t i = 0; i < QI_ARRAY_LEN(cases); i++) {
        const char *op = cases[i].op;
        qi_backend_cpu_fail_allocs(be, cases[i].after, 1);
        if (!strcmp(op, "linear")) be->ops->linear(be, &x, &wl, &vec4, QI_ACT_NONE, &y);
        if (!strcmp(op, "attention")) be->ops->attention(be, &q, &k, &v, NULL, 0, 0.5f, &o);
        if (!strcmp(op, "rms_norm")) be->ops->rms_norm(be, &q, &vec8, 1e-6f, &o);
        if (!strcmp(op, "channel_rms_norm")) be->ops->channel_rms_norm(be, &img, &vec4, &vec4, &img2);
        if (!strcmp(op, "rms_norm_rope"))
            be->ops->rms_norm_rope(be, &q, &vec8, 1e-6f, &cos_t, &sin_t, QI_ROPE_HALF, &o, 0);
        if (!strcmp(op, "conv2d")) be->ops->conv2d(be, &img, &w3, &vec4, 1, &img2);
        if (!strcmp(op, "conv2d_fused")) be->ops->conv2d_fused(be, &img, 1, &w3, NULL, 1, NULL, &img_up);
        qi_backend_cpu_fail_allocs(be, 0, 0);
        qi_status st = be->ops->sync(be, &err);
        CHECK(st == QI_ERR_NOMEM, "%s (allocation %d refused): sync returned %d", op, cases[i].after + 1, (int)st);
        char want[64];
        snprintf(want, sizeof want, "cpu backend: %s: out of memory", op);
        CHECK(strstr(err.msg, want), "the error names %s: %s", op, err.msg);
        CHECK(be->ops->sync(be, &err) == QI_OK, "cleared after %s: %s", op, err.msg);
    }
    be->ops->weight_free(be, &vec8);
    be->ops->weight_free(be, &vec4);
    be->ops->weight_free(be, &w3);
    be->ops->weight_free(be, &wl);
    be->ops->reset(be, mark);
}

/* Two failing ops before a sync: the first one is reported; a download
 * before any sync reports it too (its data would be garbage), with the op's
 * status (out of memory stays QI_ERR_NOMEM). */
static void first_failure_wins_and_download_reports_it(void) {
    size_t mark = be->ops->mark(be);
    qi_error err = {{0}};
    qi_tensor x, y, q, o;
    int64_t qne[4] = {1, 2, 1, 8};
    uint16_t wh[4 * 8];
    qi_tensor w;
    int64_t wne[2] = {4, 8};
    weight_bf16(&w, 2, wne, wh, NULL);
    REQUIRE(!qi_be_act2(be, &x, 2, 8, &err) && !qi_be_act2(be, &y, 2, 4, &err) &&
            !qi_be_act(be, &q, 4, qne, &err) && !qi_be_act(be, &o, 4, qne, &err));
    memset(x.data, 0, qi_nbytes(&x)), memset(q.data, 0, qi_nbytes(&q));
    qi_backend_cpu_fail_allocs(be, 0, 2);
    be->ops->linear(be, &x, &w, NULL, QI_ACT_NONE, &y);
    be->ops->attention(be, &q, &q, &q, NULL, 0, 1.0f, &o);
    float host[8];
    CHECK(be->ops->download(be, &y, host, &err) == QI_ERR_NOMEM, "download after a failed op: the op's status");
    CHECK(strstr(err.msg, "download after a failed op") && strstr(err.msg, "linear") &&
          !strstr(err.msg, "attention"), "the first failure, with the download's context: %s", err.msg);
    CHECK(be->ops->sync(be, &err) == QI_OK, "the download consumed the error: %s", err.msg);
    CHECK(be->ops->download(be, &y, host, &err) == QI_OK, "%s", err.msg);
    be->ops->weight_free(be, &w);
    be->ops->reset(be, mark);
}

/* ---- creation by name -------------------------------------------------------------- */

static void create_parses_device_names(void) {
    qi_backend *b = (qi_backend *)1;
    qi_error err = {{0}};
    CHECK(qi_backend_create("cpu", 1, 1 << 20, &b, &err) == QI_OK && b, "%s", err.msg);
    if (b) {
        CHECK(b->act_dtype == QI_F32 && qi_backend_supports(b, QI_CAP_LINEAR, QI_BF16));
        b->ops->destroy(b);
    }
    b = NULL;
    CHECK(qi_backend_create(NULL, 1, 1 << 20, &b, &err) == QI_OK && b, "NULL means cpu: %s", err.msg);
    if (b) b->ops->destroy(b);
    const char *bad[] = {"cuda:x", "cuda:-1", "gpu", "cuda:1x", "cuda:", "cuda:64", "cudax", "", "CPU",
                         "cuda:99999999999999999999", "cpu:0"};
    for (size_t i = 0; i < QI_ARRAY_LEN(bad); i++) {
        b = (qi_backend *)1;
        memset(&err, 0, sizeof err);
        qi_status st = qi_backend_create(bad[i], 1, 1 << 20, &b, &err);
        CHECK(st == QI_ERR_ARG && b == NULL, "\"%s\": status %d", bad[i], (int)st);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i]);
        CHECK(strstr(err.msg, quoted) && strstr(err.msg, "cuda:N"), "\"%s\": names it and the forms: %s",
              bad[i], err.msg);
    }
}

static void create_without_cuda_says_how_to_get_it(void) {
#ifdef QI_WITH_CUDA
    printf("  (a CUDA build: test_cuda_backend_caps covers \"cuda\")\n");
#else
    const char *names[] = {"cuda", "cuda:0", "cuda:3"};
    for (size_t i = 0; i < QI_ARRAY_LEN(names); i++) {
        qi_backend *b = (qi_backend *)1;
        qi_error err = {{0}};
        CHECK(qi_backend_create(names[i], 1, 0, &b, &err) == QI_ERR_UNSUPPORTED && b == NULL, "%s", names[i]);
        CHECK(strstr(err.msg, "-DQI_CUDA=ON"), "the rebuild hint: %s", err.msg);
    }
#endif
}

int main(void) {
    qi_error err;
    if (qi_backend_cpu_create(2, (size_t)64 << 20, &be, &err) != QI_OK) {
        printf("cpu backend: %s\n", err.msg);
        return 1;
    }
    RUN(cpu_supports_the_documented_table);
    RUN(cpu_supports_says_what_the_ops_do);
    RUN(cpu_scaled_weights_give_scaled_results);
    RUN(cpu_has_no_native_stream_and_make_current_works);
    RUN(check_ops_refuses_every_required_slot_by_name);
    RUN(check_ops_names_the_empty_slot);
    RUN(check_ops_wants_the_graph_group_whole);
    RUN(failed_scratch_in_linear_is_reported_at_sync_then_works);
    RUN(every_allocation_site_names_its_op);
    RUN(first_failure_wins_and_download_reports_it);
    RUN(create_parses_device_names);
    RUN(create_without_cuda_says_how_to_get_it);
    be->ops->destroy(be);
    TEST_END();
}

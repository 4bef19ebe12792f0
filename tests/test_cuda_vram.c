/*
 * test_cuda_vram.c — the memory plan's CUDA side (label "cuda": needs a GPU):
 *   - reserve sizes the arena (and refuses while it is in use); weight_size
 *     covers what `weight` takes;
 *   - a host weight (pinned) staged into a slot gives linear and embedding
 *     results bit-identical to the same weight on the device, for bf16, fp8
 *     with row scales and GGUF blocks, and `embedding` reads a host table in
 *     place;
 *   - six 32 MiB weights taken through two slots in turn (each copy queued on
 *     the copy stream while the previous weight's GEMM runs) give each
 *     weight's own result: no slot is overwritten while an op reads it;
 *   - the same two claims with the pinned budget at 0 (host weights in
 *     ordinary memory, staged through the bounce ring; the embedding table
 *     gathered on the host), and a weight larger than the whole ring;
 *   - the engine on the tiny model under budgets that swap, and that stream
 *     everything (transformer blocks and modulation, text encoder layers,
 *     embedding table read from host memory), gives the unplanned engine's
 *     images bit for bit; streaming everything with the host copies all
 *     pinned, partly pinned, not pinned (--pinned 0) and QI_PINNED_MAX=0 gives
 *     them too, and the backend's counters show which path the bytes took.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/weight_stream.h"
#include "backend_caps.h"
#include "engine/engine.h"
#include "image_check.h"
#include "test.h"
#include "vram_plans.h"

#define MIB ((size_t)1 << 20)

static qi_backend *gpu;

static void reserve_sizes_the_arena_and_weight_size_covers_a_weight(void) {
    qi_error err = {{0}};
    REQUIRE(gpu->ops->reserve(gpu, 64 * MIB, 0, &err) == QI_OK, "%s", err.msg);
    CHECK(gpu->arena_bytes == 64 * MIB && qi_cuda_arena_capacity(gpu) == 64 * MIB);
    qi_tensor t;
    int64_t big[1] = {(int64_t)(65 * MIB / 2)};
    CHECK(qi_be_act(gpu, &t, 1, big, &err) == QI_ERR_NOMEM, "65 MiB of activations in a 64 MiB arena");
    int64_t small[1] = {1024};
    REQUIRE(qi_be_act(gpu, &t, 1, small, &err) == QI_OK);
    CHECK(gpu->ops->reserve(gpu, 128 * MIB, 0, &err) == QI_ERR_ARG, "reserve with the arena in use");
    gpu->ops->reset(gpu, 0);
    const qi_dtype types[] = {QI_BF16, QI_F32, QI_F8_E4M3, QI_Q4_K, QI_Q8_0};
    static uint8_t host[1024 * 2048 * 8];
    static float ref[1024 * 2048];
    for (size_t i = 0; i < QI_ARRAY_LEN(types); i++) {
        int64_t ne[2] = {1024, 2048};
        caps_host_data(types[i], ne[0] * ne[1], host, ref);
        size_t scratch = 0, said = gpu->ops->weight_size(gpu, types[i], 2, ne, &scratch);
        size_t before = qi_cuda_weight_bytes(gpu);
        qi_tensor w;
        REQUIRE(gpu->ops->weight(gpu, &w, types[i], 2, ne, host, NULL, &err) == QI_OK, "%s", err.msg);
        size_t took = qi_cuda_weight_bytes(gpu) - before; /* with the expansion scratch when it grew */
        CHECK(said >= qi_nbytes(&w) && said + scratch >= took, "%s: weight_size %zu + scratch %zu, took %zu",
              qi_dtype_name(types[i]), said, scratch, took);
        gpu->ops->weight_free(gpu, &w);
    }
}

/* linear (x[5, K] · wᵀ) and embedding (5 rows) with weight w, as floats. */
static void lin_emb(const qi_tensor *w, const qi_tensor *table, const float *xv, float *y_lin, float *y_emb) {
    enum { M = 5 };
    int64_t N = w->ne[0], K = w->ne[1];
    size_t mark = gpu->ops->mark(gpu);
    qi_error err = {{0}};
    qi_tensor x, y, ids, e;
    int64_t xne[2] = {M, K}, ine[1] = {M};
    int32_t idv[M] = {3, 0, (int32_t)N - 1, 17, 5};
    REQUIRE(!qi_be_act(gpu, &x, 2, xne, &err) && !qi_be_act2(gpu, &y, M, N, &err) &&
            !gpu->ops->tensor(gpu, &ids, QI_I32, 1, ine, &err) && !qi_be_act2(gpu, &e, M, K, &err), "%s", err.msg);
    REQUIRE(!gpu->ops->upload(gpu, &x, xv, &err) && !gpu->ops->upload(gpu, &ids, idv, &err), "%s", err.msg);
    gpu->ops->linear(gpu, &x, w, NULL, QI_ACT_NONE, &y);
    gpu->ops->embedding(gpu, table, &ids, &e);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    CHECK(!gpu->ops->download(gpu, &y, y_lin, &err) && !gpu->ops->download(gpu, &e, y_emb, &err), "%s", err.msg);
    gpu->ops->reset(gpu, mark);
}

/* budget: the pinned budget for the host weights (0: ordinary memory, the ring). */
static void staged_host_weights_match_device_weights_at(size_t budget) {
    qi_error err = {{0}};
    gpu->ops->host_budget(gpu, budget);
    qi_cuda_host h0, h1;
    qi_cuda_host_info(gpu, &h0);
    REQUIRE(gpu->ops->reserve(gpu, 256 * MIB, 0, &err) == QI_OK, "%s", err.msg);
    enum { N = 64, K = 256, M = 5 };
    static float row_scales[N];
    for (int i = 0; i < N; i++) row_scales[i] = 0.01f * (float)(i + 1);
    const qi_weight_scale rows = {QI_SCALE_ROW, 0, row_scales};
    struct {
        qi_dtype t;
        const qi_weight_scale *scale;
    } cases[] = {{QI_BF16, NULL}, {QI_F32, NULL},  {QI_F8_E4M3, &rows},
                 {QI_Q4_K, NULL}, {QI_Q8_0, NULL}, {QI_Q6_K, NULL}};
    static uint8_t host[N * K * 8];
    static float wref[N * K], xv[M * K], a_lin[M * N], b_lin[M * N], a_emb[M * K], b_emb[M * K], c_emb[M * K];
    for (int i = 0; i < M * K; i++) xv[i] = caps_frand();
    qi_slot *slot = NULL;
    REQUIRE(gpu->ops->slot_new(gpu, (size_t)N * K * 4 + 256, &slot, &err) == QI_OK, "%s", err.msg);
    for (size_t c = 0; c < QI_ARRAY_LEN(cases); c++) {
        qi_dtype t = cases[c].t;
        caps_host_data(t, N * K, host, wref);
        int64_t ne[2] = {N, K};
        qi_tensor wd, wh, staged;
        size_t dev0 = qi_cuda_weight_bytes(gpu);
        REQUIRE(!gpu->ops->weight(gpu, &wd, t, 2, ne, host, cases[c].scale, &err), "%s", err.msg);
        size_t dev1 = qi_cuda_weight_bytes(gpu);
        REQUIRE(!gpu->ops->weight_host(gpu, &wh, t, 2, ne, host, cases[c].scale, &err), "%s", err.msg);
        CHECK(wh.dtype == wd.dtype && qi_nbytes(&wh) == qi_nbytes(&wd), "%s: host %s vs device %s", qi_dtype_name(t),
              qi_dtype_name(wh.dtype), qi_dtype_name(wd.dtype));
        /* on the device a host weight holds its row scales only */
        CHECK(qi_cuda_weight_bytes(gpu) - dev1 <= (wh.scale_form == QI_SCALE_ROW ? N * sizeof(float) : 0) &&
                  dev1 - dev0 >= qi_nbytes(&wd),
              "%s: a host weight took %zu bytes of device memory", qi_dtype_name(t), qi_cuda_weight_bytes(gpu) - dev1);
        REQUIRE(!gpu->ops->stage(gpu, slot, &wh, &staged, 1, &err), "%s", err.msg);
        gpu->ops->stage_wait(gpu, slot);
        lin_emb(&wd, &wd, xv, a_lin, a_emb);
        lin_emb(&staged, &wh, xv, b_lin, c_emb); /* the table read in place from host memory */
        lin_emb(&staged, &staged, xv, b_lin, b_emb);
        CHECK(!memcmp(a_lin, b_lin, sizeof a_lin), "%s: linear of the staged weight differs", qi_dtype_name(t));
        CHECK(!memcmp(a_emb, b_emb, sizeof a_emb), "%s: embedding of the staged table differs", qi_dtype_name(t));
        CHECK(!memcmp(a_emb, c_emb, sizeof a_emb), "%s: embedding of the host table differs", qi_dtype_name(t));
        gpu->ops->weight_free(gpu, &wd);
        gpu->ops->weight_free(gpu, &wh);
    }
    gpu->ops->slot_free(gpu, slot);
    qi_cuda_host_info(gpu, &h1);
    CHECK(budget ? h1.staged_bounced == h0.staged_bounced && h1.staged_pinned > h0.staged_pinned
                 : h1.staged_pinned == h0.staged_pinned && h1.staged_bounced > h0.staged_bounced,
          "budget %zu: %llu bytes staged from pinned memory, %llu through the ring", budget,
          h1.staged_pinned - h0.staged_pinned, h1.staged_bounced - h0.staged_bounced);
    gpu->ops->host_budget(gpu, (size_t)1 << 40);
}

static void staged_host_weights_match_device_weights(void) { staged_host_weights_match_device_weights_at((size_t)1 << 40); }
static void staged_from_ordinary_memory_match_device_weights(void) { staged_host_weights_match_device_weights_at(0); }

/* Six 32 MiB weights through two slots, each GEMM queued right after its
 * take (which queues the next copy): the results match each weight's own. */
static void two_slots_at(size_t budget) {
    enum { U = 6, N = 4096, K = 4096, M = 2048 };
    qi_error err = {{0}};
    gpu->ops->host_budget(gpu, budget);
    REQUIRE(gpu->ops->reserve(gpu, (size_t)512 * MIB, 0, &err) == QI_OK, "%s", err.msg);
    uint16_t *host = malloc(sizeof(uint16_t) * (size_t)N * K);
    float *xv = malloc(sizeof(float) * (size_t)M * K), *want = malloc(sizeof(float) * (size_t)M * N);
    float *got = malloc(sizeof(float) * (size_t)M * N);
    qi_tensor wd[U], wh[U], x, y[U];
    qi_tensor *units[U][1];
    qi_wstream *s = NULL;
    REQUIRE(host && xv && want && got && qi_wstream_new(gpu, U, &s, &err) == QI_OK, "%s", err.msg);
    for (int i = 0; i < M * K; i++) xv[i] = caps_frand();
    int64_t ne[2] = {N, K};
    for (int u = 0; u < U; u++) {
        for (size_t i = 0; i < (size_t)N * K; i++) host[i] = qi_f32_to_bf16(caps_frand() * 0.02f * (float)(u + 1));
        REQUIRE(!gpu->ops->weight(gpu, &wd[u], QI_BF16, 2, ne, host, NULL, &err), "%s", err.msg);
        REQUIRE(!gpu->ops->weight_host(gpu, &wh[u], QI_BF16, 2, ne, host, NULL, &err), "%s", err.msg);
        units[u][0] = &wh[u];
        qi_wstream_set_unit(s, u, units[u], 1);
    }
    REQUIRE(qi_wstream_alloc(s, &err) == QI_OK, "%s", err.msg);
    REQUIRE(!qi_be_act2(gpu, &x, M, K, &err) && !gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    for (int u = 0; u < U; u++) REQUIRE(!qi_be_act2(gpu, &y[u], M, N, &err), "%s", err.msg);
    for (int pass = 0; pass < 2; pass++) { /* the second pass finds unit 0 prefetched */
        for (int u = 0; u < U; u++) {
            const qi_tensor *v;
            REQUIRE(qi_wstream_take(s, u, (u + 1) % U, &v, &err) == QI_OK, "%s", err.msg);
            gpu->ops->linear(gpu, &x, &v[0], NULL, QI_ACT_NONE, &y[u]);
        }
        REQUIRE(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
        for (int u = 0; u < U; u++) {
            qi_tensor ref;
            size_t mark = gpu->ops->mark(gpu);
            REQUIRE(!qi_be_act2(gpu, &ref, M, N, &err));
            gpu->ops->linear(gpu, &x, &wd[u], NULL, QI_ACT_NONE, &ref);
            CHECK(!gpu->ops->download(gpu, &ref, want, &err) && !gpu->ops->download(gpu, &y[u], got, &err));
            CHECK(!memcmp(want, got, sizeof(float) * (size_t)M * N), "pass %d: unit %d's result differs", pass, u);
            gpu->ops->reset(gpu, mark);
        }
    }
    qi_wstream_free(s);
    for (int u = 0; u < U; u++) {
        gpu->ops->weight_free(gpu, &wd[u]);
        gpu->ops->weight_free(gpu, &wh[u]);
    }
    gpu->ops->reset(gpu, 0);
    free(host), free(xv), free(want), free(got);
    gpu->ops->host_budget(gpu, (size_t)1 << 40);
}

static void two_slots_in_turn_never_overwrite_what_an_op_reads(void) { two_slots_at((size_t)1 << 40); }
/* the same through the bounce ring: 32 MiB weights, two to a ring buffer, the ring wrapping every 8 */
static void two_slots_through_the_ring_never_overwrite_what_an_op_reads(void) { two_slots_at(0); }

/* One 320 MiB weight (more than the ring's 4 × 64 MiB, so its own stage
 * wraps the ring and waits for its first buffers' copies) from ordinary
 * memory: the GEMM with it matches the same weight on the device. */
static void a_weight_larger_than_the_ring(void) {
    enum { N = 10240, K = 16384, M = 64 };
    qi_error err = {{0}};
    gpu->ops->host_budget(gpu, 0);
    REQUIRE(gpu->ops->reserve(gpu, (size_t)64 * MIB, 0, &err) == QI_OK, "%s", err.msg);
    uint16_t *host = malloc(sizeof(uint16_t) * (size_t)N * K);
    float *xv = malloc(sizeof(float) * (size_t)M * K), *want = malloc(sizeof(float) * (size_t)M * N);
    float *got = malloc(sizeof(float) * (size_t)M * N);
    REQUIRE(host && xv && want && got);
    for (size_t i = 0; i < (size_t)N * K; i++) host[i] = qi_f32_to_bf16(caps_frand() * 0.02f);
    for (int i = 0; i < M * K; i++) xv[i] = caps_frand();
    int64_t ne[2] = {N, K};
    qi_tensor wd, wh, view, x, y;
    qi_slot *slot = NULL;
    REQUIRE(!gpu->ops->weight(gpu, &wd, QI_BF16, 2, ne, host, NULL, &err) &&
            !gpu->ops->weight_host(gpu, &wh, QI_BF16, 2, ne, host, NULL, &err) &&
            !gpu->ops->slot_new(gpu, qi_nbytes(&wh), &slot, &err), "%s", err.msg);
    CHECK(qi_nbytes(&wh) > 4 * 64 * MIB);
    REQUIRE(!qi_be_act2(gpu, &x, M, K, &err) && !qi_be_act2(gpu, &y, M, N, &err) &&
            !gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    for (int pass = 0; pass < 2; pass++) { /* the second stage finds the ring's buffers used once */
        REQUIRE(!gpu->ops->stage(gpu, slot, &wh, &view, 1, &err), "%s", err.msg);
        gpu->ops->stage_wait(gpu, slot);
        gpu->ops->linear(gpu, &x, &view, NULL, QI_ACT_NONE, &y);
        CHECK(!gpu->ops->download(gpu, &y, got, &err), "%s", err.msg);
        gpu->ops->linear(gpu, &x, &wd, NULL, QI_ACT_NONE, &y);
        CHECK(!gpu->ops->download(gpu, &y, want, &err), "%s", err.msg);
        CHECK(!memcmp(want, got, sizeof(float) * (size_t)M * N), "pass %d: the 320 MiB weight's result differs", pass);
    }
    gpu->ops->reset(gpu, 0);
    gpu->ops->slot_free(gpu, slot);
    gpu->ops->weight_free(gpu, &wd);
    gpu->ops->weight_free(gpu, &wh);
    gpu->ops->host_budget(gpu, (size_t)1 << 40);
    free(host), free(xv), free(want), free(got);
}

/* ---- the engine on the tiny model ---------------------------------------------------- */

static void engine_plans_give_the_unplanned_images(void) {
    qi_engine *e = NULL;
    qi_image ref[2] = {{0}}, got[2] = {{0}};
    const char *prompts[2] = {"a red apple on a table", "a blue boat"};
    REQUIRE(open_tiny("cuda", 0, -1, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(e->planned && e->plan.step == 1, "the whole free GPU: everything resident");
    for (int i = 0; i < 2; i++) CHECK(generate(e, prompts[i], &ref[i]) == QI_OK, "%s", qi_engine_error(e));
    qi_engine_close(e);
    plan_test tests[2] = {is_swap, streams_everything};
    const char *names[2] = {"stage swap", "everything streamed"};
    for (int k = 0; k < 2; k++) {
        size_t b = budget_where("cuda", 2048 * MIB, 256 * MIB, tests[k]);
        CHECK(b > 0, "no budget gives a %s plan", names[k]);
        if (!b) continue;
        e = NULL;
        CHECK(open_tiny("cuda", b, -1, &e) == QI_OK && tests[k](&e->plan), "%s at %zu KiB: %s", names[k], b >> 10,
              qi_engine_error(e));
        for (int i = 0; i < 2; i++) {
            CHECK(generate(e, prompts[i], &got[i]) == QI_OK, "%s", qi_engine_error(e));
            CHECK(same_pixels(&ref[i], &got[i]), "%s: prompt %d's image differs from the unplanned engine's", names[k],
                  i);
            qi_image_free(&got[i]);
        }
        if (k == 0) CHECK(e->te_frees == 2 && e->te_loads == 2, "swap: %d loads, %d frees", e->te_loads, e->te_frees);
        if (k == 1 && e->ranks->dit[0]) CHECK(qi_dit_staged_bytes(e->ranks->dit[0]) > 0);
        qi_engine_close(e);
    }
    for (int i = 0; i < 2; i++) qi_image_free(&ref[i]);
}

/* Everything streamed, the host copies pinned (the default), partly pinned
 * (a 64 KiB budget: the rest through the bounce ring), not pinned (0), and
 * QI_PINNED_MAX=0 from the environment with the default options: each gives
 * the all-resident engine's images bit for bit, and the counters say which
 * path the staged bytes took. */
static void pinned_budgets_give_the_resident_images(void) {
    qi_engine *e = NULL;
    qi_image ref[2] = {{0}}, got = {0};
    const char *prompts[2] = {"a red apple on a table", "a blue boat"};
    unsetenv("QI_PINNED_MAX");
    REQUIRE(open_tiny("cuda", 0, -1, &e) == QI_OK && e->plan.step == 1, "%s", qi_engine_error(e));
    for (int i = 0; i < 2; i++) CHECK(generate(e, prompts[i], &ref[i]) == QI_OK, "%s", qi_engine_error(e));
    qi_engine_close(e);
    size_t b = budget_where("cuda", 2048 * MIB, 256 * MIB, streams_everything);
    REQUIRE(b > 0, "no budget streams everything");
    const struct {
        long long pinned;
        const char *env, *name;
        int pins, pages; /* whether host weights must be in pinned / ordinary memory */
    } cases[] = {{-1, NULL, "all pinned", 1, 0},
                 {64 << 10, NULL, "64 KiB pinned", 1, 1},
                 {0, NULL, "--pinned 0", 0, 1},
                 {-1, "0", "QI_PINNED_MAX=0", 0, 1}};
    for (size_t k = 0; k < QI_ARRAY_LEN(cases); k++) {
        if (cases[k].env) setenv("QI_PINNED_MAX", cases[k].env, 1);
        e = NULL;
        qi_status st = open_tiny("cuda", b, cases[k].pinned, &e);
        unsetenv("QI_PINNED_MAX");
        CHECK(st == QI_OK && streams_everything(&e->plan), "%s: %s", cases[k].name, qi_engine_error(e));
        if (st != QI_OK) {
            qi_engine_close(e);
            continue;
        }
        for (int i = 0; i < 2; i++) {
            CHECK(generate(e, prompts[i], &got) == QI_OK, "%s: %s", cases[k].name, qi_engine_error(e));
            CHECK(same_pixels(&ref[i], &got), "%s: prompt %d's image differs from the all-resident engine's",
                  cases[k].name, i);
            qi_image_free(&got);
        }
        qi_cuda_host h;
        qi_cuda_host_info(e->be, &h);
        printf("  %s: %.2f MiB pinned, %.2f MiB ordinary; staged %.2f MiB pinned, %.2f MiB through the ring\n",
               cases[k].name, h.pinned_held / 1048576.0, h.pageable_held / 1048576.0, h.staged_pinned / 1048576.0,
               h.staged_bounced / 1048576.0);
        CHECK((h.pinned_held > 0) == cases[k].pins && (h.pageable_held > 0) == cases[k].pages &&
                  (h.staged_bounced > 0) == cases[k].pages && (cases[k].pages || h.staged_pinned > 0),
              "%s: %zu bytes pinned, %zu ordinary; staged %llu bytes from pinned memory, %llu through the ring",
              cases[k].name, h.pinned_held, h.pageable_held, h.staged_pinned, h.staged_bounced);
        CHECK(h.pinned_held <= (cases[k].pinned >= 0 ? (size_t)cases[k].pinned : h.pinned_max));
        qi_engine_close(e);
    }
    for (int i = 0; i < 2; i++) qi_image_free(&ref[i]);
}

/* A request no plan of the GPU's memory fits (4096 images of 8192x8192 with
 * the whole free GPU; 64 of 1328x1328 under --vram 1G) is refused from the
 * sizes alone, before any work: QI_ERR_NOMEM naming the request, no prompt
 * encoded, no transformer loaded; the next request runs. */
static void request_that_cannot_fit_is_refused_before_work(void) {
    static const char *prompts[64];
    for (int i = 0; i < 64; i++) prompts[i] = "a red apple on a table";
    const size_t budgets[2] = {0, (size_t)1 << 30};
    for (int k = 0; k < 2; k++) {
        qi_engine *e = NULL;
        REQUIRE(open_tiny("cuda", budgets[k], -1, &e) == QI_OK, "%s", qi_engine_error(e));
        qi_request r = qi_request_default();
        r.prompts = prompts;
        r.n_prompts = k == 0 ? 64 : 1;
        r.batch = 64;
        r.width = r.height = k == 0 ? 8192 : 1328;
        r.steps = 2;
        qi_image img = {0};
        qi_status st = qi_generate(e, &r, &img);
        printf("  %s\n", qi_engine_error(e));
        CHECK(st == QI_ERR_NOMEM, "%s", qi_status_name(st));
        CHECK(strstr(qi_engine_error(e), k == 0 ? "8192x8192, 4096 images" : "1328x1328, 64 images") &&
                  strstr(qi_engine_error(e), "--vram"), "%s", qi_engine_error(e));
        CHECK(!e->ranks->dit[0] && e->last.text_s == 0, "work started: transformer loaded or prompt encoded");
        CHECK(generate(e, "a red apple on a table", &img) == QI_OK, "the next request: %s", qi_engine_error(e));
        qi_image_free(&img);
        qi_engine_close(e);
    }
}

int main(void) {
    qi_error err;
    if (qi_backend_cuda_create(0, (size_t)256 << 20, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    RUN(reserve_sizes_the_arena_and_weight_size_covers_a_weight);
    RUN(staged_host_weights_match_device_weights);
    RUN(two_slots_in_turn_never_overwrite_what_an_op_reads);
    RUN(staged_from_ordinary_memory_match_device_weights);
    RUN(two_slots_through_the_ring_never_overwrite_what_an_op_reads);
    RUN(a_weight_larger_than_the_ring);
    gpu->ops->destroy(gpu);
    RUN(engine_plans_give_the_unplanned_images);
    RUN(pinned_budgets_give_the_resident_images);
    RUN(request_that_cannot_fit_is_refused_before_work);
    TEST_END();
}

/*
 * test_cuda_kept_overlap.c — claims about the overlap of kept-weight
 * expansions with the GEMMs (src/backend/cuda/cuda_kept.cu: the op table's
 * prefetch_weight queues the next linear's bf16 expansion on a second
 * stream, into the other of two scratch buffers):
 *   - a hint is only a hint: linears after hints that name the wrong weight,
 *     hints that are never followed, hints past what the buffers hold, give
 *     the very bits of the same linears with the overlap off, and a hinted
 *     weight that the fp8 GEMM takes is not expanded at all;
 *   - a transformer call (the tiny model's transformer with its block
 *     matrices as Q8_0 / Q4_K GGUF blocks, at 64×64 patches: 4096-row GEMMs
 *     of a few µs, the expansions beside them as short, so a missing wait
 *     lets one run into the other) gives the very bits of the call with the
 *     overlap off, eagerly and replayed as a recorded CUDA graph, and the
 *     hints really fed every block linear;
 *   - the same with one block and the modulation streamed through the
 *     weight slots (hints read slot copies; a stage must not overwrite what
 *     an expansion still reads, nor leave a stale copy named by an address
 *     the next weights take over);
 *   - the same on a backend with three buffers (QI_CUDA_KEPT_OVERLAP=3:
 *     the hints two linears ahead are taken too);
 *   - linear_shared (several fp8 linears of one input quantised once, their
 *     LayerNorm taking the amax): the tiny transformer with its block
 *     matrices e4m3, each with its own per-tensor scale, gives the very bits
 *     with the op as without it (the model's plain ops), eagerly and
 *     replayed, and its fp8 GEMM answered every block linear;
 *   - the block GEMM (src/backend/cuda/cuda_block_gemm.cu) answering every
 *     GGUF linear of the tiny transformer stays close to the expansion path
 *     and replays its own bits.
 * Needs a GPU ("cuda" label).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "base/quant.h"
#include "base/types.h" /* qi_row_bytes */
#include "io/gguf_write.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "test.h"

#define TINY_DIT QI_TEST_DATA "/tiny-model/transformer"

static qi_backend *gpu;
static uint32_t g_seed = 12345;

static float frand(void) {
    g_seed = g_seed * 1664525u + 1013904223u;
    return (float)((g_seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static unsigned long long queued_now(void) {
    unsigned long long q = 0;
    qi_cuda_kept_counts(gpu, NULL, &q, NULL);
    return q;
}

static unsigned long long used_now(void) {
    unsigned long long u = 0;
    qi_cuda_kept_counts(gpu, NULL, NULL, &u);
    return u;
}

/* ---- linears after hints ------------------------------------------------------------ */

enum { LN = 256, LK = 512, LM = 64, NW = 3 };

/* A kept weight [LN, LK] of type t with random values. */
static void make_weight(qi_dtype t, qi_tensor *w) {
    static float f[LN * LK];
    static uint8_t q[LN * LK * 2];
    for (int i = 0; i < LN * LK; i++) f[i] = frand() * 0.05f;
    qi_error err = {{0}};
    int64_t ne[2] = {LN, LK};
    if (t == QI_F8_E4M3) {
        qi_quantize_f8e4m3(f, q, LN * LK, 0.05f / 448.0f);
        qi_weight_scale s = {QI_SCALE_TENSOR, 0.05f / 448.0f, NULL};
        REQUIRE(!gpu->ops->weight(gpu, w, t, 2, ne, q, &s, &err), "%s", err.msg);
        return;
    }
    REQUIRE(qi_quantize(t, f, q, LN * LK) == 0, "quantise %s", qi_dtype_name(t));
    REQUIRE(!gpu->ops->weight(gpu, w, t, 2, ne, q, NULL, &err), "%s", err.msg);
}

/* y = x · w[order[s]]ᵀ for each step s, after hinting the weights
 * hints[s][0], hints[s][1] (-1: none); the outputs, as float32, into out[s]. */
static void run_sequence(const qi_tensor *w, const qi_tensor *x, const int *order, const int (*hints)[2], int steps,
                         float (*out)[LM * LN]) {
    qi_error err = {{0}};
    size_t mark = gpu->ops->mark(gpu);
    qi_tensor y[8];
    for (int s = 0; s < steps; s++) REQUIRE(!qi_be_act2(gpu, &y[s], LM, LN, &err), "%s", err.msg);
    for (int s = 0; s < steps; s++) {
        for (int h = 0; h < 2; h++)
            if (hints[s][h] >= 0) gpu->ops->prefetch_weight(gpu, &w[hints[s][h]]);
        gpu->ops->linear(gpu, x, &w[order[s]], NULL, QI_ACT_NONE, &y[s]);
    }
    gpu->ops->prefetch_weight(gpu, &w[0]); /* never followed: sync and weight_free must cope */
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    for (int s = 0; s < steps; s++) CHECK(!gpu->ops->download(gpu, &y[s], out[s], &err), "%s", err.msg);
    gpu->ops->reset(gpu, mark);
}

static void hints_right_wrong_or_unfollowed_change_no_bit(void) {
    const qi_dtype types[NW] = {QI_Q4_K, QI_Q8_0, QI_Q6_K};
    qi_tensor w[NW + 1];
    for (int i = 0; i < NW; i++) make_weight(types[i], &w[i]);
    qi_error err = {{0}};
    qi_tensor x;
    static float xv[LM * LK];
    for (int i = 0; i < LM * LK; i++) xv[i] = frand();
    size_t mark = gpu->ops->mark(gpu);
    REQUIRE(!qi_be_act2(gpu, &x, LM, LK, &err) && !gpu->ops->upload(gpu, &x, xv, &err), "%s", err.msg);
    /* right hints; one two linears early (step 0 names weight 1, which runs at step 2); two at once, then
       a linear of neither (the older unread copy is evicted); the same hint twice; a weight run twice in a
       row (the second time unhinted) */
    const int order[8] = {0, 2, 1, 0, 2, 1, 1, 0};
    const int hints[8][2] = {{1, -1}, {2, -1}, {-1, -1}, {1, 2}, {0, 0}, {1, -1}, {-1, -1}, {0, -1}};
    static float off[8][LM * LN], on[8][LM * LN];
    int was = qi_cuda_set_kept_overlap(gpu, 0);
    unsigned long long q0 = queued_now();
    run_sequence(w, &x, order, hints, 8, off);
    CHECK(queued_now() == q0, "overlap off: %llu expansions queued by hints", queued_now() - q0);
    qi_cuda_set_kept_overlap(gpu, 1);
    unsigned long long u0 = used_now();
    q0 = queued_now();
    run_sequence(w, &x, order, hints, 8, on);
    printf("  overlap on: %llu expansions queued by hints, %llu read by a linear\n", queued_now() - q0,
           used_now() - u0);
    CHECK(queued_now() > q0 && used_now() > u0, "the hints were taken (else this claim tests nothing)");
    for (int s = 0; s < 8; s++)
        CHECK(!memcmp(off[s], on[s], sizeof off[s]), "step %d (weight %d, %s): overlap on differs from off", s,
              order[s], qi_dtype_name(types[order[s]]));
    /* an e4m3 weight the fp8 GEMM takes (on by default from compute capability 8.9) is not expanded on a hint */
    make_weight(QI_F8_E4M3, &w[NW]);
    if (!strncmp(qi_cuda_fp8_gemm_state(gpu), "on", 2)) {
        q0 = queued_now();
        gpu->ops->prefetch_weight(gpu, &w[NW]);
        CHECK(queued_now() == q0, "a hint for a weight the fp8 GEMM reads queued an expansion");
    } else {
        printf("  (the fp8 GEMM is off here: %s)\n", qi_cuda_fp8_gemm_state(gpu));
    }
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
    gpu->ops->reset(gpu, mark);
    for (int i = 0; i <= NW; i++) gpu->ops->weight_free(gpu, &w[i]);
    qi_cuda_set_kept_overlap(gpu, was);
}

/* ---- a transformer call ---------------------------------------------------------------- */

/* The type a tiny-model tensor is written as: block matrices as GGUF blocks
 * (Q4_K where rows are a whole number of 256-blocks, else Q8_0), the rest F32. */
static qi_dtype gguf_type(const qi_source_tensor *t) {
    if (t->ndim != 2 || strncmp(t->name, "transformer_blocks.", 19)) return QI_F32;
    return t->shape[1] % 256 == 0 ? QI_Q4_K : QI_Q8_0;
}

/* The tiny model's transformer as a GGUF at path; the number of block
 * attention/MLP matrices (the ones the block loop hints) into *hinted. */
static int write_gguf_transformer(const char *path, int *hinted) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    qi_gguf_writer *w = NULL;
    *hinted = 0;
    if (qi_source_open_folder(TINY_DIT, QI_COMPONENT_TRANSFORMER, &src, &err) || qi_gguf_writer_new(&w, &err) ||
        qi_gguf_writer_set_string(w, "general.architecture", "qwen_image", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        qi_source_close(src);
        qi_gguf_writer_free(w);
        return -1;
    }
    int n = qi_source_tensor_count(src), rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        rc = qi_gguf_writer_add_tensor(w, t.name, gguf_type(&t), t.ndim, t.shape, &err) != QI_OK;
        *hinted += gguf_type(&t) != QI_F32 && !strstr(t.name, "_mod.");
    }
    if (!rc) rc = qi_gguf_writer_begin(w, path, &err) != QI_OK;
    for (int i = 0; i < n && !rc; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        int64_t numel = 1;
        for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
        float *f = malloc(sizeof(float) * (size_t)numel);
        void *q = malloc((size_t)numel * 4);
        rc = !f || !q || qi_source_tensor_to_f32(&t, f, &err) != QI_OK;
        qi_dtype dt = gguf_type(&t);
        if (!rc && dt != QI_F32) rc = qi_quantize(dt, f, q, numel) != 0;
        if (!rc) {
            size_t bytes = dt == QI_F32 ? (size_t)numel * 4 : (size_t)(numel / t.shape[t.ndim - 1]) *
                                                                   (size_t)qi_row_bytes(dt, t.shape[t.ndim - 1]);
            rc = qi_gguf_writer_write(w, dt == QI_F32 ? (const void *)f : q, bytes, &err) != QI_OK;
        }
        free(f);
        free(q);
    }
    if (!rc) rc = qi_gguf_writer_end(w, &err) != QI_OK;
    if (rc) fprintf(stderr, "writing %s: %s\n", path, err.msg);
    qi_gguf_writer_free(w);
    qi_source_close(src);
    return rc ? -1 : 0;
}

enum { GH = 64, GW = 64, TXT = 32, CH = 64 };

/* One eager qi_dit_forward on `gpu` into out (float32). */
static void forward(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *o, float *out) {
    qi_error err = {{0}};
    float t = 0.6f;
    CHECK(!qi_dit_forward(d, x, ctx, NULL, &t, GH, GW, o, &err), "%s", err.msg);
    CHECK(!gpu->ops->download(gpu, o, out, &err), "%s", err.msg);
}

/* The call of forward() on a backend made with QI_CUDA_KEPT_OVERLAP=3 (three
 * buffers) into out; *queued, *used: its hinted expansions. */
static void forward_three_buffers(const qi_source *src, const float *xv, const float *cv, float *out,
                                  unsigned long long *queued, unsigned long long *used) {
    qi_error err = {{0}};
    qi_backend *b3 = NULL;
    qi_dit *d3 = NULL;
    setenv("QI_CUDA_KEPT_OVERLAP", "3", 1);
    qi_status st = qi_backend_cuda_create(0, (size_t)1 << 30, &b3, &err);
    unsetenv("QI_CUDA_KEPT_OVERLAP");
    REQUIRE(st == QI_OK, "%s", err.msg);
    qi_tensor x, ctx, o;
    float t = 0.6f;
    if (!qi_dit_load(src, b3, NULL, &d3, &err) && !qi_be_act3(b3, &x, 1, GH * GW, CH, &err) &&
        !qi_be_act3(b3, &ctx, 1, TXT, 64, &err) && !qi_be_act3(b3, &o, 1, GH * GW, CH, &err) &&
        !b3->ops->upload(b3, &x, xv, &err) && !b3->ops->upload(b3, &ctx, cv, &err)) {
        CHECK(!qi_dit_forward(d3, &x, &ctx, NULL, &t, GH, GW, &o, &err) && !b3->ops->download(b3, &o, out, &err),
              "%s", err.msg);
    } else {
        CHECK(0, "three buffers: %s", err.msg);
    }
    qi_cuda_kept_counts(b3, NULL, queued, used);
    if (d3) qi_dit_free(d3);
    b3->ops->destroy(b3);
}

/* The call object's run eagerly (out_eager), then recorded and replayed (out_graph). */
static void call_eager_and_graph(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *o,
                                 float *out_eager, float *out_graph, unsigned long long *queued_in_graph) {
    qi_error err = {{0}};
    qi_dit_call *call = NULL;
    qi_graph *g = NULL;
    float t = 0.6f;
    REQUIRE(!qi_dit_call_create(d, 1, GH, GW, TXT, &call, &err) && !qi_dit_call_set_text_mask(call, NULL, &err) &&
                !qi_dit_call_set_timestep(call, &t, &err),
            "%s", err.msg);
    CHECK(!qi_dit_call_run(call, x, ctx, o, &err) && !gpu->ops->sync(gpu, &err), "%s", err.msg);
    CHECK(!gpu->ops->download(gpu, o, out_eager, &err), "%s", err.msg);
    gpu->ops->axpby(gpu, 0.0f, o, 0.0f, o, o); /* the replay must write it again */
    unsigned long long q0 = queued_now();
    REQUIRE(gpu->ops->graph_begin(gpu, &err) == QI_OK, "%s", err.msg);
    qi_status st = qi_dit_call_run(call, x, ctx, o, &err);
    qi_error end_err = {{0}};
    qi_status end_st = gpu->ops->graph_end(gpu, &g, &end_err);
    *queued_in_graph = queued_now() - q0;
    CHECK(st == QI_OK && end_st == QI_OK && g, "recording: %s %s", err.msg, end_err.msg);
    if (g) {
        CHECK(gpu->ops->graph_launch(gpu, g, &err) == QI_OK && gpu->ops->sync(gpu, &err) == QI_OK, "%s", err.msg);
        CHECK(!gpu->ops->download(gpu, o, out_graph, &err), "%s", err.msg);
        gpu->ops->graph_free(gpu, g);
    }
    qi_dit_call_free(call);
}

static size_t count_diff(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += memcmp(&a[i], &b[i], sizeof *a) != 0;
    return k;
}

/* A tiny transformer call set up on gpu: the transformer written at a path
 * (its config the tiny model's) loaded, a random GH×GW-patch input x and a
 * TXT-token text ctx uploaded, out for the result, six host outputs o[] of
 * n_out floats; `mark`: the arena before the activations. */
typedef struct tiny_call {
    qi_source *src;
    qi_dit *d;
    float *xv, *cv, *o[6];
    size_t n_out, mark;
    qi_tensor x, ctx, out;
} tiny_call;

/* 0, or -1 with the failure recorded. */
static int tiny_call_load(tiny_call *t, const char *path) {
    enum { L = GH * GW };
    qi_error err = {{0}};
    memset(t, 0, sizeof *t);
    if (qi_source_open(path, QI_COMPONENT_TRANSFORMER, &t->src, &err) ||
        qi_source_set_config(t->src, TINY_DIT "/config.json", &err) || qi_dit_load(t->src, gpu, NULL, &t->d, &err)) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    t->n_out = (size_t)L * CH;
    t->xv = malloc(sizeof(float) * L * CH), t->cv = malloc(sizeof(float) * TXT * 64);
    for (int i = 0; i < 6; i++) t->o[i] = malloc(sizeof(float) * t->n_out);
    for (int i = 0; i < L * CH; i++) t->xv[i] = frand();
    for (int i = 0; i < TXT * 64; i++) t->cv[i] = frand();
    t->mark = gpu->ops->mark(gpu);
    if (qi_be_act3(gpu, &t->x, 1, L, CH, &err) || qi_be_act3(gpu, &t->ctx, 1, TXT, 64, &err) ||
        qi_be_act3(gpu, &t->out, 1, L, CH, &err) || gpu->ops->upload(gpu, &t->x, t->xv, &err) ||
        gpu->ops->upload(gpu, &t->ctx, t->cv, &err)) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    return 0;
}

static void tiny_call_free(tiny_call *t) {
    gpu->ops->reset(gpu, t->mark);
    qi_dit_free(t->d);
    qi_source_close(t->src);
    free(t->xv), free(t->cv);
    for (int i = 0; i < 6; i++) free(t->o[i]);
}

static void a_transformer_call_is_bit_identical_with_the_overlap_on_and_off(void) {
    char dir[] = "/tmp/qi_overlap_XXXXXX", path[64];
    REQUIRE(mkdtemp(dir), "temporary folder");
    snprintf(path, sizeof path, "%s/transformer.gguf", dir); /* the suffix says what it is */
    int hinted = 0;
    REQUIRE(write_gguf_transformer(path, &hinted) == 0, "cannot write the GGUF transformer");
    qi_error err = {{0}};
    tiny_call t;
    REQUIRE(tiny_call_load(&t, path) == 0, "the GGUF transformer's call set-up");

    int was = qi_cuda_set_kept_overlap(gpu, 0);
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[0]);
    call_eager_and_graph(t.d, &t.x, &t.ctx, &t.out, t.o[1], t.o[2], &(unsigned long long){0});
    qi_cuda_set_kept_overlap(gpu, 1);
    unsigned long long q0 = queued_now(), u0 = used_now(), in_graph = 0;
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[3]);
    unsigned long long q1 = queued_now() - q0, u1 = used_now() - u0;
    call_eager_and_graph(t.d, &t.x, &t.ctx, &t.out, t.o[4], t.o[5], &in_graph);
    /* the last block skips the text stream's to_add_out and MLP (nothing reads the text after it) */
    int layers = qi_dit_get_config(t.d)->num_layers;
    unsigned long long runs = 12ull * (unsigned)layers - 3;
    printf("  tiny transformer (Q8_0/Q4_K blocks) at %dx%d patches, txt %d: one call queued %llu expansions on "
           "hints, %llu of them read; %llu block linears run; %llu queued while recording\n",
           GH, GW, TXT, q1, u1, runs, in_graph);
    CHECK(hinted == 12 * layers, "%d block matrices in GGUF blocks, want %d", hinted, 12 * layers);
    CHECK(q1 == runs && u1 == runs, "every block linear read an expansion queued by a hint (queued %llu, read %llu, "
          "linears %llu)", q1, u1, runs);
    CHECK(in_graph == runs, "the recording holds the hinted expansions (%llu, want %llu)", in_graph, runs);
    static const char *what[6] = {"forward, off", "call, off", "graph, off", "forward, on", "call, on", "graph, on"};
    for (int i = 1; i < 6; i++) {
        size_t k = count_diff(t.o[0], t.o[i], t.n_out);
        CHECK(k == 0, "%s: %zu of %zu outputs differ from %s", what[i], k, t.n_out, what[0]);
    }
    /* one block and the modulation streamed: hints inside the streamed block read its slot copy */
    qi_dit *ds = NULL;
    qi_dit_residency res = {.resident_blocks = 1, .mod_resident = 0};
    CHECK(!qi_dit_load_resident(t.src, gpu, NULL, QI_LORA_AUTO, &res, &ds, &err), "%s", err.msg);
    if (ds) {
        CHECK(qi_dit_streamed_blocks(ds) == layers - 1, "%d blocks streamed", qi_dit_streamed_blocks(ds));
        u0 = used_now();
        for (int r = 0; r < 2; r++) { /* twice: the second call's stages take over the first call's slot addresses */
            forward(ds, &t.x, &t.ctx, &t.out, t.o[1]);
            size_t k = count_diff(t.o[0], t.o[1], t.n_out);
            CHECK(k == 0, "streamed, on, call %d: %zu of %zu outputs differ from %s", r, k, t.n_out, what[0]);
        }
        printf("  the same with %d of %d blocks and the modulation streamed: %llu hinted expansions read\n",
               qi_dit_streamed_blocks(ds), layers, used_now() - u0);
        CHECK(used_now() > u0, "hints were read in the streamed calls");
        qi_dit_free(ds);
    }
    unsigned long long q3 = 0, u3 = 0;
    forward_three_buffers(t.src, t.xv, t.cv, t.o[1], &q3, &u3);
    size_t k3 = count_diff(t.o[0], t.o[1], t.n_out);
    printf("  three buffers: %llu expansions queued on hints, %llu read; %zu outputs differ\n", q3, u3, k3);
    CHECK(k3 == 0, "three buffers: %zu of %zu outputs differ from %s", k3, t.n_out, what[0]);
    CHECK(q3 == runs && u3 == runs, "three buffers: queued %llu, read %llu, linears %llu", q3, u3, runs);
    qi_cuda_set_kept_overlap(gpu, was);
    tiny_call_free(&t);
    unlink(path);
    rmdir(dir);
}

/* The block GEMM (cuda_block_gemm.cu) through the model: with every GGUF
 * linear sent to it (the 4096 image rows unsplit, the 32 text rows and the
 * modulation's one split over K), a tiny GGUF transformer call stays within
 * rel L2 5e-3 of the expansion path's (each linear's products are the same,
 * summed in another order: a few outputs in 10^4 one bf16 step apart, which
 * the later layers carry but do not grow to more than a few 1e-4; a wrong
 * tile is O(1)), and its graph replay gives the eager call's bits (the K
 * split is a function of the shape alone). */
static void block_gemm_through_a_transformer_call(void) {
    char dir[] = "/tmp/qi_blockgemm_XXXXXX", path[64];
    REQUIRE(mkdtemp(dir), "temporary folder");
    snprintf(path, sizeof path, "%s/transformer.gguf", dir);
    int hinted = 0;
    REQUIRE(write_gguf_transformer(path, &hinted) == 0, "cannot write the GGUF transformer");
    tiny_call t;
    REQUIRE(tiny_call_load(&t, path) == 0, "the GGUF transformer's call set-up");
    int overlap_was = qi_cuda_set_kept_overlap(gpu, 0);
    int64_t rows_was = qi_cuda_set_block_gemm_rows(gpu, 0);
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[0]); /* the expansion path */
    qi_cuda_set_block_gemm_rows(gpu, (int64_t)1 << 40);
    unsigned long long c0 = qi_cuda_block_gemm_calls(gpu), in_graph = 0;
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[1]);
    unsigned long long calls = qi_cuda_block_gemm_calls(gpu) - c0;
    call_eager_and_graph(t.d, &t.x, &t.ctx, &t.out, t.o[2], t.o[3], &in_graph);
    qi_cuda_set_block_gemm_rows(gpu, rows_was);
    qi_cuda_set_kept_overlap(gpu, overlap_was);
    double d2 = 0, r2 = 0;
    for (size_t i = 0; i < t.n_out; i++) {
        double d = (double)t.o[1][i] - t.o[0][i];
        d2 += d * d, r2 += (double)t.o[0][i] * t.o[0][i];
    }
    double rel = sqrt(d2 / (r2 > 0 ? r2 : 1));
    printf("  tiny transformer, every GGUF linear through the block GEMM: %llu of its linears ran there; rel L2 "
           "%.2e against the expansion path\n", calls, rel);
    CHECK(calls > 0, "no linear ran through the block GEMM");
    CHECK(rel <= 5e-3 && r2 > 0, "block GEMM call: rel L2 %.2e against the expansion path", rel);
    size_t k = count_diff(t.o[2], t.o[3], t.n_out);
    CHECK(k == 0, "block GEMM: the graph replay differs from the eager call in %zu of %zu outputs", k, t.n_out);
    k = count_diff(t.o[1], t.o[2], t.n_out);
    CHECK(k == 0, "block GEMM: the call object differs from qi_dit_forward in %zu of %zu outputs", k, t.n_out);
    tiny_call_free(&t);
    unlink(path);
    rmdir(dir);
}

/* ---- linear_shared through the model ---------------------------------------------------- */

/* The tiny model's transformer as safetensors at path: block matrices e4m3
 * with a per-tensor `weight_scale` each (amax / 448 of that matrix: every
 * weight its own, so a GEMM reading another's scale shows), the rest F32. */
static int write_fp8_transformer(const char *path) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    if (qi_source_open_folder(TINY_DIT, QI_COMPONENT_TRANSFORMER, &src, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    int n = qi_source_tensor_count(src), k = 0, rc = 0;
    qi_st_write_item *items = calloc((size_t)(2 * n), sizeof *items);
    void **bufs = calloc((size_t)(2 * n), sizeof *bufs);
    char **names = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n && !rc && items && bufs && names; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        int64_t numel = 1;
        for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
        float *f = malloc(sizeof(float) * (size_t)numel);
        if (!f || qi_source_tensor_to_f32(&t, f, &err)) {
            free(f);
            rc = -1;
            break;
        }
        qi_st_write_item it = {t.name, QI_F32, t.ndim, {0}, f};
        for (int d = 0; d < t.ndim; d++) it.shape[d] = t.shape[d];
        bufs[k] = f;
        if (t.ndim == 2 && !strncmp(t.name, "transformer_blocks.", 19) && strstr(t.name, ".weight")) {
            float amax = 0;
            for (int64_t j = 0; j < numel; j++) amax = fabsf(f[j]) > amax ? fabsf(f[j]) : amax;
            float *sc = malloc(sizeof(float));
            uint8_t *q = malloc((size_t)numel);
            size_t len = strlen(t.name);
            names[i] = malloc(len + 8);
            if (!sc || !q || !names[i]) {
                free(sc), free(q);
                rc = -1;
                break;
            }
            *sc = amax > 0 ? amax / 448.0f : 1.0f;
            qi_quantize_f8e4m3(f, q, numel, *sc);
            free(f);
            it.dtype = QI_F8_E4M3, it.data = q, bufs[k] = q;
            snprintf(names[i], len + 8, "%.*s_scale", (int)len, t.name); /* <layer>.weight -> <layer>.weight_scale */
            items[k++] = it;
            items[k] = (qi_st_write_item){names[i], QI_F32, 1, {1}, sc};
            bufs[k++] = sc;
            continue;
        }
        items[k++] = it;
    }
    if (!items || !bufs || !names) rc = -1;
    if (!rc && qi_st_write(path, items, k, &err)) rc = -1;
    if (rc) fprintf(stderr, "writing %s: %s\n", path, err.msg);
    for (int i = 0; bufs && i < k; i++) free(bufs[i]);
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(items), free(bufs), free(names);
    qi_source_close(src);
    return rc;
}

/* The model with linear_shared and without it (the same backend, its op
 * table copied with the slot emptied: dit.c then runs the plain ops): the
 * same bits, eagerly (qi_dit_forward, the call object) and replayed. The
 * tiny model's D is 128: its attention LayerNorm is not one the register
 * kernel takes (test_cuda_backend_caps claims that one at D 512), its
 * MLP's add_gated LayerNorm is. */
static void fp8_linears_shared_change_no_bit_of_a_transformer_call(void) {
    if (strncmp(qi_cuda_fp8_gemm_state(gpu), "on", 2)) {
        printf("  (the fp8 GEMM is off here: %s)\n", qi_cuda_fp8_gemm_state(gpu));
        return;
    }
    char dir[] = "/tmp/qi_shared_XXXXXX", path[64];
    REQUIRE(mkdtemp(dir), "temporary folder");
    snprintf(path, sizeof path, "%s/transformer.safetensors", dir);
    REQUIRE(write_fp8_transformer(path) == 0, "cannot write the fp8 transformer");
    tiny_call t;
    REQUIRE(tiny_call_load(&t, path) == 0, "the fp8 transformer's call set-up");
    const qi_backend_ops *with = gpu->ops;
    qi_backend_ops plain = *with;
    plain.linear_shared = NULL;
    REQUIRE(with->linear_shared != NULL, "the CUDA backend has linear_shared");
    unsigned long long f[4], e[4];
    gpu->ops = &plain;
    qi_cuda_gemm_counts(gpu, &f[0], &e[0]);
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[0]);
    qi_cuda_gemm_counts(gpu, &f[1], &e[1]);
    call_eager_and_graph(t.d, &t.x, &t.ctx, &t.out, t.o[1], t.o[2], &(unsigned long long){0});
    gpu->ops = with;
    qi_cuda_gemm_counts(gpu, &f[2], &e[2]);
    forward(t.d, &t.x, &t.ctx, &t.out, t.o[3]);
    qi_cuda_gemm_counts(gpu, &f[3], &e[3]);
    call_eager_and_graph(t.d, &t.x, &t.ctx, &t.out, t.o[4], t.o[5], &(unsigned long long){0});
    int layers = qi_dit_get_config(t.d)->num_layers;
    unsigned long long runs = 12ull * (unsigned)layers - 3; /* the block linears (the last block's text MLP skipped) */
    printf("  tiny fp8 transformer at %dx%d patches: fp8 GEMMs per forward %llu without linear_shared, %llu with "
           "(block linears %llu)\n", GH, GW, f[1] - f[0], f[3] - f[2], runs);
    CHECK(f[1] - f[0] == f[3] - f[2] && f[3] - f[2] >= runs, "fp8 GEMMs: %llu plain, %llu shared, want >= %llu",
          f[1] - f[0], f[3] - f[2], runs);
    static const char *what[6] = {"forward, plain", "call, plain", "graph, plain", "forward, shared",
                                  "call, shared", "graph, shared"};
    for (int i = 0; i < 3; i++) { /* like with like: the call object's modulation may differ from forward's */
        size_t k = count_diff(t.o[i], t.o[i + 3], t.n_out), nz = 0;
        for (size_t j = 0; j < t.n_out; j++) nz += t.o[i + 3][j] != 0;
        CHECK(k == 0, "%s: %zu of %zu outputs differ from %s", what[i + 3], k, t.n_out, what[i]);
        CHECK(nz > t.n_out / 2, "%s: only %zu of %zu outputs nonzero", what[i + 3], nz, t.n_out);
    }
    tiny_call_free(&t);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    qi_error err = {{0}};
    setenv("QI_CUDA_KEPT_OVERLAP", "1", 1); /* off by default (cuda_backend.cu, overlap_init): these claims are its */
    qi_status made = qi_backend_cuda_create(0, (size_t)1 << 30, &gpu, &err);
    unsetenv("QI_CUDA_KEPT_OVERLAP");
    if (made != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    qi_cuda_set_kept_overlap(gpu, 1);
    if (!gpu->ops->prefetch_weight || !qi_cuda_set_kept_overlap(gpu, 1)) {
        fprintf(stderr, "the overlap cannot be turned on (QI_CUDA_KEPT_OVERLAP=0 in the environment?)\n");
        gpu->ops->destroy(gpu);
        return 1;
    }
    RUN(hints_right_wrong_or_unfollowed_change_no_bit);
    RUN(a_transformer_call_is_bit_identical_with_the_overlap_on_and_off);
    RUN(fp8_linears_shared_change_no_bit_of_a_transformer_call);
    RUN(block_gemm_through_a_transformer_call);
    gpu->ops->destroy(gpu);
    TEST_END();
}

/*
 * test_cuda_kernels.c — claims about the CUDA backend beyond "each op agrees
 * with the CPU under the default dispatch" (test_backend_ops -b cuda):
 *   - every attention kernel the dispatch can pick, forced in turn, on every
 *     attention case of backend_cases.h, against the CPU backend; the flash
 *     kernels give the same bits on a second run (no races);
 *   - every way a 3×3 convolution runs (implicit GEMM with 2 and 4 rows a
 *     block and with resident weights, im2col + cuBLASLt, auto with the
 *     direct kernel for <= 4 outputs), forced in turn, on every conv2d /
 *     conv2d_fused case, against the CPU; a weight's kept layout follows the weight;
 *   - a DiT-like block recorded as a CUDA graph replays bit-identically to
 *     the eager run, and reads its inputs' current contents;
 *   - a misuse is reported by the next sync with a message, not a crash;
 *   - the kernel family follows the device and the code the driver loaded
 *     (Hopper kernels only for sm_90a code on a 9.x device), and
 *     QI_CUDA_GENERIC=1 forces the generic ones (ctest
 *     test_cuda_kernels_generic runs every claim above that way: the Hopper
 *     kernel names then fall back to the mma.sync kernel).
 * One line per case × kernel. Needs a GPU: label cuda.
 *
 * Env: QI_TEST_SEED (default 1), QI_TEST_WGMMA=0 leaves the Hopper kernels
 * out (another GPU), QI_TEST_ONLY=attention|conv|graph runs one part,
 * QI_TEST_CODE_ARCH=800 claims the loaded code is sm_80's (the compute_80
 * PTX build, JIT-compiled by the driver), QI_CUDA_GENERIC=1 (the backend's).
 * Kernel variants the dispatch never picks live in dev/cuda/ (NOTES.md).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_backend.h"
#include "backend_cases.h"
#include "io/image.h"

static qi_backend *cpu, *gpu;
static qi_error err;
static uint64_t seed = 1;

/* Attention kernels for a head dim: the flash kernels that take it, then GEMMs. */
static const char *const kernels_hopper[] = {"mma", "wgmma64x3", "tma64x2", "tma64x3", "gemm"};
static const char *const kernels_portable[] = {"mma", "gemm"};
static const char *const kernels_other[] = {"gemm"};
static int use_wgmma = 1; /* QI_TEST_WGMMA=0: Dh 128 takes kernels_portable */

/* out against cpu_out for every output of the case (tolerances as
 * test_backend_ops, for the conv path bc_conv_mode names); the worst error
 * over its tolerance, written as "vs cpu e (tol t)" into text. */
static int vs_cpu(const bc_inst *in, float **out, float **cpu_out, char *text, size_t cap) {
    int ok = 1;
    size_t len = 0;
    text[0] = 0;
    for (int i = 0; i < BC_MAX_T; i++) {
        const bc_host *h = &in->t[i];
        if (!h->out) continue;
        bc_tols tol = in->c->op->tols;
        if (in->c->op->adjust) in->c->op->adjust(in, i, &tol);
        double e = bc_err(out[i], NULL, cpu_out[i], h->n, in->c->op->row_metric ? h->ne[h->ndim - 1] : 0);
        int n = snprintf(text + len, cap - len, "[t%d] vs cpu %.2e (tol %.1e)  ", i, e, tol.dev);
        if (n > 0 && (size_t)n < cap - len) len += (size_t)n;
        if (!(e <= tol.dev)) ok = 0;
    }
    return ok;
}

/* One case under one forced kernel: against the CPU, and (rerun) the same bits again. */
static void one_variant(const bc_inst *in, float **cpu_out, const char *name, const char *kernel, int rerun) {
    float *out[BC_MAX_T], *again[BC_MAX_T];
    char text[512] = "";
    int before = qi_test_failed_checks;
    qi_status st = bc_run(gpu, in, 0, out, &err);
    CHECK(st == QI_OK, "%s [%s]: the op failed: %s", name, kernel, err.msg);
    if (st == QI_OK) {
        int ok = vs_cpu(in, out, cpu_out, text, sizeof text);
        CHECK(ok, "%s [%s]: %s", name, kernel, text);
        if (rerun && (st = bc_run(gpu, in, 0, again, &err)) == QI_OK) {
            int64_t differ = 0;
            for (int i = 0; i < BC_MAX_T; i++)
                for (int64_t k = 0; out[i] && k < in->t[i].n; k++) differ += qi_f32_bits(out[i][k]) != qi_f32_bits(again[i][k]);
            strncat(text, differ ? "second run DIFFERS" : "second run bit-identical", sizeof text - strlen(text) - 1);
            CHECK(differ == 0, "%s [%s]: %lld elements differ between two runs (a race?)", name, kernel,
                  (long long)differ);
            bc_outs_free(again);
        }
        CHECK(st == QI_OK, "%s [%s]: the second run failed: %s", name, kernel, err.msg);
        bc_outs_free(out);
    }
    int ok = qi_test_failed_checks == before;
    ok ? qi_test_passed++ : qi_test_failed++;
    printf("%-4s %-62s [%-9s] %s\n", ok ? "ok" : "FAIL", name, kernel, text);
    fflush(stdout);
}

/* Every case of `op`, built once, its CPU result once, then each kernel. */
static void each_case(const bc_op *op, void (*per_case)(const bc_inst *, float **, const char *)) {
    for (int k = 0; k < BC_N_CASES; k++) {
        if (bc_cases[k].op != op) continue;
        char name[256];
        bc_case_name(&bc_cases[k], name, sizeof name);
        bc_inst in;
        bc_inst_build(&bc_cases[k], seed * 0x9e3779b97f4a7c15ull + (uint64_t)k, &in);
        float *cpu_out[BC_MAX_T];
        qi_status st = bc_run(cpu, &in, 0, cpu_out, &err);
        CHECK(st == QI_OK, "%s: the CPU reference failed: %s", name, err.msg);
        if (st == QI_OK) per_case(&in, cpu_out, name);
        bc_outs_free(cpu_out);
        bc_inst_free(&in);
    }
}

static void attention_kernels(const bc_inst *in, float **cpu_out, const char *name) {
    /* attention_segments runs flash_k or GEMMs whatever is forced: its head dim is p[4] */
    const int segments = in->c->op == &op_attention_segments;
    const int64_t Dh = in->c->p[segments ? 4 : 5];
    const char *const *list = kernels_other;
    int n = 1;
    if (Dh == 128 && use_wgmma && !segments) list = kernels_hopper, n = (int)QI_ARRAY_LEN(kernels_hopper);
    else if (Dh == 16 || Dh == 32 || Dh == 64 || Dh == 80 || Dh == 128) list = kernels_portable, n = 2;
    for (int i = 0; i < n; i++) {
        CHECK(qi_cuda_set_attention_kernel(gpu, list[i]) == 0, "unknown attention kernel %s", list[i]);
        one_variant(in, cpu_out, name, list[i], strcmp(list[i], "gemm") != 0);
    }
    qi_cuda_set_attention_kernel(gpu, use_wgmma ? "auto" : "mma");
}

/* Each conv path: the implicit GEMM with 2 and 4 output rows per block and
 * with its weights resident (where they fit; else as "implicit"), im2col,
 * and auto (whose convs with <= 4 outputs take the direct kernel). */
static void conv_paths(const bc_inst *in, float **cpu_out, const char *name) {
    static const char *const modes[3] = {"auto", "implicit", "im2col"}; /* bc_conv_mode order */
    static const struct { int mode, rows, resident; const char *label; } paths[] = {
        {1, 2, 0, "implicit"}, {1, 4, 0, "implicit4"}, {1, 2, 1, "resident"}, {2, 2, 0, "im2col"},
        {0, 2, 0, "auto"}};
    for (size_t i = 0; i < QI_ARRAY_LEN(paths); i++) {
        CHECK(qi_cuda_set_conv_kernel(gpu, modes[paths[i].mode]) == 0, "unknown conv mode %s", modes[paths[i].mode]);
        CHECK(qi_cuda_set_conv_variant(gpu, paths[i].rows, 1, paths[i].resident) == 0, "conv rows %d refused",
              paths[i].rows);
        bc_conv_mode = paths[i].mode;
        one_variant(in, cpu_out, name, paths[i].label, paths[i].resident); /* resident: rerun, same bits */
    }
    qi_cuda_set_conv_kernel(gpu, "auto");
    qi_cuda_set_conv_variant(gpu, 2, 1, 0);
    bc_conv_mode = 0;
}

/* A conv weight's kept layout (made by its first conv) serves its later
 * convs bit for bit, and goes with the weight: a weight made after it was
 * freed (often at the same address) is read afresh. Each round against the
 * CPU backend: a stale layout would be another random weight (error ~1.4). */
static void conv_layout_follows_its_weight(void) {
    size_t mk = gpu->ops->mark(gpu);
    const int64_t Ci = 96, H = 20, W = 70, Co = 96, n = Co * H * W;
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 3, 3}, ys[3] = {Co, H, W};
    qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), y, xc, wc, yc;
    bc_must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y", &err);
    float *xh = malloc((size_t)(Ci * H * W) * sizeof(float)), *first = malloc((size_t)n * sizeof(float));
    float *again = malloc((size_t)n * sizeof(float)), *ref = malloc((size_t)n * sizeof(float));
    REQUIRE(xh && first && again && ref, "alloc");
    bc_must(gpu->ops->download(gpu, &x, xh, &err), "download x", &err);
    size_t cmk = cpu->ops->mark(cpu);
    bc_must(cpu->ops->tensor(cpu, &xc, cpu->act_dtype, 3, xs, &err), "cpu x", &err);
    bc_must(cpu->ops->tensor(cpu, &yc, cpu->act_dtype, 3, ys, &err), "cpu y", &err);
    bc_must(cpu->ops->upload(cpu, &xc, xh, &err), "cpu x", &err);
    for (int round = 0; round < 3; round++) {
        uint16_t *hw;
        qi_tensor w = bc_dev_weight(gpu, 4, ws, 0.034f, &hw);
        gpu->ops->conv2d(gpu, &x, &w, NULL, 1, &y);
        bc_must(gpu->ops->download(gpu, &y, first, &err), "download", &err);
        gpu->ops->conv2d(gpu, &x, &w, NULL, 1, &y);
        bc_must(gpu->ops->download(gpu, &y, again, &err), "download", &err);
        bc_must(cpu->ops->weight(cpu, &wc, QI_BF16, 4, ws, hw, NULL, &err), "cpu w", &err);
        cpu->ops->conv2d(cpu, &xc, &wc, NULL, 1, &yc);
        bc_must(cpu->ops->download(cpu, &yc, ref, &err), "cpu y", &err);
        double e = bc_err(first, NULL, ref, n, 0);
        printf("  round %d: vs cpu %.2e (tol %.1e), second conv %s\n", round, e, BC_TOL_GEMM,
               memcmp(first, again, (size_t)n * sizeof(float)) ? "DIFFERS" : "bit-identical");
        CHECK(e <= BC_TOL_GEMM, "round %d: the conv does not follow its weight (vs cpu %.2e)", round, e);
        CHECK(memcmp(first, again, (size_t)n * sizeof(float)) == 0, "round %d: the second conv differs", round);
        cpu->ops->weight_free(cpu, &wc);
        gpu->ops->weight_free(gpu, &w);
        free(hw);
    }
    cpu->ops->reset(cpu, cmk);
    free(xh), free(first), free(again), free(ref);
    gpu->ops->reset(gpu, mk);
}

/* ---- a CUDA graph of a block fragment ------------------------------------------------ */

/* One DiT-like block fragment, run eagerly and as a replayed CUDA graph. */
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

static void frag_make(frag *f, uint16_t **hw, float *tab) {
    int64_t xs[3] = {1, 256, 256}, ms[2] = {1, 6 * 256}, ws[2] = {256, 256}, bs[1] = {256}, ts[2] = {256, 64};
    int64_t mks[2] = {1, 256};
    f->x = bc_dev_rand(gpu, 3, xs, 1.0f);
    f->mod = bc_dev_rand(gpu, 2, ms, 0.5f);
    f->shift = bc_mod_chunk(&f->mod, 1, 256, 0), f->scale = bc_mod_chunk(&f->mod, 1, 256, 1);
    f->gate = bc_mod_chunk(&f->mod, 1, 256, 2);
    qi_tensor *outs[7] = {&f->xres, &f->h, &f->q, &f->k, &f->v, &f->o, &f->y};
    for (int i = 0; i < 7; i++) bc_must(gpu->ops->tensor(gpu, outs[i], QI_BF16, 3, xs, &err), "frag tensor", &err);
    f->wq = bc_dev_weight(gpu, 2, ws, 0.06f, &hw[0]), f->wk = bc_dev_weight(gpu, 2, ws, 0.06f, &hw[1]);
    f->wv = bc_dev_weight(gpu, 2, ws, 0.06f, &hw[2]), f->wo = bc_dev_weight(gpu, 2, ws, 0.06f, &hw[3]);
    f->bo = bc_dev_weight(gpu, 1, bs, 0.1f, &hw[4]);
    for (int i = 0; i < 256 * 64; i++) tab[i] = bc_frand();
    bc_must(gpu->ops->tensor(gpu, &f->ct, QI_F32, 2, ts, &err), "cos", &err);
    bc_must(gpu->ops->tensor(gpu, &f->st, QI_F32, 2, ts, &err), "sin", &err);
    bc_must(gpu->ops->upload(gpu, &f->ct, tab, &err), "cos", &err);
    bc_must(gpu->ops->upload(gpu, &f->st, tab, &err), "sin", &err);
    int32_t mh[256];
    for (int i = 0; i < 256; i++) mh[i] = i < 20 || i >= 40;
    bc_must(gpu->ops->tensor(gpu, &f->mask, QI_I32, 2, mks, &err), "mask", &err);
    bc_must(gpu->ops->upload(gpu, &f->mask, mh, &err), "mask", &err);
}

/* Replays the graph into f->xres (poisoned first) and downloads it. */
static void frag_replay(frag *f, qi_cuda_graph *graph, float *out) {
    bc_dev_poison(gpu, &f->xres);
    bc_dev_poison(gpu, &f->o);
    bc_must(qi_cuda_graph_launch(gpu, graph, &err), "graph launch", &err);
    bc_must(gpu->ops->sync(gpu, &err), "replay", &err);
    bc_must(gpu->ops->download(gpu, &f->xres, out, &err), "download", &err);
}

static void frag_eager(frag *f, float *out) {
    frag_run(f);
    bc_must(gpu->ops->sync(gpu, &err), "eager", &err);
    bc_must(gpu->ops->download(gpu, &f->xres, out, &err), "download", &err);
}

/* The replay gives the eager run's bits, and reads the inputs' current contents. */
static void graph_replay_is_bit_identical_and_reads_current_inputs(void) {
    size_t mk = gpu->ops->mark(gpu);
    frag f;
    uint16_t *hw[5];
    float *tab = malloc(256 * 64 * sizeof(float));
    frag_make(&f, hw, tab);
    const int64_t n = 256 * 256;
    float *eager = malloc((size_t)n * sizeof(float)), *replay = malloc((size_t)n * sizeof(float));
    frag_eager(&f, eager);
    qi_cuda_graph *graph = NULL;
    bc_must(qi_cuda_capture_begin(gpu, &err), "capture begin", &err);
    frag_run(&f);
    qi_status st = qi_cuda_capture_end(gpu, &graph, &err);
    CHECK(st == QI_OK, "capture: %s", err.msg);
    if (st == QI_OK) {
        frag_replay(&f, graph, replay);
        CHECK(memcmp(eager, replay, (size_t)n * sizeof(float)) == 0, "graph replay differs from eager run");
        float *h = malloc((size_t)n * sizeof(float)); /* new input contents: the replay must see them */
        for (int64_t i = 0; i < n; i++) h[i] = bc_frand();
        bc_must(gpu->ops->upload(gpu, &f.x, h, &err), "upload", &err);
        frag_eager(&f, eager);
        frag_replay(&f, graph, replay);
        CHECK(memcmp(eager, replay, (size_t)n * sizeof(float)) == 0, "replay on new inputs differs");
        int64_t nans = 0;
        for (int64_t i = 0; i < n; i++) nans += eager[i] != eager[i];
        CHECK(nans == 0, "%lld NaN in the block output", (long long)nans);
        printf("  graph of 13 ops (ln, 4 linear, norm, 2 rope, attention, gated add): replay bit-identical\n");
        free(h);
        qi_cuda_graph_free(graph);
    }
    qi_tensor *ws[5] = {&f.wq, &f.wk, &f.wv, &f.wo, &f.bo};
    for (int i = 0; i < 5; i++) gpu->ops->weight_free(gpu, ws[i]), free(hw[i]);
    free(tab);
    free(eager);
    free(replay);
    gpu->ops->reset(gpu, mk);
}

/* A misuse is reported by the next sync with a message, not a crash. */
static void errors_reach_sync(void) {
    size_t mk = gpu->ops->mark(gpu);
    qi_tensor x, w, y;
    int64_t xs[2] = {4, 8}, ws[2] = {6, 9}, ys[2] = {4, 6};
    bc_must(gpu->ops->tensor(gpu, &x, QI_BF16, 2, xs, &err), "t", &err);
    bc_must(gpu->ops->tensor(gpu, &w, QI_BF16, 2, ws, &err), "t", &err);
    bc_must(gpu->ops->tensor(gpu, &y, QI_BF16, 2, ys, &err), "t", &err);
    gpu->ops->linear(gpu, &x, &w, NULL, QI_ACT_NONE, &y);
    qi_status st = gpu->ops->sync(gpu, &err);
    printf("  mismatched linear -> status %d: %s\n", (int)st, err.msg);
    CHECK(st == QI_ERR_ARG, "expected QI_ERR_ARG, got %d", (int)st);
    CHECK(gpu->ops->sync(gpu, &err) == QI_OK, "the error is cleared once reported");
    int64_t huge[1] = {(int64_t)1 << 45};
    qi_tensor t;
    CHECK(gpu->ops->tensor(gpu, &t, QI_BF16, 1, huge, &err) == QI_ERR_NOMEM, "an oversized tensor is refused");
    gpu->ops->reset(gpu, mk);
}

/* count_nonfinite counts exactly the NaN/±Inf elements of bf16 and f32
 * tensors (several blocks' worth, so the warp sums and atomics all take part). */
static void count_nonfinite_counts_exactly(void) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t n = 100003;
    float *h = malloc(sizeof(float) * (size_t)n);
    REQUIRE(h, "alloc");
    int64_t want = 0;
    for (int64_t i = 0; i < n; i++) {
        h[i] = (float)(i % 97) - 48.0f;
        if (i % 1009 == 3) h[i] = NAN, want++;
        else if (i % 2003 == 7) h[i] = i % 2 ? INFINITY : -INFINITY, want++;
    }
    qi_dtype types[2] = {QI_BF16, QI_F32};
    for (int k = 0; k < 2; k++) {
        qi_tensor t;
        bc_must(gpu->ops->tensor(gpu, &t, types[k], 1, &n, &err), "t", &err);
        bc_must(gpu->ops->upload(gpu, &t, h, &err), "upload", &err);
        int64_t got = -1;
        CHECK(gpu->ops->count_nonfinite && gpu->ops->count_nonfinite(gpu, &t, &got, &err) == QI_OK && got == want,
              "%s: counted %lld of %lld", qi_dtype_name(types[k]), (long long)got, (long long)want);
    }
    free(h);
    gpu->ops->reset(gpu, mk);
}

/* download_rgb8 gives, byte for byte, io/image.c's qi_rgb_to_u8 of the
 * tensor's values (read back as floats), and counts its NaN/±Inf exactly:
 * values at the rounding ties (x·0.5 + 0.5 = (k + 0.5)/255, rounded half to
 * even), just past ±1, ±Inf, NaN, and a spread in between; an odd-sized
 * picture (no 4-byte multiple) and one larger than the staging buffer. */
static void download_rgb8_is_the_host_conversion(void) {
    REQUIRE(gpu->ops->download_rgb8, "the CUDA backend has download_rgb8");
    const int64_t sizes[2][2] = {{7, 13}, {2400, 9600}}; /* H, W; 3·H·W > the 64 MiB staging buffer */
    qi_dtype types[2] = {QI_BF16, QI_F32};
    for (int si = 0; si < 2; si++)
        for (int k = 0; k < 2; k++) {
            size_t mk = gpu->ops->mark(gpu);
            int64_t H = sizes[si][0], W = sizes[si][1], n = 3 * H * W;
            float *h = malloc(sizeof(float) * (size_t)n), *back = malloc(sizeof(float) * (size_t)n);
            uint8_t *want = malloc((size_t)n), *got = malloc((size_t)n);
            REQUIRE(h && back && want && got, "alloc");
            for (int64_t i = 0; i < n; i++) {
                int64_t r = i % 613;
                if (r < 256) h[i] = (((float)r + 0.5f) / 255.0f - 0.5f) * 2.0f; /* near the ties */
                else if (r < 512) h[i] = ((float)(r - 256) / 255.0f - 0.5f) * 2.0f;
                else h[i] = (float)(r - 562) / 40.0f; /* [-1.25, 1.25] */
                if (i % 997 == 5) h[i] = NAN;
                else if (i % 1999 == 11) h[i] = i % 2 ? INFINITY : -INFINITY;
            }
            qi_tensor t;
            int64_t ne[3] = {3, H, W};
            bc_must(gpu->ops->tensor(gpu, &t, types[k], 3, ne, &err), "t", &err);
            bc_must(gpu->ops->upload(gpu, &t, h, &err), "upload", &err);
            bc_must(gpu->ops->download(gpu, &t, back, &err), "download", &err); /* the stored values */
            int64_t want_bad = 0;
            for (int64_t i = 0; i < n; i++) want_bad += !isfinite(back[i]);
            qi_rgb_to_u8(back, (int)H, (int)W, want);
            int64_t bad = -1;
            memset(got, 0xAB, (size_t)n);
            qi_status st = gpu->ops->download_rgb8(gpu, &t, got, &bad, &err);
            CHECK(st == QI_OK, "%s", err.msg);
            int64_t differ = 0, first = -1;
            for (int64_t i = 0; i < n; i++)
                if (got[i] != want[i]) differ++, first = first < 0 ? i : first;
            printf("  %s [3, %lld, %lld]: %lld of %lld bytes differ, %lld of %lld non-finite counted\n",
                   qi_dtype_name(types[k]), (long long)H, (long long)W, (long long)differ, (long long)n,
                   (long long)bad, (long long)want_bad);
            double v = first >= 0 ? back[first % 3 * H * W + first / 3] : 0.0; /* byte i: pixel i/3, channel i%3 */
            CHECK(differ == 0, "%s: %lld bytes differ, the first at %lld (value %.9g: %u, want %u)",
                  qi_dtype_name(types[k]), (long long)differ, (long long)first, v, first >= 0 ? got[first] : 0,
                  first >= 0 ? want[first] : 0);
            CHECK(bad == want_bad && want_bad > 0, "%s: counted %lld non-finite of %lld", qi_dtype_name(types[k]),
                  (long long)bad, (long long)want_bad);
            free(h);
            free(back);
            free(want);
            free(got);
            gpu->ops->reset(gpu, mk);
        }
}

/* Hopper kernels exactly when the device is 9.x, its code sm_90a's (the
 * probe reads 900 there; a compute_80 PTX build reads 800 on the same GPU)
 * and QI_CUDA_GENERIC=1 is not set. */
static void kernel_family_follows_device_and_switch(void) {
    const char *fam = qi_cuda_kernel_family(gpu), *g = getenv("QI_CUDA_GENERIC"), *want_arch = getenv("QI_TEST_CODE_ARCH");
    const int cc = qi_cuda_device_cc(gpu), arch = qi_cuda_code_arch(gpu), forced = g && g[0] == '1';
    printf("device compute capability %d.%d, code sm_%d, kernels %s%s\n", cc / 10, cc % 10, arch / 10, fam,
           forced ? " (QI_CUDA_GENERIC=1)" : "");
    CHECK(arch >= 800 && arch <= cc * 10, "the loaded code's architecture %d is not in [800, %d]", arch, cc * 10);
    const char *want = cc / 10 == 9 && arch == 900 && !forced ? "hopper" : "generic";
    CHECK(strcmp(fam, want) == 0, "kernel family %s, expected %s (cc %d, code %d, generic forced %d)", fam, want, cc,
          arch, forced);
    if (want_arch) CHECK(arch == atoi(want_arch), "the loaded code is sm_%d, QI_TEST_CODE_ARCH says %s", arch / 10, want_arch);
}

int main(void) {
    const char *s = getenv("QI_TEST_SEED"), *w = getenv("QI_TEST_WGMMA"), *only = getenv("QI_TEST_ONLY");
    if (s) seed = strtoull(s, NULL, 10);
    printf("seed %llu (QI_TEST_SEED to change)\n", (unsigned long long)seed);
    if (qi_backend_cuda_create(0, (size_t)12 << 30, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    bc_must(qi_backend_cpu_create(0, 0, &cpu, &err), "cpu backend", &err);
    if (w && strcmp(w, "0") == 0) {
        use_wgmma = 0;
        qi_cuda_set_attention_kernel(gpu, "mma");
    }
    RUN(kernel_family_follows_device_and_switch);
    if (!only || strcmp(only, "graph") == 0) {
        RUN(errors_reach_sync);
        RUN(count_nonfinite_counts_exactly);
        RUN(download_rgb8_is_the_host_conversion);
        RUN(graph_replay_is_bit_identical_and_reads_current_inputs);
    }
    if (!only || strcmp(only, "attention") == 0) {
        each_case(&op_attention, attention_kernels);
        each_case(&op_attention_segments, attention_kernels);
    }
    if (!only || strcmp(only, "conv") == 0) {
        RUN(conv_layout_follows_its_weight);
        each_case(&op_conv2d, conv_paths);
        each_case(&op_conv2d_fused, conv_paths);
    }
    cpu->ops->destroy(cpu);
    gpu->ops->destroy(gpu);
    TEST_END();
}

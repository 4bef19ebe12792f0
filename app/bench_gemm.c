/*
 * bench_gemm.c — `bench --only gemm`: a linear of a GGUF-block weight through
 * the block GEMM (the GEMM reads the blocks: cuda_block_gemm.cu) against the
 * weight expanded to bf16 first and cuBLASLt (cuda_kept.cu), at the
 * transformer's three weight shapes and the text encoder's four, and the row
 * counts the models run: 1 and 8 (modulation batches), 128 (the text
 * stream), 167 (a prompt in the text encoder), 512, and for the transformer
 * 1024 and 4096 (the 1024² image stream). The crossover these
 * rows show is what QI_CUDA_BLOCK_GEMM_ROWS should be set to.
 *
 * The expansion here is never prefetched (no model names the next linear),
 * so its row is the cost a linear pays when its expansion is not hidden
 * behind an earlier GEMM — the case the block GEMM is for.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "backend/backend.h"
#include "base/base.h"
#include "base/types.h"
#ifdef QI_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

#define CALLS_PER_SAMPLE 10 /* back-to-back linears per timed sample: launch gaps amortised, as in a model */

#ifdef QI_WITH_CUDA
/* Median ms of one linear(x, w) with the block GEMM taking up to `limit` rows. */
static int time_linear(qi_backend *be, const qi_tensor *x, const qi_tensor *w, qi_tensor *y, int64_t limit, int warmup,
                       int runs, double *ms, qi_error *err) {
    double times[64];
    int64_t was = qi_cuda_set_block_gemm_rows(be, limit);
    int rc = 0;
    for (int i = 0; i < warmup + runs && !rc; i++) {
        double t0 = qi_now_s();
        for (int k = 0; k < CALLS_PER_SAMPLE; k++) be->ops->linear(be, x, w, NULL, QI_ACT_NONE, y);
        if (be->ops->sync(be, err) != QI_OK) rc = -1;
        if (i >= warmup) times[i - warmup] = (qi_now_s() - t0) / CALLS_PER_SAMPLE;
    }
    qi_cuda_set_block_gemm_rows(be, was);
    if (!rc) *ms = qi_bench_median(times, runs) * 1e3;
    return rc;
}

/* A [n_out, k] weight of type qt: seeded random block bytes with small f16
 * scale fields (quantising 200 M floats on the host would take a minute;
 * the GEMMs' time does not depend on the values). A backend making random
 * weights for benchmarks ignores the bytes anyway. */
static int block_weight(qi_backend *be, qi_dtype qt, int64_t n_out, int64_t k, unsigned seed, qi_tensor *w,
                        qi_error *err) {
    const qi_dtype_traits *tt = qi_type_traits(qt);
    const int64_t blocks = n_out * k / tt->block_elems;
    uint8_t *q = malloc((size_t)blocks * tt->block_bytes);
    if (!q)
        return qi_fail(err, QI_ERR_NOMEM, "bench gemm: no host memory for a %lld × %lld weight", (long long)n_out,
                       (long long)k),
               -1;
    uint32_t s = seed;
    for (size_t i = 0; i < (size_t)blocks * tt->block_bytes; i++) {
        s = s * 1664525u + 1013904223u;
        q[i] = (uint8_t)(s >> 24);
    }
    for (int64_t b = 0; b < blocks; b++)
        for (int f = 0; f < 2 && tt->f16_field[f] >= 0; f++) {
            uint16_t h = qi_f32_to_f16(0.001f * (float)(1 + b % 7));
            memcpy(q + b * (int64_t)tt->block_bytes + tt->f16_field[f], &h, 2);
        }
    int64_t ne[2] = {n_out, k};
    int rc = be->ops->weight(be, w, qt, 2, ne, q, NULL, err) == QI_OK ? 0 : -1;
    free(q);
    return rc;
}

static int block_gemm_rows(qi_backend *be, qi_dtype qt, int warmup, int runs, FILE *md, qi_error *err) {
    if (strcmp(be->ops->name, "cuda") != 0 || !qi_dtype_is_block(qt)) {
        qi_bench_row(md, "| block GEMM | | | not timed: needs --device cuda and a GGUF --type (q4_k, q8_0, …) |\n");
        return 0;
    }
    /* K, N: the transformer's q/k/v/out, MLP up, MLP down; the text encoder's q/o, k/v, MLP gate/up, down */
    static const int64_t shapes[][2] = {{3072, 3072}, {3072, 12288}, {12288, 3072},
                                        {3584, 3584}, {3584, 512},   {3584, 18944}, {18944, 3584}};
    static const int64_t rows[] = {1, 8, 128, 167, 512, 1024, 4096};
    const int64_t max_rows = rows[sizeof rows / sizeof rows[0] - 1];
    int rc = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0] && !rc; s++) {
        const int64_t K = shapes[s][0], N = shapes[s][1], last_row = s < 3 ? max_rows : 512; /* a prompt: ≤ 512 */
        qi_tensor w = {0};
        float *xh = malloc(sizeof(float) * (size_t)(max_rows * K));
        if (!xh) return qi_fail(err, QI_ERR_NOMEM, "bench gemm: no host memory for x"), -1;
        for (int64_t i = 0; i < max_rows * K; i++) xh[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
        rc = block_weight(be, qt, N, K, 7u + (unsigned)s, &w, err);
        for (size_t r = 0; r < sizeof rows / sizeof rows[0] && !rc && rows[r] <= last_row; r++) {
            const int64_t M = rows[r];
            double ms_expand = 0, ms_block = 0;
            unsigned long long before = qi_cuda_block_gemm_calls(be);
            size_t mark = be->ops->mark(be);
            qi_tensor x, y;
            rc = qi_be_act2(be, &x, M, K, err) || qi_be_act2(be, &y, M, N, err) || be->ops->upload(be, &x, xh, err) ||
                 time_linear(be, &x, &w, &y, 0, warmup, runs, &ms_expand, err) ||
                 time_linear(be, &x, &w, &y, M, warmup, runs, &ms_block, err);
            be->ops->reset(be, mark);
            if (rc) break;
            int took = qi_cuda_block_gemm_calls(be) > before;
            double gflop = 2.0 * (double)M * (double)N * (double)K / 1e9;
            qi_bench_row(md, "| block GEMM, %s | %lld×%lld×%lld (M×K×N) | %.1f µs | expanded + cuBLASLt %.1f µs: %.2f× "
                "(%.1f / %.1f TFLOP/s)%s |\n", qi_dtype_name(qt), (long long)M, (long long)K, (long long)N,
                ms_block * 1e3, ms_expand * 1e3, ms_expand / ms_block, gflop / ms_block, gflop / ms_expand,
                took ? "" : "; the block GEMM declined this shape");
        }
        if (w.data) be->ops->weight_free(be, &w);
        free(xh);
    }
    return rc;
}
#endif

int qi_bench_block_gemm(qi_backend *be, int qt, int warmup, int runs, FILE *md, char *err, size_t err_size) {
#ifdef QI_WITH_CUDA
    qi_error e = {{0}};
    int rc = block_gemm_rows(be, (qi_dtype)qt, warmup, runs, md, &e);
    if (rc) snprintf(err, err_size, "%s", e.msg);
    return rc;
#else
    (void)be, (void)qt, (void)warmup, (void)runs, (void)err, (void)err_size;
    qi_bench_row(md, "| block GEMM | | | not timed: a build without CUDA |\n");
    return 0;
#endif
}

/*
 * dev/lora/bench.c — one transformer call timed with a LoRA fused into float32
 * copies of the weights against the same LoRA run beside the stored weights
 * (qi_lora_mode), on one backend: the measurement behind auto mode's choice
 * (dev/lora/RESULTS.md). Not built by default: `cmake --build B --target
 * lora_bench`, then
 *
 *     lora_bench TRANSFORMER LORA [device] [image tokens] [calls] [threads]
 *
 * Prints, per mode, the fastest of `calls` calls (after one warm-up) and the
 * weights' bytes on the backend side of the file.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"

static qi_status fill(qi_backend *be, qi_tensor *t, int ndim, const int64_t *ne, float amp, unsigned *seed,
                      qi_error *err) {
    qi_status st = qi_be_act(be, t, ndim, ne, err);
    if (st) return st;
    int64_t n = qi_numel(t);
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) return qi_fail(err, QI_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) h[i] = amp * ((float)rand_r(seed) / RAND_MAX - 0.5f);
    st = be->ops->upload(be, t, h, err);
    free(h);
    return st;
}

/* The fastest of `calls` forwards of d on random inputs of L image tokens. */
static qi_status time_calls(qi_dit *d, qi_backend *be, int L, int calls, double *best, qi_error *err) {
    const qi_dit_config *c = qi_dit_get_config(d);
    int side = 1;
    while (side * side < L) side++;
    unsigned seed = 7;
    qi_tensor x, ctx, out;
    int64_t xs[3] = {1, (int64_t)side * side, c->in_channels}, cs[3] = {1, 32, c->joint_dim};
    int64_t os[3] = {1, (int64_t)side * side, (int64_t)c->out_channels * c->patch_size * c->patch_size};
    size_t mark = be->ops->mark(be);
    qi_status st = fill(be, &x, 3, xs, 2, &seed, err);
    if (!st) st = fill(be, &ctx, 3, cs, 2, &seed, err);
    if (!st) st = qi_be_act(be, &out, 3, os, err);
    float t = 0.5f;
    *best = DBL_MAX;
    for (int i = 0; !st && i <= calls; i++) {
        double t0 = qi_now_s();
        st = qi_dit_forward(d, &x, &ctx, NULL, &t, side, side, &out, err);
        if (!st) st = be->ops->sync(be, err);
        double dt = qi_now_s() - t0;
        if (i > 0 && dt < *best) *best = dt; /* call 0 warms up */
    }
    be->ops->reset(be, mark);
    return st;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TRANSFORMER LORA [device] [image tokens] [calls] [threads]\n", argv[0]);
        return 2;
    }
    const char *device = argc > 3 ? argv[3] : "cpu";
    int L = argc > 4 ? atoi(argv[4]) : 1024, calls = argc > 5 ? atoi(argv[5]) : 5;
    int threads = argc > 6 ? atoi(argv[6]) : 0;
    qi_error err = {{0}};
    qi_source *src = NULL;
    qi_backend *be = NULL;
    qi_lora_set *set = NULL;
    qi_status st = qi_source_open(argv[1], QI_COMPONENT_TRANSFORMER, &src, &err);
    if (!st) st = qi_backend_create(device, threads, 0, &be, &err);
    if (!st) st = qi_lora_set_add(&set, argv[2], 1.0f, &err);
    static const char *const names[] = {"none", "fuse", "runtime"};
    for (int m = 0; !st && m < 3; m++) {
        qi_dit *d = NULL;
        double t0 = qi_now_s(), best = 0;
        st = qi_dit_load_mode(src, be, m ? set : NULL, m == 1 ? QI_LORA_FUSE : QI_LORA_RUNTIME, &d, &err);
        double load = qi_now_s() - t0;
        if (!st) st = time_calls(d, be, L, calls, &best, &err);
        if (!st)
            printf("%-8s %s, %d image tokens: %.2f ms per call (best of %d), load %.2f s, %d fused, %d runtime "
                   "modules\n", names[m], device, L, best * 1e3, calls, load, qi_dit_lora_fused(d),
                   qi_dit_lora_terms(d));
        qi_dit_free(d);
    }
    if (st) fprintf(stderr, "lora_bench: %s\n", err.msg);
    qi_lora_set_free(set);
    if (be) be->ops->destroy(be);
    qi_source_close(src);
    return st ? 1 : 0;
}

/*
 * edit_denoise.c — the Edit denoising loop (see edit_denoise.h). Reference
 * read: diffusers QwenImageEditPlusPipeline.__call__ (the loop, true CFG
 * with norm rescale, noise_pred[:, :L]).
 *
 * The step's device work (the transformer call or two, the CFG combine) is
 * recorded once and replayed, as denoise.c does for text-to-image: the
 * calls' buffers are persistent and their activations start at the same
 * arena mark every step, the timestep is uploaded into the call's fixed
 * sinusoid buffer before the replay, the output rows of x are copied in
 * before it. Step 0 runs eagerly (GEMM plans and kernel set-up happen
 * outside the recording), step 1 records, later steps replay. Eager when the
 * backend records no graphs, the transformer streams weights (copies on a
 * second queue), a per-call hook downloads between the calls, there are too
 * few steps to pay for the recording (QI_EDIT_GRAPH_MIN_STEPS), or
 * QI_CUDA_GRAPHS=0; the results are the same bits either way.
 */
#include "engine/edit_denoise.h"

#include <stdlib.h>
#include <string.h>

#include "sample/scheduler.h"

typedef struct edit_dev {
    qi_tensor x;        /* [1, L + Lc, C]: output rows, then the condition latents */
    qi_tensor out[2];   /* [1, L + Lc, C] cond / uncond predictions */
    qi_tensor ctx[2];   /* [1, len, D] */
    qi_dit_call *call[2];
    int64_t L, Lc, C;
    int record;          /* steps go through a recording (see the file comment) */
    qi_graph *graph;     /* the recorded step, made at step 1 */
    size_t graph_mark;   /* the arena mark it was recorded at */
} edit_dev;

int qi_edit_denoise_records(const qi_dit *dit, const qi_backend *be, const qi_edit_denoise_args *a) {
    const char *env = getenv("QI_CUDA_GRAPHS");
    const int min_steps = a->graph_min_steps > 0 ? a->graph_min_steps : QI_EDIT_GRAPH_MIN_STEPS;
    if ((env && !strcmp(env, "0")) || a->on_call || a->steps < min_steps) return 0;
    return qi_backend_supports(be, QI_CAP_GRAPHS, 0) && !qi_dit_streams(dit);
}

static qi_status check_args(const qi_dit *dit, const qi_edit_denoise_args *a, qi_error *err) {
    if (!a->cond_latents || !a->ctx || !a->sigmas || !a->t || a->steps < 1 || a->ctx_len < 1 ||
        a->cond.n < 1 || (a->neg_ctx && a->neg_len < 1))
        return qi_fail(err, QI_ERR_ARG, "edit denoise: missing condition latents, embeddings or schedule");
    if (qi_dit_get_config(dit)->in_channels != qi_dit_get_config(dit)->out_channels * 4)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "edit denoise: the transformer's in_channels is not 4·out_channels");
    return QI_OK;
}

static qi_status setup(qi_dit *dit, qi_backend *be, const qi_edit_denoise_args *a, int two, edit_dev *d,
                       qi_error *err) {
    const qi_dit_config *c = qi_dit_get_config(dit);
    d->L = (int64_t)a->grid_h * a->grid_w;
    d->Lc = 0;
    for (int k = 0; k < a->cond.n; k++) d->Lc += (int64_t)a->cond.hw[k][0] * a->cond.hw[k][1];
    d->C = c->in_channels;
    qi_status st = qi_be_act3(be, &d->x, 1, d->L + d->Lc, d->C, err);
    for (int k = 0; k <= two && st == QI_OK; k++) {
        int len = k ? a->neg_len : a->ctx_len;
        st = qi_be_act3(be, &d->out[k], 1, d->L + d->Lc, d->C, err);
        if (st == QI_OK) st = qi_be_act3(be, &d->ctx[k], 1, len, c->joint_dim, err);
        if (st == QI_OK) st = be->ops->upload(be, &d->ctx[k], k ? a->neg_ctx : a->ctx, err);
    }
    /* the condition rows once; the output rows are uploaded per step */
    if (st == QI_OK) {
        qi_tensor tmp;
        size_t mark = be->ops->mark(be);
        st = qi_be_act2(be, &tmp, d->Lc, d->C, err);
        if (st == QI_OK) st = be->ops->upload(be, &tmp, a->cond_latents, err);
        if (st == QI_OK) {
            qi_tensor x2 = qi_view2(&d->x, d->L + d->Lc, d->C);
            be->ops->copy_rows(be, &tmp, 0, &x2, d->L, d->Lc);
            st = be->ops->sync(be, err);
        }
        be->ops->reset(be, mark);
    }
    for (int k = 0; k <= two && st == QI_OK; k++)
        st = qi_dit_call_create_edit(dit, 1, a->grid_h, a->grid_w, &a->cond, k ? a->neg_len : a->ctx_len,
                                     &d->call[k], err);
    return st;
}

/* The first L rows of out[k] (the output tokens' prediction). */
static qi_tensor kept_rows(const edit_dev *d, int k) {
    qi_tensor o2 = qi_view2(&d->out[k], d->L + d->Lc, d->C);
    return qi_slice_rows(&o2, 0, d->L);
}

/* A step's device work, ops only (what a recording holds): the calls, and
 * true CFG combined into out[0]'s first L rows. With on_call, each call's
 * kept rows are downloaded for it (eager only). */
static qi_status step_ops(qi_backend *be, const qi_edit_denoise_args *a, int two, edit_dev *d, float *v,
                          int *calls, qi_error *err) {
    qi_status st = QI_OK;
    for (int k = 0; k <= two && st == QI_OK; k++) {
        st = qi_dit_call_run(d->call[k], &d->x, &d->ctx[k], &d->out[k], err);
        qi_tensor kept = kept_rows(d, k);
        if (st == QI_OK && a->on_call) {
            st = be->ops->download(be, &kept, v, err);
            if (st == QI_OK) a->on_call(a->user, (*calls), v);
        }
        (*calls)++;
    }
    if (st == QI_OK && two) {
        qi_tensor k0 = kept_rows(d, 0), k1 = kept_rows(d, 1);
        be->ops->cfg_combine(be, &k0, &k1, a->cfg, &k0);
    }
    return st;
}

/* step_ops recorded into d->graph; the recording is ended in any case. */
static qi_status record_step(qi_backend *be, const qi_edit_denoise_args *a, int two, edit_dev *d, int *calls,
                             qi_error *err) {
    qi_status st = be->ops->graph_begin(be, err);
    if (st != QI_OK) return st;
    st = step_ops(be, a, two, d, NULL, calls, err);
    qi_error end_err;
    qi_status end_st = be->ops->graph_end(be, &d->graph, &end_err);
    if (st == QI_OK && end_st != QI_OK) {
        st = end_st;
        *err = end_err;
    }
    if (st != QI_OK && d->graph) {
        be->ops->graph_free(be, d->graph);
        d->graph = NULL;
    }
    d->graph_mark = be->ops->mark(be);
    return st;
}

/* One step: x's output rows and the timestep in, the step's device work
 * (eagerly, or recorded / replayed), the prediction downloaded into v [L, C]. */
static qi_status step(qi_backend *be, const qi_edit_denoise_args *a, int i, int two, edit_dev *d, float *x,
                      float *v, int *calls, int *replays, qi_error *err) {
    qi_tensor x2 = qi_view2(&d->x, d->L + d->Lc, d->C), rows;
    size_t mark = be->ops->mark(be);
    qi_status st = qi_be_act2(be, &rows, d->L, d->C, err);
    if (st == QI_OK) st = be->ops->upload(be, &rows, x, err);
    if (st == QI_OK) be->ops->copy_rows(be, &rows, 0, &x2, 0, d->L);
    be->ops->reset(be, mark);
    float t = a->t[i];
    for (int k = 0; k <= two && st == QI_OK; k++) st = qi_dit_call_set_timestep(d->call[k], &t, err);
    if (st != QI_OK) return st;
    if (!d->record || i == 0) {
        st = step_ops(be, a, two, d, v, calls, err);
    } else {
        if (!d->graph) { /* the recording counts the calls it holds */
            if ((st = record_step(be, a, two, d, calls, err)) != QI_OK) return st;
        } else {
            *calls += two + 1;
        }
        if (be->ops->mark(be) != d->graph_mark)
            return qi_fail(err, QI_ERR_BACKEND, "edit denoise: step graph recorded at arena mark %zu, now %zu",
                           d->graph_mark, be->ops->mark(be));
        st = be->ops->graph_launch(be, d->graph, err);
        if (st == QI_OK) (*replays)++;
    }
    qi_tensor k0 = kept_rows(d, 0);
    if (st == QI_OK) st = be->ops->download(be, &k0, v, err);
    return st;
}

qi_status qi_edit_denoise(qi_dit *dit, qi_backend *be, const qi_edit_denoise_args *a, float *latents,
                          qi_error *err) {
    if (!dit || !be || !a || !latents) return qi_fail(err, QI_ERR_ARG, "edit denoise: NULL argument");
    qi_status st = check_args(dit, a, err);
    if (st != QI_OK) return st;
    int two = a->neg_ctx && a->cfg > 1.0f;
    edit_dev d;
    memset(&d, 0, sizeof d);
    d.record = qi_edit_denoise_records(dit, be, a);
    size_t mark = be->ops->mark(be);
    float *v = NULL, *x0 = NULL;
    st = setup(dit, be, a, two, &d, err);
    if (st == QI_OK && !(v = malloc((size_t)(d.L * d.C) * sizeof(float))))
        st = qi_fail(err, QI_ERR_NOMEM, "edit denoise: out of memory");
    if (st == QI_OK && a->on_step_x0 && !(x0 = malloc((size_t)(d.L * d.C) * sizeof(float))))
        st = qi_fail(err, QI_ERR_NOMEM, "edit denoise: out of memory (step previews)");
    int calls = 0, replays = 0;
    for (int i = 0; i <= a->steps && st == QI_OK; i++) {
        if (a->progress && a->progress(a->progress_user, i, a->steps))
            st = qi_fail(err, QI_ERR_CANCELLED, "generation cancelled");
        if (i == a->steps || st != QI_OK) break;
        st = step(be, a, i, two, &d, latents, v, &calls, &replays, err);
        if (st == QI_OK && x0) /* x_i − σ_i·v = x_{i+1} − σ_{i+1}·v: what the step predicts the image is */
            for (int k = 0; k < d.L * d.C; k++) x0[k] = latents[k] - a->sigmas[i] * v[k];
        if (st == QI_OK) qi_scheduler_euler_step(latents, v, d.L * d.C, a->sigmas[i], a->sigmas[i + 1]);
        if (st == QI_OK && x0) a->on_step_x0(a->step_user, i + 1, x0);
    }
    if (a->replayed_steps) *a->replayed_steps = replays;
    free(v);
    free(x0);
    if (d.graph) be->ops->graph_free(be, d.graph);
    qi_dit_call_free(d.call[0]);
    qi_dit_call_free(d.call[1]);
    be->ops->reset(be, mark);
    return st;
}

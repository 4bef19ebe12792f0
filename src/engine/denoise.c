/*
 * denoise.c — the denoising loop, the same code on one device and on every
 * rank of several (one device is one rank). Per step, each rank:
 *
 *   1. meets the others (ranks.c's step barrier: rank 0's progress callback
 *      may cancel, and every rank learns it at the same step);
 *   2. selects the step's modulation: each transformer call is given the
 *      generation's whole timestep schedule (qi_dit_call_set_schedule), so
 *      the modulation of every step is computed in one batched pass, and a
 *      step only selects its slice (one device copy, outside any recording);
 *   3. runs the step's device work: the transformer call(s) on its image
 *      tokens (all of them, or its Ulysses shard) and true CFG (the combine
 *      of both predictions, or the CFG-parallel exchange with its pair);
 *   4. Euler on its tokens, x += (σ[i+1] − σ[i])·v, in float32 as diffusers
 *      upcasts (outside the recording: its coefficient changes per step).
 *
 * Step 3 is recorded once and replayed per step (and from step 0 of later
 * requests with the same key) when every rank's backend records graphs and
 * every communicator the step exchanges through can be recorded (a device
 * communicator queues its collectives on the backend's stream). The host
 * communicator (local_comm.c: ranks sharing a GPU, or NCCL missing) cannot:
 * it downloads, exchanges through host memory with the other threads and
 * uploads, and none of that can be queued in a recording; its ranks run
 * step 3 eagerly. The choice is made once for all ranks, so recorded and
 * eager collectives never meet. A transformer that streams weights
 * (qi_dit_load_resident) runs eagerly too: its copies go on the backend's copy
 * queue, ordered by events, which the recording does not capture.
 * QI_CUDA_GRAPHS=0 runs everything eagerly, with bit-identical results.
 *
 * Layout (plan.c): with true CFG and an even rank count, the cond prediction
 * runs on ranks [0, N/2) and the uncond one on [N/2, N), each half a Ulysses
 * group; otherwise one Ulysses group of all N ranks makes both predictions
 * in turn. Every rank uploads the whole initial noise and keeps its shard;
 * the shards are gathered at the end for rank 0 to download.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/denoise.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Text embeddings as backend tensors for the transformer. */
typedef struct text_dev {
    qi_tensor ctx;  /* [B, L_txt, D] */
    qi_tensor mask; /* I32 [B, L_txt], when has_mask */
    int has_mask;
} text_dev;

typedef struct denoise_task {
    qi_ranks *r;
    const qi_plan *p;
    const qi_text_embeds *text; /* [2]: prompts, negative prompts */
    float *latents;             /* [B, L, C] host: noise in, rank 0 writes the result */
    qi_comm_set *comms;
    int record;                 /* every rank records its step (see the file comment) */
    atomic_int cancel_at;       /* the step at which rank 0's callback cancelled; INT_MAX: none */
    atomic_int first_failed;    /* the rank that failed first (its error is the cause); -1: none */
    const qi_denoise_hook *hook; /* per-step x0 (NULL: none) */
    int check_finite;            /* latents checked after each step (QI_CHECK_FINITE=0: off) */
    float *hook_v;              /* [B, L, C] host scratch for the prediction when hooked */
} denoise_task;

/* One rank's part of a generation. */
typedef struct rank_ctx {
    int w;
    qi_backend *be;
    qi_comm *sp, *pair;   /* its Ulysses group (NULL: the whole image), its CFG pair (NULL: none) */
    qi_ulysses u;         /* its shard of the image tokens */
    int first, last;      /* the predictions it makes: 0 cond, 1 uncond */
    text_dev text[2];
    qi_tensor full;       /* [B, L, C] the whole image (with a Ulysses group) */
    qi_tensor lat;        /* [B, len, C] its tokens */
    qi_tensor v[2];       /* [B, len, C] its predictions (v[1] when it makes both) */
    qi_rank_step eager;   /* the calls of a rank that does not record (made per request) */
    qi_rank_step *step;   /* the kept r->step[w] when recording, else &eager */
} rank_ctx;

static int comm_recordable(const qi_comm *c) { return !c || c->memory == QI_COMM_DEVICE; }

/* Whether every rank records its step (one choice for all: see above). */
static int ranks_record(const qi_ranks *r, const qi_comm_set *s) {
    const char *env = getenv("QI_CUDA_GRAPHS");
    if (env && !strcmp(env, "0")) return 0;
    for (int w = 0; w < r->n; w++)
        if (!qi_backend_supports(r->be[w], QI_CAP_GRAPHS, 0) || !comm_recordable(s->sp[w]) ||
            !comm_recordable(s->cfg[w]) || qi_dit_streams(r->dit[w])) /* copies on a second queue */
            return 0;
    return 1;
}

static void step_release(qi_backend *be, qi_rank_step *s) {
    if (s->graph) be->ops->graph_free(be, s->graph);
    qi_dit_call_free(s->call[0]);
    qi_dit_call_free(s->call[1]);
    memset(s, 0, sizeof *s);
}

void qi_denoise_release(qi_ranks *r) {
    for (int w = 0; r && w < r->n; w++) {
        qi_backend *be = r->be[w];
        qi_error ignored;
        if (!r->step[w].call[0] && !r->step[w].graph) continue;
        if (be->ops->make_current) be->ops->make_current(be, &ignored); /* freed on its device */
        step_release(be, &r->step[w]);
    }
    if (r && r->be[0]->ops->make_current) {
        qi_error ignored;
        r->be[0]->ops->make_current(r->be[0], &ignored);
    }
}

/* A rank failed: the others must not wait for it. */
static void fail_rank(void *arg, int w) {
    denoise_task *t = arg;
    int none = -1;
    atomic_compare_exchange_strong(&t->first_failed, &none, w);
    qi_ranks_abort(t->r, t->comms, w);
}

static qi_status upload_text(qi_backend *be, const qi_text_embeds *t, text_dev *out, qi_error *err) {
    qi_status st = qi_be_act3(be, &out->ctx, t->batch, t->len, t->dim, err);
    if (st == QI_OK) st = be->ops->upload(be, &out->ctx, t->embeds, err);
    out->has_mask = !t->all_valid;
    if (st != QI_OK || !out->has_mask) return st;
    int64_t ne[2] = {t->batch, t->len};
    st = be->ops->tensor(be, &out->mask, QI_I32, 2, ne, err);
    return st == QI_OK ? be->ops->upload(be, &out->mask, t->mask, err) : st;
}

/* The rank's inputs on its backend: text, its tokens of the noise, outputs. */
static qi_status rank_setup(const denoise_task *t, rank_ctx *c, qi_error *err) {
    const qi_plan *p = t->p;
    const qi_parallel_layout *l = &p->layout;
    const qi_dit_config *dc = qi_dit_get_config(t->r->dit[c->w]);
    qi_backend *be = c->be;
    int64_t B = p->batch, L = p->img_tokens, C = p->packed_ch;
    qi_status st = qi_ulysses_plan(l->sp_size, qi_parallel_sp_rank(l, c->w), L, dc->num_heads, dc->head_dim,
                                   &c->u, err);
    if (st != QI_OK) return st;
    int64_t len = qi_ulysses_shard_len(&c->u, c->u.rank);
    c->first = l->branches == 2 ? qi_parallel_branch(l, c->w) : 0;
    c->last = l->branches == 2 ? c->first : p->do_cfg;
    for (int br = c->first; br <= c->last && st == QI_OK; br++) st = upload_text(be, &t->text[br], &c->text[br], err);
    if (st == QI_OK && c->sp) st = qi_be_act3(be, &c->full, B, L, C, err);
    if (st == QI_OK) st = qi_be_act3(be, &c->lat, B, len, C, err);
    if (st == QI_OK) st = qi_be_act3(be, &c->v[0], B, len, C, err);
    if (st == QI_OK && c->last > c->first) st = qi_be_act3(be, &c->v[1], B, len, C, err);
    if (st != QI_OK) return st;
    if (!c->sp) return be->ops->upload(be, &c->lat, t->latents, err);
    st = be->ops->upload(be, &c->full, t->latents, err);
    if (st == QI_OK) qi_ulysses_take_shard(&c->u, be, &c->full, &c->lat);
    return st;
}

/* The key of the rank's step as set up now. */
static qi_step_key step_key_of(const denoise_task *t, const rank_ctx *c) {
    qi_step_key k;
    memset(&k, 0, sizeof k);
    int two = c->last > c->first;
    const text_dev *t0 = &c->text[c->first], *t1 = two ? &c->text[c->last] : NULL;
    k.batch = t->p->batch, k.grid_h = t->p->grid_h, k.grid_w = t->p->grid_w;
    k.len0 = (int)t0->ctx.ne[1], k.len1 = two ? (int)t1->ctx.ne[1] : 0;
    k.cfg = t->p->do_cfg ? t->p->cfg : 0.0f;
    k.mask0 = t0->has_mask, k.mask1 = two && t1->has_mask;
    k.arena_mark = c->be->ops->mark(c->be);
    k.latents = c->lat.data, k.v0 = c->v[0].data, k.v1 = two ? c->v[1].data : NULL;
    k.ctx0 = t0->ctx.data, k.ctx1 = two ? t1->ctx.data : NULL;
    k.sp = c->sp, k.pair = c->pair;
    return k;
}

/* The rank's calls for this request: the kept ones (and their recording)
 * when the key is unchanged, else made anew; text masks and the timestep
 * schedule are written every request (the same lengths may hold other
 * padding). Calls on a backend without persistent buffers take them from
 * the arena here, above everything the loop uses. */
static qi_status rank_calls(const denoise_task *t, rank_ctx *c, qi_error *err) {
    qi_dit *dit = t->r->dit[c->w];
    qi_step_key key = step_key_of(t, c);
    qi_rank_step *s = c->step;
    qi_status st = QI_OK;
    int n = c->last - c->first + 1;
    if (!s->call[0] || memcmp(&key, &s->key, sizeof key)) {
        step_release(c->be, s);
        s->key = key;
        for (int k = 0; k < n && st == QI_OK; k++) {
            int len = (int)c->text[c->first + k].ctx.ne[1];
            st = c->sp ? qi_dit_call_create_sp(dit, c->sp, key.batch, key.grid_h, key.grid_w, len, &s->call[k], err)
                       : qi_dit_call_create(dit, key.batch, key.grid_h, key.grid_w, len, &s->call[k], err);
        }
    }
    for (int k = 0; k < n && st == QI_OK; k++) {
        const text_dev *td = &c->text[c->first + k];
        st = qi_dit_call_set_text_mask(s->call[k], td->has_mask ? &td->mask : NULL, err);
        if (st == QI_OK) st = qi_dit_call_set_schedule(s->call[k], t->p->t_all, t->p->steps, err);
    }
    if (st != QI_OK) step_release(c->be, s);
    return st;
}

static qi_status run_call(rank_ctx *c, int k, qi_tensor *v, qi_error *err) {
    const qi_tensor *ctx = &c->text[c->first + k].ctx;
    return c->sp ? qi_dit_call_run_sp(c->step->call[k], c->sp, &c->lat, ctx, v, err)
                 : qi_dit_call_run(c->step->call[k], &c->lat, ctx, v, err);
}

/* The device work of one step, ops only: v[0] = the rank's prediction, then
 * true CFG into v[0] (through the CFG pair, or from its own second call). */
static qi_status step_ops(const denoise_task *t, rank_ctx *c, qi_error *err) {
    float cfg = t->p->cfg;
    qi_status st = run_call(c, 0, &c->v[0], err);
    if (st == QI_OK && c->pair) {
        st = qi_cfg_parallel_combine(c->pair, c->be, &c->v[0], cfg, &c->v[0], err);
    } else if (st == QI_OK && c->last > c->first) {
        st = run_call(c, 1, &c->v[1], err);
        if (st == QI_OK) c->be->ops->cfg_combine(c->be, &c->v[0], &c->v[1], cfg, &c->v[0]);
    }
    return st;
}

/* step_ops recorded: ends the recording in any case; keeps it on success. */
static qi_status record_step(const denoise_task *t, rank_ctx *c, qi_error *err) {
    qi_backend *be = c->be;
    double t0 = qi_now_s();
    qi_status st = be->ops->graph_begin(be, err);
    if (st) return st;
    st = step_ops(t, c, err);
    qi_graph *rec = NULL;
    qi_error end_err;
    qi_status end_st = be->ops->graph_end(be, &rec, &end_err);
    if (!st && end_st) {
        st = end_st;
        *err = end_err;
    }
    if (st) {
        if (rec) be->ops->graph_free(be, rec);
        return st;
    }
    c->step->graph = rec;
    if (c->w == 0) /* log lines arrive on the caller's thread */
        qi_log_linef(t->r->log, t->r->log_user, "denoising step recorded as a graph (%s) in %.1f ms",
                     c->pair ? "1 transformer call + CFG-parallel exchange"
                     : c->last > c->first ? "2 transformer calls + CFG combine" : "1 transformer call",
                     (qi_now_s() - t0) * 1e3);
    return QI_OK;
}

/* Step i: the modulation selected, then step_ops eagerly, or through the
 * recording: eagerly while nothing has run yet (step 0: GEMM plans and kernel
 * set-up happen outside the recording), recorded on the next step, replayed
 * from then on. */
static qi_status rank_step(const denoise_task *t, rank_ctx *c, int i, qi_error *err) {
    qi_rank_step *s = c->step;
    qi_status st = qi_dit_call_select_step(s->call[0], i, err);
    if (st == QI_OK && s->call[1]) st = qi_dit_call_select_step(s->call[1], i, err);
    if (st != QI_OK) return st;
    if (!t->record || (!s->graph && i == 0)) return step_ops(t, c, err);
    if (c->be->ops->mark(c->be) != s->key.arena_mark) /* the recording's activations start there */
        return qi_fail(err, QI_ERR_BACKEND, "denoising step graph: arena at %zu, recorded at %zu",
                       c->be->ops->mark(c->be), s->key.arena_mark);
    if (!s->graph && (st = record_step(t, c, err))) return st;
    return c->be->ops->graph_launch(c->be, s->graph, err);
}

/* The final latents: the shards gathered (both branches hold the same
 * latents: each gathers its own group's), rank 0 downloads. */
static qi_status rank_finish(const denoise_task *t, rank_ctx *c, qi_error *err) {
    qi_status st = QI_OK;
    if (c->sp) st = qi_ulysses_gather_tokens(&c->u, c->sp, c->be, &c->lat, &c->full, err);
    if (st == QI_OK && c->w == 0) st = c->be->ops->download(c->be, c->sp ? &c->full : &c->lat, t->latents, err);
    if (st == QI_OK) st = c->be->ops->sync(c->be, err);
    return st;
}

/* The hook after step i on rank 0 when it holds every token: x and v
 * downloaded, x0 = x_{i+1} - sigma_{i+1} v (= x_i - sigma_i v) into
 * t->latents (free between setup and finish: every rank uploaded its noise
 * before step 0's barrier). */
static qi_status step_hook(const denoise_task *t, rank_ctx *c, int i, qi_error *err) {
    if (!t->hook || c->w != 0 || c->sp) return QI_OK;
    qi_status st = c->be->ops->download(c->be, &c->lat, t->latents, err);
    if (st == QI_OK) st = c->be->ops->download(c->be, &c->v[0], t->hook_v, err);
    if (st == QI_OK) st = c->be->ops->sync(c->be, err);
    if (st != QI_OK) return st;
    const qi_plan *p = t->p;
    size_t n = (size_t)p->batch * p->img_tokens * p->packed_ch;
    float s = p->sigmas[i + 1];
    for (size_t k = 0; k < n; k++) t->latents[k] -= s * t->hook_v[k];
    t->hook->fn(t->hook->user, i + 1, t->latents);
    return QI_OK;
}

/* After step i: the latents are finite, or the run stops here naming the
 * step and what went wrong (a NaN/Inf otherwise decodes to a black or noise
 * image written as if all went well). One reduction per step on the rank's
 * latents; the transformer output is looked at only to name the stage. */
static qi_status check_step_finite(const denoise_task *t, rank_ctx *c, int i, qi_error *err) {
    qi_backend *be = c->be;
    if (!be->ops->count_nonfinite) return QI_OK;
    int64_t bad = 0, bad_v = 0;
    qi_status st = be->ops->count_nonfinite(be, &c->lat, &bad, err);
    if (st != QI_OK || bad == 0) return st;
    st = be->ops->count_nonfinite(be, &c->v[0], &bad_v, err);
    if (st != QI_OK) return st;
    return qi_fail(err, QI_ERR_BACKEND,
                   "denoise: latents became non-finite at step %d of %d (%s): %lld of %lld values "
                   "are NaN or Inf; nothing was written. Try another precision or model file "
                   "(an overflow in the weights or activations)",
                   i + 1, t->p->steps, bad_v ? "transformer output" : "scheduler update",
                   (long long)bad, (long long)qi_numel(&c->lat));
}

static qi_status denoise_rank(qi_ranks *r, int w, void *arg, qi_error *err) {
    denoise_task *t = arg;
    const qi_plan *p = t->p;
    rank_ctx c;
    memset(&c, 0, sizeof c);
    c.w = w;
    c.be = r->be[w];
    c.sp = t->comms->sp[w];
    c.pair = t->comms->cfg[w];
    c.step = t->record ? &r->step[w] : &c.eager;
    size_t mark = c.be->ops->mark(c.be);
    qi_status st = rank_setup(t, &c, err);
    if (st == QI_OK) st = rank_calls(t, &c, err);
    for (int i = 0; i < p->steps && st == QI_OK; i++) {
        st = qi_ranks_step_barrier(r, w, i, p->steps, p->req->progress, p->req->progress_user, &t->cancel_at, err);
        if (st == QI_OK) st = rank_step(t, &c, i, err);
        if (st == QI_OK) c.be->ops->axpby(c.be, 1.0f, &c.lat, p->sigmas[i + 1] - p->sigmas[i], &c.v[0], &c.lat);
        if (st == QI_OK && t->check_finite) st = check_step_finite(t, &c, i, err);
        if (st == QI_OK) st = step_hook(t, &c, i, err);
    }
    if (st == QI_OK) st = rank_finish(t, &c, err);
    if (st != QI_OK && st != QI_ERR_CANCELLED) fail_rank(t, w);
    step_release(c.be, &c.eager); /* before the reset: arena-made calls live above mark */
    c.be->ops->reset(c.be, mark);
    return st;
}

qi_status qi_denoise(qi_ranks *r, const qi_plan *p, const qi_text_embeds text[2], float *latents, qi_error *err) {
    return qi_denoise_hooked(r, p, text, latents, NULL, err);
}

qi_status qi_denoise_hooked(qi_ranks *r, const qi_plan *p, const qi_text_embeds text[2], float *latents,
                            const qi_denoise_hook *hook, qi_error *err) {
    for (int w = 0; w < r->n; w++)
        if (!r->dit[w]) return qi_fail(err, QI_ERR_ARG, "denoise: rank %d has no transformer loaded", w);
    denoise_task t = {.r = r, .p = p, .text = text, .latents = latents, .hook = hook && hook->fn ? hook : NULL};
    if (t.hook && !(t.hook_v = malloc(sizeof(float) * (size_t)p->batch * p->img_tokens * p->packed_ch)))
        return qi_fail(err, QI_ERR_NOMEM, "out of memory for the step latents");
    const char *cf = getenv("QI_CHECK_FINITE"); /* "0": off, to time the check's cost */
    t.check_finite = !(cf && !strcmp(cf, "0"));
    atomic_init(&t.cancel_at, INT_MAX);
    atomic_init(&t.first_failed, -1);
    qi_status st = qi_ranks_comms(r, &p->layout, &t.comms, err);
    if (st != QI_OK) {
        free(t.hook_v);
        return st;
    }
    t.record = ranks_record(r, t.comms);
    st = qi_ranks_run(r, denoise_rank, &t, fail_rank, &t.first_failed, err);
    if (atomic_load(&t.first_failed) >= 0) {
        /* aborted: the kept steps may exchange through the dropped communicators */
        qi_denoise_release(r);
        qi_ranks_drop_comms(r);
    }
    free(t.hook_v);
    return st;
}

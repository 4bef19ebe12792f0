/*
 * dit_call.c — one transformer call of model/dit.h: its inputs on the device
 * (RoPE tables of the shape, the timestep sinusoid, the joint key mask; with
 * Edit condition segments their own RoPE frame and 2511's zero_cond_t
 * modulation at t = 0), then the pure ops of dit.c's forward on arena
 * addresses that repeat every run (so a run can be recorded as a graph);
 * schedule mode (every step's modulation at once); qi_dit_forward,
 * qi_dit_forward_edit and the sequence-parallel call. Split from dit.c for
 * size; the shared layout is dit_internal.h.
 */
#include "model/dit_internal.h"

/* The schedule's buffers (persistent ones; arena ones go with the caller's
 * reset), all but the selected step's `mods`. */
static void schedule_release(qi_dit_call *c) {
    qi_tensor *bufs[] = {&c->sched_mods, &c->sched_out, &c->gather_ids};
    for (size_t i = 0; i < QI_ARRAY_LEN(bufs); i++) {
        if (c->persistent && bufs[i]->data) c->d->be->ops->weight_free(c->d->be, bufs[i]);
        memset(bufs[i], 0, sizeof *bufs[i]);
    }
    free(c->sched_t);
    c->sched_t = NULL;
    c->sched_steps = 0;
    c->window = 0;
    c->win0 = -1;
}

static void call_release(qi_dit_call *c) {
    if (c->rope) c->rope->pins--;
    c->rope = NULL;
    schedule_release(c);
    if (c->persistent) {
        qi_backend *be = c->d->be;
        if (c->sinus.data) be->ops->weight_free(be, &c->sinus);
        if (c->key_mask.data) be->ops->weight_free(be, &c->key_mask);
        if (c->mods.data) be->ops->weight_free(be, &c->mods);
        if (c->mods0.data) be->ops->weight_free(be, &c->mods0);
    }
}

/* A buffer that lives as long as the call: persistent, or from the arena. */
static qi_status call_buffer(qi_dit_call *c, qi_tensor *t, qi_dtype dt, int64_t rows, int64_t cols,
                             qi_error *err) {
    qi_backend *be = c->d->be;
    int64_t ne[2] = {rows, cols};
    return c->persistent ? be->ops->persistent(be, t, dt, 2, ne, err) : be->ops->tensor(be, t, dt, 2, ne, err);
}

/* zero_cond_t: every block's img_mod of silu(temb(t = 0)) into c->mods0,
 * once per call (it does not change with the step). */
static qi_status call_zero_modulation(qi_dit_call *c, qi_error *err) {
    qi_dit *d = c->d;
    qi_backend *be = d->be;
    int64_t L = d->cfg.num_layers;
    qi_status st = call_buffer(c, &c->mods0, be->act_dtype, L, 6 * (int64_t)d->cfg.inner_dim, err);
    if (st != QI_OK) return st;
    float zero = 0.0f, proj[DIT_TIME_CHANNELS];
    dit_timestep_sinusoid(&zero, 1, proj);
    size_t mark = be->ops->mark(be);
    qi_tensor sinus, temb_silu;
    st = qi_be_act2(be, &sinus, 1, DIT_TIME_CHANNELS, err);
    if (st == QI_OK) st = be->ops->upload(be, &sinus, proj, err);
    if (st == QI_OK) st = dit_timestep_embedding(d, &sinus, &temb_silu, err);
    for (int64_t i = 0; i < L && st == QI_OK; i++) {
        qi_tensor row = qi_slice_rows(&c->mods0, i, 1);
        dit_linear im, tm; /* the modulation weights, staged when they stream */
        st = dit_mod_linears(d, (int)i, &im, &tm, err);
        if (st == QI_OK) dit_run_linear(d, &temb_silu, &im, QI_ACT_NONE, &row, &st, err);
    }
    be->ops->reset(be, mark); /* queued work still reads the scratch, in stream order */
    return st;
}

/* Pins the RoPE tables of the shape and makes the buffers (persistent ones,
 * or from the arena). cond: Edit condition segments (NULL: none). */
static qi_status call_init(qi_dit *d, qi_dit_call *c, int64_t B, int grid_h, int grid_w, const qi_dit_cond *cond,
                           int64_t txt_len, int64_t img_rows, int persistent, qi_error *err) {
    memset(c, 0, sizeof *c);
    c->d = d;
    c->B = B;
    c->Li = img_rows;
    c->Lt = txt_len;
    if (cond) c->cond = *cond;
    c->Lj = txt_len + qi_dit_image_tokens(grid_h, grid_w, &c->cond);
    c->grid_h = grid_h;
    c->grid_w = grid_w;
    c->persistent = persistent;
    c->run_mark = SIZE_MAX;
    c->win0 = -1;
    c->zero_split = d->cfg.zero_cond_t && c->cond.n > 0;
    if (c->zero_split && B != 1)
        return qi_fail(err, QI_ERR_ARG, "transformer: zero_cond_t with condition pictures runs one image at a time "
                       "(batch %lld)", (long long)B);
    qi_status st = dit_rope_for_shape(d, grid_h, grid_w, &c->cond, (int)txt_len, &c->rope, err);
    if (st != QI_OK) return st;
    c->rope->pins++;
    st = call_buffer(c, &c->sinus, d->be->act_dtype, B, DIT_TIME_CHANNELS, err);
    if (st == QI_OK) st = call_buffer(c, &c->key_mask, QI_I32, B, c->Lj, err);
    if (st == QI_OK && c->zero_split) st = call_zero_modulation(c, err);
    if (st != QI_OK) call_release(c);
    return st;
}

/* The joint key mask [B, Lt + Li] (text mask, then ones for the image), or
 * none when every text token is real (spec §1.6 "Key mask"). */
static qi_status call_set_mask(qi_dit_call *c, const qi_tensor *ctx_mask, qi_error *err) {
    c->have_mask = 0;
    if (!ctx_mask) return QI_OK;
    qi_backend *be = c->d->be;
    int32_t *host = malloc((size_t)(c->B * c->Lj) * sizeof *host);
    if (!host) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    qi_status st = be->ops->download(be, ctx_mask, host, err); /* [B, Lt] into the front */
    int all_real = 1;
    if (st == QI_OK) {
        /* spread row b from b·Lt to b·Lj, last row first so nothing is overwritten */
        for (int64_t b = c->B - 1; b >= 0; b--) {
            for (int64_t j = c->Lt - 1; j >= 0; j--) {
                int32_t v = host[b * c->Lt + j] != 0;
                all_real &= v;
                host[b * c->Lj + j] = v;
            }
            for (int64_t j = c->Lt; j < c->Lj; j++) host[b * c->Lj + j] = 1;
        }
    }
    if (st == QI_OK && !all_real) {
        st = be->ops->upload(be, &c->key_mask, host, err);
        c->have_mask = st == QI_OK;
    }
    free(host);
    return st;
}

/* t: B host floats, each finite. */
static qi_status call_set_timestep(qi_dit_call *c, const float *t, qi_error *err) {
    float *proj = malloc((size_t)(c->B * DIT_TIME_CHANNELS) * sizeof *proj);
    if (!proj) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    dit_timestep_sinusoid(t, c->B, proj);
    qi_status st = c->d->be->ops->upload(c->d->be, &c->sinus, proj, err);
    free(proj);
    c->timestep_set = st == QI_OK;
    c->scheduled = 0;
    return st;
}

/* ---- schedule mode: the modulation of every step, batched ---------------------------- */

#define DIT_SCHEDULE_BYTES QI_DIT_SCHEDULE_BYTES

/* Steps [w0, w0 + n) of the schedule into the window: the sinusoid of n·B
 * rows, the timestep MLP and each modulation Linear once over all of them
 * (M = n·B), written slot by slot (a Linear's output rows are contiguous). */
static qi_status schedule_compute_window(qi_dit_call *c, int64_t w0, qi_error *err) {
    qi_dit *d = c->d;
    qi_backend *be = d->be;
    int64_t L = d->cfg.num_layers, W = c->window, B = c->B;
    int64_t n = c->sched_steps - w0 < W ? c->sched_steps - w0 : W, rows = n * B;
    float *proj = malloc((size_t)(rows * DIT_TIME_CHANNELS) * sizeof *proj);
    if (!proj) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (timestep schedule)");
    dit_timestep_sinusoid(c->sched_t + w0 * B, rows, proj);
    size_t mark = be->ops->mark(be);
    qi_tensor sinus, temb_silu;
    qi_status st = qi_be_act2(be, &sinus, rows, DIT_TIME_CHANNELS, err);
    if (st == QI_OK) st = be->ops->upload(be, &sinus, proj, err);
    free(proj);
    if (st == QI_OK) st = dit_timestep_embedding(d, &sinus, &temb_silu, err);
    if (st == QI_OK) {
        for (int64_t i = 0; i < L; i++) {
            qi_tensor img_mod = qi_slice_rows(&c->sched_mods, (2 * i) * W * B, rows);
            qi_tensor txt_mod = qi_slice_rows(&c->sched_mods, (2 * i + 1) * W * B, rows);
            dit_linear im, tm;
            if (st == QI_OK) st = dit_mod_linears(d, (int)i, &im, &tm, err);
            if (st != QI_OK) break;
            const dit_linear *pair[2] = {&im, &tm};
            qi_tensor *out[2] = {&img_mod, &txt_mod};
            if (dit_try_linears_shared(d, &temb_silu, NULL, 2, pair, QI_ACT_NONE, out)) continue; /* quantised once (fp8) */
            dit_run_linear(d, &temb_silu, &im, QI_ACT_NONE, &img_mod, &st, err);
            dit_run_linear(d, &temb_silu, &tm, QI_ACT_NONE, &txt_mod, &st, err);
        }
        qi_tensor out_mod = qi_slice_rows(&c->sched_out, 0, rows);
        dit_run_linear(d, &temb_silu, &d->norm_out, QI_ACT_NONE, &out_mod, &st, err);
        if (st == QI_OK) c->win0 = w0;
    }
    be->ops->reset(be, mark); /* the queued work still reads them, in stream order */
    return st;
}

/* Buffers for a window of W steps; the gather indices say, for step j of
 * the window, which sched_mods row holds (slot s, batch row b):
 * (s·W + j)·B + b, in the order of dit_acts.mods (slot-major). */
static qi_status schedule_alloc(qi_dit_call *c, int64_t W, qi_error *err) {
    qi_dit *d = c->d;
    int64_t S = 2 * (int64_t)d->cfg.num_layers, B = c->B, D = d->cfg.inner_dim;
    qi_dtype act = d->be->act_dtype;
    qi_status st = QI_OK;
    if (!c->mods.data) st = call_buffer(c, &c->mods, act, (S + 1) * B, 6 * D, err);
    if (st == QI_OK) st = call_buffer(c, &c->sched_mods, act, S * W * B, 6 * D, err);
    if (st == QI_OK) st = call_buffer(c, &c->sched_out, act, W * B, 2 * D, err);
    if (st == QI_OK) st = call_buffer(c, &c->gather_ids, QI_I32, W, S * B, err);
    if (st != QI_OK) return st;
    int32_t *ids = malloc((size_t)(W * S * B) * sizeof *ids);
    if (!ids) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (timestep schedule)");
    for (int64_t j = 0; j < W; j++)
        for (int64_t s = 0; s < S; s++)
            for (int64_t b = 0; b < B; b++) ids[(j * S + s) * B + b] = (int32_t)((s * W + j) * B + b);
    st = d->be->ops->upload(d->be, &c->gather_ids, ids, err);
    free(ids);
    c->window = W;
    return st;
}

/* img_rows: the image tokens x and out hold (the whole grid, or a shard);
 * fn names the entry point in messages. t (B floats) may be NULL: not checked. */
static qi_status check_inputs(const qi_dit *d, const char *fn, const qi_tensor *x,
                              const qi_tensor *ctx, const qi_tensor *ctx_mask, const float *t,
                              int grid_h, int grid_w, int64_t img_rows, const qi_tensor *out,
                              qi_error *err) {
    const qi_dit_config *c = &d->cfg;
    char s1[64];
    if (!x || !ctx || !out)
        return qi_fail(err, QI_ERR_ARG, "%s: x, ctx, t and out are required", fn);
    if (grid_h < 1 || grid_w < 1)
        return qi_fail(err, QI_ERR_ARG, "%s: patch grid %dx%d", fn, grid_h, grid_w);
    const char *part = img_rows == (int64_t)grid_h * grid_w ? "" : " (this rank's shard)";
    int64_t B = x->ndim == 3 ? x->ne[0] : 0, Li = img_rows;
    int64_t out_dim = (int64_t)c->out_channels * c->patch_size * c->patch_size;
    if (x->ndim != 3 || x->ne[1] != Li || x->ne[2] != c->in_channels || B < 1)
        return qi_fail(err, QI_ERR_ARG, "%s: x is %s, expected [B, %lld, %d] for a %dx%d patch grid%s",
                       fn, qi_shape_str(x, s1, sizeof s1), (long long)Li, c->in_channels, grid_h,
                       grid_w, part);
    if (ctx->ndim != 3 || ctx->ne[0] != B || ctx->ne[1] < 1 || ctx->ne[2] != c->joint_dim)
        return qi_fail(err, QI_ERR_ARG, "%s: ctx is %s, expected [%lld, L_txt >= 1, %d]", fn,
                       qi_shape_str(ctx, s1, sizeof s1), (long long)B, c->joint_dim);
    if (ctx_mask && (ctx_mask->dtype != QI_I32 || ctx_mask->ndim != 2 || ctx_mask->ne[0] != B ||
                     ctx_mask->ne[1] != ctx->ne[1]))
        return qi_fail(err, QI_ERR_ARG, "%s: ctx_mask is %s %s, expected I32 [%lld, %lld]", fn,
                       qi_dtype_name(ctx_mask->dtype), qi_shape_str(ctx_mask, s1, sizeof s1),
                       (long long)B, (long long)ctx->ne[1]);
    if (out->ndim != 3 || out->ne[0] != B || out->ne[1] != Li || out->ne[2] != out_dim)
        return qi_fail(err, QI_ERR_ARG, "%s: out is %s, expected [%lld, %lld, %lld]", fn,
                       qi_shape_str(out, s1, sizeof s1), (long long)B, (long long)Li,
                       (long long)out_dim);
    qi_dtype act = d->be->act_dtype;
    if (x->dtype != act || ctx->dtype != act || out->dtype != act)
        return qi_fail(err, QI_ERR_ARG, "%s: x, ctx, out must be %s activations (got %s, %s, %s)",
                       fn, qi_dtype_name(act), qi_dtype_name(x->dtype), qi_dtype_name(ctx->dtype),
                       qi_dtype_name(out->dtype));
    for (int64_t b = 0; t && b < B; b++) /* t NULL: a qi_dit_call's run, t was set before */
        if (!isfinite(t[b]))
            return qi_fail(err, QI_ERR_ARG, "%s: t[%lld] is not finite", fn, (long long)b);
    return QI_OK;
}

/* The forward of x's image tokens: the whole image (sp NULL) or this rank's
 * shard of a Ulysses group (sp, comm), reading the call's prepared inputs.
 * Only ops and arena allocations (released before returning; the queued work
 * still uses them, in stream order): no copies between host and device,
 * except the RoPE upload of a backend that can keep no F32 tables (none with
 * graph ops). Not synchronised. */
static qi_status call_run(qi_dit_call *c, const qi_ulysses *sp, qi_comm *comm, const qi_tensor *x,
                          const qi_tensor *ctx, qi_tensor *out, qi_error *err) {
    qi_dit *d = c->d;
    qi_backend *be = d->be;
    const qi_backend_ops *op = be->ops;
    const qi_dit_config *cfg = &d->cfg;
    int64_t D = cfg->inner_dim;
    if (!c->timestep_set)
        return qi_fail(err, QI_ERR_ARG, "transformer: run before the timestep was set (qi_dit_call_set_timestep, "
                       "or qi_dit_call_select_step after qi_dit_call_set_schedule)");
    size_t mark = op->mark(be);
    if (c->persistent) {
        /* a recorded run is replayed on the activations it was recorded with */
        if (c->run_mark == SIZE_MAX) c->run_mark = mark;
        if (mark != c->run_mark)
            return qi_fail(err, QI_ERR_ARG, "qi_dit_call_run: arena position %zu, not %zu as at the first run "
                           "(a call must run on the same activation addresses every time)", mark, c->run_mark);
    }
    dit_acts a;
    memset(&a, 0, sizeof a);
    a.B = c->B;
    a.Li = c->Li;
    a.Lt = c->Lt;
    a.Lj = c->Lj;
    a.sp = sp;
    a.comm = comm;
    a.key_mask = c->key_mask;
    a.have_mask = c->have_mask;
    a.zero_split = c->zero_split;
    a.L_out = (int64_t)c->grid_h * c->grid_w;
    a.mods0 = c->mods0;

    qi_status st = dit_alloc_acts(d, &a, err);
    if (st != QI_OK) goto done;
    if (c->rope->on_backend) {
        a.rope_cos = c->rope->cos;
        a.rope_sin = c->rope->sin;
    } else {
        int64_t ne[2] = {a.Lj, cfg->head_dim / 2};
        st = op->tensor(be, &a.rope_cos, QI_F32, 2, ne, err);
        if (st == QI_OK) st = op->tensor(be, &a.rope_sin, QI_F32, 2, ne, err);
        if (st == QI_OK) st = op->upload(be, &a.rope_cos, c->rope->host, err);
        if (st == QI_OK) st = op->upload(be, &a.rope_sin, c->rope->host + ne[0] * ne[1], err);
        if (st != QI_OK) goto done;
    }

    /* conditioning: temb and every modulation vector, before the blocks; a
     * schedule has them already (the selected step's, at a fixed address) */
    if (c->scheduled) {
        a.mods = c->mods;
    } else {
        qi_tensor temb_silu;
        st = dit_timestep_embedding(d, &c->sinus, &temb_silu, err);
        if (st != QI_OK) goto done;
        st = dit_compute_modulation(d, &temb_silu, &a, err);
        if (st != QI_OK) goto done;
    }

    /* input projections; the text gets an RMSNorm over joint_dim first */
    qi_tensor ctx_normed;
    st = qi_be_act3(be, &ctx_normed, a.B, a.Lt, cfg->joint_dim, err);
    if (st != QI_OK) goto done;
    dit_run_linear(d, x, &d->img_in, QI_ACT_NONE, &a.img, &st, err);
    op->rms_norm(be, ctx, &d->txt_norm, DIT_EPS, &ctx_normed);
    dit_run_linear(d, &ctx_normed, &d->txt_in, QI_ACT_NONE, &a.txt, &st, err);

    for (int i = 0; i < cfg->num_layers && st == QI_OK; i++) {
        dit_block blk;
        st = dit_stream_block(d, i, &blk, err); /* its matrices in a slot when it streams */
        /* hints across blocks; none into a streamed block: its device copies exist only once it is taken */
        a.next_linears[0] = a.next_linears[1] = NULL;
        if (i + 1 == cfg->num_layers) {
            a.next_linears[0] = &d->proj_out;
        } else if (!qi_wstream_streams(d->stream, i + 1)) {
            a.next_linears[0] = &d->blocks[i + 1].to_q;
            a.next_linears[1] = &d->blocks[i + 1].to_k;
        }
        if (st == QI_OK) st = dit_block_forward(d, i, &blk, &a, err);
    }
    if (st != QI_OK) goto done;

    /* norm_out: [scale | shift] — scale FIRST (trap 1), row stride 2D */
    qi_tensor out_mod = qi_slice_rows(&a.mods, 2 * (int64_t)cfg->num_layers * a.B, a.B);
    qi_tensor scale = out_mod, shift = out_mod;
    shift.data = (char *)out_mod.data + (size_t)D * qi_dtype_size(out_mod.dtype);
    op->layer_norm_mod(be, &a.img, &shift, &scale, 2 * D, DIT_EPS, &a.norm_i);
    dit_run_linear(d, &a.norm_i, &d->proj_out, QI_ACT_NONE, out, &st, err);
done:
    op->reset(be, mark);
    return st;
}

/* One eager call: its inputs in the arena, prepared, run, synchronised. */
static qi_status forward_eager(qi_dit *d, const qi_ulysses *sp, qi_comm *comm, const qi_tensor *x,
                               const qi_tensor *ctx, const qi_tensor *ctx_mask, const float *t, int grid_h,
                               int grid_w, const qi_dit_cond *cond, qi_tensor *out, qi_error *err) {
    qi_dit_call c;
    size_t mark = d->be->ops->mark(d->be);
    qi_status st = call_init(d, &c, x->ne[0], grid_h, grid_w, cond, ctx->ne[1], x->ne[1], 0, err);
    if (st == QI_OK) {
        st = call_set_mask(&c, ctx_mask, err);
        if (st == QI_OK) st = call_set_timestep(&c, t, err);
        if (st == QI_OK) st = call_run(&c, sp, comm, x, ctx, out, err);
        if (st == QI_OK) st = d->be->ops->sync(d->be, err);
        call_release(&c);
    }
    d->be->ops->reset(d->be, mark);
    return st;
}

qi_status qi_dit_forward(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx,
                         const qi_tensor *ctx_mask, const float *t, int grid_h, int grid_w,
                         qi_tensor *out, qi_error *err) {
    if (!d) return qi_fail(err, QI_ERR_ARG, "qi_dit_forward: no transformer");
    if (!t) return qi_fail(err, QI_ERR_ARG, "qi_dit_forward: x, ctx, t and out are required");
    qi_status st = check_inputs(d, "qi_dit_forward", x, ctx, ctx_mask, t, grid_h, grid_w,
                                (int64_t)grid_h * grid_w, out, err);
    if (st != QI_OK) return st;
    return forward_eager(d, NULL, NULL, x, ctx, ctx_mask, t, grid_h, grid_w, NULL, out, err);
}

static qi_status check_cond(const char *fn, const qi_dit_cond *cond, qi_error *err) {
    if (!cond) return QI_OK;
    if (cond->n < 0 || cond->n > QI_DIT_MAX_COND)
        return qi_fail(err, QI_ERR_ARG, "%s: %d condition segments (at most %d)", fn, cond->n, QI_DIT_MAX_COND);
    for (int k = 0; k < cond->n; k++)
        if (cond->hw[k][0] < 1 || cond->hw[k][1] < 1 || cond->hw[k][0] > 8192 || cond->hw[k][1] > 8192)
            return qi_fail(err, QI_ERR_ARG, "%s: condition segment %d has a %dx%d patch grid", fn, k + 1,
                           cond->hw[k][0], cond->hw[k][1]);
    return QI_OK;
}

qi_status qi_dit_forward_edit(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx, const qi_tensor *ctx_mask,
                              const float *t, int grid_h, int grid_w, const qi_dit_cond *cond, qi_tensor *out,
                              qi_error *err) {
    if (!d) return qi_fail(err, QI_ERR_ARG, "qi_dit_forward_edit: no transformer");
    if (!t) return qi_fail(err, QI_ERR_ARG, "qi_dit_forward_edit: x, ctx, t and out are required");
    qi_status st = check_cond("qi_dit_forward_edit", cond, err);
    if (st == QI_OK)
        st = check_inputs(d, "qi_dit_forward_edit", x, ctx, ctx_mask, t, grid_h, grid_w,
                          qi_dit_image_tokens(grid_h, grid_w, cond), out, err);
    if (st != QI_OK) return st;
    return forward_eager(d, NULL, NULL, x, ctx, ctx_mask, t, grid_h, grid_w, cond, out, err);
}

qi_status qi_dit_forward_sp(qi_dit *d, qi_comm *comm, const qi_tensor *x_local,
                            const qi_tensor *ctx, const qi_tensor *ctx_mask, const float *t,
                            int grid_h, int grid_w, qi_tensor *out_local, qi_error *err) {
    if (!comm) return qi_fail(err, QI_ERR_ARG, "qi_dit_forward_sp: no communicator");
    qi_ulysses plan;
    qi_status st = d ? QI_OK : qi_fail(err, QI_ERR_ARG, "qi_dit_forward_sp: no transformer");
    if (st == QI_OK && !t) st = qi_fail(err, QI_ERR_ARG, "qi_dit_forward_sp: x, ctx, t and out are required");
    if (st == QI_OK && (grid_h < 1 || grid_w < 1))
        st = qi_fail(err, QI_ERR_ARG, "qi_dit_forward_sp: patch grid %dx%d", grid_h, grid_w);
    if (st == QI_OK)
        st = qi_ulysses_plan(comm->size, comm->rank, (int64_t)grid_h * grid_w, d->cfg.num_heads,
                             d->cfg.head_dim, &plan, err);
    if (st == QI_OK)
        st = check_inputs(d, "qi_dit_forward_sp", x_local, ctx, ctx_mask, t, grid_h, grid_w,
                          qi_ulysses_shard_len(&plan, plan.rank), out_local, err);
    if (st == QI_OK)
        st = forward_eager(d, &plan, comm, x_local, ctx, ctx_mask, t, grid_h, grid_w, NULL, out_local, err);
    /* the other ranks may be waiting in a collective for this one: release them */
    if (st != QI_OK) qi_comm_abort(comm);
    return st;
}

/* ---- qi_dit_call: the same call split for recording ----------------------------------- */

qi_status qi_dit_call_create(qi_dit *d, int batch, int grid_h, int grid_w, int txt_len, qi_dit_call **out,
                             qi_error *err) {
    *out = NULL;
    if (!d) return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create: no transformer");
    if (batch < 1 || grid_h < 1 || grid_w < 1 || txt_len < 1)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create: batch %d, patch grid %dx%d, text length %d "
                       "(all must be >= 1)", batch, grid_h, grid_w, txt_len);
    qi_dit_call *c = malloc(sizeof *c);
    if (!c) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    qi_status st = call_init(d, c, batch, grid_h, grid_w, NULL, txt_len, (int64_t)grid_h * grid_w,
                             d->be->ops->persistent != NULL, err);
    if (st != QI_OK) {
        free(c);
        return st;
    }
    *out = c;
    return QI_OK;
}

qi_status qi_dit_call_create_edit(qi_dit *d, int batch, int grid_h, int grid_w, const qi_dit_cond *cond,
                                  int txt_len, qi_dit_call **out, qi_error *err) {
    *out = NULL;
    if (!d) return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create_edit: no transformer");
    qi_status st = check_cond("qi_dit_call_create_edit", cond, err);
    if (st != QI_OK) return st;
    if (batch < 1 || grid_h < 1 || grid_w < 1 || txt_len < 1)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create_edit: batch %d, patch grid %dx%d, text length %d "
                       "(all must be >= 1)", batch, grid_h, grid_w, txt_len);
    qi_dit_call *c = malloc(sizeof *c);
    if (!c) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    st = call_init(d, c, batch, grid_h, grid_w, cond, txt_len, qi_dit_image_tokens(grid_h, grid_w, cond),
                   d->be->ops->persistent != NULL, err);
    if (st != QI_OK) {
        free(c);
        return st;
    }
    *out = c;
    return QI_OK;
}

qi_status qi_dit_call_set_text_mask(qi_dit_call *c, const qi_tensor *ctx_mask, qi_error *err) {
    char s1[64];
    if (ctx_mask && (ctx_mask->dtype != QI_I32 || ctx_mask->ndim != 2 || ctx_mask->ne[0] != c->B ||
                     ctx_mask->ne[1] != c->Lt))
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_set_text_mask: ctx_mask is %s %s, expected I32 [%lld, %lld]",
                       qi_dtype_name(ctx_mask->dtype), qi_shape_str(ctx_mask, s1, sizeof s1), (long long)c->B,
                       (long long)c->Lt);
    return call_set_mask(c, ctx_mask, err);
}

int qi_dit_call_has_mask(const qi_dit_call *c) { return c->have_mask; }

qi_status qi_dit_call_set_timestep(qi_dit_call *c, const float *t, qi_error *err) {
    if (!t) return qi_fail(err, QI_ERR_ARG, "qi_dit_call_set_timestep: no timesteps");
    for (int64_t b = 0; b < c->B; b++)
        if (!isfinite(t[b]))
            return qi_fail(err, QI_ERR_ARG, "qi_dit_call_set_timestep: t[%lld] is not finite", (long long)b);
    return call_set_timestep(c, t, err);
}

qi_status qi_dit_call_set_schedule(qi_dit_call *c, const float *t_all, int steps, qi_error *err) {
    if (!t_all || steps < 1)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_set_schedule: %s", !t_all ? "no timesteps" : "steps must be >= 1");
    for (int64_t i = 0; i < (int64_t)steps * c->B; i++)
        if (!isfinite(t_all[i]))
            return qi_fail(err, QI_ERR_ARG, "qi_dit_call_set_schedule: t_all[step %lld][%lld] is not finite",
                           (long long)(i / c->B), (long long)(i % c->B));
    const qi_dit_config *cfg = &c->d->cfg;
    size_t step_bytes = (size_t)((2 * (int64_t)cfg->num_layers + 1) * c->B * 6 * cfg->inner_dim) *
                        qi_dtype_size(c->d->be->act_dtype);
    int64_t W = (int64_t)(DIT_SCHEDULE_BYTES / step_bytes);
    if (W < 1) W = 1;
    if (W > steps) W = steps;
    float *t_copy = malloc((size_t)steps * (size_t)c->B * sizeof *t_copy);
    if (!t_copy) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (timestep schedule)");
    memcpy(t_copy, t_all, (size_t)steps * (size_t)c->B * sizeof *t_copy);
    qi_status st = QI_OK;
    if (W != c->window || !c->sched_mods.data) {
        schedule_release(c);
        st = schedule_alloc(c, W, err);
    }
    free(c->sched_t);
    c->sched_t = t_copy;
    c->sched_steps = steps;
    c->win0 = -1; /* new timesteps: nothing precomputed yet */
    c->scheduled = st == QI_OK;
    c->timestep_set = 0;
    if (st != QI_OK) schedule_release(c);
    return st;
}

qi_status qi_dit_call_select_step(qi_dit_call *c, int step, qi_error *err) {
    if (!c->scheduled)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_select_step: no schedule (call qi_dit_call_set_schedule first)");
    if (step < 0 || step >= c->sched_steps)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_select_step: step %d of a %d-step schedule", step,
                       c->sched_steps);
    qi_backend *be = c->d->be;
    int64_t S = 2 * (int64_t)c->d->cfg.num_layers, B = c->B, D = c->d->cfg.inner_dim;
    qi_status st = QI_OK;
    if (c->win0 < 0 || step < c->win0 || step >= c->win0 + c->window) st = schedule_compute_window(c, step, err);
    if (st != QI_OK) return st;
    int64_t j = step - c->win0;
    /* the blocks' slots: one gather of S·B rows of 6D; norm_out's B rows of
     * 2D sit packed at the start of the last slot, as compute_modulation writes them */
    qi_tensor table = qi_view2(&c->sched_mods, S * c->window * B, 6 * D);
    qi_tensor ids = qi_slice_rows(&c->gather_ids, j, 1);
    qi_tensor blocks = qi_slice_rows(&c->mods, 0, S * B);
    qi_tensor out_mod = qi_slice_rows(&c->mods, S * B, B);
    out_mod.ne[1] = 2 * D;
    be->ops->embedding(be, &table, &ids, &blocks);
    be->ops->copy_rows(be, &c->sched_out, j * B, &out_mod, 0, B);
    c->timestep_set = 1;
    return QI_OK;
}

qi_status qi_dit_call_run(qi_dit_call *c, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *out,
                          qi_error *err) {
    qi_status st = check_inputs(c->d, "qi_dit_call_run", x, ctx, NULL, NULL, c->grid_h, c->grid_w, c->Li, out,
                                err);
    if (st != QI_OK) return st;
    if (x->ne[0] != c->B || ctx->ne[1] != c->Lt)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_run: batch %lld and text length %lld, but the call was "
                       "made for %lld and %lld", (long long)x->ne[0], (long long)ctx->ne[1], (long long)c->B,
                       (long long)c->Lt);
    if (c->has_sp)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_run: the call was made for a sequence-parallel rank "
                       "(run it with qi_dit_call_run_sp)");
    return call_run(c, NULL, NULL, x, ctx, out, err);
}

qi_status qi_dit_call_create_sp(qi_dit *d, const qi_comm *comm, int batch, int grid_h, int grid_w, int txt_len,
                                qi_dit_call **out, qi_error *err) {
    *out = NULL;
    if (!comm) return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create_sp: no communicator");
    if (!d) return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create_sp: no transformer");
    qi_ulysses plan;
    qi_status st = qi_ulysses_plan(comm->size, comm->rank, (int64_t)grid_h * grid_w, d->cfg.num_heads,
                                   d->cfg.head_dim, &plan, err);
    if (st != QI_OK) return st;
    if (batch < 1 || grid_h < 1 || grid_w < 1 || txt_len < 1)
        return qi_fail(err, QI_ERR_ARG, "qi_dit_call_create_sp: batch %d, patch grid %dx%d, text length %d "
                       "(all must be >= 1)", batch, grid_h, grid_w, txt_len);
    qi_dit_call *c = malloc(sizeof *c);
    if (!c) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    st = call_init(d, c, batch, grid_h, grid_w, NULL, txt_len, qi_ulysses_shard_len(&plan, plan.rank),
                   d->be->ops->persistent != NULL, err);
    if (st != QI_OK) {
        free(c);
        return st;
    }
    c->has_sp = 1;
    c->sp = plan;
    *out = c;
    return QI_OK;
}

qi_status qi_dit_call_run_sp(qi_dit_call *c, qi_comm *comm, const qi_tensor *x_local, const qi_tensor *ctx,
                             qi_tensor *out_local, qi_error *err) {
    qi_status st = QI_OK;
    if (!c->has_sp || !comm || comm->size != c->sp.size || comm->rank != c->sp.rank)
        st = qi_fail(err, QI_ERR_ARG, "qi_dit_call_run_sp: the call was made for %s, not rank %d of %d",
                     c->has_sp ? "another rank" : "one device (qi_dit_call_create)", comm ? comm->rank : -1,
                     comm ? comm->size : 0);
    if (st == QI_OK)
        st = check_inputs(c->d, "qi_dit_call_run_sp", x_local, ctx, NULL, NULL, c->grid_h, c->grid_w, c->Li,
                          out_local, err);
    if (st == QI_OK && (x_local->ne[0] != c->B || ctx->ne[1] != c->Lt))
        st = qi_fail(err, QI_ERR_ARG, "qi_dit_call_run_sp: batch %lld and text length %lld, but the call was "
                     "made for %lld and %lld", (long long)x_local->ne[0], (long long)ctx->ne[1], (long long)c->B,
                     (long long)c->Lt);
    if (st == QI_OK) st = call_run(c, &c->sp, comm, x_local, ctx, out_local, err);
    /* the other ranks may be waiting in a collective for this one: release them */
    if (st != QI_OK) qi_comm_abort(comm);
    return st;
}

void qi_dit_call_free(qi_dit_call *c) {
    if (!c) return;
    call_release(c);
    free(c);
}

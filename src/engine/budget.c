/*
 * budget.c — the engine under a device-memory budget (qi_open_options
 * .vram_bytes; 0 on a GPU: what it has free): the components' sizes read
 * from their sources, the residency plan (residency.h) made at open for a
 * default request and made again when a request needs more activations,
 * and the stage swap (the hooks of engine.h's qi_residency).
 *
 * What a plan changes where it is applied: the activation arena and the
 * quantised-weight scratch (the backend's `reserve`), the VAE's tiling
 * threshold, how the text encoder and the transformer load (streamed parts
 * as host weights), and — through the hooks — the text encoder freed after
 * the prompt and the transformer freed before the text encoder loads again
 * when they do not fit together.
 *
 * Not planned: several ranks (--devices): each would need its own plan.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

#define logf_(e, ...) qi_log_linef((e)->log, (e)->log_user, __VA_ARGS__)
#define GIB(x) ((double)(x) / (double)((size_t)1 << 30))

/* The most a plan's arena takes of what the budget leaves (what the CUDA
 * backend took by default before plans). */
#define ARENA_CAP ((size_t)32 << 30)
/* The default request a plan is made for at open: 1024², one image, 512 text tokens, 8 steps. */
#define PLAN_SIDE 1024
#define PLAN_TEXT 512
#define PLAN_STEPS 8

static size_t rounded(int64_t elems, size_t es) { return ((size_t)elems * es + 255) & ~(size_t)255; }

/* ---- sizes ----------------------------------------------------------------------- */

/* Which part of the plan a tensor of component c's source belongs to. */
static qi_residency_part part_of(qi_component c, const qi_source_tensor *t, int *index) {
    *index = -1;
    if (c == QI_COMPONENT_VAE) return qi_vae_binds(t->name) ? QI_PART_VAE : QI_PART_NONE;
    if (c == QI_COMPONENT_TEXT_ENCODER) {
        qi_te_unit u = qi_text_encoder_weight_unit(t->name, t->ndim, index);
        return u == QI_TE_UNIT_LAYER ? QI_PART_TE_LAYER : u == QI_TE_UNIT_EMBED ? QI_PART_TE_EMBED
               : u == QI_TE_UNIT_GLOBAL ? QI_PART_TE_GLOBAL : QI_PART_NONE;
    }
    qi_dit_unit u = qi_dit_weight_unit(t->name, t->ndim, index);
    return u == QI_DIT_UNIT_BLOCK ? QI_PART_DIT_BLOCK : u == QI_DIT_UNIT_MOD ? QI_PART_DIT_MOD : QI_PART_DIT_GLOBAL;
}

/* Device bytes of one weight on e's backend (its stored bytes where the
 * backend cannot say), and the scratch a linear reading it needs. */
static size_t weight_bytes(const qi_engine *e, const qi_source_tensor *t, size_t *scratch) {
    *scratch = 0;
    if (e->be->ops->weight_size) return e->be->ops->weight_size(e->be, t->dtype, t->ndim, t->shape, scratch);
    return t->nbytes;
}

/* Every weight the three sources hold, summed part by part; *scratch: the
 * largest linear's expansion scratch (the embedding table is read in place,
 * never expanded). */
static void tally_sources(qi_engine *e, qi_residency_tally *t, size_t *scratch) {
    const qi_component comps[] = {QI_COMPONENT_TEXT_ENCODER, QI_COMPONENT_VAE, QI_COMPONENT_TRANSFORMER};
    *scratch = 0;
    for (size_t k = 0; k < QI_ARRAY_LEN(comps); k++) {
        const qi_source *src = e->src[comps[k]];
        for (int i = 0; src && i < qi_source_tensor_count(src); i++) {
            qi_source_tensor st;
            qi_source_tensor_at(src, i, &st);
            int index;
            qi_residency_part part = part_of(comps[k], &st, &index);
            if (part == QI_PART_NONE) continue;
            size_t s, bytes = weight_bytes(e, &st, &s);
            if (part != QI_PART_TE_EMBED && s > *scratch) *scratch = s;
            qi_residency_tally_add(t, part, index, bytes);
        }
    }
}

/* Device bytes of the vision tower in the text encoder's source (visual.*, model.visual.*): an Edit
 * model keeps it resident once its first request loads it (engine/edit_generate.c). */
static size_t vision_bytes(qi_engine *e) {
    const qi_source *src = e->src[QI_COMPONENT_TEXT_ENCODER];
    size_t sum = 0, scratch;
    for (int i = 0; src && i < qi_source_tensor_count(src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        if (!strncmp(t.name, "visual.", 7) || !strncmp(t.name, "model.visual.", 13)) sum += weight_bytes(e, &t, &scratch);
    }
    return sum;
}

/* The type most of a component's streamable matrices are stored as, for messages. */
static const char *main_type(const qi_source *src, qi_component c) {
    int counts[64] = {0}, best = -1;
    for (int i = 0; src && i < qi_source_tensor_count(src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        int index;
        qi_residency_part p = part_of(c, &t, &index);
        if ((p == QI_PART_TE_LAYER || p == QI_PART_DIT_BLOCK) && (int)t.dtype >= 0 && (int)t.dtype < 64 &&
            ++counts[t.dtype] > (best < 0 ? 0 : counts[best]))
            best = (int)t.dtype;
    }
    return best < 0 ? "" : qi_dtype_name((qi_dtype)best);
}

/* ---- needs ----------------------------------------------------------------------- */

/* Arena bytes of a request: B prompts of up to `text` tokens each encoded,
 * `batch` images of w × h denoised in `calls` transformer calls per step,
 * one image decoded (whole or in tiles), and — enc_w × enc_h pixels, 0 × 0
 * for none — input pictures encoded one at a time (whole or in tiles). */
static qi_residency_need need_of(qi_engine *e, int prompts, int batch, int width, int height, int text,
                                 int steps, int calls, int enc_w, int enc_h) {
    size_t es = qi_dtype_size(e->be->act_dtype);
    const qi_dit_config *d = &e->dit_cfg;
    int64_t Li = (int64_t)(height / 16) * (width / 16), Lt = text;
    qi_residency_need n;
    memset(&n, 0, sizeof n);
    n.text = qi_text_encoder_act_bytes(&e->te_cfg, es, prompts, QI_PROMPT_DROP_IDX + text);
    /* the denoising loop's own inputs (denoise.c rank_setup): text, its mask, latents, predictions */
    size_t inputs = (size_t)calls * (rounded(batch * Lt * d->joint_dim, es) + rounded(batch * Lt, 4)) +
                    (size_t)(1 + calls) * rounded(batch * Li * d->in_channels, es);
    n.dit = inputs + qi_dit_step_bytes(d, es, batch, (int)Li, (int)Lt, steps, calls);
    qi_vae_tiling tiling = qi_vae_tiling_default();
    n.vae_untiled = e->vae ? qi_vae_untiled_bytes(e->vae, height / 8, width / 8) : 0;
    n.vae_tiled = e->vae ? qi_vae_untiled_bytes(e->vae, tiling.tile_latent, tiling.tile_latent) : 0;
    if (n.vae_tiled > n.vae_untiled) n.vae_tiled = n.vae_untiled;
    if (e->vae && enc_w > 0 && enc_h > 0) { /* the tile of the default tiling, as for the decode */
        int tile = tiling.tile_latent * qi_vae_scale_factor(e->vae);
        n.vae_enc_untiled = qi_vae_encode_untiled_bytes(e->vae, enc_h, enc_w);
        n.vae_enc_tiled = qi_vae_encode_untiled_bytes(e->vae, enc_h < tile ? enc_h : tile, enc_w < tile ? enc_w : tile);
    }
    snprintf(e->need_what, sizeof e->need_what, "%dx%d, %d image%s, %d text tokens", width, height, batch,
             batch == 1 ? "" : "s", text);
    n.what = e->need_what;
    return n;
}

/* The arena a plan gets: its need and what the budget leaves besides (larger
 * requests then run without planning again), up to ARENA_CAP. */
static size_t arena_of(const qi_residency_plan *p) {
    size_t peak = p->text_peak > p->dit_peak ? p->text_peak : p->dit_peak;
    size_t arena = p->arena + (p->budget > peak ? p->budget - peak : 0);
    if (arena > ARENA_CAP && p->arena <= ARENA_CAP) arena = ARENA_CAP;
    return arena < p->arena ? p->arena : arena;
}

/* ---- the text encoder alone (`qwen-image encode`) ------------------------------------- */

qi_status qi_plan_text_encoder(qi_backend *be, const qi_source *src, size_t vram, int prompts, int max_len,
                               int *stream, qi_error *err) {
    *stream = 0;
    if (!vram) return QI_OK;
    qi_text_encoder_config cfg;
    qi_status st = qi_text_encoder_source_config(src, &cfg, err);
    if (st != QI_OK) return st;
    qi_residency_tally *t = calloc(1, sizeof *t);
    if (!t) return qi_fail(err, QI_ERR_NOMEM, "out of memory (memory plan)");
    size_t scratch = 0;
    for (int i = 0; i < qi_source_tensor_count(src); i++) {
        qi_source_tensor ts;
        qi_source_tensor_at(src, i, &ts);
        int index;
        qi_residency_part part = part_of(QI_COMPONENT_TEXT_ENCODER, &ts, &index);
        if (part == QI_PART_NONE) continue;
        size_t sc = 0, bytes = be->ops->weight_size ? be->ops->weight_size(be, ts.dtype, ts.ndim, ts.shape, &sc)
                                                    : ts.nbytes;
        if (part != QI_PART_TE_EMBED && sc > scratch) scratch = sc;
        qi_residency_tally_add(t, part, index, bytes);
    }
    qi_residency_sizes s = qi_residency_tally_sizes(t);
    free(t);
    size_t fixed = 0;
    if (be->ops->mem_usage) be->ops->mem_usage(be, &fixed, NULL);
    s.fixed = fixed + scratch;
    s.te_type = main_type(src, QI_COMPONENT_TEXT_ENCODER);
    s.dit_type = "";
    char what[64];
    snprintf(what, sizeof what, "%d prompt%s of up to %d tokens", prompts, prompts == 1 ? "" : "s", max_len);
    qi_residency_need n = {.text = qi_text_encoder_act_bytes(&cfg, qi_dtype_size(be->act_dtype), prompts,
                                                             QI_PROMPT_DROP_IDX + max_len),
                           .what = what};
    qi_residency_plan p; /* no transformer, no VAE: step 1 (whole) or 4 (streamed) */
    if ((st = qi_residency_plan_make(vram, &s, &n, &p, err)) != QI_OK) return st;
    *stream = p.te_stream;
    /* the arena and the quantised-weight scratch as planned (a host embedding table never sizes it) */
    return be->ops->reserve ? be->ops->reserve(be, arena_of(&p), scratch, err) : QI_OK;
}

/* ---- applying a plan ----------------------------------------------------------------- */

static void free_text_encoder(qi_engine *e, const char *why) {
    if (!e->te) return;
    qi_text_encoder_free(e->te);
    e->te = NULL;
    e->te_frees++;
    logf_(e, "text encoder freed (%s)", why);
}

static void free_transformer(qi_engine *e, const char *why) {
    if (!e->ranks->dit[0]) return;
    qi_denoise_release(e->ranks);
    qi_ranks_free_dits(e->ranks);
    e->dit_stale = 1;
    e->dit_evictions++;
    logf_(e, "transformer freed (%s)", why);
}

/* Makes p the plan in force: what loaded under another plan goes (to load
 * again under this one), the arena and scratch take their sizes. */
static qi_status apply(qi_engine *e, const qi_residency_plan *p) {
    if (e->planned && (p->resident_blocks != e->plan.resident_blocks || p->mod_resident != e->plan.mod_resident))
        free_transformer(e, "the plan keeps other blocks resident");
    if (e->planned && p->te_stream != e->plan.te_stream) free_text_encoder(e, "the plan streams it differently");
    size_t arena = arena_of(p);
    qi_denoise_release(e->ranks); /* recordings read the old arena */
    qi_status st = e->be->ops->reserve(e->be, arena, e->weight_scratch, &e->err);
    if (st != QI_OK) return qi_fail_ctx(&e->err, st, "the --vram plan's activation arena (%.2f GiB)", GIB(arena));
    qi_vae_tiling t = qi_vae_tiling_default();
    if (arena < t.max_untiled_bytes) t.max_untiled_bytes = arena; /* whole when it fits the arena, else in tiles */
    if (e->vae && (st = qi_vae_set_tiling(e->vae, &t, &e->err)) != QI_OK) return st;
    e->plan = *p;
    e->planned = 1;
    e->dit_res.resident_blocks = p->resident_blocks;
    e->dit_res.mod_resident = p->mod_resident;
    char line[640];
    qi_residency_plan_describe(&e->sizes, p, line, sizeof line);
    logf_(e, "memory plan: %s", line);
    return QI_OK;
}

/* ---- the stage swap ---------------------------------------------------------------- */

/* Before a component loads: make room for it. */
static qi_status on_acquire(void *user, qi_engine *e, qi_component c, qi_error *err) {
    (void)user;
    (void)err;
    if (c == QI_COMPONENT_TEXT_ENCODER && !e->te && e->plan.dit_evict)
        free_transformer(e, "it does not fit beside the text encoder: loaded again after the prompt");
    if (c == QI_COMPONENT_TRANSFORMER && e->plan.te_swap)
        free_text_encoder(e, "stage swap: the transformer needs the memory");
    return QI_OK;
}

/* After a stage: the text encoder goes when the plan swaps it. */
static void on_release(void *user, qi_engine *e, qi_component c) {
    (void)user;
    if (c == QI_COMPONENT_TEXT_ENCODER && e->plan.te_swap)
        free_text_encoder(e, "stage swap: loaded again for the next prompt; the prompt's embeddings are kept");
}

/* ---- at open, per request ---------------------------------------------------------------- */

/* The budget: the one given, or what the device has free (plus what this
 * backend holds already), capped at that. */
static qi_status budget_of(qi_engine *e, size_t want, size_t held, size_t *out) {
    size_t free_b = 0, total = 0;
    if (!e->be->ops->mem_info) {
        *out = want;
        return QI_OK;
    }
    qi_status st = e->be->ops->mem_info(e->be, &free_b, &total, &e->err);
    if (st != QI_OK) return st;
    size_t avail = free_b + held;
    *out = want && want < avail ? want : avail;
    if (want > avail)
        logf_(e, "--vram %.2f GiB: the device has %.2f GiB free (of %.2f), so the plan is for %.2f GiB", GIB(want),
              GIB(free_b), GIB(total), GIB(avail));
    return QI_OK;
}

qi_status qi_engine_plan_open(qi_engine *e, const qi_open_options *opt) {
    qi_backend *be = e->be;
    if (e->ranks->n > 1) {
        if (!opt->vram_bytes) return QI_OK;
        return qi_fail(&e->err, QI_ERR_UNSUPPORTED, "--vram with --devices: a memory plan covers one device; "
                       "give one --device, or drop --vram");
    }
    if (!opt->vram_bytes && !be->ops->mem_info) return QI_OK; /* the CPU by default: no plan */
    if (!be->ops->reserve)
        return qi_fail(&e->err, QI_ERR_UNSUPPORTED, "--vram: backend %s cannot size its buffers to a plan",
                       be->ops->name);
    size_t fixed = 0;
    if (be->ops->mem_usage) be->ops->mem_usage(be, &fixed, NULL); /* nothing loaded yet: the backend's own */
    qi_status st = QI_OK;
    const qi_component comps[] = {QI_COMPONENT_TEXT_ENCODER, QI_COMPONENT_VAE, QI_COMPONENT_TRANSFORMER};
    for (size_t k = 0; k < QI_ARRAY_LEN(comps) && st == QI_OK; k++)
        st = qi_model_files_open_source(&e->files, comps[k], &e->src[comps[k]], &e->err);
    if (st == QI_OK) st = qi_text_encoder_source_config(e->src[QI_COMPONENT_TEXT_ENCODER], &e->te_cfg, &e->err);
    if (st == QI_OK) st = qi_dit_read_config(e->src[QI_COMPONENT_TRANSFORMER], &e->dit_cfg, &e->err);
    e->configs_read = st == QI_OK;
    if (st == QI_OK) st = qi_engine_acquire(e, QI_COMPONENT_VAE); /* small, always resident; its needs come from it */
    if (st != QI_OK) return st;
    qi_residency_tally *t = calloc(1, sizeof *t); /* 24 KiB of per-unit sums */
    if (!t) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory (memory plan)");
    tally_sources(e, t, &e->weight_scratch);
    e->sizes = qi_residency_tally_sizes(t);
    free(t);
    e->sizes.fixed = fixed + e->weight_scratch;
    e->sizes.vision = opt->edit ? vision_bytes(e) : 0;
    e->sizes.te_type = main_type(e->src[QI_COMPONENT_TEXT_ENCODER], QI_COMPONENT_TEXT_ENCODER);
    e->sizes.dit_type = main_type(e->src[QI_COMPONENT_TRANSFORMER], QI_COMPONENT_TRANSFORMER);
    size_t budget;
    if ((st = budget_of(e, opt->vram_bytes, fixed + e->sizes.vae + be->arena_bytes, &budget)) != QI_OK) return st;
    e->budget = budget;
    /* an Edit model's requests encode their pictures at the Edit pipeline's VAE area (1024²) */
    int enc = opt->edit ? PLAN_SIDE : 0;
    qi_residency_need n = need_of(e, 1, 1, PLAN_SIDE, PLAN_SIDE, PLAN_TEXT, PLAN_STEPS, 1, enc, enc);
    qi_residency_plan p;
    if ((st = qi_residency_plan_make(budget, &e->sizes, &n, &p, &e->err)) != QI_OK) return st;
    e->need = n;
    e->residency.acquire = on_acquire;
    e->residency.release = on_release;
    return apply(e, &p);
}

/* ---- a request against an engine without a plan ------------------------------------------ */

/* The text encoder's and transformer's configs, from their sources (no
 * weights read), once: what need_of sizes a request with. */
static qi_status read_configs(qi_engine *e) {
    if (e->configs_read) return QI_OK;
    const qi_component comps[] = {QI_COMPONENT_TEXT_ENCODER, QI_COMPONENT_TRANSFORMER};
    qi_status st = QI_OK;
    for (size_t k = 0; k < QI_ARRAY_LEN(comps) && st == QI_OK; k++)
        if (!e->src[comps[k]]) st = qi_model_files_open_source(&e->files, comps[k], &e->src[comps[k]], &e->err);
    if (st == QI_OK) st = qi_text_encoder_source_config(e->src[QI_COMPONENT_TEXT_ENCODER], &e->te_cfg, &e->err);
    if (st == QI_OK) st = qi_dit_read_config(e->src[QI_COMPONENT_TRANSFORMER], &e->dit_cfg, &e->err);
    e->configs_read = st == QI_OK;
    return st;
}

/* The picture an img2img / inpaint request encodes: its own size (the
 * picture is resized to it); 0 × 0 for none. (An Edit request encodes its
 * pictures before its plan is made: the plan at open counts them.) */
static int enc_w(const qi_plan *p) { return p->has_init ? p->width : 0; }
static int enc_h(const qi_plan *p) { return p->has_init ? p->height : 0; }

/* Host bytes a request's own buffers take at least for `batch` images (stages.c,
 * output): the packed noise, the VAE's input latents, the RGB8 images and one
 * image decoded in float32. */
static uint64_t host_need(const qi_plan *p, int batch) {
    uint64_t b = (uint64_t)batch, px = (uint64_t)p->width * (uint64_t)p->height;
    uint64_t noise = b * (uint64_t)p->img_tokens * (uint64_t)p->packed_ch * sizeof(float);
    uint64_t latents = b * QI_LATENT_CHANNELS * (uint64_t)p->lat_h * (uint64_t)p->lat_w * sizeof(float);
    return noise + latents + b * px * 3 + 3 * px * sizeof(float);
}

/* The largest part of a request's activations (text, denoising, decode: they
 * take turns in the arena) and which stage it is. */
static size_t largest_stage(qi_engine *e, const qi_plan *p, int batch, const char **stage) {
    int calls = p->do_cfg ? 2 : 1;
    qi_residency_need n = need_of(e, p->n_prompts, batch, p->width, p->height, p->req->max_sequence_length,
                                  p->steps, calls, enc_w(p), enc_h(p));
    size_t vae = e->vae && qi_vae_will_tile(e->vae, p->lat_h, p->lat_w) ? n.vae_tiled : n.vae_untiled;
    size_t enc = e->vae && qi_vae_will_tile_encode(e->vae, p->height, p->width) ? n.vae_enc_tiled : n.vae_enc_untiled;
    *stage = "denoising";
    size_t most = n.dit;
    if (n.text > most) most = n.text, *stage = "the text encoder";
    if (vae > most) most = vae, *stage = "the VAE decode";
    if (enc > most) most = enc, *stage = "the VAE encode";
    return most;
}

/* Whether `batch` images of the plan's size fit: their activations within
 * cap (FIT_ARENA), their host buffers within cap (FIT_HOST), or a plan of
 * the engine's budget (FIT_PLAN). */
enum { FIT_ARENA, FIT_HOST, FIT_PLAN };
static int batch_fits(qi_engine *e, const qi_plan *p, int batch, int how, uint64_t cap) {
    const char *stage;
    if (how == FIT_HOST) return host_need(p, batch) <= cap;
    if (how == FIT_ARENA) return largest_stage(e, p, batch, &stage) <= cap;
    int prompts = p->n_prompts < batch ? p->n_prompts : batch;
    qi_residency_need n = need_of(e, prompts, batch, p->width, p->height, p->req->max_sequence_length, p->steps,
                                  p->do_cfg ? 2 : 1, enc_w(p), enc_h(p));
    qi_residency_plan np;
    qi_error err;
    return qi_residency_plan_make(e->budget, &e->sizes, &n, &np, &err) == QI_OK;
}

/* The most images of the plan's size (up to its batch) that fit: need grows
 * with the batch, so a bisection finds it. */
static int most_images_that_fit(qi_engine *e, const qi_plan *p, int how, uint64_t cap) {
    int lo = 0, hi = p->batch;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (batch_fits(e, p, mid, how, cap)) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* What to change, after "more than <cap>": fewer images, or a smaller size. */
static void advice(const qi_plan *p, int fit, char *out, size_t cap) {
    if (fit == 0)
        snprintf(out, cap, "even one %dx%d image does not fit: use a smaller size (-W/-H)", p->width, p->height);
    else
        snprintf(out, cap, "at most %d image%s of %dx%d fit: lower --batch (or give fewer prompts), or the "
                 "size (-W/-H)", fit, fit == 1 ? "" : "s", p->width, p->height);
}

/* Without a plan: the request's activations against the arena (the CPU's:
 * physical memory, or half of what ulimit -v leaves; a GPU's without a plan:
 * the one it reserved), and its host buffers against the host's memory. */
static qi_status check_unplanned(qi_engine *e, const qi_plan *p) {
    char todo[160];
    const char *stage;
    qi_status st = e->ranks->n == 1 ? read_configs(e) : QI_OK; /* several ranks: each holds a share */
    if (st != QI_OK) return qi_fail_ctx(&e->err, st, "sizing this request");
    size_t need = e->ranks->n == 1 ? largest_stage(e, p, p->batch, &stage) : 0;
    if (e->be->arena_bytes && need > e->be->arena_bytes) {
        advice(p, most_images_that_fit(e, p, FIT_ARENA, e->be->arena_bytes), todo, sizeof todo);
        largest_stage(e, p, p->batch, &stage); /* need_what: this request again, not the bisection's last */
        return qi_fail(&e->err, QI_ERR_NOMEM, "request does not fit (%s): %s needs at least %.2f GiB of "
                       "activations, more than the %.2f GiB activation arena of the %s backend; %s", e->need_what,
                       stage, GIB(need), GIB(e->be->arena_bytes), e->be->ops->name, todo);
    }
    uint64_t host = qi_host_memory_bytes(), hneed = host_need(p, p->batch);
    if (host && hneed > host) {
        advice(p, most_images_that_fit(e, p, FIT_HOST, host), todo, sizeof todo);
        return qi_fail(&e->err, QI_ERR_NOMEM, "request does not fit: %d image%s of %dx%d need at least %.2f GiB "
                       "of host memory for their noise, latents and pixels, more than the %.2f GiB this process "
                       "may use (physical memory, or what ulimit -v allows); %s", p->batch,
                       p->batch == 1 ? "" : "s", p->width, p->height, GIB(hneed), GIB(host), todo);
    }
    return QI_OK;
}

qi_status qi_engine_plan_request(qi_engine *e, const qi_plan *p) {
    if (!e->planned) return check_unplanned(e, p);
    int text = p->req->max_sequence_length, calls = p->do_cfg ? 2 : 1;
    qi_residency_need n = need_of(e, p->n_prompts, p->batch, p->width, p->height, text, p->steps, calls, enc_w(p),
                                  enc_h(p));
    size_t vae = n.vae_untiled <= e->be->arena_bytes ? n.vae_untiled : n.vae_tiled;
    size_t enc = n.vae_enc_untiled <= e->be->arena_bytes ? n.vae_enc_untiled : n.vae_enc_tiled;
    if (n.text <= e->be->arena_bytes && n.dit <= e->be->arena_bytes && vae <= e->be->arena_bytes &&
        enc <= e->be->arena_bytes)
        return QI_OK;
    qi_residency_plan np;
    qi_status st = qi_residency_plan_make(e->budget, &e->sizes, &n, &np, &e->err);
    if (st != QI_OK) {
        char todo[160], what[96];
        snprintf(what, sizeof what, "%s", n.what);
        advice(p, most_images_that_fit(e, p, FIT_PLAN, 0), todo, sizeof todo);
        qi_fail_ctx(&e->err, st, "this request (%s) under the memory plan (%s)", what, todo);
        return st;
    }
    logf_(e, "this request (%s) needs %.2f GiB of activations, more than the plan's %.2f GiB: planning again",
          n.what, GIB(n.dit > n.text ? n.dit : n.text), GIB(e->be->arena_bytes));
    e->need = n;
    return apply(e, &np);
}

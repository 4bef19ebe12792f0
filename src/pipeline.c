/*
 * pipeline.c — prompt → image: the one place that knows the order of stages.
 *
 *   tokenize → text encoder → noise → [transformer (+ uncond) → CFG → Euler] × steps
 *            → unpack → VAE decoder → RGB8
 *
 * It owns the engine (backend + loaded models) and the public API of
 * qwen_image.h. On one device whose backend records graphs, the step's
 * device work (transformer call(s) + CFG combine) is recorded once and
 * replayed per step (step_graph_*; QI_CUDA_GRAPHS=0 runs it eagerly, with
 * bit-identical results); the Euler update stays outside (its coefficient
 * changes per step). Both run the transformer through qi_dit_calls given the
 * generation's whole timestep schedule: the modulation of every step is
 * computed in one batched pass, and each step selects its slice (one device
 * copy before the step, outside the recording). Each stage lives in its own file; this file only moves data
 * between them and checks the request. The behaviour follows diffusers'
 * QwenImagePipeline (see shared/docs/spec/denoiser.md §3), with one deliberate
 * divergence: for several prompts with num_images_per_prompt > 1 diffusers
 * tiles the text mask in a different order from the embeddings (a quirk,
 * denoiser spec "num_images_per_prompt"); we repeat both per prompt.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend/backend.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"
#include "model/prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "model/vae.h"
#include "pipeline.h"
#include "pipeline_parallel.h"
#include "sample/latents.h"
#include "sample/rng.h"
#include "sample/scheduler.h"

#define LATENT_CHANNELS 16

/* What a recorded denoising step depends on: the shapes, the CFG scale (a
 * kernel argument), whether each text has padding (the attention's mask
 * argument) and every address it reads or writes. Zero-filled, compared
 * whole. */
typedef struct step_key {
    int batch, grid_h, grid_w, pos_len, neg_len; /* neg_len 0: no true CFG */
    float cfg;
    int pos_mask, neg_mask;
    size_t arena_mark;                           /* where the step's activations start */
    const void *latents, *v_cond, *v_uncond, *pos_ctx, *neg_ctx;
} step_key;

/* The denoising step's transformer calls and, on a backend with graph ops,
 * its recording (the calls and the CFG combine, recorded once and replayed
 * per step; kept across requests of the same key). Without a recording the
 * calls are made per request (eager_calls in qi_generate). */
typedef struct step_graph {
    qi_dit_call *cond, *uncond;
    qi_graph *graph;
    step_key key;
} step_graph;

struct qi_engine {
    qi_model_dir dir;
    qi_backend *be;
    qi_tokenizer *tok;
    qi_text_encoder *te;
    qi_vae *vae;
    qi_dit *dit;          /* loaded on first use, with the LoRAs added so far */
    qi_source *src_te, *src_vae; /* weight sources; open while their models live */
    qi_source *src_dit;   /* opened on first use, kept for reloads and every rank */
    qi_parallel *par;     /* several devices (opt->devices): ranks 1.. (be and dit are rank 0's) */
    qi_lora_set *loras;   /* NULL when none */
    int dit_stale;        /* a LoRA was added after the transformer was loaded */
    int loras_loaded;     /* LoRA files fused into the transformer of the last successful load */
    qi_log_fn log;
    void *log_user;
    qi_error err;
    qi_timings last;
    step_graph steps;     /* recorded denoising step (pipeline with graphs) */
};

qi_open_options qi_open_options_default(void) {
    qi_open_options o;
    memset(&o, 0, sizeof o);
    o.device = "cpu";
    return o;
}

qi_request qi_request_default(void) {
    qi_request r;
    memset(&r, 0, sizeof r);
    r.width = 1024;
    r.height = 1024;
    r.steps = 8;
    r.cfg = 1.0f;
    r.seed = 42;
    r.batch = 1;
    r.rng = QI_RNG_CPU;
    r.max_sequence_length = 512;
    return r;
}

const char *qi_engine_error(const qi_engine *e) { return e ? e->err.msg : "no engine (out of memory)"; }

const qi_timings *qi_engine_timings(const qi_engine *e) { return &e->last; }

#define logf_(e, ...) qi_log_linef((e)->log, (e)->log_user, __VA_ARGS__)

double qi_peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

/* Parses "cpu", "cuda", "cuda:N". */
static qi_status make_backend(const char *device, int threads, qi_backend **be, qi_error *err) {
    if (!device || !strcmp(device, "cpu")) return qi_backend_cpu_create(threads, 0, be, err);
    if (!strncmp(device, "cuda", 4)) {
        int idx = 0;
        if (device[4] == ':') {
            char *end;
            long v = strtol(device + 5, &end, 10);
            if (*end || v < 0 || v > 63)
                return qi_fail(err, QI_ERR_ARG, "--device %s: expected cuda or cuda:N", device);
            idx = (int)v;
        } else if (device[4]) {
            return qi_fail(err, QI_ERR_ARG, "--device %s: expected cpu, cuda or cuda:N", device);
        }
        return qi_backend_cuda_create(idx, 0, be, err);
    }
    return qi_fail(err, QI_ERR_ARG, "--device %s: expected cpu, cuda or cuda:N", device);
}

qi_status qi_engine_open(const qi_open_options *opt, qi_engine **out) {
    qi_engine *e = calloc(1, sizeof *e);
    *out = e;
    if (!e) return QI_ERR_NOMEM;
    e->log = opt->log;
    e->log_user = opt->log_user;
    if (!opt->model_dir)
        return qi_fail(&e->err, QI_ERR_ARG, "no model directory given (-m DIR: a Qwen/Qwen-Image download)");
    qi_status st;
    if ((st = qi_model_dir_open(opt->model_dir, &e->dir, &e->err))) return st;
    st = opt->devices ? qi_parallel_open(opt, e->dir.transformer_dir, &e->par, &e->be, &e->err)
                      : make_backend(opt->device, opt->threads, &e->be, &e->err);
    if (st) return st;
    if (opt->random_weights) {
        if (!e->be->ops->random_weights)
            return qi_fail(&e->err, QI_ERR_UNSUPPORTED, "backend %s cannot make random weights (benchmarks need "
                                                        "--device cuda)", e->be->ops->name);
        if ((st = e->be->ops->random_weights(e->be, opt->random_weights, &e->err))) return st;
    }
    double t0 = qi_now_s();
    logf_(e, "loading tokenizer, text encoder and VAE from %s ...", opt->model_dir);
    if ((st = qi_tokenizer_load(e->dir.tokenizer_dir, &e->tok, &e->err))) return st;
    if ((st = qi_source_open_folder(e->dir.text_encoder_dir, QI_COMPONENT_TEXT_ENCODER, &e->src_te, &e->err)) ||
        (st = qi_text_encoder_load(e->src_te, e->be, &e->te, &e->err)))
        return st;
    if ((st = qi_source_open_folder(e->dir.vae_dir, QI_COMPONENT_VAE, &e->src_vae, &e->err)) ||
        (st = qi_vae_load(e->src_vae, e->be, &e->vae, &e->err)))
        return st;
    logf_(e, "loaded tokenizer, text encoder and VAE from %s in %.2f s", opt->model_dir, qi_now_s() - t0);
    return QI_OK;
}

qi_status qi_engine_add_lora(qi_engine *e, const char *path, float strength) {
    if (!path) return qi_fail(&e->err, QI_ERR_ARG, "LoRA path is NULL");
    qi_status st = qi_lora_set_add(&e->loras, path, strength, &e->err);
    if (st) return st;
    if (e->dit) e->dit_stale = 1; /* fused at load time: reload with the new set */
    return QI_OK;
}

static void step_calls_free(qi_backend *be, step_graph *g) {
    if (g->graph) be->ops->graph_free(be, g->graph);
    qi_dit_call_free(g->cond);
    qi_dit_call_free(g->uncond);
    memset(g, 0, sizeof *g);
}

static void step_graph_free(qi_engine *e) { step_calls_free(e->be, &e->steps); }

static qi_status ensure_dit(qi_engine *e) {
    if (e->dit && !e->dit_stale) return QI_OK;
    step_graph_free(e); /* recorded on the old transformer's weights */
    if (e->dit) {
        qi_dit_free(e->dit);
        e->dit = NULL;
    }
    double t0 = qi_now_s();
    int n_loras = qi_lora_set_file_count(e->loras);
    if (n_loras) logf_(e, "loading transformer from %s and fusing %d LoRA file(s) ...", e->dir.transformer_dir, n_loras);
    else logf_(e, "loading transformer from %s ...", e->dir.transformer_dir);
    qi_status st = e->src_dit ? QI_OK
                              : qi_source_open_folder(e->dir.transformer_dir, QI_COMPONENT_TRANSFORMER,
                                                      &e->src_dit, &e->err);
    if (st) return st;
    st = e->par ? qi_parallel_load_dits(e->par, e->src_dit, e->loras, &e->dit, &e->err)
                : qi_dit_load(e->src_dit, e->be, e->loras, &e->dit, &e->err);
    if (st) {
        /* LoRA files are only matched against the weights here. Drop the ones
         * added since the last good load, so the engine does not stay broken:
         * the next generate reloads with the LoRAs that worked. */
        int n = qi_lora_set_file_count(e->loras);
        if (n > e->loras_loaded) {
            qi_lora_set_truncate(e->loras, e->loras_loaded);
            e->dit_stale = 1;
            qi_fail_ctx(&e->err, st, "the %d LoRA file(s) added since the last load were removed from the engine",
                        n - e->loras_loaded);
        }
        return st;
    }
    e->loras_loaded = qi_lora_set_file_count(e->loras);
    e->dit_stale = 0;
    logf_(e, "loaded transformer in %.2f s", qi_now_s() - t0);
    return QI_OK;
}

qi_backend *qi_engine_backend(qi_engine *e) { return e->be; }
qi_text_encoder *qi_engine_text_encoder(qi_engine *e) { return e->te; }
qi_vae *qi_engine_vae(qi_engine *e) { return e->vae; }
qi_status qi_engine_dit(qi_engine *e, qi_dit **out) {
    qi_status st = ensure_dit(e);
    *out = st ? NULL : e->dit;
    return st;
}

void qi_engine_close(qi_engine *e) {
    if (!e) return;
    if (e->be) step_graph_free(e);
    if (e->dit) qi_dit_free(e->dit);
    if (e->vae) qi_vae_free(e->vae);
    if (e->te) qi_text_encoder_free(e->te);
    if (e->tok) qi_tokenizer_free(e->tok);
    if (e->loras) qi_lora_set_free(e->loras);
    qi_parallel_free(e->par);
    qi_source_close(e->src_dit); /* after every model loaded from them */
    qi_source_close(e->src_vae);
    qi_source_close(e->src_te);
    if (e->be) e->be->ops->destroy(e->be);
    free(e);
}

void qi_image_free(qi_image *img) {
    if (!img) return;
    free(img->rgb);
    free(img->latents);
    memset(img, 0, sizeof *img);
}

/* ---- request checks ------------------------------------------------------------ */

static qi_status check_request(const qi_request *r, qi_error *err) {
    if (!r->prompt && !r->prompts) return qi_fail(err, QI_ERR_ARG, "no prompt given (-p TEXT)");
    if (r->prompts) {
        if (r->n_prompts < 1 || r->n_prompts > 4096)
            return qi_fail(err, QI_ERR_ARG, "n_prompts %d: must be between 1 and 4096", r->n_prompts);
        for (int i = 0; i < r->n_prompts; i++)
            if (!r->prompts[i]) return qi_fail(err, QI_ERR_ARG, "prompt %d is NULL", i);
    }
    if (r->width <= 0 || r->height <= 0 || r->width % 16 || r->height % 16)
        return qi_fail(err, QI_ERR_ARG,
                       "size %dx%d: width and height must be positive multiples of 16 (e.g. 1024x1024, "
                       "1328x1328, 1664x928)",
                       r->width, r->height);
    if (r->width > 8192 || r->height > 8192)
        return qi_fail(err, QI_ERR_ARG, "size %dx%d: at most 8192 pixels a side (RoPE positions must stay "
                                        "below 4096 patches)", r->width, r->height);
    if (r->steps < 1 || r->steps > 1000)
        return qi_fail(err, QI_ERR_ARG, "--steps %d: must be between 1 and 1000", r->steps);
    if (!(r->cfg >= 0.0f) || !isfinite(r->cfg))
        return qi_fail(err, QI_ERR_ARG, "--cfg %g: must be a finite number >= 0", (double)r->cfg);
    if (r->batch < 1 || r->batch > 64)
        return qi_fail(err, QI_ERR_ARG, "--batch %d: must be between 1 and 64", r->batch);
    if ((r->prompts ? r->n_prompts : 1) * r->batch > 4096)
        return qi_fail(err, QI_ERR_ARG, "%d prompts x batch %d: at most 4096 images per request",
                       r->prompts ? r->n_prompts : 1, r->batch);
    if (r->max_sequence_length < 1 || r->max_sequence_length > 1024)
        return qi_fail(err, QI_ERR_ARG, "max_sequence_length %d: must be between 1 and 1024",
                       r->max_sequence_length);
    if (r->noise_dtype < 0 || r->noise_dtype > 2)
        return qi_fail(err, QI_ERR_ARG, "noise dtype: expected auto, f32 or bf16");
    if (r->rng != QI_RNG_CPU && r->rng != QI_RNG_CUDA)
        return qi_fail(err, QI_ERR_ARG, "rng: expected cpu or cuda");
    return QI_OK;
}

static qi_status load_scheduler(qi_engine *e, const char *which, qi_scheduler_config *cfg) {
    if (!which || !strcmp(which, "model"))
        return qi_scheduler_config_load(e->dir.scheduler_config, cfg, &e->err);
    if (!strcmp(which, "lightning")) {
        *cfg = qi_scheduler_config_lightning();
        return QI_OK;
    }
    return qi_scheduler_config_load(which, cfg, &e->err);
}

/* ---- text ------------------------------------------------------------------------ */

typedef struct text_embeds {
    int batch, len, dim;
    float *embeds;  /* [batch, len, dim] */
    int32_t *mask;  /* [batch, len] */
    int all_valid;  /* every mask entry is 1: the transformer gets no mask */
} text_embeds;

/* Encodes n prompts, then repeats each prompt's rows `repeat` times
 * ([e0, e0, e1, e1, …], as diffusers does for num_images_per_prompt). */
static qi_status encode_prompts(qi_engine *e, const char *const *prompts, int n, int repeat, int max_len,
                                text_embeds *out) {
    qi_prompt_batch pb;
    qi_status st = qi_prompt_tokenize(e->tok, prompts, n, max_len, &pb, &e->err);
    if (st) return st;
    float *emb = NULL;
    int32_t *mask = NULL;
    int L = 0;
    st = qi_text_encoder_encode(e->te, pb.ids, pb.mask, pb.batch, pb.seq_len, max_len, &emb, &mask, &L,
                                &e->err);
    qi_prompt_batch_free(&pb);
    if (st) return st;
    int D = qi_text_encoder_dim(e->te);
    out->batch = n * repeat;
    out->len = L;
    out->dim = D;
    out->embeds = malloc((size_t)out->batch * L * D * sizeof(float));
    out->mask = malloc((size_t)out->batch * L * sizeof(int32_t));
    if (!out->embeds || !out->mask) {
        free(emb);
        free(mask);
        return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for text embeddings");
    }
    out->all_valid = 1;
    for (int p = 0; p < n; p++)
        for (int r = 0; r < repeat; r++) {
            int b = p * repeat + r;
            memcpy(out->embeds + (size_t)b * L * D, emb + (size_t)p * L * D, (size_t)L * D * sizeof(float));
            memcpy(out->mask + (size_t)b * L, mask + (size_t)p * L, (size_t)L * sizeof(int32_t));
        }
    for (size_t i = 0; i < (size_t)out->batch * L; i++)
        if (!out->mask[i]) out->all_valid = 0;
    free(emb);
    free(mask);
    return QI_OK;
}

static void text_embeds_free(text_embeds *t) {
    free(t->embeds);
    free(t->mask);
    memset(t, 0, sizeof *t);
}

/* Text embeddings as backend tensors for the transformer. */
typedef struct text_on_backend {
    qi_tensor ctx;  /* [B, L, D] */
    qi_tensor mask; /* I32 [B, L] */
    int has_mask;
} text_on_backend;

static qi_status upload_text(qi_engine *e, const text_embeds *t, text_on_backend *out) {
    qi_backend *be = e->be;
    qi_status st;
    if ((st = qi_be_act3(be, &out->ctx, t->batch, t->len, t->dim, &e->err))) return st;
    if ((st = be->ops->upload(be, &out->ctx, t->embeds, &e->err))) return st;
    out->has_mask = !t->all_valid;
    int64_t ne[2] = {t->batch, t->len};
    if ((st = be->ops->tensor(be, &out->mask, QI_I32, 2, ne, &e->err))) return st;
    return be->ops->upload(be, &out->mask, t->mask, &e->err);
}

/* ---- noise ----------------------------------------------------------------------- */

/* torch.randn in the diffusers latent shape, packed. The dtype follows the run
 * (diffusers draws in the dtype of the prompt embeddings) unless the request
 * names one. With the CUDA generator on a CUDA backend the curand kernel gives
 * torch's values bit for bit; elsewhere they are recomputed on the CPU (the
 * GPU's hardware sine cannot be matched exactly: within ~3e-6). */
static qi_status initial_noise(qi_engine *e, const qi_request *req, int B, float *packed) {
    qi_dtype dt = req->noise_dtype == 1 ? QI_F32 : req->noise_dtype == 2 ? QI_BF16 : e->be->act_dtype;
#ifdef QI_WITH_CUDA
    if (req->rng == QI_RNG_CUDA && !strcmp(e->be->ops->name, "cuda")) {
        qi_latent_shape s;
        qi_status st = qi_latent_shape_of(req->height, req->width, &s, &e->err);
        if (st) return st;
        int64_t total = (int64_t)B * s.per_image;
        float *raw = malloc(sizeof(float) * (size_t)total);
        if (!raw) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the initial noise");
        st = qi_randn_philox_cuda(req->seed, 0, total, dt, raw, &e->err);
        if (!st) qi_latents_pack(raw, B, s.lat_h, s.lat_w, packed);
        free(raw);
        return st;
    }
#endif
    return qi_initial_noise(req->seed, req->rng, dt, B, req->height, req->width, packed, &e->err);
}

/* ---- the denoising step as a graph ------------------------------------------------- */

/* Graphs on a single device whose backend records them, unless QI_CUDA_GRAPHS=0. */
static int use_step_graph(const qi_engine *e) {
    const char *env = getenv("QI_CUDA_GRAPHS");
    const qi_backend_ops *op = e->be->ops;
    return !e->par && op->graph_begin && op->persistent && !(env && !strcmp(env, "0"));
}

/* Gets the step's calls ready for this request: kept (and their recording)
 * when the key is unchanged, else made anew; the text masks and the
 * timestep schedule (t_all [steps][batch]) are written every request (the
 * same lengths may hold other padding). */
static qi_status step_calls_prepare(qi_engine *e, step_graph *g, const step_key *key, const qi_tensor *pos_mask,
                                    const qi_tensor *neg_mask, const float *t_all, int steps) {
    qi_status st = QI_OK;
    if (!g->cond || memcmp(key, &g->key, sizeof *key)) {
        step_calls_free(e->be, g);
        g->key = *key;
        st = qi_dit_call_create(e->dit, key->batch, key->grid_h, key->grid_w, key->pos_len, &g->cond, &e->err);
        if (!st && key->neg_len)
            st = qi_dit_call_create(e->dit, key->batch, key->grid_h, key->grid_w, key->neg_len, &g->uncond,
                                    &e->err);
    }
    if (!st) st = qi_dit_call_set_text_mask(g->cond, pos_mask, &e->err);
    if (!st && g->uncond) st = qi_dit_call_set_text_mask(g->uncond, neg_mask, &e->err);
    if (!st) st = qi_dit_call_set_schedule(g->cond, t_all, steps, &e->err);
    if (!st && g->uncond) st = qi_dit_call_set_schedule(g->uncond, t_all, steps, &e->err);
    if (st) step_calls_free(e->be, g);
    return st;
}

/* Makes step `step` of the schedule the one the calls read (outside any recording). */
static qi_status step_calls_select(qi_engine *e, step_graph *g, int step) {
    qi_status st = qi_dit_call_select_step(g->cond, step, &e->err);
    if (!st && g->uncond) st = qi_dit_call_select_step(g->uncond, step, &e->err);
    return st;
}

/* The device work of one step: v_cond = transformer(latents, text), and with
 * true CFG the uncond call and the combine into v_cond. Ops only. */
static qi_status step_ops(qi_engine *e, step_graph *g, const qi_tensor *latents, const qi_tensor *pos_ctx,
                          const qi_tensor *neg_ctx, float cfg, qi_tensor *v_cond, qi_tensor *v_uncond) {
    qi_status st = qi_dit_call_run(g->cond, latents, pos_ctx, v_cond, &e->err);
    if (!st && g->uncond) {
        st = qi_dit_call_run(g->uncond, latents, neg_ctx, v_uncond, &e->err);
        if (!st) e->be->ops->cfg_combine(e->be, v_cond, v_uncond, cfg, v_cond);
    }
    return st;
}

/* Step `step` through the graph: eagerly while nothing has run yet (step 0:
 * GEMM plans and kernel set-up happen outside the recording), recorded on
 * the next step, replayed from then on (and from step 0 of later requests
 * of the same key). The step's modulation is selected first, outside. */
static qi_status step_graph_run(qi_engine *e, int step, const qi_tensor *latents, const qi_tensor *pos_ctx,
                                const qi_tensor *neg_ctx, float cfg, qi_tensor *v_cond, qi_tensor *v_uncond) {
    step_graph *g = &e->steps;
    qi_backend *be = e->be;
    qi_status st = step_calls_select(e, g, step);
    if (st) return st;
    if (be->ops->mark(be) != g->key.arena_mark) /* the recording's activations start there */
        return qi_fail(&e->err, QI_ERR_BACKEND, "denoising step graph: arena at %zu, recorded at %zu",
                       be->ops->mark(be), g->key.arena_mark);
    if (!g->graph && step == 0) return step_ops(e, g, latents, pos_ctx, neg_ctx, cfg, v_cond, v_uncond);
    if (!g->graph) {
        double t0 = qi_now_s();
        if ((st = be->ops->graph_begin(be, &e->err))) return st;
        st = step_ops(e, g, latents, pos_ctx, neg_ctx, cfg, v_cond, v_uncond);
        qi_graph *rec = NULL;
        qi_error end_err;
        qi_status end_st = be->ops->graph_end(be, &rec, &end_err); /* ends the recording in any case */
        if (!st && end_st) {
            st = end_st;
            e->err = end_err;
        }
        if (st) {
            if (rec) be->ops->graph_free(be, rec);
            return st;
        }
        g->graph = rec;
        logf_(e, "denoising step recorded as a graph (%s) in %.1f ms",
              g->uncond ? "2 transformer calls + CFG combine" : "1 transformer call", (qi_now_s() - t0) * 1e3);
    }
    return be->ops->graph_launch(be, g->graph, &e->err);
}

/* ---- generate -------------------------------------------------------------------- */

static int report(const qi_request *r, const char *stage, int step, int total) {
    return r->progress ? r->progress(r->progress_user, stage, step, total) : 0;
}

qi_status qi_generate(qi_engine *e, const qi_request *req, qi_image *out) {
    memset(out, 0, sizeof *out);
    memset(&e->last, 0, sizeof e->last);
    qi_status st = check_request(req, &e->err);
    if (st) return st;
    qi_backend *be = e->be;
    const char *single[1] = {req->prompt};
    const char *const *prompts = req->prompts ? req->prompts : single;
    int n_prompts = req->prompts ? req->n_prompts : 1;
    int B = n_prompts * req->batch;
    int grid_h = req->height / 16, grid_w = req->width / 16;
    int img_tokens = grid_h * grid_w;
    int lat_h = req->height / 8, lat_w = req->width / 8;
    int packed_ch = LATENT_CHANNELS * 4;
    int do_cfg = req->cfg > 1.0f && req->negative_prompt != NULL;

    qi_scheduler_config sched;
    if ((st = load_scheduler(e, req->scheduler, &sched))) return st;
    float *sigmas = malloc(sizeof(float) * (size_t)(req->steps + 1));
    float *timesteps = malloc(sizeof(float) * (size_t)req->steps);
    float *noise = malloc(sizeof(float) * (size_t)B * img_tokens * packed_ch);
    text_embeds pos = {0}, neg = {0};
    step_graph eager_calls; /* the step's calls when nothing records (made per request) */
    memset(&eager_calls, 0, sizeof eager_calls);
    float *t_all = NULL;    /* [steps][B]: the transformer's timestep (scheduler's / 1000) */
    size_t mark = be->ops->mark(be);
    if (!sigmas || !timesteps || !noise) {
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = qi_scheduler_sigmas(&sched, req->steps, img_tokens, sigmas, timesteps, &e->err))) goto done;

    /* 1. text */
    double t0 = qi_now_s();
    if (report(req, "text encoder", 0, do_cfg ? 2 : 1)) goto cancelled;
    if ((st = encode_prompts(e, prompts, n_prompts, req->batch, req->max_sequence_length, &pos))) goto done;
    if (do_cfg) {
        const char **negs = malloc(sizeof(char *) * (size_t)n_prompts);
        if (!negs) {
            st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < n_prompts; i++) negs[i] = req->negative_prompt;
        st = encode_prompts(e, negs, n_prompts, req->batch, req->max_sequence_length, &neg);
        free(negs);
        if (st) goto done;
    }
    e->last.text_s = qi_now_s() - t0;

    /* 2. denoise */
    t0 = qi_now_s();
    if ((st = ensure_dit(e))) goto done;
    e->last.load_s = qi_now_s() - t0;
    t0 = qi_now_s();
    if ((st = initial_noise(e, req, B, noise))) goto done;
    if (e->par) { /* several devices: the loop runs on every rank (pipeline_parallel.c) */
        qi_text_batch c = {pos.batch, pos.len, pos.dim, pos.embeds, pos.mask, pos.all_valid};
        qi_text_batch u = {neg.batch, neg.len, neg.dim, neg.embeds, neg.mask, neg.all_valid};
        st = qi_parallel_denoise(e->par, req, &c, do_cfg ? &u : NULL, sigmas, timesteps, grid_h, grid_w, noise,
                                 &e->err);
        if (st) goto done;
        goto denoised;
    }
    text_on_backend pos_be, neg_be;
    qi_tensor latents, v_cond, v_uncond;
    if ((st = upload_text(e, &pos, &pos_be))) goto done;
    if (do_cfg && (st = upload_text(e, &neg, &neg_be))) goto done;
    if ((st = qi_be_act3(be, &latents, B, img_tokens, packed_ch, &e->err))) goto done;
    if ((st = be->ops->upload(be, &latents, noise, &e->err))) goto done;
    if ((st = qi_be_act3(be, &v_cond, B, img_tokens, packed_ch, &e->err))) goto done;
    if (do_cfg && (st = qi_be_act3(be, &v_uncond, B, img_tokens, packed_ch, &e->err))) goto done;
    int graphs = use_step_graph(e);
    t_all = malloc(sizeof(float) * (size_t)req->steps * (size_t)B);
    if (!t_all) {
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < req->steps; i++)
        for (int b = 0; b < B; b++) t_all[(size_t)i * B + b] = timesteps[i] / 1000.0f;
    step_key key;
    memset(&key, 0, sizeof key);
    key.batch = B, key.grid_h = grid_h, key.grid_w = grid_w, key.pos_len = pos.len;
    key.neg_len = do_cfg ? neg.len : 0, key.cfg = do_cfg ? req->cfg : 0.0f;
    key.pos_mask = pos_be.has_mask, key.neg_mask = do_cfg && neg_be.has_mask;
    key.arena_mark = be->ops->mark(be);
    key.latents = latents.data, key.v_cond = v_cond.data, key.v_uncond = do_cfg ? v_uncond.data : NULL;
    key.pos_ctx = pos_be.ctx.data, key.neg_ctx = do_cfg ? neg_be.ctx.data : NULL;
    /* eager calls on a backend without persistent buffers take them from the
     * arena here, above everything the loop uses, and are freed before the reset */
    if ((st = step_calls_prepare(e, graphs ? &e->steps : &eager_calls, &key,
                                 pos_be.has_mask ? &pos_be.mask : NULL,
                                 do_cfg && neg_be.has_mask ? &neg_be.mask : NULL, t_all, req->steps)))
        goto done;
    for (int i = 0; i < req->steps; i++) {
        if (report(req, "denoise", i, req->steps)) goto cancelled;
        if (graphs) { /* the same ops, recorded once */
            st = step_graph_run(e, i, &latents, &pos_be.ctx, do_cfg ? &neg_be.ctx : NULL, req->cfg, &v_cond,
                                &v_uncond);
        } else {
            st = step_calls_select(e, &eager_calls, i);
            if (!st)
                st = step_ops(e, &eager_calls, &latents, &pos_be.ctx, do_cfg ? &neg_be.ctx : NULL, req->cfg,
                              &v_cond, &v_uncond);
        }
        if (st) goto done;
        /* Euler: x += (sigma[i+1] − sigma[i]) · v, in float32 (diffusers upcasts). */
        be->ops->axpby(be, 1.0f, &latents, sigmas[i + 1] - sigmas[i], &v_cond, &latents);
    }
    if ((st = be->ops->download(be, &latents, noise, &e->err))) goto done;
    step_calls_free(be, &eager_calls); /* before the reset: arena-made calls live above mark */
denoised:
    if (report(req, "denoise", req->steps, req->steps)) goto cancelled;
    e->last.denoise_s = qi_now_s() - t0;
    be->ops->reset(be, mark);

    /* 3. decode */
    t0 = qi_now_s();
    size_t lat_per_image = (size_t)LATENT_CHANNELS * lat_h * lat_w;
    size_t px_per_image = (size_t)req->width * req->height;
    out->latents = malloc(sizeof(float) * B * lat_per_image);
    out->rgb = malloc((size_t)B * px_per_image * 3);
    float *rgb_f = malloc(sizeof(float) * 3 * px_per_image);
    if (!out->latents || !out->rgb || !rgb_f) {
        free(rgb_f);
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for %d images of %dx%d", B, req->width, req->height);
        goto done;
    }
    qi_latents_to_vae_in(noise, B, req->height, req->width, qi_vae_latents_mean(e->vae),
                         qi_vae_latents_std(e->vae), out->latents);
    for (int b = 0; b < B; b++) {
        if (report(req, "vae", b, B)) {
            free(rgb_f);
            goto cancelled;
        }
        st = qi_vae_decode(e->vae, out->latents + b * lat_per_image, lat_h, lat_w, rgb_f, &e->err);
        if (st) {
            free(rgb_f);
            goto done;
        }
        qi_rgb_to_u8(rgb_f, req->height, req->width, out->rgb + (size_t)b * px_per_image * 3);
    }
    report(req, "vae", B, B);
    free(rgb_f);
    e->last.vae_s = qi_now_s() - t0;
    e->last.peak_rss_mb = qi_peak_rss_mb();
    if (be->ops->mem_usage) {
        size_t now, peak;
        be->ops->mem_usage(be, &now, &peak);
        e->last.device_peak_mb = (double)peak / (1 << 20);
    }
    out->width = req->width;
    out->height = req->height;
    out->count = B;
    st = QI_OK;
    goto done;

cancelled:
    st = qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
done:
    if (st) qi_image_free(out);
    step_calls_free(be, &eager_calls);
    be->ops->reset(be, mark);
    free(t_all);
    text_embeds_free(&pos);
    text_embeds_free(&neg);
    free(sigmas);
    free(timesteps);
    free(noise);
    return st;
}

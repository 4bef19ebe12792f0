/*
 * engine.c — the engine of qwen_image.h: opening a model and its devices,
 * the components (tokenizer, text encoder, VAE, the transformer on every
 * rank), the LoRA set, warm-up, and qi_generate as a sequence of stages:
 *
 *   plan → text (tokenize → text encoder) → noise
 *          (img2img / inpaint: the picture → VAE encoder → noised, stages_image.c)
 *        → denoise ([transformer (+ uncond) → CFG → Euler] × steps, denoise.c)
 *        → decode (unpack → VAE → RGB8)
 *
 * Every component is loaded by one function here (load_*), the only place
 * that knows where a component's files are. A stage asks for its component
 * through qi_engine_acquire / qi_engine_release: the residency hook
 * (engine.h) decides there what stays resident: everything, unless a memory
 * plan (budget.c) swaps or streams.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/engine.h"
#include "backend/work_pool.h"
#include "engine/step_previews.h"
#include "sample/latents.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define logf_(e, ...) qi_log_linef((e)->log, (e)->log_user, __VA_ARGS__)

qi_open_options qi_open_options_default(void) {
    qi_open_options o;
    memset(&o, 0, sizeof o);
    o.device = "cpu";
    o.pinned_bytes = -1;
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
    r.strength = 0.6; /* diffusers' default */
    return r;
}

const char *qi_engine_error(const qi_engine *e) { return e ? e->err.msg : "no engine (out of memory)"; }
const qi_timings *qi_engine_timings(const qi_engine *e) { return &e->last; }

/* ---- the components: where each one's files are --------------------------------- */

/* The tokenizer: the text encoder GGUF's, the model folder's or the
 * installed one (io/model_files.h). */
static qi_status load_tokenizer(qi_engine *e) {
    char from[QI_PATH_MAX + 32];
    qi_status st = qi_model_files_tokenizer(&e->files, &e->tok, from, sizeof from, &e->err);
    if (!st) logf_(e, "tokenizer from %s", from);
    return st;
}

/* ---- the weights' NaN/Inf scan on several threads --------------------------------- */

/* Every weight a model binds is scanned for NaN/Inf by qi_source_get, on the
 * loading thread, and that scan is the first touch of each mapped byte: a page
 * fault every few pages, ~2.6 GB/s on an H200 host, most of the fp8
 * transformer's 20 GB load. A weight of a few MiB or more is split into pieces
 * scanned at once (base/finite.h, same answer). The pool is made here because
 * the scan runs deep below the engine (qi_source_get has no handle to it) and
 * src/base and src/io do not see backend/: the engine lends it as a
 * qi_parallel_for in e->files.scan, which every source it opens copies
 * (qi_model_files_open_source). Its own pool, not the CUDA upload's: that one
 * is the backend's, and its idle threads block, as these do (no spinning
 * between weights, unlike an OpenMP team, to steal the upload's cores).
 * QI_SCAN_THREADS=N: N threads, the loader's included (1: the loading thread
 * alone, the yardstick); by default the cores, at most 16. */
static void scan_on_pool(void *pool, void (*fn)(void *job), void *jobs, size_t stride, int n) {
    qi_work_pool_run(pool, fn, jobs, stride, n);
}

static void open_scan_pool(qi_engine *e) {
    const char *env = getenv("QI_SCAN_THREADS");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = env && *env ? atoi(env) : (int)(cores < 1 ? 1 : cores > 16 ? 16 : cores);
    if (threads > 64) threads = 64;
    qi_error ignored; /* no pool (out of memory): the scan stays on the loading thread */
    if (threads > 1 && qi_work_pool_new(threads - 1, &e->scan_pool, &ignored) == QI_OK)
        e->files.scan = (qi_parallel_for){scan_on_pool, e->scan_pool, qi_work_pool_threads(e->scan_pool) + 1};
    logf_(e, "the weights' NaN/Inf scan: %d thread%s (QI_SCAN_THREADS)", e->scan_pool ? e->files.scan.threads : 1,
          e->scan_pool ? "s, a weight of 4 MiB or more split among them" : ", the loading one");
}

/* The weight source of component c (a diffusers component folder or a
 * single file), opened once and kept: reloads and every rank read the same one. */
static qi_status open_source(qi_engine *e, qi_component c) {
    if (e->src[c]) return QI_OK;
    return qi_model_files_open_source(&e->files, c, &e->src[c], &e->err);
}

static qi_status load_text_encoder(qi_engine *e) {
    qi_status st = open_source(e, QI_COMPONENT_TEXT_ENCODER);
    int stream = e->planned && e->plan.te_stream; /* its layers from host memory, under a memory plan */
    if (!st) st = qi_text_encoder_load_resident(e->src[QI_COMPONENT_TEXT_ENCODER], e->be, stream, &e->te, &e->err);
    if (!st) e->te_loads++;
    return st;
}

static qi_status load_vae(qi_engine *e) {
    qi_status st = open_source(e, QI_COMPONENT_VAE);
    return st ? st : qi_vae_load(e->src[QI_COMPONENT_VAE], e->be, &e->vae, &e->err);
}

/* The transformer of rank w (run on every rank at once, each on its thread,
 * all reading the one source: read-only after open). */
static qi_status load_transformer_rank(qi_ranks *r, int w, void *arg, qi_error *err) {
    const qi_engine *e = arg;
    if (r->dit[w]) qi_dit_free(r->dit[w]);
    r->dit[w] = NULL;
    return qi_dit_load_resident(e->src[QI_COMPONENT_TRANSFORMER], r->be[w], e->loras, (qi_lora_mode)e->lora_mode,
                                e->planned ? &e->dit_res : NULL, &r->dit[w], err);
}

/* The current LoRA set as rank w's runtime modules, weights untouched. */
static qi_status swap_loras_rank(qi_ranks *r, int w, void *arg, qi_error *err) {
    const qi_engine *e = arg;
    return qi_dit_set_loras(r->dit[w], e->loras, err);
}

/* The attention shape several ranks split, before any transformer loads. */
static qi_status read_transformer_heads(qi_engine *e) {
    qi_dit_config c;
    qi_status st = open_source(e, QI_COMPONENT_TRANSFORMER);
    if (!st) st = qi_dit_read_config(e->src[QI_COMPONENT_TRANSFORMER], &c, &e->err);
    if (!st) {
        e->heads = c.num_heads;
        e->head_dim = c.head_dim;
    }
    return st;
}

/* NULL or "model": the model's scheduler config — its folder's
 * scheduler/scheduler_config.json, or, for a model given as single files
 * (no folder, so no scheduler config), the built-in Qwen-Image default
 * (qi_scheduler_config_qwen_image); "lightning"; or a JSON path. */
static qi_status load_scheduler(qi_engine *e, const char *which, qi_scheduler_config *cfg) {
    if (!which || !strcmp(which, "model")) {
        if (!e->files.scheduler_config[0]) { /* single files: Qwen-Image's own config */
            *cfg = qi_scheduler_config_qwen_image();
            logf_(e, "scheduler: no model folder, so the built-in Qwen-Image default (dynamic shift 0.5-0.9, "
                     "shift_terminal 0.02)");
            return QI_OK;
        }
        return qi_scheduler_config_load(e->files.scheduler_config, cfg, &e->err);
    }
    if (!strcmp(which, "lightning")) {
        *cfg = qi_scheduler_config_lightning();
        return QI_OK;
    }
    return qi_scheduler_config_load(which, cfg, &e->err);
}

/* ---- the transformer and its LoRA set ----------------------------------------------- */

/* A load with the current set failed: the engine goes back to what worked,
 * so it does not stay broken (LoRA files are only matched against the
 * weights at load). The next load then uses that set. */
static void lora_fallback(qi_engine *e, qi_status st) {
    if (e->loras_loaded < 0) { /* a qi_engine_set_loras set: back to the one before */
        qi_lora_set_free(e->loras);
        e->loras = e->loras_prev;
        e->loras_loaded = e->loras_prev_loaded;
        e->loras_prev = NULL;
        qi_fail_ctx(&e->err, st, "the LoRA set given to qi_engine_set_loras was removed from the engine, which "
                    "keeps its previous set");
        return;
    }
    int n = qi_lora_set_file_count(e->loras);
    if (n > e->loras_loaded) {
        qi_lora_set_truncate(e->loras, e->loras_loaded);
        qi_fail_ctx(&e->err, st, "the %d LoRA file(s) added since the last load were removed from the engine",
                    n - e->loras_loaded);
    }
}

/* The set is in the weights now: the previous one can go. */
static void lora_commit(qi_engine *e) {
    qi_lora_set_free(e->loras_prev);
    e->loras_prev = NULL;
    e->loras_loaded = qi_lora_set_file_count(e->loras);
    e->loras_changed = 0;
}

/* A changed LoRA set on loaded transformers: swapped as runtime modules
 * (no reload), or — where a weight holds a fused LoRA or would take one
 * (QI_ERR_UNSUPPORTED) — left to a reload. Another failure (a file that
 * matches no weight) drops the transformers and goes back to the previous
 * set, as a failed load does. */
static qi_status swap_loras(qi_engine *e) {
    qi_denoise_release(e->ranks); /* recorded graphs read the old factors */
    double t0 = qi_now_s();
    qi_error swap_err = {0};
    qi_status st = qi_ranks_run(e->ranks, swap_loras_rank, e, NULL, NULL, &swap_err);
    if (st == QI_ERR_UNSUPPORTED) {
        logf_(e, "LoRA set changed: %s", swap_err.msg);
        e->dit_stale = 1;
        return QI_OK;
    }
    if (st) {
        e->err = swap_err;
        qi_ranks_free_dits(e->ranks); /* some ranks may read the new set, which goes */
        e->dit_stale = 1;
        lora_fallback(e, st);
        return st;
    }
    lora_commit(e);
    logf_(e, "LoRA set swapped in %.3f s (%d file(s), run beside the weights)", qi_now_s() - t0, e->loras_loaded);
    return QI_OK;
}

/* The transformer on every rank from its open source, with the current
 * LoRA set; none on failure. err: the engine's, or a loader thread's own
 * (load_at_open): nothing else of the engine is written here. */
static qi_status load_transformer_all(qi_engine *e, qi_error *err) {
    qi_status st = qi_ranks_run(e->ranks, load_transformer_rank, e, NULL, NULL, err);
    if (st) qi_ranks_free_dits(e->ranks);
    return st;
}

/* Loads (or reloads, after a LoRA change) the transformer on every rank. */
static qi_status ensure_transformer(qi_engine *e) {
    if (e->ranks->dit[0] && !e->dit_stale && e->loras_changed) {
        qi_status st = swap_loras(e);
        if (st) return st;
    }
    if (e->ranks->dit[0] && !e->dit_stale) return QI_OK;
    qi_denoise_release(e->ranks); /* recorded on the old transformer's weights */
    double t0 = qi_now_s();
    int n_loras = qi_lora_set_file_count(e->loras);
    if (n_loras)
        logf_(e, "loading transformer from %s with %d LoRA file(s) ...", e->files.path[QI_COMPONENT_TRANSFORMER], n_loras);
    else
        logf_(e, "loading transformer from %s ...", e->files.path[QI_COMPONENT_TRANSFORMER]);
    qi_status st = open_source(e, QI_COMPONENT_TRANSFORMER);
    if (!st) st = load_transformer_all(e, &e->err);
    if (st) {
        e->dit_stale = 1;
        lora_fallback(e, st);
        return st;
    }
    lora_commit(e);
    e->dit_stale = 0;
    logf_(e, "loaded transformer in %.2f s", qi_now_s() - t0);
    return QI_OK;
}

qi_status qi_engine_add_lora(qi_engine *e, const char *path, float strength) {
    if (!path) return qi_fail(&e->err, QI_ERR_ARG, "LoRA path is NULL");
    qi_status st = qi_lora_set_add(&e->loras, path, strength, &e->err);
    if (st) return st;
    e->loras_changed = 1; /* swapped or re-fused before the next call (ensure_transformer) */
    return QI_OK;
}

qi_status qi_engine_set_loras(qi_engine *e, const qi_lora_spec *loras, int n) {
    if (n < 0 || (n > 0 && !loras))
        return qi_fail(&e->err, QI_ERR_ARG, "qi_engine_set_loras: %d LoRAs%s", n, n > 0 ? " but no array" : "");
    qi_lora_set *set = NULL;
    for (int i = 0; i < n; i++) {
        qi_status st = loras[i].path ? qi_lora_set_add(&set, loras[i].path, loras[i].strength, &e->err)
                                     : qi_fail(&e->err, QI_ERR_ARG, "LoRA %d: path is NULL", i);
        if (st) {
            qi_lora_set_free(set);
            return qi_fail_ctx(&e->err, st, "qi_engine_set_loras: LoRA set unchanged");
        }
    }
    if (e->loras_loaded < 0) {
        qi_lora_set_free(e->loras); /* an earlier replacement not loaded yet: the previous set stays */
    } else {
        /* the previous set: what the weights hold now, or the files given before the first load */
        if (e->loras && e->ranks->dit[0]) qi_lora_set_truncate(e->loras, e->loras_loaded);
        e->loras_prev = e->loras;
        e->loras_prev_loaded = e->ranks->dit[0] ? e->loras_loaded : 0;
    }
    e->loras = set;
    e->loras_loaded = -1; /* pending: lora_fallback goes back to loras_prev */
    e->loras_changed = 1;
    return QI_OK;
}

/* ---- components, resident for a stage ------------------------------------------------ */

static qi_status component_load(qi_engine *e, qi_component c) {
    switch (c) {
    case QI_COMPONENT_TOKENIZER: return e->tok ? QI_OK : load_tokenizer(e);
    case QI_COMPONENT_TEXT_ENCODER: return e->te ? QI_OK : load_text_encoder(e);
    case QI_COMPONENT_VAE: return e->vae ? QI_OK : load_vae(e);
    case QI_COMPONENT_TRANSFORMER: return ensure_transformer(e);
    default: return qi_fail(&e->err, QI_ERR_ARG, "component %d", (int)c);
    }
}

qi_status qi_engine_acquire(qi_engine *e, qi_component c) {
    qi_status st = e->residency.acquire ? e->residency.acquire(e->residency.user, e, c, &e->err) : QI_OK;
    return st ? st : component_load(e, c);
}

void qi_engine_release(qi_engine *e, qi_component c) {
    if (e->residency.release) e->residency.release(e->residency.user, e, c);
}

qi_status qi_engine_warm(qi_engine *e, qi_progress_fn progress, void *user) {
    for (int c = 0; c < QI_COMPONENT_COUNT; c++) {
        if (progress && progress(user, "load", c, QI_COMPONENT_COUNT))
            return qi_fail(&e->err, QI_ERR_CANCELLED, "warm-up cancelled before loading the %s", qi_component_name((qi_component)c));
        if (c == QI_COMPONENT_TRANSFORMER && e->planned && e->plan.dit_evict) {
            /* the first prompt would free it again: it loads after that prompt's text stage */
            qi_log_linef(e->log, e->log_user, "warm-up: the transformer does not fit beside the text encoder "
                         "under the memory plan; it loads after the first prompt");
            continue;
        }
        qi_status st = qi_engine_acquire(e, (qi_component)c);
        if (st) return st;
    }
    if (progress) progress(user, "load", QI_COMPONENT_COUNT, QI_COMPONENT_COUNT);
    return QI_OK;
}

/* ---- open and close -------------------------------------------------------------------- */

/* The devices: opt->devices (several ranks), else the one opt->device. */
static qi_status open_ranks(qi_engine *e, const qi_open_options *opt) {
    qi_rank_devices d = {.n = 1};
    const char *list = opt->devices ? opt->devices : opt->device ? opt->device : "cpu";
    qi_status st = QI_OK;
    if (opt->devices) {
        st = qi_ranks_parse(opt->devices, &d, &e->err);
    } else if (strlen(list) >= sizeof d.dev[0].name) {
        st = qi_fail(&e->err, QI_ERR_ARG, "--device %s: expected cpu, cuda or cuda:N", list);
    } else {
        snprintf(d.dev[0].name, sizeof d.dev[0].name, "%s", list);
    }
    if (!st && d.n > 1) st = read_transformer_heads(e);
    if (!st)
        st = qi_ranks_open(&d, list, e->heads, opt->threads, opt->random_weights, opt->log, opt->log_user,
                           &e->ranks, &e->err);
    if (!st) e->be = e->ranks->be[0];
    for (int w = 0; !st && opt->pinned_bytes >= 0 && w < e->ranks->n; w++) { /* before any weight loads */
        qi_backend *be = e->ranks->be[w];
        if (be->ops->host_budget) be->ops->host_budget(be, (size_t)opt->pinned_bytes);
    }
    return st;
}

/* ---- the loads of qi_engine_open ------------------------------------------------------- */

/* The transformer's load on a thread of its own (load_transformer 1): it
 * writes only the ranks' transformers and its own error, which the opening
 * thread reads after the join. */
typedef struct dit_loader {
    qi_engine *e;
    qi_status st;
    qi_error err;
    double seconds;
} dit_loader;

static void *dit_loader_main(void *arg) {
    dit_loader *l = arg;
    double t0 = qi_now_s();
    l->st = load_transformer_all(l->e, &l->err);
    l->seconds = qi_now_s() - t0;
    return NULL;
}

/* 0: the transformer loads lazily; 1: beside the other components; 2: after them. */
static int transformer_at_open(const qi_engine *e, const qi_open_options *opt) {
    if (opt->load_transformer <= 0) return 0;
    /* a plan that swaps, streams or evicts decides when the transformer is resident; one that keeps
     * everything (a GPU with room for it all) leaves it to us */
    const qi_residency_plan *p = &e->plan;
    if (e->planned && (p->te_swap || p->te_stream || p->dit_stream || p->dit_evict)) return 0;
    const char *seq = getenv("QI_LOAD_SEQUENTIAL");
    if (opt->load_transformer >= 2 || opt->random_weights || (seq && strcmp(seq, "0") != 0)) return 2;
    return 1;
}

/* Tokenizer, text encoder and VAE, timed one by one. */
static qi_status load_others(qi_engine *e, double *te_s, double *vae_s) {
    qi_status st = QI_OK;
    if (e->vae) logf_(e, "the VAE is loaded already (the memory plan measured it)");
    for (int c = QI_COMPONENT_TOKENIZER; c <= QI_COMPONENT_VAE && !st; c++) {
        double t0 = qi_now_s();
        st = component_load(e, (qi_component)c);
        if (c == QI_COMPONENT_VAE) *vae_s = qi_now_s() - t0;
        else *te_s += qi_now_s() - t0;
    }
    return st;
}

/* What qi_engine_open loads: tokenizer, text encoder and VAE, and with
 * load_transformer the transformer, on its own thread so that its file
 * reading and conversion overlap theirs. A failure on either side is the
 * engine's error (the opening thread's first) after both have finished; the
 * loads that worked stay for qi_engine_close to free. */
static qi_status load_at_open(qi_engine *e, const qi_open_options *opt, const char *what) {
    int mode = transformer_at_open(e, opt);
    qi_status st = mode ? open_source(e, QI_COMPONENT_TRANSFORMER) : QI_OK;
    if (st) return st;
    dit_loader l = {.e = e};
    pthread_t th;
    if (mode == 1 && pthread_create(&th, NULL, dit_loader_main, &l) != 0) mode = 2; /* no thread: one after another */
    double t0 = qi_now_s(), te_s = 0, vae_s = 0;
    logf_(e, "loading tokenizer, text encoder and VAE%s from %s ...",
          mode == 1 ? " (the transformer beside them, on its own thread)" : mode ? ", then the transformer," : "", what);
    st = load_others(e, &te_s, &vae_s);
    if (mode == 1) pthread_join(th, NULL);
    if (!st) logf_(e, "loaded tokenizer + text encoder in %.2f s, VAE in %.2f s", te_s, vae_s);
    if (mode == 1 && l.st && !st) {
        e->err = l.err;
        st = l.st;
    }
    int dit_loaded = mode == 1 && !l.st;
    if (mode == 2 && !st) {
        double t1 = qi_now_s();
        st = load_transformer_all(e, &e->err);
        l.seconds = qi_now_s() - t1;
        dit_loaded = !st;
    }
    if (dit_loaded) {
        lora_commit(e);
        e->dit_stale = 0;
        logf_(e, "loaded transformer from %s in %.2f s%s", e->files.path[QI_COMPONENT_TRANSFORMER], l.seconds,
              mode == 1 ? " (beside the text encoder and VAE)" : "");
    }
    if (st) return st;
    double wall = qi_now_s() - t0, others = te_s + vae_s;
    if (mode == 1)
        logf_(e, "load overlap: text encoder + VAE %.2f s and transformer %.2f s took %.2f s together (%.2f s "
              "overlapped; QI_LOAD_SEQUENTIAL=1 loads one after the other)", others, l.seconds, wall,
              others + l.seconds - wall);
    else
        logf_(e, "loaded %s from %s in %.2f s%s", mode ? "every component" : "tokenizer, text encoder and VAE", what,
              wall, mode ? " (one after another: no overlap)" : "");
    if (e->be && e->be->ops->load_report) { /* where the loads' time went (CUDA: reading, the link, allocation) */
        char line[512];
        e->be->ops->load_report(e->be, line, sizeof line);
        logf_(e, "%s", line);
    }
    return QI_OK;
}

qi_status qi_engine_open(const qi_open_options *opt, qi_engine **out) {
    qi_engine *e = calloc(1, sizeof *e);
    *out = e;
    if (!e) return QI_ERR_NOMEM;
    e->log = opt->log;
    e->log_user = opt->log_user;
    if (opt->lora_mode < QI_LORA_AUTO || opt->lora_mode > QI_LORA_RUNTIME)
        return qi_fail(&e->err, QI_ERR_ARG, "lora_mode %d: expected QI_LORA_AUTO, QI_LORA_FUSE or QI_LORA_RUNTIME",
                       opt->lora_mode);
    e->lora_mode = opt->lora_mode;
    if (opt->prompt_cache > 0 && !(e->prompt_cache = qi_prompt_cache_new(opt->prompt_cache)))
        return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the prompt cache");
    if (!opt->model_dir && !(opt->diffusion_model && opt->text_encoder && opt->vae))
        return qi_fail(&e->err, QI_ERR_ARG, "no model given: a Qwen/Qwen-Image folder or a folder of split files "
                       "(-m DIR), or the three files (--diffusion-model, --text-encoder, --vae)");
    qi_status st;
    qi_model_paths paths = {opt->model_dir, opt->diffusion_model, opt->text_encoder, opt->vae, opt->mmproj};
    if ((st = qi_model_files_resolve(&paths, &e->files, &e->err))) return st;
    open_scan_pool(e);
    const char *what = opt->model_dir ? opt->model_dir : "the given files";
    if ((st = open_ranks(e, opt))) return st;
    if ((st = qi_engine_plan_open(e, opt))) return st;
    return load_at_open(e, opt, what);
}

void qi_engine_close(qi_engine *e) {
    if (!e) return;
    qi_denoise_release(e->ranks);
    if (e->vae) qi_vae_free(e->vae);
    qi_vision_free(e->vt);
    qi_source_close(e->vision_src); /* after the tower read from it */
    if (e->te) qi_text_encoder_free(e->te);
    if (e->tok) qi_tokenizer_free(e->tok);
    qi_lora_set_free(e->loras);
    qi_lora_set_free(e->loras_prev);
    qi_prompt_cache_free(e->prompt_cache);
    qi_ranks_free(e->ranks); /* the transformers, then the backends */
    for (int c = 0; c < QI_COMPONENT_COUNT; c++) qi_source_close(e->src[c]); /* after the models read from them */
    qi_work_pool_free(e->scan_pool);
    free(e);
}

qi_backend *qi_engine_backend(qi_engine *e) { return e->be; }
qi_text_encoder *qi_engine_text_encoder(qi_engine *e) { return e->te; }
qi_vae *qi_engine_vae(qi_engine *e) { return e->vae; }
qi_status qi_engine_dit(qi_engine *e, qi_dit **out) {
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_TRANSFORMER);
    *out = st ? NULL : e->ranks->dit[0];
    return st;
}

/* ---- generate ---------------------------------------------------------------------------- */

static qi_status make_plan(qi_engine *e, const qi_request *req, qi_plan *p) {
    qi_scheduler_config sched;
    memset(p, 0, sizeof *p);
    qi_status st = qi_plan_check_request(req, &e->err);
    if (!st) st = load_scheduler(e, req->scheduler, &sched);
    if (!st) st = qi_plan_make(req, &sched, e->ranks->n, e->heads, e->head_dim, p, &e->err);
    if (!st) st = qi_engine_plan_request(e, p); /* a memory plan with room for this request's activations */
    return st;
}

static qi_status generate_text(qi_engine *e, const qi_plan *p, qi_text_embeds text[2]) {
    double t0 = qi_now_s();
    if (qi_prompt_cache_get(e->prompt_cache, p, text)) {
        e->last.text_cached = 1;
        e->last.text_s = qi_now_s() - t0;
        return QI_OK;
    }
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_TOKENIZER);
    if (!st) st = qi_engine_acquire(e, QI_COMPONENT_TEXT_ENCODER);
    if (!st) st = qi_stage_text(e, p, text);
    if (!st) qi_prompt_cache_put(e->prompt_cache, p, text);
    qi_engine_release(e, QI_COMPONENT_TEXT_ENCODER);
    qi_engine_release(e, QI_COMPONENT_TOKENIZER);
    e->last.text_s = qi_now_s() - t0;
    return st;
}

/* The request's step_latents fed from the denoising hook (packed x0),
 * delivered from the previews' own thread (step_previews.c). */
static void on_step_latents(void *user, int step, const float *x0) { qi_step_previews_push(user, step, x0); }

static qi_status run_denoise(qi_engine *e, const qi_plan *p, const qi_text_embeds text[2], float *latents) {
    if (!p->req->step_latents)
        return qi_denoise_hooked(e->ranks, p, text, latents, e->test_inputs.inputs ? &e->test_inputs : NULL, &e->err);
    qi_step_previews *sp = qi_step_previews_start(p->req, p->steps, p->batch, p->width, p->height,
                                                  qi_vae_latents_mean(e->vae), qi_vae_latents_std(e->vae));
    if (!sp) return qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the step latents");
    qi_denoise_hook hook = {.fn = on_step_latents, .user = sp}; /* (test_inputs: not with previews) */
    qi_status st = qi_denoise_hooked(e->ranks, p, text, latents, &hook, &e->err);
    qi_step_previews_finish(sp);
    return st;
}

/* The start latents of an img2img / inpaint run: the picture through the
 * VAE encoder (the VAE resident for it), noised to the first sigma run. */
static qi_status generate_init_latents(qi_engine *e, qi_plan *p, float **latents) {
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_VAE);
    if (!st) st = qi_stage_init_latents(e, p, latents);
    qi_engine_release(e, QI_COMPONENT_VAE);
    return st;
}

static qi_status generate_latents(qi_engine *e, qi_plan *p, const qi_text_embeds text[2], float **latents) {
    double t0 = qi_now_s();
    qi_status st = p->has_init ? generate_init_latents(e, p, latents) : QI_OK;
    double t_enc = qi_now_s() - t0;
    if (!st) st = qi_engine_acquire(e, QI_COMPONENT_TRANSFORMER);
    e->last.load_s = qi_now_s() - t0 - t_enc;
    t0 = qi_now_s();
    if (!st && !p->has_init) st = qi_stage_noise(e, p, latents);
    if (!st) st = run_denoise(e, p, text, *latents);
    qi_engine_release(e, QI_COMPONENT_TRANSFORMER);
    if (!st && qi_stage_report(p, "denoise", p->steps, p->steps))
        st = qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
    e->last.denoise_s = qi_now_s() - t0 + t_enc;
    return st;
}

static qi_status generate_decode(qi_engine *e, const qi_plan *p, const float *latents, qi_image *out) {
    double t0 = qi_now_s();
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_VAE);
    if (!st) st = qi_stage_decode(e, p, latents, out);
    qi_engine_release(e, QI_COMPONENT_VAE);
    e->last.vae_s = qi_now_s() - t0;
    e->last.peak_rss_mb = qi_peak_rss_mb();
    if (e->be->ops->mem_usage) {
        size_t now, peak;
        e->be->ops->mem_usage(e->be, &now, &peak);
        e->last.device_peak_mb = (double)peak / (1 << 20);
    }
    return st;
}

qi_status qi_generate(qi_engine *e, const qi_request *req, qi_image *out) {
    if (req && req->n_edit_images) return qi_generate_edit(e, req, out);
    memset(out, 0, sizeof *out);
    memset(&e->last, 0, sizeof e->last);
    qi_plan plan;
    qi_text_embeds text[2];
    memset(text, 0, sizeof text);
    float *latents = NULL;
    size_t mark = e->be->ops->mark(e->be);
    qi_status st = make_plan(e, req, &plan);
    if (!st) st = generate_text(e, &plan, text);
    if (!st) st = generate_latents(e, &plan, text, &latents);
    if (!st) st = generate_decode(e, &plan, latents, out);
    if (st) qi_image_free(out);
    e->be->ops->reset(e->be, mark);
    qi_plan_free(&plan);
    qi_text_embeds_free(&text[0]);
    qi_text_embeds_free(&text[1]);
    free(latents);
    return st;
}

qi_status qi_engine_plan(qi_engine *e, const qi_request *req, qi_plan *p) { return make_plan(e, req, p); }

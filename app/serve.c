/*
 * serve.c — `qwen-image serve`: the model resident in one process behind an
 * HTTP API (serve_api.c) and a web page (serve_page.c).
 *
 * Start-up: the HTTP server listens first (GET /health answers 503
 * "loading" meanwhile), then the engine opens and warms (every component
 * loaded, LoRAs fused), then one small warm-up image is made whose latents
 * and pixels fit the preview map (serve_preview_fit: the 16 → 3 linear
 * projection is the least-squares fit of this model's own VAE decode, so it
 * holds for whatever VAE is loaded), then "serving on URL" is printed.
 *
 * Stop: SIGINT cancels the running job at its next step; SIGTERM drains (new
 * requests get 503, queued jobs are cancelled, the running job finishes);
 * a second signal stops at once. Nothing is written to disk by the server.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "serve.h"

static void serve_usage(void) {
    printf("usage: qwen-image serve [-m MODEL_DIR] [--diffusion-model F] [--text-encoder F] [--vae F] [options]\n\n"
           "  -m, --diffusion-model, --text-encoder, --vae, --mmproj, --lora FILE[:S], --lora-mode, --device, --devices, --threads, --vram, --pinned\n"
           "                      the model, as for generate (default: the bundled tiny test model)\n"
           "  --lora-dir DIR      LoRA files a request may name in \"loras\" (then --lora-mode auto means runtime)\n"
           "  --edit              the model is Qwen-Image-Edit (single files; a diffusers folder says so itself):\n"
           "                      /v1/images/edits and /sdapi/v1/img2img take 1 to 3 reference pictures\n"
           "  --edit-vl-area N, --edit-vae-area N  tests only, as for generate\n"
           "  --host ADDR         IPv4 address to listen on (default 127.0.0.1; 0.0.0.0: every interface)\n"
           "  --port N            TCP port (default 8080; 0: any free port, printed)\n"
           "  --api-key KEY       every /v1/ request needs \"Authorization: Bearer KEY\" (else 401)\n"
           "  --queue N           jobs waiting at most (default 8); more are answered 429 with Retry-After\n"
           "  --max-size N        largest width or height a request may ask (default 2048)\n"
           "  --max-steps N       most steps a request may ask (default 100)\n"
           "  --max-batch N       most images per request, n (default 4, at most %d)\n"
           "  --max-body BYTES    largest request body (default 33554432: room for uploaded pictures); larger: 413\n"
           "  --timeout S         a connection silent for S seconds is closed (default 15; slow clients)\n"
           "  --prompt-cache N    text-encoder results kept for repeated prompts (default 8; 0: none)\n"
           "  --url-ttl S         response_format \"url\": images kept S seconds under /v1/files/ (default\n"
           "                      3600; in memory, the newest 256 at most)\n"
           "  --random-weights S  benchmarks only: every weight random (seed S), e.g. with -m a folder\n"
           "                      written by `qwen-image bench --write-sparse DIR`\n"
           "  --quiet             no log lines\n\n"
           "SIGINT stops (the running job is cancelled at its next step); SIGTERM drains (the running job\n"
           "finishes, new requests get 503); a second signal stops at once.\n", SERVE_MAX_N);
}

/* The integer flags: name, range, field of serve_opts. */
static const struct int_flag {
    const char *name;
    long lo, hi;
    size_t off;
} int_flags[] = {
    {"--port", 0, 65535, offsetof(serve_opts, port)},
    {"--queue", 0, 10000, offsetof(serve_opts, queue)},
    {"--max-size", 16, 8192, offsetof(serve_opts, max_size)},
    {"--max-steps", 1, 1000, offsetof(serve_opts, max_steps)},
    {"--max-batch", 1, SERVE_MAX_N, offsetof(serve_opts, max_batch)},
    {"--timeout", 1, 3600, offsetof(serve_opts, timeout_s)},
    {"--prompt-cache", 0, 1024, offsetof(serve_opts, prompt_cache)},
    {"--url-ttl", 1, 7 * 24 * 3600, offsetof(serve_opts, url_ttl)},
};

static int parse_serve_flag(const char *f, const char *v, serve_opts *o) {
    long x;
    gen_args *m = &o->model;
    if (qi_app_component_flag(f, v, &m->model, &m->diffusion_model, &m->text_encoder, &m->vae)) return 0;
    if (!strcmp(f, "--mmproj")) {
        m->mmproj = v;
        return 0;
    }
    for (size_t i = 0; i < sizeof int_flags / sizeof int_flags[0]; i++) {
        if (strcmp(f, int_flags[i].name)) continue;
        if (qi_app_parse_int(f, v, int_flags[i].lo, int_flags[i].hi, &x)) return 2;
        *(int *)((char *)o + int_flags[i].off) = (int)x;
        return 0;
    }
    if (!strcmp(f, "--lora")) return qi_app_add_lora(v, m);
    if (!strcmp(f, "--lora-mode")) return qi_app_parse_lora_mode(f, v, &m->lora_mode);
    if (!strcmp(f, "--lora-dir")) {
        struct stat st;
        if (stat(v, &st) != 0 || !S_ISDIR(st.st_mode))
            return qi_app_usage_error("serve: --lora-dir %s: not a folder", v);
        o->lora_dir = v;
        return 0;
    }
    if (!strcmp(f, "--max-body")) {
        if (qi_app_parse_int(f, v, 1024, 1L << 30, &x)) return 2;
        o->max_body = (size_t)x;
    } else if (!strcmp(f, "--device")) m->device = v;
    else if (!strcmp(f, "--devices")) m->devices = v;
    else if (!strcmp(f, "--threads")) return qi_app_parse_threads(f, v, &m->threads);
    else if (!strcmp(f, "--vram")) return qi_app_parse_size(f, v, &m->vram);
    else if (!strcmp(f, "--pinned")) return qi_app_parse_pinned(f, v, &m->pinned);
    else if (!strcmp(f, "--edit-vl-area")) return qi_app_parse_int(f, v, 1024, 1L << 26, &m->edit_vl_area);
    else if (!strcmp(f, "--edit-vae-area")) return qi_app_parse_int(f, v, 1024, 1L << 26, &m->edit_vae_area);
    else if (!strcmp(f, "--host")) o->host = v;
    else if (!strcmp(f, "--api-key")) o->api_key = v;
    else if (!strcmp(f, "--random-weights")) {
        if (qi_app_parse_int(f, v, 1, 1L << 30, &x)) return 2;
        o->random_weights = (unsigned long long)x;
    }
    else return qi_app_usage_error("serve: unknown option %s", f);
    return 0;
}

static int parse_serve_args(int argc, char **argv, serve_opts *o) {
    memset(o, 0, sizeof *o);
    o->model.device = "cpu";
    o->model.max_seq_len = 512;
    o->model.pinned = -1;
    o->host = "127.0.0.1";
    o->port = 8080, o->queue = 8, o->max_size = 2048, o->max_steps = 100, o->max_batch = 4;
    o->max_body = (size_t)32 << 20; /* /v1/images/edits carries pictures (OpenAI takes up to 50 MB) */
    o->timeout_s = 15;
    o->prompt_cache = 8;
    o->url_ttl = 3600;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            serve_usage();
            return -1;
        }
        if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(f, "--edit")) {
            o->model.edit = 1;
            continue;
        }
        if (!v) return qi_app_usage_error("serve: %s needs a value", f);
        int rc = parse_serve_flag(f, v, o);
        if (rc) return rc;
        i++;
    }
    gen_args *m = &o->model;
    m->model = qi_app_model_or_default(m->model, m->diffusion_model, m->text_encoder, m->vae, o->quiet);
    if (!m->edit) m->edit = qi_app_model_is_edit(m->model); /* as generate decides */
    if (!m->edit && (m->edit_vl_area || m->edit_vae_area))
        return qi_app_usage_error("serve: --edit-vl-area / --edit-vae-area need a Qwen-Image-Edit model");
    return 0;
}

static void log_line(void *user, const char *line) {
    const serve *s = user;
    if (!s->opt.quiet) fprintf(stderr, "qwen-image: %s\n", line);
}

/* A pending SIGINT/SIGTERM cancels loading. */
static int load_progress(void *user, const char *stage, int step, int total) {
    (void)user, (void)stage, (void)step, (void)total;
    sigset_t p;
    sigpending(&p);
    return sigismember(&p, SIGINT) || sigismember(&p, SIGTERM);
}

/* Opens and warms the engine, then the warm-up image fits the preview map. 0 or the exit code. */
static int load(serve *s) {
    const gen_args *m = &s->opt.model;
    qi_open_options o = qi_open_options_default();
    o.edit = s->opt.model.edit;
    o.model_dir = m->model, o.diffusion_model = m->diffusion_model, o.text_encoder = m->text_encoder;
    o.vae = m->vae, o.mmproj = m->mmproj, o.device = m->device, o.devices = m->devices, o.threads = (int)m->threads;
    o.vram_bytes = m->vram;
    o.pinned_bytes = m->pinned;
    /* per-request LoRAs swap the small factors beside the weights, where fused
     * ones would reload the transformer at every change */
    if (s->opt.lora_dir && m->lora_mode == QI_LORA_AUTO) s->opt.model.lora_mode = QI_LORA_RUNTIME;
    o.lora_mode = m->lora_mode; /* recorded in the images' parameters too */
    o.log = log_line, o.log_user = s;
    o.prompt_cache = s->opt.prompt_cache;
    o.random_weights = s->opt.random_weights;
    /* the transformer loads beside the text encoder (as generate's): LoRAs given here are added after
     * the open, and a fused set would reload it, so with any it loads at the warm-up, as before */
    o.load_transformer = m->n_loras == 0;
    qi_status st = qi_engine_open(&o, &s->engine);
    for (int i = 0; !st && i < m->n_loras; i++) st = qi_engine_add_lora(s->engine, m->lora_path[i],
                                                                        m->lora_strength[i]);
    if (!st) st = qi_engine_warm(s->engine, load_progress, s);
    double t0 = serve_now();
    qi_request r = qi_request_default();
    r.prompt = "a warm-up image";
    /* 128²: 256 latent pixels, 15x the fit's 17 unknowns */
    r.width = r.height = s->opt.max_size < 128 ? s->opt.max_size / 16 * 16 : 128;
    r.steps = 2; /* 1 step cannot end at shift_terminal (Qwen-Image's own scheduler) */
    r.progress = load_progress;
    qi_image img = {0};
    if (!st) st = qi_generate(s->engine, &r, &img);
    if (!st && serve_preview_fit(&s->map, &img) && !s->opt.quiet)
        fprintf(stderr, "qwen-image: warning: the preview map did not fit; previews are off\n");
    qi_image_free(&img);
    if (st) {
        fprintf(stderr, "qwen-image: error: %s\n", s->engine ? qi_engine_error(s->engine) : qi_status_name(st));
        return st == QI_ERR_CANCELLED ? QI_APP_EXIT_INTERRUPTED : qi_app_exit_code(st);
    }
    if (!s->opt.quiet) fprintf(stderr, "qwen-image: warm-up image in %.2f s\n", serve_now() - t0);
    serve_loras_loaded(s);
    return 0;
}

/* SIGTERM: new requests get 503, the queue is emptied, the running job
 * finishes (a second signal stops it at its next step). */
static void drain(serve *s, const sigset_t *set) {
    serve_jobs_drain(s);
    struct timespec poll = {0, 100 * 1000000L};
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int busy = 0;
        for (job *j = s->all; j; j = j->next_all) busy |= j->state == JOB_RUNNING;
        pthread_mutex_unlock(&s->lock);
        if (!busy || sigtimedwait(set, NULL, &poll) > 0) return;
    }
}

static int run_server(serve *s) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread made from here on inherits it */
    if (serve_http_start(s)) return 1;
    if (!s->opt.quiet) fprintf(stderr, "qwen-image: listening on http://%s:%d/ (loading the model)\n", s->opt.host,
                               s->opt.port);
    int rc = load(s);
    if (!rc && serve_jobs_start(s)) rc = qi_app_runtime_error("cannot start the worker thread");
    if (!rc) {
        pthread_mutex_lock(&s->lock);
        s->ready = 1;
        pthread_mutex_unlock(&s->lock);
        fprintf(stderr, "qwen-image: serving on http://%s:%d/\n", s->opt.host, s->opt.port);
        int sig = 0;
        sigwait(&set, &sig);
        if (!s->opt.quiet) fprintf(stderr, "qwen-image: %s: %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                                   sig == SIGTERM ? "draining" : "stopping");
        if (sig == SIGTERM) drain(s, &set);
        serve_jobs_stop(s);
    }
    serve_http_stop(s); /* joins every connection thread: each has seen its job end */
    serve_files_clear();
    return rc;
}

int qi_cmd_serve(int argc, char **argv) {
    serve *s = calloc(1, sizeof *s);
    if (!s) return qi_app_runtime_error("out of memory");
    int rc = parse_serve_args(argc, argv, &s->opt);
    if (!rc) {
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        rc = run_server(s);
        if (s->engine) qi_engine_close(s->engine);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        if (!rc && !s->opt.quiet) fprintf(stderr, "qwen-image: stopped\n");
    }
    free(s);
    return rc < 0 ? 0 : rc;
}

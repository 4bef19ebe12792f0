/*
 * serve_jobs.c — jobs, the bounded queue, and the one worker thread that owns
 * the engine.
 *
 * A job is made by a request, queued (at most --queue waiting; more is 429),
 * run by the worker (the engine allows one call at a time, so there is one
 * worker), and kept afterwards for GET /v1/jobs/{id} until it is one of the
 * oldest of more than JOBS_KEPT finished jobs. Cancel: a queued job leaves the
 * queue at once; a running one stops at the next progress report (the
 * engine's progress callback returns nonzero: the next step, or the next
 * stage boundary). Each image is encoded here with the parameters text a
 * `generate` run with the same settings writes, so the bytes equal the CLI's.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"

#define JOBS_KEPT 64 /* finished jobs remembered */

double serve_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *serve_job_state_name(job_state st) {
    static const char *const names[] = {"queued", "running", "completed", "failed", "cancelled"};
    return names[st];
}

job *serve_job_new(void) {
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->refs = 1;
    j->n_loras = -1;
    j->state = JOB_QUEUED;
    j->created = serve_now();
    return j;
}

static void job_free(job *j) {
    free(j->prompt);
    free(j->negative);
    qi_free_bytes(j->init_rgb);
    qi_free_bytes(j->mask_rgb);
    free(j->init_name);
    free(j->mask_name);
    for (int k = 0; k < 2; k++) qi_free_bytes(j->more_rgb[k]), free(j->more_name[k]);
    for (int i = 0; i < j->n_loras; i++) free(j->lora_path[i]);
    qi_free_bytes(j->preview);
    for (int i = 0; i < j->n_partial; i++) free(j->partial[i]);
    for (int i = 0; i < SERVE_MAX_N; i++) qi_free_bytes(j->images[i].bytes);
    free(j);
}

void serve_job_put(serve *s, job *j) {
    if (!j) return;
    pthread_mutex_lock(&s->lock);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (last) job_free(j);
}

job *serve_job_find(serve *s, const char *id) {
    pthread_mutex_lock(&s->lock);
    job *j = s->all;
    while (j && strcmp(j->id, id)) j = j->next_all;
    if (j) j->refs++;
    pthread_mutex_unlock(&s->lock);
    return j;
}

int serve_job_position(serve *s, const job *j) {
    int pos = 0;
    for (const job *q = s->queue_head; q; q = q->next_queued, pos++)
        if (q == j) return pos;
    return -1;
}

static int finished(job_state st) { return st >= JOB_COMPLETED; }

/* Drops the oldest finished jobs beyond JOBS_KEPT from the table (locked). */
static void forget_old_jobs(serve *s) {
    int kept = 0;
    for (job **p = &s->all; *p;) {
        job *j = *p;
        if (finished(j->state) && ++kept > JOBS_KEPT) {
            *p = j->next_all;
            if (--j->refs == 0) job_free(j);
            continue;
        }
        p = &j->next_all;
    }
}

int serve_job_submit(serve *s, job *j, int *retry_after) {
    pthread_mutex_lock(&s->lock);
    int closed = s->stopping || s->draining || !s->ready;
    if (closed || s->queued >= s->opt.queue) {
        *retry_after = closed ? 0 : (int)ceil((s->queued + 1) * (s->avg_job_s > 0 ? s->avg_job_s : 1.0));
        if (*retry_after < 1 && !closed) *retry_after = 1;
        s->rejected++;
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    snprintf(j->id, sizeof j->id, "img_%llu_%08x", ++s->next_id, (unsigned)(serve_now() * 1e6));
    j->refs++; /* the table's */
    j->next_all = s->all;
    s->all = j;
    if (s->queue_tail) s->queue_tail->next_queued = j;
    else s->queue_head = j;
    s->queue_tail = j;
    s->queued++;
    forget_old_jobs(s);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* Takes j out of the queue (locked); 1 if it was there. */
static int unqueue(serve *s, job *j) {
    job *prev = NULL;
    for (job *q = s->queue_head; q; prev = q, q = q->next_queued) {
        if (q != j) continue;
        if (prev) prev->next_queued = q->next_queued;
        else s->queue_head = q->next_queued;
        if (s->queue_tail == q) s->queue_tail = prev;
        q->next_queued = NULL;
        s->queued--;
        return 1;
    }
    return 0;
}

void serve_job_cancel(serve *s, job *j) {
    pthread_mutex_lock(&s->lock);
    j->cancel = 1;
    if (j->state == JOB_QUEUED && unqueue(s, j)) {
        j->state = JOB_CANCELLED;
        j->finished = serve_now();
        j->seq++;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* ---- the worker ------------------------------------------------------------------- */

/* The denoising step (1-based, of total) at which OpenAI partial image k (0-based) of P falls due:
 * spread evenly over the steps. */
int serve_partial_due(int k, int P, int total) { return ((k + 1) * total + P) / (P + 1); }

typedef struct run_ctx {
    serve *s;
    job *j;
} run_ctx;

static int on_progress(void *user, const char *stage, int step, int total) {
    run_ctx *c = user;
    pthread_mutex_lock(&c->s->lock);
    int stop = c->j->cancel || c->s->stopping;
    if (!strcmp(stage, "denoise") && step > c->j->step) { /* step i is reported before it runs */
        c->j->total = total;
        if (c->s->opt.model.edit) c->j->step = step; /* Edit makes no step latents (on_latents): count here */
        c->j->seq++;
        pthread_cond_broadcast(&c->s->cond);
    }
    pthread_mutex_unlock(&c->s->lock);
    return stop;
}

static void on_latents(void *user, int step, int total, const qi_image *lat) {
    run_ctx *c = user;
    uint8_t *png = NULL;
    size_t len = 0;
    if (c->j->previews && c->s->map.fitted && serve_preview_png(&c->s->map, lat, &png, &len)) png = NULL;
    pthread_mutex_lock(&c->s->lock);
    if (step > c->j->step) c->j->step = step; /* (previews arrive from their own thread, progress from the loop) */
    c->j->total = total;
    job *j = c->j;
    if (png && j->n_partial < j->partial_images && j->n_partial < 3 &&
        step >= serve_partial_due(j->n_partial, j->partial_images, total)) {
        /* a copy kept for the stream: the latest preview is replaced at every step */
        if ((j->partial[j->n_partial] = malloc(len))) {
            memcpy(j->partial[j->n_partial], png, len);
            j->partial_len[j->n_partial++] = len;
        }
    }
    if (png) {
        qi_free_bytes(c->j->preview);
        c->j->preview = png;
        c->j->preview_len = len;
        c->j->preview_step = step;
    }
    c->j->seq++;
    pthread_cond_broadcast(&c->s->cond);
    pthread_mutex_unlock(&c->s->lock);
}

/* The generate flags this job stands for (the server's model flags + the request). */
static void job_args(const serve *s, const job *j, gen_args *a) {
    *a = s->opt.model;
    a->prompts[0] = j->prompt;
    a->n_prompts = 1;
    a->negative = j->negative;
    a->width = j->width;
    a->height = j->height;
    a->steps = j->steps;
    a->cfg = j->cfg;
    a->seed = j->seed;
    a->batch = j->n;
    a->scheduler = j->scheduler;
    a->quiet = 1;
    if (j->init_rgb) a->image = j->init_name, a->mask = j->mask_name, a->strength = j->strength;
    a->image_w = j->init_w, a->image_h = j->init_h;
    if (a->edit) { /* as generate's check_edit: the pictures are the references, no strength */
        a->n_more_images = j->n_more;
        for (int k = 0; k < j->n_more; k++)
            a->more_images[k] = j->more_name[k], a->more_w[k] = j->more_w[k], a->more_h[k] = j->more_h[k];
        a->size_given = j->size_given;
        if (!j->size_given) a->width = a->height = 0; /* the last picture's aspect at 1024² */
    }
    if (j->n_loras >= 0) { /* the request's set replaces the server's */
        a->n_loras = j->n_loras;
        for (int i = 0; i < j->n_loras; i++) a->lora_path[i] = j->lora_path[i], a->lora_strength[i] = j->lora_strength[i];
    }
}

int serve_job_check(const serve *s, const job *j, char *msg, size_t cap) {
    gen_args a;
    job_args(s, j, &a);
    qi_app_last_error[0] = 0;
    if (!qi_app_precheck_schedule(&a)) return 0;
    snprintf(msg, cap, "%s", qi_app_last_error[0] ? qi_app_last_error : "the request failed the scheduler check");
    return -1;
}

void serve_loras_loaded(serve *s) {
    const gen_args *m = &s->opt.model;
    for (int i = 0; i < m->n_loras; i++) {
        if (!(s->cur_path[i] = strdup(m->lora_path[i]))) return; /* lora_known stays 0: set anew */
        s->cur_strength[i] = m->lora_strength[i];
        s->cur_n = i + 1;
    }
    s->lora_known = 1;
}

static void forget_loras(serve *s) {
    for (int i = 0; i < s->cur_n; i++) free(s->cur_path[i]);
    s->cur_n = 0;
    s->lora_known = 0;
}

/* The engine's LoRA set made a's (a swap of the small factors in runtime
 * mode; a reload where they are fused), unless it holds that set already. */
static qi_status use_loras(serve *s, const gen_args *a) {
    int same = s->lora_known && s->cur_n == a->n_loras;
    for (int i = 0; same && i < a->n_loras; i++)
        same = !strcmp(s->cur_path[i], a->lora_path[i]) && s->cur_strength[i] == a->lora_strength[i];
    if (same) return QI_OK;
    forget_loras(s);
    qi_lora_spec spec[QI_APP_MAX_LORAS];
    for (int i = 0; i < a->n_loras; i++) spec[i] = (qi_lora_spec){a->lora_path[i], a->lora_strength[i]};
    qi_status st = qi_engine_set_loras(s->engine, spec, a->n_loras);
    for (int i = 0; !st && i < a->n_loras; i++) {
        if (!(s->cur_path[i] = strdup(a->lora_path[i]))) return QI_ERR_NOMEM; /* lora_known stays 0 */
        s->cur_strength[i] = a->lora_strength[i];
        s->cur_n = i + 1;
    }
    return st;
}

static void fail(job *j, int status, const char *msg) {
    snprintf(j->error, sizeof j->error, "%s", msg);
    j->error_status = status;
    j->state = JOB_FAILED;
}

/* Runs j (unlocked; j is RUNNING). Results land in j under the lock. */
static void run_job(serve *s, job *j) {
    gen_args a;
    job_args(s, j, &a);
    prompt_note notes[1] = {{0, 0}};
    job_image imgs[SERVE_MAX_N];
    memset(imgs, 0, sizeof imgs);
    char err[1024] = "";
    qi_app_last_error[0] = 0;
    int st = qi_app_precheck(&a, notes);
    /* the model loaded at start-up, so what fails the checks is the request's (steps, scheduler, prompt) */
    int status = st ? 400 : 500;
    if (st) snprintf(err, sizeof err, "%s", qi_app_last_error[0] ? qi_app_last_error : "the request failed the "
                                                                  "checks before generating (see the server log)");
    qi_image img = {0};
    run_ctx ctx = {s, j};
    if (!st && (st = (use_loras(s, &a) != QI_OK)))
        snprintf(err, sizeof err, "%s", qi_engine_error(s->engine));
    if (!st) {
        qi_request r = qi_request_default();
        r.prompt = j->prompt;
        r.negative_prompt = j->negative;
        r.width = j->width, r.height = j->height, r.steps = j->steps, r.cfg = (float)j->cfg;
        r.seed = j->seed, r.batch = j->n, r.scheduler = j->scheduler;
        const uint8_t *pictures[3] = {j->init_rgb, j->more_rgb[0], j->more_rgb[1]};
        int widths[3] = {j->init_w, j->more_w[0], j->more_w[1]}, heights[3] = {j->init_h, j->more_h[0], j->more_h[1]};
        if (a.edit) { /* generate's request, field for field */
            r.width = (int)a.width, r.height = (int)a.height;
            r.n_edit_images = 1 + j->n_more;
            r.edit_images = pictures, r.edit_widths = widths, r.edit_heights = heights;
            r.edit_vl_area = (int)a.edit_vl_area, r.edit_vae_area = (int)a.edit_vae_area;
        } else if (j->init_rgb) {
            r.init_image = j->init_rgb, r.init_width = j->init_w, r.init_height = j->init_h;
            r.mask_image = j->mask_rgb, r.mask_width = j->mask_w, r.mask_height = j->mask_h;
            r.strength = j->strength;
        }
        r.progress = on_progress, r.progress_user = &ctx;
        r.step_latents = on_latents, r.step_latents_user = &ctx;
        qi_status gst = qi_generate(s->engine, &r, &img);
        st = gst != QI_OK;
        if (gst == QI_ERR_ARG) status = 400;
        if (gst) snprintf(err, sizeof err, "%s", gst == QI_ERR_CANCELLED ? "cancelled" : qi_engine_error(s->engine));
        if (gst) forget_loras(s); /* a set that did not bind is gone again: set it anew next time */
        else s->lora_known = 1;
    }
    if (!st && !s->map.fitted) serve_preview_fit(&s->map, &img);
    for (int i = 0; !st && i < img.count && i < SERVE_MAX_N; i++) {
        char *params = qi_params_text(&a, i, img.count, notes, a.scheduler_hash);
        st = !params || qi_image_encode(&img, i, j->format, j->quality, params, &imgs[i].bytes, &imgs[i].len, err,
                                        sizeof err);
        if (!params) snprintf(err, sizeof err, "out of memory for the parameters text");
        free(params);
    }
    int out_w = img.width, out_h = img.height;
    qi_image_free(&img);
    pthread_mutex_lock(&s->lock);
    j->finished = serve_now();
    if (!st) {
        memcpy(j->images, imgs, sizeof imgs);
        j->out_w = out_w, j->out_h = out_h;
        j->state = JOB_COMPLETED;
        double dt = j->finished - j->started;
        s->avg_job_s = s->avg_job_s > 0 ? 0.7 * s->avg_job_s + 0.3 * dt : dt;
        s->completed++;
    } else {
        for (int i = 0; i < SERVE_MAX_N; i++) qi_free_bytes(imgs[i].bytes);
        if (j->cancel || s->stopping) j->state = JOB_CANCELLED;
        else fail(j, status, err);
        if (j->state == JOB_FAILED) s->failed++;
        else s->cancelled++;
    }
    j->seq++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void *worker(void *arg) {
    serve *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stopping && !s->queue_head) pthread_cond_wait(&s->cond, &s->lock);
        if (s->stopping) break;
        job *j = s->queue_head;
        unqueue(s, j);
        j->refs++;
        j->state = JOB_RUNNING;
        j->started = serve_now();
        j->total = j->steps;
        j->seq++;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        run_job(s, j);
        serve_job_put(s, j);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int serve_jobs_start(serve *s) { return pthread_create(&s->worker, NULL, worker, s) ? -1 : 0; }

/* The queued jobs cancelled (locked). */
static void cancel_queued(serve *s) {
    while (s->queue_head) {
        job *j = s->queue_head;
        unqueue(s, j);
        j->cancel = 1;
        j->state = JOB_CANCELLED;
        j->finished = serve_now();
        j->seq++;
    }
    pthread_cond_broadcast(&s->cond);
}

void serve_jobs_drain(serve *s) {
    pthread_mutex_lock(&s->lock);
    s->draining = 1;
    cancel_queued(s);
    pthread_mutex_unlock(&s->lock);
}

/* Every queued job cancelled, the running one stops at its next step, the
 * worker joined, the table emptied (requests still holding a job keep it). */
void serve_jobs_stop(serve *s) {
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    cancel_queued(s);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->worker, NULL);
    forget_loras(s);
    pthread_mutex_lock(&s->lock);
    while (s->all) {
        job *j = s->all;
        s->all = j->next_all;
        if (--j->refs == 0) job_free(j);
    }
    pthread_mutex_unlock(&s->lock);
}

/* ---- previews ------------------------------------------------------------------------- */

int serve_preview_png(const preview_map *m, const qi_image *lat, uint8_t **png, size_t *len) {
    int lh = lat->height / 8, lw = lat->width / 8;
    size_t plane = (size_t)lh * lw;
    qi_image pv = {.width = lw, .height = lh, .count = 1, .rgb = malloc(plane * 3)};
    if (!pv.rgb) return -1;
    for (size_t p = 0; p < plane; p++) /* image 0: [16, 1, lh, lw] */
        for (int c = 0; c < 3; c++) {
            float v = m->b[c];
            for (int k = 0; k < 16; k++) v += m->w[c][k] * lat->latents[k * plane + p];
            pv.rgb[p * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
        }
    int rc = qi_image_encode(&pv, 0, QI_IMAGE_PNG, 0, NULL, png, len, NULL, 0) ? -1 : 0;
    free(pv.rgb);
    return rc;
}

/* Solves the symmetric positive system A x = b (n ≤ 17) by Cholesky; 0 or -1. */
static int solve_spd(double *A, double *b, int n) {
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < i; k++) A[i * n + i] -= A[i * n + k] * A[i * n + k];
        if (A[i * n + i] <= 0) return -1;
        A[i * n + i] = sqrt(A[i * n + i]);
        for (int r = i + 1; r < n; r++) {
            for (int k = 0; k < i; k++) A[r * n + i] -= A[r * n + k] * A[i * n + k];
            A[r * n + i] /= A[i * n + i];
        }
    }
    for (int i = 0; i < n; i++) { /* L y = b */
        for (int k = 0; k < i; k++) b[i] -= A[i * n + k] * b[k];
        b[i] /= A[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) { /* L^T x = y */
        for (int k = i + 1; k < n; k++) b[i] -= A[k * n + i] * b[k];
        b[i] /= A[i * n + i];
    }
    return 0;
}

/* Least squares over image 0's latent pixels: [z, 1] (17) → the mean RGB of
 * the 8×8 pixel block that latent pixel decodes to, with a small ridge so a
 * flat image still solves. */
int serve_preview_fit(preview_map *m, const qi_image *img) {
    enum { K = 17 };
    int lh = img->height / 8, lw = img->width / 8;
    size_t plane = (size_t)lh * lw;
    double A[K * K] = {0}, B[3][K] = {{0}};
    for (int y = 0; y < lh; y++)
        for (int x = 0; x < lw; x++) {
            double z[K], rgb[3] = {0, 0, 0};
            for (int k = 0; k < 16; k++) z[k] = img->latents[k * plane + (size_t)y * lw + x];
            z[16] = 1;
            for (int dy = 0; dy < 8; dy++)
                for (int dx = 0; dx < 8; dx++)
                    for (int c = 0; c < 3; c++)
                        rgb[c] += img->rgb[(((size_t)(y * 8 + dy) * img->width) + x * 8 + dx) * 3 + c] / 64.0;
            for (int i = 0; i < K; i++) {
                for (int k = 0; k < K; k++) A[i * K + k] += z[i] * z[k];
                for (int c = 0; c < 3; c++) B[c][i] += z[i] * rgb[c];
            }
        }
    for (int i = 0; i < 16; i++) A[i * K + i] += 1e-3 * (double)plane;
    for (int c = 0; c < 3; c++) {
        double a[K * K];
        memcpy(a, A, sizeof a);
        if (solve_spd(a, B[c], K)) return -1;
        for (int k = 0; k < 16; k++) m->w[c][k] = (float)B[c][k];
        m->b[c] = (float)B[c][16];
    }
    m->fitted = 1;
    return 0;
}

/*
 * serve.h — what the files of `qwen-image serve` share.
 *
 *   serve.c       the command: flags, engine open + warm, the preview fit, signals
 *   serve_jobs.c  jobs, the bounded queue and the one worker thread that owns the engine
 *   serve_http.c  libmicrohttpd glue: bodies, limits, auth, responses, SSE streams
 *   serve_api.c   the endpoints: job → response JSON, errors sent
 *   serve_request.c request JSON → job fields (pure: tests/fuzz/fuzz_serve_request.c)
 *   serve_page.c  the web page at / (HTML/CSS/JS embedded at build time)
 *
 * Threads: libmicrohttpd runs one thread per connection; the worker thread is
 * the only one that calls into the engine (qwen_image.h: one call at a time).
 * Every job field below the lock line is guarded by the server's one mutex;
 * any change broadcasts its condition variable, and waiters (blocking
 * requests, event streams) re-check the job they wait on.
 */
#ifndef QI_SERVE_H
#define QI_SERVE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "qwen_image.h"

#define SERVE_MAX_N 8 /* hard ceiling of images per request (--max-batch is at most this) */

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED } job_state;

typedef struct job_image {
    uint8_t *bytes; /* the encoded file (qi_free_bytes) */
    size_t len;
} job_image;

typedef struct job {
    char id[40];
    /* the request, fixed once queued */
    char *prompt, *negative;
    int width, height, n, steps, quality, partial_images;
    double cfg;
    uint64_t seed;
    const char *scheduler;          /* NULL, "lightning" or "model" (static strings) */
    qi_image_format format;
    int async;                      /* POST /v1/jobs: a disconnect does not cancel it */
    int response_url;               /* response_format "url": the images as /v1/files/ links (serve_files.c) */
    int previews;                   /* make a preview per step */
    uint8_t *init_rgb, *mask_rgb;   /* /v1/images/edits: the picture and mask [h, w, 3] (qi_free_bytes) */
    int init_w, init_h, mask_w, mask_h;
    double strength;
    char *init_name, *mask_name;    /* the uploaded files' names (the parameters text) */
    /* an Edit model: init_* is picture 1, these are pictures 2 and 3 */
    uint8_t *more_rgb[2];
    int more_w[2], more_h[2], n_more;
    char *more_name[2];
    int size_given;                 /* `size` was in the request (Edit: else the last picture's aspect) */
    int n_loras;                    /* -1: the server's --lora set; else the request's `loras` */
    char *lora_path[QI_APP_MAX_LORAS]; /* resolved in --lora-dir (owned) */
    float lora_strength[QI_APP_MAX_LORAS];
    double created, started, finished; /* monotonic seconds */
    /* ---- guarded by serve.lock ---- */
    int refs;                       /* the job table's + each request holding it */
    job_state state;
    int step, total;                /* denoising step done, of total */
    int cancel;                     /* asked to stop (DELETE, disconnect, shutdown) */
    unsigned seq;                   /* bumped on every change a waiter may want */
    uint8_t *preview;               /* PNG of the latest step's preview (qi_free_bytes) */
    size_t preview_len;
    int preview_step;
    uint8_t *partial[3];            /* the OpenAI stream's partial images, each kept when it falls due, so a
                                       reader that falls behind the steps still gets all of them (malloc) */
    size_t partial_len[3];
    int n_partial;
    job_image images[SERVE_MAX_N];  /* when completed */
    int out_w, out_h;               /* their size (an Edit request may leave it to the pictures) */
    char error[512];                /* when failed */
    int error_status;               /* the HTTP status of the failure (400, 500) */
    struct job *next_queued, *next_all;
} job;

/* The 16 → 3 linear map from a latent pixel to the preview's RGB (0..255),
 * with a bias: rgb[c] = b[c] + sum_k w[c][k] z[k]. Fitted by least squares
 * at start-up from the warm-up image the model itself made (serve.c). */
typedef struct preview_map {
    float w[3][16], b[3];
    int fitted;
} preview_map;

typedef struct serve_opts {
    gen_args model;        /* the generate model flags (model, files, loras, device, threads) */
    const char *host, *api_key;
    const char *lora_dir;  /* --lora-dir: the LoRA files a request may name in `loras` */
    int port, queue, max_size, max_steps, max_batch, timeout_s, prompt_cache, url_ttl;
    size_t max_body;
    unsigned long long random_weights; /* benchmarks: qi_open_options.random_weights */
    int quiet;
} serve_opts;

typedef struct serve {
    serve_opts opt;
    qi_engine *engine;
    preview_map map;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job *queue_head, *queue_tail; /* queued jobs, oldest first */
    int queued;
    job *all;                     /* every job the server remembers, newest first */
    int jobs_kept;
    unsigned long long next_id;
    int stopping;                 /* SIGINT/SIGTERM: no new jobs, the worker ends */
    int ready;                    /* the engine is warm */
    int draining;                 /* SIGTERM: no new jobs, the running one finishes */
    double avg_job_s;             /* for Retry-After and eta */
    unsigned long long completed, failed, rejected, cancelled;
    /* the LoRA set the engine holds (the worker's alone): what the last
     * qi_engine_set_loras gave, once a generation ran with it */
    int lora_known, cur_n;
    char *cur_path[QI_APP_MAX_LORAS];
    float cur_strength[QI_APP_MAX_LORAS];
    pthread_t worker;
    struct MHD_Daemon *httpd;
} serve;

/* ---- serve_jobs.c ---- */
int serve_jobs_start(serve *s);
void serve_loras_loaded(serve *s); /* the engine holds the --lora set (after load) */
void serve_jobs_stop(serve *s);    /* cancels everything, joins the worker */
void serve_jobs_drain(serve *s);   /* no new jobs (503), the queued ones cancelled */
/* Queues j (refs: the table's + the caller's). 0, or -1 when the queue is
 * full (*retry_after set) or the server is stopping (*retry_after = 0). */
int serve_job_submit(serve *s, job *j, int *retry_after);
job *serve_job_new(void);          /* refs 1 (the caller's), QUEUED */
job *serve_job_find(serve *s, const char *id); /* a reference (serve_job_put it), or NULL */
void serve_job_put(serve *s, job *j); /* drops one reference */
int serve_partial_due(int k, int P, int total); /* the step at which OpenAI partial image k of P falls due */
void serve_job_cancel(serve *s, job *j);
/* What can be checked before queueing (the schedule for these steps and
 * this size): 0, or -1 with the reason in msg. */
int serve_job_check(const serve *s, const job *j, char *msg, size_t cap);
int serve_job_position(serve *s, const job *j); /* 0-based place in the queue, -1 when not queued (locked) */
const char *serve_job_state_name(job_state st);
double serve_now(void);
/* Preview image of the latents: one RGB pixel per latent pixel, PNG. */
int serve_preview_png(const preview_map *m, const qi_image *lat, uint8_t **png, size_t *len);
/* The least-squares fit of m from an image's latents and pixels. 0 or -1. */
int serve_preview_fit(preview_map *m, const qi_image *img);

/* ---- serve_http.c ---- */
int serve_http_start(serve *s);
void serve_http_stop(serve *s);

/* ---- serve_api.c ---- */
struct MHD_Connection;
struct cJSON;
typedef struct http_req {
    struct MHD_Connection *conn;
    const char *method, *url;
    const char *body;
    size_t body_len;
} http_req;
/* Answers one request (the body is complete and within the limit; the key
 * checked). Returns MHD_YES/MHD_NO as libmicrohttpd's handler does. */
int serve_api_dispatch(serve *s, const http_req *r);
/* JSON error {"error": {message, type, param, code}} with that status. */
int serve_send_error(struct MHD_Connection *c, int status, const char *type, const char *param, const char *code,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int serve_send_json(struct MHD_Connection *c, int status, struct cJSON *body); /* frees body */

/* ---- serve_files.c: response_format "url" ---- */
/* Keeps a copy of an image for ttl_s seconds under a new random name (<hex>.<ext>, into name). 0 or -1. */
int serve_files_put(int ttl_s, const uint8_t *bytes, size_t len, const char *ext, char *name, size_t cap);
int serve_files_send(struct MHD_Connection *c, const char *name); /* GET /v1/files/<name> */
/* "scheme://host[:port]" of the URLs: the request's Host header (X-Forwarded-Proto https behind a proxy). */
void serve_files_base(const serve *s, struct MHD_Connection *c, char *base, size_t cap);
void serve_files_clear(void);

/* ---- serve_page.c ---- */
int serve_page_send(struct MHD_Connection *c);


#endif

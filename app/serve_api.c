/*
 * serve_api.c — the endpoints of `qwen-image serve` (README "Serving" lists
 * every field).
 *
 *   GET  /health                   200 ready, 503 loading or stopping
 *   GET  /v1/models                the loaded model
 *   POST /v1/images/generations    OpenAI's Images API: waits, or streams (stream: true) events
 *   POST /v1/images/edits          the same from a picture (multipart; serve_edits.c)
 *   POST /v1/jobs                  202 {id, status, queue_position}
 *   GET  /v1/jobs/{id}             status, step/steps, progress, eta_s, latest preview
 *   DELETE /v1/jobs/{id}           cancel (a running job stops at the next step)
 *   GET  /v1/jobs/{id}/events      the same as server-sent events
 *   GET  /                         the web page
 *
 * Every error is {"error": {"message", "type", "param", "code"}}. A client
 * that goes away cancels its job, except a job made through /v1/jobs.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <dirent.h>
#include <time.h>

#include "serve.h"
#include "serve_api.h"
#include "serve_request.h"

int serve_send_json(struct MHD_Connection *c, int status, cJSON *body) {
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (!text) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    int rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static cJSON *error_body(const char *type, const char *param, const char *code, const char *msg) {
    cJSON *e = cJSON_CreateObject(), *root = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    cJSON_AddItemToObject(root, "error", e);
    return root;
}

int serve_send_error(struct MHD_Connection *c, int status, const char *type, const char *param, const char *code,
                     const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return serve_send_json(c, status, error_body(type, param, code, msg));
}

char *serve_base64(const uint8_t *p, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* The request body → a new job (refs 1), or NULL after answering 400/500. */
job *serve_parse_generation(serve *s, const http_req *r, int *stream) {
    job *j = serve_job_new();
    if (!j) {
        serve_send_error(r->conn, 500, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    uint64_t random_seed = ((uint64_t)time(NULL) * 2654435761u ^ (uint64_t)(serve_now() * 1e9)) % 4294967296u;
    serve_req_error e;
    if (serve_parse_generation_body(&s->opt, r->body, r->body_len, random_seed, j, stream, &e)) {
        serve_send_error(r->conn, e.status, e.status == 400 ? "invalid_request_error" : "server_error", e.param,
                         e.status == 400 ? "invalid_value" : NULL, "%s", e.msg);
        serve_job_put(s, j);
        return NULL;
    }
    return j;
}

/* Queues j or answers 429 / 503; 0 when queued. */
int serve_submit_or_answer(serve *s, struct MHD_Connection *c, job *j) {
    int retry = 0;
    if (!serve_job_submit(s, j, &retry)) return 0;
    if (!retry) {
        serve_send_error(c, 503, "server_error", NULL, "unavailable", "the server is %s",
                         s->stopping || s->draining ? "shutting down" : "loading the model");
        return -1;
    }
    char msg[256];
    snprintf(msg, sizeof msg, "the queue is full (%d waiting, --queue %d); retry in %d s", s->opt.queue,
             s->opt.queue, retry);
    cJSON *body = error_body("rate_limit_error", NULL, "queue_full", msg);
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    struct MHD_Response *resp = text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE)
                                     : NULL;
    if (!resp) {
        free(text);
        return -1;
    }
    char ra[32];
    snprintf(ra, sizeof ra, "%d", retry);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    MHD_queue_response(c, 429, resp);
    MHD_destroy_response(resp);
    return -1;
}

/* ---- answers ----------------------------------------------------------------------- */

static const char *format_name(qi_image_format f) {
    return f == QI_IMAGE_JPEG ? "jpeg" : f == QI_IMAGE_WEBP ? "webp" : "png";
}

/* Whether the client's socket was closed (a waiting request polls it). */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    return recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* The finished job's answer (locked by the caller; j is finished). */
static int answer_finished(serve *s, struct MHD_Connection *c, const job *j) {
    if (j->state == JOB_CANCELLED)
        return serve_send_error(c, 503, "server_error", NULL, "cancelled", "the job was cancelled%s",
                                j->error[0] ? "" : " (the server is stopping, or it was cancelled through DELETE)");
    if (j->state == JOB_FAILED)
        return serve_send_error(c, j->error_status ? j->error_status : 500,
                                j->error_status == 400 ? "invalid_request_error" : "server_error", NULL, NULL, "%s",
                                j->error);
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddNumberToObject(root, "created", (double)time(NULL));
    char base[300];
    if (j->response_url) serve_files_base(s, c, base, sizeof base);
    for (int i = 0; i < j->n && j->images[i].bytes; i++) {
        cJSON *item = cJSON_CreateObject();
        if (j->response_url) {
            char name[64], url[400];
            if (serve_files_put(s->opt.url_ttl, j->images[i].bytes, j->images[i].len, format_name(j->format), name,
                                sizeof name)) {
                cJSON_Delete(item), cJSON_Delete(root);
                return serve_send_error(c, 500, "server_error", NULL, "out_of_memory",
                                        "could not keep the image for its URL; ask with response_format b64_json");
            }
            snprintf(url, sizeof url, "%s/v1/files/%s", base, name);
            cJSON_AddStringToObject(item, "url", url);
        } else {
            char *b64 = serve_base64(j->images[i].bytes, j->images[i].len);
            if (b64) cJSON_AddStringToObject(item, "b64_json", b64);
            free(b64);
        }
        cJSON_AddItemToArray(data, item);
    }
    char size[32];
    snprintf(size, sizeof size, "%dx%d", j->out_w ? j->out_w : j->width, j->out_h ? j->out_h : j->height);
    cJSON_AddStringToObject(root, "size", size);
    cJSON_AddStringToObject(root, "output_format", format_name(j->format));
    cJSON_AddNumberToObject(root, "seed", (double)j->seed);
    return serve_send_json(c, 200, root);
}

void serve_wait_job(serve *s, struct MHD_Connection *c, job *j) {
    pthread_mutex_lock(&s->lock);
    while (j->state < JOB_COMPLETED) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        if (j->state < JOB_COMPLETED && !j->cancel && client_gone(c)) {
            pthread_mutex_unlock(&s->lock);
            serve_job_cancel(s, j);
            pthread_mutex_lock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

/* POST /v1/images/generations without stream: waits for the job; a client
 * that disconnects meanwhile cancels it. */
int serve_generate_blocking(serve *s, struct MHD_Connection *c, job *j) {
    serve_wait_job(s, c, j);
    pthread_mutex_lock(&s->lock);
    int rc = answer_finished(s, c, j);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* The job as GET /v1/jobs/{id} shows it (locked). */
cJSON *serve_job_json(serve *s, const job *j, int with_preview) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", "job");
    cJSON_AddStringToObject(o, "status", serve_job_state_name(j->state));
    int pos = serve_job_position(s, j);
    if (pos >= 0) cJSON_AddNumberToObject(o, "queue_position", pos);
    cJSON_AddNumberToObject(o, "step", j->step);
    cJSON_AddNumberToObject(o, "steps", j->steps);
    cJSON_AddNumberToObject(o, "progress", j->state == JOB_COMPLETED ? 1.0 : (double)j->step / j->steps);
    double eta = 0;
    if (j->state == JOB_RUNNING && j->step > 0) eta = (serve_now() - j->started) / j->step * (j->steps - j->step);
    else if (j->state == JOB_QUEUED) eta = (pos + 1) * (s->avg_job_s > 0 ? s->avg_job_s : 0);
    cJSON_AddNumberToObject(o, "eta_s", round(eta * 100) / 100);
    cJSON_AddNumberToObject(o, "seed", (double)j->seed);
    if (j->state == JOB_FAILED) cJSON_AddStringToObject(o, "error", j->error);
    if (with_preview && j->preview && j->state == JOB_RUNNING) {
        char *b64 = serve_base64(j->preview, j->preview_len);
        if (b64) cJSON_AddStringToObject(o, "preview", b64);
        cJSON_AddNumberToObject(o, "preview_step", j->preview_step);
        free(b64);
    }
    if (j->state == JOB_COMPLETED) {
        cJSON *data = cJSON_AddArrayToObject(o, "data");
        for (int i = 0; i < j->n && j->images[i].bytes; i++) {
            char *b64 = serve_base64(j->images[i].bytes, j->images[i].len);
            cJSON *item = cJSON_CreateObject();
            if (b64) cJSON_AddStringToObject(item, "b64_json", b64);
            free(b64);
            cJSON_AddItemToArray(data, item);
        }
        cJSON_AddStringToObject(o, "output_format", format_name(j->format));
    }
    return o;
}

/* ---- routes ------------------------------------------------------------------------ */

static int health(serve *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&s->lock);
    int ok = s->ready && !s->stopping && !s->draining;
    cJSON_AddStringToObject(o, "status", ok ? "ok" : s->stopping || s->draining ? "draining" : "loading");
    cJSON_AddNumberToObject(o, "queued", s->queued);
    cJSON_AddNumberToObject(o, "queue_limit", s->opt.queue);
    cJSON_AddNumberToObject(o, "completed", (double)s->completed);
    cJSON_AddNumberToObject(o, "failed", (double)s->failed);
    cJSON_AddNumberToObject(o, "rejected", (double)s->rejected);
    cJSON_AddNumberToObject(o, "cancelled", (double)s->cancelled);
    const job *run = s->all;
    while (run && run->state != JOB_RUNNING) run = run->next_all;
    if (run) cJSON_AddStringToObject(o, "running", run->id);
    else cJSON_AddNullToObject(o, "running");
    pthread_mutex_unlock(&s->lock);
    return serve_send_json(c, ok ? 200 : 503, o);
}

static int models(serve *s, struct MHD_Connection *c) {
    const gen_args *m = &s->opt.model;
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data"), *o = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddStringToObject(o, "id", "qwen-image");
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddStringToObject(o, "owned_by", "qwen-image.c");
    if (m->model) cJSON_AddStringToObject(o, "model", m->model);
    if (m->diffusion_model) cJSON_AddStringToObject(o, "diffusion_model", m->diffusion_model);
    if (m->text_encoder) cJSON_AddStringToObject(o, "text_encoder", m->text_encoder);
    if (m->vae) cJSON_AddStringToObject(o, "vae", m->vae);
    cJSON_AddStringToObject(o, "device", m->devices ? m->devices : m->device);
    /* t2i: text-to-image, and one picture (+ mask) for img2img / inpainting;
     * edit: Qwen-Image-Edit, 1 to 3 reference pictures, no picture-less request */
    cJSON_AddStringToObject(o, "mode", m->edit ? "edit" : "t2i");
    cJSON_AddNumberToObject(o, "max_images", m->edit ? SERVE_MAX_PICTURES : 1);
    cJSON *loras = cJSON_AddArrayToObject(o, "loras");
    for (int i = 0; i < m->n_loras; i++) {
        cJSON *l = cJSON_CreateObject();
        cJSON_AddStringToObject(l, "path", m->lora_path[i]);
        cJSON_AddNumberToObject(l, "strength", m->lora_strength[i]);
        cJSON_AddItemToArray(loras, l);
    }
    if (s->opt.lora_dir) { /* what a request may name in `loras` */
        cJSON *avail = cJSON_AddArrayToObject(o, "loras_available");
        DIR *d = opendir(s->opt.lora_dir);
        for (struct dirent *de; d && (de = readdir(d));) {
            size_t n = strlen(de->d_name);
            if (de->d_name[0] != '.' && n > 12 && !strcmp(de->d_name + n - 12, ".safetensors"))
                cJSON_AddItemToArray(avail, cJSON_CreateString(de->d_name));
        }
        if (d) closedir(d);
    }
    cJSON *lim = cJSON_AddObjectToObject(o, "limits");
    cJSON_AddNumberToObject(lim, "max_size", s->opt.max_size);
    cJSON_AddNumberToObject(lim, "max_steps", s->opt.max_steps);
    cJSON_AddNumberToObject(lim, "max_batch", s->opt.max_batch);
    cJSON_AddItemToArray(data, o);
    return serve_send_json(c, 200, root);
}

/* Queues a parsed job and answers: 202 (async), an event stream, or the
 * finished images. Takes the caller's reference. */
int serve_answer_job(serve *s, const http_req *r, job *j, int stream, int async) {
    char why[1024];
    if (serve_job_check(s, j, why, sizeof why)) { /* a 400 now rather than a failed job later */
        serve_job_put(s, j);
        return serve_send_error(r->conn, 400, "invalid_request_error", strstr(why, "-step") ? "steps" : "scheduler",
                                "invalid_value", "%s", why);
    }
    if (j->response_url && (stream || async)) { /* the events and GET /v1/jobs/{id} carry b64_json */
        serve_job_put(s, j);
        return serve_send_error(r->conn, 400, "invalid_request_error", "response_format", "invalid_value",
                                "response_format \"url\" is for a plain (not streamed) request: %s images as "
                                "b64_json", stream ? "a stream sends its" : "an async job keeps its");
    }
    j->async = async;
    j->previews = async || (stream && j->partial_images > 0);
    if (serve_submit_or_answer(s, r->conn, j)) {
        serve_job_put(s, j);
        return MHD_YES;
    }
    if (stream) return serve_events_send(s, r->conn, j, 1);
    int rc;
    if (async) {
        pthread_mutex_lock(&s->lock);
        rc = serve_send_json(r->conn, 202, serve_job_json(s, j, 0));
        pthread_mutex_unlock(&s->lock);
    } else {
        rc = serve_generate_blocking(s, r->conn, j);
    }
    serve_job_put(s, j);
    return rc;
}

/* POST /v1/images/generations and POST /v1/jobs (a multipart body to /v1/jobs: the pictures of an
 * edit, as /v1/images/edits takes them, run as an async job). */
static int generations(serve *s, const http_req *r, int async) {
    const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (async && type && !strncasecmp(type, "multipart/form-data", 19)) return serve_edits(s, r, 1);
    int stream = 0;
    job *j = serve_parse_generation(s, r, &stream);
    if (!j) return MHD_YES;
    if (s->opt.model.edit) { /* QwenImageEditPlusPipeline needs `image`; so does generate */
        serve_job_put(s, j);
        return serve_send_error(r->conn, 400, "invalid_request_error", "image", "invalid_value",
                                "this server's model is Qwen-Image-Edit, which edits pictures and makes none from "
                                "text alone: POST %s (multipart/form-data) with 1 to %d image[] parts and a prompt",
                                async ? "/v1/jobs" : "/v1/images/edits", SERVE_MAX_PICTURES);
    }
    return serve_answer_job(s, r, j, stream, async);
}

/* /v1/jobs/{id}[/events] */
static int jobs(serve *s, const http_req *r) {
    char id[64];
    const char *rest = r->url + strlen("/v1/jobs/");
    size_t n = strcspn(rest, "/");
    int events = !strcmp(rest + n, "/events");
    if (n == 0 || n >= sizeof id || (rest[n] && !events))
        return serve_send_error(r->conn, 404, "invalid_request_error", NULL, "not_found", "no such path: %s", r->url);
    memcpy(id, rest, n);
    id[n] = 0;
    int get = !strcmp(r->method, "GET"), del = !strcmp(r->method, "DELETE") && !events;
    if (!get && !del)
        return serve_send_error(r->conn, 405, "invalid_request_error", NULL, "method_not_allowed",
                                "%s %s: use GET%s", r->method, r->url, events ? "" : " or DELETE");
    job *j = serve_job_find(s, id);
    if (!j)
        return serve_send_error(r->conn, 404, "invalid_request_error", "id", "job_not_found",
                                "no job '%s' (finished jobs are kept for a while, then forgotten)", id);
    if (events) return serve_events_send(s, r->conn, j, 0);
    if (del) serve_job_cancel(s, j);
    pthread_mutex_lock(&s->lock);
    int rc = serve_send_json(r->conn, 200, serve_job_json(s, j, 1));
    pthread_mutex_unlock(&s->lock);
    serve_job_put(s, j);
    return rc;
}

int serve_api_dispatch(serve *s, const http_req *r) {
    struct MHD_Connection *c = r->conn;
    const char *u = r->url;
    int get = !strcmp(r->method, "GET"), post = !strcmp(r->method, "POST");
    if (!strncmp(u, "/v1/jobs/", 9)) return jobs(s, r);
    if (!strncmp(u, "/v1/files/", 10)) {
        if (!get)
            return serve_send_error(c, 405, "invalid_request_error", NULL, "method_not_allowed", "%s %s: use GET",
                                    r->method, u);
        return serve_files_send(c, u + 10);
    }
    struct { const char *path; int post; } routes[] = {
        {"/", 0}, {"/health", 0}, {"/v1/models", 0}, {"/v1/images/generations", 1}, {"/v1/images/edits", 1},
        {"/sdapi/v1/txt2img", 1}, {"/sdapi/v1/progress", 0}, {"/sdapi/v1/img2img", 1}, {"/v1/jobs", 1}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(u, routes[i].path)) continue;
        if (routes[i].post ? !post : !get)
            return serve_send_error(c, 405, "invalid_request_error", NULL, "method_not_allowed", "%s %s: use %s",
                                    r->method, u, routes[i].post ? "POST" : "GET");
        switch (i) {
        case 0: return serve_page_send(c);
        case 1: return health(s, c);
        case 2: return models(s, c);
        case 3: return generations(s, r, 0);
        case 4: return serve_edits(s, r, 0);
        case 5: return serve_a1111_txt2img(s, r);
        case 6: return serve_a1111_progress(s, c);
        case 7: return serve_a1111_img2img(s, r);
        default: return generations(s, r, 1);
        }
    }
    return serve_send_error(c, 404, "invalid_request_error", NULL, "not_found", "no such path: %s %s", r->method, u);
}

/*
 * serve_events.c — server-sent event streams of a job.
 *
 * Two kinds, one reader:
 *   OpenAI's (POST /v1/images/generations with "stream": true):
 *     event: image_generation.partial_image   up to partial_images previews, spread over the steps
 *     event: image_generation.completed       one per image, the last events
 *     event: error                            instead, when the job fails or is cancelled
 *   the job's (GET /v1/jobs/{id}/events):
 *     event: progress    {job as GET /v1/jobs/{id}, without the preview} on every step and state change
 *     event: preview     {id, step, b64_json} the step's preview PNG
 *     event: completed | failed | cancelled   {the job}, the last event
 * libmicrohttpd calls the reader on the connection's own thread whenever it
 * can send; the reader blocks on the server's condition variable until the
 * job changes, and sends a comment line every KEEPALIVE_S so a client that
 * went away is noticed (the send fails, the stream ends, and a job that was
 * not made through /v1/jobs is cancelled).
 */
#define _POSIX_C_SOURCE 200809L
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve_api.h"

#define KEEPALIVE_S 2

typedef struct stream {
    serve *s;
    job *j;
    int openai;
    char *buf;              /* what is still to send: buf[off, len) */
    size_t len, off, cap;
    unsigned seen_seq;
    int sent_preview_step;  /* the step of the last preview sent */
    int partial_index;      /* OpenAI: previews sent */
    int done;               /* the last event is in buf */
} stream;

static void put(stream *st, const char *event, cJSON *data) {
    char *text = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (!text) return;
    size_t need = strlen(event) + strlen(text) + 32;
    if (st->len + need > st->cap) {
        size_t cap = (st->len + need) * 2;
        char *b = realloc(st->buf, cap);
        if (!b) {
            free(text);
            return;
        }
        st->buf = b, st->cap = cap;
    }
    st->len += (size_t)snprintf(st->buf + st->len, st->cap - st->len, "event: %s\ndata: %s\n\n", event, text);
    free(text);
}

static cJSON *openai_event(const job *j, const char *type, const uint8_t *png, size_t len, const char *fmt) {
    cJSON *o = cJSON_CreateObject();
    char *b64 = serve_base64(png, len), size[32];
    snprintf(size, sizeof size, "%dx%d", j->width, j->height);
    cJSON_AddStringToObject(o, "type", type);
    if (b64) cJSON_AddStringToObject(o, "b64_json", b64);
    free(b64);
    cJSON_AddNumberToObject(o, "created_at", (double)time(NULL));
    cJSON_AddStringToObject(o, "size", size);
    cJSON_AddStringToObject(o, "quality", "auto");
    cJSON_AddStringToObject(o, "background", "opaque");
    cJSON_AddStringToObject(o, "output_format", fmt);
    return o;
}

static void openai_events(stream *st) {
    job *j = st->j;
    /* every partial image kept so far, in order, also those that fell due while this reader was behind */
    while (st->partial_index < j->n_partial) {
        int k = st->partial_index++;
        cJSON *o = openai_event(j, "image_generation.partial_image", j->partial[k], j->partial_len[k], "png");
        cJSON_AddNumberToObject(o, "partial_image_index", k);
        put(st, "image_generation.partial_image", o);
    }
    if (j->state < JOB_COMPLETED) return;
    st->done = 1;
    if (j->state == JOB_COMPLETED) {
        static const char *const fmts[] = {"png", "jpeg", "webp"};
        for (int i = 0; i < j->n && j->images[i].bytes; i++)
            put(st, "image_generation.completed",
                openai_event(j, "image_generation.completed", j->images[i].bytes, j->images[i].len, fmts[j->format]));
        return;
    }
    cJSON *e = cJSON_CreateObject(), *root = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "message", j->state == JOB_CANCELLED ? "the job was cancelled" : j->error);
    cJSON_AddStringToObject(e, "type", "server_error");
    cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", j->state == JOB_CANCELLED ? "cancelled" : "generation_failed");
    cJSON_AddItemToObject(root, "error", e);
    put(st, "error", root);
}

static void job_events(stream *st) {
    job *j = st->j;
    if (j->state >= JOB_COMPLETED) {
        st->done = 1;
        put(st, serve_job_state_name(j->state), serve_job_json(st->s, j, 0));
        return;
    }
    put(st, "progress", serve_job_json(st->s, j, 0));
    if (j->preview && j->preview_step > st->sent_preview_step) {
        cJSON *o = cJSON_CreateObject();
        char *b64 = serve_base64(j->preview, j->preview_len);
        cJSON_AddStringToObject(o, "id", j->id);
        cJSON_AddNumberToObject(o, "step", j->preview_step);
        if (b64) cJSON_AddStringToObject(o, "b64_json", b64);
        free(b64);
        put(st, "preview", o);
        st->sent_preview_step = j->preview_step;
    }
}

/* Waits (locked) until the job changes or KEEPALIVE_S pass; 1 if it changed. */
static int wait_change(stream *st) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += KEEPALIVE_S;
    while (st->j->seq == st->seen_seq)
        if (pthread_cond_timedwait(&st->s->cond, &st->s->lock, &ts)) return st->j->seq != st->seen_seq;
    return 1;
}

static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    stream *st = cls;
    if (st->off == st->len) {
        if (st->done) return MHD_CONTENT_READER_END_OF_STREAM;
        st->off = st->len = 0;
        pthread_mutex_lock(&st->s->lock);
        if (wait_change(st)) {
            st->seen_seq = st->j->seq;
            if (st->openai) openai_events(st);
            else job_events(st);
        }
        pthread_mutex_unlock(&st->s->lock);
        if (st->len == 0) { /* nothing new: a comment keeps the connection honest */
            static const char ka[] = ": keepalive\n\n";
            memcpy(out, ka, sizeof ka - 1);
            return (ssize_t)(sizeof ka - 1);
        }
    }
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(out, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream *st = cls;
    pthread_mutex_lock(&st->s->lock);
    int cancel = !st->j->async && st->j->state < JOB_COMPLETED;
    pthread_mutex_unlock(&st->s->lock);
    if (cancel) serve_job_cancel(st->s, st->j); /* the client went away */
    serve_job_put(st->s, st->j);
    free(st->buf);
    free(st);
}

int serve_events_send(serve *s, struct MHD_Connection *c, job *j, int openai) {
    stream *st = calloc(1, sizeof *st);
    if (!st) {
        serve_job_put(s, j);
        return serve_send_error(c, 500, "server_error", NULL, NULL, "out of memory");
    }
    st->s = s, st->j = j, st->openai = openai;
    pthread_mutex_lock(&s->lock);
    st->seen_seq = j->seq - 1; /* the first call reports the state as it is */
    pthread_mutex_unlock(&s->lock);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, reader, st, stream_free);
    if (!r) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    int rc = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return rc;
}

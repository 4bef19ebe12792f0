/*
 * serve_files.c — `response_format: "url"`: a finished image is kept in the
 * server's memory for a bounded time and answered as an absolute URL
 * /v1/files/<id>.<png|jpeg|webp>, as OpenAI answers with a link to its own
 * storage.
 *
 * The id is 128 random bits (from /dev/urandom): the URL itself is the
 * permission, so GET /v1/files/... needs no API key and an <img> tag or a
 * plain download can fetch it (OpenAI's links are likewise pre-signed). The
 * store is bounded three ways, so a client that never fetches its URLs
 * cannot grow the server: each file lives --url-ttl seconds (default 3600),
 * at most SERVE_FILES_MAX files and SERVE_FILES_BYTES bytes are kept, the
 * oldest going first. Expired files are dropped whenever the store is used.
 * Nothing is written to disk: a restart forgets every URL (documented).
 */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

#define SERVE_FILES_MAX 256
#define SERVE_FILES_BYTES ((size_t)1 << 30)

typedef struct served_file {
    char name[48];  /* <32 hex digits>.<ext> */
    uint8_t *bytes; /* malloc */
    size_t len;
    double expires; /* serve_now() seconds */
} served_file;

static served_file files[SERVE_FILES_MAX]; /* oldest first; guarded by lock */
static int n_files;
static size_t stored_bytes;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void drop_oldest(void) {
    free(files[0].bytes);
    stored_bytes -= files[0].len;
    memmove(files, files + 1, (size_t)(n_files - 1) * sizeof files[0]);
    n_files--;
}

/* Files are put in time order with the same lifetime, so the expired ones are the oldest. */
static void drop_expired(double now) {
    while (n_files > 0 && files[0].expires <= now) drop_oldest();
}

static int random_hex(char *out, size_t n_bytes) {
    unsigned char r[32];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(r, 1, n_bytes, f) : 0;
    if (f) fclose(f);
    if (got != n_bytes) return -1;
    for (size_t i = 0; i < n_bytes; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
    return 0;
}

/* Keeps a copy, not the caller's buffer: the job keeps its own bytes for GET
 * /v1/jobs/{id} (its id shows in /health while it runs) among the last
 * JOBS_KEPT jobs, and the file outlives the job (--url-ttl). One memcpy of an
 * encoded image per request is small beside its generation. */
int serve_files_put(int ttl_s, const uint8_t *bytes, size_t len, const char *ext, char *name, size_t cap) {
    if (len > SERVE_FILES_BYTES) return -1;
    char hex[33];
    uint8_t *copy = malloc(len);
    if (!copy || random_hex(hex, 16)) {
        free(copy);
        return -1;
    }
    memcpy(copy, bytes, len);
    pthread_mutex_lock(&lock);
    double now = serve_now();
    drop_expired(now);
    while (n_files > 0 && (n_files == SERVE_FILES_MAX || stored_bytes + len > SERVE_FILES_BYTES)) drop_oldest();
    served_file *f = &files[n_files++];
    snprintf(f->name, sizeof f->name, "%s.%s", hex, ext);
    f->bytes = copy, f->len = len, f->expires = now + ttl_s;
    stored_bytes += len;
    snprintf(name, cap, "%s", f->name);
    pthread_mutex_unlock(&lock);
    return 0;
}

int serve_files_send(struct MHD_Connection *c, const char *name) {
    pthread_mutex_lock(&lock);
    drop_expired(serve_now());
    served_file *f = NULL;
    for (int i = 0; i < n_files && !f; i++)
        if (!strcmp(files[i].name, name)) f = &files[i];
    struct MHD_Response *r = NULL;
    char type[32] = "";
    /* copied under the lock: once it is released another request may drop f
     * (expiry, the bounds) and shift the table over it */
    if (f) {
        r = MHD_create_response_from_buffer(f->len, f->bytes, MHD_RESPMEM_MUST_COPY);
        snprintf(type, sizeof type, "image/%s", strrchr(f->name, '.') + 1);
    }
    pthread_mutex_unlock(&lock);
    if (!f)
        return serve_send_error(c, 404, "invalid_request_error", NULL, "file_not_found",
                                "no file '%s': image URLs are kept for --url-ttl seconds (and the newest %d "
                                "images) while the server runs; ask again with response_format b64_json to "
                                "keep the image", name, SERVE_FILES_MAX);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "private, max-age=3600");
    int rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* A Host header fit to put in a URL: printable, no spaces, slashes or quotes. */
static int host_ok(const char *h) {
    if (!h || !*h || strlen(h) > 255) return 0;
    for (const char *p = h; *p; p++)
        if (*p <= ' ' || *p >= 127 || strchr("/\\\"'<>?#@", *p)) return 0;
    return 1;
}

void serve_files_base(const serve *s, struct MHD_Connection *c, char *base, size_t cap) {
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    const char *proto = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-Proto");
    const char *scheme = proto && !strcmp(proto, "https") ? "https" : "http";
    if (host_ok(host)) snprintf(base, cap, "%s://%s", scheme, host);
    else snprintf(base, cap, "http://%s:%d", s->opt.host, s->opt.port);
}

void serve_files_clear(void) {
    pthread_mutex_lock(&lock);
    while (n_files > 0) drop_oldest();
    pthread_mutex_unlock(&lock);
}

/*
 * serve_http.c — the HTTP side of `qwen-image serve`, on GNU libmicrohttpd
 * (Debian libmicrohttpd-dev).
 *
 * Why libmicrohttpd: a C library (no C++ runtime, unlike Pistache/cpp-httplib),
 * packaged in Debian for a decade, built for embedding one server in a
 * program; it parses HTTP/1.1 (chunked bodies, pipelining, 100-continue), has
 * per-connection inactivity timeouts (slow clients are dropped) and a
 * connection limit, and streams responses from a callback (server-sent
 * events). civetweb is not in Debian stable as a -dev package; libevent's
 * evhttp would need our own thread hand-off for the blocking waits.
 *
 * Threading: one thread per connection (MHD_USE_THREAD_PER_CONNECTION), so
 * a request that waits for its job simply blocks on the server's condition
 * variable, and an event stream's reader blocks until the next event.
 *
 * Per request: the body is collected up to --max-body bytes (a larger
 * Content-Length, or a body that grows past it, answers 413 at once);
 * with --api-key every /v1/ path needs "Authorization: Bearer KEY" (401).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"

#define CONNECTION_LIMIT 64

typedef struct req_ctx {
    char *body;
    size_t len, cap;
    int too_large;
} req_ctx;

static int key_ok(const serve *s, struct MHD_Connection *c) {
    if (!s->opt.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return h && !strncmp(h, "Bearer ", 7) && !strcmp(h + 7, s->opt.api_key);
}

static int too_large(serve *s, struct MHD_Connection *c) {
    return serve_send_error(c, 413, "invalid_request_error", NULL, "body_too_large",
                            "the request body is larger than the server's limit of %zu bytes (--max-body)",
                            s->opt.max_body);
}

/* Appends a piece of the body; -1 when it passes the limit. */
static int collect(serve *s, req_ctx *rc, const char *data, size_t n) {
    if (rc->len + n > s->opt.max_body) return -1;
    if (rc->len + n + 1 > rc->cap) {
        size_t cap = rc->cap ? rc->cap : 4096;
        while (cap < rc->len + n + 1) cap *= 2;
        char *b = realloc(rc->body, cap);
        if (!b) return -1;
        rc->body = b;
        rc->cap = cap;
    }
    memcpy(rc->body + rc->len, data, n);
    rc->len += n;
    rc->body[rc->len] = 0;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    serve *s = cls;
    req_ctx *rc = *con_cls;
    if (!rc) { /* the first call: headers only */
        if (!(rc = calloc(1, sizeof *rc))) return MHD_NO;
        *con_cls = rc;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->opt.max_body) {
            rc->too_large = 1;
            return (enum MHD_Result)too_large(s, c);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!rc->too_large && collect(s, rc, upload, *upload_size)) {
            rc->too_large = 1;
            *upload_size = 0;
            return (enum MHD_Result)too_large(s, c);
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rc->too_large) return MHD_YES; /* answered already */
    /* /v1/files/<random name>: the URL is the permission (an <img> tag sends no key) */
    if ((!strncmp(url, "/v1/", 4) || !strncmp(url, "/sdapi/", 7)) && strncmp(url, "/v1/files/", 10) && !key_ok(s, c))
        return (enum MHD_Result)serve_send_error(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                                                 "this server needs \"Authorization: Bearer <key>\" (--api-key)");
    http_req r = {c, method, url, rc->body ? rc->body : "", rc->len};
    return (enum MHD_Result)serve_api_dispatch(s, &r);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    req_ctx *rc = *con_cls;
    if (!rc) return;
    free(rc->body);
    free(rc);
    *con_cls = NULL;
}

int serve_http_start(serve *s) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->opt.port);
    if (inet_pton(AF_INET, s->opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "qwen-image: error: --host %s: expected an IPv4 address (127.0.0.1, 0.0.0.0)\n",
                s->opt.host);
        return -1;
    }
    s->httpd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL,
                                (uint16_t)s->opt.port, NULL, NULL, on_request, s,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->opt.timeout_s,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTION_LIMIT,
                                MHD_OPTION_NOTIFY_COMPLETED, on_done, s,
                                MHD_OPTION_END);
    if (!s->httpd) {
        fprintf(stderr, "qwen-image: error: cannot listen on %s:%d (in use, or not allowed)\n", s->opt.host,
                s->opt.port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->httpd, MHD_DAEMON_INFO_BIND_PORT);
    if (di && di->port) s->opt.port = di->port; /* --port 0: the one the system chose */
    return 0;
}

void serve_http_stop(serve *s) {
    /* Answers already queued (a stopped job's 503) still have to reach their clients: stopping the
     * daemon closes every connection at once, and a proxy then reports 502 instead of the JSON error.
     * Up to 2 s for the open connections to finish (keep-alive ones just wait it out). */
    for (int i = 0; s->httpd && i < 40; i++) {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->httpd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!di || di->num_connections == 0) break;
        struct timespec pause = {0, 50 * 1000000L};
        nanosleep(&pause, NULL);
    }
    if (s->httpd) MHD_stop_daemon(s->httpd);
    s->httpd = NULL;
}

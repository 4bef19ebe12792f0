/*
 * host_pool.c — chunked host memory for streamed weights, pinned up to a
 * budget (host_pool.h). Plain C, no device calls: the pinning is the ops'.
 */
#include "backend/host_pool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB(x) ((x) >> 20)

typedef struct chunk {
    void *raw;    /* what pin / malloc returned (freed as such) */
    char *base;   /* raw rounded up to QI_HOST_POOL_ALIGN */
    size_t cap;   /* usable bytes from base */
    size_t held;  /* bytes the chunk holds (what the budget counts for a pinned one) */
    size_t used;  /* bump offset from base */
    int live;     /* blocks handed out and not freed */
    int pinned;
} chunk;

struct qi_host_pool {
    qi_host_pool_ops ops;
    size_t pinned_max, chunk_bytes;
    chunk *c;     /* [n] */
    int n, cap;
    size_t pinned_held, pageable_held, pinned_used, pageable_used;
};

static size_t align_up(size_t n) { return (n + QI_HOST_POOL_ALIGN - 1) & ~(size_t)(QI_HOST_POOL_ALIGN - 1); }

qi_host_pool *qi_host_pool_new(const qi_host_pool_ops *ops, size_t pinned_max, size_t chunk_bytes) {
    qi_host_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (ops) p->ops = *ops;
    p->pinned_max = p->ops.pin ? pinned_max : 0; /* nothing can pin: everything pageable */
    p->chunk_bytes = chunk_bytes ? align_up(chunk_bytes) : QI_HOST_POOL_CHUNK;
    return p;
}

void qi_host_pool_set_pinned_max(qi_host_pool *p, size_t pinned_max) {
    if (p) p->pinned_max = p->ops.pin ? pinned_max : 0;
}

/* The first chunk of the kind with room for `need` bytes; -1 if none. */
static int find_room(const qi_host_pool *p, int pinned, size_t need) {
    for (int i = 0; i < p->n; i++)
        if (p->c[i].pinned == pinned && p->c[i].cap - p->c[i].used >= need) return i;
    return -1;
}

static qi_status add_chunk(qi_host_pool *p, int pinned, size_t bytes, int *idx, qi_error *err) {
    if (p->n == p->cap) {
        int ncap = p->cap ? 2 * p->cap : 16;
        chunk *nc = realloc(p->c, (size_t)ncap * sizeof *nc);
        if (!nc) return qi_fail(err, QI_ERR_NOMEM, "out of host memory (streamed-weight chunk list)");
        p->c = nc;
        p->cap = ncap;
    }
    chunk k = {0};
    k.pinned = pinned;
    if (pinned) {
        char why[256] = "";
        k.raw = p->ops.pin(p->ops.ctx, bytes, why, sizeof why);
        if (!k.raw)
            return qi_fail(err, QI_ERR_NOMEM,
                           "pinning %zu MiB of host memory for streamed weights failed (%s) with %zu MiB pinned "
                           "already of a %zu MiB pinned budget: give --pinned %zuM (or QI_PINNED_MAX) so the "
                           "rest stays in ordinary memory and goes through the bounce buffers, or free host "
                           "memory (a container's memory limit counts pinned memory too)",
                           MIB(bytes), why[0] ? why : "no reason given", MIB(p->pinned_held), MIB(p->pinned_max),
                           MIB(p->pinned_held));
        if ((uintptr_t)k.raw & (QI_HOST_POOL_ALIGN - 1)) { /* the ops break their promise: refuse, do not misalign */
            p->ops.unpin(p->ops.ctx, k.raw);
            return qi_fail(err, QI_ERR_BACKEND, "pinned host memory at %p is not %d-byte aligned", k.raw,
                           QI_HOST_POOL_ALIGN);
        }
        k.base = k.raw;
        k.cap = k.held = bytes;
        p->pinned_held += bytes;
    } else {
        k.raw = malloc(bytes + QI_HOST_POOL_ALIGN);
        if (!k.raw)
            return qi_fail(err, QI_ERR_NOMEM, "out of host memory: a %zu MiB chunk for streamed weights (%zu MiB "
                           "pinned and %zu MiB ordinary held already)", MIB(bytes), MIB(p->pinned_held),
                           MIB(p->pageable_held));
        k.base = (char *)(((uintptr_t)k.raw + QI_HOST_POOL_ALIGN - 1) & ~(uintptr_t)(QI_HOST_POOL_ALIGN - 1));
        k.cap = k.held = bytes;
        p->pageable_held += bytes;
    }
    p->c[p->n] = k;
    *idx = p->n++;
    return QI_OK;
}

qi_status qi_host_pool_alloc(qi_host_pool *p, size_t bytes, void **out, int *pinned, qi_error *err) {
    *out = NULL;
    *pinned = 0;
    size_t need = align_up(bytes ? bytes : 1);
    if (need < bytes) return qi_fail(err, QI_ERR_ARG, "a streamed weight of %zu bytes", bytes);
    int i = find_room(p, 1, need), kind = 1;
    if (i < 0) { /* a new pinned chunk, as large as the budget lets it be */
        size_t left = p->pinned_max > p->pinned_held ? p->pinned_max - p->pinned_held : 0;
        left &= ~(size_t)(QI_HOST_POOL_ALIGN - 1);
        if (left >= need) {
            size_t want = need > p->chunk_bytes ? need : p->chunk_bytes;
            qi_status st = add_chunk(p, 1, want < left ? want : left, &i, err);
            if (st != QI_OK) return st;
        }
    }
    if (i < 0) { /* past the budget: ordinary memory */
        kind = 0;
        i = find_room(p, 0, need);
        if (i < 0) {
            qi_status st = add_chunk(p, 0, need > p->chunk_bytes ? need : p->chunk_bytes, &i, err);
            if (st != QI_OK) return st;
        }
    }
    chunk *k = &p->c[i];
    *out = k->base + k->used;
    k->used += need;
    k->live++;
    *(kind ? &p->pinned_used : &p->pageable_used) += need;
    *pinned = kind;
    return QI_OK;
}

static int chunk_of(const qi_host_pool *p, const void *ptr) {
    const char *q = ptr;
    for (int i = 0; p && q && i < p->n; i++)
        if (q >= p->c[i].base && q < p->c[i].base + p->c[i].cap) return i;
    return -1;
}

int qi_host_pool_kind(const qi_host_pool *p, const void *ptr) {
    int i = chunk_of(p, ptr);
    return i < 0 ? -1 : p->c[i].pinned;
}

static void release(qi_host_pool *p, int i) {
    chunk *k = &p->c[i];
    if (k->pinned) {
        p->ops.unpin(p->ops.ctx, k->raw);
        p->pinned_held -= k->held;
        p->pinned_used -= k->used;
    } else {
        free(k->raw);
        p->pageable_held -= k->held;
        p->pageable_used -= k->used;
    }
    p->c[i] = p->c[--p->n];
}

void qi_host_pool_free(qi_host_pool *p, void *ptr) {
    int i = chunk_of(p, ptr);
    if (i < 0) return;
    if (--p->c[i].live <= 0) release(p, i);
}

void qi_host_pool_stats_get(const qi_host_pool *p, qi_host_pool_stats *s) {
    memset(s, 0, sizeof *s);
    if (!p) return;
    s->pinned_held = p->pinned_held;
    s->pageable_held = p->pageable_held;
    s->pinned_used = p->pinned_used;
    s->pageable_used = p->pageable_used;
    s->pinned_max = p->pinned_max;
    s->chunks = p->n;
}

void qi_host_pool_destroy(qi_host_pool *p) {
    if (!p) return;
    while (p->n) release(p, p->n - 1);
    free(p->c);
    free(p);
}

size_t qi_host_pool_default_max(size_t ram_bytes) { return ram_bytes / 2; }

int qi_host_pool_parse_size(const char *s, size_t *out) {
    if (!s || !*s) return -1;
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0, end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024, end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024, end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024, end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B') end += *end == 'i' && end[1] == 'B' ? 2 : 1; /* "GiB", "GB" */
    if (*end || v * mul > 1.8e19) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

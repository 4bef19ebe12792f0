/*
 * safetensors_stream.c — the streamed safetensors writer
 * (safetensors_stream.h): the header is built from the declarations, the
 * data passes through.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/safetensors_stream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct item {
    char *name;
    qi_dtype dtype;
    int ndim;
    int64_t shape[8];
    uint64_t nbytes;
} item;

struct qi_st_stream {
    item *items;
    int n, cap;
    char **meta; /* key, value, key, value … */
    int n_meta;
    FILE *f;
    char path[4096];
    uint64_t total, done; /* data bytes declared / written */
};

qi_status qi_st_stream_new(qi_st_stream **out, qi_error *err) {
    *out = calloc(1, sizeof **out);
    return *out ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
}

void qi_st_stream_free(qi_st_stream *s) {
    if (!s) return;
    if (s->f) fclose(s->f);
    for (int i = 0; i < s->n; i++) free(s->items[i].name);
    for (int i = 0; i < s->n_meta; i++) free(s->meta[i]);
    free(s->items);
    free(s->meta);
    free(s);
}

qi_status qi_st_stream_meta(qi_st_stream *s, const char *key, const char *value, qi_error *err) {
    char **m = realloc(s->meta, sizeof *m * (size_t)(s->n_meta + 2));
    if (!m) return qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
    s->meta = m;
    if (!(m[s->n_meta] = strdup(key))) return qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
    s->n_meta++;
    if (!(m[s->n_meta] = strdup(value))) return qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
    s->n_meta++;
    return QI_OK;
}

qi_status qi_st_stream_add(qi_st_stream *s, const char *name, qi_dtype dtype, int ndim, const int64_t *shape,
                           qi_error *err) {
    if (s->f) return qi_fail(err, QI_ERR_ARG, "safetensors writer: tensor '%s' added after the header", name);
    if ((unsigned)dtype > QI_U8 || ndim < 0 || ndim > 8)
        return qi_fail(err, QI_ERR_ARG, "safetensors writer: tensor '%s': type %s / %d dims not storable", name,
                       qi_dtype_name(dtype), ndim);
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->items[i].name, name))
            return qi_fail(err, QI_ERR_ARG, "safetensors writer: tensor '%s' given twice", name);
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 64;
        item *p = realloc(s->items, sizeof *p * (size_t)nc);
        if (!p) return qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
        s->items = p, s->cap = nc;
    }
    item *it = &s->items[s->n];
    memset(it, 0, sizeof *it);
    uint64_t count = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return qi_fail(err, QI_ERR_ARG, "safetensors writer: tensor '%s': negative dim", name);
        it->shape[d] = shape[d];
        count *= (uint64_t)shape[d];
    }
    if (!(it->name = strdup(name))) return qi_fail(err, QI_ERR_NOMEM, "safetensors writer: out of memory");
    it->dtype = dtype, it->ndim = ndim, it->nbytes = count * qi_dtype_size(dtype);
    s->total += it->nbytes;
    s->n++;
    return QI_OK;
}

/* Appends s as a JSON string to the growing buffer. */
static int json_str(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t need = *len + 6 * strlen(s) + 3;
    if (need > *cap) {
        size_t nc = need * 2;
        char *b = realloc(*buf, nc);
        if (!b) return -1;
        *buf = b, *cap = nc;
    }
    char *o = *buf + *len;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') *o++ = '\\', *o++ = (char)*p;
        else if (*p < 0x20) o += sprintf(o, "\\u%04x", *p);
        else *o++ = (char)*p;
    }
    *o++ = '"';
    *len = (size_t)(o - *buf);
    return 0;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t k = strlen(s);
    if (*len + k + 1 > *cap) {
        size_t nc = (*len + k + 1) * 2;
        char *b = realloc(*buf, nc);
        if (!b) return -1;
        *buf = b, *cap = nc;
    }
    memcpy(*buf + *len, s, k + 1);
    *len += k;
    return 0;
}

/* {"__metadata__":{...},"name":{"dtype":…,"shape":[…],"data_offsets":[a,b]},…} + spaces to 8 */
static char *build_header(const qi_st_stream *s, size_t *out_len) {
    char *b = NULL, num[96];
    size_t len = 0, cap = 0;
    int bad = append(&b, &len, &cap, "{\"__metadata__\":{\"format\":\"pt\"");
    for (int i = 0; i + 1 < s->n_meta && !bad; i += 2)
        bad = append(&b, &len, &cap, ",") || json_str(&b, &len, &cap, s->meta[i]) ||
              append(&b, &len, &cap, ":") || json_str(&b, &len, &cap, s->meta[i + 1]);
    bad = bad || append(&b, &len, &cap, "}");
    uint64_t off = 0;
    for (int i = 0; i < s->n && !bad; i++) {
        const item *it = &s->items[i];
        bad = append(&b, &len, &cap, ",") || json_str(&b, &len, &cap, it->name) ||
              append(&b, &len, &cap, ":{\"dtype\":\"") || append(&b, &len, &cap, qi_dtype_name(it->dtype)) ||
              append(&b, &len, &cap, "\",\"shape\":[");
        for (int d = 0; d < it->ndim && !bad; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)it->shape[d]);
            bad = append(&b, &len, &cap, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + it->nbytes));
        bad = bad || append(&b, &len, &cap, num);
        off += it->nbytes;
    }
    bad = bad || append(&b, &len, &cap, "}");
    while (!bad && len % 8) bad = append(&b, &len, &cap, " ");
    if (bad) {
        free(b);
        return NULL;
    }
    *out_len = len;
    return b;
}

qi_status qi_st_stream_begin(qi_st_stream *s, const char *path, qi_error *err) {
    if (s->f) return qi_fail(err, QI_ERR_ARG, "safetensors writer: begin called twice");
    snprintf(s->path, sizeof s->path, "%s", path);
    size_t hl;
    char *h = build_header(s, &hl);
    if (!h) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory building the header", path);
    if (!(s->f = fopen(path, "wb"))) {
        free(h);
        return qi_fail(err, QI_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    uint8_t n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    int bad = fwrite(n8, 1, 8, s->f) != 8 || fwrite(h, 1, hl, s->f) != hl;
    free(h);
    return bad ? qi_fail(err, QI_ERR_IO, "%s: write failed: %s", path, strerror(errno)) : QI_OK;
}

qi_status qi_st_stream_write(qi_st_stream *s, const void *data, size_t n, qi_error *err) {
    if (!s->f) return qi_fail(err, QI_ERR_ARG, "safetensors writer: data before the header");
    if (n > s->total - s->done)
        return qi_fail(err, QI_ERR_ARG, "%s: %llu bytes of data past the last tensor", s->path,
                       (unsigned long long)(n - (s->total - s->done)));
    if (fwrite(data, 1, n, s->f) != n) return qi_fail(err, QI_ERR_IO, "%s: write failed: %s", s->path, strerror(errno));
    s->done += n;
    return QI_OK;
}

qi_status qi_st_stream_end(qi_st_stream *s, qi_error *err) {
    if (!s->f) return qi_fail(err, QI_ERR_ARG, "safetensors writer: end before begin");
    if (s->done != s->total)
        return qi_fail(err, QI_ERR_ARG, "%s: %llu of %llu data bytes written", s->path, (unsigned long long)s->done,
                       (unsigned long long)s->total);
    int bad = fflush(s->f) != 0 || fsync(fileno(s->f)) != 0;
    bad = (fclose(s->f) != 0) || bad;
    s->f = NULL;
    return bad ? qi_fail(err, QI_ERR_IO, "%s: write failed: %s", s->path, strerror(errno)) : QI_OK;
}

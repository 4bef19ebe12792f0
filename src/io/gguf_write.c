/*
 * gguf_write.c — the streamed GGUF v3 writer (gguf_write.h). Declared keys and
 * tensors live in small arrays; data passes straight through to the file.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/gguf_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/types.h"
#include "io/gguf.h" /* the metadata type ids */

typedef struct kv {
    char *key;
    int type;    /* QI_GGUF_STRING, U32, F32, BOOL, or ARRAY (of F32) */
    char *str;
    uint32_t u32; /* U32, BOOL; ARRAY: the element count */
    float f32;
    float *arr;   /* ARRAY: the elements */
} kv;

typedef struct tinfo {
    char *name;
    qi_dtype dtype;
    int ndim;
    int64_t shape[4];
    uint64_t offset, nbytes; /* from the data start */
} tinfo;

struct qi_gguf_writer {
    kv *kvs;
    int n_kv, cap_kv;
    tinfo *ts;
    int n_t, cap_t;
    uint64_t data_size; /* all tensors, padded */
    FILE *f;
    char path[4096];
    int cur;            /* tensor being written */
    uint64_t cur_done;  /* its bytes written so far */
};

qi_status qi_gguf_writer_new(qi_gguf_writer **out, qi_error *err) {
    *out = calloc(1, sizeof **out);
    return *out ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
}

void qi_gguf_writer_free(qi_gguf_writer *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    for (int i = 0; i < w->n_kv; i++) free(w->kvs[i].key), free(w->kvs[i].str), free(w->kvs[i].arr);
    for (int i = 0; i < w->n_t; i++) free(w->ts[i].name);
    free(w->kvs);
    free(w->ts);
    free(w);
}

static int grow(void **p, int *cap, int n, size_t elem) {
    if (n < *cap) return 0;
    int nc = *cap ? 2 * *cap : 16;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return -1;
    *p = q, *cap = nc;
    return 0;
}

/* A new key (its value filled by the caller through *out). */
static qi_status add_kv(qi_gguf_writer *w, const char *key, int type, const char *s, uint32_t u, kv **out,
                        qi_error *err) {
    if (w->f) return qi_fail(err, QI_ERR_ARG, "GGUF writer: key '%s' added after the header was written", key);
    for (int i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kvs[i].key, key)) return qi_fail(err, QI_ERR_ARG, "GGUF writer: key '%s' given twice", key);
    if (grow((void **)&w->kvs, &w->cap_kv, w->n_kv, sizeof *w->kvs))
        return qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
    kv *k = &w->kvs[w->n_kv];
    *k = (kv){strdup(key), type, s ? strdup(s) : NULL, u, 0.0f, NULL};
    if (!k->key || (s && !k->str)) {
        free(k->key), free(k->str);
        return qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
    }
    w->n_kv++;
    if (out) *out = k;
    return QI_OK;
}

qi_status qi_gguf_writer_set_string(qi_gguf_writer *w, const char *key, const char *value, qi_error *err) {
    return add_kv(w, key, QI_GGUF_STRING, value, 0, NULL, err);
}

qi_status qi_gguf_writer_set_u32(qi_gguf_writer *w, const char *key, uint32_t value, qi_error *err) {
    return add_kv(w, key, QI_GGUF_U32, NULL, value, NULL, err);
}

qi_status qi_gguf_writer_set_bool(qi_gguf_writer *w, const char *key, int value, qi_error *err) {
    return add_kv(w, key, QI_GGUF_BOOL, NULL, value != 0, NULL, err);
}

qi_status qi_gguf_writer_set_f32(qi_gguf_writer *w, const char *key, float value, qi_error *err) {
    kv *k;
    qi_status st = add_kv(w, key, QI_GGUF_F32, NULL, 0, &k, err);
    if (!st) k->f32 = value;
    return st;
}

qi_status qi_gguf_writer_set_f32_array(qi_gguf_writer *w, const char *key, const float *values, uint32_t n,
                                       qi_error *err) {
    kv *k;
    qi_status st = add_kv(w, key, QI_GGUF_ARRAY, NULL, n, &k, err);
    if (st) return st;
    if (!(k->arr = malloc((n ? n : 1) * sizeof(float)))) /* the key stays, freed with the writer */
        return qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
    if (n) memcpy(k->arr, values, n * sizeof(float));
    return QI_OK;
}

static uint64_t pad_to(uint64_t n) { return (n + QI_GGUF_WRITE_ALIGN - 1) / QI_GGUF_WRITE_ALIGN * QI_GGUF_WRITE_ALIGN; }

qi_status qi_gguf_writer_add_tensor(qi_gguf_writer *w, const char *name, qi_dtype dtype, int ndim,
                                    const int64_t *shape, qi_error *err) {
    const qi_dtype_traits *tt = qi_type_traits(dtype);
    if (w->f) return qi_fail(err, QI_ERR_ARG, "GGUF writer: tensor '%s' added after the header was written", name);
    if (!tt || tt->ggml_type < 0)
        return qi_fail(err, QI_ERR_ARG, "GGUF writer: tensor '%s': type %s has no GGUF id", name, qi_dtype_name(dtype));
    if (ndim < 1 || ndim > 4)
        return qi_fail(err, QI_ERR_ARG, "GGUF writer: tensor '%s': %d dims (GGUF takes 1 to 4)", name, ndim);
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->ts[i].name, name)) return qi_fail(err, QI_ERR_ARG, "GGUF writer: tensor '%s' given twice", name);
    for (int d = 0; d < ndim; d++) /* GGUF readers refuse empty dims */
        if (shape[d] < 1)
            return qi_fail(err, QI_ERR_ARG, "GGUF writer: tensor '%s': dim %d is %lld (GGUF dims are >= 1)", name, d,
                           (long long)shape[d]);
    size_t nbytes;
    char what[600];
    snprintf(what, sizeof what, "GGUF writer: tensor '%s'", name);
    qi_status st = qi_shape_bytes(dtype, ndim, shape, &nbytes, what, err);
    if (st) return st;
    if (grow((void **)&w->ts, &w->cap_t, w->n_t, sizeof *w->ts))
        return qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
    tinfo *t = &w->ts[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return qi_fail(err, QI_ERR_NOMEM, "GGUF writer: out of memory");
    t->dtype = dtype, t->ndim = ndim, t->offset = w->data_size, t->nbytes = nbytes;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    w->data_size += pad_to(nbytes);
    w->n_t++;
    return QI_OK;
}

/* ---- writing ----------------------------------------------------------------- */

static int put(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }
static int put_u32(FILE *f, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return put(f, b, 4);
}
static int put_u64(FILE *f, uint64_t v) { return put_u32(f, (uint32_t)v) || put_u32(f, (uint32_t)(v >> 32)); }
static int put_str(FILE *f, const char *s) { return put_u64(f, strlen(s)) || put(f, s, strlen(s)); }
static int put_f32(FILE *f, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return put_u32(f, u);
}
/* A key's value after its type id (little-endian, as io/gguf.c reads). */
static int put_value(FILE *f, const kv *k) {
    uint8_t b = (uint8_t)k->u32;
    switch (k->type) {
    case QI_GGUF_STRING: return put_str(f, k->str);
    case QI_GGUF_F32: return put_f32(f, k->f32);
    case QI_GGUF_BOOL: return put(f, &b, 1);
    case QI_GGUF_ARRAY: {
        int bad = put_u32(f, QI_GGUF_F32) || put_u64(f, k->u32);
        for (uint32_t i = 0; i < k->u32 && !bad; i++) bad = put_f32(f, k->arr[i]);
        return bad;
    }
    default: return put_u32(f, k->u32);
    }
}
static int put_zeros(FILE *f, uint64_t n) {
    static const uint8_t z[QI_GGUF_WRITE_ALIGN];
    return put(f, z, (size_t)n);
}

static qi_status io_fail(qi_gguf_writer *w, qi_error *err) {
    return qi_fail(err, QI_ERR_IO, "%s: write failed: %s", w->path, strerror(errno ? errno : EIO));
}

qi_status qi_gguf_writer_begin(qi_gguf_writer *w, const char *path, qi_error *err) {
    if (w->f) return qi_fail(err, QI_ERR_ARG, "GGUF writer: begin called twice");
    snprintf(w->path, sizeof w->path, "%s", path);
    if (!(w->f = fopen(path, "wb"))) return qi_fail(err, QI_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    FILE *f = w->f;
    int bad = put(f, "GGUF", 4) || put_u32(f, 3) || put_u64(f, (uint64_t)w->n_t) || put_u64(f, (uint64_t)w->n_kv);
    for (int i = 0; i < w->n_kv && !bad; i++) {
        const kv *k = &w->kvs[i];
        bad = put_str(f, k->key) || put_u32(f, (uint32_t)k->type) || put_value(f, k);
    }
    for (int i = 0; i < w->n_t && !bad; i++) {
        const tinfo *t = &w->ts[i];
        bad = put_str(f, t->name) || put_u32(f, (uint32_t)t->ndim);
        for (int d = t->ndim - 1; d >= 0 && !bad; d--) bad = put_u64(f, (uint64_t)t->shape[d]); /* ne[0] innermost */
        bad = bad || put_u32(f, (uint32_t)qi_type_traits(t->dtype)->ggml_type) || put_u64(f, t->offset);
    }
    long pos = bad ? 0 : ftell(f);
    if (bad || pos < 0 || put_zeros(f, pad_to((uint64_t)pos) - (uint64_t)pos)) return io_fail(w, err);
    w->cur = 0, w->cur_done = 0;
    return QI_OK;
}

/* The next n bytes of tensor data: written from `data`, or (data NULL) left
 * as a hole the file system reads back as zeros. */
static qi_status advance(qi_gguf_writer *w, const uint8_t *p, uint64_t n, qi_error *err) {
    if (!w->f) return qi_fail(err, QI_ERR_ARG, "GGUF writer: data before the header");
    while (n > 0) {
        /* skip finished (and empty) tensors, padding each */
        while (w->cur < w->n_t && w->cur_done == w->ts[w->cur].nbytes) {
            if (put_zeros(w->f, pad_to(w->cur_done) - w->cur_done)) return io_fail(w, err);
            w->cur++, w->cur_done = 0;
        }
        if (w->cur == w->n_t)
            return qi_fail(err, QI_ERR_ARG, "%s: %llu bytes of data past the last tensor", w->path,
                           (unsigned long long)n);
        uint64_t room = w->ts[w->cur].nbytes - w->cur_done, k = n < room ? n : room;
        if (p ? put(w->f, p, (size_t)k) : fseeko(w->f, (off_t)k, SEEK_CUR) != 0) return io_fail(w, err);
        if (p) p += k;
        n -= k, w->cur_done += k;
    }
    return QI_OK;
}

qi_status qi_gguf_writer_write(qi_gguf_writer *w, const void *data, size_t n, qi_error *err) {
    if (!data && n) return qi_fail(err, QI_ERR_ARG, "GGUF writer: NULL data");
    return advance(w, data, n, err);
}

qi_status qi_gguf_writer_skip(qi_gguf_writer *w, uint64_t n, qi_error *err) { return advance(w, NULL, n, err); }

qi_status qi_gguf_writer_end(qi_gguf_writer *w, qi_error *err) {
    if (!w->f) return qi_fail(err, QI_ERR_ARG, "GGUF writer: end before begin");
    while (w->cur < w->n_t && w->cur_done == w->ts[w->cur].nbytes) {
        if (put_zeros(w->f, pad_to(w->cur_done) - w->cur_done)) return io_fail(w, err);
        w->cur++, w->cur_done = 0;
    }
    if (w->cur < w->n_t)
        return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s' has %llu of its %llu bytes", w->path, w->ts[w->cur].name,
                       (unsigned long long)w->cur_done, (unsigned long long)w->ts[w->cur].nbytes);
    /* a skip at the very end leaves the file short of its hole: extend it */
    off_t size = ftello(w->f);
    int bad = size < 0 || fflush(w->f) != 0 || ftruncate(fileno(w->f), size) != 0 || fsync(fileno(w->f)) != 0;
    bad = (fclose(w->f) != 0) || bad;
    w->f = NULL;
    return bad ? qi_fail(err, QI_ERR_IO, "%s: write failed: %s", w->path, strerror(errno)) : QI_OK;
}

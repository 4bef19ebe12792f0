/*
 * gguf.c — maps GGUF files read-only, validates them, and answers metadata
 * and tensor lookups.
 *
 * File layout (spec vae-and-formats.md §B.7.1), all integers little-endian:
 *     u32 magic "GGUF", u32 version (2 or 3), u64 tensor_count, u64 kv_count
 *     kv_count x      string key, u32 value type, value
 *     tensor_count x  string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 *                     u64 offset (relative to the data section)
 *     padding to general.alignment (default 32), then the data section
 *   string = u64 length + bytes; array = u32 element type, u64 count, elements
 *
 * Nothing is trusted before it is checked; each check has its own one-line
 * message naming the file (and the key or tensor) and what to do:
 *   - every field lies inside the file (a cut file says which field it cut);
 *   - magic "GGUF"; version 2 or 3 (1 is obsolete, a byte-swapped version is
 *     a big-endian file; both refused);
 *   - tensor and kv counts can fit in the bytes left (each entry needs at
 *     least 24 / 13 bytes), so a lying count is refused before any allocation;
 *   - string lengths lie inside the file; keys and names are 1..65535 bytes
 *     without NUL bytes; arrays nest at most 8 deep and their counts fit;
 *   - value types and array element types are known; keys are unique;
 *   - general.alignment, if present, is an integer power of two;
 *   - tensors have 0..5 dims, each >= 1, with an element count and byte size
 *     that fit 64 bits; the ggml type is one the engine reads (types.h); a
 *     block type's ne[0] is a whole number of blocks; names are unique;
 *   - each offset is a multiple of the alignment, each tensor's bytes lie
 *     inside the data section, and no two tensors overlap (gaps are padding).
 */
#define _POSIX_C_SOURCE 200809L
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/types.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 65535   /* keys (spec) and tensor names (ours: no ggml limit) */
#define GGUF_MAX_DEPTH 8      /* nesting of arrays of arrays */
#define GGUF_MIN_KV 13        /* u64 key length + u32 type + a 1-byte value */
#define GGUF_MIN_TENSOR 24    /* u64 name length + u32 n_dims + u32 type + u64 offset */

static const char *const value_type_names[QI_GGUF_TYPE_COUNT] = {
    "U8", "I8", "U16", "I16", "U32", "I32", "F32", "BOOL", "STRING", "ARRAY", "U64", "I64", "F64"};
/* Bytes of a fixed-size value; 0 for STRING and ARRAY. */
static const size_t value_type_size[QI_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* One array: its element type and count, where element 0 starts, and (for
 * strings and arrays) where its elements' entries start in the file's tables. */
typedef struct gguf_arr {
    qi_gguf_type type;
    uint64_t count;
    size_t data;
    size_t index;
} gguf_arr;

typedef struct gguf_kv {
    char *key;          /* NUL-terminated copy */
    qi_gguf_type type;
    size_t value;       /* file offset of the value (a string's u64 length) */
    gguf_arr arr;       /* ARRAY only */
} gguf_kv;

struct qi_gguf_file {
    char *path;
    unsigned char *map; /* the whole file, PROT_READ */
    size_t size;
    int borrowed;       /* map is the caller's memory (qi_gguf_open_memory): not unmapped */
    uint32_t version;
    uint64_t alignment;
    size_t data_start;  /* file offset of the data section */
    int n_kv;
    gguf_kv *kv;        /* sorted by key */
    int n_tensors;
    qi_gguf_tensor *tensors; /* sorted by name */
    size_t *strings;    /* file offsets of every string element of every array */
    size_t n_strings, cap_strings;
    gguf_arr *arrays;   /* every array element of every array of arrays */
    size_t n_arrays, cap_arrays;
};

/* ---- reading fields --------------------------------------------------------- */

/* The parse position, and what is being read (for messages). */
typedef struct cursor {
    qi_gguf_file *f;
    size_t pos;
    char ctx[320]; /* "key 'general.name'", "tensor 3 'blk.0.attn_q.weight'" */
    qi_error *err;
} cursor;

static uint64_t le_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint32_t le_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static size_t left(const cursor *c) { return c->f->size - c->pos; }

/* "path: ctx: " prefix of every message about the current entry. */
static int prefix(const cursor *c, char *buf, size_t cap) {
    return snprintf(buf, cap, "%s%s%s", c->f->path, c->ctx[0] ? ": " : "", c->ctx);
}

static qi_status failf(const cursor *c, qi_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static qi_status failf(const cursor *c, qi_status st, const char *fmt, ...) {
    char pre[1024], msg[768];
    prefix(c, pre, sizeof pre);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qi_fail(c->err, st, "%s: %s", pre, msg);
}

/* The file ends inside `field` (need bytes at the cursor). */
static qi_status truncated(const cursor *c, const char *field, uint64_t need) {
    return failf(c, QI_ERR_FORMAT,
                 "the file ends inside %s (%llu bytes at offset %zu, the file has %zu): truncated "
                 "download? fetch it again",
                 field, (unsigned long long)need, c->pos, c->f->size);
}

static qi_status read_u32(cursor *c, const char *field, uint32_t *out) {
    if (left(c) < 4) return truncated(c, field, 4);
    *out = le_u32(c->f->map + c->pos);
    c->pos += 4;
    return QI_OK;
}

static qi_status read_u64(cursor *c, const char *field, uint64_t *out) {
    if (left(c) < 8) return truncated(c, field, 8);
    *out = le_u64(c->f->map + c->pos);
    c->pos += 8;
    return QI_OK;
}

/* A string: its length (which must fit the file), then its bytes; *off is
 * the offset of the bytes. */
static qi_status read_string(cursor *c, const char *field, size_t *off, uint64_t *len) {
    char what[96];
    snprintf(what, sizeof what, "the length of %s", field);
    qi_status st = read_u64(c, what, len);
    if (st != QI_OK) return st;
    if (*len > left(c))
        return failf(c, QI_ERR_FORMAT,
                     "%s is %llu bytes long but only %zu bytes are left in the file (offset %zu): "
                     "truncated or corrupt file; fetch it again",
                     field, (unsigned long long)*len, left(c), c->pos);
    *off = c->pos;
    c->pos += (size_t)*len;
    return QI_OK;
}

/* A key or tensor name: 1..65535 bytes, no NUL, copied NUL-terminated. */
static qi_status read_name(cursor *c, const char *field, char **out) {
    size_t off;
    uint64_t len;
    qi_status st = read_string(c, field, &off, &len);
    if (st != QI_OK) return st;
    if (len == 0 || len > GGUF_MAX_NAME)
        return failf(c, QI_ERR_FORMAT, "%s is %llu bytes; it must be 1 to %d bytes", field,
                     (unsigned long long)len, GGUF_MAX_NAME);
    if (memchr(c->f->map + off, 0, (size_t)len))
        return failf(c, QI_ERR_FORMAT, "%s contains a NUL byte (corrupt file)", field);
    *out = malloc((size_t)len + 1);
    if (!*out) return failf(c, QI_ERR_NOMEM, "out of memory");
    memcpy(*out, c->f->map + off, (size_t)len);
    (*out)[len] = 0;
    return QI_OK;
}

/* ---- metadata values ----------------------------------------------------------- */

static qi_status check_value_type(const cursor *c, uint32_t type, const char *what) {
    if (type < QI_GGUF_TYPE_COUNT) return QI_OK;
    return failf(c, QI_ERR_FORMAT,
                 "unknown %s %u (known: 0-12, U8 I8 U16 I16 U32 I32 F32 BOOL STRING ARRAY U64 "
                 "I64 F64); the file is corrupt or newer than this reader",
                 what, type);
}

/* Grows a table so that `more` entries fit; returns the first new index. */
static int table_reserve(void **table, size_t *n, size_t *cap, size_t elem, size_t more,
                         size_t *first) {
    if (*n + more > *cap) {
        size_t want = *cap ? *cap : 64;
        while (want < *n + more) want *= 2;
        void *p = realloc(*table, want * elem);
        if (!p) return -1;
        *table = p;
        *cap = want;
    }
    *first = *n;
    *n += more;
    return 0;
}

static qi_status parse_array(cursor *c, int depth, gguf_arr *out);

/* Skips one value of `type`; an ARRAY is described into *arr. */
static qi_status parse_value(cursor *c, qi_gguf_type type, int depth, gguf_arr *arr) {
    if (type == QI_GGUF_ARRAY) return parse_array(c, depth, arr);
    if (type == QI_GGUF_STRING) {
        size_t off;
        uint64_t len;
        return read_string(c, "the string value", &off, &len);
    }
    size_t n = value_type_size[type];
    if (left(c) < n) return truncated(c, "the value", n);
    c->pos += n;
    return QI_OK;
}

/* The elements of an array of strings: each offset recorded in f->strings. */
static qi_status parse_string_elements(cursor *c, gguf_arr *a) {
    qi_gguf_file *f = c->f;
    if (table_reserve((void **)&f->strings, &f->n_strings, &f->cap_strings, sizeof *f->strings,
                      (size_t)a->count, &a->index) != 0)
        return failf(c, QI_ERR_NOMEM, "out of memory for %llu strings", (unsigned long long)a->count);
    for (uint64_t i = 0; i < a->count; i++) {
        f->strings[a->index + i] = c->pos;
        uint64_t len = left(c) >= 8 ? le_u64(f->map + c->pos) : 0;
        if (left(c) < 8 || len > left(c) - 8) {
            char field[96];
            snprintf(field, sizeof field, "string %llu of %llu of the array",
                     (unsigned long long)i, (unsigned long long)a->count);
            size_t off;
            return read_string(c, field, &off, &len); /* reports it */
        }
        c->pos += 8 + (size_t)len;
    }
    return QI_OK;
}

/* u32 element type, u64 count, elements. */
static qi_status parse_array(cursor *c, int depth, gguf_arr *out) {
    if (depth >= GGUF_MAX_DEPTH)
        return failf(c, QI_ERR_FORMAT, "arrays nested more than %d deep (corrupt file)",
                     GGUF_MAX_DEPTH);
    uint32_t type;
    qi_status st = read_u32(c, "the array element type", &type);
    if (st == QI_OK) st = check_value_type(c, type, "array element type");
    if (st == QI_OK) st = read_u64(c, "the array length", &out->count);
    if (st != QI_OK) return st;
    out->type = (qi_gguf_type)type;
    out->data = c->pos;
    out->index = 0;
    /* smallest encoding of one element: its fixed size, a string's length, an
     * array's type + count */
    size_t min = value_type_size[type] ? value_type_size[type] : type == QI_GGUF_STRING ? 8 : 12;
    if (out->count > left(c) / min)
        return failf(c, QI_ERR_FORMAT,
                     "array of %llu %s elements cannot fit in the %zu bytes left in the file "
                     "(offset %zu): truncated or corrupt file; fetch it again",
                     (unsigned long long)out->count, value_type_names[type], left(c), c->pos);
    if (value_type_size[type]) {
        c->pos += (size_t)out->count * value_type_size[type];
        return QI_OK;
    }
    if (type == QI_GGUF_STRING) return parse_string_elements(c, out);
    qi_gguf_file *f = c->f;
    if (table_reserve((void **)&f->arrays, &f->n_arrays, &f->cap_arrays, sizeof *f->arrays,
                      (size_t)out->count, &out->index) != 0)
        return failf(c, QI_ERR_NOMEM, "out of memory for %llu arrays", (unsigned long long)out->count);
    for (uint64_t i = 0; i < out->count && st == QI_OK; i++) {
        gguf_arr child; /* f->arrays may move while the child is parsed */
        st = parse_array(c, depth + 1, &child);
        if (st == QI_OK) f->arrays[out->index + i] = child;
    }
    return st;
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp(((const gguf_kv *)a)->key, ((const gguf_kv *)b)->key);
}

static qi_status parse_kvs(cursor *c, uint64_t n_kv) {
    qi_gguf_file *f = c->f;
    f->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *f->kv);
    if (!f->kv) return failf(c, QI_ERR_NOMEM, "out of memory for %llu keys", (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        snprintf(c->ctx, sizeof c->ctx, "key %llu of %llu", (unsigned long long)i,
                 (unsigned long long)n_kv);
        qi_status st = read_name(c, "the key name", &kv->key);
        if (st != QI_OK) return st;
        f->n_kv++;
        snprintf(c->ctx, sizeof c->ctx, "key '%.200s'", kv->key);
        uint32_t type;
        st = read_u32(c, "the value type", &type);
        if (st == QI_OK) st = check_value_type(c, type, "value type");
        if (st != QI_OK) return st;
        kv->type = (qi_gguf_type)type;
        kv->value = c->pos;
        st = parse_value(c, kv->type, 0, &kv->arr);
        if (st != QI_OK) return st;
    }
    c->ctx[0] = 0;
    qsort(f->kv, (size_t)f->n_kv, sizeof *f->kv, cmp_kv);
    for (int i = 1; i < f->n_kv; i++)
        if (strcmp(f->kv[i - 1].key, f->kv[i].key) == 0)
            return failf(c, QI_ERR_FORMAT, "key '%.200s' appears twice in the metadata (corrupt file)",
                         f->kv[i].key);
    return QI_OK;
}

static const gguf_kv *find_kv(const qi_gguf_file *f, const char *key) {
    if (!f || !key || f->n_kv == 0) return NULL;
    gguf_kv probe = {.key = (char *)key};
    return bsearch(&probe, f->kv, (size_t)f->n_kv, sizeof *f->kv, cmp_kv);
}

/* An integer value at file offset `off` of integer type `type`; 0, or -1 for
 * a non-integer type or a U64 past INT64_MAX. */
static int int_at(const qi_gguf_file *f, qi_gguf_type type, size_t off, int64_t *out) {
    const unsigned char *p = f->map + off;
    switch (type) {
    case QI_GGUF_U8: *out = p[0]; return 0;
    case QI_GGUF_I8: *out = (int8_t)p[0]; return 0;
    case QI_GGUF_U16: *out = (uint16_t)(p[0] | p[1] << 8); return 0;
    case QI_GGUF_I16: *out = (int16_t)(uint16_t)(p[0] | p[1] << 8); return 0;
    case QI_GGUF_U32: *out = le_u32(p); return 0;
    case QI_GGUF_I32: *out = (int32_t)le_u32(p); return 0;
    case QI_GGUF_I64: *out = (int64_t)le_u64(p); return 0;
    case QI_GGUF_U64:
        if (le_u64(p) > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)le_u64(p);
        return 0;
    default: return -1;
    }
}

/* general.alignment: an integer power of two, 32 when absent. */
static qi_status read_alignment(cursor *c) {
    qi_gguf_file *f = c->f;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = find_kv(f, "general.alignment");
    if (!kv) return QI_OK;
    int64_t v;
    if (int_at(f, kv->type, kv->value, &v) != 0)
        return failf(c, QI_ERR_FORMAT,
                     "general.alignment is a %s value; it must be an integer (U32) power of two",
                     value_type_names[kv->type]);
    if (v <= 0 || (v & (v - 1)) != 0 || v > (1 << 30))
        return failf(c, QI_ERR_FORMAT,
                     "general.alignment is %lld; it must be a power of two (32 when absent): the "
                     "file is corrupt or its converter is broken",
                     (long long)v);
    f->alignment = (uint64_t)v;
    return QI_OK;
}

/* ---- tensor infos ---------------------------------------------------------------- */

/* What a tensor info says, before its data is placed. */
typedef struct tensor_info {
    uint64_t offset; /* relative to the data section */
} tensor_info;

/* "[64, 256]" (outermost first) into buf. */
static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* The ggml type id of a tensor: one the engine reads. */
static qi_status tensor_type(cursor *c, uint32_t id, qi_dtype *out) {
    if (id <= INT32_MAX && qi_dtype_from_ggml((int)id, out) == 0) return QI_OK;
    const char *name = id <= INT32_MAX ? qi_ggml_type_name((int)id) : NULL;
    if (name)
        return failf(c, QI_ERR_UNSUPPORTED,
                     "ggml type %u (%s) is not supported (supported: %s); use a file quantised "
                     "to one of those",
                     id, name, qi_ggml_supported_list());
    return failf(c, QI_ERR_FORMAT,
                 "unknown ggml type id %u (supported: %s); the file is corrupt or newer than "
                 "this reader",
                 id, qi_ggml_supported_list());
}

/* name, n_dims, ne[n_dims], type, offset of tensor i, checked on its own. */
static qi_status parse_tensor(cursor *c, uint64_t i, uint64_t n, qi_gguf_tensor *t,
                              tensor_info *info) {
    snprintf(c->ctx, sizeof c->ctx, "tensor %llu of %llu", (unsigned long long)i,
             (unsigned long long)n);
    char *name = NULL;
    qi_status st = read_name(c, "the tensor name", &name);
    if (st != QI_OK) return st;
    t->name = name;
    snprintf(c->ctx, sizeof c->ctx, "tensor '%.200s'", name);
    uint32_t ndim, type;
    st = read_u32(c, "n_dims", &ndim);
    if (st != QI_OK) return st;
    if (ndim > QI_GGUF_MAX_DIMS)
        return failf(c, QI_ERR_FORMAT, "n_dims is %u; at most %d are supported (corrupt file?)",
                     ndim, QI_GGUF_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t ne[QI_GGUF_MAX_DIMS];
    for (uint32_t k = 0; k < ndim; k++) {
        char field[16];
        snprintf(field, sizeof field, "ne[%u]", k);
        if ((st = read_u64(c, field, &ne[k])) != QI_OK) return st;
    }
    if ((st = read_u32(c, "the ggml type", &type)) != QI_OK) return st;
    if ((st = read_u64(c, "the data offset", &info->offset)) != QI_OK) return st;

    for (uint32_t k = 0; k < ndim; k++) {
        if (ne[k] == 0 || ne[k] > (uint64_t)INT64_MAX)
            return failf(c, QI_ERR_FORMAT, "ne[%u] is %llu; every dim must be 1 to 2^63-1 "
                         "(corrupt file)", k, (unsigned long long)ne[k]);
        t->shape[ndim - 1 - k] = (int64_t)ne[k]; /* PyTorch order */
    }
    if ((st = tensor_type(c, type, &t->dtype)) != QI_OK) return st;
    char what[600], shape[160];
    snprintf(what, sizeof what, "%s: tensor '%.200s' %s %s (ne[0] = %lld)", c->f->path, name,
             qi_dtype_name(t->dtype), shape_str(t->ndim, t->shape, shape, sizeof shape),
             (long long)(ndim ? ne[0] : 1));
    if ((st = qi_shape_bytes(t->dtype, t->ndim, t->shape, &t->nbytes, what, c->err)) != QI_OK)
        return st;
    if (info->offset % c->f->alignment != 0)
        return failf(c, QI_ERR_FORMAT,
                     "data offset %llu is not a multiple of the alignment %llu (corrupt file)",
                     (unsigned long long)info->offset, (unsigned long long)c->f->alignment);
    return QI_OK;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const qi_gguf_tensor *)a)->name, ((const qi_gguf_tensor *)b)->name);
}

static int cmp_name_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* No two tensors share a name; checked before their data is placed, which
 * would report a repeated tensor as an overlap. */
static qi_status check_unique(cursor *c) {
    qi_gguf_file *f = c->f;
    const char **names = malloc(sizeof *names * (size_t)(f->n_tensors ? f->n_tensors : 1));
    if (!names) return failf(c, QI_ERR_NOMEM, "out of memory");
    for (int i = 0; i < f->n_tensors; i++) names[i] = f->tensors[i].name;
    qsort(names, (size_t)f->n_tensors, sizeof *names, cmp_name_ptr);
    qi_status st = QI_OK;
    for (int i = 1; i < f->n_tensors && st == QI_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = failf(c, QI_ERR_FORMAT, "tensor '%.200s' appears twice (a duplicate name; corrupt file)", names[i]);
    free(names);
    return st;
}

/* Tensors sorted by their data, to find overlaps. */
typedef struct placed {
    uint64_t begin, end;
    const char *name;
} placed;

static int cmp_placed(const void *a, const void *b) {
    const placed *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Every tensor inside the data section, none overlapping another. */
static qi_status place_tensors(cursor *c, const tensor_info *info) {
    qi_gguf_file *f = c->f;
    uint64_t data_size = f->size - f->data_start;
    placed *p = malloc(sizeof *p * (size_t)(f->n_tensors ? f->n_tensors : 1));
    if (!p) return failf(c, QI_ERR_NOMEM, "out of memory");
    qi_status st = QI_OK;
    for (int i = 0; i < f->n_tensors && st == QI_OK; i++) {
        qi_gguf_tensor *t = &f->tensors[i];
        p[i] = (placed){info[i].offset, info[i].offset + t->nbytes, t->name};
        if (info[i].offset > data_size || t->nbytes > data_size - info[i].offset)
            st = qi_fail(c->err, QI_ERR_FORMAT,
                         "%s: tensor '%.200s': data [%llu, %llu) runs past the end of the data "
                         "section (%llu bytes from file offset %zu): truncated download? fetch "
                         "it again",
                         f->path, t->name, (unsigned long long)info[i].offset,
                         (unsigned long long)info[i].offset + t->nbytes,
                         (unsigned long long)data_size, f->data_start);
        else
            t->data = f->map + f->data_start + info[i].offset;
    }
    if (st == QI_OK) qsort(p, (size_t)f->n_tensors, sizeof *p, cmp_placed);
    for (int i = 1; i < f->n_tensors && st == QI_OK; i++)
        if (p[i].begin < p[i - 1].end)
            st = qi_fail(c->err, QI_ERR_FORMAT,
                         "%s: tensors '%.200s' [%llu, %llu) and '%.200s' [%llu, %llu) overlap in "
                         "the data section (corrupt file)",
                         f->path, p[i - 1].name, (unsigned long long)p[i - 1].begin,
                         (unsigned long long)p[i - 1].end, p[i].name,
                         (unsigned long long)p[i].begin, (unsigned long long)p[i].end);
    free(p);
    return st;
}

static qi_status parse_tensors(cursor *c, uint64_t n) {
    qi_gguf_file *f = c->f;
    f->tensors = calloc((size_t)(n ? n : 1), sizeof *f->tensors);
    tensor_info *info = calloc((size_t)(n ? n : 1), sizeof *info);
    qi_status st = QI_OK;
    if (!f->tensors || !info) st = failf(c, QI_ERR_NOMEM, "out of memory for %llu tensors",
                                         (unsigned long long)n);
    for (uint64_t i = 0; i < n && st == QI_OK; i++) {
        st = parse_tensor(c, i, n, &f->tensors[i], &info[i]);
        if (f->tensors[i].name) f->n_tensors++;
    }
    c->ctx[0] = 0;
    if (st == QI_OK) {
        uint64_t start = (c->pos + f->alignment - 1) / f->alignment * f->alignment;
        if (n > 0 && start > f->size)
            st = failf(c, QI_ERR_FORMAT,
                       "the data section would start at offset %llu, past the end of the file "
                       "(%zu bytes): truncated download? fetch it again",
                       (unsigned long long)start, f->size);
        f->data_start = start > f->size ? f->size : (size_t)start;
    }
    if (st == QI_OK) st = check_unique(c);
    if (st == QI_OK) st = place_tensors(c, info);
    free(info);
    if (st != QI_OK) return st;
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
    return QI_OK;
}

/* ---- the header -------------------------------------------------------------------- */

static qi_status parse_file(qi_gguf_file *f, qi_error *err) {
    cursor c = {.f = f, .err = err};
    const unsigned char *m = f->map;
    if (f->size < 4 || memcmp(m, "GGUF", 4) != 0) {
        if (f->size < 4) return truncated(&c, "the magic \"GGUF\"", 4);
        return failf(&c, QI_ERR_FORMAT,
                     "not a GGUF file (starts with %02x %02x %02x %02x, expected \"GGUF\")", m[0],
                     m[1], m[2], m[3]);
    }
    c.pos = 4;
    uint64_t n_tensors, n_kv;
    qi_status st = read_u32(&c, "the version", &f->version);
    if (st != QI_OK) return st;
    if (f->version == 0x02000000u || f->version == 0x03000000u)
        return failf(&c, QI_ERR_UNSUPPORTED,
                     "big-endian GGUF file (version reads 0x%08x); use a little-endian file",
                     f->version);
    if (f->version == 1)
        return failf(&c, QI_ERR_UNSUPPORTED,
                     "GGUF version 1 is obsolete (32-bit counts); convert the model again with a "
                     "current llama.cpp / gguf-py");
    if (f->version != 2 && f->version != 3)
        return failf(&c, QI_ERR_UNSUPPORTED, "GGUF version %u is not supported (2 and 3 are)",
                     f->version);
    if ((st = read_u64(&c, "the tensor count", &n_tensors)) != QI_OK) return st;
    if ((st = read_u64(&c, "the metadata key count", &n_kv)) != QI_OK) return st;
    if (n_kv > left(&c) / GGUF_MIN_KV || n_kv > INT32_MAX)
        return failf(&c, QI_ERR_FORMAT,
                     "the header claims %llu metadata keys, which cannot fit in the %zu bytes "
                     "left (at least %d bytes each): truncated or corrupt file",
                     (unsigned long long)n_kv, left(&c), GGUF_MIN_KV);
    if (n_tensors > (left(&c) - n_kv * GGUF_MIN_KV) / GGUF_MIN_TENSOR || n_tensors > INT32_MAX)
        return failf(&c, QI_ERR_FORMAT,
                     "the header claims %llu tensors, which cannot fit in the %zu bytes left "
                     "(at least %d bytes each): truncated or corrupt file",
                     (unsigned long long)n_tensors, left(&c), GGUF_MIN_TENSOR);
    if ((st = parse_kvs(&c, n_kv)) != QI_OK) return st;
    if ((st = read_alignment(&c)) != QI_OK) return st;
    return parse_tensors(&c, n_tensors);
}

/* ---- open, close, lookups -------------------------------------------------------------- */

/* A new file record named `path` (no bytes yet); NULL when out of memory. */
static qi_gguf_file *file_new(const char *path) {
    qi_gguf_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (f && !f->path) {
        free(f);
        f = NULL;
    }
    return f;
}

/* Parses f->map[0 .. f->size); closes f on error. */
static qi_status file_parse(qi_gguf_file *f, qi_gguf_file **out, qi_error *err) {
    qi_status st = parse_file(f, err);
    if (st != QI_OK) {
        qi_gguf_close(f);
        return st;
    }
    *out = f;
    return QI_OK;
}

qi_status qi_gguf_open(const char *path, qi_gguf_file **out, qi_error *err) {
    *out = NULL;
    if (!path || !*path) return qi_fail(err, QI_ERR_ARG, "no GGUF path given");
    qi_gguf_file *f = file_new(path);
    if (!f) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    void *map = NULL;
    qi_status st = qi_map_file(path, &map, &f->size, err);
    if (st != QI_OK) {
        qi_gguf_close(f);
        return st;
    }
    f->map = map; /* an empty file: the parser reports it */
    return file_parse(f, out, err);
}

qi_status qi_gguf_open_memory(const char *name, const void *data, size_t size, qi_gguf_file **out,
                              qi_error *err) {
    static const unsigned char empty[1];
    *out = NULL;
    if (!name || !*name || (!data && size)) return qi_fail(err, QI_ERR_ARG, "qi_gguf_open_memory: no name or no data");
    qi_gguf_file *f = file_new(name);
    if (!f) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", name);
    f->map = (unsigned char *)(data ? data : empty); /* never written through */
    f->size = size;
    f->borrowed = 1;
    return file_parse(f, out, err);
}

void qi_gguf_close(qi_gguf_file *f) {
    if (!f) return;
    if (!f->borrowed) qi_unmap_file((void *)f->map, f->size);
    for (int i = 0; i < f->n_kv; i++) free(f->kv[i].key);
    for (int i = 0; i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(f->strings);
    free(f->arrays);
    free(f->path);
    free(f);
}

const char *qi_gguf_path(const qi_gguf_file *f) { return f ? f->path : NULL; }
uint32_t qi_gguf_version(const qi_gguf_file *f) { return f->version; }
uint64_t qi_gguf_alignment(const qi_gguf_file *f) { return f->alignment; }
int qi_gguf_tensor_count(const qi_gguf_file *f) { return f ? f->n_tensors : 0; }

const qi_gguf_tensor *qi_gguf_tensor_at(const qi_gguf_file *f, int i) {
    return f && i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const qi_gguf_tensor *qi_gguf_find(const qi_gguf_file *f, const char *name) {
    if (!f || !name || f->n_tensors == 0) return NULL;
    qi_gguf_tensor probe = {.name = name};
    return bsearch(&probe, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

int qi_gguf_key_count(const qi_gguf_file *f) { return f ? f->n_kv : 0; }
const char *qi_gguf_key_at(const qi_gguf_file *f, int i) {
    return f && i >= 0 && i < f->n_kv ? f->kv[i].key : NULL;
}
int qi_gguf_has_key(const qi_gguf_file *f, const char *key) { return find_kv(f, key) != NULL; }
int qi_gguf_key_type(const qi_gguf_file *f, const char *key) {
    const gguf_kv *kv = find_kv(f, key);
    return kv ? (int)kv->type : -1;
}

const char *qi_gguf_type_name(int type) {
    return type >= 0 && type < QI_GGUF_TYPE_COUNT ? value_type_names[type] : "?";
}

/* ---- typed values ---------------------------------------------------------------------- */

static qi_status get_kv(const qi_gguf_file *f, const char *key, const gguf_kv **out, qi_error *err) {
    *out = find_kv(f, key);
    if (!*out)
        return qi_fail(err, QI_ERR_FORMAT, "%s: metadata key '%s' not found (wrong kind of file?)",
                       f ? f->path : "(no file)", key ? key : "(null)");
    return QI_OK;
}

static qi_status wrong_type(const qi_gguf_file *f, const char *key, const char *found,
                            const char *wanted, qi_error *err) {
    return qi_fail(err, QI_ERR_FORMAT, "%s: metadata key '%s' is %s, expected %s", f->path, key,
                   found, wanted);
}

/* A number of any type at file offset `off` as a double; 0, or -1. */
static int float_at(const qi_gguf_file *f, qi_gguf_type type, size_t off, double *out) {
    int64_t i;
    if (type == QI_GGUF_F32) {
        uint32_t u = le_u32(f->map + off);
        float x;
        memcpy(&x, &u, 4);
        *out = x;
    } else if (type == QI_GGUF_F64) {
        uint64_t u = le_u64(f->map + off);
        memcpy(out, &u, 8);
    } else if (type == QI_GGUF_U64) {
        *out = (double)le_u64(f->map + off);
    } else if (int_at(f, type, off, &i) == 0) {
        *out = (double)i;
    } else {
        return -1;
    }
    return 0;
}

/* int_at's failure, said precisely. */
static qi_status int_error(const qi_gguf_file *f, const char *key, qi_gguf_type type, size_t off,
                           qi_error *err) {
    if (type == QI_GGUF_U64)
        return qi_fail(err, QI_ERR_FORMAT, "%s: metadata key '%s': U64 value %llu exceeds INT64_MAX",
                       f->path, key, (unsigned long long)le_u64(f->map + off));
    return wrong_type(f, key, value_type_names[type], "an integer", err);
}

qi_status qi_gguf_get_string(const qi_gguf_file *f, const char *key, const char **s, size_t *len,
                             qi_error *err) {
    const gguf_kv *kv;
    qi_status st = get_kv(f, key, &kv, err);
    if (st != QI_OK) return st;
    if (kv->type != QI_GGUF_STRING)
        return wrong_type(f, key, value_type_names[kv->type], "a STRING", err);
    *len = (size_t)le_u64(f->map + kv->value);
    *s = (const char *)f->map + kv->value + 8;
    return QI_OK;
}

qi_status qi_gguf_get_int(const qi_gguf_file *f, const char *key, int64_t *out, qi_error *err) {
    const gguf_kv *kv;
    qi_status st = get_kv(f, key, &kv, err);
    if (st != QI_OK) return st;
    if (int_at(f, kv->type, kv->value, out) != 0) return int_error(f, key, kv->type, kv->value, err);
    return QI_OK;
}

qi_status qi_gguf_get_float(const qi_gguf_file *f, const char *key, double *out, qi_error *err) {
    const gguf_kv *kv;
    qi_status st = get_kv(f, key, &kv, err);
    if (st != QI_OK) return st;
    if (float_at(f, kv->type, kv->value, out) != 0)
        return wrong_type(f, key, value_type_names[kv->type], "a number", err);
    return QI_OK;
}

qi_status qi_gguf_get_bool(const qi_gguf_file *f, const char *key, int *out, qi_error *err) {
    const gguf_kv *kv;
    qi_status st = get_kv(f, key, &kv, err);
    if (st != QI_OK) return st;
    if (kv->type != QI_GGUF_BOOL) return wrong_type(f, key, value_type_names[kv->type], "a BOOL", err);
    *out = f->map[kv->value] != 0;
    return QI_OK;
}

static qi_gguf_array array_of(const qi_gguf_file *f, const char *key, const gguf_arr *a) {
    return (qi_gguf_array){.file = f, .key = key, .type = a->type, .count = a->count,
                           .data = a->data, .index = a->index};
}

qi_status qi_gguf_get_array(const qi_gguf_file *f, const char *key, qi_gguf_array *out,
                            qi_error *err) {
    const gguf_kv *kv;
    qi_status st = get_kv(f, key, &kv, err);
    if (st != QI_OK) return st;
    if (kv->type != QI_GGUF_ARRAY)
        return wrong_type(f, key, value_type_names[kv->type], "an ARRAY", err);
    *out = array_of(f, kv->key, &kv->arr);
    return QI_OK;
}

/* Element i exists and the array's element type is acceptable. */
static qi_status elem_check(const qi_gguf_array *a, uint64_t i, int type_ok, const char *wanted,
                            qi_error *err) {
    if (!a || !a->file) return qi_fail(err, QI_ERR_ARG, "no GGUF array given");
    if (!type_ok) {
        char found[48];
        snprintf(found, sizeof found, "an array of %s", value_type_names[a->type]);
        return wrong_type(a->file, a->key, found, wanted, err);
    }
    if (i >= a->count)
        return qi_fail(err, QI_ERR_ARG, "%s: metadata key '%s': element %llu asked of an array of %llu",
                       a->file->path, a->key, (unsigned long long)i, (unsigned long long)a->count);
    return QI_OK;
}

qi_status qi_gguf_array_string(const qi_gguf_array *a, uint64_t i, const char **s, size_t *len,
                               qi_error *err) {
    qi_status st = elem_check(a, i, a && a->type == QI_GGUF_STRING, "an array of STRING", err);
    if (st != QI_OK) return st;
    size_t off = a->file->strings[a->index + i];
    *len = (size_t)le_u64(a->file->map + off);
    *s = (const char *)a->file->map + off + 8;
    return QI_OK;
}

qi_status qi_gguf_array_int(const qi_gguf_array *a, uint64_t i, int64_t *out, qi_error *err) {
    int fixed = a && a->type < QI_GGUF_TYPE_COUNT && value_type_size[a->type] > 0;
    qi_status st = elem_check(a, i, fixed, "an array of integers", err);
    if (st != QI_OK) return st;
    size_t off = a->data + (size_t)i * value_type_size[a->type];
    if (int_at(a->file, a->type, off, out) != 0) return int_error(a->file, a->key, a->type, off, err);
    return QI_OK;
}

qi_status qi_gguf_array_float(const qi_gguf_array *a, uint64_t i, double *out, qi_error *err) {
    int number = a && a->type < QI_GGUF_TYPE_COUNT && value_type_size[a->type] > 0 &&
                 a->type != QI_GGUF_BOOL;
    qi_status st = elem_check(a, i, number, "an array of numbers", err);
    if (st != QI_OK) return st;
    float_at(a->file, a->type, a->data + (size_t)i * value_type_size[a->type], out);
    return QI_OK;
}

qi_status qi_gguf_array_array(const qi_gguf_array *a, uint64_t i, qi_gguf_array *out,
                              qi_error *err) {
    qi_status st = elem_check(a, i, a && a->type == QI_GGUF_ARRAY, "an array of ARRAY", err);
    if (st != QI_OK) return st;
    *out = array_of(a->file, a->key, &a->file->arrays[a->index + i]);
    return QI_OK;
}

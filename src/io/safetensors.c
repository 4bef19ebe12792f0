/*
 * safetensors.c — maps safetensors files read-only, validates their headers,
 * looks tensors up by name, opens sharded sets and writes new files.
 *
 * File layout (spec vae-and-formats.md §B.2):
 *     [0, 8)        u64 little-endian N, the header length
 *     [8, 8+N)      UTF-8 JSON object: name -> {dtype, shape, data_offsets}
 *                   plus an optional "__metadata__" object of strings
 *     [8+N, size)   the data section; offsets are relative to its start
 *
 * Nothing in a header is trusted before it is checked; each check has its
 * own message naming the file (and the tensor):
 *   - the file is at least 8 bytes; N <= 100 MB and 8 + N <= file size;
 *   - the header is valid UTF-8 and a JSON object;
 *   - __metadata__, if present, is an object of strings;
 *   - every entry is an object with a string dtype, a shape array and a
 *     data_offsets array of two integers;
 *   - the dtype is one this engine knows (F8_E4M3FN is read as F8_E4M3);
 *   - the shape has at most QI_ST_MAX_DIMS non-negative integer dims;
 *   - begin <= end <= data section size;
 *   - dtype size x element count == end - begin (overflow-checked);
 *   - no two entries have the same name;
 *   - sorted by offset the tensors tile the data section exactly: no
 *     overlap, no gap, no trailing bytes (what the reference reader demands).
 *
 * Weights are never copied: qi_st_tensor.data points into the mapping and is
 * valid until the file is closed. Data is NOT guaranteed to be aligned (only
 * writers that pad the header and order tensors by size make it so); readers
 * must use unaligned-safe loads or memcpy.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/types.h"
#include "io/model_dir.h" /* qi_json_load, qi_json_parse */

#define QI_ST_MAX_HEADER 100000000ull      /* the reference implementation's limit */
#define QI_ST_MAX_EXACT 9007199254740992.0 /* 2^53: integers a JSON double holds exactly */

static const char *const supported_dtypes = "F32, F16, BF16, F8_E4M3, F8_E5M2, I32, I64, U8";

/* ---- small helpers ------------------------------------------------------ */

char *qi_st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
    size_t n = 0;
    if (cap == 0) return buf;
    buf[0] = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF). Returns
 * the offset of the first bad byte, or len if all is well. */
static size_t utf8_bad_offset(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t extra;
        unsigned min, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return i;
        }
        if (len - i <= extra) return i;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += extra + 1;
    }
    return len;
}

static int dtype_from_name(const char *s, qi_dtype *out) {
    for (int t = 0; t <= QI_U8; t++) { /* element types only: safetensors has no block types */
        if (strcmp(s, qi_dtype_name((qi_dtype)t)) == 0) {
            *out = (qi_dtype)t;
            return 1;
        }
    }
    if (strcmp(s, "F8_E4M3FN") == 0) { /* spelling of some third-party tools */
        *out = QI_F8_E4M3;
        return 1;
    }
    return 0;
}

static int is_float_dtype(qi_dtype t) {
    return t == QI_F32 || t == QI_F16 || t == QI_BF16 || t == QI_F8_E4M3 || t == QI_F8_E5M2;
}

/* A JSON number that is a whole value in [0, 2^53]. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= QI_ST_MAX_EXACT) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const qi_st_tensor *)a)->name, ((const qi_st_tensor *)b)->name);
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const qi_st_tensor *const *)a)->name, (*(const qi_st_tensor *const *)b)->name);
}

/* ---- one file: header checks -------------------------------------------- */

/* What parse_entry learns about one tensor before it is placed. */
typedef struct entry_info {
    const char *name; /* into the cJSON tree */
    qi_dtype dtype;
    int ndim;
    int64_t shape[QI_ST_MAX_DIMS];
    uint64_t begin, end;
} entry_info;

/* Checks one header entry `item` named `name` against the rules in the file
 * comment (except duplicates and tiling, which need all entries). */
static qi_status parse_entry(const char *path, const cJSON *item, uint64_t data_size, entry_info *e,
                             qi_error *err) {
    const char *name = item->string;
    e->name = name;
    if (!cJSON_IsObject(item))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': entry must be an object with dtype, shape and "
                       "data_offsets, found %s",
                       path, name, qi_json_type_name(item));

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!dtype)
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!shape)
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!offsets)
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': missing \"data_offsets\"", path, name);

    if (!cJSON_IsString(dtype) || !dtype->valuestring)
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': \"dtype\" must be a string, found %s",
                       path, name, qi_json_type_name(dtype));
    if (!dtype_from_name(dtype->valuestring, &e->dtype))
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: tensor '%s': unsupported dtype \"%.32s\" (supported: %s)", path, name,
                       dtype->valuestring, supported_dtypes);

    if (!cJSON_IsArray(shape))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': \"shape\" must be an array of integers, found %s", path,
                       name, qi_json_type_name(shape));
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > QI_ST_MAX_DIMS)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: tensor '%s': shape has %d dims, at most %d are supported", path, name,
                       ndim, QI_ST_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1;
    int i = 0, overflow = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t d;
        if (!json_uint(dim, &d)) {
            if (cJSON_IsNumber(dim) && dim->valuedouble < 0)
                return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %.17g is negative",
                               path, name, i, dim->valuedouble);
            if (cJSON_IsNumber(dim))
                return qi_fail(
                    err, QI_ERR_FORMAT,
                    "%s: tensor '%s': shape[%d] = %.17g is not a whole number below 2^53", path,
                    name, i, dim->valuedouble);
            return qi_fail(err, QI_ERR_FORMAT,
                           "%s: tensor '%s': shape[%d] must be a non-negative integer, found %s",
                           path, name, i, qi_json_type_name(dim));
        }
        e->shape[i++] = (int64_t)d;
        if (d != 0 && numel > UINT64_MAX / d)
            overflow = 1;
        else
            numel *= d;
    }

    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &e->begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), &e->end))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': \"data_offsets\" must be [begin, end] of two "
                       "non-negative integers, found %s",
                       path, name,
                       cJSON_IsArray(offsets) ? "another array" : qi_json_type_name(offsets));
    if (e->end < e->begin)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] end before begin", path, name,
                       (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_size)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets end %llu is beyond the data section "
                       "(%llu bytes; file truncated?)",
                       path, name, (unsigned long long)e->end, (unsigned long long)data_size);

    char shape_s[256], what[1024];
    qi_st_shape_str(e->ndim, e->shape, shape_s, sizeof shape_s);
    snprintf(what, sizeof what, "%s: tensor '%s': shape %s", path, name, shape_s);
    size_t nbytes;
    qi_status st = overflow ? qi_fail(err, QI_ERR_FORMAT, "%s: overflows a 64-bit byte count", what)
                            : qi_shape_bytes(e->dtype, e->ndim, e->shape, &nbytes, what, err);
    if (st != QI_OK) return st;
    if (nbytes != e->end - e->begin)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s': %s x %s is %llu bytes but data_offsets [%llu, %llu] "
                       "span %llu bytes",
                       path, name, qi_dtype_name(e->dtype), shape_s, (unsigned long long)nbytes,
                       (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)(e->end - e->begin));
    return QI_OK;
}

/* __metadata__ must be an object of strings; kept as compact JSON text. */
static qi_status parse_metadata(const char *path, const cJSON *meta, char **out, qi_error *err) {
    if (!cJSON_IsObject(meta))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: \"__metadata__\" must be an object of strings, found %s", path,
                       qi_json_type_name(meta));
    const cJSON *v;
    cJSON_ArrayForEach(v, meta) {
        if (!cJSON_IsString(v))
            return qi_fail(err, QI_ERR_FORMAT,
                           "%s: \"__metadata__\" must be an object of strings; key '%s' is %s",
                           path, v->string, qi_json_type_name(v));
    }
    *out = cJSON_PrintUnformatted(meta);
    if (!*out) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory keeping __metadata__", path);
    return QI_OK;
}

static int cmp_entry_offset(const void *a, const void *b) {
    const entry_info *x = *(const entry_info *const *)a, *y = *(const entry_info *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Sorted by offset, the tensors must cover [0, data_size) exactly once. */
static qi_status check_tiling(const char *path, entry_info *entries, int n, uint64_t data_size,
                              qi_error *err) {
    entry_info **by_offset = malloc(sizeof(entry_info *) * (size_t)(n ? n : 1));
    if (!by_offset) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) by_offset[i] = &entries[i];
    qsort(by_offset, (size_t)n, sizeof *by_offset, cmp_entry_offset);
    uint64_t covered = 0;
    const entry_info *prev = NULL;
    qi_status st = QI_OK;
    for (int i = 0; i < n && st == QI_OK; i++) {
        const entry_info *e = by_offset[i];
        if (e->begin < covered)
            st = qi_fail(err, QI_ERR_FORMAT,
                         "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data "
                         "section",
                         path, prev->name, (unsigned long long)prev->begin,
                         (unsigned long long)prev->end, e->name, (unsigned long long)e->begin,
                         (unsigned long long)e->end);
        else if (e->begin > covered)
            st = qi_fail(err, QI_ERR_FORMAT,
                         "%s: data bytes [%llu, %llu) belong to no tensor (gap before '%s')", path,
                         (unsigned long long)covered, (unsigned long long)e->begin, e->name);
        if (e->end > covered) {
            covered = e->end;
            prev = e;
        }
    }
    if (st == QI_OK && covered != data_size)
        st = qi_fail(err, QI_ERR_FORMAT,
                     "%s: %llu trailing bytes after the last tensor (data section is %llu bytes, "
                     "tensors end at %llu)",
                     path, (unsigned long long)(data_size - covered), (unsigned long long)data_size,
                     (unsigned long long)covered);
    free(by_offset);
    return st;
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp((*(const entry_info *const *)a)->name, (*(const entry_info *const *)b)->name);
}

/* No two entries share a name (JSON objects may repeat a key; cJSON keeps
 * both). Checked before the tiling, which would call a repeated entry an
 * overlap. */
static qi_status check_unique(const char *path, entry_info *entries, int n, qi_error *err) {
    entry_info **by_name = malloc(sizeof(entry_info *) * (size_t)(n ? n : 1));
    if (!by_name) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) by_name[i] = &entries[i];
    qsort(by_name, (size_t)n, sizeof *by_name, cmp_entry_name);
    qi_status st = QI_OK;
    for (int i = 1; i < n && st == QI_OK; i++)
        if (strcmp(by_name[i - 1]->name, by_name[i]->name) == 0)
            st = qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' appears twice in the header (a duplicate name)",
                         path, by_name[i]->name);
    free(by_name);
    return st;
}

/* Parses and checks the header of an already-mapped file into f. */
static qi_status parse_header(qi_st_file *f, qi_error *err) {
    const unsigned char *bytes = f->map;
    const char *path = f->path;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
    if (header_len > QI_ST_MAX_HEADER)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: header length %llu exceeds the 100 MB limit (not a safetensors file?)",
                       path, (unsigned long long)header_len);
    if (header_len > f->size - 8)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%zu bytes; "
                       "truncated?)",
                       path, (unsigned long long)header_len, f->size);
    const char *header = (const char *)bytes + 8;
    uint64_t data_size = f->size - 8 - header_len;

    size_t bad = utf8_bad_offset((const unsigned char *)header, header_len);
    if (bad < header_len)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: header is not valid UTF-8 (byte 0x%02x at header offset %zu)", path,
                       (unsigned char)header[bad], bad);

    char what[1024];
    snprintf(what, sizeof what, "%s: header", path);
    cJSON *root;
    qi_status st = qi_json_parse(header, header_len, what, &root, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsObject(root)) {
        st = qi_fail(err, QI_ERR_FORMAT, "%s: header is %s, not a JSON object", path,
                     qi_json_type_name(root));
        cJSON_Delete(root);
        return st;
    }

    int n_items = cJSON_GetArraySize(root);
    entry_info *entries = calloc((size_t)(n_items ? n_items : 1), sizeof *entries);
    if (!entries) {
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %d header entries", path, n_items);
    }
    int n = 0, n_meta = 0;
    size_t names_bytes = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (n_meta++)
                st = qi_fail(err, QI_ERR_FORMAT, "%s: \"__metadata__\" appears twice in the header",
                             path);
            else
                st = parse_metadata(path, item, &f->metadata_json, err);
        } else {
            st = parse_entry(path, item, data_size, &entries[n], err);
            names_bytes += strlen(item->string) + 1;
            n++;
        }
        if (st != QI_OK) break;
    }
    if (st == QI_OK) st = check_unique(path, entries, n, err);
    if (st == QI_OK) st = check_tiling(path, entries, n, data_size, err);

    /* One block: the tensor array followed by its names. */
    if (st == QI_OK) {
        size_t array_bytes = sizeof(qi_st_tensor) * (size_t)n;
        f->tensors = malloc(array_bytes + names_bytes + 1);
        if (!f->tensors)
            st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %d tensors", path, n);
    }
    if (st == QI_OK) {
        char *names = (char *)f->tensors + sizeof(qi_st_tensor) * (size_t)n;
        const unsigned char *data = bytes + 8 + header_len;
        for (int i = 0; i < n; i++) {
            const entry_info *e = &entries[i];
            qi_st_tensor *t = &f->tensors[i];
            size_t len = strlen(e->name) + 1;
            memcpy(names, e->name, len);
            t->name = names;
            names += len;
            t->dtype = e->dtype;
            t->ndim = e->ndim;
            memset(t->shape, 0, sizeof t->shape);
            memcpy(t->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim);
            t->data = data + e->begin;
            t->nbytes = (size_t)(e->end - e->begin);
            t->file = f;
        }
        f->n_tensors = n;
        qsort(f->tensors, (size_t)n, sizeof *f->tensors, cmp_tensor_name); /* names unique: checked above */
    }
    free(entries);
    cJSON_Delete(root);
    return st;
}

/* ---- one file: open, find, close ---------------------------------------- */

/* A new file record named `path` (no bytes yet); NULL when out of memory. */
static qi_st_file *file_new(const char *path) {
    qi_st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (f && !f->path) {
        free(f);
        f = NULL;
    }
    return f;
}

/* Checks f->map[0 .. f->size) and fills the tensor table; closes f on error. */
static qi_status file_parse(qi_st_file *f, qi_st_file **out, qi_error *err) {
    qi_status st = QI_OK;
    if (f->size < 8)
        st = qi_fail(err, QI_ERR_FORMAT,
                     "%s: file is %zu bytes, shorter than the 8-byte header length field "
                     "(empty or truncated download?)",
                     f->path, f->size);
    if (st == QI_OK) st = parse_header(f, err);
    if (st != QI_OK) {
        qi_st_close(f);
        return st;
    }
    *out = f;
    return QI_OK;
}

qi_status qi_st_open(const char *path, qi_st_file **out, qi_error *err) {
    *out = NULL;
    if (!path || !*path) return qi_fail(err, QI_ERR_ARG, "no safetensors path given");
    qi_st_file *f = file_new(path);
    if (!f) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    qi_status st = qi_map_file(path, &f->map, &f->size, err);
    if (st != QI_OK) {
        qi_st_close(f);
        return st;
    }
    return file_parse(f, out, err);
}

qi_status qi_st_open_memory(const char *name, const void *data, size_t size, qi_st_file **out,
                            qi_error *err) {
    *out = NULL;
    if (!name || !*name || (!data && size)) return qi_fail(err, QI_ERR_ARG, "qi_st_open_memory: no name or no data");
    qi_st_file *f = file_new(name);
    if (!f) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", name);
    f->map = (void *)data; /* never written: tensors point into it as const */
    f->size = size;
    f->borrowed = 1;
    return file_parse(f, out, err);
}

void qi_st_close(qi_st_file *f) {
    if (!f) return;
    if (!f->borrowed) qi_unmap_file(f->map, f->size);
    free(f->tensors);
    cJSON_free(f->metadata_json);
    free(f->path);
    free(f);
}

const qi_st_tensor *qi_st_file_find(const qi_st_file *f, const char *name) {
    if (!f || !name || f->n_tensors == 0) return NULL;
    qi_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

/* ---- sets --------------------------------------------------------------- */

/* Builds s->index from all files; a name in two files is an error. */
static qi_status set_build_index(qi_st_set *s, qi_error *err) {
    size_t total = 0;
    for (int i = 0; i < s->n_files; i++) total += (size_t)s->files[i]->n_tensors;
    s->index = malloc(sizeof *s->index * (total ? total : 1));
    if (!s->index) return qi_fail(err, QI_ERR_NOMEM, "out of memory indexing %zu tensors", total);
    size_t k = 0;
    for (int i = 0; i < s->n_files; i++)
        for (int j = 0; j < s->files[i]->n_tensors; j++) s->index[k++] = &s->files[i]->tensors[j];
    s->n_tensors = (int)total;
    qsort(s->index, total, sizeof *s->index, cmp_tensor_ptr_name);
    for (size_t i = 1; i < total; i++)
        if (strcmp(s->index[i - 1]->name, s->index[i]->name) == 0)
            return qi_fail(err, QI_ERR_FORMAT, "tensor '%s' is in two shards: %s and %s",
                           s->index[i]->name, s->index[i - 1]->file->path, s->index[i]->file->path);
    return QI_OK;
}

void qi_st_set_close(qi_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) qi_st_close(s->files[i]);
    free(s->files);
    free(s->index);
    free(s);
}

static qi_st_set *set_new(int n_files) {
    qi_st_set *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->files = calloc((size_t)(n_files ? n_files : 1), sizeof *s->files);
    if (!s->files) {
        free(s);
        return NULL;
    }
    return s;
}

/* A set of the one file `open_one` gives. */
static qi_status set_of_one(const char *name, qi_status (*open_one)(const void *ctx, qi_st_file **f, qi_error *err),
                            const void *ctx, qi_st_set **out, qi_error *err) {
    *out = NULL;
    qi_st_set *s = set_new(1);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", name ? name : "(null)");
    qi_status st = open_one(ctx, &s->files[0], err);
    if (st == QI_OK) {
        s->n_files = 1;
        st = set_build_index(s, err);
    }
    if (st != QI_OK) {
        qi_st_set_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

static qi_status open_path(const void *ctx, qi_st_file **f, qi_error *err) {
    return qi_st_open((const char *)ctx, f, err);
}

qi_status qi_st_set_open_file(const char *path, qi_st_set **out, qi_error *err) {
    return set_of_one(path, open_path, path, out, err);
}

typedef struct memory_image {
    const char *name;
    const void *data;
    size_t size;
} memory_image;

static qi_status open_image(const void *ctx, qi_st_file **f, qi_error *err) {
    const memory_image *m = ctx;
    return qi_st_open_memory(m->name, m->data, m->size, f, err);
}

qi_status qi_st_set_open_memory(const char *name, const void *data, size_t size, qi_st_set **out,
                                qi_error *err) {
    memory_image m = {name, data, size};
    return set_of_one(name, open_image, &m, out, err);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name from an index must stay in the index's folder. */
static int plain_file_name(const char *s) {
    return *s && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* The weight_map's entries in file order: names[k] the tensor name, shards[k]
 * its shard file name (both pointing into the index's JSON). Each value must
 * be a plain file name, so that a shard stays in the index's folder. */
static qi_status read_weight_map(const cJSON *map, const char *index_path, const char **names, const char **shards,
                                 qi_error *err) {
    int k = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        if (!cJSON_IsString(item) || !plain_file_name(item->valuestring))
            return qi_fail(
                err, QI_ERR_FORMAT,
                "%s: weight_map['%s'] must be a shard file name in the same folder, "
                "found %s%s%s",
                index_path, item->string, cJSON_IsString(item) ? "'" : qi_json_type_name(item),
                cJSON_IsString(item) ? item->valuestring : "", cJSON_IsString(item) ? "'" : "");
        names[k] = item->string;
        shards[k] = item->valuestring;
        k++;
    }
    return QI_OK;
}

/* Each tensor listed once. Sorts names[0..n_names) (check_shards_listed
 * searches them). */
static qi_status check_listed_once(const char **names, int n_names, const char *index_path, qi_error *err) {
    qsort(names, (size_t)n_names, sizeof *names, cmp_str_ptr);
    for (int i = 1; i < n_names; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return qi_fail(err, QI_ERR_FORMAT, "%s: weight_map lists tensor '%s' twice", index_path, names[i]);
    return QI_OK;
}

/* Opens each shard once: shards[0..n_names) becomes the sorted distinct names
 * shards[0..*n_shards), and (*s)->files[i] the file of shards[i]. On failure
 * *s holds the shards opened so far (or is NULL), for the caller to close. */
static qi_status open_shards(const char *dir, const char *index_path, const char **shards, int n_names,
                             int *n_shards, qi_st_set **s, qi_error *err) {
    qsort(shards, (size_t)n_names, sizeof *shards, cmp_str_ptr);
    *n_shards = 0;
    for (int i = 0; i < n_names; i++)
        if (i == 0 || strcmp(shards[i - 1], shards[i]) != 0) shards[(*n_shards)++] = shards[i];
    if (!(*s = set_new(*n_shards))) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", index_path);
    for (int i = 0; i < *n_shards; i++) {
        char path[QI_PATH_MAX];
        if (qi_path_join(path, sizeof path, dir, shards[i]) != 0)
            return qi_fail(err, QI_ERR_ARG, "%s: path too long", dir);
        if (!qi_file_exists(path))
            return qi_fail(err, QI_ERR_IO, "%s: shard file missing (listed in %s); the download is incomplete",
                           path, index_path);
        qi_status st = qi_st_open(path, &(*s)->files[i], err);
        if (st != QI_OK) return st;
        (*s)->n_files++;
    }
    return QI_OK;
}

/* index -> shard: every listed tensor is in the shard it is listed for
 * (shards[0..n_shards) sorted, s->files[i] the file of shards[i]). */
static qi_status check_listed_in_shards(const cJSON *map, const char *index_path, const char **shards,
                                        int n_shards, const qi_st_set *s, qi_error *err) {
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        const char **hit = bsearch(&item->valuestring, shards, (size_t)n_shards, sizeof *shards, cmp_str_ptr);
        const qi_st_file *shard = s->files[hit - shards];
        if (!qi_st_file_find(shard, item->string))
            return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' is listed for shard %s, which does not contain it",
                           index_path, item->string, shard->path);
    }
    return QI_OK;
}

/* shard -> index: no shard holds a tensor the index does not list (names
 * sorted; s's index built). */
static qi_status check_shards_listed(const qi_st_set *s, const char **names, int n_names, const char *index_path,
                                     qi_error *err) {
    for (int i = 0; i < s->n_tensors; i++) {
        const char *name = s->index[i]->name;
        if (!bsearch(&name, names, (size_t)n_names, sizeof *names, cmp_str_ptr))
            return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' in shard %s is not listed in the index", index_path,
                           name, s->index[i]->file->path);
    }
    return QI_OK;
}

/* Opens every shard an index names (each once) and checks the index and the
 * shards agree both ways. */
static qi_status open_index(const char *dir, const char *index_path, qi_st_set **out,
                            qi_error *err) {
    cJSON *root;
    qi_status st = qi_json_load(index_path, &root, err);
    if (st != QI_OK) return st;
    const cJSON *map =
        cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    int n_names = cJSON_GetArraySize(map);
    if (!cJSON_IsObject(map) || n_names == 0) {
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: expected an object with a non-empty \"weight_map\" (tensor name -> "
                       "shard file)",
                       index_path);
    }

    /* names[i] = tensor name, shards[i] = its shard file name (both into root) */
    const char **names = malloc(sizeof *names * (size_t)n_names);
    const char **shards = malloc(sizeof *shards * (size_t)n_names);
    qi_st_set *s = NULL;
    int n_shards = 0;
    if (!names || !shards) st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", index_path);
    if (st == QI_OK) st = read_weight_map(map, index_path, names, shards, err);
    if (st == QI_OK) st = check_listed_once(names, n_names, index_path, err);
    if (st == QI_OK) st = open_shards(dir, index_path, shards, n_names, &n_shards, &s, err);
    if (st == QI_OK) st = check_listed_in_shards(map, index_path, shards, n_shards, s, err);
    if (st == QI_OK) st = set_build_index(s, err);
    if (st == QI_OK) st = check_shards_listed(s, names, n_names, index_path, err);
    free(names);
    free(shards);
    cJSON_Delete(root);
    if (st != QI_OK) {
        qi_st_set_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Neither the index nor <stem>.safetensors exists: accept exactly one
 * *.safetensors in dir, and say precisely what was found otherwise. */
static qi_status open_only_file(const char *dir, const char *stem, qi_st_set **out, qi_error *err) {
    DIR *d = opendir(dir);
    if (!d) return qi_fail(err, QI_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    char found[QI_PATH_MAX] = "", second[256] = "", pickle[256] = "";
    int n_found = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[QI_PATH_MAX];
        if (qi_path_join(path, sizeof path, dir, de->d_name) != 0 || !qi_file_exists(path))
            continue;
        if (has_suffix(de->d_name, ".safetensors")) {
            if (n_found == 0)
                snprintf(found, sizeof found, "%s", path);
            else if (n_found == 1)
                snprintf(second, sizeof second, "%s", de->d_name);
            n_found++;
        } else if (has_suffix(de->d_name, ".bin") || has_suffix(de->d_name, ".pt") ||
                   has_suffix(de->d_name, ".pth") || has_suffix(de->d_name, ".ckpt")) {
            snprintf(pickle, sizeof pickle, "%s", de->d_name);
        }
    }
    closedir(d);
    if (n_found == 1) return qi_st_set_open_file(found, out, err);
    if (n_found > 1)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no %s.safetensors.index.json or %s.safetensors, and %d other "
                       ".safetensors files (e.g. %s); cannot tell which holds the weights",
                       dir, stem, stem, n_found, second);
    if (*pickle)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: only PyTorch pickle weights found (%s); they are refused because "
                       "loading them can run code: download the .safetensors files",
                       dir, pickle);
    return qi_fail(err, QI_ERR_IO,
                   "%s: no weights: looked for %s.safetensors.index.json, %s.safetensors and any "
                   "other *.safetensors",
                   dir, stem, stem);
}

qi_status qi_st_set_open_dir(const char *dir, const char *stem, qi_st_set **out, qi_error *err) {
    *out = NULL;
    if (!dir || !stem || !*stem)
        return qi_fail(err, QI_ERR_ARG, "qi_st_set_open_dir: no dir or stem");
    if (!qi_dir_exists(dir))
        return qi_fail(err, QI_ERR_IO, "%s: no such directory (looking for %s weights)", dir, stem);
    char name[512], path[QI_PATH_MAX];
    snprintf(name, sizeof name, "%s.safetensors.index.json", stem);
    if (qi_path_join(path, sizeof path, dir, name) != 0)
        return qi_fail(err, QI_ERR_ARG, "%s: path too long", dir);
    if (qi_file_exists(path)) return open_index(dir, path, out, err);
    snprintf(name, sizeof name, "%s.safetensors", stem);
    if (qi_path_join(path, sizeof path, dir, name) != 0)
        return qi_fail(err, QI_ERR_ARG, "%s: path too long", dir);
    if (qi_file_exists(path)) return qi_st_set_open_file(path, out, err);
    return open_only_file(dir, stem, out, err);
}

const qi_st_tensor *qi_st_find(const qi_st_set *s, const char *name) {
    if (!s || !name || s->n_tensors == 0) return NULL;
    const qi_st_tensor key = {.name = name}, *kp = &key;
    const qi_st_tensor **hit =
        bsearch(&kp, s->index, (size_t)s->n_tensors, sizeof *s->index, cmp_tensor_ptr_name);
    return hit ? *hit : NULL;
}

/* "<path>" for one file, "<first shard> (+N more shards)" for a set. */
static void set_describe(const qi_st_set *s, char *buf, size_t cap) {
    if (!s || s->n_files == 0)
        snprintf(buf, cap, "(no weights)");
    else if (s->n_files == 1)
        snprintf(buf, cap, "%s", s->files[0]->path);
    else
        snprintf(buf, cap, "%s (+%d more shards)", s->files[0]->path, s->n_files - 1);
}

static qi_status get_checked(const qi_st_set *s, const char *name, int ndim, const int64_t *shape,
                             int any_dtype, const qi_st_tensor **out, qi_error *err) {
    *out = NULL;
    const qi_st_tensor *t = qi_st_find(s, name);
    if (!t) {
        char where[600];
        set_describe(s, where, sizeof where);
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' not found (wrong model or variant?)",
                       where, name ? name : "(null)");
    }
    if (!any_dtype && !is_float_dtype(t->dtype))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: tensor '%s' has dtype %s; expected a float type (F32, F16, BF16, "
                       "F8_E4M3, F8_E5M2)",
                       t->file->path, name, qi_dtype_name(t->dtype));
    if (ndim < 0 || !shape) {
        *out = t;
        return QI_OK;
    }
    int same = ndim == t->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] < 0 || shape[i] == t->shape[i];
    if (!same) {
        char want[256], got[256];
        qi_st_shape_str(ndim > QI_ST_MAX_DIMS ? QI_ST_MAX_DIMS : ndim, shape, want, sizeof want);
        qi_st_shape_str(t->ndim, t->shape, got, sizeof got);
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s': expected shape %s, found %s",
                       t->file->path, name, want, got);
    }
    *out = t;
    return QI_OK;
}

qi_status qi_st_get(const qi_st_set *s, const char *name, int ndim, const int64_t *shape,
                    const qi_st_tensor **out, qi_error *err) {
    return get_checked(s, name, ndim, shape, 0, out, err);
}

qi_status qi_st_get_any(const qi_st_set *s, const char *name, int ndim, const int64_t *shape,
                        const qi_st_tensor **out, qi_error *err) {
    return get_checked(s, name, ndim, shape, 1, out, err);
}

/* ---- writing ------------------------------------------------------------ */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string literal: quotes, backslashes and control bytes escaped. */
static void sb_put_json_string(strbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\', esc[1] = (char)*c, esc[2] = 0;
            sb_puts(b, esc);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sb_puts(b, esc);
        } else {
            sb_put(b, (const char *)c, 1);
        }
    }
    sb_puts(b, "\"");
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Orders the data like the reference writer: larger elements first (so each
 * tensor starts naturally aligned once the header is padded to 8), then by
 * name. */
static int cmp_write_order(const void *a, const void *b) {
    const qi_st_write_item *x = *(const qi_st_write_item *const *)a;
    const qi_st_write_item *y = *(const qi_st_write_item *const *)b;
    size_t sx = qi_dtype_size(x->dtype), sy = qi_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_write_name(const void *a, const void *b) {
    return strcmp((*(const qi_st_write_item *const *)a)->name,
                  (*(const qi_st_write_item *const *)b)->name);
}

/* Checks the items and computes their byte sizes. */
static qi_status check_items(const char *path, const qi_st_write_item *items, int n, size_t *nbytes,
                             qi_error *err) {
    for (int i = 0; i < n; i++) {
        const qi_st_write_item *it = &items[i];
        if (!it->name || !*it->name || strcmp(it->name, "__metadata__") == 0 ||
            utf8_bad_offset((const unsigned char *)it->name, strlen(it->name)) < strlen(it->name))
            return qi_fail(err, QI_ERR_ARG,
                           "%s: item %d: name must be non-empty UTF-8 (and not __metadata__)", path,
                           i);
        if ((unsigned)it->dtype > QI_U8) /* safetensors stores element types only */
            return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, it->name,
                           (int)it->dtype);
        if (it->ndim < 0 || it->ndim > QI_ST_MAX_DIMS)
            return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': ndim %d outside [0, %d]", path,
                           it->name, it->ndim, QI_ST_MAX_DIMS);
        uint64_t count = 1;
        for (int d = 0; d < it->ndim; d++) {
            if (it->shape[d] < 0)
                return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': negative dim %lld", path,
                               it->name, (long long)it->shape[d]);
            uint64_t dim = (uint64_t)it->shape[d];
            if (dim && count > (uint64_t)QI_ST_MAX_EXACT / dim)
                return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': too many elements", path,
                               it->name);
            count *= dim;
        }
        uint64_t bytes = count * qi_dtype_size(it->dtype);
        if (bytes > (uint64_t)QI_ST_MAX_EXACT / 2 || bytes > SIZE_MAX)
            return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': too large", path, it->name);
        if (bytes && !it->data)
            return qi_fail(err, QI_ERR_ARG, "%s: tensor '%s': no data", path, it->name);
        nbytes[i] = (size_t)bytes;
    }
    return QI_OK;
}

qi_status qi_st_write(const char *path, const qi_st_write_item *items, int n, qi_error *err) {
    if (!path || !*path) return qi_fail(err, QI_ERR_ARG, "qi_st_write: no path given");
    if (n < 0 || (n > 0 && !items))
        return qi_fail(err, QI_ERR_ARG, "%s: invalid tensor list (n = %d)", path, n);
    size_t *nbytes = malloc(sizeof *nbytes * (size_t)(n ? n : 1));
    const qi_st_write_item **order = malloc(sizeof *order * (size_t)(n ? n : 1));
    strbuf header = {0};
    qi_status st = QI_OK;
    if (!nbytes || !order) st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    if (st == QI_OK) st = check_items(path, items, n, nbytes, err);

    if (st == QI_OK) { /* each name once */
        for (int i = 0; i < n; i++) order[i] = &items[i];
        qsort(order, (size_t)n, sizeof *order, cmp_write_name);
        for (int i = 1; i < n && st == QI_OK; i++)
            if (strcmp(order[i - 1]->name, order[i]->name) == 0)
                st = qi_fail(err, QI_ERR_ARG, "%s: tensor '%s' given twice", path, order[i]->name);
        qsort(order, (size_t)n, sizeof *order, cmp_write_order);
    }

    /* header: {"__metadata__":{"format":"pt"},"name":{...},...} padded with spaces */
    if (st == QI_OK) {
        uint64_t offset = 0;
        sb_puts(&header, "{\"__metadata__\":{\"format\":\"pt\"}");
        for (int i = 0; i < n; i++) {
            const qi_st_write_item *it = order[i];
            size_t bytes = nbytes[it - items];
            char num[64];
            sb_puts(&header, ",");
            sb_put_json_string(&header, it->name);
            sb_puts(&header, ":{\"dtype\":\"");
            sb_puts(&header, qi_dtype_name(it->dtype));
            sb_puts(&header, "\",\"shape\":[");
            for (int d = 0; d < it->ndim; d++) {
                snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)it->shape[d]);
                sb_puts(&header, num);
            }
            snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                     (unsigned long long)(offset + bytes));
            sb_puts(&header, num);
            offset += bytes;
        }
        sb_puts(&header, "}");
        while (!header.oom && header.len % 8 != 0) sb_puts(&header, " ");
        if (header.oom)
            st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory building the header", path);
        else if (header.len > QI_ST_MAX_HEADER)
            st = qi_fail(err, QI_ERR_ARG, "%s: header would exceed 100 MB (%d tensors)", path, n);
    }

    /* data goes to path.tmp.XXXXXX, renamed over path only once complete */
    char *tmp = NULL;
    int fd = -1;
    if (st == QI_OK) {
        size_t tl = strlen(path) + 16;
        tmp = malloc(tl);
        if (!tmp)
            st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
        else {
            snprintf(tmp, tl, "%s.tmp.XXXXXX", path);
            fd = mkstemp(tmp);
            if (fd < 0) {
                st = qi_fail(err, QI_ERR_IO, "%s: cannot create a temporary file beside it: %s",
                             path, strerror(errno));
                free(tmp);
                tmp = NULL;
            }
        }
    }
    if (st == QI_OK) {
        unsigned char len_le[8];
        uint64_t hl = header.len;
        for (int i = 0; i < 8; i++) len_le[i] = (unsigned char)(hl >> (8 * i));
        int bad = fchmod(fd, 0644) != 0 || write_all(fd, len_le, 8) != 0 ||
                  write_all(fd, header.p, header.len) != 0;
        for (int i = 0; i < n && !bad; i++)
            bad = nbytes[order[i] - items] &&
                  write_all(fd, order[i]->data, nbytes[order[i] - items]) != 0;
        if (!bad) bad = fsync(fd) != 0;
        int write_errno = errno;
        if (close(fd) != 0 && !bad) bad = 1, write_errno = errno;
        fd = -1;
        if (bad)
            st = qi_fail(err, QI_ERR_IO, "%s: write failed: %s", path, strerror(write_errno));
        else if (rename(tmp, path) != 0)
            st = qi_fail(err, QI_ERR_IO, "%s: cannot rename the finished file into place: %s", path,
                         strerror(errno));
    }
    if (tmp && st != QI_OK) unlink(tmp);
    free(tmp);
    free(header.p);
    free(order);
    free(nbytes);
    return st;
}

/*
 * gguf.h — memory-mapped GGUF files (llama.cpp / ggml containers): metadata
 * key/values and tensors, validated strictly before anything is trusted.
 *
 *     qi_gguf_file *f;
 *     if (qi_gguf_open("qwen-image-Q4_K_M.gguf", &f, &err) != QI_OK) return err;
 *     const char *arch; size_t len;
 *     qi_gguf_get_string(f, "general.architecture", &arch, &len, &err); // not NUL-terminated
 *     const qi_gguf_tensor *t = qi_gguf_find(f, "img_in.weight");     // shape [3072, 64]
 *     float *w = malloc(...);  qi_to_f32(w, t->data, t->dtype, numel);
 *     qi_gguf_close(f);
 *
 * Layout and rules: spec vae-and-formats.md §B.7.1 (the list of checks is in
 * gguf.c). Tensor shapes are given outermost first (PyTorch order), i.e. GGUF's
 * ne[] reversed; quantisation blocks run along the last dim. Tensor data points
 * into the read-only mapping and is valid until the file is closed; it is
 * aligned to the file's `general.alignment` (32 by default) from the start of
 * the file, which may be less than an element's natural alignment (alignment
 * 1, 2): read through memcpy or the type traits.
 *
 * Strings in metadata are UTF-8 bytes with a length, NOT NUL-terminated; they
 * point into the mapping. Keys and tensor names are NUL-terminated copies.
 */
#ifndef QI_GGUF_H
#define QI_GGUF_H

#include "base/base.h"

#define QI_GGUF_MAX_DIMS 5 /* ggml has 4; 5-D conv weights exist (spec §B.7.1) */

/* Metadata value types, with their GGUF ids. */
typedef enum qi_gguf_type {
    QI_GGUF_U8 = 0,
    QI_GGUF_I8 = 1,
    QI_GGUF_U16 = 2,
    QI_GGUF_I16 = 3,
    QI_GGUF_U32 = 4,
    QI_GGUF_I32 = 5,
    QI_GGUF_F32 = 6,
    QI_GGUF_BOOL = 7,
    QI_GGUF_STRING = 8,
    QI_GGUF_ARRAY = 9,
    QI_GGUF_U64 = 10,
    QI_GGUF_I64 = 11,
    QI_GGUF_F64 = 12,
    QI_GGUF_TYPE_COUNT
} qi_gguf_type;

typedef struct qi_gguf_tensor {
    const char *name;                 /* NUL-terminated, owned by the file */
    qi_dtype dtype;                   /* element or block type (types.h) */
    int ndim;                         /* 0 (scalar) .. QI_GGUF_MAX_DIMS */
    int64_t shape[QI_GGUF_MAX_DIMS];  /* outermost first: GGUF ne[] reversed */
    const void *data;                 /* into the mapping */
    size_t nbytes;                    /* storage bytes (qi_shape_bytes) */
} qi_gguf_tensor;

typedef struct qi_gguf_file qi_gguf_file;

/* An array value (or an element of an array of arrays). A small value to
 * pass around; valid while its file is open. */
typedef struct qi_gguf_array {
    const qi_gguf_file *file;
    const char *key;    /* the key it belongs to (messages) */
    qi_gguf_type type;  /* element type */
    uint64_t count;     /* number of elements */
    size_t data;        /* internal: file offset of element 0 */
    size_t index;       /* internal: first entry of the file's string / array table */
} qi_gguf_array;

/* Maps and validates one file. */
qi_status qi_gguf_open(const char *path, qi_gguf_file **out, qi_error *err);
void qi_gguf_close(qi_gguf_file *f);
/* The same checks on a file image already in memory (the fuzz targets give
 * their exact-size buffers, so a read one byte past the end is an ASan
 * error, where a mapping's page slack would hide it). `name` stands for the
 * path in messages. The bytes are not copied: they must stay valid and
 * unchanged until qi_gguf_close, which leaves them alone. */
qi_status qi_gguf_open_memory(const char *name, const void *data, size_t size, qi_gguf_file **out,
                              qi_error *err);
const char *qi_gguf_path(const qi_gguf_file *f);
uint32_t qi_gguf_version(const qi_gguf_file *f);   /* 2 or 3 */
uint64_t qi_gguf_alignment(const qi_gguf_file *f); /* general.alignment, or 32 */

/* Tensors, sorted by name. */
int qi_gguf_tensor_count(const qi_gguf_file *f);
const qi_gguf_tensor *qi_gguf_tensor_at(const qi_gguf_file *f, int i);
const qi_gguf_tensor *qi_gguf_find(const qi_gguf_file *f, const char *name);

/* Metadata keys, sorted; the type of one (-1 when absent). */
int qi_gguf_key_count(const qi_gguf_file *f);
const char *qi_gguf_key_at(const qi_gguf_file *f, int i);
int qi_gguf_has_key(const qi_gguf_file *f, const char *key);
int qi_gguf_key_type(const qi_gguf_file *f, const char *key);
const char *qi_gguf_type_name(int type); /* "U32", "STRING"; "?" if unknown */

/* Typed getters: a missing key or another type is an error naming the file,
 * the key, the type found and the type wanted. get_int takes any integer
 * type (a U64 above INT64_MAX is an error); get_float any number type. */
qi_status qi_gguf_get_string(const qi_gguf_file *f, const char *key, const char **s, size_t *len,
                             qi_error *err);
qi_status qi_gguf_get_int(const qi_gguf_file *f, const char *key, int64_t *out, qi_error *err);
qi_status qi_gguf_get_float(const qi_gguf_file *f, const char *key, double *out, qi_error *err);
qi_status qi_gguf_get_bool(const qi_gguf_file *f, const char *key, int *out, qi_error *err);
qi_status qi_gguf_get_array(const qi_gguf_file *f, const char *key, qi_gguf_array *out,
                            qi_error *err);

/* Element i of an array, converted as the getters above convert; an index
 * past the end or another element type is an error. Strings: pointer and
 * length into the mapping (O(1): offsets are indexed at open). */
qi_status qi_gguf_array_string(const qi_gguf_array *a, uint64_t i, const char **s, size_t *len,
                               qi_error *err);
qi_status qi_gguf_array_int(const qi_gguf_array *a, uint64_t i, int64_t *out, qi_error *err);
qi_status qi_gguf_array_float(const qi_gguf_array *a, uint64_t i, double *out, qi_error *err);
qi_status qi_gguf_array_array(const qi_gguf_array *a, uint64_t i, qi_gguf_array *out,
                              qi_error *err);

#endif

/*
 * safetensors.h — memory-mapped safetensors files and sharded sets of them.
 *
 * A file is mapped read-only and never copied: each tensor is a name, a
 * dtype, a shape and a pointer into the mapping. Headers are validated
 * strictly before anything is trusted (see safetensors.c for the list), so a
 * truncated or lying file is an error that names the file and the tensor,
 * never a crash.
 *
 * A qi_st_set is what model code uses: one or more files (the shards listed by
 * a `*.safetensors.index.json`, or a single file) behind one name lookup.
 */
#ifndef QI_SAFETENSORS_H
#define QI_SAFETENSORS_H

#include "base/base.h"

#define QI_ST_MAX_DIMS 8

typedef struct qi_st_tensor {
    const char *name;          /* NUL-terminated, owned by the file */
    qi_dtype dtype;
    int ndim;
    int64_t shape[QI_ST_MAX_DIMS];
    const void *data;          /* into the mapping */
    size_t nbytes;
    const struct qi_st_file *file;
} qi_st_tensor;

typedef struct qi_st_file {
    char *path;
    void *map;            /* the whole file, PROT_READ */
    size_t size;
    int n_tensors;
    qi_st_tensor *tensors; /* sorted by name */
    char *metadata_json;   /* the "__metadata__" object as JSON text, or NULL */
    int borrowed;          /* map is the caller's memory (qi_st_open_memory): not unmapped */
} qi_st_file;

/* Maps and validates one file. */
qi_status qi_st_open(const char *path, qi_st_file **out, qi_error *err);
void qi_st_close(qi_st_file *f);

/* The same checks on a file image already in memory (the fuzz targets give
 * their exact-size buffers, so a read one byte past the end is an ASan
 * error, where a mapping's page slack would hide it). `name` stands for the
 * path in messages. The bytes are not copied: they must stay valid and
 * unchanged until qi_st_close, which leaves them alone. */
qi_status qi_st_open_memory(const char *name, const void *data, size_t size, qi_st_file **out,
                            qi_error *err);
const qi_st_tensor *qi_st_file_find(const qi_st_file *f, const char *name);

typedef struct qi_st_set {
    int n_files;
    qi_st_file **files;
    int n_tensors;
    const qi_st_tensor **index; /* all tensors of all files, sorted by name */
} qi_st_set;

/* Opens a component folder's weights: `dir/<stem>.safetensors.index.json`
 * (all shards it names) if present, else `dir/<stem>.safetensors`; stem is
 * e.g. "diffusion_pytorch_model" or "model". If neither exists, any single
 * `*.safetensors` in dir is accepted. A tensor present in two shards is an
 * error. */
qi_status qi_st_set_open_dir(const char *dir, const char *stem, qi_st_set **out, qi_error *err);
/* One file as a set (single-file checkpoints, LoRAs). */
qi_status qi_st_set_open_file(const char *path, qi_st_set **out, qi_error *err);
/* One in-memory image as a set (qi_st_open_memory's rules). */
qi_status qi_st_set_open_memory(const char *name, const void *data, size_t size, qi_st_set **out,
                                qi_error *err);
void qi_st_set_close(qi_st_set *s);
const qi_st_tensor *qi_st_find(const qi_st_set *s, const char *name);

/* Looks a tensor up and checks its shape (ndim and every dim); the error names
 * the tensor, the file, the expected and the found shape. dtype must be a
 * float type (F32/F16/BF16/F8_*) unless allow_any_dtype. */
qi_status qi_st_get(const qi_st_set *s, const char *name, int ndim, const int64_t *shape,
                    const qi_st_tensor **out, qi_error *err);

/* Writes tensors to a new safetensors file (used by `encode`, --save-latents and
 * tests). Data is written as given; writes to a temporary name then renames. */
typedef struct qi_st_write_item {
    const char *name;
    qi_dtype dtype;
    int ndim;
    int64_t shape[QI_ST_MAX_DIMS];
    const void *data;
} qi_st_write_item;

qi_status qi_st_write(const char *path, const qi_st_write_item *items, int n, qi_error *err);

/* Like qi_st_get, for tensors of any dtype (integer tables, U8 masks). For
 * both: ndim < 0 or shape NULL skips the shape check, and an expected dim < 0
 * matches any size. */
qi_status qi_st_get_any(const qi_st_set *s, const char *name, int ndim, const int64_t *shape,
                        const qi_st_tensor **out, qi_error *err);

/* Formats a shape as "[3072, 64]" into buf (truncated to cap); returns buf. */
char *qi_st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

#endif

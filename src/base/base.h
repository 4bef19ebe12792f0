/*
 * base.h — what every file of the engine shares: status codes, the error
 * buffer, element types and their conversions, small helpers.
 *
 * Errors: every fallible function takes a `qi_error *` and returns a
 * `qi_status`. On failure it writes one line into the error that names the
 * file / tensor / argument and what was expected, so the caller can print it
 * unchanged. Nothing here prints or exits.
 */
#ifndef QI_BASE_H
#define QI_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "qwen_image.h" /* qi_status and its values */

typedef struct qi_error {
    char msg[1024];
} qi_error;

/* Writes a formatted message into err (if not NULL) and returns status. A
 * message longer than err->msg is cut in the middle (" [...] "), keeping its
 * head and its end, where the reason is. */
qi_status qi_fail(qi_error *err, qi_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message: "context: old message". Returns status. */
qi_status qi_fail_ctx(qi_error *err, qi_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A configuration integer (a config.json key, a GGUF metadata value, a size
 * derived from shapes) checked against [lo, hi] before any size is computed
 * from it, so no product of such values overflows: QI_OK, or QI_ERR_FORMAT
 * with "<file>: <key> is <v>; allowed <lo>..<hi> (<why>)". */
qi_status qi_check_range(const char *file, const char *key, int64_t v, int64_t lo, int64_t hi, const char *why,
                         qi_error *err);

/* ---- element types ------------------------------------------------------ */

/* Storage types. Element types first; then the GGUF (ggml) block types, whose
 * elements come in blocks of 32 or 256 sharing scales: their sizes are per
 * block, never per element (use the type traits, src/base/types.h, for every
 * size computation). */
typedef enum qi_dtype {
    QI_F32 = 0,
    QI_F16,
    QI_BF16,
    QI_F8_E4M3,
    QI_F8_E5M2,
    QI_I32,
    QI_I64,
    QI_U8,
    QI_Q4_0,
    QI_Q4_1,
    QI_Q5_0,
    QI_Q5_1,
    QI_Q8_0,
    QI_Q2_K,
    QI_Q3_K,
    QI_Q4_K,
    QI_Q5_K,
    QI_Q6_K,
    QI_DTYPE_COUNT
} qi_dtype;

/* Implemented in types.c, beside the type traits (types.h). */
size_t qi_dtype_size(qi_dtype t);      /* element size; 0 for block types */
const char *qi_dtype_name(qi_dtype t); /* the safetensors spelling: "BF16"; "Q4_K" */

static inline float qi_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t qi_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float qi_f16_to_f32(uint16_t h);
uint16_t qi_f32_to_f16(float f);
float qi_f8e4m3_to_f32(uint8_t v);
float qi_f8e5m2_to_f32(uint8_t v);

/* Converts n elements of type `t` at src into float32 at dst. Float and
 * block types (n a whole number of blocks); returns 0 on success, -1 for an
 * integer type or an n that is not a whole number of blocks. */
int qi_to_f32(float *dst, const void *src, qi_dtype t, size_t n);

/* ---- small helpers ----------------------------------------------------- */

double qi_now_s(void); /* monotonic seconds */

/* Formats one line and hands it to a log callback; nothing when log is NULL. */
void qi_log_linef(qi_log_fn log, void *user, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Reads a whole (small, text) file into a NUL-terminated heap buffer. */
qi_status qi_read_text_file(const char *path, char **out, size_t *len, qi_error *err);

/* Maps a whole regular file read-only (weights: safetensors, GGUF). An empty
 * file maps to a pointer to one zero byte with *size 0, so parsers report it
 * as too short in their own words. Errors name the path: cannot open, not a
 * regular file, too large to map, mmap failed. Release with qi_unmap_file. */
qi_status qi_map_file(const char *path, void **map, size_t *size, qi_error *err);
void qi_unmap_file(void *map, size_t size);
/* Copies n bytes at src, which lies inside a mapping of qi_map_file, into dst
 * by pread of the file, without touching the mapping (no page faults, no page
 * tables: several times faster than a memcpy from a first-touched mapping
 * when the file is in the page cache). The same bytes as memcpy(dst, src, n).
 * 1: done; 0: src is not inside such a mapping, or the read failed — the
 * caller copies from src itself. Safe from several threads at once. */
int qi_mapped_read(void *dst, const void *src, size_t n);

/* path join into a caller buffer; returns 0 or -1 if it does not fit. */
int qi_path_join(char *out, size_t cap, const char *dir, const char *name);

/* The host memory a run may use, bytes: the machine's physical memory, or
 * less when `ulimit -v` (RLIMIT_AS) leaves less address space free. The
 * default CPU arena is sized from it, and requests are checked against it
 * before any work. */
uint64_t qi_host_memory_bytes(void);

int qi_file_exists(const char *path);
int qi_dir_exists(const char *path);

#define QI_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif

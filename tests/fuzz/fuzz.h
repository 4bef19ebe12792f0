/*
 * fuzz.h — what every fuzz target in tests/fuzz shares: the libFuzzer entry
 * points, a scratch folder for the loaders that only take paths, the split
 * of one input into several files, and the checks every target applies to
 * an error (a message that is there and names what it is about).
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput (and may define
 * LLVMFuzzerInitialize). Built two ways (tests/fuzz/README.md):
 *   - QI_FUZZ=ON (clang): linked with libFuzzer, -fsanitize=fuzzer,address,undefined;
 *   - any build: linked with replay.c, a main() that runs every file of the
 *     folders it is given once (the committed corpus as a ctest: the
 *     regression inputs keep failing loudly without clang).
 *
 * Loaders with an in-memory entry (qi_st_open_memory, qi_gguf_open_memory,
 * qi_json_parse, qi_scheduler_config_parse) get the input buffer itself:
 * libFuzzer's copy is exactly `size` bytes, so a read one past the end is an
 * ASan error (a mapped file's page slack would hide it). The others (the
 * tokenizer folder, model_index.json, a LoRA file, PNG/JPEG readers) get a
 * file in the scratch folder — their real entry point, path and all;
 * /dev/shm keeps the write in memory.
 */
#ifndef QI_FUZZ_H
#define QI_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* The process's scratch folder (/dev/shm/qi_fuzz_<pid>_XXXXXX, else under
 * $TMPDIR or /tmp), made on first use and removed at exit; those of fuzz
 * processes that died (a crash skips the exit) are removed on first use. */
const char *fuzz_dir(void);

/* Writes n bytes to <fuzz_dir>/<name> (sub-folders must exist: fuzz_mkdir);
 * the path goes to path[cap]. Aborts when the write fails: a full /dev/shm
 * is the harness's failure, not a finding. */
void fuzz_put(const char *name, const void *data, size_t n, char *path, size_t cap);
/* Makes <fuzz_dir>/<name> (a folder; fine when it exists). */
void fuzz_mkdir(const char *name);
/* Removes <fuzz_dir>/<name> if it is there (a file). */
void fuzz_unlink(const char *name);

/* One part of an input cut at FUZZ_SEP lines. */
typedef struct fuzz_part {
    const uint8_t *p;
    size_t n;
} fuzz_part;
#define FUZZ_SEP "\n--8<--\n"
/* Cuts data at each FUZZ_SEP into at most max parts (the last keeps the
 * rest, separators and all); parts not present are empty. Returns the count
 * found. */
int fuzz_split(const uint8_t *data, size_t n, fuzz_part *parts, int max);

/* A NUL-terminated malloc'd copy of p[0..n) (aborts when out of memory). */
char *fuzz_strndup(const void *p, size_t n);

/* Every failed call must say why: a non-empty message that fits its buffer
 * (and, when `name` is not NULL, names it). Aborts otherwise. */
void fuzz_check_error(qi_status st, const qi_error *err, const char *name);

/* A finding the sanitizers cannot see (an oracle failed): prints and aborts,
 * which libFuzzer records as a crash with the input. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Touches every byte of p[0..n): ASan reports one outside its object. */
void fuzz_touch(const void *p, size_t n);

#endif

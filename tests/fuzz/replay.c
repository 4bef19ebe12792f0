/*
 * replay.c — main() for a fuzz target built without libFuzzer: runs every
 * file of the folders (or the files) on the command line through
 * LLVMFuzzerTestOneInput once, in name order. Used by ctest to replay the
 * committed corpus (seeds and every crash found, tests/fuzz/corpus/<target>)
 * in the release and ASan builds; a finding aborts (sanitizer or oracle), so
 * the test fails. Prints how many inputs ran.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    return 0;
}

/* libFuzzer's -malloc_limit_mb for the replay: one allocation over
 * REPLAY_MALLOC_LIMIT is a finding (a small input must not make the parsers,
 * libpng included, ask for a gigabyte). Replaces malloc for the whole
 * process, shared libraries included, in builds without ASan (which has its
 * own allocator; scripts/fuzz.sh passes the same limit to libFuzzer). */
#define REPLAY_MALLOC_LIMIT ((size_t)1 << 30)
#if !defined(__SANITIZE_ADDRESS__) && defined(__GLIBC__)
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);

static void over_limit(const char *what, size_t n) {
    char msg[128];
    int len = snprintf(msg, sizeof msg, "replay: %s of %zu bytes, over the %zu-byte limit\n", what, n,
                       REPLAY_MALLOC_LIMIT);
    if (write(2, msg, (size_t)len) < 0) abort();
    abort();
}
void *malloc(size_t n) {
    if (n > REPLAY_MALLOC_LIMIT) over_limit("malloc", n);
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size) {
    if (size && n > REPLAY_MALLOC_LIMIT / size) over_limit("calloc", n * size);
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
    if (n > REPLAY_MALLOC_LIMIT) over_limit("realloc", n);
    return __libc_realloc(p, n);
}
#endif

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    /* exactly n bytes, as libFuzzer gives: a read past the end is an ASan error */
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    size_t got = buf && n > 0 ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || (long)got != n) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int ran = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            fprintf(stderr, "replay: %s: no such file or folder\n", argv[i]);
            bad++;
            continue;
        }
        if (!S_ISDIR(sb.st_mode)) {
            bad += run_file(argv[i]) != 0;
            ran++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, by_name);
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
            if (names[k]->d_name[0] != '.' && stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
                bad += run_file(path) != 0;
                ran++;
            }
            free(names[k]);
        }
        if (n >= 0) free(names);
    }
    printf("replayed %d inputs, %d unreadable\n", ran, bad);
    return bad || ran == 0 ? 1 : 0;
}

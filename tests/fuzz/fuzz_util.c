/*
 * fuzz_util.c — the helpers of fuzz.h (scratch folder, input splitting,
 * error checks). Harness code: it aborts where a library would return.
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char scratch[256];

void fuzz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz: oracle failed: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* Removes the files and folders below dir, then dir (no links followed:
 * everything there is the harness's own). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char child[1024];
        snprintf(child, sizeof child, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (lstat(child, &sb) == 0 && S_ISDIR(sb.st_mode)) remove_tree(child);
        else unlink(child);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static void remove_scratch(void) {
    if (scratch[0]) remove_tree(scratch);
}

/* Removes the scratch folders of fuzz processes that are gone: a crash
 * (abort, a sanitizer report) skips the atexit clean-up. */
static void remove_stale(const char *base) {
    DIR *d = opendir(base);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int pid = 0, used = 0;
        if (sscanf(de->d_name, "qi_fuzz_%d_%n", &pid, &used) != 1 || used == 0 || pid <= 0) continue;
        if (kill(pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", base, de->d_name);
        remove_tree(path);
    }
    if (d) closedir(d);
}

const char *fuzz_dir(void) {
    if (scratch[0]) return scratch;
    struct stat sb;
    const char *base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0
                           ? "/dev/shm"
                           : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    remove_stale(base);
    snprintf(scratch, sizeof scratch, "%s/qi_fuzz_%d_XXXXXX", base, (int)getpid());
    if (!mkdtemp(scratch)) {
        fprintf(stderr, "fuzz: cannot make %s: %s\n", scratch, strerror(errno));
        abort();
    }
    atexit(remove_scratch);
    return scratch;
}

void fuzz_put(const char *name, const void *data, size_t n, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
}

void fuzz_mkdir(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz: cannot make %s: %s\n", path, strerror(errno));
        abort();
    }
}

void fuzz_unlink(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    unlink(path);
}

int fuzz_split(const uint8_t *data, size_t n, fuzz_part *parts, int max) {
    static const char sep[] = FUZZ_SEP;
    const size_t k = sizeof sep - 1;
    int found = 0;
    for (int i = 0; i < max; i++) parts[i] = (fuzz_part){(const uint8_t *)"", 0};
    size_t start = 0;
    while (found < max) {
        const uint8_t *hit = found == max - 1 ? NULL : memmem(data + start, n - start, sep, k);
        size_t end = hit ? (size_t)(hit - data) : n;
        parts[found++] = (fuzz_part){data + start, end - start};
        if (!hit) break;
        start = end + k;
    }
    return found;
}

char *fuzz_strndup(const void *p, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, p, n);
    s[n] = 0;
    return s;
}

void fuzz_check_error(qi_status st, const qi_error *err, const char *name) {
    if (st == QI_OK) fuzz_fail("fuzz_check_error called on success");
    size_t len = strnlen(err->msg, sizeof err->msg);
    if (len == 0 || len == sizeof err->msg) fuzz_fail("status %d with an empty or unterminated message", st);
    if (name && !strstr(err->msg, name)) fuzz_fail("status %d: message does not name %s: %s", st, name, err->msg);
}

void fuzz_touch(const void *p, size_t n) {
    const volatile unsigned char *b = p;
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++) acc ^= b[i];
    (void)acc;
}

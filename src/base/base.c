/*
 * base.c — error formatting and small file helpers. The dtype table and the
 * conversions live in types.c.
 */
#define _POSIX_C_SOURCE 200809L
#include "base/base.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

/* The start of the UTF-8 character holding byte i of s (never before 0). */
static size_t char_start(const char *s, size_t i) {
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

/* text[0..n) into err->msg. A text longer than the buffer is cut in the
 * middle, never at the end: its head names what failed (the file, the
 * tensor) and its end says why (a context prefix comes first, the reason
 * last), so both survive; the cut falls between UTF-8 characters. */
static void set_message(qi_error *err, const char *text, size_t n) {
    static const char mark[] = " [...] ";
    size_t cap = sizeof err->msg - 1;
    if (n <= cap) {
        memmove(err->msg, text, n);
        err->msg[n] = 0;
        return;
    }
    size_t head = char_start(text, (cap - (sizeof mark - 1)) * 2 / 5);
    size_t tail = char_start(text, n - (cap - (sizeof mark - 1) - head));
    if (n - tail > cap - (sizeof mark - 1) - head) /* char_start moved back: step over that character */
        for (tail++; tail < n && ((unsigned char)text[tail] & 0xC0) == 0x80;) tail++;
    char out[sizeof err->msg];
    memcpy(out, text, head);
    memcpy(out + head, mark, sizeof mark - 1);
    memcpy(out + head + sizeof mark - 1, text + tail, n - tail);
    out[head + sizeof mark - 1 + (n - tail)] = 0;
    memcpy(err->msg, out, sizeof out);
}

/* Formats fmt and then `suffix` (may be NULL) into err: on the stack when
 * the text fits there, as every ordinary message does (no allocation, so
 * reporting an out-of-memory failure does not need memory), else on the heap;
 * when even that fails, what the stack holds is kept. */
static void vformat(qi_error *err, const char *suffix, const char *fmt, va_list ap) {
    char small[4096];
    va_list ap2;
    va_copy(ap2, ap);
    int r = vsnprintf(small, sizeof small, fmt, ap);
    size_t n = r < 0 ? 0 : (size_t)r, slen = suffix ? strlen(suffix) : 0;
    char *text = small, *big = NULL;
    size_t len = n + slen;
    if (len < sizeof small) {
        memcpy(small + n, suffix ? suffix : "", slen + 1);
    } else if ((big = malloc(len + 1)) != NULL) {
        vsnprintf(big, n + 1, fmt, ap2);
        memcpy(big + n, suffix ? suffix : "", slen + 1);
        text = big;
    } else { /* the head of the text and the end of the suffix (the reason) */
        size_t keep = slen < sizeof small / 2 ? slen : sizeof small / 2;
        n = n < sizeof small - 1 - keep ? n : sizeof small - 1 - keep;
        memcpy(small + n, suffix + slen - keep, keep + 1);
        len = n + keep;
    }
    va_end(ap2);
    set_message(err, text, len);
    free(big);
}

qi_status qi_fail(qi_error *err, qi_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vformat(err, NULL, fmt, ap);
        va_end(ap);
    }
    return status;
}

qi_status qi_fail_ctx(qi_error *err, qi_status status, const char *fmt, ...) {
    if (err) {
        char old[sizeof err->msg + 2];
        size_t n = strnlen(err->msg, sizeof err->msg - 1);
        old[0] = ':';
        old[1] = ' ';
        memcpy(old + 2, err->msg, n);
        old[n + 2] = 0;
        va_list ap;
        va_start(ap, fmt);
        vformat(err, old, fmt, ap);
        va_end(ap);
    }
    return status;
}

qi_status qi_check_range(const char *file, const char *key, int64_t v, int64_t lo, int64_t hi, const char *why,
                         qi_error *err) {
    if (v >= lo && v <= hi) return QI_OK;
    return qi_fail(err, QI_ERR_FORMAT, "%s: %s is %lld; allowed %lld..%lld (%s)", file, key, (long long)v,
                   (long long)lo, (long long)hi, why);
}

const char *qi_status_name(qi_status s) {
    switch (s) {
    case QI_OK: return "ok";
    case QI_ERR_ARG: return "invalid argument";
    case QI_ERR_IO: return "i/o error";
    case QI_ERR_FORMAT: return "bad file format";
    case QI_ERR_NOMEM: return "out of memory";
    case QI_ERR_UNSUPPORTED: return "unsupported";
    case QI_ERR_BACKEND: return "backend error";
    case QI_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

void qi_log_linef(qi_log_fn log, void *user, const char *fmt, ...) {
    if (!log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log(user, line);
}

double qi_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qi_status qi_read_text_file(const char *path, char **out, size_t *len, qi_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qi_fail(err, QI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return qi_fail(err, QI_ERR_IO, "%s: cannot seek (is it a regular file?)", path);
    }
    long size = ftell(f);
    if (size < 0 || size > (1L << 30)) {
        fclose(f);
        return qi_fail(err, QI_ERR_IO, "%s: unreadable size or larger than 1 GiB", path);
    }
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory reading %ld bytes", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) {
        free(buf);
        return qi_fail(err, QI_ERR_IO, "%s: short read (%zu of %ld bytes)", path, got, size);
    }
    buf[size] = 0;
    *out = buf;
    if (len) *len = (size_t)size;
    return QI_OK;
}

int qi_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int sep = dl > 0 && dir[dl - 1] != '/';
    int n = snprintf(out, cap, "%s%s%s", dir, sep ? "/" : "", name);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* The process's mapped address space now, bytes (/proc/self/statm's first
 * field); 0 when unknown. */
static uint64_t address_space_used(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t qi_host_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t phys = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : (uint64_t)16 << 30;
    struct rlimit rl; /* `ulimit -v`: what is still free under it */
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        uint64_t used = address_space_used(), lim = (uint64_t)rl.rlim_cur;
        uint64_t left = lim > used ? lim - used : 0;
        if (phys > left) phys = left;
    }
    return phys;
}

int qi_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int qi_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The files mapped by qi_map_file, with a descriptor kept open for each, so
 * that qi_mapped_read can read a range of a mapping with pread instead of
 * touching it: a first touch of a mapping costs a page fault per few pages
 * and the page tables' set-up and teardown, a pread of the page cache only
 * the copy (dev/load_read_bench.c: 1.9 GB/s against 11.5 GB/s per thread).
 * The table is guarded by its mutex; reads run outside it (the caller keeps
 * the mapping alive while it reads, as it must for a memcpy). */
typedef struct mapped_file {
    const char *map;
    size_t size;
    int fd;
} mapped_file;

/* A fixed table, not a heap one: no allocation that the first open makes and
 * later ones do not (test_oom counts the calls of each run); a model folder
 * maps ~20 files, so 256 is room for several models and their LoRAs. */
#define MAPPED_MAX 256

static pthread_mutex_t mapped_mu = PTHREAD_MUTEX_INITIALIZER;
static mapped_file mapped[MAPPED_MAX];
static int n_mapped;

/* Adds a mapping; 0 when the table is full (the mapping still works,
 * qi_mapped_read just does not know it). */
static int mapped_add(const void *map, size_t size, int fd) {
    pthread_mutex_lock(&mapped_mu);
    int ok = n_mapped < MAPPED_MAX;
    if (ok) mapped[n_mapped++] = (mapped_file){(const char *)map, size, fd};
    pthread_mutex_unlock(&mapped_mu);
    return ok;
}

/* Removes a mapping, closing its descriptor (nothing if it is not there). */
static void mapped_remove(const void *map) {
    pthread_mutex_lock(&mapped_mu);
    for (int i = 0; i < n_mapped; i++)
        if (mapped[i].map == (const char *)map) {
            close(mapped[i].fd);
            mapped[i] = mapped[--n_mapped];
            break;
        }
    pthread_mutex_unlock(&mapped_mu);
}

int qi_mapped_read(void *dst, const void *src, size_t n) {
    uintptr_t p = (uintptr_t)src;
    int fd = -1;
    off_t off = 0;
    pthread_mutex_lock(&mapped_mu);
    for (int i = 0; i < n_mapped; i++) {
        uintptr_t base = (uintptr_t)mapped[i].map;
        if (p >= base && n <= mapped[i].size && p - base <= mapped[i].size - n) {
            fd = mapped[i].fd;
            off = (off_t)(p - base);
            break;
        }
    }
    pthread_mutex_unlock(&mapped_mu);
    if (fd < 0) return 0;
    for (size_t done = 0; done < n;) {
        ssize_t r = pread(fd, (char *)dst + done, n - done, off + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0; /* an error or a file cut short since: the caller copies from the mapping */
        done += (size_t)r;
    }
    return 1;
}

qi_status qi_map_file(const char *path, void **map, size_t *size, qi_error *err) {
    static unsigned char empty[1];
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qi_fail(err, QI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return qi_fail(err, QI_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return qi_fail(err, QI_ERR_UNSUPPORTED, "%s: too large to map on this system", path);
    }
    void *m = empty; /* mmap refuses 0 bytes */
    int map_errno = 0;
    if (sb.st_size > 0) {
        m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
        map_errno = errno;
    }
    /* the mapping keeps the file alive; the descriptor stays for qi_mapped_read */
    if (m == MAP_FAILED || sb.st_size == 0 || !mapped_add(m, (size_t)sb.st_size, fd)) close(fd);
    if (m == MAP_FAILED)
        return qi_fail(err, QI_ERR_IO, "%s: cannot mmap %zu bytes: %s", path, (size_t)sb.st_size,
                       strerror(map_errno));
    *map = m;
    *size = (size_t)sb.st_size;
    return QI_OK;
}

void qi_unmap_file(void *map, size_t size) {
    if (map && size > 0) {
        mapped_remove(map);
        munmap(map, size);
    }
}

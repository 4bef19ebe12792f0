/*
 * oom_hook.c — the allocation counter behind oom_hook.h. The linker's --wrap
 * makes every call to malloc & co. in the program's own objects (the engine's
 * static library included) call __wrap_malloc instead, which counts it and
 * either fails it or passes it to the real allocator (__real_malloc: libc's,
 * or AddressSanitizer's in a sanitizer build, which then still sees every
 * block). Counters are atomic: ops may allocate on OpenMP threads.
 */
#define _GNU_SOURCE
#include "oom_hook.h"

#include <errno.h>
#include <execinfo.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **out, size_t align, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

static atomic_long counted, fail_at, fired;

void qi_oom_arm(long k) {
    atomic_store(&fail_at, k);
    atomic_store(&fired, 0);
    atomic_store(&counted, 0);
}

long qi_oom_calls(void) { return atomic_load(&counted); }
int qi_oom_fired(void) { return atomic_load(&fired) != 0; }

/* Counts one call; nonzero when this one must fail. */
static int fail_this(void) {
    long k = atomic_fetch_add(&counted, 1) + 1;
    if (k != atomic_load(&fail_at)) return 0;
    atomic_store(&fired, 1);
    if (getenv("QI_OOM_TRACE")) { /* where the failing call came from (to chase one k) */
        void *frames[16];
        backtrace_symbols_fd(frames, backtrace(frames, 16), 2);
    }
    errno = ENOMEM;
    return 1;
}

void *__wrap_malloc(size_t n) { return fail_this() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return fail_this() ? NULL : __real_calloc(n, size); }
/* A failed realloc leaves the old block alone, as the real one does. */
void *__wrap_realloc(void *p, size_t n) { return fail_this() ? NULL : __real_realloc(p, n); }
int __wrap_posix_memalign(void **out, size_t align, size_t n) {
    return fail_this() ? ENOMEM : __real_posix_memalign(out, align, n);
}
void *__wrap_aligned_alloc(size_t align, size_t n) { return fail_this() ? NULL : __real_aligned_alloc(align, n); }
char *__wrap_strdup(const char *s) { return fail_this() ? NULL : __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { return fail_this() ? NULL : __real_strndup(s, n); }

/*
 * oom_hook.h — allocation-failure injection for tests (SQLite's "fail the
 * Nth malloc", done at link time). A test program linked with oom_hook.c and
 * `--wrap=malloc,calloc,realloc,posix_memalign,aligned_alloc,strdup,strndup`
 * sends every allocation of the library's code (and its own) through a
 * counter; qi_oom_arm(k) makes the k-th counted call from then on return
 * NULL (ENOMEM), once: the ones after it succeed again, so the test sees
 * whether the code that got the NULL unwinds cleanly and whether what it
 * left behind still works. Libraries linked as shared objects (cJSON, libc's
 * own internals, libpng) are not counted: their allocations never fail here.
 */
#ifndef QI_OOM_HOOK_H
#define QI_OOM_HOOK_H

/* Restarts the count and fails call k of the new count (k >= 1); k = 0 fails
 * nothing (counting only). */
void qi_oom_arm(long k);
/* Allocation calls counted since the last qi_oom_arm. */
long qi_oom_calls(void);
/* Whether the armed failure has happened since the last qi_oom_arm. */
int qi_oom_fired(void);

#endif

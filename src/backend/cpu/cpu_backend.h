/*
 * cpu_backend.h — the CPU backend's extras beyond the op table. Not for model
 * code: only tests use them.
 */
#ifndef QI_CPU_BACKEND_H
#define QI_CPU_BACKEND_H

#include "backend/backend.h"

/* Tests: of the scratch allocations made inside be's ops from now on, the
 * first `after` succeed and the `count` after them fail as if malloc returned
 * NULL (count 0: none fail), so each allocation site's report through `sync`
 * can be exercised. be must come from qi_backend_cpu_create. */
void qi_backend_cpu_fail_allocs(qi_backend *be, int after, int count);

#endif

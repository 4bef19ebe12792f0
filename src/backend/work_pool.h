/*
 * work_pool.h — a few host threads kept waiting for short jobs: the CUDA
 * backend's upload splits every staging chunk (one weight, mostly) over
 * several threads, ~2000 times per transformer; starting and joining fresh
 * threads for each cost more than the work itself once the bytes are read by
 * pread at ~10 GB/s per thread (a 9.4 MB fp8 weight: ~1 ms of reading, split
 * 16 ways, against ~20 µs per pthread_create, made one after another).
 *
 *     qi_work_pool *p;
 *     qi_work_pool_new(15, &p, &err);               15 waiting threads
 *     qi_work_pool_run(p, fn, jobs, sizeof *jobs, n); fn(&jobs[i]) for i < n; returns when all are done
 *     qi_work_pool_free(p);                          joins the threads
 *
 * The calling thread runs jobs too (so a pool of 0 threads runs them all in
 * the caller). Several threads may call qi_work_pool_run at once (the two
 * loads of qi_engine_open): their jobs share the threads, first come first
 * served. Jobs must not call qi_work_pool_run themselves.
 */
#ifndef QI_WORK_POOL_H
#define QI_WORK_POOL_H

#include <stddef.h>

#include "base/base.h"

typedef struct qi_work_pool qi_work_pool;

typedef void (*qi_work_fn)(void *job);

qi_status qi_work_pool_new(int threads, qi_work_pool **out, qi_error *err);
void qi_work_pool_free(qi_work_pool *p);
/* fn(jobs + i * stride) for every i in [0, n), on the pool's threads and the caller's. */
void qi_work_pool_run(qi_work_pool *p, qi_work_fn fn, void *jobs, size_t stride, int n);
/* The pool's threads (not counting callers). */
int qi_work_pool_threads(const qi_work_pool *p);

#endif

/*
 * work_pool.c — waiting host threads for short jobs (work_pool.h).
 *
 * One mutex guards the list of batches being run; a batch is a caller's
 * jobs, handed out one index at a time to whichever thread asks first (the
 * pool's threads and the caller itself). The caller waits for the batch's
 * last job on the batch's own condition variable, then unlinks it.
 */
#define _POSIX_C_SOURCE 200809L
#include "backend/work_pool.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct batch {
    qi_work_fn fn;
    char *jobs;
    size_t stride;
    int n, next, done; /* jobs, the next one to hand out, those finished */
    pthread_cond_t finished;
    struct batch *link;
} batch;

struct qi_work_pool {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a batch has jobs to hand out, or stop */
    batch *batches;      /* being run, oldest first */
    int stop;
    int threads;         /* started */
    pthread_t *th;
};

/* The oldest batch with a job not yet handed out (under mu). */
static batch *pending(const qi_work_pool *p) {
    for (batch *b = p->batches; b; b = b->link)
        if (b->next < b->n) return b;
    return NULL;
}

/* Runs job b->next (under mu, which it drops while the job runs). */
static void run_one(qi_work_pool *p, batch *b) {
    int i = b->next++;
    pthread_mutex_unlock(&p->mu);
    b->fn(b->jobs + (size_t)i * b->stride);
    pthread_mutex_lock(&p->mu);
    if (++b->done == b->n) pthread_cond_signal(&b->finished);
}

static void *worker(void *arg) {
    qi_work_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        batch *b = pending(p);
        if (b) {
            run_one(p, b);
            continue;
        }
        if (p->stop) break;
        pthread_cond_wait(&p->work, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

qi_status qi_work_pool_new(int threads, qi_work_pool **out, qi_error *err) {
    *out = NULL;
    qi_work_pool *p = calloc(1, sizeof *p);
    if (threads < 0) threads = 0;
    if (!p || (threads && !(p->th = calloc((size_t)threads, sizeof *p->th)))) {
        free(p);
        return qi_fail(err, QI_ERR_NOMEM, "work pool: out of host memory for %d threads", threads);
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p->th);
        free(p);
        return qi_fail(err, QI_ERR_BACKEND, "work pool: cannot make its mutex");
    }
    if (pthread_cond_init(&p->work, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p->th);
        free(p);
        return qi_fail(err, QI_ERR_BACKEND, "work pool: cannot make its condition variable");
    }
    /* fewer threads than asked (the system refuses more) still works: the callers run what is left */
    while (p->threads < threads && pthread_create(&p->th[p->threads], NULL, worker, p) == 0) p->threads++;
    *out = p;
    return QI_OK;
}

void qi_work_pool_free(qi_work_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->threads; i++) pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}

int qi_work_pool_threads(const qi_work_pool *p) { return p ? p->threads : 0; }

void qi_work_pool_run(qi_work_pool *p, qi_work_fn fn, void *jobs, size_t stride, int n) {
    batch b = {fn, (char *)jobs, stride, n, 0, 0, PTHREAD_COND_INITIALIZER, NULL};
    if (!p || !p->threads || n <= 1) { /* nothing to share: all here */
        for (int i = 0; i < n; i++) fn(b.jobs + (size_t)i * stride);
        return;
    }
    pthread_mutex_lock(&p->mu);
    batch **tail = &p->batches;
    while (*tail) tail = &(*tail)->link;
    *tail = &b;
    pthread_cond_broadcast(&p->work);
    while (b.next < b.n) run_one(p, &b); /* the caller's share: whatever the threads have not taken */
    while (b.done < b.n) pthread_cond_wait(&b.finished, &p->mu);
    for (tail = &p->batches; *tail != &b; tail = &(*tail)->link) {
    }
    *tail = b.link;
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&b.finished);
}

/*
 * test_work_pool.c — the waiting threads the CUDA upload splits its staging
 * chunks over (backend/work_pool.h), without a GPU:
 *   - every job runs exactly once, whatever the pool's size (0 threads: all
 *     in the caller) and however many jobs a batch has;
 *   - two callers at once (the two loads of qi_engine_open) each get all of
 *     their own jobs done, none of the other's;
 *   - free joins the threads with nothing queued.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include "backend/work_pool.h"
#include "test.h"

typedef struct job {
    int owner, index;
    int runs; /* how many times it ran */
    volatile double sink;
} job;

static void run_job(void *arg) {
    job *j = arg;
    double x = j->index;
    for (int i = 0; i < 2000; i++) x = x * 0.999 + 1; /* a little work, so threads overlap */
    j->sink = x;
    __atomic_add_fetch(&j->runs, 1, __ATOMIC_RELAXED);
}

/* n jobs of `owner`, run `rounds` times through p; 1 when each ran once per round. */
static int batches_run_once(qi_work_pool *p, int owner, int n, int rounds) {
    job *jobs = calloc((size_t)n, sizeof *jobs);
    int ok = 1;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) jobs[i] = (job){owner, i, 0, 0};
        qi_work_pool_run(p, run_job, jobs, sizeof *jobs, n);
        for (int i = 0; i < n; i++) ok &= jobs[i].runs == 1 && jobs[i].owner == owner && jobs[i].index == i;
    }
    free(jobs);
    return ok;
}

static void every_job_runs_once_for_any_pool_size(void) {
    int sizes[] = {0, 1, 3, 15};
    for (int s = 0; s < 4; s++) {
        qi_work_pool *p = NULL;
        qi_error err = {{0}};
        REQUIRE(qi_work_pool_new(sizes[s], &p, &err) == QI_OK, "%s", err.msg);
        CHECK(qi_work_pool_threads(p) == sizes[s], "%d threads, asked %d", qi_work_pool_threads(p), sizes[s]);
        int counts[] = {1, 2, 7, 16, 100};
        for (int c = 0; c < 5; c++)
            CHECK(batches_run_once(p, 1, counts[c], 50), "pool of %d, batches of %d", sizes[s], counts[c]);
        qi_work_pool_run(p, run_job, NULL, sizeof(job), 0); /* nothing: returns */
        qi_work_pool_free(p);
    }
    qi_work_pool_free(NULL);
    CHECK(batches_run_once(NULL, 1, 9, 3), "no pool: the caller runs the jobs");
}

typedef struct caller {
    qi_work_pool *p;
    int owner, ok;
} caller;

static void *caller_main(void *arg) {
    caller *c = arg;
    c->ok = batches_run_once(c->p, c->owner, 8 + c->owner, 400);
    return NULL;
}

static void two_callers_at_once_share_the_threads(void) {
    qi_work_pool *p = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_work_pool_new(4, &p, &err) == QI_OK, "%s", err.msg);
    caller a = {p, 1, 0}, b = {p, 2, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, caller_main, &a) == 0, "no thread");
    caller_main(&b);
    pthread_join(th, NULL);
    CHECK(a.ok, "the first caller's jobs");
    CHECK(b.ok, "the second caller's jobs");
    qi_work_pool_free(p);
}

int main(void) {
    RUN(every_job_runs_once_for_any_pool_size);
    RUN(two_callers_at_once_share_the_threads);
    TEST_END();
}

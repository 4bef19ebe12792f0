/*
 * local_comm.c — a communicator of N ranks inside one process: rank i is
 * whichever thread holds comms[i]. Used to prove the multi-device code on a
 * machine with one device (the CPU): N CPU backends, N threads, this comm.
 *
 * Every collective is "post, barrier, copy, barrier": each rank publishes
 * its send pointer and block size, waits until all have, copies what it
 * needs straight from the others' buffers (shared memory), and waits again
 * so that no rank reuses its send buffer while another still reads it.
 * The barrier is a mutex + condition variable with an abort flag, so a rank
 * that fails can release the ones already waiting (qi_comm_abort).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/comm.h"

typedef struct local_shared {
    int n;
    pthread_mutex_t lock;
    pthread_cond_t turned;   /* the barrier's generation changed, or abort */
    int arrived;             /* ranks waiting in the current generation */
    unsigned long generation;
    int aborted;
    int refs;                /* comms not yet destroyed */
    const void **posted;     /* [n] each rank's send buffer of the current collective */
    size_t *posted_bytes;    /* [n] and its block size */
} local_shared;

static local_shared *shared_of(qi_comm *c) { return (local_shared *)c->impl; }

/* Waits until all n ranks have arrived; 0, or -1 when the group is aborted. */
static int barrier_wait(local_shared *s) {
    pthread_mutex_lock(&s->lock);
    if (s->aborted) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    unsigned long gen = s->generation;
    if (++s->arrived == s->n) {
        s->arrived = 0;
        s->generation++;
        pthread_cond_broadcast(&s->turned);
    } else {
        while (gen == s->generation && !s->aborted) pthread_cond_wait(&s->turned, &s->lock);
    }
    /* A barrier that completed before the abort still counts as passed. */
    int ok = gen != s->generation;
    pthread_mutex_unlock(&s->lock);
    return ok ? 0 : -1;
}

static qi_status aborted_error(qi_comm *c, const char *what, qi_error *err) {
    return qi_fail(err, QI_ERR_BACKEND,
                   "local comm rank %d/%d: %s: the group was aborted (another rank failed)",
                   c->rank, c->size, what);
}

/* Publishes this rank's buffer and waits for everyone's; checks the block
 * sizes agree (every rank sees the same posts, so all fail alike). */
static qi_status post_and_wait(qi_comm *c, const char *what, const void *send, size_t block_bytes,
                               qi_error *err) {
    local_shared *s = shared_of(c);
    s->posted[c->rank] = send;
    s->posted_bytes[c->rank] = block_bytes;
    if (barrier_wait(s) != 0) return aborted_error(c, what, err);
    for (int i = 0; i < s->n; i++)
        if (s->posted_bytes[i] != block_bytes) {
            size_t theirs = s->posted_bytes[i];
            barrier_wait(s); /* keep the others' posts alive until all have read them */
            return qi_fail(err, QI_ERR_ARG,
                           "local comm %s: rank %d passed blocks of %zu bytes, rank %d of %zu; every "
                           "rank must pass the same size", what, c->rank, block_bytes, i, theirs);
        }
    return QI_OK;
}

static qi_status local_all_to_all(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                                  void *stream, qi_error *err) {
    (void)stream;
    local_shared *s = shared_of(c);
    qi_status st = post_and_wait(c, "all_to_all", send, block_bytes, err);
    if (st != QI_OK) return st;
    /* recv block i = rank i's send block `rank` */
    for (int i = 0; i < s->n; i++)
        memcpy((char *)recv + (size_t)i * block_bytes,
               (const char *)s->posted[i] + (size_t)c->rank * block_bytes, block_bytes);
    if (barrier_wait(s) != 0) return aborted_error(c, "all_to_all", err);
    return QI_OK;
}

static qi_status local_all_gather(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                                  void *stream, qi_error *err) {
    (void)stream;
    local_shared *s = shared_of(c);
    qi_status st = post_and_wait(c, "all_gather", send, block_bytes, err);
    if (st != QI_OK) return st;
    for (int i = 0; i < s->n; i++)
        memcpy((char *)recv + (size_t)i * block_bytes, s->posted[i], block_bytes);
    if (barrier_wait(s) != 0) return aborted_error(c, "all_gather", err);
    return QI_OK;
}

static qi_status local_barrier(qi_comm *c, qi_error *err) {
    return barrier_wait(shared_of(c)) == 0 ? QI_OK : aborted_error(c, "barrier", err);
}

static void local_abort(qi_comm *c) {
    local_shared *s = shared_of(c);
    pthread_mutex_lock(&s->lock);
    s->aborted = 1;
    pthread_cond_broadcast(&s->turned);
    pthread_mutex_unlock(&s->lock);
}

static void shared_free(local_shared *s) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->turned);
    free(s->posted);
    free(s->posted_bytes);
    free(s);
}

static void local_destroy(qi_comm *c) {
    local_shared *s = shared_of(c);
    pthread_mutex_lock(&s->lock);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (last) shared_free(s);
    free(c->stage);
    free(c);
}

static const qi_comm_ops local_ops = {
    .name = "local",
    .destroy = local_destroy,
    .all_to_all = local_all_to_all,
    .all_gather = local_all_gather,
    .barrier = local_barrier,
    .abort = local_abort,
};

qi_status qi_local_comm_create(int n, qi_comm **comms, qi_error *err) {
    if (!comms || n < 1 || n > 1024)
        return qi_fail(err, QI_ERR_ARG, "qi_local_comm_create: %d ranks (expected 1..1024)", n);
    for (int i = 0; i < n; i++) comms[i] = NULL;
    local_shared *s = calloc(1, sizeof *s);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "local comm: out of memory");
    s->posted = calloc((size_t)n, sizeof *s->posted);
    s->posted_bytes = calloc((size_t)n, sizeof *s->posted_bytes);
    int sync_ok = pthread_mutex_init(&s->lock, NULL) == 0;
    sync_ok = sync_ok && pthread_cond_init(&s->turned, NULL) == 0;
    if (!s->posted || !s->posted_bytes || !sync_ok) {
        free(s->posted);
        free(s->posted_bytes);
        free(s);
        return qi_fail(err, QI_ERR_NOMEM, "local comm: out of memory (or no mutex) for %d ranks", n);
    }
    s->n = n;
    for (int i = 0; i < n; i++) {
        qi_comm *c = calloc(1, sizeof *c);
        if (!c) {
            for (int j = 0; j < i; j++) free(comms[j]);
            for (int j = 0; j < i; j++) comms[j] = NULL;
            shared_free(s);
            return qi_fail(err, QI_ERR_NOMEM, "local comm: out of memory");
        }
        c->ops = &local_ops;
        c->rank = i;
        c->size = n;
        c->memory = QI_COMM_HOST;
        c->impl = s;
        comms[i] = c;
    }
    s->refs = n;
    return QI_OK;
}

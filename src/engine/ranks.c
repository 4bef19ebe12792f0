/*
 * ranks.c — devices, rank threads and communicators (see ranks.h). It owns
 * every rank's backend and transformer; what a rank does per step is
 * denoise.c's, and how a transformer loads is engine.c's.
 */
#define _POSIX_C_SOURCE 200809L
#include "engine/ranks.h"

#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define logf_(r, ...) qi_log_linef((r)->log, (r)->log_user, __VA_ARGS__)

/* ---- devices ----------------------------------------------------------------------- */

/* One item of a --devices list, trimmed. */
static qi_status parse_device(const char *list, const char *item, qi_rank_device *d, qi_error *err) {
    memset(d, 0, sizeof *d);
    if (!strcmp(item, "cpu")) {
        snprintf(d->name, sizeof d->name, "cpu");
        return QI_OK;
    }
    if (!strcmp(item, "cuda") || (!strncmp(item, "cuda:", 5) && item[5] >= '0' && item[5] <= '9')) {
        char *end = NULL;
        long v = item[4] ? strtol(item + 5, &end, 10) : 0;
        if ((end && *end) || v > 63)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: '%s' is not a device (expected cuda:N with N from 0 to "
                           "63)", list, item);
        d->is_cuda = 1;
        d->index = (int)v;
        snprintf(d->name, sizeof d->name, "cuda:%d", d->index);
        return QI_OK;
    }
    return qi_fail(err, QI_ERR_ARG, "--devices %s: '%s' is not a device (expected cpu, cuda or cuda:N, "
                   "comma-separated, e.g. cuda:0,cuda:1)", list, item);
}

qi_status qi_ranks_parse(const char *list, qi_rank_devices *out, qi_error *err) {
    out->n = 0;
    const char *s = list;
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        while (len && *s == ' ') s++, len--;
        while (len && s[len - 1] == ' ') len--;
        char item[32];
        if (len == 0 || len >= sizeof item)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: device %d is %s; expected cpu, cuda or cuda:N, "
                           "comma-separated (e.g. cuda:0,cuda:1)", list, out->n + 1, len ? "too long" : "empty");
        memcpy(item, s, len);
        item[len] = 0;
        if (out->n == QI_MAX_RANKS)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: at most %d devices", list, QI_MAX_RANKS);
        qi_rank_device *d = &out->dev[out->n];
        qi_status st = parse_device(list, item, d, err);
        if (st) return st;
        if (out->n > 0 && d->is_cuda != out->dev[0].is_cuda)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: mixes cpu and cuda devices; the ranks of one "
                           "generation must be of one kind", list);
        out->n++;
        if (!comma) return QI_OK;
        s = comma + 1;
    }
}

/* "1, 2 or 4": the rank counts that divide heads. */
static void counts_that_fit(int heads, char *buf, size_t cap) {
    int fit[QI_MAX_RANKS], n_fit = 0;
    for (int d = 1; d <= heads && d <= QI_MAX_RANKS; d++)
        if (heads % d == 0) fit[n_fit++] = d;
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < n_fit && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%d", i == 0 ? "" : i == n_fit - 1 ? " or " : ", ", fit[i]);
}

static void make_current(qi_backend *be) {
    qi_error ignored;
    if (be && be->ops->make_current) be->ops->make_current(be, &ignored);
}

/* Every rank's backend; on failure the ones made are destroyed. */
static qi_status make_backends(qi_ranks *r, const char *list, int threads, uint64_t random_weights, qi_error *err) {
    qi_status st = QI_OK;
    for (int w = 0; st == QI_OK && w < r->n; w++) {
        st = qi_backend_create(r->dev[w].name, threads, 0, &r->be[w], err);
        if (st == QI_OK && random_weights) {
            if (!qi_backend_supports(r->be[w], QI_CAP_RANDOM_WEIGHTS, 0))
                st = qi_fail(err, QI_ERR_UNSUPPORTED, "backend %s cannot make random weights (benchmarks need "
                             "--device cuda)", r->be[w]->ops->name);
            else
                st = r->be[w]->ops->random_weights(r->be[w], random_weights, err);
        }
        if (st != QI_OK && r->n > 1) qi_fail_ctx(err, st, "--devices %s, rank %d", list, w);
    }
    make_current(r->be[0]); /* the engine's thread works on rank 0's device */
    return st;
}

qi_status qi_ranks_open(const qi_rank_devices *d, const char *list, int heads, int threads,
                        uint64_t random_weights, qi_log_fn log, void *log_user, qi_ranks **out, qi_error *err) {
    *out = NULL;
    int n = d->n;
    if (n > 1 && (heads < 1 || heads % n != 0)) {
        char fits[256];
        counts_that_fit(heads, fits, sizeof fits);
        return qi_fail(err, QI_ERR_ARG, "--devices %s: %d devices do not divide the %d attention heads of "
                       "the transformer (each device attends over an equal share of them); use %s devices",
                       list, n, heads, fits);
    }
    qi_ranks *r = calloc(1, sizeof *r);
    if (!r) return qi_fail(err, QI_ERR_NOMEM, "out of memory");
    r->n = n;
    memcpy(r->dev, d->dev, sizeof r->dev);
    r->log = log;
    r->log_user = log_user;
    /* CPU ranks split the threads; NCCL wants one GPU per rank, so ranks
     * sharing a GPU (a test setup) talk through host memory */
    int total = threads > 0 ? threads : omp_get_num_procs();
    int per_rank = n > 1 ? (total / n > 0 ? total / n : 1) : threads;
    r->via_nccl = d->dev[0].is_cuda && n > 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (d->dev[i].index == d->dev[j].index) r->via_nccl = 0;
    if (d->dev[0].is_cuda && n > 1 && !r->via_nccl)
        logf_(r, "--devices %s: ranks share a GPU, so they exchange through host memory (NCCL needs one GPU "
              "per rank)", list);
    qi_status st = make_backends(r, list, per_rank, random_weights, err);
    if (st != QI_OK) {
        qi_ranks_free(r);
        return st;
    }
    if (n > 1)
        logf_(r, "%d ranks on %s (%d attention heads; %s)", n, list, heads,
              d->dev[0].is_cuda ? "one GPU each" : "simulated: one CPU backend per rank");
    *out = r;
    return QI_OK;
}

void qi_ranks_free(qi_ranks *r) {
    if (!r) return;
    qi_ranks_drop_comms(r);
    qi_ranks_free_dits(r);
    for (int w = r->n - 1; w >= 0; w--) { /* rank 0 last: its device stays current */
        make_current(r->be[w]);           /* a device's handles are released on it */
        if (r->be[w]) r->be[w]->ops->destroy(r->be[w]);
    }
    free(r);
}

void qi_ranks_free_dits(qi_ranks *r) {
    for (int w = r->n - 1; w >= 0; w--) {
        make_current(r->be[w]);
        qi_dit_free(r->dit[w]);
        r->dit[w] = NULL;
    }
}

/* ---- running every rank ---------------------------------------------------------- */

static void *rank_main(void *v) {
    qi_rank_call *c = v;
    qi_backend *be = c->r->be[c->rank];
    c->st = be->ops->make_current ? be->ops->make_current(be, &c->err) : QI_OK;
    if (c->st != QI_OK) {
        if (c->on_failure) c->on_failure(c->arg, c->rank);
        return NULL;
    }
    c->st = c->fn(c->r, c->rank, c->arg, &c->err);
    return NULL;
}

/* The error of the run: the first failure is the cause (the others only saw
 * its abort); otherwise any rank's non-OK status (a cancel). */
static qi_status run_result(const qi_ranks *r, const qi_rank_call *calls, int failed, qi_error *err) {
    if (failed < 0)
        for (int w = 0; w < r->n && failed < 0; w++)
            if (calls[w].st != QI_OK && calls[w].st != QI_ERR_CANCELLED) failed = w;
    if (failed >= 0) {
        *err = calls[failed].err;
        if (r->n > 1) qi_fail_ctx(err, calls[failed].st, "rank %d", failed);
        return calls[failed].st;
    }
    for (int w = 0; w < r->n; w++)
        if (calls[w].st != QI_OK) {
            *err = calls[w].err;
            return calls[w].st;
        }
    return QI_OK;
}

qi_status qi_ranks_run(qi_ranks *r, qi_rank_fn fn, void *arg, void (*on_failure)(void *arg, int rank),
                       const atomic_int *first_failed, qi_error *err) {
    qi_rank_call calls[QI_MAX_RANKS];
    pthread_t th[QI_MAX_RANKS];
    int started[QI_MAX_RANKS] = {0};
    for (int w = 0; w < r->n; w++)
        calls[w] = (qi_rank_call){.r = r, .rank = w, .fn = fn, .arg = arg, .on_failure = on_failure};
    for (int w = 1; w < r->n; w++) {
        started[w] = pthread_create(&th[w], NULL, rank_main, &calls[w]) == 0;
        if (!started[w]) {
            calls[w].st = qi_fail(&calls[w].err, QI_ERR_NOMEM, "cannot start the thread of rank %d", w);
            if (on_failure) on_failure(arg, w);
        }
    }
    int omp_threads = omp_get_max_threads(); /* rank 0's make_current may change the caller's */
    rank_main(&calls[0]);
    omp_set_num_threads(omp_threads);
    for (int w = 1; w < r->n; w++)
        if (started[w]) pthread_join(th[w], NULL);
    return run_result(r, calls, first_failed ? atomic_load(first_failed) : -1, err);
}

/* ---- communicators --------------------------------------------------------------- */

static void drop_set(qi_comm_set *s) {
    for (int i = 0; i < QI_MAX_RANKS; i++) {
        qi_comm_destroy(s->sp[i]);
        qi_comm_destroy(s->cfg[i]);
    }
    memset(s, 0, sizeof *s);
}

void qi_ranks_drop_comms(qi_ranks *r) {
    drop_set(&r->sets[0]);
    drop_set(&r->sets[1]);
    for (int i = 0; i < r->n; i++) {
        qi_comm_destroy(r->world[i]);
        r->world[i] = NULL;
    }
}

void qi_ranks_abort(qi_ranks *r, const qi_comm_set *s, int w) {
    qi_comm_abort(r->world[w]);
    if (!s) return;
    qi_comm_abort(s->sp[w]);
    qi_comm_abort(s->cfg[w]);
}

/* A communicator of `count` world ranks: out[i] is ranks[i]'s. */
static qi_status make_group(qi_ranks *r, int count, const int *ranks, qi_comm **out, qi_error *err) {
    qi_comm *c[QI_MAX_RANKS];
    qi_status st;
    if (r->via_nccl) {
        int devs[QI_MAX_RANKS] = {0};
        for (int i = 0; i < count; i++) devs[i] = r->dev[ranks[i]].index;
        st = qi_nccl_comm_create_all(count, devs, c, err);
        make_current(r->be[0]); /* NCCL's init may leave another GPU current */
        if (st != QI_ERR_UNSUPPORTED) {
            for (int i = 0; st == QI_OK && i < count; i++) out[i] = c[i];
            return st;
        }
        logf_(r, "%s; the %d GPUs exchange through host memory instead (slow)", err->msg, r->n);
        r->via_nccl = 0;
    }
    st = qi_local_comm_create(count, c, err);
    for (int i = 0; st == QI_OK && i < count; i++) out[i] = c[i];
    return st;
}

static void log_layout(qi_ranks *r, const qi_parallel_layout *l) {
    char what[96];
    if (l->branches == 2 && l->sp_size > 1)
        snprintf(what, sizeof what, "CFG-parallel (cond | uncond) x %d-way Ulysses", l->sp_size);
    else if (l->branches == 2)
        snprintf(what, sizeof what, "CFG-parallel (cond | uncond)");
    else
        snprintf(what, sizeof what, "%d-way Ulysses", l->sp_size);
    logf_(r, "%d %s ranks: %s, %s communicator", r->n, r->dev[0].is_cuda ? "cuda" : "cpu", what,
          r->via_nccl ? "NCCL" : "local");
}

qi_status qi_ranks_comms(qi_ranks *r, const qi_parallel_layout *l, qi_comm_set **out, qi_error *err) {
    qi_comm_set *s = &r->sets[l->branches - 1];
    *out = s;
    if (s->ready || r->n == 1) return QI_OK;
    qi_status st = QI_OK;
    if (!r->world[0]) st = qi_local_comm_create(r->n, r->world, err);
    int sp = l->sp_size, ranks[QI_MAX_RANKS];
    for (int g = 0; st == QI_OK && sp > 1 && g < l->branches; g++) {
        for (int i = 0; i < sp; i++) ranks[i] = g * sp + i;
        st = make_group(r, sp, ranks, s->sp + g * sp, err);
    }
    for (int k = 0; st == QI_OK && l->branches == 2 && k < sp; k++) {
        int pair[2] = {k, sp + k};
        qi_comm *c[2];
        st = make_group(r, 2, pair, c, err);
        if (st == QI_OK) {
            s->cfg[k] = c[0];
            s->cfg[sp + k] = c[1];
        }
    }
    if (st != QI_OK) {
        drop_set(s);
        return st;
    }
    s->ready = 1;
    log_layout(r, l);
    return QI_OK;
}

qi_status qi_ranks_step_barrier(qi_ranks *r, int w, int step, int steps, qi_progress_fn progress, void *user,
                                atomic_int *cancel_at, qi_error *err) {
    if (w == 0 && progress && progress(user, "denoise", step, steps)) atomic_store(cancel_at, step);
    /* every rank learns rank 0's decision at the same step */
    qi_status st = r->n > 1 ? qi_comm_barrier(r->world[w], err) : QI_OK;
    if (st == QI_OK && atomic_load(cancel_at) <= step) st = qi_fail(err, QI_ERR_CANCELLED, "generation cancelled");
    return st;
}

/*
 * nccl_comm.c — the communicator on GPUs: NCCL (the library, not a
 * home-made transport), for one process driving several GPUs with one
 * thread per GPU.
 *
 * NCCL is loaded at run time (dlopen "libnccl.so.2") through the handful of
 * declarations below, so no build needs NCCL's headers or library and CPU
 * builds carry no dependency; a machine without NCCL gets
 * QI_ERR_UNSUPPORTED from qi_nccl_comm_create_all.
 *
 *   all_to_all   one ncclGroupStart/End around a ncclSend and a ncclRecv per
 *                peer (self included), bytes as ncclInt8
 *   all_gather   ncclAllGather
 *   barrier      the ranks' host threads meet (a local comm of the same
 *                ranks: they share this process)
 * Collectives are queued on the caller's stream (the backend's) and return
 * without waiting for the GPU.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "parallel/comm.h"

/* ---- the NCCL API we use (nccl.h, stable since NCCL 2.7) ------------------------ */

typedef struct nccl_comm_opaque *nccl_comm_t; /* ncclComm_t */
typedef int nccl_result_t;                   /* ncclResult_t: 0 = ncclSuccess */
enum { NCCL_INT8 = 0 };                      /* ncclDataType_t ncclInt8 */

typedef struct nccl_api {
    void *lib;
    nccl_result_t (*get_version)(int *version);
    const char *(*get_error_string)(nccl_result_t r);
    nccl_result_t (*comm_init_all)(nccl_comm_t *comms, int ndev, const int *devlist);
    nccl_result_t (*comm_destroy)(nccl_comm_t comm);
    nccl_result_t (*comm_abort)(nccl_comm_t comm);
    nccl_result_t (*group_start)(void);
    nccl_result_t (*group_end)(void);
    nccl_result_t (*send)(const void *buf, size_t count, int datatype, int peer, nccl_comm_t comm,
                          void *stream);
    nccl_result_t (*recv)(void *buf, size_t count, int datatype, int peer, nccl_comm_t comm,
                          void *stream);
    nccl_result_t (*all_gather)(const void *send, void *recv, size_t count, int datatype,
                                nccl_comm_t comm, void *stream);
    char why[256]; /* why loading failed, when lib is NULL */
} nccl_api;

static nccl_api api;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void load_api(void) {
    api.lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!api.lib) {
        const char *e = dlerror();
        snprintf(api.why, sizeof api.why, "%s", e ? e : "libnccl.so.2 not found");
        return;
    }
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"ncclGetVersion", (void **)&api.get_version},
        {"ncclGetErrorString", (void **)&api.get_error_string},
        {"ncclCommInitAll", (void **)&api.comm_init_all},
        {"ncclCommDestroy", (void **)&api.comm_destroy},
        {"ncclCommAbort", (void **)&api.comm_abort},
        {"ncclGroupStart", (void **)&api.group_start},
        {"ncclGroupEnd", (void **)&api.group_end},
        {"ncclSend", (void **)&api.send},
        {"ncclRecv", (void **)&api.recv},
        {"ncclAllGather", (void **)&api.all_gather},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(syms); i++) {
        *syms[i].slot = dlsym(api.lib, syms[i].name);
        if (!*syms[i].slot) {
            snprintf(api.why, sizeof api.why, "libnccl.so.2 has no %s (NCCL 2.7 or newer is needed)",
                     syms[i].name);
            dlclose(api.lib);
            api.lib = NULL;
            return;
        }
    }
}

static int have_api(void) {
    pthread_once(&api_once, load_api);
    return api.lib != NULL;
}

int qi_nccl_version(void) {
    int v = 0;
    if (have_api() && api.get_version(&v) != 0) v = 0;
    return v;
}

/* ---- the communicator ----------------------------------------------------------- */

typedef struct nccl_shared {
    int n;
    nccl_comm_t *comms;  /* [n] */
    qi_comm **host;      /* [n] a local comm of the same ranks: barrier and abort */
    atomic_int aborted;
    atomic_int refs;
} nccl_shared;

static nccl_shared *shared_of(qi_comm *c) { return (nccl_shared *)c->impl; }

static qi_status nccl_error(qi_comm *c, const char *what, nccl_result_t r, qi_error *err) {
    return qi_fail(err, QI_ERR_BACKEND, "NCCL rank %d/%d: %s failed: %s", c->rank, c->size, what,
                   api.get_error_string(r));
}

static qi_status check_alive(qi_comm *c, const char *what, qi_error *err) {
    if (!atomic_load(&shared_of(c)->aborted)) return QI_OK;
    return qi_fail(err, QI_ERR_BACKEND,
                   "NCCL rank %d/%d: %s: the group was aborted (another rank failed)", c->rank,
                   c->size, what);
}

static qi_status nccl_all_to_all(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                                 void *stream, qi_error *err) {
    nccl_shared *s = shared_of(c);
    qi_status st = check_alive(c, "all_to_all", err);
    if (st != QI_OK) return st;
    nccl_comm_t comm = s->comms[c->rank];
    nccl_result_t r = api.group_start();
    for (int peer = 0; peer < c->size && r == 0; peer++) {
        r = api.send((const char *)send + (size_t)peer * block_bytes, block_bytes, NCCL_INT8, peer,
                     comm, stream);
        if (r == 0)
            r = api.recv((char *)recv + (size_t)peer * block_bytes, block_bytes, NCCL_INT8, peer,
                         comm, stream);
    }
    nccl_result_t end = api.group_end(); /* always close the group */
    if (r == 0) r = end;
    return r == 0 ? QI_OK : nccl_error(c, "all_to_all (ncclSend/ncclRecv)", r, err);
}

static qi_status nccl_all_gather(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                                 void *stream, qi_error *err) {
    qi_status st = check_alive(c, "all_gather", err);
    if (st != QI_OK) return st;
    nccl_result_t r =
        api.all_gather(send, recv, block_bytes, NCCL_INT8, shared_of(c)->comms[c->rank], stream);
    return r == 0 ? QI_OK : nccl_error(c, "ncclAllGather", r, err);
}

static qi_status nccl_barrier(qi_comm *c, qi_error *err) {
    qi_status st = check_alive(c, "barrier", err);
    if (st != QI_OK) return st;
    qi_comm *h = shared_of(c)->host[c->rank];
    return h->ops->barrier(h, err);
}

static void nccl_abort(qi_comm *c) {
    nccl_shared *s = shared_of(c);
    atomic_store(&s->aborted, 1);
    qi_comm_abort(s->host[c->rank]); /* wakes ranks waiting in a barrier */
}

static void shared_free(nccl_shared *s) {
    for (int i = 0; i < s->n; i++) {
        if (s->comms && s->comms[i])
            (atomic_load(&s->aborted) ? api.comm_abort : api.comm_destroy)(s->comms[i]);
        if (s->host) qi_comm_destroy(s->host[i]);
    }
    free(s->comms);
    free(s->host);
    free(s);
}

static void nccl_destroy(qi_comm *c) {
    nccl_shared *s = shared_of(c);
    /* NCCL communicators are torn down together, by whichever rank goes last */
    if (atomic_fetch_sub(&s->refs, 1) == 1) shared_free(s);
    free(c->stage);
    free(c);
}

static const qi_comm_ops nccl_ops = {
    .name = "nccl",
    .destroy = nccl_destroy,
    .all_to_all = nccl_all_to_all,
    .all_gather = nccl_all_gather,
    .barrier = nccl_barrier,
    .abort = nccl_abort,
};

qi_status qi_nccl_comm_create_all(int n, const int *devices, qi_comm **comms, qi_error *err) {
    if (!comms || !devices || n < 1 || n > 1024)
        return qi_fail(err, QI_ERR_ARG, "qi_nccl_comm_create_all: %d ranks (expected 1..1024 "
                       "devices)", n);
    for (int i = 0; i < n; i++) comms[i] = NULL;
    if (!have_api())
        return qi_fail(err, QI_ERR_UNSUPPORTED, "NCCL is not available (%s); multi-GPU runs need "
                       "the NCCL library (libnccl2)", api.why);
    nccl_shared *s = calloc(1, sizeof *s);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "nccl comm: out of memory");
    s->n = n;
    atomic_init(&s->aborted, 0);
    atomic_init(&s->refs, n);
    s->comms = calloc((size_t)n, sizeof *s->comms);
    s->host = calloc((size_t)n, sizeof *s->host);
    qi_status st = s->comms && s->host ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "nccl comm: out of memory");
    if (st == QI_OK) st = qi_local_comm_create(n, s->host, err);
    if (st == QI_OK) {
        /* NVLink multicast (NVLS) serves all-reduce, which we never call, and
         * on shared hosts it can take the GPUs out of service: off unless the
         * user chose otherwise. */
        setenv("NCCL_NVLS_ENABLE", "0", 0);
        nccl_result_t r = api.comm_init_all(s->comms, n, devices);
        if (r != 0) {
            for (int i = 0; i < n; i++) s->comms[i] = NULL;
            st = qi_fail(err, QI_ERR_BACKEND, "NCCL: ncclCommInitAll over %d device(s) failed: %s "
                         "(each rank needs its own GPU)", n, api.get_error_string(r));
        }
    }
    for (int i = 0; i < n && st == QI_OK; i++) {
        qi_comm *c = calloc(1, sizeof *c);
        if (!c) {
            st = qi_fail(err, QI_ERR_NOMEM, "nccl comm: out of memory");
            break;
        }
        *c = (qi_comm){.ops = &nccl_ops, .rank = i, .size = n, .memory = QI_COMM_DEVICE, .impl = s};
        comms[i] = c;
    }
    if (st != QI_OK) {
        for (int i = 0; i < n; i++) {
            free(comms[i]);
            comms[i] = NULL;
        }
        shared_free(s);
    }
    return st;
}

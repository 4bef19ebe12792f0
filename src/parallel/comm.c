/*
 * comm.c — what every communicator shares: the NULL-safe wrappers and the
 * collectives on backend tensors (the memory hand-off between a backend and
 * a communicator). The transports themselves are local_comm.c (threads of
 * one process) and, on GPUs, an NCCL implementation of the same ops.
 */
#include "parallel/comm.h"

#include <stdlib.h>

void qi_comm_destroy(qi_comm *c) {
    if (c) c->ops->destroy(c);
}

void qi_comm_abort(qi_comm *c) {
    if (c) c->ops->abort(c);
}

qi_status qi_comm_barrier(qi_comm *c, qi_error *err) {
    if (!c) return qi_fail(err, QI_ERR_ARG, "qi_comm_barrier: no communicator");
    return c->ops->barrier(c, err);
}

/* Host staging of at least n floats, kept in the comm (one per rank, so no
 * locking: a comm is used by one thread). */
static qi_status stage_floats(qi_comm *c, size_t n, float **out, qi_error *err) {
    if (c->stage_floats < n) {
        float *p = realloc(c->stage, n * sizeof *p);
        if (!p)
            return qi_fail(err, QI_ERR_NOMEM, "comm rank %d: no memory for %zu MiB of host staging",
                           c->rank, (n * sizeof *p) >> 20);
        c->stage = p;
        c->stage_floats = n;
    }
    *out = c->stage;
    return QI_OK;
}

typedef enum { ALL_TO_ALL, ALL_GATHER } collective;

/* The backend's native queue (a CUDA stream), or NULL when it has none. */
static void *backend_stream(qi_backend *be) {
    return be->ops->native_stream ? be->ops->native_stream(be) : NULL;
}

/* The shared body of both tensor collectives. On a device comm the tensors'
 * memory goes to the transport as it is, queued on the backend's stream
 * after its own work; on a host comm both sides go through float32 host
 * copies, which is exact for every activation dtype (f32, bf16, f16 all
 * widen to f32). */
static qi_status tensor_collective(qi_comm *c, qi_backend *be, collective kind, const qi_tensor *send,
                                   qi_tensor *recv, qi_error *err) {
    const char *name = kind == ALL_TO_ALL ? "all_to_all" : "all_gather";
    if (!c || !be || !send || !recv)
        return qi_fail(err, QI_ERR_ARG, "comm %s: communicator, backend and tensors are required", name);
    int64_t n_send = qi_numel(send), n_recv = qi_numel(recv);
    int64_t want_recv = kind == ALL_TO_ALL ? n_send : n_send * c->size;
    if (send->dtype != recv->dtype || n_recv != want_recv ||
        (kind == ALL_TO_ALL && n_send % c->size != 0)) {
        char s1[64], s2[64];
        return qi_fail(err, QI_ERR_ARG,
                       "comm %s over %d ranks: send %s %s and recv %s %s do not fit (all_to_all: same "
                       "size, divisible by the ranks; all_gather: recv = ranks x send)",
                       name, c->size, qi_dtype_name(send->dtype), qi_shape_str(send, s1, sizeof s1),
                       qi_dtype_name(recv->dtype), qi_shape_str(recv, s2, sizeof s2));
    }
    int64_t block_elems = kind == ALL_TO_ALL ? n_send / c->size : n_send;
    qi_status st;
    if (c->memory == QI_COMM_DEVICE) {
        void *stream = backend_stream(be);
        if (!stream)
            return qi_fail(err, QI_ERR_ARG, "comm %s: the %s communicator works on device memory, "
                           "queued on the backend's native stream; the %s backend has none (use a "
                           "host communicator)", name, c->ops->name, be->ops->name);
        size_t block_bytes = (size_t)block_elems * qi_dtype_size(send->dtype);
        return kind == ALL_TO_ALL
                   ? c->ops->all_to_all(c, send->data, recv->data, block_bytes, stream, err)
                   : c->ops->all_gather(c, send->data, recv->data, block_bytes, stream, err);
    }
    /* host comm: [send | recv] staged as float32 */
    float *host = NULL;
    if ((st = stage_floats(c, (size_t)(n_send + n_recv), &host, err)) != QI_OK) return st;
    float *host_recv = host + n_send;
    if ((st = be->ops->download(be, send, host, err)) != QI_OK) return st;
    size_t block_bytes = (size_t)block_elems * sizeof(float);
    st = kind == ALL_TO_ALL ? c->ops->all_to_all(c, host, host_recv, block_bytes, NULL, err)
                            : c->ops->all_gather(c, host, host_recv, block_bytes, NULL, err);
    if (st != QI_OK) return st;
    return be->ops->upload(be, recv, host_recv, err);
}

qi_status qi_comm_all_to_all_tensor(qi_comm *c, qi_backend *be, const qi_tensor *send,
                                    qi_tensor *recv, qi_error *err) {
    return tensor_collective(c, be, ALL_TO_ALL, send, recv, err);
}

qi_status qi_comm_all_gather_tensor(qi_comm *c, qi_backend *be, const qi_tensor *send,
                                    qi_tensor *recv, qi_error *err) {
    return tensor_collective(c, be, ALL_GATHER, send, recv, err);
}

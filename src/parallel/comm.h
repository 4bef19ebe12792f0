/*
 * comm.h — the communicator the multi-device code talks through: a rank in a
 * group of `size` ranks and the few collectives sequence parallelism and
 * CFG-parallel need (all-to-all of equal blocks, all-gather, barrier).
 *
 * Two kinds of memory sit behind the same interface:
 *   QI_COMM_HOST    send/recv are host buffers (the in-process simulation,
 *                   local_comm.c: N ranks as N threads sharing memory); a
 *                   collective is complete when it returns;
 *   QI_COMM_DEVICE  send/recv are device buffers of the rank's GPU (NCCL,
 *                   nccl_comm.c: ncclSend/ncclRecv inside one group call);
 *                   a collective is queued on the given CUDA stream (the
 *                   backend's) and completes in stream order, so the
 *                   backend's next ops see recv without a host wait.
 * Model code never asks which: it calls the tensor helpers below, which hand
 * a backend tensor's memory and stream straight to a device communicator
 * and stage it through the host (download / upload) for a host one.
 *
 * Collectives are called by every rank of the group, in the same order, with
 * the same block size. A rank that fails between collectives must call
 * qi_comm_abort so that the others return an error instead of waiting for
 * it forever; an aborted group stays aborted (make a new one).
 */
#ifndef QI_COMM_H
#define QI_COMM_H

#include "backend/backend.h"

typedef enum qi_comm_memory {
    QI_COMM_HOST = 0,  /* buffers are host memory */
    QI_COMM_DEVICE = 1 /* buffers are device memory of the rank's backend */
} qi_comm_memory;

typedef struct qi_comm qi_comm;

typedef struct qi_comm_ops {
    const char *name;
    void (*destroy)(qi_comm *c);
    /* Block j of send (block_bytes at send + j·block_bytes) goes to rank j;
     * block i of recv comes from rank i. send and recv must not overlap.
     * stream: a cudaStream_t for device comms (ignored by host comms). */
    qi_status (*all_to_all)(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                            void *stream, qi_error *err);
    /* recv block i = rank i's send (block_bytes each); recv holds size blocks. */
    qi_status (*all_gather)(qi_comm *c, const void *send, void *recv, size_t block_bytes,
                            void *stream, qi_error *err);
    /* Every rank's host thread has reached it (queued device work is not waited for). */
    qi_status (*barrier)(qi_comm *c, qi_error *err);
    /* Marks the group failed and wakes every rank waiting in a collective;
     * safe to call from any rank at any time, more than once. */
    void (*abort)(qi_comm *c);
} qi_comm_ops;

struct qi_comm {
    const qi_comm_ops *ops;
    int rank, size;
    qi_comm_memory memory;
    void *impl;
    /* host staging of the tensor helpers (a HOST comm on any backend) */
    float *stage;
    size_t stage_floats;
};

/* Every rank of the group: rank in [0, size). */
static inline int qi_comm_rank(const qi_comm *c) { return c->rank; }
static inline int qi_comm_size(const qi_comm *c) { return c->size; }

void qi_comm_destroy(qi_comm *c); /* NULL is fine */
void qi_comm_abort(qi_comm *c);   /* NULL is fine */
qi_status qi_comm_barrier(qi_comm *c, qi_error *err);

/* ---- on backend tensors ------------------------------------------------------- */

/* recv = all-to-all of send: both hold size equal blocks of numel/size
 * elements (the outermost dimension is usually the block index). send and
 * recv are tensors of `be` with the same dtype and element count. */
qi_status qi_comm_all_to_all_tensor(qi_comm *c, qi_backend *be, const qi_tensor *send,
                                    qi_tensor *recv, qi_error *err);

/* recv = [size blocks] each a copy of rank i's send; numel(recv) = size·numel(send). */
qi_status qi_comm_all_gather_tensor(qi_comm *c, qi_backend *be, const qi_tensor *send,
                                    qi_tensor *recv, qi_error *err);

/* ---- implementations ------------------------------------------------------------ */

/* N ranks of one process (N threads sharing memory), local_comm.c: fills
 * comms[0..n) (comm i is rank i; give each to its own thread). Each comm is
 * destroyed on its own; the shared state goes with the last one. */
qi_status qi_local_comm_create(int n, qi_comm **comms, qi_error *err);

/* NCCL, one process driving n GPUs (one thread per GPU, each with its GPU
 * current): comms[i] is rank i on CUDA device devices[i] (ncclCommInitAll).
 * libnccl.so.2 is loaded at run time, so no build needs NCCL; without it
 * this returns QI_ERR_UNSUPPORTED. Tensors must live on a CUDA backend.
 * Known limit: an abort releases ranks before or between collectives, not
 * one already blocked inside NCCL (that needs non-blocking communicators). */
qi_status qi_nccl_comm_create_all(int n, const int *devices, qi_comm **comms, qi_error *err);
/* The loaded NCCL's version (e.g. 22703 for 2.27.3), or 0 when none loads. */
int qi_nccl_version(void);

#endif

/*
 * host_pool.h — host memory for streamed weights: sub-allocated from a few
 * large chunks, pinned up to a budget, ordinary (pageable) beyond it.
 *
 * Why chunks: pinning memory (cudaHostAlloc) costs a system call and page
 * locking per call; a Q4_K transformer plus a bf16 text encoder is ~3000
 * tensors, and pinning each on its own made `--vram 3G` set-up take minutes.
 * Why a budget: pinned memory cannot be swapped or used by anything else, so
 * pinning 30 GB of weights on a 32 GB machine starves the system. Weights past
 * the budget live in pageable chunks and reach the device through a small
 * pinned bounce ring (the backend's; this file knows nothing of devices).
 *
 *     qi_host_pool *p = qi_host_pool_new(&ops, pinned_max, chunk_bytes);
 *     qi_host_pool_alloc(p, bytes, &ptr, &pinned, err);   256-byte aligned
 *     qi_host_pool_kind(p, ptr);                          1 pinned, 0 pageable, -1 not ours
 *     qi_host_pool_free(p, ptr);      a chunk goes back when its last block does
 *     qi_host_pool_destroy(p);        everything at once (the backend's destroy)
 *
 * Blocks are never reused inside a chunk (bump allocation): weights are
 * loaded and freed a model at a time, so a chunk empties as a whole. Not
 * thread-safe: the backend's weight calls are made from one thread at a time.
 */
#ifndef QI_HOST_POOL_H
#define QI_HOST_POOL_H

#include <stddef.h>

#include "base/base.h"

#define QI_HOST_POOL_ALIGN 256                    /* cuBLASLt's and the slots' alignment */
#define QI_HOST_POOL_CHUNK ((size_t)512 << 20)    /* default chunk size */

/* How pinned chunks are made and released (the CUDA backend: cudaHostAlloc /
 * cudaFreeHost; tests: malloc with a failure switch). pin returns memory
 * aligned to QI_HOST_POOL_ALIGN at least (cudaHostAlloc's is page aligned),
 * or NULL when it cannot, writing why into why[0..why_cap) when it can say. */
typedef struct qi_host_pool_ops {
    void *(*pin)(void *ctx, size_t bytes, char *why, size_t why_cap);
    void (*unpin)(void *ctx, void *p);
    void *ctx;
} qi_host_pool_ops;

typedef struct qi_host_pool qi_host_pool;

typedef struct qi_host_pool_stats {
    size_t pinned_held;   /* bytes of pinned chunks (what the budget counts) */
    size_t pageable_held; /* bytes of pageable chunks */
    size_t pinned_used;   /* bytes handed out from pinned chunks (alignment included) */
    size_t pageable_used; /* bytes handed out from pageable chunks */
    size_t pinned_max;    /* the budget */
    int chunks;           /* chunks held, both kinds */
} qi_host_pool_stats;

/* NULL when out of memory. chunk_bytes 0: QI_HOST_POOL_CHUNK. */
qi_host_pool *qi_host_pool_new(const qi_host_pool_ops *ops, size_t pinned_max, size_t chunk_bytes);
/* Changes the budget for later allocations (blocks already placed stay). */
void qi_host_pool_set_pinned_max(qi_host_pool *p, size_t pinned_max);
/* `bytes` (0 taken as 1) at a 256-byte boundary: from a pinned chunk while
 * the pinned chunks stay within the budget, else from a pageable one; *pinned
 * says which. QI_ERR_NOMEM when pinning fails inside the budget (the message
 * says how much was pinned and which --pinned would do) or malloc fails. */
qi_status qi_host_pool_alloc(qi_host_pool *p, size_t bytes, void **out, int *pinned, qi_error *err);
/* 1: ptr lies in a pinned chunk; 0: in a pageable one; -1: not in this pool. */
int qi_host_pool_kind(const qi_host_pool *p, const void *ptr);
/* Gives back the block at ptr (a pointer qi_host_pool_alloc returned); its
 * chunk is released when no block in it is left. Pointers not ours: ignored. */
void qi_host_pool_free(qi_host_pool *p, void *ptr);
void qi_host_pool_stats_get(const qi_host_pool *p, qi_host_pool_stats *s);
void qi_host_pool_destroy(qi_host_pool *p);

/* The default budget for a machine of `ram_bytes`: half of it (the rest for
 * the page cache of the files, the pageable weights and everything else). */
size_t qi_host_pool_default_max(size_t ram_bytes);
/* "0", "512M", "3G", "1.5G", "100000" (bytes) -> bytes; 0 if it parses, else -1. */
int qi_host_pool_parse_size(const char *s, size_t *out);

#endif

/*
 * ranks.h — the devices one generation runs on: one rank per device, each
 * with its own backend and transformer, the threads that drive them and the
 * communicators between them. One device is one rank (no threads, no
 * communicators); the denoising loop (denoise.c) is the same code for both.
 *
 * Threads: rank 0's work runs on the caller's thread (so progress and log
 * callbacks arrive where the caller is), ranks 1..N-1 on threads started per
 * call (their cost is nothing next to a transformer call). Every rank's
 * thread first makes its backend current (be->ops->make_current: the GPU of
 * a CUDA backend; the OpenMP thread count of a CPU one, since OpenBLAS sizes
 * each call by the calling thread's count, which a new thread inherits as
 * "all cores": N ranks would each take every core).
 *
 * Communicators are made on a layout's first use and kept: NCCL between
 * CUDA ranks on distinct GPUs (the local communicator, staging through host
 * memory, when libnccl.so.2 cannot be loaded or ranks share a GPU), the
 * local one between CPU ranks. A local "world" communicator of all ranks
 * carries the one host barrier per step at which every rank learns whether
 * rank 0's progress callback cancelled, so a cancel stops all ranks at the
 * same step and leaves the communicators usable. A failing rank aborts its
 * communicators (the others return errors instead of waiting), and they are
 * made anew on the next call.
 */
#ifndef QI_ENGINE_RANKS_H
#define QI_ENGINE_RANKS_H

#include <stdatomic.h>

#include "backend/backend.h"
#include "model/dit.h"
#include "parallel/comm.h"
#include "parallel/ulysses.h"

#define QI_MAX_RANKS QI_ULYSSES_MAX_RANKS

/* One device of a --devices list. */
typedef struct qi_rank_device {
    char name[64]; /* "cpu" or "cuda:N": what qi_backend_create takes */
    int is_cuda;
    int index;     /* CUDA ordinal (0 for cpu) */
} qi_rank_device;

typedef struct qi_rank_devices {
    int n;
    qi_rank_device dev[QI_MAX_RANKS];
} qi_rank_devices;

/* What a recorded denoising step depends on: the shapes, the CFG scale (a
 * kernel argument), whether each text has padding (the attention's mask
 * argument), the communicators it exchanges through and every address it
 * reads or writes. Zero-filled, compared whole. */
typedef struct qi_step_key {
    int batch, grid_h, grid_w, len0, len1; /* text lengths of the rank's predictions; len1 0: one */
    float cfg;                             /* 0 without true CFG */
    int mask0, mask1;
    size_t arena_mark;                     /* where the step's activations start */
    const void *latents, *v0, *v1, *ctx0, *ctx1;
    const qi_comm *sp, *pair;
} qi_step_key;

/* A rank's denoising step: its transformer calls (call[0] the rank's first
 * prediction, call[1] the second when it makes both) and, where the rank
 * records, the recording of calls + CFG (kept across requests of one key). */
typedef struct qi_rank_step {
    qi_dit_call *call[2];
    qi_graph *graph;
    qi_step_key key;
} qi_rank_step;

/* The communicators of one layout, by world rank. */
typedef struct qi_comm_set {
    int ready;
    qi_comm *sp[QI_MAX_RANKS];  /* the rank's Ulysses group; NULL when sp_size is 1 */
    qi_comm *cfg[QI_MAX_RANKS]; /* its CFG pair; NULL without CFG-parallel */
} qi_comm_set;

typedef struct qi_ranks {
    int n;
    qi_rank_device dev[QI_MAX_RANKS];
    qi_backend *be[QI_MAX_RANKS];      /* be[0] also runs text encoder, VAE and noise */
    qi_dit *dit[QI_MAX_RANKS];         /* NULL until the transformer loads */
    qi_rank_step step[QI_MAX_RANKS];   /* recorded steps (denoise.c) */
    int via_nccl;                      /* CUDA ranks on distinct GPUs with NCCL loadable */
    qi_comm *world[QI_MAX_RANKS];      /* local comm of all ranks: the per-step barrier (n > 1) */
    qi_comm_set sets[2];               /* [branches - 1] */
    qi_log_fn log;
    void *log_user;
} qi_ranks;

/* "cpu", "cuda" (= cuda:0) or "cuda:N", comma-separated, one kind, at most
 * QI_MAX_RANKS; errors quote the list and name the bad item. */
qi_status qi_ranks_parse(const char *list, qi_rank_devices *out, qi_error *err);

/* Makes every rank's backend (CPU ranks share `threads`, 0 = all cores;
 * random_weights: every rank draws the same benchmark weights). With several
 * devices, heads (the transformer's attention heads) must be divisible by
 * their count; `list` is quoted in errors. */
qi_status qi_ranks_open(const qi_rank_devices *d, const char *list, int heads, int threads,
                        uint64_t random_weights, qi_log_fn log, void *log_user, qi_ranks **out, qi_error *err);
/* Frees the transformers (after denoise.c's steps: qi_denoise_release) and
 * backends, each on its own device. NULL is fine. */
void qi_ranks_free(qi_ranks *r);
/* Frees every rank's transformer (each on its device). */
void qi_ranks_free_dits(qi_ranks *r);

/* ---- running every rank ---- */

typedef qi_status (*qi_rank_fn)(qi_ranks *r, int rank, void *arg, qi_error *err);

typedef struct qi_rank_call {
    qi_ranks *r;
    int rank;
    qi_rank_fn fn;
    void *arg;
    void (*on_failure)(void *arg, int rank); /* releases the other ranks; may be NULL */
    qi_status st;
    qi_error err;
} qi_rank_call;

/* fn on every rank, each on its thread with its backend current; returns
 * when all are done. A rank whose thread cannot start or whose backend
 * cannot be made current fails there, and on_failure (may be NULL) then
 * releases the others. The first failed rank's status and error are
 * returned (with "rank N" added when there are several; first_failed, when
 * not NULL, names the rank that failed first, else -1 means any order). */
qi_status qi_ranks_run(qi_ranks *r, qi_rank_fn fn, void *arg, void (*on_failure)(void *arg, int rank),
                       const atomic_int *first_failed, qi_error *err);

/* ---- communicators ---- */

/* The communicators of layout l, made on its first use (and logged). */
qi_status qi_ranks_comms(qi_ranks *r, const qi_parallel_layout *l, qi_comm_set **out, qi_error *err);
/* After a failure: every communicator is dropped, made anew on next use. */
void qi_ranks_drop_comms(qi_ranks *r);
/* Rank w failed: its communicators are aborted so the others stop waiting. */
void qi_ranks_abort(qi_ranks *r, const qi_comm_set *s, int w);

/* The per-step meeting of all ranks: rank 0 asks its progress callback
 * (progress may be NULL) whether to go on and stores a cancel in *cancel_at;
 * every rank then learns it at the same step. QI_ERR_CANCELLED when
 * cancelled at or before `step`. */
qi_status qi_ranks_step_barrier(qi_ranks *r, int w, int step, int steps, qi_progress_fn progress, void *user,
                                atomic_int *cancel_at, qi_error *err);

#endif

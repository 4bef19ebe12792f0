/*
 * ulysses.h — how one transformer call is spread over the ranks of a group:
 * Ulysses sequence parallelism (image tokens sharded, attention heads
 * exchanged around attention) and the CFG-parallel split of a generation
 * into a cond branch and an uncond branch.
 *
 * Ulysses, for a group of N ranks, H heads of Dh, L image tokens:
 *   - rank r holds the contiguous image shard [begin(r), begin(r) + len(r)),
 *     begin(r) = floor(r·L / N), so shard lengths differ by at most one
 *     (needs L >= N: no rank is empty); text tokens are on every rank;
 *   - before attention, scatter: the rank's q/k/v of [L_txt + len(r), H, Dh]
 *     become [L_txt + L, H/N, Dh] — heads [r·H/N, (r+1)·H/N) of the whole
 *     joint sequence, text first (text heads are sliced locally, image rows
 *     come from every rank through one all-to-all);
 *   - after attention, gather: the joint output of its H/N heads goes back,
 *     one all-to-all again, so that each rank has all H heads of its own
 *     image rows AND of the whole text (the text output of every head group
 *     rides in every block, so all ranks rebuild the same text stream).
 * All-to-all blocks must have equal size: a shard travels padded to
 * block_tokens = ceil(L / N) rows; pad rows are never read.
 *
 * Every re-layout here is made of backend ops (transpose2d, copy_rows) and
 * the communicator's collectives, so the same code serves the CPU
 * simulation and GPUs. Scratch comes from the backend arena and is released
 * before returning; on a GPU everything is queued in stream order (no host
 * waits), so later ops may reuse that memory safely.
 */
#ifndef QI_ULYSSES_H
#define QI_ULYSSES_H

#include "backend/backend.h"
#include "parallel/comm.h"

#define QI_ULYSSES_MAX_RANKS 64

typedef struct qi_ulysses {
    int rank, size;        /* this rank of a group of `size` */
    int64_t img_tokens;    /* L: image tokens of the whole image */
    int64_t block_tokens;  /* ceil(L / size): rows of one all-to-all block */
    int heads, head_dim;   /* H, Dh of the model */
    int heads_local;       /* H / size: heads this rank attends over */
} qi_ulysses;

/* The plan for rank `rank` of `size`. QI_ERR_ARG (with the reason) when size
 * does not divide heads, or there are fewer image tokens than ranks. */
qi_status qi_ulysses_plan(int size, int rank, int64_t img_tokens, int heads, int head_dim,
                          qi_ulysses *out, qi_error *err);

/* Rank r's shard of the image tokens: first global token and count. */
int64_t qi_ulysses_shard_begin(const qi_ulysses *u, int r);
int64_t qi_ulysses_shard_len(const qi_ulysses *u, int r);

/* Before attention. txt[s] [B, L_txt, H·Dh] (the same on every rank),
 * img[s] [B, len(rank), H·Dh], for s = q, k, v; fills joint[s]
 * [B, L_txt + L, H/N, Dh]. Collective: every rank of comm calls it. */
qi_status qi_ulysses_scatter_heads(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                   const qi_tensor *const txt[3], const qi_tensor *const img[3],
                                   qi_tensor *const joint[3], qi_error *err);

/* After attention: joint_out [B, L_txt + L, H/N, Dh] -> txt_out [B, L_txt, H·Dh]
 * (identical on every rank) and img_out [B, len(rank), H·Dh]. Collective. */
qi_status qi_ulysses_gather_heads(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                  const qi_tensor *joint_out, qi_tensor *txt_out,
                                  qi_tensor *img_out, qi_error *err);

/* The rank's shard rows of a whole-sequence tensor: full [B, L, C] ->
 * local [B, len(rank), C]. Local op. */
void qi_ulysses_take_shard(const qi_ulysses *u, qi_backend *be, const qi_tensor *full,
                           qi_tensor *local);

/* Every rank's shard put together: local [B, len(rank), C] -> full [B, L, C]
 * on every rank. Collective (one all-gather). */
qi_status qi_ulysses_gather_tokens(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                   const qi_tensor *local, qi_tensor *full, qi_error *err);

/* ---- CFG-parallel (× Ulysses) ------------------------------------------------------- */

/* A generation over `world` ranks: with true CFG on 2+ ranks the cond
 * prediction runs on branch 0 and the uncond one on branch 1, each branch
 * a Ulysses group of sp_size ranks. World rank w is (branch, sp_rank) =
 * (w / sp_size, w % sp_size); the Ulysses group of a branch is its sp_size
 * consecutive ranks, and the CFG pair of sp_rank k is {k, sp_size + k}
 * (its rank within the pair = the branch). */
typedef struct qi_parallel_layout {
    int world;    /* ranks in all */
    int branches; /* 2: CFG-parallel; 1: both predictions on the same ranks */
    int sp_size;  /* Ulysses ranks per branch */
} qi_parallel_layout;

/* cfg: the generation uses true CFG. A world that is odd (with CFG) or
 * whose Ulysses size does not divide heads is QI_ERR_ARG. */
qi_status qi_parallel_layout_make(int world, int cfg, int heads, qi_parallel_layout *out,
                                  qi_error *err);
static inline int qi_parallel_branch(const qi_parallel_layout *l, int world_rank) {
    return world_rank / l->sp_size;
}
static inline int qi_parallel_sp_rank(const qi_parallel_layout *l, int world_rank) {
    return world_rank % l->sp_size;
}

/* The CFG pair's exchange: cfg_comm has 2 ranks, rank 0 holding the cond
 * prediction and rank 1 the uncond one (own [B, L, C], the same tokens on
 * both). Both ranks get the true-CFG combination (backend cfg_combine,
 * scale s) in out, bit-identical on the two. Collective (one all-gather). */
qi_status qi_cfg_parallel_combine(qi_comm *cfg_comm, qi_backend *be, const qi_tensor *own, float s,
                                  qi_tensor *out, qi_error *err);

#endif

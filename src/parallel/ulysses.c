/*
 * ulysses.c — the index logic of sequence parallelism (which image tokens
 * and heads a rank owns) and the re-layouts around attention, built from
 * backend ops and communicator collectives; plus the CFG-parallel layout.
 *
 * Layouts used below (E = heads_local · Dh, the width of one head group;
 * N ranks; cap = block_tokens):
 *   scatter send/recv  [N, 3, B, cap, E]      block j = q, k, v rows for rank j
 *   gather send/recv   [N, B, L_txt + cap, E] block j = text rows, then rank j's
 *                                             image rows, of this rank's heads
 * "Head groups" of a row of H·Dh values: group g is the E values of heads
 * [g·H/N, (g+1)·H/N), contiguous.
 */
#include "parallel/ulysses.h"

#include <stdlib.h>

qi_status qi_ulysses_plan(int size, int rank, int64_t img_tokens, int heads, int head_dim,
                          qi_ulysses *out, qi_error *err) {
    if (size < 1 || size > QI_ULYSSES_MAX_RANKS || rank < 0 || rank >= size)
        return qi_fail(err, QI_ERR_ARG, "ulysses: rank %d of %d ranks (1..%d ranks)", rank, size,
                       QI_ULYSSES_MAX_RANKS);
    if (heads < 1 || head_dim < 1 || heads % size != 0)
        return qi_fail(err, QI_ERR_ARG,
                       "ulysses: %d ranks do not divide the %d attention heads; use a rank count "
                       "that divides it (for 24 heads: 1, 2, 3, 4, 6, 8, 12 or 24)", size, heads);
    if (img_tokens < size)
        return qi_fail(err, QI_ERR_ARG,
                       "ulysses: %lld image tokens cannot be shared by %d ranks (each needs one); "
                       "use a larger image or fewer ranks", (long long)img_tokens, size);
    out->rank = rank;
    out->size = size;
    out->img_tokens = img_tokens;
    out->block_tokens = (img_tokens + size - 1) / size;
    out->heads = heads;
    out->head_dim = head_dim;
    out->heads_local = heads / size;
    return QI_OK;
}

int64_t qi_ulysses_shard_begin(const qi_ulysses *u, int r) {
    return (int64_t)r * u->img_tokens / u->size;
}

int64_t qi_ulysses_shard_len(const qi_ulysses *u, int r) {
    return qi_ulysses_shard_begin(u, r + 1) - qi_ulysses_shard_begin(u, r);
}

/* ---- re-layout helpers -------------------------------------------------------------- */

/* A [d0, d1] view of t's memory starting `elem_offset` elements in. */
static qi_tensor view_at(const qi_tensor *t, int64_t elem_offset, int64_t d0, int64_t d1) {
    qi_tensor v = *t;
    v.ndim = 2;
    v.ne[0] = d0;
    v.ne[1] = d1;
    for (int i = 2; i < QI_MAX_DIMS; i++) v.ne[i] = 0;
    v.data = (char *)t->data + (size_t)elem_offset * qi_dtype_size(t->dtype);
    return v;
}

/* dst[g] [A, E] = columns [g·E, (g+1)·E) of src [A, N·E], for the groups
 * whose dst[g] is not NULL. Two transposes through scratch (≥ A·N·E):
 * [A, N·E] -> [N·E, A] = N blocks [E, A], each transposed back to [A, E]. */
static void split_head_groups(qi_backend *be, const qi_tensor *src, int N, int64_t E,
                              qi_tensor *const *dst, const qi_tensor *scratch) {
    int64_t A = src->ne[0];
    if (N == 1) {
        if (dst[0]) be->ops->copy_rows(be, src, 0, dst[0], 0, A);
        return;
    }
    qi_tensor all = view_at(scratch, 0, N * E, A);
    be->ops->transpose2d(be, src, &all);
    for (int g = 0; g < N; g++) {
        if (!dst[g]) continue;
        qi_tensor part = view_at(scratch, g * E * A, E, A);
        be->ops->transpose2d(be, &part, dst[g]);
    }
}

/* The inverse: dst [A, N·E] with columns [g·E, (g+1)·E) = src[g] [A, E]. */
static void merge_head_groups(qi_backend *be, const qi_tensor *src, int N, int64_t E, qi_tensor *dst,
                              const qi_tensor *scratch) {
    int64_t A = dst->ne[0];
    if (N == 1) {
        be->ops->copy_rows(be, &src[0], 0, dst, 0, A);
        return;
    }
    for (int g = 0; g < N; g++) {
        qi_tensor part = view_at(scratch, g * E * A, E, A);
        be->ops->transpose2d(be, &src[g], &part);
    }
    qi_tensor all = view_at(scratch, 0, N * E, A);
    be->ops->transpose2d(be, &all, dst);
}

static qi_status check_seq(const qi_ulysses *u, const char *what, const qi_tensor *t, int64_t B,
                           int64_t L, int64_t D, qi_error *err) {
    if (t->ndim == 3 && t->ne[0] == B && t->ne[1] == L && t->ne[2] == D) return QI_OK;
    char s[64];
    return qi_fail(err, QI_ERR_ARG, "ulysses rank %d/%d: %s is %s, expected [%lld, %lld, %lld]",
                   u->rank, u->size, what, qi_shape_str(t, s, sizeof s), (long long)B, (long long)L,
                   (long long)D);
}

static qi_status check_joint(const qi_ulysses *u, const char *what, const qi_tensor *t, int64_t B,
                             int64_t Lj, qi_error *err) {
    if (t->ndim == 4 && t->ne[0] == B && t->ne[1] == Lj && t->ne[2] == u->heads_local &&
        t->ne[3] == u->head_dim)
        return QI_OK;
    char s[64];
    return qi_fail(err, QI_ERR_ARG, "ulysses rank %d/%d: %s is %s, expected [%lld, %lld, %d, %d]",
                   u->rank, u->size, what, qi_shape_str(t, s, sizeof s), (long long)B,
                   (long long)Lj, u->heads_local, u->head_dim);
}

/* ---- around attention ------------------------------------------------------------------ */

qi_status qi_ulysses_scatter_heads(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                   const qi_tensor *const txt[3], const qi_tensor *const img[3],
                                   qi_tensor *const joint[3], qi_error *err) {
    const int N = u->size;
    const int64_t D = (int64_t)u->heads * u->head_dim, E = (int64_t)u->heads_local * u->head_dim;
    const int64_t B = txt[0]->ne[0], Lt = txt[0]->ne[1], Lloc = qi_ulysses_shard_len(u, u->rank);
    const int64_t Lj = Lt + u->img_tokens, cap = u->block_tokens;
    if (!comm || comm->size != N || comm->rank != u->rank)
        return qi_fail(err, QI_ERR_ARG, "ulysses: the plan (rank %d of %d) does not match the "
                       "communicator", u->rank, N);
    qi_status st = QI_OK;
    for (int s = 0; s < 3 && st == QI_OK; s++) {
        st = check_seq(u, "text q/k/v", txt[s], B, Lt, D, err);
        if (st == QI_OK) st = check_seq(u, "image q/k/v", img[s], B, Lloc, D, err);
        if (st == QI_OK) st = check_joint(u, "joint q/k/v", joint[s], B, Lj, err);
    }
    if (st != QI_OK) return st;

    size_t mark = be->ops->mark(be);
    qi_tensor send, recv, scratch;
    int64_t ne[5] = {N, 3, B, cap, E};
    int64_t longest = Lt > Lloc ? Lt : Lloc;
    st = qi_be_act(be, &send, 5, ne, err);
    if (st == QI_OK) st = qi_be_act(be, &recv, 5, ne, err);
    if (st == QI_OK) st = qi_be_act2(be, &scratch, longest, D, err);
    if (st != QI_OK) {
        be->ops->reset(be, mark);
        return st;
    }
    qi_tensor views[QI_ULYSSES_MAX_RANKS], *dst[QI_ULYSSES_MAX_RANKS]; /* one per head group */

    for (int s = 0; s < 3; s++)
        for (int64_t b = 0; b < B; b++) {
            /* image rows of this rank, split by head group into each rank's block */
            qi_tensor rows = view_at(img[s], b * Lloc * D, Lloc, D);
            for (int j = 0; j < N; j++) {
                views[j] = view_at(&send, (((int64_t)j * 3 + s) * B + b) * cap * E, Lloc, E);
                dst[j] = &views[j];
            }
            split_head_groups(be, &rows, N, E, dst, &scratch);

            /* text rows: every rank has them all, so it keeps only its own heads */
            qi_tensor text = view_at(txt[s], b * Lt * D, Lt, D);
            for (int j = 0; j < N; j++) dst[j] = NULL;
            views[u->rank] = view_at(joint[s], b * Lj * E, Lt, E);
            dst[u->rank] = &views[u->rank];
            split_head_groups(be, &text, N, E, dst, &scratch);
        }

    st = qi_comm_all_to_all_tensor(comm, be, &send, &recv, err);

    /* block i of recv: rank i's image rows of our heads -> their global place */
    for (int i = 0; i < N && st == QI_OK; i++) {
        int64_t begin = qi_ulysses_shard_begin(u, i), len = qi_ulysses_shard_len(u, i);
        for (int s = 0; s < 3; s++) {
            qi_tensor from = view_at(&recv, 0, (int64_t)N * 3 * B * cap, E);
            qi_tensor to = view_at(joint[s], 0, B * Lj, E);
            for (int64_t b = 0; b < B; b++)
                be->ops->copy_rows(be, &from, (((int64_t)i * 3 + s) * B + b) * cap, &to,
                                   b * Lj + Lt + begin, len);
        }
    }
    be->ops->reset(be, mark); /* ops queued later reuse it after these (stream order) */
    return st;
}

qi_status qi_ulysses_gather_heads(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                  const qi_tensor *joint_out, qi_tensor *txt_out,
                                  qi_tensor *img_out, qi_error *err) {
    const int N = u->size;
    const int64_t D = (int64_t)u->heads * u->head_dim, E = (int64_t)u->heads_local * u->head_dim;
    const int64_t B = joint_out->ne[0], Lj = joint_out->ne[1], Lt = Lj - u->img_tokens;
    const int64_t Lloc = qi_ulysses_shard_len(u, u->rank), cap = u->block_tokens;
    const int64_t block_rows = Lt + cap; /* per batch item in one block: text, then image */
    if (!comm || comm->size != N || comm->rank != u->rank)
        return qi_fail(err, QI_ERR_ARG, "ulysses: the plan (rank %d of %d) does not match the "
                       "communicator", u->rank, N);
    qi_status st = Lt >= 0 ? check_joint(u, "attention output", joint_out, B, Lj, err)
                           : qi_fail(err, QI_ERR_ARG, "ulysses: attention output shorter than the image");
    if (st == QI_OK) st = check_seq(u, "text output", txt_out, B, Lt, D, err);
    if (st == QI_OK) st = check_seq(u, "image output", img_out, B, Lloc, D, err);
    if (st != QI_OK) return st;

    size_t mark = be->ops->mark(be);
    qi_tensor send, recv, scratch;
    int64_t ne[4] = {N, B, block_rows, E};
    int64_t longest = Lt > Lloc ? Lt : Lloc;
    st = qi_be_act(be, &send, 4, ne, err);
    if (st == QI_OK) st = qi_be_act(be, &recv, 4, ne, err);
    if (st == QI_OK) st = qi_be_act2(be, &scratch, longest > 0 ? longest : 1, D, err);
    if (st != QI_OK) {
        be->ops->reset(be, mark);
        return st;
    }

    /* block j = for each batch item: our heads' text output (every rank needs
     * all heads of the text), then rank j's image rows */
    qi_tensor from = view_at(joint_out, 0, B * Lj, E);
    qi_tensor to = view_at(&send, 0, (int64_t)N * B * block_rows, E);
    for (int j = 0; j < N; j++) {
        int64_t begin = qi_ulysses_shard_begin(u, j), len = qi_ulysses_shard_len(u, j);
        for (int64_t b = 0; b < B; b++) {
            int64_t row = ((int64_t)j * B + b) * block_rows;
            if (Lt > 0) be->ops->copy_rows(be, &from, b * Lj, &to, row, Lt);
            be->ops->copy_rows(be, &from, b * Lj + Lt + begin, &to, row + Lt, len);
        }
    }

    st = qi_comm_all_to_all_tensor(comm, be, &send, &recv, err);

    /* block g of recv: head group g's output for the text and our image rows */
    qi_tensor groups[QI_ULYSSES_MAX_RANKS];
    for (int64_t b = 0; b < B && st == QI_OK; b++) {
        if (Lt > 0) {
            for (int g = 0; g < N; g++)
                groups[g] = view_at(&recv, ((int64_t)g * B + b) * block_rows * E, Lt, E);
            qi_tensor text = view_at(txt_out, b * Lt * D, Lt, D);
            merge_head_groups(be, groups, N, E, &text, &scratch);
        }
        for (int g = 0; g < N; g++)
            groups[g] = view_at(&recv, (((int64_t)g * B + b) * block_rows + Lt) * E, Lloc, E);
        qi_tensor image = view_at(img_out, b * Lloc * D, Lloc, D);
        merge_head_groups(be, groups, N, E, &image, &scratch);
    }
    be->ops->reset(be, mark);
    return st;
}

/* ---- whole-sequence tensors ----------------------------------------------------------------- */

void qi_ulysses_take_shard(const qi_ulysses *u, qi_backend *be, const qi_tensor *full,
                           qi_tensor *local) {
    int64_t B = full->ne[0], C = full->ne[full->ndim - 1];
    int64_t begin = qi_ulysses_shard_begin(u, u->rank), len = qi_ulysses_shard_len(u, u->rank);
    qi_tensor from = view_at(full, 0, B * u->img_tokens, C), to = view_at(local, 0, B * len, C);
    for (int64_t b = 0; b < B; b++)
        be->ops->copy_rows(be, &from, b * u->img_tokens + begin, &to, b * len, len);
}

qi_status qi_ulysses_gather_tokens(const qi_ulysses *u, qi_comm *comm, qi_backend *be,
                                   const qi_tensor *local, qi_tensor *full, qi_error *err) {
    int64_t B = full->ne[0], C = full->ne[full->ndim - 1], cap = u->block_tokens;
    int64_t len = qi_ulysses_shard_len(u, u->rank);
    qi_status st = check_seq(u, "whole sequence", full, B, u->img_tokens, C, err);
    if (st == QI_OK) st = check_seq(u, "shard", local, B, len, C, err);
    if (st != QI_OK) return st;
    size_t mark = be->ops->mark(be);
    qi_tensor send, recv;
    st = qi_be_act3(be, &send, B, cap, C, err);
    int64_t ne[4] = {u->size, B, cap, C};
    if (st == QI_OK) st = qi_be_act(be, &recv, 4, ne, err);
    if (st == QI_OK) {
        qi_tensor from = view_at(local, 0, B * len, C), to = view_at(&send, 0, B * cap, C);
        for (int64_t b = 0; b < B; b++) be->ops->copy_rows(be, &from, b * len, &to, b * cap, len);
        st = qi_comm_all_gather_tensor(comm, be, &send, &recv, err);
    }
    if (st == QI_OK) {
        qi_tensor from = view_at(&recv, 0, (int64_t)u->size * B * cap, C);
        qi_tensor to = view_at(full, 0, B * u->img_tokens, C);
        for (int r = 0; r < u->size; r++)
            for (int64_t b = 0; b < B; b++)
                be->ops->copy_rows(be, &from, ((int64_t)r * B + b) * cap, &to,
                                   b * u->img_tokens + qi_ulysses_shard_begin(u, r),
                                   qi_ulysses_shard_len(u, r));
    }
    be->ops->reset(be, mark);
    return st;
}

/* ---- CFG-parallel ------------------------------------------------------------------------ */

qi_status qi_parallel_layout_make(int world, int cfg, int heads, qi_parallel_layout *out,
                                  qi_error *err) {
    if (world < 1) return qi_fail(err, QI_ERR_ARG, "parallel layout: %d ranks", world);
    int branches = cfg && world >= 2 ? 2 : 1;
    if (world % branches != 0)
        return qi_fail(err, QI_ERR_ARG,
                       "parallel layout: %d devices with true CFG: cond and uncond need the same "
                       "number of devices each; use an even count", world);
    int sp = world / branches;
    if (heads < 1 || heads % sp != 0)
        return qi_fail(err, QI_ERR_ARG,
                       "parallel layout: %d devices per %s give %d sequence-parallel ranks, which do "
                       "not divide the %d attention heads", world, branches == 2 ? "CFG branch" : "image",
                       sp, heads);
    out->world = world;
    out->branches = branches;
    out->sp_size = sp;
    return QI_OK;
}

qi_status qi_cfg_parallel_combine(qi_comm *cfg_comm, qi_backend *be, const qi_tensor *own, float s,
                                  qi_tensor *out, qi_error *err) {
    if (!cfg_comm || cfg_comm->size != 2)
        return qi_fail(err, QI_ERR_ARG, "CFG-parallel: the CFG pair communicator must have 2 ranks");
    if (qi_numel(own) != qi_numel(out) || own->dtype != out->dtype)
        return qi_fail(err, QI_ERR_ARG, "CFG-parallel: prediction and output differ in size or type");
    size_t mark = be->ops->mark(be);
    qi_tensor both;
    int64_t ne[2] = {2, qi_numel(own)};
    qi_status st = qi_be_act(be, &both, 2, ne, err);
    if (st == QI_OK) st = qi_comm_all_gather_tensor(cfg_comm, be, own, &both, err);
    if (st == QI_OK) {
        /* row 0 came from the cond branch (pair rank 0), row 1 from uncond */
        int64_t C = out->ne[out->ndim - 1], rows = qi_numel(own) / C;
        qi_tensor cond = view_at(&both, 0, rows, C), uncond = view_at(&both, rows * C, rows, C);
        qi_tensor o = view_at(out, 0, rows, C);
        be->ops->cfg_combine(be, &cond, &uncond, s, &o);
    }
    be->ops->reset(be, mark);
    return st;
}

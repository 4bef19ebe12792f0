/*
 * test_parallel.c — sequence parallelism (Ulysses) and CFG-parallel, proven
 * without several GPUs: N ranks simulated as N threads of this process, each
 * with its own CPU backend (1 thread) and its own transformer bound to the
 * same weights, talking through the in-process communicator (local_comm.c).
 *
 * Claims: the shard / layout index logic; the communicator's collectives
 * (and that a failing rank releases the others); the all-to-all re-layouts
 * round-trip on synthetic data with uneven shards and a batch; every
 * transformer call of every public case on 1, 2 and 4 ranks equals the
 * single-device qi_dit_forward; and whole denoising loops — CFG-parallel on
 * 2 ranks, CFG x Ulysses on 4, Ulysses alone on 2 and 4 — reproduce the
 * single-device loop and the reference vae_in. NCCL is loaded at run time
 * or refused by name; in CUDA builds on a machine with a GPU, a 1-rank NCCL
 * communicator and 2 / 4 ranks sharing the GPU run the same calls on CUDA
 * backends against the single-GPU forward.
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/dit.h"
#include "model/lora.h"
#include "parallel/comm.h"
#include "parallel/ulysses.h"
#include "sample/latents.h"
#include "test.h"

#define PUBLIC QI_SHARED_DIR "/reference/public"
#define TRANSFORMER_DIR PUBLIC "/model/transformer"
#define REF_LORA PUBLIC "/lora.safetensors"
#define ARENA ((size_t)512 << 20)
#define MAX_RANKS 8

static const char *const CASES[] = {"zh_cfg4_base", "en_lightning8_lora", "batch2_lightning4_lora"};

/* ---- threads ------------------------------------------------------------------- */

typedef struct rank_thread {
    void *(*fn)(void *);
    void *arg;
} rank_thread;

/* A rank's thread. OpenBLAS's OpenMP build sizes each call by the calling
 * thread's omp_get_max_threads(), and a new thread starts at the process
 * default (all cores), not at the 1 its backend was created with: set it,
 * so each rank computes with one thread like the single-device run. */
static void *rank_thread_main(void *p) {
    rank_thread *t = p;
    omp_set_num_threads(1);
    return t->fn(t->arg);
}

/* Runs fn(args + i·arg_size) on n threads and waits for all. */
static void run_ranks(int n, void *(*fn)(void *), void *args, size_t arg_size) {
    pthread_t th[MAX_RANKS];
    rank_thread t[MAX_RANKS];
    for (int i = 0; i < n; i++) {
        t[i] = (rank_thread){fn, (char *)args + (size_t)i * arg_size};
        pthread_create(&th[i], NULL, rank_thread_main, &t[i]);
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static qi_backend *new_backend(void) {
    qi_backend *be = NULL;
    qi_error err;
    if (qi_backend_cpu_create(1, ARENA, &be, &err) != QI_OK) fprintf(stderr, "  %s\n", err.msg);
    return be;
}

/* Where the ranks of a run compute: CPU backends, or CUDA backends all on
 * GPU 0 (several ranks share the one GPU; only the communicator differs). */
static qi_backend *(*make_backend)(void) = new_backend;

/* The tiny transformer folder, open for the whole run (the ranks' loads share it). */
static qi_source *g_src;

static qi_dit *load_dit(qi_backend *be, int with_lora) {
    qi_error err;
    qi_lora_set *loras = NULL;
    if (with_lora && qi_lora_set_add(&loras, REF_LORA, 1.0f, &err) != QI_OK) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    qi_dit *d = NULL;
    if (qi_dit_load(g_src, be, loras, &d, &err) != QI_OK) fprintf(stderr, "  %s\n", err.msg);
    qi_lora_set_free(loras);
    return d;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* ---- index logic ---------------------------------------------------------------- */

static void shards_cover_the_image_once_and_differ_by_one_at_most(void) {
    const int64_t lengths[] = {1, 4, 5, 7, 32, 48, 4096, 6889}; /* 6889 = 83², 1328² images */
    const int sizes[] = {1, 2, 3, 4, 6, 8};
    for (size_t li = 0; li < QI_ARRAY_LEN(lengths); li++)
        for (size_t si = 0; si < QI_ARRAY_LEN(sizes); si++) {
            int N = sizes[si];
            int64_t L = lengths[li];
            qi_ulysses u;
            qi_error err;
            qi_status st = qi_ulysses_plan(N, 0, L, 24, 128, &u, &err);
            if (L < N) {
                CHECK(st == QI_ERR_ARG && strstr(err.msg, "image tokens"), "L=%lld N=%d: %s",
                      (long long)L, N, err.msg);
                continue;
            }
            CHECK(st == QI_OK, "L=%lld N=%d: %s", (long long)L, N, err.msg);
            int64_t next = 0, lo = L, hi = 0;
            for (int r = 0; r < N; r++) {
                int64_t b = qi_ulysses_shard_begin(&u, r), n = qi_ulysses_shard_len(&u, r);
                CHECK(b == next, "L=%lld N=%d rank %d starts at %lld, expected %lld", (long long)L, N,
                      r, (long long)b, (long long)next);
                CHECK(n >= 1 && n <= u.block_tokens, "rank %d holds %lld (block %lld)", r,
                      (long long)n, (long long)u.block_tokens);
                next = b + n;
                lo = n < lo ? n : lo;
                hi = n > hi ? n : hi;
            }
            CHECK(next == L && hi - lo <= 1 && u.block_tokens == (L + N - 1) / N,
                  "L=%lld N=%d: covered %lld, shards %lld..%lld", (long long)L, N, (long long)next,
                  (long long)lo, (long long)hi);
            CHECK(u.heads_local == 24 / N, "heads per rank %d", u.heads_local);
        }
    qi_ulysses u;
    qi_error err;
    CHECK(qi_ulysses_plan(5, 0, 4096, 24, 128, &u, &err) == QI_ERR_ARG && strstr(err.msg, "24"),
          "5 ranks over 24 heads must be refused by name: %s", err.msg);
    printf("  e.g. %s\n", err.msg);
    CHECK(qi_ulysses_plan(2, 2, 4096, 24, 128, &u, &err) == QI_ERR_ARG, "rank 2 of 2");
}

static void layouts_put_cond_and_uncond_on_separate_branches(void) {
    qi_parallel_layout l;
    qi_error err;
    CHECK(qi_parallel_layout_make(4, 1, 24, &l, &err) == QI_OK && l.branches == 2 && l.sp_size == 2,
          "4 ranks with CFG: 2 branches of 2 (%d x %d)", l.branches, l.sp_size);
    CHECK(qi_parallel_branch(&l, 0) == 0 && qi_parallel_branch(&l, 1) == 0 &&
              qi_parallel_branch(&l, 2) == 1 && qi_parallel_sp_rank(&l, 3) == 1,
          "rank -> (branch, sp rank)");
    CHECK(qi_parallel_layout_make(8, 1, 24, &l, &err) == QI_OK && l.sp_size == 4, "8 with CFG");
    CHECK(qi_parallel_layout_make(8, 0, 24, &l, &err) == QI_OK && l.branches == 1 && l.sp_size == 8,
          "8 without CFG: Ulysses over all 8");
    CHECK(qi_parallel_layout_make(1, 1, 24, &l, &err) == QI_OK && l.branches == 1 && l.sp_size == 1,
          "1 rank: both predictions on it");
    CHECK(qi_parallel_layout_make(3, 1, 24, &l, &err) == QI_ERR_ARG, "3 ranks with CFG");
    printf("  e.g. %s\n", err.msg);
    CHECK(qi_parallel_layout_make(10, 1, 24, &l, &err) == QI_ERR_ARG && strstr(err.msg, "24"),
          "5 Ulysses ranks do not divide 24 heads: %s", err.msg);
}

/* ---- communicator ----------------------------------------------------------------- */

typedef struct comm_rank {
    qi_comm *comm;
    int ok_a2a, ok_gather, mismatch_refused;
} comm_rank;

static void *comm_rank_main(void *p) {
    comm_rank *r = p;
    int n = r->comm->size, me = r->comm->rank;
    qi_error err;
    /* all_to_all: send block j = {100·me + j, -(100·me + j)}; recv block i must be {100·i + me, ...} */
    int32_t send[2 * MAX_RANKS] = {0}, recv[2 * MAX_RANKS] = {0};
    for (int j = 0; j < n; j++) {
        send[2 * j] = 100 * me + j;
        send[2 * j + 1] = -(100 * me + j);
    }
    r->ok_a2a = r->comm->ops->all_to_all(r->comm, send, recv, 2 * sizeof(int32_t), NULL, &err) == QI_OK;
    for (int i = 0; i < n; i++)
        r->ok_a2a &= recv[2 * i] == 100 * i + me && recv[2 * i + 1] == -(100 * i + me);
    int32_t mine = 7 * me + 1, all[MAX_RANKS];
    r->ok_gather = r->comm->ops->all_gather(r->comm, &mine, all, sizeof mine, NULL, &err) == QI_OK;
    for (int i = 0; i < n; i++) r->ok_gather &= all[i] == 7 * i + 1;
    r->ok_gather &= qi_comm_barrier(r->comm, &err) == QI_OK;
    /* rank 0 passes another block size: every rank must get the error */
    size_t bytes = me == 0 ? 2 * sizeof(int32_t) : sizeof(int32_t);
    r->mismatch_refused = r->comm->ops->all_gather(r->comm, send, recv, bytes, NULL, &err) == QI_ERR_ARG;
    return NULL;
}

typedef struct abort_rank {
    qi_comm *comm;
    qi_status st;
    qi_error err;
} abort_rank;

static void *abort_rank_main(void *p) {
    abort_rank *r = p;
    if (r->comm->rank == 1) {
        qi_comm_abort(r->comm); /* rank 1 "fails" instead of joining the collective */
        r->st = QI_ERR_BACKEND;
        return NULL;
    }
    float x = 1, y[4];
    r->st = r->comm->ops->all_gather(r->comm, &x, y, sizeof x, NULL, &r->err);
    return NULL;
}

static void local_comm_collectives_and_abort(void) {
    for (int n = 1; n <= 4; n++) {
        qi_comm *comms[MAX_RANKS];
        qi_error err;
        CHECK(qi_local_comm_create(n, comms, &err) == QI_OK, "%s", err.msg);
        comm_rank ranks[MAX_RANKS];
        for (int i = 0; i < n; i++) ranks[i] = (comm_rank){.comm = comms[i]};
        run_ranks(n, comm_rank_main, ranks, sizeof ranks[0]);
        for (int i = 0; i < n; i++) {
            CHECK(ranks[i].ok_a2a, "%d ranks: all_to_all wrong on rank %d", n, i);
            CHECK(ranks[i].ok_gather, "%d ranks: all_gather/barrier wrong on rank %d", n, i);
            CHECK(ranks[i].mismatch_refused || n == 1, "%d ranks: rank %d accepted mismatched blocks", n, i);
        }
        for (int i = 0; i < n; i++) qi_comm_destroy(comms[i]);
    }
    /* 3 ranks, rank 1 aborts: ranks 0 and 2 return an error instead of hanging */
    qi_comm *comms[3];
    qi_error err;
    CHECK(qi_local_comm_create(3, comms, &err) == QI_OK, "%s", err.msg);
    abort_rank ranks[3];
    for (int i = 0; i < 3; i++) ranks[i] = (abort_rank){.comm = comms[i]};
    run_ranks(3, abort_rank_main, ranks, sizeof ranks[0]);
    CHECK(ranks[0].st == QI_ERR_BACKEND && ranks[2].st == QI_ERR_BACKEND, "aborted group: %d %d",
          ranks[0].st, ranks[2].st);
    printf("  after an abort: %s\n", ranks[0].err.msg);
    for (int i = 0; i < 3; i++) qi_comm_destroy(comms[i]);
}

/* ---- re-layout round trip on synthetic data ------------------------------------------- */

/* Values that say where they come from: stream s (0 q, 1 k, 2 v; 3 text + s),
 * batch b, global token l, head h, dim e. */
static float tag(int s, int64_t b, int64_t l, int64_t h, int64_t e) {
    return (float)(((s * 8 + b) * 100 + l) * 1000 + h * 10 + e);
}

typedef struct relayout_rank {
    qi_comm *comm;
    int64_t B, Lt, L;
    int H, Dh;
    int scatter_ok, text_ok, image_ok;
    qi_error err;
} relayout_rank;

static void *relayout_rank_main(void *p) {
    relayout_rank *r = p;
    qi_backend *be = new_backend();
    if (!be) return NULL;
    qi_ulysses u;
    int N = r->comm->size, me = r->comm->rank;
    int64_t B = r->B, Lt = r->Lt, L = r->L, H = r->H, Dh = r->Dh, D = H * Dh, Lj = Lt + L;
    if (qi_ulysses_plan(N, me, L, r->H, r->Dh, &u, &r->err) != QI_OK) {
        qi_comm_abort(r->comm);
        be->ops->destroy(be);
        return NULL;
    }
    int64_t begin = qi_ulysses_shard_begin(&u, me), len = qi_ulysses_shard_len(&u, me);
    int Hl = u.heads_local;
    qi_tensor txt[3], img[3], joint[3], txt_out, img_out;
    const qi_tensor *txt_in[3] = {&txt[0], &txt[1], &txt[2]}, *img_in[3] = {&img[0], &img[1], &img[2]};
    qi_tensor *joint_out[3] = {&joint[0], &joint[1], &joint[2]};
    float *host = malloc((size_t)(B * Lj * D) * sizeof *host);
    qi_status st = QI_OK;
    for (int s = 0; s < 3 && st == QI_OK; s++) {
        st = qi_be_act3(be, &txt[s], B, Lt, D, &r->err);
        if (st == QI_OK) st = qi_be_act3(be, &img[s], B, len, D, &r->err);
        if (st == QI_OK) st = qi_be_act4(be, &joint[s], B, Lj, Hl, Dh, &r->err);
        for (int64_t b = 0; b < B; b++)
            for (int64_t l = 0; l < Lt; l++)
                for (int64_t i = 0; i < D; i++) host[(b * Lt + l) * D + i] = tag(3 + s, b, l, i / Dh, i % Dh);
        if (st == QI_OK) st = be->ops->upload(be, &txt[s], host, &r->err);
        for (int64_t b = 0; b < B; b++)
            for (int64_t l = 0; l < len; l++)
                for (int64_t i = 0; i < D; i++)
                    host[(b * len + l) * D + i] = tag(s, b, begin + l, i / Dh, i % Dh);
        if (st == QI_OK) st = be->ops->upload(be, &img[s], host, &r->err);
    }
    if (st == QI_OK) st = qi_be_act3(be, &txt_out, B, Lt, D, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &img_out, B, len, D, &r->err);
    if (st == QI_OK) st = qi_ulysses_scatter_heads(&u, r->comm, be, txt_in, img_in, joint_out, &r->err);
    /* joint[s][b, j, hl, e] = text (j < Lt) or image token j - Lt, head me·Hl + hl */
    r->scatter_ok = st == QI_OK;
    for (int s = 0; s < 3 && st == QI_OK; s++) {
        be->ops->download(be, &joint[s], host, &r->err);
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < Lj; j++)
                for (int64_t hl = 0; hl < Hl; hl++)
                    for (int64_t e = 0; e < Dh; e++) {
                        int64_t h = (int64_t)me * Hl + hl;
                        float want = j < Lt ? tag(3 + s, b, j, h, e) : tag(s, b, j - Lt, h, e);
                        r->scatter_ok &= host[((b * Lj + j) * Hl + hl) * Dh + e] == want;
                    }
    }
    /* gather the joint v back: all heads of the whole text and of our image rows */
    if (st == QI_OK) st = qi_ulysses_gather_heads(&u, r->comm, be, &joint[2], &txt_out, &img_out, &r->err);
    r->text_ok = r->image_ok = st == QI_OK;
    if (st == QI_OK) {
        be->ops->download(be, &txt_out, host, &r->err);
        for (int64_t i = 0; i < B * Lt * D; i++) {
            int64_t b = i / (Lt * D), l = i / D % Lt, h = i % D / Dh, e = i % Dh;
            r->text_ok &= host[i] == tag(5, b, l, h, e);
        }
        be->ops->download(be, &img_out, host, &r->err);
        for (int64_t i = 0; i < B * len * D; i++) {
            int64_t b = i / (len * D), l = i / D % len, h = i % D / Dh, e = i % Dh;
            r->image_ok &= host[i] == tag(2, b, begin + l, h, e);
        }
    }
    if (st != QI_OK) qi_comm_abort(r->comm);
    free(host);
    be->ops->destroy(be);
    return NULL;
}

static void all_to_all_relayouts_round_trip_with_uneven_shards(void) {
    /* 7 image tokens: shards 3+4 on 2 ranks, 1+2+2+2 on 4 (padded to blocks of 2 and 4) */
    const int sizes[] = {1, 2, 4};
    for (size_t k = 0; k < QI_ARRAY_LEN(sizes); k++) {
        int N = sizes[k];
        qi_comm *comms[MAX_RANKS];
        qi_error err;
        CHECK(qi_local_comm_create(N, comms, &err) == QI_OK, "%s", err.msg);
        relayout_rank ranks[MAX_RANKS];
        for (int i = 0; i < N; i++)
            ranks[i] = (relayout_rank){.comm = comms[i], .B = 2, .Lt = 3, .L = 7, .H = 4, .Dh = 6};
        run_ranks(N, relayout_rank_main, ranks, sizeof ranks[0]);
        for (int i = 0; i < N; i++) {
            CHECK(ranks[i].scatter_ok, "N=%d rank %d: joint q/k/v hold the wrong heads/tokens (%s)", N,
                  i, ranks[i].err.msg);
            CHECK(ranks[i].text_ok, "N=%d rank %d: gathered text is not all heads of the text", N, i);
            CHECK(ranks[i].image_ok, "N=%d rank %d: gathered image rows are not its shard", N, i);
        }
        printf("  N=%d: B=2, 3 text + 7 image tokens, 4 heads: scatter and gather exact on every rank\n", N);
        for (int i = 0; i < N; i++) qi_comm_destroy(comms[i]);
    }
}

/* ---- reference cases ---------------------------------------------------------------- */

typedef struct ref_case {
    char name[64];
    int height, width, lora, calls, steps;
    double cfg;
    qi_st_set *ref;
} ref_case;

static int open_case(const char *name, ref_case *c) {
    char path[512];
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/%s/case.json", PUBLIC, name);
    cJSON *j;
    qi_error err;
    if (qi_json_load(path, &j, &err) != QI_OK) return -1;
    snprintf(c->name, sizeof c->name, "%s", name);
    int ok = qi_json_get_int(j, "height", path, &c->height, &err) == QI_OK &&
             qi_json_get_int(j, "width", path, &c->width, &err) == QI_OK &&
             qi_json_get_bool(j, "lora", path, &c->lora, &err) == QI_OK &&
             qi_json_get_int(j, "steps", path, &c->steps, &err) == QI_OK &&
             qi_json_get_double(j, "cfg", path, &c->cfg, &err) == QI_OK &&
             qi_json_get_int(j, "transformer_calls", path, &c->calls, &err) == QI_OK;
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/%s/tensors.safetensors", PUBLIC, name);
    if (ok && qi_st_set_open_file(path, &c->ref, &err) != QI_OK) ok = 0;
    if (!ok) fprintf(stderr, "  %s\n", err.msg);
    return ok ? 0 : -1;
}

static const qi_st_tensor *call_tensor(const ref_case *c, int call, const char *what) {
    char k[96];
    snprintf(k, sizeof k, "call%d.%s", call, what);
    return qi_st_find(c->ref, k);
}

/* The padding mask of a call's text, or NULL when it has none. */
static const qi_st_tensor *call_mask(const ref_case *c, int call) {
    const qi_st_tensor *m = call_tensor(c, call, "encoder_hidden_states_mask");
    if (!m) m = qi_st_find(c->ref, "prompt_embeds_mask");
    const qi_st_tensor *ehs = call_tensor(c, call, "encoder_hidden_states");
    return m && ehs && m->shape[1] == ehs->shape[1] ? m : NULL;
}

static qi_status upload_new(qi_backend *be, const qi_st_tensor *t, qi_tensor *out, qi_error *err) {
    int64_t ne[QI_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) ne[i] = t->shape[i];
    qi_status st = be->ops->tensor(be, out, t->dtype == QI_I32 ? QI_I32 : be->act_dtype, t->ndim, ne, err);
    return st == QI_OK ? be->ops->upload(be, out, t->data, err) : st;
}

/* ---- one transformer call on N ranks ---------------------------------------------------- */

typedef struct call_rank {
    const ref_case *c;
    qi_comm *comm;
    qi_backend *be;
    qi_dit *dit;
    float *out;      /* [calls][B, L, C]: this rank writes its shard rows */
    qi_status st;
    qi_error err;
} call_rank;

static qi_status sp_call(call_rank *r, int call) {
    const ref_case *c = r->c;
    qi_backend *be = r->be;
    const qi_st_tensor *hs = call_tensor(c, call, "hidden_states"), *ts = call_tensor(c, call, "timestep");
    const qi_st_tensor *ehs = call_tensor(c, call, "encoder_hidden_states"), *mask = call_mask(c, call);
    int grid_h = c->height / 16, grid_w = c->width / 16;
    int64_t B = hs->shape[0], L = hs->shape[1], C = hs->shape[2];
    qi_ulysses u;
    const qi_dit_config *cfg = qi_dit_get_config(r->dit);
    qi_status st = qi_ulysses_plan(r->comm->size, r->comm->rank, L, cfg->num_heads, cfg->head_dim, &u,
                                   &r->err);
    if (st != QI_OK) return st;
    int64_t len = qi_ulysses_shard_len(&u, u.rank), begin = qi_ulysses_shard_begin(&u, u.rank);
    size_t mark = be->ops->mark(be);
    qi_tensor x_full, x, ctx, cmask, out;
    st = upload_new(be, hs, &x_full, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &x, B, len, C, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &out, B, len, C, &r->err);
    if (st == QI_OK) st = upload_new(be, ehs, &ctx, &r->err);
    if (st == QI_OK && mask) st = upload_new(be, mask, &cmask, &r->err);
    if (st == QI_OK) {
        qi_ulysses_take_shard(&u, be, &x_full, &x);
        st = qi_dit_forward_sp(r->dit, r->comm, &x, &ctx, mask ? &cmask : NULL, ts->data, grid_h,
                               grid_w, &out, &r->err);
    }
    float *host = malloc((size_t)(B * len * C) * sizeof *host);
    if (st == QI_OK) st = be->ops->download(be, &out, host, &r->err);
    for (int64_t b = 0; st == QI_OK && b < B; b++)
        memcpy(r->out + ((size_t)call * B * L + b * L + begin) * C, host + b * len * C,
               (size_t)(len * C) * sizeof *host);
    free(host);
    be->ops->reset(be, mark);
    return st;
}

static void *call_rank_main(void *p) {
    call_rank *r = p;
    for (int i = 0; i < r->c->calls && r->st == QI_OK; i++) r->st = sp_call(r, i);
    if (r->st != QI_OK) qi_comm_abort(r->comm);
    return NULL;
}

/* Makes the n communicators of a run. */
typedef qi_status (*comm_factory)(int n, qi_comm **comms, qi_error *err);

/* Every call of a case: qi_dit_forward on one backend, then qi_dit_forward_sp
 * on each of the rank counts, outputs put together and compared (rel L2 at
 * most tol). */
static void sp_calls_match_single_device_on(const char *name, const int *sizes, int n_sizes,
                                            comm_factory make_comms, double tol) {
    ref_case c;
    if (open_case(name, &c) != 0) {
        CHECK(0, "case %s readable", name);
        return;
    }
    const qi_st_tensor *hs0 = call_tensor(&c, 0, "hidden_states");
    size_t per_call = (size_t)(hs0->shape[0] * hs0->shape[1] * hs0->shape[2]);
    float *single = malloc(per_call * (size_t)c.calls * sizeof *single);
    float *sharded = malloc(per_call * (size_t)c.calls * sizeof *sharded);

    /* single device */
    qi_backend *be = make_backend();
    qi_dit *d = be ? load_dit(be, c.lora) : NULL;
    CHECK(d != NULL, "single-device transformer loads");
    for (int i = 0; d && i < c.calls; i++) {
        const qi_st_tensor *hs = call_tensor(&c, i, "hidden_states"), *ts = call_tensor(&c, i, "timestep");
        const qi_st_tensor *ehs = call_tensor(&c, i, "encoder_hidden_states"), *mask = call_mask(&c, i);
        qi_error err;
        size_t mark = be->ops->mark(be);
        qi_tensor x, ctx, cmask, out;
        qi_status st = upload_new(be, hs, &x, &err);
        if (st == QI_OK) st = upload_new(be, ehs, &ctx, &err);
        if (st == QI_OK && mask) st = upload_new(be, mask, &cmask, &err);
        if (st == QI_OK) st = qi_be_act3(be, &out, hs->shape[0], hs->shape[1], hs->shape[2], &err);
        if (st == QI_OK)
            st = qi_dit_forward(d, &x, &ctx, mask ? &cmask : NULL, ts->data, c.height / 16, c.width / 16,
                                &out, &err);
        if (st == QI_OK) st = be->ops->download(be, &out, single + (size_t)i * per_call, &err);
        CHECK(st == QI_OK, "%s call %d single device: %s", name, i, err.msg);
        be->ops->reset(be, mark);
    }
    const qi_st_tensor *np0 = call_tensor(&c, 0, "noise_pred");
    if (d) printf("  case %s: single device call 0 vs reference rel L2 = %.2e\n", name,
                  qi_rel_l2(single, np0->data, per_call));
    qi_dit_free(d);
    if (be) be->ops->destroy(be);

    for (int k = 0; k < n_sizes; k++) {
        int N = sizes[k];
        qi_comm *comms[MAX_RANKS] = {0};
        call_rank ranks[MAX_RANKS];
        qi_error err;
        if (make_comms(N, comms, &err) != QI_OK) {
            CHECK(0, "%d communicators: %s", N, err.msg);
            continue;
        }
        int loaded = 1;
        for (int i = 0; i < N; i++) {
            ranks[i] = (call_rank){.c = &c, .comm = comms[i], .out = sharded};
            ranks[i].be = make_backend();
            ranks[i].dit = ranks[i].be ? load_dit(ranks[i].be, c.lora) : NULL;
            loaded &= ranks[i].dit != NULL;
        }
        CHECK(loaded, "%d transformers load", N);
        memset(sharded, 0xff, per_call * (size_t)c.calls * sizeof *sharded); /* NaN: unwritten rows show */
        if (loaded) run_ranks(N, call_rank_main, ranks, sizeof ranks[0]);
        double worst = 0, worst_abs = 0;
        int bit_identical = 1;
        for (int i = 0; i < N; i++) CHECK(ranks[i].st == QI_OK, "%s N=%d rank %d: %s", name, N, i, ranks[i].err.msg);
        for (int i = 0; loaded && i < c.calls; i++) {
            const float *a = sharded + (size_t)i * per_call, *b = single + (size_t)i * per_call;
            double rel = qi_rel_l2(a, b, per_call), mad = max_abs_diff(a, b, per_call);
            bit_identical &= memcmp(a, b, per_call * sizeof *a) == 0;
            if (!(rel <= worst)) worst = rel;
            if (!(mad <= worst_abs)) worst_abs = mad;
        }
        printf("  case %s, %d %s rank%s on %s: %d calls, worst rel L2 vs single device = %.2e, max "
               "abs diff %.2e%s\n", name, N, comms[0] ? comms[0]->ops->name : "?", N > 1 ? "s" : "",
               ranks[0].be ? ranks[0].be->ops->name : "?", c.calls, worst, worst_abs,
               bit_identical ? " (bit-identical)" : "");
        CHECK(worst <= tol, "case %s, %d ranks: rel L2 %.3g > %.0e", name, N, worst, tol);
        for (int i = 0; i < N; i++) {
            qi_dit_free(ranks[i].dit);
            if (ranks[i].be) ranks[i].be->ops->destroy(ranks[i].be);
            qi_comm_destroy(comms[i]);
        }
    }
    free(single);
    free(sharded);
    qi_st_set_close(c.ref);
}

/* float32 on the CPU: the same math, only the summation order of GEMMs
 * whose row count changes may differ. */
static void sp_calls_match_single_device(const char *name) {
    const int sizes[] = {1, 2, 4};
    sp_calls_match_single_device_on(name, sizes, 3, qi_local_comm_create, 1e-5);
}

static void sp_calls_match_single_device_zh_cfg4_base(void) { sp_calls_match_single_device(CASES[0]); }
static void sp_calls_match_single_device_en_lightning8_lora(void) { sp_calls_match_single_device(CASES[1]); }
static void sp_calls_match_single_device_batch2_lightning4_lora(void) { sp_calls_match_single_device(CASES[2]); }

/* ---- NCCL and the GPU ----------------------------------------------------------------- */

static void nccl_loads_at_run_time_or_is_refused_by_name(void) {
    qi_comm *comms[1];
    qi_error err;
    int dev = 0;
    qi_status st = qi_nccl_comm_create_all(1, &dev, comms, &err);
    printf("  NCCL version %d; 1-rank communicator: %s\n", qi_nccl_version(),
           st == QI_OK ? "created" : err.msg);
    CHECK(st == QI_OK || ((st == QI_ERR_UNSUPPORTED || st == QI_ERR_BACKEND) && strstr(err.msg, "NCCL")),
          "%s", err.msg);
    if (st == QI_OK) qi_comm_destroy(comms[0]);
    CHECK(qi_nccl_comm_create_all(0, &dev, comms, &err) == QI_ERR_ARG, "0 ranks refused");
}

#ifdef QI_WITH_CUDA
static qi_backend *new_cuda_backend(void) {
    qi_backend *be = NULL;
    qi_error err;
    if (qi_backend_cuda_create(0, ARENA, &be, &err) != QI_OK) fprintf(stderr, "  %s\n", err.msg);
    return be;
}

/* One NCCL rank per GPU; the test machine may have one GPU: ranks = 1. */
static qi_status nccl_on_gpu0(int n, qi_comm **comms, qi_error *err) {
    int devs[MAX_RANKS] = {0};
    return qi_nccl_comm_create_all(n, devs, comms, err);
}

/* The NCCL communicator's collectives on CUDA backend tensors (bf16), then
 * the transformer: 1 NCCL rank, and 2 / 4 ranks sharing GPU 0 through the
 * host-staged local communicator (which exercises the head-group re-layouts
 * on the GPU), all against the single-GPU qi_dit_forward. */
static void sp_on_the_gpu_matches_single_gpu(void) {
    qi_backend *be = new_cuda_backend();
    qi_comm *comms[1];
    qi_error err;
    if (!be) {
        printf("  skipped: no CUDA device\n");
        return;
    }
    int have_nccl = nccl_on_gpu0(1, comms, &err) == QI_OK;
    if (!have_nccl) printf("  skipped the NCCL part: %s\n", err.msg);
    if (have_nccl) {
        qi_tensor a, b, g;
        float host[64], back[64];
        for (int i = 0; i < 64; i++) host[i] = (float)(i - 20); /* exact in bf16 */
        CHECK(qi_be_act2(be, &a, 8, 8, &err) == QI_OK && qi_be_act2(be, &b, 8, 8, &err) == QI_OK &&
                  qi_be_act2(be, &g, 8, 8, &err) == QI_OK, "alloc");
        CHECK(be->ops->upload(be, &a, host, &err) == QI_OK, "%s", err.msg);
        CHECK(qi_comm_all_to_all_tensor(comms[0], be, &a, &b, &err) == QI_OK, "%s", err.msg);
        CHECK(qi_comm_all_gather_tensor(comms[0], be, &b, &g, &err) == QI_OK, "%s", err.msg);
        CHECK(qi_comm_barrier(comms[0], &err) == QI_OK, "%s", err.msg);
        CHECK(be->ops->download(be, &g, back, &err) == QI_OK, "%s", err.msg);
        CHECK(memcmp(host, back, sizeof host) == 0, "NCCL all_to_all + all_gather on 1 rank changed the data");
        printf("  NCCL %d, 1 rank on %s: all_to_all and all_gather of bf16 tensors exact\n",
               qi_nccl_version(), be->ops->name);
        qi_comm_destroy(comms[0]);
    }
    be->ops->destroy(be);

    /* NCCL needs a GPU per rank: 1 rank on this machine; 2 and 4 ranks share GPU 0 */
    make_backend = new_cuda_backend;
    const int one[] = {1}, shared_gpu[] = {2, 4};
    for (int i = 0; i < 3; i++) {
        if (have_nccl) sp_calls_match_single_device_on(CASES[i], one, 1, nccl_on_gpu0, 1e-2);
        sp_calls_match_single_device_on(CASES[i], shared_gpu, 2, qi_local_comm_create, 1e-2);
    }
    make_backend = new_backend;
}
#endif

/* A rank that fails (here: a wrongly shaped shard) releases the others,
 * which return an error instead of waiting in the all-to-all forever. */
typedef struct bad_rank {
    qi_comm *comm;
    qi_backend *be;
    qi_dit *dit;
    qi_status st;
    qi_error err;
} bad_rank;

static void *bad_rank_main(void *p) {
    bad_rank *r = p;
    qi_backend *be = r->be;
    /* 4x4 grid: 8 tokens per rank; rank 1 passes 7 */
    int64_t len = r->comm->rank == 1 ? 7 : 8;
    qi_tensor x, ctx, out;
    float t = 0.5f;
    r->st = qi_be_act3(be, &x, 1, len, 64, &r->err);
    if (r->st == QI_OK) r->st = qi_be_act3(be, &ctx, 1, 5, 64, &r->err);
    if (r->st == QI_OK) r->st = qi_be_act3(be, &out, 1, len, 64, &r->err);
    float *zeros = calloc(8 * 64, sizeof *zeros);
    if (r->st == QI_OK) be->ops->upload(be, &x, zeros, &r->err);
    if (r->st == QI_OK) be->ops->upload(be, &ctx, zeros, &r->err);
    free(zeros);
    if (r->st == QI_OK) r->st = qi_dit_forward_sp(r->dit, r->comm, &x, &ctx, NULL, &t, 4, 4, &out, &r->err);
    return NULL;
}

static void a_failing_rank_releases_the_others(void) {
    qi_comm *comms[2];
    qi_error err;
    CHECK(qi_local_comm_create(2, comms, &err) == QI_OK, "%s", err.msg);
    bad_rank ranks[2];
    for (int i = 0; i < 2; i++) {
        ranks[i] = (bad_rank){.comm = comms[i], .be = new_backend()};
        ranks[i].dit = ranks[i].be ? load_dit(ranks[i].be, 0) : NULL;
    }
    if (ranks[0].dit && ranks[1].dit) run_ranks(2, bad_rank_main, ranks, sizeof ranks[0]);
    CHECK(ranks[1].st == QI_ERR_ARG && strstr(ranks[1].err.msg, "shard"), "rank 1: %s", ranks[1].err.msg);
    CHECK(ranks[0].st != QI_OK, "rank 0 must fail too, not hang or succeed");
    printf("  rank 1: %s\n  rank 0: %s\n", ranks[1].err.msg, ranks[0].err.msg);
    for (int i = 0; i < 2; i++) {
        qi_dit_free(ranks[i].dit);
        if (ranks[i].be) ranks[i].be->ops->destroy(ranks[i].be);
        qi_comm_destroy(comms[i]);
    }
}

/* ---- whole denoising loops ---------------------------------------------------------------- */

/* The pipeline's loop from the reference's inputs (initial latents, text
 * embeddings of both branches, sigmas), on world ranks laid out by
 * qi_parallel_layout: Euler on each rank's shard, final latents gathered. */
typedef struct loop_rank {
    const ref_case *c;
    const qi_parallel_layout *layout;
    int world_rank;
    qi_comm *sp_comm;  /* the Ulysses group of this rank's branch (NULL: sp_size 1) */
    qi_comm *cfg_comm; /* the CFG pair (NULL without CFG-parallel) */
    qi_backend *be;
    qi_dit *dit;
    float *final;      /* [B, L, C] packed latents, written by world rank 0 */
    qi_status st;
    qi_error err;
} loop_rank;

static qi_status loop_forward(loop_rank *r, const qi_tensor *x, const qi_tensor *ctx,
                              const qi_tensor *mask, const float *t, qi_tensor *v) {
    int gh = r->c->height / 16, gw = r->c->width / 16;
    if (r->sp_comm) return qi_dit_forward_sp(r->dit, r->sp_comm, x, ctx, mask, t, gh, gw, v, &r->err);
    return qi_dit_forward(r->dit, x, ctx, mask, t, gh, gw, v, &r->err);
}

static qi_status run_loop(loop_rank *r) {
    const ref_case *c = r->c;
    qi_backend *be = r->be;
    const qi_parallel_layout *l = r->layout;
    int branch = qi_parallel_branch(l, r->world_rank), k = qi_parallel_sp_rank(l, r->world_rank);
    int do_cfg = c->cfg > 1.0;
    const qi_st_tensor *x0 = call_tensor(c, 0, "hidden_states");
    const qi_st_tensor *sig = qi_st_find(c->ref, "sigmas"), *ts = qi_st_find(c->ref, "timesteps");
    int64_t B = x0->shape[0], L = x0->shape[1], C = x0->shape[2];
    const qi_dit_config *dc = qi_dit_get_config(r->dit);
    qi_ulysses u;
    qi_status st = qi_ulysses_plan(l->sp_size, k, L, dc->num_heads, dc->head_dim, &u, &r->err);
    if (st != QI_OK) return st;
    int64_t len = qi_ulysses_shard_len(&u, k);

    /* text of both branches: cond is call 0's, uncond call 1's (with CFG) */
    qi_tensor full, lat, v, v_u, ctx[2], mask[2];
    int has_mask[2] = {0, 0};
    st = upload_new(be, x0, &full, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &lat, B, len, C, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &v, B, len, C, &r->err);
    if (st == QI_OK) st = qi_be_act3(be, &v_u, B, len, C, &r->err);
    for (int br = 0; br < 1 + do_cfg && st == QI_OK; br++) {
        const qi_st_tensor *m = call_mask(c, br);
        st = upload_new(be, call_tensor(c, br, "encoder_hidden_states"), &ctx[br], &r->err);
        if (st == QI_OK && m) st = upload_new(be, m, &mask[br], &r->err);
        has_mask[br] = m != NULL;
    }
    if (st != QI_OK) return st;
    qi_ulysses_take_shard(&u, be, &full, &lat);

    float *t = malloc((size_t)B * sizeof *t);
    for (int i = 0; i < c->steps && st == QI_OK; i++) {
        for (int64_t b = 0; b < B; b++) t[b] = ((const float *)ts->data)[i] / 1000.0f;
        const float *sg = sig->data;
        if (l->branches == 2) {
            /* CFG-parallel: this rank's branch only, then the pair exchanges */
            st = loop_forward(r, &lat, &ctx[branch], has_mask[branch] ? &mask[branch] : NULL, t, &v);
            if (st == QI_OK) st = qi_cfg_parallel_combine(r->cfg_comm, be, &v, (float)c->cfg, &v, &r->err);
        } else {
            st = loop_forward(r, &lat, &ctx[0], has_mask[0] ? &mask[0] : NULL, t, &v);
            if (st == QI_OK && do_cfg) {
                st = loop_forward(r, &lat, &ctx[1], has_mask[1] ? &mask[1] : NULL, t, &v_u);
                if (st == QI_OK) be->ops->cfg_combine(be, &v, &v_u, (float)c->cfg, &v);
            }
        }
        if (st == QI_OK) be->ops->axpby(be, 1.0f, &lat, sg[i + 1] - sg[i], &v, &lat);
    }
    free(t);
    if (st == QI_OK && r->sp_comm) st = qi_ulysses_gather_tokens(&u, r->sp_comm, be, &lat, &full, &r->err);
    if (st == QI_OK && !r->sp_comm) be->ops->copy_rows(be, &lat, 0, &full, 0, B * L);
    if (st == QI_OK && r->world_rank == 0) st = be->ops->download(be, &full, r->final, &r->err);
    return st;
}

static void *loop_rank_main(void *p) {
    loop_rank *r = p;
    r->st = run_loop(r);
    if (r->st != QI_OK) {
        qi_comm_abort(r->sp_comm);
        qi_comm_abort(r->cfg_comm);
    }
    return NULL;
}

/* Runs the loop of case c on `world` ranks; final packed latents into out. */
static int parallel_loop(const ref_case *c, int world, float *out, qi_parallel_layout *layout) {
    qi_error err;
    if (qi_parallel_layout_make(world, c->cfg > 1.0, 4, layout, &err) != QI_OK) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    qi_comm *sp[MAX_RANKS] = {0}, *cfg[MAX_RANKS] = {0};
    int ok = 1;
    /* Ulysses group per branch: ranks branch·sp .. +sp; CFG pair per sp rank: {k, sp + k} */
    for (int g = 0; g < layout->branches && layout->sp_size > 1; g++)
        ok &= qi_local_comm_create(layout->sp_size, sp + g * layout->sp_size, &err) == QI_OK;
    for (int k = 0; k < layout->sp_size && layout->branches == 2; k++) {
        qi_comm *pair[2];
        ok &= qi_local_comm_create(2, pair, &err) == QI_OK;
        cfg[k] = pair[0];
        cfg[layout->sp_size + k] = pair[1];
    }
    loop_rank ranks[MAX_RANKS];
    for (int w = 0; w < world; w++) {
        ranks[w] = (loop_rank){.c = c, .layout = layout, .world_rank = w, .sp_comm = sp[w],
                               .cfg_comm = cfg[w], .final = out};
        ranks[w].be = new_backend();
        ranks[w].dit = ranks[w].be ? load_dit(ranks[w].be, c->lora) : NULL;
        ok &= ranks[w].dit != NULL;
    }
    if (ok) run_ranks(world, loop_rank_main, ranks, sizeof ranks[0]);
    for (int w = 0; w < world; w++) {
        if (ranks[w].st != QI_OK) {
            fprintf(stderr, "  world %d rank %d: %s\n", world, w, ranks[w].err.msg);
            ok = 0;
        }
        qi_dit_free(ranks[w].dit);
        if (ranks[w].be) ranks[w].be->ops->destroy(ranks[w].be);
        qi_comm_destroy(sp[w]);
        qi_comm_destroy(cfg[w]);
    }
    return ok ? 0 : -1;
}

static int read_vae_stats(float *mean, float *std) {
    cJSON *j;
    qi_error err;
    const char *path = PUBLIC "/model/vae/config.json";
    if (qi_json_load(path, &j, &err) != QI_OK) return -1;
    double m[16], s[16];
    int nm = 0, ns = 0;
    int ok = qi_json_get_double_array(j, "latents_mean", path, m, 16, &nm, &err) == QI_OK &&
             qi_json_get_double_array(j, "latents_std", path, s, 16, &ns, &err) == QI_OK && nm == 16 &&
             ns == 16;
    for (int i = 0; ok && i < 16; i++) {
        mean[i] = (float)m[i];
        std[i] = (float)s[i];
    }
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

/* The loop on 1 rank (the single-device pipeline), then on each world size:
 * final latents vs the 1-rank ones, and vae_in vs the reference. */
static void loop_matches_single_device_and_reference(const char *name, const int *worlds, int n_worlds) {
    ref_case c;
    float mean[16], std[16];
    if (open_case(name, &c) != 0 || read_vae_stats(mean, std) != 0) {
        CHECK(0, "case %s and VAE config readable", name);
        return;
    }
    const qi_st_tensor *x0 = call_tensor(&c, 0, "hidden_states"), *want = qi_st_find(c.ref, "vae_in");
    int B = (int)x0->shape[0];
    size_t n = (size_t)(x0->shape[0] * x0->shape[1] * x0->shape[2]);
    float *single = malloc(n * sizeof *single), *par = malloc(n * sizeof *par);
    float *vae_in = malloc(n * sizeof *vae_in);
    qi_parallel_layout layout;
    CHECK(want && (size_t)(want->nbytes / 4) == n, "reference vae_in present");
    int ok = parallel_loop(&c, 1, single, &layout) == 0;
    CHECK(ok, "%s: single-device loop runs", name);
    if (ok && want) {
        qi_latents_to_vae_in(single, B, c.height, c.width, mean, std, vae_in);
        printf("  case %s, 1 rank (%d steps%s): vae_in vs reference rel L2 = %.2e, max abs diff %.2e\n",
               name, c.steps, c.cfg > 1 ? ", true CFG" : "", qi_rel_l2(vae_in, want->data, n),
               max_abs_diff(vae_in, want->data, n));
    }
    for (int wi = 0; ok && wi < n_worlds; wi++) {
        int world = worlds[wi];
        memset(par, 0xff, n * sizeof *par);
        int run = parallel_loop(&c, world, par, &layout) == 0;
        CHECK(run, "%s: loop on %d ranks runs", name, world);
        if (!run) continue;
        qi_latents_to_vae_in(par, B, c.height, c.width, mean, std, vae_in);
        double rel = qi_rel_l2(par, single, n), mad = max_abs_diff(par, single, n);
        double ref_rel = want ? qi_rel_l2(vae_in, want->data, n) : 1, ref_mad = want ? max_abs_diff(vae_in, want->data, n) : 1;
        printf("  case %s, %d ranks (%s%d-way Ulysses): final latents vs 1 rank rel L2 = %.2e (max abs "
               "%.2e%s); vae_in vs reference rel L2 = %.2e, max abs diff %.2e\n",
               name, world, layout.branches == 2 ? "CFG-parallel x " : "", layout.sp_size, rel, mad,
               memcmp(par, single, n * sizeof *par) == 0 ? ", bit-identical" : "", ref_rel, ref_mad);
        CHECK(rel <= 1e-5, "%s on %d ranks: latents rel L2 %.3g vs single device", name, world, rel);
        CHECK(ref_mad <= 1e-3, "%s on %d ranks: vae_in max abs diff %.3g vs reference", name, world, ref_mad);
    }
    free(single);
    free(par);
    free(vae_in);
    qi_st_set_close(c.ref);
}

static void cfg_parallel_and_cfg_x_ulysses_loops_zh_cfg4_base(void) {
    const int worlds[] = {2, 4}; /* 2: cond | uncond; 4: (cond, uncond) x 2-way Ulysses */
    loop_matches_single_device_and_reference(CASES[0], worlds, 2);
}

static void ulysses_loops_en_lightning8_lora(void) {
    const int worlds[] = {2, 4};
    loop_matches_single_device_and_reference(CASES[1], worlds, 2);
}

static void ulysses_loops_batch2_lightning4_lora(void) {
    const int worlds[] = {4};
    loop_matches_single_device_and_reference(CASES[2], worlds, 1);
}

int main(void) {
    qi_error err;
    if (qi_source_open_folder(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &g_src, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(shards_cover_the_image_once_and_differ_by_one_at_most);
    RUN(layouts_put_cond_and_uncond_on_separate_branches);
    RUN(local_comm_collectives_and_abort);
    RUN(all_to_all_relayouts_round_trip_with_uneven_shards);
    RUN(sp_calls_match_single_device_zh_cfg4_base);
    RUN(sp_calls_match_single_device_en_lightning8_lora);
    RUN(sp_calls_match_single_device_batch2_lightning4_lora);
    RUN(a_failing_rank_releases_the_others);
    RUN(nccl_loads_at_run_time_or_is_refused_by_name);
#ifdef QI_WITH_CUDA
    RUN(sp_on_the_gpu_matches_single_gpu);
#endif
    RUN(cfg_parallel_and_cfg_x_ulysses_loops_zh_cfg4_base);
    RUN(ulysses_loops_en_lightning8_lora);
    RUN(ulysses_loops_batch2_lightning4_lora);
    qi_source_close(g_src);
    TEST_END();
}

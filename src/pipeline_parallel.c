/*
 * pipeline_parallel.c — the engine on several devices: a thin layer that
 * gives each rank its own backend and transformer, picks the layout of a
 * request and runs the denoising loop with one thread per rank, over the
 * pieces of parallel/ (communicators, Ulysses re-layouts, CFG-parallel) and
 * qi_dit_forward_sp.
 *
 * Ranks and threads:
 *   - rank 0's backend is the engine's (text encoder, VAE, noise live there);
 *     its loop runs on the caller's thread, ranks 1..N-1 on threads started
 *     per call (their cost is nothing next to a transformer call);
 *   - every rank's thread first makes its device current: cudaSetDevice for
 *     a CUDA rank (the CUDA backend queues on the calling thread's device),
 *     and for a CPU rank its OpenMP thread count (OpenBLAS sizes each call
 *     by the calling thread's count, which a new thread inherits as "all
 *     cores": N ranks would each take every core);
 *   - transformers load on all ranks at once, each on its own thread.
 *
 * Layout of a request (parallel/ulysses.h): with true CFG and an even rank
 * count, the cond prediction runs on ranks [0, N/2) and the uncond one on
 * [N/2, N), each half a Ulysses group; otherwise one Ulysses group of all N
 * ranks makes both predictions in turn. Rank 0 holds the whole initial
 * noise, every rank uploads it and keeps its shard, Euler runs on shards,
 * and the shards are gathered at the end for rank 0 to download.
 *
 * Communicators are made on a layout's first use and kept: NCCL between
 * CUDA ranks on distinct GPUs (the local communicator, staging through host
 * memory, when libnccl.so.2 cannot be loaded or ranks share a GPU), the
 * local one between CPU ranks. A local "world" communicator of all ranks
 * carries the one host barrier per step at which every rank learns whether
 * rank 0's progress callback cancelled, so a cancel stops all ranks at the
 * same step and leaves the communicators usable. A failing rank aborts its
 * communicators (the others return errors instead of waiting) and the
 * group's communicators are made anew on the next call.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/model_dir.h"
#include "parallel/comm.h"
#include "parallel/ulysses.h"
#include "pipeline_parallel.h"

#ifdef QI_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#define MAX_RANKS QI_ULYSSES_MAX_RANKS

typedef struct rank_device {
    int is_cuda;
    int index; /* CUDA ordinal (0 for cpu) */
} rank_device;

typedef enum transport { VIA_LOCAL, VIA_NCCL } transport;

/* The communicators of one layout, by world rank. */
typedef struct comm_set {
    int ready;
    qi_comm *sp[MAX_RANKS];  /* the rank's Ulysses group; NULL when sp_size is 1 */
    qi_comm *cfg[MAX_RANKS]; /* its CFG pair; NULL without CFG-parallel */
} comm_set;

struct qi_parallel {
    int n;
    rank_device dev[MAX_RANKS];
    qi_backend *be[MAX_RANKS]; /* be[0] belongs to the engine */
    qi_dit *dit[MAX_RANKS];    /* dit[0] belongs to the engine */
    int heads;                 /* attention heads of the transformer */
    int cpu_threads;           /* OpenMP threads of each CPU rank */
    transport via;
    qi_comm *world[MAX_RANKS]; /* local comm of all ranks: the per-step barrier */
    comm_set sets[2];          /* [branches - 1] */
    qi_log_fn log;
    void *log_user;
};

#define logf_(p, ...) qi_log_linef((p)->log, (p)->log_user, __VA_ARGS__)

int qi_parallel_ranks(const qi_parallel *p) { return p ? p->n : 1; }

/* ---- devices ----------------------------------------------------------------------- */

/* "cpu", "cuda" (= cuda:0) or "cuda:N", comma-separated, one kind. */
static qi_status parse_devices(const char *list, rank_device *dev, int *n, qi_error *err) {
    *n = 0;
    const char *s = list;
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        while (len && *s == ' ') s++, len--;
        while (len && s[len - 1] == ' ') len--;
        char item[32];
        if (len == 0 || len >= sizeof item)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: device %d is %s; expected cpu, cuda or cuda:N, "
                           "comma-separated (e.g. cuda:0,cuda:1)", list, *n + 1, len ? "too long" : "empty");
        memcpy(item, s, len);
        item[len] = 0;
        if (*n == MAX_RANKS)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: at most %d devices", list, MAX_RANKS);
        rank_device d = {0, 0};
        if (!strcmp(item, "cpu")) {
            d.is_cuda = 0;
        } else if (!strcmp(item, "cuda")) {
            d.is_cuda = 1;
        } else if (!strncmp(item, "cuda:", 5) && item[5] >= '0' && item[5] <= '9') {
            char *end;
            long v = strtol(item + 5, &end, 10);
            if (*end || v > 63)
                return qi_fail(err, QI_ERR_ARG, "--devices %s: '%s' is not a device (expected cuda:N with "
                               "N from 0 to 63)", list, item);
            d.is_cuda = 1;
            d.index = (int)v;
        } else {
            return qi_fail(err, QI_ERR_ARG, "--devices %s: '%s' is not a device (expected cpu, cuda or "
                           "cuda:N, comma-separated, e.g. cuda:0,cuda:1)", list, item);
        }
        if (*n > 0 && d.is_cuda != dev[0].is_cuda)
            return qi_fail(err, QI_ERR_ARG, "--devices %s: mixes cpu and cuda devices; the ranks of one "
                           "generation must be of one kind", list);
        dev[(*n)++] = d;
        if (!comma) return QI_OK;
        s = comma + 1;
    }
}

static qi_status read_heads(const char *transformer_dir, int *heads, qi_error *err) {
    char path[4096];
    if (qi_path_join(path, sizeof path, transformer_dir, "config.json") != 0)
        return qi_fail(err, QI_ERR_ARG, "%s: path too long", transformer_dir);
    cJSON *j;
    qi_status st = qi_json_load(path, &j, err);
    if (st != QI_OK) return st;
    st = qi_json_get_int(j, "num_attention_heads", path, heads, err);
    cJSON_Delete(j);
    if (st == QI_OK && *heads < 1)
        st = qi_fail(err, QI_ERR_FORMAT, "%s: num_attention_heads is %d", path, *heads);
    return st;
}

/* Makes d the calling thread's device. Each rank's thread calls it first. */
static qi_status bind_device(const rank_device *d, qi_error *err) {
#ifdef QI_WITH_CUDA
    if (d->is_cuda) {
        cudaError_t e = cudaSetDevice(d->index);
        if (e != cudaSuccess)
            return qi_fail(err, QI_ERR_BACKEND, "cudaSetDevice(%d): %s", d->index, cudaGetErrorString(e));
    }
#else
    (void)d;
    (void)err;
#endif
    return QI_OK;
}

static qi_status make_backend(const rank_device *d, int cpu_threads, qi_backend **out, qi_error *err) {
    if (!d->is_cuda) return qi_backend_cpu_create(cpu_threads, 0, out, err);
    return qi_backend_cuda_create(d->index, 0, out, err);
}

static void destroy_rank(qi_parallel *p, int r) {
    qi_error ignored;
    bind_device(&p->dev[r], &ignored); /* a device's handles are released on it */
    if (r > 0 && p->dit[r]) qi_dit_free(p->dit[r]);
    if (r > 0 && p->be[r]) p->be[r]->ops->destroy(p->be[r]);
    p->dit[r] = NULL;
    p->be[r] = NULL;
}

/* ---- communicators --------------------------------------------------------------- */

static void drop_set(comm_set *s) {
    for (int i = 0; i < MAX_RANKS; i++) {
        qi_comm_destroy(s->sp[i]);
        qi_comm_destroy(s->cfg[i]);
    }
    memset(s, 0, sizeof *s);
}

static void drop_comms(qi_parallel *p) {
    drop_set(&p->sets[0]);
    drop_set(&p->sets[1]);
    for (int i = 0; i < p->n; i++) {
        qi_comm_destroy(p->world[i]);
        p->world[i] = NULL;
    }
}

/* A communicator of `count` world ranks: out[i] is ranks[i]'s. */
static qi_status make_group(qi_parallel *p, int count, const int *ranks, qi_comm **out, qi_error *err) {
    qi_comm *c[MAX_RANKS];
    qi_status st;
    if (p->via == VIA_NCCL) {
        int devs[MAX_RANKS] = {0};
        for (int i = 0; i < count; i++) devs[i] = p->dev[ranks[i]].index;
        st = qi_nccl_comm_create_all(count, devs, c, err);
        qi_error ignored;
        bind_device(&p->dev[0], &ignored); /* NCCL's init may leave another GPU current */
        if (st != QI_ERR_UNSUPPORTED) {
            for (int i = 0; st == QI_OK && i < count; i++) out[i] = c[i];
            return st;
        }
        logf_(p, "%s; the %d GPUs exchange through host memory instead (slow)", err->msg, p->n);
        p->via = VIA_LOCAL;
    }
    st = qi_local_comm_create(count, c, err);
    for (int i = 0; st == QI_OK && i < count; i++) out[i] = c[i];
    return st;
}

/* The communicators of layout l, made on its first use. */
static qi_status ensure_comms(qi_parallel *p, const qi_parallel_layout *l, comm_set **out, qi_error *err) {
    comm_set *s = &p->sets[l->branches - 1];
    *out = s;
    if (s->ready) return QI_OK;
    qi_status st = QI_OK;
    if (!p->world[0]) st = qi_local_comm_create(p->n, p->world, err);
    int sp = l->sp_size, ranks[MAX_RANKS];
    for (int g = 0; st == QI_OK && sp > 1 && g < l->branches; g++) {
        for (int i = 0; i < sp; i++) ranks[i] = g * sp + i;
        st = make_group(p, sp, ranks, s->sp + g * sp, err);
    }
    for (int k = 0; st == QI_OK && l->branches == 2 && k < sp; k++) {
        int pair[2] = {k, sp + k};
        qi_comm *c[2];
        st = make_group(p, 2, pair, c, err);
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
    char what[96];
    if (l->branches == 2 && sp > 1)
        snprintf(what, sizeof what, "CFG-parallel (cond | uncond) x %d-way Ulysses", sp);
    else if (l->branches == 2)
        snprintf(what, sizeof what, "CFG-parallel (cond | uncond)");
    else
        snprintf(what, sizeof what, "%d-way Ulysses", sp);
    logf_(p, "%d %s ranks: %s, %s communicator", p->n, p->dev[0].is_cuda ? "cuda" : "cpu", what,
          p->via == VIA_NCCL ? "NCCL" : "local");
    return QI_OK;
}

/* ---- running every rank ---------------------------------------------------------- */

typedef qi_status (*rank_fn)(qi_parallel *p, int rank, void *arg, qi_error *err);

typedef struct rank_call {
    qi_parallel *p;
    int rank;
    rank_fn fn;
    void *arg;
    void (*on_failure)(void *arg, int rank); /* releases the other ranks; may be NULL */
    qi_status st;
    qi_error err;
} rank_call;

/* The start of every rank's work: its device current, its CPU threads set. */
static void *rank_main(void *v) {
    rank_call *c = v;
    const rank_device *d = &c->p->dev[c->rank];
    c->st = bind_device(d, &c->err);
    if (c->st != QI_OK) {
        if (c->on_failure) c->on_failure(c->arg, c->rank);
        return NULL;
    }
    if (!d->is_cuda) omp_set_num_threads(c->p->cpu_threads);
    c->st = c->fn(c->p, c->rank, c->arg, &c->err);
    return NULL;
}

/* fn on every rank: ranks 1.. on new threads, rank 0 on this one (whose
 * OpenMP thread count is put back afterwards). A rank whose thread cannot
 * start or whose device cannot be made current fails there; on_failure (may
 * be NULL) then releases the others. */
static void on_every_rank(qi_parallel *p, rank_fn fn, void *arg, void (*on_failure)(void *arg, int rank),
                          rank_call *calls) {
    pthread_t th[MAX_RANKS];
    int started[MAX_RANKS] = {0};
    for (int r = 0; r < p->n; r++)
        calls[r] = (rank_call){.p = p, .rank = r, .fn = fn, .arg = arg, .on_failure = on_failure};
    for (int r = 1; r < p->n; r++) {
        started[r] = pthread_create(&th[r], NULL, rank_main, &calls[r]) == 0;
        if (!started[r]) {
            calls[r].st = qi_fail(&calls[r].err, QI_ERR_NOMEM, "cannot start the thread of rank %d", r);
            if (on_failure) on_failure(arg, r);
        }
    }
    int omp_threads = omp_get_max_threads();
    rank_main(&calls[0]);
    omp_set_num_threads(omp_threads);
    for (int r = 1; r < p->n; r++)
        if (started[r]) pthread_join(th[r], NULL);
}

/* ---- open, load, free -------------------------------------------------------------- */

qi_status qi_parallel_open(const qi_open_options *opt, const char *transformer_dir, qi_parallel **out,
                           qi_backend **be0, qi_error *err) {
    *out = NULL;
    *be0 = NULL;
    rank_device dev[MAX_RANKS];
    int n = 0;
    qi_status st = parse_devices(opt->devices, dev, &n, err);
    if (st != QI_OK) return st;
    int total_threads = opt->threads > 0 ? opt->threads : omp_get_num_procs();
    if (n == 1) return make_backend(&dev[0], total_threads, be0, err);

    int heads = 0;
    if ((st = read_heads(transformer_dir, &heads, err)) != QI_OK) return st;
    if (heads % n != 0) {
        /* the counts that do: "1, 2 or 4" */
        int fit[MAX_RANKS], n_fit = 0;
        for (int d = 1; d <= heads && d <= MAX_RANKS; d++)
            if (heads % d == 0) fit[n_fit++] = d;
        char fits[256] = "";
        size_t off = 0;
        for (int i = 0; i < n_fit && off < sizeof fits; i++)
            off += (size_t)snprintf(fits + off, sizeof fits - off, "%s%d",
                                    i == 0 ? "" : i == n_fit - 1 ? " or " : ", ", fit[i]);
        return qi_fail(err, QI_ERR_ARG, "--devices %s: %d devices do not divide the %d attention heads of "
                       "the transformer (each device attends over an equal share of them); use %s devices",
                       opt->devices, n, heads, fits);
    }
    qi_parallel *p = calloc(1, sizeof *p);
    if (!p) return qi_fail(err, QI_ERR_NOMEM, "out of memory");
    p->n = n;
    memcpy(p->dev, dev, sizeof dev);
    p->heads = heads;
    p->cpu_threads = total_threads / n > 0 ? total_threads / n : 1;
    p->log = opt->log;
    p->log_user = opt->log_user;
    /* NCCL wants one GPU per rank; ranks sharing a GPU (a test setup) talk locally */
    p->via = dev[0].is_cuda ? VIA_NCCL : VIA_LOCAL;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (dev[i].index == dev[j].index) p->via = VIA_LOCAL;
    if (dev[0].is_cuda && p->via == VIA_LOCAL)
        logf_(p, "--devices %s: ranks share a GPU, so they exchange through host memory (NCCL needs one GPU "
              "per rank)", opt->devices);

    for (int r = 0; st == QI_OK && r < n; r++) {
        st = make_backend(&dev[r], p->cpu_threads, &p->be[r], err);
        /* weights of benchmarks: every rank draws the same ones (rank 0's by the engine) */
        if (st == QI_OK && r > 0 && opt->random_weights && p->be[r]->ops->random_weights)
            st = p->be[r]->ops->random_weights(p->be[r], opt->random_weights, err);
        if (st != QI_OK) qi_fail_ctx(err, st, "--devices %s, rank %d", opt->devices, r);
    }
    qi_error ignored;
    bind_device(&dev[0], &ignored); /* the engine's thread works on rank 0's device */
    if (st != QI_OK) {
        if (p->be[0]) p->be[0]->ops->destroy(p->be[0]);
        p->be[0] = NULL;
        qi_parallel_free(p);
        return st;
    }
    logf_(p, "%d ranks on %s (%d attention heads; %s)", n, opt->devices, heads,
          dev[0].is_cuda ? "one GPU each" : "simulated: one CPU backend per rank");
    *be0 = p->be[0];
    *out = p;
    return QI_OK;
}

void qi_parallel_free(qi_parallel *p) {
    if (!p) return;
    drop_comms(p);
    for (int r = 1; r < p->n; r++) destroy_rank(p, r);
    qi_error ignored;
    bind_device(&p->dev[0], &ignored);
    free(p);
}

typedef struct load_task {
    const qi_source *src; /* shared by the ranks: read-only after open */
    const qi_lora_set *loras;
} load_task;

static qi_status load_rank(qi_parallel *p, int r, void *arg, qi_error *err) {
    const load_task *t = arg;
    if (r > 0 && p->dit[r]) qi_dit_free(p->dit[r]);
    p->dit[r] = NULL;
    return qi_dit_load(t->src, p->be[r], t->loras, &p->dit[r], err);
}

qi_status qi_parallel_load_dits(qi_parallel *p, const qi_source *src, const qi_lora_set *loras,
                                qi_dit **dit0, qi_error *err) {
    *dit0 = NULL;
    p->dit[0] = NULL; /* the engine's, freed by it */
    load_task t = {src, loras};
    rank_call calls[MAX_RANKS];
    on_every_rank(p, load_rank, &t, NULL, calls);
    for (int r = 0; r < p->n; r++)
        if (calls[r].st != QI_OK) {
            *err = calls[r].err;
            qi_fail_ctx(err, calls[r].st, "rank %d", r);
            for (int q = 0; q < p->n; q++) {
                qi_error ignored;
                bind_device(&p->dev[q], &ignored); /* freed on its own device */
                qi_dit_free(p->dit[q]);
                p->dit[q] = NULL;
            }
            qi_error ignored;
            bind_device(&p->dev[0], &ignored);
            return calls[r].st;
        }
    *dit0 = p->dit[0];
    return QI_OK;
}

/* ---- the denoising loop ----------------------------------------------------------- */

typedef struct denoise_task {
    qi_parallel *p;
    const qi_request *req;
    const qi_text_batch *text[2]; /* cond, uncond (NULL without true CFG) */
    const float *sigmas, *timesteps;
    int grid_h, grid_w;
    float *latents;               /* [B, L, C] host: noise in, rank 0 writes the result */
    qi_parallel_layout layout;
    comm_set *comms;
    atomic_int cancel_at;         /* the step at which rank 0's callback cancelled; INT_MAX: none */
    atomic_int first_failed;      /* the rank that failed first (its error is the cause); -1: none */
} denoise_task;

/* A rank failed: the others must not wait for it. */
static void fail_rank(void *arg, int w) {
    denoise_task *t = arg;
    int none = -1;
    atomic_compare_exchange_strong(&t->first_failed, &none, w);
    qi_comm_abort(t->p->world[w]);
    qi_comm_abort(t->comms->sp[w]);
    qi_comm_abort(t->comms->cfg[w]);
}

typedef struct text_on_rank {
    qi_tensor ctx;  /* [B, L_txt, D] */
    qi_tensor mask; /* I32 [B, L_txt] */
    int has_mask;
} text_on_rank;

static qi_status upload_text(qi_backend *be, const qi_text_batch *t, text_on_rank *out, qi_error *err) {
    qi_status st = qi_be_act3(be, &out->ctx, t->batch, t->len, t->dim, err);
    if (st == QI_OK) st = be->ops->upload(be, &out->ctx, t->embeds, err);
    out->has_mask = !t->all_valid;
    if (st != QI_OK || !out->has_mask) return st;
    int64_t ne[2] = {t->batch, t->len};
    st = be->ops->tensor(be, &out->mask, QI_I32, 2, ne, err);
    return st == QI_OK ? be->ops->upload(be, &out->mask, t->mask, err) : st;
}

/* One velocity prediction of this rank's shard. */
static qi_status predict(const denoise_task *t, qi_dit *dit, qi_comm *sp, const qi_tensor *x,
                         const text_on_rank *text, const float *tb, qi_tensor *v, qi_error *err) {
    const qi_tensor *mask = text->has_mask ? &text->mask : NULL;
    if (sp) return qi_dit_forward_sp(dit, sp, x, &text->ctx, mask, tb, t->grid_h, t->grid_w, v, err);
    return qi_dit_forward(dit, x, &text->ctx, mask, tb, t->grid_h, t->grid_w, v, err);
}

static qi_status denoise_steps(denoise_task *t, int w, qi_error *err) {
    qi_parallel *p = t->p;
    qi_backend *be = p->be[w];
    qi_dit *dit = p->dit[w];
    const qi_request *req = t->req;
    const qi_parallel_layout *l = &t->layout;
    const qi_dit_config *dc = qi_dit_get_config(dit);
    qi_comm *sp = t->comms->sp[w], *pair = t->comms->cfg[w], *world = p->world[w];
    int B = t->text[0]->batch;
    int64_t L = (int64_t)t->grid_h * t->grid_w, C = dc->in_channels;
    qi_ulysses u;
    int k = qi_parallel_sp_rank(l, w);
    qi_status st = qi_ulysses_plan(l->sp_size, k, L, dc->num_heads, dc->head_dim, &u, err);
    if (st != QI_OK) return st;
    int64_t len = qi_ulysses_shard_len(&u, k);
    /* the predictions this rank makes: its branch's (CFG-parallel), or cond and maybe uncond */
    int first = l->branches == 2 ? qi_parallel_branch(l, w) : 0;
    int last = l->branches == 2 ? first : (t->text[1] ? 1 : 0);

    text_on_rank text[2];
    qi_tensor full, lat, v, v_u;
    for (int br = first; br <= last && st == QI_OK; br++) st = upload_text(be, t->text[br], &text[br], err);
    if (st == QI_OK) st = qi_be_act3(be, &full, B, L, C, err);   /* [B, L, C] the whole image */
    if (st == QI_OK) st = qi_be_act3(be, &lat, B, len, C, err);  /* [B, len, C] this rank's shard */
    if (st == QI_OK) st = qi_be_act3(be, &v, B, len, C, err);
    if (st == QI_OK && last > first) st = qi_be_act3(be, &v_u, B, len, C, err);
    if (st == QI_OK) st = be->ops->upload(be, &full, t->latents, err);
    if (st != QI_OK) return st;
    qi_ulysses_take_shard(&u, be, &full, &lat);

    float *tb = malloc(sizeof(float) * (size_t)B);
    if (!tb) return qi_fail(err, QI_ERR_NOMEM, "rank %d: out of memory", w);
    for (int i = 0; i < req->steps && st == QI_OK; i++) {
        if (w == 0 && req->progress && req->progress(req->progress_user, "denoise", i, req->steps))
            atomic_store(&t->cancel_at, i);
        /* every rank learns rank 0's decision at the same step */
        if ((st = qi_comm_barrier(world, err)) != QI_OK) break;
        if (atomic_load(&t->cancel_at) <= i) {
            st = qi_fail(err, QI_ERR_CANCELLED, "generation cancelled");
            break;
        }
        for (int b = 0; b < B; b++) tb[b] = t->timesteps[i] / 1000.0f;
        st = predict(t, dit, sp, &lat, &text[first], tb, &v, err);
        if (st == QI_OK && l->branches == 2) {
            st = qi_cfg_parallel_combine(pair, be, &v, req->cfg, &v, err);
        } else if (st == QI_OK && last > first) {
            st = predict(t, dit, sp, &lat, &text[last], tb, &v_u, err);
            if (st == QI_OK) be->ops->cfg_combine(be, &v, &v_u, req->cfg, &v);
        }
        /* Euler on the shard: x += (sigma[i+1] − sigma[i]) · v */
        if (st == QI_OK) be->ops->axpby(be, 1.0f, &lat, t->sigmas[i + 1] - t->sigmas[i], &v, &lat);
    }
    free(tb);
    if (st != QI_OK) return st;
    /* both branches hold the same latents: each gathers its own group's shards */
    if (sp) st = qi_ulysses_gather_tokens(&u, sp, be, &lat, &full, err);
    if (st == QI_OK && w == 0) st = be->ops->download(be, sp ? &full : &lat, t->latents, err);
    if (st == QI_OK) st = be->ops->sync(be, err);
    return st;
}

static qi_status denoise_rank(qi_parallel *p, int w, void *arg, qi_error *err) {
    denoise_task *t = arg;
    qi_backend *be = p->be[w];
    size_t mark = be->ops->mark(be);
    qi_status st = denoise_steps(t, w, err);
    if (st != QI_OK && st != QI_ERR_CANCELLED) fail_rank(t, w);
    be->ops->reset(be, mark);
    return st;
}

qi_status qi_parallel_denoise(qi_parallel *p, const qi_request *req, const qi_text_batch *cond,
                              const qi_text_batch *uncond, const float *sigmas, const float *timesteps,
                              int grid_h, int grid_w, float *latents, qi_error *err) {
    for (int r = 0; r < p->n; r++)
        if (!p->dit[r])
            return qi_fail(err, QI_ERR_ARG, "parallel denoise: rank %d has no transformer loaded", r);
    denoise_task *t = calloc(1, sizeof *t);
    if (!t) return qi_fail(err, QI_ERR_NOMEM, "out of memory");
    t->p = p;
    t->req = req;
    t->text[0] = cond;
    t->text[1] = uncond;
    t->sigmas = sigmas;
    t->timesteps = timesteps;
    t->grid_h = grid_h;
    t->grid_w = grid_w;
    t->latents = latents;
    atomic_init(&t->cancel_at, INT_MAX);
    atomic_init(&t->first_failed, -1);
    const qi_dit_config *dc = qi_dit_get_config(p->dit[0]);
    qi_ulysses u;
    qi_status st = qi_parallel_layout_make(p->n, uncond != NULL && p->n % 2 == 0, dc->num_heads, &t->layout,
                                           err);
    /* the image must give every rank of a Ulysses group a token: refused here, before any rank starts */
    if (st == QI_OK)
        st = qi_ulysses_plan(t->layout.sp_size, 0, (int64_t)grid_h * grid_w, dc->num_heads, dc->head_dim, &u,
                             err);
    if (st == QI_OK) st = ensure_comms(p, &t->layout, &t->comms, err);
    if (st != QI_OK) {
        free(t);
        return st;
    }

    rank_call calls[MAX_RANKS];
    on_every_rank(p, denoise_rank, t, fail_rank, calls);
    int failed = atomic_load(&t->first_failed);
    if (failed >= 0) {
        /* the first failure is the cause; the others only saw the abort */
        *err = calls[failed].err;
        if (p->n > 1) qi_fail_ctx(err, calls[failed].st, "rank %d", failed);
        st = calls[failed].st;
        drop_comms(p); /* aborted: made anew on the next call */
    } else {
        st = QI_OK;
        for (int r = 0; r < p->n; r++)
            if (calls[r].st != QI_OK) st = qi_fail(err, calls[r].st, "%s", calls[r].err.msg);
    }
    free(t);
    return st;
}

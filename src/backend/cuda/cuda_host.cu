/*
 * cuda_host.cu — the CUDA backend's streamed weights: where their host
 * copies live (pinned chunks up to the pinned budget, ordinary chunks past
 * it: backend/host_pool.h), the device slots they are staged into, the
 * bounce ring that stages the ordinary ones, embedding's path for a table in
 * ordinary memory, and the link measurement the bench compares against.
 *
 * Not here: the conversions (cuda_backend.cu's weight_in_host fills the
 * memory this file hands out) and the order of stages (weight_stream.c).
 *
 * Graphs: a stage of pinned weights is plain async copies, but a stage
 * through the ring does host work (a memcpy into the ring, a wait for a ring
 * buffer's previous copy) that a CUDA graph cannot replay, and the embedding
 * gather synchronises. The streamed path therefore always runs eagerly
 * (denoise.c's ranks_record turns recording off whenever the transformer
 * streams; the text encoder never records), with or without the ring.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "backend/cuda/cuda_backend.h"
#include "backend/host_pool.h"
#include "base/types.h" /* qi_row_bytes */
}

/* ---- the pool -------------------------------------------------------------------------- */

static void *pin_chunk(void *ctx, size_t bytes, char *why, size_t cap) {
    cuda_impl *c = (cuda_impl *)ctx;
    void *p = NULL;
    int prev = device_enter(c);
    cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    device_leave(prev);
    if (e == cudaSuccess) return p;
    cudaGetLastError(); /* not sticky, but clear it: the caller reports through the pool */
    snprintf(why, cap, "%s", cudaGetErrorString(e));
    return NULL;
}

static void unpin_chunk(void *ctx, void *p) {
    int prev = device_enter((cuda_impl *)ctx);
    cudaFreeHost(p);
    device_leave(prev);
}

/* The default pinned budget: QI_PINNED_MAX (a size: "0", "8G") when set, else
 * half the memory this process may use (the RAM, or a container's smaller
 * cgroup limit: pinned pages count against it). */
static size_t default_pinned_max(void) {
    size_t v;
    const char *env = getenv("QI_PINNED_MAX");
    if (env && qi_host_pool_parse_size(env, &v) == 0) return v;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t ram = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : (size_t)16 << 30;
    const char *limits[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(limits[i], "r");
        unsigned long long lim = 0;
        if (!f) continue;
        if (fscanf(f, "%llu", &lim) == 1 && lim > 0 && lim < ram) ram = (size_t)lim; /* "max": no limit */
        fclose(f);
    }
    return qi_host_pool_default_max(ram);
}

qi_status qc_host_init(cuda_impl *c, qi_error *err) {
    qi_host_pool_ops ops = {pin_chunk, unpin_chunk, c};
    c->ring_cur = -1;
    c->hpool = qi_host_pool_new(&ops, default_pinned_max(), 0);
    return c->hpool ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "cuda backend: out of host memory");
}

void qc_host_destroy(cuda_impl *c) {
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream); /* the ring's last copies */
    for (int k = 0; k < QC_RING_CHUNKS; k++) {
        if (c->ring[k]) cudaFreeHost(c->ring[k]);
        if (c->ring_done[k]) cudaEventDestroy(c->ring_done[k]);
        c->ring[k] = NULL;
        c->ring_done[k] = NULL;
    }
    qi_host_pool_destroy(c->hpool); /* host weights not freed by their owner go here */
    c->hpool = NULL;
}

qi_status qc_host_alloc(cuda_impl *c, size_t bytes, void **out, int *pinned, qi_error *err) {
    return qi_host_pool_alloc(c->hpool, bytes, out, pinned, err);
}

int qc_host_kind(const cuda_impl *c, const void *p) { return qi_host_pool_kind(c->hpool, p); }
void qc_host_free(cuda_impl *c, void *p) { qi_host_pool_free(c->hpool, p); }

void cuda_host_budget(qi_backend *be, size_t pinned_max) {
    qi_host_pool_set_pinned_max(cuda_of(be)->hpool, pinned_max);
}

/* ---- slots ----------------------------------------------------------------------------- */

struct qi_slot {
    void *dev;
    size_t bytes;
    cudaEvent_t ready; /* recorded on the copy stream after the slot's last stage */
};

qi_status cuda_slot_new(qi_backend *be, size_t bytes, qi_slot **out, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    *out = NULL;
    qi_slot *s = (qi_slot *)calloc(1, sizeof *s);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "cuda backend: out of host memory");
    int prev = device_enter(c);
    cudaError_t e = cudaSuccess;
    if (!c->copy_stream) e = cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking);
    if (e == cudaSuccess && !c->compute_mark) e = cudaEventCreateWithFlags(&c->compute_mark, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaMalloc(&s->dev, bytes ? bytes : 1);
    device_leave(prev);
    if (e != cudaSuccess) {
        if (s->ready) cudaEventDestroy(s->ready);
        free(s);
        return qi_fail(err, e == cudaErrorMemoryAllocation ? QI_ERR_NOMEM : QI_ERR_BACKEND,
                       "cuda backend: a %zu MiB weight slot: %s (%zu MiB of weights held)", bytes >> 20,
                       cudaGetErrorString(e), c->weight_bytes >> 20);
    }
    s->bytes = bytes;
    c->weight_bytes += bytes;
    if (c->weight_bytes > c->weight_peak) c->weight_peak = c->weight_bytes;
    *out = s;
    return QI_OK;
}

void cuda_slot_free(qi_backend *be, qi_slot *s) {
    cuda_impl *c = cuda_of(be);
    if (!s) return;
    int prev = device_enter(c);
    qc_wbuf_settle(c, 1); /* a prefetched expansion may read the slot; what it held is named by slot addresses */
    cudaStreamSynchronize(c->stream);
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream);
    cudaFree(s->dev);
    cudaEventDestroy(s->ready);
    device_leave(prev);
    c->weight_bytes = c->weight_bytes >= s->bytes ? c->weight_bytes - s->bytes : 0;
    free(s);
}

/* ---- the bounce ring ------------------------------------------------------------------- */

/* Made on the first stage of a weight in ordinary memory, so a run that
 * pins everything never pins the ring's 256 MiB. */
static qi_status ring_make(cuda_impl *c, qi_error *err) {
    for (int k = 0; k < QC_RING_CHUNKS; k++) {
        cudaError_t e = cudaSuccess;
        if (!c->ring[k]) e = cudaHostAlloc(&c->ring[k], QC_RING_BYTES, cudaHostAllocDefault);
        if (e == cudaSuccess && !c->ring_done[k])
            e = cudaEventCreateWithFlags(&c->ring_done[k], cudaEventDisableTiming);
        if (e != cudaSuccess) {
            return qi_fail(err, QI_ERR_NOMEM, "cuda backend: the bounce ring for streamed weights in ordinary memory "
                           "(%d pinned buffers of %zu MiB): %s; free host memory", QC_RING_CHUNKS,
                           QC_RING_BYTES >> 20, cudaGetErrorString(e));
        }
    }
    return QI_OK;
}

/* Moves to the next ring buffer: the one left is marked (its copies are all
 * queued), and the host waits until the next one's previous copies have run.
 * That wait is what keeps a buffer from being overwritten in flight; it can
 * block the host while the copy stream still waits for compute (a stage waits
 * for the ops queued before it), which only matters for units larger than the
 * ring (a bf16 text-encoder layer): a Q4_K block fits it whole. */
static cudaError_t ring_advance(cuda_impl *c) {
    cudaError_t e = cudaSuccess;
    if (c->ring_cur >= 0) e = cudaEventRecord(c->ring_done[c->ring_cur], c->copy_stream);
    int k = (c->ring_cur + 1) % QC_RING_CHUNKS;
    if (e == cudaSuccess) e = cudaEventSynchronize(c->ring_done[k]); /* never recorded: returns at once */
    c->ring_cur = k;
    c->ring_off = 0;
    return e;
}

/* dst (device) = src (ordinary host memory), through the ring on the copy
 * stream: small weights share a buffer, large ones take several in turn. */
static cudaError_t ring_copy(cuda_impl *c, void *dst, const void *src, size_t bytes) {
    cudaError_t e = cudaSuccess;
    for (size_t done = 0; done < bytes && e == cudaSuccess;) {
        if (c->ring_cur < 0 || c->ring_off >= QC_RING_BYTES) e = ring_advance(c);
        if (e != cudaSuccess) break;
        size_t room = QC_RING_BYTES - c->ring_off, m = bytes - done < room ? bytes - done : room;
        char *buf = (char *)c->ring[c->ring_cur] + c->ring_off;
        qc_host_copy(c, buf, (const char *)src + done, m);
        e = cudaMemcpyAsync((char *)dst + done, buf, m, cudaMemcpyHostToDevice, c->copy_stream);
        c->ring_off = (c->ring_off + m + 255) & ~(size_t)255;
        done += m;
    }
    return e;
}

/* The copy stream waits for everything queued on the compute stream so far
 * (the slot's previous readers among it), copies, and marks the slot ready.
 * Pinned weights are copied as they are; ordinary ones through the ring. */
qi_status cuda_stage(qi_backend *be, qi_slot *s, const qi_tensor *src, qi_tensor *dst, int n, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    size_t off = 0;
    int bounced = 0;
    for (int i = 0; i < n; i++) {
        off = ((off + 255) & ~(size_t)255) + qi_nbytes(&src[i]);
        bounced |= qc_host_kind(c, src[i].data) == 0;
    }
    if (off > s->bytes)
        return qi_fail(err, QI_ERR_ARG, "cuda backend: %d weights of %zu bytes staged into a slot of %zu", n, off,
                       s->bytes);
    qi_status st = bounced && !c->ring[QC_RING_CHUNKS - 1] ? ring_make(c, err) : QI_OK;
    if (st != QI_OK) return st;
    /* a prefetched expansion may read the slot's weights: the copy waits for it too; and what the buffers
       hold is named by address, which the slot's next weights take over */
    qc_wbuf_settle(c, 1);
    cudaError_t e = cudaEventRecord(c->compute_mark, c->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->copy_stream, c->compute_mark, 0);
    off = 0;
    for (int i = 0; i < n && e == cudaSuccess; i++) {
        size_t bytes = qi_nbytes(&src[i]);
        off = (off + 255) & ~(size_t)255;
        dst[i] = src[i];
        dst[i].data = (char *)s->dev + off;
        if (qc_host_kind(c, src[i].data) == 0) {
            e = ring_copy(c, dst[i].data, src[i].data, bytes);
            c->h2d_bounced += bytes;
        } else {
            e = cudaMemcpyAsync(dst[i].data, src[i].data, bytes, cudaMemcpyHostToDevice, c->copy_stream);
            c->h2d_pinned += bytes;
        }
        off += bytes;
    }
    if (e == cudaSuccess && bounced && c->ring_cur >= 0) /* the ring buffer left partly filled */
        e = cudaEventRecord(c->ring_done[c->ring_cur], c->copy_stream);
    if (e == cudaSuccess) e = cudaEventRecord(s->ready, c->copy_stream);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "stage (weights into a slot)");
}

void cuda_stage_wait(qi_backend *be, qi_slot *s) {
    cuda_impl *c = cuda_of(be);
    cudaError_t e = cudaStreamWaitEvent(c->stream, s->ready, 0);
    if (e != cudaSuccess) qc_fail(c, QI_ERR_BACKEND, "cuda backend: stage_wait: %s", cudaGetErrorString(e));
}

/* ---- embedding from a table in ordinary memory ------------------------------------------ */

__global__ void gather_row_scale_k(float *dst, const float *row_scale, const int32_t *ids, int64_t V, int64_t n) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
        int64_t id = ids[j];
        dst[j] = id >= 0 && id < V ? row_scale[id] : 0.0f;
    }
}

int qc_host_gather_rows(cuda_impl *c, const qi_tensor *table, const qi_tensor *ids, qi_tensor *rows,
                        qi_tensor *ids_out) {
    int64_t n = qi_numel(ids), V = table->ne[0];
    size_t row = (size_t)qi_row_bytes(table->dtype, table->ne[table->ndim - 1]);
    size_t table_bytes = ((size_t)n * row + 255) & ~(size_t)255, id_bytes = ((size_t)n * 4 + 255) & ~(size_t)255;
    int row_scaled = table->scale_form == QI_SCALE_ROW;
    if (table->ndim != 2 || table_bytes + 2 * id_bytes > c->scratch_bytes || (size_t)n * row > c->staging_bytes ||
        id_bytes > c->staging_bytes) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: embedding of %lld ids from a table in ordinary host memory: at most "
                "%zu MiB of rows at once (give --pinned enough for the table)", (long long)n, c->staging_bytes >> 20);
        return 1;
    }
    /* the ids to the host (the stream drained: the staging buffers are free) */
    int32_t *hid = (int32_t *)c->staging[0];
    char *hrows = (char *)c->staging[1];
    cudaError_t e = cudaMemcpyAsync(hid, ids->data, (size_t)n * 4, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: embedding (ids to the host): %s", cudaGetErrorString(e));
        return 1;
    }
    for (int64_t j = 0; j < n; j++) { /* an id out of range reads a zero row, as no row of the table */
        char *d = hrows + (size_t)j * row;
        if (hid[j] >= 0 && hid[j] < V) memcpy(d, (const char *)table->data + (size_t)hid[j] * row, row);
        else memset(d, 0, row);
        hid[j] = (int32_t)j;
    }
    *rows = *table;
    rows->ne[0] = n;
    rows->data = c->scratch;
    *ids_out = *ids;
    ids_out->data = c->scratch + table_bytes;
    e = cudaMemcpyAsync(rows->data, hrows, (size_t)n * row, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess && row_scaled) { /* the row scales of the rows taken, by the ids still on the device */
        float *rs = (float *)(c->scratch + table_bytes + id_bytes);
        gather_row_scale_k<<<(unsigned)((n + 255) / 256), 256, 0, c->stream>>>(rs, table->row_scale,
                                                                              (const int32_t *)ids->data, V, n);
        e = cudaGetLastError();
        rows->row_scale = rs;
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(ids_out->data, hid, (size_t)n * 4, cudaMemcpyHostToDevice, c->stream);
    /* the staging buffers are read by those copies: uploads wait for these events before refilling them */
    for (int k = 0; k < 2 && e == cudaSuccess; k++) e = cudaEventRecord(c->staging_free[k], c->stream);
    if (e != cudaSuccess) {
        qc_fail(c, QI_ERR_BACKEND, "cuda backend: embedding (rows to the device): %s", cudaGetErrorString(e));
        return 1;
    }
    return 0;
}

/* ---- the link and the counters ---------------------------------------------------------- */

/* Median GB/s of `runs` plain cudaMemcpy calls of `bytes` from src. */
static double copy_gbps(void *dev, const void *src, size_t bytes, int runs, cudaError_t *e) {
    double best[32];
    int n = runs < 1 ? 1 : runs > 32 ? 32 : runs;
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < n + 1 && *e == cudaSuccess; i++) { /* the first run warms up */
        cudaEventRecord(a, 0);
        *e = cudaMemcpy(dev, src, bytes, cudaMemcpyHostToDevice);
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        if (i) best[i - 1] = (double)bytes / (ms / 1e3) / 1e9;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    for (int i = 1; i < n; i++) /* insertion sort: n is small */
        for (int j = i; j > 0 && best[j] < best[j - 1]; j--) {
            double t = best[j];
            best[j] = best[j - 1];
            best[j - 1] = t;
        }
    return *e == cudaSuccess ? best[n / 2] : -1;
}

extern "C" qi_status qi_cuda_link_peak(qi_backend *be, size_t bytes, int runs, double *pinned_gbps,
                                       double *pageable_gbps, qi_error *err) {
    cuda_impl *c = cuda_of(be);
    *pinned_gbps = *pageable_gbps = -1;
    int prev = device_enter(c);
    cudaStreamSynchronize(c->stream); /* nothing of ours shares the link while it is timed */
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream);
    void *dev = NULL, *pinned = NULL, *pageable = malloc(bytes);
    cudaError_t e = pageable ? cudaMalloc(&dev, bytes) : cudaErrorMemoryAllocation;
    if (e == cudaSuccess) e = cudaHostAlloc(&pinned, bytes, cudaHostAllocDefault);
    if (e == cudaSuccess) {
        memset(pageable, 1, bytes); /* touched: no page faults in the timing */
        memset(pinned, 1, bytes);
        *pinned_gbps = copy_gbps(dev, pinned, bytes, runs, &e);
        if (e == cudaSuccess) *pageable_gbps = copy_gbps(dev, pageable, bytes, runs, &e);
    }
    if (pinned) cudaFreeHost(pinned);
    cudaFree(dev);
    free(pageable);
    device_leave(prev);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "link measurement (cudaMemcpy host to device)");
}

extern "C" void qi_cuda_host_info(qi_backend *be, qi_cuda_host *out) {
    cuda_impl *c = cuda_of(be);
    qi_host_pool_stats s;
    qi_host_pool_stats_get(c->hpool, &s);
    out->pinned_max = s.pinned_max;
    out->pinned_held = s.pinned_held;
    out->pageable_held = s.pageable_held;
    out->ring_bytes = c->ring[0] ? QC_RING_CHUNKS * QC_RING_BYTES : 0;
    out->staged_pinned = c->h2d_pinned;
    out->staged_bounced = c->h2d_bounced;
}

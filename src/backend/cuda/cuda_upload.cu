/*
 * cuda_upload.cu — how host bytes reach the CUDA backend's device memory:
 * the host conversion (to bf16, scaled; or the stored bytes as they are),
 * split over a pool of waiting threads, into a lane's two pinned staging
 * buffers while the previous buffer's copy runs; the two upload lanes (a
 * second load on another thread takes lane 1); and the load settings.
 *
 * The cost of a byte, file in the page cache → device (dev/load_read_bench.c
 * on the CPU; bench/RESULTS.md on an H200): a memcpy out of a file mapping
 * touched for the first time pays a page fault every few pages and the page
 * tables (1.9 GB/s per core here); a pread of the same range only the copy
 * (11.5 GB/s), so a straight copy out of a mapped file is a pread
 * (qi_mapped_read), and a conversion reads its source by pread in small
 * pieces. The copy engine takes ~54 GB/s from pinned memory.
 * dev/cuda/upload_host_check.cu checks the host side's bytes on a CPU.
 *
 * Settings (read once, at creation):
 *   QI_LOAD_FAST=0         the path before the pool: threads started per
 *                          chunk, half the cores (<= 8), memcpy from the
 *                          mapping, each weight's staging from buffer 0
 *   QI_LOAD_PREAD=1        pread from the mapped file instead of memcpy from the mapping (off by default)
 *   QI_CUDA_LOAD_THREADS=N threads per conversion (default: the cores,
 *                          shared by the lanes busy at the time, <= 16)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "backend/work_pool.h"
#include "base/types.h" /* qi_row_bytes, qi_to_f32, qi_f32_to_bf16 */
}

/* Bytes before element i0 of data of type dt: i0 is a whole number of
 * blocks for the GGUF block types (the chunking below keeps it so). */
static size_t elem_offset(qi_dtype dt, size_t i0) { return (size_t)qi_row_bytes(dt, (int64_t)i0); }

/* Converts n elements of host data of type `dt` (an element type or a GGUF
 * block type, dequantised by its traits) into `out_dt` (BF16, F16, F32 or I32
 * copied as is), the elements being g0 … g0+n of their tensor (for the row
 * scales). Float host data for activations is float32. */
static void convert_elements(void *dst, qi_dtype out_dt, const void *src, qi_dtype dt, size_t n,
                             const convert_scale *sc, size_t g0) {
    float buf[1024]; /* a multiple of every block (32, 256) */
    for (size_t i0 = 0; i0 < n; i0 += 1024) {
        size_t m = n - i0 < 1024 ? n - i0 : 1024;
        const float *f = buf;
        if (dt == QI_F32 && sc->form == QI_SCALE_NONE)
            f = (const float *)src + i0;
        else
            qi_to_f32(buf, (const char *)src + elem_offset(dt, i0), dt, m);
        if (sc->form == QI_SCALE_TENSOR)
            for (size_t i = 0; i < m; i++) buf[i] *= sc->scale;
        else if (sc->form == QI_SCALE_ROW)
            for (size_t i = 0; i < m; i++) buf[i] *= sc->row_scale[(g0 + i0 + i) / (size_t)sc->row_len];
        if (out_dt == QI_BF16) {
            uint16_t *o = (uint16_t *)dst + i0;
            for (size_t i = 0; i < m; i++) o[i] = qi_f32_to_bf16(f[i]);
        } else if (out_dt == QI_F16) {
            uint16_t *o = (uint16_t *)dst + i0;
            for (size_t i = 0; i < m; i++) o[i] = qi_f32_to_f16(f[i]);
        } else {
            memcpy((float *)dst + i0, f, m * sizeof(float));
        }
    }
}

/* host_convert's pieces read by pread: 16384 elements, a whole number of
 * blocks of every block type (256 at most), <= 64 KiB of float32 source. */
#define PREAD_PIECE 16384

/* convert_elements, or for the bytes as they are a copy; with use_pread the
 * source, when it lies in a file mapping (qi_mapped_read), is read by pread
 * (the copy straight into dst; a conversion through a small buffer, piece
 * by piece) instead of being touched through the mapping. The same bytes
 * either way. */
static void host_convert(void *dst, qi_dtype out_dt, const void *src, qi_dtype dt, size_t n,
                         const convert_scale *sc, size_t g0, int use_pread) {
    if (out_dt == dt && sc->form == QI_SCALE_NONE) { /* the bytes as they are: read, not converted */
        size_t bytes = n * qi_dtype_size(dt);
        if (!(use_pread && qi_mapped_read(dst, src, bytes))) memcpy(dst, src, bytes);
        return;
    }
    size_t out_esz = qi_dtype_size(out_dt);
    char *piece = use_pread && n > 0 ? (char *)malloc(elem_offset(dt, PREAD_PIECE)) : NULL;
    for (size_t p0 = 0; piece && p0 < n; p0 += PREAD_PIECE) {
        size_t m = n - p0 < PREAD_PIECE ? n - p0 : PREAD_PIECE;
        const char *from = (const char *)src + elem_offset(dt, p0);
        if (!qi_mapped_read(piece, from, elem_offset(dt, m))) {
            if (p0 > 0) memcpy(piece, from, elem_offset(dt, m)); /* a read failed midway */
            else break; /* not a mapped file: straight from src below */
        }
        convert_elements((char *)dst + p0 * out_esz, out_dt, piece, dt, m, sc, g0 + p0);
        if (p0 + m == n) {
            free(piece);
            return;
        }
    }
    free(piece);
    convert_elements(dst, out_dt, src, dt, n, sc, g0);
}

/* qc_convert is host_convert split over several threads: a conversion runs
 * at a few GB/s per core, and reading a file mapping touched for the first
 * time costs a page fault every few pages (host_convert reads by pread
 * instead), both well under the PCIe copy, so several cores fill each chunk. */
typedef struct convert_job {
    void *dst;
    qi_dtype out_dt;
    const void *src;
    qi_dtype dt;
    size_t n, g0;
    const convert_scale *sc;
    int use_pread;
} convert_job;

static void *convert_thread(void *arg) {
    convert_job *j = (convert_job *)arg;
    host_convert(j->dst, j->out_dt, j->src, j->dt, j->n, j->sc, j->g0, j->use_pread);
    return NULL;
}

#define MAX_LOAD_THREADS 16

/* The threads one conversion uses now: QI_CUDA_LOAD_THREADS when set, else
 * the cores shared by the upload lanes busy at this moment (two loads at
 * once split them; one alone, as the transformer is once the text encoder
 * is in, takes them all). */
static int convert_threads(const cuda_impl *c) {
    int threads = c->load_threads;
    if (threads <= 0) {
        int busy = __atomic_load_n(&c->lane_busy[0], __ATOMIC_RELAXED) +
                   __atomic_load_n(&c->lane_busy[1], __ATOMIC_RELAXED);
        threads = c->load_cores / (busy > 1 ? busy : 1);
    }
    return threads < 1 ? 1 : threads > MAX_LOAD_THREADS ? MAX_LOAD_THREADS : threads;
}

static void convert_job_run(void *arg) { convert_thread(arg); }

/* Splits the conversion into parts of whole pages (of the source, mostly)
 * and whole blocks, and runs them on the work pool (QI_LOAD_FAST, the
 * default: parts of 1 MiB at least, so a small weight is not split finer
 * than its threads are worth) or on threads started for this call (the old
 * path: whole when under 4 MiB). */
void qc_convert(const cuda_impl *c, void *dst, qi_dtype out_dt, const void *src, qi_dtype dt, size_t n,
                const convert_scale *sc, size_t g0) {
    size_t out_esz = qi_dtype_size(out_dt), out_bytes = n * out_esz;
    int threads = convert_threads(c);
    if (c->work_pool) {
        size_t parts = out_bytes >> 20;
        if ((size_t)threads > parts) threads = parts ? (int)parts : 1;
    } else if (out_bytes < ((size_t)4 << 20)) {
        threads = 1;
    }
    if (threads <= 1) {
        host_convert(dst, out_dt, src, dt, n, sc, g0, c->load_pread);
        return;
    }
    convert_job jobs[MAX_LOAD_THREADS];
    int count = 0;
    size_t per = (n + (size_t)threads - 1) / (size_t)threads;
    per = (per + 4095) & ~(size_t)4095; /* whole pages of the source, mostly; whole blocks */
    for (size_t i0 = 0; i0 < n && count < threads; i0 += per, count++) {
        convert_job *j = &jobs[count];
        j->n = n - i0 < per ? n - i0 : per;
        j->dst = (char *)dst + i0 * out_esz;
        j->out_dt = out_dt;
        j->src = (const char *)src + elem_offset(dt, i0);
        j->dt = dt;
        j->sc = sc;
        j->g0 = g0 + i0;
        j->use_pread = c->load_pread;
    }
    if (c->work_pool) {
        qi_work_pool_run(c->work_pool, convert_job_run, jobs, sizeof *jobs, count);
        return;
    }
    pthread_t th[MAX_LOAD_THREADS];
    int started[MAX_LOAD_THREADS] = {0};
    for (int i = 1; i < count; i++) started[i] = pthread_create(&th[i], NULL, convert_thread, &jobs[i]) == 0;
    for (int i = 0; i < count; i++) /* this thread does job 0 and any that did not start */
        if (!started[i]) convert_thread(&jobs[i]);
    for (int i = 0; i < count; i++)
        if (started[i]) pthread_join(th[i], NULL);
}

upload_lane qc_lane_of(cuda_impl *c, int k) {
    upload_lane l = {c->staging, c->staging_free, c->stream, &c->lane_next[0], &c->lane_stat[0].fill_s,
                     &c->lane_stat[0].wait_s, &c->lane_stat[0].bytes};
    if (k == 1)
        l = upload_lane{c->lane_staging, c->lane_free, c->lane_stream, &c->lane_next[1], &c->lane_stat[1].fill_s,
                        &c->lane_stat[1].wait_s, &c->lane_stat[1].bytes};
    return l;
}

/* Host data of type src_dt -> device tensor of type dst_dt, through the
 * lane's two pinned staging buffers so conversion of one chunk overlaps the
 * copy of the previous one. With load_rotate the buffers alternate across
 * weights too: every weight of the transformer fits one 64 MiB chunk, so
 * starting each at buffer 0 would wait for the previous weight's copy before
 * reading the next (the copy never overlapping the host's work). */
qi_status qc_lane_upload(const cuda_impl *c, upload_lane l, void *dev, qi_dtype dst_dt, const void *host,
                         qi_dtype src_dt, size_t n, const convert_scale *sc, qi_error *err) {
    size_t out_esz = qi_dtype_size(dst_dt);
    size_t chunk = c->staging_bytes / out_esz / 256 * 256; /* whole blocks of any block type */
    cudaError_t e;
    size_t k0 = c->load_rotate ? (size_t)*l.next : 0;
    for (size_t i0 = 0, k = k0; i0 < n; i0 += chunk, k++) {
        size_t m = n - i0 < chunk ? n - i0 : chunk;
        int s = (int)(k & 1);
        *l.next = 1 - s;
        double t0 = qi_now_s();
        if ((e = cudaEventSynchronize(l.free[s])) != cudaSuccess)
            return cuda_err(err, e, "upload (waiting for staging)");
        double t1 = qi_now_s();
        qc_convert(c, l.staging[s], dst_dt, (const char *)host + elem_offset(src_dt, i0), src_dt, m, sc, i0);
        *l.wait_s += t1 - t0;
        *l.fill_s += qi_now_s() - t1;
        *l.bytes += m * out_esz;
        if ((e = cudaMemcpyAsync((char *)dev + i0 * out_esz, l.staging[s], m * out_esz, cudaMemcpyHostToDevice,
                                 l.stream)) != cudaSuccess)
            return cuda_err(err, e, "upload (copy)");
        if ((e = cudaEventRecord(l.free[s], l.stream)) != cudaSuccess)
            return cuda_err(err, e, "upload (event)");
    }
    return QI_OK;
}

/* A free lane for one weight's upload (under load_mu): lane 0 unless another
 * thread's weight holds it; lane 1's buffers and stream made on first need. */
qi_status qc_lane_take(cuda_impl *c, int *lane, qi_error *err) {
    *lane = __atomic_load_n(&c->lane_busy[0], __ATOMIC_RELAXED) ? 1 : 0;
    if (*lane == 1 && __atomic_load_n(&c->lane_busy[1], __ATOMIC_RELAXED))
        return qi_fail(err, QI_ERR_BACKEND, "cuda backend: weights made from more than two threads at once");
    cudaError_t e = cudaSuccess;
    if (*lane == 1 && !c->lane_stream) {
        for (int i = 0; i < 2 && e == cudaSuccess; i++) {
            if (!c->lane_staging[i]) e = cudaHostAlloc(&c->lane_staging[i], c->staging_bytes, cudaHostAllocDefault);
            if (e == cudaSuccess && !c->lane_free[i]) e = cudaEventCreateWithFlags(&c->lane_free[i], cudaEventDisableTiming);
        }
        if (e == cudaSuccess && !c->lane_done) e = cudaEventCreateWithFlags(&c->lane_done, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->lane_stream, cudaStreamNonBlocking);
    }
    if (e != cudaSuccess) return cuda_err(err, e, "the second upload lane (pinned staging for a concurrent load)");
    __atomic_store_n(&c->lane_busy[*lane], 1, __ATOMIC_RELAXED);
    return QI_OK;
}

/* Gives the lane back (under load_mu). Lane 1's copies are ordered before
 * everything queued on `stream` from now on, as lane 0's are by being on it. */
qi_status qc_lane_give(cuda_impl *c, int lane, qi_error *err) {
    __atomic_store_n(&c->lane_busy[lane], 0, __ATOMIC_RELAXED);
    if (lane == 0) return QI_OK;
    cudaError_t e = cudaEventRecord(c->lane_done, c->lane_stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(c->stream, c->lane_done, 0);
    return e == cudaSuccess ? QI_OK : cuda_err(err, e, "upload (ordering the second lane)");
}

static void lanes_destroy(cuda_impl *c) {
    if (c->lane_stream) {
        cudaStreamSynchronize(c->lane_stream);
        cudaStreamDestroy(c->lane_stream);
    }
    for (int i = 0; i < 2; i++) {
        if (c->lane_staging[i]) cudaFreeHost(c->lane_staging[i]);
        if (c->lane_free[i]) cudaEventDestroy(c->lane_free[i]);
    }
    if (c->lane_done) cudaEventDestroy(c->lane_done);
    if (c->load_mu_made) pthread_mutex_destroy(&c->load_mu);
}

qi_status qc_upload_init(cuda_impl *c, qi_error *err) {
    /* host threads filling the upload staging: QI_CUDA_LOAD_THREADS; by default the cores shared by
     * the busy lanes (convert_threads), or with QI_LOAD_FAST=0 (the old path, a yardstick) half the
     * cores, <= 8, no pread, no rotation. QI_LOAD_PREAD=1 reads the mapped file by pread instead of
     * memcpy from the mapping: off by default since runs Z and AA on the H200 (warm start → image: 9.06
     * and 10.82 s with it, 8.08 without, 8.52 and 9.26 the old path; the CPU here favoured it). */
    const char *lt = getenv("QI_CUDA_LOAD_THREADS"), *fast = getenv("QI_LOAD_FAST"), *pr = getenv("QI_LOAD_PREAD");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int old = fast && fast[0] == '0';
    c->load_cores = cores < 1 ? 1 : cores > 64 ? 64 : (int)cores;
    c->load_threads = lt ? atoi(lt) : old ? (int)(cores / 2 < 8 ? cores / 2 : 8) : 0;
    if (lt && c->load_threads < 1) c->load_threads = 1;
    if (old && c->load_threads < 1) c->load_threads = 1;
    c->load_pread = !old && pr && pr[0] == '1';
    c->load_rotate = !old;
    /* waiting threads for the parts: as many as one conversion may use, less the caller */
    int most = c->load_threads > 0 ? c->load_threads : c->load_cores;
    most = most > MAX_LOAD_THREADS ? MAX_LOAD_THREADS : most;
    return !old && most > 1 ? qi_work_pool_new(most - 1, &c->work_pool, err) : QI_OK;
}

/* "cuda upload: 37.07 GB (lanes 0/1: 20.4/16.6) ..." — what the uploads so
 * far cost: reading is the staging's fill (pread or conversion), waiting is
 * for a staging buffer's previous copy (the link; time the copy engine was
 * the slower side), cudaMalloc the weights' device memory. */
void qc_load_report(qi_backend *be, char *line, size_t cap) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    char threads[64];
    if (c->load_threads > 0) snprintf(threads, sizeof threads, "%d threads", c->load_threads);
    else snprintf(threads, sizeof threads, "%d cores shared by the busy lanes", c->load_cores);
    snprintf(line, cap, "cuda upload: %.2f GB (lanes 0/1: %.2f/%.2f), reading into staging %.2f/%.2f s, waiting for "
             "the copies %.2f/%.2f s; cudaMalloc of %llu weights %.2f s; %s%s, pread %s, staging %s",
             (c->lane_stat[0].bytes + c->lane_stat[1].bytes) / 1e9, c->lane_stat[0].bytes / 1e9,
             c->lane_stat[1].bytes / 1e9, c->lane_stat[0].fill_s, c->lane_stat[1].fill_s, c->lane_stat[0].wait_s,
             c->lane_stat[1].wait_s, c->alloc_count, c->alloc_s, threads,
             c->work_pool ? " (a pool)" : " (started per chunk)", c->load_pread ? "on" : "off",
             c->load_rotate ? "alternating across weights" : "from buffer 0 per weight");
}

void qc_upload_destroy(cuda_impl *c) {
    lanes_destroy(c);
    qi_work_pool_free(c->work_pool);
    c->work_pool = NULL;
}

/*
 * load_host_bench.c — the host side of the CUDA upload, without a GPU: every
 * tensor of a safetensors file, opened afresh (a new mapping, as a process
 * start has), read into two alternating 64 MiB buffers the way
 * cuda_upload.cu fills its pinned staging — the old way (threads started per
 * chunk, memcpy out of the mapping, parts of a chunk under 4 MiB not split)
 * against the new (a work pool, qi_mapped_read = pread, parts >= 1 MiB).
 * What it leaves out: the device copy (~54 GB/s on an H200, overlapped) and
 * cudaMalloc per weight.
 *
 *   cmake --build build --target qwenimage
 *   cc -O2 -pthread -Isrc -Iinclude dev/load_host_bench.c build/libqwenimage.a -lm -o /tmp/lhb
 *   /tmp/lhb FILE.safetensors THREADS
 * A developer's yardstick: not built by CMake, not part of the library.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/work_pool.h"
#include "io/safetensors.h"

#define STAGING ((size_t)64 << 20)
#define MAXT 16

typedef struct part {
    char *dst;
    const char *src;
    size_t n;
    int use_pread;
} part;

static void run_part(void *arg) {
    part *p = arg;
    if (!(p->use_pread && qi_mapped_read(p->dst, p->src, p->n))) memcpy(p->dst, p->src, p->n);
}

static void *run_part_thread(void *arg) {
    run_part(arg);
    return NULL;
}

/* One chunk of n bytes into dst over `threads` (the new way: on the pool). */
static void fill(char *dst, const char *src, size_t n, int threads, qi_work_pool *pool) {
    if (pool) {
        size_t parts = n >> 20;
        if ((size_t)threads > parts) threads = parts ? (int)parts : 1;
    } else if (n < ((size_t)4 << 20)) {
        threads = 1;
    }
    part ps[MAXT];
    int count = 0;
    size_t per = ((n + (size_t)threads - 1) / (size_t)threads + 4095) & ~(size_t)4095;
    for (size_t o = 0; o < n && count < threads; o += per, count++)
        ps[count] = (part){dst + o, src + o, n - o < per ? n - o : per, pool != NULL};
    if (pool) {
        qi_work_pool_run(pool, run_part, ps, sizeof *ps, count);
        return;
    }
    pthread_t th[MAXT];
    for (int i = 1; i < count; i++) pthread_create(&th[i], NULL, run_part_thread, &ps[i]);
    run_part(&ps[0]);
    for (int i = 1; i < count; i++) pthread_join(th[i], NULL);
}

static double pass(const char *path, char *staging[2], int threads, qi_work_pool *pool, double *gb) {
    double t0 = qi_now_s();
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    if (qi_st_open(path, &f, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    size_t bytes = 0, k = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const qi_st_tensor *t = &f->tensors[i];
        for (size_t o = 0; o < t->nbytes; o += STAGING) {
            size_t n = t->nbytes - o < STAGING ? t->nbytes - o : STAGING;
            fill(staging[pool ? k++ & 1 : (o / STAGING) & 1], (const char *)t->data + o, n, threads, pool);
            bytes += n;
        }
    }
    qi_st_close(f);
    *gb = bytes / 1e9;
    return qi_now_s() - t0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FILE.safetensors THREADS\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]);
    threads = threads < 1 ? 1 : threads > MAXT ? MAXT : threads;
    char *staging[2] = {malloc(STAGING), malloc(STAGING)};
    memset(staging[0], 1, STAGING);
    memset(staging[1], 1, STAGING);
    qi_work_pool *pool = NULL;
    qi_error err = {{0}};
    if (qi_work_pool_new(threads - 1, &pool, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double gb = 0;
    pass(argv[1], staging, threads, pool, &gb); /* the file into the page cache */
    printf("%s: %.2f GB, %d threads\n| path | best of 3 | GB/s |\n|---|---|---|\n", argv[1], gb, threads);
    for (int m = 0; m < 2; m++) {
        double best = 1e9;
        for (int r = 0; r < 3; r++) {
            double s = pass(argv[1], staging, threads, m ? pool : NULL, &gb);
            best = s < best ? s : best;
        }
        printf("| %s | %.3f s | %.2f |\n", m ? "new (pool, pread, parts >= 1 MiB)" : "old (threads per chunk, memcpy from the mapping)",
               best, gb / best);
    }
    qi_work_pool_free(pool);
    free(staging[0]);
    free(staging[1]);
    return 0;
}

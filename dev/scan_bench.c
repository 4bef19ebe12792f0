/*
 * scan_bench.c — the weights' NaN/Inf scan at load, alone: every tensor of a
 * safetensors file, opened afresh (a new mapping, as a process start has, so
 * every page is touched for the first time and pays its fault), checked by
 * qi_check_weight_finite as qi_source_get checks it — on the calling thread
 * (1 thread: no parallel-for, QI_SCAN_THREADS=1) or split over a work pool
 * of T - 1 threads plus the caller (the engine's default). The file should
 * be in the page cache (the first pass puts it there and is not counted).
 *
 *   cmake --build build --target scan_bench
 *   build/scan_bench --write /tmp/w.safetensors 4 F8_E4M3   a sparse file: 4 GiB of 3072×3072 weights
 *   build/scan_bench /tmp/w.safetensors 1 2                 best of 3 passes per thread count
 * A sparse file's holes read as zeros (finite), from the page cache once
 * touched, like `qwen-image bench --write-sparse`'s model folders.
 * A developer's yardstick: not built by default, not part of the library.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/work_pool.h"
#include "base/finite.h"
#include "base/types.h"
#include "io/safetensors.h"

#define SIDE 3072 /* the transformer's hidden size: its attention weights are SIDE × SIDE */

/* A safetensors file of `gib` GiB of SIDE × SIDE weights of type t, the data a hole. */
static int write_sparse(const char *path, double gib, const char *type) {
    qi_dtype t = QI_DTYPE_COUNT;
    for (int i = 0; i < QI_DTYPE_COUNT; i++)
        if (!strcmp(qi_dtype_name((qi_dtype)i), type)) t = (qi_dtype)i;
    if (t == QI_DTYPE_COUNT || !qi_dtype_size(t)) return fprintf(stderr, "%s: not an element type\n", type), 1;
    int64_t each = (int64_t)SIDE * SIDE * (int64_t)qi_dtype_size(t), count = (int64_t)(gib * (1 << 30) / each);
    size_t cap = (size_t)count * 128 + 64, len = 0;
    char *hdr = malloc(cap);
    if (!hdr) return 1;
    len += (size_t)snprintf(hdr + len, cap - len, "{");
    for (int64_t i = 0; i < count; i++)
        len += (size_t)snprintf(hdr + len, cap - len, "%s\"w%05lld\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"data_offsets\":[%lld,%lld]}",
                                i ? "," : "", (long long)i, type, SIDE, SIDE, (long long)(i * each), (long long)((i + 1) * each));
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8) hdr[len++] = ' ';
    FILE *f = fopen(path, "wb");
    uint64_t n = len;
    int bad = !f || fwrite(&n, 8, 1, f) != 1 || fwrite(hdr, 1, len, f) != len || fflush(f) ||
              ftruncate(fileno(f), (off_t)(8 + len + (size_t)(count * each)));
    if (f) bad |= fclose(f) != 0;
    free(hdr);
    if (bad) return fprintf(stderr, "%s: cannot write\n", path), 1;
    printf("%s: %lld weights %dx%d %s, %.2f GiB (sparse)\n", path, (long long)count, SIDE, SIDE, type,
           (double)(count * each) / (1 << 30));
    return 0;
}

static void scan_on_pool(void *pool, void (*fn)(void *job), void *jobs, size_t stride, int n) {
    qi_work_pool_run(pool, fn, jobs, stride, n);
}

/* One pass: open, scan every tensor, close; seconds (munmap included). */
static double pass(const char *path, const qi_parallel_for *par, double *gb) {
    double t0 = qi_now_s();
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    if (qi_st_open(path, &f, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    size_t bytes = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const qi_st_tensor *t = &f->tensors[i];
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        if (qi_check_weight_finite(path, t->name, t->data, t->dtype, n, par, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            exit(1);
        }
        bytes += t->nbytes;
    }
    qi_st_close(f);
    *gb = (double)bytes / 1e9;
    return qi_now_s() - t0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "--write")) return write_sparse(argv[2], atof(argv[3]), argv[4]);
    if (argc < 3) {
        fprintf(stderr, "usage: %s FILE.safetensors THREADS...\n       %s --write FILE GIB TYPE\n", argv[0], argv[0]);
        return 2;
    }
    double gb = 0;
    pass(argv[1], NULL, &gb); /* the file into the page cache */
    printf("%s: %.2f GB, %ld cores\n| threads | best of 3 | GB/s |\n|---|---|---|\n", argv[1], gb,
           sysconf(_SC_NPROCESSORS_ONLN));
    for (int a = 2; a < argc; a++) {
        int threads = atoi(argv[a]);
        qi_work_pool *pool = NULL;
        qi_error err = {{0}};
        if (threads > 1 && qi_work_pool_new(threads - 1, &pool, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        qi_parallel_for par = {scan_on_pool, pool, threads};
        double best = 1e9;
        for (int r = 0; r < 3; r++) {
            double s = pass(argv[1], pool ? &par : NULL, &gb);
            best = s < best ? s : best;
        }
        printf("| %d%s | %.3f s | %.2f |\n", threads, pool ? " (a pool)" : " (the calling thread)", best, gb / best);
        qi_work_pool_free(pool);
    }
    return 0;
}

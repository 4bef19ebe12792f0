/*
 * load_read_bench.c — how fast a file in the page cache reaches a reused
 * host buffer, the way the CUDA backend's upload fills its pinned staging:
 * 64 MiB chunks, each split over T threads, every byte read once.
 *
 *   cc -O2 -pthread dev/load_read_bench.c -o /tmp/lrb && /tmp/lrb FILE [threads...]
 *
 * Methods (each pass a fresh mapping, as a process start has):
 *   mmap       memcpy from a MAP_SHARED mapping (first touch: page faults)
 *   mmap+adv   the same after madvise(MADV_SEQUENTIAL | MADV_WILLNEED)
 *   mmap+pop   madvise(MADV_POPULATE_READ) on each thread's part, then memcpy
 *   pread      pread(2) of each thread's part straight into the buffer
 * munmap's time (tearing down the page tables a pass built) is counted.
 * A developer's yardstick: not built by CMake, not part of the library.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define CHUNK ((size_t)64 << 20)

enum { M_MMAP, M_ADVISE, M_POPULATE, M_PREAD, M_COUNT };
static const char *method_name[M_COUNT] = {"mmap", "mmap+adv", "mmap+pop", "pread"};

typedef struct part {
    int method, fd;
    const char *map; /* the mapping (mmap methods) */
    char *dst;
    size_t off, n; /* file offset and bytes */
} part;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *run_part(void *arg) {
    part *p = arg;
    if (p->method == M_PREAD) {
        for (size_t done = 0; done < p->n;) {
            ssize_t r = pread(p->fd, p->dst + done, p->n - done, (off_t)(p->off + done));
            if (r <= 0) abort();
            done += (size_t)r;
        }
        return NULL;
    }
    if (p->method == M_POPULATE) {
        uintptr_t a = (uintptr_t)(p->map + p->off) & ~(uintptr_t)4095;
        madvise((void *)a, (uintptr_t)(p->map + p->off + p->n) - a, MADV_POPULATE_READ);
    }
    memcpy(p->dst, p->map + p->off, p->n);
    return NULL;
}

/* One pass over the file: seconds, and in *unmap_s the munmap's share. */
static double pass(int method, int fd, size_t size, char *dst, int threads, double *unmap_s) {
    double t0 = now_s();
    const char *map = NULL;
    if (method != M_PREAD) {
        map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) abort();
        if (method == M_ADVISE) madvise((void *)map, size, MADV_SEQUENTIAL | MADV_WILLNEED);
    }
    for (size_t c0 = 0; c0 < size; c0 += CHUNK) {
        size_t m = size - c0 < CHUNK ? size - c0 : CHUNK, per = (m / threads + 4095) & ~(size_t)4095;
        pthread_t th[16];
        part ps[16];
        for (int i = 0; i < threads; i++) {
            size_t o = (size_t)i * per;
            ps[i] = (part){method, fd, map, dst + o, c0 + o, o >= m ? 0 : (m - o < per ? m - o : per)};
            if (i) pthread_create(&th[i], NULL, run_part, &ps[i]);
        }
        run_part(&ps[0]);
        for (int i = 1; i < threads; i++) pthread_join(th[i], NULL);
    }
    double t1 = now_s();
    if (map) munmap((void *)map, size);
    *unmap_s = now_s() - t1;
    return now_s() - t0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [threads...]\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) return perror(argv[1]), 1;
    size_t size = (size_t)sb.st_size;
    char *dst = aligned_alloc(4096, CHUNK);
    memset(dst, 1, CHUNK); /* a reused, resident buffer, like the pinned staging */
    double u;
    pass(M_PREAD, fd, size, dst, 1, &u); /* the file into the page cache */
    printf("%s: %.2f GB\n| method | threads | GB/s (best of 3) | s/GB | munmap s |\n|---|---|---|---|---|\n",
           argv[1], size / 1e9);
    int nt = argc > 2 ? argc - 2 : 1;
    for (int k = 0; k < nt; k++) {
        int threads = argc > 2 ? atoi(argv[2 + k]) : 1;
        if (threads < 1 || threads > 16) threads = 1;
        for (int m = 0; m < M_COUNT; m++) {
            double best = 1e9, best_u = 0;
            for (int r = 0; r < 3; r++) {
                double s = pass(m, fd, size, dst, threads, &u);
                if (s < best) best = s, best_u = u;
            }
            printf("| %s | %d | %.2f | %.3f | %.3f |\n", method_name[m], threads, size / 1e9 / best,
                   best / (size / 1e9), best_u);
        }
    }
    free(dst);
    close(fd);
    return 0;
}

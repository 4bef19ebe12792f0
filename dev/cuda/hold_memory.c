/*
 * hold_memory.c — the companion process of the --vram benchmarks: it takes
 * all but N bytes of a GPU's free memory with plain cudaMalloc, prints what
 * it holds and what is left, then sleeps until killed (SIGTERM, SIGINT). A run
 * started beside it has only those N bytes (less its own CUDA context), so a
 * `--vram N` row is proved real, not only counted.
 *
 *   hold_memory --leave 8G [--device K]
 *     -> "hold_memory: device 0: holding 131.20 GiB, 8.00 GiB left free" then "ready" on stdout
 *
 * Built with CUDA (cmake target hold_memory, not built by default).
 */
#include <cuda_runtime.h>
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GIB(x) ((double)(x) / (double)(1ull << 30))
#define MAX_CHUNKS 4096

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig, stop = 1; }

/* "8G", "6G", "3000M", "1.5G": bytes (binary units); 0 on a bad size. */
static size_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end), unit = 1;
    const char *units = "KMGT", *u = *end ? strchr(units, toupper((unsigned char)*end)) : NULL;
    if (u) {
        for (const char *k = units; k <= u; k++) unit *= 1024;
        end++;
        if (*end == 'i') end++;
        if (*end == 'B' || *end == 'b') end++;
    }
    return end == s || *end || !(v >= 0) ? 0 : (size_t)(v * unit);
}

int main(int argc, char **argv) {
    size_t leave = 0;
    int dev = 0, have_leave = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--leave")) leave = parse_size(argv[i + 1]), have_leave = 1;
        else if (!strcmp(argv[i], "--device")) dev = atoi(argv[i + 1]);
    }
    if (!have_leave || (argc - 1) % 2) {
        fprintf(stderr, "usage: hold_memory --leave SIZE [--device K]   (SIZE: 8G, 6G, 3000M ...)\n");
        return 2;
    }
    if (cudaSetDevice(dev) != cudaSuccess || cudaFree(0) != cudaSuccess) {
        fprintf(stderr, "hold_memory: no CUDA device %d\n", dev);
        return 1;
    }
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    if (free_b <= leave) {
        fprintf(stderr, "hold_memory: device %d has %.2f GiB free, not more than the %.2f GiB to leave\n", dev,
                GIB(free_b), GIB(leave));
        return 1;
    }
    /* whole GiB chunks, then smaller ones down to 2 MiB, until free is at `leave` */
    static void *chunks[MAX_CHUNKS];
    int n = 0;
    size_t held = 0;
    for (size_t chunk = (size_t)1 << 30; chunk >= ((size_t)2 << 20) && n < MAX_CHUNKS; chunk /= 2) {
        for (;;) {
            cudaMemGetInfo(&free_b, &total);
            if (free_b < leave + chunk || n == MAX_CHUNKS) break;
            if (cudaMalloc(&chunks[n], chunk) != cudaSuccess) {
                cudaGetLastError();
                break;
            }
            n++;
            held += chunk;
        }
    }
    cudaMemGetInfo(&free_b, &total);
    printf("hold_memory: device %d: holding %.2f GiB in %d buffers, %.2f GiB left free (of %.2f)\nready\n", dev,
           GIB(held), n, GIB(free_b), GIB(total));
    fflush(stdout);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    while (!stop) pause();
    for (int i = 0; i < n; i++) cudaFree(chunks[i]);
    return 0;
}

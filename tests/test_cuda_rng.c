/*
 * test_cuda_rng.c — torch's CUDA generator on the GPU (spec:
 * text-and-noise.md §4.7). Needs a GPU (ctest label "cuda").
 *
 * Claims: qi_randn_philox_cuda reproduces all 30 cuda.* vectors of
 * reference/torch_randn.safetensors (made by torch on an H200; 3 seeds x 5
 * shapes x float32/bfloat16) bit for bit; the CPU recomputation
 * (qi_randn_philox_cpu with this GPU's grid) stays within 3e-6 of it, also
 * at a non-zero generator offset; bad arguments are errors.
 *
 * The reference file is found at QI_RANDN_FILE if set, else in the shared
 * folder the build was configured with. Vectors larger than 256 x this GPU's
 * resident-block cap are assigned to threads differently on GPUs smaller than
 * an H200 (spec §4.7); the test says so instead of failing on them.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "io/safetensors.h"
#include "sample/rng.h"
#include "test.h"
#include "testdata.h"

/* SMs x (max threads per SM / 256): torch's grid cap on this GPU. */
static int64_t this_gpu_grid_cap(void) {
    int device = 0, sms = 0, threads = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&threads, cudaDevAttrMaxThreadsPerMultiProcessor, device) !=
            cudaSuccess)
        return -1;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
        printf("  GPU %d: %s, %d SMs x %d threads -> grid cap %d blocks (H200: 1056)\n", device,
               prop.name, sms, threads, sms * (threads / 256));
    return (int64_t)sms * (threads / 256);
}

static void gpu_is_present(void) {
    CHECK(this_gpu_grid_cap() > 0, "no usable CUDA device");
}

static void cuda_vectors_bit_exact(void) {
    const int64_t cap = this_gpu_grid_cap();
    REQUIRE(cap > 0, "no usable CUDA device");
    qi_st_file *f = ref_randn_open();
    if (!f) return;
    int total = 0, exact = 0, skipped = 0;
    double worst_cpu = 0;
    randn_vector v;
    for (int next = 0; randn_next(f, "cuda", &next, &v);) {
        const int64_t n = v.n;
        const qi_dtype dtype = v.dtype;
        const uint64_t seed = v.seed;
        const float *want = v.values;
        total++;
        if (n > 256 * cap && cap < QI_PHILOX_GRID_H200) {
            printf("  %s: skipped, %lld elements exceed this GPU's %lld resident threads "
                   "(the H200 reference assigns them differently)\n",
                   v.name, (long long)n, (long long)(256 * cap));
            skipped++;
            free(v.values);
            continue;
        }
        float *got = malloc((size_t)n * sizeof *got), *cpu = malloc((size_t)n * sizeof *cpu);
        qi_error err;
        qi_status st = qi_randn_philox_cuda(seed, 0, n, dtype, got, &err);
        CHECK(st == QI_OK, "%s: %s", v.name, err.msg);
        int64_t differ = 0, first = -1;
        for (int64_t i = 0; st == QI_OK && i < n; i++)
            if (qi_f32_bits(got[i]) != qi_f32_bits(want[i]) && differ++ == 0) first = i;
        if (st == QI_OK && differ == 0) exact++;
        CHECK(st == QI_OK && differ == 0,
              "%s: %lld of %lld elements differ (first [%lld] %.9g vs %.9g)", v.name,
              (long long)differ, (long long)n, (long long)first, first >= 0 ? got[first] : 0.0f,
              first >= 0 ? want[first] : 0.0f);
        if (dtype == QI_F32 && st == QI_OK) {
            qi_randn_philox_cpu(seed, 0, n, cap, QI_F32, cpu);
            for (int64_t i = 0; i < n; i++)
                worst_cpu = fmax(worst_cpu, fabs((double)cpu[i] - (double)got[i]));
        }
        free(got);
        free(cpu);
        free(v.values);
    }
    printf("  %d/%d CUDA vectors bit-exact on the GPU (%d skipped); CPU recomputation max abs "
           "diff %.3g\n",
           exact, total, skipped, worst_cpu);
    CHECK(total == 30, "expected 30 cuda.* vectors, found %d", total);
    CHECK(exact + skipped == total, "%d vectors not bit-exact", total - skipped - exact);
    CHECK(worst_cpu <= 3e-6, "CPU recomputation off by %.3g", worst_cpu);
    qi_st_close(f);
}

/* A later call on the same generator starts at offset 4, 8, ...: the GPU and
 * the CPU recomputation must agree there too (the counter is offset/4). */
static void nonzero_offset_matches_cpu(void) {
    const int64_t cap = this_gpu_grid_cap();
    REQUIRE(cap > 0, "no usable CUDA device");
    enum { N = 440896 }; /* 1328x1328 latents: more than one lane per thread on an H200 */
    float *gpu = malloc(N * sizeof *gpu), *cpu = malloc(N * sizeof *cpu);
    qi_error err;
    const uint64_t offsets[2] = {4, 8};
    for (int k = 0; k < 2; k++) {
        qi_status st = qi_randn_philox_cuda(42, offsets[k], N, QI_F32, gpu, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        if (st != QI_OK) break;
        qi_randn_philox_cpu(42, offsets[k], N, cap, QI_F32, cpu);
        double worst = 0;
        for (int64_t i = 0; i < N; i++) worst = fmax(worst, fabs((double)cpu[i] - (double)gpu[i]));
        printf("  seed 42, offset %llu, n %d: GPU vs CPU max abs diff %.3g\n",
               (unsigned long long)offsets[k], N, worst);
        CHECK(worst <= 3e-6, "offset %llu: %.3g", (unsigned long long)offsets[k], worst);
    }
    free(gpu);
    free(cpu);
}

static void bad_arguments_are_errors(void) {
    float v[8];
    qi_error err;
    CHECK(qi_randn_philox_cuda(1, 0, 8, QI_I32, v, &err) == QI_ERR_UNSUPPORTED, "int32 accepted");
    CHECK(qi_randn_philox_cuda(1, 2, 8, QI_F32, v, &err) == QI_ERR_ARG, "offset 2 accepted");
    CHECK(qi_randn_philox_cuda(1, 0, 8, QI_F32, NULL, &err) == QI_ERR_ARG, "NULL accepted");
    CHECK(qi_randn_philox_cuda(1, 0, -1, QI_F32, v, &err) == QI_ERR_ARG, "n -1 accepted");
}

int main(void) {
    RUN(gpu_is_present);
    RUN(cuda_vectors_bit_exact);
    RUN(nonzero_offset_matches_cpu);
    RUN(bad_arguments_are_errors);
    TEST_END();
}

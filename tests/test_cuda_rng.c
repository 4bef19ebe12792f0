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
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "io/safetensors.h"
#include "sample/rng.h"
#include "test.h"

/* Tensor `name` of a reference file as a malloc'd float array (F32 / BF16 in
 * the file), its element count in *n; NULL if absent. */
static float *ref_get(const qi_st_file *f, const char *name, int64_t *n) {
    const qi_st_tensor *t = qi_st_file_find(f, name);
    if (!t) return NULL;
    int64_t count = 1;
    for (int d = 0; d < t->ndim; d++) count *= t->shape[d];
    float *out = malloc((size_t)(count ? count : 1) * sizeof *out);
    if (!out || qi_to_f32(out, t->data, t->dtype, (size_t)count) != 0) {
        free(out);
        return NULL;
    }
    if (n) *n = count;
    return out;
}

static const char *randn_path(void) {
    const char *env = getenv("QI_RANDN_FILE");
    return env && *env ? env : QI_SHARED_DIR "/reference/torch_randn.safetensors";
}

static uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* "cuda.float32.seed42.1x1x16x128x128" -> dtype, seed (device must be cuda). */
static int parse_cuda_key(const char *key, qi_dtype *dtype, uint64_t *seed) {
    const char *p;
    if (strncmp(key, "cuda.float32.", 13) == 0) {
        *dtype = QI_F32;
        p = key + 13;
    } else if (strncmp(key, "cuda.bfloat16.", 14) == 0) {
        *dtype = QI_BF16;
        p = key + 14;
    } else {
        return -1;
    }
    if (strncmp(p, "seed", 4) != 0) return -1;
    *seed = strtoull(p + 4, NULL, 10);
    return 0;
}

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
    qi_st_file *f = NULL;
    qi_error open_err;
    if (qi_st_open(randn_path(), &f, &open_err) != QI_OK) {
        CHECK(0, "%s", open_err.msg);
        return;
    }
    const int64_t cap = this_gpu_grid_cap();
    if (cap <= 0) {
        CHECK(0, "no usable CUDA device");
        qi_st_close(f);
        return;
    }
    int total = 0, exact = 0, skipped = 0;
    double worst_cpu = 0;
    for (int ti = 0; ti < f->n_tensors; ti++) {
        const qi_st_tensor *t = &f->tensors[ti];
        qi_dtype dtype;
        uint64_t seed;
        if (parse_cuda_key(t->name, &dtype, &seed) != 0) continue;
        int64_t n = 0;
        float *want = ref_get(f, t->name, &n);
        CHECK(want != NULL, "%s unreadable", t->name);
        if (!want) continue;
        total++;
        if (n > 256 * cap && cap < QI_PHILOX_GRID_H200) {
            printf("  %s: skipped, %lld elements exceed this GPU's %lld resident threads "
                   "(the H200 reference assigns them differently)\n",
                   t->name, (long long)n, (long long)(256 * cap));
            skipped++;
            free(want);
            continue;
        }
        float *got = malloc((size_t)n * sizeof *got), *cpu = malloc((size_t)n * sizeof *cpu);
        qi_error err;
        qi_status st = qi_randn_philox_cuda(seed, 0, n, dtype, got, &err);
        CHECK(st == QI_OK, "%s: %s", t->name, err.msg);
        int64_t differ = 0, first = -1;
        for (int64_t i = 0; st == QI_OK && i < n; i++)
            if (bits_of(got[i]) != bits_of(want[i]) && differ++ == 0) first = i;
        if (st == QI_OK && differ == 0) exact++;
        CHECK(st == QI_OK && differ == 0,
              "%s: %lld of %lld elements differ (first [%lld] %.9g vs %.9g)", t->name,
              (long long)differ, (long long)n, (long long)first, first >= 0 ? got[first] : 0.0f,
              first >= 0 ? want[first] : 0.0f);
        if (dtype == QI_F32 && st == QI_OK) {
            qi_randn_philox_cpu(seed, 0, n, cap, QI_F32, cpu);
            for (int64_t i = 0; i < n; i++)
                worst_cpu = fmax(worst_cpu, fabs((double)cpu[i] - (double)got[i]));
        }
        free(got);
        free(cpu);
        free(want);
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
    if (cap <= 0) {
        CHECK(0, "no usable CUDA device");
        return;
    }
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

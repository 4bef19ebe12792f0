/*
 * rng.h — torch-identical Gaussian noise (spec: text-and-noise.md §4).
 *
 * What this file owns:
 *   - torch's CPU generator: MT19937 seeded with the low 32 bits of the seed,
 *     and `torch.randn(n, dtype)` on it, bit-exact for float32 (x86 AVX2
 *     kernel, §4.4), bfloat16 / float16 (generic 16-block kernel, §4.6) and for
 *     n < 16 (scalar double kernel with its one-value cache, §4.5);
 *   - torch's CUDA generator (Philox4x32-10 through cuRAND, §4.7) recomputed on
 *     the CPU. The Philox integers are exact; the Box–Muller uses accurate
 *     sinf/cosf where the GPU uses the __sincosf intrinsic, so float32 values
 *     are within ~3e-6 of the GPU's, not bit-exact (bf16 values almost always
 *     are). src/backend/cuda/rng_philox.cu is the bit-exact GPU version.
 *
 * What it does not: the latent shape and packing (latents.h), the float32
 * "non-AVX2" CPU kernel that torch runs on ARM (x86 torch is the reference).
 *
 * All values are returned as float; bf16/f16 results are exactly
 * representable in their type.
 */
#ifndef QI_RNG_H
#define QI_RNG_H

#include "base/base.h"

/* ---- MT19937, as std::mt19937 and torch's CPU engine ------------------- */

typedef struct qi_mt19937 {
    uint32_t state[624];
    int pos; /* next word of state to temper; 624 = regenerate first */
} qi_mt19937;

void qi_mt19937_seed(qi_mt19937 *mt, uint32_t seed);
uint32_t qi_mt19937_next32(qi_mt19937 *mt);
uint64_t qi_mt19937_next64(qi_mt19937 *mt); /* (first << 32) | second */

/* ---- torch.Generator("cpu") --------------------------------------------- */

typedef struct qi_cpu_generator {
    qi_mt19937 mt;
    int has_cached_normal; /* the scalar kernel's second Box–Muller value */
    double cached_normal;
} qi_cpu_generator;

/* torch.manual_seed(seed): only the low 32 bits of seed reach the engine
 * (seed 2^32+42 behaves as 42); clears the cached normal. */
void qi_cpu_generator_seed(qi_cpu_generator *g, uint64_t seed);

/* torch.randn(n, dtype=dtype, generator=g) for a contiguous tensor; advances g
 * exactly as torch does (so consecutive calls continue the same stream).
 * dtype: QI_F32, QI_BF16 or QI_F16. */
qi_status qi_cpu_generator_randn(qi_cpu_generator *g, qi_dtype dtype, int64_t n, float *out,
                                 qi_error *err);

/* torch.manual_seed(seed); torch.randn(n, dtype) on the CPU generator. */
qi_status qi_randn_cpu(uint64_t seed, qi_dtype dtype, int64_t n, float *out, qi_error *err);

/* ---- torch.Generator("cuda"): Philox4x32-10 -------------------------------- */

/* The number of blocks torch's CUDA distribution kernels are capped at on an
 * H200 / H100 SXM: 132 SMs x (2048 threads per SM / 256). */
#define QI_PHILOX_GRID_H200 1056

/* One Philox4x32-10 block: 10 rounds, key bumped before rounds 2..10.
 * Known answer: counter 0, key 0 -> 6627E8D5 E169C58D BC57AC4C 9B00DBD8. */
void qi_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* The grid torch launches for n elements: min(ceil(n/256), grid_cap). */
int64_t qi_philox_grid(int64_t n, int64_t grid_cap);

/* How far one randn of n elements advances the generator's offset (a
 * multiple of 4); the next call on the same generator starts there. */
uint64_t qi_philox_offset_increment(int64_t n, int64_t grid_cap);

/* torch.randn(n, dtype, generator=cuda_generator_with(seed, offset)) computed
 * on the CPU. grid_blocks is the device's cap SM_count * (max threads per SM
 * / 256) (QI_PHILOX_GRID_H200 = 1056 on an H200; <= 0 means that value); the
 * launched grid is min(ceil(n/256), grid_blocks), as in torch. offset is the
 * generator's offset (0 after manual_seed). dtype QI_F32, QI_BF16 or QI_F16
 * (the float value rounded to nearest even, as torch casts). */
void qi_randn_philox_cpu(uint64_t seed, uint64_t offset, int64_t n, int64_t grid_blocks,
                         qi_dtype dtype, float *out);

/* The GPU version (src/backend/cuda/rng_philox.cu; only in CUDA builds):
 * bit-exact with torch on the current device; grid from its properties. */
#ifdef QI_WITH_CUDA
#ifdef __cplusplus
extern "C"
#endif
qi_status qi_randn_philox_cuda(uint64_t seed, uint64_t offset, int64_t n, qi_dtype dtype,
                               float *host_out, qi_error *err);
#endif

#endif

/*
 * rng_philox.cu — torch's CUDA generator on the GPU, bit-exact
 * (spec: text-and-noise.md §4.7).
 *
 * torch.randn on a CUDA generator (seed, offset) launches a grid-stride
 * kernel of 256-thread blocks, grid = min(ceil(n/256), SMs x (max threads per
 * SM / 256)); thread t calls curand_init(seed, subsequence = t, offset) and
 * then curand_normal4 once per draw, writing lane q of draw k to element
 * t + k·4·stride + q·stride. We do exactly that with the same cuRAND header,
 * built with nvcc's defaults (FMA contraction on, precise sqrtf, no fast
 * math), so the Box–Muller (which uses the __sincosf intrinsic) matches too.
 * rng.c holds the CPU recomputation (not bit-exact: accurate sin/cos).
 *
 * Owns only this generator: the caller passes the generator's offset
 * (0 after manual_seed; qi_philox_offset_increment tells how far one call
 * advances it).
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <curand_kernel.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "base/base.h"
#include "sample/rng.h"
}

namespace {

constexpr int kBlock = 256;  /* torch's block_size_bound for distributions */
constexpr int kUnroll = 4;   /* curand4_engine_calls: one curand_normal4 = 4 values */

/* float -> bf16 / f16 -> float, round to nearest even, as torch's casts. */
__device__ float round_to_bf16(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

__global__ void randn_philox_kernel(uint64_t seed, uint64_t offset, int64_t n, int64_t draws,
                                    int dtype, float *out) {
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    curandStatePhilox4_32_10_t state;
    curand_init(seed, (unsigned long long)t, offset, &state);
    for (int64_t k = 0; k < draws; k++) {
        float4 r = curand_normal4(&state);
        const float lanes[4] = {r.x, r.y, r.z, r.w};
        for (int q = 0; q < kUnroll; q++) {
            int64_t e = t + k * kUnroll * stride + q * stride;
            if (e >= n) continue;
            float v = lanes[q] * 1.0f + 0.0f; /* value·std + mean, in float */
            if (dtype == QI_BF16)
                v = round_to_bf16(v);
            else if (dtype == QI_F16)
                v = __half2float(__float2half_rn(v));
            out[e] = v;
        }
    }
}

qi_status cuda_fail(qi_error *err, const char *what, cudaError_t e) {
    return qi_fail(err, QI_ERR_BACKEND, "CUDA randn (Philox): %s failed: %s", what,
                   cudaGetErrorString(e));
}

}  // namespace

extern "C" qi_status qi_randn_philox_cuda(uint64_t seed, uint64_t offset, int64_t n,
                                          qi_dtype dtype, float *host_out, qi_error *err) {
    if (n < 0) return qi_fail(err, QI_ERR_ARG, "CUDA randn: negative element count %lld",
                              (long long)n);
    if (dtype != QI_F32 && dtype != QI_BF16 && dtype != QI_F16)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "CUDA randn: dtype %s is not supported (use F32, BF16 or F16)",
                       qi_dtype_name(dtype));
    if (n == 0) return QI_OK;
    if (!host_out) return qi_fail(err, QI_ERR_ARG, "CUDA randn: output buffer is NULL");
    if (offset % 4 != 0)
        return qi_fail(err, QI_ERR_ARG,
                       "CUDA randn: offset %llu is not a multiple of 4 (torch's offsets are)",
                       (unsigned long long)offset);

    /* The grid depends on the GPU: this is what makes CUDA noise device-specific. */
    int device = 0, sms = 0, threads_per_sm = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return cuda_fail(err, "cudaGetDevice", e);
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e != cudaSuccess) return cuda_fail(err, "cudaDeviceGetAttribute(SM count)", e);
    e = cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device);
    if (e != cudaSuccess) return cuda_fail(err, "cudaDeviceGetAttribute(threads per SM)", e);
    const int64_t grid_cap = (int64_t)sms * (threads_per_sm / kBlock);
    const int64_t grid = qi_philox_grid(n, grid_cap);
    const int64_t draws = (int64_t)(qi_philox_offset_increment(n, grid_cap) / kUnroll);
    if (grid > 0x7fffffff)
        return qi_fail(err, QI_ERR_ARG, "CUDA randn: %lld elements need too many blocks",
                       (long long)n);

    float *dev = nullptr;
    e = cudaMalloc(&dev, (size_t)n * sizeof(float));
    if (e != cudaSuccess)
        return qi_fail(err, QI_ERR_NOMEM, "CUDA randn: cudaMalloc of %lld floats failed: %s",
                       (long long)n, cudaGetErrorString(e));
    randn_philox_kernel<<<(unsigned)grid, kBlock>>>(seed, offset, n, draws, (int)dtype, dev);
    e = cudaGetLastError();
    if (e == cudaSuccess)
        e = cudaMemcpy(host_out, dev, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost);
    cudaFree(dev);
    if (e != cudaSuccess) return cuda_fail(err, "kernel launch or copy back", e);
    return QI_OK;
}

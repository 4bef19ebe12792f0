/*
 * cuda_select.cu — kernel selection by the device (see cuda_select.h), and
 * the extras that report it (qi_cuda_kernel_family, qi_cuda_code_arch).
 */
#include <stdlib.h>

#include "backend/cuda/cuda_select.h" /* first: it includes the C headers as extern "C" */
#include "backend/cuda/cuda_backend.h"

/* Shared memory a block may opt into on sm_86, sm_89 and sm_120 (99 KiB; sm_80
 * has 163, sm_90 and sm_100 227): the smallest of the GPUs the build targets. */
#define QC_SMEM_CONSUMER ((size_t)99 * 1024)

#ifndef QI_CUDA_ARCH_LIST /* set by CMakeLists.txt from QI_CUDA_ARCHS */
#define QI_CUDA_ARCH_LIST "unknown"
#endif

/* What the driver loaded for this device, as this kernel sees it: out[0] =
 * __CUDA_ARCH__ of the code (its SASS architecture, or the PTX's when the
 * driver JIT-compiled it), out[1] = whether that code has sm_90a's features.
 * Every .cu file is built for the same architectures, so the Hopper kernels
 * were loaded from the same architecture's code as this one. */
__global__ void arch_probe_k(int *out) {
#ifdef __CUDA_ARCH__
    out[0] = __CUDA_ARCH__;
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
    out[1] = 1;
#else
    out[1] = 0;
#endif
#endif
}

/* Runs the probe; 0 on success, else the launch or copy error. */
static cudaError_t probe_code(cuda_impl *c, int probe[2]) {
    arch_probe_k<<<1, 1, 0, c->stream>>>((int *)c->scratch);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(probe, c->scratch, 2 * sizeof(int), cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    return e;
}

qi_status qc_select_kernels(cuda_impl *c, const cudaDeviceProp *prop, qi_error *err) {
    c->device_cc = prop->major * 10 + prop->minor;
    int probe[2] = {0, 0};
    cudaError_t e = probe_code(c, probe);
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction ||
        e == cudaErrorUnsupportedPtxVersion || e == cudaErrorInvalidPtx)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "cuda backend: this build has no code that %s (compute "
                       "capability %d.%d) can run (%s); it was built for %s: rebuild with "
                       "-DQI_CUDA_ARCHS=release (or add %d%d), or update the NVIDIA driver if it is older "
                       "than the CUDA toolkit that built it", prop->name, prop->major, prop->minor,
                       cudaGetErrorString(e), QI_CUDA_ARCH_LIST, prop->major, prop->minor);
    if (e != cudaSuccess)
        return qi_fail(err, QI_ERR_BACKEND, "cuda backend: the kernel-selection probe failed: %s",
                       cudaGetErrorString(e));
    c->code_arch = probe[0];
    const char *g = getenv("QI_CUDA_GENERIC"); /* prove the generic kernels on a Hopper GPU */
    c->generic_forced = g && g[0] == '1';
    c->hopper = prop->major == 9 && probe[1] && !c->generic_forced;
    c->smem_optin = prop->sharedMemPerBlockOptin;
    if (c->generic_forced && c->smem_optin > QC_SMEM_CONSUMER) c->smem_optin = QC_SMEM_CONSUMER;
    c->tmap_encode = NULL;
    if (c->hopper) { /* the TMA kernel needs the driver's tensor-map encoder; without it, the wgmma one */
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &c->tmap_encode, 12000, cudaEnableDefault,
                                             &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            c->tmap_encode = NULL;
    }
    return QI_OK;
}

extern "C" const char *qi_cuda_kernel_family(qi_backend *be) {
    return cuda_of(be)->hopper ? "hopper" : "generic";
}

extern "C" int qi_cuda_code_arch(qi_backend *be) { return cuda_of(be)->code_arch; }
extern "C" int qi_cuda_device_cc(qi_backend *be) { return cuda_of(be)->device_cc; }

/*
 * cuda_select.h — which kernels the CUDA backend runs on this device, decided
 * once, at backend creation, from the device's compute capability and the
 * code the driver loaded for it:
 *
 *   hopper   a compute capability 9.x device running this build's sm_90a code:
 *            the wgmma / TMA flash attention (cuda_flash_hopper.cu,
 *            cuda_flash_tma.cu) is the fast path for head dim 128;
 *   generic  every other case (sm_80, 86, 89, 100, 120, compute_80 PTX
 *            JIT-compiled anywhere, or QI_CUDA_GENERIC=1): the mma.sync flash
 *            kernel (cuda_attention.cu).
 *
 * The other ops have one path on every GPU: the conv's implicit GEMM and the
 * fused ops use nothing newer than sm_80 (cp.async, ldmatrix, mma.sync), the
 * GEMMs go through cuBLASLt, which chooses its own kernels per device. The
 * kernels whose shared memory depends on a tile size (the conv's channel
 * tile) fit it to c->smem_optin: 99 KiB on sm_86/89/120, 163 on sm_80, 227 on
 * sm_90/100; QI_CUDA_GENERIC=1 caps it at 99 KiB.
 *
 * Not a public header: only src/backend/cuda/*.cu include it.
 */
#ifndef QI_CUDA_SELECT_H
#define QI_CUDA_SELECT_H

#include "backend/cuda/cuda_internal.h"

/* Sets c->hopper, c->tmap_encode, c->device_cc, c->code_arch,
 * c->generic_forced and c->smem_optin for the device described by prop (c->stream and
 * c->scratch exist already: a probe kernel runs there). Fails with a message
 * naming the build's architectures when the build has no code the device can
 * run. */
qi_status qc_select_kernels(cuda_impl *c, const cudaDeviceProp *prop, qi_error *err);

#endif

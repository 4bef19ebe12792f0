/*
 * cuda_ops.cu — the CUDA backend's memory-bound ops: embedding, norms (and
 * the fused gated add + LayerNorm, per-head RMSNorm + RoPE), elementwise ops,
 * rope, CFG combine, and the VAE ops (conv2d: 1×1 as a cuBLASLt GEMM, 3×3
 * through cuda_conv.cu's implicit GEMM or im2col + cuBLASLt; upsample,
 * transpose; channel RMS norm lives in cuda_conv.cu).
 *
 * Activations are bf16 (F32 also accepted); every reduction and every
 * intermediate is float32, with one rounding on the store. Parameter vectors
 * (norm weights, biases, modulation rows, rope tables) may be any float
 * dtype and are read through ld_param. Row ops use 16-byte accesses when the
 * row length is a multiple of 8 and the pointers are 16-byte aligned.
 */
#include <stdio.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_dequant.cuh"
#include "backend/cuda/cuda_fp8_amax.cuh"

/* Runs the statement list with T bound to the element type of activations of
 * dtype dt, or records that the dtype is not supported. */
#define ACT_DISPATCH(c, dt, opname, ...)                                                           \
    do {                                                                                           \
        if ((dt) == QI_BF16) {                                                                     \
            typedef bf16 T;                                                                        \
            __VA_ARGS__                                                                            \
        } else if ((dt) == QI_F32) {                                                               \
            typedef float T;                                                                       \
            __VA_ARGS__                                                                            \
        } else {                                                                                   \
            qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: %s on %s activations (BF16 or F32 only)", \
                    opname, qi_dtype_name(dt));                                                    \
        }                                                                                          \
    } while (0)

#define THREADS 256

static unsigned grid_for(const cuda_impl *c, int64_t units) {
    int64_t b = (units + THREADS - 1) / THREADS, cap = (int64_t)c->sm_count * 16;
    if (b > cap) b = cap;
    return (unsigned)(b < 1 ? 1 : b);
}

#define GRID_STRIDE(u, units)                                                                      \
    for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < (units);                \
         u += (int64_t)gridDim.x * blockDim.x)

static int same_dtype(cuda_impl *c, const char *op, const qi_tensor *a, const qi_tensor *b) {
    if (a->dtype == b->dtype) return 1;
    qc_fail(c, QI_ERR_ARG, "cuda backend: %s: tensors of different dtypes (%s, %s)", op,
            qi_dtype_name(a->dtype), qi_dtype_name(b->dtype));
    return 0;
}

static int same_numel(cuda_impl *c, const char *op, const qi_tensor *a, const qi_tensor *b) {
    if (qi_numel(a) == qi_numel(b)) return 1;
    char s1[96], s2[96];
    qc_fail(c, QI_ERR_ARG, "cuda backend: %s: shapes %s and %s differ in size", op,
            qi_shape_str(a, s1, sizeof s1), qi_shape_str(b, s2, sizeof s2));
    return 0;
}

/* ---- row reductions ----------------------------------------------------------
 * GROUP threads own one row: 16 (half a warp, 128-wide rows), 32 (a warp, for
 * short rows) or a whole block (long rows). */

template <int GROUP> static __device__ __forceinline__ float group_sum(float v, float *sh) {
    if constexpr (GROUP <= 32) {
#pragma unroll
        for (int o = GROUP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    } else {
        v = warp_sum(v);
        __syncthreads(); /* sh may still be read by a previous call */
        if ((threadIdx.x & 31) == 0) sh[threadIdx.x / 32] = v;
        __syncthreads();
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < GROUP / 32; i++) t += sh[i];
        return t;
    }
}

static bool use_block_rows(int64_t D) { return D > 1024; }
static unsigned row_blocks(int64_t R, bool block_rows) {
    return block_rows ? (unsigned)R : (unsigned)((R + THREADS / 32 - 1) / (THREADS / 32));
}

template <typename T, int V, int GROUP>
__global__ void rms_norm_k(const T *x, const void *w, int wdt, float wscale, float eps, T *y, int64_t R,
                           int D) {
    __shared__ float sh[THREADS / 32];
    int64_t row = GROUP <= 32 ? (int64_t)blockIdx.x * (THREADS / GROUP) + threadIdx.x / GROUP : blockIdx.x;
    int t = threadIdx.x % GROUP;
    if (row >= R) return; /* GROUP <= 32 only: whole groups leave */
    const T *xr = x + row * D;
    T *yr = y + row * D;
    float ss = 0.0f;
    for (int i = t * V; i < D; i += GROUP * V) {
        float f[V];
        load_v<V>(xr + i, f);
#pragma unroll
        for (int j = 0; j < V; j++) ss += f[j] * f[j];
    }
    float inv = rsqrtf(group_sum<GROUP>(ss, sh) / (float)D + eps);
    for (int i = t * V; i < D; i += GROUP * V) {
        float f[V];
        load_v<V>(xr + i, f); /* the same elements this thread read: safe when y aliases x */
#pragma unroll
        for (int j = 0; j < V; j++) f[j] *= inv * (w ? ld_param(w, wdt, i + j) * wscale : 1.0f);
        store_v<V>(yr + i, f);
    }
}

extern "C" void qc_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t D = x->ne[x->ndim - 1], R = qi_rows(x);
    if (!same_dtype(c, "rms_norm", x, y) || !same_numel(c, "rms_norm", x, y)) return;
    if (w && qi_numel(w) != D) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: rms_norm weight has %lld elements, rows have %lld",
                (long long)qi_numel(w), (long long)D);
        return;
    }
    if (R == 0) return;
    bool vec = D % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data);
    bool blk = use_block_rows(D);
    const void *wd = w ? w->data : NULL;
    int wdt = w ? w->dtype : 0;
    float ws = w ? w->scale : 1.0f;
    ACT_DISPATCH(c, x->dtype, "rms_norm", {
        const T *xs = (const T *)x->data;
        T *ys = (T *)y->data;
        unsigned g = row_blocks(R, blk);
        if (vec && D <= 128) /* per-head norms: 16 threads × 8 elements per row */
            rms_norm_k<T, 8, 16><<<(unsigned)((R + THREADS / 16 - 1) / (THREADS / 16)), THREADS, 0, c->stream>>>(xs, wd, wdt, ws, eps, ys, R, (int)D);
        else if (vec && blk) rms_norm_k<T, 8, THREADS><<<g, THREADS, 0, c->stream>>>(xs, wd, wdt, ws, eps, ys, R, (int)D);
        else if (vec) rms_norm_k<T, 8, 32><<<g, THREADS, 0, c->stream>>>(xs, wd, wdt, ws, eps, ys, R, (int)D);
        else if (blk) rms_norm_k<T, 1, THREADS><<<g, THREADS, 0, c->stream>>>(xs, wd, wdt, ws, eps, ys, R, (int)D);
        else rms_norm_k<T, 1, 32><<<g, THREADS, 0, c->stream>>>(xs, wd, wdt, ws, eps, ys, R, (int)D);
    });
    qc_check_launch(c, "rms_norm");
}

/* LN without affine (population variance, two passes over the row), then
 * modulation with the row's batch entry of shift / scale. */
template <typename T, int V, int GROUP>
__global__ void layer_norm_mod_k(const T *x, const void *shift, const void *scale, int mdt,
                                 int64_t mod_stride, float eps, T *y, int64_t R, int64_t L, int D) {
    __shared__ float sh[THREADS / 32];
    int64_t row = GROUP == 32 ? (int64_t)blockIdx.x * (THREADS / 32) + threadIdx.x / 32 : blockIdx.x;
    int t = threadIdx.x % GROUP;
    if (row >= R) return;
    const T *xr = x + row * D;
    T *yr = y + row * D;
    float s = 0.0f;
    for (int i = t * V; i < D; i += GROUP * V) {
        float f[V];
        load_v<V>(xr + i, f);
#pragma unroll
        for (int j = 0; j < V; j++) s += f[j];
    }
    float mean = group_sum<GROUP>(s, sh) / (float)D;
    float ss = 0.0f;
    for (int i = t * V; i < D; i += GROUP * V) {
        float f[V];
        load_v<V>(xr + i, f);
#pragma unroll
        for (int j = 0; j < V; j++) ss += (f[j] - mean) * (f[j] - mean);
    }
    float inv = rsqrtf(group_sum<GROUP>(ss, sh) / (float)D + eps);
    int64_t mrow = (row / L) * mod_stride;
    for (int i = t * V; i < D; i += GROUP * V) {
        float f[V];
        load_v<V>(xr + i, f);
#pragma unroll
        for (int j = 0; j < V; j++) {
            float sc = scale ? ld_param(scale, mdt, mrow + i + j) : 0.0f;
            float sf = shift ? ld_param(shift, mdt, mrow + i + j) : 0.0f;
            f[j] = (f[j] - mean) * inv * (1.0f + sc) + sf;
        }
        store_v<V>(yr + i, f);
    }
}

/* The same with the row held in registers: 128 threads per row, U units of 8
 * elements each (D <= 4096), so x is read from memory once. ao.st set: the
 * fp8 GEMM's amax of y, as stored, folded in (cuda_fp8_amax.cuh). */
template <typename T, int U>
__global__ void __launch_bounds__(128) layer_norm_mod_reg_k(const T *x, const void *shift, const void *scale,
                                                            int mdt, int64_t mod_stride, float eps, T *y,
                                                            int64_t L, int D, int mod_vec, fp8_amax_out ao) {
    __shared__ float sh[4];
    const int64_t row = blockIdx.x;
    const int t = threadIdx.x, units = D / 8;
    const T *xr = x + row * D;
    float v[U][8];
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = t + u * 128;
        if (i < units) {
            load_v<8>(xr + i * 8, v[u]);
#pragma unroll
            for (int j = 0; j < 8; j++) s += v[u][j];
        }
    }
    const float mean = group_sum<128>(s, sh) / (float)D;
    float ss = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++)
        if (t + u * 128 < units)
#pragma unroll
            for (int j = 0; j < 8; j++) ss += (v[u][j] - mean) * (v[u][j] - mean);
    const float inv = rsqrtf(group_sum<128>(ss, sh) / (float)D + eps);
    const int64_t mrow = (row / L) * mod_stride;
    float m = 0.0f; /* max |y| of this thread (ao.st) */
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = t + u * 128;
        if (i < units) {
            float sc[8], sf[8];
            if (mod_vec) { /* bf16 rows, 16-byte aligned: two vector loads */
                load_v<8>((const bf16 *)scale + mrow + i * 8, sc);
                load_v<8>((const bf16 *)shift + mrow + i * 8, sf);
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    sc[j] = scale ? ld_param(scale, mdt, mrow + i * 8 + j) : 0.0f;
                    sf[j] = shift ? ld_param(shift, mdt, mrow + i * 8 + j) : 0.0f;
                }
            }
#pragma unroll
            for (int j = 0; j < 8; j++) v[u][j] = (v[u][j] - mean) * inv * (1.0f + sc[j]) + sf[j];
            store_v<8>(y + row * D + i * 8, v[u]);
            if (ao.st)
#pragma unroll
                for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(to_f(from_f<T>(v[u][j])))); /* as stored */
        }
    }
    if (ao.st) fp8_amax_fold(m, ao.ws, ao.st);
}

/* The register kernel's launch: one block of 128 per row, U = ⌈D/8/128⌉ <= 4. */
template <typename T>
static void ln_mod_reg_launch(cuda_impl *c, const T *xs, const void *sh, const void *sc, int mdt, int64_t mod_stride,
                              float eps, T *ys, int64_t R, int64_t L, int D, int mod_vec, fp8_amax_out ao) {
    const int U = (D / 8 + 127) / 128;
    const unsigned rb = (unsigned)R;
    if (U == 1) layer_norm_mod_reg_k<T, 1><<<rb, 128, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, L, D, mod_vec, ao);
    else if (U == 2) layer_norm_mod_reg_k<T, 2><<<rb, 128, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, L, D, mod_vec, ao);
    else if (U == 3) layer_norm_mod_reg_k<T, 3><<<rb, 128, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, L, D, mod_vec, ao);
    else layer_norm_mod_reg_k<T, 4><<<rb, 128, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, L, D, mod_vec, ao);
}

/* Whether layer_norm_mod(x) -> y runs the register kernel (rows of D <= 4096,
 * a multiple of 8, 16-byte aligned, and long enough for a block per row). */
static bool ln_mod_reg_takes(const qi_tensor *x, const qi_tensor *y) {
    int64_t D = x->ne[x->ndim - 1];
    bool vec = D % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data);
    bool blk = use_block_rows(D) || D >= 512;
    return vec && blk && (D / 8 + 127) / 128 <= 4;
}

/* Whether shift and scale (either may be NULL) are bf16 rows the register
 * kernel reads as vectors. */
static int ln_mod_vec(const qi_tensor *shift, const qi_tensor *scale, int64_t mod_stride) {
    return shift && scale && shift->dtype == QI_BF16 && scale->dtype == QI_BF16 && mod_stride % 8 == 0 &&
           qc_aligned16(shift->data) && qc_aligned16(scale->data);
}

extern "C" void qc_layer_norm_mod(qi_backend *be, const qi_tensor *x, const qi_tensor *shift,
                                  const qi_tensor *scale, int64_t mod_stride, float eps, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t D = x->ne[x->ndim - 1], R = qi_rows(x);
    int64_t B = x->ndim >= 3 ? x->ne[0] : 1, L = B ? R / B : 0;
    if (!same_dtype(c, "layer_norm_mod", x, y) || !same_numel(c, "layer_norm_mod", x, y)) return;
    if (shift && scale && shift->dtype != scale->dtype) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: layer_norm_mod: shift and scale of different dtypes");
        return;
    }
    if (R == 0) return;
    int mdt = shift ? shift->dtype : scale ? scale->dtype : 0;
    bool vec = D % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data);
    bool blk = use_block_rows(D) || D >= 512;
    const void *sh = shift ? shift->data : NULL, *sc = scale ? scale->data : NULL;
    const int mod_vec = ln_mod_vec(shift, scale, mod_stride);
    const fp8_amax_out no_amax = {NULL, {{0}, 0}};
    ACT_DISPATCH(c, x->dtype, "layer_norm_mod", {
        const T *xs = (const T *)x->data;
        T *ys = (T *)y->data;
        unsigned g = row_blocks(R, blk);
        if (ln_mod_reg_takes(x, y))
            ln_mod_reg_launch<T>(c, xs, sh, sc, mdt, mod_stride, eps, ys, R, L, (int)D, mod_vec, no_amax);
        else if (vec && blk)
            layer_norm_mod_k<T, 8, THREADS><<<g, THREADS, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, R, L, (int)D);
        else if (vec)
            layer_norm_mod_k<T, 8, 32><<<g, THREADS, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, R, L, (int)D);
        else if (blk)
            layer_norm_mod_k<T, 1, THREADS><<<g, THREADS, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, R, L, (int)D);
        else
            layer_norm_mod_k<T, 1, 32><<<g, THREADS, 0, c->stream>>>(xs, sh, sc, mdt, mod_stride, eps, ys, R, L, (int)D);
    });
    qc_check_launch(c, "layer_norm_mod");
}

/* add_gated then layer_norm_mod on the updated row, bf16 everywhere, rows of
 * D <= 4096 held in registers (128 threads × U units of 8): x and y are read
 * once, x and out written once. The updated x is rounded to bf16 before the
 * norm reads it, exactly as the two ops in sequence would. */
template <int U>
__global__ void __launch_bounds__(128) add_gated_ln_mod_k(bf16 *x, const bf16 *gate, int64_t gstride, const bf16 *y,
                                                          const bf16 *shift, const bf16 *scale, int64_t mstride,
                                                          float eps, bf16 *out, int64_t L, int D, fp8_amax_out ao) {
    __shared__ float sh[4];
    const int64_t row = blockIdx.x;
    const int t = threadIdx.x, units = D / 8;
    bf16 *xr = x + row * D;
    const bf16 *yr = y + row * D;
    const int64_t grow = (row / L) * gstride, mrow = (row / L) * mstride;
    float v[U][8];
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = t + u * 128;
        if (i < units) {
            float yv[8], gv[8];
            load_v<8>(xr + i * 8, v[u]);
            load_v<8>(yr + i * 8, yv);
            if (gate) load_v<8>(gate + grow + i * 8, gv);
#pragma unroll
            for (int j = 0; j < 8; j++) v[u][j] += (gate ? gv[j] : 1.0f) * yv[j];
            store_v<8>(xr + i * 8, v[u]);
#pragma unroll
            for (int j = 0; j < 8; j++) v[u][j] = __bfloat162float(__float2bfloat16_rn(v[u][j])); /* as stored */
#pragma unroll
            for (int j = 0; j < 8; j++) s += v[u][j];
        }
    }
    const float mean = group_sum<128>(s, sh) / (float)D;
    float ss = 0.0f;
#pragma unroll
    for (int u = 0; u < U; u++)
        if (t + u * 128 < units)
#pragma unroll
            for (int j = 0; j < 8; j++) ss += (v[u][j] - mean) * (v[u][j] - mean);
    const float inv = rsqrtf(group_sum<128>(ss, sh) / (float)D + eps);
    float m = 0.0f; /* max |out| of this thread (ao.st) */
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int i = t + u * 128;
        if (i < units) {
            float sc[8], sf[8];
            if (scale) load_v<8>(scale + mrow + i * 8, sc);
            if (shift) load_v<8>(shift + mrow + i * 8, sf);
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[u][j] = (v[u][j] - mean) * inv * (1.0f + (scale ? sc[j] : 0.0f)) + (shift ? sf[j] : 0.0f);
            store_v<8>(out + row * D + i * 8, v[u]);
            if (ao.st)
#pragma unroll
                for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(__bfloat162float(__float2bfloat16_rn(v[u][j]))));
        }
    }
    if (ao.st) fp8_amax_fold(m, ao.ws, ao.st);
}

/* Whether add_gated_ln_mod_k takes add_gated_layer_norm_mod(x, gate, y,
 * shift, scale) -> out: bf16, D a multiple of 8 up to 4096, 16-byte aligned
 * rows and parameter rows. */
static bool agln_takes(const qi_tensor *x, const qi_tensor *gate, int64_t gate_stride, const qi_tensor *y,
                       const qi_tensor *shift, const qi_tensor *scale, int64_t mod_stride, const qi_tensor *out) {
    const int64_t D = x->ne[x->ndim - 1], R = qi_rows(x);
    auto vec_param = [&](const qi_tensor *p, int64_t stride) {
        return !p || (p->dtype == QI_BF16 && stride % 8 == 0 && qc_aligned16(p->data));
    };
    return x->dtype == QI_BF16 && y->dtype == QI_BF16 && out->dtype == QI_BF16 && D % 8 == 0 && D <= 4096 && R > 0 &&
           qi_numel(y) == qi_numel(x) && qi_numel(out) == qi_numel(x) && qc_aligned16(x->data) &&
           qc_aligned16(y->data) && qc_aligned16(out->data) && vec_param(gate, gate_stride) &&
           vec_param(shift, mod_stride) && vec_param(scale, mod_stride);
}

static void agln_launch(cuda_impl *c, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride, const qi_tensor *y,
                        const qi_tensor *shift, const qi_tensor *scale, int64_t mod_stride, float eps, qi_tensor *out,
                        fp8_amax_out ao) {
    const int64_t D = x->ne[x->ndim - 1], R = qi_rows(x);
    const int64_t B = x->ndim >= 3 ? x->ne[0] : 1, L = B ? R / B : 0;
    const int U = (int)((D / 8 + 127) / 128);
    const bf16 *g = gate ? (const bf16 *)gate->data : NULL, *sf = shift ? (const bf16 *)shift->data : NULL;
    const bf16 *sc = scale ? (const bf16 *)scale->data : NULL;
    bf16 *xs = (bf16 *)x->data, *os = (bf16 *)out->data;
    const bf16 *ys = (const bf16 *)y->data;
    const unsigned rb = (unsigned)R;
    if (U == 1) add_gated_ln_mod_k<1><<<rb, 128, 0, c->stream>>>(xs, g, gate_stride, ys, sf, sc, mod_stride, eps, os, L, (int)D, ao);
    else if (U == 2) add_gated_ln_mod_k<2><<<rb, 128, 0, c->stream>>>(xs, g, gate_stride, ys, sf, sc, mod_stride, eps, os, L, (int)D, ao);
    else if (U == 3) add_gated_ln_mod_k<3><<<rb, 128, 0, c->stream>>>(xs, g, gate_stride, ys, sf, sc, mod_stride, eps, os, L, (int)D, ao);
    else add_gated_ln_mod_k<4><<<rb, 128, 0, c->stream>>>(xs, g, gate_stride, ys, sf, sc, mod_stride, eps, os, L, (int)D, ao);
}

extern "C" void qc_add_gated_layer_norm_mod(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                                            const qi_tensor *y, const qi_tensor *shift, const qi_tensor *scale,
                                            int64_t mod_stride, float eps, qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    if (!agln_takes(x, gate, gate_stride, y, shift, scale, mod_stride, out)) { /* the two ops */
        qc_add_gated(be, x, gate, gate_stride, y);
        qc_layer_norm_mod(be, x, shift, scale, mod_stride, eps, out);
        return;
    }
    const fp8_amax_out no_amax = {NULL, {{0}, 0}};
    agln_launch(c, x, gate, gate_stride, y, shift, scale, mod_stride, eps, out, no_amax);
    qc_check_launch(c, "add_gated_layer_norm_mod");
}

/* ---- the LayerNorms that make an fp8 GEMM's input (cuda_fp8_amax.cuh) ---- */

int qc_ln_mod_amax_takes(const qi_ln_mod_src *s, const qi_tensor *x) {
    const qi_tensor *in = s->x;
    if (!in || in->dtype != QI_BF16 || x->dtype != QI_BF16 || qi_numel(in) != qi_numel(x) || qi_rows(in) < 1 ||
        in->ne[in->ndim - 1] != x->ne[x->ndim - 1])
        return 0;
    if (s->proj) return agln_takes(s->x, s->gate, s->gate_stride, s->proj, s->shift, s->scale, s->mod_stride, x);
    if (s->shift && s->scale && s->shift->dtype != s->scale->dtype) return 0;
    return ln_mod_reg_takes(in, x);
}

void qc_ln_mod_amax(cuda_impl *c, const qi_ln_mod_src *s, qi_tensor *x, fp8_amax_out ao) {
    if (s->proj) {
        agln_launch(c, s->x, s->gate, s->gate_stride, s->proj, s->shift, s->scale, s->mod_stride, s->eps, x, ao);
        return;
    }
    const qi_tensor *in = s->x;
    const int64_t D = in->ne[in->ndim - 1], R = qi_rows(in);
    const int64_t B = in->ndim >= 3 ? in->ne[0] : 1, L = B ? R / B : 0;
    const int mdt = s->shift ? s->shift->dtype : s->scale ? s->scale->dtype : 0;
    ln_mod_reg_launch<bf16>(c, (const bf16 *)in->data, s->shift ? s->shift->data : NULL,
                            s->scale ? s->scale->data : NULL, mdt, s->mod_stride, s->eps, (bf16 *)x->data, R, L,
                            (int)D, ln_mod_vec(s->shift, s->scale, s->mod_stride), ao);
}

/* comb = u + s(c − u); out = comb · ‖c‖ / ‖comb‖ per row. */
template <typename T, int GROUP>
__global__ void cfg_combine_k(const T *cond, const T *uncond, float s, T *out, int64_t R, int D) {
    __shared__ float sh[THREADS / 32];
    int64_t row = GROUP == 32 ? (int64_t)blockIdx.x * (THREADS / 32) + threadIdx.x / 32 : blockIdx.x;
    int t = threadIdx.x % GROUP;
    if (row >= R) return;
    const T *cr = cond + row * D, *ur = uncond + row * D;
    float nc = 0.0f, nm = 0.0f;
    for (int i = t; i < D; i += GROUP) {
        float cv = to_f(cr[i]), uv = to_f(ur[i]), comb = uv + s * (cv - uv);
        nc += cv * cv;
        nm += comb * comb;
    }
    nc = group_sum<GROUP>(nc, sh);
    nm = group_sum<GROUP>(nm, sh);
    float ratio = sqrtf(nc) / sqrtf(nm);
    for (int i = t; i < D; i += GROUP) {
        float cv = to_f(cr[i]), uv = to_f(ur[i]);
        out[row * D + i] = from_f<T>((uv + s * (cv - uv)) * ratio);
    }
}

extern "C" void qc_cfg_combine(qi_backend *be, const qi_tensor *cond, const qi_tensor *uncond, float s,
                               qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    int64_t D = cond->ne[cond->ndim - 1], R = qi_rows(cond);
    if (!same_dtype(c, "cfg_combine", cond, uncond) || !same_dtype(c, "cfg_combine", cond, out) ||
        !same_numel(c, "cfg_combine", cond, uncond) || !same_numel(c, "cfg_combine", cond, out))
        return;
    if (R == 0) return;
    bool blk = use_block_rows(D);
    ACT_DISPATCH(c, cond->dtype, "cfg_combine", {
        unsigned g = row_blocks(R, blk);
        if (blk)
            cfg_combine_k<T, THREADS><<<g, THREADS, 0, c->stream>>>((const T *)cond->data, (const T *)uncond->data, s, (T *)out->data, R, (int)D);
        else
            cfg_combine_k<T, 32><<<g, THREADS, 0, c->stream>>>((const T *)cond->data, (const T *)uncond->data, s, (T *)out->data, R, (int)D);
    });
    qc_check_launch(c, "cfg_combine");
}

/* ---- elementwise ------------------------------------------------------------------ */

template <typename T, int V>
__global__ void add_gated_k(T *x, const void *gate, int gdt, int64_t gstride, const T *y, int64_t D,
                            int64_t L, int64_t units) {
    GRID_STRIDE(u, units) {
        int64_t i = u * V, row = i / D, col = i % D, goff = (row / L) * gstride + col;
        float xv[V], yv[V];
        load_v<V>(x + i, xv);
        load_v<V>(y + i, yv);
#pragma unroll
        for (int j = 0; j < V; j++) xv[j] += (gate ? ld_param(gate, gdt, goff + j) : 1.0f) * yv[j];
        store_v<V>(x + i, xv);
    }
}

extern "C" void qc_add_gated(qi_backend *be, qi_tensor *x, const qi_tensor *gate, int64_t gate_stride,
                             const qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t D = x->ne[x->ndim - 1], R = qi_rows(x), n = qi_numel(x);
    int64_t B = x->ndim >= 3 ? x->ne[0] : 1, L = B ? R / B : 0;
    if (!same_dtype(c, "add_gated", x, y) || !same_numel(c, "add_gated", x, y) || n == 0) return;
    bool vec = D % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data);
    const void *g = gate ? gate->data : NULL;
    int gdt = gate ? gate->dtype : 0;
    ACT_DISPATCH(c, x->dtype, "add_gated", {
        if (vec)
            add_gated_k<T, 8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>((T *)x->data, g, gdt, gate_stride, (const T *)y->data, D, L, n / 8);
        else
            add_gated_k<T, 1><<<grid_for(c, n), THREADS, 0, c->stream>>>((T *)x->data, g, gdt, gate_stride, (const T *)y->data, D, L, n);
    });
    qc_check_launch(c, "add_gated");
}

template <typename T, int V> __global__ void activate_k(const T *x, int act, T *y, int64_t units) {
    GRID_STRIDE(u, units) {
        float f[V];
        load_v<V>(x + u * V, f);
#pragma unroll
        for (int j = 0; j < V; j++) f[j] = apply_act(f[j], act);
        store_v<V>(y + u * V, f);
    }
}

extern "C" void qc_activate(qi_backend *be, const qi_tensor *x, qi_act act, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t n = qi_numel(x);
    if (!same_dtype(c, "activate", x, y) || !same_numel(c, "activate", x, y) || n == 0) return;
    bool vec = n % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data);
    ACT_DISPATCH(c, x->dtype, "activate", {
        if (vec) activate_k<T, 8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>((const T *)x->data, (int)act, (T *)y->data, n / 8);
        else activate_k<T, 1><<<grid_for(c, n), THREADS, 0, c->stream>>>((const T *)x->data, (int)act, (T *)y->data, n);
    });
    qc_check_launch(c, "activate");
}

/* y[M,N] = silu(g)·u; g at row stride gstride, u at `up` (row stride ustride). */
template <typename T, int V>
__global__ void silu_mul_k(const T *g, int64_t gstride, const T *up, int64_t ustride, T *y, int64_t N,
                           int64_t units) {
    GRID_STRIDE(u, units) {
        int64_t i = u * V, m = i / N, n = i % N;
        float gv[V], uv[V];
        load_v<V>(g + m * gstride + n, gv);
        load_v<V>(up + m * ustride + n, uv);
#pragma unroll
        for (int j = 0; j < V; j++) gv[j] = silu(gv[j]) * uv[j];
        store_v<V>(y + i, gv);
    }
}

extern "C" void qc_silu_mul(qi_backend *be, const qi_tensor *gate, const qi_tensor *up, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    int64_t N = y->ne[y->ndim - 1], M = qi_rows(y), n = M * N;
    if (!same_dtype(c, "silu_mul", gate, y) || (up && !same_dtype(c, "silu_mul", up, y))) return;
    if (qi_numel(gate) != (up ? n : 2 * n) || (up && qi_numel(up) != n)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: silu_mul: gate/up sizes do not match y [%lld, %lld]",
                (long long)M, (long long)N);
        return;
    }
    if (n == 0) return;
    int64_t gstride = up ? N : 2 * N, ustride = up ? N : 2 * N;
    ACT_DISPATCH(c, y->dtype, "silu_mul", {
        const T *g = (const T *)gate->data;
        const T *u = up ? (const T *)up->data : g + N;
        bool vec = N % 8 == 0 && qc_aligned16(g) && qc_aligned16(u) && qc_aligned16(y->data);
        if (vec) silu_mul_k<T, 8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>(g, gstride, u, ustride, (T *)y->data, N, n / 8);
        else silu_mul_k<T, 1><<<grid_for(c, n), THREADS, 0, c->stream>>>(g, gstride, u, ustride, (T *)y->data, N, n);
    });
    qc_check_launch(c, "silu_mul");
}

template <typename T, int V>
__global__ void axpby_k(float a, const T *x, float b, const T *y, T *out, int64_t units) {
    GRID_STRIDE(u, units) {
        float xv[V], yv[V];
        load_v<V>(x + u * V, xv);
        load_v<V>(y + u * V, yv);
#pragma unroll
        for (int j = 0; j < V; j++) xv[j] = a * xv[j] + b * yv[j];
        store_v<V>(out + u * V, xv);
    }
}

extern "C" void qc_axpby(qi_backend *be, float a, const qi_tensor *x, float b, const qi_tensor *y,
                         qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    int64_t n = qi_numel(out);
    if (!same_dtype(c, "axpby", x, out) || !same_dtype(c, "axpby", y, out) ||
        !same_numel(c, "axpby", x, out) || !same_numel(c, "axpby", y, out) || n == 0)
        return;
    bool vec = n % 8 == 0 && qc_aligned16(x->data) && qc_aligned16(y->data) && qc_aligned16(out->data);
    ACT_DISPATCH(c, out->dtype, "axpby", {
        if (vec) axpby_k<T, 8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>(a, (const T *)x->data, b, (const T *)y->data, (T *)out->data, n / 8);
        else axpby_k<T, 1><<<grid_for(c, n), THREADS, 0, c->stream>>>(a, (const T *)x->data, b, (const T *)y->data, (T *)out->data, n);
    });
    qc_check_launch(c, "axpby");
}

extern "C" void qc_copy_rows(qi_backend *be, const qi_tensor *src, int64_t src_row0, qi_tensor *dst,
                             int64_t dst_row0, int64_t nrows) {
    cuda_impl *c = cuda_of(be);
    int64_t D = src->ne[src->ndim - 1];
    if (!same_dtype(c, "copy_rows", src, dst)) return;
    if (dst->ne[dst->ndim - 1] != D || src_row0 < 0 || dst_row0 < 0 || nrows < 0 ||
        src_row0 + nrows > qi_rows(src) || dst_row0 + nrows > qi_rows(dst)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: copy_rows: rows [%lld, +%lld) -> [%lld, +%lld) out of range",
                (long long)src_row0, (long long)nrows, (long long)dst_row0, (long long)nrows);
        return;
    }
    size_t esz = qi_dtype_size(src->dtype), bytes = (size_t)(nrows * D) * esz;
    const char *s = (const char *)src->data + (size_t)(src_row0 * D) * esz;
    char *d = (char *)dst->data + (size_t)(dst_row0 * D) * esz;
    if (bytes == 0 || s == d) return;
    if (s < d + bytes && d < s + bytes) { /* overlap: go through scratch */
        if (bytes > c->scratch_bytes) {
            qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: copy_rows: overlapping copy of %zu MiB", bytes >> 20);
            return;
        }
        cudaMemcpyAsync(c->scratch, s, bytes, cudaMemcpyDeviceToDevice, c->stream);
        s = c->scratch;
    }
    cudaError_t e = cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, c->stream);
    if (e != cudaSuccess) qc_fail(c, QI_ERR_BACKEND, "cuda backend: copy_rows: %s", cudaGetErrorString(e));
}

template <typename T>
__global__ void embedding_k(const void *table, int tdt, float tscale, int64_t V, const int32_t *ids,
                            T *out, int64_t D, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t r = i / D, d = i % D;
        int32_t id = ids[r];
        out[i] = from_f<T>(id >= 0 && id < V ? ld_param(table, tdt, (int64_t)id * D + d) * tscale : 0.0f);
    }
}

/* The same from a table kept in its file type (cuda_dequant.cuh): each value
 * rounded to bf16 first, as the table converted at load held it. */
template <typename T>
__global__ void embedding_kept_k(qc_kept table, int64_t V, const int32_t *ids, T *out, int64_t D, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t r = i / D, d = i % D;
        int32_t id = ids[r];
        out[i] = from_f<T>(id >= 0 && id < V ? __bfloat162float(qc_kept_bf16(table, (int64_t)id * D + d)) : 0.0f);
    }
}


extern "C" void qc_embedding(qi_backend *be, const qi_tensor *table, const qi_tensor *ids, qi_tensor *out) {
    cuda_impl *c = cuda_of(be);
    int64_t D = table->ne[table->ndim - 1], V = qi_rows(table), n = qi_numel(ids) * D;
    if (ids->dtype != QI_I32 || qi_numel(out) != n) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: embedding needs I32 ids and out of ids × %lld", (long long)D);
        return;
    }
    int kept = qc_kept_type(table->dtype) && table->ndim == 2;
    if (!qc_param_type(table->dtype) && !kept) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: embedding: cannot read a table of type %s (BF16, F16, "
                "F32, or a 2-D fp8 / GGUF block table)", qi_dtype_name(table->dtype));
        return;
    }
    if (n == 0) return;
    qi_tensor rows, row_ids; /* a table in ordinary host memory: the rows asked for, gathered on the host */
    if (qc_host_kind(c, table->data) == 0) {
        if (qc_host_gather_rows(c, table, ids, &rows, &row_ids)) return;
        table = &rows;
        ids = &row_ids;
        V = qi_rows(table);
    }
    if (kept) {
        qc_kept k = qc_kept_of(table);
        ACT_DISPATCH(c, out->dtype, "embedding", {
            embedding_kept_k<T><<<grid_for(c, n), THREADS, 0, c->stream>>>(k, V, (const int32_t *)ids->data, (T *)out->data, D, n);
        });
        qc_check_launch(c, "embedding");
        return;
    }
    ACT_DISPATCH(c, out->dtype, "embedding", {
        embedding_k<T><<<grid_for(c, n), THREADS, 0, c->stream>>>(table->data, table->dtype, table->scale, V, (const int32_t *)ids->data, (T *)out->data, D, n);
    });
    qc_check_launch(c, "embedding");
}

/* Adds a bias row and applies an activation to y[M, N] in place. */
template <typename T, int V>
__global__ void bias_act_k(T *y, const void *bias, int bdt, float bscale, int act, int64_t N, int64_t units) {
    GRID_STRIDE(u, units) {
        int64_t i = u * V, n = i % N;
        float f[V];
        load_v<V>(y + i, f);
#pragma unroll
        for (int j = 0; j < V; j++)
            f[j] = apply_act(f[j] + (bias ? ld_param(bias, bdt, n + j) * bscale : 0.0f), act);
        store_v<V>(y + i, f);
    }
}

void qc_bias_act(cuda_impl *c, qi_tensor *y, const qi_tensor *bias, qi_act act) {
    int64_t N = y->ne[y->ndim - 1], n = qi_numel(y);
    if (n == 0 || (!bias && act == QI_ACT_NONE)) return;
    bool vec = N % 8 == 0 && qc_aligned16(y->data);
    const void *b = bias ? bias->data : NULL;
    int bdt = bias ? bias->dtype : 0;
    float bs = bias ? bias->scale : 1.0f;
    ACT_DISPATCH(c, y->dtype, "bias/activation", {
        if (vec) bias_act_k<T, 8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>((T *)y->data, b, bdt, bs, (int)act, N, n / 8);
        else bias_act_k<T, 1><<<grid_for(c, n), THREADS, 0, c->stream>>>((T *)y->data, b, bdt, bs, (int)act, N, n);
    });
    qc_check_launch(c, "bias/activation");
}

/* y[M, N] (bf16) = act(acc[M, N] (float32) + bias): the epilogue for GEMMs
 * whose activation cuBLASLt cannot fuse, with a single rounding. */
template <int V>
__global__ void bias_act_f32_k(const float *acc, bf16 *y, const void *bias, int bdt, float bscale, int act,
                               int64_t N, int64_t units) {
    GRID_STRIDE(u, units) {
        int64_t i = u * V, n = i % N;
        float f[V];
        load_v<V>(acc + i, f);
#pragma unroll
        for (int j = 0; j < V; j++)
            f[j] = apply_act(f[j] + (bias ? ld_param(bias, bdt, n + j) * bscale : 0.0f), act);
        store_v<V>(y + i, f);
    }
}

void qc_bias_act_f32(cuda_impl *c, const float *acc, qi_tensor *y, const qi_tensor *bias, qi_act act) {
    int64_t N = y->ne[y->ndim - 1], n = qi_numel(y);
    if (n == 0) return;
    bool vec = N % 8 == 0 && qc_aligned16(y->data) && qc_aligned16(acc);
    const void *b = bias ? bias->data : NULL;
    int bdt = bias ? bias->dtype : 0;
    float bs = bias ? bias->scale : 1.0f;
    if (vec) bias_act_f32_k<8><<<grid_for(c, n / 8), THREADS, 0, c->stream>>>(acc, (bf16 *)y->data, b, bdt, bs, (int)act, N, n / 8);
    else bias_act_f32_k<1><<<grid_for(c, n), THREADS, 0, c->stream>>>(acc, (bf16 *)y->data, b, bdt, bs, (int)act, N, n);
    qc_check_launch(c, "bias/activation");
}

__global__ void to_bf16_k(const void *src, int dt, float scale, bf16 *dst, int64_t n) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(ld_param(src, dt, i) * scale);
}

void qc_to_bf16(cuda_impl *c, const void *src, qi_dtype dt, float scale, bf16 *dst, int64_t n) {
    if (n == 0) return;
    to_bf16_k<<<grid_for(c, n), THREADS, 0, c->stream>>>(src, (int)dt, scale, dst, n);
    qc_check_launch(c, "convert to bf16");
}

/* ---- rope ------------------------------------------------------------------------ */

/* One thread per rotated pair of x [B, L, H, Dh]; angles from [L, Dh/2] tables. */
template <typename T>
__global__ void rope_k(T *x, const void *cos_t, const void *sin_t, int tdt, int64_t L, int64_t H, int P,
                       int interleaved, int64_t pairs) {
    GRID_STRIDE(i, pairs) {
        int64_t m = i % P, r = i / P, l = (r / H) % L;
        T *v = x + r * (2 * P);
        int64_t i0 = interleaved ? 2 * m : m, i1 = interleaved ? 2 * m + 1 : m + P;
        float cs = ld_param(cos_t, tdt, l * P + m), sn = ld_param(sin_t, tdt, l * P + m);
        float a = to_f(v[i0]), b = to_f(v[i1]);
        v[i0] = from_f<T>(a * cs - b * sn);
        v[i1] = from_f<T>(a * sn + b * cs);
    }
}

/* Vectorised rope for bf16 x and F32 tables, Dh a multiple of 16: a thread
 * rotates 8 pairs, reading 16-byte pieces of x and of both tables. */
__global__ void rope_vec_k(bf16 *x, const float *cos_t, const float *sin_t, int64_t L, int64_t H, int P,
                           int interleaved, int64_t units) {
    GRID_STRIDE(u, units) { /* u: (row, 8 pairs) */
        const int per_row = P / 8;
        const int64_t r = u / per_row;
        const int m0 = (int)(u % per_row) * 8;
        const int64_t l = (r / H) % L;
        bf16 *v = x + r * (2 * P);
        float cs[8], sn[8], a[8], b[8];
        load_v<8>(cos_t + l * P + m0, cs);
        load_v<8>(sin_t + l * P + m0, sn);
        if (interleaved) { /* pairs (2m, 2m+1): 16 consecutive elements */
            float e[16];
            load_v<8>(v + 2 * m0, e);
            load_v<8>(v + 2 * m0 + 8, e + 8);
#pragma unroll
            for (int j = 0; j < 8; j++) a[j] = e[2 * j], b[j] = e[2 * j + 1];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                e[2 * j] = a[j] * cs[j] - b[j] * sn[j];
                e[2 * j + 1] = a[j] * sn[j] + b[j] * cs[j];
            }
            store_v<8>(v + 2 * m0, e);
            store_v<8>(v + 2 * m0 + 8, e + 8);
        } else { /* pairs (m, m+P) */
            load_v<8>(v + m0, a);
            load_v<8>(v + P + m0, b);
            float oa[8], ob[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                oa[j] = a[j] * cs[j] - b[j] * sn[j];
                ob[j] = a[j] * sn[j] + b[j] * cs[j];
            }
            store_v<8>(v + m0, oa);
            store_v<8>(v + P + m0, ob);
        }
    }
}

extern "C" void qc_rope(qi_backend *be, qi_tensor *x, const qi_tensor *cos_tab, const qi_tensor *sin_tab,
                        qi_rope_mode mode) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 4 || x->ne[3] % 2) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: rope needs x [B, L, H, Dh] with even Dh");
        return;
    }
    int64_t B = x->ne[0], L = x->ne[1], H = x->ne[2], P = x->ne[3] / 2, pairs = B * L * H * P;
    if (qi_numel(cos_tab) < L * P || qi_numel(sin_tab) < L * P || cos_tab->dtype != sin_tab->dtype) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: rope tables must be [%lld, %lld] of one dtype",
                (long long)L, (long long)P);
        return;
    }
    if (pairs == 0) return;
    if (x->dtype == QI_BF16 && cos_tab->dtype == QI_F32 && P % 8 == 0 && qc_aligned16(x->data) &&
        qc_aligned16(cos_tab->data) && qc_aligned16(sin_tab->data)) {
        const int64_t units = pairs / 8;
        rope_vec_k<<<grid_for(c, units), THREADS, 0, c->stream>>>((bf16 *)x->data, (const float *)cos_tab->data,
                                                                 (const float *)sin_tab->data, L, H, (int)P,
                                                                 mode == QI_ROPE_INTERLEAVED, units);
        qc_check_launch(c, "rope");
        return;
    }
    ACT_DISPATCH(c, x->dtype, "rope", {
        rope_k<T><<<grid_for(c, pairs), THREADS, 0, c->stream>>>((T *)x->data, cos_tab->data, sin_tab->data, cos_tab->dtype, L, H, (int)P, mode == QI_ROPE_INTERLEAVED, pairs);
    });
    qc_check_launch(c, "rope");
}

/* ---- per-head RMSNorm + RoPE ---------------------------------------------------------- */

/* One row's RMSNorm and rotation in 16 threads, f[8] this thread's elements
 * t*8.. of it: normalised in registers, rotated (interleaved pairs are
 * inside a thread; "half" pairs (m, m+64) are 8 threads apart: one
 * shuffle) into out[8]. Every lane of the warp calls it together. */
static __device__ __forceinline__ void norm_rope_row128(float f[8], int t, const void *w, int wdt, float wscale,
                                                        float eps, const float *cos_t, const float *sin_t,
                                                        int interleaved, int64_t drow, float out[8]) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) ss += f[j] * f[j];
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = rsqrtf(ss / 128.0f + eps);
#pragma unroll
    for (int j = 0; j < 8; j++) f[j] *= inv * (w ? ld_param(w, wdt, t * 8 + j) * wscale : 1.0f);
    if (interleaved) { /* pairs (2m, 2m+1), m = 4t .. 4t+3 */
        float cs[4], sn[4];
        const float4 c4 = *(const float4 *)(cos_t + drow * 64 + t * 4), s4 = *(const float4 *)(sin_t + drow * 64 + t * 4);
        cs[0] = c4.x, cs[1] = c4.y, cs[2] = c4.z, cs[3] = c4.w;
        sn[0] = s4.x, sn[1] = s4.y, sn[2] = s4.z, sn[3] = s4.w;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            out[2 * j] = f[2 * j] * cs[j] - f[2 * j + 1] * sn[j];
            out[2 * j + 1] = f[2 * j] * sn[j] + f[2 * j + 1] * cs[j];
        }
    } else { /* pairs (m, m+64): threads t and t^8 hold the two halves */
        float cs[8], sn[8], other[8];
        load_v<8>(cos_t + drow * 64 + (t & 7) * 8, cs);
        load_v<8>(sin_t + drow * 64 + (t & 7) * 8, sn);
#pragma unroll
        for (int j = 0; j < 8; j++) other[j] = __shfl_xor_sync(0xffffffffu, f[j], 8);
#pragma unroll
        for (int j = 0; j < 8; j++)
            out[j] = t < 8 ? f[j] * cs[j] - other[j] * sn[j] : other[j] * sn[j] + f[j] * cs[j];
    }
}

#define NR_ROWS_PER_GROUP 2 /* rows per 16 threads: both loaded before either is used */

/* Head dim 128, bf16, F32 tables: 16 threads per (b, l, h) row, 8 elements
 * each (norm_rope_row128), stored once into the destination row. Each group
 * of 16 takes two rows 16 apart and loads both before it computes: one
 * 16-byte load per thread in flight measured 2.6 TB/s on the H200's image q
 * (run AC), two double what each SM has in flight. Rows past R are computed
 * on a clamped row and not stored, so every shuffle sees a full warp; in
 * place (x == dst) each row is read before its group writes it. */
__global__ void rms_norm_rope128_k(const bf16 *x, const void *w, int wdt, float wscale, float eps,
                                   const float *cos_t, const float *sin_t, int interleaved, bf16 *dst,
                                   int64_t R, int64_t L, int64_t H, int64_t Ld, int64_t row0) {
    const int groups = THREADS / 16, t = threadIdx.x & 15;
    const int64_t first = (int64_t)blockIdx.x * groups * NR_ROWS_PER_GROUP + threadIdx.x / 16;
    float f[NR_ROWS_PER_GROUP][8];
#pragma unroll
    for (int k = 0; k < NR_ROWS_PER_GROUP; k++) {
        const int64_t r = first + k * groups;
        load_v<8>(x + (r < R ? r : R - 1) * 128 + t * 8, f[k]);
    }
#pragma unroll
    for (int k = 0; k < NR_ROWS_PER_GROUP; k++) {
        const int64_t r_live = first + k * groups, r = r_live < R ? r_live : R - 1;
        const int64_t h = r % H, bl = r / H, l = bl % L, b = bl / L, drow = row0 + l;
        float out[8];
        norm_rope_row128(f[k], t, w, wdt, wscale, eps, cos_t, sin_t, interleaved, drow, out);
        if (r_live < R) store_v<8>(dst + ((b * Ld + drow) * H + h) * 128 + t * 8, out);
    }
}

extern "C" void qc_rms_norm_rope(qi_backend *be, const qi_tensor *x, const qi_tensor *w, float eps,
                                 const qi_tensor *cos_tab, const qi_tensor *sin_tab, qi_rope_mode mode,
                                 qi_tensor *dst, int64_t dst_row0) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 4 || dst->ndim != 4 || x->ne[0] != dst->ne[0] || x->ne[2] != dst->ne[2] ||
        x->ne[3] != dst->ne[3] || x->ne[3] % 2 || dst_row0 < 0 || dst_row0 + x->ne[1] > dst->ne[1]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: rms_norm_rope needs x [B, L, H, Dh] and dst [B, Ld, H, Dh] with "
                "dst_row0 + L <= Ld and Dh even");
        return;
    }
    if (!same_dtype(c, "rms_norm_rope", x, dst)) return;
    const int64_t B = x->ne[0], L = x->ne[1], H = x->ne[2], Dh = x->ne[3], Ld = dst->ne[1], P = Dh / 2;
    if (qi_numel(cos_tab) < (dst_row0 + L) * P || qi_numel(sin_tab) < (dst_row0 + L) * P ||
        cos_tab->dtype != sin_tab->dtype || (w && qi_numel(w) != Dh)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: rms_norm_rope tables must be [>= %lld, %lld] of one dtype, w [%lld]",
                (long long)(dst_row0 + L), (long long)P, (long long)Dh);
        return;
    }
    const int64_t R = B * L * H;
    if (R == 0) return;
    if (Dh == 128 && x->dtype == QI_BF16 && cos_tab->dtype == QI_F32 && qc_aligned16(x->data) &&
        qc_aligned16(dst->data) && qc_aligned16(cos_tab->data) && qc_aligned16(sin_tab->data)) {
        const int64_t rows_per_block = (THREADS / 16) * NR_ROWS_PER_GROUP;
        rms_norm_rope128_k<<<(unsigned)((R + rows_per_block - 1) / rows_per_block), THREADS, 0, c->stream>>>(
            (const bf16 *)x->data, w ? w->data : NULL, w ? (int)w->dtype : 0, w ? w->scale : 1.0f, eps,
            (const float *)cos_tab->data, (const float *)sin_tab->data, mode == QI_ROPE_INTERLEAVED,
            (bf16 *)dst->data, R, L, H, Ld, dst_row0);
        qc_check_launch(c, "rms_norm_rope");
        return;
    }
    /* Other head dims: the plain ops, batch by batch, on dst's rows (tables from row dst_row0). */
    const size_t esz = qi_dtype_size(x->dtype), tsz = qi_dtype_size(cos_tab->dtype);
    qi_tensor ct = *cos_tab, st = *sin_tab;
    ct.data = (char *)cos_tab->data + (size_t)(dst_row0 * P) * tsz;
    st.data = (char *)sin_tab->data + (size_t)(dst_row0 * P) * tsz;
    for (int64_t b = 0; b < B; b++) {
        qi_tensor xb = *x, db = *dst; /* batch b's rows, as [1, L, H, Dh] */
        xb.ne[0] = db.ne[0] = 1;
        db.ne[1] = L;
        xb.data = (char *)x->data + (size_t)(b * L * H * Dh) * esz;
        db.data = (char *)dst->data + (size_t)((b * Ld + dst_row0) * H * Dh) * esz;
        qi_tensor x2 = qi_view2(&xb, L * H, Dh), d2 = qi_view2(&db, L * H, Dh);
        qi_tensor d4 = qi_view4(&db, 1, L, H, Dh);
        qc_rms_norm(be, &x2, w, eps, &d2);
        qc_rope(be, &d4, &ct, &st, mode);
    }
}

/* ---- VAE --------------------------------------------------------------------------- */

/* col[kk][p] for output rows [r0, r0+nr): kk = (ci, dy, dx) is blockIdx.y,
 * p = (r, col) runs along x, so stores coalesce and the index math is 32-bit. */
__global__ void im2col_k(const bf16 *x, int H, int W, int kh, int kw, int pad, int r0, int Wo, int P, bf16 *col) {
    const int kk = blockIdx.y, ci = kk / (kh * kw), dy = (kk / kw) % kh, dx = kk % kw;
    const bf16 *xc = x + (size_t)ci * H * W;
    bf16 *dst = col + (size_t)kk * P;
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < P; p += gridDim.x * blockDim.x) {
        const int r = p / Wo, cc = p - r * Wo, iy = r0 + r + dy - pad, ix = cc + dx - pad;
        dst[p] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : zero;
    }
}

template <typename T>
__global__ void channel_bias_k(T *y, const void *bias, int bdt, float bscale, int64_t HW, int64_t n) {
    GRID_STRIDE(i, n) y[i] = from_f<T>(to_f(y[i]) + ld_param(bias, bdt, i / HW) * bscale);
}

/* The same for bf16 y with HW a multiple of 8: 8 elements of one channel per
 * thread, one 16-byte load and store, one division and one bias read for the
 * eight — each element the same expression, so the same bits. The one-element
 * kernel ran at ~1 TB/s (18 µs per 384-channel 128² plane after each im2col
 * conv of the VAE decode, 1.6 ms of it at 1024²; run AC's profile). */
__global__ void channel_bias8_k(bf16 *y, const void *bias, int bdt, float bscale, int64_t HW, int64_t units) {
    GRID_STRIDE(u, units) {
        const float b = ld_param(bias, bdt, u * 8 / HW); /* times bscale per element, as channel_bias_k */
        uint4 raw = ((const uint4 *)y)[u];
        bf16 *v = (bf16 *)&raw;
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = from_f<bf16>(to_f(v[j]) + b * bscale);
        ((uint4 *)y)[u] = raw;
    }
}

/* The same, 8 pixels of one output row per thread and one 16-byte store
 * (Wo a multiple of 8). */
__global__ void im2col8_k(const bf16 *x, int H, int W, int kh, int kw, int pad, int r0, int Wo, int P, bf16 *col) {
    const int kk = blockIdx.y, ci = kk / (kh * kw), dy = (kk / kw) % kh, dx = kk % kw;
    const bf16 *xc = x + (size_t)ci * H * W;
    bf16 *dst = col + (size_t)kk * P;
    for (int p = (blockIdx.x * blockDim.x + threadIdx.x) * 8; p < P; p += gridDim.x * blockDim.x * 8) {
        const int r = p / Wo, c0 = p - r * Wo, iy = r0 + r + dy - pad;
        __align__(16) bf16 v[8];
        const bool row_ok = iy >= 0 && iy < H;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int ix = c0 + j + dx - pad;
            v[j] = row_ok && ix >= 0 && ix < W ? xc[iy * W + ix] : __float2bfloat16_rn(0.0f);
        }
        *(uint4 *)(dst + p) = *(const uint4 *)v;
    }
}

/* y[Co, P] = W[Co, Kc] · col[Kc, P]: column-major D[P, Co] = col[P, Kc] · W[Kc, Co]. */
extern "C" void qc_conv2d(qi_backend *be, const qi_tensor *x, const qi_tensor *w, const qi_tensor *b, int pad,
                          qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 3 || w->ndim != 4 || y->ndim != 3 || x->ne[0] != w->ne[1]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: conv2d needs x [Ci, H, W], w [Co, Ci, kh, kw], y [Co, H', W']");
        return;
    }
    int64_t Ci = x->ne[0], H = x->ne[1], W = x->ne[2], Co = w->ne[0], kh = w->ne[2], kw = w->ne[3];
    int64_t Ho = H + 2 * pad - kh + 1, Wo = W + 2 * pad - kw + 1, Kc = Ci * kh * kw, HWo = Ho * Wo;
    if (y->ne[0] != Co || y->ne[1] != Ho || y->ne[2] != Wo || Ho <= 0 || Wo <= 0) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: conv2d output must be [%lld, %lld, %lld]", (long long)Co,
                (long long)Ho, (long long)Wo);
        return;
    }
    if (x->dtype != QI_BF16 || y->dtype != QI_BF16) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d needs bf16 x and y (got %s, %s)",
                qi_dtype_name(x->dtype), qi_dtype_name(y->dtype));
        return;
    }
    if (!qc_param_type(w->dtype)) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d: cannot read a weight of type %s (BF16, F16 "
                "or F32)", qi_dtype_name(w->dtype));
        return;
    }
    if (Kc > 65535 || (int64_t)Ci * H * W > INT32_MAX || Co * HWo > INT32_MAX) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d of %lld×%lld taps on [%lld, %lld, %lld] is too large",
                (long long)Co, (long long)Kc, (long long)Ci, (long long)H, (long long)W);
        return;
    }
    /* 3×3, pad 1 (every VAE conv but the 1×1s): implicit GEMM, no column matrix */
    if (kh == 3 && kw == 3 && pad == 1 && qc_conv3x3_implicit(c, x, 0, w, b, NULL, y)) return;
    /* Weights: bf16 as they are; other dtypes converted into the scratch head. */
    char *scratch = c->scratch;
    size_t left = c->scratch_bytes;
    const bf16 *wm = (const bf16 *)w->data;
    float alpha = w->scale;
    if (w->dtype != QI_BF16) {
        size_t wb = ((size_t)(Co * Kc) * 2 + 255) & ~(size_t)255;
        if (wb > left / 2) {
            qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d weight too large to convert");
            return;
        }
        qc_to_bf16(c, w->data, w->dtype, w->scale, (bf16 *)scratch, Co * Kc);
        wm = (const bf16 *)scratch;
        alpha = 1.0f;
        scratch += wb;
        left -= wb;
    }
    if (kh == 1 && kw == 1 && pad == 0) {
        qc_gemm(c, 0, 0, (int)HWo, (int)Co, (int)Kc, x->data, (int)HWo, wm, (int)Kc, y->data, (int)HWo,
                CUDA_R_16BF, alpha, NULL, CUBLASLT_EPILOGUE_DEFAULT, "conv2d 1x1");
    } else {
        /* Bands of output rows whose column matrix fits the scratch. */
        int64_t band = (int64_t)(left / ((size_t)Kc * Wo * 2));
        if (band < 1) {
            qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: conv2d row of %lld×%lld columns exceeds scratch",
                    (long long)Kc, (long long)Wo);
            return;
        }
        if (band > Ho) band = Ho;
        bf16 *col = (bf16 *)scratch;
        for (int64_t r0 = 0; r0 < Ho; r0 += band) {
            int64_t nr = Ho - r0 < band ? Ho - r0 : band, P = nr * Wo;
            dim3 grid((unsigned)((P + THREADS - 1) / THREADS < 1024 ? (P + THREADS - 1) / THREADS : 1024), (unsigned)Kc);
            if (Wo % 8 == 0) {
                dim3 grid8((unsigned)((P / 8 + THREADS - 1) / THREADS < 1024 ? (P / 8 + THREADS - 1) / THREADS : 1024),
                           (unsigned)Kc);
                im2col8_k<<<grid8, THREADS, 0, c->stream>>>((const bf16 *)x->data, (int)H, (int)W, (int)kh, (int)kw,
                                                             pad, (int)r0, (int)Wo, (int)P, col);
            } else {
                im2col_k<<<grid, THREADS, 0, c->stream>>>((const bf16 *)x->data, (int)H, (int)W, (int)kh, (int)kw,
                                                           pad, (int)r0, (int)Wo, (int)P, col);
            }
            if (qc_check_launch(c, "conv2d im2col")) return;
            if (qc_gemm(c, 0, 0, (int)P, (int)Co, (int)Kc, col, (int)P, wm, (int)Kc,
                        (bf16 *)y->data + r0 * Wo, (int)HWo, CUDA_R_16BF, alpha, NULL,
                        CUBLASLT_EPILOGUE_DEFAULT, "conv2d"))
                return;
        }
    }
    if (b) {
        int64_t n = Co * HWo;
        if (HWo % 8 == 0 && qc_aligned16(y->data))
            channel_bias8_k<<<grid_for(c, n / 8), THREADS, 0, c->stream>>>((bf16 *)y->data, b->data, b->dtype,
                                                                          b->scale, HWo, n / 8);
        else
            channel_bias_k<bf16><<<grid_for(c, n), THREADS, 0, c->stream>>>((bf16 *)y->data, b->data, b->dtype,
                                                                            b->scale, HWo, n);
        qc_check_launch(c, "conv2d bias");
    }
}

template <typename T> __global__ void upsample2x_k(const T *x, T *y, int64_t H, int64_t W, int64_t n) {
    GRID_STRIDE(i, n) { /* i over outputs [C, 2H, 2W] */
        int64_t q = i % (2 * W), r = (i / (2 * W)) % (2 * H), ch = i / (4 * H * W);
        y[i] = x[(ch * H + r / 2) * W + q / 2];
    }
}

extern "C" void qc_upsample2x(qi_backend *be, const qi_tensor *x, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 3 || y->ndim != 3 || y->ne[0] != x->ne[0] || y->ne[1] != 2 * x->ne[1] ||
        y->ne[2] != 2 * x->ne[2]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: upsample2x needs x [C, H, W] and y [C, 2H, 2W]");
        return;
    }
    if (!same_dtype(c, "upsample2x", x, y)) return;
    int64_t n = qi_numel(y);
    if (n == 0) return;
    ACT_DISPATCH(c, x->dtype, "upsample2x", {
        upsample2x_k<T><<<grid_for(c, n), THREADS, 0, c->stream>>>((const T *)x->data, (T *)y->data, x->ne[1], x->ne[2], n);
    });
    qc_check_launch(c, "upsample2x");
}

template <typename T>
__global__ void subsample2x_k(const T *x, T *y, int64_t Hx, int64_t Wx, int64_t H, int64_t W, int off, int64_t n) {
    GRID_STRIDE(i, n) { /* i over outputs [C, H, W] */
        int64_t q = i % W, r = (i / W) % H, ch = i / (H * W);
        y[i] = x[(ch * Hx + 2 * r + off) * Wx + 2 * q + off];
    }
}

extern "C" void qc_subsample2x(qi_backend *be, const qi_tensor *x, int offset, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 3 || y->ndim != 3 || y->ne[0] != x->ne[0] || (offset != 0 && offset != 1) ||
        2 * (y->ne[1] - 1) + offset >= x->ne[1] || 2 * (y->ne[2] - 1) + offset >= x->ne[2]) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: subsample2x needs x [C, H, W], offset 0 or 1 and y [C, Ho, Wo] "
                "with 2·(Ho − 1) + offset < H and 2·(Wo − 1) + offset < W");
        return;
    }
    if (!same_dtype(c, "subsample2x", x, y)) return;
    int64_t n = qi_numel(y);
    if (n == 0) return;
    ACT_DISPATCH(c, x->dtype, "subsample2x", {
        subsample2x_k<T><<<grid_for(c, n), THREADS, 0, c->stream>>>((const T *)x->data, (T *)y->data, x->ne[1],
                                                                     x->ne[2], y->ne[1], y->ne[2], offset, n);
    });
    qc_check_launch(c, "subsample2x");
}

/* channel_rms_norm_act with no activation (cuda_conv.cu). */
extern "C" void qc_channel_rms_norm(qi_backend *be, const qi_tensor *x, const qi_tensor *gamma,
                                    const qi_tensor *bias, qi_tensor *y) {
    qc_channel_rms_norm_act(be, x, gamma, bias, QI_ACT_NONE, y);
}

/* 32×32 tiles through shared memory (padded by one to dodge bank conflicts). */
template <typename T> __global__ void transpose_k(const T *x, T *y, int64_t R, int64_t C) {
    __shared__ T tile[32][33];
    int64_t c0 = (int64_t)blockIdx.x * 32, r0 = (int64_t)blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int64_t r = r0 + j, cc = c0 + threadIdx.x;
        if (r < R && cc < C) tile[j][threadIdx.x] = x[r * C + cc];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int64_t cc = c0 + j, r = r0 + threadIdx.x; /* y[cc][r] */
        if (r < R && cc < C) y[cc * R + r] = tile[threadIdx.x][j];
    }
}

extern "C" void qc_transpose2d(qi_backend *be, const qi_tensor *x, qi_tensor *y) {
    cuda_impl *c = cuda_of(be);
    if (x->ndim != 2 || qi_numel(y) != qi_numel(x) || !same_dtype(c, "transpose2d", x, y)) {
        qc_fail(c, QI_ERR_ARG, "cuda backend: transpose2d needs a 2-D x and y of the same size and dtype");
        return;
    }
    int64_t R = x->ne[0], C = x->ne[1];
    if (R == 0 || C == 0) return;
    if ((C + 31) / 32 > INT32_MAX || (R + 31) / 32 > 65535) {
        qc_fail(c, QI_ERR_UNSUPPORTED, "cuda backend: transpose2d of [%lld, %lld] is too large",
                (long long)R, (long long)C);
        return;
    }
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)((R + 31) / 32)), block(32, 8);
    ACT_DISPATCH(c, x->dtype, "transpose2d", {
        transpose_k<T><<<grid, block, 0, c->stream>>>((const T *)x->data, (T *)y->data, R, C);
    });
    qc_check_launch(c, "transpose2d");
}

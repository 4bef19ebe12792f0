/*
 * test_cuda_bench.c — device timings of the CUDA backend's ops at the real
 * model's shapes (median of 10 after 3 warm-up runs, CUDA events): GEMMs,
 * every attention kernel the dispatch can pick, the memory-bound ops, the
 * convolutions (implicit GEMM against im2col), the fused ops against the
 * plain ops they replace, and where one DiT block's time goes. Numbers for
 * dev/cuda/NOTES.md; the only claim is that they ran (correctness is
 * test_backend_ops's and test_cuda_kernels's). Needs a GPU: label cuda.
 *
 * Env: QI_CUDA_BENCH=0 skips the timings, QI_TEST_WGMMA=0 (or the generic kernels: QI_CUDA_GENERIC=1,
 * a non-Hopper GPU) leaves the Hopper
 * attention kernels out, QI_TEST_ONLY=attention times only attention,
 * QI_TEST_ONLY=fused only the fused ops and the DiT block.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_backend.h"
#include "backend_cases.h"

static qi_backend *gpu;
static qi_error err;

static void must(qi_status st, const char *what) { bc_must(st, what, &err); }

/* Attention kernels for head dim 128: the flash ones (N_FLASH_128), then GEMMs. */
static const char *const kernels_128[] = {"mma", "wgmma64x3", "tma64x2", "tma64x3", "gemm"};
#define N_FLASH_128 4
static int use_wgmma = 1;                   /* QI_TEST_WGMMA=0: only "mma" */
static const char *default_kernel = "auto"; /* "mma" when the wgmma kernels are left out */
static int n_kernels_128(void) { return use_wgmma ? (int)QI_ARRAY_LEN(kernels_128) : 1; }
static int only_attention;                  /* QI_TEST_ONLY=attention */

/* ---- timings ------------------------------------------------------------------------------ */

#define WARM 3
#define REPS 10

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of REPS runs of stmt after WARM, CUDA events on the backend's stream. */
#define TIME_MS(result, stmt)                                                                    \
    do {                                                                                         \
        cudaStream_t s_ = (cudaStream_t)qi_cuda_stream(gpu);                                     \
        cudaEvent_t e_[REPS][2];                                                                 \
        float ms_[REPS];                                                                         \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventCreate(&e_[i_][0]);                                                         \
            cudaEventCreate(&e_[i_][1]);                                                         \
        }                                                                                        \
        for (int i_ = 0; i_ < WARM; i_++) { stmt; }                                              \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventRecord(e_[i_][0], s_);                                                      \
            stmt;                                                                                \
            cudaEventRecord(e_[i_][1], s_);                                                      \
        }                                                                                        \
        must(gpu->ops->sync(gpu, &err), "timed op");                                             \
        for (int i_ = 0; i_ < REPS; i_++) {                                                      \
            cudaEventElapsedTime(&ms_[i_], e_[i_][0], e_[i_][1]);                                \
            cudaEventDestroy(e_[i_][0]);                                                         \
            cudaEventDestroy(e_[i_][1]);                                                         \
        }                                                                                        \
        qsort(ms_, REPS, sizeof(float), cmp_float);                                              \
        (result) = 0.5 * (ms_[REPS / 2 - 1] + ms_[REPS / 2]);                                    \
    } while (0)

static void bench_linear(int64_t M, int64_t K, int64_t N, qi_act act_kind, const char *what) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, bs[1] = {N}, ys[2] = {M, N};
    uint16_t *hw, *hb;
    qi_tensor x = bc_dev_rand(gpu, 2, xs, 1.0f), w = bc_dev_weight(gpu, 2, ws, 1.0f / sqrtf((float)K), &hw);
    qi_tensor b = bc_dev_weight(gpu, 1, bs, 0.5f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 2, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->linear(gpu, &x, &w, &b, act_kind, &y));
    double tflops = 2.0 * M * K * N / (ms * 1e-3) / 1e12;
    printf("  %-16s linear %5lldx%5lldx%5lld %-9s %8.3f ms  %6.1f TFLOP/s\n", what, (long long)M, (long long)K,
           (long long)N, act_kind == QI_ACT_GELU_TANH ? "+b gelu" : act_kind == QI_ACT_SILU ? "+b silu" : "+b",
           ms, tflops);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

static void bench_attention(int64_t B, int64_t L, int64_t H, int64_t Hkv, int64_t Dh, int causal, int masked,
                            const char *what, const char *kernel) {
    qi_cuda_set_attention_kernel(gpu, kernel);
    size_t mk = gpu->ops->mark(gpu);
    int64_t qs[4] = {B, L, H, Dh}, ks[4] = {B, L, Hkv, Dh}, ms2[2] = {B, L};
    qi_tensor q = bc_dev_rand(gpu, 4, qs, 2.0f), k = bc_dev_rand(gpu, 4, ks, 2.0f), v = bc_dev_rand(gpu, 4, ks, 1.0f), o, mask;
    must(gpu->ops->tensor(gpu, &o, QI_BF16, 4, qs, &err), "o");
    if (masked) {
        int32_t *mh = malloc((size_t)(B * L) * sizeof(int32_t));
        for (int64_t i = 0; i < B * L; i++) mh[i] = (i % L) < 100 || (i % L) >= 128;
        must(gpu->ops->tensor(gpu, &mask, QI_I32, 2, ms2, &err), "mask");
        must(gpu->ops->upload(gpu, &mask, mh, &err), "mask");
        free(mh);
    }
    double ms;
    TIME_MS(ms, gpu->ops->attention(gpu, &q, &k, &v, masked ? &mask : NULL, causal, 1.0f / sqrtf((float)Dh), &o));
    double flop = 4.0 * B * H * L * L * Dh * (causal ? 0.5 : 1.0);
    printf("  %-16s attention %-10s B%lld L%lld H%lld/%lld Dh%lld%s%s %8.3f ms  %6.1f TFLOP/s\n", what, kernel,
           (long long)B, (long long)L, (long long)H, (long long)Hkv, (long long)Dh, causal ? " causal" : "",
           masked ? " mask" : "", ms, flop / (ms * 1e-3) / 1e12);
    qi_cuda_set_attention_kernel(gpu, default_kernel);
    gpu->ops->reset(gpu, mk);
}

/* Attention of each window's rows of q, k, v into o, one call per window
 * (how the vision tower ran before attention_segments). */
static void windows_one_by_one(const qi_tensor *q, const qi_tensor *k, const qi_tensor *v, qi_tensor *o,
                               const int32_t *off, int64_t S, float scale) {
    const size_t row = (size_t)(q->ne[2] * q->ne[3]) * qi_dtype_size(q->dtype); /* bytes per patch row */
    for (int64_t w = 0; w < S; w++) {
        qi_tensor sl[4] = {*q, *k, *v, *o};
        for (int t = 0; t < 4; t++) {
            sl[t].ne[1] = off[w + 1] - off[w];
            sl[t].data = (char *)sl[t].data + (size_t)off[w] * row;
        }
        gpu->ops->attention(gpu, &sl[0], &sl[1], &sl[2], NULL, 0, scale, &sl[3]);
    }
}

/* The vision tower's attention at 392² (784 patches, 16 heads of 80): its
 * 16 windows (9 of 64 rows, 6 of 32, one of 16) one call each, as the tower
 * ran them, with the GEMM path and the flash kernel, against one
 * attention_segments call; and its full-attention layers. One layer's worth:
 * the tower has 28 windowed and 4 full layers. */
static void bench_vision_attention(void) {
    size_t mk = gpu->ops->mark(gpu);
    const int64_t P = 784, H = 16, Dh = 80, S = 16;
    int64_t qs[4] = {1, P, H, Dh}, ns[1] = {S + 1};
    qi_tensor q = bc_dev_rand(gpu, 4, qs, 2.0f), k = bc_dev_rand(gpu, 4, qs, 2.0f), v = bc_dev_rand(gpu, 4, qs, 1.0f);
    qi_tensor o, seg;
    must(gpu->ops->tensor(gpu, &o, QI_BF16, 4, qs, &err), "o");
    must(gpu->ops->tensor(gpu, &seg, QI_I32, 1, ns, &err), "offsets");
    int32_t off[17] = {0};
    for (int64_t w = 0; w < S; w++) /* 4x4 windows of a 14x14-unit grid, 4 patches a unit */
        off[w + 1] = off[w] + (int32_t)((w / 4 == 3 ? 2 : 4) * (w % 4 == 3 ? 2 : 4) * 4);
    must(gpu->ops->upload(gpu, &seg, off, &err), "offsets");
    const float scale = 1.0f / sqrtf((float)Dh);
    static const char *const kernels[2] = {"gemm", "mma"};
    for (int ki = 0; ki < 2; ki++) {
        qi_cuda_set_attention_kernel(gpu, kernels[ki]);
        double ms;
        TIME_MS(ms, windows_one_by_one(&q, &k, &v, &o, off, S, scale));
        printf("  %-16s attention %-10s 16 windows, one call each          %8.3f ms\n", "vision 392²", kernels[ki], ms);
        TIME_MS(ms, gpu->ops->attention_segments(gpu, &q, &k, &v, &seg, scale, &o));
        printf("  %-16s attention_segments %-10s 16 windows in one call %8.3f ms\n", "vision 392²", kernels[ki], ms);
        TIME_MS(ms, gpu->ops->attention(gpu, &q, &k, &v, NULL, 0, scale, &o));
        printf("  %-16s attention %-10s full, L784 H16 Dh80             %8.3f ms\n", "vision 392²", kernels[ki], ms);
    }
    qi_cuda_set_attention_kernel(gpu, default_kernel);
    gpu->ops->reset(gpu, mk);
}

static void bench_memory_ops(void) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {1, 4224, 3072}, ms2[2] = {1, 6 * 3072}, qs[4] = {1, 4224, 24, 128}, ts[2] = {4224, 64};
    qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), y = bc_dev_rand(gpu, 3, xs, 1.0f), mod = bc_dev_rand(gpu, 2, ms2, 1.0f), q = bc_dev_rand(gpu, 4, qs, 1.0f);
    qi_tensor out;
    must(gpu->ops->tensor(gpu, &out, QI_BF16, 3, xs, &err), "out");
    qi_tensor sh = bc_mod_chunk(&mod, 1, 3072, 0), sc = bc_mod_chunk(&mod, 1, 3072, 1), gt = bc_mod_chunk(&mod, 1, 3072, 2);
    qi_tensor ct, st;
    must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, ts, &err), "cos");
    must(gpu->ops->tensor(gpu, &st, QI_F32, 2, ts, &err), "sin");
    float *h = malloc(4224 * 64 * sizeof(float));
    for (int i = 0; i < 4224 * 64; i++) h[i] = bc_frand();
    must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
    must(gpu->ops->upload(gpu, &st, h, &err), "sin");
    free(h);
    uint16_t *hw;
    int64_t wn[1] = {128};
    qi_tensor nw = bc_dev_weight(gpu, 1, wn, 1.0f, &hw);
    double ms, mb = 4224.0 * 3072 * 2 / 1e6; /* one [4224, 3072] bf16 tensor */
    TIME_MS(ms, gpu->ops->layer_norm_mod(gpu, &x, &sh, &sc, 6 * 3072, 1e-6f, &out));
    printf("  %-16s layer_norm_mod [4224, 3072]      %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    TIME_MS(ms, gpu->ops->add_gated(gpu, &x, &gt, 6 * 3072, &y));
    printf("  %-16s add_gated [4224, 3072]           %8.3f ms  %6.0f GB/s\n", "DiT", ms, 3 * mb / ms);
    TIME_MS(ms, gpu->ops->rms_norm(gpu, &q, &nw, 1e-6f, &q));
    printf("  %-16s rms_norm per head [4224·24, 128] %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    TIME_MS(ms, gpu->ops->rope(gpu, &q, &ct, &st, QI_ROPE_INTERLEAVED));
    printf("  %-16s rope [1, 4224, 24, 128]          %8.3f ms  %6.0f GB/s\n", "DiT", ms, 2 * mb / ms);
    gpu->ops->weight_free(gpu, &nw);
    free(hw);
    gpu->ops->reset(gpu, mk);
}

static void bench_conv(int64_t Ci, int64_t H, int64_t W, int64_t Co) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 3, 3}, bs[1] = {Co}, ys[3] = {Co, H, W};
    uint16_t *hw, *hb;
    qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), w = bc_dev_weight(gpu, 4, ws, 0.02f, &hw), b = bc_dev_weight(gpu, 1, bs, 0.1f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->conv2d(gpu, &x, &w, &b, 1, &y));
    double flop = 2.0 * Co * Ci * 9 * H * W;
    printf("  %-16s conv2d 3x3 [%lld,%lld,%lld] -> %lld %8.3f ms  %6.1f TFLOP/s\n", "VAE", (long long)Ci,
           (long long)H, (long long)W, (long long)Co, ms, flop / (ms * 1e-3) / 1e12);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}


/* conv2d_fused at a VAE shape: the implicit GEMM against im2col + cuBLASLt
 * (and, for the upsampling convs, the plain upsample2x + conv2d). */
static void bench_conv_fused(int64_t Ci, int64_t H, int64_t W, int64_t Co, int up, int res, const char *what) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t Hc = up ? 2 * H : H, Wc = up ? 2 * W : W;
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 3, 3}, bs[1] = {Co}, ys[3] = {Co, Hc, Wc}, us[3] = {Ci, Hc, Wc};
    uint16_t *hw, *hb;
    qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), w = bc_dev_weight(gpu, 4, ws, 0.02f, &hw), b = bc_dev_weight(gpu, 1, bs, 0.1f, &hb), y, u;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms_new, ms_old;
    qi_cuda_set_conv_kernel(gpu, "implicit");
    TIME_MS(ms_new, gpu->ops->conv2d_fused(gpu, &x, up, &w, &b, 1, res ? &y : NULL, &y));
    qi_cuda_set_conv_kernel(gpu, "im2col");
    if (up) {
        must(gpu->ops->tensor(gpu, &u, QI_BF16, 3, us, &err), "u");
        TIME_MS(ms_old, { gpu->ops->upsample2x(gpu, &x, &u); gpu->ops->conv2d(gpu, &u, &w, &b, 1, &y); });
    } else {
        TIME_MS(ms_old, gpu->ops->conv2d_fused(gpu, &x, 0, &w, &b, 1, res ? &y : NULL, &y));
    }
    qi_cuda_set_conv_kernel(gpu, "auto");
    if (Co <= 4) { /* auto runs the direct kernel (unless QI_CUDA_CONV_DIRECT=0) */
        double ms_direct;
        TIME_MS(ms_direct, gpu->ops->conv2d_fused(gpu, &x, up, &w, &b, 1, res ? &y : NULL, &y));
        printf("  %-12s conv3x3 [%lld,%lld,%lld] -> %lld  auto (direct kernel) %7.3f ms\n", what, (long long)Ci,
               (long long)H, (long long)W, (long long)Co, ms_direct);
    }
    double flop = 2.0 * Co * Ci * 9 * Hc * Wc;
    int auto_implicit = up || Ci <= 128 || Co < 32;
    printf("  %-12s conv3x3 [%lld,%lld,%lld]%s -> %lld%s  implicit %7.3f ms %5.0f TFLOP/s | im2col%s %7.3f ms (%.2fx) auto: %s\n",
           what, (long long)Ci, (long long)H, (long long)W, up ? " up" : "", (long long)Co, res ? " +res" : "",
           ms_new, flop / (ms_new * 1e-3) / 1e12, up ? "+upsample" : "", ms_old, ms_old / ms_new,
           auto_implicit ? "implicit" : "im2col");
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

/* Where one 1024² transformer block's time goes: each op of a block timed
 * alone at the real shapes (image 4096 tokens, text 128, D 3072, MLP 12288),
 * summed per kind and × 60 blocks. */
static void bench_dit_block(void) {
    size_t mk = gpu->ops->mark(gpu);
    const int64_t Li = 4096, Lt = 128, Lj = Li + Lt, D = 3072, F = 12288, H = 24, Dh = 128;
    int64_t is[3] = {1, Li, D}, ts[3] = {1, Lt, D}, ifs[3] = {1, Li, F}, tfs[3] = {1, Lt, F}, ms2[2] = {1, 6 * D};
    int64_t js[4] = {1, Lj, H, Dh}, tab[2] = {Lj, Dh / 2}, mks[2] = {1, Lj};
    int64_t wdd[2] = {D, D}, wfd[2] = {F, D}, wdf[2] = {D, F}, bd[1] = {D}, bf[1] = {F}, nh[1] = {Dh};
    qi_tensor img = bc_dev_rand(gpu, 3, is, 1.0f), txt = bc_dev_rand(gpu, 3, ts, 1.0f), mod = bc_dev_rand(gpu, 2, ms2, 0.5f);
    qi_tensor ni, nt, qi_, qt, pi, pt, fi, ft, Q, K, V, O, ct, st, mask;
    qi_tensor *acts[] = {&ni, &qi_, &pi}, *tacts[] = {&nt, &qt, &pt};
    for (int i = 0; i < 3; i++) must(gpu->ops->tensor(gpu, acts[i], QI_BF16, 3, is, &err), "t");
    for (int i = 0; i < 3; i++) must(gpu->ops->tensor(gpu, tacts[i], QI_BF16, 3, ts, &err), "t");
    must(gpu->ops->tensor(gpu, &fi, QI_BF16, 3, ifs, &err), "t");
    must(gpu->ops->tensor(gpu, &ft, QI_BF16, 3, tfs, &err), "t");
    Q = bc_dev_rand(gpu, 4, js, 1.0f), K = bc_dev_rand(gpu, 4, js, 1.0f), V = bc_dev_rand(gpu, 4, js, 1.0f);
    must(gpu->ops->tensor(gpu, &O, QI_BF16, 4, js, &err), "t");
    must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, tab, &err), "t");
    must(gpu->ops->tensor(gpu, &st, QI_F32, 2, tab, &err), "t");
    float *h = malloc((size_t)(Lj * Dh / 2) * sizeof(float));
    for (int64_t i = 0; i < Lj * Dh / 2; i++) h[i] = bc_frand();
    must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
    must(gpu->ops->upload(gpu, &st, h, &err), "sin");
    free(h);
    int32_t *mh = malloc((size_t)Lj * sizeof(int32_t));
    for (int64_t i = 0; i < Lj; i++) mh[i] = i < 100 || i >= 128;
    must(gpu->ops->tensor(gpu, &mask, QI_I32, 2, mks, &err), "mask");
    must(gpu->ops->upload(gpu, &mask, mh, &err), "mask");
    free(mh);
    uint16_t *hk[8];
    qi_tensor wdd_ = bc_dev_weight(gpu, 2, wdd, 0.018f, &hk[0]), wfd_ = bc_dev_weight(gpu, 2, wfd, 0.018f, &hk[1]);
    qi_tensor wdf_ = bc_dev_weight(gpu, 2, wdf, 0.009f, &hk[2]), bd_ = bc_dev_weight(gpu, 1, bd, 0.1f, &hk[3]);
    qi_tensor bf_ = bc_dev_weight(gpu, 1, bf, 0.1f, &hk[4]), nw = bc_dev_weight(gpu, 1, nh, 1.0f, &hk[5]);
    qi_tensor sh = bc_mod_chunk(&mod, 1, D, 0), sc = bc_mod_chunk(&mod, 1, D, 1), gt = bc_mod_chunk(&mod, 1, D, 2);
    qi_tensor qi4 = qi_view4(&qi_, 1, Li, H, Dh), qt4 = qi_view4(&qt, 1, Lt, H, Dh);
    double t_ln_i, t_ln_t, t_lin_i, t_lin_t, t_up_i, t_up_t, t_dn_i, t_dn_t, t_nr_i, t_nr_t, t_att, t_ag_i, t_ag_t;
    TIME_MS(t_ln_i, gpu->ops->layer_norm_mod(gpu, &img, &sh, &sc, 6 * D, 1e-6f, &ni));
    TIME_MS(t_ln_t, gpu->ops->layer_norm_mod(gpu, &txt, &sh, &sc, 6 * D, 1e-6f, &nt));
    TIME_MS(t_lin_i, gpu->ops->linear(gpu, &ni, &wdd_, &bd_, QI_ACT_NONE, &qi_));
    TIME_MS(t_lin_t, gpu->ops->linear(gpu, &nt, &wdd_, &bd_, QI_ACT_NONE, &qt));
    TIME_MS(t_nr_i, gpu->ops->rms_norm_rope(gpu, &qi4, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &Q, Lt));
    TIME_MS(t_nr_t, gpu->ops->rms_norm_rope(gpu, &qt4, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &Q, 0));
    TIME_MS(t_att, gpu->ops->attention(gpu, &Q, &K, &V, &mask, 0, 0.0884f, &O));
    TIME_MS(t_ag_i, gpu->ops->add_gated(gpu, &img, &gt, 6 * D, &pi));
    TIME_MS(t_ag_t, gpu->ops->add_gated(gpu, &txt, &gt, 6 * D, &pt));
    double t_agln_i, t_agln_t;
    TIME_MS(t_agln_i, gpu->ops->add_gated_layer_norm_mod(gpu, &img, &gt, 6 * D, &pi, &sh, &sc, 6 * D, 1e-6f, &ni));
    TIME_MS(t_agln_t, gpu->ops->add_gated_layer_norm_mod(gpu, &txt, &gt, 6 * D, &pt, &sh, &sc, 6 * D, 1e-6f, &nt));
    TIME_MS(t_up_i, gpu->ops->linear(gpu, &ni, &wfd_, &bf_, QI_ACT_GELU_TANH, &fi));
    TIME_MS(t_up_t, gpu->ops->linear(gpu, &nt, &wfd_, &bf_, QI_ACT_GELU_TANH, &ft));
    TIME_MS(t_dn_i, gpu->ops->linear(gpu, &fi, &wdf_, &bd_, QI_ACT_NONE, &pi));
    TIME_MS(t_dn_t, gpu->ops->linear(gpu, &ft, &wdf_, &bd_, QI_ACT_NONE, &pt));
    double gemm_i = 4 * t_lin_i + t_up_i + t_dn_i, gemm_t = 4 * t_lin_t + t_up_t + t_dn_t;
    /* LN-mod, gated add + LN-mod (fused), gated add; 4 norm + rope */
    double mem = (t_ln_i + t_ln_t) + (t_agln_i + t_agln_t) + (t_ag_i + t_ag_t) + 2 * (t_nr_i + t_nr_t);
    double blk = gemm_i + gemm_t + t_att + mem;
    double fl_i = 2.0 * Li * D * D * 4 + 2.0 * 2 * Li * D * F, fl_t = fl_i * Lt / Li, fl_a = 4.0 * H * Lj * Lj * Dh;
    printf("DiT block at 1024²/txt128, each op timed alone (ms; × 60 for a call):\n");
    printf("  image linears  (q,k,v,out %.3f each; MLP up %.3f, down %.3f) %7.3f  %6.2f per call  %4.0f TFLOP/s\n",
           t_lin_i, t_up_i, t_dn_i, gemm_i, 60 * gemm_i, fl_i / (gemm_i * 1e-3) / 1e12);
    printf("  text linears   (q,k,v,out %.3f each; MLP up %.3f, down %.3f) %7.3f  %6.2f per call  %4.0f TFLOP/s\n",
           t_lin_t, t_up_t, t_dn_t, gemm_t, 60 * gemm_t, fl_t / (gemm_t * 1e-3) / 1e12);
    printf("  attention      (joint 4224, masked)                          %7.3f  %6.2f per call  %4.0f TFLOP/s\n", t_att,
           60 * t_att, fl_a / (t_att * 1e-3) / 1e12);
    printf("  memory-bound   (LN-mod %.3f+%.3f, gated add+LN-mod %.3f+%.3f, gated add %.3f+%.3f, 4 norm+rope %.3f+%.3f) %7.3f  %6.2f per call\n",
           t_ln_i, t_ln_t, t_agln_i, t_agln_t, t_ag_i, t_ag_t, t_nr_i, t_nr_t, mem, 60 * mem);
    printf("  block total                                                  %7.3f  %6.2f per call\n", blk, 60 * blk);
    for (int i = 0; i < 6; i++) free(hk[i]);
    qi_tensor *ws[6] = {&wdd_, &wfd_, &wdf_, &bd_, &bf_, &nw};
    for (int i = 0; i < 6; i++) gpu->ops->weight_free(gpu, ws[i]);
    gpu->ops->reset(gpu, mk);
}

static void bench_fused(void) {
    bench_dit_block();
    printf("fused-op timings (median of %d after %d warm-up, CUDA events):\n", REPS, WARM);
    /* every 3×3 conv shape of the 1024² decode (latent 128²) */
    bench_conv_fused(16, 128, 128, 384, 0, 0, "conv_in");
    bench_conv_fused(384, 128, 128, 384, 0, 1, "128² res");
    bench_conv_fused(384, 128, 128, 192, 1, 0, "up ->256²");
    bench_conv_fused(192, 256, 256, 384, 0, 0, "256² res0");
    bench_conv_fused(384, 256, 256, 384, 0, 1, "256² res");
    bench_conv_fused(384, 256, 256, 192, 1, 0, "up ->512²");
    bench_conv_fused(192, 512, 512, 192, 0, 1, "512² res");
    bench_conv_fused(192, 512, 512, 96, 1, 0, "up ->1024²");
    bench_conv_fused(96, 1024, 1024, 96, 0, 1, "1024² res");
    bench_conv_fused(96, 1024, 1024, 3, 0, 0, "conv_out");
    size_t mk = gpu->ops->mark(gpu);
    {
        int64_t xs[3] = {96, 1024, 1024}, cs[1] = {96};
        uint16_t *hg;
        qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), y, g = bc_dev_weight(gpu, 1, cs, 1.0f, &hg);
        must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, xs, &err), "y");
        double ms_f, ms_p, mb = 96.0 * 1024 * 1024 * 2 / 1e6;
        TIME_MS(ms_f, gpu->ops->channel_rms_norm_act(gpu, &x, &g, NULL, QI_ACT_SILU, &y));
        TIME_MS(ms_p, { gpu->ops->channel_rms_norm(gpu, &x, &g, NULL, &y); gpu->ops->activate(gpu, &y, QI_ACT_SILU, &y); });
        printf("  %-12s channel_rms_norm_act silu [96, 1024, 1024] %7.3f ms %5.0f GB/s | norm + activate %7.3f ms\n",
               "VAE", ms_f, 2 * mb / ms_f, ms_p);
        gpu->ops->weight_free(gpu, &g);
        free(hg);
    }
    gpu->ops->reset(gpu, mk);
    {
        int64_t xs[4] = {1, 4096, 24, 128}, ds[4] = {1, 4224, 24, 128}, ts[2] = {4224, 64}, wn[1] = {128};
        qi_tensor x = bc_dev_rand(gpu, 4, xs, 1.0f), d, ct, st;
        must(gpu->ops->tensor(gpu, &d, QI_BF16, 4, ds, &err), "d");
        must(gpu->ops->tensor(gpu, &ct, QI_F32, 2, ts, &err), "cos");
        must(gpu->ops->tensor(gpu, &st, QI_F32, 2, ts, &err), "sin");
        float *h = malloc(4224 * 64 * sizeof(float));
        for (int i = 0; i < 4224 * 64; i++) h[i] = bc_frand();
        must(gpu->ops->upload(gpu, &ct, h, &err), "cos");
        must(gpu->ops->upload(gpu, &st, h, &err), "sin");
        free(h);
        uint16_t *hw;
        qi_tensor nw = bc_dev_weight(gpu, 1, wn, 1.0f, &hw);
        qi_tensor x2 = qi_view2(&x, 4096 * 24, 128), d2 = qi_view2(&d, 4224 * 24, 128);
        double ms_f, ms_p, mb = 4096.0 * 3072 * 2 / 1e6;
        TIME_MS(ms_f, gpu->ops->rms_norm_rope(gpu, &x, &nw, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &d, 128));
        TIME_MS(ms_p, {
            gpu->ops->rms_norm(gpu, &x2, &nw, 1e-6f, &x2);
            gpu->ops->copy_rows(gpu, &x2, 0, &d2, 128 * 24, 4096 * 24);
            gpu->ops->rope(gpu, &d, &ct, &st, QI_ROPE_INTERLEAVED);
        });
        printf("  %-12s rms_norm_rope [1, 4096, 24, 128] -> joint @128 %7.3f ms %5.0f GB/s | rms_norm + copy_rows + rope %7.3f ms\n",
               "DiT", ms_f, 2 * mb / ms_f, ms_p);
        gpu->ops->weight_free(gpu, &nw);
        free(hw);
    }
    gpu->ops->reset(gpu, mk);
}

static void bench_conv1x1(int64_t Ci, int64_t H, int64_t W, int64_t Co) {
    size_t mk = gpu->ops->mark(gpu);
    int64_t xs[3] = {Ci, H, W}, ws[4] = {Co, Ci, 1, 1}, bs[1] = {Co}, ys[3] = {Co, H, W};
    uint16_t *hw, *hb;
    qi_tensor x = bc_dev_rand(gpu, 3, xs, 1.0f), w = bc_dev_weight(gpu, 4, ws, 0.02f, &hw), b = bc_dev_weight(gpu, 1, bs, 0.1f, &hb), y;
    must(gpu->ops->tensor(gpu, &y, QI_BF16, 3, ys, &err), "y");
    double ms;
    TIME_MS(ms, gpu->ops->conv2d(gpu, &x, &w, &b, 0, &y));
    printf("  %-16s conv2d 1x1 [%lld,%lld,%lld] -> %lld %8.3f ms  %6.1f TFLOP/s\n", "VAE", (long long)Ci,
           (long long)H, (long long)W, (long long)Co, ms, 2.0 * Co * Ci * H * W / (ms * 1e-3) / 1e12);
    gpu->ops->weight_free(gpu, &w);
    gpu->ops->weight_free(gpu, &b);
    free(hw);
    free(hb);
    gpu->ops->reset(gpu, mk);
}

static void bench(void) {
    printf("timings (median of %d after %d warm-up, CUDA events):\n", REPS, WARM);
    if (!only_attention) {
        bench_linear(4224, 3072, 3072, QI_ACT_NONE, "DiT q/k/v/out");
        bench_linear(4224, 3072, 12288, QI_ACT_GELU_TANH, "DiT MLP up");
        bench_linear(4224, 12288, 3072, QI_ACT_NONE, "DiT MLP down");
        bench_linear(8192, 8192, 8192, QI_ACT_NONE, "ceiling");
        bench_linear(167, 3584, 37888, QI_ACT_NONE, "TE gate+up");
    }
    for (int ki = 0; ki < n_kernels_128(); ki++)
        bench_attention(1, 4224, 24, 24, 128, 0, 1, "DiT 1024²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < N_FLASH_128; ki++)
        bench_attention(1, 4224, 24, 24, 128, 0, 0, "DiT 1024²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < N_FLASH_128; ki++)
        bench_attention(1, 1152, 24, 24, 128, 0, 1, "DiT 512²", kernels_128[ki]);
    for (int ki = 0; ki < n_kernels_128() && ki < N_FLASH_128; ki++)
        bench_attention(2, 4224, 24, 24, 128, 0, 1, "DiT 1024² CFG", kernels_128[ki]);
    bench_attention(1, 167, 28, 4, 128, 1, 0, "TE", default_kernel);
    bench_attention(1, 167, 28, 4, 128, 1, 0, "TE", "mma");
    bench_attention(1, 4096, 1, 1, 384, 0, 0, "VAE mid 512²", "auto");
    bench_attention(1, 16384, 1, 1, 384, 0, 0, "VAE mid 1024²", "auto");
    bench_vision_attention();
    if (only_attention) return;
    bench_memory_ops();
    bench_conv(384, 128, 128, 384);
    bench_conv(192, 512, 512, 192);
    bench_conv1x1(1728, 512, 512, 192); /* the same GEMM without im2col */
}

static void timings(void) { bench(); }
static void fused_timings(void) { bench_fused(); }

int main(void) {
    const char *b = getenv("QI_CUDA_BENCH"), *w = getenv("QI_TEST_WGMMA"), *only = getenv("QI_TEST_ONLY");
    if (b && strcmp(b, "0") == 0) {
        printf("timings skipped (QI_CUDA_BENCH=0)\n");
        return 0;
    }
    bc_rng_state = 1;
    if (qi_backend_cuda_create(0, (size_t)12 << 30, &gpu, &err) != QI_OK) {
        printf("no CUDA backend: %s\n", err.msg);
        return 1;
    }
    printf("CUDA kernels %s (device compute capability %d.%d, code sm_%d)\n", qi_cuda_kernel_family(gpu),
           qi_cuda_device_cc(gpu) / 10, qi_cuda_device_cc(gpu) % 10, qi_cuda_code_arch(gpu) / 10);
    /* the Hopper kernels' names would time the mma kernel on the generic path: leave them out */
    if ((w && strcmp(w, "0") == 0) || strcmp(qi_cuda_kernel_family(gpu), "hopper") != 0) {
        use_wgmma = 0;
        default_kernel = "mma";
        qi_cuda_set_attention_kernel(gpu, default_kernel);
    }
    only_attention = only && strcmp(only, "attention") == 0;
    if (!only || only_attention) RUN(timings);
    if (!only || strcmp(only, "fused") == 0) RUN(fused_timings);
    gpu->ops->destroy(gpu);
    TEST_END();
}

/* fp8_probe.cu — which cuBLASLt fp8 settings run on this GPU and driver.
 * The engine's fp8 linear (src/backend/cuda/cuda_fp8_gemm.cu) got
 * CUBLAS_STATUS_NOT_SUPPORTED from cublasLtMatmul on an H200 after the
 * heuristic had offered an algorithm; this tries one setting at a time. */
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

static int M = 4224, N = 3072, K = 3072; /* y[M, N] = x[M, K] w[N, K]^T */

static int run(const char *name, int scales, int gap, int fast_attr, int inplace, size_t ws_bytes, int prefs, int d_f32) {
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    void *a, *b, *c, *d, *ws;
    float *sc;
    cudaMalloc(&a, (size_t)N * K), cudaMalloc(&b, (size_t)M * K), cudaMalloc(&c, (size_t)M * N * 4);
    cudaMalloc(&d, (size_t)M * N * 4), cudaMalloc(&ws, 64 << 20), cudaMalloc((void **)&sc, 1024);
    cudaMemset(a, 0x30, (size_t)N * K), cudaMemset(b, 0x30, (size_t)M * K);
    float one[256];
    for (int i = 0; i < 256; i++) one[i] = 1;
    cudaMemcpy(sc, one, 1024, cudaMemcpyHostToDevice);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (scales) {
        const float *sa = sc, *sb = sc + gap;
        if (scales == 2) sb = NULL;
        if (scales == 3) sa = NULL;
        if (sa) cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa);
        if (sb) cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb);
    }
    if (fast_attr) {
        int8_t fast = 0;
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
    }
    cudaDataType_t dt = d_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, N, K);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, M, K);
    cublasLtMatrixLayoutCreate(&lc, d_f32 ? CUDA_R_16BF : dt, N, M, N);
    cublasLtMatrixLayoutCreate(&ld, dt, N, M, N);
    if (d_f32) { cublasLtMatrixLayoutDestroy(lc); cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, M, N); }
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    uint64_t w = ws_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &w, sizeof w);
    if (prefs) {
        uint32_t al = 256;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
    }
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, ld, pref, 8, res, &found);
    printf("%-28s heuristic %d found %d:", name, (int)hs, found);
    cudaStream_t st;
    cudaStreamCreate(&st);
    for (int i = 0; i < found; i++) {
        float alpha = 1, beta = 0;
        cublasStatus_t s = cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, inplace ? d : c, lc, d, ld,
                                          &res[i].algo, ws, ws_bytes, st);
        cudaError_t e = cudaStreamSynchronize(st);
        printf(" [%d: %d %s ws %zu]", i, (int)s, e == cudaSuccess ? "ok" : cudaGetErrorString(e), res[i].workspaceSize);
    }
    printf("\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1) sscanf(argv[1], "%d", &M);
    int v = 0; cudaRuntimeGetVersion(&v); printf("runtime %d, cublasLt %zu\n", v, cublasLtGetVersion());
    run("scales 4 bytes apart", 1, 1, 1, 1, 64 << 20, 1, 0);
    run("scales 16 bytes apart", 1, 4, 1, 1, 64 << 20, 1, 0);
    run("scales 256 bytes apart", 1, 64, 1, 1, 64 << 20, 1, 0);
    run("A scale only", 2, 64, 1, 1, 64 << 20, 1, 0);
    run("B scale only", 3, 64, 1, 1, 64 << 20, 1, 0);
    run("no scales", 0, 0, 1, 1, 64 << 20, 1, 0);
    run("scales 256 apart, no fast", 1, 64, 0, 1, 64 << 20, 1, 0);
    return 0;
}

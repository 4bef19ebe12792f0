/*
 * rmse.c — the quantisers of src/base/quant.c against llama.cpp's reference
 * quantisers, measured on the same inputs (dev/quant/RESULTS.md).
 *
 *     cmake --build build-cpu --target quant_rmse
 *     build-cpu/quant_rmse [LIBGGML_BASE.so] [quant_blocks.safetensors]
 *
 * The reference is called, never copied: libggml-base.so (any llama.cpp
 * build; RESULTS.md says which) is opened with dlopen and its public
 * ggml_quantize_chunk (what llama-quantize runs without an imatrix) writes
 * the blocks. Both outputs are dequantised by this engine's types.c (bit-exact
 * with ggml's dequantisers), so the comparison is of the bytes alone.
 * Without a library, only the fixture comparison runs: quant_blocks'
 * Q4_0…Q8_0 rows were written by gguf-py's quantisers (llama.cpp's reference
 * algorithms for those types); their inputs are not in the file, so the
 * F16 rows (the same inputs rounded to f16) stand in for them.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/quant.h"
#include "base/types.h"
#include "io/safetensors.h"

typedef size_t (*quantize_chunk_fn)(int type, const float *src, void *dst, int64_t start, int64_t nrows,
                                    int64_t n_per_row, const float *imatrix);

static const qi_dtype TYPES[] = {QI_Q8_0, QI_Q6_K, QI_Q5_K, QI_Q5_1, QI_Q5_0, QI_Q4_K,
                                 QI_Q4_1, QI_Q4_0, QI_Q3_K, QI_Q2_K};

/* Deterministic inputs: xorshift + Box-Muller. */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double uni(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2 * log(uni())) * cos(6.283185307179586 * uni()); }

static double rmse_of(qi_dtype t, const void *q, const float *x, int64_t n) {
    float *y = malloc(sizeof *y * n);
    qi_to_f32(y, q, t, (size_t)n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    free(y);
    return sqrt(s / n);
}

/* One data set: rows × cols values; prints one line per type. */
static void compare(const char *what, const float *x, int64_t rows, int64_t cols, quantize_chunk_fn ref) {
    printf("\n%s (%lld × %lld)\n| type | ours RMSE | llama.cpp RMSE | ours / llama.cpp |\n|---|---|---|---|\n",
           what, (long long)rows, (long long)cols);
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        qi_dtype t = TYPES[k];
        int64_t rb = qi_row_bytes(t, cols);
        if (rb < 0) continue;
        uint8_t *a = malloc((size_t)(rb * rows)), *b = malloc((size_t)(rb * rows));
        for (int64_t r = 0; r < rows; r++) qi_quantize(t, x + r * cols, a + r * rb, cols);
        double ours = rmse_of(t, a, x, rows * cols);
        if (ref) {
            ref(qi_type_traits(t)->ggml_type, x, b, 0, rows, cols, NULL);
            double theirs = rmse_of(t, b, x, rows * cols);
            printf("| %s | %.5g | %.5g | %.3f |\n", qi_dtype_name(t), ours, theirs, ours / theirs);
        } else {
            printf("| %s | %.5g | — | — |\n", qi_dtype_name(t), ours);
        }
        free(a), free(b);
    }
}

/* quant_blocks.safetensors: our RMSE on the F16 rows 0–7 beside the RMSE of
 * the fixture's own blocks (T.f32) on the same rows. */
static void fixture(const char *path) {
    qi_st_file *f;
    qi_error err;
    if (qi_st_open(path, &f, &err)) {
        printf("\n(fixture skipped: %s)\n", err.msg);
        return;
    }
    const qi_st_tensor *in = qi_st_file_find(f, "F16.f32");
    const float *x = in->data;
    const char *rows[8] = {"gauss1", "gauss0.02", "large", "zero", "subnormal", "negative", "positive", "spikes"};
    printf("\nquant_blocks.safetensors rows 0–7 (512 values each; fixture blocks by gguf-py for the 32-element "
           "types, simple numpy quantisers for K types)\n| type | row | ours RMSE | fixture RMSE |\n|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        qi_dtype t = TYPES[k];
        char name[32];
        snprintf(name, sizeof name, "%s.f32", qi_dtype_name(t));
        const qi_st_tensor *fx = qi_st_file_find(f, name);
        int64_t rb = qi_row_bytes(t, 512);
        uint8_t *a = malloc((size_t)rb);
        for (int r = 0; r < 8; r++) {
            if (r == 3) continue; /* all zero: both 0 */
            qi_quantize(t, x + 512 * r, a, 512);
            double ours = rmse_of(t, a, x + 512 * r, 512), theirs = 0;
            const float *y = (const float *)fx->data + 512 * r;
            for (int i = 0; i < 512; i++) theirs += ((double)y[i] - x[512 * r + i]) * ((double)y[i] - x[512 * r + i]);
            printf("| %s | %s | %.4g | %.4g |\n", qi_dtype_name(t), rows[r], ours, sqrt(theirs / 512));
        }
        free(a);
    }
    qi_st_close(f);
}

int main(int argc, char **argv) {
    quantize_chunk_fn ref = NULL;
    if (argc > 1 && strcmp(argv[1], "-")) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) return fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror()), 1;
        ref = (quantize_chunk_fn)dlsym(h, "ggml_quantize_chunk");
        if (!ref) return fprintf(stderr, "no ggml_quantize_chunk in %s\n", argv[1]), 1;
    }
    int64_t rows = 64, cols = 4096;
    float *x = malloc(sizeof *x * rows * cols);
    for (int64_t i = 0; i < rows * cols; i++) x[i] = (float)gauss();
    compare("gaussian σ = 1", x, rows, cols, ref);
    /* Laplace-distributed with 1 in 1000 values ×20: weights with outliers */
    for (int64_t i = 0; i < rows * cols; i++) {
        double u = uni() - 0.5;
        x[i] = (float)((u < 0 ? 1 : -1) * log(1 - 2 * fabs(u)) * 0.02 * (uni() < 0.001 ? 20 : 1));
    }
    compare("Laplace b = 0.02 with 0.1% outliers ×20", x, rows, cols, ref);
    free(x);
    if (argc > 2) fixture(argv[2]);
    return 0;
}

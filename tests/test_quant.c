/*
 * test_quant.c — claims about the quantisers (base/quant.c):
 *   - quantise → dequantise (types.c, the engine's ggml-exact dequantisers)
 *     stays within llama.cpp's reference RMSE on the same inputs, for every
 *     block type (bounds from dev/quant/RESULTS.md: llama.cpp's RMSE × 1.00 on
 *     gaussians, × 1.02 on the outlier set, on the inputs dev/quant/rmse.c draws, which this file draws the same
 *     way), so the packing agrees with the dequantisers' layouts;
 *   - on the rows of the fixture quant_blocks.safetensors, no worse than the
 *     fixture's own blocks (gguf-py's quantisers for the 32-element types);
 *   - special inputs: zeros give zeros, tiny and huge values stay finite,
 *     and a value the format holds exactly comes back exactly (Q8_0);
 *   - float8 e4m3fn: every finite byte round-trips, and random values round
 *     to the nearest code (ties to even, saturating at 448) as a brute-force
 *     search over all codes says;
 *   - F16 / BF16 / F32 rows equal the scalar converters; an unsupported type
 *     or a partial block is refused.
 */
#define _POSIX_C_SOURCE 200809L
#include "base/quant.h"
#include "base/types.h"
#include "io/safetensors.h"
#include "test.h"

/* The inputs of dev/quant/rmse.c: xorshift64 + Box-Muller, same seed. */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double uni(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}
static double gauss(void) { return sqrt(-2 * log(uni())) * cos(6.283185307179586 * uni()); }

static double rmse(qi_dtype t, const float *x, int64_t n) {
    uint8_t *q = malloc((size_t)qi_row_bytes(t, n));
    float *y = malloc(sizeof *y * (size_t)n);
    double s = 0;
    if (qi_quantize(t, x, q, n) != 0 || qi_to_f32(y, q, t, (size_t)n) != 0) s = INFINITY;
    for (int64_t i = 0; i < n && isfinite(s); i++) s += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    free(q);
    free(y);
    return sqrt(s / (double)n);
}

typedef struct bound {
    qi_dtype t;
    double gauss, laplace; /* llama.cpp's RMSE on the two data sets (dev/quant/RESULTS.md) */
} bound;

static const bound BOUNDS[] = {
    {QI_Q8_0, 0.0053568, 0.00029956}, {QI_Q6_K, 0.017731, 0.00085781}, {QI_Q5_K, 0.036192, 0.0015307},
    {QI_Q5_1, 0.037901, 0.0016219},   {QI_Q5_0, 0.042755, 0.0021357},  {QI_Q4_K, 0.071386, 0.0029067},
    {QI_Q4_1, 0.078304, 0.0034182},   {QI_Q4_0, 0.086021, 0.0038197},  {QI_Q3_K, 0.15114, 0.0054618},
    {QI_Q2_K, 0.29745, 0.010634},
};

static void block_types_match_llama_cpp_reference_rmse(void) {
    const int64_t rows = 64, cols = 4096, n = rows * cols;
    float *g = malloc(sizeof *g * n), *l = malloc(sizeof *l * n);
    rng = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) g[i] = (float)gauss();
    for (int64_t i = 0; i < n; i++) {
        double u = uni() - 0.5;
        l[i] = (float)((u < 0 ? 1 : -1) * log(1 - 2 * fabs(u)) * 0.02 * (uni() < 0.001 ? 20 : 1));
    }
    for (size_t k = 0; k < QI_ARRAY_LEN(BOUNDS); k++) {
        const bound *b = &BOUNDS[k];
        double eg = rmse(b->t, g, n), el = rmse(b->t, l, n);
        printf("  %-5s gaussian %.5g (llama.cpp %.5g, ×%.3f)  laplace %.5g (llama.cpp %.5g, ×%.3f)\n",
               qi_dtype_name(b->t), eg, b->gauss, eg / b->gauss, el, b->laplace, el / b->laplace);
        /* no type above llama.cpp on gaussians; Q4_K is 1.4% above on the outlier set
         * (RESULTS.md; without the K types' ±1 scale search: 0.5% and 3.5%, which fails) */
        CHECK(eg <= 1.00 * b->gauss, "%s gaussian RMSE %g", qi_dtype_name(b->t), eg);
        CHECK(el <= 1.02 * b->laplace, "%s laplace RMSE %g", qi_dtype_name(b->t), el);
    }
    free(g);
    free(l);
}

static void fixture_rows_no_worse_than_the_fixture_blocks(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/formats/quant_blocks.safetensors", QI_SHARED_DIR);
    qi_st_file *f;
    qi_error err;
    if (qi_st_open(path, &f, &err) != QI_OK) {
        printf("  (skipped: %s)\n", err.msg);
        return;
    }
    const qi_st_tensor *in = qi_st_file_find(f, "F16.f32"); /* the inputs, rounded to f16 */
    REQUIRE(in && in->nbytes == 12 * 512 * 4, "F16.f32");
    for (size_t k = 0; k < QI_ARRAY_LEN(BOUNDS); k++) {
        qi_dtype t = BOUNDS[k].t;
        char name[32];
        snprintf(name, sizeof name, "%s.f32", qi_dtype_name(t));
        const qi_st_tensor *fx = qi_st_file_find(f, name);
        REQUIRE(fx, "%s", name);
        double ours = 0, theirs = 0;
        for (int r = 0; r < 8; r++) {
            const float *x = (const float *)in->data + 512 * r, *y = (const float *)fx->data + 512 * r;
            double o = rmse(t, x, 512), s = 0;
            for (int i = 0; i < 512; i++) s += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            ours += o * o * 512, theirs += s;
            /* per row: within 2% (or 1e-9) of the fixture's error */
            CHECK(o <= 1.02 * sqrt(s / 512) + 1e-9, "%s row %d: %g vs fixture %g", name, r, o, sqrt(s / 512));
        }
        printf("  %-5s fixture rows 0-7: ours %.4g, fixture blocks %.4g\n", qi_dtype_name(t), sqrt(ours / 4096),
               sqrt(theirs / 4096));
    }
    qi_st_close(f);
}

static void special_inputs(void) {
    float x[256], y[256];
    uint8_t q[300];
    for (size_t k = 0; k < QI_ARRAY_LEN(BOUNDS); k++) {
        qi_dtype t = BOUNDS[k].t;
        int64_t n = qi_type_traits(t)->block_elems;
        for (int i = 0; i < n; i++) x[i] = 0;
        qi_quantize(t, x, q, n);
        qi_to_f32(y, q, t, (size_t)n);
        int zero = 1;
        for (int i = 0; i < n; i++) zero &= y[i] == 0;
        CHECK(zero, "%s: zeros", qi_dtype_name(t));
        double scales[] = {3e-7, 1e-3, 300, 2e4};
        for (size_t s = 0; s < QI_ARRAY_LEN(scales); s++) {
            for (int i = 0; i < n; i++) x[i] = (float)(scales[s] * sin(0.37 * i + 1));
            qi_quantize(t, x, q, n);
            qi_to_f32(y, q, t, (size_t)n);
            double e = 0, m = 0;
            for (int i = 0; i < n; i++) e += (y[i] - x[i]) * (y[i] - x[i]), m += x[i] * x[i];
            /* finite, and never worse than zeros (f16 scales underflow below ~1e-7) */
            CHECK(isfinite(e) && e <= m, "%s at scale %g: squared error %g, of zeros %g", qi_dtype_name(t), scales[s],
                  e, m);
        }
    }
    for (int i = 0; i < 32; i++) x[i] = 0.5f * (float)(i - 16); /* -63.5, -7.5 … 7.5 */
    x[0] = -63.5f;
    qi_quantize(QI_Q8_0, x, q, 32); /* d = ±0.5 represents every value */
    qi_to_f32(y, q, QI_Q8_0, 32);
    int exact = 1;
    for (int i = 0; i < 32; i++) exact &= x[i] == y[i];
    CHECK(exact, "Q8_0 exact grid");
}

/* Nearest e4m3fn code to v by search over all finite codes, ties to even. */
static uint8_t f8_brute(float v) {
    if (fabsf(v) >= 448.0f) return v < 0 ? 0xfe : 0x7e;
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c < 0x7f; c++) {
        double d = fabs(fabs(v) - qi_f8e4m3_to_f32((uint8_t)c));
        if (d < bd || (d == bd && !(c & 1))) bd = d, best = c;
    }
    return (uint8_t)(best | (signbit(v) ? 0x80 : 0));
}

static void f8_rounding(void) {
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f) continue;
        if (qi_f32_to_f8e4m3(qi_f8e4m3_to_f32((uint8_t)b)) != b && bad++ < 3) CHECK(0, "byte 0x%02x", b);
    }
    rng = 12345;
    for (int i = 0; i < 200000; i++) {
        float v = (float)(gauss() * pow(10, 4 * uni() - 3));
        if (i % 4 == 0) { /* exact midpoints between neighbours */
            int c = (int)(uni() * 125);
            v = (qi_f8e4m3_to_f32((uint8_t)c) + qi_f8e4m3_to_f32((uint8_t)(c + 1))) / 2;
        }
        uint8_t got = qi_f32_to_f8e4m3(v), want = f8_brute(v);
        if (got != want && bad++ < 3) CHECK(0, "%.9g: 0x%02x, nearest 0x%02x", v, got, want);
    }
    CHECK(qi_f32_to_f8e4m3(1e9f) == 0x7e && qi_f32_to_f8e4m3(-INFINITY) == 0xfe && qi_f32_to_f8e4m3(NAN) == 0x7f,
          "saturation and NaN");
    CHECK(bad == 0, "%d mismatches", bad);
    float src[4] = {1, -2, 0.25f, 448 * 3}, s = 3;
    uint8_t dst[4];
    qi_quantize_f8e4m3(src, dst, 4, s);
    CHECK(qi_f8e4m3_to_f32(dst[3]) * s == 448 * 3 && qi_f8e4m3_to_f32(dst[2]) * s - 0.25f < 0.01f, "scaled");
}

static void element_types_and_refusals(void) {
    float x[64];
    uint8_t q[256];
    rng = 7;
    for (int i = 0; i < 64; i++) x[i] = (float)(gauss() * 100);
    CHECK(qi_quantize(QI_F16, x, q, 64) == 0, "F16");
    int bad = 0;
    for (int i = 0; i < 64; i++) bad += (uint16_t)(q[2 * i] | q[2 * i + 1] << 8) != qi_f32_to_f16(x[i]);
    CHECK(qi_quantize(QI_BF16, x, q, 64) == 0, "BF16");
    for (int i = 0; i < 64; i++) bad += (uint16_t)(q[2 * i] | q[2 * i + 1] << 8) != qi_f32_to_bf16(x[i]);
    CHECK(qi_quantize(QI_F32, x, q, 64) == 0 && !memcmp(q, x, 256), "F32");
    CHECK(bad == 0, "%d element mismatches", bad);
    CHECK(qi_quantize(QI_I32, x, q, 4) == -1 && qi_quantize(QI_F8_E4M3, x, q, 4) == -1, "unsupported types refused");
    CHECK(qi_quantize(QI_Q8_0, x, q, 48) == -1 && qi_quantize(QI_Q4_K, x, q, 64) == -1, "partial blocks refused");
    CHECK(!qi_quant_supported(QI_U8) && qi_quant_supported(QI_Q3_K), "qi_quant_supported");
}

int main(void) {
    RUN(block_types_match_llama_cpp_reference_rmse);
    RUN(fixture_rows_no_worse_than_the_fixture_blocks);
    RUN(special_inputs);
    RUN(f8_rounding);
    RUN(element_types_and_refusals);
    TEST_END();
}

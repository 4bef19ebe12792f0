/*
 * quant.h — float32 → storage type: the quantisers of every GGUF block type
 * the engine reads, the element types (F32, F16, BF16) and float8 e4m3fn.
 * The inverse of the type traits' to_f32 (types.h), used by `qwen-image
 * convert`.
 *
 *     uint8_t row[qi_row_bytes(QI_Q4_K, 3072)];
 *     qi_quantize(QI_Q4_K, x, row, 3072);          // 12 blocks of 256
 *     qi_type_traits(QI_Q4_K)->to_f32(row, y, 3072);  // y ≈ x
 *
 * Written from the published block layouts (spec vae-and-formats.md §B.7.2,
 * the formulas of blocks.h), not from any other implementation. Each block
 * is fitted by a small search that minimises the squared error of the values
 * the dequantiser will give back (quant.c says how per type); the last step
 * of every type re-rounds each element against the scales exactly as they
 * are stored (f16 super-scales times integer sub-scales, float32, one
 * rounding per operation), so what the search measured is what to_f32 gives.
 * Quality against llama.cpp's reference quantisers: dev/quant/RESULTS.md.
 */
#ifndef QI_QUANT_H
#define QI_QUANT_H

#include "base/base.h"

/* 1 if qi_quantize writes type t: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. (float8 needs a scale: see below.) */
int qi_quant_supported(qi_dtype t);

/* Writes n values of src as type t at dst (qi_row_bytes(t, n) bytes; n a
 * whole number of blocks). 0, or -1 for an unsupported t or a partial block.
 * Non-finite inputs are not meaningful (the converter refuses them first). */
int qi_quantize(qi_dtype t, const float *src, void *dst, int64_t n);

/* float32 → float8 e4m3fn, round to nearest even, saturating at ±448 (as a
 * clamp before torch's cast); NaN → 0x7f. */
uint8_t qi_f32_to_f8e4m3(float f);

/* dst[i] = e4m3(src[i] / scale) for n values: the stored bytes of a scaled
 * fp8 tensor whose real values are f8 · scale. scale > 0. */
void qi_quantize_f8e4m3(const float *src, uint8_t *dst, int64_t n, float scale);

#endif

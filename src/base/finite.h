/*
 * finite.h — a fast scan for NaN / Inf in stored values of any type.
 *
 *     int64_t at = qi_find_nonfinite(data, QI_BF16, n);   // -1: all finite
 *
 * Element types are tested on their exponent bits as integers (no float
 * conversion), so the scan runs at memory speed; it is what lets every
 * loader check each weight as it loads (a corrupt download otherwise gives
 * an all-black image and exit 0). GGUF block types are dequantised a block
 * run at a time and the floats tested: one exact path for every layout
 * (a NaN/Inf can only come from the f16 scale fields, but this way no table
 * of field offsets per layout has to be kept in step with types.c).
 */
#ifndef QI_FINITE_H
#define QI_FINITE_H

#include "base/base.h"

/* Index of the first non-finite element of n elements of type t at data
 * (a whole number of blocks for block types); -1 if all are finite or t
 * holds no real numbers. *is_nan (may be NULL) says NaN (1) or ±Inf (0). */
int64_t qi_find_nonfinite(const void *data, qi_dtype t, int64_t n, int *is_nan);

/* Same for float32 host data (latents, embeddings, decoded images). */
int64_t qi_find_nonfinite_f32(const float *x, int64_t n, int *is_nan);

/* The error for a weight with a non-finite element: "<file>: tensor <name>
 * has a NaN at element 123 (of 16384, BF16): the file is corrupt; download
 * it again". Returns QI_OK when data is all finite. */
qi_status qi_check_weight_finite(const char *file, const char *name, const void *data, qi_dtype t,
                                 int64_t n, qi_error *err);

#endif

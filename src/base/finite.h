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
 *
 * A large weight's scan can be split into pieces scanned at once by a
 * parallel-for the caller lends (qi_parallel_for: the engine lends its work
 * pool, backend/work_pool.h, which src/base does not see); the answer is the
 * one-thread scan's, the first non-finite element of the whole tensor.
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

/* A parallel-for lent to the scans: run(ctx, fn, jobs, stride, n) calls
 * fn(jobs + i * stride) for every i in [0, n), on any threads in any order,
 * and returns when all are done (qi_work_pool_run's contract). threads: how
 * many jobs run at once, the caller's thread included; 1 or run NULL: the
 * scan stays on the calling thread. */
typedef struct qi_parallel_for {
    void (*run)(void *ctx, void (*fn)(void *job), void *jobs, size_t stride, int n);
    void *ctx;
    int threads;
} qi_parallel_for;

/* qi_find_nonfinite of a weight, split into pieces of `piece` elements
 * (rounded up to whole blocks; the last may be shorter) scanned through par
 * (NULL: on this thread). Same answer: the first piece with a non-finite
 * element gives the index and kind. A weight read from a file mapping is
 * scanned as qi_check_weight_finite reads it (QI_LOAD_PREAD). */
int64_t qi_find_nonfinite_pieces(const void *data, qi_dtype t, int64_t n, int *is_nan, const qi_parallel_for *par,
                                 int64_t piece);

/* The error for a weight with a non-finite element: "<file>: tensor <name>
 * has a NaN at element 123 (of 16384, BF16): the file is corrupt; download
 * it again". Returns QI_OK when data is all finite. par (may be NULL): a
 * weight of QI_SCAN_ALONE_BYTES or more is scanned in pieces through it
 * (about 1 MiB each, or one per thread down to 256 KiB); a smaller one on
 * this thread, where handing it out would cost more than it saves. */
#define QI_SCAN_ALONE_BYTES ((int64_t)4 << 20)
qi_status qi_check_weight_finite(const char *file, const char *name, const void *data, qi_dtype t, int64_t n,
                                 const qi_parallel_for *par, qi_error *err);

#endif

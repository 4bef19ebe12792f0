/*
 * types.h — the type traits: one table describing every storage type the
 * engine knows, element types and GGUF (ggml) block types alike.
 *
 *     const qi_dtype_traits *tt = qi_type_traits(QI_Q4_K);
 *     int64_t row = qi_row_bytes(QI_Q4_K, 3072);     // 12 blocks · 144 = 1728
 *     tt->to_f32(row_bytes, floats, 3072);           // one row, dequantised
 *
 * A block type stores its elements in blocks (32 or 256 elements sharing
 * scales), so it has no per-element size: every storage size goes through
 * qi_row_bytes / qi_shape_bytes, which refuse a row that is not a whole number
 * of blocks. Blocks always run along the last (innermost) dimension, which is
 * GGUF's ne[0].
 *
 * The dequantisation of each block type lives here, once, written from the
 * published block layouts (spec vae-and-formats.md §B.7.2): float32
 * arithmetic in the order the spec gives, each operation rounded (types.c is
 * compiled with -ffp-contract=off), so the result is bit-identical to ggml's
 * reference dequantisation.
 *
 * Declared in base.h and implemented in types.c as well: qi_dtype_size,
 * qi_dtype_name, qi_to_f32 and the f16 / bf16 / f8 scalar converters.
 */
#ifndef QI_TYPES_H
#define QI_TYPES_H

#include "base/base.h"

/* Converts n elements (a whole number of blocks) stored at src into float32
 * at dst. src needs no alignment. */
typedef void (*qi_to_f32_fn)(const void *src, float *dst, int64_t n);

typedef struct qi_dtype_traits {
    const char *name;       /* "Q4_K"; element types as safetensors spells them */
    int64_t block_elems;    /* elements per block; 1 for element types */
    size_t block_bytes;     /* bytes per block (= element size for element types) */
    int is_float;           /* 1: holds real numbers (float or quantised weight) */
    int ggml_type;          /* ggml / GGUF type id; -1 if GGUF has none */
    qi_to_f32_fn to_f32;    /* row -> float32; NULL for integer types */
    /* Block types: byte offsets in a block of its f16 scale fields (d, then
     * the min/offset field, or -1), every other field being small integers:
     * a block's values are all finite iff these are (finite.c scans only
     * them). -1, -1 for element types. */
    int f16_field[2];
} qi_dtype_traits;

/* The traits of t; NULL for a value outside the enum. */
const qi_dtype_traits *qi_type_traits(qi_dtype t);

/* 1 for the GGUF block types (block_elems > 1). */
int qi_dtype_is_block(qi_dtype t);
/* 1 for types holding real numbers (to_f32 != NULL). */
int qi_dtype_is_float(qi_dtype t);

/* Bytes of one row of n elements of type t; -1 if n is negative or not a
 * multiple of the type's block, if t is unknown, or on overflow. */
int64_t qi_row_bytes(qi_dtype t, int64_t n);

/* Bytes of a whole tensor of type t and shape[ndim] (outermost first; the
 * blocks run along shape[ndim - 1]; ndim 0 is a scalar). On failure the
 * one-line error names `what` (e.g. "model.gguf: tensor 'x'") and says why:
 * a negative dim, a last dim that is not a whole number of blocks, or a size
 * that overflows. */
qi_status qi_shape_bytes(qi_dtype t, int ndim, const int64_t *shape, size_t *out,
                         const char *what, qi_error *err);

/* The engine type of ggml type id `ggml_type`: 0 and *out set, or -1 when the
 * engine does not support that id. */
int qi_dtype_from_ggml(int ggml_type, qi_dtype *out);

/* The name of any ggml type id the spec lists ("IQ2_XXS", "Q8_K"), supported
 * or not; NULL for ids ggml does not define. For error messages. */
const char *qi_ggml_type_name(int ggml_type);

/* "F32, F16, BF16, Q4_0, ..., I64": the ggml types the engine reads. */
const char *qi_ggml_supported_list(void);

#endif

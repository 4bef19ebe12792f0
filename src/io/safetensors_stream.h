/*
 * safetensors_stream.h — writing a safetensors file as a stream, for files
 * too large to hold (qi_st_write in safetensors.h takes every tensor's data
 * at once). Tensors are declared first (name, element type, shape), the
 * header goes out, then each tensor's bytes in declaration order, in pieces.
 *
 *     qi_st_stream *s;
 *     qi_st_stream_new(&s, &err);
 *     qi_st_stream_add(s, "x.weight", QI_F8_E4M3, 2, (int64_t[]){3072, 3072}, &err);
 *     qi_st_stream_begin(s, "out.safetensors.tmp", &err);
 *     qi_st_stream_write(s, bytes, n, &err);   // any split, declaration order
 *     qi_st_stream_end(s, &err);
 *     qi_st_stream_free(s);
 *
 * Data offsets follow declaration order, contiguous; the header is padded
 * with spaces to a multiple of 8 and carries `__metadata__` {"format": "pt"}
 * plus any string pairs set. The caller makes the write atomic.
 */
#ifndef QI_SAFETENSORS_STREAM_H
#define QI_SAFETENSORS_STREAM_H

#include "base/base.h"

typedef struct qi_st_stream qi_st_stream;

qi_status qi_st_stream_new(qi_st_stream **out, qi_error *err);
void qi_st_stream_free(qi_st_stream *s);
/* A `__metadata__` string pair (key and value ASCII-safe JSON is escaped). */
qi_status qi_st_stream_meta(qi_st_stream *s, const char *key, const char *value, qi_error *err);
/* An element-type tensor (F32 … U8; not the GGUF block types), 0..8 dims. */
qi_status qi_st_stream_add(qi_st_stream *s, const char *name, qi_dtype dtype, int ndim, const int64_t *shape,
                           qi_error *err);
qi_status qi_st_stream_begin(qi_st_stream *s, const char *path, qi_error *err);
qi_status qi_st_stream_write(qi_st_stream *s, const void *data, size_t n, qi_error *err);
qi_status qi_st_stream_end(qi_st_stream *s, qi_error *err);

#endif

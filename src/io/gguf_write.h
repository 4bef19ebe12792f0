/*
 * gguf_write.h — writing GGUF v3 files as a stream: every key and tensor
 * declared first (names, types, shapes), then the header goes out and each
 * tensor's bytes follow in declaration order, in as many pieces as the
 * caller likes. Nothing but the header is held in memory, so a 20 GB
 * transformer is written with one tensor's worth of buffer.
 *
 *     qi_gguf_writer *w;
 *     qi_gguf_writer_new(&w, &err);
 *     qi_gguf_writer_set_string(w, "general.architecture", "qwen_image", &err);
 *     qi_gguf_writer_add_tensor(w, "img_in.weight", QI_Q8_0, 2, (int64_t[]){3072, 64}, &err);
 *     qi_gguf_writer_begin(w, "out.gguf.tmp", &err);     // header, padded
 *     qi_gguf_writer_write(w, rows, nbytes, &err);        // img_in's bytes, any split
 *     qi_gguf_writer_end(w, &err);                        // checks every byte came, closes
 *     qi_gguf_writer_free(w);
 *
 * Layout (spec vae-and-formats.md §B.7.1, what io/gguf.c reads): magic,
 * version 3, counts, key/values, tensor infos (dims innermost first, i.e.
 * the shape given here reversed; offsets from the data start), padding to
 * `general.alignment` (32, not written as a key), then each tensor's data
 * padded to 32. The caller makes the write atomic (temporary name, rename).
 */
#ifndef QI_GGUF_WRITE_H
#define QI_GGUF_WRITE_H

#include <stdint.h>

#include "base/base.h"

#define QI_GGUF_WRITE_ALIGN 32

typedef struct qi_gguf_writer qi_gguf_writer;

qi_status qi_gguf_writer_new(qi_gguf_writer **out, qi_error *err);
void qi_gguf_writer_free(qi_gguf_writer *w); /* closes an unfinished file (the caller removes it) */

/* Metadata, before begin; a key given twice is an error. */
qi_status qi_gguf_writer_set_string(qi_gguf_writer *w, const char *key, const char *value, qi_error *err);
qi_status qi_gguf_writer_set_u32(qi_gguf_writer *w, const char *key, uint32_t value, qi_error *err);
qi_status qi_gguf_writer_set_bool(qi_gguf_writer *w, const char *key, int value, qi_error *err);
qi_status qi_gguf_writer_set_f32(qi_gguf_writer *w, const char *key, float value, qi_error *err);
/* An array of n float32 values (llama.cpp's clip.vision.image_mean). */
qi_status qi_gguf_writer_set_f32_array(qi_gguf_writer *w, const char *key, const float *values, uint32_t n,
                                       qi_error *err);

/* A tensor of `dtype` (a type with a GGUF id) and shape[ndim] (outermost
 * first, 1..4 dims each >= 1, the last a whole number of blocks), before begin; a name
 * given twice is an error. */
qi_status qi_gguf_writer_add_tensor(qi_gguf_writer *w, const char *name, qi_dtype dtype, int ndim,
                                    const int64_t *shape, qi_error *err);

/* Creates (truncates) path and writes the header. */
qi_status qi_gguf_writer_begin(qi_gguf_writer *w, const char *path, qi_error *err);
/* The next n bytes of tensor data, in declaration order; more bytes than
 * the tensors hold is an error naming the tensor. */
qi_status qi_gguf_writer_write(qi_gguf_writer *w, const void *data, size_t n, qi_error *err);
/* The next n bytes of tensor data left unwritten: a hole that reads back as
 * zeros (sparse where the file system allows), so a full-size file of
 * zero weights costs its header only (tests of real shapes). */
qi_status qi_gguf_writer_skip(qi_gguf_writer *w, uint64_t n, qi_error *err);
/* Every tensor complete: flushes, syncs and closes the file. */
qi_status qi_gguf_writer_end(qi_gguf_writer *w, qi_error *err);

#endif

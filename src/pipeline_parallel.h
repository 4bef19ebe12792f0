/*
 * pipeline_parallel.h — one generation spread over several devices (internal:
 * the public switch is qi_open_options.devices in qwen_image.h).
 *
 * The engine (pipeline.c) keeps its single-device shape: rank 0's backend is
 * the engine's backend (text encoder, VAE, noise), and this group adds the
 * other ranks' backends and transformers. pipeline.c calls in at three
 * points: opening the devices, loading the transformers, and the denoising
 * loop, which here runs with one thread per rank (rank 0 on the caller's
 * thread, so progress callbacks arrive where they always do) over the
 * layout of parallel/ulysses.h: CFG-parallel when the request has true CFG
 * and the rank count is even, times Ulysses sequence parallel over the rest.
 */
#ifndef QI_PIPELINE_PARALLEL_H
#define QI_PIPELINE_PARALLEL_H

#include "backend/backend.h"
#include "model/dit.h"
#include "model/lora.h"
#include "qwen_image.h"

typedef struct qi_parallel qi_parallel;

/* opt->devices: "cpu,cpu", "cuda:0,cuda:1", … (one kind; see qwen_image.h).
 * With several devices: makes every rank's backend, checks that the rank
 * count divides the attention heads of transformer_dir/config.json, and
 * returns the group in *out and rank 0's backend in *be0 (the engine owns
 * and destroys that one). With one device: *out = NULL and *be0 is that
 * device's backend, as if it had been opt->device. */
qi_status qi_parallel_open(const qi_open_options *opt, const char *transformer_dir, qi_parallel **out,
                           qi_backend **be0, qi_error *err);
void qi_parallel_free(qi_parallel *p); /* NULL is fine; not rank 0's backend or transformer */

int qi_parallel_ranks(const qi_parallel *p);

/* Loads the transformer of src (with loras fused) on every rank at once,
 * one thread each, all reading the one source; rank 0's goes to *dit0 and
 * belongs to the caller. Replaces the ranks' transformers of an earlier call
 * (the caller frees its rank-0 one first). src must stay open while they live. */
qi_status qi_parallel_load_dits(qi_parallel *p, const qi_source *src, const qi_lora_set *loras,
                                qi_dit **dit0, qi_error *err);

/* One prompt batch's text embeddings on the host. */
typedef struct qi_text_batch {
    int batch, len, dim;
    const float *embeds;  /* [batch, len, dim] */
    const int32_t *mask;  /* [batch, len]: 1 real token, 0 padding */
    int all_valid;        /* every mask entry is 1: the transformer gets no mask */
} qi_text_batch;

/* The denoising loop on every rank. latents: [B, grid_h·grid_w, 64] packed,
 * the initial noise in, the final latents out. uncond: NULL without true
 * CFG. sigmas [steps + 1], timesteps [steps] as the scheduler made them.
 * req: steps, cfg and the progress callback (called on this thread, as
 * "denoise" i of steps, before each step). A cancel returns
 * QI_ERR_CANCELLED with every rank stopped at the same step. */
qi_status qi_parallel_denoise(qi_parallel *p, const qi_request *req, const qi_text_batch *cond,
                              const qi_text_batch *uncond, const float *sigmas, const float *timesteps,
                              int grid_h, int grid_w, float *latents, qi_error *err);

#endif

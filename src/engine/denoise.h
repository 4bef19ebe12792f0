/*
 * denoise.h — the one denoising loop, for one device and for several.
 */
#ifndef QI_ENGINE_DENOISE_H
#define QI_ENGINE_DENOISE_H

#include "engine/plan.h"
#include "engine/ranks.h"

/* One prompt batch's text embeddings on the host. */
typedef struct qi_text_embeds {
    int batch, len, dim;  /* batch 0: none (no true CFG) */
    float *embeds;        /* [batch, len, dim] */
    int32_t *mask;        /* [batch, len]: 1 real token, 0 padding */
    int all_valid;        /* every mask entry is 1: the transformer gets no mask */
} qi_text_embeds;

/* The denoising loop on every rank of r (each with its transformer loaded):
 * latents [B, img_tokens, packed_ch] host, the initial noise in, the final
 * latents out. text[0] the prompts', text[1] the negative prompts' (when
 * p->do_cfg). Progress ("denoise", i of steps, before each step) arrives on
 * this thread; a cancel returns QI_ERR_CANCELLED with every rank stopped at
 * the same step. */
qi_status qi_denoise(qi_ranks *r, const qi_plan *p, const qi_text_embeds text[2], float *latents, qi_error *err);

/* Frees every rank's kept step (calls and recording): before the
 * transformers they were made on are freed or replaced. */
void qi_denoise_release(qi_ranks *r);

#endif

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

/* After each step (rank 0, caller's thread): x0 [B, img_tokens, packed_ch]
 * host, the clean latents the step predicts (x - sigma_i * v). */
typedef void (*qi_denoise_step_fn)(void *user, int step, const float *x0);
typedef struct qi_denoise_hook {
    qi_denoise_step_fn fn;     /* x0 after each step (NULL: none) */
    qi_denoise_step_fn inputs; /* tests: before step `step` (0-based), the latents [B, img_tokens,
                                  packed_ch] the step's transformer call(s) read (NULL: none) */
    void *user;
} qi_denoise_hook;
/* qi_denoise with a per-step hook (NULL: none). Not called when the image
 * tokens are sharded over ranks (no rank holds them all between steps). */
qi_status qi_denoise_hooked(qi_ranks *r, const qi_plan *p, const qi_text_embeds text[2], float *latents,
                            const qi_denoise_hook *hook, qi_error *err);

/* Frees every rank's kept step (calls and recording): before the
 * transformers they were made on are freed or replaced. */
void qi_denoise_release(qi_ranks *r);

#endif

/*
 * step_previews.h — the request's step_latents callback run on a thread of
 * its own, beside the denoising loop (step_previews.c says why).
 */
#ifndef QI_STEP_PREVIEWS_H
#define QI_STEP_PREVIEWS_H

#include "qwen_image.h"

typedef struct qi_step_previews qi_step_previews;

/* For one generation: batch images of width × height whose packed latents
 * are [batch, (height/16)·(width/16), 64]; mean/std: the VAE's latent
 * statistics (16 each), read during the generation. NULL when memory runs
 * out (then previews are simply not made: they are optional). */
qi_step_previews *qi_step_previews_start(const qi_request *req, int steps, int batch, int width, int height,
                                         const float *mean, const float *std);

/* The x0 after step `step` (1..steps), packed: copied, then handed to the
 * thread; waits only while the thread is still busy with the step before. */
void qi_step_previews_push(qi_step_previews *sp, int step, const float *x0_packed);

/* Waits for the last preview to be delivered, then frees. NULL is fine. */
void qi_step_previews_finish(qi_step_previews *sp);

#endif

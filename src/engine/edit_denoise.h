/*
 * edit_denoise.h — Qwen-Image-Edit's denoising loop (QwenImageEditPlusPipeline,
 * 2509 and 2511) on one device: the condition latents ride along after the
 * output tokens in every transformer call, only the output rows are kept.
 *
 *     qi_edit_denoise_args a = {.grid_h = H/16, .grid_w = W/16, .cond = {...},
 *                               .cond_latents = packed, .ctx = embeds, .ctx_len = L, ...};
 *     qi_edit_denoise(dit, &a, latents, &err);   // latents: packed noise in, final out
 *
 * Per step i (reference edit/README.md E7, E10):
 *   v   = dit(cat(x, cond_latents), ctx, t[i])[:L]        (t[i] = timesteps[i] / 1000)
 *   CFG = neg + s·(v − neg), rescaled per token to ‖v‖     (when neg_ctx and cfg > 1)
 *   x  += (σ[i+1] − σ[i])·v                               (float32)
 * The transformer's config decides 2511's zero_cond_t. The condition
 * latents come from the VAE encoder: each VAE-size picture's posterior mean,
 * (mean − latents_mean)/latents_std, packed 2×2, pictures concatenated.
 * Batch 1 (the Edit pipeline refuses more).
 */
#ifndef QI_ENGINE_EDIT_DENOISE_H
#define QI_ENGINE_EDIT_DENOISE_H

#include "model/dit.h"

/* After each transformer call: call index (true CFG: cond then uncond per
 * step), its prediction [L, 64] on the host (the kept output rows). */
typedef void (*qi_edit_call_fn)(void *user, int call, const float *noise_pred);

typedef struct qi_edit_denoise_args {
    int grid_h, grid_w;         /* output patch grid (H/16, W/16): L = grid_h·grid_w */
    qi_dit_cond cond;           /* the pictures' patch grids (VAE size / 16) */
    const float *cond_latents;  /* [Σ cond tokens, in_channels] packed condition latents */
    const float *ctx;           /* [ctx_len, joint_dim] prompt embeddings */
    int ctx_len;
    const float *neg_ctx;       /* [neg_len, joint_dim] negative prompt embeddings, or NULL */
    int neg_len;
    float cfg;                  /* true CFG scale (used when neg_ctx and cfg > 1) */
    int steps;
    const float *sigmas;        /* [steps + 1] */
    const float *t;             /* [steps] the transformer's timestep: the scheduler's timesteps / 1000 */
    qi_edit_call_fn on_call;    /* NULL: none */
    void *user;
    /* Before step i (0 … steps − 1) and once after the last (i = steps);
     * nonzero cancels (QI_ERR_CANCELLED). NULL: none. */
    int (*progress)(void *user, int step, int steps);
    void *progress_user;
    /* After step i (1 … steps): the clean latents that step predicts, x0 = x − σ·v
     * [L, in_channels] packed, on the host (previews). NULL: none. */
    void (*on_step_x0)(void *user, int step, const float *x0);
    void *step_user;
    /* The step is recorded as a graph and replayed when there are at least
     * this many steps (0: QI_EDIT_GRAPH_MIN_STEPS; see edit_denoise.c). */
    int graph_min_steps;
    /* Non-NULL: set to the number of steps that ran by replaying the
     * recorded step (0 where nothing is recorded). */
    int *replayed_steps;
} qi_edit_denoise_args;

/* Recording the step costs about as much as 17 steps save by replaying it:
 * run D (bench/RESULTS.md) measured 17.3 ms to record one transformer call
 * and ~1 ms a step saved against eager launches, which already queue ahead
 * of a GPU-bound step. The recording is made per loop (the calls are), so
 * 4- and 8-step Lightning edits stay eager. */
#define QI_EDIT_GRAPH_MIN_STEPS 20

/* Whether qi_edit_denoise with these arguments records its step: the backend
 * records graphs, no weight streams, no per-call hook, enough steps, and
 * QI_CUDA_GRAPHS is not 0. */
int qi_edit_denoise_records(const qi_dit *dit, const qi_backend *be, const qi_edit_denoise_args *a);

/* latents [grid_h·grid_w, in_channels] host: the packed noise in, the final
 * latents out. Uses the dit's backend (its arena is reset on return). */
qi_status qi_edit_denoise(qi_dit *dit, qi_backend *be, const qi_edit_denoise_args *a, float *latents,
                          qi_error *err);

#endif

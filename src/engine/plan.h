/*
 * plan.h — one request turned into the numbers every stage reads: the
 * validated request, the sizes, the scheduler's sigmas and timesteps, the
 * batch layout (prompts × images per prompt), whether true CFG runs, and how
 * the denoising is laid out over the ranks. Pure host code (no engine, no
 * backend, no file), so every rule here is unit-testable.
 */
#ifndef QI_ENGINE_PLAN_H
#define QI_ENGINE_PLAN_H

#include "base/base.h"
#include "parallel/ulysses.h"
#include "sample/scheduler.h"

#define QI_LATENT_CHANNELS 16 /* VAE latent channels; packed tokens carry 4× (2×2 patches) */
#define QI_MAX_IMAGES 4096    /* images per request (prompts × batch) */

/* The picture's part of an img2img / inpaint run (stages_image.c fills it),
 * packed [*, img_tokens, 64] like the latents. */
typedef struct qi_plan_init {
    float *x0;    /* [1, L, 64] the picture's normalised latents (every image of the batch starts from it) */
    float *noise; /* [B, L, 64] the noise the start latents were made with (inpaint re-noises with it) */
    float *mask;  /* [1, L, 64] 1 = repaint, 0 = keep the picture; NULL: img2img */
} qi_plan_init;

typedef struct qi_plan {
    const qi_request *req;          /* the request as given (progress callback, seed, rng, ...) */
    const char *const *prompts;     /* n_prompts prompts: req->prompts, or &prompt_one */
    const char *prompt_one;         /* req->prompt when it is the only one */
    int n_prompts;
    int per_prompt;                 /* images per prompt (req->batch) */
    int batch;                      /* B = n_prompts · per_prompt, prompt-major ([p0, p0, p1, p1, …]) */
    int width, height;              /* pixels */
    int grid_h, grid_w;             /* transformer patch grid: pixels / 16 */
    int img_tokens;                 /* grid_h · grid_w */
    int lat_h, lat_w;               /* VAE latent size: pixels / 8 */
    int packed_ch;                  /* channels of a packed latent token (64) */
    int steps;                      /* steps run: steps_total − t_start */
    int steps_total;                /* the request's steps (the schedule is made for these) */
    int t_start;                    /* img2img: the first step of the schedule that runs; 0 otherwise */
    int has_init;                   /* an init image (img2img, or inpaint when init.mask is set) */
    int inpaint;                    /* a mask: blend the kept region back after every step */
    qi_plan_init init;              /* filled by qi_stage_init_latents; freed with the plan */
    int do_cfg;                     /* true CFG: cfg > 1 and a negative prompt */
    float cfg;                      /* the scale when do_cfg, else unused */
    float *sigmas;                  /* [steps + 1] flow-matching sigmas of the steps run, last 0 */
    float *timesteps;               /* [steps] the scheduler's timesteps (0..1000) of the steps run */
    float *t_all;                   /* [steps][batch] the transformer's timestep: timesteps / 1000 */
    qi_parallel_layout layout;      /* ranks: CFG-parallel branches × Ulysses size (1 × 1 on one device) */
} qi_plan;

/* diffusers' get_timesteps: the first step run of `steps` at `strength`,
 * int(max(steps − min(steps·strength, steps), 0)) in double precision. */
int qi_plan_t_start(int steps, double strength);

/* The request's argument checks alone (the messages name the CLI flags). */
qi_status qi_plan_check_request(const qi_request *r, qi_error *err);

/* Checks r and fills *p (zeroed first, so qi_plan_free is always safe). sched:
 * the scheduler configuration the request named (loaded by the caller).
 * ranks, heads, head_dim: the devices a generation runs on and the
 * transformer's attention shape (ignored for 1 rank); an image with fewer
 * tokens than a Ulysses group has ranks is refused here, before any work.
 * p keeps pointers into r: r must outlive it. */
qi_status qi_plan_make(const qi_request *r, const qi_scheduler_config *sched, int ranks, int heads, int head_dim,
                       qi_plan *p, qi_error *err);
void qi_plan_free(qi_plan *p);

#endif

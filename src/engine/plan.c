/*
 * plan.c — request → plan (see plan.h): validation with the CLI's flag names
 * in every message, sizes, schedule and layout. It reads no file and touches
 * no device.
 */
#define _POSIX_C_SOURCE 200809L /* strnlen */
#include "engine/plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qi_plan_t_start(int steps, double strength) {
    double init_steps = fmin((double)steps * strength, (double)steps);
    return (int)fmax((double)steps - init_steps, 0.0);
}

/* The img2img / inpaint fields (diffusers' argument names in the messages). */
static qi_status check_init_image(const qi_request *r, qi_error *err) {
    if (!r->init_image) {
        if (r->mask_image)
            return qi_fail(err, QI_ERR_ARG, "--mask needs --image: a mask says which part of a picture to repaint");
        return QI_OK;
    }
    if (!(r->strength > 0.0 && r->strength <= 1.0))
        return qi_fail(err, QI_ERR_ARG, "--strength %g: must be in (0, 1] (1 = repaint from pure noise, small "
                       "values stay close to the picture)", r->strength);
    if (r->init_width < 1 || r->init_height < 1 || r->init_width > 16384 || r->init_height > 16384)
        return qi_fail(err, QI_ERR_ARG, "--image: picture size %dx%d: each side must be 1..16384 pixels",
                       r->init_width, r->init_height);
    if (r->mask_image && (r->mask_width < 1 || r->mask_height < 1 || r->mask_width > 16384 || r->mask_height > 16384))
        return qi_fail(err, QI_ERR_ARG, "--mask: mask size %dx%d: each side must be 1..16384 pixels", r->mask_width,
                       r->mask_height);
    return QI_OK;
}

qi_status qi_plan_check_request(const qi_request *r, qi_error *err) {
    if (!r->prompt && !r->prompts) return qi_fail(err, QI_ERR_ARG, "no prompt given (-p TEXT)");
    if (r->prompts) {
        if (r->n_prompts < 1 || r->n_prompts > 4096)
            return qi_fail(err, QI_ERR_ARG, "n_prompts %d: must be between 1 and 4096", r->n_prompts);
        for (int i = 0; i < r->n_prompts; i++)
            if (!r->prompts[i]) return qi_fail(err, QI_ERR_ARG, "prompt %d is NULL", i);
    }
    int n = r->prompts ? r->n_prompts : 1;
    for (int i = 0; i <= n; i++) { /* the prompts, then the negative prompt */
        const char *t = i < n ? (r->prompts ? r->prompts[i] : r->prompt) : r->negative_prompt;
        if (!t || strnlen(t, QI_PROMPT_MAX_BYTES + 1) <= QI_PROMPT_MAX_BYTES) continue;
        char what[48];
        if (i == n) snprintf(what, sizeof what, "-n: the negative prompt");
        else if (n > 1) snprintf(what, sizeof what, "-p: prompt %d", i);
        else snprintf(what, sizeof what, "-p: the prompt");
        return qi_fail(err, QI_ERR_ARG, "%s is over %d bytes; a prompt may be at most 1 MiB (the model reads its "
                       "first 1024 tokens, a few KiB of text)", what, QI_PROMPT_MAX_BYTES);
    }
    if (r->width <= 0 || r->height <= 0 || r->width % 16 || r->height % 16)
        return qi_fail(err, QI_ERR_ARG,
                       "size %dx%d: width and height must be positive multiples of 16 (e.g. 1024x1024, "
                       "1328x1328, 1664x928)",
                       r->width, r->height);
    if (r->width > 8192 || r->height > 8192)
        return qi_fail(err, QI_ERR_ARG, "size %dx%d: at most 8192 pixels a side (a sanity bound: 8192x8192 "
                       "is already 262144 image tokens, 38x the model's native 1328x1328, far beyond what it was "
                       "trained on and what most memory holds)", r->width, r->height);
    if (r->steps < 1 || r->steps > 1000)
        return qi_fail(err, QI_ERR_ARG, "--steps %d: must be between 1 and 1000", r->steps);
    if (!(r->cfg >= 0.0f) || !isfinite(r->cfg))
        return qi_fail(err, QI_ERR_ARG, "--cfg %g: must be a finite number >= 0", (double)r->cfg);
    if (r->cfg > QI_CFG_MAX)
        return qi_fail(err, QI_ERR_ARG, "--cfg %g: at most %d (useful scales are 1..10)", (double)r->cfg, QI_CFG_MAX);
    if (r->batch < 1 || r->batch > 64)
        return qi_fail(err, QI_ERR_ARG, "--batch %d: must be between 1 and 64", r->batch);
    if ((r->prompts ? r->n_prompts : 1) * r->batch > QI_MAX_IMAGES)
        return qi_fail(err, QI_ERR_ARG, "%d prompts x batch %d: at most %d images per request",
                       r->prompts ? r->n_prompts : 1, r->batch, QI_MAX_IMAGES);
    if (r->max_sequence_length < 1 || r->max_sequence_length > 1024)
        return qi_fail(err, QI_ERR_ARG, "max_sequence_length %d: must be between 1 and 1024",
                       r->max_sequence_length);
    if (r->noise_dtype < 0 || r->noise_dtype > 2)
        return qi_fail(err, QI_ERR_ARG, "noise dtype: expected auto, f32 or bf16");
    if (r->rng != QI_RNG_CPU && r->rng != QI_RNG_CUDA)
        return qi_fail(err, QI_ERR_ARG, "rng: expected cpu or cuda");
    return check_init_image(r, err);
}

/* The ranks' layout: with true CFG and an even count, cond and uncond on
 * separate halves (CFG-parallel), each half a Ulysses group; otherwise one
 * Ulysses group of every rank. Every rank of a group needs an image token. */
static qi_status plan_layout(qi_plan *p, int ranks, int heads, int head_dim, qi_error *err) {
    p->layout = (qi_parallel_layout){.world = 1, .branches = 1, .sp_size = 1};
    if (ranks <= 1) return QI_OK;
    qi_status st = qi_parallel_layout_make(ranks, p->do_cfg && ranks % 2 == 0, heads, &p->layout, err);
    qi_ulysses u;
    if (st == QI_OK) st = qi_ulysses_plan(p->layout.sp_size, 0, p->img_tokens, heads, head_dim, &u, err);
    return st;
}

/* sigmas, timesteps and the transformer's per-image timesteps. */
static qi_status plan_schedule(qi_plan *p, const qi_scheduler_config *sched, qi_error *err) {
    p->sigmas = malloc(sizeof(float) * (size_t)(p->steps + 1));
    p->timesteps = malloc(sizeof(float) * (size_t)p->steps);
    p->t_all = malloc(sizeof(float) * (size_t)p->steps * (size_t)p->batch);
    if (!p->sigmas || !p->timesteps || !p->t_all) return qi_fail(err, QI_ERR_NOMEM, "out of memory");
    qi_status st = qi_scheduler_sigmas(sched, p->steps, p->img_tokens, p->sigmas, p->timesteps, err);
    if (st) qi_fail_ctx(err, st, "--scheduler %s", p->req->scheduler ? p->req->scheduler : "model");
    if (st == QI_OK && p->t_start > 0) { /* img2img: the schedule's tail runs (begin_index = t_start) */
        p->steps -= p->t_start;
        memmove(p->sigmas, p->sigmas + p->t_start, sizeof(float) * (size_t)(p->steps + 1));
        memmove(p->timesteps, p->timesteps + p->t_start, sizeof(float) * (size_t)p->steps);
    }
    for (int i = 0; st == QI_OK && i < p->steps; i++)
        for (int b = 0; b < p->batch; b++) p->t_all[(size_t)i * p->batch + b] = p->timesteps[i] / 1000.0f;
    return st;
}

qi_status qi_plan_make(const qi_request *r, const qi_scheduler_config *sched, int ranks, int heads, int head_dim,
                       qi_plan *p, qi_error *err) {
    memset(p, 0, sizeof *p);
    qi_status st = qi_plan_check_request(r, err);
    if (st) return st;
    p->req = r;
    p->prompt_one = r->prompt;
    p->prompts = r->prompts ? r->prompts : &p->prompt_one;
    p->n_prompts = r->prompts ? r->n_prompts : 1;
    p->per_prompt = r->batch;
    p->batch = p->n_prompts * r->batch;
    p->width = r->width;
    p->height = r->height;
    p->grid_h = r->height / 16;
    p->grid_w = r->width / 16;
    p->img_tokens = p->grid_h * p->grid_w;
    p->lat_h = r->height / 8;
    p->lat_w = r->width / 8;
    p->packed_ch = QI_LATENT_CHANNELS * 4;
    p->steps = p->steps_total = r->steps;
    p->has_init = r->init_image != NULL;
    p->inpaint = p->has_init && r->mask_image != NULL;
    p->t_start = p->has_init ? qi_plan_t_start(r->steps, r->strength) : 0;
    p->do_cfg = r->cfg > 1.0f && r->negative_prompt != NULL;
    p->cfg = r->cfg;
    if ((st = plan_layout(p, ranks, heads, head_dim, err))) return st;
    if ((st = plan_schedule(p, sched, err))) qi_plan_free(p);
    return st;
}

void qi_plan_free(qi_plan *p) {
    free(p->sigmas);
    free(p->timesteps);
    free(p->t_all);
    free(p->init.x0);
    free(p->init.noise);
    free(p->init.mask);
    memset(p, 0, sizeof *p);
}

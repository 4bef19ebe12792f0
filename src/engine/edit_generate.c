/*
 * edit_generate.c — qi_generate for Qwen-Image-Edit requests
 * (req->n_edit_images > 0): the pictures and prompts through engine/edit.h
 * (sizes, vision tower, prompt embeddings, condition latents), the plan at
 * the Edit output size, the noise, the Edit denoising loop
 * (engine/edit_denoise.h, one device) and the usual decode.
 *
 * The pipeline's two outside steps are the img2img ones: PIL's Lanczos
 * resize (qi_resize_lanczos_u8, the same resize the Edit pipeline's
 * image_processor.resize does) and the VAE encoder's posterior mean (the
 * normalisation (m − μ)/σ with a division is qi_edit_condition_latents').
 * Tests may replace both (qi_engine_set_edit_hooks).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/edit.h"
#include "engine/edit_denoise.h"
#include "engine/step_previews.h"
#include "engine/engine.h"
#include "io/image_prep.h"
#include "model/vae.h"
#include "sample/latents.h"

static qi_status builtin_lanczos(void *user, const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h,
                                 qi_error *err) {
    (void)user;
    return qi_resize_lanczos_u8(in, in_w, in_h, 3, out, out_w, out_h, err);
}

/* user: the engine (its VAE is acquired by edit_text). logvar is scratch. */
static qi_status builtin_vae_mean(void *user, const float *pixels, int w, int h, float *mean, qi_error *err) {
    qi_engine *e = user;
    qi_status st = qi_vae_load_encoder(e->vae, err);
    if (st) return st;
    size_t n = (size_t)qi_vae_z_dim(e->vae) * (size_t)(h / 8) * (size_t)(w / 8);
    float *logvar = malloc(n * sizeof *logvar);
    if (!logvar) return qi_fail(err, QI_ERR_NOMEM, "edit: VAE encoder logvar (%zu floats)", n);
    st = qi_stage_vae_encode(e, pixels, w, h, mean, logvar, err);
    free(logvar);
    return st;
}

void qi_engine_set_edit_hooks(qi_engine *e, struct qi_edit_hooks *h) { e->edit_hooks = h; }

static qi_status check_edit_request(qi_engine *e, const qi_request *req) {
    int n = req->n_edit_images;
    if (n < 1 || n > QI_DIT_MAX_COND || !req->edit_images || !req->edit_widths || !req->edit_heights)
        return qi_fail(&e->err, QI_ERR_ARG, "edit: %d pictures (1 … %d, each with its width and height)", n,
                       QI_DIT_MAX_COND);
    for (int k = 0; k < n; k++)
        if (!req->edit_images[k])
            return qi_fail(&e->err, QI_ERR_ARG, "edit: picture %d has no pixels", k + 1);
    if ((req->prompts && req->n_prompts != 1) || req->batch > 1)
        return qi_fail(&e->err, QI_ERR_ARG, "edit: one prompt and one image per request (the Edit pipeline "
                       "refuses batches)");
    if (e->ranks->n > 1)
        return qi_fail(&e->err, QI_ERR_UNSUPPORTED, "edit: runs on one device (not --devices) for now");
    if (req->width < 0 || req->height < 0)
        return qi_fail(&e->err, QI_ERR_ARG, "edit: width %d, height %d (0 = from the last picture)", req->width,
                       req->height);
    return QI_OK;
}

/* The vision tower: from the text encoder's weights, or from llama.cpp's
 * mmproj file beside a GGUF text encoder (io/model_files.h); kept while the
 * engine lives. */
static qi_status load_vision(qi_engine *e) {
    const qi_source *te = e->src[QI_COMPONENT_TEXT_ENCODER], *from;
    qi_source *opened = NULL;
    qi_status st = qi_model_files_vision_source(&e->files, te, qi_vision_present(te), &from, &opened, &e->err);
    if (st) return st;
    if (opened)
        qi_log_linef(e->log, e->log_user, "vision tower: %s %s", e->files.mmproj,
                     e->files.mmproj_found ? "(the mmproj found beside the text encoder; --mmproj picks another)"
                                           : "(--mmproj)");
    else if (e->files.mmproj[0] && !e->files.mmproj_found)
        qi_log_linef(e->log, e->log_user, "vision tower: the text encoder's own; --mmproj %s is not read",
                     e->files.mmproj);
    st = qi_vision_load(from, e->be, &e->vt, &e->err);
    if (st) {
        qi_source_close(opened);
        return st;
    }
    e->vision_src = opened;
    return QI_OK;
}

/* Pictures and prompts → the transformer's inputs; the vision tower loads
 * with the first Edit request (load_vision). */
static qi_status edit_text(qi_engine *e, const qi_request *req, qi_edit_inputs *in) {
    int wh[QI_DIT_MAX_COND][2];
    for (int k = 0; k < req->n_edit_images; k++) wh[k][0] = req->edit_widths[k], wh[k][1] = req->edit_heights[k];
    const char *prompt = req->prompts ? req->prompts[0] : req->prompt;
    qi_edit_request r = {.n = req->n_edit_images, .rgb = req->edit_images, .wh = (const int(*)[2])wh,
                         .prompt = prompt ? prompt : "",
                         .negative_prompt = req->negative_prompt && req->cfg > 1.0f ? req->negative_prompt : NULL,
                         .width = req->width, .height = req->height, .vl_area = req->edit_vl_area,
                         .vae_area = req->edit_vae_area};
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_TOKENIZER);
    if (!st) st = qi_engine_acquire(e, QI_COMPONENT_TEXT_ENCODER);
    if (!st) st = qi_engine_acquire(e, QI_COMPONENT_VAE);
    if (!st && !e->vt) st = load_vision(e);
    qi_edit_hooks builtin = {.resize_lanczos = builtin_lanczos, .vae_mean = builtin_vae_mean, .user = e};
    if (!st)
        st = qi_edit_prepare(&r, e->edit_hooks ? e->edit_hooks : &builtin, e->tok, e->te, e->vt,
                             qi_vae_latents_mean(e->vae), qi_vae_latents_std(e->vae), in, &e->err);
    qi_engine_release(e, QI_COMPONENT_VAE);
    qi_engine_release(e, QI_COMPONENT_TEXT_ENCODER);
    qi_engine_release(e, QI_COMPONENT_TOKENIZER);
    return st;
}

static int report_denoise(void *user, int step, int steps) { return qi_stage_report(user, "denoise", step, steps); }

/* The request's step_latents from the loop's packed x0 (as the text-to-image loop gives them),
 * delivered from the previews' own thread (step_previews.c). */
static void on_step_x0(void *user, int step, const float *x0) { qi_step_previews_push(user, step, x0); }

static qi_status edit_denoise(qi_engine *e, const qi_plan *p, const qi_edit_inputs *in, float *latents) {
    qi_status st = qi_engine_acquire(e, QI_COMPONENT_TRANSFORMER);
    qi_edit_denoise_args a = {.grid_h = in->grid_h, .grid_w = in->grid_w, .cond = in->cond,
                              .cond_latents = in->cond_latents, .ctx = in->embeds, .ctx_len = in->len,
                              .neg_ctx = p->do_cfg ? in->neg_embeds : NULL, .neg_len = in->neg_len, .cfg = p->cfg,
                              .steps = p->steps, .sigmas = p->sigmas, .t = p->t_all,
                              .progress = report_denoise, .progress_user = (void *)p};
    qi_step_previews *prev = NULL;
    if (!st && p->req->step_latents) {
        prev = qi_step_previews_start(p->req, p->steps, 1, p->width, p->height, qi_vae_latents_mean(e->vae),
                                      qi_vae_latents_std(e->vae));
        if (!prev) st = qi_fail(&e->err, QI_ERR_NOMEM, "edit: out of memory for the step latents");
        a.on_step_x0 = on_step_x0, a.step_user = prev;
    }
    int replayed = 0;
    a.replayed_steps = &replayed;
    if (!st) st = qi_edit_denoise(e->ranks->dit[0], e->be, &a, latents, &e->err);
    qi_step_previews_finish(prev);
    if (!st && replayed)
        qi_log_linef(e->log, e->log_user, "edit: %d of %d denoising steps replayed from a recorded graph", replayed,
                     p->steps);
    qi_engine_release(e, QI_COMPONENT_TRANSFORMER);
    return st;
}

qi_status qi_generate_edit(qi_engine *e, const qi_request *req, qi_image *out) {
    memset(out, 0, sizeof *out);
    memset(&e->last, 0, sizeof e->last);
    qi_status st = check_edit_request(e, req);
    if (st) return st;
    qi_edit_inputs in;
    memset(&in, 0, sizeof in);
    qi_plan plan;
    memset(&plan, 0, sizeof plan);
    float *latents = NULL;
    size_t mark = e->be->ops->mark(e->be);
    double t0 = qi_now_s();
    st = edit_text(e, req, &in);
    e->last.text_s = qi_now_s() - t0;
    /* the plan (schedule, noise, decode) at the Edit output size: mu from the output tokens only */
    qi_request rq = *req;
    rq.width = in.width, rq.height = in.height, rq.n_edit_images = 0;
    if (!st) st = qi_engine_plan(e, &rq, &plan);
    t0 = qi_now_s();
    if (!st) st = qi_stage_noise(e, &plan, &latents);
    if (!st) st = edit_denoise(e, &plan, &in, latents);
    e->last.denoise_s = qi_now_s() - t0;
    t0 = qi_now_s();
    if (!st) st = qi_engine_acquire(e, QI_COMPONENT_VAE);
    if (!st) st = qi_stage_decode(e, &plan, latents, out);
    qi_engine_release(e, QI_COMPONENT_VAE);
    e->last.vae_s = qi_now_s() - t0;
    if (st) qi_image_free(out);
    e->be->ops->reset(e->be, mark);
    qi_plan_free(&plan);
    qi_edit_inputs_free(&in);
    free(latents);
    return st;
}

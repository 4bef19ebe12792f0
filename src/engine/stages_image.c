/*
 * stages_image.c — the start latents of img2img and inpainting, as diffusers'
 * QwenImageImg2ImgPipeline / QwenImageInpaintPipeline make them (reference
 * edit/README.md E11–E14):
 *
 *   picture → PIL Lanczos resize to the output W×H → 2·(u8/255) − 1
 *           → VAE encoder → posterior sample mean + exp(½·logvar)·ε
 *           → (sample − mean_c)·(1/std_c)                          = x0
 *   start latents = σ·noise + (1 − σ)·x0, σ = the first sigma run (scale_noise)
 *
 * with ε and then the noise drawn from the one generator seeded with the
 * request's seed (ε for one picture, the noise for the whole batch). Inpaint
 * adds the mask: L (PIL's convert), Lanczos-resized, ≥ 0.5 → 1 = repaint, to
 * the latent grid by nearest neighbour, over the 16 channels, packed.
 *
 * One deliberate omission: the inpaint pipeline also encodes the masked
 * picture and samples its posterior (a third generator draw), but a
 * 16-channel transformer never reads the result and nothing is drawn after
 * it, so it is skipped; every output is the same.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "io/image_prep.h"
#include "sample/latents.h"
#include "sample/rng.h"

/* The generator's draws of an img2img run: ε [n_eps] then the noise
 * [n_noise], one stream (torch's CPU generator; the CUDA one on the device
 * where the backend draws it, else recomputed on the CPU). */
static qi_status draw_eps_and_noise(qi_engine *e, const qi_plan *p, int64_t n_eps, int64_t n_noise, float *eps,
                                    float *noise) {
    const qi_request *req = p->req;
    qi_dtype dt = req->noise_dtype == 1 ? QI_F32 : req->noise_dtype == 2 ? QI_BF16 : e->be->act_dtype;
    if (req->rng == QI_RNG_CUDA) {
        uint64_t offset = qi_philox_offset_increment(n_eps, QI_PHILOX_GRID_H200);
#ifdef QI_WITH_CUDA
        if (qi_backend_supports(e->be, QI_CAP_CUDA_RNG, 0)) {
            qi_status st = qi_randn_philox_cuda(req->seed, 0, n_eps, dt, eps, &e->err);
            return st ? st : qi_randn_philox_cuda(req->seed, offset, n_noise, dt, noise, &e->err);
        }
#endif
        qi_randn_philox_cpu(req->seed, 0, n_eps, QI_PHILOX_GRID_H200, dt, eps);
        qi_randn_philox_cpu(req->seed, offset, n_noise, QI_PHILOX_GRID_H200, dt, noise);
        return QI_OK;
    }
    qi_cpu_generator g;
    qi_cpu_generator_seed(&g, req->seed);
    qi_status st = qi_cpu_generator_randn(&g, dt, n_eps, eps, &e->err);
    return st ? st : qi_cpu_generator_randn(&g, dt, n_noise, noise, &e->err);
}

/* The picture at the output size, [3, H, W] in [-1, 1]. */
static qi_status picture_pixels(qi_engine *e, const qi_plan *p, float **pixels) {
    const qi_request *r = p->req;
    size_t n = (size_t)p->width * p->height;
    uint8_t *sized = malloc(3 * n);
    *pixels = malloc(sizeof(float) * 3 * n);
    qi_status st = QI_OK;
    if (!sized || !*pixels)
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the %dx%d picture", p->width, p->height);
    if (!st) st = qi_resize_lanczos_u8(r->init_image, r->init_width, r->init_height, 3, sized, p->width, p->height,
                                       &e->err);
    if (st) qi_fail_ctx(&e->err, st, "--image");
    else qi_u8_to_vae_pixels(sized, p->width, p->height, *pixels);
    free(sized);
    return st;
}

/* The mask at the latent grid, packed: [1, L, 64] in {0, 1}. */
static qi_status mask_latents(qi_engine *e, const qi_plan *p, float *packed) {
    const qi_request *r = p->req;
    size_t n_src = (size_t)r->mask_width * r->mask_height, n = (size_t)p->width * p->height;
    uint8_t *luma = malloc(n_src), *sized = malloc(n);
    float *cond = malloc(sizeof(float) * n);
    float *grid = malloc(sizeof(float) * QI_LATENT_CHANNELS * (size_t)p->lat_h * p->lat_w);
    qi_status st = QI_OK;
    if (!luma || !sized || !cond || !grid)
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the %dx%d mask", p->width, p->height);
    if (!st) {
        qi_rgb_to_luma_u8(r->mask_image, (int64_t)n_src, luma);
        st = qi_resize_lanczos_u8(luma, r->mask_width, r->mask_height, 1, sized, p->width, p->height, &e->err);
        if (st) qi_fail_ctx(&e->err, st, "--mask");
    }
    if (!st) {
        qi_mask_binarize(sized, (int64_t)n, cond);
        qi_mask_to_latent_grid(cond, p->width, p->height, 8, QI_LATENT_CHANNELS, grid);
        qi_latents_pack(grid, 1, p->lat_h, p->lat_w, packed);
    }
    free(luma);
    free(sized);
    free(cond);
    free(grid);
    return st;
}

qi_status qi_stage_vae_encode(qi_engine *e, const float *pixels, int width, int height, float *mean, float *logvar,
                              qi_error *err) {
    if (qi_vae_will_tile_encode(e->vae, height, width))
        qi_log_linef(e->log, e->log_user, "VAE encode of the %dx%d picture in tiles (a whole encode needs %.2f GiB "
                     "of activations; the arena holds %.2f GiB)", width, height,
                     (double)qi_vae_encode_untiled_bytes(e->vae, height, width) / (double)((size_t)1 << 30),
                     (double)e->be->arena_bytes / (double)((size_t)1 << 30));
    return qi_vae_encode(e->vae, pixels, height, width, mean, logvar, err);
}

/* The picture's normalised latents x0 [16, lat_h, lat_w] (unpacked) and the
 * noise [B, 16, lat_h, lat_w]: encode, then the generator's two draws. */
static qi_status encode_picture(qi_engine *e, const qi_plan *p, float *x0, float *noise) {
    int64_t hw = (int64_t)p->lat_h * p->lat_w, n = QI_LATENT_CHANNELS * hw;
    float *pixels = NULL, *logvar = malloc(sizeof(float) * (size_t)n), *eps = malloc(sizeof(float) * (size_t)n);
    qi_status st = logvar && eps ? QI_OK : qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the picture's latents");
    if (!st) st = qi_vae_load_encoder(e->vae, &e->err);
    if (!st) st = picture_pixels(e, p, &pixels);
    if (!st && qi_stage_report(p, "vae encoder", 0, 1)) st = qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
    if (!st) st = qi_stage_vae_encode(e, pixels, p->width, p->height, x0, logvar, &e->err);
    if (!st && qi_stage_report(p, "vae encoder", 1, 1)) st = qi_fail(&e->err, QI_ERR_CANCELLED, "generation cancelled");
    if (!st) st = draw_eps_and_noise(e, p, n, (int64_t)p->batch * n, eps, noise);
    if (!st) {
        qi_vae_sample_posterior(x0, logvar, eps, (size_t)n, x0);
        qi_vae_normalize_latents(e->vae, x0, hw, 0, x0);
    }
    free(pixels);
    free(logvar);
    free(eps);
    return st;
}

qi_status qi_stage_init_latents(qi_engine *e, qi_plan *p, float **latents) {
    int B = p->batch;
    int64_t n = (int64_t)QI_LATENT_CHANNELS * p->lat_h * p->lat_w;
    float *x0 = malloc(sizeof(float) * (size_t)n), *noise = malloc(sizeof(float) * (size_t)(B * n));
    float *start = malloc(sizeof(float) * (size_t)(B * n));
    *latents = malloc(sizeof(float) * (size_t)(B * n));
    p->init.x0 = malloc(sizeof(float) * (size_t)n);
    p->init.noise = malloc(sizeof(float) * (size_t)(B * n));
    if (p->inpaint) p->init.mask = malloc(sizeof(float) * (size_t)n);
    qi_status st = QI_OK;
    if (!x0 || !noise || !start || !*latents || !p->init.x0 || !p->init.noise || (p->inpaint && !p->init.mask))
        st = qi_fail(&e->err, QI_ERR_NOMEM, "out of memory for the start latents");
    if (!st) st = encode_picture(e, p, x0, noise);
    if (!st && p->inpaint) st = mask_latents(e, p, p->init.mask);
    if (!st) {
        /* scale_noise, on the unpacked tensors as the reference (elementwise:
         * packing after gives the same values) */
        float s = p->sigmas[0], keep = 1.0f - s;
        for (int b = 0; b < B; b++)
            for (int64_t i = 0; i < n; i++) start[b * n + i] = s * noise[b * n + i] + keep * x0[i];
        qi_latents_pack(start, B, p->lat_h, p->lat_w, *latents);
        qi_latents_pack(x0, 1, p->lat_h, p->lat_w, p->init.x0);
        qi_latents_pack(noise, B, p->lat_h, p->lat_w, p->init.noise);
    }
    free(x0);
    free(noise);
    free(start);
    return st;
}

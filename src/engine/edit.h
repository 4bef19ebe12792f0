/*
 * edit.h — Qwen-Image-Edit's inputs (QwenImageEditPlusPipeline, 2509 and
 * 2511): each reference picture's sizes, the prompt embeddings with the
 * pictures seen by the vision tower, and the condition latents. With
 * edit_denoise.h this is the whole Edit pipeline but for the two resamplings
 * and the VAE encoder, which the caller supplies (reference edit/README.md):
 *
 *   per picture k (source W×H):
 *     qi_edit_picture_sizes_of(W, H, vl_area, vae_area, &pp, &s[k])
 *     cond_rgb[k] = LANCZOS(picture → s.cond_w × s.cond_h)         (PIL, no crop)
 *     vae_rgb[k]  = LANCZOS(picture → s.vae_w × s.vae_h) → 2·(u8/255) − 1
 *     mean[k]     = VAE encoder posterior MEAN of vae_rgb[k]         (no draw)
 *   rows  = qi_edit_vision_rows(vt, n, cond_rgb, s)                  (processor resize inside)
 *   embeds = qi_edit_encode_text(te, tok, prompt, n, s, rows)        (negative: same rows)
 *   cond  = Σ qi_edit_condition_latents(mean[k], ...)                (pictures in order)
 *   out size = qi_edit_output_size(last picture, requested)
 *   qi_edit_denoise(dit, {grid = out/16, cond segments = s.lat/2, ...})
 */
#ifndef QI_ENGINE_EDIT_H
#define QI_ENGINE_EDIT_H

#include <stdint.h>

#include "model/dit.h"
#include "model/edit_prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "model/vision.h"

typedef struct qi_edit_picture_sizes {
    int src_w, src_h;
    int cond_w, cond_h;         /* calculate_dimensions(vl_area): the vision tower's picture */
    int proc_w, proc_h;         /* the processor's resize of that (multiples of 28) */
    int grid_h, grid_w;         /* patches (image_grid_thw's h, w) */
    int image_tokens;           /* <|image_pad|> tokens: grid_h·grid_w / 4 */
    int vae_w, vae_h;           /* calculate_dimensions(vae_area): the VAE's picture */
    int seg_h, seg_w;           /* its transformer segment: vae / 16 */
    int condition_tokens;       /* seg_h·seg_w */
} qi_edit_picture_sizes;

/* vl_area, vae_area: QI_EDIT_VL_AREA / QI_EDIT_VAE_AREA (147456, 1048576),
 * smaller in tests. QI_ERR_ARG for a source side below 1 or over 16384, a
 * size that rounds to 0, or an aspect ratio the processor refuses. */
qi_status qi_edit_picture_sizes_of(int src_w, int src_h, int64_t vl_area, int64_t vae_area, const qi_vl_preprocess *pp,
                                   qi_edit_picture_sizes *out, qi_error *err);

/* The output size: a requested side (> 0) rounded down to 16; unrequested,
 * calculate_dimensions(1024², ratio of the LAST picture) rounded down to 16
 * (the literal 1024², whatever vae_area is). */
void qi_edit_output_size(const qi_edit_picture_sizes *last, int req_w, int req_h, int *out_w, int *out_h);

/* The vision rows of n pictures, each given at its condition size
 * (cond_rgb[k]: [s[k].cond_h, s[k].cond_w, 3] u8): the processor's bicubic
 * resize, patches, tower. *rows [Σ image_tokens, out_hidden] malloc'ed. */
qi_status qi_edit_vision_rows(qi_vision *vt, int n, const uint8_t *const *cond_rgb, const qi_edit_picture_sizes *s,
                              float **rows, qi_error *err);

/* One prompt's Edit embeddings [*L, D] (malloc'ed) with the pictures' rows.
 * plain_positions: see edit_prompt.h (tests only). max_sequence_length 0:
 * every row, as QwenImageEditPlusPipeline (it checks the value, never cuts:
 * the pictures' tokens alone can pass 512). */
qi_status qi_edit_encode_text(qi_text_encoder *te, const qi_tokenizer *tok, const char *prompt, int n,
                              const qi_edit_picture_sizes *s, const float *rows, int plain_positions,
                              int max_sequence_length, float **embeds, int *L, qi_error *err);

/* One picture's VAE posterior mean [z, lat_h, lat_w] (z = 16) →
 * (mean − latents_mean) / latents_std (a division, float32; img2img
 * multiplies by the reciprocal instead), packed 2×2 → packed
 * [(lat_h/2)·(lat_w/2), 4z]. z must be 16 (Qwen-Image's VAE), lat_h and
 * lat_w even. */
qi_status qi_edit_condition_latents(const float *mean, int z, int lat_h, int lat_w, const float *latents_mean,
                                    const float *latents_std, float *packed, qi_error *err);

/* ---- all of it: pictures and prompts in, the transformer's inputs out ---- */

/* What the engine supplies that lives elsewhere: PIL's Lanczos resize of
 * 8-bit RGB (no crop) and the VAE encoder's posterior mean of pixels
 * [3, h, w] in [-1, 1] → mean [16, h/8, w/8]. */
typedef struct qi_edit_hooks {
    qi_status (*resize_lanczos)(void *user, const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h,
                                qi_error *err);
    qi_status (*vae_mean)(void *user, const float *pixels, int width, int height, float *mean, qi_error *err);
    void *user;
} qi_edit_hooks;

typedef struct qi_edit_request {
    int n;                       /* pictures, 1 … QI_EDIT_MAX_PICTURES */
    const uint8_t *const *rgb;   /* [n] RGB8 [h, w, 3] */
    const int (*wh)[2];          /* [n] width, height */
    const char *prompt;
    const char *negative_prompt; /* NULL: none (true CFG only with one) */
    int width, height;           /* requested output; 0: from the last picture */
    int64_t vl_area, vae_area;   /* 0: QI_EDIT_VL_AREA / QI_EDIT_VAE_AREA */
    int plain_positions;         /* tests only (edit_prompt.h) */
} qi_edit_request;

typedef struct qi_edit_inputs {
    int width, height;            /* the output size (multiples of 16) */
    int grid_h, grid_w;           /* its patch grid */
    qi_dit_cond cond;             /* the pictures' segments */
    float *cond_latents;          /* [Σ condition tokens, 64] */
    float *embeds, *neg_embeds;   /* [len, D], [neg_len, D] (neg NULL without a negative prompt) */
    int len, neg_len;
    qi_edit_picture_sizes sizes[QI_EDIT_MAX_PICTURES];
} qi_edit_inputs;

/* Sizes, both resizes, vision rows, prompt embeddings (the negative prompt
 * with the same pictures) and condition latents. vae gives the latent
 * normalisation (qi_vae_latents_mean / std). */
qi_status qi_edit_prepare(const qi_edit_request *r, const qi_edit_hooks *h, const qi_tokenizer *tok,
                          qi_text_encoder *te, qi_vision *vt, const float *latents_mean, const float *latents_std,
                          qi_edit_inputs *out, qi_error *err);
void qi_edit_inputs_free(qi_edit_inputs *in);

#endif

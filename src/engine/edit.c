/*
 * edit.c — Qwen-Image-Edit's picture sizes, vision rows, prompt embeddings
 * and condition latents (see edit.h). Reference read: diffusers
 * QwenImageEditPlusPipeline (calculate_dimensions, __call__'s resizing and
 * output size, _encode_vae_image), reference edit/README.md E1–E7.
 */
#include "engine/edit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/resize_torch.h"
#include "sample/latents.h"

qi_status qi_edit_picture_sizes_of(int src_w, int src_h, int64_t vl_area, int64_t vae_area, const qi_vl_preprocess *pp,
                                   qi_edit_picture_sizes *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    if (src_w < 1 || src_h < 1 || src_w > 16384 || src_h > 16384)
        return qi_fail(err, QI_ERR_ARG, "edit picture of %d×%d pixels: each side must be 1 … 16384", src_w, src_h);
    if (vl_area < 1024 || vae_area < 1024 || vl_area > ((int64_t)1 << 26) || vae_area > ((int64_t)1 << 26))
        return qi_fail(err, QI_ERR_ARG, "edit areas %lld / %lld pixels: each must be 1024 … 2^26",
                       (long long)vl_area, (long long)vae_area);
    out->src_w = src_w, out->src_h = src_h;
    qi_edit_calculate_dimensions(vl_area, src_w, src_h, &out->cond_w, &out->cond_h);
    qi_edit_calculate_dimensions(vae_area, src_w, src_h, &out->vae_w, &out->vae_h);
    if (out->cond_w < 32 || out->cond_h < 32 || out->vae_w < 32 || out->vae_h < 32)
        return qi_fail(err, QI_ERR_ARG,
                       "edit picture of %d×%d pixels: its aspect ratio makes a side round to 0 at the "
                       "condition (%d×%d) or VAE (%d×%d) size",
                       src_w, src_h, out->cond_w, out->cond_h, out->vae_w, out->vae_h);
    qi_status st = qi_vl_smart_resize(out->cond_h, out->cond_w, pp, &out->proc_h, &out->proc_w, err);
    if (st != QI_OK) return st;
    out->grid_h = out->proc_h / pp->patch_size;
    out->grid_w = out->proc_w / pp->patch_size;
    out->image_tokens = out->grid_h * out->grid_w / (pp->merge_size * pp->merge_size);
    out->seg_h = out->vae_h / 16;
    out->seg_w = out->vae_w / 16;
    out->condition_tokens = out->seg_h * out->seg_w;
    return QI_OK;
}

void qi_edit_output_size(const qi_edit_picture_sizes *last, int req_w, int req_h, int *out_w, int *out_h) {
    int w, h;
    qi_edit_calculate_dimensions(1024 * 1024, last->src_w, last->src_h, &w, &h);
    *out_w = (req_w > 0 ? req_w : w) / 16 * 16;
    *out_h = (req_h > 0 ? req_h : h) / 16 * 16;
}

/* One picture's rows: processor resize, patches, tower. */
static qi_status picture_rows(qi_vision *vt, const qi_vl_preprocess *pp, const uint8_t *cond_rgb,
                              const qi_edit_picture_sizes *s, float *rows, qi_error *err) {
    size_t P = (size_t)s->grid_h * s->grid_w;
    uint8_t *proc = malloc((size_t)s->proc_h * s->proc_w * 3);
    float *px = malloc(P * (size_t)qi_vision_get_config(vt)->patch_dim * sizeof(float));
    qi_status st = proc && px ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "edit: out of memory for a picture");
    if (st == QI_OK)
        st = qi_resize_bicubic_aa_u8(cond_rgb, s->cond_w, s->cond_h, 3, proc, s->proc_w, s->proc_h, err);
    if (st == QI_OK) {
        qi_vl_patchify(proc, s->proc_h, s->proc_w, pp, px);
        st = qi_vision_encode(vt, px, s->grid_h, s->grid_w, rows, err);
    }
    free(proc);
    free(px);
    return st;
}

qi_status qi_edit_vision_rows(qi_vision *vt, int n, const uint8_t *const *cond_rgb, const qi_edit_picture_sizes *s,
                              float **rows, qi_error *err) {
    *rows = NULL;
    if (!vt || n < 1 || n > QI_EDIT_MAX_PICTURES || !cond_rgb || !s)
        return qi_fail(err, QI_ERR_ARG, "edit: %d pictures (1 … %d) or no vision tower", n, QI_EDIT_MAX_PICTURES);
    const qi_vision_config *c = qi_vision_get_config(vt);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    pp.patch_size = c->patch_size;
    pp.merge_size = c->spatial_merge_size;
    pp.temporal_patch_size = c->temporal_patch_size;
    int64_t tokens = 0;
    for (int k = 0; k < n; k++) tokens += s[k].image_tokens;
    float *out = malloc((size_t)tokens * (size_t)c->out_hidden_size * sizeof(float));
    if (!out) return qi_fail(err, QI_ERR_NOMEM, "edit: out of memory for %lld picture tokens", (long long)tokens);
    qi_status st = QI_OK;
    int64_t row = 0;
    for (int k = 0; k < n && st == QI_OK; k++) {
        st = picture_rows(vt, &pp, cond_rgb[k], &s[k], out + row * c->out_hidden_size, err);
        if (st != QI_OK) st = qi_fail_ctx(err, st, "edit picture %d", k + 1);
        row += s[k].image_tokens;
    }
    if (st != QI_OK) {
        free(out);
        return st;
    }
    *rows = out;
    return QI_OK;
}

qi_status qi_edit_encode_text(qi_text_encoder *te, const qi_tokenizer *tok, const char *prompt, int n,
                              const qi_edit_picture_sizes *s, const float *rows, int plain_positions,
                              int max_sequence_length, float **embeds, int *L, qi_error *err) {
    *embeds = NULL;
    if (n < 1 || n > QI_EDIT_MAX_PICTURES) return qi_fail(err, QI_ERR_ARG, "edit: %d pictures", n);
    int grid[QI_EDIT_MAX_PICTURES][2];
    for (int k = 0; k < n; k++) grid[k][0] = s[k].grid_h, grid[k][1] = s[k].grid_w;
    qi_edit_tokens t;
    qi_status st = qi_edit_prompt_tokenize(tok, prompt, n, grid, 2, plain_positions, &t, err);
    if (st != QI_OK) return st;
    st = qi_text_encoder_encode_edit(te, t.ids, t.n, t.pos, rows, t.n_image_tokens, QI_EDIT_DROP_IDX,
                                     max_sequence_length, embeds, L, err);
    qi_edit_tokens_free(&t);
    return st;
}

qi_status qi_edit_condition_latents(const float *mean, int z, int lat_h, int lat_w, const float *latents_mean,
                                    const float *latents_std, float *packed, qi_error *err) {
    if (z != 16 || lat_h < 2 || lat_w < 2 || lat_h % 2 || lat_w % 2)
        return qi_fail(err, QI_ERR_ARG, "edit condition latents: %d channels of %d×%d; expected 16 of an even grid", z,
                       lat_w, lat_h);
    size_t plane = (size_t)lat_h * lat_w;
    float *norm = malloc((size_t)z * plane * sizeof(float));
    if (!norm) return qi_fail(err, QI_ERR_NOMEM, "edit condition latents: out of memory");
    for (int c = 0; c < z; c++)
        for (size_t i = 0; i < plane; i++)
            norm[c * plane + i] = (mean[c * plane + i] - latents_mean[c]) / latents_std[c];
    qi_latents_pack(norm, 1, lat_h, lat_w, packed);
    free(norm);
    return QI_OK;
}

void qi_edit_inputs_free(qi_edit_inputs *in) {
    if (!in) return;
    free(in->cond_latents);
    free(in->embeds);
    free(in->neg_embeds);
    memset(in, 0, sizeof *in);
}

/* Picture k at the VAE size → its packed condition latents at *dst. */
static qi_status picture_latents(const qi_edit_request *r, const qi_edit_hooks *h, int k, const qi_edit_picture_sizes *s,
                                 const float *lmean, const float *lstd, float *dst, qi_error *err) {
    size_t px = (size_t)s->vae_w * s->vae_h;
    uint8_t *rgb = malloc(px * 3);
    float *pixels = malloc(px * 3 * sizeof(float)), *mean = malloc(px / 64 * 16 * sizeof(float));
    qi_status st = rgb && pixels && mean ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "edit: out of memory (picture %d)", k + 1);
    if (st == QI_OK)
        st = h->resize_lanczos(h->user, r->rgb[k], r->wh[k][0], r->wh[k][1], rgb, s->vae_w, s->vae_h, err);
    if (st == QI_OK) {
        /* [h, w, 3] u8 → [3, h, w], 2·(u8/255) − 1 in float32 */
        for (int c = 0; c < 3; c++)
            for (size_t i = 0; i < px; i++) pixels[c * px + i] = 2.0f * ((float)rgb[i * 3 + c] / 255.0f) - 1.0f;
        st = h->vae_mean(h->user, pixels, s->vae_w, s->vae_h, mean, err);
    }
    if (st == QI_OK) st = qi_edit_condition_latents(mean, 16, s->vae_h / 8, s->vae_w / 8, lmean, lstd, dst, err);
    free(rgb);
    free(pixels);
    free(mean);
    return st;
}

/* Every picture at its condition size, then the vision rows. */
static qi_status pictures_rows(const qi_edit_request *r, const qi_edit_hooks *h, qi_vision *vt,
                               const qi_edit_picture_sizes *s, float **rows, qi_error *err) {
    uint8_t *cond[QI_EDIT_MAX_PICTURES] = {0};
    qi_status st = QI_OK;
    for (int k = 0; k < r->n && st == QI_OK; k++) {
        cond[k] = malloc((size_t)s[k].cond_w * s[k].cond_h * 3);
        st = cond[k] ? h->resize_lanczos(h->user, r->rgb[k], r->wh[k][0], r->wh[k][1], cond[k], s[k].cond_w,
                                         s[k].cond_h, err)
                     : qi_fail(err, QI_ERR_NOMEM, "edit: out of memory (picture %d)", k + 1);
    }
    if (st == QI_OK) st = qi_edit_vision_rows(vt, r->n, (const uint8_t *const *)cond, s, rows, err);
    for (int k = 0; k < r->n; k++) free(cond[k]);
    return st;
}

qi_status qi_edit_prepare(const qi_edit_request *r, const qi_edit_hooks *h, const qi_tokenizer *tok,
                          qi_text_encoder *te, qi_vision *vt, const float *latents_mean, const float *latents_std,
                          qi_edit_inputs *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    if (!r || !h || !h->resize_lanczos || !h->vae_mean || !tok || !te || !vt || !latents_mean || !latents_std ||
        !r->rgb || !r->wh || !r->prompt)
        return qi_fail(err, QI_ERR_ARG, "edit: missing picture, prompt, model part or hook");
    if (r->n < 1 || r->n > QI_EDIT_MAX_PICTURES || r->n > QI_DIT_MAX_COND)
        return qi_fail(err, QI_ERR_ARG, "edit: %d pictures; an Edit request takes 1 … %d", r->n, QI_DIT_MAX_COND);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    int64_t vl = r->vl_area ? r->vl_area : QI_EDIT_VL_AREA, vae = r->vae_area ? r->vae_area : QI_EDIT_VAE_AREA;
    int max_seq = 0; /* the Edit-Plus pipeline never cuts its prompt embeddings */
    qi_status st = QI_OK;
    int64_t tokens = 0;
    for (int k = 0; k < r->n && st == QI_OK; k++) {
        st = qi_edit_picture_sizes_of(r->wh[k][0], r->wh[k][1], vl, vae, &pp, &out->sizes[k], err);
        if (st != QI_OK) return qi_fail_ctx(err, st, "edit picture %d", k + 1);
        out->cond.hw[k][0] = out->sizes[k].seg_h;
        out->cond.hw[k][1] = out->sizes[k].seg_w;
        tokens += out->sizes[k].condition_tokens;
    }
    out->cond.n = r->n;
    qi_edit_output_size(&out->sizes[r->n - 1], r->width, r->height, &out->width, &out->height);
    if (out->width < 16 || out->height < 16)
        return qi_fail(err, QI_ERR_ARG, "edit: output %dx%d; each side must be at least 16", out->width, out->height);
    out->grid_h = out->height / 16;
    out->grid_w = out->width / 16;
    float *rows = NULL;
    st = pictures_rows(r, h, vt, out->sizes, &rows, err);
    if (st == QI_OK)
        st = qi_edit_encode_text(te, tok, r->prompt, r->n, out->sizes, rows, r->plain_positions, max_seq,
                                 &out->embeds, &out->len, err);
    if (st == QI_OK && r->negative_prompt)
        st = qi_edit_encode_text(te, tok, r->negative_prompt, r->n, out->sizes, rows, r->plain_positions, max_seq,
                                 &out->neg_embeds, &out->neg_len, err);
    free(rows);
    if (st == QI_OK && !(out->cond_latents = malloc((size_t)tokens * 64 * sizeof(float))))
        st = qi_fail(err, QI_ERR_NOMEM, "edit: out of memory (condition latents)");
    int64_t row = 0;
    for (int k = 0; k < r->n && st == QI_OK; k++) {
        st = picture_latents(r, h, k, &out->sizes[k], latents_mean, latents_std, out->cond_latents + row * 64, err);
        row += out->sizes[k].condition_tokens;
    }
    if (st != QI_OK) qi_edit_inputs_free(out);
    return st;
}

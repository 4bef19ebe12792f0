/*
 * bench_edit.c — `qwen-image bench --edit`: one Qwen-Image-Edit-2509 request
 * (one reference picture, CFG off, the Lightning schedule) timed end to end
 * and stage by stage on the engine bench.c opened.
 *
 * End to end: qi_generate with the picture, median over runs after warm-up
 * of the whole call and of its three parts as the engine records them
 * (qi_timings: prepare = both resizes, vision tower, text encoder, VAE
 * encoder; denoise; decode); per step = denoise / steps. Stages alone, with
 * the sizes the request used: the vision tower (processor resize, patches,
 * tower), the text encoder on the Edit prompt with the picture's rows, the
 * VAE encoder's posterior mean at the VAE size. Every timed call returns
 * host data, so each time ends with the device's work done.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "engine/edit.h"
#include "engine/edit_denoise.h"
#include "engine/engine.h"
#include "io/image_prep.h"
#include "model/vae.h"

/* The prompt both peers time (bench/diffusers_peer.py --edit uses the same words). */
#define EDIT_PROMPT                                                                                      \
    "Make the cat in Picture 1 wear a red knitted hat and a blue scarf, keep the sunlit library "     \
    "background, photorealistic, 35mm, shallow depth of field."

#define MAX_RUNS 64

typedef struct edit_bench {
    qi_engine *e;
    const qi_bench_edit_opts *o;
    uint8_t *picture;                /* [side, side, 3]: the reference picture */
    qi_edit_picture_sizes sizes;     /* what the request makes of it */
} edit_bench;


/* A smooth picture with edges (gradients and a disc): what a photo gives the
 * resizes, never a constant. */
static uint8_t *make_picture(int side) {
    uint8_t *p = malloc((size_t)side * side * 3);
    if (!p) return NULL;
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            uint8_t *px = p + ((size_t)y * side + x) * 3;
            int dx = x - side / 2, dy = y - side / 3, in = dx * dx + dy * dy < side * side / 16;
            px[0] = (uint8_t)(in ? 230 : x * 255 / side);
            px[1] = (uint8_t)(in ? 180 : y * 255 / side);
            px[2] = (uint8_t)((x ^ y) & 0x3f) + (in ? 20 : 120);
        }
    return p;
}

/* Median seconds of each part of runs Edit requests (after warmup), into
 * s[0..4): total, prepare, denoise, decode. */
static int time_requests(edit_bench *b, int steps, double s[4], qi_error *err) {
    const qi_bench_edit_opts *o = b->o;
    qi_request r = qi_request_default();
    const uint8_t *pics[1] = {b->picture};
    int w[1] = {o->picture_side}, h[1] = {o->picture_side};
    r.prompt = EDIT_PROMPT;
    r.steps = steps;
    r.cfg = 1.0f;
    r.scheduler = "lightning";
    r.n_edit_images = 1, r.edit_images = pics, r.edit_widths = w, r.edit_heights = h;
    r.edit_vl_area = (int)o->vl_area, r.edit_vae_area = (int)o->vae_area;
    r.width = r.height = o->output_side; /* 0: the pipeline's own (1024² for a square picture) */
    static double t[4][MAX_RUNS];
    for (int i = 0; i < o->warmup + o->runs; i++) {
        qi_image img;
        double t0 = qi_now_s();
        if (qi_generate(b->e, &r, &img)) {
            qi_fail(err, QI_ERR_BACKEND, "edit request: %s", qi_engine_error(b->e));
            return -1;
        }
        double dt = qi_now_s() - t0;
        qi_image_free(&img);
        if (i < o->warmup) continue;
        const qi_timings *tm = qi_engine_timings(b->e);
        double parts[4] = {dt, tm->text_s, tm->denoise_s, tm->vae_s};
        for (int k = 0; k < 4; k++) t[k][i - o->warmup] = parts[k];
    }
    for (int k = 0; k < 4; k++) s[k] = qi_bench_median(t[k], o->runs);
    return 0;
}

/* The picture at the condition size (the vision tower's input) and at the
 * VAE size as [3, h, w] floats in [-1, 1] (the encoder's), as edit.c makes them. */
static qi_status stage_inputs(edit_bench *b, uint8_t **cond, float **pixels, qi_error *err) {
    const qi_edit_picture_sizes *s = &b->sizes;
    size_t n = (size_t)s->vae_w * s->vae_h;
    uint8_t *vae_rgb = malloc(n * 3);
    *cond = malloc((size_t)s->cond_w * s->cond_h * 3);
    *pixels = malloc(n * 3 * sizeof(float));
    int side = b->o->picture_side;
    qi_status st = vae_rgb && *cond && *pixels ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "bench --edit: out of memory");
    if (!st) st = qi_resize_lanczos_u8(b->picture, side, side, 3, *cond, s->cond_w, s->cond_h, err);
    if (!st) st = qi_resize_lanczos_u8(b->picture, side, side, 3, vae_rgb, s->vae_w, s->vae_h, err);
    for (int c = 0; !st && c < 3; c++)
        for (size_t i = 0; i < n; i++) (*pixels)[c * n + i] = 2.0f * ((float)vae_rgb[i * 3 + c] / 255.0f) - 1.0f;
    free(vae_rgb);
    return st;
}

/* Median ms of the three prepare stages alone: ms[0] vision tower, ms[1]
 * text encoder (*tokens: its sequence before the template's drop), ms[2]
 * VAE encoder. The components are loaded: a request ran before. */
static int time_stages(edit_bench *b, double ms[3], int *tokens, qi_error *err) {
    const qi_bench_edit_opts *o = b->o;
    const qi_edit_picture_sizes *s = &b->sizes;
    qi_engine *e = b->e;
    uint8_t *cond = NULL;
    float *pixels = NULL, *rows = NULL, *mean = NULL, *logvar = NULL;
    size_t lat = (size_t)qi_vae_z_dim(e->vae) * (size_t)(s->vae_h / 8) * (size_t)(s->vae_w / 8);
    static double t[3][MAX_RUNS];
    int rc = -1;
    if (!e->vt || !e->te || !e->tok || !e->vae) {
        qi_fail(err, QI_ERR_ARG, "bench --edit: vision tower, text encoder or VAE not loaded (run a request first)");
        goto done;
    }
    mean = malloc(lat * sizeof(float));
    logvar = malloc(lat * sizeof(float));
    if (!mean || !logvar || stage_inputs(b, &cond, &pixels, err) || qi_vae_load_encoder(e->vae, err)) goto done;
    for (int i = 0; i < o->warmup + o->runs; i++) {
        float *emb = NULL;
        int L = 0;
        const uint8_t *conds[1] = {cond};
        double t0 = qi_now_s();
        qi_status st = qi_edit_vision_rows(e->vt, 1, conds, s, &rows, err);
        double t1 = qi_now_s();
        if (!st) st = qi_edit_encode_text(e->te, e->tok, EDIT_PROMPT, 1, s, rows, 0, 0, &emb, &L, err);
        double t2 = qi_now_s();
        if (!st) st = qi_vae_encode(e->vae, pixels, s->vae_h, s->vae_w, mean, logvar, err);
        double t3 = qi_now_s();
        free(emb);
        free(rows);
        rows = NULL;
        if (st) goto done;
        *tokens = L + QI_EDIT_DROP_IDX;
        if (i < o->warmup) continue;
        t[0][i - o->warmup] = t1 - t0, t[1][i - o->warmup] = t2 - t1, t[2][i - o->warmup] = t3 - t2;
    }
    for (int k = 0; k < 3; k++) ms[k] = qi_bench_median(t[k], o->runs) * 1e3;
    rc = 0;
done:
    free(cond);
    free(pixels);
    free(mean);
    free(logvar);
    return rc;
}

static int bench_edit(qi_engine *e, const qi_bench_edit_opts *o, qi_error *err) {
    if (o->runs < 1 || o->runs > MAX_RUNS || o->warmup < 0 || o->picture_side < 1) {
        qi_fail(err, QI_ERR_ARG, "bench --edit: runs 1 … %d, a picture side ≥ 1", MAX_RUNS);
        return -1;
    }
    edit_bench b = {.e = e, .o = o, .picture = make_picture(o->picture_side)};
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    int fail = 0;
    if (!b.picture) {
        qi_fail(err, QI_ERR_NOMEM, "bench --edit: out of memory");
        return -1;
    }
    if (qi_edit_picture_sizes_of(o->picture_side, o->picture_side, o->vl_area ? o->vl_area : QI_EDIT_VL_AREA,
                                 o->vae_area ? o->vae_area : QI_EDIT_VAE_AREA, &pp, &b.sizes, err)) {
        free(b.picture);
        return -1;
    }
    const qi_edit_picture_sizes *s = &b.sizes;
    int out_w, out_h;
    qi_edit_output_size(s, o->output_side, o->output_side, &out_w, &out_h);
    int out_tokens = (out_w / 16) * (out_h / 16);
    static const int steps[2] = {4, 8};
    double total[2] = {0, 0};

    for (int i = 0; i < 2 && !fail; i++) {
        double t[4]; /* s: total, prepare, denoise, decode */
        if (time_requests(&b, steps[i], t, err)) {
            fail = 1;
            break;
        }
        qi_bench_row(o->md, "| Edit-2509 end to end | %d² picture → %dx%d, %d steps, cfg 1 | %.3f s | picture + prompt → RGB8 "
            "in memory; prepare %.1f ms, denoise %.1f ms, decode %.1f ms |\n", o->picture_side, out_w, out_h, steps[i],
            t[0], t[1] * 1e3, t[2] * 1e3, t[3] * 1e3);
        qi_bench_row(o->md, "| Edit-2509 denoising step | %d + %d condition tokens, %d steps | %.1f ms | median denoise / steps "
            "(%s) |\n", out_tokens, s->condition_tokens, steps[i], t[2] * 1e3 / steps[i],
            qi_edit_denoise_records(e->ranks->dit[0], e->be, &(qi_edit_denoise_args){.steps = steps[i]})
                ? "step 0 eager, then the recorded step replayed" : "eager: one transformer call per step");
        total[i] = t[0];
    }
    if (!fail) /* what the peer can measure too: no stage split needed */
        qi_bench_row(o->md, "| Edit-2509 step, marginal | (8-step − 4-step) / 4 | %.1f ms | end to end difference |\n",
            (total[1] - total[0]) / 4 * 1e3);
    double ms[3];
    int tokens = 0;
    if (!fail && time_stages(&b, ms, &tokens, err)) fail = 1;
    if (!fail) {
        qi_bench_row(o->md, "| Edit vision tower | %dx%d → %dx%d, %d patches | %.1f ms | %d image tokens; processor resize "
            "included |\n", s->cond_w, s->cond_h, s->proc_w, s->proc_h, s->grid_h * s->grid_w, ms[0],
            s->image_tokens);
        qi_bench_row(o->md, "| Edit text encoder | %d tokens (%d image) | %.1f ms | %d rows kept after the template's %d |\n",
            tokens, s->image_tokens, ms[1], tokens - QI_EDIT_DROP_IDX, QI_EDIT_DROP_IDX);
        qi_bench_row(o->md, "| Edit VAE encode | %dx%d | %.1f ms | posterior mean |\n", s->vae_w, s->vae_h, ms[2]);
    }
    free(b.picture);
    return fail ? -1 : 0;
}

int qi_bench_edit(qi_engine *e, const qi_bench_edit_opts *o, char *err, size_t err_size) {
    qi_error e2 = {{0}};
    int rc = bench_edit(e, o, &e2);
    if (rc) snprintf(err, err_size, "%s", e2.msg);
    return rc;
}

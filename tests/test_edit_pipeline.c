/*
 * test_edit_pipeline.c — Qwen-Image-Edit end to end from the source PNGs of
 * shared/reference/edit (every Edit case): sizes, both resizes, vision rows,
 * prompt embeddings (with the negative prompt), condition latents, noise,
 * schedule, denoising, VAE decode, against the reference's stage tensors and
 * final image. The two parts that come from the img2img work — PIL's Lanczos
 * resize and the VAE encoder — are stand-ins here that hand back the
 * reference's own results for the sizes qi_edit_prepare asks (and fail on
 * any other size) in the engine_* claims; the real_* claims run the engine's
 * own resize and VAE encoder (the default: no hooks set).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "engine/edit.h"
#include "engine/edit_denoise.h"
#include "engine/engine.h"
#include "image_check.h"
#include "io/image.h"
#include "io/image_prep.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"
#include "model/vae.h"
#include "sample/latents.h"
#include "sample/scheduler.h"
#include "test.h"
#include "testdata.h"


static qi_backend *g_be;
/* `-b cuda`: the same run on the CUDA backend (bf16): stage bounds widen to
 * g_tol and the image is held to a mean difference of 3 levels (the issue's
 * CUDA bound) instead of a maximum of 2. */
static double g_tol = 1e-5;
static int g_cuda;

typedef struct stand_in {
    const qi_st_file *f;
    int n;
    const uint8_t *src[4]; /* the pictures as given to qi_edit_prepare */
    int resizes, encodes;
} stand_in;

/* The reference's resized picture k of that size: condition or VAE size. */
static qi_status fake_lanczos(void *user, const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h,
                              qi_error *err) {
    stand_in *s = user;
    (void)in_w, (void)in_h;
    for (int k = 0; k < s->n; k++) {
        if (in != s->src[k]) continue;
        const char *kinds[2] = {"vl_resized_u8", "vae_resized_u8"};
        for (int i = 0; i < 2; i++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.%s", k, kinds[i]);
            const qi_st_tensor *t = qi_st_file_find(s->f, name);
            if (t && t->shape[0] == out_h && t->shape[1] == out_w) {
                memcpy(out, t->data, t->nbytes);
                s->resizes++;
                return QI_OK;
            }
        }
        if (out_w * out_h > 0) { /* the VAE size: stored only as its posterior; any pixels will do */
            memset(out, 128, (size_t)out_w * out_h * 3);
            s->resizes++;
            return QI_OK;
        }
    }
    return qi_fail(err, QI_ERR_ARG, "stand-in resize: no reference picture for %dx%d", out_w, out_h);
}

/* The reference's posterior mean of the picture of that size. */
static qi_status fake_vae_mean(void *user, const float *pixels, int w, int h, float *mean, qi_error *err) {
    stand_in *s = user;
    (void)pixels;
    for (int k = 0; k < s->n; k++) {
        char name[64];
        snprintf(name, sizeof name, "cond%d.vae_mean", k);
        const qi_st_tensor *t = qi_st_file_find(s->f, name);
        if (t && t->shape[3] == h / 8 && t->shape[4] == w / 8 && s->encodes == k) {
            float *m = ref_floats(s->f, name, NULL);
            memcpy(mean, m, t->nbytes);
            free(m);
            s->encodes++;
            return QI_OK;
        }
    }
    return qi_fail(err, QI_ERR_ARG, "stand-in VAE encoder: picture %d has no %dx%d reference", s->encodes + 1, w, h);
}

typedef struct edit_case {
    const char *name, *model;
    int lora;
} edit_case;

static const edit_case cases[] = {
    {"edit2509_1img_lightning4_lora", "model-2509", 1},
    {"edit2509_2img_cfg4", "model-2509", 0},
    {"edit2511_2img_lightning4_lora", "model-2511", 1},
};

/* The parts of the model one case runs on. */
typedef struct parts {
    qi_source *te_src, *dit_src, *vae_src;
    qi_text_encoder *te;
    qi_vision *vt;
    qi_dit *dit;
    qi_vae *vae;
    qi_tokenizer *tok;
} parts;

static void parts_free(parts *p) {
    qi_dit_free(p->dit);
    qi_vae_free(p->vae);
    qi_vision_free(p->vt);
    qi_text_encoder_free(p->te);
    qi_tokenizer_free(p->tok);
    qi_source_close(p->te_src);
    qi_source_close(p->dit_src);
    qi_source_close(p->vae_src);
}

static qi_status parts_load(const edit_case *c, parts *p, qi_error *err) {
    memset(p, 0, sizeof *p);
    char dir[1024];
    qi_lora_set *loras = NULL;
    qi_status st = qi_tokenizer_load(QI_TEST_DATA "/tiny-model/tokenizer", &p->tok, err);
    snprintf(dir, sizeof dir, "%s/%s/text_encoder", QI_REF_EDIT, c->model);
    if (!st) st = qi_source_open_folder(dir, QI_COMPONENT_TEXT_ENCODER, &p->te_src, err);
    if (!st) st = qi_text_encoder_load(p->te_src, g_be, &p->te, err);
    if (!st) st = qi_vision_load(p->te_src, g_be, &p->vt, err);
    snprintf(dir, sizeof dir, "%s/%s/transformer", QI_REF_EDIT, c->model);
    if (!st) st = qi_source_open_folder(dir, QI_COMPONENT_TRANSFORMER, &p->dit_src, err);
    if (!st && c->lora) st = qi_lora_set_add(&loras, QI_TEST_DATA "/cases/lora.safetensors", 1.0f, err);
    if (!st) st = qi_dit_load(p->dit_src, g_be, loras, &p->dit, err);
    qi_lora_set_free(loras);
    if (!st) st = qi_source_open_folder(QI_TEST_DATA "/tiny-model/vae", QI_COMPONENT_VAE, &p->vae_src, err);
    if (!st) st = qi_vae_load(p->vae_src, g_be, &p->vae, err);
    return st;
}

/* rel L2 of n floats against reference tensor `name` (-1: absent or another size). */
static double rel_to(const qi_st_file *f, const char *name, const float *got, int64_t n) {
    int64_t m = 0;
    float *ref = ref_floats(f, name, &m);
    double r = ref && m == n ? qi_rel_l2(got, ref, (size_t)n) : -1;
    free(ref);
    return r;
}

/* Schedule, noise, loop, decode; compares as it goes. */
static void denoise_and_decode(const edit_case *c, const cJSON *j, const qi_st_file *f, parts *p,
                               const qi_edit_inputs *in) {
    qi_error err = {{0}};
    int steps = cJSON_GetObjectItemCaseSensitive(j, "steps")->valueint, L = in->grid_h * in->grid_w;
    char *sched_text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "scheduler"));
    qi_scheduler_config sc;
    float *sig = malloc((size_t)(steps + 1) * sizeof(float)), *ts = malloc((size_t)steps * sizeof(float));
    float *lat = malloc((size_t)L * 64 * sizeof(float));
    REQUIRE(qi_scheduler_config_parse(sched_text, "case.json", &sc, &err) == QI_OK &&
                qi_scheduler_sigmas(&sc, steps, L, sig, ts, &err) == QI_OK,
            "%s", err.msg);
    free(sched_text);
    CHECK(rel_to(f, "sigmas", sig, steps + 1) == 0, "%s: sigmas (mu from the output tokens only)", c->name);
    for (int i = 0; i < steps; i++) ts[i] /= 1000.0f;
    uint64_t seed = (uint64_t)cJSON_GetObjectItemCaseSensitive(j, "seed")->valuedouble;
    REQUIRE(qi_initial_noise(seed, QI_RNG_CPU, QI_F32, 1, in->height, in->width, lat, &err) == QI_OK, "%s", err.msg);
    CHECK(rel_to(f, "call0.noisy_latents", lat, (int64_t)L * 64) == 0, "%s: the noise is the generator's only draw",
          c->name);
    float cfg = (float)cJSON_GetObjectItemCaseSensitive(j, "cfg")->valuedouble;
    qi_edit_denoise_args a = {.grid_h = in->grid_h, .grid_w = in->grid_w, .cond = in->cond,
                              .cond_latents = in->cond_latents, .ctx = in->embeds, .ctx_len = in->len,
                              .neg_ctx = in->neg_embeds, .neg_len = in->neg_len, .cfg = cfg, .steps = steps,
                              .sigmas = sig, .t = ts};
    CHECK(qi_edit_denoise(p->dit, g_be, &a, lat, &err) == QI_OK, "%s", err.msg);
    double rel = rel_to(f, "final_latents", lat, (int64_t)L * 64);
    int64_t lh = in->height / 8, lw = in->width / 8, px = (int64_t)in->height * in->width;
    float *vae_in = malloc((size_t)(16 * lh * lw) * sizeof(float)), *rgb = malloc((size_t)(3 * px) * sizeof(float));
    uint8_t *u8 = malloc((size_t)(3 * px));
    qi_latents_to_vae_in(lat, 1, in->height, in->width, qi_vae_latents_mean(p->vae), qi_vae_latents_std(p->vae), vae_in);
    CHECK(qi_vae_decode(p->vae, vae_in, (int)lh, (int)lw, rgb, &err) == QI_OK, "%s", err.msg);
    qi_rgb_to_u8(rgb, in->height, in->width, u8);
    double mean;
    int worst = ref_image_diff(f, u8, (size_t)(3 * px), &mean);
    if (worst < 0) worst = 999, mean = 999;
    printf("     %s: %dx%d, final latents rel L2 %.3g, image max diff %d levels, mean %.3f\n", c->name, in->width,
           in->height, rel, worst, mean);
    CHECK(rel >= 0 && rel <= 10 * g_tol, "%s: final latents rel L2 %g", c->name, rel);
    CHECK(g_cuda ? mean <= 3 : worst <= 2, "%s: image differs by %d levels (mean %.3f)", c->name, worst, mean);
    free(sig), free(ts), free(lat), free(vae_in), free(rgb), free(u8);
}

static void run_case(const edit_case *c) {
    char path[1024];
    qi_error err = {{0}};
    cJSON *j = ref_edit_json(c->name);
    REQUIRE(j);
    qi_st_file *f = ref_edit_tensors(c->name);
    parts p;
    qi_status st = parts_load(c, &p, &err);
    CHECK(st == QI_OK, "%s: %s", c->name, err.msg);
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(j, "images");
    stand_in s = {.f = f, .n = cJSON_GetArraySize(images)};
    uint8_t *rgb[4] = {0};
    int wh[4][2];
    for (int k = 0; k < s.n && k < 4 && st == QI_OK; k++) {
        snprintf(path, sizeof path, "%s/inputs/%s.png", QI_REF_EDIT, cJSON_GetArrayItem(images, k)->valuestring);
        st = qi_png_read(path, &rgb[k], &wh[k][0], &wh[k][1], NULL, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        s.src[k] = rgb[k];
    }
    const cJSON *neg = cJSON_GetObjectItemCaseSensitive(j, "negative_prompt");
    qi_edit_request r = {.n = s.n, .rgb = (const uint8_t *const *)rgb, .wh = (const int(*)[2])wh,
                         .prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt")->valuestring,
                         .negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL,
                         .width = cJSON_GetObjectItemCaseSensitive(j, "width")->valueint,
                         .height = cJSON_GetObjectItemCaseSensitive(j, "height")->valueint,
                         .vl_area = 224 * 224, .vae_area = 256 * 256};
    qi_edit_hooks h = {.resize_lanczos = fake_lanczos, .vae_mean = fake_vae_mean, .user = &s};
    qi_edit_inputs in;
    if (st == QI_OK) {
        st = qi_edit_prepare(&r, &h, p.tok, p.te, p.vt, qi_vae_latents_mean(p.vae), qi_vae_latents_std(p.vae), &in,
                             &err);
        CHECK(st == QI_OK, "%s: %s", c->name, err.msg);
    }
    if (st == QI_OK) {
        const cJSON *ohw = cJSON_GetObjectItemCaseSensitive(j, "output_hw");
        CHECK(in.height == cJSON_GetArrayItem(ohw, 0)->valueint && in.width == cJSON_GetArrayItem(ohw, 1)->valueint,
              "%s: output %dx%d", c->name, in.width, in.height);
        CHECK(s.resizes == 2 * s.n && s.encodes == s.n, "%s: %d resizes, %d encodes", c->name, s.resizes, s.encodes);
        const qi_st_tensor *pe = qi_st_file_find(f, "prompt_embeds");
        CHECK(pe && pe->shape[1] == in.len && rel_to(f, "prompt_embeds", in.embeds, (int64_t)in.len * 64) <= g_tol,
              "%s: prompt_embeds", c->name);
        if (in.neg_embeds)
            CHECK(rel_to(f, "neg.prompt_embeds", in.neg_embeds, (int64_t)in.neg_len * 64) <= g_tol, "%s: negative",
                  c->name);
        int64_t Lc = 0;
        for (int k = 0; k < in.cond.n; k++) Lc += (int64_t)in.cond.hw[k][0] * in.cond.hw[k][1];
        CHECK(rel_to(f, "image_latents", in.cond_latents, Lc * 64) == 0, "%s: image_latents", c->name);
        denoise_and_decode(c, j, f, &p, &in);
        qi_edit_inputs_free(&in);
    }
    for (int k = 0; k < 4; k++) free(rgb[k]);
    parts_free(&p);
    qi_st_close(f);
    cJSON_Delete(j);
}

static int count_progress(void *user, const char *stage, int step, int total) {
    int *r = user;
    (void)total;
    if (!strcmp(stage, "denoise")) r[0]++, r[1] = step;
    return 0;
}

/* step previews: how many, the last step, all finite, and the last one kept */
typedef struct step_seen {
    int n, last, finite;
    size_t floats;
    float *last_latents;
} step_seen;

static void keep_step_latents(void *user, int step, int total, const qi_image *lat) {
    step_seen *s = user;
    size_t n = (size_t)16 * (lat->height / 8) * (lat->width / 8);
    s->n++, s->last = step;
    for (size_t i = 0; i < n; i++) s->finite &= isfinite(lat->latents[i]) != 0;
    free(s->last_latents);
    s->last_latents = malloc(n * sizeof(float));
    if (s->last_latents) memcpy(s->last_latents, lat->latents, n * sizeof(float)), s->floats = n;
    (void)total;
}

static int cancel_at_1(void *user, const char *stage, int step, int total) {
    (void)user, (void)total;
    return !strcmp(stage, "denoise") && step == 1;
}

/* The same through the public API: qi_generate with the pictures in the
 * request, on the Edit model folder (diffusers layout); with stand_ins the
 * two img2img parts are stood in for through qi_engine_set_edit_hooks,
 * without them the engine's own Lanczos resize and VAE encoder run. */
static void engine_case(const edit_case *c, int stand_ins) {
    char path[1024];
    qi_error err = {{0}};
    cJSON *j = ref_edit_json(c->name);
    REQUIRE(j);
    qi_st_file *f = ref_edit_tensors(c->name);
    char model[1024];
    snprintf(model, sizeof model, "%s/%s", QI_REF_EDIT, c->model);
    qi_open_options o = qi_open_options_default();
    o.model_dir = model;
    o.device = g_cuda ? "cuda" : "cpu";
    o.threads = 2;
    qi_engine *e = NULL;
    qi_status st = qi_engine_open(&o, &e);
    CHECK(st == QI_OK, "%s", qi_engine_error(e));
    if (st == QI_OK && c->lora) CHECK(qi_engine_add_lora(e, QI_TEST_DATA "/cases/lora.safetensors", 1.0f) == QI_OK, "%s",
                                      qi_engine_error(e));
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(j, "images");
    stand_in s = {.f = f, .n = cJSON_GetArraySize(images)};
    uint8_t *rgb[4] = {0};
    int w[4], h[4];
    for (int k = 0; k < s.n && k < 4 && st == QI_OK; k++) {
        snprintf(path, sizeof path, "%s/inputs/%s.png", QI_REF_EDIT, cJSON_GetArrayItem(images, k)->valuestring);
        st = qi_png_read(path, &rgb[k], &w[k], &h[k], NULL, &err);
        s.src[k] = rgb[k];
    }
    qi_edit_hooks hooks = {.resize_lanczos = fake_lanczos, .vae_mean = fake_vae_mean, .user = &s};
    qi_request r = qi_request_default();
    const cJSON *neg = cJSON_GetObjectItemCaseSensitive(j, "negative_prompt");
    r.prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt")->valuestring;
    r.negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL;
    r.cfg = (float)cJSON_GetObjectItemCaseSensitive(j, "cfg")->valuedouble;
    r.steps = cJSON_GetObjectItemCaseSensitive(j, "steps")->valueint;
    r.seed = (uint64_t)cJSON_GetObjectItemCaseSensitive(j, "seed")->valuedouble;
    r.width = cJSON_GetObjectItemCaseSensitive(j, "width")->valueint;
    r.height = cJSON_GetObjectItemCaseSensitive(j, "height")->valueint;
    r.scheduler = strstr(c->name, "lightning") ? "lightning" : "model";
    r.n_edit_images = s.n;
    r.edit_images = (const uint8_t *const *)rgb;
    r.edit_widths = w, r.edit_heights = h;
    r.edit_vl_area = 224 * 224, r.edit_vae_area = 256 * 256;
    r.noise_dtype = 1; /* the references are float32 runs: float32 noise on every device (auto is bf16 on CUDA) */
    qi_image img = {0};
    int reports[2] = {0, 0}; /* denoise reports, the last step reported */
    r.progress = count_progress;
    r.progress_user = reports;
    if (st == QI_OK) {
        qi_engine_set_edit_hooks(e, stand_ins ? &hooks : NULL);
        st = qi_generate(e, &r, &img);
        CHECK(st == QI_OK, "%s: %s", c->name, qi_engine_error(e));
        CHECK(reports[0] == r.steps + 1 && reports[1] == r.steps, "%s: %d denoise reports, last %d", c->name,
              reports[0], reports[1]);
    }
    if (st == QI_OK && qi_st_file_find(f, "image_u8")) {
        const cJSON *ohw = cJSON_GetObjectItemCaseSensitive(j, "output_hw");
        CHECK(img.height == cJSON_GetArrayItem(ohw, 0)->valueint && img.width == cJSON_GetArrayItem(ohw, 1)->valueint,
              "%s: %dx%d", c->name, img.width, img.height);
        double mean;
        int worst = ref_image_diff(f, img.rgb, (size_t)img.width * img.height * 3, &mean);
        printf("     qi_generate %s (%s): %dx%d, image max diff %d levels, mean %.3f\n", c->name,
               stand_ins ? "stand-ins" : "real resize and encoder", img.width, img.height, worst, mean);
        CHECK(worst >= 0 && (g_cuda ? mean <= 3 : worst <= 2), "%s: %d levels (mean %.3f; -1: another size)", c->name,
              worst, mean);
    }
    /* step previews: one per step, the last (σ = 0) the final latents as the VAE reads them */
    if (st == QI_OK && stand_ins) {
        step_seen seen = {.finite = 1};
        qi_image again = {0};
        r.step_latents = keep_step_latents, r.step_latents_user = &seen;
        s.encodes = 0;
        CHECK(qi_generate(e, &r, &again) == QI_OK, "%s: with step previews: %s", c->name, qi_engine_error(e));
        CHECK(seen.n == r.steps && seen.last == r.steps && seen.finite, "%s: %d step previews (last %d), finite %d",
              c->name, seen.n, seen.last, seen.finite);
        CHECK(again.rgb && img.rgb && !memcmp(again.rgb, img.rgb, (size_t)img.width * img.height * 3),
              "%s: previews change the image", c->name);
        CHECK(seen.last_latents && again.latents &&
                  !memcmp(seen.last_latents, again.latents, seen.floats * sizeof(float)),
              "%s: the last step preview is not the final latents", c->name);
        free(seen.last_latents);
        qi_image_free(&again);
        r.step_latents = NULL;
    }
    /* a progress callback that answers nonzero at step 1 cancels */
    r.progress = cancel_at_1;
    s.encodes = 0; /* the stand-in hands out the pictures' means in order again */
    qi_image cancelled = {0};
    if (st == QI_OK)
        CHECK(qi_generate(e, &r, &cancelled) == QI_ERR_CANCELLED && !cancelled.rgb, "%s: cancel", qi_engine_error(e));
    r.progress = NULL;
    qi_image_free(&img);
    qi_engine_close(e);
    for (int k = 0; k < 4; k++) free(rgb[k]);
    qi_st_close(f);
    cJSON_Delete(j);
}

static void engine_edit2509_one_picture(void) { engine_case(&cases[0], 1); }
static void engine_edit2509_two_pictures_cfg(void) { engine_case(&cases[1], 1); }
static void engine_edit2511_two_pictures(void) { engine_case(&cases[2], 1); }
static void real_edit2509_one_picture(void) { engine_case(&cases[0], 0); }
static void real_edit2509_two_pictures_cfg(void) { engine_case(&cases[1], 0); }
static void real_edit2511_two_pictures(void) { engine_case(&cases[2], 0); }

/* The engine's Lanczos resize (img2img's qi_resize_lanczos_u8) gives the
 * Edit pipeline's condition pictures bit for bit, every picture of every case. */
static void lanczos_matches_condition_pictures(void) {
    char path[1024];
    qi_error err = {{0}};
    int compared = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        cJSON *j = ref_edit_json(cases[ci].name);
        REQUIRE(j);
        qi_st_file *f = ref_edit_tensors(cases[ci].name);
        const cJSON *images = cJSON_GetObjectItemCaseSensitive(j, "images");
        for (int k = 0; k < cJSON_GetArraySize(images); k++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.vl_resized_u8", k);
            const qi_st_tensor *t = qi_st_file_find(f, name);
            CHECK(t != NULL, "%s: no %s", cases[ci].name, name);
            if (!t) continue;
            snprintf(path, sizeof path, "%s/inputs/%s.png", QI_REF_EDIT, cJSON_GetArrayItem(images, k)->valuestring);
            uint8_t *rgb = NULL;
            int w = 0, h = 0;
            CHECK(qi_png_read(path, &rgb, &w, &h, NULL, &err) == QI_OK, "%s", err.msg);
            int ow = (int)t->shape[1], oh = (int)t->shape[0];
            uint8_t *out = malloc((size_t)ow * oh * 3);
            CHECK(rgb && qi_resize_lanczos_u8(rgb, w, h, 3, out, ow, oh, &err) == QI_OK, "%s", err.msg);
            CHECK(!memcmp(out, t->data, t->nbytes), "%s %s: %dx%d → %dx%d differs", cases[ci].name, name, w, h, ow,
                  oh);
            compared++;
            free(out);
            free(rgb);
        }
        qi_st_close(f);
        cJSON_Delete(j);
    }
    CHECK(compared == 5, "%d pictures compared", compared);
}

static void edit2509_one_picture_lightning_lora(void) { run_case(&cases[0]); }
static void edit2509_two_pictures_true_cfg(void) { run_case(&cases[1]); }
static void edit2511_two_pictures_zero_cond_t(void) { run_case(&cases[2]); }

int main(int argc, char **argv) {
    qi_error err = {{0}};
    const char *device = argc > 2 && !strcmp(argv[1], "-b") ? argv[2] : "cpu";
    g_cuda = strcmp(device, "cpu") != 0;
    if (g_cuda) g_tol = 5e-2;
    if (qi_backend_create(device, 2, (size_t)512 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "%s backend: %s\n", device, err.msg);
        return 1;
    }
    RUN(edit2509_one_picture_lightning_lora);
    RUN(edit2509_two_pictures_true_cfg);
    RUN(edit2511_two_pictures_zero_cond_t);
    RUN(engine_edit2509_one_picture);
    RUN(engine_edit2509_two_pictures_cfg);
    RUN(engine_edit2511_two_pictures);
    RUN(lanczos_matches_condition_pictures);
    RUN(real_edit2509_one_picture);
    RUN(real_edit2509_two_pictures_cfg);
    RUN(real_edit2511_two_pictures);
    g_be->ops->destroy(g_be);
    TEST_END();
}

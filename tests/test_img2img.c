/*
 * test_img2img.c — img2img and inpainting against diffusers'
 * QwenImageImg2ImgPipeline / QwenImageInpaintPipeline on the tiny model
 * (reference/edit, the subset in tests/data/shared/reference/edit):
 *   - the VAE encoder: posterior mean and logvar of the reference's
 *     preprocessed picture, the posterior sample and its normalisation;
 *   - torch's generator draws in the reference's order;
 *   - the input preprocessing: PIL's Lanczos resize of the picture and the
 *     mask, the mask's binarisation, masked picture and latent-grid mask;
 *   - the schedule truncation by strength (plan);
 *   - every case end to end through qi_generate: each step's transformer
 *     input (the reference callN.hidden_states), the final latents and the
 *     image;
 *   - odd inputs: 1×1, a 16000×16000 header, a truncated file, grey, 16-bit
 *     and RGBA PNGs, a mask of another size, bad request fields.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "backend/backend.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "image_check.h"
#include "io/image.h"
#include "io/image_prep.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/vae.h"
#include "sample/latents.h"
#include "sample/rng.h"
#include "test.h"
#include "testdata.h"

#define COMFY_VAE QI_TEST_DATA "/../../../shared/reference/formats/comfy_vae.safetensors"

static const char *const CASES[] = {"img2img_s06_lightning8_lora", "img2img_s09_cfg4", "inpaint_s10_cfg4",
                                    "inpaint_s07_lightning8_lora"};

static qi_backend *g_be;
/* `test_img2img -d cuda` (ctest test_img2img_cuda, label cuda) runs the
 * encoder and the four cases on the GPU (bf16 activations) with the
 * tolerances below; the CPU run holds float32 to the reference. */
static const char *g_device = "cpu";
static double tol_encoder = 1e-5, tol_stage = 1e-4, tol_image_mean = 0.5, tol_image_max = 2;

/* One case's tensors file and case.json. */
typedef struct edit_case {
    const char *name;
    qi_st_file *f;
    cJSON *json;
    int H, W, h, w; /* output pixels, latent cells */
} edit_case;

static int edit_case_open(const char *name, edit_case *c) {
    memset(c, 0, sizeof *c);
    c->name = name;
    c->f = ref_edit_tensors(name);
    c->json = ref_edit_json(name);
    if (!c->f || !c->json) return -1;
    c->H = cJSON_GetObjectItem(c->json, "height")->valueint;
    c->W = cJSON_GetObjectItem(c->json, "width")->valueint;
    c->h = c->H / 8;
    c->w = c->W / 8;
    return 0;
}

static void edit_case_close(edit_case *c) {
    if (c->f) qi_st_close(c->f);
    cJSON_Delete(c->json);
}

static double case_number(const edit_case *c, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(c->json, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Tensor `name` as floats; a failed CHECK if absent. */
static float *need(const edit_case *c, const char *name, int64_t *n) {
    float *v = ref_floats(c->f, name, n);
    CHECK(v != NULL, "%s: no tensor %s", c->name, name);
    return v;
}

/* The reference's uint8 tensor `name` (rows × columns (× channels)). */
static const uint8_t *need_u8(const edit_case *c, const char *name, int64_t *n) {
    const qi_st_tensor *t = qi_st_file_find(c->f, name);
    CHECK(t != NULL && t->dtype == QI_U8, "%s: no uint8 tensor %s", c->name, name);
    if (!t || t->dtype != QI_U8) return NULL;
    int64_t count = 1;
    for (int d = 0; d < t->ndim; d++) count *= t->shape[d];
    if (n) *n = count;
    return t->data;
}

/* [H, W, 3] u8 → [3, H, W] in [-1, 1] as the pipeline computes it. */
static float *u8_to_chw(const uint8_t *px, int H, int W) {
    float *rgb = malloc(sizeof(float) * 3 * (size_t)H * W);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < H * W; i++) rgb[(size_t)c * H * W + i] = 2.0f * ((float)px[i * 3 + c] / 255.0f) - 1.0f;
    return rgb;
}

/* Largest |a − b| over n, relative to the largest |b|. */
static double max_rel(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || e != e) d = e;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

static qi_status open_vae(const char *path, int folder, qi_source **src, qi_vae **v, qi_error *err) {
    *v = NULL;
    qi_status st = folder ? qi_source_open_folder(path, QI_COMPONENT_VAE, src, err)
                          : qi_source_open(path, QI_COMPONENT_VAE, src, err);
    if (st == QI_OK) st = qi_vae_load(*src, g_be, v, err);
    if (st == QI_OK) st = qi_vae_load_encoder(*v, err);
    return st;
}

/* Encodes a case's init_image with v; 0 and the posterior mean / logvar
 * compared with the reference within tol (relative to the largest value). */
static void check_encoder_case(qi_vae *v, const char *name, double tol) {
    edit_case c;
    if (edit_case_open(name, &c)) goto done;
    int64_t n_px = 0, n = 0;
    const uint8_t *px = need_u8(&c, "init_resized_u8", &n_px);
    float *mean_ref = need(&c, "vae_enc.mean", &n), *logvar_ref = need(&c, "vae_enc.logvar", NULL);
    REQUIRE(px && mean_ref && logvar_ref && n_px == (int64_t)c.H * c.W * 3 && n == 16LL * c.h * c.w);
    float *rgb = u8_to_chw(px, c.H, c.W), *mean = malloc(sizeof(float) * n), *logvar = malloc(sizeof(float) * n);
    qi_error err = {{0}};
    qi_status st = qi_vae_encode(v, rgb, c.H, c.W, mean, logvar, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK) {
        double em = max_rel(mean, mean_ref, (size_t)n), el = max_rel(logvar, logvar_ref, (size_t)n);
        printf("  %s: encoder mean max err %.2e, logvar %.2e (relative to the largest value)\n", name, em, el);
        CHECK(em <= tol && el <= tol, "%s: mean %.3e, logvar %.3e > %.1e", name, em, el, tol);
    }
    free(rgb);
    free(mean);
    free(logvar);
    free(mean_ref);
    free(logvar_ref);
done:
    edit_case_close(&c);
}

/* Claim: the encoder gives the reference posterior of every case's picture
 * (float32 CPU: within 1e-5 of the largest value). */
static void encoder_matches_reference_posterior(void) {
    qi_source *src = NULL;
    qi_vae *v = NULL;
    qi_error err = {{0}};
    qi_status st = open_vae(QI_REF_MODEL "/vae", 1, &src, &v, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK)
        for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) check_encoder_case(v, CASES[i], tol_encoder);
    qi_vae_free(v);
    qi_source_close(src);
}

/* Claim: ComfyUI's Wan-named VAE file (same weights) encodes the same. */
static void encoder_reads_wan_named_file(void) {
    if (!qi_file_exists(COMFY_VAE)) {
        printf("  (skipped: %s absent)\n", COMFY_VAE);
        return;
    }
    qi_source *src = NULL;
    qi_vae *v = NULL;
    qi_error err = {{0}};
    qi_status st = open_vae(COMFY_VAE, 0, &src, &v, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK) check_encoder_case(v, CASES[0], tol_encoder);
    qi_vae_free(v);
    qi_source_close(src);
}

/* Claim: the reference draws ε for the posterior sample first and the noise
 * second from torch's CPU generator seeded with the case's seed (inpaint: the
 * masked picture's ε third), and sample = mean + exp(½·logvar)·ε normalised as
 * (sample − mean_c)·(1/std_c) is the reference `image_latents`. */
static void posterior_sample_and_draws_match(void) {
    qi_source *src = NULL;
    qi_vae *v = NULL;
    qi_error err = {{0}};
    qi_status st = qi_source_open_folder(QI_REF_MODEL "/vae", QI_COMPONENT_VAE, &src, &err);
    if (st == QI_OK) st = qi_vae_load(src, g_be, &v, &err);
    REQUIRE(st == QI_OK, "%s", err.msg);
    for (size_t k = 0; k < QI_ARRAY_LEN(CASES); k++) {
        edit_case c;
        if (edit_case_open(CASES[k], &c)) {
            edit_case_close(&c);
            continue;
        }
        int64_t n = 16LL * c.h * c.w;
        float *mean = need(&c, "vae_enc.mean", NULL), *logvar = need(&c, "vae_enc.logvar", NULL);
        float *eps = need(&c, "vae_enc.eps", NULL), *noise = need(&c, "noise", NULL);
        float *latents = need(&c, "image_latents", NULL), *eps1 = ref_floats(c.f, "vae_enc1.eps", NULL);
        float *draw = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
        if (mean && logvar && eps && noise && latents) {
            qi_cpu_generator g;
            qi_cpu_generator_seed(&g, (uint64_t)case_number(&c, "seed"));
            CHECK(qi_cpu_generator_randn(&g, QI_F32, n, draw, &err) == QI_OK && !memcmp(draw, eps, sizeof(float) * n),
                  "%s: the first draw is not vae_enc.eps", c.name);
            CHECK(qi_cpu_generator_randn(&g, QI_F32, n, draw, &err) == QI_OK && !memcmp(draw, noise, sizeof(float) * n),
                  "%s: the second draw is not the noise", c.name);
            if (eps1)
                CHECK(qi_cpu_generator_randn(&g, QI_F32, n, draw, &err) == QI_OK &&
                          !memcmp(draw, eps1, sizeof(float) * n),
                      "%s: the third draw is not vae_enc1.eps", c.name);
            qi_vae_sample_posterior(mean, logvar, eps, (size_t)n, z);
            qi_vae_normalize_latents(v, z, (int64_t)c.h * c.w, 0, z);
            double e = qi_max_abs_diff(z, latents, (size_t)n);
            CHECK(e <= 2e-6, "%s: image_latents max abs err %.3e", c.name, e);
        }
        free(mean);
        free(logvar);
        free(eps);
        free(noise);
        free(latents);
        free(eps1);
        free(draw);
        free(z);
        edit_case_close(&c);
    }
    qi_vae_free(v);
    qi_source_close(src);
}

static const char *case_string(const edit_case *c, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(c->json, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* inputs/<name>.png of the reference, read as 8-bit RGB. */
static uint8_t *read_input(const char *name, int *w, int *h) {
    char path[1024];
    snprintf(path, sizeof path, "%s/inputs/%s.png", QI_REF_EDIT, name);
    uint8_t *rgb = NULL;
    qi_error err = {{0}};
    qi_status st = qi_png_read(path, &rgb, w, h, NULL, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    return rgb;
}

/* Claim: the picture resized as PIL resizes it (LANCZOS, no crop) is the
 * reference `init_resized_u8` bit for bit, and its [-1, 1] pixels encode to
 * the reference posterior (checked above) — enlarging (in_c 100×75 →
 * 128×96), changing the aspect (in_b, in_a → 112×80) and keeping the size. */
static void picture_resize_matches_pil(void) {
    for (size_t k = 0; k < QI_ARRAY_LEN(CASES); k++) {
        edit_case c;
        int w = 0, h = 0;
        uint8_t *src = NULL, *got = NULL;
        if (edit_case_open(CASES[k], &c) || !(src = read_input(case_string(&c, "image"), &w, &h))) goto next;
        const uint8_t *want = need_u8(&c, "init_resized_u8", NULL);
        got = malloc((size_t)3 * c.W * c.H);
        qi_error err = {{0}};
        CHECK(qi_resize_lanczos_u8(src, w, h, 3, got, c.W, c.H, &err) == QI_OK, "%s", err.msg);
        if (want) {
            int diff = 0;
            for (size_t i = 0; i < (size_t)3 * c.W * c.H; i++) diff += got[i] != want[i];
            CHECK(diff == 0, "%s: %d of %d resized values differ from PIL's", c.name, diff, 3 * c.W * c.H);
        }
    next:
        free(src);
        free(got);
        edit_case_close(&c);
    }
}

/* Claim: the mask (L PNG, read as grey RGB, converted as PIL's convert("L"))
 * resized with LANCZOS is `mask_resized_u8`, binarised at 0.5 it is
 * `mask_condition`, and on the latent grid (nearest), over 16 channels and
 * packed it is `mask_packed`. */
static void mask_preprocessing_matches(void) {
    for (size_t k = 2; k < QI_ARRAY_LEN(CASES); k++) {
        edit_case c;
        int w = 0, h = 0;
        uint8_t *src = NULL, *luma = NULL, *sized = NULL;
        float *cond = NULL, *grid = NULL, *packed = NULL, *want_cond = NULL, *want_packed = NULL;
        if (edit_case_open(CASES[k], &c) || !(src = read_input(case_string(&c, "mask"), &w, &h))) goto next;
        size_t n = (size_t)c.W * c.H;
        luma = malloc((size_t)w * h);
        sized = malloc(n);
        cond = malloc(sizeof(float) * n);
        qi_rgb_to_luma_u8(src, (int64_t)w * h, luma);
        qi_error err = {{0}};
        CHECK(qi_resize_lanczos_u8(luma, w, h, 1, sized, c.W, c.H, &err) == QI_OK, "%s", err.msg);
        const uint8_t *want = need_u8(&c, "mask_resized_u8", NULL);
        if (want) CHECK(!memcmp(sized, want, n), "%s: resized mask differs from PIL's", c.name);
        qi_mask_binarize(sized, (int64_t)n, cond);
        want_cond = need(&c, "mask_condition", NULL);
        if (want_cond) CHECK(!memcmp(cond, want_cond, sizeof(float) * n), "%s: mask_condition differs", c.name);
        int64_t n_lat = 16LL * c.h * c.w;
        grid = malloc(sizeof(float) * n_lat);
        packed = malloc(sizeof(float) * n_lat);
        qi_mask_to_latent_grid(cond, c.W, c.H, 8, 16, grid);
        qi_latents_pack(grid, 1, c.h, c.w, packed);
        want_packed = need(&c, "mask_packed", NULL);
        if (want_packed) CHECK(!memcmp(packed, want_packed, sizeof(float) * n_lat), "%s: mask_packed differs", c.name);
    next:
        free(src);
        free(luma);
        free(sized);
        free(cond);
        free(grid);
        free(packed);
        free(want_cond);
        free(want_packed);
        edit_case_close(&c);
    }
}

/* Claim: PIL's resize on sizes far from the fixtures' (shrinking by 7.3×,
 * one axis only, 1-pixel sources and targets) keeps constant pictures
 * constant and stays in range (the coefficients sum to 1 in fixed point). */
static void resize_keeps_constant_pictures(void) {
    static const int sizes[][4] = {{1000, 730, 137, 100}, {64, 64, 64, 200}, {1, 1, 16, 16}, {37, 5, 1, 1}};
    for (size_t k = 0; k < QI_ARRAY_LEN(sizes); k++) {
        int iw = sizes[k][0], ih = sizes[k][1], ow = sizes[k][2], oh = sizes[k][3];
        uint8_t *in = malloc((size_t)iw * ih * 3), *out = malloc((size_t)ow * oh * 3);
        memset(in, 173, (size_t)iw * ih * 3);
        qi_error err = {{0}};
        CHECK(qi_resize_lanczos_u8(in, iw, ih, 3, out, ow, oh, &err) == QI_OK, "%s", err.msg);
        int bad = 0;
        for (size_t i = 0; i < (size_t)ow * oh * 3; i++) bad += out[i] != 173;
        CHECK(bad == 0, "%dx%d -> %dx%d: %d values changed", iw, ih, ow, oh, bad);
        free(in);
        free(out);
    }
    qi_error err = {{0}};
    uint8_t px[3] = {0};
    CHECK(qi_resize_lanczos_u8(px, 0, 1, 3, px, 1, 1, &err) == QI_ERR_ARG && strstr(err.msg, "0x1"), "%s", err.msg);
}

/* The case's scheduler config written as a JSON file in dir; its path in out. */
static int case_scheduler_file(const edit_case *c, const char *dir, char *out, size_t cap) {
    char *text = cJSON_Print(cJSON_GetObjectItem(c->json, "scheduler"));
    snprintf(out, cap, "%s/%s_scheduler.json", dir, c->name);
    int rc = text ? write_file(out, text, strlen(text)) : -1;
    free(text);
    return rc;
}

/* Claim: the plan truncates the schedule as diffusers' get_timesteps: t_start
 * = int(N − N·strength) (2.4000000000000004 → 2 at 8 × 0.7), the steps run
 * are the reference `timesteps_used`, the first sigma is `init_sigma` and the
 * transformer's timestep of step i is callN.timestep. */
static void schedule_truncation_matches(void) {
    CHECK(qi_plan_t_start(8, 0.7) == 2 && qi_plan_t_start(8, 0.6) == 3 && qi_plan_t_start(10, 0.9) == 1 &&
              qi_plan_t_start(4, 1.0) == 0 && qi_plan_t_start(10, 0.3) == 7 && qi_plan_t_start(8, 0.01) == 7,
          "t_start rule");
    char dir[256], path[512];
    if (tmp_dir_make(dir, sizeof dir, "img2img_plan")) return;
    for (size_t k = 0; k < QI_ARRAY_LEN(CASES); k++) {
        edit_case c;
        qi_plan p;
        memset(&p, 0, sizeof p);
        float *used = NULL, *t0 = NULL;
        if (edit_case_open(CASES[k], &c) || case_scheduler_file(&c, dir, path, sizeof path)) goto next;
        qi_scheduler_config sched;
        qi_error err = {{0}};
        REQUIRE(qi_scheduler_config_load(path, &sched, &err) == QI_OK, "%s", err.msg);
        qi_request r = qi_request_default();
        uint8_t px[3] = {0};
        r.prompt = "x";
        r.width = c.W, r.height = c.H, r.steps = (int)case_number(&c, "steps");
        r.strength = case_number(&c, "strength");
        r.init_image = px, r.init_width = 1, r.init_height = 1;
        REQUIRE(qi_plan_make(&r, &sched, 1, 0, 0, &p, &err) == QI_OK, "%s", err.msg);
        int64_t n_used = 0;
        used = need(&c, "timesteps_used", &n_used);
        t0 = need(&c, "call0.timestep", NULL);
        CHECK(p.t_start == (int)case_number(&c, "t_start") && p.steps == n_used, "%s: t_start %d, %d steps", c.name,
              p.t_start, p.steps);
        CHECK(p.sigmas[0] == (float)case_number(&c, "init_sigma"), "%s: first sigma %.9g vs %.9g", c.name,
              (double)p.sigmas[0], case_number(&c, "init_sigma"));
        if (used && p.steps == n_used) CHECK(!memcmp(p.timesteps, used, sizeof(float) * (size_t)n_used), "%s: timesteps", c.name);
        if (t0) CHECK(p.t_all[0] == t0[0], "%s: first transformer timestep %.9g vs %.9g", c.name, (double)p.t_all[0],
                      (double)t0[0]);
    next:
        qi_plan_free(&p);
        free(used);
        free(t0);
        edit_case_close(&c);
    }
    tmp_remove_tree(dir);
}

/* Every step's transformer input, kept by the engine's test hook. */
typedef struct step_inputs {
    int n, L;
    float *lat[64]; /* [L, 64] each */
} step_inputs;

static void keep_inputs(void *user, int step, const float *x) {
    step_inputs *s = user;
    if (step >= 64) return;
    s->lat[step] = malloc(sizeof(float) * (size_t)s->L * 64);
    memcpy(s->lat[step], x, sizeof(float) * (size_t)s->L * 64);
    if (step + 1 > s->n) s->n = step + 1;
}

/* One case through qi_generate on e; stage errors compared with the fixture. */
static void run_case(qi_engine *e, const char *name, const char *dir) {
    edit_case c;
    step_inputs si = {0};
    int w = 0, h = 0, mw = 0, mh = 0;
    uint8_t *pic = NULL, *mask = NULL;
    qi_image img = {0};
    char sched[512];
    if (edit_case_open(name, &c) || case_scheduler_file(&c, dir, sched, sizeof sched) ||
        !(pic = read_input(case_string(&c, "image"), &w, &h)))
        goto done;
    if (case_string(&c, "mask") && !(mask = read_input(case_string(&c, "mask"), &mw, &mh))) goto done;
    qi_lora_spec lora = {QI_REF_PUBLIC "/lora.safetensors", 1.0f};
    int with_lora = case_string(&c, "lora") != NULL;
    REQUIRE(qi_engine_set_loras(e, &lora, with_lora) == QI_OK, "%s", qi_engine_error(e));
    qi_request r = qi_request_default();
    r.prompt = case_string(&c, "prompt");
    r.negative_prompt = case_string(&c, "negative_prompt");
    r.cfg = (float)case_number(&c, "cfg");
    r.steps = (int)case_number(&c, "steps");
    r.seed = (uint64_t)case_number(&c, "seed");
    r.width = c.W, r.height = c.H;
    r.scheduler = sched;
    r.noise_dtype = 1; /* the reference drew ε and the noise in float32 (on CUDA "auto" would be bf16) */
    r.strength = case_number(&c, "strength");
    r.init_image = pic, r.init_width = w, r.init_height = h;
    r.mask_image = mask, r.mask_width = mw, r.mask_height = mh;
    si.L = (c.H / 16) * (c.W / 16);
    e->test_inputs = (qi_denoise_hook){.inputs = keep_inputs, .user = &si};
    qi_status st = qi_generate(e, &r, &img);
    e->test_inputs = (qi_denoise_hook){0};
    REQUIRE(st == QI_OK, "%s: %s", name, qi_engine_error(e));
    int per_step = r.negative_prompt && r.cfg > 1 ? 2 : 1;
    CHECK(si.n == (int)case_number(&c, "steps_run"), "%s: %d steps run", name, si.n);
    double worst = 0;
    for (int i = 0; i < si.n; i++) {
        char key[64];
        snprintf(key, sizeof key, "call%d.hidden_states", i * per_step);
        float *want = need(&c, key, NULL);
        if (!want) break;
        double e_i = qi_rel_l2(si.lat[i], want, (size_t)si.L * 64);
        if (e_i > worst) worst = e_i;
        free(want);
    }
    float *fin = need(&c, "final_latents", NULL);
    int64_t n_lat = 16LL * c.h * c.w;
    float *vae_in = malloc(sizeof(float) * (size_t)n_lat);
    double e_fin = 1;
    if (fin) {
        qi_latents_to_vae_in(fin, 1, c.H, c.W, qi_vae_latents_mean(qi_engine_vae(e)), qi_vae_latents_std(qi_engine_vae(e)),
                             vae_in);
        e_fin = qi_rel_l2(img.latents, vae_in, (size_t)n_lat);
    }
    const uint8_t *u8 = need_u8(&c, "image_u8", NULL);
    int px_max = 255;
    double px_mean = 255;
    if (u8) px_max = pixel_diff(img.rgb, u8, (size_t)c.W * c.H * 3, &px_mean);
    printf("  %s on %s: %d steps, transformer inputs rel L2 <= %.2e, final latents %.2e, image |diff| mean %.3f "
           "max %d\n", name, g_device, si.n, worst, e_fin, px_mean, px_max);
    CHECK(worst <= tol_stage && e_fin <= tol_stage, "%s: stage errors %.3e / %.3e over %.1e", name, worst, e_fin,
          tol_stage);
    CHECK(px_mean <= tol_image_mean && px_max <= tol_image_max, "%s: image differs by %.3f mean, %d max", name,
          px_mean, px_max);
    free(fin);
    free(vae_in);
done:
    for (int i = 0; i < si.n; i++) free(si.lat[i]);
    qi_image_free(&img);
    free(pic);
    free(mask);
    edit_case_close(&c);
}

/* Claim: each img2img / inpaint case through qi_generate on the CPU backend
 * matches the reference at every step (the transformer's input, relative L2
 * ≤ 1e-4), in the final latents (≤ 1e-4) and the image (≤ 2 levels). */
static void cases_end_to_end(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = QI_REF_MODEL;
    o.device = g_device;
    qi_engine *e = NULL;
    qi_status st = qi_engine_open(&o, &e);
    REQUIRE(st == QI_OK, "%s", qi_engine_error(e));
    char dir[256];
    if (tmp_dir_make(dir, sizeof dir, "img2img") == 0) {
        for (size_t k = 0; k < QI_ARRAY_LEN(CASES); k++) run_case(e, CASES[k], dir);
        tmp_remove_tree(dir);
    }
    qi_engine_close(e);
}

/* PNG's chunk CRC (CRC-32, polynomial 0xEDB88320) of n bytes. */
static uint32_t png_crc(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
}

/* Writes a PNG of any libpng colour type / depth (rows packed, big-endian
 * 16-bit samples); 0 on success. */
static int write_png(const char *path, int w, int h, int color_type, int depth, const uint8_t *data) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    int ch = color_type == PNG_COLOR_TYPE_GRAY ? 1 : color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
    size_t stride = (size_t)w * ch * (depth / 8);
    for (int y = 0; y < h; y++) png_write_row(png, data + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f);
}

/* Claim: pictures as users have them are read as PIL's convert("RGB") gives
 * them — grey repeated over R, G, B; 16-bit samples by their high byte; alpha
 * dropped — and broken or oversized files are one-line errors naming the
 * file: a truncated PNG, a header claiming 16000×16000 pixels with no data
 * behind it, more than 16384 pixels a side. */
static void odd_picture_files_are_read_or_refused(void) {
    char dir[256], path[512];
    if (tmp_dir_make(dir, sizeof dir, "img2img_odd")) return;
    uint8_t grey[6] = {0, 50, 100, 150, 200, 255}, rgba[4 * 4] = {10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4};
    uint8_t rgb16[2 * 3 * 2] = {0x12, 0x34, 0xAB, 0xCD, 0xFF, 0xFF, 0x00, 0xFF, 0x80, 0x00, 0x7F, 0xFF};
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char err[512];
    snprintf(path, sizeof path, "%s/grey.png", dir);
    REQUIRE(write_png(path, 3, 2, PNG_COLOR_TYPE_GRAY, 8, grey) == 0);
    CHECK(qi_image_read(path, &rgb, &w, &h, err, sizeof err) == QI_OK && w == 3 && h == 2, "%s", err);
    for (int i = 0; rgb && i < 6; i++) CHECK(rgb[3 * i] == grey[i] && rgb[3 * i + 1] == grey[i] && rgb[3 * i + 2] == grey[i], "grey %d", i);
    qi_free_bytes(rgb);
    rgb = NULL;
    snprintf(path, sizeof path, "%s/rgba.png", dir);
    REQUIRE(write_png(path, 2, 2, PNG_COLOR_TYPE_RGB_ALPHA, 8, rgba) == 0);
    CHECK(qi_image_read(path, &rgb, &w, &h, err, sizeof err) == QI_OK && w == 2 && h == 2, "%s", err);
    for (int i = 0; rgb && i < 4; i++)
        CHECK(!memcmp(rgb + 3 * i, rgba + 4 * i, 3), "RGBA pixel %d: alpha must be dropped, colour kept", i);
    qi_free_bytes(rgb);
    rgb = NULL;
    snprintf(path, sizeof path, "%s/rgb16.png", dir);
    REQUIRE(write_png(path, 2, 1, PNG_COLOR_TYPE_RGB, 16, rgb16) == 0);
    CHECK(qi_image_read(path, &rgb, &w, &h, err, sizeof err) == QI_OK && w == 2 && h == 1, "%s", err);
    static const uint8_t high[6] = {0x12, 0xAB, 0xFF, 0x00, 0x80, 0x7F};
    CHECK(rgb && !memcmp(rgb, high, 6), "16-bit samples by their high byte");
    qi_free_bytes(rgb);
    rgb = NULL;
    /* a valid PNG cut in half */
    snprintf(path, sizeof path, "%s/in_b.png", QI_REF_EDIT "/inputs");
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL);
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/cut.png", dir);
    REQUIRE(write_file(path, buf, n / 2) == 0);
    qi_status st = qi_image_read(path, &rgb, &w, &h, err, sizeof err);
    CHECK(st == QI_ERR_FORMAT && strstr(err, "cut.png") && !strchr(err, '\n'), "truncated: %d %s", st, err);
    /* the same file's header with its size changed to 16000×16000 (the CRC fixed) and no data */
    memcpy(buf + 16, "\x00\x00\x3e\x80\x00\x00\x3e\x80", 8);
    uint32_t crc = png_crc(buf + 12, 17);
    buf[29] = (uint8_t)(crc >> 24), buf[30] = (uint8_t)(crc >> 16), buf[31] = (uint8_t)(crc >> 8), buf[32] = (uint8_t)crc;
    snprintf(path, sizeof path, "%s/huge.png", dir);
    REQUIRE(write_file(path, buf, 33) == 0);
    st = qi_image_read(path, &rgb, &w, &h, err, sizeof err);
    CHECK(st != QI_OK && strstr(err, "huge.png") && rgb == NULL, "16000x16000 header: %d %s", st, err);
    printf("  16000x16000 header without data: %s\n", err);
    memcpy(buf + 16, "\x00\x00\x40\x01\x00\x00\x00\x01", 8); /* 16385 × 1 */
    crc = png_crc(buf + 12, 17);
    buf[29] = (uint8_t)(crc >> 24), buf[30] = (uint8_t)(crc >> 16), buf[31] = (uint8_t)(crc >> 8), buf[32] = (uint8_t)crc;
    REQUIRE(write_file(path, buf, 33) == 0);
    st = qi_image_read(path, &rgb, &w, &h, err, sizeof err);
    CHECK(st != QI_OK && strstr(err, "huge.png"), "16385x1: %d %s", st, err);
    tmp_remove_tree(dir);
}

/* Claim: a picture in memory (an upload) decodes to the same pixels as the
 * same bytes read from a file, and empty, garbage or truncated bytes are
 * one-line errors naming the given field name. */
static void pictures_in_memory_read_as_files(void) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/in_b.png", QI_REF_EDIT "/inputs");
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL);
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    REQUIRE(n > 0 && n < sizeof buf);
    uint8_t *from_file = NULL, *from_mem = NULL;
    int fw = 0, fh = 0, mw = 0, mh = 0;
    REQUIRE(qi_image_read(path, &from_file, &fw, &fh, err, sizeof err) == QI_OK, "%s", err);
    CHECK(qi_image_read_mem("image", buf, n, 0, &from_mem, &mw, &mh, err, sizeof err) == QI_OK, "%s", err);
    CHECK(mw == fw && mh == fh && from_mem && !memcmp(from_mem, from_file, (size_t)fw * fh * 3),
          "memory %dx%d == file %dx%d, same pixels", mw, mh, fw, fh);
    qi_free_bytes(from_mem);
    qi_free_bytes(from_file);
    from_mem = NULL;
    qi_status st = qi_image_read_mem("image[1]", buf, n / 2, 0, &from_mem, &mw, &mh, err, sizeof err);
    CHECK(st == QI_ERR_FORMAT && from_mem == NULL && strstr(err, "image[1]") && !strchr(err, '\n'), "cut: %d %s", st, err);
    st = qi_image_read_mem("mask", "hello", 5, 0, &from_mem, &mw, &mh, err, sizeof err);
    CHECK(st == QI_ERR_FORMAT && strstr(err, "mask") && strstr(err, "PNG"), "garbage: %d %s", st, err);
    st = qi_image_read_mem("image", buf, 0, 0, &from_mem, &mw, &mh, err, sizeof err);
    CHECK(st != QI_OK && strstr(err, "image"), "empty: %d %s", st, err);
    /* a side over max_side: refused by the header, before any pixel is decoded */
    st = qi_image_read_mem("image", buf, n, fw - 1, &from_mem, &mw, &mh, err, sizeof err);
    CHECK(st == QI_ERR_ARG && from_mem == NULL && strstr(err, "at most"), "over max_side: %d %s", st, err);
}

/* Claim: odd sizes go through qi_generate (a 1×1 picture, a mask of another
 * size and aspect: both resized to the output as the reference resizes), and
 * bad request fields are one-line QI_ERR_ARG errors naming the flag. */
static void odd_requests_run_or_fail_cleanly(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = QI_REF_MODEL;
    qi_engine *e = NULL;
    REQUIRE(qi_engine_open(&o, &e) == QI_OK, "%s", qi_engine_error(e));
    uint8_t one[3] = {200, 30, 90}, mask[5 * 3 * 3];
    for (size_t i = 0; i < sizeof mask; i++) mask[i] = i < sizeof mask / 2 ? 255 : 0;
    qi_request r = qi_request_default();
    r.prompt = "a red square";
    r.width = 48, r.height = 32, r.steps = 2, r.strength = 1.0;
    r.init_image = one, r.init_width = 1, r.init_height = 1;
    qi_image img = {0};
    CHECK(qi_generate(e, &r, &img) == QI_OK && img.width == 48 && img.height == 32, "1x1 picture: %s", qi_engine_error(e));
    qi_image_free(&img);
    r.mask_image = mask, r.mask_width = 5, r.mask_height = 3, r.strength = 0.5, r.batch = 2;
    CHECK(qi_generate(e, &r, &img) == QI_OK && img.count == 2, "5x3 mask, batch 2: %s", qi_engine_error(e));
    qi_image_free(&img);
    struct {
        double strength;
        int iw, mw;
        const uint8_t *init, *mask;
        const char *expect;
    } bad[] = {
        {0.0, 1, 5, one, NULL, "--strength 0: must be in (0, 1]"},
        {1.5, 1, 5, one, NULL, "--strength 1.5"},
        {NAN, 1, 5, one, NULL, "--strength nan"},
        {0.5, 0, 5, one, NULL, "--image: picture size 0x1"},
        {0.5, 1, 0, one, mask, "--mask: mask size 0x3"},
        {0.5, 1, 5, NULL, mask, "--mask needs --image"},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(bad); i++) {
        qi_request b = r;
        b.strength = bad[i].strength, b.init_width = bad[i].iw, b.mask_width = bad[i].mw;
        b.init_image = bad[i].init, b.mask_image = bad[i].mask;
        qi_status st = qi_generate(e, &b, &img);
        CHECK(st == QI_ERR_ARG && strstr(qi_engine_error(e), bad[i].expect), "case %zu: %d %s", i, st, qi_engine_error(e));
    }
    qi_engine_close(e);
}

int main(int argc, char **argv) {
    qi_error err = {{0}};
    if (argc == 3 && !strcmp(argv[1], "-d")) g_device = argv[2];
    if (strcmp(g_device, "cpu")) { /* bf16 activations: the CUDA bounds */
        tol_encoder = 3e-2, tol_stage = 3e-2, tol_image_mean = 3.0, tol_image_max = 64;
    }
    if (qi_backend_create(g_device, 0, (size_t)256 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "%s backend: %s\n", g_device, err.msg);
        return 1;
    }
    RUN(encoder_matches_reference_posterior);
    RUN(encoder_reads_wan_named_file);
    RUN(cases_end_to_end);
    if (!strcmp(g_device, "cpu")) { /* host code: once */
        RUN(posterior_sample_and_draws_match);
        RUN(picture_resize_matches_pil);
        RUN(mask_preprocessing_matches);
        RUN(resize_keeps_constant_pictures);
        RUN(schedule_truncation_matches);
        RUN(odd_picture_files_are_read_or_refused);
        RUN(pictures_in_memory_read_as_files);
        RUN(odd_requests_run_or_fail_cleanly);
    }
    g_be->ops->destroy(g_be);
    TEST_END();
}

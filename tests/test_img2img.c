/*
 * test_img2img.c — img2img and inpainting against diffusers'
 * QwenImageImg2ImgPipeline / QwenImageInpaintPipeline on the tiny model
 * (reference/edit, the subset in tests/data/shared/reference/edit):
 *   - the VAE encoder: posterior mean and logvar of the reference's
 *     preprocessed picture, the posterior sample and its normalisation;
 *   - torch's generator draws in the reference's order.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/vae.h"
#include "sample/rng.h"
#include "test.h"
#include "testdata.h"

#define EDIT_REF QI_SHARED_DIR "/reference/edit"
#define COMFY_VAE QI_TEST_DATA "/../../../shared/reference/formats/comfy_vae.safetensors"

static const char *const CASES[] = {"img2img_s06_lightning8_lora", "img2img_s09_cfg4", "inpaint_s10_cfg4",
                                    "inpaint_s07_lightning8_lora"};

static qi_backend *g_be;

/* One case's tensors file and case.json. */
typedef struct edit_case {
    const char *name;
    qi_st_file *f;
    cJSON *json;
    int H, W, h, w; /* output pixels, latent cells */
} edit_case;

static int edit_case_open(const char *name, edit_case *c) {
    char path[1024];
    memset(c, 0, sizeof *c);
    c->name = name;
    snprintf(path, sizeof path, "%s/%s/tensors.safetensors", EDIT_REF, name);
    c->f = ref_open(path);
    snprintf(path, sizeof path, "%s/%s/case.json", EDIT_REF, name);
    char *text = NULL;
    qi_error err = {{0}};
    c->json = qi_read_text_file(path, &text, NULL, &err) == QI_OK ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(c->json != NULL, "%s unreadable", path);
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
        for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) check_encoder_case(v, CASES[i], 1e-5);
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
    if (st == QI_OK) check_encoder_case(v, CASES[0], 1e-5);
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

int main(void) {
    qi_error err = {{0}};
    if (qi_backend_cpu_create(0, (size_t)256 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    RUN(encoder_matches_reference_posterior);
    RUN(encoder_reads_wan_named_file);
    RUN(posterior_sample_and_draws_match);
    g_be->ops->destroy(g_be);
    TEST_END();
}

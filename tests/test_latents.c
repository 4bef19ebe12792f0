/*
 * test_latents.c — latent packing, initial noise and the VAE input
 * (spec: denoiser.md §3.1–3.3, §3.6; text-and-noise.md §4.1).
 *
 * Claims: seed -> qi_initial_noise reproduces call0.hidden_states of every
 * public case; the initial noise equals the packed torch_randn reference
 * vectors (CPU float32/bf16 exactly, CUDA within 3e-6), also for a batch of 2
 * with an odd 3x5 patch grid; packing puts lat[b, ch, 2r+dy, 2c+dx] at token
 * r·w+c, channel ch·4+dy·2+dx and unpacking inverts it; the final Euler step
 * followed by qi_latents_to_vae_in reproduces vae_in bit for bit.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "io/safetensors.h"
#include "sample/latents.h"
#include "sample/rng.h"
#include "test.h"
#include "testdata.h"

typedef struct public_case {
    const char *name;
    uint64_t seed;
    int batch, height, width, steps;
    int lightning; /* cfg 1: the last call's noise_pred is the step's velocity */
} public_case;

/* Seeds and sizes as in each case.json (checked against it below). */
static const public_case CASES[] = {
    {"en_lightning8_lora", 42, 1, 96, 128, 8, 1},
    {"zh_cfg4_base", 1234, 1, 128, 64, 4, 0},
    {"batch2_lightning4_lora", 5, 2, 64, 64, 4, 1},
};

static void case_table_matches_case_json(void) {
    for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) {
        const public_case *c = &CASES[i];
        CHECK(ref_case_number(c->name, "seed") == (double)c->seed, "%s seed", c->name);
        CHECK(ref_case_number(c->name, "height") == c->height, "%s height", c->name);
        CHECK(ref_case_number(c->name, "width") == c->width, "%s width", c->name);
        CHECK(ref_case_number(c->name, "steps") == c->steps, "%s steps", c->name);
    }
}

/* ---- initial noise against the pipeline ------------------------------------ */

static void initial_noise_reproduces_call0_hidden_states(void) {
    for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) {
        const public_case *c = &CASES[i];
        qi_st_file *f = ref_case_tensors(c->name);
        if (!f) continue;
        int64_t n = 0;
        float *want = ref_floats(f, "call0.hidden_states", &n);
        qi_latent_shape s;
        qi_error err;
        CHECK(qi_latent_shape_of(c->height, c->width, &s, &err) == QI_OK, "%s", err.msg);
        CHECK(want && n == c->batch * s.per_image, "%s: call0.hidden_states has %lld floats",
              c->name, (long long)n);
        if (want && n == c->batch * s.per_image) {
            float *got = malloc((size_t)n * sizeof *got);
            CHECK(qi_initial_noise(c->seed, QI_RNG_CPU, QI_F32, c->batch, c->height, c->width,
                                   got, &err) == QI_OK,
                  "%s", err.msg);
            double d = qi_max_abs_diff(got, want, (size_t)n);
            printf("  case %s: initial noise vs call0.hidden_states max abs diff = %.3g\n",
                   c->name, d);
            CHECK(memcmp(got, want, (size_t)n * sizeof *got) == 0, "%s: not bit-exact", c->name);
            free(got);
        }
        free(want);
        qi_st_close(f);
    }
}

/* ---- initial noise against torch_randn ------------------------------------------ */

/* key's tensor [B,1,16,H,W] packed, compared with qi_initial_noise. */
static void compare_with_randn_vector(const qi_st_file *f, const char *key, uint64_t seed,
                                      qi_rng_kind rng, qi_dtype dtype, int B, int height,
                                      int width, double tolerance) {
    int64_t n = 0;
    float *lat = ref_floats(f, key, &n);
    CHECK(lat != NULL, "%s missing", key);
    if (!lat) return;
    qi_latent_shape s;
    qi_error err;
    CHECK(qi_latent_shape_of(height, width, &s, &err) == QI_OK, "%s", err.msg);
    CHECK(n == B * s.per_image, "%s has %lld floats", key, (long long)n);
    if (n == B * s.per_image) {
        float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
        qi_latents_pack(lat, B, s.lat_h, s.lat_w, want);
        CHECK(qi_initial_noise(seed, rng, dtype, B, height, width, got, &err) == QI_OK, "%s",
              err.msg);
        double d = qi_max_abs_diff(got, want, (size_t)n);
        printf("  %s (%dx%d px, batch %d): max abs diff = %.3g\n", key, width, height, B, d);
        CHECK(d <= tolerance, "%s: max abs diff %.3g > %.3g", key, d, tolerance);
        free(want);
        free(got);
    }
    free(lat);
}

static void initial_noise_matches_randn_reference(void) {
    qi_st_file *f = ref_randn_open();
    if (!f) return;
    /* [1,1,16,12,16] = 128x96 px; [2,1,16,6,10] = 80x48 px, a 3x5 patch grid */
    compare_with_randn_vector(f, "cpu.float32.seed42.1x1x16x12x16", 42, QI_RNG_CPU, QI_F32, 1,
                              96, 128, 0.0);
    compare_with_randn_vector(f, "cpu.bfloat16.seed0.1x1x16x12x16", 0, QI_RNG_CPU, QI_BF16, 1,
                              96, 128, 0.0);
    compare_with_randn_vector(f, "cpu.float32.seed1234567.2x1x16x6x10", 1234567, QI_RNG_CPU,
                              QI_F32, 2, 48, 80, 0.0);
    compare_with_randn_vector(f, "cpu.bfloat16.seed42.2x1x16x6x10", 42, QI_RNG_CPU, QI_BF16, 2,
                              48, 80, 0.0);
    compare_with_randn_vector(f, "cuda.float32.seed42.1x1x16x128x128", 42, QI_RNG_CUDA, QI_F32,
                              1, 1024, 1024, 3e-6);
    compare_with_randn_vector(f, "cuda.float32.seed0.2x1x16x6x10", 0, QI_RNG_CUDA, QI_F32, 2, 48,
                              80, 3e-6);
    qi_st_close(f);
}

/* ---- packing -------------------------------------------------------------------- */

static void fill_distinct(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)i; /* every value names its index */
}

/* Packs a [B,16,H,W] tensor whose values are their own flat index and checks
 * every packed element against the formula, then the round trip. */
static void check_pack_layout(int B, int height, int width) {
    qi_latent_shape s;
    qi_error err;
    CHECK(qi_latent_shape_of(height, width, &s, &err) == QI_OK, "%s", err.msg);
    const int64_t n = B * s.per_image;
    float *lat = malloc((size_t)n * sizeof *lat), *packed = malloc((size_t)n * sizeof *packed),
          *back = malloc((size_t)n * sizeof *back);
    fill_distinct(lat, n);
    qi_latents_pack(lat, B, s.lat_h, s.lat_w, packed);
    int64_t wrong = 0;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < s.grid_h; r++)
            for (int c = 0; c < s.grid_w; c++)
                for (int ch = 0; ch < 16; ch++)
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) {
                            int64_t src = (((int64_t)b * 16 + ch) * s.lat_h + 2 * r + dy) *
                                              s.lat_w + 2 * c + dx;
                            int64_t dst = ((int64_t)b * s.tokens + (int64_t)r * s.grid_w + c) *
                                              64 + ch * 4 + dy * 2 + dx;
                            if (packed[dst] != (float)src) wrong++;
                        }
    CHECK(wrong == 0, "%dx%d batch %d: %lld packed elements misplaced", width, height, B,
          (long long)wrong);
    qi_latents_unpack(packed, B, s.lat_h, s.lat_w, back);
    CHECK(memcmp(back, lat, (size_t)n * sizeof *lat) == 0, "%dx%d batch %d: round trip differs",
          width, height, B);
    free(lat);
    free(packed);
    free(back);
}

static void pack_layout_and_round_trip(void) {
    check_pack_layout(1, 64, 64);
    check_pack_layout(2, 96, 128);
}

static void odd_patch_grids(void) {
    check_pack_layout(1, 48, 80);   /* 3x5 patches */
    check_pack_layout(3, 16, 16);   /* 1x1 */
    check_pack_layout(1, 80, 16);   /* 5x1 */
    check_pack_layout(2, 1328 / 8, 1328 / 8); /* 10x10, small stand-in */
    check_pack_layout(1, 1328, 1328); /* 83x83, the official square size */
}

static void geometry_floors_and_rejects(void) {
    qi_latent_shape s;
    qi_error err;
    CHECK(qi_latent_shape_of(1000, 1000, &s, &err) == QI_OK, "%s", err.msg);
    CHECK(s.grid_h == 62 && s.lat_h == 124 && s.tokens == 62 * 62, "1000 px -> 62 patches");
    CHECK(qi_latent_shape_of(1664, 928, &s, &err) == QI_OK, "%s", err.msg);
    CHECK(s.grid_h == 104 && s.grid_w == 58 && s.tokens == 6032, "1664x928 (h x w) -> 6032 tokens");
    CHECK(qi_latent_shape_of(8, 64, &s, &err) == QI_ERR_ARG, "8 px accepted");
    CHECK(strstr(err.msg, "16") != NULL, "message says the minimum: %s", err.msg);
    float out[64];
    CHECK(qi_initial_noise(1, QI_RNG_CPU, QI_F32, 0, 16, 16, out, &err) == QI_ERR_ARG,
          "batch 0 accepted");
    CHECK(qi_initial_noise(1, QI_RNG_CPU, QI_I32, 1, 16, 16, out, &err) == QI_ERR_ARG,
          "int32 noise accepted");
    CHECK(qi_initial_noise(1, (qi_rng_kind)7, QI_F32, 1, 16, 16, out, &err) == QI_ERR_ARG,
          "unknown generator accepted");
}

/* ---- VAE input ---------------------------------------------------------------- */

static int read_vae_stats(float *mean, float *std) {
    cJSON *root = NULL;
    qi_error err;
    if (qi_json_load(QI_REF_MODEL "/vae/config.json", &root, &err) != QI_OK) return -1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "latents_mean");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "latents_std");
    int ok = cJSON_GetArraySize(m) == 16 && cJSON_GetArraySize(s) == 16;
    for (int i = 0; ok && i < 16; i++) {
        mean[i] = (float)cJSON_GetArrayItem(m, i)->valuedouble; /* torch.tensor(list): float32 */
        std[i] = (float)cJSON_GetArrayItem(s, i)->valuedouble;
    }
    cJSON_Delete(root);
    return ok ? 0 : -1;
}

/* Lightning cases (cfg 1): x_final = x_last + (0 - sigma_last)·v_last, then
 * unpack and un-normalise must give vae_in exactly. */
static void vae_in_from_final_latents(void) {
    float mean[16], std[16];
    CHECK(read_vae_stats(mean, std) == 0, "cannot read the tiny VAE config");
    for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) {
        const public_case *c = &CASES[i];
        if (!c->lightning) continue;
        qi_st_file *f = ref_case_tensors(c->name);
        if (!f) continue;
        char key[64];
        int64_t n = 0, nv = 0, ns = 0, nz = 0;
        snprintf(key, sizeof key, "call%d.hidden_states", c->steps - 1);
        float *x = ref_floats(f, key, &n);
        snprintf(key, sizeof key, "call%d.noise_pred", c->steps - 1);
        float *v = ref_floats(f, key, &nv);
        float *sigmas = ref_floats(f, "sigmas", &ns);
        float *want = ref_floats(f, "vae_in", &nz);
        CHECK(x && v && sigmas && want && n == nv && n == nz && ns == c->steps + 1,
              "%s: reference tensors missing or mis-sized", c->name);
        if (x && v && sigmas && want && n == nv && n == nz && ns == c->steps + 1) {
            const float dt = sigmas[c->steps] - sigmas[c->steps - 1];
            for (int64_t k = 0; k < n; k++) x[k] = x[k] + dt * v[k];
            float *got = malloc((size_t)n * sizeof *got);
            qi_latents_to_vae_in(x, c->batch, c->height, c->width, mean, std, got);
            double d = qi_max_abs_diff(got, want, (size_t)n);
            printf("  case %s: vae_in max abs diff = %.3g\n", c->name, d);
            CHECK(memcmp(got, want, (size_t)n * sizeof *got) == 0, "%s: vae_in not bit-exact",
                  c->name);
            free(got);
        }
        free(x);
        free(v);
        free(sigmas);
        free(want);
        qi_st_close(f);
    }
}

int main(void) {
    RUN(case_table_matches_case_json);
    RUN(initial_noise_reproduces_call0_hidden_states);
    RUN(initial_noise_matches_randn_reference);
    RUN(pack_layout_and_round_trip);
    RUN(odd_patch_grids);
    RUN(geometry_floors_and_rejects);
    RUN(vae_in_from_final_latents);
    TEST_END();
}

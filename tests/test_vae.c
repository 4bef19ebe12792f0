/*
 * test_vae.c — the VAE decoder against the reference tensors of the tiny
 * model (spec vae-and-formats.md A.12), the pixel conversion against the
 * reference `image_u8` / `image_float`, the banded upsample and the tiled
 * decode against the plain decode, and the loader's errors.
 *
 * QI_VAE_BENCH=1 also decodes a 1024×1024 image (random latents) and prints
 * its time and the process peak RSS.
 */
#define _DEFAULT_SOURCE /* realpath, mkdtemp, symlink */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "image_check.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/vae.h"
#include "test.h"
#include "testdata.h"
#include "vae_tiling.h"

#define VAE_DIR QI_TEST_DATA "/tiny-model/vae"
/* ComfyUI's VAE file (Wan 2.1 names) of the same weights, among the format
 * fixtures (../shared/reference/formats beside this checkout; skipped,
 * saying so, where absent). */
#define COMFY_VAE QI_TEST_DATA "/../../../shared/reference/formats/comfy_vae.safetensors"

static qi_backend *g_be;
static qi_vae *g_vae;
static qi_source *g_src; /* g_vae's weights */

/* Opens the folder as a source and loads its VAE; *src stays open for *v
 * (close it after qi_vae_free). */
static qi_status load_folder(const char *dir, qi_source **src, qi_vae **v, qi_error *err) {
    *v = NULL;
    qi_status st = qi_source_open_folder(dir, QI_COMPONENT_VAE, src, err);
    if (st == QI_OK) st = qi_vae_load(*src, g_be, v, err);
    return st;
}

static const char *const CASES[] = {"zh_cfg4_base", "en_lightning8_lora", "batch2_lightning4_lora"};

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

/* One reference case's VAE tensors, copied out of the mapping. */
typedef struct ref_case {
    int B, h, w, H, W;     /* images, latent and pixel sizes */
    float *vae_in;         /* [B, 16, 1, h, w] */
    float *vae_out;        /* [B, 3, 1, H, W] (clamped) */
    float *image_float;    /* [B, H, W, 3] */
    uint8_t *image_u8;     /* [B, H, W, 3] */
} ref_case;

static void *copy_tensor(const qi_st_set *s, const char *name, int ndim, int64_t *shape_out) {
    qi_error err;
    const qi_st_tensor *t;
    int64_t any[5] = {-1, -1, -1, -1, -1};
    if (qi_st_get_any(s, name, ndim, any, &t, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    for (int i = 0; i < ndim; i++) shape_out[i] = t->shape[i];
    void *p = malloc(t->nbytes);
    if (p) memcpy(p, t->data, t->nbytes);
    return p;
}

static int load_case(const char *name, ref_case *rc) {
    memset(rc, 0, sizeof *rc);
    char path[512];
    snprintf(path, sizeof path, "%s/cases/%s/tensors.safetensors", QI_TEST_DATA, name);
    qi_st_set *s;
    qi_error err;
    if (qi_st_set_open_file(path, &s, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    int64_t in_shape[5], out_shape[5], f_shape[4], u_shape[4];
    rc->vae_in = copy_tensor(s, "vae_in", 5, in_shape);
    rc->vae_out = copy_tensor(s, "vae_out", 5, out_shape);
    rc->image_float = copy_tensor(s, "image_float", 4, f_shape);
    rc->image_u8 = copy_tensor(s, "image_u8", 4, u_shape);
    qi_st_set_close(s);
    if (!rc->vae_in || !rc->vae_out || !rc->image_float || !rc->image_u8) return -1;
    rc->B = (int)in_shape[0];
    rc->h = (int)in_shape[3];
    rc->w = (int)in_shape[4];
    rc->H = (int)out_shape[3];
    rc->W = (int)out_shape[4];
    return 0;
}

static void free_case(ref_case *rc) {
    free(rc->vae_in);
    free(rc->vae_out);
    free(rc->image_float);
    free(rc->image_u8);
}

/* Decodes image b of a case; returns a malloc'd [3, H, W] or NULL. */
static float *decode_image(const ref_case *rc, int b, double *seconds) {
    size_t lat = (size_t)16 * rc->h * rc->w, px = (size_t)3 * rc->H * rc->W;
    float *rgb = malloc(sizeof(float) * px);
    qi_error err;
    double t0 = qi_now_s();
    qi_status st = qi_vae_decode(g_vae, rc->vae_in + b * lat, rc->h, rc->w, rgb, &err);
    if (seconds) *seconds = qi_now_s() - t0;
    CHECK(st == QI_OK, "%s", err.msg);
    if (st) {
        free(rgb);
        return NULL;
    }
    return rgb;
}

/* ---- claims -------------------------------------------------------------------- */

static void test_load_reads_config(void) {
    CHECK(qi_vae_z_dim(g_vae) == 16, "z_dim %d", qi_vae_z_dim(g_vae));
    CHECK(qi_vae_scale_factor(g_vae) == 8, "scale %d", qi_vae_scale_factor(g_vae));
    const float *mean = qi_vae_latents_mean(g_vae), *std = qi_vae_latents_std(g_vae);
    CHECK(mean[0] == -0.7571f && mean[15] == -0.2921f, "mean %g .. %g", mean[0], mean[15]);
    CHECK(std[0] == 2.8184f && std[15] == 1.916f, "std %g .. %g", std[0], std[15]);
}

static void test_decode_matches_reference_vae_out(void) {
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    for (size_t ci = 0; ci < QI_ARRAY_LEN(CASES); ci++) {
        ref_case rc;
        CHECK(load_case(CASES[ci], &rc) == 0, "case %s", CASES[ci]);
        for (int b = 0; b < rc.B; b++) {
            double sec;
            float *rgb = decode_image(&rc, b, &sec);
            if (!rgb) continue;
            size_t px = (size_t)3 * rc.H * rc.W;
            double rel = qi_rel_l2(rgb, rc.vae_out + b * px, px);
            double mx = qi_max_abs_diff(rgb, rc.vae_out + b * px, px);
            printf("  case %s image %d (%dx%d): vae_out rel L2 = %.3g, max abs = %.3g, decode %.3f s\n",
                   CASES[ci], b, rc.W, rc.H, rel, mx, sec);
            CHECK(rel <= 1e-4, "case %s image %d: rel L2 %.3g", CASES[ci], b, rel);
            free(rgb);
        }
        free_case(&rc);
    }
    printf("  peak RSS after the reference decodes: %.1f MB\n", peak_rss_mb());
}

/* The conversion applied to the reference vae_out must give the reference
 * image_float and image_u8 (spec A.7: clamp(x·0.5+0.5), ×255, half to even). */
static void test_pixels_of_reference_vae_out_match_image_u8(void) {
    for (size_t ci = 0; ci < QI_ARRAY_LEN(CASES); ci++) {
        ref_case rc;
        CHECK(load_case(CASES[ci], &rc) == 0, "case %s", CASES[ci]);
        for (int b = 0; b < rc.B; b++) {
            size_t px = (size_t)3 * rc.H * rc.W;
            float *unit = malloc(sizeof(float) * px);
            uint8_t *u8 = malloc(px);
            qi_rgb_to_unit(rc.vae_out + b * px, rc.H, rc.W, unit);
            qi_rgb_to_u8(rc.vae_out + b * px, rc.H, rc.W, u8);
            double fmax = qi_max_abs_diff(unit, rc.image_float + b * px, px);
            size_t mismatches = 0;
            for (size_t i = 0; i < px; i++) mismatches += u8[i] != rc.image_u8[b * px + i];
            printf("  case %s image %d: image_float max abs = %.3g, image_u8 mismatches %zu of %zu\n",
                   CASES[ci], b, fmax, mismatches, px);
            CHECK(fmax == 0, "image_float differs by %.3g", fmax);
            CHECK(mismatches == 0, "%zu u8 values differ", mismatches);
            free(unit);
            free(u8);
        }
        free_case(&rc);
    }
}

static void test_pixels_of_decode_match_image_u8(void) {
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    for (size_t ci = 0; ci < QI_ARRAY_LEN(CASES); ci++) {
        ref_case rc;
        CHECK(load_case(CASES[ci], &rc) == 0, "case %s", CASES[ci]);
        for (int b = 0; b < rc.B; b++) {
            float *rgb = decode_image(&rc, b, NULL);
            if (!rgb) continue;
            size_t px = (size_t)3 * rc.H * rc.W;
            uint8_t *u8 = malloc(px);
            qi_rgb_to_u8(rgb, rc.H, rc.W, u8);
            int dmax = 0;
            double dsum = 0;
            size_t diff = 0;
            for (size_t i = 0; i < px; i++) {
                int d = abs((int)u8[i] - (int)rc.image_u8[b * px + i]);
                dmax = d > dmax ? d : dmax;
                dsum += d;
                diff += d != 0;
            }
            printf("  case %s image %d: image_u8 from our decode: %zu of %zu differ, max %d, mean %.2g\n",
                   CASES[ci], b, diff, px, dmax, dsum / (double)px);
            CHECK(dmax <= 2 && dsum / (double)px <= 0.5, "max %d mean %g", dmax, dsum / (double)px);
            free(u8);
            free(rgb);
        }
        free_case(&rc);
    }
}

/* qi_vae_decode_u8 (what the engine's decode stage runs) gives the bytes
 * qi_rgb_to_u8 makes of qi_vae_decode's floats, whole and in tiles, and
 * counts no bad value in a finite decode; a NaN latent is counted (whole-image
 * attention carries it to every pixel). */
static void test_decode_u8_is_u8_of_decode(void) {
    ref_case rc;
    CHECK(load_case("en_lightning8_lora", &rc) == 0, "case");
    size_t px = (size_t)3 * rc.H * rc.W;
    uint8_t *want = malloc(px), *got = malloc(px);
    qi_error err;
    const qi_vae_tile_mode modes[2] = {QI_VAE_TILE_OFF, QI_VAE_TILE_ON};
    for (int m = 0; m < 2; m++) {
        set_tiling(g_vae, modes[m], 8, 6, 0);
        float *rgb = decode_image(&rc, 0, NULL);
        if (!rgb) continue;
        qi_rgb_to_u8(rgb, rc.H, rc.W, want);
        int64_t bad = -1;
        memset(got, 0xAB, px);
        qi_status st = qi_vae_decode_u8(g_vae, rc.vae_in, rc.h, rc.w, got, &bad, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        size_t differ = 0;
        for (size_t i = 0; i < px; i++) differ += got[i] != want[i];
        printf("  %s: decode_u8 vs u8 of decode: %zu of %zu bytes differ, %lld non-finite\n",
               m ? "tiled 8/6" : "whole", differ, px, (long long)bad);
        CHECK(differ == 0 && bad == 0, "%s: %zu bytes differ, %lld non-finite", m ? "tiled" : "whole", differ,
              (long long)bad);
        free(rgb);
    }
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    size_t lat = (size_t)16 * rc.h * rc.w;
    float *z = malloc(sizeof(float) * lat);
    memcpy(z, rc.vae_in, sizeof(float) * lat);
    z[lat / 2] = NAN;
    int64_t bad = 0;
    CHECK(qi_vae_decode_u8(g_vae, z, rc.h, rc.w, got, &bad, &err) == QI_OK, "%s", err.msg);
    CHECK(bad > 0 && bad <= (int64_t)px, "a NaN latent: %lld non-finite values counted", (long long)bad);
    CHECK(qi_vae_decode_u8(g_vae, z, rc.h, rc.w, got, NULL, &err) == QI_ERR_ARG, "a NULL count is refused");
    free(z);
    free(want);
    free(got);
    free_case(&rc);
}

/* The upsample step in bands of two output rows and the attention one query
 * row at a time equal the one-shot steps. */
static void test_banded_upsample_and_attention_equal_whole(void) {
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    ref_case rc;
    CHECK(load_case("zh_cfg4_base", &rc) == 0, "case");
    float *whole = decode_image(&rc, 0, NULL);
    qi_vae_set_band_bytes(g_vae, 1); /* smallest bands: 2 output rows, 1 query row */
    float *banded = decode_image(&rc, 0, NULL);
    qi_vae_set_band_bytes(g_vae, 0);
    if (whole && banded) {
        size_t px = (size_t)3 * rc.H * rc.W;
        double rel = qi_rel_l2(banded, whole, px);
        printf("  banded vs whole upsample and attention: rel L2 = %.3g\n", rel);
        CHECK(rel <= 1e-5, "rel L2 %.3g (f32 summation order only)", rel);
    }
    free(whole);
    free(banded);
    free_case(&rc);
}

/* diffusers' tiled_decode written out plainly (spec A.9), from per-tile
 * decodes through the public untiled path: all tiles first, then in
 * row-major order blend each with the tile above and the tile to the left
 * (as those stand after their own blends), keep the top-left stride² px.
 * Valid as a reference while no tile value reaches the ±1 clamp. */
static float *compose_tiles(const ref_case *rc, int T, int S, int *clamped) {
    int f = 8, h = rc->h, w = rc->w, H = rc->H, W = rc->W, blend = f * (T - S);
    int nr = (h + S - 1) / S, nc = (w + S - 1) / S;
    float **tile = calloc((size_t)(nr * nc), sizeof(float *));
    int *th = calloc((size_t)nr, sizeof(int)), *tw = calloc((size_t)nc, sizeof(int));
    float *out = malloc(sizeof(float) * 3 * H * W), *zt = malloc(sizeof(float) * 16 * T * T);
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    *clamped = 0;
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) {
            int i = r * S, j = c * S;
            th[r] = (h - i < T ? h - i : T);
            tw[c] = (w - j < T ? w - j : T);
            for (int ch = 0; ch < 16; ch++)
                for (int y = 0; y < th[r]; y++)
                    for (int x = 0; x < tw[c]; x++)
                        zt[(ch * th[r] + y) * tw[c] + x] = rc->vae_in[(ch * h + i + y) * w + j + x];
            float *t = tile[r * nc + c] = malloc(sizeof(float) * 3 * f * th[r] * f * tw[c]);
            qi_error err;
            CHECK(qi_vae_decode(g_vae, zt, th[r], tw[c], t, &err) == QI_OK, "%s", err.msg);
            for (int k = 0; k < 3 * f * th[r] * f * tw[c]; k++) *clamped += fabsf(t[k]) >= 1.0f;
        }
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) {
            float *b = tile[r * nc + c];
            int bh = f * th[r], bw = f * tw[c];
            if (r > 0) { /* blend_v with the tile above */
                float *a = tile[(r - 1) * nc + c];
                int ah = f * th[r - 1], e = blend < ah ? blend : ah;
                e = e < bh ? e : bh;
                for (int ch = 0; ch < 3; ch++)
                    for (int y = 0; y < e; y++)
                        for (int x = 0; x < bw; x++)
                            b[(ch * bh + y) * bw + x] = a[(ch * ah + ah - e + y) * bw + x] * (float)(1.0 - (double)y / e) +
                                                        b[(ch * bh + y) * bw + x] * (float)((double)y / e);
            }
            if (c > 0) { /* blend_h with the tile to the left */
                float *a = tile[r * nc + c - 1];
                int aw = f * tw[c - 1], e = blend < aw ? blend : aw;
                e = e < bw ? e : bw;
                for (int ch = 0; ch < 3; ch++)
                    for (int y = 0; y < bh; y++)
                        for (int x = 0; x < e; x++)
                            b[(ch * bh + y) * bw + x] = a[(ch * bh + y) * aw + aw - e + x] * (float)(1.0 - (double)x / e) +
                                                        b[(ch * bh + y) * bw + x] * (float)((double)x / e);
            }
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < bh && y < f * S; y++)
                    for (int x = 0; x < bw && x < f * S; x++)
                        out[(ch * H + r * f * S + y) * W + c * f * S + x] = b[(ch * bh + y) * bw + x];
        }
    for (int k = 0; k < nr * nc; k++) free(tile[k]);
    free(tile);
    free(th);
    free(tw);
    free(zt);
    return out;
}

/* Forced small tiles on a 12×16 latent: the tiled decode is exactly the
 * plainly written diffusers composition of per-tile decodes, and stays near
 * the untiled decode (a random tiny model with whole-image attention has no
 * reason to be seam-free, so "near" is loose). */
static void tiled_case(int T, int S, double max_rel) {
    ref_case rc;
    CHECK(load_case("en_lightning8_lora", &rc) == 0, "case");
    size_t px = (size_t)3 * rc.H * rc.W;
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    float *plain = decode_image(&rc, 0, NULL);
    set_tiling(g_vae, QI_VAE_TILE_ON, T, S, 0);
    CHECK(qi_vae_will_tile(g_vae, rc.h, rc.w), "a 12x16 latent with %d-cell tiles must tile", T);
    double sec;
    float *tiled = decode_image(&rc, 0, &sec);
    int clamped;
    float *composed = compose_tiles(&rc, T, S, &clamped);
    if (plain && tiled) {
        double exact = qi_max_abs_diff(tiled, composed, px);
        double rel = qi_rel_l2(tiled, plain, px);
        uint8_t *a = malloc(px), *b = malloc(px);
        qi_rgb_to_u8(tiled, rc.H, rc.W, a);
        qi_rgb_to_u8(plain, rc.H, rc.W, b);
        double mean;
        pixel_diff(a, b, px, &mean);
        printf("  tiles %d/%d cells (%.3f s): vs plain composition max abs = %.3g; vs untiled rel L2 = "
               "%.3g, mean |u8 diff| = %.2f\n",
               T, S, sec, exact, rel, mean);
        CHECK(clamped == 0, "a tile reached the clamp: the composition is not a valid reference");
        CHECK(exact <= 1e-6, "tiled decode differs from the composition by %.3g", exact);
        CHECK(rel < max_rel && rel > 0, "rel L2 %.3g vs untiled", rel);
        free(a);
        free(b);
    }
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    free(plain);
    free(tiled);
    free(composed);
    free_case(&rc);
}

static void test_tiled_decode_small_tiles(void) { tiled_case(8, 6, 0.4); }
static void test_tiled_decode_larger_tiles(void) { tiled_case(12, 8, 0.2); }

static void test_auto_tiling_follows_the_memory_budget(void) {
    set_tiling(g_vae, QI_VAE_TILE_AUTO, 32, 24, 0);
    size_t need = qi_vae_untiled_bytes(g_vae, 128, 128);
    printf("  untiled arena estimate at 1024x1024 (tiny model): %.1f MB\n", need / 1048576.0);
    CHECK(!qi_vae_will_tile(g_vae, 128, 128), "default budget must not tile the tiny model at 1024^2");
    set_tiling(g_vae, QI_VAE_TILE_AUTO, 32, 24, need - 1);
    CHECK(qi_vae_will_tile(g_vae, 128, 128), "over budget must tile");
    CHECK(!qi_vae_will_tile(g_vae, 32, 32), "a latent of one tile never tiles");
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    CHECK(!qi_vae_will_tile(g_vae, 128, 128), "OFF never tiles");
}

static void test_bad_arguments_are_errors(void) {
    qi_error err;
    float z[16], rgb[3 * 64];
    memset(z, 0, sizeof z);
    CHECK(qi_vae_decode(g_vae, z, 0, 1, rgb, &err) == QI_ERR_ARG, "lat_h 0");
    CHECK(strstr(err.msg, "0x1") != NULL, "message: %s", err.msg);
    qi_vae_tiling t = qi_vae_tiling_default();
    t.stride_latent = t.tile_latent + 1;
    CHECK(qi_vae_set_tiling(g_vae, &t, &err) == QI_ERR_ARG, "stride > tile");
    CHECK(strstr(err.msg, "stride_latent") != NULL, "message: %s", err.msg);
    /* a 1×1 latent decodes (8×8 pixels) */
    CHECK(qi_vae_decode(g_vae, z, 1, 1, rgb, &err) == QI_OK, "%s", err.msg);
}

/* A temp vae dir (path in g_tmp) whose config is the tiny one edited by
 * `edit`, weights linked. */
static char g_tmp[64];
static int make_vae_dir(void (*edit)(cJSON *cfg)) {
    cJSON *cfg;
    qi_error err;
    if (qi_json_load(VAE_DIR "/config.json", &cfg, &err)) return -1;
    edit(cfg);
    char *text = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    int rc = text ? tmp_component_dir(g_tmp, sizeof g_tmp, "vae", text, VAE_DIR,
                                      "diffusion_pytorch_model.safetensors")
                  : -1;
    free(text);
    return rc;
}

static void drop_z_dim(cJSON *cfg) { cJSON_DeleteItemFromObject(cfg, "z_dim"); }
static void wider_base_dim(cJSON *cfg) { cJSON_ReplaceItemInObject(cfg, "base_dim", cJSON_CreateNumber(32)); }
static void short_temporal(cJSON *cfg) {
    cJSON_ReplaceItemInObject(cfg, "temperal_downsample", cJSON_CreateArray());
}

static void expect_load_error(void (*edit)(cJSON *), const char *want1, const char *want2) {
    qi_vae *v = NULL;
    qi_error err = {{0}};
    CHECK(make_vae_dir(edit) == 0, "temp dir");
    qi_source *src = NULL;
    qi_status st = load_folder(g_tmp, &src, &v, &err);
    CHECK(st != QI_OK && v == NULL, "load should fail");
    qi_source_close(src);
    CHECK(strstr(err.msg, want1) && strstr(err.msg, want2), "message lacks '%s'/'%s': %s", want1,
          want2, err.msg);
    printf("  -> %s\n", err.msg);
    qi_vae_free(v);
    tmp_remove_tree(g_tmp);
}

static void test_missing_config_key_is_named(void) {
    expect_load_error(drop_z_dim, "z_dim", "config.json");
}

static void test_shape_mismatch_names_tensor(void) {
    expect_load_error(wider_base_dim, "decoder.conv_in.weight", "128");
}

static void test_temporal_list_length_is_checked(void) {
    expect_load_error(short_temporal, "temperal_downsample", "3");
}

static void test_missing_dir_is_an_error(void) {
    qi_vae *v = NULL;
    qi_error err;
    qi_source *src = NULL;
    CHECK(load_folder("/nonexistent/vae", &src, &v, &err) != QI_OK && !v && !src, "load should fail");
    CHECK(strstr(err.msg, "/nonexistent/vae") != NULL, "message: %s", err.msg);
}

/* QI_VAE_BENCH=1: a 1024×1024 decode of random latents, time and peak RSS. */
static void bench_decode_1024(void) {
    if (!getenv("QI_VAE_BENCH")) {
        printf("  (set QI_VAE_BENCH=1 to time a 1024x1024 decode)\n");
        return;
    }
    int h = 128, w = 128;
    float *z = malloc(sizeof(float) * 16 * h * w), *rgb = malloc(sizeof(float) * 3 * 1024 * 1024);
    uint64_t s = 42;
    for (int i = 0; i < 16 * h * w; i++) { /* sum of uniforms: roughly N(0, 1), then de-normalised */
        double u = 0;
        for (int k = 0; k < 12; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            u += (double)(s >> 11) / 9007199254740992.0;
        }
        int c = i / (h * w);
        z[i] = (float)(u - 6.0) * qi_vae_latents_std(g_vae)[c] + qi_vae_latents_mean(g_vae)[c];
    }
    set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
    qi_error err;
    double rss0 = peak_rss_mb(), t0 = qi_now_s();
    qi_status st = qi_vae_decode(g_vae, z, h, w, rgb, &err);
    double sec = qi_now_s() - t0;
    CHECK(st == QI_OK, "%s", err.msg);
    printf("  1024x1024 decode (tiny model, CPU): %.2f s, peak RSS %.1f MB (%.1f MB before), arena "
           "estimate %.1f MB\n",
           sec, peak_rss_mb(), rss0, qi_vae_untiled_bytes(g_vae, h, w) / 1048576.0);
    free(z);
    free(rgb);
}

/* ComfyUI's Wan-named VAE file, opened as a single file (no config.json:
 * the config from its shapes), decodes exactly as the diffusers folder of
 * the same bf16 bytes: the same pixels, and the reference's vae_out. */
static void test_wan_named_file_decodes_as_the_folder(void) {
    if (!qi_file_exists(COMFY_VAE)) {
        printf("  (skipped: %s absent)\n", COMFY_VAE);
        return;
    }
    qi_source *src = NULL;
    qi_vae *v = NULL;
    qi_error err = {{0}};
    qi_status st = qi_source_open(COMFY_VAE, QI_COMPONENT_VAE, &src, &err);
    if (st == QI_OK) st = qi_vae_load(src, g_be, &v, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    ref_case rc;
    if (st == QI_OK && load_case("zh_cfg4_base", &rc) == 0) {
        CHECK(!strcmp(qi_source_naming(src), "Wan 2.1 (ComfyUI)"), "naming %s", qi_source_naming(src));
        CHECK(!memcmp(qi_vae_latents_mean(v), qi_vae_latents_mean(g_vae), 16 * sizeof(float)) &&
                  !memcmp(qi_vae_latents_std(v), qi_vae_latents_std(g_vae), 16 * sizeof(float)),
              "latent statistics differ from the folder's config");
        set_tiling(g_vae, QI_VAE_TILE_OFF, 32, 24, 0);
        float *want = decode_image(&rc, 0, NULL);
        size_t px = (size_t)3 * rc.H * rc.W;
        float *got = malloc(sizeof(float) * px);
        st = qi_vae_decode(v, rc.vae_in, rc.h, rc.w, got, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        if (st == QI_OK && want) {
            double same = qi_max_abs_diff(got, want, px);
            double rel = qi_rel_l2(got, rc.vae_out, px);
            printf("  comfy_vae.safetensors, zh_cfg4_base: vs the folder's decode max abs = %.3g; vs vae_out rel "
                   "L2 = %.3g, max abs = %.3g\n", same, rel, qi_max_abs_diff(got, rc.vae_out, px));
            CHECK(same == 0 && rel <= 1e-4, "max abs %.3g, rel %.3g", same, rel);
        }
        free(want);
        free(got);
        free_case(&rc);
    }
    qi_vae_free(v);
    qi_source_close(src);
}

int main(void) {
    qi_error err;
    if (qi_backend_cpu_create(0, 0, &g_be, &err) || load_folder(VAE_DIR, &g_src, &g_vae, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return 1;
    }
    printf("  peak RSS after load: %.1f MB\n", peak_rss_mb());
    RUN(test_load_reads_config);
    RUN(test_decode_matches_reference_vae_out);
    RUN(test_wan_named_file_decodes_as_the_folder);
    RUN(test_pixels_of_reference_vae_out_match_image_u8);
    RUN(test_pixels_of_decode_match_image_u8);
    RUN(test_decode_u8_is_u8_of_decode);
    RUN(test_banded_upsample_and_attention_equal_whole);
    RUN(test_tiled_decode_small_tiles);
    RUN(test_tiled_decode_larger_tiles);
    RUN(test_auto_tiling_follows_the_memory_budget);
    RUN(test_bad_arguments_are_errors);
    RUN(test_missing_config_key_is_named);
    RUN(test_shape_mismatch_names_tensor);
    RUN(test_temporal_list_length_is_checked);
    RUN(test_missing_dir_is_an_error);
    RUN(bench_decode_1024);
    qi_vae_free(g_vae);
    qi_source_close(g_src);
    g_be->ops->destroy(g_be);
    TEST_END();
}

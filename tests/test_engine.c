/*
 * test_engine.c — claims about the engine's seams (src/engine/): a request
 * becomes a plan with the CLI's messages for every bad argument; warming up
 * changes nothing in the image; the LoRA set can be replaced, cleared, and
 * survives a failing set; images encode in memory to PNG / JPEG / WebP that
 * decode back (PNG exactly) with the parameters text; and the loop on
 * several simulated CPU ranks, now with schedule-mode modulation like one
 * device, gives the one-device image.
 */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdio.h>

#include <jpeglib.h>
#include <png.h>
#include <unistd.h>
#include <webp/decode.h>

#include "engine/plan.h"
#include "image_check.h"
#include "io/safetensors.h"
#include "qwen_image.h"
#include "test.h"

#define MODEL QI_TEST_DATA "/tiny-model"
#define LORA QI_TEST_DATA "/cases/lora.safetensors"

/* ---- plan ---------------------------------------------------------------------------- */

/* One bad field of a good request, and a fragment its message must hold. */
static void refused_plan(qi_request r, const char *want) {
    qi_scheduler_config sched = qi_scheduler_config_lightning();
    qi_plan p;
    qi_error err = {{0}};
    qi_status st = qi_plan_make(&r, &sched, 1, 0, 0, &p, &err);
    CHECK(st == QI_ERR_ARG && strstr(err.msg, want), "expected '%s': %s (%s)", want, qi_status_name(st), err.msg);
    qi_plan_free(&p);
}

static void bad_requests_are_refused_with_the_flag_named(void) {
    qi_request good = qi_request_default();
    good.prompt = "x";
    qi_request r = good;
    r.prompt = NULL;
    refused_plan(r, "no prompt given (-p TEXT)");
    r = good;
    const char *prompts[2] = {"a", NULL};
    r.prompts = prompts;
    r.n_prompts = 0;
    refused_plan(r, "n_prompts 0: must be between 1 and 4096");
    r.n_prompts = 2;
    refused_plan(r, "prompt 1 is NULL");
    r = good;
    r.width = 100;
    refused_plan(r, "size 100x1024: width and height must be positive multiples of 16");
    r.width = 8208;
    refused_plan(r, "at most 8192 pixels a side");
    r = good;
    r.steps = 0;
    refused_plan(r, "--steps 0: must be between 1 and 1000");
    r = good;
    r.cfg = -1;
    refused_plan(r, "--cfg -1: must be a finite number >= 0");
    r = good;
    r.batch = 65;
    refused_plan(r, "--batch 65: must be between 1 and 64");
    r = good;
    r.max_sequence_length = 0;
    refused_plan(r, "max_sequence_length 0: must be between 1 and 1024");
    r = good;
    r.noise_dtype = 3;
    refused_plan(r, "noise dtype: expected auto, f32 or bf16");
    r = good;
    r.rng = (qi_rng_kind)7;
    refused_plan(r, "rng: expected cpu or cuda");
}

static void a_plan_holds_sizes_schedule_batch_and_layout(void) {
    qi_scheduler_config sched = qi_scheduler_config_lightning();
    const char *prompts[3] = {"a", "b", "c"};
    qi_request r = qi_request_default();
    r.prompts = prompts;
    r.n_prompts = 3;
    r.batch = 2;
    r.width = 64;
    r.height = 32;
    r.steps = 4;
    r.cfg = 4.0f;
    r.negative_prompt = " ";
    qi_plan p;
    qi_error err = {{0}};
    REQUIRE(qi_plan_make(&r, &sched, 1, 0, 0, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.batch == 6 && p.n_prompts == 3 && p.per_prompt == 2, "batch %d", p.batch);
    CHECK(p.grid_h == 2 && p.grid_w == 4 && p.img_tokens == 8, "grid %dx%d", p.grid_h, p.grid_w);
    CHECK(p.lat_h == 4 && p.lat_w == 8 && p.packed_ch == 64, "latent %dx%d", p.lat_h, p.lat_w);
    CHECK(p.do_cfg == 1 && p.layout.world == 1 && p.layout.branches == 1 && p.layout.sp_size == 1, "one rank");
    CHECK(p.sigmas[4] == 0.0f && p.sigmas[0] > p.sigmas[1], "sigmas descend to 0");
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 6; b++)
            CHECK(p.t_all[i * 6 + b] == p.timesteps[i] / 1000.0f, "t_all[%d][%d]", i, b);
    qi_plan_free(&p);

    /* layouts over ranks: CFG-parallel x Ulysses with true CFG on an even count, Ulysses otherwise */
    REQUIRE(qi_plan_make(&r, &sched, 4, 4, 32, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.layout.branches == 2 && p.layout.sp_size == 2, "4 ranks with CFG: %d x %d", p.layout.branches,
          p.layout.sp_size);
    qi_plan_free(&p);
    r.negative_prompt = NULL;
    REQUIRE(qi_plan_make(&r, &sched, 4, 4, 32, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.do_cfg == 0 && p.layout.branches == 1 && p.layout.sp_size == 4, "4 ranks without CFG");
    qi_plan_free(&p);
    r.width = r.height = 16; /* one image token for 4 ranks */
    CHECK(qi_plan_make(&r, &sched, 4, 4, 32, &p, &err) == QI_ERR_ARG && strstr(err.msg, "image tokens"), "%s",
          err.msg);
    qi_plan_free(&p);
}

/* ---- warm and LoRA sets -------------------------------------------------------------------- */

static qi_engine *open_tiny(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = MODEL;
    qi_engine *e;
    qi_status st = qi_engine_open(&o, &e);
    CHECK(st == QI_OK, "open: %s", qi_engine_error(e));
    if (st) {
        qi_engine_close(e);
        return NULL;
    }
    return e;
}

static qi_request small_request(void) {
    qi_request r = qi_request_default();
    r.prompt = "a lighthouse at dusk";
    r.width = 32;
    r.height = 48;
    r.steps = 3;
    r.scheduler = "lightning";
    return r;
}

typedef struct step_log {
    int calls, last_step, total;
    float *last; /* the last step's latents (copied) */
    size_t n;
} step_log;

static void on_step_latents(void *user, int step, int total, const qi_image *img) {
    step_log *l = user;
    CHECK(step == l->calls + 1 && total == 3 && img->count == 2 && !img->rgb, "step %d/%d, count %d", step, total,
          img->count);
    l->calls++;
    l->last_step = step;
    memcpy(l->last, img->latents, l->n * sizeof(float));
}

/* The preview hook: called once per step; x0 of the last step (sigma 0) is
 * the final latents bit for bit; the hook changes nothing in the image. */
static void step_latents_end_at_the_final_latents(void) {
    qi_engine *e = open_tiny();
    if (!e) return;
    qi_request r = small_request();
    r.batch = 2;
    qi_image plain = {0}, hooked = {0};
    CHECK(qi_generate(e, &r, &plain) == QI_OK, "%s", qi_engine_error(e));
    step_log log = {0};
    log.n = (size_t)2 * 16 * (48 / 8) * (32 / 8);
    log.last = calloc(log.n, sizeof(float));
    r.step_latents = on_step_latents;
    r.step_latents_user = &log;
    CHECK(qi_generate(e, &r, &hooked) == QI_OK, "%s", qi_engine_error(e));
    CHECK(log.calls == 3, "one call per step: %d", log.calls);
    CHECK(hooked.latents && !memcmp(log.last, hooked.latents, log.n * sizeof(float)),
          "the last step's x0 is the final latents");
    CHECK(plain.rgb && hooked.rgb && same_image(&plain, &hooked), "the hook leaves the image as it is");
    free(log.last);
    qi_image_free(&plain);
    qi_image_free(&hooked);
    qi_engine_close(e);
}

/* The prompt cache: a repeated request skips the text stage and gives the
 * same image bit for bit; another prompt misses; the least recent entry of
 * a full cache is the one that goes; true CFG's negative prompt is part of
 * the key. */
static void prompt_cache_repeats_skip_the_text_stage(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = MODEL;
    o.prompt_cache = 2;
    qi_engine *e = NULL, *plain = open_tiny();
    CHECK(qi_engine_open(&o, &e) == QI_OK, "open: %s", qi_engine_error(e));
    qi_request r = small_request();
    qi_image ref = {0}, img = {0};
    CHECK(plain && qi_generate(plain, &r, &ref) == QI_OK, "plain generate");
    static const struct { const char *prompt, *neg; int cached; } runs[] = {
        {"a lighthouse at dusk", NULL, 0}, {"a lighthouse at dusk", NULL, 1}, {"b", NULL, 0},
        {"a lighthouse at dusk", NULL, 1}, {"c", NULL, 0}, {"b", NULL, 0}, /* b was the least recent */
        {"c", " ", 0}, {"c", " ", 1}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        r.prompt = runs[i].prompt;
        r.negative_prompt = runs[i].neg;
        r.cfg = runs[i].neg ? 4.0f : 1.0f;
        CHECK(qi_generate(e, &r, &img) == QI_OK, "%s", qi_engine_error(e));
        CHECK(qi_engine_timings(e)->text_cached == runs[i].cached, "run %zu (%s): cached %d, expected %d", i,
              runs[i].prompt, qi_engine_timings(e)->text_cached, runs[i].cached);
        if (i == 1 || i == 3) CHECK(same_image(&ref, &img), "run %zu: a hit gives the uncached image bit for bit", i);
        qi_image_free(&img);
    }
    qi_image_free(&ref);
    qi_engine_close(plain);
    qi_engine_close(e);
}

typedef struct load_log {
    int calls, last_step, total;
} load_log;

static int on_load(void *user, const char *stage, int step, int total) {
    load_log *l = user;
    CHECK(!strcmp(stage, "load") && step == l->calls && total == 4, "progress %s %d/%d", stage, step, total);
    l->calls++;
    l->last_step = step;
    l->total = total;
    return 0;
}

static void warm_then_generate_equals_plain_generate(void) {
    qi_engine *a = open_tiny(), *b = open_tiny();
    if (!a || !b) {
        qi_engine_close(a);
        qi_engine_close(b);
        return;
    }
    CHECK(qi_engine_add_lora(a, LORA, 0.7f) == QI_OK && qi_engine_add_lora(b, LORA, 0.7f) == QI_OK, "add LoRA");
    load_log log = {0};
    CHECK(qi_engine_warm(a, on_load, &log) == QI_OK, "warm: %s", qi_engine_error(a));
    CHECK(log.calls == 5 && log.last_step == 4, "one report per component and one at the end: %d", log.calls);
    qi_request r = small_request();
    qi_image ia, ib;
    const qi_timings *t;
    CHECK(qi_generate(a, &r, &ia) == QI_OK, "%s", qi_engine_error(a));
    t = qi_engine_timings(a);
    printf("  warmed: transformer load inside generate %.3f s\n", t->load_s);
    CHECK(qi_generate(b, &r, &ib) == QI_OK, "%s", qi_engine_error(b));
    CHECK(same_image(&ia, &ib), "warm then generate gives the plain generate's image bit for bit");
    CHECK(qi_engine_warm(a, NULL, NULL) == QI_OK, "warming a warm engine: %s", qi_engine_error(a));
    qi_image_free(&ia);
    qi_image_free(&ib);
    qi_engine_close(a);
    qi_engine_close(b);
}

/* A LoRA file whose module names no weight of the model: it reads, but cannot bind. */
static int write_stray_lora(char *dir, char *path, size_t cap) {
    if (!mkdtemp(dir)) return -1;
    snprintf(path, cap, "%s/stray.safetensors", dir);
    static float down[4 * 64], up[128 * 4];
    qi_st_write_item items[2] = {
        {.name = "transformer_blocks.99.attn.to_q.lora_A.weight", .dtype = QI_F32, .ndim = 2, .shape = {4, 64},
         .data = down},
        {.name = "transformer_blocks.99.attn.to_q.lora_B.weight", .dtype = QI_F32, .ndim = 2, .shape = {128, 4},
         .data = up},
    };
    qi_error err;
    return qi_st_write(path, items, 2, &err) ? -1 : 0;
}

static qi_status gen(qi_engine *e, qi_image *img) {
    qi_request r = small_request();
    qi_status st = qi_generate(e, &r, img);
    if (st) memset(img, 0, sizeof *img);
    return st;
}

static void set_loras_replaces_clears_and_survives_a_failing_set(void) {
    char dir[] = "/tmp/qi_engine_XXXXXX", stray[256];
    REQUIRE(write_stray_lora(dir, stray, sizeof stray) == 0, "stray LoRA file");
    qi_engine *e = open_tiny(), *ref = open_tiny();
    if (!e || !ref) {
        qi_engine_close(e);
        qi_engine_close(ref);
        return;
    }
    qi_image plain, lora, ref_lora, img;
    CHECK(gen(e, &plain) == QI_OK, "%s", qi_engine_error(e));
    qi_lora_spec one = {LORA, 1.0f};
    CHECK(qi_engine_set_loras(e, &one, 1) == QI_OK, "%s", qi_engine_error(e));
    CHECK(gen(e, &lora) == QI_OK, "%s", qi_engine_error(e));
    CHECK(qi_engine_add_lora(ref, LORA, 1.0f) == QI_OK && gen(ref, &ref_lora) == QI_OK, "%s", qi_engine_error(ref));
    CHECK(same_image(&lora, &ref_lora), "set_loras gives the add_lora image");
    CHECK(memcmp(lora.rgb, plain.rgb, (size_t)32 * 48 * 3), "the LoRA changes the image");

    CHECK(qi_engine_set_loras(e, NULL, 0) == QI_OK && gen(e, &img) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_image(&img, &plain), "an empty set gives the plain image again");
    qi_image_free(&img);

    CHECK(qi_engine_set_loras(e, &one, 1) == QI_OK, "%s", qi_engine_error(e));
    qi_lora_spec missing = {"/nonexistent/x.safetensors", 1.0f};
    qi_status st = qi_engine_set_loras(e, &missing, 1);
    printf("  a set with a missing file: %s\n", qi_engine_error(e));
    CHECK(st == QI_ERR_IO && strstr(qi_engine_error(e), "LoRA set unchanged"), "%s", qi_engine_error(e));
    CHECK(gen(e, &img) == QI_OK && same_image(&img, &lora), "the previous set stays: %s", qi_engine_error(e));
    qi_image_free(&img);

    qi_lora_spec bad = {stray, 1.0f};
    CHECK(qi_engine_set_loras(e, &bad, 1) == QI_OK, "the stray file reads: %s", qi_engine_error(e));
    st = gen(e, &img);
    printf("  a set that binds nothing: %s\n", qi_engine_error(e));
    CHECK(st == QI_ERR_FORMAT && strstr(qi_engine_error(e), "keeps its previous set"), "%s", qi_engine_error(e));
    CHECK(gen(e, &img) == QI_OK && same_image(&img, &lora), "back to the previous set: %s", qi_engine_error(e));
    qi_image_free(&img);
    qi_image_free(&plain);
    qi_image_free(&lora);
    qi_image_free(&ref_lora);
    qi_engine_close(e);
    qi_engine_close(ref);
    unlink(stray);
    rmdir(dir);
}

/* ---- images in memory ------------------------------------------------------------------------ */

#define IMG_W 40
#define IMG_H 24

/* Two synthetic images: smooth gradients (what lossy codecs keep well). */
static qi_image test_image(void) {
    qi_image img = {.width = IMG_W, .height = IMG_H, .count = 2};
    img.rgb = malloc((size_t)2 * IMG_W * IMG_H * 3);
    for (int k = 0; k < 2; k++)
        for (int y = 0; y < IMG_H; y++)
            for (int x = 0; x < IMG_W; x++) {
                uint8_t *p = img.rgb + (((size_t)k * IMG_H + y) * IMG_W + x) * 3;
                p[0] = (uint8_t)(x * 6), p[1] = (uint8_t)(y * 10), p[2] = (uint8_t)(k ? 200 : 40);
            }
    return img;
}

/* The text of the PNG tEXt chunk with key `key` (walks the chunks). */
static int png_find_text(const uint8_t *b, size_t n, const char *key, char *out, size_t cap) {
    size_t klen = strlen(key);
    for (size_t off = 8; off + 12 <= n;) {
        size_t len = (size_t)b[off] << 24 | (size_t)b[off + 1] << 16 | (size_t)b[off + 2] << 8 | b[off + 3];
        const uint8_t *type = b + off + 4, *data = b + off + 8;
        if (off + 12 + len > n) return -1;
        if (!memcmp(type, "tEXt", 4) && len > klen && !memcmp(data, key, klen) && data[klen] == 0) {
            snprintf(out, cap, "%.*s", (int)(len - klen - 1), (const char *)data + klen + 1);
            return 0;
        }
        off += 12 + len;
    }
    return -1;
}

static void png_in_memory_decodes_to_the_same_pixels_with_parameters(void) {
    qi_image img = test_image();
    const char *params = "a lighthouse\nSteps: 3, Seed: 42";
    uint8_t *bytes = NULL;
    size_t len = 0;
    char err[256] = "";
    REQUIRE(qi_image_encode(&img, 1, QI_IMAGE_PNG, 0, params, &bytes, &len, err, sizeof err) == QI_OK, "%s", err);
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    CHECK(png_image_begin_read_from_memory(&pi, bytes, len), "libpng reads it: %s", pi.message);
    pi.format = PNG_FORMAT_RGB;
    uint8_t px[IMG_W * IMG_H * 3];
    CHECK(pi.width == IMG_W && pi.height == IMG_H && png_image_finish_read(&pi, NULL, px, 0, NULL),
          "%ux%u %s", pi.width, pi.height, pi.message);
    CHECK(!memcmp(px, img.rgb + IMG_W * IMG_H * 3, sizeof px), "image 1's pixels exactly");
    char text[256] = "";
    CHECK(!png_find_text(bytes, len, "parameters", text, sizeof text) && !strcmp(text, params), "tEXt parameters: '%s'",
          text);

    /* the file writer writes those very bytes */
    char dir[] = "/tmp/qi_encode_XXXXXX", path[256];
    REQUIRE(mkdtemp(dir), "temp dir");
    snprintf(path, sizeof path, "%s/one.png", dir);
    CHECK(qi_image_write(&img, 1, path, 0, params, err, sizeof err) == QI_OK, "%s", err);
    FILE *f = fopen(path, "rb");
    uint8_t *file = malloc(len + 1);
    size_t got = f ? fread(file, 1, len + 1, f) : 0;
    if (f) fclose(f);
    CHECK(got == len && !memcmp(file, bytes, len), "the file holds the encoded bytes (%zu vs %zu)", got, len);
    free(file);
    unlink(path);
    rmdir(dir);
    qi_free_bytes(bytes);

    CHECK(qi_image_encode(&img, 2, QI_IMAGE_PNG, 0, NULL, &bytes, &len, err, sizeof err) == QI_ERR_ARG &&
              strstr(err, "image index 2: the result holds 2 image(s)"),
          "%s", err);
    CHECK(qi_image_encode(&img, 0, QI_IMAGE_JPEG, 101, NULL, &bytes, &len, err, sizeof err) == QI_ERR_ARG &&
              strstr(err, "quality 101"),
          "%s", err);
    free(img.rgb);
}

static void jpeg_and_webp_in_memory_decode_close_to_the_pixels(void) {
    qi_image img = test_image();
    const char *params = "a lighthouse\nSteps: 3, Seed: 42";
    uint8_t *bytes = NULL;
    size_t len = 0;
    char err[256] = "";
    REQUIRE(qi_image_encode(&img, 0, QI_IMAGE_JPEG, 95, params, &bytes, &len, err, sizeof err) == QI_OK, "%s", err);
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr jerr;
    d.err = jpeg_std_error(&jerr);
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, bytes, (unsigned long)len);
    jpeg_save_markers(&d, JPEG_COM, 0xFFFF);
    CHECK(jpeg_read_header(&d, TRUE) == JPEG_HEADER_OK, "JPEG header");
    d.out_color_space = JCS_RGB;
    jpeg_start_decompress(&d);
    uint8_t px[IMG_W * IMG_H * 3];
    while (d.output_scanline < d.output_height) {
        JSAMPROW row = px + (size_t)d.output_scanline * IMG_W * 3;
        jpeg_read_scanlines(&d, &row, 1);
    }
    int com = d.marker_list && d.marker_list->marker == JPEG_COM &&
              d.marker_list->data_length == strlen(params) && !memcmp(d.marker_list->data, params, strlen(params));
    CHECK(com, "the JPEG comment holds the parameters");
    jpeg_finish_decompress(&d);
    jpeg_destroy_decompress(&d);
    double md;
    pixel_diff(px, img.rgb, sizeof px, &md);
    printf("  JPEG q95: %zu bytes, mean abs pixel diff %.3f (limit 2)\n", len, md);
    CHECK(d.output_width == IMG_W && md <= 2.0, "JPEG pixels: mean abs diff %.3f", md);
    qi_free_bytes(bytes);

    REQUIRE(qi_image_encode(&img, 0, QI_IMAGE_WEBP, 95, params, &bytes, &len, err, sizeof err) == QI_OK, "%s", err);
    int w = 0, h = 0;
    uint8_t *dec = WebPDecodeRGB(bytes, len, &w, &h);
    CHECK(dec && w == IMG_W && h == IMG_H, "WebP decodes: %dx%d", w, h);
    if (dec) {
        pixel_diff(dec, img.rgb, sizeof px, &md);
        printf("  WebP q95: %zu bytes, mean abs pixel diff %.3f (limit 2)\n", len, md);
        CHECK(md <= 2.0, "WebP pixels: mean abs diff %.3f", md);
        WebPFree(dec);
    }
    qi_free_bytes(bytes);
    free(img.rgb);
}

/* ---- several ranks ------------------------------------------------------------------------------ */

/* True CFG on 2 and 4 simulated CPU ranks (CFG-parallel, CFG-parallel x
 * Ulysses), with the schedule-mode modulation one device uses: the
 * one-device image, within test_pipeline_parallel's limits (max abs pixel
 * diff <= 1, vae_in rel L2 <= 1e-5). */
static void cfg_on_cpu_ranks_gives_the_one_device_image(void) {
    static const char *const devices[3] = {NULL, "cpu,cpu", "cpu,cpu,cpu,cpu"};
    qi_image img[3];
    qi_request r = small_request();
    r.negative_prompt = " ";
    r.cfg = 4.0f;
    r.steps = 4;
    for (int d = 0; d < 3; d++) {
        qi_open_options o = qi_open_options_default();
        o.model_dir = MODEL;
        o.devices = devices[d];
        qi_engine *e;
        qi_status st = qi_engine_open(&o, &e);
        if (!st) st = qi_generate(e, &r, &img[d]);
        CHECK(st == QI_OK, "%s: %s", devices[d] ? devices[d] : "cpu", qi_engine_error(e));
        qi_engine_close(e);
        if (st) return;
    }
    size_t px = (size_t)32 * 48 * 3, lat = (size_t)16 * 6 * 4;
    for (int d = 1; d < 3; d++) {
        int maxd = pixel_diff(img[d].rgb, img[0].rgb, px, NULL);
        double rel = qi_rel_l2(img[d].latents, img[0].latents, lat);
        printf("  %s: pixels max abs diff %d, vae_in rel L2 %.2e%s\n", devices[d], maxd, rel,
               same_image(&img[d], &img[0]) ? " (bit-identical)" : "");
        CHECK(maxd <= 1 && rel <= 1e-5, "%s: max diff %d, rel %.3g", devices[d], maxd, rel);
        qi_image_free(&img[d]);
    }
    qi_image_free(&img[0]);
}

int main(void) {
    RUN(bad_requests_are_refused_with_the_flag_named);
    RUN(a_plan_holds_sizes_schedule_batch_and_layout);
    RUN(warm_then_generate_equals_plain_generate);
    RUN(step_latents_end_at_the_final_latents);
    RUN(prompt_cache_repeats_skip_the_text_stage);
    RUN(set_loras_replaces_clears_and_survives_a_failing_set);
    RUN(png_in_memory_decodes_to_the_same_pixels_with_parameters);
    RUN(jpeg_and_webp_in_memory_decode_close_to_the_pixels);
    RUN(cfg_on_cpu_ranks_gives_the_one_device_image);
    TEST_END();
}

/*
 * test_vram.c — the engine under a device budget (qi_open_options.vram_bytes)
 * on the CPU backend with the tiny model: the plan a budget gets is applied
 * (stage swap: the text encoder freed after each prompt and loaded again;
 * streaming: the transformer's blocks and modulation and the text encoder's
 * layers through slots), every plan gives the unplanned engine's images bit
 * for bit, and budgets or requests that do not fit are refused with the
 * engine still usable.
 *
 * The budgets are found from the engine's own sizes (e->sizes, e->need, with
 * the planner the engine uses), so the claims hold whatever the tiny model's
 * exact sizes are.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "image_check.h"
#include "model/vae.h"
#include "test.h"
#include "vram_plans.h"

#define MIB ((size_t)1 << 20)

/* The unplanned engine's images of two prompts. */
static qi_image ref_a, ref_b;
static void reference_images(void) {
    qi_engine *e = NULL;
    REQUIRE(open_tiny("cpu", 0, -1, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(!e->planned, "no plan on the CPU without a budget");
    CHECK(generate(e, "a red apple on a table", &ref_a) == QI_OK, "%s", qi_engine_error(e));
    CHECK(generate(e, "a blue boat", &ref_b) == QI_OK, "%s", qi_engine_error(e));
    qi_engine_close(e);
}

static void stage_swap_frees_the_text_encoder_and_gives_the_same_images(void) {
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, is_swap);
    REQUIRE(b > 0, "no budget gives the tiny model a stage swap plan");
    qi_engine *e = NULL;
    REQUIRE(open_tiny("cpu", b, -1, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(e->planned && is_swap(&e->plan) && e->plan.dit_evict, "%zu KiB: step %d", b >> 10, e->plan.step);
    CHECK(e->te && e->te_loads == 1, "the text encoder loads at open");
    qi_image a = {0}, c = {0};
    CHECK(generate(e, "a red apple on a table", &a) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_pixels(&a, &ref_a), "first prompt: the image differs from the unplanned engine's");
    CHECK(!e->te && e->te_frees == 1 && e->ranks->dit[0], "after the prompt: text encoder %p, frees %d",
          (void *)e->te, e->te_frees);
    CHECK(generate(e, "a blue boat", &c) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_pixels(&c, &ref_b), "second prompt: the image differs");
    /* loaded again for the second prompt, the transformer freed to make room first */
    CHECK(e->te_loads == 2 && e->te_frees == 2 && e->dit_evictions == 1, "loads %d, frees %d, evictions %d",
          e->te_loads, e->te_frees, e->dit_evictions);
    qi_image_free(&a);
    qi_image_free(&c);
    qi_engine_close(e);
}

static void streaming_everything_gives_the_same_images(void) {
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, streams_everything);
    REQUIRE(b > 0, "no budget makes the tiny model stream every block");
    qi_engine *e = NULL;
    REQUIRE(open_tiny("cpu", b, -1, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(streams_everything(&e->plan), "%zu KiB: step %d, %d blocks resident", b >> 10, e->plan.step,
          e->plan.resident_blocks);
    qi_image a = {0}, c = {0};
    CHECK(generate(e, "a red apple on a table", &a) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_pixels(&a, &ref_a), "the streamed run's image differs from the unplanned engine's");
    REQUIRE(e->ranks->dit[0]);
    CHECK(qi_dit_streamed_blocks(e->ranks->dit[0]) == qi_dit_get_config(e->ranks->dit[0])->num_layers);
    uint64_t staged = qi_dit_staged_bytes(e->ranks->dit[0]);
    CHECK(staged > 0, "the transformer staged %llu bytes", (unsigned long long)staged);
    CHECK(generate(e, "a blue boat", &c) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_pixels(&c, &ref_b), "second prompt: the image differs");
    qi_image_free(&a);
    qi_image_free(&c);
    qi_engine_close(e);
}

/* A budget nothing fits fails open naming --vram; a request beyond any
 * plan fails naming itself, and the next request runs as before. */
static void what_does_not_fit_is_refused_and_the_engine_stays_usable(void) {
    qi_engine *e = NULL;
    CHECK(open_tiny("cpu", 64 * MIB, -1, &e) == QI_ERR_NOMEM, "64 MiB");
    CHECK(strstr(qi_engine_error(e), "--vram") && strstr(qi_engine_error(e), "too small"), "%s", qi_engine_error(e));
    qi_engine_close(e);
    e = NULL;
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, streams_everything);
    REQUIRE(open_tiny("cpu", b, -1, &e) == QI_OK, "%s", qi_engine_error(e));
    qi_request r = qi_request_default();
    r.prompt = "a red apple on a table";
    r.width = r.height = 4096;
    r.batch = 8;
    qi_image img = {0};
    CHECK(qi_generate(e, &r, &img) == QI_ERR_NOMEM, "a request of 8 4096x4096 images under %zu KiB", b >> 10);
    CHECK(strstr(qi_engine_error(e), "4096x4096, 8 images"), "%s", qi_engine_error(e));
    CHECK(generate(e, "a red apple on a table", &img) == QI_OK, "%s", qi_engine_error(e));
    CHECK(same_pixels(&img, &ref_a), "the image after a refused request differs");
    qi_image_free(&img);
    qi_engine_close(e);
}

/* The log lines of an engine, kept for the claims below. */
static qi_test_log g_logs;
static char *const g_log = g_logs.text;

static qi_status open_logged(size_t vram, int edit, qi_engine **e) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = QI_TEST_DATA "/tiny-model";
    o.vram_bytes = vram;
    o.edit = edit;
    o.log = qi_test_log_line;
    o.log_user = &g_logs;
    g_log[0] = 0;
    return qi_engine_open(&o, e);
}

/* The VAE encoder under a budget. An Edit model's plan at open counts a
 * 1024² picture's encode: a roomy budget encodes it whole, a tight one in
 * tiles, and the plan's line says so. An img2img request whose picture's
 * whole encode is over the plan's arena runs, its encode in tiles (the log
 * names it), where the same request in an arena just under the whole
 * encode's estimate would otherwise fail. */
static void a_large_picture_is_encoded_in_tiles_under_a_small_budget(void) {
    qi_engine *e = NULL;
    REQUIRE(open_logged(2048 * MIB, 1, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(e->plan.vae_encode && !e->plan.vae_enc_tiled && strstr(g_log, "encode whole"), "2 GiB: %s", g_log);
    qi_engine_close(e);
    e = NULL;
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, streams_everything);
    REQUIRE(b > 0 && open_logged(b, 1, &e) == QI_OK, "%s", qi_engine_error(e));
    printf("  %zu KiB budget: arena %.1f MiB, a whole 1024² encode %.1f MiB\n", b >> 10,
           (double)e->be->arena_bytes / MIB, (double)qi_vae_encode_untiled_bytes(e->vae, 1024, 1024) / MIB);
    CHECK(e->plan.vae_enc_tiled && strstr(g_log, "encode in tiles"), "%zu KiB: %s", b >> 10, g_log);
    /* the smallest square picture (multiple of 64) whose whole encode is over the arena */
    int side = 64;
    while (qi_vae_encode_untiled_bytes(e->vae, side, side) <= e->be->arena_bytes) side += 64;
    REQUIRE(side <= 1024, "side %d", side);
    uint8_t *px = malloc((size_t)side * side * 3);
    for (int i = 0; i < side * side * 3; i++) px[i] = (uint8_t)((i * 37 + (i / (3 * side)) * 11) & 0xff);
    qi_request r = qi_request_default();
    r.prompt = "a red apple on a table";
    r.width = r.height = side;
    r.steps = 2;
    r.seed = 7;
    r.init_image = px;
    r.init_width = r.init_height = side;
    qi_image img = {0};
    g_log[0] = 0;
    CHECK(qi_generate(e, &r, &img) == QI_OK, "img2img %dx%d: %s", side, side, qi_engine_error(e));
    char want[96];
    snprintf(want, sizeof want, "VAE encode of the %dx%d picture in tiles", side, side);
    CHECK(strstr(g_log, want) != NULL, "log: %s", g_log);
    printf("  img2img %dx%d under %zu KiB: %.*s", side, side, b >> 10, (int)strcspn(strstr(g_log, "VAE encode") ?
           strstr(g_log, "VAE encode") : g_log, "\n") + 1, strstr(g_log, "VAE encode") ? strstr(g_log, "VAE encode") : g_log);
    qi_image_free(&img);
    /* the same request with tiling off: the whole encode does not fit the arena */
    qi_vae_tiling off = qi_vae_tiling_default();
    off.mode = QI_VAE_TILE_OFF;
    qi_error err;
    REQUIRE(qi_vae_set_tiling(e->vae, &off, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_generate(e, &r, &img) == QI_ERR_NOMEM && strstr(qi_engine_error(e), "arena"),
          "a whole encode over the arena must fail: %s", qi_engine_error(e));
    qi_image_free(&img);
    free(px);
    qi_engine_close(e);
}

int main(void) {
    RUN(reference_images);
    RUN(stage_swap_frees_the_text_encoder_and_gives_the_same_images);
    RUN(streaming_everything_gives_the_same_images);
    RUN(what_does_not_fit_is_refused_and_the_engine_stays_usable);
    RUN(a_large_picture_is_encoded_in_tiles_under_a_small_budget);
    qi_image_free(&ref_a);
    qi_image_free(&ref_b);
    TEST_END();
}

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

#include "engine/engine.h"
#include "image_check.h"
#include "test.h"
#include "vram_plans.h"

#define MIB ((size_t)1 << 20)

/* The unplanned engine's images of two prompts. */
static qi_image ref_a, ref_b;
static void reference_images(void) {
    qi_engine *e = NULL;
    REQUIRE(open_tiny("cpu", 0, &e) == QI_OK, "%s", qi_engine_error(e));
    CHECK(!e->planned, "no plan on the CPU without a budget");
    CHECK(generate(e, "a red apple on a table", &ref_a) == QI_OK, "%s", qi_engine_error(e));
    CHECK(generate(e, "a blue boat", &ref_b) == QI_OK, "%s", qi_engine_error(e));
    qi_engine_close(e);
}

static void stage_swap_frees_the_text_encoder_and_gives_the_same_images(void) {
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, is_swap);
    REQUIRE(b > 0, "no budget gives the tiny model a stage swap plan");
    qi_engine *e = NULL;
    REQUIRE(open_tiny("cpu", b, &e) == QI_OK, "%s", qi_engine_error(e));
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
    REQUIRE(open_tiny("cpu", b, &e) == QI_OK, "%s", qi_engine_error(e));
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
    CHECK(open_tiny("cpu", 64 * MIB, &e) == QI_ERR_NOMEM, "64 MiB");
    CHECK(strstr(qi_engine_error(e), "--vram") && strstr(qi_engine_error(e), "too small"), "%s", qi_engine_error(e));
    qi_engine_close(e);
    e = NULL;
    size_t b = budget_where("cpu", 512 * MIB, 64 * MIB, streams_everything);
    REQUIRE(open_tiny("cpu", b, &e) == QI_OK, "%s", qi_engine_error(e));
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

int main(void) {
    RUN(reference_images);
    RUN(stage_swap_frees_the_text_encoder_and_gives_the_same_images);
    RUN(streaming_everything_gives_the_same_images);
    RUN(what_does_not_fit_is_refused_and_the_engine_stays_usable);
    qi_image_free(&ref_a);
    qi_image_free(&ref_b);
    TEST_END();
}

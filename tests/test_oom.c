/*
 * test_oom.c — out of memory is an answer, not a crash. One whole generation
 * of the tiny model through the public API (qi_engine_open, then qi_generate
 * on the CPU backend) is run with allocation k failing (tests/oom_hook.c,
 * linked with --wrap), for k spread over every allocation call a normal run
 * makes. Claims, for every k:
 *   - the call that met the failure returns QI_ERR_NOMEM with a message that
 *     says what ran out (or, where the failure is absorbed, succeeds with the
 *     normal image): no crash, and no leak (the ASan build checks leaks at
 *     exit);
 *   - the engine stays usable: after a failed qi_generate the SAME engine
 *     makes the normal image on the next request; after a failed open a fresh
 *     open does.
 * QI_OOM_SWEEP=all tries every k; QI_OOM_SWEEP=N tries N of them (default 40,
 * evenly spread: about 0.6 s each under ASan, where opening the tiny model's
 * tokenizer dominates, so the test stays under 30 s there).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image_check.h"
#include "oom_hook.h"
#include "qwen_image.h"
#include "test.h"

#define MODEL QI_TEST_DATA "/tiny-model"

/* The second claim's request: inpainting (the VAE encoder, the picture and
 * mask preprocessing and the per-step blend run too). */
static int g_inpaint;
static uint8_t g_picture[24 * 20 * 3], g_mask[7 * 5 * 3];

static qi_request small_request(void) {
    qi_request r = qi_request_default();
    r.prompt = "a lighthouse at dusk";
    r.negative_prompt = " ";
    r.cfg = 4.0f; /* true CFG: the negative prompt's text encoder pass and the CFG combine run too */
    r.width = 16;
    r.height = 16;
    r.steps = 2;
    r.scheduler = "lightning";
    if (g_inpaint) {
        for (size_t i = 0; i < sizeof g_picture; i++) g_picture[i] = (uint8_t)(i * 37);
        for (size_t i = 0; i < sizeof g_mask; i++) g_mask[i] = i % 2 ? 255 : 0;
        r.init_image = g_picture, r.init_width = 24, r.init_height = 20;
        r.mask_image = g_mask, r.mask_width = 7, r.mask_height = 5;
        r.strength = 0.75;
        r.steps = 3;
    }
    return r;
}

static qi_status open_tiny(qi_engine **e) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = MODEL;
    o.threads = 1; /* one thread: the allocation calls come in the same order every run */
    return qi_engine_open(&o, e);
}

/* The normal run: its image, and the allocation calls of open and of the
 * whole run (open + generate). */
typedef struct normal_run {
    qi_image img;
    long open_calls, total_calls;
} normal_run;

static int run_normal(normal_run *n) {
    qi_request r = small_request();
    qi_engine *e = NULL;
    qi_oom_arm(0);
    qi_status st = open_tiny(&e);
    n->open_calls = qi_oom_calls();
    if (!st) st = qi_generate(e, &r, &n->img);
    n->total_calls = qi_oom_calls();
    CHECK(st == QI_OK, "normal run: %s", qi_engine_error(e));
    qi_engine_close(e);
    return st == QI_OK;
}

/* What one k gave, for the summary. */
typedef struct sweep_tally {
    int tried, in_open, in_generate, absorbed, bad_status;
} sweep_tally;

/* A failed call's status and message. */
static void check_answer(long k, const char *where, qi_status st, const char *msg, sweep_tally *t) {
    if (st != QI_ERR_NOMEM) t->bad_status++;
    CHECK(st == QI_ERR_NOMEM, "allocation %ld failing in %s gave %s, not out of memory: %s", k, where,
          qi_status_name(st), msg);
    CHECK(msg && *msg, "allocation %ld failing in %s: no message", k, where);
}

/* The engine e (or a fresh one when e is NULL) makes the normal image. */
static void check_usable(long k, qi_engine *e, const normal_run *n) {
    qi_engine *fresh = NULL;
    qi_request r = small_request();
    qi_image img;
    qi_oom_arm(0);
    if (!e) {
        qi_status st = open_tiny(&fresh);
        CHECK(st == QI_OK, "k=%ld: fresh open after a failed open: %s", k, qi_engine_error(fresh));
        if (st) {
            qi_engine_close(fresh);
            return;
        }
        e = fresh;
    }
    qi_status st = qi_generate(e, &r, &img);
    CHECK(st == QI_OK, "k=%ld: the next request failed: %s", k, qi_engine_error(e));
    if (st == QI_OK) {
        CHECK(same_image(&img, &n->img), "k=%ld: the next request's image differs from the normal run's", k);
        qi_image_free(&img);
    }
    qi_engine_close(fresh);
}

/* The whole run with allocation k failing, then the check that what is left works. */
static void run_failing(long k, const normal_run *n, sweep_tally *t) {
    qi_request r = small_request();
    qi_engine *e = NULL;
    qi_image img;
    t->tried++;
    qi_oom_arm(k);
    qi_status st = open_tiny(&e);
    if (st) {
        t->in_open++;
        check_answer(k, "qi_engine_open", st, qi_engine_error(e), t);
        qi_engine_close(e);
        check_usable(k, NULL, n);
        return;
    }
    st = qi_generate(e, &r, &img);
    int fired = qi_oom_fired();
    qi_oom_arm(0);
    if (st) {
        t->in_generate++;
        check_answer(k, "qi_generate", st, qi_engine_error(e), t);
    } else {
        /* a failure the code absorbs (a fallback) must not change the image */
        CHECK(fired, "k=%ld: the run made fewer allocation calls than the normal run", k);
        CHECK(same_image(&img, &n->img), "k=%ld: a run that absorbed the failure made another image", k);
        t->absorbed++;
        qi_image_free(&img);
    }
    check_usable(k, e, n);
    qi_engine_close(e);
}

/* Which k to try: every one, or `want` spread evenly over 1..total (always
 * the first and the last). */
static long sweep_k(long i, long want, long total) {
    if (want >= total) return i + 1;
    return 1 + (long)((double)i * (double)(total - 1) / (double)(want - 1) + 0.5);
}

static void every_allocation_failure_is_answered_and_the_engine_stays_usable(void) {
    normal_run n;
    memset(&n, 0, sizeof n);
    if (!run_normal(&n)) return;
    const char *env = getenv("QI_OOM_SWEEP");
    long want = g_inpaint ? 20 : 40; /* the inpainting claim adds half again to the test's time */
    if (env && !strcmp(env, "all")) want = n.total_calls;
    else if (env && atol(env) > 1) want = atol(env);
    if (want > n.total_calls) want = n.total_calls;
    sweep_tally t = {0};
    double t0 = (double)clock() / CLOCKS_PER_SEC;
    const char *from = getenv("QI_OOM_FROM"); /* start the sweep at this k (to chase one failure) */
    int verbose = getenv("QI_OOM_VERBOSE") != NULL;
    for (long i = 0; i < want; i++) {
        long k = sweep_k(i, want, n.total_calls);
        if (from && k < atol(from)) continue;
        if (verbose) fprintf(stderr, "  k=%ld\n", k);
        run_failing(k, &n, &t);
    }
    printf("  allocation calls of a normal run: %ld (open %ld, generate %ld); tried %d failing: %d in open, "
           "%d in generate, %d absorbed, %d not QI_ERR_NOMEM; %.1f s CPU\n",
           n.total_calls, n.open_calls, n.total_calls - n.open_calls, t.tried, t.in_open, t.in_generate,
           t.absorbed, t.bad_status, (double)clock() / CLOCKS_PER_SEC - t0);
    qi_image_free(&n.img);
}

static void inpainting_allocation_failures_are_answered_too(void) {
    g_inpaint = 1;
    every_allocation_failure_is_answered_and_the_engine_stays_usable();
    g_inpaint = 0;
}

int main(void) {
    RUN(every_allocation_failure_is_answered_and_the_engine_stays_usable);
    RUN(inpainting_allocation_failures_are_answered_too);
    TEST_END();
}

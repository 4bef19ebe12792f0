/*
 * test_host_pool.c — the streamed weights' host memory (backend/host_pool.h),
 * with a fake pinning (malloc, counted, failing on demand) so it runs without
 * a GPU:
 *   - blocks are 256-byte aligned, do not overlap, and come from a few large
 *     chunks (not one pin per weight);
 *   - the pinned chunks never exceed the budget; what does not fit goes to
 *     ordinary memory; a budget of 0 pins nothing;
 *   - a failed pin is QI_ERR_NOMEM naming what was pinned and the --pinned
 *     that would do;
 *   - a chunk goes back when its last block is freed; destroy frees the rest;
 *   - sizes parse as --pinned gives them.
 */
#include <stdint.h>

#include "backend/host_pool.h"
#include "test.h"

#define MIB ((size_t)1 << 20)

typedef struct fake_pin {
    int pins, unpins, fail_after; /* fail_after >= 0: the pins after that many fail */
    size_t live;                  /* bytes pinned now */
} fake_pin;

static void *fake_pin_fn(void *ctx, size_t bytes, char *why, size_t cap) {
    fake_pin *f = ctx;
    if (f->fail_after >= 0 && f->pins >= f->fail_after) {
        snprintf(why, cap, "fake: locked-memory limit");
        return NULL;
    }
    f->pins++;
    /* page aligned, as cudaHostAlloc's; the size and malloc's pointer kept in front */
    char *raw = malloc(bytes + 4096 + 2 * sizeof(size_t));
    if (!raw) return NULL;
    char *q = (char *)(((uintptr_t)raw + 2 * sizeof(size_t) + 4095) & ~(uintptr_t)4095);
    ((size_t *)q)[-1] = bytes;
    ((char **)q)[-2] = raw;
    f->live += bytes;
    return q;
}

static void fake_unpin_fn(void *ctx, void *q) {
    fake_pin *f = ctx;
    f->unpins++;
    f->live -= ((size_t *)q)[-1];
    free(((char **)q)[-2]);
}

static qi_host_pool *pool_with(fake_pin *f, size_t pinned_max, size_t chunk) {
    qi_host_pool_ops ops = {fake_pin_fn, fake_unpin_fn, f};
    return qi_host_pool_new(&ops, pinned_max, chunk);
}

static void blocks_are_aligned_disjoint_and_share_few_chunks(void) {
    fake_pin f = {.fail_after = -1};
    qi_host_pool *p = pool_with(&f, 64 * MIB, 16 * MIB);
    REQUIRE(p);
    enum { N = 300 };
    static char *blk[N];
    static size_t sz[N];
    qi_error err = {{0}};
    for (int i = 0; i < N; i++) {
        sz[i] = 1 + (size_t)(i * 7919) % 100000; /* odd sizes, 1 B .. 100 kB */
        int pinned = -1;
        REQUIRE(qi_host_pool_alloc(p, sz[i], (void **)&blk[i], &pinned, &err) == QI_OK, "%s", err.msg);
        CHECK(((uintptr_t)blk[i] & 255) == 0, "block %d at %p", i, (void *)blk[i]);
        CHECK(pinned == 1 && qi_host_pool_kind(p, blk[i]) == 1 && qi_host_pool_kind(p, blk[i] + sz[i] - 1) == 1);
        memset(blk[i], i & 0xff, sz[i]);
    }
    for (int i = 0; i < N; i++) { /* no block overwrote another */
        int same = 1;
        for (size_t k = 0; k < sz[i]; k++) same &= (unsigned char)blk[i][k] == (unsigned char)(i & 0xff);
        CHECK(same, "block %d was overwritten", i);
    }
    qi_host_pool_stats s;
    qi_host_pool_stats_get(p, &s);
    /* ~15 MB of blocks: one 16 MiB chunk (two at most), not 300 pins */
    CHECK(f.pins <= 2 && s.chunks == f.pins, "%d pins for %d blocks", f.pins, N);
    int x = 0;
    CHECK(qi_host_pool_kind(p, &x) == -1, "a stack address is not the pool's");
    qi_host_pool_destroy(p);
    CHECK(f.live == 0 && f.unpins == f.pins, "destroy: %zu bytes still pinned", f.live);
}

static void pinned_chunks_stay_within_the_budget_the_rest_is_ordinary(void) {
    const size_t budgets[] = {0, 5 * MIB, 40 * MIB + 4096, 1000 * MIB};
    for (size_t b = 0; b < QI_ARRAY_LEN(budgets); b++) {
        fake_pin f = {.fail_after = -1};
        qi_host_pool *p = pool_with(&f, budgets[b], 16 * MIB);
        REQUIRE(p);
        size_t want_pinned = 0, got_pinned = 0, got_pageable = 0;
        qi_error err = {{0}};
        for (int i = 0; i < 40; i++) { /* 39 × 3 MiB and one 20 MiB (larger than a chunk): 137 MiB */
            size_t bytes = i == 17 ? 20 * MIB : 3 * MIB;
            void *q;
            int pinned;
            REQUIRE(qi_host_pool_alloc(p, bytes, &q, &pinned, &err) == QI_OK, "%s", err.msg);
            CHECK(qi_host_pool_kind(p, q) == pinned);
            *(pinned ? &got_pinned : &got_pageable) += bytes;
            memset(q, 1, bytes);
        }
        want_pinned = budgets[b] < 137 * MIB ? budgets[b] : 137 * MIB;
        qi_host_pool_stats s;
        qi_host_pool_stats_get(p, &s);
        CHECK(s.pinned_held <= budgets[b] && f.live == s.pinned_held, "budget %zu: %zu pinned", budgets[b],
              s.pinned_held);
        CHECK(got_pinned + got_pageable == 137 * MIB);
        /* the budget is used: at most one 3 MiB block's worth per chunk edge left over */
        CHECK(got_pinned + 3 * MIB * (size_t)(s.chunks + 1) >= want_pinned || got_pinned == want_pinned,
              "budget %zu MiB: only %zu MiB pinned", budgets[b] >> 20, got_pinned >> 20);
        if (budgets[b] == 0) CHECK(f.pins == 0 && got_pinned == 0, "a budget of 0 pinned %d chunks", f.pins);
        if (budgets[b] >= 137 * MIB) CHECK(got_pageable == 0, "%zu MiB pageable under a large budget", got_pageable);
        qi_host_pool_destroy(p);
        CHECK(f.live == 0);
    }
}

static void a_failed_pin_names_what_was_pinned_and_the_fix(void) {
    fake_pin f = {.fail_after = 2};
    qi_host_pool *p = pool_with(&f, 1000 * MIB, 8 * MIB);
    REQUIRE(p);
    qi_error err = {{0}};
    void *q;
    int pinned;
    qi_status st = QI_OK;
    for (int i = 0; i < 10 && st == QI_OK; i++) st = qi_host_pool_alloc(p, 6 * MIB, &q, &pinned, &err);
    CHECK(st == QI_ERR_NOMEM, "%d", st);
    CHECK(strstr(err.msg, "16 MiB pinned already") && strstr(err.msg, "--pinned 16M") &&
              strstr(err.msg, "fake: locked-memory limit"), "%s", err.msg);
    /* the pool stays usable: with the budget lowered the next weight goes to ordinary memory */
    qi_host_pool_set_pinned_max(p, 16 * MIB);
    CHECK(qi_host_pool_alloc(p, 6 * MIB, &q, &pinned, &err) == QI_OK && pinned == 0, "%s", err.msg);
    qi_host_pool_destroy(p);
    CHECK(f.live == 0);
}

static void a_chunk_goes_back_with_its_last_block(void) {
    fake_pin f = {.fail_after = -1};
    qi_host_pool *p = pool_with(&f, 64 * MIB, 4 * MIB);
    REQUIRE(p);
    qi_error err = {{0}};
    void *a, *b, *c;
    int pa, pb, pc;
    REQUIRE(!qi_host_pool_alloc(p, MIB, &a, &pa, &err) && !qi_host_pool_alloc(p, MIB, &b, &pb, &err));
    REQUIRE(!qi_host_pool_alloc(p, 5 * MIB, &c, &pc, &err)); /* its own chunk */
    CHECK(f.pins == 2);
    qi_host_pool_free(p, a);
    CHECK(f.unpins == 0 && qi_host_pool_kind(p, b) == 1, "the chunk went while b lives in it");
    qi_host_pool_free(p, b);
    CHECK(f.unpins == 1 && qi_host_pool_kind(p, b) == -1, "the emptied chunk stayed");
    qi_host_pool_stats s;
    qi_host_pool_stats_get(p, &s);
    CHECK(s.chunks == 1 && s.pinned_held == 5 * MIB && s.pinned_used == 5 * MIB, "%d chunks, %zu held", s.chunks,
          s.pinned_held);
    int x;
    qi_host_pool_free(p, &x); /* not ours: ignored */
    qi_host_pool_destroy(p);
    CHECK(f.live == 0 && f.unpins == 2);
}

static void sizes_parse_as_the_flag_gives_them(void) {
    size_t v = 7;
    CHECK(qi_host_pool_parse_size("0", &v) == 0 && v == 0);
    CHECK(qi_host_pool_parse_size("512M", &v) == 0 && v == 512 * MIB);
    CHECK(qi_host_pool_parse_size("1.5G", &v) == 0 && v == 1536 * MIB);
    CHECK(qi_host_pool_parse_size("3GiB", &v) == 0 && v == 3072 * MIB);
    CHECK(qi_host_pool_parse_size("4096", &v) == 0 && v == 4096);
    CHECK(qi_host_pool_parse_size("", &v) == -1 && qi_host_pool_parse_size("-1G", &v) == -1 &&
          qi_host_pool_parse_size("3X", &v) == -1 && qi_host_pool_parse_size("G", &v) == -1);
    CHECK(qi_host_pool_default_max((size_t)64 << 30) == (size_t)32 << 30);
}

int main(void) {
    RUN(blocks_are_aligned_disjoint_and_share_few_chunks);
    RUN(pinned_chunks_stay_within_the_budget_the_rest_is_ordinary);
    RUN(a_failed_pin_names_what_was_pinned_and_the_fix);
    RUN(a_chunk_goes_back_with_its_last_block);
    RUN(sizes_parse_as_the_flag_gives_them);
    TEST_END();
}

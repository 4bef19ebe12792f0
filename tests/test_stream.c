/*
 * test_stream.c — weights streamed from host memory through two slots
 * (backend/weight_stream.h) on the CPU backend, whose stage is a real copy
 * into a slot buffer: what the streamer copies and when, and the tiny
 * transformer run with blocks and modulation streamed, and the tiny text
 * encoder with its layers streamed, giving the resident ones' outputs bit
 * for bit (one code path on every backend).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "backend/weight_stream.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "test.h"

#define TRANSFORMER_DIR QI_TEST_DATA "/tiny-model/transformer"
#define TE_DIR QI_TEST_DATA "/tiny-model/text_encoder"
#define TOKENIZER_DIR QI_TEST_DATA "/tiny-model/tokenizer"

static qi_backend *be;
static qi_source *src;

/* ---- the streamer ---------------------------------------------------------------- */

#define UNITS 5
#define PER_UNIT 3

/* Unit u's tensor k holds the values 1000·u + 100·k + i, length 40 + 8·u + k. */
static float *unit_data(int u, int k, int64_t *len) {
    *len = 40 + 8 * u + k;
    float *p = malloc((size_t)*len * sizeof *p);
    for (int64_t i = 0; i < *len; i++) p[i] = (float)(1000 * u + 100 * k + i);
    return p;
}

static int views_hold(const qi_tensor *v, int u) {
    for (int k = 0; k < PER_UNIT; k++) {
        int64_t len;
        float *want = unit_data(u, k, &len);
        int ok = v[k].ne[0] == len && memcmp(v[k].data, want, (size_t)len * sizeof(float)) == 0;
        free(want);
        if (!ok) return 0;
    }
    return 1;
}

static void streamer_copies_each_unit_once_per_pass_and_prefetches_the_next(void) {
    qi_error err = {{0}};
    qi_tensor w[UNITS][PER_UNIT];
    float *data[UNITS][PER_UNIT];
    size_t unit_bytes[UNITS] = {0};
    qi_wstream *s = NULL;
    REQUIRE(qi_wstream_new(be, UNITS + 1, &s, &err) == QI_OK, "%s", err.msg);
    for (int u = 0; u < UNITS; u++) {
        qi_tensor *ptr[PER_UNIT];
        for (int k = 0; k < PER_UNIT; k++) {
            int64_t len;
            data[u][k] = unit_data(u, k, &len);
            CHECK(be->ops->weight_host(be, &w[u][k], QI_F32, 1, &len, data[u][k], NULL, &err) == QI_OK, "%s", err.msg);
            ptr[k] = &w[u][k];
            unit_bytes[u] = ((unit_bytes[u] + 255) & ~(size_t)255) + (size_t)len * sizeof(float);
        }
        qi_wstream_set_unit(s, u, ptr, PER_UNIT);
    }
    REQUIRE(qi_wstream_alloc(s, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_wstream_slot_bytes(s) == unit_bytes[UNITS - 1], "slot %zu bytes, largest unit %zu",
          qi_wstream_slot_bytes(s), unit_bytes[UNITS - 1]);
    CHECK(!qi_wstream_streams(s, UNITS), "unit %d was never set", UNITS);
    uint64_t per_pass = 0;
    for (int u = 0; u < UNITS; u++) per_pass += unit_bytes[u];
    for (int pass = 0; pass < 3; pass++) {
        uint64_t before = qi_wstream_staged_bytes(s);
        for (int u = 0; u < UNITS; u++) {
            const qi_tensor *v;
            REQUIRE(qi_wstream_take(s, u, (u + 1) % UNITS, &v, &err) == QI_OK, "%s", err.msg);
            CHECK(views_hold(v, u), "pass %d: unit %d's views hold its weights", pass, u);
            CHECK(v[0].data != w[u][0].data, "unit %d is read from a slot, not from host memory", u);
        }
        uint64_t copied = qi_wstream_staged_bytes(s) - before;
        /* pass 0 also prefetches unit 0 for the next pass; later passes find it staged */
        uint64_t want = per_pass + (pass == 0 ? unit_bytes[0] : 0);
        CHECK(copied == want, "pass %d copied %llu bytes, expected %llu", pass, (unsigned long long)copied,
              (unsigned long long)want);
    }
    /* two units held: taking them again copies nothing */
    const qi_tensor *v;
    uint64_t before = qi_wstream_staged_bytes(s);
    CHECK(qi_wstream_take(s, 0, -1, &v, &err) == QI_OK && views_hold(v, 0));
    CHECK(qi_wstream_staged_bytes(s) == before, "unit 0 was held: no copy");
    CHECK(qi_wstream_take(s, UNITS, -1, &v, &err) == QI_ERR_ARG, "an unset unit is refused");
    qi_wstream_free(s);
    for (int u = 0; u < UNITS; u++)
        for (int k = 0; k < PER_UNIT; k++) {
            be->ops->weight_free(be, &w[u][k]);
            free(data[u][k]);
        }
}

/* ---- the transformer ------------------------------------------------------------- */

typedef struct dit_inputs {
    qi_tensor x, ctx, mask, out;
    int B, gh, gw, L;
    float t[2];
} dit_inputs;

/* Two images of a 4×4 patch grid, 7 text tokens (the second prompt's last
 * two are padding), deterministic values. */
static int make_inputs(dit_inputs *in) {
    qi_error err;
    in->B = 2, in->gh = 4, in->gw = 4, in->L = 7;
    int64_t n_img = in->gh * in->gw;
    if (qi_be_act3(be, &in->x, in->B, n_img, 64, &err) || qi_be_act3(be, &in->ctx, in->B, in->L, 64, &err) ||
        qi_be_act3(be, &in->out, in->B, n_img, 64, &err))
        return -1;
    int64_t mne[2] = {in->B, in->L};
    if (be->ops->tensor(be, &in->mask, QI_I32, 2, mne, &err)) return -1;
    float *h = malloc(sizeof(float) * (size_t)(in->B * n_img * 64));
    for (int64_t i = 0; i < in->B * n_img * 64; i++) h[i] = sinf((float)i * 0.37f) * 0.8f;
    be->ops->upload(be, &in->x, h, &err);
    for (int64_t i = 0; i < in->B * in->L * 64; i++) h[i] = cosf((float)i * 0.21f);
    be->ops->upload(be, &in->ctx, h, &err);
    int32_t m[14] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    be->ops->upload(be, &in->mask, m, &err);
    free(h);
    in->t[0] = 0.8f, in->t[1] = 0.8f;
    return 0;
}

/* out of one eager forward into host (B·16·64 floats). */
static qi_status forward(qi_dit *d, dit_inputs *in, float *host, qi_error *err) {
    qi_status st = qi_dit_forward(d, &in->x, &in->ctx, &in->mask, in->t, in->gh, in->gw, &in->out, err);
    return st ? st : be->ops->download(be, &in->out, host, err);
}

/* `steps` runs of a scheduled call (the modulation of every step in one
 * pass) into host [steps][B·16·64]; staged[i]: bytes the streamer copied
 * during step i (select_step and run). */
static qi_status scheduled(qi_dit *d, dit_inputs *in, int steps, float *host, uint64_t *staged, qi_error *err) {
    size_t m0 = be->ops->mark(be), n = (size_t)in->B * 16 * 64;
    float t_all[6] = {0.9f, 0.9f, 0.6f, 0.6f, 0.3f, 0.3f};
    qi_dit_call *c = NULL;
    qi_status st = qi_dit_call_create(d, in->B, in->gh, in->gw, in->L, &c, err);
    if (!st) st = qi_dit_call_set_text_mask(c, &in->mask, err);
    if (!st) st = qi_dit_call_set_schedule(c, t_all, steps, err);
    for (int i = 0; i < steps && !st; i++) {
        uint64_t before = qi_dit_staged_bytes(d);
        st = qi_dit_call_select_step(c, i, err);
        if (!st) st = qi_dit_call_run(c, &in->x, &in->ctx, &in->out, err);
        if (!st) st = be->ops->download(be, &in->out, host + i * n, err);
        staged[i] = qi_dit_staged_bytes(d) - before;
    }
    qi_dit_call_free(c);
    be->ops->reset(be, m0);
    return st;
}

static void streamed_transformer_matches_the_resident_one_bit_for_bit(void) {
    qi_error err = {{0}};
    size_t m0 = be->ops->mark(be);
    dit_inputs in;
    REQUIRE(make_inputs(&in) == 0);
    size_t n = (size_t)in.B * 16 * 64;
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    float *want_s = malloc(3 * n * sizeof *want_s), *got_s = malloc(3 * n * sizeof *got_s);
    uint64_t staged[3];
    qi_dit *ref = NULL;
    REQUIRE(qi_dit_load_resident(src, be, NULL, QI_LORA_AUTO, NULL, &ref, &err) == QI_OK, "%s", err.msg);
    CHECK(!qi_dit_streams(ref) && qi_dit_streamed_blocks(ref) == 0);
    CHECK(forward(ref, &in, want, &err) == QI_OK, "%s", err.msg);
    CHECK(scheduled(ref, &in, 3, want_s, staged, &err) == QI_OK, "%s", err.msg);
    qi_dit_free(ref);
    for (int k = 0; k <= 2; k++)
        for (int mod = 0; mod <= 1; mod++) {
            qi_dit_residency res = {.resident_blocks = k, .mod_resident = mod};
            qi_dit *d = NULL;
            REQUIRE(qi_dit_load_resident(src, be, NULL, QI_LORA_AUTO, &res, &d, &err) == QI_OK, "%s", err.msg);
            CHECK(qi_dit_streamed_blocks(d) == 2 - k && qi_dit_streams(d) == (k < 2 || !mod), "%d resident, mod %d",
                  k, mod);
            CHECK(scheduled(d, &in, 3, got_s, staged, &err) == QI_OK, "%s", err.msg);
            CHECK(memcmp(got_s, want_s, 3 * n * sizeof *got_s) == 0, "%d resident, mod %d: scheduled runs differ",
                  k, mod);
            /* something was copied at the first step when anything streams (the
             * tiny model's 2 blocks and 2 modulation units then stay in the slots) */
            CHECK((staged[0] > 0) == qi_dit_streams(d), "%d resident, mod %d: staged %llu", k, mod,
                  (unsigned long long)staged[0]);
            CHECK(forward(d, &in, got, &err) == QI_OK, "%s", err.msg);
            CHECK(memcmp(got, want, n * sizeof *got) == 0, "%d blocks resident, modulation %s: output differs", k,
                  mod ? "resident" : "streamed");
            qi_dit_free(d);
        }
    free(want);
    free(got);
    free(want_s);
    free(got_s);
    be->ops->reset(be, m0);
}

/* ---- the text encoder -------------------------------------------------------------- */

static void streamed_text_encoder_matches_the_resident_one_bit_for_bit(void) {
    qi_error err = {{0}};
    qi_source *te_src = NULL;
    qi_tokenizer *tok = NULL;
    qi_prompt_batch pb;
    const char *prompts[2] = {"a red apple on a wooden table", "a boat"};
    REQUIRE(qi_source_open_folder(TE_DIR, QI_COMPONENT_TEXT_ENCODER, &te_src, &err) == QI_OK, "%s", err.msg);
    REQUIRE(qi_tokenizer_load(TOKENIZER_DIR, &tok, &err) == QI_OK, "%s", err.msg);
    REQUIRE(qi_prompt_tokenize(tok, prompts, 2, 512, &pb, &err) == QI_OK, "%s", err.msg);
    float *emb[2] = {NULL, NULL};
    int32_t *mask[2] = {NULL, NULL};
    int L[2] = {0, 0};
    for (int stream = 0; stream <= 1; stream++) {
        qi_text_encoder *te = NULL;
        CHECK(qi_text_encoder_load_resident(te_src, be, stream, &te, &err) == QI_OK, "%s", err.msg);
        if (te)
            CHECK(qi_text_encoder_encode(te, pb.ids, pb.mask, pb.batch, pb.seq_len, 512, &emb[stream], &mask[stream],
                                         &L[stream], &err) == QI_OK, "%s", err.msg);
        qi_text_encoder_free(te);
    }
    size_t n = (size_t)2 * L[0] * 64;
    CHECK(L[0] > 0 && L[0] == L[1] && emb[0] && emb[1] && memcmp(emb[0], emb[1], n * sizeof(float)) == 0 &&
              memcmp(mask[0], mask[1], (size_t)2 * L[0] * sizeof(int32_t)) == 0,
          "embeddings with the layers streamed differ (%d vs %d tokens)", L[0], L[1]);
    for (int i = 0; i < 2; i++) {
        free(emb[i]);
        free(mask[i]);
    }
    qi_prompt_batch_free(&pb);
    qi_tokenizer_free(tok);
    qi_source_close(te_src);
}

int main(void) {
    qi_error err;
    if (qi_backend_cpu_create(0, 0, &be, &err) != QI_OK ||
        qi_source_open_folder(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &src, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(streamer_copies_each_unit_once_per_pass_and_prefetches_the_next);
    RUN(streamed_transformer_matches_the_resident_one_bit_for_bit);
    RUN(streamed_text_encoder_matches_the_resident_one_bit_for_bit);
    qi_source_close(src);
    be->ops->destroy(be);
    TEST_END();
}

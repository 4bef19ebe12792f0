/*
 * test_edit_denoise.c — claims about Qwen-Image-Edit's transformer calls and
 * denoising loop against the Edit cases of shared/reference/edit: the
 * condition latents as extra image segments with their own RoPE frame and
 * the text offset over all segments (E8), 2511's zero_cond_t modulation
 * (E9), true CFG on the kept rows (E10), every call's prediction, every
 * step's latents and the final latents, on the CPU backend in float32; the
 * loop replayed from a recorded step gives the eager loop's bits.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "engine/edit.h"
#include "engine/edit_denoise.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"
#include "model/vae.h"
#include "test.h"
#include "testdata.h"

#define LORA_FILE QI_TEST_DATA "/cases/lora.safetensors"

static qi_backend *g_be;
/* `-b cuda` runs the same claims on the CUDA backend (bf16 weights and
 * activations): the float32 bounds widen to g_tol (ctest: <name>_cuda). */
static double g_tol = 1e-4;

typedef struct edit_case {
    const char *name;
    const char *model; /* model-2509 / model-2511 */
    int lora;
} edit_case;

static const edit_case cases[] = {
    {"edit2509_1img_lightning4_lora", "model-2509", 1},
    {"edit2509_2img_cfg4", "model-2509", 0},
    {"edit2511_2img_lightning4_lora", "model-2511", 1},
};

/* Everything one case's claims read. */
typedef struct loaded {
    cJSON *json;
    qi_st_file *f;
    qi_source *src;
    qi_dit *dit;
    qi_dit_cond cond;
    int gh, gw, steps;
    float cfg;
} loaded;

static void unload(loaded *l) {
    qi_dit_free(l->dit);
    qi_source_close(l->src);
    qi_st_close(l->f);
    cJSON_Delete(l->json);
    memset(l, 0, sizeof *l);
}

static int load_case(const edit_case *c, loaded *l) {
    memset(l, 0, sizeof *l);
    char path[1024];
    qi_error err = {{0}};
    l->json = ref_edit_json(c->name);
    l->f = ref_edit_tensors(c->name);
    if (!l->json || !l->f) return -1;
    /* img_shapes [[[1, h, w], ...]]: the output, then each picture */
    const cJSON *shapes = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l->json, "img_shapes"), 0);
    int n = cJSON_GetArraySize(shapes);
    CHECK(n >= 2 && n - 1 <= QI_DIT_MAX_COND, "%s: img_shapes has %d entries", c->name, n);
    if (n < 2) return -1;
    l->gh = cJSON_GetArrayItem(cJSON_GetArrayItem(shapes, 0), 1)->valueint;
    l->gw = cJSON_GetArrayItem(cJSON_GetArrayItem(shapes, 0), 2)->valueint;
    l->cond.n = n - 1;
    for (int k = 1; k < n; k++) {
        l->cond.hw[k - 1][0] = cJSON_GetArrayItem(cJSON_GetArrayItem(shapes, k), 1)->valueint;
        l->cond.hw[k - 1][1] = cJSON_GetArrayItem(cJSON_GetArrayItem(shapes, k), 2)->valueint;
    }
    l->steps = cJSON_GetObjectItemCaseSensitive(l->json, "steps")->valueint;
    l->cfg = (float)cJSON_GetObjectItemCaseSensitive(l->json, "cfg")->valuedouble;
    snprintf(path, sizeof path, "%s/%s/transformer", QI_REF_EDIT, c->model);
    qi_lora_set *loras = NULL;
    qi_status st = qi_source_open_folder(path, QI_COMPONENT_TRANSFORMER, &l->src, &err);
    if (st == QI_OK && c->lora) st = qi_lora_set_add(&loras, LORA_FILE, 1.0f, &err);
    if (st == QI_OK) st = qi_dit_load(l->src, g_be, loras, &l->dit, &err);
    qi_lora_set_free(loras);
    CHECK(st == QI_OK, "%s: %s", c->name, err.msg);
    return st == QI_OK ? 0 : -1;
}

/* A reference float tensor on the backend as [1, rows, cols] (rows·cols = its size). */
static int upload(const qi_st_file *f, const char *name, int64_t rows, qi_tensor *t) {
    int64_t n = 0;
    float *h = ref_floats(f, name, &n);
    CHECK(h && n % rows == 0, "no tensor %s of %lld rows", name, (long long)rows);
    if (!h || n % rows) {
        free(h);
        return -1;
    }
    qi_error err = {{0}};
    int ok = qi_be_act3(g_be, t, 1, rows, n / rows, &err) == QI_OK && g_be->ops->upload(g_be, t, h, &err) == QI_OK;
    free(h);
    CHECK(ok, "%s", err.msg);
    return ok ? 0 : -1;
}

/* ---- claims ---------------------------------------------------------------- */

static void zero_cond_t_is_read_from_the_config(void) {
    qi_source *src = NULL;
    qi_dit_config c;
    qi_error err = {{0}};
    REQUIRE(qi_source_open_folder(QI_REF_EDIT "/model-2511/transformer", QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK,
            "%s", err.msg);
    CHECK(qi_dit_read_config(src, &c, &err) == QI_OK && c.zero_cond_t == 1, "model-2511: zero_cond_t %d (%s)",
          c.zero_cond_t, err.msg);
    qi_source_close(src);
    REQUIRE(qi_source_open_folder(QI_REF_EDIT "/model-2509/transformer", QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK);
    CHECK(qi_dit_read_config(src, &c, &err) == QI_OK && c.zero_cond_t == 0, "model-2509: zero_cond_t %d",
          c.zero_cond_t);
    qi_source_close(src);
}

/* Segment k's tokens sit at frame k, centred; text starts past the largest
 * half-side of all segments (README E8: edit2509_1img max(3, 4, 7, 10) = 10). */
static void rope_positions_of_condition_segments(void) {
    qi_dit_cond cond = {.n = 1, .hw = {{14, 20}}};
    int L = 6 * 8 + 14 * 20, txt = 3;
    int *pos = malloc((size_t)(txt + L) * 3 * sizeof(int));
    qi_dit_rope_positions_cond(6, 8, &cond, txt, pos);
    CHECK(pos[0] == 10 && pos[3] == 11 && pos[6 + 2] == 12, "text positions start at 10: %d %d", pos[0], pos[3]);
    const int *out0 = pos + txt * 3, *cond0 = pos + (txt + 48) * 3, *cond_last = pos + (txt + L - 1) * 3;
    CHECK(out0[0] == 0 && out0[1] == -3 && out0[2] == -4, "output token 0 at (0, -3, -4)");
    CHECK(cond0[0] == 1 && cond0[1] == -7 && cond0[2] == -10, "picture token 0 at (1, -7, -10): (%d, %d, %d)",
          cond0[0], cond0[1], cond0[2]);
    CHECK(cond_last[0] == 1 && cond_last[1] == 6 && cond_last[2] == 9, "last picture token at (1, 6, 9)");
    free(pos);
}

/* call 0 over all tokens (output and condition rows) against the whole
 * transformer output the reference recorded. */
static void call0_all_tokens_match(void) {
    for (size_t ci = 0; ci < QI_ARRAY_LEN(cases); ci++) {
        loaded l;
        if (load_case(&cases[ci], &l) != 0) {
            unload(&l);
            continue;
        }
        size_t mark = g_be->ops->mark(g_be);
        int64_t L = (int64_t)l.gh * l.gw, Lc = 0;
        for (int k = 0; k < l.cond.n; k++) Lc += (int64_t)l.cond.hw[k][0] * l.cond.hw[k][1];
        qi_tensor noisy, cond, ctx, x, out;
        qi_error err = {{0}};
        const qi_st_tensor *pe = qi_st_file_find(l.f, "prompt_embeds");
        int ok = pe && upload(l.f, "call0.noisy_latents", L, &noisy) == 0 &&
                 upload(l.f, "image_latents", Lc, &cond) == 0 && upload(l.f, "prompt_embeds", pe->shape[1], &ctx) == 0;
        ok = ok && qi_be_act3(g_be, &x, 1, L + Lc, 64, &err) == QI_OK && qi_be_act3(g_be, &out, 1, L + Lc, 64, &err) == QI_OK;
        if (ok) {
            qi_tensor x2 = qi_view2(&x, L + Lc, 64), n2 = qi_view2(&noisy, L, 64), c2 = qi_view2(&cond, Lc, 64);
            g_be->ops->copy_rows(g_be, &n2, 0, &x2, 0, L);
            g_be->ops->copy_rows(g_be, &c2, 0, &x2, L, Lc);
            float *t = ref_floats(l.f, "call0.timestep", NULL);
            qi_status st = qi_dit_forward_edit(l.dit, &x, &ctx, NULL, t, l.gh, l.gw, &l.cond, &out, &err);
            CHECK(st == QI_OK, "%s: %s", cases[ci].name, err.msg);
            float *got = malloc((size_t)(L + Lc) * 64 * sizeof(float));
            int64_t n_ref = 0;
            float *ref = ref_floats(l.f, "call0.noise_pred_all_tokens", &n_ref);
            if (st == QI_OK && ref && n_ref == (L + Lc) * 64 && g_be->ops->download(g_be, &out, got, &err) == QI_OK) {
                double rel = qi_rel_l2(got, ref, (size_t)n_ref);
                double rel_out = qi_rel_l2(got, ref, (size_t)(L * 64));
                printf("     %s call 0: all tokens rel L2 %.3g (output rows %.3g)\n", cases[ci].name, rel, rel_out);
                CHECK(rel <= g_tol, "%s: rel L2 %g", cases[ci].name, rel);
            } else {
                CHECK(0, "%s: no comparable reference (%lld values)", cases[ci].name, (long long)n_ref);
            }
            free(t);
            free(got);
            free(ref);
        }
        g_be->ops->reset(g_be, mark);
        unload(&l);
    }
}

typedef struct call_check {
    const qi_st_file *f;
    const char *name;
    int64_t n;
    int calls;
    double worst;
} call_check;

static void on_call(void *user, int call, const float *pred) {
    call_check *c = user;
    char key[64];
    snprintf(key, sizeof key, "call%d.noise_pred", call);
    int64_t n = 0;
    float *ref = ref_floats(c->f, key, &n);
    CHECK(ref && n == c->n, "%s: no %s of %lld values", c->name, key, (long long)c->n);
    if (ref && n == c->n) {
        double rel = qi_rel_l2(pred, ref, (size_t)n);
        if (rel > c->worst) c->worst = rel;
    }
    free(ref);
    c->calls++;
}

/* What a whole-loop claim reads of a case: the packed noise the reference
 * started from ([L, 64], L = gh·gw), the condition latents, both prompts'
 * embeddings (neg NULL without true CFG), the schedule (t already / 1000, as
 * the pipeline passes it to the transformer) and the final latents. */
typedef struct loop_refs {
    float *noise, *cond, *ctx, *neg, *sig, *ts, *fin;
    int64_t n; /* values of noise and fin */
    int ctx_len, neg_len;
} loop_refs;

static void loop_refs_free(loop_refs *r) {
    free(r->noise), free(r->cond), free(r->ctx), free(r->neg), free(r->sig), free(r->ts), free(r->fin);
    memset(r, 0, sizeof *r);
}

/* 0 when every tensor the loop needs is there with the case's sizes. */
static int loop_refs_load(const loaded *l, loop_refs *r) {
    memset(r, 0, sizeof *r);
    r->noise = ref_floats(l->f, "call0.noisy_latents", &r->n);
    r->cond = ref_floats(l->f, "image_latents", NULL);
    r->ctx = ref_floats(l->f, "prompt_embeds", NULL);
    r->neg = ref_floats(l->f, "neg.prompt_embeds", NULL);
    r->sig = ref_floats(l->f, "sigmas", NULL);
    r->ts = ref_floats(l->f, "timesteps", NULL);
    r->fin = ref_floats(l->f, "final_latents", NULL);
    const qi_st_tensor *pe = qi_st_file_find(l->f, "prompt_embeds"), *ne = qi_st_file_find(l->f, "neg.prompt_embeds");
    if (!r->noise || !r->cond || !r->ctx || !r->sig || !r->ts || !r->fin || !pe || r->n != (int64_t)l->gh * l->gw * 64)
        return -1;
    r->ctx_len = (int)pe->shape[1];
    r->neg_len = ne ? (int)ne->shape[1] : 0;
    for (int i = 0; i < l->steps; i++) r->ts[i] /= 1000.0f;
    return 0;
}

/* The loop's arguments for a case (no hooks, the default graph minimum). */
static qi_edit_denoise_args loop_args(const loaded *l, const loop_refs *r) {
    qi_edit_denoise_args a = {.grid_h = l->gh, .grid_w = l->gw, .cond = l->cond, .cond_latents = r->cond,
                              .ctx = r->ctx, .ctx_len = r->ctx_len, .neg_ctx = r->neg, .neg_len = r->neg_len,
                              .cfg = l->cfg, .steps = l->steps, .sigmas = r->sig, .t = r->ts};
    return a;
}

/* The whole loop from the packed noise: every call's kept prediction, and
 * the final latents. */
static void denoising_matches(void) {
    for (size_t ci = 0; ci < QI_ARRAY_LEN(cases); ci++) {
        loaded l;
        if (load_case(&cases[ci], &l) != 0) {
            unload(&l);
            continue;
        }
        loop_refs r;
        REQUIRE(loop_refs_load(&l, &r) == 0, "%s: reference tensors", cases[ci].name);
        int64_t n = r.n;
        float *lat = r.noise, *fin = r.fin; /* the loop runs in place from the noise */
        call_check cc = {.f = l.f, .name = cases[ci].name, .n = n};
        qi_edit_denoise_args a = loop_args(&l, &r);
        a.on_call = on_call;
        a.user = &cc;
        qi_error err = {{0}};
        qi_status st = qi_edit_denoise(l.dit, g_be, &a, lat, &err);
        CHECK(st == QI_OK, "%s: %s", cases[ci].name, err.msg);
        int want_calls = l.steps * (r.neg && l.cfg > 1 ? 2 : 1);
        CHECK(cc.calls == want_calls, "%s: %d transformer calls, the reference made %d", cases[ci].name, cc.calls,
              want_calls);
        double rel = qi_rel_l2(lat, fin, (size_t)n);
        printf("     %s: %d calls, worst call rel L2 %.3g; final latents rel L2 %.3g, max abs %.3g\n", cases[ci].name,
               cc.calls, cc.worst, rel, qi_max_abs_diff(lat, fin, (size_t)n));
        CHECK(cc.worst <= g_tol, "%s: a call's prediction is off by %g", cases[ci].name, cc.worst);
        CHECK(rel <= g_tol, "%s: final latents rel L2 %g", cases[ci].name, rel);
        loop_refs_free(&r);
        unload(&l);
    }
}

/* Without a per-call hook and with graph_min_steps reached, a backend that
 * records graphs runs steps 1.. by replaying the recorded step 1: the final
 * latents are the eager loop's (QI_CUDA_GRAPHS=0) bit for bit, and the
 * reference's within the bound. Fewer steps than the default minimum (the
 * fixtures' 3 and 4) stay eager. On the CPU every run is eager. */
static void recorded_steps_match_eager(void) {
    const int graphs = qi_backend_supports(g_be, QI_CAP_GRAPHS, 0);
    for (size_t ci = 0; ci < 2; ci++) { /* one call per step; two (true CFG) */
        loaded l;
        if (load_case(&cases[ci], &l) != 0) {
            unload(&l);
            continue;
        }
        loop_refs r;
        REQUIRE(loop_refs_load(&l, &r) == 0, "%s: reference tensors", cases[ci].name);
        int64_t n = r.n;
        const float *noise = r.noise, *fin = r.fin;
        float *lat[3] = {malloc((size_t)n * sizeof(float)), malloc((size_t)n * sizeof(float)),
                         malloc((size_t)n * sizeof(float))};
        int replayed[3] = {-1, -1, -1};
        for (int eager = 0; eager < 3; eager++) { /* graphs, QI_CUDA_GRAPHS=0, the default minimum */
            if (eager == 1) setenv("QI_CUDA_GRAPHS", "0", 1);
            memcpy(lat[eager], noise, (size_t)n * sizeof(float));
            qi_edit_denoise_args a = loop_args(&l, &r);
            a.replayed_steps = &replayed[eager];
            a.graph_min_steps = eager == 2 ? 0 : 2;
            qi_error err = {{0}};
            CHECK(qi_edit_denoise(l.dit, g_be, &a, lat[eager], &err) == QI_OK, "%s: %s", cases[ci].name, err.msg);
            unsetenv("QI_CUDA_GRAPHS");
        }
        int64_t differ = 0;
        for (int64_t k = 0; k < n; k++) differ += qi_f32_bits(lat[0][k]) != qi_f32_bits(lat[1][k]);
        double rel = qi_rel_l2(lat[0], fin, (size_t)n);
        printf("     %s: %d of %d steps replayed; %lld of %lld values differ from the eager loop; final rel L2 %.3g\n",
               cases[ci].name, replayed[0], l.steps, (long long)differ, (long long)n, rel);
        CHECK(replayed[0] == (graphs ? l.steps - 1 : 0), "%s: %d steps replayed", cases[ci].name, replayed[0]);
        CHECK(replayed[1] == 0, "QI_CUDA_GRAPHS=0 still replayed %d steps", replayed[1]);
        CHECK(replayed[2] == 0 && l.steps < QI_EDIT_GRAPH_MIN_STEPS, "%d steps (default minimum %d) replayed %d",
              l.steps, QI_EDIT_GRAPH_MIN_STEPS, replayed[2]);
        CHECK(differ == 0, "%s: the recorded loop differs from the eager one in %lld values", cases[ci].name,
              (long long)differ);
        CHECK(rel <= g_tol, "%s: final latents rel L2 %g", cases[ci].name, rel);
        free(lat[0]), free(lat[1]), free(lat[2]);
        loop_refs_free(&r);
        unload(&l);
    }
}

/* zero_cond_t really changes the condition rows' modulation: the 2511 case
 * run through the 2509 transformer (same weights, flag off) misses. */
static void zero_cond_t_matters(void) {
    edit_case wrong = cases[2];
    wrong.model = "model-2509";
    loaded l;
    if (load_case(&wrong, &l) != 0) {
        unload(&l);
        return;
    }
    int64_t L = (int64_t)l.gh * l.gw, n = 0;
    float *lat = ref_floats(l.f, "call0.noisy_latents", &n), *cond = ref_floats(l.f, "image_latents", NULL);
    float *ctx = ref_floats(l.f, "prompt_embeds", NULL), *sig = ref_floats(l.f, "sigmas", NULL);
    float *ts = ref_floats(l.f, "timesteps", NULL), *ref = ref_floats(l.f, "call0.noise_pred", NULL);
    if (ts) ts[0] /= 1000.0f;
    const qi_st_tensor *pe = qi_st_file_find(l.f, "prompt_embeds");
    REQUIRE(lat && cond && ctx && sig && ts && ref && pe);
    call_check cc = {.f = l.f, .name = "2511 case without zero_cond_t", .n = L * 64};
    qi_edit_denoise_args a = {.grid_h = l.gh, .grid_w = l.gw, .cond = l.cond, .cond_latents = cond, .ctx = ctx,
                              .ctx_len = (int)pe->shape[1], .steps = 1, .sigmas = sig, .t = ts,
                              .on_call = on_call, .user = &cc};
    qi_error err = {{0}};
    CHECK(qi_edit_denoise(l.dit, g_be, &a, lat, &err) == QI_OK, "%s", err.msg);
    printf("     2511 case with zero_cond_t off: call 0 rel L2 %.3g\n", cc.worst);
    CHECK(cc.worst > fmax(1e-3, 2 * g_tol), "the flag made no difference (%g)", cc.worst);
    free(lat), free(cond), free(ctx), free(sig), free(ts), free(ref);
    unload(&l);
}

/* Each picture's posterior mean → (mean − m) / s, packed, pictures in
 * order = image_latents bit for bit (E7: a division, unlike img2img). */
static void condition_latents_match(void) {
    qi_source *src = NULL;
    qi_vae *vae = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_source_open_folder(QI_TEST_DATA "/tiny-model/vae", QI_COMPONENT_VAE, &src, &err) == QI_OK &&
                qi_vae_load(src, g_be, &vae, &err) == QI_OK,
            "%s", err.msg);
    for (size_t ci = 0; ci < QI_ARRAY_LEN(cases); ci++) {
        qi_st_file *f = ref_edit_tensors(cases[ci].name);
        REQUIRE(f);
        int64_t n_ref = 0, row = 0;
        float *ref = ref_floats(f, "image_latents", &n_ref), *got = calloc((size_t)n_ref, sizeof(float));
        for (int k = 0; k < 2; k++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.vae_mean", k);
            const qi_st_tensor *t = qi_st_file_find(f, name);
            if (!t) continue;
            int lh = (int)t->shape[3], lw = (int)t->shape[4];
            float *mean = ref_floats(f, name, NULL);
            REQUIRE(row + (int64_t)lh * lw * 16 <= n_ref, "too many condition tokens");
            CHECK(qi_edit_condition_latents(mean, 16, lh, lw, qi_vae_latents_mean(vae), qi_vae_latents_std(vae),
                                            got + row, &err) == QI_OK,
                  "%s", err.msg);
            row += (int64_t)lh * lw * 16;
            free(mean);
        }
        CHECK(row == n_ref && qi_max_abs_diff(got, ref, (size_t)n_ref) == 0, "%s: image_latents differ by %g",
              cases[ci].name, qi_max_abs_diff(got, ref, (size_t)n_ref));
        free(got);
        free(ref);
        qi_st_close(f);
    }
    float m[16] = {0};
    CHECK(qi_edit_condition_latents(m, 16, 3, 4, m, m, m, &err) == QI_ERR_ARG, "an odd latent grid is refused");
    qi_vae_free(vae);
    qi_source_close(src);
}

int main(int argc, char **argv) {
    qi_error err = {{0}};
    const char *device = argc > 2 && !strcmp(argv[1], "-b") ? argv[2] : "cpu";
    if (strcmp(device, "cpu")) g_tol = 2e-2;
    if (qi_backend_create(device, 2, (size_t)512 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "%s backend: %s\n", device, err.msg);
        return 1;
    }
    RUN(zero_cond_t_is_read_from_the_config);
    RUN(rope_positions_of_condition_segments);
    RUN(condition_latents_match);
    RUN(call0_all_tokens_match);
    RUN(denoising_matches);
    RUN(recorded_steps_match_eager);
    RUN(zero_cond_t_matters);
    g_be->ops->destroy(g_be);
    TEST_END();
}

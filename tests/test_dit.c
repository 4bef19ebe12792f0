/*
 * test_dit.c — the MMDiT forward against the diffusers reference tensors of
 * every public case (tiny model, float32), the RoPE tables, config/weight
 * checking at load, and a FLOP count + CPU speed estimate for full size.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"
#include "test.h"
#include "testdata.h"

#define TRANSFORMER_DIR QI_REF_MODEL "/transformer"
#define REF_LORA QI_REF_PUBLIC "/lora.safetensors"

static qi_backend *be;
static qi_source *src; /* the tiny transformer folder, open for the whole run */

/* ---- helpers ------------------------------------------------------------------ */

/* A backend tensor holding a float32 reference tensor. */
static int upload_ref(const qi_st_tensor *t, qi_tensor *out) {
    qi_error err;
    int64_t ne[QI_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) ne[i] = t->shape[i];
    qi_dtype dt = t->dtype == QI_I32 ? QI_I32 : be->act_dtype;
    if (be->ops->tensor(be, out, dt, t->ndim, ne, &err) != QI_OK) return -1;
    return be->ops->upload(be, out, t->data, &err) == QI_OK ? 0 : -1;
}

typedef struct ref_case {
    char name[64];
    int height, width, lora, calls;
} ref_case;

static int read_case(const char *name, ref_case *c) {
    char path[512];
    ref_case_path(path, sizeof path, name, "case.json");
    cJSON *j = ref_case_json(name);
    qi_error err;
    if (!j) return -1;
    snprintf(c->name, sizeof c->name, "%s", name);
    int ok = qi_json_get_int(j, "height", path, &c->height, &err) == QI_OK &&
             qi_json_get_int(j, "width", path, &c->width, &err) == QI_OK &&
             qi_json_get_bool(j, "lora", path, &c->lora, &err) == QI_OK &&
             qi_json_get_int(j, "transformer_calls", path, &c->calls, &err) == QI_OK;
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

static qi_dit *load_dit(int with_lora) {
    qi_error err;
    qi_lora_set *loras = NULL;
    if (with_lora && qi_lora_set_add(&loras, REF_LORA, 1.0f, &err) != QI_OK) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    qi_dit *d = NULL;
    qi_status st = qi_dit_load(src, be, loras, &d, &err);
    qi_lora_set_free(loras); /* the dit keeps nothing of it */
    if (st != QI_OK) fprintf(stderr, "  %s\n", err.msg);
    return d;
}

/* What a claim about one reference case needs: its case.json, its tensors
 * and the transformer (+ the reference LoRA when the case uses it). 0, or -1
 * with a failed CHECK and nothing left open. */
static int open_case(const char *name, ref_case *c, qi_st_set **ref, qi_dit **d) {
    *ref = NULL;
    *d = NULL;
    if (read_case(name, c) != 0) {
        CHECK(0, "case %s readable", name);
        return -1;
    }
    char path[512];
    qi_error err;
    ref_case_path(path, sizeof path, name, "tensors.safetensors");
    if (qi_st_set_open_file(path, ref, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    *d = load_dit(c->lora);
    CHECK(*d != NULL, "transformer%s loads", c->lora ? " + LoRA" : "");
    if (!*d) {
        qi_st_set_close(*ref);
        *ref = NULL;
        return -1;
    }
    return 0;
}

/* Reference tensor "call<call>.<what>" (the transformer's inputs and output
 * at that call), or NULL. */
static const qi_st_tensor *call_tensor(const qi_st_set *ref, int call, const char *what) {
    char key[96];
    snprintf(key, sizeof key, "call%d.%s", call, what);
    return qi_st_find(ref, key);
}

/* Runs call `call` of a case; returns rel L2 vs noise_pred (or -1), writes
 * the seconds taken. mask_mode: 1 use prompt_embeds_mask if present, 0 ignore it. */
static double run_call(qi_dit *d, const qi_st_set *ref, const ref_case *c, int call, int mask_mode,
                       double *seconds, float *out_host) {
    const qi_st_tensor *hs = call_tensor(ref, call, "hidden_states");
    const qi_st_tensor *ts = call_tensor(ref, call, "timestep");
    const qi_st_tensor *ehs = call_tensor(ref, call, "encoder_hidden_states");
    const qi_st_tensor *np = call_tensor(ref, call, "noise_pred");
    const qi_st_tensor *mask = call_tensor(ref, call, "encoder_hidden_states_mask");
    if (!mask) mask = qi_st_find(ref, "prompt_embeds_mask");
    if (!mask_mode) mask = NULL;
    if (!hs || !ts || !ehs || !np) return -1;
    if (mask && mask->shape[1] != ehs->shape[1]) mask = NULL; /* only for the padded batch */

    size_t m0 = be->ops->mark(be);
    qi_tensor x, ctx, cmask, out;
    int64_t ne[3] = {np->shape[0], np->shape[1], np->shape[2]};
    qi_error err;
    double rel = -1;
    if (upload_ref(hs, &x) == 0 && upload_ref(ehs, &ctx) == 0 && (!mask || upload_ref(mask, &cmask) == 0) &&
        be->ops->tensor(be, &out, be->act_dtype, 3, ne, &err) == QI_OK) {
        double t0 = qi_now_s();
        qi_status st = qi_dit_forward(d, &x, &ctx, mask ? &cmask : NULL, ts->data, c->height / 16,
                                      c->width / 16, &out, &err);
        *seconds = qi_now_s() - t0;
        size_t n = (size_t)qi_numel(&out);
        float *host = out_host ? out_host : malloc(n * sizeof *host);
        if (st == QI_OK && be->ops->download(be, &out, host, &err) == QI_OK)
            rel = qi_rel_l2(host, np->data, n);
        else if (st != QI_OK)
            fprintf(stderr, "  %s call %d: %s\n", c->name, call, err.msg);
        if (!out_host) free(host);
    }
    be->ops->reset(be, m0);
    return rel;
}

/* ---- claims ------------------------------------------------------------------- */

static void config_is_read_from_the_model(void) {
    qi_dit *d = load_dit(0);
    CHECK(d != NULL, "tiny transformer loads");
    if (!d) return;
    const qi_dit_config *c = qi_dit_get_config(d);
    CHECK(c->num_layers == 2 && c->num_heads == 4 && c->head_dim == 32 && c->inner_dim == 128,
          "layers %d heads %d head_dim %d D %d", c->num_layers, c->num_heads, c->head_dim,
          c->inner_dim);
    CHECK(c->joint_dim == 64 && c->in_channels == 64 && c->out_channels == 16 && c->patch_size == 2,
          "joint %d in %d out %d patch %d", c->joint_dim, c->in_channels, c->out_channels,
          c->patch_size);
    CHECK(c->axes_dims_rope[0] == 8 && c->axes_dims_rope[1] == 12 && c->axes_dims_rope[2] == 12,
          "axes %d %d %d", c->axes_dims_rope[0], c->axes_dims_rope[1], c->axes_dims_rope[2]);
    CHECK(c->mlp_dim == 512, "mlp %d", c->mlp_dim);
    qi_dit_free(d);
}

static void rope_positions_centre_odd_grids_with_ceil(void) {
    /* 83 rows (1328 px): rows -42..40; 4 columns: -2..1; text from max(41, 2) = 41 */
    int h = 83, w = 4, lt = 5, L = lt + h * w;
    int *pos = malloc((size_t)L * 3 * sizeof *pos);
    qi_dit_rope_positions(h, w, lt, pos);
    for (int j = 0; j < lt; j++)
        CHECK(pos[j * 3] == 41 + j && pos[j * 3 + 1] == 41 + j && pos[j * 3 + 2] == 41 + j,
              "text token %d at (%d, %d, %d), expected %d on every axis", j, pos[j * 3],
              pos[j * 3 + 1], pos[j * 3 + 2], 41 + j);
    const int *first = pos + lt * 3, *last = pos + (size_t)(L - 1) * 3;
    CHECK(first[0] == 0 && first[1] == -42 && first[2] == -2, "first image token (%d, %d, %d)",
          first[0], first[1], first[2]);
    CHECK(last[0] == 0 && last[1] == 40 && last[2] == 1, "last image token (%d, %d, %d)", last[0],
          last[1], last[2]);
    int row_of_41st = pos[(lt + 42 * w) * 3 + 1];
    CHECK(row_of_41st == 0, "row 42 sits at position 0, got %d", row_of_41st);
    free(pos);
    /* the even case h = 4: -2, -1, 0, 1 */
    int p4[4 * 1 * 3];
    qi_dit_rope_positions(4, 1, 0, p4);
    CHECK(p4[1] == -2 && p4[4] == -1 && p4[7] == 0 && p4[10] == 1, "h=4 rows %d %d %d %d", p4[1],
          p4[4], p4[7], p4[10]);
}

static void rope_tables_rotate_each_axis_by_its_own_frequencies(void) {
    /* full-size axes on the odd 83 x 83 grid (1328²) with 7 text tokens */
    qi_dit_config c = {.head_dim = 128, .axes_dims_rope = {16, 56, 56}};
    int h = 83, w = 83, lt = 7, L = lt + h * w, P = 64;
    float *cs = malloc((size_t)L * P * sizeof *cs), *sn = malloc((size_t)L * P * sizeof *sn);
    int *pos = malloc((size_t)L * 3 * sizeof *pos);
    qi_error err;
    CHECK(qi_dit_rope_tables(&c, h, w, lt, cs, sn, &err) == QI_OK, "%s", err.msg);
    qi_dit_rope_positions(h, w, lt, pos);
    double worst = 0;
    int frame_unrotated = 1;
    for (int i = 0; i < L; i++)
        for (int m = 0; m < P; m++) {
            int axis = m < 8 ? 0 : m < 36 ? 1 : 2;
            int k = m < 8 ? m : m < 36 ? m - 8 : m - 36, dim = axis == 0 ? 16 : 56;
            double angle = pos[i * 3 + axis] * pow(10000.0, -2.0 * k / dim);
            double e = fabs(cs[i * P + m] - cos(angle)) + fabs(sn[i * P + m] - sin(angle));
            if (e > worst) worst = e;
            if (i >= lt && m < 8) frame_unrotated &= cs[i * P + m] == 1.0f && sn[i * P + m] == 0.0f;
        }
    printf("  rope tables 83x83 + 7 text: max |table - exact| = %.2e\n", worst);
    CHECK(worst < 2e-5, "tables differ from cos/sin(pos·θ) by %.3g", worst);
    CHECK(frame_unrotated, "image tokens' frame pairs must be unrotated (angle 0)");
    /* positions past diffusers' 4096-row tables are refused, not wrapped */
    CHECK(qi_dit_rope_tables(&c, 2, 2, 4096, cs, sn, &err) == QI_ERR_ARG, "text beyond 4096");
    free(cs);
    free(sn);
    free(pos);
}

/* Every call of one case through qi_dit_forward vs the reference noise_pred. */
static void check_case(const char *name) {
    ref_case c;
    qi_st_set *ref;
    qi_dit *d;
    if (open_case(name, &c, &ref, &d) != 0) return;
    /* The reference's callN.timestep is the scheduler timestep / 1000 — what
     * qi_dit_forward takes — i.e. one of timesteps[]/1000 (cond and uncond
     * share a step). */
    const qi_st_tensor *steps = qi_st_find(ref, "timesteps");
    for (int i = 0; steps && i < c.calls; i++) {
        const qi_st_tensor *ts = call_tensor(ref, i, "timestep");
        float tv = ts ? ((const float *)ts->data)[0] : -1;
        int found = 0;
        for (int s = 0; s < steps->shape[0]; s++)
            found |= fabsf(((const float *)steps->data)[s] / 1000.0f - tv) <= 1e-7f;
        CHECK(found, "case %s call %d: timestep %g is not a timesteps[]/1000 value", name, i, tv);
    }
    double worst = 0, total_s = 0;
    for (int i = 0; i < c.calls; i++) {
        double s = 0, rel = run_call(d, ref, &c, i, 1, &s, NULL);
        printf("  case %s: call %d noise_pred rel L2 = %.2e  (%.1f ms CPU)\n", name, i, rel, s * 1e3);
        CHECK(rel >= 0 && rel <= 1e-4, "case %s call %d rel L2 %.3g > 1e-4", name, i, rel);
        if (rel > worst) worst = rel;
        total_s += s;
    }
    printf("  case %s: worst rel L2 = %.2e over %d calls, %.1f ms per call (mean)\n", name, worst,
           c.calls, total_s * 1e3 / c.calls);
    qi_dit_free(d);
    qi_st_set_close(ref);
}

static void matches_reference_zh_cfg4_base(void) { check_case("zh_cfg4_base"); }
static void matches_reference_en_lightning8_lora(void) { check_case("en_lightning8_lora"); }
static void matches_reference_batch2_lightning4_lora(void) { check_case("batch2_lightning4_lora"); }

/* Without the padding mask the padded sample is far off: the mask is used. */
static void padding_mask_is_applied(void) {
    ref_case c;
    qi_st_set *ref;
    qi_dit *d;
    if (open_case("batch2_lightning4_lora", &c, &ref, &d) != 0) return;
    CHECK(c.lora, "batch2_lightning4_lora runs with the LoRA");
    double s, with = run_call(d, ref, &c, 0, 1, &s, NULL), without = run_call(d, ref, &c, 0, 0, &s, NULL);
    printf("  batch2 call 0: rel L2 with mask %.2e, without %.2e\n", with, without);
    CHECK(without > 1e-2 && with < 1e-4, "mask must matter: with %.3g without %.3g", with, without);
    qi_dit_free(d);
    qi_st_set_close(ref);
}

/* Alternating text lengths (cond/uncond) reuses the cached RoPE tables and
 * gives bit-identical results; an odd grid runs too. */
static void repeated_calls_are_identical_across_shapes(void) {
    ref_case c;
    qi_st_set *ref;
    qi_dit *d;
    if (open_case("zh_cfg4_base", &c, &ref, &d) != 0) return;
    CHECK(!c.lora, "zh_cfg4_base runs without a LoRA");
    qi_error err;
    size_t n = 32 * 64;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    double s;
    run_call(d, ref, &c, 0, 1, &s, a); /* 26 text tokens */
    run_call(d, ref, &c, 1, 1, &s, b); /* 6 text tokens */
    run_call(d, ref, &c, 0, 1, &s, b);
    CHECK(memcmp(a, b, n * sizeof *a) == 0, "call 0 differs after a call of another shape");

    /* odd 5 x 3 grid, 4 text tokens: runs and stays finite */
    size_t m0 = be->ops->mark(be);
    qi_tensor x, ctx, out;
    CHECK(qi_be_act3(be, &x, 1, 15, 64, &err) == QI_OK && qi_be_act3(be, &ctx, 1, 4, 64, &err) == QI_OK &&
              qi_be_act3(be, &out, 1, 15, 64, &err) == QI_OK, "alloc");
    float *hx = malloc(15 * 64 * sizeof *hx);
    for (int i = 0; i < 15 * 64; i++) hx[i] = sinf((float)i * 0.37f);
    be->ops->upload(be, &x, hx, &err);
    be->ops->upload(be, &ctx, hx, &err);
    float t = 0.5f;
    CHECK(qi_dit_forward(d, &x, &ctx, NULL, &t, 5, 3, &out, &err) == QI_OK, "%s", err.msg);
    be->ops->download(be, &out, hx, &err);
    int finite = 1;
    for (int i = 0; i < 15 * 64; i++) finite &= isfinite(hx[i]);
    CHECK(finite, "odd-grid output finite");
    /* wrong grid for x is an argument error, not a crash */
    CHECK(qi_dit_forward(d, &x, &ctx, NULL, &t, 4, 4, &out, &err) == QI_ERR_ARG, "grid check");
    printf("  bad grid: %s\n", err.msg);
    be->ops->reset(be, m0);
    free(hx);
    free(a);
    free(b);
    qi_dit_free(d);
    qi_st_set_close(ref);
}

/* ---- config / weight checking ------------------------------------------------------ */

/* Loads a temp transformer dir (the tiny config where `from` is replaced by
 * `to`, the tiny weights linked); returns the status. */
static qi_status load_with_config_edit(const char *from, const char *to, qi_error *err) {
    char *text;
    size_t len;
    if (qi_read_text_file(TRANSFORMER_DIR "/config.json", &text, &len, err) != QI_OK) return QI_ERR_IO;
    char *at = strstr(text, from);
    if (!at) {
        free(text);
        return qi_fail(err, QI_ERR_ARG, "test: '%s' not in config", from);
    }
    char edited[4096];
    snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    free(text);
    char dir[64];
    if (tmp_component_dir(dir, sizeof dir, "dit", edited, TRANSFORMER_DIR,
                          "diffusion_pytorch_model.safetensors") != 0)
        return qi_fail(err, QI_ERR_IO, "test: temp dir");
    qi_source *s = NULL;
    qi_dit *d = NULL;
    qi_status st = qi_source_open_folder(dir, QI_COMPONENT_TRANSFORMER, &s, err);
    if (st == QI_OK) st = qi_dit_load(s, be, NULL, &d, err);
    qi_dit_free(d);
    qi_source_close(s);
    tmp_remove_tree(dir);
    return st;
}

static void variant_flags_are_refused_by_name(void) {
    qi_error err;
    const char *flags[] = {"use_layer3d_rope", "use_additional_t_cond", "guidance_embeds"};
    for (int i = 0; i < 3; i++) {
        char from[64], to[64];
        snprintf(from, sizeof from, "\"%s\": false", flags[i]);
        snprintf(to, sizeof to, "\"%s\": true", flags[i]);
        qi_status st = load_with_config_edit(from, to, &err);
        CHECK(st == QI_ERR_UNSUPPORTED && strstr(err.msg, flags[i]), "%s: %s", flags[i], err.msg);
    }
    printf("  e.g. %s\n", err.msg);
    /* zero_cond_t (Edit-2511) is a supported variant: test_edit_denoise runs it */
    CHECK(load_with_config_edit("\"zero_cond_t\": false", "\"zero_cond_t\": true", &err) == QI_OK, "zero_cond_t: %s",
          err.msg);
}

static void missing_config_key_is_named(void) {
    qi_error err;
    qi_status st = load_with_config_edit("\"num_layers\": 2,", "", &err);
    printf("  %s\n", err.msg);
    CHECK(st != QI_OK && strstr(err.msg, "num_layers") && strstr(err.msg, "config.json"), "%s", err.msg);
}

static void weights_disagreeing_with_config_are_named(void) {
    qi_error err;
    /* joint_attention_dim 32: txt_in.weight is [128, 64] in the file */
    qi_status st = load_with_config_edit("\"joint_attention_dim\": 64", "\"joint_attention_dim\": 32", &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "txt_norm.weight") && strstr(err.msg, "[64]") &&
              strstr(err.msg, "[32]"), "%s", err.msg);
    /* one layer fewer: the file's block 1 is unexplained */
    st = load_with_config_edit("\"num_layers\": 2", "\"num_layers\": 1", &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "transformer_blocks.1."), "%s", err.msg);
    /* one layer more: block 2 is missing */
    st = load_with_config_edit("\"num_layers\": 2", "\"num_layers\": 3", &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "transformer_blocks.2."), "%s", err.msg);
}

/* ---- FLOPs and speed --------------------------------------------------------------- */

static void full_size_flops_and_cpu_estimate(void) {
    qi_dit_config full = {.num_layers = 60, .num_heads = 24, .head_dim = 128, .inner_dim = 3072,
                          .mlp_dim = 12288, .joint_dim = 3584, .in_channels = 64,
                          .out_channels = 16, .patch_size = 2, .axes_dims_rope = {16, 56, 56}};
    double flops = qi_dit_forward_flops(&full, 1, 4096, 128);
    printf("  full size, 1024x1024 (4096 image tokens) + 128 text tokens: %.2f TFLOP per call\n",
           flops * 1e-12);
    CHECK(flops > 6.5e13 && flops < 7.5e13, "flops %.3g", flops);

    /* measured linear throughput with bf16 weights, as the real model runs */
    qi_error err;
    int64_t M = 1024, K = 3072, N = 3072;
    uint16_t *w = malloc((size_t)(N * K) * sizeof *w);
    for (int64_t i = 0; i < N * K; i++) w[i] = qi_f32_to_bf16(0.01f * (float)((i * 7) % 13 - 6));
    size_t m0 = be->ops->mark(be);
    qi_tensor x, y, wt;
    int64_t wne[2] = {N, K};
    CHECK(qi_be_act2(be, &x, M, K, &err) == QI_OK && qi_be_act2(be, &y, M, N, &err) == QI_OK, "alloc");
    CHECK(be->ops->weight(be, &wt, QI_BF16, 2, wne, w, NULL, &err) == QI_OK, "weight");
    float *hx = calloc((size_t)(M * K), sizeof *hx);
    be->ops->upload(be, &x, hx, &err);
    be->ops->linear(be, &x, &wt, NULL, QI_ACT_NONE, &y); /* warm-up */
    double t0 = qi_now_s();
    int reps = 3;
    for (int r = 0; r < reps; r++) be->ops->linear(be, &x, &wt, NULL, QI_ACT_NONE, &y);
    double s = (qi_now_s() - t0) / reps, gflops = 2.0 * M * N * K / s * 1e-9;
    be->ops->weight_free(be, &wt);
    be->ops->reset(be, m0);

    /* measured attention op throughput: 1024 tokens, 4 heads of 128 */
    int64_t Lq = 1024, H = 4, Dh = 128;
    qi_tensor q, o;
    CHECK(qi_be_act4(be, &q, 1, Lq, H, Dh, &err) == QI_OK && qi_be_act4(be, &o, 1, Lq, H, Dh, &err) == QI_OK,
          "alloc");
    be->ops->upload(be, &q, hx, &err);
    t0 = qi_now_s();
    be->ops->attention(be, &q, &q, &q, NULL, 0, 0.088f, &o);
    double sa = qi_now_s() - t0, attn_gflops = 4.0 * Lq * Lq * H * Dh / sa * 1e-9;
    be->ops->reset(be, m0);

    /* the full-size call split into attention products and the rest */
    double Lj = 4096 + 128, attn_flops = 60 * 4.0 * Lj * Lj * 3072, rest = flops - attn_flops;
    double est = rest * 1e-9 / gflops + attn_flops * 1e-9 / attn_gflops;
    printf("  CPU linear [1024x3072]·[3072x3072]ᵀ bf16 weights: %.1f GFLOP/s; attention op: %.1f GFLOP/s\n",
           gflops, attn_gflops);
    printf("  full-size call: %.1f TFLOP in Linears -> %.0f s, %.1f TFLOP in attention -> %.0f s; "
           "estimate %.1f min per call on this CPU\n", rest * 1e-12, rest * 1e-9 / gflops,
           attn_flops * 1e-12, attn_flops * 1e-9 / attn_gflops, est / 60);
    free(hx);
    free(w);
}

/* A call given the whole timestep schedule (the modulation of every step
 * computed in one batched pass, each step's rows gathered before its run)
 * gives what qi_dit_forward gives at each step's timestep, within 1e-6: the
 * batched GEMMs may round differently, nothing else differs. Covers B = 2
 * with a padding mask, and the call's argument errors. */
static void schedule_matches_per_step_forward(void) {
    const char *cases[] = {"zh_cfg4_base", "batch2_lightning4_lora"};
    for (size_t k = 0; k < QI_ARRAY_LEN(cases); k++) {
        ref_case c;
        qi_st_set *ref;
        qi_dit *d;
        if (open_case(cases[k], &c, &ref, &d) != 0) continue;
        const qi_st_tensor *hs = call_tensor(ref, 0, "hidden_states"), *ehs = call_tensor(ref, 0, "encoder_hidden_states");
        const qi_st_tensor *mask = call_tensor(ref, 0, "encoder_hidden_states_mask");
        const qi_st_tensor *steps = qi_st_find(ref, "timesteps");
        if (!mask) mask = qi_st_find(ref, "prompt_embeds_mask");
        if (mask && mask->shape[1] != ehs->shape[1]) mask = NULL;
        CHECK(hs && ehs && steps, "case %s: call 0 inputs and timesteps", cases[k]);
        if (!hs || !ehs || !steps) {
            qi_dit_free(d);
            qi_st_set_close(ref);
            continue;
        }
        int B = (int)hs->shape[0], S = (int)steps->shape[0], gh = c.height / 16, gw = c.width / 16;
        float *t_all = malloc((size_t)S * B * sizeof *t_all);
        for (int i = 0; i < S; i++)
            for (int b = 0; b < B; b++) t_all[i * B + b] = ((const float *)steps->data)[i] / 1000.0f;
        size_t m0 = be->ops->mark(be), n = (size_t)(hs->shape[0] * hs->shape[1] * hs->shape[2]);
        qi_tensor x, ctx, cmask, out;
        qi_error err;
        qi_dit_call *call = NULL;
        float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
        int ok = upload_ref(hs, &x) == 0 && upload_ref(ehs, &ctx) == 0 && (!mask || upload_ref(mask, &cmask) == 0) &&
                 qi_be_act3(be, &out, B, hs->shape[1], hs->shape[2], &err) == QI_OK;
        CHECK(ok, "case %s: inputs uploaded", cases[k]);
        /* the call's buffers come from the arena on the CPU: made after the inputs */
        if (ok) ok = qi_dit_call_create(d, B, gh, gw, (int)ehs->shape[1], &call, &err) == QI_OK &&
                     qi_dit_call_set_text_mask(call, mask ? &cmask : NULL, &err) == QI_OK;
        CHECK(ok, "case %s: call made: %s", cases[k], ok ? "" : err.msg);
        if (ok) {
            CHECK(qi_dit_call_select_step(call, 0, &err) == QI_ERR_ARG, "select_step before a schedule must fail");
            CHECK(qi_dit_call_set_schedule(call, t_all, S, &err) == QI_OK, "%s", err.msg);
            CHECK(qi_dit_call_run(call, &x, &ctx, &out, &err) == QI_ERR_ARG, "run before select_step must fail");
            CHECK(qi_dit_call_select_step(call, S, &err) == QI_ERR_ARG, "step %d of %d must fail", S, S);
            printf("  out of range: %s\n", err.msg);
        }
        double worst = 0;
        for (int i = 0; ok && i < S; i++) {
            ok = qi_dit_forward(d, &x, &ctx, mask ? &cmask : NULL, t_all + i * B, gh, gw, &out, &err) == QI_OK &&
                 be->ops->download(be, &out, want, &err) == QI_OK &&
                 qi_dit_call_select_step(call, i, &err) == QI_OK &&
                 qi_dit_call_run(call, &x, &ctx, &out, &err) == QI_OK && be->ops->sync(be, &err) == QI_OK &&
                 be->ops->download(be, &out, got, &err) == QI_OK;
            CHECK(ok, "case %s step %d: %s", cases[k], i, ok ? "" : err.msg);
            double rel = ok ? qi_rel_l2(got, want, n) : 1;
            if (rel > worst) worst = rel;
        }
        /* set_timestep leaves schedule mode: bit-identical to qi_dit_forward again */
        if (ok) {
            ok = qi_dit_call_set_timestep(call, t_all + (S - 1) * B, &err) == QI_OK &&
                 qi_dit_call_run(call, &x, &ctx, &out, &err) == QI_OK && be->ops->sync(be, &err) == QI_OK &&
                 be->ops->download(be, &out, got, &err) == QI_OK;
            CHECK(ok && memcmp(got, want, n * sizeof *got) == 0, "case %s: set_timestep after a schedule differs "
                  "from qi_dit_forward", cases[k]);
        }
        printf("  case %s (B=%d, %d steps): schedule vs per-step noise_pred worst rel L2 = %.2e (limit 1e-6)\n",
               cases[k], B, S, worst);
        CHECK(worst <= 1e-6, "case %s: schedule differs from per-step by %.3g", cases[k], worst);
        qi_dit_call_free(call);
        be->ops->reset(be, m0);
        free(want);
        free(got);
        free(t_all);
        qi_dit_free(d);
        qi_st_set_close(ref);
    }
}

int main(void) {
    qi_error err;
    if (qi_backend_cpu_create(0, 0, &be, &err) != QI_OK ||
        qi_source_open_folder(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &src, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(config_is_read_from_the_model);
    RUN(rope_positions_centre_odd_grids_with_ceil);
    RUN(rope_tables_rotate_each_axis_by_its_own_frequencies);
    RUN(matches_reference_zh_cfg4_base);
    RUN(matches_reference_en_lightning8_lora);
    RUN(matches_reference_batch2_lightning4_lora);
    RUN(padding_mask_is_applied);
    RUN(repeated_calls_are_identical_across_shapes);
    RUN(schedule_matches_per_step_forward);
    RUN(variant_flags_are_refused_by_name);
    RUN(missing_config_key_is_named);
    RUN(weights_disagreeing_with_config_are_named);
    RUN(full_size_flops_and_cpu_estimate);
    qi_source_close(src);
    be->ops->destroy(be);
    TEST_END();
}

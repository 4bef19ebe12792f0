/*
 * test_residency.c — the residency planner (engine/residency.h) on the
 * full-size model's sizes, and the weight classifiers it is fed through.
 *
 * Sizes come from bench/qwen-image-full.json (every tensor of the released
 * checkpoints, name → dtype, shape), stored as the bench stores them: the
 * transformer's 14 block matrices (attention, MLP, modulation) in the type
 * under test, every other weight BF16; the text encoder's layer matrices and
 * embedding table in its type under test. Device bytes follow the CUDA
 * backend's rule: a 2-D fp8 or GGUF-block weight as stored, every other float
 * weight as bf16. That gives, for the transformer, 38.0 GiB (BF16), 19.0 GiB
 * (F8_E4M3), 10.7 GiB (Q4_K), and 13.2 GiB for the BF16 text encoder's
 * language model (the vision tower in the file is never loaded).
 *
 * Activations are those of the engine's default plan request: 1024×1024,
 * one image, 512 text tokens (qi_dit_step_bytes, qi_text_encoder_act_bytes
 * on the full-size configs); the VAE's are the decoder's slot plan worked by
 * hand: 1024² whole = 2 slots + scratch of 96·1024² bf16 = 0.56 GiB, in 256-px
 * tiles = 0.035 GiB. The backend's own memory: the CUDA backend's 512 MiB op
 * scratch + 64 MiB GEMM workspace + two bf16 expansions of the largest kept
 * weight.
 */
#include <cjson/cJSON.h>

#include "base/types.h"
#include "engine/residency.h"
#include "io/model_dir.h"
#include "model/dit.h"
#include "model/text_encoder.h"
#include "test.h"

#define GIB ((size_t)1 << 30)

static cJSON *manifest;

/* Device bytes of a weight on the CUDA backend, and the bf16 expansion
 * scratch it needs while used (a kept one): one buffer of its bf16 copy, as
 * the backend keeps by default (QI_CUDA_KEPT_OVERLAP=1, off by default,
 * keeps two: one is written while a GEMM reads the other). */
static size_t cuda_bytes(qi_dtype dt, int ndim, const int64_t *shape, size_t *scratch) {
    int64_t rows = 1;
    for (int i = 0; i + 1 < ndim; i++) rows *= shape[i];
    int kept = ndim == 2 && (dt == QI_F8_E4M3 || qi_dtype_is_block(dt));
    *scratch = kept ? (size_t)(rows * shape[ndim - 1]) * 2 : 0;
    if (kept) return (size_t)rows * (size_t)qi_row_bytes(dt, shape[ndim - 1]);
    return (size_t)(rows * shape[ndim - 1]) * 2;
}

typedef struct model_types {
    qi_dtype dit, te;
} model_types;

/* The sizes of the full-size model with the transformer's block matrices and
 * the text encoder's matrices in the given types. */
static qi_residency_sizes full_sizes(model_types ty) {
    static qi_residency_tally t;
    memset(&t, 0, sizeof t);
    size_t scratch = 0;
    const char *parts[] = {"transformer", "text_encoder", "vae"};
    for (int p = 0; p < 3; p++) {
        const cJSON *comp = cJSON_GetObjectItemCaseSensitive(manifest, parts[p]);
        const cJSON *it;
        cJSON_ArrayForEach(it, comp) {
            const cJSON *shape = cJSON_GetArrayItem(it, 1);
            int64_t ne[8] = {0};
            int nd = cJSON_GetArraySize(shape);
            for (int i = 0; i < nd && i < 8; i++) ne[i] = (int64_t)cJSON_GetArrayItem(shape, i)->valuedouble;
            int index = -1;
            qi_residency_part part = QI_PART_NONE;
            qi_dtype dt = QI_BF16;
            if (p == 0) {
                qi_dit_unit u = qi_dit_weight_unit(it->string, nd, &index);
                part = u == QI_DIT_UNIT_BLOCK ? QI_PART_DIT_BLOCK : u == QI_DIT_UNIT_MOD ? QI_PART_DIT_MOD
                                                                                          : QI_PART_DIT_GLOBAL;
                if (u != QI_DIT_UNIT_GLOBAL) dt = ty.dit;
            } else if (p == 1) {
                qi_te_unit u = qi_text_encoder_weight_unit(it->string, nd, &index);
                part = u == QI_TE_UNIT_LAYER ? QI_PART_TE_LAYER : u == QI_TE_UNIT_EMBED ? QI_PART_TE_EMBED
                       : u == QI_TE_UNIT_GLOBAL ? QI_PART_TE_GLOBAL : QI_PART_NONE;
                if (nd == 2 && part != QI_PART_NONE) dt = ty.te;
            } else {
                part = !strncmp(it->string, "decoder.", 8) || !strncmp(it->string, "post_quant_conv.", 16)
                           ? QI_PART_VAE : QI_PART_NONE;
            }
            size_t s = 0, bytes = cuda_bytes(dt, nd, ne, &s);
            if (part != QI_PART_NONE && part != QI_PART_TE_EMBED && s > scratch) scratch = s; /* linears only */
            qi_residency_tally_add(&t, part, index, bytes);
        }
    }
    qi_residency_sizes s = qi_residency_tally_sizes(&t);
    s.fixed = ((size_t)576 << 20) + scratch;
    s.dit_type = qi_dtype_name(ty.dit);
    s.te_type = qi_dtype_name(ty.te);
    return s;
}

static qi_residency_need full_need(void) {
    qi_dit_config d = {.num_layers = 60, .num_heads = 24, .head_dim = 128, .inner_dim = 3072, .mlp_dim = 12288,
                       .joint_dim = 3584, .in_channels = 64, .out_channels = 16, .patch_size = 2,
                       .axes_dims_rope = {16, 56, 56}};
    qi_text_encoder_config te = {.hidden_size = 3584, .num_layers = 28, .num_heads = 28, .num_kv_heads = 4,
                                 .head_dim = 128, .intermediate_size = 18944, .vocab_size = 152064};
    qi_residency_need n = {
        .text = qi_text_encoder_act_bytes(&te, 2, 1, 34 + 512),
        .dit = qi_dit_step_bytes(&d, 2, 1, 64 * 64, 512, 8, 1),
        .vae_untiled = 3 * (size_t)96 * 1024 * 1024 * 2,
        .vae_tiled = 3 * (size_t)96 * 256 * 256 * 2,
        .what = "1024x1024, 1 image, 512 text tokens",
    };
    return n;
}

static const model_types BF16 = {QI_BF16, QI_BF16}, FP8 = {QI_F8_E4M3, QI_BF16}, Q4K = {QI_Q4_K, QI_BF16},
                         Q4K_Q4K = {QI_Q4_K, QI_Q4_K}, FP8_FP8 = {QI_F8_E4M3, QI_F8_E4M3},
                         Q8_Q8 = {QI_Q8_0, QI_Q8_0}, Q4K_Q8 = {QI_Q4_K, QI_Q8_0}, Q2K_Q8 = {QI_Q2_K, QI_Q8_0};

static qi_status plan_at(double gib, model_types ty, qi_residency_plan *p, qi_error *err) {
    qi_residency_sizes s = full_sizes(ty);
    qi_residency_need n = full_need();
    return qi_residency_plan_make((size_t)(gib * (double)GIB), &s, &n, p, err);
}

/* A plan is within its budget in both phases, and takes the most resident
 * blocks it can: one more would not fit. */
static void check_plan_fits(double gib, model_types ty, const qi_residency_plan *p) {
    qi_residency_sizes s = full_sizes(ty);
    CHECK(p->text_peak <= p->budget && p->dit_peak <= p->budget, "%.0fG %s: peaks %.2f / %.2f GiB", gib,
          s.dit_type, (double)p->text_peak / GIB, (double)p->dit_peak / GIB);
    if (p->step >= 3 && p->resident_blocks < s.dit_blocks) {
        size_t extra = s.dit_block;
        CHECK(p->dit_peak + extra > p->budget, "%.0fG %s: another block (%.2f GiB) would still fit", gib,
              s.dit_type, (double)extra / GIB);
    }
}

static void sizes_match_the_full_size_model(void) {
    qi_residency_sizes b = full_sizes(BF16), f = full_sizes(FP8), q = full_sizes(Q4K), qq = full_sizes(Q4K_Q4K);
    CHECK(b.dit_blocks == 60 && b.te_layers == 28, "%d blocks, %d layers", b.dit_blocks, b.te_layers);
    double dit_b = (double)(b.dit_global + 60 * (b.dit_block + b.dit_mod)) / GIB;
    double dit_f = (double)(f.dit_global + 60 * (f.dit_block + f.dit_mod)) / GIB;
    double dit_q = (double)(q.dit_global + 60 * (q.dit_block + q.dit_mod)) / GIB;
    double te_b = (double)(b.te_global + b.te_embed + 28 * b.te_layer) / GIB;
    double te_q = (double)(qq.te_global + qq.te_embed + 28 * qq.te_layer) / GIB;
    CHECK(dit_b > 37.5 && dit_b < 38.5, "bf16 transformer %.2f GiB", dit_b);
    CHECK(dit_f > 18.5 && dit_f < 19.5, "fp8 transformer %.2f GiB", dit_f);
    CHECK(dit_q > 10.3 && dit_q < 11.0, "Q4_K transformer %.2f GiB", dit_q);
    CHECK(te_b > 13.0 && te_b < 13.5, "bf16 text encoder (language model) %.2f GiB", te_b);
    CHECK(te_q > 3.7 && te_q < 4.5, "Q4_K text encoder %.2f GiB", te_q);
    /* the modulation is a third of each block */
    CHECK(b.dit_mod * 2 == b.dit_block, "modulation %zu vs block %zu bytes", b.dit_mod, b.dit_block);
    double vae = (double)b.vae / GIB;
    CHECK(vae > 0.1 && vae < 0.3, "VAE decoder %.2f GiB", vae);
}

static void everything_is_resident_at_80g(void) {
    const model_types types[] = {BF16, FP8, Q4K};
    for (size_t i = 0; i < 3; i++) {
        qi_residency_plan p;
        qi_error err = {{0}};
        REQUIRE(plan_at(80, types[i], &p, &err) == QI_OK, "%s", err.msg);
        CHECK(p.step == 1 && !p.te_swap && !p.dit_stream && p.mod_resident && !p.vae_tiled,
              "%s: step %d", qi_dtype_name(types[i].dit), p.step);
        check_plan_fits(80, types[i], &p);
    }
}

/* 24G: nothing is loaded again between requests. A stage swap here would
 * read the 13 GiB text encoder from its file for every new prompt and then
 * the transformer too (they do not fit together); streaming the encoder's
 * layers from pinned host memory instead costs one pass over them per
 * prompt, so bf16 streams it and keeps most blocks, fp8 streams it and keeps
 * the whole transformer, Q4_K keeps the encoder and streams only its
 * modulation. */
static void at_24g_nothing_is_loaded_again_between_requests(void) {
    qi_residency_plan p;
    qi_error err = {{0}};
    REQUIRE(plan_at(24, BF16, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && p.te_stream && !p.te_swap && !p.dit_evict && p.resident_blocks > 30 &&
              p.resident_blocks < 60,
          "bf16: step %d, swap %d, %d blocks", p.step, p.te_swap, p.resident_blocks);
    check_plan_fits(24, BF16, &p);
    REQUIRE(plan_at(24, FP8, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && p.te_stream && !p.te_swap && !p.dit_stream, "fp8: step %d, swap %d, stream %d", p.step,
          p.te_swap, p.dit_stream);
    check_plan_fits(24, FP8, &p);
    /* 10.7 + 13.2 GiB do not fit, but without its 3.6 GiB of modulation they do: no swap */
    REQUIRE(plan_at(24, Q4K, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 1 && !p.te_swap && p.dit_stream && !p.mod_resident && p.resident_blocks == 60,
          "Q4_K: step %d, swap %d, mod %d", p.step, p.te_swap, p.mod_resident);
    check_plan_fits(24, Q4K, &p);
}

/* 16G: the bf16 text encoder streams beside each transformer (Q4_K and fp8
 * keep every block, bf16 about half); with a Q8_0 text encoder (7 GiB) the
 * Q4_K transformer keeps the encoder whole and streams 3 blocks instead, the
 * fewer bytes per image of the two. */
static void at_16g_the_text_encoder_streams_beside_the_transformer(void) {
    qi_residency_plan p;
    qi_error err = {{0}};
    REQUIRE(plan_at(16, Q4K, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && p.te_stream && !p.te_swap && p.resident_blocks == 60, "Q4_K: step %d", p.step);
    check_plan_fits(16, Q4K, &p);
    REQUIRE(plan_at(16, FP8, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && !p.te_swap && p.resident_blocks == 60 && !p.mod_resident,
          "fp8: step %d, %d blocks, mod %d", p.step, p.resident_blocks, p.mod_resident);
    check_plan_fits(16, FP8, &p);
    REQUIRE(plan_at(16, BF16, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && !p.te_swap && p.resident_blocks > 15 && p.resident_blocks < 40, "bf16: step %d, %d blocks",
          p.step, p.resident_blocks);
    check_plan_fits(16, BF16, &p);
    REQUIRE(plan_at(16, Q4K_Q8, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 3 && !p.te_stream && !p.te_swap && p.resident_blocks > 50 && p.resident_blocks < 60,
          "Q4_K + Q8_0: step %d, stream %d, %d blocks", p.step, p.te_stream, p.resident_blocks);
    check_plan_fits(16, Q4K_Q8, &p);
}

/* 8G, 6G, 3G: the bf16 text encoder no longer fits whole and streams (its
 * embedding table left in host memory), kept beside the transformer so that
 * nothing loads again between prompts; fewer blocks stay resident as the
 * budget shrinks; each plan is within budget. */
static void small_budgets_stream_the_text_encoder_and_keep_fewer_blocks(void) {
    const model_types types[] = {BF16, FP8, Q4K};
    const double budgets[] = {8, 6, 3};
    for (size_t i = 0; i < 3; i++) {
        int prev = 61;
        for (size_t b = 0; b < 3; b++) {
            qi_residency_plan p;
            qi_error err = {{0}};
            REQUIRE(plan_at(budgets[b], types[i], &p, &err) == QI_OK, "%.0fG %s: %s", budgets[b],
                    qi_dtype_name(types[i].dit), err.msg);
            CHECK(p.step == 4 && p.te_stream && p.dit_stream && !p.mod_resident, "%.0fG %s: step %d", budgets[b],
                  qi_dtype_name(types[i].dit), p.step);
            /* kept beside the transformer, but at 3G the bf16 one's two 0.42 GiB slots leave no room: swapped */
            int swapped = budgets[b] == 3 && types[i].dit == QI_BF16;
            CHECK(p.te_swap == swapped && p.dit_evict == swapped, "%.0fG %s: swap %d, evict %d", budgets[b],
                  qi_dtype_name(types[i].dit), p.te_swap, p.dit_evict);
            CHECK(p.resident_blocks < prev, "%.0fG %s: %d blocks, %d at the larger budget", budgets[b],
                  qi_dtype_name(types[i].dit), p.resident_blocks, prev);
            check_plan_fits(budgets[b], types[i], &p);
            prev = p.resident_blocks;
        }
    }
    /* the cheaper the block, the more of them stay: Q4_K keeps more than fp8, fp8 more than bf16 */
    qi_residency_plan b, f, q;
    qi_error err = {{0}};
    REQUIRE(plan_at(8, BF16, &b, &err) == QI_OK && plan_at(8, FP8, &f, &err) == QI_OK &&
            plan_at(8, Q4K, &q, &err) == QI_OK);
    CHECK(q.resident_blocks > f.resident_blocks && f.resident_blocks > b.resident_blocks, "%d %d %d",
          q.resident_blocks, f.resident_blocks, b.resident_blocks);
    /* a whole decode would cost blocks here: the VAE tiles */
    CHECK(q.vae_tiled && q.arena < full_need().vae_untiled, "8G Q4_K: tiled %d, arena %zu", q.vae_tiled, q.arena);
}

/* 8G with a Q4_K text encoder: streamed beside the transformer (its two
 * 0.12 GiB slots cost two blocks; swapping it would reload both files per
 * prompt); 3G: a Q4_K transformer and text encoder still run, most blocks
 * streamed, still nothing loaded again. */
static void q4k_files_run_at_8g_and_at_3g_without_reloads(void) {
    qi_residency_plan p;
    qi_error err = {{0}};
    REQUIRE(plan_at(8, Q4K_Q4K, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && p.te_stream && !p.te_swap && p.resident_blocks > 40, "8G: step %d, %d blocks", p.step,
          p.resident_blocks);
    check_plan_fits(8, Q4K_Q4K, &p);
    REQUIRE(plan_at(3, Q4K_Q4K, &p, &err) == QI_OK, "%s", err.msg);
    CHECK(p.step == 4 && p.te_stream && !p.te_swap && p.dit_stream && p.resident_blocks < 20 && p.vae_tiled,
          "3G: step %d, swap %d, %d blocks", p.step, p.te_swap, p.resident_blocks);
    check_plan_fits(3, Q4K_Q4K, &p);
}

/* An Edit model's vision tower (visual.*, resident from its first request)
 * is planned for: at 8G the plan keeps fewer transformer blocks, by about
 * the tower's size, and still fits with it; the description names it. */
static void an_edit_models_vision_tower_is_planned_for(void) {
    size_t vision = 0, scratch;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(manifest, "text_encoder")) {
        if (strncmp(it->string, "visual.", 7)) continue;
        const cJSON *shape = cJSON_GetArrayItem(it, 1);
        int64_t ne[8] = {0};
        int nd = cJSON_GetArraySize(shape);
        for (int i = 0; i < nd && i < 8; i++) ne[i] = (int64_t)cJSON_GetArrayItem(shape, i)->valuedouble;
        vision += cuda_bytes(QI_BF16, nd, ne, &scratch);
    }
    CHECK(vision > ((size_t)1 << 30) && vision < ((size_t)3 << 29), "vision tower %.2f GiB (0.68 B params in bf16)",
          (double)vision / GIB);
    qi_residency_sizes t2i = full_sizes(Q4K_Q4K), edit = t2i;
    edit.vision = vision;
    qi_residency_need n = full_need();
    qi_residency_plan a, b;
    qi_error err = {{0}};
    REQUIRE(qi_residency_plan_make((size_t)8 * GIB, &t2i, &n, &a, &err) == QI_OK, "%s", err.msg);
    REQUIRE(qi_residency_plan_make((size_t)8 * GIB, &edit, &n, &b, &err) == QI_OK, "%s", err.msg);
    int fewer = a.resident_blocks - b.resident_blocks, expect = (int)(vision / t2i.dit_block);
    printf("  8G Q4_K: %d blocks resident for text to image, %d for Edit (vision tower %.2f GiB, a block %.2f GiB)\n",
           a.resident_blocks, b.resident_blocks, (double)vision / GIB, (double)t2i.dit_block / GIB);
    CHECK(fewer >= expect && fewer <= expect + 1, "%d fewer blocks, expected %d or %d", fewer, expect, expect + 1);
    CHECK(b.dit_peak <= b.budget && b.dit_peak >= vision + edit.fixed, "Edit peak %.2f GiB", (double)b.dit_peak / GIB);
    char text[512];
    qi_residency_plan_describe(&edit, &b, text, sizeof text);
    CHECK(strstr(text, "Edit vision tower"), "%s", text);
}

/* The need of an img2img request at 1024² output whose picture is side ×
 * side pixels: the encoder's peak is about three activations of 96 × H × W
 * (model/vae.c plan_encode), bf16. */
static qi_residency_need img2img_need(int side) {
    qi_residency_need n = full_need();
    n.vae_enc_untiled = 3 * (size_t)96 * side * side * 2;
    n.vae_enc_tiled = 3 * (size_t)96 * 256 * 256 * 2;
    return n;
}

/* The encoder's peak is counted (img2img, inpaint, Edit): for every budget and
 * file type that plans, the arena holds the encode as planned — whole only
 * when its activations fit the arena, in tiles exactly when they do not —
 * and both phases stay within the budget. A roomy budget encodes a 1024²
 * picture whole; 3G encodes it in tiles, and the plan's line says which. A
 * request that encodes nothing is described as before ("VAE whole"). */
static void the_vae_encoders_peak_is_planned_for(void) {
    const model_types types[] = {BF16, FP8, Q4K, Q4K_Q4K, Q2K_Q8};
    const double budgets[] = {80, 24, 16, 8, 6, 3};
    const int sides[] = {1024, 2048, 4096};
    qi_residency_plan p;
    qi_error err = {{0}};
    int planned = 0, tiled = 0, whole = 0;
    for (size_t t = 0; t < QI_ARRAY_LEN(types); t++)
        for (size_t b = 0; b < QI_ARRAY_LEN(budgets); b++)
            for (size_t k = 0; k < QI_ARRAY_LEN(sides); k++) {
                qi_residency_sizes s = full_sizes(types[t]);
                qi_residency_need n = img2img_need(sides[k]);
                if (qi_residency_plan_make((size_t)(budgets[b] * (double)GIB), &s, &n, &p, &err) != QI_OK) continue;
                planned++;
                size_t enc = p.vae_enc_tiled ? n.vae_enc_tiled : n.vae_enc_untiled;
                CHECK(p.vae_encode && p.arena >= enc && p.vae_enc_tiled == (n.vae_enc_untiled > p.arena) &&
                          p.text_peak <= p.budget && p.dit_peak <= p.budget,
                      "%.0fG %s, %d² picture: encode %s, arena %.2f GiB, whole encode %.2f GiB", budgets[b],
                      s.dit_type, sides[k], p.vae_enc_tiled ? "tiled" : "whole", (double)p.arena / GIB,
                      (double)n.vae_enc_untiled / GIB);
                tiled += p.vae_enc_tiled;
                whole += !p.vae_enc_tiled;
            }
    printf("  %d plans with a picture to encode: %d encode it whole, %d in tiles\n", planned, whole, tiled);
    CHECK(tiled > 0 && whole > 0, "both choices must occur over these budgets");
    qi_residency_sizes s = full_sizes(Q4K_Q4K);
    qi_residency_need n = img2img_need(1024);
    char text[512];
    REQUIRE(qi_residency_plan_make((size_t)24 * GIB, &s, &n, &p, &err) == QI_OK, "%s", err.msg);
    qi_residency_plan_describe(&s, &p, text, sizeof text);
    CHECK(!p.vae_enc_tiled && strstr(text, "VAE decode whole, encode whole"), "24G: %s", text);
    REQUIRE(qi_residency_plan_make((size_t)3 * GIB, &s, &n, &p, &err) == QI_OK, "%s", err.msg);
    qi_residency_plan_describe(&s, &p, text, sizeof text);
    printf("  3G Q4_K, img2img 1024²: %s\n", text);
    CHECK(p.vae_enc_tiled && p.arena < n.vae_enc_untiled && strstr(text, "encode in tiles"), "3G: %s", text);
    n = full_need();
    REQUIRE(qi_residency_plan_make((size_t)3 * GIB, &s, &n, &p, &err) == QI_OK, "%s", err.msg);
    qi_residency_plan_describe(&s, &p, text, sizeof text);
    CHECK(!p.vae_encode && !p.vae_enc_tiled && strstr(text, "; VAE in tiles;") && !strstr(text, ", encode "),
          "text to image: %s", text);
}

/* The refusal names the part that did not fit and a --vram that works:
 * planning again at that budget succeeds, and 1% under it still fails. */
static void refusal_names_the_part_and_a_budget_that_fits(double gib, model_types ty, const char *part) {
    qi_residency_plan p;
    qi_error err = {{0}};
    qi_status st = plan_at(gib, ty, &p, &err);
    CHECK(st == QI_ERR_NOMEM, "%.0fG %s/%s: status %d", gib, qi_dtype_name(ty.dit), qi_dtype_name(ty.te), st);
    CHECK(strstr(err.msg, part) != NULL, "names the %s: %s", part, err.msg);
    const char *v = strstr(err.msg, "--vram ");
    REQUIRE(v != NULL, "gives a budget: %s", err.msg);
    double want = atof(v + 7);
    CHECK(want > gib, "%.2f", want);
    qi_error err2 = {{0}};
    CHECK(plan_at(want, ty, &p, &err2) == QI_OK, "at the --vram it gives (%.2fG): %s", want, err2.msg);
    CHECK(plan_at(want * 0.99, ty, &p, &err2) == QI_ERR_NOMEM, "1%% under %.2fG still fits", want);
}

/* 1G: the least each file needs is more (the largest of the transformer
 * with every block streamed, the text encoder with every layer streamed). */
static void budgets_too_small_are_refused_naming_what_did_not_fit(void) {
    refusal_names_the_part_and_a_budget_that_fits(1, BF16, "BF16 transformer"); /* 2 slots of 0.42 GiB */
    refusal_names_the_part_and_a_budget_that_fits(1, FP8, "BF16 text encoder"); /* 2 slots of 0.43 GiB */
    refusal_names_the_part_and_a_budget_that_fits(1, Q4K, "BF16 text encoder");
    refusal_names_the_part_and_a_budget_that_fits(1, Q4K_Q4K, "Q4_K transformer");
}

static void describe_says_what_streams(void) {
    qi_residency_plan p;
    qi_error err = {{0}};
    REQUIRE(plan_at(8, Q4K_Q4K, &p, &err) == QI_OK, "%s", err.msg);
    qi_residency_sizes s = full_sizes(Q4K_Q4K);
    char buf[512];
    qi_residency_plan_describe(&s, &p, buf, sizeof buf);
    char want[64];
    snprintf(want, sizeof want, "%d of 60 blocks resident", p.resident_blocks);
    CHECK(strstr(buf, want) && strstr(buf, "text encoder streamed") && strstr(buf, "in tiles") &&
              !strstr(buf, "freed"),
          "%s", buf);
    /* 3G with bf16 files: nothing fits beside, the last resort says what loads again */
    s = full_sizes(BF16);
    REQUIRE(plan_at(3, BF16, &p, &err) == QI_OK, "%s", err.msg);
    qi_residency_plan_describe(&s, &p, buf, sizeof buf);
    CHECK(p.te_swap && p.dit_evict && strstr(buf, "freed after the prompt") &&
              strstr(buf, "freed while the text encoder loads again"),
          "%s", buf);
    /* the table of every plan, for the record (README "Which files for which GPU" quotes it): the
     * file pairs people download (ComfyUI fp8 + fp8_scaled text encoder, GGUF + Q8_0 text encoder) */
    const model_types types[] = {BF16, FP8, FP8_FP8, Q8_Q8, Q4K, Q4K_Q8, Q4K_Q4K, Q2K_Q8};
    const double budgets[] = {80, 48, 24, 16, 12, 8, 6, 3, 1};
    for (size_t t = 0; t < QI_ARRAY_LEN(types); t++)
        for (size_t b = 0; b < QI_ARRAY_LEN(budgets); b++) {
            qi_residency_sizes sz = full_sizes(types[t]);
            if (plan_at(budgets[b], types[t], &p, &err) != QI_OK) {
                printf("  %4.0fG %-8s TE %-5s refused: %.90s...\n", budgets[b], sz.dit_type, sz.te_type, err.msg + 42);
                continue;
            }
            qi_residency_plan_describe(&sz, &p, buf, sizeof buf);
            printf("  %4.0fG %-8s TE %-5s step %d: %s\n", budgets[b], sz.dit_type, sz.te_type, p.step, buf);
        }
}

/* The classifiers the sizes come through. */
static void weight_names_are_classified(void) {
    int i;
    CHECK(qi_dit_weight_unit("transformer_blocks.12.img_mlp.net.2.weight", 2, &i) == QI_DIT_UNIT_BLOCK && i == 12);
    CHECK(qi_dit_weight_unit("transformer_blocks.7.txt_mod.1.weight", 2, &i) == QI_DIT_UNIT_MOD && i == 7);
    CHECK(qi_dit_weight_unit("transformer_blocks.7.txt_mod.1.bias", 1, &i) == QI_DIT_UNIT_GLOBAL);
    CHECK(qi_dit_weight_unit("transformer_blocks.0.attn.norm_q.weight", 1, &i) == QI_DIT_UNIT_GLOBAL);
    CHECK(qi_dit_weight_unit("proj_out.weight", 2, &i) == QI_DIT_UNIT_GLOBAL && i == -1);
    CHECK(qi_text_encoder_weight_unit("model.layers.3.mlp.up_proj.weight", 2, &i) == QI_TE_UNIT_LAYER && i == 3);
    CHECK(qi_text_encoder_weight_unit("model.language_model.layers.27.self_attn.q_proj.weight", 2, &i) ==
              QI_TE_UNIT_LAYER && i == 27);
    CHECK(qi_text_encoder_weight_unit("model.layers.3.self_attn.q_proj.bias", 1, &i) == QI_TE_UNIT_GLOBAL);
    CHECK(qi_text_encoder_weight_unit("model.embed_tokens.weight", 2, &i) == QI_TE_UNIT_EMBED);
    CHECK(qi_text_encoder_weight_unit("model.norm.weight", 1, &i) == QI_TE_UNIT_GLOBAL);
    CHECK(qi_text_encoder_weight_unit("visual.blocks.0.attn.qkv.weight", 2, &i) == QI_TE_UNIT_NONE);
    CHECK(qi_text_encoder_weight_unit("lm_head.weight", 2, &i) == QI_TE_UNIT_NONE);
}

int main(void) {
    qi_error err = {{0}};
    if (qi_json_load(QI_BENCH_MANIFEST, &manifest, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(weight_names_are_classified);
    RUN(sizes_match_the_full_size_model);
    RUN(everything_is_resident_at_80g);
    RUN(at_24g_nothing_is_loaded_again_between_requests);
    RUN(at_16g_the_text_encoder_streams_beside_the_transformer);
    RUN(small_budgets_stream_the_text_encoder_and_keep_fewer_blocks);
    RUN(q4k_files_run_at_8g_and_at_3g_without_reloads);
    RUN(budgets_too_small_are_refused_naming_what_did_not_fit);
    RUN(describe_says_what_streams);
    RUN(an_edit_models_vision_tower_is_planned_for);
    RUN(the_vae_encoders_peak_is_planned_for);
    cJSON_Delete(manifest);
    TEST_END();
}

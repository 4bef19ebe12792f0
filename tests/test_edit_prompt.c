/*
 * test_edit_prompt.c — claims about Qwen-Image-Edit prompt encoding: the
 * Edit template and its 64-id drop, "Picture N: " groups with the
 * <|image_pad|> runs expanded to each picture's token count, M-RoPE (t, h, w)
 * grid positions, and the prompt embeddings with the vision tower's rows
 * inserted — against every Edit case of shared/reference/edit (prompt and
 * negative prompt), plus the plain-position case that documents what
 * diffusers main with transformers 5.x computes instead (README E5).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "engine/edit.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/edit_prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "model/vision.h"
#include "test.h"
#include "testdata.h"

#define EDIT_TE QI_REF_EDIT "/model-2509/text_encoder"
#define TOKENIZER_DIR QI_TEST_DATA "/tiny-model/tokenizer"

static qi_backend *g_be;
/* `-b cuda` runs the same claims on the CUDA backend (bf16 weights and
 * activations): the float32 bounds widen to g_tol (ctest: <name>_cuda). */
static double g_tol = 1e-5;
static qi_source *g_src;
static qi_text_encoder *g_te;
static qi_vision *g_vt;
static qi_tokenizer *g_tok;

typedef struct edit_case {
    const char *name;
    const char *pictures_from; /* the case whose tensors hold the pictures' vision rows */
    int plain_positions;
} edit_case;

static const edit_case cases[] = {
    {"edit2509_1img_lightning4_lora", "edit2509_1img_lightning4_lora", 0},
    {"edit2509_1img_lightning4_lora_plainpos", "edit2509_1img_lightning4_lora", 1},
    {"edit2509_2img_cfg4", "edit2509_2img_cfg4", 0},
    {"edit2511_2img_lightning4_lora", "edit2511_2img_lightning4_lora", 0},
};

/* An int32 tensor copied out (NULL when absent); its element count in *n. */
static int32_t *ints(const qi_st_file *f, const char *name, int64_t *n) {
    const qi_st_tensor *t = qi_st_file_find(f, name);
    if (!t || t->dtype != QI_I32) return NULL;
    int32_t *p = malloc(t->nbytes ? t->nbytes : 1);
    memcpy(p, t->data, t->nbytes);
    *n = (int64_t)(t->nbytes / 4);
    return p;
}

/* The pictures' grids (image_grid_thw's h, w) of a case; their count. */
static int case_grids(const qi_st_file *f, int (*grid)[2]) {
    int64_t n = 0;
    int32_t *g = ints(f, "image_grid_thw", &n);
    if (!g) return 0;
    int pics = (int)(n / 3);
    for (int k = 0; k < pics && k < QI_EDIT_MAX_PICTURES; k++) {
        grid[k][0] = g[k * 3 + 1];
        grid[k][1] = g[k * 3 + 2];
    }
    free(g);
    return pics;
}

/* ---- claims ---------------------------------------------------------------- */

/* The Edit template's first 64 ids (everything dropped) and a picture group,
 * as sizes.json records them from the reference tokenizer. */
static void template_prefix_is_the_64_dropped_ids(void) {
    cJSON *root = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_json_load(QI_REF_EDIT "/sizes.json", &root, &err) == QI_OK, "%s", err.msg);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "edit_template_prefix_ids");
    const cJSON *pic = cJSON_GetObjectItemCaseSensitive(root, "picture_prompt_ids");
    int grid[1][2] = {{2, 2}};
    qi_edit_tokens tok;
    REQUIRE(qi_edit_prompt_tokenize(g_tok, "", 1, grid, 2, 0, &tok, &err) == QI_OK, "%s", err.msg);
    CHECK(cJSON_GetArraySize(pre) == QI_EDIT_DROP_IDX, "sizes.json: %d prefix ids", cJSON_GetArraySize(pre));
    for (int i = 0; i < cJSON_GetArraySize(pre) && i < tok.n; i++)
        CHECK(tok.ids[i] == cJSON_GetArrayItem(pre, i)->valueint, "prefix id %d: %d vs %d", i, tok.ids[i],
              cJSON_GetArrayItem(pre, i)->valueint);
    /* one pad for a 2×2 patch grid: the group's ids follow the prefix unchanged */
    for (int i = 0; i < cJSON_GetArraySize(pic) && QI_EDIT_DROP_IDX + i < tok.n; i++)
        CHECK(tok.ids[QI_EDIT_DROP_IDX + i] == cJSON_GetArrayItem(pic, i)->valueint, "picture id %d", i);
    qi_edit_tokens_free(&tok);
    cJSON_Delete(root);
}

/* ids and position ids of every case's prompt (and negative prompt): the
 * reference's input_ids and te.position_ids exactly. */
static void ids_and_positions_match(void) {
    for (size_t ci = 0; ci < QI_ARRAY_LEN(cases); ci++) {
        cJSON *j = ref_edit_json(cases[ci].name);
        qi_st_file *f = ref_edit_tensors(cases[ci].name);
        REQUIRE(j && f);
        int grid[QI_EDIT_MAX_PICTURES][2];
        int pics = case_grids(f, grid);
        REQUIRE(pics > 0, "%s: no image_grid_thw", cases[ci].name);
        for (int neg = 0; neg < 2; neg++) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, neg ? "negative_prompt" : "prompt");
            if (!cJSON_IsString(p)) continue;
            int64_t n_ids = 0, n_pos = 0;
            int32_t *ref_ids = ints(f, neg ? "neg.input_ids" : "input_ids", &n_ids);
            int32_t *ref_pos = ints(f, neg ? "neg.te.position_ids" : "te.position_ids", &n_pos);
            REQUIRE(ref_ids && ref_pos, "%s: no ids / positions", cases[ci].name);
            qi_edit_tokens tok;
            qi_error err = {{0}};
            REQUIRE(qi_edit_prompt_tokenize(g_tok, p->valuestring, pics, grid, 2, cases[ci].plain_positions, &tok,
                                            &err) == QI_OK,
                    "%s", err.msg);
            CHECK(tok.n == n_ids && 3 * tok.n == n_pos, "%s%s: %d ids, reference %lld", cases[ci].name,
                  neg ? " (negative)" : "", tok.n, (long long)n_ids);
            int bad_id = -1, bad_pos = -1;
            for (int i = 0; i < tok.n && i < n_ids; i++)
                if (tok.ids[i] != ref_ids[i] && bad_id < 0) bad_id = i;
            for (int i = 0; i < 3 * tok.n && i < n_pos; i++)
                if (tok.pos[i] != ref_pos[i] && bad_pos < 0) bad_pos = i;
            CHECK(bad_id < 0, "%s: first different id at %d", cases[ci].name, bad_id);
            CHECK(bad_pos < 0, "%s: first different position at axis %d, token %d: %d vs %d", cases[ci].name,
                  bad_pos / (tok.n ? tok.n : 1), bad_pos % (tok.n ? tok.n : 1), tok.pos[bad_pos < 0 ? 0 : bad_pos],
                  ref_pos[bad_pos < 0 ? 0 : bad_pos]);
            qi_edit_tokens_free(&tok);
            free(ref_ids);
            free(ref_pos);
        }
        qi_st_close(f);
        cJSON_Delete(j);
    }
}

/* Encodes a case's prompt (neg: its negative prompt) with picture rows
 * `rows`; returns rel L2 against the reference prompt_embeds (-1: failed). */
static double encode_case(const edit_case *c, int neg, const float *rows, int plain, double *max_abs) {
    cJSON *j = ref_edit_json(c->name);
    qi_st_file *f = ref_edit_tensors(c->name);
    if (!j || !f) return -1;
    int grid[QI_EDIT_MAX_PICTURES][2];
    int pics = case_grids(f, grid);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, neg ? "negative_prompt" : "prompt");
    double rel = -1;
    qi_edit_tokens tok;
    qi_error err = {{0}};
    int64_t n_ref = 0;
    float *ref = ref_floats(f, neg ? "neg.prompt_embeds" : "prompt_embeds", &n_ref);
    float *emb = NULL;
    int L = 0;
    if (cJSON_IsString(p) && ref && pics &&
        qi_edit_prompt_tokenize(g_tok, p->valuestring, pics, grid, 2, plain, &tok, &err) == QI_OK) {
        qi_status st = qi_text_encoder_encode_edit(g_te, tok.ids, tok.n, tok.pos, rows, tok.n_image_tokens,
                                                   QI_EDIT_DROP_IDX, 1024, &emb, &L, &err);
        CHECK(st == QI_OK, "%s: %s", c->name, err.msg);
        CHECK((int64_t)L * 64 == n_ref, "%s: %d rows, reference %lld", c->name, L, (long long)(n_ref / 64));
        if (st == QI_OK && (int64_t)L * 64 == n_ref) {
            rel = qi_rel_l2(emb, ref, (size_t)n_ref);
            *max_abs = qi_max_abs_diff(emb, ref, (size_t)n_ref);
        }
        qi_edit_tokens_free(&tok);
    } else {
        CHECK(0, "%s: cannot tokenize (%s)", c->name, err.msg);
    }
    free(emb);
    free(ref);
    qi_st_close(f);
    cJSON_Delete(j);
    return rel;
}

/* prompt_embeds (and neg.prompt_embeds) of every case, with the reference's
 * vision rows (the text encoder alone) to float32 rounding. */
static void prompt_embeds_match(void) {
    for (size_t ci = 0; ci < QI_ARRAY_LEN(cases); ci++) {
        qi_st_file *f = ref_edit_tensors(cases[ci].pictures_from);
        REQUIRE(f);
        float *rows = ref_floats(f, "vision.pooler_output", NULL);
        qi_st_close(f);
        REQUIRE(rows, "%s: no vision rows", cases[ci].name);
        for (int neg = 0; neg < 2; neg++) {
            cJSON *j = ref_edit_json(cases[ci].name);
            int has = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, neg ? "negative_prompt" : "prompt"));
            cJSON_Delete(j);
            if (!has) continue;
            double mad = 0, rel = encode_case(&cases[ci], neg, rows, cases[ci].plain_positions, &mad);
            printf("     %s%s: prompt_embeds rel L2 %.3g, max abs %.3g\n", cases[ci].name, neg ? " (negative)" : "", rel,
                   mad);
            CHECK(rel >= 0 && rel <= g_tol, "%s: rel L2 %g", cases[ci].name, rel);
        }
        free(rows);
    }
}

/* The whole Edit conditioning from the pictures: processor-resized pixels →
 * our vision tower → our text encoder, against prompt_embeds. */
static void embeds_from_pictures_match(void) {
    REQUIRE(g_vt);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    const edit_case *c = &cases[2]; /* two pictures */
    qi_st_file *f = ref_edit_tensors(c->name);
    REQUIRE(f);
    float *rows = malloc((size_t)(63 + 63) * 64 * sizeof(float));
    int64_t row = 0;
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "cond%d.vl_processor_resized_u8", k);
        const qi_st_tensor *t = qi_st_file_find(f, name);
        REQUIRE(t && t->dtype == QI_U8);
        int H = (int)t->shape[0], W = (int)t->shape[1];
        float *px = malloc((size_t)(H / 14) * (W / 14) * 1176 * sizeof(float));
        qi_vl_patchify((const uint8_t *)t->data, H, W, &pp, px);
        qi_error err = {{0}};
        CHECK(qi_vision_encode(g_vt, px, H / 14, W / 14, rows + row * 64, &err) == QI_OK, "%s", err.msg);
        row += (H / 28) * (W / 28);
        free(px);
    }
    qi_st_close(f);
    REQUIRE(row == 126, "%lld picture tokens, expected 63 + 63", (long long)row);
    double mad = 0, rel = encode_case(c, 0, rows, 0, &mad);
    printf("     %s from pictures: prompt_embeds rel L2 %.3g, max abs %.3g\n", c->name, rel, mad);
    CHECK(rel >= 0 && rel <= g_tol, "rel L2 %g", rel);
    free(rows);
}

/* Plain positions change the embeddings by tens of percent (README E5:
 * prompt_embeds rel 0.27): the switch really switches, and grid positions
 * are what the grid-position reference needs. */
static void plain_positions_diverge(void) {
    qi_st_file *f = ref_edit_tensors(cases[0].name);
    REQUIRE(f);
    float *rows = ref_floats(f, "vision.pooler_output", NULL);
    qi_st_close(f);
    REQUIRE(rows);
    double mad = 0, rel_plain_vs_grid = encode_case(&cases[0], 0, rows, 1, &mad);
    printf("     plain positions against the grid-position reference: rel L2 %.3g, max abs %.3g\n",
           rel_plain_vs_grid, mad);
    CHECK(rel_plain_vs_grid > 0.1 && rel_plain_vs_grid < 0.5, "rel %g (README: 0.27)", rel_plain_vs_grid);
    free(rows);
}

static int pair_of(const cJSON *row, const char *key, int i) {
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(row, key), i)->valueint;
}

/* Every size of every sizes.json row (14 sources × real and fixture areas):
 * condition, processor, grid, image tokens, VAE size, its segment and
 * condition tokens, and the default output size. */
static void picture_sizes_match_sizes_json(void) {
    cJSON *root = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_json_load(QI_REF_EDIT "/sizes.json", &root, &err) == QI_OK, "%s", err.msg);
    const char *sets[2] = {"real", "fixture"};
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    int rows_checked = 0;
    for (int si = 0; si < 2; si++) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "constants"), sets[si]);
        int64_t vl = (int64_t)cJSON_GetObjectItemCaseSensitive(c, "CONDITION_IMAGE_SIZE")->valuedouble;
        int64_t vae = (int64_t)cJSON_GetObjectItemCaseSensitive(c, "VAE_IMAGE_SIZE")->valuedouble;
        const cJSON *row;
        cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "rows"), sets[si])) {
            int sw = pair_of(row, "src_wh", 0), sh = pair_of(row, "src_wh", 1);
            qi_edit_picture_sizes s;
            REQUIRE(qi_edit_picture_sizes_of(sw, sh, vl, vae, &pp, &s, &err) == QI_OK, "%s", err.msg);
            int ow, oh;
            qi_edit_output_size(&s, 0, 0, &ow, &oh);
            int ok = s.cond_w == pair_of(row, "condition_wh", 0) && s.cond_h == pair_of(row, "condition_wh", 1) &&
                     s.proc_w == pair_of(row, "processor_resized_wh", 0) &&
                     s.proc_h == pair_of(row, "processor_resized_wh", 1) &&
                     s.grid_h == pair_of(row, "image_grid_thw", 1) && s.grid_w == pair_of(row, "image_grid_thw", 2) &&
                     s.image_tokens == cJSON_GetObjectItemCaseSensitive(row, "image_tokens")->valueint &&
                     s.vae_w == pair_of(row, "vae_wh", 0) && s.vae_h == pair_of(row, "vae_wh", 1) &&
                     s.vae_h / 8 == pair_of(row, "vae_latent_hw", 0) && s.vae_w / 8 == pair_of(row, "vae_latent_hw", 1) &&
                     s.seg_h == pair_of(row, "img_shape", 1) && s.seg_w == pair_of(row, "img_shape", 2) &&
                     s.condition_tokens == cJSON_GetObjectItemCaseSensitive(row, "condition_tokens")->valueint &&
                     oh == pair_of(row, "default_output_hw_if_last_image", 0) &&
                     ow == pair_of(row, "default_output_hw_if_last_image", 1);
            CHECK(ok, "%s areas, source %dx%d: cond %dx%d proc %dx%d grid %dx%d tokens %d vae %dx%d seg %dx%d out %dx%d",
                  sets[si], sw, sh, s.cond_w, s.cond_h, s.proc_w, s.proc_h, s.grid_w, s.grid_h, s.image_tokens, s.vae_w,
                  s.vae_h, s.seg_w, s.seg_h, ow, oh);
            rows_checked++;
        }
    }
    CHECK(rows_checked == 28, "%d rows", rows_checked);
    qi_edit_picture_sizes s;
    int ow, oh;
    REQUIRE(qi_edit_picture_sizes_of(100, 75, 224 * 224, 256 * 256, &pp, &s, &err) == QI_OK);
    qi_edit_output_size(&s, 100, 75, &ow, &oh);
    CHECK(ow == 96 && oh == 64, "a requested 100x75 rounds down to 96x64 (edit2511): %dx%d", ow, oh);
    CHECK(qi_edit_picture_sizes_of(0, 5, QI_EDIT_VL_AREA, QI_EDIT_VAE_AREA, &pp, &s, &err) == QI_ERR_ARG, "0 wide");
    CHECK(qi_edit_picture_sizes_of(16000, 16000, QI_EDIT_VL_AREA, QI_EDIT_VAE_AREA, &pp, &s, &err) == QI_OK &&
              s.cond_w == 384 && s.vae_w == 1024,
          "a 16000² picture shrinks to the areas");
    CHECK(qi_edit_picture_sizes_of(1, 1, QI_EDIT_VL_AREA, QI_EDIT_VAE_AREA, &pp, &s, &err) == QI_OK && s.cond_w == 384,
          "a 1x1 picture grows to the areas");
    CHECK(qi_edit_picture_sizes_of(16384, 1, QI_EDIT_VL_AREA, QI_EDIT_VAE_AREA, &pp, &s, &err) == QI_ERR_ARG,
          "a 16384x1 strip is refused: %s", err.msg);
    cJSON_Delete(root);
}

/* From the pictures at their condition size (after the pipeline's Lanczos
 * resize): the processor resize, vision rows and both prompts' embeddings. */
static void embeds_from_condition_pictures_match(void) {
    REQUIRE(g_vt);
    const edit_case *c = &cases[2];
    qi_st_file *f = ref_edit_tensors(c->name);
    cJSON *j = ref_edit_json(c->name);
    REQUIRE(f && j);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    qi_edit_picture_sizes s[2];
    const uint8_t *rgb[2];
    qi_error err = {{0}};
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(j, "images_info");
    for (int k = 0; k < 2; k++) {
        const cJSON *pi = cJSON_GetArrayItem(info, k);
        REQUIRE(qi_edit_picture_sizes_of(pair_of(pi, "src_wh", 0), pair_of(pi, "src_wh", 1), 224 * 224, 256 * 256, &pp,
                                         &s[k], &err) == QI_OK,
                "%s", err.msg);
        char name[64];
        snprintf(name, sizeof name, "cond%d.vl_resized_u8", k);
        const qi_st_tensor *t = qi_st_file_find(f, name);
        REQUIRE(t && t->shape[0] == s[k].cond_h && t->shape[1] == s[k].cond_w, "%s is the condition size", name);
        rgb[k] = t->data;
    }
    float *rows = NULL;
    REQUIRE(qi_edit_vision_rows(g_vt, 2, rgb, s, &rows, &err) == QI_OK, "%s", err.msg);
    for (int neg = 0; neg < 2; neg++) {
        const char *p = cJSON_GetObjectItemCaseSensitive(j, neg ? "negative_prompt" : "prompt")->valuestring;
        float *emb = NULL;
        int L = 0;
        int64_t n = 0;
        float *ref = ref_floats(f, neg ? "neg.prompt_embeds" : "prompt_embeds", &n);
        CHECK(qi_edit_encode_text(g_te, g_tok, p, 2, s, rows, 0, 0, &emb, &L, &err) == QI_OK, "%s", err.msg);
        CHECK(emb && ref && (int64_t)L * 64 == n, "rows %d", L);
        if (emb && ref && (int64_t)L * 64 == n) {
            double rel = qi_rel_l2(emb, ref, (size_t)n);
            printf("     %s%s from condition-size pictures: rel L2 %.3g\n", c->name, neg ? " (negative)" : "", rel);
            CHECK(rel <= g_tol, "rel %g", rel);
        }
        free(emb);
        free(ref);
    }
    free(rows);
    cJSON_Delete(j);
    qi_st_close(f);
}

static void odd_inputs_are_refused(void) {
    qi_edit_tokens tok;
    qi_error err = {{0}};
    int grid[1][2] = {{3, 4}};
    CHECK(qi_edit_prompt_tokenize(g_tok, "x", 1, grid, 2, 0, &tok, &err) == QI_ERR_ARG, "odd grid refused");
    int ok[1][2] = {{2, 2}};
    CHECK(qi_edit_prompt_tokenize(g_tok, "x", 0, ok, 2, 0, &tok, &err) == QI_ERR_ARG, "no picture refused");
    CHECK(qi_edit_prompt_tokenize(g_tok, "<|image_pad|>", 1, ok, 2, 0, &tok, &err) == QI_ERR_ARG,
          "a prompt smuggling an image pad is refused: %s", err.msg);
    REQUIRE(qi_edit_prompt_tokenize(g_tok, "x", 1, ok, 2, 0, &tok, &err) == QI_OK, "%s", err.msg);
    float row[64] = {0}, *emb = NULL;
    int L = 0;
    CHECK(qi_text_encoder_encode_edit(g_te, tok.ids, tok.n, tok.pos, row, 0, QI_EDIT_DROP_IDX, 512, &emb, &L, &err) ==
              QI_ERR_ARG,
          "a pad without a picture row is refused");
    CHECK(qi_text_encoder_encode_edit(g_te, tok.ids, tok.n, tok.pos, row, 1, QI_EDIT_DROP_IDX, 3, &emb, &L, &err) ==
                  QI_OK &&
              L == 3,
          "max_sequence_length cuts the rows: L %d", L);
    free(emb);
    emb = NULL;
    qi_edit_tokens_free(&tok);
    /* the Edit pipeline never cuts: 600 words give more than 512 rows */
    char *longp = malloc(600 * 2 + 1);
    for (int i = 0; i < 600; i++) memcpy(longp + 2 * i, "a ", 2);
    longp[1200] = 0;
    REQUIRE(qi_edit_prompt_tokenize(g_tok, longp, 1, ok, 2, 0, &tok, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_text_encoder_encode_edit(g_te, tok.ids, tok.n, tok.pos, row, 1, QI_EDIT_DROP_IDX, 0, &emb, &L, &err) ==
                  QI_OK &&
              L == tok.n - QI_EDIT_DROP_IDX && L > 512,
          "no cut: %d rows of %d ids", L, tok.n);
    free(emb);
    free(longp);
    qi_edit_tokens_free(&tok);
}

int main(int argc, char **argv) {
    qi_error err = {{0}};
    const char *device = argc > 2 && !strcmp(argv[1], "-b") ? argv[2] : "cpu";
    if (strcmp(device, "cpu")) g_tol = 5e-2;
    if (qi_backend_create(device, 2, (size_t)512 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "%s backend: %s\n", device, err.msg);
        return 1;
    }
    if (qi_tokenizer_load(TOKENIZER_DIR, &g_tok, &err) != QI_OK) fprintf(stderr, "  tokenizer: %s\n", err.msg);
    if (qi_source_open_folder(EDIT_TE, QI_COMPONENT_TEXT_ENCODER, &g_src, &err) != QI_OK ||
        qi_text_encoder_load(g_src, g_be, &g_te, &err) != QI_OK || qi_vision_load(g_src, g_be, &g_vt, &err) != QI_OK)
        fprintf(stderr, "  text encoder: %s\n", err.msg);
    if (!g_tok || !g_te) return 1;
    RUN(template_prefix_is_the_64_dropped_ids);
    RUN(ids_and_positions_match);
    RUN(prompt_embeds_match);
    RUN(embeds_from_pictures_match);
    RUN(plain_positions_diverge);
    RUN(picture_sizes_match_sizes_json);
    RUN(embeds_from_condition_pictures_match);
    RUN(odd_inputs_are_refused);
    qi_vision_free(g_vt);
    qi_text_encoder_free(g_te);
    qi_source_close(g_src);
    qi_tokenizer_free(g_tok);
    g_be->ops->destroy(g_be);
    TEST_END();
}

/*
 * test_vision.c — claims about the Qwen2.5-VL vision tower and the Edit
 * picture preparation, against transformers' tensors of the Edit cases
 * (shared/reference/edit/<case>: the processor-resized pictures,
 * pixel_values rows, image_grid_thw, vision.pooler_output) on the tiny
 * tower (depth 2, block 0 windowed, block 1 full attention), and the size
 * rules against sizes.json (real and fixture areas, 14 source sizes).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "io/resize_torch.h"
#include "io/source.h"
#include "model/vision.h"
#include "test.h"
#include "testdata.h"

#define EDIT_TE QI_REF_EDIT "/model-2509/text_encoder"
/* The format fixtures (../shared/reference/formats beside this checkout);
 * the claim is skipped, saying so, where they are absent. */
#define FORMATS QI_TEST_DATA "/../../../shared/reference/formats"

static qi_backend *g_be;
/* `-b cuda` runs the same claims on the CUDA backend (bf16 weights and
 * activations): the float32 bounds widen to g_tol (ctest: <name>_cuda). */
static double g_tol = 1e-5;
static qi_source *g_src;
static qi_vision *g_vt;

static const char *const edit_cases[] = {"edit2509_1img_lightning4_lora", "edit2509_2img_cfg4",
                                         "edit2511_2img_lightning4_lora"};

/* A copy of an int32 / uint8 tensor's bytes (the mapping may be unaligned). */
static void *raw_copy(const qi_st_file *f, const char *name, qi_dtype want, const qi_st_tensor **t) {
    *t = qi_st_file_find(f, name);
    if (!*t || (*t)->dtype != want) return NULL;
    void *p = malloc((*t)->nbytes ? (*t)->nbytes : 1);
    memcpy(p, (*t)->data, (*t)->nbytes);
    return p;
}

/* ---- claims ---------------------------------------------------------------- */

static void tower_loads_with_the_edit_config(void) {
    REQUIRE(g_vt, "no vision tower loaded");
    const qi_vision_config *c = qi_vision_get_config(g_vt);
    CHECK(c->depth == 2 && c->hidden_size == 32 && c->num_heads == 2 && c->head_dim == 16,
          "depth %d hidden %d heads %d", c->depth, c->hidden_size, c->num_heads);
    CHECK(c->out_hidden_size == 64 && c->intermediate_size == 64 && c->patch_dim == 1176, "out %d I %d",
          c->out_hidden_size, c->intermediate_size);
    CHECK(c->n_fullatt == 1 && c->fullatt[0] == 1, "fullatt_block_indexes as model-2509's config: [1]");
    CHECK(qi_vision_present(g_src), "the text encoder source carries visual.*");
}

/* qi_vl_patchify of each processor-resized picture gives transformers'
 * pixel_values rows bit for bit (first rows of picture 0, last rows of the
 * last picture). */
static void patchify_matches_pixel_values(void) {
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    for (size_t ci = 0; ci < QI_ARRAY_LEN(edit_cases); ci++) {
        qi_st_file *f = ref_edit_tensors(edit_cases[ci]);
        REQUIRE(f);
        const qi_st_tensor *tg;
        int32_t *grid = raw_copy(f, "image_grid_thw", QI_I32, &tg);
        REQUIRE(grid, "%s: no image_grid_thw", edit_cases[ci]);
        int n_pic = (int)tg->shape[0];
        float *head = ref_floats(f, "pixel_values.head", NULL), *tail = ref_floats(f, "pixel_values.tail", NULL);
        for (int k = 0; k < n_pic; k++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.vl_processor_resized_u8", k);
            const qi_st_tensor *ti;
            uint8_t *rgb = raw_copy(f, name, QI_U8, &ti);
            CHECK(rgb, "%s: no %s", edit_cases[ci], name);
            if (!rgb) continue;
            int H = (int)ti->shape[0], W = (int)ti->shape[1];
            CHECK(H == grid[k * 3 + 1] * 14 && W == grid[k * 3 + 2] * 14, "%s picture %d: %dx%d vs grid", edit_cases[ci],
                  k, W, H);
            int64_t P = (int64_t)(H / 14) * (W / 14);
            float *rows = malloc((size_t)P * 1176 * sizeof(float));
            qi_vl_patchify(rgb, H, W, &pp, rows);
            if (k == 0)
                CHECK(qi_max_abs_diff(rows, head, 8 * 1176) == 0, "%s: first pixel rows differ by %g",
                      edit_cases[ci], qi_max_abs_diff(rows, head, 8 * 1176));
            if (k == n_pic - 1)
                CHECK(qi_max_abs_diff(rows + (P - 4) * 1176, tail, 4 * 1176) == 0, "%s: last pixel rows differ by %g",
                      edit_cases[ci], qi_max_abs_diff(rows + (P - 4) * 1176, tail, 4 * 1176));
            free(rows);
            free(rgb);
        }
        free(head);
        free(tail);
        free(grid);
        qi_st_close(f);
    }
}

/* The tower on each picture, in order, gives vision.pooler_output (what
 * fills the <|image_pad|> rows) to float32 rounding. */
static void tower_matches_pooler_output(void) {
    REQUIRE(g_vt);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    for (size_t ci = 0; ci < QI_ARRAY_LEN(edit_cases); ci++) {
        qi_st_file *f = ref_edit_tensors(edit_cases[ci]);
        REQUIRE(f);
        int64_t n_ref = 0;
        float *ref = ref_floats(f, "vision.pooler_output", &n_ref);
        const qi_st_tensor *tg;
        int32_t *grid = raw_copy(f, "image_grid_thw", QI_I32, &tg);
        REQUIRE(ref && grid, "%s: no pooler_output / grid", edit_cases[ci]);
        float *got = calloc((size_t)n_ref, sizeof(float));
        int64_t row = 0;
        for (int k = 0; k < (int)tg->shape[0]; k++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.vl_processor_resized_u8", k);
            const qi_st_tensor *ti;
            uint8_t *rgb = raw_copy(f, name, QI_U8, &ti);
            REQUIRE(rgb);
            int H = (int)ti->shape[0], W = (int)ti->shape[1];
            int64_t P = (int64_t)(H / 14) * (W / 14);
            float *rows = malloc((size_t)P * 1176 * sizeof(float));
            qi_vl_patchify(rgb, H, W, &pp, rows);
            REQUIRE((row + P / 4) * 64 <= n_ref, "more tokens than the reference");
            qi_error err = {{0}};
            qi_status st = qi_vision_encode(g_vt, rows, H / 14, W / 14, got + row * 64, &err);
            CHECK(st == QI_OK, "%s", err.msg);
            row += P / 4;
            free(rows);
            free(rgb);
        }
        CHECK(row * 64 == n_ref, "%s: %lld tokens, reference %lld", edit_cases[ci], (long long)row,
              (long long)(n_ref / 64));
        double rel = qi_rel_l2(got, ref, (size_t)n_ref), mad = qi_max_abs_diff(got, ref, (size_t)n_ref);
        printf("     %s: pooler_output rel L2 %.3g, max abs %.3g\n", edit_cases[ci], rel, mad);
        CHECK(rel <= g_tol, "%s: rel L2 %g", edit_cases[ci], rel);
        free(got);
        free(ref);
        free(grid);
        qi_st_close(f);
    }
}

/* The processor's own resize (condition size → multiples of 28) gives the
 * fixture's processor-resized pictures bit for bit. */
static void processor_resize_matches(void) {
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    int pictures = 0;
    for (size_t ci = 0; ci < QI_ARRAY_LEN(edit_cases); ci++) {
        qi_st_file *f = ref_edit_tensors(edit_cases[ci]);
        REQUIRE(f);
        for (int k = 0; k < 2; k++) {
            char name[64];
            snprintf(name, sizeof name, "cond%d.vl_resized_u8", k);
            const qi_st_tensor *ts, *tr;
            uint8_t *src = raw_copy(f, name, QI_U8, &ts);
            snprintf(name, sizeof name, "cond%d.vl_processor_resized_u8", k);
            uint8_t *ref = raw_copy(f, name, QI_U8, &tr);
            if (!src || !ref) {
                free(src);
                free(ref);
                continue;
            }
            int H = (int)ts->shape[0], W = (int)ts->shape[1], ph, pw;
            qi_error err = {{0}};
            CHECK(qi_vl_smart_resize(H, W, &pp, &ph, &pw, &err) == QI_OK, "%s", err.msg);
            CHECK(ph == tr->shape[0] && pw == tr->shape[1], "%s picture %d: %dx%d vs %lldx%lld", edit_cases[ci], k,
                  pw, ph, (long long)tr->shape[1], (long long)tr->shape[0]);
            uint8_t *got = malloc((size_t)ph * pw * 3);
            CHECK(qi_resize_bicubic_aa_u8(src, W, H, 3, got, pw, ph, &err) == QI_OK, "%s", err.msg);
            size_t differ = 0;
            int worst = 0;
            for (size_t i = 0; i < (size_t)ph * pw * 3; i++)
                if (got[i] != ref[i]) {
                    differ++;
                    int d = abs((int)got[i] - (int)ref[i]);
                    if (d > worst) worst = d;
                }
            CHECK(differ == 0, "%s picture %d: %zu values differ (by up to %d)", edit_cases[ci], k, differ, worst);
            pictures++;
            free(got);
            free(src);
            free(ref);
        }
        qi_st_close(f);
    }
    CHECK(pictures == 5, "%d pictures checked, expected 5", pictures);
}

/* ComfyUI's scaled-fp8 text encoder file carries the tower under the same
 * names (fp8 Linears with a per-tensor scale, the qkv split by rows): it
 * loads with the Edit config attached, and its output stays within fp8's
 * rounding of the bf16 tower's. Without a config a tower that is not
 * 7B-shaped asks for one. */
static void comfy_fp8_file_carries_the_tower(void) {
    const char *file = FORMATS "/comfy_te_fp8_scaled.safetensors";
    if (!qi_file_exists(file)) {
        printf("  (skipped: %s absent)\n", file);
        return;
    }
    qi_source *src = NULL;
    qi_vision *vt = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_source_open(file, QI_COMPONENT_TEXT_ENCODER, &src, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_vision_present(src), "visual.* found");
    CHECK(qi_vision_load(src, g_be, &vt, &err) == QI_ERR_FORMAT && strstr(err.msg, "config.json"),
          "no config: the error asks for one: %s", err.msg);
    REQUIRE(qi_source_set_config(src, EDIT_TE "/config.json", &err) == QI_OK, "%s", err.msg);
    REQUIRE(qi_vision_load(src, g_be, &vt, &err) == QI_OK, "%s", err.msg);
    qi_st_file *f = ref_edit_tensors(edit_cases[0]);
    const qi_st_tensor *ti;
    uint8_t *rgb = raw_copy(f, "cond0.vl_processor_resized_u8", QI_U8, &ti);
    int64_t n_ref = 0;
    float *ref = ref_floats(f, "vision.pooler_output", &n_ref);
    REQUIRE(rgb && ref);
    int H = (int)ti->shape[0], W = (int)ti->shape[1];
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    float *rows = malloc((size_t)(H / 14) * (W / 14) * 1176 * sizeof(float)), *got = malloc((size_t)n_ref * sizeof(float));
    qi_vl_patchify(rgb, H, W, &pp, rows);
    CHECK(qi_vision_encode(vt, rows, H / 14, W / 14, got, &err) == QI_OK, "%s", err.msg);
    double rel = qi_rel_l2(got, ref, (size_t)n_ref);
    printf("     fp8 tower against the bf16 tower's reference: rel L2 %.3g\n", rel);
    CHECK(rel > 1e-4 && rel < 0.1, "rel %g: fp8 weights used, and close", rel);
    free(rows), free(got), free(rgb), free(ref);
    qi_st_close(f);
    qi_vision_free(vt);
    qi_source_close(src);
}

static int json_pair(const cJSON *row, const char *key, int *a, int *b) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 2) return 0;
    *a = cJSON_GetArrayItem(v, 0)->valueint;
    *b = cJSON_GetArrayItem(v, 1)->valueint;
    return 1;
}

/* Every sizes.json row (14 sources, real and fixture areas): the condition
 * size, the processor size, the grid and the image-token count. */
static void sizes_match_sizes_json(void) {
    cJSON *root = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_json_load(QI_REF_EDIT "/sizes.json", &root, &err) == QI_OK, "%s", err.msg);
    const cJSON *consts = cJSON_GetObjectItemCaseSensitive(root, "constants");
    const char *sets[2] = {"real", "fixture"};
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    int checked = 0;
    for (int s = 0; s < 2; s++) {
        const cJSON *rows = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "rows"), sets[s]);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(consts, sets[s]);
        int64_t vl_area = (int64_t)cJSON_GetObjectItemCaseSensitive(c, "CONDITION_IMAGE_SIZE")->valuedouble;
        const cJSON *row;
        cJSON_ArrayForEach(row, rows) {
            int sw, sh, cw, ch, pw, ph, w, h, gh, gw;
            REQUIRE(json_pair(row, "src_wh", &sw, &sh) && json_pair(row, "condition_wh", &cw, &ch) &&
                    json_pair(row, "processor_resized_wh", &pw, &ph));
            const cJSON *g = cJSON_GetObjectItemCaseSensitive(row, "image_grid_thw");
            gh = cJSON_GetArrayItem(g, 1)->valueint;
            gw = cJSON_GetArrayItem(g, 2)->valueint;
            int tokens = cJSON_GetObjectItemCaseSensitive(row, "image_tokens")->valueint;
            qi_edit_calculate_dimensions(vl_area, sw, sh, &w, &h);
            CHECK(w == cw && h == ch, "%s %dx%d: condition %dx%d, reference %dx%d", sets[s], sw, sh, w, h, cw, ch);
            int rh, rw;
            CHECK(qi_vl_smart_resize(h, w, &pp, &rh, &rw, &err) == QI_OK, "%s", err.msg);
            CHECK(rw == pw && rh == ph, "%s %dx%d: processor %dx%d, reference %dx%d", sets[s], sw, sh, rw, rh, pw, ph);
            CHECK(rh / 14 == gh && rw / 14 == gw && (rh / 28) * (rw / 28) == tokens, "%s %dx%d: grid / tokens",
                  sets[s], sw, sh);
            checked++;
        }
    }
    CHECK(checked == 28, "%d rows checked, expected 14 per area set", checked);
    cJSON_Delete(root);
}

static void odd_sizes_are_refused_or_enlarged(void) {
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    qi_error err = {{0}};
    int h, w;
    CHECK(qi_vl_smart_resize(1, 1, &pp, &h, &w, &err) == QI_OK && h * w >= 3136, "1x1 is enlarged to min_pixels");
    CHECK(qi_vl_smart_resize(1, 300, &pp, &h, &w, &err) == QI_ERR_ARG, "aspect ratio 300 is refused");
    CHECK(strstr(err.msg, "aspect ratio"), "the error says why: %s", err.msg);
    CHECK(qi_vl_smart_resize(0, 30, &pp, &h, &w, &err) == QI_ERR_ARG, "a side of 0 is refused");
    CHECK(qi_vl_smart_resize(16000, 16000, &pp, &h, &w, &err) == QI_OK && (int64_t)h * w <= pp.max_pixels,
          "16000² is scaled under max_pixels");
    REQUIRE(g_vt);
    float px[4 * 1176] = {0}, out[64];
    CHECK(qi_vision_encode(g_vt, px, 3, 2, out, &err) == QI_ERR_ARG, "an odd patch grid is refused");
}

int main(int argc, char **argv) {
    qi_error err = {{0}};
    const char *device = argc > 2 && !strcmp(argv[1], "-b") ? argv[2] : "cpu";
    if (strcmp(device, "cpu")) g_tol = 3e-2;
    if (qi_backend_create(device, 2, (size_t)512 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "%s backend: %s\n", device, err.msg);
        return 1;
    }
    if (qi_source_open_folder(EDIT_TE, QI_COMPONENT_TEXT_ENCODER, &g_src, &err) != QI_OK ||
        qi_vision_load(g_src, g_be, &g_vt, &err) != QI_OK)
        fprintf(stderr, "  vision tower: %s\n", err.msg);
    RUN(tower_loads_with_the_edit_config);
    RUN(patchify_matches_pixel_values);
    RUN(tower_matches_pooler_output);
    RUN(processor_resize_matches);
    RUN(comfy_fp8_file_carries_the_tower);
    RUN(sizes_match_sizes_json);
    RUN(odd_sizes_are_refused_or_enlarged);
    qi_vision_free(g_vt);
    qi_source_close(g_src);
    g_be->ops->destroy(g_be);
    TEST_END();
}

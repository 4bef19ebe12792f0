/*
 * test_pipeline.c — claims about the whole pipeline through the public API:
 * from the prompt string to vae_in and to the final uint8 image, every public
 * reference case (LoRA, true CFG with Qwen's own scheduler, batch with padding)
 * matches diffusers.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <unistd.h>

#include "image_check.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "qwen_image.h"
#include "test.h"
#include "testdata.h"

static const char *CASES[] = {"en_lightning8_lora", "zh_cfg4_base", "batch2_lightning4_lora"};

/* Opens an engine on the bundled tiny model (the claim fails if it cannot). */
static qi_engine *open_tiny(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = QI_TEST_DATA "/tiny-model";
    qi_engine *e;
    qi_status st = qi_engine_open(&o, &e);
    CHECK(st == QI_OK, "open: %s", qi_engine_error(e));
    if (st) {
        qi_engine_close(e);
        return NULL;
    }
    return e;
}

/* Runs one case through qi_generate and compares vae_in and image_u8. */
static void run_case(const char *name) {
    ref_run_case rc;
    if (ref_run_case_load(name, &rc)) {
        CHECK(0, "cannot load case %s", name);
        return;
    }
    qi_engine *e = open_tiny();
    if (!e) {
        ref_run_case_free(&rc);
        return;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItem(rc.json, "lora"))) {
        char lora[1024];
        snprintf(lora, sizeof lora, "%s/cases/lora.safetensors", QI_TEST_DATA);
        CHECK(qi_engine_add_lora(e, lora, 1.0f) == QI_OK, "%s", qi_engine_error(e));
    }
    qi_request r = qi_request_default();
    r.prompts = rc.prompts;
    r.n_prompts = rc.n_prompts;
    cJSON *neg = cJSON_GetObjectItem(rc.json, "negative_prompt");
    r.negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL;
    r.width = (int)ref_run_case_number(&rc, "width");
    r.height = (int)ref_run_case_number(&rc, "height");
    r.steps = (int)ref_run_case_number(&rc, "steps");
    r.cfg = (float)ref_run_case_number(&rc, "cfg");
    r.seed = (uint64_t)ref_run_case_number(&rc, "seed");
    r.scheduler = rc.sched_path;
    qi_image img;
    qi_status st = qi_generate(e, &r, &img);
    CHECK(st == QI_OK, "%s: generate: %s", name, qi_engine_error(e));
    if (!st) {
        const qi_st_tensor *vae_in = qi_st_file_find(rc.tensors, "vae_in");
        const qi_st_tensor *u8 = qi_st_file_find(rc.tensors, "image_u8");
        size_t n_lat = (size_t)img.count * 16 * (img.height / 8) * (img.width / 8);
        CHECK(vae_in && vae_in->nbytes == n_lat * 4, "vae_in size");
        if (vae_in && vae_in->nbytes == n_lat * 4) {
            double e_lat = qi_rel_l2(img.latents, vae_in->data, n_lat);
            printf("  %s: vae_in rel L2 = %.2e (limit 1e-3)\n", name, e_lat);
            CHECK(e_lat <= 1e-3, "%s vae_in rel err %g", name, e_lat);
        }
        size_t n_px = (size_t)img.count * img.height * img.width * 3;
        CHECK(u8 && u8->nbytes == n_px, "image_u8 size (layout [B, H, W, 3] expected)");
        if (u8 && u8->nbytes == n_px) {
            double mean;
            int maxd = pixel_diff(img.rgb, u8->data, n_px, &mean);
            printf("  %s: image_u8 max abs diff %d, mean %.4f (limits 2, 0.5)\n", name, maxd, mean);
            CHECK(maxd <= 2 && mean <= 0.5, "%s image diff max %d mean %g", name, maxd, mean);
        }
        const qi_timings *t = qi_engine_timings(e);
        printf("  %s: text %.3f s, denoise %.3f s, vae %.3f s, peak RSS %.0f MiB\n", name, t->text_s, t->denoise_s,
               t->vae_s, t->peak_rss_mb);
        qi_image_free(&img);
    }
    qi_engine_close(e);
    ref_run_case_free(&rc);
}

static void en_lightning8_lora_matches_diffusers(void) { run_case(CASES[0]); }
static void zh_cfg4_base_matches_diffusers(void) { run_case(CASES[1]); }
static void batch2_lightning4_lora_matches_diffusers(void) { run_case(CASES[2]); }

static void bad_requests_are_argument_errors(void) {
    qi_engine *e = open_tiny();
    if (!e) return;
    qi_request r = qi_request_default();
    r.prompt = "x";
    qi_image img;
    r.width = 100;
    CHECK(qi_generate(e, &r, &img) == QI_ERR_ARG && strstr(qi_engine_error(e), "multiples of 16"), "%s",
          qi_engine_error(e));
    r.width = 64;
    r.steps = 0;
    CHECK(qi_generate(e, &r, &img) == QI_ERR_ARG && strstr(qi_engine_error(e), "--steps"), "%s", qi_engine_error(e));
    r.steps = 1;
    r.cfg = -1;
    CHECK(qi_generate(e, &r, &img) == QI_ERR_ARG && strstr(qi_engine_error(e), "--cfg"), "%s", qi_engine_error(e));
    r.cfg = 1;
    CHECK(qi_engine_add_lora(e, "/nonexistent/lora.safetensors", 1) != QI_OK, "missing LoRA accepted");
    qi_engine_close(e);
    qi_engine *e2;
    qi_open_options o = qi_open_options_default();
    o.model_dir = "/nonexistent/model";
    CHECK(qi_engine_open(&o, &e2) == QI_ERR_IO && strstr(qi_engine_error(e2), "/nonexistent/model"), "%s",
          qi_engine_error(e2));
    qi_engine_close(e2);
}

/* A LoRA is matched against the weights only when the transformer loads; one
 * that matches nothing must fail that generate and leave the engine usable. */
static void a_lora_that_matches_nothing_does_not_break_the_engine(void) {
    char dir[] = "/tmp/qi_badlora_XXXXXX", path[256];
    if (!mkdtemp(dir)) return;
    snprintf(path, sizeof path, "%s/stray.safetensors", dir);
    float down[4 * 64] = {0}, up[128 * 4] = {0};
    qi_st_write_item items[2] = {
        {.name = "transformer_blocks.99.attn.to_q.lora_A.weight", .dtype = QI_F32, .ndim = 2, .shape = {4, 64},
         .data = down},
        {.name = "transformer_blocks.99.attn.to_q.lora_B.weight", .dtype = QI_F32, .ndim = 2, .shape = {128, 4},
         .data = up},
    };
    qi_error err;
    CHECK(!qi_st_write(path, items, 2, &err), "%s", err.msg);
    qi_engine *e = open_tiny();
    if (!e) return;
    qi_request r = qi_request_default();
    r.prompt = "recover";
    r.width = r.height = 32;
    r.steps = 2;
    qi_image before, after, bad;
    CHECK(qi_generate(e, &r, &before) == QI_OK, "%s", qi_engine_error(e));
    CHECK(qi_engine_add_lora(e, path, 1.0f) == QI_OK, "%s", qi_engine_error(e));
    qi_status st = qi_generate(e, &r, &bad);
    printf("  generate with the stray LoRA: %s\n", qi_engine_error(e));
    CHECK(st == QI_ERR_FORMAT && strstr(qi_engine_error(e), "removed from the engine"), "%d: %s", st,
          qi_engine_error(e));
    CHECK(qi_generate(e, &r, &after) == QI_OK, "the next generate: %s", qi_engine_error(e));
    CHECK(!memcmp(before.rgb, after.rgb, (size_t)32 * 32 * 3), "the engine recovered with its previous weights");
    qi_image_free(&before);
    qi_image_free(&after);
    qi_engine_close(e);
    remove(path);
    rmdir(dir);
}

static void bad_prompt_lists_are_argument_errors(void) {
    qi_engine *e = open_tiny();
    if (!e) return;
    const char *prompts[2] = {"a", NULL};
    qi_request r = qi_request_default();
    r.prompt = "ignored";
    r.prompts = prompts;
    qi_image img;
    int counts[3] = {0, -3, 2}; /* 2: the second prompt is NULL */
    for (int i = 0; i < 3; i++) {
        r.n_prompts = counts[i];
        CHECK(qi_generate(e, &r, &img) == QI_ERR_ARG, "n_prompts %d: %s", counts[i], qi_engine_error(e));
    }
    qi_engine_close(e);
}

/* Rewrites one JSON file of a model copy with `edit`. */
static int edit_json(const char *dir, const char *name, void (*edit)(cJSON *)) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cJSON *j = NULL;
    qi_error err;
    if (qi_json_load(path, &j, &err)) return -1;
    edit(j);
    char *text = cJSON_Print(j);
    FILE *f = fopen(path, "w");
    int rc = f && fputs(text, f) >= 0 ? 0 : -1;
    if (f) fclose(f);
    free(text);
    cJSON_Delete(j);
    return rc;
}

/* As the released Qwen/Qwen-Image transformer config: extra keys, no variant flags. */
static void released_transformer_config(cJSON *c) {
    cJSON_AddNumberToObject(c, "pooled_projection_dim", 768);
    cJSON_DeleteItemFromObject(c, "zero_cond_t");
    cJSON_DeleteItemFromObject(c, "use_additional_t_cond");
    cJSON_DeleteItemFromObject(c, "use_layer3d_rope");
}

/* As transformers 4.x saved Qwen2.5-VL: text fields at the top level, rope_scaling + rope_theta. */
static void transformers4_text_config(cJSON *c) {
    cJSON *t = cJSON_DetachItemFromObject(c, "text_config");
    cJSON *rp = cJSON_DetachItemFromObject(t, "rope_parameters");
    for (cJSON *it = t->child; it; it = it->next)
        if (!cJSON_GetObjectItem(c, it->string)) cJSON_AddItemToObject(c, it->string, cJSON_Duplicate(it, 1));
    cJSON_AddNumberToObject(c, "rope_theta", cJSON_GetObjectItem(rp, "rope_theta")->valuedouble);
    cJSON *rs = cJSON_AddObjectToObject(c, "rope_scaling");
    cJSON_AddStringToObject(rs, "type", "mrope");
    cJSON_AddItemToObject(rs, "mrope_section", cJSON_Duplicate(cJSON_GetObjectItem(rp, "mrope_section"), 1));
    cJSON_Delete(t);
    cJSON_Delete(rp);
}

static void released_config_layouts_load_and_give_the_same_image(void) {
    char dir[] = "/tmp/qi_released_XXXXXX", cmd[2048];
    if (!mkdtemp(dir)) return;
    snprintf(cmd, sizeof cmd, "cp -r %s/tiny-model/. %s", QI_TEST_DATA, dir);
    CHECK(system(cmd) == 0, "copy the model");
    CHECK(!edit_json(dir, "transformer/config.json", released_transformer_config), "edit transformer config");
    CHECK(!edit_json(dir, "text_encoder/config.json", transformers4_text_config), "edit text encoder config");
    qi_image img[2];
    const char *models[2] = {dir, NULL};
    char tiny[1024];
    snprintf(tiny, sizeof tiny, "%s/tiny-model", QI_TEST_DATA);
    models[1] = tiny;
    for (int k = 0; k < 2; k++) {
        qi_open_options o = qi_open_options_default();
        o.model_dir = models[k];
        qi_engine *e;
        qi_status st = qi_engine_open(&o, &e);
        qi_request r = qi_request_default();
        r.prompt = "released layouts";
        r.width = r.height = 32;
        r.steps = 2;
        if (!st) st = qi_generate(e, &r, &img[k]);
        CHECK(st == QI_OK, "%s: %s", models[k], qi_engine_error(e));
        qi_engine_close(e);
        if (st) return;
    }
    CHECK(!memcmp(img[0].latents, img[1].latents, sizeof(float) * 16 * 4 * 4), "same latents");
    qi_image_free(&img[0]);
    qi_image_free(&img[1]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "clean up");
}

static void two_engines_live_in_one_process(void) {
    qi_engine *a = open_tiny(), *b = open_tiny();
    if (!a || !b) {
        qi_engine_close(a);
        qi_engine_close(b);
        return;
    }
    qi_request r = qi_request_default();
    r.prompt = "two engines";
    r.width = r.height = 32;
    r.steps = 2;
    qi_image ia, ib;
    CHECK(qi_generate(a, &r, &ia) == QI_OK && qi_generate(b, &r, &ib) == QI_OK, "generate");
    CHECK(!memcmp(ia.rgb, ib.rgb, (size_t)32 * 32 * 3), "same request, same pixels");
    qi_image_free(&ia);
    qi_image_free(&ib);
    qi_engine_close(a);
    qi_engine_close(b);
}

int main(void) {
    RUN(en_lightning8_lora_matches_diffusers);
    RUN(zh_cfg4_base_matches_diffusers);
    RUN(batch2_lightning4_lora_matches_diffusers);
    RUN(bad_requests_are_argument_errors);
    RUN(a_lora_that_matches_nothing_does_not_break_the_engine);
    RUN(bad_prompt_lists_are_argument_errors);
    RUN(released_config_layouts_load_and_give_the_same_image);
    RUN(two_engines_live_in_one_process);
    TEST_END();
}

/*
 * test_limits.c — one claim per bounded input (README "Checks and limits"):
 * the largest allowed value passes the check, the next one is refused with a
 * message naming the limit, checked where the engine checks it (the request
 * before any work, the LoRA set before a file is read, the JSON text before it
 * is parsed, the backend at creation, the transformer's config as it is read);
 * and a request too large for the memory it would run in is refused before
 * any work (QI_ERR_NOMEM naming what did not fit and what to change) with the
 * engine usable for the next request.
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "backend/backend.h"
#include "engine/engine.h"
#include "engine/plan.h"
#include "io/model_dir.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/lora.h"
#include "test.h"

#define MODEL QI_TEST_DATA "/tiny-model"
#define LORA QI_TEST_DATA "/cases/lora.safetensors"

static qi_request good_request(void) {
    qi_request r = qi_request_default();
    r.prompt = "x";
    return r;
}

/* r passes qi_plan_check_request, or (want non-NULL) is refused with want in the message. */
static int request_answer(const qi_request *r, const char *want) {
    qi_error err = {{0}};
    qi_status st = qi_plan_check_request(r, &err);
    if (!want) {
        if (st != QI_OK) fprintf(stderr, "  refused: %s\n", err.msg);
        return st == QI_OK;
    }
    if (st != QI_ERR_ARG || !strstr(err.msg, want)) fprintf(stderr, "  want '%s': %s\n", want, err.msg);
    return st == QI_ERR_ARG && strstr(err.msg, want) != NULL;
}

/* ---- the request --------------------------------------------------------------------- */

static void steps_are_1_to_1000(void) {
    qi_request r = good_request();
    r.steps = 1000;
    CHECK(request_answer(&r, NULL));
    r.steps = 1001;
    CHECK(request_answer(&r, "--steps 1001: must be between 1 and 1000"));
    r.steps = 0;
    CHECK(request_answer(&r, "--steps 0: must be between 1 and 1000"));
}

static void batch_is_1_to_64(void) {
    qi_request r = good_request();
    r.batch = 64;
    CHECK(request_answer(&r, NULL));
    r.batch = 65;
    CHECK(request_answer(&r, "--batch 65: must be between 1 and 64"));
    r.batch = 0;
    CHECK(request_answer(&r, "--batch 0: must be between 1 and 64"));
}

static void a_request_makes_at_most_4096_images(void) {
    static const char *prompts[4097];
    for (int i = 0; i < 4097; i++) prompts[i] = "x";
    qi_request r = good_request();
    r.prompts = prompts;
    r.n_prompts = 64;
    r.batch = 64;
    CHECK(request_answer(&r, NULL), "64 prompts x batch 64 = 4096 images");
    r.n_prompts = 65;
    CHECK(request_answer(&r, "65 prompts x batch 64: at most 4096 images per request"));
    r.n_prompts = 4097;
    r.batch = 1;
    CHECK(request_answer(&r, "n_prompts 4097: must be between 1 and 4096"));
}

static void a_side_is_a_multiple_of_16_up_to_8192(void) {
    qi_request r = good_request();
    r.width = 8192;
    r.height = 16;
    CHECK(request_answer(&r, NULL));
    r.width = 8208;
    CHECK(request_answer(&r, "at most 8192 pixels a side"));
    CHECK(request_answer(&r, "262144 image tokens"), "the message says the real reason");
    r.width = 1000;
    CHECK(request_answer(&r, "width and height must be positive multiples of 16"));
}

static void max_sequence_length_is_1_to_1024(void) {
    qi_request r = good_request();
    r.max_sequence_length = 1024;
    CHECK(request_answer(&r, NULL));
    r.max_sequence_length = 1025;
    CHECK(request_answer(&r, "max_sequence_length 1025: must be between 1 and 1024"));
    r.max_sequence_length = 0;
    CHECK(request_answer(&r, "max_sequence_length 0: must be between 1 and 1024"));
}

static void a_prompt_is_at_most_1_mib(void) {
    char *text = malloc(QI_PROMPT_MAX_BYTES + 2);
    REQUIRE(text);
    memset(text, 'a', QI_PROMPT_MAX_BYTES + 1);
    text[QI_PROMPT_MAX_BYTES] = 0;
    qi_request r = good_request();
    r.prompt = text;
    CHECK(request_answer(&r, NULL), "exactly 1 MiB");
    text[QI_PROMPT_MAX_BYTES] = 'a';
    text[QI_PROMPT_MAX_BYTES + 1] = 0;
    CHECK(request_answer(&r, "a prompt may be at most 1 MiB"));
    r.prompt = "x";
    r.negative_prompt = text;
    CHECK(request_answer(&r, "a prompt may be at most 1 MiB"), "the negative prompt too");
    free(text);
}

static void cfg_is_finite_up_to_100(void) {
    qi_request r = good_request();
    r.cfg = 100.0f;
    CHECK(request_answer(&r, NULL));
    r.cfg = 100.5f;
    CHECK(request_answer(&r, "at most 100"));
    r.cfg = INFINITY; /* what --cfg 1e39 parses to */
    CHECK(request_answer(&r, "must be a finite number"));
}

/* ---- LoRA files ---------------------------------------------------------------------- */

static void a_lora_set_holds_at_most_16_files(void) {
    qi_lora_set *set = NULL;
    qi_error err = {{0}};
    for (int i = 0; i < QI_MAX_LORAS; i++) REQUIRE(qi_lora_set_add(&set, LORA, 1.0f, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_lora_set_add(&set, LORA, 1.0f, &err) == QI_ERR_ARG && strstr(err.msg, "at most 16 LoRA files"), "%s",
          err.msg);
    qi_lora_set_free(set);
}

static void a_lora_file_is_at_most_16_gib(void) {
    char path[] = "/tmp/qi_limits_lora_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    /* a sparse file one byte over the limit: refused from its size, never read */
    CHECK(ftruncate(fd, (off_t)QI_LORA_MAX_BYTES + 1) == 0);
    close(fd);
    qi_lora_set *set = NULL;
    qi_error err = {{0}};
    CHECK(qi_lora_set_add(&set, path, 1.0f, &err) == QI_ERR_FORMAT && strstr(err.msg, "at most 16 GiB"), "%s",
          err.msg);
    qi_lora_set_free(set);
    unlink(path);
}

/* ---- JSON, the backend, configs --------------------------------------------------------- */

static void json_nests_at_most_64_deep(void) {
    char text[2 * (QI_JSON_MAX_DEPTH + 1) + 1];
    for (int d = QI_JSON_MAX_DEPTH; d <= QI_JSON_MAX_DEPTH + 1; d++) {
        int n = 0;
        for (int i = 0; i < d; i++) text[n++] = '[';
        for (int i = 0; i < d; i++) text[n++] = ']';
        text[n] = 0;
        cJSON *j = NULL;
        qi_error err = {{0}};
        qi_status st = qi_json_parse(text, (size_t)n, "deep.json", &j, &err);
        if (d == QI_JSON_MAX_DEPTH) CHECK(st == QI_OK, "64 levels: %s", err.msg);
        else CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "deeper than 64 levels"), "65 levels: %s", err.msg);
        cJSON_Delete(j);
    }
}

static void cpu_threads_are_at_most_4_per_core(void) {
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    qi_backend *be = NULL;
    qi_error err = {{0}};
    char want[64];
    snprintf(want, sizeof want, "at most %d (4 x the %d cores", 4 * cores, cores);
    CHECK(qi_backend_create("cpu", 4 * cores + 1, (size_t)64 << 20, &be, &err) == QI_ERR_ARG && strstr(err.msg, want),
          "%s", err.msg);
    if (be) be->ops->destroy(be);
    be = NULL;
    CHECK(qi_backend_create("cpu", 4 * cores, (size_t)64 << 20, &be, &err) == QI_OK, "%s", err.msg);
    if (be) be->ops->destroy(be);
}

/* The tiny transformer's folder with one edit to config.json; its config as read. */
static qi_status read_edited_config(const char *from, const char *to, qi_error *err) {
    char dir[] = "/tmp/qi_limits_dit_XXXXXX", path[128], text[4096];
    if (!mkdtemp(dir)) return qi_fail(err, QI_ERR_IO, "test: mkdtemp");
    FILE *f = fopen(MODEL "/transformer/config.json", "rb");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
    char *at = strstr(text, from);
    if (!at) return qi_fail(err, QI_ERR_ARG, "test: '%s' not in config", from);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "wb");
    if (f) fprintf(f, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from)), fclose(f);
    char weights[128];
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", dir);
    if (symlink(QI_TEST_DATA "/tiny-model/transformer/diffusion_pytorch_model.safetensors", weights) != 0)
        return qi_fail(err, QI_ERR_IO, "test: symlink");
    qi_source *s = NULL;
    qi_dit_config c;
    qi_status st = qi_source_open_folder(dir, QI_COMPONENT_TRANSFORMER, &s, err);
    if (st == QI_OK) st = qi_dit_read_config(s, &c, err);
    qi_source_close(s);
    unlink(weights);
    unlink(path);
    rmdir(dir);
    return st;
}

static void transformer_config_ints_are_bounded_per_key(void) {
    qi_error err = {{0}};
    qi_status st = read_edited_config("\"num_attention_heads\": 4", "\"num_attention_heads\": 100000000", &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "num_attention_heads is 100000000; allowed 1..1024") &&
              strstr(err.msg, "config.json"), "%s", err.msg);
    st = read_edited_config("\"num_layers\": 2", "\"num_layers\": 2000000000", &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "num_layers is 2000000000; allowed 1..1024"), "%s", err.msg);
    st = read_edited_config("\"patch_size\": 2", "\"patch_size\": 17", &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "patch_size is 17; allowed 1..16"), "%s", err.msg);
}

/* ---- memory ---------------------------------------------------------------------------- */

static qi_request small_request(void) {
    qi_request r = qi_request_default();
    r.prompt = "a red apple on a table";
    r.width = 64;
    r.height = 48;
    r.steps = 2;
    r.seed = 7;
    return r;
}

/* 64 images of 8192x8192 need ~128 GiB of activations with the tiny model on
 * the CPU: refused from the sizes alone (no prompt encoded, no transformer
 * loaded), naming the arena and how many images would fit; the next request
 * runs and gives the image a fresh engine gives. */
static void request_too_large_for_memory_is_refused_before_any_work(void) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = MODEL;
    qi_engine *e = NULL, *fresh = NULL;
    REQUIRE(qi_engine_open(&o, &e) == QI_OK, "%s", qi_engine_error(e));
    qi_request big = small_request();
    big.width = big.height = 8192;
    big.batch = 64;
    qi_image img = {0}, ref = {0};
    qi_status st = qi_generate(e, &big, &img);
    printf("  %s\n", qi_engine_error(e));
    CHECK(st == QI_ERR_NOMEM, "%s", qi_status_name(st));
    CHECK(strstr(qi_engine_error(e), "8192x8192, 64 images") && strstr(qi_engine_error(e), "activation arena") &&
              strstr(qi_engine_error(e), "lower --batch"), "%s", qi_engine_error(e));
    CHECK(!e->ranks->dit[0] && e->last.text_s == 0, "work started: transformer loaded or prompt encoded");
    qi_request r = small_request();
    CHECK(qi_generate(e, &r, &img) == QI_OK, "%s", qi_engine_error(e));
    REQUIRE(qi_engine_open(&o, &fresh) == QI_OK, "%s", qi_engine_error(fresh));
    CHECK(qi_generate(fresh, &r, &ref) == QI_OK, "%s", qi_engine_error(fresh));
    CHECK(img.rgb && ref.rgb && memcmp(img.rgb, ref.rgb, (size_t)64 * 48 * 3) == 0,
          "the image after a refused request differs from a fresh engine's");
    qi_image_free(&img);
    qi_image_free(&ref);
    qi_engine_close(fresh);
    qi_engine_close(e);
}

int main(void) {
    RUN(steps_are_1_to_1000);
    RUN(batch_is_1_to_64);
    RUN(a_request_makes_at_most_4096_images);
    RUN(a_side_is_a_multiple_of_16_up_to_8192);
    RUN(max_sequence_length_is_1_to_1024);
    RUN(a_prompt_is_at_most_1_mib);
    RUN(cfg_is_finite_up_to_100);
    RUN(a_lora_set_holds_at_most_16_files);
    RUN(a_lora_file_is_at_most_16_gib);
    RUN(json_nests_at_most_64_deep);
    RUN(cpu_threads_are_at_most_4_per_core);
    RUN(transformer_config_ints_are_bounded_per_key);
    RUN(request_too_large_for_memory_is_refused_before_any_work);
    TEST_END();
}

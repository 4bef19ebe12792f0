/*
 * test_model_dir.c — finding a diffusers Qwen-Image directory, and the JSON
 * loading / typed-getter helpers: the reference model opens, each broken
 * layout gets its own message saying what to do, getters never default
 * silently.
 *
 * Broken layouts are built in a temporary folder at run time.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/model_dir.h"
#include "test.h"
#include "testdata.h"

static char tmp_root[64];

static const char *model_index_json =
    "{\n  \"_class_name\": \"QwenImagePipeline\",\n"
    "  \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"Qwen2_5_VLForConditionalGeneration\"],\n"
    "  \"tokenizer\": [\"transformers\", \"Qwen2Tokenizer\"],\n"
    "  \"transformer\": [\"diffusers\", \"QwenImageTransformer2DModel\"],\n"
    "  \"vae\": [\"diffusers\", \"AutoencoderKLQwenImage\"]\n}\n";

/* A complete (weightless) layout in tmp_root/<name>; returns its path. */
static const char *fake_model(const char *name) {
    static char root[512];
    snprintf(root, sizeof root, "%s/%s", tmp_root, name);
    mkdir(root, 0755);
    static const char *const dirs[] = {"transformer", "text_encoder", "vae", "tokenizer",
                                       "scheduler"};
    for (size_t i = 0; i < QI_ARRAY_LEN(dirs); i++) {
        char d[1024];
        snprintf(d, sizeof d, "%s/%s", root, dirs[i]);
        mkdir(d, 0755);
    }
    write_text_in(root, "model_index.json", model_index_json);
    write_text_in(root, "transformer/config.json", "{\"num_layers\": 2}");
    write_text_in(root, "text_encoder/config.json", "{\"hidden_size\": 64}");
    write_text_in(root, "vae/config.json", "{\"z_dim\": 16}");
    write_text_in(root, "tokenizer/vocab.json", "{}");
    write_text_in(root, "tokenizer/merges.txt", "#version: 0.2\n");
    write_text_in(root, "scheduler/scheduler_config.json", "{\"shift\": 1.0}");
    return root;
}

/* fake_model(name) less one of its files (`rel`, relative to the model root). */
static const char *fake_model_without(const char *name, const char *rel) {
    const char *root = fake_model(name);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    CHECK(unlink(path) == 0, "cannot remove %s", path);
    return root;
}

/* Opens `path` and checks it fails with `status` and a message holding `expect`. */
static void expect_open_error(const char *label, const char *path, qi_status status,
                              const char *expect) {
    qi_model_dir md;
    qi_error err = {{0}};
    qi_status st = qi_model_dir_open(path, &md, &err);
    CHECK(st == status, "%s: status %s, expected %s (msg: %s)", label, qi_status_name(st),
          qi_status_name(status), err.msg);
    CHECK(strstr(err.msg, expect) != NULL, "%s: message lacks '%s': %s", label, expect, err.msg);
    printf("  %-20s %s\n", label, err.msg);
}

/* ---- the directory ------------------------------------------------------ */

static void reference_model_dir_opens(void) {
    const char *root = QI_REF_MODEL;
    qi_model_dir md;
    qi_error err = {{0}};
    qi_status st = qi_model_dir_open(root, &md, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st != QI_OK) return;
    CHECK(strcmp(md.pipeline_class, "QwenImagePipeline") == 0, "class '%s'", md.pipeline_class);
    const char *files[] = {md.model_index,     md.transformer_config, md.text_encoder_config,
                           md.vae_config,      md.tokenizer_vocab,    md.tokenizer_merges,
                           md.scheduler_config};
    for (size_t i = 0; i < QI_ARRAY_LEN(files); i++)
        CHECK(qi_file_exists(files[i]), "not a file: '%s'", files[i]);
    const char *dirs[] = {md.transformer_dir, md.text_encoder_dir, md.vae_dir, md.tokenizer_dir};
    for (size_t i = 0; i < QI_ARRAY_LEN(dirs); i++)
        CHECK(qi_dir_exists(dirs[i]), "not a dir: '%s'", dirs[i]);
    CHECK(strstr(md.scheduler_config, "scheduler/scheduler_config.json"), "%s",
          md.scheduler_config);
    CHECK(strstr(md.vae_dir, "/vae"), "%s", md.vae_dir);
    printf("  %s: %s, transformer at %s\n", root, md.pipeline_class, md.transformer_dir);
}

static void fake_complete_layout_opens(void) {
    const char *root = fake_model("complete");
    qi_model_dir md;
    qi_error err = {{0}};
    CHECK(qi_model_dir_open(root, &md, &err) == QI_OK, "%s", err.msg);
}

static void missing_dir(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/no_such_model", tmp_root);
    expect_open_error(
        "missing dir", path, QI_ERR_IO,
        "no_such_model: no such directory; pass the folder downloaded from Qwen/Qwen-Image");
    expect_open_error("no path", NULL, QI_ERR_ARG, "no model directory given");
}

static void path_is_a_file(void) {
    write_text_in(tmp_root, "model.safetensors", "x");
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_root);
    expect_open_error("path is a file", path, QI_ERR_IO, /* exit 1, as a missing folder */
                      "is a file, not a directory; pass the folder");
}

static void dir_without_model_index(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/empty_dir", tmp_root);
    mkdir(path, 0755);
    expect_open_error("no model_index.json", path, QI_ERR_FORMAT,
                      "empty_dir: not a Qwen-Image diffusers directory (no model_index.json); "
                      "pass the folder downloaded from Qwen/Qwen-Image");
}

static void malformed_model_index(void) {
    const char *root = fake_model("malformed_index");
    write_text_in(root, "model_index.json",
               "{\n  \"_class_name\": \"QwenImagePipeline\",\n  \"vae\": [\"diffusers\" "
               "\"AutoencoderKLQwenImage\"]\n}\n");
    expect_open_error("malformed index", root, QI_ERR_FORMAT,
                      "model_index.json: line 3: JSON syntax error near '");
    write_text_in(root, "model_index.json", "[\"transformer\"]");
    expect_open_error("index not object", root, QI_ERR_FORMAT,
                      "model_index.json: expected a JSON object mapping components");
    write_text_in(root, "model_index.json", "");
    expect_open_error("index empty", root, QI_ERR_FORMAT,
                      "model_index.json: empty (expected JSON)");
}

static void model_index_missing_or_null_component(void) {
    const char *root = fake_model("index_without_vae");
    write_text_in(
        root, "model_index.json",
        "{\"scheduler\": [\"diffusers\", \"S\"], \"text_encoder\": [\"transformers\", \"T\"],"
        " \"tokenizer\": [\"transformers\", \"K\"], \"transformer\": [\"diffusers\", \"M\"]}");
    expect_open_error("index lacks vae", root, QI_ERR_FORMAT,
                      "model_index.json: no 'vae' entry; a Qwen-Image pipeline lists transformer");
    write_text_in(root, "model_index.json",
               "{\"scheduler\": [\"diffusers\", \"S\"], \"text_encoder\": [null, null],"
               " \"tokenizer\": [\"transformers\", \"K\"], \"transformer\": [\"diffusers\", \"M\"],"
               " \"vae\": [\"diffusers\", \"V\"]}");
    expect_open_error("index null component", root, QI_ERR_FORMAT,
                      "component 'text_encoder' is null (the pipeline was saved without it)");
}

static void missing_component_folder(void) {
    const char *root = fake_model_without("no_vae_folder", "vae/config.json");
    char path[1024];
    snprintf(path, sizeof path, "%s/vae", root);
    CHECK(rmdir(path) == 0, "cannot remove %s", path);
    expect_open_error("missing vae folder", root, QI_ERR_IO,
                      "/vae: missing folder (model_index.json lists 'vae'); the download is "
                      "incomplete: fetch vae/ from Qwen/Qwen-Image");
}

static void missing_config_files(void) {
    const char *root = fake_model_without("no_transformer_config", "transformer/config.json");
    expect_open_error("missing config", root, QI_ERR_IO,
                      "transformer/config.json: missing; the download is incomplete: fetch "
                      "transformer/config.json from Qwen/Qwen-Image");

    root = fake_model_without("no_merges", "tokenizer/merges.txt");
    expect_open_error("missing merges.txt", root, QI_ERR_IO, "tokenizer/merges.txt: missing");

    root = fake_model_without("no_scheduler_config", "scheduler/scheduler_config.json");
    expect_open_error("missing scheduler", root, QI_ERR_IO,
                      "scheduler/scheduler_config.json: missing");

    root = fake_model("broken_vae_config");
    write_text_in(root, "vae/config.json", "{\n\"z_dim\": 16,\n\"base_dim\": ,\n}");
    expect_open_error("malformed config", root, QI_ERR_FORMAT,
                      "vae/config.json: line 3: JSON syntax error near '");
}

/* ---- JSON helpers ------------------------------------------------------- */

static void json_load_reports_line_and_text(void) {
    write_text_in(tmp_root, "bad.json", "{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}\n");
    char path[512];
    snprintf(path, sizeof path, "%s/bad.json", tmp_root);
    cJSON *j = NULL;
    qi_error err = {{0}};
    qi_status st = qi_json_load(path, &j, &err);
    CHECK(st == QI_ERR_FORMAT && j == NULL, "status %s", qi_status_name(st));
    CHECK(strstr(err.msg, "bad.json: line 3: JSON syntax error near '") &&
              strstr(err.msg, "[1, 2,, 3]"),
          "%s", err.msg);
    printf("  %s\n", err.msg);

    write_text_in(tmp_root, "cut.json", "{\n  \"a\": [1, 2\n");
    snprintf(path, sizeof path, "%s/cut.json", tmp_root);
    st = qi_json_load(path, &j, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "cut.json: line 2: JSON syntax error: unexpected "
                                                 "end of file after '  \"a\": [1, 2'"),
          "%s", err.msg);
    printf("  %s\n", err.msg);

    snprintf(path, sizeof path, "%s/absent.json", tmp_root);
    st = qi_json_load(path, &j, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "absent.json: cannot open"), "%s", err.msg);

    write_text_in(tmp_root, "bom.json", "\xef\xbb\xbf{\"a\": 1}\n");
    snprintf(path, sizeof path, "%s/bom.json", tmp_root);
    st = qi_json_load(path, &j, &err);
    CHECK(st == QI_OK && j, "a UTF-8 BOM is accepted: %s", err.msg);
    cJSON_Delete(j);
}

static void json_getters_are_typed_and_strict(void) {
    const char *text = "{\"n\": 60, \"big\": 5000000000, \"half\": 2.5, \"eps\": 1e-6, \"t\": true,"
                       " \"s\": \"silu\", \"axes\": [16, 56, 56], \"mean\": [-0.75, 0.5],"
                       " \"nul\": null, \"mixed\": [1, \"x\"]}";
    cJSON *j = NULL;
    qi_error err = {{0}};
    CHECK(qi_json_parse(text, strlen(text), "cfg.json", &j, &err) == QI_OK, "%s", err.msg);
    if (!j) return;
    int i = 0, b = 0, n = 0, axes[3];
    int64_t i64 = 0;
    double d = 0, mean[4];
    const char *s = NULL;
    CHECK(qi_json_get_int(j, "n", "cfg.json", &i, &err) == QI_OK && i == 60, "int");
    CHECK(qi_json_get_int64(j, "big", "cfg.json", &i64, &err) == QI_OK && i64 == 5000000000LL,
          "int64");
    CHECK(qi_json_get_double(j, "eps", "cfg.json", &d, &err) == QI_OK && d == 1e-6, "double");
    CHECK(qi_json_get_double(j, "n", "cfg.json", &d, &err) == QI_OK && d == 60, "int as double");
    CHECK(qi_json_get_bool(j, "t", "cfg.json", &b, &err) == QI_OK && b == 1, "bool");
    CHECK(qi_json_get_string(j, "s", "cfg.json", &s, &err) == QI_OK && s && !strcmp(s, "silu"),
          "string");
    CHECK(qi_json_get_int_array(j, "axes", "cfg.json", axes, 3, &n, &err) == QI_OK && n == 3 &&
              axes[0] == 16 && axes[2] == 56,
          "int array: %s", err.msg);
    CHECK(qi_json_get_double_array(j, "mean", "cfg.json", mean, 4, &n, &err) == QI_OK && n == 2 &&
              mean[0] == -0.75,
          "double array: %s", err.msg);

    static const struct {
        const char *key, *kind, *expect;
    } bad[] = {
        {"missing", "int", "cfg.json: key 'missing' is missing"},
        {"s", "int", "cfg.json: key 's' must be an integer, found a string"},
        {"half", "int", "cfg.json: key 'half' must be an integer, found 2.5"},
        {"big", "int", "cfg.json: key 'big' must be an integer, found 5000000000"},
        {"s", "double", "cfg.json: key 's' must be a number, found a string"},
        {"n", "bool", "cfg.json: key 'n' must be true or false, found a number"},
        {"t", "string", "cfg.json: key 't' must be a string, found a boolean"},
        {"nul", "string", "cfg.json: key 'nul' must be a string, found null"},
        {"mixed", "int_array",
         "cfg.json: key 'mixed' must be an array of integers; element 1 is a string"},
        {"axes", "short_array", "cfg.json: key 'axes' has 3 elements, at most 2 expected"},
    };
    for (size_t k = 0; k < QI_ARRAY_LEN(bad); k++) {
        qi_status st;
        const char *kind = bad[k].kind;
        if (!strcmp(kind, "int"))
            st = qi_json_get_int(j, bad[k].key, "cfg.json", &i, &err);
        else if (!strcmp(kind, "double"))
            st = qi_json_get_double(j, bad[k].key, "cfg.json", &d, &err);
        else if (!strcmp(kind, "bool"))
            st = qi_json_get_bool(j, bad[k].key, "cfg.json", &b, &err);
        else if (!strcmp(kind, "string"))
            st = qi_json_get_string(j, bad[k].key, "cfg.json", &s, &err);
        else if (!strcmp(kind, "int_array"))
            st = qi_json_get_int_array(j, bad[k].key, "cfg.json", axes, 3, &n, &err);
        else
            st = qi_json_get_int_array(j, bad[k].key, "cfg.json", axes, 2, &n, &err);
        CHECK(st == QI_ERR_FORMAT && strstr(err.msg, bad[k].expect), "%s %s: %s", kind, bad[k].key,
              err.msg);
        printf("  %s\n", err.msg);
    }

    /* optional keys: absent or null gives the stated default; a wrong type is still an error */
    CHECK(qi_json_get_bool_opt(j, "zero_cond_t", "cfg.json", 0, &b, &err) == QI_OK && b == 0,
          "opt absent");
    CHECK(qi_json_get_int_opt(j, "nul", "cfg.json", 7, &i, &err) == QI_OK && i == 7, "opt null");
    CHECK(qi_json_get_double_opt(j, "eps", "cfg.json", 0.5, &d, &err) == QI_OK && d == 1e-6,
          "opt present");
    CHECK(qi_json_get_bool_opt(j, "s", "cfg.json", 0, &b, &err) == QI_ERR_FORMAT &&
              strstr(err.msg, "key 's' must be true or false"),
          "opt wrong type: %s", err.msg);
    cJSON_Delete(j);
}

int main(void) {
    if (tmp_dir_make(tmp_root, sizeof tmp_root, "md") != 0) return 2;
    RUN(reference_model_dir_opens);
    RUN(fake_complete_layout_opens);
    RUN(missing_dir);
    RUN(path_is_a_file);
    RUN(dir_without_model_index);
    RUN(malformed_model_index);
    RUN(model_index_missing_or_null_component);
    RUN(missing_component_folder);
    RUN(missing_config_files);
    RUN(json_load_reports_line_and_text);
    RUN(json_getters_are_typed_and_strict);
    tmp_remove_tree(tmp_root);
    TEST_END();
}

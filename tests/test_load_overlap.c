/*
 * test_load_overlap.c — claims about qi_open_options.load_transformer: the
 * transformer loaded inside qi_engine_open on its own thread, beside the
 * text encoder and VAE, gives the image the lazy and the one-after-another
 * loads give, bit for bit; a failure on either side of the overlap is the
 * open's error, naming the tensor, with everything that did load freed by
 * qi_engine_close (the ASan build checks the leaks, the TSan build the
 * races). `test_load_overlap -d cuda` runs the same claims on the GPU, where
 * the two loads upload through separate lanes (cuda_upload.cu), and the
 * upload's switches (QI_LOAD_FAST, QI_LOAD_PREAD) give the same image.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "qwen_image.h"
#include "test.h"

static const char *g_device = "cpu";

static qi_status open_model(const char *dir, int mode, qi_test_log *log, qi_engine **e) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = dir;
    o.device = g_device;
    o.load_transformer = mode;
    o.log = qi_test_log_line;
    o.log_user = log;
    return qi_engine_open(&o, e);
}

/* One 32² image, 2 steps, true CFG (both text paths), from a fresh engine. */
static qi_status image_with(const char *dir, int mode, qi_test_log *log, qi_image *img) {
    qi_engine *e = NULL;
    qi_status st = open_model(dir, mode, log, &e);
    qi_request r = qi_request_default();
    r.prompt = "a lighthouse at dusk";
    r.negative_prompt = "blurry";
    r.cfg = 3.0f;
    r.width = r.height = 32;
    r.steps = 2;
    r.seed = 7;
    if (!st) st = qi_generate(e, &r, img);
    CHECK(st == QI_OK, "load_transformer %d: %s", mode, qi_engine_error(e));
    qi_engine_close(e);
    return st;
}

static void loads_beside_each_other_give_the_image_of_loads_one_by_one(void) {
    const char *dir = QI_TEST_DATA "/tiny-model";
    qi_image img[3];
    qi_test_log logs[3];
    memset(img, 0, sizeof img);
    memset(logs, 0, sizeof logs);
    unsetenv("QI_LOAD_SEQUENTIAL");
    for (int mode = 0; mode < 3; mode++)
        if (image_with(dir, mode, &logs[mode], &img[mode])) return;
    size_t lat = (size_t)16 * 4 * 4, px = (size_t)32 * 32 * 3;
    for (int mode = 1; mode < 3; mode++) {
        CHECK(!memcmp(img[0].latents, img[mode].latents, lat * sizeof(float)), "mode %d: the lazy load's latents",
              mode);
        CHECK(!memcmp(img[0].rgb, img[mode].rgb, px), "mode %d: the lazy load's pixels", mode);
    }
    /* the log says which load ran: the transformer beside the others, after them, or not at open */
    CHECK(strstr(logs[1].text, "load overlap:") && strstr(logs[1].text, "(beside the text encoder and VAE)"),
          "%s", logs[1].text);
    CHECK(strstr(logs[2].text, "one after another") && strstr(logs[2].text, "loaded transformer from"), "%s",
          logs[2].text);
    CHECK(!strstr(logs[0].text, "loaded transformer from") && strstr(logs[0].text, "loaded tokenizer + text encoder"),
          "%s", logs[0].text);
    for (int mode = 0; mode < 3; mode++) qi_image_free(&img[mode]);
}

static void the_environment_can_force_the_loads_one_by_one(void) {
    qi_test_log log;
    memset(&log, 0, sizeof log);
    qi_image img = {0};
    setenv("QI_LOAD_SEQUENTIAL", "1", 1);
    image_with(QI_TEST_DATA "/tiny-model", 1, &log, &img);
    unsetenv("QI_LOAD_SEQUENTIAL");
    CHECK(strstr(log.text, "one after another") && !strstr(log.text, "load overlap:"), "%s", log.text);
    qi_image_free(&img);
}

/* The upload's paths (cuda_upload.cu) put the same bytes on the device: the
 * default (pread into the staging, a thread pool, buffers alternating across
 * weights), QI_LOAD_PREAD=1 (pread from the mapped file) and QI_LOAD_FAST=0 (the
 * old path) give one image, bit for bit, with the loads beside each other.
 * The switches are read when the backend is made, at each open; the CPU
 * backend ignores them (the claim is trivially true there). */
static void the_upload_paths_give_the_same_image(void) {
    const char *env[3][2] = {{NULL, NULL}, {"QI_LOAD_PREAD", "1"}, {"QI_LOAD_FAST", "0"}};
    qi_image img[3];
    memset(img, 0, sizeof img);
    unsetenv("QI_LOAD_SEQUENTIAL");
    for (int k = 0; k < 3; k++) {
        qi_test_log log;
        memset(&log, 0, sizeof log);
        if (env[k][0]) setenv(env[k][0], env[k][1], 1);
        qi_status st = image_with(QI_TEST_DATA "/tiny-model", 1, &log, &img[k]);
        if (env[k][0]) unsetenv(env[k][0]);
        if (st) return;
    }
    size_t lat = (size_t)16 * 4 * 4, px = (size_t)32 * 32 * 3;
    for (int k = 1; k < 3; k++) {
        CHECK(!memcmp(img[0].latents, img[k].latents, lat * sizeof(float)), "%s=%s: other latents", env[k][0],
              env[k][1]);
        CHECK(!memcmp(img[0].rgb, img[k].rgb, px), "%s=%s: other pixels", env[k][0], env[k][1]);
    }
    for (int k = 0; k < 3; k++) qi_image_free(&img[k]);
}

/* A copy of the tiny model whose component file `file` lacks tensor `drop`. */
static int model_without(char *dir, const char *file, const char *drop) {
    char cmd[1024], path[512];
    if (!mkdtemp(dir)) return -1;
    snprintf(cmd, sizeof cmd, "cp -r %s/tiny-model/. %s", QI_TEST_DATA, dir);
    if (system(cmd) != 0) return -1;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    qi_st_file *f = NULL;
    qi_error err = {0};
    if (qi_st_open(path, &f, &err)) return -1;
    qi_st_write_item *items = calloc((size_t)f->n_tensors, sizeof *items);
    int n = 0;
    for (int i = 0; items && i < f->n_tensors; i++) {
        const qi_st_tensor *t = &f->tensors[i];
        if (!strcmp(t->name, drop)) continue;
        items[n].name = t->name;
        items[n].dtype = t->dtype;
        items[n].ndim = t->ndim;
        memcpy(items[n].shape, t->shape, sizeof t->shape);
        items[n].data = t->data;
        n++;
    }
    int rc = items && n == f->n_tensors - 1 && qi_st_write(path, items, n, &err) == QI_OK ? 0 : -1;
    free(items);
    qi_st_close(f);
    return rc;
}

static void remove_dir(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "clean up %s", dir);
}

/* Opens `dir` in each mode that loads the transformer at open: each fails
 * with an error naming `tensor`, the same in both, and closes cleanly. */
static void open_fails_naming(const char *dir, const char *tensor) {
    char first[1024] = "";
    for (int mode = 1; mode < 3; mode++) {
        qi_test_log log;
        memset(&log, 0, sizeof log);
        qi_engine *e = NULL;
        qi_status st = open_model(dir, mode, &log, &e);
        const char *msg = qi_engine_error(e);
        CHECK(st != QI_OK && strstr(msg, tensor), "load_transformer %d: status %d, %s", mode, (int)st, msg);
        if (mode == 1) snprintf(first, sizeof first, "%s", msg);
        else CHECK(!strcmp(first, msg), "beside: %s; one by one: %s", first, msg);
        qi_engine_close(e); /* the other load's weights go here (ASan: no leak) */
    }
}

static void a_missing_transformer_tensor_fails_the_open_and_frees_the_rest(void) {
    char dir[] = "/tmp/qi_overlap_dit_XXXXXX";
    REQUIRE(!model_without(dir, "transformer/diffusion_pytorch_model.safetensors", "proj_out.weight"),
            "the fixture");
    unsetenv("QI_LOAD_SEQUENTIAL");
    open_fails_naming(dir, "proj_out.weight");
    /* the lazy load does not read the transformer at open: that open works */
    qi_engine *e = NULL;
    qi_test_log log;
    memset(&log, 0, sizeof log);
    CHECK(open_model(dir, 0, &log, &e) == QI_OK, "lazy open: %s", qi_engine_error(e));
    qi_engine_close(e);
    remove_dir(dir);
}

static void a_missing_vae_tensor_fails_the_open_while_the_transformer_loads(void) {
    char dir[] = "/tmp/qi_overlap_vae_XXXXXX";
    REQUIRE(!model_without(dir, "vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.weight"),
            "the fixture");
    unsetenv("QI_LOAD_SEQUENTIAL");
    open_fails_naming(dir, "decoder.conv_out.weight");
    remove_dir(dir);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "-d")) g_device = argv[2];
    RUN(loads_beside_each_other_give_the_image_of_loads_one_by_one);
    RUN(the_environment_can_force_the_loads_one_by_one);
    RUN(the_upload_paths_give_the_same_image);
    RUN(a_missing_transformer_tensor_fails_the_open_and_frees_the_rest);
    RUN(a_missing_vae_tensor_fails_the_open_while_the_transformer_loads);
    TEST_END();
}

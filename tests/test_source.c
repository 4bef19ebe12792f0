/*
 * test_source.c — weight sources (io/source.h): a diffusers folder gives
 * exactly the tensors the folder reader gives; a single safetensors file
 * (ComfyUI's `model.diffusion_model.` prefix) gives the same transformer, bit
 * for bit; a transformer's configuration derived from its tensor shapes
 * equals its config.json; a path that is no source is a clear error.
 * (Scaled fp8 files and their malformed variants: test_formats.c.)
 *
 * The ComfyUI fixtures of ../shared/reference/formats are used where that
 * folder exists (a checkout without ../shared skips those claims, saying so);
 * every other claim writes its own small files.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/vae.h"
#include "test.h"
#include "testdata.h"

#define TINY QI_TEST_DATA "/tiny-model"
#define TRANSFORMER_DIR TINY "/transformer"
#define FORMATS QI_TEST_DATA "/../../../shared/reference/formats" /* the project's ../shared */
#define MIXED_CONFIG QI_TEST_DATA "/formats/qwen-image-tiny-mixed.config.json"

static qi_backend *be;
static char g_tmp[256]; /* scratch folder of the run */

/* ---- helpers ---------------------------------------------------------------------- */

static int formats_present(const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FORMATS, file);
    if (qi_file_exists(path)) return 1;
    printf("  (skipped: %s absent; ../shared/reference/formats is not beside this checkout)\n", path);
    return 0;
}

/* A number of FORMATS/<case>/case.json; -1 if absent. */
static double case_number(const char *case_name, const char *key) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/case.json", FORMATS, case_name);
    cJSON *j = NULL;
    qi_error err = {{0}};
    if (qi_json_load(path, &j, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(j);
    return d;
}

/* Deterministic inputs in [-1, 1). */
static void fill_random(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

/* One forward of the tiny transformer on fixed inputs (grid 4×4, 5 text
 * tokens); the velocity into out [16 · 64]. 0 or -1. */
static int forward_fixed(qi_dit *d, float *out) {
    enum { GH = 4, GW = 4, L = GH * GW, T = 5 };
    const qi_dit_config *c = qi_dit_get_config(d);
    float *x = malloc(sizeof(float) * L * c->in_channels), *ctx = malloc(sizeof(float) * T * c->joint_dim);
    fill_random(x, (size_t)L * c->in_channels, 7);
    fill_random(ctx, (size_t)T * c->joint_dim, 11);
    size_t m0 = be->ops->mark(be);
    qi_tensor tx, tctx, tout;
    int64_t nx[3] = {1, L, c->in_channels}, nc[3] = {1, T, c->joint_dim};
    int64_t no[3] = {1, L, (int64_t)c->out_channels * c->patch_size * c->patch_size};
    float t = 0.625f;
    qi_error err = {{0}};
    qi_status st = be->ops->tensor(be, &tx, be->act_dtype, 3, nx, &err);
    if (!st) st = be->ops->tensor(be, &tctx, be->act_dtype, 3, nc, &err);
    if (!st) st = be->ops->tensor(be, &tout, be->act_dtype, 3, no, &err);
    if (!st) st = be->ops->upload(be, &tx, x, &err);
    if (!st) st = be->ops->upload(be, &tctx, ctx, &err);
    if (!st) st = qi_dit_forward(d, &tx, &tctx, NULL, &t, GH, GW, &tout, &err);
    if (!st) st = be->ops->download(be, &tout, out, &err);
    CHECK(st == QI_OK, "forward: %s", err.msg);
    be->ops->reset(be, m0);
    free(x);
    free(ctx);
    return st == QI_OK ? 0 : -1;
}

/* The tensors of two sources agree one to one: names, types, shapes, bytes. */
static void check_same_tensors(const qi_source *a, const qi_source *b) {
    int n = qi_source_tensor_count(a);
    CHECK(n == qi_source_tensor_count(b), "%d vs %d tensors", n, qi_source_tensor_count(b));
    for (int i = 0; i < n && i < qi_source_tensor_count(b); i++) {
        qi_source_tensor ta, tb;
        qi_source_tensor_at(a, i, &ta);
        qi_source_tensor_at(b, i, &tb);
        int same = !strcmp(ta.name, tb.name) && ta.dtype == tb.dtype && ta.ndim == tb.ndim &&
                   ta.nbytes == tb.nbytes && !memcmp(ta.shape, tb.shape, sizeof ta.shape) &&
                   !memcmp(ta.data, tb.data, ta.nbytes) && ta.scale_form == QI_SCALE_NONE &&
                   tb.scale_form == QI_SCALE_NONE;
        CHECK(same, "tensor %d: '%s' vs '%s'", i, ta.name, tb.name);
        if (!same) return;
    }
}

/* A single transformer file loads (with the folder's config.json attached,
 * the tiny model's RoPE axes being no shape's) and one forward equals the
 * folder's bit for bit. */
static void check_file_matches_folder(const char *path) {
    qi_error err = {{0}};
    qi_source *folder = NULL, *file = NULL;
    qi_dit *df = NULL, *dd = NULL;
    REQUIRE(qi_source_open(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &folder, &err) == QI_OK, "%s", err.msg);
    qi_status st = qi_source_open(path, QI_COMPONENT_TRANSFORMER, &file, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK) {
        CHECK(!strcmp(qi_source_kind(file), "safetensors file"), "kind %s", qi_source_kind(file));
        CHECK(qi_source_config(file, NULL) == NULL, "a single file has no config.json");
        check_same_tensors(folder, file);
        /* without a config: head size 32 has no known RoPE axes */
        qi_dit_config cfg;
        st = qi_dit_read_config(file, &cfg, &err);
        CHECK(st == QI_ERR_UNSUPPORTED && strstr(err.msg, "head size 32") && strstr(err.msg, "config.json"),
              "%s", err.msg);
        printf("  without a config: %s\n", err.msg);
        st = qi_source_set_config(file, TRANSFORMER_DIR "/config.json", &err);
        if (st == QI_OK) st = qi_dit_load(file, be, NULL, &df, &err);
        CHECK(st == QI_OK, "%s", err.msg);
    }
    CHECK(qi_dit_load(folder, be, NULL, &dd, &err) == QI_OK, "%s", err.msg);
    if (df && dd) {
        size_t n = 16 * 64;
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        if (forward_fixed(df, a) == 0 && forward_fixed(dd, b) == 0)
            CHECK(!memcmp(a, b, n * sizeof *a), "file and folder forwards differ (rel L2 %.3g)",
                  qi_rel_l2(a, b, n));
        free(a);
        free(b);
    }
    qi_dit_free(df);
    qi_dit_free(dd);
    qi_source_close(file);
    qi_source_close(folder);
}

/* Copies the tiny transformer folder's tensors into one file, each name
 * prefixed, plus `extra` (a tensor of another component, or NULL). */
static int write_prefixed_copy(const char *path, const char *prefix, const char *extra) {
    qi_st_set *set = NULL;
    qi_error err = {{0}};
    if (qi_st_set_open_dir(TRANSFORMER_DIR, "diffusion_pytorch_model", &set, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    int n = set->n_tensors;
    qi_st_write_item *items = calloc((size_t)n + 1, sizeof *items);
    char (*names)[160] = calloc((size_t)n, sizeof *names);
    static const float one = 1.0f;
    for (int i = 0; i < n; i++) {
        const qi_st_tensor *t = set->index[i];
        snprintf(names[i], sizeof names[i], "%s%s", prefix, t->name);
        items[i] = (qi_st_write_item){.name = names[i], .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(items[i].shape, t->shape, sizeof t->shape);
    }
    if (extra) items[n++] = (qi_st_write_item){.name = extra, .dtype = QI_F32, .ndim = 1, .shape = {1}, .data = &one};
    qi_status st = qi_st_write(path, items, n, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    free(items);
    free(names);
    qi_st_set_close(set);
    return st == QI_OK ? 0 : -1;
}

/* ---- claims ------------------------------------------------------------------------ */

static void folder_source_gives_the_folder_readers_tensors(void) {
    static const struct {
        const char *dir, *stem;
        qi_component comp;
    } parts[] = {{TINY "/transformer", "diffusion_pytorch_model", QI_COMPONENT_TRANSFORMER},
                 {TINY "/text_encoder", "model", QI_COMPONENT_TEXT_ENCODER},
                 {TINY "/vae", "diffusion_pytorch_model", QI_COMPONENT_VAE}};
    for (size_t p = 0; p < QI_ARRAY_LEN(parts); p++) {
        qi_error err = {{0}};
        qi_st_set *set = NULL;
        qi_source *src = NULL;
        REQUIRE(qi_st_set_open_dir(parts[p].dir, parts[p].stem, &set, &err) == QI_OK, "%s", err.msg);
        qi_status st = qi_source_open(parts[p].dir, parts[p].comp, &src, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        if (st == QI_OK) {
            CHECK(!strcmp(qi_source_kind(src), "diffusers folder"), "kind %s", qi_source_kind(src));
            const char *cfg_path = NULL;
            CHECK(qi_source_config(src, &cfg_path) != NULL && strstr(cfg_path, "config.json"),
                  "%s: config.json parsed", parts[p].dir);
            CHECK(qi_source_tensor_count(src) == set->n_tensors, "%s: %d vs %d tensors", parts[p].dir,
                  qi_source_tensor_count(src), set->n_tensors);
            for (int i = 0; i < set->n_tensors && i < qi_source_tensor_count(src); i++) {
                const qi_st_tensor *t = set->index[i];
                qi_source_tensor s;
                qi_source_tensor_at(src, i, &s);
                int same = !strcmp(s.name, t->name) && !strcmp(s.stored_name, t->name) &&
                           s.dtype == t->dtype && s.ndim == t->ndim && s.nbytes == t->nbytes &&
                           !memcmp(s.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) &&
                           !memcmp(s.data, t->data, t->nbytes) && s.scale_form == QI_SCALE_NONE;
                CHECK(same, "%s: tensor %d '%s' differs", parts[p].dir, i, t->name);
                if (!same) break;
            }
        }
        printf("  %s: %d tensors, as qi_st_set_open_dir gives them\n", parts[p].dir, set->n_tensors);
        qi_source_close(src);
        qi_st_set_close(set);
    }
}

static void lookups_keep_the_folder_readers_messages(void) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    REQUIRE(qi_source_open(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK, "%s", err.msg);
    qi_source_tensor t;
    int64_t bad[2] = {128, 32};
    qi_status st = qi_source_get(src, "img_in.weight", 2, bad, &t, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "tensor 'img_in.weight': expected shape [128, 32], found [128, 64]"),
          "%s", err.msg);
    st = qi_source_get(src, "img_in.weigth", -1, NULL, &t, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "tensor 'img_in.weigth' not found") &&
              strstr(err.msg, "diffusion_pytorch_model.safetensors"), "%s", err.msg);
    int64_t any[2] = {-1, 64};
    CHECK(qi_source_get(src, "img_in.weight", 2, any, &t, &err) == QI_OK && t.shape[0] == 128, "%s", err.msg);
    qi_source_close(src);
}

static void prefixed_single_file_gives_the_same_transformer(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/comfy_style.safetensors", g_tmp);
    /* a bundled file may hold another component's tensors: not listed */
    if (write_prefixed_copy(path, "model.diffusion_model.", "first_stage_model.decoder.x") != 0) return;
    check_file_matches_folder(path);
    unlink(path);
}

static void comfy_bf16_file_gives_the_same_transformer(void) {
    /* formats/README.md: comfy_bf16 holds the public tiny transformer, bit-identical
     * to it, which is tests/data/tiny-model/transformer */
    if (!formats_present("comfy_bf16.safetensors")) return;
    check_file_matches_folder(FORMATS "/comfy_bf16.safetensors");
}

/* A diffusers reference call (as test_dit compares them) of a case made with
 * a single file: the file loaded with the public config beside it. */
static void check_case_call0(const char *file, const char *case_name) {
    char path[1024];
    qi_error err = {{0}};
    qi_source *src = NULL;
    qi_dit *d = NULL;
    qi_st_set *ref = NULL;
    snprintf(path, sizeof path, "%s/%s", FORMATS, file);
    qi_status st = qi_source_open(path, QI_COMPONENT_TRANSFORMER, &src, &err);
    if (!st) st = qi_source_set_config(src, TRANSFORMER_DIR "/config.json", &err);
    if (!st) st = qi_dit_load(src, be, NULL, &d, &err);
    snprintf(path, sizeof path, "%s/%s/tensors.safetensors", FORMATS, case_name);
    if (!st) st = qi_st_set_open_file(path, &ref, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    const qi_st_tensor *hs = ref ? qi_st_find(ref, "call0.hidden_states") : NULL;
    const qi_st_tensor *ehs = ref ? qi_st_find(ref, "call0.encoder_hidden_states") : NULL;
    const qi_st_tensor *ts = ref ? qi_st_find(ref, "call0.timestep") : NULL;
    const qi_st_tensor *np = ref ? qi_st_find(ref, "call0.noise_pred") : NULL;
    if (d && hs && ehs && ts && np) {
        int gh = (int)case_number(case_name, "height") / 16, gw = (int)case_number(case_name, "width") / 16;
        size_t m0 = be->ops->mark(be);
        qi_tensor x, ctx, out;
        size_t n = np->nbytes / 4;
        float *got = malloc(n * sizeof *got);
        st = be->ops->tensor(be, &x, be->act_dtype, 3, hs->shape, &err);
        if (!st) st = be->ops->tensor(be, &ctx, be->act_dtype, 3, ehs->shape, &err);
        if (!st) st = be->ops->tensor(be, &out, be->act_dtype, 3, np->shape, &err);
        if (!st) st = be->ops->upload(be, &x, hs->data, &err);
        if (!st) st = be->ops->upload(be, &ctx, ehs->data, &err);
        if (!st) st = qi_dit_forward(d, &x, &ctx, NULL, ts->data, gh, gw, &out, &err);
        if (!st) st = be->ops->download(be, &out, got, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        double rel = st == QI_OK ? qi_rel_l2(got, np->data, n) : -1;
        printf("  %s, %s call 0: rel L2 = %.3g (limit 1e-4, as test_dit)\n", file, case_name, rel);
        CHECK(rel >= 0 && rel <= 1e-4, "%s call 0 rel L2 %.3g", case_name, rel);
        free(got);
        be->ops->reset(be, m0);
    } else {
        CHECK(!d || (hs && ehs && ts && np), "%s: call0 tensors missing", case_name);
    }
    qi_st_set_close(ref);
    qi_dit_free(d);
    qi_source_close(src);
}

static void single_files_match_their_reference_calls(void) {
    if (!formats_present("comfy_bf16.safetensors")) return;
    check_case_call0("comfy_bf16.safetensors", "comfy_bf16_cfg3");
    check_case_call0("comfy_fp8_e4m3fn.safetensors", "comfy_fp8_e4m3fn_cfg3"); /* plain fp8: no scales */
}

/* One entry of the spec's inventory (denoiser.md §1.2) for a config. */
typedef struct inv_entry {
    char name[96];
    int ndim;
    int64_t shape[2];
} inv_entry;

static int inventory(const qi_dit_config *c, inv_entry *e) {
    int64_t D = c->inner_dim, F = c->mlp_dim, Dh = c->head_dim;
    int n = 0;
#define ADD(nd, d0, d1, ...) (snprintf(e[n].name, sizeof e[n].name, __VA_ARGS__), e[n].ndim = nd, e[n].shape[0] = d0, e[n].shape[1] = d1, n++)
#define LIN(out, in, ...) (ADD(2, out, in, __VA_ARGS__), strcat(e[n - 1].name, ".weight"), \
                           ADD(1, out, 0, __VA_ARGS__), strcat(e[n - 1].name, ".bias"))
    LIN(D, c->in_channels, "img_in");
    ADD(1, c->joint_dim, 0, "txt_norm.weight");
    LIN(D, c->joint_dim, "txt_in");
    LIN(D, 256, "time_text_embed.timestep_embedder.linear_1");
    LIN(D, D, "time_text_embed.timestep_embedder.linear_2");
    LIN(2 * D, D, "norm_out.linear");
    LIN((int64_t)c->out_channels * 4, D, "proj_out");
    static const char *const square[] = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj",
                                         "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
                                         "attn.to_add_out"};
    static const char *const norms[] = {"norm_q", "norm_k", "norm_added_q", "norm_added_k"};
    for (int b = 0; b < c->num_layers; b++) {
        LIN(6 * D, D, "transformer_blocks.%d.img_mod.1", b);
        LIN(6 * D, D, "transformer_blocks.%d.txt_mod.1", b);
        for (int k = 0; k < 8; k++) LIN(D, D, "transformer_blocks.%d.%s", b, square[k]);
        LIN(F, D, "transformer_blocks.%d.img_mlp.net.0.proj", b);
        LIN(D, F, "transformer_blocks.%d.img_mlp.net.2", b);
        LIN(F, D, "transformer_blocks.%d.txt_mlp.net.0.proj", b);
        LIN(D, F, "transformer_blocks.%d.txt_mlp.net.2", b);
        for (int k = 0; k < 4; k++) ADD(1, Dh, 0, "transformer_blocks.%d.attn.%s.weight", b, norms[k]);
    }
#undef LIN
#undef ADD
    return n;
}

/* Writes a zero transformer of config c (fp8 zeros: 1 byte a weight) as one file. */
static int write_zero_transformer(const char *path, const qi_dit_config *c, const char *prefix) {
    inv_entry *e = calloc(64 + 40 * (size_t)c->num_layers, sizeof *e);
    int n = inventory(c, e);
    size_t most = 0;
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)(e[i].shape[0] * (e[i].ndim == 2 ? e[i].shape[1] : 1));
        if (k > most) most = k;
    }
    uint8_t *zeros = calloc(most, 1);
    qi_st_write_item *items = calloc((size_t)n, sizeof *items);
    char (*names)[128] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", prefix, e[i].name);
        items[i] = (qi_st_write_item){.name = names[i], .dtype = QI_F8_E4M3, .ndim = e[i].ndim, .data = zeros};
        items[i].shape[0] = e[i].shape[0];
        items[i].shape[1] = e[i].shape[1];
    }
    qi_error err = {{0}};
    qi_status st = qi_st_write(path, items, n, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    free(names);
    free(items);
    free(zeros);
    free(e);
    return st == QI_OK ? 0 : -1;
}

static void config_from_shapes_equals_config_json(void) {
    /* the configuration of formats/qwen-image-tiny-mixed.gguf (head size 128,
     * the released model's RoPE axes), written as a zero single file */
    qi_error err = {{0}};
    qi_source *cfg_src = NULL;
    qi_dit_config want, got;
    memset(&want, 0, sizeof want);
    qi_status st = qi_source_open(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &cfg_src, &err);
    if (!st) st = qi_source_set_config(cfg_src, MIXED_CONFIG, &err); /* any source reads an attached config */
    if (!st) st = qi_dit_read_config(cfg_src, &want, &err);
    qi_source_close(cfg_src);
    REQUIRE(st == QI_OK && want.head_dim == 128, "%s", err.msg);

    char path[512];
    snprintf(path, sizeof path, "%s/shapes_only.safetensors", g_tmp);
    REQUIRE(write_zero_transformer(path, &want, "diffusion_model.") == 0, "zero transformer written");
    qi_source *src = NULL;
    qi_dit *d = NULL;
    st = qi_source_open(path, QI_COMPONENT_TRANSFORMER, &src, &err);
    if (!st) st = qi_dit_read_config(src, &got, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK) {
        CHECK(!memcmp(&got, &want, sizeof got),
              "derived: layers %d heads %d head %d D %d F %d joint %d in %d out %d patch %d axes %d %d %d",
              got.num_layers, got.num_heads, got.head_dim, got.inner_dim, got.mlp_dim, got.joint_dim,
              got.in_channels, got.out_channels, got.patch_size, got.axes_dims_rope[0],
              got.axes_dims_rope[1], got.axes_dims_rope[2]);
        printf("  derived from shapes: %d layers, %d heads x %d, text %d, in %d, out %d, axes %d/%d/%d\n",
               got.num_layers, got.num_heads, got.head_dim, got.joint_dim, got.in_channels,
               got.out_channels, got.axes_dims_rope[0], got.axes_dims_rope[1], got.axes_dims_rope[2]);
        /* and the whole transformer loads from the file alone */
        st = qi_dit_load(src, be, NULL, &d, &err);
        CHECK(st == QI_OK, "%s", err.msg);
    }
    qi_dit_free(d);
    qi_source_close(src);
    unlink(path);
}

static void paths_that_are_no_source_are_clear_errors(void) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    qi_status st = qi_source_open(TINY "/model_index.json", QI_COMPONENT_TRANSFORMER, &src, &err);
    CHECK(st == QI_ERR_ARG && !src && strstr(err.msg, "model_index.json") && strstr(err.msg, ".safetensors") &&
              strstr(err.msg, ".gguf") && strstr(err.msg, "folder"), "%s", err.msg);
    printf("  %s\n", err.msg);
    st = qi_source_open("/nonexistent/model.safetensors", QI_COMPONENT_TRANSFORMER, &src, &err);
    CHECK(st == QI_ERR_IO && !src && strstr(err.msg, "/nonexistent/model.safetensors") &&
              strstr(err.msg, "no such file"), "%s", err.msg);
    printf("  %s\n", err.msg);
    /* a file without the transformer's anchor, under any prefix */
    char path[512];
    snprintf(path, sizeof path, "%s/vae_like.safetensors", g_tmp);
    static const float one = 1;
    qi_st_write_item item = {.name = "decoder.conv_in.bias", .dtype = QI_F32, .ndim = 1, .shape = {1}, .data = &one};
    REQUIRE(qi_st_write(path, &item, 1, &err) == QI_OK, "%s", err.msg);
    st = qi_source_open(path, QI_COMPONENT_TRANSFORMER, &src, &err);
    CHECK(st == QI_ERR_FORMAT && !src && strstr(err.msg, "img_in.weight") && strstr(err.msg, "vae_like"),
          "%s", err.msg);
    printf("  %s\n", err.msg);
    /* a VAE file without a config.json and without the tensors to derive one */
    st = qi_source_open(path, QI_COMPONENT_VAE, &src, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    qi_vae *v = NULL;
    if (st == QI_OK) {
        st = qi_vae_load(src, be, &v, &err);
        CHECK(st == QI_ERR_FORMAT && !v && strstr(err.msg, "config.json") && strstr(err.msg, "post_quant_conv.weight"),
              "%s", err.msg);
    }
    qi_source_close(src);
    unlink(path);
}

static void metadata_answers_from_the_file(void) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    REQUIRE(qi_source_open(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK, "%s", err.msg);
    const char *s = NULL;
    int64_t v = 0;
    CHECK(!qi_source_has_meta(src, "general.architecture"), "no such key");
    CHECK(qi_source_meta_string(src, "general.architecture", &s, &err) == QI_ERR_FORMAT &&
              strstr(err.msg, "general.architecture"), "%s", err.msg);
    CHECK(qi_source_meta_int(src, "x", &v, &err) != QI_OK, "no int");
    qi_source_close(src);
}

/* The city96-layout GGUF transformer: names as diffusers', shapes in PyTorch
 * order (GGUF's ne reversed), block types kept as stored, the config from
 * shapes equal to the diffusers config it was made from, and metadata. */
static void gguf_transformer_is_a_source(void) {
    if (!formats_present("qwen-image-tiny-mixed.gguf")) return;
    qi_error err = {{0}};
    qi_source *src = NULL, *cfg_src = NULL;
    REQUIRE(qi_source_open(FORMATS "/qwen-image-tiny-mixed.gguf", QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK,
            "%s", err.msg);
    CHECK(!strcmp(qi_source_kind(src), "GGUF file"), "kind %s", qi_source_kind(src));
    qi_source_tensor t;
    CHECK(qi_source_find(src, "img_in.weight", &t) && t.dtype == QI_BF16 && t.ndim == 2 && t.shape[0] == 256 &&
              t.shape[1] == 64, "img_in.weight: dtype %s ndim %d [%lld, %lld]", qi_dtype_name(t.dtype), t.ndim,
          (long long)t.shape[0], (long long)t.shape[1]);
    CHECK(qi_source_find(src, "proj_out.weight", &t) && t.dtype == QI_Q6_K && t.shape[0] == 64 && t.shape[1] == 256,
          "proj_out.weight: %s [%lld, %lld]", qi_dtype_name(t.dtype), (long long)t.shape[0], (long long)t.shape[1]);
    const char *arch = NULL;
    CHECK(qi_source_meta_string(src, "general.architecture", &arch, &err) == QI_OK && arch &&
              !strcmp(arch, "qwen_image"), "general.architecture: %s", arch ? arch : err.msg);
    qi_dit_config want, got;
    qi_status st = qi_source_open(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &cfg_src, &err);
    if (!st) st = qi_source_set_config(cfg_src, MIXED_CONFIG, &err);
    if (!st) st = qi_dit_read_config(cfg_src, &want, &err);
    if (!st) st = qi_dit_read_config(src, &got, &err);
    CHECK(st == QI_OK && !memcmp(&got, &want, sizeof got), "config from the GGUF's shapes: %s",
          st ? err.msg : "differs from qwen-image-tiny-mixed.config.json");
    printf("  %d tensors; config from shapes: %d layers, %d heads x %d, text %d\n", qi_source_tensor_count(src),
           got.num_layers, got.num_heads, got.head_dim, got.joint_dim);
    qi_source_close(cfg_src);
    qi_source_close(src);
}

/* Two stored bytes-and-shape views of one tensor are the same. */
static int same_tensor(const qi_source_tensor *a, const qi_source_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return memcmp(a->data, b->data, a->nbytes) == 0;
}

/* ComfyUI's VAE file in the Wan 2.1 names: every one of its 194 tensors is
 * listed under the diffusers name of the folder VAE of the same weights,
 * with identical dtype, shape and bytes (the mechanical check of the map). */
static void wan_vae_names_map_to_the_folders(void) {
    if (!formats_present("comfy_vae.safetensors")) return;
    qi_error err = {{0}};
    qi_source *wan = NULL, *folder = NULL;
    REQUIRE(qi_source_open(FORMATS "/comfy_vae.safetensors", QI_COMPONENT_VAE, &wan, &err) == QI_OK, "%s", err.msg);
    REQUIRE(qi_source_open(TINY "/vae", QI_COMPONENT_VAE, &folder, &err) == QI_OK, "%s", err.msg);
    int n = qi_source_tensor_count(wan), same = 0;
    for (int i = 0; i < n; i++) {
        qi_source_tensor a, b;
        qi_source_tensor_at(wan, i, &a);
        int ok = qi_source_find(folder, a.name, &b) && same_tensor(&a, &b);
        if (!ok) printf("  %s -> %s: no such identical folder tensor\n", a.stored_name, a.name);
        same += ok;
    }
    printf("  comfy_vae.safetensors (%s): %d of %d tensors equal the folder's under the mapped name\n",
           qi_source_naming(wan), same, n);
    CHECK(n == 194 && same == n && qi_source_tensor_count(folder) == n, "%d of %d", same, n);
    qi_source_close(wan);
    qi_source_close(folder);
}

/* The llama.cpp qwen2vl GGUF: its 26 tensors (embedding, 2 × 12 per layer, final norm) are listed under the names of
 * the transformers text encoder, each with that tensor's shape. */
static void gguf_text_encoder_names_map_to_transformers(void) {
    if (!formats_present("Qwen2.5-VL-tiny-Q8_0.gguf")) return;
    qi_error err = {{0}};
    qi_source *gg = NULL, *folder = NULL;
    REQUIRE(qi_source_open(FORMATS "/Qwen2.5-VL-tiny-Q8_0.gguf", QI_COMPONENT_TEXT_ENCODER, &gg, &err) == QI_OK,
            "%s", err.msg);
    REQUIRE(qi_source_open(TINY "/text_encoder", QI_COMPONENT_TEXT_ENCODER, &folder, &err) == QI_OK, "%s", err.msg);
    int n = qi_source_tensor_count(gg), same = 0;
    for (int i = 0; i < n; i++) {
        qi_source_tensor a, b;
        qi_source_tensor_at(gg, i, &a);
        int ok = qi_source_find(folder, a.name, &b) && a.ndim == b.ndim;
        for (int d = 0; ok && d < a.ndim; d++) ok = a.shape[d] == b.shape[d];
        if (!ok) printf("  %s -> %s: no folder tensor of that shape\n", a.stored_name, a.name);
        same += ok;
    }
    printf("  Qwen2.5-VL-tiny-Q8_0.gguf (%s): %d of %d tensors found under transformers names\n",
           qi_source_naming(gg), same, n);
    CHECK(n == 26 && same == n, "%d of %d", same, n);
    qi_source_close(gg);
    qi_source_close(folder);
}

int main(void) {
    qi_error err = {{0}};
    if (qi_backend_cpu_create(0, 0, &be, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (tmp_dir_make(g_tmp, sizeof g_tmp, "source") != 0) return 1;
    RUN(folder_source_gives_the_folder_readers_tensors);
    RUN(lookups_keep_the_folder_readers_messages);
    RUN(prefixed_single_file_gives_the_same_transformer);
    RUN(comfy_bf16_file_gives_the_same_transformer);
    RUN(single_files_match_their_reference_calls);
    RUN(config_from_shapes_equals_config_json);
    RUN(paths_that_are_no_source_are_clear_errors);
    RUN(metadata_answers_from_the_file);
    RUN(gguf_transformer_is_a_source);
    RUN(wan_vae_names_map_to_the_folders);
    RUN(gguf_text_encoder_names_map_to_transformers);
    tmp_remove_tree(g_tmp);
    be->ops->destroy(be);
    TEST_END();
}

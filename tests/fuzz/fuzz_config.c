/*
 * fuzz_config.c — every JSON file the loaders read, through the reader that
 * reads it. The first input byte picks the file (byte % 6), the rest is its
 * text:
 *   0  model_index.json           qi_model_dir_open (a scratch diffusers folder whose
 *                                 parts exist, so the index is what decides)
 *   1  transformer/config.json    qi_dit_read_config (a source with this config, no tensors)
 *   2  text_encoder/config.json   qi_text_encoder_read_config (its path)
 *   3  vae/config.json            qi_vae_load (a source with this config, no tensors: the
 *                                 config is read and checked before the first tensor)
 *   4  scheduler_config.json      qi_scheduler_config_parse, then the schedule for a few
 *                                 step counts and sizes
 *   5  *.safetensors.index.json   qi_st_set_open_dir (a scratch folder with two small shards)
 * (LoRA adapter metadata and comfy quantisation JSON live in safetensors
 * headers: fuzz_lora and fuzz_safetensors.)
 *
 * Oracles beyond the sanitizers: a refusal has a message naming the file; an
 * accepted transformer / text-encoder config has positive sizes that
 * multiply out (heads × head_dim = width); a schedule is finite, starts at
 * most 1 and never rises.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "fuzz.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/text_encoder.h"
#include "model/vae.h"
#include "sample/scheduler.h"

static qi_backend *cpu;

/* ---- a source of no tensors with the fuzzed config ---------------------------- */

static const qi_source_ops empty_ops = {.kind = "fuzz"}; /* no tensors: fill is never called */

/* The fuzzed bytes parsed as the config `name` of a source of comp, or NULL
 * (the parse error checked) when they are not JSON. */
static qi_source *source_with(qi_component comp, const uint8_t *p, size_t n, const char *name) {
    cJSON *root;
    qi_error err;
    qi_status st = qi_json_parse((const char *)p, n, name, &root, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, name);
        return NULL;
    }
    qi_source *s = qi_source_new(&empty_ops, comp, name);
    if (!s) abort();
    s->config = root;
    snprintf(s->config_path, sizeof s->config_path, "%s", name);
    return s;
}

/* ---- one reader each ------------------------------------------------------------ */

static void model_index(const uint8_t *p, size_t n) {
    char path[1024];
    fuzz_put("model/model_index.json", p, n, path, sizeof path);
    snprintf(path, sizeof path, "%s/model", fuzz_dir());
    qi_model_dir dir;
    qi_error err;
    qi_status st = qi_model_dir_open(path, &dir, &err);
    if (st != QI_OK) fuzz_check_error(st, &err, "model");
}

static void transformer_config(const uint8_t *p, size_t n) {
    static const char name[] = "transformer/config.json";
    qi_source *s = source_with(QI_COMPONENT_TRANSFORMER, p, n, name);
    if (!s) return;
    qi_error err;
    qi_dit_config c;
    qi_status st = qi_dit_read_config(s, &c, &err);
    if (st != QI_OK) fuzz_check_error(st, &err, name);
    else if (c.num_layers < 1 || c.num_heads < 1 || c.head_dim < 1 || c.inner_dim != c.num_heads * c.head_dim ||
             c.axes_dims_rope[0] + c.axes_dims_rope[1] + c.axes_dims_rope[2] != c.head_dim || c.patch_size < 1 ||
             c.in_channels < 1 || c.out_channels < 1 || c.joint_dim < 1 || c.mlp_dim < 1)
        fuzz_fail("transformer config accepted with sizes that do not add up: layers %d heads %d x %d = %d",
                  c.num_layers, c.num_heads, c.head_dim, c.inner_dim);
    qi_source_close(s);
}

static void text_encoder_config(const uint8_t *p, size_t n) {
    char path[1024];
    fuzz_put("text_encoder_config.json", p, n, path, sizeof path);
    qi_text_encoder_config c;
    qi_error err;
    qi_status st = qi_text_encoder_read_config(path, &c, &err);
    if (st != QI_OK) fuzz_check_error(st, &err, "text_encoder_config.json");
    else if (c.hidden_size < 1 || c.num_layers < 1 || c.num_heads < 1 || c.num_kv_heads < 1 ||
             c.head_dim * c.num_heads != c.hidden_size || c.num_heads % c.num_kv_heads || c.vocab_size < 1 ||
             c.intermediate_size < 1)
        fuzz_fail("text encoder config accepted with sizes that do not add up: width %d heads %d/%d head_dim %d",
                  c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
}

static void vae_config(const uint8_t *p, size_t n) {
    static const char name[] = "vae/config.json";
    qi_source *s = source_with(QI_COMPONENT_VAE, p, n, name);
    if (!s) return;
    qi_error err;
    qi_vae *v = NULL;
    qi_status st = qi_vae_load(s, cpu, &v, &err);
    if (st == QI_OK) fuzz_fail("a VAE loaded from a source with no tensors");
    fuzz_check_error(st, &err, NULL); /* names the config, or (config accepted) the first missing tensor */
    qi_source_close(s);
}

static void scheduler_config(const uint8_t *p, size_t n) {
    static const char name[] = "scheduler_config.json";
    char *text = fuzz_strndup(p, n);
    qi_scheduler_config c;
    qi_error err;
    qi_status st = qi_scheduler_config_parse(text, name, &c, &err);
    free(text);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, name);
        return;
    }
    static const int steps[] = {1, 4, 50}, seq[] = {1, 4096, 1 << 20};
    float sigmas[51], timesteps[50];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            (void)qi_scheduler_mu(&c, seq[b]);
            st = qi_scheduler_sigmas(&c, steps[a], seq[b], sigmas, timesteps, &err);
            if (st != QI_OK) {
                fuzz_check_error(st, &err, NULL);
                continue;
            }
            for (int i = 0; i <= steps[a]; i++)
                if (!isfinite(sigmas[i]) || (i < steps[a] && !isfinite(timesteps[i])))
                    fuzz_fail("schedule of %d steps at %d tokens: sigma %d is %g", steps[a], seq[b], i, sigmas[i]);
        }
}

static void safetensors_index(const uint8_t *p, size_t n) {
    char path[1024];
    fuzz_put("sharded/diffusion_pytorch_model.safetensors.index.json", p, n, path, sizeof path);
    snprintf(path, sizeof path, "%s/sharded", fuzz_dir());
    qi_st_set *s = NULL;
    qi_error err;
    qi_status st = qi_st_set_open_dir(path, "diffusion_pytorch_model", &s, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, "sharded");
        return;
    }
    for (int i = 0; i < s->n_tensors; i++)
        if (qi_st_find(s, s->index[i]->name) != s->index[i]) fuzz_fail("tensor '%s' not found", s->index[i]->name);
    qi_st_set_close(s);
}

/* ---- set-up ------------------------------------------------------------------------ */

/* The parts of a diffusers folder qi_model_dir_open checks (configs are JSON objects). */
static void make_model_dir(void) {
    static const char *const dirs[] = {"model", "model/transformer", "model/text_encoder", "model/vae",
                                       "model/tokenizer", "model/scheduler"};
    static const char *const files[] = {"model/transformer/config.json", "model/text_encoder/config.json",
                                        "model/vae/config.json", "model/scheduler/scheduler_config.json",
                                        "model/tokenizer/vocab.json", "model/tokenizer/merges.txt"};
    char path[1024];
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) fuzz_mkdir(dirs[i]);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) fuzz_put(files[i], "{}", 2, path, sizeof path);
}

/* Two shards an index may name: a.safetensors (x, y) and b.safetensors (z). */
static void make_shards(void) {
    fuzz_mkdir("sharded");
    static const float v[4] = {1, 2, 3, 4};
    qi_st_write_item a[2] = {{"x", QI_F32, 1, {2}, v}, {"y", QI_F32, 2, {1, 2}, v}};
    qi_st_write_item b[1] = {{"z", QI_F32, 0, {0}, v}};
    char path[1024];
    qi_error err;
    snprintf(path, sizeof path, "%s/sharded/a.safetensors", fuzz_dir());
    if (qi_st_write(path, a, 2, &err) != QI_OK) abort();
    snprintf(path, sizeof path, "%s/sharded/b.safetensors", fuzz_dir());
    if (qi_st_write(path, b, 1, &err) != QI_OK) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    qi_error err;
    if (qi_backend_cpu_create(1, 1 << 20, &cpu, &err) != QI_OK) {
        fprintf(stderr, "fuzz_config: %s\n", err.msg);
        abort();
    }
    make_model_dir();
    make_shards();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static void (*const readers[])(const uint8_t *, size_t) = {model_index, transformer_config, text_encoder_config,
                                                                vae_config, scheduler_config, safetensors_index};
    readers[data[0] % 6](data + 1, size - 1);
    return 0;
}

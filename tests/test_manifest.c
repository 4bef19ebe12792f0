/*
 * test_manifest.c — the loader against the real full-size checkpoint layout.
 *
 * shared/reference/manifests/qwen-image-full.json lists every tensor (name,
 * dtype, shape) of the real Qwen-Image transformer, VAE and text encoder. From
 * it this test builds SPARSE safetensors files with the real headers — the
 * data section is a hole made by ftruncate, so ~58 GB of "weights" take a few
 * kilobytes of disk — sharded as Qwen/Qwen-Image ships them (transformer 9
 * shards, text encoder 4, VAE one file; the manifest records no shard
 * assignment, so tensors are split in manifest order into shards of about
 * equal size), in a diffusers directory layout. It then opens the layout with
 * qi_model_dir_open + qi_st_set_open_dir and checks every tensor is found
 * with its manifest dtype and shape, in the shard it was written to.
 * Then, in that layout, Qwen-Image-2512's configs (tests/data/qwen-image-2512,
 * transcribed: its README says from where) must be accepted by every config
 * reader and give the same architecture the manifest's tensors have.
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/text_encoder.h"
#include "model/vae.h"
#include "sample/scheduler.h"
#include "test.h"
#include "testdata.h"

static char tmp_root[64];
static cJSON *manifest;

static const struct component {
    const char *key;  /* in the manifest */
    const char *dir;  /* diffusers sub-folder */
    const char *stem; /* weight file base name */
    int n_shards;     /* as Qwen/Qwen-Image ships it */
} components[] = {
    {"transformer", "transformer", "diffusion_pytorch_model", 9},
    {"text_encoder", "text_encoder", "model", 4},
    {"vae", "vae", "diffusion_pytorch_model", 1},
};

/* One manifest entry: ["BF16", [d0, d1, ...]]. */
typedef struct entry {
    const char *name;
    qi_dtype dtype;
    int ndim;
    int64_t shape[QI_ST_MAX_DIMS];
    uint64_t nbytes;
    int shard;
} entry;

static int parse_entries(const cJSON *obj, entry **out) {
    int n = cJSON_GetArraySize(obj);
    entry *e = calloc((size_t)n, sizeof *e);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        const cJSON *dt = cJSON_GetArrayItem(it, 0), *shape = cJSON_GetArrayItem(it, 1), *d;
        e[i].name = it->string;
        e[i].dtype = QI_DTYPE_COUNT;
        for (int t = 0; t < QI_DTYPE_COUNT; t++)
            if (cJSON_IsString(dt) && !strcmp(dt->valuestring, qi_dtype_name((qi_dtype)t)))
                e[i].dtype = (qi_dtype)t;
        if (e[i].dtype == QI_DTYPE_COUNT || !cJSON_IsArray(shape) ||
            cJSON_GetArraySize(shape) > QI_ST_MAX_DIMS) {
            fprintf(stderr, "manifest entry %s is not [dtype, shape]\n", it->string);
            exit(2);
        }
        e[i].nbytes = qi_dtype_size(e[i].dtype);
        cJSON_ArrayForEach(d, shape) {
            e[i].shape[e[i].ndim++] = (int64_t)d->valuedouble;
            e[i].nbytes *= (uint64_t)d->valuedouble;
        }
        i++;
    }
    *out = e;
    return n;
}

static void shard_name(char *out, size_t cap, const struct component *c, int k) {
    if (c->n_shards == 1)
        snprintf(out, cap, "%s.safetensors", c->stem);
    else
        snprintf(out, cap, "%s-%05d-of-%05d.safetensors", c->stem, k + 1, c->n_shards);
}

/* Writes one shard: the real header (padded with spaces to 8 bytes), then a
 * hole of the data section's size. Returns the file's allocated disk bytes. */
static uint64_t write_sparse_shard(const char *path, const entry *e, int n, int shard) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        if (e[i].shard != shard) continue;
        cJSON *t = cJSON_AddObjectToObject(h, e[i].name);
        cJSON_AddStringToObject(t, "dtype", qi_dtype_name(e[i].dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e[i].shape[d]));
        cJSON *off = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(offset + e[i].nbytes)));
        offset += e[i].nbytes;
    }
    char *text = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    unsigned char *buf = malloc(8 + padded);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, text, len);
    memset(buf + 8 + len, ' ', padded - len);
    cJSON_free(text);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int ok = fd >= 0 && write(fd, buf, 8 + padded) == (ssize_t)(8 + padded) &&
             ftruncate(fd, (off_t)(8 + padded + offset)) == 0;
    struct stat sb;
    uint64_t disk = (fd >= 0 && fstat(fd, &sb) == 0) ? (uint64_t)sb.st_blocks * 512 : 0;
    if (fd >= 0) close(fd);
    free(buf);
    if (!ok) {
        fprintf(stderr, "cannot write sparse shard %s\n", path);
        exit(2);
    }
    return disk;
}

/* Checks every manifest tensor of one component folder. */
static void check_component(const struct component *c, const char *dir) {
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(manifest, c->key);
    CHECK(cJSON_IsObject(obj), "manifest has no '%s'", c->key);
    if (!obj) return;
    entry *e;
    int n = parse_entries(obj, &e);

    /* split in manifest order into shards of about equal size */
    uint64_t total = 0, before = 0;
    for (int i = 0; i < n; i++) total += e[i].nbytes;
    for (int i = 0; i < n; i++) {
        int k = (int)((long double)before * c->n_shards / (long double)total);
        e[i].shard = k < c->n_shards ? k : c->n_shards - 1;
        before += e[i].nbytes;
    }

    uint64_t disk = 0;
    char path[1024], name[256];
    cJSON *index = cJSON_CreateObject(), *weight_map = NULL;
    if (c->n_shards > 1) {
        cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        weight_map = cJSON_AddObjectToObject(index, "weight_map");
    }
    for (int k = 0; k < c->n_shards; k++) {
        shard_name(name, sizeof name, c, k);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        disk += write_sparse_shard(path, e, n, k);
    }
    if (weight_map) {
        for (int i = 0; i < n; i++) {
            shard_name(name, sizeof name, c, e[i].shard);
            cJSON_AddStringToObject(weight_map, e[i].name, name);
        }
        char *text = cJSON_Print(index);
        snprintf(name, sizeof name, "%s.safetensors.index.json", c->stem);
        write_text_in(dir, name, text);
        cJSON_free(text);
    }
    cJSON_Delete(index);

    qi_st_set *s = NULL;
    qi_error err = {{0}};
    double t0 = qi_now_s();
    qi_status st = qi_st_set_open_dir(dir, c->stem, &s, &err);
    double open_s = qi_now_s() - t0;
    CHECK(st == QI_OK, "%s: %s", c->key, err.msg);
    if (!s) {
        free(e);
        return;
    }
    CHECK(s->n_files == c->n_shards, "%s: %d files, expected %d", c->key, s->n_files, c->n_shards);
    CHECK(s->n_tensors == n, "%s: %d tensors, manifest has %d", c->key, s->n_tensors, n);
    int found = 0, mapped_bytes_ok = 1;
    uint64_t seen_bytes = 0;
    for (int i = 0; i < n; i++) {
        const qi_st_tensor *t = NULL;
        st = qi_st_get(s, e[i].name, e[i].ndim, e[i].shape, &t, &err);
        CHECK(st == QI_OK, "%s", err.msg);
        if (!t) continue;
        CHECK(t->dtype == e[i].dtype, "%s: dtype %s, manifest %s", e[i].name,
              qi_dtype_name(t->dtype), qi_dtype_name(e[i].dtype));
        shard_name(name, sizeof name, c, e[i].shard);
        CHECK(strstr(t->file->path, name), "%s: in %s, written to %s", e[i].name, t->file->path,
              name);
        if (t->nbytes != e[i].nbytes) mapped_bytes_ok = 0;
        seen_bytes += t->nbytes;
        found++;
    }
    CHECK(mapped_bytes_ok, "%s: some tensor's nbytes differs from dtype x shape", c->key);
    CHECK(seen_bytes == total, "%s: %llu bytes found, %llu written", c->key,
          (unsigned long long)seen_bytes, (unsigned long long)total);
    /* the mapping really spans the hole: the last byte of the last tensor of the
     * last shard reads as zero (no SIGBUS, no copy) */
    const qi_st_file *last = s->files[s->n_files - 1];
    const unsigned char *end = (const unsigned char *)last->map + last->size - 1;
    CHECK(*end == 0, "%s: hole does not read as zero", c->key);
    CHECK(disk < (uint64_t)16 << 20, "%s: sparse files use %llu bytes of disk", c->key,
          (unsigned long long)disk);
    printf("  %-12s %4d/%d tensors found with manifest dtype+shape, %d file(s), %.2f GB mapped, "
           "%.1f KB on disk, opened in %.1f ms\n",
           c->key, found, n, s->n_files, (double)total / 1e9, (double)disk / 1024, open_s * 1e3);
    qi_st_set_close(s);
    free(e);
}

static void full_size_checkpoint_layout_loads(void) {
    char root[512], path[1024];
    snprintf(root, sizeof root, "%s/Qwen-Image", tmp_root);
    mkdir(root, 0755);
    static const char *const dirs[] = {"transformer", "text_encoder", "vae", "tokenizer",
                                       "scheduler"};
    for (size_t i = 0; i < QI_ARRAY_LEN(dirs); i++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        mkdir(path, 0755);
    }
    /* model_index.json and the tokenizer are the reference model's real files;
     * the configs only need to be JSON objects for the layout check */
    char *text = NULL;
    qi_error err = {{0}};
    CHECK(qi_read_text_file(QI_REF_MODEL "/model_index.json", &text, NULL, &err) == QI_OK, "%s",
          err.msg);
    write_text_in(root, "model_index.json", text ? text : "{}");
    free(text);
    const char *configs[] = {"transformer/config.json", "text_encoder/config.json",
                             "vae/config.json",         "scheduler/scheduler_config.json",
                             "tokenizer/vocab.json",    "tokenizer/merges.txt"};
    for (size_t i = 0; i < QI_ARRAY_LEN(configs); i++) write_text_in(root, configs[i], "{}");
    qi_model_dir md;
    qi_status st = qi_model_dir_open(root, &md, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st != QI_OK) return;
    const char *comp_dirs[] = {md.transformer_dir, md.text_encoder_dir, md.vae_dir};
    for (size_t i = 0; i < QI_ARRAY_LEN(components); i++)
        check_component(&components[i], comp_dirs[i]);
}

/* dims of manifest tensor `name` of component `comp` (ndim returned, 0 if absent). */
static int manifest_shape(const char *comp, const char *name, int64_t *dims) {
    /* an entry is [dtype, [dims...]] */
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(manifest, comp), name);
    const cJSON *shape = cJSON_GetArrayItem(t, 1), *d;
    int n = 0;
    cJSON_ArrayForEach(d, shape) if (n < 4) dims[n++] = (int64_t)d->valuedouble;
    return n;
}

/* The transformer config: the released one, and its Linear inventory is the
 * manifest's 2-D tensors exactly (names and shapes). */
static void check_2512_transformer(const char *dir) {
    qi_source *src = NULL;
    qi_dit_config c, want = qi_dit_released_config();
    qi_error err = {{0}};
    if (qi_source_open_folder(dir, QI_COMPONENT_TRANSFORMER, &src, &err) || qi_dit_read_config(src, &c, &err)) {
        CHECK(0, "%s", err.msg);
        qi_source_close(src);
        return;
    }
    qi_source_close(src);
    CHECK(!memcmp(&c, &want, sizeof c), "config: %d layers, %d heads x %d, text %d, in %d, out %d, patch %d, rope %d/%d/%d",
          c.num_layers, c.num_heads, c.head_dim, c.joint_dim, c.in_channels, c.out_channels, c.patch_size,
          c.axes_dims_rope[0], c.axes_dims_rope[1], c.axes_dims_rope[2]);
    qi_dit_linear_weight *w = NULL;
    int nw = 0, same = 0, manifest_2d = 0;
    CHECK(qi_dit_linear_weights(&c, &w, &nw, &err) == QI_OK, "%s", err.msg);
    for (int i = 0; i < nw; i++) {
        int64_t d[4];
        same += manifest_shape("transformer", w[i].name, d) == 2 && d[0] == w[i].out_dim && d[1] == w[i].in_dim;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(manifest, "transformer")) {
        int64_t d[4];
        manifest_2d += manifest_shape("transformer", it->string, d) == 2;
    }
    printf("  2512 transformer config: %d layers, %d x %d heads, text %d; %d Linear weights, %d of them in the "
           "manifest with that shape, manifest has %d 2-D tensors\n", c.num_layers, c.num_heads, c.head_dim,
           c.joint_dim, nw, same, manifest_2d);
    CHECK(nw > 0 && same == nw && manifest_2d == nw, "%d/%d Linear weights match, manifest has %d", same, nw, manifest_2d);
    free(w);
}

/* The text encoder config against the manifest's shapes. */
static void check_2512_text_encoder(const char *config) {
    qi_text_encoder_config c;
    qi_error err = {{0}};
    if (qi_text_encoder_read_config(config, &c, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int64_t emb[4], q[4], k[4], gate[4];
    int ok = manifest_shape("text_encoder", "model.embed_tokens.weight", emb) == 2 &&
             manifest_shape("text_encoder", "model.layers.0.self_attn.q_proj.weight", q) == 2 &&
             manifest_shape("text_encoder", "model.layers.0.self_attn.k_proj.weight", k) == 2 &&
             manifest_shape("text_encoder", "model.layers.0.mlp.gate_proj.weight", gate) == 2;
    char last[96], beyond[96];
    snprintf(last, sizeof last, "model.layers.%d.self_attn.q_proj.weight", c.num_layers - 1);
    snprintf(beyond, sizeof beyond, "model.layers.%d.self_attn.q_proj.weight", c.num_layers);
    printf("  2512 text encoder config: hidden %d, %d layers, %d heads (%d kv) x %d, MLP %d, vocab %d, M-RoPE %d/%d/%d\n",
           c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size,
           c.mrope_section[0], c.mrope_section[1], c.mrope_section[2]);
    CHECK(ok && emb[0] == c.vocab_size && emb[1] == c.hidden_size && q[0] == (int64_t)c.num_heads * c.head_dim &&
              k[0] == (int64_t)c.num_kv_heads * c.head_dim && gate[0] == c.intermediate_size &&
              manifest_shape("text_encoder", last, q) == 2 && manifest_shape("text_encoder", beyond, q) == 0 &&
              c.mrope_section[0] + c.mrope_section[1] + c.mrope_section[2] == c.head_dim / 2,
          "text encoder config and manifest shapes disagree");
}

/* The VAE config loads the manifest's decoder (every weight's shape checked by
 * qi_vae_load); the scheduler config is Qwen-Image's built-in one. */
static void check_2512_vae_and_scheduler(const char *vae_dir, const char *scheduler_config) {
    qi_backend *be = NULL;
    qi_source *src = NULL;
    qi_vae *vae = NULL;
    qi_error err = {{0}};
    double t0 = qi_now_s();
    if (qi_backend_cpu_create(1, 0, &be, &err) || qi_source_open_folder(vae_dir, QI_COMPONENT_VAE, &src, &err) ||
        qi_vae_load(src, be, &vae, &err))
        CHECK(0, "%s", err.msg);
    else {
        printf("  2512 VAE config: z_dim %d, latents_mean[0] %g, latents_std[15] %g; the full-size decoder bound "
               "in %.2f s\n", qi_vae_z_dim(vae), qi_vae_latents_mean(vae)[0], qi_vae_latents_std(vae)[15],
               qi_now_s() - t0);
        CHECK(qi_vae_z_dim(vae) == 16 && qi_vae_scale_factor(vae) == 8 && qi_vae_latents_mean(vae)[0] == -0.7571f &&
                  qi_vae_latents_std(vae)[15] == 1.916f, "VAE config");
    }
    qi_vae_free(vae);
    qi_source_close(src);
    if (be) be->ops->destroy(be);
    qi_scheduler_config c, want = qi_scheduler_config_qwen_image();
    CHECK(qi_scheduler_config_load(scheduler_config, &c, &err) == QI_OK, "%s", err.msg);
    float s[9], t[8], ws[9], wt[8];
    int same = qi_scheduler_sigmas(&c, 8, 4096, s, t, &err) == QI_OK &&
               qi_scheduler_sigmas(&want, 8, 4096, ws, wt, &err) == QI_OK && !memcmp(s, ws, sizeof s);
    for (int steps = 2; steps <= 50 && same; steps++) /* 1 step with shift_terminal is refused (both) */
        for (int len = 256; len <= 8192 && same; len *= 2) {
            float a[51], b[51], ta[50], tb[50];
            same = qi_scheduler_sigmas(&c, steps, len, a, ta, &err) == QI_OK &&
                   qi_scheduler_sigmas(&want, steps, len, b, tb, &err) == QI_OK &&
                   !memcmp(a, b, sizeof *a * (size_t)(steps + 1));
        }
    printf("  2512 scheduler config: 8 steps at 1024^2: sigma %.4f .. %.4f; %s Qwen-Image's for 2-50 steps, 256-8192 tokens\n",
           s[0], s[7], same ? "the same schedule as" : "NOT");
    CHECK(same, "2512 scheduler schedule differs from Qwen-Image's");
}

static void qwen_image_2512_configs_derive_the_released_architecture(void) {
    char root[512], path[1024];
    snprintf(root, sizeof root, "%s/Qwen-Image", tmp_root); /* full_size_checkpoint_layout_loads' layout */
    static const char *const files[] = {"model_index.json", "transformer/config.json", "text_encoder/config.json",
                                        "vae/config.json", "scheduler/scheduler_config.json"};
    for (size_t i = 0; i < QI_ARRAY_LEN(files); i++) {
        char *text = NULL;
        qi_error err = {{0}};
        snprintf(path, sizeof path, "%s/qwen-image-2512/%s", QI_TEST_DATA, files[i]);
        CHECK(qi_read_text_file(path, &text, NULL, &err) == QI_OK, "%s", err.msg);
        if (text) write_text_in(root, files[i], text);
        free(text);
    }
    qi_model_dir md;
    qi_error err = {{0}};
    if (qi_model_dir_open(root, &md, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    CHECK(!strcmp(md.pipeline_class, "QwenImagePipeline"), "pipeline class '%s'", md.pipeline_class);
    check_2512_transformer(md.transformer_dir);
    check_2512_text_encoder(md.text_encoder_config);
    check_2512_vae_and_scheduler(md.vae_dir, md.scheduler_config);
}

static void manifest_knows_the_real_architecture(void) {
    /* the manifest describes the real model, not a small variant */
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(manifest, "transformer");
    int blocks = 0;
    char name[128];
    for (;; blocks++) {
        snprintf(name, sizeof name, "transformer_blocks.%d.attn.to_q.weight", blocks);
        if (!cJSON_GetObjectItemCaseSensitive(tr, name)) break;
    }
    CHECK(blocks == 60, "transformer has %d blocks, expected 60", blocks);
    const cJSON *te = cJSON_GetObjectItemCaseSensitive(manifest, "text_encoder");
    int layers = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, te) if (strstr(it->string, "self_attn.q_proj.weight") &&
                                   !strstr(it->string, "visual")) layers++;
    CHECK(layers == 28, "text encoder has %d layers, expected 28", layers);
    printf("  transformer %d blocks, text encoder %d layers, %d + %d + %d tensors\n", blocks,
           layers, cJSON_GetArraySize(tr), cJSON_GetArraySize(te),
           cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(manifest, "vae")));
}

int main(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/reference/manifests/qwen-image-full.json", QI_SHARED_DIR);
    qi_error err = {{0}};
    if (qi_json_load(path, &manifest, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (tmp_dir_make(tmp_root, sizeof tmp_root, "manifest") != 0) return 2;
    RUN(manifest_knows_the_real_architecture);
    RUN(full_size_checkpoint_layout_loads);
    RUN(qwen_image_2512_configs_derive_the_released_architecture);
    tmp_remove_tree(tmp_root);
    cJSON_Delete(manifest);
    TEST_END();
}

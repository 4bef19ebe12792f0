/*
 * bench.c — `qwen-image bench`: the full-size model, timed stage by stage.
 *
 * No real weights are needed. The bench writes a model folder whose
 * safetensors files have the real checkpoint's headers (every tensor name,
 * dtype and shape, from bench/qwen-image-full.json) but whose data section is
 * a hole (a sparse file: no disk used), and asks the backend to fill every
 * weight with seeded random values as it uploads it. The normal loaders then
 * check every shape and the normal forward passes run at full size on
 * non-zero data. Timings: warm-up runs, then the median of --runs runs, each
 * ended by a device synchronisation (wall clock around synchronised calls of
 * 10 ms and more).
 */
#define _DEFAULT_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "backend/backend.h"
#include "base/types.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/source.h" /* qi_names_text_encoder_to_llamacpp */
#include "model/dit.h"
#include "model/text_encoder.h"
#include "model/vae.h"
#include "engine/engine.h"
#include "serve.h" /* serve_preview_png: the server's step preview, for its cost */
#ifdef QI_WITH_CUDA
#include "backend/cuda/cuda_backend.h" /* qi_cuda_kernel_family: which kernels the rows timed */
#endif

#ifndef QI_BENCH_MANIFEST
#define QI_BENCH_MANIFEST "bench/qwen-image-full.json"
#endif
#ifndef QI_BENCH_TOKENIZER
#define QI_BENCH_TOKENIZER "tests/data/tiny-model/tokenizer"
#endif

/* Configs of the released Qwen/Qwen-Image components (full size). */
static const char *TRANSFORMER_CONFIG =
    "{\"_class_name\": \"QwenImageTransformer2DModel\", \"attention_head_dim\": 128, \"axes_dims_rope\": [16, 56, 56],"
    " \"guidance_embeds\": false, \"in_channels\": 64, \"joint_attention_dim\": 3584, \"num_attention_heads\": 24,"
    " \"num_layers\": 60, \"out_channels\": 16, \"patch_size\": 2}";
static const char *TEXT_ENCODER_CONFIG =
    "{\"architectures\": [\"Qwen2_5_VLForConditionalGeneration\"], \"model_type\": \"qwen2_5_vl\","
    " \"hidden_act\": \"silu\", \"hidden_size\": 3584, \"intermediate_size\": 18944, \"num_attention_heads\": 28,"
    " \"num_hidden_layers\": 28, \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
    " \"rope_scaling\": {\"type\": \"mrope\", \"mrope_section\": [16, 24, 24]}, \"vocab_size\": 152064,"
    " \"tie_word_embeddings\": false, \"image_token_id\": 151655, \"vision_start_token_id\": 151652,"
    " \"vision_end_token_id\": 151653, \"video_token_id\": 151656,"
    " \"vision_config\": {\"depth\": 32, \"hidden_act\": \"silu\", \"hidden_size\": 1280, \"intermediate_size\": 3420,"
    " \"num_heads\": 16, \"in_chans\": 3, \"in_channels\": 3, \"out_hidden_size\": 3584, \"patch_size\": 14,"
    " \"spatial_merge_size\": 2, \"spatial_patch_size\": 14, \"temporal_patch_size\": 2, \"tokens_per_second\": 2,"
    " \"window_size\": 112, \"fullatt_block_indexes\": [7, 15, 23, 31]}}";
static const char *VAE_CONFIG =
    "{\"_class_name\": \"AutoencoderKLQwenImage\", \"attn_scales\": [], \"base_dim\": 96, \"dim_mult\": [1, 2, 4, 4],"
    " \"dropout\": 0.0, \"num_res_blocks\": 2, \"temperal_downsample\": [false, true, true], \"z_dim\": 16,"
    " \"latents_mean\": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,"
    " 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],"
    " \"latents_std\": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,"
    " 1.5579, 1.6382, 1.1253, 2.8251, 1.916]}";
static const char *SCHEDULER_CONFIG =
    "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"base_image_seq_len\": 256, \"base_shift\": 0.5,"
    " \"invert_sigmas\": false, \"max_image_seq_len\": 8192, \"max_shift\": 0.9, \"num_train_timesteps\": 1000,"
    " \"shift\": 1.0, \"shift_terminal\": 0.02, \"stochastic_sampling\": false, \"time_shift_type\": \"exponential\","
    " \"use_beta_sigmas\": false, \"use_dynamic_shifting\": true, \"use_exponential_sigmas\": false,"
    " \"use_karras_sigmas\": false}";
static const char *MODEL_INDEX =
    "{\"_class_name\": \"QwenImagePipeline\", \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"],"
    " \"text_encoder\": [\"transformers\", \"Qwen2_5_VLForConditionalGeneration\"],"
    " \"tokenizer\": [\"transformers\", \"Qwen2Tokenizer\"],"
    " \"transformer\": [\"diffusers\", \"QwenImageTransformer2DModel\"],"
    " \"vae\": [\"diffusers\", \"AutoencoderKLQwenImage\"]}";
/* Qwen/Qwen-Image-Edit-2509's: the same components plus the processor (the
 * engine reads none of its files; `generate` takes this class name as the
 * sign of an Edit model). */
static const char *MODEL_INDEX_EDIT =
    "{\"_class_name\": \"QwenImageEditPlusPipeline\", \"processor\": [\"transformers\", \"Qwen2VLProcessor\"],"
    " \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"],"
    " \"text_encoder\": [\"transformers\", \"Qwen2_5_VLForConditionalGeneration\"],"
    " \"tokenizer\": [\"transformers\", \"Qwen2Tokenizer\"],"
    " \"transformer\": [\"diffusers\", \"QwenImageTransformer2DModel\"],"
    " \"vae\": [\"diffusers\", \"AutoencoderKLQwenImage\"]}";

static int write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    if (qi_path_join(path, sizeof path, dir, name)) return -1;
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* `bench --type`: the transformer's block linears (the 2-D weights under
 * transformer_blocks., 97% of its parameters) are stored as that type, the
 * embedders, norms and output layer as the manifest says — as the GGUF and
 * fp8 files users have keep their first and last layers at higher precision. */
static int quantised_here(const char *name, const cJSON *shape, qi_dtype qt) {
    return qt != QI_BF16 && cJSON_GetArraySize(shape) == 2 && !strncmp(name, "transformer_blocks.", 19);
}

/* A safetensors file with the manifest's header and a sparse data section;
 * qt: the block linears' type (BF16 or F8_E4M3 here). */
static int write_sparse(const char *path, const cJSON *tensors, qi_dtype qt) {
    cJSON *hdr = cJSON_CreateObject();
    int64_t offset = 0;
    for (const cJSON *t = tensors->child; t; t = t->next) {
        const char *dt = cJSON_GetArrayItem(t, 0)->valuestring;
        const cJSON *shape = cJSON_GetArrayItem(t, 1);
        if (quantised_here(t->string, shape, qt)) dt = qi_dtype_name(qt);
        int64_t n = !strcmp(dt, "F32") ? 4 : !strcmp(dt, "F8_E4M3") ? 1 : 2;
        cJSON *e = cJSON_CreateObject(), *sh = cJSON_CreateArray(), *off = cJSON_CreateArray();
        for (const cJSON *d = shape->child; d; d = d->next) {
            n *= (int64_t)d->valuedouble;
            cJSON_AddItemToArray(sh, cJSON_CreateNumber(d->valuedouble));
        }
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(offset + n)));
        cJSON_AddStringToObject(e, "dtype", dt);
        cJSON_AddItemToObject(e, "shape", sh);
        cJSON_AddItemToObject(e, "data_offsets", off);
        cJSON_AddItemToObject(hdr, t->string, e);
        offset += n;
    }
    char *text = cJSON_PrintUnformatted(hdr);
    cJSON_Delete(hdr);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = -1;
    if (fd >= 0) {
        uint64_t hl = padded;
        char *buf = malloc(padded);
        memcpy(buf, text, len);
        memset(buf + len, ' ', padded - len);
        rc = (write(fd, &hl, 8) == 8 && write(fd, buf, padded) == (ssize_t)padded &&
              ftruncate(fd, (off_t)(8 + padded + (size_t)offset)) == 0)
                 ? 0
                 : -1;
        free(buf);
        close(fd);
    }
    free(text);
    return rc;
}

/* GGUF writing helpers: little-endian fields, strings as u64 length + bytes. */
static int put(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }
static int put_u32(FILE *f, uint32_t v) { return put(f, &v, 4); }
static int put_u64(FILE *f, uint64_t v) { return put(f, &v, 8); }
static int put_str(FILE *f, const char *s) { return put_u64(f, strlen(s)) || put(f, s, strlen(s)); }

/* GGUF value types of the header's keys (spec vae-and-formats.md B.7.1). */
enum { GGUF_U32 = 4, GGUF_F32 = 6, GGUF_STRING = 8 };

/* One key/value of a GGUF header: a string, or a number written as u32 / f32. */
typedef struct gguf_kv {
    const char *key;
    uint32_t type;
    const char *str;
    double num;
} gguf_kv;

static int put_kv(FILE *f, const gguf_kv *kv) {
    float f32 = (float)kv->num;
    if (put_str(f, kv->key) || put_u32(f, kv->type)) return -1;
    if (kv->type == GGUF_STRING) return put_str(f, kv->str);
    return kv->type == GGUF_F32 ? put(f, &f32, 4) : put_u32(f, (uint32_t)kv->num);
}

/* How one GGUF stores a manifest tensor: its name there and its type; 0: the
 * tensor is not in that file. qt: the block type asked for. */
typedef int (*gguf_layout)(const char *name, const cJSON *shape, qi_dtype qt, char *stored, size_t cap,
                           qi_dtype *dt);

/* city96's transformer GGUFs: the diffusers names; block linears in qt,
 * other 2-D weights BF16, vectors F32. */
static int transformer_layout(const char *name, const cJSON *shape, qi_dtype qt, char *stored, size_t cap,
                              qi_dtype *dt) {
    *dt = quantised_here(name, shape, qt) ? qt : cJSON_GetArraySize(shape) == 2 ? QI_BF16 : QI_F32;
    return snprintf(stored, cap, "%s", name) < (int)cap;
}

/* llama.cpp's qwen2vl GGUFs (the language model only: the vision tower is
 * its mmproj file): llama.cpp's names; every matrix — the layers' linears,
 * the embedding table, the output layer — in qt, as llama-quantize keeps
 * them; norms and biases F32. */
static int text_encoder_layout(const char *name, const cJSON *shape, qi_dtype qt, char *stored, size_t cap,
                               qi_dtype *dt) {
    *dt = cJSON_GetArraySize(shape) == 2 ? qt : QI_F32;
    return qi_names_text_encoder_to_llamacpp(name, stored, cap);
}

/* A GGUF of the manifest's tensors laid out by `layout`, with a sparse data
 * section: the header and tensor infos are written, the data is a hole. */
static int write_sparse_gguf(const char *path, const cJSON *tensors, qi_dtype qt, gguf_layout layout,
                             const gguf_kv *kv, int n_kv) {
    char stored[256];
    qi_dtype dt;
    uint64_t n = 0;
    for (const cJSON *t = tensors->child; t; t = t->next)
        n += (uint64_t)layout(t->string, cJSON_GetArrayItem(t, 1), qt, stored, sizeof stored, &dt);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int rc = put(f, "GGUF", 4) || put_u32(f, 3) || put_u64(f, n) || put_u64(f, (uint64_t)n_kv);
    for (int i = 0; i < n_kv && !rc; i++) rc = put_kv(f, &kv[i]);
    uint64_t offset = 0;
    for (const cJSON *t = tensors->child; t && !rc; t = t->next) {
        const cJSON *shape = cJSON_GetArrayItem(t, 1);
        if (!layout(t->string, shape, qt, stored, sizeof stored, &dt)) continue;
        int nd = cJSON_GetArraySize(shape);
        int64_t ne[4] = {1, 1, 1, 1}, rows = 1;
        for (int d = 0; d < nd && d < 4; d++) ne[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        for (int d = 0; d < nd - 1; d++) rows *= ne[d];
        rc |= put_str(f, stored) || put_u32(f, (uint32_t)nd);
        for (int d = nd - 1; d >= 0; d--) rc |= put_u64(f, (uint64_t)ne[d]); /* GGUF: innermost first */
        rc |= put_u32(f, (uint32_t)qi_type_traits(dt)->ggml_type) || put_u64(f, offset);
        offset += ((uint64_t)(rows * qi_row_bytes(dt, ne[nd - 1])) + 31) & ~(uint64_t)31;
    }
    long here = ftell(f);
    long data = (here + 31) & ~31L;
    for (long i = here; i < data && !rc; i++) rc |= put(f, "", 1);
    rc |= fflush(f) != 0 || ftruncate(fileno(f), (off_t)(data + (long)offset)) != 0;
    return (fclose(f) != 0 || rc) ? -1 : 0;
}

/* The transformer as a city96-style GGUF. */
static int write_transformer_gguf(const char *path, const cJSON *tensors, qi_dtype qt) {
    const gguf_kv kv[] = {{"general.architecture", GGUF_STRING, "qwen_image", 0}};
    return write_sparse_gguf(path, tensors, qt, transformer_layout, kv, (int)QI_ARRAY_LEN(kv));
}

/* The text encoder as llama.cpp's converter writes Qwen2.5-VL-7B's language
 * model: architecture qwen2vl and the hyperparameters the loader reads
 * without a config.json (text_encoder.c config_of_gguf), taken from
 * TEXT_ENCODER_CONFIG so the two cannot disagree. */
static int write_text_encoder_gguf(const char *path, const cJSON *tensors, qi_dtype qt) {
    static const struct {
        const char *gguf, *config;
        uint32_t type;
    } keys[] = {
        {"qwen2vl.block_count", "num_hidden_layers", GGUF_U32},
        {"qwen2vl.embedding_length", "hidden_size", GGUF_U32},
        {"qwen2vl.feed_forward_length", "intermediate_size", GGUF_U32},
        {"qwen2vl.attention.head_count", "num_attention_heads", GGUF_U32},
        {"qwen2vl.attention.head_count_kv", "num_key_value_heads", GGUF_U32},
        {"qwen2vl.attention.layer_norm_rms_epsilon", "rms_norm_eps", GGUF_F32},
        {"qwen2vl.rope.freq_base", "rope_theta", GGUF_F32},
    };
    gguf_kv kv[1 + QI_ARRAY_LEN(keys)] = {{"general.architecture", GGUF_STRING, "qwen2vl", 0}};
    cJSON *config = cJSON_Parse(TEXT_ENCODER_CONFIG);
    for (size_t i = 0; i < QI_ARRAY_LEN(keys); i++)
        kv[1 + i] = (gguf_kv){keys[i].gguf, keys[i].type, NULL,
                              cJSON_GetNumberValue(cJSON_GetObjectItem(config, keys[i].config))};
    cJSON_Delete(config);
    return write_sparse_gguf(path, tensors, qt, text_encoder_layout, kv, (int)QI_ARRAY_LEN(kv));
}

/* The synthetic folder at root; qt: the transformer's block linears (a GGUF
 * type: also transformer.gguf), te: the text encoder's matrices (a GGUF type:
 * also text_encoder.gguf; the folder's bf16 safetensors stay beside it). */
static int make_model_dir(const char *root, const char *manifest_path, const char *tokenizer_dir, qi_dtype qt,
                          qi_dtype te, int edit, qi_error *err) {
    cJSON *m = NULL;
    if (qi_json_load(manifest_path, &m, err)) return -1;
    char p[4096];
    const char *parts[3][3] = {{"transformer", "diffusion_pytorch_model.safetensors", "transformer"},
                               {"text_encoder", "model.safetensors", "text_encoder"},
                               {"vae", "diffusion_pytorch_model.safetensors", "vae"}};
    const char *configs[3] = {TRANSFORMER_CONFIG, TEXT_ENCODER_CONFIG, VAE_CONFIG};
    int rc = write_text(root, "model_index.json", edit ? MODEL_INDEX_EDIT : MODEL_INDEX);
    for (int i = 0; !rc && i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", root, parts[i][0]);
        mkdir(p, 0755);
        rc = write_text(p, "config.json", configs[i]);
        snprintf(p, sizeof p, "%s/%s/%s", root, parts[i][0], parts[i][1]);
        const cJSON *tensors = cJSON_GetObjectItem(m, parts[i][2]);
        if (!rc) rc = tensors ? write_sparse(p, tensors, i == 0 && !qi_dtype_is_block(qt) ? qt : QI_BF16) : -1;
        if (!rc && i == 0 && qi_dtype_is_block(qt)) {
            snprintf(p, sizeof p, "%s/transformer.gguf", root);
            rc = write_transformer_gguf(p, tensors, qt);
        }
        if (!rc && i == 1 && qi_dtype_is_block(te)) {
            snprintf(p, sizeof p, "%s/text_encoder.gguf", root);
            rc = write_text_encoder_gguf(p, tensors, te);
        }
    }
    snprintf(p, sizeof p, "%s/scheduler", root);
    mkdir(p, 0755);
    if (!rc) rc = write_text(p, "scheduler_config.json", SCHEDULER_CONFIG);
    snprintf(p, sizeof p, "%s/tokenizer", root);
    char abs_tok[4096];
    if (!rc && (!realpath(tokenizer_dir, abs_tok) || symlink(abs_tok, p))) rc = -1;
    cJSON_Delete(m);
    if (rc) qi_fail(err, QI_ERR_IO, "bench: cannot write the synthetic model folder %s", root);
    return rc;
}

/* Removes the synthetic model folder (files one level down, the tokenizer link). */
static void remove_tree(const char *root) {
    const char *files[] = {"transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                           "text_encoder/config.json", "text_encoder/model.safetensors", "vae/config.json",
                           "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                           "tokenizer", "model_index.json", "transformer.gguf", "text_encoder.gguf", "transformer",
                           "text_encoder", "vae", "scheduler", ""};
    char p[4096];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (qi_path_join(p, sizeof p, root, files[i])) continue;
        if (remove(p) != 0 && files[i][0]) rmdir(p);
    }
}

/* Drops an unfinished -o table (no file is left behind on failure). */
static void abandon_table(FILE *md, const char *out_path) {
    if (!md) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    fclose(md);
    remove(tmp);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double qi_bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void fill_random(float *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

typedef struct bench_ctx {
    qi_engine *e;
    qi_backend *be;
    int warmup, runs;
    const char *te_file; /* what the text encoder's weights are, for its row */
    FILE *md; /* markdown rows */
    double pinned_peak, pageable_peak; /* the link measured with plain cudaMemcpy at start, GB/s; <= 0: not */
} bench_ctx;

void qi_bench_vrow(FILE *md, const char *fmt, va_list ap) {
    va_list again;
    va_copy(again, ap);
    vprintf(fmt, ap);
    if (md) vfprintf(md, fmt, again);
    va_end(again);
}

void qi_bench_row(FILE *md, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qi_bench_vrow(md, fmt, ap);
    va_end(ap);
}

/* A table row: on stdout, and into the -o file when one was asked for. */
static void emit(bench_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(bench_ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qi_bench_vrow(c->md, fmt, ap);
    va_end(ap);
}

/* Bytes staged into slots since the backend was made, and of them through the
 * bounce ring (weights past the pinned budget); 0, 0 off CUDA. */
static void staged_split(bench_ctx *c, double *all, double *bounced) {
    *all = *bounced = 0;
#ifdef QI_WITH_CUDA
    if (strcmp(c->be->ops->name, "cuda")) return;
    qi_cuda_host h;
    qi_cuda_host_info(c->be, &h);
    *all = (double)(h.staged_pinned + h.staged_bounced);
    *bounced = (double)h.staged_bounced;
#else
    (void)c;
#endif
}

/* The link's peak, pinned and pageable (plain cudaMemcpy of 64 MiB), and where
 * the streamed weights' host copies are: rows of the --vram table. */
static void link_rows(bench_ctx *c) {
#ifdef QI_WITH_CUDA
    if (strcmp(c->be->ops->name, "cuda")) return;
    qi_error err = {{0}};
    if (qi_cuda_link_peak(c->be, (size_t)64 << 20, c->runs, &c->pinned_peak, &c->pageable_peak, &err)) {
        fprintf(stderr, "link: %s\n", err.msg);
        return;
    }
    emit(c, "| host→device cudaMemcpy, pinned | 64 MiB | %.1f GB/s | the link's peak |\n", c->pinned_peak);
    emit(c, "| host→device cudaMemcpy, pageable | 64 MiB | %.1f GB/s | the driver's own staging |\n",
         c->pageable_peak);
    qi_cuda_host h;
    qi_cuda_host_info(c->be, &h);
    emit(c, "| host memory of streamed weights | | %.2f GiB pinned, %.2f GiB ordinary | pinned budget %.2f GiB "
         "(--pinned / QI_PINNED_MAX; default half the RAM) |\n", h.pinned_held / 1073741824.0,
         h.pageable_held / 1073741824.0, h.pinned_max / 1073741824.0);
#else
    (void)c;
#endif
}

/* The -o file is written beside its final name and renamed at the end, so an
 * interrupted bench leaves no half table. */
static int finish_table(bench_ctx *c, const char *out_path) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    int bad = fclose(c->md) != 0;
    c->md = NULL;
    if (bad || rename(tmp, out_path) != 0) {
        fprintf(stderr, "qwen-image: error: bench: cannot write %s\n", out_path);
        remove(tmp);
        return -1;
    }
    fprintf(stderr, "qwen-image: wrote %s\n", out_path);
    return 0;
}


/* Median time of one transformer call replayed as a recorded graph (the
 * pipeline's per-step path): the call's inputs prepared once, the ops run once
 * eagerly, recorded, then replayed. *ms_out < 0 when the backend has no graphs. */
static int bench_dit_graph(bench_ctx *c, qi_dit *dit, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *out,
                           int gh, int gw, double *ms_out, qi_error *err) {
    qi_backend *be = c->be;
    *ms_out = -1;
    if (!be->ops->graph_begin || !be->ops->persistent || qi_dit_streams(dit)) return 0; /* streaming runs eagerly */
    qi_dit_call *call = NULL;
    qi_graph *g = NULL;
    float t = 0.9f;
    double times[64];
    int rc = -1;
    if (qi_dit_call_create(dit, 1, gh, gw, (int)ctx->ne[1], &call, err) || qi_dit_call_set_text_mask(call, NULL, err) ||
        qi_dit_call_set_timestep(call, &t, err) || qi_dit_call_run(call, x, ctx, out, err) || be->ops->sync(be, err))
        goto done;
    if (be->ops->graph_begin(be, err)) goto done;
    qi_status st = qi_dit_call_run(call, x, ctx, out, err);
    qi_error end_err;
    qi_status end_st = be->ops->graph_end(be, &g, &end_err);
    if (st || end_st) {
        if (!st) *err = end_err;
        goto done;
    }
    for (int i = 0; i < c->warmup + c->runs; i++) {
        double t0 = qi_now_s();
        if (be->ops->graph_launch(be, g, err) || be->ops->sync(be, err)) goto done;
        if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
    }
    *ms_out = qi_bench_median(times, c->runs) * 1e3;
    rc = 0;
done:
    if (g) be->ops->graph_free(be, g);
    qi_dit_call_free(call);
    return rc;
}

/* The runs of one transformer call as the denoising loop makes them under a
 * streaming plan: the call given an 8-step schedule (every step's modulation
 * computed once, its matrices streamed once), then run per step, eagerly.
 * times[0..runs): each timed run; *staged_gb: GB copied into slots per run. */
static int bench_dit_scheduled(bench_ctx *c, qi_dit *dit, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *out,
                               int gh, int gw, double *times, double *staged_gb, qi_error *err) {
    qi_backend *be = c->be;
    float t_all[8] = {0.99f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f};
    qi_dit_call *call = NULL;
    uint64_t staged0 = 0;
    int rc = -1;
    if (qi_dit_call_create(dit, 1, gh, gw, (int)ctx->ne[1], &call, err) || qi_dit_call_set_text_mask(call, NULL, err) ||
        qi_dit_call_set_schedule(call, t_all, 8, err) || qi_dit_call_select_step(call, 0, err))
        goto done;
    for (int i = 0; i < c->warmup + c->runs; i++) {
        if (i == c->warmup) staged0 = qi_dit_staged_bytes(dit);
        double t0 = qi_now_s();
        if (qi_dit_call_select_step(call, i % 8, err) || qi_dit_call_run(call, x, ctx, out, err) ||
            be->ops->sync(be, err))
            goto done;
        if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
    }
    *staged_gb = (double)(qi_dit_staged_bytes(dit) - staged0) / c->runs / 1e9;
    rc = 0;
done:
    qi_dit_call_free(call);
    return rc;
}

/* Median time of one transformer call at width×height with txt_len text tokens
 * (qi_dit_forward, eager), and replayed as a graph (*graph_ms, < 0 if none). */
static int bench_dit(bench_ctx *c, int width, int height, int txt_len, double *ms_out, double *tflops_out,
                     double *graph_ms, double *staged_gb, qi_error *err) {
    qi_dit *dit;
    if (qi_engine_dit(c->e, &dit)) return -1;
    qi_backend *be = c->be;
    int gh = height / 16, gw = width / 16, L = gh * gw, D = 3584;
    size_t mark = be->ops->mark(be);
    qi_tensor x, ctx, out;
    float *host = malloc(sizeof(float) * (size_t)txt_len * D > sizeof(float) * (size_t)L * 64
                             ? sizeof(float) * (size_t)txt_len * D
                             : sizeof(float) * (size_t)L * 64);
    int rc = -1;
    if (qi_be_act3(be, &x, 1, L, 64, err) || qi_be_act3(be, &ctx, 1, txt_len, D, err) ||
        qi_be_act3(be, &out, 1, L, 64, err))
        goto done;
    fill_random(host, (size_t)L * 64, 1);
    if (be->ops->upload(be, &x, host, err)) goto done;
    fill_random(host, (size_t)txt_len * D, 2);
    if (be->ops->upload(be, &ctx, host, err)) goto done;
    double times[64];
    float t = 0.9f;
    if (qi_dit_streams(dit)) { /* the pipeline's call: modulation once per schedule, blocks per call */
        if (bench_dit_scheduled(c, dit, &x, &ctx, &out, gh, gw, times, staged_gb, err)) goto done;
    } else {
        for (int i = 0; i < c->warmup + c->runs; i++) {
            double t0 = qi_now_s();
            if (qi_dit_forward(dit, &x, &ctx, NULL, &t, gh, gw, &out, err) || be->ops->sync(be, err)) goto done;
            if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
        }
    }
    double med = qi_bench_median(times, c->runs);
    *ms_out = med * 1e3;
    *tflops_out = qi_dit_forward_flops(qi_dit_get_config(dit), 1, L, txt_len) / med / 1e12;
    rc = bench_dit_graph(c, dit, &x, &ctx, &out, gh, gw, graph_ms, err);
done:
    free(host);
    be->ops->reset(be, mark);
    return rc;
}

/* The per-step latents check of denoise.c (count_nonfinite on [1, L, 64]):
 * median ms of one call, reduction and copy back included. -1 when the
 * backend has no such op. */
static int bench_finite_check(bench_ctx *c, int width, int height, double *ms, qi_error *err) {
    qi_backend *be = c->be;
    *ms = -1;
    if (!be->ops->count_nonfinite) return 0;
    int64_t L = (int64_t)(height / 16) * (width / 16);
    size_t mark = be->ops->mark(be);
    qi_tensor x;
    float *host = malloc(sizeof(float) * (size_t)L * 64);
    int rc = -1;
    if (!host || qi_be_act3(be, &x, 1, L, 64, err)) goto done;
    fill_random(host, (size_t)L * 64, 3);
    if (be->ops->upload(be, &x, host, err) || be->ops->sync(be, err)) goto done;
    double times[64];
    int n = c->warmup + c->runs > 64 ? 64 : c->warmup + c->runs;
    for (int i = 0; i < n; i++) {
        int64_t bad;
        double t0 = qi_now_s();
        if (be->ops->count_nonfinite(be, &x, &bad, err)) goto done;
        times[i] = qi_now_s() - t0;
    }
    *ms = qi_bench_median(times + (n > c->warmup ? c->warmup : 0), n > c->warmup ? n - c->warmup : n) * 1e3;
    rc = 0;
done:
    free(host);
    be->ops->reset(be, mark);
    return rc;
}

/* cuBLAS ceiling: one M=N=K=8192 product through the backend's linear. */
static int bench_gemm_ceiling(bench_ctx *c, double *tflops, qi_error *err) {
    qi_backend *be = c->be;
    const int64_t n = 8192;
    size_t mark = be->ops->mark(be);
    qi_tensor x, y, w;
    int64_t wne[2] = {n, n};
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)(n * n));
    float *xh = malloc(sizeof(float) * (size_t)(n * n));
    fill_random(xh, (size_t)(n * n), 3);
    for (int64_t i = 0; i < n * n; i++) wh[i] = qi_f32_to_bf16(xh[i] * 0.01f);
    int rc = -1;
    if (qi_be_act2(be, &x, n, n, err) || qi_be_act2(be, &y, n, n, err) || be->ops->upload(be, &x, xh, err) ||
        be->ops->weight(be, &w, QI_BF16, 2, wne, wh, NULL, err))
        goto done;
    double times[64];
    for (int i = 0; i < c->warmup + c->runs; i++) {
        double t0 = qi_now_s();
        be->ops->linear(be, &x, &w, NULL, QI_ACT_NONE, &y);
        if (be->ops->sync(be, err)) goto done;
        if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
    }
    *tflops = 2.0 * n * n * n / qi_bench_median(times, c->runs) / 1e12;
    be->ops->weight_free(be, &w);
    rc = 0;
done:
    free(wh);
    free(xh);
    be->ops->reset(be, mark);
    return rc;
}

static int bench_text_encoder(bench_ctx *c, int n_ids, double *ms, qi_error *err) {
    qi_text_encoder *te = qi_engine_text_encoder(c->e);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_ids), *mask = malloc(sizeof(int32_t) * (size_t)n_ids);
    for (int i = 0; i < n_ids; i++) {
        ids[i] = (int32_t)((i * 7919) % 151000);
        mask[i] = 1;
    }
    double times[64];
    int rc = -1;
    for (int i = 0; i < c->warmup + c->runs; i++) {
        float *emb = NULL;
        int32_t *em = NULL;
        int L;
        double t0 = qi_now_s();
        qi_status st = qi_text_encoder_encode(te, ids, mask, 1, n_ids, 1024, &emb, &em, &L, err);
        double dt = qi_now_s() - t0;
        free(emb);
        free(em);
        if (st) goto done;
        if (i >= c->warmup) times[i - c->warmup] = dt;
    }
    *ms = qi_bench_median(times, c->runs) * 1e3;
    rc = 0;
done:
    free(ids);
    free(mask);
    return rc;
}

/* Median VAE decode of random latents: to float32 pixels as diffusers'
 * vae.decode returns them (u8 0), or to the 8-bit pixels the engine's decode
 * stage makes (u8 1: qi_vae_decode_u8, converted on the device where the
 * backend can). */
static int bench_vae(bench_ctx *c, int width, int height, int u8, double *ms, qi_error *err) {
    qi_vae *vae = qi_engine_vae(c->e);
    int lh = height / 8, lw = width / 8;
    float *lat = malloc(sizeof(float) * 16 * (size_t)lh * lw), *rgb = malloc(sizeof(float) * 3 * (size_t)width * height);
    fill_random(lat, 16 * (size_t)lh * lw, 4);
    double times[64];
    int rc = -1;
    for (int i = 0; i < c->warmup + c->runs; i++) {
        double t0 = qi_now_s();
        int64_t bad = 0;
        if (u8 ? qi_vae_decode_u8(vae, lat, lh, lw, (uint8_t *)rgb, &bad, err) : qi_vae_decode(vae, lat, lh, lw, rgb, err))
            goto done;
        if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
    }
    *ms = qi_bench_median(times, c->runs) * 1e3;
    rc = 0;
done:
    free(lat);
    free(rgb);
    return rc;
}

/* Host -> device through the streamed-weight path: a 64 MiB pinned host
 * weight staged into a slot, median GB/s of --runs copies (the link's peak
 * for the --vram rows). -1 when the backend cannot stream. */
static int bench_link(bench_ctx *c, double *gbps, int *bounced, qi_error *err) {
    qi_backend *be = c->be;
    *gbps = -1;
    if (!be->ops->stage) return 0;
    int64_t ne[2] = {4096, 8192}; /* bf16: 64 MiB */
    uint16_t *host = calloc((size_t)(ne[0] * ne[1]), sizeof *host);
    qi_tensor w = {0}, view;
    qi_slot *slot = NULL;
    double times[64];
    int rc = -1;
    if (!host || be->ops->weight_host(be, &w, QI_BF16, 2, ne, host, NULL, err) ||
        be->ops->slot_new(be, qi_nbytes(&w), &slot, err))
        goto done;
    double all0, b0, all1, b1;
    staged_split(c, &all0, &b0);
    for (int i = 0; i < c->warmup + c->runs; i++) {
        double t0 = qi_now_s();
        if (be->ops->stage(be, slot, &w, &view, 1, err)) goto done;
        be->ops->stage_wait(be, slot);
        if (be->ops->sync(be, err)) goto done;
        if (i >= c->warmup) times[i - c->warmup] = qi_now_s() - t0;
    }
    *gbps = (double)qi_nbytes(&w) / qi_bench_median(times, c->runs) / 1e9;
    staged_split(c, &all1, &b1);
    *bounced = b1 > b0; /* the pinned budget was spent: this weight went to ordinary memory */
    rc = 0;
done:
    if (slot) be->ops->slot_free(be, slot);
    if (w.data) be->ops->weight_free(be, &w);
    free(host);
    return rc;
}

/* What the server does with each step's latents when a client streams
 * previews: map them to RGB and encode a PNG (a fixed map: the cost does not
 * depend on its numbers). */
static void preview_like_the_server(void *user, int step, int total, const qi_image *lat) {
    (void)step, (void)total;
    preview_map m = {.fitted = 1};
    for (int ch = 0; ch < 3; ch++) {
        m.b[ch] = 128.0f;
        for (int k = 0; k < 16; k++) m.w[ch][k] = (float)((ch + k) % 5) - 2.0f;
    }
    uint8_t *png = NULL;
    size_t len = 0;
    if (!serve_preview_png(&m, lat, &png, &len)) *(size_t *)user += len;
    qi_free_bytes(png);
}

/* Median prompt -> RGB8 time; graphs 0 runs the denoising steps eagerly
 * (QI_CUDA_GRAPHS=0 for these runs), 1 replays the recorded step; previews:
 * a step preview made as the server makes it, after every step. */
/* The decode stage of bench_e2e's runs: the median of the engine's vae_s, and
 * the last run's split (engine.h decode_split). */
typedef struct e2e_decode {
    double stage_ms, prepare_ms, vae_ms;
    int on_device;
} e2e_decode;

static int bench_e2e(bench_ctx *c, int steps, int graphs, int previews, double *s_out, e2e_decode *dec,
                     qi_error *err) {
    const char *env = getenv("QI_CUDA_GRAPHS");
    char saved[32] = "";
    if (env) snprintf(saved, sizeof saved, "%s", env);
    setenv("QI_CUDA_GRAPHS", graphs ? "1" : "0", 1);
    qi_request r = qi_request_default();
    /* a new prompt each run (of the same token count): the engine's prompt cache is on (bench_repeat) */
    char prompt[256];
    r.prompt = prompt;
    r.steps = steps;
    r.cfg = 1.0f;
    r.scheduler = "lightning";
    size_t preview_bytes = 0;
    if (previews) r.step_latents = preview_like_the_server, r.step_latents_user = &preview_bytes;
    double times[64], vae_times[64];
    int runs = c->runs < 5 ? c->runs : 5, failed = 0;
    for (int i = 0; i < 1 + runs; i++) {
        static unsigned serial;
        snprintf(prompt, sizeof prompt, "A capybara wearing a suit holding a sign that reads Hello %c, in a sunlit "
                 "library, photorealistic, 35mm, shallow depth of field.", 'A' + serial++ % 26);
        qi_image img;
        double t0 = qi_now_s();
        qi_status st = qi_generate(c->e, &r, &img);
        double dt = qi_now_s() - t0;
        if (st) {
            qi_fail(err, QI_ERR_BACKEND, "%s", qi_engine_error(c->e));
            failed = 1;
            break;
        }
        qi_image_free(&img);
        if (i >= 1) times[i - 1] = dt, vae_times[i - 1] = qi_engine_timings(c->e)->vae_s;
    }
    if (env) setenv("QI_CUDA_GRAPHS", saved, 1);
    else unsetenv("QI_CUDA_GRAPHS");
    if (failed) return -1;
    *s_out = qi_bench_median(times, runs);
    if (dec)
        *dec = (e2e_decode){.stage_ms = qi_bench_median(vae_times, runs) * 1e3,
                            .prepare_ms = c->e->decode_split.prepare_s * 1e3,
                            .vae_ms = c->e->decode_split.vae_s * 1e3, .on_device = c->e->decode_split.on_device};
    return 0;
}

/* The prompt cache (issue 13 item 4): one prompt twice, the second time its
 * text stage comes from the cache. */
static int bench_repeat(bench_ctx *c, double *first_s, double *again_s, double *text_s, int *cached, qi_error *err) {
    qi_request r = qi_request_default();
    r.prompt = "A prompt the bench asks twice: a lighthouse on a cliff at dusk, oil painting.";
    r.steps = 8;
    r.cfg = 1.0f;
    r.scheduler = "lightning";
    for (int i = 0; i < 2; i++) {
        qi_image img;
        double t0 = qi_now_s();
        if (qi_generate(c->e, &r, &img)) return qi_fail(err, QI_ERR_BACKEND, "%s", qi_engine_error(c->e)), -1;
        *(i ? again_s : first_s) = qi_now_s() - t0;
        if (!i) *text_s = qi_engine_timings(c->e)->text_s;
        else *cached = qi_engine_timings(c->e)->text_cached;
        qi_image_free(&img);
    }
    return 0;
}

/* ---- loading: real-layout safetensors -> device weights ---------------------------- */

/* Loads every tensor of the file at `path` as a weight of `be`, synchronised;
 * returns the seconds it took (open + map + upload), or < 0 with err set. */
static double load_file(qi_backend *be, const char *path, qi_error *err) {
    double t0 = qi_now_s();
    qi_st_file *f = NULL;
    if (qi_st_open(path, &f, err)) return -1;
    qi_tensor *w = calloc((size_t)f->n_tensors, sizeof *w);
    int made = 0;
    qi_status st = w ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "bench: out of memory");
    for (; st == QI_OK && made < f->n_tensors; made++) {
        const qi_st_tensor *t = &f->tensors[made];
        st = be->ops->weight(be, &w[made], t->dtype, t->ndim, t->shape, t->data, NULL, err);
        if (st) break;
    }
    if (st == QI_OK) st = be->ops->sync(be, err);
    double dt = qi_now_s() - t0;
    for (int i = 0; i < made; i++) be->ops->weight_free(be, &w[i]);
    free(w);
    qi_st_close(f);
    return st == QI_OK ? dt : -1;
}

/* `bench --load GB`: writes a safetensors file of GB gigabytes of random bf16
 * matrices (64 MiB each, the transformer's layout: many large 2-D tensors)
 * into /tmp, then loads it onto the device twice with one staging thread and
 * twice with the default (both from the page cache: the file was just
 * written). Prints GB/s. */
static int bench_load(const char *device, double gb) {
    qi_error err = {{0}};
    int dev = 0;
    if (!strncmp(device, "cuda:", 5)) dev = atoi(device + 5);
    int n = (int)(gb * 16.0 + 0.5); /* 64 MiB tensors */
    if (n < 1) n = 1;
    const int64_t rows = 8192, cols = 4096;
    size_t bytes = (size_t)(rows * cols) * 2;
    enum { DISTINCT = 4 };
    uint16_t *data[DISTINCT] = {0};
    qi_st_write_item *items = calloc((size_t)n, sizeof *items);
    char (*names)[32] = calloc((size_t)n, sizeof *names);
    char path[] = "/tmp/qi_load_XXXXXX";
    int fd = mkstemp(path), rc = 1;
    if (fd < 0 || !items || !names) {
        fprintf(stderr, "bench: cannot create %s or out of memory\n", path);
        goto done;
    }
    close(fd);
    uint32_t r = 0x9e3779b9u;
    for (int d = 0; d < DISTINCT; d++) {
        if (!(data[d] = malloc(bytes))) goto done;
        for (size_t i = 0; i < bytes / 2; i++) { /* bf16 of ±[2^-7, 2^-6): sign, fixed exponent, random mantissa */
            r ^= r << 13, r ^= r >> 17, r ^= r << 5;
            data[d][i] = (uint16_t)((r & 0x8000u) | 0x3C00u | (r & 0x7Fu));
        }
    }
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "blocks.%d.weight", i);
        items[i] = (qi_st_write_item){.name = names[i], .dtype = QI_BF16, .ndim = 2, .shape = {rows, cols},
                                      .data = data[i % DISTINCT]};
    }
    double t0 = qi_now_s();
    if (qi_st_write(path, items, n, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        goto done;
    }
    double total = (double)bytes * n / 1e9;
    printf("bench --load: wrote %s, %d bf16 tensors [%lld, %lld], %.2f GB, in %.1f s\n", path, n, (long long)rows,
           (long long)cols, total, qi_now_s() - t0);
    printf("| load (page cache -> device) | staging threads | run 1 | run 2 |\n|---|---|---|---|\n");
    const char *threads[2] = {"1", NULL}; /* NULL: the backend's default */
    for (int k = 0; k < 2; k++) {
        if (threads[k]) setenv("QI_CUDA_LOAD_THREADS", threads[k], 1);
        else unsetenv("QI_CUDA_LOAD_THREADS");
        qi_backend *be = NULL;
        if (qi_backend_cuda_create(dev, (size_t)256 << 20, &be, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            goto done;
        }
        double s1 = load_file(be, path, &err), s2 = s1 >= 0 ? load_file(be, path, &err) : -1;
        be->ops->destroy(be);
        if (s1 < 0 || s2 < 0) {
            fprintf(stderr, "bench: %s\n", err.msg);
            goto done;
        }
        printf("| %.2f GB in %d tensors | %s | %.2f s = %.1f GB/s | %.2f s = %.1f GB/s |\n", total, n,
               threads[k] ? threads[k] : "default", s1, total / s1, s2, total / s2);
    }
    rc = 0;
done:
    remove(path);
    for (int d = 0; d < DISTINCT; d++) free(data[d]);
    free(items);
    free(names);
    return rc;
}

static int server_rows(bench_ctx *c, int graphs_ok);

/* The text-to-image rows (--only picks some): GEMM ceiling or the --vram plan
 * and link, transformer calls, text encoder, VAE decode, end to end. 1 if any failed. */
static int t2i_rows(bench_ctx *c, qi_dit *dit, const char *only, size_t vram, const char *vram_s) {
    int fail = 0;
    qi_error err = {{0}};
    double ceiling = 0, link = -1;
    if (vram) { /* the plan, and the link its streamed weights cross */
        char line[640] = "no plan";
        if (c->e->planned) qi_residency_plan_describe(&c->e->sizes, &c->e->plan, line, sizeof line);
        emit(c, "| memory plan | --vram %s | | %s |\n", vram_s, line);
        int bounced = 0;
        link_rows(c);
        if (bench_link(c, &link, &bounced, &err)) fail = 1, fprintf(stderr, "link: %s\n", err.msg);
        else if (link > 0) emit(c, "| host→device, one stage (%s) | 64 MiB | %.1f GB/s | the streamed path |\n",
                                bounced ? "ordinary memory, through the bounce ring" : "pinned", link);
        if (c->pinned_peak > 0) link = c->pinned_peak; /* the rows below compare against the link itself */
    } else if (!bench_gemm_ceiling(c, &ceiling, &err)) { /* its 0.4 GiB of buffers are not in a plan */
        emit(c, "| GEMM ceiling (linear op) | 8192×8192×8192 bf16 | | %.0f TFLOP/s |\n", ceiling);
    } else fail = 1, fprintf(stderr, "gemm: %s\n", err.msg);
    if (!only || !strcmp(only, "dit")) {
        int sizes[3][2] = {{1024, 1024}, {1328, 1328}, {512, 512}};
        for (int i = 0; i < (vram ? 1 : 3); i++) {
            double ms, tf, graph_ms, staged_gb = 0, all0, b0, all1, b1;
            staged_split(c, &all0, &b0);
            if (bench_dit(c, sizes[i][0], sizes[i][1], 128, &ms, &tf, &graph_ms, &staged_gb, &err)) {
                fprintf(stderr, "dit: %s\n", err.msg);
                fail = 1;
                continue;
            }
            emit(c, "| transformer call | %dx%d, txt 128 | %.1f ms | %.0f TFLOP/s (%.0f%% of ceiling) |\n", sizes[i][0],
                   sizes[i][1], ms, tf, ceiling > 0 ? 100 * tf / ceiling : 0);
            staged_split(c, &all1, &b1);
            double bounce_share = all1 > all0 ? (b1 - b0) / (all1 - all0) : 0;
            if (vram)
                emit(c, "| transformer call, --vram %s | %dx%d, txt 128 | %.1f ms | %.2f GB host→device per call "
                       "(%.0f%% through the bounce ring): %.1f GB/s (%.0f%% of the pinned cudaMemcpy peak %.1f GB/s; "
                       "pageable peak %.1f); %d of %d blocks resident, eager |\n", vram_s,
                       sizes[i][0], sizes[i][1], ms, staged_gb, 100 * bounce_share, staged_gb / (ms / 1e3),
                       link > 0 ? 100 * staged_gb / (ms / 1e3) / link : 0, link, c->pageable_peak,
                       c->e->planned ? c->e->plan.resident_blocks : 0, qi_dit_get_config(dit)->num_layers);
            if (graph_ms >= 0)
                emit(c, "| transformer call, graph replay | %dx%d, txt 128 | %.1f ms | %.0f TFLOP/s; eager/graph "
                       "%.3f× |\n", sizes[i][0], sizes[i][1], graph_ms, tf * ms / graph_ms, ms / graph_ms);
            double fin_ms;
            if (bench_finite_check(c, sizes[i][0], sizes[i][1], &fin_ms, &err)) {
                fprintf(stderr, "finite check: %s\n", err.msg);
                fail = 1;
            } else if (fin_ms >= 0) {
                emit(c, "| latents finite check (per step) | %dx%d | %.3f ms | %.3f%% of one transformer call |\n",
                     sizes[i][0], sizes[i][1], fin_ms, 100 * fin_ms / ms);
            }
        }
    }
    if (vram && only && (!strcmp(only, "te") || !strcmp(only, "vae")))
        fprintf(stderr, "bench: --only %s is not timed under --vram (the plan frees and streams components)\n", only);
    if (!vram && (!only || !strcmp(only, "te"))) {
        double ms;
        if (!bench_text_encoder(c, 167, &ms, &err))
            emit(c, "| text encoder | 167 tokens | %.1f ms | %s |\n", ms, c->te_file);
        else fail = 1, fprintf(stderr, "te: %s\n", err.msg);
    }
    if (!vram && (!only || !strcmp(only, "vae"))) {
        double ms;
        if (!bench_vae(c, 1024, 1024, 0, &ms, &err)) emit(c, "| VAE decode | 1024x1024 | %.1f ms | |\n", ms);
        else fail = 1, fprintf(stderr, "vae: %s\n", err.msg);
        if (!bench_vae(c, 1024, 1024, 1, &ms, &err))
            emit(c, "| VAE decode → RGB8 | 1024x1024 | %.1f ms | what the decode stage runs (qi_vae_decode_u8: "
                    "%s) |\n", ms, c->be->ops->download_rgb8 ? "pixels made on the device" : "pixels made on the host");
        else fail = 1, fprintf(stderr, "vae u8: %s\n", err.msg);
    }
    if (!only || !strcmp(only, "e2e")) {
        /* with and without the recorded step, in this one process (QI_CUDA_GRAPHS=0: without only) */
        const char *env = getenv("QI_CUDA_GRAPHS");
        int graphs_ok = c->be->ops->graph_begin && !(env && !strcmp(env, "0")) && !qi_dit_streams(dit);
        int steps[2] = {8, 4};
        for (int i = 0; i < 2; i++) {
            double s[2] = {-1, -1}; /* eager, graph */
            for (int g = graphs_ok ? 1 : 0; g >= 0; g--) {
                e2e_decode d;
                if (bench_e2e(c, steps[i], g, 0, &s[g], &d, &err)) {
                    fail = 1, fprintf(stderr, "e2e: %s\n", err.msg);
                    continue;
                }
                emit(c, "| end to end%s%s | 1024x1024, %d steps, cfg 1 | %.3f s | prompt → RGB8 in memory; %s; decode "
                        "stage %.1f ms (last run: unpack + de-normalise %.2f ms, VAE → RGB8 %.1f ms, pixels made on "
                        "the %s) |\n",
                       vram ? ", --vram " : "", vram ? vram_s : "", steps[i], s[g],
                       g ? "denoising step as a CUDA graph" : "eager steps (QI_CUDA_GRAPHS=0)", d.stage_ms,
                       d.prepare_ms, d.vae_ms, d.on_device ? "device" : "host");
            }
            if (s[0] > 0 && s[1] > 0)
                emit(c, "| end to end, graph gain | 1024x1024, %d steps | %.1f ms | eager/graph %.3f× |\n", steps[i],
                       (s[0] - s[1]) * 1e3, s[0] / s[1]);
        }
        /* the server's rows (previews, the prompt cache) are the resident plan's; under --vram
         * each of their runs is several seconds of streaming that says nothing new */
        if (!vram) fail |= server_rows(c, graphs_ok);
    }
    return fail;
}

/* The server's step previews (issue: < 3% of a step): 8 steps with and without, alternating;
 * then a repeated prompt (its text stage from the prompt cache). 1 if any failed. */
static int server_rows(bench_ctx *c, int graphs_ok) {
    int fail = 0;
    qi_error err = {{0}};
    double with = -1, without = -1, w2 = -1, wo2 = -1;
    int g = graphs_ok ? 1 : 0;
    if (!bench_e2e(c, 8, g, 1, &with, NULL, &err) && !bench_e2e(c, 8, g, 0, &without, NULL, &err) &&
        !bench_e2e(c, 8, g, 1, &w2, NULL, &err) && !bench_e2e(c, 8, g, 0, &wo2, NULL, &err)) {
        double per_step = ((with + w2) - (without + wo2)) / 2 / 8, step = (without + wo2) / 2 / 8;
        emit(c, "| end to end with step previews | 1024x1024, 8 steps | %.3f s | vs %.3f s without: %+.2f ms "
                "per step = %+.2f%% of a step (the server's latent → RGB map + PNG after each step) |\n",
             (with + w2) / 2, (without + wo2) / 2, per_step * 1e3, 100 * per_step / step);
    } else {
        fail = 1, fprintf(stderr, "e2e previews: %s\n", err.msg);
    }
    double first = 0, again = 0, text = 0;
    int cached = 0;
    if (!bench_repeat(c, &first, &again, &text, &cached, &err))
        emit(c, "| end to end, a repeated prompt | 1024x1024, 8 steps | %.3f s | first %.3f s (text stage %.1f ms); "
                "the repeat's text stage %s |\n", again, first, text * 1e3,
             cached ? "came from the prompt cache" : "was NOT cached");
    else
        fail = 1, fprintf(stderr, "e2e repeat: %s\n", err.msg);
    return fail;
}

/* A --type / --te-type value: a float type's name (any case) or fp8; 0 when found. */
static int parse_type(const char *v, qi_dtype *out) {
    for (int t = 0; t < QI_DTYPE_COUNT; t++)
        if (qi_dtype_is_float((qi_dtype)t) && !strcasecmp(v, qi_dtype_name((qi_dtype)t))) return *out = (qi_dtype)t, 0;
    if (!strcasecmp(v, "fp8")) return *out = QI_F8_E4M3, 0;
    return -1;
}

/* What `qwen-image bench` was asked to do: its flags, defaults filled in. */
typedef struct bench_args {
    const char *device;     /* --device: cuda[:N] or cpu */
    const char *out_path;   /* -o: the markdown table, or NULL */
    const char *manifest;   /* --manifest: the full-size checkpoint's tensor names, dtypes and shapes */
    const char *only;       /* --only dit|te|vae|e2e|gemm, or NULL: all rows */
    const char *sparse_dir; /* --write-sparse: only write the sparse model folder there */
    long runs, warmup;      /* per row: the median of runs runs after warmup warm-up runs */
    double load_gb;         /* --load: time the weight upload of this many GB instead; 0: not */
    size_t vram;            /* --vram: the engine's memory plan for this budget; 0: none */
    const char *vram_s;     /* --vram as written, for the rows */
    long long pinned;       /* --pinned: host memory pinned for streamed weights (-1: the default) */
    qi_dtype qt;            /* --type: the transformer's block linears */
    qi_dtype te;            /* --te-type: the text encoder's matrices (a GGUF type: a llama.cpp qwen2vl GGUF) */
    int edit;               /* --edit: the Edit-2509 rows instead of the text-to-image ones */
    const char *model;      /* -m: an existing model folder with its own weights */
    long edit_side, vl_area, vae_area; /* --edit-size, --edit-vl-area, --edit-vae-area (0: the pipeline's) */
} bench_args;

static void print_bench_usage(void) {
    printf("usage: qwen-image bench [--device cuda[:N]] [--runs N] [--warmup N] [--only dit|te|vae|e2e|gemm]\n"
           "                        [--type bf16|fp8|q8_0|q6_k|q5_k|q4_k|q4_0|…] [--te-type bf16|q8_0|q4_k|…]\n"
           "                        [--vram SIZE [--pinned SIZE]]\n"
           "                        [--manifest FILE]\n"
           "                        [--edit [--edit-size N] [--edit-vl-area PIXELS] [--edit-vae-area PIXELS]]\n"
           "                        [-m MODEL_DIR] [-o RESULTS.md]\n"
           "  --edit: Qwen-Image-Edit-2509 with one N×N reference picture (default 1024; the output N×N):\n"
           "          end to end at 4 and 8 steps, cfg 1, Lightning schedule, per step, and the vision tower,\n"
           "          text encoder and VAE encoder alone (the areas: as generate's, for small tests)\n"
           "  --only gemm: a GGUF --type's linears through the block GEMM vs expanded to bf16 first\n"
           "          (CUDA), at the transformer's and text encoder's weight shapes and 1 … 4096 rows\n"
           "          (no model is made or loaded)\n"
           "  -m: time that model folder with its own weights instead of the full-size random one\n"
           "      (e.g. the tiny tests/data/edit/model-2509 on the CPU, a smoke test)\n"
           "  --vram: the engine plans for that device budget (transformer call at 1024², end to end,\n"
           "          host->device GB/s, peak memory; run beside dev/cuda/hold_memory to prove it)\n"
           "  --pinned: host memory pinned for streamed weights (0: none, all through the bounce ring)\n"
           "  --type: the transformer's block linears stored as that type (fp8: F8_E4M3 safetensors;\n"
           "          GGUF types: a GGUF file), kept so on the device\n"
           "  --te-type: the text encoder's matrices as that GGUF type (a llama.cpp qwen2vl GGUF, as\n"
           "          users load one; its norms and biases F32); bf16 (default): the safetensors\n"
           "       qwen-image bench --write-sparse DIR [--type T] [--te-type T]   (only write the sparse\n"
           "          full-size model folder, transformer.gguf / text_encoder.gguf for GGUF types, e.g. for\n"
           "          `qwen-image inspect`)\n"
           "       qwen-image bench --load GB [--device cuda[:N]]   (weight upload from the page cache)\n");
}

/* One flag f and its value v; 0 when taken, or the exit code of a bad flag
 * or value. --edit and --help, which take no value, are the caller's. */
static int parse_bench_flag(const char *f, const char *v, bench_args *a) {
    if (!strcmp(f, "--device")) a->device = v;
    else if (!strcmp(f, "--runs")) {
        if (qi_app_parse_int(f, v, 1, 64, &a->runs)) return 2;
    } else if (!strcmp(f, "--warmup")) {
        if (qi_app_parse_int(f, v, 0, 64, &a->warmup)) return 2;
    } else if (!strcmp(f, "--manifest")) a->manifest = v;
    else if (!strcmp(f, "-m")) a->model = v;
    else if (!strcmp(f, "--edit-size")) {
        if (qi_app_parse_int(f, v, 16, 16384, &a->edit_side)) return 2;
    } else if (!strcmp(f, "--edit-vl-area")) {
        if (qi_app_parse_int(f, v, 1024, 1L << 26, &a->vl_area)) return 2;
    } else if (!strcmp(f, "--edit-vae-area")) {
        if (qi_app_parse_int(f, v, 1024, 1L << 26, &a->vae_area)) return 2;
    }
    else if (!strcmp(f, "--only")) {
        static const char *rows[] = {"dit", "te", "vae", "e2e", "gemm"};
        int known = 0;
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) known |= !strcmp(v, rows[i]);
        if (!known) return qi_app_usage_error("bench: --only %s: expected dit, te, vae, e2e or gemm", v);
        a->only = v;
    }
    else if (!strcmp(f, "--write-sparse")) a->sparse_dir = v;
    else if (!strcmp(f, "--type")) {
        if (parse_type(v, &a->qt) || a->qt == QI_F32 || a->qt == QI_F16 || a->qt == QI_F8_E5M2)
            return qi_app_usage_error("bench: --type %s: expected bf16, fp8 or a GGUF block type (q8_0, q6_k, "
                                      "q5_k, q4_k, q4_0, …)", v);
    } else if (!strcmp(f, "--te-type")) {
        if (parse_type(v, &a->te) || !(a->te == QI_BF16 || qi_dtype_is_block(a->te)))
            return qi_app_usage_error("bench: --te-type %s: expected bf16 (the safetensors) or a GGUF block type "
                                      "(q8_0, q6_k, q5_k, q4_k, q4_0, …: a llama.cpp qwen2vl GGUF)", v);
    }
    else if (!strcmp(f, "--load")) {
        char *end;
        a->load_gb = strtod(v, &end);
        if (*end || !(a->load_gb > 0 && a->load_gb <= 64))
            return qi_app_usage_error("bench: --load takes gigabytes, 0 < GB <= 64 (got %s)", v);
    }
    else if (!strcmp(f, "-o")) a->out_path = v;
    else if (!strcmp(f, "--vram")) {
        if (qi_app_parse_size(f, v, &a->vram)) return 2;
        a->vram_s = v;
    } else if (!strcmp(f, "--pinned")) {
        if (qi_app_parse_pinned(f, v, &a->pinned)) return 2;
    }
    else return qi_app_usage_error("bench: unknown option %s", f);
    return 0;
}

/* The flags, in order (the first bad one ends it); -1 to go on, else the
 * exit code (0 after --help). */
static int parse_bench_args(int argc, char **argv, bench_args *a) {
    *a = (bench_args){.device = "cuda", .manifest = QI_BENCH_MANIFEST, .runs = 7, .warmup = 2, .pinned = -1,
                      .qt = QI_BF16, .te = QI_BF16, .edit_side = 1024};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--edit")) {
            a->edit = 1;
            continue;
        }
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            print_bench_usage();
            return 0;
        }
        if (!v) return qi_app_usage_error("bench: %s needs a value", f);
        i++;
        int rc = parse_bench_flag(f, v, a);
        if (rc) return rc;
    }
    return -1;
}

/* --write-sparse: only the sparse full-size model folder, no timing. */
static int write_sparse_only(const bench_args *a) {
    qi_error werr = {{0}};
    if (mkdir(a->sparse_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "qwen-image: error: bench --write-sparse %s: cannot create the folder\n", a->sparse_dir);
        return 1;
    }
    if (make_model_dir(a->sparse_dir, a->manifest, QI_BENCH_TOKENIZER, a->qt, a->te, a->edit, &werr))
        return qi_app_runtime_error(werr.msg[0] ? werr.msg : "bench --write-sparse: cannot write the files");
    printf("bench: wrote the sparse full-size %s model (block linears %s, text encoder %s) into %s\n",
           a->edit ? "Edit-2509" : "Qwen-Image", qi_dtype_name(a->qt), qi_dtype_name(a->te), a->sparse_dir);
    if (qi_dtype_is_block(a->qt))
        printf("bench: the transformer as %s/transformer.gguf (city96 names)\n", a->sparse_dir);
    if (qi_dtype_is_block(a->te))
        printf("bench: the text encoder as %s/text_encoder.gguf (llama.cpp qwen2vl)\n", a->sparse_dir);
    return 0;
}

/* The -o table, opened beside its final name (finish_table renames it);
 * *md stays NULL without -o. 0, or 1 (the exit code) when it cannot be made. */
static int open_table(const char *out_path, FILE **md) {
    *md = NULL;
    if (!out_path) return 0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    if (!(*md = fopen(tmp, "w"))) {
        fprintf(stderr, "qwen-image: error: bench: -o %s: cannot create the file\n", out_path);
        return 1;
    }
    return 0;
}

/* The random full-size model's folder written into root (a mkdtemp pattern),
 * or nothing with -m (its own folder). -1 to go on, else the exit code (the
 * table abandoned). */
static int make_random_model(const bench_args *a, char *root, FILE *md) {
    qi_error err = {{0}};
    if (a->model) err.msg[0] = 0; /* its own folder: nothing to write, nothing to remove */
    else if (!mkdtemp(root)) err = (qi_error){"bench: cannot create a temporary folder"};
    else if (make_model_dir(root, a->manifest, QI_BENCH_TOKENIZER, a->qt, a->te, a->edit, &err)) remove_tree(root);
    else err.msg[0] = 0;
    if (err.msg[0]) {
        abandon_table(md, a->out_path);
        return qi_app_runtime_error(err.msg);
    }
    return -1;
}

/* `--only gemm`: the block GEMM's rows need a backend and nothing else, so no
 * model is made or opened (a full-size random one takes ~30 s of set-up). The
 * exit code: 0, 1 if a row failed, or the error's. */
static int bench_gemm_alone(const bench_args *a, FILE *md) {
    qi_backend *be = NULL;
    qi_error err = {{0}};
    if (qi_backend_create(a->device, 0, 0, &be, &err) != QI_OK) {
        abandon_table(md, a->out_path);
        return qi_app_runtime_error(err.msg);
    }
    printf("bench: the block GEMM against the expansion, %s weights on %s (no model loaded); median of %ld runs "
           "after %ld warm-up\n", qi_dtype_name(a->qt), a->device, a->runs, a->warmup);
    bench_ctx c = {.be = be, .warmup = (int)a->warmup, .runs = (int)a->runs, .md = md};
    emit(&c, "| what | shape | time | note |\n|---|---|---|---|\n");
    char msg[1024] = "";
    int fail = qi_bench_block_gemm(be, (int)a->qt, c.warmup, c.runs, md, msg, sizeof msg) != 0;
    if (fail) fprintf(stderr, "gemm: %s\n", msg);
    be->ops->destroy(be);
    if (md && finish_table(&c, a->out_path)) fail = 1;
    return fail;
}

/* Opens the engine on the model folder (root, or -m's) and says what was set
 * up and in how long. -1 to go on (c->e, c->be and *dit set), else the exit
 * code (the folder removed, the table abandoned). */
static int open_bench_engine(const bench_args *a, const char *root, bench_ctx *c, qi_dit **dit) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = a->model ? a->model : root;
    o.device = a->device;
    o.random_weights = a->model ? 0 : 1234;
    o.vram_bytes = a->vram;
    o.pinned_bytes = a->pinned;
    o.prompt_cache = 8; /* as the server's default; the e2e rows ask a new prompt each run */
    char gguf_path[64], te_gguf_path[64];
    snprintf(gguf_path, sizeof gguf_path, "%s/transformer.gguf", root);
    snprintf(te_gguf_path, sizeof te_gguf_path, "%s/text_encoder.gguf", root);
    if (qi_dtype_is_block(a->qt) && !a->model) o.diffusion_model = gguf_path;
    if (qi_dtype_is_block(a->te) && !a->model) o.text_encoder = te_gguf_path;
    double t0 = qi_now_s();
    qi_status st = qi_engine_open(&o, &c->e);
    if (!st) st = qi_engine_dit(c->e, dit);
    if (st) {
        fprintf(stderr, "qwen-image: error: %s\n", qi_engine_error(c->e));
        qi_engine_close(c->e);
        if (!a->model) remove_tree(root);
        abandon_table(c->md, a->out_path);
        return qi_app_exit_code(st);
    }
    c->be = qi_engine_backend(c->e);
    qi_error err = {{0}};
    c->be->ops->sync(c->be, &err); /* host copies of random weights are queued, not waited for: count them */
    printf("bench: %s%s (%s, block linears %s, text encoder %s) on %s set up in %.1f s; median of %ld runs after "
           "%ld warm-up\n", a->model ? a->model : "full-size model", a->edit ? ", Edit" : "",
           a->model ? "its weights" : "random weights", qi_dtype_name(a->qt), c->te_file, a->device,
           qi_now_s() - t0, a->runs, a->warmup);
#ifdef QI_WITH_CUDA
    if (!strcmp(c->be->ops->name, "cuda"))
        printf("bench: CUDA kernels %s (device compute capability %d.%d, code sm_%d; QI_CUDA_GENERIC=1 forces generic)\n",
               qi_cuda_kernel_family(c->be), qi_cuda_device_cc(c->be) / 10, qi_cuda_device_cc(c->be) % 10,
               qi_cuda_code_arch(c->be) / 10);
    if (!strcmp(c->be->ops->name, "cuda")) printf("bench: fp8 GEMM %s\n", qi_cuda_fp8_gemm_state(c->be));
#endif
    return -1;
}

/* Which GEMM the linears of a kept (non-bf16) type ran, and how many of their
 * expansions overlapped a GEMM: rows after all the timed ones (CUDA only). */
static void gemm_path_rows(bench_ctx *c, qi_dtype qt) {
#ifdef QI_WITH_CUDA
    if (!strcmp(c->be->ops->name, "cuda")) { /* what the GEMM algorithm tuning did (cuda_gemm.cu) */
        unsigned long long tuned = 0, changed = 0, differs = 0;
        double saved = 0;
        qi_cuda_gemm_tune_counts(c->be, &tuned, &changed, &differs, &saved);
        emit(c, "| GEMM algorithm tuning | all rows above | | %llu plans tuned, %llu given a faster algorithm with "
             "the same bits (%.3f ms per use of each, summed), %llu faster-or-not candidates passed over for another "
             "sum order or other bits (%s; QI_CUDA_GEMM_TUNE=0 off) |\n", tuned, changed, saved, differs,
             qi_cuda_gemm_tune_on(c->be) ? "on" : "off");
    }
    if (!strcmp(c->be->ops->name, "cuda") && qt != QI_BF16) { /* which GEMM the kept weights' linears ran */
        unsigned long long fp8 = 0, expanded = 0;
        qi_cuda_gemm_counts(c->be, &fp8, &expanded);
        emit(c, "| GEMM path of the %s linears | all rows above | | %llu through the fp8 GEMM (cuBLASLt e4m3), %llu "
             "expanded to bf16; fp8 GEMM %s |\n", qi_dtype_name(qt), fp8, expanded, qi_cuda_fp8_gemm_state(c->be));
        /* the overlap (cuda_kept.cu): how many expansions ran beside the GEMM before them, and its knobs */
        unsigned long long queued = 0, used = 0;
        qi_cuda_kept_counts(c->be, NULL, &queued, &used);
        const char *ov = getenv("QI_CUDA_KEPT_OVERLAP"), *sms = getenv("QI_CUDA_PREFETCH_SMS");
        const char *prio = getenv("QI_CUDA_PREFETCH_PRIORITY");
        emit(c, "| expansions overlapped with a GEMM | all rows above | | %llu of the %llu queued on hints "
             "(QI_CUDA_KEPT_OVERLAP=%s QI_CUDA_PREFETCH_SMS=%s QI_CUDA_PREFETCH_PRIORITY=%s) |\n", used, queued,
             ov ? ov : "1", sms ? sms : "all", prio ? prio : "0");
    }
#else
    (void)c, (void)qt;
#endif
}

/* The whole table: device memory with the transformer loaded, the Edit or
 * the text-to-image rows, the GEMM path, the peak memory and, under --vram,
 * the plan's reloads. 1 if any row failed. */
static int bench_rows(bench_ctx *c, const bench_args *a, qi_dit *dit) {
    emit(c, "| what | shape | time | note |\n|---|---|---|---|\n");
    if (c->be->ops->mem_usage) {
        size_t now, peak;
        c->be->ops->mem_usage(c->be, &now, &peak);
        emit(c, "| device memory, transformer loaded | %s block linears | %.2f GiB | weights + arena + workspaces |\n",
             qi_dtype_name(a->qt), (double)now / (1u << 30));
    }
    int fail;
    if (a->edit) {
        char msg[1024];
        qi_bench_edit_opts eo = {.warmup = (int)a->warmup, .runs = (int)a->runs, .picture_side = (int)a->edit_side,
                                 .output_side = (int)a->edit_side, .vl_area = a->vl_area, .vae_area = a->vae_area,
                                 .md = c->md};
        fail = qi_bench_edit(c->e, &eo, msg, sizeof msg) != 0;
        if (fail) fprintf(stderr, "edit: %s\n", msg);
    } else fail = t2i_rows(c, dit, a->only, a->vram, a->vram_s);
    gemm_path_rows(c, a->qt);
    if (c->be->ops->mem_usage) {
        size_t now, peak;
        c->be->ops->mem_usage(c->be, &now, &peak);
        emit(c, "| peak device memory%s%s | | %.2f GiB | weights + activations |\n", a->vram ? ", --vram " : "",
             a->vram ? a->vram_s : "", (double)peak / (1u << 30));
    }
    if (a->vram)
        emit(c, "| reloads under the plan | | | text encoder loaded %d, freed %d times; transformer freed %d times |\n",
             c->e->te_loads, c->e->te_frees, c->e->dit_evictions);
    return fail;
}

/* `qwen-image bench`: the flags; --load or --write-sparse alone; else the
 * random full-size model (or -m's) opened and every row timed into the
 * table. The exit code: 0, 1 if a row failed, or the error's. */
int qi_cmd_bench(int argc, char **argv) {
    bench_args a;
    int rc = parse_bench_args(argc, argv, &a);
    if (rc >= 0) return rc;
    if (a.load_gb > 0) return bench_load(a.device, a.load_gb);
    if (qi_dtype_is_block(a.te) && (a.edit || a.model))
        return qi_app_usage_error("bench: --te-type %s with %s: %s", qi_dtype_name(a.te), a.edit ? "--edit" : "-m",
                                  a.edit ? "the Edit rows need the vision tower, which a qwen2vl GGUF does not hold "
                                           "(its mmproj file is not written)"
                                         : "-m times that folder's own text encoder");
    if (a.sparse_dir) return write_sparse_only(&a);
    FILE *md;
    if (open_table(a.out_path, &md)) return 1;
    if (a.edit && a.vram) {
        abandon_table(md, a.out_path);
        return qi_app_usage_error("bench: --edit with --vram is not timed (the plan frees and reloads components)");
    }
    if (a.only && !strcmp(a.only, "gemm")) return bench_gemm_alone(&a, md);
    char root[] = "/tmp/qi_bench_XXXXXX";
    if ((rc = make_random_model(&a, root, md)) >= 0) return rc;
    char te_file[64]; /* what the text encoder's weights are, for the rows */
    snprintf(te_file, sizeof te_file, "%s%s", a.model ? "its own" : qi_dtype_name(a.te),
             a.model ? "" : qi_dtype_is_block(a.te) ? " llama.cpp qwen2vl GGUF" : " safetensors");
    bench_ctx c = {.warmup = (int)a.warmup, .runs = (int)a.runs, .te_file = te_file, .md = md};
    qi_dit *dit;
    if ((rc = open_bench_engine(&a, root, &c, &dit)) >= 0) return rc;
    int fail = bench_rows(&c, &a, dit);
    qi_engine_close(c.e);
    if (!a.model) remove_tree(root);
    if (c.md && finish_table(&c, a.out_path)) fail = 1;
    return fail;
}

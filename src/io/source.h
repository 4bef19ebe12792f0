/*
 * source.h — where a model component's weights and configuration come from.
 *
 * A source answers "tensor NAME → dtype, shape, scale, bytes" for one
 * component (the transformer, the text encoder or the VAE), under the names
 * the model code binds (the diffusers / transformers names, spec
 * vae-and-formats.md B.4), and gives configuration hints: the parsed
 * config.json where there is one, otherwise NULL plus the file's metadata
 * (GGUF key/values, safetensors `__metadata__`). The model loaders take a
 * source and read no files themselves.
 *
 *     qi_source *src;
 *     if (qi_source_open("/models/qwen_image_bf16.safetensors", QI_COMPONENT_TRANSFORMER, &src,
 *                        &err) != QI_OK) ...
 *     qi_dit_load(src, be, loras, &dit, &err);
 *     ...
 *     qi_dit_free(dit);
 *     qi_source_close(src);   // after every model loaded from it
 *
 * Kinds (each a separate implementation behind qi_source_ops):
 *   - a diffusers component folder: config.json + `<stem>.safetensors` or a
 *     sharded `<stem>.safetensors.index.json` (stem "diffusion_pytorch_model"
 *     for the transformer and the VAE, "model" for the text encoder); names
 *     as stored (source_folder.c);
 *   - one `.safetensors` file (ComfyUI / LightX2V single files): no
 *     config.json unless one is attached (qi_source_set_config); the
 *     component's prefix, if any, is stripped (source_safetensors.c);
 *   - one `.gguf` file (source_gguf.c): dims already in PyTorch order.
 *
 * Name map: only a prefix that is the component's convention is stripped —
 * for the transformer `model.diffusion_model.`, `diffusion_model.`,
 * `transformer.` or `model.` (found by the anchor `img_in.weight`); for the
 * text encoder `text_encoders.qwen25_7b.transformer.`, `text_encoders.llm.`
 * or `text_encoder.` (anchor: its embedding table); for the VAE
 * `first_stage_model.` or `vae.` (anchor: the decoder's first conv). Two
 * foreign naming schemes are mapped to the loaders' names (source_names.c):
 * a llama.cpp `qwen2vl` GGUF text encoder (`blk.N.attn_q` → transformers
 * names; a `qwen2` file is refused saying what to use) and the Wan 2.1 names
 * of ComfyUI's VAE file (→ diffusers names; the Wan 2.2 VAE is refused).
 * The text encoder's own `model.` / `model.language_model.` spellings stay
 * its loader's business. Tensors outside the prefix are not the component's
 * and are not listed.
 *
 * Scaled fp8 safetensors checkpoints (spec vae-and-formats.md B.5.2, B.6):
 * each fp8 weight's scale tensor (`<layer>.scale_weight`, `<layer>.weight_scale`
 * of one value or [out, 1], with a `scaled_fp8` marker or `<layer>.comfy_quant`
 * JSON) is read at open and attached to the weight (scale_form, scale,
 * row_scale); scale, marker and config tensors are consumed, not listed. A
 * scale the loader does not understand (unknown convention, wrong shape,
 * non-finite, no weight to scale, a non-fp8 format) fails the open with a
 * one-line error naming the file and the tensor: never silently unscaled
 * (source_scales.c). GGUF files carry no scale tensors and refuse them.
 *
 * A source is read-only after open, so several loads may share it at once
 * (one per rank). It must outlive every model loaded from it: CPU weights
 * point into its mapping.
 */
#ifndef QI_SOURCE_H
#define QI_SOURCE_H

#include <cjson/cJSON.h>

#include "backend/backend.h" /* qi_scale_form */
#include "base/base.h"
#include "base/finite.h" /* qi_parallel_for */
#include "io/model_dir.h"     /* QI_PATH_MAX */

typedef enum qi_component {
    QI_COMPONENT_TOKENIZER = 0, /* no weights: never a source, named for the engine's residency */
    QI_COMPONENT_TEXT_ENCODER,
    QI_COMPONENT_VAE,
    QI_COMPONENT_TRANSFORMER,
    QI_COMPONENT_COUNT
} qi_component;

/* "transformer", "text encoder", "vae": for messages. */
const char *qi_component_name(qi_component c);

#define QI_SOURCE_MAX_DIMS 8

typedef struct qi_source_tensor {
    const char *name;          /* the mapped name the model binds, owned by the source */
    const char *stored_name;   /* the name in the file (differs by a stripped prefix) */
    const char *file;          /* path of the file holding it, for messages */
    qi_dtype dtype;            /* element or GGUF block type */
    int ndim;
    int64_t shape[QI_SOURCE_MAX_DIMS]; /* outermost first (PyTorch order) */
    qi_scale_form scale_form;  /* how stored values become real ones (scaled fp8) */
    float scale;               /* QI_SCALE_TENSOR: the scale; 1 otherwise */
    const float *row_scale;    /* QI_SCALE_ROW: [shape[0]] host floats owned by the source; NULL otherwise */
    const void *data;          /* the stored bytes, read-only, valid while the source is open */
    size_t nbytes;
} qi_source_tensor;

typedef struct qi_source qi_source;

/* ---- opening ------------------------------------------------------------------ */

/* The right source for a path: a directory → a diffusers component folder,
 * `*.gguf` → a GGUF file, `*.safetensors` → a single safetensors file;
 * anything else (or a missing path) is an error saying what is accepted. */
qi_status qi_source_open(const char *path, qi_component comp, qi_source **out, qi_error *err);

/* A diffusers component folder (today's layout: config.json is required and
 * read at open; errors as qi_json_load's and qi_st_set_open_dir's). */
qi_status qi_source_open_folder(const char *dir, qi_component comp, qi_source **out, qi_error *err);

/* One safetensors file, its component prefix stripped. */
qi_status qi_source_open_safetensors(const char *path, qi_component comp, qi_source **out,
                                     qi_error *err);

/* One GGUF file. In a build without the GGUF reader (io/gguf.h) this returns
 * QI_ERR_UNSUPPORTED saying so. */
qi_status qi_source_open_gguf(const char *path, qi_component comp, qi_source **out, qi_error *err);

/* llama.cpp's mmproj GGUF of Qwen2.5-VL (clip.projector_type
 * "qwen2.5vl_merger"): the vision tower a llama.cpp text-encoder GGUF leaves
 * out, its tensors under the transformers `visual.*` names model/vision.c
 * binds and its GGUF metadata as the attached `vision_config`
 * (source_mmproj.c). Another projector, architecture or an unknown tensor is
 * refused naming the file and the key or tensor. */
qi_status qi_source_open_mmproj(const char *path, qi_source **out, qi_error *err);

void qi_source_close(qi_source *s);

/* Attaches a config.json to a source that has none (a ComfyUI file with the
 * diffusers config beside it), or replaces the folder's own; read and parsed
 * now (errors as qi_json_load's). */
qi_status qi_source_set_config(qi_source *s, const char *config_path, qi_error *err);

/* ---- what it holds ------------------------------------------------------------- */

const char *qi_source_path(const qi_source *s);    /* the folder or file opened */
const char *qi_source_kind(const qi_source *s);    /* "diffusers folder", "safetensors file", "GGUF file" */
qi_component qi_source_component(const qi_source *s);

/* Its (mapped) tensors, sorted by name: count and the i-th, 0 ≤ i < count. */
int qi_source_tensor_count(const qi_source *s);
void qi_source_tensor_at(const qi_source *s, int i, qi_source_tensor *out);

/* The scale of t as the backend's `weight` takes it (form NONE: none). */
qi_weight_scale qi_source_tensor_scale(const qi_source_tensor *t);

/* All of t's values as float32 at dst (numel floats): dequantised by its
 * type's traits, times its scale (one float32 multiply per element, as the
 * reference loaders do). For LoRA fusion and `inspect --tensor`. */
qi_status qi_source_tensor_to_f32(const qi_source_tensor *t, float *dst, qi_error *err);

/* Looks a mapped name up; 1 and *out filled if present, else 0. */
int qi_source_find(const qi_source *s, const char *name, qi_source_tensor *out);

/* Looks a tensor up and checks it as qi_st_get does, with its messages: not
 * found ("<where>: tensor 'x' not found (wrong model or variant?)"), a
 * non-float type (GGUF block types count as float), a shape differing from
 * `shape` (ndim < 0 or shape NULL skips the check; an expected dim < 0
 * matches any size). */
qi_status qi_source_get(const qi_source *s, const char *name, int ndim, const int64_t *shape,
                        qi_source_tensor *out, qi_error *err);

/* ---- configuration hints ------------------------------------------------------- */

/* The parsed config.json and its path (for error messages), or NULL where
 * the source has none. The object belongs to the source. */
const cJSON *qi_source_config(const qi_source *s, const char **config_path);

/* File metadata: GGUF key/values, safetensors `__metadata__` (string values;
 * meta_int / meta_float parse a decimal string there). Missing keys and wrong
 * types are errors naming the file and the key. */
int qi_source_has_meta(const qi_source *s, const char *key);
qi_status qi_source_meta_string(const qi_source *s, const char *key, const char **out,
                                qi_error *err);
qi_status qi_source_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err);
qi_status qi_source_meta_float(const qi_source *s, const char *key, double *out, qi_error *err);

/* The GGUF file behind a GGUF source (its arrays: the tokenizer's vocabulary
 * and merges), or NULL for the other kinds. */
struct qi_gguf_file;
const struct qi_gguf_file *qi_source_gguf(const qi_source *s);

/* How the file spelled its names before they were mapped: the prefix that
 * was stripped ("" for none) and the naming scheme ("diffusers",
 * "transformers", "llama.cpp qwen2vl", "Wan 2.1 (ComfyUI)"). For `inspect`. */
const char *qi_source_prefix(const qi_source *s);
const char *qi_source_naming(const qi_source *s);

/* Which components one .safetensors or .gguf file holds, by content (the
 * anchors of spec B.9, under the components' prefixes; a GGUF by its
 * general.architecture): a mask of 1 << qi_component bits, 0 for none (a
 * LoRA, an mmproj file). Errors are the readers' (unreadable, malformed). */
qi_status qi_source_identify(const char *path, int *mask, qi_error *err);

/* ---- name maps (source_names.c) --------------------------------------------------- */

/* llama.cpp's `qwen2vl` names (spec vae-and-formats.md B.4 table) → the
 * transformers names the text encoder binds: `blk.3.attn_q.bias` →
 * `model.layers.3.self_attn.q_proj.bias`, `token_embd.weight` →
 * `model.embed_tokens.weight`, `output_norm.weight` → `model.norm.weight`,
 * `output.weight` → `lm_head.weight`. 1 and out filled when the name is one
 * of them, 0 otherwise (out untouched). No q/k permutation is involved:
 * llama.cpp stores Qwen2 rows in HF order (it rotates them NEOX-style). */
int qi_names_llamacpp_text_encoder(const char *stored, char *out, size_t cap);

/* The inverse, from the same table: a transformers name under `model.` →
 * llama.cpp's (`model.layers.3.mlp.up_proj.weight` → `blk.3.ffn_up.weight`),
 * as a writer of `qwen2vl` GGUFs (bench --te-type) names its tensors. 1 and
 * out filled when mapped, 0 otherwise (the vision tower: not in that file). */
int qi_names_text_encoder_to_llamacpp(const char *name, char *out, size_t cap);

/* llama.cpp's mmproj names of Qwen2.5-VL's tower → transformers':
 * `v.blk.3.attn_q.weight` → `visual.blocks.3.attn.q.weight` (the fused qkv
 * as the converter splits it), `v.blk.3.ln1.weight` → `…norm1.weight`,
 * `v.post_ln.weight` → `visual.merger.ln_q.weight`, `mm.2.bias` →
 * `visual.merger.mlp.2.bias`. The patch embedding's two slices are not a
 * rename (qi_source_open_mmproj recombines them). 1 and out filled when
 * mapped, 0 otherwise. */
int qi_names_llamacpp_mmproj(const char *stored, char *out, size_t cap);

/* The original Wan 2.1 VAE names of ComfyUI's qwen_image_vae.safetensors →
 * diffusers' AutoencoderKLQwenImage names (spec B.4, Appendix), mapped
 * structurally (`conv1` is the quant conv at the top, `conv_in` one level
 * down, the first residual conv inside a block): `decoder.upsamples.5.
 * residual.2.weight` → `decoder.up_blocks.1.resnets.1.conv1.weight`. The
 * decoder's upsamples are numbered as Qwen-Image's (3 residual blocks + 1
 * resampler per level). 1 and out filled when mapped, 0 for a name outside
 * the scheme. */
int qi_names_wan_vae(const char *stored, char *out, size_t cap);

/* The anchors that identify those schemes (spec B.9). */
#define QI_WAN_VAE_ANCHOR "decoder.middle.0.residual.0.gamma"
#define QI_WAN22_VAE_ANCHOR "decoder.upsamples.0.upsamples.0.residual.2.weight"

/* ---- for source implementations ------------------------------------------------ */

/* One listed tensor of a source: its mapped name and the kind's own record
 * of it. Every kind lists its tensors in a qi_name_table, which answers
 * qi_source_tensor_count / _at / qi_source_find for all of them. */
typedef struct qi_name_entry {
    const char *name;   /* the mapped name: into the stored name (past the prefix), or `owned` */
    const void *tensor; /* the kind's tensor (qi_gguf_tensor, qi_st_tensor), or NULL for one it made */
    char *owned;        /* the table's copy of a renamed name, or NULL */
} qi_name_entry;

typedef struct qi_name_table {
    qi_name_entry *entries; /* sorted by name once qi_name_table_sort has run */
    int n, cap;
} qi_name_table;

/* Appends `tensor` under `name`: the pointer itself (it must outlive the
 * table: a name inside the mapped file) or, with copy, a copy the table
 * owns (a name map's output). Out of memory: an error naming `file`. */
qi_status qi_name_table_add(qi_name_table *t, const char *name, int copy, const void *tensor, const char *file,
                            qi_error *err);
/* Sorts by name (strcmp); lookups need it unless the names came in order. */
void qi_name_table_sort(qi_name_table *t);
/* The entry named `name` (a binary search), or NULL. */
const qi_name_entry *qi_name_table_find(const qi_name_table *t, const char *name);
void qi_name_table_free(qi_name_table *t);

/* *out as a tensor without a scale (form NONE, scale 1): the fields every
 * kind fills alike; ndim beyond QI_SOURCE_MAX_DIMS keeps only that many dims. */
void qi_source_tensor_set(qi_source_tensor *out, const char *name, const char *stored_name, const char *file,
                          qi_dtype dtype, int ndim, const int64_t *shape, const void *data, size_t nbytes);

typedef struct qi_source_ops {
    const char *kind; /* qi_source_kind */
    /* *out for an entry of s->names (never called where names is empty) */
    void (*fill)(const qi_source *s, const qi_name_entry *e, qi_source_tensor *out);
    /* metadata; NULL slots mean "none" */
    int (*has_meta)(const qi_source *s, const char *key);
    qi_status (*meta_string)(const qi_source *s, const char *key, const char **out, qi_error *err);
    qi_status (*meta_int)(const qi_source *s, const char *key, int64_t *out, qi_error *err);
    qi_status (*meta_float)(const qi_source *s, const char *key, double *out, qi_error *err);
    const struct qi_gguf_file *(*gguf)(const qi_source *s); /* NULL slot: not a GGUF source */
    void (*close)(qi_source *s); /* frees impl only */
} qi_source_ops;

struct qi_source {
    const qi_source_ops *ops;
    qi_component component;
    char path[QI_PATH_MAX];        /* what was opened */
    char where[QI_PATH_MAX + 64];  /* the weight file(s), for "not found" messages */
    cJSON *config;                 /* parsed config.json, or NULL */
    char config_path[QI_PATH_MAX];
    char prefix[64];               /* stripped from the stored names (qi_source_prefix) */
    const char *naming;            /* static: the naming scheme (qi_source_naming) */
    qi_name_table names;           /* the listed tensors, sorted by mapped name; freed by close */
    void *impl;                    /* the kind's own state */
    /* what qi_source_get's NaN/Inf scan of a large weight is split over (run
     * NULL: the loading thread alone); lent by the engine, whose work pool
     * must outlive the source's loads (qi_model_files.scan) */
    qi_parallel_for scan;
};

/* A new source of `ops` (impl NULL, no config); NULL when out of memory. */
qi_source *qi_source_new(const qi_source_ops *ops, qi_component comp, const char *path);

/* The component's prefix among a file's stored names: the first of the
 * component's conventional prefixes P for which has(P + anchor) holds.
 * Returns the prefix (a static string, "" for none) or NULL when no anchor
 * is found (the error then names the file and the anchor). */
const char *qi_source_find_prefix(qi_component comp, const char *file,
                                  int (*has)(const void *ctx, const char *name), const void *ctx,
                                  qi_error *err);

/* The ops of a source over one GGUF file (ops->gguf gives it), shared by
 * source_gguf.c and source_mmproj.c: metadata from its key/values, and the
 * fill of an entry whose tensor is a qi_gguf_tensor. */
int qi_source_gguf_has_meta(const qi_source *s, const char *key);
qi_status qi_source_gguf_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err);
qi_status qi_source_gguf_meta_float(const qi_source *s, const char *key, double *out, qi_error *err);
void qi_source_gguf_fill(const qi_source *s, const qi_name_entry *e, qi_source_tensor *out);

/* QI_ERR_UNSUPPORTED if `stored_name` is a scale or marker tensor of a
 * scaled-fp8 checkpoint, naming it and the file; QI_OK otherwise (GGUF). */
qi_status qi_source_refuse_scales(const char *file, const char *stored_name, qi_error *err);

/* ---- scale tensors of a safetensors set (source_scales.c) ---------------------- */

struct qi_st_set;
typedef struct qi_scale_table qi_scale_table;

/* Reads every scale, marker and quantisation-config tensor of `set` (and
 * `__metadata__["_quantization_metadata"]`); errors name the file and the
 * tensor. *out is empty (not NULL) for a file without any. */
qi_status qi_scale_table_build(const struct qi_st_set *set, qi_scale_table **out, qi_error *err);
/* 1 if the stored name is a scale/marker/config tensor (not to be listed). */
int qi_scale_table_consumes(const qi_scale_table *t, const char *stored_name);
/* Sets out's scale_form / scale / row_scale if its weight has a scale. */
void qi_scale_table_apply(const qi_scale_table *t, const char *stored_name, qi_source_tensor *out);
/* "per-tensor scale", "per-row weight_scale (LightX2V)", "comfy_quant (...)",
 * "scaled_fp8 (...)", or NULL for none (plain files, plain fp8 casts). */
const char *qi_scale_table_convention(const qi_scale_table *t);
void qi_scale_table_free(qi_scale_table *t);

#endif

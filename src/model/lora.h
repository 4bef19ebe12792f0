/*
 * lora.h — LoRA files for the Qwen-Image transformer: reading the key layouts
 * in circulation, working out each module's scale, and fusing the deltas into
 * float32 copies of the base weights at load time.
 *
 *     W' = W + Σ_files strength · scale · (up @ down)      (spec denoiser.md §4.1)
 *
 * Key layouts accepted (spec §4.2; all may carry a `.default` peft infix):
 *   kohya        X.lora_down.weight / X.lora_up.weight [/ X.alpha]
 *                (also X.lora.down.weight / X.lora.up.weight)
 *   peft         X.lora_A.weight / X.lora_B.weight [/ X.alpha, ignored]
 *   prefixes     none, `diffusion_model.`, `model.diffusion_model.`,
 *                `transformer.`, `base_model.model.`
 *   flattened    `lora_unet_` / `lora_transformer_` / `lycoris_` + X with
 *                every '.' written '_' (resolved against the real weight names,
 *                so no list of protected runs is needed)
 * X is a diffusers module name, e.g. transformer_blocks.7.attn.to_q.
 *
 * Scale (the diffusers column of spec §4.3, which the references follow):
 *   kohya with alpha      alpha / rank
 *   kohya without alpha   1 (what ComfyUI, LightX2V and sd.cpp do; diffusers refuses)
 *   peft                  1, even when `.alpha` tensors are present, unless the
 *                         file's metadata carries diffusers' `lora_adapter_metadata`
 *                         (then lora_alpha / r, or lora_alpha / √r with use_rslora)
 * rank = rows of the down matrix.
 *
 * Usage: qi_lora_set_add() once per file; then the model binds the set to its
 * Linear weight names with qi_lora_bind() (every LoRA module must name one of
 * them, or the bind fails listing the strays and the nearest real names) and
 * calls qi_lora_binding_fuse() for each weight qi_lora_binding_targets() says
 * is touched. The set is never modified by a bind, keeps its files mapped
 * until qi_lora_set_free, and must outlive its bindings.
 *
 * This file knows nothing about backends: fusing is host float32 work.
 */
#ifndef QI_LORA_H
#define QI_LORA_H

#include "base/base.h"

typedef struct qi_lora_set qi_lora_set;

/* Reads one LoRA file and appends it to *set (created when *set is NULL).
 * Errors: unreadable file, an unrecognised key, a down without its up (or the
 * reverse), a rank that differs between down and up, a module given twice. */
qi_status qi_lora_set_add(qi_lora_set **set, const char *path, float strength, qi_error *err);
void qi_lora_set_free(qi_lora_set *set);

int qi_lora_set_file_count(const qi_lora_set *set);
/* Drops the files added after the first n_files (e.g. the ones a failed
 * transformer load could not bind). */
void qi_lora_set_truncate(qi_lora_set *set, int n_files);
int qi_lora_set_module_count(const qi_lora_set *set); /* over all files */

/* One module of one file as read, for describing the file (qwen-image
 * inspect); pointers live while the set does. */
typedef struct qi_lora_module_info {
    const char *module;   /* module name after the prefix, as written (dotted, or flattened '_') */
    const char *down_key; /* the stored key of its down matrix, prefix and all */
    int flattened;        /* lora_unet_ / lora_transformer_ / lycoris_ + '.' written '_' */
    int peft;             /* lora_A / lora_B (else kohya lora_down / lora_up) */
    int has_alpha;        /* an `.alpha` tensor is present */
    float alpha;          /* its value (0 when absent) */
    int64_t rank, out_dim, in_dim; /* up [out_dim, rank] @ down [rank, in_dim] */
    float scale;          /* what the engine multiplies by (rules above), before the strength */
} qi_lora_module_info;

int qi_lora_set_file_module_count(const qi_lora_set *set, int file);
/* Module k of file `file`; QI_ERR_ARG when either is out of range. */
qi_status qi_lora_set_module_info(const qi_lora_set *set, int file, int k, qi_lora_module_info *out,
                                  qi_error *err);

/* A set resolved against one model's weight names. */
typedef struct qi_lora_binding qi_lora_binding;

/* Resolves every module of every file to one of `weight_names` (full tensor
 * names such as "transformer_blocks.0.attn.to_q.weight"; names not ending in
 * ".weight" are ignored). A module matching none is an error that lists the
 * first few such keys and, for each, the nearest real names. set may be NULL
 * (an empty binding). */
qi_status qi_lora_bind(const qi_lora_set *set, const char *const *weight_names, int n_names,
                       qi_lora_binding **out, qi_error *err);
void qi_lora_binding_free(qi_lora_binding *b);

/* Whether some module targets `weight_name`. */
int qi_lora_binding_targets(const qi_lora_binding *b, const char *weight_name);

/* The weight name module k of file `file` is bound to (NULL if none). */
const char *qi_lora_binding_target_of(const qi_lora_binding *b, int file, int k);

/* w [out_dim, in_dim] float32 += Σ strength·scale·(up @ down) over every
 * module bound to `weight_name`, in file order. A module whose up/down shapes
 * do not fit [out_dim, in_dim] is an error naming the key and both shapes. */
qi_status qi_lora_binding_fuse(const qi_lora_binding *b, const char *weight_name, float *w,
                               int64_t out_dim, int64_t in_dim, qi_error *err);

/* One module's factors for the runtime update y += coef · up (down x), read
 * from the mapped file as stored (no copy; alive while the set is). */
typedef struct qi_lora_factor {
    int64_t rank;
    qi_dtype down_dtype, up_dtype;
    const void *down; /* [rank, in_dim] */
    const void *up;   /* [out_dim, rank] */
    float coef;       /* strength · scale, what the fuse multiplies by */
} qi_lora_factor;

/* Modules bound to `weight_name` (0 when none or b is NULL). */
int qi_lora_binding_count(const qi_lora_binding *b, const char *weight_name);
/* The k-th of them, in file order (the fuse's order); the same shape check
 * and message as qi_lora_binding_fuse. */
qi_status qi_lora_binding_factor(const qi_lora_binding *b, const char *weight_name, int k, int64_t out_dim,
                                 int64_t in_dim, qi_lora_factor *out, qi_error *err);

#endif

/*
 * model_files.h — where each part of a model comes from, when the user may
 * give a diffusers folder (-m), a folder of ComfyUI-style split files (-m,
 * files found by content, not by name), single files per component
 * (--diffusion-model / --text-encoder / --vae: .safetensors or .gguf), or a
 * mix: a component given on its own wins over -m's.
 *
 *     qi_model_paths p = {.model = "/models/comfy", .text_encoder = "Qwen2.5-VL-7B-Instruct-Q8_0.gguf"};
 *     qi_model_files f;
 *     if (qi_model_files_resolve(&p, &f, &err)) ...
 *     qi_model_files_open_source(&f, QI_COMPONENT_VAE, &src, &err);
 *     qi_model_files_tokenizer(&f, &tok, &err);
 *
 * The tokenizer: from the text encoder's GGUF metadata when it is a GGUF
 * that carries one; else the model folder's tokenizer/ (vocab.json +
 * merges.txt); else the Qwen2.5 tokenizer files installed with the engine
 * (QI_TOKENIZER_DIRS, set by the build: <prefix>/share/qwen-image/tokenizer,
 * then the source tree's copy). The "model" scheduler: the diffusers
 * folder's scheduler_config.json, else Qwen-Image's built-in config.
 */
#ifndef QI_MODEL_FILES_H
#define QI_MODEL_FILES_H

#include "base/base.h"
#include "io/model_dir.h" /* QI_PATH_MAX */
#include "io/source.h"
#include "model/tokenizer.h"

typedef struct qi_model_paths {
    const char *model;        /* -m: a diffusers folder or a folder of split files; may be NULL */
    const char *transformer;  /* --diffusion-model: file or component folder; NULL: from model */
    const char *text_encoder; /* --text-encoder */
    const char *vae;          /* --vae */
    const char *mmproj;       /* --mmproj: llama.cpp's vision-tower GGUF beside a GGUF text encoder; NULL:
                                 the one mmproj*.gguf in the text encoder GGUF's folder, if any */
} qi_model_paths;

typedef struct qi_model_files {
    char root[QI_PATH_MAX];   /* -m as given, or "" */
    int diffusers;            /* root is a diffusers folder (model_index.json) */
    /* per component (qi_component): the folder or file its weights come from;
     * [QI_COMPONENT_TOKENIZER] the tokenizer folder ("" when none) */
    char path[QI_COMPONENT_COUNT][QI_PATH_MAX];
    /* the config.json attached to a single safetensors file given beside a
     * diffusers -m folder (that folder's component config), or "" */
    char config[QI_COMPONENT_COUNT][QI_PATH_MAX];
    char scheduler_config[QI_PATH_MAX]; /* "" → qi_scheduler_config_qwen_image() */
    /* the vision tower's mmproj GGUF ("" for none): --mmproj, or found beside a
     * GGUF text encoder (mmproj_found 1; the engine says which it picked) */
    char mmproj[QI_PATH_MAX];
    int mmproj_found;
    /* several mmproj*.gguf beside the text encoder and no --mmproj: the
     * message refusing to guess, given when the vision tower is needed (a
     * text-to-image run needs none); "" otherwise */
    char mmproj_ambiguous[1024];
    /* the parallel-for qi_model_files_open_source lends every source it
     * opens, for the weights' NaN/Inf scan (run NULL: none; resolve leaves
     * it so); set by the engine to its work pool after resolving */
    qi_parallel_for scan;
} qi_model_files;

/* Resolves every component's path; the error names what is missing and the
 * flag that gives it, or the two files that both look like one component. */
qi_status qi_model_files_resolve(const qi_model_paths *p, qi_model_files *out, qi_error *err);

/* The vision tower's source for an Edit request: the text encoder's own
 * `te` when it carries one; else the mmproj file (opened into *opened, which
 * the caller closes after the tower); else the text encoder's, whose load
 * then says to give --mmproj. An ambiguous folder is an error naming the
 * candidates. *out is te or *opened. */
qi_status qi_model_files_vision_source(const qi_model_files *f, const qi_source *te, int te_has_tower,
                                       const qi_source **out, qi_source **opened, qi_error *err);

/* Opens component c's source (qi_source_open), with its config attached
 * where `config[c]` says and `scan` lent for its weights' NaN/Inf scan. */
qi_status qi_model_files_open_source(const qi_model_files *f, qi_component c, qi_source **out, qi_error *err);

/* Loads the tokenizer in the order above; *from (may be NULL) says where it
 * came from (a path). */
qi_status qi_model_files_tokenizer(const qi_model_files *f, qi_tokenizer **out, char *from, size_t from_cap,
                                   qi_error *err);

#endif

/*
 * model_dir.h — finding the parts of a diffusers Qwen-Image directory, and the
 * small JSON helpers every config reader shares.
 *
 * A Qwen/Qwen-Image download looks like (spec vae-and-formats.md §B.3):
 *
 *     model_index.json
 *     scheduler/scheduler_config.json
 *     text_encoder/config.json      + model*.safetensors (+ index)
 *     tokenizer/vocab.json merges.txt
 *     transformer/config.json       + diffusion_pytorch_model*.safetensors (+ index)
 *     vae/config.json               + diffusion_pytorch_model.safetensors
 *
 * qi_model_dir_open checks that this layout is there and fills in the paths;
 * it does not read weights (a weight source for each component folder does,
 * io/source.h) nor interpret configs (each model file reads its own with the
 * getters below).
 *
 * The JSON getters never default silently: a missing key or a wrong type is
 * an error naming the file and the key. Keys that the format makes optional
 * are read with the *_opt getters, whose default the caller writes down.
 */
#ifndef QI_MODEL_DIR_H
#define QI_MODEL_DIR_H

#include <cjson/cJSON.h>

#include "base/base.h"

#define QI_PATH_MAX 4096

typedef struct qi_model_dir {
    char root[QI_PATH_MAX];                /* the directory given, as given */
    char model_index[QI_PATH_MAX];         /* root/model_index.json */
    char pipeline_class[128];              /* "_class_name" ("QwenImagePipeline"); "" if absent */
    char transformer_dir[QI_PATH_MAX];     /* root/transformer */
    char transformer_config[QI_PATH_MAX];  /* root/transformer/config.json */
    char text_encoder_dir[QI_PATH_MAX];    /* root/text_encoder */
    char text_encoder_config[QI_PATH_MAX]; /* root/text_encoder/config.json */
    char vae_dir[QI_PATH_MAX];             /* root/vae */
    char vae_config[QI_PATH_MAX];          /* root/vae/config.json */
    char tokenizer_dir[QI_PATH_MAX];       /* root/tokenizer */
    char tokenizer_vocab[QI_PATH_MAX];     /* root/tokenizer/vocab.json */
    char tokenizer_merges[QI_PATH_MAX];    /* root/tokenizer/merges.txt */
    char scheduler_config[QI_PATH_MAX];    /* root/scheduler/scheduler_config.json */
} qi_model_dir;

/* Checks the layout above; the error says what is missing and what to pass. */
qi_status qi_model_dir_open(const char *path, qi_model_dir *out, qi_error *err);

/* ---- JSON ---------------------------------------------------------------- */

/* Reads and parses a JSON file. On a syntax error the message is
 * "<path>: line N: JSON syntax error near '<text>'". The caller frees *out
 * with cJSON_Delete. */
qi_status qi_json_load(const char *path, cJSON **out, qi_error *err);

/* Parses JSON text already in memory; `what` names it in errors (a path).
 * Strict: one value and nothing after it but spaces; arrays and objects
 * nested at most QI_JSON_MAX_DEPTH deep (no config needs more than a few
 * levels; deeper text is refused before it is parsed, "line N: JSON nested
 * deeper than 64 levels"). */
#define QI_JSON_MAX_DEPTH 64
qi_status qi_json_parse(const char *text, size_t len, const char *what, cJSON **out, qi_error *err);

/* "a string", "a number", "an array", ... for error messages. */
const char *qi_json_type_name(const cJSON *item);

/* Typed getters of obj[key]. `file` names the JSON file in error messages:
 * "<file>: key 'num_layers' is missing" / "... must be an integer, found a
 * string". Integers must be whole numbers that fit the type. The string
 * getter's result points into obj. */
qi_status qi_json_get_int(const cJSON *obj, const char *key, const char *file, int *out,
                          qi_error *err);
qi_status qi_json_get_int64(const cJSON *obj, const char *key, const char *file, int64_t *out,
                            qi_error *err);
qi_status qi_json_get_double(const cJSON *obj, const char *key, const char *file, double *out,
                             qi_error *err);
qi_status qi_json_get_bool(const cJSON *obj, const char *key, const char *file, int *out,
                           qi_error *err);
qi_status qi_json_get_string(const cJSON *obj, const char *key, const char *file, const char **out,
                             qi_error *err);

/* Arrays of numbers: obj[key] must be an array of at most `cap` elements of
 * the type; *n gets the count. */
qi_status qi_json_get_int_array(const cJSON *obj, const char *key, const char *file, int *out,
                                int cap, int *n, qi_error *err);
qi_status qi_json_get_double_array(const cJSON *obj, const char *key, const char *file, double *out,
                                   int cap, int *n, qi_error *err);

/* Optional keys: absent (or JSON null) gives `dflt`; present with a wrong type
 * is still an error. */
qi_status qi_json_get_int_opt(const cJSON *obj, const char *key, const char *file, int dflt,
                              int *out, qi_error *err);
qi_status qi_json_get_double_opt(const cJSON *obj, const char *key, const char *file, double dflt,
                                 double *out, qi_error *err);
qi_status qi_json_get_bool_opt(const cJSON *obj, const char *key, const char *file, int dflt,
                               int *out, qi_error *err);

#endif

/*
 * app.h — what the command-line front end's files share.
 */
#ifndef QI_APP_H
#define QI_APP_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qwen_image.h"

#define QI_APP_MAX_PROMPTS 64
#define QI_APP_MAX_LORAS 16
#define QI_APP_EXIT_INTERRUPTED 130 /* 128 + SIGINT, as shells report it */

int qi_app_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* returns 2 */
int qi_app_runtime_error(const char *msg);                                          /* returns 1 */
int qi_app_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));       /* "error: …", returns 1 */
/* The message of this thread's last qi_app_*_error (the server hands a failed
 * check's message to its client). */
extern _Thread_local char qi_app_last_error[1024];
int qi_app_exit_code(qi_status st);
int qi_app_parse_int(const char *flag, const char *s, long lo, long hi, long *out);
int qi_app_parse_float(const char *flag, const char *s, double *out);
int qi_app_parse_threads(const char *flag, const char *s, long *out); /* 1 .. 4 × online cores */
/* A memory size: "8G", "6G", "3000M", "1.5G", "512MiB", "8GB" (binary units: 1G = 2^30 bytes;
 * K, M, G, T, any case, an optional "B" or "iB"); at least 1 MiB. 0, or 2 after the message. */
int qi_app_parse_size(const char *flag, const char *s, size_t *out);
/* --pinned: a size as qi_app_parse_size, or 0 (pin nothing). */
int qi_app_parse_pinned(const char *flag, const char *s, long long *out);
/* The help line of --pinned (generate, serve, bench). */
#define QI_APP_PINNED_HELP                                                                                      \
    "  --pinned SIZE       host memory to pin for streamed weights (with --vram), e.g. 16G or 0 (default:\n"    \
    "                      half the RAM): the rest stays in ordinary memory and is copied through a small\n"     \
    "                      pinned bounce ring (slower: a host copy more); QI_PINNED_MAX sets the default\n"
const char *qi_app_default_model(int quiet);
/* Checks that an output file can be created at path before any work: not a
 * folder, its folder exists (and is one) and is writable, no name component
 * over 255 bytes. Prints the one-line error; returns 0, 1 (runtime: the
 * folder) or 2 (usage: the name). */
int qi_app_check_output(const char *flag, const char *path);
/* -m / --diffusion-model / --text-encoder / --vae: 1 and the flag's value set
 * if f is one of them (gen_args or encode's own), else 0. */
int qi_app_component_flag(const char *f, const char *v, const char **model, const char **dit, const char **te,
                          const char **vae);
/* The model of a command given none of -m and the three files: the bundled
 * tiny model (saying so unless quiet); else model as given. */
const char *qi_app_model_or_default(const char *model, const char *dit, const char *te, const char *vae, int quiet);
/* Whether MODEL_DIR holds a Qwen-Image-Edit pipeline (model_index.json's
 * "_class_name" starts with QwenImageEdit); single files need --edit. */
int qi_app_model_is_edit(const char *model_dir);
int qi_cmd_inspect(int argc, char **argv);
/* inspect's screen for a LoRA file (inspect_lora.c): 1 when `path` reads as
 * a LoRA (printed), else 0 with the LoRA reader's reason in why. */
struct qi_st_set;
int qi_inspect_lora(const char *path, const struct qi_st_set *st, char *why, size_t why_cap);
int qi_cmd_generate(int argc, char **argv);
int qi_cmd_bench(int argc, char **argv);

/* ---- bench (bench.c, bench_edit.c) ---- */

/* The median of v[0..n) (sorts v). */
double qi_bench_median(double *v, int n);
/* A table row: printed on stdout, and into md (the -o table) when it is not NULL. */
void qi_bench_row(FILE *md, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void qi_bench_vrow(FILE *md, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

typedef struct qi_bench_edit_opts {
    int warmup, runs;          /* per row: warm-up calls, then the median of runs (1 … 64) */
    int picture_side;          /* the square reference picture's side (1024) */
    int output_side;           /* requested output side; 0: the pipeline's own (the picture's aspect at 1024²) */
    int64_t vl_area, vae_area; /* the Edit areas; 0: the pipeline's (384², 1024²) */
    FILE *md;                  /* the -o table, or NULL */
} qi_bench_edit_opts;

/* `bench --edit`: rows for one Edit-2509 request with one reference picture
 * at 4 and 8 steps (end to end, per step) and its prepare stages alone, on
 * stdout and into o->md. 0, or -1 with the reason in err[0..err_size). */
int qi_bench_edit(qi_engine *e, const qi_bench_edit_opts *o, char *err, size_t err_size);
/* `bench --only gemm` (bench_gemm.c): a linear of a GGUF --type weight through the block GEMM
 * against its bf16 expansion + cuBLASLt, at the transformer's weight shapes and the row counts the
 * models run, on stdout and into md; a row saying why when not CUDA or not a block type (qt: a
 * qi_dtype). 0, or -1 with the reason in err[0..err_size). */
struct qi_backend;
int qi_bench_block_gemm(struct qi_backend *be, int qt, int warmup, int runs, FILE *md, char *err, size_t err_size);
int qi_cmd_convert(int argc, char **argv);
int qi_cmd_serve(int argc, char **argv);

/* ---- generate's settings (generate.c parses them, params.c records them) ---- */

typedef struct gen_args {
    const char *model, *negative, *out, *scheduler, *save_latents, *device, *devices;
    const char *diffusion_model, *text_encoder, *vae; /* single files per component (NULL: from -m) */
    const char *mmproj; /* --mmproj: the vision tower of a GGUF text encoder (NULL: found beside it) */
    const char *prompts[QI_APP_MAX_PROMPTS];
    int n_prompts;
    const char *lora_path[QI_APP_MAX_LORAS];
    float lora_strength[QI_APP_MAX_LORAS];
    int n_loras;
    int lora_mode;     /* qi_lora_mode (--lora-mode) */
    long steps, width, height, batch, threads, max_seq_len;
    long random_weights;           /* --random-weights SEED: benchmarks only (every weight random) */
    size_t vram;                   /* --vram SIZE: device memory budget in bytes (0: what the GPU has free) */
    long long pinned;              /* --pinned SIZE: host memory pinned for streamed weights (-1: the default) */
    long batch_index, batch_size; /* --batch-index K/N: regenerate image K of N (0/0: off) */
    double cfg;
    unsigned long long seed;
    qi_rng_kind rng;
    int noise_dtype;
    int quiet;
    const char *from_parameters;   /* --from-parameters FILE */
    const char *image, *mask;      /* --image FILE, --mask FILE: img2img / inpainting (NULL: none) */
    double strength;               /* --strength S (0 < S <= 1; default 0.6) */
    int strength_given;            /* --strength was set (it needs --image) */
    uint8_t *image_rgb, *mask_rgb; /* the decoded pictures [h, w, 3] (qi_free_bytes) */
    int image_w, image_h, mask_w, mask_h;
    /* Qwen-Image-Edit: --image repeats (the pictures in order: image, then more_images) */
    const char *more_images[2];    /* the 2nd and 3rd --image */
    int n_more_images;
    uint8_t *more_rgb[2];
    int more_w[2], more_h[2];
    int edit;                      /* --edit, or the model folder is an Edit pipeline (see generate.c) */
    long edit_vl_area, edit_vae_area; /* --edit-vl-area / --edit-vae-area (tests only; 0: the pipeline's) */
    int size_given;                /* -W or -H was set (Edit: otherwise the last picture's aspect at 1024²) */
    char scheduler_hash[64];       /* of a --scheduler file: recorded, or (from parameters) to match */
    char *owned[12 + QI_APP_MAX_PROMPTS]; /* strings --from-parameters allocated */
    int n_owned;
} gen_args;

int qi_app_parse_lora_mode(const char *flag, const char *v, int *mode); /* --lora-mode: 0, or 2 after the message */
int qi_app_add_lora(const char *spec, gen_args *a); /* --lora FILE[:STRENGTH]: 0, or 2 after the message */

/* What the run learnt about one prompt before it ran (checks.c). */
typedef struct prompt_note {
    int tokens; /* the prompt's own tokens */
    int kept;   /* how many of them the model reads (< tokens: cut) */
} prompt_note;

/* ---- params.c: the `parameters` text of an image ---- */

/* Image `index` of a request of `count` images: its text (malloc'd, NULL on
 * out of memory). The format (README "Image metadata"): the prompt, an
 * optional "Negative prompt: …" line, and one line of "Key: value" pairs. */
char *qi_params_text(const gen_args *a, int index, int count, const prompt_note *note,
                     const char *scheduler_hash);
/* Parses such a text into a (over a's defaults; strings it allocates are
 * kept in a->owned). 0, or 2 after printing a usage error naming `source`. */
int qi_params_parse(const char *text, const char *source, gen_args *a, char *sched_hash, size_t hash_cap);
/* Reads the parameters text of a PNG or JPEG written by generate, or a text
 * file holding one; malloc'd, or NULL after printing why. */
char *qi_params_read(const char *path);
/* FNV-1a 64 of a file's bytes as "fnv1a64:<16 hex>" into out; 0 or -1. */
int qi_params_file_hash(const char *path, char *out, size_t cap);

/* ---- checks.c: what needs the model folder but no weights ---- */

/* Validates the scheduler (name, or the file: parsed, and the schedule for
 * these steps and size finite) and reads each prompt's token count with the
 * model's tokenizer (a prompt the model will not read whole gets a warning).
 * A scheduler file's hash goes into a->scheduler_hash; one already there
 * (from --from-parameters) must match it. notes: n_prompts entries. 0, or
 * the exit code after printing the error. */
int qi_app_precheck(gen_args *a, prompt_note *notes);
/* The transformer's and text encoder's configs read and bounded (no weights):
 * 0, or the exit code after printing the error. */
int qi_app_check_configs(const gen_args *a);
/* The scheduler part of it alone (cheap: no tokenizer): 0, or the exit code
 * after printing the error (qi_app_last_error holds it). */
int qi_app_precheck_schedule(gen_args *a);
/* -p and -n are valid UTF-8 (a usage error naming the flag otherwise): 0 or 2. */
int qi_app_check_text(const gen_args *a);

#endif

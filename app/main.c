/*
 * main.c — the `qwen-image` command: generate, tokenize, encode, bench.
 *
 * Exit codes: 0 success, 1 runtime failure (bad file, out of memory, …),
 * 2 usage error (bad flag or value), 130 interrupted (SIGINT, generate). Every error is one line on stderr that
 * names what was wrong and, where it helps, what to do.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "io/image.h"
#include "io/model_dir.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "engine/engine.h"
#include "qwen_image.h"

#ifndef QI_VERSION
#define QI_VERSION "unknown"
#endif
#ifndef QI_DEFAULT_MODEL
#define QI_DEFAULT_MODEL "tests/data/tiny-model"
#endif

_Thread_local char qi_app_last_error[1024];

int qi_app_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(qi_app_last_error, sizeof qi_app_last_error, fmt, ap);
    va_end(ap);
    fprintf(stderr, "qwen-image: %s (see qwen-image --help)\n", qi_app_last_error);
    return 2;
}

int qi_app_runtime_error(const char *msg) {
    snprintf(qi_app_last_error, sizeof qi_app_last_error, "%s", msg);
    fprintf(stderr, "qwen-image: error: %s\n", msg);
    return 1;
}

int qi_app_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(qi_app_last_error, sizeof qi_app_last_error, fmt, ap);
    va_end(ap);
    fprintf(stderr, "qwen-image: error: %s\n", qi_app_last_error);
    return 1;
}

int qi_app_exit_code(qi_status st) { return st == QI_OK ? 0 : st == QI_ERR_ARG ? 2 : 1; }

/* Strict number parsing: the whole string must be a number in range. */
int qi_app_parse_int(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return qi_app_usage_error("%s %s: expected an integer between %ld and %ld", flag, s, lo, hi);
    *out = v;
    return 0;
}

int qi_app_parse_float(const char *flag, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno) return qi_app_usage_error("%s %s: expected a number", flag, s);
    *out = v;
    return 0;
}

/* At most 4 threads per online core: more only slows a run down (a 1 s job
 * took 242 s with 4096 threads on 2 cores). */
int qi_app_parse_threads(const char *flag, const char *s, long *out) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    long v;
    if (qi_app_parse_int(flag, s, 1, 1L << 20, &v)) return 2;
    if (v > 4 * cores)
        return qi_app_usage_error("%s %s: at most %ld (4 x the %ld cores here); leave it out to use every core", flag,
                                  s, 4 * cores, cores);
    *out = v;
    return 0;
}

int qi_app_parse_size(const char *flag, const char *s, size_t *out) {
    char *end;
    double v = strtod(s, &end);
    double unit = 1;
    const char *units = "KMGT";
    const char *u = *end ? strchr(units, toupper((unsigned char)*end)) : NULL;
    if (u && *end) {
        for (const char *k = units; k <= u; k++) unit *= 1024;
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "ib") || !strcmp(end, "B") || !strcmp(end, "b")) end += strlen(end);
    }
    double bytes = v * unit;
    if (end == s || *end || !isfinite(v) || bytes < (double)(1 << 20) || bytes > 1e18)
        return qi_app_usage_error("%s %s: expected a memory size of at least 1M, e.g. 8G, 6G, 3000M or 1.5G "
                                  "(binary units: 1G = 1024 MiB)", flag, s);
    *out = (size_t)bytes;
    return 0;
}

int qi_app_parse_pinned(const char *flag, const char *s, long long *out) {
    char *end;
    double v = strtod(s, &end);
    size_t bytes = 0;
    if (end != s && v == 0 && (!*end || strchr("KkMmGgTt", *end))) { /* "0", "0G": nothing pinned */
        *out = 0;
        return 0;
    }
    if (qi_app_parse_size(flag, s, &bytes)) return 2; /* its message; 0 is the one size under 1M taken here */
    *out = (long long)bytes;
    return 0;
}

/* The first prefix of path that exists and is not a folder ("a/b" of
 * "a/b/c/out.png" when a/b is a file), into buf; 0 if none. */
static int file_above(const char *path, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", path);
    for (char *c = buf + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        struct stat st;
        if (stat(buf, &st) == 0 && !S_ISDIR(st.st_mode)) return 1;
        *c = '/';
    }
    return 0;
}

int qi_app_check_output(const char *flag, const char *path) {
    if (!*path) return qi_app_usage_error("%s: empty file name", flag);
    for (const char *c = path; *c;) {
        size_t n = strcspn(c, "/");
        if (n > NAME_MAX)
            return qi_app_usage_error("%s %.40s...: a name in the path is %zu bytes; file systems allow %d", flag, path,
                                      n, NAME_MAX);
        c += n + (c[n] == '/');
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return qi_app_usage_error("%s %s: is a folder; name a file in it (e.g. %s/out.png)", flag, path, path);
    char copy[4096], above[4096];
    if (strlen(path) >= sizeof copy) return qi_app_usage_error("%s: path over %zu bytes", flag, sizeof copy - 1);
    if (file_above(path, above, sizeof above)) {
        fprintf(stderr, "qwen-image: error: %s %s: '%s' is a file, not a folder\n", flag, path, above);
        return 1;
    }
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "qwen-image: error: %s %s: cannot write into folder '%s' (missing or not writable)\n", flag,
                path, dir);
        return 1;
    }
    return 0;
}

const char *qi_app_default_model(int quiet) {
    if (!quiet)
        fprintf(stderr, "qwen-image: no model given (-m DIR); using the bundled tiny random reference model "
                        "at %s: its images are coloured noise by design\n", QI_DEFAULT_MODEL);
    return QI_DEFAULT_MODEL;
}

int qi_app_component_flag(const char *f, const char *v, const char **model, const char **dit, const char **te,
                          const char **vae) {
    const char **slot = !strcmp(f, "-m") ? model : !strcmp(f, "--diffusion-model") ? dit
                      : !strcmp(f, "--text-encoder") ? te : !strcmp(f, "--vae") ? vae : NULL;
    if (!slot) return 0;
    *slot = v;
    return 1;
}

const char *qi_app_model_or_default(const char *model, const char *dit, const char *te, const char *vae, int quiet) {
    return model || dit || te || vae ? model : qi_app_default_model(quiet);
}

/* The tokenizer of -m / --text-encoder (the GGUF's, the folder's or the installed one). */
static qi_status open_tokenizer(const char *model, const char *te, qi_tokenizer **tok, qi_error *err) {
    qi_model_files files;
    qi_model_paths paths = {model, NULL, te, NULL, NULL};
    qi_status st = qi_model_files_resolve(&paths, &files, err);
    if (st == QI_ERR_ARG && !model) { /* only the tokenizer is needed: a lone --text-encoder is enough */
        memset(&files, 0, sizeof files);
        snprintf(files.path[QI_COMPONENT_TEXT_ENCODER], QI_PATH_MAX, "%s", te ? te : "");
        st = QI_OK;
    }
    return st ? st : qi_model_files_tokenizer(&files, tok, NULL, 0, err);
}

/* ---- tokenize --------------------------------------------------------------------- */

static int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *te = NULL;
    int templ = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: qwen-image tokenize [-m MODEL_DIR] [--text-encoder FILE] [--template] TEXT\n\n"
                   "Prints the token ids of TEXT on one line (the model's tokenizer).\n"
                   "  -m DIR       Qwen/Qwen-Image diffusers folder (default: the bundled tiny test model)\n"
                   "  --text-encoder F  a llama.cpp qwen2vl .gguf: its own tokenizer\n"
                   "  --template   wrap TEXT in the prompt template the pipeline uses\n");
            return 0;
        }
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--text-encoder") && i + 1 < argc) te = argv[++i];
        else if (!strcmp(argv[i], "--template")) templ = 1;
        else if (argv[i][0] == '-' && argv[i][1]) return qi_app_usage_error("tokenize: unknown option %s", argv[i]);
        else if (!text) text = argv[i];
        else return qi_app_usage_error("tokenize: one TEXT argument expected, got another: %s", argv[i]);
    }
    if (!text) return qi_app_usage_error("tokenize: usage: qwen-image tokenize -m MODEL_DIR [--template] TEXT");
    if (strlen(text) > QI_PROMPT_MAX_BYTES)
        return qi_app_usage_error("tokenize: TEXT is %zu bytes; at most %d (1 MiB)", strlen(text), QI_PROMPT_MAX_BYTES);
    model = qi_app_model_or_default(model, NULL, te, NULL, 1);
    qi_error err = {{0}};
    qi_tokenizer *tok;
    qi_status st = open_tokenizer(model, te, &tok, &err);
    if (st) return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    char *wrapped = NULL;
    if (templ && (st = qi_prompt_template(text, &wrapped, &err))) {
        qi_tokenizer_free(tok);
        return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    }
    int32_t *ids = NULL;
    int n = 0;
    st = qi_tokenizer_encode(tok, wrapped ? wrapped : text, &ids, &n, &err);
    free(wrapped);
    qi_tokenizer_free(tok);
    if (st) return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}

/* ---- encode ----------------------------------------------------------------------- */

static void encode_usage(void) {
    printf("usage: qwen-image encode [-m MODEL_DIR] [--text-encoder FILE] -p TEXT [-p TEXT ...] -o OUT.safetensors "
           "[options]\n\n"
           "Writes the text encoder's output: prompt_embeds [n, L, D] float32 and prompt_embeds_mask [n, L] int32.\n"
           "  -m DIR                    Qwen/Qwen-Image diffusers folder or folder of split files (default: the\n"
           "                            bundled tiny test model)\n"
           "  --text-encoder FILE       the text encoder file instead of -m's (ComfyUI .safetensors, llama.cpp\n"
           "                            qwen2vl .gguf, which also gives the tokenizer); -m is then optional\n"
           "  -p TEXT                   a prompt (repeat for a batch; at most 256)\n"
           "  -o FILE                   the .safetensors file to write (its folder must exist)\n"
           "  --max-sequence-length N   text tokens kept per prompt, 1..1024 (default 512)\n"
           "  --device D                cpu | cuda | cuda:N (default cpu)\n"
           "  --vram SIZE               device memory to stay within, e.g. 3G: the layers are streamed from host\n"
           "                            memory when the whole encoder does not fit\n"
           "  --threads N               CPU threads (default: all cores; at most 4 per core)\n");
}

static int cmd_encode(int argc, char **argv) {
    const char *model = NULL, *outp = NULL, *te_file = NULL, *device = "cpu";
    const char *prompts[256];
    int n = 0, threads = 0, stream = 0;
    size_t vram = 0;
    long max_len = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return encode_usage(), 0;
        if (!strcmp(a, "-m") && has) model = argv[++i];
        else if (!strcmp(a, "--text-encoder") && has) te_file = argv[++i];
        else if (!strcmp(a, "-p") && has) {
            size_t len = strlen(argv[i + 1]), bad = qi_utf8_first_invalid(argv[i + 1], len);
            if (len > QI_PROMPT_MAX_BYTES)
                return qi_app_usage_error("-p %d: %zu bytes; at most %d (1 MiB)", n, len, QI_PROMPT_MAX_BYTES);
            if (bad != SIZE_MAX) return qi_app_usage_error("-p %d: invalid UTF-8 at byte %zu", n, bad);
            if (n == 256) return qi_app_usage_error("encode: at most 256 prompts");
            prompts[n++] = argv[++i];
        } else if (!strcmp(a, "-o") && has) outp = argv[++i];
        else if (!strcmp(a, "--max-sequence-length") && has) {
            if (qi_app_parse_int(a, argv[++i], 1, 1024, &max_len)) return 2;
        } else if (!strcmp(a, "--threads") && has) {
            long v;
            if (qi_app_parse_threads(a, argv[++i], &v)) return 2;
            threads = (int)v;
        } else if (!strcmp(a, "--device") && has) device = argv[++i];
        else if (!strcmp(a, "--vram") && has) {
            if (qi_app_parse_size(a, argv[++i], &vram)) return 2;
        } else return qi_app_usage_error("encode: unknown or incomplete option %s", a);
    }
    if (!n || !outp)
        return qi_app_usage_error("encode: usage: qwen-image encode -m MODEL_DIR -p TEXT [-p TEXT …] -o OUT.safetensors");
    int rc = qi_app_check_output("-o", outp);
    if (rc) return rc;
    model = qi_app_model_or_default(model, NULL, te_file, NULL, 0);
    qi_error err = {{0}};
    qi_model_files files;
    qi_model_paths paths = {model, NULL, te_file, NULL, NULL};
    qi_status st = qi_model_files_resolve(&paths, &files, &err);
    if (st == QI_ERR_ARG && !model && te_file) { /* the text encoder is all encode needs */
        memset(&files, 0, sizeof files);
        snprintf(files.path[QI_COMPONENT_TEXT_ENCODER], QI_PATH_MAX, "%s", te_file);
        st = QI_OK;
    }
    if (st) return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    qi_backend *be = NULL;
    qi_tokenizer *tok = NULL;
    qi_source *te_src = NULL;
    qi_text_encoder *te = NULL;
    qi_prompt_batch pb = {0};
    float *emb = NULL;
    int32_t *mask = NULL;
    int L = 0;
    if ((st = qi_backend_create(device, threads, 0, &be, &err))) goto fail;
    if ((st = qi_model_files_tokenizer(&files, &tok, NULL, 0, &err))) goto fail;
    if ((st = qi_model_files_open_source(&files, QI_COMPONENT_TEXT_ENCODER, &te_src, &err))) goto fail;
    if ((st = qi_plan_text_encoder(be, te_src, vram, n, (int)max_len, &stream, &err))) goto fail;
    if ((st = qi_text_encoder_load_resident(te_src, be, stream, &te, &err))) goto fail;
    if ((st = qi_prompt_tokenize(tok, prompts, n, (int)max_len, &pb, &err))) goto fail;
    if ((st = qi_text_encoder_encode(te, pb.ids, pb.mask, pb.batch, pb.seq_len, (int)max_len, &emb, &mask, &L,
                                     &err)))
        goto fail;
    int D = qi_text_encoder_dim(te);
    qi_st_write_item items[2] = {
        {.name = "prompt_embeds", .dtype = QI_F32, .ndim = 3, .shape = {n, L, D}, .data = emb},
        {.name = "prompt_embeds_mask", .dtype = QI_I32, .ndim = 2, .shape = {n, L}, .data = mask},
    };
    st = qi_st_write(outp, items, 2, &err);
fail:
    free(emb);
    free(mask);
    if (pb.ids) qi_prompt_batch_free(&pb);
    if (te) qi_text_encoder_free(te);
    qi_source_close(te_src);
    if (tok) qi_tokenizer_free(tok);
    if (be) be->ops->destroy(be);
    if (st) return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    return 0;
}

/* ---- main ------------------------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(f,
            "qwen-image — text-to-image with Qwen-Image in C\n\n"
            "usage:\n"
            "  qwen-image generate [-m MODEL_DIR] -p TEXT [options]   make an image (see generate --help)\n"
            "  qwen-image serve [-m MODEL_DIR] [--port N] [options]   HTTP API + web page (see serve --help)\n"
            "  qwen-image tokenize -m MODEL_DIR [--template] TEXT     print token ids\n"
            "  qwen-image encode -m MODEL_DIR -p TEXT [-p TEXT …] -o OUT.safetensors\n"
            "                                                         write prompt_embeds + mask\n"
            "  qwen-image inspect FILE [--tensor NAME -o OUT.safetensors]\n"
            "                                                         what a weight file is; one tensor as float32\n"
            "  qwen-image convert (-m DIR | --diffusion-model FILE) [--lora FILE[:S]]... --type TYPE -o OUT\n"
            "                                                         the transformer (LoRAs fused) as GGUF or scaled fp8\n"
            "  qwen-image bench [options]                             full-size speed test (CUDA)\n"
            "  qwen-image --version\n\n"
            "Each command takes --help. Exit codes: 0 done, 1 runtime error, 2 usage error, 130 interrupted.\n"
            "MODEL_DIR is a Qwen/Qwen-Image diffusers folder (model_index.json, transformer/, "
            "text_encoder/, vae/, tokenizer/, scheduler/)\nor a folder of ComfyUI-style split files; "
            "--diffusion-model, --text-encoder and --vae give components as files.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("qwen-image %s\n", QI_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "generate")) return qi_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return qi_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return qi_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return qi_cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "convert")) return qi_cmd_convert(argc - 1, argv + 1);
    return qi_app_usage_error("unknown command '%s'", cmd);
}

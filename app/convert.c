/*
 * convert.c — `qwen-image convert (-m FOLDER | --diffusion-model FILE)
 * [--lora FILE[:S]]… --type TYPE -o OUT.gguf|OUT.safetensors`: the
 * transformer from any source the engine reads, LoRAs fused in first, written
 * as a GGUF (city96's layout) or a scaled-fp8 safetensors (ComfyUI's
 * per-tensor or LightX2V's per-row convention).
 *
 * One tensor at a time: read as float32 (dequantised and scaled by the
 * source), LoRA deltas added (model/lora.c, as the loader fuses them), checked
 * finite, quantised row by row (threaded) and streamed out; peak memory is the
 * largest tensor in float32 plus its output, never the model. The file is
 * written under a temporary name and renamed when complete.
 *
 * Which tensors get TYPE (city96's rule): 2-D weights of more than 1024
 * elements; 1-D and small tensors stay F32. A row that is not a whole number
 * of TYPE's blocks (the K types need 256) takes the nearest 32-element type
 * (Q6_K → Q8_0, Q5_K → Q5_1, Q4_K → Q5_0, Q3_K → Q4_1, Q2_K → Q4_0, as
 * llama.cpp falls back), then F16; the progress lines count them.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include "app.h"
#include "base/quant.h"
#include "base/types.h"
#include "io/gguf_write.h"
#include "io/model_files.h"
#include "io/safetensors_stream.h"
#include "io/source.h"
#include "model/lora.h"

typedef enum out_kind { OUT_GGUF, OUT_FP8, OUT_FP8_ROW } out_kind;

typedef struct conv_args {
    const char *model, *dit, *out, *type_name;
    const char *lora_path[QI_APP_MAX_LORAS];
    float lora_strength[QI_APP_MAX_LORAS];
    int n_loras, quiet;
    out_kind kind;
    qi_dtype type; /* GGUF: the weights' type */
} conv_args;

typedef struct conv_ctx {
    const conv_args *a;
    qi_source *src;
    qi_lora_binding *lora;
    qi_gguf_writer *gw;
    qi_st_stream *sw;
    qi_dtype *plan; /* per source tensor: its output type */
} conv_ctx;

static void usage(FILE *f) {
    fprintf(f, "usage: qwen-image convert (-m FOLDER | --diffusion-model FILE) [--lora FILE[:S]]... --type TYPE\n"
               "                          -o OUT.gguf|OUT.safetensors [--quiet]\n\n"
               "Writes the transformer with the LoRAs fused in (strength S, default 1).\n"
               "TYPE: Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, Q5_0, Q5_1, Q4_0, Q4_1, F16, BF16, F32 (a .gguf in\n"
               "city96's layout), fp8 (e4m3fn with a per-tensor scale_weight and the scaled_fp8 marker, as\n"
               "ComfyUI) or fp8-row (e4m3fn with a per-output-channel weight_scale [out, 1], as LightX2V)\n"
               "(a .safetensors). 1-D and small tensors stay F32.\n");
}

/* --type: 0 and a->kind/type set, or 2 after the message. */
static int parse_type(const char *v, conv_args *a) {
    if (!strcasecmp(v, "fp8")) return a->kind = OUT_FP8, 0;
    if (!strcasecmp(v, "fp8-row")) return a->kind = OUT_FP8_ROW, 0;
    for (int t = 0; t < QI_DTYPE_COUNT; t++)
        if (qi_quant_supported((qi_dtype)t) && !strcasecmp(v, qi_dtype_name((qi_dtype)t)))
            return a->kind = OUT_GGUF, a->type = (qi_dtype)t, 0;
    return qi_app_usage_error("--type %s: unknown type; one of Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, Q5_0, Q5_1, "
                              "Q4_0, Q4_1, F16, BF16, F32, fp8, fp8-row", v);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int parse_args(int argc, char **argv, conv_args *a) {
    gen_args loras; /* qi_app_add_lora's parser, reused */
    memset(&loras, 0, sizeof loras);
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) return usage(stdout), -1;
        if (!strcmp(f, "--quiet")) {
            a->quiet = 1;
            continue;
        }
        if (i + 1 >= argc) return qi_app_usage_error("%s needs a value", f);
        const char *v = argv[++i];
        if (!strcmp(f, "-m")) a->model = v;
        else if (!strcmp(f, "--diffusion-model")) a->dit = v;
        else if (!strcmp(f, "-o")) a->out = v;
        else if (!strcmp(f, "--type")) {
            a->type_name = v;
            if (parse_type(v, a)) return 2;
        } else if (!strcmp(f, "--lora")) {
            if (qi_app_add_lora(v, &loras)) return 2;
        } else return qi_app_usage_error("convert: unknown flag '%s'", f);
    }
    for (int i = 0; i < loras.n_loras; i++)
        a->lora_path[i] = loras.lora_path[i], a->lora_strength[i] = loras.lora_strength[i];
    a->n_loras = loras.n_loras;
    if (!a->model == !a->dit) return qi_app_usage_error("convert: give exactly one of -m FOLDER and --diffusion-model FILE");
    if (!a->type_name) return qi_app_usage_error("convert: --type TYPE is required");
    if (!a->out) return qi_app_usage_error("convert: -o OUT.gguf or OUT.safetensors is required");
    int gguf_out = ends_with(a->out, ".gguf"), st_out = ends_with(a->out, ".safetensors");
    if (a->kind == OUT_GGUF && !gguf_out)
        return qi_app_usage_error("-o %s: --type %s writes a GGUF; name the output *.gguf", a->out, a->type_name);
    if (a->kind != OUT_GGUF && !st_out)
        return qi_app_usage_error("-o %s: --type %s writes a safetensors file; name the output *.safetensors", a->out,
                                  a->type_name);
    return qi_app_check_output("-o", a->out);
}

/* The transformer's source: --diffusion-model as given; -m FOLDER: its
 * transformer/ (diffusers), the folder itself (a component folder), or the
 * transformer found among split files. */
static qi_status open_source(const conv_args *a, qi_source **out, qi_error *err) {
    if (a->dit) return qi_source_open(a->dit, QI_COMPONENT_TRANSFORMER, out, err);
    char sub[QI_PATH_MAX], cfg[QI_PATH_MAX];
    if (qi_path_join(sub, sizeof sub, a->model, "transformer") == 0 && qi_dir_exists(sub))
        return qi_source_open(sub, QI_COMPONENT_TRANSFORMER, out, err);
    if (qi_path_join(cfg, sizeof cfg, a->model, "config.json") == 0 && qi_file_exists(cfg))
        return qi_source_open(a->model, QI_COMPONENT_TRANSFORMER, out, err);
    qi_model_paths p = {.model = a->model};
    qi_model_files f;
    qi_status st = qi_model_files_resolve(&p, &f, err);
    if (st == QI_OK || f.path[QI_COMPONENT_TRANSFORMER][0])
        return qi_source_open(f.path[QI_COMPONENT_TRANSFORMER], QI_COMPONENT_TRANSFORMER, out, err);
    return st;
}

/* ---- what each tensor becomes ------------------------------------------------------ */

static qi_dtype fallback(qi_dtype t) {
    switch (t) {
    case QI_Q6_K: return QI_Q8_0;
    case QI_Q5_K: return QI_Q5_1;
    case QI_Q4_K: return QI_Q5_0;
    case QI_Q3_K: return QI_Q4_1;
    case QI_Q2_K: return QI_Q4_0;
    default: return QI_F16;
    }
}

static int64_t numel_of(const qi_source_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* Whether a tensor is a weight to quantise: 2-D float, > 1024 elements. */
static int is_big_weight(const qi_source_tensor *t) {
    return t->ndim == 2 && qi_dtype_is_float(t->dtype) && numel_of(t) > 1024;
}

static qi_dtype plan_one(const conv_args *a, const qi_source_tensor *t) {
    if (!qi_dtype_is_float(t->dtype)) return t->dtype; /* copied as stored */
    if (!is_big_weight(t)) return QI_F32;
    if (a->kind != OUT_GGUF) return QI_F8_E4M3;
    qi_dtype d = a->type;
    while (qi_row_bytes(d, t->shape[1]) < 0) d = fallback(d);
    return d;
}

/* ---- one tensor ---------------------------------------------------------------------- */

/* The tensor's float32 values with the LoRAs fused in (malloc'd). */
static qi_status read_fused(conv_ctx *c, const qi_source_tensor *t, float **out, qi_error *err) {
    int64_t n = numel_of(t);
    float *w = malloc(sizeof *w * (size_t)(n ? n : 1));
    if (!w) return qi_fail(err, QI_ERR_NOMEM, "%s: tensor '%s': out of memory for %lld floats", t->file, t->name,
                           (long long)n);
    qi_status st = qi_source_tensor_to_f32(t, w, err);
    if (st == QI_OK && t->ndim == 2 && qi_lora_binding_targets(c->lora, t->name))
        st = qi_lora_binding_fuse(c->lora, t->name, w, t->shape[0], t->shape[1], err);
    for (int64_t i = 0; st == QI_OK && i < n; i++)
        if (!isfinite(w[i]))
            st = qi_fail(err, QI_ERR_FORMAT, "%s: tensor '%s' element %lld is not finite%s", t->file, t->name,
                         (long long)i, c->a->n_loras ? " (after fusing the LoRAs)" : "");
    if (st) free(w), w = NULL;
    *out = w;
    return st;
}

/* rows × cols floats → type, rows in parallel. */
static void quantize_rows(qi_dtype type, const float *w, uint8_t *o, int64_t rows, int64_t cols) {
    int64_t rb = qi_row_bytes(type, cols);
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; r++) qi_quantize(type, w + r * cols, o + r * rb, cols);
}

static qi_status put_bytes(conv_ctx *c, const void *p, size_t n, qi_error *err) {
    return c->gw ? qi_gguf_writer_write(c->gw, p, n, err) : qi_st_stream_write(c->sw, p, n, err);
}

/* fp8 bytes and the scale(s): one for the tensor or one per row (amax / 448;
 * 1 for a zero row, which any scale reproduces). Scales go to `scales`. */
static void quantize_fp8(out_kind kind, const float *w, uint8_t *o, int64_t rows, int64_t cols, float *scales) {
    if (kind == OUT_FP8) {
        float amax = 0;
        for (int64_t i = 0; i < rows * cols; i++) amax = fmaxf(amax, fabsf(w[i]));
        scales[0] = amax > 0 ? amax / 448.0f : 1.0f;
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; r++) {
        float s = scales[0];
        if (kind == OUT_FP8_ROW) {
            float amax = 0;
            for (int64_t k = 0; k < cols; k++) amax = fmaxf(amax, fabsf(w[r * cols + k]));
            s = scales[r] = amax > 0 ? amax / 448.0f : 1.0f;
        }
        qi_quantize_f8e4m3(w + r * cols, o + r * cols, cols, s);
    }
}

/* Writes tensor i's data (its scale tensors are written after all tensors:
 * see declare()). For fp8 the scales land in *scales (malloc'd). */
static qi_status convert_one(conv_ctx *c, const qi_source_tensor *t, qi_dtype type, float **scales, qi_error *err) {
    if (!qi_dtype_is_float(t->dtype)) return put_bytes(c, t->data, t->nbytes, err);
    float *w = NULL;
    qi_status st = read_fused(c, t, &w, err);
    if (st) return st;
    int64_t n = numel_of(t), cols = t->ndim ? t->shape[t->ndim - 1] : 1, rows = cols ? n / cols : 0;
    size_t nbytes;
    st = qi_shape_bytes(type, t->ndim, t->shape, &nbytes, t->name, err);
    uint8_t *o = st ? NULL : malloc(nbytes ? nbytes : 1);
    if (!st && !o) st = qi_fail(err, QI_ERR_NOMEM, "tensor '%s': out of memory", t->name);
    if (!st && type == QI_F8_E4M3) {
        *scales = malloc(sizeof **scales * (size_t)(rows ? rows : 1));
        if (!*scales) st = qi_fail(err, QI_ERR_NOMEM, "tensor '%s': out of memory", t->name);
        else quantize_fp8(c->a->kind, w, o, rows, cols, *scales);
    } else if (!st) {
        quantize_rows(type, w, o, rows, cols);
    }
    if (!st) st = put_bytes(c, o, nbytes, err);
    free(o);
    free(w);
    return st;
}

/* ---- the file ------------------------------------------------------------------------ */

/* The scale tensor's name for weight `name` (`<module>.weight`). */
static void scale_name(const conv_args *a, const char *name, char *out, size_t cap) {
    size_t k = strlen(name) - (ends_with(name, ".weight") ? 7 : 0);
    snprintf(out, cap, "%.*s.%s", (int)k, name, a->kind == OUT_FP8 ? "scale_weight" : "weight_scale");
}

/* Declares every tensor (and, for fp8, each scale after its weights and the
 * marker) in the writer. */
static qi_status declare(conv_ctx *c, qi_error *err) {
    int n = qi_source_tensor_count(c->src);
    qi_status st = QI_OK;
    for (int i = 0; i < n && st == QI_OK; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(c->src, i, &t);
        c->plan[i] = plan_one(c->a, &t);
        if (c->gw) st = qi_gguf_writer_add_tensor(c->gw, t.name, c->plan[i], t.ndim, t.shape, err);
        else st = qi_st_stream_add(c->sw, t.name, c->plan[i], t.ndim, t.shape, err);
    }
    for (int i = 0; c->sw && i < n && st == QI_OK; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(c->src, i, &t);
        if (c->plan[i] != QI_F8_E4M3) continue;
        char sn[1024];
        scale_name(c->a, t.name, sn, sizeof sn);
        int64_t shape[2] = {t.shape[0], 1};
        st = qi_st_stream_add(c->sw, sn, QI_F32, c->a->kind == OUT_FP8 ? 0 : 2, shape, err);
    }
    if (c->sw && c->a->kind == OUT_FP8 && st == QI_OK)
        st = qi_st_stream_add(c->sw, "scaled_fp8", QI_F8_E4M3, 1, (int64_t[]){2}, err);
    return st;
}

/* "transformer_blocks.7" or "img_in": the group a tensor's progress line counts in. */
static void group_of(const char *name, char *out, size_t cap) {
    const char *p = strchr(name, '.');
    if (!strncmp(name, "transformer_blocks.", 19)) p = strchr(name + 19, '.');
    snprintf(out, cap, "%.*s", (int)(p ? p - name : (long)strlen(name)), name);
}

static qi_status write_all(conv_ctx *c, const char *tmp, qi_error *err) {
    int n = qi_source_tensor_count(c->src);
    float **scales = calloc((size_t)(n ? n : 1), sizeof *scales);
    int hist[QI_DTYPE_COUNT] = {0};
    char group[256] = "", g[256];
    double t0 = qi_now_s();
    qi_status st = scales ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "out of memory");
    if (!st) st = c->gw ? qi_gguf_writer_begin(c->gw, tmp, err) : qi_st_stream_begin(c->sw, tmp, err);
    for (int i = 0; i < n && st == QI_OK; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(c->src, i, &t);
        group_of(t.name, g, sizeof g);
        if (strcmp(g, group) && group[0] && !c->a->quiet)
            fprintf(stderr, "convert: %s done (%d/%d tensors, %.1f s)\n", group, i, n, qi_now_s() - t0);
        snprintf(group, sizeof group, "%s", g);
        st = convert_one(c, &t, c->plan[i], &scales[i], err);
        hist[c->plan[i]]++;
    }
    if (st == QI_OK && !c->a->quiet) fprintf(stderr, "convert: %s done (%d/%d tensors, %.1f s)\n", group, n, n, qi_now_s() - t0);
    for (int i = 0; c->sw && i < n && st == QI_OK; i++) {
        if (c->plan[i] != QI_F8_E4M3) continue;
        qi_source_tensor t;
        qi_source_tensor_at(c->src, i, &t);
        st = put_bytes(c, scales[i], sizeof(float) * (size_t)(c->a->kind == OUT_FP8 ? 1 : t.shape[0]), err);
    }
    if (c->sw && c->a->kind == OUT_FP8 && st == QI_OK) st = put_bytes(c, (uint8_t[2]){0, 0}, 2, err);
    if (st == QI_OK) st = c->gw ? qi_gguf_writer_end(c->gw, err) : qi_st_stream_end(c->sw, err);
    if (st == QI_OK && !c->a->quiet) {
        fprintf(stderr, "convert: %d tensors:", n);
        for (int t = 0; t < QI_DTYPE_COUNT; t++)
            if (hist[t]) fprintf(stderr, " %s %d", qi_dtype_name((qi_dtype)t), hist[t]);
        fprintf(stderr, "\n");
    }
    for (int i = 0; scales && i < n; i++) free(scales[i]);
    free(scales);
    return st;
}

static uint32_t file_type(qi_dtype t) { /* llama.cpp's general.file_type ids (informational) */
    switch (t) {
    case QI_F32: return 0;
    case QI_F16: return 1;
    case QI_Q4_0: return 2;
    case QI_Q4_1: return 3;
    case QI_Q8_0: return 7;
    case QI_Q5_0: return 8;
    case QI_Q5_1: return 9;
    case QI_Q2_K: return 10;
    case QI_Q3_K: return 11;
    case QI_Q4_K: return 14;
    case QI_Q5_K: return 16;
    case QI_Q6_K: return 18;
    case QI_BF16: return 32;
    default: return 0;
    }
}

static qi_status run(const conv_args *a, const char *tmp, qi_error *err) {
    conv_ctx c = {.a = a};
    qi_lora_set *set = NULL;
    qi_status st = open_source(a, &c.src, err);
    for (int i = 0; st == QI_OK && i < a->n_loras; i++)
        st = qi_lora_set_add(&set, a->lora_path[i], a->lora_strength[i], err);
    int n = st ? 0 : qi_source_tensor_count(c.src);
    const char **names = st ? NULL : malloc(sizeof *names * (size_t)(n ? n : 1));
    c.plan = st ? NULL : calloc((size_t)(n ? n : 1), sizeof *c.plan);
    if (!st && (!names || !c.plan)) st = qi_fail(err, QI_ERR_NOMEM, "out of memory");
    for (int i = 0; st == QI_OK && i < n; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(c.src, i, &t);
        names[i] = t.name;
    }
    if (st == QI_OK) st = qi_lora_bind(set, names, n, &c.lora, err);
    if (st == QI_OK && a->kind == OUT_GGUF) {
        st = qi_gguf_writer_new(&c.gw, err);
        if (!st) st = qi_gguf_writer_set_string(c.gw, "general.architecture", "qwen_image", err);
        if (!st) st = qi_gguf_writer_set_u32(c.gw, "general.quantization_version", 2, err);
        if (!st) st = qi_gguf_writer_set_u32(c.gw, "general.file_type", file_type(a->type), err);
    } else if (st == QI_OK) {
        st = qi_st_stream_new(&c.sw, err);
    }
    if (st == QI_OK) st = declare(&c, err);
    if (st == QI_OK && !a->quiet)
        fprintf(stderr, "convert: %s (%s, %d tensors)%s → %s as %s\n", qi_source_path(c.src), qi_source_kind(c.src), n,
                a->n_loras ? " + LoRA" : "", a->out, a->type_name);
    if (st == QI_OK) st = write_all(&c, tmp, err);
    qi_gguf_writer_free(c.gw);
    qi_st_stream_free(c.sw);
    qi_lora_binding_free(c.lora);
    qi_lora_set_free(set);
    free(names);
    free(c.plan);
    qi_source_close(c.src);
    return st;
}

int qi_cmd_convert(int argc, char **argv) {
    conv_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    for (int i = 0; i < a.n_loras; i++)
        if (access(a.lora_path[i], R_OK) != 0) {
            fprintf(stderr, "qwen-image: error: --lora %s: cannot read the file\n", a.lora_path[i]);
            return 1;
        }
    char tmp[QI_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", a.out, (long)getpid());
    qi_error err = {{0}};
    qi_status st = run(&a, tmp, &err);
    if (st == QI_OK && rename(tmp, a.out) != 0)
        st = qi_fail(&err, QI_ERR_IO, "-o %s: cannot rename the finished file into place", a.out);
    if (st) {
        unlink(tmp);
        return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    }
    if (!a.quiet) fprintf(stderr, "convert: wrote %s\n", a.out);
    return 0;
}

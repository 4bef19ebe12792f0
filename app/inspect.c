/*
 * inspect.c — `qwen-image inspect FILE [--tensor NAME -o OUT.safetensors]`:
 * what a weight file is, on one screen (format, component, architecture,
 * tensor count, types histogram, total size, scale convention, prefix,
 * naming), read from the container itself so that files the loaders refuse
 * (scaled fp8 before its support, mmproj files) are described too; LoRAs
 * get their own screen (inspect_lora.c);
 * and one tensor written out dequantised to float32 under its name.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "base/types.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/tokenizer.h"

/* One tensor of either container, as inspect needs it. */
typedef struct any_tensor {
    const char *name;
    qi_dtype dtype;
    int ndim;
    int64_t shape[8];
    const void *data;
    size_t nbytes;
} any_tensor;

typedef struct container {
    qi_gguf_file *gguf;
    qi_st_set *st;
    int n;
} container;

static void tensor_at(const container *c, int i, any_tensor *t) {
    memset(t, 0, sizeof *t);
    if (c->gguf) {
        const qi_gguf_tensor *g = qi_gguf_tensor_at(c->gguf, i);
        *t = (any_tensor){g->name, g->dtype, g->ndim, {0}, g->data, g->nbytes};
        for (int d = 0; d < g->ndim; d++) t->shape[d] = g->shape[d];
    } else {
        const qi_st_tensor *s = c->st->index[i];
        *t = (any_tensor){s->name, s->dtype, s->ndim, {0}, s->data, s->nbytes};
        for (int d = 0; d < s->ndim && d < 8; d++) t->shape[d] = s->shape[d];
    }
}

static int has_name(const void *ctx, const char *name) {
    const container *c = ctx;
    return c->gguf ? qi_gguf_find(c->gguf, name) != NULL : qi_st_find(c->st, name) != NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The fp8 scale convention of spec B.5.2, from the tensor names. */
static const char *scale_convention(const container *c, int *n_scales) {
    int scale_weight = 0, weight_scale_row = 0, weight_scale = 0, comfy_quant = 0, marker = 0;
    for (int i = 0; i < c->n; i++) {
        any_tensor t;
        tensor_at(c, i, &t);
        const char *base = strrchr(t.name, '.');
        if (!strcmp(base ? base + 1 : t.name, "scaled_fp8")) marker = 1;
        if (ends_with(t.name, ".scale_weight")) scale_weight++;
        if (ends_with(t.name, ".comfy_quant")) comfy_quant++;
        if (ends_with(t.name, ".weight_scale")) {
            int64_t numel = 1;
            for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
            if (numel > 1) weight_scale_row++;
            else weight_scale++;
        }
    }
    *n_scales = scale_weight + weight_scale_row + weight_scale;
    if (comfy_quant) return "ComfyUI comfy_quant (per-layer JSON + weight_scale)";
    if (scale_weight) return marker ? "per-tensor scale_weight + scaled_fp8 marker (ComfyUI legacy / LightX2V comfyui)"
                                    : "per-tensor scale_weight";
    if (weight_scale_row) return "per-output-channel weight_scale [out, 1] (LightX2V native)";
    if (weight_scale) return "per-tensor weight_scale";
    return "none";
}

/* "840 Q4_K, 6 BF16, 1087 F32", most frequent first. */
static void type_histogram(const container *c, char *out, size_t cap, double *bytes) {
    int count[QI_DTYPE_COUNT] = {0};
    *bytes = 0;
    for (int i = 0; i < c->n; i++) {
        any_tensor t;
        tensor_at(c, i, &t);
        if (t.dtype >= 0 && t.dtype < QI_DTYPE_COUNT) count[t.dtype]++;
        *bytes += (double)t.nbytes;
    }
    size_t len = 0;
    out[0] = 0;
    for (;;) {
        int best = -1;
        for (int k = 0; k < QI_DTYPE_COUNT; k++)
            if (count[k] && (best < 0 || count[k] > count[best])) best = k;
        if (best < 0 || len >= cap) break;
        len += (size_t)snprintf(out + len, cap - len, "%s%d %s", len ? ", " : "", count[best],
                                qi_dtype_name((qi_dtype)best));
        count[best] = 0;
    }
}

static const char *component_text(int mask) {
    static char buf[96];
    buf[0] = 0;
    for (int c = QI_COMPONENT_TEXT_ENCODER; c < QI_COMPONENT_COUNT; c++)
        if (mask & (1 << c))
            snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", buf[0] ? " + " : "",
                     qi_component_name((qi_component)c));
    return buf[0] ? buf : "none recognised (not a Qwen-Image transformer, text encoder or VAE)";
}

/* The architecture: GGUF's general.architecture, else what the names say. */
static void architecture(const container *c, int mask, char *out, size_t cap) {
    const char *arch;
    size_t len;
    qi_error ignored;
    if (c->gguf && qi_gguf_get_string(c->gguf, "general.architecture", &arch, &len, &ignored) == QI_OK) {
        snprintf(out, cap, "%.*s (general.architecture)", (int)(len < 64 ? len : 64), arch);
        return;
    }
    if (mask & (1 << QI_COMPONENT_TRANSFORMER)) snprintf(out, cap, "Qwen-Image MMDiT (QwenImageTransformer2DModel)");
    else if (mask & (1 << QI_COMPONENT_TEXT_ENCODER)) snprintf(out, cap, "Qwen2.5-VL (language model)");
    else if (mask & (1 << QI_COMPONENT_VAE))
        snprintf(out, cap, has_name(c, QI_WAN22_VAE_ANCHOR) ? "Wan 2.2 VAE (not Qwen-Image's)"
                                                            : "Wan-style VAE (AutoencoderKLQwenImage)");
    else snprintf(out, cap, "unknown");
}

static void print_summary(const char *path, const container *c, int mask, const char *not_lora) {
    char types[512], arch[128];
    double bytes;
    int n_scales;
    type_histogram(c, types, sizeof types, &bytes);
    architecture(c, mask, arch, sizeof arch);
    const char *scales = scale_convention(c, &n_scales);
    printf("file:          %s\n", path);
    if (c->gguf)
        printf("format:        GGUF v%u, alignment %llu\n", qi_gguf_version(c->gguf),
               (unsigned long long)qi_gguf_alignment(c->gguf));
    else
        printf("format:        safetensors%s\n", c->st->files[0]->metadata_json ? " (with __metadata__)" : "");
    const char *comp = component_text(mask);
    /* llama.cpp's mmproj: the vision tower beside a GGUF text encoder */
    int mmproj = !mask && !strcmp(arch, "clip (general.architecture)");
    if (mmproj)
        comp = "vision tower (a llama.cpp mmproj: give it with --mmproj beside a GGUF text encoder; Qwen-Image-Edit "
               "reads the qwen2.5vl_merger one)";
    printf("component:     %s\n", comp);
    if (not_lora && !mmproj) { /* the LoRA reader's reason, without its "LoRA <path>: " */
        const char *reason = strstr(not_lora, path) ? strstr(not_lora, path) + strlen(path) : not_lora;
        printf("not a LoRA:    %s\n", reason[0] == ':' ? reason + 2 : reason);
    }
    printf("architecture:  %s\n", arch);
    printf("tensors:       %d\n", c->n);
    printf("types:         %s\n", types);
    printf("total size:    %.0f bytes (%.2f MiB) of tensor data\n", bytes, bytes / 1048576.0);
    printf("scales:        %s%s", scales, n_scales ? "" : "\n");
    if (n_scales) printf(", %d scale tensors\n", n_scales);
    if (c->gguf && qi_tokenizer_gguf_has(c->gguf)) printf("tokenizer:     in the metadata (tokenizer.ggml.*)\n");
    for (int comp = QI_COMPONENT_TEXT_ENCODER; comp < QI_COMPONENT_COUNT; comp++) {
        if (!(mask & (1 << comp))) continue;
        qi_error ignored;
        const char *prefix = qi_source_find_prefix((qi_component)comp, path, has_name, c, &ignored);
        const char *naming = comp != QI_COMPONENT_TEXT_ENCODER ? "diffusers"
                             : c->gguf                        ? "llama.cpp qwen2vl"
                                                              : "transformers";
        if (comp == QI_COMPONENT_VAE && prefix) {
            char anchor[160];
            snprintf(anchor, sizeof anchor, "%s%s", prefix, QI_WAN_VAE_ANCHOR);
            naming = has_name(c, anchor) ? "Wan 2.1 (ComfyUI)" : "diffusers";
        }
        printf("prefix:        %s%s%s (%s names, %s)\n", prefix && *prefix ? "'" : "",
               prefix && *prefix ? prefix : "none", prefix && *prefix ? "'" : "", naming,
               qi_component_name((qi_component)comp));
    }
}

/* Finds NAME as stored, else as the loaders' name through the component's
 * source (a mapped GGUF / Wan name, a stripped prefix). */
static int find_tensor(const container *c, const char *path, int mask, const char *name, any_tensor *t,
                       qi_source **src) {
    for (int i = 0; i < c->n; i++) {
        tensor_at(c, i, t);
        if (!strcmp(t->name, name)) return 1;
    }
    for (int comp = QI_COMPONENT_TEXT_ENCODER; comp < QI_COMPONENT_COUNT; comp++) {
        qi_error ignored;
        qi_source_tensor st;
        if (!(mask & (1 << comp)) || qi_source_open(path, (qi_component)comp, src, &ignored) != QI_OK) continue;
        if (qi_source_find(*src, name, &st)) {
            *t = (any_tensor){st.name, st.dtype, st.ndim, {0}, st.data, st.nbytes};
            for (int d = 0; d < st.ndim; d++) t->shape[d] = st.shape[d];
            return 1;
        }
        qi_source_close(*src);
        *src = NULL;
    }
    return 0;
}

/* Writes tensor NAME dequantised to float32 under the key NAME. */
static int write_tensor(const container *c, const char *path, int mask, const char *name, const char *outp) {
    any_tensor t;
    qi_source *src = NULL;
    if (!find_tensor(c, path, mask, name, &t, &src)) {
        fprintf(stderr, "qwen-image: error: %s: no tensor '%s' (as stored, or under the loaders' names)\n", path, name);
        return 1;
    }
    char scale_name[512];
    int scaled = 0;
    for (int k = 0; k < 2 && !scaled; k++) {
        size_t base = ends_with(name, ".weight") ? strlen(name) - 7 : strlen(name);
        snprintf(scale_name, sizeof scale_name, "%.*s%s", (int)base, name, k ? ".weight_scale" : ".scale_weight");
        scaled = has_name(c, scale_name);
    }
    int rc = 0;
    int64_t numel = 1;
    for (int d = 0; d < t.ndim; d++) numel *= t.shape[d];
    float *f = NULL;
    if (scaled) {
        fprintf(stderr, "qwen-image: error: %s: tensor '%s' is scaled by '%s'; scaled fp8 weights are not "
                        "supported yet\n", path, name, scale_name);
        rc = 1;
    } else if (!qi_dtype_is_float(t.dtype)) {
        fprintf(stderr, "qwen-image: error: %s: tensor '%s' is %s, not a number type\n", path, name,
                qi_dtype_name(t.dtype));
        rc = 1;
    } else if (!(f = malloc((size_t)(numel ? numel : 1) * sizeof *f))) {
        fprintf(stderr, "qwen-image: error: out of memory for %lld floats\n", (long long)numel);
        rc = 1;
    } else {
        qi_to_f32(f, t.data, t.dtype, (size_t)numel);
        qi_st_write_item item = {.name = name, .dtype = QI_F32, .ndim = t.ndim, .data = f};
        for (int d = 0; d < t.ndim; d++) item.shape[d] = t.shape[d];
        qi_error err = {{0}};
        if (qi_st_write(outp, &item, 1, &err) != QI_OK) rc = qi_app_runtime_error(err.msg);
        else printf("wrote %s: '%s' %s -> F32, %lld values\n", outp, name, qi_dtype_name(t.dtype), (long long)numel);
    }
    free(f);
    qi_source_close(src);
    return rc;
}

int qi_cmd_inspect(int argc, char **argv) {
    const char *file = NULL, *tensor = NULL, *outp = NULL;
    for (int i = 1; i < argc; i++) {
        int has = i + 1 < argc;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: qwen-image inspect FILE [--tensor NAME -o OUT.safetensors]\n\n"
                   "Describes a .safetensors or .gguf weight file: format, component, architecture, tensor count,\n"
                   "types, total size, fp8 scale convention, name prefix; for a LoRA its naming style, prefix,\n"
                   "ranks, alpha and scale, the modules it targets and whether they fit Qwen-Image's transformer.\n"
                   "With --tensor, writes that tensor (its stored name, or the name the loaders use)\n"
                   "dequantised to float32 under the key NAME.\n");
            return 0;
        }
        if (!strcmp(argv[i], "--tensor") && has) tensor = argv[++i];
        else if (!strcmp(argv[i], "-o") && has) outp = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1]) return qi_app_usage_error("inspect: unknown or incomplete option %s", argv[i]);
        else if (!file) file = argv[i];
        else return qi_app_usage_error("inspect: one FILE expected, got another: %s", argv[i]);
    }
    if (!file) return qi_app_usage_error("inspect: usage: qwen-image inspect FILE [--tensor NAME -o OUT.safetensors]");
    if (!!tensor != !!outp) return qi_app_usage_error("inspect: --tensor NAME and -o OUT.safetensors go together");
    if (outp) {
        int rc = qi_app_check_output("-o", outp);
        if (rc) return rc;
    }
    container c = {0};
    qi_error err = {{0}};
    qi_status st = ends_with(file, ".gguf") ? qi_gguf_open(file, &c.gguf, &err) : qi_st_set_open_file(file, &c.st, &err);
    if (st) return qi_app_runtime_error(err.msg), qi_app_exit_code(st);
    c.n = c.gguf ? qi_gguf_tensor_count(c.gguf) : c.st->n_tensors;
    int mask = 0;
    qi_source_identify(file, &mask, &err);
    int rc = 0;
    char why[1200];
    if (tensor) rc = write_tensor(&c, file, mask, tensor, outp);
    else if (mask || !c.st) print_summary(file, &c, mask, NULL);
    else if (!qi_inspect_lora(file, c.st, why, sizeof why)) print_summary(file, &c, mask, why);
    if (c.gguf) qi_gguf_close(c.gguf);
    if (c.st) qi_st_set_close(c.st);
    return rc;
}

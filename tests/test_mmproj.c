/*
 * test_mmproj.c — claims about llama.cpp's mmproj GGUF of Qwen2.5-VL (the
 * vision tower a GGUF text encoder leaves out): a tiny one is written here
 * from the tiny Edit text encoder's `visual.*` weights, laid out as
 * llama.cpp's converter lays it out (convert_hf_to_gguf.py,
 * Qwen2VLVisionModel: `v.*` / `mm.*` names, the fused qkv split by rows, the
 * Conv3d kernel split into its two temporal slices, 1-D tensors F32, the
 * clip.* metadata), and read back through qi_source_open_mmproj; the tower
 * it gives is compared with the one read from the safetensors. Then the
 * engine's plumbing: found beside a GGUF text encoder, ambiguity refused,
 * and an Edit request through qi_generate with a GGUF text encoder + mmproj
 * giving the folder's image.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/backend.h"
#include "base/quant.h"
#include "base/types.h"
#include "image_check.h"
#include "io/gguf_write.h"
#include "io/image.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/vision.h"
#include "qwen_image.h"
#include "test.h"
#include "testdata.h"

#define EDIT_MODEL QI_REF_EDIT "/model-2509"
#define EDIT_TE EDIT_MODEL "/text_encoder"
#define EDIT_CASE "edit2509_1img_lightning4_lora"

static qi_backend *g_be;
static qi_source *g_src; /* the Edit text encoder folder (visual.* in bf16) */
static char g_tmp[256];

/* ---- writing GGUF files as llama.cpp's converter does ------------------------------ */

typedef struct out_tensor {
    char name[96];
    qi_dtype dtype;
    int ndim;
    int64_t shape[4];
    void *data;
    size_t nbytes;
} out_tensor;

typedef struct out_set {
    out_tensor t[512];
    int n;
} out_set;

/* n floats stored as dtype (F32, F16, BF16, Q8_0: rows are whole blocks) in a new buffer. */
static void *store(const float *v, size_t n, qi_dtype dtype, size_t *nbytes) {
    int64_t bytes = qi_row_bytes(dtype, (int64_t)n);
    void *p = malloc(bytes > 0 ? (size_t)bytes : 1);
    CHECK(bytes > 0 && qi_quantize(dtype, v, p, (int64_t)n) == 0, "cannot store %zu values as %s", n,
          qi_dtype_name(dtype));
    *nbytes = bytes > 0 ? (size_t)bytes : 0;
    return p;
}

static void add(out_set *s, const char *name, qi_dtype dtype, int ndim, const int64_t *shape, const float *v) {
    REQUIRE(s->n < (int)QI_ARRAY_LEN(s->t));
    out_tensor *t = &s->t[s->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype, t->ndim = ndim;
    size_t n = 1;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d], n *= (size_t)shape[d];
    t->data = store(v, n, dtype, &t->nbytes);
}

static void set_free(out_set *s) {
    for (int i = 0; i < s->n; i++) free(s->t[i].data);
    s->n = 0;
}

/* A source tensor's values as float32 (a new buffer), its element count in *n. */
static float *values(const qi_source_tensor *t, size_t *n) {
    *n = 1;
    for (int d = 0; d < t->ndim; d++) *n *= (size_t)t->shape[d];
    float *v = malloc(*n * sizeof(float));
    qi_error err = {{0}};
    CHECK(qi_source_tensor_to_f32(t, v, &err) == QI_OK, "%s", err.msg);
    return v;
}

/* What the converter's variations and the refusals are made of. */
typedef struct variant {
    qi_dtype wtype;           /* 2-D weights: --outtype f32 / bf16 / f16 / q8_0 (patch slices: F16 with f16, else F32) */
    const char *arch, *projector;
    int wa_pattern;           /* clip.vision.n_wa_pattern; 0: left out */
    int drop_patch1;          /* leave out v.patch_embd.weight.1 */
    const char *extra;        /* one more tensor (F32 [4]) under this name */
    float mean0;              /* clip.vision.image_mean[0] */
} variant;

static variant plain(qi_dtype wtype) { return (variant){wtype, "clip", "qwen2.5vl_merger", 2, 0, NULL, 0.48145466f}; }

/* The converter's renames (HF → llama.cpp), written from its tensor map. */
static const char *const block_renames[][2] = {
    {"attn.proj.", "attn_out."},     {"norm1.", "ln1."},          {"norm2.", "ln2."},
    {"mlp.gate_proj.", "ffn_gate."}, {"mlp.up_proj.", "ffn_up."}, {"mlp.down_proj.", "ffn_down."},
};

/* One visual.* tensor as the converter writes it (name, split, type). */
static void convert_visual(out_set *s, const qi_source_tensor *t, const variant *v) {
    size_t n;
    float *x = values(t, &n);
    const char *rest = t->name + strlen("visual.");
    char name[128];
    qi_dtype w2 = t->ndim == 1 ? QI_F32 : v->wtype;
    int blk;
    char tail[96];
    if (!strcmp(rest, "patch_embed.proj.weight")) { /* [C, 3, 2, p, p] → two [C, 3, p, p] */
        int64_t C = t->shape[0], ci = t->shape[1], pp = t->shape[3] * t->shape[4];
        int64_t sh[4] = {C, ci, t->shape[3], t->shape[4]};
        size_t bytes = (size_t)(C * ci * pp) * sizeof(float);
        float *slice[2] = {malloc(bytes), malloc(bytes)};
        for (int64_t k = 0; k < C * ci; k++)
            for (int tt = 0; tt < 2; tt++)
                memcpy(slice[tt] + k * pp, x + (k * 2 + tt) * pp, (size_t)pp * sizeof(float));
        qi_dtype pt = v->wtype == QI_F16 ? QI_F16 : QI_F32;
        add(s, "v.patch_embd.weight", pt, 4, sh, slice[0]);
        if (!v->drop_patch1) add(s, "v.patch_embd.weight.1", pt, 4, sh, slice[1]);
        free(slice[0]), free(slice[1]);
    } else if (sscanf(rest, "blocks.%d.attn.qkv.%95s", &blk, tail) == 2) { /* rows q | k | v */
        int64_t C = t->shape[0] / 3, cols = t->ndim == 2 ? t->shape[1] : 1, sh[2] = {C, cols};
        static const char qkv[3] = {'q', 'k', 'v'};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "v.blk.%d.attn_%c.%s", blk, qkv[k], tail);
            add(s, name, w2, t->ndim, sh, x + k * C * cols);
        }
    } else if (sscanf(rest, "blocks.%d.%95s", &blk, tail) == 2) {
        for (size_t i = 0; i < QI_ARRAY_LEN(block_renames); i++)
            if (!strncmp(tail, block_renames[i][0], strlen(block_renames[i][0]))) {
                snprintf(name, sizeof name, "v.blk.%d.%s%s", blk, block_renames[i][1],
                         tail + strlen(block_renames[i][0]));
                add(s, name, w2, t->ndim, t->shape, x);
            }
    } else if (!strncmp(rest, "merger.mlp.", 11)) {
        snprintf(name, sizeof name, "mm.%s", rest + 11);
        add(s, name, w2, t->ndim, t->shape, x);
    } else if (!strcmp(rest, "merger.ln_q.weight")) {
        add(s, "v.post_ln.weight", QI_F32, 1, t->shape, x);
    } else {
        CHECK(0, "the test's converter does not know %s", t->name);
    }
    free(x);
}

/* Keys, tensor infos, then the data: the writer's order. 0 or -1. */
static int write_gguf(const char *path, out_set *s, qi_status (*keys)(qi_gguf_writer *, const void *, qi_error *),
                      const void *ctx) {
    qi_gguf_writer *w = NULL;
    qi_error err = {{0}};
    qi_status st = qi_gguf_writer_new(&w, &err);
    if (!st) st = keys(w, ctx, &err);
    for (int i = 0; i < s->n && !st; i++)
        st = qi_gguf_writer_add_tensor(w, s->t[i].name, s->t[i].dtype, s->t[i].ndim, s->t[i].shape, &err);
    if (!st) st = qi_gguf_writer_begin(w, path, &err);
    for (int i = 0; i < s->n && !st; i++) st = qi_gguf_writer_write(w, s->t[i].data, s->t[i].nbytes, &err);
    if (!st) st = qi_gguf_writer_end(w, &err);
    qi_gguf_writer_free(w);
    CHECK(st == QI_OK, "%s: %s", path, err.msg);
    return st ? -1 : 0;
}

/* The clip.* metadata of MmprojModel + Qwen2VLVisionModel.set_gguf_parameters
 * for the tiny tower (vision_config: depth 2, hidden 32, 2 heads, MLP 64, out 64, fullatt [1]). */
static qi_status mmproj_keys(qi_gguf_writer *w, const void *ctx, qi_error *err) {
    const variant *v = ctx;
    const float mean[3] = {v->mean0, 0.4578275f, 0.40821073f}, std_[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    uint32_t file_type = v->wtype == QI_F32 ? 0 : v->wtype == QI_F16 ? 1 : v->wtype == QI_Q8_0 ? 7 : 32; /* llama_ftype */
    qi_status st;
    if ((st = qi_gguf_writer_set_string(w, "general.architecture", v->arch, err)) ||
        (st = qi_gguf_writer_set_string(w, "general.type", "mmproj", err)) ||
        (st = qi_gguf_writer_set_u32(w, "general.file_type", file_type, err)) ||
        (st = qi_gguf_writer_set_bool(w, "clip.has_vision_encoder", 1, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.projection_dim", 64, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.image_size", 560, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.patch_size", 14, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.embedding_length", 32, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.feed_forward_length", 64, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.block_count", 2, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.attention.head_count", 2, err)) ||
        (st = qi_gguf_writer_set_f32_array(w, "clip.vision.image_mean", mean, 3, err)) ||
        (st = qi_gguf_writer_set_f32_array(w, "clip.vision.image_std", std_, 3, err)) ||
        (st = qi_gguf_writer_set_string(w, "clip.projector_type", v->projector, err)) ||
        (st = qi_gguf_writer_set_bool(w, "clip.use_silu", 1, err)) ||
        (v->wa_pattern && (st = qi_gguf_writer_set_u32(w, "clip.vision.n_wa_pattern", (uint32_t)v->wa_pattern, err))) ||
        (st = qi_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-6f, err)))
        return st;
    return QI_OK;
}

/* <dir>/<file>: the tiny Edit tower as an mmproj of variant v. 0 or -1. */
static int write_mmproj(const char *dir, const char *file, const variant *v, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", dir, file);
    out_set *s = calloc(1, sizeof *s);
    for (int i = 0; i < qi_source_tensor_count(g_src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(g_src, i, &t);
        if (!strncmp(t.name, "visual.", 7)) convert_visual(s, &t, v);
    }
    if (v->extra) {
        const float four[4] = {0};
        add(s, v->extra, QI_F32, 1, (const int64_t[]){4}, four);
    }
    int rc = write_gguf(path, s, mmproj_keys, v);
    set_free(s);
    free(s);
    return rc;
}

/* ---- the tower ---------------------------------------------------------------------------- */

/* The first Edit case's picture through `vt`: out [tokens, 64] (a new buffer), NULL on failure. */
static float *encode_case_picture(qi_vision *vt, int64_t *n_out) {
    qi_st_file *f = ref_edit_tensors(EDIT_CASE);
    const qi_st_tensor *ti = f ? qi_st_file_find(f, "cond0.vl_processor_resized_u8") : NULL;
    if (!ti) {
        CHECK(0, "no cond0.vl_processor_resized_u8 in %s", EDIT_CASE);
        qi_st_close(f);
        return NULL;
    }
    int H = (int)ti->shape[0], W = (int)ti->shape[1];
    uint8_t *rgb = malloc(ti->nbytes);
    memcpy(rgb, ti->data, ti->nbytes);
    qi_vl_preprocess pp = qi_vl_preprocess_default();
    float *rows = malloc((size_t)(H / 14) * (W / 14) * 1176 * sizeof(float));
    *n_out = (int64_t)(H / 28) * (W / 28) * 64;
    float *out = malloc((size_t)*n_out * sizeof(float));
    qi_vl_patchify(rgb, H, W, &pp, rows);
    qi_error err = {{0}};
    qi_status st = qi_vision_encode(vt, rows, H / 14, W / 14, out, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    free(rows), free(rgb);
    qi_st_close(f);
    if (st) free(out);
    return st ? NULL : out;
}

/* The mmproj's tower against the safetensors tower on the fixture picture:
 * max abs difference of the outputs (-1 on failure), their relative L2 in
 * *rel; its config in *cfg. */
static double tower_diff(const char *path, qi_vision_config *cfg, double *rel) {
    qi_error err = {{0}};
    qi_source *src = NULL;
    qi_vision *a = NULL, *b = NULL;
    double diff = -1;
    qi_status st = qi_source_open_mmproj(path, &src, &err);
    if (!st) st = qi_vision_load(src, g_be, &a, &err);
    if (!st) st = qi_vision_load(g_src, g_be, &b, &err);
    CHECK(st == QI_OK, "%s: %s", path, err.msg);
    if (!st) {
        *cfg = *qi_vision_get_config(a);
        int64_t n = 0, m = 0;
        float *ga = encode_case_picture(a, &n), *gb = encode_case_picture(b, &m);
        if (ga && gb && n == m) diff = qi_max_abs_diff(ga, gb, (size_t)n), *rel = qi_rel_l2(ga, gb, (size_t)n);
        free(ga), free(gb);
    }
    qi_vision_free(a), qi_vision_free(b);
    qi_source_close(src);
    return diff;
}

/* ---- claims ------------------------------------------------------------------------------ */

static void names_map_as_the_converter_writes_them(void) {
    char out[128];
    static const char *const cases[][2] = {
        {"v.blk.0.attn_q.weight", "visual.blocks.0.attn.q.weight"},
        {"v.blk.31.attn_v.bias", "visual.blocks.31.attn.v.bias"},
        {"v.blk.7.attn_out.weight", "visual.blocks.7.attn.proj.weight"},
        {"v.blk.1.ln1.weight", "visual.blocks.1.norm1.weight"},
        {"v.blk.1.ln2.weight", "visual.blocks.1.norm2.weight"},
        {"v.blk.2.ffn_gate.bias", "visual.blocks.2.mlp.gate_proj.bias"},
        {"v.blk.2.ffn_up.weight", "visual.blocks.2.mlp.up_proj.weight"},
        {"v.blk.2.ffn_down.weight", "visual.blocks.2.mlp.down_proj.weight"},
        {"v.post_ln.weight", "visual.merger.ln_q.weight"},
        {"mm.0.weight", "visual.merger.mlp.0.weight"},
        {"mm.2.bias", "visual.merger.mlp.2.bias"},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(cases); i++)
        CHECK(qi_names_llamacpp_mmproj(cases[i][0], out, sizeof out) && !strcmp(out, cases[i][1]), "%s → %s",
              cases[i][0], out);
    static const char *const refused[] = {"v.blk.01.ln1.weight", "v.blk.+1.ln1.weight", "v.blk.0.attn_qkv.weight",
                                          "v.blk.0.ln1.scale",   "mm.1.weight",         "v.patch_embd.weight",
                                          "blk.0.attn_q.weight"};
    for (size_t i = 0; i < QI_ARRAY_LEN(refused); i++)
        CHECK(!qi_names_llamacpp_mmproj(refused[i], out, sizeof out), "%s is not a name of the layout", refused[i]);
}

/* F32 and BF16 storage hold the bf16 weights exactly: the tower's output is
 * the safetensors tower's bit for bit, and its config (from clip.* metadata:
 * n_wa_pattern 2 → fullatt [1]) is config.json's. F16 and Q8_0 storage
 * (the Q8_0 weights bound as they are) round the weights: bounded by
 * relative L2 (measured 6.3e-8 and 2.7e-3). */
static void mmproj_tower_matches_the_safetensors_tower(void) {
    static const struct {
        qi_dtype dtype;
        const char *file;
    } kinds[] = {{QI_F32, "mmproj-tiny-f32.gguf"},
                 {QI_BF16, "mmproj-tiny-bf16.gguf"},
                 {QI_F16, "mmproj-tiny-f16.gguf"},
                 {QI_Q8_0, "mmproj-tiny-q8_0.gguf"}};
    for (size_t k = 0; k < QI_ARRAY_LEN(kinds); k++) {
        char path[512];
        variant v = plain(kinds[k].dtype);
        REQUIRE(write_mmproj(g_tmp, kinds[k].file, &v, path, sizeof path) == 0);
        qi_vision_config c = {0};
        double rel = -1, diff = tower_diff(path, &c, &rel);
        printf("     %s: against the safetensors tower max abs diff %.3g, rel L2 %.3g\n", kinds[k].file, diff, rel);
        if (kinds[k].dtype == QI_F16)
            CHECK(diff >= 0 && rel < 1e-6, "f16 storage: rel %g", rel);
        else if (kinds[k].dtype == QI_Q8_0)
            CHECK(diff > 0 && rel < 1e-2, "q8_0 storage (the weights kept as Q8_0): rel %g", rel);
        else
            CHECK(diff == 0, "%s: %g", kinds[k].file, diff);
        CHECK(c.depth == 2 && c.hidden_size == 32 && c.num_heads == 2 && c.intermediate_size == 64 &&
                  c.out_hidden_size == 64 && c.patch_dim == 1176 && c.window_size == 112 && c.n_fullatt == 1 &&
                  c.fullatt[0] == 1,
              "config from the metadata: depth %d hidden %d fullatt %d", c.depth, c.hidden_size, c.n_fullatt);
    }
}

/* What is not a Qwen2.5-VL mmproj is refused, naming the file and what is wrong. */
static void other_files_are_refused_saying_why(void) {
    static const struct {
        const char *file, *expect;
        variant v;
    } bad[] = {
        {"mmproj-qwen2vl.gguf", "qwen2.5vl_merger", {QI_F32, "clip", "qwen2vl_merger", 2, 0, NULL, 0.48145466f}},
        {"mmproj-gemma3.gguf", "'gemma3'", {QI_F32, "clip", "gemma3", 2, 0, NULL, 0.48145466f}},
        {"mmproj-te.gguf", "text encoder", {QI_F32, "qwen2vl", "qwen2.5vl_merger", 2, 0, NULL, 0.48145466f}},
        {"mmproj-noslice.gguf", "v.patch_embd.weight.1", {QI_F32, "clip", "qwen2.5vl_merger", 2, 1, NULL, 0.48145466f}},
        {"mmproj-extra.gguf", "v.blk.0.attn_qkv.weight",
         {QI_F32, "clip", "qwen2.5vl_merger", 2, 0, "v.blk.0.attn_qkv.weight", 0.48145466f}},
        {"mmproj-nowa.gguf", "clip.vision.n_wa_pattern", {QI_F32, "clip", "qwen2.5vl_merger", 0, 0, NULL, 0.48145466f}},
        {"mmproj-wa9.gguf", "clip.vision.n_wa_pattern", {QI_F32, "clip", "qwen2.5vl_merger", 9, 0, NULL, 0.48145466f}},
        {"mmproj-mean.gguf", "clip.vision.image_mean", {QI_F32, "clip", "qwen2.5vl_merger", 2, 0, NULL, 0.5f}},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(bad); i++) {
        char path[512];
        REQUIRE(write_mmproj(g_tmp, bad[i].file, &bad[i].v, path, sizeof path) == 0);
        qi_source *src = NULL;
        qi_error err = {{0}};
        qi_status st = qi_source_open_mmproj(path, &src, &err);
        printf("     %s: %s\n", bad[i].file, err.msg);
        CHECK(st != QI_OK && !src && strstr(err.msg, bad[i].expect) && strstr(err.msg, path), "%s: %d %s", bad[i].file,
              st, err.msg);
        qi_source_close(src);
    }
}

/* ---- a GGUF text encoder beside it ------------------------------------------------------------ */

/* The llama.cpp name of a language-model tensor: the one the project's own
 * map (qi_names_llamacpp_text_encoder) takes back to `hf`; 0 if none. */
static int llama_te_name(const char *hf, char *out, size_t cap) {
    static const char *const globals[] = {"token_embd.weight", "output_norm.weight", "output.weight"};
    static const char *const stems[] = {"attn_q", "attn_k", "attn_v", "attn_output", "attn_norm",
                                        "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
    char back[160];
    for (size_t i = 0; i < QI_ARRAY_LEN(globals); i++)
        if (qi_names_llamacpp_text_encoder(globals[i], back, sizeof back) && !strcmp(back, hf))
            return snprintf(out, cap, "%s", globals[i]) > 0;
    int layer;
    const char *kind = strrchr(hf, '.');
    if (sscanf(hf, "model.layers.%d.", &layer) != 1 || !kind) return 0;
    for (size_t i = 0; i < QI_ARRAY_LEN(stems); i++) {
        snprintf(out, cap, "blk.%d.%s%s", layer, stems[i], kind);
        if (qi_names_llamacpp_text_encoder(out, back, sizeof back) && !strcmp(back, hf)) return 1;
    }
    return 0;
}

static qi_status te_keys(qi_gguf_writer *w, const void *ctx, qi_error *err) {
    (void)ctx;
    qi_status st = qi_gguf_writer_set_string(w, "general.architecture", "qwen2vl", err);
    return st ? st : qi_gguf_writer_set_u32(w, "general.file_type", 32, err);
}

/* <dir>/Qwen2.5-VL-tiny-BF16.gguf: the Edit text encoder's language model as
 * llama.cpp's text converter writes it with --outtype bf16 (2-D BF16, 1-D
 * F32: both exact for bf16 weights), no vision tensors. 0 or -1. */
static int write_te_gguf(const char *dir, char *path, size_t cap) {
    snprintf(path, cap, "%s/Qwen2.5-VL-tiny-BF16.gguf", dir);
    out_set *s = calloc(1, sizeof *s);
    int unmapped = 0;
    for (int i = 0; i < qi_source_tensor_count(g_src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(g_src, i, &t);
        if (!strncmp(t.name, "visual.", 7)) continue;
        char name[160];
        if (!llama_te_name(t.name, name, sizeof name)) {
            CHECK(0, "no llama.cpp name for %s", t.name);
            unmapped++;
            continue;
        }
        size_t n;
        float *x = values(&t, &n);
        add(s, name, t.ndim == 1 ? QI_F32 : QI_BF16, t.ndim, t.shape, x);
        free(x);
    }
    int rc = unmapped ? -1 : write_gguf(path, s, te_keys, NULL);
    set_free(s);
    free(s);
    return rc;
}

/* The GGUF text encoder alone has no tower: the message says to give --mmproj. */
static void text_only_gguf_asks_for_the_mmproj(void) {
    char path[512];
    REQUIRE(write_te_gguf(g_tmp, path, sizeof path) == 0);
    qi_source *src = NULL;
    qi_vision *vt = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_source_open(path, QI_COMPONENT_TEXT_ENCODER, &src, &err) == QI_OK, "%s", err.msg);
    CHECK(!qi_vision_present(src), "a qwen2vl GGUF carries no tower");
    CHECK(qi_vision_load(src, g_be, &vt, &err) == QI_ERR_FORMAT && strstr(err.msg, "--mmproj") && strstr(err.msg, path),
          "%s", err.msg);
    printf("     %s\n", err.msg);
    qi_source_close(src);
}

/* No --mmproj: the one mmproj*.gguf beside the GGUF text encoder is taken;
 * two are not guessed between (the refusal names both and --mmproj, and
 * comes when the tower is needed); --mmproj picks; a missing --mmproj file
 * is an error at once; a safetensors text encoder is not searched beside. */
static void mmproj_is_found_beside_the_text_encoder(void) {
    char dir[256], te[512], one[512], two[512];
    REQUIRE(tmp_dir_make(dir, sizeof dir, "mmproj_beside") == 0);
    snprintf(te, sizeof te, "%s/Qwen2.5-VL-7B-Instruct-Q8_0.gguf", dir);
    snprintf(one, sizeof one, "%s/mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf", dir);
    snprintf(two, sizeof two, "%s/mmproj-Qwen2.5-VL-7B-Instruct-Q8_0.gguf", dir);
    REQUIRE(write_file(te, "x", 1) == 0 && write_file(one, "x", 1) == 0);
    qi_model_paths p = {.model = EDIT_MODEL, .text_encoder = te};
    qi_model_files f;
    qi_error err = {{0}};
    REQUIRE(qi_model_files_resolve(&p, &f, &err) == QI_OK, "%s", err.msg);
    CHECK(!strcmp(f.mmproj, one) && f.mmproj_found && !f.mmproj_ambiguous[0], "found: '%s'", f.mmproj);
    REQUIRE(write_file(two, "x", 1) == 0);
    REQUIRE(qi_model_files_resolve(&p, &f, &err) == QI_OK, "a text-to-image run needs no tower: %s", err.msg);
    const qi_source *from = NULL;
    qi_source *opened = NULL;
    CHECK(!f.mmproj[0] && qi_model_files_vision_source(&f, g_src, 0, &from, &opened, &err) == QI_ERR_ARG &&
              strstr(err.msg, "--mmproj") && strstr(err.msg, one) && strstr(err.msg, two),
          "two are refused: %s", err.msg);
    printf("     %s\n", err.msg);
    CHECK(qi_model_files_vision_source(&f, g_src, 1, &from, &opened, &err) == QI_OK && from == g_src && !opened,
          "a text encoder with its own tower needs no mmproj");
    p.mmproj = two;
    CHECK(qi_model_files_resolve(&p, &f, &err) == QI_OK && !strcmp(f.mmproj, two) && !f.mmproj_found, "--mmproj: '%s'",
          f.mmproj);
    p.mmproj = "/nonexistent/mmproj.gguf";
    CHECK(qi_model_files_resolve(&p, &f, &err) == QI_ERR_IO && strstr(err.msg, "--mmproj /nonexistent/mmproj.gguf"),
          "%s", err.msg);
    qi_model_paths q = {.model = EDIT_MODEL};
    CHECK(qi_model_files_resolve(&q, &f, &err) == QI_OK && !f.mmproj[0], "the folder's own text encoder: no search");
    tmp_remove_tree(dir);
}

/* ---- the Edit pipeline through qi_generate ------------------------------------------------------ */

static void keep_log(void *user, const char *line) {
    char *buf = user;
    if (strstr(line, "vision tower")) snprintf(buf, 1024, "%s", line);
}

/* The fixture case's request on an engine of `o` (+ the case's LoRA): the
 * image (the caller frees it) or rgb NULL. */
static qi_image run_case(qi_open_options *o, const cJSON *j, const uint8_t *rgb, int w, int h) {
    qi_image img = {0};
    qi_engine *e = NULL;
    o->threads = 2;
    qi_status st = qi_engine_open(o, &e);
    if (!st) st = qi_engine_add_lora(e, QI_TEST_DATA "/cases/lora.safetensors", 1.0f);
    qi_request r = qi_request_default();
    r.prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt")->valuestring;
    r.cfg = (float)cJSON_GetObjectItemCaseSensitive(j, "cfg")->valuedouble;
    r.steps = cJSON_GetObjectItemCaseSensitive(j, "steps")->valueint;
    r.seed = (uint64_t)cJSON_GetObjectItemCaseSensitive(j, "seed")->valuedouble;
    r.width = cJSON_GetObjectItemCaseSensitive(j, "width")->valueint;
    r.height = cJSON_GetObjectItemCaseSensitive(j, "height")->valueint;
    r.scheduler = "lightning";
    r.n_edit_images = 1;
    r.edit_images = &rgb;
    r.edit_widths = &w, r.edit_heights = &h;
    r.edit_vl_area = 224 * 224, r.edit_vae_area = 256 * 256; /* the fixtures' areas */
    r.noise_dtype = 1;
    if (!st) st = qi_generate(e, &r, &img);
    CHECK(st == QI_OK, "%s", qi_engine_error(e));
    qi_engine_close(e);
    return img;
}

/* The CLI: `inspect` calls an mmproj a vision tower; with a second mmproj
 * beside the text encoder generate is refused without --mmproj (naming
 * both), and with it gives the engine's image byte for byte. */
static void cli_picks_the_mmproj(const char *dir, const char *te, const char *mm, const cJSON *j, const char *png,
                                 const qi_image *want) {
    char other[512], out_png[512], out[8192], args[4096];
    variant v = plain(QI_F16);
    REQUIRE(write_mmproj(dir, "mmproj-Qwen2.5-VL-tiny-f16.gguf", &v, other, sizeof other) == 0);
    snprintf(out_png, sizeof out_png, "%s/cli.png", dir);
    snprintf(args, sizeof args,
             "generate -m %s --text-encoder %s -p '%s' --steps %d --seed %d -W %d -H %d --cfg 1 --lora %s "
             "--scheduler lightning --image %s --edit-vl-area 50176 --edit-vae-area 65536 --quiet -o %s",
             EDIT_MODEL, te, cJSON_GetObjectItemCaseSensitive(j, "prompt")->valuestring,
             cJSON_GetObjectItemCaseSensitive(j, "steps")->valueint,
             cJSON_GetObjectItemCaseSensitive(j, "seed")->valueint, want->width, want->height,
             QI_TEST_DATA "/cases/lora.safetensors", png, out_png);
    int rc = run_shell(out, sizeof out, "%s inspect %s", QI_CLI, mm);
    CHECK(rc == 0 && strstr(out, "vision tower") && strstr(out, "--mmproj"), "inspect: %s", out);
    rc = run_shell(out, sizeof out, "%s %s", QI_CLI, args);
    printf("     two mmproj files, no --mmproj: exit %d: %s", rc, out);
    CHECK(rc != 0 && strstr(out, "--mmproj") && strstr(out, other) && !qi_file_exists(out_png), "exit %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s %s --mmproj %s", QI_CLI, args, mm);
    CHECK(rc == 0, "exit %d: %s", rc, out);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    qi_error err = {{0}};
    char *params = NULL;
    CHECK(rc == 0 && qi_png_read(out_png, &rgb, &w, &h, &params, &err) == QI_OK && w == want->width &&
              h == want->height && !memcmp(rgb, want->rgb, (size_t)w * h * 3),
          "the CLI's image with --mmproj differs from the engine's: %s", err.msg);
    char key[600];
    snprintf(key, sizeof key, "Mmproj: %s", mm);
    CHECK(params && strstr(params, key), "parameters record --mmproj: %s", params ? params : "(none)");
    free(params);
    free(rgb);
}

/* -m the Edit folder with --text-encoder a llama.cpp GGUF (bf16, no tower)
 * and its mmproj beside it (found, and said so): the same image as the
 * folder's own text encoder gives, byte for byte, and the reference's within
 * the Edit tests' 2 levels. */
static void edit_runs_on_a_gguf_text_encoder_and_its_mmproj(void) {
    char dir[256], te[512], mm[512], path[1024], log[1024] = "";
    REQUIRE(tmp_dir_make(dir, sizeof dir, "mmproj_edit") == 0);
    variant v = plain(QI_BF16);
    REQUIRE(write_mmproj(dir, "mmproj-Qwen2.5-VL-tiny-bf16.gguf", &v, mm, sizeof mm) == 0 &&
            write_te_gguf(dir, te, sizeof te) == 0);
    qi_error err = {{0}};
    cJSON *j = ref_edit_json(EDIT_CASE);
    REQUIRE(j);
    snprintf(path, sizeof path, "%s/inputs/%s.png", QI_REF_EDIT,
             cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "images"), 0)->valuestring);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    qi_st_file *f = ref_edit_tensors(EDIT_CASE);
    const qi_st_tensor *ref = f ? qi_st_file_find(f, "image_u8") : NULL;
    if (qi_png_read(path, &rgb, &w, &h, NULL, &err) == QI_OK && ref) {
        qi_open_options o = qi_open_options_default();
        o.model_dir = EDIT_MODEL;
        qi_image want = run_case(&o, j, rgb, w, h);
        o.text_encoder = te;
        o.log = keep_log, o.log_user = log;
        qi_image got = run_case(&o, j, rgb, w, h);
        int same = same_pixels(&got, &want);
        int worst = ref_image_diff(f, got.rgb, image_pixel_bytes(&got), NULL);
        printf("     GGUF text encoder + mmproj: %dx%d, %s the folder's image, %d levels from the reference\n     %s\n",
               got.width, got.height, same ? "identical to" : "DIFFERENT from", worst, log);
        CHECK(same, "the image differs from the folder's text encoder's");
        CHECK(worst >= 0 && worst <= 2, "%d levels from the reference (-1: another size)", worst);
        CHECK(strstr(log, mm) && strstr(log, "found beside"), "the log says which mmproj: '%s'", log);
        if (got.rgb) cli_picks_the_mmproj(dir, te, mm, j, path, &got);
        qi_image_free(&want), qi_image_free(&got);
    } else {
        CHECK(0, "%s: %s", path, err.msg);
    }
    free(rgb);
    qi_st_close(f);
    cJSON_Delete(j);
    tmp_remove_tree(dir);
}

/* ---- the real size: Qwen2.5-VL-7B's tower as llama.cpp's converter writes it ----------- */

/* One tensor of the full-size mmproj: its stored name, type and shape, the
 * transformers name and shape it must come back as, and the 4-byte tag
 * written at its start (the rest of its data left as a hole). */
typedef struct full_tensor {
    char name[64], hf[80];
    qi_dtype dtype;
    int ndim;
    int64_t shape[4];
    int hf_ndim;
    int64_t hf_shape[5];
    uint32_t tag;
    size_t nbytes;
} full_tensor;

static full_tensor *full_add(full_tensor *list, int *n, const char *name, const char *hf, qi_dtype dtype, int ndim,
                             const int64_t *shape, int hf_ndim, const int64_t *hf_shape) {
    full_tensor *t = &list[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->hf, sizeof t->hf, "%s", hf);
    t->dtype = dtype, t->ndim = ndim, t->hf_ndim = hf_ndim;
    int64_t count = 1;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d], count *= shape[d];
    for (int d = 0; d < hf_ndim; d++) t->hf_shape[d] = hf_shape[d];
    t->nbytes = (size_t)qi_row_bytes(dtype, count);
    t->tag = 0xA5000000u | (uint32_t)(*n - 1);
    return t;
}

/* The converter's list for the checkpoint's visual.* tensors (bench/qwen-image-full.json, the
 * text_encoder entries: the real names and shapes), with llama.cpp's default --outtype f16: 2-D and
 * 4-D weights F16, 1-D tensors F32. Returns the count, 0 on failure. */
static int full_size_list(full_tensor *list, int cap, int *hf_count) {
    cJSON *m = NULL;
    qi_error err = {{0}};
    int n = 0;
    *hf_count = 0;
    if (qi_json_load(QI_BENCH_MANIFEST, &m, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return 0;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(m, "text_encoder")) {
        if (strncmp(it->string, "visual.", 7) || n + 3 > cap) continue;
        const cJSON *shape = cJSON_GetArrayItem(it, 1);
        int nd = cJSON_GetArraySize(shape), blk;
        int64_t sh[5] = {0};
        for (int d = 0; d < nd && d < 5; d++) sh[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        const char *rest = it->string + 7;
        char name[64], hf[80], tail[48];
        qi_dtype dt = nd == 1 ? QI_F32 : QI_F16;
        (*hf_count)++;
        if (!strcmp(rest, "patch_embed.proj.weight")) { /* [C, 3, 2, p, p] → two [C, 3, p, p] */
            int64_t sl[4] = {sh[0], sh[1], sh[3], sh[4]};
            full_add(list, &n, "v.patch_embd.weight", it->string, QI_F16, 4, sl, nd, sh);
            full_add(list, &n, "v.patch_embd.weight.1", it->string, QI_F16, 4, sl, nd, sh);
        } else if (sscanf(rest, "blocks.%d.attn.qkv.%47s", &blk, tail) == 2) { /* rows q | k | v */
            int64_t part[2] = {sh[0] / 3, sh[1]};
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "v.blk.%d.attn_%c.%s", blk, "qkv"[k], tail);
                snprintf(hf, sizeof hf, "visual.blocks.%d.attn.%c.%s", blk, "qkv"[k], tail);
                full_add(list, &n, name, hf, dt, nd, part, nd, part);
            }
        } else if (sscanf(rest, "blocks.%d.%47s", &blk, tail) == 2) {
            for (size_t i = 0; i < QI_ARRAY_LEN(block_renames); i++)
                if (!strncmp(tail, block_renames[i][0], strlen(block_renames[i][0]))) {
                    snprintf(name, sizeof name, "v.blk.%d.%s%s", blk, block_renames[i][1],
                             tail + strlen(block_renames[i][0]));
                    full_add(list, &n, name, it->string, dt, nd, sh, nd, sh);
                }
        } else if (!strncmp(rest, "merger.mlp.", 11)) {
            snprintf(name, sizeof name, "mm.%s", rest + 11);
            full_add(list, &n, name, it->string, dt, nd, sh, nd, sh);
        } else if (!strcmp(rest, "merger.ln_q.weight")) {
            full_add(list, &n, "v.post_ln.weight", it->string, QI_F32, nd, sh, nd, sh);
        } else {
            CHECK(0, "the test's converter does not know %s", it->string);
        }
    }
    cJSON_Delete(m);
    return n;
}

/* The clip.* keys of the 7B tower: vision_config of the real text encoder
 * (tests/data/qwen-image-2512/text_encoder/config.json) as the converter
 * writes them (n_wa_pattern = fullatt_block_indexes[0] + 1 = 8). */
static qi_status full_keys(qi_gguf_writer *w, const void *ctx, qi_error *err) {
    const cJSON *vc = ctx;
#define VC(k) ((uint32_t)cJSON_GetObjectItemCaseSensitive(vc, k)->valueint)
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std_[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    qi_status st;
    if ((st = qi_gguf_writer_set_string(w, "general.architecture", "clip", err)) ||
        (st = qi_gguf_writer_set_string(w, "general.type", "mmproj", err)) ||
        (st = qi_gguf_writer_set_u32(w, "general.file_type", 1, err)) ||
        (st = qi_gguf_writer_set_bool(w, "clip.has_vision_encoder", 1, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.projection_dim", VC("out_hidden_size"), err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.image_size", 560, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.patch_size", VC("patch_size"), err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.embedding_length", VC("hidden_size"), err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.feed_forward_length", VC("intermediate_size"), err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.block_count", VC("depth"), err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.attention.head_count", VC("num_heads"), err)) ||
        (st = qi_gguf_writer_set_f32_array(w, "clip.vision.image_mean", mean, 3, err)) ||
        (st = qi_gguf_writer_set_f32_array(w, "clip.vision.image_std", std_, 3, err)) ||
        (st = qi_gguf_writer_set_string(w, "clip.projector_type", "qwen2.5vl_merger", err)) ||
        (st = qi_gguf_writer_set_bool(w, "clip.use_silu", 1, err)) ||
        (st = qi_gguf_writer_set_u32(w, "clip.vision.n_wa_pattern",
                                     (uint32_t)cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(
                                                                      vc, "fullatt_block_indexes"), 0)->valueint + 1,
                                     err)) ||
        (st = qi_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-6f, err)))
        return st;
#undef VC
    return QI_OK;
}

/* The two patch slices' raw f16 bits: slice t, element k. */
static uint16_t patch_bits(int t, int64_t k) { return (uint16_t)((k * 7 + t * 3 + 1) & 0x3bff); }

/* Writes the list: every tensor's first 4 bytes its tag and the rest a hole,
 * except the patch slices, written whole (the source recombines them). */
static int write_full(const char *path, const full_tensor *list, int n, const cJSON *vc) {
    qi_gguf_writer *w = NULL;
    qi_error err = {{0}};
    qi_status st = qi_gguf_writer_new(&w, &err);
    if (!st) st = full_keys(w, vc, &err);
    for (int i = 0; i < n && !st; i++)
        st = qi_gguf_writer_add_tensor(w, list[i].name, list[i].dtype, list[i].ndim, list[i].shape, &err);
    if (!st) st = qi_gguf_writer_begin(w, path, &err);
    for (int i = 0; i < n && !st; i++) {
        const full_tensor *t = &list[i];
        if (!strncmp(t->name, "v.patch_embd.", 13)) {
            int slice = strcmp(t->name, "v.patch_embd.weight") != 0;
            size_t count = t->nbytes / 2;
            uint16_t *bits = malloc(t->nbytes);
            for (size_t k = 0; k < count; k++) bits[k] = patch_bits(slice, (int64_t)k);
            st = qi_gguf_writer_write(w, bits, t->nbytes, &err);
            free(bits);
            continue;
        }
        st = qi_gguf_writer_write(w, &t->tag, sizeof t->tag, &err);
        if (!st) st = qi_gguf_writer_skip(w, t->nbytes - sizeof t->tag, &err);
    }
    if (!st) st = qi_gguf_writer_end(w, &err);
    qi_gguf_writer_free(w);
    CHECK(st == QI_OK, "%s: %s", path, err.msg);
    return st ? -1 : 0;
}

/* Claim: llama.cpp's mmproj of the real Qwen2.5-VL-7B opens. A file with the
 * converter's names, types and the full shapes of every visual.* tensor of
 * the checkpoint (32 blocks of width 1280, 16 heads, MLP 3420, 14-pixel
 * patches over 2 frames, merger to 3584; data sparse: a tag per tensor, the
 * patch slices whole) is opened by qi_source_open_mmproj; every tensor maps
 * to its transformers name with the checkpoint's shape (q, k, v: the thirds
 * of qkv), points at its own stored bytes, the patch slices recombine into
 * [1280, 3, 2, 14, 14] slice by slice, the config is the real vision_config,
 * and the tower binds every weight (qi_vision_load, CPU: zero copy). */
static void full_size_mmproj_maps_every_tensor(void) {
    enum { CAP = 640 };
    full_tensor *list = calloc(CAP, sizeof *list);
    int hf_count = 0, n = full_size_list(list, CAP, &hf_count);
    cJSON *te_cfg = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_json_load(QI_TEST_DATA "/qwen-image-2512/text_encoder/config.json", &te_cfg, &err) == QI_OK, "%s",
            err.msg);
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(te_cfg, "vision_config");
    /* 32 blocks × 12 tensors (qkv, proj, 3 MLP linears: weight + bias; 2 norms) + patch + ln_q + 4 merger */
    CHECK(hf_count == 32 * 12 + 6 && n == hf_count + 32 * 4 + 1, "%d visual.* tensors, %d stored", hf_count, n);
    char path[512];
    snprintf(path, sizeof path, "%s/Qwen2.5-VL-7B-Instruct-mmproj-f16.gguf", g_tmp);
    double t0 = qi_now_s();
    REQUIRE(vc && write_full(path, list, n, vc) == 0);
    struct stat sb;
    REQUIRE(stat(path, &sb) == 0);
    size_t data = 0;
    for (int i = 0; i < n; i++) data += list[i].nbytes;
    printf("  %s: %d tensors, %.2f GB of data, %.1f MB allocated on disk, written in %.2f s\n", path, n, data / 1e9,
           (double)sb.st_blocks * 512 / 1e6, qi_now_s() - t0);
    CHECK((size_t)sb.st_size > data, "file %lld bytes, data %zu", (long long)sb.st_size, data);
    qi_source *src = NULL;
    REQUIRE(qi_source_open_mmproj(path, &src, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_source_tensor_count(src) == n - 1, "%d tensors mapped, expected %d", qi_source_tensor_count(src), n - 1);
    int matched = 0;
    for (int i = 0; i < qi_source_tensor_count(src); i++) {
        qi_source_tensor t;
        qi_source_tensor_at(src, i, &t);
        const full_tensor *want = NULL;
        for (int k = 0; k < n && !want; k++)
            if (!strcmp(list[k].hf, t.name)) want = &list[k];
        if (!want) {
            CHECK(0, "%s (stored %s) is not a name of the checkpoint", t.name, t.stored_name);
            continue;
        }
        int same = t.ndim == want->hf_ndim && t.dtype == want->dtype;
        for (int d = 0; same && d < t.ndim; d++) same = t.shape[d] == want->hf_shape[d];
        if (!strcmp(t.name, "visual.patch_embed.proj.weight")) { /* (o, i, tt, y, x) = slice tt (o, i, y, x) */
            const uint16_t *b = t.data;
            int64_t pp = 14 * 14, rows = 1280 * 3;
            for (int64_t r = 0; same && r < rows; r++)
                for (int tt = 0; tt < 2 && same; tt++)
                    for (int64_t k = 0; k < pp && same; k++) same = b[(r * 2 + tt) * pp + k] == patch_bits(tt, r * pp + k);
        } else {
            same = same && !memcmp(t.data, &want->tag, sizeof want->tag);
        }
        CHECK(same, "%s: shape, type or data not those of %s", t.name, want->name);
        matched += same;
    }
    printf("  %d of %d tensors mapped to their checkpoint name, shape and bytes\n", matched, n - 1);
    qi_backend *cpu = NULL;
    qi_vision *vt = NULL;
    REQUIRE(qi_backend_cpu_create(1, 1 << 20, &cpu, &err) == QI_OK, "%s", err.msg);
    qi_status st = qi_vision_load(src, cpu, &vt, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st == QI_OK) {
        const qi_vision_config *c = qi_vision_get_config(vt);
        const cJSON *fa = cJSON_GetObjectItemCaseSensitive(vc, "fullatt_block_indexes");
        int full_ok = c->n_fullatt == cJSON_GetArraySize(fa);
        for (int i = 0; full_ok && i < c->n_fullatt; i++) full_ok = c->fullatt[i] == cJSON_GetArrayItem(fa, i)->valueint;
#define VCI(k) cJSON_GetObjectItemCaseSensitive(vc, k)->valueint
        CHECK(c->depth == VCI("depth") && c->hidden_size == VCI("hidden_size") && c->num_heads == VCI("num_heads") &&
                  c->intermediate_size == VCI("intermediate_size") && c->out_hidden_size == VCI("out_hidden_size") &&
                  c->patch_size == VCI("patch_size") && c->temporal_patch_size == VCI("temporal_patch_size") &&
                  c->spatial_merge_size == VCI("spatial_merge_size") && c->window_size == VCI("window_size") && full_ok,
              "config from the mmproj: depth %d, hidden %d, heads %d, MLP %d, out %d, patch %d×%d, merge %d, window %d, "
              "%d full-attention blocks", c->depth, c->hidden_size, c->num_heads, c->intermediate_size,
              c->out_hidden_size, c->patch_size, c->temporal_patch_size, c->spatial_merge_size, c->window_size,
              c->n_fullatt);
#undef VCI
        printf("  tower bound: %d blocks of %d, %d heads, MLP %d, merger to %d, full attention at %d %d %d %d\n",
               c->depth, c->hidden_size, c->num_heads, c->intermediate_size, c->out_hidden_size, c->fullatt[0],
               c->fullatt[1], c->fullatt[2], c->fullatt[3]);
    }
    qi_vision_free(vt);
    cpu->ops->destroy(cpu);
    qi_source_close(src);
    cJSON_Delete(te_cfg);
    remove(path);
    free(list);
}

int main(void) {
    qi_error err = {{0}};
    if (qi_backend_create("cpu", 2, (size_t)512 << 20, &g_be, &err) != QI_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    if (tmp_dir_make(g_tmp, sizeof g_tmp, "mmproj") != 0) return 1;
    if (qi_source_open_folder(EDIT_TE, QI_COMPONENT_TEXT_ENCODER, &g_src, &err) != QI_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(names_map_as_the_converter_writes_them);
    RUN(full_size_mmproj_maps_every_tensor);
    RUN(mmproj_tower_matches_the_safetensors_tower);
    RUN(other_files_are_refused_saying_why);
    RUN(text_only_gguf_asks_for_the_mmproj);
    RUN(mmproj_is_found_beside_the_text_encoder);
    RUN(edit_runs_on_a_gguf_text_encoder_and_its_mmproj);
    qi_source_close(g_src);
    tmp_remove_tree(g_tmp);
    g_be->ops->destroy(g_be);
    TEST_END();
}

/*
 * test_lora.c — LoRA key layouts, scales and fusing: the public reference
 * LoRA (kohya style, rank 8, alpha 4) is rewritten in every supported layout
 * and each must fuse to bit-identical weights; strays and shape mismatches
 * are errors that name things; several LoRAs add up.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/dit.h"
#include "model/lora.h"
#include "test.h"
#include "testdata.h"

#define TRANSFORMER_DIR QI_REF_MODEL "/transformer"
#define REF_LORA QI_REF_PUBLIC "/lora.safetensors"

static char tmp_dir[64];
static qi_st_set *model;     /* the tiny transformer's weights */
static qi_st_set *ref_lora;  /* the reference LoRA */
static const char **weight_names;
static int n_weight_names;

/* ---- writing variants of the reference LoRA ----------------------------------------- */

typedef enum layout {
    KOHYA,            /* X.lora_down.weight / X.lora_up.weight / X.alpha */
    KOHYA_DIFFUSION,  /* diffusion_model.X... */
    KOHYA_TRANSFORMER,/* transformer.X... */
    KOHYA_DOTTED,     /* X.lora.down.weight / X.lora.up.weight / X.alpha */
    KOHYA_UNET,       /* lora_unet_<X with _>.lora_down.weight / .alpha */
    PEFT,             /* X.lora_A.weight / X.lora_B.weight, alpha/r baked into B */
    PEFT_TRANSFORMER, /* transformer.X.lora_A.weight ..., baked */
    PEFT_DEFAULT,     /* X.lora_A.default.weight ..., baked */
    PEFT_WITH_ALPHA,  /* X.lora_A/B unbaked + X.alpha (diffusers ignores the alpha: scale 1) */
    PEFT_NO_ALPHA,    /* X.lora_A/B unbaked, nothing else: scale 1 */
} layout;

/* Each module of the reference LoRA: name X, down, up, alpha. */
typedef struct ref_module {
    char name[128];
    const qi_st_tensor *down, *up, *alpha;
} ref_module;
static ref_module mods[64];
static int n_mods;

static void collect_ref_modules(void) {
    for (int i = 0; i < ref_lora->n_tensors; i++) {
        const qi_st_tensor *t = ref_lora->index[i];
        const char *suffix = strstr(t->name, ".lora_down.weight");
        if (!suffix) continue;
        ref_module *m = &mods[n_mods++];
        snprintf(m->name, sizeof m->name, "%.*s", (int)(suffix - t->name), t->name);
        char k[200];
        m->down = t;
        snprintf(k, sizeof k, "%s.lora_up.weight", m->name);
        m->up = qi_st_find(ref_lora, k);
        snprintf(k, sizeof k, "%s.alpha", m->name);
        m->alpha = qi_st_find(ref_lora, k);
    }
}

static void flatten(const char *in, char *out) {
    for (; *in; in++, out++) *out = *in == '.' ? '_' : *in;
    *out = 0;
}

/* Writes the reference LoRA in `lay` to tmp_dir/<file>; up_factor multiplies
 * every up matrix (e.g. -1 for a different LoRA). Returns the path. */
static const char *write_variant(layout lay, const char *file, float up_factor) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, file);
    qi_st_write_item items[3 * 64];
    char names[3 * 64][200];
    float *bufs[64];
    int n = 0;
    for (int i = 0; i < n_mods; i++) {
        const ref_module *m = &mods[i];
        char flat[128];
        flatten(m->name, flat);
        const char *pre = lay == KOHYA_DIFFUSION ? "diffusion_model."
                          : lay == KOHYA_TRANSFORMER || lay == PEFT_TRANSFORMER ? "transformer." : "";
        const char *down_sfx, *up_sfx;
        switch (lay) {
        case KOHYA_DOTTED: down_sfx = ".lora.down.weight", up_sfx = ".lora.up.weight"; break;
        case PEFT: case PEFT_TRANSFORMER: case PEFT_WITH_ALPHA: case PEFT_NO_ALPHA:
            down_sfx = ".lora_A.weight", up_sfx = ".lora_B.weight"; break;
        case PEFT_DEFAULT: down_sfx = ".lora_A.default.weight", up_sfx = ".lora_B.default.weight"; break;
        default: down_sfx = ".lora_down.weight", up_sfx = ".lora_up.weight";
        }
        const char *mod = lay == KOHYA_UNET ? flat : m->name;
        const char *upre = lay == KOHYA_UNET ? "lora_unet_" : pre;
        /* peft files carry no alpha: diffusers bakes alpha/r (0.5, exact) into them */
        int baked = lay == PEFT || lay == PEFT_TRANSFORMER || lay == PEFT_DEFAULT;
        int with_alpha = !(baked || lay == PEFT_NO_ALPHA);
        size_t nup = (size_t)(m->up->shape[0] * m->up->shape[1]);
        bufs[i] = malloc(nup * sizeof(float));
        const float *up = m->up->data;
        float alpha = *(const float *)m->alpha->data, rank = (float)m->down->shape[0];
        for (size_t k = 0; k < nup; k++) bufs[i][k] = up[k] * up_factor * (baked ? alpha / rank : 1.0f);

        snprintf(names[n], sizeof names[0], "%s%.127s%s", upre, mod, down_sfx);
        items[n] = (qi_st_write_item){names[n], QI_F32, 2, {m->down->shape[0], m->down->shape[1]},
                                      m->down->data};
        n++;
        snprintf(names[n], sizeof names[0], "%s%.127s%s", upre, mod, up_sfx);
        items[n] = (qi_st_write_item){names[n], QI_F32, 2, {m->up->shape[0], m->up->shape[1]}, bufs[i]};
        n++;
        if (with_alpha) {
            snprintf(names[n], sizeof names[0], "%s%.127s.alpha", upre, mod);
            items[n] = (qi_st_write_item){names[n], QI_F32, 0, {0}, m->alpha->data};
            n++;
        }
    }
    qi_error err;
    qi_status st = qi_st_write(path, items, n, &err);
    for (int i = 0; i < n_mods; i++) free(bufs[i]);
    if (st != QI_OK) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    return path;
}

/* A peft file with unbaked B and diffusers' lora_adapter_metadata {r: 8,
 * lora_alpha: 4} — qi_st_write has no metadata, so the file is written here. */
static const char *write_peft_with_adapter_metadata(void) {
    static char path[256];
    snprintf(path, sizeof path, "%s/peft_metadata.safetensors", tmp_dir);
    char *hdr = malloc(1 << 16);
    size_t off = 0, data = 0;
    off += (size_t)sprintf(hdr + off, "{\"__metadata__\":{\"format\":\"pt\",\"lora_adapter_metadata\":"
                                      "\"{\\\"r\\\": 8, \\\"lora_alpha\\\": 4, \\\"use_rslora\\\": false}\"}");
    for (int i = 0; i < n_mods; i++)
        for (int j = 0; j < 2; j++) {
            const qi_st_tensor *t = j ? mods[i].up : mods[i].down;
            size_t nb = (size_t)(t->shape[0] * t->shape[1]) * 4;
            off += (size_t)sprintf(hdr + off, ",\"transformer.%s.lora_%s.weight\":{\"dtype\":\"F32\","
                                              "\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                                   mods[i].name, j ? "B" : "A", (long long)t->shape[0],
                                   (long long)t->shape[1], data, data + nb);
            data += nb;
        }
    off += (size_t)sprintf(hdr + off, "}");
    while (off % 8) hdr[off++] = ' ';
    FILE *f = fopen(path, "wb");
    uint64_t n = off;
    fwrite(&n, 8, 1, f);
    fwrite(hdr, 1, off, f);
    for (int i = 0; i < n_mods; i++)
        for (int j = 0; j < 2; j++) {
            const qi_st_tensor *t = j ? mods[i].up : mods[i].down;
            fwrite(t->data, 4, (size_t)(t->shape[0] * t->shape[1]), f);
        }
    fclose(f);
    free(hdr);
    return path;
}

/* Writes a LoRA with the given tensors (names, shapes) filled with ones. */
static const char *write_custom(const char *file, int n, const char *const *names,
                                const int64_t (*shapes)[2]) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, file);
    qi_st_write_item items[8];
    static float ones[1 << 14];
    for (size_t i = 0; i < QI_ARRAY_LEN(ones); i++) ones[i] = 1.0f;
    for (int i = 0; i < n; i++)
        items[i] = (qi_st_write_item){names[i], QI_F32, shapes[i][0] ? 2 : 0, {shapes[i][0], shapes[i][1]},
                                      ones};
    qi_error err;
    return qi_st_write(path, items, n, &err) == QI_OK ? path : NULL;
}

/* ---- fusing helpers ------------------------------------------------------------------ */

/* The tiny transformer loaded with `set` on a fresh CPU backend: the
 * loader's status (err filled on failure); *loaded whether it gave a model
 * (freed here). */
static qi_status load_dit_with(const qi_lora_set *set, int *loaded, qi_error *err) {
    qi_backend *be = NULL;
    qi_dit *d = NULL;
    qi_source *src = NULL;
    qi_status st = qi_backend_cpu_create(0, 0, &be, err);
    if (st == QI_OK) st = qi_source_open_folder(TRANSFORMER_DIR, QI_COMPONENT_TRANSFORMER, &src, err);
    if (st == QI_OK) st = qi_dit_load(src, be, set, &d, err);
    *loaded = d != NULL;
    qi_dit_free(d);
    qi_source_close(src);
    if (be) be->ops->destroy(be);
    return st;
}

/* Fuses `set` into every targeted weight of the model; returns a buffer of all
 * fused weights concatenated (in weight_names order) or NULL with *st set. */
static float *fuse_all(const qi_lora_set *set, size_t *total, int *n_targets, qi_error *err,
                       qi_status *st) {
    qi_lora_binding *b = NULL;
    *st = qi_lora_bind(set, weight_names, n_weight_names, &b, err);
    if (*st != QI_OK) return NULL;
    size_t n = 0;
    for (int i = 0; i < n_weight_names; i++)
        if (qi_lora_binding_targets(b, weight_names[i])) {
            const qi_st_tensor *t = qi_st_find(model, weight_names[i]);
            n += (size_t)(t->shape[0] * t->shape[1]);
        }
    float *all = malloc(n * sizeof *all), *w = all;
    *n_targets = 0;
    for (int i = 0; i < n_weight_names && *st == QI_OK; i++) {
        if (!qi_lora_binding_targets(b, weight_names[i])) continue;
        const qi_st_tensor *t = qi_st_find(model, weight_names[i]);
        size_t k = (size_t)(t->shape[0] * t->shape[1]);
        qi_to_f32(w, t->data, t->dtype, k);
        *st = qi_lora_binding_fuse(b, weight_names[i], w, t->shape[0], t->shape[1], err);
        w += k;
        (*n_targets)++;
    }
    qi_lora_binding_free(b);
    *total = n;
    if (*st != QI_OK) {
        free(all);
        return NULL;
    }
    return all;
}

static float *fuse_file(const char *path, float strength, size_t *n, int *targets) {
    qi_lora_set *set = NULL;
    qi_error err;
    qi_status st = qi_lora_set_add(&set, path, strength, &err);
    float *w = NULL;
    if (st == QI_OK) w = fuse_all(set, n, targets, &err, &st);
    if (st != QI_OK) fprintf(stderr, "  %s: %s\n", path, err.msg);
    qi_lora_set_free(set);
    return w;
}

/* Largest relative deviation |f − x| / (1 + |x|) of the fused weights `fused`
 * (fuse_all's layout) from x = W + scale · up @ down of the reference LoRA's
 * modules, computed in double. */
static double max_deviation_from_ref_update(const float *fused, double scale) {
    double worst = 0;
    const float *p = fused;
    for (int i = 0; i < n_weight_names; i++) {
        const ref_module *m = NULL;
        for (int j = 0; j < n_mods; j++) {
            char name[160];
            snprintf(name, sizeof name, "%.127s.weight", mods[j].name);
            if (strcmp(name, weight_names[i]) == 0) m = &mods[j];
        }
        if (!m) continue;
        const qi_st_tensor *t = qi_st_find(model, weight_names[i]);
        int64_t O = t->shape[0], I = t->shape[1], r = m->down->shape[0];
        const float *up = m->up->data, *down = m->down->data;
        for (int64_t o = 0; o < O; o++)
            for (int64_t k = 0; k < I; k++) {
                double acc = 0;
                for (int64_t q = 0; q < r; q++) acc += (double)up[o * r + q] * down[q * I + k];
                double want = qi_bf16_to_f32(((const uint16_t *)t->data)[o * I + k]) + scale * acc;
                double e = fabs(p[o * I + k] - want) / (1 + fabs(want));
                if (e > worst) worst = e;
            }
        p += O * I;
    }
    return worst;
}

/* ---- claims ------------------------------------------------------------------------ */

static void reference_lora_fuses_with_alpha_over_rank(void) {
    size_t n;
    int targets = 0;
    float *w = fuse_file(REF_LORA, 1.0f, &n, &targets);
    CHECK(w != NULL, "fuses");
    CHECK(targets == 28, "28 weights touched, got %d", targets);
    if (!w) return;
    double worst = max_deviation_from_ref_update(w, 0.5);
    printf("  reference LoRA (kohya, rank 8, alpha 4): max rel deviation from W + 0.5·up@down = %.2e\n", worst);
    CHECK(worst < 1e-6, "fused weights deviate by %.3g", worst);
    free(w);
}

static void every_layout_fuses_bit_identically(void) {
    size_t n_ref;
    int targets;
    float *ref = fuse_file(REF_LORA, 1.0f, &n_ref, &targets);
    CHECK(ref != NULL, "reference fuses");
    if (!ref) return;
    struct { layout lay; const char *file; } v[] = {
        {KOHYA, "kohya.safetensors"},
        {KOHYA_DIFFUSION, "kohya_diffusion_model.safetensors"},
        {KOHYA_TRANSFORMER, "kohya_transformer.safetensors"},
        {KOHYA_DOTTED, "kohya_lora_dot_down.safetensors"},
        {KOHYA_UNET, "lora_unet.safetensors"},
        {PEFT, "peft.safetensors"},
        {PEFT_TRANSFORMER, "peft_transformer.safetensors"},
        {PEFT_DEFAULT, "peft_default.safetensors"},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(v); i++) {
        const char *path = write_variant(v[i].lay, v[i].file, 1.0f);
        size_t n = 0;
        float *w = path ? fuse_file(path, 1.0f, &n, &targets) : NULL;
        int same = w && n == n_ref && memcmp(w, ref, n * sizeof *w) == 0;
        printf("  %-36s %s\n", v[i].file, same ? "bit-identical" : "DIFFERS");
        CHECK(same, "%s must fuse exactly like the reference file", v[i].file);
        free(w);
    }
    const char *path = write_peft_with_adapter_metadata();
    size_t n = 0;
    float *w = fuse_file(path, 1.0f, &n, &targets);
    int same = w && n == n_ref && memcmp(w, ref, n * sizeof *w) == 0;
    printf("  %-36s %s\n", "peft + lora_adapter_metadata (4/8)", same ? "bit-identical" : "DIFFERS");
    CHECK(same, "peft with adapter metadata must use lora_alpha/r");
    free(w);
    free(ref);
}

/* diffusers' rule: peft lora_A/lora_B run at scale 1 even with .alpha present. */
static void peft_alpha_tensors_are_ignored(void) {
    size_t n1, n2, n3;
    int t;
    float *with = fuse_file(write_variant(PEFT_WITH_ALPHA, "peft_alpha.safetensors", 1.0f), 1.0f, &n1, &t);
    float *without = fuse_file(write_variant(PEFT_NO_ALPHA, "peft_noalpha.safetensors", 1.0f), 1.0f, &n2, &t);
    float *kohya = fuse_file(REF_LORA, 1.0f, &n3, &t);
    CHECK(with && without && kohya, "fuse");
    if (with && without && kohya) {
        CHECK(n1 == n2 && memcmp(with, without, n1 * sizeof *with) == 0, "alpha must not change a peft file");
        CHECK(n1 == n3 && memcmp(with, kohya, n1 * sizeof *with) != 0, "peft scale 1 vs kohya 0.5 must differ");
    }
    free(with);
    free(without);
    free(kohya);
}

static void unknown_module_lists_keys_and_nearest_names(void) {
    const char *names[] = {"transformer_blocks.0.attn.to_qq.lora_down.weight",
                           "transformer_blocks.0.attn.to_qq.lora_up.weight",
                           "lora_unet_transformer_blocks_1_img_mlp_net_0_projj.lora_down.weight",
                           "lora_unet_transformer_blocks_1_img_mlp_net_0_projj.lora_up.weight",
                           "transformer_blocks.0.attn.to_k.lora_down.weight",
                           "transformer_blocks.0.attn.to_k.lora_up.weight"};
    const int64_t shapes[][2] = {{8, 128}, {128, 8}, {8, 128}, {512, 8}, {8, 128}, {128, 8}};
    const char *path = write_custom("unknown.safetensors", 6, names, shapes);
    qi_lora_set *set = NULL;
    qi_error err;
    CHECK(path && qi_lora_set_add(&set, path, 1.0f, &err) == QI_OK, "%s", err.msg);
    qi_lora_binding *b = NULL;
    qi_status st = qi_lora_bind(set, weight_names, n_weight_names, &b, &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT, "bind must fail");
    CHECK(strstr(err.msg, "2 of 3 modules"), "counts: %s", err.msg);
    CHECK(strstr(err.msg, "attn.to_qq.lora_down.weight") &&
              strstr(err.msg, "nearest: transformer_blocks.0.attn.to_q"), "dotted stray: %s", err.msg);
    CHECK(strstr(err.msg, "projj") && strstr(err.msg, "transformer_blocks.1.img_mlp.net.0.proj"),
          "flattened stray: %s", err.msg);
    qi_lora_binding_free(b);
    /* the same through the transformer loader */
    int loaded;
    st = load_dit_with(set, &loaded, &err);
    CHECK(st == QI_ERR_FORMAT && !loaded && strstr(err.msg, "to_qq"), "dit load: %s", err.msg);
    qi_lora_set_free(set);
}

static void shape_mismatch_names_both_shapes(void) {
    const char *names[] = {"transformer_blocks.0.attn.to_q.lora_down.weight",
                           "transformer_blocks.0.attn.to_q.lora_up.weight"};
    const int64_t shapes[][2] = {{8, 128}, {64, 8}};
    const char *path = write_custom("shape.safetensors", 2, names, shapes);
    size_t n;
    int t;
    qi_status st;
    qi_lora_set *set = NULL;
    qi_error err;
    CHECK(path && qi_lora_set_add(&set, path, 1.0f, &err) == QI_OK, "%s", err.msg);
    float *w = fuse_all(set, &n, &t, &err, &st);
    printf("  %s\n", err.msg);
    CHECK(!w && st == QI_ERR_FORMAT, "fuse must fail");
    CHECK(strstr(err.msg, "[64, 128]") && strstr(err.msg, "[128, 128]") &&
              strstr(err.msg, "transformer_blocks.0.attn.to_q.weight"), "%s", err.msg);
    free(w);
    int loaded;
    st = load_dit_with(set, &loaded, &err);
    CHECK(st == QI_ERR_FORMAT && !loaded && strstr(err.msg, "[64, 128]"), "dit load: %s", err.msg);
    qi_lora_set_free(set);
}

static void malformed_files_are_refused(void) {
    qi_lora_set *set = NULL;
    qi_error err;
    const char *n1[] = {"transformer_blocks.0.attn.to_q.lora_down.weight", "something.else"};
    const int64_t s1[][2] = {{8, 128}, {4, 4}};
    qi_status st = qi_lora_set_add(&set, write_custom("stray.safetensors", 2, n1, s1), 1.0f, &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "something.else"), "unknown key form: %s", err.msg);
    const char *n2[] = {"transformer_blocks.0.attn.to_q.lora_down.weight"};
    const int64_t s2[][2] = {{8, 128}};
    st = qi_lora_set_add(&set, write_custom("half.safetensors", 1, n2, s2), 1.0f, &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "no up"), "down without up: %s", err.msg);
    const char *n3[] = {"transformer_blocks.0.attn.to_q.lora_down.weight",
                        "transformer_blocks.0.attn.to_q.lora_up.weight"};
    const int64_t s3[][2] = {{8, 128}, {128, 4}};
    st = qi_lora_set_add(&set, write_custom("rank.safetensors", 2, n3, s3), 1.0f, &err);
    printf("  %s\n", err.msg);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "rank"), "rank mismatch: %s", err.msg);
    CHECK(set == NULL, "no set is made from failed adds");
    CHECK(qi_lora_set_add(&set, "/nonexistent/lora.safetensors", 1.0f, &err) != QI_OK, "missing file");
}

/* A key that is a known prefix directly followed by a known suffix has no
 * module name between them. parse_key used to subtract the prefix length
 * from the (shorter) module length: memcpy of SIZE_MAX bytes onto the stack
 * (issue 15; ASan: negative-size-param, release: a crash or a corrupted
 * stack). Each is now a clear error naming the key. */
static void prefix_then_suffix_keys_are_refused(void) {
    static const char *const keys[] = {
        "transformer.lora_down.weight", "diffusion_model.lora_A.weight", "base_model.model.alpha",
        "transformer.dora_scale",       "model.diffusion_model.lora_B.weight",
        "lora_unet_lora.down.weight",   /* flattened prefix "lora_unet_" over suffix "_lora.down.weight" */
        "transformer.lora_unet_.alpha", /* dotted, then flattened, prefix: nothing left */
        "transformer.default.lora_up.weight", /* the peft infix removed first, then the same */
    };
    for (size_t k = 0; k < QI_ARRAY_LEN(keys); k++) {
        const char *names[] = {keys[k]};
        const int64_t shapes[][2] = {{4, 8}};
        const char *path = write_custom("prefix_suffix.safetensors", 1, names, shapes);
        REQUIRE(path != NULL, "cannot write the LoRA for '%s'", keys[k]);
        qi_lora_set *set = NULL;
        qi_error err = {{0}};
        qi_status st = qi_lora_set_add(&set, path, 1.0f, &err);
        printf("  %s\n", err.msg);
        CHECK(st == QI_ERR_FORMAT && strstr(err.msg, keys[k]) && strstr(err.msg, "no known LoRA form"),
              "'%s': status %d, %s", keys[k], st, err.msg);
        CHECK(set == NULL, "'%s': no set is made", keys[k]);
        qi_lora_set_free(set);
    }
}

/* Two LoRAs with strengths: deltas add (checked against double arithmetic). */
static void two_loras_add_with_their_strengths(void) {
    const char *second = write_variant(KOHYA_UNET, "second.safetensors", -3.0f);
    qi_lora_set *set = NULL;
    qi_error err;
    CHECK(qi_lora_set_add(&set, REF_LORA, 1.0f, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_lora_set_add(&set, second, 0.25f, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_lora_set_file_count(set) == 2 && qi_lora_set_module_count(set) == 56, "counts %d %d",
          qi_lora_set_file_count(set), qi_lora_set_module_count(set));
    size_t n;
    int t;
    qi_status st;
    float *w = fuse_all(set, &n, &t, &err, &st);
    CHECK(w != NULL, "%s", err.msg);
    /* expected: W + 0.5·Δ + 0.25·0.5·(−3Δ) = W + 0.125·Δ with Δ = up@down */
    double worst = w ? max_deviation_from_ref_update(w, 0.125) : 0;
    printf("  ref @1.0 + lora_unet(-3·up) @0.25: max rel deviation from W + 0.125·Δ = %.2e\n", worst);
    CHECK(worst < 1e-6, "sum deviates by %.3g", worst);
    free(w);
    qi_lora_set_free(set);
}

int main(void) {
    qi_error err = {{0}};
    if (tmp_dir_make(tmp_dir, sizeof tmp_dir, "lora") != 0 ||
        qi_st_set_open_dir(TRANSFORMER_DIR, "diffusion_pytorch_model", &model, &err) != QI_OK ||
        qi_st_set_open_file(REF_LORA, &ref_lora, &err) != QI_OK) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return 1;
    }
    weight_names = malloc((size_t)model->n_tensors * sizeof *weight_names);
    for (int i = 0; i < model->n_tensors; i++)
        if (model->index[i]->ndim == 2) weight_names[n_weight_names++] = model->index[i]->name;
    collect_ref_modules();

    RUN(reference_lora_fuses_with_alpha_over_rank);
    RUN(every_layout_fuses_bit_identically);
    RUN(peft_alpha_tensors_are_ignored);
    RUN(unknown_module_lists_keys_and_nearest_names);
    RUN(shape_mismatch_names_both_shapes);
    RUN(malformed_files_are_refused);
    RUN(prefix_then_suffix_keys_are_refused);
    RUN(two_loras_add_with_their_strengths);

    tmp_remove_tree(tmp_dir);
    free(weight_names);
    qi_st_set_close(model);
    qi_st_set_close(ref_lora);
    TEST_END();
}

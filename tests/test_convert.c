/*
 * test_convert.c — claims about `qwen-image convert` as a person uses it:
 * the tiny model with the Lightning-style LoRA of the en_lightning8_lora case
 * fused in, written as a Q8_0 GGUF and as fp8-row / fp8 safetensors, then
 * generated from: each image against the case's reference image (diffusers,
 * float32, LoRA fused: the fused float reference). Also the file's layout (city96: diffusers
 * names, no prefix, general.architecture, F32 1-D/small tensors), other
 * sources (the mixed-type GGUF fixture with its LoRA, ComfyUI scaled fp8)
 * read back within the type's error of the source's float values, the K-type
 * fallback for rows that are not whole blocks, and the errors (unknown type,
 * unwritable -o, bad LoRA) that leave no file behind.
 */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <unistd.h>

#include "base/types.h"
#include "image_check.h"
#include "io/gguf.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/lora.h"
#include "test.h"
#include "testdata.h"

static char dir[256], model[1024], lora[1024];
#define PROMPT "'A capybara wearing a suit holding a sign that reads Hello World.'"
#define CASE_ARGS "-n ' ' --steps 8 --cfg 1 --scheduler lightning -W 128 -H 96 --seed 42 --quiet"

/* Max abs difference of an image file against the case's image_u8; -1 on failure. */
static int image_diff(const char *png, double *mean) {
    uint8_t *a = NULL;
    int w, h, maxd = -1;
    qi_error err;
    if (qi_png_read(png, &a, &w, &h, NULL, &err)) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    qi_st_file *r = NULL;
    char p[1200];
    snprintf(p, sizeof p, "%s/cases/en_lightning8_lora/tensors.safetensors", QI_TEST_DATA);
    if (qi_st_open(p, &r, &err) == QI_OK) {
        double m;
        maxd = ref_image_diff(r, a, (size_t)w * h * 3, &m);
        if (maxd >= 0) *mean = m;
    }
    CHECK(maxd >= 0, "no reference image for %s", png);
    free(a);
    qi_st_close(r);
    return maxd;
}

/* Converts with `type` into dir/name; the command's exit code. */
static int convert(const char *type, const char *name, char *out, size_t cap) {
    return run_shell(out, cap, "%s convert -m %s --lora %s --type %s -o %s/%s", qi_cli(), model, lora, type, dir, name);
}

/* Generates the case from dir/name as the transformer into dir/name.png. */
static int generate_from(const char *name, char *png, size_t cap) {
    char out[8192];
    snprintf(png, cap, "%s/%s.png", dir, name);
    int rc = run_shell(out, sizeof out, "%s generate -m %s --diffusion-model %s/%s -p %s " CASE_ARGS " -o %s", qi_cli(),
                       model, dir, name, PROMPT, png);
    CHECK(rc == 0, "generate from %s: rc %d: %s", name, rc, out);
    return rc;
}

/* Converted file → image, against the case's reference (test_cli shows the
 * engine's own float run with the LoRA within 2 of it). */
static void check_image(const char *name, int limit_ref) {
    char png[1300];
    if (generate_from(name, png, sizeof png)) return;
    double mean_ref = 0;
    int d_ref = image_diff(png, &mean_ref);
    printf("  %s: vs the fused float reference image max abs diff %d (mean %.3f)\n", name, d_ref, mean_ref);
    CHECK(d_ref >= 0 && d_ref <= limit_ref, "%s: max abs diff %d > %d", name, d_ref, limit_ref);
}

static void q8_0_gguf_has_city96_layout_and_gives_the_reference_image(void) {
    char out[16384];
    int rc = convert("Q8_0", "fused-q8_0.gguf", out, sizeof out);
    REQUIRE(rc == 0, "rc %d: %s", rc, out);
    CHECK(strstr(out, "convert: transformer_blocks.1 done") && strstr(out, "Q8_0 34"), "progress lines: %s", out);
    char path[1200];
    snprintf(path, sizeof path, "%s/fused-q8_0.gguf", dir);
    qi_gguf_file *g;
    qi_source *src;
    qi_error err;
    REQUIRE(qi_gguf_open(path, &g, &err) == QI_OK, "%s", err.msg);
    char src_dir[1200];
    snprintf(src_dir, sizeof src_dir, "%s/transformer", model);
    REQUIRE(qi_source_open(src_dir, QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK, "%s", err.msg);
    const char *arch;
    size_t len;
    CHECK(qi_gguf_get_string(g, "general.architecture", &arch, &len, &err) == QI_OK && len == 10 &&
              !memcmp(arch, "qwen_image", 10), "general.architecture");
    CHECK(qi_gguf_tensor_count(g) == qi_source_tensor_count(src), "%d tensors, source %d", qi_gguf_tensor_count(g),
          qi_source_tensor_count(src));
    int bad = 0;
    for (int i = 0; i < qi_source_tensor_count(src); i++) {
        qi_source_tensor s;
        qi_source_tensor_at(src, i, &s);
        const qi_gguf_tensor *t = qi_gguf_find(g, s.name); /* the same names: no prefix */
        int64_t n = 1;
        for (int d = 0; d < s.ndim; d++) n *= s.shape[d];
        qi_dtype want = s.ndim == 2 && n > 1024 ? QI_Q8_0 : QI_F32;
        if (!t || t->dtype != want || t->ndim != s.ndim || memcmp(t->shape, s.shape, sizeof(int64_t) * s.ndim)) {
            if (bad++ < 3) CHECK(0, "tensor %s: %s in the GGUF", s.name, t ? qi_dtype_name(t->dtype) : "missing");
        }
    }
    qi_source_close(src);
    qi_gguf_close(g);
    /* Q8_0 moves the tiny model's image by a level at most (measured 1) */
    check_image("fused-q8_0.gguf", 3);
}

static void fp8_safetensors_give_the_reference_image(void) {
    char out[16384];
    static const char *const types[] = {"fp8-row", "fp8"};
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "fused-%s.safetensors", types[k]);
        int rc = convert(types[k], name, out, sizeof out);
        CHECK(rc == 0, "rc %d: %s", rc, out);
        if (rc) continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        qi_st_file *f;
        qi_error err;
        REQUIRE(qi_st_open(path, &f, &err) == QI_OK, "%s", err.msg);
        const qi_st_tensor *w = qi_st_file_find(f, "transformer_blocks.0.attn.to_q.weight");
        const qi_st_tensor *s = qi_st_file_find(f, k == 0 ? "transformer_blocks.0.attn.to_q.weight_scale"
                                                          : "transformer_blocks.0.attn.to_q.scale_weight");
        CHECK(w && w->dtype == QI_F8_E4M3, "%s: weight in F8_E4M3", name);
        CHECK(s && s->dtype == QI_F32 && (k == 0 ? s->ndim == 2 && s->shape[1] == 1 && s->shape[0] == w->shape[0]
                                                 : s->ndim == 0),
              "%s: scale tensor", name);
        CHECK(k == 0 || qi_st_file_find(f, "scaled_fp8"), "scaled_fp8 marker");
        qi_st_close(f);
        /* fp8 (3 mantissa bits) moves it further: measured 7 levels */
        if (k == 0) {
            check_image(name, 12);
        } else { /* the per-tensor file: the loader reads every scale (its image: README) */
            qi_source *src;
            CHECK(qi_source_open(path, QI_COMPONENT_TRANSFORMER, &src, &err) == QI_OK, "%s", err.msg);
            qi_source_tensor t;
            CHECK(src && qi_source_find(src, "transformer_blocks.0.attn.to_q.weight", &t) &&
                      t.scale_form == QI_SCALE_TENSOR, "scale_weight attached");
            qi_source_close(src);
        }
    }
}

static void k_types_fall_back_where_rows_are_not_whole_blocks(void) {
    char out[16384], path[1200];
    int rc = convert("Q4_K", "fused-q4_k.gguf", out, sizeof out);
    REQUIRE(rc == 0, "rc %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/fused-q4_k.gguf", dir);
    qi_gguf_file *g;
    qi_error err;
    REQUIRE(qi_gguf_open(path, &g, &err) == QI_OK, "%s", err.msg);
    /* most of the tiny model's rows are 64 or 128 wide: not whole 256-element
     * Q4_K blocks, so Q5_0; the 512-wide ones (img_mlp.net.2) stay Q4_K */
    int n_k = 0, n_fb = 0;
    for (int i = 0; i < qi_gguf_tensor_count(g); i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(g, i);
        if (t->ndim != 2 || t->shape[0] * t->shape[1] <= 1024) continue;
        qi_dtype want = t->shape[1] % 256 == 0 ? QI_Q4_K : QI_Q5_0;
        CHECK(t->dtype == want, "%s [%lld, %lld]: %s", t->name, (long long)t->shape[0], (long long)t->shape[1],
              qi_dtype_name(t->dtype));
        n_k += t->dtype == QI_Q4_K, n_fb += t->dtype == QI_Q5_0;
    }
    CHECK(n_k > 0 && n_fb > 0, "%d Q4_K, %d Q5_0", n_k, n_fb);
    qi_gguf_close(g);
}

/* Every tensor of `out` against `in` (+ LoRA) in float32: the largest
 * relative RMSE over the tensors of type `type` (others must be exact). */
static double worst_rel_rmse(const char *in, const char *lora_file, const char *out, qi_dtype type) {
    qi_source *a = NULL, *b = NULL;
    qi_lora_set *set = NULL;
    qi_lora_binding *bind = NULL;
    qi_error err;
    double worst = -1;
    int n = 0;
    const char **names = NULL;
    if (qi_source_open(in, QI_COMPONENT_TRANSFORMER, &a, &err) || qi_source_open(out, QI_COMPONENT_TRANSFORMER, &b, &err) ||
        (lora_file && qi_lora_set_add(&set, lora_file, 1.0f, &err))) {
        CHECK(0, "%s", err.msg);
        goto done;
    }
    n = qi_source_tensor_count(a);
    names = malloc(sizeof *names * n);
    for (int i = 0; i < n; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(a, i, &t);
        names[i] = t.name;
    }
    if (qi_lora_bind(set, names, n, &bind, &err)) {
        CHECK(0, "%s", err.msg);
        goto done;
    }
    CHECK(qi_source_tensor_count(b) == n, "%d tensors, source %d", qi_source_tensor_count(b), n);
    worst = 0;
    for (int i = 0; i < n; i++) {
        qi_source_tensor ta, tb;
        qi_source_tensor_at(a, i, &ta);
        if (!qi_source_find(b, ta.name, &tb)) {
            CHECK(0, "%s missing", ta.name);
            continue;
        }
        int64_t m = 1;
        for (int d = 0; d < ta.ndim; d++) m *= ta.shape[d];
        float *x = malloc(sizeof *x * m), *y = malloc(sizeof *y * m);
        qi_source_tensor_to_f32(&ta, x, &err);
        if (ta.ndim == 2 && qi_lora_binding_targets(bind, ta.name))
            qi_lora_binding_fuse(bind, ta.name, x, ta.shape[0], ta.shape[1], &err);
        qi_source_tensor_to_f32(&tb, y, &err);
        double e = 0, s = 0;
        for (int64_t k = 0; k < m; k++) e += ((double)y[k] - x[k]) * ((double)y[k] - x[k]), s += (double)x[k] * x[k];
        double rel = s > 0 ? sqrt(e / s) : sqrt(e);
        if (tb.dtype == type) worst = fmax(worst, rel);
        else if (qi_dtype_is_block(tb.dtype)) /* rows not whole K blocks: the fallback type (Q5_0, Q8_0) */
            CHECK(rel < 0.06, "%s: fallback %s, rel err %g", tb.name, qi_dtype_name(tb.dtype), rel);
        else CHECK(tb.dtype == QI_F32 && e == 0, "%s: %s, rel err %g", tb.name, qi_dtype_name(tb.dtype), rel);
        free(x);
        free(y);
    }
done:
    free(names);
    qi_lora_binding_free(bind);
    qi_lora_set_free(set);
    qi_source_close(a);
    qi_source_close(b);
    return worst;
}

static void any_source_converts(void) {
    char out[16384], in[1200], lf[1200], o[1200];
    /* the city96-style mixed GGUF (every block type) + its kohya LoRA → Q4_K */
    snprintf(in, sizeof in, "%s/formats/qwen-image-tiny-mixed.gguf", QI_TEST_DATA);
    snprintf(lf, sizeof lf, "%s/formats/qwen-image-tiny-mixed.lora-kohya.safetensors", QI_TEST_DATA);
    snprintf(o, sizeof o, "%s/mixed-q4_k.gguf", dir);
    int rc = run_shell(out, sizeof out, "%s convert --diffusion-model %s --lora %s:1 --type Q4_K -o %s --quiet", qi_cli(),
                       in, lf, o);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    double w = rc ? -1 : worst_rel_rmse(in, lf, o, QI_Q4_K);
    printf("  mixed GGUF + LoRA -> Q4_K: worst tensor relative RMSE %.4f\n", w);
    CHECK(w > 0 && w < 0.12, "Q4_K relative RMSE %g (gaussian weights: 0.072)", w);
    /* ComfyUI scaled fp8 (per-tensor scales) → Q8_0 */
    snprintf(in, sizeof in, "%s/formats/comfy_scaled_fp8.safetensors", QI_TEST_DATA);
    snprintf(o, sizeof o, "%s/scaled-q8_0.gguf", dir);
    rc = run_shell(out, sizeof out, "%s convert --diffusion-model %s --type Q8_0 -o %s --quiet", qi_cli(), in, o);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    w = rc ? -1 : worst_rel_rmse(in, NULL, o, QI_Q8_0);
    printf("  ComfyUI scaled fp8 -> Q8_0: worst tensor relative RMSE %.5f\n", w);
    CHECK(w > 0 && w < 0.01, "Q8_0 relative RMSE %g (gaussian weights: 0.0047)", w);
}

static int leftovers(void) {
    char out[4096];
    run_shell(out, sizeof out, "ls %s | grep -c tmp", dir);
    return atoi(out);
}

static void errors_are_one_line_and_leave_no_file(void) {
    char out[8192], bad_lora[1200];
    int rc = run_shell(out, sizeof out, "%s convert -m %s --type Q7_X -o %s/x.gguf", qi_cli(), model, dir);
    CHECK(rc == 2 && strstr(out, "--type Q7_X: unknown type"), "unknown type: rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s convert -m %s --type fp8 -o %s/x.gguf", qi_cli(), model, dir);
    CHECK(rc == 2 && strstr(out, "*.safetensors"), "fp8 into .gguf: rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s convert -m %s --type Q8_0 -o %s/no/such/dir/x.gguf", qi_cli(), model, dir);
    CHECK(rc != 0 && strstr(out, "-o"), "unwritable -o: rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s convert -m %s --lora %s/none.safetensors --type Q8_0 -o %s/x.gguf", qi_cli(),
                   model, dir, dir);
    CHECK(rc == 1 && strstr(out, "none.safetensors"), "missing LoRA: rc %d: %s", rc, out);
    /* a file that is no LoRA: the transformer itself */
    snprintf(bad_lora, sizeof bad_lora, "%s/transformer/diffusion_pytorch_model.safetensors", model);
    rc = run_shell(out, sizeof out, "%s convert -m %s --lora %s --type Q8_0 -o %s/x.gguf", qi_cli(), model, bad_lora,
                   dir);
    CHECK(rc != 0 && strstr(out, "diffusion_pytorch_model.safetensors"), "not a LoRA: rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s convert --type Q8_0 -o %s/x.gguf", qi_cli(), dir);
    CHECK(rc == 2 && strstr(out, "-m FOLDER"), "no source: rc %d: %s", rc, out);
    struct stat sb;
    char x[1200];
    snprintf(x, sizeof x, "%s/x.gguf", dir);
    CHECK(stat(x, &sb) != 0, "no output file after the errors");
    CHECK(leftovers() == 0, "no temporary file left");
}

int main(void) {
    if (tmp_dir_make(dir, sizeof dir, "convert")) return 1;
    snprintf(model, sizeof model, "%s/tiny-model", QI_TEST_DATA);
    snprintf(lora, sizeof lora, "%s/cases/lora.safetensors", QI_TEST_DATA);
    RUN(q8_0_gguf_has_city96_layout_and_gives_the_reference_image);
    RUN(fp8_safetensors_give_the_reference_image);
    RUN(k_types_fall_back_where_rows_are_not_whole_blocks);
    RUN(any_source_converts);
    RUN(errors_are_one_line_and_leave_no_file);
    tmp_remove_tree(dir);
    TEST_END();
}

/*
 * test_lora_runtime.c — LoRAs applied beside the stored weights
 * (y = W·x + Σ s·B·(A·x), qi_lora_mode QI_LORA_RUNTIME) against the same
 * LoRAs fused into float32 copies (QI_LORA_FUSE) on the tiny model, the
 * GGUF and an fp8 fixture; swapping LoRA sets between requests on one
 * engine without reloading the transformer; auto mode's choice per weight
 * type.
 *
 * Fused and runtime differ by float rounding only (the order of the sums):
 * the limits below are vae_in rel L2 <= 1e-5 and image max abs diff <= 1,
 * well under the formats tests' 1e-4 / 2 against their references.
 *
 * `test_lora_runtime -d cuda` (label cuda) runs the runtime-vs-fused claims
 * on the GPU, where both run in bf16 activations (fused weights rounded to
 * bf16, factors kept bf16): there the limit is the GPU pipeline's vae_in
 * rel L2 <= 2e-2. Where the runtime engine's e4m3 weights ran through the
 * fp8 GEMM (fp8-capable GPUs: activations rounded to e4m3, ≈ 2.4e-2 per
 * linear, see test_cuda_backend_caps) against fused bf16 weights, the limit
 * is 5e-2 as in test_formats (expected ≈ 2–4e-2, an estimate to be replaced
 * by the first GPU run's printed figure).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/engine.h"
#ifdef QI_WITH_CUDA
#include "backend/cuda/cuda_backend.h" /* qi_cuda_gemm_counts: did the fp8 GEMM run */
#endif
#include "image_check.h"
#include "io/safetensors.h"
#include "io/source.h"
#include "model/dit.h"
#include "qwen_image.h"
#include "test.h"
#include "testdata.h"

#define TINY QI_TEST_DATA "/tiny-model"
#define LORA QI_TEST_DATA "/cases/lora.safetensors"
#define FORMATS QI_TEST_DATA "/formats"

static const char *g_device = "cpu";
static char g_tmp[64];
static char g_lora2[256]; /* a second LoRA: the first with bf16 factors and up · -2 */
/* Images of fresh engines, made by the first claims and compared again by the
 * later ones (each engine costs a text encoder, a transformer and a VAE). */
static qi_image g_base, g_rt_one, g_rt_two, g_fu_two;

/* ---- engines ------------------------------------------------------------------------ */

typedef struct log_count {
    int loads, swaps;
} log_count;

static void on_log(void *user, const char *line) {
    log_count *c = user;
    if (strstr(line, "loading transformer")) c->loads++;
    if (strstr(line, "LoRA set swapped")) c->swaps++;
}

/* The engine on the tiny model; `file` (may be NULL) a transformer fixture
 * of tests/data/formats taking the transformer's place (as test_formats). */
static qi_engine *open_engine(qi_lora_mode mode, const char *file, log_count *logc) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = TINY;
    o.device = g_device;
    o.lora_mode = mode;
    o.log = logc ? on_log : NULL;
    o.log_user = logc;
    qi_engine *e = NULL;
    qi_status st = qi_engine_open(&o, &e);
    CHECK(st == QI_OK, "open: %s", qi_engine_error(e));
    if (st == QI_OK && file) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", FORMATS, file);
        qi_source *src = NULL;
        qi_error err = {{0}};
        st = qi_source_open(path, QI_COMPONENT_TRANSFORMER, &src, &err);
        /* the single files hold the tiny transformer: its config goes with them (formats/README.md) */
        if (st == QI_OK && strstr(file, ".safetensors"))
            st = qi_source_set_config(src, TINY "/transformer/config.json", &err);
        CHECK(st == QI_OK, "%s", err.msg);
        qi_source_close(e->src[QI_COMPONENT_TRANSFORMER]);
        e->src[QI_COMPONENT_TRANSFORMER] = src;
    }
    if (st != QI_OK) {
        qi_engine_close(e);
        return NULL;
    }
    return e;
}

static qi_status gen(qi_engine *e, qi_image *img) {
    qi_request r = qi_request_default();
    r.prompt = "a lighthouse at dusk";
    r.width = 32;
    r.height = 32;
    r.steps = 2;
    r.scheduler = "lightning";
    r.noise_dtype = 1;
    qi_status st = qi_generate(e, &r, img);
    CHECK(st == QI_OK, "generate: %s", qi_engine_error(e));
    return st;
}

/* Runtime `a` against fused `b`: within float rounding (device limits in the header). */
/* Linears the image_with engines since the last check_close ran through the fp8 GEMM. */
static unsigned long long g_fp8_calls;

static void check_close(const char *what, const qi_image *a, const qi_image *b) {
    REQUIRE(a->rgb && b->rgb && image_latent_count(a) == image_latent_count(b), "%s: two images", what);
    double rel = qi_rel_l2(a->latents, b->latents, image_latent_count(a));
    double mx = qi_max_abs_diff(a->latents, b->latents, image_latent_count(a));
    int px = pixel_diff(a->rgb, b->rgb, image_pixel_bytes(a), NULL);
    printf("  %-44s %s: vae_in max abs diff %.2e, rel L2 %.2e; image max abs diff %d\n", what, g_device, mx, rel,
           px);
    if (!strcmp(g_device, "cpu")) {
        CHECK(rel <= 1e-5 && px <= 1, "%s: vae_in rel L2 %.3g, image max diff %d", what, rel, px);
    } else { /* fp8 GEMM in one of the two: the looser bound, see the top */
        double lim = g_fp8_calls ? 5e-2 : 2e-2;
        if (g_fp8_calls) printf("  %-44s (%llu fp8 GEMMs: limit 5e-2)\n", what, g_fp8_calls);
        CHECK(rel <= lim, "%s: vae_in rel L2 %.3g", what, rel);
    }
    g_fp8_calls = 0;
}

/* The image of a fresh engine in `mode` with loras[0..n) (transformer `file`). */
static qi_status image_with(qi_lora_mode mode, const char *file, const qi_lora_spec *loras, int n, qi_image *img,
                            int *fused, int *terms) {
    memset(img, 0, sizeof *img);
    qi_engine *e = open_engine(mode, file, NULL);
    if (!e) return QI_ERR_ARG;
    qi_status st = qi_engine_set_loras(e, loras, n);
    CHECK(st == QI_OK, "set_loras: %s", qi_engine_error(e));
    if (st == QI_OK) st = gen(e, img);
    qi_dit *d = NULL;
    if (st == QI_OK && qi_engine_dit(e, &d) == QI_OK) {
        if (fused) *fused = qi_dit_lora_fused(d);
        if (terms) *terms = qi_dit_lora_terms(d);
    }
#ifdef QI_WITH_CUDA
    qi_backend *be = qi_engine_backend(e);
    unsigned long long fp8 = 0;
    if (be && !strcmp(be->ops->name, "cuda")) qi_cuda_gemm_counts(be, &fp8, NULL);
    g_fp8_calls += fp8;
#endif
    qi_engine_close(e);
    return st;
}

/* ---- claims ----------------------------------------------------------------------------- */

/* One LoRA on the tiny bf16 model: runtime equals fused; runtime keeps
 * every weight as stored (no fused copy) and attaches one module per
 * adapted Linear; the LoRA changes the image. */
static void runtime_equals_fused_on_the_tiny_model(void) {
    qi_lora_spec one = {LORA, 1.0f};
    qi_image fu = {0}, *rt = &g_rt_one;
    int rt_fused = -1, rt_terms = -1, fu_fused = -1, fu_terms = -1;
    if (image_with(QI_LORA_RUNTIME, NULL, &one, 1, rt, &rt_fused, &rt_terms) ||
        image_with(QI_LORA_FUSE, NULL, &one, 1, &fu, &fu_fused, &fu_terms) ||
        image_with(QI_LORA_RUNTIME, NULL, NULL, 0, &g_base, NULL, NULL))
        goto done;
    /* lora.safetensors adapts the 12 attention/MLP Linears of each of the 2 blocks, minus the
     * last block's text-only ones it also has: count what the file holds (28 modules) */
    CHECK(rt_fused == 0 && rt_terms == 28, "runtime: %d fused weights, %d modules", rt_fused, rt_terms);
    CHECK(fu_fused == 28 && fu_terms == 0, "fuse: %d fused weights, %d modules", fu_fused, fu_terms);
    CHECK(memcmp(rt->latents, g_base.latents, image_latent_count(rt) * sizeof(float)), "the LoRA changes the latents");
    check_close("one LoRA, runtime vs fused (bf16 weights)", rt, &fu);
done:
    qi_image_free(&fu);
}

/* Two LoRAs (f32 and bf16 factors) with their strengths. */
static void two_loras_with_strengths_runtime_equals_fused(void) {
    qi_lora_spec two[2] = {{LORA, 0.7f}, {g_lora2, 0.4f}};
    int terms = -1;
    if (image_with(QI_LORA_RUNTIME, NULL, two, 2, &g_rt_two, NULL, &terms) ||
        image_with(QI_LORA_FUSE, NULL, two, 2, &g_fu_two, NULL, NULL))
        return;
    CHECK(terms == 56, "two files: %d modules", terms);
    CHECK(!g_rt_one.rgb || memcmp(g_rt_two.latents, g_rt_one.latents, image_latent_count(&g_rt_two) * sizeof(float)),
          "the second LoRA (and the strength) changes the latents");
    check_close("LoRA @0.7 + bf16 LoRA @0.4, runtime vs fused", &g_rt_two, &g_fu_two);
}

/* One runtime engine: none → A → A+B → none. The transformer loads once;
 * each set gives a fresh engine's image bit for bit; none gives the base
 * image bit for bit. */
static void set_loras_between_requests_swaps_without_a_reload(void) {
    log_count logc = {0};
    qi_engine *e = open_engine(QI_LORA_RUNTIME, NULL, &logc);
    REQUIRE(e, "engine");
    qi_lora_spec one = {LORA, 1.0f}, two[2] = {{LORA, 0.7f}, {g_lora2, 0.4f}};
    qi_image base = {0}, a = {0}, ab = {0}, none = {0};
    if (gen(e, &base)) goto done;
    CHECK(qi_engine_set_loras(e, &one, 1) == QI_OK, "%s", qi_engine_error(e));
    if (gen(e, &a)) goto done;
    CHECK(qi_engine_set_loras(e, two, 2) == QI_OK, "%s", qi_engine_error(e));
    if (gen(e, &ab)) goto done;
    CHECK(qi_engine_set_loras(e, NULL, 0) == QI_OK, "%s", qi_engine_error(e));
    if (gen(e, &none)) goto done;
    CHECK(logc.loads == 1 && logc.swaps == 3, "transformer loads %d (want 1), swaps %d (want 3)", logc.loads,
          logc.swaps);
    CHECK(same_image(&base, &g_base), "no LoRA = a fresh engine without");
    CHECK(same_image(&a, &g_rt_one), "one LoRA swapped in = a fresh engine with it");
    CHECK(same_image(&ab, &g_rt_two), "two LoRAs swapped in = a fresh engine with them");
    CHECK(same_image(&none, &base), "back to none = the base image, bit for bit");
    CHECK(!same_image(&a, &base) && !same_image(&ab, &a), "each set changes the image");
done:
    qi_image_free(&base);
    qi_image_free(&a);
    qi_image_free(&ab);
    qi_image_free(&none);
    qi_engine_close(e);
}

/* Auto on bf16 weights fuses; a new set then reloads the transformer (the
 * fused copies cannot be undone in place) and gives the fresh image; a set
 * that matches nothing fails and leaves the previous one working. */
static void auto_fuses_float_weights_and_reloads_on_a_new_set(void) {
    log_count logc = {0};
    qi_engine *e = open_engine(QI_LORA_AUTO, NULL, &logc);
    REQUIRE(e, "engine");
    qi_lora_spec one = {LORA, 1.0f}, two[2] = {{LORA, 0.7f}, {g_lora2, 0.4f}};
    qi_image a = {0}, ab = {0}, again = {0};
    CHECK(qi_engine_set_loras(e, &one, 1) == QI_OK, "%s", qi_engine_error(e));
    if (gen(e, &a)) goto done;
    qi_dit *d = NULL;
    CHECK(qi_engine_dit(e, &d) == QI_OK && qi_dit_lora_fused(d) == 28 && qi_dit_lora_terms(d) == 0,
          "auto on bf16: fused");
    CHECK(qi_engine_set_loras(e, two, 2) == QI_OK, "%s", qi_engine_error(e));
    if (gen(e, &ab)) goto done;
    CHECK(logc.loads == 2 && logc.swaps == 0, "loads %d (want 2), swaps %d (want 0)", logc.loads, logc.swaps);
    CHECK(same_image(&ab, &g_fu_two), "reloaded with the new set = a fresh fused engine");
    /* a file for another model fails at the next call; the old set stays */
    qi_lora_spec stray = {FORMATS "/qwen-image-tiny-mixed.lora-kohya.safetensors", 1.0f}; /* 256-wide: no fit */
    CHECK(qi_engine_set_loras(e, &stray, 1) == QI_OK, "%s", qi_engine_error(e));
    qi_image bad = {0};
    qi_request r = qi_request_default();
    r.prompt = "x";
    r.width = r.height = 32;
    r.steps = 1;
    CHECK(qi_generate(e, &r, &bad) != QI_OK, "a LoRA for another model fails");
    printf("  %s\n", qi_engine_error(e));
    if (gen(e, &again)) goto done;
    CHECK(same_image(&again, &ab), "the previous set stays");
done:
    qi_image_free(&a);
    qi_image_free(&ab);
    qi_image_free(&again);
    qi_engine_close(e);
}

/* A quantised transformer: auto runs the LoRA beside the GGUF blocks (and
 * fuses it into the file's float tensors, if it targets any); fuse adds it
 * into the dequantised float32 weights. Same image within rounding. */
static void gguf_and_fp8_with_a_lora_runtime_equals_fusing_into_dequantised_weights(void) {
    static const struct {
        const char *file, *lora;
    } cases[] = {
        {"qwen-image-tiny-mixed.gguf", FORMATS "/qwen-image-tiny-mixed.lora-kohya.safetensors"},
        {"lightx2v_fp8_channel.safetensors", LORA}, /* fp8 with a scale per output row */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qi_lora_spec one = {cases[i].lora, 1.0f};
        qi_image rt = {0}, fu = {0};
        int fused = -1, terms = -1;
        if (!image_with(QI_LORA_AUTO, cases[i].file, &one, 1, &rt, &fused, &terms) &&
            !image_with(QI_LORA_FUSE, cases[i].file, &one, 1, &fu, NULL, NULL)) {
            printf("  %s: auto ran %d module(s) beside the weights, fused %d weight(s)\n", cases[i].file, terms,
                   fused);
            CHECK(terms > 0, "%s: auto runs quantised/fp8 weights' LoRA beside them", cases[i].file);
            check_close(cases[i].file, &rt, &fu);
        }
        qi_image_free(&rt);
        qi_image_free(&fu);
    }
}

/* ---- setup ------------------------------------------------------------------------------ */

/* g_lora2: every tensor of LORA; the factors in bf16 and every up matrix
 * times -2 (another LoRA on the same modules). */
static int write_second_lora(void) {
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    if (qi_st_open(LORA, &f, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    qi_st_write_item *items = calloc((size_t)f->n_tensors, sizeof *items);
    void **bufs = calloc((size_t)f->n_tensors, sizeof *bufs);
    int rc = items && bufs ? 0 : -1;
    for (int i = 0; !rc && i < f->n_tensors; i++) {
        const qi_st_tensor *t = &f->tensors[i];
        items[i] = (qi_st_write_item){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(items[i].shape, t->shape, sizeof t->shape);
        if (t->ndim != 2 || t->dtype != QI_F32) continue;
        size_t n = (size_t)(t->shape[0] * t->shape[1]);
        uint16_t *h = malloc(n * sizeof *h);
        if (!h) {
            rc = -1;
            break;
        }
        float factor = strstr(t->name, "lora_up") ? -2.0f : 1.0f;
        for (size_t k = 0; k < n; k++) h[k] = qi_f32_to_bf16(factor * ((const float *)t->data)[k]);
        bufs[i] = h;
        items[i].dtype = QI_BF16;
        items[i].data = h;
    }
    snprintf(g_lora2, sizeof g_lora2, "%s/lora2.safetensors", g_tmp);
    if (!rc && qi_st_write(g_lora2, items, f->n_tensors, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        rc = -1;
    }
    for (int i = 0; bufs && i < f->n_tensors; i++) free(bufs[i]);
    free(bufs);
    free(items);
    qi_st_close(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "-d")) g_device = argv[2];
    if (tmp_dir_make(g_tmp, sizeof g_tmp, "lora_runtime") != 0 || write_second_lora() != 0) return 1;
    RUN(runtime_equals_fused_on_the_tiny_model);
    RUN(two_loras_with_strengths_runtime_equals_fused);
    if (!strcmp(g_device, "cpu")) { /* the engine logic: once, on the CPU */
        RUN(set_loras_between_requests_swaps_without_a_reload);
        RUN(auto_fuses_float_weights_and_reloads_on_a_new_set);
    }
    RUN(gguf_and_fp8_with_a_lora_runtime_equals_fusing_into_dequantised_weights);
    qi_image_free(&g_base);
    qi_image_free(&g_rt_one);
    qi_image_free(&g_rt_two);
    qi_image_free(&g_fu_two);
    tmp_remove_tree(g_tmp);
    TEST_END();
}

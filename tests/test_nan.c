/*
 * test_nan.c — no silent NaN (issue 15 item 2): a NaN/Inf in any weight file
 * or LoRA, or latents that go non-finite, end with an error naming the file
 * and tensor (or the step and stage) and no image written.
 *
 * Each case copies the tiny model into a temp folder (symlinks, the one file
 * it corrupts copied for real), pokes one stored value and runs the CLI or
 * qi_generate on it. Also: the finite scan on every element type, the scan
 * split into pieces (run in any order, on a work pool) giving the one-thread
 * scan's answer, and the CPU attention passing an all-NaN score row on as NaN
 * (not zeros).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/work_pool.h"
#include "base/finite.h"
#include "base/types.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "qwen_image.h"
#include "test.h"
#include "testdata.h"

#define TINY QI_TEST_DATA "/tiny-model"
#define TRANSFORMER "transformer/diffusion_pytorch_model.safetensors"
#define VAE "vae/diffusion_pytorch_model.safetensors"
#define TE "text_encoder/model.safetensors"
#define TO_K "transformer_blocks.0.attn.to_k.weight"

static char tmp[] = "/tmp/qi_nan_XXXXXX";
static char out[16384];

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* tmp/<name>: the tiny model as symlinks, `file` (may be NULL) a real copy. */
static const char *copy_model(const char *name, const char *file) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    int rc = run_shell(out, sizeof out, "cp -rs %s %s", TINY, dir);
    if (rc == 0 && file)
        rc = run_shell(out, sizeof out, "rm %s/%s && cp %s/%s %s/%s", dir, file, TINY, file, dir, file);
    CHECK(rc == 0, "copy: %s", out);
    return dir;
}

/* Writes `count` copies of the BF16 bit pattern `bits` from element `at` of
 * tensor `name` in model/file. */
static void poke_bf16(const char *model, const char *file, const char *name, int64_t at, int64_t count,
                      uint16_t bits) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", model, file);
    qi_st_file *f = NULL;
    qi_error err;
    REQUIRE(qi_st_open(path, &f, &err) == QI_OK, "%s", err.msg);
    const qi_st_tensor *t = qi_st_file_find(f, name);
    REQUIRE(t && t->dtype == QI_BF16, "tensor %s", name);
    long off = (long)((const char *)t->data - (const char *)f->map) + (long)(2 * at);
    qi_st_close(f);
    FILE *w = fopen(path, "r+b");
    REQUIRE(w && fseek(w, off, SEEK_SET) == 0, "open %s", path);
    for (int64_t i = 0; i < count; i++) fwrite(&bits, 2, 1, w);
    fclose(w);
}

/* Runs generate on model; returns the exit code, out holding the output. */
static int generate(const char *model, const char *extra, const char *png) {
    return run_shell(out, sizeof out, "%s generate -m %s -p apple -W 32 -H 32 --steps 2 %s -o %s", qi_cli(),
                     model, extra, png);
}

static void transformer_nan_names_the_tensor_and_writes_nothing(void) {
    const char *m = copy_model("tnan", TRANSFORMER);
    poke_bf16(m, TRANSFORMER, TO_K, 123, 1, 0x7fc0);
    char png[600];
    snprintf(png, sizeof png, "%s/tnan.png", tmp);
    int rc = generate(m, "", png);
    printf("  transformer NaN: rc %d: %s", rc, out);
    CHECK(rc != 0 && strstr(out, TRANSFORMER) &&
              strstr(out, "tensor " TO_K " has a NaN at element 123 (of 16384, BF16): the file is "
                          "corrupt; download it again"),
          "rc %d: %s", rc, out);
    CHECK(!exists(png), "an image was written");
}

/* The engine API: open (text encoder, VAE) or the first generate fails with
 * QI_ERR_FORMAT and `want` in the message. */
static void engine_fails(const char *model, const char *lora, const char *want, qi_status want_st) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = model;
    qi_engine *e = NULL;
    qi_status st = qi_engine_open(&o, &e);
    if (st == QI_OK && lora) st = qi_engine_add_lora(e, lora, 1.0f);
    qi_image img = {0};
    if (st == QI_OK) {
        qi_request r = qi_request_default();
        r.prompt = "apple";
        r.width = r.height = 32;
        r.steps = 2;
        st = qi_generate(e, &r, &img);
    }
    const char *msg = qi_engine_error(e);
    printf("  %s\n", msg);
    CHECK(st == want_st && strstr(msg, want), "status %d: %s", st, msg);
    CHECK(img.rgb == NULL, "an image came back");
    qi_image_free(&img);
    qi_engine_close(e);
}

static void vae_inf_and_text_encoder_nan(void) {
    const char *m = copy_model("vinf", VAE);
    poke_bf16(m, VAE, "decoder.conv_in.weight", 7, 1, 0xff80); /* -Inf */
    engine_fails(m, NULL, "tensor decoder.conv_in.weight has an Inf at element 7 (of 27648, BF16)", QI_ERR_FORMAT);
    m = copy_model("tenan", TE);
    poke_bf16(m, TE, "model.layers.0.self_attn.q_proj.weight", 5, 1, 0x7fc1);
    engine_fails(m, NULL, "tensor model.layers.0.self_attn.q_proj.weight has a NaN at element 5 (of 4096, BF16)",
                 QI_ERR_FORMAT);
}

/* A kohya-style LoRA on to_k: [8, 128] down, [128, 8] up, scalar alpha. */
static const char *write_lora(const char *name, float up_val, float alpha) {
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    static float down[8 * 128], up[128 * 8];
    for (int i = 0; i < 8 * 128; i++) down[i] = up[i] = 0.01f;
    up[37] = up_val;
    qi_st_write_item items[3] = {
        {"transformer_blocks.0.attn.to_k.lora_down.weight", QI_F32, 2, {8, 128}, down},
        {"transformer_blocks.0.attn.to_k.lora_up.weight", QI_F32, 2, {128, 8}, up},
        {"transformer_blocks.0.attn.to_k.alpha", QI_F32, 0, {0}, &alpha},
    };
    qi_error err;
    CHECK(qi_st_write(path, items, 3, &err) == QI_OK, "%s", err.msg);
    return path;
}

/* peft names with diffusers' adapter metadata: lora_alpha 1e40 / r 8 does
 * not fit a float: an infinite scale. */
static const char *write_peft_infinite_scale(void) {
    static char path[600];
    snprintf(path, sizeof path, "%s/peft_inf.safetensors", tmp);
    char hdr[1024];
    int off = snprintf(hdr, sizeof hdr,
                       "{\"__metadata__\":{\"format\":\"pt\",\"lora_adapter_metadata\":"
                       "\"{\\\"r\\\": 8, \\\"lora_alpha\\\": 1e40}\"},"
                       "\"transformer.transformer_blocks.0.attn.to_k.lora_A.weight\":{\"dtype\":\"F32\","
                       "\"shape\":[8,128],\"data_offsets\":[0,4096]},"
                       "\"transformer.transformer_blocks.0.attn.to_k.lora_B.weight\":{\"dtype\":\"F32\","
                       "\"shape\":[128,8],\"data_offsets\":[4096,8192]}}");
    while (off % 8) hdr[off++] = ' ';
    FILE *f = fopen(path, "wb");
    CHECK(f, "%s", path);
    if (!f) return path;
    uint64_t n = (uint64_t)off;
    fwrite(&n, 8, 1, f);
    fwrite(hdr, 1, (size_t)off, f);
    float v = 0.01f;
    for (int i = 0; i < 2048; i++) fwrite(&v, 4, 1, f);
    fclose(f);
    return path;
}

static void lora_nan_up_alpha_and_infinite_scale(void) {
    const char *m = copy_model("lora", NULL);
    char png[600];
    snprintf(png, sizeof png, "%s/lora.png", tmp);
    char extra[800];
    snprintf(extra, sizeof extra, "--lora %s", write_lora("nan_up.safetensors", NAN, 8));
    int rc = generate(m, extra, png);
    printf("  LoRA NaN up: rc %d: %s", rc, out);
    CHECK(rc != 0 && strstr(out, "nan_up.safetensors: tensor transformer_blocks.0.attn.to_k.lora_up.weight "
                                 "has a NaN at element 37 (of 1024, F32)"),
          "rc %d: %s", rc, out);
    CHECK(!exists(png), "an image was written");

    snprintf(extra, sizeof extra, "--lora %s", write_lora("nan_alpha.safetensors", 0.01f, NAN));
    rc = generate(m, extra, png);
    printf("  LoRA NaN alpha: rc %d: %s", rc, out);
    CHECK(rc != 0 && strstr(out, "nan_alpha.safetensors: 'transformer_blocks.0.attn.to_k.alpha' is NaN"),
          "rc %d: %s", rc, out);
    CHECK(!exists(png), "an image was written");

    const char *peft = write_peft_infinite_scale();
    engine_fails(m, peft, "gets a non-finite scale (inf) from the adapter metadata", QI_ERR_FORMAT);
    snprintf(extra, sizeof extra, "--lora %s", peft);
    rc = generate(m, extra, png);
    CHECK(rc != 0 && strstr(out, "peft_inf.safetensors") && !exists(png), "rc %d: %s", rc, out);
}

/* A finite but huge proj_out (every weight ±3.4e38, BF16 0x7f7f) overflows
 * the transformer's output: the per-step check stops at step 1; with the
 * check off (QI_CHECK_FINITE=0) the host check of the final latents does. */
static void latents_going_non_finite_stop_the_run(void) {
    const char *m = copy_model("huge", TRANSFORMER);
    poke_bf16(m, TRANSFORMER, "proj_out.weight", 0, 64 * 128, 0x7f7f);
    engine_fails(m, NULL, "latents became non-finite at step 1 of 2 (transformer output)", QI_ERR_BACKEND);
    char png[600];
    snprintf(png, sizeof png, "%s/huge.png", tmp);
    int rc = generate(m, "", png);
    printf("  huge weights: rc %d: %s", rc, out);
    CHECK(rc != 0 && strstr(out, "at step 1 of 2") && !exists(png), "rc %d: %s", rc, out);
    setenv("QI_CHECK_FINITE", "0", 1);
    engine_fails(m, NULL, "denoise: the final latents have", QI_ERR_BACKEND);
    unsetenv("QI_CHECK_FINITE");
}

/* The scan finds the first non-finite element of every type, says NaN or Inf,
 * and passes the largest finite values. */
static void scan_every_type(void) {
    uint16_t bf[100], h[100];
    float f[100];
    uint8_t e4[100], e5[100];
    for (int i = 0; i < 100; i++) {
        bf[i] = 0x7f7f; /* largest finite */
        h[i] = 0x7bff;
        f[i] = 3.4e38f;
        e4[i] = 0x7e;
        e5[i] = 0x7b;
    }
    int is_nan = -1;
    CHECK(qi_find_nonfinite(bf, QI_BF16, 100, NULL) < 0 && qi_find_nonfinite(h, QI_F16, 100, NULL) < 0 &&
              qi_find_nonfinite(f, QI_F32, 100, NULL) < 0 && qi_find_nonfinite(e4, QI_F8_E4M3, 100, NULL) < 0 &&
              qi_find_nonfinite(e5, QI_F8_E5M2, 100, NULL) < 0,
          "finite values reported");
    bf[60] = 0xff80;
    bf[70] = 0x7fc0;
    CHECK(qi_find_nonfinite(bf, QI_BF16, 100, &is_nan) == 60 && is_nan == 0, "bf16 -inf");
    h[42] = 0x7e00;
    CHECK(qi_find_nonfinite(h, QI_F16, 100, &is_nan) == 42 && is_nan == 1, "f16 nan");
    f[99] = INFINITY;
    CHECK(qi_find_nonfinite(f, QI_F32, 100, &is_nan) == 99 && is_nan == 0, "f32 inf");
    e4[3] = 0xff;
    CHECK(qi_find_nonfinite(e4, QI_F8_E4M3, 100, &is_nan) == 3 && is_nan == 1, "e4m3 nan");
    e5[9] = 0x7c;
    CHECK(qi_find_nonfinite(e5, QI_F8_E5M2, 100, &is_nan) == 9 && is_nan == 0, "e5m2 inf");
    /* Q8_0: 34-byte blocks, f16 d then 32 int8: a NaN d spoils its block */
    uint8_t q[3 * 34] = {0};
    q[34] = 0x00, q[35] = 0x7e;
    CHECK(qi_find_nonfinite(q, QI_Q8_0, 96, &is_nan) == 32 && is_nan == 1, "q8_0 nan scale");
    q[35] = 0x3c; /* d = 1 */
    CHECK(qi_find_nonfinite(q, QI_Q8_0, 96, NULL) < 0, "q8_0 finite");
}

/* The full scan's answer, dequantising every block (what the scale-field
 * scan must agree with). */
static int64_t dequant_reference(const uint8_t *q, qi_dtype t, int64_t n, int *is_nan) {
    float *x = malloc((size_t)n * sizeof *x);
    qi_type_traits(t)->to_f32(q, x, n);
    int64_t at = qi_find_nonfinite_f32(x, n, is_nan);
    free(x);
    return at;
}

/* Every block type: random blocks with finite scales pass; an Inf or NaN
 * planted in any block's d or m field is found at the element and of the
 * kind a dequantise-everything scan finds (the scan reads only those
 * fields, so this is the claim that they are the only ones that matter). */
static void block_scan_agrees_with_dequantising(void) {
    const qi_dtype types[] = {QI_Q4_0, QI_Q4_1, QI_Q5_0, QI_Q5_1, QI_Q8_0, QI_Q2_K, QI_Q3_K, QI_Q4_K, QI_Q5_K, QI_Q6_K};
    const uint16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01};
    unsigned seed = 7;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const qi_dtype_traits *tt = qi_type_traits(types[ti]);
        int64_t blocks = 40, n = blocks * tt->block_elems;
        uint8_t *q = malloc((size_t)blocks * tt->block_bytes);
        for (size_t i = 0; i < (size_t)blocks * tt->block_bytes; i++) q[i] = (uint8_t)((seed = seed * 1103515245u + 12345u) >> 16);
        for (int64_t b = 0; b < blocks; b++)
            for (int f = 0; f < 2; f++) /* the largest finite f16 at most: values stay finite */
                if (tt->f16_field[f] >= 0) q[b * tt->block_bytes + tt->f16_field[f] + 1] &= 0x7b;
        int is_nan = -1, ref_nan = -1;
        CHECK(tt->f16_field[0] >= 0 && qi_find_nonfinite(q, types[ti], n, NULL) < 0 &&
                  dequant_reference(q, types[ti], n, NULL) < 0,
              "%s: finite blocks pass", tt->name);
        for (int f = 0; f < 2; f++) {
            if (tt->f16_field[f] < 0) continue;
            for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                int64_t b = 3 + 11 * (int64_t)k + f;
                uint8_t *field = q + b * tt->block_bytes + tt->f16_field[f], keep[2] = {field[0], field[1]};
                field[0] = (uint8_t)bad[k], field[1] = (uint8_t)(bad[k] >> 8);
                int64_t at = qi_find_nonfinite(q, types[ti], n, &is_nan);
                int64_t ref = dequant_reference(q, types[ti], n, &ref_nan);
                CHECK(ref >= b * tt->block_elems && ref < (b + 1) * tt->block_elems && at == ref && is_nan == ref_nan,
                      "%s: field %d = 0x%04x in block %lld: found at %lld (nan %d), dequantised %lld (nan %d)",
                      tt->name, f, bad[k], (long long)b, (long long)at, is_nan, (long long)ref, ref_nan);
                field[0] = keep[0], field[1] = keep[1];
            }
        }
        free(q);
    }
}

/* Speed of the bf16 scan, single thread (reported, not a claim of the test). */
static void scan_speed(void) {
    size_t n = (size_t)64 << 20; /* 128 MiB of bf16 */
    uint16_t *x = malloc(n * 2);
    REQUIRE(x, "alloc");
    for (size_t i = 0; i < n; i++) x[i] = (uint16_t)(0x3f80 + (i & 0x3f));
    double t0 = qi_now_s();
    int64_t at = qi_find_nonfinite(x, QI_BF16, (int64_t)n, NULL);
    double s = qi_now_s() - t0;
    CHECK(at < 0, "finite");
    printf("  bf16 scan: %.2f GB/s (%zu MiB, one thread)\n", (double)n * 2 / s / 1e9, n * 2 >> 20);
    /* Q4_K (the same bytes as blocks, d and dmin made finite): the scale-field scan */
    const qi_dtype_traits *tt = qi_type_traits(QI_Q4_K);
    int64_t blocks = (int64_t)(n * 2 / tt->block_bytes);
    for (int64_t b = 0; b < blocks; b++) ((uint8_t *)x)[b * tt->block_bytes + 1] = 0x3c, ((uint8_t *)x)[b * tt->block_bytes + 3] = 0x3c;
    t0 = qi_now_s();
    at = qi_find_nonfinite(x, QI_Q4_K, blocks * tt->block_elems, NULL);
    s = qi_now_s() - t0;
    CHECK(at < 0, "finite Q4_K");
    printf("  Q4_K scan: %.2f GB/s (%zu MiB, one thread)\n", (double)blocks * tt->block_bytes / s / 1e9,
           (size_t)(blocks * tt->block_bytes) >> 20);
    free(x);
}

/* ---- the scan split into pieces ---------------------------------------------------- */

/* A parallel-for that runs the pieces last first, on this thread, counting
 * them: a split scan that took the first piece to finish, or a later piece's
 * hit over an earlier one's, answers wrong under it. */
typedef struct backwards {
    int calls, jobs;
} backwards;

static void run_backwards(void *ctx, void (*fn)(void *job), void *jobs, size_t stride, int n) {
    backwards *b = ctx;
    b->calls++;
    b->jobs += n;
    for (int i = n - 1; i >= 0; i--) fn((char *)jobs + (size_t)i * stride);
}

static void run_on_pool(void *pool, void (*fn)(void *job), void *jobs, size_t stride, int n) {
    qi_work_pool_run(pool, fn, jobs, stride, n);
}

static unsigned rnd(unsigned *seed) { return (*seed = *seed * 1103515245u + 12345u) >> 16; }

/* Writes element i of an element-type buffer: a finite value, or NaN / ±Inf. */
static void put_elem(void *x, qi_dtype t, int64_t i, int kind /* 0 finite, 1 NaN, 2 Inf */) {
    static const uint32_t f32[3] = {0x3f800000u, 0x7fc00000u, 0xff800000u};
    static const uint16_t f16[3] = {0x3c00, 0x7e00, 0xfc00}, bf16[3] = {0x3f80, 0x7fc1, 0x7f80};
    static const uint8_t e4[3] = {0x38, 0xff, 0x38}, e5[3] = {0x3c, 0x7e, 0xfc}; /* E4M3fn has no Inf */
    switch (t) {
    case QI_F32: memcpy((char *)x + 4 * i, &f32[kind], 4); break;
    case QI_F16: memcpy((char *)x + 2 * i, &f16[kind], 2); break;
    case QI_BF16: memcpy((char *)x + 2 * i, &bf16[kind], 2); break;
    case QI_F8_E4M3: ((uint8_t *)x)[i] = e4[kind]; break;
    default: ((uint8_t *)x)[i] = e5[kind]; break;
    }
}

/* Element types, n elements in pieces of `piece` (not a multiple of the
 * scan's 4096-element chunk): the bad values planted in several pieces, the
 * earliest planted (in the earliest piece holding one) is found, with its
 * kind, by the backwards runner and the pool alike, and agrees with the
 * one-thread scan; all finite gives -1. */
static void pieces_find_the_first_element(const qi_parallel_for *pars, int npars) {
    const qi_dtype types[] = {QI_F32, QI_F16, QI_BF16, QI_F8_E4M3, QI_F8_E5M2};
    unsigned seed = 11;
    for (size_t ti = 0; ti < QI_ARRAY_LEN(types); ti++) {
        qi_dtype t = types[ti];
        const int64_t n = 100003, piece = 777; /* 129 pieces, the last one short */
        void *x = malloc((size_t)n * 4);
        REQUIRE(x, "alloc");
        for (int64_t i = 0; i < n; i++) put_elem(x, t, i, 0);
        for (int p = 0; p < npars; p++)
            CHECK(qi_find_nonfinite_pieces(x, t, n, NULL, &pars[p], piece) < 0, "%s: finite reported", qi_dtype_name(t));
        for (int trial = 0; trial < 20; trial++) {
            int64_t first = n;
            int first_kind = 0, planted = 1 + (int)(rnd(&seed) % 6);
            int64_t at_list[6];
            for (int k = 0; k < planted; k++) { /* anywhere: some pieces get two, the last piece too */
                int64_t at = k == 0 && trial % 4 == 0 ? n - 1 : (int64_t)(((uint64_t)rnd(&seed) << 16 | rnd(&seed)) % (uint64_t)n);
                int kind = t == QI_F8_E4M3 ? 1 : 1 + (int)(rnd(&seed) % 2);
                put_elem(x, t, at, kind);
                at_list[k] = at;
                if (at <= first) first = at, first_kind = kind; /* a later plant at the same place overwrites */
            }
            int one_nan = -1;
            int64_t one = qi_find_nonfinite(x, t, n, &one_nan);
            CHECK(one == first && one_nan == (first_kind == 1), "%s trial %d: one thread found %lld (nan %d), planted %lld (kind %d)",
                  qi_dtype_name(t), trial, (long long)one, one_nan, (long long)first, first_kind);
            for (int p = 0; p < npars; p++) {
                int is_nan = -1;
                int64_t at = qi_find_nonfinite_pieces(x, t, n, &is_nan, &pars[p], piece);
                CHECK(at == first && is_nan == (first_kind == 1),
                      "%s trial %d, runner %d: pieces found %lld (nan %d), first planted %lld in piece %lld (kind %d), %d planted",
                      qi_dtype_name(t), trial, p, (long long)at, is_nan, (long long)first, (long long)(first / piece),
                      first_kind, planted);
            }
            for (int k = 0; k < planted; k++) put_elem(x, t, at_list[k], 0);
        }
        free(x);
    }
}

/* Block types: pieces asked for in elements that are not a whole number of
 * blocks (1, 613, 1000: rounded up to whole blocks, so no piece starts inside
 * a block), bad d / m fields in several blocks of several pieces; the
 * earliest block's element and kind are found, as the one-thread scan finds
 * them. */
static void pieces_find_the_first_block(const qi_parallel_for *pars, int npars) {
    const qi_dtype types[] = {QI_Q4_0, QI_Q8_0, QI_Q2_K, QI_Q4_K, QI_Q6_K};
    const int64_t pieces[] = {1, 613, 1000};
    const uint16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01};
    unsigned seed = 5;
    for (size_t ti = 0; ti < QI_ARRAY_LEN(types); ti++) {
        const qi_dtype_traits *tt = qi_type_traits(types[ti]);
        const int64_t blocks = 301, n = blocks * tt->block_elems;
        uint8_t *q = malloc((size_t)blocks * tt->block_bytes);
        REQUIRE(q, "alloc");
        for (size_t i = 0; i < (size_t)blocks * tt->block_bytes; i++) q[i] = (uint8_t)rnd(&seed);
        for (int64_t b = 0; b < blocks; b++)
            for (int f = 0; f < 2; f++)
                if (tt->f16_field[f] >= 0) q[b * tt->block_bytes + tt->f16_field[f] + 1] &= 0x7b;
        for (int trial = 0; trial < 12; trial++) {
            int64_t blk[4], first = blocks;
            int planted = 2 + trial % 3;
            for (int k = 0; k < planted; k++) {
                blk[k] = k == 0 && trial % 3 == 0 ? blocks - 1 : (int64_t)(rnd(&seed) % (unsigned)blocks);
                int f = tt->f16_field[1] >= 0 ? (int)(rnd(&seed) % 2) : 0;
                uint8_t *field = q + blk[k] * tt->block_bytes + tt->f16_field[f];
                uint16_t v = bad[rnd(&seed) % 4];
                field[0] = (uint8_t)v, field[1] = (uint8_t)(v >> 8);
                if (blk[k] < first) first = blk[k];
            }
            int one_nan = -1;
            int64_t one = qi_find_nonfinite(q, types[ti], n, &one_nan);
            CHECK(one >= first * tt->block_elems && one < (first + 1) * tt->block_elems,
                  "%s: one thread found %lld, earliest bad block %lld", tt->name, (long long)one, (long long)first);
            for (size_t pi = 0; pi < QI_ARRAY_LEN(pieces); pi++)
                for (int p = 0; p < npars; p++) {
                    int is_nan = -1;
                    int64_t at = qi_find_nonfinite_pieces(q, types[ti], n, &is_nan, &pars[p], pieces[pi]);
                    CHECK(at == one && is_nan == one_nan,
                          "%s trial %d, pieces of %lld asked, runner %d: found %lld (nan %d), one thread %lld (nan %d)",
                          tt->name, trial, (long long)pieces[pi], p, (long long)at, is_nan, (long long)one, one_nan);
                }
            for (int k = 0; k < planted; k++) /* the planted blocks' fields finite again (1.0) */
                for (int f = 0; f < 2; f++)
                    if (tt->f16_field[f] >= 0) {
                        uint8_t *field = q + blk[k] * tt->block_bytes + tt->f16_field[f];
                        field[0] = 0x00, field[1] = 0x3c; /* 1.0 */
                    }
            CHECK(qi_find_nonfinite(q, types[ti], n, NULL) < 0, "%s: undo", tt->name);
        }
        free(q);
    }
}
/* qi_check_weight_finite with a parallel-for: a weight under
 * QI_SCAN_ALONE_BYTES hands out no pieces, a larger one many (bf16, fp8),
 * and the error is the one-thread scan's, word for word. */
static void check_weight_splits_large_weights(void) {
    const int64_t bytes = (int64_t)20 << 20;
    uint8_t *x = malloc((size_t)bytes);
    REQUIRE(x, "alloc");
    const qi_dtype types[] = {QI_BF16, QI_F8_E4M3};
    for (size_t ti = 0; ti < QI_ARRAY_LEN(types); ti++) {
        qi_dtype t = types[ti];
        int64_t n = bytes / (int64_t)qi_dtype_size(t), small = QI_SCAN_ALONE_BYTES / (int64_t)qi_dtype_size(t) - 1;
        int inf = t == QI_F8_E4M3 ? 1 : 2; /* E4M3fn has no Inf: a NaN there */
        for (int64_t i = 0; i < n; i++) put_elem(x, t, i, 0);
        put_elem(x, t, n - 3, 1);
        put_elem(x, t, n / 2 + 12345, 1);
        put_elem(x, t, n / 2 + 99999, inf);
        for (int threads = 2; threads <= 16; threads *= 8) {
            backwards b = {0};
            qi_parallel_for par = {run_backwards, &b, threads};
            qi_error one = {0}, split = {0};
            put_elem(x, t, small - 7, inf); /* the small weight's only bad value */
            qi_status st1 = qi_check_weight_finite("f.safetensors", "w", x, t, small, NULL, &one);
            qi_status st2 = qi_check_weight_finite("f.safetensors", "w", x, t, small, &par, &split);
            CHECK(st1 == QI_ERR_FORMAT && st2 == st1 && !strcmp(one.msg, split.msg) && b.calls == 0,
                  "%s under %lld bytes: %d pieces handed out; '%s' vs '%s'", qi_dtype_name(t),
                  (long long)QI_SCAN_ALONE_BYTES, b.jobs, one.msg, split.msg);
            put_elem(x, t, small - 7, 0);
            st1 = qi_check_weight_finite("f.safetensors", "w", x, t, n, NULL, &one);
            st2 = qi_check_weight_finite("f.safetensors", "w", x, t, n, &par, &split);
            char want[256];
            snprintf(want, sizeof want, "tensor w has a NaN at element %lld (of %lld, %s)", (long long)(n / 2 + 12345),
                     (long long)n, qi_dtype_name(t));
            printf("  %s, %d threads: %d pieces: %s\n", qi_dtype_name(t), threads, b.jobs, split.msg);
            CHECK(st1 == QI_ERR_FORMAT && st2 == st1 && !strcmp(one.msg, split.msg) && strstr(split.msg, want) &&
                      b.calls == 1 && b.jobs >= 16,
                  "%s, %d threads: %d calls, %d pieces; '%s' vs '%s'", qi_dtype_name(t), threads, b.calls, b.jobs,
                  one.msg, split.msg);
        }
    }
    free(x);
}

/* The engine's parallel-for reaches the scan: qi_model_files_open_source
 * lends f->scan to the source it opens, and qi_source_get splits a 12 MiB
 * weight through it, with the one-thread message. */
static void sources_lend_the_scan_their_threads(void) {
    backwards b = {0};
    qi_parallel_for par = {run_backwards, &b, 4};
    qi_model_paths paths = {TINY, NULL, NULL, NULL, NULL};
    qi_model_files f;
    qi_error err;
    REQUIRE(qi_model_files_resolve(&paths, &f, &err) == QI_OK, "%s", err.msg);
    CHECK(f.scan.run == NULL, "resolve lends no threads");
    f.scan = par;
    qi_source *s = NULL;
    REQUIRE(qi_model_files_open_source(&f, QI_COMPONENT_VAE, &s, &err) == QI_OK, "%s", err.msg);
    CHECK(s->scan.run == run_backwards && s->scan.ctx == &b && s->scan.threads == 4, "the source's scan");
    qi_source_close(s);

    enum { ROWS = 2048, COLS = 3072 };
    uint16_t *big = malloc((size_t)ROWS * COLS * 2);
    REQUIRE(big, "alloc");
    for (int64_t i = 0; i < (int64_t)ROWS * COLS; i++) big[i] = 0x3f80;
    big[6000000] = 0x7fc0; /* a NaN, later */
    big[5000001] = 0xff80; /* -Inf: the first */
    float small[4] = {0};
    qi_st_write_item items[2] = {{"decoder.conv_in.weight", QI_F32, 1, {4}, small},
                                 {"decoder.big.weight", QI_BF16, 2, {ROWS, COLS}, big}};
    char path[600];
    snprintf(path, sizeof path, "%s/bigvae.safetensors", tmp);
    REQUIRE(qi_st_write(path, items, 2, &err) == QI_OK, "%s", err.msg);
    free(big);
    REQUIRE(qi_source_open(path, QI_COMPONENT_VAE, &s, &err) == QI_OK, "%s", err.msg);
    qi_source_tensor t;
    qi_error one = {0}, split = {0};
    qi_status st1 = qi_source_get(s, "decoder.big.weight", -1, NULL, &t, &one);
    s->scan = par;
    qi_status st2 = qi_source_get(s, "decoder.big.weight", -1, NULL, &t, &split);
    printf("  through the source: %d pieces: %s\n", b.jobs, split.msg);
    CHECK(st1 == QI_ERR_FORMAT && st2 == st1 && !strcmp(one.msg, split.msg) && b.calls == 1 && b.jobs >= 12 &&
              strstr(split.msg, "tensor decoder.big.weight has an Inf at element 5000001 (of 6291456, BF16)"),
          "%d calls, %d pieces: '%s' vs '%s'", b.calls, b.jobs, one.msg, split.msg);
    qi_source_close(s);
}

/* The split scans under the backwards runner and on a pool of 3 threads
 * (plus the caller). */
static void scan_in_pieces(void) {
    qi_work_pool *pool = NULL;
    qi_error err;
    REQUIRE(qi_work_pool_new(3, &pool, &err) == QI_OK, "%s", err.msg);
    backwards b = {0};
    qi_parallel_for pars[2] = {{run_backwards, &b, 4}, {run_on_pool, pool, qi_work_pool_threads(pool) + 1}};
    pieces_find_the_first_element(pars, 2);
    pieces_find_the_first_block(pars, 2);
    CHECK(b.calls > 0 && b.jobs > 100 * b.calls, "%d calls of the backwards runner, %d pieces", b.calls, b.jobs);
    qi_work_pool_free(pool);
}

/* CPU attention: a query whose scores are all NaN gives NaN, a query whose
 * keys are all masked gives zeros. */
static void attention_passes_nan_rows_on(void) {
    qi_backend *be = NULL;
    qi_error err;
    REQUIRE(qi_backend_create("cpu", 1, (size_t)16 << 20, &be, &err) == QI_OK, "%s", err.msg);
    qi_tensor q, k, v, o, mask;
    int64_t ne[4] = {2, 3, 1, 4}, nm[2] = {2, 3};
    REQUIRE(be->ops->tensor(be, &q, QI_F32, 4, ne, &err) == QI_OK && be->ops->tensor(be, &k, QI_F32, 4, ne, &err) == QI_OK &&
                be->ops->tensor(be, &v, QI_F32, 4, ne, &err) == QI_OK && be->ops->tensor(be, &o, QI_F32, 4, ne, &err) == QI_OK &&
                be->ops->tensor(be, &mask, QI_I32, 2, nm, &err) == QI_OK,
            "%s", err.msg);
    float h[24];
    for (int i = 0; i < 24; i++) h[i] = 0.1f * (float)(i % 5);
    be->ops->upload(be, &k, h, &err);
    be->ops->upload(be, &v, h, &err);
    h[4] = NAN; /* batch 0, query 1: every score NaN */
    be->ops->upload(be, &q, h, &err);
    int32_t m[6] = {1, 1, 1, 0, 0, 0}; /* batch 1: every key masked */
    be->ops->upload(be, &mask, m, &err);
    be->ops->attention(be, &q, &k, &v, &mask, 0, 0.5f, &o);
    float r[24];
    be->ops->download(be, &o, r, &err);
    CHECK(isnan(r[4]) && isnan(r[7]), "NaN row became %g %g", r[4], r[7]);
    CHECK(isfinite(r[0]) && isfinite(r[8]), "other rows finite");
    int zeros = 1;
    for (int i = 12; i < 24; i++) zeros &= r[i] == 0.0f;
    CHECK(zeros, "masked rows are not zeros");
    int64_t c = -1;
    CHECK(be->ops->count_nonfinite && be->ops->count_nonfinite(be, &o, &c, &err) == QI_OK && c == 4,
          "count_nonfinite %lld", (long long)c);
    be->ops->destroy(be);
}

int main(void) {
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        TEST_END();
    }
    RUN(scan_every_type);
    RUN(block_scan_agrees_with_dequantising);
    RUN(scan_in_pieces);
    RUN(check_weight_splits_large_weights);
    RUN(sources_lend_the_scan_their_threads);
    RUN(scan_speed);
    RUN(attention_passes_nan_rows_on);
    RUN(transformer_nan_names_the_tensor_and_writes_nothing);
    RUN(vae_inf_and_text_encoder_nan);
    RUN(lora_nan_up_alpha_and_infinite_scale);
    RUN(latents_going_non_finite_stop_the_run);
    run_shell(out, sizeof out, "rm -rf %s", tmp);
    TEST_END();
}

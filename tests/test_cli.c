/*
 * test_cli.c — claims about the `qwen-image` command as a person uses it:
 * the exact interface of tokenize / encode / generate, exit codes (2 usage,
 * 1 runtime, 130 interrupted), one-line messages, no output file left by a
 * failed or interrupted run, and mistakes found before any weight loads.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "image_check.h"
#include "io/gguf.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "test.h"
#include "testdata.h"

static char tmpdir[] = "/tmp/qi_cli_XXXXXX";
/* The format fixtures (../shared/reference/formats beside this checkout);
 * their claims are skipped, saying so, where it is absent. */
#define FORMATS QI_TEST_DATA "/../../../shared/reference/formats"
#define TE_GGUF FORMATS "/Qwen2.5-VL-tiny-Q8_0.gguf"
#define COMFY_BF16 FORMATS "/comfy_bf16.safetensors"
#define COMFY_VAE FORMATS "/comfy_vae.safetensors"
#define EDIT_IN_A QI_SHARED_DIR "/reference/edit/inputs/in_a.png"
#define EDIT_2509 QI_SHARED_DIR "/reference/edit/model-2509"

static int formats_present(void) {
    if (access(TE_GGUF, R_OK) == 0 && access(COMFY_BF16, R_OK) == 0 && access(COMFY_VAE, R_OK) == 0) return 1;
    printf("  (skipped: %s absent)\n", FORMATS);
    return 0;
}
static char model[1024], lora[1024];

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int count_files(const char *dir) {
    char out[4096];
    run_shell(out, sizeof out, "ls -A %s | wc -l", dir);
    return atoi(out);
}

static void tokenize_prints_ids_on_one_line(void) {
    char out[4096];
    int rc = run_shell(out, sizeof out, "%s tokenize -m %s 'Hello world'", qi_cli(), model);
    CHECK(rc == 0 && !strcmp(out, "9707 1879\n"), "rc %d out '%s'", rc, out);
    rc = run_shell(out, sizeof out, "%s tokenize -m %s --template ''", qi_cli(), model);
    int n = 0;
    for (char *s = strtok(out, " \n"); s; s = strtok(NULL, " \n")) n++;
    CHECK(rc == 0 && n == 39, "empty prompt in the template is 39 ids, got %d (rc %d)", n, rc);
}

static void encode_writes_embeddings_and_mask(void) {
    char out[4096], path[1200], ref[1200];
    snprintf(path, sizeof path, "%s/emb.safetensors", tmpdir);
    int rc = run_shell(out, sizeof out, "%s encode -m %s -p 'a red apple on a table' -p '宫崎骏的动漫风格。平视角拍摄，阳光下的古街热闹非凡。' -o %s",
                 qi_cli(), model, path);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    qi_st_file *f = NULL, *r = NULL;
    qi_error err;
    snprintf(ref, sizeof ref, "%s/cases/batch2_lightning4_lora/tensors.safetensors", QI_TEST_DATA);
    if (qi_st_open(path, &f, &err) || qi_st_open(ref, &r, &err)) {
        CHECK(0, "%s", err.msg);
    } else {
        const qi_st_tensor *e = qi_st_file_find(f, "prompt_embeds"), *m = qi_st_file_find(f, "prompt_embeds_mask");
        const qi_st_tensor *re = qi_st_file_find(r, "prompt_embeds");
        CHECK(e && m && re && e->dtype == QI_F32 && m->dtype == QI_I32 && e->nbytes == re->nbytes, "tensors");
        if (e && re && e->nbytes == re->nbytes) {
            double d = qi_rel_l2(e->data, re->data, e->nbytes / 4);
            printf("  encode batch2: prompt_embeds rel L2 = %.2e\n", d);
            CHECK(d < 1e-4, "rel err %g", d);
        }
    }
    qi_st_close(f);
    qi_st_close(r);
}

/* A PNG the CLI wrote (rgb, w×h) against the image_u8 of a reference case's
 * tensors file: within 2 levels. Skipped where that file cannot be opened
 * (the reference data is not there). */
static void check_reference_pixels(const char *label, const uint8_t *rgb, int w, int h, const char *ref) {
    qi_st_file *r = NULL;
    qi_error err;
    if (!rgb || qi_st_open(ref, &r, &err) != QI_OK) return;
    int maxd = ref_image_diff(r, rgb, (size_t)w * h * 3, NULL);
    printf("  %s via the CLI: %dx%d, max abs pixel diff %d\n", label, w, h, maxd);
    CHECK(maxd >= 0 && maxd <= 2, "%s: max diff %d (-1: no image_u8 of %dx%d)", label, maxd, w, h);
    qi_st_close(r);
}

/* `generate ARGS --quiet -o <tmpdir>/STEM.png`: the picture within 2 levels
 * of reference file `ref` (check_reference_pixels), and `generate
 * --from-parameters` on it reruns it bit for bit. Returns the PNG's
 * parameters text for the caller's claims (free it), or NULL. */
static char *generate_reference_case(const char *label, const char *stem, const char *ref, const char *args) {
    char out[8192], png[1200], again[1200];
    snprintf(png, sizeof png, "%s/%s.png", tmpdir, stem);
    snprintf(again, sizeof again, "%s/%s_again.png", tmpdir, stem);
    int rc = run_shell(out, sizeof out, "%s generate %s --quiet -o %s", qi_cli(), args, png);
    CHECK(rc == 0, "%s: rc %d: %s", label, rc, out);
    uint8_t *rgb = NULL, *rgb2 = NULL;
    int w = 0, h = 0, w2 = 0, h2 = 0;
    char *params = NULL;
    qi_error err;
    CHECK(qi_png_read(png, &rgb, &w, &h, &params, &err) == QI_OK, "%s", err.msg);
    check_reference_pixels(label, rgb, w, h, ref);
    rc = run_shell(out, sizeof out, "%s generate --from-parameters %s --quiet -o %s", qi_cli(), png, again);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    CHECK(rgb && qi_png_read(again, &rgb2, &w2, &h2, NULL, &err) == QI_OK && w2 == w && h2 == h &&
              !memcmp(rgb, rgb2, (size_t)w * h * 3), "%s: --from-parameters did not rerun the same image", label);
    free(rgb);
    free(rgb2);
    return params;
}

static void generate_reproduces_a_reference_image_with_parameters(void) {
    char out[8192], png[1200], lat[1200];
    snprintf(png, sizeof png, "%s/en.png", tmpdir);
    snprintf(lat, sizeof lat, "%s/en_lat.safetensors", tmpdir);
    int rc = run_shell(out, sizeof out,
                 "%s generate -m %s -p 'A capybara wearing a suit holding a sign that reads Hello World.' -n ' ' "
                 "--lora %s --steps 8 --cfg 1 --scheduler lightning -W 128 -H 96 --seed 42 --save-latents %s -o %s",
                 qi_cli(), model, lora, lat, png);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    CHECK(strstr(out, "denoise 8/8") && strstr(out, "peak RSS"), "progress and summary lines: %s", out);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    qi_error err;
    CHECK(qi_png_read(png, &rgb, &w, &h, &params, &err) == QI_OK, "%s", err.msg);
    if (rgb) {
        check_reference_pixels("generate en_lightning8_lora", rgb, w, h,
                               QI_TEST_DATA "/cases/en_lightning8_lora/tensors.safetensors");
        CHECK(params && strstr(params, "A capybara") && strstr(params, "Steps: 8") &&
                  strstr(params, "Seed: 42") && strstr(params, "Size: 128x96") && strstr(params, "LoRA: lora.safetensors"),
              "parameters: %s", params ? params : "(none)");
        if (params) printf("  parameters chunk: %s\n", params);
    }
    free(rgb);
    free(params);
    CHECK(exists(lat), "--save-latents wrote %s", lat);
}

/* img2img through the CLI: the reference case img2img_s06_lightning8_lora
 * (in_c 100×75 → 128×96, strength 0.6, 8 Lightning steps of which 5 run),
 * its picture within 2 levels, and the parameters naming the picture and
 * the strength; --from-parameters on that image reruns it bit for bit. */
static void generate_img2img_reproduces_a_reference_image(void) {
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'A watercolor painting of a red fox resting under a pine tree, soft morning light.' --image %s "
             "--strength 0.6 --lora %s --steps 8 --scheduler lightning -W 128 -H 96 --seed 11",
             model, QI_SHARED_DIR "/reference/edit/inputs/in_c.png", lora);
    char *params = generate_reference_case("img2img_s06_lightning8_lora", "i2i",
                                           QI_SHARED_DIR "/reference/edit/img2img_s06_lightning8_lora/tensors.safetensors",
                                           args);
    CHECK(params && strstr(params, "Denoising strength: 0.6") && strstr(params, "Init image: ") &&
              strstr(params, "in_c.png"), "parameters: %s", params ? params : "(none)");
    free(params);
}

/* Qwen-Image-Edit through the CLI: the tiny 2509 folder (model_index.json
 * names QwenImageEditPlusPipeline) makes --image the pictures to edit. The
 * reference case edit2509_2img_cfg4 (two pictures, true CFG 4, 3 steps, the
 * fixture's areas through the test-only flags) within 2 levels; the
 * parameters name both pictures in order, and --from-parameters reruns it
 * bit for bit. */
static void generate_edit_reproduces_a_reference_image(void) {
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'Place the green rectangle from Picture 1 onto the background of Picture 2, keep the lighting.' "
             "-n ' ' --cfg 4 --steps 3 --seed 22 -W 80 -H 112 --image %s --image %s --edit-vl-area 50176 "
             "--edit-vae-area 65536",
             EDIT_2509, QI_SHARED_DIR "/reference/edit/inputs/in_b.png", QI_SHARED_DIR "/reference/edit/inputs/in_c.png");
    char *params = generate_reference_case("edit2509_2img_cfg4", "edit",
                                           QI_SHARED_DIR "/reference/edit/edit2509_2img_cfg4/tensors.safetensors", args);
    const char *p1 = params ? strstr(params, "Edit image 1: ") : NULL, *p2 = params ? strstr(params, "Edit image 2: ") : NULL;
    CHECK(p1 && p2 && strstr(p1, "in_b.png") && strstr(p2, "in_c.png") && strstr(params, "Edit VL area: 50176") &&
              !strstr(params, "Denoising strength"), "parameters: %s", params ? params : "(none)");
    free(params);
}

static void batch_writes_numbered_files(void) {
    char out[8192], base[1200], f0[1200], f1[1200];
    snprintf(base, sizeof base, "%s/b.webp", tmpdir);
    snprintf(f0, sizeof f0, "%s/b-0.webp", tmpdir);
    snprintf(f1, sizeof f1, "%s/b-1.webp", tmpdir);
    int rc = run_shell(out, sizeof out, "%s generate -m %s -p apple --batch 2 --steps 1 -W 32 -H 32 --quiet -o %s", qi_cli(),
                 model, base);
    CHECK(rc == 0 && exists(f0) && exists(f1) && !exists(base), "rc %d: %s", rc, out);
    CHECK(out[0] == 0, "--quiet prints nothing, got: %s", out);
}

/* Each bad argument: its exit code, a message naming it, and no file. */
static void bad_arguments_fail_cleanly(void) {
    struct {
        const char *args, *expect;
        int code;
    } cases[] = {
        {"-p x -W 100 -H 64", "multiples of 16", 2},
        {"-p x --steps 0", "--steps", 2},
        {"-p x --cfg -1", "--cfg", 2},
        {"-p x --steps abc", "--steps abc", 2},
        {"-p x --frobnicate 1", "unknown option", 2},
        {"-p x --verbose", "unknown option --verbose", 2},
        {"-p x --seed 18446744073709551616", "--seed 18446744073709551616", 2},
        {"-p x --steps 2000", "--steps 2000", 2},
        {"-p x --cfg inf", "--cfg inf", 2},
        {"-W 64", "no prompt", 2},
        {"-p x -o out.bmp", ".bmp", 2},
        {"-p x --lora /nonexistent/l.safetensors", "/nonexistent/l.safetensors", 1},
        {"-p x -o /nonexistent/dir/out.png", "/nonexistent/dir", 1},
        {"-p x -m /nonexistent/model", "/nonexistent/model", 1},
        {"-p x --strength 0.5", "--strength needs --image", 2},
        {"-p x --mask " EDIT_IN_A, "--mask needs --image", 2},
        {"-p x --image " EDIT_IN_A " --strength 0", "--strength 0: expected a number in (0, 1]", 2},
        {"-p x --image " EDIT_IN_A " --strength 1.01", "--strength 1.01", 2},
        {"-p x --image " EDIT_IN_A " --strength abc", "--strength abc", 2},
        {"-p x --image /nonexistent/p.png", "--image: cannot open /nonexistent/p.png", 1},
        {"-p x --image " EDIT_IN_A " --mask " QI_SHARED_DIR "/reference/edit/img2img_s09_cfg4/case.json",
         "--mask: " QI_SHARED_DIR "/reference/edit/img2img_s09_cfg4/case.json: not a PNG, JPEG or WebP picture", 1},
        {"-p x --image " EDIT_IN_A " --image " EDIT_IN_A, "several pictures need a Qwen-Image-Edit model", 2},
        {"-p x --image " EDIT_IN_A " --edit-vl-area 50176", "--edit-vl-area / --edit-vae-area need", 2},
        {"-p x -m " EDIT_2509 " --image " EDIT_IN_A " --image " EDIT_IN_A " --image " EDIT_IN_A " --image " EDIT_IN_A,
         "at most 3 pictures", 2},
        {"-p x -m " EDIT_2509, "a Qwen-Image-Edit model needs --image", 2},
        {"-p x -m " EDIT_2509 " --image " EDIT_IN_A " --strength 0.5", "Qwen-Image-Edit always starts", 2},
        {"-p x -m " EDIT_2509 " --image " EDIT_IN_A " --mask " EDIT_IN_A, "inpainting needs a Qwen-Image model", 2},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(cases); i++) {
        char out[4096], dir[1200];
        snprintf(dir, sizeof dir, "%s/bad%zu", tmpdir, i);
        mkdir(dir, 0755);
        int has_m = strstr(cases[i].args, "-m ") != NULL;
        int rc = run_shell(out, sizeof out, "cd %s && %s generate %s%s %s --steps 1 -W 32 -H 32 %s", dir, qi_cli(),
                     has_m ? "" : "-m ", has_m ? "" : model, strstr(cases[i].args, "--steps") ? "" : "", cases[i].args);
        /* later flags win: the case's own -W/--steps come after the defaults above */
        int lines = 0;
        for (char *c = out; *c; c++) lines += *c == '\n';
        printf("  generate %-40s -> exit %d: %s", cases[i].args, rc, out);
        CHECK(rc == cases[i].code, "'%s': exit %d, expected %d", cases[i].args, rc, cases[i].code);
        CHECK(strstr(out, cases[i].expect) != NULL, "'%s': message lacks '%s'", cases[i].args, cases[i].expect);
        CHECK(lines == 1, "'%s': expected one line, got %d", cases[i].args, lines);
        CHECK(count_files(dir) == 0, "'%s' left a file behind", cases[i].args);
    }
}

/* Mistakes that need no weights are found before any loads: the engine's
 * "loading" line never appears, and the run takes well under a second. */
/* --vram: encode with the text encoder's layers streamed (a budget under the
 * tiny encoder's whole size plus the plan's margin) writes the same file;
 * generate under a budget nothing fits exits 1 naming a --vram that would. */
static void vram_streams_the_same_embeddings_or_refuses(void) {
    char out[4096], a[1200], b[1200];
    snprintf(a, sizeof a, "%s/vram_a.safetensors", tmpdir);
    snprintf(b, sizeof b, "%s/vram_b.safetensors", tmpdir);
    int rc = run_shell(out, sizeof out, "%s encode -m %s -p 'a red apple' -o %s && %s encode -m %s -p 'a red apple' "
                       "--vram 150M -o %s && cmp %s %s", qi_cli(), model, a, qi_cli(), model, b, a, b);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s generate -m %s -p x --steps 1 -W 32 -H 32 --vram 64M -o %s/v.png", qi_cli(),
                   model, tmpdir);
    CHECK(rc == 1 && strstr(out, "too small") && strstr(out, "give --vram"), "rc %d: %s", rc, out);
}

static void mistakes_are_found_before_any_weight_loads(void) {
    char d[1200], long_name[400];
    snprintf(d, sizeof d, "%s/early", tmpdir);
    mkdir(d, 0755);
    memset(long_name, 'a', 300);
    strcpy(long_name + 300, ".png");
    char setup[4096];
    run_shell(setup, sizeof setup,
              "cd %s && touch afile && mkdir adir.png b-1.png && echo '{' > bad.json && printf '%%s' '{\"num_train_timesteps\": 1000, "
              "\"use_dynamic_shifting\": true, \"base_shift\": 1000, \"max_shift\": 1000, \"base_image_seq_len\": 256, "
              "\"max_image_seq_len\": 8192}' > inf.json && mkdir heads heads/transformer && for c in model_index.json "
              "scheduler text_encoder tokenizer vae; do ln -s %s/$c heads/$c; done && ln -s "
              "%s/transformer/diffusion_pytorch_model.safetensors heads/transformer/ && sed "
              "'s/\"num_attention_heads\": 4/\"num_attention_heads\": 100000000/' %s/transformer/config.json > "
              "heads/transformer/config.json", d, model, model, model);
    struct {
        const char *args, *expect, *not_expect;
        int code;
    } cases[] = {
        {"generate -p x -o adir.png", "-o adir.png: is a folder", NULL, 2},
        {"generate -p x -o afile/out.png", "'afile' is a file, not a folder", NULL, 1},
        {"generate -p x -o LONG", "255", NULL, 2},
        {"generate -p x --batch 2 -o b.png", "-o b-1.png: is a folder", NULL, 2},
        {"generate -p x --save-latents afile/l.safetensors", "--save-latents", NULL, 1},
        {"generate -p x --scheduler lightnin", "--scheduler lightnin: expected lightning, model", NULL, 2},
        {"generate -p x --scheduler bad.json", "--scheduler bad.json", NULL, 1},
        {"generate -p x --scheduler inf.json", "inf.json", "qi_", 1},
        {"generate -p \"$(printf 'a\\377b')\"", "-p: the prompt is not valid UTF-8", NULL, 2},
        {"generate -p x -n \"$(printf 'a\\377b')\" --cfg 4", "-n: the negative prompt is not valid UTF-8", "prompt 0", 2},
        {"generate -p x --cfg 1e39", "--cfg 1e39: must be between 0 and 100", NULL, 2},
        {"generate -p x --threads 4096", "--threads 4096: at most", NULL, 2},
        {"generate -p x --batch-index 2/2", "--batch-index 2/2", NULL, 2},
        {"generate -p x -p y --batch-index 0/3", "split evenly", NULL, 2},
        {"generate --from-parameters afile", "afile", NULL, 2},
        {"generate -p x -m afile", "-m afile: is a file, not a folder", NULL, 1}, /* as a missing -m: exit 1 */
        {"generate -p x -m heads", "heads/transformer/config.json: num_attention_heads is 100000000; allowed 1..1024",
         "sizing", 1},
        {"generate -p x --image afile", "--image: afile: not a PNG, JPEG or WebP picture", NULL, 1},
        {"encode -p x -o missing/e.safetensors", "cannot write into folder 'missing'", NULL, 1},
        {"encode -p x --threads 4096 -o e.safetensors", "--threads 4096", NULL, 2},
        {"generate -p x --vram 8Q", "--vram 8Q: expected a memory size", NULL, 2},
        {"encode -p x --vram 0.5M -o e.safetensors", "--vram 0.5M", NULL, 2},
        {"generate -p x --pinned 0.5M", "--pinned 0.5M: expected a memory size", NULL, 2}, /* 0 is fine, 0.5M not */
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(cases); i++) {
        char out[4096], args[1200];
        const char *at = strstr(cases[i].args, "LONG");
        if (at) snprintf(args, sizeof args, "%.*s%s", (int)(at - cases[i].args), cases[i].args, long_name);
        else snprintf(args, sizeof args, "%s", cases[i].args);
        int is_gen = !strncmp(args, "generate", 8), cmd_len = (int)strcspn(args, " ");
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = run_shell(out, sizeof out, "cd %s && %s %.*s -m %s %s %s", d, qi_cli(), cmd_len, args, model,
                           is_gen ? "--steps 1 -W 32 -H 32" : "", args + cmd_len);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
        printf("  %-50.50s -> exit %d in %.2f s: %s", cases[i].args, rc, s, out);
        CHECK(rc == cases[i].code, "'%s': exit %d, expected %d", cases[i].args, rc, cases[i].code);
        CHECK(strstr(out, cases[i].expect) != NULL, "'%s': message lacks '%s'", cases[i].args, cases[i].expect);
        CHECK(!cases[i].not_expect || !strstr(out, cases[i].not_expect), "'%s': message names '%s'", cases[i].args,
              cases[i].not_expect);
        CHECK(!strstr(out, "loading") && !strstr(out, "denoise"), "'%s': weights were loaded first", cases[i].args);
    }
    CHECK(count_files(d) == 6, "no file written besides the 6 set up: %d", count_files(d));
}

/* A message longer than the 1024-byte error buffer is cut in the middle:
 * its head (what failed) and its end (the reason and the fix) both survive
 * (issue 15: the reason used to be lost). A 1500-byte missing -m path. */
static void a_long_message_keeps_its_reason(void) {
    char path[1600], out[4096];
    int n = snprintf(path, sizeof path, "%s/", tmpdir);
    for (int part = 0; part < 7; part++) {
        memset(path + n, 'd' + part, 200);
        n += 200;
        path[n++] = '/';
    }
    strcpy(path + n, "model");
    int rc = run_shell(out, sizeof out, "%s generate -p x -m %s", qi_cli(), path);
    size_t len = strlen(out);
    printf("  exit %d, %zu bytes: %.60s ... %s", rc, len, out, len > 120 ? out + len - 120 : out);
    CHECK(rc == 1 && strstr(out, " [...] ") && strstr(out, "-m /tmp/"), "exit %d: %s", rc, out);
    const char *end = "--text-encoder and --vae)\n"; /* the message's last words: the fix */
    CHECK(strstr(out, "model: no such folder; give a Qwen/Qwen-Image diffusers folder") && len > strlen(end) &&
              !strcmp(out + len - strlen(end), end),
          "the reason is lost: %s", out);
}

/* The CPU backend sizes its arena from what `ulimit -v` leaves (half of it):
 * a 64x64 image under an 11.4 GiB limit runs (issue 15: it used to reserve
 * 16 GiB up front and fail). Sanitizers reserve terabytes of shadow memory,
 * so the claim runs in the release build only. */
static void a_small_image_runs_under_ulimit_v(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    printf("  (skipped: a sanitizer build cannot run under ulimit -v)\n");
#else
    char out[8192], png[1200];
    snprintf(png, sizeof png, "%s/ulimit.png", tmpdir);
    int rc = run_shell(out, sizeof out, "ulimit -v 12000000 && %s generate -m %s -p apple -W 64 -H 64 --steps 1 "
                       "--quiet -o %s", qi_cli(), model, png);
    printf("  ulimit -v 12000000, 64x64: exit %d %s\n", rc, out);
    CHECK(rc == 0 && exists(png), "exit %d: %s", rc, out);
#endif
}

static void cfg_without_negative_warns_and_records_it(void) {
    char out[8192], png[1200];
    snprintf(png, sizeof png, "%s/nocfg.png", tmpdir);
    int rc = run_shell(out, sizeof out, "%s generate -m %s -p apple --cfg 4 --steps 1 -W 32 -H 32 -o %s", qi_cli(),
                       model, png);
    CHECK(rc == 0 && strstr(out, "warning: --cfg 4 does nothing without a negative prompt"), "rc %d: %s", rc, out);
    uint8_t *rgb = NULL;
    int w, h;
    char *params = NULL;
    qi_error err;
    CHECK(qi_png_read(png, &rgb, &w, &h, &params, &err) == QI_OK && params &&
              strstr(params, "CFG scale: 1 (true CFG off: --cfg 4 needs -n)") && !strstr(params, "Negative prompt"),
          "%s", params ? params : err.msg);
    free(rgb);
    free(params);
}

static void help_and_version(void) {
    char out[8192];
    CHECK(run_shell(out, sizeof out, "%s tokenize --help", qi_cli()) == 0 && strstr(out, "usage: qwen-image tokenize"),
          "%s", out);
    CHECK(run_shell(out, sizeof out, "%s encode --help", qi_cli()) == 0 && strstr(out, "usage: qwen-image encode"),
          "%s", out);
    CHECK(run_shell(out, sizeof out, "%s generate --help", qi_cli()) == 0 && strstr(out, "--from-parameters") &&
              strstr(out, "130"),
          "%s", out);
    int rc = run_shell(out, sizeof out, "%s --version", qi_cli());
    printf("  --version: %s", out);
    CHECK(rc == 0 && !strncmp(out, "qwen-image 0.", 13), "rc %d: %s", rc, out);
}

/* ---- Ctrl-C ------------------------------------------------------------------------ */

/* Starts generate in dir with stderr on a pipe: *err reads it; `env`: one
 * test hook's NAME=VALUE for the child, or NULL. */
static pid_t spawn_generate(const char *dir, const char *steps, const char *env, FILE **err) {
    int fd[2];
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (chdir(dir)) _exit(127);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        const char *eq = env ? strchr(env, '=') : NULL;
        if (eq) {
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(eq - env), env);
            setenv(name, eq + 1, 1);
        }
        execl(qi_cli(), qi_cli(), "generate", "-m", model, "-p", "apple", "-W", "64", "-H", "64", "--steps", steps,
              "--threads", "1", "-o", "out.png", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    *err = fdopen(fd[0], "r");
    return pid;
}

/* Reads stderr until a line holding `what`; 1 if seen. */
static int wait_for(FILE *f, const char *what) {
    char line[4096];
    while (fgets(line, sizeof line, f))
        if (strstr(line, what)) return 1;
    return 0;
}

static int finish(pid_t pid, FILE *f) {
    char line[4096];
    while (fgets(line, sizeof line, f)) printf("    child: %s", line);
    fclose(f);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void sigint_cancels_at_the_next_step_and_writes_nothing(void) {
    char d[1200];
    snprintf(d, sizeof d, "%s/int1", tmpdir);
    mkdir(d, 0755);
    FILE *f;
    pid_t pid = spawn_generate(d, "1000", NULL, &f);
    REQUIRE(pid > 0 && f);
    int seen = wait_for(f, "denoise 1/1000");
    kill(pid, SIGINT);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int code = finish(pid, f);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("  SIGINT after step 1 of 1000: exit %d after %.2f s, %d file(s) left\n", code, s, count_files(d));
    CHECK(seen, "the child reported step 1");
    CHECK(code == 130, "exit %d, expected 130", code);
    CHECK(s < 20, "stopped at the next step, not after 1000 (%.1f s)", s);
    CHECK(count_files(d) == 0, "nothing written, no temporary file: %d file(s)", count_files(d));
}

/* Each denoising step made to take 30 s (a test-only hook): the first SIGINT
 * is acknowledged and waits for the step's end; the second exits at once,
 * from the handler (so not through the cancelled run's "nothing written"). */
static void second_sigint_exits_at_once(void) {
    char d[1200];
    snprintf(d, sizeof d, "%s/int2", tmpdir);
    mkdir(d, 0755);
    FILE *f;
    pid_t pid = spawn_generate(d, "1000", "QI_TEST_STEP_SECONDS=30", &f);
    REQUIRE(pid > 0 && f);
    int seen = wait_for(f, "denoise 0/1000");
    kill(pid, SIGINT);
    int acknowledged = wait_for(f, "stopping at the next step");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kill(pid, SIGINT);
    char rest[4096] = "";
    size_t n = fread(rest, 1, sizeof rest - 1, f);
    rest[n] = 0;
    int code = finish(pid, f);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("  second SIGINT inside a 30 s step: exit %d after %.2f s\n", code, s);
    CHECK(seen && acknowledged, "seen step 0 %d, first SIGINT acknowledged %d", seen, acknowledged);
    CHECK(code == 130, "exit %d, expected 130", code);
    CHECK(s < 10, "the second SIGINT waited %.1f s: not at once", s);
    CHECK(!strstr(rest, "nothing written"), "exited through the cancelled run, not at once: %s", rest);
    CHECK(count_files(d) == 0, "nothing written: %d file(s)", count_files(d));
}

/* The signal arrives while the image is being written (a test-only hook
 * pauses there): the file is completed and renamed, no temporary is left. */
static void sigint_during_the_save_leaves_a_whole_file_or_none(void) {
    char d[1200], png[1300];
    snprintf(d, sizeof d, "%s/int3", tmpdir);
    mkdir(d, 0755);
    FILE *f;
    pid_t pid = spawn_generate(d, "1", "QI_TEST_PAUSE_BEFORE_SAVE=2", &f);
    REQUIRE(pid > 0 && f);
    int seen = wait_for(f, "test hook: pausing before writing out.png");
    kill(pid, SIGINT);
    int code = finish(pid, f);
    char out[4096];
    run_shell(out, sizeof out, "ls -A %s", d);
    printf("  SIGINT during the save: exit %d, files: %s", code, out);
    CHECK(seen && code == 130, "seen %d, exit %d", seen, code);
    snprintf(png, sizeof png, "%s/out.png", d);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    qi_error err;
    CHECK(qi_png_read(png, &rgb, &w, &h, NULL, &err) == QI_OK && w == 64, "a whole image: %s", err.msg);
    free(rgb);
    CHECK(count_files(d) == 1, "only out.png, no temporary: %s", out);
}

static void unknown_command_is_usage_error(void) {
    char out[4096];
    CHECK(run_shell(out, sizeof out, "%s frobnicate", qi_cli()) == 2, "exit code");
    CHECK(run_shell(out, sizeof out, "%s --help", qi_cli()) == 0 && strstr(out, "generate"), "help");
}

/* ---- component files ------------------------------------------------------------------- */

/* Rel L2 of tensor `name` of file a against tensor `ref` of file b; -1 when
 * either is missing or the sizes differ. */
static double tensor_rel(const char *a, const char *name, const char *b, const char *ref) {
    qi_st_file *f = NULL, *r = NULL;
    qi_error err;
    double d = -1;
    if (!qi_st_open(a, &f, &err) && !qi_st_open(b, &r, &err)) {
        const qi_st_tensor *x = qi_st_file_find(f, name), *y = qi_st_file_find(r, ref);
        if (x && y && x->nbytes == y->nbytes && x->dtype == QI_F32 && y->dtype == QI_F32) {
            float *xa = malloc(x->nbytes), *ya = malloc(y->nbytes);
            memcpy(xa, x->data, x->nbytes);
            memcpy(ya, y->data, y->nbytes);
            d = qi_rel_l2(xa, ya, x->nbytes / 4);
            free(xa);
            free(ya);
        }
    }
    qi_st_close(f);
    qi_st_close(r);
    return d;
}

/* encode and tokenize with only a llama.cpp GGUF text encoder (no -m): the
 * tokenizer comes from its metadata and the embeddings are its reference's. */
static void encode_with_only_a_gguf_text_encoder(void) {
    if (!formats_present()) return;
    char out[8192], path[1200];
    int rc = run_shell(out, sizeof out, "%s tokenize --text-encoder %s 'Hello world'", qi_cli(), TE_GGUF);
    CHECK(rc == 0 && !strcmp(out, "9707 1879\n"), "tokenize: rc %d out '%s'", rc, out);
    snprintf(path, sizeof path, "%s/gguf_emb.safetensors", tmpdir);
    rc = run_shell(out, sizeof out, "%s encode --text-encoder %s -p 'A capybara wearing a suit holding a sign that "
                   "reads Hello World.' -o %s", qi_cli(), TE_GGUF, path);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    double d = tensor_rel(path, "prompt_embeds", FORMATS "/te_gguf_q8_0/tensors.safetensors", "p0.prompt_embeds");
    printf("  encode --text-encoder Qwen2.5-VL-tiny-Q8_0.gguf (no -m): p0 prompt_embeds rel L2 = %.2e\n", d);
    CHECK(d >= 0 && d < 1e-4, "rel L2 %g", d);
}

/* generate with the transformer and the VAE given as ComfyUI files (same
 * weights as the folder's: comfy_bf16 is the folder's transformer, prefixed;
 * comfy_vae its VAE in Wan names) gives exactly the folder's latents and
 * pixels. */
static void generate_with_component_files_equals_the_folder(void) {
    if (!formats_present()) return;
    char out[8192], a[1200], b[1200], la[1200], lb[1200];
    snprintf(a, sizeof a, "%s/folder.png", tmpdir);
    snprintf(b, sizeof b, "%s/files.png", tmpdir);
    snprintf(la, sizeof la, "%s/folder.safetensors", tmpdir);
    snprintf(lb, sizeof lb, "%s/files.safetensors", tmpdir);
    static const char common[] = "-p 'a red apple on a table' --steps 2 -W 64 -H 48 --seed 3 --quiet";
    int rc = run_shell(out, sizeof out, "%s generate -m %s %s --save-latents %s -o %s", qi_cli(), model, common, la, a);
    CHECK(rc == 0, "folder: rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s generate -m %s --diffusion-model %s --vae %s %s --save-latents %s -o %s", qi_cli(),
                   model, COMFY_BF16, COMFY_VAE, common, lb, b);
    CHECK(rc == 0, "files: rc %d: %s", rc, out);
    double d = tensor_rel(la, "vae_in", lb, "vae_in");
    uint8_t *pa = NULL, *pb = NULL;
    int wa, ha, wb, hb;
    char *params = NULL;
    qi_error err;
    int same_px = !qi_png_read(a, &pa, &wa, &ha, NULL, &err) && !qi_png_read(b, &pb, &wb, &hb, &params, &err) &&
                  wa == wb && ha == hb && !memcmp(pa, pb, (size_t)wa * ha * 3);
    printf("  --diffusion-model comfy_bf16 --vae comfy_vae vs the folder: vae_in rel L2 = %.2e, pixels %s\n", d,
           same_px ? "identical" : "DIFFER");
    CHECK(d == 0 && same_px, "rel %g, pixels %d", d, same_px);
    CHECK(params && strstr(params, "Diffusion model: ") && strstr(params, "VAE: "), "parameters: %s",
          params ? params : "(none)");
    free(pa);
    free(pb);
    free(params);
}

/* -m a folder of split files with misleading names: each component is found
 * by its content (here the text encoder, a GGUF named like a VAE, among a
 * transformer, a VAE and a LoRA); encode then gives the GGUF's embeddings. */
static void split_folder_is_found_by_content(void) {
    if (!formats_present()) return;
    char out[8192], dir[1200], path[1200];
    snprintf(dir, sizeof dir, "%s/comfy", tmpdir);
    int rc = run_shell(out, sizeof out,
                       "mkdir -p %s/split_files/vae %s/split_files/text_encoders %s/loras && "
                       "ln -s %s %s/split_files/vae/qwen_image_vae.gguf && "
                       "ln -s %s %s/split_files/text_encoders/diffusion.safetensors && "
                       "ln -s %s %s/split_files/te.safetensors && ln -s %s %s/loras/l.safetensors",
                       dir, dir, dir, TE_GGUF, dir, COMFY_BF16, dir, COMFY_VAE, dir, lora, dir);
    CHECK(rc == 0, "%s", out);
    snprintf(path, sizeof path, "%s/split_emb.safetensors", tmpdir);
    rc = run_shell(out, sizeof out, "%s encode -m %s -p 'A capybara wearing a suit holding a sign that reads Hello "
                   "World.' -o %s", qi_cli(), dir, path);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    double d = tensor_rel(path, "prompt_embeds", FORMATS "/te_gguf_q8_0/tensors.safetensors", "p0.prompt_embeds");
    printf("  encode -m <split folder>: the GGUF found by content, p0 prompt_embeds rel L2 = %.2e\n", d);
    CHECK(d >= 0 && d < 1e-4, "rel L2 %g", d);
    /* two text encoders: an error naming both and the flag */
    run_shell(out, sizeof out, "ln -s %s %s/loras/second.gguf", TE_GGUF, dir);
    rc = run_shell(out, sizeof out, "%s encode -m %s -p x -o %s", qi_cli(), dir, path);
    CHECK(rc == 2 && strstr(out, "second.gguf") && strstr(out, "--text-encoder"), "rc %d: %s", rc, out);
}

/* inspect: one screen naming format, component, architecture, types, scale
 * convention and prefix; --tensor writes that tensor dequantised to F32
 * under its name (here a Q8_0 GGUF weight asked by its transformers name). */
static void inspect_describes_files_and_writes_one_tensor(void) {
    if (!formats_present()) return;
    char out[8192], path[1200];
    int rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), TE_GGUF);
    CHECK(rc == 0 && strstr(out, "GGUF v3") && strstr(out, "component:     text encoder") &&
              strstr(out, "qwen2vl") && strstr(out, "13 Q8_0") && strstr(out, "scales:        none"),
          "rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), COMFY_BF16);
    CHECK(rc == 0 && strstr(out, "component:     transformer") && strstr(out, "77 BF16") &&
              strstr(out, "'model.diffusion_model.'"), "rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), FORMATS "/lightx2v_fp8_channel.safetensors");
    CHECK(rc == 0 && strstr(out, "per-output-channel weight_scale"), "rc %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/q.safetensors", tmpdir);
    static const char name[] = "model.layers.0.self_attn.q_proj.weight";
    rc = run_shell(out, sizeof out, "%s inspect %s --tensor %s -o %s", qi_cli(), TE_GGUF, name, path);
    CHECK(rc == 0, "rc %d: %s", rc, out);
    qi_gguf_file *g = NULL;
    qi_st_file *f = NULL;
    qi_error err;
    if (!qi_gguf_open(TE_GGUF, &g, &err) && !qi_st_open(path, &f, &err)) {
        const qi_gguf_tensor *q = qi_gguf_find(g, "blk.0.attn_q.weight");
        const qi_st_tensor *t = qi_st_file_find(f, name);
        int same = 0;
        if (q && t && t->dtype == QI_F32 && t->nbytes == 64 * 64 * 4) {
            float *want = malloc(t->nbytes);
            qi_to_f32(want, q->data, q->dtype, 64 * 64);
            same = !memcmp(want, t->data, t->nbytes);
            free(want);
        }
        printf("  inspect --tensor %s: %s\n", name, same ? "the Q8_0 dequantisation, bit for bit" : "DIFFERENT");
        CHECK(same, "inspect --tensor output differs");
    } else {
        CHECK(0, "%s", err.msg);
    }
    qi_st_close(f);
    if (g) qi_gguf_close(g);
}

/* A LoRA-like safetensors file: tensors of zeros (F32, or BF16 for 2-D when
 * bf16), each `.alpha` key a scalar holding `alpha`; metadata JSON or NULL.
 * The data section is a hole (ftruncate): a full-size file costs no disk. */
static int write_lora(const char *path, const char *meta, char names[][160], int n, const int64_t (*shapes)[2],
                      int bf16, float alpha) {
    size_t cap = 512 + (size_t)n * 260, len = 0, off = 0;
    char *h = malloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{");
    if (meta) len += (size_t)snprintf(h + len, cap - len, "\"__metadata__\":%s,", meta);
    int64_t alpha_at = -1;
    for (int i = 0; i < n; i++) {
        int is_alpha = strstr(names[i], ".alpha") != NULL;
        size_t bytes = is_alpha ? 4 : (size_t)(shapes[i][0] * shapes[i][1]) * (bf16 ? 2 : 4);
        if (is_alpha && alpha_at < 0) alpha_at = (int64_t)off;
        if (is_alpha)
            len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", names[i], off, off + 4);
        else
            len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                                    i ? "," : "", names[i], bf16 ? "BF16" : "F32", (long long)shapes[i][0],
                                    (long long)shapes[i][1], off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    FILE *f = fopen(path, "wb");
    uint64_t hl = len;
    int ok = f && fwrite(&hl, 8, 1, f) == 1 && fwrite(h, 1, len, f) == len;
    for (int i = 0; ok && i < n; i++) /* every alpha: the same value, written where its offsets say */
        if (strstr(names[i], ".alpha")) {
            int64_t at = 0;
            for (int j = 0; j < i; j++)
                at += strstr(names[j], ".alpha") ? 4 : shapes[j][0] * shapes[j][1] * (bf16 ? 2 : 4);
            ok = fseek(f, (long)(8 + len + (size_t)at), SEEK_SET) == 0 && fwrite(&alpha, 4, 1, f) == 1;
        }
    ok = ok && fflush(f) == 0 && ftruncate(fileno(f), (off_t)(8 + len + off)) == 0;
    if (f) fclose(f);
    free(h);
    (void)alpha_at;
    return ok ? 0 : -1;
}

/* inspect on LoRAs: the style, prefix, rank, alpha and scale the loader
 * reads, which modules, whether they name and fit the released transformer,
 * and the Lightning layout only where the keys show it; a file that is
 * neither a component nor a LoRA says both, with the LoRA reader's reason. */
static void inspect_names_loras(void) {
    char out[8192], path[1200];
    /* the bundled kohya fixture (tiny model: names match, shapes do not) */
    int rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), lora);
    CHECK(rc == 0 && strstr(out, "component:     LoRA") && strstr(out, "kohya (lora_down / lora_up) + alpha, no prefix") &&
              strstr(out, "28: the 14 linears of each of 2 blocks") && strstr(out, "8 attention, 4 MLP, 2 modulation each") &&
              strstr(out, "rank:          8 (every module)") && strstr(out, "alpha / rank = 0.5") &&
              strstr(out, "every module names a Linear of the Qwen-Image transformer") &&
              strstr(out, "28 of 28 modules do not fit the released") && strstr(out, "not the Lightning"),
          "rc %d: %s", rc, out);
    /* full size, the Lightning layout: 720 modules, kohya rank 64 alpha 8, bf16, prefix transformer. */
    static char names[2200][160];
    static int64_t shapes[2200][2];
    static const struct { const char *s; int out, in; } lin[] = {
        {"attn.to_q", 3072, 3072}, {"attn.to_k", 3072, 3072}, {"attn.to_v", 3072, 3072},
        {"attn.add_q_proj", 3072, 3072}, {"attn.add_k_proj", 3072, 3072}, {"attn.add_v_proj", 3072, 3072},
        {"attn.to_out.0", 3072, 3072}, {"attn.to_add_out", 3072, 3072}, {"img_mlp.net.0.proj", 12288, 3072},
        {"img_mlp.net.2", 3072, 12288}, {"txt_mlp.net.0.proj", 12288, 3072}, {"txt_mlp.net.2", 3072, 12288}};
    int n = 0;
    for (int b = 0; b < 60; b++)
        for (int k = 0; k < 12; k++) {
            snprintf(names[n], sizeof names[0], "transformer.transformer_blocks.%d.%s.lora_down.weight", b, lin[k].s);
            shapes[n][0] = 64, shapes[n++][1] = lin[k].in;
            snprintf(names[n], sizeof names[0], "transformer.transformer_blocks.%d.%s.lora_up.weight", b, lin[k].s);
            shapes[n][0] = lin[k].out, shapes[n++][1] = 64;
            snprintf(names[n++], sizeof names[0], "transformer.transformer_blocks.%d.%s.alpha", b, lin[k].s);
        }
    snprintf(path, sizeof path, "%s/lightning-layout.safetensors", tmpdir);
    CHECK(write_lora(path, NULL, names, n, (const int64_t(*)[2])shapes, 1, 8.0f) == 0, "writing %s", path);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), path);
    CHECK(rc == 0 && strstr(out, "prefix 'transformer.'") && strstr(out, "720: the 12 linears of each of 60 blocks (transformer_blocks.0-59): 8 attention, 4 MLP, 0 modulation each; embedders") &&
              strstr(out, "rank:          64 (every module)") && strstr(out, "alpha:         8 (every module)") &&
              strstr(out, "alpha / rank = 0.125") && strstr(out, "every delta has the released Qwen-Image (20B) weight's shape") &&
              strstr(out, "the Lightning LoRAs' layout") && strstr(out, "the keys do not say"),
          "rc %d: %s", rc, out);
    printf("  inspect on a full-size Lightning-layout LoRA (bf16, sparse):\n%s", out);
    /* one module fewer: no longer the Lightning layout */
    CHECK(write_lora(path, NULL, names, n - 3, (const int64_t(*)[2])shapes, 1, 8.0f) == 0, "writing %s", path);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), path);
    CHECK(rc == 0 && strstr(out, "719: in 60 blocks, not the same number in each") && strstr(out, "not the Lightning"),
          "rc %d: %s", rc, out);
    /* peft with diffusers' adapter metadata, and a module the model does not have */
    n = 0;
    snprintf(names[n], sizeof names[0], "transformer.img_in.lora_A.weight"), shapes[n][0] = 4, shapes[n++][1] = 64;
    snprintf(names[n], sizeof names[0], "transformer.img_in.lora_B.weight"), shapes[n][0] = 3072, shapes[n++][1] = 4;
    snprintf(path, sizeof path, "%s/peft.safetensors", tmpdir);
    CHECK(write_lora(path, "{\"lora_adapter_metadata\":\"{\\\"r\\\": 4, \\\"lora_alpha\\\": 2}\"}", names, n,
                     (const int64_t(*)[2])shapes, 0, 0) == 0, "writing %s", path);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), path);
    CHECK(rc == 0 && strstr(out, "peft / diffusers (lora_A / lora_B), no alpha, prefix 'transformer.'") &&
              strstr(out, "lora_alpha / r from the file's lora_adapter_metadata = 0.5") &&
              strstr(out, "1 outside the blocks (img_in.weight)") && strstr(out, "lora_adapter_metadata"),
          "rc %d: %s", rc, out);
    snprintf(names[0], sizeof names[0], "lora_unet_transformer_blocks_70_attn_to_q.lora_down.weight");
    snprintf(names[1], sizeof names[0], "lora_unet_transformer_blocks_70_attn_to_q.lora_up.weight");
    shapes[1][0] = 3072;
    CHECK(write_lora(path, NULL, names, 2, (const int64_t(*)[2])shapes, 0, 0) == 0, "writing %s", path);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), path);
    CHECK(rc == 0 && strstr(out, "flattened ('.' written '_'), prefix 'lora_unet_'") &&
              strstr(out, "1 of 1 modules match no weight") && strstr(out, "alpha / rank where alpha is given, else 1"),
          "rc %d: %s", rc, out);
    /* neither a component nor a LoRA */
    if (!formats_present()) return;
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), FORMATS "/quant_blocks.safetensors");
    CHECK(rc == 0 && strstr(out, "component:     none recognised (not a Qwen-Image transformer, text encoder or VAE)") &&
              strstr(out, "not a LoRA:    24 key(s) of no known LoRA form") && strstr(out, "12 F32, 12 U8") &&
              !strstr(out, "a LoRA?"), "rc %d: %s", rc, out);
    rc = run_shell(out, sizeof out, "%s inspect %s", qi_cli(), FORMATS "/qwen-image-tiny-mixed.lora-kohya.safetensors");
    CHECK(rc == 0 && strstr(out, "component:     LoRA") && strstr(out, "delta [256, 256]"), "rc %d: %s", rc, out);
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(model, sizeof model, "%s/tiny-model", QI_TEST_DATA);
    snprintf(lora, sizeof lora, "%s/cases/lora.safetensors", QI_TEST_DATA);
    RUN(tokenize_prints_ids_on_one_line);
    RUN(encode_writes_embeddings_and_mask);
    RUN(generate_reproduces_a_reference_image_with_parameters);
    RUN(generate_img2img_reproduces_a_reference_image);
    RUN(generate_edit_reproduces_a_reference_image);
    RUN(batch_writes_numbered_files);
    RUN(bad_arguments_fail_cleanly);
    RUN(unknown_command_is_usage_error);
    RUN(mistakes_are_found_before_any_weight_loads);
    RUN(vram_streams_the_same_embeddings_or_refuses);
    RUN(a_long_message_keeps_its_reason);
    RUN(a_small_image_runs_under_ulimit_v);
    RUN(cfg_without_negative_warns_and_records_it);
    RUN(help_and_version);
    RUN(sigint_cancels_at_the_next_step_and_writes_nothing);
    RUN(second_sigint_exits_at_once);
    RUN(sigint_during_the_save_leaves_a_whole_file_or_none);
    RUN(encode_with_only_a_gguf_text_encoder);
    RUN(generate_with_component_files_equals_the_folder);
    RUN(split_folder_is_found_by_content);
    RUN(inspect_describes_files_and_writes_one_tensor);
    RUN(inspect_names_loras);
    char out[256];
    run_shell(out, sizeof out, "rm -rf %s", tmpdir);
    TEST_END();
}

/*
 * test_cli.c — claims about the `qwen-image` command as a person uses it:
 * the exact interface of tokenize / encode / generate, exit codes (2 usage,
 * 1 runtime), one-line messages, and no output file left by a failed run.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/image.h"
#include "io/safetensors.h"
#include "test.h"
#include "testdata.h"

static char tmpdir[] = "/tmp/qi_cli_XXXXXX";
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
        char ref[1200];
        snprintf(ref, sizeof ref, "%s/cases/en_lightning8_lora/tensors.safetensors", QI_TEST_DATA);
        qi_st_file *r;
        if (!qi_st_open(ref, &r, &err)) {
            const qi_st_tensor *u8 = qi_st_file_find(r, "image_u8");
            int maxd = 0;
            if (u8 && u8->nbytes == (size_t)w * h * 3)
                for (size_t i = 0; i < u8->nbytes; i++) {
                    int d = abs((int)rgb[i] - ((const uint8_t *)u8->data)[i]);
                    if (d > maxd) maxd = d;
                }
            else maxd = 999;
            printf("  generate en_lightning8_lora via the CLI: max abs pixel diff %d\n", maxd);
            CHECK(maxd <= 2, "max diff %d", maxd);
            qi_st_close(r);
        }
        CHECK(params && strstr(params, "A capybara") && strstr(params, "Steps: 8") &&
                  strstr(params, "Seed: 42") && strstr(params, "Size: 128x96") && strstr(params, "LoRA: lora.safetensors"),
              "parameters: %s", params ? params : "(none)");
        if (params) printf("  parameters chunk: %s\n", params);
    }
    free(rgb);
    free(params);
    CHECK(exists(lat), "--save-latents wrote %s", lat);
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

static void unknown_command_is_usage_error(void) {
    char out[4096];
    CHECK(run_shell(out, sizeof out, "%s frobnicate", qi_cli()) == 2, "exit code");
    CHECK(run_shell(out, sizeof out, "%s --help", qi_cli()) == 0 && strstr(out, "generate"), "help");
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(model, sizeof model, "%s/tiny-model", QI_TEST_DATA);
    snprintf(lora, sizeof lora, "%s/cases/lora.safetensors", QI_TEST_DATA);
    RUN(tokenize_prints_ids_on_one_line);
    RUN(encode_writes_embeddings_and_mask);
    RUN(generate_reproduces_a_reference_image_with_parameters);
    RUN(batch_writes_numbered_files);
    RUN(bad_arguments_fail_cleanly);
    RUN(unknown_command_is_usage_error);
    char out[256];
    run_shell(out, sizeof out, "rm -rf %s", tmpdir);
    TEST_END();
}

/*
 * test_reproduce.c — claims about the `parameters` text of the images
 * `qwen-image generate` writes: for every image, rerunning with exactly what
 * its parameters say (--from-parameters IMAGE) gives the same pixels — for a
 * batch over two prompts with true CFG (the whole request runs again: the
 * batch's shape and text padding change the last bits of the arithmetic), a JSON scheduler, the CUDA generator
 * (recomputed on the CPU), bf16 noise and a 3000-character CJK prompt cut at
 * the model's limit — and the text is whole and valid UTF-8 (PNG and JPEG).
 * The tiny model at 64×64 and 2 steps keeps each run well under a second.
 */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/image.h"
#include "model/tokenizer.h"
#include "test.h"
#include "testdata.h"

static char tmpdir[] = "/tmp/qi_repro_XXXXXX";
static char model[1024];

typedef struct png {
    uint8_t *rgb;
    int w, h;
    char *params;
} png;

static int load(const char *path, png *p) {
    qi_error err;
    memset(p, 0, sizeof *p);
    if (qi_png_read(path, &p->rgb, &p->w, &p->h, &p->params, &err)) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    return 0;
}

static void drop(png *p) {
    free(p->rgb);
    free(p->params);
    memset(p, 0, sizeof *p);
}

static int same_pixels(const png *a, const png *b) {
    return a->rgb && b->rgb && a->w == b->w && a->h == b->h && !memcmp(a->rgb, b->rgb, (size_t)a->w * a->h * 3);
}

/* generate `args` into NAME.png (NAME-k.png for several images); 0 on success */
static int generate(const char *name, const char *args) {
    char out[16384];
    int rc = run_shell(out, sizeof out, "%s generate -m %s -W 64 -H 64 --steps 2 --quiet %s -o %s/%s.png", qi_cli(),
                       model, args, tmpdir, name);
    CHECK(rc == 0, "generate %s: exit %d: %s", args, rc, out);
    return rc;
}

/* Reruns image `path` from its own parameters alone; its pixels must come back. */
static void rerun_matches(const char *path, const char *extra, int expect_same) {
    char out[16384], again[1200];
    snprintf(again, sizeof again, "%s/again.png", tmpdir);
    unlink(again);
    int rc = run_shell(out, sizeof out, "cd %s && %s generate --quiet --from-parameters %s %s -o %s", tmpdir, qi_cli(),
                       path, extra, again);
    REQUIRE(rc == 0, "rerun of %s: exit %d: %s", path, rc, out);
    png a, b;
    if (load(path, &a) || load(again, &b)) {
        drop(&a);
        return;
    }
    printf("  rerun %s%s%s: %s pixels\n", strrchr(path, '/') + 1, *extra ? " " : "", extra,
           same_pixels(&a, &b) ? "the same" : "different");
    CHECK(same_pixels(&a, &b) == expect_same, "%s: rerun from its parameters %s", path,
          expect_same ? "changed the pixels" : "did not change with the override");
    if (expect_same) CHECK(a.params && b.params && !strcmp(a.params, b.params), "the rerun records the same text:\n%s\n---\n%s",
                           a.params, b.params);
    drop(&a);
    drop(&b);
}

static char *params_of(const char *path) {
    png p;
    if (load(path, &p)) return NULL;
    free(p.rgb);
    return p.params;
}

static void batch_of_two_prompts_with_cfg(void) {
    REQUIRE(generate("pc", "-p 'a red apple, on a table' -p 'a cat' --batch 2 -n ' ' --cfg 4 --seed 7") == 0);
    const char *expect[4] = {"Batch index: 0, Batch size: 4", "Batch index: 1, Batch size: 4",
                             "Batch index: 2, Batch size: 4", "Batch index: 3, Batch size: 4"};
    for (int k = 0; k < 4; k++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/pc-%d.png", tmpdir, k);
        char *t = params_of(path);
        REQUIRE(t != NULL, "no parameters in %s", path);
        CHECK(!strncmp(t, k < 2 ? "a red apple, on a table\n" : "a cat\n", k < 2 ? 24 : 6), "image %d's own prompt: %s",
              k, t);
        CHECK(strstr(t, "\nNegative prompt:  \n") && strstr(t, "CFG scale: 4,") && strstr(t, "Seed: 7,") &&
                  strstr(t, expect[k]) && strstr(t, ", Prompt 0: \"a red apple, on a table\", Prompt 1: a cat"),
              "image %d: %s", k, t);
        free(t);
        rerun_matches(path, "", 1);
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/pc-3.png", tmpdir);
    rerun_matches(path, "--batch-index 0/4", 0); /* the index is what picks the noise */
}

static void json_scheduler_is_recorded_with_its_hash(void) {
    char sched[1200], out[4096];
    snprintf(sched, sizeof sched, "%s/my sched.json", tmpdir);
    FILE *f = fopen(sched, "w");
    REQUIRE(f != NULL);
    fprintf(f, "{\"num_train_timesteps\": 1000, \"use_dynamic_shifting\": false, \"shift\": 2.5}\n");
    fclose(f);
    char args[1400], path[1200];
    snprintf(args, sizeof args, "-p 'a boat' --scheduler '%s'", sched);
    REQUIRE(generate("js", args) == 0);
    snprintf(path, sizeof path, "%s/js.png", tmpdir);
    char *t = params_of(path);
    REQUIRE(t != NULL);
    CHECK(strstr(t, "Scheduler: ") && strstr(t, "my sched.json") && strstr(t, "Scheduler hash: fnv1a64:"), "%s", t);
    free(t);
    rerun_matches(path, "", 1);
    /* the file changed: the rerun refuses rather than drawing another picture */
    f = fopen(sched, "a");
    REQUIRE(f != NULL);
    fprintf(f, " ");
    fclose(f);
    int rc = run_shell(out, sizeof out, "%s generate --quiet --from-parameters %s -o %s/x.png", qi_cli(), path, tmpdir);
    CHECK(rc == 1 && strstr(out, "changed since the image was made"), "exit %d: %s", rc, out);
}

static void cuda_generator_batch_is_reproduced_image_by_image(void) {
    /* the CUDA generator's layout depends on the whole draw's size: image 1
     * of 2 must be drawn as image 1 of 2, not as a draw of one */
    REQUIRE(generate("cu", "-p 'a lighthouse' --batch 2 --rng cuda --seed 3") == 0);
    for (int k = 0; k < 2; k++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/cu-%d.png", tmpdir, k);
        char *t = params_of(path);
        CHECK(t && strstr(t, "RNG: cuda"), "%s", t ? t : "");
        free(t);
        rerun_matches(path, "", 1);
    }
}

static void bf16_noise_is_recorded(void) {
    REQUIRE(generate("bf", "-p 'a forest' --noise-dtype bf16") == 0);
    char path[1200];
    snprintf(path, sizeof path, "%s/bf.png", tmpdir);
    char *t = params_of(path);
    CHECK(t && strstr(t, "Noise dtype: bf16"), "%s", t ? t : "");
    free(t);
    rerun_matches(path, "", 1);
    rerun_matches(path, "--noise-dtype f32", 0);
}

/* 3000 CJK characters (9000 bytes): more tokens than the model reads. */
static void long_cjk_prompt_is_kept_whole_and_its_cut_recorded(void) {
    static const char *const chars[] = {"山", "水", "花", "鸟", "风", "月", "猫", "街", "灯", "雨", "云", "桥"};
    char file[1200], path[1200], jpg[1200], out[8192];
    snprintf(file, sizeof file, "%s/cjk.txt", tmpdir);
    FILE *f = fopen(file, "w");
    REQUIRE(f != NULL);
    for (int i = 0; i < 3000; i++) fputs(chars[(i * 7 + i / 5) % 12], f);
    fclose(f);
    char args[1400];
    snprintf(args, sizeof args, "-p \"$(cat %s)\"", file);
    snprintf(path, sizeof path, "%s/cjk.png", tmpdir);
    int rc = run_shell(out, sizeof out, "%s generate -m %s -W 64 -H 64 --steps 2 %s -o %s", qi_cli(), model, args, path);
    REQUIRE(rc == 0, "exit %d: %s", rc, out);
    CHECK(strstr(out, "warning: the prompt (-p) is") && strstr(out, "reads the first 512"), "a warning: %s", out);
    char *t = params_of(path);
    REQUIRE(t != NULL);
    size_t n = strlen(t);
    printf("  3000-character prompt: parameters %zu bytes, ends: %s\n", n, strstr(t, "Steps:") ? strstr(t, "Steps:") : t);
    CHECK(n > 9000 && qi_utf8_first_invalid(t, n) == SIZE_MAX, "whole and valid UTF-8 (%zu bytes)", n);
    CHECK(strstr(t, "Steps: 2,") && strstr(t, "Prompt tokens: ") && strstr(t, "(the model read the first 512)"),
          "the cut is recorded: %s", strstr(t, "Steps:") ? strstr(t, "Steps:") : "(no settings line)");
    rerun_matches(path, "", 1);
    /* the same text as JPEG comment(s), read back whole */
    snprintf(jpg, sizeof jpg, "%s/cjk.jpg", tmpdir);
    rc = run_shell(out, sizeof out, "%s generate --quiet --from-parameters %s -o %s", qi_cli(), path, jpg);
    char *c = NULL;
    qi_error err;
    CHECK(rc == 0 && qi_jpeg_read_comment(jpg, &c, &err) == QI_OK && c && !strcmp(c, t), "JPEG comment: exit %d %s",
          rc, out);
    free(c);
    free(t);
}

/* Over 65533 bytes: several COM segments, none cut inside a character. */
static void jpeg_comment_longer_than_a_segment_reads_back_whole(void) {
    size_t n = 3 * 70000;
    char *text = malloc(n + 1), *back = NULL, path[1200];
    REQUIRE(text != NULL);
    for (size_t i = 0; i < n; i += 3) memcpy(text + i, "\xe5\xb1\xb1", 3); /* 山 */
    text[n] = 0;
    uint8_t rgb[16 * 16 * 3] = {0};
    qi_error err;
    snprintf(path, sizeof path, "%s/long.jpg", tmpdir);
    CHECK(qi_image_save(path, rgb, 16, 16, text, NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_jpeg_read_comment(path, &back, &err) == QI_OK && back && !strcmp(back, text), "read back %zu bytes",
          back ? strlen(back) : 0);
    free(back);
    text[5] = (char)0xff; /* invalid UTF-8 is refused, not written as a broken chunk */
    snprintf(path, sizeof path, "%s/bad.png", tmpdir);
    CHECK(qi_image_save(path, rgb, 16, 16, text, NULL, &err) == QI_ERR_ARG && strstr(err.msg, "UTF-8"), "%s",
          err.msg);
    free(text);
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(model, sizeof model, "%s/tiny-model", QI_TEST_DATA);
    RUN(batch_of_two_prompts_with_cfg);
    RUN(json_scheduler_is_recorded_with_its_hash);
    RUN(cuda_generator_batch_is_reproduced_image_by_image);
    RUN(bf16_noise_is_recorded);
    RUN(long_cjk_prompt_is_kept_whole_and_its_cut_recorded);
    RUN(jpeg_comment_longer_than_a_segment_reads_back_whole);
    char out[256];
    run_shell(out, sizeof out, "rm -rf %s", tmpdir);
    TEST_END();
}

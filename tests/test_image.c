/*
 * test_image.c — the diffusers pixel conversion's rounding, and image files:
 * PNG round trip with the parameters text, JPEG and WebP output, and that a
 * failed write names the path and leaves no file behind.
 */
#define _GNU_SOURCE /* mkdtemp, memmem */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <webp/decode.h>

#include "io/image.h"
#include "test.h"

static char g_dir[64];

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* Entries of the test dir (temporary files included), "." and ".." excluded. */
static int dir_entries(void) {
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    if (d) closedir(d);
    return n;
}

static void clear_dir(void) {
    DIR *d = opendir(g_dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        if (unlink(p)) rmdir(p);
    }
    if (d) closedir(d);
}

static uint8_t *test_pattern(int w, int h) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *px = p + ((size_t)y * w + x) * 3;
            px[0] = (uint8_t)(x * 255 / (w - 1));
            px[1] = (uint8_t)(y * 255 / (h - 1));
            px[2] = (uint8_t)((x * 7 + y * 13) & 255);
        }
    return p;
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

static int read_head(const char *path, unsigned char *buf, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    return got == n ? 0 : -1;
}

/* ---- pixel conversion ------------------------------------------------------------ */

static void test_u8_conversion_endpoints_and_layout(void) {
    /* [3, 1, 4]: channel planes in, interleaved pixels out */
    float rgb[12] = {-1, 0, 1, 2, /* R */ -3, -0.5f, 0.5f, NAN, /* G */ 1, 1, 1, 1 /* B */};
    uint8_t out[12];
    qi_rgb_to_u8(rgb, 1, 4, out);
    const uint8_t want[12] = {0, 0, 255, 128, 64, 255, 255, 191, 255, 255, 0, 255};
    /* pixel 1: R 0 → 127.5 → 128 (even), G −0.5 → 63.75 → 64; pixel 3: G NaN → 0 */
    for (int i = 0; i < 12; i++) CHECK(out[i] == want[i], "out[%d] = %d, want %d", i, out[i], want[i]);
}

/* v·255 landing exactly on k + 0.5 must round to even (NumPy), not away from
 * zero (roundf): 0.5·255 = 127.5 → 128, and a float v with v·255 == 126.5 → 126. */
static void test_u8_rounds_half_to_even(void) {
    float x = 0.0f; /* v = 0.5 */
    uint8_t o[3];
    float rgb[3] = {x, x, x};
    qi_rgb_to_u8(rgb, 1, 1, o);
    CHECK(o[0] == 128, "0.5*255 -> %d", o[0]);
    /* a float v near 126.5/255 whose float32 product with 255 is exactly 126.5 */
    int found = 0;
    float v = 126.5f / 255.0f, lo = v, hi = v;
    for (int k = 0; k < 256 && !found; k++) {
        if (lo * 255.0f == 126.5f) v = lo, found = 1;
        else if (hi * 255.0f == 126.5f) v = hi, found = 1;
        lo = nextafterf(lo, 0.0f);
        hi = nextafterf(hi, 1.0f);
    }
    if (found) {
        float in[3] = {2 * v - 1, 2 * v - 1, 2 * v - 1}; /* exact: x·0.5 + 0.5 gives v back */
        qi_rgb_to_u8(in, 1, 1, o);
        CHECK(o[0] == 126, "v*255 == 126.5 -> %d (half away from zero would give 127)", o[0]);
    }
    printf("  exact-half probe %s\n", found ? "found (126.5 -> 126)" : "not found");
}

static void test_unit_conversion_matches_formula(void) {
    float rgb[3] = {0.25f, -2.0f, 0.999f}, out[3];
    qi_rgb_to_unit(rgb, 1, 1, out);
    CHECK(out[0] == 0.625f && out[1] == 0.0f && out[2] == 0.999f * 0.5f + 0.5f, "%g %g %g", out[0],
          out[1], out[2]);
}

/* ---- files ----------------------------------------------------------------------- */

static void png_round_trip(const char *name, const char *params) {
    char path[256];
    path_in(path, sizeof path, name);
    int w = 37, h = 23;
    uint8_t *px = test_pattern(w, h);
    qi_error err;
    CHECK(qi_image_save(path, px, w, h, params, NULL, &err) == QI_OK, "%s", err.msg);
    uint8_t *back = NULL;
    char *text = NULL;
    int bw, bh;
    CHECK(qi_png_read(path, &back, &bw, &bh, &text, &err) == QI_OK, "%s", err.msg);
    CHECK(bw == w && bh == h, "size %dx%d", bw, bh);
    CHECK(back && !memcmp(back, px, (size_t)w * h * 3), "pixels differ after the round trip");
    CHECK(text && !strcmp(text, params), "parameters: '%s'", text ? text : "(none)");
    CHECK(dir_entries() == 1, "%d entries in the dir (a temporary left behind?)", dir_entries());
    free(back);
    free(text);
    free(px);
    clear_dir();
}

static void test_png_round_trip_with_ascii_parameters(void) {
    png_round_trip("a.png", "a cat in a suit\nNegative prompt: \nSteps: 8, Seed: 42, Size: 37x23");
}

static void test_png_round_trip_with_utf8_parameters(void) {
    png_round_trip("b.PNG", "一只戴着宇航员头盔的橘猫\nSteps: 4, CFG scale: 4");
}

static void test_png_without_parameters_reads_null(void) {
    char path[256];
    path_in(path, sizeof path, "c.png");
    uint8_t *px = test_pattern(4, 4), *back = NULL;
    char *text = (char *)1;
    int w, h;
    qi_error err;
    CHECK(qi_image_save(path, px, 4, 4, NULL, NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_png_read(path, &back, &w, &h, &text, &err) == QI_OK, "%s", err.msg);
    CHECK(text == NULL, "expected no parameters");
    free(back);
    free(px);
    clear_dir();
}

/* Fuzz-found (tests/fuzz/corpus/image/regress_huge_ihdr.png): a 68-byte PNG
 * whose header claims 65536x65536 pixels made the reader allocate 12 GiB
 * before finding the data missing. */
static void test_png_claiming_more_pixels_than_its_bytes_hold_is_refused_up_front(void) {
    static const unsigned char huge[] =
        "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x01\x00\x00\x00\x01\x00\x00\x08\x02"
        "\x00\x00\x00\xe3\xe6\xa7\xb4\x00\x00\x00\x0b\x49\x44\x41\x54\x78\x9c\x63\x60\x40\x05\x00\x00\x10\x00\x01"
        "\x39\xbd\x8f\x65\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82";
    char path[256];
    path_in(path, sizeof path, "huge.png");
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(huge, 1, sizeof huge - 1, f) == sizeof huge - 1 && fclose(f) == 0, "write %s", path);
    uint8_t *back = (uint8_t *)1;
    char *text = (char *)1;
    int w, h;
    qi_error err;
    CHECK(qi_png_read(path, &back, &w, &h, &text, &err) == QI_ERR_FORMAT, "status");
    CHECK(strstr(err.msg, path) && strstr(err.msg, "65536x65536") && strstr(err.msg, "68-byte file"),
          "message: %s", err.msg);
    CHECK(back == NULL && text == NULL, "outputs set on failure");
    clear_dir();
}

static void test_overwrite_replaces_the_file(void) {
    char path[256];
    path_in(path, sizeof path, "d.png");
    uint8_t *a = test_pattern(8, 8), *b = test_pattern(8, 8), *back = NULL;
    b[0] ^= 0xff;
    qi_error err;
    int w, h;
    CHECK(qi_image_save(path, a, 8, 8, "first", NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_image_save(path, b, 8, 8, "second", NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_png_read(path, &back, &w, &h, NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(back && back[0] == b[0], "old content survived");
    CHECK(dir_entries() == 1, "%d entries", dir_entries());
    free(a);
    free(b);
    free(back);
    clear_dir();
}

static void test_jpeg_is_written(void) {
    char path[256];
    path_in(path, sizeof path, "e.jpeg");
    int w = 64, h = 48;
    uint8_t *px = test_pattern(w, h);
    qi_error err;
    CHECK(qi_image_save(path, px, w, h, "jpeg params", NULL, &err) == QI_OK, "%s", err.msg);
    unsigned char head[3] = {0};
    CHECK(read_head(path, head, 3) == 0 && head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF,
          "not a JPEG (SOI marker missing)");
    long n = file_size(path);
    printf("  JPEG q95 %dx%d: %ld bytes\n", w, h, n);
    CHECK(n > 100, "size %ld", n);
    /* the parameters travel as a COM segment */
    FILE *f = fopen(path, "rb");
    char *buf = malloc((size_t)n);
    CHECK(f && fread(buf, 1, (size_t)n, f) == (size_t)n, "read back");
    if (f) fclose(f);
    CHECK(memmem(buf, (size_t)n, "\xFF\xFE", 2) && memmem(buf, (size_t)n, "jpeg params", 11),
          "COM marker with the parameters not found");
    free(buf);
    free(px);
    path_in(path, sizeof path, "e2.JPG");
    px = test_pattern(2, 2);
    CHECK(qi_image_save(path, px, 2, 2, NULL, NULL, &err) == QI_OK, "%s", err.msg);
    free(px);
    clear_dir();
}

static void webp_written(const char *name, int lossless) {
    char path[256];
    path_in(path, sizeof path, name);
    int w = 40, h = 30;
    uint8_t *px = test_pattern(w, h);
    qi_image_save_options o = qi_image_save_options_default();
    o.webp_lossless = lossless;
    qi_error err;
    CHECK(qi_image_save(path, px, w, h, "ignored", &o, &err) == QI_OK, "%s", err.msg);
    long n = file_size(path);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    FILE *f = fopen(path, "rb");
    CHECK(f && fread(buf, 1, (size_t)n, f) == (size_t)n, "read back");
    if (f) fclose(f);
    CHECK(n > 12 && !memcmp(buf, "RIFF", 4) && !memcmp(buf + 8, "WEBP", 4), "not a WebP file");
    int dw = 0, dh = 0;
    uint8_t *dec = WebPDecodeRGB(buf, (size_t)n, &dw, &dh);
    CHECK(dec && dw == w && dh == h, "decoded %dx%d", dw, dh);
    if (dec && lossless) CHECK(!memcmp(dec, px, (size_t)w * h * 3), "lossless WebP changed pixels");
    printf("  WebP %s %dx%d: %ld bytes\n", lossless ? "lossless" : "q95", w, h, n);
    WebPFree(dec);
    free(buf);
    free(px);
    clear_dir();
}

static void test_webp_lossy_is_written(void) { webp_written("f.webp", 0); }
static void test_webp_lossless_is_exact(void) { webp_written("g.WebP", 1); }

static void test_bad_extension_is_named_and_writes_nothing(void) {
    char path[256];
    path_in(path, sizeof path, "h.bmp");
    uint8_t px[12] = {0};
    qi_error err;
    CHECK(qi_image_save(path, px, 2, 2, NULL, NULL, &err) == QI_ERR_ARG, "status");
    CHECK(strstr(err.msg, ".bmp") && strstr(err.msg, path), "message: %s", err.msg);
    printf("  -> %s\n", err.msg);
    path_in(path, sizeof path, "noext");
    CHECK(qi_image_save(path, px, 2, 2, NULL, NULL, &err) == QI_ERR_ARG, "status");
    CHECK(strstr(err.msg, path) != NULL, "message: %s", err.msg);
    CHECK(dir_entries() == 0, "%d entries", dir_entries());
}

static void test_unwritable_directory_is_named(void) {
    uint8_t px[12] = {0};
    qi_error err;
    const char *missing = "/nonexistent-qi-dir/out.png";
    CHECK(qi_image_save(missing, px, 2, 2, NULL, NULL, &err) == QI_ERR_IO, "status");
    CHECK(strstr(err.msg, missing) != NULL, "message: %s", err.msg);
    printf("  -> %s\n", err.msg);
    /* /proc refuses new files even to root */
    CHECK(qi_image_save("/proc/qi_out.png", px, 2, 2, NULL, NULL, &err) == QI_ERR_IO, "status");
    CHECK(strstr(err.msg, "/proc/qi_out.png") != NULL, "message: %s", err.msg);
    CHECK(file_size("/proc/qi_out.png") < 0, "file exists");
    printf("  -> %s\n", err.msg);
}

/* The rename onto an existing directory fails after the image was written:
 * the temporary must be gone. */
static void test_failed_rename_leaves_no_temporary(void) {
    char path[256];
    path_in(path, sizeof path, "i.png");
    CHECK(mkdir(path, 0755) == 0, "mkdir");
    uint8_t *px = test_pattern(8, 8);
    qi_error err;
    CHECK(qi_image_save(path, px, 8, 8, "x", NULL, &err) == QI_ERR_IO, "status");
    CHECK(strstr(err.msg, path) != NULL, "message: %s", err.msg);
    printf("  -> %s\n", err.msg);
    CHECK(dir_entries() == 1, "%d entries (only the directory should remain)", dir_entries());
    free(px);
    clear_dir();
}

static void test_reading_a_non_png_is_an_error(void) {
    char path[256];
    path_in(path, sizeof path, "j.png");
    FILE *f = fopen(path, "wb");
    fputs("not a png at all", f);
    fclose(f);
    uint8_t *rgb = NULL;
    int w, h;
    qi_error err;
    CHECK(qi_png_read(path, &rgb, &w, &h, NULL, &err) == QI_ERR_FORMAT, "status");
    CHECK(strstr(err.msg, path) != NULL, "message: %s", err.msg);
    CHECK(rgb == NULL, "no pixels");
    /* a truncated PNG too */
    uint8_t *px = test_pattern(16, 16);
    path_in(path, sizeof path, "k.png");
    CHECK(qi_image_save(path, px, 16, 16, NULL, NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(truncate(path, file_size(path) / 2) == 0, "truncate");
    CHECK(qi_png_read(path, &rgb, &w, &h, NULL, &err) == QI_ERR_FORMAT, "status");
    printf("  -> %s\n", err.msg);
    free(px);
    clear_dir();
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/qi_test_image_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_u8_conversion_endpoints_and_layout);
    RUN(test_u8_rounds_half_to_even);
    RUN(test_unit_conversion_matches_formula);
    RUN(test_png_round_trip_with_ascii_parameters);
    RUN(test_png_round_trip_with_utf8_parameters);
    RUN(test_png_without_parameters_reads_null);
    RUN(test_png_claiming_more_pixels_than_its_bytes_hold_is_refused_up_front);
    RUN(test_overwrite_replaces_the_file);
    RUN(test_jpeg_is_written);
    RUN(test_webp_lossy_is_written);
    RUN(test_webp_lossless_is_exact);
    RUN(test_bad_extension_is_named_and_writes_nothing);
    RUN(test_unwritable_directory_is_named);
    RUN(test_failed_rename_leaves_no_temporary);
    RUN(test_reading_a_non_png_is_an_error);
    clear_dir();
    rmdir(g_dir);
    TEST_END();
}

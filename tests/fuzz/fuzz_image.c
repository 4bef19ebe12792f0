/*
 * fuzz_image.c — the image readers used on inputs: `--from-parameters`
 * reads a PNG (pixels decoded to 8-bit RGB and the `parameters` text from
 * tEXt / zTXt / iTXt, before or after the image data: qi_png_read) or a
 * JPEG's COM segments (qi_jpeg_read_comment, a marker walk; JPEG pixels and
 * WebP are never decoded by these: image.c only encodes them). The same
 * bytes go to both readers (each checks its own signature), written to the
 * scratch folder: both take a path (libpng and the marker walk read a FILE *).
 * And the reader of uploaded pictures (the server's /v1/images/edits:
 * qi_image_read_rgb_mem, PNG, JPEG and WebP pixels, from memory).
 *
 * Oracles beyond the sanitizers: a refusal has a message naming the file; a
 * decoded PNG has width × height × 3 readable bytes; texts are strings; an
 * upload is at most max_side a side, and a PNG decodes from memory to the
 * pixels it decodes to from the file.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char png[1024], jpg[1024];
    fuzz_put("in.png", data, size, png, sizeof png);
    fuzz_put("in.jpg", data, size, jpg, sizeof jpg);
    uint8_t *rgb = NULL;
    int w = -1, h = -1;
    char *text = NULL;
    qi_error err;
    qi_status st = qi_png_read(png, &rgb, &w, &h, &text, &err);
    uint8_t *up = NULL;
    int uw = -1, uh = -1;
    qi_error uerr;
    qi_status ust = qi_image_read_rgb_mem("upload", data, size, 4096, &up, &uw, &uh, &uerr);
    if (ust != QI_OK) {
        fuzz_check_error(ust, &uerr, "upload");
        if (up) fuzz_fail("a refused upload left pixels");
    } else {
        if (!up || uw < 1 || uh < 1 || uw > 4096 || uh > 4096) fuzz_fail("an upload of %dx%d pixels", uw, uh);
        fuzz_touch(up, (size_t)uw * (size_t)uh * 3);
        if (st == QI_OK && (uw != w || uh != h || memcmp(up, rgb, (size_t)w * (size_t)h * 3)))
            fuzz_fail("a PNG decodes to other pixels from memory (%dx%d) than from its file (%dx%d)", uw, uh, w, h);
        free(up);
    }
    if (st != QI_OK) {
        fuzz_check_error(st, &err, "in.png");
        if (rgb || text) fuzz_fail("a refused PNG left outputs");
    } else {
        if (!rgb || w < 1 || h < 1) fuzz_fail("a PNG of %dx%d pixels", w, h);
        fuzz_touch(rgb, (size_t)w * (size_t)h * 3);
        if (text) fuzz_touch(text, strlen(text) + 1);
        free(rgb);
        free(text);
    }
    text = NULL;
    st = qi_jpeg_read_comment(jpg, &text, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, "in.jpg");
        if (text) fuzz_fail("a refused JPEG left a text");
    } else if (text) {
        fuzz_touch(text, strlen(text) + 1);
        free(text);
    }
    return 0;
}

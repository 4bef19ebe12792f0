/*
 * test_gguf_write.c — claims about the streamed writers: a GGUF written by
 * io/gguf_write.c reads back through io/gguf.c (strict reader) with every
 * key (string, u32, bool, f32, f32 array), name, type, shape and byte as written, whatever the pieces the data
 * came in (aligned to 32); the same for safetensors_stream.c through io/safetensors.c; and
 * misuse (a tensor twice, a type GGUF has no id for, a partial block, too
 * many or too few bytes, an empty dim, an unwritable path) is an error naming the tensor
 * or file.
 */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "base/quant.h"
#include "base/types.h"
#include "io/gguf.h"
#include "io/gguf_write.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "test.h"
#include "testdata.h"

static char dir[256];

typedef struct spec {
    const char *name;
    qi_dtype t;
    int ndim;
    int64_t shape[4];
} spec;

static const spec SPECS[] = {
    {"a.bias", QI_F32, 1, {7}},
    {"b.weight", QI_Q8_0, 2, {3, 64}},
    {"c.weight", QI_Q4_K, 2, {2, 512}},
    {"d.half", QI_F16, 2, {4, 5}},
    {"e.conv", QI_BF16, 4, {2, 3, 1, 5}},
    {"f.weight", QI_Q6_K, 2, {1, 256}},
};

static size_t bytes_of(const spec *s) {
    size_t n;
    qi_error err;
    return qi_shape_bytes(s->t, s->ndim, s->shape, &n, s->name, &err) ? 0 : n;
}

static void gguf_round_trip(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/t.gguf", dir);
    qi_gguf_writer *w;
    qi_error err;
    REQUIRE(qi_gguf_writer_new(&w, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_set_string(w, "general.architecture", "qwen_image", &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_set_u32(w, "general.quantization_version", 2, &err) == QI_OK, "%s", err.msg);
    const float mean[3] = {0.48145466f, -2.5f, 1e-30f};
    CHECK(qi_gguf_writer_set_bool(w, "clip.has_vision_encoder", 1, &err) == QI_OK &&
              qi_gguf_writer_set_bool(w, "clip.use_gelu", 0, &err) == QI_OK &&
              qi_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-6f, &err) == QI_OK &&
              qi_gguf_writer_set_f32_array(w, "clip.vision.image_mean", mean, 3, &err) == QI_OK,
          "%s", err.msg);
    size_t total = 0;
    for (size_t i = 0; i < QI_ARRAY_LEN(SPECS); i++) {
        const spec *s = &SPECS[i];
        CHECK(qi_gguf_writer_add_tensor(w, s->name, s->t, s->ndim, s->shape, &err) == QI_OK, "%s", err.msg);
        total += bytes_of(s);
    }
    uint8_t *data = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (uint8_t)(i * 131 + 7);
    CHECK(qi_gguf_writer_begin(w, path, &err) == QI_OK, "%s", err.msg);
    for (size_t off = 0, k = 1; off < total; off += k, k = k * 3 % 97 + 1) /* uneven pieces */
        CHECK(qi_gguf_writer_write(w, data + off, off + k > total ? total - off : k, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_end(w, &err) == QI_OK, "%s", err.msg);
    qi_gguf_writer_free(w);

    qi_gguf_file *g;
    REQUIRE(qi_gguf_open(path, &g, &err) == QI_OK, "%s", err.msg);
    const char *arch;
    size_t len;
    int64_t v;
    CHECK(qi_gguf_version(g) == 3 && qi_gguf_alignment(g) == 32, "version/alignment");
    CHECK(qi_gguf_get_string(g, "general.architecture", &arch, &len, &err) == QI_OK && len == 10 &&
              !memcmp(arch, "qwen_image", 10), "architecture");
    CHECK(qi_gguf_get_int(g, "general.quantization_version", &v, &err) == QI_OK && v == 2, "u32 key");
    int yes = -1, no = -1;
    double eps = 0, m[3] = {0};
    qi_gguf_array a;
    CHECK(qi_gguf_get_bool(g, "clip.has_vision_encoder", &yes, &err) == QI_OK && yes == 1 &&
              qi_gguf_get_bool(g, "clip.use_gelu", &no, &err) == QI_OK && no == 0, "bool keys: %s", err.msg);
    CHECK(qi_gguf_key_type(g, "clip.vision.attention.layer_norm_epsilon") == QI_GGUF_F32 &&
              qi_gguf_get_float(g, "clip.vision.attention.layer_norm_epsilon", &eps, &err) == QI_OK && eps == (double)1e-6f,
          "f32 key: %g", eps);
    CHECK(qi_gguf_get_array(g, "clip.vision.image_mean", &a, &err) == QI_OK && a.type == QI_GGUF_F32 && a.count == 3,
          "f32 array: %s", err.msg);
    for (uint64_t i = 0; i < 3 && a.count == 3; i++)
        CHECK(qi_gguf_array_float(&a, i, &m[i], &err) == QI_OK && m[i] == (double)mean[i], "element %d: %g",
              (int)i, m[i]);
    CHECK(qi_gguf_tensor_count(g) == (int)QI_ARRAY_LEN(SPECS), "count");
    size_t off = 0;
    for (size_t i = 0; i < QI_ARRAY_LEN(SPECS); i++) {
        const spec *s = &SPECS[i];
        const qi_gguf_tensor *t = qi_gguf_find(g, s->name);
        size_t n = bytes_of(s);
        CHECK(t && t->dtype == s->t && t->ndim == s->ndim && !memcmp(t->shape, s->shape, sizeof(int64_t) * s->ndim) &&
                  t->nbytes == n && (n == 0 || !memcmp(t->data, data + off, n)),
              "tensor %s", s->name);
        CHECK(t && ((uintptr_t)t->data - (uintptr_t)qi_gguf_tensor_at(g, 0)->data) % 32 == 0, "%s aligned", s->name);
        off += n;
    }
    qi_gguf_close(g);
    free(data);
}

static void gguf_misuse_is_an_error(void) {
    qi_gguf_writer *w;
    qi_error err;
    char path[512];
    REQUIRE(qi_gguf_writer_new(&w, &err) == QI_OK, "%s", err.msg);
    int64_t sh[2] = {2, 64}, bad_row[2] = {2, 100};
    CHECK(qi_gguf_writer_add_tensor(w, "x", QI_Q8_0, 2, sh, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_add_tensor(w, "x", QI_Q8_0, 2, sh, &err) && strstr(err.msg, "'x' given twice"), "%s", err.msg);
    CHECK(qi_gguf_writer_add_tensor(w, "y", QI_F8_E4M3, 2, sh, &err) && strstr(err.msg, "no GGUF id"), "%s", err.msg);
    CHECK(qi_gguf_writer_add_tensor(w, "z", QI_Q4_K, 2, bad_row, &err) && strstr(err.msg, "'z'"), "%s", err.msg);
    int64_t empty[2] = {0, 64};
    CHECK(qi_gguf_writer_add_tensor(w, "e", QI_F32, 2, empty, &err) && strstr(err.msg, "'e': dim 0 is 0"), "%s",
          err.msg);
    CHECK(qi_gguf_writer_set_u32(w, "k", 1, &err) == QI_OK && qi_gguf_writer_set_u32(w, "k", 2, &err) &&
              strstr(err.msg, "'k' given twice"), "%s", err.msg);
    snprintf(path, sizeof path, "%s/no/such/dir/x.gguf", dir);
    CHECK(qi_gguf_writer_begin(w, path, &err) && strstr(err.msg, "no/such/dir"), "%s", err.msg);
    qi_gguf_writer_free(w);

    snprintf(path, sizeof path, "%s/m.gguf", dir);
    REQUIRE(qi_gguf_writer_new(&w, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_add_tensor(w, "x", QI_Q8_0, 2, sh, &err) == QI_OK, "%s", err.msg); /* 136 bytes */
    CHECK(qi_gguf_writer_begin(w, path, &err) == QI_OK, "%s", err.msg);
    uint8_t buf[200] = {0};
    CHECK(qi_gguf_writer_write(w, buf, 100, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_writer_end(w, &err) && strstr(err.msg, "'x' has 100 of its 136 bytes"), "%s", err.msg);
    CHECK(qi_gguf_writer_write(w, buf, 100, &err) && strstr(err.msg, "past the last tensor"), "%s", err.msg);
    CHECK(qi_gguf_writer_add_tensor(w, "late", QI_F32, 1, sh, &err) && strstr(err.msg, "after the header"), "%s",
          err.msg);
    qi_gguf_writer_free(w);
    unlink(path);
}

/* Claim: skipped bytes read back as zeros between written ones, also when
 * the skip is the file's last data (the file is extended to its full
 * length, so the strict reader accepts it), and a skip past the last tensor
 * is an error like a write. */
static void gguf_skip_leaves_zeros(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/skip.gguf", dir);
    qi_gguf_writer *w = NULL;
    qi_error err = {{0}};
    int64_t a[1] = {1000}, b[1] = {64}; /* 4000 bytes, then 256 (a multiple of 32: no padding after it) */
    REQUIRE(qi_gguf_writer_new(&w, &err) == QI_OK, "%s", err.msg);
    CHECK(!qi_gguf_writer_add_tensor(w, "a", QI_F32, 1, a, &err) && !qi_gguf_writer_add_tensor(w, "b", QI_F32, 1, b, &err),
          "%s", err.msg);
    CHECK(qi_gguf_writer_begin(w, path, &err) == QI_OK, "%s", err.msg);
    const float one = 1.0f, two = 2.0f;
    CHECK(!qi_gguf_writer_write(w, &one, 4, &err) && !qi_gguf_writer_skip(w, 3992, &err) &&
              !qi_gguf_writer_write(w, &two, 4, &err) && !qi_gguf_writer_skip(w, 256, &err),
          "%s", err.msg);
    CHECK(qi_gguf_writer_skip(w, 1, &err) && strstr(err.msg, "past the last tensor"), "%s", err.msg);
    CHECK(qi_gguf_writer_end(w, &err) == QI_OK, "%s", err.msg);
    qi_gguf_writer_free(w);
    qi_gguf_file *f = NULL;
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    const qi_gguf_tensor *ta = qi_gguf_find(f, "a"), *tb = qi_gguf_find(f, "b");
    REQUIRE(ta && tb);
    const float *x = ta->data, *y = tb->data;
    int zeros = 1;
    for (int i = 1; i < 999; i++) zeros &= x[i] == 0.0f;
    for (int i = 0; i < 64; i++) zeros &= y[i] == 0.0f;
    CHECK(x[0] == 1.0f && x[999] == 2.0f && zeros, "a[0] %g, a[999] %g, zeros elsewhere %d", x[0], x[999], zeros);
    qi_gguf_close(f);
    unlink(path);
}

static void safetensors_stream_round_trip_and_misuse(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    qi_st_stream *s;
    qi_error err;
    REQUIRE(qi_st_stream_new(&s, &err) == QI_OK, "%s", err.msg);
    int64_t a[2] = {3, 5}, b[2] = {4, 1};
    float fa[15], fb[4];
    for (int i = 0; i < 15; i++) fa[i] = (float)i * 0.5f;
    for (int i = 0; i < 4; i++) fb[i] = -(float)i;
    CHECK(qi_st_stream_meta(s, "note", "quote \" and \\ backslash", &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_add(s, "w.weight", QI_F32, 2, a, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_add(s, "w.weight_scale", QI_F32, 2, b, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_add(s, "scalar", QI_F8_E4M3, 0, NULL, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_add(s, "w.weight", QI_F32, 2, a, &err) && strstr(err.msg, "given twice"), "%s", err.msg);
    CHECK(qi_st_stream_add(s, "q", QI_Q8_0, 2, a, &err) && strstr(err.msg, "'q'"), "%s", err.msg);
    CHECK(qi_st_stream_begin(s, path, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_write(s, fa, 7, &err) == QI_OK && qi_st_stream_write(s, (uint8_t *)fa + 7, 53, &err) == QI_OK,
          "%s", err.msg);
    CHECK(qi_st_stream_write(s, fb, 16, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_write(s, fb, 2, &err) && strstr(err.msg, "past the last tensor"), "%s", err.msg);
    CHECK(qi_st_stream_write(s, (uint8_t[1]){0x38}, 1, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_end(s, &err) == QI_OK, "%s", err.msg);
    qi_st_stream_free(s);
    qi_st_file *f;
    REQUIRE(qi_st_open(path, &f, &err) == QI_OK, "%s", err.msg);
    const qi_st_tensor *ta = qi_st_file_find(f, "w.weight"), *tb = qi_st_file_find(f, "w.weight_scale"),
                       *tc = qi_st_file_find(f, "scalar");
    CHECK(ta && ta->nbytes == 60 && !memcmp(ta->data, fa, 60), "w.weight");
    CHECK(tb && tb->ndim == 2 && tb->shape[1] == 1 && !memcmp(tb->data, fb, 16), "w.weight_scale");
    CHECK(tc && tc->ndim == 0 && tc->dtype == QI_F8_E4M3 && *(const uint8_t *)tc->data == 0x38, "scalar");
    CHECK(f->metadata_json && strstr(f->metadata_json, "backslash"), "metadata: %s", f->metadata_json);
    qi_st_close(f);

    REQUIRE(qi_st_stream_new(&s, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_add(s, "w", QI_F32, 2, a, &err) == QI_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    CHECK(qi_st_stream_begin(s, path, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_stream_end(s, &err) && strstr(err.msg, "0 of 60"), "%s", err.msg);
    qi_st_stream_free(s);
    unlink(path);
}

int main(void) {
    if (tmp_dir_make(dir, sizeof dir, "gguf_write")) return 1;
    RUN(gguf_round_trip);
    RUN(gguf_misuse_is_an_error);
    RUN(gguf_skip_leaves_zeros);
    RUN(safetensors_stream_round_trip_and_misuse);
    tmp_remove_tree(dir);
    TEST_END();
}

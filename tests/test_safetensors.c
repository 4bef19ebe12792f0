/*
 * test_safetensors.c — the safetensors reader and writer: round trips for
 * every dtype, one crafted bad file per validation rule (each with its own
 * message), the reference model's three component files, sharded sets, and
 * qi_mapped_read (pread of a mapped file's range).
 *
 * Bad files are generated into a temporary folder at run time and removed at
 * the end.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"
#include "testdata.h"

static char tmp_root[64];

/* ---- helpers ------------------------------------------------------------ */

/* A fresh sub-folder of the test's temp dir. */
static const char *subdir(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_root, name);
    mkdir(path, 0755);
    return path;
}

/* A safetensors file by hand: the 8-byte length (header_len, which may lie),
 * the header text, then data_len bytes of data. */
static void craft(const char *path, uint64_t header_len, const char *header, size_t data_len) {
    size_t hl = strlen(header), total = 8 + hl + data_len;
    unsigned char *buf = calloc(1, total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    write_file(path, buf, total);
    free(buf);
}

/* Writes a crafted file, opens it, and checks it is refused with `status`
 * and a message containing `expect`; prints the message for the record. */
static void expect_bad(const char *label, const char *header, size_t data_len, qi_status status,
                       const char *expect) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", subdir("bad"), label);
    craft(path, strlen(header), header, data_len);
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == status, "%s: status %s, expected %s (msg: %s)", label, qi_status_name(st),
          qi_status_name(status), err.msg);
    CHECK(f == NULL, "%s: a file was returned", label);
    CHECK(strstr(err.msg, expect) != NULL, "%s: message lacks '%s': %s", label, expect, err.msg);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", label, err.msg);
    printf("  %-22s %s\n", label, err.msg);
    qi_st_close(f);
}

/* ---- round trip --------------------------------------------------------- */

static void round_trip_every_dtype(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/all_dtypes.safetensors", subdir("rt"));
    /* one tensor per safetensors dtype (element types; block types are GGUF-only), with odd sizes so the sorted layout is exercised */
    qi_st_write_item items[QI_DTYPE_COUNT + 2];
    unsigned char *bufs[QI_DTYPE_COUNT];
    char names[QI_DTYPE_COUNT][32];
    int n = 0;
    for (int t = 0; t <= QI_U8; t++) {
        int64_t rows = 3 + t, cols = 5;
        size_t nbytes = (size_t)(rows * cols) * qi_dtype_size((qi_dtype)t);
        bufs[t] = malloc(nbytes);
        for (size_t i = 0; i < nbytes; i++) bufs[t][i] = (unsigned char)(i * 7 + t * 31 + 1);
        snprintf(names[t], sizeof names[t], "layer.%s.weight", qi_dtype_name((qi_dtype)t));
        items[n++] = (qi_st_write_item){names[t], (qi_dtype)t, 2, {rows, cols}, bufs[t]};
    }
    float scalar = 3.25f;
    items[n++] = (qi_st_write_item){"scalar", QI_F32, 0, {0}, &scalar};
    items[n++] = (qi_st_write_item){"empty", QI_BF16, 2, {0, 4}, NULL};

    qi_error err = {{0}};
    qi_status st = qi_st_write(path, items, n, &err);
    CHECK(st == QI_OK, "write: %s", err.msg);
    qi_st_file *f = NULL;
    st = qi_st_open(path, &f, &err);
    CHECK(st == QI_OK, "open: %s", err.msg);
    if (!f) return;
    CHECK(f->n_tensors == n, "n_tensors %d, expected %d", f->n_tensors, n);
    uint64_t header_len = 0;
    memcpy(&header_len, f->map, 8); /* little-endian host */
    CHECK(header_len % 8 == 0, "header length %llu not padded to 8",
          (unsigned long long)header_len);
    CHECK(f->metadata_json && strcmp(f->metadata_json, "{\"format\":\"pt\"}") == 0, "metadata %s",
          f->metadata_json ? f->metadata_json : "(null)");
    for (int i = 1; i < f->n_tensors; i++)
        CHECK(strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0, "tensors not sorted by name");
    for (int i = 0; i < n; i++) {
        const qi_st_tensor *t = qi_st_file_find(f, items[i].name);
        CHECK(t != NULL, "%s not found", items[i].name);
        if (!t) continue;
        CHECK(t->dtype == items[i].dtype, "%s: dtype %s", t->name, qi_dtype_name(t->dtype));
        CHECK(t->ndim == items[i].ndim, "%s: ndim %d", t->name, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            CHECK(t->shape[d] == items[i].shape[d], "%s: dim %d", t->name, d);
        size_t want = qi_dtype_size(items[i].dtype);
        for (int d = 0; d < items[i].ndim; d++) want *= (size_t)items[i].shape[d];
        CHECK(t->nbytes == want, "%s: nbytes %zu, expected %zu", t->name, t->nbytes, want);
        CHECK(want == 0 || memcmp(t->data, items[i].data, want) == 0, "%s: data differs", t->name);
        /* never a copy: data lies in the mapping, naturally aligned */
        const char *lo = f->map, *p = t->data;
        CHECK(p >= lo && p + t->nbytes <= lo + f->size, "%s: data outside the mapping", t->name);
        CHECK(((uintptr_t)p % qi_dtype_size(t->dtype)) == 0, "%s: data not aligned", t->name);
        CHECK(t->file == f, "%s: file pointer", t->name);
    }
    CHECK(qi_st_file_find(f, "no.such.tensor") == NULL, "found a tensor that does not exist");
    printf("  %d tensors, %zu bytes, header %llu bytes\n", n, f->size,
           (unsigned long long)header_len);
    qi_st_close(f);
    for (int t = 0; t <= QI_U8; t++) free(bufs[t]);
}

static int count_tmp_leftovers(const char *dir) {
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

static void failed_write_leaves_nothing(void) {
    const char *dir = subdir("wfail");
    char path[512];
    snprintf(path, sizeof path, "%s/dup.safetensors", dir);
    float v[2] = {1, 2};
    qi_st_write_item dup[2] = {{"a", QI_F32, 1, {2}, v}, {"a", QI_F32, 1, {2}, v}};
    qi_error err = {{0}};
    qi_status st = qi_st_write(path, dup, 2, &err);
    CHECK(st == QI_ERR_ARG && strstr(err.msg, "given twice"), "duplicate names: %s", err.msg);
    printf("  duplicate names: %s\n", err.msg);
    CHECK(!qi_file_exists(path), "a file was left behind");

    /* the destination is a directory: the data is written, the rename fails */
    snprintf(path, sizeof path, "%s/is_a_dir.safetensors", dir);
    mkdir(path, 0755);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/keep", path);
    write_file(inner, "x", 1);
    qi_st_write_item one = {"a", QI_F32, 1, {2}, v};
    st = qi_st_write(path, &one, 1, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "cannot rename"), "rename onto a dir: %s", err.msg);
    printf("  rename onto a dir: %s\n", err.msg);
    CHECK(count_tmp_leftovers(dir) == 0, "temporary file left behind in %s", dir);

    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", dir);
    st = qi_st_write(path, &one, 1, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "cannot create a temporary file"), "%s", err.msg);
    printf("  missing folder: %s\n", err.msg);
}

/* ---- one crafted bad file per rule --------------------------------------- */

static void bad_file_shorter_than_8_bytes(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/short.safetensors", subdir("bad"));
    write_file(path, "\x10\x00\x00", 3);
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "3 bytes, shorter than the 8-byte"), "%s",
          err.msg);
    printf("  %-22s %s\n", "short", err.msg);
}

/* A file of an empty 8-byte header whose length field says header_len: refused
 * as a format error with a message holding `expect`. */
static void expect_bad_header_length(const char *label, uint64_t header_len, const char *expect) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", subdir("bad"), label);
    craft(path, header_len, "{}      ", 0);
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, expect), "%s", err.msg);
    printf("  %-22s %s\n", label, err.msg);
    qi_st_close(f);
}

static void bad_header_length_past_end(void) {
    expect_bad_header_length("len_past_end", 1000,
                             "header length 1000 runs past the end of the file (16 bytes");
}

static void bad_header_length_over_100mb(void) {
    expect_bad_header_length("len_huge", 200000000ull,
                             "header length 200000000 exceeds the 100 MB limit");
}

static void bad_header_not_utf8(void) {
    expect_bad("not_utf8", "{\"w\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, QI_ERR_FORMAT, "not valid UTF-8 (byte 0xff at header offset 3)");
    /* an overlong encoding of '/' is not UTF-8 either */
    expect_bad("overlong_utf8",
               "{\"\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               QI_ERR_FORMAT, "not valid UTF-8 (byte 0xc0 at header offset 2)");
}

static void bad_header_not_json(void) {
    expect_bad("not_json", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4,
               QI_ERR_FORMAT, "header: line 1: JSON syntax error near");
    expect_bad("json_trailing", "{}   x  ", 0, QI_ERR_FORMAT, "text after the JSON value");
}

static void bad_header_not_object(void) {
    expect_bad("not_object", "[1, 2, 3]", 0, QI_ERR_FORMAT,
               "header is an array, not a JSON object");
}

static void bad_metadata_not_strings(void) {
    expect_bad("metadata_number", "{\"__metadata__\":{\"format\":\"pt\",\"step\":3}}", 0,
               QI_ERR_FORMAT,
               "\"__metadata__\" must be an object of strings; key 'step' is a number");
}

static void bad_entry_missing_fields(void) {
    expect_bad("no_dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, QI_ERR_FORMAT,
               "tensor 'w': missing \"dtype\"");
    expect_bad("no_shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, QI_ERR_FORMAT,
               "tensor 'w': missing \"shape\"");
    expect_bad("no_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, QI_ERR_FORMAT,
               "tensor 'w': missing \"data_offsets\"");
}

static void bad_entry_wrong_json_types(void) {
    expect_bad(
        "entry_not_object", "{\"w\":[1,2]}", 0, QI_ERR_FORMAT,
        "tensor 'w': entry must be an object with dtype, shape and data_offsets, found an array");
    expect_bad("dtype_number", "{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               QI_ERR_FORMAT, "tensor 'w': \"dtype\" must be a string, found a number");
    expect_bad("shape_string", "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}",
               4, QI_ERR_FORMAT,
               "tensor 'w': \"shape\" must be an array of integers, found a string");
    expect_bad("shape_fraction",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
               QI_ERR_FORMAT, "tensor 'w': shape[0] = 1.5 is not a whole number");
    expect_bad("offsets_one", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
               QI_ERR_FORMAT,
               "tensor 'w': \"data_offsets\" must be [begin, end] of two non-negative integers");
}

static void bad_unknown_dtype(void) {
    expect_bad("dtype_f64", "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               QI_ERR_UNSUPPORTED,
               "tensor 'w': unsupported dtype \"F64\" (supported: F32, F16, BF16, F8_E4M3, "
               "F8_E5M2, I32, I64, U8)");
}

static void bad_negative_dim(void) {
    expect_bad("negative_dim",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", 8,
               QI_ERR_FORMAT, "tensor 'w': shape[1] = -1 is negative");
}

static void bad_too_many_dims(void) {
    expect_bad("nine_dims",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, QI_ERR_UNSUPPORTED, "tensor 'w': shape has 9 dims, at most 8 are supported");
}

static void bad_offsets_end_before_begin(void) {
    expect_bad("end_before_begin",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, QI_ERR_FORMAT,
               "tensor 'w': data_offsets [8, 4] end before begin");
}

static void bad_offsets_beyond_data(void) {
    expect_bad(
        "end_beyond_data", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
        QI_ERR_FORMAT, "tensor 'w': data_offsets end 16 is beyond the data section (12 bytes");
}

static void bad_byte_count_mismatch(void) {
    expect_bad("size_mismatch",
               "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3,4],\"data_offsets\":[0,20]}}", 20,
               QI_ERR_FORMAT,
               "tensor 'w': BF16 x [3, 4] is 24 bytes but data_offsets [0, 20] span 20 bytes");
}

static void bad_overlapping_tensors(void) {
    expect_bad("overlap",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, QI_ERR_FORMAT, "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
}

static void bad_gap_and_trailing_bytes(void) {
    expect_bad("gap",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
               12, QI_ERR_FORMAT, "data bytes [4, 8) belong to no tensor (gap before 'b')");
    expect_bad("trailing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 10,
               QI_ERR_FORMAT, "6 trailing bytes after the last tensor");
}

static void bad_duplicate_names(void) {
    expect_bad("duplicate",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, QI_ERR_FORMAT, "tensor 'a' appears twice in the header");
    /* the same entry twice: a duplicate name, not an overlap (issue 15) */
    expect_bad("duplicate, same data",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
               4, QI_ERR_FORMAT, "tensor 'a' appears twice in the header (a duplicate name)");
}

static void missing_file_is_an_io_error(void) {
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    char path[512];
    snprintf(path, sizeof path, "%s/nothing_here.safetensors", tmp_root);
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "cannot open: No such file"), "%s", err.msg);
    printf("  %-22s %s\n", "missing", err.msg);
}

static void accepts_f8_e4m3fn_spelling_and_empty_file(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/e4m3fn.safetensors", subdir("good"));
    const char *header =
        "{\"w\":{\"dtype\":\"F8_E4M3FN\",\"shape\":[2,2],\"data_offsets\":[0,4]}}   ";
    craft(path, strlen(header), header, 4);
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    const qi_st_tensor *t = f ? qi_st_file_find(f, "w") : NULL;
    CHECK(t && t->dtype == QI_F8_E4M3 && t->nbytes == 4, "F8_E4M3FN not read as F8_E4M3");
    qi_st_close(f);

    /* a file with no tensors at all is valid */
    snprintf(path, sizeof path, "%s/empty.safetensors", subdir("good"));
    st = qi_st_write(path, NULL, 0, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    st = qi_st_open(path, &f, &err);
    CHECK(st == QI_OK && f && f->n_tensors == 0, "%s", err.msg);
    qi_st_close(f);
}

/* ---- the reference model ------------------------------------------------ */

static void reference_model_components_open(void) {
    static const struct {
        const char *dir, *stem, *tensor;
        int ndim;
        int64_t shape[5];
    } parts[] = {
        {"transformer", "diffusion_pytorch_model", "img_in.weight", 2, {128, 64}},
        {"text_encoder", "model", "model.embed_tokens.weight", 2, {152064, 64}},
        {"vae", "diffusion_pytorch_model", "decoder.conv_in.weight", 5, {64, 16, 3, 3, 3}},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(parts); i++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", QI_REF_MODEL, parts[i].dir);
        qi_st_set *s = NULL;
        qi_error err = {{0}};
        double t0 = qi_now_s();
        qi_status st = qi_st_set_open_dir(dir, parts[i].stem, &s, &err);
        double dt = qi_now_s() - t0;
        CHECK(st == QI_OK, "%s: %s", parts[i].dir, err.msg);
        if (!s) continue;
        const qi_st_tensor *t = NULL;
        st = qi_st_get(s, parts[i].tensor, parts[i].ndim, parts[i].shape, &t, &err);
        CHECK(st == QI_OK && t && t->dtype == QI_BF16, "%s: %s", parts[i].tensor, err.msg);
        CHECK(s->files[0]->metadata_json && strstr(s->files[0]->metadata_json, "\"format\":\"pt\""),
              "%s: metadata", parts[i].dir);
        printf("  %-12s %d tensors, %zu bytes, opened in %.2f ms; %s found\n", parts[i].dir,
               s->n_tensors, s->files[0]->size, dt * 1e3, parts[i].tensor);
        qi_st_set_close(s);
    }
}

static void get_reports_shape_dtype_and_missing(void) {
    const char *dir = QI_REF_MODEL "/transformer";
    qi_st_set *s = NULL;
    qi_error err = {{0}};
    if (qi_st_set_open_dir(dir, "diffusion_pytorch_model", &s, &err) != QI_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const qi_st_tensor *t = NULL;
    int64_t wrong[2] = {128, 32};
    qi_status st = qi_st_get(s, "img_in.weight", 2, wrong, &t, &err);
    CHECK(
        st == QI_ERR_FORMAT && t == NULL &&
            strstr(err.msg, "tensor 'img_in.weight': expected shape [128, 32], found [128, 64]") &&
            strstr(err.msg, "diffusion_pytorch_model.safetensors"),
        "%s", err.msg);
    printf("  wrong shape: %s\n", err.msg);
    int64_t wrong_rank[1] = {128};
    st = qi_st_get(s, "img_in.weight", 1, wrong_rank, &t, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "expected shape [128], found [128, 64]"), "%s",
          err.msg);
    st = qi_st_get(s, "img_in.weigth", 2, wrong, &t, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "tensor 'img_in.weigth' not found"), "%s",
          err.msg);
    printf("  missing: %s\n", err.msg);
    int64_t any_rows[2] = {-1, 64};
    st = qi_st_get(s, "img_in.weight", 2, any_rows, &t, &err);
    CHECK(st == QI_OK && t && t->shape[0] == 128, "wildcard dim: %s", err.msg);
    qi_st_set_close(s);

    /* an integer tensor is refused by qi_st_get, accepted by qi_st_get_any */
    char path[512];
    snprintf(path, sizeof path, "%s/ints.safetensors", subdir("get"));
    int32_t ids[3] = {1, 2, 3};
    qi_st_write_item it = {"ids", QI_I32, 1, {3}, ids};
    CHECK(qi_st_write(path, &it, 1, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_st_set_open_file(path, &s, &err) == QI_OK, "%s", err.msg);
    int64_t three[1] = {3};
    st = qi_st_get(s, "ids", 1, three, &t, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "has dtype I32; expected a float type"), "%s",
          err.msg);
    printf("  int dtype: %s\n", err.msg);
    st = qi_st_get_any(s, "ids", 1, three, &t, &err);
    CHECK(st == QI_OK && t && memcmp(t->data, ids, sizeof ids) == 0, "%s", err.msg);
    qi_st_set_close(s);
}

/* ---- sharded sets ------------------------------------------------------- */

static void write_shard(const char *dir, const char *file, const char *const *names, int n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    qi_st_write_item items[8];
    static float data[4] = {1, 2, 3, 4};
    for (int i = 0; i < n; i++) items[i] = (qi_st_write_item){names[i], QI_F32, 2, {2, 2}, data};
    qi_error err = {{0}};
    if (qi_st_write(path, items, n, &err) != QI_OK) fprintf(stderr, "write_shard: %s\n", err.msg);
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static void sharded_set_resolves_names_to_shards(void) {
    const char *dir = subdir("sharded_ok");
    const char *a[] = {"layers.0.w", "layers.1.w"}, *b[] = {"layers.2.w", "norm.w"};
    write_shard(dir, SHARD1, a, 2);
    write_shard(dir, SHARD2, b, 2);
    write_text_in(dir, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 64},\n \"weight_map\": {\n"
               "  \"layers.0.w\": \"" SHARD1 "\",\n  \"layers.1.w\": \"" SHARD1 "\",\n"
               "  \"layers.2.w\": \"" SHARD2 "\",\n  \"norm.w\": \"" SHARD2 "\"}}\n");
    /* a stray single file must not be preferred over the index */
    write_shard(dir, "model.safetensors", a, 1);
    qi_st_set *s = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (!s) return;
    CHECK(s->n_files == 2 && s->n_tensors == 4, "%d files, %d tensors", s->n_files, s->n_tensors);
    const char *want[][2] = {
        {"layers.0.w", SHARD1}, {"layers.1.w", SHARD1}, {"layers.2.w", SHARD2}, {"norm.w", SHARD2}};
    for (size_t i = 0; i < QI_ARRAY_LEN(want); i++) {
        const qi_st_tensor *t = qi_st_find(s, want[i][0]);
        CHECK(t && strstr(t->file->path, want[i][1]), "%s: wrong or no shard (%s)", want[i][0],
              t ? t->file->path : "not found");
    }
    CHECK(qi_st_find(s, "layers.3.w") == NULL, "found a tensor that does not exist");
    qi_st_set_close(s);
}

/* Builds a two-shard folder with the given index text and checks the error. */
static void expect_bad_index(const char *label, const char *index_json, const char *const *a,
                             int na, const char *const *b, int nb, qi_status status,
                             const char *expect) {
    const char *dir = subdir(label);
    write_shard(dir, SHARD1, a, na);
    if (nb) write_shard(dir, SHARD2, b, nb);
    write_text_in(dir, "model.safetensors.index.json", index_json);
    qi_st_set *s = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == status && s == NULL, "%s: status %s (msg: %s)", label, qi_status_name(st), err.msg);
    CHECK(strstr(err.msg, expect) != NULL, "%s: message lacks '%s': %s", label, expect, err.msg);
    printf("  %-22s %s\n", label, err.msg);
    qi_st_set_close(s);
}

static void sharded_set_index_errors(void) {
    const char *a[] = {"x"}, *b[] = {"y"}, *ab[] = {"x", "y"};
    expect_bad_index("idx_missing_shard",
                     "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"y\": \"" SHARD2 "\"}}", a, 1, b, 0,
                     QI_ERR_IO, SHARD2 ": shard file missing (listed in ");
    expect_bad_index("idx_tensor_not_in_shard",
                     "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\"}}", a, 1, b, 1,
                     QI_ERR_FORMAT, "tensor 'z' is listed for shard ");
    expect_bad_index("idx_duplicate_across",
                     "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"y\": \"" SHARD2 "\"}}", ab, 2, b,
                     1, QI_ERR_FORMAT, "tensor 'y' is in two shards");
    expect_bad_index("idx_unlisted_tensor", "{\"weight_map\": {\"x\": \"" SHARD1 "\"}}", ab, 2, b,
                     0, QI_ERR_FORMAT, "tensor 'y' in shard ");
    expect_bad_index("idx_escaping_name", "{\"weight_map\": {\"x\": \"../" SHARD1 "\"}}", a, 1, b,
                     0, QI_ERR_FORMAT,
                     "weight_map['x'] must be a shard file name in the same folder");
    expect_bad_index("idx_no_weight_map", "{\"metadata\": {}}", a, 1, b, 0, QI_ERR_FORMAT,
                     "non-empty \"weight_map\"");
    expect_bad_index("idx_bad_json", "{\"weight_map\": {\n  \"x\": \"" SHARD1 "\"\n  \"y\": 1}}", a,
                     1, b, 0, QI_ERR_FORMAT,
                     "model.safetensors.index.json: line 3: JSON syntax error near");
}

static void set_open_dir_fallbacks(void) {
    const char *one[] = {"w"};
    qi_st_set *s = NULL;
    qi_error err = {{0}};

    const char *dir = subdir("only_other_name"); /* e.g. a renamed single file */
    write_shard(dir, "weights.safetensors", one, 1);
    qi_status st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == QI_OK && s && qi_st_find(s, "w"), "single other file: %s", err.msg);
    qi_st_set_close(s);

    dir = subdir("two_others");
    write_shard(dir, "a.safetensors", one, 1);
    write_shard(dir, "b.safetensors", one, 1);
    st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "cannot tell which holds the weights"), "%s",
          err.msg);
    printf("  two_others: %s\n", err.msg);

    dir = subdir("pickle_only");
    write_text_in(dir, "pytorch_model.bin", "not really");
    st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == QI_ERR_UNSUPPORTED && strstr(err.msg, "pickle"), "%s", err.msg);
    printf("  pickle_only: %s\n", err.msg);

    dir = subdir("no_weights");
    st = qi_st_set_open_dir(dir, "model", &s, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "looked for model.safetensors.index.json, "
                                             "model.safetensors and any other *.safetensors"),
          "%s", err.msg);
    printf("  no_weights: %s\n", err.msg);

    char missing[600];
    snprintf(missing, sizeof missing, "%s/not_there", tmp_root);
    st = qi_st_set_open_dir(missing, "model", &s, &err);
    CHECK(st == QI_ERR_IO && strstr(err.msg, "no such directory"), "%s", err.msg);
    printf("  missing dir: %s\n", err.msg);
}

/* ---- pread through a mapping ------------------------------------------- */

/* qi_mapped_read gives the bytes of a range of a qi_map_file mapping, the
 * same as a memcpy from it (the CUDA upload reads weights so); it declines
 * memory outside any mapping, ranges running past one, and a mapping once
 * unmapped, so the caller falls back to its memcpy. */
static void mapped_read_matches_the_mapping(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/mapped.bin", subdir("mapped"));
    size_t n = 3 * 4096 + 123;
    unsigned char *data = malloc(n), *got = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (unsigned char)(i * 131 + 7);
    write_file(path, data, n);
    void *map = NULL;
    size_t size = 0;
    qi_error err = {{0}};
    REQUIRE(qi_map_file(path, &map, &size, &err) == QI_OK && size == n, "%s", err.msg);
    const unsigned char *m = map;
    size_t ranges[][2] = {{0, n}, {1, 4096}, {4095, 2}, {n - 1, 1}, {5000, 0}};
    for (int r = 0; r < 5; r++) {
        memset(got, 0xAB, n);
        CHECK(qi_mapped_read(got, m + ranges[r][0], ranges[r][1]) == 1, "range %d not read", r);
        CHECK(memcmp(got, data + ranges[r][0], ranges[r][1]) == 0, "range %d: other bytes than the file's", r);
    }
    CHECK(qi_mapped_read(got, m + n - 10, 11) == 0, "a range past the mapping's end was read");
    CHECK(qi_mapped_read(got, data, 16) == 0, "memory outside any mapping was read");
    qi_unmap_file(map, size);
    CHECK(qi_mapped_read(got, m, 16) == 0, "an unmapped range was read");
    free(data);
    free(got);
}

int main(void) {
    if (tmp_dir_make(tmp_root, sizeof tmp_root, "st") != 0) return 2;
    RUN(round_trip_every_dtype);
    RUN(failed_write_leaves_nothing);
    RUN(bad_file_shorter_than_8_bytes);
    RUN(bad_header_length_past_end);
    RUN(bad_header_length_over_100mb);
    RUN(bad_header_not_utf8);
    RUN(bad_header_not_json);
    RUN(bad_header_not_object);
    RUN(bad_metadata_not_strings);
    RUN(bad_entry_missing_fields);
    RUN(bad_entry_wrong_json_types);
    RUN(bad_unknown_dtype);
    RUN(bad_negative_dim);
    RUN(bad_too_many_dims);
    RUN(bad_offsets_end_before_begin);
    RUN(bad_offsets_beyond_data);
    RUN(bad_byte_count_mismatch);
    RUN(bad_overlapping_tensors);
    RUN(bad_gap_and_trailing_bytes);
    RUN(bad_duplicate_names);
    RUN(missing_file_is_an_io_error);
    RUN(accepts_f8_e4m3fn_spelling_and_empty_file);
    RUN(reference_model_components_open);
    RUN(get_reports_shape_dtype_and_missing);
    RUN(sharded_set_resolves_names_to_shards);
    RUN(sharded_set_index_errors);
    RUN(set_open_dir_fallbacks);
    RUN(mapped_read_matches_the_mapping);
    tmp_remove_tree(tmp_root);
    TEST_END();
}

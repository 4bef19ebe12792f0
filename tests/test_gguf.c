/*
 * test_gguf.c — the GGUF reader: a small file written here (every metadata
 * value type, nested arrays, tensors of element and block types) reads back
 * exactly; one corruption per validation rule is refused with its status and
 * its one-line message (printed, for the record); and, where the project's
 * shared reference data is present, the two GGUF fixtures open and every
 * tensor dequantises to the float32 whose sha256 the reference recorded
 * (reference/formats/dequant_sha256.json).
 *
 * The small files are written into a scratch folder and removed at the end.
 * The shared fixtures (4 and 11 MB) are not copied into tests/data: they are
 * read from QI_SHARED_DIR or from ../shared beside the clone, and that claim
 * is skipped (said so on stdout) when neither has them.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>

#include "base/types.h"
#include "io/gguf.h"
#include "io/model_dir.h"
#include "test.h"
#include "testdata.h"

static char tmp_root[64];

/* ---- sha256 (FIPS 180-4), test-only --------------------------------------------- */

typedef struct sha256 {
    uint32_t h[8], k[64];
    unsigned char block[64];
    size_t used;
    uint64_t total;
} sha256;

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* The constants are the first 32 fraction bits of the square roots (h) and
 * cube roots (k) of the first primes; computed, not pasted (a wrong bit would
 * fail every hash below, including the FIPS "abc" example). */
static void sha256_init(sha256 *s) {
    int n = 0;
    for (int p = 2; n < 64; p++) {
        int prime = 1;
        for (int d = 2; d * d <= p; d++) prime &= p % d != 0;
        if (!prime) continue;
        if (n < 8) s->h[n] = (uint32_t)fmod(sqrt(p) * 4294967296.0, 4294967296.0);
        s->k[n++] = (uint32_t)fmod(cbrt(p) * 4294967296.0, 4294967296.0);
    }
    s->used = 0;
    s->total = 0;
}

static void sha256_block(sha256 *s, const unsigned char *b) {
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, s->h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
                      ((v[4] & v[5]) ^ (~v[4] & v[6])) + s->k[i] + w[i];
        uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
                      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof *v);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += v[i];
}

static void sha256_update(sha256 *s, const void *data, size_t n) {
    const unsigned char *p = data;
    s->total += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take, p += take, n -= take;
        if (s->used == 64) sha256_block(s, s->block), s->used = 0;
    }
}

/* The digest as 64 lowercase hex digits. */
static void sha256_hex(sha256 *s, char out[65]) {
    uint64_t bits = s->total * 8;
    unsigned char pad[72] = {0x80}, len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, (s->used < 56 ? 56 : 120) - s->used);
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

static void test_sha256_known_answers(void) {
    sha256 s;
    char hex[65];
    sha256_init(&s);
    sha256_update(&s, "abc", 3);
    sha256_hex(&s, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
          "sha256(abc) = %s", hex);
    sha256_init(&s);
    sha256_update(&s, "", 0);
    sha256_hex(&s, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0,
          "sha256('') = %s", hex);
}

/* ---- a small GGUF writer ---------------------------------------------------------- */

typedef struct wbuf {
    unsigned char *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_le(wbuf *b, uint64_t v, int bytes) {
    unsigned char x[8];
    for (int i = 0; i < bytes; i++) x[i] = (unsigned char)(v >> (8 * i));
    put(b, x, (size_t)bytes);
}
static void put_u32(wbuf *b, uint32_t v) { put_le(b, v, 4); }
static void put_u64(wbuf *b, uint64_t v) { put_le(b, v, 8); }
static void put_str(wbuf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_key(wbuf *b, const char *key, uint32_t type) {
    put_str(b, key);
    put_u32(b, type);
}

/* One tensor of a written file. */
typedef struct wtensor {
    const char *name;
    uint32_t ggml;     /* ggml type id */
    uint32_t ndim;
    uint64_t ne[6];    /* GGUF order, innermost first */
    uint64_t offset;   /* UINT64_MAX: the next aligned place */
    size_t nbytes;     /* 0: computed from type and ne */
} wtensor;

/* A whole file, with knobs that make it lie. */
typedef struct wfile {
    uint32_t version;           /* 0: 3 */
    int n_tensors;
    wtensor t[8];
    int64_t alignment;          /* < 0: no general.alignment key (32) */
    uint64_t tensor_count_lie;  /* nonzero: written instead of the count */
    uint64_t kv_count_lie;
    uint64_t name_len_lie;      /* nonzero: general.name's length field */
    uint32_t extra_value_type;  /* nonzero: one more key with this value type */
    int duplicate_key;
} wfile;

#define N_KV 21 /* the keys write_kvs writes */

static void write_kvs(wbuf *b, const wfile *w) {
    put_key(b, "general.architecture", 8), put_str(b, "qwen_image");
    put_key(b, "general.name", 8);
    put_u64(b, w->name_len_lie ? w->name_len_lie : 4), put(b, "tiny", 4);
    put_key(b, "t.u8", 0), put_le(b, 200, 1);
    put_key(b, "t.i8", 1), put_le(b, (uint8_t)-5, 1);
    put_key(b, "t.u16", 2), put_le(b, 65535, 2);
    put_key(b, "t.i16", 3), put_le(b, (uint16_t)-300, 2);
    put_key(b, "t.u32", 4), put_u32(b, 4000000000u);
    put_key(b, "t.i32", 5), put_u32(b, (uint32_t)-70000);
    float half = 0.5f;
    put_key(b, "t.f32", 6), put(b, &half, 4);
    put_key(b, "t.bool", 7), put_le(b, 1, 1);
    put_key(b, "t.u64", 10), put_u64(b, 1ull << 40);
    put_key(b, "t.u64_huge", 10), put_u64(b, UINT64_MAX);
    put_key(b, "t.i64", 11), put_u64(b, (uint64_t)-(1ll << 40));
    double quarter = 0.25;
    put_key(b, "t.f64", 12), put(b, &quarter, 8);
    put_key(b, "t.strings", 9), put_u32(b, 8), put_u64(b, 4);
    put_str(b, "a"), put_str(b, "bc"), put_str(b, ""), put_str(b, "d\xc3\xa9j\xc3\xa0");
    put_key(b, "t.sections", 9), put_u32(b, 5), put_u64(b, 4);
    static const int sections[4] = {16, 24, 24, 0};
    for (int i = 0; i < 4; i++) put_u32(b, (uint32_t)sections[i]);
    put_key(b, "t.nested", 9), put_u32(b, 9), put_u64(b, 2); /* [[7, 8], ["x", "yz", "w"]] */
    put_u32(b, 5), put_u64(b, 2), put_u32(b, 7), put_u32(b, 8);
    put_u32(b, 8), put_u64(b, 3), put_str(b, "x"), put_str(b, "yz"), put_str(b, "w");
    put_key(b, "t.empty", 9), put_u32(b, 6), put_u64(b, 0);
    put_key(b, "general.quantization_version", 4), put_u32(b, 2);
    put_key(b, "general.file_type", 4), put_u32(b, 15);
    put_key(b, w->duplicate_key ? "t.u8" : "general.alignment", 4);
    put_u32(b, (uint32_t)(w->alignment < 0 ? 32 : w->alignment));
    if (w->extra_value_type) put_key(b, "t.strange", w->extra_value_type), put_u32(b, 0);
}

static size_t wtensor_bytes(const wtensor *t) {
    if (t->nbytes) return t->nbytes;
    qi_dtype dt;
    if (qi_dtype_from_ggml((int)t->ggml, &dt) != 0) return 64;
    for (uint32_t k = 0; k < t->ndim; k++)
        if (t->ne[k] > (1u << 20)) return 64; /* a lying dim: some bytes, not its size */
    int64_t rows = 1;
    for (uint32_t k = 1; k < t->ndim; k++) rows *= (int64_t)t->ne[k];
    int64_t row = qi_row_bytes(dt, t->ndim ? (int64_t)t->ne[0] : 1);
    return row < 0 ? 64 : (size_t)(rows * row);
}

/* The tensor data: byte j of tensor i is (i * 31 + j) & 255. */
static unsigned char data_byte(int i, size_t j) { return (unsigned char)(i * 31 + j); }

/* Writes the file into a buffer; *len its size. */
static unsigned char *build(const wfile *w, size_t *len) {
    wbuf b = {0};
    uint64_t align = w->alignment > 0 ? (uint64_t)w->alignment : 32;
    put(&b, "GGUF", 4);
    put_u32(&b, w->version ? w->version : 3);
    put_u64(&b, w->tensor_count_lie ? w->tensor_count_lie : (uint64_t)w->n_tensors);
    put_u64(&b, w->kv_count_lie ? w->kv_count_lie : N_KV + (w->extra_value_type ? 1 : 0));
    write_kvs(&b, w);
    uint64_t offsets[8], next = 0;
    for (int i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->t[i];
        offsets[i] = t->offset != UINT64_MAX ? t->offset : (next + align - 1) / align * align;
        next = offsets[i] + wtensor_bytes(t);
        put_str(&b, t->name);
        put_u32(&b, t->ndim);
        for (uint32_t k = 0; k < t->ndim; k++) put_u64(&b, t->ne[k]);
        put_u32(&b, t->ggml);
        put_u64(&b, offsets[i]);
    }
    while (b.n % align) put_le(&b, 0, 1);
    size_t data_start = b.n;
    for (int i = 0; i < w->n_tensors; i++) {
        size_t end = data_start + offsets[i] + wtensor_bytes(&w->t[i]);
        if (end > (1u << 24)) continue; /* a lying offset: leave the data out */
        while (b.n < end) put_le(&b, 0, 1);
        for (size_t j = 0; j < wtensor_bytes(&w->t[i]); j++)
            b.p[data_start + offsets[i] + j] = data_byte(i, j);
    }
    *len = b.n;
    return b.p;
}

/* The valid file every corruption starts from. */
static wfile valid_file(void) {
    wfile w = {.alignment = 32, .n_tensors = 5};
    w.t[0] = (wtensor){"a.f32", 0, 2, {3, 2}, UINT64_MAX, 0};
    w.t[1] = (wtensor){"b.q4_0", 2, 2, {64, 2}, UINT64_MAX, 0};
    w.t[2] = (wtensor){"c.q8_0", 8, 1, {32}, UINT64_MAX, 0};
    w.t[3] = (wtensor){"d.q4_k", 12, 3, {256, 1, 2}, UINT64_MAX, 0};
    w.t[4] = (wtensor){"e.bf16", 30, 1, {5}, UINT64_MAX, 0};
    return w;
}

static void write_gguf(const char *path, const wfile *w) {
    size_t n;
    unsigned char *p = build(w, &n);
    write_file(path, p, n);
    free(p);
}

/* ---- the valid file --------------------------------------------------------------- */

static void test_small_file_reads_back(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/valid.gguf", tmp_root);
    wfile w = valid_file();
    write_gguf(path, &w);
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    CHECK(strcmp(qi_gguf_path(f), path) == 0 && qi_gguf_version(f) == 3 && qi_gguf_alignment(f) == 32);
    CHECK(qi_gguf_tensor_count(f) == 5 && qi_gguf_key_count(f) == N_KV);
    for (int i = 1; i < qi_gguf_key_count(f); i++)
        CHECK(strcmp(qi_gguf_key_at(f, i - 1), qi_gguf_key_at(f, i)) < 0, "keys sorted");

    /* tensors: sorted, shapes reversed, sizes from the traits, data where written */
    static const int64_t shapes[5][3] = {{2, 3}, {2, 64}, {32}, {2, 1, 256}, {5}};
    static const size_t bytes[5] = {24, 72, 34, 288, 10};
    static const qi_dtype types[5] = {QI_F32, QI_Q4_0, QI_Q8_0, QI_Q4_K, QI_BF16};
    for (int i = 0; i < 5; i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(f, i);
        REQUIRE(t && strcmp(t->name, w.t[i].name) == 0, "tensor %d", i);
        CHECK(qi_gguf_find(f, w.t[i].name) == t);
        CHECK(t->dtype == types[i] && t->ndim == (int)w.t[i].ndim, "%s: type/ndim", t->name);
        for (int d = 0; d < t->ndim; d++) CHECK(t->shape[d] == shapes[i][d], "%s dim %d", t->name, d);
        CHECK(t->nbytes == bytes[i], "%s: %zu bytes", t->name, t->nbytes);
        const unsigned char *p = t->data;
        int same = 1;
        for (size_t j = 0; j < t->nbytes; j++) same &= p[j] == data_byte(i, j);
        CHECK(same, "%s: data", t->name);
        CHECK((uintptr_t)p % 32 == 0, "%s: data aligned", t->name);
    }
    CHECK(qi_gguf_find(f, "nope") == NULL && qi_gguf_tensor_at(f, 5) == NULL);

    /* scalars */
    const char *s;
    size_t len;
    int64_t v;
    double x;
    int b;
    CHECK(qi_gguf_get_string(f, "general.architecture", &s, &len, &err) == QI_OK && len == 10 &&
          memcmp(s, "qwen_image", 10) == 0);
    CHECK(qi_gguf_get_int(f, "t.u8", &v, &err) == QI_OK && v == 200);
    CHECK(qi_gguf_get_int(f, "t.i8", &v, &err) == QI_OK && v == -5);
    CHECK(qi_gguf_get_int(f, "t.u16", &v, &err) == QI_OK && v == 65535);
    CHECK(qi_gguf_get_int(f, "t.i16", &v, &err) == QI_OK && v == -300);
    CHECK(qi_gguf_get_int(f, "t.u32", &v, &err) == QI_OK && v == 4000000000ll);
    CHECK(qi_gguf_get_int(f, "t.i32", &v, &err) == QI_OK && v == -70000);
    CHECK(qi_gguf_get_int(f, "t.u64", &v, &err) == QI_OK && v == 1ll << 40);
    CHECK(qi_gguf_get_int(f, "t.i64", &v, &err) == QI_OK && v == -(1ll << 40));
    CHECK(qi_gguf_get_float(f, "t.f32", &x, &err) == QI_OK && x == 0.5);
    CHECK(qi_gguf_get_float(f, "t.f64", &x, &err) == QI_OK && x == 0.25);
    CHECK(qi_gguf_get_float(f, "t.i32", &x, &err) == QI_OK && x == -70000.0);
    CHECK(qi_gguf_get_bool(f, "t.bool", &b, &err) == QI_OK && b == 1);
    CHECK(qi_gguf_key_type(f, "t.f64") == QI_GGUF_F64 && qi_gguf_key_type(f, "none") == -1);
    CHECK(qi_gguf_has_key(f, "general.file_type") && !qi_gguf_has_key(f, "general"));

    /* wrong types and missing keys are errors that say so */
    CHECK(qi_gguf_get_int(f, "t.u64_huge", &v, &err) == QI_ERR_FORMAT && strstr(err.msg, "INT64_MAX"),
          "%s", err.msg);
    CHECK(qi_gguf_get_int(f, "t.f32", &v, &err) == QI_ERR_FORMAT && strstr(err.msg, "t.f32") &&
          strstr(err.msg, "F32") && strstr(err.msg, "integer"), "%s", err.msg);
    printf("  wrong type:  %s\n", err.msg);
    CHECK(qi_gguf_get_string(f, "t.u8", &s, &len, &err) == QI_ERR_FORMAT);
    CHECK(qi_gguf_get_bool(f, "t.u8", &b, &err) == QI_ERR_FORMAT);
    CHECK(qi_gguf_get_string(f, "no.such.key", &s, &len, &err) == QI_ERR_FORMAT &&
          strstr(err.msg, path) && strstr(err.msg, "no.such.key"), "%s", err.msg);
    printf("  missing key: %s\n", err.msg);
    qi_gguf_close(f);
}

static void test_arrays_read_back(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/arrays.gguf", tmp_root);
    wfile w = valid_file();
    write_gguf(path, &w);
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    qi_gguf_array a, inner;
    const char *s;
    size_t len;
    int64_t v;
    double x;
    REQUIRE(qi_gguf_get_array(f, "t.strings", &a, &err) == QI_OK, "%s", err.msg);
    CHECK(a.type == QI_GGUF_STRING && a.count == 4);
    static const char *const want[4] = {"a", "bc", "", "d\xc3\xa9j\xc3\xa0"};
    for (uint64_t i = 0; i < 4; i++)
        CHECK(qi_gguf_array_string(&a, i, &s, &len, &err) == QI_OK && len == strlen(want[i]) &&
              memcmp(s, want[i], len) == 0, "string %d", (int)i);
    CHECK(qi_gguf_array_string(&a, 4, &s, &len, &err) == QI_ERR_ARG && strstr(err.msg, "t.strings"),
          "%s", err.msg);
    CHECK(qi_gguf_array_int(&a, 0, &v, &err) == QI_ERR_FORMAT, "strings are not integers");

    REQUIRE(qi_gguf_get_array(f, "t.sections", &a, &err) == QI_OK);
    CHECK(a.type == QI_GGUF_I32 && a.count == 4);
    static const int sections[4] = {16, 24, 24, 0};
    for (uint64_t i = 0; i < 4; i++)
        CHECK(qi_gguf_array_int(&a, i, &v, &err) == QI_OK && v == sections[i], "element %d", (int)i);
    CHECK(qi_gguf_array_float(&a, 1, &x, &err) == QI_OK && x == 24.0);

    REQUIRE(qi_gguf_get_array(f, "t.nested", &a, &err) == QI_OK);
    CHECK(a.type == QI_GGUF_ARRAY && a.count == 2);
    CHECK(qi_gguf_array_array(&a, 0, &inner, &err) == QI_OK && inner.type == QI_GGUF_I32 &&
          inner.count == 2 && qi_gguf_array_int(&inner, 1, &v, &err) == QI_OK && v == 8);
    CHECK(qi_gguf_array_array(&a, 1, &inner, &err) == QI_OK && inner.type == QI_GGUF_STRING &&
          inner.count == 3 && qi_gguf_array_string(&inner, 1, &s, &len, &err) == QI_OK &&
          len == 2 && memcmp(s, "yz", 2) == 0);
    CHECK(qi_gguf_get_array(f, "t.empty", &a, &err) == QI_OK && a.count == 0 && a.type == QI_GGUF_F32);
    CHECK(qi_gguf_get_array(f, "t.u8", &a, &err) == QI_ERR_FORMAT);
    qi_gguf_close(f);
}

/* ---- malformed files ----------------------------------------------------------------- */

/* Opens bytes written to label.gguf and checks they are refused with status
 * and a message naming the file and containing expect; prints the message. */
static void expect_refused_bytes(const char *label, const unsigned char *p, size_t n,
                                 qi_status status, const char *expect) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s.gguf", tmp_root, label);
    write_file(path, p, n);
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_gguf_open(path, &f, &err);
    CHECK(st == status, "%s: status %s, expected %s (%s)", label, qi_status_name(st),
          qi_status_name(status), err.msg);
    CHECK(f == NULL, "%s: a file was returned", label);
    CHECK(strstr(err.msg, expect) != NULL, "%s: message lacks '%s': %s", label, expect, err.msg);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", label, err.msg);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: message is not one line", label);
    printf("  %-20s %s\n", label, err.msg);
    qi_gguf_close(f);
}

static void expect_refused(const char *label, const wfile *w, qi_status status, const char *expect) {
    size_t n;
    unsigned char *p = build(w, &n);
    expect_refused_bytes(label, p, n, status, expect);
    free(p);
}

/* The valid file cut at several places, each inside a different field. */
static void test_truncated_files_are_refused(void) {
    wfile w = valid_file();
    size_t n;
    unsigned char *p = build(&w, &n);
    const struct {
        const char *label;
        size_t at;
        const char *expect;
    } cuts[] = {
        {"cut_empty", 0, "the magic"},
        {"cut_magic", 3, "the magic"},
        {"cut_version", 6, "the version"},
        {"cut_tensor_count", 12, "the tensor count"},
        {"cut_kv_count", 20, "the metadata key count"},
        {"cut_first_key", 30, "claims 21 metadata keys"},
        {"cut_in_metadata", 500, "the file ends inside"},
        {"cut_in_tensor_info", 800, "the file ends inside"},
        {"cut_data", n - 5, "runs past the end of the data section"},
        {"cut_data_start", n - 300, "data section"},
    };
    for (size_t i = 0; i < QI_ARRAY_LEN(cuts); i++)
        expect_refused_bytes(cuts[i].label, p, cuts[i].at, QI_ERR_FORMAT, cuts[i].expect);
    /* every cut point fails cleanly (ASan watches the reads) */
    int all_refused = 1;
    for (size_t at = 0; at < n; at += 7) {
        char path[128];
        snprintf(path, sizeof path, "%s/cut.gguf", tmp_root);
        write_file(path, p, at);
        qi_gguf_file *f = NULL;
        qi_error err = {{0}};
        qi_status st = qi_gguf_open(path, &f, &err);
        if (st == QI_OK || !strstr(err.msg, path)) {
            CHECK(0, "cut at %zu of %zu: %s", at, n, st == QI_OK ? "opened" : err.msg);
            all_refused = 0;
        }
        qi_gguf_close(f);
    }
    CHECK(all_refused);
    free(p);
}

static void test_lying_headers_are_refused(void) {
    wfile w = valid_file();
    w.tensor_count_lie = 1000000000000ull;
    expect_refused("lying_tensor_count", &w, QI_ERR_FORMAT, "claims 1000000000000 tensors");
    w = valid_file();
    w.kv_count_lie = 1ull << 40;
    expect_refused("lying_kv_count", &w, QI_ERR_FORMAT, "metadata keys, which cannot fit");
    w = valid_file();
    w.kv_count_lie = N_KV + 1; /* the first tensor info is read as a key */
    expect_refused("kv_count_plus_one", &w, QI_ERR_FORMAT, "");
    w = valid_file();
    w.name_len_lie = 1ull << 40;
    expect_refused("string_past_end", &w, QI_ERR_FORMAT, "bytes long but only");
    w = valid_file();
    w.version = 1;
    expect_refused("version_1", &w, QI_ERR_UNSUPPORTED, "obsolete");
    w.version = 0x03000000u;
    expect_refused("big_endian", &w, QI_ERR_UNSUPPORTED, "big-endian");
    w = valid_file();
    w.extra_value_type = 13;
    expect_refused("unknown_value_type", &w, QI_ERR_FORMAT, "key 't.strange': unknown value type 13");
    w = valid_file();
    w.duplicate_key = 1;
    expect_refused("duplicate_key", &w, QI_ERR_FORMAT, "key 't.u8' appears twice");
    w = valid_file();
    size_t n;
    unsigned char *p = build(&w, &n);
    memcpy(p, "GGML", 4);
    expect_refused_bytes("bad_magic", p, n, QI_ERR_FORMAT, "not a GGUF file");
    free(p);
}

static void test_bad_alignment_is_refused(void) {
    wfile w = valid_file();
    w.alignment = 0;
    expect_refused("alignment_0", &w, QI_ERR_FORMAT, "general.alignment is 0");
    w.alignment = 3;
    expect_refused("alignment_3", &w, QI_ERR_FORMAT, "general.alignment is 3");
    /* a power of two other than 32 is fine */
    w.alignment = 64;
    char path[128];
    snprintf(path, sizeof path, "%s/align64.gguf", tmp_root);
    write_gguf(path, &w);
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    CHECK(qi_gguf_open(path, &f, &err) == QI_OK && qi_gguf_alignment(f) == 64, "%s", err.msg);
    qi_gguf_close(f);
}

static void test_bad_tensors_are_refused(void) {
    wfile w = valid_file();
    w.t[4].offset = 1u << 30;
    expect_refused("offset_past_end", &w, QI_ERR_FORMAT, "tensor 'e.bf16': data [1073741824, 1073741834) runs past the end of the data section");
    w = valid_file();
    w.t[2].offset = 8;
    expect_refused("misaligned_offset", &w, QI_ERR_FORMAT, "tensor 'c.q8_0': data offset 8 is not a multiple of the alignment 32");
    w = valid_file();
    w.t[2].offset = 32; /* b.q4_0 occupies [32, 104) */
    expect_refused("overlapping", &w, QI_ERR_FORMAT, "overlap");
    w = valid_file();
    w.t[1].ggml = 16;
    expect_refused("unsupported_type", &w, QI_ERR_UNSUPPORTED, "tensor 'b.q4_0': ggml type 16 (IQ2_XXS) is not supported (supported: F32, F16, BF16, Q4_0");
    w.t[1].ggml = 99;
    expect_refused("unknown_type", &w, QI_ERR_FORMAT, "tensor 'b.q4_0': unknown ggml type id 99");
    w = valid_file();
    w.t[1].ne[0] = 48;
    w.t[1].nbytes = 64;
    expect_refused("partial_block", &w, QI_ERR_FORMAT, "whole number of 32-element blocks, but the last dim is 48");
    w = valid_file();
    w.t[3].name = "b.q4_0";
    expect_refused("duplicate_tensor", &w, QI_ERR_FORMAT, "tensor 'b.q4_0' appears twice");
    w = valid_file();
    w.t[0].ne[0] = 0;
    w.t[0].nbytes = 32;
    expect_refused("zero_dim", &w, QI_ERR_FORMAT, "tensor 'a.f32': ne[0] is 0");
    w = valid_file();
    w.t[0].ne[1] = 1ull << 63;
    expect_refused("huge_dim", &w, QI_ERR_FORMAT, "ne[1] is 9223372036854775808");
    w = valid_file();
    w.t[0].ne[0] = 1ull << 40, w.t[0].ne[1] = 1ull << 40, w.t[0].nbytes = 32;
    expect_refused("overflowing_dims", &w, QI_ERR_FORMAT, "overflows");
    w = valid_file();
    w.t[0].ndim = 6;
    expect_refused("six_dims", &w, QI_ERR_FORMAT, "n_dims is 6");
    w = valid_file();
    w.t[0].name = "";
    expect_refused("empty_name", &w, QI_ERR_FORMAT, "the tensor name is 0 bytes");
}

/* ---- the shared reference fixtures ------------------------------------------------------ */

/* The shared formats/ file `name`: from QI_SHARED_DIR, else ../shared beside
 * the clone; 0 with the path, or -1 when neither has it. */
static int find_fixture(const char *name, char *path, size_t cap) {
    snprintf(path, cap, "%s/reference/formats/%s", QI_SHARED_DIR, name);
    if (qi_file_exists(path)) return 0;
    snprintf(path, cap, "%s/../../../shared/reference/formats/%s", QI_TEST_DATA, name);
    return qi_file_exists(path) ? 0 : -1;
}

/* llama.cpp's text-model names -> the HF names dequant_sha256.json uses. */
static void hf_name(const char *gguf, char *out, size_t cap) {
    static const char *const map[][2] = {
        {"attn_norm", "input_layernorm"}, {"attn_q", "self_attn.q_proj"},
        {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
        {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
        {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
        {"ffn_down", "mlp.down_proj"}};
    int layer, used = 0;
    char part[64], rest[64];
    if (strcmp(gguf, "token_embd.weight") == 0) {
        snprintf(out, cap, "model.embed_tokens.weight");
        return;
    }
    if (strcmp(gguf, "output_norm.weight") == 0) {
        snprintf(out, cap, "model.norm.weight");
        return;
    }
    if (sscanf(gguf, "blk.%d.%63[^.].%63s%n", &layer, part, rest, &used) == 3)
        for (size_t i = 0; i < QI_ARRAY_LEN(map); i++)
            if (strcmp(part, map[i][0]) == 0) {
                snprintf(out, cap, "model.layers.%d.%s.%s", layer, map[i][1], rest);
                return;
            }
    snprintf(out, cap, "%s", gguf);
}

/* Every tensor of the fixture dequantises to the recorded sha256. */
static void check_fixture_hashes(const char *file, const cJSON *hashes, int llama_names) {
    char path[1024];
    REQUIRE(find_fixture(file, path, sizeof path) == 0);
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(hashes, file);
    CHECK(cJSON_GetArraySize(want) == qi_gguf_tensor_count(f), "%s: %d tensors, reference lists %d",
          file, qi_gguf_tensor_count(f), cJSON_GetArraySize(want));
    int matched = 0, types_seen[QI_DTYPE_COUNT] = {0};
    for (int i = 0; i < qi_gguf_tensor_count(f); i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(f, i);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        float *y = malloc(numel * sizeof *y);
        CHECK(y && qi_to_f32(y, t->data, t->dtype, numel) == 0, "%s: cannot dequantise", t->name);
        sha256 s;
        char hex[65], name[256];
        sha256_init(&s);
        sha256_update(&s, y, numel * sizeof *y);
        sha256_hex(&s, hex);
        free(y);
        if (llama_names) hf_name(t->name, name, sizeof name);
        else snprintf(name, sizeof name, "%s", t->name);
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(want, name);
        CHECK(cJSON_IsString(h) && strcmp(h->valuestring, hex) == 0, "%s: %s (%s): sha256 %s, reference %s",
              file, t->name, qi_dtype_name(t->dtype), hex, cJSON_IsString(h) ? h->valuestring : "none");
        matched += cJSON_IsString(h) && strcmp(h->valuestring, hex) == 0;
        types_seen[t->dtype]++;
    }
    printf("  %s: %d of %d tensors bit-identical to the reference (", file, matched,
           qi_gguf_tensor_count(f));
    for (int t = 0; t < QI_DTYPE_COUNT; t++)
        if (types_seen[t]) printf(" %s x%d", qi_dtype_name((qi_dtype)t), types_seen[t]);
    printf(" )\n");
    qi_gguf_close(f);
}

static void test_shared_fixtures(void) {
    char path[1024];
    if (find_fixture("qwen-image-tiny-mixed.gguf", path, sizeof path) != 0) {
        printf("  skipped: no shared reference/formats/ (neither %s nor ../shared)\n", QI_SHARED_DIR);
        return;
    }
    qi_gguf_file *f = NULL;
    qi_error err = {{0}};
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    const char *s;
    size_t len;
    int64_t v;
    CHECK(qi_gguf_get_string(f, "general.architecture", &s, &len, &err) == QI_OK && len == 10 &&
          memcmp(s, "qwen_image", 10) == 0, "%s", err.msg);
    CHECK(qi_gguf_get_int(f, "general.quantization_version", &v, &err) == QI_OK && v == 2);
    CHECK(qi_gguf_get_int(f, "general.file_type", &v, &err) == QI_OK && v == 15);
    CHECK(qi_gguf_key_count(f) == 3 && qi_gguf_version(f) == 3 && qi_gguf_alignment(f) == 32);
    const qi_gguf_tensor *t = qi_gguf_find(f, "img_in.weight");
    CHECK(t && t->dtype == QI_BF16 && t->ndim == 2 && t->shape[0] == 256 && t->shape[1] == 64,
          "img_in.weight is BF16 [256, 64]");
    t = qi_gguf_find(f, "transformer_blocks.0.attn.to_q.weight");
    CHECK(t && t->dtype == QI_Q4_K && t->shape[0] == 256 && t->shape[1] == 256);
    qi_gguf_close(f);

    REQUIRE(find_fixture("Qwen2.5-VL-tiny-Q8_0.gguf", path, sizeof path) == 0);
    REQUIRE(qi_gguf_open(path, &f, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_gguf_get_string(f, "general.architecture", &s, &len, &err) == QI_OK && len == 7 &&
          memcmp(s, "qwen2vl", 7) == 0);
    qi_gguf_array a;
    REQUIRE(qi_gguf_get_array(f, "tokenizer.ggml.tokens", &a, &err) == QI_OK, "%s", err.msg);
    CHECK(a.type == QI_GGUF_STRING && a.count == 152064, "%llu tokens", (unsigned long long)a.count);
    CHECK(qi_gguf_array_string(&a, 151645, &s, &len, &err) == QI_OK && len == 10 &&
          memcmp(s, "<|im_end|>", 10) == 0, "token 151645");
    CHECK(qi_gguf_get_array(f, "tokenizer.ggml.merges", &a, &err) == QI_OK && a.count == 151387);
    CHECK(qi_gguf_get_array(f, "qwen2vl.rope.dimension_sections", &a, &err) == QI_OK &&
          a.count == 4 && qi_gguf_array_int(&a, 2, &v, &err) == QI_OK && v == 3);
    CHECK(qi_gguf_get_int(f, "tokenizer.ggml.eos_token_id", &v, &err) == QI_OK && v == 151645);
    qi_gguf_close(f);

    REQUIRE(find_fixture("dequant_sha256.json", path, sizeof path) == 0);
    cJSON *hashes = NULL;
    REQUIRE(qi_json_load(path, &hashes, &err) == QI_OK, "%s", err.msg);
    check_fixture_hashes("qwen-image-tiny-mixed.gguf", hashes, 0);
    check_fixture_hashes("Qwen2.5-VL-tiny-Q8_0.gguf", hashes, 1);
    cJSON_Delete(hashes);
}

int main(void) {
    if (tmp_dir_make(tmp_root, sizeof tmp_root, "gguf") != 0) return 1;
    RUN(test_sha256_known_answers);
    RUN(test_small_file_reads_back);
    RUN(test_arrays_read_back);
    RUN(test_truncated_files_are_refused);
    RUN(test_lying_headers_are_refused);
    RUN(test_bad_alignment_is_refused);
    RUN(test_bad_tensors_are_refused);
    RUN(test_shared_fixtures);
    tmp_remove_tree(tmp_root);
    TEST_END();
}

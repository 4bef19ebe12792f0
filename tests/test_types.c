/*
 * test_types.c — the type traits: the table is consistent, it agrees with the
 * ggml ids and block sizes recorded beside the reference data, every GGUF
 * block type dequantises bit-identically to ggml's reference (gguf-py) on the
 * quant_blocks fixture, f8 decodes every byte as the formulas say, and row
 * sizes refuse rows that are not whole blocks.
 *
 * Fixture: reference/formats/quant_blocks.safetensors (README section
 * "quant_blocks"): for each type T, `T.raw` U8 [12, bytes_per_row] holds 12
 * rows of 512 stored elements and `T.f32` F32 [12, 512] their reference
 * dequantisation; __metadata__["types"] gives each type's ggml id, block
 * elements and block bytes.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>

#include "base/types.h"
#include "base/blocks.h"
#include "io/safetensors.h"
#include "test.h"
#include "testdata.h"

#define QUANT_BLOCKS QI_SHARED_DIR "/reference/formats/quant_blocks.safetensors"

/* The types quant_blocks holds (the README's list). */
static const qi_dtype fixture_types[] = {QI_Q4_0, QI_Q4_1, QI_Q5_0, QI_Q5_1, QI_Q8_0, QI_Q2_K,
                                         QI_Q3_K, QI_Q4_K, QI_Q5_K, QI_Q6_K, QI_F16,  QI_BF16};

/* ---- the table ------------------------------------------------------------ */

static void test_table_is_consistent(void) {
    for (int t = 0; t < QI_DTYPE_COUNT; t++) {
        const qi_dtype_traits *tt = qi_type_traits((qi_dtype)t);
        REQUIRE(tt != NULL, "dtype %d has no traits", t);
        CHECK(tt->name && *tt->name && strcmp(tt->name, qi_dtype_name((qi_dtype)t)) == 0,
              "dtype %d: name", t);
        CHECK(tt->block_elems >= 1 && tt->block_bytes > 0, "%s: block", tt->name);
        CHECK(tt->is_float == (tt->to_f32 != NULL), "%s: is_float and to_f32 disagree", tt->name);
        int block = t >= QI_Q4_0;
        CHECK(qi_dtype_is_block((qi_dtype)t) == block, "%s: is_block", tt->name);
        CHECK(qi_dtype_size((qi_dtype)t) == (block ? 0 : tt->block_bytes), "%s: dtype_size",
              tt->name);
        if (tt->ggml_type >= 0) {
            qi_dtype back;
            CHECK(qi_dtype_from_ggml(tt->ggml_type, &back) == 0 && back == (qi_dtype)t,
                  "%s: ggml id %d does not map back", tt->name, tt->ggml_type);
            CHECK(strcmp(qi_ggml_type_name(tt->ggml_type), tt->name) == 0, "%s: ggml name",
                  tt->name);
            CHECK(strstr(qi_ggml_supported_list(), tt->name) != NULL,
                  "%s missing from the supported list", tt->name);
        }
    }
    CHECK(qi_type_traits(QI_DTYPE_COUNT) == NULL && qi_type_traits((qi_dtype)-1) == NULL);
    CHECK(!qi_dtype_is_float(QI_I32) && !qi_dtype_is_float(QI_U8) && qi_dtype_is_float(QI_Q6_K));
    qi_dtype out = QI_F32;
    CHECK(qi_dtype_from_ggml(16, &out) == -1 && out == QI_F32, "IQ2_XXS is not supported");
    CHECK(qi_dtype_from_ggml(-1, &out) == -1 && qi_dtype_from_ggml(1000, &out) == -1);
    CHECK(strcmp(qi_ggml_type_name(16), "IQ2_XXS") == 0 && qi_ggml_type_name(4) == NULL);
}

/* The ggml id, block elements and bytes of every fixture type, as recorded
 * in the fixture's metadata. */
static void test_traits_agree_with_the_fixture(void) {
    qi_st_file *f = ref_open(QUANT_BLOCKS);
    REQUIRE(f);
    cJSON *meta = f->metadata_json ? cJSON_Parse(f->metadata_json) : NULL;
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(meta, "types");
    cJSON *types = cJSON_IsString(text) ? cJSON_Parse(text->valuestring) : NULL;
    CHECK(cJSON_GetArraySize(types) == (int)QI_ARRAY_LEN(fixture_types),
          "__metadata__[\"types\"] lists %d types", cJSON_GetArraySize(types));
    const cJSON *entry;
    cJSON_ArrayForEach(entry, types) {
        qi_dtype t = QI_DTYPE_COUNT;
        for (int k = 0; k < QI_DTYPE_COUNT; k++)
            if (strcmp(qi_dtype_name((qi_dtype)k), entry->string) == 0) t = (qi_dtype)k;
        const qi_dtype_traits *tt = qi_type_traits(t);
        if (!tt) {
            CHECK(0, "fixture type %s unknown to the traits", entry->string);
            continue;
        }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(entry, "ggml_type");
        const cJSON *elems = cJSON_GetObjectItemCaseSensitive(entry, "block_elems");
        const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(entry, "block_bytes");
        CHECK(cJSON_IsNumber(id) && id->valueint == tt->ggml_type, "%s: ggml id %d, file says %d",
              tt->name, tt->ggml_type, cJSON_IsNumber(id) ? id->valueint : -1);
        CHECK(cJSON_IsNumber(elems) && elems->valueint == tt->block_elems, "%s: block elems",
              tt->name);
        CHECK(cJSON_IsNumber(bytes) && bytes->valueint == (int)tt->block_bytes, "%s: block bytes",
              tt->name);
    }
    cJSON_Delete(types);
    cJSON_Delete(meta);
    qi_st_close(f);
}

/* ---- dequantisation --------------------------------------------------------- */

/* Every row of T.raw, dequantised through the traits, equals T.f32 bit for bit. */
static void check_type_rows(const qi_st_file *f, qi_dtype t) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    char raw_name[32], ref_name[32];
    snprintf(raw_name, sizeof raw_name, "%s.raw", tt->name);
    snprintf(ref_name, sizeof ref_name, "%s.f32", tt->name);
    const qi_st_tensor *raw = qi_st_file_find(f, raw_name), *ref = qi_st_file_find(f, ref_name);
    REQUIRE(raw && ref, "%s: %s or %s missing", QUANT_BLOCKS, raw_name, ref_name);
    REQUIRE(raw->dtype == QI_U8 && raw->ndim == 2 && ref->dtype == QI_F32 && ref->ndim == 2 &&
            raw->shape[0] == ref->shape[0]);
    int64_t rows = ref->shape[0], n = ref->shape[1];
    REQUIRE(qi_row_bytes(t, n) == raw->shape[1], "%s: row of %lld is %lld bytes, file has %lld",
            tt->name, (long long)n, (long long)qi_row_bytes(t, n), (long long)raw->shape[1]);
    float *y = malloc(sizeof *y * (size_t)(rows * n)), *want = malloc(sizeof *want * (size_t)(rows * n));
    memcpy(want, ref->data, sizeof *want * (size_t)(rows * n)); /* the mapping is not aligned */
    for (int64_t r = 0; r < rows; r++) {
        const unsigned char *src = (const unsigned char *)raw->data + r * raw->shape[1];
        tt->to_f32(src, y + r * n, n);
        if (memcmp(y + r * n, want + r * n, sizeof *y * (size_t)n) != 0) {
            int64_t i = 0;
            while (qi_f32_bits(y[r * n + i]) == qi_f32_bits(want[r * n + i])) i++;
            CHECK(0, "%s row %lld: first difference at element %lld: %.9g (0x%08x), reference "
                     "%.9g (0x%08x)",
                  tt->name, (long long)r, (long long)i, y[r * n + i], qi_f32_bits(y[r * n + i]),
                  want[r * n + i], qi_f32_bits(want[r * n + i]));
        }
    }
    /* the whole tensor at once through qi_to_f32 */
    memset(y, 0xff, sizeof *y * (size_t)(rows * n));
    CHECK(qi_to_f32(y, raw->data, t, (size_t)(rows * n)) == 0, "%s: qi_to_f32 refused", tt->name);
    CHECK(memcmp(y, want, sizeof *y * (size_t)(rows * n)) == 0, "%s: qi_to_f32 differs", tt->name);
    free(y);
    free(want);
}

static void test_every_block_type_dequantises_bit_exactly(void) {
    qi_st_file *f = ref_open(QUANT_BLOCKS);
    REQUIRE(f);
    for (size_t i = 0; i < QI_ARRAY_LEN(fixture_types); i++) {
        int before = qi_test_failed_checks;
        check_type_rows(f, fixture_types[i]);
        printf("  %-5s 12 rows x 512: %s\n", qi_dtype_name(fixture_types[i]),
               qi_test_failed_checks == before ? "bit-identical" : "DIFFERS");
    }
    qi_st_close(f);
}

/* ---- f8 ----------------------------------------------------------------------- */

/* float8_e4m3fn: bias 7, subnormals m·2^-9, no infinities, S.1111.111 NaN. */
static float e4m3_formula(unsigned v) {
    unsigned s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    if (e == 15 && m == 7) return NAN;
    double x = e == 0 ? m * pow(2, -9) : (1 + m / 8.0) * pow(2, (int)e - 7);
    return (float)(s ? -x : x);
}

/* float8_e5m2: IEEE-style, bias 15, subnormals m·2^-16, e = 31 inf / NaN. */
static float e5m2_formula(unsigned v) {
    unsigned s = v >> 7, e = (v >> 2) & 31, m = v & 3;
    double x;
    if (e == 31) x = m ? NAN : INFINITY;
    else x = e == 0 ? m * pow(2, -16) : (1 + m / 4.0) * pow(2, (int)e - 15);
    return (float)(s ? -x : x);
}

static void test_f8_decodes_every_byte(void) {
    int bad4 = 0, bad5 = 0;
    for (unsigned v = 0; v < 256; v++) {
        float a = qi_f8e4m3_to_f32((uint8_t)v), b = e4m3_formula(v);
        if (!(isnan(a) && isnan(b)) && qi_f32_bits(a) != qi_f32_bits(b)) {
            if (bad4++ < 4) CHECK(0, "e4m3 0x%02x: %.9g, formula %.9g", v, a, b);
        }
        a = qi_f8e5m2_to_f32((uint8_t)v), b = e5m2_formula(v);
        if (!(isnan(a) && isnan(b)) && qi_f32_bits(a) != qi_f32_bits(b)) {
            if (bad5++ < 4) CHECK(0, "e5m2 0x%02x: %.9g, formula %.9g", v, a, b);
        }
    }
    CHECK(bad4 == 0 && bad5 == 0, "%d e4m3 and %d e5m2 bytes differ", bad4, bad5);
    CHECK(qi_f8e4m3_to_f32(0x7e) == 448.0f && isnan(qi_f8e4m3_to_f32(0xff)));
    CHECK(qi_f8e5m2_to_f32(0x7b) == 57344.0f && isinf(qi_f8e5m2_to_f32(0xfc)));
    /* the row functions of the table agree with the scalar ones */
    uint8_t bytes[256];
    float row[256];
    for (int v = 0; v < 256; v++) bytes[v] = (uint8_t)v;
    qi_type_traits(QI_F8_E4M3)->to_f32(bytes, row, 256);
    for (int v = 0; v < 256; v++)
        if (!isnan(row[v])) CHECK(row[v] == qi_f8e4m3_to_f32((uint8_t)v), "e4m3 row 0x%02x", v);
}

/* ---- sizes ----------------------------------------------------------------------- */

static void test_row_bytes_refuse_partial_blocks(void) {
    CHECK(qi_row_bytes(QI_F32, 3) == 12 && qi_row_bytes(QI_BF16, 5) == 10);
    CHECK(qi_row_bytes(QI_F8_E4M3, 7) == 7 && qi_row_bytes(QI_I64, 2) == 16);
    CHECK(qi_row_bytes(QI_Q4_0, 64) == 36 && qi_row_bytes(QI_Q8_0, 3584) == 112 * 34);
    CHECK(qi_row_bytes(QI_Q4_K, 3072) == 12 * 144 && qi_row_bytes(QI_Q6_K, 256) == 210);
    CHECK(qi_row_bytes(QI_Q4_K, 0) == 0);
    CHECK(qi_row_bytes(QI_Q4_K, 100) == -1, "100 elements are not whole Q4_K blocks");
    CHECK(qi_row_bytes(QI_Q4_K, 255) == -1 && qi_row_bytes(QI_Q4_K, 257) == -1);
    CHECK(qi_row_bytes(QI_Q4_0, 48) == -1, "48 is not a multiple of 32");
    CHECK(qi_row_bytes(QI_F32, -1) == -1 && qi_row_bytes(QI_DTYPE_COUNT, 4) == -1);
    CHECK(qi_row_bytes(QI_I64, INT64_MAX / 4) == -1, "overflow");

    size_t n = 1;
    qi_error err = {{0}};
    int64_t ok_shape[2] = {3, 512}, bad_shape[2] = {3, 100}, huge[2] = {INT64_MAX / 2, 256};
    CHECK(qi_shape_bytes(QI_Q5_K, 2, ok_shape, &n, "w", &err) == QI_OK && n == 3 * 2 * 176);
    CHECK(qi_shape_bytes(QI_F32, 0, NULL, &n, "scalar", &err) == QI_OK && n == 4);
    qi_status st = qi_shape_bytes(QI_Q4_K, 2, bad_shape, &n, "x.gguf: tensor 'w' [3, 100]", &err);
    CHECK(st == QI_ERR_FORMAT && n == 0, "status %d", (int)st);
    CHECK(strstr(err.msg, "x.gguf: tensor 'w'") && strstr(err.msg, "256") && strstr(err.msg, "100"),
          "message: %s", err.msg);
    printf("  partial block: %s\n", err.msg);
    st = qi_shape_bytes(QI_Q8_0, 2, huge, &n, "huge", &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "overflows"), "%s", err.msg);
    printf("  overflow:      %s\n", err.msg);

    /* qi_to_f32 takes whole blocks only, and no integer types */
    unsigned char block[34] = {0};
    float out[64];
    CHECK(qi_to_f32(out, block, QI_Q8_0, 32) == 0 && out[0] == 0.0f);
    CHECK(qi_to_f32(out, block, QI_Q8_0, 33) == -1 && qi_to_f32(out, block, QI_Q8_0, 16) == -1);
    CHECK(qi_to_f32(out, block, QI_I32, 1) == -1 && qi_to_f32(out, block, QI_U8, 1) == -1);
}

/* The element converters kept their behaviour when they moved here. */
static void test_element_converters(void) {
    CHECK(qi_f16_to_f32(0x3c00) == 1.0f && qi_f16_to_f32(0xc000) == -2.0f);
    CHECK(qi_f16_to_f32(0x0001) == ldexpf(1, -24) && qi_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(qi_f16_to_f32(0x7c00)) && isnan(qi_f16_to_f32(0x7e00)));
    CHECK(qi_f32_to_f16(1.0f) == 0x3c00 && qi_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(qi_f32_to_f16(ldexpf(1, -25)) == 0 && qi_f32_to_f16(ldexpf(3, -25)) == 2, "RNE subnormal");
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive half round-trips */
        if (qi_f32_to_f16(qi_f16_to_f32((uint16_t)h)) != h) {
            CHECK(0, "half 0x%04x does not round-trip", h);
            break;
        }
    CHECK(qi_bf16_to_f32(0x3f80) == 1.0f && qi_f32_to_bf16(1.0f) == 0x3f80);
    uint16_t halves[2] = {0x3c00, 0xbc00}; /* F16 rows through qi_to_f32 */
    float two[2];
    CHECK(qi_to_f32(two, halves, QI_F16, 2) == 0 && two[0] == 1.0f && two[1] == -1.0f);
}

/* blocks.h (the formulas the CUDA backend compiles too) decodes every half
 * and every float8 byte exactly as the host converters do, bit for bit. */
static void test_shared_scalar_decoders_match_the_host_ones(void) {
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++) {
        uint8_t p[2] = {(uint8_t)(h & 255), (uint8_t)(h >> 8)};
        float a = qb_half(p), b = qi_f16_to_f32((uint16_t)h);
        bad += memcmp(&a, &b, 4) != 0 && !(isnan(a) && isnan(b));
    }
    for (unsigned v = 0; v < 256; v++) {
        float a = qb_f8e4m3((uint8_t)v), b = qi_f8e4m3_to_f32((uint8_t)v);
        float c = qb_f8e5m2((uint8_t)v), d = qi_f8e5m2_to_f32((uint8_t)v);
        bad += memcmp(&a, &b, 4) != 0 && !(isnan(a) && isnan(b));
        bad += memcmp(&c, &d, 4) != 0 && !(isnan(c) && isnan(d));
    }
    CHECK(bad == 0);
}

int main(void) {
    RUN(test_shared_scalar_decoders_match_the_host_ones);
    RUN(test_table_is_consistent);
    RUN(test_traits_agree_with_the_fixture);
    RUN(test_every_block_type_dequantises_bit_exactly);
    RUN(test_f8_decodes_every_byte);
    RUN(test_row_bytes_refuse_partial_blocks);
    RUN(test_element_converters);
    TEST_END();
}

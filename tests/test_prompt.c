/*
 * test_prompt.c — claims about the Qwen-Image prompt preparation
 * (src/model/prompt.c): template, the 34-id prefix, truncation at 1058 ids,
 * right padding, and the reference input_ids / attention_mask of the public
 * cases.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/safetensors.h"
#include "model/prompt.h"
#include "test.h"
#include "testdata.h"

#define MODEL_TOKENIZER QI_REF_MODEL "/tokenizer"

static qi_tokenizer *tok;

/* spec §2.1: the 34 prefix ids and the 5 suffix ids of the template. */
static const int32_t PREFIX[34] = {151644, 8948, 198, 74785, 279, 2168, 553, 44193, 279, 1894, 11, 6083,
                                   11, 1379, 11, 10434, 11, 12194, 11, 1467, 11, 27979, 11871, 315,
                                   279, 6171, 323, 4004, 25, 151645, 198, 151644, 872, 198};
static const int32_t SUFFIX[5] = {151645, 198, 151644, 77091, 198};

/* Tokenizes one prompt; checks the ids are PREFIX + middle + SUFFIX. */
static void check_single(const char *prompt, const int32_t *middle, int n_middle) {
    qi_prompt_batch b;
    qi_error err;
    qi_status st = qi_prompt_tokenize(tok, &prompt, 1, 512, &b, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st != QI_OK) return;
    int n = 34 + n_middle + 5;
    CHECK(b.batch == 1 && b.seq_len == n, "\"%s\": %d ids, want %d", prompt, b.seq_len, n);
    if (b.seq_len == n) {
        CHECK(memcmp(b.ids, PREFIX, sizeof PREFIX) == 0, "\"%s\": prefix ids differ", prompt);
        CHECK(n_middle == 0 || memcmp(b.ids + 34, middle, (size_t)n_middle * sizeof *middle) == 0,
              "\"%s\": prompt ids differ", prompt);
        CHECK(memcmp(b.ids + 34 + n_middle, SUFFIX, sizeof SUFFIX) == 0, "\"%s\": suffix ids differ", prompt);
    }
    for (int i = 0; i < b.seq_len; i++) CHECK(b.mask[i] == 1, "mask[%d] of a single prompt", i);
    CHECK(b.embed_len[0] == n_middle + 5 && b.embed_seq_len == n_middle + 5 && !b.needs_mask,
          "\"%s\": embed_len %d, want %d", prompt, b.embed_len[0], n_middle + 5);
    qi_prompt_batch_free(&b);
}

/* ---- claims ---------------------------------------------------------------- */

static void loads_tokenizer(void) {
    qi_error err;
    CHECK(qi_tokenizer_load(MODEL_TOKENIZER, &tok, &err) == QI_OK, "%s", err.msg);
}

static void template_is_the_pipeline_template(void) {
    static const char want[] =
        "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
        "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
        "a {} cat<|im_end|>\n<|im_start|>assistant\n";
    char *text = NULL;
    qi_error err;
    CHECK(qi_prompt_template("a {} cat", &text, &err) == QI_OK, "%s", err.msg);
    CHECK(text && strcmp(text, want) == 0, "got \"%s\"", text ? text : "(null)");
    free(text);
}

static void empty_prompt_gives_prefix_and_suffix(void) {
    REQUIRE(tok, "no tokenizer");
    check_single("", NULL, 0);
}

static void spec_examples(void) {
    REQUIRE(tok, "no tokenizer");
    check_single(" ", (int32_t[]){220}, 1); /* the usual negative prompt: 6 embeddings */
    check_single("a red apple on a table", (int32_t[]){64, 2518, 23268, 389, 264, 1965}, 6);
}

static void leading_newline_merges_with_the_template(void) {
    REQUIRE(tok, "no tokenizer");
    const char *prompt = "\nhello";
    qi_prompt_batch b;
    qi_error err;
    CHECK(qi_prompt_tokenize(tok, &prompt, 1, 512, &b, &err) == QI_OK, "%s", err.msg);
    CHECK(b.seq_len == 34 + 1 + 5, "%d ids", b.seq_len);
    if (b.seq_len == 40) {
        CHECK(b.ids[32] == 872 && b.ids[33] == 271 && b.ids[34] == 14990,
              "ids 32..34 = %d %d %d, want 872 271 14990", b.ids[32], b.ids[33], b.ids[34]);
        CHECK(b.embed_len[0] == 6, "still 34 dropped: embed_len %d", b.embed_len[0]);
    }
    qi_prompt_batch_free(&b);
}

/* ---- public reference cases -------------------------------------------------- */

static int tensor_i32(const qi_st_file *f, const char *name, const int32_t **data, int64_t *rows, int64_t *cols) {
    const qi_st_tensor *t = qi_st_file_find(f, name);
    if (!t || t->dtype != QI_I32 || t->ndim != 2) return -1;
    *data = t->data;
    *rows = t->shape[0];
    *cols = t->shape[1];
    return 0;
}

static int64_t dim1(const qi_st_file *f, const char *name) {
    const qi_st_tensor *t = qi_st_file_find(f, name);
    return t && t->ndim >= 2 ? t->shape[1] : -1;
}

static void check_case(const char *name) {
    cJSON *c = ref_case_json(name);
    qi_st_file *f = ref_case_tensors(name);
    const char *prompts[8];
    int n = c ? ref_case_prompts(c, prompts, 8) : -1;
    if (!f || n < 0) {
        cJSON_Delete(c);
        qi_st_close(f);
        return;
    }

    qi_prompt_batch b;
    qi_error err;
    qi_status st = qi_prompt_tokenize(tok, prompts, n, 512, &b, &err); /* refgen: max_sequence_length=512 */
    CHECK(st == QI_OK, "%s: %s", name, err.msg);
    const int32_t *ref_ids = NULL, *ref_mask = NULL;
    int64_t rows = 0, cols = 0, mrows = 0, mcols = 0;
    CHECK(tensor_i32(f, "input_ids", &ref_ids, &rows, &cols) == 0, "%s: no I32 [B, L] input_ids", name);
    CHECK(tensor_i32(f, "attention_mask", &ref_mask, &mrows, &mcols) == 0, "%s: no attention_mask", name);
    if (st == QI_OK && ref_ids && ref_mask) {
        CHECK(rows == b.batch && cols == b.seq_len && mrows == rows && mcols == cols,
              "%s: shape [%d, %d], reference [%lld, %lld]", name, b.batch, b.seq_len, (long long)rows, (long long)cols);
        size_t cells = (size_t)rows * (size_t)cols, same_ids = 0, same_mask = 0;
        if (rows == b.batch && cols == b.seq_len)
            for (size_t i = 0; i < cells; i++) {
                same_ids += b.ids[i] == ref_ids[i];
                same_mask += b.mask[i] == ref_mask[i];
            }
        CHECK(same_ids == cells && same_mask == cells, "%s: ids %zu/%zu, mask %zu/%zu equal", name, same_ids,
              cells, same_mask, cells);

        /* The embedding lengths the transformer saw (call0, max_sequence_length 512) and
         * prompt_embeds (encode_prompt's own default 1024: same for these short prompts). */
        int64_t call_len = dim1(f, "call0.encoder_hidden_states"), embeds_len = dim1(f, "prompt_embeds");
        CHECK(call_len == b.embed_seq_len && embeds_len == b.embed_seq_len,
              "%s: embed_seq_len %d, reference call0 %lld / prompt_embeds %lld", name, b.embed_seq_len,
              (long long)call_len, (long long)embeds_len);
        const qi_st_tensor *pm = qi_st_file_find(f, "prompt_embeds_mask");
        CHECK((pm != NULL) == (b.needs_mask != 0), "%s: needs_mask %d but reference mask %s", name, b.needs_mask,
              pm ? "present" : "absent (None)");
        int mask_same = 1;
        if (pm && pm->dtype == QI_I32 && pm->shape[0] == b.batch && pm->shape[1] == b.embed_seq_len) {
            const int32_t *m = pm->data;
            for (int r = 0; r < b.batch; r++)
                for (int i = 0; i < b.embed_seq_len; i++) mask_same &= m[r * b.embed_seq_len + i] == (i < b.embed_len[r]);
            CHECK(mask_same, "%s: prompt_embeds_mask differs from embed_len", name);
        }

        /* True CFG: the negative prompt is encoded alone; call1 is its transformer call. */
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(c, "negative_prompt");
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(c, "cfg");
        char neg_note[96] = "";
        if (cJSON_IsString(neg) && cJSON_IsNumber(cfg) && cfg->valuedouble > 1) {
            qi_prompt_batch nb;
            const char *np = neg->valuestring;
            CHECK(qi_prompt_tokenize(tok, &np, 1, 512, &nb, &err) == QI_OK, "%s", err.msg);
            int64_t neg_len = dim1(f, "call1.encoder_hidden_states");
            CHECK(nb.embed_seq_len == neg_len, "%s: negative embed_seq_len %d, reference call1 %lld", name,
                  nb.embed_seq_len, (long long)neg_len);
            snprintf(neg_note, sizeof neg_note, ", negative \"%s\": %d embeddings (reference call1 %lld)", np,
                     nb.embed_seq_len, (long long)neg_len);
            qi_prompt_batch_free(&nb);
        }
        printf("  case %s: input_ids [%lld, %lld] %zu/%zu exact, attention_mask %zu/%zu exact, "
               "embeddings %d (reference %lld), prompt_embeds_mask %s%s\n",
               name, (long long)rows, (long long)cols, same_ids, cells, same_mask, cells, b.embed_seq_len,
               (long long)embeds_len, pm ? (mask_same ? "exact" : "DIFFERS") : "None (as reference)", neg_note);
    }
    if (st == QI_OK) qi_prompt_batch_free(&b);
    qi_st_close(f);
    cJSON_Delete(c);
}

static void case_en_lightning8_lora(void) {
    REQUIRE(tok, "no tokenizer");
    check_case("en_lightning8_lora");
}

static void case_zh_cfg4_base(void) {
    REQUIRE(tok, "no tokenizer");
    check_case("zh_cfg4_base");
}

static void case_batch2_lightning4_lora(void) {
    REQUIRE(tok, "no tokenizer");
    check_case("batch2_lightning4_lora");
}

/* ---- truncation and padding --------------------------------------------------- */

static char *long_prompt(int words) {
    char *s = malloc((size_t)words * 6 + 1), *o = s;
    for (int i = 0; i < words; i++, o += 5) memcpy(o, i % 2 ? " cat " : " dog ", 5);
    *o = 0;
    return s;
}

static void long_prompt_is_cut_to_1058_ids(void) {
    REQUIRE(tok, "no tokenizer");
    char *prompt = long_prompt(1500); /* ~3000 ids */
    char *templated;
    int32_t *full;
    int n_full;
    qi_error err;
    CHECK(qi_prompt_template(prompt, &templated, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_tokenizer_encode(tok, templated, &full, &n_full, &err) == QI_OK, "%s", err.msg);
    CHECK(n_full > 2000, "the long prompt gives only %d ids", n_full);
    int msl[2] = {512, 1024};
    for (int k = 0; k < 2; k++) {
        qi_prompt_batch b;
        const char *p = prompt;
        CHECK(qi_prompt_tokenize(tok, &p, 1, msl[k], &b, &err) == QI_OK, "%s", err.msg);
        CHECK(b.seq_len == QI_PROMPT_MAX_IDS && b.n_ids[0] == 1058,
              "max_sequence_length %d: %d ids, want 1058 (= 1024 + 34, independent of max_sequence_length)",
              msl[k], b.seq_len);
        CHECK(memcmp(b.ids, full, 1058 * sizeof *full) == 0, "the first 1058 ids are kept");
        CHECK(b.ids[1057] != 198 && b.ids[1057] < 151643, "truncation keeps prompt ids, not the suffix: %d",
              b.ids[1057]);
        int ones = 0;
        for (int i = 0; i < b.seq_len; i++) ones += b.mask[i];
        CHECK(ones == 1058, "mask ones %d", ones);
        CHECK(b.embed_len[0] == msl[k] && b.embed_seq_len == msl[k] && b.encode_len[0] == 34 + msl[k] &&
                  !b.needs_mask,
              "max_sequence_length %d: embed_len %d, encode_len %d", msl[k], b.embed_len[0], b.encode_len[0]);
        printf("  %d-id prompt, max_sequence_length %d: ids cut to %d, encoder needs %d, %d embeddings\n", n_full,
               msl[k], b.seq_len, b.encode_len[0], b.embed_len[0]);
        qi_prompt_batch_free(&b);
    }
    free(full);
    free(templated);
    free(prompt);
}

static void batch_is_right_padded_with_endoftext(void) {
    REQUIRE(tok, "no tokenizer");
    char *long_one = long_prompt(1500);
    const char *prompts[3] = {"a", long_one, "a red apple on a table"};
    qi_prompt_batch b;
    qi_error err;
    CHECK(qi_prompt_tokenize(tok, prompts, 3, 512, &b, &err) == QI_OK, "%s", err.msg);
    CHECK(b.batch == 3 && b.seq_len == 1058, "shape [%d, %d]", b.batch, b.seq_len);
    int want_n[3] = {40, 1058, 45};
    for (int r = 0; r < 3 && b.seq_len == 1058; r++) {
        CHECK(b.n_ids[r] == want_n[r], "row %d: %d ids, want %d", r, b.n_ids[r], want_n[r]);
        int ok = 1;
        for (int i = 0; i < b.seq_len; i++) {
            int real = i < b.n_ids[r];
            ok &= b.mask[r * b.seq_len + i] == real;
            if (!real) ok &= b.ids[r * b.seq_len + i] == 151643;
        }
        CHECK(ok, "row %d: right padding with 151643 and mask 0", r);
        CHECK(memcmp(b.ids + r * b.seq_len, PREFIX, sizeof PREFIX) == 0, "row %d prefix", r);
    }
    CHECK(b.embed_len[0] == 6 && b.embed_len[1] == 512 && b.embed_len[2] == 11 && b.embed_seq_len == 512 &&
              b.needs_mask,
          "embed_len %d %d %d, seq %d, needs_mask %d", b.embed_len[0], b.embed_len[1], b.embed_len[2],
          b.embed_seq_len, b.needs_mask);
    qi_prompt_batch_free(&b);
    free(long_one);
}

static void bad_arguments_are_errors(void) {
    REQUIRE(tok, "no tokenizer");
    const char *ok[1] = {"x"};
    const char *bad_utf8[2] = {"fine", "ab\xFFz"};
    const char *with_null[2] = {"fine", NULL};
    qi_prompt_batch b;
    qi_error err;
    CHECK(qi_prompt_tokenize(tok, ok, 1, 0, &b, &err) == QI_ERR_ARG && strstr(err.msg, "max_sequence_length"),
          "%s", err.msg);
    CHECK(qi_prompt_tokenize(tok, ok, 1, 1025, &b, &err) == QI_ERR_ARG, "1025 > 1024");
    CHECK(qi_prompt_tokenize(tok, ok, 0, 512, &b, &err) == QI_ERR_ARG, "no prompts");
    CHECK(qi_prompt_tokenize(tok, with_null, 2, 512, &b, &err) == QI_ERR_ARG, "NULL prompt");
    CHECK(qi_prompt_tokenize(tok, bad_utf8, 2, 512, &b, &err) == QI_ERR_ARG &&
              strstr(err.msg, "prompt 1") && strstr(err.msg, "byte offset 2"),
          "message: %s", err.msg);
    CHECK(b.ids == NULL && b.batch == 0, "a failed call leaves an empty batch");
    qi_prompt_batch_free(&b); /* safe on the cleared batch */
}

int main(void) {
    RUN(loads_tokenizer);
    RUN(template_is_the_pipeline_template);
    RUN(empty_prompt_gives_prefix_and_suffix);
    RUN(spec_examples);
    RUN(leading_newline_merges_with_the_template);
    RUN(case_en_lightning8_lora);
    RUN(case_zh_cfg4_base);
    RUN(case_batch2_lightning4_lora);
    RUN(long_prompt_is_cut_to_1058_ids);
    RUN(batch_is_right_padded_with_endoftext);
    RUN(bad_arguments_are_errors);
    qi_tokenizer_free(tok);
    TEST_END();
}

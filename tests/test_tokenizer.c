/*
 * test_tokenizer.c — claims about the Qwen2 byte-level BPE tokenizer
 * (src/model/tokenizer.c) against the reference vocabulary and vectors.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz/tokdecode.h"
#include "io/gguf.h"
#include "model/prompt.h"
#include "model/tokenizer.h"
#include "test.h"
#include "testdata.h"

#define MODEL_TOKENIZER QI_REF_MODEL "/tokenizer"
#define QWEN25_TOKENIZER QI_SHARED_DIR "/tokenizer/qwen2.5"
#define VECTORS_INP QI_SHARED_DIR "/tokenizer/llamacpp-qwen2.inp"
#define VECTORS_OUT QI_SHARED_DIR "/tokenizer/llamacpp-qwen2.out"
/* The GGUF text encoder fixture (../shared/reference/formats beside this
 * checkout; skipped, saying so, where absent). */
#define FORMATS QI_TEST_DATA "/../../../shared/reference/formats"
#define TE_GGUF FORMATS "/Qwen2.5-VL-tiny-Q8_0.gguf"

static qi_tokenizer *model_tok, *qwen25_tok;

/* ---- helpers ------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len) {
    char *text = NULL;
    qi_error err;
    if (qi_read_text_file(path, &text, len, &err) != QI_OK) fprintf(stderr, "  %s\n", err.msg);
    return text;
}

/* The llama.cpp vectors: cases end with "\n__ggml_vocab_test__\n" in the .inp;
 * the .out has one line of space-separated ids per case. */
typedef struct vectors {
    int n;
    char *texts[64];
    int32_t *ids[64];
    int n_ids[64];
    char *inp, *out;
} vectors;

static int load_vectors(vectors *v) {
    memset(v, 0, sizeof *v);
    size_t inp_len, out_len;
    v->inp = read_file(VECTORS_INP, &inp_len);
    v->out = read_file(VECTORS_OUT, &out_len);
    if (!v->inp || !v->out) return -1;
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *p = v->inp;
    for (char *end; (end = strstr(p, sep)) && v->n < 64; p = end + sizeof sep - 1) {
        *end = 0;
        v->texts[v->n++] = p;
    }
    if (*p) return -1; /* text after the last separator: not the expected format */
    char *line = v->out;
    for (int k = 0; k < v->n; k++) {
        char *eol = strchr(line, '\n');
        if (!eol) return -1;
        *eol = 0;
        v->ids[k] = malloc(sizeof(int32_t) * (strlen(line) / 2 + 1));
        for (char *q = line, *e; *q;) {
            long id = strtol(q, &e, 10);
            if (e == q) break;
            v->ids[k][v->n_ids[k]++] = (int32_t)id;
            q = e;
        }
        line = eol + 1;
    }
    return *line ? -1 : 0;
}

static void free_vectors(vectors *v) {
    for (int k = 0; k < v->n; k++) free(v->ids[k]);
    free(v->inp);
    free(v->out);
}

/* Encodes and compares with want; prints the first difference. */
static int encodes_to(const qi_tokenizer *t, const char *text, const int32_t *want, int n_want) {
    int32_t *ids;
    int n;
    qi_error err;
    if (qi_tokenizer_encode(t, text, &ids, &n, &err) != QI_OK) {
        fprintf(stderr, "  encode(\"%.40s\") failed: %s\n", text, err.msg);
        return 0;
    }
    int same = n == n_want && (n == 0 || memcmp(ids, want, (size_t)n * sizeof *ids) == 0);
    if (!same) {
        fprintf(stderr, "  \"%.40s\": got %d ids [", text, n);
        for (int i = 0; i < n && i < 16; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, " ], want %d [", n_want);
        for (int i = 0; i < n_want && i < 16; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, " ]\n");
    }
    free(ids);
    return same;
}

static int vectors_exact(const qi_tokenizer *t, const char *label) {
    vectors v;
    int ok = 0;
    CHECK(load_vectors(&v) == 0, "cannot parse %s / %s", VECTORS_INP, VECTORS_OUT);
    for (int k = 0; k < v.n; k++) ok += encodes_to(t, v.texts[k], v.ids[k], v.n_ids[k]);
    printf("  %s: %d/%d vectors exact\n", label, ok, v.n);
    CHECK(v.n == 46, "expected 46 vectors, parsed %d", v.n);
    CHECK(ok == v.n, "%d of %d vectors differ", v.n - ok, v.n);
    free_vectors(&v);
    return ok;
}

/* Ids back to bytes, to check decode(encode(x)) == NFC(x): the fuzz
 * targets' decoder (byte symbols, spec §1.7), ids from 151643 on (the
 * added tokens) copied as text. */
static char *decode(const qi_tokenizer *t, const int32_t *ids, int n, size_t *len) {
    return tokdecode(t, ids, n, 151643, len);
}

/* Pieces of text joined with "|". */
static char *pieces_joined(const qi_tokenizer *t, const char *text) {
    char *norm;
    size_t *bounds;
    int n;
    qi_error err;
    if (qi_tokenizer_pieces(t, text, &norm, &bounds, &n, &err) != QI_OK) {
        fprintf(stderr, "  pieces failed: %s\n", err.msg);
        return NULL;
    }
    char *out = malloc(bounds[n] + (size_t)n + 1), *o = out;
    for (int k = 0; k < n; k++) {
        if (k) *o++ = '|';
        memcpy(o, norm + bounds[k], bounds[k + 1] - bounds[k]);
        o += bounds[k + 1] - bounds[k];
    }
    *o = 0;
    free(norm);
    free(bounds);
    return out;
}

/* ---- claims ---------------------------------------------------------------- */

static void loads_reference_model_tokenizer(void) {
    qi_error err;
    double t0 = qi_now_s();
    qi_status st = qi_tokenizer_load(MODEL_TOKENIZER, &model_tok, &err);
    double dt = qi_now_s() - t0;
    CHECK(st == QI_OK, "%s", err.msg);
    if (st != QI_OK) return;
    printf("  load time (vocab.json + merges.txt + config, no tokenizer.json): %.1f ms\n", dt * 1e3);
    /* (no bound on the time: a test's clock on a shared CI machine proves nothing; bench does speed) */
    CHECK(qi_tokenizer_pad_id(model_tok) == 151643, "pad id %d", qi_tokenizer_pad_id(model_tok));
    const char *s = qi_tokenizer_token(model_tok, 151643);
    CHECK(s && strcmp(s, "<|endoftext|>") == 0, "token 151643 = %s", s ? s : "(null)");
    s = qi_tokenizer_token(model_tok, 220);
    CHECK(s && strcmp(s, "\xC4\xA0") == 0, "token 220 should be the space symbol U+0120");
    s = qi_tokenizer_token(model_tok, 271);
    CHECK(s && strcmp(s, "\xC4\x8A\xC4\x8A") == 0, "token 271 should be two LF symbols");
    CHECK(qi_tokenizer_token(model_tok, 152000) == NULL, "id 152000 is not a token");

    st = qi_tokenizer_load(QWEN25_TOKENIZER, &qwen25_tok, &err);
    CHECK(st == QI_OK, "%s", err.msg);
}

static void reference_merges_file_has_crlf_lines(void) {
    size_t len;
    char *text = read_file(MODEL_TOKENIZER "/merges.txt", &len);
    CHECK(text && strstr(text, "\r\n") != NULL, "the CRLF path is only exercised if merges.txt has CRLF");
    free(text);
}

static void llamacpp_vectors_exact_model_dir(void) {
    REQUIRE(model_tok, "no tokenizer");
    vectors_exact(model_tok, "reference/public/model/tokenizer");
}

static void llamacpp_vectors_exact_qwen25_dir(void) {
    REQUIRE(qwen25_tok, "no tokenizer");
    vectors_exact(qwen25_tok, "tokenizer/qwen2.5");
}

/* spec §1.6 "Worked results from the reference tokenizer". */
typedef struct worked {
    const char *text;
    const char *pieces; /* "|"-joined, or NULL when the spec does not list them */
    int32_t ids[20];
    int n;
} worked;

static const worked WORKED[] = {
    {"IT'S 'S 'Ll 'LL 'll \xE2\x80\x99s", "IT|'S| '|S| '|Ll| '|LL| '|ll| \xE2\x80\x99|s",
     {952, 13272, 364, 50, 364, 43, 75, 364, 4086, 364, 654, 17744, 82}, 13},
    {"don't", "don|'t", {15007, 944}, 2},
    {"a's'", "a|'s|'", {64, 594, 6}, 3},
    {"a\n\n\nb", "a|\n\n\n|b", {64, 1406, 65}, 3},
    {"a \n \n b", "a| \n \n| b", {64, 31906, 293}, 3},
    {"a\t\tb", "a|\t|\tb", {64, 197, 2233}, 3},
    {"x  \t y", "x|  \t| y", {87, 19271, 379}, 3},
    {"  leading", " | leading", {220, 6388}, 2},
    {"trailing  ", "trailing|  ", {376, 14277, 256}, 3},
    {"!!!  ???", "!!!| | ???", {12069, 220, 51317}, 3},
    {"a  !", "a| | !", {64, 220, 753}, 3},
    {"1234567 \xC2\xBD \xC2\xB2 \xE2\x85\xAB \xE2\x91\xA0",
     "1|2|3|4|5|6|7| |\xC2\xBD| |\xC2\xB2| |\xE2\x85\xAB| |\xE2\x91\xA0",
     {16, 17, 18, 19, 20, 21, 22, 220, 26062, 220, 29456, 220, 70467, 104, 220, 48312, 254}, 17},
    {"\r\n\r\n", "\r\n\r\n", {871}, 1},
    {"\xE3\x80\x80\xE5\x85\xA8\xE8\xA7\x92", "\xE3\x80\x80\xE5\x85\xA8\xE8\xA7\x92", {22441, 35987, 63836}, 3},
    {"\xE0\xA4\x95\xE0\xA5\x8D\xE0\xA4\xB7\xE0\xA4\xA4\xE0\xA5\x8D\xE0\xA4\xB0\xE0\xA4\xBF\xE0\xA4\xAF",
     "\xE0\xA4\x95|\xE0\xA5\x8D\xE0\xA4\xB7\xE0\xA4\xA4|\xE0\xA5\x8D\xE0\xA4\xB0|\xE0\xA4\xBF\xE0\xA4\xAF",
     {64704, 30484, 115, 79238, 85033, 42311, 107}, 7},
    {"x\xCC\x80y", "x|\xCC\x80y", {87, 96549, 88}, 3},
    {"\xF0\x9F\x98\x8A\xF0\x9F\x98\x8A hi", "\xF0\x9F\x98\x8A\xF0\x9F\x98\x8A| hi", {144236, 144236, 15588}, 3},
    {"\x1c\x1d", "\x1c\x1d", {216, 217}, 2},
};

static void spec_worked_table_ids_and_pieces(void) {
    REQUIRE(model_tok, "no tokenizer");
    int ok = 0;
    for (size_t k = 0; k < QI_ARRAY_LEN(WORKED); k++) {
        const worked *w = &WORKED[k];
        int same = encodes_to(model_tok, w->text, w->ids, w->n);
        char *p = pieces_joined(model_tok, w->text);
        int pieces_same = p && strcmp(p, w->pieces) == 0;
        CHECK(same, "ids of worked row %zu", k);
        CHECK(pieces_same, "row %zu pieces \"%s\", want \"%s\"", k, p ? p : "?", w->pieces);
        ok += same && pieces_same;
        free(p);
    }
    printf("  %d/%zu worked rows exact (ids and pieces)\n", ok, QI_ARRAY_LEN(WORKED));
}

static void special_tokens_match_inside_text(void) {
    REQUIRE(model_tok, "no tokenizer");
    CHECK(encodes_to(model_tok, "<|im_end|>inside", (int32_t[]){151645, 41350}, 2), "ids differ (printed above)");
    CHECK(encodes_to(model_tok, "a<|im_start|>b<|endoftext|>", (int32_t[]){64, 151644, 65, 151643}, 4), "ids differ (printed above)");
    CHECK(encodes_to(model_tok, "Hello world", (int32_t[]){9707, 1879}, 2), "no BOS/EOS added");
    /* Whitespace beside a special stays in the ordinary neighbour (lstrip/rstrip false):
     * " <|im_end|> " = " " then the special then " ". */
    CHECK(encodes_to(model_tok, " <|im_end|> ", (int32_t[]){220, 151645, 220}, 3), "ids differ (printed above)");
    /* Every one of the 22 specials, back to back. */
    static const char *names[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                                  "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                                  "<|repo_name|>", "<|file_sep|>"};
    char all[512] = "";
    int32_t want[22];
    for (int k = 0; k < 22; k++) {
        strcat(all, names[k]);
        want[k] = 151643 + k;
    }
    CHECK(encodes_to(model_tok, all, want, 22), "all 22 special tokens");
    /* An incomplete special is ordinary text. */
    int32_t *ids;
    int n;
    qi_error err;
    CHECK(qi_tokenizer_encode(model_tok, "<|im_end|", &ids, &n, &err) == QI_OK, "%s", err.msg);
    for (int i = 0; i < n; i++) CHECK(ids[i] < 151643, "\"<|im_end|\" must not give a special id");
    free(ids);
}

static void nfc_is_applied(void) {
    REQUIRE(model_tok, "no tokenizer");
    int32_t *a, *b;
    int na, nb;
    qi_error err;
    CHECK(qi_tokenizer_encode(model_tok, "cafe\xCC\x81", &a, &na, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_tokenizer_encode(model_tok, "caf\xC3\xA9", &b, &nb, &err) == QI_OK, "%s", err.msg);
    CHECK(na == nb && memcmp(a, b, (size_t)na * sizeof *a) == 0, "decomposed and composed e-acute differ");
    free(a);
    free(b);
    CHECK(encodes_to(model_tok, "\xE2\x84\xAA", (int32_t[]){42}, 1), "Kelvin sign -> K");
}

static void whitespace_class_is_unicode_white_space(void) {
    REQUIRE(model_tok, "no tokenizer");
    /* "a" c c "b": whitespace c gives a|c|cb (rule 5c then rule 2); "other" c gives a|cc|b.
     * (U+2000/U+2001 are not listed: NFC turns them into U+2002/U+2003.) */
    static const char *white[] = {"\t", "\x0B", "\x0C", " ", "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80",
                                  "\xE2\x80\x82", "\xE2\x80\x85", "\xE2\x80\x8A", "\xE2\x80\xA8",
                                  "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
    static const char *other[] = {"\xE1\xA0\x8E" /* U+180E */, "\xE2\x80\x8B" /* U+200B */,
                                  "\xEF\xBB\xBF" /* U+FEFF */, "\x1C", "\x1F"};
    char text[32], want[32];
    for (size_t k = 0; k < QI_ARRAY_LEN(white); k++) {
        const char *c = white[k];
        snprintf(text, sizeof text, "a%s%sb", c, c);
        snprintf(want, sizeof want, "a|%s|%sb", c, c);
        char *p = pieces_joined(model_tok, text);
        CHECK(p && strcmp(p, want) == 0, "whitespace #%zu (first byte 0x%02X) split as \"%s\"", k,
              (unsigned char)c[0], p ? p : "?");
        free(p);
    }
    for (size_t k = 0; k < QI_ARRAY_LEN(other); k++) {
        const char *c = other[k];
        snprintf(text, sizeof text, "a%s%sb", c, c);
        snprintf(want, sizeof want, "a|%s%s|b", c, c);
        char *p = pieces_joined(model_tok, text);
        CHECK(p && strcmp(p, want) == 0, "non-whitespace #%zu split as \"%s\"", k, p ? p : "?");
        free(p);
    }
    /* U+FEFF before a word attaches to it (rule 2); after a space it joins the
     * space as punctuation (rule 4). */
    char *p = pieces_joined(model_tok, "x\xEF\xBB\xBFword \xEF\xBB\xBFword");
    CHECK(p && strcmp(p, "x|\xEF\xBB\xBFword| \xEF\xBB\xBF|word") == 0, "got \"%s\"", p ? p : "?");
    free(p);
}

static void empty_text_gives_no_ids(void) {
    REQUIRE(model_tok, "no tokenizer");
    int32_t *ids = NULL;
    int n = -1;
    qi_error err;
    CHECK(qi_tokenizer_encode(model_tok, "", &ids, &n, &err) == QI_OK, "%s", err.msg);
    CHECK(n == 0 && ids != NULL, "n = %d", n);
    free(ids);
}

static void invalid_utf8_is_an_argument_error_with_offset(void) {
    REQUIRE(model_tok, "no tokenizer");
    static const struct {
        const char *text;
        size_t offset;
    } bad[] = {
        {"ab\x80", 2},                 /* lone continuation byte */
        {"\xC0\xAF", 0},               /* overlong '/' */
        {"x\xE0\x80\xAF", 1},          /* overlong 3-byte */
        {"\xED\xA0\x80", 0},           /* UTF-16 surrogate */
        {"ok\xF4\x90\x80\x80", 2},     /* above U+10FFFF */
        {"\xF5\x80\x80\x80", 0},       /* invalid lead byte */
        {"abc\xE4\xB8", 3},            /* truncated at the end */
        {"abc\xE4\xB8z", 3},           /* truncated in the middle */
        {"\xFF", 0},
        {"<|im_start|>\xFE", 12},      /* after a special token */
        {"caf\xC3\xA9 \xC3", 6},
    };
    for (size_t k = 0; k < QI_ARRAY_LEN(bad); k++) {
        int32_t *ids = (int32_t *)1;
        int n = 7;
        qi_error err = {{0}};
        qi_status st = qi_tokenizer_encode(model_tok, bad[k].text, &ids, &n, &err);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad[k].offset);
        CHECK(st == QI_ERR_ARG, "case %zu: status %d", k, (int)st);
        CHECK(strstr(err.msg, want) != NULL, "case %zu: message \"%s\" lacks \"%s\"", k, err.msg, want);
        CHECK(ids == NULL && n == 0, "case %zu: outputs not cleared", k);
    }
}

static void decode_of_encode_gives_the_text_back(void) {
    REQUIRE(model_tok, "no tokenizer");
    vectors v;
    CHECK(load_vectors(&v) == 0, "cannot parse the llama.cpp vectors");
    int ok = 0;
    for (int k = 0; k < v.n; k++) {
        int32_t *ids;
        int n;
        size_t len;
        qi_error err;
        if (qi_tokenizer_encode(model_tok, v.texts[k], &ids, &n, &err) != QI_OK) continue;
        char *back = decode(model_tok, ids, n, &len);
        /* The vectors are NFC already except for none; compare bytes. */
        ok += back && len == strlen(v.texts[k]) && memcmp(back, v.texts[k], len) == 0;
        free(back);
        free(ids);
    }
    CHECK(ok == v.n, "%d/%d round trips", ok, v.n);
    free_vectors(&v);
}

/* A temp tokenizer dir: vocab.json + the given merges + config files. */
static int make_dir(char dir[static 64], const char *merges, size_t merges_len, int with_config,
                    int with_added) {
    if (tmp_dir_make(dir, 64, "tok") != 0) return -1;
    char path[256];
    size_t len;
    char *vocab = read_file(MODEL_TOKENIZER "/vocab.json", &len);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    int rc = vocab ? write_file(path, vocab, len) : -1;
    free(vocab);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (rc == 0 && merges) rc = write_file(path, merges, merges_len);
    const char *names[2] = {"tokenizer_config.json", "added_tokens.json"};
    int want[2] = {with_config, with_added};
    for (int k = 0; k < 2 && rc == 0; k++) {
        if (!want[k]) continue;
        char src[256];
        snprintf(src, sizeof src, "%s/%s", MODEL_TOKENIZER, names[k]);
        char *text = read_file(src, &len);
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        rc = text ? write_file(path, text, len) : -1;
        free(text);
    }
    return rc;
}

static void lf_merges_load_and_agree(void) {
    size_t len;
    char *crlf = read_file(MODEL_TOKENIZER "/merges.txt", &len);
    REQUIRE(crlf, "no merges.txt");
    size_t o = 0;
    for (size_t i = 0; i < len; i++)
        if (!(crlf[i] == '\r' && i + 1 < len && crlf[i + 1] == '\n')) crlf[o++] = crlf[i];
    char dir[64];
    CHECK(make_dir(dir, crlf, o, 0, 1) == 0, "cannot write temp dir");
    free(crlf);
    qi_tokenizer *t = NULL;
    qi_error err;
    qi_status st = qi_tokenizer_load(dir, &t, &err); /* added_tokens.json only, no config */
    CHECK(st == QI_OK, "%s", err.msg);
    if (t) {
        CHECK(vectors_exact(t, "LF merges.txt + added_tokens.json only") == 46,
              "failed");
        CHECK(qi_tokenizer_pad_id(t) == 151643, "pad defaults to <|endoftext|>: %d", qi_tokenizer_pad_id(t));
    }
    qi_tokenizer_free(t);
    tmp_remove_tree(dir);
}

/* A temp tokenizer dir (as make_dir; merges NULL: no merges.txt) must fail to
 * load with `status`, a message holding `expect`, and *out left NULL. */
static void expect_dir_error(const char *merges, int with_config, int with_added, qi_status status,
                             const char *expect) {
    char dir[64];
    qi_tokenizer *t = (qi_tokenizer *)1;
    qi_error err;
    CHECK(make_dir(dir, merges, merges ? strlen(merges) : 0, with_config, with_added) == 0,
          "cannot write a temp dir under /tmp");
    CHECK(qi_tokenizer_load(dir, &t, &err) == status && strstr(err.msg, expect), "%s", err.msg);
    CHECK(t == NULL, "a failed load must leave *out NULL");
    tmp_remove_tree(dir);
}

static void bad_tokenizer_dirs_are_errors(void) {
    qi_tokenizer *t = (qi_tokenizer *)1;
    qi_error err;
    CHECK(qi_tokenizer_load("/nonexistent/tokenizer", &t, &err) == QI_ERR_IO && t == NULL, "%s", err.msg);
    CHECK(strstr(err.msg, "/nonexistent/tokenizer") != NULL, "message names the dir: %s", err.msg);

    expect_dir_error(NULL, 1, 1, QI_ERR_IO, "merges.txt");
    expect_dir_error("#version: 0.2\r\n\xC4\xA0 \xC4\xA0\r\nabc\r\n", 1, 1, QI_ERR_FORMAT, "line 3");
    expect_dir_error("#version: 0.2\n\xC4\xA0 \xC4\xA0\nzzqq\xE2\x82\xAC xy\n", 1, 1, QI_ERR_FORMAT,
                     "not in vocab.json");
    expect_dir_error("#version: 0.2\n\xC4\xA0 \xC4\xA0\n", 0, 0, QI_ERR_FORMAT, "added_tokens.json");
}

/* vocab.json with an id that is not an integer in range: the message names
 * the token. load_vocab used to free the JSON tree before the message read
 * the key (issue 15: heap-use-after-free under ASan, garbage bytes in the
 * message of a release build). */
static void bad_vocab_id_names_the_token(void) {
    static const struct {
        const char *vocab, *token;
    } cases[] = {
        {"{\"a\": 1, \"b\": \"x\"}", "\"b\""},
        {"{\"a\": 1, \"bad_token_key\": -1}", "\"bad_token_key\""},
        {"{\"a\": 1, \"half\": 1.5}", "\"half\""},
        {"{\"huge\": 1e10, \"a\": 1}", "\"huge\""},
        {"{\"a\": 1, \"nil\": null}", "\"nil\""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char dir[64];
        REQUIRE(tmp_dir_make(dir, sizeof dir, "tokvocab") == 0, "cannot make a temp dir");
        CHECK(write_text_in(dir, "vocab.json", cases[k].vocab) == 0 &&
                  write_text_in(dir, "merges.txt", "#version: 0.2\n") == 0,
              "cannot write %s", dir);
        qi_tokenizer *t = NULL;
        qi_error err = {{0}};
        qi_status st = qi_tokenizer_load(dir, &t, &err);
        printf("  %s\n", err.msg);
        CHECK(st == QI_ERR_FORMAT && t == NULL, "%s: status %d", cases[k].vocab, st);
        char want[96];
        snprintf(want, sizeof want, "token %s has id that is not an integer", cases[k].token);
        CHECK(strstr(err.msg, want) && strstr(err.msg, "vocab.json"), "%s: message %s", cases[k].vocab, err.msg);
        qi_tokenizer_free(t);
        tmp_remove_tree(dir);
    }
}

/* A config whose special has lstrip/rstrip (absorbs the whitespace beside it)
 * and pad_token null; added_tokens_decoder alone, no added_tokens.json. */
static void config_lstrip_rstrip_and_null_pad(void) {
    REQUIRE(model_tok, "no tokenizer");
    size_t len;
    char *merges = read_file(MODEL_TOKENIZER "/merges.txt", &len);
    char dir[64], path[128];
    CHECK(merges && make_dir(dir, merges, len, 0, 0) == 0, "cannot write a temp dir under /tmp");
    free(merges);
    static const char config[] =
        "{\"added_tokens_decoder\": {\"151645\": {\"content\": \"<|im_end|>\", \"lstrip\": true, "
        "\"rstrip\": true, \"normalized\": false, \"single_word\": false, \"special\": true}}, "
        "\"pad_token\": null}";
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK(write_file(path, config, sizeof config - 1) == 0, "cannot write %s", path);
    qi_tokenizer *t = NULL;
    qi_error err;
    CHECK(qi_tokenizer_load(dir, &t, &err) == QI_OK, "%s", err.msg);
    if (t) {
        CHECK(qi_tokenizer_pad_id(t) == -1, "pad_token null: %d", qi_tokenizer_pad_id(t));
        CHECK(encodes_to(t, "a \xE3\x80\x80<|im_end|>\t\n b", (int32_t[]){64, 151645, 65}, 3),
              "whitespace on both sides is absorbed");
        CHECK(encodes_to(t, "<|im_start|>", (int32_t[]){27, 91, 318, 4906, 91, 29}, 6),
              "<|im_start|> is ordinary text when not an added token");
    }
    qi_tokenizer_free(t);
    tmp_remove_tree(dir);
}

static void long_inputs_are_fast_and_exact(void) {
    REQUIRE(model_tok, "no tokenizer");
    /* 200k spaces then a word; 100k CJK chars with no break (one 300 kB piece);
     * 1 MB of mixed text. Each must round-trip. */
    const size_t big = 1 << 20;
    char *text = malloc(big + 1);
    const char *kinds[3] = {"spaces", "cjk", "mixed"};
    for (int kind = 0; kind < 3; kind++) {
        size_t n = 0;
        if (kind == 0) {
            memset(text, ' ', 200000);
            n = 200000;
            memcpy(text + n, "word", 4);
            n += 4;
        } else if (kind == 1) {
            for (int i = 0; i < 100000; i++, n += 3) memcpy(text + n, i % 2 ? "\xE7\x8C\xAB" : "\xE5\xA4\xAA", 3);
        } else {
            static const char chunk[] = "The quick brown fox, 42 times!\r\n\tJumps  over\xE3\x80\x80\xE6\x97\xA5\xE6\x9C\xAC "
                                        "don't   \xF0\x9F\x98\x8A ";
            while (n + sizeof chunk < big) {
                memcpy(text + n, chunk, sizeof chunk - 1);
                n += sizeof chunk - 1;
            }
        }
        text[n] = 0;
        int32_t *ids;
        int n_ids;
        size_t len;
        qi_error err;
        double t0 = qi_now_s();
        qi_status st = qi_tokenizer_encode(model_tok, text, &ids, &n_ids, &err);
        double dt = qi_now_s() - t0;
        CHECK(st == QI_OK, "%s: %s", kinds[kind], err.msg);
        if (st != QI_OK) continue;
        char *back = decode(model_tok, ids, n_ids, &len);
        CHECK(back && len == n && memcmp(back, text, n) == 0, "%s: round trip", kinds[kind]);
        printf("  %s: %zu bytes -> %d ids in %.1f ms\n", kinds[kind], n, n_ids, dt * 1e3);
        CHECK(dt < 5.0, "%s: %.2f s", kinds[kind], dt);
        free(back);
        free(ids);
    }
    free(text);
}

static void null_arguments_are_errors(void) {
    int32_t *ids;
    int n;
    qi_error err;
    CHECK(qi_tokenizer_encode(NULL, "x", &ids, &n, &err) == QI_ERR_ARG, "NULL tokenizer");
    CHECK(qi_tokenizer_encode(model_tok, NULL, &ids, &n, &err) == QI_ERR_ARG, "NULL text");
    CHECK(qi_tokenizer_load(NULL, NULL, &err) == QI_ERR_ARG, "NULL dir and out");
    qi_tokenizer_free(NULL);
}

/* ---- claims: the tokenizer of a GGUF file ------------------------------------------------ */

/* Every prompt of the case.json files of a reference folder (public/ or
 * formats/) into texts[]; returns the new count. The cJSON trees stay in
 * roots[] for the strings' lifetime. */
static int collect_prompts(const char *dir, const char **texts, int n, int cap, cJSON **roots, int *n_roots) {
    DIR *d = opendir(dir);
    if (!d) return n;
    for (struct dirent *e; (e = readdir(d)) && *n_roots < 64;) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s/case.json", dir, e->d_name);
        if (e->d_name[0] == '.' || !qi_file_exists(path)) continue;
        cJSON *j = NULL;
        qi_error err;
        if (qi_json_load(path, &j, &err) != QI_OK) continue;
        roots[(*n_roots)++] = j;
        static const char *const keys[] = {"prompts", "prompt", "negative_prompt"};
        for (size_t k = 0; k < QI_ARRAY_LEN(keys); k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
            if (cJSON_IsString(v) && n < cap) texts[n++] = v->valuestring;
            for (const cJSON *it = cJSON_IsArray(v) ? v->child : NULL; it && n < cap; it = it->next)
                if (cJSON_IsString(it)) texts[n++] = it->valuestring;
        }
    }
    closedir(d);
    return n;
}

/* The tokenizer built from the GGUF's metadata is the folder's: the same
 * string for every id the folder knows, the same pad id, and the same ids
 * on the llama.cpp vectors and on every prompt of the reference cases
 * (public/ and formats/), alone and inside the prompt template; and the
 * te_gguf_q8_0 case's input_ids from its prompt strings. */
static void gguf_tokenizer_equals_folder_tokenizer(void) {
    if (!qi_file_exists(TE_GGUF)) {
        printf("  (skipped: %s absent; ../shared/reference/formats is not beside this checkout)\n", TE_GGUF);
        return;
    }
    qi_gguf_file *f = NULL;
    qi_tokenizer *g = NULL;
    qi_error err = {{0}};
    qi_status st = qi_gguf_open(TE_GGUF, &f, &err);
    CHECK(st == QI_OK && qi_tokenizer_gguf_has(f), "%s", err.msg);
    if (st == QI_OK) st = qi_tokenizer_load_gguf(f, &g, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    if (st != QI_OK) {
        qi_gguf_close(f);
        return;
    }
    int same_strings = 0, known = 0;
    for (int32_t id = 0; id < 152064; id++) {
        const char *a = qi_tokenizer_token(model_tok, id), *b = qi_tokenizer_token(g, id);
        if (!a) continue;
        known++;
        same_strings += b && strcmp(a, b) == 0;
    }
    printf("  GGUF tokenizer: %d of %d ids have the folder's string; pad %d (folder %d)\n", same_strings, known,
           qi_tokenizer_pad_id(g), qi_tokenizer_pad_id(model_tok));
    CHECK(known == 151665 && same_strings == known, "%d of %d ids differ", known - same_strings, known);
    CHECK(qi_tokenizer_pad_id(g) == qi_tokenizer_pad_id(model_tok), "pad ids differ");
    CHECK(qi_tokenizer_token(g, 151665) == NULL, "[PAD151665] got an id");
    vectors_exact(g, "GGUF tokenizer");

    const char *texts[128];
    cJSON *roots[64];
    int n_roots = 0, n = 0;
    n = collect_prompts(QI_REF_PUBLIC, texts, n, 128, roots, &n_roots);
    n = collect_prompts(FORMATS, texts, n, 128, roots, &n_roots);
    int same = 0;
    for (int i = 0; i < n; i++) {
        qi_prompt_batch a = {0}, b = {0};
        const char *one[1] = {texts[i]};
        int ok = qi_prompt_tokenize(model_tok, one, 1, 512, &a, &err) == QI_OK &&
                 qi_prompt_tokenize(g, one, 1, 512, &b, &err) == QI_OK && a.seq_len == b.seq_len &&
                 memcmp(a.ids, b.ids, (size_t)a.seq_len * sizeof *a.ids) == 0;
        int32_t *ids;
        int n_ids;
        if (ok && qi_tokenizer_encode(model_tok, texts[i], &ids, &n_ids, &err) == QI_OK) {
            ok = encodes_to(g, texts[i], ids, n_ids);
            free(ids);
        }
        same += ok;
        qi_prompt_batch_free(&a);
        qi_prompt_batch_free(&b);
    }
    printf("  GGUF tokenizer: %d of %d reference prompts give the folder's ids (alone and in the template)\n",
           same, n);
    CHECK(n >= 8 && same == n, "%d of %d prompts differ", n - same, n);

    /* the fixture's own ids: case te_gguf_q8_0, both prompts padded together */
    qi_st_file *ref = ref_open(FORMATS "/te_gguf_q8_0/tensors.safetensors");
    const qi_st_tensor *want = ref ? qi_st_file_find(ref, "batch.input_ids") : NULL;
    cJSON *json = NULL;
    CHECK(qi_json_load(FORMATS "/te_gguf_q8_0/case.json", &json, &err) == QI_OK && want, "te_gguf_q8_0: %s", err.msg);
    if (want && json) {
        const char *prompts[2];
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(json, "prompts");
        prompts[0] = cJSON_GetArrayItem(arr, 0)->valuestring;
        prompts[1] = cJSON_GetArrayItem(arr, 1)->valuestring;
        qi_prompt_batch b = {0};
        st = qi_prompt_tokenize(g, prompts, 2, 512, &b, &err);
        int32_t *w = malloc(want->nbytes);
        memcpy(w, want->data, want->nbytes);
        int ok = st == QI_OK && b.batch * b.seq_len == (int)(want->nbytes / 4) &&
                 memcmp(b.ids, w, want->nbytes) == 0;
        printf("  te_gguf_q8_0 batch.input_ids from the GGUF tokenizer: %s\n", ok ? "identical" : "DIFFERENT");
        CHECK(ok, "te_gguf_q8_0 input ids differ: %s", err.msg);
        free(w);
        qi_prompt_batch_free(&b);
    }
    cJSON_Delete(json);
    qi_st_close(ref);
    for (int i = 0; i < n_roots; i++) cJSON_Delete(roots[i]);
    qi_tokenizer_free(g);
    qi_gguf_close(f);
}

int main(void) {
    RUN(loads_reference_model_tokenizer);
    RUN(reference_merges_file_has_crlf_lines);
    RUN(llamacpp_vectors_exact_model_dir);
    RUN(llamacpp_vectors_exact_qwen25_dir);
    RUN(spec_worked_table_ids_and_pieces);
    RUN(special_tokens_match_inside_text);
    RUN(nfc_is_applied);
    RUN(whitespace_class_is_unicode_white_space);
    RUN(empty_text_gives_no_ids);
    RUN(invalid_utf8_is_an_argument_error_with_offset);
    RUN(decode_of_encode_gives_the_text_back);
    RUN(lf_merges_load_and_agree);
    RUN(bad_tokenizer_dirs_are_errors);
    RUN(bad_vocab_id_names_the_token);
    RUN(config_lstrip_rstrip_and_null_pad);
    RUN(long_inputs_are_fast_and_exact);
    RUN(null_arguments_are_errors);
    RUN(gguf_tokenizer_equals_folder_tokenizer);
    qi_tokenizer_free(model_tok);
    qi_tokenizer_free(qwen25_tok);
    TEST_END();
}

/*
 * tokenizer.c — the Qwen2 byte-level BPE tokenizer (spec: text-and-noise.md §1).
 *
 * Owns: loading vocab.json / merges.txt / the added tokens into hash maps, the
 * special-token split of raw text, NFC (utf8proc), the pre-tokenizer regex
 * (PCRE2, JIT when available), the byte-symbol mapping and ranked BPE merges.
 *
 * BPE follows the `tokenizers` library (the reference behind transformers
 * 5.x): all mergeable adjacent pairs sit in a min-heap keyed by (rank,
 * position); the smallest is merged, stale entries are skipped, and the pairs
 * the merge creates are pushed. O(n log n) per piece, so a long unbroken run
 * of CJK letters (one piece) stays fast.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>
#include <cjson/cJSON.h>

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

#include "io/gguf.h"
#include "io/model_dir.h" /* qi_json_load */

/* ---- the pre-tokenizer pattern (spec §1.6, verbatim but for \s) -----------
 *
 * PCRE2's \s also matches U+180E (MONGOLIAN VOWEL SEPARATOR), which is not
 * Unicode White_Space since Unicode 6.3 and not whitespace for the reference
 * tokenizer, so the whitespace class is spelled out: exactly the White_Space
 * property. \S is its complement, [^\s...] lists it inside the negation. */
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
           "\\x{202F}\\x{205F}\\x{3000}"

static const char PRETOKENIZE_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}"
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" WS "]*[\\r\\n]+"
    "|[" WS "]+(?![^" WS "])"
    "|[" WS "]+";

/* Ids above this are rejected when loading (keeps the id -> string table small). */
#define MAX_TOKEN_ID (1 << 24)

/* ---- the tokenizer ------------------------------------------------------- */

typedef struct vocab_slot {
    uint32_t offset; /* of the NUL-terminated token string in t->strings */
    uint32_t len;
    int32_t id;      /* -1: empty slot */
} vocab_slot;

typedef struct merge_slot {
    uint64_t pair;   /* left id << 32 | right id */
    int32_t rank;    /* -1: empty slot */
    int32_t merged;  /* id of the concatenated symbol */
} merge_slot;

/* Added tokens are matched on the raw text, before NFC. That is what the
 * reference does for special / normalized=false tokens (all 22 of Qwen's);
 * HF would match a normalized=true token on the NFC text instead. */
typedef struct special_token {
    char *text;
    size_t len;
    int32_t id;
    bool lstrip, rstrip; /* absorb the whitespace on that side (false for Qwen) */
} special_token;

struct qi_tokenizer {
    char *strings; /* every vocab string, NUL-terminated, back to back */
    size_t strings_len, strings_cap;

    vocab_slot *vocab; /* open addressing, linear probing */
    uint32_t vocab_mask;
    int n_vocab;
    uint32_t *id_to_offset; /* [n_id_table]; UINT32_MAX: no vocab string */
    int32_t n_id_table;

    merge_slot *merges;
    uint32_t merge_mask;
    int n_merges;

    int32_t byte_id[256]; /* vocab id of the byte symbol of each byte */

    special_token *specials;
    int n_specials;
    bool special_first_byte[256];

    int32_t pad_id;
    pcre2_code *pretokenizer;
};

/* ---- hashing ------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t table_size_for(size_t n) {
    uint32_t size = 16;
    while (size < 2 * n) size <<= 1;
    return size;
}

/* The vocab id of a byte-symbol string, or -1. */
static int32_t vocab_find(const qi_tokenizer *t, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        const vocab_slot *slot = &t->vocab[i];
        if (slot->id < 0) return -1;
        if (slot->len == n && memcmp(t->strings + slot->offset, s, n) == 0) return slot->id;
    }
}

static const merge_slot *merge_find(const qi_tokenizer *t, int32_t left, int32_t right) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = (uint32_t)hash_pair(pair) & t->merge_mask;
    for (;; i = (i + 1) & t->merge_mask) {
        const merge_slot *slot = &t->merges[i];
        if (slot->rank < 0) return NULL;
        if (slot->pair == pair) return slot;
    }
}

/* ---- UTF-8 ----------------------------------------------------------------- */

/* Offset of the first byte of the first ill-formed sequence (Unicode Table
 * 3-7: no overlongs, no surrogates, nothing above U+10FFFF), or SIZE_MAX. */
static size_t utf8_first_invalid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) need = 2, lo = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC) need = 2;
        else if (c == 0xED) need = 2, hi = 0x9F;
        else if (c >= 0xEE && c <= 0xEF) need = 2;
        else if (c == 0xF0) need = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) need = 3, hi = 0x8F;
        else return i;
        if (n - i <= need) return i; /* truncated at the end */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return SIZE_MAX;
}

/* Decodes the (valid) code point at s[i]; *len gets its byte length. */
static uint32_t utf8_decode(const unsigned char *s, size_t *len) {
    if (s[0] < 0x80) return *len = 1, s[0];
    if (s[0] < 0xE0) return *len = 2, (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    if (s[0] < 0xF0)
        return *len = 3, (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    return *len = 4, (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
                         (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

static size_t utf8_encode(uint32_t c, char *out) {
    if (c < 0x80) return out[0] = (char)c, 1;
    if (c < 0x800) {
        out[0] = (char)(0xC0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Unicode White_Space (the same set as WS above). */
static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

size_t qi_utf8_first_invalid(const char *s, size_t n) {
    return s ? utf8_first_invalid((const unsigned char *)s, n) : 0;
}

/* ---- byte symbols (spec §1.7) -------------------------------------------- */

/* The 188 printable bytes stand for themselves; the other 68, in increasing
 * order, become U+0100, U+0101, ... so no symbol is a space or control. */
static uint32_t byte_symbol(unsigned b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    if (printable) return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) k++;
    return 0x100 + k;
}

/* ---- loading ---------------------------------------------------------------- */

static qi_status strings_append(qi_tokenizer *t, const char *s, size_t n, uint32_t *offset,
                                qi_error *err) {
    if (t->strings_len + n + 1 > t->strings_cap) {
        size_t cap = t->strings_cap ? t->strings_cap : 1 << 20;
        while (cap < t->strings_len + n + 1) cap *= 2;
        if (cap > UINT32_MAX) return qi_fail(err, QI_ERR_FORMAT, "vocab.json: vocabulary strings exceed 4 GiB");
        char *grown = realloc(t->strings, cap);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory for vocab strings");
        t->strings = grown;
        t->strings_cap = cap;
    }
    *offset = (uint32_t)t->strings_len;
    memcpy(t->strings + t->strings_len, s, n);
    t->strings[t->strings_len + n] = 0;
    t->strings_len += n + 1;
    return QI_OK;
}

static qi_status vocab_insert(qi_tokenizer *t, const char *s, size_t n, int32_t id, qi_error *err) {
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        vocab_slot *slot = &t->vocab[i];
        if (slot->id < 0) break;
        if (slot->len == n && memcmp(t->strings + slot->offset, s, n) == 0) {
            slot->id = id; /* a repeated key: the last one wins, as in Python's json */
            t->id_to_offset[id] = slot->offset;
            return QI_OK;
        }
    }
    uint32_t offset = 0;
    qi_status st = strings_append(t, s, n, &offset, err);
    if (st != QI_OK) return st;
    t->vocab[i] = (vocab_slot){offset, (uint32_t)n, id};
    t->id_to_offset[id] = offset;
    t->n_vocab++;
    return QI_OK;
}

/* Strict, with the line of a mistake, nesting bounded (io/model_dir.h). */
static qi_status read_json_file(const char *path, cJSON **out, qi_error *err) {
    return qi_json_load(path, out, err);
}

static qi_status load_vocab(qi_tokenizer *t, const char *dir, qi_error *err) {
    char path[4096];
    if (qi_path_join(path, sizeof path, dir, "vocab.json") != 0)
        return qi_fail(err, QI_ERR_ARG, "tokenizer dir path too long: %s", dir);
    cJSON *root;
    qi_status st = read_json_file(path, &root, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object of token -> id", path);
    }
    int n = cJSON_GetArraySize(root);
    t->vocab_mask = table_size_for((size_t)n) - 1;
    t->vocab = malloc(((size_t)t->vocab_mask + 1) * sizeof *t->vocab);
    int32_t max_id = -1;
    for (const cJSON *e = root->child; e; e = e->next) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (v < 0 || v >= MAX_TOKEN_ID || v != (double)(int32_t)v) {
            /* the message first: e->string belongs to the tree (read after
             * cJSON_Delete it was a use-after-free, issue 15) */
            st = qi_fail(err, QI_ERR_FORMAT, "%s: token \"%.60s\" has id that is not an integer in [0, %d)",
                         path, e->string ? e->string : "?", MAX_TOKEN_ID);
            cJSON_Delete(root);
            return st;
        }
        if ((int32_t)v > max_id) max_id = (int32_t)v;
    }
    t->n_id_table = max_id + 1;
    t->id_to_offset = malloc(((size_t)t->n_id_table + 1) * sizeof *t->id_to_offset);
    if (!t->vocab || !t->id_to_offset) {
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %d tokens", path, n);
    }
    for (uint32_t i = 0; i <= t->vocab_mask; i++) t->vocab[i].id = -1;
    for (int32_t i = 0; i < t->n_id_table; i++) t->id_to_offset[i] = UINT32_MAX;
    for (const cJSON *e = root->child; e && st == QI_OK; e = e->next)
        st = vocab_insert(t, e->string, strlen(e->string), (int32_t)e->valuedouble, err);
    cJSON_Delete(root);
    if (st != QI_OK) return qi_fail_ctx(err, st, "%s", path);
    if (t->n_vocab == 0) return qi_fail(err, QI_ERR_FORMAT, "%s: the vocabulary is empty", path);
    return QI_OK;
}

static void merge_insert(qi_tokenizer *t, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = (uint32_t)hash_pair(pair) & t->merge_mask;
    while (t->merges[i].rank >= 0 && t->merges[i].pair != pair) i = (i + 1) & t->merge_mask;
    if (t->merges[i].rank < 0) t->n_merges++;
    /* A repeated rule keeps its last rank, as `tokenizers` and the slow
     * tokenizer (dict of rule -> line index) both do. */
    t->merges[i] = (merge_slot){pair, rank, merged};
}

/* One rule "left right" (n bytes at line, not terminated) of rank `rank`;
 * `joined` has room for n bytes. `path` and `line_no` name it in errors. */
static qi_status merge_rule(qi_tokenizer *t, const char *line, size_t n, char *joined, const char *path,
                            const char *vocab_name, size_t line_no, int32_t rank, qi_error *err) {
    const char *space = memchr(line, ' ', n);
    if (!space || space == line || space == line + n - 1 || memchr(space + 1, ' ', (size_t)(line + n - space - 1)))
        return qi_fail(err, QI_ERR_FORMAT, "%s line %zu: expected two symbols separated by one space, got \"%.*s\"",
                       path, line_no, (int)(n < 80 ? n : 80), line);
    size_t left_len = (size_t)(space - line), right_len = n - left_len - 1;
    int32_t left = vocab_find(t, line, left_len);
    int32_t right = vocab_find(t, space + 1, right_len);
    memcpy(joined, line, left_len);
    memcpy(joined + left_len, space + 1, right_len);
    int32_t merged = vocab_find(t, joined, left_len + right_len);
    if (left < 0 || right < 0 || merged < 0) {
        const char *missing = left < 0 ? line : right < 0 ? space + 1 : joined;
        int missing_len = (int)(left < 0 ? left_len : right < 0 ? right_len : left_len + right_len);
        return qi_fail(err, QI_ERR_FORMAT, "%s line %zu: symbol \"%.*s\" is not in %s (are these the merges of that "
                       "vocabulary?)", path, line_no, missing_len < 80 ? missing_len : 80, missing, vocab_name);
    }
    merge_insert(t, left, right, rank, merged);
    return QI_OK;
}

/* merges.txt: optional "#version" first line, then "left right" per line.
 * Lines may end in LF or CRLF; blank lines are skipped. Rank = index of the
 * rule among the rule lines. */
static qi_status load_merges(qi_tokenizer *t, const char *dir, qi_error *err) {
    char path[4096];
    if (qi_path_join(path, sizeof path, dir, "merges.txt") != 0)
        return qi_fail(err, QI_ERR_ARG, "tokenizer dir path too long: %s", dir);
    char *text;
    size_t len;
    qi_status st = qi_read_text_file(path, &text, &len, err);
    if (st != QI_OK) return st;

    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    t->merge_mask = table_size_for(n_lines) - 1;
    t->merges = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merges);
    char *joined = malloc(len + 1); /* left+right of one rule */
    if (!t->merges || !joined) {
        free(text);
        free(joined);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %zu rules", path, n_lines);
    }
    for (uint32_t i = 0; i <= t->merge_mask; i++) t->merges[i].rank = -1;

    int32_t rank = 0;
    size_t line_no = 0;
    for (char *line = text; line < text + len && st == QI_OK;) {
        char *eol = memchr(line, '\n', (size_t)(text + len - line));
        if (!eol) eol = text + len;
        char *next = eol + 1;
        line_no++;
        size_t n = (size_t)(eol - line);
        if (n > 0 && line[n - 1] == '\r') n--;
        bool header = line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0;
        if (n == 0 || header) {
            line = next;
            continue;
        }
        st = merge_rule(t, line, n, joined, path, "vocab.json", line_no, rank++, err);
        line = next;
    }
    free(text);
    free(joined);
    return st;
}

static qi_status add_special(qi_tokenizer *t, const char *text, int32_t id, bool lstrip, bool rstrip,
                             const char *path, qi_error *err) {
    size_t len = strlen(text);
    if (len == 0) return qi_fail(err, QI_ERR_FORMAT, "%s: added token %d has empty content", path, id);
    if (id < 0 || id >= MAX_TOKEN_ID)
        return qi_fail(err, QI_ERR_FORMAT, "%s: added token \"%s\" has id %d outside [0, %d)", path, text, id, MAX_TOKEN_ID);
    if (utf8_first_invalid((const unsigned char *)text, len) != SIZE_MAX)
        return qi_fail(err, QI_ERR_FORMAT, "%s: added token %d is not valid UTF-8", path, id);
    for (int k = 0; k < t->n_specials; k++) {
        special_token *s = &t->specials[k];
        if (s->len == len && memcmp(s->text, text, len) == 0) {
            if (s->id != id)
                return qi_fail(err, QI_ERR_FORMAT, "%s: added token \"%s\" has id %d here but %d in tokenizer_config.json",
                               path, text, id, s->id);
            return QI_OK; /* the same entry from the other file */
        }
    }
    special_token *grown = realloc(t->specials, (size_t)(t->n_specials + 1) * sizeof *grown);
    char *copy = malloc(len + 1);
    if (grown) t->specials = grown;
    if (!grown || !copy) {
        free(copy);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for added tokens", path);
    }
    memcpy(copy, text, len + 1);
    t->specials[t->n_specials++] = (special_token){copy, len, id, lstrip, rstrip};
    t->special_first_byte[(unsigned char)text[0]] = true;
    return QI_OK;
}

/* tokenizer_config.json: added_tokens_decoder {"<id>": {"content", "lstrip", ...}}
 * and pad_token ("<|endoftext|>" or {"content": ...} or null). */
static qi_status load_config(qi_tokenizer *t, const char *path, char **pad_token, bool *pad_null,
                             qi_error *err) {
    cJSON *root;
    qi_status st = read_json_file(path, &root, err);
    if (st != QI_OK) return st;
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "added_tokens_decoder");
    for (const cJSON *e = cJSON_IsObject(decoder) ? decoder->child : NULL; e && st == QI_OK; e = e->next) {
        char *end;
        long id = strtol(e->string, &end, 10);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (*end != 0 || !cJSON_IsString(content)) {
            st = qi_fail(err, QI_ERR_FORMAT, "%s: added_tokens_decoder entry \"%.40s\" needs an integer key and a string \"content\"",
                         path, e->string);
            break;
        }
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "single_word"))) {
            st = qi_fail(err, QI_ERR_UNSUPPORTED, "%s: added token \"%s\" has single_word=true, which this tokenizer does not implement",
                         path, content->valuestring);
            break;
        }
        st = add_special(t, content->valuestring, (int32_t)(id >= 0 && id < MAX_TOKEN_ID ? id : -1),
                         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "lstrip")),
                         cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "rstrip")), path, err);
    }
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token");
    if (cJSON_IsObject(pad)) pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
    if (st == QI_OK && cJSON_IsString(pad)) {
        size_t n = strlen(pad->valuestring) + 1;
        *pad_token = malloc(n);
        if (*pad_token) memcpy(*pad_token, pad->valuestring, n);
        if (!*pad_token) st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    }
    *pad_null = cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "pad_token"));
    cJSON_Delete(root);
    return st;
}

/* added_tokens.json: {"<|endoftext|>": 151643, ...} */
static qi_status load_added_tokens(qi_tokenizer *t, const char *path, qi_error *err) {
    cJSON *root;
    qi_status st = read_json_file(path, &root, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsObject(root)) st = qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object of token -> id", path);
    for (const cJSON *e = st == QI_OK ? root->child : NULL; e && st == QI_OK; e = e->next) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (v < 0 || v >= MAX_TOKEN_ID || v != (double)(int32_t)v) {
            st = qi_fail(err, QI_ERR_FORMAT, "%s: token \"%.60s\" needs an integer id in [0, %d)", path,
                         e->string, MAX_TOKEN_ID);
            break;
        }
        st = add_special(t, e->string, (int32_t)v, false, false, path, err);
    }
    cJSON_Delete(root);
    return st;
}

static int32_t special_id(const qi_tokenizer *t, const char *text) {
    for (int k = 0; k < t->n_specials; k++)
        if (strcmp(t->specials[k].text, text) == 0) return t->specials[k].id;
    return -1;
}

static qi_status load_specials_and_pad(qi_tokenizer *t, const char *dir, qi_error *err) {
    char config_path[4096], added_path[4096];
    if (qi_path_join(config_path, sizeof config_path, dir, "tokenizer_config.json") != 0 ||
        qi_path_join(added_path, sizeof added_path, dir, "added_tokens.json") != 0)
        return qi_fail(err, QI_ERR_ARG, "tokenizer dir path too long: %s", dir);
    bool have_config = qi_file_exists(config_path), have_added = qi_file_exists(added_path);
    char *pad_token = NULL;
    bool pad_null = false;
    qi_status st = QI_OK;
    if (have_config) st = load_config(t, config_path, &pad_token, &pad_null, err);
    if (st == QI_OK && have_added) st = load_added_tokens(t, added_path, err);
    if (st == QI_OK && t->n_specials == 0)
        st = qi_fail(err, QI_ERR_FORMAT, "%s: no special tokens found: needs tokenizer_config.json "
                     "(added_tokens_decoder) or added_tokens.json", dir);
    if (st == QI_OK) {
        const char *name = pad_token ? pad_token : "<|endoftext|>";
        t->pad_id = special_id(t, name);
        if (t->pad_id < 0) t->pad_id = vocab_find(t, name, strlen(name));
        if (pad_null) t->pad_id = -1;
        else if (t->pad_id < 0 && pad_token)
            st = qi_fail(err, QI_ERR_FORMAT, "%s: pad_token \"%s\" is neither an added token nor in vocab.json",
                         config_path, pad_token);
    }
    free(pad_token);
    return st;
}

static qi_status compile_pretokenizer(qi_tokenizer *t, qi_error *err) {
    int code;
    PCRE2_SIZE at;
    t->pretokenizer = pcre2_compile((PCRE2_SPTR)PRETOKENIZE_PATTERN, PCRE2_ZERO_TERMINATED,
                                    PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
    if (!t->pretokenizer) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return qi_fail(err, QI_ERR_UNSUPPORTED, "tokenizer: PCRE2 rejects the pre-tokenizer pattern at %zu: %s "
                       "(needs PCRE2 built with Unicode support)", (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(t->pretokenizer, PCRE2_JIT_COMPLETE); /* optional: the interpreter gives the same pieces */
    return QI_OK;
}

/* The vocab id of each byte's symbol: every byte-level BPE vocabulary has all 256. */
static qi_status find_byte_symbols(qi_tokenizer *t, const char *where, qi_error *err) {
    for (unsigned b = 0; b < 256; b++) {
        char sym[4];
        size_t n = utf8_encode(byte_symbol(b), sym);
        t->byte_id[b] = vocab_find(t, sym, n);
        if (t->byte_id[b] < 0)
            return qi_fail(err, QI_ERR_FORMAT, "%s: the byte symbol \"%.*s\" of byte 0x%02X is missing from the "
                           "vocabulary (not a byte-level BPE vocabulary?)", where, (int)n, sym, b);
    }
    return QI_OK;
}

qi_status qi_tokenizer_load(const char *tokenizer_dir, qi_tokenizer **out, qi_error *err) {
    if (!out) return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_load: out is NULL");
    *out = NULL;
    if (!tokenizer_dir) return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_load: tokenizer_dir is NULL");
    if (!qi_dir_exists(tokenizer_dir))
        return qi_fail(err, QI_ERR_IO, "%s: tokenizer directory not found (expected <model>/tokenizer)", tokenizer_dir);
    qi_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
    t->pad_id = -1;

    qi_status st = load_vocab(t, tokenizer_dir, err);
    if (st == QI_OK) st = load_merges(t, tokenizer_dir, err);
    if (st == QI_OK) st = find_byte_symbols(t, tokenizer_dir, err);
    if (st == QI_OK) st = load_specials_and_pad(t, tokenizer_dir, err);
    if (st == QI_OK) st = compile_pretokenizer(t, err);
    if (st != QI_OK) {
        qi_tokenizer_free(t);
        return st;
    }
    *out = t;
    return QI_OK;
}

/* ---- from a GGUF file's metadata (llama.cpp `gpt2` tokenizer) ------------------------------ */

/* llama.cpp token types (tokenizer.ggml.token_type). */
enum { GGUF_TOKEN_NORMAL = 1, GGUF_TOKEN_UNKNOWN = 2, GGUF_TOKEN_CONTROL = 3, GGUF_TOKEN_USER = 4,
       GGUF_TOKEN_UNUSED = 5, GGUF_TOKEN_BYTE = 6 };

/* A byte-level BPE with the Qwen2 pre-tokenizer is what this file builds;
 * another model or pre-tokenizer would give other ids, so it is refused. */
static qi_status gguf_check_kind(const qi_gguf_file *f, qi_error *err) {
    const char *model, *pre;
    size_t model_len, pre_len;
    qi_status st = qi_gguf_get_string(f, "tokenizer.ggml.model", &model, &model_len, err);
    if (st == QI_OK) st = qi_gguf_get_string(f, "tokenizer.ggml.pre", &pre, &pre_len, err);
    if (st != QI_OK) return st;
    if (model_len != 4 || memcmp(model, "gpt2", 4) != 0 || pre_len != 5 || memcmp(pre, "qwen2", 5) != 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: tokenizer.ggml.model '%.*s' with pre-tokenizer '%.*s'; only Qwen2's byte-level BPE "
                       "('gpt2' + 'qwen2') is implemented", qi_gguf_path(f), (int)(model_len < 32 ? model_len : 32),
                       model, (int)(pre_len < 32 ? pre_len : 32), pre);
    return QI_OK;
}

/* tokenizer.ggml.tokens + token_type: normal tokens form the vocabulary,
 * control / user-defined ones are the added tokens (matched on the raw
 * text, as added_tokens.json's), unused ones (llama.cpp's [PAD…] fill up to
 * the embedding rows) are left out, as the folder tokenizer has no id for
 * them either. */
static qi_status gguf_vocab(qi_tokenizer *t, const qi_gguf_file *f, qi_error *err) {
    qi_gguf_array tokens, types;
    qi_status st = qi_gguf_get_array(f, "tokenizer.ggml.tokens", &tokens, err);
    if (st == QI_OK) st = qi_gguf_get_array(f, "tokenizer.ggml.token_type", &types, err);
    if (st != QI_OK) return st;
    if (types.count != tokens.count || tokens.count == 0 || tokens.count >= MAX_TOKEN_ID)
        return qi_fail(err, QI_ERR_FORMAT, "%s: %llu tokens but %llu token types (expected as many, in [1, %d))",
                       qi_gguf_path(f), (unsigned long long)tokens.count, (unsigned long long)types.count,
                       MAX_TOKEN_ID);
    t->vocab_mask = table_size_for((size_t)tokens.count) - 1;
    t->vocab = malloc(((size_t)t->vocab_mask + 1) * sizeof *t->vocab);
    t->n_id_table = (int32_t)tokens.count;
    t->id_to_offset = malloc(((size_t)t->n_id_table + 1) * sizeof *t->id_to_offset);
    if (!t->vocab || !t->id_to_offset)
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for %llu tokens", qi_gguf_path(f),
                       (unsigned long long)tokens.count);
    for (uint32_t i = 0; i <= t->vocab_mask; i++) t->vocab[i].id = -1;
    for (int32_t i = 0; i < t->n_id_table; i++) t->id_to_offset[i] = UINT32_MAX;
    char special[256];
    for (uint64_t i = 0; i < tokens.count && st == QI_OK; i++) {
        const char *text;
        size_t len;
        int64_t type;
        if ((st = qi_gguf_array_string(&tokens, i, &text, &len, err)) ||
            (st = qi_gguf_array_int(&types, i, &type, err)))
            break;
        if (type == GGUF_TOKEN_NORMAL || type == GGUF_TOKEN_BYTE) {
            st = vocab_insert(t, text, len, (int32_t)i, err);
        } else if (type == GGUF_TOKEN_CONTROL || type == GGUF_TOKEN_USER) {
            if (len >= sizeof special || memchr(text, 0, len))
                st = qi_fail(err, QI_ERR_FORMAT, "%s: added token %llu is longer than %zu bytes or holds a NUL",
                             qi_gguf_path(f), (unsigned long long)i, sizeof special - 1);
            else {
                memcpy(special, text, len);
                special[len] = 0;
                st = add_special(t, special, (int32_t)i, false, false, qi_gguf_path(f), err);
            }
        }
    }
    if (st == QI_OK && t->n_vocab == 0)
        st = qi_fail(err, QI_ERR_FORMAT, "%s: tokenizer.ggml.tokens has no normal token", qi_gguf_path(f));
    return st;
}

/* tokenizer.ggml.merges: "left right" strings, rank = index (merges.txt's lines). */
static qi_status gguf_merges(qi_tokenizer *t, const qi_gguf_file *f, qi_error *err) {
    qi_gguf_array merges;
    qi_status st = qi_gguf_get_array(f, "tokenizer.ggml.merges", &merges, err);
    if (st != QI_OK) return st;
    if (merges.count >= MAX_TOKEN_ID)
        return qi_fail(err, QI_ERR_FORMAT, "%s: %llu merges (at most %d)", qi_gguf_path(f),
                       (unsigned long long)merges.count, MAX_TOKEN_ID);
    t->merge_mask = table_size_for((size_t)merges.count + 1) - 1;
    t->merges = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merges);
    char *joined = NULL;
    size_t joined_cap = 0;
    if (!t->merges) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory for merges", qi_gguf_path(f));
    for (uint32_t i = 0; i <= t->merge_mask; i++) t->merges[i].rank = -1;
    char where[4200];
    snprintf(where, sizeof where, "%s: tokenizer.ggml.merges", qi_gguf_path(f));
    for (uint64_t i = 0; i < merges.count && st == QI_OK; i++) {
        const char *rule;
        size_t len;
        if ((st = qi_gguf_array_string(&merges, i, &rule, &len, err))) break;
        if (len + 1 > joined_cap) {
            char *grown = realloc(joined, 2 * len + 1);
            if (!grown) {
                st = qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", where);
                break;
            }
            joined = grown;
            joined_cap = 2 * len + 1;
        }
        st = merge_rule(t, rule, len, joined, where, "tokenizer.ggml.tokens", (size_t)i, (int32_t)i, err);
    }
    free(joined);
    return st;
}

/* The padding id: tokenizer.ggml.padding_token_id, else "<|endoftext|>" as
 * for a folder without a pad_token. */
static qi_status gguf_pad(qi_tokenizer *t, const qi_gguf_file *f, qi_error *err) {
    if (qi_gguf_has_key(f, "tokenizer.ggml.padding_token_id")) {
        int64_t id;
        qi_status st = qi_gguf_get_int(f, "tokenizer.ggml.padding_token_id", &id, err);
        if (st != QI_OK) return st;
        if (id < 0 || id >= t->n_id_table)
            return qi_fail(err, QI_ERR_FORMAT, "%s: tokenizer.ggml.padding_token_id %lld is not a token",
                           qi_gguf_path(f), (long long)id);
        t->pad_id = (int32_t)id;
        return QI_OK;
    }
    t->pad_id = special_id(t, "<|endoftext|>");
    return QI_OK;
}

qi_status qi_tokenizer_load_gguf(const qi_gguf_file *f, qi_tokenizer **out, qi_error *err) {
    if (!out) return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_load_gguf: out is NULL");
    *out = NULL;
    if (!f) return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_load_gguf: no file");
    qi_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
    t->pad_id = -1;
    qi_status st = gguf_check_kind(f, err);
    if (st == QI_OK) st = gguf_vocab(t, f, err);
    if (st == QI_OK) st = gguf_merges(t, f, err);
    if (st == QI_OK) st = find_byte_symbols(t, qi_gguf_path(f), err);
    if (st == QI_OK && t->n_specials == 0)
        st = qi_fail(err, QI_ERR_FORMAT, "%s: no control tokens in tokenizer.ggml.token_type (the special tokens)",
                     qi_gguf_path(f));
    if (st == QI_OK) st = gguf_pad(t, f, err);
    if (st == QI_OK) st = compile_pretokenizer(t, err);
    if (st != QI_OK) {
        qi_tokenizer_free(t);
        return st;
    }
    *out = t;
    return QI_OK;
}

int qi_tokenizer_gguf_has(const qi_gguf_file *f) {
    return f && qi_gguf_has_key(f, "tokenizer.ggml.tokens") && qi_gguf_has_key(f, "tokenizer.ggml.merges");
}

void qi_tokenizer_free(qi_tokenizer *t) {
    if (!t) return;
    for (int k = 0; k < t->n_specials; k++) free(t->specials[k].text);
    free(t->specials);
    free(t->strings);
    free(t->vocab);
    free(t->id_to_offset);
    free(t->merges);
    if (t->pretokenizer) pcre2_code_free(t->pretokenizer);
    free(t);
}

int32_t qi_tokenizer_pad_id(const qi_tokenizer *t) { return t ? t->pad_id : -1; }

const char *qi_tokenizer_token(const qi_tokenizer *t, int32_t id) {
    if (!t) return NULL;
    for (int k = 0; k < t->n_specials; k++)
        if (t->specials[k].id == id) return t->specials[k].text;
    if (id < 0 || id >= t->n_id_table || t->id_to_offset[id] == UINT32_MAX) return NULL;
    return t->strings + t->id_to_offset[id];
}

/* ---- BPE (spec §1.8) --------------------------------------------------------- */

typedef struct heap_entry {
    int32_t rank, pos, merged;
} heap_entry;

/* Scratch reused across the pieces of one encode call. */
typedef struct bpe_work {
    int32_t *sym, *prev, *next; /* doubly linked list of symbols; sym -1 = merged away */
    size_t cap;
    heap_entry *heap;
    size_t heap_n, heap_cap;
} bpe_work;

typedef struct id_list {
    int32_t *ids;
    size_t n, cap;
} id_list;

static bool id_push(id_list *l, int32_t id) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        int32_t *grown = realloc(l->ids, cap * sizeof *grown);
        if (!grown) return false;
        l->ids = grown;
        l->cap = cap;
    }
    l->ids[l->n++] = id;
    return true;
}

static bool heap_less(heap_entry a, heap_entry b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static bool heap_push(bpe_work *w, heap_entry e) {
    if (w->heap_n == w->heap_cap) {
        size_t cap = w->heap_cap ? w->heap_cap * 2 : 256;
        heap_entry *grown = realloc(w->heap, cap * sizeof *grown);
        if (!grown) return false;
        w->heap = grown;
        w->heap_cap = cap;
    }
    size_t i = w->heap_n++;
    while (i > 0 && heap_less(e, w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = e;
    return true;
}

static heap_entry heap_pop(bpe_work *w) {
    heap_entry top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= w->heap_n) break;
        if (child + 1 < w->heap_n && heap_less(w->heap[child + 1], w->heap[child])) child++;
        if (!heap_less(w->heap[child], last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (w->heap_n > 0) w->heap[i] = last;
    return top;
}

/* Pushes the pair starting at symbol `pos` if it is a rule. */
static bool push_pair(const qi_tokenizer *t, bpe_work *w, int32_t pos) {
    int32_t right = w->next[pos];
    if (right < 0) return true;
    const merge_slot *m = merge_find(t, w->sym[pos], w->sym[right]);
    return !m || heap_push(w, (heap_entry){m->rank, pos, m->merged});
}

static qi_status bpe_piece(const qi_tokenizer *t, bpe_work *w, const unsigned char *bytes, size_t n,
                           id_list *out, qi_error *err) {
    if (n > INT32_MAX / 2) return qi_fail(err, QI_ERR_ARG, "tokenizer: a single piece of %zu bytes is too long", n);
    if (n > w->cap) {
        int32_t *sym = realloc(w->sym, n * sizeof *sym);
        if (sym) w->sym = sym;
        int32_t *prev = realloc(w->prev, n * sizeof *prev);
        if (prev) w->prev = prev;
        int32_t *next = realloc(w->next, n * sizeof *next);
        if (next) w->next = next;
        if (!sym || !prev || !next) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory for a %zu-byte piece", n);
        w->cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = t->byte_id[bytes[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap_n = 0;
    bool ok = true;
    for (size_t i = 0; i + 1 < n && ok; i++) ok = push_pair(t, w, (int32_t)i);

    while (ok && w->heap_n > 0) {
        heap_entry top = heap_pop(w);
        int32_t pos = top.pos, right = w->next[pos];
        if (w->sym[pos] < 0 || right < 0) continue; /* merged away, or now last */
        const merge_slot *m = merge_find(t, w->sym[pos], w->sym[right]);
        if (!m || m->merged != top.merged) continue; /* stale: a neighbour changed */
        w->sym[pos] = top.merged;
        w->sym[right] = -1;
        w->next[pos] = w->next[right];
        if (w->next[pos] >= 0) w->prev[w->next[pos]] = pos;
        if (w->prev[pos] >= 0) ok = push_pair(t, w, w->prev[pos]);
        if (ok) ok = push_pair(t, w, pos);
    }
    for (int32_t i = 0; ok && i >= 0; i = w->next[i]) ok = id_push(out, w->sym[i]);
    return ok ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory during BPE");
}

/* ---- special split, NFC, pre-tokenizer --------------------------------------- */

/* What to do with each unit the walk finds: a special token or a BPE piece. */
typedef struct piece_sink {
    qi_status (*special)(struct piece_sink *k, const special_token *s, qi_error *err);
    qi_status (*piece)(struct piece_sink *k, const char *text, size_t n, qi_error *err);
} piece_sink;

/* Splits one NFC-normalised segment into the regex's matches ("isolated":
 * text between matches would be a piece of its own; the pattern covers every
 * char, so there is none in practice). */
static qi_status split_segment(const qi_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                               piece_sink *k, qi_error *err) {
    size_t gap = 0, search = 0;
    qi_status st = QI_OK;
    while (search < n && st == QI_OK) {
        int rc = pcre2_match(t->pretokenizer, (PCRE2_SPTR)s, n, search, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return qi_fail(err, QI_ERR_ARG, "tokenizer: pre-tokenizer regex failed at byte %zu of a %zu-byte segment: %s",
                           search, n, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t start = ov[0], end = ov[1];
        if (end == start) { /* cannot happen with this pattern; step one char */
            size_t len;
            utf8_decode((const unsigned char *)s + start, &len);
            search = start + len;
            continue;
        }
        if (start > gap) st = k->piece(k, s + gap, start - gap, err);
        if (st == QI_OK) st = k->piece(k, s + start, end - start, err);
        gap = search = end;
    }
    if (st == QI_OK && gap < n) st = k->piece(k, s + gap, n - gap, err);
    return st;
}

static qi_status ordinary_segment(const qi_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                                  piece_sink *k, qi_error *err) {
    if (n == 0) return QI_OK;
    bool ascii = true; /* NFC leaves ASCII alone */
    for (size_t i = 0; i < n && ascii; i++) ascii = (unsigned char)s[i] < 0x80;
    if (ascii) return split_segment(t, md, s, n, k, err);
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nfc_len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                                            UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nfc_len < 0)
        return qi_fail(err, nfc_len == UTF8PROC_ERROR_NOMEM ? QI_ERR_NOMEM : QI_ERR_ARG,
                       "tokenizer: NFC normalisation failed: %s", utf8proc_errmsg(nfc_len));
    qi_status st = split_segment(t, md, (const char *)nfc, (size_t)nfc_len, k, err);
    free(nfc);
    return st;
}

/* The special token starting at s[i] (longest if several), or NULL. */
static const special_token *special_at(const qi_tokenizer *t, const char *s, size_t n, size_t i) {
    if (!t->special_first_byte[(unsigned char)s[i]]) return NULL;
    const special_token *best = NULL;
    for (int k = 0; k < t->n_specials; k++) {
        const special_token *c = &t->specials[k];
        if (c->len <= n - i && memcmp(s + i, c->text, c->len) == 0 && (!best || c->len > best->len)) best = c;
    }
    return best;
}

/* Start of the whitespace run that ends at s[end] (not before `floor`). */
static size_t whitespace_start(const char *s, size_t floor, size_t end) {
    while (end > floor) {
        size_t start = end - 1, len;
        while (start > floor && ((unsigned char)s[start] & 0xC0) == 0x80) start--;
        if (!is_white_space(utf8_decode((const unsigned char *)s + start, &len))) break;
        end = start;
    }
    return end;
}

static qi_status walk_text(const qi_tokenizer *t, const char *utf8, piece_sink *k, qi_error *err) {
    size_t n = strlen(utf8);
    size_t bad = utf8_first_invalid((const unsigned char *)utf8, n);
    if (bad != SIZE_MAX)
        return qi_fail(err, QI_ERR_ARG, "text is not valid UTF-8: bad byte 0x%02X at byte offset %zu",
                       (unsigned char)utf8[bad], bad);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->pretokenizer, NULL);
    if (!md) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory for regex match data");
    qi_status st = QI_OK;
    size_t segment = 0; /* start of the current ordinary segment */
    for (size_t i = 0; i < n && st == QI_OK;) {
        const special_token *s = special_at(t, utf8, n, i);
        if (!s) {
            i++;
            continue;
        }
        size_t segment_end = s->lstrip ? whitespace_start(utf8, segment, i) : i;
        st = ordinary_segment(t, md, utf8 + segment, segment_end - segment, k, err);
        if (st == QI_OK) st = k->special(k, s, err);
        i += s->len;
        if (s->rstrip) {
            size_t len;
            while (i < n && is_white_space(utf8_decode((const unsigned char *)utf8 + i, &len))) i += len;
        }
        segment = i;
    }
    if (st == QI_OK) st = ordinary_segment(t, md, utf8 + segment, n - segment, k, err);
    pcre2_match_data_free(md);
    return st;
}

/* ---- encode ------------------------------------------------------------------------ */

typedef struct encode_sink {
    piece_sink base;
    const qi_tokenizer *t;
    bpe_work work;
    id_list ids;
} encode_sink;

static qi_status encode_special(piece_sink *k, const special_token *s, qi_error *err) {
    encode_sink *e = (encode_sink *)k;
    return id_push(&e->ids, s->id) ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
}

static qi_status encode_piece(piece_sink *k, const char *text, size_t n, qi_error *err) {
    encode_sink *e = (encode_sink *)k;
    return bpe_piece(e->t, &e->work, (const unsigned char *)text, n, &e->ids, err);
}

qi_status qi_tokenizer_encode(const qi_tokenizer *t, const char *utf8, int32_t **ids, int *n_ids,
                              qi_error *err) {
    if (!t || !utf8 || !ids || !n_ids)
        return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_encode: tokenizer, text, ids and n_ids must not be NULL");
    *ids = NULL;
    *n_ids = 0;
    encode_sink e = {{encode_special, encode_piece}, t, {0}, {0}};
    qi_status st = walk_text(t, utf8, &e.base, err);
    if (st == QI_OK && e.ids.n > INT_MAX) st = qi_fail(err, QI_ERR_ARG, "tokenizer: text gives more than INT_MAX ids");
    if (st == QI_OK && !e.ids.ids && !(e.ids.ids = malloc(sizeof *e.ids.ids))) /* empty text: 0 ids */
        st = qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
    free(e.work.sym);
    free(e.work.prev);
    free(e.work.next);
    free(e.work.heap);
    if (st != QI_OK) {
        free(e.ids.ids);
        return st;
    }
    *ids = e.ids.ids;
    *n_ids = (int)e.ids.n;
    return QI_OK;
}

/* ---- pieces (for tests and the CLI) ------------------------------------------------ */

typedef struct pieces_sink {
    piece_sink base;
    char *text;
    size_t len, cap;
    size_t *bounds;
    size_t n_bounds, bounds_cap;
} pieces_sink;

static qi_status pieces_add(piece_sink *k, const char *text, size_t n, qi_error *err) {
    pieces_sink *p = (pieces_sink *)k;
    if (p->len + n + 1 > p->cap) {
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->len + n + 1) cap *= 2;
        char *grown = realloc(p->text, cap);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
        p->text = grown;
        p->cap = cap;
    }
    if (p->n_bounds + 2 > p->bounds_cap) { /* bounds[n_bounds + 1] is written */
        size_t cap = p->bounds_cap ? p->bounds_cap * 2 : 64;
        size_t *grown = realloc(p->bounds, cap * sizeof *grown);
        if (!grown) return qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
        p->bounds = grown;
        p->bounds_cap = cap;
    }
    memcpy(p->text + p->len, text, n);
    p->len += n;
    p->text[p->len] = 0;
    p->n_bounds++;
    p->bounds[p->n_bounds] = p->len;
    return QI_OK;
}

static qi_status pieces_special(piece_sink *k, const special_token *s, qi_error *err) {
    return pieces_add(k, s->text, s->len, err);
}

qi_status qi_tokenizer_pieces(const qi_tokenizer *t, const char *utf8, char **text, size_t **bounds,
                              int *n_pieces, qi_error *err) {
    if (!t || !utf8 || !text || !bounds || !n_pieces)
        return qi_fail(err, QI_ERR_ARG, "qi_tokenizer_pieces: no argument may be NULL");
    *text = NULL;
    *bounds = NULL;
    *n_pieces = 0;
    pieces_sink p = {{pieces_special, pieces_add}, NULL, 0, 0, NULL, 0, 0};
    p.text = malloc(1);
    p.bounds = malloc(64 * sizeof *p.bounds);
    p.bounds_cap = 64;
    qi_status st = p.text && p.bounds ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "tokenizer: out of memory");
    if (st == QI_OK) {
        p.text[0] = 0;
        p.bounds[0] = 0;
        st = walk_text(t, utf8, &p.base, err);
    }
    if (st == QI_OK && p.n_bounds > INT_MAX) st = qi_fail(err, QI_ERR_ARG, "tokenizer: too many pieces");
    if (st != QI_OK) {
        free(p.text);
        free(p.bounds);
        return st;
    }
    *text = p.text;
    *bounds = p.bounds;
    *n_pieces = (int)p.n_bounds;
    return QI_OK;
}

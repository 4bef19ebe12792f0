/*
 * fuzz_tokenizer_encode.c — arbitrary bytes through the Qwen2.5 tokenizer
 * (tests/data/tiny-model/tokenizer, loaded once): special-token cutting,
 * NFC, the pre-tokenizer regex, byte symbols and BPE merges.
 *
 * The input up to its first NUL byte is the text. Oracles:
 *   - ill-formed UTF-8 (qi_utf8_first_invalid) is QI_ERR_ARG naming the byte
 *     offset, with no ids;
 *   - well-formed text encodes, every id names a token, and the ids decode
 *     (byte symbols back to bytes, added tokens as their text) to exactly the
 *     text qi_tokenizer_pieces gives (the NFC-normalised pieces back to back):
 *     BPE loses and invents no byte;
 *   - the pieces tile that text in order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/tokenizer.h"
#include "tokdecode.h"

static qi_tokenizer *tok;
static int32_t first_added; /* ids from here on are added tokens: <|endoftext|> is the first */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    qi_error err;
    if (qi_tokenizer_load(QI_TEST_DATA "/tiny-model/tokenizer", &tok, &err) != QI_OK) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s\n", err.msg);
        abort();
    }
    first_added = qi_tokenizer_pad_id(tok);
    const char *eot = qi_tokenizer_token(tok, first_added);
    if (!eot || strcmp(eot, "<|endoftext|>") != 0 || qi_tokenizer_token(tok, first_added - 1) == NULL) {
        fprintf(stderr, "fuzz_tokenizer_encode: expected <|endoftext|> as the pad and first added token\n");
        abort();
    }
    return 0;
}

static void check_pieces(const char *text, char **norm, size_t *norm_len) {
    size_t *bounds;
    int n;
    qi_error err;
    if (qi_tokenizer_pieces(tok, text, norm, &bounds, &n, &err) != QI_OK)
        fuzz_fail("pieces refuse text that encodes: %s", err.msg);
    if (bounds[0] != 0) fuzz_fail("the first piece starts at %zu", bounds[0]);
    for (int k = 0; k < n; k++)
        if (bounds[k + 1] <= bounds[k]) fuzz_fail("piece %d is empty or out of order", k);
    *norm_len = bounds[n];
    if (strlen(*norm) != *norm_len) fuzz_fail("the pieces' text has %zu bytes, bounds say %zu", strlen(*norm), *norm_len);
    free(bounds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_strndup(data, size);
    size_t len = strlen(text), bad = qi_utf8_first_invalid(text, len);
    int32_t *ids = (int32_t *)1;
    int n = -1;
    qi_error err;
    qi_status st = qi_tokenizer_encode(tok, text, &ids, &n, &err);
    if (bad != SIZE_MAX) {
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad);
        if (st != QI_ERR_ARG || !strstr(err.msg, want) || ids || n)
            fuzz_fail("ill-formed UTF-8 at %zu: status %d, message %s", bad, st, st ? err.msg : "");
        free(text);
        return 0;
    }
    if (st != QI_OK) fuzz_fail("well-formed text refused: %s", err.msg);
    size_t back_len = 0, norm_len = 0;
    char *back = tokdecode(tok, ids, n, first_added, &back_len), *norm = NULL;
    if (!back) fuzz_fail("an id names no token or a token is not byte symbols");
    check_pieces(text, &norm, &norm_len);
    if (back_len != norm_len || memcmp(back, norm, norm_len) != 0)
        fuzz_fail("decode(encode(text)) differs from the normalised text (%zu vs %zu bytes)", back_len, norm_len);
    free(norm);
    free(back);
    free(ids);
    free(text);
    return 0;
}

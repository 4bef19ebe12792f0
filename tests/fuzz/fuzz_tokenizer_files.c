/*
 * fuzz_tokenizer_files.c — a tokenizer folder built from the input:
 * vocab.json, merges.txt, tokenizer_config.json, added_tokens.json and a
 * text, cut at FUZZ_SEP lines in that order (a part the input does not
 * reach is a missing file), loaded with qi_tokenizer_load and, when it
 * loads, encoding the text.
 *
 * Oracles beyond the sanitizers: a refusal has a message (naming the folder's
 * file where one is at fault); an accepted folder encodes well-formed text
 * into ids that all name tokens, refuses ill-formed text with QI_ERR_ARG,
 * and its pad id is -1 or a token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/tokenizer.h"

static const char *const files[] = {"tok/vocab.json", "tok/merges.txt", "tok/tokenizer_config.json",
                                    "tok/added_tokens.json"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_mkdir("tok");
    return 0;
}

static void encode(const qi_tokenizer *t, const fuzz_part *text) {
    char *s = fuzz_strndup(text->p, text->n);
    int32_t *ids = NULL;
    int n = 0;
    qi_error err;
    qi_status st = qi_tokenizer_encode(t, s, &ids, &n, &err);
    int valid = qi_utf8_first_invalid(s, strlen(s)) == SIZE_MAX;
    if (valid && st != QI_OK) fuzz_fail("well-formed text refused: %s", err.msg);
    if (!valid && st != QI_ERR_ARG) fuzz_fail("ill-formed text: status %d", st);
    for (int i = 0; i < n; i++)
        if (!qi_tokenizer_token(t, ids[i])) fuzz_fail("id %d names no token", ids[i]);
    free(ids);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[5];
    int found = fuzz_split(data, size, parts, 5);
    char path[1024];
    for (int i = 0; i < 4; i++) {
        if (i < found) fuzz_put(files[i], parts[i].p, parts[i].n, path, sizeof path);
        else fuzz_unlink(files[i]);
    }
    snprintf(path, sizeof path, "%s/tok", fuzz_dir());
    qi_tokenizer *t = NULL;
    qi_error err;
    qi_status st = qi_tokenizer_load(path, &t, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NULL);
        if (t) fuzz_fail("a refused folder gave a tokenizer");
        return 0;
    }
    int32_t pad = qi_tokenizer_pad_id(t);
    if (pad != -1 && !qi_tokenizer_token(t, pad)) fuzz_fail("pad id %d names no token", pad);
    encode(t, &parts[4]);
    qi_tokenizer_free(t);
    return 0;
}

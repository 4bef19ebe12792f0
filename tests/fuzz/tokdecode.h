/*
 * tokdecode.h — ids back to bytes for the tokenizer targets' round-trip
 * oracle (and test_tokenizer.c's round-trip claims): a token's string is byte symbols (spec text-and-noise.md §1.7:
 * the 188 printable bytes stand for themselves, the other 68 are written
 * U+0100 + their rank among the non-printable ones), an added token's
 * string is its own text.
 */
#ifndef QI_FUZZ_TOKDECODE_H
#define QI_FUZZ_TOKDECODE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

static inline int tokdecode_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

/* The byte a symbol (a code point) stands for, or -1. */
static inline int tokdecode_symbol(uint32_t c) {
    if (c < 0x100) return tokdecode_printable((int)c) ? (int)c : -1;
    if (c > 0x143) return -1;
    int k = (int)(c - 0x100);
    for (int b = 0; b < 256; b++)
        if (!tokdecode_printable(b) && k-- == 0) return b;
    return -1;
}

/* Concatenated bytes of ids (those >= first_added are added tokens, copied
 * as text); malloc'd, length in *len; NULL if an id names no token or a
 * token is not byte symbols. */
static inline char *tokdecode(const qi_tokenizer *t, const int32_t *ids, int n, int32_t first_added, size_t *len) {
    size_t cap = 1;
    for (int i = 0; i < n; i++) {
        const char *s = qi_tokenizer_token(t, ids[i]);
        if (!s) return NULL;
        cap += strlen(s);
    }
    char *out = malloc(cap);
    if (!out) abort();
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *s = (const unsigned char *)qi_tokenizer_token(t, ids[i]);
        if (ids[i] >= first_added) {
            memcpy(out + o, s, strlen((const char *)s));
            o += strlen((const char *)s);
            continue;
        }
        while (*s) {
            uint32_t c;
            if (*s < 0x80) c = *s++;
            else if ((*s & 0xE0) == 0xC0 && (s[1] & 0xC0) == 0x80) c = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F), s += 2;
            else c = UINT32_MAX, s++;
            int b = tokdecode_symbol(c);
            if (b < 0) {
                free(out);
                return NULL;
            }
            out[o++] = (char)b;
        }
    }
    out[o] = 0;
    *len = o;
    return out;
}

#endif

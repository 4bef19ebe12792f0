/*
 * tokenizer.h — the Qwen2 byte-level BPE tokenizer (what Qwen2Tokenizer does
 * for Qwen-Image's text encoder), built from the checkpoint's `tokenizer/`
 * folder: vocab.json + merges.txt + the added tokens of tokenizer_config.json
 * and/or added_tokens.json. tokenizer.json is not needed (and not read).
 *
 * encode(text):
 *   1. the 22 special tokens (<|im_start|>, <|endoftext|>, ...) are cut out of
 *      the raw text wherever they occur, even inside a user's prompt;
 *   2. each ordinary segment is NFC-normalised (utf8proc),
 *   3. split by the Qwen2 pre-tokenizer regex (PCRE2, spec §1.6),
 *   4. each piece's UTF-8 bytes become byte symbols (spec §1.7) and are merged
 *      by the ranked BPE rules of merges.txt (spec §1.8).
 * No BOS/EOS, no prefix space. Spec: shared/docs/spec/text-and-noise.md §1.
 *
 * A loaded tokenizer is immutable: encode may be called from several threads.
 */
#ifndef QI_TOKENIZER_H
#define QI_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct qi_tokenizer qi_tokenizer;

/* Loads `tokenizer_dir` (e.g. "<model>/tokenizer"). Needs vocab.json,
 * merges.txt (LF or CRLF line ends) and at least one of tokenizer_config.json
 * (added_tokens_decoder, pad_token) / added_tokens.json. */
qi_status qi_tokenizer_load(const char *tokenizer_dir, qi_tokenizer **out, qi_error *err);
void qi_tokenizer_free(qi_tokenizer *t);

/* The same tokenizer from a llama.cpp GGUF's metadata (a `qwen2vl` text
 * encoder file): tokenizer.ggml.model 'gpt2' with pre 'qwen2', tokens +
 * token_type (normal → vocabulary, control / user-defined → added tokens,
 * unused [PAD…] fill → no id), merges ("left right", rank = index),
 * padding_token_id. Gives the ids the folder tokenizer gives. */
struct qi_gguf_file;
qi_status qi_tokenizer_load_gguf(const struct qi_gguf_file *f, qi_tokenizer **out, qi_error *err);
/* 1 if f carries a tokenizer (tokens and merges). */
int qi_tokenizer_gguf_has(const struct qi_gguf_file *f);

/* Encodes NUL-terminated UTF-8 text. *ids is malloc'ed (never NULL on
 * success, even for 0 ids); the caller frees it. Invalid UTF-8 is QI_ERR_ARG
 * with the byte offset of the first bad byte in the message. */
qi_status qi_tokenizer_encode(const qi_tokenizer *t, const char *utf8, int32_t **ids, int *n_ids,
                              qi_error *err);

/* The padding id: tokenizer_config.json's pad_token (151643 "<|endoftext|>"
 * for Qwen-Image; "<|endoftext|>" when the key is absent), or -1 when the
 * config sets it to null. */
int32_t qi_tokenizer_pad_id(const qi_tokenizer *t);

/* The token string of an id as written in the files (byte symbols, e.g.
 * "Ġworld" for " world", or the special token's text), or NULL for an id the
 * tokenizer does not know. Valid while t lives. */
const char *qi_tokenizer_token(const qi_tokenizer *t, int32_t id);

/* The pieces encode would feed to BPE (plus one piece per special token), for
 * tests and `qwen-image tokenize`: *text is the NFC-normalised text of all
 * pieces back to back, piece k is text[bounds[k] .. bounds[k+1]). Both are
 * malloc'ed; the caller frees them. */
qi_status qi_tokenizer_pieces(const qi_tokenizer *t, const char *utf8, char **text,
                              size_t **bounds, int *n_pieces, qi_error *err);

/* Offset of the first byte of the first ill-formed UTF-8 sequence in s[0..n)
 * (overlongs, surrogates and code points above U+10FFFF are ill-formed), or
 * SIZE_MAX when all of it is valid. */
size_t qi_utf8_first_invalid(const char *s, size_t n);

#endif

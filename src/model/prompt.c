/*
 * prompt.c — Qwen-Image prompt template, truncation and right padding
 * (diffusers QwenImagePipeline._get_qwen_prompt_embeds, up to the text
 * encoder call). See prompt.h for the contract with the text encoder.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/prompt.h"

qi_status qi_prompt_template(const char *prompt, char **out, qi_error *err) {
    if (!prompt || !out) return qi_fail(err, QI_ERR_ARG, "qi_prompt_template: prompt and out must not be NULL");
    static const char prefix[] = QI_PROMPT_TEMPLATE_PREFIX, suffix[] = QI_PROMPT_TEMPLATE_SUFFIX;
    size_t n = strlen(prompt);
    *out = malloc(sizeof prefix - 1 + n + sizeof suffix);
    if (!*out) return qi_fail(err, QI_ERR_NOMEM, "prompt: out of memory for a %zu-byte prompt", n);
    memcpy(*out, prefix, sizeof prefix - 1);
    memcpy(*out + sizeof prefix - 1, prompt, n);
    memcpy(*out + sizeof prefix - 1 + n, suffix, sizeof suffix); /* with the NUL */
    return QI_OK;
}

void qi_prompt_batch_free(qi_prompt_batch *b) {
    if (!b) return;
    free(b->ids);
    free(b->mask);
    free(b->n_ids);
    free(b->encode_len);
    free(b->embed_len);
    memset(b, 0, sizeof *b);
}

static int min_int(int a, int b) { return a < b ? a : b; }

qi_status qi_prompt_tokenize(const qi_tokenizer *t, const char *const *prompts, int n_prompts,
                             int max_sequence_length, qi_prompt_batch *out, qi_error *err) {
    if (!out) return qi_fail(err, QI_ERR_ARG, "qi_prompt_tokenize: out is NULL");
    memset(out, 0, sizeof *out);
    if (!t || !prompts || n_prompts < 1)
        return qi_fail(err, QI_ERR_ARG, "qi_prompt_tokenize: needs a tokenizer and at least one prompt (got %d)", n_prompts);
    if (max_sequence_length < 1 || max_sequence_length > QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT)
        return qi_fail(err, QI_ERR_ARG, "max_sequence_length must be in [1, %d], got %d",
                       QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT, max_sequence_length);
    int32_t pad = qi_tokenizer_pad_id(t);
    if (pad < 0)
        return qi_fail(err, QI_ERR_FORMAT, "prompt: the tokenizer has no pad token (tokenizer_config.json pad_token is null)");

    /* Each templated prompt, tokenized and cut to its first 1058 ids. */
    int32_t **rows = calloc((size_t)n_prompts, sizeof *rows);
    out->n_ids = calloc((size_t)n_prompts, sizeof *out->n_ids);
    out->encode_len = calloc((size_t)n_prompts, sizeof *out->encode_len);
    out->embed_len = calloc((size_t)n_prompts, sizeof *out->embed_len);
    qi_status st = rows && out->n_ids && out->encode_len && out->embed_len
                       ? QI_OK
                       : qi_fail(err, QI_ERR_NOMEM, "prompt: out of memory for %d prompts", n_prompts);
    for (int b = 0; b < n_prompts && st == QI_OK; b++) {
        if (!prompts[b]) {
            st = qi_fail(err, QI_ERR_ARG, "prompt %d is NULL", b);
            break;
        }
        size_t bad = qi_utf8_first_invalid(prompts[b], strlen(prompts[b]));
        if (bad != SIZE_MAX) {
            st = qi_fail(err, QI_ERR_ARG, "prompt %d is not valid UTF-8: bad byte 0x%02X at byte offset %zu", b,
                         (unsigned char)prompts[b][bad], bad);
            break;
        }
        char *text;
        st = qi_prompt_template(prompts[b], &text, err);
        if (st != QI_OK) break;
        st = qi_tokenizer_encode(t, text, &rows[b], &out->n_ids[b], err);
        free(text);
        if (st != QI_OK) {
            qi_fail_ctx(err, st, "prompt %d", b);
            break;
        }
        out->n_ids[b] = min_int(out->n_ids[b], QI_PROMPT_MAX_IDS);
        if (out->n_ids[b] > out->seq_len) out->seq_len = out->n_ids[b];
    }

    /* Right padding to the longest row. */
    out->batch = n_prompts;
    out->max_sequence_length = max_sequence_length;
    size_t cells = (size_t)n_prompts * (size_t)out->seq_len;
    if (st == QI_OK) {
        out->ids = malloc((cells ? cells : 1) * sizeof *out->ids);
        out->mask = malloc((cells ? cells : 1) * sizeof *out->mask);
        if (!out->ids || !out->mask) st = qi_fail(err, QI_ERR_NOMEM, "prompt: out of memory for %zu ids", cells);
    }
    for (int b = 0; b < n_prompts && st == QI_OK; b++) {
        int32_t *ids = out->ids + (size_t)b * out->seq_len, *mask = out->mask + (size_t)b * out->seq_len;
        for (int i = 0; i < out->seq_len; i++) {
            int real = i < out->n_ids[b];
            ids[i] = real ? rows[b][i] : pad;
            mask[i] = real;
        }
        /* What the text encoder keeps of this row (prompt.h, steps 1-3). */
        int after_drop = out->n_ids[b] > QI_PROMPT_DROP_IDX ? out->n_ids[b] - QI_PROMPT_DROP_IDX : 0;
        out->embed_len[b] = min_int(after_drop, max_sequence_length);
        out->encode_len[b] = min_int(out->n_ids[b], QI_PROMPT_DROP_IDX + max_sequence_length);
        if (out->embed_len[b] > out->embed_seq_len) out->embed_seq_len = out->embed_len[b];
    }
    for (int b = 0; b < n_prompts && st == QI_OK; b++)
        if (out->embed_len[b] != out->embed_seq_len) out->needs_mask = 1;

    for (int b = 0; rows && b < n_prompts; b++) free(rows[b]);
    free(rows);
    if (st != QI_OK) qi_prompt_batch_free(out);
    return st;
}

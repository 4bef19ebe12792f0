/*
 * prompt.h — Qwen-Image prompt preparation: the chat template around each
 * prompt and the batched token ids / attention mask the text encoder gets,
 * exactly as diffusers QwenImagePipeline._get_qwen_prompt_embeds builds
 * `txt_tokens.input_ids` / `.attention_mask` (spec: text-and-noise.md §1.9, §2).
 *
 * What the reference does, and what this module returns:
 *
 *   txt[b] = TEMPLATE with "{}" replaced by prompts[b] (verbatim, no escaping)
 *   ids[b] = tokenize(txt[b]) as ONE text (the template's "user\n" and the
 *            prompt's first chars are one ordinary segment: a prompt starting
 *            with "\n" changes id 33 from 198 to 271, and 34 are still dropped)
 *   truncation: ids[b] = first QI_PROMPT_MAX_IDS (= 1024 + 34 = 1058) ids.
 *            NOTE: the tokenizer's max_length is tokenizer_max_length + 34
 *            with tokenizer_max_length fixed at 1024 in the pipeline; it does
 *            NOT depend on max_sequence_length (that cut comes later, on the
 *            embeddings). Truncation keeps the FIRST ids: a cut prompt loses
 *            the template's closing "<|im_end|>\n<|im_start|>assistant\n".
 *   padding: to the longest row, on the right, with the pad id (151643);
 *            mask 1 for real ids, 0 for padding.
 *
 * ---- what the text-encoder step must do with a qi_prompt_batch ----------------
 *
 * For each row b (n = n_ids[b] = number of 1s in mask[b], all at the front):
 *
 *   1. H_b = text encoder on ids[b, 0:n] (causal, positions 0..n-1), taking
 *      hidden_states[-1] = the output AFTER the final RMSNorm, [n, hidden].
 *      Running the padded batch with the mask gives the same valid rows
 *      (right padding + causal mask: no valid position sees a pad), so each
 *      row may be run alone and unpadded.
 *      Shortcut (exact): only rows < 34 + max_sequence_length are ever kept,
 *      so the encoder need only run on the first encode_len[b] =
 *      min(n, 34 + max_sequence_length) ids.
 *   2. drop: E_b = H_b[34 : n]           (n - 34 rows; the template prefix goes)
 *   3. cut:  E_b = E_b[0 : embed_len[b]], embed_len[b] = min(n - 34, max_sequence_length)
 *   4. repad: prompt_embeds [batch, embed_seq_len, hidden] with
 *      embed_seq_len = max_b embed_len[b]; row b = E_b followed by ZERO rows
 *      (zeros, not the encoder's output at pad positions);
 *      prompt_embeds_mask [batch, embed_seq_len] = embed_len[b] ones, then 0.
 *      Cast prompt_embeds to the text encoder's dtype (bf16 normally).
 *   5. If every mask entry is 1 (needs_mask == 0: one prompt, or all rows of
 *      the same embed_len) the pipeline passes NO mask (None) to the
 *      transformer; otherwise it passes prompt_embeds_mask.
 *
 * The negative prompt (true CFG) is a separate qi_prompt_tokenize call with
 * its own batch, lengths and mask: it is not padded to the positive length.
 * num_images_per_prompt = k > 1 (diffusers quirk, reproduce it): embeddings
 * are repeated per prompt [e0 x k, e1 x k, ...] but the mask is tiled over
 * the batch [m0, m1, ..., m0, m1, ...] (repeat(1, k) then view).
 */
#ifndef QI_PROMPT_H
#define QI_PROMPT_H

#include <stdint.h>

#include "base/base.h"
#include "model/tokenizer.h"

/* The template, split at the "{}" where the prompt goes (diffusers
 * prompt_template_encode; every "\n" is one LF). */
#define QI_PROMPT_TEMPLATE_PREFIX                                                                 \
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "      \
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"           \
    "<|im_start|>user\n"
#define QI_PROMPT_TEMPLATE_SUFFIX "<|im_end|>\n<|im_start|>assistant\n"

#define QI_PROMPT_DROP_IDX 34              /* prompt_template_encode_start_idx */
#define QI_PROMPT_TOKENIZER_MAX_LENGTH 1024 /* the pipeline's tokenizer_max_length */
#define QI_PROMPT_MAX_IDS (QI_PROMPT_TOKENIZER_MAX_LENGTH + QI_PROMPT_DROP_IDX) /* 1058 */
#define QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT 1024 /* check_inputs rejects more */
#define QI_PROMPT_DEFAULT_MAX_SEQUENCE_LENGTH 512 /* __call__'s default */

typedef struct qi_prompt_batch {
    int batch;               /* number of prompts */
    int seq_len;             /* padded length of ids = longest row after truncation (<= 1058) */
    int32_t *ids;            /* [batch * seq_len] row-major: reference `input_ids` */
    int32_t *mask;           /* [batch * seq_len] 1 real / 0 pad: reference `attention_mask` */
    int *n_ids;              /* [batch] real ids per row (sum of mask row) */
    int max_sequence_length; /* as given */
    int *encode_len;         /* [batch] min(n_ids, 34 + max_sequence_length): ids the encoder must see */
    int *embed_len;          /* [batch] min(n_ids - 34, max_sequence_length): rows of prompt_embeds */
    int embed_seq_len;       /* max of embed_len: prompt_embeds is [batch, embed_seq_len, hidden] */
    int needs_mask;          /* 0: every embed_len == embed_seq_len, the pipeline passes no mask */
} qi_prompt_batch;

/* Wraps a prompt in the template: PREFIX + prompt + SUFFIX, malloc'ed
 * (for `qwen-image tokenize --template`). */
qi_status qi_prompt_template(const char *prompt, char **out, qi_error *err);

/* Templates and tokenizes n_prompts prompts (UTF-8) into *out (overwritten;
 * free with qi_prompt_batch_free). max_sequence_length must be in
 * [1, 1024]; it does not change ids/mask, only encode_len/embed_len.
 * Invalid UTF-8 in a prompt is QI_ERR_ARG naming the prompt and byte offset. */
qi_status qi_prompt_tokenize(const qi_tokenizer *t, const char *const *prompts, int n_prompts,
                             int max_sequence_length, qi_prompt_batch *out, qi_error *err);

void qi_prompt_batch_free(qi_prompt_batch *b);

#endif

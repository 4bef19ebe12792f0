/*
 * edit_prompt.c — the Edit template, image-pad expansion and M-RoPE grid
 * positions (see edit_prompt.h). Reference read: diffusers
 * QwenImageEditPlusPipeline._get_qwen_prompt_embeds, transformers
 * Qwen2VLProcessor (pad expansion) and Qwen2.5-VL get_rope_index (4.x).
 */
#include "model/edit_prompt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qi_edit_tokens_free(qi_edit_tokens *tok) {
    if (!tok) return;
    free(tok->ids);
    free(tok->pos);
    memset(tok, 0, sizeof *tok);
}

/* The template text with one picture group per picture (pads not expanded). */
static char *edit_text(const char *prompt, int n_pictures) {
    size_t cap = sizeof QI_EDIT_TEMPLATE_PREFIX + sizeof QI_EDIT_TEMPLATE_SUFFIX + strlen(prompt) +
                 (size_t)n_pictures * (sizeof QI_EDIT_PICTURE_FORMAT + 16);
    char *text = malloc(cap);
    if (!text) return NULL;
    size_t len = (size_t)snprintf(text, cap, "%s", QI_EDIT_TEMPLATE_PREFIX);
    for (int k = 0; k < n_pictures; k++) len += (size_t)snprintf(text + len, cap - len, QI_EDIT_PICTURE_FORMAT, k + 1);
    snprintf(text + len, cap - len, "%s%s", prompt, QI_EDIT_TEMPLATE_SUFFIX);
    return text;
}

/* Expands the k-th pad id of raw[0..n_raw) to tokens[k] copies, filling
 * ids and positions; returns QI_OK or an error when the pad count is off. */
static qi_status expand(const int32_t *raw, int n_raw, int n_pictures, const int (*grid_hw)[2], int merge,
                        int plain, qi_edit_tokens *out, qi_error *err) {
    int32_t *t = out->pos, *h = out->pos + out->n, *w = out->pos + 2 * out->n;
    int k = 0, j = 0;
    int32_t next = 0; /* position of the next text token (grid positions) */
    for (int i = 0; i < n_raw; i++) {
        if (raw[i] != QI_EDIT_IMAGE_PAD_ID) {
            out->ids[j] = raw[i];
            t[j] = h[j] = w[j] = plain ? j : next++;
            j++;
            continue;
        }
        if (k >= n_pictures)
            return qi_fail(err, QI_ERR_ARG,
                           "edit prompt: more <|image_pad|> tokens than the %d pictures (does the prompt "
                           "contain '<|image_pad|>'?)",
                           n_pictures);
        int gh = grid_hw[k][0] / merge, gw = grid_hw[k][1] / merge;
        for (int r = 0; r < gh; r++)
            for (int c = 0; c < gw; c++, j++) {
                out->ids[j] = QI_EDIT_IMAGE_PAD_ID;
                t[j] = plain ? j : next;
                h[j] = plain ? j : next + r;
                w[j] = plain ? j : next + c;
            }
        next += gh > gw ? gh : gw;
        k++;
    }
    if (k != n_pictures)
        return qi_fail(err, QI_ERR_ARG, "edit prompt: %d <|image_pad|> tokens for %d pictures", k, n_pictures);
    return QI_OK;
}

qi_status qi_edit_prompt_tokenize(const qi_tokenizer *tk, const char *prompt, int n_pictures,
                                  const int (*grid_hw)[2], int merge, int plain_positions,
                                  qi_edit_tokens *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    if (!tk || !prompt || !grid_hw || merge < 1)
        return qi_fail(err, QI_ERR_ARG, "edit prompt: NULL tokenizer, prompt or grids");
    if (n_pictures < 1 || n_pictures > QI_EDIT_MAX_PICTURES)
        return qi_fail(err, QI_ERR_ARG, "edit prompt: %d pictures; an Edit request takes 1 … %d", n_pictures,
                       QI_EDIT_MAX_PICTURES);
    int64_t image_tokens = 0;
    for (int k = 0; k < n_pictures; k++) {
        if (grid_hw[k][0] < merge || grid_hw[k][1] < merge || grid_hw[k][0] % merge || grid_hw[k][1] % merge ||
            grid_hw[k][0] > 4096 || grid_hw[k][1] > 4096)
            return qi_fail(err, QI_ERR_ARG, "edit prompt: picture %d's patch grid %d×%d is not a multiple of %d",
                           k + 1, grid_hw[k][0], grid_hw[k][1], merge);
        image_tokens += (int64_t)(grid_hw[k][0] / merge) * (grid_hw[k][1] / merge);
    }
    char *text = edit_text(prompt, n_pictures);
    if (!text) return qi_fail(err, QI_ERR_NOMEM, "edit prompt: out of memory");
    int32_t *raw = NULL;
    int n_raw = 0;
    qi_status st = qi_tokenizer_encode(tk, text, &raw, &n_raw, err);
    free(text);
    if (st != QI_OK) return qi_fail_ctx(err, st, "edit prompt");
    out->n = n_raw - n_pictures + (int)image_tokens;
    out->n_image_tokens = (int)image_tokens;
    out->ids = malloc((size_t)out->n * sizeof(int32_t));
    out->pos = malloc((size_t)out->n * 3 * sizeof(int32_t));
    if (!out->ids || !out->pos) st = qi_fail(err, QI_ERR_NOMEM, "edit prompt: out of memory (%d tokens)", out->n);
    if (st == QI_OK) st = expand(raw, n_raw, n_pictures, grid_hw, merge, plain_positions, out, err);
    free(raw);
    if (st != QI_OK) qi_edit_tokens_free(out);
    return st;
}

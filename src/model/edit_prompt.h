/*
 * edit_prompt.h — Qwen-Image-Edit (2509 "Plus", 2511) prompt tokens: the Edit
 * template with one "Picture N: " vision group per reference picture, the
 * <|image_pad|> runs expanded to the picture's token count, and the
 * Qwen2.5-VL M-RoPE (t, h, w) position of every token.
 *
 *     int grids[2][2] = {{14, 20}, {18, 14}};   // per picture: patch grid h, w
 *     qi_edit_tokens tok;
 *     qi_edit_prompt_tokenize(tokenizer, "Make it blue", 2, grids, 2, 0, &tok, &err);
 *     qi_text_encoder_encode_edit(te, tok.ids, tok.n, tok.pos, vision_rows, tok.n_image_tokens,
 *                                 QI_EDIT_DROP_IDX, 512, &embeds, &L, &err);
 *     qi_edit_tokens_free(&tok);
 *
 * What diffusers' QwenImageEditPlusPipeline + the Qwen2-VL processor build
 * (shared/reference/edit/README.md E3–E5):
 *   text = PREFIX + "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
 *          + … one group per picture, no separator … + prompt + SUFFIX,
 *   each <|image_pad|> repeated (grid_h/merge)·(grid_w/merge) times;
 *   prompt_embeds = hidden_states[-1] rows from QI_EDIT_DROP_IDX (64: the
 *   tokens before "Picture 1: ") on, cut to max_sequence_length.
 * Positions: text tokens get p on all three axes, p counting on from the
 * previous token's largest position + 1; a picture whose first pad would be
 * at p gets, at merged row r, column c: (p, p + r, p + c), and the text after
 * it continues at p + max(merged rows, merged columns). `plain_positions`
 * gives 0 … n−1 on every axis instead: what diffusers main with transformers
 * 5.x computes (it never passes mm_token_type_ids), kept only to measure the
 * divergence (README E5) — the model was trained with grid positions.
 */
#ifndef QI_EDIT_PROMPT_H
#define QI_EDIT_PROMPT_H

#include <stdint.h>

#include "base/base.h"
#include "model/tokenizer.h"

#define QI_EDIT_TEMPLATE_PREFIX                                                                        \
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "  \
    "objects, background), then explain how the user's text instruction should alter or modify the "   \
    "image. Generate a new image that meets the user's requirements while maintaining consistency "    \
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
#define QI_EDIT_TEMPLATE_SUFFIX "<|im_end|>\n<|im_start|>assistant\n"
#define QI_EDIT_PICTURE_FORMAT "Picture %d: <|vision_start|><|image_pad|><|vision_end|>"
#define QI_EDIT_DROP_IDX 64        /* prompt_template_encode_start_idx of the Edit pipelines */
#define QI_EDIT_IMAGE_PAD_ID 151655 /* <|image_pad|> */
#define QI_EDIT_MAX_PICTURES 16

typedef struct qi_edit_tokens {
    int n;              /* ids in all */
    int32_t *ids;       /* [n]: pads expanded */
    int32_t *pos;       /* [3·n]: rows t, h, w (M-RoPE position ids) */
    int n_image_tokens; /* pads in all (Σ per picture, pictures in order) */
} qi_edit_tokens;

/* grid_hw[k] = picture k's patch grid (image_grid_thw's h, w), each a
 * positive multiple of `merge`. 1 … QI_EDIT_MAX_PICTURES pictures. */
qi_status qi_edit_prompt_tokenize(const qi_tokenizer *t, const char *prompt, int n_pictures,
                                  const int (*grid_hw)[2], int merge, int plain_positions,
                                  qi_edit_tokens *out, qi_error *err);
void qi_edit_tokens_free(qi_edit_tokens *tok);

#endif

/*
 * text_encoder.h — the Qwen2.5-VL-7B language model (text only) that turns
 * tokenised prompts into Qwen-Image's prompt embeddings.
 *
 *     qi_source *src;   // io/source.h
 *     qi_text_encoder *te;
 *     if (qi_source_open("<model>/text_encoder", QI_COMPONENT_TEXT_ENCODER, &src, &err)) ...
 *     if (qi_text_encoder_load(src, be, &te, &err) != QI_OK) ...
 *     // ids, mask [B, S] as qi_prompt_tokenize gives them (template included)
 *     float *embeds; int32_t *embeds_mask; int L;
 *     qi_text_encoder_encode(te, ids, mask, B, S, 512, &embeds, &embeds_mask, &L, &err);
 *     ... embeds [B, L, dim], embeds_mask [B, L] ...
 *     free(embeds); free(embeds_mask);
 *     qi_text_encoder_free(te);
 *     qi_source_close(src);
 *
 * What encode computes (spec text-and-noise.md §2.2 and §3): the hidden
 * states after the final RMSNorm (diffusers' `hidden_states[-1]`), then per
 * prompt the valid (unpadded) positions minus the 34-id template prefix, cut
 * to max_sequence_length, re-padded with zero rows to the longest prompt —
 * exactly diffusers' `prompt_embeds` / `prompt_embeds_mask`. The vision tower
 * and lm_head are never loaded.
 */
#ifndef QI_TEXT_ENCODER_H
#define QI_TEXT_ENCODER_H

#include <stdint.h>

#include "backend/backend.h"
#include "base/base.h"
#include "io/source.h"
#include "model/prompt.h" /* QI_PROMPT_DROP_IDX (34), the max_sequence_length limit */

/* The language-model part of text_encoder/config.json (nested under
 * "text_config" in transformers 5.x files, top level in older ones). */
typedef struct qi_text_encoder_config {
    int hidden_size;         /* D: 3584 full size, 64 in the tiny reference model */
    int num_layers;          /* num_hidden_layers: 28 */
    int num_heads;           /* num_attention_heads: 28 */
    int num_kv_heads;        /* num_key_value_heads: 4 (GQA) */
    int head_dim;            /* hidden_size / num_heads (never a config key): 128 */
    int intermediate_size;   /* SwiGLU width: 18944 */
    int vocab_size;          /* embedding rows: 152064 */
    double rms_norm_eps;     /* 1e-6 */
    double rope_theta;       /* 1e6; from rope_parameters or rope_theta (+ rope_scaling) */
    int mrope_section[3];    /* M-RoPE frequency split t/h/w: 16, 24, 24 (sums to head_dim/2) */
} qi_text_encoder_config;

/* Reads and checks a text encoder config.json. Every field above must be
 * present (no defaults: the transformers class defaults are the 72B model's);
 * the error names the file and the key. */
qi_status qi_text_encoder_read_config(const char *config_path, qi_text_encoder_config *out,
                                      qi_error *err);

typedef struct qi_text_encoder qi_text_encoder;

/* Loads the text encoder of `src` (a QI_COMPONENT_TEXT_ENCODER source): a
 * diffusers text_encoder folder (config.json + model*.safetensors, sharded
 * or not), a single safetensors file (ComfyUI's qwen_2.5_vl_7b*.safetensors)
 * or a llama.cpp `qwen2vl` GGUF. The config comes from config.json where the
 * source has one; else from a GGUF's `qwen2vl.*` metadata; else from the
 * tensor shapes with Qwen2.5-VL's head dim 128, RMS eps 1e-6 and RoPE base
 * 1e6 (a width that is not a multiple of 128 asks for config.json).
 * Accepts both weight layouts: `model.layers.N.*` (as Qwen-Image ships) and
 * `model.language_model.layers.N.*` (newer transformers). Every tensor's
 * shape is checked against the config. Weights are handed to `be`
 * (zero-copy on the CPU: `src` must stay open until qi_text_encoder_free;
 * GGUF block types stay in their type). `be` must outlive the encoder. */
qi_status qi_text_encoder_load(const qi_source *src, qi_backend *be, qi_text_encoder **out,
                               qi_error *err);
/* The same with the layers' matrices streamed (stream != 0): held as host
 * weights (backend weight_host) and copied into two device slots layer by
 * layer as the forward reaches them (backend/weight_stream.h), and the
 * embedding table a host weight too (`embedding` gathers the prompt's rows
 * from it in place); norms and biases stay on the device. Same output bit
 * for bit. */
qi_status qi_text_encoder_load_resident(const qi_source *src, qi_backend *be, int stream, qi_text_encoder **out,
                                        qi_error *err);
/* The configuration of the text encoder `src` holds, without loading it. */
qi_status qi_text_encoder_source_config(const qi_source *src, qi_text_encoder_config *out, qi_error *err);
void qi_text_encoder_free(qi_text_encoder *te);

const qi_text_encoder_config *qi_text_encoder_get_config(const qi_text_encoder *te);
int qi_text_encoder_dim(const qi_text_encoder *te); /* hidden size (3584 full, 64 tiny) */

/* ids, mask: [B, S] int32 as qi_prompt_tokenize gives them (right padding;
 * mask 1 for real ids, 0 for padding; each row starts with the 34-id
 * template prefix, QI_PROMPT_DROP_IDX): a qi_prompt_batch's ids, mask,
 * batch, seq_len. max_sequence_length: 1 … 1024 (diffusers' __call__ default
 * is 512); *L then equals the batch's embed_seq_len.
 *
 * Output (malloc'ed, the caller frees both):
 *   *embeds      float32 [B, L, D]: row b = the prompt's embeddings after the
 *                34-id drop, then zero rows;
 *   *embeds_mask int32 [B, L]: 1 for real rows, 0 for padding rows;
 *   *L           = min(longest prompt length after the drop, max_sequence_length).
 * diffusers replaces an all-ones mask by None (always so for one prompt); an
 * all-ones *embeds_mask means exactly that.
 *
 * Activations use the backend arena, which is reset to where it was on return. */
qi_status qi_text_encoder_encode(qi_text_encoder *te, const int32_t *ids, const int32_t *mask, int B,
                                 int S, int max_sequence_length, float **embeds,
                                 int32_t **embeds_mask, int *L, qi_error *err);

/* Qwen-Image-Edit: one prompt with pictures (model/edit_prompt.h builds the
 * ids and positions; model/vision.h the picture rows).
 *   ids [S]: the Edit template's ids, <|image_pad|> runs expanded;
 *   positions [3·S]: M-RoPE rows t, h, w (NULL: plain 0 … S−1);
 *   image_rows [n_image, D] float32: what replaces the <|image_pad|>
 *     embeddings, in order (n_image must equal the pads in ids);
 *   drop: leading rows dropped (QI_EDIT_DROP_IDX, 64), S > drop;
 *   max_sequence_length: 1 … 1024, a cut after the drop; 0: none (the
 *     Edit-Plus pipeline never cuts: its max_sequence_length is only checked).
 * *embeds [L, D] (malloc'ed), L = S − drop, or at most max_sequence_length. The
 * frequencies of each M-RoPE axis are config.mrope_section's split. */
qi_status qi_text_encoder_encode_edit(qi_text_encoder *te, const int32_t *ids, int S, const int32_t *positions,
                                      const float *image_rows, int n_image, int drop, int max_sequence_length,
                                      float **embeds, int *L, qi_error *err);

/* ---- what the residency planner needs ---- */

/* Arena bytes of one encode of B prompts of S ids (S = 34 + the kept tokens
 * at most) with activations of act_size bytes: alloc_acts's tensors, the ids
 * and the packed output rows. */
size_t qi_text_encoder_act_bytes(const qi_text_encoder_config *c, size_t act_size, int B, int S);

/* Which part of the text encoder a weight of its source is, by the name the
 * source lists: QI_TE_UNIT_LAYER (a layer's matrix, *layer = its index),
 * QI_TE_UNIT_EMBED (the embedding table), QI_TE_UNIT_GLOBAL (the final norm,
 * every 1-D weight),
 * or QI_TE_UNIT_NONE (not loaded: the vision tower, lm_head). */
typedef enum qi_te_unit { QI_TE_UNIT_NONE = 0, QI_TE_UNIT_GLOBAL, QI_TE_UNIT_EMBED, QI_TE_UNIT_LAYER } qi_te_unit;
qi_te_unit qi_text_encoder_weight_unit(const char *name, int ndim, int *layer);

#endif

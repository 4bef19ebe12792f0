/*
 * source_names.c — the two name schemes a source maps to the names the
 * model code binds (declared in source.h):
 *
 *   - llama.cpp `qwen2vl` GGUF text encoders → transformers names;
 *   - the Wan 2.1 VAE names of ComfyUI's VAE file → diffusers names.
 *
 * Both are written from the tables of spec vae-and-formats.md B.4 and its
 * Appendix (194 VAE rows). The VAE map is structural, component by
 * component, because `conv1` / `conv2` mean different things at different
 * depths: a substring replacement would corrupt names.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/source.h"

/* ---- llama.cpp qwen2vl ------------------------------------------------------------- */

/* Per-layer names: llama.cpp's stem → transformers' (the `.weight` / `.bias`
 * suffix is carried over). */
static const char *const te_layer_map[][2] = {
    {"attn_norm", "input_layernorm"},  {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
    {"ffn_gate", "mlp.gate_proj"},     {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

static const char *const te_global_map[][2] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};

/* Writes into out; 1 if it fitted. */
static int put(char *out, size_t cap, const char *fmt, const char *a, long n, const char *b) {
    int len = snprintf(out, cap, fmt, a, n, b);
    return len > 0 && (size_t)len < cap;
}

/* Column `from` of the tables → column 1 − from (0: llama.cpp, 1:
 * transformers). Per-layer names are `<layer prefix><n>.<stem>.weight|bias`
 * on both sides; only the prefix and the stem change. */
static int map_text_encoder(const char *name, int from, char *out, size_t cap) {
    static const char *const layer_prefix[2] = {"blk.", "model.layers."};
    int to = 1 - from;
    for (size_t i = 0; i < QI_ARRAY_LEN(te_global_map); i++)
        if (strcmp(name, te_global_map[i][from]) == 0) return snprintf(out, cap, "%s", te_global_map[i][to]) < (int)cap;
    size_t plen = strlen(layer_prefix[from]);
    if (strncmp(name, layer_prefix[from], plen) != 0) return 0;
    char *end;
    long layer = strtol(name + plen, &end, 10);
    if (end == name + plen || *end != '.' || layer < 0) return 0;
    const char *stem = end + 1, *suffix = strrchr(stem, '.');
    if (!suffix || (strcmp(suffix, ".weight") != 0 && strcmp(suffix, ".bias") != 0)) return 0;
    for (size_t i = 0; i < QI_ARRAY_LEN(te_layer_map); i++) {
        size_t n = strlen(te_layer_map[i][from]);
        if ((size_t)(suffix - stem) != n || strncmp(stem, te_layer_map[i][from], n) != 0) continue;
        char renamed[64];
        snprintf(renamed, sizeof renamed, "%s%s", te_layer_map[i][to], suffix);
        return put(out, cap, "%s%ld.%s", layer_prefix[to], layer, renamed);
    }
    return 0;
}

int qi_names_llamacpp_text_encoder(const char *stored, char *out, size_t cap) {
    return map_text_encoder(stored, 0, out, cap);
}

int qi_names_text_encoder_to_llamacpp(const char *name, char *out, size_t cap) {
    return map_text_encoder(name, 1, out, cap);
}

/* ---- Wan 2.1 VAE -------------------------------------------------------------------- */

/* Inside a residual block (Wan's nn.Sequential: 1 and 4 are SiLU, 5 dropout). */
static const char *const wan_resblock_map[][2] = {
    {"residual.0.", "norm1."}, {"residual.2.", "conv1."}, {"residual.3.", "norm2."},
    {"residual.6.", "conv2."}, {"shortcut.", "conv_shortcut."},
};

/* The part of a block's name inside it: a residual block's renamed, a
 * resampler's or attention block's (`resample.1`, `time_conv`, `norm`,
 * `to_qkv`, `proj`) as is. 0 for anything else. */
static int map_block_inner(const char *rest, char *out, size_t cap) {
    for (size_t i = 0; i < QI_ARRAY_LEN(wan_resblock_map); i++) {
        size_t n = strlen(wan_resblock_map[i][0]);
        if (strncmp(rest, wan_resblock_map[i][0], n) == 0)
            return snprintf(out, cap, "%s%s", wan_resblock_map[i][1], rest + n) < (int)cap;
    }
    static const char *const kept[] = {"resample.1.", "time_conv.", "norm.", "to_qkv.", "proj."};
    for (size_t i = 0; i < QI_ARRAY_LEN(kept); i++)
        if (strncmp(rest, kept[i], strlen(kept[i])) == 0) return snprintf(out, cap, "%s", rest) < (int)cap;
    return 0;
}

/* "<list>.<k>.<rest>" at s: k and rest; 0 if s is not so. */
static int split_index(const char *s, const char *list, long *k, const char **rest) {
    size_t n = strlen(list);
    if (strncmp(s, list, n) != 0 || s[n] != '.') return 0;
    char *end;
    *k = strtol(s + n + 1, &end, 10);
    if (end == s + n + 1 || *end != '.' || *k < 0) return 0;
    *rest = end + 1;
    return 1;
}

/* One side (`encoder.` / `decoder.`), `s` past that prefix. */
static int map_wan_side(const char *side, const char *s, char *out, size_t cap) {
    char inner[160];
    long k;
    const char *rest;
    if (strncmp(s, "conv1.", 6) == 0) return snprintf(out, cap, "%sconv_in.%s", side, s + 6) < (int)cap;
    if (strncmp(s, "head.0.", 7) == 0) return snprintf(out, cap, "%snorm_out.%s", side, s + 7) < (int)cap;
    if (strncmp(s, "head.2.", 7) == 0) return snprintf(out, cap, "%sconv_out.%s", side, s + 7) < (int)cap;
    if (split_index(s, "middle", &k, &rest) && k <= 2 && map_block_inner(rest, inner, sizeof inner)) {
        const char *mid = k == 1 ? "attentions.0" : k == 0 ? "resnets.0" : "resnets.1";
        return snprintf(out, cap, "%smid_block.%s.%s", side, mid, inner) < (int)cap;
    }
    if (strcmp(side, "encoder.") == 0 && split_index(s, "downsamples", &k, &rest) &&
        map_block_inner(rest, inner, sizeof inner))
        return put(out, cap, "%sdown_blocks.%ld.%s", side, k, inner);
    if (strcmp(side, "decoder.") == 0 && split_index(s, "upsamples", &k, &rest) &&
        map_block_inner(rest, inner, sizeof inner)) {
        /* each decoder level: 3 residual blocks, then its upsampler (4L + 3) */
        char block[48];
        if (k % 4 == 3) snprintf(block, sizeof block, "up_blocks.%ld.upsamplers.0", k / 4);
        else snprintf(block, sizeof block, "up_blocks.%ld.resnets.%ld", k / 4, k % 4);
        return snprintf(out, cap, "%s%s.%s", side, block, inner) < (int)cap;
    }
    return 0;
}

int qi_names_wan_vae(const char *stored, char *out, size_t cap) {
    if (strncmp(stored, "conv1.", 6) == 0) return snprintf(out, cap, "quant_conv.%s", stored + 6) < (int)cap;
    if (strncmp(stored, "conv2.", 6) == 0) return snprintf(out, cap, "post_quant_conv.%s", stored + 6) < (int)cap;
    if (strncmp(stored, "encoder.", 8) == 0) return map_wan_side("encoder.", stored + 8, out, cap);
    if (strncmp(stored, "decoder.", 8) == 0) return map_wan_side("decoder.", stored + 8, out, cap);
    return 0;
}

/*
 * text_encoder.c — Qwen2.5-VL-7B's language model, text only, and the
 * extraction of Qwen-Image's prompt embeddings from its last hidden state.
 *
 * Owns: reading text_encoder/config.json (from the source), binding the
 * language-model weights of a weight source (io/source.h)
 * (both on-disk name layouts) into typed structs, the forward pass written
 * against the backend op table, and the drop / unpad / re-pad step of
 * diffusers' _get_qwen_prompt_embeds + encode_prompt.
 * Does not own: tokenising and the prompt template (prompt.c, tokenizer.c),
 * the vision tower and lm_head (never loaded: the pipeline ignores them).
 *
 * Spec: shared/docs/spec/text-and-noise.md §2 (template, extraction) and §3
 * (forward). The traps it calls out, and where this file obeys them:
 *   - hidden_states[-1] is taken AFTER the final norm (encode_tokens);
 *   - RoPE pairs dimension j with j + head_dim/2 ("rotate_half", QI_ROPE_HALF),
 *     the M-RoPE sections collapse to plain 1-D RoPE for text (rope_tables);
 *   - q/k/v have biases, o_proj and the MLP do not (layer_forward);
 *   - GQA: query head h reads KV head h / (heads / kv_heads) (the attention op);
 *   - attention is causal and ignores padding keys; with right padding
 *     (checked) causal masking alone does both (layer_forward).
 */
#include "model/text_encoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/weight_stream.h"
#include "base/types.h"
#include "io/model_dir.h"
#include "io/source.h"

#define QI_TE_IMAGE_PAD_ID 151655 /* <|image_pad|>: rows the vision tower fills (Edit) */

/* ---- config ---------------------------------------------------------------- */

/* The object that holds `key`: text_config first, then the top level (older
 * files keep the language-model keys there). JSON null counts as absent. */
static const cJSON *holder_of(const cJSON *text, const cJSON *root, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(text, key);
    if (it && !cJSON_IsNull(it)) return text;
    it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (it && !cJSON_IsNull(it)) return root;
    return NULL;
}

static qi_status missing_key(const char *path, const char *key, qi_error *err) {
    return qi_fail(err, QI_ERR_FORMAT,
                   "%s: key '%s' is missing (looked in \"text_config\" and at the top level); the "
                   "text encoder needs it and has no safe default",
                   path, key);
}

static qi_status get_int(const cJSON *text, const cJSON *root, const char *path, const char *key, int *out,
                         qi_error *err) {
    const cJSON *obj = holder_of(text, root, key);
    if (!obj) return missing_key(path, key, err);
    return qi_json_get_int(obj, key, path, out, err);
}

/* The bounds of every size of the config, however it was found (Qwen2.5-VL
 * 7B's values in the comments): generous for other sizes, small enough that
 * no width or product computed from them overflows. */
static qi_status check_sizes(const char *path, const qi_text_encoder_config *c, qi_error *err) {
    const struct {
        const char *key;
        int v, lo, hi;
    } b[] = {
        {"hidden_size", c->hidden_size, 1, 65536},               /* 3584 */
        {"num_hidden_layers", c->num_layers, 1, 1024},           /* 28 */
        {"num_attention_heads", c->num_heads, 1, 1024},          /* 28 */
        {"num_key_value_heads", c->num_kv_heads, 1, 1024},       /* 4 */
        {"intermediate_size", c->intermediate_size, 1, 1 << 20}, /* 18944 */
        {"vocab_size", c->vocab_size, 1, 1 << 24},               /* 152064 */
    };
    qi_status st = QI_OK;
    for (size_t i = 0; i < QI_ARRAY_LEN(b) && !st; i++)
        st = qi_check_range(path, b[i].key, b[i].v, b[i].lo, b[i].hi, "the text encoder's config", err);
    return st;
}

/* Only the plain RoPE of Qwen2.5-VL ("default"; 4.x files say "mrope") is
 * implemented; a scaled variant would silently give wrong embeddings. */
static qi_status check_rope_type(const cJSON *rope, const char *path, const char *what,
                                 qi_error *err) {
    static const char *const keys[] = {"rope_type", "type"};
    for (size_t i = 0; i < QI_ARRAY_LEN(keys); i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rope, keys[i]);
        if (!t || cJSON_IsNull(t)) continue;
        if (!cJSON_IsString(t))
            return qi_fail(err, QI_ERR_FORMAT, "%s: %s.%s must be a string", path, what, keys[i]);
        if (strcmp(t->valuestring, "default") != 0 && strcmp(t->valuestring, "mrope") != 0)
            return qi_fail(err, QI_ERR_UNSUPPORTED,
                           "%s: %s.%s is '%s'; only the default (m)rope of Qwen2.5-VL is supported",
                           path, what, keys[i], t->valuestring);
    }
    return QI_OK;
}

/* RoPE θ in either spelling: transformers 5.x `rope_parameters.rope_theta`,
 * 4.x a `rope_theta` key (with the type in `rope_scaling`). */
static qi_status read_rope_theta(const cJSON *text, const cJSON *root, const char *path,
                                 double *theta, qi_error *err) {
    qi_status st;
    const cJSON *holder = holder_of(text, root, "rope_parameters");
    const cJSON *params = holder ? cJSON_GetObjectItemCaseSensitive(holder, "rope_parameters") : NULL;
    if (params && !cJSON_IsObject(params))
        return qi_fail(err, QI_ERR_FORMAT, "%s: key 'rope_parameters' must be an object", path);
    holder = holder_of(text, root, "rope_scaling");
    const cJSON *scaling = holder ? cJSON_GetObjectItemCaseSensitive(holder, "rope_scaling") : NULL;
    if (scaling && !cJSON_IsObject(scaling))
        return qi_fail(err, QI_ERR_FORMAT, "%s: key 'rope_scaling' must be an object or null", path);
    if (params && (st = check_rope_type(params, path, "rope_parameters", err)) != QI_OK) return st;
    if (scaling && (st = check_rope_type(scaling, path, "rope_scaling", err)) != QI_OK) return st;

    const cJSON *t = params ? cJSON_GetObjectItemCaseSensitive(params, "rope_theta") : NULL;
    if (t && !cJSON_IsNull(t)) {
        st = qi_json_get_double(params, "rope_theta", path, theta, err);
    } else if ((holder = holder_of(text, root, "rope_theta")) != NULL) {
        st = qi_json_get_double(holder, "rope_theta", path, theta, err);
    } else {
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: key 'rope_theta' is missing: expected \"rope_parameters\": "
                       "{\"rope_theta\": ...} (transformers 5.x) or \"rope_theta\" (4.x), in "
                       "\"text_config\" or at the top level",
                       path);
    }
    if (st != QI_OK) return st;
    if (!(*theta > 1.0) || !isfinite(*theta))
        return qi_fail(err, QI_ERR_FORMAT, "%s: key 'rope_theta' must be a number > 1, found %g",
                       path, *theta);
    return QI_OK;
}

/* M-RoPE's split of the rotary frequencies between the t, h and w axes:
 * `mrope_section` in rope_parameters (5.x) or rope_scaling (4.x); absent:
 * left 0 (Qwen2.5-VL's 16/24/24 is set after loading). Only image tokens
 * (Edit) see the split: text positions are equal on all three axes. */
static qi_status read_mrope_section(const cJSON *text, const cJSON *root, const char *path, int *sec,
                                    qi_error *err) {
    static const char *const holders[] = {"rope_parameters", "rope_scaling"};
    for (size_t i = 0; i < QI_ARRAY_LEN(holders); i++) {
        const cJSON *h = holder_of(text, root, holders[i]);
        const cJSON *obj = h ? cJSON_GetObjectItemCaseSensitive(h, holders[i]) : NULL;
        if (!cJSON_IsObject(obj) || !cJSON_GetObjectItemCaseSensitive(obj, "mrope_section")) continue;
        int n = 0;
        qi_status st = qi_json_get_int_array(obj, "mrope_section", path, sec, 3, &n, err);
        if (st != QI_OK) return st;
        if (n != 3 || sec[0] < 0 || sec[1] < 0 || sec[2] < 0)
            return qi_fail(err, QI_ERR_FORMAT, "%s: %s.mrope_section must be 3 non-negative integers", path,
                           holders[i]);
        return QI_OK;
    }
    return QI_OK;
}

static qi_status parse_config(const cJSON *root, const char *path, qi_text_encoder_config *c,
                              qi_error *err) {
    qi_status st;
    if (!cJSON_IsObject(root))
        return qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object", path);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (text && !cJSON_IsNull(text) && !cJSON_IsObject(text))
        return qi_fail(err, QI_ERR_FORMAT, "%s: key 'text_config' must be an object", path);
    if (!text || cJSON_IsNull(text)) text = root;

    if ((st = get_int(text, root, path, "hidden_size", &c->hidden_size, err)) ||
        (st = get_int(text, root, path, "num_hidden_layers", &c->num_layers, err)) ||
        (st = get_int(text, root, path, "num_attention_heads", &c->num_heads, err)) ||
        (st = get_int(text, root, path, "num_key_value_heads", &c->num_kv_heads, err)) ||
        (st = get_int(text, root, path, "intermediate_size", &c->intermediate_size, err)) ||
        (st = get_int(text, root, path, "vocab_size", &c->vocab_size, err)) ||
        (st = check_sizes(path, c, err)))
        return st;

    const cJSON *holder = holder_of(text, root, "rms_norm_eps");
    if (!holder) return missing_key(path, "rms_norm_eps", err);
    if ((st = qi_json_get_double(holder, "rms_norm_eps", path, &c->rms_norm_eps, err))) return st;
    if (!(c->rms_norm_eps > 0) || !(c->rms_norm_eps < 1))
        return qi_fail(err, QI_ERR_FORMAT, "%s: key 'rms_norm_eps' must be in (0, 1), found %g",
                       path, c->rms_norm_eps);

    if ((st = read_rope_theta(text, root, path, &c->rope_theta, err))) return st;
    if ((st = read_mrope_section(text, root, path, c->mrope_section, err))) return st;

    holder = holder_of(text, root, "hidden_act");
    if (holder) {
        const char *act;
        if ((st = qi_json_get_string(holder, "hidden_act", path, &act, err))) return st;
        if (strcmp(act, "silu") != 0)
            return qi_fail(err, QI_ERR_UNSUPPORTED,
                           "%s: hidden_act is '%s'; the Qwen2.5-VL MLP here is SwiGLU (silu)", path,
                           act);
    }

    /* head_dim is derived, never read: Qwen2.5-VL's attention always does so. */
    if (c->hidden_size % c->num_heads != 0)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                       c->hidden_size, c->num_heads);
    c->head_dim = c->hidden_size / c->num_heads;
    if (c->head_dim % 2 != 0)
        return qi_fail(err, QI_ERR_FORMAT, "%s: head dim %d (hidden_size / num_attention_heads) "
                                           "must be even for RoPE",
                       path, c->head_dim);
    if (c->num_heads % c->num_kv_heads != 0)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, c->num_heads, c->num_kv_heads);
    return QI_OK;
}

qi_status qi_text_encoder_read_config(const char *config_path, qi_text_encoder_config *out,
                                      qi_error *err) {
    memset(out, 0, sizeof *out);
    cJSON *root;
    qi_status st = qi_json_load(config_path, &root, err);
    if (st != QI_OK) return st;
    st = parse_config(root, config_path, out, err);
    cJSON_Delete(root);
    return st;
}

/* ---- weights ---------------------------------------------------------------- */

typedef struct te_layer {
    qi_tensor input_norm;      /* [D] */
    qi_tensor q_w, q_b;        /* [H·Dh, D], [H·Dh] */
    qi_tensor k_w, k_b;        /* [Hkv·Dh, D], [Hkv·Dh] */
    qi_tensor v_w, v_b;        /* [Hkv·Dh, D], [Hkv·Dh] */
    qi_tensor o_w;             /* [D, H·Dh], no bias */
    qi_tensor post_attn_norm;  /* [D] */
    qi_tensor gate_w, up_w;    /* [I, D] each */
    qi_tensor down_w;          /* [D, I] */
} te_layer;

struct qi_text_encoder {
    qi_text_encoder_config cfg;
    qi_backend *be;
    const qi_source *src; /* the caller's: CPU weights point into its mapping */
    qi_tensor embed;      /* [V, D] */
    te_layer *layers;     /* [num_layers] */
    qi_tensor final_norm; /* [D] */
    qi_wstream *stream;   /* the layers' matrices streamed from host memory (NULL: all on the device) */
};

/* A layer's 7 matrices, in the order they are streamed. */
static int layer_matrices(te_layer *l, qi_tensor **w) {
    qi_tensor *m[7] = {&l->q_w, &l->k_w, &l->v_w, &l->o_w, &l->gate_w, &l->up_w, &l->down_w};
    for (int i = 0; i < 7; i++) w[i] = m[i];
    return 7;
}

/* The two on-disk spellings of the language model's names (spec §3.2). */
static const char *const name_prefixes[] = {"model.", "model.language_model."};

/* Which prefix this checkpoint uses, found by its embedding table. */
static qi_status find_name_prefix(const qi_source *src, const char **prefix, qi_error *err) {
    for (size_t i = 0; i < QI_ARRAY_LEN(name_prefixes); i++) {
        char name[128];
        snprintf(name, sizeof name, "%sembed_tokens.weight", name_prefixes[i]);
        qi_source_tensor t;
        if (qi_source_find(src, name, &t)) {
            *prefix = name_prefixes[i];
            return QI_OK;
        }
    }
    return qi_fail(err, QI_ERR_FORMAT,
                   "%s: no text encoder embedding table: expected 'model.embed_tokens.weight' or "
                   "'model.language_model.embed_tokens.weight' (is this a Qwen2.5-VL text encoder?)",
                   qi_source_path(src));
}

/* Looks `prefix + name` up, checks its shape and hands it to the backend. */
static qi_status bind(qi_text_encoder *te, const char *prefix, const char *name, int ndim,
                      int64_t d0, int64_t d1, qi_tensor *w, qi_error *err) {
    char full[192];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    int64_t shape[2] = {d0, d1};
    qi_source_tensor t;
    qi_status st = qi_source_get(te->src, full, ndim, shape, &t, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "text encoder");
    qi_weight_scale sc = qi_source_tensor_scale(&t);
    /* streaming: the layers' matrices and the embedding table are host weights */
    int host = te->stream && ndim == 2 && (!strncmp(name, "layers.", 7) || !strcmp(name, "embed_tokens.weight"));
    st = (host ? te->be->ops->weight_host : te->be->ops->weight)(te->be, w, t.dtype, t.ndim, t.shape, t.data, &sc,
                                                                  err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "text encoder weight '%s'", full);
    return QI_OK;
}

static qi_status bind_layer(qi_text_encoder *te, const char *prefix, int i, te_layer *l,
                            qi_error *err) {
    const qi_text_encoder_config *c = &te->cfg;
    int64_t D = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KVD = (int64_t)c->num_kv_heads * c->head_dim;
    struct {
        const char *name;
        int ndim;
        int64_t d0, d1;
        qi_tensor *w;
    } items[] = {
        {"input_layernorm.weight", 1, D, 0, &l->input_norm},
        {"self_attn.q_proj.weight", 2, QD, D, &l->q_w},
        {"self_attn.q_proj.bias", 1, QD, 0, &l->q_b},
        {"self_attn.k_proj.weight", 2, KVD, D, &l->k_w},
        {"self_attn.k_proj.bias", 1, KVD, 0, &l->k_b},
        {"self_attn.v_proj.weight", 2, KVD, D, &l->v_w},
        {"self_attn.v_proj.bias", 1, KVD, 0, &l->v_b},
        {"self_attn.o_proj.weight", 2, D, QD, &l->o_w},
        {"post_attention_layernorm.weight", 1, D, 0, &l->post_attn_norm},
        {"mlp.gate_proj.weight", 2, I, D, &l->gate_w},
        {"mlp.up_proj.weight", 2, I, D, &l->up_w},
        {"mlp.down_proj.weight", 2, D, I, &l->down_w},
    };
    for (size_t k = 0; k < QI_ARRAY_LEN(items); k++) {
        char name[160];
        snprintf(name, sizeof name, "layers.%d.%s", i, items[k].name);
        qi_status st = bind(te, prefix, name, items[k].ndim, items[k].d0, items[k].d1, items[k].w, err);
        if (st != QI_OK) return st;
    }
    return QI_OK;
}

static void release(qi_text_encoder *te, qi_tensor *w) {
    if (w->data) te->be->ops->weight_free(te->be, w);
}

void qi_text_encoder_free(qi_text_encoder *te) {
    if (!te) return;
    qi_wstream_free(te->stream);
    if (te->be) {
        release(te, &te->embed);
        release(te, &te->final_norm);
        for (int i = 0; te->layers && i < te->cfg.num_layers; i++) {
            te_layer *l = &te->layers[i];
            qi_tensor *ws[] = {&l->input_norm, &l->q_w,  &l->q_b,  &l->k_w,
                               &l->k_b,        &l->v_w,  &l->v_b,  &l->o_w,
                               &l->post_attn_norm, &l->gate_w, &l->up_w, &l->down_w};
            for (size_t k = 0; k < QI_ARRAY_LEN(ws); k++) release(te, ws[k]);
        }
    }
    free(te->layers);
    free(te);
}

/* ---- config without a config.json -------------------------------------------- */

/* Checks the derived head layout as parse_config checks a file's. */
static qi_status check_heads(const char *what, qi_text_encoder_config *c, qi_error *err) {
    qi_status st = check_sizes(what, c, err);
    if (st) return st;
    if (c->num_heads <= 0 || c->num_kv_heads <= 0 || c->hidden_size % c->num_heads != 0 ||
        c->num_heads % c->num_kv_heads != 0 || (c->hidden_size / c->num_heads) % 2 != 0)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: %d heads, %d KV heads for width %d: expected the width a multiple of the heads "
                       "(even head dim) and the heads a multiple of the KV heads",
                       what, c->num_heads, c->num_kv_heads, c->hidden_size);
    c->head_dim = c->hidden_size / c->num_heads;
    return QI_OK;
}

/* A positive GGUF integer `qwen2vl.<key>` into *out. */
static qi_status gguf_int(const qi_source *src, const char *key, int *out, qi_error *err) {
    char full[96];
    snprintf(full, sizeof full, "qwen2vl.%s", key);
    int64_t v;
    qi_status st = qi_source_meta_int(src, full, &v, err);
    if (st != QI_OK) return st;
    if (v <= 0 || v > (1 << 30))
        return qi_fail(err, QI_ERR_FORMAT, "%s: metadata '%s' = %lld is out of range", qi_source_path(src), full,
                       (long long)v);
    *out = (int)v;
    return QI_OK;
}

/* The shortest decimal of a float value, as a double. */
static double float_decimal(double v) {
    char text[32];
    snprintf(text, sizeof text, "%.7g", (double)(float)v);
    return strtod(text, NULL);
}

/* A llama.cpp `qwen2vl` GGUF: the hyperparameters are its metadata keys;
 * the vocabulary is the embedding table's rows (llama.cpp pads the
 * tokenizer's list to them, so either gives the same count). */
static qi_status config_of_gguf(const qi_source *src, qi_text_encoder_config *c, qi_error *err) {
    const char *path = qi_source_path(src);
    qi_status st;
    if ((st = gguf_int(src, "block_count", &c->num_layers, err)) ||
        (st = gguf_int(src, "embedding_length", &c->hidden_size, err)) ||
        (st = gguf_int(src, "feed_forward_length", &c->intermediate_size, err)) ||
        (st = gguf_int(src, "attention.head_count", &c->num_heads, err)) ||
        (st = gguf_int(src, "attention.head_count_kv", &c->num_kv_heads, err)) ||
        (st = qi_source_meta_float(src, "qwen2vl.attention.layer_norm_rms_epsilon", &c->rms_norm_eps, err)) ||
        (st = qi_source_meta_float(src, "qwen2vl.rope.freq_base", &c->rope_theta, err)))
        return st;
    /* The converter wrote the config's decimal numbers as F32: read back at
     * float precision (1e-06, not 9.99999997e-07), as config.json says them. */
    c->rms_norm_eps = float_decimal(c->rms_norm_eps);
    c->rope_theta = float_decimal(c->rope_theta);
    if (!(c->rms_norm_eps > 0 && c->rms_norm_eps < 1) || !(c->rope_theta > 1))
        return qi_fail(err, QI_ERR_FORMAT, "%s: rms epsilon %g / rope freq_base %g out of range", path,
                       c->rms_norm_eps, c->rope_theta);
    qi_source_tensor t;
    if (!qi_source_find(src, "model.embed_tokens.weight", &t) || t.ndim != 2)
        return qi_fail(err, QI_ERR_FORMAT, "%s: no 2-D tensor 'token_embd.weight' (the embedding table)", path);
    c->vocab_size = t.shape[0] > INT32_MAX ? INT32_MAX : (int)t.shape[0]; /* too large: check_sizes says so */
    return check_heads(path, c, err);
}

/* The layer count of a transformers-named checkpoint: layers 0 … n−1 all
 * present (their input norms). */
static int count_layers(const qi_source *src, const char *prefix) {
    int n = 0;
    for (;; n++) {
        char name[160];
        qi_source_tensor t;
        snprintf(name, sizeof name, "%slayers.%d.input_layernorm.weight", prefix, n);
        if (!qi_source_find(src, name, &t)) return n;
    }
}

/* A single safetensors file without config.json (ComfyUI's
 * qwen_2.5_vl_7b*.safetensors): widths from the shapes; the head width and
 * the two constants are Qwen2.5-VL's, the same in every released size
 * (3B, 7B, 32B, 72B: head dim 128, RMS eps 1e-6, RoPE base 1e6). A model of
 * another head width (the tiny test model) needs its config.json. */
static qi_status config_of_shapes(const qi_source *src, const char *prefix, qi_text_encoder_config *c,
                                  qi_error *err) {
    const char *path = qi_source_path(src);
    char name[160];
    qi_source_tensor emb, gate, k;
    snprintf(name, sizeof name, "%sembed_tokens.weight", prefix);
    int ok = qi_source_find(src, name, &emb) && emb.ndim == 2;
    snprintf(name, sizeof name, "%slayers.0.mlp.gate_proj.weight", prefix);
    ok = ok && qi_source_find(src, name, &gate) && gate.ndim == 2;
    snprintf(name, sizeof name, "%slayers.0.self_attn.k_proj.weight", prefix);
    ok = ok && qi_source_find(src, name, &k) && k.ndim == 2;
    if (!ok)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no config.json and no '%sembed_tokens.weight', 'layers.0.mlp.gate_proj.weight' and "
                       "'layers.0.self_attn.k_proj.weight' to derive one from (is this a Qwen2.5-VL text encoder?)",
                       path, prefix);
    enum { HEAD_DIM = 128 };
    if (emb.shape[0] > INT32_MAX || emb.shape[1] > INT32_MAX || gate.shape[0] > INT32_MAX || k.shape[0] > INT32_MAX)
        return qi_fail(err, QI_ERR_FORMAT, "%s: tensor shapes [%lld, %lld] (embedding), %lld (MLP rows), %lld (KV "
                       "rows) are too large for a text encoder", path, (long long)emb.shape[0],
                       (long long)emb.shape[1], (long long)gate.shape[0], (long long)k.shape[0]);
    c->vocab_size = (int)emb.shape[0];
    c->hidden_size = (int)emb.shape[1];
    c->intermediate_size = (int)gate.shape[0];
    c->num_layers = count_layers(src, prefix);
    if (c->hidden_size % HEAD_DIM != 0 || k.shape[0] % HEAD_DIM != 0 || c->num_layers == 0)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: width %d, KV width %lld: not a released Qwen2.5-VL size (head dim 128), so the head "
                       "count cannot be derived; give the model's text_encoder/config.json with the file",
                       path, c->hidden_size, (long long)k.shape[0]);
    c->num_heads = c->hidden_size / HEAD_DIM;
    c->num_kv_heads = (int)(k.shape[0] / HEAD_DIM);
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 1e6;
    return check_heads(path, c, err);
}

/* The source's config.json; else a GGUF's metadata; else the shapes. */
static qi_status config_of_source(const qi_source *src, const char *prefix, qi_text_encoder_config *c,
                                  qi_error *err) {
    memset(c, 0, sizeof *c);
    const char *path;
    const cJSON *root = qi_source_config(src, &path);
    if (root) return parse_config(root, path, c, err);
    if (qi_source_gguf(src)) return config_of_gguf(src, c, err);
    return config_of_shapes(src, prefix, c, err);
}

qi_status qi_text_encoder_source_config(const qi_source *src, qi_text_encoder_config *out, qi_error *err) {
    const char *prefix = NULL;
    qi_status st = find_name_prefix(src, &prefix, err);
    return st ? st : config_of_source(src, prefix, out, err);
}

qi_status qi_text_encoder_load(const qi_source *src, qi_backend *be, qi_text_encoder **out,
                               qi_error *err) {
    return qi_text_encoder_load_resident(src, be, 0, out, err);
}

qi_status qi_text_encoder_load_resident(const qi_source *src, qi_backend *be, int stream, qi_text_encoder **out,
                                        qi_error *err) {
    *out = NULL;
    if (!src || !be) return qi_fail(err, QI_ERR_ARG, "text encoder: no source or backend given");
    qi_text_encoder *te = calloc(1, sizeof *te);
    if (!te) return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");
    te->be = be;
    te->src = src;
    const char *prefix = NULL;
    qi_status st = find_name_prefix(src, &prefix, err);
    if (st == QI_OK) st = config_of_source(src, prefix, &te->cfg, err);
    if (st == QI_OK) {
        te->layers = calloc((size_t)te->cfg.num_layers, sizeof *te->layers);
        if (!te->layers) st = qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");
    }
    const qi_text_encoder_config *c = &te->cfg;
    if (st == QI_OK && !te->cfg.mrope_section[0] && !te->cfg.mrope_section[1] && !te->cfg.mrope_section[2]) {
        te->cfg.mrope_section[0] = 16; /* Qwen2.5-VL's split (no config.json, or a key-less one) */
        te->cfg.mrope_section[1] = 24;
        te->cfg.mrope_section[2] = 24;
    }
    if (st == QI_OK && stream) st = qi_wstream_new(be, c->num_layers, &te->stream, err);
    if (st == QI_OK)
        st = bind(te, prefix, "embed_tokens.weight", 2, c->vocab_size, c->hidden_size, &te->embed, err);
    for (int i = 0; st == QI_OK && i < c->num_layers; i++)
        st = bind_layer(te, prefix, i, &te->layers[i], err);
    if (st == QI_OK) st = bind(te, prefix, "norm.weight", 1, c->hidden_size, 0, &te->final_norm, err);
    for (int i = 0; st == QI_OK && te->stream && i < c->num_layers; i++) {
        qi_tensor *w[7];
        int n = layer_matrices(&te->layers[i], w);
        qi_wstream_set_unit(te->stream, i, w, n);
    }
    if (st == QI_OK && te->stream) st = qi_wstream_alloc(te->stream, err);
    if (st != QI_OK) {
        qi_text_encoder_free(te);
        return st;
    }
    *out = te;
    return QI_OK;
}

const qi_text_encoder_config *qi_text_encoder_get_config(const qi_text_encoder *te) {
    return &te->cfg;
}

int qi_text_encoder_dim(const qi_text_encoder *te) { return te->cfg.hidden_size; }

/* ---- forward ------------------------------------------------------------------ */

/* cos/sin tables [S, Dh/2] of plain 1-D RoPE at positions 0 … S−1 (spec
 * §3.4: for text the three M-RoPE position rows are equal, so the sections do
 * not matter). Computed in float32 like torch: inv_freq = 1 / θ^(2i/Dh),
 * angle = pos · inv_freq, both rounded to float. */
static void rope_tables(double theta, int head_dim, int S, float *cos_tab, float *sin_tab) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)head_dim;
        float inv_freq = 1.0f / powf((float)theta, exponent);
        for (int t = 0; t < S; t++) {
            float angle = (float)t * inv_freq;
            cos_tab[(size_t)t * half + i] = (float)cos((double)angle);
            sin_tab[(size_t)t * half + i] = (float)sin((double)angle);
        }
    }
}

/* M-RoPE cos/sin tables [S, Dh/2] for per-axis positions pos [3·S] (rows
 * t, h, w): frequency j < sec[0] turns by the t position, the next sec[1] by
 * h, the rest by w (transformers' apply_multimodal_rotary_pos_emb; both
 * rotate_half halves share frequency j's angle). Rounding as rope_tables. */
static void mrope_tables(double theta, int head_dim, const int *sec, int S, const int32_t *pos,
                         float *cos_tab, float *sin_tab) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)head_dim;
        float inv_freq = 1.0f / powf((float)theta, exponent);
        int axis = i < sec[0] ? 0 : i < sec[0] + sec[1] ? 1 : 2;
        for (int t = 0; t < S; t++) {
            float angle = (float)pos[(size_t)axis * S + t] * inv_freq;
            cos_tab[(size_t)t * half + i] = (float)cos((double)angle);
            sin_tab[(size_t)t * half + i] = (float)sin((double)angle);
        }
    }
}

/* Scratch activations of one forward, allocated once and reused by every layer. */
typedef struct te_acts {
    qi_tensor x;          /* [B, S, D] residual stream */
    qi_tensor h;          /* [B, S, D] normed input of attention / MLP */
    qi_tensor q;          /* [B, S, H·Dh] */
    qi_tensor k, v;       /* [B, S, Hkv·Dh] */
    qi_tensor attn;       /* [B, S, H·Dh] attention output before o_proj */
    qi_tensor proj;       /* [B, S, D] o_proj / down_proj output */
    qi_tensor gate, up;   /* [B, S, I] */
    qi_tensor mlp;        /* [B, S, I] silu(gate) · up */
    qi_tensor cos_tab, sin_tab; /* F32 [S, Dh/2] */
} te_acts;

static qi_status alloc_acts(qi_text_encoder *te, int B, int S, te_acts *a, qi_error *err) {
    qi_backend *be = te->be;
    const qi_text_encoder_config *c = &te->cfg;
    int64_t D = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KVD = (int64_t)c->num_kv_heads * c->head_dim;
    int64_t tab_ne[2] = {S, c->head_dim / 2};
    qi_status st;
    if ((st = qi_be_act3(be, &a->x, B, S, D, err)) || (st = qi_be_act3(be, &a->h, B, S, D, err)) ||
        (st = qi_be_act3(be, &a->q, B, S, QD, err)) || (st = qi_be_act3(be, &a->k, B, S, KVD, err)) ||
        (st = qi_be_act3(be, &a->v, B, S, KVD, err)) ||
        (st = qi_be_act3(be, &a->attn, B, S, QD, err)) ||
        (st = qi_be_act3(be, &a->proj, B, S, D, err)) ||
        (st = qi_be_act3(be, &a->gate, B, S, I, err)) || (st = qi_be_act3(be, &a->up, B, S, I, err)) ||
        (st = qi_be_act3(be, &a->mlp, B, S, I, err)) ||
        (st = be->ops->tensor(be, &a->cos_tab, QI_F32, 2, tab_ne, err)) ||
        (st = be->ops->tensor(be, &a->sin_tab, QI_F32, 2, tab_ne, err)))
        return qi_fail_ctx(err, st, "text encoder (batch %d, %d tokens)", B, S);
    return QI_OK;
}

/* One Qwen2.5-VL decoder layer on the residual stream a->x [B, S, D]:
 *   x += o_proj(attention(rope(q), rope(k), v))      with h = rms_norm(x)
 *   x += down(silu(gate(h)) · up(h))                  with h = rms_norm(x) */
static void layer_forward(qi_text_encoder *te, const te_layer *l, int B, int S, te_acts *a) {
    qi_backend *be = te->be;
    const qi_backend_ops *op = be->ops;
    const qi_text_encoder_config *c = &te->cfg;
    float eps = (float)c->rms_norm_eps;

    op->rms_norm(be, &a->x, &l->input_norm, eps, &a->h);
    op->linear(be, &a->h, &l->q_w, &l->q_b, QI_ACT_NONE, &a->q);
    op->linear(be, &a->h, &l->k_w, &l->k_b, QI_ACT_NONE, &a->k);
    op->linear(be, &a->h, &l->v_w, &l->v_b, QI_ACT_NONE, &a->v);
    /* Heads are contiguous Dh-wide slices of the projections. */
    qi_tensor q4 = qi_view4(&a->q, B, S, c->num_heads, c->head_dim);
    qi_tensor k4 = qi_view4(&a->k, B, S, c->num_kv_heads, c->head_dim);
    qi_tensor v4 = qi_view4(&a->v, B, S, c->num_kv_heads, c->head_dim);
    qi_tensor o4 = qi_view4(&a->attn, B, S, c->num_heads, c->head_dim);
    op->rope(be, &q4, &a->cos_tab, &a->sin_tab, QI_ROPE_HALF);
    op->rope(be, &k4, &a->cos_tab, &a->sin_tab, QI_ROPE_HALF);
    /* The reference masks keys that are padding AND keys after the query.
     * With right padding a real query's earlier keys are all real, so the
     * causal mask alone gives the same result; pad query rows differ but
     * are discarded. No key mask, then: the plain causal kernel. */
    float scale = (float)(1.0 / sqrt((double)c->head_dim));
    op->attention(be, &q4, &k4, &v4, NULL, 1, scale, &o4);
    op->linear(be, &a->attn, &l->o_w, NULL, QI_ACT_NONE, &a->proj);
    op->add_gated(be, &a->x, NULL, 0, &a->proj);

    op->rms_norm(be, &a->x, &l->post_attn_norm, eps, &a->h);
    op->linear(be, &a->h, &l->gate_w, NULL, QI_ACT_NONE, &a->gate);
    op->linear(be, &a->h, &l->up_w, NULL, QI_ACT_NONE, &a->up);
    op->silu_mul(be, &a->gate, &a->up, &a->mlp);
    op->linear(be, &a->mlp, &l->down_w, NULL, QI_ACT_NONE, &a->proj);
    op->add_gated(be, &a->x, NULL, 0, &a->proj);
}

/* Picture rows (Edit): image_rows [n_image, D] replace the embeddings of
 * the <|image_pad|> ids of ids [S] (one prompt), run by run, in order. */
static qi_status insert_image_rows(qi_text_encoder *te, const int32_t *ids, int S, const float *image_rows,
                                   int n_image, qi_tensor *x, qi_error *err) {
    qi_backend *be = te->be;
    qi_tensor img;
    qi_status st = qi_be_act2(be, &img, n_image, te->cfg.hidden_size, err);
    if (st == QI_OK) st = be->ops->upload(be, &img, image_rows, err);
    if (st != QI_OK) return qi_fail_ctx(err, st, "text encoder: picture rows");
    int64_t used = 0;
    for (int s = 0; s < S;) {
        if (ids[s] != QI_TE_IMAGE_PAD_ID) {
            s++;
            continue;
        }
        int run = 0;
        while (s + run < S && ids[s + run] == QI_TE_IMAGE_PAD_ID) run++;
        be->ops->copy_rows(be, &img, used, x, s, run);
        used += run;
        s += run;
    }
    return QI_OK;
}

/* The language model on right-padded ids [B, S] (host, contiguous): on
 * return a->h holds the final-normed hidden states [B, S, D]
 * (= hidden_states[-1]). pos3 [3·S] (B = 1): M-RoPE positions, NULL: plain.
 * image_rows: see insert_image_rows (n_image 0: none). Allocates from the
 * arena; the caller resets it. */
static qi_status forward(qi_text_encoder *te, const int32_t *ids, int B, int S, const int32_t *pos3,
                         const float *image_rows, int n_image, te_acts *a, qi_error *err) {
    qi_backend *be = te->be;
    const qi_text_encoder_config *c = &te->cfg;
    qi_status st = alloc_acts(te, B, S, a, err);
    if (st != QI_OK) return st;

    size_t tab_n = (size_t)S * (size_t)(c->head_dim / 2);
    float *cos_host = malloc(tab_n * sizeof(float)), *sin_host = malloc(tab_n * sizeof(float));
    if (!cos_host || !sin_host) {
        free(cos_host);
        free(sin_host);
        return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory for RoPE tables");
    }
    if (pos3)
        mrope_tables(c->rope_theta, c->head_dim, c->mrope_section, S, pos3, cos_host, sin_host);
    else
        rope_tables(c->rope_theta, c->head_dim, S, cos_host, sin_host);
    st = be->ops->upload(be, &a->cos_tab, cos_host, err);
    if (st == QI_OK) st = be->ops->upload(be, &a->sin_tab, sin_host, err);
    free(cos_host);
    free(sin_host);
    if (st != QI_OK) return qi_fail_ctx(err, st, "text encoder");

    /* ids as an I32 [B·S] tensor for the embedding lookup. */
    qi_tensor ids_t;
    int64_t ids_ne[1] = {(int64_t)B * S};
    if ((st = be->ops->tensor(be, &ids_t, QI_I32, 1, ids_ne, err)) ||
        (st = be->ops->upload(be, &ids_t, ids, err)))
        return qi_fail_ctx(err, st, "text encoder");

    be->ops->embedding(be, &te->embed, &ids_t, &a->x);
    if (n_image > 0 && (st = insert_image_rows(te, ids, S, image_rows, n_image, &a->x, err)) != QI_OK) return st;
    for (int i = 0; i < c->num_layers && st == QI_OK; i++) {
        te_layer l = te->layers[i];
        if (te->stream) { /* its matrices staged into a slot; the next layer's copy overlaps its ops */
            const qi_tensor *v;
            qi_tensor *w[7];
            st = qi_wstream_take(te->stream, i, i + 1 < c->num_layers ? i + 1 : -1, &v, err);
            int n = layer_matrices(&l, w);
            for (int k = 0; k < n && st == QI_OK; k++) *w[k] = v[k];
        }
        if (st == QI_OK) layer_forward(te, &l, B, S, a);
    }
    if (st != QI_OK) return qi_fail_ctx(err, st, "text encoder");
    be->ops->rms_norm(be, &a->x, &te->final_norm, (float)c->rms_norm_eps, &a->h);
    return QI_OK;
}

/* ---- prompt embeddings ----------------------------------------------------------- */

/* Checks ids/mask and counts each prompt's real ids (n_ids[b]). */
static qi_status check_tokens(const qi_text_encoder *te, const int32_t *ids, const int32_t *mask,
                              int B, int S, int *n_ids, qi_error *err) {
    for (int b = 0; b < B; b++) {
        const int32_t *m = mask + (size_t)b * S, *id = ids + (size_t)b * S;
        int n = 0;
        while (n < S && m[n] == 1) n++;
        for (int s = n; s < S; s++)
            if (m[s] != 0)
                return qi_fail(err, QI_ERR_ARG,
                               "text encoder: attention mask of prompt %d has %d at position %d "
                               "after padding began at %d; expected right padding (1s then 0s) "
                               "as qi_prompt_tokenize gives",
                               b, m[s], s, n);
        if (n <= QI_PROMPT_DROP_IDX)
            return qi_fail(err, QI_ERR_ARG,
                           "text encoder: prompt %d has %d ids, not more than the %d-id template "
                           "prefix; tokenize it with the prompt template (qi_prompt_tokenize)",
                           b, n, QI_PROMPT_DROP_IDX);
        for (int s = 0; s < S; s++)
            if (id[s] < 0 || id[s] >= te->cfg.vocab_size)
                return qi_fail(err, QI_ERR_ARG,
                               "text encoder: prompt %d: token id %d at position %d is outside the "
                               "vocabulary (0 … %d)",
                               b, id[s], s, te->cfg.vocab_size - 1);
        n_ids[b] = n;
    }
    return QI_OK;
}

/* Runs the encoder on ids [B, run_len] and writes each prompt's rows
 * [34, n_ids[b]) into out [B, out_len, D] (zero-filled by the caller), mask
 * 1 for them. Only the kept rows are gathered (copy_rows into one packed
 * [Σ len, D] tensor) and copied back to the host. */
static qi_status encode_rows(qi_text_encoder *te, const int32_t *run_ids, const int *n_ids, int B,
                             int run_len, int out_len, float *out, int32_t *out_mask,
                             qi_error *err) {
    qi_backend *be = te->be;
    int64_t D = te->cfg.hidden_size, total = 0;
    for (int b = 0; b < B; b++) total += n_ids[b] - QI_PROMPT_DROP_IDX;
    float *host = malloc((size_t)total * (size_t)D * sizeof(float));
    if (!host) return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");

    size_t arena_mark = be->ops->mark(be);
    te_acts acts;
    qi_tensor packed;
    qi_status st = forward(te, run_ids, B, run_len, NULL, NULL, 0, &acts, err);
    if (st == QI_OK) st = qi_be_act2(be, &packed, total, D, err);
    if (st == QI_OK) {
        int64_t row = 0;
        for (int b = 0; b < B; b++) {
            int64_t len = n_ids[b] - QI_PROMPT_DROP_IDX;
            be->ops->copy_rows(be, &acts.h, (int64_t)b * run_len + QI_PROMPT_DROP_IDX, &packed,
                               row, len);
            row += len;
        }
        st = be->ops->download(be, &packed, host, err);
    }
    be->ops->reset(be, arena_mark);
    if (st == QI_OK) {
        /* Re-pad: prompt b's rows first, zero rows after. */
        int64_t row = 0;
        for (int b = 0; b < B; b++) {
            int64_t len = n_ids[b] - QI_PROMPT_DROP_IDX;
            memcpy(out + (size_t)b * out_len * D, host + (size_t)row * D,
                   (size_t)(len * D) * sizeof(float));
            for (int64_t r = 0; r < len; r++) out_mask[(size_t)b * out_len + r] = 1;
            row += len;
        }
    }
    free(host);
    return st;
}

/* diffusers' _get_qwen_prompt_embeds + the max_sequence_length cut of
 * encode_prompt (spec §2.2). Exact shortcuts used: the encoder runs on no
 * more than 34 + max_sequence_length ids (causal attention: later ids cannot
 * change earlier positions) and not past the longest prompt. */
qi_status qi_text_encoder_encode(qi_text_encoder *te, const int32_t *ids, const int32_t *mask, int B,
                                 int S, int max_sequence_length, float **embeds,
                                 int32_t **embeds_mask, int *L, qi_error *err) {
    if (embeds) *embeds = NULL;
    if (embeds_mask) *embeds_mask = NULL;
    if (L) *L = 0;
    if (!te || !ids || !mask || !embeds || !embeds_mask || !L)
        return qi_fail(err, QI_ERR_ARG, "text encoder encode: NULL argument");
    if (B < 1 || S < 1)
        return qi_fail(err, QI_ERR_ARG, "text encoder encode: empty batch (B = %d, S = %d)", B, S);
    if (max_sequence_length < 1 || max_sequence_length > QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT)
        return qi_fail(err, QI_ERR_ARG,
                       "max_sequence_length %d is out of range: it must be 1 … %d (as diffusers "
                       "checks)",
                       max_sequence_length, QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT);

    int *n_ids = malloc((size_t)B * sizeof(int));
    if (!n_ids) return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");
    qi_status st = check_tokens(te, ids, mask, B, S, n_ids, err);
    if (st != QI_OK) {
        free(n_ids);
        return st;
    }

    /* Ids actually run: every prompt's kept rows lie below run_len. */
    int run_len = 0;
    for (int b = 0; b < B; b++) {
        if (n_ids[b] > QI_PROMPT_DROP_IDX + max_sequence_length)
            n_ids[b] = QI_PROMPT_DROP_IDX + max_sequence_length;
        if (n_ids[b] > run_len) run_len = n_ids[b];
    }
    int out_len = run_len - QI_PROMPT_DROP_IDX;
    size_t D = (size_t)te->cfg.hidden_size;

    int32_t *run_ids = malloc((size_t)B * run_len * sizeof(int32_t)); /* [B, run_len] */
    float *out = calloc((size_t)B * out_len * D, sizeof(float));      /* [B, out_len, D] */
    int32_t *out_mask = calloc((size_t)B * out_len, sizeof(int32_t)); /* [B, out_len] */
    if (!run_ids || !out || !out_mask)
        st = qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory (batch %d, %d tokens)", B,
                     run_len);
    if (st == QI_OK) {
        for (int b = 0; b < B; b++)
            memcpy(run_ids + (size_t)b * run_len, ids + (size_t)b * S,
                   (size_t)run_len * sizeof(int32_t));
        st = encode_rows(te, run_ids, n_ids, B, run_len, out_len, out, out_mask, err);
    }
    free(n_ids);
    free(run_ids);
    if (st != QI_OK) {
        free(out);
        free(out_mask);
        return st;
    }
    *embeds = out;
    *embeds_mask = out_mask;
    *L = out_len;
    return QI_OK;
}

/* Edit prompt embeddings: one prompt, M-RoPE positions, picture rows, the
 * Edit drop (text_encoder.h). The encoder runs on drop + the kept rows only
 * (causal: later ids cannot change them). */
qi_status qi_text_encoder_encode_edit(qi_text_encoder *te, const int32_t *ids, int S, const int32_t *positions,
                                      const float *image_rows, int n_image, int drop, int max_sequence_length,
                                      float **embeds, int *L, qi_error *err) {
    if (embeds) *embeds = NULL;
    if (L) *L = 0;
    if (!te || !ids || !embeds || !L || (n_image > 0 && !image_rows))
        return qi_fail(err, QI_ERR_ARG, "text encoder encode_edit: NULL argument");
    if (drop < 0 || S <= drop)
        return qi_fail(err, QI_ERR_ARG, "text encoder encode_edit: %d ids, not more than the %d-id template prefix",
                       S, drop);
    if (max_sequence_length < 0 || max_sequence_length > QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT)
        return qi_fail(err, QI_ERR_ARG, "max_sequence_length %d is out of range: it must be 0 (no cut) … %d",
                       max_sequence_length, QI_PROMPT_MAX_SEQUENCE_LENGTH_LIMIT);
    if (max_sequence_length == 0) max_sequence_length = S - drop;
    const qi_text_encoder_config *c = &te->cfg;
    if (positions && c->mrope_section[0] + c->mrope_section[1] + c->mrope_section[2] != c->head_dim / 2)
        return qi_fail(err, QI_ERR_FORMAT,
                       "text encoder: mrope_section %d/%d/%d does not add up to head_dim/2 = %d; give a "
                       "config.json with rope_parameters.mrope_section",
                       c->mrope_section[0], c->mrope_section[1], c->mrope_section[2], c->head_dim / 2);
    int pads = 0;
    for (int s = 0; s < S; s++) {
        if (ids[s] < 0 || ids[s] >= c->vocab_size)
            return qi_fail(err, QI_ERR_ARG, "text encoder: token id %d at position %d is outside the vocabulary",
                           ids[s], s);
        pads += ids[s] == QI_TE_IMAGE_PAD_ID;
    }
    if (pads != n_image)
        return qi_fail(err, QI_ERR_ARG, "text encoder: %d <|image_pad|> ids but %d picture rows", pads, n_image);
    int out_len = S - drop < max_sequence_length ? S - drop : max_sequence_length, run_len = drop + out_len;
    int64_t D = c->hidden_size;
    float *out = malloc((size_t)out_len * (size_t)D * sizeof(float));
    if (!out) return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");
    /* Picture rows past run_len are never seen: only those before count. */
    int used = 0;
    for (int s = 0; s < run_len; s++) used += ids[s] == QI_TE_IMAGE_PAD_ID;
    int32_t *pos_run = NULL;
    if (positions && !(pos_run = malloc((size_t)run_len * 3 * sizeof(int32_t)))) {
        free(out);
        return qi_fail(err, QI_ERR_NOMEM, "text encoder: out of memory");
    }
    for (int a = 0; pos_run && a < 3; a++)
        memcpy(pos_run + (size_t)a * run_len, positions + (size_t)a * S, (size_t)run_len * sizeof(int32_t));
    qi_backend *be = te->be;
    size_t mark = be->ops->mark(be);
    te_acts acts;
    qi_tensor kept;
    qi_status st = forward(te, ids, 1, run_len, pos_run, image_rows, used, &acts, err);
    if (st == QI_OK) st = qi_be_act2(be, &kept, out_len, D, err);
    if (st == QI_OK) {
        be->ops->copy_rows(be, &acts.h, drop, &kept, 0, out_len);
        st = be->ops->download(be, &kept, out, err);
    }
    be->ops->reset(be, mark);
    free(pos_run);
    if (st != QI_OK) {
        free(out);
        return st;
    }
    *embeds = out;
    *L = out_len;
    return QI_OK;
}

/* ---- sizes for the residency planner ---------------------------------------------- */

static size_t rounded(int64_t elems, size_t es) { return ((size_t)elems * es + 255) & ~(size_t)255; }

size_t qi_text_encoder_act_bytes(const qi_text_encoder_config *c, size_t act_size, int B, int S) {
    int64_t BS = (int64_t)B * S, D = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KVD = (int64_t)c->num_kv_heads * c->head_dim;
    return 3 * rounded(BS * D, act_size) + 2 * rounded(BS * QD, act_size) + 2 * rounded(BS * KVD, act_size) +
           3 * rounded(BS * I, act_size) + 2 * rounded((int64_t)S * (c->head_dim / 2), 4) + rounded(BS, 4) +
           rounded(BS * D, act_size); /* x h proj, q attn, k v, gate up mlp, RoPE, ids, packed rows */
}

qi_te_unit qi_text_encoder_weight_unit(const char *name, int ndim, int *layer) {
    *layer = -1;
    for (size_t i = QI_ARRAY_LEN(name_prefixes); i-- > 0;) { /* the longer prefix first */
        size_t n = strlen(name_prefixes[i]);
        if (strncmp(name, name_prefixes[i], n) != 0) continue;
        const char *rest = name + n;
        if (!strcmp(rest, "embed_tokens.weight")) return QI_TE_UNIT_EMBED;
        if (!strcmp(rest, "norm.weight")) return QI_TE_UNIT_GLOBAL;
        if (strncmp(rest, "layers.", 7) != 0) return QI_TE_UNIT_NONE;
        char *end;
        long l = strtol(rest + 7, &end, 10);
        if (*end != '.' || l < 0 || l > 100000) return QI_TE_UNIT_NONE;
        *layer = (int)l;
        return ndim == 2 ? QI_TE_UNIT_LAYER : QI_TE_UNIT_GLOBAL;
    }
    return QI_TE_UNIT_NONE;
}

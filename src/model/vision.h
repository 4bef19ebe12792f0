/*
 * vision.h — the Qwen2.5-VL vision tower that reads Qwen-Image-Edit's
 * reference pictures, and the host-side picture preparation in front of it.
 *
 *     qi_vision *vt;
 *     if (qi_vision_load(te_src, be, &vt, &err) != QI_OK) ...   // the text encoder's source
 *     int W, H;  qi_edit_calculate_dimensions(QI_EDIT_VL_AREA, src_w, src_h, &W, &H);
 *     ... resize the picture to W×H (PIL LANCZOS), then to the processor size ...
 *     int ph, pw; qi_vl_smart_resize(H, W, &vt_cfg->..., &ph, &pw, &err);
 *     ... resize to pw×ph (torchvision bicubic, antialias) into rgb ...
 *     float *rows = malloc(qi_vl_patch_rows(ph, pw, cfg) * cfg->patch_dim floats);
 *     qi_vl_patchify(rgb, ph, pw, cfg, rows);              // = transformers' pixel_values
 *     float *emb = malloc(ph/28 * pw/28 * out_hidden floats);
 *     qi_vision_encode(vt, rows, ph / 14, pw / 14, emb, &err); // the <|image_pad|> rows
 *
 * The tower (transformers Qwen2_5_VisionTransformerPretrainedModel, one
 * picture at a time: pictures never attend to each other):
 *   patch embedding  = a linear map of each 3·2·14·14 pixel row (the Conv3d
 *                      with kernel = stride, no bias);
 *   window order     = merged 2×2 units regrouped into windows of
 *                      window_size/patch/merge units per side (4×4; smaller at
 *                      the right and bottom edges);
 *   blocks           = pre-RMSNorm attention (qkv with bias, 2-D rotary on
 *                      (h, w), rotate_half pairs) and a SwiGLU MLP with biases;
 *                      blocks in fullatt_block_indexes attend over the whole
 *                      picture, the others within their window;
 *   merger           = RMSNorm, 4 patches' rows concatenated, Linear, exact
 *                      (erf) GELU, Linear → out_hidden (the LM's width);
 *   output           = back in picture (row-major merged unit) order.
 * The window permutation is done on the host before the patch embedding
 * (a row permutation commutes with the row-wise linear) and undone on the
 * host after the download, so the backend sees contiguous windows only.
 */
#ifndef QI_VISION_H
#define QI_VISION_H

#include <stdint.h>

#include "backend/backend.h"
#include "base/base.h"
#include "io/source.h"

#define QI_VISION_MAX_DEPTH 128

typedef struct qi_vision_config {
    int depth;              /* blocks: 32 (7B), 2 (tiny) */
    int hidden_size;        /* 1280 / 32 */
    int num_heads;          /* 16 / 2 */
    int head_dim;           /* hidden_size / num_heads: 80 / 16 */
    int intermediate_size;  /* MLP width: 3420 / 64 */
    int out_hidden_size;    /* merger output = the LM's hidden size: 3584 / 64 */
    int in_channels;        /* 3 */
    int patch_size;         /* 14 */
    int temporal_patch_size;/* 2: the still picture is repeated for both frames */
    int spatial_merge_size; /* 2 */
    int window_size;        /* 112 pixels = 4 merged units of 28 */
    int n_fullatt;
    int fullatt[QI_VISION_MAX_DEPTH]; /* fullatt_block_indexes: 7, 15, 23, 31 (7B) */
    double rope_theta;      /* 10000 */
    double rms_norm_eps;    /* 1e-6 (fixed in the reference code) */
    int patch_dim;          /* in_channels · temporal · patch² = 1176 */
} qi_vision_config;

typedef struct qi_vision qi_vision;

/* Whether `src` (a text encoder source) carries a vision tower: `visual.*`
 * or `model.visual.*` names (diffusers folders of the Edit models, ComfyUI's
 * qwen_2.5_vl_7b*.safetensors, a llama.cpp mmproj opened with
 * qi_source_open_mmproj). A llama.cpp text-encoder GGUF never does: its
 * tower lives in the separate mmproj file. The fused `attn.qkv` or the
 * split `attn.q` / `attn.k` / `attn.v` (the mmproj's) are both bound. */
int qi_vision_present(const qi_source *src);

/* Loads the tower of `src`. The config is config.json's `vision_config`
 * where the source has one; else derived from the tensor shapes with
 * Qwen2.5-VL-7B's head dim 80, window 112 and full-attention blocks
 * 7/15/23/31 (a tower that is not 7B-shaped asks for config.json). Every
 * tensor's shape is checked. `src` and `be` must outlive the tower. */
qi_status qi_vision_load(const qi_source *src, qi_backend *be, qi_vision **out, qi_error *err);
void qi_vision_free(qi_vision *vt);
const qi_vision_config *qi_vision_get_config(const qi_vision *vt);

/* One picture: pixel_rows [grid_h·grid_w, patch_dim] float32 in processor
 * order (qi_vl_patchify; grid in patches, both even) → out
 * [grid_h·grid_w/4, out_hidden_size] float32 in picture order (what replaces
 * the picture's <|image_pad|> embeddings). The arena is reset on return. */
qi_status qi_vision_encode(qi_vision *vt, const float *pixel_rows, int grid_h, int grid_w, float *out,
                           qi_error *err);

/* ---- picture preparation (host) ---- */

/* The Qwen2-VL image processor's settings (processor/preprocessor_config.json
 * as the Edit repos ship it; these are also transformers' defaults). */
typedef struct qi_vl_preprocess {
    int patch_size, merge_size, temporal_patch_size;
    int64_t min_pixels, max_pixels; /* 3136, 12845056 */
    double rescale_factor;          /* 1/255 */
    double mean[3], std[3];         /* CLIP's */
} qi_vl_preprocess;

qi_vl_preprocess qi_vl_preprocess_default(void);

/* The Edit pipelines' areas (QwenImageEditPlusPipeline's module constants):
 * the vision tower's condition pictures and the VAE's. The engine takes them
 * as parameters (tests use smaller ones); these are the real values. */
#define QI_EDIT_VL_AREA (384 * 384)
#define QI_EDIT_VAE_AREA (1024 * 1024)

/* diffusers calculate_dimensions(area, W/H): width = √(area·ratio), height =
 * width/ratio, each rounded half-to-even to a multiple of 32. */
void qi_edit_calculate_dimensions(int64_t area, int src_w, int src_h, int *out_w, int *out_h);

/* transformers smart_resize(h, w, factor = patch·merge): round each side to
 * the factor (half to even), scaled down over max_pixels or up under
 * min_pixels. QI_ERR_ARG for a side of 0 or an aspect ratio over 200 (as the
 * reference refuses). */
qi_status qi_vl_smart_resize(int height, int width, const qi_vl_preprocess *pp, int *out_h, int *out_w,
                             qi_error *err);

/* rgb [H, W, 3] uint8 (H, W multiples of patch·merge) → rows
 * [(H/p)·(W/p), 3·temporal·p·p]: each merge block's patches consecutively
 * (row-major), blocks row-major; each row channel × frame × p × p, the
 * picture in every frame; values (x − 255·mean) / (255·std) in float32, the
 * fused normalisation of transformers' fast processor. */
void qi_vl_patchify(const uint8_t *rgb, int height, int width, const qi_vl_preprocess *pp, float *rows);

#endif

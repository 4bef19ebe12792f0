/*
 * resize_torch.h — torch's antialiased bicubic resize of 8-bit pictures, as
 * transformers' Qwen2-VL image processor runs it (torchvision `resize` on a
 * uint8 tensor → `_upsample_bicubic2d_aa`, its uint8 CPU kernel), bit for
 * bit (shared/reference/edit/README.md E2: PIL's bicubic differs by up to
 * 0.015 after normalisation).
 *
 * The algorithm (the Pillow-style separable resampler torch adopted):
 *   - per axis, scale = in/out (double); support = 2·max(scale, 1);
 *     output pixel i reads input [xmin, xmin + xsize) around
 *     center = scale·(i + 0.5), xmin = max(int(center − support + 0.5), 0),
 *     xsize = min(int(center + support + 0.5), in) − xmin;
 *     weight_j = cubic((j + xmin − center + 0.5) / max(scale, 1)), Keys
 *     a = −0.5, normalised to sum 1 (double);
 *   - the weights become int16 with P fraction bits, P the largest < 22 with
 *     round(max weight · 2^(P+1)) < 2^15 (per axis), each rounded half away
 *     from zero;
 *   - horizontal pass first (skipped when the width is unchanged) into an
 *     8-bit picture, then the vertical pass (skipped likewise): each output
 *     = clamp((2^(P−1) + Σ in·w) >> P, 0, 255) in integer arithmetic.
 */
#ifndef QI_RESIZE_TORCH_H
#define QI_RESIZE_TORCH_H

#include <stdint.h>

#include "base/base.h"

/* in [in_h, in_w, channels] u8 → out [out_h, out_w, channels] u8 (channels
 * 1..4; sizes 1..65536). */
qi_status qi_resize_bicubic_aa_u8(const uint8_t *in, int in_w, int in_h, int channels, uint8_t *out, int out_w,
                                  int out_h, qi_error *err);

#endif

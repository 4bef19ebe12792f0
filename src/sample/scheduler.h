/*
 * scheduler.h — the flow-matching Euler schedule as QwenImagePipeline drives
 * diffusers' FlowMatchEulerDiscreteScheduler (spec: denoiser.md §2).
 *
 * What this file owns: the scheduler configuration (from a
 * scheduler_config.json, or the Lightning preset), the sigma / timestep
 * schedule for N steps at a given image size, and the Euler step.
 * Not here: the loop itself, CFG (the pipeline does those).
 *
 * Config keys. A diffusers-saved config carries every constructor argument of
 * its diffusers version, so:
 *   - required (error when absent): num_train_timesteps, use_dynamic_shifting,
 *     and the keys the schedule then depends on — base_shift, max_shift,
 *     base_image_seq_len, max_image_seq_len when dynamic shifting is on,
 *     shift when it is off. They exist since the class was introduced, and
 *     diffusers' own defaults for them (0.5 / 1.15 / 256 / 4096, Flux's
 *     values) would silently give a different schedule from Qwen's.
 *   - optional, with diffusers' default (keys added in later diffusers
 *     versions; the default is the behaviour before the key existed, so old
 *     files lack them legitimately): shift (1.0) when dynamic shifting is on
 *     (unused then), invert_sigmas (false), shift_terminal (null),
 *     use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas (false),
 *     time_shift_type ("exponential"), stochastic_sampling (false).
 *   - unsupported when true, an error naming the key: use_karras_sigmas,
 *     use_exponential_sigmas, use_beta_sigmas, stochastic_sampling.
 *   - `_class_name`, when present, must be FlowMatchEulerDiscreteScheduler.
 *   Other keys are ignored.
 */
#ifndef QI_SCHEDULER_H
#define QI_SCHEDULER_H

#include "base/base.h"

typedef enum qi_time_shift_type {
    QI_TIME_SHIFT_EXPONENTIAL = 0, /* e^mu / (e^mu + (1/s - 1)) */
    QI_TIME_SHIFT_LINEAR = 1       /* mu / (mu + (1/s - 1)) */
} qi_time_shift_type;

typedef struct qi_scheduler_config {
    int num_train_timesteps;          /* timesteps = sigmas * this (1000) */
    double shift;                     /* static shift; used only without dynamic shifting */
    int use_dynamic_shifting;         /* mu from the image sequence length */
    double base_shift, max_shift;     /* mu at base_image_seq_len / max_image_seq_len */
    int base_image_seq_len;           /* packed tokens, (H/16)(W/16) */
    int max_image_seq_len;
    qi_time_shift_type time_shift_type;
    int has_shift_terminal;           /* 0 for null (or 0.0, which diffusers treats as off) */
    double shift_terminal;            /* the last sigma is stretched to this */
    int invert_sigmas;                /* sigmas -> 1 - sigmas, final sigma 1 */
    int use_karras_sigmas;            /* unsupported: always 0 in a loaded config */
    int use_exponential_sigmas;       /* unsupported */
    int use_beta_sigmas;              /* unsupported */
    int stochastic_sampling;          /* unsupported */
} qi_scheduler_config;

/* The Qwen-Image-Lightning config (denoiser.md §2.1): dynamic shifting with
 * base_shift = max_shift = ln 3 (a static shift of 3 at every size),
 * exponential time shift, no shift_terminal. */
qi_scheduler_config qi_scheduler_config_lightning(void);

/* Qwen/Qwen-Image's own scheduler_config.json (denoiser.md §2.1): dynamic
 * shifting 0.5 → 0.9 over 256 → 8192 tokens, exponential time shift,
 * shift_terminal 0.02. The built-in default where a model comes as single
 * files with no scheduler folder (ComfyUI, LightX2V, GGUF users). */
qi_scheduler_config qi_scheduler_config_qwen_image(void);

/* Reads a scheduler_config.json (see the key rules above). */
qi_status qi_scheduler_config_load(const char *json_path, qi_scheduler_config *out,
                                   qi_error *err);

/* The same from JSON text; `source` names it in messages (a path, or e.g.
 * "case.json: scheduler"). Accepts a config object or, for convenience, an
 * object whose "scheduler" member is one (a reference case.json). */
qi_status qi_scheduler_config_parse(const char *json_text, const char *source,
                                    qi_scheduler_config *out, qi_error *err);

/* mu of the dynamic shift for image_seq_len packed tokens (float64, no
 * clamping), as the pipeline's calculate_shift. */
double qi_scheduler_mu(const qi_scheduler_config *c, int image_seq_len);

/* The schedule exactly as QwenImagePipeline computes it, in float32:
 * s = linspace(1, 1/steps, steps); time shift (mu for image_seq_len);
 * shift_terminal stretch; timesteps = sigmas * num_train_timesteps.
 * sigmas gets steps+1 entries (the last 0, or 1 when inverted), timesteps
 * steps entries. image_seq_len = (height/16)·(width/16). */
qi_status qi_scheduler_sigmas(const qi_scheduler_config *c, int steps, int image_seq_len,
                              float *sigmas, float *timesteps, qi_error *err);

/* One Euler step in float32: x[i] += (sigma_next - sigma) · v[i], the
 * difference rounded first, then the product, then the sum. */
void qi_scheduler_euler_step(float *x, const float *v, int64_t n, float sigma, float sigma_next);

#endif

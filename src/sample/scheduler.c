/*
 * scheduler.c — flow-matching Euler schedule of QwenImagePipeline +
 * FlowMatchEulerDiscreteScheduler (spec: denoiser.md §2.1–2.3).
 *
 * Owns config parsing (scheduler_config.json via cJSON, the key rules are in
 * scheduler.h), the float32 schedule, and the Euler step. The order of the
 * float32 operations below is the specification: it reproduces the
 * reference `sigmas` / `timesteps` bit for bit.
 */
#include "sample/scheduler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/model_dir.h" /* qi_json_parse: strict, with line positions */

/* ======================================================================== */
/* Presets                                                                  */
/* ======================================================================== */

static qi_scheduler_config config_defaults(void) {
    /* diffusers' constructor defaults for the keys that may be absent. */
    qi_scheduler_config c;
    memset(&c, 0, sizeof c);
    c.num_train_timesteps = 1000;
    c.shift = 1.0;
    c.time_shift_type = QI_TIME_SHIFT_EXPONENTIAL;
    return c;
}

qi_scheduler_config qi_scheduler_config_lightning(void) {
    /* ModelTC/Qwen-Image-Lightning generate_with_diffusers.py: "We use shift=3
     * in distillation" -> base_shift = max_shift = ln 3. */
    qi_scheduler_config c = config_defaults();
    c.use_dynamic_shifting = 1;
    c.base_shift = log(3.0); /* 1.0986122886681098 */
    c.max_shift = log(3.0);
    c.base_image_seq_len = 256;
    c.max_image_seq_len = 8192;
    c.has_shift_terminal = 0;
    return c;
}

qi_scheduler_config qi_scheduler_config_qwen_image(void) {
    qi_scheduler_config c = config_defaults();
    c.use_dynamic_shifting = 1;
    c.base_shift = 0.5;
    c.max_shift = 0.9;
    c.base_image_seq_len = 256;
    c.max_image_seq_len = 8192;
    c.has_shift_terminal = 1;
    c.shift_terminal = 0.02;
    return c;
}

/* ======================================================================== */
/* JSON                                                                     */
/* ======================================================================== */

typedef struct json_ctx {
    const cJSON *obj;
    const char *source;
    qi_error *err;
} json_ctx;

/* A number member. required: absent (or null) is an error; else *out keeps
 * its default. Returns QI_OK, or the error. `present` (optional) reports
 * whether a non-null value was found. */
static qi_status json_number(const json_ctx *j, const char *key, int required, double *out,
                             int *present) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->obj, key);
    if (present) *present = 0;
    if (!v || cJSON_IsNull(v)) {
        if (!required) return QI_OK;
        return qi_fail(j->err, QI_ERR_FORMAT,
                       "%s: scheduler config has no value for \"%s\" (a number is required here; "
                       "every diffusers-saved FlowMatchEulerDiscreteScheduler config has it)",
                       j->source, key);
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return qi_fail(j->err, QI_ERR_FORMAT, "%s: scheduler config \"%s\" must be a finite number",
                       j->source, key);
    *out = v->valuedouble;
    if (present) *present = 1;
    return QI_OK;
}

static qi_status json_int(const json_ctx *j, const char *key, int required, int *out) {
    double d = *out;
    qi_status st = json_number(j, key, required, &d, NULL);
    if (st != QI_OK) return st;
    if (d != floor(d) || d < 1 || d > 1e9)
        return qi_fail(j->err, QI_ERR_FORMAT,
                       "%s: scheduler config \"%s\" must be a positive integer, got %g",
                       j->source, key, d);
    *out = (int)d;
    return QI_OK;
}

static qi_status json_bool(const json_ctx *j, const char *key, int required, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (!required) return QI_OK;
        return qi_fail(j->err, QI_ERR_FORMAT,
                       "%s: scheduler config has no value for \"%s\" (true or false is required)", j->source,
                       key);
    }
    if (!cJSON_IsBool(v))
        return qi_fail(j->err, QI_ERR_FORMAT, "%s: scheduler config \"%s\" must be true or false",
                       j->source, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return QI_OK;
}

/* An option this engine does not implement: absent or false is fine. */
static qi_status json_unsupported_flag(const json_ctx *j, const char *key, const char *what,
                                       int *out) {
    qi_status st = json_bool(j, key, 0, out);
    if (st != QI_OK) return st;
    if (*out)
        return qi_fail(j->err, QI_ERR_UNSUPPORTED,
                       "%s: scheduler config \"%s\": true is not supported (%s); set it to false",
                       j->source, key, what);
    return QI_OK;
}

static qi_status parse_object(const json_ctx *j, qi_scheduler_config *out) {
    qi_scheduler_config c = config_defaults();
    qi_status st;

    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j->obj, "_class_name");
    if (cls && (!cJSON_IsString(cls) ||
                strcmp(cls->valuestring, "FlowMatchEulerDiscreteScheduler") != 0))
        return qi_fail(j->err, QI_ERR_UNSUPPORTED,
                       "%s: scheduler \"_class_name\" is %s%s%s; only "
                       "FlowMatchEulerDiscreteScheduler is supported",
                       j->source, cJSON_IsString(cls) ? "\"" : "",
                       cJSON_IsString(cls) ? cls->valuestring : "not a string",
                       cJSON_IsString(cls) ? "\"" : "");

    if ((st = json_int(j, "num_train_timesteps", 1, &c.num_train_timesteps)) != QI_OK) return st;
    if ((st = json_bool(j, "use_dynamic_shifting", 1, &c.use_dynamic_shifting)) != QI_OK)
        return st;
    int dyn = c.use_dynamic_shifting;
    if ((st = json_number(j, "shift", !dyn, &c.shift, NULL)) != QI_OK) return st;
    if (!dyn && !(c.shift > 0)) /* shift·s / (1 + (shift − 1)·s) leaves (0, 1] otherwise */
        return qi_fail(j->err, QI_ERR_FORMAT, "%s: scheduler config \"shift\" must be above 0, got %g",
                       j->source, c.shift);
    if ((st = json_number(j, "base_shift", dyn, &c.base_shift, NULL)) != QI_OK) return st;
    if ((st = json_number(j, "max_shift", dyn, &c.max_shift, NULL)) != QI_OK) return st;
    if (dyn) {
        if ((st = json_int(j, "base_image_seq_len", 1, &c.base_image_seq_len)) != QI_OK)
            return st;
        if ((st = json_int(j, "max_image_seq_len", 1, &c.max_image_seq_len)) != QI_OK)
            return st;
        if (c.base_image_seq_len == c.max_image_seq_len)
            return qi_fail(j->err, QI_ERR_FORMAT,
                           "%s: scheduler config base_image_seq_len equals max_image_seq_len "
                           "(%d): the shift slope is undefined",
                           j->source, c.base_image_seq_len);
    }

    const cJSON *tst = cJSON_GetObjectItemCaseSensitive(j->obj, "time_shift_type");
    if (tst && !cJSON_IsNull(tst)) {
        if (cJSON_IsString(tst) && strcmp(tst->valuestring, "exponential") == 0)
            c.time_shift_type = QI_TIME_SHIFT_EXPONENTIAL;
        else if (cJSON_IsString(tst) && strcmp(tst->valuestring, "linear") == 0)
            c.time_shift_type = QI_TIME_SHIFT_LINEAR;
        else
            return qi_fail(j->err, QI_ERR_FORMAT,
                           "%s: scheduler config \"time_shift_type\" must be \"exponential\" or "
                           "\"linear\"",
                           j->source);
    }

    int has_terminal = 0;
    if ((st = json_number(j, "shift_terminal", 0, &c.shift_terminal, &has_terminal)) != QI_OK)
        return st;
    c.has_shift_terminal = has_terminal && c.shift_terminal != 0.0; /* diffusers: `if shift_terminal:` */
    if (c.has_shift_terminal && !(c.shift_terminal > 0.0 && c.shift_terminal < 1.0))
        return qi_fail(j->err, QI_ERR_FORMAT,
                       "%s: scheduler config \"shift_terminal\" must be between 0 and 1 (the last "
                       "sigma), got %g", j->source, c.shift_terminal);

    if ((st = json_bool(j, "invert_sigmas", 0, &c.invert_sigmas)) != QI_OK) return st;
    if ((st = json_unsupported_flag(j, "use_karras_sigmas", "Karras sigmas",
                                    &c.use_karras_sigmas)) != QI_OK)
        return st;
    if ((st = json_unsupported_flag(j, "use_exponential_sigmas", "exponential sigmas",
                                    &c.use_exponential_sigmas)) != QI_OK)
        return st;
    if ((st = json_unsupported_flag(j, "use_beta_sigmas", "beta sigmas", &c.use_beta_sigmas)) !=
        QI_OK)
        return st;
    if ((st = json_unsupported_flag(j, "stochastic_sampling", "stochastic Euler steps",
                                    &c.stochastic_sampling)) != QI_OK)
        return st;

    *out = c;
    return QI_OK;
}

qi_status qi_scheduler_config_parse(const char *json_text, const char *source,
                                    qi_scheduler_config *out, qi_error *err) {
    if (!source) source = "scheduler config";
    if (!json_text || !out)
        return qi_fail(err, QI_ERR_ARG, "%s: no JSON text or no output given", source);
    cJSON *root;
    qi_status st = qi_json_parse(json_text, strlen(json_text), source, &root, err);
    if (st) return st; /* the message gives the line and the text near the mistake */
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object", source);
    }
    const cJSON *obj = root;
    const cJSON *nested = cJSON_GetObjectItemCaseSensitive(root, "scheduler");
    if (nested && cJSON_IsObject(nested)) obj = nested; /* a reference case.json */
    json_ctx j = {obj, source, err};
    st = parse_object(&j, out);
    cJSON_Delete(root);
    return st;
}

qi_status qi_scheduler_config_load(const char *json_path, qi_scheduler_config *out,
                                   qi_error *err) {
    if (!json_path) return qi_fail(err, QI_ERR_ARG, "scheduler config: no path given");
    char *text = NULL;
    size_t len = 0;
    qi_status st = qi_read_text_file(json_path, &text, &len, err);
    if (st != QI_OK) return st;
    st = qi_scheduler_config_parse(text, json_path, out, err);
    free(text);
    return st;
}

/* ======================================================================== */
/* The schedule                                                             */
/* ======================================================================== */

double qi_scheduler_mu(const qi_scheduler_config *c, int image_seq_len) {
    /* calculate_shift of the pipeline, float64, no clamping. */
    double m = (c->max_shift - c->base_shift) /
               (double)(c->max_image_seq_len - c->base_image_seq_len);
    double b = c->base_shift - m * (double)c->base_image_seq_len;
    return (double)image_seq_len * m + b;
}

/* np.linspace(1.0, 1/N, N) in float64 (start + i·step, the last entry set to
 * the stop exactly), then the float32 cast of set_timesteps(sigmas=...). */
static void base_sigmas(int steps, float *s) {
    double start = 1.0, stop = 1.0 / (double)steps;
    if (steps == 1) {
        s[0] = (float)start;
        return;
    }
    double step = (stop - start) / (double)(steps - 1);
    for (int i = 0; i < steps; i++) {
        double y = (double)i * step;
        y = y + start;
        s[i] = (float)y;
    }
    s[steps - 1] = (float)stop;
}

qi_status qi_scheduler_sigmas(const qi_scheduler_config *c, int steps, int image_seq_len,
                              float *sigmas, float *timesteps, qi_error *err) {
    if (!c || !sigmas || !timesteps)
        return qi_fail(err, QI_ERR_ARG, "scheduler: config or output buffers missing");
    if (steps < 1 || steps > 100000)
        return qi_fail(err, QI_ERR_ARG, "scheduler: steps must be in 1..100000, got %d", steps);
    if (c->use_karras_sigmas || c->use_exponential_sigmas || c->use_beta_sigmas)
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "scheduler: karras/exponential/beta sigmas are not supported");
    if (c->use_dynamic_shifting && image_seq_len < 1)
        return qi_fail(err, QI_ERR_ARG,
                       "scheduler: image_seq_len must be >= 1 for dynamic shifting, got %d",
                       image_seq_len);
    if (c->use_dynamic_shifting && c->base_image_seq_len == c->max_image_seq_len)
        return qi_fail(err, QI_ERR_ARG,
                       "scheduler: base_image_seq_len equals max_image_seq_len (%d)",
                       c->base_image_seq_len);

    float *s = sigmas; /* the first `steps` entries are built in place */
    base_sigmas(steps, s);

    /* Time shift. Python scalars meet float32 arrays as float32 (NumPy 2). */
    if (c->use_dynamic_shifting) {
        double mu = qi_scheduler_mu(c, image_seq_len);
        float a = c->time_shift_type == QI_TIME_SHIFT_EXPONENTIAL ? (float)exp(mu) : (float)mu;
        for (int i = 0; i < steps; i++) {
            float r = 1.0f / s[i] - 1.0f; /* (1/t - 1) ** 1.0 */
            s[i] = a / (a + r);
        }
    } else {
        float shift = (float)c->shift;
        float shift_minus_one = (float)(c->shift - 1.0);
        for (int i = 0; i < steps; i++) s[i] = (shift * s[i]) / (1.0f + shift_minus_one * s[i]);
    }

    /* Stretch so that the last sigma lands on shift_terminal. With one step
     * the last sigma is the first, 1: diffusers divides 0 by 0 here and
     * denoises with NaN; say so instead. */
    if (c->has_shift_terminal && steps == 1)
        return qi_fail(err, QI_ERR_ARG,
                       "scheduler: a 1-step schedule cannot end at shift_terminal %g (the reference divides 0 by "
                       "0 and gives NaN); use 2 or more steps, or a scheduler without shift_terminal "
                       "(--scheduler lightning)", c->shift_terminal);
    if (c->has_shift_terminal) {
        float scale = (1.0f - s[steps - 1]) / (float)(1.0 - c->shift_terminal);
        for (int i = 0; i < steps; i++) s[i] = 1.0f - (1.0f - s[i]) / scale;
    }

    if (c->invert_sigmas)
        for (int i = 0; i < steps; i++) s[i] = 1.0f - s[i];
    const float ntt = (float)c->num_train_timesteps;
    for (int i = 0; i < steps; i++) timesteps[i] = s[i] * ntt;
    sigmas[steps] = c->invert_sigmas ? 1.0f : 0.0f;
    /* Flow matching mixes noise and image by sigma: a value outside [0, 1]
     * (extreme shifts overflow to inf/NaN, or cross 0) gives garbage, so the
     * schedule is refused here, before any work, naming the step. */
    for (int i = 0; i < steps; i++)
        if (!(s[i] >= 0.0f && s[i] <= 1.0f)) {
            char v[32];
            snprintf(v, sizeof v, isnan(s[i]) ? "not a number" : "%g", (double)s[i]);
            return qi_fail(err, QI_ERR_FORMAT,
                           "scheduler: sigma %d of the %d-step schedule at %d image tokens is %s, outside "
                           "[0, 1]; the config's shift values (shift, base_shift/max_shift, shift_terminal) "
                           "are out of range", i, steps, image_seq_len, v);
        }
    return QI_OK;
}

void qi_scheduler_euler_step(float *x, const float *v, int64_t n, float sigma, float sigma_next) {
    const float dt = sigma_next - sigma;
    for (int64_t i = 0; i < n; i++) {
        float delta = dt * v[i];
        x[i] = x[i] + delta;
    }
}

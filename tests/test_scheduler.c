/*
 * test_scheduler.c — the flow-match schedule of QwenImagePipeline
 * (spec: denoiser.md §2).
 *
 * Claims: for every public case, the sigmas and timesteps built from the
 * case's scheduler config match the reference tensors; the values tabulated
 * in the spec (Lightning 4/8 steps, Qwen's config at several sizes and step
 * counts) are reproduced; the Lightning preset equals the config of the
 * Lightning cases and the tiny model's scheduler_config.json; a static
 * shift of 3 is the Lightning schedule; inversion mirrors the sigmas; the
 * Euler step reproduces the next call's latents; bad configs (missing key,
 * unsupported option, wrong class, bad JSON, no file) are errors that name
 * the key.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "io/safetensors.h"
#include "sample/scheduler.h"
#include "test.h"
#include "testdata.h"

static const char *const CASES[] = {"en_lightning8_lora", "zh_cfg4_base",
                                    "batch2_lightning4_lora"};
static const char *const LIGHTNING_CASES[] = {"en_lightning8_lora", "batch2_lightning4_lora"};

/* The Qwen/Qwen-Image scheduler_config.json (spec §2.1). */
static const char *QWEN_CONFIG =
    "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"base_image_seq_len\": 256,"
    " \"base_shift\": 0.5, \"invert_sigmas\": false, \"max_image_seq_len\": 8192,"
    " \"max_shift\": 0.9, \"num_train_timesteps\": 1000, \"shift\": 1.0,"
    " \"shift_terminal\": 0.02, \"stochastic_sampling\": false,"
    " \"time_shift_type\": \"exponential\", \"use_beta_sigmas\": false,"
    " \"use_dynamic_shifting\": true, \"use_exponential_sigmas\": false,"
    " \"use_karras_sigmas\": false}";

static int config_equal(const qi_scheduler_config *a, const qi_scheduler_config *b) {
    return a->num_train_timesteps == b->num_train_timesteps && a->shift == b->shift &&
           a->use_dynamic_shifting == b->use_dynamic_shifting && a->base_shift == b->base_shift &&
           a->max_shift == b->max_shift && a->base_image_seq_len == b->base_image_seq_len &&
           a->max_image_seq_len == b->max_image_seq_len &&
           a->time_shift_type == b->time_shift_type &&
           a->has_shift_terminal == b->has_shift_terminal &&
           (!a->has_shift_terminal || a->shift_terminal == b->shift_terminal) &&
           a->invert_sigmas == b->invert_sigmas && a->use_karras_sigmas == b->use_karras_sigmas &&
           a->use_exponential_sigmas == b->use_exponential_sigmas &&
           a->use_beta_sigmas == b->use_beta_sigmas &&
           a->stochastic_sampling == b->stochastic_sampling;
}

/* ---- reference cases --------------------------------------------------------- */

static void public_cases_sigmas_and_timesteps(void) {
    for (size_t i = 0; i < QI_ARRAY_LEN(CASES); i++) {
        char path[512];
        qi_error err;
        qi_scheduler_config cfg;
        ref_case_path(path, sizeof path, CASES[i], "case.json");
        CHECK(qi_scheduler_config_load(path, &cfg, &err) == QI_OK, "%s", err.msg);
        int steps = (int)ref_case_number(CASES[i], "steps");
        int height = (int)ref_case_number(CASES[i], "height");
        int width = (int)ref_case_number(CASES[i], "width");
        int seq_len = (height / 16) * (width / 16);

        qi_st_file *f = ref_case_tensors(CASES[i]);
        if (!f) continue;
        int64_t ns = 0, nt = 0;
        float *want_sigmas = ref_floats(f, "sigmas", &ns);
        float *want_timesteps = ref_floats(f, "timesteps", &nt);
        CHECK(want_sigmas && want_timesteps && ns == steps + 1 && nt == steps,
              "%s: sigmas/timesteps missing or not %d(+1) long", CASES[i], steps);
        if (want_sigmas && want_timesteps && ns == steps + 1 && nt == steps) {
            float sigmas[128], timesteps[128];
            CHECK(qi_scheduler_sigmas(&cfg, steps, seq_len, sigmas, timesteps, &err) == QI_OK,
                  "%s", err.msg);
            double es = 0, et = 0;
            int exact = 1;
            for (int k = 0; k <= steps; k++) {
                es = fmax(es, fabs((double)sigmas[k] - want_sigmas[k]));
                exact &= sigmas[k] == want_sigmas[k];
            }
            for (int k = 0; k < steps; k++) {
                et = fmax(et, fabs((double)timesteps[k] - want_timesteps[k]));
                exact &= timesteps[k] == want_timesteps[k];
            }
            printf("  case %s (%d steps, %d tokens, mu %.8f): sigmas max err %.3g, timesteps max "
                   "err %.3g%s\n",
                   CASES[i], steps, seq_len, qi_scheduler_mu(&cfg, seq_len), es, et,
                   exact ? " (bit-exact)" : "");
            CHECK(es <= 1e-6, "%s: sigmas max err %.3g", CASES[i], es);
            CHECK(et <= 1e-6 * 1000, "%s: timesteps max err %.3g", CASES[i], et);
            CHECK(exact, "%s: not bit-exact", CASES[i]);
        }
        free(want_sigmas);
        free(want_timesteps);
        qi_st_close(f);
    }
}

static void lightning_preset_is_the_lightning_cases_config(void) {
    qi_scheduler_config preset = qi_scheduler_config_lightning(), cfg;
    qi_error err;
    char path[512];
    for (size_t i = 0; i < QI_ARRAY_LEN(LIGHTNING_CASES); i++) {
        ref_case_path(path, sizeof path, LIGHTNING_CASES[i], "case.json");
        CHECK(qi_scheduler_config_load(path, &cfg, &err) == QI_OK, "%s", err.msg);
        CHECK(config_equal(&preset, &cfg), "%s: config differs from the Lightning preset",
              LIGHTNING_CASES[i]);
    }
    /* the tiny model ships the Lightning config as its own */
    CHECK(qi_scheduler_config_load(QI_REF_MODEL "/scheduler/scheduler_config.json", &cfg, &err) ==
              QI_OK,
          "%s", err.msg);
    CHECK(config_equal(&preset, &cfg), "model/scheduler/scheduler_config.json differs");
    CHECK(preset.base_shift == 1.0986122886681098, "base_shift %.17g", preset.base_shift);
}

/* The built-in default (single files carry no scheduler) is the config the
 * base-model cases were made with: Qwen-Image's own, read from case.json. */
static void qwen_image_default_is_the_model_cases_config(void) {
    qi_scheduler_config preset = qi_scheduler_config_qwen_image(), cfg;
    qi_error err;
    char path[512];
    ref_case_path(path, sizeof path, "zh_cfg4_base", "case.json");
    CHECK(qi_scheduler_config_load(path, &cfg, &err) == QI_OK, "%s", err.msg);
    CHECK(config_equal(&preset, &cfg), "zh_cfg4_base: config differs from the built-in Qwen-Image default");
    CHECK(!config_equal(&preset, &(qi_scheduler_config){0}) && preset.shift_terminal == 0.02);
}

/* ---- the spec's tables (§2.4) ------------------------------------------------ */

static void expect_sigmas(const qi_scheduler_config *cfg, const char *what, int steps,
                          int seq_len, const float *head, int n_head, const float *tail,
                          int n_tail) {
    float sigmas[64], timesteps[64];
    qi_error err;
    CHECK(qi_scheduler_sigmas(cfg, steps, seq_len, sigmas, timesteps, &err) == QI_OK, "%s",
          err.msg);
    double worst = 0;
    for (int k = 0; k < n_head; k++) worst = fmax(worst, fabs((double)sigmas[k] - head[k]));
    for (int k = 0; k < n_tail; k++)
        worst = fmax(worst, fabs((double)sigmas[steps + 1 - n_tail + k] - tail[k]));
    CHECK(worst <= 1e-7, "%s: max err %.3g against the spec table", what, worst);
    CHECK(sigmas[0] == 1.0f && sigmas[steps] == 0.0f, "%s: ends %.9g .. %.9g", what, sigmas[0],
          sigmas[steps]);
    for (int k = 0; k < steps; k++)
        CHECK(timesteps[k] == sigmas[k] * 1000.0f, "%s: timestep %d", what, k);
}

static void spec_table_values(void) {
    qi_scheduler_config light = qi_scheduler_config_lightning(), qwen;
    qi_error err;
    CHECK(qi_scheduler_config_parse(QWEN_CONFIG, "qwen config", &qwen, &err) == QI_OK, "%s",
          err.msg);
    const float l4[] = {1.0f, 0.9f, 0.75f, 0.5f, 0.0f};
    expect_sigmas(&light, "Lightning 4", 4, 4096, l4, 5, NULL, 0);
    const float l8[] = {1.0f,        0.95454550f, 0.89999998f, 0.83333337f, 0.75f,
                        0.64285707f, 0.5f,        0.30000001f, 0.0f};
    expect_sigmas(&light, "Lightning 8", 8, 6889, l8, 9, NULL, 0);
    const float q128x64[] = {1.0f, 0.74323040f, 0.42493755f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 128x64 4", 4, 32, q128x64, 5, NULL, 0);
    const float q1024_4[] = {1.0f, 0.76670933f, 0.45561373f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 1024x1024 4", 4, 4096, q1024_4, 5, NULL, 0);
    const float q1024_50h[] = {1.0f, 0.98970091f, 0.97919148f, 0.96846533f};
    const float q1024_50t[] = {0.09549850f, 0.05847579f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 1024x1024 50", 50, 4096, q1024_50h, 4, q1024_50t, 4);
    const float q1328_8[] = {1.0f,        0.92393440f, 0.83533579f, 0.73082876f, 0.60570556f,
                             0.45319861f, 0.26321352f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 1328x1328 8", 8, 6889, q1328_8, 9, NULL, 0);
    const float q1328_50h[] = {1.0f, 0.99098831f, 0.98176795f, 0.97233158f};
    const float q1328_50t[] = {0.10544860f, 0.06378275f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 1328x1328 50", 50, 6889, q1328_50h, 4, q1328_50t, 4);
    const float q1664_50h[] = {1.0f, 0.99061203f, 0.98101419f, 0.97119945f};
    const float q1664_50t[] = {0.10228205f, 0.06208760f, 0.01999998f, 0.0f};
    expect_sigmas(&qwen, "Qwen 1664x928 50", 50, 6032, q1664_50h, 4, q1664_50t, 4);

    CHECK(fabs(qi_scheduler_mu(&qwen, 32) - 0.48870968) < 1e-8, "mu at 32 tokens");
    CHECK(fabs(qi_scheduler_mu(&qwen, 4096) - 0.69354839) < 1e-8, "mu at 4096 tokens");
    CHECK(fabs(qi_scheduler_mu(&qwen, 6889) - 0.83432460) < 1e-8, "mu at 6889 tokens");
    CHECK(fabs(qi_scheduler_mu(&light, 12345) - log(3.0)) < 1e-15, "Lightning mu is ln 3");
}

/* Lightning closed form 3s/(1+2s): a static shift of 3 gives it too (up to
 * float rounding). One step is just [1, 0]. */
static void static_shift_and_single_step(void) {
    qi_scheduler_config light = qi_scheduler_config_lightning(), fixed;
    qi_error err;
    CHECK(qi_scheduler_config_parse("{\"num_train_timesteps\": 1000, \"shift\": 3.0,"
                                    " \"use_dynamic_shifting\": false}",
                                    "static", &fixed, &err) == QI_OK,
          "%s", err.msg);
    float a[9], b[9], ta[8], tb[8];
    CHECK(qi_scheduler_sigmas(&light, 8, 100, a, ta, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_scheduler_sigmas(&fixed, 8, 100, b, tb, &err) == QI_OK, "%s", err.msg);
    double worst = 0;
    for (int k = 0; k < 9; k++) {
        double s = 1.0 - k / 8.0, closed = 3 * s / (1 + 2 * s);
        worst = fmax(worst, fabs((double)a[k] - closed));
        worst = fmax(worst, fabs((double)b[k] - closed));
    }
    printf("  static shift 3 and Lightning vs 3s/(1+2s): max err %.3g\n", worst);
    CHECK(worst <= 1e-7, "max err %.3g", worst);
    CHECK(qi_scheduler_sigmas(&light, 1, 100, a, ta, &err) == QI_OK, "%s", err.msg);
    CHECK(a[0] == 1.0f && a[1] == 0.0f && ta[0] == 1000.0f, "one step: %g %g", a[0], a[1]);
}

static void inverted_sigmas_mirror(void) {
    qi_scheduler_config qwen, inv;
    qi_error err;
    CHECK(qi_scheduler_config_parse(QWEN_CONFIG, "qwen", &qwen, &err) == QI_OK, "%s", err.msg);
    inv = qwen;
    inv.invert_sigmas = 1;
    float a[5], b[5], ta[4], tb[4];
    CHECK(qi_scheduler_sigmas(&qwen, 4, 4096, a, ta, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_scheduler_sigmas(&inv, 4, 4096, b, tb, &err) == QI_OK, "%s", err.msg);
    for (int k = 0; k < 4; k++) {
        CHECK(b[k] == 1.0f - a[k], "inverted sigma %d", k);
        CHECK(tb[k] == b[k] * 1000.0f, "inverted timestep %d", k);
    }
    CHECK(b[4] == 1.0f, "inverted schedule ends at 1, got %g", b[4]);
}

/* x(i+1) = x(i) + (sigma(i+1) - sigma(i))·v(i) reproduces the next call's
 * hidden_states of a cfg-1 case bit for bit. */
static void euler_step_reproduces_next_call(void) {
    qi_st_file *f = ref_case_tensors("en_lightning8_lora");
    if (!f) return;
    int64_t ns = 0;
    float *sigmas = ref_floats(f, "sigmas", &ns);
    CHECK(sigmas && ns == 9, "sigmas");
    int exact_steps = 0;
    for (int i = 0; sigmas && i + 1 < 8; i++) {
        char key[64];
        int64_t n = 0, nv = 0, nn = 0;
        snprintf(key, sizeof key, "call%d.hidden_states", i);
        float *x = ref_floats(f, key, &n);
        snprintf(key, sizeof key, "call%d.noise_pred", i);
        float *v = ref_floats(f, key, &nv);
        snprintf(key, sizeof key, "call%d.hidden_states", i + 1);
        float *next = ref_floats(f, key, &nn);
        CHECK(x && v && next && n == nv && n == nn, "call%d tensors", i);
        if (x && v && next && n == nv && n == nn) {
            qi_scheduler_euler_step(x, v, n, sigmas[i], sigmas[i + 1]);
            int same = memcmp(x, next, (size_t)n * sizeof *x) == 0;
            exact_steps += same;
            CHECK(same, "step %d differs from call%d.hidden_states", i, i + 1);
        }
        free(x);
        free(v);
        free(next);
    }
    printf("  en_lightning8_lora: %d/7 Euler steps bit-exact\n", exact_steps);
    free(sigmas);
    qi_st_close(f);
}

/* ---- config errors ----------------------------------------------------------- */

/* QWEN_CONFIG with `"key": value` replaced (value NULL: the key removed). */
static char *config_with(const char *key, const char *value) {
    static char buf[2048];
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\": ", key);
    const char *at = strstr(QWEN_CONFIG, pattern);
    if (!at) return NULL;
    const char *end = at + strlen(pattern);
    while (*end && *end != ',' && *end != '}') end++;
    if (*end == ',') end++;
    size_t head = (size_t)(at - QWEN_CONFIG);
    if (value)
        snprintf(buf, sizeof buf, "%.*s\"%s\": %s%s%s", (int)head, QWEN_CONFIG, key, value,
                 *end == '}' ? "" : ",", end);
    else
        snprintf(buf, sizeof buf, "%.*s%s", (int)head, QWEN_CONFIG, end);
    /* removing the last member would leave ", }" */
    char *dangling = strstr(buf, ", }");
    if (dangling) memmove(dangling, dangling + 1, strlen(dangling));
    return buf;
}

static void expect_error(const char *text, qi_status want, const char *must_mention) {
    qi_scheduler_config cfg;
    qi_error err;
    err.msg[0] = 0;
    qi_status st = qi_scheduler_config_parse(text, "test.json", &cfg, &err);
    CHECK(st == want, "status %s, want %s (%s)", qi_status_name(st), qi_status_name(want),
          err.msg);
    CHECK(strstr(err.msg, must_mention) != NULL, "message does not name %s: %s", must_mention,
          err.msg);
    printf("  error: %s\n", err.msg);
}

static void config_errors_name_the_key(void) {
    CHECK(config_with("max_shift", NULL) != NULL, "test helper");
    expect_error(config_with("max_shift", NULL), QI_ERR_FORMAT, "\"max_shift\"");
    expect_error(config_with("base_image_seq_len", NULL), QI_ERR_FORMAT, "base_image_seq_len");
    expect_error(config_with("num_train_timesteps", NULL), QI_ERR_FORMAT, "num_train_timesteps");
    expect_error(config_with("use_dynamic_shifting", NULL), QI_ERR_FORMAT,
                 "use_dynamic_shifting");
    expect_error(config_with("base_shift", "null"), QI_ERR_FORMAT, "base_shift");
    expect_error(config_with("use_karras_sigmas", "true"), QI_ERR_UNSUPPORTED,
                 "use_karras_sigmas");
    expect_error(config_with("use_exponential_sigmas", "true"), QI_ERR_UNSUPPORTED,
                 "use_exponential_sigmas");
    expect_error(config_with("use_beta_sigmas", "true"), QI_ERR_UNSUPPORTED, "use_beta_sigmas");
    expect_error(config_with("stochastic_sampling", "true"), QI_ERR_UNSUPPORTED,
                 "stochastic_sampling");
    expect_error(config_with("time_shift_type", "\"cubic\""), QI_ERR_FORMAT, "time_shift_type");
    expect_error(config_with("max_shift", "\"0.9\""), QI_ERR_FORMAT, "max_shift");
    expect_error(config_with("_class_name", "\"EulerDiscreteScheduler\""), QI_ERR_UNSUPPORTED,
                 "EulerDiscreteScheduler");
    expect_error("{\"shift\": ", QI_ERR_FORMAT, "line 1: JSON syntax error: unexpected end");
    expect_error("[1, 2]", QI_ERR_FORMAT, "object");
    expect_error("{\"num_train_timesteps\": 1000, \"use_dynamic_shifting\": false}",
                 QI_ERR_FORMAT, "\"shift\"");

    qi_scheduler_config cfg;
    qi_error err;
    CHECK(qi_scheduler_config_load("/nonexistent/scheduler_config.json", &cfg, &err) == QI_ERR_IO,
          "missing file");
    CHECK(strstr(err.msg, "/nonexistent/scheduler_config.json") != NULL, "names the path: %s",
          err.msg);
    float s[3], t[2];
    CHECK(qi_scheduler_sigmas(&cfg, 0, 16, s, t, &err) == QI_ERR_ARG, "0 steps accepted");
}

/* The JSON is read strictly (nothing after the object; a syntax error gives
 * its line and the text near it) and a config whose schedule leaves [0, 1]
 * (negative or non-finite sigmas) is refused, naming the step. */
static void strict_json_and_schedules_in_range(void) {
    char text[2300];
    snprintf(text, sizeof text, "%s garbage", QWEN_CONFIG);
    expect_error(text, QI_ERR_FORMAT, "text after the JSON value near 'as\": false} garbage'");
    expect_error("{\"num_train_timesteps\": 1000,\n\"use_dynamic_shifting\": true,\n\"base_shift\": 0.5 0.9}",
                 QI_ERR_FORMAT, "line 3: JSON syntax error near");
    expect_error(config_with("base_shift", "1e999"), QI_ERR_FORMAT, "\"base_shift\" must be a finite number");
    expect_error(config_with("shift_terminal", "-0.5"), QI_ERR_FORMAT, "\"shift_terminal\" must be between 0 and 1");
    expect_error("{\"num_train_timesteps\": 1000, \"use_dynamic_shifting\": false, \"shift\": -2}", QI_ERR_FORMAT,
                 "\"shift\" must be above 0");
    /* shifts that parse but overflow: exp(1000) is inf, and inf / (inf + r) is NaN */
    qi_scheduler_config cfg;
    qi_error err = {{0}};
    REQUIRE(qi_scheduler_config_parse(config_with("max_shift", "1000"), "huge.json", &cfg, &err) == QI_OK, "%s",
            err.msg);
    float sig[9], ts[8];
    qi_status st = qi_scheduler_sigmas(&cfg, 8, 4096, sig, ts, &err);
    CHECK(st == QI_ERR_FORMAT && strstr(err.msg, "of the 8-step schedule at 4096 image tokens is not a number") &&
              strstr(err.msg, "outside [0, 1]") && !strstr(err.msg, "qi_"),
          "%s: %s", qi_status_name(st), err.msg);
    printf("  error: %s\n", err.msg);
}

/* Keys added in later diffusers versions may be absent: an old-style config
 * without them gives the same schedule. */
static void optional_keys_default(void) {
    const char *old =
        "{\"base_image_seq_len\": 256, \"base_shift\": 0.5, \"max_image_seq_len\": 8192,"
        " \"max_shift\": 0.9, \"num_train_timesteps\": 1000, \"shift\": 1.0,"
        " \"use_dynamic_shifting\": true}";
    qi_scheduler_config a, b;
    qi_error err;
    CHECK(qi_scheduler_config_parse(old, "old", &a, &err) == QI_OK, "%s", err.msg);
    CHECK(qi_scheduler_config_parse(config_with("shift_terminal", "null"), "new", &b, &err) ==
              QI_OK,
          "%s", err.msg);
    CHECK(config_equal(&a, &b), "absent optional keys do not take diffusers' defaults");
    CHECK(a.time_shift_type == QI_TIME_SHIFT_EXPONENTIAL && !a.has_shift_terminal &&
              !a.invert_sigmas,
          "defaults");
    CHECK(qi_scheduler_config_parse(config_with("shift_terminal", "0.0"), "zero", &b, &err) ==
              QI_OK,
          "%s", err.msg);
    CHECK(!b.has_shift_terminal, "shift_terminal 0.0 is off in diffusers (`if shift_terminal:`)");
    CHECK(qi_scheduler_config_parse(config_with("time_shift_type", "\"linear\""), "linear", &b,
                                    &err) == QI_OK,
          "%s", err.msg);
    float s[5], t[4];
    CHECK(qi_scheduler_sigmas(&b, 4, 4096, s, t, &err) == QI_OK, "%s", err.msg);
    /* linear: mu / (mu + 1/s - 1) before the terminal stretch; s = 0.75 -> mu/(mu + 1/3) */
    CHECK(s[0] == 1.0f && s[1] < 1.0f && s[1] > s[2] && s[3] > 0.0199f && s[3] < 0.0201f,
          "linear schedule %g %g %g %g", s[0], s[1], s[2], s[3]);
}

/* One step with shift_terminal (Qwen-Image's own config): the reference
 * divides 0 by 0 and denoises with NaN; the engine refuses it as a usage
 * error naming the cause and the way out, before any work. */
static void one_step_with_shift_terminal_is_refused_with_the_reason(void) {
    qi_scheduler_config qwen = qi_scheduler_config_qwen_image();
    float s[2], t[1];
    qi_error err = {{0}};
    CHECK(qi_scheduler_sigmas(&qwen, 1, 4096, s, t, &err) == QI_ERR_ARG, "accepted");
    CHECK(strstr(err.msg, "1-step") && strstr(err.msg, "shift_terminal") && strstr(err.msg, "2 or more steps"),
          "%s", err.msg);
    printf("  %s\n", err.msg);
}

int main(void) {
    RUN(public_cases_sigmas_and_timesteps);
    RUN(lightning_preset_is_the_lightning_cases_config);
    RUN(qwen_image_default_is_the_model_cases_config);
    RUN(spec_table_values);
    RUN(static_shift_and_single_step);
    RUN(inverted_sigmas_mirror);
    RUN(euler_step_reproduces_next_call);
    RUN(config_errors_name_the_key);
    RUN(optional_keys_default);
    RUN(strict_json_and_schedules_in_range);
    RUN(one_step_with_shift_terminal_is_refused_with_the_reason);
    TEST_END();
}

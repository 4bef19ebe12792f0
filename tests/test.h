/*
 * test.h — the tiny test harness every tests/test_*.c uses.
 *
 * A test program is a list of claims: each TEST is one, CHECK records a
 * failed expectation with its location and keeps going, and the program ends
 * with the plain "N passed, N failed" line and exit status 1 on any failure.
 */
#ifndef QI_TEST_H
#define QI_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdarg.h>

static int qi_test_failed_checks;

/* The message of a failed CHECK (no format attribute: an empty message is fine). */
static inline void qi_test_msg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}
static int qi_test_passed, qi_test_failed;

/* Records a failed REQUIRE the way CHECK reports a failure. */
static inline void qi_test_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    qi_test_failed_checks++;
    fprintf(stderr, "  FAIL %s:%d: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            qi_test_failed_checks++;                                                       \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);              \
            qi_test_msg("" __VA_ARGS__);                                                   \
            fprintf(stderr, "\n");                                                         \
        }                                                                                  \
    } while (0)

/* REQUIRE(cond, ...) is a CHECK that the rest of the claim needs: when it
 * fails, the claim's function returns there. */
#define REQUIRE(cond, ...)                                                                 \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            qi_test_fail(__FILE__, __LINE__, #cond, "" __VA_ARGS__);                       \
            return;                                                                        \
        }                                                                                  \
    } while (0)

/* RUN(fn) runs one claim and reports it on one line. */
#define RUN(fn)                                                                            \
    do {                                                                                   \
        int before_ = qi_test_failed_checks;                                               \
        fn();                                                                              \
        if (qi_test_failed_checks == before_) {                                            \
            qi_test_passed++;                                                              \
            printf("ok   %s\n", #fn);                                                      \
        } else {                                                                           \
            qi_test_failed++;                                                              \
            printf("FAIL %s\n", #fn);                                                      \
        }                                                                                  \
        fflush(stdout);                                                                    \
    } while (0)

#define TEST_END()                                                                         \
    do {                                                                                   \
        printf("%d passed, %d failed\n", qi_test_passed, qi_test_failed);                  \
        return qi_test_failed ? 1 : 0;                                                     \
    } while (0)

#ifdef QI_CLI
/* The qwen-image command the CLI tests run: the build's, unless QI_CLI_PATH
 * names another (a relocated bundle on a GPU machine). */
static inline const char *qi_cli(void) {
    const char *env = getenv("QI_CLI_PATH");
    return env && *env ? env : QI_CLI;
}
#endif

/* An engine's log lines joined, one per line (qi_open_options.log =
 * qi_test_log_line, .log_user = a qi_test_log): what a test reads to see what
 * the engine chose. Lines past the buffer are dropped. */
typedef struct qi_test_log {
    char text[8192];
} qi_test_log;

static inline void qi_test_log_line(void *user, const char *line) {
    qi_test_log *l = (qi_test_log *)user;
    size_t n = strlen(l->text);
    snprintf(l->text + n, sizeof l->text - n, "%s\n", line);
}

/* Relative L2 error ‖a − b‖ / ‖b‖ (b is the reference). */
static inline double qi_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Largest |a − b| over n floats; NaN once either side has a NaN there, so a
 * `diff <= tolerance` check fails on it. */
static inline double qi_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* The bit pattern of a float (bit-exact comparisons, hex in messages). */
static inline uint32_t qi_f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

#endif

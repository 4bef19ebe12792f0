/*
 * base.c — error formatting, dtype tables and conversions, small file helpers.
 */
#define _POSIX_C_SOURCE 200809L
#include "base/base.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

qi_status qi_fail(qi_error *err, qi_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

qi_status qi_fail_ctx(qi_error *err, qi_status status, const char *fmt, ...) {
    if (err) {
        char buf[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        size_t used = n < 0 ? 0 : (size_t)n >= sizeof buf - 3 ? sizeof buf - 3 : (size_t)n;
        memcpy(buf + used, ": ", 2);
        size_t room = sizeof buf - used - 2;
        size_t old = strnlen(err->msg, sizeof err->msg - 1);
        if (old >= room) old = room - 1;
        memcpy(buf + used + 2, err->msg, old);
        buf[used + 2 + old] = 0;
        memcpy(err->msg, buf, sizeof buf);
    }
    return status;
}

const char *qi_status_name(qi_status s) {
    switch (s) {
    case QI_OK: return "ok";
    case QI_ERR_ARG: return "invalid argument";
    case QI_ERR_IO: return "i/o error";
    case QI_ERR_FORMAT: return "bad file format";
    case QI_ERR_NOMEM: return "out of memory";
    case QI_ERR_UNSUPPORTED: return "unsupported";
    case QI_ERR_BACKEND: return "backend error";
    case QI_ERR_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

static const struct {
    const char *name;
    size_t size;
} dtype_info[QI_DTYPE_COUNT] = {
    [QI_F32] = {"F32", 4},         [QI_F16] = {"F16", 2}, [QI_BF16] = {"BF16", 2},
    [QI_F8_E4M3] = {"F8_E4M3", 1}, [QI_F8_E5M2] = {"F8_E5M2", 1},
    [QI_I32] = {"I32", 4},         [QI_I64] = {"I64", 8}, [QI_U8] = {"U8", 1},
    /* block types: no per-element size (type traits give block sizes) */
    [QI_Q4_0] = {"Q4_0", 0}, [QI_Q4_1] = {"Q4_1", 0}, [QI_Q5_0] = {"Q5_0", 0}, [QI_Q5_1] = {"Q5_1", 0},
    [QI_Q8_0] = {"Q8_0", 0}, [QI_Q2_K] = {"Q2_K", 0}, [QI_Q3_K] = {"Q3_K", 0}, [QI_Q4_K] = {"Q4_K", 0},
    [QI_Q5_K] = {"Q5_K", 0}, [QI_Q6_K] = {"Q6_K", 0},
};

size_t qi_dtype_size(qi_dtype t) { return (unsigned)t < QI_DTYPE_COUNT ? dtype_info[t].size : 0; }
const char *qi_dtype_name(qi_dtype t) {
    return (unsigned)t < QI_DTYPE_COUNT ? dtype_info[t].name : "?";
}

float qi_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        float f = ldexpf((float)man, -24); /* zero or subnormal: exact */
        return sign ? -f : f;
    }
    if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t qi_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    float a = fabsf(f);
    if (isnan(f)) return (uint16_t)(sign | 0x7e00);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (a < 6.103515625e-05f) {                          /* subnormal half: RNE in units of 2^-24 */
        float q = a * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)nearbyintf(q));
    }
    uint32_t mag = u & 0x7fffffffu;
    uint32_t exp = (mag >> 23) - 112, man = mag & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float qi_f8e4m3_to_f32(uint8_t v) {
    /* e4m3fn: bias 7, no infinities, 0x7f/0xff are NaN */
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float f;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) f = ldexpf((float)man, -9);
    else f = ldexpf((float)(8 + man), (int)exp - 10);
    return sign ? -f : f;
}

float qi_f8e5m2_to_f32(uint8_t v) { return qi_f16_to_f32((uint16_t)((uint16_t)v << 8)); }

int qi_to_f32(float *dst, const void *src, qi_dtype t, size_t n) {
    switch (t) {
    case QI_F32: memcpy(dst, src, n * 4); return 0;
    case QI_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = qi_bf16_to_f32(s[i]);
        return 0;
    }
    case QI_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = qi_f16_to_f32(s[i]);
        return 0;
    }
    case QI_F8_E4M3: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = qi_f8e4m3_to_f32(s[i]);
        return 0;
    }
    case QI_F8_E5M2: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = qi_f8e5m2_to_f32(s[i]);
        return 0;
    }
    default: return -1;
    }
}

void qi_log_linef(qi_log_fn log, void *user, const char *fmt, ...) {
    if (!log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log(user, line);
}

double qi_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

qi_status qi_read_text_file(const char *path, char **out, size_t *len, qi_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qi_fail(err, QI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return qi_fail(err, QI_ERR_IO, "%s: cannot seek (is it a regular file?)", path);
    }
    long size = ftell(f);
    if (size < 0 || size > (1L << 30)) {
        fclose(f);
        return qi_fail(err, QI_ERR_IO, "%s: unreadable size or larger than 1 GiB", path);
    }
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory reading %ld bytes", path, size);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) {
        free(buf);
        return qi_fail(err, QI_ERR_IO, "%s: short read (%zu of %ld bytes)", path, got, size);
    }
    buf[size] = 0;
    *out = buf;
    if (len) *len = (size_t)size;
    return QI_OK;
}

int qi_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int sep = dl > 0 && dir[dl - 1] != '/';
    int n = snprintf(out, cap, "%s%s%s", dir, sep ? "/" : "", name);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

int qi_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int qi_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * testdata.h — the reference data and the scratch files the tests share.
 *
 * Reference data, read where the build says it is (QI_SHARED_DIR, in the
 * layout of the project's shared/ folder):
 *   - the public cases, QI_REF_PUBLIC/<case>/{case.json, tensors.safetensors},
 *     and the tiny model they were made with, QI_REF_MODEL/<component>;
 *   - torch's noise vectors, reference/torch_randn.safetensors (or the file
 *     the QI_RANDN_FILE environment variable names), keyed
 *     "<device>.<dtype>.seed<N>.<shape>".
 * Scratch files: one /tmp/qi_test_<tag>_XXXXXX folder per use, small files
 * written into it, the whole folder removed at the end.
 *
 * A helper that cannot open, read or write its file records a failed CHECK
 * naming it (so the running claim fails) and returns NULL or -1; the caller
 * only decides whether to go on. A test that includes this header defines
 * _POSIX_C_SOURCE 200809L (or _GNU_SOURCE) before its first #include:
 * mkdtemp, lstat, symlink and getcwd are POSIX, not C11.
 */
#ifndef QI_TESTDATA_H
#define QI_TESTDATA_H

#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_DEFAULT_SOURCE)
#error "define _POSIX_C_SOURCE 200809L before the first #include to use testdata.h"
#endif

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "test.h"

/* ---- the public reference cases ------------------------------------------------ */

#define QI_REF_PUBLIC QI_SHARED_DIR "/reference/public"
#define QI_REF_MODEL QI_REF_PUBLIC "/model" /* the tiny diffusers model of the cases */

/* QI_REF_PUBLIC/<case_name>/<file> into out. */
static inline void ref_case_path(char *out, size_t cap, const char *case_name, const char *file) {
    snprintf(out, cap, "%s/%s/%s", QI_REF_PUBLIC, case_name, file);
}

/* A reference JSON file, parsed (cJSON_Delete it); NULL and a failed CHECK
 * if it cannot be read or is not JSON. */
static inline cJSON *ref_json(const char *path) {
    cJSON *json = NULL;
    qi_error err = {{0}};
    qi_status st = qi_json_load(path, &json, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    return st == QI_OK ? json : NULL;
}

/* A case's case.json, as ref_json. */
static inline cJSON *ref_case_json(const char *case_name) {
    char path[1024];
    ref_case_path(path, sizeof path, case_name, "case.json");
    return ref_json(path);
}

/* One number of a case's case.json (so a test's table of cases cannot drift
 * from it); -1 when the key is absent or not a number. */
static inline double ref_case_number(const char *case_name, const char *key) {
    cJSON *json = ref_case_json(case_name);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(json, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(json);
    return d;
}

/* The prompts of a case.json ("prompt": one string or a list of strings) into
 * prompts[0..cap); their count, or -1 and a failed CHECK when "prompt" is
 * neither or has more than cap strings. The strings belong to json. */
static inline int ref_case_prompts(const cJSON *json, const char **prompts, int cap) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(json, "prompt");
    if (cJSON_IsString(p) && cap > 0) {
        prompts[0] = p->valuestring;
        return 1;
    }
    int n = 0;
    const cJSON *e = cJSON_IsArray(p) ? p->child : NULL;
    for (; e && cJSON_IsString(e) && n < cap; e = e->next) prompts[n++] = e->valuestring;
    int ok = cJSON_IsArray(p) && e == NULL;
    CHECK(ok, "case.json: \"prompt\" is not a string or a list of at most %d strings", cap);
    return ok ? n : -1;
}

/* A reference safetensors file, opened (qi_st_close it); NULL and a failed
 * CHECK if it cannot be opened. */
static inline qi_st_file *ref_open(const char *path) {
    qi_st_file *f = NULL;
    qi_error err = {{0}};
    qi_status st = qi_st_open(path, &f, &err);
    CHECK(st == QI_OK, "%s", err.msg);
    return st == QI_OK ? f : NULL;
}

/* A case's tensors.safetensors, as ref_open. */
static inline qi_st_file *ref_case_tensors(const char *case_name) {
    char path[1024];
    ref_case_path(path, sizeof path, case_name, "tensors.safetensors");
    return ref_open(path);
}

/* ---- the Edit, img2img and inpaint reference cases ------------------------------ */

/* QI_REF_EDIT/<case>/{case.json, tensors.safetensors}, beside the two Edit
 * models they were made with (model-2509, model-2511) and their input
 * pictures (inputs/). */
#define QI_REF_EDIT QI_SHARED_DIR "/reference/edit"

/* An Edit, img2img or inpaint case's case.json, as ref_json. */
static inline cJSON *ref_edit_json(const char *case_name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/case.json", QI_REF_EDIT, case_name);
    return ref_json(path);
}

/* An Edit, img2img or inpaint case's tensors.safetensors, as ref_open. */
static inline qi_st_file *ref_edit_tensors(const char *case_name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/tensors.safetensors", QI_REF_EDIT, case_name);
    return ref_open(path);
}

/* Tensor `name` of a reference file as a malloc'd float array (F32, BF16, ...
 * widened), its element count in *n; NULL if the file has no such tensor
 * (not a CHECK: some reference tensors are optional, e.g. diffusers' None). */
static inline float *ref_floats(const qi_st_file *f, const char *name, int64_t *n) {
    const qi_st_tensor *t = qi_st_file_find(f, name);
    if (!t) return NULL;
    int64_t count = 1;
    for (int d = 0; d < t->ndim; d++) count *= t->shape[d];
    float *out = malloc((size_t)(count ? count : 1) * sizeof *out);
    if (!out || qi_to_f32(out, t->data, t->dtype, (size_t)count) != 0) {
        free(out);
        return NULL;
    }
    if (n) *n = count;
    return out;
}

/* ---- torch's noise vectors ------------------------------------------------------ */

/* The torch_randn reference file: $QI_RANDN_FILE if set, else the shared one. */
static inline const char *ref_randn_path(void) {
    const char *env = getenv("QI_RANDN_FILE");
    return env && *env ? env : QI_SHARED_DIR "/reference/torch_randn.safetensors";
}

/* The torch_randn reference file, as ref_open. */
static inline qi_st_file *ref_randn_open(void) { return ref_open(ref_randn_path()); }

/* One vector of the torch_randn file. */
typedef struct randn_vector {
    const char *name; /* its key, e.g. "cpu.float32.seed42.1x1x16x128x128" */
    char device[16];  /* "cpu" or "cuda": the generator torch used */
    qi_dtype dtype;   /* QI_F32 or QI_BF16: the dtype torch drew in */
    uint64_t seed;
    int64_t n;        /* element count */
    float *values;    /* malloc'd, bf16 widened to float; free it */
} randn_vector;

/* "cpu.float32.seed42.1x1x16x128x128" -> device, dtype, seed in v; -1 if the
 * key is not of that form. */
static inline int randn_key_parse(const char *key, randn_vector *v) {
    const char *p = strchr(key, '.');
    if (!p || (size_t)(p - key) >= sizeof v->device) return -1;
    memcpy(v->device, key, (size_t)(p - key));
    v->device[p - key] = 0;
    p++;
    if (strncmp(p, "float32.", 8) == 0) {
        v->dtype = QI_F32;
        p += 8;
    } else if (strncmp(p, "bfloat16.", 9) == 0) {
        v->dtype = QI_BF16;
        p += 9;
    } else {
        return -1;
    }
    if (strncmp(p, "seed", 4) != 0) return -1;
    v->seed = strtoull(p + 4, NULL, 10);
    return 0;
}

/* The next vector of `f` made on `device`, looking from tensor *next on
 * (start at 0): 1 with v filled, 0 when there is none left. A vector that
 * cannot be read is a failed CHECK and is passed over. */
static inline int randn_next(const qi_st_file *f, const char *device, int *next, randn_vector *v) {
    while (*next < f->n_tensors) {
        const qi_st_tensor *t = &f->tensors[(*next)++];
        if (randn_key_parse(t->name, v) != 0 || strcmp(v->device, device) != 0) continue;
        v->name = t->name;
        v->values = ref_floats(f, t->name, &v->n);
        CHECK(v->values != NULL, "%s unreadable", t->name);
        if (v->values) return 1;
    }
    return 0;
}

/* ---- scratch folders and files -------------------------------------------------- */

#define QI_TMP_PREFIX "/tmp/qi_test_"

/* A new empty folder /tmp/qi_test_<tag>_XXXXXX, its path in dir; 0, or -1 and
 * a failed CHECK. */
static inline int tmp_dir_make(char *dir, size_t cap, const char *tag) {
    int len = snprintf(dir, cap, QI_TMP_PREFIX "%s_XXXXXX", tag);
    if (len < 0 || (size_t)len >= cap) {
        CHECK(0, "scratch folder name for '%s' does not fit in %zu bytes", tag, cap);
        return -1;
    }
    if (!mkdtemp(dir)) {
        CHECK(0, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Removes path and, for a folder, everything in it. Links are removed, never
 * followed. Only acts below a tmp_dir_make folder: anything else is a failed
 * CHECK and left alone. */
static inline void tmp_remove_tree(const char *path) {
    if (strncmp(path, QI_TMP_PREFIX, strlen(QI_TMP_PREFIX)) != 0) {
        CHECK(0, "refusing to remove %s: not a test scratch folder", path);
        return;
    }
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (!S_ISDIR(sb.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char child[PATH_MAX];
        snprintf(child, sizeof child, "%s/%s", path, de->d_name);
        tmp_remove_tree(child);
    }
    if (d) closedir(d);
    rmdir(path);
}

/* Writes n bytes to path (created or truncated); 0, or -1 and a failed CHECK. */
static inline int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        CHECK(0, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    size_t wrote = n ? fwrite(data, 1, n, f) : 0;
    int closed = fclose(f) == 0;
    CHECK(wrote == n && closed, "cannot write %s: %zu of %zu bytes written", path, wrote, n);
    return wrote == n && closed ? 0 : -1;
}

/* Writes text to dir/name (name may go through existing sub-folders); 0 or -1
 * as write_file. */
static inline int write_text_in(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return write_file(path, text, strlen(text));
}

/* A scratch model component folder (/tmp/qi_test_<tag>_XXXXXX, path in dir):
 * config.json holding config_text, and src_dir/weights_name linked (not
 * copied) under the same name. 0, or -1 with a failed CHECK and nothing left
 * behind. */
static inline int tmp_component_dir(char *dir, size_t cap, const char *tag, const char *config_text,
                                    const char *src_dir, const char *weights_name) {
    if (tmp_dir_make(dir, cap, tag) != 0) return -1;
    char cwd[PATH_MAX] = "", target[PATH_MAX], link[PATH_MAX];
    if (src_dir[0] != '/' && !getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    /* the link lives in /tmp: it needs the absolute path of the weights */
    int len = snprintf(target, sizeof target, "%s%s%s/%s", cwd, cwd[0] ? "/" : "", src_dir,
                       weights_name);
    snprintf(link, sizeof link, "%s/%s", dir, weights_name);
    int ok = write_text_in(dir, "config.json", config_text) == 0;
    if (ok && (len < 0 || (size_t)len >= sizeof target || !qi_file_exists(target))) {
        CHECK(0, "no weights at %s", target);
        ok = 0;
    }
    if (ok && symlink(target, link) != 0) {
        CHECK(0, "cannot link %s to %s: %s", link, target, strerror(errno));
        ok = 0;
    }
    if (!ok) tmp_remove_tree(dir);
    return ok ? 0 : -1;
}

/* ---- a public case run through qi_generate ------------------------------------------- */

/* A case loaded for a whole-pipeline run: its case.json, its reference
 * tensors, its prompt(s), and its scheduler config written to a file (the
 * request names the scheduler by path). Free with ref_run_case_free. */
typedef struct ref_run_case {
    cJSON *json;
    qi_st_file *tensors;
    const char *prompts[4];
    int n_prompts;
    char sched_path[64];
} ref_run_case;

static inline void ref_run_case_free(ref_run_case *rc) {
    if (rc->sched_path[0]) remove(rc->sched_path);
    cJSON_Delete(rc->json);
    qi_st_close(rc->tensors);
    memset(rc, 0, sizeof *rc);
}

static inline int ref_run_case_load(const char *case_name, ref_run_case *rc) {
    memset(rc, 0, sizeof *rc);
    rc->json = ref_case_json(case_name);
    rc->tensors = rc->json ? ref_case_tensors(case_name) : NULL;
    rc->n_prompts = rc->tensors ? ref_case_prompts(rc->json, rc->prompts, 4) : -1;
    if (rc->n_prompts < 1) {
        ref_run_case_free(rc);
        return -1;
    }
    snprintf(rc->sched_path, sizeof rc->sched_path, "/tmp/qi_test_sched_XXXXXX");
    int fd = mkstemp(rc->sched_path);
    char *text = cJSON_Print(cJSON_GetObjectItem(rc->json, "scheduler"));
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = f && text && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    free(text);
    CHECK(ok, "cannot write the scheduler config of case %s to %s", case_name, rc->sched_path);
    if (!ok) {
        ref_run_case_free(rc);
        return -1;
    }
    return 0;
}

static inline double ref_run_case_number(const ref_run_case *rc, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(rc->json, key);
    CHECK(cJSON_IsNumber(v), "case.json: no number '%s'", key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* ---- shell commands ---------------------------------------------------------------- */

/* Runs a shell command; returns its exit code (-1 if it did not exit) and
 * its stdout + stderr, truncated to cap - 1 bytes, in out. */
static inline int run_shell(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int run_shell(char *out, size_t cap, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd - 16, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof cmd - 16) {
        CHECK(0, "command too long");
        out[0] = 0;
        return -1;
    }
    snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>&1");
    FILE *p = popen(cmd, "r");
    if (!p) {
        CHECK(0, "popen failed");
        out[0] = 0;
        return -1;
    }
    size_t len = fread(out, 1, cap - 1, p);
    out[len] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#endif

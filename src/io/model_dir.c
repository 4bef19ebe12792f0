/*
 * model_dir.c — checks the layout of a diffusers Qwen-Image directory and
 * owns the JSON loading / typed-getter helpers the config readers use.
 *
 * It does not open weights (safetensors.c) nor interpret any config field
 * beyond model_index.json's component list.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/model_dir.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- JSON loading ------------------------------------------------------- */

/* Copies up to `cap-1` bytes of text around `pos` on its line into out,
 * replacing control characters by spaces, so an error can quote it. */
static void quote_near(const char *text, size_t len, size_t pos, char *out, size_t cap) {
    size_t line_start = pos, line_end = pos;
    while (line_start > 0 && text[line_start - 1] != '\n') line_start--;
    while (line_end < len && text[line_end] != '\n' && text[line_end] != '\r') line_end++;
    size_t from = pos > line_start + 12 ? pos - 12 : line_start;
    size_t to = line_end < pos + 20 ? line_end : pos + 20;
    size_t n = 0;
    for (size_t i = from; i < to && n + 1 < cap; i++) {
        unsigned char c = (unsigned char)text[i];
        out[n++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[n] = 0;
}

static int line_of(const char *text, size_t pos) {
    int line = 1;
    for (size_t i = 0; i < pos; i++) line += text[i] == '\n';
    return line;
}

static int is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The offset of the first '[' or '{' (outside strings) that opens level
 * QI_JSON_MAX_DEPTH + 1, or len when the text never nests that deep. A
 * malformed text may miscount here; the parser then refuses it anyway. */
static size_t too_deep_at(const char *text, size_t len) {
    int depth = 0, in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > QI_JSON_MAX_DEPTH) return i;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return len;
}

qi_status qi_json_parse(const char *text, size_t len, const char *what, cJSON **out,
                        qi_error *err) {
    *out = NULL;
    size_t start = 0;
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) start = 3; /* a UTF-8 BOM */
    size_t first = start;
    while (first < len && is_json_space(text[first])) first++;
    if (first == len) return qi_fail(err, QI_ERR_FORMAT, "%s: empty (expected JSON)", what);

    size_t deep = too_deep_at(text, len);
    if (deep < len)
        return qi_fail(err, QI_ERR_FORMAT, "%s: line %d: JSON nested deeper than %d levels (no file this engine reads "
                       "needs more than a few)", what, line_of(text, deep), QI_JSON_MAX_DEPTH);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text + start, len - start, &end, 0);
    size_t pos = end ? (size_t)(end - text) : start;
    if (pos > len) pos = len;
    char near[48];
    if (!root) {
        /* cJSON reports running out of text as an error at the last byte */
        size_t rest = pos;
        while (rest < len && (is_json_space(text[rest]) || text[rest] == 0)) rest++;
        if (rest >= len) {
            size_t last = pos < len ? pos : len;
            while (last > start && (is_json_space(text[last - 1]) || text[last - 1] == 0)) last--;
            size_t at = last > start ? last - 1 : start;
            quote_near(text, len, at, near, sizeof near);
            return qi_fail(err, QI_ERR_FORMAT,
                           "%s: line %d: JSON syntax error: unexpected end of file after '%s'",
                           what, line_of(text, at), near);
        }
        quote_near(text, len, pos, near, sizeof near);
        return qi_fail(err, QI_ERR_FORMAT, "%s: line %d: JSON syntax error near '%s'", what,
                       line_of(text, pos), near);
    }
    while (pos < len && (is_json_space(text[pos]) || text[pos] == 0)) pos++;
    if (pos < len) {
        quote_near(text, len, pos, near, sizeof near);
        cJSON_Delete(root);
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: line %d: JSON syntax error: text after the JSON value near '%s'", what,
                       line_of(text, pos), near);
    }
    *out = root;
    return QI_OK;
}

qi_status qi_json_load(const char *path, cJSON **out, qi_error *err) {
    *out = NULL;
    char *text;
    size_t len;
    qi_status st = qi_read_text_file(path, &text, &len, err);
    if (st != QI_OK) return st;
    st = qi_json_parse(text, len, path, out, err);
    free(text);
    return st;
}

/* ---- typed getters ------------------------------------------------------ */

const char *qi_json_type_name(const cJSON *item) {
    if (!item) return "nothing";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "an invalid value";
}

/* obj[key], or an error naming the file and key when obj is not an object
 * or the key is absent. */
static qi_status lookup(const cJSON *obj, const char *key, const char *file, const cJSON **item,
                        qi_error *err) {
    if (!cJSON_IsObject(obj))
        return qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object holding key '%s', found %s",
                       file, key, qi_json_type_name(obj));
    *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!*item) return qi_fail(err, QI_ERR_FORMAT, "%s: key '%s' is missing", file, key);
    return QI_OK;
}

static qi_status wrong_type(const char *file, const char *key, const char *want, const cJSON *item,
                            qi_error *err) {
    return qi_fail(err, QI_ERR_FORMAT, "%s: key '%s' must be %s, found %s", file, key, want,
                   qi_json_type_name(item));
}

/* A JSON number that is a whole value in [lo, hi]. */
static int whole_in_range(const cJSON *item, double lo, double hi) {
    if (!cJSON_IsNumber(item)) return 0;
    double d = item->valuedouble;
    return isfinite(d) && d == floor(d) && d >= lo && d <= hi;
}

qi_status qi_json_get_int(const cJSON *obj, const char *key, const char *file, int *out,
                          qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    if (!whole_in_range(item, INT_MIN, INT_MAX)) {
        if (cJSON_IsNumber(item))
            return qi_fail(err, QI_ERR_FORMAT, "%s: key '%s' must be an integer, found %.17g", file,
                           key, item->valuedouble);
        return wrong_type(file, key, "an integer", item, err);
    }
    *out = (int)item->valuedouble;
    return QI_OK;
}

qi_status qi_json_get_int64(const cJSON *obj, const char *key, const char *file, int64_t *out,
                            qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    /* doubles hold integers exactly up to 2^53 */
    if (!whole_in_range(item, -9007199254740992.0, 9007199254740992.0)) {
        if (cJSON_IsNumber(item))
            return qi_fail(err, QI_ERR_FORMAT,
                           "%s: key '%s' must be an integer of at most 2^53, found %.17g", file,
                           key, item->valuedouble);
        return wrong_type(file, key, "an integer", item, err);
    }
    *out = (int64_t)item->valuedouble;
    return QI_OK;
}

qi_status qi_json_get_double(const cJSON *obj, const char *key, const char *file, double *out,
                             qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsNumber(item)) return wrong_type(file, key, "a number", item, err);
    *out = item->valuedouble;
    return QI_OK;
}

qi_status qi_json_get_bool(const cJSON *obj, const char *key, const char *file, int *out,
                           qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsBool(item)) return wrong_type(file, key, "true or false", item, err);
    *out = cJSON_IsTrue(item) ? 1 : 0;
    return QI_OK;
}

qi_status qi_json_get_string(const cJSON *obj, const char *key, const char *file, const char **out,
                             qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsString(item) || !item->valuestring)
        return wrong_type(file, key, "a string", item, err);
    *out = item->valuestring;
    return QI_OK;
}

/* Reads obj[key] as an array of numbers (whole numbers if want_int) into vals. */
static qi_status get_number_array(const cJSON *obj, const char *key, const char *file, int cap,
                                  int *n, int want_int, double *vals, qi_error *err) {
    const cJSON *item;
    qi_status st = lookup(obj, key, file, &item, err);
    if (st != QI_OK) return st;
    const char *want = want_int ? "an array of integers" : "an array of numbers";
    if (!cJSON_IsArray(item)) return wrong_type(file, key, want, item, err);
    int count = cJSON_GetArraySize(item);
    if (count > cap)
        return qi_fail(err, QI_ERR_FORMAT, "%s: key '%s' has %d elements, at most %d expected",
                       file, key, count, cap);
    int i = 0;
    const cJSON *el;
    cJSON_ArrayForEach(el, item) {
        int good = want_int ? whole_in_range(el, INT_MIN, INT_MAX) : cJSON_IsNumber(el);
        if (!good)
            return qi_fail(err, QI_ERR_FORMAT, "%s: key '%s' must be %s; element %d is %s", file,
                           key, want, i,
                           cJSON_IsNumber(el) ? "not a whole number" : qi_json_type_name(el));
        vals[i++] = el->valuedouble;
    }
    *n = count;
    return QI_OK;
}

qi_status qi_json_get_int_array(const cJSON *obj, const char *key, const char *file, int *out,
                                int cap, int *n, qi_error *err) {
    double *vals = malloc(sizeof(double) * (size_t)(cap > 0 ? cap : 1));
    if (!vals) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory reading '%s'", file, key);
    qi_status st = get_number_array(obj, key, file, cap, n, 1, vals, err);
    if (st == QI_OK)
        for (int i = 0; i < *n; i++) out[i] = (int)vals[i];
    free(vals);
    return st;
}

qi_status qi_json_get_double_array(const cJSON *obj, const char *key, const char *file, double *out,
                                   int cap, int *n, qi_error *err) {
    return get_number_array(obj, key, file, cap, n, 0, out, err);
}

/* Present and not null? (Optional keys may be absent or null.) */
static int present(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return item && !cJSON_IsNull(item);
}

qi_status qi_json_get_int_opt(const cJSON *obj, const char *key, const char *file, int dflt,
                              int *out, qi_error *err) {
    if (!present(obj, key)) {
        *out = dflt;
        return QI_OK;
    }
    return qi_json_get_int(obj, key, file, out, err);
}

qi_status qi_json_get_double_opt(const cJSON *obj, const char *key, const char *file, double dflt,
                                 double *out, qi_error *err) {
    if (!present(obj, key)) {
        *out = dflt;
        return QI_OK;
    }
    return qi_json_get_double(obj, key, file, out, err);
}

qi_status qi_json_get_bool_opt(const cJSON *obj, const char *key, const char *file, int dflt,
                               int *out, qi_error *err) {
    if (!present(obj, key)) {
        *out = dflt;
        return QI_OK;
    }
    return qi_json_get_bool(obj, key, file, out, err);
}

/* ---- the directory ------------------------------------------------------ */

#define QI_FETCH_HINT                                                                              \
    "pass the folder downloaded from Qwen/Qwen-Image (the one holding model_index.json)"

static qi_status join(char *out, const char *dir, const char *name, qi_error *err) {
    if (qi_path_join(out, QI_PATH_MAX, dir, name) != 0)
        return qi_fail(err, QI_ERR_ARG, "%s: path too long", dir);
    return QI_OK;
}

/* model_index.json maps each component to [library, class]; diffusers writes
 * [null, null] for a component that was not saved. */
static qi_status check_component(const cJSON *index, const char *path, const char *name,
                                 qi_error *err) {
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(index, name);
    if (!entry)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: no '%s' entry; a Qwen-Image pipeline lists transformer, text_encoder, "
                       "vae, tokenizer and scheduler (is this another model's folder?)",
                       path, name);
    if (!cJSON_IsArray(entry) || cJSON_GetArraySize(entry) != 2)
        return qi_fail(err, QI_ERR_FORMAT, "%s: entry '%s' must be [library, class], found %s",
                       path, name, qi_json_type_name(entry));
    const cJSON *cls = cJSON_GetArrayItem(entry, 1);
    if (cJSON_IsNull(cls))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: component '%s' is null (the pipeline was saved without it); "
                       "download the full Qwen/Qwen-Image folder",
                       path, name);
    if (!cJSON_IsString(cls))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: entry '%s' must be [library, class] with a class name string", path,
                       name);
    return QI_OK;
}

/* dir must be a folder; file (relative to it) must be a file. Configs must
 * also parse as JSON, so a broken download fails here and not mid-load. */
static qi_status check_part(const char *root, const char *sub, char *dir_out, const char *file,
                            char *file_out, int is_json, qi_error *err) {
    qi_status st = join(dir_out, root, sub, err);
    if (st != QI_OK) return st;
    if (!qi_dir_exists(dir_out))
        return qi_fail(err, QI_ERR_IO,
                       "%s: missing folder (model_index.json lists '%s'); the download is "
                       "incomplete: fetch %s/ from Qwen/Qwen-Image",
                       dir_out, sub, sub);
    if (!file) return QI_OK;
    st = join(file_out, dir_out, file, err);
    if (st != QI_OK) return st;
    if (!qi_file_exists(file_out))
        return qi_fail(err, QI_ERR_IO,
                       "%s: missing; the download is incomplete: fetch %s/%s from Qwen/Qwen-Image",
                       file_out, sub, file);
    if (is_json) {
        cJSON *cfg;
        st = qi_json_load(file_out, &cfg, err);
        if (st != QI_OK) return st;
        int is_obj = cJSON_IsObject(cfg);
        cJSON_Delete(cfg);
        if (!is_obj) return qi_fail(err, QI_ERR_FORMAT, "%s: expected a JSON object", file_out);
    }
    return QI_OK;
}

qi_status qi_model_dir_open(const char *path, qi_model_dir *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    if (!path || !*path)
        return qi_fail(err, QI_ERR_ARG, "no model directory given; " QI_FETCH_HINT);
    if (strlen(path) >= QI_PATH_MAX - 64)
        return qi_fail(err, QI_ERR_ARG, "model directory path too long (%zu bytes)", strlen(path));
    if (!qi_dir_exists(path)) {
        if (qi_file_exists(path))
            return qi_fail(err, QI_ERR_IO, "%s: is a file, not a directory; " QI_FETCH_HINT, path);
        return qi_fail(err, QI_ERR_IO, "%s: no such directory; " QI_FETCH_HINT, path);
    }
    snprintf(out->root, sizeof out->root, "%s", path);

    qi_status st = join(out->model_index, path, "model_index.json", err);
    if (st != QI_OK) return st;
    if (!qi_file_exists(out->model_index))
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: not a Qwen-Image diffusers directory (no model_index.json); "
                       "pass the folder downloaded from Qwen/Qwen-Image",
                       path);
    cJSON *index;
    st = qi_json_load(out->model_index, &index, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsObject(index)) {
        cJSON_Delete(index);
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: expected a JSON object mapping components to [library, class]",
                       out->model_index);
    }
    static const char *const components[] = {"transformer", "text_encoder", "vae", "tokenizer",
                                             "scheduler"};
    for (size_t i = 0; i < QI_ARRAY_LEN(components) && st == QI_OK; i++)
        st = check_component(index, out->model_index, components[i], err);
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(index, "_class_name");
    if (cJSON_IsString(cls))
        snprintf(out->pipeline_class, sizeof out->pipeline_class, "%s", cls->valuestring);
    cJSON_Delete(index);
    if (st != QI_OK) return st;

    char scheduler_dir[QI_PATH_MAX];
    if ((st = check_part(path, "transformer", out->transformer_dir, "config.json",
                         out->transformer_config, 1, err)) != QI_OK ||
        (st = check_part(path, "text_encoder", out->text_encoder_dir, "config.json",
                         out->text_encoder_config, 1, err)) != QI_OK ||
        (st = check_part(path, "vae", out->vae_dir, "config.json", out->vae_config, 1, err)) !=
            QI_OK ||
        (st = check_part(path, "tokenizer", out->tokenizer_dir, "vocab.json", out->tokenizer_vocab,
                         0, err)) != QI_OK ||
        (st = check_part(path, "tokenizer", out->tokenizer_dir, "merges.txt", out->tokenizer_merges,
                         0, err)) != QI_OK ||
        (st = check_part(path, "scheduler", scheduler_dir, "scheduler_config.json",
                         out->scheduler_config, 1, err)) != QI_OK)
        return st;
    return QI_OK;
}

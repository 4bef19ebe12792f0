/*
 * fuzz_gguf.c — a GGUF file image through qi_gguf_open_memory (header,
 * metadata of every value type, arrays of arrays, alignment, tensor infos
 * and placement), then every getter on every key, every array element, every
 * tensor's bytes, and, when the file carries one, the tokenizer built from
 * its metadata (qi_tokenizer_load_gguf) encoding a fixed text.
 *
 * Oracles beyond the sanitizers: the getter of a key's own type succeeds
 * (get_int: any integer that fits int64; get_float: any number), the others
 * fail naming the key; tensors lie inside the input and are found by name;
 * a tokenizer's ids all name tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "io/gguf.h"
#include "model/tokenizer.h"

#define NAME "fuzz.gguf"
#define MAX_ELEMS 64 /* array elements visited: the first ones and the last */

static int is_int_type(int t) {
    return t == QI_GGUF_U8 || t == QI_GGUF_I8 || t == QI_GGUF_U16 || t == QI_GGUF_I16 || t == QI_GGUF_U32 ||
           t == QI_GGUF_I32 || t == QI_GGUF_U64 || t == QI_GGUF_I64;
}
static int is_number_type(int t) { return is_int_type(t) || t == QI_GGUF_F32 || t == QI_GGUF_F64; }

static void visit_array(const qi_gguf_array *a, int depth, const uint8_t *data, size_t size) {
    if (depth > 9) fuzz_fail("key '%s': arrays nested deeper than the reader allows", a->key);
    qi_error err;
    for (uint64_t k = 0; k < a->count; k++) {
        uint64_t i = k < MAX_ELEMS ? k : a->count - 1; /* the first ones, then the last */
        const char *s;
        size_t len;
        int64_t iv;
        double dv;
        qi_gguf_array sub;
        qi_status st_s = qi_gguf_array_string(a, i, &s, &len, &err);
        if (st_s == QI_OK) {
            if ((const uint8_t *)s < data || len > (size_t)(data + size - (const uint8_t *)s))
                fuzz_fail("key '%s' element %llu: string outside the file", a->key, (unsigned long long)i);
            fuzz_touch(s, len);
        }
        qi_status st_i = qi_gguf_array_int(a, i, &iv, &err);
        qi_status st_f = qi_gguf_array_float(a, i, &dv, &err);
        qi_status st_a = qi_gguf_array_array(a, i, &sub, &err);
        if ((st_s == QI_OK) != (a->type == QI_GGUF_STRING) || (st_f == QI_OK) != is_number_type((int)a->type) ||
            (st_a == QI_OK) != (a->type == QI_GGUF_ARRAY) || (st_i == QI_OK && !is_int_type((int)a->type)))
            fuzz_fail("key '%s' (array of %s): element getters disagree with the type", a->key,
                      qi_gguf_type_name((int)a->type));
        if (st_a == QI_OK) visit_array(&sub, depth + 1, data, size);
        if (k >= MAX_ELEMS) break;
    }
    qi_status st = qi_gguf_array_int(a, a->count, &(int64_t){0}, &err);
    if (st == QI_OK) fuzz_fail("key '%s': an index past the end is accepted", a->key);
    fuzz_check_error(st, &err, NULL);
}

static void visit_key(const qi_gguf_file *f, const char *key, const uint8_t *data, size_t size) {
    int type = qi_gguf_key_type(f, key);
    qi_error err;
    const char *s;
    size_t len;
    int64_t iv;
    double dv;
    int bv;
    qi_gguf_array a;
    qi_status st_s = qi_gguf_get_string(f, key, &s, &len, &err);
    if (st_s == QI_OK) fuzz_touch(s, len);
    else fuzz_check_error(st_s, &err, key);
    qi_status st_i = qi_gguf_get_int(f, key, &iv, &err);
    if (st_i != QI_OK) fuzz_check_error(st_i, &err, key);
    qi_status st_f = qi_gguf_get_float(f, key, &dv, &err);
    qi_status st_b = qi_gguf_get_bool(f, key, &bv, &err);
    qi_status st_a = qi_gguf_get_array(f, key, &a, &err);
    if ((st_s == QI_OK) != (type == QI_GGUF_STRING) || (st_f == QI_OK) != is_number_type(type) ||
        (st_b == QI_OK) != (type == QI_GGUF_BOOL) || (st_a == QI_OK) != (type == QI_GGUF_ARRAY) ||
        (st_i == QI_OK && !is_int_type(type)) || (is_int_type(type) && type != QI_GGUF_U64 && st_i != QI_OK))
        fuzz_fail("key '%s' (%s): getters disagree with the type", key, qi_gguf_type_name(type));
    if (st_a == QI_OK) visit_array(&a, 1, data, size);
}

static void check_tokenizer(const qi_gguf_file *f) {
    if (!qi_tokenizer_gguf_has(f)) return;
    qi_tokenizer *t = NULL;
    qi_error err;
    qi_status st = qi_tokenizer_load_gguf(f, &t, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NULL);
        if (t) fuzz_fail("a refused tokenizer was returned");
        return;
    }
    int32_t *ids = NULL;
    int n = 0;
    st = qi_tokenizer_encode(t, "<|im_start|>user\nA cat, 3 fish  and\t\xe7\x8c\xab!<|im_end|>", &ids, &n, &err);
    if (st != QI_OK) fuzz_fail("a loaded tokenizer cannot encode valid UTF-8: %s", err.msg);
    for (int i = 0; i < n; i++)
        if (!qi_tokenizer_token(t, ids[i])) fuzz_fail("id %d of the encoding names no token", ids[i]);
    free(ids);
    qi_tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qi_gguf_file *f = NULL;
    qi_error err;
    qi_status st = qi_gguf_open_memory(NAME, data, size, &f, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NAME);
        if (f) fuzz_fail("a refused file was returned");
        return 0;
    }
    for (int i = 0; i < qi_gguf_key_count(f); i++) visit_key(f, qi_gguf_key_at(f, i), data, size);
    if (qi_gguf_key_type(f, "\x01 no such key") != -1) fuzz_fail("a missing key has a type");
    for (int i = 0; i < qi_gguf_tensor_count(f); i++) {
        const qi_gguf_tensor *t = qi_gguf_tensor_at(f, i);
        const uint8_t *p = t->data;
        if (p < data || p > data + size || t->nbytes > (size_t)(data + size - p))
            fuzz_fail("tensor '%s' lies outside the file", t->name);
        fuzz_touch(p, t->nbytes);
        if (qi_gguf_find(f, t->name) != t) fuzz_fail("tensor '%s' is not found by its name", t->name);
    }
    check_tokenizer(f);
    qi_gguf_close(f);
    return 0;
}

/*
 * fuzz_lora.c — LoRA key matching: a LoRA file built from the input's lines,
 * read by qi_lora_set_add (key forms, prefixes, the peft `default.` infix,
 * flattened names, roles, ranks, alpha, adapter metadata), bound to the tiny
 * transformer's Linear weights by qi_lora_bind (flattened names resolved
 * against real names, nearest-name suggestions) and fused into every
 * targeted weight.
 *
 * Input: one tensor per line, `<key>\t<dims>[\t<type>]`, dims "R,C", "N" or
 * "" (a scalar), each at most 4096, type f32 (default), f16, bf16, or nan
 * (f32 holding a NaN). A line `@meta\t<json>` puts <json> in the header as
 * "__metadata__" (where diffusers keeps lora_adapter_metadata). Values are
 * small and fixed (at most 2^15 elements in all: an input stays a few ms);
 * the file is written as safetensors to the scratch folder (qi_lora_set_add
 * takes a path: its size check and mapping are part of what runs).
 *
 * Oracles beyond the sanitizers: a refusal has a message naming the file; an
 * accepted set binds or says why; every bound factor has a finite
 * coefficient and a rank, and the weights fused from zeros are finite (so a
 * NaN factor or an infinite scale must have been refused).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "io/safetensors.h"
#include "model/lora.h"

#define MAX_TENSORS 256
#define MAX_DIM 4096
#define MAX_ELEMS (1 << 16)
#define MAX_TOTAL_ELEMS (1 << 15) /* over all tensors of one input: keeps an input a few ms */

/* The values every tensor holds (its first elements): small, fixed, finite. */
static float pattern_f32[MAX_ELEMS];
static uint16_t pattern_f16[MAX_ELEMS], pattern_bf16[MAX_ELEMS];

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_json_string(buf *b, const char *s, size_t n) {
    puts_(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') snprintf(esc, sizeof esc, "\\%c", c);
        else if (c < 0x20) snprintf(esc, sizeof esc, "\\u%04x", c);
        else esc[0] = (char)c, esc[1] = 0;
        puts_(b, esc);
    }
    puts_(b, "\"");
}

/* The weights of the tiny transformer the LoRA binds to: 2-D names and shapes. */
static qi_st_set *model;
static const char *names[256];
static int64_t rows[256], cols[256];
static int n_names;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < MAX_ELEMS; i++) {
        pattern_f32[i] = (float)((i * 7) % 13 - 6) * 0.01f;
        pattern_f16[i] = qi_f32_to_f16(pattern_f32[i]);
        pattern_bf16[i] = qi_f32_to_bf16(pattern_f32[i]);
    }
    qi_error err;
    if (qi_st_set_open_dir(QI_TEST_DATA "/tiny-model/transformer", "diffusion_pytorch_model", &model, &err) != QI_OK) {
        fprintf(stderr, "fuzz_lora: %s\n", err.msg);
        abort();
    }
    for (int i = 0; i < model->n_tensors && n_names < 256; i++)
        if (model->index[i]->ndim == 2) {
            names[n_names] = model->index[i]->name;
            rows[n_names] = model->index[i]->shape[0];
            cols[n_names++] = model->index[i]->shape[1];
        }
    return 0;
}

/* One tensor line → header entry + data. Returns 0, or -1 to skip the line. */
static int add_tensor(buf *hdr, buf *data, const char *line, size_t n, int *first, long *total) {
    const char *tab = memchr(line, '\t', n);
    if (!tab || tab == line) return -1;
    size_t key_len = (size_t)(tab - line), rest = n - key_len - 1;
    char spec[64];
    snprintf(spec, sizeof spec, "%.*s", (int)(rest < 63 ? rest : 63), tab + 1);
    char *type = strchr(spec, '\t');
    if (type) *type++ = 0;
    long d[2] = {0, 0};
    int ndim = 0;
    for (char *p = spec; *p && ndim < 2;) {
        char *end;
        d[ndim] = strtol(p, &end, 10);
        if (end == p || d[ndim] < 1 || d[ndim] > MAX_DIM) return -1;
        ndim++;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' ) break;
    }
    long elems = ndim == 0 ? 1 : ndim == 1 ? d[0] : d[0] * d[1];
    if (elems > MAX_ELEMS || *total + elems > MAX_TOTAL_ELEMS) return -1;
    *total += elems;
    int f16 = type && !strcmp(type, "f16"), bf16 = type && !strcmp(type, "bf16"), nan = type && !strcmp(type, "nan");
    size_t esize = f16 || bf16 ? 2 : 4, begin = data->n;
    put(data, f16 ? (const void *)pattern_f16 : bf16 ? (const void *)pattern_bf16 : (const void *)pattern_f32,
        (size_t)elems * esize);
    if (nan) memcpy(data->p + begin + (size_t)(elems / 2) * 4, &(float){NAN}, 4); /* f32 */
    char entry[160];
    if (!*first) puts_(hdr, ",");
    *first = 0;
    put_json_string(hdr, line, key_len);
    snprintf(entry, sizeof entry, ":{\"dtype\":\"%s\",\"shape\":[", f16 ? "F16" : bf16 ? "BF16" : "F32");
    puts_(hdr, entry);
    for (int k = 0; k < ndim; k++) {
        snprintf(entry, sizeof entry, "%s%ld", k ? "," : "", d[k]);
        puts_(hdr, entry);
    }
    snprintf(entry, sizeof entry, "],\"data_offsets\":[%zu,%zu]}", begin, data->n);
    puts_(hdr, entry);
    return 0;
}

/* The safetensors file of the input's lines. */
static void build_file(const uint8_t *in, size_t size, buf *file) {
    buf hdr = {0}, data = {0};
    int first = 1, tensors = 0;
    long total = 0;
    puts_(&hdr, "{");
    for (size_t pos = 0; pos < size && tensors < MAX_TENSORS;) {
        const uint8_t *nl = memchr(in + pos, '\n', size - pos);
        size_t n = nl ? (size_t)(nl - in) - pos : size - pos;
        const char *line = (const char *)in + pos;
        pos += n + 1;
        if (n > 6 && !memcmp(line, "@meta\t", 6)) {
            if (!first) puts_(&hdr, ",");
            first = 0;
            puts_(&hdr, "\"__metadata__\":");
            put(&hdr, line + 6, n - 6);
            continue;
        }
        if (add_tensor(&hdr, &data, line, n, &first, &total) == 0) tensors++;
    }
    puts_(&hdr, "}");
    while (hdr.n % 8) puts_(&hdr, " ");
    uint64_t len = hdr.n;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(len >> (8 * i));
    put(file, le, 8);
    put(file, hdr.p, hdr.n);
    if (data.n) put(file, data.p, data.n);
    free(hdr.p);
    free(data.p);
}

static void bind_and_fuse(const qi_lora_set *set) {
    qi_lora_binding *b = NULL;
    qi_error err;
    qi_status st = qi_lora_bind(set, names, n_names, &b, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NULL);
        return;
    }
    for (int i = 0; i < n_names; i++) {
        if (!qi_lora_binding_targets(b, names[i])) continue;
        size_t n = (size_t)(rows[i] * cols[i]);
        float *w = calloc(n, sizeof *w);
        if (!w) abort();
        st = qi_lora_binding_fuse(b, names[i], w, rows[i], cols[i], &err);
        if (st != QI_OK) fuzz_check_error(st, &err, NULL);
        else
            for (size_t k = 0; k < n; k++)
                if (!isfinite(w[k])) fuzz_fail("weight %s fused to a non-finite value", names[i]);
        for (int k = 0; k < qi_lora_binding_count(b, names[i]); k++) {
            qi_lora_factor f;
            st = qi_lora_binding_factor(b, names[i], k, rows[i], cols[i], &f, &err);
            if (st != QI_OK) fuzz_check_error(st, &err, NULL);
            else if (!isfinite(f.coef) || f.rank < 1) fuzz_fail("weight %s factor %d: coef %g rank %lld", names[i], k,
                                                              f.coef, (long long)f.rank);
        }
        free(w);
    }
    qi_lora_binding_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    buf file = {0};
    build_file(data, size, &file);
    char path[1024];
    fuzz_put("lora.safetensors", file.p, file.n, path, sizeof path);
    free(file.p);
    qi_lora_set *set = NULL;
    qi_error err;
    qi_status st = qi_lora_set_add(&set, path, 1.0f, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, "lora.safetensors");
        if (set) fuzz_fail("a refused file left a set");
        return 0;
    }
    if (qi_lora_set_module_count(set) < 1) fuzz_fail("an accepted LoRA has no module");
    bind_and_fuse(set);
    qi_lora_set_free(set);
    return 0;
}

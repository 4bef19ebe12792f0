/*
 * fuzz_safetensors.c — a safetensors file image (header length, JSON header,
 * tensor table, __metadata__, data section) through qi_st_set_open_memory,
 * then every lookup the loaders make and the scale-tensor reader of scaled
 * fp8 checkpoints (comfy_quant JSON, _quantization_metadata, scale_weight /
 * weight_scale tensors: source_scales.c).
 *
 * Oracles beyond the sanitizers: a refused file has a message naming it; an
 * accepted file's tensors lie inside the input, have nbytes = dtype size ×
 * elements, are found by name, and their metadata is JSON again.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/types.h"
#include "fuzz.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/source.h"

#define NAME "fuzz.safetensors"

static void check_tensor(const qi_st_set *s, const qi_st_tensor *t, const uint8_t *data, size_t size) {
    const uint8_t *p = t->data;
    if (p < data || p > data + size || t->nbytes > (size_t)(data + size - p))
        fuzz_fail("tensor '%s' lies outside the file", t->name);
    fuzz_touch(p, t->nbytes);
    size_t want;
    qi_error err;
    if (qi_shape_bytes(t->dtype, t->ndim, t->shape, &want, t->name, &err) != QI_OK || want != t->nbytes)
        fuzz_fail("tensor '%s': %zu bytes for its shape and dtype", t->name, t->nbytes);
    if (qi_st_find(s, t->name) != t) fuzz_fail("tensor '%s' is not found by its name", t->name);
    const qi_st_tensor *got;
    if (qi_st_get_any(s, t->name, t->ndim, t->shape, &got, &err) != QI_OK || got != t)
        fuzz_fail("tensor '%s': qi_st_get_any refuses its own shape: %s", t->name, err.msg);
    int64_t wrong[QI_ST_MAX_DIMS + 1];
    memcpy(wrong, t->shape, sizeof t->shape);
    wrong[0] = t->ndim ? t->shape[0] + 1 : 1;
    qi_status st = qi_st_get(s, t->name, t->ndim ? t->ndim : 1, wrong, &got, &err);
    if (st == QI_OK) fuzz_fail("tensor '%s': a wrong shape is accepted", t->name);
    fuzz_check_error(st, &err, t->name);
    char shape[160];
    qi_st_shape_str(t->ndim, t->shape, shape, sizeof shape);
}

/* What source_safetensors.c does with a file of fp8 weights and their scales. */
static void check_scales(const qi_st_set *s) {
    qi_scale_table *tab = NULL;
    qi_error err;
    qi_status st = qi_scale_table_build(s, &tab, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NAME);
        return;
    }
    (void)qi_scale_table_convention(tab);
    for (int i = 0; i < s->n_tensors; i++) {
        const qi_st_tensor *t = s->index[i];
        if (qi_scale_table_consumes(tab, t->name)) continue;
        qi_source_tensor out = {.name = t->name, .stored_name = t->name, .file = NAME, .dtype = t->dtype,
                                .ndim = t->ndim, .data = t->data, .nbytes = t->nbytes, .scale = 1.0f};
        memcpy(out.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        qi_scale_table_apply(tab, t->name, &out);
        if (out.scale_form == QI_SCALE_TENSOR && !isfinite(out.scale))
            fuzz_fail("tensor '%s': a non-finite scale was accepted", t->name);
        if (out.scale_form == QI_SCALE_ROW) {
            if (t->ndim < 1 || !out.row_scale) fuzz_fail("tensor '%s': a row scale without rows", t->name);
            for (int64_t r = 0; r < t->shape[0]; r++)
                if (!isfinite(out.row_scale[r])) fuzz_fail("tensor '%s': a non-finite row scale", t->name);
        }
    }
    qi_scale_table_free(tab);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qi_st_set *s = NULL;
    qi_error err;
    qi_status st = qi_st_set_open_memory(NAME, data, size, &s, &err);
    if (st != QI_OK) {
        fuzz_check_error(st, &err, NAME);
        if (s) fuzz_fail("a refused file left a set");
        return 0;
    }
    const qi_st_file *f = s->files[0];
    if (f->n_tensors != s->n_tensors) fuzz_fail("the set has %d tensors, its file %d", s->n_tensors, f->n_tensors);
    for (int i = 0; i < s->n_tensors; i++) {
        check_tensor(s, s->index[i], data, size);
        if (i && strcmp(s->index[i - 1]->name, s->index[i]->name) >= 0) fuzz_fail("the index is not sorted");
    }
    /* a name no seed has: found only if the input itself holds it (the fuzzer learns such strings) */
    const qi_st_tensor *ghost = qi_st_find(s, "\x01 no such tensor");
    if (ghost && strcmp(ghost->name, "\x01 no such tensor")) fuzz_fail("a lookup found another name");
    if (f->metadata_json) {
        cJSON *j;
        if (qi_json_parse(f->metadata_json, strlen(f->metadata_json), NAME, &j, &err) != QI_OK)
            fuzz_fail("__metadata__ as kept is not JSON: %s", err.msg);
        cJSON_Delete(j);
    }
    check_scales(s);
    qi_st_set_close(s);
    return 0;
}

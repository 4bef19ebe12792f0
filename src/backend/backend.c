/*
 * backend.c — what every backend shares: tensor shape helpers, the op-table
 * check every constructor runs, and backend creation by device name.
 */
#include "backend/backend.h"
#include "base/types.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t qi_numel(const qi_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

/* rows × the bytes of one row: block types hold no per-element size. */
size_t qi_nbytes(const qi_tensor *t) {
    int64_t row = qi_row_bytes(t->dtype, t->ndim ? t->ne[t->ndim - 1] : 1);
    assert(row >= 0 && "last dim not a whole number of blocks");
    int64_t rows = 1;
    for (int i = 0; i + 1 < t->ndim; i++) rows *= t->ne[i];
    return (size_t)rows * (size_t)row;
}

int64_t qi_rows(const qi_tensor *t) {
    return t->ndim ? qi_numel(t) / t->ne[t->ndim - 1] : 1;
}

qi_tensor qi_view(const qi_tensor *t, int ndim, const int64_t *ne) {
    qi_tensor v = *t;
    assert(ndim >= 1 && ndim <= QI_MAX_DIMS);
    v.ndim = ndim;
    for (int i = 0; i < ndim; i++) v.ne[i] = ne[i];
    for (int i = ndim; i < QI_MAX_DIMS; i++) v.ne[i] = 0;
    assert(qi_numel(&v) == qi_numel(t));
    return v;
}

qi_tensor qi_view2(const qi_tensor *t, int64_t d0, int64_t d1) {
    int64_t ne[2] = {d0, d1};
    return qi_view(t, 2, ne);
}
qi_tensor qi_view3(const qi_tensor *t, int64_t d0, int64_t d1, int64_t d2) {
    int64_t ne[3] = {d0, d1, d2};
    return qi_view(t, 3, ne);
}
qi_tensor qi_view4(const qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t ne[4] = {d0, d1, d2, d3};
    return qi_view(t, 4, ne);
}

qi_tensor qi_slice_rows(const qi_tensor *t, int64_t row0, int64_t nrows) {
    int64_t d = t->ne[t->ndim - 1];
    assert(row0 >= 0 && row0 + nrows <= qi_rows(t));
    qi_tensor v = *t;
    v.ndim = 2;
    v.ne[0] = nrows;
    v.ne[1] = d;
    for (int i = 2; i < QI_MAX_DIMS; i++) v.ne[i] = 0;
    int64_t row = qi_row_bytes(t->dtype, d);
    assert(row >= 0 && "last dim not a whole number of blocks");
    v.data = (char *)t->data + (size_t)row0 * (size_t)row;
    return v;
}

const char *qi_shape_str(const qi_tensor *t, char *buf, size_t cap) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, cap - off, "[");
    for (int i = 0; i < t->ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, i ? ", %lld" : "%lld", (long long)t->ne[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
    return buf;
}

qi_status qi_be_act(qi_backend *be, qi_tensor *t, int ndim, const int64_t *ne, qi_error *err) {
    return be->ops->tensor(be, t, be->act_dtype, ndim, ne, err);
}
qi_status qi_be_act2(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, qi_error *err) {
    int64_t ne[2] = {d0, d1};
    return qi_be_act(be, t, 2, ne, err);
}
qi_status qi_be_act3(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, qi_error *err) {
    int64_t ne[3] = {d0, d1, d2};
    return qi_be_act(be, t, 3, ne, err);
}
qi_status qi_be_act4(qi_backend *be, qi_tensor *t, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                     qi_error *err) {
    int64_t ne[4] = {d0, d1, d2, d3};
    return qi_be_act(be, t, 4, ne, err);
}

typedef struct slot_set {
    const char *slot; /* its name in qi_backend_ops */
    int set;          /* non-NULL in the table checked */
} slot_set;

/* Whether every required slot of an op table is set. Optional slots (backend.h
 * says which) may be NULL; the persistent/graph and streamed-weight groups are
 * all or nothing, since callers that see one slot of a group use the rest
 * unchecked. */
qi_status qi_backend_check_ops(const qi_backend_ops *ops, qi_error *err) {
    if (!ops) return qi_fail(err, QI_ERR_ARG, "qi_backend_check_ops: no op table");
    const char *who = ops->name && *ops->name ? ops->name : "(unnamed)";
#define SLOT(s) {#s, ops->s != NULL}
    const slot_set required[] = {
        {"name", ops->name != NULL && *ops->name},
        SLOT(destroy), SLOT(supports), SLOT(make_current),
        SLOT(tensor), SLOT(mark), SLOT(reset), SLOT(weight), SLOT(weight_free),
        SLOT(upload), SLOT(download), SLOT(sync),
        SLOT(linear), SLOT(embedding), SLOT(rms_norm), SLOT(layer_norm_mod),
        SLOT(add_gated), SLOT(activate), SLOT(silu_mul), SLOT(axpby), SLOT(copy_rows),
        SLOT(rope), SLOT(attention), SLOT(attention_segments), SLOT(cfg_combine),
        SLOT(conv2d), SLOT(upsample2x), SLOT(subsample2x), SLOT(channel_rms_norm), SLOT(transpose2d),
    }, graph_group[] = {
        SLOT(persistent), SLOT(graph_begin), SLOT(graph_end), SLOT(graph_launch), SLOT(graph_free),
    }, stream_group[] = {
        SLOT(weight_host), SLOT(slot_new), SLOT(slot_free), SLOT(stage), SLOT(stage_wait),
    };
#undef SLOT
    for (size_t i = 0; i < QI_ARRAY_LEN(required); i++)
        if (!required[i].set)
            return qi_fail(err, QI_ERR_BACKEND, "backend %s: the op table leaves the required slot "
                           "'%s' empty", who, required[i].slot);
    const struct {
        const char *name;
        const slot_set *slots;
        size_t n;
    } groups[] = {{"persistent/graph", graph_group, QI_ARRAY_LEN(graph_group)},
                  {"streamed-weight", stream_group, QI_ARRAY_LEN(stream_group)}};
    for (size_t g = 0; g < QI_ARRAY_LEN(groups); g++) {
        const slot_set *grp = groups[g].slots;
        size_t set = 0;
        for (size_t i = 0; i < groups[g].n; i++) set += grp[i].set != 0;
        if (set != 0 && set != groups[g].n)
            for (size_t i = 0; i < groups[g].n; i++)
                if (!grp[i].set)
                    return qi_fail(err, QI_ERR_BACKEND, "backend %s: the op table sets part of the %s group "
                                   "but leaves the slot '%s' empty (all five or none)", who, groups[g].name,
                                   grp[i].slot);
    }
    return QI_OK;
}

/* "cpu", "cuda", "cuda:N" (N in 0..63, decimal digits only). */
qi_status qi_backend_create(const char *device, int threads, size_t arena_bytes, qi_backend **out,
                            qi_error *err) {
    *out = NULL;
    if (!device || !strcmp(device, "cpu")) return qi_backend_cpu_create(threads, arena_bytes, out, err);
    if (!strncmp(device, "cuda", 4) && (device[4] == '\0' || device[4] == ':')) {
        int idx = 0;
        if (device[4] == ':') {
            char *end;
            long v = strtol(device + 5, &end, 10);
            if (device[5] < '0' || device[5] > '9' || *end || v > 63)
                return qi_fail(err, QI_ERR_ARG, "device \"%s\": expected cuda:N with N a number from 0 "
                               "to 63", device);
            idx = (int)v;
        }
        return qi_backend_cuda_create(idx, arena_bytes, out, err);
    }
    return qi_fail(err, QI_ERR_ARG, "device \"%s\": unknown; expected cpu, cuda or cuda:N (e.g. cuda:1)",
                   device);
}

int qi_backend_supports(const qi_backend *be, qi_cap cap, qi_dtype type) {
    return be && be->ops->supports ? be->ops->supports(be, cap, type) : 0;
}

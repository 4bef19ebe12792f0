/*
 * weight_stream.c — units of host weights staged through two device slots
 * (weight_stream.h). Only op-table calls: the same code streams on the CPU
 * backend (real copies into host slots) and on CUDA (async copies on a second
 * stream, ordered by events).
 */
#include "backend/weight_stream.h"

#include <stdlib.h>
#include <string.h>

typedef struct wstream_unit {
    qi_tensor *w[QI_WSTREAM_MAX_TENSORS]; /* the model's host weights */
    int n;                                /* 0: not streamed */
} wstream_unit;

struct qi_wstream {
    qi_backend *be;
    int n_units;
    wstream_unit *units;                          /* [n_units] */
    qi_slot *slot[2];
    size_t slot_bytes;
    int held[2];                                  /* the unit each slot was last staged with; -1: none */
    qi_tensor views[2][QI_WSTREAM_MAX_TENSORS];   /* that unit's tensors in the slot */
    uint64_t staged_bytes;
};

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

qi_status qi_wstream_new(qi_backend *be, int n_units, qi_wstream **out, qi_error *err) {
    *out = NULL;
    if (!be->ops->stage)
        return qi_fail(err, QI_ERR_UNSUPPORTED, "backend %s cannot stream weights from host memory (no "
                       "streamed-weight ops): give it more memory (--vram) or use a smaller file", be->ops->name);
    qi_wstream *s = calloc(1, sizeof *s);
    if (s) s->units = calloc((size_t)(n_units > 0 ? n_units : 1), sizeof *s->units);
    if (!s || !s->units) {
        free(s);
        return qi_fail(err, QI_ERR_NOMEM, "out of memory (weight streaming)");
    }
    s->be = be;
    s->n_units = n_units;
    s->held[0] = s->held[1] = -1;
    *out = s;
    return QI_OK;
}

void qi_wstream_set_unit(qi_wstream *s, int u, qi_tensor *const *w, int n) {
    if (u < 0 || u >= s->n_units || n > QI_WSTREAM_MAX_TENSORS) return;
    for (int i = 0; i < n; i++) s->units[u].w[i] = w[i];
    s->units[u].n = n;
}

int qi_wstream_streams(const qi_wstream *s, int u) { return s && u >= 0 && u < s->n_units && s->units[u].n > 0; }

static size_t unit_bytes(const wstream_unit *un) {
    size_t b = 0;
    for (int i = 0; i < un->n; i++) b = align256(b) + qi_nbytes(un->w[i]);
    return b;
}

qi_status qi_wstream_alloc(qi_wstream *s, qi_error *err) {
    for (int u = 0; u < s->n_units; u++)
        if (unit_bytes(&s->units[u]) > s->slot_bytes) s->slot_bytes = unit_bytes(&s->units[u]);
    qi_status st = QI_OK;
    for (int i = 0; i < 2 && st == QI_OK && s->slot_bytes; i++)
        st = s->be->ops->slot_new(s->be, s->slot_bytes, &s->slot[i], err);
    return st;
}

/* Queues unit u's copy into slot k. */
static qi_status stage_into(qi_wstream *s, int u, int k, qi_error *err) {
    const wstream_unit *un = &s->units[u];
    qi_tensor src[QI_WSTREAM_MAX_TENSORS];
    for (int i = 0; i < un->n; i++) src[i] = *un->w[i];
    s->held[k] = -1; /* until the stage is queued */
    qi_status st = s->be->ops->stage(s->be, s->slot[k], src, s->views[k], un->n, err);
    if (st != QI_OK) return st;
    s->held[k] = u;
    s->staged_bytes += unit_bytes(un);
    return QI_OK;
}

qi_status qi_wstream_take(qi_wstream *s, int u, int next, const qi_tensor **views, qi_error *err) {
    if (!qi_wstream_streams(s, u) || !s->slot[0])
        return qi_fail(err, QI_ERR_ARG, "weight streaming: unit %d is not streamed", u);
    int k = s->held[0] == u ? 0 : s->held[1] == u ? 1 : -1;
    qi_status st = QI_OK;
    if (k < 0) { /* not prefetched: into a slot not holding `next` (an empty one first) */
        k = s->held[0] == next ? 1 : s->held[1] == next ? 0 : s->held[0] < 0 ? 0 : s->held[1] < 0 ? 1 : 0;
        if ((st = stage_into(s, u, k, err)) != QI_OK) return st;
    }
    s->be->ops->stage_wait(s->be, s->slot[k]);
    /* the other slot's weights are read only by ops queued before: the stage waits for them */
    if (next != u && qi_wstream_streams(s, next) && s->held[1 - k] != next) st = stage_into(s, next, 1 - k, err);
    *views = s->views[k];
    return st;
}

uint64_t qi_wstream_staged_bytes(const qi_wstream *s) { return s ? s->staged_bytes : 0; }
size_t qi_wstream_slot_bytes(const qi_wstream *s) { return s ? s->slot_bytes : 0; }

void qi_wstream_free(qi_wstream *s) {
    if (!s) return;
    for (int i = 0; i < 2; i++)
        if (s->slot[i]) s->be->ops->slot_free(s->be, s->slot[i]);
    free(s->units);
    free(s);
}

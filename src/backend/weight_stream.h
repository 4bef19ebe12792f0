/*
 * weight_stream.h — host-resident weights brought to the device just in
 * time, through two slots (the backend's streamed-weight ops: weight_host,
 * slot_new, stage, stage_wait).
 *
 * A model groups the weights it streams into units (a transformer block's
 * matrices, a text encoder layer's) and, before queuing the ops of unit u,
 * takes it: u is staged into a slot if no slot holds it (else its copy was
 * queued earlier and overlapped the ops before), the compute queue waits for
 * that copy, and the unit the model will take next is staged into the other
 * slot, so its copy overlaps u's ops. A stage always waits for every op queued
 * before it, so a slot is never overwritten while an op may still read it.
 *
 *     qi_wstream_new(be, n_units, &s, err);
 *     qi_wstream_set_unit(s, u, weights, n);        every streamed unit
 *     qi_wstream_alloc(s, err);                      two slots of the largest unit
 *     per use: qi_wstream_take(s, u, next, &views, err); ops read views[0..n)
 *     qi_wstream_free(s);
 *
 * The tensors registered are the model's (host weights from weight_host);
 * their addresses must stay valid. The views are copies of them pointing into
 * a slot, valid until that slot is staged again (two takes later at most).
 */
#ifndef QI_WEIGHT_STREAM_H
#define QI_WEIGHT_STREAM_H

#include <stdint.h>

#include "backend/backend.h"

#define QI_WSTREAM_MAX_TENSORS 16 /* tensors of one unit */

typedef struct qi_wstream qi_wstream;

/* A streamer for units 0 … n_units-1 (none streamed until set). The backend
 * must have the streamed-weight ops (QI_ERR_UNSUPPORTED naming it otherwise). */
qi_status qi_wstream_new(qi_backend *be, int n_units, qi_wstream **out, qi_error *err);
/* Unit u streams these n (<= QI_WSTREAM_MAX_TENSORS) tensors, in this order. */
void qi_wstream_set_unit(qi_wstream *s, int u, qi_tensor *const *w, int n);
int qi_wstream_streams(const qi_wstream *s, int u); /* whether unit u was set */
/* The two slots, each the size of the largest unit (its tensors at 256-byte boundaries). */
qi_status qi_wstream_alloc(qi_wstream *s, qi_error *err);
/* Unit u ready for the ops queued next (see above); *views its tensors in
 * the slot. next: the unit to stage meanwhile (-1, an unset unit, or u: none). */
qi_status qi_wstream_take(qi_wstream *s, int u, int next, const qi_tensor **views, qi_error *err);
uint64_t qi_wstream_staged_bytes(const qi_wstream *s); /* copied into slots so far */
size_t qi_wstream_slot_bytes(const qi_wstream *s);     /* each slot's size */
void qi_wstream_free(qi_wstream *s);

#endif

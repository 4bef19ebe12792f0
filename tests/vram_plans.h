/*
 * vram_plans.h — the tiny model's engine under a device budget, shared by
 * test_vram.c (the CPU backend) and test_cuda_vram.c (the GPU): opening it,
 * the one small request both generate, the two plan shapes their claims look
 * for, and the largest budget that gets one. The budgets come from the
 * engine's own sizes (e->sizes, e->need) and planner, so the claims hold
 * whatever the tiny model's exact sizes are.
 */
#ifndef QI_TEST_VRAM_PLANS_H
#define QI_TEST_VRAM_PLANS_H

#include "engine/engine.h"
#include "engine/residency.h"

/* The tiny model on `device` ("cpu", "cuda") with budget `vram` (0: none)
 * and pinned host budget `pinned` (bytes; -1: the default, QI_PINNED_MAX
 * from the environment, else half the host's memory). */
static inline qi_status open_tiny(const char *device, size_t vram, long long pinned, qi_engine **e) {
    qi_open_options o = qi_open_options_default();
    o.model_dir = QI_TEST_DATA "/tiny-model";
    o.device = device;
    o.vram_bytes = vram;
    o.pinned_bytes = pinned;
    return qi_engine_open(&o, e);
}

/* One 64x48 image of `prompt`, 2 steps, seed 7. */
static inline qi_status generate(qi_engine *e, const char *prompt, qi_image *img) {
    qi_request r = qi_request_default();
    r.prompt = prompt;
    r.width = 64;
    r.height = 48;
    r.steps = 2;
    r.seed = 7;
    return qi_generate(e, &r, img);
}

typedef int (*plan_test)(const qi_residency_plan *p);
/* a stage swap: the text encoder freed after each prompt (and loaded again
 * for the next) — the planner's last resort, where nothing fits beside the
 * transformer (step 2, 3 or 4 swapped) */
static inline int is_swap(const qi_residency_plan *p) { return p->te_swap; }
/* step 4: the text encoder's layers and every transformer block streamed */
static inline int streams_everything(const qi_residency_plan *p) {
    return p->step == 4 && p->te_stream && p->resident_blocks == 0 && !p->mod_resident;
}

/* The largest budget from `top` down to just above `bottom` (128 KiB steps)
 * whose plan passes `want`, with the sizes the engine on `device` measures
 * (opened with budget `top`); 0 if none. */
static inline size_t budget_where(const char *device, size_t top, size_t bottom, plan_test want) {
    qi_engine *e = NULL;
    size_t found = 0;
    if (open_tiny(device, top, -1, &e) == QI_OK)
        for (size_t b = top; b > bottom && !found; b -= 128 << 10) {
            qi_residency_plan p;
            qi_error err;
            if (qi_residency_plan_make(b, &e->sizes, &e->need, &p, &err) == QI_OK && want(&p)) found = b;
        }
    qi_engine_close(e);
    return found;
}

#endif

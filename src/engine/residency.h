/*
 * residency.h — what lives in device memory under a budget (`--vram`): the
 * planner. Pure host code (no engine, no backend), so every rule is
 * unit-testable with made-up sizes (tests/test_residency.c).
 *
 * Given the budget, the weights of each component as the backend would keep
 * them and the activation arena a request needs, it chooses among these:
 *
 *   1. everything resident;
 *   1b. everything resident but the transformer's modulation weights
 *       (img_mod / txt_mod: a third of it), streamed once per generation
 *       (the engine computes every step's modulation in one pass);
 *   2. stage swap: the text encoder loaded for the prompt and freed before
 *      the transformer needs the memory (loaded again for the next prompt);
 *      the transformer resident (2), or all but its modulation (2b);
 *   3. the transformer's blocks streamed from host memory through two device
 *      slots, as many kept resident as fit (modulation always streamed); the
 *      text encoder whole beside it, or swapped as in 2;
 *   4. the text encoder's layers streamed (it runs once per prompt:
 *      streaming it costs one pass over its weights), its embedding table
 *      left in host memory (the prompt's rows are gathered from there),
 *      beside the transformer or swapped; the transformer as in 1-3.
 *
 * in this order: 1, 1b; then the plans that load nothing again between
 * requests (3 or 4 beside the transformer: whichever copies fewer bytes per
 * image, counting 8 steps); only then the swaps, 2, 2b, 3, 4. A swap reads the
 * text encoder's file again for every new prompt and — since a swap is only
 * needed where the two do not fit together — frees the transformer for it
 * and reads that file again too (dit_evict): seconds per image (run X: 21.8 s
 * at --vram 3G), where streaming moves the same bytes from pinned memory at
 * the link's speed.
 *
 * The VAE is not a separate step: at every step its decode is planned whole
 * when that fits, in tiles otherwise, and in tiles whenever a whole decode's
 * larger arena would cost resident blocks (a tiled decode costs a few
 * milliseconds per image; a streamed block costs a copy per step). A request
 * that encodes pictures (img2img, inpaint, Edit) has the encoder's peak
 * counted the same way: each of decode and encode is tiled when the tiled
 * choice is taken and its whole activations exceed the arena.
 *
 * A budget that nothing fits is refused naming the component that did not
 * fit, what it needs at least, and the budget or file choice that would do.
 *
 * One activation arena serves every stage (the backend's, reset between
 * them), so it is sized as the largest stage's need; every byte not planned
 * for weights may go to it (the engine caps it).
 */
#ifndef QI_ENGINE_RESIDENCY_H
#define QI_ENGINE_RESIDENCY_H

#include <stddef.h>

#include "base/base.h"

/* Device bytes of the weights, as the backend keeps them (CUDA: bf16 for
 * float files, fp8 and GGUF blocks as stored; CPU: as stored). */
typedef struct qi_residency_sizes {
    size_t fixed;        /* the backend's own device memory (GEMM workspace, op scratch, the
                            expansion scratch of quantised weights) and a safety margin */
    size_t te_global;    /* text encoder weights that are never streamed: final norm, every 1-D weight */
    size_t te_embed;     /* its embedding table: on the device, or — when the layers stream — in host
                            memory, where `embedding` gathers the prompt's rows in place */
    size_t te_layer;     /* one layer's streamable weights (its 7 matrices), the largest */
    int te_layers;       /* 28 full size */
    size_t vae;          /* every VAE weight (always resident: ~250 MB) */
    size_t vision;       /* an Edit model's vision tower (Qwen2.5-VL's visual.*, ~1.3 GB in bf16): resident
                            from the first Edit request on; 0 for text to image */
    size_t dit_global;   /* transformer weights that are never streamed: img_in, txt_in, the
                            timestep MLP, norm_out, proj_out, every 1-D weight */
    size_t dit_block;    /* one block's streamable weights (its 12 attention and MLP matrices), the largest */
    size_t dit_mod;      /* one block's modulation matrices (img_mod, txt_mod), the largest */
    int dit_blocks;      /* 60 full size */
    const char *te_type;  /* storage type of the text encoder's matrices, for messages ("BF16", "Q4_K") */
    const char *dit_type; /* the same for the transformer's blocks */
} qi_residency_sizes;

/* Arena bytes of the request planned for (stage by stage). */
typedef struct qi_residency_need {
    size_t text;        /* the text encoder's forward */
    size_t dit;         /* the denoising loop: its inputs, the call's buffers, one call's activations */
    size_t vae_untiled; /* one image decoded whole */
    size_t vae_tiled;   /* one image decoded in tiles */
    size_t vae_enc_untiled; /* one input picture encoded whole (img2img, inpaint, Edit); 0: none encoded */
    size_t vae_enc_tiled;   /* one input picture encoded in tiles */
    const char *what;   /* the request, for messages ("1328x1328, 1 image, 512 text tokens") */
} qi_residency_need;

typedef struct qi_residency_plan {
    size_t budget;       /* what was planned for */
    int step;            /* the kind of plan in the list above: 1, 2 (1b, 2b: step 1, 2 with !mod_resident), 3, 4 */
    int te_swap;         /* the text encoder is freed after the prompt, loaded again for the next */
    int te_stream;       /* its layers are streamed (all of them), its embedding table in host memory */
    int dit_stream;      /* some transformer weights are streamed (blocks, modulation or both) */
    int resident_blocks; /* blocks kept on the device (dit_blocks when no block streams) */
    int mod_resident;    /* the modulation weights stay on the device */
    int dit_evict;       /* the text encoder and the transformer's resident weights do not fit
                            together: loading the text encoder again frees the transformer first */
    int vae_tiled;       /* the VAE decodes in tiles */
    int vae_encode;      /* the request encodes pictures (a need with vae_enc_untiled > 0) */
    int vae_enc_tiled;   /* ... in tiles: a whole encode's activations do not fit the arena */
    size_t arena;        /* the activation arena: the largest stage's need */
    size_t te_slot;      /* each of the text encoder's 2 device slots (0: none) */
    size_t dit_slot;     /* each of the transformer's 2 device slots (0: none) */
    size_t text_peak;    /* device bytes while the text encoder runs (transformer evicted or not yet loaded) */
    size_t dit_peak;     /* device bytes while the transformer and then the VAE run */
} qi_residency_plan;

/* Sums weights into sizes, part by part (the engine from its sources, tests
 * from a manifest): qi_residency_tally_add per weight, then _sizes. */
typedef enum qi_residency_part {
    QI_PART_NONE = 0,   /* not loaded (counted nowhere) */
    QI_PART_TE_GLOBAL,
    QI_PART_TE_EMBED,
    QI_PART_TE_LAYER,   /* index: the layer */
    QI_PART_VAE,
    QI_PART_DIT_GLOBAL,
    QI_PART_DIT_BLOCK,  /* index: the block */
    QI_PART_DIT_MOD     /* index: the block */
} qi_residency_part;

#define QI_RESIDENCY_MAX_UNITS 1024 /* layers / blocks a tally holds (configs allow 1024) */

typedef struct qi_residency_tally {
    qi_residency_sizes s;                       /* te_global, vae, dit_global summed here */
    size_t te_layer[QI_RESIDENCY_MAX_UNITS];    /* per layer */
    size_t dit_block[QI_RESIDENCY_MAX_UNITS];   /* per block */
    size_t dit_mod[QI_RESIDENCY_MAX_UNITS];     /* per block */
    int bad_index;                              /* an index outside 0..MAX_UNITS-1 was added (counted as global) */
} qi_residency_tally;

void qi_residency_tally_add(qi_residency_tally *t, qi_residency_part part, int index, size_t bytes);
/* The sizes: layers / blocks counted (1 + the largest index seen), each
 * unit the largest of its kind; `fixed` and the type names are the caller's. */
qi_residency_sizes qi_residency_tally_sizes(const qi_residency_tally *t);

/* What a plan leaves free of a budget for allocation granularity and the
 * libraries' own buffers. */
size_t qi_residency_margin(size_t budget);

/* The text encoder's and the transformer's device bytes under a plan. */
size_t qi_residency_te_bytes(const qi_residency_sizes *s, const qi_residency_plan *p);
size_t qi_residency_dit_bytes(const qi_residency_sizes *s, const qi_residency_plan *p);

/* Plans for `budget` bytes; on success *out is the first choice that fits.
 * A budget nothing fits is QI_ERR_NOMEM naming what did not fit and the
 * least budget that would (or the smaller file that would). */
qi_status qi_residency_plan_make(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n,
                                 qi_residency_plan *out, qi_error *err);

/* One line describing the plan ("stage swap; 41 of 60 blocks resident, ..."). */
void qi_residency_plan_describe(const qi_residency_sizes *s, const qi_residency_plan *p, char *buf, size_t cap);

#endif

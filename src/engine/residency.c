/*
 * residency.c — the residency planner (residency.h): which of the ways of
 * holding the model fits a device-memory budget, tried in order of preference.
 *
 * Every choice is priced by two phase peaks, since the stages never overlap:
 *   text  = fixed + arena + VAE + text encoder            (transformer evicted
 *           or not loaded yet; with the text encoder resident the transformer
 *           is counted in the denoise phase instead)
 *   dit   = fixed + arena + VAE + transformer (+ text encoder unless swapped)
 * and the one arena is the largest stage's need (text, denoise, VAE decode
 * and encode, whole or tiled). A choice fits when both peaks are within the budget.
 */
#include "engine/residency.h"

#include <stdio.h>
#include <string.h>

#define GIB(x) ((double)(x) / (double)((size_t)1 << 30))

static size_t max2(size_t a, size_t b) { return a > b ? a : b; }

/* Kept free of any plan: allocation granularity and what libraries allocate
 * on their own (cuBLASLt, the CUDA runtime's small buffers), 3% + 128 MiB. */
size_t qi_residency_margin(size_t budget) { return budget / 32 + ((size_t)128 << 20); }

/* The text encoder on the device: all of it, or its never-streamed weights
 * and two slots of one layer (the embedding table then in host memory). */
static size_t te_bytes(const qi_residency_sizes *s, int stream) {
    return s->te_global + (stream ? 2 * s->te_layer : s->te_embed + (size_t)s->te_layers * s->te_layer);
}

/* One transformer slot: the largest unit streamed through it (a block's
 * matrices when blocks stream, a block's modulation when it streams). */
static size_t dit_slot(const qi_residency_sizes *s, int resident_blocks, int mod_resident) {
    size_t slot = resident_blocks < s->dit_blocks ? s->dit_block : 0;
    return mod_resident ? slot : max2(slot, s->dit_mod);
}

/* The transformer on the device: its never-streamed weights, the resident
 * blocks, the modulation when resident, and the two slots when anything streams. */
static size_t dit_bytes(const qi_residency_sizes *s, int resident_blocks, int mod_resident) {
    return s->dit_global + (size_t)resident_blocks * s->dit_block +
           (mod_resident ? (size_t)s->dit_blocks * s->dit_mod : 0) +
           2 * dit_slot(s, resident_blocks, mod_resident);
}

size_t qi_residency_te_bytes(const qi_residency_sizes *s, const qi_residency_plan *p) {
    return te_bytes(s, p->te_stream);
}

size_t qi_residency_dit_bytes(const qi_residency_sizes *s, const qi_residency_plan *p) {
    return dit_bytes(s, p->resident_blocks, p->mod_resident);
}

/* One choice priced with the VAE whole or tiled (the arena follows); returns
 * whether it fits, *p filled either way. */
static int price(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, int te_swap,
                 int te_stream, int resident_blocks, int mod_resident, int tiled, qi_residency_plan *p) {
    memset(p, 0, sizeof *p);
    p->budget = budget;
    p->te_swap = te_swap;
    p->te_stream = te_stream;
    p->resident_blocks = resident_blocks;
    p->mod_resident = mod_resident;
    p->dit_stream = resident_blocks < s->dit_blocks || !mod_resident;
    /* the arena holds the largest stage; under the tiled choice each VAE pass
     * tiles only when its whole activations exceed that arena (what the
     * engine's AUTO tiling then does: max_untiled_bytes = the arena) */
    size_t vae = max2(tiled ? n->vae_tiled : n->vae_untiled, tiled ? n->vae_enc_tiled : n->vae_enc_untiled);
    p->arena = max2(max2(n->text, n->dit), vae);
    p->vae_tiled = tiled && n->vae_untiled > p->arena;
    p->vae_encode = n->vae_enc_untiled > 0;
    p->vae_enc_tiled = tiled && n->vae_enc_untiled > p->arena;
    p->te_slot = te_stream ? s->te_layer : 0;
    p->dit_slot = p->dit_stream ? dit_slot(s, resident_blocks, mod_resident) : 0;
    size_t base = s->fixed + qi_residency_margin(budget) + p->arena + s->vae + s->vision, te = te_bytes(s, te_stream);
    size_t dit = dit_bytes(s, resident_blocks, mod_resident);
    p->text_peak = base + te + (te_swap ? 0 : dit);
    p->dit_peak = base + dit + (te_swap ? 0 : te);
    p->dit_evict = te_swap && base + te + dit > budget;
    return p->text_peak <= budget && p->dit_peak <= budget;
}

/* The choice with the VAE whole if that fits, else tiled. */
static int price_vae(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, int te_swap,
                     int te_stream, int resident_blocks, int mod_resident, qi_residency_plan *p) {
    return price(budget, s, n, te_swap, te_stream, resident_blocks, mod_resident, 0, p) ||
           price(budget, s, n, te_swap, te_stream, resident_blocks, mod_resident, 1, p);
}

/* The most resident blocks (below all of them) that fit with the
 * modulation streamed and the VAE whole or tiled; -1: none. */
static int max_blocks(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, int te_swap,
                      int te_stream, int tiled) {
    qi_residency_plan p;
    for (int k = s->dit_blocks - 1; k >= 0; k--)
        if (price(budget, s, n, te_swap, te_stream, k, 0, tiled, &p)) return k;
    return -1;
}

/* Steps 3 and 4: the most resident blocks that fit, modulation streamed;
 * the VAE tiled when that keeps more blocks. */
static int most_blocks(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, int te_swap,
                       int te_stream, qi_residency_plan *p) {
    int whole = max_blocks(budget, s, n, te_swap, te_stream, 0);
    int tiled = max_blocks(budget, s, n, te_swap, te_stream, 1);
    if (whole < 0 && tiled < 0) return 0;
    if (tiled > whole) return price(budget, s, n, te_swap, te_stream, tiled, 0, 1, p);
    return price(budget, s, n, te_swap, te_stream, whole, 0, 0, p);
}

/* Bytes a plan copies to the device per image beyond the resident weights,
 * for choosing between plans that both fit: the streamed blocks once per
 * step (PLAN_COST_STEPS; the modulation once per image), the streamed text
 * encoder once per prompt. */
#define PLAN_COST_STEPS 8
static double streamed_bytes(const qi_residency_sizes *s, const qi_residency_plan *p) {
    double b = (double)(s->dit_blocks - p->resident_blocks) * (double)s->dit_block * PLAN_COST_STEPS;
    if (!p->mod_resident) b += (double)s->dit_blocks * (double)s->dit_mod;
    if (p->te_stream) b += (double)s->te_layers * (double)s->te_layer;
    return b;
}

/* Step 4's streamed text encoder kept beside the transformer (no reload
 * between prompts; swap 0), or freed after the prompt (swap 1: it loads again
 * from its file for the next). */
static int te_streamed(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, int swap,
                       qi_residency_plan *p) {
    int L = s->dit_blocks;
    return price_vae(budget, s, n, swap, 1, L, 1, p) || price_vae(budget, s, n, swap, 1, L, 0, p) ||
           most_blocks(budget, s, n, swap, 1, p);
}

/* The message of a budget nothing fits: the least each part needs (every
 * block and the text encoder's layers streamed, the VAE tiled). */
static qi_status refuse(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n, qi_error *err) {
    qi_residency_plan p;
    price(budget, s, n, 1, 1, 0, 0, 1, &p);
    size_t base = s->fixed + p.arena + s->vae;
    size_t dit_min = base + dit_bytes(s, 0, 0), te_min = base + te_bytes(s, 1);
    /* the least B with B >= rest + margin(B), rounded up to the next 10 MiB */
    size_t rest = max2(dit_min, te_min), mib10 = (size_t)10 << 20;
    size_t need = ((rest + ((size_t)128 << 20)) / 31 * 32 + mib10) / mib10 * mib10;
    const char *act = n->what ? n->what : "the request";
    if (dit_min >= te_min)
        return qi_fail(err, QI_ERR_NOMEM,
                       "a device budget of %.2f GiB is too small: the %s transformer needs at least %.2f GiB "
                       "with all %d blocks streamed (%.2f GiB of weights kept: input/output layers and two "
                       "block slots of %.2f GiB; %.2f GiB of activations for %s; %.2f GiB for the VAE; "
                       "%.2f GiB for the backend; a margin of %.2f GiB); give --vram %.2fG or more, or use a "
                       "smaller transformer file (a Q4_K GGUF) or a smaller image",
                       GIB(budget), s->dit_type ? s->dit_type : "", GIB(need), s->dit_blocks,
                       GIB(dit_bytes(s, 0, 0)), GIB(p.dit_slot), GIB(p.arena), act, GIB(s->vae), GIB(s->fixed),
                       GIB(qi_residency_margin(need)), GIB(need) + 0.005);
    return qi_fail(err, QI_ERR_NOMEM,
                   "a device budget of %.2f GiB is too small: the %s text encoder needs at least %.2f GiB with "
                   "its %d layers streamed (%.2f GiB of weights kept: norms, biases and two layer slots of "
                   "%.2f GiB; %.2f GiB of activations for %s; %.2f GiB for the VAE; %.2f GiB for the backend; "
                   "a margin of %.2f GiB); give --vram %.2fG or more, or use a smaller text encoder file (a "
                   "Q4_K GGUF)",
                   GIB(budget), s->te_type ? s->te_type : "", GIB(need), s->te_layers, GIB(te_bytes(s, 1)),
                   GIB(s->te_layer), GIB(p.arena), act, GIB(s->vae), GIB(s->fixed), GIB(qi_residency_margin(need)),
                   GIB(need) + 0.005);
}

/* The order of preference (residency.h): a plan that loads nothing again
 * between requests before one that does — a stage swap reads the text
 * encoder's file for every new prompt and, when the two do not fit together
 * (dit_evict; always so once step 1 does not fit), the transformer's too:
 * seconds per image, where streaming from pinned host memory moves the same
 * bytes at the link's 25–55 GB/s. Among the plans without reloads that stream
 * blocks, the one that copies fewer bytes per image. */
qi_status qi_residency_plan_make(size_t budget, const qi_residency_sizes *s, const qi_residency_need *n,
                                 qi_residency_plan *out, qi_error *err) {
    int L = s->dit_blocks;
    qi_residency_plan p, q;
    int whole = 0, streamed = 0;
    if (price_vae(budget, s, n, 0, 0, L, 1, &p) || price_vae(budget, s, n, 0, 0, L, 0, &p)) { /* 1, 1b */
        p.step = 1;
    } else if ((whole = most_blocks(budget, s, n, 0, 0, &p)) | (streamed = te_streamed(budget, s, n, 0, &q))) {
        /* 3 beside (the whole text encoder next to streamed blocks) or 4 beside: the cheaper */
        if (!whole || (streamed && streamed_bytes(s, &q) < streamed_bytes(s, &p))) {
            p = q;
            p.step = 4;
        } else {
            p.step = 3;
        }
    } else if (price_vae(budget, s, n, 1, 0, L, 1, &p) || price_vae(budget, s, n, 1, 0, L, 0, &p)) { /* 2, 2b */
        p.step = 2;
    } else if (most_blocks(budget, s, n, 1, 0, &p)) { /* 3, swapped */
        p.step = 3;
    } else if (te_streamed(budget, s, n, 1, &p)) { /* 4, swapped */
        p.step = 4;
    } else {
        memset(out, 0, sizeof *out);
        return refuse(budget, s, n, err);
    }
    *out = p;
    return QI_OK;
}

void qi_residency_plan_describe(const qi_residency_sizes *s, const qi_residency_plan *p, char *buf, size_t cap) {
    char te[160], dit[224];
    if (p->te_stream)
        snprintf(te, sizeof te, "text encoder streamed (%d layers through 2 slots of %.2f GiB)%s", s->te_layers,
                 GIB(p->te_slot), p->te_swap ? ", freed after the prompt" : "");
    else
        snprintf(te, sizeof te, "text encoder %.2f GiB%s", GIB(te_bytes(s, 0)),
                 p->te_swap ? ", freed after the prompt (stage swap)" : "");
    if (!p->dit_stream)
        snprintf(dit, sizeof dit, "transformer %.2f GiB resident", GIB(dit_bytes(s, s->dit_blocks, 1)));
    else if (p->resident_blocks == s->dit_blocks)
        snprintf(dit, sizeof dit, "transformer %.2f GiB resident but its modulation (streamed once per "
                 "generation through 2 slots of %.2f GiB)", GIB(dit_bytes(s, s->dit_blocks, 0)), GIB(p->dit_slot));
    else
        snprintf(dit, sizeof dit, "transformer: %d of %d blocks resident, the other %d and the modulation "
                 "streamed through 2 slots of %.2f GiB", p->resident_blocks, s->dit_blocks,
                 s->dit_blocks - p->resident_blocks, GIB(p->dit_slot));
    char vision[64] = "", vae[64];
    if (s->vision) snprintf(vision, sizeof vision, "; Edit vision tower %.2f GiB resident", GIB(s->vision));
    if (p->vae_encode)
        snprintf(vae, sizeof vae, "VAE decode %s, encode %s", p->vae_tiled ? "in tiles" : "whole",
                 p->vae_enc_tiled ? "in tiles" : "whole");
    else
        snprintf(vae, sizeof vae, "VAE %s", p->vae_tiled ? "in tiles" : "whole");
    snprintf(buf, cap, "%s; %s%s%s; %s; arena %.2f GiB; peak %.2f GiB (text) / %.2f GiB (denoise) of %.2f GiB",
             te, dit, p->dit_evict ? " (freed while the text encoder loads again)" : "", vision, vae, GIB(p->arena),
             GIB(p->text_peak), GIB(p->dit_peak), GIB(p->budget));
}

/* ---- tallying weights into sizes ----------------------------------------------------- */

void qi_residency_tally_add(qi_residency_tally *t, qi_residency_part part, int index, size_t bytes) {
    int unit = part == QI_PART_TE_LAYER || part == QI_PART_DIT_BLOCK || part == QI_PART_DIT_MOD;
    if (unit && (index < 0 || index >= QI_RESIDENCY_MAX_UNITS)) {
        t->bad_index = 1;
        part = part == QI_PART_TE_LAYER ? QI_PART_TE_GLOBAL : QI_PART_DIT_GLOBAL;
    }
    switch (part) {
    case QI_PART_TE_GLOBAL: t->s.te_global += bytes; break;
    case QI_PART_TE_EMBED: t->s.te_embed += bytes; break;
    case QI_PART_TE_LAYER:
        t->te_layer[index] += bytes;
        if (index + 1 > t->s.te_layers) t->s.te_layers = index + 1;
        break;
    case QI_PART_VAE: t->s.vae += bytes; break;
    case QI_PART_DIT_GLOBAL: t->s.dit_global += bytes; break;
    case QI_PART_DIT_BLOCK:
    case QI_PART_DIT_MOD:
        (part == QI_PART_DIT_BLOCK ? t->dit_block : t->dit_mod)[index] += bytes;
        if (index + 1 > t->s.dit_blocks) t->s.dit_blocks = index + 1;
        break;
    default: break;
    }
}

qi_residency_sizes qi_residency_tally_sizes(const qi_residency_tally *t) {
    qi_residency_sizes s = t->s;
    for (int i = 0; i < s.te_layers; i++) s.te_layer = max2(s.te_layer, t->te_layer[i]);
    for (int i = 0; i < s.dit_blocks; i++) {
        s.dit_block = max2(s.dit_block, t->dit_block[i]);
        s.dit_mod = max2(s.dit_mod, t->dit_mod[i]);
    }
    return s;
}

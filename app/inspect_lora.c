/*
 * inspect_lora.c — `qwen-image inspect` on a LoRA file: its naming style and
 * prefix, ranks, alphas and the scale the engine applies, which modules it
 * targets (read through model/lora.c, the loader's own key parser, bound to
 * the released Qwen-Image transformer's Linear names and shapes), and what
 * the file says about itself (its __metadata__). Nothing here guesses what a
 * file is for beyond what its keys, shapes and metadata say.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "io/safetensors.h"
#include "model/dit.h"
#include "model/lora.h"

/* Distinct values with counts, most frequent first when printed. */
typedef struct tally {
    double v[8];
    int count[8], n, more; /* more: values beyond the 8 kept */
} tally;

static void tally_add(tally *t, double v) {
    for (int i = 0; i < t->n; i++)
        if (t->v[i] == v) {
            t->count[i]++;
            return;
        }
    if (t->n == 8) {
        t->more++;
        return;
    }
    t->v[t->n] = v;
    t->count[t->n++] = 1;
}

/* "64 (every module)" or "16 (600 modules), 32 (120)". */
static void tally_text(const tally *t, char *out, size_t cap) {
    size_t len = 0;
    out[0] = 0;
    if (t->n == 1) {
        snprintf(out, cap, "%g (every module)", t->v[0]);
        return;
    }
    for (int i = 0; i < t->n && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%g (%d%s)", i ? ", " : "", t->v[i], t->count[i],
                                i ? "" : " modules");
    if (t->more && len < cap) snprintf(out + len, cap - len, ", and %d more values", t->more);
}

/* What a target weight is: 'a' attention, 'm' MLP, 'd' modulation, 'g' global;
 * *block = its transformer_blocks index or -1. */
static char weight_kind(const char *name, int *block) {
    static const char stem[] = "transformer_blocks.";
    *block = -1;
    if (strncmp(name, stem, sizeof stem - 1)) return 'g';
    char *end;
    long b = strtol(name + sizeof stem - 1, &end, 10);
    if (*end != '.') return 'g';
    *block = (int)b;
    if (!strncmp(end, ".attn.", 6)) return 'a';
    if (strstr(end, "_mlp.")) return 'm';
    if (strstr(end, "_mod.")) return 'd';
    return 'g';
}

/* "720: the 12 linears (8 attention, 4 MLP) of each of 60 blocks (transformer_blocks.0-59); ..." */
static void describe_targets(const qi_lora_binding *b, int n, char *out, size_t cap, int kinds[4], int *n_blocks) {
    int per_block[1024] = {0}, global = 0, lo = 1 << 30, hi = -1, blocks = 0;
    kinds[0] = kinds[1] = kinds[2] = kinds[3] = 0;
    char global_names[160] = "";
    for (int k = 0; k < n; k++) {
        const char *target = qi_lora_binding_target_of(b, 0, k);
        int blk = -1;
        char kind = target ? weight_kind(target, &blk) : 'g';
        if (blk >= 0 && blk < 1024) {
            blocks += per_block[blk]++ == 0;
            lo = blk < lo ? blk : lo, hi = blk > hi ? blk : hi;
            kinds[kind == 'a' ? 0 : kind == 'm' ? 1 : 2]++;
        } else if (target) {
            size_t len = strlen(global_names);
            if (global++ < 3) snprintf(global_names + len, sizeof global_names - len, "%s%s", len ? ", " : "", target);
        }
    }
    kinds[3] = global;
    *n_blocks = blocks;
    int uniform = 1, first = hi >= 0 ? per_block[lo] : 0;
    for (int i = lo; i <= hi && hi >= 0; i++) uniform &= per_block[i] == 0 || per_block[i] == first;
    size_t len = (size_t)snprintf(out, cap, "%d", n);
    if (blocks && uniform)
        len += (size_t)snprintf(out + len, cap - len, ": the %d linears of each of %d blocks", first, blocks);
    else if (blocks)
        len += (size_t)snprintf(out + len, cap - len, ": in %d blocks, not the same number in each", blocks);
    if (blocks && len < cap)
        len += (size_t)snprintf(out + len, cap - len, " (transformer_blocks.%d-%d%s): %d attention, %d MLP, %d modulation%s",
                                lo, hi, hi - lo + 1 == blocks ? "" : ", with gaps", uniform ? kinds[0] / blocks : kinds[0],
                                uniform ? kinds[1] / blocks : kinds[1], uniform ? kinds[2] / blocks : kinds[2],
                                uniform ? " each" : " in all");
    if (len < cap)
        snprintf(out + len, cap - len, global ? "; %d outside the blocks (%s%s)" : "; embedders and output layers untouched",
                 global, global_names, global > 3 ? ", ..." : "");
}

/* Shapes against the released model's Linear of the same name. */
static void describe_shapes(const qi_lora_binding *b, const qi_lora_set *set, const qi_dit_linear_weight *w, int nw,
                            char *out, size_t cap) {
    int n = qi_lora_set_file_module_count(set, 0), bad = 0;
    char first[300] = "";
    for (int k = 0; k < n; k++) {
        qi_lora_module_info m;
        const char *target = qi_lora_binding_target_of(b, 0, k);
        if (!target || qi_lora_set_module_info(set, 0, k, &m, NULL)) continue;
        for (int i = 0; i < nw; i++) {
            if (strcmp(w[i].name, target)) continue;
            if (m.out_dim != w[i].out_dim || m.in_dim != w[i].in_dim) {
                if (!bad++)
                    snprintf(first, sizeof first, "%s: delta [%lld, %lld], the released weight [%lld, %lld]", target,
                             (long long)m.out_dim, (long long)m.in_dim, (long long)w[i].out_dim, (long long)w[i].in_dim);
            }
            break;
        }
    }
    if (!bad) snprintf(out, cap, "every delta has the released Qwen-Image (20B) weight's shape");
    else
        snprintf(out, cap, "%d of %d modules do not fit the released Qwen-Image (20B) weights (e.g. %s): "
                 "a LoRA for a smaller model with the same names", bad, n, first);
}

/* Naming style and prefixes: "kohya (lora_down / lora_up), prefix 'transformer.'". */
static void describe_naming(const qi_lora_set *set, int n, char *out, size_t cap) {
    int peft = 0, flat = 0, alphas = 0;
    char prefixes[3][64] = {{0}};
    int n_prefixes = 0;
    for (int k = 0; k < n; k++) {
        qi_lora_module_info m;
        if (qi_lora_set_module_info(set, 0, k, &m, NULL)) continue;
        peft += m.peft, flat += m.flattened, alphas += m.has_alpha;
        const char *at = strstr(m.down_key, m.module);
        int plen = at ? (int)(at - m.down_key) : 0;
        char p[64];
        snprintf(p, sizeof p, "%.*s", plen < 63 ? plen : 63, m.down_key);
        int seen = 0;
        for (int i = 0; i < n_prefixes; i++) seen |= !strcmp(prefixes[i], p);
        if (!seen && n_prefixes < 3) snprintf(prefixes[n_prefixes++], sizeof prefixes[0], "%s", p);
    }
    size_t len = (size_t)snprintf(out, cap, "%s%s%s",
                                  peft == n ? "peft / diffusers (lora_A / lora_B)"
                                  : peft    ? "mixed kohya and peft"
                                            : "kohya (lora_down / lora_up)",
                                  alphas == n ? " + alpha" : alphas ? " + alpha on some modules" : ", no alpha",
                                  flat == n ? ", flattened ('.' written '_')" : flat ? ", some flattened" : "");
    for (int i = 0; i < n_prefixes && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s%s%s", i ? ", " : prefixes[i][0] ? ", prefix " : ", ",
                                prefixes[i][0] ? "'" : "", prefixes[i][0] ? prefixes[i] : "no prefix",
                                prefixes[i][0] ? "'" : "");
}

/* How the scale comes about, in the words of lora.h's rules. */
/* Returns 1 when every module is kohya with rank 64 and alpha 8 (the Lightning LoRAs'). */
static int describe_scale(const qi_lora_set *set, int n, int has_adapter_meta, char *ranks, char *alphas,
                          char *scales, size_t cap) {
    tally r = {0}, a = {0}, s = {0};
    int peft = 0, with_alpha = 0;
    for (int k = 0; k < n; k++) {
        qi_lora_module_info m;
        if (qi_lora_set_module_info(set, 0, k, &m, NULL)) continue;
        tally_add(&r, (double)m.rank);
        if (m.has_alpha) tally_add(&a, m.alpha), with_alpha++;
        tally_add(&s, m.scale);
        peft += m.peft;
    }
    tally_text(&r, ranks, cap);
    if (with_alpha) tally_text(&a, alphas, cap);
    else snprintf(alphas, cap, "none");
    char sv[200];
    tally_text(&s, sv, sizeof sv);
    const char *why = peft && has_adapter_meta ? "lora_alpha / r from the file's lora_adapter_metadata"
                      : peft ? "1: peft without lora_adapter_metadata (.alpha tensors ignored, as diffusers does)"
                      : with_alpha == n ? "alpha / rank"
                      : "alpha / rank where alpha is given, else 1 (as ComfyUI, LightX2V and sd.cpp)";
    snprintf(scales, cap, "%s = %s", why, sv);
    return !peft && r.n == 1 && r.v[0] == 64 && a.n == 1 && a.v[0] == 8 && with_alpha == n;
}

/* The file's __metadata__ keys (what it says about itself), or "none". */
static void describe_metadata(const qi_st_set *st, int *adapter_meta, char *out, size_t cap) {
    const char *meta = st->n_files > 0 ? st->files[0]->metadata_json : NULL;
    *adapter_meta = meta && strstr(meta, "\"lora_adapter_metadata\"");
    if (!meta) {
        snprintf(out, cap, "none (nothing in the file says which model or distillation it was trained for)");
        return;
    }
    int keep = (int)cap - 4 < 200 ? (int)cap - 4 : 200;
    snprintf(out, cap, "%.*s%s", keep, meta, (int)strlen(meta) > keep ? "..." : "");
}

int qi_inspect_lora(const char *path, const qi_st_set *st, char *why, size_t why_cap) {
    qi_lora_set *set = NULL;
    qi_error err = {{0}};
    if (qi_lora_set_add(&set, path, 1.0f, &err) != QI_OK) {
        snprintf(why, why_cap, "%s", err.msg);
        return 0;
    }
    int n = qi_lora_set_file_module_count(set, 0), adapter_meta;
    char naming[400], ranks[400], alphas[400], scales[400], targets[400], shapes[500], meta[240];
    describe_metadata(st, &adapter_meta, meta, sizeof meta);
    describe_naming(set, n, naming, sizeof naming);
    int r64a8 = describe_scale(set, n, adapter_meta, ranks, alphas, scales, sizeof ranks);
    qi_dit_config released = qi_dit_released_config();
    qi_dit_linear_weight *w = NULL;
    int nw = 0, matched = 0, kinds[4] = {0}, blocks = 0;
    qi_lora_binding *b = NULL;
    if (qi_dit_linear_weights(&released, &w, &nw, &err) == QI_OK) {
        const char **names = malloc((size_t)nw * sizeof *names);
        for (int i = 0; names && i < nw; i++) names[i] = w[i].name;
        matched = names && qi_lora_bind(set, names, nw, &b, &err) == QI_OK;
        free(names);
    }
    if (matched) {
        describe_targets(b, n, targets, sizeof targets, kinds, &blocks);
        describe_shapes(b, set, w, nw, shapes, sizeof shapes);
    }
    printf("file:          %s\n", path);
    printf("format:        safetensors%s\n", st->files[0]->metadata_json ? " (with __metadata__)" : "");
    printf("component:     LoRA\n");
    printf("tensors:       %d\n", st->n_tensors);
    printf("naming:        %s\n", naming);
    printf("modules:       %s\n", matched ? targets : "see 'names' below");
    printf("rank:          %s\n", ranks);
    printf("alpha:         %s\n", alphas);
    printf("scale:         %s\n", scales);
    printf("names:         %s\n", matched ? "every module names a Linear of the Qwen-Image transformer" : err.msg);
    if (matched) printf("shapes:        %s\n", shapes);
    printf("metadata:      %s\n", meta);
    /* The Lightning LoRAs (Qwen-Image, 2512, Edit; 4 and 8 steps) share one layout and,
     * as far as their keys go, nothing tells them apart: say the layout, not which. */
    int lightning = r64a8 && matched && n == 720 && blocks == 60 && kinds[0] == 480 && kinds[1] == 240 &&
                    !kinds[2] && !kinds[3];
    printf("lightning:     %s\n", lightning ? "the Lightning LoRAs' layout (kohya, rank 64, alpha 8, the 12 attention/MLP "
                                               "linears of 60 blocks); which one (Qwen-Image, 2512 or Edit; 4 or 8 "
                                               "steps) the keys do not say"
                                             : "not the Lightning LoRAs' layout (kohya, rank 64, alpha 8, 720 "
                                               "attention/MLP modules of 60 blocks)");
    qi_lora_binding_free(b);
    qi_lora_set_free(set);
    free(w);
    return 1;
}

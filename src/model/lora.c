/*
 * lora.c — LoRA files: key normalisation, per-module scale, binding to the
 * model's weight names and the float32 fuse (see lora.h for the rules and the
 * spec references). Owns the mapped LoRA files; does not own or know any
 * model weights — the caller hands in a float32 buffer to add deltas to.
 */
#include "model/lora.h"

#include "base/finite.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "io/model_dir.h" /* qi_json_parse */
#include "io/safetensors.h"

typedef enum lora_style { STYLE_UNSET = 0, STYLE_KOHYA, STYLE_PEFT } lora_style;

/* One adapted module of one file: up [out, r] @ down [r, in]. */
typedef struct lora_module {
    char *key;                 /* module name after prefix stripping, as written (dotted or flattened) */
    int flattened;             /* key came from lora_unet_/lycoris_/lora_transformer_: '.' written '_' */
    lora_style style;
    const qi_st_tensor *down;  /* [r, in] */
    const qi_st_tensor *up;    /* [out, r] */
    const qi_st_tensor *alpha; /* scalar or NULL */
    float scale;               /* alpha/r etc., without the user strength */
} lora_module;

typedef struct lora_file {
    char *path;
    float strength;
    qi_st_set *st;
    int n_modules;
    lora_module *modules;
} lora_file;

struct qi_lora_set {
    int n_files;
    lora_file *files;
};

/* One module bound to one weight. */
typedef struct bound_module {
    const char *target;        /* weight name ("X.weight"), owned by the binding */
    const lora_module *module;
    const lora_file *file;
    int order;                 /* file index · 2^20 + module index: fuse order */
} bound_module;

struct qi_lora_binding {
    int n;
    bound_module *items;       /* sorted by (target, order) */
    char *names;               /* storage of the targets */
};

/* ---- small string helpers --------------------------------------------------- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* Copies `name` into out without any "default." (peft adapter-name infix,
 * diffusers removes every occurrence). */
static void remove_default_infix(const char *name, char *out, size_t cap) {
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < cap;) {
        if (starts_with(p, "default.")) {
            p += 8;
            continue;
        }
        out[n++] = *p++;
    }
    out[n] = 0;
}

/* ---- key parsing ------------------------------------------------------------- */

typedef enum key_role { ROLE_DOWN, ROLE_UP, ROLE_ALPHA, ROLE_SKIP } key_role;

static const struct {
    const char *suffix;
    key_role role;
    lora_style style;
} key_suffixes[] = {
    {".lora_down.weight", ROLE_DOWN, STYLE_KOHYA},
    {".lora_up.weight", ROLE_UP, STYLE_KOHYA},
    {".lora.down.weight", ROLE_DOWN, STYLE_KOHYA},
    {".lora.up.weight", ROLE_UP, STYLE_KOHYA},
    {"_lora.down.weight", ROLE_DOWN, STYLE_KOHYA},
    {"_lora.up.weight", ROLE_UP, STYLE_KOHYA},
    {".lora_A.weight", ROLE_DOWN, STYLE_PEFT},
    {".lora_B.weight", ROLE_UP, STYLE_PEFT},
    {".alpha", ROLE_ALPHA, STYLE_UNSET},
    /* DoRA magnitude vectors: diffusers drops them and runs the file as a
     * plain LoRA; so do we. */
    {".dora_scale", ROLE_SKIP, STYLE_UNSET},
};

/* Prefixes that only say which model the file is for. */
static const char *const dotted_prefixes[] = {"model.diffusion_model.", "diffusion_model.",
                                              "base_model.model.", "transformer."};
/* Prefixes of the kohya flattened layout ('.' written '_'). */
static const char *const flat_prefixes[] = {"lora_unet_", "lora_transformer_", "lycoris_"};

/* Strips the first of `prefixes` that m[0..*mlen) starts with; returns 1 if
 * one was stripped, 0 if none matched, -1 if one matched but reaches into
 * the suffix already cut off (a key such as "transformer.lora_down.weight"
 * or "lora_unet_lora.down.weight": a prefix and a suffix with no module
 * between them). */
static int strip_prefix(const char **m, size_t *mlen, const char *const *prefixes, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (starts_with(*m, prefixes[i])) {
            size_t p = strlen(prefixes[i]);
            if (p >= *mlen) return -1; /* mlen - p would wrap round (or leave no module) */
            *m += p;
            *mlen -= p;
            return 1;
        }
    return 0;
}

/* Splits a (default.-free) key into module name, flattened flag and role.
 * Returns 0, or -1 for a key of no known form (including a prefix directly
 * followed by a suffix: no module). module gets the bare name. */
static int parse_key(const char *key, char *module, size_t cap, int *flattened, key_role *role,
                     lora_style *style) {
    size_t len = strlen(key);
    int found = -1;
    for (size_t i = 0; i < QI_ARRAY_LEN(key_suffixes); i++)
        if (ends_with(key, len, key_suffixes[i].suffix)) {
            found = (int)i;
            break;
        }
    if (found < 0) return -1;
    *role = key_suffixes[found].role;
    *style = key_suffixes[found].style;
    size_t mlen = len - strlen(key_suffixes[found].suffix);
    const char *m = key;
    if (strip_prefix(&m, &mlen, dotted_prefixes, QI_ARRAY_LEN(dotted_prefixes)) < 0) return -1;
    int flat = strip_prefix(&m, &mlen, flat_prefixes, QI_ARRAY_LEN(flat_prefixes));
    if (flat < 0) return -1;
    *flattened = flat;
    if (mlen == 0 || mlen + 1 > cap) return -1;
    memcpy(module, m, mlen);
    module[mlen] = 0;
    return 0;
}

/* ---- diffusers adapter metadata ------------------------------------------------- */

/* The peft LoraConfig diffusers stores in the safetensors metadata under
 * "lora_adapter_metadata" (keys bare or prefixed "transformer."). Sets
 * *have = 0 when the file has none. */
static qi_status read_adapter_config(const lora_file *f, int *have, double *alpha, double *rank,
                                     int *rslora, qi_error *err) {
    *have = 0;
    const char *meta = f->st->n_files > 0 ? f->st->files[0]->metadata_json : NULL;
    if (!meta) return QI_OK;
    char what[QI_PATH_MAX + 64];
    snprintf(what, sizeof what, "LoRA %s: __metadata__", f->path);
    cJSON *outer, *cfg;
    qi_status st = qi_json_parse(meta, strlen(meta), what, &outer, err);
    if (st) return st;
    const cJSON *blob = cJSON_GetObjectItemCaseSensitive(outer, "lora_adapter_metadata");
    if (!cJSON_IsString(blob)) {
        cJSON_Delete(outer);
        return QI_OK;
    }
    snprintf(what, sizeof what, "LoRA %s: metadata 'lora_adapter_metadata'", f->path);
    st = qi_json_parse(blob->valuestring, strlen(blob->valuestring), what, &cfg, err);
    cJSON_Delete(outer);
    if (st) return st;
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return qi_fail(err, QI_ERR_FORMAT,
                       "LoRA %s: metadata 'lora_adapter_metadata' is not a JSON object", f->path);
    }
    const char *prefixes[] = {"", "transformer."};
    const cJSON *a = NULL, *r = NULL, *rs = NULL, *ap = NULL, *rp = NULL;
    for (int i = 0; i < 2 && !(a && r); i++) {
        char k[64];
        snprintf(k, sizeof k, "%slora_alpha", prefixes[i]);
        a = cJSON_GetObjectItemCaseSensitive(cfg, k);
        snprintf(k, sizeof k, "%sr", prefixes[i]);
        r = cJSON_GetObjectItemCaseSensitive(cfg, k);
        snprintf(k, sizeof k, "%suse_rslora", prefixes[i]);
        rs = cJSON_GetObjectItemCaseSensitive(cfg, k);
        snprintf(k, sizeof k, "%salpha_pattern", prefixes[i]);
        ap = cJSON_GetObjectItemCaseSensitive(cfg, k);
        snprintf(k, sizeof k, "%srank_pattern", prefixes[i]);
        rp = cJSON_GetObjectItemCaseSensitive(cfg, k);
    }
    if (!cJSON_IsNumber(a) || !cJSON_IsNumber(r) || r->valuedouble <= 0) {
        st = qi_fail(err, QI_ERR_FORMAT,
                     "LoRA %s: metadata 'lora_adapter_metadata' lacks numeric lora_alpha and r > 0",
                     f->path);
    } else if ((cJSON_IsObject(ap) && ap->child) || (cJSON_IsObject(rp) && rp->child)) {
        st = qi_fail(err, QI_ERR_UNSUPPORTED,
                     "LoRA %s: per-module alpha_pattern/rank_pattern in the adapter metadata are "
                     "not supported", f->path);
    } else {
        *have = 1;
        *alpha = a->valuedouble;
        *rank = r->valuedouble;
        *rslora = cJSON_IsTrue(rs);
    }
    cJSON_Delete(cfg);
    return st;
}

/* ---- reading a file ------------------------------------------------------------------ */

static void free_file(lora_file *f) {
    for (int i = 0; i < f->n_modules; i++) free(f->modules[i].key);
    free(f->modules);
    free(f->path);
    qi_st_set_close(f->st);
}

static lora_module *find_or_add_module(lora_file *f, const char *key, int flattened, int *cap) {
    for (int i = 0; i < f->n_modules; i++)
        if (f->modules[i].flattened == flattened && strcmp(f->modules[i].key, key) == 0)
            return &f->modules[i];
    if (f->n_modules == *cap) {
        int ncap = *cap ? *cap * 2 : 64;
        lora_module *m = realloc(f->modules, (size_t)ncap * sizeof *m);
        if (!m) return NULL;
        f->modules = m;
        *cap = ncap;
    }
    lora_module *m = &f->modules[f->n_modules];
    memset(m, 0, sizeof *m);
    m->key = dup_str(key);
    if (!m->key) return NULL;
    m->flattened = flattened;
    f->n_modules++;
    return m;
}

static const char *role_name(key_role r) {
    return r == ROLE_DOWN ? "down (lora_down / lora_A)" : r == ROLE_UP ? "up (lora_up / lora_B)" : "alpha";
}

/* Collects the tensors of f->st into modules. */
static qi_status collect_modules(lora_file *f, qi_error *err) {
    int cap = 0, n_bad = 0;
    char bad[3][160];
    for (int i = 0; i < f->st->n_tensors; i++) {
        const qi_st_tensor *t = f->st->index[i];
        char key[512], module[512];
        int flattened;
        key_role role;
        lora_style style;
        remove_default_infix(t->name, key, sizeof key);
        if (parse_key(key, module, sizeof module, &flattened, &role, &style) != 0) {
            if (n_bad < 3) snprintf(bad[n_bad], sizeof bad[0], "%s", t->name);
            n_bad++;
            continue;
        }
        if (role == ROLE_SKIP) continue;
        lora_module *m = find_or_add_module(f, module, flattened, &cap);
        if (!m) return qi_fail(err, QI_ERR_NOMEM, "LoRA %s: out of memory", f->path);
        const qi_st_tensor **slot = role == ROLE_DOWN ? &m->down : role == ROLE_UP ? &m->up : &m->alpha;
        if (*slot)
            return qi_fail(err, QI_ERR_FORMAT,
                           "LoRA %s: module '%s' has two %s tensors ('%s' and '%s'); the file mixes "
                           "prefixes for the same weight", f->path, module, role_name(role),
                           (*slot)->name, t->name);
        *slot = t;
        if (style != STYLE_UNSET) {
            if (m->style != STYLE_UNSET && m->style != style)
                return qi_fail(err, QI_ERR_FORMAT,
                               "LoRA %s: module '%s' mixes kohya (lora_down/lora_up) and peft "
                               "(lora_A/lora_B) tensors", f->path, module);
            m->style = style;
        }
    }
    if (n_bad)
        return qi_fail(err, QI_ERR_FORMAT,
                       "LoRA %s: %d key(s) of no known LoRA form (expected <module>.lora_down/"
                       "lora_up/lora_A/lora_B.weight or .alpha): '%s'%s%s%s%s%s%s%s", f->path, n_bad,
                       bad[0], n_bad > 1 ? ", '" : "", n_bad > 1 ? bad[1] : "", n_bad > 1 ? "'" : "",
                       n_bad > 2 ? ", '" : "", n_bad > 2 ? bad[2] : "", n_bad > 2 ? "'" : "", n_bad > 3 ? ", ..." : "");
    if (f->n_modules == 0)
        return qi_fail(err, QI_ERR_FORMAT, "LoRA %s: no LoRA tensors in the file", f->path);
    return QI_OK;
}

static int64_t st_numel(const qi_st_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* A NaN/Inf in lora_up or lora_down would pass through the fuse (or the
 * run-time product) into every image: scanned once here, at open. */
static qi_status check_factors_finite(const lora_file *f, const lora_module *m, qi_error *err) {
    char label[4200];
    snprintf(label, sizeof label, "LoRA %s", f->path);
    qi_status st = qi_check_weight_finite(label, m->down->name, m->down->data, m->down->dtype,
                                          st_numel(m->down), NULL, err);
    if (st == QI_OK)
        st = qi_check_weight_finite(label, m->up->name, m->up->data, m->up->dtype, st_numel(m->up), NULL,
                                    err);
    return st;
}

/* Checks each module's pieces and works out its scale (lora.h). */
static qi_status check_modules(lora_file *f, qi_error *err) {
    int have_cfg = 0, rslora = 0;
    double cfg_alpha = 0, cfg_rank = 0;
    qi_status st = read_adapter_config(f, &have_cfg, &cfg_alpha, &cfg_rank, &rslora, err);
    if (st != QI_OK) return st;
    for (int i = 0; i < f->n_modules; i++) {
        lora_module *m = &f->modules[i];
        if (!m->down || !m->up)
            return qi_fail(err, QI_ERR_FORMAT, "LoRA %s: module '%s' has %s but no %s tensor",
                           f->path, m->key,
                           m->down ? "a down" : m->up ? "an up" : "only an alpha",
                           m->down ? "up" : "down");
        if (m->down->ndim != 2 || m->up->ndim != 2)
            return qi_fail(err, QI_ERR_UNSUPPORTED,
                           "LoRA %s: module '%s': only 2-D (Linear) LoRA matrices are supported, "
                           "found %d-D down and %d-D up", f->path, m->key, m->down->ndim, m->up->ndim);
        int64_t rank = m->down->shape[0];
        if (m->up->shape[1] != rank || rank <= 0)
            return qi_fail(err, QI_ERR_FORMAT,
                           "LoRA %s: module '%s': up [%lld, %lld] and down [%lld, %lld] disagree on "
                           "the rank", f->path, m->key, (long long)m->up->shape[0],
                           (long long)m->up->shape[1], (long long)m->down->shape[0],
                           (long long)m->down->shape[1]);
        float alpha = 0;
        if (m->alpha) {
            int64_t n = 1;
            for (int d = 0; d < m->alpha->ndim; d++) n *= m->alpha->shape[d];
            if (n != 1 || qi_to_f32(&alpha, m->alpha->data, m->alpha->dtype, 1) != 0)
                return qi_fail(err, QI_ERR_FORMAT,
                               "LoRA %s: '%s' must be one float (the module's alpha)", f->path,
                               m->alpha->name);
        }
        if (m->alpha && !isfinite(alpha))
            return qi_fail(err, QI_ERR_FORMAT,
                           "LoRA %s: '%s' is %s: the file is corrupt; download it again", f->path,
                           m->alpha->name, isnan(alpha) ? "NaN" : "infinite");
        if (m->style == STYLE_KOHYA)
            m->scale = m->alpha ? alpha / (float)rank : 1.0f;
        else if (have_cfg) /* peft: .alpha ignored, the adapter config decides */
            m->scale = (float)(rslora ? cfg_alpha / sqrt(cfg_rank) : cfg_alpha / cfg_rank);
        else
            m->scale = 1.0f;
        if (!isfinite(m->scale))
            return qi_fail(err, QI_ERR_FORMAT,
                           "LoRA %s: module '%s' gets a non-finite scale (%g) from %s: fix the "
                           "file's alpha or its 'lora_adapter_metadata' (lora_alpha, r)",
                           f->path, m->key, (double)m->scale,
                           m->style == STYLE_KOHYA ? "alpha / rank" : "the adapter metadata");
        st = check_factors_finite(f, m, err);
        if (st != QI_OK) return st;
    }
    return QI_OK;
}

qi_status qi_lora_set_add(qi_lora_set **set, const char *path, float strength, qi_error *err) {
    if (!set || !path) return qi_fail(err, QI_ERR_ARG, "qi_lora_set_add: set and path are required");
    if (!isfinite(strength))
        return qi_fail(err, QI_ERR_ARG, "LoRA %s: strength must be a finite number", path);
    qi_lora_set *s = *set;
    if (s && s->n_files >= QI_MAX_LORAS)
        return qi_fail(err, QI_ERR_ARG, "LoRA %s: a set holds at most %d LoRA files; remove one first", path,
                       QI_MAX_LORAS);
    struct stat sb; /* the size, before anything is mapped or read */
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size > QI_LORA_MAX_BYTES)
        return qi_fail(err, QI_ERR_FORMAT, "LoRA %s: %.1f GiB; a LoRA file may be at most %llu GiB (is it a whole "
                       "model rather than a LoRA?)", path, (double)sb.st_size / (1 << 30),
                       (unsigned long long)(QI_LORA_MAX_BYTES >> 30));
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return qi_fail(err, QI_ERR_NOMEM, "LoRA %s: out of memory", path);
    }
    lora_file f = {0};
    f.strength = strength;
    f.path = dup_str(path);
    qi_status st = f.path ? QI_OK : qi_fail(err, QI_ERR_NOMEM, "LoRA %s: out of memory", path);
    if (st == QI_OK) st = qi_st_set_open_file(path, &f.st, err);
    if (st == QI_OK) st = collect_modules(&f, err);
    if (st == QI_OK) st = check_modules(&f, err);
    if (st == QI_OK) {
        lora_file *files = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *files);
        if (!files) st = qi_fail(err, QI_ERR_NOMEM, "LoRA %s: out of memory", path);
        else {
            s->files = files;
            s->files[s->n_files++] = f;
        }
    }
    if (st != QI_OK) {
        free_file(&f);
        if (!*set) free(s);
        return st;
    }
    *set = s;
    return QI_OK;
}

void qi_lora_set_free(qi_lora_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n_files; i++) free_file(&set->files[i]);
    free(set->files);
    free(set);
}

int qi_lora_set_file_count(const qi_lora_set *set) { return set ? set->n_files : 0; }

void qi_lora_set_truncate(qi_lora_set *set, int n_files) {
    if (!set || n_files < 0) return;
    while (set->n_files > n_files) free_file(&set->files[--set->n_files]);
}

int qi_lora_set_module_count(const qi_lora_set *set) {
    int n = 0;
    for (int i = 0; set && i < set->n_files; i++) n += set->files[i].n_modules;
    return n;
}

int qi_lora_set_file_module_count(const qi_lora_set *set, int file) {
    return set && file >= 0 && file < set->n_files ? set->files[file].n_modules : 0;
}

qi_status qi_lora_set_module_info(const qi_lora_set *set, int file, int k, qi_lora_module_info *out,
                                  qi_error *err) {
    if (k < 0 || k >= qi_lora_set_file_module_count(set, file))
        return qi_fail(err, QI_ERR_ARG, "LoRA: file %d has no module %d", file, k);
    const lora_module *m = &set->files[file].modules[k];
    memset(out, 0, sizeof *out);
    out->module = m->key;
    out->down_key = m->down->name;
    out->flattened = m->flattened;
    out->peft = m->style == STYLE_PEFT;
    out->has_alpha = m->alpha != NULL;
    if (m->alpha) qi_to_f32(&out->alpha, m->alpha->data, m->alpha->dtype, 1); /* one float: checked at add */
    out->rank = m->down->shape[0];
    out->out_dim = m->up->shape[0];
    out->in_dim = m->down->shape[1];
    out->scale = m->scale;
    return QI_OK;
}

/* ---- binding to the model's weight names --------------------------------------------- */

/* A candidate target: "X.weight" seen as module X, dotted and flattened. */
typedef struct candidate {
    const char *weight_name;
    char *dotted;    /* X */
    char *flat;      /* X with '.' → '_' */
} candidate;

static int cmp_dotted(const void *a, const void *b) {
    return strcmp(((const candidate *)a)->dotted, ((const candidate *)b)->dotted);
}
static int cmp_flat(const void *a, const void *b) {
    return strcmp(((const candidate *)a)->flat, ((const candidate *)b)->flat);
}

/* Levenshtein distance, for "did you mean" lists. */
static int edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    int *row = malloc((m + 1) * sizeof *row);
    if (!row) return 1 << 20;
    for (size_t j = 0; j <= m; j++) row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    int d = row[m];
    free(row);
    return d;
}

/* Writes the two candidates nearest to `key` (in its own spelling) into out. */
static void nearest_names(const char *key, int flattened, const candidate *c, int n, char *out,
                          size_t cap) {
    int best[2] = {-1, -1}, dist[2] = {1 << 30, 1 << 30};
    for (int i = 0; i < n; i++) {
        int d = edit_distance(key, flattened ? c[i].flat : c[i].dotted);
        if (d < dist[0]) {
            best[1] = best[0], dist[1] = dist[0];
            best[0] = i, dist[0] = d;
        } else if (d < dist[1]) {
            best[1] = i, dist[1] = d;
        }
    }
    snprintf(out, cap, "%s%s%s", best[0] >= 0 ? c[best[0]].dotted : "none",
             best[1] >= 0 ? ", " : "", best[1] >= 0 ? c[best[1]].dotted : "");
}

static int cmp_bound(const void *a, const void *b) {
    const bound_module *x = a, *y = b;
    int c = strcmp(x->target, y->target);
    if (c) return c;
    return (x->order > y->order) - (x->order < y->order);
}

static const char *module_key_name(const lora_module *m) { return m->down->name; }

void qi_lora_binding_free(qi_lora_binding *b) {
    if (!b) return;
    free(b->items);
    free(b->names);
    free(b);
}

/* Fills cands from the ".weight" names: module X dotted and flattened. */
static int make_candidates(const char *const *weight_names, int n_names, candidate *cands) {
    int n = 0;
    for (int i = 0; i < n_names; i++) {
        size_t len = strlen(weight_names[i]);
        if (!ends_with(weight_names[i], len, ".weight")) continue;
        candidate *c = &cands[n];
        c->weight_name = weight_names[i];
        c->dotted = malloc(len - 6);
        c->flat = malloc(len - 6);
        if (!c->dotted || !c->flat) {
            free(c->dotted);
            free(c->flat);
            return -1;
        }
        memcpy(c->dotted, weight_names[i], len - 7);
        c->dotted[len - 7] = 0;
        for (size_t k = 0; k < len - 6; k++) c->flat[k] = c->dotted[k] == '.' ? '_' : c->dotted[k];
        n++;
    }
    return n;
}

/* The candidate a module names, or NULL; *ambiguous when a flattened key fits
 * two real names. */
static const candidate *resolve(const lora_module *m, const candidate *cands,
                                const candidate *by_flat, int n, int *ambiguous) {
    candidate probe = {.dotted = m->key, .flat = m->key};
    *ambiguous = 0;
    if (!m->flattened) return bsearch(&probe, cands, (size_t)n, sizeof *cands, cmp_dotted);
    const candidate *hit = bsearch(&probe, by_flat, (size_t)n, sizeof *by_flat, cmp_flat);
    if (hit) {
        size_t k = (size_t)(hit - by_flat);
        *ambiguous = (k > 0 && strcmp(by_flat[k - 1].flat, hit->flat) == 0) ||
                     (k + 1 < (size_t)n && strcmp(by_flat[k + 1].flat, hit->flat) == 0);
    }
    return hit;
}

qi_status qi_lora_bind(const qi_lora_set *set, const char *const *weight_names, int n_names,
                       qi_lora_binding **out, qi_error *err) {
    *out = NULL;
    int total = qi_lora_set_module_count(set);
    size_t cap = (size_t)(n_names > 0 ? n_names : 1);
    candidate *cands = calloc(cap, sizeof *cands), *by_flat = calloc(cap, sizeof *by_flat);
    qi_lora_binding *b = calloc(1, sizeof *b);
    if (b) b->items = calloc((size_t)(total > 0 ? total : 1), sizeof *b->items);
    int n = (cands && by_flat && b && b->items) ? make_candidates(weight_names, n_names, cands) : -1;
    qi_status st = QI_OK;
    if (n < 0) {
        for (size_t i = 0; cands && i < cap; i++) free(cands[i].dotted), free(cands[i].flat);
        free(cands);
        free(by_flat);
        qi_lora_binding_free(b);
        return qi_fail(err, QI_ERR_NOMEM, "LoRA: out of memory");
    }
    qsort(cands, (size_t)n, sizeof *cands, cmp_dotted);
    memcpy(by_flat, cands, (size_t)n * sizeof *cands);
    qsort(by_flat, (size_t)n, sizeof *by_flat, cmp_flat);

    /* Resolve every module; remember the first few that match nothing. */
    int n_missing = 0;
    char msg[900] = "";
    size_t off = 0, names_len = 0;
    const char *first_path = NULL;
    for (int fi = 0; set && fi < set->n_files && st == QI_OK; fi++) {
        const lora_file *f = &set->files[fi];
        for (int mi = 0; mi < f->n_modules; mi++) {
            const lora_module *m = &f->modules[mi];
            int ambiguous;
            const candidate *hit = resolve(m, cands, by_flat, n, &ambiguous);
            if (ambiguous) {
                st = qi_fail(err, QI_ERR_FORMAT,
                             "LoRA %s: flattened key '%s' fits several weights (e.g. %s); "
                             "rewrite the file with dotted names", f->path, module_key_name(m),
                             hit->dotted);
                break;
            }
            if (hit) {
                bound_module *bm = &b->items[b->n++];
                bm->target = hit->weight_name; /* re-pointed into b->names below */
                bm->module = m;
                bm->file = f;
                bm->order = (fi << 20) + mi;
                names_len += strlen(hit->weight_name) + 1;
                continue;
            }
            if (n_missing < 3 && off < sizeof msg) {
                char near[256];
                nearest_names(m->key, m->flattened, cands, n, near, sizeof near);
                off += (size_t)snprintf(msg + off, sizeof msg - off, "%s'%s' (nearest: %s)",
                                        n_missing ? "; " : "", module_key_name(m), near);
            }
            if (!first_path) first_path = f->path;
            n_missing++;
        }
    }
    if (st == QI_OK && n_missing)
        st = qi_fail(err, QI_ERR_FORMAT,
                     "LoRA %s: %d of %d modules match no weight of the model: %s%s", first_path,
                     n_missing, total, msg, n_missing > 3 ? "; ..." : "");
    /* The caller's name strings need not outlive the binding: copy them. */
    if (st == QI_OK) {
        b->names = malloc(names_len ? names_len : 1);
        if (!b->names) st = qi_fail(err, QI_ERR_NOMEM, "LoRA: out of memory");
        size_t pos = 0;
        for (int i = 0; st == QI_OK && i < b->n; i++) {
            size_t len = strlen(b->items[i].target) + 1;
            memcpy(b->names + pos, b->items[i].target, len);
            b->items[i].target = b->names + pos;
            pos += len;
        }
    }
    for (int i = 0; i < n; i++) {
        free(cands[i].dotted);
        free(cands[i].flat);
    }
    free(cands);
    free(by_flat);
    if (st != QI_OK) {
        qi_lora_binding_free(b);
        return st;
    }
    qsort(b->items, (size_t)b->n, sizeof *b->items, cmp_bound);
    *out = b;
    return QI_OK;
}

/* First index in b->items whose target is weight_name, or -1. */
static int first_bound(const qi_lora_binding *b, const char *weight_name) {
    int lo = 0, hi = b->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (strcmp(b->items[mid].target, weight_name) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < b->n && strcmp(b->items[lo].target, weight_name) == 0 ? lo : -1;
}

int qi_lora_binding_targets(const qi_lora_binding *b, const char *weight_name) {
    return b && first_bound(b, weight_name) >= 0;
}

const char *qi_lora_binding_target_of(const qi_lora_binding *b, int file, int k) {
    for (int i = 0; b && i < b->n; i++)
        if (b->items[i].order == (file << 20) + k) return b->items[i].target;
    return NULL;
}

/* ---- fusing ---------------------------------------------------------------------------- */

/* A LoRA matrix as float32 (the file may store bf16/f16). */
static float *matrix_f32(const qi_st_tensor *t) {
    size_t n = (size_t)(t->shape[0] * t->shape[1]);
    float *f = malloc(n * sizeof *f);
    if (f && qi_to_f32(f, t->data, t->dtype, n) != 0) {
        free(f);
        return NULL;
    }
    return f;
}

/* The delta of bound module i must be [out_dim, in_dim]. */
static qi_status check_delta_shape(const bound_module *bm, const char *weight_name, int64_t out_dim,
                                   int64_t in_dim, qi_error *err) {
    const lora_module *m = bm->module;
    int64_t rank = m->down->shape[0];
    if (m->up->shape[0] == out_dim && m->down->shape[1] == in_dim) return QI_OK;
    return qi_fail(err, QI_ERR_FORMAT,
                   "LoRA %s: '%s' gives a delta up [%lld, %lld] @ down [%lld, %lld] = "
                   "[%lld, %lld], but weight %s is [%lld, %lld]", bm->file->path,
                   module_key_name(m), (long long)m->up->shape[0], (long long)rank,
                   (long long)rank, (long long)m->down->shape[1],
                   (long long)m->up->shape[0], (long long)m->down->shape[1], weight_name,
                   (long long)out_dim, (long long)in_dim);
}

int qi_lora_binding_count(const qi_lora_binding *b, const char *weight_name) {
    int i = b ? first_bound(b, weight_name) : -1, n = 0;
    for (; i >= 0 && i + n < b->n && strcmp(b->items[i + n].target, weight_name) == 0;) n++;
    return n;
}

qi_status qi_lora_binding_factor(const qi_lora_binding *b, const char *weight_name, int k, int64_t out_dim,
                                 int64_t in_dim, qi_lora_factor *out, qi_error *err) {
    if (k < 0 || k >= qi_lora_binding_count(b, weight_name))
        return qi_fail(err, QI_ERR_ARG, "LoRA: weight %s has no module %d", weight_name, k);
    const bound_module *bm = &b->items[first_bound(b, weight_name) + k];
    qi_status st = check_delta_shape(bm, weight_name, out_dim, in_dim, err);
    if (st) return st;
    const lora_module *m = bm->module;
    out->rank = m->down->shape[0];
    out->down_dtype = m->down->dtype;
    out->down = m->down->data;
    out->up_dtype = m->up->dtype;
    out->up = m->up->data;
    out->coef = bm->file->strength * m->scale; /* the fuse's coefficient, same rounding */
    return QI_OK;
}

qi_status qi_lora_binding_fuse(const qi_lora_binding *b, const char *weight_name, float *w,
                               int64_t out_dim, int64_t in_dim, qi_error *err) {
    if (!b) return QI_OK;
    int i = first_bound(b, weight_name);
    for (; i >= 0 && i < b->n && strcmp(b->items[i].target, weight_name) == 0; i++) {
        const lora_module *m = b->items[i].module;
        const lora_file *f = b->items[i].file;
        int64_t rank = m->down->shape[0];
        qi_status st = check_delta_shape(&b->items[i], weight_name, out_dim, in_dim, err);
        if (st) return st;
        float *up = matrix_f32(m->up), *down = matrix_f32(m->down);
        if (!up || !down) {
            free(up);
            free(down);
            return qi_fail(err, QI_ERR_FORMAT, "LoRA %s: '%s': cannot read %s matrices as floats",
                           f->path, module_key_name(m), qi_dtype_name(m->up->dtype));
        }
        /* w += (strength·scale) · up[out, r] @ down[r, in], float32 throughout */
        float coef = f->strength * m->scale;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out_dim, (int)in_dim, (int)rank,
                    coef, up, (int)rank, down, (int)in_dim, 1.0f, w, (int)in_dim);
        free(up);
        free(down);
    }
    return QI_OK;
}

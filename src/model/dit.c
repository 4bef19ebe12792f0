/*
 * dit.c — the Qwen-Image MMDiT: config, weights (with LoRA fusion) and the
 * forward pass, written once against the backend op table.
 *
 * One call (spec denoiser.md §1.3):
 *
 *     temb  = timestep_embed(t)                         [B, D]
 *     mods  = every block's img_mod/txt_mod and norm_out's Linear of silu(temb),
 *             computed once before the block loop       [(2·layers + 1)·B, 6D]
 *     img   = img_in(x)                                 [B, L_img, D]
 *     txt   = txt_in(rms_norm(ctx))                     [B, L_txt, D]
 *     for each block: joint attention (text first), then the two MLPs
 *     out   = proj_out(LN(img)·(1 + scale) + shift)     [B, L_img, out·p²]
 *
 * Sequence parallel (qi_dit_forward_sp): the same code on one rank's shard of
 * the image tokens; only the joint attention differs (attend_sharded: the
 * Ulysses exchange of parallel/ulysses.h around the same RoPE + attention).
 *
 * A call is split in two (qi_dit_call): everything that copies host data to
 * the device (the timestep sinusoid, the joint key mask; the RoPE tables once
 * per shape) happens before `call_run`, which is pure ops on arena addresses
 * that repeat on every run, so the pipeline can record it as a graph once and
 * replay it per step. qi_dit_forward is that split run eagerly.
 *
 * A call may also be given the timesteps of a whole generation at once
 * (qi_dit_call_set_schedule): the timestep embedding and every modulation
 * Linear then run once over steps × B rows (the 2·layers + 1 weight matrices
 * are read once per generation instead of once per step), into a buffer
 * [slot, step, B, 6D]; selecting a step gathers its rows into the fixed
 * buffer the run reads, so a recorded run still sees the same addresses.
 *
 * This file owns the weights' layout (typed structs bound by their diffusers
 * names), the RoPE tables (built on the host, cached per shape) and the
 * order of ops. It does not own the sampling loop, CFG or the scheduler.
 * A call's inputs, schedule mode, qi_dit_forward and the Edit entry points
 * (condition segments, zero_cond_t) are in dit_call.c; the layout both files
 * read is dit_internal.h.
 */
#include "model/dit_internal.h"

const qi_dit_config *qi_dit_get_config(const qi_dit *d) { return &d->cfg; }

/* ---- weights ------------------------------------------------------------------- */

typedef struct spec_list {
    weight_spec *items;
    int n, cap;
} spec_list;

static void add_spec(spec_list *l, qi_tensor *dst, int ndim, int64_t d0, int64_t d1,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void add_spec(spec_list *l, qi_tensor *dst, int ndim, int64_t d0, int64_t d1,
                     const char *fmt, ...) {
    assert(l->n < l->cap); /* capacity: SPECS_TOP + SPECS_PER_BLOCK · num_layers */
    weight_spec *s = &l->items[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->dst = dst;
}

/* `<name>.weight` [out, in] and `<name>.bias` [out]. */
static void add_linear(spec_list *l, dit_linear *lin, int64_t out, int64_t in, const char *name) {
    add_spec(l, &lin->w, 2, out, in, "%s.weight", name);
    add_spec(l, &lin->b, 1, out, 0, "%s.bias", name);
}

#define SPECS_TOP 13
#define SPECS_PER_BLOCK 32

/* The whole inventory of spec §1.2 for this config. */
static void build_specs(qi_dit *d, spec_list *l) {
    const qi_dit_config *c = &d->cfg;
    int64_t D = c->inner_dim, F = c->mlp_dim, Dh = c->head_dim;
    int64_t out_dim = (int64_t)c->out_channels * c->patch_size * c->patch_size;
    add_linear(l, &d->img_in, D, c->in_channels, "img_in");
    add_spec(l, &d->txt_norm, 1, c->joint_dim, 0, "txt_norm.weight");
    add_linear(l, &d->txt_in, D, c->joint_dim, "txt_in");
    add_linear(l, &d->time_1, D, DIT_TIME_CHANNELS, "time_text_embed.timestep_embedder.linear_1");
    add_linear(l, &d->time_2, D, D, "time_text_embed.timestep_embedder.linear_2");
    add_linear(l, &d->norm_out, 2 * D, D, "norm_out.linear");
    add_linear(l, &d->proj_out, out_dim, D, "proj_out");
    for (int i = 0; i < c->num_layers; i++) {
        dit_block *b = &d->blocks[i];
        char p[64], n[128];
        snprintf(p, sizeof p, "transformer_blocks.%d", i);
#define LIN(field, out, in, suffix)                        \
    snprintf(n, sizeof n, "%s.%s", p, suffix);             \
    add_linear(l, &b->field, out, in, n)
        LIN(img_mod, 6 * D, D, "img_mod.1");
        LIN(txt_mod, 6 * D, D, "txt_mod.1");
        LIN(to_q, D, D, "attn.to_q");
        LIN(to_k, D, D, "attn.to_k");
        LIN(to_v, D, D, "attn.to_v");
        LIN(add_q, D, D, "attn.add_q_proj");
        LIN(add_k, D, D, "attn.add_k_proj");
        LIN(add_v, D, D, "attn.add_v_proj");
        LIN(to_out, D, D, "attn.to_out.0");
        LIN(to_add_out, D, D, "attn.to_add_out");
        LIN(img_mlp_up, F, D, "img_mlp.net.0.proj");
        LIN(img_mlp_down, D, F, "img_mlp.net.2");
        LIN(txt_mlp_up, F, D, "txt_mlp.net.0.proj");
        LIN(txt_mlp_down, D, F, "txt_mlp.net.2");
#undef LIN
        add_spec(l, &b->norm_q, 1, Dh, 0, "%s.attn.norm_q.weight", p);
        add_spec(l, &b->norm_k, 1, Dh, 0, "%s.attn.norm_k.weight", p);
        add_spec(l, &b->norm_added_q, 1, Dh, 0, "%s.attn.norm_added_q.weight", p);
        add_spec(l, &b->norm_added_k, 1, Dh, 0, "%s.attn.norm_added_k.weight", p);
    }
}

qi_status qi_dit_linear_weights(const qi_dit_config *c, qi_dit_linear_weight **out, int *n, qi_error *err) {
    *out = NULL;
    *n = 0;
    /* build_specs on a weightless qi_dit: the names and shapes only */
    int cap = SPECS_TOP + SPECS_PER_BLOCK * c->num_layers;
    qi_dit *d = calloc(1, sizeof *d);
    if (d) d->cfg = *c, d->blocks = calloc((size_t)c->num_layers, sizeof *d->blocks);
    weight_spec *specs = calloc((size_t)cap, sizeof *specs);
    qi_dit_linear_weight *w = calloc((size_t)cap, sizeof *w);
    if (!d || !d->blocks || !specs || !w) {
        if (d) free(d->blocks);
        free(d), free(specs), free(w);
        return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    }
    spec_list l = {specs, 0, cap};
    build_specs(d, &l);
    for (int i = 0; i < l.n; i++)
        if (specs[i].ndim == 2) {
            snprintf(w[*n].name, sizeof w[*n].name, "%s", specs[i].name);
            w[*n].out_dim = specs[i].shape[0];
            w[(*n)++].in_dim = specs[i].shape[1];
        }
    free(d->blocks);
    free(d);
    free(specs);
    *out = w;
    return QI_OK;
}

/* Whether a LoRA module on a weight stored as `stored` is fused into a float32
 * copy (else it runs beside the weight, qi_dit_set_loras). Auto: fused only
 * for float element weights (f32/f16/bf16): a quantised or fp8 weight would
 * grow to float32 (4-8x its bytes) and leave its file type; a float one keeps
 * its speed per step (no low-rank GEMMs) — README "LoRA: fused or at run
 * time" has the measurements. */
static int lora_fuses(qi_lora_mode mode, qi_dtype stored) {
    if (mode == QI_LORA_FUSE) return 1;
    if (mode == QI_LORA_RUNTIME) return 0;
    return !qi_dtype_is_block(stored) && stored != QI_F8_E4M3 && stored != QI_F8_E5M2;
}

/* ---- streaming -------------------------------------------------------------------- */

typedef qi_status (*make_weight_fn)(qi_backend *be, qi_tensor *w, qi_dtype dt, int ndim, const int64_t *ne,
                                    const void *host, const qi_weight_scale *scale, qi_error *err);

/* Whether a spec's weight is streamed (a host weight) under d->res. */
static int spec_streamed(const qi_dit *d, const weight_spec *s) {
    if (!d->block_streamed) return 0;
    int b;
    qi_dit_unit u = qi_dit_weight_unit(s->name, s->ndim, &b);
    if (u == QI_DIT_UNIT_MOD) return !d->res.mod_resident;
    return u == QI_DIT_UNIT_BLOCK && b < d->cfg.num_layers && d->block_streamed[b];
}

/* A block's streamed matrices: its 12 attention and MLP ones, or (mod) its 2
 * modulation ones, in the order the streamer stages them. */
static int block_matrices(dit_block *b, int mod, qi_tensor **w) {
    if (mod) {
        w[0] = &b->img_mod.w;
        w[1] = &b->txt_mod.w;
        return 2;
    }
    dit_linear *lin[12] = {&b->to_q, &b->to_k, &b->to_v, &b->add_q, &b->add_k, &b->add_v,
                           &b->to_out, &b->to_add_out, &b->img_mlp_up, &b->img_mlp_down,
                           &b->txt_mlp_up, &b->txt_mlp_down};
    for (int i = 0; i < 12; i++) w[i] = &lin[i]->w;
    return 12;
}

/* Which blocks stream: L - K of them spread evenly (block i streams when
 * floor((i+1)·S/L) steps), so each copy overlaps resident blocks' ops. */
static qi_status stream_setup(qi_dit *d, const qi_dit_residency *res, qi_error *err) {
    int L = d->cfg.num_layers;
    int k = res ? res->resident_blocks : L;
    d->res.resident_blocks = k < 0 ? 0 : k > L ? L : k;
    d->res.mod_resident = res ? res->mod_resident : 1;
    if (d->res.resident_blocks == L && d->res.mod_resident) return QI_OK;
    int S = L - d->res.resident_blocks;
    d->block_streamed = calloc((size_t)(L > 0 ? L : 1), 1); /* L >= 1: checked with the config */
    if (!d->block_streamed) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    for (int i = 0; i < L; i++) d->block_streamed[i] = (int64_t)(i + 1) * S / L > (int64_t)i * S / L;
    return qi_wstream_new(d->be, 2 * L, &d->stream, err);
}

/* After loading: every streamed unit registered, the slots made. */
static qi_status stream_units(qi_dit *d, qi_error *err) {
    if (!d->stream) return QI_OK;
    int L = d->cfg.num_layers;
    for (int u = 0; u < 2 * L; u++) {
        if (u < L ? !d->block_streamed[u] : d->res.mod_resident) continue;
        qi_tensor *w[12];
        int n = block_matrices(&d->blocks[u % L], u >= L, w);
        qi_wstream_set_unit(d->stream, u, w, n);
    }
    return qi_wstream_alloc(d->stream, err);
}

/* The streamed unit taken after u (-1: none): after a modulation unit the
 * next one, then the first streamed block (the modulation pass leads into
 * a call's blocks); after a block the next streamed one, wrapping round to
 * the first (the next call's). */
static int next_unit(const qi_dit *d, int u) {
    int L = d->cfg.num_layers;
    if (u >= L)
        for (int v = u + 1; v < 2 * L; v++)
            if (qi_wstream_streams(d->stream, v)) return v;
    for (int k = 1; k <= L; k++) {
        int v = u >= L ? k - 1 : (u + k) % L;
        if (qi_wstream_streams(d->stream, v)) return v;
    }
    return -1;
}

/* Block i as its ops should read it: a copy whose matrices are views into
 * the slot when it streams. */
qi_status dit_stream_block(qi_dit *d, int i, dit_block *out, qi_error *err) {
    *out = d->blocks[i];
    if (!qi_wstream_streams(d->stream, i)) return QI_OK;
    const qi_tensor *v;
    qi_status st = qi_wstream_take(d->stream, i, next_unit(d, i), &v, err);
    if (st != QI_OK) return st;
    qi_tensor *w[12];
    block_matrices(out, 0, w);
    for (int k = 0; k < 12; k++) *w[k] = v[k];
    return QI_OK;
}

/* Block i's two modulation Linears as their ops should read them. */
qi_status dit_mod_linears(qi_dit *d, int i, dit_linear *img, dit_linear *txt, qi_error *err) {
    *img = d->blocks[i].img_mod;
    *txt = d->blocks[i].txt_mod;
    int u = d->cfg.num_layers + i;
    if (!qi_wstream_streams(d->stream, u)) return QI_OK;
    const qi_tensor *v;
    qi_status st = qi_wstream_take(d->stream, u, next_unit(d, u), &v, err);
    if (st != QI_OK) return st;
    img->w = v[0];
    txt->w = v[1];
    return QI_OK;
}

int qi_dit_streamed_blocks(const qi_dit *d) {
    return d->block_streamed ? d->cfg.num_layers - d->res.resident_blocks : 0;
}
int qi_dit_streams(const qi_dit *d) { return d->stream != NULL; }
uint64_t qi_dit_staged_bytes(const qi_dit *d) { return qi_wstream_staged_bytes(d->stream); }

/* Makes one backend weight: straight from the mapping, or — when a LoRA
 * touches it — a float32 copy with the deltas added (spec §4.5: the fused
 * weight stays float32; rounding it to bf16 already costs ~7e-4). */
static qi_status load_weight(qi_dit *d, const weight_spec *s, const qi_lora_binding *lora,
                             qi_error *err) {
    qi_source_tensor t;
    qi_status st = qi_source_get(d->src, s->name, s->ndim, s->shape, &t, err);
    if (st != QI_OK) return st;
    ((weight_spec *)s)->stored = t.dtype;
    make_weight_fn make = spec_streamed(d, s) ? d->be->ops->weight_host : d->be->ops->weight;
    if (!qi_lora_binding_targets(lora, s->name) || !lora_fuses(d->lora_mode, t.dtype)) {
        qi_weight_scale sc = qi_source_tensor_scale(&t);
        return make(d->be, s->dst, t.dtype, s->ndim, s->shape, t.data, &sc, err);
    }

    size_t n = (size_t)(s->shape[0] * s->shape[1]);
    float *w = malloc(n * sizeof *w);
    if (!w)
        return qi_fail(err, QI_ERR_NOMEM, "transformer: no memory for the float32 LoRA-fused %s",
                       s->name);
    st = qi_source_tensor_to_f32(&t, w, err); /* dequantised and scaled: the weight the file means */
    if (st == QI_OK) st = qi_lora_binding_fuse(lora, s->name, w, s->shape[0], s->shape[1], err);
    if (st == QI_OK) st = make(d->be, s->dst, QI_F32, 2, s->shape, w, NULL, err);
    if (st == QI_OK) {
        d->n_fused_lora++;
        ((weight_spec *)s)->lora_fused = 1;
    }
    if (st == QI_OK && s->dst->data == (void *)w) { /* zero-copy backend: keep the buffer */
        d->fused[d->n_fused++] = w;
        return QI_OK;
    }
    free(w);
    return st;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The checkpoint must hold nothing the config does not explain (e.g. more
 * blocks than num_layers, or a variant's extra tensors). */
static qi_status check_no_extra_tensors(const qi_dit *d, qi_error *err) {
    const char **names = malloc((size_t)d->n_specs * sizeof *names);
    if (!names) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    for (int i = 0; i < d->n_specs; i++) names[i] = d->specs[i].name;
    qsort(names, (size_t)d->n_specs, sizeof *names, cmp_str);
    int extra = 0;
    const char *first = NULL;
    int n_tensors = qi_source_tensor_count(d->src);
    for (int i = 0; i < n_tensors; i++) {
        qi_source_tensor t;
        qi_source_tensor_at(d->src, i, &t);
        const char *key = t.name;
        if (!bsearch(&key, names, (size_t)d->n_specs, sizeof *names, cmp_str)) {
            if (!first) first = key;
            extra++;
        }
    }
    free(names);
    if (extra)
        return qi_fail(err, QI_ERR_FORMAT,
                       "%s: %d weight tensor(s) that %s does not account for (first: '%s'); "
                       "the config (num_layers=%d) and the weights disagree", qi_source_path(d->src),
                       extra, qi_source_config(d->src, NULL) ? "config.json" : "the derived config",
                       first, d->cfg.num_layers);
    return QI_OK;
}

/* The Linear whose `w` a 2-D spec fills (dit_linear starts with w). */
static dit_linear *spec_linear(const weight_spec *s) {
    return (dit_linear *)((char *)s->dst - offsetof(dit_linear, w));
}

static void free_terms(qi_backend *be, dit_lora_term *terms, int n) {
    for (int i = 0; i < n; i++) {
        if (terms[i].down.data) be->ops->weight_free(be, &terms[i].down);
        if (terms[i].up.data) be->ops->weight_free(be, &terms[i].up);
    }
    free(terms);
}

/* The binding of `loras` to every Linear weight name (NULL set: NULL binding). */
static qi_status bind_linears(const qi_dit *d, const qi_lora_set *loras, qi_lora_binding **out, qi_error *err) {
    *out = NULL;
    if (!loras) return QI_OK;
    const char **names = malloc((size_t)d->n_specs * sizeof *names);
    if (!names) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    int n = 0;
    for (int i = 0; i < d->n_specs; i++)
        if (d->specs[i].ndim == 2) names[n++] = d->specs[i].name;
    qi_status st = qi_lora_bind(loras, names, n, out, err);
    free(names);
    return st;
}

/* The runtime terms of every bound module on a weight not fused: the
 * factors become backend weights as the file stores them. */
static qi_status make_terms(const qi_dit *d, const qi_lora_binding *lora, dit_lora_term **out, int *n_out,
                            qi_error *err) {
    int n = 0;
    for (int i = 0; i < d->n_specs; i++)
        if (d->specs[i].ndim == 2 && !d->specs[i].lora_fused) n += qi_lora_binding_count(lora, d->specs[i].name);
    *out = NULL;
    *n_out = 0;
    if (!n) return QI_OK;
    dit_lora_term *terms = calloc((size_t)n, sizeof *terms);
    if (!terms) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (LoRA terms)");
    qi_status st = QI_OK;
    int k = 0;
    for (int i = 0; st == QI_OK && i < d->n_specs; i++) {
        const weight_spec *s = &d->specs[i];
        int m = s->ndim == 2 && !s->lora_fused ? qi_lora_binding_count(lora, s->name) : 0;
        for (int j = 0; st == QI_OK && j < m; j++, k++) {
            qi_lora_factor f;
            st = qi_lora_binding_factor(lora, s->name, j, s->shape[0], s->shape[1], &f, err);
            int64_t dn[2] = {f.rank, s->shape[1]}, up[2] = {s->shape[0], f.rank};
            if (st == QI_OK) st = d->be->ops->weight(d->be, &terms[k].down, f.down_dtype, 2, dn, f.down, NULL, err);
            if (st == QI_OK) st = d->be->ops->weight(d->be, &terms[k].up, f.up_dtype, 2, up, f.up, NULL, err);
            terms[k].coef = f.coef;
            terms[k].spec = i;
        }
    }
    if (st != QI_OK) {
        free_terms(d->be, terms, n);
        return qi_fail_ctx(err, st, "transformer: the LoRA set was not applied");
    }
    *out = terms;
    *n_out = n;
    return QI_OK;
}

/* Replaces the runtime terms with those of `lora` (weights with a fused
 * LoRA keep it) and points every Linear at its run of them. */
static qi_status install_terms(qi_dit *d, const qi_lora_binding *lora, qi_error *err) {
    dit_lora_term *terms;
    int n;
    qi_status st = make_terms(d, lora, &terms, &n, err);
    if (st != QI_OK) return st;
    free_terms(d->be, d->terms, d->n_terms); /* the previous set's */
    d->terms = terms;
    d->n_terms = n;
    for (int i = 0; i < d->n_specs; i++)
        if (d->specs[i].ndim == 2) {
            spec_linear(&d->specs[i])->lora = NULL;
            spec_linear(&d->specs[i])->n_lora = 0;
        }
    for (int k = 0; k < n; k++) { /* terms of one Linear are consecutive */
        dit_linear *lin = spec_linear(&d->specs[terms[k].spec]);
        if (!lin->lora) lin->lora = &terms[k];
        lin->n_lora++;
    }
    return QI_OK;
}

qi_status qi_dit_set_loras(qi_dit *d, const qi_lora_set *loras, qi_error *err) {
    qi_lora_binding *lora = NULL;
    qi_status st = bind_linears(d, loras, &lora, err);
    for (int i = 0; st == QI_OK && i < d->n_specs; i++) {
        const weight_spec *s = &d->specs[i];
        if (s->lora_fused || (qi_lora_binding_targets(lora, s->name) && lora_fuses(d->lora_mode, s->stored)))
            st = qi_fail(err, QI_ERR_UNSUPPORTED, "transformer: %s %s a fused LoRA; reload the transformer to "
                         "change its LoRA set", s->name, s->lora_fused ? "holds" : "would take");
    }
    if (st == QI_OK) st = install_terms(d, lora, err);
    qi_lora_binding_free(lora);
    return st;
}

int qi_dit_lora_terms(const qi_dit *d) { return d->n_terms; }
int qi_dit_lora_fused(const qi_dit *d) { return d->n_fused_lora; }

qi_status qi_dit_load(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_dit **out,
                      qi_error *err) {
    return qi_dit_load_mode(src, be, loras, QI_LORA_FUSE, out, err);
}

qi_status qi_dit_load_mode(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_lora_mode mode,
                           qi_dit **out, qi_error *err) {
    return qi_dit_load_resident(src, be, loras, mode, NULL, out, err);
}

qi_status qi_dit_load_resident(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_lora_mode mode,
                               const qi_dit_residency *res, qi_dit **out, qi_error *err) {
    *out = NULL;
    if (!src || !be) return qi_fail(err, QI_ERR_ARG, "qi_dit_load: a source and a backend are required");
    qi_dit *d = calloc(1, sizeof *d);
    if (!d) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    d->be = be;
    d->src = src;
    d->lora_mode = mode;
    qi_status st = qi_dit_read_config(src, &d->cfg, err);
    if (st != QI_OK) {
        qi_dit_free(d);
        return st;
    }

    int cap = SPECS_TOP + SPECS_PER_BLOCK * d->cfg.num_layers;
    d->blocks = calloc((size_t)d->cfg.num_layers, sizeof *d->blocks);
    d->specs = calloc((size_t)cap, sizeof *d->specs);
    d->fused = calloc((size_t)cap, sizeof *d->fused);
    if (!d->blocks || !d->specs || !d->fused) {
        qi_dit_free(d);
        return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory");
    }
    spec_list l = {d->specs, 0, cap};
    build_specs(d, &l);
    d->n_specs = l.n;
    st = stream_setup(d, res, err);
    if (st != QI_OK) {
        d->n_specs = 0;
        qi_dit_free(d);
        return st;
    }

    /* LoRA modules may target any Linear (2-D) weight: fused at load or, per
     * lora_fuses, run beside the weight (qi_dit_set_loras, below). */
    qi_lora_binding *lora = NULL;
    st = bind_linears(d, loras, &lora, err);
    if (st == QI_OK) st = check_no_extra_tensors(d, err);
    int loaded = 0;
    for (; st == QI_OK && loaded < d->n_specs; loaded++)
        st = load_weight(d, &d->specs[loaded], lora, err);
    if (st == QI_OK) st = install_terms(d, lora, err); /* the modules not fused */
    if (st == QI_OK) st = stream_units(d, err);
    qi_lora_binding_free(lora);
    if (st != QI_OK) {
        d->n_specs = loaded; /* free only what was made */
        qi_dit_free(d);
        return st;
    }
    *out = d;
    return QI_OK;
}

void qi_dit_free(qi_dit *d) {
    if (!d) return;
    qi_wstream_free(d->stream);
    free(d->block_streamed);
    for (int i = 0; i < d->n_specs; i++)
        if (d->specs[i].dst->data) d->be->ops->weight_free(d->be, d->specs[i].dst);
    for (int i = 0; i < DIT_ROPE_CACHE; i++) {
        if (d->rope[i].on_backend) {
            d->be->ops->weight_free(d->be, &d->rope[i].cos);
            d->be->ops->weight_free(d->be, &d->rope[i].sin);
        }
        free(d->rope[i].host);
    }
    for (int i = 0; i < d->n_fused; i++) free(d->fused[i]);
    free(d->fused);
    free_terms(d->be, d->terms, d->n_terms);
    free(d->specs);
    free(d->blocks);
    free(d);
}

/* ---- rotary tables (spec §1.5) ----------------------------------------------------- */

/* The cached tables for this shape, built and uploaded on first use: into
 * persistent float32 buffers when the backend has them, else as weights
 * (kept if the backend left them F32). The least recently used entry that no
 * live call pins makes room. */
qi_status dit_rope_for_shape(qi_dit *d, int grid_h, int grid_w, const qi_dit_cond *cond, int txt_len,
                             rope_entry **out, qi_error *err) {
    const qi_backend_ops *op = d->be->ops;
    rope_entry *hit = NULL, *victim = NULL;
    for (int i = 0; i < DIT_ROPE_CACHE; i++) {
        rope_entry *e = &d->rope[i];
        if (e->txt_len == txt_len && e->grid_h == grid_h && e->grid_w == grid_w &&
            !memcmp(&e->cond, cond, sizeof *cond))
            hit = e;
        if (!e->pins && (!victim || e->last_use < victim->last_use)) victim = e;
    }
    if (!hit) {
        if (!victim)
            return qi_fail(err, QI_ERR_ARG, "transformer: more than %d live qi_dit_calls of different shapes "
                           "(each keeps its RoPE tables); free some first", DIT_ROPE_CACHE);
        hit = victim;
        if (hit->on_backend) {
            d->be->ops->weight_free(d->be, &hit->cos);
            d->be->ops->weight_free(d->be, &hit->sin);
        }
        free(hit->host);
        memset(hit, 0, sizeof *hit);
        int64_t L = (int64_t)txt_len + qi_dit_image_tokens(grid_h, grid_w, cond), P = d->cfg.head_dim / 2;
        hit->host = malloc((size_t)(2 * L * P) * sizeof(float));
        if (!hit->host) return qi_fail(err, QI_ERR_NOMEM, "transformer: out of memory (RoPE)");
        qi_status st =
            qi_dit_rope_tables_cond(&d->cfg, grid_h, grid_w, cond, txt_len, hit->host, hit->host + L * P, err);
        int64_t ne[2] = {L, P};
        if (st == QI_OK && op->persistent) {
            st = op->persistent(d->be, &hit->cos, QI_F32, 2, ne, err);
            if (st == QI_OK) {
                st = op->persistent(d->be, &hit->sin, QI_F32, 2, ne, err);
                if (st != QI_OK) op->weight_free(d->be, &hit->cos);
            }
            if (st == QI_OK) st = op->upload(d->be, &hit->cos, hit->host, err);
            if (st == QI_OK) st = op->upload(d->be, &hit->sin, hit->host + L * P, err);
            if (st != QI_OK && hit->sin.data) {
                op->weight_free(d->be, &hit->cos);
                op->weight_free(d->be, &hit->sin);
            }
        } else if (st == QI_OK) {
            st = op->weight(d->be, &hit->cos, QI_F32, 2, ne, hit->host, NULL, err);
            if (st == QI_OK) {
                st = op->weight(d->be, &hit->sin, QI_F32, 2, ne, hit->host + L * P, NULL, err);
                if (st != QI_OK) op->weight_free(d->be, &hit->cos);
            }
        }
        if (st != QI_OK) {
            free(hit->host);
            hit->host = NULL;
            return st;
        }
        hit->on_backend = 1;
        /* The rope op reads F32 tables; a backend that converted them to its
         * weight format gets them uploaded into the arena per call instead. */
        if (hit->cos.dtype != QI_F32 || hit->sin.dtype != QI_F32) {
            d->be->ops->weight_free(d->be, &hit->cos);
            d->be->ops->weight_free(d->be, &hit->sin);
            hit->on_backend = 0;
        }
        hit->grid_h = grid_h;
        hit->grid_w = grid_w;
        hit->cond = *cond;
        hit->txt_len = txt_len;
    }
    hit->last_use = ++d->rope_clock;
    *out = hit;
    return QI_OK;
}

/* ---- forward -------------------------------------------------------------------------- */


qi_status dit_alloc_acts(qi_dit *d, dit_acts *a, qi_error *err) {
    qi_backend *be = d->be;
    const qi_dit_config *c = &d->cfg;
    int64_t B = a->B, Li = a->Li, Lt = a->Lt, Lj = a->Lj, D = c->inner_dim, F = c->mlp_dim;
    int64_t H = a->sp ? a->sp->heads_local : c->num_heads, Dh = c->head_dim;
    qi_status st = qi_be_act2(be, &a->mods, (2 * (int64_t)c->num_layers + 1) * B, 6 * D, err);
    if (st == QI_OK) st = qi_be_act3(be, &a->img, B, Li, D, err);
    if (st == QI_OK) st = qi_be_act3(be, &a->txt, B, Lt, D, err);
    if (st == QI_OK) st = qi_be_act3(be, &a->norm_i, B, Li, D, err);
    if (st == QI_OK) st = qi_be_act3(be, &a->norm_t, B, Lt, D, err);
    qi_tensor *img_sized[] = {&a->q_i, &a->k_i, &a->v_i, &a->proj_i};
    qi_tensor *txt_sized[] = {&a->q_t, &a->k_t, &a->v_t, &a->proj_t};
    for (int i = 0; i < 4 && st == QI_OK; i++) st = qi_be_act3(be, img_sized[i], B, Li, D, err);
    for (int i = 0; i < 4 && st == QI_OK; i++) st = qi_be_act3(be, txt_sized[i], B, Lt, D, err);
    qi_tensor *joint[] = {&a->Q, &a->K, &a->V, &a->O};
    for (int i = 0; i < 4 && st == QI_OK; i++) st = qi_be_act4(be, joint[i], B, Lj, H, Dh, err);
    if (B > 1 || a->sp) { /* B == 1 reads the attention output through row slices instead */
        if (st == QI_OK) st = qi_be_act3(be, &a->o_i, B, Li, D, err);
        if (st == QI_OK) st = qi_be_act3(be, &a->o_t, B, Lt, D, err);
    }
    if (st == QI_OK) st = qi_be_act3(be, &a->ff_i, B, Li, F, err);
    if (st == QI_OK) st = qi_be_act3(be, &a->ff_t, B, Lt, F, err);
    return st;
}

/* Chunk `chunk` of modulation slot `slot`: B rows of D, row stride 6D
 * (chunks: 0 shift1, 1 scale1, 2 gate1, 3 shift2, 4 scale2, 5 gate2). */
static qi_tensor mod_chunk_of(const qi_dit *d, const qi_tensor *mods, int64_t B, int64_t slot, int64_t chunk) {
    int64_t D = d->cfg.inner_dim;
    qi_tensor t = qi_slice_rows(mods, slot * B, B);
    t.data = (char *)t.data + (size_t)(chunk * D) * qi_dtype_size(t.dtype);
    t.ne[1] = D;
    return t;
}

static qi_tensor mod_chunk(const qi_dit *d, const dit_acts *a, int64_t slot, int64_t chunk) {
    return mod_chunk_of(d, &a->mods, a->B, slot, chunk);
}

/* The image stream cut by modulation: all rows with the step's img_mod, or
 * (zero_cond_t with condition tokens, B = 1) the output rows with it and the
 * condition rows with t = 0's (reference E9: diffusers' modulate_index). */
typedef struct img_part {
    qi_tensor img, norm, proj;            /* [1, rows, D] views of a->img, a->norm_i, a->proj_i */
    qi_tensor sh1, sc1, g1, sh2, sc2, g2; /* the part's modulation chunks */
} img_part;

static int image_parts(const qi_dit *d, const dit_acts *a, int index, img_part *p) {
    int n = a->zero_split ? 2 : 1;
    int64_t D = d->cfg.inner_dim;
    for (int k = 0; k < n; k++) {
        const qi_tensor *mods = k ? &a->mods0 : &a->mods;
        int64_t slot = k ? index : 2 * (int64_t)index, B = k ? 1 : a->B;
        qi_tensor *ch[6] = {&p[k].sh1, &p[k].sc1, &p[k].g1, &p[k].sh2, &p[k].sc2, &p[k].g2};
        for (int c = 0; c < 6; c++) *ch[c] = mod_chunk_of(d, mods, B, slot, c);
        if (!a->zero_split) {
            p[k].img = a->img, p[k].norm = a->norm_i, p[k].proj = a->proj_i;
            continue;
        }
        int64_t r0 = k ? a->L_out : 0, rows = k ? a->Li - a->L_out : a->L_out;
        const qi_tensor *src[3] = {&a->img, &a->norm_i, &a->proj_i};
        qi_tensor *dst[3] = {&p[k].img, &p[k].norm, &p[k].proj};
        for (int i = 0; i < 3; i++) {
            qi_tensor s = qi_slice_rows(src[i], r0, rows);
            *dst[i] = qi_view3(&s, 1, rows, D);
        }
    }
    return n;
}
#define MOD_STRIDE(d) (6 * (int64_t)(d)->cfg.inner_dim)

/* The timestep sinusoid [B, 256] on the host, float32 in diffusers' order:
 * f_k = exp(-ln(10000)·k / 128); arg = (t·f_k)·1000; [cos | sin]
 * (flip_sin_to_cos). t is timestep/1000, so the sinusoid sees the 0..1000
 * timestep again (spec §6 trap 3). */
void dit_timestep_sinusoid(const float *t, int64_t B, float *proj) {
    int64_t half = DIT_TIME_CHANNELS / 2;
    const float neg_log_period = (float)-9.210340371976184; /* -ln(10000) */
    for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < half; k++) {
            float freq = expf(neg_log_period * (float)k / (float)half);
            float arg = (t[b] * freq) * 1000.0f;
            proj[b * DIT_TIME_CHANNELS + k] = cosf(arg);
            proj[b * DIT_TIME_CHANNELS + half + k] = sinf(arg);
        }
}

/* y = act(x · Wᵀ + b + Σ coef · (x · downᵀ) · upᵀ): the Linear with its
 * runtime LoRA modules, through the op table only (linear, axpby, activate),
 * so every backend and weight type runs it. x [M, in], y [M, out]. The
 * low-rank products go through arena scratch [M, rank] and [M, out], given
 * back at once (queued ops still read them in order). A failed scratch
 * allocation sets *st (first failure wins); the base Linear always runs. */
void dit_run_linear(qi_dit *d, const qi_tensor *x, const dit_linear *l, qi_act act, qi_tensor *y,
                    qi_status *st, qi_error *err) {
    qi_backend *be = d->be;
    if (!l->n_lora) {
        be->ops->linear(be, x, &l->w, &l->b, act, y);
        return;
    }
    be->ops->linear(be, x, &l->w, &l->b, QI_ACT_NONE, y);
    int64_t M = qi_rows(x), N = l->w.ne[0];
    qi_tensor y2 = qi_view2(y, M, N);
    for (int k = 0; k < l->n_lora && *st == QI_OK; k++) {
        const dit_lora_term *t = &l->lora[k];
        size_t mark = be->ops->mark(be);
        qi_tensor h, u;
        qi_status s = qi_be_act2(be, &h, M, t->down.ne[0], err);
        if (s == QI_OK) s = qi_be_act2(be, &u, M, N, err);
        if (s == QI_OK) {
            be->ops->linear(be, x, &t->down, NULL, QI_ACT_NONE, &h); /* [M, rank] */
            be->ops->linear(be, &h, &t->up, NULL, QI_ACT_NONE, &u);  /* [M, out] */
            be->ops->axpby(be, 1.0f, &y2, t->coef, &u, &y2);
        }
        be->ops->reset(be, mark);
        if (s != QI_OK) *st = s;
    }
    if (act != QI_ACT_NONE) be->ops->activate(be, y, act, y);
}

/* The n Linears l[k] of the one input x (activation act) into y[k] as one
 * linear_shared call (src: x made first by that LayerNorm, see backend.h),
 * when the backend has the op and takes it and no l[k] has runtime LoRA
 * terms (their low-rank products go one Linear at a time): 1 when queued,
 * 0 when nothing was (the caller runs src's op and the Linears itself).
 * The results are those of the plain ops, bit for bit. */
int dit_try_linears_shared(qi_dit *d, const qi_tensor *x, const qi_ln_mod_src *src, int n, const dit_linear *const *l,
                           qi_act act, qi_tensor *const *y) {
    qi_backend *be = d->be;
    enum { MAX = 8 };
    if (!be->ops->linear_shared || n < 1 || n > MAX) return 0;
    const qi_tensor *w[MAX], *b[MAX];
    qi_act acts[MAX];
    for (int k = 0; k < n; k++) {
        if (l[k]->n_lora) return 0;
        w[k] = &l[k]->w, b[k] = &l[k]->b, acts[k] = act;
    }
    return be->ops->linear_shared(be, x, src, n, w, b, acts, y);
}

/* A block's linears in the order dit_block_forward runs them, then the
 * call's first two after the block (a->next_linears), NULL-ended: what the
 * prefetch hints name, the order the model knows and the backend does not.
 * The text stream's output projection runs before the image's (see there);
 * the last block runs no text-stream linear after the attention. */
static void block_linear_order(const dit_block *blk, int last, const dit_acts *a, const dit_linear **seq) {
    int n = 0;
    const dit_linear *qkv[6] = {&blk->to_q, &blk->to_k, &blk->to_v, &blk->add_q, &blk->add_k, &blk->add_v};
    for (int i = 0; i < 6; i++) seq[n++] = qkv[i];
    if (!last) seq[n++] = &blk->to_add_out;
    seq[n++] = &blk->to_out;
    seq[n++] = &blk->img_mlp_up;
    seq[n++] = &blk->img_mlp_down;
    if (!last) {
        seq[n++] = &blk->txt_mlp_up;
        seq[n++] = &blk->txt_mlp_down;
    }
    seq[n] = a->next_linears[0];
    seq[n + 1] = a->next_linears[0] ? a->next_linears[1] : NULL;
    seq[n + 2] = NULL;
}

#define DIT_HINT_AHEAD 2 /* linears named ahead: a backend with fewer free buffers drops the rest */

/* The prefetch hints for seq[first] and the next ones, DIT_HINT_AHEAD in all
 * (a kept weight's expansion then overlaps the ops queued before its GEMM). */
static void hint_from(qi_dit *d, const dit_linear *const *seq, int first) {
    qi_backend *be = d->be;
    for (int k = first; k < first + DIT_HINT_AHEAD && be->ops->prefetch_weight && seq[k]; k++)
        be->ops->prefetch_weight(be, &seq[k]->w);
}

/* dit_run_linear of l after hinting the linears that follow it in seq (l not
 * in seq: no hints; they change no result either way). */
static void run_linear_hinted(qi_dit *d, const dit_linear *const *seq, const qi_tensor *x, const dit_linear *l,
                              qi_act act, qi_tensor *y, qi_status *st, qi_error *err) {
    for (int i = 0; seq[i]; i++)
        if (seq[i] == l) {
            hint_from(d, seq, i + 1);
            break;
        }
    dit_run_linear(d, x, l, act, y, st, err);
}

/* The hints for the linears after l in seq (l not in seq: none), for a
 * linear that ran inside a linear_shared call. */
static void hint_after(qi_dit *d, const dit_linear *const *seq, const dit_linear *l) {
    for (int i = 0; seq[i]; i++)
        if (seq[i] == l) {
            hint_from(d, seq, i + 1);
            return;
        }
}

/* One stream's q/k/v Linears l[0..3) of x into y[0..3): one linear_shared
 * call where the backend takes it (the hints then name the linears after
 * them, queued after the three, which is where a hint for one of those
 * would have gone had the three been one linear), else run_linear_hinted
 * each, exactly as before the op existed. */
static void run_qkv(qi_dit *d, const dit_linear *const *seq, const qi_tensor *x, const dit_linear *const *l,
                    qi_tensor *const *y, qi_status *st, qi_error *err) {
    if (dit_try_linears_shared(d, x, NULL, 3, l, QI_ACT_NONE, y)) {
        hint_after(d, seq, l[2]);
        return;
    }
    for (int k = 0; k < 3; k++) run_linear_hinted(d, seq, x, l[k], QI_ACT_NONE, y[k], st, err);
}

/* temb = linear_2(silu(linear_1(sinusoid))), returned SiLU'd because all its
 * consumers (img_mod, txt_mod, norm_out) apply SiLU first (spec §1.4).
 * sinus [B, 256] is on the backend already. */
qi_status dit_timestep_embedding(qi_dit *d, const qi_tensor *sinus, qi_tensor *temb_silu, qi_error *err) {
    qi_backend *be = d->be;
    int64_t B = sinus->ne[0], D = d->cfg.inner_dim;
    qi_tensor hidden;
    qi_status st = qi_be_act2(be, &hidden, B, D, err);
    if (st == QI_OK) st = qi_be_act2(be, temb_silu, B, D, err);
    if (st != QI_OK) return st;
    dit_run_linear(d, sinus, &d->time_1, QI_ACT_SILU, &hidden, &st, err);
    dit_run_linear(d, &hidden, &d->time_2, QI_ACT_NONE, temb_silu, &st, err);
    be->ops->activate(be, temb_silu, QI_ACT_SILU, temb_silu);
    return st;
}

/* Every block's img_mod/txt_mod and norm_out's Linear of silu(temb), once per
 * call: the block loop only reads chunks of a->mods. No prefetch hints here:
 * with B rows each GEMM is as memory-bound as the expansion it would
 * overlap, so the two would only share the bandwidth. */
qi_status dit_compute_modulation(qi_dit *d, const qi_tensor *temb_silu, dit_acts *a, qi_error *err) {
    qi_status st = QI_OK;
    int64_t L = d->cfg.num_layers, D = d->cfg.inner_dim;
    for (int64_t i = 0; i < L; i++) {
        qi_tensor img_mod = qi_slice_rows(&a->mods, (2 * i) * a->B, a->B);
        qi_tensor txt_mod = qi_slice_rows(&a->mods, (2 * i + 1) * a->B, a->B);
        dit_linear im, tm;
        if (st == QI_OK) st = dit_mod_linears(d, (int)i, &im, &tm, err);
        if (st != QI_OK) return st;
        const dit_linear *pair[2] = {&im, &tm};
        qi_tensor *out[2] = {&img_mod, &txt_mod};
        if (dit_try_linears_shared(d, temb_silu, NULL, 2, pair, QI_ACT_NONE, out)) continue; /* silu(temb) quantised once (fp8) */
        dit_run_linear(d, temb_silu, &im, QI_ACT_NONE, &img_mod, &st, err);
        dit_run_linear(d, temb_silu, &tm, QI_ACT_NONE, &txt_mod, &st, err);
    }
    /* norm_out writes [B, 2D] contiguously at the start of the last slot. */
    qi_tensor out_mod = qi_slice_rows(&a->mods, 2 * L * a->B, a->B);
    out_mod.ne[1] = 2 * D;
    dit_run_linear(d, temb_silu, &d->norm_out, QI_ACT_NONE, &out_mod, &st, err);
    return st;
}

/* dst rows of the joint sequence [B, Lt + Li, ·] = text rows then image rows. */
static void join_streams(qi_backend *be, const dit_acts *a, int64_t D, const qi_tensor *txt,
                         const qi_tensor *img, qi_tensor *joint) {
    qi_tensor j2 = qi_view2(joint, a->B * a->Lj, D);
    qi_tensor t2 = qi_view2(txt, a->B * a->Lt, D), i2 = qi_view2(img, a->B * a->Li, D);
    for (int64_t b = 0; b < a->B; b++) {
        be->ops->copy_rows(be, &t2, b * a->Lt, &j2, b * a->Lj, a->Lt);
        be->ops->copy_rows(be, &i2, b * a->Li, &j2, b * a->Lj + a->Lt, a->Li);
    }
}

/* The attention output per stream: row slices when B == 1, copies otherwise. */
static void split_streams(qi_backend *be, dit_acts *a, int64_t D, qi_tensor *o_t, qi_tensor *o_i) {
    qi_tensor o2 = qi_view2(&a->O, a->B * a->Lj, D);
    if (a->B == 1) {
        *o_t = qi_slice_rows(&o2, 0, a->Lt);
        *o_i = qi_slice_rows(&o2, a->Lt, a->Li);
        return;
    }
    qi_tensor t2 = qi_view2(&a->o_t, a->B * a->Lt, D), i2 = qi_view2(&a->o_i, a->B * a->Li, D);
    for (int64_t b = 0; b < a->B; b++) {
        be->ops->copy_rows(be, &o2, b * a->Lj, &t2, b * a->Lt, a->Lt);
        be->ops->copy_rows(be, &o2, b * a->Lj + a->Lt, &i2, b * a->Li, a->Li);
    }
    *o_t = a->o_t;
    *o_i = a->o_i;
}

/* RoPE on Q and K only (interleaved pairs, trap 4), then attention over the
 * joint sequence with the key mask: a->Q, a->K, a->V -> a->O. */
static void rope_and_attend(qi_dit *d, dit_acts *a) {
    qi_backend *be = d->be;
    const qi_backend_ops *op = be->ops;
    op->rope(be, &a->Q, &a->rope_cos, &a->rope_sin, QI_ROPE_INTERLEAVED);
    op->rope(be, &a->K, &a->rope_cos, &a->rope_sin, QI_ROPE_INTERLEAVED);
    op->attention(be, &a->Q, &a->K, &a->V, a->have_mask ? &a->key_mask : NULL, 0,
                  1.0f / sqrtf((float)d->cfg.head_dim), &a->O);
}

/* Joint attention on one device: the streams joined TEXT FIRST (trap 6),
 * attended, split back into o_t [B, Lt, D] and o_i [B, Li, D]. */
static void attend_joint(qi_dit *d, dit_acts *a, qi_tensor *o_t, qi_tensor *o_i) {
    int64_t D = d->cfg.inner_dim;
    join_streams(d->be, a, D, &a->q_t, &a->q_i, &a->Q);
    join_streams(d->be, a, D, &a->k_t, &a->k_i, &a->K);
    join_streams(d->be, a, D, &a->v_t, &a->v_i, &a->V);
    rope_and_attend(d, a);
    split_streams(d->be, a, D, o_t, o_i);
}

/* attend_joint with rms_norm_rope: each stream's per-head RMSNorm (own
 * weights, before RoPE: trap 7) and the rotation write straight into the
 * joint Q and K, text rows first, so neither the normed q/k nor their joins
 * are stored. V was projected into place when B == 1. */
static void attend_joint_fused(qi_dit *d, const dit_block *blk, dit_acts *a, qi_tensor *o_t, qi_tensor *o_i) {
    qi_backend *be = d->be;
    const qi_backend_ops *op = be->ops;
    int64_t H = d->cfg.num_heads, Dh = d->cfg.head_dim, D = d->cfg.inner_dim;
    qi_tensor qi4 = qi_view4(&a->q_i, a->B, a->Li, H, Dh), ki4 = qi_view4(&a->k_i, a->B, a->Li, H, Dh);
    qi_tensor qt4 = qi_view4(&a->q_t, a->B, a->Lt, H, Dh), kt4 = qi_view4(&a->k_t, a->B, a->Lt, H, Dh);
    const qi_rope_mode mode = QI_ROPE_INTERLEAVED; /* trap 4 */
    op->rms_norm_rope(be, &qt4, &blk->norm_added_q, DIT_EPS, &a->rope_cos, &a->rope_sin, mode, &a->Q, 0);
    op->rms_norm_rope(be, &qi4, &blk->norm_q, DIT_EPS, &a->rope_cos, &a->rope_sin, mode, &a->Q, a->Lt);
    op->rms_norm_rope(be, &kt4, &blk->norm_added_k, DIT_EPS, &a->rope_cos, &a->rope_sin, mode, &a->K, 0);
    op->rms_norm_rope(be, &ki4, &blk->norm_k, DIT_EPS, &a->rope_cos, &a->rope_sin, mode, &a->K, a->Lt);
    if (a->B > 1) join_streams(be, a, D, &a->v_t, &a->v_i, &a->V);
    op->attention(be, &a->Q, &a->K, &a->V, a->have_mask ? &a->key_mask : NULL, 0,
                  1.0f / sqrtf((float)Dh), &a->O);
    split_streams(be, a, D, o_t, o_i);
}

/* The same on one rank of a Ulysses group: the all-to-all turns this rank's
 * image q/k/v (all heads) plus the text into the whole joint sequence for
 * its H/N heads (text first, so the RoPE table and key mask are the
 * single-device ones), and the inverse brings back all heads of its image
 * rows and of the text. */
static qi_status attend_sharded(qi_dit *d, dit_acts *a, qi_tensor *o_t, qi_tensor *o_i,
                                qi_error *err) {
    const qi_tensor *txt[3] = {&a->q_t, &a->k_t, &a->v_t}, *img[3] = {&a->q_i, &a->k_i, &a->v_i};
    qi_tensor *joint[3] = {&a->Q, &a->K, &a->V};
    qi_status st = qi_ulysses_scatter_heads(a->sp, a->comm, d->be, txt, img, joint, err);
    if (st != QI_OK) return st;
    rope_and_attend(d, a);
    st = qi_ulysses_gather_heads(a->sp, a->comm, d->be, &a->O, &a->o_t, &a->o_i, err);
    *o_t = a->o_t;
    *o_i = a->o_i;
    return st;
}

/* Both streams' modulated LN and Q/K/V (into y_i / y_t's v). Where the
 * backend takes it, each stream's LN and its three Linears are one
 * linear_shared call (the image's only when it is one part: an Edit
 * zero_cond_t image has two, each its own modulation), so the LN kernel can
 * take what the fp8 GEMM needs of its output while writing it; what it
 * does not take runs as before the op existed: the LNs, then the Linears. */
static void attention_inputs(qi_dit *d, int index, const dit_block *blk, dit_acts *a, img_part *ip,
                             int n_parts, const dit_linear *const *seq, qi_tensor *v_i, qi_tensor *v_t,
                             qi_status *st, qi_error *err) {
    qi_backend *be = d->be;
    int64_t stride = MOD_STRIDE(d), txt_slot = 2 * (int64_t)index + 1;
    qi_tensor tsh1 = mod_chunk(d, a, txt_slot, 0), tsc1 = mod_chunk(d, a, txt_slot, 1);
    const dit_linear *qkv_i[3] = {&blk->to_q, &blk->to_k, &blk->to_v};
    const dit_linear *qkv_t[3] = {&blk->add_q, &blk->add_k, &blk->add_v};
    qi_tensor *y_i[3] = {&a->q_i, &a->k_i, v_i}, *y_t[3] = {&a->q_t, &a->k_t, v_t};
    qi_ln_mod_src ln_i = {&a->img, NULL, 0, NULL, &ip[0].sh1, &ip[0].sc1, stride, DIT_EPS};
    qi_ln_mod_src ln_t = {&a->txt, NULL, 0, NULL, &tsh1, &tsc1, stride, DIT_EPS};
    int img_done = n_parts == 1 && dit_try_linears_shared(d, &a->norm_i, &ln_i, 3, qkv_i, QI_ACT_NONE, y_i);
    if (img_done) hint_after(d, seq, qkv_i[2]);
    int txt_done = img_done && dit_try_linears_shared(d, &a->norm_t, &ln_t, 3, qkv_t, QI_ACT_NONE, y_t);
    if (txt_done) hint_after(d, seq, qkv_t[2]); /* next: beside the attention */
    for (int k = 0; k < n_parts && !img_done; k++)
        be->ops->layer_norm_mod(be, &ip[k].img, &ip[k].sh1, &ip[k].sc1, stride, DIT_EPS, &ip[k].norm);
    if (!txt_done) be->ops->layer_norm_mod(be, &a->txt, &tsh1, &tsc1, stride, DIT_EPS, &a->norm_t);
    /* each stream's three read one input: one linear_shared call where the backend takes it */
    if (!img_done) run_qkv(d, seq, &a->norm_i, qkv_i, y_i, st, err);
    if (!txt_done) run_qkv(d, seq, &a->norm_t, qkv_t, y_t, st, err); /* next: beside the attention */
}

/* The image stream's gated residual of the attention and the MLP's input
 * norm_i, then its up projection (GELU-tanh) into ff_i. With
 * add_gated_layer_norm_mod and one image part the backend may take the
 * three as one linear_shared call (see attention_inputs); else as before. */
static void mlp_input_image(qi_dit *d, const dit_block *blk, dit_acts *a, img_part *ip, int n_parts,
                            const dit_linear *const *seq, qi_status *st, qi_error *err) {
    qi_backend *be = d->be;
    const qi_backend_ops *op = be->ops;
    int64_t stride = MOD_STRIDE(d);
    int ag_ln = op->add_gated_layer_norm_mod != NULL;
    const dit_linear *up[1] = {&blk->img_mlp_up};
    qi_tensor *ff[1] = {&a->ff_i};
    qi_ln_mod_src ag = {&a->img, &ip[0].g1, stride, &ip[0].proj, &ip[0].sh2, &ip[0].sc2, stride, DIT_EPS};
    if (ag_ln && n_parts == 1 && dit_try_linears_shared(d, &a->norm_i, &ag, 1, up, QI_ACT_GELU_TANH, ff)) {
        hint_after(d, seq, up[0]);
        return;
    }
    for (int k = 0; k < n_parts; k++) {
        img_part *q = &ip[k];
        if (ag_ln)
            op->add_gated_layer_norm_mod(be, &q->img, &q->g1, stride, &q->proj, &q->sh2, &q->sc2, stride, DIT_EPS,
                                         &q->norm);
        else
            op->add_gated(be, &q->img, &q->g1, stride, &q->proj);
    }
    for (int k = 0; k < n_parts && !ag_ln; k++)
        op->layer_norm_mod(be, &ip[k].img, &ip[k].sh2, &ip[k].sc2, stride, DIT_EPS, &ip[k].norm);
    run_linear_hinted(d, seq, &a->norm_i, up[0], QI_ACT_GELU_TANH, ff[0], st, err);
}

/* One dual-stream block (spec §1.6). In the last block the text stream's
 * own updates are skipped: nothing reads the text after it. */
qi_status dit_block_forward(qi_dit *d, int index, const dit_block *blk, dit_acts *a, qi_error *err) {
    qi_backend *be = d->be;
    const qi_backend_ops *op = be->ops;
    const qi_dit_config *c = &d->cfg;
    int64_t H = c->num_heads, Dh = c->head_dim, stride = MOD_STRIDE(d);
    int last = index == c->num_layers - 1;
    int64_t txt_slot = 2 * (int64_t)index + 1;
    img_part ip[2];
    int n_parts = image_parts(d, a, index, ip);
    qi_tensor tg1 = mod_chunk(d, a, txt_slot, 2), tsh2 = mod_chunk(d, a, txt_slot, 3);
    qi_tensor tsc2 = mod_chunk(d, a, txt_slot, 4), tg2 = mod_chunk(d, a, txt_slot, 5);
    qi_status st = QI_OK; /* a runtime LoRA's scratch (run_linear) */
    const dit_linear *seq[16]; /* the order of the linears, for the prefetch hints */
    block_linear_order(blk, last, a, seq);
    hint_from(d, seq, 0); /* to_q's expansion beside the norms, unless the previous block queued it */

    /* --- attention half: modulated LN, Q/K/V per stream --- */
    /* one device and a backend with rms_norm_rope: q/k go normed and rotated
     * straight into the joint buffers, and with B == 1 v is projected into them */
    int fused = !a->sp && op->rms_norm_rope;
    qi_tensor v_i = a->v_i, v_t = a->v_t;
    if (fused && a->B == 1) {
        qi_tensor V2 = qi_view2(&a->V, a->Lj, c->inner_dim);
        v_t = qi_slice_rows(&V2, 0, a->Lt);
        v_i = qi_slice_rows(&V2, a->Lt, a->Li);
    }
    attention_inputs(d, index, blk, a, ip, n_parts, seq, &v_i, &v_t, &st, err);

    /* joint attention over both streams, here or across the Ulysses group */
    qi_tensor o_t, o_i;
    if (fused) {
        attend_joint_fused(d, blk, a, &o_t, &o_i);
    } else {
        /* per-head RMSNorm of q and k, own weights per stream, before RoPE (trap 7) */
        qi_tensor qi_h = qi_view2(&a->q_i, a->B * a->Li * H, Dh), ki_h = qi_view2(&a->k_i, a->B * a->Li * H, Dh);
        qi_tensor qt_h = qi_view2(&a->q_t, a->B * a->Lt * H, Dh), kt_h = qi_view2(&a->k_t, a->B * a->Lt * H, Dh);
        op->rms_norm(be, &qi_h, &blk->norm_q, DIT_EPS, &qi_h);
        op->rms_norm(be, &ki_h, &blk->norm_k, DIT_EPS, &ki_h);
        op->rms_norm(be, &qt_h, &blk->norm_added_q, DIT_EPS, &qt_h);
        op->rms_norm(be, &kt_h, &blk->norm_added_k, DIT_EPS, &kt_h);
        if (a->sp) {
            if (st == QI_OK) st = attend_sharded(d, a, &o_t, &o_i, err);
            if (st != QI_OK) return st;
        } else {
            attend_joint(d, a, &o_t, &o_i);
        }
    }

    /* gated residuals; the MLP half then reads the updated streams (trap 2).
     * A backend with add_gated_layer_norm_mod also does the MLP half's
     * modulated LN in the same pass over the stream. The text stream's goes
     * first: the streams' ops touch disjoint tensors, so the order changes no
     * value, and its short GEMM (Lt rows) is then overlapped by to_out's
     * expansion, the long image GEMM of to_out by the MLP's 4× larger one. */
    int ag_ln = op->add_gated_layer_norm_mod != NULL;
    int txt_up_done = 0; /* the text MLP's up projection queued here, in one linear_shared call with its LN */
    if (!last) {
        run_linear_hinted(d, seq, &o_t, &blk->to_add_out, QI_ACT_NONE, &a->proj_t, &st, err);
        const dit_linear *up_t[1] = {&blk->txt_mlp_up};
        qi_tensor *ff_t[1] = {&a->ff_t};
        qi_ln_mod_src ag_t = {&a->txt, &tg1, stride, &a->proj_t, &tsh2, &tsc2, stride, DIT_EPS};
        txt_up_done = ag_ln && dit_try_linears_shared(d, &a->norm_t, &ag_t, 1, up_t, QI_ACT_GELU_TANH, ff_t);
        if (ag_ln && !txt_up_done)
            op->add_gated_layer_norm_mod(be, &a->txt, &tg1, stride, &a->proj_t, &tsh2, &tsc2, stride,
                                         DIT_EPS, &a->norm_t);
        else if (!ag_ln)
            op->add_gated(be, &a->txt, &tg1, stride, &a->proj_t);
    }
    run_linear_hinted(d, seq, &o_i, &blk->to_out, QI_ACT_NONE, &a->proj_i, &st, err);

    /* --- MLP half: LN·(1+scale)+shift, GELU-tanh MLP, gated residual --- */
    mlp_input_image(d, blk, a, ip, n_parts, seq, &st, err);
    run_linear_hinted(d, seq, &a->ff_i, &blk->img_mlp_down, QI_ACT_NONE, &a->proj_i, &st, err);
    for (int k = 0; k < n_parts; k++) op->add_gated(be, &ip[k].img, &ip[k].g2, stride, &ip[k].proj);
    if (!last) {
        if (!ag_ln) op->layer_norm_mod(be, &a->txt, &tsh2, &tsc2, stride, DIT_EPS, &a->norm_t);
        if (!txt_up_done) /* else queued after to_add_out: it reads norm_t, writes ff_t, nothing between touches them */
            run_linear_hinted(d, seq, &a->norm_t, &blk->txt_mlp_up, QI_ACT_GELU_TANH, &a->ff_t, &st, err);
        run_linear_hinted(d, seq, &a->ff_t, &blk->txt_mlp_down, QI_ACT_NONE, &a->proj_t, &st, err);
        op->add_gated(be, &a->txt, &tg2, stride, &a->proj_t);
    }
    return st;
}

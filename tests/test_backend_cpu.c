/*
 * test_backend_cpu.c — claims about the CPU backend: each op agrees with a
 * direct double-precision evaluation of its formula in backend.h.
 * Tolerance 1e-5 relative: float32 outputs of double-accumulated math.
 */
#include "backend/backend.h"
#include "test.h"

static qi_backend *be;
static unsigned rng_state = 12345;

static float frand(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return ((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static qi_tensor act(int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    qi_tensor t;
    int64_t ne[4] = {a, b, c, d};
    qi_error err;
    if (be->ops->tensor(be, &t, QI_F32, ndim, ne, &err)) abort();
    return t;
}

static void fill(qi_tensor *t) {
    float *p = t->data;
    for (int64_t i = 0; i < qi_numel(t); i++) p[i] = frand();
}

static double rel_err(const float *a, const double *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void linear_with_bf16_weights_and_gelu(void) {
    int64_t M = 7, K = 33, N = 19;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(2, M, K, 0, 0), y = act(2, M, N, 0, 0);
    fill(&x);
    uint16_t *wb = malloc(sizeof(uint16_t) * N * K), bb[19];
    for (int64_t i = 0; i < N * K; i++) wb[i] = qi_f32_to_bf16(frand());
    for (int i = 0; i < N; i++) bb[i] = qi_f32_to_bf16(frand());
    qi_tensor w, b;
    qi_error err;
    int64_t wne[2] = {N, K}, bne[1] = {N};
    CHECK(!be->ops->weight(be, &w, QI_BF16, 2, wne, wb, &err));
    CHECK(!be->ops->weight(be, &b, QI_BF16, 1, bne, bb, &err));
    be->ops->linear(be, &x, &w, &b, QI_ACT_GELU_TANH, &y);
    double *ref = malloc(sizeof(double) * M * N);
    const float *xs = x.data;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = qi_bf16_to_f32(bb[n]);
            for (int64_t k = 0; k < K; k++) s += xs[m * K + k] * (double)qi_bf16_to_f32(wb[n * K + k]);
            ref[m * N + n] = 0.5 * s * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (s + 0.044715 * s * s * s)));
        }
    double e = rel_err(y.data, ref, M * N);
    printf("  linear bf16+gelu rel err %.2e\n", e);
    CHECK(e < 1e-5, "rel err %g", e);
    free(wb);
    free(ref);
    be->ops->reset(be, mark);
}

static void attention_gqa_causal_with_key_mask(void) {
    int64_t B = 2, Lq = 5, Lk = 5, H = 4, Hkv = 2, Dh = 8;
    size_t mark = be->ops->mark(be);
    qi_tensor q = act(4, B, Lq, H, Dh), k = act(4, B, Lk, Hkv, Dh), v = act(4, B, Lk, Hkv, Dh),
              o = act(4, B, Lq, H, Dh), mask;
    fill(&q), fill(&k), fill(&v);
    int64_t mne[2] = {B, Lk};
    qi_error err;
    CHECK(!be->ops->tensor(be, &mask, QI_I32, 2, mne, &err));
    int32_t *mk = mask.data;
    for (int i = 0; i < B * Lk; i++) mk[i] = !(i == 8 || i == 9); /* batch 1: last two keys padded */
    float scale = 0.35f;
    be->ops->attention(be, &q, &k, &v, &mask, 1, scale, &o);
    double *ref = calloc((size_t)(B * Lq * H * Dh), sizeof(double));
    const float *qs = q.data, *ks = k.data, *vs = v.data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) {
                double s[5], mx = -1e300, sum = 0;
                int64_t hk = h / (H / Hkv);
                for (int64_t j = 0; j < Lk; j++) {
                    s[j] = -INFINITY;
                    if (j > i || !mk[b * Lk + j]) continue;
                    double d = 0;
                    for (int64_t e = 0; e < Dh; e++)
                        d += qs[((b * Lq + i) * H + h) * Dh + e] * (double)ks[((b * Lk + j) * Hkv + hk) * Dh + e];
                    s[j] = d * scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = 0; j < Lk; j++) sum += s[j] == -INFINITY ? 0 : exp(s[j] - mx);
                for (int64_t j = 0; j < Lk; j++) {
                    if (s[j] == -INFINITY) continue;
                    double p = exp(s[j] - mx) / sum;
                    for (int64_t e = 0; e < Dh; e++)
                        ref[((b * Lq + i) * H + h) * Dh + e] += p * vs[((b * Lk + j) * Hkv + hk) * Dh + e];
                }
            }
    double e = rel_err(o.data, ref, B * Lq * H * Dh);
    printf("  attention rel err %.2e\n", e);
    CHECK(e < 1e-5, "rel err %g", e);
    free(ref);
    be->ops->reset(be, mark);
}

static void layer_norm_modulation_uses_strided_chunks(void) {
    int64_t B = 2, L = 3, D = 16;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, B, L, D, 0), y = act(3, B, L, D, 0), mod = act(2, B, 6 * D, 0, 0);
    fill(&x), fill(&mod);
    qi_tensor shift = mod, scale = mod;
    scale.data = (float *)mod.data + D; /* chunk 1 of 6 */
    be->ops->layer_norm_mod(be, &x, &shift, &scale, 6 * D, 1e-6f, &y);
    double ref[96];
    const float *xs = x.data, *ms = mod.data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++) {
            double mean = 0, var = 0;
            for (int64_t i = 0; i < D; i++) mean += xs[(b * L + l) * D + i] / (double)D;
            for (int64_t i = 0; i < D; i++) var += pow(xs[(b * L + l) * D + i] - mean, 2) / (double)D;
            for (int64_t i = 0; i < D; i++)
                ref[(b * L + l) * D + i] = (xs[(b * L + l) * D + i] - mean) / sqrt(var + 1e-6) *
                                               (1 + ms[b * 6 * D + D + i]) + ms[b * 6 * D + i];
        }
    double e = rel_err(y.data, ref, B * L * D);
    CHECK(e < 1e-5, "rel err %g", e);
    be->ops->reset(be, mark);
}

static void rope_interleaved_and_half_rotate_pairs(void) {
    int64_t L = 3, H = 2, Dh = 8, P = Dh / 2;
    size_t mark = be->ops->mark(be);
    for (int mode = 0; mode < 2; mode++) {
        qi_tensor x = act(4, 1, L, H, Dh), c = act(2, L, P, 0, 0), s = act(2, L, P, 0, 0);
        fill(&x);
        float *cs = c.data, *ss = s.data;
        for (int64_t i = 0; i < L * P; i++) {
            double ang = 0.3 * (double)i;
            cs[i] = (float)cos(ang);
            ss[i] = (float)sin(ang);
        }
        double ref[48];
        const float *xs = x.data;
        for (int64_t l = 0; l < L; l++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t m = 0; m < P; m++) {
                    int64_t i0 = mode ? m : 2 * m, i1 = mode ? m + P : 2 * m + 1, base = (l * H + h) * Dh;
                    double a = xs[base + i0], b = xs[base + i1];
                    ref[base + i0] = a * cs[l * P + m] - b * ss[l * P + m];
                    ref[base + i1] = a * ss[l * P + m] + b * cs[l * P + m];
                }
        be->ops->rope(be, &x, &c, &s, mode ? QI_ROPE_HALF : QI_ROPE_INTERLEAVED);
        double e = rel_err(x.data, ref, L * H * Dh);
        CHECK(e < 1e-6, "mode %d rel err %g", mode, e);
    }
    be->ops->reset(be, mark);
}

static void conv2d_3x3_matches_direct_convolution(void) {
    int64_t Ci = 3, Co = 5, H = 7, W = 6;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, Ci, H, W, 0), w = act(4, Co, Ci, 3, 3), b = act(1, Co, 0, 0, 0), y = act(3, Co, H, W, 0);
    fill(&x), fill(&w), fill(&b);
    be->ops->conv2d(be, &x, &w, &b, 1, &y);
    double *ref = malloc(sizeof(double) * Co * H * W);
    const float *xs = x.data, *ws = w.data, *bs = b.data;
    for (int64_t o = 0; o < Co; o++)
        for (int64_t r = 0; r < H; r++)
            for (int64_t c = 0; c < W; c++) {
                double s = bs[o];
                for (int64_t i = 0; i < Ci; i++)
                    for (int dy = 0; dy < 3; dy++)
                        for (int dx = 0; dx < 3; dx++) {
                            int64_t yy = r + dy - 1, xx = c + dx - 1;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            s += ws[((o * Ci + i) * 3 + dy) * 3 + dx] * (double)xs[(i * H + yy) * W + xx];
                        }
                ref[(o * H + r) * W + c] = s;
            }
    double e = rel_err(y.data, ref, Co * H * W);
    CHECK(e < 1e-5, "rel err %g", e);
    /* and 1×1 without padding */
    qi_tensor w1 = act(4, Co, Ci, 1, 1), y1 = act(3, Co, H, W, 0);
    fill(&w1);
    be->ops->conv2d(be, &x, &w1, NULL, 0, &y1);
    const float *w1s = w1.data;
    for (int64_t o = 0; o < Co; o++)
        for (int64_t p = 0; p < H * W; p++) {
            double s = 0;
            for (int64_t i = 0; i < Ci; i++) s += w1s[o * Ci + i] * (double)xs[i * H * W + p];
            ref[o * H * W + p] = s;
        }
    e = rel_err(y1.data, ref, Co * H * W);
    CHECK(e < 1e-5, "1x1 rel err %g", e);
    free(ref);
    be->ops->reset(be, mark);
}

static void cfg_combine_rescales_to_the_cond_norm(void) {
    size_t mark = be->ops->mark(be);
    qi_tensor c = act(2, 3, 8, 0, 0), u = act(2, 3, 8, 0, 0), o = act(2, 3, 8, 0, 0);
    fill(&c), fill(&u);
    be->ops->cfg_combine(be, &c, &u, 4.0f, &o);
    qi_tensor c2 = act(2, 3, 8, 0, 0); /* in place: out aliases cond */
    memcpy(c2.data, c.data, sizeof(float) * 24);
    be->ops->cfg_combine(be, &c2, &u, 4.0f, &c2);
    CHECK(!memcmp(c2.data, o.data, sizeof(float) * 24), "in-place result differs");
    const float *cs = c.data, *us = u.data, *os = o.data;
    for (int r = 0; r < 3; r++) {
        double nc = 0, no = 0, dot = 0, ng = 0;
        for (int i = 0; i < 8; i++) {
            double g = us[r * 8 + i] + 4.0 * (cs[r * 8 + i] - us[r * 8 + i]);
            nc += cs[r * 8 + i] * (double)cs[r * 8 + i];
            no += os[r * 8 + i] * (double)os[r * 8 + i];
            dot += g * os[r * 8 + i];
            ng += g * g;
        }
        CHECK(fabs(sqrt(no) - sqrt(nc)) < 1e-5 * sqrt(nc), "row %d norm", r);
        CHECK(fabs(dot / sqrt(ng * no) - 1) < 1e-6, "row %d direction", r);
    }
    be->ops->reset(be, mark);
}

static void channel_rms_norm_and_upsample(void) {
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, 4, 2, 3, 0), g = act(1, 4, 0, 0, 0), y = act(3, 4, 2, 3, 0), up = act(3, 4, 4, 6, 0);
    fill(&x), fill(&g);
    be->ops->channel_rms_norm(be, &x, &g, NULL, &y);
    const float *xs = x.data, *gs = g.data, *ys = y.data;
    for (int p = 0; p < 6; p++) {
        double n = 0;
        for (int c = 0; c < 4; c++) n += xs[c * 6 + p] * (double)xs[c * 6 + p];
        for (int c = 0; c < 4; c++)
            CHECK(fabs(ys[c * 6 + p] - xs[c * 6 + p] / sqrt(n) * 2.0 * gs[c]) < 1e-5, "pixel %d", p);
    }
    be->ops->upsample2x(be, &x, &up);
    const float *us = up.data;
    CHECK(us[(1 * 4 + 3) * 6 + 5] == xs[(1 * 2 + 1) * 3 + 2], "nearest neighbour");
    be->ops->reset(be, mark);
}

/* rms_norm_rope: rows dst_row0.. of dst get the normalised, rotated heads
 * (angles of the destination row); other rows are untouched; the result is
 * bit-identical to rms_norm, copy_rows and rope in sequence; in place works. */
static void rms_norm_rope_writes_rotated_heads_into_dst_rows(void) {
    int64_t B = 2, L = 3, H = 2, Dh = 8, P = Dh / 2, Ld = 5, row0 = 2;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(4, B, L, H, Dh), w = act(1, Dh, 0, 0, 0), ct = act(2, Ld, P, 0, 0), st = act(2, Ld, P, 0, 0);
    qi_tensor dst = act(4, B, Ld, H, Dh), plain = act(4, B, Ld, H, Dh), tmp = act(4, B, L, H, Dh);
    fill(&x), fill(&w);
    for (int64_t i = 0; i < Ld * P; i++) {
        double a = 3.0 * frand();
        ((float *)ct.data)[i] = (float)cos(a);
        ((float *)st.data)[i] = (float)sin(a);
    }
    for (int64_t i = 0; i < qi_numel(&dst); i++) ((float *)dst.data)[i] = ((float *)plain.data)[i] = 7.0f;
    for (int mode = 0; mode < 2; mode++) {
        be->ops->rms_norm_rope(be, &x, &w, 1e-6f, &ct, &st, (qi_rope_mode)mode, &dst, row0);
        /* the plain ops: per-head norm into tmp, rows copied, rope over all of dst */
        qi_tensor x2 = qi_view2(&x, B * L * H, Dh), t2 = qi_view2(&tmp, B * L * H, Dh);
        be->ops->rms_norm(be, &x2, &w, 1e-6f, &t2);
        qi_tensor tr = qi_view2(&tmp, B * L, H * Dh), pr = qi_view2(&plain, B * Ld, H * Dh);
        for (int64_t b = 0; b < B; b++) be->ops->copy_rows(be, &tr, b * L, &pr, b * Ld + row0, L);
        qi_tensor pv = qi_view4(&plain, B, Ld, H, Dh);
        be->ops->rope(be, &pv, &ct, &st, (qi_rope_mode)mode);
        const float *xs = x.data, *ws = w.data, *cs = ct.data, *ss = st.data, *ds = dst.data, *ps = plain.data;
        double num = 0, den = 0;
        int same = 1, untouched = 1;
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < Ld; r++)
                for (int64_t h = 0; h < H; h++) {
                    const float *o = ds + ((b * Ld + r) * H + h) * Dh;
                    const float *q = ps + ((b * Ld + r) * H + h) * Dh;
                    if (r < row0) {
                        for (int64_t i = 0; i < Dh; i++) untouched &= o[i] == 7.0f;
                        continue;
                    }
                    for (int64_t i = 0; i < Dh; i++) same &= o[i] == q[i];
                    const float *xr = xs + ((b * L + r - row0) * H + h) * Dh;
                    double n2 = 0, v[8];
                    for (int64_t i = 0; i < Dh; i++) n2 += (double)xr[i] * xr[i];
                    for (int64_t i = 0; i < Dh; i++) v[i] = xr[i] / sqrt(n2 / Dh + 1e-6) * ws[i];
                    for (int64_t m = 0; m < P; m++) {
                        int64_t i0 = mode ? m : 2 * m, i1 = mode ? m + P : 2 * m + 1;
                        double c = cs[r * P + m], s = ss[r * P + m];
                        double r0 = v[i0] * c - v[i1] * s, r1 = v[i0] * s + v[i1] * c;
                        num += (o[i0] - r0) * (o[i0] - r0) + (o[i1] - r1) * (o[i1] - r1);
                        den += r0 * r0 + r1 * r1;
                    }
                }
        double e = sqrt(num / den);
        printf("  rms_norm_rope mode %d rel err %.2e, bit-identical to rms_norm+copy_rows+rope: %s\n", mode, e,
               same ? "yes" : "no");
        CHECK(e < 1e-5, "mode %d rel err %g", mode, e);
        CHECK(same, "mode %d differs from the plain ops", mode);
        CHECK(untouched, "rows before dst_row0 were written");
    }
    /* in place (dst = x, row 0): the same as the plain ops on a copy */
    qi_tensor x3 = act(4, 1, Ld, H, Dh), ref3 = act(4, 1, Ld, H, Dh);
    fill(&x3);
    memcpy(ref3.data, x3.data, qi_nbytes(&x3));
    be->ops->rms_norm_rope(be, &x3, NULL, 1e-6f, &ct, &st, QI_ROPE_INTERLEAVED, &x3, 0);
    qi_tensor r2 = qi_view2(&ref3, Ld * H, Dh);
    be->ops->rms_norm(be, &r2, NULL, 1e-6f, &r2);
    be->ops->rope(be, &ref3, &ct, &st, QI_ROPE_INTERLEAVED);
    CHECK(!memcmp(x3.data, ref3.data, qi_nbytes(&x3)), "in place differs from the plain ops");
    be->ops->reset(be, mark);
}

/* channel_rms_norm_act = channel_rms_norm then activate, bit for bit, in place too. */
static void channel_rms_norm_act_is_norm_then_silu(void) {
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, 5, 3, 4, 0), g = act(1, 5, 0, 0, 0), y = act(3, 5, 3, 4, 0), ref = act(3, 5, 3, 4, 0);
    fill(&x), fill(&g);
    be->ops->channel_rms_norm_act(be, &x, &g, NULL, QI_ACT_SILU, &y);
    be->ops->channel_rms_norm(be, &x, &g, NULL, &ref);
    be->ops->activate(be, &ref, QI_ACT_SILU, &ref);
    CHECK(!memcmp(y.data, ref.data, qi_nbytes(&y)), "differs from channel_rms_norm + activate");
    const float *xs = x.data, *gs = g.data, *ys = y.data;
    double num = 0, den = 0;
    for (int p = 0; p < 12; p++) {
        double n = 0;
        for (int c = 0; c < 5; c++) n += xs[c * 12 + p] * (double)xs[c * 12 + p];
        for (int c = 0; c < 5; c++) {
            double u = xs[c * 12 + p] / sqrt(n) * sqrt(5.0) * gs[c], r = u / (1 + exp(-u));
            num += (ys[c * 12 + p] - r) * (ys[c * 12 + p] - r);
            den += r * r;
        }
    }
    printf("  channel_rms_norm_act silu rel err %.2e\n", sqrt(num / den));
    CHECK(sqrt(num / den) < 1e-5, "rel err %g", sqrt(num / den));
    be->ops->channel_rms_norm_act(be, &x, &g, NULL, QI_ACT_SILU, &x); /* in place */
    CHECK(!memcmp(x.data, ref.data, qi_nbytes(&x)), "in place differs");
    be->ops->reset(be, mark);
}

/* conv2d_fused: 3×3 conv of the nearest-2× upsampled input plus a residual
 * that is y itself, against a direct double evaluation. */
static void conv2d_fused_upsamples_and_adds_residual(void) {
    int64_t Ci = 3, Co = 4, H = 3, W = 4, H2 = 6, W2 = 8;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, Ci, H, W, 0), w = act(4, Co, Ci, 3, 3), b = act(1, Co, 0, 0, 0), y = act(3, Co, H2, W2, 0);
    fill(&x), fill(&w), fill(&b), fill(&y);
    double *ref = malloc(sizeof(double) * Co * H2 * W2);
    const float *xs = x.data, *ws = w.data, *bs = b.data, *ys = y.data;
    for (int64_t o = 0; o < Co; o++)
        for (int64_t r = 0; r < H2; r++)
            for (int64_t c = 0; c < W2; c++) {
                double s = bs[o] + ys[(o * H2 + r) * W2 + c];
                for (int64_t i = 0; i < Ci; i++)
                    for (int dy = 0; dy < 3; dy++)
                        for (int dx = 0; dx < 3; dx++) {
                            int64_t yy = r + dy - 1, xx = c + dx - 1;
                            if (yy < 0 || yy >= H2 || xx < 0 || xx >= W2) continue;
                            s += ws[((o * Ci + i) * 3 + dy) * 3 + dx] * (double)xs[(i * H + yy / 2) * W + xx / 2];
                        }
                ref[(o * H2 + r) * W2 + c] = s;
            }
    be->ops->conv2d_fused(be, &x, 1, &w, &b, 1, &y, &y);
    double e = rel_err(y.data, ref, Co * H2 * W2);
    printf("  conv2d_fused upsample + residual (res = y) rel err %.2e\n", e);
    CHECK(e < 1e-5, "rel err %g", e);
    free(ref);
    be->ops->reset(be, mark);
}

/* add_gated_layer_norm_mod = add_gated then layer_norm_mod, bit for bit. */
static void add_gated_layer_norm_mod_is_the_two_ops(void) {
    int64_t B = 2, L = 3, D = 16;
    size_t mark = be->ops->mark(be);
    qi_tensor x = act(3, B, L, D, 0), x2 = act(3, B, L, D, 0), y = act(3, B, L, D, 0);
    qi_tensor mod = act(2, B, 6 * D, 0, 0), out = act(3, B, L, D, 0), ref = act(3, B, L, D, 0);
    fill(&x), fill(&y), fill(&mod);
    memcpy(x2.data, x.data, qi_nbytes(&x));
    qi_tensor g = mod, sh = mod, sc = mod;
    g.ne[1] = sh.ne[1] = sc.ne[1] = D;
    g.data = (float *)mod.data + 2 * D, sh.data = (float *)mod.data + 3 * D, sc.data = (float *)mod.data + 4 * D;
    be->ops->add_gated_layer_norm_mod(be, &x, &g, 6 * D, &y, &sh, &sc, 6 * D, 1e-6f, &out);
    be->ops->add_gated(be, &x2, &g, 6 * D, &y);
    be->ops->layer_norm_mod(be, &x2, &sh, &sc, 6 * D, 1e-6f, &ref);
    CHECK(!memcmp(x.data, x2.data, qi_nbytes(&x)), "updated x differs from add_gated");
    CHECK(!memcmp(out.data, ref.data, qi_nbytes(&out)), "out differs from layer_norm_mod of the updated x");
    be->ops->reset(be, mark);
}

int main(void) {
    qi_error err;
    if (qi_backend_cpu_create(2, (size_t)1 << 28, &be, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(linear_with_bf16_weights_and_gelu);
    RUN(attention_gqa_causal_with_key_mask);
    RUN(layer_norm_modulation_uses_strided_chunks);
    RUN(rope_interleaved_and_half_rotate_pairs);
    RUN(conv2d_3x3_matches_direct_convolution);
    RUN(cfg_combine_rescales_to_the_cond_norm);
    RUN(rms_norm_rope_writes_rotated_heads_into_dst_rows);
    RUN(channel_rms_norm_act_is_norm_then_silu);
    RUN(conv2d_fused_upsamples_and_adds_residual);
    RUN(add_gated_layer_norm_mod_is_the_two_ops);
    RUN(channel_rms_norm_and_upsample);
    be->ops->destroy(be);
    TEST_END();
}

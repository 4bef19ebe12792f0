/*
 * backend_caps.h — claims about a backend's `supports` answers that hold for
 * every backend, shared by test_backend_caps.c (CPU) and
 * test_cuda_backend_caps.c (CUDA); test_cuda_vram.c borrows its host data (the
 * claims are marked unused for it).
 *
 * The central claim: for every storage type and every weight-taking op,
 * `supports` says exactly what the code does. A weight of each claimed type
 * goes through `weight` and the op and matches float32 math on the decoded
 * host values; for a type claimed unsupported, `weight` refuses it or the op
 * reports UNSUPPORTED at sync, naming itself.
 */
#ifndef QI_TEST_BACKEND_CAPS_H
#define QI_TEST_BACKEND_CAPS_H

#include "backend/backend.h"
#include "base/types.h"
#include "test.h"

static unsigned caps_rng = 2024;

static float caps_frand(void) { /* uniform in [-1, 1) */
    caps_rng = caps_rng * 1664525u + 1013904223u;
    return ((caps_rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Byte offsets of the f16 scale fields (d, dmin, m) in one block of each
 * GGUF block type (spec vae-and-formats.md B.7.2); -1 ends a list. */
static const int *caps_block_scale_fields(qi_dtype t) {
    static const int at0[] = {0, -1}, at01[] = {0, 2, -1}, q2k[] = {80, 82, -1}, q3k[] = {108, -1},
                     q6k[] = {208, -1};
    switch (t) {
    case QI_Q4_1: case QI_Q5_1: case QI_Q4_K: case QI_Q5_K: return at01;
    case QI_Q2_K: return q2k;
    case QI_Q3_K: return q3k;
    case QI_Q6_K: return q6k;
    default: return at0;
    }
}

/* Fills n elements of storage type t at buf (room for 8 bytes per element)
 * and, for float types, their float32 values at ref. Float values lie in
 * (-2, 2); fp8 bytes have their top exponent bit clear (no NaN or Inf); GGUF
 * blocks are random bytes with every f16 scale field set to a small finite
 * value of either sign. Other types get small integers or zero bytes (no op
 * is expected to read them). */
static void caps_host_data(qi_dtype t, int64_t n, void *buf, float *ref) {
    memset(buf, 0, (size_t)n * 8);
    if (qi_dtype_is_block(t)) {
        const qi_dtype_traits *tt = qi_type_traits(t);
        uint8_t *b = buf;
        int64_t blocks = n / tt->block_elems;
        for (size_t i = 0; i < (size_t)blocks * tt->block_bytes; i++) b[i] = (uint8_t)(caps_frand() * 128.0f + 128.0f);
        for (int64_t k = 0; k < blocks; k++)
            for (const int *f = caps_block_scale_fields(t); *f >= 0; f++) {
                uint16_t h = qi_f32_to_f16(0.02f * caps_frand());
                b[k * (int64_t)tt->block_bytes + *f] = (uint8_t)(h & 0xff);
                b[k * (int64_t)tt->block_bytes + *f + 1] = (uint8_t)(h >> 8);
            }
        qi_to_f32(ref, buf, t, (size_t)n);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float v = caps_frand();
        switch (t) {
        case QI_F32: ((float *)buf)[i] = v; break;
        case QI_F16: ((uint16_t *)buf)[i] = qi_f32_to_f16(v); break;
        case QI_BF16: ((uint16_t *)buf)[i] = qi_f32_to_bf16(v); break;
        case QI_F8_E4M3:
        case QI_F8_E5M2: ((uint8_t *)buf)[i] = (uint8_t)(caps_rng >> 13) & 0xBF; break;
        case QI_I32: ((int32_t *)buf)[i] = (int32_t)(i % 7) - 3; break;
        default: break;
        }
    }
    if (qi_to_f32(ref, buf, t, (size_t)n) != 0) memset(ref, 0, (size_t)n * sizeof(float));
}

/* An activation tensor holding host values; *vals gets what the backend
 * really holds (bf16-rounded on CUDA), read back by download. */
static int caps_act(qi_backend *be, qi_tensor *t, int ndim, const int64_t *ne, float *vals) {
    qi_error err;
    if (qi_be_act(be, t, ndim, ne, &err) != QI_OK) return -1;
    int64_t n = qi_numel(t);
    for (int64_t i = 0; i < n; i++) vals[i] = caps_frand();
    if (be->ops->upload(be, t, vals, &err) != QI_OK) return -1;
    return be->ops->download(be, t, vals, &err) == QI_OK ? 0 : -1;
}

/* After an op with a weight of type t: sync must succeed and the output match
 * ref (relative L2 <= tol) when supports(cap, t), and otherwise report
 * UNSUPPORTED naming the op. */
static void caps_expect(qi_backend *be, qi_cap cap, qi_dtype t, const char *op, const qi_tensor *y,
                        const double *ref, double tol) {
    qi_error err = {{0}};
    qi_status st = be->ops->sync(be, &err);
    if (!qi_backend_supports(be, cap, t)) {
        CHECK(st == QI_ERR_UNSUPPORTED, "%s: %s with a %s weight is claimed unsupported but sync says %d (%s)",
              be->ops->name, op, qi_dtype_name(t), (int)st, err.msg);
        CHECK(strstr(err.msg, op) != NULL, "%s: the error should name %s: %s", be->ops->name, op, err.msg);
        return;
    }
    CHECK(st == QI_OK, "%s: %s with a %s weight: %s", be->ops->name, op, qi_dtype_name(t), err.msg);
    int64_t n = qi_numel(y);
    float *got = malloc((size_t)n * sizeof(float));
    if (!got || be->ops->download(be, y, got, &err) != QI_OK) {
        CHECK(0, "%s: download of %s output: %s", be->ops->name, op, err.msg);
        free(got);
        return;
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    double e = sqrt(num / (den > 0 ? den : 1));
    CHECK(e <= tol, "%s: %s with a %s weight: relative error %.2e > %.1e", be->ops->name, op,
          qi_dtype_name(t), e, tol);
    free(got);
}

/* y[M, N] = x[M, K] · w[N, K]ᵀ with w of type t; K = w's last dim (24, or
 * 256 for block types), at most 256. */
static void caps_linear(qi_backend *be, qi_dtype t, const qi_tensor *w, const float *wref, double tol) {
    enum { M = 5, KMAX = 256, N = 7 };
    const int K = (int)w->ne[1];
    size_t mark = be->ops->mark(be);
    qi_tensor x, y;
    float xv[M * KMAX];
    int64_t xne[2] = {M, K};
    qi_error err;
    if (caps_act(be, &x, 2, xne, xv) || qi_be_act2(be, &y, M, N, &err)) {
        CHECK(0, "%s: linear inputs", be->ops->name);
        be->ops->reset(be, mark);
        return;
    }
    double ref[M * N];
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)xv[m * K + k] * wref[n * K + k];
            ref[m * N + n] = s;
        }
    be->ops->linear(be, &x, w, NULL, QI_ACT_NONE, &y);
    caps_expect(be, QI_CAP_LINEAR, t, "linear", &y, ref, tol);
    be->ops->reset(be, mark);
}

/* y[Co, H, W] = conv2d(x[Ci, H, W], w[Co, Ci, 3, 3]), pad 1, w of type t. */
static void caps_conv2d(qi_backend *be, qi_dtype t, const qi_tensor *w, const float *wref, double tol) {
    enum { Ci = 3, Co = 4, H = 5, W = 8 };
    size_t mark = be->ops->mark(be);
    qi_tensor x, y;
    float xv[Ci * H * W];
    int64_t xne[3] = {Ci, H, W};
    qi_error err;
    if (caps_act(be, &x, 3, xne, xv) || qi_be_act3(be, &y, Co, H, W, &err)) {
        CHECK(0, "%s: conv2d inputs", be->ops->name);
        be->ops->reset(be, mark);
        return;
    }
    double ref[Co * H * W];
    for (int co = 0; co < Co; co++)
        for (int r = 0; r < H; r++)
            for (int q = 0; q < W; q++) {
                double s = 0;
                for (int ci = 0; ci < Ci; ci++)
                    for (int dy = 0; dy < 3; dy++)
                        for (int dx = 0; dx < 3; dx++) {
                            int iy = r + dy - 1, ix = q + dx - 1;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            s += (double)xv[(ci * H + iy) * W + ix] * wref[((co * Ci + ci) * 3 + dy) * 3 + dx];
                        }
                ref[(co * H + r) * W + q] = s;
            }
    be->ops->conv2d(be, &x, w, NULL, 1, &y);
    caps_expect(be, QI_CAP_CONV2D, t, "conv2d", &y, ref, tol);
    be->ops->reset(be, mark);
}

/* out[n, :] = table[ids[n], :] with table [V, D] of type t; D = the table's
 * last dim (16, or 256 for block types), at most 256. */
static void caps_embedding(qi_backend *be, qi_dtype t, const qi_tensor *table, const float *tref, double tol) {
    enum { V = 6, DMAX = 256, NI = 5 };
    const int D = (int)table->ne[1];
    size_t mark = be->ops->mark(be);
    qi_tensor ids, out;
    int32_t idv[NI] = {3, 0, 5, 3, 1};
    int64_t ine[1] = {NI};
    qi_error err;
    if (be->ops->tensor(be, &ids, QI_I32, 1, ine, &err) || be->ops->upload(be, &ids, idv, &err) ||
        qi_be_act2(be, &out, NI, D, &err)) {
        CHECK(0, "%s: embedding inputs: %s", be->ops->name, err.msg);
        be->ops->reset(be, mark);
        return;
    }
    double ref[NI * DMAX];
    for (int i = 0; i < NI; i++)
        for (int d = 0; d < D; d++) ref[i * D + d] = tref[idv[i] * D + d];
    be->ops->embedding(be, table, &ids, &out);
    caps_expect(be, QI_CAP_EMBEDDING, t, "embedding", &out, ref, tol);
    be->ops->reset(be, mark);
}

/* One weight of type t with shape ne (and `scale`, NULL: none) through
 * `weight`, then `run` against the decoded values times the scale. Returns
 * whether `weight` accepted it; checks that matches supports(WEIGHT, t). */
static int caps_with_scaled_weight(qi_backend *be, qi_dtype t, int ndim, const int64_t *ne,
                                   const qi_weight_scale *scale,
                                   void (*run)(qi_backend *, qi_dtype, const qi_tensor *, const float *, double),
                                   double tol) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    void *host = malloc((size_t)n * 8);
    float *ref = malloc((size_t)n * sizeof(float));
    qi_tensor w;
    qi_error err = {{0}};
    caps_host_data(t, n, host, ref);
    if (scale && scale->form != QI_SCALE_NONE)
        for (int64_t i = 0; i < n; i++)
            ref[i] *= scale->form == QI_SCALE_TENSOR ? scale->scale : scale->row_scale[i / (n / ne[0])];
    qi_status st = be->ops->weight(be, &w, t, ndim, ne, host, scale, &err);
    int claimed = qi_backend_supports(be, QI_CAP_WEIGHT, t);
    CHECK((st == QI_OK) == claimed, "%s: weight of type %s: supports says %d, weight returned %d (%s)",
          be->ops->name, qi_dtype_name(t), claimed, (int)st, err.msg);
    if (st != QI_OK) {
        CHECK(st == QI_ERR_UNSUPPORTED && strstr(err.msg, qi_dtype_name(t)),
              "%s: refusing a %s weight should say UNSUPPORTED and name the type: %d %s", be->ops->name,
              qi_dtype_name(t), (int)st, err.msg);
    } else {
        run(be, t, &w, ref, tol);
        be->ops->weight_free(be, &w);
    }
    free(host);
    free(ref);
    return st == QI_OK;
}

static int caps_with_weight(qi_backend *be, qi_dtype t, int ndim, const int64_t *ne,
                            void (*run)(qi_backend *, qi_dtype, const qi_tensor *, const float *, double),
                            double tol) {
    return caps_with_scaled_weight(be, t, ndim, ne, NULL, run, tol);
}

/* Every storage type through every weight-taking op (tol: relative L2 of a
 * supported case; the backend's float32-math error for its weight type).
 * Block types get rows of 256 elements (one K block, eight small blocks);
 * conv kernels ([.., 3, 3]) cannot be a whole number of blocks, so conv2d
 * runs on the element types only. */
__attribute__((unused)) static void caps_check_weight_ops(qi_backend *be, double tol) {
    for (int t = 0; t < QI_DTYPE_COUNT; t++) {
        qi_dtype dt = (qi_dtype)t;
        int64_t row = qi_dtype_is_block(dt) ? 256 : 0;
        int64_t lin[2] = {7, row ? row : 24}, conv[4] = {4, 3, 3, 3}, emb[2] = {6, row ? row : 16};
        for (int cap = QI_CAP_LINEAR; cap <= QI_CAP_EMBEDDING; cap++) /* an op's claim needs the weight's */
            CHECK(!qi_backend_supports(be, (qi_cap)cap, dt) || qi_backend_supports(be, QI_CAP_WEIGHT, dt),
                  "%s: cap %d claims %s without `weight` accepting it", be->ops->name, cap, qi_dtype_name(dt));
        caps_with_weight(be, dt, 2, lin, caps_linear, tol);
        if (!row) caps_with_weight(be, dt, 4, conv, caps_conv2d, tol);
        caps_with_weight(be, dt, 2, emb, caps_embedding, tol);
    }
}

/* A scaled weight gives scaled results: fp8 and a block type with a scale
 * per tensor and per output row, through linear and embedding (tables are
 * scaled per row, as the LightX2V files' modulation weights are). */
__attribute__((unused)) static void caps_check_scaled_weights(qi_backend *be, double tol) {
    static const float rows7[7] = {0.5f, 3.0f, 1e-3f, 7.25f, 0.125f, 2.0f, 40.0f};
    const qi_weight_scale per_tensor = {QI_SCALE_TENSOR, 0.03125f, NULL}, per_row = {QI_SCALE_ROW, 1.0f, rows7};
    const qi_dtype types[] = {QI_F8_E4M3, QI_BF16, QI_Q4_K, QI_Q8_0};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        qi_dtype dt = types[i];
        int64_t K = qi_dtype_is_block(dt) ? 256 : 24;
        int64_t lin[2] = {7, K}, emb[2] = {6, K};
        CHECK(caps_with_scaled_weight(be, dt, 2, lin, &per_tensor, caps_linear, tol), "%s: scaled %s",
              be->ops->name, qi_dtype_name(dt));
        CHECK(caps_with_scaled_weight(be, dt, 2, lin, &per_row, caps_linear, tol), "%s: row-scaled %s",
              be->ops->name, qi_dtype_name(dt));
        CHECK(caps_with_scaled_weight(be, dt, 2, emb, &per_tensor, caps_embedding, tol), "%s: scaled %s table",
              be->ops->name, qi_dtype_name(dt));
        CHECK(caps_with_scaled_weight(be, dt, 2, emb, &per_row, caps_embedding, tol), "%s: row-scaled %s table",
              be->ops->name, qi_dtype_name(dt));
    }
}

/* The capabilities about optional slots agree with the table. */
__attribute__((unused)) static void caps_check_optional_slots(qi_backend *be) {
    const qi_backend_ops *o = be->ops;
    int graphs = o->persistent && o->graph_begin && o->graph_end && o->graph_launch && o->graph_free;
    CHECK(qi_backend_supports(be, QI_CAP_GRAPHS, QI_F32) == graphs, "%s: GRAPHS claim vs slots", o->name);
    CHECK(qi_backend_supports(be, QI_CAP_RANDOM_WEIGHTS, QI_F32) == (o->random_weights != NULL),
          "%s: RANDOM_WEIGHTS claim vs slot", o->name);
    CHECK(qi_backend_check_ops(o, NULL) == QI_OK, "%s: its own table passes the check", o->name);
}

#endif

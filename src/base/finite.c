/*
 * finite.c — NaN / Inf scans (finite.h).
 *
 * The element scans work in chunks: a branch-free OR over the chunk that the
 * compiler vectorises (an IEEE value is non-finite iff its exponent bits are
 * all ones), and only a chunk that has a hit is scanned again for the index.
 * A large weight's scan is cut into pieces of whole blocks that a lent
 * parallel-for runs at once; each piece reports its own first hit and the
 * earliest piece with one gives the answer, so it is the one-thread scan's
 * whatever order the pieces finish in.
 */
#include "base/finite.h"

#include <stdlib.h>
#include <string.h>

#include "base/types.h"

#define CHUNK 4096

/* One chunk scan per element width: mask = exponent bits. Returns the index
 * of the first non-finite element or -1. */
#define DEFINE_SCAN(fn, type, mask)                                         \
    static int64_t fn(const void *x, int64_t n) {                           \
        const uint8_t *b = x; /* mapped data: loads via memcpy, any alignment */ \
        for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {                         \
            int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;                    \
            const uint8_t *c = b + (size_t)i0 * sizeof(type);               \
            unsigned hit = 0;                                               \
            for (int64_t i = 0; i < m; i++) {                               \
                type v;                                                     \
                memcpy(&v, c + (size_t)i * sizeof v, sizeof v);             \
                hit |= (unsigned)((v & (type)(mask)) == (type)(mask));      \
            }                                                               \
            if (!hit) continue;                                             \
            for (int64_t i = 0; i < m; i++) {                               \
                type v;                                                     \
                memcpy(&v, c + (size_t)i * sizeof v, sizeof v);             \
                if ((v & (type)(mask)) == (type)(mask)) return i0 + i;      \
            }                                                               \
        }                                                                   \
        return -1;                                                          \
    }

DEFINE_SCAN(scan32, uint32_t, 0x7f800000u) /* F32 */
DEFINE_SCAN(scan_f16, uint16_t, 0x7c00u)   /* F16 */
DEFINE_SCAN(scan_bf16, uint16_t, 0x7f80u)  /* BF16 */
DEFINE_SCAN(scan_e4m3, uint8_t, 0x7fu)     /* E4M3fn: only S.1111.111 is NaN, no Inf */
DEFINE_SCAN(scan_e5m2, uint8_t, 0x7cu)     /* E5M2: the high byte of an f16 */

/* Mantissa bits beyond the exponent: nonzero means NaN, zero Inf. */
static int elem_is_nan(const void *data, qi_dtype t, int64_t i) {
    const uint8_t *p = data;
    switch (t) {
    case QI_F32: {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        return (u & 0x7fffffu) != 0;
    }
    case QI_F16: {
        uint16_t u;
        memcpy(&u, p + 2 * i, 2);
        return (u & 0x3ffu) != 0;
    }
    case QI_BF16: {
        uint16_t u;
        memcpy(&u, p + 2 * i, 2);
        return (u & 0x7fu) != 0;
    }
    case QI_F8_E4M3: return 1;
    case QI_F8_E5M2: return (p[i] & 3) != 0;
    default: return 1;
    }
}

/* Block types: dequantise a run of blocks into a stack buffer and test it. */
static int64_t dequant_scan(const void *data, const qi_dtype_traits *tt, int64_t n, int *is_nan) {
    float buf[CHUNK];
    int64_t per = CHUNK / tt->block_elems * tt->block_elems;
    if (per <= 0) return -1; /* no block type is larger than CHUNK */
    const uint8_t *p = data;
    for (int64_t i0 = 0; i0 < n; i0 += per) {
        int64_t m = n - i0 < per ? n - i0 : per;
        tt->to_f32(p + (size_t)(i0 / tt->block_elems) * tt->block_bytes, buf, m);
        int64_t at = qi_find_nonfinite_f32(buf, m, is_nan);
        if (at >= 0) return i0 + at;
    }
    return -1;
}

/* 1 when the f16 at p is NaN or Inf (all exponent bits set). */
static int f16_nonfinite(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    return (h & 0x7c00u) == 0x7c00u;
}

/* Block types whose traits name their f16 scale fields: a block's values are
 * d·(small integer) [± m·(small integer)], at most 65504 · 63 · 127 in size,
 * so they are all finite iff d and m are (a non-finite d gives ±Inf, or NaN
 * where it meets a zero). Reading 2–4 bytes of each block instead of
 * dequantising it makes this ~50× cheaper (the load of a 20 B-parameter Q4_K
 * transformer scanned for ~100 s before); the block found is then dequantised
 * for the exact element and kind, so the answer is the full scan's. */
static int64_t scan_blocks(const void *data, const qi_dtype_traits *tt, int64_t n, int *is_nan) {
    if (tt->f16_field[0] < 0) return dequant_scan(data, tt, n, is_nan);
    const uint8_t *p = data;
    int64_t blocks = n / tt->block_elems;
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *blk = p + (size_t)b * tt->block_bytes;
        if (!f16_nonfinite(blk + tt->f16_field[0]) && (tt->f16_field[1] < 0 || !f16_nonfinite(blk + tt->f16_field[1])))
            continue;
        int64_t at = dequant_scan(blk, tt, tt->block_elems, is_nan);
        if (at >= 0) return b * tt->block_elems + at;
    }
    return -1;
}

int64_t qi_find_nonfinite_f32(const float *x, int64_t n, int *is_nan) {
    int64_t at = scan32(x, n);
    if (at >= 0 && is_nan) *is_nan = elem_is_nan(x, QI_F32, at);
    return at;
}

int64_t qi_find_nonfinite(const void *data, qi_dtype t, int64_t n, int *is_nan) {
    int64_t at = -1;
    if (n <= 0 || !data) return -1;
    switch (t) {
    case QI_F32: at = scan32(data, n); break; /* mapped tensors are element-aligned */
    case QI_F16: at = scan_f16(data, n); break;
    case QI_BF16: at = scan_bf16(data, n); break;
    case QI_F8_E4M3: at = scan_e4m3(data, n); break;
    case QI_F8_E5M2: at = scan_e5m2(data, n); break;
    default: {
        const qi_dtype_traits *tt = qi_type_traits(t);
        if (!tt || !tt->to_f32 || !qi_dtype_is_block(t)) return -1;
        return scan_blocks(data, tt, n, is_nan);
    }
    }
    if (at >= 0 && is_nan) *is_nan = elem_is_nan(data, t, at);
    return at;
}

/* Elements per piece of a scan by pread: whole blocks of every block type,
 * at most 1 MiB of float32 (the buffer stays in cache). */
#define READ_PIECE ((int64_t)1 << 18)

/* qi_find_nonfinite of a weight, reading it by pread (qi_mapped_read) a
 * piece at a time when it lies in a file mapping: the scan is the first
 * touch of each weight at load, and through the mapping that touch pays a
 * page fault every few pages, on the loading thread, for every byte of the
 * model (the fp8 transformer's 20 GB at ~2.6 GB/s on an H200, run V; the
 * upload then reads the same bytes by pread again, from the page cache).
 * The same answer either way. Only with QI_LOAD_PREAD=1 (and not
 * QI_LOAD_FAST=0): on the H200 the scan through the mapping measured faster
 * (runs Z, AA), so it is the default. */
static int64_t find_nonfinite_read(const void *data, qi_dtype t, int64_t n, int *is_nan) {
    const char *fast = getenv("QI_LOAD_FAST"), *pr = getenv("QI_LOAD_PREAD");
    int64_t piece = n < READ_PIECE ? n : READ_PIECE;
    char *buf = NULL;
    if (!(fast && fast[0] == '0') && pr && pr[0] == '1' && n > 0 && qi_row_bytes(t, n) > 0 &&
        qi_row_bytes(t, piece) > 0)
        buf = malloc((size_t)qi_row_bytes(t, piece));
    for (int64_t i0 = 0; buf && i0 < n; i0 += piece) {
        int64_t m = n - i0 < piece ? n - i0 : piece;
        const char *src = (const char *)data + qi_row_bytes(t, i0);
        size_t bytes = (size_t)qi_row_bytes(t, m);
        if (!qi_mapped_read(buf, src, bytes)) {
            if (i0 == 0) break; /* not in a mapped file: scanned in place below */
            memcpy(buf, src, bytes);
        }
        int64_t at = qi_find_nonfinite(buf, t, m, is_nan);
        if (at >= 0 || i0 + m == n) {
            free(buf);
            return at >= 0 ? i0 + at : -1;
        }
    }
    free(buf);
    return qi_find_nonfinite(data, t, n, is_nan);
}

/* One piece of a split scan: its elements in, the first non-finite one
 * (relative to the piece) and its kind out. */
typedef struct scan_piece {
    const void *data;
    qi_dtype t;
    int64_t n;
    int64_t at; /* -1: all finite */
    int is_nan;
} scan_piece;

static void scan_piece_run(void *job) {
    scan_piece *p = job;
    p->is_nan = 1;
    p->at = find_nonfinite_read(p->data, p->t, p->n, &p->is_nan);
}

int64_t qi_find_nonfinite_pieces(const void *data, qi_dtype t, int64_t n, int *is_nan, const qi_parallel_for *par,
                                 int64_t piece) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    int64_t be = tt ? tt->block_elems : 1;
    piece = piece < be ? be : (piece + be - 1) / be * be; /* whole blocks: qi_row_bytes finds each start */
    int64_t count = n > 0 ? (n + piece - 1) / piece : 0;
    scan_piece *ps = NULL;
    if (!par || !par->run || par->threads < 2 || count < 2 || count > INT32_MAX || !data ||
        qi_row_bytes(t, n) < 0 || !(ps = malloc((size_t)count * sizeof *ps)))
        return find_nonfinite_read(data, t, n, is_nan); /* one piece, or no room to list them: here, whole */
    for (int64_t i = 0; i < count; i++) {
        int64_t i0 = i * piece;
        ps[i] = (scan_piece){(const char *)data + qi_row_bytes(t, i0), t, n - i0 < piece ? n - i0 : piece, -1, 1};
    }
    par->run(par->ctx, scan_piece_run, ps, sizeof *ps, (int)count);
    int64_t at = -1;
    for (int64_t i = 0; i < count && at < 0; i++) /* pieces finish in any order: the earliest hit wins */
        if (ps[i].at >= 0) {
            at = i * piece + ps[i].at;
            if (is_nan) *is_nan = ps[i].is_nan;
        }
    free(ps);
    return at;
}

/* Elements per piece of a weight's split scan: ~1 MiB (a 1 MiB piece takes
 * ~0.4 ms to scan through a fresh mapping, against a few µs to hand it out),
 * smaller for a weight that would give fewer pieces than threads, but not
 * under 256 KiB. */
static int64_t scan_piece_elems(qi_dtype t, int64_t bytes, int threads) {
    const qi_dtype_traits *tt = qi_type_traits(t);
    int64_t want = bytes / (threads > 1 ? threads : 1);
    if (want > ((int64_t)1 << 20)) want = (int64_t)1 << 20;
    if (want < ((int64_t)1 << 18)) want = (int64_t)1 << 18;
    return tt && tt->block_bytes ? want / (int64_t)tt->block_bytes * tt->block_elems : want;
}

qi_status qi_check_weight_finite(const char *file, const char *name, const void *data, qi_dtype t, int64_t n,
                                 const qi_parallel_for *par, qi_error *err) {
    int is_nan = 1;
    int64_t bytes = qi_row_bytes(t, n > 0 ? n : 0), at;
    if (par && bytes >= QI_SCAN_ALONE_BYTES)
        at = qi_find_nonfinite_pieces(data, t, n, &is_nan, par, scan_piece_elems(t, bytes, par->threads));
    else
        at = find_nonfinite_read(data, t, n, &is_nan);
    if (at < 0) return QI_OK;
    return qi_fail(err, QI_ERR_FORMAT,
                   "%s: tensor %s has %s at element %lld (of %lld, %s): the file is corrupt; "
                   "download it again",
                   file ? file : "(weights)", name ? name : "(unnamed)", is_nan ? "a NaN" : "an Inf",
                   (long long)at, (long long)n, qi_dtype_name(t));
}

// upload_host_check.cu — the CUDA upload's host side on a machine without a GPU: host_convert and
// qc_convert (cuda_upload.cu, included) give the same bytes with pread (QI_LOAD_PREAD) as with a memcpy
// or conversion straight from the mapping, for every source type, scale form, size and offset tried,
// split over a work pool or not. Not built by CMake (it includes a .cu file into a CPU program):
//   cmake --build build --target qwenimage   (the CPU build's library: no CUDA objects to clash)
//   nvcc -O2 -std=c++17 -Isrc -Iinclude dev/cuda/upload_host_check.cu -o /tmp/uhc build/libqwenimage.a \
//     $(pkg-config --libs libcjson libpcre2-8 libutf8proc libpng libwebp) -lm && /tmp/uhc
// Last run (branch load, 2026-12-04): 292 cases, 0 differ.
#include "backend/cuda/cuda_upload.cu"
#include <cstdio>
extern "C" {
#include "base/base.h"
}
int main() {
    const char *path = "/tmp/qi_upload_host_check.bin";
    size_t bytes = (size_t)40 << 20;
    unsigned char *d = (unsigned char *)malloc(bytes);
    uint32_t r = 12345;
    for (size_t i = 0; i < bytes; i++) { r = r * 1664525u + 1013904223u; d[i] = (unsigned char)(r >> 24); }
    // keep float32 finite-ish: clear exponent's top bit in every 4th byte
    for (size_t i = 3; i < bytes; i += 4) d[i] &= 0x3F;
    FILE *f = fopen(path, "wb"); fwrite(d, 1, bytes, f); fclose(f);
    void *map; size_t size; qi_error err = {{0}};
    if (qi_map_file(path, &map, &size, &err)) { printf("%s\n", err.msg); return 1; }
    qi_dtype types[] = {QI_F32, QI_BF16, QI_F16, QI_F8_E4M3, QI_Q4_K, QI_Q8_0};
    float rows[4096]; for (int i = 0; i < 4096; i++) rows[i] = 0.5f + i * 0.001f;
    convert_scale scs[3] = {{QI_SCALE_NONE, 1, NULL, 1}, {QI_SCALE_TENSOR, 0.37f, NULL, 1}, {QI_SCALE_ROW, 1, rows, 3072}};
    size_t ns[] = {0, 1, 256, 16384, 16384 + 256, 100000 + 96 * 0 , 3072 * 1000};
    int bad = 0, runs = 0;
    cuda_impl *c = (cuda_impl *)calloc(1, sizeof(cuda_impl));
    c->load_cores = 4; c->load_threads = 0;
    qi_work_pool_new(3, &c->work_pool, &err);
    for (int t = 0; t < 6; t++) for (int s = 0; s < 3; s++) for (int k = 0; k < 7; k++) for (int off = 0; off < 2; off++) {
        size_t n = ns[k] / 256 * 256; if (ns[k] < 256) n = ns[k];
        if (qi_dtype_is_block(types[t]) && n % 256) continue;
        size_t sb = (size_t)qi_row_bytes(types[t], (int64_t)n);
        size_t o = off ? 4096 * 3 + 8 : 0;
        if (o + sb > bytes) continue;
        const char *src = (const char *)map + o;
        for (int out = 0; out < 2; out++) {
            qi_dtype od = out ? QI_BF16 : types[t];
            if (qi_dtype_is_block(od) || od == QI_F8_E4M3) { if (s) continue; od = types[t]; }
            if (od == types[t] && s) continue;
            size_t ob = qi_dtype_is_block(od) ? sb : n * qi_dtype_size(od);
            char *a = (char *)malloc(ob + 1), *b = (char *)malloc(ob + 1), *cc = (char *)malloc(ob + 1), *dd = (char *)malloc(ob + 1);
            qi_dtype odt = qi_dtype_is_block(od) ? QI_U8 : od, sdt = qi_dtype_is_block(od) ? QI_U8 : types[t];
            size_t nn = qi_dtype_is_block(od) ? sb : n;
            if (qi_dtype_is_block(od) && qi_dtype_is_block(types[t])) { odt = QI_U8; sdt = QI_U8; }
            host_convert(a, odt, src, sdt, nn, &scs[s], 7, 0);
            host_convert(b, odt, src, sdt, nn, &scs[s], 7, 1);
            c->load_pread = 1; qc_convert(c, cc, odt, src, sdt, nn, &scs[s], 7);
            c->load_pread = 0; qc_convert(c, dd, odt, src, sdt, nn, &scs[s], 7);
            size_t cmpb = nn * qi_dtype_size(odt);
            runs++;
            if (memcmp(a, b, cmpb) || memcmp(a, cc, cmpb) || memcmp(a, dd, cmpb)) { bad++; printf("DIFF type %s out %s scale %d n %zu off %zu\n", qi_dtype_name(types[t]), qi_dtype_name(odt), s, nn, o); }
            free(a); free(b); free(cc); free(dd);
        }
    }
    printf("%d cases, %d differ\n", runs, bad);
    qi_unmap_file(map, size);
    remove(path);
    return bad != 0;
}

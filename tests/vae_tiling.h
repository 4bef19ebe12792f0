/*
 * vae_tiling.h — setting a VAE's tiling in one call, shared by test_vae.c
 * (the decoder's tiles) and test_vae_encode_tiles.c (the encoder's), so that
 * both programs put the VAE into a mode the same way: the library's defaults
 * for every field the claim does not name.
 */
#ifndef QI_TEST_VAE_TILING_H
#define QI_TEST_VAE_TILING_H

#include <stddef.h>

#include "model/vae.h"
#include "test.h"

/* Sets v's tiling to `mode` with tiles of `tile` latent pixels every `stride`;
 * `budget` (bytes) replaces the default untiled-activation budget where not 0.
 * A refusal is a failed CHECK naming the library's message. */
static inline void set_tiling(qi_vae *v, qi_vae_tile_mode mode, int tile, int stride, size_t budget) {
    qi_vae_tiling t = qi_vae_tiling_default();
    t.mode = mode;
    t.tile_latent = tile;
    t.stride_latent = stride;
    if (budget) t.max_untiled_bytes = budget;
    qi_error err;
    CHECK(qi_vae_set_tiling(v, &t, &err) == QI_OK, "%s", err.msg);
}

#endif

/*
 * dit_internal.h — what dit.c (config, weights, rotary tables, the forward
 * ops) and dit_call.c (a call's inputs, schedule mode, qi_dit_forward and the
 * Edit entry points) share: the weights' layout, the activations of one call,
 * the call itself, and the forward's pieces. Not part of the library's
 * interface; only those two files include it.
 */
#ifndef QI_DIT_INTERNAL_H
#define QI_DIT_INTERNAL_H

#include "model/dit.h"


#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/weight_stream.h"
#include "base/types.h"
#include "io/model_dir.h"
#include "io/source.h"
#include "parallel/ulysses.h"

#define DIT_EPS 1e-6f            /* every LayerNorm / RMSNorm (spec §1.1) */
#define DIT_TIME_CHANNELS QI_DIT_TIME_CHANNELS
#define DIT_ROPE_CACHE 4         /* CFG alternates two text lengths; keep a few shapes */

/* One runtime LoRA module on a Linear: y += coef · up (down x). */
typedef struct dit_lora_term {
    qi_tensor down; /* [rank, in], the file's type (bf16/f32 on the CPU; the CUDA backend keeps bf16) */
    qi_tensor up;   /* [out, rank] */
    float coef;     /* strength · scale (lora.c) */
    int spec;       /* index of the weight_spec of the Linear's weight */
} dit_lora_term;

typedef struct dit_linear {
    qi_tensor w;                /* [out, in] */
    qi_tensor b;                /* [out] */
    const dit_lora_term *lora;  /* runtime LoRA modules on this Linear (NULL: none) */
    int n_lora;
} dit_linear;

typedef struct dit_block {
    dit_linear img_mod, txt_mod;           /* [6D, D]: shift1 scale1 gate1 shift2 scale2 gate2 */
    dit_linear to_q, to_k, to_v;           /* image stream Q/K/V [D, D] */
    dit_linear add_q, add_k, add_v;        /* text stream Q/K/V [D, D] */
    qi_tensor norm_q, norm_k;              /* per-head RMSNorm of image q/k [head_dim] */
    qi_tensor norm_added_q, norm_added_k;  /* per-head RMSNorm of text q/k [head_dim] */
    dit_linear to_out, to_add_out;         /* attention output, image / text [D, D] */
    dit_linear img_mlp_up, img_mlp_down;   /* [F, D] (GELU-tanh), [D, F] */
    dit_linear txt_mlp_up, txt_mlp_down;
} dit_block;

/* One tensor the checkpoint must hold, and where it goes. */
typedef struct weight_spec {
    char name[96];
    int ndim;
    int64_t shape[2];
    qi_tensor *dst;
    qi_dtype stored;   /* the file's type, once loaded */
    int lora_fused;    /* a LoRA is fused into dst (a float32 copy) */
} weight_spec;

/* RoPE tables of one (grid_h, grid_w, txt_len): [L_txt + L_img, head_dim/2]. */
typedef struct rope_entry {
    int grid_h, grid_w, txt_len; /* txt_len 0: empty slot */
    qi_dit_cond cond;            /* Edit condition segments (n 0: none) */
    float *host;                 /* cos table then sin table */
    qi_tensor cos, sin;          /* backend copies (persistent or weights) when on_backend */
    int on_backend;              /* 0: the backend converted F32; upload per call */
    int pins;                    /* live qi_dit_calls reading these tables: never evicted */
    uint64_t last_use;
} rope_entry;

struct qi_dit {
    qi_dit_config cfg;
    qi_backend *be;
    const qi_source *src;        /* the caller's; CPU weights point into its mapping */

    dit_linear img_in;           /* [D, in_channels] */
    qi_tensor txt_norm;          /* RMSNorm of the text embeddings [joint_dim] */
    dit_linear txt_in;           /* [D, joint_dim] */
    dit_linear time_1, time_2;   /* timestep MLP [D, 256] (SiLU), [D, D] */
    dit_linear norm_out;         /* [2D, D]: scale FIRST, then shift (spec §6 trap 1) */
    dit_linear proj_out;         /* [out·p², D] */
    dit_block *blocks;           /* [num_layers] */

    weight_spec *specs;          /* every loaded tensor, for weight_free */
    int n_specs;
    float **fused;               /* LoRA-fused float32 weights the backend points into */
    int n_fused;
    int n_fused_lora;            /* weights with a LoRA fused in: the set cannot be swapped (reload) */
    qi_lora_mode lora_mode;      /* how a LoRA module reaches a weight (qi_dit_load_mode) */
    dit_lora_term *terms;        /* every runtime LoRA module, in spec order */
    int n_terms;

    rope_entry rope[DIT_ROPE_CACHE];
    uint64_t rope_clock;

    /* streaming (qi_dit_load_resident): units 0 … L-1 are the blocks' 12
     * attention / MLP matrices, L … 2L-1 the blocks' 2 modulation matrices */
    qi_dit_residency res;
    unsigned char *block_streamed; /* [num_layers], NULL: nothing streamed */
    qi_wstream *stream;
};

/* Activations of one call, all from the arena (allocated once per call). */
typedef struct dit_acts {
    int64_t B, Li, Lt, Lj;        /* batch, image (this rank's), text, joint (Lt + whole image) tokens */
    const qi_ulysses *sp;         /* NULL: the whole image on this device */
    qi_comm *comm;                /* the Ulysses group when sp */
    qi_tensor mods;               /* [(2·layers + 1)·B, 6D]: slot 2i img_mod, 2i+1 txt_mod, 2L norm_out */
    qi_tensor img, txt;           /* residual streams [B, Li, D], [B, Lt, D] */
    qi_tensor norm_i, norm_t;     /* modulated LayerNorm outputs, same shapes */
    qi_tensor q_i, k_i, v_i;      /* image Q/K/V [B, Li, D] */
    qi_tensor q_t, k_t, v_t;      /* text Q/K/V [B, Lt, D] */
    qi_tensor Q, K, V, O;         /* joint sequence, text first [B, Lj, H, Dh] (H/N heads when sp) */
    qi_tensor o_i, o_t;           /* attention output split back per stream (B > 1 or sp) */
    qi_tensor proj_i, proj_t;     /* sub-layer outputs before the gated residual */
    qi_tensor ff_i, ff_t;         /* MLP hidden [B, L, F] */
    qi_tensor rope_cos, rope_sin; /* [Lj, Dh/2] */
    qi_tensor key_mask;           /* I32 [B, Lj] when some text is padding */
    int have_mask;
    int zero_split;               /* zero_cond_t: image rows from L_out on use mods0 (B == 1) */
    int64_t L_out;                /* the output's image rows (before the condition segments) */
    qi_tensor mods0;              /* [layers, 6D]: each block's img_mod at t = 0 (zero_split) */
    const dit_linear *next_linears[2]; /* the call's first two linears after the running block (the next
                                          block's to_q, to_k; or proj_out): prefetch hints; NULL: none known
                                          (the next block streams) */
} dit_acts;


/* What one transformer call reads besides x and ctx, on the device at
 * addresses fixed for the call's life: the RoPE tables of its shape (the
 * dit's cache, pinned), the timestep sinusoid and the joint key mask. The
 * buffers are persistent tensors (qi_dit_call_create) or arena tensors that
 * live until the caller's reset (qi_dit_forward). */
struct qi_dit_call {
    qi_dit *d;
    int64_t B, Li, Lt, Lj;  /* batch, image rows (the whole grid or a shard), text, joint */
    int grid_h, grid_w;
    qi_dit_cond cond;       /* Edit condition segments (n 0: none) */
    int zero_split;         /* zero_cond_t with condition tokens: mods0 holds t = 0's img_mod */
    qi_tensor mods0;        /* [layers, 6D] */
    rope_entry *rope;       /* pinned while the call lives */
    qi_tensor sinus;        /* [B, 256] activations: the timestep sinusoid */
    qi_tensor key_mask;     /* I32 [B, Lj]: text mask then ones for the image */
    int have_mask;          /* some text is padding: attention reads key_mask */
    int timestep_set;       /* the run's conditioning is ready (set_timestep or select_step) */
    int persistent;         /* buffers from be->persistent (freed with the call) */
    int has_sp;             /* a call for one rank of a Ulysses group (qi_dit_call_create_sp) */
    qi_ulysses sp;          /* that rank's plan: Li is its shard */
    size_t run_mark;        /* arena position of every run (SIZE_MAX before the first) */

    /* schedule mode (qi_dit_call_set_schedule): runs read `mods`, filled per step */
    int scheduled;
    int sched_steps;        /* steps of the schedule */
    float *sched_t;         /* host [sched_steps, B]: timestep / 1000 */
    int64_t window;         /* steps whose modulation is held at once (all, unless too large) */
    int64_t win0;           /* first step held in sched_mods / sched_out; -1: none yet */
    qi_tensor sched_mods;   /* [2·layers slots, window, B, 6D]: img_mod, txt_mod of each block */
    qi_tensor sched_out;    /* [window, B, 2D]: norm_out's [scale | shift] */
    qi_tensor gather_ids;   /* I32 [window, 2·layers·B]: the sched_mods rows of one step, slot-major */
    qi_tensor mods;         /* [(2·layers + 1)·B, 6D] the selected step, laid out as dit_acts.mods */
};

/* ---- dit.c's forward pieces that dit_call.c runs ---- */

qi_status dit_stream_block(qi_dit *d, int i, dit_block *out, qi_error *err);
qi_status dit_mod_linears(qi_dit *d, int i, dit_linear *img, dit_linear *txt, qi_error *err);
qi_status dit_rope_for_shape(qi_dit *d, int grid_h, int grid_w, const qi_dit_cond *cond, int txt_len,
                             rope_entry **out, qi_error *err);
qi_status dit_alloc_acts(qi_dit *d, dit_acts *a, qi_error *err);
void dit_timestep_sinusoid(const float *t, int64_t B, float *proj);
void dit_run_linear(qi_dit *d, const qi_tensor *x, const dit_linear *l, qi_act act, qi_tensor *y,
                    qi_status *st, qi_error *err);
/* Linears l[0..n) of one input x (activation act) into y[k] as one
 * linear_shared call, src NULL or the LayerNorm that makes x (bit-identical
 * to the plain ops): 1 when queued, 0 when nothing was (no such op,
 * declined, or runtime LoRA terms). */
int dit_try_linears_shared(qi_dit *d, const qi_tensor *x, const qi_ln_mod_src *src, int n, const dit_linear *const *l,
                           qi_act act, qi_tensor *const *y);
qi_status dit_timestep_embedding(qi_dit *d, const qi_tensor *sinus, qi_tensor *temb_silu, qi_error *err);
qi_status dit_compute_modulation(qi_dit *d, const qi_tensor *temb_silu, dit_acts *a, qi_error *err);
qi_status dit_block_forward(qi_dit *d, int index, const dit_block *blk, dit_acts *a, qi_error *err);

#endif

/*
 * dit.h — the Qwen-Image MMDiT (QwenImageTransformer2DModel): loading it
 * from a weight source (io/source.h: a diffusers `transformer/` folder, a
 * ComfyUI single file, a GGUF; any size; LoRAs fused at load) and one
 * forward call, i.e. one velocity prediction for packed latents.
 *
 *     qi_source *src;
 *     qi_dit *dit;
 *     if (qi_source_open("/models/Qwen-Image/transformer", QI_COMPONENT_TRANSFORMER, &src,
 *                        &err) != QI_OK) ...
 *     if (qi_dit_load(src, be, loras, &dit, &err) != QI_OK) ...
 *     qi_dit_forward(dit, x, ctx, ctx_mask, t, h / 16, w / 16, out, &err);
 *     qi_dit_free(dit);
 *     qi_source_close(src);
 *
 * Spec: shared/docs/spec/denoiser.md §1 (forward), §4 (LoRA), §6 (traps).
 * Every computation goes through the backend's op table, so the same code
 * runs on the CPU and CUDA backends. The sampling loop, CFG and the scheduler
 * are not here (pipeline / scheduler code).
 */
#ifndef QI_DIT_H
#define QI_DIT_H

#include "backend/backend.h"
#include "io/source.h"
#include "model/lora.h"
#include "parallel/comm.h"

typedef struct qi_dit qi_dit;

#define QI_DIT_TIME_CHANNELS 256                     /* timestep sinusoid width */
#define QI_DIT_SCHEDULE_BYTES ((size_t)1 << 30)      /* precomputed modulation held at once (set_schedule) */

typedef struct qi_dit_config {
    int num_layers;         /* dual-stream blocks (60 full size) */
    int num_heads;          /* 24 */
    int head_dim;           /* 128 */
    int inner_dim;          /* D = num_heads · head_dim (3072) */
    int mlp_dim;            /* 4·D (12288) */
    int joint_dim;          /* text hidden size, joint_attention_dim (3584) */
    int in_channels;        /* packed latent channels per token (64) */
    int out_channels;       /* latent channels (16); output has out_channels·patch² per token */
    int patch_size;         /* 2 */
    int axes_dims_rope[3];  /* frame, height, width dims of each head (16, 56, 56); sum = head_dim */
    int zero_cond_t;        /* Edit-2511: condition tokens are modulated as at t = 0 (qi_dit_forward_edit) */
} qi_dit_config;

/* Qwen-Image-Edit's condition segments: after the output's grid_h·grid_w
 * tokens, x holds each reference picture's packed latents, segment k a
 * hw[k][0] × hw[k][1] patch grid. Segment k (1-based; 0 is the output)
 * gets RoPE frame position k and its own centred height/width positions;
 * the text's positions start after the largest half-side of all segments
 * (reference edit/README.md E7, E8). */
#define QI_DIT_MAX_COND 8
typedef struct qi_dit_cond {
    int n;                     /* segments (0: text-to-image) */
    int hw[QI_DIT_MAX_COND][2]; /* patch grid h, w of each (latent size / 2) */
} qi_dit_cond;

/* The configuration of the transformer `src` holds: its config.json where
 * it has one (every key checked; variant switches guidance_embeds,
 * zero_cond_t, use_additional_t_cond, use_layer3d_rope true are
 * QI_ERR_UNSUPPORTED), else derived from tensor shapes: layers from the
 * block indices, inner width from img_in, head_dim from
 * attn.norm_q.weight, heads = inner / head_dim, text width from txt_in,
 * in_channels from img_in, out_channels from proj_out rows / patch², patch
 * 2, and the RoPE axes (16, 56, 56), which only a head_dim of 128 has
 * (another head_dim without a config is QI_ERR_UNSUPPORTED). */
qi_status qi_dit_read_config(const qi_source *src, qi_dit_config *out, qi_error *err);

/* Loads the transformer of `src` (a QI_COMPONENT_TRANSFORMER source): its
 * configuration (qi_dit_read_config), then every tensor, checked against it;
 * a tensor the config does not explain is an error. loras (may be NULL) are
 * bound to the Linear weights and fused in float32; the set may be freed
 * after the call. The source must stay open until qi_dit_free (CPU weights
 * point into its mapping); it may feed several loads at once. */
qi_status qi_dit_load(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_dit **out,
                      qi_error *err);
/* The same with a choice of how LoRA modules reach the weights (qi_lora_mode):
 * FUSE adds them into float32 copies (qi_dit_load's behaviour); RUNTIME
 * keeps every weight as stored and adds coef · up (down x) after each Linear
 * (the set must then stay alive until the next qi_dit_set_loras or
 * qi_dit_free: CPU factors point into its mapping); AUTO fuses into float
 * element weights (f32/f16/bf16) and runs beside GGUF-block and fp8 ones. */
qi_status qi_dit_load_mode(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_lora_mode mode,
                           qi_dit **out, qi_error *err);
/* Where the weights live (engine/residency.h plans it). Streamed matrices
 * are host weights (backend weight_host) copied into two device slots just
 * before the ops that read them (backend/weight_stream.h): the blocks not
 * kept resident, spread evenly over the 60 (so a copy overlaps the resident
 * blocks' ops before it), and the modulation matrices when not resident (read
 * once per generation in schedule mode, qi_dit_call_set_schedule). Biases,
 * norms and the global weights always stay on the device. */
typedef struct qi_dit_residency {
    int resident_blocks; /* 0 … num_layers */
    int mod_resident;    /* the img_mod / txt_mod matrices stay on the device */
} qi_dit_residency;

/* qi_dit_load_mode with a residency (NULL: everything on the device).
 * Streaming needs the backend's streamed-weight ops (QI_ERR_UNSUPPORTED). */
qi_status qi_dit_load_resident(const qi_source *src, qi_backend *be, const qi_lora_set *loras, qi_lora_mode mode,
                               const qi_dit_residency *res, qi_dit **out, qi_error *err);
/* Blocks whose matrices are streamed, and whether the modulation is. A call
 * of a streaming transformer runs eagerly: its copies are queued on the
 * backend's copy queue and events, which a recording would have to capture
 * too (denoise.c does not record it). */
int qi_dit_streamed_blocks(const qi_dit *d);
int qi_dit_streams(const qi_dit *d); /* any weight streamed */
uint64_t qi_dit_staged_bytes(const qi_dit *d); /* copied into the slots so far */

/* Replaces the runtime LoRA modules with those of `loras` (NULL: none), the
 * stored weights untouched; on failure the previous modules stay. Refused
 * (QI_ERR_UNSUPPORTED) when a weight holds a fused LoRA, or would take one
 * under the load's mode: then reload. Call between transformer calls only,
 * and drop recorded graphs first (they hold the old factors' addresses). */
qi_status qi_dit_set_loras(qi_dit *d, const qi_lora_set *loras, qi_error *err);
int qi_dit_lora_terms(const qi_dit *d); /* runtime LoRA modules attached */
int qi_dit_lora_fused(const qi_dit *d); /* weights with a LoRA fused in */
void qi_dit_free(qi_dit *d);
const qi_dit_config *qi_dit_get_config(const qi_dit *d);

/* One transformer call.
 *   x        [B, L_img, in_channels] packed latents, L_img = grid_h · grid_w
 *   ctx      [B, L_txt, joint_dim] text embeddings (right-padded)
 *   ctx_mask I32 [B, L_txt] (1 real token, 0 padding) or NULL (all real)
 *   t        B host floats: the scheduler timestep / 1000, as the pipeline passes it
 *   out      [B, L_img, out_channels · patch²] velocity, packed like x
 * All tensors except t live on the dit's backend. Activations are taken from
 * the backend arena and released before returning. */
qi_status qi_dit_forward(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx,
                         const qi_tensor *ctx_mask, const float *t, int grid_h, int grid_w,
                         qi_tensor *out, qi_error *err);

/* The Edit call: x [B, grid_h·grid_w + Σ cond hw, in_channels] (output
 * tokens, then each condition segment), out the same rows (the caller keeps
 * the first grid_h·grid_w). With config.zero_cond_t (2511) and B = 1 the
 * condition rows of the image stream are modulated with t = 0's img_mod in
 * every block; text and norm_out use t. cond NULL or cond->n 0: as
 * qi_dit_forward. */
qi_status qi_dit_forward_edit(qi_dit *d, const qi_tensor *x, const qi_tensor *ctx, const qi_tensor *ctx_mask,
                              const float *t, int grid_h, int grid_w, const qi_dit_cond *cond, qi_tensor *out,
                              qi_error *err);

/* The same call on one rank of a Ulysses sequence-parallel group
 * (parallel/ulysses.h): every rank of comm calls it together, each with
 *   x_local   [B, len, in_channels]  its shard of the packed latents: tokens
 *             [qi_ulysses_shard_begin(rank), +len) of the grid_h·grid_w,
 *             len = qi_ulysses_shard_len(rank) for a plan of comm's size
 *   ctx, ctx_mask, t                 the whole text and timesteps (every rank)
 *   out_local [B, len, out_channels·patch²] the velocity of its shard.
 * Weights are replicated (each rank loads its own qi_dit on its own backend).
 * comm's size must divide num_heads, and the grid have at least one token
 * per rank. On any failure the group is aborted (qi_comm_abort) so the other
 * ranks return instead of waiting: make a new communicator after an error. */
qi_status qi_dit_forward_sp(qi_dit *d, qi_comm *comm, const qi_tensor *x_local,
                            const qi_tensor *ctx, const qi_tensor *ctx_mask, const float *t,
                            int grid_h, int grid_w, qi_tensor *out_local, qi_error *err);

/* ---- one call split for recording (a CUDA graph of the denoising step) ----
 *
 * qi_dit_forward is: make the call's inputs, copy them to the device, run the
 * ops, synchronise. A qi_dit_call keeps that first part on the device at
 * fixed addresses so the ops can be recorded once (the backend's graph_begin
 * / graph_end) and replayed per step:
 *
 *     qi_dit_call_create(dit, B, gh, gw, txt_len, &call)   once per shape
 *     qi_dit_call_set_text_mask(call, ctx_mask)            once per text
 *     per step: qi_dit_call_set_timestep(call, t)          host -> device
 *               qi_dit_call_run(call, x, ctx, out)         ops only: record once, replay
 *
 * or, when the timesteps of the whole generation are known up front:
 *
 *     qi_dit_call_set_schedule(call, t_all, steps)         once per generation
 *     per step: qi_dit_call_select_step(call, i)           one device gather
 *               qi_dit_call_run(call, x, ctx, out)
 *
 * The timestep sinusoid, the joint key mask and the selected step's
 * modulation live in the backend's persistent buffers, the
 * RoPE tables in the transformer's per-shape cache (held while the call
 * lives; at most 4 live calls of different shapes). On a backend without
 * persistent buffers (the CPU) the call's buffers come from the arena
 * instead: create the call (and set its schedule) after everything it must
 * outlive, run it eagerly (nothing records), and free it before resetting the
 * arena below where it was made. run queues the same ops
 * as qi_dit_forward, so the results are bit-identical; it takes its
 * activations from the arena and releases them before returning, and must
 * find the arena at the same position every time (else QI_ERR_ARG: a
 * recording reads the activations where they were). run does not
 * synchronise. Free every call before qi_dit_free. */
typedef struct qi_dit_call qi_dit_call;
qi_status qi_dit_call_create(qi_dit *d, int batch, int grid_h, int grid_w, int txt_len, qi_dit_call **out,
                             qi_error *err);
/* An Edit call (as qi_dit_forward_edit): runs take x and out with the
 * condition rows after the output's; the t = 0 modulation of zero_cond_t is
 * computed here, once. One device (no Ulysses form yet). */
qi_status qi_dit_call_create_edit(qi_dit *d, int batch, int grid_h, int grid_w, const qi_dit_cond *cond,
                                  int txt_len, qi_dit_call **out, qi_error *err);
/* ctx_mask I32 [B, txt_len] on the backend (1 real, 0 padding) or NULL (all real). */
qi_status qi_dit_call_set_text_mask(qi_dit_call *c, const qi_tensor *ctx_mask, qi_error *err);
/* 1 when the last text mask had padding (the attention then reads the key mask). */
int qi_dit_call_has_mask(const qi_dit_call *c);
/* t: B host floats, the scheduler timestep / 1000 (as qi_dit_forward's t). */
qi_status qi_dit_call_set_timestep(qi_dit_call *c, const float *t, qi_error *err);
/* The timesteps of a whole generation, t_all [steps][B] host floats (each as
 * set_timestep's t). The timestep embedding and every modulation Linear
 * (img_mod / txt_mod of each block, norm_out) run once over steps × B rows
 * (in windows of steps when that would exceed 1 GiB), on the first
 * select_step that needs them, into a buffer of the call; the weights are
 * then read once per generation instead of once per step. The results may
 * differ from set_timestep's in the last bits (a GEMM over more rows may
 * round differently). Until select_step, run refuses (QI_ERR_ARG);
 * set_timestep leaves schedule mode. Not while recording. */
qi_status qi_dit_call_set_schedule(qi_dit_call *c, const float *t_all, int steps, qi_error *err);
/* Makes step `step` (0-based) of the schedule the one run reads: queues a
 * copy of its modulation into the buffer at the fixed address runs (and
 * their recordings) read, computing the window of steps first if it is not
 * held. Ops only, not synchronised; call it before each run or replay,
 * outside any recording. */
qi_status qi_dit_call_select_step(qi_dit_call *c, int step, qi_error *err);
/* x [B, gh·gw, in_channels], ctx [B, txt_len, joint_dim], out as qi_dit_forward's. */
qi_status qi_dit_call_run(qi_dit_call *c, const qi_tensor *x, const qi_tensor *ctx, qi_tensor *out,
                          qi_error *err);
void qi_dit_call_free(qi_dit_call *c);

/* The same split on one rank of a Ulysses group (as qi_dit_forward_sp):
 * create_sp makes a call for rank comm->rank of comm->size (x and out of its
 * runs hold that rank's shard, [B, qi_ulysses_shard_len(rank), ·]); mask,
 * timestep and schedule are set as above; run_sp is run's collective form,
 * called by every rank of comm together, and aborts comm on a failure.
 * run_sp queues the exchanges on the communicator, so a run can be recorded
 * only where the communicator's collectives can be (device memory, queued on
 * the backend's stream: QI_COMM_DEVICE). */
qi_status qi_dit_call_create_sp(qi_dit *d, const qi_comm *comm, int batch, int grid_h, int grid_w, int txt_len,
                                qi_dit_call **out, qi_error *err);
qi_status qi_dit_call_run_sp(qi_dit_call *c, qi_comm *comm, const qi_tensor *x_local, const qi_tensor *ctx,
                             qi_tensor *out_local, qi_error *err);

/* ---- exposed for tests and benchmarks ---- */

/* Rotary positions of the joint sequence (text first, spec §1.5): pos[i·3 + a]
 * for token i and axis a (frame, height, width); txt_len + grid_h·grid_w rows. */
void qi_dit_rope_positions(int grid_h, int grid_w, int txt_len, int *pos);
/* The same with Edit condition segments after the output's (cond NULL: none). */
void qi_dit_rope_positions_cond(int grid_h, int grid_w, const qi_dit_cond *cond, int txt_len, int *pos);
/* Image tokens of the output grid and every condition segment. */
int64_t qi_dit_image_tokens(int grid_h, int grid_w, const qi_dit_cond *cond);

/* Angle tables of the joint sequence, [txt_len + grid_h·grid_w, head_dim/2]
 * each, the cos/sin of pos · θ per rotary pair (float32 as diffusers builds
 * them). Returns QI_ERR_ARG if a position reaches diffusers' 4096 limit. */
qi_status qi_dit_rope_tables(const qi_dit_config *c, int grid_h, int grid_w, int txt_len,
                             float *cos_tab, float *sin_tab, qi_error *err);
qi_status qi_dit_rope_tables_cond(const qi_dit_config *c, int grid_h, int grid_w, const qi_dit_cond *cond,
                                  int txt_len, float *cos_tab, float *sin_tab, qi_error *err);

/* ---- what the residency planner needs (dit_config.c) ---- */

/* Device bytes one denoising pass takes beyond the weights, for `calls`
 * transformer calls per step (2: true CFG on one device) of B images of
 * img_tokens (grid_h · grid_w) and txt_tokens text tokens, over `steps`
 * steps, with activations of act_size bytes: each call's buffers (the
 * timestep sinusoid, the key mask, the schedule's modulation, the RoPE
 * tables) and one call's activations (the runs take turns in the arena).
 * Mirrors alloc_acts and schedule_alloc in dit.c. */
size_t qi_dit_step_bytes(const qi_dit_config *c, size_t act_size, int batch, int img_tokens, int txt_tokens,
                         int steps, int calls);

/* Which part of the transformer a weight of the checkpoint belongs to, for
 * streaming: a block's attention or MLP matrix (*block = its index), a
 * block's modulation matrix (img_mod / txt_mod), or neither (input and
 * output layers, the timestep MLP, norm_out, and every 1-D weight: biases
 * and norms stay on the device whatever the plan). */
typedef enum qi_dit_unit { QI_DIT_UNIT_GLOBAL = 0, QI_DIT_UNIT_BLOCK, QI_DIT_UNIT_MOD } qi_dit_unit;
qi_dit_unit qi_dit_weight_unit(const char *name, int ndim, int *block);

/* The released Qwen-Image (and Qwen-Image-2512) transformer's configuration:
 * 60 layers, 24 heads of 128, text width 3584, 64 in / 16 out channels,
 * patch 2, RoPE axes (16, 56, 56) (what its config.json says). */
qi_dit_config qi_dit_released_config(void);

/* Every Linear (2-D) weight a transformer of config c has, with its shape,
 * in load order: what LoRA modules may target. *out is freed with free(). */
typedef struct qi_dit_linear_weight {
    char name[96];          /* e.g. "transformer_blocks.7.attn.to_q.weight" */
    int64_t out_dim, in_dim;
} qi_dit_linear_weight;
qi_status qi_dit_linear_weights(const qi_dit_config *c, qi_dit_linear_weight **out, int *n, qi_error *err);

/* Multiply-add count ×2 (FLOPs) of one call: every Linear and the attention
 * products (QKᵀ and PV); norms and elementwise work not counted. */
double qi_dit_forward_flops(const qi_dit_config *c, int batch, int img_tokens, int txt_tokens);

#endif

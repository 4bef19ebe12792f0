/*
 * engine.h — the engine behind qwen_image.h (internal): its loaded
 * components, its LoRA set, the ranks it denoises on, and the stages
 * qi_generate strings together. Benchmarks and tests that time one stage
 * reach the components through the accessors at the end.
 */
#ifndef QI_ENGINE_ENGINE_H
#define QI_ENGINE_ENGINE_H

#include "engine/denoise.h"
#include "engine/plan.h"
#include "engine/prompt_cache.h"
#include "engine/ranks.h"
#include "engine/residency.h"
#include "io/model_dir.h"
#include "io/model_files.h"
#include "io/source.h" /* qi_component: the parts of a model a stage needs resident */
#include "model/lora.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "model/vae.h"
#include "model/vision.h"
#include "qwen_image.h"

/* The residency hook: what stays in device memory between stages. Before a
 * stage runs, the engine calls `acquire` (which may free other components to
 * make room) and then makes the stage's component resident, loading it if it
 * is not (qi_engine_acquire); after the stage it calls `release`, which may
 * free the component (the next acquire loads it again). NULL slots keep every
 * component resident once loaded; a memory plan (budget.c) installs its own. */
typedef struct qi_residency {
    qi_status (*acquire)(void *user, qi_engine *e, qi_component c, qi_error *err);
    void (*release)(void *user, qi_engine *e, qi_component c);
    void *user;
} qi_residency;

struct qi_engine {
    qi_model_files files;    /* where each component comes from (-m, single files) */
    qi_ranks *ranks;         /* the devices; ranks->be[0] runs text encoder, VAE, noise */
    qi_backend *be;          /* = ranks->be[0] */
    int heads, head_dim;     /* the transformer's attention shape (several ranks only) */
    qi_tokenizer *tok;
    qi_text_encoder *te;
    qi_vae *vae;
    qi_vision *vt;           /* the text encoder's vision tower, loaded by the first Edit request */
    qi_source *vision_src;   /* the mmproj file the tower came from (NULL: the text encoder's own) */
    struct qi_edit_hooks *edit_hooks; /* PIL Lanczos and the VAE encoder for Edit (NULL: the built-in ones) */
    qi_source *src[QI_COMPONENT_COUNT]; /* weight sources, opened on first load and kept while their
                                           models live (CPU weights point into them); none for the
                                           tokenizer */
    int dit_stale;           /* the transformers must (re)load */
    int loras_changed;       /* the LoRA set changed since the transformers took it: swap the
                                runtime modules (qi_dit_set_loras), or reload where fused */
    int lora_mode;           /* qi_lora_mode of qi_open_options */
    qi_lora_set *loras;      /* the set to fuse (NULL: none) */
    int loras_loaded;        /* files of `loras` fused by the last successful load; -1: a set
                                from qi_engine_set_loras that has not loaded yet */
    qi_lora_set *loras_prev; /* while loras_loaded is -1: the set before it (NULL: none) */
    int loras_prev_loaded;   /* files of loras_prev the weights held */
    qi_residency residency;
    struct qi_work_pool *scan_pool; /* the threads files.scan lends the weights' NaN/Inf scan (NULL: the
                                loading thread alone; QI_SCAN_THREADS) */
    /* the memory plan (budget.c); planned 0: none, everything stays resident */
    int planned;
    size_t budget;              /* device bytes planned for */
    qi_residency_sizes sizes;   /* the components' weights on this backend */
    qi_residency_plan plan;     /* in force */
    qi_dit_residency dit_res;   /* plan's transformer residency, for its loads */
    size_t weight_scratch;      /* the quantised-weight scratch the plan reserved (0: none) */
    qi_text_encoder_config te_cfg; /* read from the source: the plan needs it while the encoder is freed */
    qi_dit_config dit_cfg;
    int configs_read;           /* te_cfg and dit_cfg hold the sources' configs */
    qi_residency_need need;     /* what the plan in force was made for */
    char need_what[96];         /* the request of the last need computed, for messages */
    int te_loads, te_frees;     /* text encoder loaded / freed so far (stage swap; tests, logs) */
    int dit_evictions;          /* transformer freed to make room for the text encoder */
    qi_prompt_cache *prompt_cache; /* NULL: off */
    qi_log_fn log;
    void *log_user;
    qi_error err;
    qi_timings last;
    /* the last decode stage's parts (qi_stage_decode), for benchmarks: the
     * latents' finite check and de-normalisation on the host, then the VAE
     * to 8-bit pixels (the device's work, the download, any host conversion) */
    struct {
        double prepare_s, vae_s;
        int on_device; /* the pixels were made on the device (download_rgb8) */
    } decode_split;
    qi_denoise_hook test_inputs; /* tests: its `inputs` sees every step's transformer input */
};

/* Makes component c resident for a stage (loading it first if needed, then
 * the residency hook), and lets it go after. */
qi_status qi_engine_acquire(qi_engine *e, qi_component c);
void qi_engine_release(qi_engine *e, qi_component c);

/* ---- the memory plan (budget.c) ---- */

/* At open, after the backend exists and before the text encoder loads: the
 * sizes from the sources (the VAE loads here), the budget, the plan for the
 * default request (1024², 1 image, 512 text tokens), applied. No plan on the
 * CPU without vram_bytes, nor with several ranks (refused with vram_bytes). */
qi_status qi_engine_plan_open(qi_engine *e, const qi_open_options *opt);
/* Before a request's stages (before any work): a request needing more
 * activations than the plan's arena gets a plan of its own (what it changes
 * loads again), or QI_ERR_NOMEM naming what does not fit; the engine stays
 * usable. Without a plan, the same sizes (need_of) against the backend's
 * arena, and the request's host buffers against the host's memory. */
qi_status qi_engine_plan_request(qi_engine *e, const qi_plan *p);

/* The text encoder alone under a budget of `vram` bytes on be (0: no plan):
 * *stream says whether its layers must stream to encode `prompts` prompts of
 * up to max_len tokens; QI_ERR_NOMEM naming the --vram that would do when
 * even that does not fit. For `qwen-image encode`. */
qi_status qi_plan_text_encoder(qi_backend *be, const qi_source *src, size_t vram, int prompts, int max_len,
                               int *stream, qi_error *err);

/* ---- the stages of qi_generate (stages.c) ---- */

/* Text embeddings of the prompts (text[0]) and, with true CFG, the negative
 * prompt repeated per prompt (text[1]); each prompt's rows repeated per image. */
qi_status qi_stage_text(qi_engine *e, const qi_plan *p, qi_text_embeds text[2]);
void qi_text_embeds_free(qi_text_embeds *t);
/* The initial noise, packed: *latents [B, img_tokens, 64] malloc'd. */
qi_status qi_stage_noise(qi_engine *e, const qi_plan *p, float **latents);
/* img2img / inpaint (stages_image.c): the picture encoded and noised to the
 * first sigma run, packed into *latents [B, img_tokens, 64] malloc'd; fills
 * p->init (the picture's latents, the noise and, inpainting, the mask). */
qi_status qi_stage_init_latents(qi_engine *e, qi_plan *p, float **latents);
/* One input picture through the VAE encoder (img2img, inpaint, Edit):
 * qi_vae_encode, with a log line when it runs in tiles (the whole encode's
 * activations over the plan's arena). */
qi_status qi_stage_vae_encode(qi_engine *e, const float *pixels, int width, int height, float *mean, float *logvar,
                              qi_error *err);
/* Denoised packed latents → out (vae_in latents and RGB8 images). */
qi_status qi_stage_decode(qi_engine *e, const qi_plan *p, const float *latents, qi_image *out);
/* The plan of a request (checked, scheduler loaded, sizes and schedule). */
qi_status qi_engine_plan(qi_engine *e, const qi_request *req, qi_plan *p);
/* A Qwen-Image-Edit request (req->n_edit_images > 0), whole (edit_generate.c). */
qi_status qi_generate_edit(qi_engine *e, const qi_request *req, qi_image *out);
/* Replaces the Edit pipeline's resize and VAE-encoder hooks (engine/edit.h)
 * for tests; h must outlive the engine's use (NULL: the built-in ones). */
void qi_engine_set_edit_hooks(qi_engine *e, struct qi_edit_hooks *h);

/* Reports progress; nonzero: cancelled. */
int qi_stage_report(const qi_plan *p, const char *stage, int step, int total);

double qi_peak_rss_mb(void); /* this process's peak resident set, MiB */

/* ---- the engine's parts, for benchmarks and tests that time one stage ---- */
qi_backend *qi_engine_backend(qi_engine *e);
qi_status qi_engine_dit(qi_engine *e, qi_dit **out); /* loads the transformer if needed */
qi_text_encoder *qi_engine_text_encoder(qi_engine *e);
qi_vae *qi_engine_vae(qi_engine *e);

#endif

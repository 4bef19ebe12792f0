/*
 * qwen_image.h — the public C API of qwen-image.c, a text-to-image engine for
 * Qwen-Image (20B MMDiT + Qwen2.5-VL-7B text encoder + Wan-style VAE) and its
 * Lightning LoRAs.
 *
 * The whole lifecycle:
 *
 *     qi_open_options o = qi_open_options_default();
 *     o.model_dir = "/models/Qwen-Image";
 *     qi_engine *e;
 *     if (qi_engine_open(&o, &e) != QI_OK) { fprintf(stderr, "%s\n", qi_engine_error(e)); ... }
 *     qi_engine_add_lora(e, "Qwen-Image-Lightning-8steps-V1.0.safetensors", 1.0f);
 *     qi_request r = qi_request_default();
 *     r.prompt = "a capybara in a suit"; r.steps = 8; r.cfg = 1.0f;
 *     qi_image img;
 *     if (qi_generate(e, &r, &img) == QI_OK) { ... img.rgb ... qi_image_free(&img); }
 *     qi_engine_close(e);
 *
 * The library never prints (unless given a log callback) and never exits; every
 * failure returns a status and leaves a one-line message in the engine.
 *
 * Threading: one call at a time per engine (qi_generate, qi_engine_warm, the
 * LoRA setters: serialise them); several engines may run on different threads
 * at once. Callbacks (progress, log) arrive on the thread that called into the
 * engine, even when a generation is spread over several devices.
 */
#ifndef QWEN_IMAGE_H
#define QWEN_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qi_status {
    QI_OK = 0,
    QI_ERR_ARG,         /* a caller's argument is invalid (the CLI exits 2) */
    QI_ERR_IO,          /* a file could not be opened, read or written */
    QI_ERR_FORMAT,      /* a file is malformed or does not match the model */
    QI_ERR_NOMEM,       /* host or device memory exhausted */
    QI_ERR_UNSUPPORTED, /* valid, but not implemented by this build */
    QI_ERR_BACKEND,     /* the compute backend failed (CUDA error, ...) */
    QI_ERR_CANCELLED    /* the progress callback asked to stop */
} qi_status;

const char *qi_status_name(qi_status s);

typedef struct qi_engine qi_engine;

/* Progress: stage name ("text encoder", "denoise", "vae"), step i of n.
 * Return nonzero to cancel the generation. */
typedef int (*qi_progress_fn)(void *user, const char *stage, int step, int total);
typedef void (*qi_log_fn)(void *user, const char *line);

struct qi_image;
/* Step latents (for previews): after denoising step `step` (1..total), the
 * clean image the step predicts, x0 = x - sigma * v, in the space and layout
 * of qi_image.latents (what the VAE decodes): img->latents [count, 16, 1,
 * height/8, width/8] float32, img->rgb NULL; valid during the call only.
 * Arrives on a thread of the engine's own, beside the denoising loop (so
 * making a preview does not hold the GPU idle): in step order, one call at
 * a time, every step once, and all of them before qi_generate returns; a
 * callback slower than a step slows the loop to its pace. Costs one
 * device-to-host copy of the latents and the prediction per step. Not
 * called when a generation's image tokens are sharded over several devices
 * (sequence parallel). */
typedef void (*qi_latents_fn)(void *user, int step, int total, const struct qi_image *img);

typedef struct qi_open_options {
    const char *model_dir;   /* a Qwen/Qwen-Image diffusers directory, or a folder of ComfyUI-style split
                                files (each component's file found by its content, not its name); NULL when
                                all three files below are given */
    const char *diffusion_model; /* the transformer as its own file (.safetensors: ComfyUI / LightX2V, .gguf:
                                city96 / QuantStack) or component folder; NULL: from model_dir */
    const char *text_encoder;    /* Qwen2.5-VL: ComfyUI's .safetensors or llama.cpp's `qwen2vl` .gguf (which
                                also gives the tokenizer); NULL: from model_dir */
    const char *vae;             /* the VAE: diffusers or ComfyUI (Wan 2.1 names) .safetensors; NULL: from
                                model_dir. A single .safetensors given beside a diffusers model_dir takes
                                that folder's config.json of its component. The tokenizer: the text encoder
                                GGUF's, else model_dir's tokenizer/, else the Qwen2.5 tokenizer installed
                                with the engine. The "model" scheduler: model_dir's, else Qwen-Image's. */
    const char *mmproj;      /* Edit models with a llama.cpp text encoder GGUF: its vision tower, llama.cpp's
                                mmproj GGUF of Qwen2.5-VL (mmproj-Qwen2.5-VL-7B-Instruct-*.gguf); NULL: the
                                one mmproj*.gguf beside the text encoder GGUF, if any (several: an Edit
                                request is refused until this names one). Read at the first Edit request */
    const char *device;      /* "cpu" (default) or "cuda", "cuda:N" */
    const char *devices;     /* NULL: the one `device`. Or several, comma-separated, one kind:
                                "cuda:0,cuda:1,…" spreads each generation over those GPUs (one
                                rank each, weights replicated; true CFG on an even count runs cond
                                and uncond on separate halves (CFG-parallel), and image tokens are
                                sharded over the rest (Ulysses sequence parallel); the count must
                                divide the transformer's attention heads, 24: 2, 3, 4, 6 or 8).
                                Ranks talk through NCCL (libnccl.so.2, loaded at run time; host
                                copies when it is missing or GPUs repeat). "cpu,cpu,…" simulates
                                the ranks on CPU backends (threads split among them), for tests.
                                Text encoder, VAE and noise stay on the first device. */
    int threads;             /* CPU threads; 0 = all cores */
    int prompt_cache;        /* text-stage results kept for repeated prompts (an LRU of this many
                                (prompts, negative prompt, images per prompt, max length) entries);
                                0 = none. A hit skips the text encoder; images are bit-identical */
    int lora_mode;           /* a qi_lora_mode: how LoRAs reach the transformer's weights (default auto) */
    size_t vram_bytes;       /* device memory the engine may use, bytes (`--vram 8G`); 0 = what the GPU has
                                free (on the CPU: no limit). Within it the engine plans, in this order:
                                everything resident; the text encoder freed after the prompt (loaded again
                                for the next); the transformer's modulation, then blocks, streamed from
                                pinned host memory; the text encoder's layers streamed; the VAE in tiles.
                                A budget nothing fits fails qi_engine_open (QI_ERR_NOMEM) naming what did
                                not fit and the --vram or file that would. One device only (not --devices) */
    long long pinned_bytes;  /* host memory the engine may pin (page-lock) for streamed weights, bytes
                                (`--pinned 16G`); -1 (the default) = QI_PINNED_MAX from the environment
                                if set, else half the host's RAM (or of a container's memory limit);
                                0 = none. Streamed weights past it stay in ordinary memory and are
                                copied through a small pinned bounce ring (4 x 64 MiB, pinned whatever
                                this says): an extra host copy per stage, slower */
    int edit;                /* the model is Qwen-Image-Edit (its requests carry pictures): the memory plan
                                (vram_bytes) counts its vision tower, resident from the first Edit request on,
                                and the VAE encode of a 1024² picture (whole, or in tiles when that does not
                                fit; img2img and inpaint requests have theirs counted per request) */
    uint64_t random_weights; /* benchmarks only: nonzero = fill every weight with random values
                                seeded by this (backends that support it), ignoring file data */
    int load_transformer;    /* 0 (default): the transformer loads on the first qi_generate (or
                                qi_engine_warm). 1: inside qi_engine_open, on a thread of its own beside
                                the text encoder and VAE (their file reading and conversion overlap; the
                                environment's QI_LOAD_SEQUENTIAL=1 makes it 2). 2: inside qi_engine_open,
                                after them. The weights are the same either way. With the LoRA set of that
                                moment (none): LoRAs added later swap in or reload as usual. Ignored when
                                the memory plan (vram_bytes, or a GPU too small for everything) swaps,
                                streams or evicts; with random_weights 1 acts as 2 (the random values
                                follow the order weights are made). `log` is called from the opening
                                thread only */
    qi_log_fn log;           /* optional */
    void *log_user;
} qi_open_options;

/* How LoRA modules reach the transformer's weights. */
typedef enum qi_lora_mode {
    QI_LORA_AUTO = 0, /* fused into float (f32/f16/bf16) weights, at run time beside GGUF and fp8 ones */
    QI_LORA_FUSE,     /* W' = W + Σ s·B·A into float32 copies at load; a new set reloads the transformer */
    QI_LORA_RUNTIME   /* y = W·x + Σ s·B·(A·x), weights untouched; a new set swaps without a reload */
} qi_lora_mode;

qi_open_options qi_open_options_default(void);

#define QI_CFG_MAX 100 /* the largest cfg a request may ask (useful scales are 1..10) */

/* Bounds on what a caller may hand the engine (README "Checks and limits"
 * lists every limit with its message). */
#define QI_MAX_LORAS 16                           /* LoRA files in a set */
#define QI_LORA_MAX_BYTES ((uint64_t)16 << 30)    /* one LoRA file (the whole bf16 transformer is 41 GB) */
#define QI_PROMPT_MAX_BYTES (1 << 20)             /* one prompt or negative prompt, UTF-8 bytes (the model
                                                     reads at most 1024 tokens of it) */

typedef enum qi_rng_kind { QI_RNG_CPU = 0, QI_RNG_CUDA = 1 } qi_rng_kind;

typedef struct qi_request {
    const char *prompt;            /* UTF-8; or several prompts: */
    const char *const *prompts;    /* n_prompts prompts (used when not NULL; prompt is then ignored) */
    int n_prompts;
    const char *negative_prompt;   /* NULL: no true CFG */
    int width, height;             /* multiples of 16; default 1024 */
    int steps;                     /* >= 1; default 8 */
    float cfg;                     /* true CFG scale, 0..QI_CFG_MAX; applied when > 1 and a negative
                                      prompt is set */
    uint64_t seed;
    int batch;                     /* images per prompt; default 1 (total = prompts × batch) */
    const char *scheduler;         /* NULL: the model's config; "lightning", "model" or a JSON path */
    qi_rng_kind rng;
    int noise_dtype;               /* 0 auto: the run's dtype, as diffusers (CPU float32, CUDA bf16);
                                      1 float32; 2 bfloat16 (a different torch stream, not f32 rounded) */
    int max_sequence_length;       /* default 512 */
    /* Image-to-image and inpainting (diffusers' QwenImageImg2ImgPipeline /
     * QwenImageInpaintPipeline). The output is width × height as always (not
     * derived from the picture): the picture, and the mask, are resized to it
     * with PIL's Lanczos filter, no crop (the aspect ratio follows the output). */
    const uint8_t *init_image;     /* RGB8 [init_height, init_width, 3]; NULL: text-to-image */
    int init_width, init_height;   /* 1..16384 each */
    const uint8_t *mask_image;     /* RGB8 [mask_height, mask_width, 3], any size; NULL: no inpainting.
                                      Grey level (PIL's convert("L")) >= 128 = repaint (white) */
    int mask_width, mask_height;
    double strength;               /* 0 < strength <= 1 (default 0.6): the schedule starts at step
                                      int(steps − steps·strength), from the picture noised to that sigma */
    qi_progress_fn progress;
    void *progress_user;
    qi_latents_fn step_latents;    /* optional: previews (see qi_latents_fn) */
    void *step_latents_user;
    /* Qwen-Image-Edit (2509 / 2511, QwenImageEditPlusPipeline): the reference
     * pictures, in order ("Picture 1", "Picture 2", …), each RGB8 [h, w, 3];
     * 0 pictures: not an Edit request. One prompt, batch 1, one device. Set
     * width and height to 0 for the pipeline's default (the last picture's
     * aspect at 1024²); given sides are rounded down to 16. */
    int n_edit_images;                 /* 0 … 8 */
    const uint8_t *const *edit_images;
    const int *edit_widths, *edit_heights;
    int edit_vl_area, edit_vae_area;   /* pictures' areas for the vision tower and the VAE, pixels;
                                          0: 147456 (384²) and 1048576 (1024²), the pipeline's */
} qi_request;

qi_request qi_request_default(void);

typedef struct qi_image {
    int width, height, count; /* count images of width x height, RGB8 interleaved */
    uint8_t *rgb;             /* count * height * width * 3 bytes */
    float *latents;           /* what the VAE decoded: [count, 16, 1, height/8, width/8] float32 */
} qi_image;

/* Wall time of each stage of the last qi_generate, and the process's peak RSS. */
typedef struct qi_timings {
    double text_s, load_s, denoise_s, vae_s;
    double peak_rss_mb;
    double device_peak_mb; /* peak device memory of a GPU backend (weights + activations); 0 on the CPU */
    int text_cached;       /* the text stage came from the prompt cache */
} qi_timings;

/* Opens the model folder and the device(s) and loads tokenizer, text encoder
 * and VAE; the transformer loads on the first qi_generate, or on
 * qi_engine_warm. On failure *out may still be set: read qi_engine_error(*out),
 * then qi_engine_close it. */
qi_status qi_engine_open(const qi_open_options *opt, qi_engine **out);

/* Loads every component now (the transformer included, with the current LoRA
 * set) instead of lazily inside the next qi_generate. progress (may be
 * NULL) is called with stage "load", step = components ready so far, total =
 * all of them (tokenizer, text encoder, VAE, transformer); nonzero cancels
 * (QI_ERR_CANCELLED). Components already loaded are not loaded again. */
qi_status qi_engine_warm(qi_engine *e, qi_progress_fn progress, void *user);

/* A LoRA file and its strength S: y = W·x + S · scale · B·(A·x) on every
 * Linear it names (scale = alpha / rank for kohya files, ...: lora.h). */
typedef struct qi_lora_spec {
    const char *path;
    float strength;
} qi_lora_spec;

/* Replaces the whole LoRA set with loras[0..n) (n = 0 removes every LoRA).
 * The files are read now (an unreadable or malformed file fails here and
 * leaves the previous set in place); they are matched against the
 * transformer's weights at the next warm or generate: a set that matches
 * nothing fails that call and the engine goes back to the previous set.
 * Where the LoRAs run beside the weights (qi_lora_mode: runtime, or auto on
 * GGUF / fp8 weights) that call swaps the small factor matrices in, in
 * milliseconds, the transformer untouched; where they are fused into float
 * weights it reloads the transformer from its file (the fused copies are not
 * undone in place). */
qi_status qi_engine_set_loras(qi_engine *e, const qi_lora_spec *loras, int n);
/* Appends one LoRA to the set (same rules; a file that fails to bind at the
 * next load is removed again). */
qi_status qi_engine_add_lora(qi_engine *e, const char *path, float strength);

qi_status qi_generate(qi_engine *e, const qi_request *req, qi_image *out);
const char *qi_engine_error(const qi_engine *e);
const qi_timings *qi_engine_timings(const qi_engine *e);
void qi_engine_close(qi_engine *e);
void qi_image_free(qi_image *img);

/* ---- images out ------------------------------------------------------------
 *
 * These functions take no engine: a failure writes its one-line message into
 * errbuf (errcap bytes, may be NULL/0). */

typedef enum qi_image_format { QI_IMAGE_PNG = 0, QI_IMAGE_JPEG, QI_IMAGE_WEBP } qi_image_format;

/* The format named by a file name's extension (.png, .jpg/.jpeg, .webp, any
 * case); QI_ERR_ARG naming the extension otherwise. */
qi_status qi_image_format_from_path(const char *path, qi_image_format *out, char *errbuf, size_t errcap);

/* Image `index` of img encoded in memory: *bytes (release with qi_free_bytes)
 * of *len. quality: JPEG / WebP (lossy) quality 1..100, 0 = 95; PNG ignores
 * it. parameters (UTF-8, may be NULL): the generation's settings text, stored
 * as PNG's "parameters" text chunk (tEXt, or iTXt when not ASCII: what A1111 /
 * ComfyUI readers look for) and as JPEG comment segments (several when it is
 * over 65533 bytes, cut between characters); WebP stores none. The text is
 * stored whole; invalid UTF-8 is refused (QI_ERR_ARG). */
qi_status qi_image_encode(const qi_image *img, int index, qi_image_format fmt, int quality,
                          const char *parameters, uint8_t **bytes, size_t *len, char *errbuf, size_t errcap);
void qi_free_bytes(uint8_t *bytes);

/* The same bytes written to path (format by extension), through a temporary
 * file beside it renamed into place once complete: a failed write leaves no
 * partial file. */
qi_status qi_image_write(const qi_image *img, int index, const char *path, int quality, const char *parameters,
                         char *errbuf, size_t errcap);

/* ---- images in ---- */

/* A picture file (PNG, JPEG or WebP, told by its content) as 8-bit RGB for
 * qi_request.init_image / mask_image: *rgb [*height, *width, 3], release with
 * qi_free_bytes. Alpha is dropped, grey repeated, 16-bit samples cut to their
 * high byte; at most 16384 pixels a side. */
qi_status qi_image_read(const char *path, uint8_t **rgb, int *width, int *height, char *errbuf, size_t errcap);
/* The same from bytes in memory (an uploaded file); name names them in
 * messages (e.g. the form field "image"). A picture with a side over
 * max_side (0: 16384) is QI_ERR_ARG before its pixels are allocated. */
qi_status qi_image_read_mem(const char *name, const void *data, size_t size, int max_side, uint8_t **rgb, int *width,
                            int *height, char *errbuf, size_t errcap);

/* img->latents (what the VAE decoded) as a safetensors file with one float32
 * tensor "vae_in" [count, 16, 1, height/8, width/8]. */
qi_status qi_image_save_latents(const qi_image *img, const char *path, char *errbuf, size_t errcap);

#ifdef __cplusplus
}
#endif
#endif

/*
 * generate.c — `qwen-image generate`: flags → qi_request → image files.
 *
 * Everything that can be checked before the weights load is checked first
 * (flags, text, output names and folders, LoRA files, then — checks.c — the
 * scheduler and the prompts' lengths), so a typo costs no minutes of loading.
 * Images are written through the public API (qi_image_write: a temporary
 * name renamed into place), so a failed run never leaves a partial file.
 *
 * Ctrl-C (SIGINT): the first cancels at the next progress report (the
 * engine returns QI_ERR_CANCELLED) and the command exits 130 having written
 * nothing more; while an image is being written the signal waits until that
 * file is complete and in place; a second Ctrl-C exits at once (nothing is
 * being written then). This file uses only qwen_image.h.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "qwen_image.h"

static void generate_usage(void) {
    printf("usage: qwen-image generate [-m MODEL_DIR] [--diffusion-model F] [--text-encoder F] [--vae F] -p TEXT "
           "[options]\n\n"
           "  -m DIR              Qwen/Qwen-Image diffusers folder, or a folder of ComfyUI-style split files\n"
           "                      (found by content) (default: the bundled tiny test model)\n"
           "  --diffusion-model F the transformer file (.safetensors: ComfyUI / LightX2V, .gguf: city96 / QuantStack)\n"
           "  --text-encoder F    the text encoder file (ComfyUI .safetensors, llama.cpp qwen2vl .gguf)\n"
           "  --vae F             the VAE file (diffusers or ComfyUI .safetensors); each of the three replaces\n"
           "                      -m's; with all three, -m is not needed\n"
           "  --mmproj F          Edit models with a llama.cpp text encoder GGUF: llama.cpp's mmproj GGUF of\n"
           "                      Qwen2.5-VL (the vision tower; default: the one mmproj*.gguf beside it)\n"
           "  -p TEXT             prompt (repeat for several prompts in one batch)\n"
           "  -n TEXT             negative prompt (true CFG when --cfg > 1)\n"
           "  --lora FILE[:S]     LoRA with strength S (default 1); repeatable\n"
           "  --lora-mode M       auto | fuse | runtime: LoRAs added into float copies of the weights at load,\n"
           "                      or applied beside them at each Linear (auto: fused into f32/f16/bf16\n"
           "                      weights, at run time on GGUF and fp8 ones)\n"
           "  --steps N           denoising steps, 1..1000 (default 8)\n"
           "  --cfg F             true CFG scale, 0..100 (default 1: off; base model: 4 with -n \" \")\n"
           "  -W W, -H H          size in pixels, multiples of 16 (default 1024x1024)\n"
           "  --seed S            noise seed as torch.manual_seed (default 42)\n"
           "  --image FILE        img2img: start from this picture (PNG, JPEG or WebP), resized to -W x -H.\n"
           "                      (Lanczos, no crop: the output size is -W/-H as always, not the picture's)\n"
           "                      With a Qwen-Image-Edit model: the picture to edit; repeat for up to 3\n"
           "                      (-p says what to do with them; without -W/-H the output has the last\n"
           "                      picture's aspect at about 1024x1024)\n"
           "  --edit              the model is Qwen-Image-Edit (single files; a diffusers folder says so\n"
           "                      in model_index.json)\n"
           "  --edit-vl-area N, --edit-vae-area N  tests only: the pictures' areas in pixels for the\n"
           "                      vision tower / the VAE (default 384x384 / 1024x1024)\n"
           "  --strength S        img2img / inpainting: how much to change, 0 < S <= 1 (default 0.6; 1 = from\n"
           "                      pure noise); the last ceil-ish S x steps steps of the schedule run\n"
           "  --mask FILE         inpainting (needs --image): white (grey >= 128) = repaint, black = keep;\n"
           "                      resized to -W x -H like the picture\n"
           "  --batch B           images per prompt (default 1); out.png becomes out-0.png …\n"
           "  --batch-index K/N   write only image K of a request of N images over the -p prompts (an\n"
           "                      image's \"Batch index: K, Batch size: N\"): the whole request runs again,\n"
           "                      since the batch's shape changes the last bits of the arithmetic\n"
           "  --from-parameters F take every setting from the parameters of image F (.png, .jpg, or a\n"
           "                      text file): reruns it; any other flag overrides what F says\n"
           "  --scheduler S       lightning | model | PATH.json (default: the model's scheduler config)\n"
           "  --rng cpu|cuda      which torch generator's noise to reproduce (default cpu)\n"
           "  --noise-dtype D     auto (the run's: f32 on CPU, bf16 on CUDA, as diffusers) | f32 | bf16\n"
           "  --max-sequence-length N  prompt tokens the model reads, 1..1024 (default 512)\n"
           "  --device D          cpu | cuda | cuda:N (default cpu)\n"
           "  --devices LIST      one generation over several GPUs: cuda:0,cuda:1,... (CFG-parallel x sequence\n"
           "                      parallel; the count divides the 24 heads: 2, 3, 4, 6, 8); cpu,cpu simulates it\n"
           "  --threads N         CPU threads (default: all cores; at most 4 per core)\n"
           "  --vram SIZE         device memory to stay within, e.g. 8G, 6G, 3000M (default: what the GPU has\n"
           "                      free): the text encoder is freed after the prompt, the transformer's weights\n"
           "                      streamed from host memory, the VAE decodes in tiles, as the budget needs\n"
           QI_APP_PINNED_HELP
           "  --save-latents F    also write vae_in [B,16,1,H/8,W/8] float32 to F (.safetensors)\n"
           "  --random-weights S  benchmarks only: every weight filled with seeded random values on the GPU,\n"
           "                      the files' data ignored (for `bench --write-sparse` folders)\n"
           "  -o FILE             output image: .png / .jpg (with parameters), .webp (default out.png)\n"
           "  --quiet             no progress or summary on stderr\n\n"
           "Exit codes: 0 done, 1 runtime error, 2 usage error, 130 interrupted (Ctrl-C).\n");
}

int qi_app_parse_lora_mode(const char *flag, const char *v, int *mode) {
    if (!strcmp(v, "auto")) *mode = QI_LORA_AUTO;
    else if (!strcmp(v, "fuse")) *mode = QI_LORA_FUSE;
    else if (!strcmp(v, "runtime")) *mode = QI_LORA_RUNTIME;
    else return qi_app_usage_error("%s %s: expected auto, fuse or runtime", flag, v);
    return 0;
}

int qi_app_add_lora(const char *spec, gen_args *a) {
    if (a->n_loras == QI_APP_MAX_LORAS) return qi_app_usage_error("--lora: at most %d LoRAs", QI_APP_MAX_LORAS);
    /* FILE[:STRENGTH]: the strength is whatever follows the last ':' if it parses as a number. */
    static char buf[QI_APP_MAX_LORAS][4096];
    char *path = buf[a->n_loras];
    snprintf(path, sizeof buf[0], "%s", spec);
    float strength = 1.0f;
    char *colon = strrchr(path, ':');
    if (colon && colon[1]) {
        char *end;
        double v = strtod(colon + 1, &end);
        if (!*end) {
            if (!isfinite(v)) return qi_app_usage_error("--lora %s: the strength must be a finite number", spec);
            *colon = 0;
            strength = (float)v;
        }
    }
    a->lora_path[a->n_loras] = path;
    a->lora_strength[a->n_loras++] = strength;
    return 0;
}

static void default_args(gen_args *a) {
    memset(a, 0, sizeof *a);
    a->out = "out.png";
    a->steps = 8;
    a->width = a->height = 1024;
    a->batch = 1;
    a->cfg = 1.0;
    a->seed = 42;
    a->device = "cpu";
    a->max_seq_len = 512;
    a->strength = 0.6; /* diffusers' default */
    a->pinned = -1;
}

static void free_args(gen_args *a) {
    qi_free_bytes(a->image_rgb);
    qi_free_bytes(a->mask_rgb);
    a->image_rgb = a->mask_rgb = NULL;
    for (int k = 0; k < 2; k++) qi_free_bytes(a->more_rgb[k]), a->more_rgb[k] = NULL;
    for (int i = 0; i < a->n_owned; i++) free(a->owned[i]);
    a->n_owned = 0;
}

/* --from-parameters FILE, wherever it stands: its settings first, so that
 * every other flag overrides them. */
static int apply_from_parameters(int argc, char **argv, gen_args *a) {
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--from-parameters")) continue;
        a->from_parameters = argv[i + 1];
        char *text = qi_params_read(a->from_parameters);
        if (!text) return 1;
        int rc = qi_params_parse(text, a->from_parameters, a, a->scheduler_hash, sizeof a->scheduler_hash);
        free(text);
        return rc;
    }
    return 0;
}

static int parse_batch_index(const char *v, gen_args *a) {
    char *end;
    errno = 0;
    long k = strtol(v, &end, 10), n = -1;
    if (end != v && *end == '/') n = strtol(end + 1, &end, 10);
    if (errno || *end || k < 0 || n < 1 || n > 4096 || k >= n)
        return qi_app_usage_error("--batch-index %s: expected K/N, 0 <= K < N <= 4096 (image K of N)", v);
    a->batch_index = k;
    a->batch_size = n;
    return 0;
}

/* One flag with its value v. */
static int parse_flag(const char *f, const char *v, gen_args *a, int *explicit_prompt) {
    if (qi_app_component_flag(f, v, &a->model, &a->diffusion_model, &a->text_encoder, &a->vae)) return 0;
    if (!strcmp(f, "--mmproj")) {
        a->mmproj = v;
        return 0;
    }
    if (!strcmp(f, "-p")) {
        if (!*explicit_prompt) a->n_prompts = 0; /* the first -p replaces --from-parameters' prompt */
        *explicit_prompt = 1;
        if (a->n_prompts == QI_APP_MAX_PROMPTS)
            return qi_app_usage_error("-p: at most %d prompts", QI_APP_MAX_PROMPTS);
        a->prompts[a->n_prompts++] = v;
    } else if (!strcmp(f, "-n")) a->negative = v;
    else if (!strcmp(f, "-o")) a->out = v;
    else if (!strcmp(f, "--lora")) return qi_app_add_lora(v, a);
    else if (!strcmp(f, "--lora-mode")) return qi_app_parse_lora_mode(f, v, &a->lora_mode);
    else if (!strcmp(f, "--steps")) return qi_app_parse_int(f, v, 1, 1000, &a->steps);
    else if (!strcmp(f, "--cfg")) {
        if (qi_app_parse_float(f, v, &a->cfg)) return 2;
        if (!(a->cfg >= 0 && a->cfg <= QI_CFG_MAX))
            return qi_app_usage_error("--cfg %s: must be between 0 and %d", v, QI_CFG_MAX);
    } else if (!strcmp(f, "-W") || !strcmp(f, "--width")) {
        a->size_given = 1;
        return qi_app_parse_int(f, v, 16, 8192, &a->width);
    }
    else if (!strcmp(f, "-H") || !strcmp(f, "--height")) {
        a->size_given = 1;
        return qi_app_parse_int(f, v, 16, 8192, &a->height);
    }
    else if (!strcmp(f, "--seed")) {
        char *end;
        errno = 0;
        a->seed = strtoull(v, &end, 10);
        if (!isdigit((unsigned char)v[0]) || *end || errno == ERANGE)
            return qi_app_usage_error("--seed %s: expected an integer from 0 to 18446744073709551615", v);
    } else if (!strcmp(f, "--batch")) return qi_app_parse_int(f, v, 1, 64, &a->batch);
    else if (!strcmp(f, "--batch-index")) return parse_batch_index(v, a);
    else if (!strcmp(f, "--scheduler")) {
        a->scheduler = v;
        a->scheduler_hash[0] = 0; /* not the file --from-parameters named */
    }
    else if (!strcmp(f, "--rng")) {
        if (strcmp(v, "cpu") && strcmp(v, "cuda")) return qi_app_usage_error("--rng %s: expected cpu or cuda", v);
        a->rng = !strcmp(v, "cuda") ? QI_RNG_CUDA : QI_RNG_CPU;
    } else if (!strcmp(f, "--noise-dtype")) {
        if (!strcmp(v, "auto")) a->noise_dtype = 0;
        else if (!strcmp(v, "f32")) a->noise_dtype = 1;
        else if (!strcmp(v, "bf16")) a->noise_dtype = 2;
        else return qi_app_usage_error("--noise-dtype %s: expected auto, f32 or bf16", v);
    } else if (!strcmp(f, "--max-sequence-length")) return qi_app_parse_int(f, v, 1, 1024, &a->max_seq_len);
    else if (!strcmp(f, "--device")) a->device = v;
    else if (!strcmp(f, "--devices")) a->devices = v;
    else if (!strcmp(f, "--threads")) return qi_app_parse_threads(f, v, &a->threads);
    else if (!strcmp(f, "--vram")) return qi_app_parse_size(f, v, &a->vram);
    else if (!strcmp(f, "--pinned")) return qi_app_parse_pinned(f, v, &a->pinned);
    else if (!strcmp(f, "--save-latents")) a->save_latents = v;
    else if (!strcmp(f, "--image")) {
        if (!a->image) a->image = v;
        else if (a->n_more_images < 2) a->more_images[a->n_more_images++] = v;
        else return qi_app_usage_error("--image %s: at most 3 pictures (Qwen-Image-Edit-2509 takes 1 to 3)", v);
    } else if (!strcmp(f, "--edit-vl-area")) return qi_app_parse_int(f, v, 1024, 1L << 26, &a->edit_vl_area);
    else if (!strcmp(f, "--edit-vae-area")) return qi_app_parse_int(f, v, 1024, 1L << 26, &a->edit_vae_area);
    else if (!strcmp(f, "--mask")) a->mask = v;
    else if (!strcmp(f, "--strength")) {
        char *end;
        errno = 0;
        a->strength = strtod(v, &end);
        a->strength_given = 1;
        if (end == v || *end || errno == ERANGE || !(a->strength > 0 && a->strength <= 1))
            return qi_app_usage_error("--strength %s: expected a number in (0, 1] (1 = repaint from pure noise, "
                                      "small values stay close to the picture)", v);
    }
    else if (!strcmp(f, "--random-weights")) return qi_app_parse_int(f, v, 1, 1L << 30, &a->random_weights);
    return 0;
}

static int parse_args(int argc, char **argv, gen_args *a) {
    default_args(a);
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            generate_usage();
            return -1;
        }
    int rc = apply_from_parameters(argc, argv, a), explicit_prompt = 0;
    for (int i = 1; !rc && i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) {
            a->quiet = 1;
            continue;
        }
        if (!strcmp(f, "--edit")) {
            a->edit = 1;
            continue;
        }
        static const char *const with_value[] = {
            "-m", "-p", "-n", "-o", "--lora", "--lora-mode", "--steps", "--cfg", "-W", "--width", "-H", "--height", "--seed",
            "--batch", "--batch-index", "--from-parameters", "--scheduler", "--rng", "--noise-dtype",
            "--max-sequence-length", "--device", "--devices", "--threads", "--vram", "--pinned", "--save-latents",
            "--diffusion-model", "--text-encoder", "--vae", "--random-weights", "--image", "--mask", "--strength",
            "--edit-vl-area", "--edit-vae-area", "--mmproj"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++) known |= !strcmp(f, with_value[k]);
        if (!known) return qi_app_usage_error("generate: unknown option %s", f);
        if (!v) return qi_app_usage_error("generate: %s needs a value", f);
        i++;
        rc = parse_flag(f, v, a, &explicit_prompt);
    }
    if (rc) return rc;
    if (!a->n_prompts) return qi_app_usage_error("generate: no prompt (-p TEXT)");
    if (a->mask && !a->image) return qi_app_usage_error("--mask needs --image (the picture whose masked part is repainted)");
    if (a->strength_given && !a->image)
        return qi_app_usage_error("--strength needs --image (it says how far from the picture to go)");
    if (a->width % 16 || a->height % 16)
        return qi_app_usage_error("-W %ld -H %ld: width and height must be positive multiples of 16", a->width,
                                  a->height);
    if (a->batch_size) { /* the whole request runs again: N images over the prompts */
        if (a->batch != 1 || a->batch_size % a->n_prompts)
            return qi_app_usage_error("--batch-index %ld/%ld: the batch of %ld images must split evenly over the %d "
                                      "prompt(s), without --batch", a->batch_index, a->batch_size, a->batch_size,
                                      a->n_prompts);
        a->batch = a->batch_size / a->n_prompts;
    }
    return 0;
}

/* ---- progress and Ctrl-C ------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    if (interrupted) _exit(QI_APP_EXIT_INTERRUPTED); /* the second: at once (no file is being written) */
    interrupted = 1;
    static const char msg[] = "\nqwen-image: interrupted: stopping at the next step (Ctrl-C again to quit now)\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
}

static void catch_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

/* SIGINT held back (1) or let through (0): a file is written whole or not at all. */
static void hold_sigint(int hold) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigprocmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct progress {
    int tty, quiet;
    double stage_start;
    const char *stage;
} progress;

/* Test hook (tests/test_cli.c only): QI_TEST_STEP_SECONDS=S makes each
 * denoising step's report wait S seconds (a signal's handler runs meanwhile,
 * the wait goes on), so a test can send a second SIGINT inside a step. */
static void test_slow_step(const char *stage) {
    const char *s = getenv("QI_TEST_STEP_SECONDS");
    if (!s || !*s || strcmp(stage, "denoise")) return;
    struct timespec left = {.tv_sec = atoi(s), .tv_nsec = 0};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static int on_progress(void *user, const char *stage, int step, int total) {
    progress *p = user;
    if (interrupted) return 1;
    if (p->quiet) return 0;
    double now = now_s();
    if (!p->stage || strcmp(p->stage, stage)) {
        if (p->tty && p->stage) fputc('\n', stderr);
        p->stage = stage;
        p->stage_start = now;
    }
    double el = now - p->stage_start;
    double rate = step > 0 && el > 0 ? step / el : 0;
    double eta = rate > 0 ? (total - step) / rate : 0;
    if (p->tty) {
        int width = 24, fill = total ? step * width / total : width;
        fprintf(stderr, "\r%-12s [%.*s%*s] %d/%d  %.2f it/s  ETA %.1fs ", stage, fill,
                "########################", width - fill, "", step, total, rate, eta);
        if (step == total && !strcmp(stage, "vae")) fputc('\n', stderr);
    } else if (step == 0 || step == total || !strcmp(stage, "denoise")) {
        fprintf(stderr, "%s %d/%d (%.2f it/s, ETA %.1fs)\n", stage, step, total, rate, eta);
    }
    fflush(stderr);
    test_slow_step(stage);
    return interrupted != 0;
}

static void log_line(void *user, const char *line) {
    const progress *p = user;
    if (!p->quiet) fprintf(stderr, "qwen-image: %s\n", line);
}

/* ---- outputs ------------------------------------------------------------------------- */

static void image_name(const char *out, int index, int count, char *buf, size_t cap) {
    if (count == 1) {
        snprintf(buf, cap, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(buf, cap, "%.*s-%d%s", (int)(dot - out), out, index, dot);
}

/* Test hook (tests/test_cli.c only): QI_TEST_PAUSE_BEFORE_SAVE=S waits S
 * seconds with SIGINT held, just before each file is written, so a test can
 * deliver the signal "during the save" deterministically. */
static void test_pause_before_save(const char *name) {
    const char *s = getenv("QI_TEST_PAUSE_BEFORE_SAVE");
    if (!s || !*s) return;
    fprintf(stderr, "qwen-image: test hook: pausing before writing %s\n", name);
    struct timespec ts = {.tv_sec = atoi(s), .tv_nsec = 0};
    nanosleep(&ts, NULL);
}

/* Writes the images (and latents) with their parameters; 0, 1 or 130. */
static int write_outputs(const gen_args *a, const qi_image *img, const prompt_note *notes) {
    char err[1024];
    int rc = 0;
    if (a->save_latents) {
        hold_sigint(1);
        test_pause_before_save(a->save_latents);
        if (qi_image_save_latents(img, a->save_latents, err, sizeof err)) rc = qi_app_runtime_error(err);
        hold_sigint(0);
    }
    /* --batch-index K/N: of the N images computed, image K is the one asked for */
    int first = a->batch_size ? (int)a->batch_index : 0, end = a->batch_size ? first + 1 : img->count;
    for (int i = first; !rc && !interrupted && i < end; i++) {
        char name[4096];
        image_name(a->out, i - first, end - first, name, sizeof name);
        char *params = qi_params_text(a, i, img->count, notes, a->scheduler_hash);
        if (!params) return qi_app_runtime_error("out of memory for the parameters text");
        hold_sigint(1);
        test_pause_before_save(name);
        if (qi_image_write(img, i, name, 0, params, err, sizeof err)) rc = qi_app_runtime_error(err);
        else if (!a->quiet) fprintf(stderr, "qwen-image: wrote %s\n", name);
        hold_sigint(0); /* a Ctrl-C that came meanwhile lands here: the file is whole */
        free(params);
    }
    return rc ? rc : interrupted ? QI_APP_EXIT_INTERRUPTED : 0;
}

/* open: qi_engine_open (the loads before the request: the log lines above split them). */
static void print_summary(qi_engine *e, const qi_image *img, double total, double open) {
    const qi_timings *t = qi_engine_timings(e);
    fprintf(stderr,
            "qwen-image: %d image(s) %dx%d in %.2f s (text %.2f s, load transformer %.2f s, denoise %.2f s, "
            "vae %.2f s) after an open of %.2f s, peak RSS %.0f MiB",
            img->count, img->width, img->height, total, t->text_s, t->load_s, t->denoise_s, t->vae_s, open,
            t->peak_rss_mb);
    if (t->device_peak_mb > 0) fprintf(stderr, ", peak device memory %.1f GiB", t->device_peak_mb / 1024.0);
    fputc('\n', stderr);
}

/* ---- before any weight loads --------------------------------------------------------- */

/* --image and --mask decoded (before the weights load: a bad file costs nothing). */
static int read_pictures(gen_args *a) {
    char err[1024], msg[1100];
    qi_status st = QI_OK;
    if (a->image && (st = qi_image_read(a->image, &a->image_rgb, &a->image_w, &a->image_h, err, sizeof err)))
        snprintf(msg, sizeof msg, "--image: %s", err);
    else if (a->mask && (st = qi_image_read(a->mask, &a->mask_rgb, &a->mask_w, &a->mask_h, err, sizeof err)))
        snprintf(msg, sizeof msg, "--mask: %s", err);
    for (int k = 0; !st && k < a->n_more_images; k++)
        if ((st = qi_image_read(a->more_images[k], &a->more_rgb[k], &a->more_w[k], &a->more_h[k], err, sizeof err)))
            snprintf(msg, sizeof msg, "--image: %s", err);
    if (st) qi_app_runtime_error(msg);
    return qi_app_exit_code(st);
}

/* Whether MODEL_DIR holds a Qwen-Image-Edit pipeline: its model_index.json
 * names a "_class_name" that starts with QwenImageEdit (QwenImageEditPipeline,
 * QwenImageEditPlusPipeline). That is the one reliable sign: 2509's
 * transformer config and weights equal Qwen-Image's, and Qwen-Image's text
 * encoder carries the vision tower too. Single files: --edit. */
int qi_app_model_is_edit(const char *model_dir) {
    if (!model_dir) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/model_index.json", model_dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    const char *cls = strstr(text, "\"_class_name\"");
    if (!cls || !(cls = strchr(cls + 13, ':'))) return 0;
    cls += strspn(cls + 1, " \t\r\n") + 1;
    return !strncmp(cls, "\"QwenImageEdit", 14);
}

/* --image with an Edit model: the pictures to edit (1 to 3); otherwise img2img (one). */
static int check_edit(gen_args *a) {
    if (!a->edit) a->edit = qi_app_model_is_edit(a->model);
    if (!a->edit) {
        if (a->n_more_images)
            return qi_app_usage_error("--image given %d times: several pictures need a Qwen-Image-Edit model (a "
                                      "folder whose model_index.json names QwenImageEditPlusPipeline, or --edit)",
                                      a->n_more_images + 1);
        if (a->edit_vl_area || a->edit_vae_area)
            return qi_app_usage_error("--edit-vl-area / --edit-vae-area need a Qwen-Image-Edit model");
        return 0;
    }
    if (!a->image) return qi_app_usage_error("generate: a Qwen-Image-Edit model needs --image (1 to 3 pictures)");
    if (a->mask) return qi_app_usage_error("--mask: inpainting needs a Qwen-Image model, not Qwen-Image-Edit");
    if (a->strength_given) return qi_app_usage_error("--strength: Qwen-Image-Edit always starts from pure noise");
    if (!a->size_given) a->width = a->height = 0; /* the last picture's aspect at 1024² */
    return 0;
}

/* The outputs, the LoRA files, the text, the scheduler and the prompts. */
static int check_before_loading(gen_args *a, prompt_note *notes) {
    char err[1024];
    qi_image_format fmt;
    if (qi_image_format_from_path(a->out, &fmt, err, sizeof err)) return qi_app_usage_error("-o: %s", err);
    int count = a->batch_size ? 1 : a->n_prompts * (int)a->batch, rc = 0;
    for (int i = 0; !rc && i < count; i++) {
        char name[4096];
        image_name(a->out, i, count, name, sizeof name);
        rc = qi_app_check_output("-o", name);
    }
    if (!rc && a->save_latents) rc = qi_app_check_output("--save-latents", a->save_latents);
    if (rc) return rc;
    for (int i = 0; i < a->n_loras; i++)
        if (access(a->lora_path[i], R_OK) != 0) {
            fprintf(stderr, "qwen-image: error: --lora %s: cannot read the file\n", a->lora_path[i]);
            return 1;
        }
    if ((rc = read_pictures(a))) return rc;
    if ((rc = qi_app_check_text(a))) return rc;
    a->model = qi_app_model_or_default(a->model, a->diffusion_model, a->text_encoder, a->vae, a->quiet);
    if ((rc = check_edit(a))) return rc;
    if (a->cfg > 1.0 && !a->negative && !a->quiet)
        fprintf(stderr, "qwen-image: warning: --cfg %g does nothing without a negative prompt (-n TEXT; the base "
                        "model's usual one is \" \"): true CFG is off\n", a->cfg);
    if ((rc = qi_app_check_configs(a))) return rc;
    return qi_app_precheck(a, notes);
}

/* ---- the command ---------------------------------------------------------------------- */

static qi_request make_request(const gen_args *a, progress *prog) {
    qi_request r = qi_request_default();
    r.prompts = a->prompts;
    r.n_prompts = a->n_prompts;
    r.negative_prompt = a->negative;
    r.width = (int)a->width;
    r.height = (int)a->height;
    r.steps = (int)a->steps;
    r.cfg = (float)a->cfg;
    r.seed = a->seed;
    r.batch = (int)a->batch;
    r.scheduler = a->scheduler;
    r.rng = a->rng;
    r.noise_dtype = a->noise_dtype;
    r.max_sequence_length = (int)a->max_seq_len;
    r.strength = a->strength;
    r.progress = on_progress;
    r.progress_user = prog;
    return r;
}

static int run(gen_args *a, const prompt_note *notes) {
    progress prog = {.tty = isatty(2), .quiet = a->quiet};
    qi_open_options o = qi_open_options_default();
    o.edit = a->edit;
    o.model_dir = a->model;
    o.diffusion_model = a->diffusion_model;
    o.text_encoder = a->text_encoder;
    o.vae = a->vae;
    o.mmproj = a->mmproj;
    o.device = a->device;
    o.devices = a->devices;
    o.threads = (int)a->threads;
    o.lora_mode = a->lora_mode;
    o.random_weights = (uint64_t)a->random_weights;
    o.vram_bytes = a->vram;
    o.pinned_bytes = a->pinned;
    o.log = log_line;
    o.log_user = &prog;
    /* one image, then exit: the transformer loads beside the text encoder (LoRAs are added after the
     * open, and a fused set would reload it: then it loads lazily, as before) */
    o.load_transformer = a->n_loras == 0;
    qi_engine *e = NULL;
    double t_open = now_s();
    qi_status st = qi_engine_open(&o, &e);
    t_open = now_s() - t_open;
    for (int i = 0; !st && i < a->n_loras; i++) st = qi_engine_add_lora(e, a->lora_path[i], a->lora_strength[i]);
    qi_image img = {0};
    double t0 = now_s();
    qi_request r = make_request(a, &prog);
    const uint8_t *pictures[3] = {a->image_rgb, a->more_rgb[0], a->more_rgb[1]};
    int widths[3] = {a->image_w, a->more_w[0], a->more_w[1]}, heights[3] = {a->image_h, a->more_h[0], a->more_h[1]};
    if (a->edit) {
        r.n_edit_images = 1 + a->n_more_images;
        r.edit_images = pictures, r.edit_widths = widths, r.edit_heights = heights;
        r.edit_vl_area = (int)a->edit_vl_area, r.edit_vae_area = (int)a->edit_vae_area;
    } else {
        r.init_image = a->image_rgb, r.init_width = a->image_w, r.init_height = a->image_h;
        r.mask_image = a->mask_rgb, r.mask_width = a->mask_w, r.mask_height = a->mask_h;
    }
    if (!st) st = qi_generate(e, &r, &img);
    if (st) {
        if (prog.tty && !a->quiet) fputc('\n', stderr);
        int rc = st == QI_ERR_CANCELLED && interrupted ? QI_APP_EXIT_INTERRUPTED : qi_app_exit_code(st);
        if (rc == QI_APP_EXIT_INTERRUPTED) fprintf(stderr, "qwen-image: interrupted: nothing written\n");
        else fprintf(stderr, "qwen-image: error: %s\n", qi_engine_error(e));
        qi_engine_close(e);
        return rc;
    }
    double total = now_s() - t0;
    int rc = write_outputs(a, &img, notes);
    if (rc == QI_APP_EXIT_INTERRUPTED) fprintf(stderr, "qwen-image: interrupted: the files above are complete\n");
    else if (!a->quiet) print_summary(e, &img, total, t_open);
    qi_image_free(&img);
    qi_engine_close(e);
    return rc;
}

int qi_cmd_generate(int argc, char **argv) {
    gen_args a;
    int rc = parse_args(argc, argv, &a);
    prompt_note notes[QI_APP_MAX_PROMPTS];
    memset(notes, 0, sizeof notes);
    if (!rc) rc = check_before_loading(&a, notes);
    if (!rc) {
        catch_sigint();
        rc = run(&a, notes);
    }
    free_args(&a);
    return rc < 0 ? 0 : rc;
}

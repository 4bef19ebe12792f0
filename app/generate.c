/*
 * generate.c — `qwen-image generate`: flags → qi_request → image files.
 *
 * Everything that can be checked before the models load is checked first
 * (sizes, steps, output name and folder, LoRA files), so a typo costs no
 * minutes of loading. Images are written through the public API
 * (qi_image_write: a temporary name renamed into place), so a failed run
 * never leaves a partial file. This file uses only qwen_image.h.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <time.h>

#include "app.h"
#include "qwen_image.h"

#define MAX_PROMPTS 64
#define MAX_LORAS 16

typedef struct gen_args {
    const char *model, *negative, *out, *scheduler, *save_latents, *device, *devices;
    const char *prompts[MAX_PROMPTS];
    int n_prompts;
    const char *lora_path[MAX_LORAS];
    float lora_strength[MAX_LORAS];
    int n_loras;
    long steps, width, height, batch, threads;
    double cfg;
    unsigned long long seed;
    qi_rng_kind rng;
    int noise_dtype;
    int quiet;
} gen_args;

static void generate_usage(void) {
    printf("usage: qwen-image generate [-m MODEL_DIR] -p TEXT [options]\n\n"
           "  -m DIR              Qwen/Qwen-Image diffusers folder (default: the bundled tiny test model)\n"
           "  -p TEXT             prompt (repeat for several prompts in one batch)\n"
           "  -n TEXT             negative prompt (true CFG when --cfg > 1)\n"
           "  --lora FILE[:S]     LoRA fused at load with strength S (default 1); repeatable\n"
           "  --steps N           denoising steps (default 8)\n"
           "  --cfg F             true CFG scale (default 1: off; base model: 4 with -n \" \")\n"
           "  -W W, -H H          size in pixels, multiples of 16 (default 1024x1024)\n"
           "  --seed S            noise seed as torch.manual_seed (default 42)\n"
           "  --batch B           images per prompt (default 1); out.png becomes out-0.png …\n"
           "  --scheduler S       lightning | model | PATH.json (default: the model's scheduler config)\n"
           "  --rng cpu|cuda      which torch generator's noise to reproduce (default cpu)\n"
           "  --noise-dtype D     auto (the run's: f32 on CPU, bf16 on CUDA, as diffusers) | f32 | bf16\n"
           "  --device D          cpu | cuda | cuda:N (default cpu)\n"
           "  --devices LIST      one generation over several GPUs: cuda:0,cuda:1,... (CFG-parallel x sequence\n"
           "                      parallel; the count divides the 24 heads: 2, 3, 4, 6, 8); cpu,cpu simulates it\n"
           "  --threads N         CPU threads (default: all cores)\n"
           "  --save-latents F    also write vae_in [B,16,1,H/8,W/8] float32 to F (.safetensors)\n"
           "  -o FILE             output image: .png (with parameters), .jpg, .webp (default out.png)\n"
           "  --quiet             no progress or summary on stderr\n");
}

static int parse_lora(const char *spec, gen_args *a) {
    if (a->n_loras == MAX_LORAS) return qi_app_usage_error("--lora: at most %d LoRAs", MAX_LORAS);
    /* FILE[:STRENGTH]: the strength is whatever follows the last ':' if it parses as a number. */
    static char buf[MAX_LORAS][4096];
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

static int parse_args(int argc, char **argv, gen_args *a) {
    memset(a, 0, sizeof *a);
    a->out = "out.png";
    a->steps = 8;
    a->width = a->height = 1024;
    a->batch = 1;
    a->cfg = 1.0;
    a->seed = 42;
    a->device = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            generate_usage();
            return -1;
        } else if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) {
            a->quiet = 1;
            continue;
        }
        static const char *const with_value[] = {"-m", "-p", "-n", "-o", "--lora", "--steps", "--cfg", "-W",
                                                  "--width", "-H", "--height", "--seed", "--batch", "--scheduler",
                                                  "--rng", "--noise-dtype", "--device", "--devices", "--threads",
                                                  "--save-latents"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++) known |= !strcmp(f, with_value[k]);
        if (!known) return qi_app_usage_error("generate: unknown option %s", f);
        if (!v) return qi_app_usage_error("generate: %s needs a value", f);
        i++;
        if (!strcmp(f, "-m")) a->model = v;
        else if (!strcmp(f, "-p")) {
            if (a->n_prompts == MAX_PROMPTS) return qi_app_usage_error("-p: at most %d prompts", MAX_PROMPTS);
            a->prompts[a->n_prompts++] = v;
        } else if (!strcmp(f, "-n")) a->negative = v;
        else if (!strcmp(f, "-o")) a->out = v;
        else if (!strcmp(f, "--lora")) {
            if (parse_lora(v, a)) return 2;
        } else if (!strcmp(f, "--steps")) {
            if (qi_app_parse_int(f, v, 1, 1000, &a->steps)) return 2;
        } else if (!strcmp(f, "--cfg")) {
            if (qi_app_parse_float(f, v, &a->cfg)) return 2;
            if (!(a->cfg >= 0) || !isfinite(a->cfg)) return qi_app_usage_error("--cfg %s: must be a finite number >= 0", v);
        } else if (!strcmp(f, "-W") || !strcmp(f, "--width")) {
            if (qi_app_parse_int(f, v, 16, 8192, &a->width)) return 2;
        } else if (!strcmp(f, "-H") || !strcmp(f, "--height")) {
            if (qi_app_parse_int(f, v, 16, 8192, &a->height)) return 2;
        } else if (!strcmp(f, "--seed")) {
            char *end;
            errno = 0;
            a->seed = strtoull(v, &end, 10);
            if (!isdigit((unsigned char)v[0]) || *end || errno == ERANGE)
                return qi_app_usage_error("--seed %s: expected an integer from 0 to 18446744073709551615", v);
        } else if (!strcmp(f, "--batch")) {
            if (qi_app_parse_int(f, v, 1, 64, &a->batch)) return 2;
        } else if (!strcmp(f, "--scheduler")) a->scheduler = v;
        else if (!strcmp(f, "--rng")) {
            if (!strcmp(v, "cpu")) a->rng = QI_RNG_CPU;
            else if (!strcmp(v, "cuda")) a->rng = QI_RNG_CUDA;
            else return qi_app_usage_error("--rng %s: expected cpu or cuda", v);
        } else if (!strcmp(f, "--noise-dtype")) {
            if (!strcmp(v, "auto")) a->noise_dtype = 0;
            else if (!strcmp(v, "f32")) a->noise_dtype = 1;
            else if (!strcmp(v, "bf16")) a->noise_dtype = 2;
            else return qi_app_usage_error("--noise-dtype %s: expected auto, f32 or bf16", v);
        } else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--devices")) a->devices = v;
        else if (!strcmp(f, "--threads")) {
            if (qi_app_parse_int(f, v, 1, 4096, &a->threads)) return 2;
        } else if (!strcmp(f, "--save-latents")) a->save_latents = v;
        else return qi_app_usage_error("generate: unknown option %s", f);
    }
    if (!a->n_prompts) return qi_app_usage_error("generate: no prompt (-p TEXT)");
    if (a->width <= 0 || a->height <= 0 || a->width % 16 || a->height % 16)
        return qi_app_usage_error("-W %ld -H %ld: width and height must be positive multiples of 16", a->width,
                                  a->height);
    return 0;
}

/* Checks that `path` can be created: its folder exists and is writable. */
static int check_writable(const char *flag, const char *path) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "qwen-image: error: %s %s: cannot write into folder '%s' (missing or not writable)\n", flag,
                path, dir);
        return 1;
    }
    return 0;
}

/* ---- progress ------------------------------------------------------------------------ */

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

static int on_progress(void *user, const char *stage, int step, int total) {
    progress *p = user;
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
    return 0;
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

static void parameters_text(const gen_args *a, const char *prompt, const char *model, char *buf, size_t cap) {
    size_t off = (size_t)snprintf(buf, cap, "%s\n", prompt);
    if (a->negative && off < cap) off += (size_t)snprintf(buf + off, cap - off, "Negative prompt: %s\n", a->negative);
    const char *sampler = a->scheduler && !strcmp(a->scheduler, "lightning") ? "Euler (flow, Lightning shift)"
                                                                              : "Euler (flow)";
    if (off < cap)
        off += (size_t)snprintf(buf + off, cap - off,
                                "Steps: %ld, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %ldx%ld, Model: %s",
                                a->steps, sampler, a->cfg, a->seed, a->width, a->height, model);
    for (int i = 0; i < a->n_loras && off < cap; i++) {
        const char *base = strrchr(a->lora_path[i], '/');
        off += (size_t)snprintf(buf + off, cap - off, "%s%s:%g", i ? " " : ", LoRA: ", base ? base + 1 : a->lora_path[i],
                                (double)a->lora_strength[i]);
    }
}

int qi_cmd_generate(int argc, char **argv) {
    gen_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    char err[1024];
    qi_image_format fmt;
    if (qi_image_format_from_path(a.out, &fmt, err, sizeof err)) return qi_app_usage_error("-o: %s", err);
    if (check_writable("-o", a.out)) return 1;
    if (a.save_latents && check_writable("--save-latents", a.save_latents)) return 1;
    for (int i = 0; i < a.n_loras; i++)
        if (access(a.lora_path[i], R_OK) != 0) {
            fprintf(stderr, "qwen-image: error: --lora %s: cannot read the file\n", a.lora_path[i]);
            return 1;
        }
    if (!a.model) a.model = qi_app_default_model(a.quiet);

    progress prog = {.tty = isatty(2), .quiet = a.quiet};
    qi_open_options o = qi_open_options_default();
    o.model_dir = a.model;
    o.device = a.device;
    o.devices = a.devices;
    o.threads = (int)a.threads;
    o.log = log_line;
    o.log_user = &prog;
    qi_engine *e = NULL;
    qi_status st = qi_engine_open(&o, &e);
    for (int i = 0; !st && i < a.n_loras; i++) st = qi_engine_add_lora(e, a.lora_path[i], a.lora_strength[i]);
    if (st) {
        rc = qi_app_exit_code(st);
        fprintf(stderr, "qwen-image: error: %s\n", qi_engine_error(e));
        qi_engine_close(e);
        return rc;
    }
    qi_request r = qi_request_default();
    r.prompts = a.prompts;
    r.n_prompts = a.n_prompts;
    r.negative_prompt = a.negative;
    r.width = (int)a.width;
    r.height = (int)a.height;
    r.steps = (int)a.steps;
    r.cfg = (float)a.cfg;
    r.seed = a.seed;
    r.batch = (int)a.batch;
    r.scheduler = a.scheduler;
    r.rng = a.rng;
    r.noise_dtype = a.noise_dtype;
    r.progress = on_progress;
    r.progress_user = &prog;
    qi_image img;
    double t0 = now_s();
    st = qi_generate(e, &r, &img);
    if (st) {
        if (prog.tty && !a.quiet) fputc('\n', stderr);
        fprintf(stderr, "qwen-image: error: %s\n", qi_engine_error(e));
        qi_engine_close(e);
        return qi_app_exit_code(st);
    }
    double total = now_s() - t0;
    rc = 0;
    if (a.save_latents && qi_image_save_latents(&img, a.save_latents, err, sizeof err)) {
        fprintf(stderr, "qwen-image: error: %s\n", err);
        rc = 1;
    }
    for (int i = 0; !rc && i < img.count; i++) {
        char name[4096], params[8192];
        image_name(a.out, i, img.count, name, sizeof name);
        parameters_text(&a, a.prompts[i / a.batch], a.model, params, sizeof params);
        if (qi_image_write(&img, i, name, 0, params, err, sizeof err)) {
            fprintf(stderr, "qwen-image: error: %s\n", err);
            rc = 1;
        } else if (!a.quiet) {
            fprintf(stderr, "qwen-image: wrote %s\n", name);
        }
    }
    if (!a.quiet) {
        const qi_timings *t = qi_engine_timings(e);
        fprintf(stderr,
                "qwen-image: %d image(s) %dx%d in %.2f s (text %.2f s, load transformer %.2f s, denoise %.2f s, "
                "vae %.2f s), peak RSS %.0f MiB",
                img.count, img.width, img.height, total, t->text_s, t->load_s, t->denoise_s, t->vae_s, t->peak_rss_mb);
        if (t->device_peak_mb > 0) fprintf(stderr, ", peak device memory %.1f GiB", t->device_peak_mb / 1024.0);
        fputc('\n', stderr);
    }
    qi_image_free(&img);
    qi_engine_close(e);
    return rc;
}

/*
 * checks.c — generate's checks that read the model folder but no weights:
 * the scheduler (a misspelt name, a malformed file, a schedule that is not
 * finite) and the prompts' token counts (a prompt longer than the model reads
 * is cut as diffusers cuts it: warned here, recorded in the image), and the
 * transformer's and text encoder's configs (every integer in its bounds).
 * They run before the engine opens, so a mistake costs no minutes of loading.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "engine/edit.h" /* qi_edit_output_size */
#include "io/model_dir.h"
#include "io/model_files.h"
#include "io/source.h"
#include "model/dit.h"
#include "model/prompt.h"
#include "model/text_encoder.h"
#include "model/tokenizer.h"
#include "sample/scheduler.h"

/* The scheduler file's hash, recorded in the image; when the image being
 * rerun recorded one, the file must still be the same. */
static int check_hash(gen_args *a) {
    char now[64];
    if (qi_params_file_hash(a->scheduler, now, sizeof now)) {
        qi_app_error("--scheduler %s: cannot read the file", a->scheduler);
        return 1;
    }
    if (a->scheduler_hash[0] && strcmp(a->scheduler_hash, now)) {
        qi_app_error("--scheduler %s: the file changed since the image was made (%s then, %s "
                        "now); restore it or pass --scheduler to use it as it is", a->scheduler, a->scheduler_hash,
                now);
        return 1;
    }
    snprintf(a->scheduler_hash, sizeof a->scheduler_hash, "%s", now);
    return 0;
}

int qi_app_check_text(const gen_args *a) {
    for (int i = 0; i <= a->n_prompts; i++) {
        const char *s = i < a->n_prompts ? a->prompts[i] : a->negative;
        if (!s) continue;
        size_t len = strlen(s);
        if (len > QI_PROMPT_MAX_BYTES) { /* before the tokenizer reads it */
            if (i == a->n_prompts)
                return qi_app_usage_error("-n: the negative prompt is %zu bytes; at most %d (1 MiB)", len,
                                          QI_PROMPT_MAX_BYTES);
            if (a->n_prompts > 1)
                return qi_app_usage_error("-p: prompt %d is %zu bytes; at most %d (1 MiB)", i, len, QI_PROMPT_MAX_BYTES);
            return qi_app_usage_error("-p: the prompt is %zu bytes; at most %d (1 MiB)", len, QI_PROMPT_MAX_BYTES);
        }
        size_t bad = qi_utf8_first_invalid(s, strlen(s));
        if (bad == SIZE_MAX) continue;
        if (i == a->n_prompts) return qi_app_usage_error("-n: the negative prompt is not valid UTF-8 (byte %zu)", bad);
        if (a->n_prompts > 1) return qi_app_usage_error("-p: prompt %d is not valid UTF-8 (byte %zu)", i, bad);
        return qi_app_usage_error("-p: the prompt is not valid UTF-8 (byte %zu)", bad);
    }
    return 0;
}

/* The scheduler the run will use, loaded and its schedule computed for these
 * steps and this size: the same calls the engine makes, done early. */
static int check_scheduler(gen_args *a, const qi_model_files *files) {
    const char *name = a->scheduler;
    qi_scheduler_config cfg;
    qi_error err = {{0}};
    qi_status st = QI_OK;
    const char *file = NULL;
    if (name && !strcmp(name, "lightning")) cfg = qi_scheduler_config_lightning();
    else if ((!name || !strcmp(name, "model")) && !files->scheduler_config[0]) cfg = qi_scheduler_config_qwen_image();
    else {
        file = !name || !strcmp(name, "model") ? files->scheduler_config : name;
        if (file == name && access(name, F_OK) != 0)
            return qi_app_usage_error("--scheduler %s: expected lightning, model or the path of a scheduler JSON "
                                      "file (no such file)", name);
        st = qi_scheduler_config_load(file, &cfg, &err);
        if (!st && file == name && check_hash(a)) return 1;
    }
    long w = a->width, h = a->height;
    if (a->edit && (w <= 0 || h <= 0) && a->image_w > 0) { /* the pipeline's size: the last picture's aspect */
        int k = a->n_more_images, ow, oh;
        qi_edit_picture_sizes last = {.src_w = k ? a->more_w[k - 1] : a->image_w,
                                      .src_h = k ? a->more_h[k - 1] : a->image_h};
        qi_edit_output_size(&last, (int)w, (int)h, &ow, &oh);
        w = ow, h = oh;
    }
    int tokens = (int)(w / 16) * (int)(h / 16);
    float *sig = malloc(sizeof(float) * (size_t)(2 * a->steps + 1));
    if (!st && !sig) st = qi_fail(&err, QI_ERR_NOMEM, "out of memory");
    /* the library refuses a schedule outside [0, 1] (non-finite, negative), naming the step */
    if (!st) st = qi_scheduler_sigmas(&cfg, (int)a->steps, tokens, sig, sig + a->steps + 1, &err);
    free(sig);
    /* whatever is wrong with a file the user named is the file's fault: exit 1, naming it */
    if (st) {
        qi_app_error("--scheduler %s: %s%s%s", name ? name : "model", err.msg,
                file && file != name ? "; the file: " : "", file && file != name ? file : "");
        return 1;
    }
    return 0;
}

/* Warns about a prompt the model will not read whole. */
static void warn_cut(const char *what, const prompt_note *n, long max_len, int quiet) {
    if (quiet || n->kept >= n->tokens) return;
    fprintf(stderr, "qwen-image: warning: %s is %d tokens; the model reads the first %d (%s), as diffusers "
                    "cuts it; the image's parameters record this\n", what, n->tokens, n->kept,
            n->kept < max_len ? "the tokenizer's limit" : "--max-sequence-length");
}

/* The tokens of prompt (own count) and how many the model reads. */
static qi_status count_tokens(const qi_tokenizer *tok, const char *prompt, long max_len, prompt_note *note,
                              qi_error *err) {
    int32_t *ids = NULL;
    int n = 0;
    qi_status st = qi_tokenizer_encode(tok, prompt, &ids, &n, err);
    free(ids);
    if (st) return st;
    qi_prompt_batch pb;
    const char *one[1] = {prompt};
    if ((st = qi_prompt_tokenize(tok, one, 1, (int)max_len, &pb, err))) return st;
    int cut = pb.n_ids[0] >= QI_PROMPT_MAX_IDS || pb.n_ids[0] - QI_PROMPT_DROP_IDX > max_len;
    note->tokens = n;
    note->kept = cut && pb.embed_len[0] < n ? pb.embed_len[0] : n;
    qi_prompt_batch_free(&pb);
    return QI_OK;
}

static int check_prompts(const gen_args *a, const qi_model_files *files, prompt_note *notes) {
    qi_tokenizer *tok = NULL;
    qi_error err = {{0}};
    qi_status st = qi_model_files_tokenizer(files, &tok, NULL, 0, &err);
    char what[64];
    for (int i = 0; !st && i < a->n_prompts; i++) {
        st = count_tokens(tok, a->prompts[i], a->max_seq_len, &notes[i], &err);
        snprintf(what, sizeof what, a->n_prompts > 1 ? "prompt %d (-p)" : "the prompt (-p)", i);
        if (!st) warn_cut(what, &notes[i], a->max_seq_len, a->quiet);
    }
    prompt_note neg;
    if (!st && a->negative && a->cfg > 1.0) {
        st = count_tokens(tok, a->negative, a->max_seq_len, &neg, &err);
        if (!st) warn_cut("the negative prompt (-n)", &neg, a->max_seq_len, a->quiet);
    }
    if (tok) qi_tokenizer_free(tok);
    if (st) qi_app_error("%s", err.msg);
    return st ? qi_app_exit_code(st) : 0;
}

/* The transformer's and the text encoder's configs, read as the engine reads
 * them (each integer against its bounds, limits.c): only config.json or a
 * file's header, no weights. A bad value is the file's fault: exit 1.
 * generate's alone: the server's engine has read them once at start-up. */
int qi_app_check_configs(const gen_args *a) {
    const qi_component comps[] = {QI_COMPONENT_TRANSFORMER, QI_COMPONENT_TEXT_ENCODER};
    qi_model_files files;
    qi_error err = {{0}};
    qi_model_paths paths = {a->model, a->diffusion_model, a->text_encoder, a->vae, a->mmproj};
    qi_status st = qi_model_files_resolve(&paths, &files, &err);
    for (size_t k = 0; k < QI_ARRAY_LEN(comps) && !st; k++) {
        qi_source *src = NULL;
        st = qi_model_files_open_source(&files, comps[k], &src, &err);
        qi_dit_config dit;
        qi_text_encoder_config te;
        if (!st) st = comps[k] == QI_COMPONENT_TRANSFORMER ? qi_dit_read_config(src, &dit, &err)
                                                           : qi_text_encoder_source_config(src, &te, &err);
        qi_source_close(src);
    }
    if (st) qi_app_error("%s", err.msg);
    return st ? qi_app_exit_code(st) : 0;
}

int qi_app_precheck_schedule(gen_args *a) {
    qi_model_files files;
    qi_error err = {{0}};
    qi_model_paths paths = {a->model, a->diffusion_model, a->text_encoder, a->vae, a->mmproj};
    qi_status st = qi_model_files_resolve(&paths, &files, &err);
    if (st) return qi_app_error("%s", err.msg), qi_app_exit_code(st);
    return check_scheduler(a, &files);
}

int qi_app_precheck(gen_args *a, prompt_note *notes) {
    qi_model_files files;
    qi_error err = {{0}};
    qi_model_paths paths = {a->model, a->diffusion_model, a->text_encoder, a->vae, a->mmproj};
    qi_status st = qi_model_files_resolve(&paths, &files, &err);
    if (st) {
        qi_app_error("%s", err.msg);
        return qi_app_exit_code(st);
    }
    int rc = check_scheduler(a, &files);
    return rc ? rc : check_prompts(a, &files, notes);
}

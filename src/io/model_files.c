/*
 * model_files.c — resolving -m / --diffusion-model / --text-encoder / --vae
 * into one path per component (model_files.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "io/model_files.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "io/gguf.h"

#ifndef QI_TOKENIZER_DIRS
#define QI_TOKENIZER_DIRS ""
#endif

/* The flag that gives component c on its own. */
static const char *flag_of(qi_component c) {
    return c == QI_COMPONENT_TRANSFORMER ? "--diffusion-model" : c == QI_COMPONENT_TEXT_ENCODER ? "--text-encoder"
                                                                                                 : "--vae";
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A tokenizer folder: vocab.json + merges.txt. */
static int is_tokenizer_dir(const char *dir) {
    char p[QI_PATH_MAX];
    if (qi_path_join(p, sizeof p, dir, "vocab.json") || !qi_file_exists(p)) return 0;
    return !qi_path_join(p, sizeof p, dir, "merges.txt") && qi_file_exists(p);
}

/* ---- a folder of split files ----------------------------------------------------------- */

typedef struct scan {
    qi_model_files *out;
    int found[QI_COMPONENT_COUNT]; /* candidates per component */
    int files;                     /* weight files looked at */
    qi_error *err;
} scan;

/* Files are matched to components by content (qi_source_identify); a
 * component with two candidates is an error naming both. */
static qi_status take_file(scan *sc, const char *path) {
    int mask = 0;
    qi_error ignored;
    if (qi_source_identify(path, &mask, &ignored) != QI_OK) return QI_OK; /* not a weight file we read */
    for (int c = QI_COMPONENT_TEXT_ENCODER; c < QI_COMPONENT_COUNT; c++) {
        if (!(mask & (1 << c))) continue;
        if (sc->found[c]++)
            return qi_fail(sc->err, QI_ERR_ARG, "%s: both %s and %s hold a %s; give the one to use with %s",
                           sc->out->root, sc->out->path[c], path, qi_component_name((qi_component)c),
                           flag_of((qi_component)c));
        snprintf(sc->out->path[c], sizeof sc->out->path[c], "%s", path);
    }
    return QI_OK;
}

/* Walks dir (sorted names, depth ≤ 3: ComfyUI's split_files/<kind>/) for
 * .safetensors / .gguf files and a tokenizer folder. */
static qi_status scan_dir(scan *sc, const char *dir, int depth) {
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) return qi_fail(sc->err, QI_ERR_IO, "%s: cannot list the folder", dir);
    qi_status st = QI_OK;
    for (int i = 0; i < n; i++) {
        char p[QI_PATH_MAX];
        const char *name = names[i]->d_name;
        if (st == QI_OK && name[0] != '.' && !qi_path_join(p, sizeof p, dir, name)) {
            struct stat sb;
            if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                if (!sc->out->path[QI_COMPONENT_TOKENIZER][0] && is_tokenizer_dir(p))
                    snprintf(sc->out->path[QI_COMPONENT_TOKENIZER], QI_PATH_MAX, "%s", p);
                else if (depth < 3) st = scan_dir(sc, p, depth + 1);
            } else if ((has_suffix(name, ".safetensors") || has_suffix(name, ".gguf")) && sc->files++ < 256) {
                st = take_file(sc, p);
            }
        }
        free(names[i]);
    }
    free(names);
    return st;
}

/* -m: a diffusers folder (every component from it) or a folder of files. */
static qi_status resolve_root(const char *root, qi_model_files *out, qi_error *err) {
    snprintf(out->root, sizeof out->root, "%s", root);
    char index[QI_PATH_MAX];
    if (!qi_dir_exists(root))
        return qi_fail(err, QI_ERR_IO, /* a file where a folder should be: a path problem, like a missing one */
                       "-m %s: %s; give a Qwen/Qwen-Image diffusers folder or a folder of ComfyUI-style split "
                       "files (or the files themselves with --diffusion-model, --text-encoder and --vae)",
                       root, qi_file_exists(root) ? "is a file, not a folder" : "no such folder");
    if (!qi_path_join(index, sizeof index, root, "model_index.json") && qi_file_exists(index)) {
        qi_model_dir dir;
        qi_status st = qi_model_dir_open(root, &dir, err);
        if (st != QI_OK) return st;
        out->diffusers = 1;
        snprintf(out->path[QI_COMPONENT_TRANSFORMER], QI_PATH_MAX, "%s", dir.transformer_dir);
        snprintf(out->path[QI_COMPONENT_TEXT_ENCODER], QI_PATH_MAX, "%s", dir.text_encoder_dir);
        snprintf(out->path[QI_COMPONENT_VAE], QI_PATH_MAX, "%s", dir.vae_dir);
        snprintf(out->path[QI_COMPONENT_TOKENIZER], QI_PATH_MAX, "%s", dir.tokenizer_dir);
        snprintf(out->scheduler_config, sizeof out->scheduler_config, "%s", dir.scheduler_config);
        return QI_OK;
    }
    scan sc = {.out = out, .err = err};
    return scan_dir(&sc, root, 0);
}

/* "mmproj*.gguf", any case, as llama.cpp's converter names the file. */
static int is_mmproj_name(const char *name) {
    return strncasecmp(name, "mmproj", 6) == 0 && strlen(name) > 11 && !strcasecmp(name + strlen(name) - 5, ".gguf");
}

/* No --mmproj: the one mmproj*.gguf in the GGUF text encoder's folder. Two or
 * more are not guessed between: the message is kept for when the tower is
 * needed. */
static void find_mmproj(qi_model_files *out) {
    const char *te = out->path[QI_COMPONENT_TEXT_ENCODER];
    if (!has_suffix(te, ".gguf")) return;
    char dir[QI_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", te);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    else snprintf(dir, sizeof dir, ".");
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort), found = 0;
    char first[QI_PATH_MAX] = "", second[QI_PATH_MAX] = "";
    for (int i = 0; i < n; i++) {
        char p[QI_PATH_MAX];
        if (is_mmproj_name(names[i]->d_name) && !qi_path_join(p, sizeof p, dir, names[i]->d_name) &&
            qi_file_exists(p) && found++ < 2)
            snprintf(found == 1 ? first : second, QI_PATH_MAX, "%s", p);
        free(names[i]);
    }
    if (n >= 0) free(names);
    if (found == 1) {
        snprintf(out->mmproj, sizeof out->mmproj, "%s", first);
        out->mmproj_found = 1;
    } else if (found > 1) {
        snprintf(out->mmproj_ambiguous, sizeof out->mmproj_ambiguous,
                 "%d mmproj files beside the text encoder %.300s (%.300s, %.300s%s): give the vision tower's with "
                 "--mmproj FILE",
                 found, te, first, second, found > 2 ? ", …" : "");
    }
}

qi_status qi_model_files_resolve(const qi_model_paths *p, qi_model_files *out, qi_error *err) {
    memset(out, 0, sizeof *out);
    const char *given[QI_COMPONENT_COUNT] = {NULL};
    given[QI_COMPONENT_TRANSFORMER] = p->transformer;
    given[QI_COMPONENT_TEXT_ENCODER] = p->text_encoder;
    given[QI_COMPONENT_VAE] = p->vae;
    if (p->model) {
        qi_status st = resolve_root(p->model, out, err);
        if (st != QI_OK) return st;
    }
    for (int c = QI_COMPONENT_TEXT_ENCODER; c < QI_COMPONENT_COUNT; c++) {
        if (given[c] && *given[c]) {
            if (!qi_file_exists(given[c]) && !qi_dir_exists(given[c]))
                return qi_fail(err, QI_ERR_IO, "%s %s: no such file", flag_of((qi_component)c), given[c]);
            /* a single file beside a diffusers folder: that folder's config for it
             * (a GGUF too: a converted small model's RoPE axes are in no shape) */
            if (out->diffusers && (has_suffix(given[c], ".safetensors") || has_suffix(given[c], ".gguf")))
                qi_path_join(out->config[c], QI_PATH_MAX, out->path[c], "config.json");
            snprintf(out->path[c], QI_PATH_MAX, "%s", given[c]);
        }
        if (!out->path[c][0])
            return qi_fail(err, QI_ERR_ARG, "%s%s%s: no %s found; give it with %s FILE",
                           p->model ? "-m " : "no model (-m)", p->model ? p->model : "",
                           p->model ? "" : " and no file", qi_component_name((qi_component)c),
                           flag_of((qi_component)c));
    }
    if (p->mmproj && *p->mmproj) {
        if (!qi_file_exists(p->mmproj)) return qi_fail(err, QI_ERR_IO, "--mmproj %s: no such file", p->mmproj);
        snprintf(out->mmproj, sizeof out->mmproj, "%s", p->mmproj);
    } else {
        find_mmproj(out);
    }
    return QI_OK;
}

qi_status qi_model_files_vision_source(const qi_model_files *f, const qi_source *te, int te_has_tower,
                                       const qi_source **out, qi_source **opened, qi_error *err) {
    *out = te;
    *opened = NULL;
    if (te_has_tower) return QI_OK;
    if (f->mmproj[0]) {
        qi_status st = qi_source_open_mmproj(f->mmproj, opened, err);
        if (st != QI_OK) return st;
        (*opened)->scan = f->scan;
        *out = *opened;
        return QI_OK;
    }
    if (f->mmproj_ambiguous[0]) return qi_fail(err, QI_ERR_ARG, "%s", f->mmproj_ambiguous);
    return QI_OK; /* the tower's load says what is missing */
}

qi_status qi_model_files_open_source(const qi_model_files *f, qi_component c, qi_source **out, qi_error *err) {
    qi_status st = qi_source_open(f->path[c], c, out, err);
    if (st == QI_OK) (*out)->scan = f->scan;
    if (st == QI_OK && f->config[c][0] && qi_file_exists(f->config[c]) && !qi_source_config(*out, NULL))
        st = qi_source_set_config(*out, f->config[c], err);
    if (st != QI_OK) {
        qi_source_close(*out);
        *out = NULL;
    }
    return st;
}

/* ---- the tokenizer -------------------------------------------------------------------------- */

/* The text encoder's GGUF, when it carries a tokenizer: loaded from it (1),
 * or 0 to look elsewhere. */
static int tokenizer_of_gguf(const char *path, qi_tokenizer **out, qi_status *st, qi_error *err) {
    if (!has_suffix(path, ".gguf")) return 0;
    qi_gguf_file *g;
    if ((*st = qi_gguf_open(path, &g, err)) != QI_OK) return 1;
    int has = qi_tokenizer_gguf_has(g);
    if (has) *st = qi_tokenizer_load_gguf(g, out, err);
    qi_gguf_close(g); /* the tokenizer keeps copies */
    return has;
}

qi_status qi_model_files_tokenizer(const qi_model_files *f, qi_tokenizer **out, char *from, size_t from_cap,
                                   qi_error *err) {
    qi_status st = QI_OK;
    const char *te = f->path[QI_COMPONENT_TEXT_ENCODER];
    if (from && from_cap) from[0] = 0;
    if (tokenizer_of_gguf(te, out, &st, err)) {
        if (from) snprintf(from, from_cap, "%s (GGUF metadata)", te);
        return st;
    }
    if (f->path[QI_COMPONENT_TOKENIZER][0]) {
        if (from) snprintf(from, from_cap, "%s", f->path[QI_COMPONENT_TOKENIZER]);
        return qi_tokenizer_load(f->path[QI_COMPONENT_TOKENIZER], out, err);
    }
    /* the installed Qwen2.5 tokenizer: QI_TOKENIZER_DIRS, ':'-separated */
    char dirs[2 * QI_PATH_MAX];
    snprintf(dirs, sizeof dirs, "%s", QI_TOKENIZER_DIRS);
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save))
        if (is_tokenizer_dir(d)) {
            if (from) snprintf(from, from_cap, "%s", d);
            return qi_tokenizer_load(d, out, err);
        }
    return qi_fail(err, QI_ERR_IO,
                   "no tokenizer: the text encoder (%s) is not a GGUF that carries one, there is no model folder "
                   "with a tokenizer/, and the Qwen2.5 tokenizer installed with qwen-image is missing (looked in "
                   "'%s'); reinstall, or give -m a Qwen/Qwen-Image folder",
                   te, QI_TOKENIZER_DIRS);
}

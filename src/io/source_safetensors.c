/*
 * source_safetensors.c — the two safetensors kinds of qi_source:
 *
 *   - a diffusers component folder: config.json (required, read at open) and
 *     the weights qi_st_set_open_dir finds; names as stored. This is the
 *     loaders' old behaviour, errors included.
 *   - one .safetensors file (ComfyUI / LightX2V single files): no config
 *     unless attached; the component's prefix (source.h) stripped, tensors
 *     outside it not listed.
 *
 * Both keep the mapped set open: tensors are pointers into the mapping.
 * Metadata is the `__metadata__` object of the (first) file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "io/safetensors.h"
#include "io/source.h"

typedef struct st_impl {
    qi_st_set *set;
    qi_scale_table *scales; /* the fp8 weights' scales (source_scales.c) */
    cJSON *meta;           /* `__metadata__`, or NULL */
    char meta_file[QI_PATH_MAX];
} st_impl;

static const st_impl *impl_of(const qi_source *s) { return s->impl; }

static void st_fill(const qi_source *s, const qi_name_entry *e, qi_source_tensor *out) {
    const qi_st_tensor *t = e->tensor;
    qi_source_tensor_set(out, e->name, t->name, t->file->path, t->dtype, t->ndim, t->shape, t->data, t->nbytes);
    qi_scale_table_apply(impl_of(s)->scales, t->name, out);
}

static int st_has_meta(const qi_source *s, const char *key) {
    const st_impl *im = impl_of(s);
    return im->meta && cJSON_GetObjectItemCaseSensitive(im->meta, key) != NULL;
}

static qi_status st_meta_item(const qi_source *s, const char *key, const cJSON **out, qi_error *err) {
    const st_impl *im = impl_of(s);
    *out = im->meta ? cJSON_GetObjectItemCaseSensitive(im->meta, key) : NULL;
    if (!*out)
        return qi_fail(err, QI_ERR_FORMAT, "%s: __metadata__ has no key '%s'",
                       im->meta ? im->meta_file : s->path, key);
    return QI_OK;
}

static qi_status st_meta_string(const qi_source *s, const char *key, const char **out, qi_error *err) {
    const cJSON *v;
    qi_status st = st_meta_item(s, key, &v, err);
    if (st != QI_OK) return st;
    if (!cJSON_IsString(v))
        return qi_fail(err, QI_ERR_FORMAT, "%s: __metadata__ key '%s' must be a string, found %s",
                       impl_of(s)->meta_file, key, qi_json_type_name(v));
    *out = v->valuestring;
    return QI_OK;
}

/* safetensors metadata values are strings: an integer is written in decimal. */
static qi_status st_meta_int(const qi_source *s, const char *key, int64_t *out, qi_error *err) {
    const char *text;
    qi_status st = st_meta_string(s, key, &text, err);
    if (st != QI_OK) return st;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end)
        return qi_fail(err, QI_ERR_FORMAT, "%s: __metadata__ key '%s' is '%s', not an integer",
                       impl_of(s)->meta_file, key, text);
    *out = v;
    return QI_OK;
}

/* safetensors metadata values are strings: a number is written in decimal. */
static qi_status st_meta_float(const qi_source *s, const char *key, double *out, qi_error *err) {
    const char *text;
    qi_status st = st_meta_string(s, key, &text, err);
    if (st != QI_OK) return st;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end)
        return qi_fail(err, QI_ERR_FORMAT, "%s: __metadata__ key '%s' is '%s', not a number",
                       impl_of(s)->meta_file, key, text);
    *out = v;
    return QI_OK;
}

static void st_close(qi_source *s) {
    st_impl *im = s->impl;
    if (!im) return;
    qi_st_set_close(im->set);
    qi_scale_table_free(im->scales);
    cJSON_Delete(im->meta);
    free(im);
    s->impl = NULL;
}

static const qi_source_ops folder_ops = {
    .kind = "diffusers folder",
    .fill = st_fill,
    .has_meta = st_has_meta,
    .meta_string = st_meta_string,
    .meta_int = st_meta_int,
    .meta_float = st_meta_float,
    .close = st_close,
};

static const qi_source_ops file_ops = {
    .kind = "safetensors file",
    .fill = st_fill,
    .has_meta = st_has_meta,
    .meta_string = st_meta_string,
    .meta_int = st_meta_int,
    .meta_float = st_meta_float,
    .close = st_close,
};

static int set_has(const void *ctx, const char *name) { return qi_st_find(ctx, name) != NULL; }

/* A VAE in the original Wan names (ComfyUI's file): 1 to map its names;
 * the Wan 2.2 VAE (48 channels, another network) is refused. */
static qi_status wan_naming(const qi_source *s, const qi_st_set *set, const char *prefix, int *wan,
                            qi_error *err) {
    char name[160];
    *wan = 0;
    if (s->component != QI_COMPONENT_VAE) return QI_OK;
    snprintf(name, sizeof name, "%s%s", prefix, QI_WAN22_VAE_ANCHOR);
    if (qi_st_find(set, name))
        return qi_fail(err, QI_ERR_UNSUPPORTED,
                       "%s: tensor '%s' makes this the Wan 2.2 VAE (48 latent channels), which Qwen-Image "
                       "does not use; give Qwen-Image's VAE (ComfyUI: split_files/vae/qwen_image_vae.safetensors)",
                       s->where, name);
    snprintf(name, sizeof name, "%s%s", prefix, QI_WAN_VAE_ANCHOR);
    *wan = qi_st_find(set, name) != NULL;
    return QI_OK;
}

/* Lists t past `plen` prefix bytes, renamed by the Wan map if `wan`. */
static qi_status add_entry(qi_source *s, const qi_st_tensor *t, size_t plen, int wan, qi_error *err) {
    char mapped[256];
    if (wan && qi_names_wan_vae(t->name + plen, mapped, sizeof mapped))
        return qi_name_table_add(&s->names, mapped, 1, t, s->path, err);
    return qi_name_table_add(&s->names, t->name + plen, 0, t, s->path, err);
}

/* Takes `set` into s: reads the fp8 scales, finds the component's prefix,
 * lists the tensors under the prefix but the consumed scale tensors
 * (renamed where the file uses the Wan VAE names, then sorted by mapped
 * name), parses the metadata. */
static qi_status adopt_set(qi_source *s, qi_st_set *set, qi_error *err) {
    st_impl *im = calloc(1, sizeof *im);
    if (!im) {
        qi_st_set_close(set);
        return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", s->path);
    }
    im->set = set;
    s->impl = im;
    if (set->n_files == 1)
        snprintf(s->where, sizeof s->where, "%s", set->files[0]->path);
    else if (set->n_files > 1)
        snprintf(s->where, sizeof s->where, "%s (+%d more shards)", set->files[0]->path, set->n_files - 1);

    qi_status sst = qi_scale_table_build(set, &im->scales, err);
    if (sst != QI_OK) return sst;
    const char *prefix = qi_source_find_prefix(s->component, s->where, set_has, set, err);
    if (!prefix) return QI_ERR_FORMAT;
    int wan = 0;
    qi_status st = wan_naming(s, set, prefix, &wan, err);
    if (st != QI_OK) return st;
    snprintf(s->prefix, sizeof s->prefix, "%s", prefix);
    s->naming = wan ? "Wan 2.1 (ComfyUI)" : s->component == QI_COMPONENT_TEXT_ENCODER ? "transformers" : "diffusers";
    size_t plen = strlen(prefix);
    for (int i = 0; i < set->n_tensors && st == QI_OK; i++) {
        const qi_st_tensor *t = set->index[i];
        if (strncmp(t->name, prefix, plen) != 0) continue; /* another component's tensor */
        if (qi_scale_table_consumes(im->scales, t->name)) continue; /* a scale, marker or config */
        st = add_entry(s, t, plen, wan, err);
    }
    if (st != QI_OK) return st;
    if (wan) qi_name_table_sort(&s->names); /* the set's index is in stored-name order already */

    const qi_st_file *first = set->n_files > 0 ? set->files[0] : NULL;
    if (first && first->metadata_json) {
        snprintf(im->meta_file, sizeof im->meta_file, "%s", first->path);
        st = qi_json_parse(first->metadata_json, strlen(first->metadata_json), first->path,
                                     &im->meta, err);
        if (st != QI_OK) return st;
    }
    return QI_OK;
}

/* The weight-file stem of a component's diffusers folder. */
static const char *folder_stem(qi_component comp) {
    return comp == QI_COMPONENT_TEXT_ENCODER ? "model" : "diffusion_pytorch_model";
}

qi_status qi_source_open_folder(const char *dir, qi_component comp, qi_source **out, qi_error *err) {
    *out = NULL;
    if (!dir) return qi_fail(err, QI_ERR_ARG, "%s: no folder given", qi_component_name(comp));
    char config[QI_PATH_MAX];
    if (qi_path_join(config, sizeof config, dir, "config.json") != 0)
        return qi_fail(err, QI_ERR_ARG, "%s: path too long", dir);
    qi_source *s = qi_source_new(&folder_ops, comp, dir);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", dir);
    /* config first, then the weights: the order (and so the first error) the
     * loaders had when they read the folder themselves */
    qi_status st = qi_source_set_config(s, config, err);
    qi_st_set *set = NULL;
    if (st == QI_OK) st = qi_st_set_open_dir(dir, folder_stem(comp), &set, err);
    if (st == QI_OK) st = adopt_set(s, set, err);
    if (st != QI_OK) {
        qi_source_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

qi_status qi_source_open_safetensors(const char *path, qi_component comp, qi_source **out,
                                     qi_error *err) {
    *out = NULL;
    if (!path) return qi_fail(err, QI_ERR_ARG, "%s: no file given", qi_component_name(comp));
    qi_source *s = qi_source_new(&file_ops, comp, path);
    if (!s) return qi_fail(err, QI_ERR_NOMEM, "%s: out of memory", path);
    qi_st_set *set = NULL;
    qi_status st = qi_st_set_open_file(path, &set, err);
    if (st == QI_OK) st = adopt_set(s, set, err);
    if (st != QI_OK) {
        qi_source_close(s);
        return st;
    }
    *out = s;
    return QI_OK;
}

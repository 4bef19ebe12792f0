/*
 * prompt_cache.c — the LRU of text-stage results (prompt_cache.h).
 *
 * The key is everything the text stage reads: the prompts in order, the
 * negative prompt when true CFG runs (NULL otherwise), images per prompt
 * (rows are repeated per image) and the max sequence length, serialised into
 * one byte string (lengths first, so no two keys collide). Entries live in
 * an array ordered by last use (most recent first); capacity is small, so a
 * linear search is the whole index.
 */
#include "engine/prompt_cache.h"

#include "engine/engine.h" /* qi_text_embeds_free */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    char *key;
    size_t key_len;
    qi_text_embeds text[2];
} entry;

struct qi_prompt_cache {
    int cap, n;
    entry *e; /* [cap], [0, n) used, most recent first */
};

qi_prompt_cache *qi_prompt_cache_new(int capacity) {
    if (capacity <= 0) return NULL;
    qi_prompt_cache *c = calloc(1, sizeof *c);
    if (c && !(c->e = calloc((size_t)capacity, sizeof *c->e))) {
        free(c);
        return NULL;
    }
    if (c) c->cap = capacity;
    return c;
}

static void entry_free(entry *e) {
    free(e->key);
    qi_text_embeds_free(&e->text[0]);
    qi_text_embeds_free(&e->text[1]);
    memset(e, 0, sizeof *e);
}

void qi_prompt_cache_free(qi_prompt_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) entry_free(&c->e[i]);
    free(c->e);
    free(c);
}

/* Appends "<len>:<bytes>" (or "-" for NULL) to the key. */
static int put_str(char **k, size_t *len, size_t *cap, const char *s) {
    size_t n = s ? strlen(s) : 0, need = *len + n + 32;
    if (need > *cap) {
        char *b = realloc(*k, need * 2);
        if (!b) return -1;
        *k = b, *cap = need * 2;
    }
    if (!s) {
        (*k)[(*len)++] = '-';
        return 0;
    }
    *len += (size_t)snprintf(*k + *len, *cap - *len, "%zu:", n);
    memcpy(*k + *len, s, n);
    *len += n;
    return 0;
}

static char *make_key(const qi_plan *p, size_t *len) {
    char *k = NULL, head[64];
    size_t cap = 0;
    *len = 0;
    snprintf(head, sizeof head, "%d/%d/%d", p->n_prompts, p->per_prompt, p->req->max_sequence_length);
    int bad = put_str(&k, len, &cap, head);
    for (int i = 0; !bad && i < p->n_prompts; i++) bad = put_str(&k, len, &cap, p->prompts[i]);
    if (!bad) bad = put_str(&k, len, &cap, p->do_cfg ? p->req->negative_prompt : NULL);
    if (bad) {
        free(k);
        return NULL;
    }
    return k;
}

/* A deep copy of one qi_text_embeds; 0 or -1 (out of memory: out is empty). */
static int copy_embeds(const qi_text_embeds *in, qi_text_embeds *out) {
    memset(out, 0, sizeof *out);
    if (!in->batch) return 0;
    size_t rows = (size_t)in->batch * in->len;
    out->embeds = malloc(sizeof(float) * rows * in->dim);
    out->mask = in->mask ? malloc(sizeof(int32_t) * rows) : NULL;
    if (!out->embeds || (in->mask && !out->mask)) {
        qi_text_embeds_free(out);
        return -1;
    }
    memcpy(out->embeds, in->embeds, sizeof(float) * rows * in->dim);
    if (in->mask) memcpy(out->mask, in->mask, sizeof(int32_t) * rows);
    out->batch = in->batch, out->len = in->len, out->dim = in->dim, out->all_valid = in->all_valid;
    return 0;
}

static int copy_pair(const qi_text_embeds in[2], qi_text_embeds out[2]) {
    if (copy_embeds(&in[0], &out[0])) return -1;
    if (!copy_embeds(&in[1], &out[1])) return 0;
    qi_text_embeds_free(&out[0]);
    return -1;
}

int qi_prompt_cache_get(qi_prompt_cache *c, const qi_plan *p, qi_text_embeds text[2]) {
    if (!c) return 0;
    size_t len;
    char *key = make_key(p, &len);
    int hit = -1;
    for (int i = 0; key && hit < 0 && i < c->n; i++)
        if (c->e[i].key_len == len && !memcmp(c->e[i].key, key, len)) hit = i;
    free(key);
    if (hit < 0 || copy_pair(c->e[hit].text, text)) return 0;
    entry e = c->e[hit]; /* most recent first */
    memmove(c->e + 1, c->e, sizeof *c->e * (size_t)hit);
    c->e[0] = e;
    return 1;
}

void qi_prompt_cache_put(qi_prompt_cache *c, const qi_plan *p, const qi_text_embeds text[2]) {
    if (!c) return;
    entry e = {0};
    if (!(e.key = make_key(p, &e.key_len))) return;
    if (copy_pair(text, e.text)) {
        free(e.key);
        return;
    }
    if (c->n == c->cap) entry_free(&c->e[--c->n]); /* the least recent goes */
    memmove(c->e + 1, c->e, sizeof *c->e * (size_t)c->n);
    c->e[0] = e;
    c->n++;
}

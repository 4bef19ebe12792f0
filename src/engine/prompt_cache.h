/*
 * prompt_cache.h — the text stage's results kept for repeated prompts: a
 * small LRU of (prompts, negative prompt, images per prompt, max length) →
 * the two qi_text_embeds, so a server re-rendering the same prompt skips
 * the text encoder. The embeddings are copies: a hit gives the bytes the
 * encoder gave, so images are bit-identical with or without the cache.
 */
#ifndef QI_ENGINE_PROMPT_CACHE_H
#define QI_ENGINE_PROMPT_CACHE_H

#include "engine/denoise.h"
#include "engine/plan.h"

typedef struct qi_prompt_cache qi_prompt_cache;

/* capacity entries (0: NULL, no cache). */
qi_prompt_cache *qi_prompt_cache_new(int capacity);
void qi_prompt_cache_free(qi_prompt_cache *c);
/* A hit copies the entry into text[0..1] (fresh allocations) and makes it
 * the most recent: 1. A miss, or no memory for the copy: 0. */
int qi_prompt_cache_get(qi_prompt_cache *c, const qi_plan *p, qi_text_embeds text[2]);
/* Keeps copies of text[0..1] for p's key, dropping the least recent entry
 * when full (no memory: nothing kept). */
void qi_prompt_cache_put(qi_prompt_cache *c, const qi_plan *p, const qi_text_embeds text[2]);

#endif

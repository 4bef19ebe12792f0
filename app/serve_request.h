/*
 * serve_request.h — request bodies of `qwen-image serve` → job fields, with
 * no connection, queue or engine involved (serve_api.c answers what these
 * refuse; tests/fuzz/fuzz_serve_request.c feeds them arbitrary bodies).
 */
#ifndef QI_SERVE_REQUEST_H
#define QI_SERVE_REQUEST_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "serve.h"

/* Why a body was refused: the HTTP status (400 a bad field, 500 out of
 * memory), the field at fault (NULL: the body as a whole) and the message. */
typedef struct serve_req_error {
    int status;
    const char *param; /* a static string or the field name the parser was given */
    char msg[1024];
} serve_req_error;

/* An OpenAI-style generation body → j's request fields (prompt and negative
 * malloc'd into j, freed with it), *stream; `random_seed` when the body
 * gives none. 0, or -1 with *e set (j may hold some fields: free it). */
int serve_parse_generation_body(const serve_opts *opt, const char *body, size_t len, uint64_t random_seed, job *j,
                                int *stream, serve_req_error *e);

/* An AUTOMATIC1111 txt2img object, translated into the OpenAI-style body
 * the generation parser reads (malloc'd), or NULL with *e set. */
char *serve_a1111_translate(const serve_opts *opt, const cJSON *o, serve_req_error *e);

#endif

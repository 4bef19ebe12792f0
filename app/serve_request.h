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

/* ---- pictures (/v1/images/edits, /sdapi/v1/img2img) ---- */

#define SERVE_MAX_PICTURES 3 /* OpenAI's and Edit-2509's limit of reference pictures */

/* The request's own names of its picture fields, for the messages. */
typedef struct serve_picture_fields {
    const char *image, *mask, *strength, *n;
} serve_picture_fields;

/* What pictures this server's model takes (opt->model.edit: 1 to 3
 * references, no mask, no strength, one image; else img2img: one picture,
 * an optional mask). n_images >= 1. 0, or -1 with *e naming the field. */
int serve_check_pictures(const serve_opts *opt, int n_images, int has_mask, int strength_given, int n,
                         const serve_picture_fields *f, serve_req_error *e);

/* An A1111 img2img request's pictures: the files' bytes, base64-decoded. */
typedef struct serve_pictures {
    uint8_t *image[SERVE_MAX_PICTURES]; /* malloc'd */
    size_t image_len[SERVE_MAX_PICTURES];
    int n_images, n_extra;              /* decoded; given beyond SERVE_MAX_PICTURES */
    uint8_t *mask;                      /* NULL: none */
    size_t mask_len;
    double strength;                    /* denoising_strength (default 0.75, A1111's) */
} serve_pictures;
void serve_pictures_free(serve_pictures *p);

/* An AUTOMATIC1111 img2img object: the generation body (as txt2img's, with
 * "size" only when width or height is given) and *p (init_images, mask,
 * denoising_strength; serve_pictures_free it), or NULL with *e set and *p
 * empty. The pictures are checked against the model (serve_check_pictures)
 * but not decoded. */
char *serve_a1111_img2img_translate(const serve_opts *opt, const cJSON *o, serve_pictures *p, serve_req_error *e);

#endif

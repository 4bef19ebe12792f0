/*
 * serve_api.h — what serve_api.c (fields, answers, routes) and
 * serve_events.c (server-sent event streams) share.
 */
#ifndef QI_SERVE_API_H
#define QI_SERVE_API_H

#include <cjson/cJSON.h>

#include "serve.h"
#include "serve_request.h"

char *serve_base64(const uint8_t *p, size_t n); /* malloc'd, NUL-terminated */
/* The request body → a new job (refs 1), or NULL after answering 400/500. */
job *serve_parse_generation(serve *s, const http_req *r, int *stream);
/* Queues j or answers 429 (Retry-After) / 503; 0 when queued. */
int serve_submit_or_answer(serve *s, struct MHD_Connection *c, job *j);
/* Queues j and answers (202, events or the images); takes the reference. */
int serve_answer_job(serve *s, const http_req *r, job *j, int stream, int async);
/* serve_edits.c: POST /v1/images/edits (multipart/form-data). */
/* async: POST /v1/jobs with the same multipart body (a job: 202, then GET /v1/jobs/{id}). */
int serve_edits(serve *s, const http_req *r, int async);
/* One uploaded picture: the file's bytes and its name (the parameters text). */
typedef struct serve_picture {
    const void *data;
    size_t len;
    const char *name;
} serve_picture;
/* Decodes n (checked: serve_check_pictures) pictures and the optional mask
 * into j (init_*, more_*, mask_*, the names). 0, or -1 with *e naming the
 * field whose picture does not decode (400) or out of memory (500). */
int serve_job_take_pictures(const serve *s, job *j, const serve_picture *img, int n, const serve_picture *mask,
                            const serve_picture_fields *f, serve_req_error *e);
int serve_generate_blocking(serve *s, struct MHD_Connection *c, job *j);
/* Waits until j is finished; a client that goes away meanwhile cancels it. */
void serve_wait_job(serve *s, struct MHD_Connection *c, job *j);
/* serve_a1111.c: POST /sdapi/v1/txt2img and img2img, GET /sdapi/v1/progress. */
int serve_a1111_txt2img(serve *s, const http_req *r);
int serve_a1111_progress(serve *s, struct MHD_Connection *c);
int serve_a1111_img2img(serve *s, const http_req *r); /* POST /sdapi/v1/img2img */
cJSON *serve_job_json(serve *s, const job *j, int with_preview); /* locked */
/* An event stream of j (takes the caller's reference): OpenAI's image
 * generation events (openai = 1) or the job events of /v1/jobs/{id}/events. */
int serve_events_send(serve *s, struct MHD_Connection *c, job *j, int openai);

#endif

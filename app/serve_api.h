/*
 * serve_api.h — what serve_api.c (fields, answers, routes) and
 * serve_events.c (server-sent event streams) share.
 */
#ifndef QI_SERVE_API_H
#define QI_SERVE_API_H

#include <cjson/cJSON.h>

#include "serve.h"

char *serve_base64(const uint8_t *p, size_t n); /* malloc'd, NUL-terminated */
/* The request body → a new job (refs 1), or NULL after answering 400/500. */
job *serve_parse_generation(serve *s, const http_req *r, int *stream);
/* Queues j or answers 429 (Retry-After) / 503; 0 when queued. */
int serve_submit_or_answer(serve *s, struct MHD_Connection *c, job *j);
int serve_generate_blocking(serve *s, struct MHD_Connection *c, job *j);
cJSON *serve_job_json(serve *s, const job *j, int with_preview); /* locked */
/* An event stream of j (takes the caller's reference): OpenAI's image
 * generation events (openai = 1) or the job events of /v1/jobs/{id}/events. */
int serve_events_send(serve *s, struct MHD_Connection *c, job *j, int openai);

#endif

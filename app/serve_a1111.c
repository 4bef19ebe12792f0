/*
 * serve_a1111.c — the subset of AUTOMATIC1111's web UI API that existing
 * front-ends call: POST /sdapi/v1/txt2img, POST /sdapi/v1/img2img and GET
 * /sdapi/v1/progress.
 *
 *   txt2img fields: prompt, negative_prompt, width, height (default 1024),
 *   steps (default 8), cfg_scale (true CFG with a negative prompt), seed
 *   (-1: random), batch_size × n_iter (images); others are accepted and ignored.
 *   img2img: the same plus init_images (base64 pictures, a data-URL prefix
 *   allowed), denoising_strength (→ strength, default 0.75 as A1111's) and
 *   mask (base64, white = repaint → inpainting); with a Qwen-Image-Edit
 *   model init_images are the 1 to 3 references and denoising_strength is
 *   ignored (every A1111 client sends it). The pictures are recorded in the
 *   parameters text as "init_images[K]".
 *   Answer: {"images": [base64 PNG], "parameters": {the request}, "info": "{\"seed\": S}"}.
 *   progress: {"progress", "eta_relative", "state": {"sampling_step", "sampling_steps", "job_count"},
 *   "current_image" (the running job's step preview, base64 PNG, or null), "textinfo": null}.
 * Errors are the server's JSON errors (serve_api.c), with the same statuses.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <math.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve_api.h"
#include "serve_request.h"

/* The finished job as A1111 answers (locked). */
static int answer(struct MHD_Connection *c, const job *j, const cJSON *request) {
    if (j->state != JOB_COMPLETED)
        return serve_send_error(c, j->state == JOB_FAILED && j->error_status ? j->error_status : 503, "server_error",
                                NULL, j->state == JOB_CANCELLED ? "cancelled" : NULL, "%s",
                                j->state == JOB_CANCELLED ? "the job was cancelled" : j->error);
    cJSON *root = cJSON_CreateObject(), *images = cJSON_AddArrayToObject(root, "images");
    for (int i = 0; i < j->n && j->images[i].bytes; i++) {
        char *b64 = serve_base64(j->images[i].bytes, j->images[i].len);
        cJSON_AddItemToArray(images, cJSON_CreateString(b64 ? b64 : ""));
        free(b64);
    }
    cJSON *params = cJSON_Duplicate(request, 1);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(request, "include_init_images")))
        for (int k = 0; k < 2; k++) /* as A1111: the pictures are not echoed back unless asked */
            if (cJSON_HasObjectItem(params, k ? "mask" : "init_images"))
                cJSON_ReplaceItemInObjectCaseSensitive(params, k ? "mask" : "init_images", cJSON_CreateNull());
    cJSON_AddItemToObject(root, "parameters", params);
    char info[64];
    snprintf(info, sizeof info, "{\"seed\": %llu}", (unsigned long long)j->seed);
    cJSON_AddStringToObject(root, "info", info);
    return serve_send_json(c, 200, root);
}

static int send_req_error(struct MHD_Connection *c, const serve_req_error *e) {
    return serve_send_error(c, e->status, e->status == 400 ? "invalid_request_error" : "server_error", e->param,
                            e->status == 400 ? "invalid_value" : NULL, "%s", e->msg);
}

/* The body as a JSON object, or NULL after answering 400. */
static cJSON *body_object(const http_req *r) {
    cJSON *o = cJSON_ParseWithLength(r->body, r->body_len);
    if (o && cJSON_IsObject(o)) return o;
    cJSON_Delete(o);
    serve_send_error(r->conn, 400, "invalid_request_error", NULL, "invalid_value", "the body must be a JSON object");
    return NULL;
}

/* The translated body (freed here) → a job, p's pictures (when given) into
 * it; queued, waited for and answered as A1111 does. */
static int run(serve *s, const http_req *r, const cJSON *o, char *body, const serve_pictures *p) {
    int stream = 0, rc = MHD_YES;
    http_req t = *r;
    t.body = body, t.body_len = strlen(body);
    job *j = serve_parse_generation(s, &t, &stream);
    free(body);
    if (j && p) {
        static const serve_picture_fields fields = {"init_images", "mask", "denoising_strength", "batch_size"};
        serve_picture img[SERVE_MAX_PICTURES], mask = {p->mask, p->mask_len, "mask"};
        /* names for the parameters text, as `generate --image` records its files */
        static const char *const names[SERVE_MAX_PICTURES] = {"init_images[0]", "init_images[1]", "init_images[2]"};
        for (int k = 0; k < p->n_images; k++) img[k] = (serve_picture){p->image[k], p->image_len[k], names[k]};
        serve_req_error e;
        if (serve_job_take_pictures(s, j, img, p->n_images, p->mask ? &mask : NULL, &fields, &e)) {
            send_req_error(r->conn, &e);
            serve_job_put(s, j);
            return MHD_YES;
        }
        j->strength = p->strength;
    }
    if (j && !serve_submit_or_answer(s, r->conn, j)) {
        serve_wait_job(s, r->conn, j);
        pthread_mutex_lock(&s->lock);
        rc = answer(r->conn, j, o);
        pthread_mutex_unlock(&s->lock);
    }
    serve_job_put(s, j);
    return rc;
}

int serve_a1111_txt2img(serve *s, const http_req *r) {
    cJSON *o = body_object(r);
    if (!o) return MHD_YES;
    serve_req_error e;
    char *body = s->opt.model.edit ? NULL : serve_a1111_translate(&s->opt, o, &e);
    int rc;
    if (s->opt.model.edit)
        rc = serve_send_error(r->conn, 400, "invalid_request_error", "init_images", "invalid_value",
                              "this server's model is Qwen-Image-Edit, which edits pictures and makes none from "
                              "text alone: POST /sdapi/v1/img2img with 1 to %d init_images", SERVE_MAX_PICTURES);
    else rc = body ? run(s, r, o, body, NULL) : send_req_error(r->conn, &e);
    cJSON_Delete(o);
    return rc;
}

int serve_a1111_img2img(serve *s, const http_req *r) {
    cJSON *o = body_object(r);
    if (!o) return MHD_YES;
    serve_req_error e;
    serve_pictures p;
    char *body = serve_a1111_img2img_translate(&s->opt, o, &p, &e);
    int rc = body ? run(s, r, o, body, &p) : send_req_error(r->conn, &e);
    serve_pictures_free(&p);
    cJSON_Delete(o);
    return rc;
}

int serve_a1111_progress(serve *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject(), *state = cJSON_CreateObject();
    pthread_mutex_lock(&s->lock);
    const job *run = s->all;
    while (run && run->state != JOB_RUNNING) run = run->next_all;
    double p = run && run->steps ? (double)run->step / run->steps : 0;
    double eta = run && run->step ? (serve_now() - run->started) / run->step * (run->steps - run->step) : 0;
    cJSON_AddNumberToObject(o, "progress", p);
    cJSON_AddNumberToObject(o, "eta_relative", round(eta * 100) / 100);
    cJSON_AddNumberToObject(state, "sampling_step", run ? run->step : 0);
    cJSON_AddNumberToObject(state, "sampling_steps", run ? run->steps : 0);
    cJSON_AddNumberToObject(state, "job_count", s->queued + (run != NULL));
    cJSON_AddStringToObject(state, "job", run ? run->id : "");
    cJSON_AddItemToObject(o, "state", state);
    char *b64 = run && run->preview ? serve_base64(run->preview, run->preview_len) : NULL;
    if (b64) cJSON_AddStringToObject(o, "current_image", b64);
    else cJSON_AddNullToObject(o, "current_image");
    free(b64);
    cJSON_AddNullToObject(o, "textinfo");
    pthread_mutex_unlock(&s->lock);
    return serve_send_json(c, 200, o);
}

/*
 * serve_page.c — the web page at / (app/serve_page.html, plain HTML/CSS/JS,
 * embedded into the binary at build time by scripts/embed.cmake: nothing is
 * fetched at run time). The page drives the async job API: POST /v1/jobs,
 * then GET /v1/jobs/{id} for progress and the step preview, DELETE to cancel;
 * with pictures, POST /v1/images/edits (1 for img2img, 1 to 3 with an Edit
 * model: GET /v1/models' mode) and GET /sdapi/v1/progress meanwhile.
 */
#include <microhttpd.h>

#include "serve.h"
#include "serve_page_html.h" /* serve_page_html[], serve_page_html_len (generated) */

int serve_page_send(struct MHD_Connection *c) {
    struct MHD_Response *r = MHD_create_response_from_buffer(serve_page_html_len, (void *)serve_page_html,
                                                             MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    int rc = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return rc;
}

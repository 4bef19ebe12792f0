/*
 * pipeline.h — internal helpers the command-line front end shares with the
 * pipeline (the public API is include/qwen_image.h).
 */
#ifndef QI_PIPELINE_H
#define QI_PIPELINE_H

#include "qwen_image.h"

double qi_peak_rss_mb(void); /* this process's peak resident set, MiB */

/* The engine's parts, for the benchmark and tests that time one stage. */
struct qi_backend;
struct qi_dit;
struct qi_text_encoder;
struct qi_vae;
struct qi_backend *qi_engine_backend(qi_engine *e);
qi_status qi_engine_dit(qi_engine *e, struct qi_dit **out); /* loads the transformer if needed */
struct qi_text_encoder *qi_engine_text_encoder(qi_engine *e);
struct qi_vae *qi_engine_vae(qi_engine *e);

#endif

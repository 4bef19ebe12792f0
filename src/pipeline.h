/*
 * pipeline.h — internal helpers the command-line front end shares with the
 * pipeline (the public API is include/qwen_image.h).
 */
#ifndef QI_PIPELINE_H
#define QI_PIPELINE_H

#include "qwen_image.h"

double qi_peak_rss_mb(void); /* this process's peak resident set, MiB */

#endif

/*
 * app.h — what the command-line front end's files share.
 */
#ifndef QI_APP_H
#define QI_APP_H

#include "qwen_image.h"

int qi_app_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* returns 2 */
int qi_app_runtime_error(const char *msg);                                          /* returns 1 */
int qi_app_exit_code(qi_status st);
int qi_app_parse_int(const char *flag, const char *s, long lo, long hi, long *out);
int qi_app_parse_float(const char *flag, const char *s, double *out);
const char *qi_app_default_model(int quiet);

int qi_cmd_generate(int argc, char **argv);
int qi_cmd_bench(int argc, char **argv);

#endif

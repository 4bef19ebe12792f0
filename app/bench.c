/*
 * bench.c — `qwen-image bench`: the full-size model with random weights on
 * the GPU, timed stage by stage (issue 5). Needs a CUDA build.
 */
#include <stdio.h>

#include "app.h"

int qi_cmd_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "qwen-image: bench: not available yet in this build\n");
    return 1;
}

/* qwen-image — the command-line front end (placeholder while the library grows). */
#include <stdio.h>
#include "qwen_image.h"
int main(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "qwen-image: no command yet\n");
    return 2;
}

# cmake -DIN=file -DOUT=header.h -DNAME=symbol -P embed.cmake
# Writes OUT with `static const unsigned char NAME[]` holding IN's bytes and
# `static const size_t NAME_len`: a file compiled into the binary.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE "${OUT}" "/* generated from ${IN} by scripts/embed.cmake */\n#include <stddef.h>\n"
     "static const unsigned char ${NAME}[] = {\n${body}0x00};\nstatic const size_t ${NAME}_len = ${bytes};\n")

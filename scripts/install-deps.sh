#!/bin/sh
# Installs the Debian packages qwen-image.c builds against. Safe to re-run.
# Needs root (or sudo). CUDA is optional and comes from the CUDA toolkit.
# --fuzz adds clang and its libFuzzer runtime (scripts/fuzz.sh).
set -e
PKGS="build-essential cmake pkg-config libcjson-dev libpcre2-dev libutf8proc-dev
      libopenblas-openmp-dev libpng-dev libjpeg-dev libwebp-dev libmicrohttpd-dev python3
      curl jq xz-utils chromium chromium-driver nginx"
[ "$1" = "--fuzz" ] && PKGS="$PKGS clang libclang-rt-dev"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# node + npm run the official openai client in test_serve_openai (a machine's own Node is kept)
command -v node >/dev/null && command -v npm >/dev/null || missing="$missing nodejs npm"
[ -z "$missing" ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing:$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing

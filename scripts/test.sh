#!/bin/sh
# Builds qwen-image.c twice (release, and AddressSanitizer + UBSan) and runs
# every CPU test in both. GPU tests (ctest label "cuda") run with
# `ctest --test-dir build -L cuda` on a machine with a GPU. Both builds
# replay the fuzz corpus (ctest label "fuzz"); then every fuzz target runs
# for a short fixed time under clang's libFuzzer (scripts/fuzz.sh).
set -e
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --fuzz
J=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$J"
ctest --test-dir build --output-on-failure -LE cuda -j"$J"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQI_SANITIZE=ON -DQI_CUDA=OFF >/dev/null
cmake --build build-asan -j"$J"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -LE "cuda|slow" -j"$J"
./scripts/fuzz.sh "${QI_FUZZ_SECONDS:-30}"

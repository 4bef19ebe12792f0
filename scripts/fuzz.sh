#!/bin/sh
# scripts/fuzz.sh [SECONDS] — builds the libFuzzer targets of tests/fuzz with
# clang (QI_FUZZ=ON, in build-fuzz/) and runs each for SECONDS (default 30)
# under ASan + UBSan, FUZZ_JOBS (default 2) at a time, starting from the
# committed corpus tests/fuzz/corpus/<target>. Fails on any crash, leak,
# sanitizer report, oracle failure, slow input (> 10 s) or memory blow-up
# (> 2 GiB); the input is left in build-fuzz/fuzz-out/<target>/ (crash-*,
# leak-*, timeout-*, oom-*) with the log next to it. New inputs libFuzzer
# finds go to build-fuzz/fuzz-out/<target>/corpus, never into the repository
# (a crash input, once fixed, is copied to tests/fuzz/corpus/<target>/ by hand).
# Needs clang and its libFuzzer runtime: ./scripts/install-deps.sh --fuzz.
set -e
cd "$(dirname "$0")/.."
OUT=build-fuzz/fuzz-out
if [ "$1" = "--one" ]; then # internal: one target ($2) for $3 seconds
  t=$2
  mkdir -p "$OUT/$t/corpus"
  cp tests/fuzz/corpus/"$t"/* "$OUT/$t/corpus/"
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ./build-fuzz/fuzz_"$t" -max_total_time="$3" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix="$OUT/$t/" "$OUT/$t/corpus" >"$OUT/$t/log" 2>&1; then
    printf '%-18s ok   %10s execs  %s\n' "$t" "$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t/log")" \
      "$(grep -o 'DONE.*cov: [0-9]* ft: [0-9]*' "$OUT/$t/log" | grep -o 'cov:.*' | tail -1)"
    exit 0
  fi
  printf '%-18s FAILED: input and log in %s/%s/\n' "$t" "$OUT" "$t"
  grep -E 'ERROR|SUMMARY|oracle failed|Test unit written' "$OUT/$t/log" | head -5
  exit 1
fi
SECS=${1:-30}
TARGETS=$(ls tests/fuzz/fuzz_*.c | sed -n 's|tests/fuzz/fuzz_\(.*\)\.c$|\1|p' | grep -vx util)
CC=${FUZZ_CC:-clang} cmake -S . -B build-fuzz -DQI_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQI_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target $(for t in $TARGETS; do printf 'fuzz_%s ' "$t"; done) >/dev/null
rm -rf "$OUT"
echo "fuzzing each target for $SECS s, ${FUZZ_JOBS:-2} at a time"
# xargs exits non-zero when any target failed; every target still runs.
printf '%s\n' $TARGETS | xargs -P "${FUZZ_JOBS:-2}" -I{} "$0" --one {} "$SECS"

#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on),
# built into build-sanitize/ (-Dsanitize_all=true, CUDA off: the sanitizers do not see into
# the GPU). CI runs it after the plain suite. Ends with "sanitized tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build-sanitize/build.ninja ]; then
  meson setup build-sanitize -Dsanitize_all=true -Dcuda=disabled --buildtype=debugoptimized >/dev/null || {
    echo "sanitized tests: 0 passed, 1 failed (meson setup failed)"; exit 1; }
fi
# everything: the suite also runs the examples and the CLI from this build, sanitized too
ninja -C build-sanitize || { echo "sanitized tests: 0 passed, 1 failed (build failed)"; exit 1; }
log=$(mktemp)
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ./build-sanitize/tests/deltagrad_tests "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
line=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
rm -f "$log"
if [ -z "$line" ]; then
  echo "sanitized tests: 0 passed, 1 failed (no summary: a sanitizer stopped the run, exit $rc)"
  exit 1
fi
passed=$(echo "$line" | sed -E 's/^tests: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
failed=$(echo "$line" | sed -E 's/^tests: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
# A sanitizer report at exit (a leak) turns a clean summary into a failure.
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "sanitized tests: $passed passed, $failed failed"
[ "$failed" = 0 ]

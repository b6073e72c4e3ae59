#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/, clang + AddressSanitizer + UBSan) into build-fuzz/ and
# runs each for SECONDS (default 600), one after another, from the seed corpus in
# fuzz/corpus/<name> (new inputs go to build-fuzz/corpus/<name>; the repo's corpus is not
# touched). Findings (crash-*, leak-*, oom-*, timeout-* files) land in build-fuzz/findings/<run>/.
# Prints one line per harness: executions, corpus size, findings.
#   bash scripts/fuzz.sh [SECONDS] [HARNESS...]     (harnesses: safetensors idx image config)
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}; shift || true
HARNESSES=${*:-safetensors idx image config}
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev libomp-dev)"; exit 2; }
if [ ! -f build-fuzz/build.ninja ]; then
  CXX=clang++ meson setup build-fuzz -Dfuzz=true -Dsanitize_all=true -Dcuda=disabled --buildtype=debugoptimized >/dev/null || exit 2
fi
ninja -C build-fuzz || exit 2
found_dir=build-fuzz/findings/$(date +%Y%m%d-%H%M%S)  # this run's findings only
mkdir -p "$found_dir"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
status=0
for h in $HARNESSES; do
  work=build-fuzz/corpus/$h
  mkdir -p "$work"
  log=build-fuzz/fuzz_$h.log
  start=$SECONDS
  ./build-fuzz/fuzz/fuzz_$h "$work" "fuzz/corpus/$h" -max_total_time="$SECS" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 -artifact_prefix="$found_dir/$h-" >"$log" 2>&1
  rc=$?
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  found=$(ls "$found_dir" | grep -c "^$h-" || true)
  echo "fuzz $h: $((SECONDS - start))s, ${execs:-?} executions, corpus $(ls "$work" | wc -l) inputs, findings $found, exit $rc (log $log, findings in $found_dir)"
  [ "$rc" = 0 ] && [ "$found" = 0 ] || status=1
done
exit $status

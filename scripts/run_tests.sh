#!/usr/bin/env bash
# The README's test command: install deps, build, run every test. Ends with the line
# "tests: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
./build/tests/deltagrad_tests "$@"

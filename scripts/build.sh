#!/usr/bin/env bash
# Configure (once) and build into build/. CUDA is compiled when nvcc is found (-Dcuda=auto).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || meson setup build -Dcuda=auto >/dev/null
ninja -C build

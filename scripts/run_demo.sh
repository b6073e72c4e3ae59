#!/usr/bin/env bash
# The README's main command: install deps, build, run the main job on its default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
./build/tools/deltagrad demo "$@"

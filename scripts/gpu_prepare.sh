#!/usr/bin/env bash
# Run here, before a session's first call to the GPU machine (which has nvcc but no apt and no
# network): copies the header-only dependencies into the git-ignored .deps/include, the folder
# scripts/build_gpu.sh reads. Name `.deps` in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.deps/include
rm -rf .deps && mkdir -p $D
cp -r /usr/include/eigen3 /usr/include/doctest /usr/include/nlohmann /usr/include/stb $D/
cp /usr/include/zlib.h /usr/include/zconf.h $D/
du -sh .deps

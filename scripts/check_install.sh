#!/usr/bin/env bash
# The installed package works outside this tree: `meson install` of the library alone (no CLI, no
# tests, no doctest; -Dlibrary_only=true) into a temporary prefix, then packaging/example built
# against it with pkg-config, and with CMake's find_package(deltagrad) where cmake is installed,
# and run (it trains a small LoRA ViT for 5 steps and fails unless the loss went down).
# Usage: scripts/check_install.sh [BUILD_DIR]   (default build-install; configured if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-install}
P=$(mktemp -d)
W=$(mktemp -d)
trap 'rm -rf "$P" "$W"' EXIT
if [ ! -f "$B/build.ninja" ]; then
  meson setup "$B" -Dlibrary_only=true -Dcuda=disabled --prefix="$P" >/dev/null
else
  meson configure "$B" --prefix="$P" >/dev/null
fi
ninja -C "$B" install >/dev/null
pc=$(find "$P" -name deltagrad.pc | head -n 1)
[ -n "$pc" ] || { echo "install check: no deltagrad.pc under $P"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
[ -f "$P/include/deltagrad/peft/peft_model.h" ] || { echo "install check: headers missing under $P/include/deltagrad"; exit 1; }
libdir=$(pkg-config --variable=libdir deltagrad)
# The library names its instruction set in its ELF notes (meson.build: -Wl,-z,<march>), so that an
# older CPU's loader refuses it with a message instead of the program dying of SIGILL later.
march=$(meson introspect "$B" --buildoptions | python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "march"))')
case "$march" in
  x86-64-v[234])
    if command -v readelf >/dev/null; then
      readelf -n "$libdir/libdeltagrad.so" | grep -q "x86 ISA needed:.*$march" ||
        { echo "install check: $libdir/libdeltagrad.so does not carry the ISA level $march in its notes (readelf -n)"; exit 1; }
    fi ;;
esac
cp packaging/example/use_deltagrad.cpp packaging/example/CMakeLists.txt "$W/"
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
g++ -std=c++20 -O1 "$W/use_deltagrad.cpp" -o "$W/use_deltagrad" $(pkg-config --cflags --libs deltagrad)
LD_LIBRARY_PATH="$libdir" "$W/use_deltagrad"
if command -v cmake >/dev/null; then
  cmake -S "$W" -B "$W/cmake-build" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$W/cmake-build" >/dev/null
  LD_LIBRARY_PATH="$libdir" "$W/cmake-build/use_deltagrad"
fi
echo "install check: passed (pkg-config$(command -v cmake >/dev/null && echo ' and CMake'))"

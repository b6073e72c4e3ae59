#!/usr/bin/env bash
# Build without meson or pkg-config (for the lent GPU machine, which has nvcc and g++ but
# no Debian -dev packages): headers come from $DG_DEPS (Eigen, doctest, nlohmann, stb,
# zlib.h), copied there beforehand. Output in build-gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=${DG_DEPS:-.deps/include}
OUT=build-gpu
mkdir -p $OUT/obj $OUT/tests $OUT/tools $OUT/examples
ZLIB=$(ls /usr/lib/x86_64-linux-gnu/libz.so* /lib/x86_64-linux-gnu/libz.so* 2>/dev/null | head -n 1)
CXX="g++ -std=c++20 -O2 -march=native -fopenmp -DNDEBUG -DDG_WITH_CUDA=1 -I. -isystem $DEPS -isystem $DEPS/eigen3 -isystem $DEPS/stb -isystem /usr/local/cuda/include -Wno-deprecated-declarations"
lib_src=$(ls core/*.cpp core/cpu/*.cpp autograd/*.cpp autograd/ops/*.cpp nn/*.cpp peft/*.cpp data/*.cpp train/*.cpp)
compile() { $CXX -DDG_SOURCE_DIR=\"$PWD\" -DDG_BUILD_DIR=\"$PWD/$OUT\" -c "$1" -o "$OUT/obj/$(echo "$1" | tr / _).o"; }
export -f compile; export CXX OUT
printf '%s\n' $lib_src tests/*.cpp tools/*.cpp examples/*.cpp bench/bench_step.cpp | xargs -P "$(nproc)" -I{} bash -c 'compile {}'
pids=()
for f in cuda/*.cu; do
  /usr/local/cuda/bin/nvcc -c "$f" -o "$OUT/obj/$(echo "$f" | tr / _).o" -std=c++20 -O3 -I. -Xcompiler -fopenmp \
    -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90 -DDG_WITH_CUDA=1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # a plain `wait` would hide an nvcc failure
libobjs=$(for f in $lib_src cuda/*.cu; do echo "$OUT/obj/$(echo "$f" | tr / _).o"; done)
LINK="-L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt $ZLIB -fopenmp -Wl,-rpath,/usr/local/cuda/lib64"
g++ -o $OUT/tests/deltagrad_tests $OUT/obj/tests_*.o $libobjs $LINK
g++ -o $OUT/tools/deltagrad $OUT/obj/tools_*.o $libobjs $LINK
for e in train_mlp lora_timm custom_data switch_deltas; do g++ -o $OUT/examples/$e $OUT/obj/examples_$e.cpp.o $libobjs $LINK; done
mkdir -p $OUT/bench
g++ -o $OUT/bench/bench_step $OUT/obj/bench_bench_step.cpp.o $libobjs $LINK
echo "built $OUT/tests/deltagrad_tests $OUT/tools/deltagrad"

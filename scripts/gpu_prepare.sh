#!/usr/bin/env bash
# Run HERE (this machine has nvcc 13.0; the lent GPU machine compiles nothing): builds the GPU
# bundle, the git-ignored folder .gpu-bundle/ that the device tool's `run` carries, and checks it.
#   bash scripts/gpu_prepare.sh
# The bundle: tests/deltagrad_tests, tools/deltagrad (the CLI; the tests find it at
# .gpu-bundle/tools/deltagrad), bench/bench_step, built by meson in build-gpu-bundle/ with
# -Dcuda=enabled (sm_90 machine code + compute_90 PTX, cuda/meson.build) -Dgpu_bundle=true
# (paths relative to the repository root, cudart and the C++ runtime static) and OpenBLAS,
# oneDNN and MPI off (Debian's libraries: the device has none of them). Beside them, copies of
# scripts/gpu_run.sh, bench/gpu_bench.sh and bench/torch_peer.py as built, lib/libgomp.so.1
# (the OpenMP runtime these binaries were linked with) and bundle-info.txt (commit, tree state,
# nvcc). The CUDA tests read no fixture files (tests/test_cuda.cpp builds its inputs), and the
# tracked files travel with the working tree anyway.
# Then the run call is (scripts/gpu_run.sh's header and bench/RESULTS.md say more):
#   run  command: bash .gpu-bundle/scripts/gpu_run.sh   carry: [".gpu-bundle"]   timeout_s: 540
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-gpu-bundle
BUNDLE=.gpu-bundle
MAX_MIB=48  # the tool carries 64 MiB in all (carried paths plus the working tree): leave room
NVCC=/usr/local/cuda/bin/nvcc
[ -x $NVCC ] || { echo "gpu_prepare.sh: no nvcc at $NVCC: the bundle is built on a machine with the CUDA toolkit" >&2; exit 1; }
[ -d $BUILD ] || meson setup $BUILD -Dcuda=enabled -Dgpu_bundle=true -Dbuildtype=release \
  -Dopenblas=disabled -Ddnnl=disabled -Dmpi=disabled
nice -n 10 ninja -C $BUILD tests/deltagrad_tests tools/deltagrad bench/bench_step

rm -rf $BUNDLE
mkdir -p $BUNDLE/tests $BUNDLE/tools $BUNDLE/bench $BUNDLE/scripts $BUNDLE/lib
for b in tests/deltagrad_tests tools/deltagrad bench/bench_step; do strip -o $BUNDLE/$b $BUILD/$b; done
cp scripts/gpu_run.sh $BUNDLE/scripts/
cp bench/gpu_bench.sh bench/torch_peer.py $BUNDLE/bench/
GOMP=$(g++ -print-file-name=libgomp.so.1)
cp -L "$GOMP" $BUNDLE/lib/libgomp.so.1
{
  echo "built $(date -u +%FT%TZ) on $(hostname) ($(lscpu | sed -n 's/^Model name: *//p' | head -n 1))"
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpu-bundle' || echo ' + uncommitted changes')"
  echo "nvcc: $($NVCC --version | tail -n 1)"
  echo "g++: $(g++ --version | head -n 1)"
} > $BUNDLE/bundle-info.txt

# What the binaries may load on the device: glibc's own libraries (libc, libm, libdl, librt,
# libpthread, the loader), libgcc_s/libstdc++ (ours are linked statically; NVIDIA's libnccl and
# libcublasLt load the system's, which every image with the CUDA toolkit has),
# libgomp (carried in lib/), libz (every Linux image has it), and the NVIDIA libraries: libcuda
# comes with the driver, libcublas/libcublasLt/libnccl with the CUDA toolkit in
# /usr/local/cuda/lib64 or PyTorch's wheels (gpu_run.sh finds them). Anything else, say
# libopenblas, libdnnl or libmpi, would be absent there and the binary would not start.
ALLOWED='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|libgomp|libz|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'
bad=0
for b in tests/deltagrad_tests tools/deltagrad bench/bench_step; do
  echo "== ldd $BUNDLE/$b"
  deps=$(LD_LIBRARY_PATH=$PWD/$BUNDLE/lib:/usr/local/cuda/lib64 ldd $BUNDLE/$b)
  echo "$deps"
  while read -r lib _; do
    if ! [[ $(basename "$lib") =~ $ALLOWED ]]; then
      echo "gpu_prepare.sh: $b needs $lib, which is not on the device's list" >&2
      bad=1
    fi
  done <<< "$deps"
done
[ $bad = 0 ] || { echo "gpu_prepare.sh: the bundle needs libraries the device lacks (see above)" >&2; exit 1; }

kib=$(du -sk $BUNDLE | cut -f1)
tree_kib=$(git ls-files -z | xargs -0 du -ckL 2>/dev/null | tail -n 1 | cut -f1)
echo "bundle: $BUNDLE $((kib / 1024)) MiB ($kib KiB); tracked working tree $((tree_kib / 1024)) MiB; together $(((kib + tree_kib) / 1024)) MiB of the 64 MiB carry limit; 1 carry path of 8"
du -sh $BUNDLE/* | sed 's/^/  /'
if [ $((kib + tree_kib)) -gt $((MAX_MIB * 1024)) ]; then
  echo "gpu_prepare.sh: bundle + tree exceed $MAX_MIB MiB" >&2
  exit 1
fi
echo "ready: run command 'bash .gpu-bundle/scripts/gpu_run.sh', carry ['.gpu-bundle'], timeout_s 540"

#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in steps that each fit one device call
# (10 min): prepare with `bash scripts/gpu_prepare.sh` here, then on the device
#   bash scripts/gpu_check.sh tests   # build (sm_90), the CUDA tests, the fused attention kernel
#   bash scripts/gpu_check.sh bench   # GPU benchmark vs PyTorch: f32 and bf16 mixed precision
#   bash scripts/gpu_check.sh bench-extra   # TF32, and the opt-in cuBLASLt bias epilogue
# Output is printed and copied to $OUT (the device tool's return folder) when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?tests, bench or bench-extra}
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
[ -x build-gpu/tests/deltagrad_tests ] || bash scripts/build_gpu.sh 2>&1 | tail -5
case $what in
  tests)
    # every CUDA case but the opt-in paths first, so that a crash in one of those (they have not
    # run on a GPU yet) cannot hide the others; then the fused attention kernel and the cuBLASLt
    # bias epilogue, each in a run of its own
    ./build-gpu/tests/deltagrad_tests -tc='cuda*' -tce='*cuBLASLt*' 2>&1 | tee "$OUTDIR/gpu_tests.txt" |
      grep -E 'ERROR|MESSAGE|skipped|tests:|Status' | head -80
    DG_CUDA_FUSED_ATTENTION=1 ./build-gpu/tests/deltagrad_tests -tc='cuda*' -tce='*cuBLASLt*' 2>&1 |
      tee "$OUTDIR/gpu_tests_fused_attention.txt" | grep -E 'ERROR|skipped|tests:|Status' | head -40
    ./build-gpu/tests/deltagrad_tests -tc='*cuBLASLt*' 2>&1 | tee "$OUTDIR/gpu_tests_lt_epilogue.txt" |
      grep -E 'ERROR|MESSAGE|tests:|Status' | head -40
    ;;
  bench)  # the two that matter most: f32 and bf16 mixed precision (about 8 minutes)
    for extra in "" "--precision bf16"; do
      echo "## GPU step, batch 64 ${extra:-(f32)}"
      bash bench/gpu_bench.sh build-gpu/bench/bench_step $extra 2>&1 | tee -a "$OUTDIR/gpu_bench.md"
    done
    ;;
  bench-extra)  # TF32, and the opt-in cuBLASLt bias epilogue (it changes deltagrad's side only)
    echo "## GPU step, batch 64 --tf32"
    bash bench/gpu_bench.sh build-gpu/bench/bench_step --tf32 2>&1 | tee -a "$OUTDIR/gpu_bench.md"
    for extra in "" "--precision bf16"; do
      echo "## GPU step, batch 64 ${extra:-(f32)}, DG_CUDA_LT_EPILOGUE=1"
      DG_CUDA_LT_EPILOGUE=1 bash bench/gpu_bench.sh build-gpu/bench/bench_step $extra 2>&1 | tee -a "$OUTDIR/gpu_bench.md"
    done
    ;;
  *) echo "gpu_check.sh: expected 'tests', 'bench' or 'bench-extra', got '$what'" >&2; exit 2 ;;
esac

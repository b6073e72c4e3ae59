#!/usr/bin/env bash
# The one device command of issue 16: everything a lent GPU session runs, in ~8 minutes, from
# the bundle that scripts/gpu_prepare.sh built HERE (nothing compiles on the device).
#
# The device tool's call (the repository root of a copy of the working tree is the cwd there):
#   run(command="bash .gpu-bundle/scripts/gpu_run.sh", carry=[".gpu-bundle"], timeout_s=540)
# To rerun only some steps (say after a fix and a new gpu_prepare.sh here), name them:
#   run(command="bash .gpu-bundle/scripts/gpu_run.sh tests_fused memcheck_optin", carry=[".gpu-bundle"], timeout_s=300)
#
# Steps, in order; each runs in its own process under `timeout` (limit in seconds; a hang or a
# crash costs only its own step), its whole output in $OUT/<step>.log:
#   info              30  nvidia-smi, driver and CUDA versions, PyTorch, the bundle, its libraries
#   tests            120  every CUDA test with the opt-in paths off (-tc='cuda*' minus the three below)
#   tests_fused       60  the same with DG_CUDA_FUSED_ATTENTION=1 (and the fused kernel's own test)
#   tests_epilogue    60  the same with DG_CUDA_LT_EPILOGUE=1 (and the cuBLASLt epilogue's own test)
#   tests_bf16        45  the bf16 mixed-precision CUDA tests
#   tests_bf16_optin  45  the bf16 tests with both opt-in paths on
#   nccl              30  "cuda: NCCL all-reduce on one GPU (one rank, the data-parallel comm)"
#   memcheck          90  compute-sanitizer memcheck on a vit_tiny LoRA training step (batch 2, f32)
#   memcheck_optin    90  the same in bf16 with the fused attention and the epilogue on
#   bench            300  bench/gpu_bench.sh: vs PyTorch eager, batch 64 (whatever time is left)
#   profile_f32       45  op profile (DG_PROFILE) of vit_base LoRA batch 64 f32, default paths
#   profile_bf16      45  the same in bf16
#   profile_bf16_optin 45 bf16 with the fused attention and the epilogue on
# A step's limit shrinks so that the whole run ends by DG_GPU_BUDGET_S (470 s) with 30 s left for
# each later step; a step left with under 15 s is skipped. Without a GPU (nvidia-smi lists none)
# each GPU step skips with one line and the profile steps run a small model on the CPU backend:
# that is the rehearsal on a machine without a GPU.
# If a step fails: read $OUT/<step>.log, fix here, bash scripts/gpu_prepare.sh, and rerun that
# step alone (above). $OUT/summary.md lists each step with its status, exit code and seconds.
# Output goes to $OUT (the device tool's return folder), else bench/results/.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$(basename "$(dirname "$HERE")")" = .gpu-bundle ]; then ROOT=$(dirname "$(dirname "$HERE")"); else ROOT=$(dirname "$HERE"); fi
cd "$ROOT" || exit 2
export B=.gpu-bundle  # relative: the tests were built to find the CLI at .gpu-bundle/tools/deltagrad
export OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
BUDGET=${DG_GPU_BUDGET_S:-470}
T0=$(date +%s)
ALL=(info tests tests_fused tests_epilogue tests_bf16 tests_bf16_optin nccl memcheck memcheck_optin bench
     profile_f32 profile_bf16 profile_bf16_optin)
declare -A LIMIT=([info]=30 [tests]=120 [tests_fused]=60 [tests_epilogue]=60 [tests_bf16]=45 [tests_bf16_optin]=45
                  [nccl]=30 [memcheck]=90 [memcheck_optin]=90 [bench]=300 [profile_f32]=45 [profile_bf16]=45
                  [profile_bf16_optin]=45)
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=("${ALL[@]}")
for s in "${STEPS[@]}"; do
  [ -n "${LIMIT[$s]:-}" ] || { echo "gpu_run.sh: unknown step '$s' (steps: ${ALL[*]})" >&2; exit 2; }
done
[ -x $B/tests/deltagrad_tests ] && [ -x $B/bench/bench_step ] ||
  { echo "gpu_run.sh: no bundle in $ROOT/$B: run 'bash scripts/gpu_prepare.sh' on the build machine and carry .gpu-bundle" >&2; exit 2; }

# Libraries: the bundle's libgomp, the toolkit's cuBLAS/NCCL; where the binaries still miss one,
# the copies in PyTorch's NVIDIA wheels (the device's python3 has nvidia-cublas and nvidia-nccl).
export LD_LIBRARY_PATH=$ROOT/$B/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd $B/tests/deltagrad_tests 2>/dev/null | grep -q 'not found'; then
  wheels=$(python3 - 2>/dev/null <<'PY'
import glob, os
import nvidia
print(":".join(sorted({os.path.dirname(f) for p in nvidia.__path__ for f in glob.glob(p + "/**/lib/lib*.so*", recursive=True)})))
PY
)
  [ -n "$wheels" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$wheels
fi
export GPU=0
nvidia-smi -L 2>/dev/null | grep -q '^GPU' && GPU=1
export SANITIZER
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

# Step bodies. Exit 77: skipped (one line says why).
gpu_or_skip() { [ "$GPU" = 1 ] || { echo "skipped: no GPU on this machine"; exit 77; }; }
tests_run() { gpu_or_skip; "$B/tests/deltagrad_tests" "$@"; }
s_info() {
  echo "date: $(date -u +%FT%TZ); host CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores"
  echo "bundle: $(tr '\n' ';' < $B/bundle-info.txt)"
  if [ "$GPU" = 1 ]; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
  else
    echo "no GPU: nvidia-smi lists none (the GPU steps skip)"
  fi
  command -v nvcc > /dev/null && echo "CUDA toolkit: $(nvcc --version | tail -n 1)"
  python3 -c "import torch; print('PyTorch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" ||
    echo "no PyTorch under python3 (the bench step needs it)"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  for b in tests/deltagrad_tests tools/deltagrad bench/bench_step; do echo "ldd $b:"; ldd $B/$b | grep -E 'cu|nccl|gomp|not found'; done
}
export BF16='*bf16 mixed precision*,*bf16 copies*'  # the bf16 cases (the cuBLASLt case says "f32 and bf16": not these)
s_tests() { tests_run -tc='cuda*' -tce="$BF16,*fused attention*,*cuBLASLt*,*NCCL*"; }
s_tests_fused() { DG_CUDA_FUSED_ATTENTION=1 tests_run -tc='cuda*' -tce="$BF16,*cuBLASLt*,*NCCL*"; }
s_tests_epilogue() { DG_CUDA_LT_EPILOGUE=1 tests_run -tc='cuda*' -tce="$BF16,*fused attention*,*NCCL*"; }
s_tests_bf16() { tests_run -tc="cuda*bf16 mixed precision*,cuda*bf16 copies*"; }
s_tests_bf16_optin() { DG_CUDA_FUSED_ATTENTION=1 DG_CUDA_LT_EPILOGUE=1 tests_run -tc="cuda*bf16 mixed precision*,cuda*bf16 copies*"; }
s_nccl() { tests_run -tc='cuda: NCCL*'; }
memcheck_step() {
  gpu_or_skip
  [ -x "$SANITIZER" ] || { echo "skipped: no compute-sanitizer"; exit 77; }
  "$SANITIZER" --tool memcheck --error-exitcode 1 --print-limit 20 $B/bench/bench_step --model vit_tiny_patch16_224 \
    --method lora --batch 2 --steps 1 --warmup 1 --device cuda "$@"
}
s_memcheck() { memcheck_step --variants base; }
s_memcheck_optin() { memcheck_step --variants both --precision bf16; }
s_bench() {
  gpu_or_skip
  DG_BENCH_DEADLINE=$(($(date +%s) + STEP_LIMIT - 25)) bash $B/bench/gpu_bench.sh $B/bench/bench_step "$OUTDIR/bench.md"
}
profile_step() {  # precision variant
  local out="$OUTDIR/profile_$1_$2.md"
  if [ "$GPU" = 1 ]; then
    DG_PROFILE=$out $B/bench/bench_step --model vit_base_patch16_224 --method lora --batch 64 --steps 3 --warmup 2 \
      --device cuda --precision "$1" --variants "$2" || return
  else  # the rehearsal: the same code on the CPU backend (host clock), a small model
    DG_PROFILE=$out $B/bench/bench_step --model vit_tiny_patch16_224 --method lora --batch 2 --steps 2 --warmup 1 \
      --device cpu --precision "$1" --variants "$2" || return
  fi
  cat "$out"
}
s_profile_f32() { profile_step f32 base; }
s_profile_bf16() { profile_step bf16 base; }
s_profile_bf16_optin() { profile_step bf16 both; }
export -f gpu_or_skip tests_run memcheck_step profile_step "${ALL[@]/#/s_}"

# What each step prints here (its whole log is in $OUTDIR): the lines that say how it went.
excerpt() {
  case $1 in
    info) grep -E '^date|NVIDIA-SMI|^NVIDIA|^name|, [0-9]+ MiB|PyTorch|CUDA toolkit|no GPU|bundle:|not found' "$2" | head -n 12 ;;
    tests*|nccl) grep -E 'skipped:|ERROR|FAILED|MESSAGE|^tests:|Status:|terminate|what\(\)' "$2" | head -n 25 ;;
    memcheck*) grep -E 'skipped|ERROR SUMMARY|Invalid|ms_median|bench_step:' "$2" | cut -c1-200 | head -n 10 ;;
    bench) grep -E '^\||skipped|gpu_bench.sh' "$2" | head -n 20; echo "(the whole table: $OUTDIR/bench.md)" ;;
    profile*) grep -E '^(##|backend|\| )' "$2" | sed '/^| gaps/q' ;;  # the family table; the calls are in the file
  esac
}

SUMMARY=$OUTDIR/summary.md
gpu_name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
{ echo "# gpu_run.sh $(date -u +%FT%TZ) on ${gpu_name:-no GPU} ($(tr '\n' ' ' < $B/bundle-info.txt | cut -c1-160))"
  echo; echo "| step | status | exit | seconds | limit |"; echo "|---|---|---:|---:|---:|"; } > "$SUMMARY"
n=${#STEPS[@]}
for ((i = 0; i < n; i++)); do
  s=${STEPS[$i]}
  left=$((BUDGET - ($(date +%s) - T0) - 30 * (n - i - 1)))
  limit=${LIMIT[$s]}
  [ $left -lt "$limit" ] && limit=$left
  echo "== $s (limit ${limit} s)"
  if [ "$limit" -lt 15 ]; then
    echo "skipped: out of time (${left} s left for it)"
    echo "| $s | out of time | | 0 | $limit |" >> "$SUMMARY"
    continue
  fi
  t=$(date +%s.%N)
  STEP_LIMIT=$limit timeout -k 5 "$limit" bash -c "s_$s" > "$OUTDIR/$s.log" 2>&1
  rc=$?
  secs=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    77) status=skipped ;;
    124|137) status="timed out" ;;
    *) status=failed ;;
  esac
  excerpt "$s" "$OUTDIR/$s.log"
  echo "-> $status (exit $rc, $secs s)"
  echo "| $s | $status | $rc | $secs | $limit |" >> "$SUMMARY"
done
echo "" >> "$SUMMARY"
echo "total $(($(date +%s) - T0)) s (budget $BUDGET s); logs and tables in $OUTDIR" >> "$SUMMARY"
echo
cat "$SUMMARY"

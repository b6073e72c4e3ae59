#!/usr/bin/env bash
# CPU benchmark: deltagrad's bench_step against the same ViT + PEFT method in PyTorch
# (bench/torch_peer.py) under the newest PyTorch that pip installs (its own virtual
# environment, .venv-bench/, made on first use; never used by CI or at run time) and under
# Debian's python3-torch 1.13, alternating deltagrad / new / old per row, ROUNDS times.
# Writes bench/results/cpu-<date>.jsonl (every run) and cpu-<date>.md (the table).
#   bash bench/cpu_bench.sh                 # all configs and methods (about 40 min on 2 cores)
#   CONFIGS="vit_mnist_28:128" METHODS="lora full" ROUNDS=1 bash bench/cpu_bench.sh
#   PRECISION=bf16 VENV=/path/to/venv ... (bf16 autocast on both sides; a PyTorch venv made elsewhere)
#   MARCH=keep ... (measure build/ as configured instead of reconfiguring it with -Dmarch=native)
set -euo pipefail
cd "$(dirname "$0")/.."
# This workplace sets these for old OpenBLAS builds; they slow a current one (and oneDNN's
# dispatch does not read them). Unset for every side alike.
echo "cpu_bench: unsetting OPENBLAS_CORETYPE='${OPENBLAS_CORETYPE:-}' OPENBLAS_L2_SIZE='${OPENBLAS_L2_SIZE:-}' for all sides"
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
THREADS=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$THREADS
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-5}
CONFIGS=${CONFIGS:-"vit_tiny_patch16_224:32 vit_small_patch16_224:8 vit_mnist_28:128"}
METHODS=${METHODS:-"inference full linear_probe lora lora_all adapter_plus vpt_deep"}
# PEFT methods measured a second time with MLP recomputation on both sides (deltagrad
# --recompute, PyTorch torch.utils.checkpoint around fc1 + GELU); RECOMPUTE="" skips them.
RECOMPUTE=${RECOMPUTE-"lora lora_all adapter_plus vpt_deep"}
# PRECISION=bf16: mixed precision on both sides (deltagrad --precision bf16, torch.autocast).
PRECISION=${PRECISION:-f32}

[ -x build/bench/bench_step ] || bash scripts/build.sh
# The bench measures this CPU's full instruction set (AVX-512 where present), as before the build's
# portable default (-Dmarch=x86-64-v3); --reconfigure also teaches an older build dir the option.
# MARCH=keep measures build/ as it is configured (the product's default, x86-64-v3, unless changed).
[ "${MARCH:-native}" = keep ] || meson setup --reconfigure build -Dmarch="${MARCH:-native}" >/dev/null
ninja -C build bench/bench_step bench/gemm_bench tools/deltagrad >/dev/null
VENV=${VENV:-.venv-bench}  # VENV=path uses an existing one
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "cpu_bench: installing the newest PyTorch from PyPI into $VENV (about 4 GB with its CUDA wheels; once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch
fi
PEERS=("$VENV/bin/python")
# OLD_TORCH=0 leaves out Debian's torch 1.13 (a shorter run)
if [ "${OLD_TORCH:-1}" = 1 ] && /usr/bin/python3 -c "import torch" 2>/dev/null; then PEERS+=(/usr/bin/python3); fi

mkdir -p bench/results
stamp=$(date -u +%Y-%m-%d)
out=bench/results/cpu-$stamp.jsonl
: > "$out"
meta=$(printf '{"meta":1,"date":"%s","commit":"%s","cpu":"%s","threads":%s,"rounds":%s,"steps":%s}' \
  "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$THREADS" "$ROUNDS" "$STEPS")
echo "$meta" >> "$out"

# The GEMM peak the table's percentages refer to: the best GFLOP/s on the ViT GEMM shapes of
# the backend's GEMM with each library (gemm_bench's "peak" line) and PyTorch's own matmul.
./build/bench/gemm_bench --runs 5 | tee /tmp/dg_gemm.txt
gemm_peak=$(awk '/^peak /{print $2}' /tmp/dg_gemm.txt)
gemm_peak_lib=$(awk '/^peak /{print $3}' /tmp/dg_gemm.txt)
torch_peak=$("${PEERS[0]}" - "$THREADS" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
best = 0
for M, K, N in [(6304, 192, 576), (6304, 192, 768), (6304, 768, 192), (1576, 384, 1152), (1576, 1536, 384)]:
    a, b = torch.randn(M, K), torch.randn(K, N)
    a @ b
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    best = max(best, 2 * M * K * N / min(ts) / 1e9)
print(f"{best:.1f}")
PY
)
echo "{\"gemm\":1,\"dg_peak\":$gemm_peak,\"dg_peak_lib\":\"$gemm_peak_lib\",\"torch_peak\":$torch_peak}" >> "$out"
echo "cpu_bench: GEMM peak on ViT shapes: deltagrad $gemm_peak GFLOP/s ($gemm_peak_lib), PyTorch matmul $torch_peak GFLOP/s"
./build/tools/deltagrad --version | tee /tmp/dg_version.txt
python3 -c 'import json, sys; print(json.dumps({"version": sys.stdin.read()}))' < /tmp/dg_version.txt >> "$out"

for cfg in $CONFIGS; do
  model=${cfg%%:*} batch=${cfg##*:}
  variants=$METHODS
  for m in $RECOMPUTE; do case " $METHODS " in *" $m "*) variants="$variants $m+recompute" ;; esac; done
  for variant in $variants; do
    method=${variant%+recompute}
    args=(--model "$model" --method "$method" --batch "$batch" --device cpu --steps "$STEPS" --warmup 2 --threads "$THREADS")
    [ "$variant" = "$method" ] || args+=(--recompute)
    [ "$PRECISION" = f32 ] || args+=(--precision "$PRECISION")
    for ((r = 0; r < ROUNDS; ++r)); do
      ./build/bench/bench_step "${args[@]}" | tee -a "$out"
      for py in "${PEERS[@]}"; do "$py" bench/torch_peer.py "${args[@]}" | tee -a "$out"; done
    done
  done
done
# Where deltagrad's step spends its CPU time (bench/perf_share.py), one run per method and config
# (CPU samples: on a busy machine a descheduled partner thread shows as OpenMP waits; measure quiet),
# where perf is installed and allowed (Debian: linux-perf); PERF=0 skips it.
if [ "${PERF:-1}" = 1 ] && perf stat -e cpu-clock true >/dev/null 2>&1; then
  for cfg in $CONFIGS; do
    model=${cfg%%:*} batch=${cfg##*:}
    for method in $METHODS; do
      args=(--model "$model" --method "$method" --batch "$batch" --device cpu --steps "$STEPS" --warmup 2 --threads "$THREADS")
      [ "$PRECISION" = f32 ] || args+=(--precision "$PRECISION")
      python3 bench/perf_share.py -- "${args[@]}" | tee -a "$out" || echo "cpu_bench: perf_share failed for $model $method"
    done
  done
else
  echo "cpu_bench: perf not available (apt-get install linux-perf; PERF=0 skips): no GEMM share from samples"
fi
python3 bench/cpu_table.py "$out" | tee "bench/results/cpu-$stamp.md"

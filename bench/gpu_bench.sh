#!/usr/bin/env bash
# GPU benchmark: deltagrad's bench_step against the PyTorch peer, alternating A B per row
# in one run, for vit_small/vit_base at batch 64 and LoRA r=8, Adapter+, VPT-deep, full
# fine-tuning. Prints a markdown table (ratios deltagrad / PyTorch).
#   bench/gpu_bench.sh BENCH_STEP_BINARY [extra args for both sides, e.g. --tf32 or --precision bf16]
# With --precision bf16 the peak FLOP/s is bf16 dense tensor core (DG_PEAK_TFLOPS, default 989 on H100/H200).
set -euo pipefail
BIN=${1:?path to bench_step}; shift || true
DIR=$(cd "$(dirname "$0")" && pwd)
PEAK=${DG_PEAK_TFLOPS:-67}  # H100 SXM dense FP32 (non-tensor-core); pass DG_PEAK_TFLOPS for TF32 (~495)
case " $* " in *" --precision bf16 "*) PEAK=${DG_PEAK_TFLOPS:-989} ;; esac
echo "| model | method | deltagrad ms | PyTorch ms | time ratio | deltagrad img/s | deltagrad peak MB | PyTorch peak MB | mem ratio | TFLOP/s | % of ${PEAK} |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for model in vit_small_patch16_224 vit_base_patch16_224; do
  for method in lora adapter_plus vpt_deep full; do
    a=$("$BIN" --model $model --method $method --batch 64 --device cuda --steps 10 "$@")
    b=$(python3 "$DIR/torch_peer.py" --model $model --method $method --batch 64 --device cuda --steps 10 "$@")
    python3 - "$a" "$b" "$PEAK" <<'PY'
import json, sys
a, b, peak = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
print(f"| {a['model']} | {a['method']} | {a['ms_median']:.1f} | {b['ms_median']:.1f} | {a['ms_median']/b['ms_median']:.2f} "
      f"| {a['img_per_s']:.0f} | {a['peak_mb']:.0f} | {b['peak_mb']:.0f} | {a['peak_mb']/b['peak_mb']:.2f} "
      f"| {a['tflops']:.1f} | {100*a['tflops']/peak:.0f}% |")
PY
  done
done

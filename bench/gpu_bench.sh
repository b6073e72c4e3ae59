#!/usr/bin/env bash
# GPU benchmark: deltagrad's bench_step against the PyTorch peer (bench/torch_peer.py: eager,
# SDPA attention, torch.autocast bf16 for the bf16 rows), batch 64, one group per (model, method,
# precision), the most important first so that a time limit loses only the tail:
#   vit_base {lora, full, adapter_plus, vpt_deep} x {f32, bf16}, then vit_small the same.
# A group is one bench_step process that measures CUDA's opt-in paths interleaved step by step
# (--variants base,fused,epilogue,both: the fused attention and the cuBLASLt bias epilogue off/on),
# then one PyTorch process: deltagrad and PyTorch alternate group by group, and every variant of a
# group is compared with the PyTorch run that follows it. Each process runs under its own timeout
# (--foreground: in gpu_run.sh's process group, so that the step's own timeout ends them too).
#   bench/gpu_bench.sh BENCH_STEP OUT_MD
# Appends a markdown table to OUT_MD row by row and the raw JSON lines to OUT_MD's .jsonl.
# Environment: DG_BENCH_STEPS (timed steps per variant, 6), DG_BENCH_WARMUP (2), DG_BENCH_BATCH (64),
# DG_BENCH_DEVICE (cuda), DG_BENCH_MODELS ("vit_base_patch16_224 vit_small_patch16_224"),
# DG_BENCH_DEADLINE (epoch seconds: no group starts after it), PYTHON (python3).
set -uo pipefail  # not -e: one failing process must not stop the other groups
BIN=${1:?path to bench_step}
MD=${2:?output markdown file}
DIR=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
STEPS=${DG_BENCH_STEPS:-6} WARMUP=${DG_BENCH_WARMUP:-2} BATCH=${DG_BENCH_BATCH:-64} DEV=${DG_BENCH_DEVICE:-cuda}
MODELS=${DG_BENCH_MODELS:-vit_base_patch16_224 vit_small_patch16_224}
DEADLINE=${DG_BENCH_DEADLINE:-0}
RAW=${MD%.md}.jsonl
common=(--batch "$BATCH" --device "$DEV" --steps "$STEPS" --warmup "$WARMUP")
echo "| model | method | precision | variant | deltagrad ms | PyTorch ms | time ratio | deltagrad img/s | deltagrad peak MB | PyTorch peak MB | TFLOP/s | % of peak |" | tee -a "$MD"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" | tee -a "$MD"
for model in $MODELS; do
  for method in lora full adapter_plus vpt_deep; do
    for precision in f32 bf16; do
      if [ "$DEADLINE" != 0 ] && [ "$(date +%s)" -ge "$DEADLINE" ]; then
        echo "gpu_bench.sh: out of time, stopped before $model $method $precision" | tee -a "$MD"
        exit 3
      fi
      dg=$(timeout --foreground -k 5 120 "$BIN" --model "$model" --method "$method" --precision "$precision" \
        --variants base,fused,epilogue,both "${common[@]}" 2>"$MD.err.tmp"); dg_rc=$?
      [ $dg_rc = 0 ] || echo "gpu_bench.sh: bench_step $model $method $precision: rc $dg_rc: $(tail -n 2 "$MD.err.tmp")" >&2
      pt=$(timeout --foreground -k 5 90 "$PY" "$DIR/torch_peer.py" --model "$model" --method "$method" --precision "$precision" \
        "${common[@]}" 2>"$MD.err.tmp"); pt_rc=$?
      [ $pt_rc = 0 ] || echo "gpu_bench.sh: torch_peer $model $method $precision: rc $pt_rc: $(tail -n 2 "$MD.err.tmp")" >&2
      printf '%s\n%s\n' "$dg" "$pt" | grep '^{' >> "$RAW"
      python3 - "$model" "$method" "$precision" "$dg" "$pt" <<'PY' | tee -a "$MD"
import json, sys
model, method, precision, dg, pt = sys.argv[1:6]
peak = 989.0 if precision == "bf16" else 67.0  # H100/H200 dense bf16 tensor core, plain FP32 (TFLOP/s)
rows = [json.loads(l) for l in dg.splitlines() if l.startswith("{")]
t = next((json.loads(l) for l in pt.splitlines() if l.startswith("{")), None)
if not rows:
    print(f"| {model} | {method} | {precision} | (deltagrad failed) | | {t['ms_median']:.1f} | | | | {t['peak_mb']:.0f} | | |" if t else
          f"| {model} | {method} | {precision} | (both failed) | | | | | | | | |")
for a in rows:
    tm = f"{t['ms_median']:.1f}" if t else "failed"
    ratio = f"{a['ms_median'] / t['ms_median']:.2f}" if t else ""
    tp = f"{t['peak_mb']:.0f}" if t else ""
    print(f"| {model} | {method} | {precision} | {a['variant']} | {a['ms_median']:.1f} | {tm} | {ratio} "
          f"| {a['img_per_s']:.0f} | {a['peak_mb']:.0f} | {tp} | {a['tflops']:.1f} | {100 * a['tflops'] / peak:.0f}% of {peak:.0f} |")
PY
    done
  done
done
rm -f "$MD.err.tmp"

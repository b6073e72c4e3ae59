#!/usr/bin/env bash
# Data parallel on this machine, and a model of it on GPUs.
#  1. The same training run (vit_mnist_28, LoRA r=8 on qkv + head, Fashion-MNIST 5-9, 1000 images,
#     global batch 64, one epoch + the sharded evaluation of 5000 images) as 1 process of 1 thread and
#     as `mpirun -np 2` ranks of 1 thread each, ROUNDS times alternating; the time is the trainer's
#     own ("done in", start-up and data loading excluded).
#  1b. The same 2-rank run with the gradient all-reduce after backward (--no-overlap), overlapped in
#     the default buckets (25 MiB: one for these 34 KB) and in buckets of 4 KiB (9 of them), ROUNDS
#     times alternating: the trainer's "gradient all-reduce after backward" (ms per step: the time from
#     the end of a step's backward to every gradient summed, i.e. what backward did not hide).
#  2. The bytes each method all-reduces per step on vit_base_patch16_224 (bench_step's allreduce_bytes:
#     every trainable gradient, 100 classes).
#  3. A modelled table for 8-64 GPUs from a measured GPU step time, those bytes and stated bandwidths.
# Writes bench/results/dist-<date>.md. Needs a quiet machine for (1) and (1b): mpirun ranks share the cores.
#   bash bench/dist_bench.sh            ROUNDS=3 EPOCHS=2 bash bench/dist_bench.sh
#   PARTS=overlap bash bench/dist_bench.sh   (1b alone)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
EPOCHS=${EPOCHS:-1}
PARTS=${PARTS:-all}
CLI=build/tools/deltagrad
[ -x "$CLI" ] || bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none --mca btl self,vader -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo '{"deltas": [{"name": "lora", "method": "lora", "r": 8, "lora_alpha": 8, "target_modules": ["blocks.*.attn.qkv"]}], "trainable": ["head.*"]}' > "$work/lora.json"
args="train --model-config vit_mnist_28 --peft $work/lora.json --data fashion-mnist:classes=5-9:n=1000 --batch 64 --epochs $EPOCHS --seed 0 --augment pad-crop"
secs() { sed -n 's/^done in \([0-9.]*\)s.*/\1/p' "$1" | head -1; }
# CPU seconds (user + system) of one process, start-up and data loading included: on a busy machine
# the wall time says little, the CPU time per rank still shows each rank doing half the work
cputime() { python3 -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"cpu {r.ru_utime + r.ru_stime:.2f}", file=sys.stderr); sys.exit(rc)' "$@"; }
export -f cputime
mkdir -p bench/results
out=bench/results/dist-$(date -u +%Y-%m-%d).md
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
if [ "$PARTS" = all ]; then
{
  echo "## Data parallel, $(date -u '+%Y-%m-%d %H:%M') UTC: $cpu, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg) at the start"
  echo
  echo "vit_mnist_28 + LoRA r=8 (qkv) + head, 1000 images, global batch 64, $EPOCHS epoch(s) + evaluation of 5000 images; seconds of training (the trainer's 'done in')"
  echo
  echo "| round | 1 process x 1 thread: training s | 2 ranks x 1 thread: training s | speed-up | CPU s, 1 process | CPU s per rank (2 ranks) |"
  echo "|---|---:|---:|---:|---:|---:|"
} > "$out"
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$work/one" "$work/two"
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 cputime $CLI $args --out "$work/one" --quiet > "$work/one.log" 2>&1
  $MPIRUN -np 2 bash -c 'cputime "$@"' _ $CLI $args --out "$work/two" > "$work/two.log" 2>&1
  a=$(secs "$work/one.log"); b=$(secs "$work/two.log")
  ca=$(sed -n 's/^cpu //p' "$work/one.log"); cb=$(sed -n 's/^cpu //p' "$work/two.log" | paste -sd/)
  echo "| $r | $a | $b | $(python3 -c "print(f'{$a/$b:.2f}x')") | $ca | $cb |" | tee -a "$out"
done
grep -m1 '^data parallel' "$work/two.log" | sed 's/^/trainer: /' | tee -a "$out"
fi
{
  echo
  [ "$PARTS" = all ] || printf '## Data parallel, %s UTC: %s, %s cores, load %s at the start\n\n' "$(date -u '+%Y-%m-%d %H:%M')" "$cpu" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)"
  echo "### The gradient all-reduce overlapped with backward: ms per step from the end of backward to every gradient summed"
  echo
  echo "2 ranks x 1 thread, the 2-rank run of (1); rank 0's mean over the run's steps (the trainer's 'gradient all-reduce after backward': it includes waiting for the other rank's backward)"
  echo
  echo "| round | after backward (--no-overlap) | overlapped, 25 MiB buckets | overlapped, 4 KiB buckets | buckets (4 KiB) | of them started during backward | held back by an earlier bucket | summed when it ended |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} >> "$out"
after() { sed -n 's/^gradient all-reduce after backward: \([0-9.]*\) ms.*/\1/p' "$1" | head -1; }
for r in $(seq 1 "$ROUNDS"); do
  for mode in off on small; do
    extra=""
    [ $mode = off ] && extra="--no-overlap"
    [ $mode = small ] && extra="--bucket-mb 0.00390625"
    rm -rf "$work/ov-$mode"
    $MPIRUN -np 2 $CLI $args $extra --out "$work/ov-$mode" > "$work/ov-$mode.log" 2>&1
  done
  n=$(sed -n 's/.* bytes in \([0-9]*\) buckets.*/\1/p' "$work/ov-small.log" | head -1)
  e=$(sed -n 's/.*buckets, \([0-9.]*\) of them started during backward.*/\1/p' "$work/ov-small.log" | head -1)
  h=$(sed -n 's/.*during backward, \([0-9.]*\) held back by an earlier bucket.*/\1/p' "$work/ov-small.log" | head -1)
  d=$(sed -n 's/.*earlier bucket, \([0-9.]*\) summed when it ended.*/\1/p' "$work/ov-small.log" | head -1)
  echo "| $r | $(after "$work/ov-off.log") | $(after "$work/ov-on.log") | $(after "$work/ov-small.log") | $n | $e | $h | $d |" | tee -a "$out"
done
[ "$PARTS" = all ] || { echo "wrote $out"; exit 0; }
{
  echo
  echo "### Bytes all-reduced per step, vit_base_patch16_224, 100 classes (bench_step's allreduce_bytes)"
  echo
  echo "| method | floats | bytes |"
  echo "|---|---:|---:|"
} >> "$out"
for m in linear_probe lora vpt_deep adapter_plus full; do
  b=$(build/bench/bench_step --model vit_base_patch16_224 --method $m --device cpu --batch 1 --steps 1 --warmup 0 |
      python3 -c "import json,sys; print(json.load(sys.stdin)['allreduce_bytes'])")
  echo "| $m | $((b / 4)) | $b |" | tee -a "$out"
  echo "$m $b" >> "$work/bytes"
done
# 3. The model: ring all-reduce (NCCL's bandwidth term) after backward, no overlap (as implemented):
#    t_step(N) = t_compute + 2 (N-1)/N * S / BW + 2 log2(N) * alpha   (alpha: per-hop latency, tree)
#    8 GPUs: one node, NVLink 4 (H100 SXM): 900 GB/s per GPU both directions = 450 GB/s each way
#    (NVIDIA H100 datasheet); 16-64 GPUs: nodes of 8 with one NDR InfiniBand port of 400 Gb/s = 50 GB/s
#    per GPU (NVIDIA ConnectX-7 / DGX H100 user guide), the inter-node links being the bottleneck.
#    alpha = 2 us on NVLink, 5 us across InfiniBand (assumed). t_compute: bench/RESULTS.md's measured
#    H100 FP32 step of vit_base_patch16_224 at batch 64 per GPU: lora 152.3 ms, full 191.5 ms.
python3 - "$work/bytes" >> "$out" <<'PY'
import math, sys
b = dict(l.split() for l in open(sys.argv[1]))
tc = {"lora": 152.3e-3, "full": 191.5e-3}
print("\n### Modelled: N x H100, vit_base_patch16_224, batch 64 per GPU, all-reduce after backward (not overlapped)\n")
print("| method | bytes/step | GPUs | link | all-reduce ms | step ms | scaling efficiency | img/s |")
print("|---|---:|---:|---|---:|---:|---:|---:|")
for m in ("lora", "full"):
    S = int(b[m])
    for n in (8, 16, 32, 64):
        bw, alpha, link = (450e9, 2e-6, "NVLink 450 GB/s") if n == 8 else (50e9, 5e-6, "IB NDR 50 GB/s")
        t_ar = 2 * (n - 1) / n * S / bw + 2 * math.log2(n) * alpha
        step = tc[m] + t_ar
        print(f"| {m} | {S} | {n} | {link} | {t_ar*1e3:.2f} | {step*1e3:.1f} | {tc[m]/step*100:.1f}% | {64*n/step:.0f} |")
PY
echo "wrote $out"

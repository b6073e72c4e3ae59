#!/usr/bin/env python3
"""Where a deltagrad step spends its CPU time: perf samples (cpu-clock) of bench_step's timed
steps only (set-up, calibration and warm-up excluded through perf's --control fifos), sorted into
GEMM and the rest. Prints one JSON line per run, which bench/cpu_table.py reads:

  python3 bench/perf_share.py -- --model vit_tiny_patch16_224 --method lora --batch 32 --device cpu --threads 2

"GEMM" is every sample in a GEMM library: oneDNN's JIT kernels (perf names them "[JIT] tid N";
deltagrad runs oneDNN for products only) and its library code (packing), OpenBLAS, Eigen's GEMM
kernels (gebp / gemm_pack), and the naive reference GEMM. Samples are CPU time on every thread,
so a thread that waits in OpenMP's spin loop counts as not-GEMM (which is what it is).
Needs `perf` (Debian's linux-perf) with cpu-clock allowed (perf_event_paranoid <= 2 or root).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

GEMM_SYMBOL = re.compile(r"gebp|gemm_pack|general_matrix_matrix_product|naive_gemm|gemm_reference")
# the rest, by what the symbol computes (first match wins); anything else is "other"
KINDS = [
    ("attention (softmax, dS)", re.compile(r"attention_|softmax_rows")),
    ("elementwise binary", re.compile(r"::binary|BinaryOp")),
    ("elementwise unary (GELU ...)", re.compile(r"unary")),
    ("layer norm", re.compile(r"layernorm|HFromOutput|HFromInput")),
    ("copies", re.compile(r"copy_typed|memcpy|memmove|copy")),
    ("reductions", re.compile(r"reduce|sum_")),
    ("optimizer", re.compile(r"adamw|AdamW|optim")),
]


REST_ORDER = [name for name, _ in KINDS] + ["OpenMP runtime (waits, barriers)", "kernel (page faults, scheduling)", "other"]


def classify(dso, sym):
    if dso.startswith("[JIT]") or "libdnnl" in dso or "libopenblas" in dso or GEMM_SYMBOL.search(sym):
        return "gemm"
    if "libgomp" in dso or "libomp" in dso:
        return "OpenMP runtime (waits, barriers)"
    if dso == "[kernel.kallsyms]":
        return "kernel (page faults, scheduling)"
    for name, rx in KINDS:
        if rx.search(sym):
            return name
    return "other"


def main():
    args = sys.argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    binary = os.environ.get("BENCH_STEP", "build/bench/bench_step")
    with tempfile.TemporaryDirectory() as tmp:
        ctl, ack, data = (os.path.join(tmp, n) for n in ("ctl", "ack", "perf.data"))
        os.mkfifo(ctl)
        os.mkfifo(ack)
        cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-D", "-1",
               "--control", f"fifo:{ctl},{ack}", "-o", data, "--", binary] + args
        env = dict(os.environ, DG_PERF_CTL=f"{ctl},{ack}")
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"perf_share: {' '.join(cmd)} failed ({run.returncode}): {run.stderr.strip()[-400:]}")
        step = json.loads(run.stdout.strip().splitlines()[-1])
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "-g", "none",
                              "--stdio", "-t", "\t", "--percent-limit", "0"], capture_output=True, text=True)
    shares, top = {}, {}
    for line in rep.stdout.splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        pct, dso, sym = (f.strip() for f in line.split("\t", 2))
        sym = sym[4:] if sym[:4] in ("[.] ", "[k] ") else sym
        p = float(pct.rstrip("%")) / 100
        kind = classify(dso, sym)
        shares[kind] = shares.get(kind, 0) + p
        if kind != "gemm":
            short = re.sub(r"\(.*", "", sym.replace("(anonymous namespace)", "{anon}"))[:70]
            top[short] = top.get(short, 0) + p
    out = {"perf_share": 1, "model": step["model"], "method": step["method"], "batch": step["batch"],
           "threads": step["threads"], "cpu_gemm": step.get("cpu_gemm"), "ms_median": step["ms_median"],
           "gemm": round(shares.pop("gemm", 0.0), 4),
           "rest": {k: round(shares.get(k, 0.0), 4) for k in REST_ORDER},
           "top_not_gemm": {k: round(v, 4) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:10]}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Turns the JSON lines of bench/cpu_bench.sh into a markdown table: per config and method,
deltagrad and each PyTorch (ms/step median over rounds with min-max of all steps, img/s,
memory), deltagrad's GFLOP/s and percent of the measured GEMM peak, the share of deltagrad's
step inside its GEMM calls (and the fused attention kernel apart), the share of its CPU time in GEMM
libraries from perf samples of the timed steps (bench/perf_share.py, where perf ran), and the ratios
deltagrad / PyTorch against the faster (time) and the leaner (memory) of the peers.
Memory is the step's own: peak RSS minus the RSS before the model existed (the libraries'
own footprint, ~10 MB for deltagrad and 300+ MB for torch, left out); whole-process peak
RSS in brackets.
  cpu_table.py bench/results/cpu-DATE.jsonl"""
import json
import statistics
import sys
from collections import OrderedDict

rows, meta, gemm, version, perf = OrderedDict(), {}, {}, "", {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if "meta" in r:
        meta = r
    elif "perf_share" in r:
        perf.setdefault((r["model"], r["batch"], r["method"]), []).append(r)
    elif "gemm" in r:
        gemm = r
    elif "version" in r:
        version = r["version"]
    else:
        method = r["method"] + (" +recompute" if r.get("recompute") else "") + (" bf16" if r.get("precision") == "bf16" else "")
        rows.setdefault((r["model"], r["batch"], method), OrderedDict()).setdefault(r["impl"], []).append(r)


def agg(runs):
    return dict(ms=statistics.median(r["ms_median"] for r in runs), lo=min(r["ms_min"] for r in runs),
                hi=max(r["ms_max"] for r in runs), mb=max(r["peak_mb"] for r in runs),
                rss=max(r["rss_peak_mb"] for r in runs), gf=statistics.median(r.get("gflops", 0) for r in runs),
                gemm=statistics.median(r.get("gemm_share", float("nan")) for r in runs),
                attn=statistics.median(r.get("attention_share", float("nan")) for r in runs),
                ips=statistics.median(r["img_per_s"] for r in runs))


dg_peak = gemm.get("dg_peak", gemm.get("eigen_openblas_peak", 0))
peak = max(dg_peak, gemm.get("torch_peak", 0)) or float("nan")
print(f"{meta.get('date', '?')}, commit {meta.get('commit', '?')}, {meta.get('cpu', '?')}, "
      f"{meta.get('threads', '?')} threads on every side, {meta.get('rounds', '?')} rounds x {meta.get('steps', '?')} "
      f"timed steps per impl, alternating. GEMM peak on the ViT shapes: deltagrad "
      f"{dg_peak} GFLOP/s ({gemm.get('dg_peak_lib', '?')}), PyTorch matmul {gemm.get('torch_peak', '?')} GFLOP/s "
      f"(% below is of the larger).\n")
if version:
    print("`deltagrad --version`:\n\n```\n" + version.strip() + "\n```\n")
peers = sorted({i for v in rows.values() for i in v if i != "deltagrad"}, reverse=True)
attn = {p: sorted({r.get("attn", "explicit") for v in rows.values() for r in v.get(p, [])}) for p in peers}
gemm_lib = sorted({r.get("cpu_gemm", "eigen") + (" (bf16: " + r["cpu_bf16_gemm"] + ")" if r.get("precision") == "bf16"
                     else "") for v in rows.values() for r in v.get("deltagrad", [])})
print(f"deltagrad CPU GEMM: {', '.join(gemm_lib)}; PyTorch attention: "
      + ", ".join(f"{p} {'/'.join(a)}" for p, a in attn.items()) + ".\n")
head = ["config", "batch", "method", "deltagrad ms (min-max)"] + [f"{p} ms" for p in peers]
head += ["time ratio", "deltagrad img/s", "GFLOP/s", "% peak", "% in GEMM (+attn)", "% CPU in GEMM (perf)", "deltagrad MB [RSS]"] + [f"{p} MB [RSS]" for p in peers]
head += ["mem ratio"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
for (model, batch, method), impls in rows.items():
    if "deltagrad" not in impls:
        continue
    d = agg(impls["deltagrad"])
    ps = {p: agg(impls[p]) for p in peers if p in impls}
    fast = min((v["ms"] for v in ps.values()), default=float("nan"))
    lean = min((v["mb"] for v in ps.values()), default=float("nan"))
    cells = [model, str(batch), method, f"{d['ms']:.0f} ({d['lo']:.0f}-{d['hi']:.0f})"]
    cells += [f"{ps[p]['ms']:.0f}" if p in ps else "-" for p in peers]
    cells += [f"**{d['ms'] / fast:.2f}**", f"{d['ips']:.1f}", f"{d['gf']:.0f}", f"{100 * d['gf'] / peak:.0f}%",
              f"{100 * d['gemm']:.0f}% (+{100 * d['attn']:.0f}%)",
              "/".join(f"{100 * p['gemm']:.1f}%" for p in perf.get((model, batch, method), [])) or "-",
              f"{d['mb']:.0f} [{d['rss']:.0f}]"]
    cells += [f"{ps[p]['mb']:.0f} [{ps[p]['rss']:.0f}]" if p in ps else "-" for p in peers]
    cells += [f"**{d['mb'] / lean:.2f}**"]
    print("| " + " | ".join(cells) + " |")

if perf:
    print("\nWhere the rest of deltagrad's CPU time went (perf samples of the timed steps, median over runs):\n")
    print("| config | method | GEMM | " + " | ".join(k for k in next(iter(perf.values()))[0]["rest"]) + " |")
    kinds = list(next(iter(perf.values()))[0]["rest"])
    print("|---|---|" + "---:|" * (1 + len(kinds)))
    for (model, batch, method), runs in perf.items():
        med = lambda f: statistics.median(f(r) for r in runs)
        print(f"| {model} b{batch} | {method} | {100 * med(lambda r: r['gemm']):.1f}% | "
              + " | ".join(f"{100 * med(lambda r: r['rest'].get(k, 0)):.1f}%" for k in kinds) + " |")

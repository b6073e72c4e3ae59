#!/usr/bin/python3
"""Golden fixture for the optimizers: torch.optim.AdamW and torch.optim.SGD (PyTorch 1.13,
single-tensor path) for 5 steps on a few small float32 tensors named like ViT parameters,
with fixed random gradients per step (the same gradients for every run).

Param groups follow deltagrad's (timm's) rule: >= 2-D weights decay; biases, norms,
pos_embed, cls_token and 1-D tensors do not. Runs:
  adamw       lr 1e-2, betas (0.9, 0.999), eps 1e-8; decay group wd 0.05, no_decay group wd 0
  adamw_lrs   as adamw with betas (0.8, 0.99), eps 1e-6, wd 0.1, and the no_decay group at lr * 0.5
  sgd         lr 5e-2, momentum 0.9, nesterov False; decay group wd 1e-4, no_decay wd 0
  sgd_nest    as sgd with nesterov True
  clip        torch.nn.utils.clip_grad_norm_(max_norm 1.0) on the step-0 gradients
Stored: "init.<name>", "grad<k>.<name>" (k = 0..4), "<run>.final.<name>",
"adamw.exp_avg.<name>", "adamw.exp_avg_sq.<name>", "clip.norm" (f64 [1]), "clip.grad.<name>".
Writes tests/fixtures/optim_golden.safetensors.  Run: /usr/bin/python3 scripts/make_optim_golden.py"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402

HERE = os.path.dirname(__file__)
STEPS = 5
SHAPES = {
    "pos_embed": (1, 5, 6),
    "blocks.0.norm1.weight": (6,),
    "blocks.0.attn.qkv.weight": (18, 6),
    "blocks.0.attn.qkv.bias": (18,),
    "head.weight": (7, 6),
    "head.bias": (7,),
}
NO_DECAY = {"pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"}

g = torch.Generator().manual_seed(1234)
INIT = {n: torch.randn(s, generator=g, dtype=torch.float32) * 0.5 for n, s in SHAPES.items()}
# Gradients of mixed magnitudes (some tiny, so eps matters) and a few exact zeros.
GRADS = []
for k in range(STEPS):
    step = {}
    for n, s in SHAPES.items():
        t = torch.randn(s, generator=g, dtype=torch.float32)
        scale = torch.exp(torch.empty(s).uniform_(-9.0, 1.0, generator=g)).float()
        t = t * scale
        t[torch.rand(s, generator=g) < 0.1] = 0.0
        step[n] = t
    GRADS.append(step)


def run(make_opt):
    params = {n: t.clone().requires_grad_(True) for n, t in INIT.items()}
    decay = [params[n] for n in SHAPES if n not in NO_DECAY]
    no_decay = [params[n] for n in SHAPES if n in NO_DECAY]
    opt = make_opt(decay, no_decay)
    for k in range(STEPS):
        for n, p in params.items():
            p.grad = GRADS[k][n].clone()
        opt.step()
    return params, opt


out = {}
for n in SHAPES:
    out["init." + n] = INIT[n]
    for k in range(STEPS):
        out[f"grad{k}.{n}"] = GRADS[k][n]

runs = {
    "adamw": lambda d, nd: torch.optim.AdamW(
        [{"params": d, "weight_decay": 0.05}, {"params": nd, "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False),
    "adamw_lrs": lambda d, nd: torch.optim.AdamW(
        [{"params": d, "weight_decay": 0.1}, {"params": nd, "weight_decay": 0.0, "lr": 1e-2 * 0.5}],
        lr=1e-2, betas=(0.8, 0.99), eps=1e-6, foreach=False),
    "sgd": lambda d, nd: torch.optim.SGD(
        [{"params": d, "weight_decay": 1e-4}, {"params": nd, "weight_decay": 0.0}],
        lr=5e-2, momentum=0.9, nesterov=False, foreach=False),
    "sgd_nest": lambda d, nd: torch.optim.SGD(
        [{"params": d, "weight_decay": 1e-4}, {"params": nd, "weight_decay": 0.0}],
        lr=5e-2, momentum=0.9, nesterov=True, foreach=False),
}
for rname, make in runs.items():
    params, opt = run(make)
    for n, p in params.items():
        out[f"{rname}.final.{n}"] = p.detach()
        if rname == "adamw":
            st = opt.state[p]
            out["adamw.exp_avg." + n] = st["exp_avg"]
            out["adamw.exp_avg_sq." + n] = st["exp_avg_sq"]

ps = {n: t.clone().requires_grad_(True) for n, t in INIT.items()}
for n, p in ps.items():
    p.grad = GRADS[0][n].clone() * 40.0  # large enough that max_norm 1.0 clips
norm = torch.nn.utils.clip_grad_norm_(list(ps.values()), max_norm=1.0)
out["clip.norm"] = torch.tensor([float(norm)], dtype=torch.float64)
for n, p in ps.items():
    out["clip.grad." + n] = p.grad

path = os.path.join(HERE, "..", "tests", "fixtures", "optim_golden.safetensors")
safetensors_io.save(path, out, metadata={"torch": torch.__version__, "steps": STEPS})
print("wrote", os.path.normpath(path), len(out), "tensors")

#!/usr/bin/python3
"""Golden fixture for peft/sensitivity.h: per-element sensitivity scores of frozen base weights of
the golden ViT (make_vit_golden.py, weights from tests/fixtures/vit_golden.safetensors), in plain
PyTorch, as the papers' code computes them: SPT (ziplab/SPT engine.py get_sensitivity) sums
param.grad**2 over batches ("fisher"); |g| ("grad", SHiRA-Grad) and |g * w| ("taylor", SNIP) are
summed the same way; "magnitude" is |w|. Two batches: images 0-1 and image 2 (cross entropy, mean
over each batch, eval mode). Then the selection rule: the top round(budget * n) scores, ties to the
earlier element (a stable descending sort), over all scored tensors in name order ("global") or
in each ("tensor"), at budget 0.05, from the fisher scores as stored (float32).
Writes tests/fixtures/sensitivity_golden.safetensors. Needs torch (not a build or test
dependency): .venv-bench/bin/python scripts/make_sensitivity_golden.py"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402

HERE = os.path.dirname(__file__)
W = safetensors_io.load(os.path.join(HERE, "..", "tests", "fixtures", "vit_golden.safetensors"))
X, Y = W["input.images"], W["input.labels"]
NAMES = sorted(["blocks.0.attn.qkv.weight", "blocks.1.attn.proj.weight"])
BATCHES = [(X[0:2], Y[0:2]), (X[2:3], Y[2:3])]
BUDGET = 0.05


def model():
    m = V.ViT()
    m.load_state_dict({k: W[k] for k in m.state_dict()})
    m.eval()
    for n, p in m.named_parameters():
        p.requires_grad_(n in NAMES)
    return m


def scores(criterion):
    m = model()
    params = dict(m.named_parameters())
    acc = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in NAMES}
    if criterion == "magnitude":
        return {n: params[n].detach().abs().double() for n in NAMES}
    for x, y in BATCHES:
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for n in NAMES:
            g, w = params[n].grad.double(), params[n].detach().double()
            acc[n] += {"grad": g.abs(), "taylor": (g * w).abs(), "fisher": g * g}[criterion]
    return acc


def top(s, k):
    mask = torch.zeros(s.numel())
    mask[torch.sort(s.flatten(), descending=True, stable=True).indices[:k]] = 1.0
    return mask


def main():
    out = {}
    for c in ["grad", "taylor", "fisher", "magnitude"]:
        for n, s in scores(c).items():
            out[f"score.{c}.{n}"] = s.float()  # float32 keeps the file small; selection reads these
    fisher = {n: out[f"score.fisher.{n}"] for n in NAMES}
    flat = torch.cat([fisher[n].flatten() for n in NAMES])
    g = top(flat, round(BUDGET * flat.numel())).split([fisher[n].numel() for n in NAMES])
    for n, part in zip(NAMES, g):
        out[f"select.global.{n}"] = part.reshape(fisher[n].shape)
        out[f"select.tensor.{n}"] = top(fisher[n], round(BUDGET * fisher[n].numel())).reshape(fisher[n].shape)
    path = os.path.join(HERE, "..", "tests", "fixtures", "sensitivity_golden.safetensors")
    safetensors_io.save(path, out, {"budget": str(BUDGET), "generator": "scripts/make_sensitivity_golden.py"})
    print("wrote", path, sum(t.numel() for t in out.values()), "values")


if __name__ == "__main__":
    main()

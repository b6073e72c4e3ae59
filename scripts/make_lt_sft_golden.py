#!/usr/bin/python3
"""Golden fixture for train/lt_sft.h and the trainer's L1 term: a plain-PyTorch transcription of
the LT-SFT authors' code (cambridgeltl/composable-sft, src/sft/lt_sft.py
unfreeze_k_most_changed_params and src/sft/trainer.py training_step), on the golden ViT
(make_vit_golden.py, tests/fixtures/vit_golden.safetensors) as theta_0.

theta_1 = theta_0 + a perturbation rounded to multiples of 1/64 (many exact ties, many zeros) on
MASKABLE and the head. Selection: k = int(PROPORTION * maskable params), the threshold is
np.partition of every |theta_1 - theta_0| at n - k, and every element >= it is kept. L1 term:
L1_REG * sum(stack([sum(|p - p0|) for trainable p])) / (all model parameters), backward through
torch.abs (subgradient 0 at 0), once over every trainable tensor (MASKABLE + head) and once with
apply_reg_to_sparse_only (MASKABLE only).
Writes tests/fixtures/lt_sft_golden.safetensors. Needs torch and numpy (not a build or test
dependency): .venv-bench/bin/python scripts/make_lt_sft_golden.py"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402

HERE = os.path.dirname(__file__)
W = safetensors_io.load(os.path.join(HERE, "..", "tests", "fixtures", "vit_golden.safetensors"))
MASKABLE = ["blocks.0.attn.qkv.bias", "blocks.1.attn.proj.weight", "blocks.2.norm1.weight"]
HEAD = ["head.weight", "head.bias"]
PROPORTION = 0.05
L1_REG = 0.1


def model():
    m = V.ViT()
    m.load_state_dict({k: W[k] for k in m.state_dict()})
    return m


def main():
    g = torch.Generator().manual_seed(19)
    theta0 = {n: W[n].clone() for n in MASKABLE + HEAD}
    theta1 = {n: t + torch.round(torch.randn(t.shape, generator=g) * 4) / 64 for n, t in theta0.items()}
    out = {f"theta1.{n}": t for n, t in theta1.items()}

    # selection, as unfreeze_k_most_changed_params (first iteration: nothing masked yet)
    diffs = []
    for n in MASKABLE:
        diffs.extend(torch.abs((theta1[n] - theta0[n]).view(-1)).tolist())
    k = int(PROPORTION * len(diffs))
    thresh = np.partition(diffs, len(diffs) - k)[len(diffs) - k]
    kept = 0
    for n in MASKABLE:
        mask = (theta1[n] - theta0[n]).abs() >= thresh
        out[f"mask.{n}"] = mask.float()
        kept += int(mask.sum())
    out["threshold"] = torch.tensor([thresh], dtype=torch.float64)

    # the L1 term, as training_step (gradient_accumulation_steps 1)
    m = model()
    num_params = sum(p.numel() for p in m.parameters())
    params = dict(m.named_parameters())
    with torch.no_grad():
        for n, t in theta1.items():
            params[n].copy_(t)
    for n, p in params.items():
        p.requires_grad_(n in theta1)
    for scope, names in [("all", MASKABLE + HEAD), ("sparse_only", MASKABLE)]:
        m.zero_grad()
        l1_dists = [torch.sum(torch.abs(params[n] - theta0[n])) for n in names]
        reg_loss = L1_REG * torch.sum(torch.stack(l1_dists)) / num_params
        reg_loss.backward()
        out[f"l1.{scope}.loss"] = reg_loss.detach().double().reshape(1)
        for n in MASKABLE + HEAD:
            gr = params[n].grad
            out[f"l1.{scope}.grad.{n}"] = torch.zeros_like(params[n]) if gr is None else gr.clone()
    path = os.path.join(HERE, "..", "tests", "fixtures", "lt_sft_golden.safetensors")
    safetensors_io.save(path, out, {"proportion": str(PROPORTION), "k": str(k), "kept": str(kept),
                                    "l1_reg": str(L1_REG), "num_params": str(num_params),
                                    "generator": "scripts/make_lt_sft_golden.py"})
    print("wrote", path, "k", k, "kept", kept, "threshold", thresh, "num_params", num_params)


if __name__ == "__main__":
    main()

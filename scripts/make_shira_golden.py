#!/usr/bin/python3
"""Golden fixture for SHiRA (peft/shira.h) on the ViT of make_vit_golden.py: real Hugging Face peft
(tuners/shira, ShiraConfig) with a mask function of SHiRA's weight-magnitude strategy (SHiRA-WM):
the r * (in + out) largest |w| of each target Linear, ties to the earlier element (a stable
descending sort), as deltagrad's mask_type "magnitude" chooses them. Non-zero SHiRA values
(randn * 0.1); the case records them under deltagrad's names "<site>.shira.shira_weight", the
logits, the loss and every value's gradient. Writes tests/fixtures/shira_golden.safetensors.
Needs torch and peft (not a build or test dependency): .venv-bench/bin/python scripts/make_shira_golden.py"""
import os
import sys

import peft
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_peft_methods_golden as M  # noqa: E402

HERE = os.path.dirname(__file__)
R = 2


def magnitude_mask(base_layer, r, **kwargs):
    w = base_layer.weight.detach()
    k = r * (w.shape[0] + w.shape[1])
    mask = torch.zeros(w.numel(), dtype=w.dtype)
    mask[torch.sort(w.abs().flatten(), descending=True, stable=True).indices[:k]] = 1.0
    return mask.reshape(w.shape)


def main():
    g = torch.Generator().manual_seed(19)
    m, P, T = M.frozen_vit(), {}, {}
    cfg = peft.ShiraConfig(r=R, target_modules=["attn.qkv", "mlp.fc1"], init_weights=False)
    cfg.mask_fn = magnitude_mask
    pm = peft.get_peft_model(m, cfg).eval()
    for name, p in pm.named_parameters():
        if ".shira_weight." not in name:
            continue
        site = name.split("base_model.model.")[1].split(".shira_weight")[0]
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        p.requires_grad_(True)
        P[f"{site}.shira.shira_weight"] = p
    assert P, "no SHiRA tensors"
    logits = pm(M.X)
    loss = F.cross_entropy(logits, M.Y)
    loss.backward()
    case = "shira_magnitude"
    T[f"{case}.logits"], T[f"{case}.loss"] = logits.detach(), loss.detach().reshape(())
    for n, p in P.items():
        T[f"{case}.{n}"] = p.detach()
        T[f"{case}.grad.{n}"] = p.grad
    path = os.path.join(HERE, "..", "tests", "fixtures", "shira_golden.safetensors")
    safetensors_io.save(path, T, {"generator": "scripts/make_shira_golden.py", "peft": peft.__version__})
    print(f"{case}: {len(P)} delta tensors, loss {loss.item():.6f}; wrote {path}")


if __name__ == "__main__":
    main()

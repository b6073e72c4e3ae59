#!/usr/bin/python3
"""Adapter folders made by REAL Hugging Face peft for `import-peft`'s test: on the golden ViT
of make_vit_golden.py (weights from tests/fixtures/vit_golden.safetensors), one adapter per
method peft has (LoRA, DoRA, IA3, VeRA, LoHa, LoKr), every adapter tensor given a non-zero
value, some with modules_to_save (the head, the final LayerNorm, also changed), saved with
peft's save_pretrained into tests/fixtures/peft_import/<case>/, and peft's logits on the
fixture's input into tests/fixtures/peft_import/logits.safetensors ("<case>.logits").
tests/test_hf_import.cpp imports each folder and matches the logits. Needs torch and peft (not
a build or test dependency): e.g. .venv-bench/bin/python scripts/make_peft_import_fixtures.py"""
import json
import os
import re
import shutil
import sys

import peft
import torch

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "..", "tests", "fixtures", "peft_import")
W = safetensors_io.load(os.path.join(HERE, "..", "tests", "fixtures", "vit_golden.safetensors"))
X = W["input.images"]
ADAPTER = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|ia3_l|vera_lambda_b|vera_lambda_d|hada_w[12]_[ab]|"
                     r"lokr_w[12](?:_[ab])?)(\.default)?(\.weight)?$")


def frozen_vit():
    m = V.ViT()
    m.load_state_dict({k: W[k] for k in m.state_dict()})
    return m.eval()


def make(case, cfg, init, seed):
    g = torch.Generator().manual_seed(seed)
    pm = peft.get_peft_model(frozen_vit(), cfg).eval()
    n = 0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ADAPTER.search(name):
                p.copy_(init(ADAPTER.search(name).group(1), p, g))
                n += 1
            elif ".modules_to_save." in name:  # a trained head or LayerNorm
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
                n += 1
        logits = pm(X)
        moved = ((logits - frozen_vit()(X)).norm() / logits.norm()).item()
    d = os.path.join(OUT, case)
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d)
    for extra in os.listdir(d):  # keep the two files import-peft reads (peft adds a README)
        if extra not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(d, extra))
    keys = sorted(json.load(open(os.path.join(d, "adapter_config.json"))))
    print(f"{case}: {n} tensors set, logits moved by {moved:.2e} relative; config keys {len(keys)}")
    return logits


def normal(std, around=0.0):
    return lambda kind, p, g: torch.randn(p.shape, generator=g) * std + around


def dora_init(kind, p, g):
    if kind == "lora_magnitude_vector":  # around the row norms: each row's length moves a little
        return p * (1 + 0.2 * torch.randn(p.shape, generator=g))
    return torch.randn(p.shape, generator=g) * 0.1


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    qf1, qf2 = ["attn.qkv", "mlp.fc1"], ["attn.qkv", "mlp.fc2"]
    T = {
        "lora": make("lora", peft.LoraConfig(r=4, lora_alpha=8, target_modules=qf2, modules_to_save=["head"]),
                     normal(0.1), 21),
        "dora": make("dora", peft.LoraConfig(r=4, lora_alpha=8, target_modules=qf1, use_dora=True,
                                             modules_to_save=["norm"]), dora_init, 22),
        "ia3": make("ia3", peft.IA3Config(target_modules=qf2, feedforward_modules=["mlp.fc2"], modules_to_save=["head"]),
                    normal(0.3, 1.0), 23),
        "vera": make("vera", peft.VeraConfig(r=4, target_modules=qf1, save_projection=True, projection_prng_key=5),
                     normal(0.5), 24),
        "loha": make("loha", peft.LoHaConfig(r=4, alpha=8, target_modules=qf1), normal(0.2), 25),
        "lokr": make("lokr", peft.LoKrConfig(r=2, alpha=4, target_modules=qf2, decompose_both=True,
                                             decompose_factor=4), normal(0.2), 26),
    }
    out = os.path.join(OUT, "logits.safetensors")
    safetensors_io.save(out, {f"{c}.logits": t for c, t in T.items()},
                        {"generator": "scripts/make_peft_import_fixtures.py", "torch": torch.__version__,
                         "peft": peft.__version__})
    print(f"wrote {len(T)} adapters and {os.path.normpath(out)}")

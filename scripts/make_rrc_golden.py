#!/usr/bin/env python3
"""Golden fixture for the RandomResizedCrop box sampler (data/transforms.h random_resized_crop_box):
torchvision's own RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)), run with its
random draws replaced by fixed ones, so deltagrad's sampler can be fed the same draws.
deltagrad's sampler reads draw u[3k] for try k's area, u[3k+1] for its log-ratio, u[3k+2] for the
top and u[3k+32] for the left; here torch.empty(1).uniform_(a, b) returns a + (b - a) * u in
float32 (as torch's CPU uniform_ computes on a float32 tensor) and torch.randint(0, n) returns
floor(u * n), taking the same u's in the same order. Everything else is torchvision's code: the
float32 log of the ratio range, the rounding of the sides, the 10 tries, the centre fallback.
Writes tests/fixtures/rrc_golden.json: [{h, w, u: [60 draws], box: [top, left, height, width]}].
Run: .venv-bench/bin/python scripts/make_rrc_golden.py   (needs torch, torchvision)"""
import json
import math
import os
import random

import torch
import torchvision
from torchvision.transforms import RandomResizedCrop

rng = random.Random(20)
cases = []
sizes = [(224, 224), (50, 80), (480, 640), (640, 480), (12, 12), (31, 200), (300, 37), (1, 1), (7, 1000)]
for n in range(200):
    h, w = sizes[n % len(sizes)] if n < 2 * len(sizes) else (rng.randint(1, 700), rng.randint(1, 700))
    # every fifth case draws areas near the top of the range at extreme ratios: tries fail, the fallback runs
    u = [round(rng.random(), 6) for _ in range(60)]
    if n % 5 == 4:
        for k in range(10):
            u[3 * k] = round(0.97 + 0.03 * rng.random(), 6)
            u[3 * k + 1] = rng.choice([0.0, 0.9999])
    state = {"uniform": 0, "randint": 0, "try": 0}
    draws = []

    class Fixed:  # stands for torch.empty(1): uniform_ takes the next fixed draw
        def uniform_(self, a, b):
            k = state["uniform"]
            state["uniform"] += 1
            index = 3 * (k // 2) + (k % 2)
            a = torch.tensor(float(a), dtype=torch.float32)
            b = torch.tensor(float(b), dtype=torch.float32)
            return a + (b - a) * torch.tensor(u[index], dtype=torch.float32)

    real_empty, real_randint = torch.empty, torch.randint

    def fake_empty(*args, **kwargs):
        return Fixed()

    def fake_randint(low, high, size):
        k = state["randint"]
        state["randint"] += 1
        tr = (state["uniform"] // 2) - 1  # the try this randint belongs to
        index = 3 * tr + 2 + (30 if k % 2 else 0)
        return torch.tensor([low + math.floor(u[index] * (high - low))])

    torch.empty, torch.randint = fake_empty, fake_randint
    try:
        box = RandomResizedCrop.get_params(real_empty(3, h, w), [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0])
    finally:
        torch.empty, torch.randint = real_empty, real_randint
    cases.append({"h": h, "w": w, "u": u, "box": [int(x) for x in box]})

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "rrc_golden.json")
with open(out, "w") as f:
    json.dump({"torchvision": torchvision.__version__, "cases": cases}, f)
print(f"wrote {len(cases)} cases to {out} (torchvision {torchvision.__version__})")

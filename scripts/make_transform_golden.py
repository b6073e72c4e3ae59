#!/usr/bin/env python3
"""Golden fixture for timm's eval geometry: small synthetic RGB images put through timm's own
eval transform (timm.data.create_transform, is_training=False: PIL Resize of the short side to
floor(size / crop_pct), CenterCrop, ToTensor; Normalize with mean 0, std 1 so values stay in
[0, 1]). Writes tests/fixtures/transform_golden.safetensors: src.K (the image, H x W x 3 as floats
0..255), out.K (timm's 3 x size x size result) and, in the metadata, each case's size, crop_pct
and interpolation. PIL rounds to 8 bits after each resampling pass; deltagrad does not, so the
test allows 1.5/255.
Run: .venv-bench/bin/python scripts/make_transform_golden.py   (needs torch, timm, Pillow)"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402

# (height, width, size, crop_pct, interpolation): shrinking wide and tall, timm's ViT setting,
# a mild enlargement, and a crop_pct of 1
CASES = [(37, 53, 16, 0.9, "bicubic"), (61, 29, 16, 0.875, "bilinear"), (12, 15, 16, 0.9, "bicubic"),
         (40, 40, 24, 1.0, "bilinear"), (90, 70, 32, 0.9, "bicubic")]

rng = np.random.default_rng(0)
tensors, meta = {}, []
for k, (h, w, size, crop_pct, interp) in enumerate(CASES):
    # a texture with edges and smooth parts: blocks plus a gradient plus noise
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), ((yy // 5 + xx // 7) % 2) * 200 + 20,
                    rng.integers(0, 256, size=(h, w))], axis=-1).astype(np.uint8)
    t = create_transform(input_size=(3, size, size), crop_pct=crop_pct, interpolation=interp,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_training=False)
    out = t(Image.fromarray(img, "RGB"))
    assert tuple(out.shape) == (3, size, size), out.shape
    tensors[f"src.{k}"] = torch.from_numpy(img.astype(np.float32))
    tensors[f"out.{k}"] = out.float()
    meta.append({"size": size, "crop_pct": crop_pct, "interpolation": interp})
    print(k, t)

path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "transform_golden.safetensors")
import timm  # noqa: E402
safetensors_io.save(path, tensors, {"cases": json.dumps(meta), "timm": timm.__version__,
                                    "pillow": Image.__version__})
print("wrote", path)

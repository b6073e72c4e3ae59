#!/usr/bin/env python3
"""The PyTorch peer for bench_step: the same ViT (timm's layout, written out in plain
PyTorch so both sides run the same model), the same PEFT method, a training step of
forward + backward + AdamW in eager mode (`inference`: a no-grad forward in eval mode). Prints
one JSON line, like bench_step, with the same memory fields on the CPU (/proc/self/status:
rss_base_mb after `import torch`, before the model; rss_peak_mb the high-water mark after the
timed steps; peak_mb their difference).
  torch_peer.py --model vit_small_patch16_224 --method lora --batch 64 --device cuda [--steps 10]
                [--warmup 3] [--threads N] [--tf32] [--recompute]
Methods: inference, full, linear_probe, lora (r=8 on qkv), lora_all (r=8 on every block Linear),
adapter_plus, vpt_deep (10 prompts). --recompute wraps each MLP's fc1 + GELU in
torch.utils.checkpoint (the counterpart of deltagrad's --recompute / --recompute-mlp).
Attention is F.scaled_dot_product_attention where the installed torch has it (2.0 and later), as
timm's Attention does by default (`fused_attn`), and the explicit softmax(q k^T) v otherwise
(torch 1.13); --attn explicit forces the latter. The JSON line says which ran."""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

PRESETS = {"vit_tiny_patch16_224": (192, 3), "vit_small_patch16_224": (384, 6), "vit_base_patch16_224": (768, 12),
           "vit_mnist_28": (64, 4)}


class Adapter(nn.Module):  # Adapter+: post-block, channel scale, no norm
    def __init__(s, d, r=8):
        super().__init__()
        s.down, s.up, s.scale = nn.Linear(d, r), nn.Linear(r, d), nn.Parameter(torch.ones(d))

    def forward(s, x):
        return x + s.up(F.gelu(s.down(x))) * s.scale


class LoraLinear(nn.Linear):  # y = x W^T + b + (x A^T) B^T, alpha = r
    def __init__(s, i, o, lora):
        super().__init__(i, o)
        s.lora = lora
        if lora:
            s.lora_A = nn.Parameter(torch.randn(8, i) / math.sqrt(i))
            s.lora_B = nn.Parameter(torch.zeros(o, 8))

    def forward(s, x):
        y = super().forward(x)
        return y + (x @ s.lora_A.t()) @ s.lora_B.t() if s.lora else y


class Block(nn.Module):
    def __init__(s, d, h, method, recompute=False, sdpa=False):
        super().__init__()
        s.h, s.method, s.recompute, s.sdpa = h, method, recompute, sdpa
        qkv, rest = method in ("lora", "lora_all"), method == "lora_all"
        s.norm1, s.qkv, s.proj = nn.LayerNorm(d, eps=1e-6), LoraLinear(d, 3 * d, qkv), LoraLinear(d, d, rest)
        s.norm2, s.fc1, s.fc2 = nn.LayerNorm(d, eps=1e-6), LoraLinear(d, 4 * d, rest), LoraLinear(4 * d, d, rest)
        if method == "adapter_plus":
            s.adapter = Adapter(d)

    def forward(s, x):
        B, N, C = x.shape
        h = s.norm1(x)
        qkv = s.qkv(h)
        q, k, v = qkv.reshape(B, N, 3, s.h, C // s.h).permute(2, 0, 3, 1, 4).unbind(0)
        if s.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q * (C // s.h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x + s.proj(o.transpose(1, 2).reshape(B, N, C))
        h = s.norm2(x)
        if s.recompute and torch.is_grad_enabled():
            h = torch.utils.checkpoint.checkpoint(lambda t: F.gelu(s.fc1(t)), h, use_reentrant=False)
        else:
            h = F.gelu(s.fc1(h))
        x = x + s.fc2(h)
        return s.adapter(x) if s.method == "adapter_plus" else x


class ViT(nn.Module):
    def __init__(s, d, h, method, depth=12, img=224, patch=16, chans=3, classes=100, prompts=10, recompute=False,
                 sdpa=False):
        super().__init__()
        s.method, s.p = method, prompts
        s.patch_embed = nn.Conv2d(chans, d, patch, patch)
        s.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        s.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, d) * 0.02)
        s.blocks = nn.ModuleList([Block(d, h, method, recompute, sdpa) for _ in range(depth)])
        s.norm, s.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, classes)
        if method == "vpt_deep":
            s.prompts = nn.Parameter(torch.rand(depth, prompts, d) * 0.1)

    def forward(s, x):
        x = s.patch_embed(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        x = torch.cat([s.cls_token.expand(B, -1, -1), x], 1) + s.pos_embed
        for i, b in enumerate(s.blocks):
            if s.method == "vpt_deep":
                p = s.prompts[i].expand(B, -1, -1)
                x = torch.cat([x[:, :1], p, x[:, 1 + (s.p if i else 0):]], 1)
            x = b(x)
        return s.head(s.norm(x)[:, 0])


def proc_status_mb(key):  # VmRSS / VmHWM in MiB; -1 without /proc
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--attn", choices=["auto", "explicit"], default="auto")
    # bf16: torch.autocast (bf16 matmuls and activations, f32 weights and optimizer), deltagrad's --precision bf16
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    if a.threads:
        torch.set_num_threads(a.threads)
    rss_base = proc_status_mb("VmRSS:")
    d, h = PRESETS[a.model]
    kw = dict(img=28, patch=4, chans=1, depth=4) if a.model == "vit_mnist_28" else {}
    sdpa = a.attn == "auto" and hasattr(F, "scaled_dot_product_attention")
    m = ViT(d, h, a.method, recompute=a.recompute, sdpa=sdpa, **kw).to(a.device)
    infer = a.method == "inference"
    for n, p in m.named_parameters():
        trainable = a.method == "full" or (n.startswith("head") and not infer) or any(
            k in n for k in ("lora_", "adapter", "prompts"))
        p.requires_grad_(trainable)
    m.train(not infer)
    trainable = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05) if trainable else None
    x = torch.randn(a.batch, kw.get("chans", 3), kw.get("img", 224), kw.get("img", 224), device=a.device)
    y = torch.arange(a.batch, device=a.device) % 100

    amp = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    def step():
        if infer:
            with torch.no_grad(), amp:
                m(x)
        else:
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        if a.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    med = ms[len(ms) // 2]
    rss_peak = proc_status_mb("VmHWM:")
    print(json.dumps({"impl": "pytorch " + torch.__version__, "model": a.model, "method": a.method, "batch": a.batch,
                      "threads": torch.get_num_threads(), "tf32": a.tf32, "precision": a.precision,
                      "recompute": a.recompute,
                      "attn": "sdpa" if sdpa else "explicit", "ms_median": med, "ms_min": ms[0], "ms_max": ms[-1],
                      "img_per_s": 1000 * a.batch / med,
                      "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else rss_peak - rss_base,
                      "rss_base_mb": rss_base, "rss_peak_mb": rss_peak}))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Golden fixture for ViT parity: a plain-PyTorch ViT in timm's exact layout (names,
fused qkv [q|k|v] head-major, pre-norm blocks, cls token first, learned pos_embed, final
norm, token pooling). Writes tests/fixtures/vit_golden.safetensors with the weights
(timm names), inputs, labels, logits, loss, every parameter gradient ("grad.<name>") and
the losses of 5 AdamW steps (timm's no-decay groups). Run: /usr/bin/python3 scripts/make_vit_golden.py"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402

DIM, HEADS, DEPTH, IMG, PATCH, CLASSES, CHANS, BATCH = 48, 4, 3, 32, 8, 7, 3, 3


class Attention(nn.Module):
    def __init__(s, dim, heads):
        super().__init__()
        s.h, s.hd = heads, dim // heads
        s.qkv, s.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(s, x):
        B, N, C = x.shape
        q, k, v = s.qkv(x).reshape(B, N, 3, s.h, s.hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q * s.hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return s.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(s, dim, hidden):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(s, x):
        return s.fc2(F.gelu(s.fc1(x)))


class Block(nn.Module):
    def __init__(s, dim, heads):
        super().__init__()
        s.norm1, s.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        s.norm2, s.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(s, x):
        x = x + s.attn(s.norm1(x))
        return x + s.mlp(s.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(s):
        super().__init__()
        s.proj = nn.Conv2d(CHANS, DIM, PATCH, PATCH)

    def forward(s, x):
        return s.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(s):
        super().__init__()
        s.patch_embed = PatchEmbed()
        s.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        s.pos_embed = nn.Parameter(torch.randn(1, 1 + (IMG // PATCH) ** 2, DIM) * 0.02)
        s.blocks = nn.Sequential(*[Block(DIM, HEADS) for _ in range(DEPTH)])
        s.norm = nn.LayerNorm(DIM, eps=1e-6)
        s.head = nn.Linear(DIM, CLASSES)

    def forward(s, x):
        x = s.patch_embed(x)
        x = torch.cat([s.cls_token.expand(x.shape[0], -1, -1), x], 1) + s.pos_embed
        return s.head(s.norm(s.blocks(x))[:, 0])


def main():
    torch.manual_seed(0)
    m = ViT()
    with torch.no_grad():  # non-trivial norms and biases so every path is exercised
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.05)
            elif "norm" in n:
                p.copy_(1 + torch.randn_like(p) * 0.1)
    T = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(BATCH, CHANS, IMG, IMG)
    y = torch.tensor([3, 0, 6])
    logits = m(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    T.update({"input.images": x, "input.labels": y, "logits": logits.detach(), "loss": loss.detach().reshape(())})
    T.update({f"grad.{n}": p.grad.clone() for n, p in m.named_parameters()})
    no_decay = [p for n, p in m.named_parameters() if p.ndim <= 1 or n in ("pos_embed", "cls_token")]
    decay = [p for n, p in m.named_parameters() if not (p.ndim <= 1 or n in ("pos_embed", "cls_token"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        l = F.cross_entropy(m(x), y)
        l.backward()
        opt.step()
        losses.append(l.item())
    T["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "vit_golden.safetensors")
    cfg = dict(img_size=IMG, patch_size=PATCH, in_chans=CHANS, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
               num_classes=CLASSES)
    safetensors_io.save(out, T, {"generator": "scripts/make_vit_golden.py", "torch": torch.__version__,
                                 "config": str(cfg).replace("'", '"')})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}; loss {loss.item():.6f}; adamw {losses}")


if __name__ == "__main__":
    main()

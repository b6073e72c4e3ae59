#!/usr/bin/python3
"""Golden fixtures for ViT parity: a plain-PyTorch ViT in timm's exact layout (names,
fused qkv [q|k|v] head-major, pre-norm blocks, cls token first, learned pos_embed, final
norm, token pooling). Writes tests/fixtures/vit_golden.safetensors with the weights
(timm names), inputs, labels, logits, loss, every parameter gradient ("grad.<name>") and
the losses of 5 AdamW steps (timm's no-decay groups), and tests/fixtures/vit_avg_golden.safetensors
for timm's other branches: global_pool='avg' (no class token, norm -> Identity, fc_norm after
pooling), LayerScale (ls1/ls2.gamma), qkv_bias=False, mlp_ratio 2.5, 2 input channels.
Run: /usr/bin/python3 scripts/make_vit_golden.py"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402

DIM, HEADS, DEPTH, IMG, PATCH, CLASSES, CHANS, BATCH = 48, 4, 3, 32, 8, 7, 3, 3


class Attention(nn.Module):
    def __init__(s, dim, heads, qkv_bias=True):
        super().__init__()
        s.h, s.hd = heads, dim // heads
        s.qkv, s.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)

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


class LayerScale(nn.Module):
    def __init__(s, dim, init_values):
        super().__init__()
        s.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(s, x):
        return x * s.gamma


class Block(nn.Module):
    def __init__(s, dim, heads, mlp_ratio=4.0, qkv_bias=True, init_values=None):
        super().__init__()
        s.norm1, s.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads, qkv_bias)
        s.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        s.norm2, s.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))
        s.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(s, x):
        x = x + s.ls1(s.attn(s.norm1(x)))
        return x + s.ls2(s.mlp(s.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(s, chans=CHANS, dim=DIM, patch=PATCH):
        super().__init__()
        s.proj = nn.Conv2d(chans, dim, patch, patch)

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


# timm's VisionTransformer(class_token=False, global_pool='avg', init_values=.1, qkv_bias=False):
# use_fc_norm is on for 'avg', so `norm` is Identity and `fc_norm` normalises the pooled tokens.
AVG = dict(img_size=24, patch_size=6, in_chans=2, embed_dim=40, depth=2, num_heads=5, mlp_ratio=2.5,
           qkv_bias=False, num_classes=5, global_pool="avg", class_token=False, init_values=0.1,
           mean=[0.5, 0.5], std=[0.5, 0.5])


class ViTAvg(nn.Module):
    def __init__(s, c):
        super().__init__()
        d = c["embed_dim"]
        s.patch_embed = PatchEmbed(c["in_chans"], d, c["patch_size"])
        s.pos_embed = nn.Parameter(torch.randn(1, (c["img_size"] // c["patch_size"]) ** 2, d) * 0.02)
        s.blocks = nn.Sequential(*[Block(d, c["num_heads"], c["mlp_ratio"], c["qkv_bias"], c["init_values"])
                                   for _ in range(c["depth"])])
        s.fc_norm = nn.LayerNorm(d, eps=1e-6)
        s.head = nn.Linear(d, c["num_classes"])

    def forward(s, x):
        x = s.patch_embed(x) + s.pos_embed
        return s.head(s.fc_norm(s.blocks(x).mean(1)))


def avg_fixture():
    torch.manual_seed(1)
    m = ViTAvg(AVG)
    with torch.no_grad():  # random gammas, norms and biases: no path is trivially the identity
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.05)
            elif "norm" in n:
                p.copy_(1 + torch.randn_like(p) * 0.1)
            elif n.endswith("gamma"):
                p.copy_(0.1 + torch.randn_like(p) * 0.05)
    T = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(4, AVG["in_chans"], AVG["img_size"], AVG["img_size"])
    y = torch.tensor([4, 1, 1, 0])
    logits = m(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    T.update({"input.images": x, "input.labels": y, "logits": logits.detach(), "loss": loss.detach().reshape(())})
    T.update({f"grad.{n}": p.grad.clone() for n, p in m.named_parameters()})
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "vit_avg_golden.safetensors")
    safetensors_io.save(out, T, {"generator": "scripts/make_vit_golden.py", "torch": torch.__version__,
                                 "config": json.dumps(AVG)})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}; loss {loss.item():.6f}")


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
    avg_fixture()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Golden fixture for the PEFT methods: the ViT of make_vit_golden.py (weights read from
tests/fixtures/vit_golden.safetensors) with deltas written out by hand in PyTorch, with
non-zero delta values, frozen base. For each case: the delta tensors (deltagrad's names
"<site>.<delta>.<tensor>"), logits, loss and the gradient of every delta tensor.
Writes tests/fixtures/peft_golden.safetensors.  Run: /usr/bin/python3 scripts/make_peft_golden.py"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
from make_vit_golden import DIM, DEPTH, HEADS, PATCH  # noqa: E402

HERE = os.path.dirname(__file__)
W = safetensors_io.load(os.path.join(HERE, "..", "tests", "fixtures", "vit_golden.safetensors"))
X, Y = W["input.images"], W["input.labels"]
HD = DIM // HEADS


def lin(x, name):
    return F.linear(x, W[name + ".weight"], W.get(name + ".bias"))


def adapter(u, P, pre, norm=False):
    if norm:
        u = F.layer_norm(u, (DIM,), P[pre + "norm.weight"], P[pre + "norm.bias"], 1e-6)
    h = F.gelu(F.linear(u, P[pre + "down.weight"], P[pre + "down.bias"]))
    h = F.linear(h, P[pre + "up.weight"], P[pre + "up.bias"])
    return h * P[pre + "scale"] if pre + "scale" in P else h


def forward(P, case):
    B = X.shape[0]
    x = F.conv2d(X, W["patch_embed.proj.weight"], W["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([W["cls_token"].expand(B, -1, -1), x], 1) + W["pos_embed"]
    if case.startswith("vpt"):
        x = torch.cat([x[:, :1], P["pos_drop.vpt.prompt"].expand(B, -1, -1), x[:, 1:]], 1)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        if case == "vpt_deep" and i >= 1:
            p = P[b + "vpt.prompt"]
            x = torch.cat([x[:, :1], p.expand(B, -1, -1), x[:, 1 + p.shape[0]:]], 1)
        h = F.layer_norm(x, (DIM,), W[b + "norm1.weight"], W[b + "norm1.bias"], 1e-6)
        qkv = lin(h, b + "attn.qkv")
        if case == "lora_joint":
            A, Bm = P[b + "attn.qkv.lora.lora_A"], P[b + "attn.qkv.lora.lora_B"]
            qkv = qkv + (h @ A.t() @ Bm.t()) * (16 / 4)
        if case == "lora_separate":
            parts = []
            for j, part in enumerate("qkv"):
                k = b + f"attn.qkv.qv.{part}."
                parts.append(h @ P[k + "lora_A"].t() @ P[k + "lora_B"].t() if k + "lora_A" in P else torch.zeros_like(qkv[..., :DIM]))
            qkv = qkv + torch.cat(parts, -1) * (8 / 2)
        N = h.shape[1]
        q, k, v = qkv.reshape(B, N, 3, HEADS, HD).permute(2, 0, 3, 1, 4).unbind(0)
        a = ((q * HD ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        a = lin((a @ v).transpose(1, 2).reshape(B, N, DIM), b + "attn.proj")
        if case == "houlsby":
            a = a + adapter(a, P, b + "attn_branch.houlsby.")
        y = x + a
        m = lin(F.gelu(lin(F.layer_norm(y, (DIM,), W[b + "norm2.weight"], W[b + "norm2.bias"], 1e-6),
                           b + "mlp.fc1")), b + "mlp.fc2")
        if case == "masked":
            pass  # the masked tensor is the base fc1 weight itself (see below)
        if case == "houlsby":
            m = m + adapter(m, P, b + "mlp_branch.houlsby.")
        if case == "two_scaled":
            m = m + adapter(y, P, b + "mlp_branch.par.")  # parallel: reads y
        x = y + m
        if case in ("adapter_plus", "two_scaled"):
            name = "aplus" if case == "adapter_plus" else "post"
            x = x + adapter(x, P, b + f"{name}.", norm=False)
    x = F.layer_norm(x, (DIM,), W["norm.weight"], W["norm.bias"], 1e-6)
    return lin(x[:, 0], "head")


def make(case, shapes, seed):
    g = torch.Generator().manual_seed(seed)
    P = {}
    for name, shape in shapes.items():
        t = torch.randn(*shape, generator=g) * (0.3 if name.endswith("scale") else 0.1)
        if name.endswith("scale"):
            t = t + 1.0
        P[name] = t.requires_grad_()
    return P


def run(case, shapes, seed, T, extra=None):
    P = make(case, shapes, seed)
    if case == "masked":
        fc1 = W["blocks.0.mlp.fc1.weight"].clone().requires_grad_()
        W["blocks.0.mlp.fc1.weight"], orig = fc1, W["blocks.0.mlp.fc1.weight"]
    logits = forward(P, case)
    loss = F.cross_entropy(logits, Y)
    loss.backward()
    T[f"{case}.logits"], T[f"{case}.loss"] = logits.detach(), loss.detach().reshape(())
    for n, p in P.items():
        T[f"{case}.{n}"], T[f"{case}.grad.{n}"] = p.detach(), p.grad
    if case == "masked":
        mask = (torch.rand(fc1.shape, generator=torch.Generator().manual_seed(5)) < 0.1).float()
        T["masked.mask.blocks.0.mlp.fc1.weight"] = mask
        T["masked.grad.blocks.0.mlp.fc1.weight"] = fc1.grad * mask
        W["blocks.0.mlp.fc1.weight"] = orig


def adapter_shapes(pre, d=4, scale=None, norm=False):
    s = {pre + "down.weight": (d, DIM), pre + "down.bias": (d,), pre + "up.weight": (DIM, d), pre + "up.bias": (DIM,)}
    if norm:
        s.update({pre + "norm.weight": (DIM,), pre + "norm.bias": (DIM,)})
    if scale:
        s[pre + "scale"] = scale
    return s


T = {}
blocks = [f"blocks.{i}." for i in range(DEPTH)]
run("lora_joint", {k: v for b in blocks for k, v in
                   {b + "attn.qkv.lora.lora_A": (4, DIM), b + "attn.qkv.lora.lora_B": (3 * DIM, 4)}.items()}, 1, T)
run("lora_separate", {k: v for b in blocks for p in "qv" for k, v in
                      {b + f"attn.qkv.qv.{p}.lora_A": (2, DIM), b + f"attn.qkv.qv.{p}.lora_B": (DIM, 2)}.items()}, 2, T)
run("houlsby", {k: v for b in blocks for br in ("attn_branch", "mlp_branch")
                for k, v in adapter_shapes(b + br + ".houlsby.").items()}, 3, T)
run("adapter_plus", {k: v for b in blocks for k, v in adapter_shapes(b + "aplus.", scale=(DIM,)).items()}, 4, T)
run("vpt_shallow", {"pos_drop.vpt.prompt": (5, DIM)}, 5, T)
run("vpt_deep", {"pos_drop.vpt.prompt": (5, DIM), **{f"blocks.{i}.vpt.prompt": (5, DIM) for i in range(1, DEPTH)}}, 6, T)
run("two_scaled", {k: v for b in blocks for k, v in
                   {**adapter_shapes(b + "post.", scale=(1,)), **adapter_shapes(b + "mlp_branch.par.", scale=(DIM,))}.items()},
    7, T)
run("masked", {}, 8, T)
out = os.path.join(HERE, "..", "tests", "fixtures", "peft_golden.safetensors")
safetensors_io.save(out, T, {"generator": "scripts/make_peft_golden.py", "torch": torch.__version__})
print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

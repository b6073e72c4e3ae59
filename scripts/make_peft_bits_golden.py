#!/usr/bin/python3
"""Golden fixture for 1-bit deltas (`bits: 1`) on the ViT of make_vit_golden.py, in the manner of
make_peft_methods_golden.py (frozen base, non-zero latent delta values under deltagrad's names
"<site>.<delta>.<tensor>", logits, loss and every delta gradient).
The quantiser is the authors', read from JieShibo/PETL-ViT binary_adapter/utils.py (QLinear.forward
and QLinear.quantize, bits = 1) and written here in plain PyTorch: the whole weight standardised by
its mean and unbiased std (+1e-5), the code of quantize(1) (its 500 iterations, with the standard
normal's cdf and ppf), the straight-through `q(w).data + w - w.data`, and `* std + mean`.
Cases: a parallel adapter (AdaptFormer's place, as binary_adapter/adaptformer.py: reads the MLP
sub-block's input, adds to its branch; bias-free as their QLinear; deltagrad's GELU) and LoRA on
q and v of the fused qkv (as binary_adapter/lora.py's lora_q and lora_v: no activation, no bias).
Writes tests/fixtures/peft_bits_golden.safetensors. Needs torch (not a build or test dependency):
  .venv-bench/bin/python scripts/make_peft_bits_golden.py"""
import os
import sys
import types
from statistics import NormalDist

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402
from make_peft_methods_golden import HERE, frozen_vit, param, finish  # noqa: E402


def quantizer(bit=1):
    """QLinear.quantize: the code values and thresholds, then x -> sum(sign(x - pos) * delta)."""
    nd = NormalDist()
    j = 2 ** bit * 2
    ppf = [0.0] * (j - 1)
    values, ranges = ppf[::2], ppf[1::2]
    for _ in range(500):
        ranges = [(a + b) / 2 for a, b in zip(values[1:], values[:-1])]
        pv = [0.0] + [nd.cdf(r) for r in ranges] + [1.0]
        pv = [(a + b) / 2 for a, b in zip(pv[1:], pv[:-1])]
        values = [nd.inv_cdf(p) for p in pv]
    value = torch.tensor(values).float()
    pos = torch.tensor(ranges).float()
    delta = (value[1:] - value[:-1]) / 2

    def func(x):
        return (torch.sign(x.unsqueeze(-1) - pos) * delta).sum(-1)

    return func, value


Q, CODE = quantizer(1)


def qweight(w):
    """QLinear.forward's weight (fake_quan)."""
    mean_w, std_w = w.mean(), w.std()
    w = (w - mean_w) / (std_w + 1e-5)
    wb = Q(w).data + w - w.data
    return wb * std_w + mean_w


def parallel_block(self, x):
    """adaptformer.py forward_block: x + mlp(norm2(x)) + adapter(x) * s (drop path: eval)."""
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x)) + self.adapter(x) * self.s


def adapter_case(case, dim, s, T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}.mlp_branch.bi."
        dw = param(P, pre + "down.weight", (dim, V.DIM), g)
        uw = param(P, pre + "up.weight", (V.DIM, dim), g)
        blk.adapter = lambda x, dw=dw, uw=uw: F.linear(F.gelu(F.linear(x, qweight(dw))), qweight(uw))
        blk.s = s
        blk.forward = types.MethodType(parallel_block, blk)
    finish(case, m, P, T)


def lora_case(case, r, alpha, T, seed):
    """lora.py forward_attn: q + lora_q(x) * s, v + lora_v(x) * s; deltagrad's s is lora_alpha / r."""
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}.attn.qkv.bl."
        A = {p: param(P, pre + f"{p}.lora_A", (r, V.DIM), g) for p in "qv"}
        B = {p: param(P, pre + f"{p}.lora_B", (V.DIM, r), g) for p in "qv"}

        def hook(mod, inp, out, A=A, B=B):
            x = inp[0]
            dq = F.linear(F.linear(x, qweight(A["q"])), qweight(B["q"])) * (alpha / r)
            dv = F.linear(F.linear(x, qweight(A["v"])), qweight(B["v"])) * (alpha / r)
            return out + torch.cat([dq, torch.zeros_like(dq), dv], -1)

        blk.attn.qkv.register_forward_hook(hook)
    finish(case, m, P, T)


if __name__ == "__main__":
    print("1-bit code:", CODE.tolist())
    T = {}
    adapter_case("parallel_bits1", 4, 0.5, T, 51)
    lora_case("lora_bits1", 2, 4, T, 52)
    out = os.path.join(HERE, "..", "tests", "fixtures", "peft_bits_golden.safetensors")
    safetensors_io.save(out, T, {"generator": "scripts/make_peft_bits_golden.py", "torch": torch.__version__})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

#!/usr/bin/python3
"""Golden fixture for FacT (fact_tt, fact_tk) and Hydra on the ViT of make_vit_golden.py, in the
manner of make_peft_methods_golden.py (frozen base, non-zero delta values, the delta tensors under
deltagrad's names "<site>.<delta>.<tensor>", logits, loss and every delta gradient).
The methods are the authors' forwards, read from their code and written here in plain PyTorch:
  FacT:  JieShibo/PETL-ViT, FacT/fact_tt.py and FacT/fact_tk.py (fact_forward_attn,
         fact_forward_mlp, set_FacT): the attention and MLP forwards are replaced, as set_FacT does;
  Hydra: extremebird/Hydra, vtab1k/hydra.py (forward_vit_hydra_attn, forward_vit_hydra_ffn,
         Hydra_layer; method hydra_both).
Their dropouts are inactive here (the model is in eval mode, as the C++ test runs it). The golden
ViT is 48 wide with an MLP ratio of 4, so the code's "4" (MLP slices) holds as written.
Writes tests/fixtures/peft_fact_hydra_golden.safetensors. Needs torch:
  .venv-bench/bin/python scripts/make_peft_fact_hydra_golden.py"""
import os
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402
from make_peft_methods_golden import HERE, frozen_vit, param, post_adapter, finish  # noqa: E402

DROP = 0.1  # the FacT code's nn.Dropout(0.1): identity in eval mode


def attention_core(attn, qkv, B, N, C):
    """The golden ViT's attention between its qkv and proj (timm's layout)."""
    q, k, v = qkv.reshape(B, N, 3, attn.h, attn.hd).permute(2, 0, 3, 1, 4).unbind(0)
    a = ((q * attn.hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(B, N, C)


def dp(mod, h):
    return F.dropout(h, DROP, training=mod.training)


# ---- FacT-TT (fact_tt.py) ----
def fact_tt_attn(self, x):
    B, N, C = x.shape
    vit = self.vit
    qkv = self.qkv(x)
    q = vit.FacTv(dp(self, F.linear(vit.FacTu(x), self.q_FacTs)))
    k = vit.FacTv(dp(self, F.linear(vit.FacTu(x), self.k_FacTs)))
    v = vit.FacTv(dp(self, F.linear(vit.FacTu(x), self.v_FacTs)))
    qkv = qkv + torch.cat([q, k, v], dim=2) * self.s
    x = attention_core(self, qkv, B, N, C)
    proj = self.proj(x)
    return proj + vit.FacTv(dp(self, F.linear(vit.FacTu(x), self.proj_FacTs))) * self.s


def fact_tt_mlp(self, x):
    B, N, C = x.shape
    vit = self.vit
    h = self.fc1(x)
    h = h + vit.FacTv(dp(self, F.linear(vit.FacTu(x), self.fc1_FacTs)).reshape(B, N, 4, self.dim)).reshape(
        B, N, 4 * C) * self.s
    x = F.gelu(h)
    h = self.fc2(x)
    x = x.reshape(B, N, 4, C)
    return h + vit.FacTv(dp(self, F.linear(vit.FacTu(x).reshape(B, N, 4 * self.dim), self.fc2_FacTs))) * self.s


# ---- FacT-TK (fact_tk.py) ----
def fact_tk_attn(self, x):
    B, N, C = x.shape
    vit = self.vit
    FacTc = vit.FacTc @ vit.FacTp[:, self.idx:self.idx + 4]
    q_c, k_c, v_c, proj_c = FacTc[:, :, 0], FacTc[:, :, 1], FacTc[:, :, 2], FacTc[:, :, 3]
    qkv = self.qkv(x)
    q = vit.FacTv(dp(self, vit.FacTu(x) @ q_c))
    k = vit.FacTv(dp(self, vit.FacTu(x) @ k_c))
    v = vit.FacTv(dp(self, vit.FacTu(x) @ v_c))
    qkv = qkv + torch.cat([q, k, v], dim=2) * self.s
    x = attention_core(self, qkv, B, N, C)
    proj = self.proj(x)
    return proj + vit.FacTv(dp(self, vit.FacTu(x) @ proj_c)) * self.s


def fact_tk_mlp(self, x):
    B, N, C = x.shape
    vit = self.vit
    FacTc = vit.FacTc @ vit.FacTp[:, self.idx:self.idx + 8]
    fc1_c = FacTc[:, :, :4].reshape(self.dim, self.dim * 4)
    fc2_c = FacTc[:, :, 4:].reshape(self.dim, self.dim * 4)
    h = self.fc1(x)
    h = h + vit.FacTv(dp(self, vit.FacTu(x) @ fc1_c).reshape(B, N, 4, self.dim)).reshape(B, N, 4 * C) * self.s
    x = F.gelu(h)
    h = self.fc2(x)
    x = x.reshape(B, N, 4, C)
    return h + vit.FacTv(dp(self, vit.FacTu(x).reshape(B, N, 4 * self.dim) @ fc2_c.t())) * self.s


class Shared:
    """The model-level factors: FacTu = Linear(C, dim), FacTv = Linear(dim, C), no biases."""

    def __init__(self, U, Vw, c=None, p=None):
        self.U, self.Vw, self.FacTc, self.FacTp = U, Vw, c, p

    def FacTu(self, x):
        return F.linear(x, self.U)

    def FacTv(self, x):
        return F.linear(x, self.Vw)


def fact_case(case, tk, dim, s, T, seed, with_lora=False):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    own = "blocks.0.attn.qkv.fact."  # deltagrad lists the shared factors with the first attachment
    U = param(P, own + "FacTu.weight", (dim, V.DIM), g, std=0.3)
    Vw = param(P, own + "FacTv.weight", (V.DIM, dim), g, std=0.3)  # the code starts it at zero
    shared = Shared(U, Vw)
    if tk:
        shared.FacTc = param(P, own + "FacTc", (dim, dim, dim), g, std=0.5)
        shared.FacTp = param(P, own + "FacTp", (dim, 12 * V.DEPTH), g, std=0.5)
    idx = 0
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}."
        for mod in (blk.attn, blk.mlp):
            mod.vit, mod.s, mod.dim = shared, s, dim
        if tk:  # set_FacT's order: each block's Attention takes 4 columns, then its Mlp 8
            blk.attn.idx, blk.mlp.idx = idx, idx + 4
            idx += 12
            blk.attn.forward = types.MethodType(fact_tk_attn, blk.attn)
            blk.mlp.forward = types.MethodType(fact_tk_mlp, blk.mlp)
        else:
            for part in ("q", "k", "v"):
                setattr(blk.attn, f"{part}_FacTs", param(P, pre + f"attn.qkv.fact.{part}_FacTs.weight", (dim, dim), g, std=0.3))
            blk.attn.proj_FacTs = param(P, pre + "attn.proj.fact.proj_FacTs.weight", (dim, dim), g, std=0.3)
            blk.mlp.fc1_FacTs = param(P, pre + "mlp.fc1.fact.fc1_FacTs.weight", (4 * dim, dim), g, std=0.3)
            blk.mlp.fc2_FacTs = param(P, pre + "mlp.fc2.fact.fc2_FacTs.weight", (dim, 4 * dim), g, std=0.3)
            blk.attn.forward = types.MethodType(fact_tt_attn, blk.attn)
            blk.mlp.forward = types.MethodType(fact_tt_mlp, blk.mlp)
    if with_lora:
        lora_hooks(m, P, g, ["attn.qkv", "mlp.fc1"], r=2, alpha=4)
    finish(case, m, P, T)


def lora_hooks(m, P, g, targets, r, alpha):
    """peft's LoRA (joint on the fused qkv): y + alpha/r * B(A x), as forward hooks."""
    for i, blk in enumerate(m.blocks):
        for t in targets:
            lin = blk.get_submodule(t)
            pre = f"blocks.{i}.{t}.lora."
            A = param(P, pre + "lora_A", (r, lin.in_features), g)
            B = param(P, pre + "lora_B", (lin.out_features, r), g)
            lin.register_forward_hook(lambda mod, inp, out, A=A, B=B: out + F.linear(F.linear(inp[0], A), B) * (alpha / r))


# ---- Hydra (hydra.py, hydra_both) ----
def hydra_layer(P, g, name, n_in, dim, n_out, scale):
    """Hydra_layer: up_proj(dropout(down_proj(x))) * scale, both projections with a bias."""
    dw, db = param(P, name + ".down_proj.weight", (dim, n_in), g, std=0.3), param(P, name + ".down_proj.bias", (dim,), g)
    uw, ub = param(P, name + ".up_proj.weight", (n_out, dim), g, std=0.3), param(P, name + ".up_proj.bias", (n_out,), g)
    return lambda x: F.linear(F.linear(x, dw, db), uw, ub) * scale  # dropout: eval


def hydra_attn(self, x):  # forward_vit_hydra_attn
    B, N, C = x.shape
    x = attention_core(self, self.qkv(x), B, N, C)
    par = self.hydra_proj_par(x)
    x = self.proj(x)
    seq = self.hydra_proj_seq(x)
    return x + par + seq


def hydra_ffn(self, x):  # forward_vit_hydra_ffn
    x = F.gelu(self.fc1(x))
    par = self.hydra_mlp_par(x)
    x = self.fc2(x)
    seq = self.hydra_mlp_seq(x)
    return x + par + seq


def hydra_case(case, dim, s, T, seed, with_adapter=False):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}."
        blk.mlp.hydra_mlp_par = hydra_layer(P, g, pre + "mlp.fc2.hydra.par", 4 * V.DIM, dim, V.DIM, s)
        blk.mlp.hydra_mlp_seq = hydra_layer(P, g, pre + "mlp.fc2.hydra.seq", V.DIM, dim, V.DIM, s)
        blk.attn.hydra_proj_par = hydra_layer(P, g, pre + "attn.proj.hydra.par", V.DIM, dim, V.DIM, s)
        blk.attn.hydra_proj_seq = hydra_layer(P, g, pre + "attn.proj.hydra.seq", V.DIM, dim, V.DIM, s)
        blk.mlp.forward = types.MethodType(hydra_ffn, blk.mlp)
        blk.attn.forward = types.MethodType(hydra_attn, blk.attn)
    if with_adapter:
        post_adapter(m, P, g, "aplus", channel_scale=True)
    finish(case, m, P, T)


if __name__ == "__main__":
    T = {}
    fact_case("fact_tt", False, 4, 0.7, T, 31)
    fact_case("fact_tt_lora", False, 3, 1.3, T, 32, with_lora=True)
    fact_case("fact_tk", True, 4, 0.7, T, 33)
    fact_case("fact_tk_lora", True, 3, 1.3, T, 34, with_lora=True)
    hydra_case("hydra", 3, 0.6, T, 35)
    hydra_case("hydra_adapter_plus", 2, 1.2, T, 36, with_adapter=True)
    out = os.path.join(HERE, "..", "tests", "fixtures", "peft_fact_hydra_golden.safetensors")
    safetensors_io.save(out, T, {"generator": "scripts/make_peft_fact_hydra_golden.py", "torch": torch.__version__})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

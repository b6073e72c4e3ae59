#!/usr/bin/python3
"""Golden fixture for the second-wave PEFT methods (and the first-wave Pfeiffer adapter) on
the ViT of make_vit_golden.py (weights read from tests/fixtures/vit_golden.safetensors),
frozen base, non-zero delta values. Where Hugging Face peft has the method (DoRA, IA3, VeRA, LoHa, LoKr) the
deltas are real peft layers (get_peft_model); SSF is the authors' ssf_ada (dongzelian/SSF,
models/vision_transformer.py) at their places, written here in plain PyTorch as forward hooks;
adapters are written by hand as in make_peft_golden.py. For each case: the delta tensors under
deltagrad's names "<site>.<delta>.<tensor>", logits, loss and every delta gradient.
Writes tests/fixtures/peft_methods_golden.safetensors. Needs torch and peft (not a build or
test dependency): e.g. .venv-bench/bin/python scripts/make_peft_methods_golden.py"""
import os
import re
import sys

import peft
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402

HERE = os.path.dirname(__file__)
W = safetensors_io.load(os.path.join(HERE, "..", "tests", "fixtures", "vit_golden.safetensors"))
X, Y = W["input.images"], W["input.labels"]


def frozen_vit():
    m = V.ViT()
    m.load_state_dict({k: W[k] for k in m.state_dict()})
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def param(P, name, shape, g, around=0.0, std=0.1):
    t = (torch.randn(*shape, generator=g) * std + around).requires_grad_()
    P[name] = t
    return t


def post_adapter(m, P, g, delta, norm=False, channel_scale=False):
    """A bottleneck adapter after each block: z + s * up(GELU(down(LN?(z))))."""
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}.{delta}."
        dw, db = param(P, pre + "down.weight", (4, V.DIM), g), param(P, pre + "down.bias", (4,), g)
        uw, ub = param(P, pre + "up.weight", (V.DIM, 4), g), param(P, pre + "up.bias", (V.DIM,), g)
        nw = param(P, pre + "norm.weight", (V.DIM,), g, 1.0) if norm else None
        nb = param(P, pre + "norm.bias", (V.DIM,), g) if norm else None
        s = param(P, pre + "scale", (V.DIM,), g, 1.0, 0.3) if channel_scale else None

        def hook(mod, inp, z, dw=dw, db=db, uw=uw, ub=ub, nw=nw, nb=nb, s=s):
            u = F.layer_norm(z, (V.DIM,), nw, nb, 1e-6) if nw is not None else z
            h = F.linear(F.gelu(F.linear(u, dw, db)), uw, ub)
            return z + (h * s if s is not None else h)

        blk.register_forward_hook(hook)


def peft_deltas(pm, P, g, delta, init):
    """Give every peft adapter tensor a non-zero value; record it under deltagrad's name."""
    for name, p in pm.named_parameters():
        mt = re.match(r"base_model\.model\.(.+)\.(lora_A|lora_B|lora_magnitude_vector|ia3_l|vera_lambda_b|vera_lambda_d|hada_w[12]_[ab]|lokr_w[12](?:_[ab])?)(\.default)?(\.weight)?$", name)
        if not mt:
            continue
        site, kind = mt.group(1), mt.group(2)
        with torch.no_grad():
            p.copy_(init(kind, p))
        p.requires_grad_(True)
        P[f"{site}.{delta}.{kind}"] = p


def finish(case, m, P, T):
    logits = m(X)
    loss = F.cross_entropy(logits, Y)
    loss.backward()
    T[f"{case}.logits"], T[f"{case}.loss"] = logits.detach(), loss.detach().reshape(())
    for n, p in P.items():
        # peft keeps IA3's vector as [out, 1] or [1, in]; deltagrad as [n]
        flat = n.endswith("ia3_l")
        T[f"{case}.{n}"] = p.detach().flatten() if flat else p.detach()
        T[f"{case}.grad.{n}"] = p.grad.flatten() if flat else p.grad
    print(f"{case}: {len(P)} delta tensors, loss {loss.item():.6f}")


def dora_case(case, T, seed, with_adapter):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    if with_adapter:
        post_adapter(m, P, g, "aplus", channel_scale=True)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["attn.qkv", "mlp.fc1"], use_dora=True)
    pm = peft.get_peft_model(m, cfg).eval()

    def init(kind, p):
        if kind == "lora_magnitude_vector":  # around the row norms: a magnitude that moves each row a little
            return p * (1 + 0.2 * torch.randn(p.shape, generator=g))
        return torch.randn(p.shape, generator=g) * 0.1

    peft_deltas(pm, P, g, "dora", init)
    finish(case, pm, P, T)


def ia3_case(T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    cfg = peft.IA3Config(target_modules=["attn.qkv", "mlp.fc2"], feedforward_modules=["mlp.fc2"])
    pm = peft.get_peft_model(m, cfg).eval()
    peft_deltas(pm, P, g, "ia3", lambda kind, p: 1 + 0.3 * torch.randn(p.shape, generator=g))
    finish("ia3", pm, P, T)


def vera_case(T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    cfg = peft.VeraConfig(r=4, target_modules=["attn.qkv", "mlp.fc1"], save_projection=True)
    pm = peft.get_peft_model(m, cfg).eval()
    peft_deltas(pm, P, g, "vera", lambda kind, p: torch.randn(p.shape, generator=g) * 0.5)
    # the shared projections (peft's buffers base_model.vera_A/B.default): deltagrad keeps them
    # with the delta's first attachment (the case sets save_projection: true)
    T["vera.blocks.0.attn.qkv.vera.vera_A"] = pm.base_model.vera_A["default"].detach().clone()
    T["vera.blocks.0.attn.qkv.vera.vera_B"] = pm.base_model.vera_B["default"].detach().clone()
    finish("vera", pm, P, T)


def lycoris_case(case, cfg, delta, T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    pm = peft.get_peft_model(m, cfg).eval()
    peft_deltas(pm, P, g, delta, lambda kind, p: torch.randn(p.shape, generator=g) * 0.2)
    finish(case, pm, P, T)


def ssf_ada(x, scale, shift):  # the SSF code's ssf_ada for token features [..., C]
    assert scale.shape == shift.shape and x.shape[-1] == scale.shape[0]
    return x * scale + shift


def ssf_case(T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    # the SSF code's places on a ViT: after the patch embedding (flattened), norm1, qkv, proj,
    # norm2, fc1, fc2 of every block, and the final norm
    sites = ["patch_embed"] + [f"blocks.{i}.{s}" for i in range(V.DEPTH)
                               for s in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")] + ["norm"]
    mods = dict(m.named_modules())
    for site in sites:
        c = 3 * V.DIM if site.endswith("qkv") else 4 * V.DIM if site.endswith("fc1") else V.DIM
        sc = param(P, f"{site}.ssf.ssf_scale", (c,), g, 1.0)
        sh = param(P, f"{site}.ssf.ssf_shift", (c,), g)
        mods[site].register_forward_hook(lambda mod, inp, out, sc=sc, sh=sh: ssf_ada(out, sc, sh))
    finish("ssf", m, P, T)


def pfeiffer_case(T, seed):
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    post_adapter(m, P, g, "pf", norm=True)
    finish("pfeiffer", m, P, T)


if __name__ == "__main__":
    T = {}
    pfeiffer_case(T, 11)
    dora_case("dora", T, 12, with_adapter=False)
    dora_case("dora_adapter_plus", T, 13, with_adapter=True)
    ia3_case(T, 14)
    ssf_case(T, 15)
    vera_case(T, 16)
    lycoris_case("loha", peft.LoHaConfig(r=4, alpha=8, target_modules=["attn.qkv", "mlp.fc1"]), "loha", T, 17)
    lycoris_case("lokr", peft.LoKrConfig(r=4, alpha=8, target_modules=["attn.qkv", "mlp.fc1"]), "lokr", T, 18)
    lycoris_case("lokr_both", peft.LoKrConfig(r=1, alpha=2, decompose_both=True, decompose_factor=4,
                                              target_modules=["mlp.fc2"]), "lokr", T, 19)
    out = os.path.join(HERE, "..", "tests", "fixtures", "peft_methods_golden.safetensors")
    safetensors_io.save(out, T, {"generator": "scripts/make_peft_methods_golden.py", "torch": torch.__version__,
                                 "peft": peft.__version__})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

#!/usr/bin/python3
"""Golden fixture for MoSA (method `mosa`) on the ViT of make_vit_golden.py, in the manner of
make_peft_methods_golden.py (frozen base, non-zero delta values under deltagrad's names
"<site>.<delta>.<tensor>", logits, loss and every delta gradient).
The method is the authors', read from Theia-4869/MoSA and written here in plain PyTorch:
  src/models/vit_adapter/vit_mosa.py  MoSABlock (STYLE "AdaptFormer"): forward in training (copy A
      of adapter_down, copy B of adapter_up) and in eval (the *_merge modules), and merge(mode);
  src/utils/pruner.py  Pruner.divide(score, "all"): the disjoint masks by rank of a score;
  src/engine/trainer.py  --sparse-train: a copy's gradient multiplied by its mask; forward_one_batch
      with MODEL.ADAPTER.ADDITIONAL: a second forward (its own copies) and the loss
      CE(out1) + ADD_WEIGHT * CE(out2) + REG_WEIGHT * symmetric_KL_loss(out1, out2);
  src/solver/losses.py  symmetric_KL_loss.
The masks' scores are torch.rand here (the Rand pruner); the fixture stores the masks, and a
divide case (scores and the masks divide makes of them) checks deltagrad's transcription of the rule.
Eval-mode cases differentiate through the merge (the authors merge under no_grad and never
need it; deltagrad merges with differentiable ops so that the registry's gradient check applies).
Writes tests/fixtures/peft_mosa_golden.safetensors. Needs torch (not a build or test dependency):
  .venv-bench/bin/python scripts/make_peft_mosa_golden.py"""
import os
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402
import make_vit_golden as V  # noqa: E402
from make_peft_methods_golden import HERE, X, Y, frozen_vit, param  # noqa: E402


def divide(score, num):
    """Pruner.divide(score, mode="all") for a weight (ADAPTER.BIAS: a bias's masks are all ones)."""
    sparsity = 1 / num
    masks = []
    for i in range(num):
        mask = torch.ones_like(score, dtype=torch.long)
        lower_k = int((sparsity * i) * score.numel()) + 1
        lower_threshold, _ = torch.kthvalue(torch.flatten(score), lower_k)
        mask = torch.where(score < lower_threshold, 0, mask)
        upper_k = int((sparsity * (i + 1)) * score.numel())
        upper_threshold, _ = torch.kthvalue(torch.flatten(score), upper_k)
        mask = torch.where(score > upper_threshold, 0, mask)
        masks.append(mask)
    return masks


def merge(ws, bs, masks, mode):
    """MoSABlock.merge: zeros, then every copy added ("add") or its masked part written ("joint"), / copies."""
    n = len(ws)
    w, b = torch.zeros_like(ws[0]), torch.zeros_like(bs[0])
    for i in range(n):
        if mode == "add":
            w = w + ws[i]
            b = b + bs[i]
        else:
            w = torch.where(masks[i] > 0.5, ws[i], w)
            b = bs[i]  # a bias's mask is all ones: each copy overwrites the whole bias
    return w / n, b / n


def symmetric_KL_loss(input, target, reduction="batchmean"):
    """losses.py symmetric_KL_loss: 1/2 (KL(p||q) + KL(q||p)), each side's target detached."""
    input = input.float()
    target = target.float()
    loss = F.kl_div(F.log_softmax(input, dim=-1, dtype=torch.float32),
                    F.softmax(target.detach(), dim=-1, dtype=torch.float32), reduction=reduction) + \
        F.kl_div(F.log_softmax(target, dim=-1, dtype=torch.float32),
                 F.softmax(input.detach(), dim=-1, dtype=torch.float32), reduction=reduction)
    return 0.5 * loss.sum()


def mosa_block(self, x):
    """MoSABlock.forward, STYLE AdaptFormer (dropout inactive: p = 0 in training cases, eval otherwise)."""
    h = x
    x = h + self.attn(self.norm1(h))
    h = x
    x = self.mlp(self.norm2(h))
    a = F.layer_norm(h, (V.DIM,), self.nw, self.nb, 1e-6)
    a = F.gelu(F.linear(a, *self.down()))
    return self.up_apply(a) * self.scalar + x + h


def mosa_case(case, T, seed, dim, experts, share, merge_mode, scalar, choice=None, additional=None):
    """choice = None: eval (merged); (A, B): a training forward with copies A (down) and B (up).
    additional = ((A2, B2), ADD_WEIGHT, REG_WEIGHT): the consistency loss's second forward, its copies."""
    state = {"choice": choice}
    g = torch.Generator().manual_seed(seed)
    m, P = frozen_vit(), {}
    masks_of = {}
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}.mlp_branch.mosa."
        blk.nw = param(P, pre + "norm.weight", (V.DIM,), g, 1.0)
        blk.nb = param(P, pre + "norm.bias", (V.DIM,), g)
        projs = {}
        for pn, shape in (("down", (dim, V.DIM)), ("up", (V.DIM, dim))):
            if share == pn:
                projs[pn] = ([param(P, pre + f"{pn}.weight", shape, g)], [param(P, pre + f"{pn}.bias", shape[:1], g)], None)
                continue
            ws = [param(P, pre + f"{pn}.{e}.weight", shape, g) for e in range(experts)]
            bs = [param(P, pre + f"{pn}.{e}.bias", shape[:1], g) for e in range(experts)]
            masks = divide(torch.rand(shape, generator=g), experts)
            for e, mk in enumerate(masks):
                T[f"{case}.{pre}{pn}.{e}.weight_mask"] = mk.float()
                masks_of[pre + f"{pn}.{e}.weight"] = mk.float()
            projs[pn] = (ws, bs, masks)

        def pick(pn, k, projs=projs):
            ws, bs, masks = projs[pn]
            if masks is None:
                return ws[0], bs[0]
            if state["choice"] is None:
                return merge(ws, bs, masks, merge_mode)
            return ws[state["choice"][k]], bs[state["choice"][k]]

        blk.down = lambda pick=pick: pick("down", 0)
        blk.up_apply = lambda a, pick=pick: F.linear(a, *pick("up", 1))
        blk.scalar = scalar
        blk.forward = types.MethodType(mosa_block, blk)
    logits = m(X)
    loss = F.cross_entropy(logits, Y)
    if additional is not None:
        state["choice"], add_weight, reg_weight = additional
        outputs_additional = m(X)
        if add_weight > 0:
            loss = loss + F.cross_entropy(outputs_additional, Y) * add_weight
        if reg_weight > 0:
            loss = loss + symmetric_KL_loss(logits, outputs_additional) * reg_weight
        T[f"{case}.logits2"] = outputs_additional.detach()
    loss.backward()
    T[f"{case}.logits"], T[f"{case}.loss"] = logits.detach(), loss.detach().reshape(())
    for n, p in P.items():
        T[f"{case}.{n}"] = p.detach()
        if p.grad is not None:  # a training forward leaves the other copies without a gradient
            sparse = choice is not None and n in masks_of  # --sparse-train masks a training step's gradient
            T[f"{case}.grad.{n}"] = p.grad * masks_of[n] if sparse else p.grad
    print(f"{case}: {len(P)} delta tensors, loss {loss.item():.6f}")


if __name__ == "__main__":
    T = {}
    g = torch.Generator().manual_seed(60)
    for num, shape in ((4, (16, 48)), (3, (7, 5))):
        score = torch.rand(shape, generator=g)
        T[f"divide{num}.score"] = score
        for i, mk in enumerate(divide(score, num)):
            T[f"divide{num}.mask.{i}"] = mk.float()
    mosa_case("mosa", T, 61, 4, 4, "down", "add", 0.7)
    mosa_case("mosa_none3", T, 62, 4, 3, "none", "add", 0.1)
    mosa_case("mosa_joint", T, 63, 4, 3, "none", "joint", 0.5)
    mosa_case("mosa_train", T, 64, 4, 4, "down", "add", 0.7, choice=(0, 2))
    mosa_case("mosa_train_none", T, 65, 4, 3, "none", "add", 0.5, choice=(1, 2))
    # the consistency loss: the VTAB script's weights (ADD_WEIGHT 0, REG_WEIGHT 1), and both terms
    mosa_case("mosa_consist", T, 66, 4, 4, "down", "add", 0.7, choice=(0, 2), additional=((1, 3), 0.0, 1.0))
    mosa_case("mosa_consist_none", T, 67, 4, 3, "none", "add", 0.5, choice=(1, 2), additional=((2, 0), 0.5, 2.0))
    out = os.path.join(HERE, "..", "tests", "fixtures", "peft_mosa_golden.safetensors")
    safetensors_io.save(out, T, {"generator": "scripts/make_peft_mosa_golden.py", "torch": torch.__version__})
    print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

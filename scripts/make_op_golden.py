#!/usr/bin/python3
"""Golden fixtures for every op and a small MLP training step, computed by PyTorch.
Run with Debian's python3-torch:  /usr/bin/python3 scripts/make_op_golden.py
Writes tests/fixtures/ops_golden.safetensors. For each case: inputs `<case>.in<i>`,
the output `<case>.out`, a fixed cotangent `<case>.w` and the gradients of
sum(out * w) with respect to each float input `<case>.grad<i>` (float32 throughout)."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_io  # noqa: E402

torch.manual_seed(0)
T = {}


def case(name, fn, *inputs, grad=None):
    ins = [x.clone().requires_grad_(x.is_floating_point() and (grad is None or grad[i])) for i, x in enumerate(inputs)]
    out = fn(*ins)
    w = torch.randn(out.shape)
    (out * w).sum().backward()
    for i, x in enumerate(ins):
        T[f"{name}.in{i}"] = x.detach()
        if x.grad is not None:
            T[f"{name}.grad{i}"] = x.grad
    T[f"{name}.out"] = out.detach()
    T[f"{name}.w"] = w


r = torch.randn
case("matmul", lambda a, b: a @ b, r(3, 5), r(5, 4))
case("matmul_batched_bt", lambda a, b: a @ b.transpose(-1, -2), r(2, 3, 5), r(2, 4, 5))
case("linear", F.linear, r(2, 3, 6), r(4, 6), r(4))
case("add_broadcast", torch.add, r(2, 3, 4), r(4))
case("sub", torch.sub, r(3, 4), r(3, 1))
case("mul_broadcast", torch.mul, r(2, 1, 4), r(3, 1))
case("div", torch.div, r(3, 4), torch.rand(3, 4) + 0.5)
for op in ["neg", "exp", "tanh", "erf", "sigmoid", "abs", "relu"]:
    case(op, getattr(torch, op), r(4, 5))
case("log", torch.log, torch.rand(4, 5) + 0.2)
case("sqrt", torch.sqrt, torch.rand(4, 5) + 0.2)
case("gelu", lambda x: F.gelu(x), r(4, 5) * 2)
case("add_scalar", lambda x: x + 1.5, r(3, 3))
case("mul_scalar", lambda x: x * -0.7, r(3, 3))
case("pow_scalar", lambda x: x ** 2.5, torch.rand(3, 3) + 0.3)
case("sum_dims", lambda x: x.sum(dim=(0, 2), keepdim=True), r(2, 3, 4))
case("mean_dim", lambda x: x.mean(dim=1), r(2, 3, 4))
case("max_dim", lambda x: x.max(dim=1).values, r(3, 5, 2))
case("softmax", lambda x: torch.softmax(x, dim=-1), r(3, 7))
case("softmax_dim1", lambda x: torch.softmax(x, dim=1), r(2, 5, 3))
case("log_softmax", lambda x: torch.log_softmax(x, dim=-1), r(3, 7))
case("layer_norm", lambda x, w, b: F.layer_norm(x, (6,), w, b, 1e-6), r(2, 3, 6), r(6), r(6))
labels = torch.tensor([3, 0, 4, 1, 2], dtype=torch.int64)
case("cross_entropy", lambda x, y: F.cross_entropy(x, y), r(5, 6), labels)
case("cross_entropy_smooth", lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1), r(5, 6), labels)
case("transpose", lambda x: x.transpose(0, 2), r(2, 3, 4))
case("permute", lambda x: x.permute(2, 0, 1), r(2, 3, 4))
case("reshape", lambda x: x.reshape(6, 4), r(2, 3, 4))
case("expand", lambda x: x.expand(2, 3, 4), r(3, 1))
case("slice", lambda x: x[:, 1:3], r(2, 4, 3))
case("concat", lambda a, b: torch.cat([a, b], dim=1), r(2, 1, 3), r(2, 2, 3))
case("index_select", lambda x, i: x.index_select(0, i), r(5, 3), torch.tensor([4, 0, 4, 2]))
# patchify == conv2d(stride = kernel) with an identity-like weight: compare the conv form
case("patch_embed", lambda x, w, b: F.conv2d(x, w, b, stride=4).flatten(2).transpose(1, 2),
     r(2, 3, 8, 12), r(5, 3, 4, 4), r(5))

# A small MLP training step: forward, loss, gradients, and params after one SGD step.
x, y = r(8, 6), torch.randint(0, 3, (8,))
W1, b1, W2, b2 = (r(16, 6) * 0.4).requires_grad_(), (r(16) * 0.1).requires_grad_(), \
    (r(3, 16) * 0.3).requires_grad_(), (r(3) * 0.1).requires_grad_()
params = {"fc1.weight": W1, "fc1.bias": b1, "fc2.weight": W2, "fc2.bias": b2}
for k, v in params.items():
    T[f"mlp.{k}"] = v.detach().clone()
T["mlp.x"], T["mlp.y"] = x, y
loss = F.cross_entropy(F.linear(F.gelu(F.linear(x, W1, b1)), W2, b2), y)
loss.backward()
T["mlp.loss"] = loss.detach().reshape(())
with torch.no_grad():
    for k, v in params.items():
        T[f"mlp.grad.{k}"] = v.grad.clone()
        T[f"mlp.after_sgd.{k}"] = v - 0.1 * v.grad

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ops_golden.safetensors")
safetensors_io.save(out, T, {"generator": "scripts/make_op_golden.py", "torch": torch.__version__})
print(f"wrote {len(T)} tensors to {os.path.normpath(out)}")

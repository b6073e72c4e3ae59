// layer_norm over the last dim: y = (x - mean) * rstd * w + b.
// Backward (per row, h = (x-mean)*rstd):
//   dx = rstd * (dh - mean(dh) - h * mean(dh * h)),  dh = gy * w
//   dw = sum_rows(gy * h),  db = sum_rows(gy)
// What it saves: backward needs only h, rstd and w. On the CPU, where h can be recovered
// from the output as h = (y - b) / w without losing precision (no affine, or every |w| >= 1e-3
// and |b| <= 64 |w|: the error of h stays below 65 ulp of 1), it saves y instead of x. y is
// what the next op reads, and often saves too (a LoRA branch on qkv or fc1, a trainable
// Linear, MLP recomputation), so the two records share one buffer and the block keeps one
// activation fewer. Otherwise (and on CUDA, where the check would need a device sync per
// call) it saves x and mean; also where the caller says x is kept anyway (keep_input: a
// parallel adapter reads the same residual stream). Either way the same kernel runs backward.
// Under autocast x or y is kept in bf16, mean and rstd in f32.
#include "autograd/autocast.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLayerNorm("layer_norm");

// Whether h = (y - b) / w recovers the normalised input to within 65 ulp of 1 (see above).
// Under autocast y is kept in bf16 (relative error 2^-9), so the bias may be at most |w|: h then
// errs by at most 2^-9 (|h| + 1), the same order as keeping x itself in bf16.
static bool output_recoverable(const Tensor& w, const Tensor& b, Device dev) {
  if (dev != Device::CPU) return false;
  const double bias_bound = autocast_on() ? 1.0 : 64.0;
  if (!w.defined()) return !b.defined();
  const std::vector<double> wv = w.to_vector(), bv = b.defined() ? b.to_vector() : std::vector<double>(wv.size(), 0.0);
  for (size_t j = 0; j < wv.size(); ++j)
    if (!(std::abs(wv[j]) >= 1e-3 && std::abs(bv[j]) <= bias_bound * std::abs(wv[j]))) return false;  // NaN: false
  return true;
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps, bool keep_input) {
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  DG_CHECK(!w.defined() || w.shape() == Shape{n}, "layer_norm: weight ", w.desc(), " for input ", x.desc(),
           ": expected [", n, "]");
  DG_CHECK(!b.defined() || b.shape() == Shape{n}, "layer_norm: bias ", b.desc(), " for input ", x.desc(),
           ": expected [", n, "]");
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, x.dtype(), x.device()), rstd = Tensor::empty({rows}, x.dtype(), x.device());
  Tensor wc = w.defined() ? w.contiguous() : Tensor(), bc = b.defined() ? b.contiguous() : Tensor();
  backend_of(x).layernorm(xc, wc, bc, rows, n, eps, y, mean, rstd);
  if (Record* r = tape().record(kLayerNorm, {x, w, b}, y, str("eps=", eps))) {
    const bool from_y = !keep_input && output_recoverable(wc, bc, x.device());
    if (from_y) {
      r->save_activation("y", y);
      if (bc.defined()) r->save("b", bc);
    } else {
      r->save_activation("x", xc);
      r->save("mean", mean);
    }
    r->save("rstd", rstd);
    if (wc.defined() && (r->needs_grad(0) || from_y)) r->save("w", wc);
    r->backward = [rows, n, from_y](Record& r, const Tensor& gy) {
      const Tensor& rstd = r.saved_tensor("rstd");
      const bool has_w = !r.in_shapes[1].empty();
      Tensor w = has_w && (r.needs_grad(0) || from_y) ? r.saved_tensor("w") : Tensor();
      Tensor x, mean;
      if (from_y) {
        // x' = h / rstd with mean' = 0: the kernel's (x' - mean') * rstd is h again.
        Tensor h = view::reshape(r.saved_tensor("y"), {rows, n});
        if (!r.in_shapes[2].empty()) h = sub(h, r.saved_tensor("b"));
        if (has_w) h = div(h, w);
        x = div(h, view::reshape(rstd, {rows, 1}));
        mean = Tensor::zeros({rows}, x.dtype(), x.device());
      } else {
        x = r.saved_tensor("x");
        mean = r.saved_tensor("mean");
      }
      std::vector<Tensor> g(3);
      if (r.needs_grad(0)) g[0] = Tensor::empty(x.shape(), x.dtype(), x.device());
      if (r.needs_grad(1)) g[1] = Tensor::zeros({n}, x.dtype(), x.device());
      if (r.needs_grad(2)) g[2] = Tensor::zeros({n}, x.dtype(), x.device());
      backend_of(x).layernorm_backward(x, r.needs_grad(0) ? w : Tensor(), mean, rstd, gy, rows, n, g[0], g[1], g[2]);
      if (g[0].defined()) g[0] = view::reshape(g[0], r.in_shapes[0]);
      return g;
    };
  }
  return y;
}

DG_GRADCHECK(layer_norm) {
  auto f = [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); };
  return {
      {"affine", [] { return std::vector<Tensor>{randn64({2, 3, 6}, 1), randn64({6}, 2), randn64({6}, 3)}; }, f},
      {"no affine", [] { return std::vector<Tensor>{randn64({4, 5}, 4), Tensor(), Tensor()}; }, f},
      {"frozen w, b", [] { return std::vector<Tensor>{randn64({3, 6}, 5), randn64({6}, 6, false), randn64({6}, 7, false)}; }, f},
      {"frozen x", [] { return std::vector<Tensor>{randn64({3, 6}, 8, false), randn64({6}, 9), randn64({6}, 10)}; }, f},
      // a zero in w: h cannot be recovered from y, so x is saved
      {"w with a zero", [] {
         Tensor w = randn64({6}, 11);
         w.data<double>()[2] = 0.0;
         return std::vector<Tensor>{randn64({3, 6}, 12), w, randn64({6}, 13)};
       }, f},
      {"weight only", [] { return std::vector<Tensor>{randn64({3, 6}, 14), randn64({6}, 15), Tensor()}; }, f},
  };
}

}  // namespace dg

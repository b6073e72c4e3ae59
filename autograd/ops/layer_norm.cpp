// layer_norm over the last dim: y = (x - mean) * rstd * w + b.
// Backward (per row, h = (x-mean)*rstd):
//   dx = rstd * (dh - mean(dh) - h * mean(dh * h)),  dh = gy * w
//   dw = sum_rows(gy * h),  db = sum_rows(gy)
// Saved for backward: x, mean and rstd (h is rebuilt from them), and w when x wants a gradient.
// Under autocast x is kept in bf16, mean and rstd in f32.
//
// A variant for memory (save_output_for_backward, after the plain path): keep y instead of x.
// y is what the next op reads, and often saves too (a LoRA branch on qkv or fc1, a trainable
// Linear, MLP recomputation), so the two records share one buffer and the block keeps one
// activation fewer. Backward recovers h = (y - b) / w, which is exact enough only where no w is
// near 0 and no b is large against its w (output_recoverable); only the CPU checks that, since
// on CUDA the check would need a device sync per call. Either way the same kernel runs backward.
#include "autograd/autocast.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLayerNorm("layer_norm");

// The gradients of x, w and b, allocated where wanted, filled by one of the backend's two
// backward kernels (`run`); like: x or y, whose shape and dtype the input gradient has.
template <class Kernel>
static std::vector<Tensor> layer_norm_grads(Record& r, const Tensor& like, int64_t n, Kernel run) {
  std::vector<Tensor> g(3);
  if (r.needs_grad(0)) g[0] = Tensor::empty(like.shape(), like.dtype(), like.device());
  if (r.needs_grad(1)) g[1] = Tensor::zeros({n}, like.dtype(), like.device());
  if (r.needs_grad(2)) g[2] = Tensor::zeros({n}, like.dtype(), like.device());
  run(g);
  if (g[0].defined()) g[0] = view::reshape(g[0], r.in_shapes[0]);
  return g;
}

// The plain path: keep the input and its row statistics.
static void save_input_for_backward(Record& r, const Tensor& xc, const Tensor& mean, const Tensor& rstd,
                                    const Tensor& wc, int64_t rows, int64_t n) {
  r.save_activation("x", xc);
  r.save("mean", mean);
  r.save("rstd", rstd);
  if (wc.defined() && r.needs_grad(0)) r.save("w", wc);
  r.backward = [rows, n](Record& r, const Tensor& gy) {
    const bool has_w = !r.in_shapes[1].empty();
    const Tensor w = has_w && r.needs_grad(0) ? r.saved_tensor("w") : Tensor();
    const Tensor x = r.saved_tensor("x");
    return layer_norm_grads(r, x, n, [&](std::vector<Tensor>& g) {
      backend_of(x).layernorm_backward(x, w, r.saved_tensor("mean"), r.saved_tensor("rstd"), gy, rows, n, g[0], g[1],
                                       g[2]);
    });
  };
}

// ---- The variant: keep the output instead of the input (see the top of the file) ----

// Whether h = (y - b) / w recovers the normalised input to within 65 ulp of 1: no affine, or
// every |w| >= 1e-3 and |b| <= 64 |w|. Under autocast y is kept in bf16 (relative error 2^-9),
// so the bias may be at most |w|: h then errs by at most 2^-9 (|h| + 1), the same order as
// keeping x itself in bf16. Checked on every recorded call, since w and b change as they train;
// on the CPU that is a scan of 2n values already in host memory (the kernel did rows * n work),
// and on CUDA the variant is never used, so nothing is read back from a device.
static bool output_recoverable(const Tensor& w, const Tensor& b, Device dev) {
  if (dev != Device::CPU) return false;
  const double bias_bound = autocast_on() ? 1.0 : 64.0;
  if (!w.defined()) return !b.defined();
  const std::vector<double> wv = w.to_vector(), bv = b.defined() ? b.to_vector() : std::vector<double>(wv.size(), 0.0);
  for (size_t j = 0; j < wv.size(); ++j)
    if (!(std::abs(wv[j]) >= 1e-3 && std::abs(bv[j]) <= bias_bound * std::abs(wv[j]))) return false;  // NaN: false
  return true;
}

static void save_output_for_backward(Record& r, const Tensor& y, const Tensor& rstd, const Tensor& wc,
                                     const Tensor& bc, int64_t rows, int64_t n) {
  r.save_activation("y", y);
  if (bc.defined()) r.save("b", bc);
  r.save("rstd", rstd);
  if (wc.defined()) r.save("w", wc);
  r.backward = [rows, n](Record& r, const Tensor& gy) {
    const bool has_w = !r.in_shapes[1].empty();
    const Tensor w = has_w ? r.saved_tensor("w") : Tensor();
    const Tensor y = r.saved_tensor("y"), b = r.in_shapes[2].empty() ? Tensor() : r.saved_tensor("b");
    return layer_norm_grads(r, y, n, [&](std::vector<Tensor>& g) {
      // h = (y - b) / w inside the backend's backward pass
      backend_of(y).layernorm_backward_from_output(y, w, b, r.saved_tensor("rstd"), gy, rows, n, g[0], g[1], g[2]);
    });
  };
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
    // keep_input: the caller keeps x anyway (a parallel adapter reads the same residual stream)
    if (keep_input || !output_recoverable(wc, bc, x.device()))
      save_input_for_backward(*r, xc, mean, rstd, wc, rows, n);
    else
      save_output_for_backward(*r, y, rstd, wc, bc, rows, n);
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

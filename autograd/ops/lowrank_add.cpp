// lowrank_add: out = y, with out[..., col0 : col0 + n] += alpha * h @ B^T (h [..., r],
// B [n, r]) for each term: a low-rank branch (LoRA's B product) added into the base layer's output by the
// GEMM itself (beta = 1), instead of a product into a new tensor and an elementwise add (and,
// for timm's fused qkv with one LoRA per projection, instead of zeros + concat).
// Where nothing else holds y (the base output a Post delta receives: one handle, one storage
// reference) the GEMM writes into y's buffer and out shares it: the add's pass over [..., out]
// is gone. Else y is copied first (the same result).
//   dy = gy (all of it); per term dh = alpha * gy[..., cols] @ B, dB = alpha * gy[..., cols]^T @ h
// Saves h only if B needs grad and B only if h needs grad (as linear).
#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLowrankAdd("lowrank_add");

namespace {
// op(A) [rows, n] columns col0.. of a [rows, ld] matrix, times op(B), into C (beta as given)
Backend::Gemm gemm_shape(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc,
                         double alpha, double beta) {
  Backend::Gemm g;
  g.ta = ta, g.tb = tb, g.M = M, g.N = N, g.K = K, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
  g.alpha = alpha, g.beta = beta;
  return g;
}
// Whether this handle is the only one on y's data (nothing saved it, no view of it)
bool sole_owner(const Tensor& y) { return y.impl_ptr().use_count() == 1 && y.impl()->storage.use_count() == 1; }
}  // namespace

Tensor lowrank_add(const Tensor& y, const std::vector<LowRankTerm>& terms, double alpha) {
  DG_CHECK(y.dim() >= 1, "lowrank_add: output ", y.desc(), ": expected [..., width]");
  const int64_t width = y.size(-1), rows = y.numel() / std::max<int64_t>(width, 1);
  bool lowp = false;
  for (const LowRankTerm& t : terms) {
    const Tensor &h = t.h, &B = t.B;
    DG_CHECK(B.dim() == 2 && h.dim() == y.dim() && h.size(-1) == B.size(1) && h.numel() == rows * B.size(1) &&
                 t.col0 >= 0 && t.col0 + B.size(0) <= width,
             "lowrank_add: output ", y.desc(), " for ", h.desc(), " @ ", B.desc(), "^T at column ", t.col0);
    lowp = lowp || lowp_gemm(h, B);  // autocast: bf16 operands, the f32 output accumulates
    DG_CHECK(lowp_gemm(h, B) || (h.dtype() == B.dtype() && y.dtype() == B.dtype()), "lowrank_add: ", y.desc(),
             ", ", h.desc(), ", ", B.desc(), " differ in dtype");
    DG_CHECK(h.device() == y.device() && B.device() == y.device(), "lowrank_add: ", y.desc(), ", ", h.desc(),
             ", ", B.desc(), " on different devices");
  }
  Tensor out = y.is_contiguous() && sole_owner(y) ? y.detach() : y.contiguous().clone();
  out.bump_version();
  Backend& be = backend_of(y);
  std::vector<Tensor> inputs{y};
  for (const LowRankTerm& t : terms) {
    const int64_t n = t.B.size(0), r = t.B.size(1);
    const Backend::Gemm g = gemm_shape(false, true, rows, n, r, r, r, width, alpha, 1.0);
    count_gemm_flops(g);
    be.gemm(g, lowp ? to_lowp(t.h) : t.h.contiguous(), lowp ? to_lowp(t.B) : t.B.contiguous(),
            view::slice(view::reshape(out, {rows, width}), 1, t.col0, t.col0 + n));
    inputs.push_back(t.h), inputs.push_back(t.B);
  }
  std::vector<int64_t> col0;
  for (const LowRankTerm& t : terms) col0.push_back(t.col0);
  if (Record* rec = tape().record(kLowrankAdd, inputs, out, str("alpha=", alpha))) {
    for (size_t i = 0; i < terms.size(); ++i) {  // under autocast the bf16 copies the GEMM read
      const std::string k = std::to_string(i);
      if (rec->needs_grad(2 + 2 * i)) rec->save("h" + k, lowp ? to_lowp(terms[i].h) : terms[i].h);
      if (rec->needs_grad(1 + 2 * i)) rec->save("B" + k, lowp ? to_lowp(terms[i].B) : terms[i].B);
    }
    rec->backward = [alpha, col0, width](Record& rec, const Tensor& gy) {
      std::vector<Tensor> grads(1 + 2 * col0.size());
      const int64_t rows = gy.numel() / width;
      const Tensor gy2 = view::reshape(gy.contiguous(), {rows, width});
      Backend& be = backend_of(gy);
      if (rec.needs_grad(0)) grads[0] = gy;
      for (size_t i = 0; i < col0.size(); ++i) {
        const std::string k = std::to_string(i);
        const Shape& hs = rec.in_shapes[1 + 2 * i];
        const int64_t n = rec.in_shapes[2 + 2 * i][0], r = hs.back();
        const Tensor cols = view::slice(gy2, 1, col0[i], col0[i] + n);  // rows of stride `width`
        // a bf16 operand pairs with a bf16 copy of the gradient's columns (contiguous: ld n)
        auto lhs = [&](const Tensor& other) {
          return other.dtype() == DType::BF16 ? std::pair{to_lowp(cols.contiguous()), n} : std::pair{cols, width};
        };
        // alpha * op(gy[:, cols]) @ other into a new [M, N]
        auto product = [&](bool ta, int64_t M, int64_t N, int64_t K, const Tensor& other) {
          const auto [a, lda] = lhs(other);
          Tensor c = Tensor::empty({M, N}, gy.dtype(), gy.device());
          const Backend::Gemm g = gemm_shape(ta, false, M, N, K, lda, r, r, alpha, 0.0);
          count_gemm_flops(g);
          be.gemm(g, a, other.contiguous(), c);
          return c;
        };
        // dh = alpha * gy[:, cols] @ B;  dB = alpha * gy[:, cols]^T @ h
        if (rec.needs_grad(1 + 2 * i)) grads[1 + 2 * i] = view::reshape(product(false, rows, r, n, rec.saved_stored("B" + k)), hs);
        if (rec.needs_grad(2 + 2 * i)) grads[2 + 2 * i] = product(true, n, r, rows, rec.saved_stored("h" + k));
      }
      return grads;
    };
  }
  return out;
}

DG_GRADCHECK(lowrank_add) {
  // inputs: y, then (h, B) per term; y a leaf the check holds (copied) or a fresh result (in place)
  auto f = [](double alpha, std::vector<int64_t> col0, bool fresh) {
    return [alpha, col0, fresh](const std::vector<Tensor>& x) {
      std::vector<LowRankTerm> terms;
      for (size_t i = 0; i < col0.size(); ++i) terms.push_back({x[1 + 2 * i], x[2 + 2 * i], col0[i]});
      return fresh ? lowrank_add(mul_scalar(x[0], 1.5), terms, alpha) : lowrank_add(x[0], terms, alpha);
    };
  };
  auto in = [](int64_t width, std::vector<int64_t> n, bool frozen_b) {
    return [width, n, frozen_b] {
      std::vector<Tensor> v{randn64({2, 3, width}, 1)};
      for (size_t i = 0; i < n.size(); ++i)
        v.push_back(randn64({2, 3, 2}, 2 + 2 * i)), v.push_back(randn64({n[i], 2}, 3 + 2 * i, !frozen_b));
      return v;
    };
  };
  return {
      {"whole output", in(4, {4}, false), f(0.75, {0}, false)},
      {"columns 2..5 of 7", in(7, {3}, false), f(2.0, {2}, false)},
      {"two terms (q and v of a qkv), in place", in(6, {2, 2}, false), f(-0.5, {0, 4}, true)},
      {"frozen B", in(4, {4}, true), f(1.0, {0}, false)},
  };
}

}  // namespace dg

// matmul: C = op(A) @ op(B) over broadcast batch dims, one (batched) GEMM.
//   dA = dC @ op(B)^T and dB = op(A)^T @ dC, written with the same GEMM and flags,
//   then summed over any batch dims that were broadcast.
// Under autocast (autograd/autocast.h) the operands are multiplied, and saved, as bf16 copies.
#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kMatmul("matmul");

// Stored-matrix view of the last two dims: rows/cols as stored, before any transpose.
static Tensor matmul_raw(const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha = 1.0) {
  DG_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands must be at least 2-d, got ", a.desc(), " and ",
           b.desc());
  const bool lowp = lowp_gemm(a, b);  // autocast: bf16 operands, f32 result (autograd/autocast.h)
  DG_CHECK((lowp || a.dtype() == b.dtype()) && a.device() == b.device(), "matmul: ", a.desc(), " and ",
           b.desc(), " differ in dtype or device");
  if (lowp && (a.dtype() != DType::BF16 || b.dtype() != DType::BF16))
    return matmul_raw(to_lowp(a), to_lowp(b), ta, tb, alpha);
  const DType out_dtype = lowp ? DType::F32 : a.dtype();
  const int64_t M = ta ? a.size(-1) : a.size(-2), K = ta ? a.size(-2) : a.size(-1);
  const int64_t Kb = tb ? b.size(-1) : b.size(-2), N = tb ? b.size(-2) : b.size(-1);
  DG_CHECK(K == Kb, "matmul: inner dimensions differ: ", a.desc(), (ta ? " (transposed)" : ""), " @ ", b.desc(),
           (tb ? " (transposed)" : ""), " (", K, " vs ", Kb, ")");
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Backend& be = backend_of(a);
  Backend::Gemm g;
  g.ta = ta;
  g.tb = tb;
  g.M = M;
  g.N = N;
  g.K = K;
  g.alpha = alpha;
  // Common case: activations [..., M, K] times one weight matrix: a single GEMM.
  if (bb.empty() && !ta) {
    Tensor ac = a.contiguous();
    const int64_t rows = ac.numel() / K;
    Shape os = a.shape();
    os.back() = N;
    Tensor out = Tensor::empty(os, out_dtype, a.device());
    Tensor bc = b.contiguous();
    g.M = rows;
    g.lda = K;
    g.ldb = b.size(-1);
    g.ldc = N;
    count_gemm_flops(g);
    be.gemm(g, ac, bc, out);
    return out;
  }
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  const int64_t nb = shape_numel(batch);
  auto prep = [&](const Tensor& t, const Shape& tb_shape, int64_t& stride) {
    // A matrix shared by the whole batch is read with batch stride 0 (no copy).
    if (shape_numel(tb_shape) == 1) {
      Tensor c = t.contiguous();
      stride = 0;
      return c;
    }
    Shape full = batch;
    full.push_back(t.size(-2));
    full.push_back(t.size(-1));
    Tensor c = view::expand(t, full).contiguous();
    stride = t.size(-2) * t.size(-1);
    return c;
  };
  Tensor A = prep(a, ba, g.stride_a), B = prep(b, bb, g.stride_b);
  Shape os = batch;
  os.push_back(M);
  os.push_back(N);
  Tensor out = Tensor::empty(os, out_dtype, a.device());
  g.batch = nb;
  g.lda = a.size(-1);
  g.ldb = b.size(-1);
  g.ldc = N;
  g.stride_c = M * N;
  count_gemm_flops(g);
  be.gemm(g, A, B, out);
  return out;
}

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha) {
  const bool lowp = lowp_gemm(a, b);
  const Tensor al = lowp ? to_lowp(a) : a, bl = lowp ? to_lowp(b) : b;  // bf16 under autocast
  Tensor out = matmul_raw(al, bl, ta, tb, alpha);
  if (Record* r = tape().record(kMatmul, {a, b}, out, str(ta ? "ta " : "", tb ? "tb " : "", alpha != 1 ? str("alpha=", alpha) : ""))) {
    if (r->needs_grad(1)) r->save("a", al);  // dB reads A (under autocast: the bf16 copy the GEMM read)
    if (r->needs_grad(0)) r->save("b", bl);  // dA reads B
    r->backward = [ta, tb, alpha](Record& r, const Tensor& gc) {
      std::vector<Tensor> g(2);
      if (r.needs_grad(0)) {
        const Tensor& b = r.saved_stored("b");
        Tensor ga = !ta ? matmul_raw(gc, b, false, !tb, alpha) : matmul_raw(b, gc, tb, true, alpha);
        g[0] = sum_to(ga, r.in_shapes[0]);
      }
      if (r.needs_grad(1)) {
        const Tensor& a = r.saved_stored("a");
        Tensor gb = !tb ? matmul_raw(a, gc, !ta, false, alpha) : matmul_raw(gc, a, true, ta, alpha);
        g[1] = sum_to(gb, r.in_shapes[1]);
      }
      return g;
    };
  }
  return out;
}

DG_GRADCHECK(matmul) {
  auto mm = [](bool ta, bool tb) { return [=](const std::vector<Tensor>& x) { return matmul(x[0], x[1], ta, tb); }; };
  return {
      {"2d", [] { return std::vector<Tensor>{randn64({3, 4}, 1), randn64({4, 5}, 2)}; }, mm(false, false)},
      {"3d x 2d", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 3), randn64({4, 5}, 4)}; }, mm(false, false)},
      {"batched ta", [] { return std::vector<Tensor>{randn64({2, 4, 3}, 5), randn64({2, 4, 5}, 6)}; }, mm(true, false)},
      {"batched tb", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 7), randn64({2, 5, 4}, 8)}; }, mm(false, true)},
      {"ta tb broadcast", [] { return std::vector<Tensor>{randn64({2, 1, 4, 3}, 9), randn64({3, 5, 4}, 10)}; },
       mm(true, true)},
      {"frozen b", [] { return std::vector<Tensor>{randn64({3, 4}, 11), randn64({4, 2}, 12, false)}; }, mm(false, false)},
      {"alpha, batched tb", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 13), randn64({2, 5, 4}, 14)}; },
       [](const std::vector<Tensor>& x) { return matmul(x[0], x[1], false, true, 0.35); }},
  };
}

}  // namespace dg

// attention: multi-head scaled dot-product attention over a packed qkv tensor.
//   qkv [B, N, 3*D] (timm's layout: q | k | v, each [H, hd] head-major), D = H * hd
//   out [B, N, D] = concat over heads of softmax(scale q k^T) v    (the proj input)
// Fused (where the backend's fused_attention_supported(), e.g. the CPU): one kernel per direction; saves qkv
// and the [B, H, N] log-sum-exp, never the [B, H, N, N] probabilities (backward recomputes
// them). Composed (the others, or fused = false): matmul + softmax + matmul, which saves
// q, k, v and the probabilities; nn::Attention uses it when attention dropout is active.
// Skipped query rows (AttnRows: VPT-deep's prompt rows that the next block replaces, the last
// block's rows but the class token's under 'token' pooling): only the
// kept rows are queries (out [B, Nq, D]), every row is a key and a value.
#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kAttention("attention");

static Tensor attention_composed(const Tensor& qkv, int64_t heads, double scale, AttnRows rows) {
  const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3;
  Tensor t = contiguous(permute(reshape(qkv, {B, N, 3, heads, D / heads}), {2, 0, 3, 1, 4}));  // [3, B, H, N, hd]
  Tensor q = squeeze(slice(t, 0, 0, 1), 0), k = squeeze(slice(t, 0, 1, 2), 0), v = squeeze(slice(t, 0, 2, 3), 0);
  q = without_range(q, 2, rows.skip_begin, rows.skip_end);   // [B, H, Nq, hd]: the kept queries
  Tensor a = softmax(matmul(q, k, false, true, scale), -1);  // [B, H, Nq, N], scale inside the GEMM
  return reshape(transpose(matmul(a, v), 1, 2), {B, N - rows.skipped(), D});  // [B, Nq, D]
}

Tensor attention(const Tensor& qkv, int64_t heads, double scale, bool fused, AttnRows rows) {
  DG_CHECK(qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0, "attention: qkv ", qkv.desc(),
           " is not [B, N, 3 * heads * head_dim] for ", heads, " heads");
  DG_CHECK(0 <= rows.skip_begin && rows.skip_begin <= rows.skip_end && rows.skip_end <= qkv.size(1) &&
               rows.skipped() < qkv.size(1),
           "attention: skipped query rows [", rows.skip_begin, ", ", rows.skip_end, ") of qkv ", qkv.desc(),
           " must lie within its ", qkv.size(1), " rows and leave at least one");
  Backend& be = backend_of(qkv);
  if (!fused || !be.fused_attention_supported(qkv, heads)) return attention_composed(qkv, heads, scale, rows);
  const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3, Nq = N - rows.skipped();
  // Under autocast q, k and v are GEMM operands: rounded to bf16 (kept so for backward), and the
  // kernel runs in f32 on the rounded values; the scores, lse and output stay f32.
  const bool lowp = lowp_gemm(qkv, qkv);
  Tensor low = lowp ? to_lowp(qkv) : Tensor();
  Tensor x = lowp ? low.to(DType::F32) : qkv.contiguous();
  Tensor out = Tensor::empty({B, Nq, D}, x.dtype(), x.device());
  Tensor lse = Tensor::empty({B, heads, Nq}, x.dtype(), x.device());
  // two GEMMs per (batch, head): S = q k^T, o = P v; backward recomputes S and runs four more
  const double pair_gemm = 2.0 * double(B) * double(Nq) * double(N) * double(D);  // one Nq x N x hd GEMM, all pairs
  count_flops(2 * pair_gemm);
  be.attention(x, heads, scale, out, lse, rows);
  const std::string attrs = rows.skipped() ? str("heads=", heads, " skip=", rows.skip_begin, ":", rows.skip_end)
                                           : str("heads=", heads);
  if (Record* r = tape().record(kAttention, {qkv}, out, attrs)) {
    r->save_activation("qkv", lowp ? qkv : x);  // under autocast: `low` again (to_lowp's cache)
    r->save("lse", lse);
    r->backward = [heads, scale, pair_gemm, rows](Record& r, const Tensor& gy) {
      count_flops(5 * pair_gemm);
      const Tensor x = r.saved_tensor("qkv");  // f32 (widened if autocast kept it in bf16)
      Tensor gx = Tensor::empty(x.shape(), x.dtype(), x.device());
      backend_of(x).attention_backward(x, r.saved_tensor("lse"), gy.contiguous(), heads, scale, gx, rows);
      return std::vector<Tensor>{gx};
    };
  }
  return out;
}

DG_GRADCHECK(attention) {
  auto f = [](int64_t heads, double scale) {
    return [heads, scale](const std::vector<Tensor>& x) { return attention(x[0], heads, scale); };
  };
  return {
      {"one head", [] { return std::vector<Tensor>{randn64({2, 5, 3 * 4}, 1)}; }, f(1, 0.5)},
      {"three heads", [] { return std::vector<Tensor>{randn64({2, 7, 3 * 6}, 2)}; }, f(3, 0.7)},
      // VPT-deep's form: the rows after the first are keys and values only
      {"query rows skipped [1, 3)", [] { return std::vector<Tensor>{randn64({2, 6, 3 * 4}, 3)}; },
       [](const std::vector<Tensor>& x) { return attention(x[0], 2, 0.6, true, {1, 3}); }},
      {"query rows skipped [0, 2), composed", [] { return std::vector<Tensor>{randn64({1, 5, 3 * 4}, 4)}; },
       [](const std::vector<Tensor>& x) { return attention(x[0], 1, 0.6, false, {0, 2}); }},
      {"query rows skipped [3, 5) (the last)", [] { return std::vector<Tensor>{randn64({2, 5, 3 * 6}, 5)}; },
       [](const std::vector<Tensor>& x) { return attention(x[0], 3, 0.5, true, {3, 5}); }},
      // the last block with 'token' pooling: the class token's row is the only query
      {"one query row, [1, N) skipped", [] { return std::vector<Tensor>{randn64({2, 6, 3 * 4}, 6)}; },
       [](const std::vector<Tensor>& x) { return attention(x[0], 2, 0.6, true, {1, 6}); }},
      {"one query row, [1, N) skipped, composed", [] { return std::vector<Tensor>{randn64({2, 6, 3 * 4}, 7)}; },
       [](const std::vector<Tensor>& x) { return attention(x[0], 2, 0.6, false, {1, 6}); }},
  };
}

}  // namespace dg

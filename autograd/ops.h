// The differentiable ops. Each is recorded on the tape only when an input needs a
// gradient; its backward and its float64 gradient check sit in the file named beside it.
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/tape.h"
#include "core/backend.h"
#include "core/tensor.h"

namespace dg {

// ---- linear algebra (ops/matmul.cpp) ----
// a [..., M, K] @ b [..., K, N] with broadcasting over leading dims; 1-D operands are not
// promoted (use unsqueeze). ta/tb: use the transpose of the last two dims of a / b.
// alpha scales the product inside the GEMM (attention's hd^-0.5 costs no extra pass).
Tensor matmul(const Tensor& a, const Tensor& b, bool ta = false, bool tb = false, double alpha = 1.0);
// y = x @ W^T + b: x [..., in], W [out, in] (PyTorch/timm layout), b [out] or undefined.
// Saves x only if W needs grad, W only if x needs grad: a frozen layer saves nothing for its weight.
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b = Tensor());  // ops/linear.cpp
// gelu(linear(x, W, b)) as one op; recompute = true saves x instead of the [.., out] pre-activation
// and redoes that GEMM in backward (ops/linear_gelu.cpp).
Tensor linear_gelu(const Tensor& x, const Tensor& W, const Tensor& b, bool recompute);
// y with alpha * h @ B^T added to its columns [col0, col0 + B.size(0)) for each term by the GEMM
// (beta = 1): a low-rank branch into a base output. y is consumed: where the argument is the only handle on its
// buffer (a Post delta's base output) the GEMM writes into that buffer, so a caller that reads y
// afterwards must hold another handle on it (then y is copied first) (ops/lowrank_add.cpp).
struct LowRankTerm {
  Tensor h, B;       // h [..., r], B [n, r]
  int64_t col0 = 0;  // adds to y's columns [col0, col0 + n)
};
Tensor lowrank_add(const Tensor& y, const std::vector<LowRankTerm>& terms, double alpha);

// ---- elementwise, broadcasting (ops/binary.cpp) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);

// ---- elementwise unary and scalar (ops/unary.cpp) ----
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor gelu(const Tensor& x);  // exact: 0.5 x (1 + erf(x / sqrt 2))
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
// c where x > 0, else -c; gradient passed straight through (the 1-bit quantiser, ops/sign_ste.cpp)
Tensor sign_ste(const Tensor& x, double c);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double s) { return add_scalar(a, s); }
inline Tensor operator*(const Tensor& a, double s) { return mul_scalar(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul_scalar(a, s); }

// ---- reductions (ops/reduce.cpp) ----
// dims empty = all dims. Negative dims count from the end.
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);  // gradient to the first max
// Reduce a broadcast result back to `shape` (the backward of broadcasting). Not recorded
// separately: it is sum() with the right dims.
Tensor sum_to(const Tensor& x, const Shape& shape);
Tensor argmax(const Tensor& x, int64_t dim);  // I64, not differentiable

// ---- normalisation and losses ----
Tensor softmax(const Tensor& x, int64_t dim);      // ops/softmax.cpp
// Multi-head attention over packed qkv [B, N, 3*H*hd] -> [B, N, H*hd] (ops/attention.cpp):
// one fused kernel where the backend has it (saves no probabilities), else, or with
// fused = false, matmul + softmax + matmul. `rows`: queries from all rows but [skip_begin,
// skip_end) (those are keys and values only), out [B, N - skipped, H*hd].
Tensor attention(const Tensor& qkv, int64_t heads, double scale, bool fused = true, AttnRows rows = {});
Tensor log_softmax(const Tensor& x, int64_t dim);  // ops/softmax.cpp
// Over the last dim; w, b [D] or undefined. Saves rstd and x, mean or (CPU, where the input is
// recoverable) y, b; and w. keep_input: save x even where y would do (another op saves x anyway).
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                  bool keep_input = false);  // ops/layer_norm.cpp
// Mean over rows of -log softmax(logits)[label], label smoothing eps; labels I64 [N]
// (label < 0 is ignored; the mean is over the others). Returns a scalar.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, double smoothing = 0.0);  // ops/cross_entropy.cpp

// ---- randomness ----
// Inverted dropout with a counter-based mask: element i is kept iff uniform(seed, i) >= p.
// Identity when !training or p == 0. The mask is regenerated in backward, not saved.
Tensor dropout(const Tensor& x, double p, bool training, uint64_t seed);  // ops/dropout.cpp

// ---- shape (ops/shape.cpp): differentiable views and copies ----
Tensor reshape(const Tensor& x, Shape shape);
Tensor transpose(const Tensor& x, int64_t a, int64_t b);
Tensor permute(const Tensor& x, std::vector<int64_t> order);
Tensor expand(const Tensor& x, Shape shape);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor contiguous(const Tensor& x);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);        // ops/concat.cpp
// Pieces of the given sizes along dim: differentiable views (each is a slice).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);  // ops/shape.cpp
// x without the indices [begin, end) of dim: the pieces on either side in one new tensor (a view
// where one piece is empty), ops/shape.cpp.
Tensor without_range(const Tensor& x, int64_t dim, int64_t begin, int64_t end);
Tensor index_select(const Tensor& x, const Tensor& idx);           // rows of x (dim 0); ops/index_select.cpp

// ---- vision (ops/patchify.cpp) ----
// x [B,C,H,W] -> [B, (H/p)*(W/p), C*p*p], columns ordered (c, ky, kx) like a conv weight
// [D, C, p, p] flattened: patch embedding = linear(patchify(x, p), W.reshape({D, -1}), b).
Tensor patchify(const Tensor& x, int64_t p);

}  // namespace dg

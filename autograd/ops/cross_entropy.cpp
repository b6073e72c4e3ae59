// cross_entropy: mean over rows of -sum_c target_c * log_softmax(logits)_c with
// label-smoothed targets (1 - eps) onehot + eps / C (PyTorch's definition). Rows whose
// label is < 0 are ignored and excluded from the mean. Fused: saves logits and the row
// log-sum-exp; backward is (softmax - target) / count.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kCrossEntropy("cross_entropy");

Tensor cross_entropy(const Tensor& logits, const Tensor& labels_in, double smoothing) {
  DG_CHECK(logits.dim() == 2, "cross_entropy: logits ", logits.desc(), " must be [N, C]");
  DG_CHECK(labels_in.dim() == 1 && labels_in.size(0) == logits.size(0), "cross_entropy: labels ", labels_in.desc(),
           " for logits ", logits.desc(), ": expected [", logits.size(0), "]");
  DG_CHECK(labels_in.dtype() == DType::I64 || labels_in.dtype() == DType::I32, "cross_entropy: labels ",
           labels_in.desc(), " must be i64 or i32");
  DG_CHECK(smoothing >= 0 && smoothing < 1, "cross_entropy: label smoothing ", smoothing, " not in [0, 1)");
  const int64_t N = logits.size(0), C = logits.size(1);
  Tensor labels = labels_in.to(DType::I64).contiguous();
  // Validate labels and count the rows that count (on the CPU: labels are small).
  std::vector<double> lv = labels.to_vector();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    DG_CHECK(lv[size_t(i)] < double(C), "cross_entropy: label ", int64_t(lv[size_t(i)]), " at row ", i,
             " is out of range for ", C, " classes");
    count += lv[size_t(i)] >= 0;
  }
  Tensor lc = logits.contiguous();
  Tensor loss_rows = Tensor::empty({N}, logits.dtype(), logits.device());
  Tensor lse = Tensor::empty({N}, logits.dtype(), logits.device());
  backend_of(lc).cross_entropy(lc, labels, smoothing, loss_rows, lse);
  Tensor y;
  {
    NoGradGuard ng;
    y = mul_scalar(sum(loss_rows), 1.0 / double(std::max<int64_t>(count, 1)));
  }
  if (Record* r = tape().record(kCrossEntropy, {logits}, y, str("smoothing=", smoothing))) {
    r->save("logits", lc);
    r->save("labels", labels);
    r->save("lse", lse);
    r->backward = [smoothing, count, N](Record& r, const Tensor& gy) {
      const Tensor& lc = r.saved_tensor("logits");
      // every row's loss gradient is gy / count (ignored rows are zeroed by the kernel)
      Tensor gloss = Tensor::full({N}, gy.item() / double(std::max<int64_t>(count, 1)), lc.dtype(), lc.device());
      Tensor g = Tensor::empty(lc.shape(), lc.dtype(), lc.device());
      backend_of(lc).cross_entropy_backward(lc, r.saved_tensor("labels"), r.saved_tensor("lse"), gloss, smoothing, g);
      return std::vector<Tensor>{g};
    };
  }
  return y;
}

DG_GRADCHECK(cross_entropy) {
  auto labels = [] { return Tensor::from_vector(std::vector<int64_t>{2, 0, 4, 1}, {4}); };
  return {
      {"plain", [] { return std::vector<Tensor>{randn64({4, 5}, 1)}; },
       [labels](const std::vector<Tensor>& x) { return cross_entropy(x[0], labels()); }},
      {"smoothing 0.1", [] { return std::vector<Tensor>{randn64({4, 5}, 2)}; },
       [labels](const std::vector<Tensor>& x) { return cross_entropy(x[0], labels(), 0.1); }},
      {"ignored row", [] { return std::vector<Tensor>{randn64({4, 5}, 3)}; },
       [](const std::vector<Tensor>& x) {
         return cross_entropy(x[0], Tensor::from_vector(std::vector<int64_t>{2, -1, 4, 1}, {4}), 0.1);
       }},
  };
}

}  // namespace dg

#include "train/grad_bucket.h"

#include "core/backend.h"
#include "core/error.h"

namespace dg::train {

int64_t GradientBucket::bytes_for(const nn::NamedTensors& params) {
  int64_t floats = 0;
  for (auto& [n, p] : params) floats += p.numel();
  return floats * int64_t(sizeof(float));
}

GradientBucket::GradientBucket(const nn::NamedTensors& params, Device dev) {
  floats_ = bytes_for(params) / int64_t(sizeof(float));
  buffer_ = Tensor::zeros({floats_}, DType::F32, dev);
}

void GradientBucket::all_reduce(const nn::NamedTensors& params, Comm& comm, double weight) {
  int64_t at = 0;
  auto part = [&](const Tensor& p) { return view::reshape(view::slice(buffer_, 0, at, at + p.numel()), p.shape()); };
  for (auto& [n, p] : params) {
    Tensor dst = part(p);
    if (p.grad().defined()) dst.copy_(p.grad());
    else dst.fill_(0);
    at += p.numel();
  }
  if (weight != 1.0) backend_of(buffer_).unary(UnaryOp::MulScalar, buffer_, buffer_, weight);  // in place: elementwise
  comm.all_reduce_sum(buffer_);
  at = 0;
  for (auto& [n, p] : params) {
    DG_CHECK(p.dtype() == DType::F32, "gradient all-reduce: '", n, "' is ", p.desc(), ", expected f32");
    if (!p.grad().defined()) {
      Tensor leaf = p;
      leaf.impl()->grad = Tensor::zeros(p.shape(), DType::F32, p.device()).impl_ptr();
    }
    p.grad().copy_(part(p));
    at += p.numel();
  }
}

}  // namespace dg::train

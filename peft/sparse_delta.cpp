#include "peft/sparse_delta.h"

#include <limits>

#include "core/error.h"

namespace dg::peft {

Tensor mask_positions(const Tensor& mask) {
  DG_CHECK(mask.numel() <= std::numeric_limits<int32_t>::max(), "sparse storage: a tensor of ", mask.numel(),
           " elements has positions past int32");
  const std::vector<double> m = mask.to_vector();
  std::vector<int64_t> pos;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i] != 0.0) pos.push_back(int64_t(i));
  return Tensor::from_vector(pos, {int64_t(pos.size())}).to(DType::I32);
}

Tensor positions_mask(const Tensor& positions, const Shape& shape) {
  Tensor out = Tensor::zeros(shape);
  float* o = out.data<float>();
  for (double p : positions.to_vector()) o[int64_t(p)] = 1.0f;
  return out;
}

Tensor checked_positions(const Tensor& positions, int64_t numel, const std::string& what, const std::string& name) {
  DG_CHECK(positions.dim() == 1, what, ": '", name, kSparseIndices, "' must be 1-D, has shape ",
           shape_str(positions.shape()));
  DG_CHECK(positions.dtype() == DType::I32 || positions.dtype() == DType::I64, what, ": '", name, kSparseIndices,
           "' must hold integers (I32 or I64)");
  const std::vector<double> p = positions.to_vector();
  for (size_t i = 0; i < p.size(); ++i) {
    DG_CHECK(p[i] >= 0 && p[i] < double(numel), what, ": '", name, kSparseIndices, "'[", i, "] = ", int64_t(p[i]),
             " is outside the tensor's ", numel, " elements");
    DG_CHECK(i == 0 || p[i] > p[i - 1], what, ": '", name, kSparseIndices, "' must be strictly increasing (sorted, ",
             "no duplicates); position ", i, " holds ", int64_t(p[i]), " after ", int64_t(p[i - 1]));
  }
  return positions.to(DType::I32);
}

Tensor gather_positions(const Tensor& dense, const Tensor& positions) {
  const std::vector<double> d = dense.to_vector();
  std::vector<double> v;
  v.reserve(size_t(positions.numel()));
  for (double p : positions.to_vector()) v.push_back(d[size_t(p)]);
  return Tensor::from_vector(v, {int64_t(v.size())}).to(dense.dtype());
}

void scatter_positions(Tensor& dense, const Tensor& positions, const Tensor& values) {
  DG_CHECK(values.numel() == positions.numel(), "sparse storage: ", values.numel(), " values for ",
           positions.numel(), " positions");
  // through a CPU copy: `dense` may live on the GPU; double holds every float32 value exactly
  Tensor host = dense.to(Device::CPU).to(DType::F64).contiguous();
  double* h = host.data<double>();
  const std::vector<double> p = positions.to_vector(), v = values.to_vector();
  for (size_t i = 0; i < p.size(); ++i) h[int64_t(p[i])] = v[i];
  dense.copy_(host.to(dense.dtype()).to(dense.device()));
}

void put_sparse(std::map<std::string, Tensor>& out, const std::string& name, const Tensor& positions,
                const Tensor& values) {
  out[name + kSparseIndices] = positions;
  if (values.defined()) out[name + kSparseValues] = values;
}

std::vector<std::string> sparse_names(const std::map<std::string, Tensor>& file) {
  std::vector<std::string> out;
  for (const auto& [k, t] : file)
    if (k.size() > kSparseIndices.size() && k.compare(k.size() - kSparseIndices.size(), kSparseIndices.size(), kSparseIndices) == 0)
      out.push_back(k.substr(0, k.size() - kSparseIndices.size()));
  return out;
}

}  // namespace dg::peft

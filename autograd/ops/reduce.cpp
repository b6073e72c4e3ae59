// sum / mean / max over dims. Backward of sum and mean broadcasts the gradient back
// (a stride-0 view, no copy); max sends it to the first maximal element.
#include <algorithm>

#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kSum("sum"), kMean("mean"), kMax("max");

static std::vector<int64_t> norm_dims(std::vector<int64_t> dims, int64_t nd, const char* op) {
  if (dims.empty())
    for (int64_t d = 0; d < nd; ++d) dims.push_back(d);
  for (int64_t& d : dims) d = wrap_dim(d, nd, op);
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  return dims;
}

// Sum over sorted dims, keeping them as size 1. x any layout.
static Tensor sum_keep(const Tensor& x, const std::vector<int64_t>& dims, ReduceOp op = ReduceOp::Sum) {
  Tensor cur = x.contiguous();
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) {
    const int64_t d = *it;
    Shape s = cur.shape();
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < d; ++i) outer *= s[size_t(i)];
    for (size_t i = size_t(d) + 1; i < s.size(); ++i) inner *= s[i];
    const int64_t n = s[size_t(d)];
    s[size_t(d)] = 1;
    Tensor out = Tensor::empty(s, cur.dtype(), cur.device());
    backend_of(cur).reduce(op, cur, outer, n, inner, out);
    cur = out;
  }
  return cur;
}

static Shape drop_dims(const Shape& s, const std::vector<int64_t>& dims) {
  Shape out;
  for (size_t i = 0; i < s.size(); ++i)
    if (!std::binary_search(dims.begin(), dims.end(), int64_t(i))) out.push_back(s[i]);
  return out;
}

static Tensor reduce_op(const OpDef& def, const Tensor& x, std::vector<int64_t> dims_in, bool keepdim, double scale) {
  std::vector<int64_t> dims = norm_dims(std::move(dims_in), x.dim(), def.name);
  Tensor y = sum_keep(x, dims);
  if (scale != 1.0) backend_of(y).unary(UnaryOp::MulScalar, y, y, scale);
  Shape keep_shape = y.shape();
  if (!keepdim) y = view::reshape(y, drop_dims(x.shape(), dims));
  if (Record* r = tape().record(def, {x}, y, str("dims=", dims.size(), keepdim ? " keepdim" : ""))) {
    r->backward = [keep_shape, scale](Record& r, const Tensor& gy) {
      Tensor g = view::reshape(gy, keep_shape);
      if (scale != 1.0) g = mul_scalar(g, scale);
      return std::vector<Tensor>{view::expand(g, r.in_shapes[0])};
    };
  }
  return y;
}

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) { return reduce_op(kSum, x, dims, keepdim, 1.0); }

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  std::vector<int64_t> d = norm_dims(dims, x.dim(), "mean");
  int64_t n = 1;
  for (int64_t i : d) n *= x.size(i);
  return reduce_op(kMean, x, d, keepdim, 1.0 / double(std::max<int64_t>(n, 1)));
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const size_t lead = x.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < x.shape().size(); ++i)
    if (i < lead || (shape[i - lead] == 1 && x.shape()[i] != 1)) dims.push_back(int64_t(i));
  Tensor s = dims.empty() ? x : sum(x, dims, true);
  return view::reshape(s, shape);
}

Tensor argmax(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "argmax");
  Tensor xc = x.contiguous();
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < dim; ++i) outer *= x.size(i);
  for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
  Shape s = x.shape();
  s.erase(s.begin() + dim);
  Tensor out = Tensor::empty(s, DType::I64, x.device());
  backend_of(x).argmax(xc, outer, x.size(dim), inner, out);
  return out;
}

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  dim = wrap_dim(dim, x.dim(), "max");
  Tensor y = sum_keep(x, {dim}, ReduceOp::Max);
  Shape keep_shape = y.shape();
  if (!keepdim) y = view::squeeze(y, dim);
  if (Record* r = tape().record(kMax, {x}, y, str("dim=", dim))) {
    r->save("argmax", argmax(x, dim));
    r->backward = [dim, keep_shape](Record& r, const Tensor& gy) {
      // scatter gy into the argmax positions: flat row index (o * n + k) * inner + j
      const Shape& xs = r.in_shapes[0];
      int64_t outer = 1, inner = 1, n = xs[size_t(dim)];
      for (int64_t i = 0; i < dim; ++i) outer *= xs[size_t(i)];
      for (size_t i = size_t(dim) + 1; i < xs.size(); ++i) inner *= xs[i];
      Tensor am = r.saved_tensor("argmax").to(Device::CPU).contiguous();
      std::vector<int64_t> flat(size_t(outer * inner));
      const int64_t* a = am.data<int64_t>();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < inner; ++j) flat[size_t(o * inner + j)] = (o * n + a[o * inner + j]) * inner + j;
      Tensor idx = Tensor::from_vector(flat, {outer * inner}).to(gy.device());
      Tensor gx = Tensor::zeros({outer * n * inner, 1}, gy.dtype(), gy.device());
      backend_of(gy).index_add(view::reshape(gy, {outer * inner, 1}), idx, gx);
      return std::vector<Tensor>{view::reshape(gx, xs)};
    };
  }
  return y;
}

DG_GRADCHECK(sum) {
  return {
      {"all", [] { return std::vector<Tensor>{randn64({3, 4}, 1)}; },
       [](const std::vector<Tensor>& x) { return sum(x[0]); }},
      {"dims 0,2 keepdim", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 2)}; },
       [](const std::vector<Tensor>& x) { return sum(x[0], {0, 2}, true); }},
      {"last", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 3)}; },
       [](const std::vector<Tensor>& x) { return sum(x[0], {-1}); }},
  };
}
DG_GRADCHECK(mean) {
  return {
      {"dim 1", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 4)}; },
       [](const std::vector<Tensor>& x) { return mean(x[0], {1}); }},
      {"all", [] { return std::vector<Tensor>{randn64({5}, 5)}; }, [](const std::vector<Tensor>& x) { return mean(x[0]); }},
  };
}
DG_GRADCHECK(max) {
  // distinct values so the maximum is unique and the function is smooth around the input
  auto make = [] {
    Tensor t = Tensor::from_vector(std::vector<double>{0.3, -1.2, 2.5, 0.9, 1.7, -0.4, 0.1, 2.2, -2.0, 1.1, 0.6, -0.8},
                                   {2, 3, 2});
    return std::vector<Tensor>{t.set_requires_grad(true)};
  };
  return {
      {"dim 1", make, [](const std::vector<Tensor>& x) { return max(x[0], 1); }},
      {"dim -1 keepdim", make, [](const std::vector<Tensor>& x) { return max(x[0], -1, true); }},
  };
}

}  // namespace dg

// Differentiable shape ops. Views (reshape of a contiguous tensor, transpose, permute,
// expand, squeeze, unsqueeze, slice) share storage and save nothing; their backward
// maps the gradient back to the input's shape.
#include <numeric>

#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kReshape("reshape"), kTranspose("transpose"), kPermute("permute"), kExpand("expand"),
    kSqueeze("squeeze"), kUnsqueeze("unsqueeze"), kContiguous("contiguous"), kSlice("slice");

// Record a shape op whose backward only reshapes/reorders: g -> back(g).
template <class Back>
static Tensor record_view(const OpDef& def, const Tensor& x, Tensor y, std::string attrs, Back back) {
  if (Record* r = tape().record(def, {x}, y, std::move(attrs)))
    r->backward = [back](Record& r, const Tensor& gy) { return std::vector<Tensor>{back(r, gy)}; };
  return y;
}

Tensor reshape(const Tensor& x, Shape shape) {
  Tensor y = view::reshape(x, shape);
  return record_view(kReshape, x, y, shape_str(y.shape()),
                     [](Record& r, const Tensor& g) { return view::reshape(g, r.in_shapes[0]); });
}

Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  return record_view(kTranspose, x, view::transpose(x, a, b), str(a, ",", b),
                     [a, b](Record&, const Tensor& g) { return view::transpose(g, a, b); });
}

Tensor permute(const Tensor& x, std::vector<int64_t> order) {
  Tensor y = view::permute(x, order);
  std::vector<int64_t> inv(order.size());
  for (size_t i = 0; i < order.size(); ++i) inv[size_t(wrap_dim(order[i], x.dim(), "permute"))] = int64_t(i);
  return record_view(kPermute, x, y, "", [inv](Record&, const Tensor& g) { return view::permute(g, inv); });
}

Tensor expand(const Tensor& x, Shape shape) {
  return record_view(kExpand, x, view::expand(x, shape), shape_str(shape),
                     [](Record& r, const Tensor& g) { return sum_to(g, r.in_shapes[0]); });
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  return record_view(kSqueeze, x, view::squeeze(x, dim), str(dim),
                     [](Record& r, const Tensor& g) { return view::reshape(g, r.in_shapes[0]); });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  return record_view(kUnsqueeze, x, view::unsqueeze(x, dim), str(dim),
                     [](Record& r, const Tensor& g) { return view::reshape(g, r.in_shapes[0]); });
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  return record_view(kContiguous, x, x.contiguous(), "", [](Record&, const Tensor& g) { return g; });
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  dim = wrap_dim(dim, x.dim(), "slice");
  Tensor y = view::slice(x, dim, start, end);
  const int64_t n = x.size(dim), s = start < 0 ? start + n : start;
  return record_view(kSlice, x, y, str(dim, ":", s, ":", end), [dim, s](Record& r, const Tensor& g) {
    Tensor gx = Tensor::zeros(r.in_shapes[0], g.dtype(), g.device());
    backend_of(g).copy(g, view::slice(gx, dim, s, s + g.size(dim)));
    return gx;
  });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  DG_CHECK(total == x.size(dim), "split: sizes add up to ", total, ", but dim ", dim, " of ", x.desc(), " has ",
           x.size(dim));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(x, dim, at, at + s));
    at += s;
  }
  return out;
}

static const OpDef kWithoutRange("without_range");

// One copy of the two pieces forward; backward writes the gradient's two pieces into one buffer
// and zeros only the removed range (slice + concat would zero-fill x's whole shape once per
// piece and add the two).
Tensor without_range(const Tensor& x, int64_t dim, int64_t begin, int64_t end) {
  dim = wrap_dim(dim, x.dim(), "without_range");
  const int64_t n = x.size(dim);
  DG_CHECK(0 <= begin && begin <= end && end <= n, "without_range: [", begin, ", ", end, ") is not a range of dim ",
           dim, " of ", x.desc());
  if (begin == end) return x;
  if (begin == 0) return slice(x, dim, end, n);
  if (end == n) return slice(x, dim, 0, begin);
  Shape s = x.shape();
  s[size_t(dim)] = n - (end - begin);
  Tensor y = Tensor::empty(s, x.dtype(), x.device());
  Backend& be = backend_of(x);
  be.copy(view::slice(x, dim, 0, begin), view::slice(y, dim, 0, begin));
  be.copy(view::slice(x, dim, end, n), view::slice(y, dim, begin, s[size_t(dim)]));
  if (Record* r = tape().record(kWithoutRange, {x}, y, str(dim, ":", begin, ":", end))) {
    r->backward = [dim, begin, end, n](Record& r, const Tensor& gy) {
      Tensor gx = Tensor::empty(r.in_shapes[0], gy.dtype(), gy.device());
      Backend& be = backend_of(gy);
      be.copy(view::slice(gy, dim, 0, begin), view::slice(gx, dim, 0, begin));
      be.copy(view::slice(gy, dim, begin, gy.size(dim)), view::slice(gx, dim, end, n));
      be.fill(view::slice(gx, dim, begin, end), 0.0);
      return std::vector<Tensor>{gx};
    };
  }
  return y;
}

namespace {
std::vector<Tensor> one(const Shape& s, uint64_t seed) { return {randn64(s, seed)}; }
}  // namespace

DG_GRADCHECK(reshape) {
  return {{"[2,3,4]->[6,4]", [] { return one({2, 3, 4}, 1); },
           [](const std::vector<Tensor>& x) { return reshape(x[0], {6, -1}); }},
          {"of a transpose", [] { return one({3, 4}, 2); },
           [](const std::vector<Tensor>& x) { return reshape(transpose(x[0], 0, 1), {12}); }}};
}
DG_GRADCHECK(transpose) {
  return {{"0,2", [] { return one({2, 3, 4}, 3); }, [](const std::vector<Tensor>& x) { return transpose(x[0], 0, 2); }}};
}
DG_GRADCHECK(permute) {
  return {{"2,0,1", [] { return one({2, 3, 4}, 4); }, [](const std::vector<Tensor>& x) { return permute(x[0], {2, 0, 1}); }}};
}
DG_GRADCHECK(expand) {
  return {{"[3,1]->[2,3,4]", [] { return one({3, 1}, 5); },
           [](const std::vector<Tensor>& x) { return expand(x[0], {2, 3, 4}); }}};
}
DG_GRADCHECK(squeeze) {
  return {{"dim 1", [] { return one({3, 1, 2}, 6); }, [](const std::vector<Tensor>& x) { return squeeze(x[0], 1); }}};
}
DG_GRADCHECK(unsqueeze) {
  return {{"dim -1", [] { return one({3, 2}, 7); }, [](const std::vector<Tensor>& x) { return unsqueeze(x[0], -1); }}};
}
DG_GRADCHECK(contiguous) {
  return {{"of a permute", [] { return one({2, 3}, 8); },
           [](const std::vector<Tensor>& x) { return contiguous(transpose(x[0], 0, 1)); }}};
}
DG_GRADCHECK(slice) {
  return {{"dim 1 [1:3]", [] { return one({2, 4, 3}, 9); }, [](const std::vector<Tensor>& x) { return slice(x[0], 1, 1, 3); }},
          {"negative start", [] { return one({5, 2}, 10); }, [](const std::vector<Tensor>& x) { return slice(x[0], 0, -2, 5); }}};
}

DG_GRADCHECK(without_range) {
  return {{"[1:3) of dim 1", [] { return one({2, 5, 3}, 11); },
           [](const std::vector<Tensor>& x) { return without_range(x[0], 1, 1, 3); }},
          {"[2:3) of the last dim", [] { return one({3, 4}, 12); },
           [](const std::vector<Tensor>& x) { return without_range(x[0], -1, 2, 3); }}};
}

}  // namespace dg

#include "core/tensor.h"

#include <atomic>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "core/backend.h"

namespace dg {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
    st[size_t(i)] = acc;
    acc *= s[size_t(i)];
  }
  return st;
}

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t w = d < 0 ? d + ndim : d;
  DG_CHECK(w >= 0 && w < ndim, op, ": dim ", d, " out of range for a ", ndim, "-d tensor");
  return w;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    DG_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Storage::Storage(size_t n, Device d) : nbytes(n), device(d) {
  ptr = backend(d).alloc(n ? n : 1);
}
Storage::~Storage() { backend(device).free(ptr, nbytes ? nbytes : 1); }

static std::atomic<uint64_t> g_next_id{1};
TensorImpl::TensorImpl() : id(g_next_id++) {}

// ---- factories ----
static std::string mib(int64_t bytes) {
  char b[64];
  std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / double(1 << 20));
  return b;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  for (int64_t d : shape) DG_CHECK(d >= 0, "Tensor::empty: negative size in shape ", shape_str(shape));
  // The message of a failed allocation names the tensor: "out of memory" alone does not say
  // whether the batch, the model or a config value asked for too much.
  auto what = [&](const std::string& bytes) {
    return str("allocating a ", dtype_name(dtype), " tensor of shape ", shape_str(shape), " (", bytes, ") on ",
               device_name(dev));
  };
  int64_t bytes = int64_t(dtype_size(dtype));
  for (int64_t d : shape)
    if (__builtin_mul_overflow(bytes, d, &bytes)) throw OutOfMemory(what("more bytes than an address space holds"));
  auto impl = std::make_shared<TensorImpl>();
  try {
    impl->storage = std::make_shared<Storage>(size_t(bytes), dev);
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(what(mib(bytes)));
  } catch (const OutOfMemory&) {
    throw OutOfMemory(what(mib(bytes)));
  }
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}
Tensor Tensor::full(const Shape& shape, double v, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  backend(dev).fill(t, v);
  return t;
}
Tensor Tensor::zeros(const Shape& s, DType dt, Device d) { return full(s, 0.0, dt, d); }
Tensor Tensor::ones(const Shape& s, DType dt, Device d) { return full(s, 1.0, dt, d); }
Tensor Tensor::scalar(double v, DType dt, Device d) { return full({}, v, dt, d); }

template <class T>
static Tensor from_vec(const std::vector<T>& v, const Shape& shape) {
  DG_CHECK(int64_t(v.size()) == shape_numel(shape), "Tensor::from_vector: ", v.size(),
           " values for shape ", shape_str(shape));
  Tensor t = Tensor::empty(shape, dtype_of<T>());
  std::copy(v.begin(), v.end(), t.data<T>());
  return t;
}
Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& s) { return from_vec(v, s); }
Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& s) { return from_vec(v, s); }
Tensor Tensor::from_vector(const std::vector<int64_t>& v, const Shape& s) { return from_vec(v, s); }
Tensor Tensor::arange(int64_t n, DType dtype) {
  std::vector<double> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.0);
  return Tensor::from_vector(v, {n}).to(dtype);
}

// ---- accessors ----
int64_t Tensor::size(int64_t d) const { return shape()[size_t(wrap_dim(d, dim(), "size"))]; }
int64_t Tensor::stride(int64_t d) const { return strides()[size_t(wrap_dim(d, dim(), "stride"))]; }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape()[size_t(i)] == 1) continue;
    if (strides()[size_t(i)] != acc) return false;
    acc *= shape()[size_t(i)];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!defined()) return "undefined tensor";
  return str(dtype_name(dtype()), shape_str(shape()), " ", device_name(device()),
             impl_->name.empty() ? "" : " '" + impl_->name + "'");
}

std::vector<double> Tensor::to_vector() const {
  Tensor c = to(Device::CPU).to(DType::F64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}
std::vector<float> Tensor::to_float_vector() const {
  Tensor c = to(Device::CPU).to(DType::F32).contiguous();
  const float* p = c.data<float>();
  return std::vector<float>(p, p + c.numel());
}
double Tensor::item() const {
  DG_CHECK(numel() == 1, "item(): tensor ", desc(), " has ", numel(), " elements, expected 1");
  return to_vector()[0];
}

Tensor& Tensor::set_requires_grad(bool r) {
  DG_CHECK(impl_->is_leaf, "set_requires_grad: ", desc(), " is not a leaf (it was produced by an op)");
  DG_CHECK(!r || is_float(dtype()), "set_requires_grad: ", desc(), " is not floating point");
  impl_->requires_grad = r;
  return *this;
}

// ---- copies ----
Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  backend(device()).copy(*this, out);
  return out;
}
Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }
Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = empty(shape(), dtype(), dev);
  Tensor src = contiguous();
  backend(dev == Device::CPU ? device() : dev).copy(src, out);
  return out;
}
Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(shape(), dt, device());
  backend(device()).copy(*this, out);
  return out;
}
Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->offset = impl_->offset;
  impl->dtype = impl_->dtype;
  impl->name = impl_->name;
  return Tensor(impl);
}
void Tensor::copy_(const Tensor& src) {
  DG_CHECK(src.shape() == shape(), "copy_: source ", src.desc(), " into ", desc(), ": shapes differ");
  Device d = device() == Device::CUDA ? Device::CUDA : src.device();
  backend(d).copy(src, *this);
  bump_version();
}
void Tensor::move_to_(Device dev) {
  if (device() == dev) return;
  Tensor moved = to(dev);  // contiguous copy on `dev`
  impl_->storage = moved.impl_->storage;
  impl_->strides = moved.impl_->strides;
  impl_->offset = 0;
  impl_->grad.reset();
}

void Tensor::fill_(double v) {
  backend(device()).fill(*this, v);
  bump_version();
}

// ---- raw views ----
namespace view {

static Tensor make_view(const Tensor& t, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = t.dtype();
  return Tensor(impl);
}

Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset) {
  DG_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape_str(shape), " vs strides ",
           shape_str(strides));
  int64_t hi = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    DG_CHECK(shape[i] >= 0 && strides[i] >= 0, "as_strided: negative size or stride");
    if (shape[i] == 0) { hi = offset - 1; break; }
    hi += (shape[i] - 1) * strides[i];
  }
  DG_CHECK(offset >= 0 && (hi + 1) * int64_t(dtype_size(t.dtype())) <= int64_t(t.impl()->storage->nbytes),
           "as_strided: view ", shape_str(shape), " at offset ", offset, " exceeds storage of ", t.desc());
  return make_view(t, shape, strides, offset);
}

Tensor reshape(const Tensor& t, Shape shape) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      DG_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape));
      infer = int64_t(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    DG_CHECK(known > 0 && t.numel() % known == 0, "reshape: cannot infer -1 in ", shape_str(shape),
             " for ", t.desc());
    shape[size_t(infer)] = t.numel() / known;
  }
  DG_CHECK(shape_numel(shape) == t.numel(), "reshape: ", t.desc(), " (", t.numel(), " elements) to ",
           shape_str(shape));
  Tensor c = t.contiguous();
  return make_view(c, shape, contiguous_strides(shape), c.offset());
}

Tensor transpose(const Tensor& t, int64_t a, int64_t b) {
  std::vector<int64_t> order(size_t(t.dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_dim(a, t.dim(), "transpose"))], order[size_t(wrap_dim(b, t.dim(), "transpose"))]);
  return permute(t, order);
}

Tensor permute(const Tensor& t, const std::vector<int64_t>& order) {
  DG_CHECK(int64_t(order.size()) == t.dim(), "permute: order of ", order.size(), " dims for ", t.desc());
  Shape s(order.size()), st(order.size());
  std::vector<bool> seen(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t d = wrap_dim(order[i], t.dim(), "permute");
    DG_CHECK(!seen[size_t(d)], "permute: dim ", d, " repeated");
    seen[size_t(d)] = true;
    s[i] = t.shape()[size_t(d)];
    st[i] = t.strides()[size_t(d)];
  }
  return make_view(t, s, st, t.offset());
}

Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step) {
  dim = wrap_dim(dim, t.dim(), "slice");
  int64_t n = t.shape()[size_t(dim)];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  DG_CHECK(step >= 1 && start >= 0 && start <= end, "slice: [", start, ":", end, ":", step, "] on dim ", dim,
           " of ", t.desc());
  Shape s = t.shape(), st = t.strides();
  s[size_t(dim)] = (end - start + step - 1) / step;
  st[size_t(dim)] *= step;
  return make_view(t, s, st, t.offset() + start * t.strides()[size_t(dim)]);
}

Tensor expand(const Tensor& t, const Shape& shape) {
  DG_CHECK(shape.size() >= size_t(t.dim()), "expand: ", t.desc(), " to ", shape_str(shape));
  size_t lead = shape.size() - size_t(t.dim());
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) continue;
    int64_t d = t.shape()[i - lead];
    DG_CHECK(d == shape[i] || d == 1, "expand: ", t.desc(), " to ", shape_str(shape));
    st[i] = d == 1 && shape[i] != 1 ? 0 : t.strides()[i - lead];
  }
  return make_view(t, shape, st, t.offset());
}

Tensor squeeze(const Tensor& t, int64_t dim) {
  dim = wrap_dim(dim, t.dim(), "squeeze");
  DG_CHECK(t.shape()[size_t(dim)] == 1, "squeeze: dim ", dim, " of ", t.desc(), " is not 1");
  Shape s = t.shape(), st = t.strides();
  s.erase(s.begin() + dim);
  st.erase(st.begin() + dim);
  return make_view(t, s, st, t.offset());
}

Tensor unsqueeze(const Tensor& t, int64_t dim) {
  dim = wrap_dim(dim, t.dim() + 1, "unsqueeze");
  Shape s = t.shape(), st = t.strides();
  int64_t stride = dim < t.dim() ? t.strides()[size_t(dim)] * t.shape()[size_t(dim)] : 1;
  s.insert(s.begin() + dim, 1);
  st.insert(st.begin() + dim, stride);
  return make_view(t, s, st, t.offset());
}

}  // namespace view
}  // namespace dg

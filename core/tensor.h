// The tensor: a view (shape, strides, offset, dtype) onto refcounted storage.
// Views share storage; `contiguous()` copies only when needed. Autograd metadata
// (requires_grad, grad, is_leaf) lives here as plain fields: core knows nothing
// about the tape, autograd/ fills them in.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace dg {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// Raw memory on one device. `version` counts in-place writes; the tape compares it
// to detect a saved tensor that was modified before backward read it.
struct Storage {
  void* ptr = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  uint64_t version = 0;
  // Something computed from this memory that should live exactly as long as it does, owned by the
  // layer that made it (autograd/autocast.cpp: a gradient's bf16 copy, read by several backward ops).
  std::shared_ptr<void> derived;
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;  // strides in elements
  int64_t offset = 0;    // in elements
  DType dtype = DType::F32;
  // autograd
  bool requires_grad = false;  // leaf: trainable; non-leaf: produced by a recorded op
  bool is_leaf = true;
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient of a trainable leaf
  std::string name;                  // parameter name, for messages and tape dumps
  // A parameter its owner exempts from weight decay whatever its name and shape (VPT's prompt
  // tokens, peft/deltas.cpp): the optimizer (nn/optim.h) reads it, core only carries it.
  bool no_weight_decay = false;
  uint64_t id;                       // unique per impl; the tape keys gradients by it
  TensorImpl();
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // factories
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<double>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<int64_t>& v, const Shape& shape);
  static Tensor scalar(double v, DType dtype = DType::F32, Device dev = Device::CPU);
  static Tensor arange(int64_t n, DType dtype = DType::F32);

  bool defined() const { return impl_ != nullptr; }
  explicit operator bool() const { return defined(); }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(impl_->shape); }
  int64_t offset() const { return impl_->offset; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  bool is_contiguous() const;
  std::string desc() const;  // "f32[2, 3] cpu" for messages

  // Raw pointer to element 0 of this view (after offset). Checked dtype.
  template <class T> T* data() const {
    DG_CHECK(dtype_of<T>() == dtype(), "data<", dtype_name(dtype_of<T>()), ">() on a tensor of ", desc());
    return static_cast<T*>(impl_->storage->ptr) + impl_->offset;
  }
  void* raw() const { return static_cast<char*>(impl_->storage->ptr) + impl_->offset * dtype_size(dtype()); }
  double item() const;                        // single element, as double (any dtype, any device)
  std::vector<double> to_vector() const;      // all elements in logical order, as double
  std::vector<float> to_float_vector() const;

  // autograd flags (see autograd/tape.h for the semantics)
  bool requires_grad() const { return impl_->requires_grad; }
  Tensor& set_requires_grad(bool r);  // only on leaves
  Tensor grad() const { return Tensor(impl_->grad); }
  void zero_grad() { impl_->grad.reset(); }
  const std::string& name() const { return impl_->name; }
  bool no_weight_decay() const { return impl_->no_weight_decay; }
  void set_no_weight_decay(bool v) { impl_->no_weight_decay = v; }
  Tensor& set_name(std::string n) { impl_->name = std::move(n); return *this; }
  uint64_t version() const { return impl_->storage->version; }
  void bump_version() const { ++impl_->storage->version; }

  // Copies (never views, never recorded): a new contiguous tensor.
  Tensor clone() const;
  Tensor contiguous() const;  // *this if already contiguous
  Tensor to(Device dev) const;
  Tensor to(DType dt) const;
  Tensor detach() const;  // same storage, no autograd flags
  // In place, bumps the version: copy values from src (same shape; dtype/device may differ).
  void copy_(const Tensor& src);
  void fill_(double v);
  // Move this tensor's data to another device in place: every handle sharing this
  // TensorImpl (a module's parameter registry, a layer's member) sees the new storage.
  // Drops the gradient. Views of the old storage keep the old data.
  void move_to_(Device dev);

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Raw views (no autograd): the differentiable versions are in autograd/ops.h.
namespace view {
Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset);
Tensor reshape(const Tensor& t, Shape shape);  // one -1 allowed; copies if not viewable
Tensor transpose(const Tensor& t, int64_t a, int64_t b);
Tensor permute(const Tensor& t, const std::vector<int64_t>& order);
Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor expand(const Tensor& t, const Shape& shape);  // broadcasting view (stride 0)
Tensor squeeze(const Tensor& t, int64_t dim);
Tensor unsqueeze(const Tensor& t, int64_t dim);
}  // namespace view

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace dg

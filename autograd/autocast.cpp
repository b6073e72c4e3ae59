#include "autograd/autocast.h"

#include <memory>
#include <unordered_map>

#include "core/backend.h"

namespace dg {

static thread_local DType g_autocast = DType::F32;

DType autocast_dtype() { return g_autocast; }

AutocastGuard::AutocastGuard(DType lowp) : prev_(g_autocast) {
  DG_CHECK(lowp == DType::BF16 || lowp == DType::F32, "autocast: precision ", dtype_name(lowp),
           " is not supported (expected bf16, or f32 for off; f16 would need loss scaling)");
  g_autocast = lowp;
}
AutocastGuard::~AutocastGuard() { g_autocast = prev_; }

DType parse_precision(const std::string& s, const std::string& what) {
  if (s == "f32" || s == "fp32") return DType::F32;
  if (s == "bf16") return DType::BF16;
  throw Error(str(what, ": precision '", s, "': expected 'f32' or 'bf16'"));
}

namespace {
// A bf16 copy is a copy of data, not of a tensor object: every view of one storage that reads the
// same elements in the same order shares it (the backward's GEMMs each take their own [B*T, C]
// view of a [B, T, C] gradient). A contiguous view is keyed by its first element and size alone,
// any other by its exact layout.
struct Key {
  const Storage* storage;
  int64_t offset;
  Shape shape, strides;
  bool operator==(const Key&) const = default;
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = std::hash<const void*>()(k.storage) ^ (std::hash<int64_t>()(k.offset) * 0x9e3779b97f4a7c15ull);
    for (int64_t v : k.shape) h = h * 31 + std::hash<int64_t>()(v);
    for (int64_t v : k.strides) h = h * 37 + std::hash<int64_t>()(v);
    return h;
  }
};
Key key_of(const Tensor& t) {
  const TensorImpl& i = *t.impl();
  if (t.is_contiguous()) return {i.storage.get(), i.offset, {t.numel()}, {1}};
  return {i.storage.get(), i.offset, i.shape, i.strides};
}
// Both sides held weakly: the map keeps no memory alive (the source's storage does, below). The
// source storage's weak pointer tells a reused address from the storage that was cached.
struct Entry {
  std::weak_ptr<Storage> src;
  uint64_t version;
  std::weak_ptr<Storage> low;
};
struct LowpCache {
  std::unordered_map<Key, Entry, KeyHash> map;
  size_t sweep_at = 256;
  void sweep() {
    for (auto it = map.begin(); it != map.end();) {
      if (it->second.src.expired() || it->second.low.expired()) it = map.erase(it);
      else ++it;
    }
    sweep_at = std::max<size_t>(256, 2 * map.size());
  }
};
thread_local LowpCache g_cache;

// The cached copy as a contiguous bf16 tensor of t's shape (a new view object of its storage).
Tensor low_view(std::shared_ptr<Storage> low, const Tensor& t) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(low);
  impl->shape = t.shape();
  impl->strides = contiguous_strides(t.shape());
  impl->dtype = DType::BF16;
  return Tensor(impl);
}
}  // namespace

Tensor to_lowp(const Tensor& t) {
  if (t.dtype() == DType::BF16) return t;
  DG_CHECK(t.dtype() == DType::F32, "to_lowp: expected an f32 tensor, got ", t.desc());
  const Key key = key_of(t);
  auto it = g_cache.map.find(key);
  if (it != g_cache.map.end() && it->second.src.lock() == t.impl()->storage && it->second.version == t.version())
    if (auto low = it->second.low.lock()) return low_view(std::move(low), t);
  Tensor low = Tensor::empty(t.shape(), DType::BF16, t.device());
  backend_of(t).copy(t, low);
  g_cache.map[key] = Entry{t.impl()->storage, t.version(), low.impl()->storage};
  // The copy lives as long as its source: the backward's readers of one gradient are separate
  // records (LoRA's dB = dy^T h and dh = dy B, then the base's dx = dy W), each dropping its copy
  // before the next asks; held by its users alone, the qkv gradient was converted three times a
  // block. Parameters are left out: a frozen weight's copy would stay for the whole run.
  const bool parameter = t.impl()->is_leaf && !t.name().empty();
  if (!parameter) t.impl()->storage->derived = low.impl()->storage;
  if (g_cache.map.size() >= g_cache.sweep_at) g_cache.sweep();
  return low;
}

bool lowp_gemm(const Tensor& a, const Tensor& b) {
  if (a.dtype() == DType::BF16 || b.dtype() == DType::BF16) {
    DG_CHECK((a.dtype() == DType::BF16 || a.dtype() == DType::F32) &&
                 (b.dtype() == DType::BF16 || b.dtype() == DType::F32),
             "GEMM operands ", a.desc(), " and ", b.desc(), ": a bf16 operand pairs with bf16 or f32");
    return true;
  }
  return autocast_on() && a.dtype() == DType::F32 && b.dtype() == DType::F32;
}

}  // namespace dg

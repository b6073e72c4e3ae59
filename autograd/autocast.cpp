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
// Source impl -> its bf16 copy. Both held weakly: the cache never keeps memory alive. The
// source's weak pointer tells a reused address from the tensor that was cached.
struct Entry {
  std::weak_ptr<TensorImpl> src;
  const Storage* storage;  // move_to_ swaps an impl's storage: a copy of the old one is stale
  uint64_t version;
  std::weak_ptr<TensorImpl> low;
};
struct LowpCache {
  std::unordered_map<const TensorImpl*, Entry> map;
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
}  // namespace

Tensor to_lowp(const Tensor& t) {
  if (t.dtype() == DType::BF16) return t;
  DG_CHECK(t.dtype() == DType::F32, "to_lowp: expected an f32 tensor, got ", t.desc());
  auto it = g_cache.map.find(t.impl());
  if (it != g_cache.map.end()) {
    Entry& e = it->second;
    if (e.src.lock() == t.impl_ptr() && e.storage == t.impl()->storage.get() && e.version == t.version())
      if (auto low = e.low.lock()) return Tensor(low);
  }
  Tensor low = Tensor::empty(t.shape(), DType::BF16, t.device());
  backend_of(t).copy(t, low);
  g_cache.map[t.impl()] = Entry{t.impl_ptr(), t.impl()->storage.get(), t.version(), low.impl_ptr()};
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

#include "autograd/tape.h"

#include <algorithm>
#include <iomanip>
#include <set>
#include <sstream>
#include <unordered_map>

#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/op_registry.h"
#include "core/backend.h"

namespace dg {

static thread_local bool g_grad_enabled = true;
bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

Tape& tape() {
  static thread_local Tape t;
  return t;
}

void Record::save(std::string what, const Tensor& t) {
  saved.push_back({std::move(what), t, t.defined() ? t.version() : 0, t.defined() ? t.dtype() : DType::F32});
}

void Record::save_activation(std::string what, const Tensor& t) {
  const bool parameter = t.impl()->is_leaf && !t.name().empty();
  if (!autocast_on() || t.dtype() != DType::F32 || parameter) return save(std::move(what), t);
  Tensor low = to_lowp(t);
  saved.push_back({std::move(what), low, low.version(), t.dtype()});
}

const SavedTensor& Record::find_saved(const std::string& what) const {
  for (const SavedTensor& s : saved) {
    if (s.what != what) continue;
    DG_CHECK(s.t.version() == s.version, "backward of '", op->name, "': saved tensor '", what, "' (",
             s.t.desc(), ") was modified in place after the forward pass (version ", s.version, " -> ",
             s.t.version(), "); clone it before writing, or write after backward");
    return s;
  }
  throw Error(str("backward of '", op->name, "': nothing saved under '", what, "' (an op bug)"));
}

const Tensor& Record::saved_stored(const std::string& what) const { return find_saved(what).t; }

Tensor Record::saved_tensor(const std::string& what) const {
  const SavedTensor& s = find_saved(what);
  return s.t.defined() && s.t.dtype() != s.dtype ? s.t.to(s.dtype) : s.t;  // widen a bf16-kept activation
}

Tensor Record::take_grad_so_far(size_t i, DType dtype) {
  if (i >= offered_.size() || !offered_[i].defined() || offered_[i].dtype() != dtype) return Tensor();
  taken_[i] = true;
  Tensor t = std::move(offered_[i]);
  t.bump_version();  // the caller writes into it
  return t;
}

size_t Record::saved_bytes() const {
  size_t n = 0;
  for (const SavedTensor& s : saved) n += s.t.nbytes();
  return n;
}

size_t Tape::saved_bytes() const {
  size_t n = 0;
  for (const Record& r : records_) n += r.saved_bytes();
  return n;
}

size_t Tape::held_bytes() const {
  std::set<std::pair<const void*, size_t>> seen;  // (first byte, size) of each saved view
  size_t n = 0;
  for (const Record& r : records_)
    for (const SavedTensor& st : r.saved)
      if (seen.insert({st.t.raw(), st.t.nbytes()}).second) n += st.t.nbytes();
  return n;
}

Record* Tape::record(const OpDef& op, const std::vector<Tensor>& inputs, Tensor& out, std::string attrs) {
  if (!g_grad_enabled) return nullptr;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return nullptr;
  Record r;
  r.op = &op;
  r.attrs = std::move(attrs);
  r.scope = cost_scope();
  for (const Tensor& t : inputs) {
    const bool needs = t.defined() && t.requires_grad();
    r.in_ids.push_back(t.defined() ? t.impl()->id : 0);
    r.in_shapes.push_back(t.defined() ? t.shape() : Shape{});
    r.needs.push_back(needs);
    r.leaves.push_back(needs && t.impl()->is_leaf ? std::weak_ptr<TensorImpl>(t.impl_ptr())
                                                  : std::weak_ptr<TensorImpl>());
  }
  out.impl()->requires_grad = true;
  out.impl()->is_leaf = false;
  r.out_id = out.impl()->id;
  r.out_shape = out.shape();
  records_.push_back(std::move(r));
  return &records_.back();
}

// a + b into a new tensor (gradient accumulation never writes into a shared buffer)
static Tensor add_new(const Tensor& a, const Tensor& b) {
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  backend_of(a).binary(BinaryOp::Add, a, b, out);
  return out;
}

// For an observer: how many record inputs still to come (newest-first) name each leaf; a leaf's
// gradient is final when its count reaches zero.
namespace {
class LeafUses {
 public:
  LeafUses(const std::vector<Record>& records, BackwardObserver* observer) : observer_(observer) {
    if (!observer_) return;
    for (const Record& r : records)
      for (const auto& w : r.leaves)
        if (auto leaf = w.lock()) ++left_[leaf.get()];
  }
  // `r`'s backward has run (or was skipped): report the leaves it was the last user of.
  void retire(const Record& r) {
    if (!observer_) return;
    for (const auto& w : r.leaves) {
      auto leaf = w.lock();
      if (!leaf) continue;
      auto it = left_.find(leaf.get());
      if (it == left_.end() || --it->second > 0) continue;
      left_.erase(it);
      if (leaf->grad) {
        Tensor t(leaf);
        observer_->leaf_final(t);
      }
    }
    observer_->record_done();
  }

 private:
  BackwardObserver* observer_;
  std::unordered_map<const TensorImpl*, int64_t> left_;
};
}  // namespace

// Hands `r` the gradients so far of its non-leaf inputs where the buffer is the slot's alone
// (no other slot, view or handle on it), so that its backward may add into them in place
// (Record::take_grad_so_far). An input listed twice by one op is not offered.
void Tape::offer_grads_so_far(Record& r, std::unordered_map<uint64_t, Tensor>& grads) {
  r.offered_.clear(), r.taken_.clear();  // allocated only when something is offered
  for (size_t i = 0; i < r.in_ids.size(); ++i) {
    if (!r.needs[i] || !r.leaves[i].expired()) continue;
    if (std::count(r.in_ids.begin(), r.in_ids.end(), r.in_ids[i]) != 1) continue;
    auto it = grads.find(r.in_ids[i]);
    if (it == grads.end()) continue;
    const Tensor& t = it->second;
    const bool sole = t.impl_ptr().use_count() == 1 && t.impl()->storage.use_count() == 1;
    if (!sole || !t.is_contiguous() || t.shape() != r.in_shapes[i]) continue;
    if (r.offered_.empty()) r.offered_.resize(r.in_ids.size()), r.taken_.assign(r.in_ids.size(), false);
    r.offered_[i] = std::move(it->second);
    grads.erase(it);
  }
}

void Tape::backward(const Tensor& loss, const Tensor& grad_out, BackwardObserver* observer) {
  DG_CHECK(loss.requires_grad(), "backward: ", loss.desc(),
           " does not depend on any trainable tensor (nothing was recorded for it)");
  std::unordered_map<uint64_t, Tensor> grads;
  if (grad_out.defined()) {
    DG_CHECK(grad_out.shape() == loss.shape(), "backward: grad_out ", grad_out.desc(), " for ", loss.desc());
    grads[loss.impl()->id] = grad_out;
  } else {
    DG_CHECK(loss.numel() == 1, "backward: ", loss.desc(), " is not a scalar; pass grad_out");
    grads[loss.impl()->id] = Tensor::ones(loss.shape(), loss.dtype(), loss.device());
  }
  NoGradGuard no_grad;  // backward computations are never recorded
  BackwardPhaseGuard phase;  // FLOPs counted from here on are backward FLOPs
  LeafUses uses(records_, observer);
  accumulation_ = {};
  for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
    Record& r = *it;
    auto g = grads.find(r.out_id);
    if (g == grads.end()) {  // this output did not reach the loss
      r.saved.clear();
      uses.retire(r);
      continue;
    }
    Tensor gout = std::move(g->second);
    grads.erase(g);
    if (!gout.is_contiguous()) gout = gout.contiguous();  // backward kernels read dense buffers
    offer_grads_so_far(r, grads);
    std::vector<Tensor> gin;
    {
      CostScopeGuard scope(r.scope);  // a delta's backward GEMMs are the delta's
      gin = r.backward(r, gout);
    }
    DG_CHECK(gin.size() == r.in_ids.size(), "backward of '", r.op->name, "' returned ", gin.size(),
             " gradients for ", r.in_ids.size(), " inputs");
    for (size_t i = 0; i < gin.size(); ++i) {
      Tensor offered = i < r.offered_.size() ? std::move(r.offered_[i]) : Tensor();
      const bool taken = i < r.taken_.size() && r.taken_[i];
      if (!r.needs[i] || !gin[i].defined()) {
        DG_CHECK(!taken, "backward of '", r.op->name, "' took input ", i, "'s gradient so far and returned none");
        if (offered.defined()) grads[r.in_ids[i]] = std::move(offered);  // not taken: back in its slot
        continue;
      }
      DG_CHECK(gin[i].shape() == r.in_shapes[i], "backward of '", r.op->name, "': gradient of input ", i,
               " has shape ", shape_str(gin[i].shape()), ", expected ", shape_str(r.in_shapes[i]));
      if (taken || offered.defined()) {  // a sum: in the op's kernel, or here in place
        ++accumulation_.sums;
        if (taken) {
          ++accumulation_.in_producer;
        } else {
          backend_of(offered).binary(BinaryOp::Add, offered, gin[i], offered);
          offered.bump_version();  // an in-place write: a bf16 copy of the old sum is stale (autocast.h)
          gin[i] = std::move(offered);
        }
        grads[r.in_ids[i]] = gin[i];
        continue;
      }
      if (auto leaf = r.leaves[i].lock()) {
        Tensor p(leaf);
        if (!leaf->grad) {
          Tensor gi = gin[i];
          // take the buffer when nothing else can see it, else copy
          bool own = gi.is_contiguous() && gi.impl()->storage.use_count() == 1 && gi.dtype() == p.dtype() &&
                     gi.device() == p.device();
          leaf->grad = own ? gi.detach().impl_ptr() : gi.to(p.dtype()).clone().impl_ptr();
        } else {
          Tensor acc(leaf->grad);
          backend_of(acc).binary(BinaryOp::Add, acc, gin[i], acc);
          acc.bump_version();
        }
      } else {
        auto& slot = grads[r.in_ids[i]];
        if (slot.defined()) ++accumulation_.sums;
        slot = slot.defined() ? add_new(slot, gin[i]) : gin[i];
      }
    }
    r.saved.clear();
    r.backward = nullptr;
    uses.retire(r);
  }
  records_.clear();
}

std::string Tape::dump() const {
  std::ostringstream os;
  size_t total = 0;
  os << "tape: " << records_.size() << " records\n";
  for (size_t k = 0; k < records_.size(); ++k) {
    const Record& r = records_[k];
    os << "#" << std::left << std::setw(4) << k << std::setw(16) << r.op->name;
    if (!r.attrs.empty()) os << "(" << r.attrs << ") ";
    os << "in:";
    for (size_t i = 0; i < r.in_ids.size(); ++i)
      os << (i ? ", " : " ") << shape_str(r.in_shapes[i]) << (r.needs[i] ? " grad" : " -");
    os << "  out: " << shape_str(r.out_shape) << "  saved:";
    if (r.saved.empty()) os << " nothing";
    for (const SavedTensor& s : r.saved)
      os << " " << s.what << "=" << dtype_name(s.t.dtype()) << shape_str(s.t.shape());
    os << " (" << r.saved_bytes() << " B)\n";
    total += r.saved_bytes();
  }
  os << "saved total: " << total << " B (held: " << held_bytes() << " B, shared buffers counted once)\n";
  return os.str();
}

}  // namespace dg

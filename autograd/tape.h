// Tape-based reverse mode, in one screen of ideas:
//  * A tensor "needs grad" if it is a trainable leaf or the output of a recorded op.
//  * An op is recorded only when one of its inputs needs grad. Its Record lists the
//    inputs (by id), which of them need a gradient, and what the backward reads,
//    saved explicitly by name so the tape can show it and check it.
//  * backward(loss) walks the records newest-first, routes each output gradient into
//    its inputs' gradients, accumulates into trainable leaves' .grad, frees what was
//    saved and clears the tape. Where a tensor feeds several ops, the later-run op may add
//    its part into the gradient so far in place (a GEMM with beta = 1) instead of a sum pass.
//  * Frozen weights never need grad, so ops whose inputs are all frozen leave no record:
//    the backward pass stops by itself below the lowest trainable tensor.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace dg {

struct OpDef;  // autograd/op_registry.h

// Told by Tape::backward when a trainable leaf's gradient is final: every recorded op that
// took the leaf as an input has run its backward (or did not reach the loss), so its .grad
// will not change again in this pass. A data-parallel trainer starts summing a gradient over
// its ranks from here, while the rest of the backward still runs (train/grad_reducer.h).
class BackwardObserver {
 public:
  virtual ~BackwardObserver() = default;
  // Once per leaf of the tape that has a .grad at that point (a leaf used by several ops, e.g.
  // a shared factor or a tied weight: after the last of them), in the order they become final.
  virtual void leaf_final(Tensor& leaf) = 0;
  // After every record's backward: room for other work to progress (an MPI request's test).
  virtual void record_done() {}
};

struct SavedTensor {
  std::string what;  // e.g. "x" or "mean"
  Tensor t;          // as kept: under autocast an activation is its bf16 copy
  uint64_t version;  // storage version at save time: a later in-place write is an error
  DType dtype;       // the dtype the forward saw (what saved_tensor returns)
};

struct Record {
  const OpDef* op;
  std::string attrs;                     // op parameters for the dump, e.g. "dim=-1"
  std::vector<uint64_t> in_ids;          // tensor ids of the inputs
  std::vector<Shape> in_shapes;
  std::vector<bool> needs;               // needs[i]: input i wants a gradient
  std::vector<std::weak_ptr<TensorImpl>> leaves;  // trainable-leaf inputs (for .grad), else empty
  uint64_t out_id = 0;
  Shape out_shape;
  std::vector<SavedTensor> saved;
  const void* scope = nullptr;  // the delta whose forward recorded it, nullptr: the base (autograd/cost_meter.h)
  // Given dL/d(out), return dL/d(input i) for each i with needs[i] (others: undefined).
  // Convention: the closure reads tensors only through saved(), never captures them.
  std::function<std::vector<Tensor>(Record& r, const Tensor& grad_out)> backward;

  bool needs_grad(size_t i) const { return needs[i]; }
  // Input i's gradient as summed so far from the ops after this one, offered by backward just
  // before this closure runs where nothing else holds that buffer (a contiguous `dtype` tensor
  // of input i's shape), else undefined. A closure that takes it must add its own gradient into
  // it (a GEMM with beta = 1, say) and return it as input i's gradient: the separate pass that
  // would add the two is gone. Untaken, backward adds as usual.
  Tensor take_grad_so_far(size_t i, DType dtype);
  void save(std::string what, const Tensor& t);  // kept as it is
  // An activation: under autocast (autograd/autocast.h) an f32 one is kept as its bf16 copy;
  // parameters (named leaves) are kept as they are.
  void save_activation(std::string what, const Tensor& t);
  // In the dtype the forward saw (a bf16-kept activation comes back widened); checks the version.
  Tensor saved_tensor(const std::string& what) const;
  // As kept (bf16 under autocast): for GEMM operands, which are multiplied in bf16 anyway.
  const Tensor& saved_stored(const std::string& what) const;
  size_t saved_bytes() const;

 private:
  friend class Tape;
  const SavedTensor& find_saved(const std::string& what) const;  // checks the version
  std::vector<Tensor> offered_;  // per input: the gradient so far on offer (take_grad_so_far)
  std::vector<bool> taken_;
};

class Tape {
 public:
  // Record `out = op(inputs)` if any input needs grad (and grad mode is on);
  // marks `out` as needing grad and returns the record to fill in, else nullptr.
  Record* record(const OpDef& op, const std::vector<Tensor>& inputs, Tensor& out, std::string attrs = {});
  // `observer` (optional; none costs nothing) is told when each leaf's gradient is final.
  void backward(const Tensor& loss, const Tensor& grad_out = Tensor(), BackwardObserver* observer = nullptr);
  void clear() { records_.clear(); }
  const std::vector<Record>& records() const { return records_; }
  size_t saved_bytes() const;  // summed over records: a buffer saved by two records counts twice
  size_t held_bytes() const;   // what the saved tensors hold: each buffer (same view) counted once
  // Of the last backward: gradients of non-leaf tensors summed from two or more ops, and how many
  // of those sums an op's own kernel did in place (Record::take_grad_so_far) instead of an add.
  struct AccumulationStats {
    size_t sums = 0, in_producer = 0;
  };
  AccumulationStats last_accumulation() const { return accumulation_; }
  std::string dump() const;  // one line per record: op, shapes, grads wanted, saved tensors

 private:
  static void offer_grads_so_far(Record& r, std::unordered_map<uint64_t, Tensor>& grads);
  std::vector<Record> records_;
  AccumulationStats accumulation_;
};

Tape& tape();  // the current thread's tape

// Gradients off in a scope (evaluation, optimizer updates).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Shorthand: tape().backward(loss).
inline void backward(const Tensor& loss) { tape().backward(loss); }

}  // namespace dg

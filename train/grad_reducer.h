// The gradient all-reduce overlapped with backward, as PyTorch's DistributedDataParallel does
// it: the trainable tensors are cut into buckets of at most a cap of bytes, first in reverse
// registration order (a guess: the head and the last blocks' deltas are final first); the tape
// tells when each gradient is final (autograd/tape.h's BackwardObserver), it is copied into its
// bucket, and a bucket whose every gradient is in is started (Comm::start_all_reduce_sum) while
// the backward goes on. Every rank starts the buckets in index order, whatever order its
// gradients come in, as non-blocking collectives require; so a bucket complete early waits
// for an earlier one that is not ("held back"). After the first step the buckets are rebuilt
// in the order that step's backward finished the gradients (DDP's _rebuild_buckets), rank 0's
// order broadcast to all, so each bucket starts as soon as its gradients are final.
// finish() waits for all before clipping and the optimizer. Each element goes through the same
// copy, weight and sum as GradientBucket::all_reduce (--no-overlap), so the result is the same
// bits whatever the buckets, where the library's sum of one element does not depend on the
// message it is in (core/comm.h: true of Open MPI's non-blocking in-place all-reduce; tested
// with 2, 3 and 4 ranks).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "autograd/tape.h"
#include "train/grad_bucket.h"

namespace dg::train {

class GradientReducer final : public BackwardObserver {
 public:
  // `masks` (tensor name -> 0/1 mask, may be empty) multiply those gradients before they travel,
  // as PeftModel::mask_gradients does after a plain backward.
  GradientReducer(const nn::NamedTensors& params, Device dev, int64_t cap_bytes,
                  const std::map<std::string, Tensor>& masks);
  size_t buckets() const { return buckets_.size(); }
  const GradientBucket& bucket(size_t i) const { return *buckets_[i]; }
  int64_t floats() const;
  // Before the step's backward: sums go over `comm`, each rank's gradient weighted by `weight`.
  void begin(Comm& comm, double weight);
  void leaf_final(Tensor& leaf) override;
  void record_done() override;
  // After backward: the buckets not started yet (a tensor that no sample reached on this rank
  // is never reported: zeros) are started in order, all are waited, and every gradient is set
  // to its sum. Says, of the buckets, how many were started while backward still had records
  // to run (what the backward can hide), how many were complete before an earlier bucket let
  // them start (held back) and for how many backward records in all, and how many were summed
  // already when backward ended.
  struct Overlap {
    size_t started = 0, held = 0, done = 0;
    int64_t held_records = 0;
  };
  Overlap finish();

  // The order (indices into the constructor's params) in which the last step's backward
  // reported the gradients final, then the tensors it never reported (reverse registration).
  std::vector<size_t> observed_order() const;
  // The buckets cut again, same cap, in `order` (a permutation of the params' indices).
  // Not between begin() and finish().
  void rebuild(const std::vector<size_t>& order);
  // rebuild(rank 0's observed_order()), broadcast over `host` so every rank builds the same
  // buckets. Returns false (nothing rebuilt) when the order is the one in use.
  bool rebuild_from_rank0(Comm& host);

 private:
  struct Slot {
    size_t bucket, index;
  };
  nn::NamedTensors params_;  // as registered
  Device dev_;
  int64_t cap_bytes_;
  std::vector<size_t> order_;  // the buckets' params, in bucket order
  std::vector<std::unique_ptr<GradientBucket>> buckets_;
  std::unordered_map<const TensorImpl*, Slot> slot_of_;
  std::unordered_map<const TensorImpl*, size_t> index_of_;  // into params_
  const std::map<std::string, Tensor>& masks_;
  std::vector<std::vector<bool>> filled_;
  std::vector<size_t> waiting_;  // per bucket: gradients not in yet this step
  // per bucket, in backward records retired so far: when its last gradient came in, when it started
  std::vector<int64_t> complete_at_, started_at_;
  std::vector<size_t> reported_;  // this step's report order, indices into params_
  std::vector<std::unique_ptr<CommRequest>> requests_;  // of buckets [0, next_)
  size_t next_ = 0;  // the next bucket to start
  int64_t records_ = 0;  // backward records retired this step
  Comm* comm_ = nullptr;
  double weight_ = 1;
  void build(const std::vector<size_t>& order);
  void fill(const Slot& s);
  void start_ready();  // buckets next_, next_ + 1, ... while complete
};

}  // namespace dg::train

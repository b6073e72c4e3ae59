// The gradient all-reduce overlapped with backward, as PyTorch's DistributedDataParallel does
// it: the trainable tensors are cut into buckets of at most a cap of bytes, in reverse
// registration order (the head and the last blocks' deltas, whose gradients are final first,
// fill the first buckets); the tape tells when each gradient is final (autograd/tape.h's
// BackwardObserver), it is copied into its bucket, and a bucket whose every gradient is in is
// started (Comm::start_all_reduce_sum) while the backward goes on. Every rank starts the
// buckets in index order, whatever order its gradients come in, as non-blocking collectives
// require. finish() waits for all before clipping and the optimizer. Each element goes through
// the same copy, weight and sum as in GradientBucket::all_reduce, so with 2 ranks (a + b) the
// result is the same bits (tested). With more ranks MPI may add in another order for another
// message size or for the non-blocking call: then the same up to the last bits.
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
  // to its sum. Says how many buckets backward had started before this call, and how many of
  // those were summed already (what the backward hid).
  struct Overlap {
    size_t started = 0, done = 0;
  };
  Overlap finish();

 private:
  struct Slot {
    size_t bucket, index;
  };
  std::vector<std::unique_ptr<GradientBucket>> buckets_;
  std::unordered_map<const TensorImpl*, Slot> slot_of_;
  const std::map<std::string, Tensor>& masks_;
  std::vector<std::vector<bool>> filled_;
  std::vector<size_t> waiting_;  // per bucket: gradients not in yet this step
  std::vector<std::unique_ptr<CommRequest>> requests_;  // of buckets [0, next_)
  size_t next_ = 0;  // the next bucket to start
  Comm* comm_ = nullptr;
  double weight_ = 1;
  void fill(const Slot& s);
  void start_ready();  // buckets next_, next_ + 1, ... while complete
};

}  // namespace dg::train

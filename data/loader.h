// Batches for the trainer, prepared on a background thread (bounded queue) so the
// training step never waits on data. Everything random (the epoch's order, crops, flips)
// is a function of (seed, epoch, sample), so batches are identical whatever the timing,
// and a resumed run can start at any (epoch, step).
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data/dataset.h"

namespace dg::data {

struct LoaderOptions {
  int64_t batch = 64;
  bool shuffle = true, drop_last = false;
  int64_t pad = 0;     // random crop after zero padding by `pad` pixels (0: none), torchvision RandomCrop
  bool hflip = false;  // random horizontal flip
  // timm's RandomResizedCrop (transforms.h) of each image's original file where the set has
  // files (image folders: decoded again per use), else of the stored image, resampled to the
  // stored size with `interpolation`; pad is then ignored
  bool random_resized_crop = false;
  Interpolation interpolation = Interpolation::Bilinear;
  std::vector<double> mean = {0.5}, std = {0.5};  // per channel (one value broadcasts)
  uint64_t seed = 0;
  // Data parallel: this process takes the `shard`-th of `shards` contiguous slices of every
  // (global) batch of `batch` samples; the union of the shards is the one-process batch, in order.
  int64_t shard = 0, shards = 1;
  int64_t prefetch = 3;  // batches prepared ahead (the queue's bound)
};

struct Batch {
  Tensor images;  // F32 [B, C, H, W], normalised
  Tensor labels;  // I64 [B]
  int64_t epoch = 0, step = 0;
  int64_t global_size = 0;  // the samples of the whole (all shards') batch; B is this shard's
};

// Usage: DataLoader dl(set, opt); dl.start(epoch, step); then dl.next() forever (epochs roll
// over). The set is held by value (its tensors are shared handles, so this is cheap) and must
// not be modified while the loader runs. The destructor stops and joins the worker, also when
// the consumer stops mid-epoch. An error inside the worker is rethrown by next().
class DataLoader {
 public:
  DataLoader(const ImageSet& set, const LoaderOptions& opt);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t batches_per_epoch() const;
  // Begin producing from (epoch, step); the previous stream (if any) is stopped.
  void start(int64_t epoch, int64_t step = 0);
  Batch next();  // blocks until ready; crosses into the next epoch automatically
  // Build a batch directly (no thread): the same function the worker runs.
  Batch make_batch(int64_t epoch, int64_t step) const;
  // The epoch's sample order (a seeded permutation of 0..N-1, or 0..N-1 without shuffle).
  std::vector<int64_t> order(int64_t epoch) const;

 private:
  ImageSet set_;
  LoaderOptions opt_;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  bool stop_ = false;
  std::exception_ptr error_;  // set by the worker if make_batch threw
  void stop();
  Batch make_batch(int64_t epoch, int64_t step, const std::vector<int64_t>& order) const;
};

}  // namespace dg::data

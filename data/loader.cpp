#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "core/philox.h"

namespace dg::data {

DataLoader::DataLoader(const ImageSet& set, const LoaderOptions& opt) : set_(set), opt_(opt) {
  DG_CHECK(opt.batch >= 1, "DataLoader: batch must be >= 1");
  DG_CHECK(set.size() > 0, "DataLoader: empty dataset");
  const int64_t C = set.images.size(1);
  DG_CHECK(opt.mean.size() == 1 || int64_t(opt.mean.size()) == C, "DataLoader: mean has ", opt.mean.size(),
           " values for ", C, " channels");
  DG_CHECK(opt.std.size() == opt.mean.size(), "DataLoader: mean and std differ in length");
}

DataLoader::~DataLoader() { stop(); }

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = set_.size();
  return opt_.drop_last ? n / opt_.batch : (n + opt_.batch - 1) / opt_.batch;
}

std::vector<int64_t> DataLoader::order(int64_t epoch) const {
  std::vector<int64_t> idx(static_cast<size_t>(set_.size()));
  std::iota(idx.begin(), idx.end(), 0);
  if (!opt_.shuffle) return idx;
  const uint64_t key = opt_.seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch) + 1;
  for (size_t i = idx.size(); i > 1; --i)
    std::swap(idx[i - 1], idx[size_t(double(philox::uniform(key, i)) * double(i)) % i]);
  return idx;
}

Batch DataLoader::make_batch(int64_t epoch, int64_t step) const {
  const std::vector<int64_t> idx = order(epoch);
  const int64_t N = set_.size(), b0 = step * opt_.batch, B = std::min(opt_.batch, N - b0);
  DG_CHECK(B > 0 && step < batches_per_epoch(), "DataLoader: step ", step, " beyond the epoch");
  const int64_t C = set_.images.size(1), H = set_.images.size(2), W = set_.images.size(3), per = C * H * W;
  Batch out;
  out.epoch = epoch;
  out.step = step;
  out.images = Tensor::empty({B, C, H, W});
  std::vector<int64_t> lab(static_cast<size_t>(B));
  const float* src = set_.images.data<float>();
  const int64_t* sl = set_.labels.data<int64_t>();
  float* dst = out.images.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t i = idx[size_t(b0 + b)];
    lab[size_t(b)] = sl[i];
    // per-sample randomness from (seed, epoch, sample index)
    const uint64_t key = (opt_.seed + 0x51ED27ull) * 0x9E3779B97F4A7C15ull ^ (uint64_t(epoch) << 32) ^ uint64_t(i);
    const int64_t dy = opt_.pad ? int64_t(philox::uniform(key, 0) * float(2 * opt_.pad + 1)) - opt_.pad : 0;
    const int64_t dx = opt_.pad ? int64_t(philox::uniform(key, 1) * float(2 * opt_.pad + 1)) - opt_.pad : 0;
    const bool flip = opt_.hflip && philox::uniform(key, 2) < 0.5f;
    for (int64_t c = 0; c < C; ++c) {
      const double m = opt_.mean[opt_.mean.size() == 1 ? 0 : size_t(c)], s = opt_.std[opt_.std.size() == 1 ? 0 : size_t(c)];
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t sy = y + dy, sx0 = x + dx, sx = flip ? W - 1 - sx0 : sx0;
          const float v = (sy < 0 || sy >= H || sx0 < 0 || sx0 >= W) ? 0.0f : src[i * per + (c * H + sy) * W + sx];
          dst[b * per + (c * H + y) * W + x] = float((double(v) - m) / s);
        }
    }
  }
  out.labels = Tensor::from_vector(lab, {B});
  return out;
}

void DataLoader::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  queue_.clear();
  stop_ = false;
}

void DataLoader::start(int64_t epoch, int64_t step) {
  stop();
  worker_ = std::thread([this, epoch, step] {
    int64_t e = epoch, s = step;
    for (;;) {
      Batch b = make_batch(e, s);
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || int64_t(queue_.size()) < opt_.prefetch; });
        if (stop_) return;
        queue_.push_back(std::move(b));
      }
      cv_.notify_all();
      if (++s == batches_per_epoch()) s = 0, ++e;
    }
  });
}

Batch DataLoader::next() {
  DG_CHECK(worker_.joinable(), "DataLoader::next() before start()");
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !queue_.empty(); });
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  lk.unlock();
  cv_.notify_all();
  return b;
}

}  // namespace dg::data

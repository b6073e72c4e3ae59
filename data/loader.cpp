#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "core/philox.h"

namespace dg::data {

DataLoader::DataLoader(const ImageSet& set, const LoaderOptions& opt) : set_(set), opt_(opt) {
  DG_CHECK(opt.batch >= 1, "DataLoader: batch must be >= 1, got ", opt.batch);
  DG_CHECK(opt.pad >= 0, "DataLoader: pad must be >= 0, got ", opt.pad);
  DG_CHECK(opt.prefetch >= 1, "DataLoader: prefetch must be >= 1, got ", opt.prefetch);
  DG_CHECK(opt.shards >= 1 && opt.shard >= 0 && opt.shard < opt.shards, "DataLoader: shard ", opt.shard, " of ",
           opt.shards, " is not one of 0..shards-1");
  DG_CHECK(set.images.defined() && set.images.dim() == 4 && set.images.dtype() == DType::F32 &&
               set.images.device() == Device::CPU,
           "DataLoader: images must be F32 [N, C, H, W] on the CPU, got ",
           set.images.defined() ? set.images.desc() : std::string("none"));
  DG_CHECK(set.labels.defined() && set.labels.dtype() == DType::I64 && set.labels.shape() == Shape{set.size()},
           "DataLoader: labels must be I64 [", set.size(), "], got ",
           set.labels.defined() ? set.labels.desc() : std::string("none"));
  DG_CHECK(set.size() > 0, "DataLoader: empty dataset");
  DG_CHECK(set.images.is_contiguous() && set.labels.is_contiguous(), "DataLoader: images and labels must be contiguous");
  const int64_t C = set.images.size(1);
  DG_CHECK(opt.mean.size() == 1 || int64_t(opt.mean.size()) == C, "DataLoader: mean has ", opt.mean.size(),
           " values for ", C, " channels");
  DG_CHECK(opt.std.size() == opt.mean.size(), "DataLoader: mean has ", opt.mean.size(), " values but std has ",
           opt.std.size());
  for (double s : opt.std) DG_CHECK(s > 0, "DataLoader: std must be positive, got ", s);
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
  // Fisher-Yates driven by Philox at counter i: a pure function of (seed, epoch).
  const uint64_t key = opt_.seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch) + 1;
  for (size_t i = idx.size(); i > 1; --i)
    std::swap(idx[i - 1], idx[size_t(double(philox::uniform(key, i)) * double(i)) % i]);
  return idx;
}

Batch DataLoader::make_batch(int64_t epoch, int64_t step) const { return make_batch(epoch, step, order(epoch)); }

Batch DataLoader::make_batch(int64_t epoch, int64_t step, const std::vector<int64_t>& idx) const {
  const int64_t N = set_.size(), b0 = step * opt_.batch;
  DG_CHECK(epoch >= 0 && step >= 0 && step < batches_per_epoch(), "DataLoader: (epoch ", epoch, ", step ", step,
           ") is outside 0..", batches_per_epoch() - 1, " steps per epoch");
  const int64_t G = std::min(opt_.batch, N - b0);  // the global batch; this shard's slice of it:
  const int64_t first = b0 + G * opt_.shard / opt_.shards, B = b0 + G * (opt_.shard + 1) / opt_.shards - first;
  const int64_t C = set_.images.size(1), H = set_.images.size(2), W = set_.images.size(3), per = C * H * W;
  Batch out;
  out.epoch = epoch;
  out.step = step;
  out.global_size = G;
  out.images = Tensor::empty({B, C, H, W});
  std::vector<int64_t> lab(static_cast<size_t>(B));
  const float* src = set_.images.data<float>();
  const int64_t* sl = set_.labels.data<int64_t>();
  float* dst = out.images.data<float>();
  std::vector<float> crop, resized;  // random-resized-crop's buffers, reused across the batch
  DecodedImage original;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t i = idx[size_t(first + b)];
    lab[size_t(b)] = sl[i];
    // Per-sample randomness from (seed, epoch, sample index): independent of batch size,
    // of timing and of where a resumed run started.
    const uint64_t key = (opt_.seed + 0x51ED27ull) * 0x9E3779B97F4A7C15ull ^ (uint64_t(epoch) << 32) ^ uint64_t(i);
    // Flip, then crop with offset (dy, dx) in [-pad, pad]^2 from the zero-padded image: output
    // pixel (y, x) reads the (flipped) source at (y + dy, x + dx), zero outside.
    const int64_t pad = opt_.random_resized_crop ? 0 : opt_.pad;
    const int64_t dy = pad ? int64_t(philox::uniform(key, 0) * float(2 * pad + 1)) - pad : 0;
    const int64_t dx = pad ? int64_t(philox::uniform(key, 1) * float(2 * pad + 1)) - pad : 0;
    const bool flip = opt_.hflip && philox::uniform(key, 2) < 0.5f;
    const float* img = src + i * per;
    if (opt_.random_resized_crop) {  // crop, then resize the crop alone (torchvision's resized_crop)
      // From the original file where the set has one (image folders), as timm crops the decoded
      // photo: the stored image is the eval view (the centre square at model size), so cropping
      // it would lose the borders and the resolution of small crops. The original is decoded
      // again each time, as timm's loader does, on this background thread: memory stays the
      // stored set's (a copy of every original at full size could take gigabytes).
      const bool from_file = !set_.files.empty();
      int64_t sh = H, sw = W;
      if (from_file) {
        const std::string& file = set_.files[size_t(i)];
        const std::string why = decode_image(file, C, original);
        DG_CHECK(why.empty(), "random-resized-crop: cannot read '", file, "' again (", why,
                 "); it was read when the data was loaded");
        sh = original.h, sw = original.w;
      }
      const CropBox box = random_resized_crop_box(sh, sw, [&](int k) { return double(philox::uniform(key, uint64_t(3 + k))); });
      crop.resize(size_t(C * box.height * box.width));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < box.height; ++y) {
          float* row = crop.data() + (c * box.height + y) * box.width;
          if (!from_file) {
            std::copy_n(img + (c * H + box.top + y) * W + box.left, box.width, row);
            continue;
          }
          const uint8_t* px = original.pixels.data() + ((box.top + y) * sw + box.left) * C + c;  // interleaved u8
          for (int64_t x = 0; x < box.width; ++x) row[x] = float(px[x * C]) / 255.0f;
        }
      resized.resize(size_t(per));
      resample_region(crop.data(), C, box.height, box.width, 0, 0, double(box.height), double(box.width), H, W,
                      opt_.interpolation, resized.data());
      img = resized.data();
    }
    for (int64_t c = 0; c < C; ++c) {
      const double m = opt_.mean[opt_.mean.size() == 1 ? 0 : size_t(c)], s = opt_.std[opt_.std.size() == 1 ? 0 : size_t(c)];
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t sy = y + dy, sx0 = x + dx, sx = flip ? W - 1 - sx0 : sx0;
          const float v = (sy < 0 || sy >= H || sx0 < 0 || sx0 >= W) ? 0.0f : img[(c * H + sy) * W + sx];
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
  // The worker is gone: no lock needed to reset the state for the next start().
  queue_.clear();
  error_ = nullptr;
  stop_ = false;
}

void DataLoader::start(int64_t epoch, int64_t step) {
  DG_CHECK(epoch >= 0 && step >= 0 && step < batches_per_epoch(), "DataLoader::start: (epoch ", epoch, ", step ",
           step, ") is outside 0..", batches_per_epoch() - 1, " steps per epoch");
  stop();
  worker_ = std::thread([this, epoch, step] {
    try {
      int64_t e = epoch, s = step;
      std::vector<int64_t> ord = order(e);  // computed once per epoch, not per batch
      for (;;) {
        Batch b = make_batch(e, s, ord);
        {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return stop_ || int64_t(queue_.size()) < opt_.prefetch; });
          if (stop_) return;
          queue_.push_back(std::move(b));
        }
        cv_.notify_all();
        if (++s == batches_per_epoch()) s = 0, ord = order(++e);
        std::lock_guard<std::mutex> lk(mu_);
        if (stop_) return;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      error_ = std::current_exception();
    }
    cv_.notify_all();
  });
}

Batch DataLoader::next() {
  DG_CHECK(worker_.joinable(), "DataLoader::next() before start()");
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  lk.unlock();
  cv_.notify_all();
  return b;
}

}  // namespace dg::data

#include "peft/packed_bits.h"

#include <cmath>
#include <cstdint>

#include "autograd/ops.h"
#include "core/backend.h"
#include "peft/method_registry.h"

namespace dg::peft {

namespace {

struct Standardised {
  Tensor mean, std, q;  // mean, std [1, .., 1] (keepdim); q the +-c code of each element
};

// The authors' statistics: torch's w.mean() and w.std() (unbiased), then the sign of
// (w - mean) / (std + 1e-5). One path for training, packing and the in-memory eval.
Standardised standardise(const Tensor& w, const std::string& who) {
  const int64_t n = w.numel();
  DG_CHECK(n >= 2, who, ": a 1-bit weight needs at least 2 elements (its std), got ", n);
  std::vector<int64_t> all;
  for (int64_t d = 0; d < w.dim(); ++d) all.push_back(d);
  Standardised s;
  s.mean = mean(w, all, true);
  Tensor centred = sub(w, s.mean);
  s.std = sqrt(mul_scalar(sum(mul(centred, centred), all, true), 1.0 / double(n - 1)));
  s.q = sign_ste(div(centred, add_scalar(s.std, 1e-5)), kOneBitCode);
  return s;
}

// q * std + mean: the last two ops of binarize, shared by the loader so that both give the
// same float32 numbers.
Tensor rescale(const Tensor& q, const Tensor& std, const Tensor& mean) { return add(mul(q, std), mean); }

// Every quantised tensor of every delta: (file key, delta's BinaryWeights, local name, latent).
template <class F>
void for_each_binary(const DeltaList& deltas, F&& f) {
  for (const auto& [name, list] : deltas)
    for (const auto& [site, d] : list) {
      auto* md = dynamic_cast<MethodDelta*>(d.get());
      BinaryWeights* bw = md ? md->binary_weights() : nullptr;
      if (!bw) continue;
      for (auto& [pn, t] : md->named_parameters())
        if (bw->names.count(pn)) f(site + "." + name + "." + pn, *bw, pn, t);
    }
}

}  // namespace

Tensor binarize(const Tensor& w) {
  Standardised s = standardise(w, "binarize");
  return rescale(s.q, s.std, s.mean);
}

Tensor BinaryWeights::weight(const std::string& name, const Tensor& latent) const {
  if (auto it = loaded.find(name); it != loaded.end()) return it->second;
  return names.count(name) ? binarize(latent) : latent;
}

void pack_binary_tensors(const DeltaList& deltas, std::map<std::string, Tensor>& file) {
  NoGradGuard ng;
  for_each_binary(deltas, [&](const std::string& key, BinaryWeights& bw, const std::string& pn, const Tensor& latent) {
    if (auto it = bw.packed.find(pn); it != bw.packed.end()) {  // loaded from a packed file: as it was read
      file.erase(key);
      file[key + ".bits"] = it->second.first;
      file[key + ".mean_std"] = it->second.second;
      return;
    }
    Standardised s = standardise(latent, key);
    Tensor mean_std =
        Tensor::from_vector(std::vector<double>{s.mean.to_vector()[0], s.std.to_vector()[0]}, {2}).to(DType::F32);
    const std::vector<double> q = s.q.to_vector();
    const int64_t n = int64_t(q.size()), words = (n + 31) / 32;
    Tensor bits = Tensor::zeros({words}, DType::I32);
    auto* w = bits.data<int32_t>();
    for (int64_t i = 0; i < n; ++i)
      if (q[size_t(i)] > 0) w[i / 32] = int32_t(uint32_t(w[i / 32]) | (uint32_t(1) << (i % 32)));
    file.erase(key);
    file[key + ".bits"] = bits;
    file[key + ".mean_std"] = mean_std;
  });
}

std::set<std::string> unpack_binary_tensors(const DeltaList& deltas, std::map<std::string, Tensor>& file,
                                            const std::string& path) {
  NoGradGuard ng;
  std::set<std::string> done;
  for_each_binary(deltas, [&](const std::string& key, BinaryWeights& bw, const std::string& pn, const Tensor& latent) {
    auto bits_it = file.find(key + ".bits"), ms_it = file.find(key + ".mean_std");
    if (bits_it == file.end() && ms_it == file.end()) return;  // a float file: the latent loads as usual
    const std::string where = str("delta file '", path, "': 1-bit tensor '", key, "'");
    DG_CHECK(bits_it != file.end() && ms_it != file.end(), where, ": needs both '.bits' and '.mean_std'");
    const int64_t n = latent.numel(), words = (n + 31) / 32;
    const Tensor& bits = bits_it->second;
    DG_CHECK(bits.dtype() == DType::I32 && bits.dim() == 1 && bits.size(0) == words, where, ": '.bits' must be I32 [",
             words, "] for ", n, " elements, got ", bits.desc());
    DG_CHECK(ms_it->second.dtype() == DType::F32 && ms_it->second.numel() == 2, where,
             ": '.mean_std' must be F32 [2], got ", ms_it->second.desc());
    const std::vector<double> ms = ms_it->second.to_vector();
    DG_CHECK(std::isfinite(ms[0]) && std::isfinite(ms[1]) && ms[1] >= 0, where, ": mean ", ms[0], " and std ", ms[1],
             " must be finite, std >= 0");
    Tensor cb = bits.contiguous();
    const auto* w = cb.data<int32_t>();
    std::vector<float> q(static_cast<size_t>(n));
    const float c = float(kOneBitCode);
    for (int64_t i = 0; i < n; ++i) q[size_t(i)] = (uint32_t(w[i / 32]) >> (i % 32)) & 1u ? c : -c;
    Shape one(size_t(latent.dim()), 1);
    Tensor mean_t = Tensor::full(one, ms[0]), std_t = Tensor::full(one, ms[1]);
    Tensor value = rescale(Tensor::from_vector(q, latent.shape()), std_t, mean_t);
    bw.loaded[pn] = value.to(latent.dtype()).to(latent.device());
    bw.packed[pn] = {cb, ms_it->second};
    file.erase(bits_it);
    file.erase(ms_it);
    done.insert(key);
  });
  return done;
}

}  // namespace dg::peft

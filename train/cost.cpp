#include "train/cost.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>

#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/backend.h"
#include "core/cpu/cpu_backend.h"
#include "core/random.h"
#include "cuda/cuda_api.h"
#include "nn/optim.h"
#include "peft/training_loss.h"

namespace dg::train {

void CostRow::add(const CostRow& o) {
  trainable_params += o.trainable_params;
  grad_bytes += o.grad_bytes, optimizer_bytes += o.optimizer_bytes, activation_bytes += o.activation_bytes;
  forward_flops += o.forward_flops, backward_flops += o.backward_flops;
  file_bytes += o.file_bytes;
}

namespace {

int64_t bytes_in_use(Device d) { return int64_t(d == Device::CUDA ? cuda::bytes_in_use() : cpu::CpuBackend::bytes_in_use()); }
int64_t peak_bytes(Device d) { return int64_t(d == Device::CUDA ? cuda::peak_bytes() : cpu::CpuBackend::peak_bytes()); }
void reset_peak(Device d) { d == Device::CUDA ? cuda::reset_peak() : cpu::CpuBackend::reset_peak(); }

// The delta file's size: written once to a temporary file (PeftModel::save is the writer).
int64_t delta_file_size(const peft::PeftModel& pm) {
  namespace fs = std::filesystem;
  const fs::path p = fs::temp_directory_path() / ("deltagrad-cost-" + std::to_string(::getpid()) + ".safetensors");
  pm.save(p.string());
  const int64_t n = int64_t(fs::file_size(p));
  fs::remove(p);
  return n;
}

using BufferKey = std::pair<const void*, size_t>;  // as Tape::held_bytes: a saved view's first byte and size
BufferKey key_of(const Tensor& t) { return {t.raw(), t.nbytes()}; }
int64_t f32_bytes(const Shape& s) { return shape_numel(s) * int64_t(sizeof(float)); }  // gradients are f32

// Backward replayed over the records, newest first, as Tape::backward runs it: the most bytes
// alive at once on top of `fixed`. `params` are the storages of parameters (saved views of them
// are no new memory).
int64_t replay_backward_peak(const std::vector<Record>& records, const std::set<const void*>& params, uint64_t loss_id,
                             int64_t fixed) {
  std::map<BufferKey, std::pair<int64_t, int>> saved;  // buffer -> (bytes, records holding it)
  int64_t saved_alive = 0;
  for (const Record& r : records)
    for (const SavedTensor& s : r.saved) {
      if (!s.t.defined() || params.count(s.t.impl()->storage.get())) continue;
      auto [it, fresh] = saved.try_emplace(key_of(s.t), int64_t(s.t.nbytes()), 0);
      it->second.second++;
      if (fresh) saved_alive += it->second.first;
    }
  std::unordered_map<uint64_t, int64_t> grads{{loss_id, int64_t(sizeof(float))}};
  std::set<const void*> leaf_grads;
  int64_t grads_alive = int64_t(sizeof(float)), peak = fixed + saved_alive;
  for (auto r = records.rbegin(); r != records.rend(); ++r) {
    auto g = grads.find(r->out_id);
    if (g != grads.end()) {
      int64_t fresh = 0;  // the input gradients this backward allocates, while its output gradient lives
      for (size_t i = 0; i < r->in_ids.size(); ++i)
        if (r->needs[i]) fresh += f32_bytes(r->in_shapes[i]);
      // under autocast: saved bf16 activations read back widened, and the output gradient's bf16
      // copy for the GEMMs (autograd/autocast.h)
      for (const SavedTensor& s : r->saved)
        if (s.t.defined() && s.t.dtype() != s.dtype) fresh += s.t.numel() * int64_t(dtype_size(s.dtype));
      if (autocast_on()) fresh += shape_numel(r->out_shape) * int64_t(dtype_size(DType::BF16));
      peak = std::max(peak, fixed + saved_alive + grads_alive + fresh);
      grads_alive -= g->second;
      grads.erase(g);
      for (size_t i = 0; i < r->in_ids.size(); ++i) {
        if (!r->needs[i]) continue;
        const int64_t b = f32_bytes(r->in_shapes[i]);
        if (auto leaf = r->leaves[i].lock()) {
          if (leaf_grads.insert(leaf.get()).second) grads_alive += b;  // kept until the optimizer's zero_grad
        } else if (grads.try_emplace(r->in_ids[i], b).second) {
          grads_alive += b;  // a second gradient is summed into a new buffer of the same size
        }
      }
    }
    for (const SavedTensor& s : r->saved) {
      auto it = s.t.defined() ? saved.find(key_of(s.t)) : saved.end();
      if (it != saved.end() && --it->second.second == 0) saved_alive -= it->second.first;
    }
  }
  return peak;
}

}  // namespace

CostLedger cost_ledger(peft::PeftModel& pm, const CostOptions& o) {
  DG_CHECK(o.batch >= 1, "cost: the batch must be >= 1, got ", o.batch);
  DG_CHECK(o.device == Device::CPU || backend_available(o.device), "cost --device cuda: no CUDA device, or a build without CUDA");
  nn::VisionTransformer& m = pm.base();
  pm.to(o.device);
  m.set_recompute_mlp(o.recompute_mlp);
  m.train();
  CostLedger L;

  // Rows: the base, each delta and its sites; parameters to rows by identity.
  std::vector<CostRow> sites;
  std::vector<std::pair<CostRow, std::vector<size_t>>> deltas;  // a delta's row and its sites' indices
  std::map<const void*, size_t> site_of_scope, site_of_param;
  for (const std::string& name : pm.delta_names()) {
    deltas.push_back({CostRow{name, "delta"}, {}});
    for (const auto& [site, d] : pm.attachments(name)) {
      deltas.back().second.push_back(sites.size());
      site_of_scope[d.get()] = sites.size();
      CostRow row{name + "@" + site, "site"};
      for (const auto& [pn, p] : d->named_parameters()) {
        site_of_param[p.impl()] = sites.size();
        row.file_bytes += int64_t(p.nbytes());
      }
      sites.push_back(row);
    }
  }
  CostRow base{"base", "base"};
  auto row_of_scope = [&](const void* scope) -> CostRow& {
    auto it = site_of_scope.find(scope);
    return it == site_of_scope.end() ? base : sites[it->second];
  };

  std::set<const void*> param_storages;
  for (const auto& [n, p] : m.named_parameters(true)) {
    param_storages.insert(p.impl()->storage.get());
    L.weight_bytes += int64_t(p.nbytes());
  }
  for (const auto& [n, b] : m.named_buffers()) L.weight_bytes += int64_t(b.nbytes());
  for (const auto& [n, mask] : pm.masks()) L.weight_bytes += int64_t(mask.nbytes());
  for (const auto& [n, p] : pm.trainable_parameters()) {
    auto it = site_of_param.find(p.impl());
    CostRow& row = it == site_of_param.end() ? base : sites[it->second];
    auto mask = pm.masks().find(n);
    if (mask == pm.masks().end()) {
      row.trainable_params += p.numel();
    } else {
      for (double v : mask->second.to_vector()) row.trainable_params += v != 0;
    }
    row.grad_bytes += int64_t(p.nbytes());
    row.optimizer_bytes += 2 * int64_t(p.nbytes());  // AdamW: exp_avg and exp_avg_sq (nn/optim.cpp)
  }

  base.trainable_params += pm.pending_selection_count();  // masks chosen from data before training
  const nn::ViTConfig& c = m.cfg;
  Tensor images = Tensor::empty({o.batch, c.in_chans, c.img_size, c.img_size});
  Generator(0).normal_(images);
  std::vector<int64_t> lv(size_t(o.batch));
  for (int64_t i = 0; i < o.batch; ++i) lv[size_t(i)] = i % c.num_classes;
  images = images.to(o.device);
  Tensor labels = Tensor::from_vector(lv, {o.batch}).to(o.device);
  L.input_bytes = int64_t(images.nbytes() + labels.nbytes());
  const int64_t outside = bytes_in_use(o.device) - L.weight_bytes - L.input_bytes;  // not the model's nor the step's

  AutocastGuard autocast(o.bf16 ? DType::BF16 : DType::F32);
  nn::AdamW opt(pm.trainable_parameters(), 1e-4, 0.05);
  auto step = [&](const std::function<void(const Tensor&)>& before_backward) {
    tape().clear();
    Tensor loss = peft::training_loss(pm, images, labels).loss;  // a training step's forwards (MoSA's: two)
    before_backward(loss);
    backward(loss);
    pm.mask_gradients();
    opt.step();
    opt.zero_grad();
    backend(o.device).synchronize();
  };
  if (o.measure) step([](const Tensor&) {});  // warm-up: the optimizer state exists from here on, as in training
  backend(o.device).synchronize();
  reset_peak(o.device);
  FlopMeter meter;
  {
    FlopMeterGuard counting(meter);
    step([&](const Tensor& loss) {
      const std::vector<Record>& recs = tape().records();
      L.records = recs.size();
      // The forward's own working set, which no record shows (ops on frozen inputs are not recorded):
      // inside a block's MLP (nn/layers.cpp, Block::forward) the block's input x, y = x + attention
      // branch, norm2's output, fc1's output and the GELU's are alive at once: 3 D + 2 H per token.
      // It sets the peak when little is saved (a linear probe), on top of what the records saved up
      // to the last one that made a tensor of every token (the last block may compute one row only).
      const int64_t tokens = o.batch * (c.num_patches() + c.num_prefix_tokens());
      const int64_t hidden = int64_t(double(c.embed_dim) * c.mlp_ratio);
      const int64_t D = c.embed_dim, f32 = int64_t(sizeof(float)), bf16 = 2;
      int64_t forward_work = tokens * (3 * D + 2 * hidden) * f32;
      if (o.bf16) {
        // Under autocast (autograd/autocast.h) the GEMM operands' bf16 copies live beside their f32
        // sources: norm2's output and the GELU's (fc1's and fc2's inputs). And the CPU's fused
        // attention runs in f32 on q, k, v rounded to bf16 (autograd/ops/attention.cpp): the block's
        // input, qkv, its bf16 copy, the widened copy and the output are alive at once.
        forward_work += tokens * (D + hidden) * bf16;
        if (o.device == Device::CPU) forward_work = std::max(forward_work, tokens * ((D + 3 * D + 3 * D + D) * f32 + 3 * D * bf16));
      }
      std::set<BufferKey> seen;
      int64_t saved_activations = 0, saved_at_last_full = 0;
      for (const Record& r : recs) {
        for (const SavedTensor& s : r.saved) {
          if (!s.t.defined() || !seen.insert(key_of(s.t)).second) continue;
          if (param_storages.count(s.t.impl()->storage.get())) L.saved_param_bytes += int64_t(s.t.nbytes());
          else row_of_scope(r.scope).activation_bytes += int64_t(s.t.nbytes()), saved_activations += int64_t(s.t.nbytes());
        }
        if (shape_numel(r.out_shape) >= tokens * c.embed_dim) saved_at_last_full = saved_activations;
      }
      L.measured_held_bytes = int64_t(tape().held_bytes());
      int64_t opt_state = base.optimizer_bytes;  // as in training: AdamW's state exists before the step
      for (const CostRow& s : sites) opt_state += s.optimizer_bytes;
      const int64_t fixed = L.weight_bytes + L.input_bytes + opt_state;
      L.peak_bytes = std::max(fixed + saved_at_last_full + forward_work,
                              replay_backward_peak(recs, param_storages, loss.impl()->id, fixed));
    });
  }
  L.measured = o.measure;
  if (o.measure) L.measured_peak_bytes = peak_bytes(o.device) - outside;
  for (const auto& [scope, f] : meter.forward) row_of_scope(scope).forward_flops += f;
  for (const auto& [scope, f] : meter.backward) row_of_scope(scope).backward_flops += f;

  // The file: each delta's tensors as stored; the base row holds the rest (trained base tensors,
  // masks, the header), so the rows add up to the file's size.
  const int64_t file = delta_file_size(pm);
  int64_t in_deltas = 0;
  for (const CostRow& s : sites) in_deltas += s.file_bytes;
  base.file_bytes = file - in_deltas;

  L.rows.push_back(base);
  L.total = base;
  for (auto& [row, idx] : deltas) {
    for (size_t i : idx) row.add(sites[i]);
    L.rows.push_back(row);
    L.total.add(row);
    for (size_t i : idx) L.rows.push_back(sites[i]);
  }
  L.total.name = "total", L.total.kind = "total";
  return L;
}

}  // namespace dg::train

#include "peft/mosa.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/ops.h"
#include "nn/glob.h"

namespace dg::peft {

std::vector<Tensor> mosa_divide(const Tensor& score, int64_t parts) {
  const std::vector<double> s = score.to_vector();
  const int64_t n = int64_t(s.size());
  DG_CHECK(parts >= 1 && n >= parts, "mosa: cannot split ", n, " elements into ", parts, " parts");
  std::vector<double> sorted = s;
  std::sort(sorted.begin(), sorted.end());
  const double sparsity = 1.0 / double(parts);
  std::vector<Tensor> out;
  for (int64_t i = 0; i < parts; ++i) {
    // torch.kthvalue(k): the k-th smallest, k 1-based; as Python's int() of the same products
    const int64_t lower_k = int64_t((sparsity * double(i)) * double(n)) + 1;
    const int64_t upper_k = int64_t((sparsity * double(i + 1)) * double(n));
    DG_CHECK(lower_k >= 1 && upper_k <= n && lower_k <= upper_k + 1, "mosa: part ", i, " of ", parts, " is empty");
    const double lo = sorted[size_t(lower_k - 1)], hi = sorted[size_t(std::max<int64_t>(upper_k, 1) - 1)];
    std::vector<float> m(s.size());
    for (size_t j = 0; j < s.size(); ++j) m[j] = s[j] < lo || s[j] > hi ? 0.0f : 1.0f;
    out.push_back(Tensor::from_vector(m, score.shape()));
  }
  return out;
}

namespace {
Tensor trainable(Tensor t) {
  t.set_requires_grad(true);
  return t;
}
// The copy of a split projection a training forward uses: its value, with the gradient
// reaching only its part (w * m + untracked(w) * (1 - m) has exactly w's values), as the
// authors multiply the gradient by the mask before the step.
Tensor part_of(const Tensor& w, const Tensor& m) {
  Tensor rest = add_scalar(neg(m), 1.0);
  return add(mul(w, m), mul(w.detach(), rest));
}
}  // namespace

MosaDelta::MosaDelta(const std::string& n, const MosaOptions& o, int64_t D, double eps, Generator& g)
    : opt(o), norm_eps(eps) {
  name = n;
  norm_w = trainable(Tensor::ones({D}));
  norm_b = trainable(Tensor::zeros({D}));
  // down: kaiming_uniform(a = sqrt 5) and a zero bias; up: zeros. The copies start equal (the
  // code deep-copies copy 0).
  Tensor dw = Tensor::empty({o.dim, D});
  g.uniform_(dw, -1.0 / std::sqrt(double(D)), 1.0 / std::sqrt(double(D)));
  auto make = [&](Projection& p, const Tensor& w0, int64_t bias_n, bool shared) {
    const int64_t copies = shared ? 1 : o.experts;
    for (int64_t i = 0; i < copies; ++i) {
      p.w.push_back(trainable(w0.clone()));
      p.b.push_back(trainable(Tensor::zeros({bias_n})));
    }
    if (!shared) {  // the Rand pruner's score, one draw per split weight
      Tensor score = Tensor::empty(w0.shape());
      g.uniform_(score);
      p.mask = mosa_divide(score, o.experts);
    }
  };
  make(down, dw, o.dim, o.share == "down");
  make(up, Tensor::zeros({D, o.dim}), D, o.share == "up");
}

namespace {
const char* const kMergedNames[] = {"down.weight", "down.bias", "up.weight", "up.bias"};  // merged_adapter()'s order
}

std::vector<std::pair<std::string, Tensor>> MosaDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out{{"norm.weight", norm_w}, {"norm.bias", norm_b}};
  if (loaded_merged()) {
    for (size_t i = 0; i < loaded_.size(); ++i) out.emplace_back(kMergedNames[i], loaded_[i]);
    return out;
  }
  auto add_proj = [&](const char* pn, const Projection& p) {
    const std::string pre = pn;
    if (p.mask.empty()) {
      out.emplace_back(pre + ".weight", p.w[0]);
      out.emplace_back(pre + ".bias", p.b[0]);
      return;
    }
    for (size_t i = 0; i < p.w.size(); ++i) {
      const std::string e = pre + "." + std::to_string(i);
      out.emplace_back(e + ".weight", p.w[i]);
      out.emplace_back(e + ".bias", p.b[i]);
      out.emplace_back(e + ".weight_mask", p.mask[i]);  // frozen: which elements copy i trains
    }
  };
  add_proj("down", down);
  add_proj("up", up);
  return out;
}

int64_t MosaDelta::trainable_count() {
  int64_t n = norm_w.numel() + norm_b.numel();
  if (loaded_merged()) {  // one adapter
    for (const Tensor& t : loaded_) n += t.numel();
    return n;
  }
  for (const Projection* p : {&down, &up})
    for (size_t i = 0; i < p->w.size(); ++i) {
      n += p->b[i].numel();
      if (p->mask.empty()) {
        n += p->w[i].numel();
      } else {
        for (double v : p->mask[i].to_vector()) n += v != 0.0;
      }
    }
  return n;
}

std::vector<Tensor> MosaDelta::merged_adapter() const {
  auto merge = [&](const Projection& p) -> std::pair<Tensor, Tensor> {
    if (p.mask.empty()) return {p.w[0], p.b[0]};
    const double inv = 1.0 / double(p.w.size());
    Tensor w, b;
    if (opt.merge == "add") {  // zeros + copy 0 + copy 1 + ..., then / copies
      for (size_t i = 0; i < p.w.size(); ++i) {
        w = i == 0 ? p.w[0] : add(w, p.w[i]);
        b = i == 0 ? p.b[0] : add(b, p.b[i]);
      }
    } else {  // joint: each copy's part written in place; a bias's mask is all ones, so the last copy's
      for (size_t i = 0; i < p.w.size(); ++i) w = i == 0 ? mul(p.w[0], p.mask[0]) : add(w, mul(p.w[i], p.mask[i]));
      b = p.b.back();
    }
    return {mul_scalar(w, inv), mul_scalar(b, inv)};
  };
  auto [dw, db] = merge(down);
  auto [uw, ub] = merge(up);
  return {dw, db, uw, ub};
}

std::map<std::string, Tensor> MosaDelta::file_tensors() const {
  std::vector<Tensor> m = loaded_;
  if (m.empty()) {
    NoGradGuard ng;  // the same ops on the same values as an eval forward: bit-identical tensors
    m = merged_adapter();
  }
  std::map<std::string, Tensor> out{{"norm.weight", norm_w.detach()}, {"norm.bias", norm_b.detach()}};
  for (size_t i = 0; i < m.size(); ++i) out[kMergedNames[i]] = m[i].detach();
  return out;
}

void MosaDelta::load_file_tensors(const std::map<std::string, Tensor>& t, const std::string& path) {
  NoGradGuard ng;
  Tensor(norm_w).copy_(t.at("norm.weight"));
  Tensor(norm_b).copy_(t.at("norm.bias"));
  loaded_.clear();
  for (const char* k : kMergedNames) loaded_.push_back(t.at(k).to(norm_w.dtype()).to(norm_w.device()));
}

std::optional<ConsistencyLoss> MosaDelta::consistency_loss() const {
  if (!opt.additional) return std::nullopt;
  return ConsistencyLoss{opt.add_weight, opt.reg_weight};
}

Tensor MosaDelta::apply(const Tensor& input, const Tensor& output) {
  Tensor dw, db, uw, ub;
  if (loaded_merged()) {
    DG_CHECK(!training, "mosa '", name, "': loaded from a delta file, which holds the merged adapter only (not the ",
             "copies and masks training needs): it evaluates only; resume the run from its checkpoint to train on");
    dw = loaded_[0], db = loaded_[1], uw = loaded_[2], ub = loaded_[3];
  } else if (training) {
    auto pick = [&](const Projection& p, int64_t forced, Tensor& w, Tensor& b) {
      if (p.mask.empty()) {
        w = p.w[0], b = p.b[0];
        return;
      }
      const int64_t i = !forced_choices.empty() ? forced : int64_t(default_generator().next_key() % uint64_t(p.w.size()));
      DG_CHECK(i >= 0 && i < int64_t(p.w.size()), "mosa '", name, "': copy ", i, " of ", p.w.size());
      w = part_of(p.w[size_t(i)], p.mask[size_t(i)]);
      b = p.b[size_t(i)];
    };
    const auto forced = forced_choices.empty() ? std::pair<int64_t, int64_t>{0, 0}
                                               : forced_choices[forced_next++ % forced_choices.size()];
    pick(down, forced.first, dw, db);
    pick(up, forced.second, uw, ub);
  } else {
    std::vector<Tensor> m = merged_adapter();
    dw = m[0], db = m[1], uw = m[2], ub = m[3];
  }
  Tensor h = gelu(linear(layer_norm(input, norm_w, norm_b, norm_eps), dw, db));
  if (training && opt.dropout > 0) h = dropout(h, opt.dropout, true, default_generator().next_key());
  return add(output, mul_scalar(linear(h, uw, ub), opt.scalar));
}

namespace {
void parse_mosa(OptionReader& r, DeltaConfig& dc) {
  auto o = std::make_shared<MosaOptions>();
  r.get("dim", o->dim);
  r.get("experts", o->experts);
  r.get("scalar", o->scalar);
  r.get("dropout", o->dropout);
  r.get("share", o->share);
  r.get("merge", o->merge);
  r.get("blocks", o->blocks);
  r.get("additional", o->additional);
  r.get("add_weight", o->add_weight);
  r.get("reg_weight", o->reg_weight);
  DG_CHECK(o->add_weight >= 0 && o->reg_weight >= 0 && std::isfinite(o->add_weight + o->reg_weight), r.where,
           ": add_weight and reg_weight must be finite and >= 0");
  DG_CHECK(o->dim >= 1, r.where, ": dim must be >= 1, got ", o->dim);
  DG_CHECK(o->experts >= 1, r.where, ": experts must be >= 1, got ", o->experts);
  DG_CHECK(o->dropout >= 0 && o->dropout < 1, r.where, ": dropout must be in [0, 1)");
  DG_CHECK(o->share == "down" || o->share == "up" || o->share == "none", r.where,
           ": share must be down, up or none, got '", o->share, "'");
  DG_CHECK(o->merge == "add" || o->merge == "joint", r.where, ": merge must be add or joint, got '", o->merge, "'");
  dc.options = o;
}
}  // namespace

DG_REGISTER_METHOD(mosa) {
  MethodDef d;
  d.name = "mosa";
  d.order = 55;
  d.summary = "blocks.i.mlp_branch: AdaptFormer adapter split into sparse copies, one random copy per forward, a "
              "consistency loss between two forwards; merged in eval and in the delta file";
  d.no_scale = "mosa takes no 'scale' (its fixed scale is 'scalar')";
  d.parse = parse_mosa;
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<MosaOptions>();
    for (int64_t i = 0; i < base.cfg.depth; ++i) {
      const std::string blk = "blocks." + std::to_string(i);
      if (nn::glob_match_any(o.blocks, blk))
        add(blk + ".mlp_branch", std::make_shared<MosaDelta>(dc.name, o, base.cfg.embed_dim, base.cfg.norm_eps, gen));
    }
  };
  d.golden = {{"mosa", {{"deltas", {{{"name", "mosa"}, {"method", "mosa"}, {"dim", 4}, {"scalar", 0.7}}}}}},
              {"mosa_none3", {{"deltas", {{{"name", "mosa"}, {"method", "mosa"}, {"dim", 4}, {"experts", 3},
                                           {"share", "none"}}}}}}};
  d.examples = {{{"method", "mosa"}, {"dim", 4}, {"scalar", 1.0}, {"dropout", 0.0}}};
  d.demo = DemoRow{"MoSA d=16, 4 parts", {{"name", "mosa"}, {"method", "mosa"}, {"dim", 16}}, 5e-3};
  return d;
}

}  // namespace dg::peft

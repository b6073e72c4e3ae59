#include "peft/fact.h"

#include <cmath>

#include "autograd/ops.h"
#include "peft/weight_update_delta.h"

namespace dg::peft {

namespace {
// torch's xavier_uniform_: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), with fan_in = size(1) *
// receptive field and fan_out = size(0) * receptive field (receptive field: the sizes past dim 1)
Tensor xavier_uniform(Generator& g, const Shape& shape) {
  int64_t receptive = 1;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= shape[i];
  const double fan_in = double(shape[1] * receptive), fan_out = double(shape[0] * receptive);
  Tensor t = Tensor::empty(shape);
  const double b = std::sqrt(6.0 / (fan_in + fan_out));
  g.uniform_(t, -b, b);
  return t;
}

Tensor trainable(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

// x [..., n * w] -> linear on each w-wide slice with W [w', w] -> [..., n * w']
Tensor sliced_linear(const Tensor& x, int64_t n, const Tensor& W) {
  if (n == 1) return linear(x, W);
  Shape s = x.shape();
  s.back() = n;
  s.push_back(W.size(1));
  Tensor y = linear(reshape(x, s), W);
  s.pop_back();
  s.back() = n * W.size(0);
  return reshape(y, s);
}
}  // namespace

FactDelta::FactDelta(const std::string& n, const FactOptions& o, nn::Linear& base, const FactSite& site,
                     std::shared_ptr<FactShared> shared, bool owns, Generator& gen)
    : opts_(o), base_(base), site_(site), shared_(std::move(shared)), owns_(owns) {
  name = n;
  if (opts_.tk) return;
  // fact_tt: torch's default Linear init (kaiming-uniform, a = sqrt 5) for each core
  const int64_t d = o.dim, k = site.kind == FactSite::Kind::Fc1 ? site.out_slices : site.in_slices;
  switch (site.kind) {
    case FactSite::Kind::Qkv:
      for (const char* part : {"q_FacTs.weight", "k_FacTs.weight", "v_FacTs.weight"})
        cores.emplace_back(part, trainable(kaiming_a5(gen, d, d)));
      break;
    case FactSite::Kind::Proj: cores.emplace_back("proj_FacTs.weight", trainable(kaiming_a5(gen, d, d))); break;
    case FactSite::Kind::Fc1: cores.emplace_back("fc1_FacTs.weight", trainable(kaiming_a5(gen, k * d, d))); break;
    case FactSite::Kind::Fc2: cores.emplace_back("fc2_FacTs.weight", trainable(kaiming_a5(gen, d, k * d))); break;
  }
}

Tensor FactDelta::core_weight() const {
  if (!opts_.tk) {
    if (cores.size() == 1) return cores[0].second;
    std::vector<Tensor> parts;
    for (const auto& [pn, t] : cores) parts.push_back(t);
    return concat(parts, 0);  // q, k, v read the same U x: their cores stack along the output
  }
  // fact_tk: T[a, b, m] = sum_c FacTc[a, b, c] FacTp[c, column + m], for this site's columns m
  const int64_t d = opts_.dim;
  const int64_t n = site_.kind == FactSite::Kind::Qkv ? 3 : site_.kind == FactSite::Kind::Proj ? 1
                    : site_.kind == FactSite::Kind::Fc1 ? site_.out_slices : site_.in_slices;
  Tensor T = reshape(matmul(reshape(shared_->FacTc, {d * d, d}), slice(shared_->FacTp, 1, site_.column, site_.column + n)),
                     {d, d, n});
  switch (site_.kind) {
    case FactSite::Kind::Qkv:   // the code's u @ FacTc[:, :, m]: a Linear weight [b, a] per m, stacked
    case FactSite::Kind::Proj: return reshape(permute(T, {2, 1, 0}), {n * d, d});
    // fc1: u @ T.reshape(dim, k dim) (column b k + j), whose output the code reads as k slices
    case FactSite::Kind::Fc1: return reshape(permute(T, {1, 2, 0}), {n * d, d});
    // fc2: u (k slices) @ T.reshape(dim, k dim).t()
    case FactSite::Kind::Fc2: return reshape(T, {d, n * d});
  }
  return Tensor();
}

Tensor FactDelta::branch(const Tensor& x, bool drop) const {
  Tensor h = linear(sliced_linear(x, site_.in_slices, shared_->FacTu), core_weight());
  if (drop) h = dropout(h, opts_.dropout, true, default_generator().next_key());
  return mul_scalar(sliced_linear(h, site_.out_slices, shared_->FacTv), opts_.scale);
}

Tensor FactDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  return add(y, branch(x, training && opts_.dropout > 0));
}

std::vector<std::pair<std::string, Tensor>> FactDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out = cores;
  if (owns_) {
    out.emplace_back("FacTu.weight", shared_->FacTu);
    out.emplace_back("FacTv.weight", shared_->FacTv);
    if (opts_.tk) {
      out.emplace_back("FacTc", shared_->FacTc);
      out.emplace_back("FacTp", shared_->FacTp);
    }
  }
  return out;
}

void FactDelta::merge() {
  DG_CHECK(!merged_, method(), " '", name, "': already merged");
  NoGradGuard ng;
  originals_.keep({base_.weight});
  // the branch is linear in x: its value on the identity is dW^T (rows e_j -> dW[:, j])
  const int64_t in = base_.in_features;
  std::vector<float> eye(size_t(in * in), 0.0f);
  for (int64_t i = 0; i < in; ++i) eye[size_t(i * in + i)] = 1.0f;
  Tensor I = Tensor::from_vector(eye, {in, in}).to(base_.weight.dtype()).to(base_.weight.device());
  base_.weight.copy_(add(base_.weight, contiguous(transpose(branch(I, false), 0, 1))));
  merged_ = true;
}

void FactDelta::unmerge() {
  DG_CHECK(merged_, method(), " '", name, "': not merged");
  originals_.restore({base_.weight});
  merged_ = false;
}

namespace {
void parse_fact(OptionReader& r, DeltaConfig& dc) {
  auto o = std::make_shared<FactOptions>();
  o->tk = dc.method == "fact_tk";
  r.get("dim", o->dim);
  // a number under 'scale' is FacT's s (the code's name); an object is the conditioning scale,
  // which config.cpp refuses for this method
  if (r.has("scale") && r.j.at("scale").is_number()) r.get("scale", o->scale);
  r.get("dropout", o->dropout);
  DG_CHECK(o->dim >= 1, r.where, ": dim must be >= 1, got ", o->dim);
  DG_CHECK(o->dropout >= 0 && o->dropout < 1, r.where, ": dropout must be in [0, 1), got ", o->dropout);
  dc.options = o;
}

nn::Linear& block_linear(nn::VisionTransformer& base, const std::string& path, const std::string& who) {
  auto* l = dynamic_cast<nn::Linear*>(base.find_module(path));
  DG_CHECK(l, who, ": the model has no Linear '", path, "'");
  return *l;
}

void attach_fact(const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
  const auto& o = dc.options_as<FactOptions>();
  const std::string who = dc.method + " '" + dc.name + "'";
  const int64_t C = base.cfg.embed_dim, depth = base.cfg.depth;
  const int64_t hidden = block_linear(base, "blocks.0.mlp.fc1", who).out_features;
  DG_CHECK(hidden % C == 0, who, ": the MLP width ", hidden, " must be a multiple of the embedding width ", C,
           " (FacT cuts each MLP matrix into C x C slices)");
  const int64_t k = hidden / C, columns = 4 + 2 * k;  // fact_tk's FacTp columns per block
  auto shared = std::make_shared<FactShared>();
  shared->FacTu = trainable(kaiming_a5(gen, o.dim, C));  // torch's default Linear(C, dim) init
  shared->FacTv = trainable(Tensor::zeros({C, o.dim}));  // the code's zeros_: dW starts at 0
  if (o.tk) {
    shared->FacTc = trainable(xavier_uniform(gen, {o.dim, o.dim, o.dim}));
    shared->FacTp = trainable(xavier_uniform(gen, {o.dim, columns * depth}));
  }
  for (int64_t i = 0; i < depth; ++i) {
    const std::string blk = "blocks." + std::to_string(i);
    const int64_t c0 = columns * i;
    const std::pair<const char*, FactSite> sites[] = {
        {".attn.qkv", {1, 3, c0, FactSite::Kind::Qkv}},
        {".attn.proj", {1, 1, c0 + 3, FactSite::Kind::Proj}},
        {".mlp.fc1", {1, k, c0 + 4, FactSite::Kind::Fc1}},
        {".mlp.fc2", {k, 1, c0 + 4 + k, FactSite::Kind::Fc2}}};
    for (const auto& [suffix, site] : sites) {
      nn::Linear& l = block_linear(base, blk + suffix, who);
      DG_CHECK(l.in_features == site.in_slices * C && l.out_features == site.out_slices * C, who, ": '", blk, suffix,
               "' is [", l.out_features, ", ", l.in_features, "], expected [", site.out_slices * C, ", ",
               site.in_slices * C, "]");
      add(blk + suffix, std::make_shared<FactDelta>(dc.name, o, l, site, shared, i == 0 && site.kind == FactSite::Kind::Qkv,
                                                    gen));
    }
  }
}

MethodDef fact_def(const std::string& name, int order, const std::string& demo_label, const std::string& summary) {
  MethodDef d;
  d.name = name;
  d.order = order;
  d.summary = summary;
  d.numeric_scale = true;
  d.no_scale = name + "'s 'scale' must be a number (FacT's s); it takes no conditioning-scale object";
  d.parse = parse_fact;
  d.attach = attach_fact;
  d.merges = true;
  d.golden = {{name, {{"deltas", {{{"name", "fact"}, {"method", name}, {"dim", 4}, {"scale", 0.7}}}}}},
              {name + "_lora", {{"deltas", {{{"name", "fact"}, {"method", name}, {"dim", 3}, {"scale", 1.3}},
                                            {{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"lora_alpha", 4},
                                             {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}}};
  d.examples = {{{"method", name}, {"dim", 4}, {"scale", 2}}};
  d.demo = DemoRow{demo_label, {{"name", "fact"}, {"method", name}, {"dim", 8}, {"scale", 1}}, 1e-2};
  return d;
}
}  // namespace

DG_REGISTER_METHOD(fact_tt) {
  return fact_def("fact_tt", 95, "FacT-TT dim=8",
                  "Post on every block's qkv, proj, fc1, fc2: y + s * V(dropout(S_i(U x))), U, V shared, a core S_i "
                  "per matrix (FacT-TT)");
}

DG_REGISTER_METHOD(fact_tk) {
  return fact_def("fact_tk", 96, "FacT-TK dim=8",
                  "Post on every block's qkv, proj, fc1, fc2: y + s * V(dropout(C P_i (U x))), U, V, C and P shared "
                  "(FacT-TK)");
}

}  // namespace dg::peft

#include "peft/vera.h"

#include <algorithm>
#include <cmath>

#include "autograd/ops.h"
#include "peft/hf_format.h"

namespace dg::peft {

VeraDelta::VeraDelta(const std::string& n, const VeraOptions& o, const ScaleConfig& sc, nn::Linear& base,
                     std::shared_ptr<VeraProjections> proj, bool owns, Generator& gen)
    : scale(sc, base.out_features), opts_(o), base_(base), proj_(std::move(proj)), owns_(owns) {
  name = n;
  if (o.init_weights) {
    lambda_b = Tensor::zeros({base.out_features});
    lambda_d = Tensor::full({o.r}, o.d_initial);
  } else {
    lambda_b = Tensor::ones({base.out_features});
    lambda_d = Tensor::empty({o.r});
    gen.normal_(lambda_d, 0.0, 1.0);
  }
  lambda_b.set_requires_grad(true);
  lambda_d.set_requires_grad(true);
}

Tensor VeraDelta::sliced_A() const { return contiguous(slice(proj_->A, 1, 0, base_.in_features)); }
Tensor VeraDelta::sliced_B() const { return slice(proj_->B, 0, 0, base_.out_features); }

Tensor VeraDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  Tensor xd = training && opts_.vera_dropout > 0 ? dropout(x, opts_.vera_dropout, true, default_generator().next_key()) : x;
  // lambda_b * (B h) = (diag(lambda_b) B) h: lambda_b (and s) scale B's rows [out, r], so no
  // [..., out] pass runs and the output is not saved for their gradients
  Tensor Bb = scale.fold_rows(mul(sliced_B(), unsqueeze(lambda_b, 1)));
  return add(y, linear(mul(linear(xd, sliced_A()), lambda_d), Bb));
}

std::vector<std::pair<std::string, Tensor>> VeraDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out{{"vera_lambda_b", lambda_b}, {"vera_lambda_d", lambda_d}};
  if (owns_ && opts_.save_projection) {
    out.emplace_back("vera_A", proj_->A);
    out.emplace_back("vera_B", proj_->B);
  }
  scale.add_to(out);
  return out;
}

// Not torch's generator: a projection_prng_key gives other values than in peft (its files
// therefore keep the projections, save_projection).
const char* const kProjectionGenerator = "deltagrad Philox 4x32-10 (core/random.h), U(-sqrt(6/cols), sqrt(6/cols)), A then B";

nlohmann::json VeraDelta::file_metadata() const {
  if (!owns_ || opts_.save_projection) return nullptr;
  return {{"projections", {{"generator", kProjectionGenerator},
                           {"projection_prng_key", opts_.projection_prng_key},
                           {"vera_A", proj_->A.shape()},
                           {"vera_B", proj_->B.shape()}}}};
}

void VeraDelta::merge() {
  DG_CHECK(!merged_, "vera '", name, "': already merged");
  NoGradGuard ng;
  originals_.keep({base_.weight});
  Tensor dw = matmul(mul(sliced_B(), view::unsqueeze(lambda_b, 1)), mul(sliced_A(), view::unsqueeze(lambda_d, 1)));
  if (scale.value.defined()) dw = mul(dw, view::unsqueeze(scale.value, 1));
  base_.weight.copy_(add(base_.weight, dw));
  merged_ = true;
}

void VeraDelta::unmerge() {
  DG_CHECK(merged_, "vera '", name, "': not merged");
  originals_.restore({base_.weight});
  merged_ = false;
}

namespace {
// peft's _kaiming_init: U(-b, b), b = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = shape[1]
Tensor kaiming_projection(Generator& g, int64_t rows, int64_t cols) {
  Tensor t = Tensor::empty({rows, cols});
  const double b = std::sqrt(6.0 / double(cols));
  g.uniform_(t, -b, b);
  return t;
}
}  // namespace

VeraProjections vera_projections(uint64_t key, int64_t r, int64_t max_in, int64_t max_out) {
  Generator pg(key);  // the projections depend on the key alone, as peft's
  VeraProjections p;
  p.A = kaiming_projection(pg, r, max_in);
  p.B = kaiming_projection(pg, max_out, r);
  return p;
}

namespace {

// peft's VERA tensors with the shared projections (save_projection); a conditioning scale s
// (it scales the update's rows) is folded into lambda_b
void vera_hf_export(const Attachments& list, HfAdapter& out) {
  NoGradGuard ng;
  for (const auto& [site, d] : list) {
    auto& v = static_cast<const VeraDelta&>(*d);
    const std::string pre = "base_model.model." + site + ".";
    Tensor b = v.lambda_b.detach();
    if (v.scale.value.defined()) b = mul(b, v.scale.value);
    out.tensors[pre + "vera_lambda_b"] = b.to(DType::F32);
    out.tensors[pre + "vera_lambda_d"] = v.lambda_d.to(DType::F32);
    out.tensors["base_model.vera_A"] = v.projections().A.to(DType::F32);
    out.tensors["base_model.vera_B"] = v.projections().B.to(DType::F32);
    out.targets.push_back(site);
    const VeraOptions& o = v.options();
    out.config = {{"peft_type", "VERA"}, {"r", o.r}, {"projection_prng_key", o.projection_prng_key},
                  {"save_projection", true}, {"vera_dropout", o.vera_dropout}, {"d_initial", o.d_initial},
                  {"init_weights", true}, {"fan_in_fan_out", false}, {"bias", "none"}};
  }
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to(DType::F32).to_vector() == b.to(DType::F32).to_vector();
}

// peft's VERA tensors: the shared projections must be in the file (save_projection). When
// they are the ones our generator draws for projection_prng_key (an export of ours), the
// delta file regenerates them; else (torch's, from peft) it keeps them (save_projection).
HfImported vera_hf_import(const HfAdapter& a) {
  hf_refuse(a, "fan_in_fan_out", false, "timm's Linear layers keep W as [out, in]");
  hf_refuse(a, "bias", "none", "its VeRA trains no biases");
  DG_CHECK(hf_option<bool>(a, "save_projection", true), "import-peft: '", hf_config_file(a),
           "': 'save_projection' is false, expected true (peft then redraws vera_A and vera_B with torch's generator "
           "from projection_prng_key; deltagrad's generator is not torch's: save the adapter with save_projection=True)");
  const std::string ka = "base_model.vera_A", kb = "base_model.vera_B";
  const HfModules mods = hf_module_tensors(a, {"vera_lambda_b", "vera_lambda_d"}, {ka, kb});
  DG_CHECK(!mods.empty(), "import-peft: '", hf_tensors_file(a), "' holds no VeRA tensors");
  DG_CHECK(a.tensors.count(ka) && a.tensors.count(kb), "import-peft: '", hf_tensors_file(a), "' lacks '", ka, "' or '",
           kb, "' (the shared projections that save_projection=True writes)");
  const Tensor &A = a.tensors.at(ka), &B = a.tensors.at(kb);
  const int64_t r = hf_option<int64_t>(a, "r", 256);
  DG_CHECK(A.dim() == 2 && B.dim() == 2, "import-peft: '", hf_tensors_file(a), "': vera_A and vera_B must be matrices");
  hf_check_rank(a, "base_model", "vera_A", A.size(0), r);
  hf_check_rank(a, "base_model", "vera_B", B.size(1), r);
  HfImported out;
  for (const auto& [m, t] : mods)
    for (const char* n : {"vera_lambda_b", "vera_lambda_d"}) out.tensors[m][n] = hf_need(a, mods, m, n);
  const uint64_t key = hf_option<uint64_t>(a, "projection_prng_key", 0);
  const VeraProjections ours = vera_projections(key, r, A.size(1), B.size(0));
  const bool regenerate = same_values(ours.A, A) && same_values(ours.B, B);
  if (!regenerate) out.shared = {{"vera_A", A}, {"vera_B", B}};
  out.delta = {{"method", "vera"}, {"r", r}, {"projection_prng_key", key}, {"save_projection", !regenerate},
               {"vera_dropout", hf_option<double>(a, "vera_dropout", 0.0)},
               {"d_initial", hf_option<double>(a, "d_initial", 0.1)}, {"target_modules", hf_module_names(mods)}};
  return out;
}
}  // namespace

DG_REGISTER_METHOD(vera) {
  MethodDef d;
  d.name = "vera";
  d.order = 17;
  d.summary = "Post on each matching Linear: lambda_b * B(lambda_d * A x), A and B frozen, random, shared";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<VeraOptions>();
    r.get("r", o->r);
    r.get("target_modules", o->target_modules);
    r.get("projection_prng_key", o->projection_prng_key);
    r.get("vera_dropout", o->vera_dropout);
    r.get("d_initial", o->d_initial);
    r.get("init_weights", o->init_weights);
    r.get("save_projection", o->save_projection);
    DG_CHECK(o->r >= 1, r.where, ": r must be >= 1, got ", o->r);
    DG_CHECK(o->vera_dropout >= 0 && o->vera_dropout < 1, r.where, ": vera_dropout must be in [0, 1)");
    DG_CHECK(!o->target_modules.empty(), r.where, ": target_modules is empty");
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<VeraOptions>();
    auto targets = linear_targets(base, o.target_modules, "vera '" + dc.name + "'");
    if (targets.empty()) return;
    int64_t max_in = 0, max_out = 0;
    for (auto& [path, lin] : targets) max_in = std::max(max_in, lin->in_features), max_out = std::max(max_out, lin->out_features);
    auto proj = std::make_shared<VeraProjections>(vera_projections(o.projection_prng_key, o.r, max_in, max_out));
    for (size_t i = 0; i < targets.size(); ++i)
      add(targets[i].first, std::make_shared<VeraDelta>(dc.name, o, dc.scale, *targets[i].second, proj, i == 0, gen));
  };
  d.merges = true;
  d.hf_peft_type = "VERA";
  d.hf_export = vera_hf_export;
  d.hf_import = vera_hf_import;
  // the fixture's projections are torch's: kept as delta tensors (save_projection)
  d.golden = {{"vera", {{"deltas", {{{"name", "vera"}, {"method", "vera"}, {"r", 4}, {"save_projection", true},
                                     {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}}};
  d.examples = {{{"method", "vera"}, {"r", 16}}};
  d.demo = DemoRow{"VeRA r=64 (qkv)", {{"name", "vera"}, {"method", "vera"}, {"r", 64}}, 1e-2};
  return d;
}

}  // namespace dg::peft

#include "peft/lokr.h"

#include "autograd/ops.h"
#include "peft/hf_format.h"

namespace dg::peft {

std::pair<int64_t, int64_t> lokr_factorization(int64_t dimension, int64_t factor) {
  if (factor > 0 && dimension % factor == 0) return {factor, dimension / factor};
  if (factor == -1) factor = dimension;
  int64_t m = 1, n = dimension;
  const int64_t length = m + n;
  while (m < n) {  // walk the divisors upwards while the pair's sum does not grow past the first
    int64_t new_m = m + 1;
    while (dimension % new_m != 0) ++new_m;
    const int64_t new_n = dimension / new_m;
    if (new_m + new_n > length || new_m > factor) break;
    m = new_m, n = new_n;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

LokrDelta::LokrDelta(const std::string& n, const LokrOptions& o, const ScaleConfig& sc, nn::Linear& base,
                     Generator& gen)
    : WeightUpdateDelta(n, sc, base, {o.rank_dropout, o.module_dropout, o.rank_dropout_scale}),
      opts(o), scaling_(o.alpha / double(o.r)) {
  auto [in_m, in_n] = lokr_factorization(base.in_features, o.decompose_factor);
  auto [out_l, out_k] = lokr_factorization(base.out_features, o.decompose_factor);
  const bool full_w1 = !(o.decompose_both && double(o.r) < double(std::max(out_l, in_m)) / 2);
  const bool full_w2 = !(double(o.r) < double(std::max(out_k, in_n)) / 2);
  auto zeros_or_kaiming = [&](int64_t rows, int64_t cols) {
    return o.init_weights ? Tensor::zeros({rows, cols}) : kaiming_a5(gen, rows, cols);
  };
  if (full_w1) {
    w1 = zeros_or_kaiming(out_l, in_m);
  } else {
    w1_a = zeros_or_kaiming(out_l, o.r);
    w1_b = kaiming_a5(gen, o.r, in_m);
  }
  if (full_w2) {
    w2 = kaiming_a5(gen, out_k, in_n);
  } else {
    w2_a = kaiming_a5(gen, out_k, o.r);
    w2_b = kaiming_a5(gen, o.r, in_n);
  }
  for (Tensor* t : {&w1, &w1_a, &w1_b, &w2, &w2_a, &w2_b})
    if (t->defined()) t->set_requires_grad(true);
}

Tensor LokrDelta::update_weight() const {
  Tensor a = w1.defined() ? w1 : matmul(w1_a, w1_b);  // [l, m]
  Tensor b = w2.defined() ? w2 : matmul(w2_a, w2_b);  // [k, n]
  const int64_t l = a.size(0), m = a.size(1), k = b.size(0), n = b.size(1);
  // kron(a, b)[i k + p, j n + q] = a[i, j] b[p, q]: a [l, 1, m, 1] * b [1, k, 1, n] -> [l k, m n]
  Tensor kron = mul(reshape(a, {l, 1, m, 1}), reshape(b, {1, k, 1, n}));
  return mul_scalar(reshape(kron, {l * k, m * n}), scaling_);
}

std::vector<std::pair<std::string, Tensor>> LokrDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out;
  const std::pair<const char*, const Tensor*> all[] = {{"lokr_w1", &w1},     {"lokr_w1_a", &w1_a}, {"lokr_w1_b", &w1_b},
                                                       {"lokr_w2", &w2},     {"lokr_w2_a", &w2_a}, {"lokr_w2_b", &w2_b}};
  for (auto& [n, t] : all)
    if (t->defined()) out.emplace_back(n, *t);
  scale.add_to(out);
  return out;
}

namespace {
// peft's LOKR tensors; a scalar conditioning scale is folded into w1 (a per-channel one does not
// factor through a Kronecker product)
void lokr_hf_export(const Attachments& list, HfAdapter& out) {
  NoGradGuard ng;
  for (const auto& [site, d] : list) {
    auto& k = static_cast<LokrDelta&>(*d);
    DG_CHECK(!k.scale.value.defined() || k.scale.value.numel() == 1, "export_hf: lokr '", k.name,
             "' has a per-channel scale, which peft's LoKr cannot hold");
    for (auto& [n, t] : k.named_parameters()) {
      if (n == "scale") continue;
      Tensor v = t.detach();
      if (k.scale.value.defined() && (n == "lokr_w1" || n == "lokr_w1_a")) v = mul(v, k.scale.value);
      out.tensors["base_model.model." + site + "." + n] = v.to(DType::F32);
    }
    out.targets.push_back(site);
    out.config = {{"peft_type", "LOKR"}, {"r", k.opts.r}, {"alpha", k.opts.alpha}, {"rank_dropout", k.opts.rank_dropout},
                  {"module_dropout", k.opts.module_dropout}, {"decompose_both", k.opts.decompose_both},
                  {"decompose_factor", k.opts.decompose_factor}, {"rank_dropout_scale", k.opts.rank_dropout_scale},
                  {"init_weights", true}, {"use_effective_conv2d", false},
                  {"rank_pattern", nlohmann::json::object()}, {"alpha_pattern", nlohmann::json::object()}};
  }
}

// which factors a module has follows from the options (LokrDelta's constructor); a file whose
// factors differ fails the importer's per-tensor check
HfImported lokr_hf_import(const HfAdapter& a) {
  const LycorisOptions o = lycoris_hf_options(a);
  const std::vector<std::string> names{"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"};
  const HfModules mods = hf_module_tensors(a, names);
  DG_CHECK(!mods.empty(), "import-peft: '", hf_tensors_file(a), "' holds no LoKr tensors");
  HfImported out;
  for (const auto& [m, t] : mods) out.tensors[m] = t;
  out.delta = lycoris_hf_delta("lokr", o, hf_module_names(mods));
  out.delta["decompose_both"] = hf_option<bool>(a, "decompose_both", false);
  out.delta["decompose_factor"] = hf_option<int64_t>(a, "decompose_factor", -1);
  out.delta["rank_dropout_scale"] = hf_option<bool>(a, "rank_dropout_scale", false);
  return out;
}
}  // namespace

DG_REGISTER_METHOD(lokr) {
  MethodDef d;
  d.name = "lokr";
  d.order = 19;
  d.summary = "Post on each matching Linear: x dW^T, dW = kron(w1, w2_a w2_b) * alpha/r (peft's LoKr)";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<LokrOptions>();
    parse_lycoris_options(r, *o);
    r.get("decompose_both", o->decompose_both);
    r.get("decompose_factor", o->decompose_factor);
    r.get("rank_dropout_scale", o->rank_dropout_scale);
    DG_CHECK(o->decompose_factor == -1 || o->decompose_factor >= 1, r.where,
             ": decompose_factor must be -1 or >= 1, got ", o->decompose_factor);
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<LokrOptions>();
    for (auto& [path, lin] : linear_targets(base, o.target_modules, "lokr '" + dc.name + "'"))
      add(path, std::make_shared<LokrDelta>(dc.name, o, dc.scale, *lin, gen));
  };
  d.merges = true;
  d.hf_peft_type = "LOKR";
  d.hf_export = lokr_hf_export;
  d.hf_import = lokr_hf_import;
  d.golden = {{"lokr", {{"deltas", {{{"name", "lokr"}, {"method", "lokr"}, {"r", 4}, {"alpha", 8},
                                     {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}},
              {"lokr_both", {{"deltas", {{{"name", "lokr"}, {"method", "lokr"}, {"r", 1}, {"alpha", 2},
                                          {"decompose_both", true}, {"decompose_factor", 4},
                                          {"target_modules", {"blocks.*.mlp.fc2"}}}}}}}};
  d.examples = {{{"method", "lokr"}, {"r", 4}}, {{"method", "lokr"}, {"r", 1}, {"decompose_both", true}}};
  d.demo = DemoRow{"LoKr r=4 (qkv)", {{"name", "lokr"}, {"method", "lokr"}, {"r", 4}, {"alpha", 4}}, 3e-3};
  return d;
}

}  // namespace dg::peft

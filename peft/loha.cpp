#include "peft/loha.h"

#include "autograd/ops.h"
#include "peft/hf_format.h"

namespace dg::peft {

LohaDelta::LohaDelta(const std::string& n, const LycorisOptions& o, const ScaleConfig& sc, nn::Linear& base,
                     Generator& gen)
    : WeightUpdateDelta(n, sc, base, {o.rank_dropout, o.module_dropout, true}), opts(o), scaling_(o.alpha / double(o.r)) {
  const int64_t out = base.out_features, in = base.in_features;
  w1_a = kaiming_a5(gen, out, o.r);
  w1_b = kaiming_a5(gen, o.r, in);
  w2_a = kaiming_a5(gen, out, o.r);
  w2_b = o.init_weights ? Tensor::zeros({o.r, in}) : kaiming_a5(gen, o.r, in);
  for (Tensor* t : {&w1_a, &w1_b, &w2_a, &w2_b}) t->set_requires_grad(true);
}

Tensor LohaDelta::update_weight() const {
  return mul_scalar(mul(matmul(w1_a, w1_b), matmul(w2_a, w2_b)), scaling_);
}

std::vector<std::pair<std::string, Tensor>> LohaDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out{
      {"hada_w1_a", w1_a}, {"hada_w1_b", w1_b}, {"hada_w2_a", w2_a}, {"hada_w2_b", w2_b}};
  scale.add_to(out);
  return out;
}

namespace {
// peft's LOHA tensors; a conditioning scale s (it scales dW's rows) is folded into hada_w1_a's rows
void loha_hf_export(const Attachments& list, HfAdapter& out) {
  NoGradGuard ng;
  for (const auto& [site, d] : list) {
    auto& h = static_cast<const LohaDelta&>(*d);
    const std::string pre = "base_model.model." + site + ".";
    Tensor w1a = h.w1_a.detach();
    if (h.scale.value.defined()) w1a = mul(w1a, view::unsqueeze(h.scale.value, 1));
    out.tensors[pre + "hada_w1_a"] = w1a.to(DType::F32);
    out.tensors[pre + "hada_w1_b"] = h.w1_b.to(DType::F32);
    out.tensors[pre + "hada_w2_a"] = h.w2_a.to(DType::F32);
    out.tensors[pre + "hada_w2_b"] = h.w2_b.to(DType::F32);
    out.targets.push_back(site);
    out.config = {{"peft_type", "LOHA"}, {"r", h.opts.r}, {"alpha", h.opts.alpha}, {"rank_dropout", h.opts.rank_dropout},
                  {"module_dropout", h.opts.module_dropout}, {"init_weights", true}, {"use_effective_conv2d", false},
                  {"rank_pattern", nlohmann::json::object()}, {"alpha_pattern", nlohmann::json::object()}};
  }
}

HfImported loha_hf_import(const HfAdapter& a) {
  const LycorisOptions o = lycoris_hf_options(a);
  const HfModules mods = hf_module_tensors(a, {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"});
  DG_CHECK(!mods.empty(), "import-peft: '", hf_tensors_file(a), "' holds no LoHa tensors");
  HfImported out;
  for (const auto& [m, t] : mods)
    for (const char* n : {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}) {
      const Tensor& w = hf_need(a, mods, m, n);
      hf_check_rank(a, m, n, w.dim() == 2 ? w.size(n[8] == 'a' ? 1 : 0) : -1, o.r);  // w*_a [out, r], w*_b [r, in]
      out.tensors[m][n] = w;
    }
  out.delta = lycoris_hf_delta("loha", o, hf_module_names(mods));
  return out;
}
}  // namespace

DG_REGISTER_METHOD(loha) {
  MethodDef d;
  d.name = "loha";
  d.order = 18;
  d.summary = "Post on each matching Linear: x dW^T, dW = (w1_a w1_b) * (w2_a w2_b) * alpha/r (peft's LoHa)";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<LycorisOptions>();
    parse_lycoris_options(r, *o);
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<LycorisOptions>();
    for (auto& [path, lin] : linear_targets(base, o.target_modules, "loha '" + dc.name + "'"))
      add(path, std::make_shared<LohaDelta>(dc.name, o, dc.scale, *lin, gen));
  };
  d.merges = true;
  d.hf_peft_type = "LOHA";
  d.hf_export = loha_hf_export;
  d.hf_import = loha_hf_import;
  d.golden = {{"loha", {{"deltas", {{{"name", "loha"}, {"method", "loha"}, {"r", 4}, {"alpha", 8},
                                     {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}}};
  d.examples = {{{"method", "loha"}, {"r", 4}},
                {{"method", "loha"}, {"r", 2}, {"rank_dropout", 0.2}, {"module_dropout", 0.1}}};
  d.demo = DemoRow{"LoHa r=4 (qkv)", {{"name", "loha"}, {"method", "loha"}, {"r", 4}, {"alpha", 4}}, 3e-3};
  return d;
}

}  // namespace dg::peft

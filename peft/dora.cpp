#include "peft/dora.h"

#include "autograd/ops.h"
#include "core/backend.h"

namespace dg::peft {

DoraDelta::DoraDelta(const std::string& n, const LoraConfig& c, const ScaleConfig& sc, nn::Linear& base, bool fused_qkv,
                     Generator& gen)
    : LoraDelta(n, c, sc, base, fused_qkv, gen) {
  magnitude = weight_norm().clone();  // peft: the norm of W + scaling B A right after the LoRA init
  magnitude.set_requires_grad(true);
}

Tensor DoraDelta::weight_norm() const {
  NoGradGuard ng;  // detached: peft's weight_norm.detach()
  Tensor w = add(base_.weight, update_weight());
  return sqrt(sum(mul(w, w), {1}));
}

Tensor DoraDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  const bool drop = training && cfg.lora_dropout > 0;
  Tensor xd = drop ? dropout(x, cfg.lora_dropout, true, default_generator().next_key()) : x;
  Tensor mag_norm_scale = div(magnitude, weight_norm());  // [out]
  // peft reuses the base output without its bias when no dropout acts, else recomputes x W^T
  // from the dropped-out input
  Tensor base_out = drop ? linear(xd, base_.weight) : base_.bias.defined() ? sub(y, base_.bias) : y;
  Tensor d = add(mul(add_scalar(mag_norm_scale, -1.0), base_out), mul(mag_norm_scale, low_rank_update(xd, y)));
  return add(y, scale.apply(d));
}

std::vector<std::pair<std::string, Tensor>> DoraDelta::named_parameters() {
  auto out = LoraDelta::named_parameters();
  out.emplace_back("lora_magnitude_vector", magnitude);
  return out;
}

Tensor DoraDelta::delta_weight() const {
  NoGradGuard ng;
  Tensor factor = view::unsqueeze(div(magnitude, weight_norm()), 1);  // [out, 1]
  Tensor d = sub(mul(factor, add(base_.weight, update_weight())), base_.weight);
  if (scale.value.defined()) d = mul(d, view::unsqueeze(scale.value, 1));
  return d;
}

// After another delta, DoRA renormalises a base output that holds that delta's update too,
// while its norm is of W + scaling B A alone: no merged weight is defined for that.
std::string DoraDelta::merge_refusal(const std::vector<const nn::Delta*>& site, size_t index) const {
  const nn::Delta* before = nullptr;  // a Post delta applied before this one (an input-scaling ia3 is fine)
  for (size_t j = 0; j < index; ++j)
    if (site[j]->position() == Position::Post) before = site[j];
  if (!before) return "";
  return str("dora '", name, "' applies after ", before->method(), " '", before->name,
             "' on the same Linear, and its merge is defined only on the base weight; keep them unmerged, or list "
             "the dora first in 'deltas'");
}

}  // namespace dg::peft

namespace dg::peft {

namespace {
// peft's LoRA format with use_dora and lora_magnitude_vector [out] per module
void dora_hf_export(const Attachments& list, HfAdapter& out) {
  lora_hf_export(list, out);
  for (const auto& [site, d] : list) {
    auto& dd = static_cast<const DoraDelta&>(*d);
    DG_CHECK(!dd.scale.value.defined(), "export_hf: dora '", dd.name,
             "' has a conditioning scale, which peft's DoRA cannot hold (it scales the whole renormalised update)");
    out.tensors["base_model.model." + site + ".lora_magnitude_vector"] = dd.magnitude.to(DType::F32);
  }
  out.config["use_dora"] = true;
}
}  // namespace

DG_REGISTER_METHOD(dora) {
  MethodDef d;
  d.name = "dora";
  d.order = 15;
  d.summary = "Post on each matching Linear: LoRA renormalised to a trained magnitude per output row (peft's DoRA)";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    parse_lora_options(r, dc);
    bool use_dora = true;
    r.get("use_dora", use_dora);
    DG_CHECK(use_dora, r.where, ": use_dora: false contradicts method 'dora' (use method 'lora')");
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    for (auto& [path, lin] : linear_targets(base, dc.lora.target_modules, "dora '" + dc.name + "'"))
      add(path, std::make_shared<DoraDelta>(dc.name, dc.lora, dc.scale, *lin, is_fused_qkv(path), gen));
  };
  d.merges = true;
  d.hf_peft_type = "LORA";
  d.hf_export = dora_hf_export;
  d.hf_import = [](const HfAdapter& a) { return lora_family_hf_import(a, true); };
  d.hf_flag = "use_dora";
  using nlohmann::json;
  const json dora = {{"name", "dora"}, {"method", "dora"}, {"r", 4}, {"lora_alpha", 8},
                     {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}};
  d.golden = {{"dora", {{"deltas", {dora}}}},
              {"dora_adapter_plus",
               {{"deltas", {dora, {{"name", "aplus"}, {"method", "adapter_plus"}, {"dim", 4}, {"init", "bert"}}}}}}};
  d.examples = {{{"method", "dora"}, {"r", 4}, {"lora_alpha", 8}},
                {{"method", "lora"}, {"use_dora", true}, {"r", 2}, {"qkv_mode", "separate"}}};
  d.demo = DemoRow{"DoRA r=8 (qkv)", {{"name", "dora"}, {"method", "dora"}, {"r", 8}, {"lora_alpha", 8}}, 3e-3};
  return d;
}

}  // namespace dg::peft

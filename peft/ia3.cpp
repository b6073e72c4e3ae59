#include "peft/ia3.h"

#include "autograd/ops.h"
#include "nn/glob.h"
#include "peft/hf_format.h"

namespace dg::peft {

Ia3Delta::Ia3Delta(const std::string& n, nn::Linear& base, bool ff, bool init_ones, Generator& gen)
    : base_(base), feedforward_(ff) {
  name = n;
  l = Tensor::ones({ff ? base.in_features : base.out_features});
  if (!init_ones) gen.normal_(l, 0.0, 1.0);
  l.set_requires_grad(true);
}

Tensor Ia3Delta::apply(const Tensor& input, const Tensor& output) {
  if (merged_) return feedforward_ ? input : output;
  return feedforward_ ? mul(input, l) : mul(output, l);
}

void Ia3Delta::merge() {
  DG_CHECK(!merged_, "ia3 '", name, "': already merged");
  NoGradGuard ng;
  originals_.keep({base_.weight, base_.bias});
  if (feedforward_) {
    base_.weight.copy_(mul(base_.weight, view::unsqueeze(l, 0)));  // scales W's columns
  } else {
    base_.weight.copy_(mul(base_.weight, view::unsqueeze(l, 1)));  // scales W's rows and the bias
    if (base_.bias.defined()) base_.bias.copy_(mul(base_.bias, l));
  }
  merged_ = true;
}

// The other deltas at the Linear read the scaled input x * l. Merged before this one, their
// updates are scaled with W (W' = (W + dW) diag(l)): exact. Merged after it, their update
// would be added to W diag(l) and read x itself.
std::string Ia3Delta::merge_refusal(const std::vector<const nn::Delta*>& site, size_t index) const {
  if (!feedforward_ || index + 1 == site.size()) return "";
  const nn::Delta* other = site[index + 1];
  return str("ia3 '", name, "' scales the Linear's input (feedforward_modules) and ", other->method(), " '", other->name,
             "', which reads that scaled input, would merge after it, adding its update to W diag(l) where it must be "
             "scaled too; list the ia3 after the other deltas in 'deltas' (then it merges last, exactly), or keep "
             "them unmerged");
}

void Ia3Delta::unmerge() {
  DG_CHECK(merged_, "ia3 '", name, "': not merged");
  NoGradGuard ng;
  originals_.restore({base_.weight, base_.bias});  // exact: the pre-merge tensors, not W / l
  merged_ = false;
}

namespace {
// peft keeps l as [out, 1], or [1, in] for a feedforward module
void ia3_hf_export(const Attachments& list, HfAdapter& out) {
  std::vector<std::string> ff;
  for (const auto& [site, d] : list) {
    auto& a = static_cast<const Ia3Delta&>(*d);
    const int64_t n = a.l.numel();
    out.tensors["base_model.model." + site + ".ia3_l"] =
        reshape(a.l.detach(), a.feedforward() ? Shape{1, n} : Shape{n, 1}).to(DType::F32);
    out.targets.push_back(site);
    if (a.feedforward()) ff.push_back(site);
  }
  out.config = {{"peft_type", "IA3"}, {"feedforward_modules", ff}, {"init_ia3_weights", true},
                {"fan_in_fan_out", false}};
}

// ia3_l [out, 1] scales a module's output; [1, in] its input (peft's feedforward_modules)
HfImported ia3_hf_import(const HfAdapter& a) {
  hf_refuse(a, "fan_in_fan_out", false, "timm's Linear layers keep W as [out, in]");
  const HfModules mods = hf_module_tensors(a, {"ia3_l"});
  DG_CHECK(!mods.empty(), "import-peft: '", hf_tensors_file(a), "' holds no ia3_l tensors");
  HfImported out;
  std::vector<std::string> ff;
  for (const auto& [m, t] : mods) {
    const Tensor& l = hf_need(a, mods, m, "ia3_l");
    DG_CHECK(l.dim() == 2 && (l.size(0) == 1 || l.size(1) == 1), "import-peft: '", hf_tensors_file(a), "': '", m,
             ".ia3_l' has shape ", shape_str(l.shape()), ", expected [out, 1] or, for a feedforward module, [1, in]");
    if (l.size(0) == 1 && l.size(1) != 1) ff.push_back(m);
    out.tensors[m]["ia3_l"] = reshape(l, {l.numel()});
  }
  out.delta = {{"method", "ia3"}, {"target_modules", hf_module_names(mods)}, {"feedforward_modules", ff}};
  return out;
}
}  // namespace

DG_REGISTER_METHOD(ia3) {
  MethodDef d;
  d.name = "ia3";
  d.order = 80;
  d.summary = "each matching Linear: y * l (Post), or (x * l) W^T + b for feedforward_modules (Pre)";
  d.no_scale = "ia3 takes no 'scale' (its vectors are scales)";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<Ia3Options>();
    r.get("target_modules", o->target_modules);
    r.get("feedforward_modules", o->feedforward_modules);
    r.get("init_ia3_weights", o->init_ia3_weights);
    DG_CHECK(!o->target_modules.empty(), r.where, ": target_modules is empty");
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<Ia3Options>();
    const std::string who = "ia3 '" + dc.name + "'";
    for (auto& [path, lin] : linear_targets(base, o.target_modules, who))
      add(path, std::make_shared<Ia3Delta>(dc.name, *lin, nn::glob_match_any(o.feedforward_modules, path),
                                           o.init_ia3_weights, gen));
    // peft: feedforward_modules must be a subset of target_modules
    for (auto& [path, lin] : linear_targets(base, o.feedforward_modules, who))
      DG_CHECK(nn::glob_match_any(o.target_modules, path), who, ": feedforward module '", path,
               "' is not in target_modules (feedforward_modules must be a subset of them, as in peft)");
  };
  d.merges = true;
  d.hf_peft_type = "IA3";
  d.hf_export = ia3_hf_export;
  d.hf_import = ia3_hf_import;
  d.golden = {{"ia3", {{"deltas", {{{"name", "ia3"}, {"method", "ia3"}}}}}}};
  d.examples = {{{"method", "ia3"}},
                {{"method", "ia3"}, {"target_modules", {"blocks.*.attn.*", "blocks.*.mlp.*"}},
                 {"feedforward_modules", {"blocks.*.mlp.fc2"}}}};
  d.demo = DemoRow{"(IA)3 (qkv, fc2)", {{"name", "ia3"}, {"method", "ia3"}}, 1e-2};
  return d;
}

}  // namespace dg::peft

#include "peft/ssf.h"

#include <algorithm>

#include "autograd/ops.h"
#include "nn/glob.h"

namespace dg::peft {

SsfDelta::SsfDelta(const std::string& n, const std::string& site, nn::Module& target, int64_t channels, Generator& gen)
    : site_(site), target_(target) {
  name = n;
  scale = Tensor::empty({channels});
  shift = Tensor::empty({channels});
  gen.normal_(scale, 1.0, 0.02);
  gen.normal_(shift, 0.0, 0.02);
  scale.set_requires_grad(true);
  shift.set_requires_grad(true);
}

Tensor SsfDelta::apply(const Tensor&, const Tensor& output) {
  if (merged_) return output;
  return add(mul(output, scale), shift);
}

std::pair<Tensor, Tensor> SsfDelta::target_weight_bias() const {
  if (auto* l = dynamic_cast<nn::Linear*>(&target_)) return {l->weight, l->bias};
  if (auto* n = dynamic_cast<nn::LayerNorm*>(&target_)) return {n->weight, n->bias};
  auto& p = dynamic_cast<nn::PatchEmbed&>(target_);
  return {p.weight, p.bias};
}

void SsfDelta::merge() {
  DG_CHECK(!merged_, "ssf '", name, "': already merged");
  auto [W, b] = target_weight_bias();
  DG_CHECK(b.defined(), "ssf '", name, "': cannot merge the shift into '", site_, "', which has no bias");
  NoGradGuard ng;
  originals_.keep({W, b});
  Shape per_channel(size_t(W.dim()), 1);  // gamma along the output channels: dim 0 of [out, ...] or [D]
  per_channel[0] = scale.numel();
  W.copy_(mul(W, reshape(scale, per_channel)));
  b.copy_(add(mul(b, scale), shift));
  merged_ = true;
}

void SsfDelta::unmerge() {
  DG_CHECK(merged_, "ssf '", name, "': not merged");
  auto [W, b] = target_weight_bias();
  NoGradGuard ng;
  originals_.restore({W, b});  // exact: the pre-merge tensors
  merged_ = false;
}

namespace {
// The output width of a module SSF can follow and merge into, or 0.
int64_t ssf_channels(nn::Module* m) {
  if (auto* l = dynamic_cast<nn::Linear*>(m)) return l->out_features;
  if (auto* n = dynamic_cast<nn::LayerNorm*>(m)) return n->weight.size(0);
  if (auto* p = dynamic_cast<nn::PatchEmbed*>(m)) return p->dim;
  return 0;
}
}  // namespace

DG_REGISTER_METHOD(ssf) {
  MethodDef d;
  d.name = "ssf";
  d.order = 90;
  d.summary = "Post on each matching Linear, LayerNorm and the patch embedding: y * gamma + beta";
  d.no_scale = "ssf takes no 'scale' (its scale is ssf_scale)";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<SsfOptions>();
    o->given = r.has("target_modules");
    r.get("target_modules", o->target_modules);
    DG_CHECK(!o->target_modules.empty(), r.where, ": target_modules is empty");
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<SsfOptions>();
    for (auto& [path, m] : base.named_modules()) {
      if (!nn::glob_match_any(o.target_modules, path)) continue;
      const int64_t c = ssf_channels(m);
      if (c == 0) {
        // a wildcard sweeps over activations and dropouts; the default "norm" is an Identity on
        // avg-pool models (their fc_norm is not in SSF's places)
        const bool exact = std::find(o.target_modules.begin(), o.target_modules.end(), path) != o.target_modules.end();
        DG_CHECK(!exact || !o.given, "ssf '", dc.name, "': target '", path,
                 "' is not a Linear, LayerNorm or the patch embedding");
        continue;
      }
      add(path, std::make_shared<SsfDelta>(dc.name, path, *m, c, gen));
    }
  };
  d.merges = true;
  d.golden = {{"ssf", {{"deltas", {{{"name", "ssf"}, {"method", "ssf"}}}}}}};
  d.examples = {{{"method", "ssf"}}};
  d.demo = DemoRow{"SSF", {{"name", "ssf"}, {"method", "ssf"}}, 1e-2};
  return d;
}

}  // namespace dg::peft

#include "peft/shira.h"

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "peft/sensitivity.h"
#include "peft/sparse_delta.h"

namespace dg::peft {

ShiraDelta::ShiraDelta(const std::string& n, const std::string& site, const ShiraOptions& o, const ScaleConfig& sc,
                       nn::Linear& base, Generator& gen)
    : WeightUpdateDelta(n, sc, base, {}) {
  const Shape shape = base.weight.shape();
  const int64_t numel = base.weight.numel(), k = o.r * (base.in_features + base.out_features);
  Tensor mask;
  if (o.mask_type == "from") {
    mask = mask_from_file(load_safetensors(o.from).tensors, o.from, site + ".weight", shape);
  } else {
    DG_CHECK(k <= numel, "shira '", n, "' at '", site, "': r = ", o.r, " asks for ", k, " weights of ", numel);
    const Criterion c = o.mask_type == "random" ? Criterion::Random : Criterion::Magnitude;
    std::map<std::string, Tensor> score;
    if (c == Criterion::Random) {  // seeded per site: each Linear gets its own positions
      Tensor u = Tensor::empty(shape);
      Generator(o.random_seed ^ std::hash<std::string>{}(site)).uniform_(u);
      score["w"] = u;
    } else {
      score["w"] = abs(base.weight.detach());
    }
    mask = top_k_masks(score, double(k) / double(numel), true).at("w");
  }
  shira_indices = mask_positions(mask);
  shira_weight = Tensor::zeros({shira_indices.numel()});
  if (!o.init_weights) gen.normal_(shira_weight);
  shira_weight.set_requires_grad(true);
}

std::vector<std::pair<std::string, Tensor>> ShiraDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out{{"shira_weight", shira_weight}, {"shira_indices", shira_indices}};
  scale.add_to(out);
  return out;
}

Tensor ShiraDelta::update_weight() const {
  const std::vector<double> pos = shira_indices.to_vector();
  if (pos != cached_positions_ || !gather_.defined()) {
    const int64_t numel = base_.weight.numel();
    checked_positions(shira_indices, numel, "shira '" + name + "'", "shira_indices");
    std::vector<int64_t> g(size_t(numel), 0);
    for (size_t i = 0; i < pos.size(); ++i) g[size_t(pos[i])] = int64_t(i);
    gather_ = Tensor::from_vector(g, {numel}).to(shira_weight.device());
    mask_ = positions_mask(shira_indices, {numel, 1}).to(shira_weight.dtype()).to(shira_weight.device());
    cached_positions_ = pos;
  }
  // every position reads a value (positions outside the mask read value 0 and are zeroed), so the
  // gradient of value i is the gradient of dW at its one position
  Tensor dw = mul(index_select(reshape(shira_weight, {shira_weight.numel(), 1}), gather_), mask_);
  return reshape(dw, base_.weight.shape());
}

namespace {
void parse_shira(OptionReader& r, ShiraOptions& o) {
  r.get("r", o.r);
  r.get("mask_type", o.mask_type);
  r.get("from", o.from);
  r.get("random_seed", o.random_seed);
  r.get("target_modules", o.target_modules);
  r.get("init_weights", o.init_weights);
  DG_CHECK(o.r >= 1, r.where, ": r must be >= 1, got ", o.r);
  DG_CHECK(o.mask_type == "random" || o.mask_type == "magnitude" || o.mask_type == "from", r.where,
           ": mask_type must be random, magnitude or from, got '", o.mask_type, "'");
  DG_CHECK((o.mask_type == "from") == !o.from.empty(), r.where,
           ": mask_type 'from' takes a mask file in 'from' (deltagrad sensitivity writes one), and only it does");
  DG_CHECK(!o.target_modules.empty(), r.where, ": target_modules is empty");
}
}  // namespace

DG_REGISTER_METHOD(shira) {
  MethodDef d;
  d.name = "shira";
  d.order = 98;
  d.summary = "Post on each matching Linear: x dW^T, dW = K trained base-weight positions (SHiRA; K = r(in+out))";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<ShiraOptions>();
    parse_shira(r, *o);
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<ShiraOptions>();
    for (auto& [path, lin] : linear_targets(base, o.target_modules, "shira '" + dc.name + "'"))
      add(path, std::make_shared<ShiraDelta>(dc.name, path, o, dc.scale, *lin, gen));
  };
  d.merges = true;
  d.golden = {{"shira_magnitude", {{"deltas", {{{"name", "shira"}, {"method", "shira"}, {"r", 2}, {"mask_type", "magnitude"},
                                                {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}}};
  d.examples = {{{"method", "shira"}, {"r", 2}},
                {{"method", "shira"}, {"r", 1}, {"mask_type", "magnitude"}, {"target_modules", {"blocks.*.mlp.fc1"}}}};
  d.demo = DemoRow{"SHiRA r=8 (qkv, random)", {{"name", "shira"}, {"method", "shira"}, {"r", 8}}, 3e-3};
  return d;
}

}  // namespace dg::peft

#include "peft/hydra.h"

#include <cmath>

#include "autograd/ops.h"

namespace dg::peft {

namespace {
HydraBranch make_branch(int64_t in, int64_t dim, int64_t out, Generator& g) {
  HydraBranch b;
  b.down_w = Tensor::empty({dim, in});
  const double bound = std::sqrt(6.0 / double(in + dim));  // xavier_uniform_ on [dim, in]
  g.uniform_(b.down_w, -bound, bound);
  b.down_b = Tensor::zeros({dim});
  b.up_w = Tensor::zeros({out, dim});
  b.up_b = Tensor::zeros({out});
  for (Tensor* t : {&b.down_w, &b.down_b, &b.up_w, &b.up_b}) t->set_requires_grad(true);
  return b;
}
}  // namespace

HydraDelta::HydraDelta(const std::string& n, const HydraOptions& o, nn::Linear& base, Generator& gen)
    : opts_(o), base_(base) {
  name = n;
  par = make_branch(base.in_features, o.dim, base.out_features, gen);
  seq = make_branch(base.out_features, o.dim, base.out_features, gen);
}

Tensor HydraDelta::run(const HydraBranch& br, const Tensor& in) const {
  Tensor h = linear(in, br.down_w, br.down_b);
  if (training && opts_.dropout > 0) h = dropout(h, opts_.dropout, true, default_generator().next_key());
  return mul_scalar(linear(h, br.up_w, br.up_b), opts_.scale);
}

Tensor HydraDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  return add(add(y, run(par, x)), run(seq, y));  // the code's x + par + seq
}

std::vector<std::pair<std::string, Tensor>> HydraDelta::named_parameters() {
  return {{"par.down_proj.weight", par.down_w}, {"par.down_proj.bias", par.down_b},
          {"par.up_proj.weight", par.up_w},     {"par.up_proj.bias", par.up_b},
          {"seq.down_proj.weight", seq.down_w}, {"seq.down_proj.bias", seq.down_b},
          {"seq.up_proj.weight", seq.up_w},     {"seq.up_proj.bias", seq.up_b}};
}

void HydraDelta::merge() {
  DG_CHECK(!merged_, "hydra '", name, "': already merged");
  Tensor W = base_.weight, b = base_.bias;
  DG_CHECK(b.defined(), "hydra '", name, "': cannot merge the branches' biases into a Linear without a bias");
  NoGradGuard ng;
  originals_.keep({W, b});
  const double s = opts_.scale;
  // dW = s (U_p D_p + U_s (D_s W)); db = s (U_p d_p + u_p + U_s (D_s b + d_s) + u_s)
  Tensor dW = add(matmul(par.up_w, par.down_w), matmul(seq.up_w, matmul(seq.down_w, W)));
  Tensor db = add(linear(par.down_b, par.up_w, par.up_b), linear(linear(b, seq.down_w, seq.down_b), seq.up_w, seq.up_b));
  W.copy_(add(W, mul_scalar(dW, s)));
  b.copy_(add(b, mul_scalar(db, s)));
  merged_ = true;
}

void HydraDelta::unmerge() {
  DG_CHECK(merged_, "hydra '", name, "': not merged");
  originals_.restore({base_.weight, base_.bias});
  merged_ = false;
}

DG_REGISTER_METHOD(hydra) {
  MethodDef d;
  d.name = "hydra";
  d.order = 97;
  d.summary = "Post on each matching Linear (default attn.proj, mlp.fc2): y + s * up(down(x)) + s * up'(down'(y))";
  d.numeric_scale = true;
  d.no_scale = "hydra's 'scale' must be a number (Hydra's s); it takes no conditioning-scale object";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    auto o = std::make_shared<HydraOptions>();
    r.get("dim", o->dim);
    if (r.has("scale") && r.j.at("scale").is_number()) r.get("scale", o->scale);  // an object: see no_scale
    r.get("dropout", o->dropout);
    r.get("target_modules", o->target_modules);
    DG_CHECK(o->dim >= 1, r.where, ": dim must be >= 1, got ", o->dim);
    DG_CHECK(o->dropout >= 0 && o->dropout < 1, r.where, ": dropout must be in [0, 1), got ", o->dropout);
    DG_CHECK(!o->target_modules.empty(), r.where, ": target_modules is empty");
    dc.options = o;
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    const auto& o = dc.options_as<HydraOptions>();
    for (auto& [path, lin] : linear_targets(base, o.target_modules, "hydra '" + dc.name + "'"))
      add(path, std::make_shared<HydraDelta>(dc.name, o, *lin, gen));
  };
  d.merges = true;
  d.golden = {{"hydra", {{"deltas", {{{"name", "hydra"}, {"method", "hydra"}, {"dim", 3}, {"scale", 0.6}}}}}},
              {"hydra_adapter_plus", {{"deltas", {{{"name", "hydra"}, {"method", "hydra"}, {"dim", 2}, {"scale", 1.2}},
                                                  {{"name", "aplus"}, {"method", "adapter_plus"}, {"dim", 4},
                                                   {"init", "bert"}}}}}}};
  d.examples = {{{"method", "hydra"}, {"dim", 2}}};
  d.demo = DemoRow{"Hydra dim=2", {{"name", "hydra"}, {"method", "hydra"}, {"dim", 2}}, 1e-2};  // the code's default dim
  return d;
}

}  // namespace dg::peft

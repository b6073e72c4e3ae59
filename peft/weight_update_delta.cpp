#include "peft/weight_update_delta.h"

#include <cmath>

#include "autograd/ops.h"
#include "peft/hf_format.h"

namespace dg::peft {

WeightUpdateDelta::WeightUpdateDelta(const std::string& n, const ScaleConfig& sc, nn::Linear& base, LycorisDropouts d)
    : scale(sc, base.out_features), base_(base), drop_(d) {
  name = n;
}

Tensor WeightUpdateDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  if (training && drop_.module > 0) {
    Tensor u = Tensor::empty({1});
    Generator(default_generator().next_key()).uniform_(u);
    if (u.item() <= drop_.module) return y;  // peft runs the update when rand > module_dropout
  }
  Tensor dw = update_weight();
  if (training && drop_.rank > 0) {
    Tensor keep = Tensor::empty({dw.size(0)});
    Generator(default_generator().next_key()).uniform_(keep);
    std::vector<double> k = keep.to_vector();
    double kept = 0;
    for (double& v : k) kept += (v = v > drop_.rank ? 1.0 : 0.0);
    if (drop_.rank_scale && kept > 0)
      for (double& v : k) v *= double(k.size()) / kept;  // drop /= drop.mean()
    keep = Tensor::from_vector(k, {dw.size(0), 1}).to(dw.dtype()).to(dw.device());
    dw = mul(dw, keep);
  }
  return add(y, linear(x, scale.fold_rows(dw)));  // s (x dW^T) = x (s dW)^T
}

void WeightUpdateDelta::merge() {
  DG_CHECK(!merged_, method(), " '", name, "': already merged");
  NoGradGuard ng;
  originals_.keep({base_.weight});
  Tensor dw = update_weight();
  if (scale.value.defined()) dw = mul(dw, view::unsqueeze(scale.value, 1));
  base_.weight.copy_(add(base_.weight, dw));
  merged_ = true;
}

void WeightUpdateDelta::unmerge() {
  DG_CHECK(merged_, method(), " '", name, "': not merged");
  originals_.restore({base_.weight});
  merged_ = false;
}

Tensor kaiming_a5(Generator& g, int64_t rows, int64_t cols) {
  Tensor t = Tensor::empty({rows, cols});
  const double b = 1.0 / std::sqrt(double(cols));
  g.uniform_(t, -b, b);
  return t;
}

void parse_lycoris_options(OptionReader& r, LycorisOptions& o) {
  r.get("r", o.r);
  r.get("alpha", o.alpha);
  r.get("rank_dropout", o.rank_dropout);
  r.get("module_dropout", o.module_dropout);
  r.get("target_modules", o.target_modules);
  r.get("init_weights", o.init_weights);
  DG_CHECK(o.r >= 1, r.where, ": r must be >= 1, got ", o.r);
  DG_CHECK(o.rank_dropout >= 0 && o.rank_dropout < 1, r.where, ": rank_dropout must be in [0, 1)");
  DG_CHECK(o.module_dropout >= 0 && o.module_dropout < 1, r.where, ": module_dropout must be in [0, 1)");
  DG_CHECK(!o.target_modules.empty(), r.where, ": target_modules is empty");
}

LycorisOptions lycoris_hf_options(const HfAdapter& a) {
  hf_refuse(a, "rank_pattern", nlohmann::json::object(), "one r for every module");
  hf_refuse(a, "alpha_pattern", nlohmann::json::object(), "one alpha for every module");
  LycorisOptions o;
  o.r = hf_option<int64_t>(a, "r", 8);
  o.alpha = hf_option<double>(a, "alpha", 8.0);
  o.rank_dropout = hf_option<double>(a, "rank_dropout", 0.0);
  o.module_dropout = hf_option<double>(a, "module_dropout", 0.0);
  return o;
}

nlohmann::json lycoris_hf_delta(const char* method, const LycorisOptions& o, const std::vector<std::string>& targets) {
  return {{"method", method}, {"r", o.r}, {"alpha", o.alpha}, {"rank_dropout", o.rank_dropout},
          {"module_dropout", o.module_dropout}, {"target_modules", targets}};
}

}  // namespace dg::peft

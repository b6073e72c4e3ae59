// LT-SFT's L1 regularisation towards the starting values (Ansell et al., ACL 2022; the authors'
// cambridgeltl/composable-sft SparseFineTuner.training_step): l1_reg * sum_p sum |p - p0| /
// num_params, where num_params counts every parameter of the model, trained or not. It is
// composed of taped ops (sub, abs, sum, add, mul_scalar), each with its float64 gradient check,
// so its gradient is coefficient / num_params * sign(p - p0), 0 where p == p0 (torch.abs's
// subgradient, which the authors' term gets).
#include "autograd/ops.h"
#include "nn/glob.h"
#include "train/trainer.h"

namespace dg::train {

Tensor l1_reg_loss(const nn::NamedTensors& params, const std::map<std::string, Tensor>& start, double coefficient,
                   int64_t num_params) {
  DG_CHECK(num_params > 0, "l1_reg: the parameter count must be positive, got ", num_params);
  Tensor total;
  for (const auto& [name, p] : params) {
    auto it = start.find(name);
    if (it == start.end()) continue;
    DG_CHECK(it->second.shape() == p.shape(), "l1_reg: tensor '", name, "' is ", p.desc(),
             " but its starting value is ", it->second.desc());
    Tensor d = sum(abs(sub(p, it->second)));
    total = total.defined() ? add(total, d) : d;
  }
  DG_CHECK(total.defined(), "l1_reg: none of the ", params.size(), " trainable tensors has a starting value");
  return mul_scalar(total, coefficient / double(num_params));
}

std::map<std::string, Tensor> l1_reg_start(const nn::NamedTensors& params, const std::vector<std::string>& globs) {
  std::map<std::string, Tensor> start;
  for (const auto& [name, p] : params)
    if (globs.empty() || nn::glob_match_any(globs, name)) start[name] = p.detach().clone();
  std::string list;
  for (const std::string& g : globs) list += (list.empty() ? "" : ", ") + g;
  DG_CHECK(!start.empty(), "run config: l1_reg_tensors [", list, "] matches none of the ", params.size(),
           " trainable tensors");
  return start;
}

}  // namespace dg::train

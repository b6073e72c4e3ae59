// Optimizers over named parameters (as Module::named_parameters() returns them).
// State exists only for trainable tensors: a tensor without requires_grad is skipped at
// construction, so it has no moments, no gradient and costs nothing here. Element masks
// make only selected elements of a tensor trainable: masked-out elements get no update at
// all (no gradient step, no moment update, no weight decay) and stay bit-identical.
// Updates are in-place writes under NoGradGuard and bump each parameter's version, so a
// tape that saved the old value refuses to run backward through it.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dg::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;  // same alias as nn/module.h

// Two groups, "decay" and "no_decay", each with its own weight decay and lr scale (the
// effective lr of a group is lr() * lr_scale). `params` lists the trainable names in order.
struct ParamGroup {
  std::string name;
  double weight_decay = 0;
  double lr_scale = 1.0;
  std::vector<std::string> params;
};

// timm's no-weight-decay rule (optim_factory.param_groups_weight_decay) plus its ViT
// no_weight_decay() names: true for tensors with ndim <= 1, names ending in ".bias",
// pos_embed / cls_token (also under a prefix, ".pos_embed"), norms ("norm.*" or containing
// ".norm", e.g. blocks.0.norm1.weight), and tensors their owner marked no_weight_decay()
// (a PEFT method's, e.g. VPT's prompt tokens: nn/ knows no method's names).
bool is_no_decay(const std::string& name, const Tensor& t);

class Optimizer {
 public:
  // weight_decay goes to the "decay" group; the "no_decay" group starts at 0.
  Optimizer(const NamedTensors& params, double lr, double weight_decay);
  virtual ~Optimizer() = default;
  virtual void step() = 0;  // parameters whose grad is undefined are skipped
  void zero_grad();         // drops the gradient buffers (grad() becomes undefined)
  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }
  int64_t steps() const { return step_; }
  // 0/1 mask, same shape as the parameter (any dtype/device: converted to the parameter's).
  void set_mask(const std::string& name, const Tensor& mask01);
  void clear_mask(const std::string& name);
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // Set a group's options ("decay" or "no_decay"); unknown names are errors.
  void set_group_options(const std::string& group, double lr_scale, double weight_decay);
  size_t num_trainable() const { return params_.size(); }
  size_t num_state_tensors() const;
  size_t state_bytes() const;
  // Checkpoint state: "<name>.exp_avg", "<name>.exp_avg_sq" (AdamW) or
  // "<name>.momentum_buffer" (SGD), plus "step" (int64 [1]). Tensors are shared, not copied.
  std::map<std::string, Tensor> state_dict() const;
  // Replaces all state; shapes are checked, unknown "<name>.*" entries for trainable
  // tensors are errors, entries for names this optimizer does not train are ignored.
  void load_state_dict(const std::map<std::string, Tensor>& sd);

 protected:
  struct Slot {
    std::string name;
    Tensor param, mask;
    size_t group;                         // index into groups_
    std::map<std::string, Tensor> state;  // "exp_avg", "exp_avg_sq" or "momentum_buffer"
  };
  std::vector<Slot> params_;
  std::vector<ParamGroup> groups_;
  double lr_;
  int64_t step_ = 0;
  Slot* find(const std::string& name);
  virtual std::vector<std::string> state_keys() const = 0;
};

// AdamW (Loshchilov & Hutter) as torch.optim.AdamW, op for op (backend `adamw` kernel):
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
//   p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps),  bc_i = 1 - b_i^t.
// One step counter t for the whole optimizer (PyTorch keeps one per tensor; they agree
// unless a trainable tensor misses a gradient on some steps).
class AdamW : public Optimizer {
 public:
  AdamW(const NamedTensors& params, double lr = 1e-3, double weight_decay = 0.01, double beta1 = 0.9,
        double beta2 = 0.999, double eps = 1e-8);
  void step() override;
  double beta1, beta2, eps;

 protected:
  std::vector<std::string> state_keys() const override { return {"exp_avg", "exp_avg_sq"}; }
};

// SGD with momentum as torch.optim.SGD with dampening 0 (weight decay is coupled: added to
// the gradient): g' = g + wd*p;  buf = g' on the first step, else mu*buf + g';
// p -= lr * (nesterov ? g' + mu*buf : buf). With momentum 0 there is no state.
class SGD : public Optimizer {
 public:
  SGD(const NamedTensors& params, double lr, double momentum = 0.9, double weight_decay = 0, bool nesterov = false);
  void step() override;
  double momentum;
  bool nesterov;

 protected:
  std::vector<std::string> state_keys() const override { return {"momentum_buffer"}; }
};

// torch.nn.utils.clip_grad_norm_ (L2): total = sqrt(sum over trainable tensors with a
// gradient of sum(g^2)), accumulated in double; coef = max_norm / (total + 1e-6); if
// coef < 1 every gradient is scaled by coef in place. Returns the norm before clipping
// (not finite if a gradient is: the caller decides whether to skip the step).
double clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace dg::nn

// Optimizers over named parameters. State exists only for trainable tensors: a frozen
// weight has no moments, no gradient and costs nothing here. Element masks make only
// selected elements of a tensor trainable: masked-out elements get no update at all
// (no gradient step, no moment update, no weight decay).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "nn/module.h"

namespace dg::nn {

struct ParamGroup {
  std::string name;  // "decay" or "no_decay"
  double weight_decay = 0;
  std::vector<std::string> params;
};

// timm's rule: no weight decay on 1-D tensors (biases, norms, LayerScale, scales), on
// pos_embed / cls_token, and on prompt tokens.
bool is_no_decay(const std::string& name, const Tensor& t);

class Optimizer {
 public:
  Optimizer(const NamedTensors& params, double lr, double weight_decay);
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  void zero_grad();
  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }
  int64_t steps() const { return step_; }
  void set_mask(const std::string& name, const Tensor& mask01);  // same shape as the parameter
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  size_t num_trainable() const { return params_.size(); }
  size_t state_bytes() const;
  // Checkpoint state: "<name>.<slot>" tensors plus "step".
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& sd);

 protected:
  struct Slot {
    std::string name;
    Tensor param, mask;
    double weight_decay;
    std::map<std::string, Tensor> state;  // "exp_avg", "exp_avg_sq", "momentum_buffer"
  };
  std::vector<Slot> params_;
  std::vector<ParamGroup> groups_;
  double lr_;
  int64_t step_ = 0;
  Slot* find(const std::string& name);
};

// AdamW (Loshchilov & Hutter) with PyTorch's update order: p *= 1 - lr*wd, then
// m, v moments, then p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
class AdamW : public Optimizer {
 public:
  AdamW(const NamedTensors& params, double lr = 1e-3, double weight_decay = 0.01, double beta1 = 0.9,
        double beta2 = 0.999, double eps = 1e-8);
  void step() override;
  double beta1, beta2, eps;
};

// SGD with momentum as torch.optim.SGD (dampening 0): g += wd * p; buf = mu*buf + g;
// p -= lr * (nesterov ? g + mu*buf : buf).
class SGD : public Optimizer {
 public:
  SGD(const NamedTensors& params, double lr, double momentum = 0.9, double weight_decay = 0, bool nesterov = false);
  void step() override;
  double momentum;
  bool nesterov;
};

// PyTorch's clip_grad_norm_: total L2 norm over all gradients; if above max_norm, scale
// every gradient by max_norm / (norm + 1e-6). Returns the norm before clipping.
double clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace dg::nn

#include "nn/optim.h"

#include <cmath>

#include "autograd/ops.h"
#include "core/backend.h"

namespace dg::nn {

bool is_no_decay(const std::string& name, const Tensor& t) {
  auto ends = [&](const char* s) {
    const size_t n = std::char_traits<char>::length(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return t.dim() <= 1 || name == "pos_embed" || name == "cls_token" || ends(".bias") || ends("prompt") ||
         ends("prompts");
}

Optimizer::Optimizer(const NamedTensors& params, double lr, double wd) : lr_(lr) {
  ParamGroup decay{"decay", wd, {}}, no_decay{"no_decay", 0.0, {}};
  for (const auto& [name, t] : params) {
    if (!t.requires_grad()) continue;  // frozen: no state, no update
    const bool nd = is_no_decay(name, t);
    (nd ? no_decay : decay).params.push_back(name);
    params_.push_back({name, t, Tensor(), nd ? 0.0 : wd, {}});
  }
  groups_ = {decay, no_decay};
}

Optimizer::Slot* Optimizer::find(const std::string& name) {
  for (Slot& s : params_)
    if (s.name == name) return &s;
  return nullptr;
}

void Optimizer::zero_grad() {
  for (Slot& s : params_) s.param.zero_grad();
}

void Optimizer::set_mask(const std::string& name, const Tensor& mask) {
  Slot* s = find(name);
  DG_CHECK(s, "optimizer: mask for '", name, "', which is not a trainable parameter");
  DG_CHECK(mask.shape() == s->param.shape(), "optimizer: mask for '", name, "' has shape ", shape_str(mask.shape()),
           ", expected ", shape_str(s->param.shape()));
  s->mask = mask.to(s->param.dtype()).to(s->param.device()).contiguous();
}

size_t Optimizer::state_bytes() const {
  size_t n = 0;
  for (const Slot& s : params_)
    for (const auto& [k, t] : s.state) n += t.nbytes();
  return n;
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const Slot& s : params_)
    for (const auto& [k, t] : s.state) out[s.name + "." + k] = t;
  out["step"] = Tensor::from_vector(std::vector<int64_t>{step_}, {1});
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& sd) {
  auto st = sd.find("step");
  DG_CHECK(st != sd.end(), "optimizer state: missing 'step'");
  step_ = int64_t(st->second.item());
  for (Slot& s : params_) {
    s.state.clear();
    for (const auto& [k, t] : sd) {
      if (k.size() <= s.name.size() + 1 || k.compare(0, s.name.size() + 1, s.name + ".") != 0) continue;
      const std::string slot = k.substr(s.name.size() + 1);
      if (slot.find('.') != std::string::npos) continue;  // a longer name sharing the prefix
      DG_CHECK(t.shape() == s.param.shape(), "optimizer state '", k, "' has shape ", shape_str(t.shape()),
               ", expected ", shape_str(s.param.shape()));
      s.state[slot] = t.to(s.param.dtype()).to(s.param.device()).clone();
    }
  }
}

AdamW::AdamW(const NamedTensors& params, double lr, double wd, double b1, double b2, double e)
    : Optimizer(params, lr, wd), beta1(b1), beta2(b2), eps(e) {}

void AdamW::step() {
  NoGradGuard ng;
  ++step_;
  for (Slot& s : params_) {
    Tensor g = s.param.grad();
    if (!g.defined()) continue;
    if (!s.state.count("exp_avg")) {
      s.state["exp_avg"] = Tensor::zeros(s.param.shape(), s.param.dtype(), s.param.device());
      s.state["exp_avg_sq"] = Tensor::zeros(s.param.shape(), s.param.dtype(), s.param.device());
    }
    DG_CHECK(s.param.is_contiguous(), "AdamW: parameter '", s.name, "' is not contiguous");
    Backend::AdamW h{lr_, beta1, beta2, eps, s.weight_decay, step_};
    backend_of(s.param).adamw(h, s.param, g.contiguous(), s.state["exp_avg"], s.state["exp_avg_sq"], s.mask);
    s.param.bump_version();
  }
}

SGD::SGD(const NamedTensors& params, double lr, double mu, double wd, bool nest)
    : Optimizer(params, lr, wd), momentum(mu), nesterov(nest) {}

void SGD::step() {
  NoGradGuard ng;
  ++step_;
  for (Slot& s : params_) {
    Tensor g = s.param.grad();
    if (!g.defined()) continue;
    if (s.weight_decay != 0) g = add(g, mul_scalar(s.param, s.weight_decay));
    Tensor d = g;
    if (momentum != 0) {
      auto it = s.state.find("momentum_buffer");
      if (it == s.state.end()) {
        s.state["momentum_buffer"] = g.clone();  // PyTorch: the first buffer is the gradient itself
      } else {
        it->second.copy_(add(mul_scalar(it->second, momentum), g));
      }
      const Tensor& buf = s.state["momentum_buffer"];
      d = nesterov ? add(g, mul_scalar(buf, momentum)) : buf;
    }
    Tensor upd = sub(s.param, mul_scalar(d, lr_));
    if (s.mask.defined()) {  // masked-out elements keep their value (and their momentum)
      Tensor keep = Tensor::empty(upd.shape(), upd.dtype(), upd.device());
      backend_of(upd).where(s.mask, upd, s.param.contiguous(), keep);
      upd = keep;
      if (momentum != 0 && s.state.count("momentum_buffer")) {
        // a masked element's buffer must not accumulate either: reset it where mask == 0
        Tensor& buf = s.state["momentum_buffer"];
        Tensor fixed = Tensor::empty(buf.shape(), buf.dtype(), buf.device());
        backend_of(buf).where(s.mask, buf, Tensor::zeros(buf.shape(), buf.dtype(), buf.device()), fixed);
        buf.copy_(fixed);
      }
    }
    s.param.copy_(upd);
  }
}

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  double ss = 0;
  for (const auto& [n, t] : params)
    if (t.requires_grad() && t.grad().defined()) ss += backend_of(t).sum_squares(t.grad());
  const double norm = std::sqrt(ss);
  if (norm > max_norm) {
    const double k = max_norm / (norm + 1e-6);
    for (const auto& [n, t] : params) {
      Tensor g = t.grad();
      if (t.requires_grad() && g.defined()) backend_of(g).unary(UnaryOp::MulScalar, g, g, k);
    }
  }
  return norm;
}

}  // namespace dg::nn

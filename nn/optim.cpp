#include "nn/optim.h"

#include <cmath>
#include <set>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/backend.h"

namespace dg::nn {

bool is_no_decay(const std::string& name, const Tensor& t) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  auto starts = [&](const std::string& s) { return name.compare(0, s.size(), s) == 0; };
  if (t.dim() <= 1 || ends(".bias")) return true;
  if (name == "pos_embed" || name == "cls_token" || ends(".pos_embed") || ends(".cls_token")) return true;
  if (starts("norm.") || name.find(".norm") != std::string::npos) return true;
  return t.no_weight_decay();
}

Optimizer::Optimizer(const NamedTensors& params, double lr, double wd) : lr_(lr) {
  groups_ = {ParamGroup{"decay", wd, 1.0, {}}, ParamGroup{"no_decay", 0.0, 1.0, {}}};
  std::set<std::string> seen;
  for (const auto& [name, t] : params) {
    DG_CHECK(t.defined(), "optimizer: parameter '", name, "' is an undefined tensor");
    if (!t.requires_grad()) continue;  // frozen: no state, no update
    DG_CHECK(seen.insert(name).second, "optimizer: parameter '", name, "' is listed twice");
    DG_CHECK(t.is_contiguous(), "optimizer: parameter '", name, "' is not contiguous (shape ",
             shape_str(t.shape()), "); updates are written in place to whole buffers");
    const size_t gi = is_no_decay(name, t) ? 1 : 0;
    groups_[gi].params.push_back(name);
    params_.push_back({name, t, Tensor(), gi, {}});
  }
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
  DG_CHECK(s, "optimizer: mask for '", name, "', which is not a trainable parameter of this optimizer");
  DG_CHECK(mask.defined() && mask.shape() == s->param.shape(), "optimizer: mask for '", name, "' has shape ",
           mask.defined() ? shape_str(mask.shape()) : std::string("(undefined)"), ", expected ",
           shape_str(s->param.shape()));
  s->mask = mask.to(s->param.dtype()).to(s->param.device()).contiguous();
}

void Optimizer::clear_mask(const std::string& name) {
  Slot* s = find(name);
  DG_CHECK(s, "optimizer: clear_mask for '", name, "', which is not a trainable parameter of this optimizer");
  s->mask = Tensor();
}

void Optimizer::set_group_options(const std::string& group, double lr_scale, double weight_decay) {
  for (ParamGroup& g : groups_)
    if (g.name == group) {
      g.lr_scale = lr_scale, g.weight_decay = weight_decay;
      return;
    }
  throw Error(str("optimizer: unknown parameter group '", group, "' (expected 'decay' or 'no_decay')"));
}

size_t Optimizer::num_state_tensors() const {
  size_t n = 0;
  for (const Slot& s : params_) n += s.state.size();
  return n;
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
  DG_CHECK(st != sd.end() && st->second.numel() == 1, "optimizer state: missing 'step' (a 1-element tensor)");
  std::set<std::string> used{"step"};
  std::vector<std::map<std::string, Tensor>> fresh(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const Slot& s = params_[i];
    for (const std::string& k : state_keys()) {
      auto it = sd.find(s.name + "." + k);
      if (it == sd.end()) continue;  // never stepped (no gradient yet): state is created lazily
      DG_CHECK(it->second.shape() == s.param.shape(), "optimizer state '", it->first, "' has shape ",
               shape_str(it->second.shape()), ", expected ", shape_str(s.param.shape()));
      fresh[i][k] = it->second.to(s.param.dtype()).to(s.param.device()).clone();
      used.insert(it->first);
    }
  }
  for (const auto& [k, t] : sd)
    DG_CHECK(used.count(k), "optimizer state: entry '", k,
             "' belongs to no trainable parameter and slot of this optimizer (a different optimizer or model?)");
  step_ = int64_t(st->second.item());
  for (size_t i = 0; i < params_.size(); ++i) params_[i].state = std::move(fresh[i]);
}

AdamW::AdamW(const NamedTensors& params, double lr, double wd, double b1, double b2, double e)
    : Optimizer(params, lr, wd), beta1(b1), beta2(b2), eps(e) {}

void AdamW::step() {
  NoGradGuard ng;
  ++step_;
  for (Slot& s : params_) {
    Tensor g = s.param.grad();
    if (!g.defined()) continue;
    DG_CHECK(g.shape() == s.param.shape() && g.dtype() == s.param.dtype() && g.device() == s.param.device(),
             "AdamW: gradient of '", s.name, "' has shape ", shape_str(g.shape()), ", expected ",
             shape_str(s.param.shape()), " with the parameter's dtype and device");
    if (!s.state.count("exp_avg")) {
      s.state["exp_avg"] = Tensor::zeros(s.param.shape(), s.param.dtype(), s.param.device());
      s.state["exp_avg_sq"] = Tensor::zeros(s.param.shape(), s.param.dtype(), s.param.device());
    }
    const ParamGroup& grp = groups_[s.group];
    Backend::AdamW h{lr_ * grp.lr_scale, beta1, beta2, eps, grp.weight_decay, step_};
    backend_of(s.param).adamw(h, s.param, g.contiguous(), s.state["exp_avg"], s.state["exp_avg_sq"], s.mask);
    s.param.bump_version();
  }
}

SGD::SGD(const NamedTensors& params, double lr, double mu, double wd, bool nest)
    : Optimizer(params, lr, wd), momentum(mu), nesterov(nest) {
  DG_CHECK(!nesterov || momentum > 0, "SGD: nesterov needs momentum > 0, got ", momentum);
}

void SGD::step() {
  NoGradGuard ng;
  ++step_;
  for (Slot& s : params_) {
    Tensor g = s.param.grad();
    if (!g.defined()) continue;
    DG_CHECK(g.shape() == s.param.shape(), "SGD: gradient of '", s.name, "' has shape ", shape_str(g.shape()),
             ", expected ", shape_str(s.param.shape()));
    const ParamGroup& grp = groups_[s.group];
    const double lr = lr_ * grp.lr_scale;
    if (grp.weight_decay != 0) g = add(g, mul_scalar(s.param, grp.weight_decay));  // coupled decay
    Tensor d = g;
    if (momentum != 0) {
      auto it = s.state.find("momentum_buffer");
      if (it == s.state.end()) {
        // PyTorch: the first buffer is the (decayed) gradient itself. Masked-out elements
        // start at zero and stay there (their gradient never enters).
        Tensor buf = g.contiguous().clone();
        if (s.mask.defined())
          backend_of(buf).where(s.mask, buf, Tensor::zeros(buf.shape(), buf.dtype(), buf.device()), buf);
        s.state["momentum_buffer"] = buf;
      } else {
        Tensor nb = add(mul_scalar(it->second, momentum), g);
        if (s.mask.defined()) {  // masked-out elements keep their buffer
          Tensor keep = Tensor::empty(nb.shape(), nb.dtype(), nb.device());
          backend_of(nb).where(s.mask, nb, it->second, keep);
          nb = keep;
        }
        it->second.copy_(nb);
      }
      const Tensor& buf = s.state["momentum_buffer"];
      d = nesterov ? add(g, mul_scalar(buf, momentum)) : buf;
    }
    Tensor upd = sub(s.param, mul_scalar(d, lr));
    if (s.mask.defined()) {  // masked-out elements keep their exact bits
      Tensor keep = Tensor::empty(upd.shape(), upd.dtype(), upd.device());
      backend_of(upd).where(s.mask, upd, s.param, keep);
      upd = keep;
    }
    s.param.copy_(upd);  // copy_ bumps the version
  }
}

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  NoGradGuard ng;
  double ss = 0;
  for (const auto& [n, t] : params)
    if (t.requires_grad() && t.grad().defined()) ss += backend_of(t).sum_squares(t.grad());
  const double norm = std::sqrt(ss);  // inf/nan are returned as they are (PyTorch's default)
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (const auto& [n, t] : params) {
      Tensor g = t.grad();
      if (t.requires_grad() && g.defined()) {
        backend_of(g).unary(UnaryOp::MulScalar, g, g, coef);
        g.bump_version();
      }
    }
  }
  return norm;
}

}  // namespace dg::nn

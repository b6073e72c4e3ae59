#include "peft/training_loss.h"

#include "autograd/ops.h"
#include "peft/peft_model.h"

namespace dg::peft {

namespace {
// F.kl_div(log_softmax(q), softmax(p), reduction='sum'): sum p * (log p - log q), with p from
// logits the gradient does not reach.
Tensor kl_sum(const Tensor& q_logits, const Tensor& p_logits_detached) {
  Tensor p = softmax(p_logits_detached, 1);
  return sum(mul(p, sub(log_softmax(p_logits_detached, 1), log_softmax(q_logits, 1))));
}
}  // namespace

Tensor symmetric_kl_loss(const Tensor& a, const Tensor& b) {
  DG_CHECK(a.dim() == 2 && a.shape() == b.shape(), "symmetric_kl_loss: expected two [batch, classes] logits of one ",
           "shape, got ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  const double batchmean = 1.0 / double(a.shape()[0]);
  return mul_scalar(add(kl_sum(a, b.detach()), kl_sum(b, a.detach())), 0.5 * batchmean);
}

std::optional<ConsistencyLoss> consistency_loss_of(const PeftModel& pm) {
  std::optional<ConsistencyLoss> out;
  std::string first;
  for (const std::string& name : pm.delta_names())
    for (const auto& [site, d] : pm.attachments(name)) {
      if (!d->enabled) continue;
      const auto c = static_cast<const MethodDelta&>(*d).consistency_loss();
      if (!c) continue;
      DG_CHECK(!out || *out == *c, "peft config: deltas '", first, "' and '", name, "' ask for consistency losses of ",
               "different weights (add_weight ", out->add_weight, " / ", c->add_weight, ", reg_weight ",
               out->reg_weight, " / ", c->reg_weight, "); a step has one second forward");
      if (!out) out = c, first = name;
    }
  return out;
}

StepLoss training_loss(PeftModel& pm, const Tensor& images, const Tensor& labels, double label_smoothing) {
  StepLoss s;
  s.logits = pm.forward(images);
  s.loss = cross_entropy(s.logits, labels, label_smoothing);
  if (const auto c = consistency_loss_of(pm)) {
    Tensor again = pm.forward(images);  // the deltas draw their random copies and dropout anew
    if (c->add_weight > 0) s.loss = add(s.loss, mul_scalar(cross_entropy(again, labels, label_smoothing), c->add_weight));
    if (c->reg_weight > 0) s.loss = add(s.loss, mul_scalar(symmetric_kl_loss(s.logits, again), c->reg_weight));
  }
  return s;
}

}  // namespace dg::peft

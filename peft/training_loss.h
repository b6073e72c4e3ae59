// The loss a training step minimises: the cross-entropy of the forward's logits, plus what a
// method's own training adds. MoSA's (Theia-4869/MoSA src/engine/trainer.py forward_one_batch
// with MODEL.ADAPTER.ADDITIONAL, src/solver/losses.py symmetric_KL_loss): a second forward of
// the same images (new random copies, new dropout) and
//   loss = CE(z1, y) + add_weight * CE(z2, y) + reg_weight * 0.5 * (KL(p2 || p1) + KL(p1 || p2)),
// each KL F.kl_div(log_softmax(one), softmax(other.detach()), 'batchmean'), so each term's
// gradient reaches only its log_softmax side; a weight of 0 leaves its term out, as theirs.
#pragma once
#include <optional>

#include "core/tensor.h"

namespace dg::peft {

class PeftModel;

// The extra terms a delta asks for (MethodDelta::consistency_loss).
struct ConsistencyLoss {
  double add_weight = 0.0;  // ADD_WEIGHT: the second forward's cross-entropy
  double reg_weight = 1.0;  // REG_WEIGHT: the symmetric KL between the two forwards
  bool operator==(const ConsistencyLoss&) const = default;
};

// symmetric_KL_loss(a, b) for [batch, classes] logits: built from log_softmax, softmax, mul and
// sum (no op of its own), the detached sides as the authors'.
Tensor symmetric_kl_loss(const Tensor& a, const Tensor& b);

struct StepLoss {
  Tensor loss;
  Tensor logits;  // the first forward's: accuracy is counted on it, as theirs
};

// The consistency loss the model's deltas ask for (all that ask must agree), or none.
std::optional<ConsistencyLoss> consistency_loss_of(const PeftModel& pm);

// Forward `images` (twice when a delta asks for the consistency loss) and the loss above.
StepLoss training_loss(PeftModel& pm, const Tensor& images, const Tensor& labels, double label_smoothing = 0.0);

}  // namespace dg::peft

// The cost ledger behind `deltagrad cost`: what one training step of a PEFT model costs, per delta,
// per site and for the base, from one recorded step (the tape's records and the GEMMs the engine
// issued), with the allocator's measurement beside the prediction.
//  * trainable parameters (a masked tensor counts its unmasked elements), their gradient bytes
//    (whole f32 tensors) and AdamW's state (exp_avg and exp_avg_sq: two f32 per element);
//  * activation bytes saved for backward: every buffer the tape's records keep, once (a buffer two
//    records save belongs to the first), to the delta whose forward recorded it (autograd/
//    cost_meter.h); saved views of parameters are no new memory and are listed apart;
//  * forward and backward GEMM FLOPs as issued (a frozen weight's gradient GEMM never runs);
//  * the delta file's bytes: each delta's tensors as stored, the base row the rest of the file
//    (trained base tensors, masks, the header); the total is the file's size, written once.
// The peak is predicted by replaying backward over the records (saved buffers freed as each record
// is done, activation gradients alive from producer to consumer, parameter gradients from their
// first use) on top of the step's fixed memory (weights, buffers, masks, optimizer state, the
// batch), or at the forward's end: everything saved plus an MLP's working set (no record shows it). Measured: the tape's held bytes, and the allocator's peak over a real step (forward,
// backward, masks, AdamW) after one warm-up step, so the optimizer state exists as in training.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "peft/peft_model.h"

namespace dg::train {

struct CostRow {
  std::string name;  // "base", a delta's config name, or for a site "<delta>@<site>"
  std::string kind;  // "base", "delta" or "site"
  int64_t trainable_params = 0;
  int64_t grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  double forward_flops = 0, backward_flops = 0;
  int64_t file_bytes = 0;
  void add(const CostRow& o);
};

struct CostOptions {
  int64_t batch = 8;
  bool bf16 = false;           // autocast (autograd/autocast.h)
  bool recompute_mlp = false;  // nn::VisionTransformer::set_recompute_mlp
  Device device = Device::CPU;
  bool measure = true;         // also measure: a warm-up step first, then the allocator's peak
};

struct CostLedger {
  std::vector<CostRow> rows;  // base, then each delta followed by its sites
  CostRow total;              // base + deltas
  int64_t weight_bytes = 0;   // parameters (base and delta), buffers and masks
  int64_t input_bytes = 0;    // the batch: images and labels
  int64_t saved_param_bytes = 0;  // saved views of parameters (held by the tape, no new memory)
  int64_t peak_bytes = 0;     // predicted
  bool measured = false;
  int64_t measured_held_bytes = 0;  // Tape::held_bytes() before backward
  int64_t measured_peak_bytes = 0;  // the allocator's peak over the real step
  size_t records = 0;
};

// The ledger of one step of `pm` at `o.batch` random images (labels 0, 1, ...). The model's
// weights do not change what is counted; after a measured step they have taken two AdamW steps.
CostLedger cost_ledger(peft::PeftModel& pm, const CostOptions& o);

}  // namespace dg::train

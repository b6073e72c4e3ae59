// A frozen ViT plus the deltas a PEFT config describes. This is the object the CLI, the
// trainer and the examples use: build it, train its trainable_parameters(), save only
// the deltas, load them onto the same base later.
#pragma once
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "nn/vit.h"
#include "peft/config.h"
#include "peft/deltas.h"
#include "peft/method_registry.h"
#include "peft/sensitivity.h"

namespace dg::peft {

class PeftModel {
 public:
  // Freezes the base, attaches every delta of the config (seeded init), makes the
  // `trainable` globs and masked tensors trainable.
  PeftModel(nn::VisionTransformer& base, const PeftConfig& cfg, uint64_t seed = 0);

  nn::VisionTransformer& base() { return base_; }
  const PeftConfig& config() const { return cfg_; }
  Tensor forward(const Tensor& images) { return base_(images); }

  // Deltas by config name (a name may own several attachments, e.g. one per block).
  std::vector<std::string> delta_names() const;
  void set_enabled(const std::string& name, bool enabled);  // NeMo's set_enabled_adapters
  void remove(const std::string& name);                     // detach (last added first at each site)
  std::vector<std::pair<std::string, std::shared_ptr<nn::Delta>>> attachments(const std::string& name) const;

  nn::NamedTensors trainable_parameters() const;
  // Move the base, every delta and the masks to a device (in place).
  void to(Device dev);
  const std::map<std::string, Tensor>& masks() const { return masks_; }
  void mask_gradients();  // zero the gradient of masked-out elements (what `grads` reports)
  // Masks whose "select" criterion needs gradients (grad, taylor, fisher) are chosen here, from
  // `data`, before training (the trainer calls it); until then they are empty.
  bool selection_pending() const { return !pending_selects_.empty(); }
  void select_masks(const BatchSource& data);
  // How many elements the pending selections will choose: a top-k keeps exactly
  // llround(budget * elements), over all matched tensors (global) or per tensor.
  int64_t pending_selection_count() const;

  // peft's print_trainable_parameters / OpenDelta's log(): per delta and in total.
  std::string report() const;
  // The report's total: each delta's own count (MoSA's copies count once, VeRA's frozen shared
  // projections not at all), trainable base tensors, and masked tensors' trained elements.
  int64_t trainable_count() const;
  int64_t base_parameter_count() const;

  // A frozen base tensor that no base checkpoint holds (a fresh head for a new task's
  // classes): saved in delta files all the same, else the deltas would come back on another
  // head.
  void keep_base_tensor(const std::string& name);

  // Delta files: the delta tensors and trained base tensors (and masks), with the PEFT
  // config and the base's identity in __metadata__. Loading checks the identity.
  void save(const std::string& path) const;
  void load(const std::string& path);
  // Build from a delta file alone: the PEFT config is read from its metadata.
  static std::unique_ptr<PeftModel> from_file(nn::VisionTransformer& base, const std::string& path);

  // Merge every delta whose method merges (method_registry.h) into the base weights, in
  // attachment order; unmerge restores the weights bit-exactly, in reverse order.
  void merge();
  void unmerge();
  bool mergeable(const std::string& name) const;
  const MethodDef& method_of(const std::string& name) const;

  // Hugging Face peft format on timm models (adapter_model.safetensors + adapter_config.json
  // in `dir`) for one delta of a method with an hf_export (method_registry.h). Separate q/k/v
  // LoRAs export exactly as one joint LoRA of rank 3r (A stacked, B block-diagonal). Trained base tensors (a head, BitFit biases) and
  // kept ones go as peft's modules_to_save (whole modules); other deltas are not exported (a
  // notice names them).
  void export_hf(const std::string& dir, const std::string& delta_name = "") const;

 private:
  std::pair<int64_t, int64_t> base_trainable_counts() const;  // (whole tensors, masked elements)
  nn::VisionTransformer& base_;
  PeftConfig cfg_;
  // config name -> (site, delta), in attachment order
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::shared_ptr<nn::Delta>>>>> deltas_;
  std::map<std::string, Tensor> masks_;
  std::set<std::string> kept_;  // keep_base_tensor
  std::vector<MaskConfig> pending_selects_;
  std::map<std::string, Tensor> select(const MaskConfig& m, const BatchSource& data);
  std::map<std::string, const MethodDef*> methods_;  // config name -> its method
  void attach(const DeltaConfig& d, Generator& gen);
  nlohmann::json delta_metadata() const;  // "<site>.<delta>" -> file_metadata(), for each that has one
  void load_file_tensors(SafeTensors& st, std::map<std::string, Tensor>& mine, const std::string& path);
};

// LT-SFT's composition (Ansell et al., ACL 2022, "Composable Sparse Fine-Tuning"): the
// differences of several delta files made on this same base (a file's tensor minus the base's,
// at its positions where it is sparse) added to the base weights, in place. Files with deltas of
// a method (LoRA, SHiRA, ...) are refused: only base-tensor differences compose by addition.
void add_sparse_differences(nn::VisionTransformer& base, const std::vector<std::string>& delta_files);

// 64-bit FNV-1a over base tensor names and shapes, hex: "which base model is this".
std::string base_identity(nn::Module& base);

// Import a Hugging Face peft adapter (dir with adapter_model.safetensors, adapter_config.json)
// of any method with an hf_import (its peft_type, and use_dora, pick it) as a PEFT config +
// delta tensors that PeftModel::load understands (peft/hf_import.cpp). modules_to_save
// tensors become trained base tensors of the delta file.
void import_hf(const std::string& dir, const std::string& out_delta_file, nn::VisionTransformer& base);
// The classes of the head a Hugging Face peft adapter saved (modules_to_save), or -1 if none.
int64_t hf_head_classes(const std::string& dir);

}  // namespace dg::peft

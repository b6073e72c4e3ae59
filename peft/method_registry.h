// The PEFT method registry, as ops have one (autograd/op_registry.h): a method is one delta
// class plus one registration beside it. The registration maps the config's `method` name to
// its option parser, its attachment (which sites of the ViT get a delta) and its abilities
// (merge / unmerge, Hugging Face peft export and import, the report's parameter count), and names the
// checks it must pass: golden parity cases (fixtures made by scripts/make_peft*_golden.py)
// and examples for the frozen-base test. tests/test_method_registry.cpp fails when a
// registered method lacks a golden case, an example or a README row. The config's error
// messages, the CLI help and the demo read the list of methods from here.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/random.h"
#include "nn/delta.h"
#include "nn/layers.h"
#include "nn/vit.h"
#include "peft/config.h"
#include "peft/option_reader.h"
#include "peft/training_loss.h"

namespace dg::peft {

class BinaryWeights;  // peft/packed_bits.h

// A delta made by a registered method. Merging is an ability: MethodDef::merges says which
// methods have it, and those override merge/unmerge/merged.
class MethodDelta : public nn::Delta {
 public:
  virtual void merge();    // fold into the base weights; forward then skips the delta
  virtual void unmerge();  // restore the base weights bit-exactly (the originals are kept)
  virtual bool merged() const { return false; }
  // Why merging this delta would not reproduce the unmerged forward, given every delta at its
  // site in merge (config) order, this one site[index], or "" when it is exact.
  virtual std::string merge_refusal(const std::vector<const nn::Delta*>& site, size_t index) const { return ""; }
  // The report's parameter count: trainable elements (frozen shared tensors do not count).
  virtual int64_t trainable_count();
  // What a delta file records beside this delta's tensors to rebuild it exactly (VeRA: the
  // seed, generator and shapes of the projections it regenerates), or null. Loading checks it.
  virtual nlohmann::json file_metadata() const { return nullptr; }
  // Its 1-bit (`bits: 1`) weights, which a delta file stores packed; null where it has none.
  virtual BinaryWeights* binary_weights() { return nullptr; }
  // What a delta file stores for this delta when it is not named_parameters(), by local name
  // (MoSA: the merged adapter that eval uses, not the copies and masks); empty: named_parameters().
  // A file written so is read back by load_file_tensors, with file_metadata() saying which it is.
  virtual std::map<std::string, Tensor> file_tensors() const { return {}; }
  virtual void load_file_tensors(const std::map<std::string, Tensor>& tensors, const std::string& path) {}
  // The second training forward this delta asks for (MoSA's consistency loss), or none.
  virtual std::optional<ConsistencyLoss> consistency_loss() const { return std::nullopt; }
};

// The pre-merge values of the base tensors a merge writes: unmerge copies them back, so
// it is bit-exact (W + dW - dW is not, in float32). Undefined tensors (no bias) are skipped.
class MergeOriginals {
 public:
  void keep(std::initializer_list<Tensor> live);     // clones of the tensors about to change
  void restore(std::initializer_list<Tensor> live);  // the same tensors, in the same order
 private:
  std::vector<Tensor> saved_;
};

// (site, delta) pairs of one config delta, in attachment order.
using Attachments = std::vector<std::pair<std::string, std::shared_ptr<nn::Delta>>>;
using AttachFn = std::function<void(const std::string& site, std::shared_ptr<MethodDelta>)>;

// Hugging Face peft's adapter format: tensors keyed "base_model.model.<module>.<...>" and
// adapter_config.json's method-specific keys (peft_type, r, target_modules, ...).
struct HfAdapter {
  std::map<std::string, Tensor> tensors;
  nlohmann::json config = nlohmann::json::object();
  std::vector<std::string> targets;  // modules that carry the delta
  std::string dir;                   // import: the adapter folder (error messages name its files)
};

// What an hf_import makes of a peft adapter: one entry of the PEFT config's "deltas" (the
// caller names it) and the delta's tensors under deltagrad's local names (named_parameters()),
// per site, plus shared ones (VeRA's projections) for whichever attachment lists them.
struct HfImported {
  nlohmann::json delta;
  std::map<std::string, std::map<std::string, Tensor>> tensors;  // site -> local name -> value
  std::map<std::string, Tensor> shared;                          // local name -> value
};

struct GoldenCase {
  std::string name;        // the fixture holds "<name>.logits", "<name>.grad.<tensor>", ...
  nlohmann::json config;   // the PEFT config that reproduces it on the golden ViT
};

struct DemoRow {
  std::string label;       // the demo table's row
  nlohmann::json delta;    // one entry of "deltas" (the head trains too)
  double lr;
};

struct MethodDef {
  std::string name;     // the config's `method`
  int order = 0;        // listing order (README table, errors, demo)
  std::string summary;  // where it attaches and what it computes (CLI help)
  std::string no_scale; // non-empty: a 'scale' object is refused with this reason
  // A number under 'scale' is the method's own option (the reference's name: FacT's and Hydra's
  // s), read by `parse`; an object is still the conditioning scale (refused where no_scale says).
  bool numeric_scale = false;
  // Read the method's options into `d` (defaults first); unknown keys are the caller's.
  std::function<void(OptionReader&, DeltaConfig& d)> parse;
  // Create the deltas and attach each with `add`; zero sites is an error the caller reports.
  std::function<void(const DeltaConfig&, nn::VisionTransformer&, Generator&, const AttachFn& add)> attach;
  bool merges = false;
  // peft's peft_type this method exports as, and the export itself ("" / empty: none).
  std::string hf_peft_type;
  std::function<void(const Attachments&, HfAdapter&)> hf_export;
  // The inverse of hf_export: the adapter's tensors (modules_to_save taken out) and its
  // adapter_config.json to a delta config and tensors. A peft option deltagrad does not
  // implement is an error naming the file and key (peft/hf_format.h has the helpers).
  std::function<HfImported(const HfAdapter&)> hf_import;
  // The adapter_config.json key that, when true, picks this method among those of its
  // peft_type (dora: use_dora); "" for the method picked when no such key is true.
  std::string hf_flag;
  std::vector<GoldenCase> golden;        // parity with PyTorch (tests/test_peft_golden.cpp runs them)
  std::vector<nlohmann::json> examples;  // deltas for the frozen-base test on a tiny ViT; each must learn
  std::optional<DemoRow> demo;
};

// Every registered method, in listing order.
const std::vector<const MethodDef*>& all_methods();
// The method named `name`, or an error "<where>: unknown method 'x' (known: a, b, ...)".
const MethodDef& find_method(const std::string& name, const std::string& where);
// "a, b, c": the registered names, optionally only those with an ability.
std::string method_names(const std::function<bool(const MethodDef&)>& keep = {});

struct MethodRegistrar {
  explicit MethodRegistrar(MethodDef def);  // registers at static init; duplicate names are an error
};

// The Linear layers whose module paths match `globs`. A glob that names a non-Linear module
// exactly is an error; wildcards may sweep over activations and dropouts, which are skipped.
std::vector<std::pair<std::string, nn::Linear*>> linear_targets(nn::Module& base, const std::vector<std::string>& globs,
                                                                const std::string& who);
// timm's fused qkv Linear (a path ending in "attn.qkv").
bool is_fused_qkv(const std::string& path);

}  // namespace dg::peft

// DG_REGISTER_METHOD(lora) { MethodDef d; d.name = "lora"; ...; return d; }  -- beside the delta class.
#define DG_REGISTER_METHOD(id)                                                          \
  static ::dg::peft::MethodDef dg_method_def_##id();                                    \
  static ::dg::peft::MethodRegistrar dg_method_reg_##id(dg_method_def_##id());          \
  static ::dg::peft::MethodDef dg_method_def_##id()

// The PEFT config: one JSON file drives the CLI, the trainer and delta files' metadata.
//   {"deltas": [{"name": "q_lora", "method": "lora", ...options, "scale": {...}}, ...],
//    "trainable": ["head.*"], "masks": [{"tensor": "blocks.0.mlp.fc1.weight", "density": 0.01}]}
// Option names follow the reference implementations: LoRA uses Hugging Face peft's
// (r, lora_alpha, lora_dropout, target_modules, use_rslora, use_dora); bottleneck adapters use
// adapter-plus's (config, act_layer, norm_layer, bias, init, scaling, dim, attn_adapter,
// dropout, drop_path). Each method's options are read by its registration
// (peft/method_registry.h). Unknown keys and methods are errors that name the key.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dg::peft {

// A conditioning scale multiplying a delta's output (T2I-Adapter's
// adapter_conditioning_scale; Adapter+'s channel-wise scaling is the per-channel case).
struct ScaleConfig {
  enum class Kind { None, Scalar, Channel } kind = Kind::None;  // None: fixed 1, no tensor
  double init = 1.0;
  bool trainable = true;
};

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules = {"blocks.*.attn.qkv"};  // globs over module names
  bool use_rslora = false;
  // On timm's fused qkv Linear: "joint" = one LoRA on the whole D->3D map (peft's behaviour);
  // "separate" = one LoRA per projection named in qkv_parts (the LoRA paper, Adapter+).
  std::string qkv_mode = "joint";
  std::vector<std::string> qkv_parts = {"q", "k", "v"};
  std::string init = "kaiming";  // A kaiming-uniform, B zeros; "random" also randomises B (tests)
  int64_t bits = 32;             // 1: A and B trained and stored as 1-bit weights (peft/packed_bits.h)
};

struct AdapterConfig {
  // where: "post" (after the block, reads the block output: Adapter+, and Pfeiffer with a
  // norm), "houlsby" (on the attention and MLP branches), "parallel" (reads the MLP
  // sub-block's input, adds to its output: AdaptFormer), "intermediate" (MLP branch only)
  std::string config = "post";
  bool act_layer = true;   // GELU between the projections
  bool norm_layer = false; // LayerNorm on the adapter input
  bool bias = true;
  std::string init = "houlsby";  // houlsby (trunc normal std .01), lora (kaiming A, zero B), bert, zero
  int64_t dim = 8;               // bottleneck width
  bool attn_adapter = false;     // houlsby: a second adapter on the attention branch
  double dropout = 0.0;
  double drop_path = 0.0;
  std::vector<std::string> blocks = {"blocks.*"};  // which blocks get adapters
  int64_t bits = 32;  // 1: the projection weights trained and stored as 1-bit weights (peft/packed_bits.h)
};

struct PromptConfig {
  int64_t num_tokens = 10;
  double dropout = 0.0;
  bool deep = false;
};

// Options of a method whose option struct lives beside its delta class (ia3.h, ssf.h).
struct MethodOptions {
  virtual ~MethodOptions() = default;
};

struct DeltaConfig {
  std::string name, method;  // method: a registered name (peft/method_registry.h)
  LoraConfig lora;           // lora and dora
  AdapterConfig adapter;
  PromptConfig prompt;
  ScaleConfig scale;
  std::shared_ptr<const MethodOptions> options;  // other methods' options
  nlohmann::json raw;  // as given, for metadata
  template <class T>
  const T& options_as() const {
    auto* o = dynamic_cast<const T*>(options.get());
    DG_CHECK(o, "delta '", name, "' (", method, "): its options were not parsed by its method");
    return *o;
  }
};

// A mask chosen before training by a sensitivity criterion (peft/sensitivity.h) over the
// tensors the entry's glob matches: {"criterion": "fisher", "budget": 0.01, "batches": 8,
// "scope": "global"|"tensor", "seed": 0}.
struct MaskSelect {
  std::string criterion = "fisher";
  double budget = 0.01;
  int64_t batches = 8;  // SPT's default (sensitivity_batch_num)
  bool global = true;
  uint64_t seed = 0;
};

struct MaskConfig {
  std::string tensor;   // glob over base parameter names
  double density = 0.0; // random mask: this fraction of elements trainable
  uint64_t seed = 0;
  // or a mask file ("from", or "file"): `deltagrad sensitivity`'s positions, or a dense 0/1
  // tensor of the same name
  std::string file;
  std::optional<MaskSelect> select;  // or chosen before training
};

struct PeftConfig {
  std::vector<DeltaConfig> deltas;
  std::vector<std::string> trainable;  // globs of base tensors that train too
  std::vector<MaskConfig> masks;
  nlohmann::json raw;
};

PeftConfig parse_peft_config(const nlohmann::json& j, const std::string& what = "peft config");
PeftConfig load_peft_config(const std::string& path);
nlohmann::json to_json(const PeftConfig& c);

}  // namespace dg::peft

// The golden ViT of scripts/make_vit_golden.py (tests/fixtures/vit_golden.safetensors): its
// weights, config and input batch, for tests that compare with PyTorch on it.
#pragma once
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "nn/vit.h"

namespace dg::test {

inline const SafeTensors& golden_vit_file() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/vit_golden.safetensors");
  return st;
}

// A fresh golden ViT in eval mode (no deltas).
inline std::unique_ptr<nn::VisionTransformer> golden_base() {
  const SafeTensors& f = golden_vit_file();
  auto m = std::make_unique<nn::VisionTransformer>(nn::vit_config_from_json(nlohmann::json::parse(f.metadata.at("config"))));
  std::map<std::string, Tensor> w;
  for (auto& [k, t] : f.tensors)
    if (k.find('.') == std::string::npos ? (k == "cls_token" || k == "pos_embed") : k.rfind("grad.", 0) && k.rfind("input.", 0))
      w[k] = t;
  nn::load_state_dict(*m, w, "vit_golden");
  m->eval();
  return m;
}

inline const Tensor& golden_images() { return golden_vit_file().tensors.at("input.images"); }

}  // namespace dg::test

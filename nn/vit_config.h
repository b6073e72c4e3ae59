// ViT hyper-parameters as JSON, with timm's names and a few presets.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dg::nn {

struct ViTConfig {
  int64_t img_size = 224, patch_size = 16, in_chans = 3, embed_dim = 768, depth = 12, num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  int64_t num_classes = 1000;
  std::string global_pool = "token";  // "token" or "avg" (avg: fc_norm after pooling, as timm)
  bool class_token = true;
  double norm_eps = 1e-6;
  double drop_rate = 0.0, attn_drop_rate = 0.0, drop_path_rate = 0.0;
  double init_values = 0.0;  // LayerScale init; 0 = no LayerScale
  std::vector<double> mean = {0.5, 0.5, 0.5}, std = {0.5, 0.5, 0.5};  // input normalisation
  // Image geometry (data/transforms.h): for evaluation the short side is resized to
  // floor(img_size / crop_pct) and the centre img_size square cropped, resampled with
  // `interpolation` ("bilinear" or "bicubic"). The timm presets carry timm's pretrained_cfg values.
  double crop_pct = 1.0;
  std::string interpolation = "bilinear";
  // The head's classes by index (empty: unnamed). A run records its dataset's here, so a delta
  // file's model config says which output is which class.
  std::vector<std::string> class_names;

  int64_t grid() const { return img_size / patch_size; }
  int64_t num_patches() const { return grid() * grid(); }
  int64_t num_prefix_tokens() const { return class_token ? 1 : 0; }
};

ViTConfig vit_preset(const std::string& name);  // throws, listing the presets, if unknown
std::vector<std::string> vit_preset_names();
// A JSON object may name a preset ("preset": "vit_tiny_patch16_224") and override keys.
ViTConfig vit_config_from_json(const nlohmann::json& j, const std::string& what = "model config");
ViTConfig load_vit_config(const std::string& path_or_preset);  // a file path, or a preset name
nlohmann::json to_json(const ViTConfig& c);
// The keys that shape the backbone's tensors or its forward (not the head's classes, dropout or
// input handling) where `a` and `b` differ, as "key: A vs B" joined by "; " ("" if none).
std::string backbone_differences(const ViTConfig& a, const ViTConfig& b);

}  // namespace dg::nn

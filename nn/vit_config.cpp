#include "nn/vit_config.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/user_files.h"

namespace dg::nn {

using nlohmann::json;

std::vector<std::string> vit_preset_names() {
  return {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_mnist_28"};
}

ViTConfig vit_preset(const std::string& name) {
  ViTConfig c;
  // timm's pretrained_cfg for these ViTs (vision_transformer.py _cfg, the augreg weights):
  // crop_pct 0.9, bicubic, mean = std = 0.5 (IMAGENET_INCEPTION_MEAN / _STD)
  if (name.rfind("vit_", 0) == 0 && name != "vit_mnist_28") c.crop_pct = 0.9, c.interpolation = "bicubic";
  if (name == "vit_tiny_patch16_224") {
    c.embed_dim = 192, c.num_heads = 3;
  } else if (name == "vit_small_patch16_224") {
    c.embed_dim = 384, c.num_heads = 6;
  } else if (name == "vit_base_patch16_224") {
    c.embed_dim = 768, c.num_heads = 12;
  } else if (name == "vit_mnist_28") {
    // small enough to pretrain on Fashion-MNIST in a few minutes on 2 cores
    c.img_size = 28, c.patch_size = 4, c.in_chans = 1, c.embed_dim = 64, c.depth = 4, c.num_heads = 4;
    c.mlp_ratio = 2.0, c.num_classes = 10;
    c.mean = {0.2860}, c.std = {0.3530};  // Fashion-MNIST train statistics
  } else {
    std::string all;
    for (const auto& n : vit_preset_names()) all += " " + n;
    throw Error(str("unknown model preset '", name, "' (presets:", all, ")"));
  }
  return c;
}

json to_json(const ViTConfig& c) {
  return {{"img_size", c.img_size}, {"patch_size", c.patch_size}, {"in_chans", c.in_chans},
          {"embed_dim", c.embed_dim}, {"depth", c.depth}, {"num_heads", c.num_heads},
          {"mlp_ratio", c.mlp_ratio}, {"qkv_bias", c.qkv_bias}, {"num_classes", c.num_classes},
          {"global_pool", c.global_pool}, {"class_token", c.class_token}, {"norm_eps", c.norm_eps},
          {"drop_rate", c.drop_rate}, {"attn_drop_rate", c.attn_drop_rate}, {"drop_path_rate", c.drop_path_rate},
          {"init_values", c.init_values}, {"mean", c.mean}, {"std", c.std}, {"crop_pct", c.crop_pct},
          {"interpolation", c.interpolation}, {"class_names", c.class_names}};
}

std::string backbone_differences(const ViTConfig& a, const ViTConfig& b) {
  const json ja = to_json(a), jb = to_json(b);
  std::string out;
  for (const char* k : {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                        "global_pool", "class_token", "norm_eps", "init_values"})
    if (ja[k] != jb[k]) out += str(out.empty() ? "" : "; ", k, ": ", ja[k].dump(), " vs ", jb[k].dump());
  return out;
}

ViTConfig vit_config_from_json(const json& j, const std::string& what) {
  DG_CHECK(j.is_object(), what, ": expected a JSON object");
  DG_CHECK(!j.contains("preset") || j["preset"].is_string(), what, ": key 'preset' must be a string, got ",
           j["preset"].dump());
  ViTConfig c = j.contains("preset") ? vit_preset(j["preset"].get<std::string>()) : ViTConfig{};
  json base = to_json(c);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "preset") continue;
    DG_CHECK(base.contains(it.key()), what, ": unknown key '", it.key(), "'");
    const json &v = it.value(), &want = base[it.key()];
    // Integer keys take whole numbers only: 1e300 converted to int64 was undefined behaviour
    // (found by fuzz/fuzz_config), and 2.5 was silently truncated.
    if (want.is_number_integer() && v.is_number())
      DG_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= (int64_t(1) << 31), what,
               ": key '", it.key(), "' must be an integer in 0..2^31, got ", v.dump());
    DG_CHECK(v.type() == want.type() || (v.is_number() && want.is_number()), what, ": key '", it.key(),
             "' has the wrong type (", v.dump(), ")");
    base[it.key()] = it.value();
  }
  try {
    c.img_size = base["img_size"], c.patch_size = base["patch_size"], c.in_chans = base["in_chans"];
    c.embed_dim = base["embed_dim"], c.depth = base["depth"], c.num_heads = base["num_heads"];
    c.mlp_ratio = base["mlp_ratio"], c.qkv_bias = base["qkv_bias"], c.num_classes = base["num_classes"];
    c.global_pool = base["global_pool"], c.class_token = base["class_token"], c.norm_eps = base["norm_eps"];
    c.drop_rate = base["drop_rate"], c.attn_drop_rate = base["attn_drop_rate"];
    c.drop_path_rate = base["drop_path_rate"], c.init_values = base["init_values"];
    c.mean = base["mean"].get<std::vector<double>>(), c.std = base["std"].get<std::vector<double>>();
    c.class_names = base["class_names"].get<std::vector<std::string>>();
    c.crop_pct = base["crop_pct"], c.interpolation = base["interpolation"];
  } catch (const json::exception& e) {
    throw Error(str(what, ": ", e.what()));
  }
  // Each value in its range, named: mlp_ratio -1 used to surface as "Tensor::empty: negative size".
  auto in_range = [&](const char* key, double v, bool ok, const char* range) {
    DG_CHECK(ok, what, ": key '", key, "' must be ", range, ", got ", v);
  };
  for (auto [key, v] : {std::pair<const char*, int64_t>{"img_size", c.img_size}, {"patch_size", c.patch_size},
                        {"in_chans", c.in_chans}, {"embed_dim", c.embed_dim}, {"depth", c.depth}, {"num_heads", c.num_heads}})
    in_range(key, double(v), v >= 1, "at least 1");
  in_range("img_size", double(c.img_size), c.img_size <= 4096, "at most 4096 (the largest image the loaders make)");
  in_range("mlp_ratio", c.mlp_ratio, c.mlp_ratio > 0 && c.mlp_ratio <= 64 && double(c.embed_dim) * c.mlp_ratio >= 1,
           "in (0, 64] with embed_dim * mlp_ratio >= 1 (the MLP's hidden width)");
  in_range("norm_eps", c.norm_eps, c.norm_eps > 0 && c.norm_eps <= 1, "in (0, 1]");
  for (auto [key, v] : {std::pair<const char*, double>{"drop_rate", c.drop_rate}, {"attn_drop_rate", c.attn_drop_rate},
                        {"drop_path_rate", c.drop_path_rate}})
    in_range(key, v, v >= 0 && v < 1, "a probability in [0, 1)");
  in_range("init_values", c.init_values, c.init_values >= 0 && std::isfinite(c.init_values), "finite and >= 0 (0: no LayerScale)");
  in_range("crop_pct", c.crop_pct, c.crop_pct > 0 && c.crop_pct <= 1, "in (0, 1] (1: no border cut)");
  DG_CHECK(c.interpolation == "bilinear" || c.interpolation == "bicubic", what, ": key 'interpolation' must be ",
           "bilinear or bicubic, got '", c.interpolation, "'");
  for (double m : c.mean) in_range("mean", m, std::isfinite(m), "finite in every channel");
  for (double v : c.std) in_range("std", v, v > 0 && std::isfinite(v), "finite and > 0 in every channel");
  DG_CHECK(c.patch_size > 0 && c.img_size % c.patch_size == 0, what, ": img_size ", c.img_size,
           " is not divisible by patch_size ", c.patch_size);
  DG_CHECK(c.embed_dim > 0 && c.num_heads > 0 && c.embed_dim % c.num_heads == 0, what, ": embed_dim ", c.embed_dim,
           " is not divisible by num_heads ", c.num_heads);
  DG_CHECK(c.global_pool == "token" || c.global_pool == "avg", what, ": global_pool must be token or avg");
  DG_CHECK(c.global_pool != "token" || c.class_token, what, ": global_pool 'token' needs class_token");
  DG_CHECK(int64_t(c.mean.size()) == c.in_chans && int64_t(c.std.size()) == c.in_chans, what,
           ": mean and std need one value per input channel (", c.in_chans, ")");
  DG_CHECK(c.class_names.empty() || int64_t(c.class_names.size()) == c.num_classes, what, ": class_names has ",
           c.class_names.size(), " names for num_classes ", c.num_classes, " (one name per class, or none)");
  return c;
}

ViTConfig load_vit_config(const std::string& p) {
  if (!std::filesystem::exists(p)) {
    for (const auto& n : vit_preset_names())
      if (n == p) return vit_preset(p);
    throw Error(str("model config '", p, "': no such file and not a preset"));
  }
  const json j = read_json_file(p, "model config");
  return vit_config_from_json(j, "model config '" + p + "'");
}

}  // namespace dg::nn

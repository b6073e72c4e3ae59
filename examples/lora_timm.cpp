// Load a timm ViT checkpoint, add LoRA to the attention's qkv, run one training step and
// save only the deltas.
//   lora_timm [checkpoint.safetensors [preset]]   (no checkpoint: a random vit_tiny is saved first)
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "peft/peft_model.h"

using namespace dg;

int main(int argc, char** argv) {
  const std::string preset = argc > 2 ? argv[2] : "vit_tiny_patch16_224";
  nn::ViTConfig cfg = nn::vit_preset(preset);
  cfg.num_classes = 10;  // a new task: the checkpoint's head (if any) is replaced
  nn::VisionTransformer vit(cfg);
  std::string ckpt = argc > 1 ? argv[1] : "";
  if (ckpt.empty()) {  // stand-in for a downloaded timm file: same names, same layout
    ckpt = (std::filesystem::temp_directory_path() / "vit_tiny_random.safetensors").string();
    save_safetensors(ckpt, nn::state_dict(vit));
  }
  nn::LoadReport rep = nn::load_state_dict(vit, load_safetensors(ckpt).tensors, ckpt);
  std::printf("loaded %s (head %s)\n", ckpt.c_str(), rep.head_loaded ? "loaded" : "fresh");

  // LoRA r=8 on every block's qkv; the head trains too. Everything else stays frozen.
  auto config = peft::parse_peft_config(nlohmann::json::parse(R"({
    "deltas": [{"name": "lora", "method": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["blocks.*.attn.qkv"]}],
    "trainable": ["head.*"]})"));
  peft::PeftModel model(vit, config);
  std::printf("%s", model.report().c_str());

  Tensor images = Tensor::empty({2, 3, cfg.img_size, cfg.img_size});
  Generator(0).normal_(images);
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{3, 7}, {2});
  nn::AdamW opt(model.trainable_parameters(), 1e-3, 0.05);
  Tensor loss = cross_entropy(model.forward(images), labels);
  backward(loss);
  opt.step();
  std::printf("loss %.4f; optimizer state for %zu tensors\n", loss.item(), opt.num_trainable());

  const std::string out = (std::filesystem::temp_directory_path() / "lora_deltas.safetensors").string();
  model.save(out);
  std::printf("deltas saved to %s (%ju bytes)\n", out.c_str(), std::uintmax_t(std::filesystem::file_size(out)));
  return 0;
}

// A program built outside this tree against the installed library (scripts/check_install.sh):
// a small ViT with LoRA on its qkv, two training steps on a fixed batch. It prints the loss before
// and after; the check wants it lower, which needs the ops, the backend and the autograd the
// library registers when it loads.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/random.h"
#include "nn/optim.h"
#include "peft/peft_model.h"

int main() {
  using namespace dg;
  nn::ViTConfig cfg;
  cfg.img_size = 16, cfg.patch_size = 4, cfg.in_chans = 3, cfg.embed_dim = 32, cfg.depth = 2, cfg.num_heads = 2;
  cfg.num_classes = 4;
  nn::VisionTransformer vit(cfg);
  vit.init_weights(0);
  peft::PeftModel model(vit, peft::parse_peft_config(nlohmann::json::parse(R"({
    "deltas": [{"name": "lora", "method": "lora", "r": 4, "target_modules": ["blocks.*.attn.qkv"]}],
    "trainable": ["head.*"]})")));
  Tensor images = Tensor::empty({8, 3, 16, 16});
  Generator(1).normal_(images);
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3}, {8});
  nn::AdamW opt(model.trainable_parameters(), 1e-2, 0.0);
  double first = 0, last = 0;
  for (int step = 0; step < 5; ++step) {
    tape().clear();
    opt.zero_grad();
    Tensor loss = cross_entropy(model.forward(images), labels);
    backward(loss);
    opt.step();
    (step == 0 ? first : last) = loss.item();
  }
  std::printf("deltagrad from the installed package: loss %.4f -> %.4f\n", first, last);
  return last < first ? 0 : 1;
}

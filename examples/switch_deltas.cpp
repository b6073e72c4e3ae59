// One base model in memory, two delta files: attach one, predict, detach, attach the
// other. The base is loaded once and never changes.
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/random.h"
#include "peft/peft_model.h"

using namespace dg;
using nlohmann::json;

int main() {
  nn::ViTConfig cfg = nn::vit_preset("vit_mnist_28");
  nn::VisionTransformer base(cfg);  // stand-in for a loaded checkpoint
  base.eval();
  const auto dir = std::filesystem::temp_directory_path();
  const std::string a = (dir / "task_a.safetensors").string(), b = (dir / "task_b.safetensors").string();
  {  // make two delta files (in practice: two `deltagrad train` runs on two tasks)
    peft::PeftModel ta(base, peft::parse_peft_config(json{{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"init", "random"}}}}}), 1);
    ta.save(a);
    ta.remove("lora");
    peft::PeftModel tb(base, peft::parse_peft_config(json{{"deltas", {{{"name", "ap"}, {"method", "adapter_plus"}, {"init", "bert"}}}}}), 2);
    tb.save(b);
    tb.remove("ap");
  }
  Tensor x = Tensor::empty({1, 1, 28, 28});
  Generator(3).normal_(x);
  NoGradGuard ng;
  const double plain = base(x).to_vector()[0];
  double out[2];
  for (int k = 0; k < 2; ++k) {
    auto model = peft::PeftModel::from_file(base, k == 0 ? a : b);  // checks the base's identity
    out[k] = model->forward(x).to_vector()[0];
    std::printf("with %s: logit[0] = %.5f (deltas: %s)\n", k == 0 ? "task A (LoRA)" : "task B (Adapter+)", out[k],
                model->delta_names()[0].c_str());
    for (const std::string& n : model->delta_names()) model->remove(n);  // detach: the base is plain again
  }
  const double again = base(x).to_vector()[0];
  std::printf("base alone: %.5f before, %.5f after\n", plain, again);
  return plain == again && out[0] != out[1] ? 0 : 1;
}

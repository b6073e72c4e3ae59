// Times a ViT training step (forward + backward + AdamW) for one model preset and PEFT
// method on one device, and prints one JSON line: ms/step (median, min, max), img/s, peak
// memory, and the FLOPs the step executes (counted from the shapes, frozen weight
// gradients excluded) as achieved FLOP/s.
//   bench_step --model vit_small_patch16_224 --method lora --batch 64 --device cuda [--steps 10] [--tf32]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/backend.h"
#include "core/random.h"
#include "cuda/cuda_api.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tools/args.h"

using namespace dg;
using nlohmann::json;

static json method_config(const std::string& m) {
  const json head = json::array({"head.*"});
  if (m == "lora") return {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}}}}, {"trainable", head}};
  if (m == "adapter_plus") return {{"deltas", {{{"name", "ap"}, {"method", "adapter_plus"}, {"dim", 8}}}}, {"trainable", head}};
  if (m == "vpt_deep") return {{"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 10}}}}, {"trainable", head}};
  if (m == "full") return {{"trainable", {"*"}}};
  if (m == "linear_probe") return {{"trainable", head}};
  throw Error(str("unknown method '", m, "' (lora, adapter_plus, vpt_deep, full, linear_probe)"));
}

// FLOPs of one training step, from the shapes: every Linear's forward and input gradient,
// weight gradients only where the weight trains, attention's two batched products (x3
// for forward + backward). Deltas' own FLOPs are small and counted the same way for LoRA.
static double step_flops(const nn::ViTConfig& c, int64_t B, int64_t extra_tokens, bool full) {
  const double T = double(c.num_patches() + c.num_prefix_tokens() + extra_tokens), D = double(c.embed_dim);
  const double H = D * c.mlp_ratio;
  const double lin = 3 * D * D + D * D + 2 * D * H;  // multiply-adds per token per block
  double fwd = 2 * T * lin * double(c.depth) + 4 * T * T * D * double(c.depth);
  fwd += 2 * double(c.num_patches()) * double(c.in_chans * c.patch_size * c.patch_size) * D;
  const double dx = 2 * T * lin * double(c.depth) + 8 * T * T * D * double(c.depth);
  const double dw = full ? 2 * T * lin * double(c.depth) : 0;
  return double(B) * (fwd + dx + dw);
}

int main(int argc, char** argv) {
  try {
    cli::Args a = cli::parse_args(argc, argv, 1, {"model", "method", "batch", "device", "steps"}, {"tf32"});
    const std::string model = a.get("model", "vit_small_patch16_224"), method = a.get("method", "lora");
    const int64_t B = int64_t(a.num("batch", 64)), steps = int64_t(a.num("steps", 10));
    const Device dev = a.get("device", "cuda") == "cuda" ? Device::CUDA : Device::CPU;
    if (a.has("tf32")) cuda::set_tf32(true);
    nn::ViTConfig c = nn::vit_preset(model);
    c.num_classes = 100;
    nn::VisionTransformer m(c);
    peft::PeftModel pm(m, peft::parse_peft_config(method_config(method)));
    pm.to(dev);
    m.train();
    nn::AdamW opt(pm.trainable_parameters(), 1e-4, 0.05);
    Tensor x = Tensor::empty({B, c.in_chans, c.img_size, c.img_size});
    Generator(1).normal_(x);
    x = x.to(dev);
    std::vector<int64_t> yl(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) yl[size_t(i)] = i % 100;
    Tensor y = Tensor::from_vector(yl, {B}).to(dev);
    auto step = [&] {
      opt.zero_grad();
      Tensor loss = cross_entropy(pm.forward(x), y);
      backward(loss);
      opt.step();
      backend(dev).synchronize();
    };
    for (int i = 0; i < 3; ++i) step();  // warm-up: allocator cache, cuBLAS heuristics
    if (dev == Device::CUDA) cuda::reset_peak();
    std::vector<double> ms;
    for (int64_t i = 0; i < steps; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      step();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double flops = step_flops(c, B, method == "vpt_deep" ? 10 : 0, method == "full");
    json out = {{"impl", "deltagrad"}, {"model", model}, {"method", method}, {"batch", B},
                {"device", dev == Device::CUDA ? cuda::device_name() : "cpu"}, {"tf32", a.has("tf32")},
                {"ms_median", med}, {"ms_min", ms.front()}, {"ms_max", ms.back()}, {"img_per_s", 1000.0 * double(B) / med},
                {"peak_mb", dev == Device::CUDA ? double(cuda::peak_bytes()) / 1048576.0 : -1.0},
                {"tflops", flops / (med * 1e-3) / 1e12}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what());
    return 2;
  }
}

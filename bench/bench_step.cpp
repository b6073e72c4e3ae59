// Times a ViT step for one model preset and PEFT method on one device and prints one JSON
// line: ms/step (median, min, max), img/s, peak memory and the FLOPs the step executes
// (counted from the shapes, frozen weight gradients excluded) as achieved FLOP/s.
// A training step is forward + backward + AdamW; `inference` is a no-grad forward in eval mode.
//   bench_step --model vit_tiny_patch16_224 --method lora --batch 32 --device cpu [--steps 10]
//              [--warmup 3] [--threads N] [--tf32] [--recompute] [--gemm onednn|onednn-mt|openblas|eigen]
//              [--precision f32|bf16]   (bf16: mixed precision, autograd/autocast.h)
//              [--variants base,fused,epilogue,both]  (CUDA's opt-in paths, interleaved step by step
//              in one process: the fused attention, the cuBLASLt bias epilogue, both; one JSON line each)
// With DG_PROFILE=FILE (core/op_profile.h) the timed steps are also profiled: time per kernel
// family, calls per step and the gaps, written to FILE as markdown (one variant at a time).
// Methods: inference, full, linear_probe, lora (r=8 on qkv), lora_all (r=8 on every block
// Linear), adapter_plus, vpt_deep (--prompts P, default 10). --full-rows: every block computes
// every row (the rows nobody reads are skipped by default: VPT-deep's prompt rows that the next
// block replaces, and the last block's rows but the class token's). CPU memory is read from /proc/self/status:
// rss_base_mb before the model exists, rss_peak_mb the high-water mark after the timed steps
// (so step_mb = peak - base is the model, its state and the step's working memory).
// Under bench/perf_share.py (DG_PERF_CTL=ctl_fifo,ack_fifo) perf samples the timed steps only.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/autocast.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/cpu/cpu_backend.h"
#include "core/op_profile.h"
#include "core/cpu/gemm_kernel.h"
#include "core/random.h"
#include "cuda/cuda_api.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tools/args.h"
#include "train/grad_bucket.h"

using namespace dg;
using nlohmann::json;

static json method_config(const std::string& m, int64_t prompts) {
  const json head = json::array({"head.*"});
  const json all_linear = {"blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"};
  if (m == "lora") return {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}}}}, {"trainable", head}};
  if (m == "lora_all")
    return {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}, {"target_modules", all_linear}}}},
            {"trainable", head}};
  if (m == "adapter_plus") return {{"deltas", {{{"name", "ap"}, {"method", "adapter_plus"}, {"dim", 8}}}}, {"trainable", head}};
  if (m == "vpt_deep") return {{"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", prompts}}}}, {"trainable", head}};
  if (m == "full") return {{"trainable", {"*"}}};
  if (m == "linear_probe" || m == "inference") return {{"trainable", head}};
  throw Error(str("unknown method '", m, "' (inference, full, linear_probe, lora, lora_all, adapter_plus, vpt_deep)"));
}

// FLOPs of one step, from the shapes: every Linear's forward and input gradient, weight
// gradients only where the weight trains, attention's two batched products (x3 for forward
// + backward). The deltas' own FLOPs are small and left out on both sides alike. Rows nobody
// reads are keys and values only (qkv on all T rows, attention and the rest on the kept query
// rows), unless `full_rows`: VPT-deep's prompt rows that the next block replaces in blocks
// 0 .. L-2, and with 'token' pooling every row but the class token's in the last block.
static double step_flops(const nn::ViTConfig& c, int64_t B, const std::string& method, int64_t prompts,
                         bool full_rows) {
  const int64_t extra = method == "vpt_deep" ? prompts : 0;
  const double T = double(c.num_patches() + c.num_prefix_tokens() + extra), D = double(c.embed_dim);
  const double H = D * c.mlp_ratio, L = double(c.depth);
  const double Tq = full_rows ? T : T - double(extra);                                   // blocks 0 .. L-2
  const double Tlast = full_rows || c.global_pool != "token" || !c.class_token ? T : 1;  // the last block
  // multiply-adds per block: qkv on T rows, proj and the MLP on the query rows; attention's two
  // products (query rows) x T x D
  const double lin = (T * 3 * D * D + Tq * (D * D + 2 * D * H)) * (L - 1) + T * 3 * D * D + Tlast * (D * D + 2 * D * H);
  const double attn = Tq * T * D * (L - 1) + Tlast * T * D;
  const double patch = 2 * double(c.num_patches()) * double(c.in_chans * c.patch_size * c.patch_size) * D;
  const double fwd = 2 * lin + 4 * attn + patch;
  if (method == "inference" || method == "linear_probe") return double(B) * fwd;
  const double dx = 2 * lin + 8 * attn;
  const double dw = method == "full" ? 2 * lin + patch : 0;
  return double(B) * (fwd + dx + dw);
}

// One field of /proc/self/status in MiB (VmRSS, VmHWM); -1 where there is no /proc.
static double proc_status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(std::strlen(key) + 1)) / 1024.0;  // kB
  return -1;
}

// perf record --control: "enable" / "disable" around the timed steps, so the profile that
// bench/perf_share.py classifies holds no set-up (model init, calibration, warm-up).
class PerfControl {
 public:
  PerfControl() {
    const char* spec = std::getenv("DG_PERF_CTL");
    if (!spec || !*spec) return;
    const std::string s(spec);
    const size_t comma = s.find(',');
    if (comma == std::string::npos) throw Error(str("DG_PERF_CTL='", s, "': expected CTL_FIFO,ACK_FIFO"));
    ctl_.open(s.substr(0, comma));
    ack_.open(s.substr(comma + 1));
    if (!ctl_ || !ack_) throw Error(str("DG_PERF_CTL='", s, "': cannot open the fifos"));
  }
  void send(const char* cmd) {
    if (!ctl_.is_open()) return;
    ctl_ << cmd << std::endl;
    std::string reply;
    std::getline(ack_, reply);  // perf answers "ack" once the events are switched
  }
 private:
  std::ofstream ctl_;
  std::ifstream ack_;
};

// One of --variants: which of CUDA's opt-in paths are on (both are read at each call, so a
// process can switch between steps; on the CPU neither changes anything).
struct Variant {
  std::string name;
  bool fused_attention, lt_epilogue;
  void apply() const {
    setenv("DG_CUDA_FUSED_ATTENTION", fused_attention ? "1" : "0", 1);
    cuda::set_lt_epilogue(lt_epilogue);
  }
};
static std::vector<Variant> parse_variants(const std::string& list) {
  std::vector<Variant> out;
  if (list.empty()) {  // the paths as the environment set them
    const char* f = std::getenv("DG_CUDA_FUSED_ATTENTION");
    return {{"env", f && std::strcmp(f, "1") == 0, cuda::lt_epilogue()}};
  }
  size_t at = 0;
  while (at <= list.size()) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string v = list.substr(at, comma - at);
    if (v == "base") out.push_back({v, false, false});
    else if (v == "fused") out.push_back({v, true, false});
    else if (v == "epilogue") out.push_back({v, false, true});
    else if (v == "both") out.push_back({v, true, true});
    else throw Error(str("--variants: unknown variant '", v, "' in '", list, "' (base, fused, epilogue, both)"));
    at = comma + 1;
  }
  return out;
}

int main(int argc, char** argv) {
  try {
    cli::Args a = cli::parse_args(argc, argv, 1, {"model", "method", "batch", "device", "steps", "warmup", "threads", "gemm", "precision", "prompts", "variants"}, {"tf32", "recompute", "full-rows"});
    const std::string model = a.get("model", "vit_small_patch16_224"), method = a.get("method", "lora");
    const int64_t B = int64_t(a.num("batch", 64)), steps = int64_t(a.num("steps", 10)), warmup = int64_t(a.num("warmup", 3));
    const Device dev = a.get("device", "cuda") == "cuda" ? Device::CUDA : Device::CPU;
#ifdef _OPENMP
    if (a.has("threads")) omp_set_num_threads(int(a.num("threads", 1)));
    const int threads = omp_get_max_threads();
#else
    const int threads = 1;
#endif
    if (a.has("tf32")) cuda::set_tf32(true);
    if (a.has("gemm")) cpu::set_gemm_library(a.get("gemm", ""));
    const std::string precision = a.get("precision", "f32");
    AutocastGuard autocast(parse_precision(precision, "--precision"));
    const double rss_base = proc_status_mb("VmRSS:");
    nn::ViTConfig c = nn::vit_preset(model);
    c.num_classes = 100;
    nn::VisionTransformer m(c);
    m.set_recompute_mlp(a.has("recompute"));
    m.skip_unread_rows = !a.has("full-rows");
    const int64_t prompts = int64_t(a.num("prompts", 10));
    peft::PeftModel pm(m, peft::parse_peft_config(method_config(method, prompts)));
    pm.to(dev);
    const bool infer = method == "inference";
    if (infer) m.eval();
    else m.train();
    nn::AdamW opt(pm.trainable_parameters(), 1e-4, 0.05);
    Tensor x = Tensor::empty({B, c.in_chans, c.img_size, c.img_size});
    Generator(1).normal_(x);
    x = x.to(dev);
    std::vector<int64_t> yl(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) yl[size_t(i)] = i % 100;
    Tensor y = Tensor::from_vector(yl, {B}).to(dev);
    size_t tape_held = 0;  // bytes the tape saves for backward, at the forward's end
    auto step = [&] {
      if (infer) {
        NoGradGuard ng;
        Tensor logits = pm.forward(x);
      } else {
        opt.zero_grad();
        Tensor loss = cross_entropy(pm.forward(x), y);
        tape_held = tape().held_bytes();
        backward(loss);
        opt.step();
      }
      backend(dev).synchronize();
    };
    const std::vector<Variant> variants = parse_variants(a.get("variants", ""));
    DG_CHECK(!profile::enabled() || variants.size() == 1, "DG_PROFILE with --variants ", a.get("variants", ""),
             ": profile one variant at a time");
    for (int64_t i = 0; i < warmup; ++i)  // allocator caches, cuBLAS heuristics
      for (const Variant& v : variants) v.apply(), step();
    if (profile::enabled()) profile::reset(dev);
    if (dev == Device::CPU) cpu::CpuBackend::reset_peak();
    std::vector<std::vector<double>> ms(variants.size());
    std::vector<double> peak(variants.size(), 0.0);
    cpu::reset_kernel_time();
    PerfControl perf;
    perf.send("enable");
    for (int64_t i = 0; i < steps; ++i)
      for (size_t k = 0; k < variants.size(); ++k) {  // interleaved: drift hits every variant alike
        variants[k].apply();
        if (dev == Device::CUDA) cuda::reset_peak();
        auto t0 = std::chrono::steady_clock::now();
        step();
        ms[k].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        peak[k] = std::max(peak[k], double(cuda::peak_bytes()) / 1048576.0);
      }
    perf.send("disable");
    double total_ms = 0;  // every variant's timed steps
    for (auto& v : ms)
      for (double t : v) total_ms += t;
    if (profile::enabled()) {
      const std::string title = str(model, " ", method, " batch ", B, " ", precision, ", ", variants[0].name,
                                    " (fused attention ", variants[0].fused_attention ? "on" : "off", ", epilogue ",
                                    variants[0].lt_epilogue ? "on" : "off", ") on ",
                                    dev == Device::CUDA ? cuda::device_name() : "cpu");
      profile::write_report(profile::report_path(), profile::collect(dev, total_ms, steps), title);
    }
    const cpu::KernelTime kt = cpu::kernel_time();  // CPU only: the CUDA backend does not add to it
    const double flops = step_flops(c, B, method, prompts, !m.skip_unread_rows), rss_peak = proc_status_mb("VmHWM:");
    for (size_t k = 0; k < variants.size(); ++k) {
      std::sort(ms[k].begin(), ms[k].end());
      const double med = ms[k][ms[k].size() / 2];
      json out = {{"impl", "deltagrad"}, {"model", model}, {"method", method}, {"batch", B},
                  {"prompts", method == "vpt_deep" ? prompts : 0}, {"full_rows", !m.skip_unread_rows},
                  {"tape_held_mb", double(tape_held) / 1048576.0},
                  {"device", dev == Device::CUDA ? cuda::device_name() : "cpu"}, {"threads", threads},
                  {"cpu_gemm", cpu::gemm_library()}, {"cpu_gemm_reason", cpu::gemm_choice_reason()},
                  {"cpu_bf16_gemm", cpu::bf16_gemm_native() ? "onednn" : "f32"},
                  {"gemm_share", dev == Device::CPU ? kt.gemm_s * 1e3 / total_ms : 0.0},
                  {"attention_share", dev == Device::CPU ? kt.attention_s * 1e3 / total_ms : 0.0}, {"tf32", a.has("tf32")}, {"precision", precision},
                  {"variant", variants[k].name}, {"fused_attention", variants[k].fused_attention}, {"lt_epilogue", variants[k].lt_epilogue},
                  {"recompute", a.has("recompute")}, {"ms_median", med}, {"ms_min", ms[k].front()}, {"ms_max", ms[k].back()}, {"img_per_s", 1000.0 * double(B) / med},
                  {"peak_mb", dev == Device::CUDA ? peak[k] : rss_peak - rss_base},
                  {"rss_base_mb", rss_base}, {"rss_peak_mb", rss_peak},
                  // CPU: the allocator's bytes in use at their highest over the timed steps (the RSS
                  // also holds the blocks its cache keeps, one set per tensor size); all variants
                  {"alloc_peak_mb", dev == Device::CPU ? double(cpu::CpuBackend::peak_bytes()) / 1048576.0 : 0.0},
                  // what a data-parallel step sums across ranks: every trainable gradient (train/grad_bucket.h)
                  {"allreduce_bytes", train::GradientBucket::bytes_for(pm.trainable_parameters())},
                  {"gflops", flops / (med * 1e-3) / 1e9}, {"tflops", flops / (med * 1e-3) / 1e12}};
      std::printf("%s\n", out.dump().c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what());
    return 2;
  }
}

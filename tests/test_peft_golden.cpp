// PEFT gradients against PyTorch (tests/fixtures/peft_golden.safetensors, written by
// scripts/make_peft_golden.py): non-zero deltas on the golden ViT, frozen base, and the
// gradient of every delta tensor to relative 1e-4.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "peft/method_registry.h"
#include "peft/peft_model.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
const SafeTensors& vit() { return test::golden_vit_file(); }
// The fixtures, each written by a script in scripts/: peft_golden (first-wave methods by hand),
// peft_methods_golden (real Hugging Face peft where peft has the method), peft_fact_hydra_golden
// (the FacT and Hydra authors' forwards), peft_bits_golden (the binary-adapter authors' 1-bit
// quantiser), peft_mosa_golden (MoSA's authors' block and merge), all in plain PyTorch, and
// shira_golden (scripts/make_shira_golden.py: real Hugging Face peft SHiRA with a magnitude mask).
const std::vector<SafeTensors>& fixtures() {
  static const std::vector<SafeTensors> all = [] {
    std::vector<SafeTensors> v;
    for (const char* f : {"peft_golden", "peft_methods_golden", "peft_fact_hydra_golden", "peft_bits_golden",
                          "peft_mosa_golden", "shira_golden"})
      v.push_back(load_safetensors(std::string(DG_SOURCE_DIR "/tests/fixtures/") + f + ".safetensors"));
    return v;
  }();
  return all;
}
const SafeTensors* fixture_of(const std::string& c) {
  for (const SafeTensors& st : fixtures())
    if (st.tensors.count(c + ".logits")) return &st;
  return nullptr;
}
const SafeTensors& gold() { return fixtures()[0]; }
using test::golden_base;

struct Parity {
  double logits_abs = 0, logits_rel = 0, grad_rel = 0;  // max |d logits|, ||d logits||/||logits||, max over tensors of ||d g||/||g||
};

Parity check_case(const std::string& c, const json& config) {
  INFO("case ", c);
  const SafeTensors* fx = fixture_of(c);
  REQUIRE_MESSAGE(fx, "no fixture holds '", c, ".logits'");
  const SafeTensors& gold = *fx;
  Parity par;
  tape().clear();
  auto base = golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(config));
  // copy the fixture's delta values in by name; every delta tensor must be in the fixture
  int n = 0;
  for (auto& [name, t] : pm.trainable_parameters()) {
    auto it = gold.tensors.find(c + "." + name);
    if (it != gold.tensors.end()) {
      Tensor dst = t;
      dst.copy_(it->second);
      ++n;
    } else {
      REQUIRE_MESSAGE(pm.masks().count(name), "no fixture value for '", name, "'");
    }
  }
  CHECK((n > 0 || !pm.masks().empty()));
  // frozen delta tensors the reference drew with its own generator (VeRA's shared projections)
  for (auto& [name, t] : base->named_parameters(true)) {
    auto it = gold.tensors.find(c + "." + name);
    if (!t.requires_grad() && it != gold.tensors.end()) {
      Tensor dst = t;
      dst.copy_(it->second);
    }
  }
  Tensor logits = pm.forward(vit().tensors.at("input.images"));
  const Tensor& want = gold.tensors.at(c + ".logits");
  par.logits_rel = test::rel_err(logits, want);
  CHECK(par.logits_rel < 1e-5);
  const std::vector<double> got_v = logits.to_vector(), want_v = want.to_vector();
  for (size_t i = 0; i < got_v.size(); ++i) par.logits_abs = std::max(par.logits_abs, std::abs(got_v[i] - want_v[i]));
  Tensor loss = cross_entropy(logits, vit().tensors.at("input.labels"));
  backward(loss);
  pm.mask_gradients();
  int checked = 0;
  for (auto& [name, t] : pm.trainable_parameters()) {
    INFO(name);
    REQUIRE(t.grad().defined());
    const double e = test::rel_err(t.grad(), gold.tensors.at(c + ".grad." + name));
    CHECK(e < 1e-4);
    par.grad_rel = std::max(par.grad_rel, e);
    ++checked;
  }
  CHECK(checked > 0);
  // only deltas (and the masked tensor) received gradients
  for (auto& [name, t] : base->named_parameters(false))
    if (!t.requires_grad()) CHECK_MESSAGE(!t.grad().defined(), name);
  return par;
}

json adapter(const char* name, const char* method, json extra) {
  json d = {{"name", name}, {"method", method}, {"dim", 4}, {"init", "bert"}};
  if (extra.is_object()) d.update(extra);
  return d;
}
}  // namespace

TEST_CASE("peft golden: LoRA joint qkv") {
  check_case("lora_joint", {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"lora_alpha", 16}}}}});
}

TEST_CASE("peft golden: LoRA separate q and v") {
  check_case("lora_separate", {{"deltas", {{{"name", "qv"}, {"method", "lora"}, {"r", 2}, {"lora_alpha", 8},
                                            {"qkv_mode", "separate"}, {"qkv_parts", {"q", "v"}}}}}});
}

TEST_CASE("peft golden: Houlsby") { check_case("houlsby", {{"deltas", {adapter("houlsby", "houlsby", {})}}}); }

TEST_CASE("peft golden: Adapter+ (post, channel scale)") {
  check_case("adapter_plus", {{"deltas", {adapter("aplus", "adapter_plus", {})}}});
}

TEST_CASE("peft golden: VPT shallow and deep") {
  check_case("vpt_shallow", {{"deltas", {{{"name", "vpt"}, {"method", "vpt_shallow"}, {"num_tokens", 5}}}}});
  check_case("vpt_deep", {{"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 5}}}}});
}

TEST_CASE("peft golden: two adapters with trainable scales (scalar and per-channel)") {
  check_case("two_scaled",
             {{"deltas",
               {adapter("post", "adapter_plus", {{"scale", {{"kind", "scalar"}}}}),
                adapter("par", "parallel", {{"scale", {{"kind", "channel"}, {"init", 1.0}, {"trainable", true}}}})}}});
}

TEST_CASE("peft golden: an element-masked base tensor") {
  const auto dir = std::filesystem::temp_directory_path() / ("dg_mask_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string f = (dir / "mask.safetensors").string();
  save_safetensors(f, {{"blocks.0.mlp.fc1.weight", gold().tensors.at("masked.mask.blocks.0.mlp.fc1.weight")}});
  check_case("masked", {{"masks", {{{"tensor", "blocks.0.mlp.fc1.weight"}, {"file", f}}}}});
}

// Every registered method's golden cases (method_registry.h); tests/test_method_registry.cpp
// checks that each method has at least one and that its fixture exists.
TEST_CASE("peft golden: every registered method matches PyTorch (logits 1e-5, delta gradients 1e-4)") {
  int n = 0;
  for (const peft::MethodDef* m : peft::all_methods())
    for (const peft::GoldenCase& g : m->golden) {
      INFO("method ", m->name);
      Parity p = check_case(g.name, g.config);
      MESSAGE(m->name, " / ", g.name, ": max |logits diff| ", p.logits_abs, ", logits rel ", p.logits_rel,
              ", max grad rel (per tensor, norm-wise) ", p.grad_rel);
      CHECK(p.logits_abs < 1e-5);
      ++n;
    }
  CHECK(n >= int(peft::all_methods().size()));
}

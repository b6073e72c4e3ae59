// PEFT gradients against PyTorch (tests/fixtures/peft_golden.safetensors, written by
// scripts/make_peft_golden.py): non-zero deltas on the golden ViT, frozen base, and the
// gradient of every delta tensor to relative 1e-4.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
const SafeTensors& vit() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/vit_golden.safetensors");
  return st;
}
const SafeTensors& gold() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/peft_golden.safetensors");
  return st;
}
std::unique_ptr<nn::VisionTransformer> golden_base() {
  auto m = std::make_unique<nn::VisionTransformer>(
      nn::vit_config_from_json(json::parse(vit().metadata.at("config"))));
  std::map<std::string, Tensor> w;
  for (auto& [k, t] : vit().tensors)
    if (k.find('.') == std::string::npos ? (k == "cls_token" || k == "pos_embed") : k.rfind("grad.", 0) && k.rfind("input.", 0))
      w[k] = t;
  nn::load_state_dict(*m, w, "vit_golden");
  m->eval();
  return m;
}

void check_case(const std::string& c, const json& config) {
  INFO("case ", c);
  tape().clear();
  auto base = golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(config));
  // copy the fixture's delta values in by name; every delta tensor must be in the fixture
  int n = 0;
  for (auto& [name, t] : pm.trainable_parameters()) {
    auto it = gold().tensors.find(c + "." + name);
    if (it != gold().tensors.end()) {
      Tensor dst = t;
      dst.copy_(it->second);
      ++n;
    } else {
      REQUIRE_MESSAGE(pm.masks().count(name), "no fixture value for '", name, "'");
    }
  }
  CHECK((n > 0 || !pm.masks().empty()));
  Tensor logits = pm.forward(vit().tensors.at("input.images"));
  CHECK(test::rel_err(logits, gold().tensors.at(c + ".logits")) < 1e-5);
  Tensor loss = cross_entropy(logits, vit().tensors.at("input.labels"));
  backward(loss);
  pm.mask_gradients();
  int checked = 0;
  for (auto& [name, t] : pm.trainable_parameters()) {
    INFO(name);
    REQUIRE(t.grad().defined());
    CHECK(test::rel_err(t.grad(), gold().tensors.at(c + ".grad." + name)) < 1e-4);
    ++checked;
  }
  CHECK(checked > 0);
  // only deltas (and the masked tensor) received gradients
  for (auto& [name, t] : base->named_parameters(false))
    if (!t.requires_grad()) CHECK_MESSAGE(!t.grad().defined(), name);
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

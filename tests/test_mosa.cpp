// MoSA (peft/mosa.h) against the authors' code transcribed in scripts/make_peft_mosa_golden.py:
// the mask split by rank, a training forward with a fixed copy choice (logits, and gradients
// that reach only the active copy's part), the "joint" merge; and an optimizer step that
// leaves every element outside the active copy's part bit-identical. The eval-mode ("add")
// cases run with every registered method in tests/test_peft_golden.cpp.
#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "peft/mosa.h"
#include "peft/peft_model.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
const SafeTensors& gold() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/peft_mosa_golden.safetensors");
  return st;
}
json mosa(json extra) {
  json d = {{"name", "mosa"}, {"method", "mosa"}, {"dim", 4}, {"dropout", 0.0}};
  d.update(extra);
  return json{{"deltas", {d}}};
}
// every delta tensor (trainable or a mask) from the fixture's case
void load_case(nn::VisionTransformer& base, const std::string& c) {
  NoGradGuard ng;
  int n = 0;
  for (auto& [name, t] : base.named_parameters(true)) {
    if (name.find(".mosa.") == std::string::npos) continue;
    auto it = gold().tensors.find(c + "." + name);
    REQUIRE_MESSAGE(it != gold().tensors.end(), "no fixture value for '", name, "'");
    Tensor dst = t;
    dst.copy_(it->second);
    ++n;
  }
  CHECK(n > 0);
}
void set_training(peft::PeftModel& pm, bool on, std::pair<int64_t, int64_t> choice) {
  for (auto& [site, d] : pm.attachments("mosa")) {
    d->train(on);
    static_cast<peft::MosaDelta&>(*d).forced_choice = choice;
  }
}
}  // namespace

TEST_CASE("mosa: the masks split a weight's elements by score rank, as the authors' Pruner.divide") {
  for (int parts : {4, 3}) {
    INFO(parts);
    const std::string pre = "divide" + std::to_string(parts);
    std::vector<Tensor> masks = peft::mosa_divide(gold().tensors.at(pre + ".score"), parts);
    REQUIRE(masks.size() == size_t(parts));
    std::vector<double> cover(size_t(masks[0].numel()), 0.0);
    for (int i = 0; i < parts; ++i) {
      const std::vector<double> m = masks[size_t(i)].to_vector();
      CHECK(m == gold().tensors.at(pre + ".mask." + std::to_string(i)).to_vector());
      for (size_t j = 0; j < m.size(); ++j) cover[j] += m[j];
    }
    for (double c : cover) CHECK(c == 1.0);  // disjoint, and every element in one part
  }
}

TEST_CASE("mosa: a training forward with a fixed copy choice matches the authors' code; gradients reach only its part") {
  struct Case {
    const char* name;
    json cfg;
    std::pair<int64_t, int64_t> choice;
  };
  for (const Case& c : {Case{"mosa_train", mosa({{"scalar", 0.7}}), {0, 2}},
                        Case{"mosa_train_none", mosa({{"experts", 3}, {"share", "none"}, {"scalar", 0.5}}), {1, 2}}}) {
    INFO(c.name);
    tape().clear();
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(c.cfg));
    load_case(*base, c.name);
    set_training(pm, true, c.choice);
    Tensor logits = pm.forward(test::golden_images());
    CHECK(test::rel_err(logits, gold().tensors.at(std::string(c.name) + ".logits")) < 1e-5);
    backward(cross_entropy(logits, test::golden_vit_file().tensors.at("input.labels")));
    int with_grad = 0, without = 0;
    for (auto& [name, t] : pm.trainable_parameters()) {
      INFO(name);
      auto it = gold().tensors.find(std::string(c.name) + ".grad." + name);
      if (it == gold().tensors.end()) {  // a copy this forward did not activate
        CHECK_FALSE(t.grad().defined());
        ++without;
        continue;
      }
      REQUIRE(t.grad().defined());
      CHECK(test::rel_err(t.grad(), it->second) < 1e-4);
      ++with_grad;
    }
    CHECK(with_grad > 0);
    CHECK(without > 0);
  }
}

TEST_CASE("mosa: the joint merge places each copy's part, as the authors' merge('joint')") {
  tape().clear();
  auto base = test::golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(mosa({{"experts", 3}, {"share", "none"}, {"merge", "joint"},
                                                          {"scalar", 0.5}})));
  load_case(*base, "mosa_joint");
  NoGradGuard ng;
  CHECK(test::rel_err(pm.forward(test::golden_images()), gold().tensors.at("mosa_joint.logits")) < 1e-5);
}

TEST_CASE("mosa: an optimizer step changes only the active copy's part; the parameter count is one adapter's") {
  tape().clear();
  auto base = test::golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(mosa({{"experts", 4}})));
  load_case(*base, "mosa_train");
  set_training(pm, true, {0, 1});
  std::map<std::string, std::vector<double>> before;
  for (auto& [n, t] : pm.trainable_parameters()) before[n] = t.to_vector();
  nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.0);
  opt.zero_grad();
  backward(cross_entropy(pm.forward(test::golden_images()), test::golden_vit_file().tensors.at("input.labels")));
  opt.step();
  int changed_in = 0;
  for (auto& [site, d] : pm.attachments("mosa")) {
    auto& m = static_cast<peft::MosaDelta&>(*d);
    for (size_t i = 0; i < m.up.w.size(); ++i) {
      const std::string key = site + ".mosa.up." + std::to_string(i) + ".weight";
      const std::vector<double> now = m.up.w[i].to_vector(), was = before.at(key), mask = m.up.mask[i].to_vector();
      for (size_t j = 0; j < now.size(); ++j) {
        if (i == 1 && mask[j] != 0) {
          changed_in += now[j] != was[j];
        } else {
          CHECK(now[j] == was[j]);  // bit-identical outside the active copy's part
        }
      }
    }
  }
  CHECK(changed_in > 0);
  // norm 2*48, shared down 4*48 + 4, four up copies: a quarter of 48*4 each, and their 48-wide biases
  const int64_t per_block = 2 * 48 + 4 * 48 + 4 + 4 * (48 * 4 / 4) + 4 * 48;
  int64_t n = 0;
  for (auto& [site, d] : pm.attachments("mosa")) n += static_cast<peft::MethodDelta&>(*d).trainable_count();
  CHECK(n == per_block * int64_t(pm.attachments("mosa").size()));
}

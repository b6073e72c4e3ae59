// Sensitivity-chosen masks (issue 19): scores against a plain-PyTorch transcription of SPT's
// rule and its variants (scripts/make_sensitivity_golden.py), the top-k selection rule, mask
// files, and the PEFT config's "from" and "select".
#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/safetensors.h"
#include "peft/peft_model.h"
#include "peft/sensitivity.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
const SafeTensors& gold() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/sensitivity_golden.safetensors");
  return st;
}
const std::vector<std::string> kNames = {"blocks.0.attn.qkv.weight", "blocks.1.attn.proj.weight"};
// The fixture's two batches: images 0-1 and image 2.
std::pair<Tensor, Tensor> golden_batch(int64_t i) {
  const Tensor& x = test::golden_images();
  const Tensor& y = test::golden_vit_file().tensors.at("input.labels");
  return i == 0 ? std::make_pair(slice(x, 0, 0, 2), slice(y, 0, 0, 2)) : std::make_pair(slice(x, 0, 2, 3), slice(y, 0, 2, 3));
}
int64_t count(const Tensor& mask) {
  int64_t n = 0;
  for (double v : mask.to_vector()) n += v != 0;
  return n;
}
}  // namespace

TEST_CASE("sensitivity golden: grad, taylor, fisher and magnitude scores match PyTorch; no gradient or flag is left") {
  auto base = test::golden_base();
  for (const char* c : {"grad", "taylor", "fisher", "magnitude"}) {
    INFO(c);
    auto s = peft::sensitivity_scores(*base, kNames, peft::parse_criterion(c, "test"), 2, golden_batch, 0);
    for (const std::string& n : kNames) {
      INFO(n);
      CHECK(test::rel_err(s.at(n), gold().tensors.at(str("score.", c, ".", n))) < 1e-4);
    }
  }
  for (auto& [n, t] : base->named_parameters(true)) {  // frozen again, no gradient kept (no optimizer ever existed)
    CHECK_MESSAGE(!t.requires_grad(), n);
    CHECK_MESSAGE(!t.grad().defined(), n);
  }
  CHECK_THROWS_WITH_AS(peft::parse_criterion("snip", "--criterion"), doctest::Contains("unknown criterion 'snip'"), Error);
}

TEST_CASE("sensitivity golden: the top-k rule (global and per tensor) picks what PyTorch's stable sort picks") {
  std::map<std::string, Tensor> scores;
  for (const std::string& n : kNames) scores[n] = gold().tensors.at("score.fisher." + n);
  for (bool global : {true, false}) {
    auto masks = peft::top_k_masks(scores, 0.05, global);
    int64_t kept = 0, total = 0;
    for (const std::string& n : kNames) {
      CHECK(masks.at(n).to_vector() == gold().tensors.at(str("select.", global ? "global." : "tensor.", n)).to_vector());
      kept += count(masks.at(n)), total += masks.at(n).numel();
    }
    CHECK(kept == std::llround(0.05 * double(total)));
  }
  // ties go to the earlier element
  auto t = peft::top_k_masks({{"a", Tensor::from_vector(std::vector<double>{1, 2, 2, 2, 0}, {5})}}, 0.4, true);
  CHECK(t.at("a").to_vector() == std::vector<double>{0, 1, 1, 0, 0});
}

TEST_CASE("sensitivity: PEFT config masks from a mask file and from an inline select") {
  tape().clear();
  const auto dir = test::fresh_dir("sensitivity", "config");
  auto base = test::golden_base();
  auto s = peft::sensitivity_scores(*base, kNames, peft::Criterion::Fisher, 2, golden_batch, 0);
  auto want = peft::top_k_masks(s, 0.02, true);
  const std::string f = (dir / "masks.safetensors").string();
  peft::save_mask_file(f, want, {});
  {
    peft::PeftModel pm(*base, peft::parse_peft_config(json{{"masks", {{{"tensor", "blocks.0.attn.qkv.weight"}, {"from", f}},
                                                                      {{"tensor", "blocks.1.attn.proj.weight"}, {"from", f}}}}}));
    for (const std::string& n : kNames) CHECK(pm.masks().at(n).to_vector() == want.at(n).to_vector());
  }
  auto b2 = test::golden_base();
  const json sel = {{"criterion", "fisher"}, {"budget", 0.02}, {"batches", 2}};
  peft::PeftModel pm(*b2, peft::parse_peft_config(json{{"masks", {{{"tensor", "blocks.0.attn.qkv.weight"}, {"select", sel}},
                                                                  {{"tensor", "blocks.1.attn.proj.weight"}, {"select", sel}}}}}));
  CHECK(pm.selection_pending());
  pm.select_masks(golden_batch);
  CHECK(!pm.selection_pending());
  // each entry selects over its own tensors (global within the entry)
  for (const std::string& n : kNames) {
    auto one = peft::top_k_masks({{n, s.at(n)}}, 0.02, true);
    CHECK(pm.masks().at(n).to_vector() == one.at(n).to_vector());
    CHECK(count(pm.masks().at(n)) == std::llround(0.02 * double(s.at(n).numel())));
  }
  // magnitude needs no data: chosen in the constructor
  auto b3 = test::golden_base();
  peft::PeftModel pm3(*b3, peft::parse_peft_config(json{{"masks", {{{"tensor", "blocks.0.attn.qkv.weight"},
                                                                    {"select", {{"criterion", "magnitude"}, {"budget", 0.1}, {"scope", "tensor"}}}}}}}));
  CHECK(!pm3.selection_pending());
  auto mag = peft::sensitivity_scores(*b3, {kNames[0]}, peft::Criterion::Magnitude, 0, {}, 0);
  CHECK(pm3.masks().at(kNames[0]).to_vector() == peft::top_k_masks(mag, 0.1, false).at(kNames[0]).to_vector());
  auto bad = [](const json& m, const char* want) {
    CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"masks", {m}}}), doctest::Contains(want), Error);
  };
  bad({{"tensor", "x"}, {"select", {{"criterion", "snip"}}}}, "unknown criterion 'snip'");
  bad({{"tensor", "x"}, {"select", {{"budget", 2}}}}, "budget must be in (0, 1]");
  bad({{"tensor", "x"}, {"select", {{"scope", "layer"}}}}, "scope must be 'global' or 'tensor'");
  bad({{"tensor", "x"}, {"select", json::object()}, {"density", 0.1}}, "exactly one of");
}

// MoSA (peft/mosa.h) against the authors' code transcribed in scripts/make_peft_mosa_golden.py:
// the mask split by rank, a training forward with a fixed copy choice (logits, and gradients
// that reach only the active copy's part), the "joint" merge; and an optimizer step that
// leaves every element outside the active copy's part bit-identical. The eval-mode ("add")
// cases run with every registered method in tests/test_peft_golden.cpp. The consistency loss
// (two forwards with their own copies, a symmetric KL) against the authors' trainer and loss;
// the delta file holds the merged adapter, which a fresh model loads to bit-identical logits;
// a MoSA run resumes bit-exactly (tests/train_util.h's small run).
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "peft/mosa.h"
#include "peft/peft_model.h"
#include "peft/training_loss.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"
#include "tests/train_util.h"

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
void set_training(peft::PeftModel& pm, bool on, std::vector<std::pair<int64_t, int64_t>> choices) {
  for (auto& [site, d] : pm.attachments("mosa")) {
    d->train(on);
    static_cast<peft::MosaDelta&>(*d).forced_choices = choices;
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
    INFO(std::string(c.name));
    tape().clear();
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(c.cfg));
    load_case(*base, c.name);
    set_training(pm, true, {c.choice});
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
  set_training(pm, true, {{0, 1}});
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

TEST_CASE("mosa: the consistency loss (a second forward, symmetric KL) matches the authors' trainer: loss and gradients") {
  struct Case {
    const char* name;
    json cfg;
    std::vector<std::pair<int64_t, int64_t>> choices;  // the two forwards' copies (down, up)
  };
  for (const Case& c :
       {Case{"mosa_consist", mosa({{"scalar", 0.7}}), {{0, 2}, {1, 3}}},  // the VTAB script's weights: the defaults
        Case{"mosa_consist_none", mosa({{"experts", 3}, {"share", "none"}, {"scalar", 0.5}, {"add_weight", 0.5},
                                        {"reg_weight", 2.0}}), {{1, 2}, {2, 0}}}}) {
    INFO(std::string(c.name));
    tape().clear();
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(c.cfg));
    load_case(*base, c.name);
    set_training(pm, true, c.choices);
    const std::string pre = c.name;
    peft::StepLoss s = peft::training_loss(pm, test::golden_images(), test::golden_vit_file().tensors.at("input.labels"));
    CHECK(test::rel_err(s.logits, gold().tensors.at(pre + ".logits")) < 1e-5);  // the first forward's
    const double want = gold().tensors.at(pre + ".loss").item();
    MESSAGE(pre, ": loss ", s.loss.item(), ", authors' ", want, ", difference ", s.loss.item() - want);
    CHECK(std::abs(s.loss.item() - want) < 1e-5 * std::abs(want));
    backward(s.loss);
    int with_grad = 0;
    for (auto& [name, t] : pm.trainable_parameters()) {
      INFO(name);
      auto it = gold().tensors.find(pre + ".grad." + name);
      if (it == gold().tensors.end()) {  // a copy neither forward activated
        CHECK_FALSE(t.grad().defined());
        continue;
      }
      REQUIRE(t.grad().defined());
      CHECK(test::rel_err(t.grad(), it->second) < 1e-5);
      ++with_grad;
    }
    CHECK(with_grad > 0);
  }
  // the defaults are the VTAB script's (ADDITIONAL True, ADD_WEIGHT 0, REG_WEIGHT 1); additional: false has none
  auto base = test::golden_base();
  peft::PeftModel on(*base, peft::parse_peft_config(mosa(json::object())));
  REQUIRE(peft::consistency_loss_of(on).has_value());
  CHECK(*peft::consistency_loss_of(on) == peft::ConsistencyLoss{0.0, 1.0});
  auto base2 = test::golden_base();
  peft::PeftModel off(*base2, peft::parse_peft_config(mosa({{"additional", false}})));
  CHECK_FALSE(peft::consistency_loss_of(off).has_value());
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(mosa({{"reg_weight", -1.0}})),
                       doctest::Contains("add_weight and reg_weight must be finite and >= 0"), Error);
}

TEST_CASE("mosa: the delta file holds the merged adapter; a fresh model loads it to bit-identical eval logits") {
  tape().clear();
  auto base = test::golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(mosa({{"experts", 4}, {"share", "none"}})));
  {
    NoGradGuard ng;  // every copy different, as training makes them
    Generator g(11);
    for (auto& [name, t] : pm.trainable_parameters()) {
      Tensor noise = Tensor::empty(t.shape());
      g.normal_(noise, 0.0, 0.1);
      Tensor(t).copy_(add(t, noise));
    }
  }
  set_training(pm, false, {});
  NoGradGuard ng;
  const std::vector<double> want = pm.forward(test::golden_images()).to_vector();
  const std::string f = (test::fresh_dir("mosa", "file") / "mosa.safetensors").string();
  pm.save(f);
  SafeTensors st = load_safetensors(f);
  const size_t sites = pm.attachments("mosa").size();
  CHECK(st.tensors.size() == 6 * sites);  // norm, down and up (weight, bias) per block: one adapter
  for (const auto& [name, t] : st.tensors) {
    INFO(name);
    const std::string local = name.substr(name.find(".mosa.") + 6);  // no copy index, no mask
    CHECK((local == "norm.weight" || local == "norm.bias" || local == "down.weight" || local == "down.bias" ||
           local == "up.weight" || local == "up.bias"));
  }
  auto& first = static_cast<peft::MosaDelta&>(*pm.attachments("mosa")[0].second);
  CHECK(st.tensors.at("blocks.0.mlp_branch.mosa.up.weight").to_vector() == first.merged_adapter()[2].to_vector());
  CHECK(st.metadata.at("delta_metadata").find("merged adapter") != std::string::npos);

  auto base2 = test::golden_base();
  auto loaded = peft::PeftModel::from_file(*base2, f);
  set_training(*loaded, false, {});
  CHECK(loaded->forward(test::golden_images()).to_vector() == want);  // bit-identical
  // saved again, the same tensors
  const std::string f2 = (test::fresh_dir("mosa", "file") / "again.safetensors").string();
  loaded->save(f2);
  SafeTensors st2 = load_safetensors(f2);
  for (const auto& [name, t] : st.tensors) CHECK_MESSAGE(st2.tensors.at(name).to_vector() == t.to_vector(), name);
  // the file has no copies to train: a training forward is refused, naming why
  set_training(*loaded, true, {});
  CHECK_THROWS_WITH_AS(loaded->forward(test::golden_images()), doctest::Contains("evaluates only"), Error);
  // a file without the merged adapter's tensors is refused, naming the missing one
  std::map<std::string, Tensor> cut = st.tensors;
  cut.erase("blocks.0.mlp_branch.mosa.down.weight");
  const std::string f3 = (test::fresh_dir("mosa", "file") / "cut.safetensors").string();
  save_safetensors(f3, cut, st.metadata);
  auto base3 = test::golden_base();
  CHECK_THROWS_WITH_AS(peft::PeftModel::from_file(*base3, f3),
                       doctest::Contains("missing tensor 'blocks.0.mlp_branch.mosa.down.weight'"), Error);
}

TEST_CASE("mosa: a run with the consistency loss resumes bit-exactly; its delta file is one adapter") {
  namespace fs = std::filesystem;
  const fs::path dir = test::fresh_dir("mosa", "resume");
  const fs::path folder = test::make_stripes_folder(dir / "images");
  auto run_config = [&](const fs::path& out) {
    train::RunConfig rc = test::small_run(folder, out);
    rc.peft = {{"deltas", {{{"name", "mosa"}, {"method", "mosa"}, {"dim", 4}}}}, {"trainable", {"head.*"}}};
    return rc;
  };
  train::RunConfig full = run_config(dir / "full");
  auto [tr, va] = train::load_data(full.data, nn::load_vit_config(full.model_config), full.seed);
  std::vector<double> want;
  {
    train::Trainer t(full, tr, va);
    want = t.fit().step_losses;
  }
  train::RunConfig first = run_config(dir / "split");
  first.max_steps = 7;  // stops mid-epoch
  std::vector<double> got;
  {
    train::Trainer t(first, tr, va);
    train::TrainResult r = t.fit();
    CHECK(r.interrupted);
    got = r.step_losses;
  }
  {
    train::Trainer t(run_config(dir / "split"), tr, va);
    std::vector<double> rest = t.fit(true).step_losses;
    got.insert(got.end(), rest.begin(), rest.end());
  }
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);  // bit-identical
  // the checkpoint keeps the copies (training needs them), the delta file the merged adapter
  SafeTensors ck = load_safetensors((dir / "full" / "checkpoint.safetensors").string());
  CHECK(ck.tensors.count("param.blocks.0.mlp_branch.mosa.up.3.weight") == 1);
  SafeTensors df = load_safetensors((dir / "full" / "deltas.safetensors").string());
  CHECK(df.tensors.count("blocks.0.mlp_branch.mosa.up.weight") == 1);
  CHECK(df.tensors.count("blocks.0.mlp_branch.mosa.up.3.weight") == 0);
}

// 1-bit deltas (peft/packed_bits.h): the quantised weight takes two values, a delta file stores
// packed signs + [mean, std] at about 1/32 of the dense payload, and a model loaded from it
// computes bit-identical logits to the in-memory quantised model it was saved from; a 1-bit LoRA
// merges its quantised update.
#include <cmath>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "peft/packed_bits.h"
#include "peft/peft_model.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

TEST_CASE("packed bits: binarize is the authors' standardise, sign and rescale") {
  const std::vector<float> w = {0.3f, -1.2f, 0.05f, 2.0f, -0.4f, 0.7f};
  Tensor q = peft::binarize(Tensor::from_vector(w, {2, 3}));
  double mean = 0, var = 0;
  for (float v : w) mean += v;
  mean /= 6;
  for (float v : w) var += (v - mean) * (v - mean);
  const double sd = std::sqrt(var / 5);  // unbiased, as torch's std()
  const std::vector<double> got = q.to_vector();
  std::set<double> distinct(got.begin(), got.end());
  CHECK(distinct.size() == 2);
  for (size_t i = 0; i < w.size(); ++i) {
    const double want = (w[i] > mean ? 1 : -1) * peft::kOneBitCode * sd + mean;
    CHECK(got[i] == doctest::Approx(want).epsilon(1e-6));
  }
  CHECK_THROWS_WITH_AS(peft::binarize(Tensor::from_vector(std::vector<float>{1.0f}, {1})),
                       doctest::Contains("at least 2 elements"), Error);
}

namespace {
// Latent weights away from their init, so that signs and statistics are non-trivial.
void randomise(peft::PeftModel& pm, uint64_t seed) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& [n, t] : pm.trainable_parameters()) {
    Tensor r = Tensor::empty(t.shape());
    g.normal_(r, 0.0, 0.1);
    Tensor dst = t;
    dst.copy_(r);
  }
}
int64_t payload_bytes(const std::map<std::string, Tensor>& ts, const std::string& must_contain) {
  int64_t n = 0;
  for (auto& [k, t] : ts)
    if (k.find(must_contain) != std::string::npos) n += t.numel() * int64_t(dtype_size(t.dtype()));
  return n;
}
}  // namespace

TEST_CASE("packed bits: a 1-bit delta file is ~1/32 of the dense one and loads to bit-identical logits") {
  const auto dir = test::fresh_dir("packed_bits", "roundtrip");
  for (const json& d : {json{{"name", "bi"}, {"method", "parallel"}, {"dim", 32}, {"bias", false}, {"scaling", 0.5}},
                        json{{"name", "bl"}, {"method", "lora"}, {"r", 8}, {"qkv_mode", "separate"},
                             {"qkv_parts", {"q", "v"}}}}) {
    INFO(d.dump());
    json d1 = d;
    d1["bits"] = 1;
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {d1}}}));
    randomise(pm, 7);
    NoGradGuard ng;
    const std::vector<double> want = pm.forward(test::golden_images()).to_vector();
    const std::string f1 = (dir / "bits1.safetensors").string(), f32 = (dir / "dense.safetensors").string();
    pm.save(f1);

    // the same latent weights in float32
    auto base32 = test::golden_base();
    peft::PeftModel dense(*base32, peft::parse_peft_config(json{{"deltas", {d}}}));
    randomise(dense, 7);
    dense.save(f32);
    const auto packed = load_safetensors(f1).tensors, full = load_safetensors(f32).tensors;
    int64_t weights = 0, dense_bytes = 0;
    for (auto& [k, t] : full)
      if (k.find("weight") != std::string::npos || k.find("lora_") != std::string::npos) {
        CHECK_MESSAGE(!packed.count(k), k);  // the latent float weight is not in the 1-bit file
        REQUIRE_MESSAGE(packed.count(k + ".bits"), k);
        REQUIRE(packed.count(k + ".mean_std"));
        CHECK(packed.at(k + ".bits").numel() == (t.numel() + 31) / 32);
        ++weights;
        dense_bytes += t.numel() * 4;
      }
    CHECK(weights > 0);
    const int64_t bits_bytes = payload_bytes(packed, ".bits"), stats_bytes = payload_bytes(packed, ".mean_std");
    CHECK(stats_bytes == weights * 8);
    CHECK(bits_bytes * 32 >= dense_bytes);
    CHECK(bits_bytes * 32 <= dense_bytes + weights * 31 * 4);  // at most one partly filled word per tensor
    const auto s1 = std::filesystem::file_size(f1), s32 = std::filesystem::file_size(f32);
    MESSAGE(d["method"].get<std::string>(), ": quantised weights ", dense_bytes, " B dense -> ", bits_bytes,
            " B bits + ", stats_bytes, " B [mean, std]; whole files ", s32, " B -> ", s1, " B");
    CHECK(s1 < s32);

    auto base2 = test::golden_base();
    auto loaded = peft::PeftModel::from_file(*base2, f1);
    const std::vector<double> got = loaded->forward(test::golden_images()).to_vector();
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == want[i]);  // bit-identical
    // saved again, the loaded model writes the bits it read
    const std::string f2 = (dir / "again.safetensors").string();
    loaded->save(f2);
    const auto again = load_safetensors(f2).tensors;
    for (auto& [k, t] : packed)
      if (k.size() > 5 && k.compare(k.size() - 5, 5, ".bits") == 0) CHECK(again.at(k).to_vector() == t.to_vector());
  }
}

TEST_CASE("packed bits: a damaged packed file and bad options are errors naming the tensor or option") {
  const auto dir = test::fresh_dir("packed_bits", "errors");
  json d{{"name", "bi"}, {"method", "parallel"}, {"dim", 4}, {"bits", 1}};
  auto base = test::golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {d}}}));
  const std::string f = (dir / "d.safetensors").string(), bad = (dir / "bad.safetensors").string();
  pm.save(f);
  SafeTensors st = load_safetensors(f);
  st.tensors["blocks.0.mlp_branch.bi.up.weight.bits"] = Tensor::zeros({1}, DType::I32);
  save_safetensors(bad, st.tensors, st.metadata);
  auto base2 = test::golden_base();
  CHECK_THROWS_WITH_AS(peft::PeftModel::from_file(*base2, bad), doctest::Contains("blocks.0.mlp_branch.bi.up.weight"),
                       Error);
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"method", "houlsby"}, {"bits", 2}}}}}),
                       doctest::Contains("bits must be 1"), Error);
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"method", "lora"}, {"bits", 1}, {"use_dora", true}}}}}),
                       doctest::Contains("not DoRA"), Error);
}

TEST_CASE("packed bits: a 1-bit LoRA merges its quantised A and B, and unmerges exactly") {
  auto base = test::golden_base();
  peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {{{"name", "bl"}, {"method", "lora"}, {"r", 4},
                                                                      {"lora_alpha", 8}, {"bits", 1}}}}}));
  randomise(pm, 11);
  NoGradGuard ng;
  Tensor before = pm.forward(test::golden_images());
  pm.merge();
  Tensor merged = pm.forward(test::golden_images());
  CHECK(test::rel_err(merged, before) < 1e-5);  // W + scaling * Bq Aq: the quantised update, not the latent one
  pm.unmerge();
  const std::vector<double> a = pm.forward(test::golden_images()).to_vector(), b = before.to_vector();
  CHECK(a == b);
}

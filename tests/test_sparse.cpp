// Sparse deltas (issue 19): masked tensors stored as positions + values, sized by the budget;
// loading restores them bit-exactly, still reads the old dense files, and names the tensor on
// bad positions.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "peft/peft_model.h"
#include "peft/sensitivity.h"
#include "peft/shira.h"
#include "peft/sparse_delta.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
// Wide enough that a 1% delta's tensor bytes dwarf the file's JSON header (4 x 65536 masked elements).
nn::ViTConfig wide() {
  return nn::vit_config_from_json(json{{"img_size", 8}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 128},
                                       {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}, {"mean", {0.5}}, {"std", {0.5}}});
}
json masked_config(double density) {
  return json{{"masks", {{{"tensor", "blocks.*.mlp.fc*.weight"}, {"density", density}, {"seed", 5}}}}};
}
// Changes every masked-in element as training would (the optimizer leaves the others bit-identical).
void perturb_masked(peft::PeftModel& pm) {
  NoGradGuard ng;
  for (auto& [n, t] : pm.base().named_parameters(false)) {
    auto it = pm.masks().find(n);
    if (it == pm.masks().end()) continue;
    Tensor noise = Tensor::empty(t.shape());
    Generator(17).normal_(noise);
    Tensor upd = add(t, mul(noise, it->second));
    Tensor(t).copy_(upd);
  }
}
std::map<std::string, std::vector<float>> weights(nn::Module& m) {
  std::map<std::string, std::vector<float>> s;
  for (auto& [n, t] : m.named_parameters(false)) s[n] = t.to_float_vector();
  return s;
}
}  // namespace

TEST_CASE("sparse deltas: a 1% masked delta's file is ~2% of the dense tensors and loads bit-exactly") {
  tape().clear();
  const auto dir = test::fresh_dir("sparse", "size");
  nn::VisionTransformer m(wide());
  peft::PeftModel pm(m, peft::parse_peft_config(masked_config(0.01)));
  perturb_masked(pm);
  const std::string f = (dir / "d.safetensors").string();
  pm.save(f);
  int64_t dense_bytes = 0, kept = 0;
  for (auto& [n, mask] : pm.masks()) {
    dense_bytes += mask.numel() * 4;
    for (double v : mask.to_vector()) kept += v != 0;
  }
  REQUIRE(pm.masks().size() == 4);
  const double ratio = double(std::filesystem::file_size(f)) / double(dense_bytes);
  MESSAGE("1% delta: ", kept, " of ", dense_bytes / 4, " elements, file ", std::filesystem::file_size(f),
          " B = ", 100 * ratio, "% of the dense tensors' ", dense_bytes, " B");
  CHECK(ratio < 0.025);  // int32 position + float32 value per element, and the header
  CHECK(ratio > 0.015);
  SafeTensors st = load_safetensors(f);
  for (auto& [n, mask] : pm.masks()) {
    CHECK(st.tensors.count(n) == 0);
    CHECK(st.tensors.count("mask." + n) == 0);
    CHECK(st.tensors.at(n + ".sparse_indices").dtype() == DType::I32);
  }
  nn::VisionTransformer m2(wide());  // the same base (same init seed)
  auto pm2 = peft::PeftModel::from_file(m2, f);
  CHECK(weights(m2) == weights(m));  // every tensor, bit for bit
  for (auto& [n, mask] : pm.masks()) CHECK(pm2->masks().at(n).to_vector() == mask.to_vector());

  SUBCASE("a file of the old dense format (tensor + mask.<name>) still loads") {
    std::map<std::string, Tensor> old;
    for (auto& [n, p] : m.named_parameters(false))
      if (pm.masks().count(n)) old[n] = p, old["mask." + n] = pm.masks().at(n);
    const std::string g = (dir / "old.safetensors").string();
    save_safetensors(g, old, st.metadata);
    nn::VisionTransformer m3(wide());
    auto pm3 = peft::PeftModel::from_file(m3, g);
    CHECK(weights(m3) == weights(m));
  }
  SUBCASE("masks taken from a mask file: the delta file loads after that file is gone") {
    // as LT-SFT's second phase writes it: the config names the mask file by its path
    const std::string mf = (dir / "masks.safetensors").string();
    peft::save_mask_file(mf, pm.masks(), {});
    nn::VisionTransformer m6(wide());
    peft::PeftModel pm6(m6, peft::parse_peft_config(json{{"masks", {{{"tensor", "blocks.*.mlp.fc*.weight"}, {"from", mf}}}}}));
    for (auto& [n, mask] : pm.masks()) REQUIRE(pm6.masks().at(n).to_vector() == mask.to_vector());
    perturb_masked(pm6);
    const std::string g = (dir / "from.safetensors").string();
    pm6.save(g);
    std::filesystem::remove(mf);
    nn::VisionTransformer m7(wide());
    auto pm7 = peft::PeftModel::from_file(m7, g);
    CHECK(weights(m7) == weights(m6));
    for (auto& [n, mask] : pm.masks()) CHECK(pm7->masks().at(n).to_vector() == mask.to_vector());
  }
  SUBCASE("bad positions are refused, naming the tensor") {
    const std::string n = "blocks.1.mlp.fc2.weight", key = n + ".sparse_indices";
    auto broken = [&](std::vector<int64_t> pos, const std::string& want) {
      std::map<std::string, Tensor> t = st.tensors;
      t[key] = Tensor::from_vector(pos, {int64_t(pos.size())}).to(DType::I32);
      t[n + ".sparse_values"] = Tensor::zeros({int64_t(pos.size())});
      const std::string g = (dir / "bad.safetensors").string();
      save_safetensors(g, t, st.metadata);
      nn::VisionTransformer m4(wide());
      CHECK_THROWS_WITH_AS(peft::PeftModel::from_file(m4, g), doctest::Contains(want.c_str()), Error);
    };
    broken({3, 1, 7}, "'" + key + "' must be strictly increasing");
    broken({1, 1, 7}, "must be strictly increasing (sorted, no duplicates)");
    broken({1, 65536}, "'" + key + "'[1] = 65536 is outside the tensor's 65536 elements");
    broken({-1, 2}, "is outside the tensor's");
    std::map<std::string, Tensor> t = st.tensors;
    t.erase(n + ".sparse_values");
    const std::string g = (dir / "novalues.safetensors").string();
    save_safetensors(g, t, st.metadata);
    nn::VisionTransformer m5(wide());
    CHECK_THROWS_WITH_AS(peft::PeftModel::from_file(m5, g), doctest::Contains(("has no '" + n + ".sparse_values'").c_str()), Error);
  }
}

TEST_CASE("sparse deltas: positions encode and decode") {
  Tensor mask = Tensor::from_vector(std::vector<double>{0, 1, 0, 0, 1, 1}, {2, 3});
  Tensor pos = peft::mask_positions(mask);
  CHECK(pos.to_vector() == std::vector<double>{1, 4, 5});
  CHECK(peft::positions_mask(pos, {2, 3}).to_vector() == mask.to_vector());
  Tensor w = Tensor::from_vector(std::vector<double>{10, 11, 12, 13, 14, 15}, {2, 3});
  Tensor v = peft::gather_positions(w, pos);
  CHECK(v.to_vector() == std::vector<double>{11, 14, 15});
  Tensor z = Tensor::zeros({2, 3});
  peft::scatter_positions(z, pos, v);
  CHECK(z.to_vector() == std::vector<double>{0, 11, 0, 0, 14, 15});
}

TEST_CASE("shira: two SHiRA deltas on one Linear add up, leave the base bit-identical, and round-trip a delta file") {
  tape().clear();
  const auto dir = test::fresh_dir("sparse", "shira");
  auto cfg = [] {
    return json{{"deltas", {{{"name", "s1"}, {"method", "shira"}, {"r", 1}, {"init_weights", false}, {"random_seed", 1},
                             {"target_modules", {"blocks.0.mlp.fc1"}}},
                            {{"name", "s2"}, {"method", "shira"}, {"r", 1}, {"init_weights", false}, {"mask_type", "magnitude"},
                             {"target_modules", {"blocks.0.mlp.fc1"}}}}}};
  };
  nn::VisionTransformer m(wide());
  auto w0 = weights(m);
  peft::PeftModel pm(m, peft::parse_peft_config(cfg()), 3);
  m.eval();
  Tensor x = Tensor::empty({2, 1, 8, 8});
  Generator(4).normal_(x);
  NoGradGuard ng;
  const Tensor y = pm.forward(x);
  CHECK(weights(m) == w0);  // the base is untouched: the deltas hold values and positions
  // the same forward from W + dW1 + dW2 written into a plain model
  nn::VisionTransformer plain(wide());
  Tensor w = plain.named_parameters(false)[0].second;
  for (auto& [n, t] : plain.named_parameters(false))
    if (n == "blocks.0.mlp.fc1.weight") w = t;
  std::vector<double> dense = w.to_vector();
  int64_t k = 0;
  for (const char* d : {"s1", "s2"})
    for (auto& [site, delta] : pm.attachments(d)) {
      auto& s = static_cast<peft::ShiraDelta&>(*delta);
      const std::vector<double> pos = s.shira_indices.to_vector(), val = s.shira_weight.to_vector();
      for (size_t i = 0; i < pos.size(); ++i) dense[size_t(pos[i])] += val[i];
      k += int64_t(pos.size());
    }
  CHECK(k == 2 * (128 + 512));  // r (in + out) each
  w.copy_(Tensor::from_vector(dense, w.shape()));
  plain.eval();
  CHECK(test::rel_err(plain(x), y) < 1e-6);
  const std::string f = (dir / "shira.safetensors").string();
  pm.save(f);
  CHECK(std::filesystem::file_size(f) < 4 * 128 * 512 / 10);  // values + int32 positions: ~2.5% of the dense fc1
  nn::VisionTransformer m2(wide());
  auto pm2 = peft::PeftModel::from_file(m2, f);
  m2.eval();
  CHECK(pm2->forward(x).to_vector() == y.to_vector());
}

TEST_CASE("sparse deltas compose by addition (LT-SFT): base + (A - base) + (B - base), overlaps summed") {
  tape().clear();
  const auto dir = test::fresh_dir("sparse", "compose");
  nn::VisionTransformer m(wide());
  const auto w0 = weights(m);
  std::vector<std::string> files;
  std::map<std::string, std::vector<double>> want;
  for (auto& [n, t] : m.named_parameters(false)) want[n] = t.to_vector();
  for (uint64_t task : {1, 2}) {
    nn::VisionTransformer mt(wide());
    peft::PeftModel pm(mt, peft::parse_peft_config(json{{"masks", {{{"tensor", "blocks.*.mlp.fc1.weight"}, {"density", 0.05},
                                                                     {"seed", task}}}}}));
    perturb_masked(pm);
    for (auto& [n, t] : mt.named_parameters(false)) {  // expected: the sum of both tasks' differences
      const std::vector<double> v = t.to_vector();
      const std::vector<float>& b = w0.at(n);
      for (size_t i = 0; i < v.size(); ++i) want[n][i] += v[i] - double(b[i]);
    }
    files.push_back((dir / str("task", task, ".safetensors")).string());
    pm.save(files.back());
  }
  peft::add_sparse_differences(m, files);
  int64_t changed = 0;
  for (auto& [n, t] : m.named_parameters(false)) {
    const std::vector<float> got = t.to_float_vector();
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i] == float(want[n][i]));
      changed += got[i] != w0.at(n)[i];
    }
  }
  CHECK(changed > 0);
  // one file alone composes to exactly what loading it gives
  nn::VisionTransformer one(wide()), loaded(wide());
  peft::add_sparse_differences(one, {files[0]});
  auto pm = peft::PeftModel::from_file(loaded, files[0]);
  CHECK(weights(one) == weights(loaded));
  nn::VisionTransformer other(wide());
  nn::ViTConfig c = wide();
  c.depth = 3;
  nn::VisionTransformer deeper(c);
  CHECK_THROWS_WITH_AS(peft::add_sparse_differences(deeper, files), doctest::Contains("was not made for this base"), Error);
}

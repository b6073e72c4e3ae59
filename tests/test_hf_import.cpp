// `import-peft` for every method Hugging Face peft has (peft/hf_import.cpp): our export read
// back bit-exactly, adapters made by real peft (tests/fixtures/peft_import/, written by
// scripts/make_peft_import_fixtures.py) giving peft's logits, VeRA's delta files without the
// projections, and the errors for what deltagrad does not implement.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "peft/peft_model.h"
#include "peft/vera.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
const char* kFixtures = DG_SOURCE_DIR "/tests/fixtures/peft_import";

bool same_bits(const Tensor& a, const Tensor& b) { return a.shape() == b.shape() && a.to_vector() == b.to_vector(); }

Tensor logits_of(peft::PeftModel& pm) {
  NoGradGuard ng;
  return pm.forward(test::golden_images());
}

// every delta tensor, VeRA's shared projections included, by "<site>.<local name>"
std::map<std::string, Tensor> delta_tensors(const peft::PeftModel& pm, const std::string& name) {
  std::map<std::string, Tensor> out;
  for (auto& [site, d] : pm.attachments(name)) {
    for (auto& [pn, t] : d->named_parameters()) out[site + "." + pn] = t;
    if (auto* v = dynamic_cast<peft::VeraDelta*>(d.get())) {
      out["vera_A"] = v->projections().A;
      out["vera_B"] = v->projections().B;
    }
  }
  return out;
}
}  // namespace

TEST_CASE("hf import: every method's export reads back with bit-identical tensors and logits, head and norm too") {
  int n = 0;
  for (const peft::MethodDef* md : peft::all_methods()) {
    if (!md->hf_export && !md->hf_import) continue;
    REQUIRE_MESSAGE((md->hf_export && md->hf_import), md->name, ": a method peft has needs both hf_export and hf_import");
    json d = md->examples.at(0);
    d["name"] = "d";
    INFO(d.dump());
    tape().clear();
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {d}}, {"trainable", {"head.*", "norm.*"}}}));
    Generator g(40 + n);  // non-zero values everywhere (peft's inits leave some factors zero)
    for (auto& [k, t] : pm.trainable_parameters()) g.normal_(t, 0.5, 0.2);
    const Tensor want = logits_of(pm);
    const auto want_t = delta_tensors(pm, "d");
    const fs::path dir = test::fresh_dir("hf_import", md->name);
    pm.export_hf(dir.string());
    auto base2 = test::golden_base();
    peft::import_hf(dir.string(), (dir / "imported.safetensors").string(), *base2);
    auto pm2 = peft::PeftModel::from_file(*base2, (dir / "imported.safetensors").string());
    const std::string got_name = pm2->delta_names().at(0);
    CHECK(pm2->method_of(got_name).name == md->name);
    const auto got_t = delta_tensors(*pm2, got_name);
    CHECK(got_t.size() == want_t.size());
    for (auto& [k, t] : want_t) {
      INFO(k);
      REQUIRE(got_t.count(k));
      CHECK(same_bits(got_t.at(k), t));
    }
    for (const char* bt : {"head.weight", "head.bias", "norm.weight", "norm.bias"}) {
      auto find = [&](nn::VisionTransformer& m) {
        for (auto& [k, t] : m.named_parameters(false))
          if (k == bt) return t;
        return Tensor();
      };
      CHECK_MESSAGE(same_bits(find(*base2), find(*base)), bt);
    }
    CHECK(same_bits(logits_of(*pm2), want));
    ++n;
  }
  CHECK(n == 6);  // lora, dora, ia3, vera, loha, lokr
}

TEST_CASE("hf import: adapters saved by Hugging Face peft import and give peft's logits") {
  const SafeTensors gold = load_safetensors(std::string(kFixtures) + "/logits.safetensors");
  int n = 0;
  for (const peft::MethodDef* md : peft::all_methods()) {
    if (!md->hf_import) continue;
    const std::string dir = std::string(kFixtures) + "/" + md->name;
    REQUIRE_MESSAGE(fs::exists(dir + "/adapter_config.json"),
                    "no peft-made fixture for ", md->name, ": add it to scripts/make_peft_import_fixtures.py");
    tape().clear();
    auto base = test::golden_base();
    const fs::path out = test::fresh_dir("hf_import", "peft_" + md->name) / "d.safetensors";
    peft::import_hf(dir, out.string(), *base);
    auto pm = peft::PeftModel::from_file(*base, out.string());
    CHECK(pm->method_of(pm->delta_names().at(0)).name == md->name);
    const Tensor want = gold.tensors.at(md->name + ".logits");
    const Tensor got = logits_of(*pm);
    const double err = test::max_rel_err(got, want, 1.0);  // |d| / max(|want|, 1): absolute for small logits
    std::printf("import-peft of peft %s's %s adapter: max logit difference %.2e (relative %.2e)\n",
                gold.metadata.at("peft").c_str(), md->name.c_str(), err, test::rel_err(got, want));
    CHECK(err < 1e-5);
    // the peft folder's head or norm (modules_to_save) travels as a trained base tensor
    if (md->name == "lora" || md->name == "ia3") CHECK(load_safetensors(out.string()).tensors.count("head.weight"));
    if (md->name == "dora") CHECK(load_safetensors(out.string()).tensors.count("norm.weight"));
    ++n;
  }
  CHECK(n == 6);
}

TEST_CASE("hf import: a peft VeRA keeps torch's projections in the delta file, ours regenerates them") {
  tape().clear();
  {  // peft drew vera_A / vera_B with torch's generator: the delta file must keep them
    auto base = test::golden_base();
    const fs::path out = test::fresh_dir("hf_import", "vera_torch") / "d.safetensors";
    peft::import_hf(std::string(kFixtures) + "/vera", out.string(), *base);
    const SafeTensors st = load_safetensors(out.string());
    CHECK(st.tensors.count("blocks.0.attn.qkv.vera.vera_A"));
    CHECK(json::parse(st.metadata.at("peft_config"))["deltas"][0]["save_projection"] == true);
  }
  {  // our export of a default VeRA: its projections are our generator's for the key
    auto base = test::golden_base();
    peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {{{"name", "v"}, {"method", "vera"}, {"r", 8},
                                                                         {"projection_prng_key", 3}}}}}));
    const fs::path dir = test::fresh_dir("hf_import", "vera_ours");
    pm.export_hf(dir.string());
    CHECK(load_safetensors((dir / "adapter_model.safetensors").string()).tensors.count("base_model.vera_A"));
    auto base2 = test::golden_base();
    peft::import_hf(dir.string(), (dir / "d.safetensors").string(), *base2);
    const SafeTensors st = load_safetensors((dir / "d.safetensors").string());
    for (auto& [k, t] : st.tensors) CHECK_MESSAGE(k.find("vera_A") == std::string::npos, k);
    CHECK(json::parse(st.metadata.at("peft_config"))["deltas"][0]["save_projection"] == false);
  }
}

TEST_CASE("hf import: peft types and options deltagrad does not implement are errors naming the file and key") {
  auto base = test::golden_base();
  const fs::path lora_dir = test::fresh_dir("hf_import", "errors");
  {
    peft::PeftModel pm(*base, peft::parse_peft_config(json{{"deltas", {{{"name", "l"}, {"method", "lora"}, {"r", 2}}}}}));
    pm.export_hf(lora_dir.string());
    pm.remove("l");
  }
  const std::string cfg_path = (lora_dir / "adapter_config.json").string();
  const json good = read_json_file(cfg_path, "test");
  auto fails_with = [&](const json& cfg, const std::string& what) {
    write_file_atomic(cfg_path, cfg.dump());
    CHECK_THROWS_WITH_AS(peft::import_hf(lora_dir.string(), (lora_dir / "d.safetensors").string(), *base),
                         doctest::Contains(what.c_str()), Error);
    CHECK_THROWS_WITH_AS(peft::import_hf(lora_dir.string(), (lora_dir / "d.safetensors").string(), *base),
                         doctest::Contains("adapter_"), Error);  // names the file
    CHECK(base->all_deltas().empty());
  };
  json c = good;
  c["peft_type"] = "BOFT";
  fails_with(c, "peft_type 'BOFT' is not one deltagrad imports (expected one of IA3, LOHA, LOKR, LORA, VERA)");
  c = good;
  c["fan_in_fan_out"] = true;
  fails_with(c, "'fan_in_fan_out' is true, expected false");
  c = good;
  c["rank_pattern"] = {{"blocks.0.attn.qkv", 8}};
  fails_with(c, "'rank_pattern' is {\"blocks.0.attn.qkv\":8}, expected {}");
  c = good;
  c["r"] = 3;
  fails_with(c, "has rank 2, '");
  c = good;
  c["use_dora"] = true;  // the tensors lack lora_magnitude_vector
  fails_with(c, "has no 'lora_magnitude_vector'");
  c = good;
  c["peft_type"] = "IA3";  // LoRA tensors in an IA3 folder
  fails_with(c, "unexpected key 'base_model.model.blocks.0.attn.qkv.lora_A.weight' for peft_type IA3");
  // VeRA without its projections in the file: torch's generator would be needed
  json v = read_json_file(std::string(kFixtures) + "/vera/adapter_config.json", "test");
  v["save_projection"] = false;
  const fs::path vdir = test::fresh_dir("hf_import", "vera_unsaved");
  fs::copy_file(std::string(kFixtures) + "/vera/adapter_model.safetensors", vdir / "adapter_model.safetensors");
  write_file_atomic((vdir / "adapter_config.json").string(), v.dump());
  CHECK_THROWS_WITH_AS(peft::import_hf(vdir.string(), (vdir / "d.safetensors").string(), *base),
                       doctest::Contains("'save_projection' is false, expected true"), Error);
}

TEST_CASE("vera: a delta file holds the vectors and the seed; loading regenerates A and B bit-exactly") {
  tape().clear();
  const fs::path dir = test::fresh_dir("hf_import", "vera_file");
  auto make = [](nn::VisionTransformer& base, bool save_projection) {
    return std::make_unique<peft::PeftModel>(base, peft::parse_peft_config(json{{"deltas", {{
        {"name", "v"}, {"method", "vera"}, {"r", 32}, {"projection_prng_key", 9}, {"save_projection", save_projection},
        {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}));
  };
  uintmax_t size[2];
  for (bool save_projection : {false, true}) {
    INFO("save_projection ", save_projection);
    auto base = test::golden_base();
    auto pm = make(*base, save_projection);
    Generator g(5);
    for (auto& [k, t] : pm->trainable_parameters()) g.normal_(t, 0.0, 0.5);
    const Tensor want = logits_of(*pm);
    const std::string path = (dir / (save_projection ? "kept.safetensors" : "seed.safetensors")).string();
    pm->save(path);
    size[save_projection] = fs::file_size(path);
    const SafeTensors st = load_safetensors(path);
    int projections = 0;
    for (auto& [k, t] : st.tensors) projections += k.find("vera_A") != std::string::npos || k.find("vera_B") != std::string::npos;
    CHECK(projections == (save_projection ? 2 : 0));
    CHECK((st.metadata.count("delta_metadata") == 1) == !save_projection);
    auto base2 = test::golden_base();
    auto pm2 = peft::PeftModel::from_file(*base2, path);
    CHECK(same_bits(logits_of(*pm2), want));
  }
  // A [32, 48] and B [192, 32] in float32 leave the file
  std::printf("vera delta file (r 32, qkv + fc1, 3 blocks): %ju bytes with the projections, %ju with the seed\n",
              size[1], size[0]);
  // (less the few hundred bytes of metadata that record the seed instead)
  CHECK(size[1] - size[0] >= (32 * 48 + 192 * 32) * 4 - 512);
  {  // a file of the earlier format (projections in the file, no save_projection key) still loads
    SafeTensors st = load_safetensors((dir / "kept.safetensors").string());
    json cfg = json::parse(st.metadata.at("peft_config"));
    cfg["deltas"][0].erase("save_projection");
    st.metadata["peft_config"] = cfg.dump();
    const std::string old_file = (dir / "old_format.safetensors").string();
    save_safetensors(old_file, st.tensors, st.metadata);
    auto b1 = test::golden_base(), b2 = test::golden_base();
    auto kept = peft::PeftModel::from_file(*b1, (dir / "kept.safetensors").string());
    auto old = peft::PeftModel::from_file(*b2, old_file);
    CHECK(same_bits(logits_of(*old), logits_of(*kept)));
  }
  // a file whose projections were drawn otherwise (another key here) is refused, not silently redrawn
  auto base = test::golden_base();
  auto other = std::make_unique<peft::PeftModel>(*base, peft::parse_peft_config(json{{"deltas", {{
      {"name", "v"}, {"method", "vera"}, {"r", 32}, {"projection_prng_key", 10},
      {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc1"}}}}}}));
  CHECK_THROWS_WITH_AS(other->load((dir / "seed.safetensors").string()),
                       doctest::Contains("delta_metadata of 'blocks.0.attn.qkv.v'"), Error);
}

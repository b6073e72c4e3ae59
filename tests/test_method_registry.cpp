// Every registered PEFT method (peft/method_registry.h) must carry its checks, as every op
// must carry a gradient check (test_gradcheck_registry.cpp): a golden parity case whose
// fixture exists (test_peft_golden.cpp runs them all), examples for the frozen-base test
// (test_peft.cpp runs them all), and a row in the README's method table.
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "peft/config.h"
#include "peft/method_registry.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
std::set<std::string> fixture_cases() {
  std::set<std::string> cases;
  for (const char* f : {"/tests/fixtures/peft_golden.safetensors", "/tests/fixtures/peft_methods_golden.safetensors",
                        "/tests/fixtures/peft_fact_hydra_golden.safetensors", "/tests/fixtures/peft_bits_golden.safetensors",
                        "/tests/fixtures/peft_mosa_golden.safetensors",
                        "/tests/fixtures/shira_golden.safetensors"})
    for (auto& [k, t] : load_safetensors(std::string(DG_SOURCE_DIR) + f).tensors)
      if (k.size() > 7 && k.compare(k.size() - 7, 7, ".logits") == 0) cases.insert(k.substr(0, k.size() - 7));
  return cases;
}
std::string readme() {
  std::ifstream f(DG_SOURCE_DIR "/README.md");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}
}  // namespace

TEST_CASE("method registry: every method has a golden case, frozen-base examples and a README row") {
  const auto cases = fixture_cases();
  const std::string md = readme();
  REQUIRE(peft::all_methods().size() >= 7);
  for (const peft::MethodDef* m : peft::all_methods()) {
    INFO("method '", m->name, "'");
    CHECK(m->parse);
    CHECK(m->attach);
    CHECK(!m->summary.empty());
    CHECK_MESSAGE(!m->golden.empty(), "no golden parity case: add one to scripts/make_peft_methods_golden.py");
    for (const peft::GoldenCase& g : m->golden) {
      CHECK_MESSAGE(cases.count(g.name), "golden case '", g.name, "' is in no fixture");
      // the case's config uses this method
      bool uses = false;
      for (const peft::DeltaConfig& d : peft::parse_peft_config(g.config).deltas) uses |= d.method == m->name;
      CHECK_MESSAGE(uses, "golden case '", g.name, "' has no delta of this method");
    }
    CHECK_MESSAGE(!m->examples.empty(), "no example for the frozen-base test");
    for (const json& e : m->examples) {
      json d = e;
      d["name"] = "d";
      CHECK(peft::parse_peft_config(json{{"deltas", {d}}}).deltas.at(0).method == m->name);
    }
    CHECK_MESSAGE(md.find("| `" + m->name + "` |") != std::string::npos, "no row in the README's method table");
    CHECK((!m->hf_export) == m->hf_peft_type.empty());
  }
}

TEST_CASE("method registry: unknown methods are refused with the list of known ones") {
  std::string known;
  for (const peft::MethodDef* m : peft::all_methods()) known += (known.empty() ? "" : ", ") + m->name;
  CHECK(peft::method_names() == known);
  const std::string want = "unknown method 'lorax' (known: " + known + ")";
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"method", "lorax"}}}}}),
                       doctest::Contains(want.c_str()), Error);
  // a registered name resolves; lora with use_dora is peft's DoRA
  CHECK(peft::parse_peft_config(json{{"deltas", {{{"method", "lora"}, {"use_dora", true}}}}}).deltas[0].method == "dora");
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"method", "ia3"}, {"scale", {{"kind", "scalar"}}}}}}}),
                       doctest::Contains("ia3 takes no 'scale'"), Error);
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"method", "ssf"}, {"r", 4}}}}}),
                       doctest::Contains("unknown key 'r'"), Error);
}

// PEFT mechanics: delta order, frozen tensors untouched, masks under AdamW, delta files,
// merge/unmerge, Hugging Face export/import, config errors, and that every method learns.
#include <algorithm>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/random.h"
#include "data/dataset.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
nn::ViTConfig tiny() {
  return nn::vit_config_from_json(json{{"img_size", 16}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 24},
                                       {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}, {"mean", {0.5}}, {"std", {0.5}}});
}
std::string tmp(const std::string& f) {
  auto d = std::filesystem::temp_directory_path() / ("dg_peft_" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return (d / f).string();
}
// A learnable toy task: class = which third of the image is bright.
std::pair<Tensor, Tensor> toy_batch(int64_t n, uint64_t seed, int64_t shift = 0) {
  Generator g(seed);
  Tensor x = Tensor::empty({n, 1, 16, 16});
  g.normal_(x, 0.0, 0.3);
  std::vector<int64_t> y(static_cast<size_t>(n));
  float* p = x.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    y[size_t(i)] = (i + shift) % 3;
    for (int64_t r = 0; r < 16; ++r)
      for (int64_t c = 5 * (i % 3); c < 5 * (i % 3) + 5 && c < 16; ++c) p[(i * 16 + r) * 16 + c] += 1.5f;
  }
  return {x, Tensor::from_vector(y, {n})};
}
// A backbone pretrained (full fine-tune) on the toy task, as the base for adaptation.
const std::map<std::string, Tensor>& pretrained() {
  static std::map<std::string, Tensor> w = [] {
    nn::VisionTransformer m(tiny());
    m.set_trainable("*", true);
    nn::AdamW opt(m.named_parameters(), 3e-3, 0.0);
    auto [x, y] = toy_batch(48, 11);
    for (int s = 0; s < 60; ++s) {
      opt.zero_grad();
      backward(cross_entropy(m(x), y));
      opt.step();
    }
    std::map<std::string, Tensor> out;
    for (auto& [n, t] : m.named_parameters()) out[n] = t.detach().clone();
    return out;
  }();
  return w;
}
std::map<std::string, std::vector<float>> snapshot(nn::Module& m) {
  std::map<std::string, std::vector<float>> s;
  for (auto& [n, t] : m.named_parameters(false)) s[n] = t.to_float_vector();
  return s;
}
// Train a few AdamW steps; return the eval-mode loss (dropout and drop-path off) before
// and after training, so the comparison is not at the mercy of one noisy step.
std::pair<double, double> train(peft::PeftModel& pm, int steps, double lr) {
  nn::AdamW opt(pm.trainable_parameters(), lr, 0.05);
  for (auto& [n, m] : pm.masks()) opt.set_mask(n, m);
  auto [x, y] = toy_batch(24, 3, 1);  // the downstream task: labels shifted by one
  auto eval_loss = [&] {
    NoGradGuard ng;
    pm.base().eval();
    double l = cross_entropy(pm.forward(x), y).item();
    pm.base().train();
    return l;
  };
  const double first = eval_loss();
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    backward(cross_entropy(pm.forward(x), y));
    opt.step();
  }
  return {first, eval_loss()};
}
}  // namespace

TEST_CASE("peft: VPT's prompts go to the optimizer's no-decay group, also when loaded from a delta file") {
  // The prompts are 2-D [num_tokens, D]: only the method's mark (no name rule in nn/) exempts them.
  auto prompts_without_decay = [](peft::PeftModel& pm) {
    nn::AdamW opt(pm.trainable_parameters(), 1e-3, 0.05);
    const std::vector<std::string>& no_decay = opt.param_groups()[1].params;
    int n = 0;
    for (auto& [name, t] : pm.trainable_parameters())
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ".prompt") == 0) {
        INFO(name);
        CHECK(t.dim() == 2);
        CHECK(std::find(no_decay.begin(), no_decay.end(), name) != no_decay.end());
        ++n;
      }
    return n;
  };
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", json::array({{{"method", "vpt_deep"}, {"num_tokens", 2}}})}}));
  CHECK(prompts_without_decay(pm) == 2);  // pos_drop's and blocks.1's
  pm.save(tmp("vpt_deep.safetensors"));
  nn::VisionTransformer m2(tiny());
  auto loaded = peft::PeftModel::from_file(m2, tmp("vpt_deep.safetensors"));
  CHECK(prompts_without_decay(*loaded) == 2);
}

TEST_CASE("peft: delta order at one site is defined (Pre reverse, Post insertion order) and removal is LIFO") {
  struct Affine : nn::Delta {
    double a, b;
    Position pos;
    Affine(const char* n, double a_, double b_, Position p) : a(a_), b(b_), pos(p) { name = n; }
    Position position() const override { return pos; }
    const char* method() const override { return "affine"; }
    Tensor apply(const Tensor& in, const Tensor& out) override {
      return add_scalar(mul_scalar(pos == Position::Pre ? in : out, a), b);
    }
  };
  nn::Identity id;
  auto P = nn::Delta::Position::Post, R = nn::Delta::Position::Pre;
  id.add_delta("", std::make_shared<Affine>("pre1", 2, 0, R));  // x * 2
  id.add_delta("", std::make_shared<Affine>("pre2", 1, 1, R));  // x + 1
  id.add_delta("", std::make_shared<Affine>("post1", 3, 0, P)); // y * 3
  id.add_delta("", std::make_shared<Affine>("post2", 1, 5, P)); // y + 5
  // Pre in reverse: (x + 1) * 2; Post in order: (. * 3) + 5.  x = 1 -> ((1+1)*2)*3 + 5 = 17
  CHECK(id(Tensor::scalar(1.0)).item() == 17.0);
  id.remove_delta("", "post2");
  CHECK(id(Tensor::scalar(1.0)).item() == 12.0);
  CHECK_THROWS_WITH_AS(id.add_delta("", std::make_shared<Affine>("pre1", 1, 0, R)), doctest::Contains("already has"), Error);
}

TEST_CASE("peft: sites, names and the trainable report") {
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(json{
      {"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.fc2"}}},
                  {{"name", "ap"}, {"method", "adapter_plus"}, {"dim", 3}}}},
      {"trainable", {"head.*"}}}));
  auto tp = pm.trainable_parameters();
  std::set<std::string> names;
  int64_t n = 0;
  for (auto& [k, t] : tp) {
    names.insert(k);
    n += t.numel();
  }
  CHECK(names.count("blocks.0.attn.qkv.lora.lora_A"));
  CHECK(names.count("blocks.1.mlp.fc2.lora.lora_B"));
  CHECK(names.count("blocks.1.ap.scale"));
  CHECK(names.count("head.weight"));
  CHECK_FALSE(names.count("blocks.0.attn.qkv.weight"));
  // lora: qkv (2*24 + 72*2) + fc2 (2*96 + 24*2) per block; adapter: 3*24+3+24*3+24+24 per block; head 24*3+3
  CHECK(n == 2 * (2 * 24 + 72 * 2 + 2 * 96 + 24 * 2) + 2 * (3 * 24 + 3 + 24 * 3 + 24 + 24) + 24 * 3 + 3);
  std::string rep = pm.report();
  CHECK(rep.find("lora") != std::string::npos);
  CHECK(rep.find("adapter") != std::string::npos);
  CHECK(rep.find("trainable params: " + std::to_string(n)) != std::string::npos);
}

TEST_CASE("peft: frozen tensors stay bit-identical, get no gradient and no optimizer state; each method learns") {
  // every registered method's examples (peft/method_registry.h), and compositions of a
  // second-wave method with a first-wave one on one model
  std::vector<json> methods;
  for (const peft::MethodDef* m : peft::all_methods())
    for (const json& e : m->examples) methods.push_back(json::array({e}));
  methods.push_back(json::array({{{"method", "dora"}, {"r", 2}}, {{"method", "adapter_plus"}, {"dim", 4}}}));
  methods.push_back(json::array({{{"method", "ssf"}}, {{"method", "lora"}, {"r", 2}, {"scale", {{"kind", "channel"}}}}}));
  methods.push_back(json::array({{{"method", "ia3"}}, {{"method", "vpt_deep"}, {"num_tokens", 2}}}));
  methods.push_back(json::array({{{"method", "vera"}, {"r", 8}, {"scale", {{"kind", "scalar"}}}}, {{"method", "houlsby"}, {"dim", 2}}}));
  methods.push_back(json::array({{{"method", "lokr"}, {"r", 2}}, {{"method", "loha"}, {"r", 2}}, {{"method", "parallel"}, {"dim", 2}}}));
  methods.push_back(json::array({{{"method", "fact_tk"}, {"dim", 4}}, {{"method", "lora"}, {"r", 2}}}));
  methods.push_back(json::array({{{"method", "hydra"}, {"dim", 2}}, {{"method", "adapter_plus"}, {"dim", 4}}}));
  methods.push_back(json::array({{{"method", "fact_tt"}, {"dim", 2}}, {{"method", "hydra"}, {"dim", 2}, {"scale", 0.5}}}));
  for (const json& ds : methods) {
    tape().clear();
    nn::VisionTransformer m(tiny());
    nn::load_state_dict(m, pretrained(), "pretrained");
    m.reset_head(5);  // a new task: a fresh head
    INFO(ds.dump());
    json deltas = json::array();
    for (json d : ds) {
      d["name"] = "d" + std::to_string(deltas.size());
      deltas.push_back(d);
    }
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", deltas}, {"trainable", {"head.*"}}}));
    auto before = snapshot(m);
    auto [first, last] = train(pm, 20, 1e-2);
    CHECK(last < 0.5 * first);
    auto after = snapshot(m);
    for (auto& [n, v] : before) {
      if (n.rfind("head.", 0) == 0) continue;
      CHECK_MESSAGE(after[n] == v, n);  // bit-identical
    }
    for (auto& [n, t] : m.named_parameters(false))
      if (n.rfind("head.", 0) != 0) CHECK_FALSE(t.grad().defined());
  }
}

TEST_CASE("peft: the tape skips frozen weight-gradient GEMMs and head-only training runs no backward through blocks") {
  tape().clear();
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(json{{"trainable", {"head.*"}}}));
  auto [x, y] = toy_batch(3, 1);
  Tensor loss = cross_entropy(pm.forward(x), y);
  // only the head's linear and the loss are recorded
  REQUIRE(tape().records().size() == 2);
  CHECK(std::string(tape().records()[0].op->name) == "linear");
  tape().clear();
  peft::PeftModel* unused = nullptr;
  (void)unused;
  nn::VisionTransformer m2(tiny());
  peft::PeftModel pm2(m2, peft::parse_peft_config(json{{"deltas", {{{"name", "l"}, {"method", "lora"}, {"r", 2}}}}}));
  cross_entropy(pm2.forward(x), y);
  for (const Record& r : tape().records())
    if (std::string(r.op->name) == "linear" && !r.needs[1]) {
      // a frozen Linear saves no input for a weight gradient
      for (const SavedTensor& s : r.saved) CHECK(s.what != "x");
    }
  tape().clear();
}

TEST_CASE("peft: masked-out elements are bit-identical after AdamW steps with weight decay") {
  // alone, and composed with second-wave deltas on the masked Linears (DoRA reads the masked
  // weight for its norm) and elsewhere (SSF after every LayerNorm and Linear)
  const std::vector<json> delta_sets = {
      json::array(),
      json::array({{{"name", "dora"}, {"method", "dora"}, {"r", 2}, {"target_modules", {"blocks.*.mlp.fc1"}}},
                   {{"name", "ssf"}, {"method", "ssf"}}}),
      // FacT's shared factors reach the masked fc1; Hydra on it reads its input and output
      json::array({{{"name", "fact"}, {"method", "fact_tk"}, {"dim", 4}},
                   {{"name", "hydra"}, {"method", "hydra"}, {"target_modules", {"blocks.*.mlp.fc1"}}}})};
  for (const json& deltas : delta_sets) {
    INFO(deltas.dump());
    tape().clear();
    nn::VisionTransformer m(tiny());
    peft::PeftModel pm(m, peft::parse_peft_config(json{
        {"deltas", deltas}, {"masks", {{{"tensor", "blocks.*.mlp.fc1.weight"}, {"density", 0.05}, {"seed", 3}}}},
        {"trainable", {"head.*"}}}));
    REQUIRE(pm.masks().size() == 2);
    auto before = snapshot(m);
    train(pm, 5, 1e-2);
    auto after = snapshot(m);
    int changed = 0, kept = 0;
    for (auto& [n, mask] : pm.masks()) {
      std::vector<double> mk = mask.to_vector();
      for (size_t i = 0; i < mk.size(); ++i) {
        if (mk[i] == 0) {
          kept += after[n][i] == before[n][i];
          CHECK(after[n][i] == before[n][i]);
        } else {
          changed += after[n][i] != before[n][i];
        }
      }
    }
    CHECK(changed > 0);
    CHECK(kept > 0);
    for (auto& [n, v] : before)  // the other base tensors are untouched
      if (n.rfind("head.", 0) != 0 && !pm.masks().count(n)) CHECK_MESSAGE(after[n] == v, n);
  }
}

TEST_CASE("peft: delta files round-trip exactly and are refused by another base") {
  tape().clear();
  // FacT's shared factors are saved once (with blocks.0.attn.qkv) and must reach every block on load
  auto make = [] { return json{{"deltas", {{{"name", "q"}, {"method", "lora"}, {"r", 2}, {"init", "random"}},
                                           {{"name", "a"}, {"method", "adapter_plus"}, {"dim", 3}},
                                           {{"name", "f"}, {"method", "fact_tk"}, {"dim", 3}},
                                           {{"name", "h"}, {"method", "hydra"}, {"dim", 2}}}},
                               {"trainable", {"head.*"}}}; };
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(make()), 7);
  train(pm, 3, 1e-2);
  m.eval();
  auto [x, y] = toy_batch(4, 9);
  Tensor want;
  {
    NoGradGuard ng;
    want = pm.forward(x);
  }
  const std::string f = tmp("d.safetensors");
  pm.save(f);
  nn::VisionTransformer m2(tiny());  // same base (same init seed), fresh deltas
  auto pm2 = peft::PeftModel::from_file(m2, f);
  m2.eval();
  NoGradGuard ng;
  CHECK(pm2->forward(x).to_vector() == want.to_vector());  // exactly
  nn::ViTConfig other = tiny();
  other.depth = 3;
  nn::VisionTransformer m3(other);
  CHECK_THROWS_WITH_AS(peft::PeftModel::from_file(m3, f), doctest::Contains("different base model"), Error);
}

namespace {
// merge() keeps the logits (float32 rounding apart); unmerge() restores every base tensor bit-exactly.
void check_merge_roundtrip(peft::PeftModel& pm) {
  pm.base().eval();
  auto [x, y] = toy_batch(4, 2);
  NoGradGuard ng;
  Tensor a = pm.forward(x);
  auto w0 = snapshot(pm.base());
  pm.merge();
  CHECK(snapshot(pm.base()) != w0);
  Tensor b = pm.forward(x);
  CHECK(test::rel_err(b, a) < 1e-5);
  pm.unmerge();
  CHECK(snapshot(pm.base()) == w0);
  CHECK(test::max_rel_err(pm.forward(x), a) < 1e-6);
}
}  // namespace

TEST_CASE("peft: merged LoRA equals unmerged; unmerge restores the weights bit-exactly") {
  tape().clear();
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {{{"name", "l"}, {"method", "lora"}, {"r", 2},
      {"init", "random"}, {"target_modules", {"blocks.*.attn.qkv", "blocks.*.mlp.*"}}, {"qkv_mode", "separate"},
      {"scale", {{"kind", "channel"}, {"init", 1.3}}}}}}}));
  check_merge_roundtrip(pm);
}

TEST_CASE("peft: every method that merges: merged equals unmerged; unmerge restores the weights bit-exactly") {
  // each registered example of a method that merges, and stacks of them at one site (merged in
  // attachment order, unmerged in reverse)
  std::vector<json> cases;
  for (const peft::MethodDef* md : peft::all_methods())
    if (md->merges)
      for (const json& e : md->examples) cases.push_back(json::array({e}));
  cases.push_back(json::array({{{"method", "lora"}, {"r", 2}}, {{"method", "ssf"}}}));
  cases.push_back(json::array({{{"method", "ia3"}}, {{"method", "lora"}, {"r", 2}}}));  // both at qkv
  cases.push_back(json::array({{{"method", "fact_tk"}, {"dim", 3}}, {{"method", "lora"}, {"r", 2}}}));  // both at qkv
  // Hydra's sequential branch reads the output SSF scales (and SSF's merge changes the W it reads)
  cases.push_back(json::array({{{"method", "ssf"}}, {{"method", "hydra"}, {"dim", 2}}}));
  cases.push_back(json::array({{{"method", "hydra"}, {"dim", 2}}, {{"method", "ssf"}}}));
  for (const json& ds : cases) {
    INFO(ds.dump());
    tape().clear();
    nn::VisionTransformer m(tiny());
    nn::load_state_dict(m, pretrained(), "pretrained");
    json deltas = json::array();
    for (json d : ds) {
      d["name"] = "d" + std::to_string(deltas.size());
      deltas.push_back(d);
    }
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", deltas}}));
    {
      NoGradGuard ng;  // non-zero deltas whatever the init (LoRA's B starts at zero)
      Generator g(7);
      for (auto& [name, t] : pm.trainable_parameters()) {
        Tensor noise = Tensor::empty(t.shape());
        g.normal_(noise, 0.0, 0.1);
        Tensor(t).copy_(add(t, noise));
      }
    }
    check_merge_roundtrip(pm);
  }
  CHECK(cases.size() >= 6);
}

TEST_CASE("peft: merge refuses an input-scaling ia3 sharing a Linear, and a dora after another delta") {
  auto build = [](nn::VisionTransformer& m, json deltas) {
    auto pm = std::make_unique<peft::PeftModel>(m, peft::parse_peft_config(json{{"deltas", deltas}}));
    NoGradGuard ng;
    Generator g(3);
    for (auto& [name, t] : pm->trainable_parameters()) g.normal_(t, 0.5, 0.3);
    return pm;
  };
  auto [x, y] = toy_batch(4, 2);
  const json ia3 = {{"name", "ia3"}, {"method", "ia3"}};  // scales fc2's input (feedforward_modules)
  const json lora_fc2 = {{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"target_modules", {"blocks.*.mlp.fc2"}}};
  const json lora_qkv = {{"name", "lora"}, {"method", "lora"}, {"r", 2}};
  const json dora_qkv = {{"name", "dora"}, {"method", "dora"}, {"r", 2}};
  struct Case {
    json deltas;
    const char* why;
  };
  for (const Case& c : {Case{{ia3, lora_fc2}, "merge: at 'blocks.0.mlp.fc2': ia3 'ia3' scales the Linear's input"},
                        Case{{lora_qkv, dora_qkv}, "merge: at 'blocks.0.attn.qkv': dora 'dora' applies after lora 'lora'"}}) {
    INFO(c.deltas.dump());
    tape().clear();
    nn::VisionTransformer m(tiny());
    m.eval();
    auto pm = build(m, c.deltas);
    const auto w0 = snapshot(m);
    CHECK_THROWS_WITH_AS(pm->merge(), doctest::Contains(c.why), Error);
    CHECK(snapshot(m) == w0);  // refused before anything merged
    // the refusal is needed: merging each delta anyway changes the logits
    NoGradGuard ng;
    const Tensor want = pm->forward(x);
    for (const std::string& n : pm->delta_names())
      for (auto& [site, d] : pm->attachments(n)) static_cast<peft::MethodDelta&>(*d).merge();
    CHECK(test::rel_err(pm->forward(x), want) > 1e-3);
  }
  // the exact orders merge: the input-scaling ia3 after the other delta on its Linear, dora
  // before (also with an input-scaling ia3 on its Linear)
  const json ia3_qkv = {{"name", "ia3"}, {"method", "ia3"}, {"feedforward_modules", {"blocks.*.attn.qkv"}}};
  for (const json& deltas : {json{lora_fc2, ia3}, json{dora_qkv, lora_qkv}, json{dora_qkv, ia3_qkv}}) {
    INFO(deltas.dump());
    tape().clear();
    nn::VisionTransformer m(tiny());
    auto pm = build(m, deltas);
    check_merge_roundtrip(*pm);
  }
}

TEST_CASE("peft: the report counts the second-wave methods' parameters") {
  // tiny(): D 24, 2 blocks, qkv 72 rows, MLP hidden 96
  const std::vector<std::pair<json, int64_t>> cases = {
      {{{"method", "dora"}, {"r", 2}}, 2 * (2 * 24 + 72 * 2 + 72)},             // A, B, magnitude per qkv
      {{{"method", "ia3"}}, 2 * (72 + 96)},                                       // qkv output, fc2 input
      {{{"method", "ssf"}}, 2 * 24 + 2 * 2 * (24 + 72 + 24 + 24 + 96 + 24) + 2 * 24},  // patch_embed, blocks, norm
      {{{"method", "vera"}, {"r", 4}}, 2 * (72 + 4)},  // lambda_b, lambda_d per qkv; the frozen A, B do not count
      {{{"method", "loha"}, {"r", 2}}, 2 * 2 * (72 * 2 + 2 * 24)},  // two [72, 2] [2, 24] pairs per qkv
      {{{"method", "lokr"}, {"r", 2}}, 2 * (8 * 4 + 9 * 2 + 2 * 6)},  // qkv 72 x 24 = kron([8, 4], [9, 6] of rank 2)
      // FacT dim 4: U [4, 24] and V [24, 4] once; per block q, k, v, o cores [4, 4], fc1 [16, 4], fc2 [4, 16]
      {{{"method", "fact_tt"}, {"dim", 4}}, 2 * 24 * 4 + 2 * (4 * 16 + 2 * 64)},
      // ... or C [4, 4, 4] and P [4, 12 per block] once
      {{{"method", "fact_tk"}, {"dim", 4}}, 2 * 24 * 4 + 64 + 4 * 12 * 2},
      // Hydra dim 2 on proj (24 -> 24) and fc2 (96 -> 24): per branch down [2, in] + 2, up [24, 2] + 24
      {{{"method", "hydra"}, {"dim", 2}}, 2 * ((2 * 24 + 2 + 48 + 24) * 3 + (2 * 96 + 2 + 48 + 24))},
  };
  for (const auto& [d, want] : cases) {
    INFO(d.dump());
    nn::VisionTransformer m(tiny());
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {d}}}));
    int64_t n = 0;
    for (auto& [k, t] : pm.trainable_parameters()) n += t.numel();
    CHECK(n == want);
    const std::string rep = pm.report();
    CHECK(rep.find(d["method"].get<std::string>()) != std::string::npos);
    CHECK(rep.find("trainable params: " + std::to_string(want) + " ") != std::string::npos);
  }
}

TEST_CASE("peft: Hugging Face peft export/import round-trips logits") {
  tape().clear();
  nn::VisionTransformer m(tiny());
  peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {{{"name", "l"}, {"method", "lora"}, {"r", 2},
      {"init", "random"}, {"qkv_mode", "separate"}, {"qkv_parts", {"q", "v"}}, {"lora_alpha", 4}}}}}));
  m.eval();
  auto [x, y] = toy_batch(3, 4);
  Tensor want;
  {
    NoGradGuard ng;
    want = pm.forward(x);
  }
  const std::string dir = tmp("hf");
  pm.export_hf(dir);
  SafeTensors st = load_safetensors(dir + "/adapter_model.safetensors");
  CHECK(st.tensors.count("base_model.model.blocks.0.attn.qkv.lora_A.weight"));
  CHECK(st.tensors.at("base_model.model.blocks.1.attn.qkv.lora_B.weight").shape() == Shape{72, 4});
  nn::VisionTransformer m2(tiny());
  m2.eval();
  peft::import_hf(dir, tmp("imported.safetensors"), m2);
  auto pm2 = peft::PeftModel::from_file(m2, tmp("imported.safetensors"));
  NoGradGuard ng;
  CHECK(test::rel_err(pm2->forward(x), want) < 1e-6);
}

TEST_CASE("peft: every method with a Hugging Face export writes peft's tensors and peft_type") {
  // scripts/check_hf_peft_methods.sh loads these into timm + peft and compares logits
  int n = 0;
  for (const peft::MethodDef* md : peft::all_methods()) {
    if (!md->hf_export) continue;
    json d = md->examples.at(0);
    d["name"] = "d";
    INFO(d.dump());
    nn::VisionTransformer m(tiny());
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {d}}}));
    const std::string dir = tmp("hf_" + md->name);
    pm.export_hf(dir);
    const json c = read_json_file(dir + "/adapter_config.json", "adapter config");
    CHECK(c.at("peft_type") == md->hf_peft_type);
    CHECK(c.at("target_modules").size() == pm.attachments("d").size());
    // every trainable delta tensor has its counterpart under base_model.model.<site>.
    SafeTensors st = load_safetensors(dir + "/adapter_model.safetensors");
    for (auto& [site, delta] : pm.attachments("d")) {
      int found = 0;
      for (auto& [k, t] : st.tensors) found += k.rfind("base_model.model." + site + ".", 0) == 0;
      CHECK_MESSAGE(found > 0, site);
    }
    ++n;
  }
  CHECK(n >= 6);  // lora, dora, ia3, vera, loha, lokr
}

TEST_CASE("peft: config errors name the key") {
  auto bad = [](json j, const char* what) {
    CHECK_THROWS_WITH_AS(peft::parse_peft_config(j), doctest::Contains(what), Error);
  };
  bad(json{{"deltaz", json::array()}}, "unknown key 'deltaz'");
  bad(json{{"deltas", {{{"method", "lorax"}}}}}, "unknown method 'lorax'");
  bad(json{{"deltas", {{{"method", "lora"}, {"rank", 4}}}}}, "unknown key 'rank'");
  bad(json{{"deltas", {{{"method", "adapter_plus"}, {"scaling", "wide"}}}}}, "'scaling' must be");
  bad(json{{"deltas", {{{"method", "lora"}, {"r", "8"}}}}}, "'r' has the wrong type");
  // FacT's and Hydra's 'scale' is their number s; the conditioning-scale object is refused
  bad(json{{"deltas", {{{"method", "fact_tk"}, {"scale", {{"kind", "scalar"}}}}}}}, "fact_tk's 'scale' must be a number");
  bad(json{{"deltas", {{{"method", "hydra"}, {"scale", {{"kind", "channel"}}}}}}}, "hydra's 'scale' must be a number");
  bad(json{{"deltas", {{{"method", "hydra"}, {"scale", "big"}}}}}, "hydra's 'scale' must be a number");
  bad(json{{"deltas", {{{"method", "lora"}, {"scale", 2}}}}}, "'scale' must be an object");  // no numeric scale of its own
  bad(json{{"deltas", {{{"method", "fact_tt"}, {"dim", 0}}}}}, "dim must be >= 1");
  bad(json{{"deltas", {{{"method", "hydra"}, {"dropout", 1.0}}}}}, "dropout must be in [0, 1)");
  bad(json{{"deltas", {{{"method", "lora"}}, {{"method", "lora"}}}}}, "duplicate delta name 'lora'");
  bad(json{{"masks", {{{"tensor", "x"}}}}}, "exactly one of 'density'");
  nn::VisionTransformer m(tiny());
  CHECK_THROWS_WITH_AS(peft::PeftModel(m, peft::parse_peft_config(json{{"trainable", {"heads.*"}}})),
                       doctest::Contains("matches no base tensor"), Error);
}

TEST_CASE("peft: enable/disable and remove by name") {
  tape().clear();
  nn::VisionTransformer m(tiny());
  m.eval();
  auto [x, y] = toy_batch(2, 5);
  Tensor base_out;
  {
    NoGradGuard ng;
    base_out = m(x);
  }
  peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {{{"name", "a"}, {"method", "houlsby"}, {"init", "bert"}}}}}));
  NoGradGuard ng;
  CHECK(pm.forward(x).to_vector() != base_out.to_vector());
  pm.set_enabled("a", false);
  CHECK(pm.forward(x).to_vector() == base_out.to_vector());
  pm.set_enabled("a", true);
  pm.remove("a");
  CHECK(m.all_deltas().empty());
  CHECK(pm.forward(x).to_vector() == base_out.to_vector());
}

TEST_CASE("peft: every method adapts a pretrained ViT on real data (Fashion-MNIST), loss falls") {
  if (!std::filesystem::exists(std::string(data::default_fashion_mnist_dir()) + "/t10k-images-idx3-ubyte.gz")) {
    test::skip("dataset-fashion-mnist is not installed");
    return;
  }
  tape().clear();
  const nn::ViTConfig c = nn::vit_config_from_json(json{{"img_size", 28}, {"patch_size", 7}, {"in_chans", 1},
      {"embed_dim", 32}, {"depth", 2}, {"num_heads", 2}, {"num_classes", 5}, {"mean", {0.286}}, {"std", {0.353}}});
  const data::ImageSet test_split = data::load_fashion_mnist(data::default_fashion_mnist_dir(), false);
  auto normalised = [&](const data::ImageSet& s) {
    NoGradGuard ng;
    return mul_scalar(add_scalar(s.images, -0.286), 1 / 0.353);
  };
  // pretrain on classes 0-4
  const data::ImageSet up = data::select_classes(test_split, {0, 1, 2, 3, 4}, 500, 1);
  nn::VisionTransformer base(c);
  base.set_trainable("*", true);
  {
    nn::AdamW opt(base.named_parameters(), 3e-3, 0.0);
    Tensor x = normalised(up);
    for (int s = 0; s < 40; ++s) {
      opt.zero_grad();
      backward(cross_entropy(base(x), up.labels));
      opt.step();
    }
  }
  std::map<std::string, Tensor> pre;
  for (auto& [n, t] : base.named_parameters()) pre[n] = t.detach().clone();
  // adapt to classes 5-9 with each method (fresh head)
  const data::ImageSet down = data::select_classes(test_split, {5, 6, 7, 8, 9}, 200, 2);
  Tensor x = normalised(down);
  const std::vector<json> methods = {
      {{"method", "lora"}, {"r", 4}},
      {{"method", "lora"}, {"r", 2}, {"qkv_mode", "separate"}},
      {{"method", "houlsby"}, {"dim", 4}},
      {{"method", "pfeiffer"}, {"dim", 4}},
      {{"method", "parallel"}, {"dim", 4}},
      {{"method", "adapter_plus"}, {"dim", 4}},
      // VPT is trained on real data by the demo (VPT-deep) and on the toy task above; with
      // 25 full-batch steps here its loss does not move enough for this bound.
  };
  for (const json& d : methods) {
    INFO(d.dump());
    nn::VisionTransformer m(c);
    nn::load_state_dict(m, pre, "pretrained");
    m.reset_head(4);
    json dd = d;
    dd["name"] = "d";
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {dd}}, {"trainable", {"head.*"}}}));
    nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.05);
    auto eval_loss = [&] {
      NoGradGuard ng;
      m.eval();
      const double l = cross_entropy(pm.forward(x), down.labels).item();
      m.train();
      return l;
    };
    const double first = eval_loss();
    for (int s = 0; s < 25; ++s) {
      opt.zero_grad();
      backward(cross_entropy(pm.forward(x), down.labels));
      opt.step();
    }
    const double last = eval_loss();
    CHECK(last < 0.6 * first);
  }
}

TEST_CASE("peft: LayerNorms keep one buffer with the deltas that read the same tensor") {
  // LoRA on qkv reads norm1's output: norm1 saves y, the buffer LoRA's A saves. A parallel
  // adapter reads norm2's input (the mlp_branch point's input): norm2 saves x, the buffer the
  // adapter's down projection saves. Depth 2, only deltas train: block 0's norm1 (and, for the
  // parallel adapter, block 0's norm2) see no gradient and are not recorded.
  struct Want {
    std::string method;
    int shared, own;  // LayerNorm activations another record also saves / that only it saves
  };
  for (const Want& w : {Want{"lora", 1, 3}, Want{"parallel", 1, 2}}) {
    INFO(w.method);
    nn::VisionTransformer m(tiny());
    json d = {{"name", "d"}, {"method", w.method}};
    if (w.method == "parallel") d["dim"] = 4;
    peft::PeftModel pm(m, peft::parse_peft_config(json{{"deltas", {d}}}));
    m.skip_unread_rows = false;  // every block every row: the activations counted are [4, 17, 24]
    tape().clear();
    auto [x, y] = toy_batch(4, 1);
    Tensor loss = cross_entropy(pm.forward(x), y);
    std::vector<std::pair<const void*, size_t>> ln;  // the activation each LayerNorm saved
    std::set<std::pair<const void*, size_t>> other;
    for (const Record& r : tape().records())
      for (const SavedTensor& s : r.saved)
        if (s.t.numel() == 4 * 17 * 24) {  // activations [4, 17, 24] only (not w, b, rstd)
          if (std::string(r.op->name) == "layer_norm") ln.push_back({s.t.raw(), s.t.nbytes()});
          else other.insert({s.t.raw(), s.t.nbytes()});
        }
    int shared = 0;
    for (const auto& k : ln) shared += int(other.count(k));
    INFO(tape().dump());
    CHECK(shared == w.shared);
    CHECK(int(ln.size()) - shared == w.own);
    tape().backward(loss);
  }
}

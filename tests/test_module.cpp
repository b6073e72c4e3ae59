// nn/ mechanics without a golden file: the glob matcher, hierarchical names, train/eval
// vs trainability, delta sites (order, names, gradients), drop-path and every ViT
// submodule being a site.
#include <algorithm>
#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/random.h"
#include "nn/glob.h"
#include "nn/vit.h"
#include "tests/test_util.h"

using namespace dg;
using namespace dg::nn;

namespace {
// y = x * a + b at a module's input (Pre) or output (Post); optionally a trainable scale.
struct Affine : Delta {
  double a, b;
  Position pos;
  Tensor s;  // [1], trainable when defined: y = out * s
  Affine(const char* n, double a_, double b_, Position p, bool with_param = false) : a(a_), b(b_), pos(p) {
    name = n;
    if (with_param) s = Tensor::full({1}, 2.0).set_requires_grad(true);
  }
  Position position() const override { return pos; }
  const char* method() const override { return "affine"; }
  Tensor apply(const Tensor& in, const Tensor& out) override {
    Tensor y = add_scalar(mul_scalar(pos == Position::Pre ? in : out, a), b);
    return s.defined() ? mul(y, s) : y;
  }
  std::vector<std::pair<std::string, Tensor>> named_parameters() override {
    if (s.defined()) return {{"scale", s}};
    return {};
  }
  void train(bool m) override { training = m; }
};

// Records every call of the sites it is attached to: Post, output unchanged.
struct Counter : Delta {
  std::map<std::string, int>* calls;
  Counter(std::map<std::string, int>* c, const std::string& site) : calls(c) { name = site; }
  Position position() const override { return Position::Post; }
  const char* method() const override { return "counter"; }
  Tensor apply(const Tensor& in, const Tensor& out) override {
    ++(*calls)[name];
    return out;
  }
};

ViTConfig small_cfg() {
  return vit_config_from_json(nlohmann::json{{"img_size", 16}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 24},
                                             {"depth", 2}, {"num_heads", 3}, {"mlp_ratio", 2.0}, {"num_classes", 5},
                                             {"mean", nlohmann::json::array({0.5})}, {"std", nlohmann::json::array({0.5})}});
}
}  // namespace

TEST_CASE("module: glob matcher over dotted names") {
  CHECK(glob_match("*", "blocks.0.attn.qkv.weight"));
  CHECK(glob_match("blocks.*.attn.qkv.*", "blocks.0.attn.qkv.weight"));
  CHECK(glob_match("blocks.*.attn.qkv.*", "blocks.11.attn.qkv.bias"));
  CHECK_FALSE(glob_match("blocks.*.attn.qkv.*", "blocks.0.attn.proj.weight"));
  CHECK_FALSE(glob_match("blocks.*.attn.qkv.*", "blocks.0.attn.qkv"));  // the trailing '.' is literal
  CHECK(glob_match("*.bias", "blocks.3.mlp.fc2.bias"));
  CHECK_FALSE(glob_match("*.bias", "blocks.3.mlp.fc2.bias_x"));
  CHECK_FALSE(glob_match("*.bias", "bias"));
  CHECK(glob_match("head.*", "head.weight"));
  CHECK_FALSE(glob_match("head.*", "head_drop.weight"));
  CHECK(glob_match("pos_embed", "pos_embed"));
  CHECK_FALSE(glob_match("pos_embed", "pos_embed2"));
  CHECK(glob_match("blocks.?.norm1.*", "blocks.7.norm1.bias"));
  CHECK_FALSE(glob_match("blocks.?.norm1.*", "blocks.10.norm1.bias"));
  CHECK(glob_match("a*b*c", "aXbYbZc"));  // needs backtracking to the last '*'
  CHECK_FALSE(glob_match("a*b*c", "aXbYbZ"));
  CHECK(glob_match("**.weight", "x.weight"));
  CHECK(glob_match("", ""));
  CHECK_FALSE(glob_match("", "x"));
  CHECK(glob_match_any({"head.*", "*.bias"}, "norm.bias"));
  CHECK_FALSE(glob_match_any({"head.*", "*.bias"}, "norm.weight"));
}

TEST_CASE("module: hierarchical names, modules and buffers in registration order") {
  struct Toy : Module {
    std::shared_ptr<Linear> lin;
    std::shared_ptr<LayerNorm> ln;
    Toy() {
      register_parameter("w", Tensor::ones({2}));
      register_buffer("counts", Tensor::zeros({3}));
      lin = register_module("sub.lin", std::make_shared<Linear>(4, 3));
      ln = register_module("ln", std::make_shared<LayerNorm>(3));
    }
    Tensor forward(const Tensor& x) override { return (*ln)((*lin)(x)); }
  } toy;
  std::vector<std::string> names;
  for (auto& [n, t] : toy.named_parameters()) names.push_back(n);
  CHECK(names == std::vector<std::string>{"w", "sub.lin.weight", "sub.lin.bias", "ln.weight", "ln.bias"});
  auto bufs = toy.named_buffers();
  REQUIRE(bufs.size() == 1);
  CHECK(bufs[0].first == "counts");
  std::vector<std::string> mods;
  for (auto& [n, m] : toy.named_modules()) mods.push_back(n);
  CHECK(mods == std::vector<std::string>{"", "sub.lin", "ln"});
  CHECK(toy.find_module("sub.lin") == toy.lin.get());
  CHECK(toy.find_module("nope") == nullptr);
  CHECK(toy.named_parameters()[1].second.shape() == Shape{3, 4});  // weight [out, in]
}

TEST_CASE("module: train/eval never touch requires_grad; set_trainable and freeze_all do") {
  VisionTransformer m(small_cfg());
  const auto n_params = m.named_parameters().size();
  CHECK(n_params == 4 + 2 * 12 + 4);
  for (auto& [n, t] : m.named_parameters()) CHECK_FALSE(t.requires_grad());  // loaded/created frozen
  CHECK(m.set_trainable("*.bias", true) == 1 + 2 * 6 + 2);  // patch, per block 6, norm, head
  CHECK(m.set_trainable("blocks.1.*", true) == 12);
  auto snapshot = [&] {
    std::vector<bool> v;
    for (auto& [n, t] : m.named_parameters()) v.push_back(t.requires_grad());
    return v;
  };
  const auto before = snapshot();
  m.eval();
  CHECK_FALSE(m.training());
  CHECK_FALSE(m.blocks[1]->mlp->fc1->training());  // eval reaches every submodule
  CHECK(snapshot() == before);
  m.train();
  CHECK(m.blocks[0]->attn->attn_drop->training());
  CHECK(snapshot() == before);
  CHECK(m.set_trainable("nothing.matches", true) == 0);
  m.freeze_all();
  for (auto& [n, t] : m.named_parameters()) CHECK_FALSE(t.requires_grad());
}

TEST_CASE("module: Pre deltas apply in reverse insertion order, Post deltas in insertion order") {
  Identity id;
  const auto R = Delta::Position::Pre, P = Delta::Position::Post;
  auto pre_mul = std::make_shared<Affine>("pre_mul", 2, 0, R);  // x * 2
  auto pre_add = std::make_shared<Affine>("pre_add", 1, 1, R);  // x + 1
  id.add_delta(pre_mul);
  id.add_delta(pre_add);
  // reverse: (x + 1) * 2 = 8 at x = 3 (insertion order would give 3 * 2 + 1 = 7)
  CHECK(id(Tensor::scalar(3.0)).item() == 8.0);
  id.add_delta(std::make_shared<Affine>("post_mul", 3, 0, P));  // y * 3
  id.add_delta(std::make_shared<Affine>("post_add", 1, 5, P));  // y + 5
  // insertion: 8 * 3 + 5 = 29 (reverse would give (8 + 5) * 3 = 39)
  CHECK(id(Tensor::scalar(3.0)).item() == 29.0);
  REQUIRE(id.deltas().size() == 4);
  CHECK(id.deltas()[0]->name == "pre_mul");
  CHECK(id.find_delta("post_add") != nullptr);
  CHECK(id.find_delta("absent") == nullptr);
  // disabled deltas are skipped; the base result is unchanged when all are off
  id.find_delta("pre_add")->enabled = false;
  CHECK(id(Tensor::scalar(3.0)).item() == 3.0 * 2 * 3 + 5);
  for (auto& d : id.deltas()) d->enabled = false;
  CHECK(id(Tensor::scalar(3.0)).item() == 3.0);
  CHECK(id.remove_delta("pre_mul") == pre_mul);
  CHECK(id.deltas().size() == 3);
  CHECK_THROWS_WITH_AS(id.remove_delta("pre_mul"), doctest::Contains("no delta named 'pre_mul'"), Error);
  CHECK_THROWS_WITH_AS(id.add_delta(std::make_shared<Affine>("post_add", 1, 0, P)), doctest::Contains("already has"),
                       Error);
}

TEST_CASE("module: a Post delta sees the module's (Pre-transformed) input and output") {
  struct InPlusOut : Delta {
    InPlusOut() { name = "in_plus_out"; }
    Position position() const override { return Position::Post; }
    const char* method() const override { return "test"; }
    Tensor apply(const Tensor& in, const Tensor& out) override { return add(in, out); }
  };
  Linear lin(1, 1);
  Tensor(lin.weight).fill_(10.0);
  Tensor(lin.bias).fill_(0.0);
  lin.add_delta(std::make_shared<Affine>("pre", 1, 1, Delta::Position::Pre));  // x + 1
  lin.add_delta(std::make_shared<InPlusOut>());
  // in = 2 + 1 = 3, out = 30, post = 33
  CHECK(lin(Tensor::full({1, 1}, 2.0)).item() == 33.0);
}

TEST_CASE("module: delta parameters are named <site>.<delta>.<tensor>, follow train(), get gradients") {
  VisionTransformer m(small_cfg());
  auto d = std::make_shared<Affine>("aff", 1, 0, Delta::Position::Post, true);
  m.blocks[1]->attn->qkv->add_delta(d);
  bool found = false;
  for (auto& [n, t] : m.named_parameters()) found |= n == "blocks.1.attn.qkv.aff.scale";
  CHECK(found);
  CHECK(m.named_parameters().size() == m.named_parameters(false).size() + 1);
  CHECK(state_dict(m).count("blocks.1.attn.qkv.aff.scale") == 0);  // base weights only
  m.eval();
  CHECK_FALSE(d->training);
  m.train();
  CHECK(d->training);
  // the scale multiplies qkv's output: the model output depends on it and it gets a gradient
  m.eval();
  tape().clear();
  Tensor x = Tensor::empty({2, 1, 16, 16});
  Generator(3).normal_(x);
  Tensor loss = sum(m(x));
  backward(loss);
  REQUIRE(d->s.grad().defined());
  CHECK(std::abs(d->s.grad().item()) > 0);
  // and a finite difference agrees with it
  NoGradGuard ng;
  const double h = 1e-2, s0 = d->s.item();
  d->s.fill_(s0 + h);
  const double up = sum(m(x)).item();
  d->s.fill_(s0 - h);
  const double dn = sum(m(x)).item();
  d->s.fill_(s0);
  CHECK((up - dn) / (2 * h) == doctest::Approx(d->s.grad().item()).epsilon(2e-2));
  tape().clear();
}

TEST_CASE("module: every ViT submodule is a site and runs through operator()") {
  VisionTransformer m(small_cfg());
  m.eval();
  std::map<std::string, int> calls;
  std::vector<std::string> sites;
  for (auto& [n, mod] : m.named_modules())
    if (!n.empty() && n != "patch_embed.proj") {  // proj only holds the conv weight: patch_embed is the site
      sites.push_back(n);
      m.add_delta(n, std::make_shared<Counter>(&calls, n));
    }
  m.add_delta("", std::make_shared<Counter>(&calls, "<root>"));
  CHECK(std::find(sites.begin(), sites.end(), "pos_drop") != sites.end());
  CHECK(std::find(sites.begin(), sites.end(), "blocks.1.mlp.fc1") != sites.end());
  Tensor x = Tensor::zeros({2, 1, 16, 16});
  NoGradGuard ng;
  m(x);
  CHECK(calls["<root>"] == 1);
  for (const auto& s : sites) {
    INFO(s);
    CHECK(calls[s] == 1);
  }
  CHECK(calls.size() == sites.size() + 1);
}

TEST_CASE("module: drop-path drops whole samples, scales kept ones by 1/keep, is off in eval") {
  const int64_t B = 400;
  Tensor x = Tensor::ones({B, 3, 2});
  default_generator().manual_seed(11);
  std::vector<double> y = drop_path(x, 0.25, true).to_vector();
  int64_t kept = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double v = y[size_t(b * 6)];
    CHECK((v == 0.0 || std::abs(v - 1.0 / 0.75) < 1e-6));
    for (int64_t i = 1; i < 6; ++i) CHECK(y[size_t(b * 6 + i)] == v);  // one decision per sample
    kept += v != 0.0;
  }
  // Binomial(400, 0.75): mean 300, sd 8.7
  CHECK(kept > 300 - 45);
  CHECK(kept < 300 + 45);
  default_generator().manual_seed(11);
  CHECK(drop_path(x, 0.25, true).to_vector() == y);  // reproducible from the seed
  CHECK(drop_path(x, 0.25, false).to_vector() == x.to_vector());
  DropPath dp(0.5);
  dp.eval();
  CHECK(dp(x).to_vector() == x.to_vector());
}

TEST_CASE("module: ViT init is timm's and reproducible from the seed") {
  VisionTransformer a(small_cfg()), b(small_cfg());
  a.init_weights(7);
  b.init_weights(7);
  auto sa = state_dict(a), sb = state_dict(b);
  for (auto& [n, t] : sa) CHECK(t.to_vector() == sb[n].to_vector());
  auto stats = [](const Tensor& t) {
    double s = 0, s2 = 0;
    for (double v : t.to_vector()) s += v, s2 += v * v;
    const double n = double(t.numel());
    return std::pair{s / n, std::sqrt(s2 / n - (s / n) * (s / n))};
  };
  CHECK(stats(sa["blocks.0.attn.qkv.weight"]).second == doctest::Approx(0.02).epsilon(0.1));
  CHECK(stats(sa["pos_embed"]).second == doctest::Approx(0.02).epsilon(0.15));
  CHECK(stats(sa["cls_token"]).second < 1e-5);
  for (double v : sa["blocks.0.mlp.fc1.bias"].to_vector()) CHECK(v == 0.0);
  for (double v : sa["norm.weight"].to_vector()) CHECK(v == 1.0);
  b.init_weights(8);
  CHECK(state_dict(b)["head.weight"].to_vector() != sa["head.weight"].to_vector());
}

TEST_CASE("module: a ViT with dropout and drop-path trains stochastically and evaluates deterministically") {
  ViTConfig c = small_cfg();
  c.drop_path_rate = 0.5;
  c.drop_rate = 0.2;
  VisionTransformer noisy(c), plain(small_cfg());
  auto sd = state_dict(plain);
  load_state_dict(noisy, sd, "plain");
  CHECK(noisy.blocks[1]->drop_path1->p == doctest::Approx(0.5));  // linear decay over depth: 0, .5
  CHECK(noisy.blocks[0]->drop_path1->p == 0.0);
  Tensor x = Tensor::empty({4, 1, 16, 16});
  Generator(5).normal_(x);
  NoGradGuard ng;
  noisy.eval();
  plain.eval();
  CHECK(noisy(x).to_vector() == plain(x).to_vector());  // eval: dropout and drop-path are identities
  noisy.train();
  default_generator().manual_seed(1);
  auto t1 = noisy(x).to_vector();
  auto t2 = noisy(x).to_vector();
  CHECK(t1 != t2);  // fresh masks per call
  default_generator().manual_seed(1);
  CHECK(noisy(x).to_vector() == t1);  // same seed, same masks
}

TEST_CASE("module: MLP recomputation saves fc1's input instead of its output and gives the same gradients") {
  VisionTransformer m(small_cfg());
  m.init_weights(3);
  m.set_trainable("blocks.*.attn.qkv.*", true);  // gradients must flow through every MLP
  m.set_trainable("head.*", true);
  Tensor x = Tensor::empty({4, 1, 16, 16});
  Generator(5).normal_(x);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3}, {4});
  std::vector<std::vector<double>> grads[2];
  size_t saved[2];
  double loss[2];
  for (int rc = 0; rc < 2; ++rc) {
    m.set_recompute_mlp(rc == 1);
    for (auto& [n, t] : m.named_parameters()) t.zero_grad();
    Tensor l = cross_entropy(m(x), y);
    saved[rc] = tape().saved_bytes();
    loss[rc] = l.item();
    tape().backward(l);
    for (auto& [n, t] : m.named_parameters())
      if (t.requires_grad()) grads[rc].push_back(t.grad().to_vector());
  }
  CHECK(loss[0] == loss[1]);
  REQUIRE(grads[0].size() == grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) CHECK(grads[0][i] == grads[1][i]);  // the same GEMMs: bit-identical
  // per block: fc1's output [rows, 48] is no longer kept, its input [rows, 24] is, and the
  // bias [48] (a parameter: counted by saved_bytes, no new memory); block 0 has 4 x 17 rows, the
  // last block (depth 2) the class tokens' 4 only ('token' pooling reads nothing else)
  auto block = [](size_t rows) { return (rows * 48 - rows * 24 - 48) * 4; };
  CHECK(saved[0] - saved[1] == block(4 * 17) + block(4));
}

// LT-SFT (train/lt_sft.h) and the trainer's L1 term (trainer.h l1_reg): the selection and the
// penalty against a plain-PyTorch transcription of the authors' code
// (scripts/make_lt_sft_golden.py), the penalty's subgradient, and the two phases on a small run:
// phase 2 changes nothing outside the kept positions (bit-identical to the base, with weight
// decay and an L1 term on), LayerNorms stay frozen with freeze_layer_norm, the delta is sparse.
#include <cmath>
#include <filesystem>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/safetensors.h"
#include "peft/sensitivity.h"
#include "peft/sparse_delta.h"
#include "tests/golden_vit.h"
#include "tests/test_util.h"
#include "tests/train_util.h"
#include "train/lt_sft.h"
#include "train/sweep.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {
const SafeTensors& lt_golden() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/lt_sft_golden.safetensors");
  return st;
}
const std::vector<std::string> kMaskable = {"blocks.0.attn.qkv.bias", "blocks.1.attn.proj.weight",
                                            "blocks.2.norm1.weight"};
const std::vector<std::string> kHead = {"head.weight", "head.bias"};
}  // namespace

TEST_CASE("LT-SFT L1 term: its gradient is coefficient / num_params * sign(theta - theta0), 0 where they are equal") {
  tape().clear();
  Tensor p0 = Tensor::from_vector(std::vector<double>{0.5, -1.0, 2.0, 0.25, 3.0, -0.75}, {2, 3});
  Tensor p = Tensor::from_vector(std::vector<double>{0.75, -1.0, 1.0, 0.25, 3.5, -1.0}, {2, 3}).set_requires_grad(true);
  Tensor q0 = Tensor::from_vector(std::vector<double>{1.0, 2.0}, {2});
  Tensor q = Tensor::from_vector(std::vector<double>{0.0, 2.0}, {2}).set_requires_grad(true);
  const nn::NamedTensors params = {{"p", p}, {"q", q}};
  const double c = 0.3;
  const int64_t n = 40;
  SUBCASE("every tensor") {
    Tensor loss = train::l1_reg_loss(params, {{"p", p0}, {"q", q0}}, c, n);
    CHECK(loss.item() == doctest::Approx(c * (0.25 + 0 + 1 + 0 + 0.5 + 0.25 + 1 + 0) / n).epsilon(1e-14));
    backward(loss);
    const std::vector<double> gp = p.grad().to_vector(), gq = q.grad().to_vector();
    const std::vector<double> sp = {1, 0, -1, 0, 1, -1}, sq = {-1, 0};
    for (size_t i = 0; i < gp.size(); ++i) CHECK(gp[i] == doctest::Approx(c / n * sp[i]).epsilon(1e-14));
    for (size_t i = 0; i < gq.size(); ++i) CHECK(gq[i] == doctest::Approx(c / n * sq[i]).epsilon(1e-14));
  }
  SUBCASE("a tensor without a starting value is not covered (apply_reg_to_sparse_only)") {
    backward(train::l1_reg_loss(params, {{"p", p0}}, c, n));
    CHECK_FALSE(q.grad().defined());
    CHECK(p.grad().to_vector()[2] == doctest::Approx(-c / n).epsilon(1e-14));
  }
  CHECK_THROWS_WITH_AS(train::l1_reg_loss(params, {}, c, n), doctest::Contains("none of the 2 trainable tensors"),
                       Error);
  CHECK_THROWS_WITH_AS(train::l1_reg_start(params, {"blocks.*"}), doctest::Contains("l1_reg_tensors [blocks.*]"),
                       Error);
  tape().clear();
}

TEST_CASE("LT-SFT golden: the selection (threshold, ties kept) and the L1 term equal the authors' code in PyTorch") {
  tape().clear();
  const SafeTensors& g = lt_golden();
  const SafeTensors& w = test::golden_vit_file();
  std::map<std::string, Tensor> scores;
  int64_t n = 0;
  for (const std::string& name : kMaskable) {
    scores[name] = abs(sub(g.tensors.at("theta1." + name), w.tensors.at(name)));
    n += scores[name].numel();
  }
  train::LtSftOptions o;
  o.ft_params_proportion = std::stod(g.metadata.at("proportion"));
  const int64_t k = train::lt_sft_k(o, n);
  CHECK(k == std::stoll(g.metadata.at("k")));
  double thresh = 0;
  auto masks = train::most_changed_masks(scores, k, &thresh);
  CHECK(thresh == g.tensors.at("threshold").to_vector()[0]);
  int64_t kept = 0;
  for (const std::string& name : kMaskable) {
    CHECK(masks.at(name).to_vector() == g.tensors.at("mask." + name).to_vector());
    for (double v : masks.at(name).to_vector()) kept += v != 0;
  }
  CHECK(kept == std::stoll(g.metadata.at("kept")));
  CHECK(kept > k);  // the fixture has ties at the threshold: the authors keep them all

  auto base = test::golden_base();
  int64_t num_params = 0;
  for (auto& [name, t] : base->named_parameters(false)) num_params += t.numel();
  CHECK(num_params == std::stoll(g.metadata.at("num_params")));
  std::map<std::string, Tensor> theta0;
  nn::NamedTensors params;
  for (auto& [name, t] : base->named_parameters(false))
    if (g.tensors.count("theta1." + name)) {
      theta0[name] = t.detach().clone();
      Tensor(t).copy_(g.tensors.at("theta1." + name));
      t.set_requires_grad(true);
      params.push_back({name, t});
    }
  REQUIRE(params.size() == kMaskable.size() + kHead.size());
  const double l1 = std::stod(g.metadata.at("l1_reg"));
  for (const char* scope : {"all", "sparse_only"}) {
    CAPTURE(scope);
    std::map<std::string, Tensor> start = theta0;
    if (std::string(scope) == "sparse_only")
      for (const std::string& h : kHead) start.erase(h);
    for (auto& [name, t] : params) t.zero_grad();
    Tensor loss = train::l1_reg_loss(params, start, l1, num_params);
    CHECK(loss.item() == doctest::Approx(g.tensors.at(str("l1.", scope, ".loss")).to_vector()[0]).epsilon(1e-6));
    backward(loss);
    for (auto& [name, t] : params) {
      CAPTURE(name);
      const std::vector<double> want = g.tensors.at(str("l1.", scope, ".grad.", name)).to_vector();
      const std::vector<double> got = t.grad().defined() ? t.grad().to_vector() : std::vector<double>(want.size(), 0.0);
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == doctest::Approx(want[i]).epsilon(1e-6));
    }
  }
  tape().clear();
}

TEST_CASE("LT-SFT: phase 2 changes only the kept positions (bit-identical elsewhere), LayerNorms stay frozen") {
  tape().clear();
  const auto dir = test::fresh_dir("lt_sft", "phases");
  const fs::path folder = test::make_stripes_folder(dir / "stripes", 8);
  train::RunConfig rc = test::small_run(folder, dir / "run");
  rc.weight_decay = 0.05;  // decay and the L1 term both pull on every trainable element: the masks must hold them
  train::LtSftOptions o;
  o.ft_params_proportion = 0.05, o.full_ft_epochs = 1, o.sparse_ft_epochs = 2;
  o.full_lr = 1e-2, o.sparse_lr = 1e-2, o.full_l1_reg = 0.5, o.sparse_l1_reg = 0.5, o.freeze_layer_norm = true;
  const nn::ViTConfig mc = nn::load_vit_config(rc.model_config);
  auto [tr, va] = train::load_data(rc.data, mc, rc.seed);
  const train::LtSftResult r = train::run_lt_sft(rc, o, tr, va);
  REQUIRE_FALSE(r.interrupted);
  CHECK(r.k == int64_t(0.05 * double(r.maskable_params)));
  CHECK(r.kept >= r.k);
  CHECK(r.sparse.trainable_params == r.kept + 3 * 16 + 3);  // the kept weights and the head

  // theta_0: the base a fresh trainer builds (random init, seeded), as phase 2's did
  train::RunConfig probe = rc;
  probe.out = (dir / "probe").string(), probe.peft = {{"trainable", {"head.*"}}};
  train::Trainer fresh(probe, tr, va);
  std::map<std::string, Tensor> theta0;
  for (auto& [n, t] : fresh.model().named_parameters(false)) theta0[n] = t;
  const SafeTensors full = load_safetensors((dir / "run" / "full" / "checkpoint.safetensors").string());
  const SafeTensors last = load_safetensors((dir / "run" / "checkpoint.safetensors").string());
  const SafeTensors chosen = load_safetensors((dir / "run" / "sft_masks.safetensors").string());
  int64_t maskable_tensors = 0, changed = 0, kept = 0;
  for (auto& [n, t0] : theta0) {
    CAPTURE(n);
    const bool norm = n.find("norm") != std::string::npos, head = n.rfind("head.", 0) == 0;
    CHECK(full.tensors.count("param." + n) == size_t(!norm));  // phase 1 trained all but the LayerNorms
    if (norm || head) continue;
    ++maskable_tensors;
    const Tensor mask = peft::mask_from_file(chosen.tensors, "sft_masks", n, t0.shape());
    const std::vector<float> m = mask.to_float_vector(), a = t0.to_float_vector(),
                             b = last.tensors.at("param." + n).to_float_vector(),
                             f = full.tensors.at("param." + n).to_float_vector();
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i] == 0) {
        REQUIRE(b[i] == a[i]);  // bit-identical to theta_0: reset, and untouched by phase 2
      } else {
        ++kept;
        changed += b[i] != a[i];
      }
      CHECK((f[i] != a[i] || m[i] == 0));  // every kept weight had changed in phase 1
    }
  }
  CHECK(kept == r.kept);
  CHECK(changed > kept / 2);
  CHECK(maskable_tensors == int64_t(chosen.tensors.size()));
  CHECK(r.threshold > 0);
  CHECK(std::stod(chosen.metadata.at("threshold")) == doctest::Approx(r.threshold).epsilon(1e-7));
  // the delta file stores the kept weights as positions + values, the head densely, nothing else
  const SafeTensors delta = load_safetensors((dir / "run" / "deltas.safetensors").string());
  int64_t values = 0, positions = 0;
  for (auto& [k, t] : delta.tensors) {
    CAPTURE(k);
    const bool v = k.size() > peft::kSparseValues.size() && k.ends_with(peft::kSparseValues);
    const bool p = k.size() > peft::kSparseIndices.size() && k.ends_with(peft::kSparseIndices);
    CHECK((v || p || k.rfind("head.", 0) == 0));
    (v ? values : positions) += v || p ? t.numel() : 0;
  }
  CHECK(values == r.kept);
  CHECK(positions == r.kept);
  tape().clear();
}

TEST_CASE("LT-SFT options: the authors' names, checked; the sweep row splits its epochs between the phases") {
  train::LtSftOptions o = train::lt_sft_options_from_json({{"ft_params_num", 7}, {"full_l1_reg", 0.1}}, "test");
  CHECK(o.ft_params_num == 7);
  CHECK(o.full_l1_reg == 0.1);
  CHECK(o.ft_params_proportion == 0.01);  // the authors' default
  CHECK(train::lt_sft_k(o, 100) == 7);
  o.ft_params_num = 0;
  CHECK(train::lt_sft_k(o, 250) == 2);  // int(0.01 * 250): the authors truncate
  CHECK_THROWS_WITH_AS(train::lt_sft_k(o, 50), doctest::Contains("must be in [1, 50]"), Error);
  CHECK_THROWS_WITH_AS(train::lt_sft_options_from_json({{"budget", 0.1}}, "row x"),
                       doctest::Contains("row x: unknown LT-SFT option 'budget'"), Error);
  CHECK_THROWS_WITH_AS(train::lt_sft_options_from_json({{"sparse_l1_reg", -1}}, "row x"),
                       doctest::Contains("sparse_l1_reg must be >= 0"), Error);
  const auto rows = train::choose_methods("lt_sft", "--methods");
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].lt_sft.value("ft_params_proportion", 0.0) == 0.01);
}

TEST_CASE("LT-SFT sweep row: phase 2's numbers, a rerun skips it, an interrupted row resumes to the same result") {
  tape().clear();
  const auto dir = test::fresh_dir("lt_sft", "sweep");
  const fs::path folder = test::make_stripes_folder(dir / "stripes", 8);
  auto config = [&](const std::string& out) {
    train::SweepConfig c;
    c.base = test::small_run(folder, dir / "unused");
    c.base.epochs = 3;  // 1 epoch of full fine-tuning, 2 sparse
    c.tasks = {train::sweep_task(folder.string() + ":val=0.25")};
    c.methods = train::choose_methods("lt_sft", "--methods");
    c.seeds = 1, c.out = (dir / out).string();
    return c;
  };
  const train::SweepConfig whole = config("whole");
  const train::SweepResult a = train::run_sweep(whole);
  REQUIRE(a.runs.size() == 1);
  const train::SweepRun& r = a.runs[0];
  CHECK(r.status == train::SweepRun::Status::Trained);
  const fs::path run = r.dir;
  CHECK(fs::exists(run / "full" / "metrics.csv"));
  CHECK(fs::exists(run / "sft_masks.safetensors"));
  int64_t kept = 0;
  const SafeTensors masks = load_safetensors((run / "sft_masks.safetensors").string());
  for (auto& [k, t] : masks.tensors) kept += t.numel();
  CHECK(r.trainable == kept + 3 * 16 + 3);  // the kept weights and the head
  CHECK(r.delta_bytes == int64_t(fs::file_size(run / "deltas.safetensors")));
  const nlohmann::json rec = nlohmann::json::parse(test::slurp(run / "sweep_run.json"));
  CHECK(rec["run_config"]["lt_sft"]["full_ft_epochs"] == 1);
  CHECK(rec["run_config"]["lt_sft"]["sparse_ft_epochs"] == 2);
  CHECK(train::run_sweep(whole).skipped == 1);

  // stopped inside phase 1 (3 steps an epoch), then inside phase 2, then finished: the same run
  train::SweepConfig cut = config("cut");
  const fs::path cut_run = fs::path(cut.out) / r.task / "lt_sft" / "seed0";
  cut.base.max_steps = 2;
  CHECK(train::run_sweep(cut).interrupted);
  CHECK(fs::exists(cut_run / "full" / "checkpoint.safetensors"));
  CHECK_FALSE(fs::exists(cut_run / "sft_masks.safetensors"));
  cut.base.max_steps = 3;  // phase 1's last step, then 3 of phase 2's 6
  CHECK(train::run_sweep(cut).interrupted);
  CHECK(fs::exists(cut_run / "sft_masks.safetensors"));
  CHECK(fs::exists(cut_run / "checkpoint.safetensors"));
  CHECK_FALSE(fs::exists(cut_run / "sweep_run.json"));
  cut.base.max_steps = 0;
  const train::SweepResult b = train::run_sweep(cut);
  REQUIRE(b.runs.size() == 1);
  CHECK(b.runs[0].status == train::SweepRun::Status::Resumed);
  CHECK(b.runs[0].accuracy == r.accuracy);
  CHECK(test::slurp(cut_run / "sft_masks.safetensors") == test::slurp(run / "sft_masks.safetensors"));
  const SafeTensors d1 = load_safetensors((run / "deltas.safetensors").string()),
                    d2 = load_safetensors((cut_run / "deltas.safetensors").string());
  REQUIRE(d1.tensors.size() == d2.tensors.size());
  for (auto& [k, t] : d1.tensors) {
    CAPTURE(k);
    REQUIRE(d2.tensors.count(k));
    CHECK(t.to_vector() == d2.tensors.at(k).to_vector());  // the file's metadata names its own mask file
  }
  tape().clear();
}

TEST_CASE("deltagrad sft: the authors' options reach both phases; bad values name the option") {
  const auto dir = test::fresh_dir("lt_sft", "cli");
  const fs::path folder = test::make_stripes_folder(dir / "stripes", 8);
  test::small_run(folder, dir / "run");  // writes dir/model.json
  const std::string common = "sft --model-config " + (dir / "model.json").string() + " --data " + folder.string() +
                             ":val=0.25 --batch 8 --quiet --out " + (dir / "run").string();
  const test::Cli ok = test::run_cli(common + " --ft-params-num 40 --full-epochs 1 --epochs 1 --full-l1-reg 0.2"
                                              " --sparse-l1-reg 0.3 --apply-reg-to-sparse-only --freeze-layer-norm",
                                     "lt_sft");
  REQUIRE_MESSAGE(ok.code == 0, ok.err);
  CHECK(ok.out.find("(k = 40,") != std::string::npos);
  const nlohmann::json full = nlohmann::json::parse(test::slurp(dir / "run" / "full" / "run_config.json")),
                       sparse = nlohmann::json::parse(test::slurp(dir / "run" / "run_config.json"));
  CHECK(full["l1_reg"] == 0.2);
  CHECK(sparse["l1_reg"] == 0.3);
  CHECK(sparse["weight_decay"] == 0.0);  // the authors' Trainer's default
  for (const nlohmann::json* rc : {&full, &sparse}) {
    CHECK(!(*rc)["l1_reg_tensors"].empty());  // the maskable tensors only: no head, no LayerNorm
    for (const auto& g : (*rc)["l1_reg_tensors"]) {
      CHECK(g.get<std::string>().find("norm") == std::string::npos);
      CHECK(g.get<std::string>().rfind("head.", 0) == std::string::npos);
    }
  }
  const test::Cli bad = test::run_cli(common + " --budget 2", "lt_sft");
  CHECK(bad.code != 0);
  CHECK(bad.err.find("--budget must be in (0, 1], got 2") != std::string::npos);
}

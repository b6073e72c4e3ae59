// The trainer: resume reproduces an uninterrupted run step for step; training on an image
// folder works end to end; the examples and the CLI run.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/safetensors.h"
#include "nn/vit.h"
#include "peft/peft_model.h"
#include "train/trainer.h"
#include "tests/test_util.h"
#include "tests/train_util.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
fs::path tmpdir(const std::string& name) { return test::fresh_dir("train", name); }
fs::path make_folder() { return test::make_stripes_folder(tmpdir("images")); }
train::RunConfig small_run(const fs::path& folder, const fs::path& out) { return test::small_run(folder, out); }
}  // namespace

TEST_CASE("train: an image folder trains end to end and writes its run directory") {
  fs::path folder = make_folder(), out = tmpdir("run") / "a";
  train::RunConfig rc = small_run(folder, out);
  rc.epochs = 20;
  rc.peft = {{"trainable", {"*"}}};  // a full fine-tune of a small random ViT
  rc.lr = 3e-3;
  rc.pad = 0;
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  CHECK(tr.size() == 36);
  CHECK(va.size() == 12);
  train::Trainer t(rc, tr, va);
  train::TrainResult r = t.fit();
  REQUIRE(r.epochs.size() == 20);
  CHECK(r.epochs.back().train_loss < 0.7 * r.epochs.front().train_loss);
  CHECK(r.epochs.back().val_acc > 0.6);
  for (const char* f : {"run_config.json", "metrics.csv", "curves.svg", "curves.png", "checkpoint.safetensors", "deltas.safetensors"})
    CHECK_MESSAGE(fs::exists(out / f), f);
}

TEST_CASE("train: precision bf16 trains as f32 does, within bf16's error; a bad precision is refused") {
  fs::path folder = make_folder(), base = tmpdir("precision");
  std::vector<double> losses[2];
  std::vector<double> acc[2];
  for (int p = 0; p < 2; ++p) {
    train::RunConfig rc = small_run(folder, base / (p ? "bf16" : "f32"));
    rc.epochs = 10;
    rc.precision = p ? "bf16" : "f32";
    auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
    train::Trainer t(rc, tr, va);
    train::TrainResult r = t.fit();
    losses[p] = r.step_losses;
    for (const auto& e : r.epochs) acc[p].push_back(e.val_acc);
    std::ifstream f(base / (p ? "bf16" : "f32") / "run_config.json");
    CHECK(json::parse(f)["precision"] == rc.precision);
  }
  REQUIRE(losses[0].size() == losses[1].size());
  MESSAGE("first loss f32 ", losses[0].front(), " bf16 ", losses[1].front(), "; last f32 ", losses[0].back(),
          " bf16 ", losses[1].back(), "; val acc f32 ", acc[0].back(), " bf16 ", acc[1].back());
  CHECK(losses[1].front() != losses[0].front());  // it did run in bf16
  CHECK(std::abs(losses[1].front() - losses[0].front()) < 1e-2 * losses[0].front());
  CHECK(losses[1].back() < 0.8 * losses[1].front());  // bf16 learns
  CHECK(std::abs(losses[1].back() - losses[0].back()) < 0.25 * losses[0].back());
  json bad = train::to_json(small_run(folder, base / "bad"));
  bad["precision"] = "f16";
  CHECK_THROWS_WITH(train::run_config_from_json(bad), doctest::Contains("key 'precision': precision 'f16'"));
}

TEST_CASE("train: --resume reproduces the losses of an uninterrupted run, step for step (f32 and bf16)") {
  fs::path folder = make_folder();
  for (const char* precision : {"f32", "bf16"}) {
    INFO(precision);
    fs::path base = tmpdir(std::string("resume_") + precision);
    auto load = [&](const train::RunConfig& rc) { return train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed); };
    auto run_config = [&](const fs::path& out) {
      train::RunConfig rc = small_run(folder, out);
      rc.precision = precision;
      return rc;
    };
    train::RunConfig full = run_config(base / "full");
    auto [tr, va] = load(full);
    std::vector<double> want;
    {
      train::Trainer t(full, tr, va);
      want = t.fit().step_losses;
    }
    // the same run, stopped after 2 of 4 epochs (a checkpoint per epoch), then resumed
    train::RunConfig first = run_config(base / "split");
    first.max_steps = 7;  // stops mid-epoch, as Ctrl-C would
    std::vector<double> got;
    {
      train::Trainer t(first, tr, va);
      train::TrainResult r = t.fit();
      CHECK(r.interrupted);
      got = r.step_losses;
    }
    train::RunConfig second = run_config(base / "split");
    {
      train::Trainer t(second, tr, va);
      std::vector<double> rest = t.fit(true).step_losses;
      got.insert(got.end(), rest.begin(), rest.end());
    }
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);  // bit-identical
  }
}

TEST_CASE("train: a NaN loss stops training with the step, keeping the last good checkpoint") {
  fs::path folder = make_folder(), out = tmpdir("nan") / "run";
  train::RunConfig rc = small_run(folder, out);
  rc.epochs = 1;
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  {
    train::Trainer t(rc, tr, va);
    t.fit();  // one good epoch: its checkpoint is the last good state
  }
  const fs::path ckpt = out / "checkpoint.safetensors";
  std::ifstream in(ckpt, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), {});
  REQUIRE(!good.empty());
  // The second epoch sees images with a NaN pixel: the first step's loss is NaN.
  data::ImageSet poisoned = tr;
  poisoned.images = tr.images.clone();
  for (int64_t i = 0; i < poisoned.size(); ++i) poisoned.images.data<float>()[i * 144 + 5] = std::nanf("");
  rc.epochs = 2;
  train::Trainer t(rc, poisoned, va);
  CHECK_THROWS_WITH_AS(t.fit(true), doctest::Contains("training stopped: the loss is nan at epoch 2 step 0"), Error);
  std::ifstream again(ckpt, std::ios::binary);
  CHECK(std::string((std::istreambuf_iterator<char>(again)), {}) == good);  // untouched
  SafeTensors st = load_safetensors(ckpt.string());
  CHECK(st.metadata.at("epoch") == "1");
}

TEST_CASE("train: a non-finite gradient is named with its tensor and step") {
  // d/dw sum(w * c) = c: the gradients are whatever c holds.
  auto grads_of = [](float bad) {
    Tensor w = Tensor::zeros({3, 4}), b = Tensor::zeros({4});
    w.set_requires_grad(true), b.set_requires_grad(true);
    Tensor cw = Tensor::ones({3, 4}), cb = Tensor::ones({4});
    cw.data<float>()[7] = bad;
    cb.data<float>()[2] = 1e30f;  // large but finite: fine
    backward(add(sum(mul(w, cw)), sum(mul(b, cb))));
    return nn::NamedTensors{{"blocks.0.attn.qkv.lora.lora_A", w}, {"head.bias", b}};
  };
  CHECK_NOTHROW(train::check_finite_gradients(grads_of(2.0f), 0, 3, "the last good checkpoint is ck.safetensors"));
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    const nn::NamedTensors params = grads_of(bad);
    REQUIRE(params[0].second.grad().defined());
    CHECK_THROWS_WITH_AS(train::check_finite_gradients(params, 2, 9, "the last good checkpoint is ck.safetensors"),
                         doctest::Contains("the gradient of 'blocks.0.attn.qkv.lora.lora_A' is not finite at epoch 3 "
                                           "step 9 (the last good checkpoint is ck.safetensors)"),
                         Error);
  }
}

TEST_CASE("examples and the CLI run") {
  const std::string b = DG_BUILD_DIR;
  for (const char* e : {"train_mlp", "lora_timm", "custom_data", "switch_deltas"}) {
    INFO("example ", e);
    CHECK(std::system((b + "/examples/" + e + " > /dev/null").c_str()) == 0);
  }
  CHECK(std::system((b + "/tools/deltagrad --help > /dev/null").c_str()) == 0);
  // unknown options and missing files: one clear line, exit code 2
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad train --bogus 1 2> /dev/null").c_str())) == 2);
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad inspect /nonexistent.safetensors 2> /dev/null").c_str())) == 2);
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad frobnicate 2> /dev/null").c_str())) == 2);
}

TEST_CASE("cli: grads matches the PyTorch golden gradients; inspect lists trainable and frozen tensors") {
  const std::string b = DG_BUILD_DIR, src = DG_SOURCE_DIR;
  fs::path d = tmpdir("cli");
  // the golden ViT's weights, config and batch, split into the files the CLI takes
  SafeTensors g = load_safetensors(src + "/tests/fixtures/vit_golden.safetensors");
  std::map<std::string, Tensor> w;
  for (auto& [k, t] : g.tensors)
    if (k.rfind("grad.", 0) && k.rfind("input.", 0) && k != "logits" && k != "loss" && k != "adamw_losses") w[k] = t;
  save_safetensors((d / "model.safetensors").string(), w);
  save_safetensors((d / "batch.safetensors").string(),
                   {{"images", g.tensors.at("input.images")}, {"labels", g.tensors.at("input.labels")}});
  std::ofstream(d / "cfg.json") << g.metadata.at("config");
  const std::string common = " --model " + (d / "model.safetensors").string() + " --model-config " + (d / "cfg.json").string();
  REQUIRE(std::system((b + "/tools/deltagrad grads" + common + " --batch " + (d / "batch.safetensors").string() +
                       " --out " + (d / "out.safetensors").string() + " > /dev/null").c_str()) == 0);
  SafeTensors o = load_safetensors((d / "out.safetensors").string());
  CHECK(test::rel_err(o.tensors.at("logits"), g.tensors.at("logits")) < 1e-5);
  int n = 0;
  for (auto& [k, t] : o.tensors)
    if (k.rfind("grad.", 0) == 0) {
      INFO(k);
      CHECK(test::rel_err(t, g.tensors.at(k)) < 1e-4);
      ++n;
    }
  CHECK(n == 44);  // every parameter of the golden ViT
  // inspect with a PEFT config: LoRA tensors trainable, base frozen, the report printed
  std::ofstream(d / "peft.json") << R"({"deltas": [{"name": "lora", "method": "lora", "r": 2}], "trainable": ["head.*"]})";
  const std::string txt = (d / "inspect.txt").string();
  REQUIRE(std::system((b + "/tools/deltagrad inspect " + (d / "model.safetensors").string() + " --model-config " +
                       (d / "cfg.json").string() + " --peft " + (d / "peft.json").string() + " > " + txt).c_str()) == 0);
  std::ifstream f(txt);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(all.find("blocks.0.attn.qkv.lora.lora_A") != std::string::npos);
  CHECK(all.find("blocks.0.attn.qkv.weight") != std::string::npos);
  CHECK(all.find("trainable params:") != std::string::npos);
  // a mismatched checkpoint: refused with the tensor's name, exit code 2
  std::map<std::string, Tensor> bad = w;
  bad["blocks.0.mlp.fc1.weight"] = Tensor::zeros({3, 48});
  save_safetensors((d / "bad.safetensors").string(), bad);
  const std::string err = (d / "err.txt").string();
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad grads --model " + (d / "bad.safetensors").string() +
                                 " --model-config " + (d / "cfg.json").string() + " --batch " +
                                 (d / "batch.safetensors").string() + " --out /dev/null 2> " + err).c_str())) == 2);
  std::ifstream ef(err);
  std::string emsg((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
  CHECK(emsg.find("'blocks.0.mlp.fc1.weight' has shape [3, 48], expected [192, 48]") != std::string::npos);
}

TEST_CASE("cli: inspect --tape prints one step's records: a frozen linear saves no input, LoRA's A and B appear, "
          "the held bytes are the tape's") {
  const fs::path d = tmpdir("tape");
  nn::ViTConfig c = nn::vit_preset("vit_mnist_28");
  c.depth = 2, c.embed_dim = 32, c.num_heads = 2, c.num_classes = 3;
  std::ofstream(d / "model.json") << nn::to_json(c).dump();
  std::ofstream(d / "peft.json") << R"({"deltas": [{"name": "lora", "method": "lora", "r": 2}]})";
  const test::Cli r = test::run_cli("inspect --tape --model-config " + (d / "model.json").string() + " --peft " +
                                        (d / "peft.json").string() + " --batch 2",
                                    "tape");
  INFO(r.out, r.err);
  REQUIRE(r.code == 0);
  const std::string D = std::to_string(c.embed_dim), D3 = std::to_string(3 * c.embed_dim);
  CHECK(r.out.find("random batch [2, " + std::to_string(c.in_chans) + ", 28, 28]") != std::string::npos);
  int frozen_linears = 0, lora_a = 0, lora_b = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    // LoRA's B product accumulates into the base qkv's output (autograd/ops/lowrank_add.cpp)
    if (line.rfind("#", 0) == 0 && line.find(" lowrank_add ") != std::string::npos) {
      lora_b += line.find("[" + D3 + ", 2] grad") != std::string::npos;
      continue;
    }
    if (line.rfind("#", 0) != 0 || line.find(" linear ") == std::string::npos) continue;
    INFO(line);
    const std::string saved = line.substr(line.find("saved:"));
    const size_t in = line.find("in: "), weight = line.find(", [", in);  // the second input: the weight
    REQUIRE(weight != std::string::npos);
    const std::string w = line.substr(weight + 2, line.find(']', weight) - weight - 1);
    const bool w_trainable = line.compare(line.find(']', weight) + 1, 5, " grad") == 0;
    // linear keeps x only for its weight's gradient (autograd/ops/linear.cpp)
    CHECK((saved.find(" x=") != std::string::npos) == w_trainable);
    if (!w_trainable) ++frozen_linears;
    if (w == "[" + D3 + ", " + D + "]") CHECK(!w_trainable);  // the base qkv
    lora_a += w == "[2, " + D + "]" && w_trainable;
  }
  CHECK(frozen_linears >= 4);  // block 0's proj, fc1, fc2 and block 1's qkv at least
  CHECK(lora_a == c.depth);
  CHECK(lora_b == c.depth);
  // the same step in this process: the records and bytes the command reports
  nn::VisionTransformer m(c);
  m.init_weights(0);
  peft::PeftModel pm(m, peft::load_peft_config((d / "peft.json").string()));
  m.train();
  tape().clear();
  Tensor loss = cross_entropy(m(Tensor::zeros({2, c.in_chans, c.img_size, c.img_size})),
                              Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}));
  const size_t records = tape().records().size(), saved = tape().saved_bytes(), held = tape().held_bytes();
  tape().clear();
  CHECK(held < saved);  // LoRA's A reads the LayerNorm output the norm keeps: one buffer, counted once
  CHECK(r.out.find("total: " + std::to_string(records) + " records, saved " + std::to_string(saved) +
                   " B summed over records, held " + std::to_string(held) + " B") != std::string::npos);
}

TEST_CASE("cli: a run's delta file keeps its head: eval reproduces the run, export-peft saves it as modules_to_save") {
  const std::string b = DG_BUILD_DIR;
  fs::path folder = make_folder(), d = tmpdir("head");
  train::RunConfig rc = small_run(folder, d / "run");
  // a backbone checkpoint with another task's 5-class head: the run makes a fresh 3-class head
  json mc5 = json::parse(std::ifstream(rc.model_config));
  mc5["num_classes"] = 5;
  std::ofstream(d / "model5.json") << mc5.dump();
  {
    nn::VisionTransformer m(nn::load_vit_config((d / "model5.json").string()));
    m.init_weights(11);
    save_safetensors((d / "w.safetensors").string(), nn::state_dict(m));
  }
  rc.model = (d / "w.safetensors").string();
  rc.peft = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"init", "random"}}}}};  // head frozen
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  double run_acc = 0;
  Tensor run_logits;  // the trained model's logits on a batch, to compare with the CLI's
  const Tensor images = va.images.clone();
  save_safetensors((d / "batch.safetensors").string(), {{"images", images}, {"labels", va.labels}});
  {
    train::Trainer t(rc, tr, va);
    run_acc = t.fit().epochs.back().val_acc;
    NoGradGuard ng;
    t.model().eval();
    run_logits = t.model()(images);
  }
  auto cli_logits = [&](const std::string& delta_file) {
    const std::string out = (d / "grads.safetensors").string();
    REQUIRE(std::system((b + "/tools/deltagrad grads --model-config " + (d / "model5.json").string() + " --model " +
                         rc.model + " --deltas " + delta_file + " --batch " + (d / "batch.safetensors").string() +
                         " --out " + out + " > /dev/null 2>&1").c_str()) == 0);
    return load_safetensors(out).tensors.at("logits");
  };
  const std::string deltas = (d / "run" / "deltas.safetensors").string();
  CHECK(load_safetensors(deltas).tensors.count("head.weight") == 1);  // the fresh head, although frozen
  auto eval_acc = [&](const std::string& delta_file) {
    const std::string txt = (d / "eval.txt").string();
    REQUIRE(std::system((b + "/tools/deltagrad eval --model-config " + (d / "model5.json").string() + " --model " +
                         rc.model + " --deltas " + delta_file + " --data " + rc.data + " --seed 5 > " + txt).c_str()) == 0);
    std::ifstream f(txt);
    std::string word;
    double acc = -1;
    f >> word >> acc;
    return acc;
  };
  CHECK(eval_acc(deltas) == doctest::Approx(run_acc).epsilon(1e-4));
  CHECK(test::rel_err(cli_logits(deltas), run_logits) < 1e-6);
  // export with the 5-class config: the delta file's 3-class head is used and exported
  const fs::path hf = d / "hf";
  REQUIRE(std::system((b + "/tools/deltagrad export-peft --model-config " + (d / "model5.json").string() + " --model " +
                       rc.model + " --deltas " + deltas + " --out " + hf.string() + " 2> /dev/null > /dev/null").c_str()) == 0);
  json ac = json::parse(std::ifstream(hf / "adapter_config.json"));
  CHECK(ac["modules_to_save"] == json::array({"head"}));
  SafeTensors ex = load_safetensors((hf / "adapter_model.safetensors").string());
  REQUIRE(ex.tensors.count("base_model.model.head.weight") == 1);
  CHECK(ex.tensors.at("base_model.model.head.weight").shape() == Shape{3, 16});
  CHECK(test::rel_err(ex.tensors.at("base_model.model.head.weight"), load_safetensors(deltas).tensors.at("head.weight")) == 0);
  // and back: the imported delta file evaluates as the run did
  const std::string back = (d / "back.safetensors").string();
  REQUIRE(std::system((b + "/tools/deltagrad import-peft --model-config " + (d / "model5.json").string() + " --model " +
                       rc.model + " --in " + hf.string() + " --out " + back + " > /dev/null").c_str()) == 0);
  CHECK(eval_acc(back) == doctest::Approx(run_acc).epsilon(1e-4));
  CHECK(test::rel_err(cli_logits(back), run_logits) < 1e-6);
}

TEST_CASE("train: curves.svg has two numbered panels and draws a single evaluation; metrics.csv leaves unevaluated empty") {
  fs::path d = tmpdir("curves");
  const std::string svg = (d / "c.svg").string();
  train::write_curves_svg(svg, {1.0, 0.8, 0.6, 0.5}, {{1, 0.9, 0.5, -1.0}, {2, 0.55, 0.7, 0.625}}, 2, "lora on <data>");
  std::ifstream f(svg);
  const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK(s.find(">lora on &lt;data&gt;</text>") != std::string::npos);  // the title, escaped
  CHECK(s.find(">train loss (per step)</text>") != std::string::npos);
  CHECK(s.find(">validation accuracy</text>") != std::string::npos);
  for (const char* tick : {">0.5</text>", ">1</text>", ">2</text>", ">0.8</text>"}) CHECK_MESSAGE(s.find(tick) != std::string::npos, tick);
  size_t circles = 0;
  for (size_t at = 0; (at = s.find("<circle", at)) != std::string::npos; ++at) ++circles;
  CHECK(circles == 1);  // the one evaluated epoch is drawn as a point; the unevaluated one is not drawn
  // eval_every 2 over 3 epochs: epoch 1 is not evaluated, its val_acc field is empty
  fs::path folder = make_folder();
  train::RunConfig rc = small_run(folder, d / "run");
  rc.epochs = 3, rc.eval_every = 2;
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  train::Trainer t(rc, tr, va);
  t.fit();
  std::ifstream m(d / "run" / "metrics.csv");
  std::vector<std::string> epoch_rows;
  for (std::string line; std::getline(m, line);)
    if (line.rfind("epoch,", 0) == 0) epoch_rows.push_back(line);
  REQUIRE(epoch_rows.size() == 3);
  CHECK(epoch_rows[0].back() == ',');  // not evaluated: empty
  CHECK(epoch_rows[1].back() != ',');
  CHECK(epoch_rows[2].back() != ',');
}

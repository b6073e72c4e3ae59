// The researcher's workflow (issue 20): class names recorded by a run and used by every command
// with --deltas; predict; folders of splits (train/val/test, VTAB-1k's names) and evaluating a
// whole folder; mismatches that say what differs.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "tests/test_util.h"
#include "tests/train_util.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path tmpdir(const std::string& name) { return test::fresh_dir("workflow", name); }

using test::Cli;
using test::slurp;
test::Cli cli(const std::string& args) { return test::run_cli(args, "workflow"); }

// A trained run on the stripes folder with saved base weights: (folder, base weights, delta file).
struct TrainedRun {
  fs::path folder, weights, deltas, run;
};
TrainedRun trained_run() {
  const fs::path d = tmpdir("trained");
  TrainedRun r{test::make_stripes_folder(d / "images"), d / "w.safetensors", {}, d / "run"};
  train::RunConfig rc = test::small_run(r.folder, r.run);
  {
    nn::VisionTransformer m(nn::load_vit_config(rc.model_config));
    m.init_weights(11);
    save_safetensors(r.weights.string(), nn::state_dict(m));
  }
  rc.model = r.weights.string();
  rc.epochs = 20, rc.lr = 3e-3, rc.pad = 0;  // learns the stripes (a full fine-tune, as in test_train.cpp)
  rc.peft = {{"trainable", {"*"}}};
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  train::Trainer(rc, tr, va).fit();
  r.deltas = r.run / "deltas.safetensors";
  return r;
}

}  // namespace

TEST_CASE("workflow: a run records its class names; eval and predict use the delta file's model config and names") {
  const TrainedRun r = trained_run();
  const std::vector<std::string> names{"class0", "class1", "class2"};
  CHECK(json::parse(slurp(r.run / "class_names.json")) == json(names));
  const json mc = json::parse(load_safetensors(r.deltas.string()).metadata.at("model_config"));
  CHECK(mc["class_names"] == json(names));

  // eval with the delta file alone (no --model-config) on the whole folder (val=0): 48 images
  const std::string model = " --model " + r.weights.string() + " --deltas " + r.deltas.string();
  Cli ev = cli("eval" + model + " --data " + r.folder.string() + ":val=0");
  REQUIRE_MESSAGE(ev.code == 0, ev.err);
  double acc = -1;
  long long images = 0;
  CHECK(std::sscanf(ev.out.c_str(), "accuracy %lf on %lld images", &acc, &images) == 2);
  CHECK(images == 48);

  // predict over the folder: the top class's name is the image's folder as often as eval scores
  const fs::path pj = r.run.parent_path() / "pred.json";
  Cli pr = cli("predict" + model + " --data " + r.folder.string() + " --topk 2 --out " + pj.string());
  REQUIRE_MESSAGE(pr.code == 0, pr.err);
  const json p = json::parse(slurp(pj));
  REQUIRE(p.size() == 48);
  int right = 0;
  for (const json& e : p) {
    REQUIRE(e["top"].size() == 2);
    const double p0 = e["top"][0]["probability"], p1 = e["top"][1]["probability"];
    CHECK((p0 >= p1 && p1 > 0 && p0 + p1 <= 1 + 1e-6));
    const std::string cls = e["top"][0]["class_name"];
    CHECK(cls == names.at(e["top"][0]["class_index"].get<size_t>()));
    right += fs::path(e["image"].get<std::string>()).parent_path().filename().string() == cls;
  }
  CHECK(right == int(std::lround(acc * 48)));
  CHECK(acc > 0.6);  // the run learned the stripes: its names line up with more than chance

  // CSV for two images given by path; the table on stdout without --out
  const std::string a = (r.folder / "class1" / "3.png").string(), b = (r.folder / "class2" / "4.png").string();
  const fs::path pc = r.run.parent_path() / "pred.csv";
  REQUIRE(cli("predict" + model + " --images " + a + " " + b + " --topk 3 --out " + pc.string()).code == 0);
  std::istringstream csv(slurp(pc));
  std::string line;
  std::getline(csv, line);
  CHECK(line == "image,rank,class_index,class_name,probability");
  int rows = 0;
  while (std::getline(csv, line)) {
    ++rows;
    CHECK(line.rfind(rows <= 3 ? a : b, 0) == 0);
    CHECK(line.find(",class") != std::string::npos);
  }
  CHECK(rows == 6);
  Cli table = cli("predict" + model + " --images " + a);
  CHECK(table.code == 0);
  CHECK(table.out.rfind(a + "  class", 0) == 0);

  // what predict refuses, by name
  Cli bad = cli("predict" + model + " --images " + a + " --out p.txt");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--out 'p.txt': expected a file name ending in .csv or .json") != std::string::npos);
  bad = cli("predict" + model + " --images " + (r.folder / "nope.png").string());
  CHECK(bad.code == 2);
  CHECK(bad.err.find("nope.png") != std::string::npos);
  CHECK(cli("predict" + model).code == 2);  // neither --images nor --data
}

TEST_CASE("workflow: a delta file refuses another backbone or other classes, saying what differs") {
  const TrainedRun r = trained_run();
  const std::string model = " --model " + r.weights.string() + " --deltas " + r.deltas.string();
  // a model config with another width: named key by key, with the fix
  json other = json::parse(slurp(r.run.parent_path() / "model.json"));
  other["embed_dim"] = 32;
  std::ofstream(r.run.parent_path() / "other.json") << other.dump();
  Cli c = cli("eval --model-config " + (r.run.parent_path() / "other.json").string() + model + " --data " +
              r.folder.string() + ":val=0");
  CHECK(c.code == 2);
  CHECK(c.err.find("embed_dim: 16 vs 32") != std::string::npos);
  CHECK(c.err.find("leave out --model-config") != std::string::npos);
  // the same backbone with another head's class count (a preset's 1000) is fine: the head is the file's
  other["embed_dim"] = 16, other["num_classes"] = 1000;
  std::ofstream(r.run.parent_path() / "other.json") << other.dump();
  c = cli("inspect " + r.weights.string() + " --model-config " + (r.run.parent_path() / "other.json").string() +
          " --deltas " + r.deltas.string());
  CHECK(c.code == 0);
  CHECK(c.out.find("head.weight") != std::string::npos);
  CHECK(c.err.find("the head has 3 classes") != std::string::npos);

  // data with a renamed class, or fewer classes
  const fs::path renamed = tmpdir("renamed");
  fs::copy(r.folder, renamed, fs::copy_options::recursive);
  fs::rename(renamed / "class2", renamed / "zebra");
  c = cli("eval" + model + " --data " + renamed.string() + ":val=0");
  CHECK(c.code == 2);
  CHECK(c.err.find("class 2 is 'zebra'") != std::string::npos);
  CHECK(c.err.find("class0, class1, class2") != std::string::npos);
  fs::remove_all(renamed / "zebra");
  c = cli("eval" + model + " --data " + renamed.string() + ":val=0");
  CHECK(c.code == 2);
  CHECK(c.err.find("has 2 classes (class0, class1) but delta file") != std::string::npos);
}

TEST_CASE("workflow: folders of splits (train/val/test and VTAB-1k's names) and a whole folder") {
  const fs::path root = tmpdir("splits");
  test::make_stripes_folder(root / "train", 8);
  test::make_stripes_folder(root / "val", 4);
  test::make_stripes_folder(root / "test", 2);
  const fs::path cfg = tmpdir("cfg");
  test::small_run(root, cfg / "run");  // writes the small model's config
  const nn::ViTConfig mc = nn::load_vit_config((cfg / "model.json").string());
  auto [tr, va] = train::load_data(root.string(), mc, 0);
  CHECK(tr.size() == 24);
  CHECK(va.size() == 12);
  CHECK(va.class_names == std::vector<std::string>{"class0", "class1", "class2"});
  auto [tr2, te] = train::load_data(root.string() + ":eval=test", mc, 0);
  CHECK(te.size() == 6);
  // eval needs only the training split's classes
  auto [names, va2] = train::load_data(root.string(), mc, 0, train::DataUse::EvalOnly);
  CHECK(names.size() == 0);
  CHECK(names.num_classes == 3);
  CHECK(va2.size() == 12);
  // a val split without class1: labels stay the training split's (class2 is 2)
  fs::remove_all(root / "val" / "class1");
  auto [tr3, va3] = train::load_data(root.string(), mc, 0);
  CHECK(va3.size() == 8);
  CHECK(va3.labels.to_vector() == std::vector<double>{0, 0, 0, 0, 2, 2, 2, 2});
  CHECK(va3.num_classes == 3);
  // refusals name the problem
  fs::create_directories(root / "val" / "classZ");
  fs::copy_file(root / "train" / "class0" / "0.png", root / "val" / "classZ" / "0.png");
  CHECK_THROWS_WITH(train::load_data(root.string(), mc, 0), doctest::Contains("'classZ' is not a class of the training split"));
  fs::remove_all(root / "val" / "classZ");
  CHECK_THROWS_WITH(train::load_data(root.string() + ":val=0.2", mc, 0), doctest::Contains("leave out val="));
  CHECK_THROWS_WITH(train::load_data(root.string() + ":eval=nope", mc, 0),
                    doctest::Contains("splits found: test, train, val"));
  // VTAB-1k: train800val200 is evaluated on test, train800 on val200
  const fs::path vtab = tmpdir("vtab");
  test::make_stripes_folder(vtab / "train800val200", 5);
  test::make_stripes_folder(vtab / "train800", 4);
  test::make_stripes_folder(vtab / "val200", 1);
  test::make_stripes_folder(vtab / "test", 3);
  auto [vt, vte] = train::load_data(vtab.string(), mc, 0);
  CHECK((vt.size() == 15 && vte.size() == 9));
  auto [v8, v2] = train::load_data(vtab.string() + ":train=train800", mc, 0);
  CHECK((v8.size() == 12 && v2.size() == 3));
  // a flat folder: val=0 evaluates every image, and training refuses it
  const fs::path flat = test::make_stripes_folder(tmpdir("flat"), 5);
  auto [fc, fall] = train::load_data(flat.string() + ":val=0", mc, 0, train::DataUse::EvalOnly);
  CHECK(fall.size() == 15);
  CHECK_THROWS_WITH(train::load_data(flat.string() + ":val=0", mc, 0), doctest::Contains("val=0 holds out no image"));
}

TEST_CASE("workflow: export-peft writes the head's class names beside the adapter; import-peft reads them back") {
  const fs::path d = tmpdir("peft_names");
  const fs::path folder = test::make_stripes_folder(d / "images", 4);
  train::RunConfig rc = test::small_run(folder, d / "run");  // LoRA + the head, d/model.json
  rc.epochs = 1;
  const fs::path weights = d / "base.safetensors";
  nn::VisionTransformer base(nn::load_vit_config(rc.model_config));
  base.init_weights(3);
  save_safetensors(weights.string(), nn::state_dict(base));
  rc.model = weights.string();
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  train::Trainer(rc, tr, va).fit();
  const std::string deltas = (d / "run" / "deltas.safetensors").string(), hf = (d / "hf").string();
  Cli ex = cli("export-peft --model " + weights.string() + " --deltas " + deltas + " --out " + hf);
  REQUIRE_MESSAGE(ex.code == 0, ex.err);
  const json names = json::array({"class0", "class1", "class2"});
  CHECK(json::parse(slurp(d / "hf" / "class_names.json")) == names);
  CHECK_FALSE(json::parse(slurp(d / "hf" / "adapter_config.json")).contains("class_names"));  // peft's file stays peft's

  const std::string back = (d / "back.safetensors").string();
  Cli im = cli("import-peft --model-config " + rc.model_config + " --model " + weights.string() + " --in " + hf +
               " --out " + back);
  REQUIRE_MESSAGE(im.code == 0, im.err);
  CHECK(json::parse(load_safetensors(back).metadata.at("model_config"))["class_names"] == names);
  // and the imported delta file predicts by name
  Cli pr = cli("predict --model " + weights.string() + " --deltas " + back + " --images " +
               (folder / "class1" / "0.png").string() + " --topk 3");
  CHECK(pr.code == 0);
  CHECK(pr.out.find("class2") != std::string::npos);

  // a names file that does not fit the head is refused, naming the file
  std::ofstream(d / "hf" / "class_names.json") << R"(["a", "b"])";
  Cli bad = cli("import-peft --model-config " + rc.model_config + " --in " + hf + " --out " + back);
  CHECK(bad.code == 2);
  CHECK(bad.err.find("class_names.json' name 2 classes but the head has 3 outputs") != std::string::npos);
}

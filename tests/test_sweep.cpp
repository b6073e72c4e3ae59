// deltagrad sweep (train/sweep.h): 2 tiny tasks x 2 methods x 2 seeds. The table must be the run
// dirs' own numbers (recomputed here from their metrics.csv and delta files), a re-run must not
// retrain anything, an interrupted sweep must resume its interrupted run and give the same
// result as an uninterrupted one, and bad options must say which option is wrong.
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <map>
#include <sstream>

#include "data/dataset.h"
#include "tests/test_util.h"
#include "tests/train_util.h"
#include "train/sweep.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {

// The last evaluated accuracy in a metrics.csv, parsed here independently of the sweep.
double final_accuracy(const fs::path& run) {
  std::istringstream in(test::slurp(run / "metrics.csv"));
  double acc = -1;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("epoch,", 0) == 0 && line.back() != ',') acc = std::stod(line.substr(line.rfind(',') + 1));
  return acc;
}

// sweep.csv as method -> task -> fields
std::map<std::string, std::map<std::string, std::vector<std::string>>> read_csv(const fs::path& p) {
  std::istringstream in(test::slurp(p));
  std::map<std::string, std::map<std::string, std::vector<std::string>>> out;
  std::string line;
  std::getline(in, line);
  CHECK(line == "method,task,runs,accuracy_mean,accuracy_std,trainable_params,delta_bytes,train_seconds");
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (line.back() == ',') f.push_back("");
    REQUIRE(f.size() == 8);
    out[f[0]][f[1]] = f;
  }
  return out;
}

struct Setup {
  fs::path dir;
  train::SweepConfig config;
};
// Two tasks (stripes folders of 8 and 10 images a class), linear probe and LoRA, seeds 0 and 1,
// 2 epochs of the tests' tiny ViT.
Setup setup(const std::string& name) {
  Setup s;
  s.dir = test::fresh_dir("sweep", name);
  const fs::path a = test::make_stripes_folder(s.dir / "stripes", 8), b = test::make_stripes_folder(s.dir / "more", 10);
  s.config.base = test::small_run(a, s.dir / "unused");  // writes s.dir/model.json
  s.config.base.epochs = 2;
  s.config.tasks = {train::sweep_task(a.string() + ":val=0.25"), train::sweep_task(b.string() + "/:val=0.25")};
  s.config.methods = train::choose_methods("lora,linear_probe", "--methods");
  s.config.seeds = 2;
  s.config.out = (s.dir / "sweep").string();
  return s;
}

std::map<std::string, fs::file_time_type> mtimes(const fs::path& root) {
  std::map<std::string, fs::file_time_type> m;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.path().filename() == "deltas.safetensors" || e.path().filename() == "checkpoint.safetensors")
      m[e.path().string()] = e.last_write_time();
  return m;
}

// A percentage as the table prints it, with 2 decimals (iostream's formatting, not the sweep's).
std::string percent(double fraction) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(2) << 100 * fraction;
  return os.str();
}

}  // namespace

TEST_CASE("sweep: the table is the run dirs' metrics; a re-run skips every finished run; a changed config is refused") {
  Setup s = setup("table");
  train::SweepConfig& c = s.config;
  CHECK(c.tasks[0].name == "stripes");
  CHECK(c.tasks[1].name == "more");  // a trailing slash does not empty the name
  CHECK(c.methods[0].id == "linear_probe");  // the registry's order, not the list's
  const train::SweepResult r = train::run_sweep(c);
  CHECK(r.trained == 8);
  CHECK(r.skipped == 0);
  CHECK_FALSE(r.interrupted);
  REQUIRE(r.runs.size() == 8);

  const auto csv = read_csv(fs::path(c.out) / "sweep.csv");
  const std::string md = test::slurp(fs::path(c.out) / "sweep.md");
  for (const train::SweepMethod& m : c.methods) {
    double mean_of_means = 0;
    for (const train::SweepTask& t : c.tasks) {
      std::vector<double> acc;
      double bytes = 0;
      for (int seed = 0; seed < 2; ++seed) {
        const fs::path run = fs::path(c.out) / t.name / m.id / ("seed" + std::to_string(seed));
        REQUIRE(fs::exists(run / "metrics.csv"));
        CHECK(fs::exists(run / "curves.png"));
        acc.push_back(final_accuracy(run));
        bytes += double(fs::file_size(run / "deltas.safetensors")) / 2;
      }
      const double mean = (acc[0] + acc[1]) / 2, sd = std::abs(acc[0] - acc[1]) / std::sqrt(2.0);  // sample std of 2
      mean_of_means += mean / 2;
      const std::vector<std::string>& row = csv.at(m.id).at(t.name);
      CHECK(row[2] == "2");
      CHECK(std::stod(row[3]) == doctest::Approx(mean).epsilon(1e-6));
      CHECK(std::stod(row[4]) == doctest::Approx(sd).epsilon(1e-6));
      CHECK(std::stod(row[6]) == doctest::Approx(bytes).epsilon(1e-6));
      if (m.id == "linear_probe") CHECK(row[5] == "51");  // the head: 16 x 3 weights + 3 biases
      CHECK(md.find(" " + percent(mean) + " ± " + percent(sd) + " |") != std::string::npos);
    }
    CHECK(std::stod(csv.at(m.id).at("mean")[3]) == doctest::Approx(mean_of_means).epsilon(1e-6));
    CHECK(md.find("| " + m.label + " |") != std::string::npos);
  }
  CHECK(std::stoll(csv.at("lora").at("mean")[5]) > 51);  // the LoRA factors train too
  data::DecodedImage png;
  REQUIRE(data::decode_image((fs::path(c.out) / "sweep.png").string(), 3, png) == "");
  CHECK(png.pixels == train::rasterize(train::sweep_figure(c, r.runs)).px);
  CHECK(test::slurp(fs::path(c.out) / "sweep.svg").find("<rect") != std::string::npos);

  // again: nothing retrains, nothing is rewritten but the table, which is the same
  const auto before = mtimes(c.out);
  const std::string csv_text = test::slurp(fs::path(c.out) / "sweep.csv");
  REQUIRE(before.size() == 16);
  const train::SweepResult again = train::run_sweep(c);
  CHECK(again.trained == 0);
  CHECK(again.resumed == 0);
  CHECK(again.skipped == 8);
  CHECK(mtimes(c.out) == before);
  CHECK(test::slurp(fs::path(c.out) / "sweep.csv") == csv_text);
  CHECK(test::slurp(fs::path(c.out) / "sweep.md") == md);

  // a finished run trained otherwise is not silently counted
  train::SweepConfig longer = c;
  longer.base.epochs = 3;
  CHECK_THROWS_WITH(train::run_sweep(longer), doctest::Contains("epochs: 2 then, 3 now"));
}

TEST_CASE("sweep: an interrupted sweep resumes its interrupted run and ends as an uninterrupted one") {
  Setup whole = setup("whole"), cut = setup("cut");
  whole.config.seeds = cut.config.seeds = 1;
  whole.config.tasks.resize(1), cut.config.tasks.resize(1);
  train::run_sweep(whole.config);
  cut.config.base.max_steps = 4;  // the first run stops after 4 steps: 3 a epoch, so inside its second
  const train::SweepResult stopped = train::run_sweep(cut.config);
  CHECK(stopped.interrupted);
  REQUIRE(stopped.runs.size() == 1);
  CHECK(stopped.runs[0].status == train::SweepRun::Status::Interrupted);
  const fs::path first = fs::path(cut.config.out) / "stripes" / "linear_probe" / "seed0";
  CHECK(fs::exists(first / "checkpoint.safetensors"));
  CHECK_FALSE(fs::exists(first / "sweep_run.json"));
  CHECK(test::slurp(fs::path(cut.config.out) / "sweep.md").find("| linear probe | - |") != std::string::npos);

  cut.config.base.max_steps = 0;
  const train::SweepResult resumed = train::run_sweep(cut.config);
  CHECK(resumed.resumed == 1);
  CHECK(resumed.trained == 1);
  CHECK_FALSE(resumed.interrupted);
  // the images differ between the two setups only in their folder, so the runs are the same runs
  for (const char* m : {"linear_probe", "lora"}) {
    const fs::path a = fs::path(whole.config.out) / "stripes" / m / "seed0", b = fs::path(cut.config.out) / "stripes" / m / "seed0";
    CHECK_MESSAGE(test::slurp(a / "metrics.csv") == test::slurp(b / "metrics.csv"), m);
  }
  const auto whole_csv = read_csv(fs::path(whole.config.out) / "sweep.csv"), cut_csv = read_csv(fs::path(cut.config.out) / "sweep.csv");
  CHECK(whole_csv.at("linear_probe").at("stripes")[3] == cut_csv.at("linear_probe").at("stripes")[3]);
}

TEST_CASE("sweep: the CLI runs a sweep; bad options name the option") {
  Setup s = setup("cli");
  const std::string common = " --model-config " + (s.dir / "model.json").string() + " --epochs 1 --batch 8 --augment pad-crop --quiet";
  const std::string tasks = " --tasks " + (s.dir / "stripes").string() + ":val=0.25 " + (s.dir / "more").string() + ":val=0.25";
  const fs::path out = s.dir / "cli_sweep";
  test::Cli ok = test::run_cli("sweep" + tasks + " --methods linear_probe --seeds 1 --out " + out.string() + common, "sweep");
  CHECK_MESSAGE(ok.code == 0, ok.err);
  CHECK(ok.out.find("2 trained, 0 resumed, 0 skipped") != std::string::npos);
  for (const char* f : {"sweep.md", "sweep.csv", "sweep.svg", "sweep.png"}) CHECK_MESSAGE(fs::exists(out / f), f);
  CHECK(fs::exists(out / "more" / "linear_probe" / "seed0" / "deltas.safetensors"));

  test::Cli bad = test::run_cli("sweep" + tasks + " --methods lora,nope --out " + out.string() + common, "sweep");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--methods: unknown 'nope' (known: linear_probe, full") != std::string::npos);
  bad = test::run_cli("sweep --tasks " + (s.dir / "missing").string() + " --methods lora --out " + out.string() + common, "sweep");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--tasks: '" + (s.dir / "missing").string() + "' is not a folder") != std::string::npos);
  bad = test::run_cli("sweep" + tasks + " --methods lora --seeds 0 --out " + out.string() + common, "sweep");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("option --seeds: '0' is not a whole number in 1..1000") != std::string::npos);
  bad = test::run_cli("sweep" + tasks + " --out " + out.string() + common, "sweep");
  CHECK(bad.err.find("missing required option --methods") != std::string::npos);
}

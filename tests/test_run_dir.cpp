// The run directory keeps a user's results: resume reads and writes the dir it is given,
// checks what it resumes onto, one run writes a dir at a time, a resumed run's files equal an
// uninterrupted run's (kill -9 included), NaN stops name only good checkpoints.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "nn/vit.h"
#include "tests/test_util.h"
#include "tests/train_util.h"
#include "train/run_dir.h"
#include "train/trainer.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path tmpdir(const std::string& name) { return test::fresh_dir("rundir", name); }
const std::string kCli = std::string(DG_BUILD_DIR) + "/tools/deltagrad";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs a shell command; its exit code, stdout+stderr in *out.
int sh(const std::string& cmd, std::string* out = nullptr) {
  const fs::path log = fs::temp_directory_path() / ("dg_rundir_sh_" + std::to_string(::getpid()) + ".txt");
  const int rc = std::system((cmd + " > " + log.string() + " 2>&1").c_str());
  if (out) *out = slurp(log);
  fs::remove(log);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

void write_run_config(const fs::path& file, const train::RunConfig& rc) { std::ofstream(file) << train::to_json(rc).dump(2); }

train::TrainResult fit(const train::RunConfig& rc, bool resume = false) {
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  train::Trainer t(rc, tr, va);
  return t.fit(resume);
}

// The same ViT the small run builds, with its own random weights, saved as a model file.
fs::path save_weights(const train::RunConfig& rc, uint64_t seed, const fs::path& file) {
  nn::ViTConfig mc = nn::load_vit_config(rc.model_config);
  nn::VisionTransformer m(mc);
  m.init_weights(seed);
  save_safetensors(file.string(), nn::state_dict(m));
  return file;
}

}  // namespace

TEST_CASE("run dir: --resume DIR reads and writes DIR, wherever it lives and whatever out it recorded") {
  fs::path base = tmpdir("in_place"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig rc = test::small_run(folder, base / "x");
  rc.max_steps = 7;  // stops in epoch 2, as Ctrl-C would
  write_run_config(base / "rc.json", rc);
  // rA, with a relative out, made from `base`
  REQUIRE(sh("cd " + base.string() + " && " + kCli + " train --config rc.json --out rA") == 130);
  // cp -r rA rB; rB is to train 5 epochs, without the step limit
  fs::copy(base / "rA", base / "rB", fs::copy_options::recursive);
  json rb = json::parse(slurp(base / "rB" / "run_config.json"));
  CHECK(rb["out"] == "rA");
  rb["epochs"] = 5, rb["max_steps"] = 0;
  std::ofstream(base / "rB" / "run_config.json") << rb.dump(2);
  std::map<std::string, std::string> a_before;
  for (auto& f : fs::directory_iterator(base / "rA")) a_before[f.path().filename()] = slurp(f.path());
  // resumed from another working directory, with a relative path
  fs::create_directories(base / "elsewhere");
  std::string out;
  REQUIRE(sh("cd " + (base / "elsewhere").string() + " && " + kCli + " train --resume ../rB", &out) == 0);
  INFO(out);
  CHECK(out.find("resuming ../rB at epoch 2/5 step 2/5") != std::string::npos);  // the one line: where, base, data
  CHECK(out.find("data '" + folder.string() + ":val=0.25'") != std::string::npos);
  std::map<std::string, std::string> a_after;
  for (auto& f : fs::directory_iterator(base / "rA")) a_after[f.path().filename()] = slurp(f.path());
  CHECK(a_after == a_before);                           // rA untouched
  CHECK(fs::is_empty(base / "elsewhere"));              // no stray run dir
  CHECK(fs::exists(base / "rB" / "deltas.safetensors"));  // rB finished, in rB
  const std::string csv = slurp(base / "rB" / "metrics.csv");
  CHECK(csv.find("\nepoch,5,25,") != std::string::npos);
  CHECK(json::parse(slurp(base / "rB" / "run_config.json"))["out"] == "../rB");
  // --out naming another dir beside --resume is refused
  CHECK(sh("cd " + base.string() + " && " + kCli + " train --resume rB --out rA", &out) == 2);
  CHECK(out.find("--resume continues 'rB' in place") != std::string::npos);
}

TEST_CASE("run dir: resume refuses other base weights, model, PEFT config, data or batch, naming both") {
  fs::path base = tmpdir("identity"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig rc = test::small_run(folder, base / "run");
  rc.model = save_weights(rc, 1, base / "w1.safetensors").string();
  save_weights(rc, 2, base / "w2.safetensors");  // same names and shapes, other values
  rc.max_steps = 3;
  REQUIRE(fit(rc).interrupted);
  rc.max_steps = 0;
  auto refused = [&](train::RunConfig c, const std::string& what) {
    INFO(what);
    CHECK_THROWS_WITH_AS(fit(c, true), doctest::Contains(what.c_str()), Error);
  };
  train::RunConfig c = rc;
  c.model = (base / "w2.safetensors").string();
  refused(c, "it was trained on the base weights '" + rc.model + "' (content hash ");
  refused(c, "the run now starts from '" + c.model + "' (content hash ");
  c.model = "";
  refused(c, "the run now starts from a random initialisation (seed 5)");
  c = rc;
  c.data = folder.string() + ":val=0.5";
  refused(c, "it was trained with data \"" + rc.data + "\", the run now has data \"" + c.data + "\"");
  c = rc;
  c.batch = 4;
  refused(c, "it was trained with batch 8, the run now has batch 4");
  c = rc;
  c.peft["deltas"][0]["r"] = 4;
  refused(c, "it was trained with peft ");
  // the same weights under another name resume (a moved file)
  fs::copy_file(rc.model, base / "moved.safetensors");
  c = rc;
  c.model = (base / "moved.safetensors").string();
  train::TrainResult r = fit(c, true);
  CHECK(r.epochs.size() == 4);
}

TEST_CASE("run dir: a second run on a locked run dir is refused with exit 2; a dead run's lock is taken over") {
  fs::path base = tmpdir("lock"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig rc = test::small_run(folder, base / "run");
  write_run_config(base / "rc.json", rc);
  fs::create_directories(base / "run");
  {
    train::RunDirLock held((base / "run").string());
    CHECK(slurp(base / "run" / "run.lock") == std::to_string(::getpid()) + "\n");
    std::string out;
    CHECK(sh(kCli + " train --config " + (base / "rc.json").string(), &out) == 2);
    CHECK(out.find("run dir '" + (base / "run").string() + "' is in use by another run (process " +
                   std::to_string(::getpid())) != std::string::npos);
    CHECK_THROWS_WITH_AS(train::RunDirLock((base / "run").string()), doctest::Contains("is in use by another run"),
                         Error);
    CHECK_THROWS_WITH_AS(fit(rc), doctest::Contains("is in use by another run"), Error);
    CHECK(!fs::exists(base / "run" / "metrics.csv"));  // the refused runs wrote nothing
  }
  CHECK(slurp(base / "run" / "run.lock").empty());  // released cleanly: no pid left
  // a lock file that names a process which does not hold the lock (killed): taken over
  std::ofstream(base / "run" / "run.lock") << "4194999\n";
  std::string out;
  CHECK(sh(kCli + " train --config " + (base / "rc.json").string(), &out) == 0);
  CHECK(out.find("taking over the lock of '" + (base / "run").string() + "' from process 4194999") != std::string::npos);
  CHECK(fs::exists(base / "run" / "deltas.safetensors"));
}

TEST_CASE("run dir: a resume cuts metrics.csv back to the checkpoint and keeps the epoch's running sums") {
  fs::path base = tmpdir("metrics"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig full = test::small_run(folder, base / "full");
  fit(full);
  for (int64_t stop : {7, 5, 10}) {  // mid-epoch, the last step of an epoch (5 steps each), and again
    INFO("interrupted after ", stop, " steps");
    train::RunConfig rc = test::small_run(folder, base / ("split" + std::to_string(stop)));
    rc.max_steps = stop;
    REQUIRE(fit(rc).interrupted);
    // what a kill -9 after the checkpoint leaves: rows past it, the last one torn
    std::ofstream(base / ("split" + std::to_string(stop)) / "metrics.csv", std::ios::app)
        << "step,3," << stop << ",0.99,,0.01,\nstep,3," << stop + 1 << ",0.98,,0.01,\nepoch,3,15,0.5,0.5,0.01,0.5\nstep,3,1";
    rc.max_steps = 0;
    fit(rc, true);
    CHECK(slurp(rc.out + "/metrics.csv") == slurp(full.out + "/metrics.csv"));  // row for row, epoch sums included
    CHECK(slurp(rc.out + "/deltas.safetensors") == slurp(full.out + "/deltas.safetensors"));
  }
  // the cut itself: complete rows before the position only
  const std::string text = std::string(train::MetricsLog::kHeader) +
                           "\nstep,1,0,1,,1,\nstep,1,1,1,,1,\nepoch,1,2,1,1,1,1\nstep,2,2,1,,1,\nstep,2,3,1,,1,\nstep,2,4,";
  int64_t dropped = 0;
  CHECK(train::metrics_rows_before(text, {1, 1, 0, 0, 0}, 2, &dropped) ==
        std::string(train::MetricsLog::kHeader) + "\nstep,1,0,1,,1,\nstep,1,1,1,,1,\nepoch,1,2,1,1,1,1\nstep,2,2,1,,1,\n");
  CHECK(dropped == 2);
  CHECK(train::metrics_rows_before(text, {0, 2, 0, 0, 0}, 2, &dropped) ==
        std::string(train::MetricsLog::kHeader) + "\nstep,1,0,1,,1,\nstep,1,1,1,,1,\n");
  // rows out of sequence (a duplicate, a gap) cannot come from one run: dropped
  CHECK(train::metrics_rows_before(std::string(train::MetricsLog::kHeader) + "\nstep,1,0,1,,1,\nstep,1,0,1,,1,\nstep,1,2,1,,1,\n",
                                   {0, 2, 0, 0, 0}, 2, &dropped) ==
        std::string(train::MetricsLog::kHeader) + "\nstep,1,0,1,,1,\n");
  CHECK(dropped == 2);
}

TEST_CASE("run dir: kill -9 with --checkpoint-every, then --resume: the run dir equals an uninterrupted run's") {
  fs::path base = tmpdir("kill9"), folder = test::make_stripes_folder(base / "images", 64);
  train::RunConfig rc = test::small_run(folder, base / "x");
  rc.epochs = 16;  // 18 steps an epoch (144 training images): long enough to be killed in the middle
  write_run_config(base / "rc.json", rc);
  // The reference and the killed run use Eigen's GEMM (forced); the resume runs without the
  // variable, so only the checkpoint's record of the kernels makes it compute as they did.
  REQUIRE(sh("DG_CPU_GEMM=eigen " + kCli + " train --config " + (base / "rc.json").string() + " --out " +
             (base / "ref").string()) == 0);
  const std::string ref_csv = slurp(base / "ref" / "metrics.csv");
  REQUIRE(ref_csv.find("\nepoch,1,18,") != std::string::npos);
  const fs::path vic = base / "victim";
  std::vector<std::string> env_strings{"DG_CPU_GEMM=eigen"};
  for (char** e = environ; *e; ++e)
    if (std::string(*e).rfind("DG_CPU_GEMM=", 0) != 0) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::freopen("/dev/null", "w", stdout);
    ::execle(kCli.c_str(), kCli.c_str(), "train", "--config", (base / "rc.json").c_str(), "--out", vic.c_str(),
             "--checkpoint-every", "5", "--quiet", (char*)nullptr, envp.data());
    ::_exit(127);
  }
  // kill it once a hundred rows are on disk (a checkpoint's flush puts them there)
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const std::string now = slurp(vic / "metrics.csv");
    if (std::count(now.begin(), now.end(), '\n') >= 120) break;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(120)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(!fs::exists(vic / "deltas.safetensors"));  // killed before the end
  SafeTensors ck = load_safetensors((vic / "checkpoint.safetensors").string());
  const int64_t at = std::stoll(ck.metadata.at("epoch")) * 18 + std::stoll(ck.metadata.at("step"));
  MESSAGE("killed with the checkpoint at global step ", at, " of ", 16 * 18);
  CHECK(at > 0);
  CHECK((at % 5 == 0 || at % 18 == 0));  // every 5 steps or at an epoch's end
  CHECK(ck.metadata.at("kernel_choice") == "gemm eigen;eigen,eigen,eigen,eigen");
  std::string out;
  CHECK(sh("env -u DG_CPU_GEMM " + kCli + " train --resume " + vic.string(), &out) == 0);
  CHECK(slurp(vic / "metrics.csv") == ref_csv);
  CHECK(slurp(vic / "deltas.safetensors") == slurp(base / "ref" / "deltas.safetensors"));
  // resuming the finished run says so and changes nothing
  CHECK(sh(kCli + " train --resume " + vic.string(), &out) == 0);
  CHECK(out.find("is already finished (16 of 16 epochs)") != std::string::npos);
  CHECK(slurp(vic / "metrics.csv") == ref_csv);
}

TEST_CASE("run dir: the NaN/Inf stop names only a checkpoint that exists and is finite") {
  fs::path base = tmpdir("nan"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig rc = test::small_run(folder, base / "run");
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  data::ImageSet poisoned = tr;
  poisoned.images = tr.images.clone();
  for (int64_t i = 0; i < poisoned.size(); ++i) poisoned.images.data<float>()[i * 144 + 5] = std::nanf("");
  {  // NaN before any checkpoint: none is named, none exists
    train::Trainer t(rc, poisoned, va);
    CHECK_THROWS_WITH_AS(t.fit(), doctest::Contains("the loss is nan at epoch 1 step 0 (no checkpoint was written yet)"),
                         Error);
    CHECK(!fs::exists(base / "run" / "checkpoint.safetensors"));
  }
  // a checkpoint holding a NaN is refused on load, naming the tensor
  rc.max_steps = 3;
  REQUIRE(fit(rc).interrupted);
  const std::string ckpt = rc.out + "/checkpoint.safetensors";
  SafeTensors st = load_safetensors(ckpt);
  std::string victim;
  for (auto& [k, t] : st.tensors)
    if (k.rfind("param.", 0) == 0) {
      t.data<float>()[0] = INFINITY;
      victim = k;
      break;
    }
  save_safetensors(ckpt, st.tensors, st.metadata);
  rc.max_steps = 0;
  CHECK_THROWS_WITH_AS(fit(rc, true),
                       doctest::Contains(("checkpoint '" + ckpt + "' cannot be resumed: '" + victim + "' contains NaN or Inf").c_str()),
                       Error);
  // a non-finite parameter is never checkpointed; the message names the last good one
  nn::NamedTensors params{{"head.weight", Tensor::full({2, 2}, NAN)}};
  CHECK_THROWS_WITH_AS(train::check_finite(params, "stop"), doctest::Contains("stop: 'head.weight' contains NaN or Inf"),
                       Error);
  // an infinite learning rate is refused before anything runs
  json j = train::to_json(rc);
  j["lr"] = INFINITY;
  CHECK_THROWS_WITH_AS(train::run_config_from_json(j), doctest::Contains("key 'lr' must be a finite number"), Error);
  // no checkpoint at all: resume says so
  train::RunConfig fresh = test::small_run(folder, base / "never");
  fs::create_directories(fresh.out);
  CHECK_THROWS_WITH_AS(fit(fresh, true), doctest::Contains("it has no checkpoint.safetensors"), Error);
}

TEST_CASE("run dir: checkpoints are due every N steps and after M minutes") {
  CHECK(train::checkpoint_due(10, 5, 0, 0));
  CHECK(!train::checkpoint_due(11, 5, 0, 1e9));
  CHECK(train::checkpoint_due(11, 0, 2, 120));
  CHECK(!train::checkpoint_due(11, 0, 2, 119));
  CHECK(!train::checkpoint_due(11, 0, 0, 1e9));
  // a run with both: its checkpoint after an interruption resumes exactly (the kill -9 test does it for steps)
  fs::path base = tmpdir("every"), folder = test::make_stripes_folder(base / "images");
  train::RunConfig rc = test::small_run(folder, base / "run");
  rc.checkpoint_every = 2;
  rc.checkpoint_minutes = 1e-6;
  train::TrainResult r = fit(rc);
  CHECK(r.epochs.size() == 4);
  json j = train::to_json(rc);
  j["checkpoint_every"] = -1;
  CHECK_THROWS_WITH_AS(train::run_config_from_json(j), doctest::Contains("checkpoint_every"), Error);
}

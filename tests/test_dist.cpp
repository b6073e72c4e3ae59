// Data-parallel training (train/trainer.h, core/comm.h): `mpirun -np 2|3|4 deltagrad train` equals
// one process at the same global batch (also where the batch does not divide by the ranks), the
// overlapped all-reduce gives the bits of --no-overlap, a bad file on one rank ends both ranks with
// its message, and a run resumes on another number of ranks. Needs a build with MPI and mpirun on PATH
// (libopenmpi-dev, openmpi-bin); skips with one line otherwise. The NCCL comm's 1-rank all-reduce
// runs where a GPU is present. The batch sharding is tested in one process (every build); the
// gradient buckets in tests/test_grad_buckets.cpp.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/comm.h"
#include "core/safetensors.h"
#include "data/loader.h"
#include "cuda/cuda_api.h"
#include "tests/dist_util.h"
#include "tests/test_util.h"
#include "tests/train_util.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

using test::kCli, test::mpi_missing, test::mpirun, test::Ran, test::sh;

namespace {

// The tiny run: 36 training images of 12x12, a 2-block ViT with LoRA r=2 and the head, global
// batch 7 (6 steps an epoch; the last holds 1 image, so one of 2 ranks has none), 4 epochs.
// No dropout or drop-path: their draws are per rank (trainer.h says why).
struct Setup {
  fs::path dir, data, model_config, peft, run_config;
};
Setup make_setup(const std::string& name, int64_t max_steps = 0, const json& extra = json::object()) {
  Setup s;
  s.dir = test::fresh_dir("dist", name);
  s.data = test::make_stripes_folder(s.dir / "data", 16);
  s.model_config = s.dir / "model.json";
  std::ofstream(s.model_config) << json{{"img_size", 12}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16},
                                        {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}, {"mean", {0.3}},
                                        {"std", {0.3}}}.dump();
  s.run_config = s.dir / "run.json";
  json rc{{"model_config", s.model_config.string()},
          {"peft", {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}}}}, {"trainable", {"head.*"}}}},
          {"data", s.data.string() + ":val=0.25"}, {"epochs", 4}, {"batch", 7},
          {"lr", 1e-2}, {"seed", 5}, {"pad", 1}, {"augment", "pad-crop"},
          {"quiet", true}, {"max_steps", max_steps}};
  rc.update(extra);
  std::ofstream(s.run_config) << rc.dump();
  return s;
}
std::string train_args(const Setup& s, const fs::path& out) {
  return " train --config " + s.run_config.string() + " --out " + out.string();
}

// metrics.csv's step losses, in order.
std::vector<double> step_losses(const fs::path& run) {
  std::vector<double> v;
  std::ifstream in(run / "metrics.csv");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("step,", 0) == 0) {
      std::vector<std::string> f;
      size_t a = 0, b;
      while ((b = line.find(',', a)) != std::string::npos) f.push_back(line.substr(a, b - a)), a = b + 1;
      v.push_back(std::stod(f.at(3)));
    }
  return v;
}

// Both runs' `steps` step losses within 1e-6 relative and their delta files within a
// thousandth of one step's update.
void check_same_run(const fs::path& a, const fs::path& b, size_t steps = 24) {
  const std::vector<double> la = step_losses(a), lb = step_losses(b);
  REQUIRE(la.size() == steps);
  REQUIRE(lb.size() == la.size());
  double worst = 0;
  for (size_t i = 0; i < la.size(); ++i) worst = std::max(worst, std::abs(la[i] - lb[i]) / std::abs(lb[i]));
  MESSAGE("largest relative difference of the " << steps << " step losses: " << worst);
  CHECK(worst < 1e-6);
  SafeTensors da = load_safetensors((a / "deltas.safetensors").string());
  SafeTensors db = load_safetensors((b / "deltas.safetensors").string());
  REQUIRE(da.tensors.size() == db.tensors.size());
  REQUIRE(da.tensors.size() >= 4);  // LoRA A and B of 2 blocks' qkv, the head
  // The two runs split the batch's GEMMs differently (rows per rank), so the sums round
  // differently, and AdamW's g / sqrt(v) carries a relative rounding difference of a gradient into
  // the update at the update's own size (lr = 1e-2 a step here). Bound: a thousandth of one step's
  // update (measured 1.5e-6 with LoRA's B product accumulated into the base output, 4.7e-7 before).
  double dmax = 0;
  for (auto& [n, t] : db.tensors) {
    REQUIRE(da.tensors.count(n) == 1);
    std::vector<double> x = da.tensors.at(n).to_vector(), y = t.to_vector();
    REQUIRE(x.size() == y.size());
    for (size_t i = 0; i < x.size(); ++i) dmax = std::max(dmax, std::abs(x[i] - y[i]));
  }
  MESSAGE("largest difference of the final deltas: " << dmax);
  CHECK(dmax < 1e-3 * 1e-2);
}

// Both runs' step losses and final deltas, to the bit.
void check_same_bits(const fs::path& a, const fs::path& b, size_t steps) {
  const std::vector<double> la = step_losses(a), lb = step_losses(b);
  REQUIRE(la.size() == steps);
  CHECK(la == lb);  // every step's loss, to the bit
  SafeTensors da = load_safetensors((a / "deltas.safetensors").string());
  SafeTensors db = load_safetensors((b / "deltas.safetensors").string());
  REQUIRE(da.tensors.size() == db.tensors.size());
  REQUIRE(da.tensors.size() >= 4);
  for (auto& [n, t] : db.tensors) {
    REQUIRE(da.tensors.count(n) == 1);
    INFO(n);
    CHECK(da.tensors.at(n).to_vector() == t.to_vector());  // the final deltas, to the bit
  }
}

// The number after `key` in `text` (-1 when absent).
double number_after(const std::string& text, const std::string& key) {
  const size_t at = text.find(key);
  return at == std::string::npos ? -1 : std::stod(text.substr(at + key.size()));
}

}  // namespace

TEST_CASE("dist: mpirun -np 2 trains as one process does at the same global batch, and says what it all-reduces") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  const Setup s = make_setup("equal");
  const Ran one = sh("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 " + kCli + train_args(s, s.dir / "one"), s.dir / "one.log");
  REQUIRE_MESSAGE(one.code == 0, one.out);
  const fs::path cfg = s.dir / "run_loud.json";  // not quiet: the data-parallel line is printed
  json rc = json::parse(test::slurp(s.run_config));
  rc["quiet"] = false;
  std::ofstream(cfg) << rc.dump();
  const Ran two = sh(mpirun(120) + "-np 2 " + kCli + " train --config " + cfg.string() + " --out " +
                         (s.dir / "two").string(), s.dir / "two.log");
  REQUIRE_MESSAGE(two.code == 0, two.out);
  MESSAGE("wall time (tiny run, 24 steps, mostly start-up): 1 process " << one.seconds << " s, 2 ranks " << two.seconds
                                                                       << " s");
  // 2 blocks x LoRA r=2 on qkv (A 2x16, B 48x2) + head 3x16 + 3 = 2 * 128 + 51 = 307 floats
  CHECK(two.out.find("data parallel: 2 ranks (mpi), global batch 7") != std::string::npos);
  CHECK(two.out.find("307 trainable gradient floats = 1228 bytes in 1 bucket started during backward (cap 25 MiB)") !=
        std::string::npos);
  CHECK(two.out.find("gradient all-reduce after backward: ") != std::string::npos);
  CHECK(two.out.find("epoch 4: train loss") != std::string::npos);
  check_same_run(s.dir / "two", s.dir / "one");
  // rank 0 alone wrote the run dir: one metrics log, its rows once
  CHECK(step_losses(s.dir / "two").size() == 24);
}

TEST_CASE("dist: the all-reduce overlapped with backward in several buckets gives the same bits as after it") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  // a cap of 256 bytes cuts the 307 floats (LoRA A 32, B 96 per block, head 48 + 3) into 5 buckets
  const Setup s = make_setup("overlap", 0, {{"epochs", 2}, {"bucket_mb", 1.0 / 4096}, {"quiet", false}});
  const Ran on = sh(mpirun(60) + "-np 2 " + kCli + train_args(s, s.dir / "on"), s.dir / "on.log");
  REQUIRE_MESSAGE(on.code == 0, on.out);
  const Ran off = sh(mpirun(60) + "-np 2 " + kCli + train_args(s, s.dir / "off") + " --no-overlap", s.dir / "off.log");
  REQUIRE_MESSAGE(off.code == 0, off.out);
  const size_t at = on.out.find("1228 bytes in ");
  REQUIRE_MESSAGE(at != std::string::npos, on.out);
  const int buckets = std::stoi(on.out.substr(at + 14));
  MESSAGE("buckets: " << buckets << "; after backward: " << on.out.substr(on.out.find("gradient all-reduce after")));
  CHECK(buckets == 5);
  CHECK(on.out.find("buckets started during backward") != std::string::npos);
  const size_t early = on.out.find("5 buckets, ");  // "..., N of them started during backward" (rank 0's mean)
  REQUIRE(early != std::string::npos);
  CHECK(std::stod(on.out.substr(early + 11)) > 0);
  CHECK(off.out.find("in one bucket after backward (no overlap)") != std::string::npos);
  CHECK(off.out.find("; not overlapped)") != std::string::npos);
  // after step 1 the buckets are cut in the order its backward finished the gradients
  CHECK(on.out.find("in the order its backward finished the gradients, 5 buckets (were 5;") != std::string::npos);
  check_same_bits(s.dir / "on", s.dir / "off", 12);
}

namespace {
// 3 and 4 ranks (one thread each, on 2 cores): overlapped in several buckets against --no-overlap
// (same bits), and against one process at the same global batch, whose slices per rank differ
// by one (3 ranks, batch 8: 2/3/3, the epoch's last batch of 4: 1/1/2; 4 ranks, batch 7:
// 1/2/2/2, the last batch of 1 leaves three ranks with nothing). Each rank's gradient is
// weighted by its share, so the sum is the global batch's mean whatever the split.
void check_ranks(int ranks, int64_t batch, int64_t epochs, const json& peft, const std::string& per_rank) {
  const Setup s = make_setup("ranks" + std::to_string(ranks), 0,
                             {{"batch", batch}, {"epochs", epochs}, {"bucket_mb", 1.0 / 4096}, {"peft", peft}, {"quiet", false}});
  const size_t steps = size_t(epochs * ((36 + batch - 1) / batch));  // 36 training images
  const Ran one = sh("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 " + kCli + train_args(s, s.dir / "one"), s.dir / "one.log");
  REQUIRE_MESSAGE(one.code == 0, one.out);
  const std::string np = mpirun(60) + "-np " + std::to_string(ranks) + " " + kCli;
  const Ran on = sh(np + train_args(s, s.dir / "on"), s.dir / "on.log");
  REQUIRE_MESSAGE(on.code == 0, on.out);
  const Ran off = sh(np + train_args(s, s.dir / "off") + " --no-overlap", s.dir / "off.log");
  REQUIRE_MESSAGE(off.code == 0, off.out);
  MESSAGE("wall time: 1 process " << one.seconds << " s, " << ranks << " ranks overlapped " << on.seconds
                                  << " s, not overlapped " << off.seconds << " s");
  CHECK(on.out.find(str("data parallel: ", ranks, " ranks (mpi), global batch ", batch, " (", per_rank, " per rank)")) !=
        std::string::npos);
  const double buckets = number_after(on.out, " bytes in ");
  MESSAGE("buckets: " << buckets << "; " << on.out.substr(std::min(on.out.size(), on.out.find("gradient buckets after"))));
  CHECK(buckets >= 4);
  // rank 0's first step counts its held-back buckets; the run's mean says none was held after the rebuild
  const double held_first = number_after(on.out, "started during backward, ");
  const double held_mean = number_after(on.out, "of them started during backward, ");
  REQUIRE(held_first >= 0);
  REQUIRE(held_mean >= 0);
  CHECK(std::abs(held_mean * double(steps) - held_first) < 1e-3);
  check_same_bits(s.dir / "on", s.dir / "off", steps);
  check_same_run(s.dir / "on", s.dir / "one", steps);
}

const json kLora = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}}}}, {"trainable", {"head.*"}}};

}  // namespace

TEST_CASE("dist: 3 ranks at global batch 8 (2/3/3 per rank) train as one process; overlapped = --no-overlap bits") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  // two deltas per block: registration order (LoRA, then the adapter) is not backward's
  const json peft = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}},
                                 {{"name", "aplus"}, {"method", "adapter_plus"}, {"dim", 2}, {"drop_path", 0}}}},
                     {"trainable", {"head.*"}}};
  check_ranks(3, 8, 3, peft, "2 or 3");
}

TEST_CASE("dist: 4 ranks at global batch 7 (1/2/2/2 per rank) train as one process; overlapped = --no-overlap bits") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  check_ranks(4, 7, 2, kLora, "1 or 2");
}

TEST_CASE("dist: a bad file on one rank ends every rank with its message, without a hang") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  const Setup s = make_setup("corrupt");
  // two working directories with the same relative file: rank 1's is not JSON
  fs::create_directories(s.dir / "r0"), fs::create_directories(s.dir / "r1");
  fs::copy_file(s.model_config, s.dir / "r0" / "vit.json");
  std::ofstream(s.dir / "r1" / "vit.json") << "{\"img_size\": 12, \"patch_";
  const std::string rest = " train --model-config vit.json --data " + s.data.string() +
                           ":val=0.25 --batch 7 --epochs 1 --quiet --out " + (s.dir / "run").string();
  const Ran r = sh(mpirun(60) + "-np 1 -wdir " + (s.dir / "r0").string() + " " + kCli + rest + " : -np 1 -wdir " +
                       (s.dir / "r1").string() + " " + kCli + rest, s.dir / "log");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.code != 124);  // not the timeout: the other rank did not wait for ever
  CHECK(r.out.find("vit.json") != std::string::npos);
  CHECK(r.out.find("rank 1 of 2 failed: stopping every rank") != std::string::npos);
  CHECK(!fs::exists(s.dir / "run" / "deltas.safetensors"));
}

TEST_CASE("dist: ranks started with different run configs stop at the start, naming the difference") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  const Setup s = make_setup("mismatch");
  const std::string run = train_args(s, s.dir / "run");
  const Ran r = sh(mpirun(60) + "-np 1 " + kCli + run + " --lr 0.01 : -np 1 " + kCli + run + " --lr 0.02", s.dir / "log");
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(r.code != 124);
  CHECK(r.out.find("rank 1 was started with another run than rank 0: lr is 0.02 here, 0.01 on rank 0") !=
        std::string::npos);
  CHECK(!fs::exists(s.dir / "run" / "metrics.csv"));  // stopped before rank 0 wrote anything
}

TEST_CASE("dist: a run resumes on another number of ranks (2 -> 1 -> 2) and ends as the uninterrupted run") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  // 9 steps per process; not quiet: the bucket rebuild is printed
  const Setup whole = make_setup("resume_ref"), s = make_setup("resume", 9, {{"quiet", false}});
  REQUIRE(sh(kCli + train_args(whole, whole.dir / "run"), whole.dir / "log").code == 0);
  const fs::path run = s.dir / "run";
  const Ran a = sh(mpirun(120) + "-np 2 " + kCli + train_args(s, run), s.dir / "a.log");
  REQUIRE_MESSAGE(a.code == 130, a.out);  // stopped after 9 steps, checkpoint written
  CHECK(step_losses(run).size() == 9);
  const Ran b = sh(kCli + " train --resume " + run.string(), s.dir / "b.log");
  REQUIRE_MESSAGE(b.code == 130, b.out);  // 9 more on 1 process
  CHECK(step_losses(run).size() == 18);
  const Ran c = sh(mpirun(120) + "-np 2 " + kCli + " train --resume " + run.string(), s.dir / "c.log");
  REQUIRE_MESSAGE(c.code == 0, c.out);  // the last 6 on 2 ranks
  // the bucket order is not saved: each data-parallel part decides it again after its first step
  const std::string rebuilt = "gradient buckets after the first step: ";
  CHECK(a.out.find(rebuilt) != std::string::npos);
  CHECK(b.out.find(rebuilt) == std::string::npos);  // one process: nothing all-reduced, no buckets
  CHECK(c.out.find(rebuilt) != std::string::npos);
  check_same_run(run, whole.dir / "run");
}

TEST_CASE("dist: without a launcher the world is one process, and no MPI call is made") {
  // (this test binary is not started by mpirun)
  CHECK(launcher_size() == 1);
  Comm& w = world();
  CHECK(w.size() == 1);
  CHECK(w.rank() == 0);
  CHECK(w.backend_name() == "single");
  Tensor t = Tensor::from_vector(std::vector<float>{1.f, 2.f, 3.f}, {3});
  w.all_reduce_mean(t);
  CHECK(t.to_vector() == std::vector<double>{1, 2, 3});
}

// Named "cuda: ..." with the other GPU cases; scripts/gpu_run.sh runs it in a step of its own (nccl).
TEST_CASE("cuda: NCCL all-reduce on one GPU (one rank, the data-parallel comm)") {
  if (!nccl_built() || !cuda::device_present())
    return test::skip(std::string(nccl_built() ? "no GPU" : "this build has no NCCL") +
                      " (multi-GPU is modelled in bench/RESULTS.md)");
  std::unique_ptr<Comm> nccl = make_nccl_comm(world());
  CHECK(nccl->backend_name() == "nccl");
  CHECK(nccl->size() == 1);
  std::vector<float> v(300000);  // LoRA r=8 on vit_base's qkv: ~0.3 M floats a step
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 1000) * 0.5f - 7.f;
  Tensor t = Tensor::from_vector(v, {int64_t(v.size())}).to(Device::CUDA);
  nccl->all_reduce_sum(t);  // one rank: the sum is the tensor itself, through NCCL's ring
  std::vector<double> back = t.to(Device::CPU).to_vector();
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) worst = std::max(worst, std::abs(back[i] - double(v[i])));
  CHECK(worst == 0);
  MESSAGE("NCCL 1-rank all-reduce of " << v.size() << " floats on " << cuda::device_name() << ": exact");
}

TEST_CASE("dist: the shards of a global batch are its slices, in order, with the same crops and flips") {
  data::ImageSet set;
  const int64_t N = 23;
  std::vector<float> px(size_t(N * 8 * 8));
  for (size_t i = 0; i < px.size(); ++i) px[i] = float((i * 7919) % 101) / 100.f;
  set.images = Tensor::from_vector(px, {N, 1, 8, 8});
  std::vector<int64_t> lab(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) lab[size_t(i)] = i % 3;
  set.labels = Tensor::from_vector(lab, {N});
  set.num_classes = 3;
  data::LoaderOptions o;
  o.batch = 7, o.shuffle = true, o.pad = 2, o.hflip = true, o.seed = 11;
  data::DataLoader whole(set, o);
  for (int64_t shards : {2, 3}) {
    std::vector<std::unique_ptr<data::DataLoader>> parts;
    for (int64_t r = 0; r < shards; ++r) {
      data::LoaderOptions p = o;
      p.shard = r, p.shards = shards;
      parts.push_back(std::make_unique<data::DataLoader>(set, p));
      CHECK(parts.back()->batches_per_epoch() == whole.batches_per_epoch());
    }
    for (int64_t epoch : {0, 1})
      for (int64_t step = 0; step < whole.batches_per_epoch(); ++step) {  // the last global batch holds 2
        const data::Batch all = whole.make_batch(epoch, step);
        std::vector<double> images, labels;
        for (auto& part : parts) {
          const data::Batch b = part->make_batch(epoch, step);
          CHECK(b.global_size == all.labels.numel());
          for (double v : b.images.to_vector()) images.push_back(v);
          for (double v : b.labels.to_vector()) labels.push_back(v);
        }
        CHECK(images == all.images.to_vector());
        CHECK(labels == all.labels.to_vector());
      }
  }
  data::LoaderOptions bad = o;
  bad.shard = 2, bad.shards = 2;
  CHECK_THROWS_WITH_AS(data::DataLoader(set, bad), doctest::Contains("shard 2 of 2"), Error);
}

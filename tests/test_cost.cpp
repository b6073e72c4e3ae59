// The cost ledger (train/cost.h, `deltagrad cost`): its bytes add up to what the tape holds, its
// peak is within 10% of the allocator's, and its FLOPs are the GEMMs a step issues, counted here
// from the shapes by hand: a frozen weight's gradient GEMM is not among them.
#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"
#include "train/cost.h"

using namespace dg;

namespace {

train::CostLedger ledger(const nlohmann::json& peft, train::CostOptions o = {}) {
  nn::VisionTransformer m(nn::vit_preset("vit_mnist_28"));
  m.init_weights(0);
  peft::PeftModel pm(m, peft::parse_peft_config(peft));
  return train::cost_ledger(pm, o);
}

const train::CostRow& row(const train::CostLedger& L, const std::string& name) {
  for (const train::CostRow& r : L.rows)
    if (r.name == name) return r;
  FAIL("no row ", name);
  return L.total;
}

// What the ledger must satisfy whatever the method.
void check_consistent(const train::CostLedger& L) {
  int64_t act = 0, grads = 0;
  for (const train::CostRow& r : L.rows)
    if (r.kind != "site") act += r.activation_bytes, grads += r.grad_bytes;
  CHECK(act == L.total.activation_bytes);
  CHECK(grads == L.total.grad_bytes);
  CHECK(L.total.optimizer_bytes == 2 * L.total.grad_bytes);  // AdamW: exp_avg, exp_avg_sq
  REQUIRE(L.measured);
  // predicted saved bytes (each record's buffers, attributed once) == the tape's held bytes, exactly
  CHECK(L.total.activation_bytes + L.saved_param_bytes == L.measured_held_bytes);
  const double ratio = double(L.peak_bytes) / double(L.measured_peak_bytes);
  MESSAGE("peak predicted ", L.peak_bytes, " B, measured ", L.measured_peak_bytes, " B, ratio ", ratio);
  CHECK(ratio > 0.9);
  CHECK(ratio < 1.1);
}

// vit_mnist_28: 28 px, patch 4 (49 patches + class token), D 64, MLP 128, depth 4, 10 classes.
constexpr double B = 8, N = 49, T = 50, D = 64, H = 128, L = 4, P = 16, C = 10, R = 8;
// A block's forward GEMMs: qkv on every `keys` row, attention, proj and the MLP on the `rows` query
// rows. With 'token' pooling the last block computes the class token's row only (nn/vit.cpp).
constexpr double block(double rows, double keys) {
  return 2 * B * keys * D * 3 * D + 2 * B * rows * D * D + 2 * 2 * B * rows * D * H + 4 * B * rows * keys * D;
}
constexpr double kQkv = 2 * B * T * D * 3 * D, kProj = 2 * B * T * D * D, kFc = 2 * B * T * D * H;
constexpr double kAttn = 4 * B * T * T * D, kPatch = 2 * B * N * P * D, kHead = 2 * B * D * C;
constexpr double kProj1 = kProj / T, kFc1 = kFc / T, kAttn1 = kAttn / T;  // the last block's one row
constexpr double kForward = (L - 1) * block(T, T) + block(1, T) + kPatch + kHead;

}  // namespace

TEST_CASE("cost: full fine-tuning: FLOPs are the step's GEMMs, bytes match the tape and the allocator") {
  const train::CostLedger led = ledger({{"trainable", {"*"}}});
  check_consistent(led);
  const train::CostRow& base = row(led, "base");
  CHECK(base.forward_flops == doctest::Approx(kForward).epsilon(1e-12));
  // every Linear: input and weight gradients, but the patch embedding's input (the images) wants none;
  // the fused attention's backward recomputes the scores: 5 GEMMs for the forward's 2
  const double bwd = 2 * (L * kQkv + (L - 1) * (kProj + 2 * kFc) + kProj1 + 2 * kFc1 + kHead) + kPatch +
                     2.5 * ((L - 1) * kAttn + kAttn1);
  CHECK(base.backward_flops == doctest::Approx(bwd).epsilon(1e-12));
  int64_t params = 0;
  nn::VisionTransformer m(nn::vit_preset("vit_mnist_28"));
  for (auto& [n, p] : m.named_parameters()) params += p.numel();
  CHECK(base.trainable_params == params);
  CHECK(base.grad_bytes == 4 * params);
}

TEST_CASE("cost: LoRA: frozen weights' gradient GEMMs are skipped, the delta's GEMMs and bytes are its own") {
  const train::CostLedger led = ledger(nlohmann::json::parse(
      R"({"deltas": [{"name": "lora", "method": "lora", "r": 8, "lora_alpha": 8}], "trainable": ["head.*"]})"));
  check_consistent(led);
  const train::CostRow &base = row(led, "base"), &lora = row(led, "lora");
  CHECK(base.forward_flops == doctest::Approx(kForward).epsilon(1e-12));
  // the head's two gradients; in each block the input gradients only (block 0's qkv input wants
  // none: nothing below it trains), no weight gradient of a frozen Linear
  const double bwd = 2 * kHead + (L - 1) * (kProj + 2 * kFc + 2.5 * kAttn) + kProj1 + 2 * kFc1 + 2.5 * kAttn1 +
                     (L - 1) * kQkv;
  CHECK(base.backward_flops == doctest::Approx(bwd).epsilon(1e-12));
  const double down = 2 * B * T * D * R, up = 2 * B * T * R * 3 * D;  // x A^T, then (.) B^T on qkv
  CHECK(lora.forward_flops == doctest::Approx(L * (down + up)).epsilon(1e-12));
  // dB, d(mid), dA everywhere; dx through A above block 0
  CHECK(lora.backward_flops == doctest::Approx(L * (2 * up + down) + (L - 1) * down).epsilon(1e-12));
  CHECK(lora.trainable_params == int64_t(L * (R * D + 3 * D * R)));
  CHECK(base.trainable_params == int64_t(D * C + C));
  CHECK(lora.file_bytes == 4 * lora.trainable_params);
  int sites = 0;
  for (const train::CostRow& r : led.rows) sites += r.kind == "site" && r.name.rfind("lora@blocks.", 0) == 0;
  CHECK(sites == 4);
  CHECK(lora.activation_bytes > 0);
  CHECK(led.total.file_bytes > lora.file_bytes);  // the head and the header are the base row's
}

TEST_CASE("cost: VPT-deep: the prompt rows the next block replaces get keys and values only, as counted") {
  const train::CostLedger led = ledger(nlohmann::json::parse(
      R"({"deltas": [{"name": "vpt", "method": "vpt_deep", "num_tokens": 10}], "trainable": ["head.*"]})"));
  check_consistent(led);
  // blocks 0 .. L-2: qkv on all T + p rows, the rest on the T kept rows, attention T x (T + p);
  // the last block the class token's row only (no prompt replaces its rows, the pool reads row 0)
  constexpr double Tp = T + 10;
  const double fwd = (L - 1) * block(T, Tp) + block(1, Tp) + kPatch + kHead;
  CHECK(row(led, "base").forward_flops == doctest::Approx(fwd).epsilon(1e-12));
}

TEST_CASE("cost: bf16 halves the saved activations, recompute-mlp trades fc1's output for a GEMM in backward") {
  const nlohmann::json lora = nlohmann::json::parse(
      R"({"deltas": [{"name": "lora", "method": "lora", "r": 8, "lora_alpha": 8}], "trainable": ["head.*"]})");
  const train::CostLedger f32 = ledger(lora);
  train::CostOptions o;
  o.bf16 = true;
  const train::CostLedger bf16 = ledger(lora, o);
  check_consistent(bf16);
  // (not exactly: small statistics such as LayerNorm's mean/rstd and attention's log-sum-exp stay f32,
  // autograd/autocast.h, and with the last block computing one row the halved tensors weigh less:
  // 0.60 of the f32 bytes on this model)
  CHECK(bf16.total.activation_bytes < 0.62 * double(f32.total.activation_bytes));
  o.bf16 = false, o.recompute_mlp = true;
  const train::CostLedger rec = ledger(lora, o);
  check_consistent(rec);
  CHECK(rec.total.activation_bytes < f32.total.activation_bytes);
  CHECK(rec.total.backward_flops == doctest::Approx(f32.total.backward_flops + (L - 1) * kFc + kFc1).epsilon(1e-12));
  CHECK(rec.total.forward_flops == doctest::Approx(f32.total.forward_flops).epsilon(1e-12));
}

TEST_CASE("cost CLI: JSON totals, CSV rows per method beside full fine-tuning, the chart as SVG and PNG") {
  const std::filesystem::path dir = test::fresh_dir("cost", "cli");
  const std::string cli = std::string(DG_BUILD_DIR) + "/tools/deltagrad cost --model-config vit_mnist_28 --batch 2";
  auto run = [](const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); };
  REQUIRE(run(cli + " --format json --out " + (dir / "full.json").string()) == 0);
  const nlohmann::json j = nlohmann::json::parse(test::slurp(dir / "full.json"));
  const nlohmann::json& t = j["totals"];
  CHECK(t["name"] == "total");
  CHECK(t["activation_bytes"].get<int64_t>() + t["saved_param_bytes"].get<int64_t>() == t["measured"]["held_bytes"].get<int64_t>());
  CHECK(t["peak_bytes"].get<int64_t>() > t["weight_bytes"].get<int64_t>());
  CHECK(j["rows"][0]["name"] == "base");
  for (const char* chart : {"cmp.svg", "cmp.png"})
    REQUIRE(run(cli + " --compare lora --format csv --out " + (dir / "cmp.csv").string() + " --chart " + (dir / chart).string()) == 0);
  std::istringstream csv(test::slurp(dir / "cmp.csv"));
  std::string line;
  std::vector<std::string> totals;
  std::getline(csv, line);
  CHECK(line.rfind("method,name,kind,trainable_params,", 0) == 0);
  while (std::getline(csv, line))
    if (line.find(",total,total,") != std::string::npos) totals.push_back(line.substr(0, line.find(',')));
  CHECK(totals == std::vector<std::string>{"full", "lora"});  // full fine-tuning is always beside
  CHECK(test::slurp(dir / "cmp.svg").find("<svg") != std::string::npos);
  CHECK(test::slurp(dir / "cmp.png").rfind("\x89PNG", 0) == 0);
  // usage errors exit 2; --device cuda without a GPU skips with one line
  CHECK(WEXITSTATUS(run(cli + " --format yaml")) == 2);
  CHECK(WEXITSTATUS(run(cli + " --chart x.png")) == 2);
  if (!backend_available(Device::CUDA)) {
    REQUIRE(std::system((cli + " --device cuda > " + (dir / "cuda.txt").string()).c_str()) == 0);
    CHECK(test::slurp(dir / "cuda.txt") == "cost --device cuda: skipped: no CUDA device, or a build without CUDA\n");
  }
}

TEST_CASE("cost: linear probe: the forward's working set, which no record shows, sets the peak") {
  // Nothing below the head is recorded, so the tape holds almost nothing; at batch 64 the block's
  // MLP working set (3 D + 2 H floats a token) is ~7 times the weights and decides the peak.
  train::CostOptions o;
  o.batch = 64;
  const train::CostLedger led = ledger(nlohmann::json::parse(R"({"trainable": ["head.*"]})"), o);
  check_consistent(led);
  CHECK(led.total.activation_bytes <= int64_t(64 * (D + 2 * C) * 4));  // the head's input, the loss
  CHECK(led.peak_bytes > 4 * led.weight_bytes);
}

TEST_CASE("cost: masks chosen from data before training count what the selection will keep") {
  // The ledger runs no selection (it needs the task's data); a top-k keeps llround(budget * n)
  // elements, so the count is known before: it equals the count after a real selection.
  const nlohmann::json cfg = nlohmann::json::parse(R"({"trainable": ["head.*"], "masks": [{"tensor": "blocks.*.mlp.*.weight",
      "select": {"criterion": "fisher", "budget": 0.01, "batches": 2}}]})");
  const train::CostLedger led = ledger(cfg);
  nn::VisionTransformer m(nn::vit_preset("vit_mnist_28"));
  m.init_weights(0);
  peft::PeftModel pm(m, peft::parse_peft_config(cfg));
  REQUIRE(pm.selection_pending());
  pm.select_masks([](int64_t i) {
    Tensor x = Tensor::empty({4, 1, 28, 28});
    Generator(uint64_t(i)).normal_(x);
    return std::pair<Tensor, Tensor>{x, Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3}, {4})};
  });
  CHECK(led.total.trainable_params == pm.trainable_count());
  CHECK(led.total.trainable_params == int64_t(D * C + C) + std::llround(0.01 * L * 2 * D * H));
}

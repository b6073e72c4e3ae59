#include "tools/commands.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "autograd/autocast.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/comm.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "peft/peft_model.h"
#include "tools/model_args.h"
#include "train/trainer.h"

namespace dg::cli {

using nlohmann::json;

namespace {

void on_sigint(int) { train::Trainer::request_stop(); }

bool same_path(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::weakly_canonical(a, ec) == std::filesystem::weakly_canonical(b, ec);
}

}  // namespace

bool wants_help(int argc, char** argv, const char* text) {
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(text, stdout);
      return true;
    }
  return false;
}

int cmd_train(int argc, char** argv) {
  const char* help =
      "deltagrad train --model-config C.json|PRESET [--model W.safetensors] [--peft P.json] --data SPEC\n"
      "                [--epochs N] [--batch B] [--lr LR] [--weight-decay WD] [--warmup STEPS] [--seed S]\n"
      "                [--device cpu|cuda] [--out RUN_DIR] [--config RUN.json] [--resume RUN_DIR] [--quiet]\n"
      "                [--recompute-mlp]   (redo each MLP's fc1 in backward: ~1/4 less memory, one more GEMM)\n"
      "                [--bucket-mb MIB] [--no-overlap]   (data parallel: see below)\n"
      "                [--precision f32|bf16]  (bf16: mixed precision, bf16 GEMMs and saved activations)\n"
      "                [--checkpoint-every STEPS] [--checkpoint-minutes M]  (checkpoints inside an epoch too)\n"
      "                [--augment auto|random-resized-crop|pad-crop]  (auto: random-resized-crop + flips for\n"
      "                image folders, as timm trains; pad-crop for Fashion-MNIST)\n"
      "  SPEC: fashion-mnist[:classes=5-9][:n=1000]\n"
      "     or an ImageFolder path root/<class>/*.png[:val=0.1][:n=1000]\n"
      "     or a folder of splits root/train, root/val, root/test (VTAB-1k: train800val200, train800, val200,\n"
      "        test) of class folders[:train=SPLIT][:eval=SPLIT]; default: train on train, evaluate on val\n"
      "  Images are resized and centre-cropped as timm evaluates (the model config's crop_pct, interpolation).\n"
      "  Every option is also a key of the run config JSON (saved as RUN_DIR/run_config.json).\n"
      "  RUN_DIR is locked while a run writes it: a second run on it is refused.\n"
      "  Ctrl-C stops after the current step with a checkpoint; --resume RUN_DIR continues that run in place,\n"
      "  exactly, after checking that base weights, model, PEFT config, data and batch are the same.\n"
      "  Data parallel: mpirun -np N deltagrad train ... (one process per GPU with --device cuda) splits every\n"
      "  global batch of B over the N ranks and sums the trainable gradients each step (MPI for CPU tensors,\n"
      "  NCCL for CUDA ones); the log equals one process's, rank 0 writes RUN_DIR, and a failing rank ends all.\n"
      "  The sums run during backward, in buckets of at most --bucket-mb MiB (25) each started when its\n"
      "  gradients are final (cut again after the first step in the order its backward finished them);\n"
      "  --no-overlap sums every gradient in one buffer after backward (same bits).\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"model-config", "model", "peft", "data", "epochs", "batch", "lr", "weight-decay", "warmup", "seed",
                       "device", "out", "config", "resume", "precision", "checkpoint-every", "checkpoint-minutes", "augment",
                       "bucket-mb"},
                      {"quiet", "recompute-mlp", "no-overlap"});
  json rc = json::object();
  if (a.has("resume")) {
    // A run dir is resumed in place: whatever `out` its run config recorded (a copied or
    // moved run dir records another), DIR is read and written.
    const std::string dir = a.get("resume");
    if (a.has("out") && !same_path(a.get("out"), dir))
      throw UsageError(str("--resume continues '", dir, "' in place; --out '", a.get("out"), "' names another dir"));
    if (a.has("config")) throw UsageError("--resume takes its run config from RUN_DIR/run_config.json; drop --config");
    rc = read_json_file(dir + "/run_config.json", "run config");
    DG_CHECK(rc.is_object(), "run config '", dir, "/run_config.json': expected a JSON object");
    rc["out"] = dir;
  } else if (a.has("config")) {
    rc = read_json_file(a.get("config"), "run config");
  }
  // Paths given here are recorded absolute, so a run dir resumes from any working directory.
  if (a.has("model-config")) rc["model_config"] = absolute_if_file(a.get("model-config"));
  if (a.has("model")) rc["model"] = absolute_if_file(a.get("model"));
  if (a.has("peft")) rc["peft"] = read_json_file(a.get("peft"), "peft config");
  if (a.has("data")) rc["data"] = absolute_data_path(a.get("data"));
  if (a.has("epochs")) rc["epochs"] = a.integer("epochs", 1, 1);
  if (a.has("batch")) rc["batch"] = a.integer("batch", 64, 1);
  if (a.has("lr")) rc["lr"] = a.num("lr", 1e-3);
  if (a.has("weight-decay")) rc["weight_decay"] = a.num("weight-decay", 0.05);
  if (a.has("warmup")) rc["warmup_steps"] = a.integer("warmup", 0, 0);
  if (a.has("seed")) rc["seed"] = uint64_t(a.integer("seed", 0, 0));
  if (a.has("device")) rc["device"] = a.get("device");
  if (a.has("out")) rc["out"] = a.get("out");
  if (a.has("quiet")) rc["quiet"] = true;
  if (a.has("recompute-mlp")) rc["recompute_mlp"] = true;
  if (a.has("precision")) rc["precision"] = a.get("precision");
  if (a.has("augment")) rc["augment"] = a.get("augment");
  if (a.has("checkpoint-every")) rc["checkpoint_every"] = a.integer("checkpoint-every", 0, 0);
  if (a.has("checkpoint-minutes")) rc["checkpoint_minutes"] = a.num("checkpoint-minutes", 0);
  if (a.has("bucket-mb")) rc["bucket_mb"] = a.num("bucket-mb", 25);
  if (a.has("no-overlap")) rc["overlap"] = false;
  if (!a.has("resume") && !a.has("config") && !a.has("data")) throw UsageError("missing required option --data");
  // Under mpirun (or a cluster launcher) this starts MPI: from here on a failure on one rank
  // ends every rank (main's error path), never leaving the others waiting.
  const bool lead = world().rank() == 0;
  train::RunConfig cfg = train::run_config_from_json(rc);
  nn::ViTConfig mc = nn::load_vit_config(cfg.model_config);
  auto [tr, va] = train::load_data(cfg.data, mc, cfg.seed);
  train::Trainer t(cfg, tr, va);
  if (lead) std::printf("%s", t.peft().report().c_str());
  std::signal(SIGINT, on_sigint);
  train::TrainResult r = t.fit(a.has("resume"));
  std::signal(SIGINT, SIG_DFL);
  if (!r.epochs.empty() && lead)
    std::printf("done in %.1fs: val acc %.2f%%; run dir %s\n", r.seconds, 100 * r.epochs.back().val_acc, cfg.out.c_str());
  return r.interrupted ? 130 : 0;
}

int cmd_eval(int argc, char** argv) {
  const char* help =
      "deltagrad eval (--deltas D.safetensors [--model-config C] | --model-config C) [--model W.safetensors]\n"
      "               --data SPEC [--seed S] [--precision f32|bf16]\n"
      "  With --deltas the model config and the head's classes are the delta file's; the data must have\n"
      "  those classes. Scores the data's evaluation images (see SPEC in deltagrad train --help): a split\n"
      "  folder's eval split (root:eval=test for the test split), a flat folder's held-out share, or the\n"
      "  whole flat folder with root:val=0.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model-config", "model", "deltas", "data", "seed", "precision"});
  AutocastGuard autocast(parse_precision(a.get("precision", "f32"), "--precision"));
  nn::ViTConfig mc = model_config_for(a);
  auto [tr, va] = train::load_data(a.need("data"), mc, uint64_t(a.integer("seed", 0, 0)), train::DataUse::EvalOnly);
  if (a.has("deltas")) {
    check_data_classes(va, a.get("data"), mc, a.get("deltas"));
  } else {
    mc.num_classes = tr.num_classes, mc.class_names = tr.class_names;
  }
  auto m = load_model(a, mc);
  auto pm = attach_peft(*m, a);
  double acc = train::evaluate(*m, va, mc.mean, mc.std);
  std::printf("accuracy %.4f on %lld images\n", acc, (long long)va.size());
  return 0;
}

int cmd_grads(int argc, char** argv) {
  const char* help =
      "deltagrad grads --model M.safetensors (--model-config C [--peft P.json] | --deltas D.safetensors [--model-config C])\n"
      "                --batch B.safetensors --out O.safetensors\n"
      "  B holds `images` (N,C,H,W f32) and `labels` (N, i64 or i32). One deterministic forward and backward\n"
      "  (dropout and drop-path off); O gets `logits`, `loss` and `grad.<name>` for every trainable tensor.\n"
      "  Without --peft or --deltas every parameter is trainable (a full fine-tune). With --deltas the model\n"
      "  config is the delta file's (a --model-config given too must describe the same backbone).\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model", "model-config", "peft", "deltas", "batch", "out"});
  auto m = load_model(a);
  auto pm = attach_peft(*m, a);
  if (!pm) m->set_trainable("*", true);
  SafeTensors b = load_safetensors(a.need("batch"));
  for (const char* k : {"images", "labels"})
    if (!b.tensors.count(k)) throw Error(str("batch file '", a.get("batch"), "': missing tensor '", k, "'"));
  m->eval();
  tape().clear();
  Tensor logits = (*m)(b.tensors["images"].to(DType::F32));
  Tensor loss = cross_entropy(logits, b.tensors["labels"]);
  backward(loss);
  if (pm) pm->mask_gradients();
  std::map<std::string, Tensor> out{{"logits", logits}, {"loss", loss}};
  for (auto& [n, p] : m->named_parameters())
    if (p.requires_grad() && p.grad().defined()) out["grad." + n] = p.grad();
  save_safetensors(a.need("out"), out, {{"generator", "deltagrad grads"}});
  std::printf("loss %.6f; %zu gradients written to %s\n", loss.item(), out.size() - 2, a.get("out").c_str());
  return 0;
}

namespace {

// `inspect --tape`: what one training step keeps for backward. The step is the trainer's forward
// and loss in training mode on a random batch; the tape is printed before backward frees it.
int inspect_tape(const Args& a) {
  if (!a.positional.empty()) throw UsageError("--tape takes no checkpoint FILE: give the weights as --model W");
  const nn::ViTConfig mc = model_config_for(a);
  auto m = load_model(a, mc);
  if (!a.has("model")) m->init_weights(0);
  auto pm = attach_peft(*m, a);
  if (!pm) m->set_trainable("*", true);  // as `grads` does: a full fine-tune
  const int64_t batch = a.integer("batch", 8, 1);
  m->train();
  Tensor images = Tensor::empty({batch, mc.in_chans, mc.img_size, mc.img_size});
  Generator gen(0);
  gen.normal_(images);
  std::vector<int64_t> labels(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) labels[size_t(i)] = i % mc.num_classes;
  tape().clear();
  Tensor loss = cross_entropy((*m)(images), Tensor::from_vector(labels, {batch}));
  std::printf("one training step of a random batch [%lld, %lld, %lld, %lld] (random images, labels 0, 1, ...), %s\n",
              (long long)batch, (long long)mc.in_chans, (long long)mc.img_size, (long long)mc.img_size,
              pm ? "the PEFT model" : "no PEFT: a full fine-tune");
  std::printf("%s", tape().dump().c_str());
  std::printf("total: %zu records, saved %zu B summed over records, held %zu B (each buffer once); loss %.4f\n",
              tape().records().size(), tape().saved_bytes(), tape().held_bytes(), loss.item());
  tape().clear();
  return 0;
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  const char* help =
      "deltagrad inspect FILE.safetensors [--model-config C] [--peft P.json | --deltas D.safetensors]\n"
      "deltagrad inspect --tape --model-config C [--model W] [--peft P.json | --deltas D.safetensors] [--batch B]\n"
      "  (--deltas alone: the model config is the delta file's.)\n"
      "  Without --model-config or --deltas: the file's tensors and metadata. With it: the model's tensors (loaded from\n"
      "  FILE), trainable or frozen, totals, and the PEFT report.\n"
      "  --tape: the ops one training step records (forward and loss, the tape just before backward), each with the\n"
      "  tensors it saves for backward and their bytes, then the totals. The input is a random batch of B images\n"
      "  (default 8) of the model's size; without --model the weights are a random initialisation (neither changes\n"
      "  what is saved).\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model-config", "model", "peft", "deltas", "batch"}, {"tape"});
  if (a.has("tape")) return inspect_tape(a);
  for (const char* k : {"model", "batch"})
    if (a.has(k)) throw UsageError(str("--", k, " goes with --tape (the checkpoint to list is FILE)"));
  if (a.positional.size() != 1) throw UsageError("expected one checkpoint file");
  const std::string file = a.positional[0];
  if (!a.has("model-config") && !a.has("deltas")) {
    SafeTensors st = load_safetensors(file);
    int64_t total = 0;
    for (auto& [n, t] : st.tensors) {
      std::printf("%-48s %-6s %s\n", printable(n).c_str(), dtype_name(t.dtype()), shape_str(t.shape()).c_str());
      total += t.numel();
    }
    // names and metadata come from the file: escaped, so that no raw byte reaches the terminal
    for (auto& [k, v] : st.metadata)
      std::printf("metadata %s = %s\n", printable(k).c_str(), printable(v.substr(0, 120)).c_str());
    std::printf("%zu tensors, %lld elements\n", st.tensors.size(), (long long)total);
    return 0;
  }
  Args ma = a;
  ma.opts["model"] = file;
  auto m = load_model(ma);
  auto pm = attach_peft(*m, a);
  int64_t total = 0, trainable = 0;
  for (auto& [n, t] : m->named_parameters()) {
    std::printf("%-52s %-6s %-18s %s\n", n.c_str(), dtype_name(t.dtype()), shape_str(t.shape()).c_str(),
                t.requires_grad() ? "trainable" : "frozen");
    total += t.numel();
    trainable += t.requires_grad() ? t.numel() : 0;
  }
  std::printf("total %lld, trainable %lld (%.3f%%)\n", (long long)total, (long long)trainable,
              100.0 * double(trainable) / double(std::max<int64_t>(total, 1)));
  if (pm) std::printf("%s", pm->report().c_str());
  return 0;
}

int cmd_merge(int argc, char** argv) {
  const char* help =
      "deltagrad merge --model W.safetensors --deltas D.safetensors [--model-config C] --out M.safetensors\n"
      "deltagrad merge --model W.safetensors --model-config C --compose A.safetensors,B.safetensors --out M.safetensors\n"
      "  The model config is the delta file's (a --model-config given too must describe the same backbone).\n"
      "  --compose adds the differences of sparse (masked, LT-SFT) delta files made on this base: W + sum (D_i - W).\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model-config", "model", "deltas", "out", "compose"});
  if (a.has("compose")) {
    if (a.has("deltas")) throw UsageError("give --deltas or --compose, not both");
    auto m = load_model(a);
    std::vector<std::string> files;
    for (std::string rest = a.get("compose"); !rest.empty();) {
      const size_t c = rest.find(',');
      files.push_back(rest.substr(0, c));
      rest = c == std::string::npos ? "" : rest.substr(c + 1);
    }
    peft::add_sparse_differences(*m, files);
    save_safetensors(a.need("out"), nn::state_dict(*m), {{"format", "pt"}, {"generator", "deltagrad merge --compose"}});
    std::printf("composed %zu delta files into %s\n", files.size(), a.get("out").c_str());
    return 0;
  }
  a.need("deltas");
  auto m = load_model(a);
  auto pm = attach_peft(*m, a);
  for (const std::string& name : pm->delta_names())
    if (!pm->mergeable(name))
      throw Error(str("merge: delta '", name, "' is a ", pm->method_of(name).name, "; only ",
                      peft::method_names([](const peft::MethodDef& d) { return d.merges; }), " fold into the weights"));
  pm->merge();
  std::map<std::string, Tensor> sd = nn::state_dict(*m);
  save_safetensors(a.need("out"), sd, {{"format", "pt"}, {"generator", "deltagrad merge"}});
  std::printf("merged %zu delta sites into %s\n", m->all_deltas().size(), a.get("out").c_str());
  return 0;
}

int cmd_export_peft(int argc, char** argv) {
  const char* help =
      "deltagrad export-peft [--model W] (--deltas D.safetensors [--model-config C] | --peft P.json --model-config C)\n"
      "                      --out DIR [--name DELTA]\n"
      "  With --peft, the freshly initialised deltas are exported (a way to cross-check against Python peft).\n"
      "  The head's class names, when the delta file has them, go to DIR/class_names.json.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model-config", "model", "deltas", "peft", "out", "name"});
  if (!a.has("deltas") && !a.has("peft")) throw UsageError("give --deltas or --peft");
  auto m = load_model(a);
  auto pm = attach_peft(*m, a);
  pm->export_hf(a.need("out"), a.get("name"));
  // The head's class names: peft 0.21 loads an adapter_config.json with keys it does not know only
  // after a warning to upgrade peft (PeftConfigMixin.from_peft_type drops them), so the names go to
  // a side file, class_names.json, as a run dir keeps them; import-peft reads it back.
  if (!m->cfg.class_names.empty())
    write_file_atomic(a.get("out") + "/class_names.json", json(m->cfg.class_names).dump(1) + "\n");
  std::printf("wrote %s/adapter_model.safetensors and adapter_config.json%s\n", a.get("out").c_str(),
              m->cfg.class_names.empty() ? "" : " and class_names.json");
  return 0;
}

int cmd_import_peft(int argc, char** argv) {
  const char* help =
      "deltagrad import-peft --model-config C [--model W] --in DIR --out D.safetensors\n"
      "  DIR/class_names.json (written by export-peft), when there, gives the head's class names.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"model-config", "model", "in", "out"});
  nn::ViTConfig mc = nn::load_vit_config(a.need("model-config"));
  if (const int64_t k = peft::hf_head_classes(a.need("in")); k > 0) mc.num_classes = k;  // a saved head sets the classes
  const std::string names_file = a.get("in") + "/class_names.json";  // written by export-peft
  if (std::filesystem::exists(names_file)) {
    const json names = read_json_file(names_file, "class names");
    DG_CHECK(names.is_array() && std::all_of(names.begin(), names.end(), [](const json& n) { return n.is_string(); }),
             "class names '", names_file, "': expected a JSON array of strings");
    DG_CHECK(int64_t(names.size()) == mc.num_classes, "class names '", names_file, "' name ", names.size(),
             " classes but the head has ", mc.num_classes, " outputs");
    mc.class_names = names.get<std::vector<std::string>>();
  }
  auto m = load_model(a, mc);
  peft::import_hf(a.need("in"), a.need("out"), *m);
  std::printf("wrote %s\n", a.get("out").c_str());
  return 0;
}

}  // namespace dg::cli

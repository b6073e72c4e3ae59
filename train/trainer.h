// The trainer: a frozen (or not) ViT, a PEFT config, a dataset, AdamW with cosine
// schedule, progress, metrics.csv, curves.svg/png, atomic checkpoints and exact resume.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "core/comm.h"
#include "train/figure.h"
#include "train/grad_bucket.h"
#include "train/grad_reducer.h"
#include "train/run_dir.h"

namespace dg::train {

struct RunConfig {
  std::string model_config = "vit_mnist_28";  // a preset name or a JSON file
  std::string model;                          // timm-layout safetensors (optional: random init)
  nlohmann::json peft = nlohmann::json::object();  // the PEFT config itself (the CLI reads --peft files into it)
  std::string data = "fashion-mnist";
  int64_t epochs = 10, batch = 64;
  double lr = 1e-3, weight_decay = 0.05, min_lr = 1e-6, label_smoothing = 0.0, clip_grad = 1.0;
  int64_t warmup_steps = 0;
  // "random-resized-crop": timm's RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip;
  // "pad-crop": a random crop after zero padding by `pad` pixels (+ flips if hflip);
  // "auto": random-resized-crop for image folders, pad-crop for Fashion-MNIST
  std::string augment = "auto";
  int64_t pad = 2;     // random-crop padding (pad-crop)
  bool hflip = false;  // horizontal flips (off for Fashion-MNIST's asymmetric items? they allow it; off by default)
  uint64_t seed = 0;
  std::string device = "cpu";
  std::string out = "runs/train";
  int64_t max_steps = 0;   // stop (with a checkpoint, as Ctrl-C does) after this many steps of this process
  int64_t checkpoint_every = 0;   // also checkpoint every N global steps inside an epoch (0: at epoch ends only)
  double checkpoint_minutes = 0;  // also checkpoint when this many minutes passed since the last one (0: off)
  int64_t eval_every = 1;  // evaluate on the validation set every N epochs (and after the last)
  int64_t log_every = 10;  // plain-text progress lines when stdout is not a terminal
  bool quiet = false;
  bool recompute_mlp = false;  // redo fc1 in backward instead of keeping its output (less memory)
  // "f32", or "bf16": mixed precision (autograd/autocast.h) for forward, backward and evaluation;
  // weights, deltas, gradients and optimizer state stay f32
  std::string precision = "f32";
  // Data parallel: start each bucket's gradient all-reduce during backward, as soon as its
  // gradients are final (train/grad_reducer.h); off: one all-reduce of every gradient after it
  bool overlap = true;
  double bucket_mb = 25;  // the buckets' cap in MiB (DDP's default bucket_cap_mb)
  // An L1 term pulling the trainable tensors towards their values at the start of training (LT-SFT,
  // Ansell et al. 2022; composable-sft's full_l1_reg / sparse_l1_reg, the coefficient of the phase):
  // l1_reg * sum |p - p0| / (every base parameter), added to each step's loss (the logged loss stays
  // the cross entropy, as theirs logs the two apart). 0: off.
  double l1_reg = 0;
  // Globs of the trainable tensors the term covers; empty: all of them (theirs with
  // apply_reg_to_sparse_only false; with it true, the maskable tensors only).
  std::vector<std::string> l1_reg_tensors;
};

RunConfig run_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const RunConfig& c);


struct TrainResult {
  std::vector<EpochResult> epochs;
  std::vector<double> step_losses;  // every step of this process (for resume tests)
  double seconds = 0;        // this process's training
  double total_seconds = 0;  // the run's, across resumes (checkpoints carry the time before)
  int64_t trainable_params = 0, total_params = 0;
  bool interrupted = false;
  bool already_finished = false;
  // Data parallel: the time steps spent in the gradient all-reduce after their backward had
  // ended (copies in and out, sums, waits; overlapped: what backward had not hidden), and how
  // many steps that sums.
  double allreduce_after_backward_seconds = 0;
  int64_t allreduce_steps = 0;  // resumed a run whose every epoch was done: only its outputs were rewritten
};

// Accuracy of `model` on a set (eval mode, no gradients), in batches.
// With `comm` (data parallel), each rank scores its slice of every batch and the hits are summed.
double evaluate(nn::VisionTransformer& model, const data::ImageSet& set, const std::vector<double>& mean,
                const std::vector<double>& std, int64_t batch = 256, Comm* comm = nullptr);

// The trainer's NaN/Inf stop for gradients (the loss is checked the same way): throws, naming
// the tensor, the epoch and step, and `last_good` (which checkpoint still holds the last good
// state, or that none was written), when any gradient element of `params` is NaN or Inf.
void check_finite_gradients(const nn::NamedTensors& params, int64_t epoch, int64_t step, const std::string& last_good);

// The L1 term above: coefficient * sum over the `params` that `start` holds of sum |p - p0|, divided
// by num_params (a scalar on the tape: |x|'s derivative is sign(x), 0 at 0, as torch.abs's).
Tensor l1_reg_loss(const nn::NamedTensors& params, const std::map<std::string, Tensor>& start, double coefficient,
                   int64_t num_params);
// Copies of the `params` the globs match (all when empty): the p0 of l1_reg_loss.
std::map<std::string, Tensor> l1_reg_start(const nn::NamedTensors& params, const std::vector<std::string>& globs);

class Trainer {
 public:
  // `train_set` / `val_set` may come from anywhere (a custom data source); the run config
  // says how to build the model and what to train.
  Trainer(const RunConfig& cfg, const data::ImageSet& train_set, const data::ImageSet& val_set);
  // Train in cfg.out (locked for the call: a second run on it throws). With `resume`,
  // continue from cfg.out/checkpoint.safetensors after checking that it was trained on the
  // same base weights, model, PEFT config, data and batch, and holds finite values; the
  // metrics log is cut back to the checkpoint's position, so the finished run dir equals an
  // uninterrupted run's.
  // Under a launcher (core/comm.h's world(), e.g. mpirun -np N) the run is data parallel: each
  // rank takes its slice of every global batch of cfg.batch, the trainable gradients and the
  // batch's loss and hits are summed over the ranks each step, every rank steps the same
  // optimizer, and rank 0 alone writes the run dir; the log equals one process's. Any number
  // of ranks resumes any run (positions are global steps). Dropout and drop-path draw from
  // each rank's generator, so with them the ranks' run equals one process's in distribution only.
  TrainResult fit(bool resume = false);
  nn::VisionTransformer& model() { return *model_; }
  peft::PeftModel& peft() { return *peft_; }
  // Stop after the current step (checkpoint written): wired to SIGINT by the CLI.
  static void request_stop();

 private:
  RunConfig cfg_;
  const data::ImageSet& train_set_;
  const data::ImageSet& val_set_;
  std::unique_ptr<nn::VisionTransformer> model_;
  std::unique_ptr<peft::PeftModel> peft_;
  std::string base_identity_, base_hash_;  // of the base weights as loaded, before any step
  std::map<std::string, Tensor> l1_start_;  // p0 of the L1 term (cfg.l1_reg > 0): the values before any step
  RunPosition load_checkpoint(const std::string& path, nn::Optimizer& opt, int64_t steps_per_epoch) const;
  void save_checkpoint(const std::string& path, nn::Optimizer& opt, const RunPosition& pos) const;
  data::LoaderOptions train_loader_options() const;
  // A step's loss (the global batch's mean), hits, samples and "a rank was asked to stop".
  struct StepTotals {
    double loss;
    int64_t correct, samples;
    bool stop;
  };
  StepTotals train_step(const data::Batch& b, nn::Optimizer& opt, const nn::NamedTensors& params, int64_t epoch,
                        int64_t step, const std::string& last_good, bool stop);
  void check_same_run_on_every_rank() const;
  // Data parallel (comm_->size() > 1): the ranks, the comm that sums gradients (comm_ itself
  // for CPU tensors, NCCL for CUDA ones) and what it sums: the buckets started during backward
  // (cfg_.overlap) or one flat buffer after it; the time spent after backward, summed.
  Comm* comm_;
  Comm* grad_comm_ = nullptr;
  std::unique_ptr<Comm> grad_comm_owned_;
  std::unique_ptr<GradientBucket> bucket_;
  std::unique_ptr<GradientReducer> reducer_;
  double reduce_seconds_ = 0;
  // buckets started during backward / held back by an earlier one / summed when backward ended
  int64_t reduce_steps_ = 0, early_buckets_ = 0, held_buckets_ = 0, summed_early_ = 0;
  bool rebuild_buckets_ = false;  // after this fit's first step
  void rebuild_buckets(const GradientReducer::Overlap& first_step);
  void write_outputs(const MetricsHistory& history, int64_t steps_per_epoch) const;
};

// Load the data a spec names: (train, val) sets; for Fashion-MNIST val is the test split of the
// selected classes, for a folder of splits the evaluation split (data::find_split_layout), for a
// flat folder a seeded held-out fraction. Folder images get the model config's eval geometry
// (crop_pct, interpolation). EvalOnly: the train set holds only the classes (no images, unless
// the val set is held out of it), and a flat folder with val=0 is evaluated whole.
enum class DataUse { Train, EvalOnly };
std::pair<data::ImageSet, data::ImageSet> load_data(const std::string& spec, const nn::ViTConfig& mc, uint64_t seed,
                                                    DataUse use = DataUse::Train);

// curves.svg / curves.png: two panels over epochs, train loss per step (left) and validation
// accuracy per evaluated epoch (right; a single evaluation is a point), with axis numbers and a title.
Figure curves_figure(const std::vector<double>& step_losses, const std::vector<EpochResult>& epochs,
                     int64_t steps_per_epoch, const std::string& title);
void write_curves_png(const std::string& path, const std::vector<double>& step_losses,
                      const std::vector<EpochResult>& epochs, int64_t steps_per_epoch, const std::string& title);
void write_curves_svg(const std::string& path, const std::vector<double>& step_losses,
                      const std::vector<EpochResult>& epochs, int64_t steps_per_epoch, const std::string& title);

}  // namespace dg::train

#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <tuple>

#include "autograd/autocast.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "nn/optim.h"
#include "nn/schedule.h"
#include "peft/training_loss.h"

namespace dg::train {

using nlohmann::json;
namespace fs = std::filesystem;

static std::atomic<bool> g_stop{false};
void Trainer::request_stop() { g_stop = true; }

// Every key of the run config, listed once: to_json and run_config_from_json both walk it.
template <class Config, class Visit>
static void visit_keys(Config& c, Visit&& v) {
  v("model_config", c.model_config), v("model", c.model), v("peft", c.peft), v("data", c.data);
  v("epochs", c.epochs), v("batch", c.batch), v("lr", c.lr), v("weight_decay", c.weight_decay);
  v("min_lr", c.min_lr), v("label_smoothing", c.label_smoothing), v("clip_grad", c.clip_grad);
  v("warmup_steps", c.warmup_steps), v("augment", c.augment), v("pad", c.pad), v("hflip", c.hflip);
  v("seed", c.seed), v("device", c.device), v("out", c.out), v("max_steps", c.max_steps);
  v("checkpoint_every", c.checkpoint_every), v("checkpoint_minutes", c.checkpoint_minutes);
  v("eval_every", c.eval_every), v("log_every", c.log_every), v("quiet", c.quiet);
  v("recompute_mlp", c.recompute_mlp), v("precision", c.precision), v("overlap", c.overlap);
  v("bucket_mb", c.bucket_mb), v("l1_reg", c.l1_reg), v("l1_reg_tensors", c.l1_reg_tensors);
}

json to_json(const RunConfig& c) {
  json j = json::object();
  visit_keys(c, [&](const char* key, const auto& field) { j[key] = field; });
  return j;
}

RunConfig run_config_from_json(const json& j) {
  DG_CHECK(j.is_object(), "run config: expected a JSON object");
  json base = to_json(RunConfig{});
  for (auto it = j.begin(); it != j.end(); ++it) {
    DG_CHECK(base.contains(it.key()), "run config: unknown key '", it.key(), "'");
    // 1e300 has no int64 value: converting it was undefined behaviour (found by fuzz/fuzz_config)
    // ... and a negative seed was stored as 18446744073709551615: integer keys are counts, >= 0
    DG_CHECK(!base[it.key()].is_number_integer() || (it.value().is_number_integer() && it.value() >= 0) ||
                 !it.value().is_number(), "run config: key '", it.key(), "' must be an integer >= 0, got ",
             it.value().dump());
    base[it.key()] = it.value();
  }
  RunConfig c;
  try {
    visit_keys(c, [&](const char* key, auto& field) { field = base[key].get<std::decay_t<decltype(field)>>(); });
  } catch (const json::exception& e) {
    throw Error(str("run config: ", e.what()));
  }
  DG_CHECK(c.epochs >= 1 && c.batch >= 1 && c.lr > 0, "run config: epochs, batch and lr must be positive");
  for (auto [key, v] : {std::pair{"lr", c.lr}, {"weight_decay", c.weight_decay}, {"min_lr", c.min_lr},
                        {"label_smoothing", c.label_smoothing}, {"clip_grad", c.clip_grad},
                        {"checkpoint_minutes", c.checkpoint_minutes}, {"l1_reg", c.l1_reg}})
    DG_CHECK(std::isfinite(v) && v >= 0, "run config: key '", key, "' must be a finite number >= 0, got ", v);
  DG_CHECK(std::isfinite(c.bucket_mb) && c.bucket_mb * 1024 * 1024 >= 4,
           "run config: key 'bucket_mb' must be a finite number of MiB that holds a float (>= 4 bytes), got ",
           c.bucket_mb);
  DG_CHECK(c.checkpoint_every >= 0 && c.max_steps >= 0 && c.warmup_steps >= 0,
           "run config: checkpoint_every, max_steps and warmup_steps must be >= 0");
  DG_CHECK(c.device == "cpu" || c.device == "cuda", "run config: device must be cpu or cuda, got '", c.device, "'");
  parse_precision(c.precision, "run config: key 'precision'");
  DG_CHECK(c.augment == "auto" || c.augment == "random-resized-crop" || c.augment == "pad-crop",
           "run config: augment must be auto, random-resized-crop or pad-crop, got '", c.augment, "'");
  return c;
}

std::pair<data::ImageSet, data::ImageSet> load_data(const std::string& spec, const nn::ViTConfig& mc, uint64_t seed,
                                                     DataUse use) {
  data::DataSpec d = data::parse_data_spec(spec);
  // One class would train to a trivial 100%: nothing to tell apart.
  auto need_two = [&](int64_t classes, const std::string& where) {
    DG_CHECK(classes >= 2, "--data '", spec, "': ", where, " has ", classes,
             " class; training and evaluation need at least 2");
  };
  if (d.kind == "fashion-mnist") {
    std::vector<int64_t> cls = d.classes;
    if (cls.empty())
      for (int64_t c = 0; c < data::kFashionMnistClasses; ++c) cls.push_back(c);
    need_two(int64_t(cls.size()), "the selection");
    data::ImageSet tr = data::load_fashion_mnist(d.path, true), te = data::load_fashion_mnist(d.path, false);
    return {data::select_classes(tr, cls, d.n, seed), data::select_classes(te, cls)};
  }
  data::EvalGeometry g;
  g.size = mc.img_size, g.crop_pct = mc.crop_pct;
  g.interpolation = data::parse_interpolation(mc.interpolation, "model config");
  const data::SplitLayout layout = data::find_split_layout(d, spec);
  const std::string root = layout.train.empty() ? d.path : d.path + "/" + layout.train;
  data::ImageSet tr, va;
  if (!layout.eval.empty()) {  // a folder of splits: train on one, evaluate on another
    DG_CHECK(!d.val_given, "--data '", spec, "': val= holds out a share of the training images, but '", d.path,
             "' has an evaluation split '", layout.eval, "': leave out val=, or choose the split with eval=SPLIT");
    if (use == DataUse::Train) {
      tr = data::load_image_folder(root, mc.in_chans, g);
    } else {  // eval only needs the training split's classes
      tr.class_names = data::class_folders(root);
      tr.num_classes = int64_t(tr.class_names.size());
    }
    need_two(tr.num_classes, "split '" + root + "'");
    va = data::load_image_folder(d.path + "/" + layout.eval, mc.in_chans, g, tr.class_names);
  } else {
    data::ImageSet all = data::load_image_folder(root, mc.in_chans, g);
    need_two(all.num_classes, "image folder '" + root + "'");
    if (d.val_fraction == 0) {
      DG_CHECK(use == DataUse::EvalOnly, "--data '", spec, "': val=0 holds out no image, and training evaluates ",
               "after every epoch: give val=F (e.g. val=0.1) or a folder with train/ and val/ splits");
      tr.num_classes = all.num_classes, tr.class_names = all.class_names;
      return {tr, all};
    }
    std::tie(tr, va) = data::split(all, d.val_fraction, seed);
    DG_CHECK(va.size() > 0, "--data '", spec, "': holding out ", d.val_fraction, " of ", all.size(),
             " images leaves no validation image (each class rounds its share; a larger val= or more images needed)");
  }
  if (d.n > 0 && use == DataUse::Train) {
    std::vector<int64_t> cls(static_cast<size_t>(tr.num_classes));
    for (size_t i = 0; i < cls.size(); ++i) cls[i] = int64_t(i);
    tr = data::select_classes(tr, cls, d.n, seed);
  }
  return {tr, va};
}

double evaluate(nn::VisionTransformer& m, const data::ImageSet& set, const std::vector<double>& mean,
                const std::vector<double>& std, int64_t batch, Comm* comm) {
  NoGradGuard ng;
  const bool was = m.training();
  m.eval();
  data::LoaderOptions o;
  o.batch = batch, o.shuffle = false, o.mean = mean, o.std = std;
  if (comm) o.shard = comm->rank(), o.shards = comm->size();  // each rank scores its slice of every batch
  data::DataLoader dl(set, o);
  int64_t correct = 0;
  Device dev = m.pos_embed.device();
  for (int64_t s = 0; s < dl.batches_per_epoch(); ++s) {
    data::Batch b = dl.make_batch(0, s);
    if (b.labels.numel() == 0) continue;  // a last batch smaller than the ranks: nothing here
    std::vector<double> pred = argmax(m(b.images.to(dev)), 1).to_vector(), lab = b.labels.to_vector();
    for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == lab[i];
  }
  m.train(was);
  std::vector<double> total{double(correct)};
  if (comm) comm->all_reduce_sum(total);
  return total[0] / double(std::max<int64_t>(set.size(), 1));
}

Trainer::Trainer(const RunConfig& cfg, const data::ImageSet& tr, const data::ImageSet& va)
    : cfg_(cfg), train_set_(tr), val_set_(va), comm_(&world()) {
  nn::ViTConfig mc = nn::load_vit_config(cfg.model_config);
  DG_CHECK(tr.num_classes > 0, "trainer: the training set has no classes");
  mc.num_classes = tr.num_classes;
  // the delta file's model config then says which output is which class (predict prints them)
  if (int64_t(tr.class_names.size()) == tr.num_classes)
    for (const std::string& n : tr.class_names) mc.class_names.push_back(valid_utf8(n));
  DG_CHECK(tr.images.size(1) == mc.in_chans && tr.images.size(2) == mc.img_size, "trainer: images ",
           shape_str(tr.images.shape()), " do not fit the model (", mc.in_chans, " channels, ", mc.img_size, " px)");
  model_ = std::make_unique<nn::VisionTransformer>(mc);
  model_->init_weights(cfg.seed);
  model_->set_recompute_mlp(cfg.recompute_mlp);
  bool fresh_head = false;
  if (!cfg.model.empty()) {
    SafeTensors st = load_safetensors(cfg.model);
    nn::LoadReport r = nn::load_state_dict(*model_, st.tensors, "'" + cfg.model + "'");
    fresh_head = !r.head_loaded;
    if (fresh_head) model_->reset_head(cfg.seed + 1);
    if (fresh_head && !cfg.quiet)
      std::printf("'%s' has no head for %lld classes: a fresh head is made (and kept in the delta file)\n",
                  cfg.model.c_str(), (long long)mc.num_classes);
  } else if (!cfg.quiet) {
    std::printf("no base weights given (--model): the backbone is a random initialisation (seed %llu)\n",
                (unsigned long long)cfg.seed);
  }
  if (!cfg.quiet) {
    std::printf("data '%s': %lld training and %lld validation images, %lld classes", cfg.data.c_str(),
                (long long)tr.size(), (long long)va.size(), (long long)tr.num_classes);
    for (size_t i = 0; i < tr.class_names.size() && i < 10; ++i)
      std::printf("%s%s", i ? ", " : " (", tr.class_names[i].c_str());
    std::printf("%s\n", tr.class_names.empty() ? "" : tr.class_names.size() > 10 ? ", ...)" : ")");
  }
  peft_ = std::make_unique<peft::PeftModel>(*model_, peft::parse_peft_config(cfg.peft, "peft config"), cfg.seed + 2);
  if (peft_->selection_pending()) {  // masks chosen by gradients (peft/sensitivity.h): from training batches, unaugmented
    data::LoaderOptions lo;
    lo.batch = cfg.batch, lo.shuffle = true, lo.seed = cfg.seed, lo.mean = mc.mean, lo.std = mc.std;
    data::DataLoader sel(tr, lo);
    const int64_t n = sel.batches_per_epoch();
    peft_->select_masks([&](int64_t i) {
      data::Batch b = sel.make_batch(i / n, i % n);
      return std::make_pair(b.images, b.labels);
    });
    if (!cfg.quiet) std::printf("masks chosen by sensitivity (peft config 'select')\n");
  }
  if (fresh_head)  // the delta file keeps the head this run made, trained or not
    for (auto& [n, t] : model_->named_parameters(false))
      if (n.rfind("head.", 0) == 0) peft_->keep_base_tensor(n);
  // Which weights this run starts from, before any step: what a resume must find again.
  base_identity_ = peft::base_identity(*model_);
  base_hash_ = weights_hash(model_->named_parameters(false));
  if (cfg.device == "cuda") {
    DG_CHECK(backend_available(Device::CUDA), "--device cuda: ", "no CUDA device, or a build without CUDA");
    peft_->to(Device::CUDA);
  }
}

// A checkpoint: the trainable tensors, the optimizer state, the position with the epoch's
// running sums (loss_sum as a hex float: exact), the generator, the run config and the
// base's identity and content hash.
void Trainer::save_checkpoint(const std::string& path, nn::Optimizer& opt, const RunPosition& pos) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, p] : peft_->trainable_parameters()) t["param." + n] = p;
  for (auto& [k, v] : opt.state_dict()) t["optim." + k] = v;
  const Generator& g = default_generator();
  char loss_sum[64];
  std::snprintf(loss_sum, sizeof loss_sum, "%a", pos.loss_sum);
  save_safetensors(path, t,
                   {{"checkpoint_version", "2"}, {"epoch", std::to_string(pos.epoch)}, {"step", std::to_string(pos.step)},
                    {"loss_sum", loss_sum}, {"correct", std::to_string(pos.correct)}, {"seen", std::to_string(pos.seen)},
                    {"train_seconds", str(pos.seconds)},
                    {"gen_seed", std::to_string(g.seed())}, {"gen_offset", std::to_string(g.offset())},
                    {"run_config", to_json(cfg_).dump()}, {"base_identity", base_identity_},
                    {"base_weights_hash", base_hash_},
                    {"kernel_choice", backend(cfg_.device == "cuda" ? Device::CUDA : Device::CPU).kernel_choice()}});
}

RunPosition Trainer::load_checkpoint(const std::string& path, nn::Optimizer& opt, int64_t steps_per_epoch) const {
  DG_CHECK(fs::exists(path), "cannot resume '", cfg_.out, "': it has no checkpoint.safetensors (the run stopped before ",
           "its first checkpoint); start it again without --resume");
  SafeTensors st = load_safetensors(path);
  auto meta = [&](const char* key, bool required = true) -> std::string {
    auto it = st.metadata.find(key);
    DG_CHECK(it != st.metadata.end() || !required, "checkpoint '", path, "': metadata '", key, "' is missing");
    return it == st.metadata.end() ? std::string() : it->second;
  };
  auto number = [&](const char* key, const char* fallback = nullptr) -> double {
    const std::string v = fallback && !st.metadata.count(key) ? fallback : meta(key);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    DG_CHECK(!v.empty() && end == v.c_str() + v.size() && std::isfinite(d), "checkpoint '", path, "': metadata '", key,
             "' is not a number");
    return d;
  };
  auto whole = [&](const char* key) -> uint64_t {
    const std::string v = meta(key);
    char* end = nullptr;
    errno = 0;
    const unsigned long long u = std::strtoull(v.c_str(), &end, 10);
    DG_CHECK(!v.empty() && v[0] != '-' && errno == 0 && end == v.c_str() + v.size(), "checkpoint '", path,
             "': metadata '", key, "' is not a whole number");
    return u;
  };
  json then = json::parse(meta("run_config"), nullptr, false);
  DG_CHECK(then.is_object(), "checkpoint '", path, "': metadata 'run_config' is not a JSON object");
  check_resume_matches(path, then, to_json(cfg_), meta("base_identity", false), base_identity_,
                       meta("base_weights_hash", false), base_hash_);
  check_finite({st.tensors.begin(), st.tensors.end()}, str("checkpoint '", path, "' cannot be resumed"));
  // the kernels the run used (the CPU's GEMM library per kind): the same arithmetic, bit for bit
  if (const std::string kc = meta("kernel_choice", false); !kc.empty())
    if (!backend(cfg_.device == "cuda" ? Device::CUDA : Device::CPU).set_kernel_choice(kc))
      std::fprintf(stderr, "notice: checkpoint '%s' was made with kernels this build cannot choose (%s): the resumed run "
                   "may differ from an uninterrupted one in the last bits\n", path.c_str(), kc.c_str());
  RunPosition pos;
  pos.epoch = int64_t(number("epoch")), pos.step = int64_t(number("step"));
  pos.loss_sum = number("loss_sum", "0"), pos.correct = int64_t(number("correct", "0"));
  pos.seen = int64_t(number("seen", "0"));
  pos.seconds = number("train_seconds", "0");  // checkpoints before it was recorded: unknown, 0
  DG_CHECK(pos.epoch >= 0 && pos.step >= 0 && pos.step <= steps_per_epoch, "checkpoint '", path, "': position epoch ",
           pos.epoch, " step ", pos.step, " is outside an epoch of ", steps_per_epoch, " steps");
  std::map<std::string, Tensor> optim;
  for (auto& [k, t] : st.tensors)
    if (k.rfind("optim.", 0) == 0) optim[k.substr(6)] = t;
  NoGradGuard ng;
  for (auto& [n, p] : peft_->trainable_parameters()) {
    auto it = st.tensors.find("param." + n);
    DG_CHECK(it != st.tensors.end(), "checkpoint '", path, "': missing 'param.", n, "'");
    Tensor dst = p;
    dst.copy_(it->second);
  }
  opt.load_state_dict(optim);
  default_generator().set_state(whole("gen_seed"), whole("gen_offset"));
  return pos;
}

// One line of progress: a bar on a terminal, plain lines otherwise (CI, pipes).
static void progress(const RunConfig& c, bool verbose, int64_t epoch, int64_t step, int64_t steps, double loss, double acc,
                     double ips, double eta, bool end) {
  if (!verbose) return;
  static const bool tty = ::isatty(1);
  if (tty) {
    const int w = 24, fill = int(double(w) * double(step) / double(steps));
    std::printf("\repoch %lld/%lld [%s%s] %lld/%lld loss %.4f acc %5.1f%% %6.0f img/s eta %4.0fs ",
                (long long)epoch + 1, (long long)c.epochs, std::string(size_t(fill), '#').c_str(),
                std::string(size_t(w - fill), '.').c_str(), (long long)step, (long long)steps, loss, 100 * acc, ips, eta);
    if (end) std::printf("\n");
    std::fflush(stdout);
  } else if (end || step % std::max<int64_t>(c.log_every, 1) == 0) {
    std::printf("epoch %lld/%lld step %lld/%lld loss %.4f acc %.1f%% %.0f img/s eta %.0fs\n", (long long)epoch + 1,
                (long long)c.epochs, (long long)step, (long long)steps, loss, 100 * acc, ips, eta);
    std::fflush(stdout);
  }
}

void check_finite_gradients(const nn::NamedTensors& params, int64_t epoch, int64_t step, const std::string& last_good) {
  for (auto& [n, p] : params)
    if (p.grad().defined()) {
      const double ss = backend_of(p).sum_squares(p.grad());  // NaN or Inf anywhere makes it non-finite
      DG_CHECK(std::isfinite(ss), "training stopped: the gradient of '", n, "' is not finite at epoch ", epoch + 1,
               " step ", step, " (", last_good, ")");
    }
}

data::LoaderOptions Trainer::train_loader_options() const {
  const nn::ViTConfig& mc = model_->cfg;
  data::LoaderOptions lo;
  lo.batch = cfg_.batch, lo.shuffle = true, lo.pad = cfg_.pad, lo.hflip = cfg_.hflip, lo.seed = cfg_.seed;
  lo.mean = mc.mean, lo.std = mc.std;
  const std::string augment =
      cfg_.augment != "auto" ? cfg_.augment : cfg_.data.rfind("fashion-mnist", 0) == 0 ? "pad-crop" : "random-resized-crop";
  if (augment == "random-resized-crop") {  // timm's training transform: no padding, flips on
    lo.random_resized_crop = true, lo.pad = 0, lo.hflip = true;
    lo.interpolation = data::parse_interpolation(mc.interpolation, "model config");
  }
  return lo;
}

// Trainable parameters, counted as the report does: a masked tensor counts its unmasked entries.
// The finished run's outputs: the delta file and the curves of the whole run (resumed parts
// included: the log holds the rows a resume kept).
void Trainer::write_outputs(const MetricsHistory& h, int64_t spe) const {
  peft_->save(cfg_.out + "/deltas.safetensors");
  std::string title = cfg_.data;
  if (cfg_.peft.contains("deltas") && cfg_.peft["deltas"].is_array() && !cfg_.peft["deltas"].empty())
    title = cfg_.peft["deltas"][0].value("method", std::string("?")) + " on " + title;
  write_curves_svg(cfg_.out + "/curves.svg", h.step_losses, h.epochs, spe, title);
  write_curves_png(cfg_.out + "/curves.png", h.step_losses, h.epochs, spe, title);
}

// One optimisation step on this rank's slice of a global batch: forward, loss and backward
// here, then (data parallel) the gradients and the batch's loss and hits summed over the
// ranks, then the NaN/Inf checks, clipping and the AdamW update, identical on every rank.
Trainer::StepTotals Trainer::train_step(const data::Batch& b, nn::Optimizer& opt, const nn::NamedTensors& params,
                                        int64_t epoch, int64_t step, const std::string& last_good, bool stop) {
  const Device dev = cfg_.device == "cuda" ? Device::CUDA : Device::CPU;
  const int64_t n = b.labels.numel();
  // each rank's loss is the mean over its n samples: weighted by n / global, the summed
  // gradients and loss are the global batch's mean, as one process computes them
  const double w = double(n) / double(b.global_size);
  GradientReducer* overlap = comm_->size() > 1 && reducer_ ? reducer_.get() : nullptr;
  if (overlap) overlap->begin(*grad_comm_, w);
  double lv = 0, correct = 0;
  if (n > 0) {  // a last batch smaller than the ranks leaves some with nothing: they add zeros
    // cross-entropy, plus a second forward's terms where a method asks (MoSA's consistency loss)
    auto [loss, logits] = peft::training_loss(*peft_, b.images.to(dev), b.labels.to(dev), cfg_.label_smoothing);
    lv = loss.item();
    if (!l1_start_.empty()) loss = add(loss, l1_reg_loss(params, l1_start_, cfg_.l1_reg, peft_->base_parameter_count()));
    if (std::isfinite(lv)) tape().backward(loss, Tensor(), overlap);  // a NaN stops the step below, on every rank
    std::vector<double> pred = argmax(logits, 1).to_vector(), lab = b.labels.to_vector();
    for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == lab[i];
  }
  if (!overlap) peft_->mask_gradients();  // (the reducer masks each gradient before it travels)
  StepTotals t{lv, int64_t(correct), n, stop};
  if (comm_->size() > 1) {
    const auto r0 = std::chrono::steady_clock::now();
    GradientReducer::Overlap o;
    if (overlap) {
      o = overlap->finish();
      early_buckets_ += int64_t(o.started), held_buckets_ += int64_t(o.held), summed_early_ += int64_t(o.done);
    }
    else bucket_->all_reduce(*grad_comm_, w);
    reduce_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
    if (overlap && rebuild_buckets_) rebuild_buckets(o);  // once, outside the timed part
    ++reduce_steps_;
    std::vector<double> host{lv * w, correct, double(n), stop ? 1.0 : 0.0};
    comm_->all_reduce_sum(host);
    t = {host[0], int64_t(host[1]), int64_t(host[2]), host[3] > 0};
  }
  DG_CHECK(std::isfinite(t.loss), "training stopped: the loss is ", t.loss, " at epoch ", epoch + 1, " step ", step,
           " (", last_good, ")");
  check_finite_gradients(params, epoch, step, last_good);
  if (cfg_.clip_grad > 0) nn::clip_grad_norm(params, cfg_.clip_grad);
  opt.step();
  opt.zero_grad();
  return t;
}

// After the first step of a fit (a resume's too: the order is not saved), the buckets are cut
// again in the order that step's backward finished the gradients on rank 0 (broadcast).
void Trainer::rebuild_buckets(const GradientReducer::Overlap& first) {
  rebuild_buckets_ = false;
  const size_t before = reducer_->buckets();
  const bool changed = reducer_->rebuild_from_rank0(*comm_);
  if (comm_->rank() == 0 && !cfg_.quiet)
    std::printf("gradient buckets after the first step: %s in the order its backward finished the gradients, "
                "%zu buckets (were %zu; in that step %zu started during backward, %zu held back by an earlier one "
                "for %lld backward records in all)\n",
                changed ? "rebuilt" : "kept, already", reducer_->buckets(), before, first.started, first.held,
                (long long)first.held_records);
}

// Data parallel: every rank must run the same thing. Rank 0's run config, base weights and
// data sizes are broadcast and compared; any difference stops every rank, naming it.
void Trainer::check_same_run_on_every_rank() const {
  if (comm_->size() == 1) return;
  json mine = to_json(cfg_);
  mine["base_weights_hash"] = base_hash_;
  mine["train_images"] = train_set_.size(), mine["val_images"] = val_set_.size();
  mine["classes"] = train_set_.num_classes;
  std::string lead = mine.dump();
  comm_->broadcast(lead, 0);
  const json theirs = json::parse(lead);
  std::string diff;
  for (auto it = mine.begin(); it != mine.end(); ++it)
    if (!theirs.contains(it.key()) || theirs[it.key()] != it.value())
      diff += str(diff.empty() ? "" : "; ", it.key(), " is ", it.value().dump(), " here, ",
                  theirs.contains(it.key()) ? theirs[it.key()].dump() : std::string("absent"), " on rank 0");
  std::vector<double> differs{diff.empty() ? 0.0 : 1.0};
  comm_->all_reduce_sum(differs);
  DG_CHECK(diff.empty(), "data-parallel run: rank ", comm_->rank(), " was started with another run than rank 0: ", diff);
  DG_CHECK(differs[0] == 0, "data-parallel run: ", differs[0], " rank(s) were started with another run than rank 0 ",
           "(their messages name the differences)");
}

TrainResult Trainer::fit(bool resume) {
  check_same_run_on_every_rank();
  // Data parallel, rank 0 alone writes the run dir; the others read its checkpoint to resume.
  const bool lead = comm_->rank() == 0, verbose = lead && !cfg_.quiet;
  std::optional<RunDirLock> lock;
  if (lead) {
    fs::create_directories(cfg_.out);
    lock.emplace(cfg_.out);  // one writer per run dir, for the whole call
  }
  const std::string ckpt = cfg_.out + "/checkpoint.safetensors";
  DG_CHECK(cfg_.batch >= comm_->size(), "data-parallel run: --batch ", cfg_.batch, " is the global batch and must be ",
           "at least the number of ranks (", comm_->size(), ")");
  data::LoaderOptions lo = train_loader_options();
  lo.shard = comm_->rank(), lo.shards = comm_->size();
  data::DataLoader loader(train_set_, lo);
  const int64_t spe = loader.batches_per_epoch(), total = spe * cfg_.epochs;
  auto params = peft_->trainable_parameters();
  if (comm_->size() > 1) {
    const Device dev = cfg_.device == "cuda" ? Device::CUDA : Device::CPU;
    if (dev == Device::CUDA && !grad_comm_owned_) grad_comm_owned_ = make_nccl_comm(*comm_);
    grad_comm_ = dev == Device::CUDA ? grad_comm_owned_.get() : comm_;
    bucket_.reset(), reducer_.reset();  // one or the other: each holds a buffer of every trainable gradient
    if (cfg_.overlap)
      reducer_ = std::make_unique<GradientReducer>(params, dev, int64_t(cfg_.bucket_mb * 1024 * 1024), peft_->masks());
    else
      bucket_ = std::make_unique<GradientBucket>(params, dev);
    rebuild_buckets_ = bool(reducer_);
    const int64_t floats = reducer_ ? reducer_->floats() : bucket_->floats();
    const int64_t share = cfg_.batch / comm_->size();  // the loader's slices differ by one at most
    const std::string per_rank = cfg_.batch % comm_->size() == 0 ? str(share) : str(share, " or ", share + 1);
    if (verbose)
      std::printf("data parallel: %d ranks (%s), global batch %lld (%s per rank); all-reduced per step: %lld "
                  "trainable gradient floats = %lld bytes in %s, + 32 bytes of loss, hits, count and stop flag\n",
                  comm_->size(), grad_comm_->backend_name().c_str(), (long long)cfg_.batch,
                  per_rank.c_str(), (long long)floats, (long long)(floats * 4),
                  reducer_ ? str(reducer_->buckets(), reducer_->buckets() == 1 ? " bucket" : " buckets",
                                 " started during backward (cap ", cfg_.bucket_mb, " MiB)").c_str()
                           : "one bucket after backward (no overlap)");
  }
  nn::AdamW opt(params, cfg_.lr, cfg_.weight_decay);
  for (auto& [n, m] : peft_->masks()) opt.set_mask(n, m);
  // p0 before any step (a resume's checkpoint is loaded below): the base, or the fresh deltas and head
  l1_start_.clear();
  if (cfg_.l1_reg > 0) l1_start_ = l1_reg_start(params, cfg_.l1_reg_tensors);
  default_generator().manual_seed(cfg_.seed + 3);
  TrainResult res;
  RunPosition pos;
  // Named by every NaN/Inf stop: only a checkpoint that exists and was checked finite.
  std::string last_good = "no checkpoint was written yet";
  if (resume) {
    pos = load_checkpoint(ckpt, opt, spe);
    last_good = "the last good checkpoint is " + ckpt;
    if (lead)
      std::printf("resuming %s at epoch %lld/%lld step %lld/%lld: base %s (weights %s), data '%s', batch %lld\n",
                  cfg_.out.c_str(), (long long)std::min(pos.epoch + 1, cfg_.epochs), (long long)cfg_.epochs,
                  (long long)pos.step, (long long)spe, cfg_.model.empty() ? "random init" : cfg_.model.c_str(),
                  base_hash_.c_str(), cfg_.data.c_str(), (long long)cfg_.batch);
  }
  if (lead) {
    write_file_atomic(cfg_.out + "/run_config.json", to_json(cfg_).dump(2) + "\n");
    // output index -> class name (also in the delta file's model config)
    write_file_atomic(cfg_.out + "/class_names.json", nlohmann::json(model_->cfg.class_names).dump(1) + "\n");
  }
  res.trainable_params = peft_->trainable_count();  // as the PEFT report counts
  res.total_params = peft_->base_parameter_count();
  std::optional<MetricsLog> csv;
  if (lead) csv.emplace(cfg_.out + "/metrics.csv", resume ? &pos : nullptr, spe);
  const auto t0 = std::chrono::steady_clock::now();
  auto last_ckpt = t0;
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  reduce_seconds_ = 0, reduce_steps_ = 0, early_buckets_ = 0, held_buckets_ = 0, summed_early_ = 0;
  // The end of this process's training: its times, and (data parallel) what the all-reduce cost after backward.
  auto end_timing = [&] {
    res.seconds = elapsed(), res.total_seconds = pos.seconds + res.seconds;
    res.allreduce_after_backward_seconds = reduce_seconds_, res.allreduce_steps = reduce_steps_;
    if (verbose && reduce_steps_ > 0)
      std::printf("gradient all-reduce after backward: %.3f ms per step (mean of %lld steps; %s)\n",
                  1e3 * reduce_seconds_ / double(reduce_steps_), (long long)reduce_steps_,
                  reducer_ ? str("overlapped, ", reducer_->buckets(), " buckets, ",
                                 double(early_buckets_) / double(reduce_steps_), " of them started during backward, ",
                                 double(held_buckets_) / double(reduce_steps_), " held back by an earlier bucket, ",
                                 double(summed_early_) / double(reduce_steps_), " summed when it ended")
                                 .c_str()
                           : "not overlapped");
  };
  // Rows first, then the checkpoint: every row before a checkpoint's position is on disk
  // when the checkpoint is, and a resume cuts the rows after it.
  auto checkpoint = [&](const RunPosition& at) {
    if (!lead) return;  // the parameters are the same on every rank
    try {
      check_finite(params, str("training stopped at epoch ", at.epoch + 1, " step ", at.step,
                               ": the parameters are not finite, so no checkpoint was written ("));
    } catch (const Error& e) {
      throw Error(str(e.what(), "; ", last_good, ")"));
    }
    csv->flush();
    RunPosition timed = at;
    timed.seconds = pos.seconds + elapsed();
    save_checkpoint(ckpt, opt, timed);
    last_good = "the last good checkpoint is " + ckpt;
    last_ckpt = std::chrono::steady_clock::now();
  };
  g_stop = false;
  if (pos.epoch < cfg_.epochs) loader.start(pos.epoch + (pos.step == spe), pos.step == spe ? 0 : pos.step);
  else if (lead)
    std::printf("%s is already finished (%lld of %lld epochs); its deltas and curves are rewritten from the checkpoint. "
                "Give --epochs N (more than %lld) to train longer.\n", cfg_.out.c_str(), (long long)pos.epoch,
                (long long)cfg_.epochs, (long long)pos.epoch);
  res.already_finished = pos.epoch >= cfg_.epochs;
  AutocastGuard autocast(parse_precision(cfg_.precision, "run config: key 'precision'"));  // f32: off
  for (int64_t epoch = pos.epoch; epoch < cfg_.epochs; ++epoch) {
    model_->train();
    const bool resumed = epoch == pos.epoch;  // the epoch's sums so far come from the checkpoint
    double loss_sum = resumed ? pos.loss_sum : 0;
    int64_t correct = resumed ? pos.correct : 0, seen = resumed ? pos.seen : 0, seen_here = 0;
    const auto te = std::chrono::steady_clock::now();
    double ips = 0;
    for (int64_t step = resumed ? pos.step : 0; step < spe; ++step) {
      data::Batch b = loader.next();
      const int64_t gstep = epoch * spe + step;
      const double lr = nn::cosine_lr(gstep, total, cfg_.lr, cfg_.warmup_steps, cfg_.min_lr);
      opt.set_lr(lr);
      const StepTotals st = train_step(b, opt, params, epoch, step, last_good, g_stop);
      const double lv = st.loss;
      correct += st.correct, seen += st.samples, seen_here += st.samples;
      loss_sum += lv * double(st.samples);
      res.step_losses.push_back(lv);
      if (csv) csv->add_step(epoch + 1, gstep, lv, lr);
      const auto now = std::chrono::steady_clock::now();
      ips = double(seen_here) / std::max(std::chrono::duration<double>(now - te).count(), 1e-9);
      const double eta = double(total - gstep - 1) * double(cfg_.batch) / std::max(ips, 1e-9);
      progress(cfg_, verbose, epoch, step + 1, spe, loss_sum / double(seen), double(correct) / double(seen), ips, eta, false);
      const RunPosition here{epoch, step + 1, loss_sum, correct, seen};
      if (st.stop || (cfg_.max_steps > 0 && int64_t(res.step_losses.size()) >= cfg_.max_steps)) {
        checkpoint(here);
        if (verbose) std::printf("\ninterrupted: checkpoint written to %s\n", ckpt.c_str());
        res.interrupted = true;
        end_timing();
        return res;
      }
      // inside the epoch only: its end writes one anyway
      if (step + 1 < spe && checkpoint_due(gstep + 1, cfg_.checkpoint_every, cfg_.checkpoint_minutes,
                                           std::chrono::duration<double>(now - last_ckpt).count()))
        checkpoint(here);
    }
    const bool do_eval = (epoch + 1) % std::max<int64_t>(cfg_.eval_every, 1) == 0 || epoch + 1 == cfg_.epochs;
    const nn::ViTConfig& mc = model_->cfg;
    EpochResult er{epoch + 1, loss_sum / double(std::max<int64_t>(seen, 1)),
                   double(correct) / double(std::max<int64_t>(seen, 1)),
                   do_eval ? evaluate(*model_, val_set_, mc.mean, mc.std, 256, comm_) : -1.0};
    res.epochs.push_back(er);
    // the lr of the epoch's last step (not opt.lr(): a run resumed at the epoch's end has set none)
    if (csv) csv->add_epoch(er, (epoch + 1) * spe, nn::cosine_lr((epoch + 1) * spe - 1, total, cfg_.lr, cfg_.warmup_steps, cfg_.min_lr));
    if (verbose) {
      progress(cfg_, verbose, epoch, spe, spe, er.train_loss, er.train_acc, ips, 0, true);
      if (do_eval)
        std::printf("epoch %lld: train loss %.4f, train acc %.1f%%, val acc %.2f%%\n", (long long)er.epoch,
                    er.train_loss, 100 * er.train_acc, 100 * er.val_acc);
    }
    checkpoint({epoch + 1, 0, 0, 0, 0});
  }
  end_timing();
  if (lead) {
    csv->flush();
    write_outputs(csv->history(), spe);
  }
  return res;
}

}  // namespace dg::train

#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "autograd/autocast.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "nn/schedule.h"

namespace dg::train {

using nlohmann::json;
namespace fs = std::filesystem;

static std::atomic<bool> g_stop{false};
void Trainer::request_stop() { g_stop = true; }

json to_json(const RunConfig& c) {
  return {{"model_config", c.model_config}, {"model", c.model}, {"peft", c.peft}, {"data", c.data},
          {"epochs", c.epochs}, {"batch", c.batch}, {"lr", c.lr}, {"weight_decay", c.weight_decay},
          {"min_lr", c.min_lr}, {"label_smoothing", c.label_smoothing}, {"clip_grad", c.clip_grad},
          {"warmup_steps", c.warmup_steps}, {"pad", c.pad}, {"hflip", c.hflip}, {"seed", c.seed},
          {"device", c.device}, {"out", c.out}, {"max_steps", c.max_steps}, {"eval_every", c.eval_every}, {"log_every", c.log_every}, {"quiet", c.quiet},
          {"recompute_mlp", c.recompute_mlp}, {"precision", c.precision}};
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
    c.model_config = base["model_config"], c.model = base["model"], c.peft = base["peft"], c.data = base["data"];
    c.epochs = base["epochs"], c.batch = base["batch"], c.lr = base["lr"], c.weight_decay = base["weight_decay"];
    c.min_lr = base["min_lr"], c.label_smoothing = base["label_smoothing"], c.clip_grad = base["clip_grad"];
    c.warmup_steps = base["warmup_steps"], c.pad = base["pad"], c.hflip = base["hflip"], c.seed = base["seed"];
    c.device = base["device"], c.out = base["out"], c.max_steps = base["max_steps"], c.eval_every = base["eval_every"], c.log_every = base["log_every"], c.quiet = base["quiet"];
    c.recompute_mlp = base["recompute_mlp"];
    c.precision = base["precision"];
  } catch (const json::exception& e) {
    throw Error(str("run config: ", e.what()));
  }
  DG_CHECK(c.epochs >= 1 && c.batch >= 1 && c.lr > 0, "run config: epochs, batch and lr must be positive");
  DG_CHECK(c.device == "cpu" || c.device == "cuda", "run config: device must be cpu or cuda, got '", c.device, "'");
  parse_precision(c.precision, "run config: key 'precision'");
  return c;
}

std::pair<data::ImageSet, data::ImageSet> load_data(const std::string& spec, const nn::ViTConfig& mc, uint64_t seed) {
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
  data::ImageSet all = data::load_image_folder(d.path, mc.img_size, mc.in_chans);
  need_two(all.num_classes, "image folder '" + d.path + "'");
  auto [tr, va] = data::split(all, d.val_fraction, seed);
  DG_CHECK(va.size() > 0, "--data '", spec, "': holding out ", d.val_fraction, " of ", all.size(),
           " images leaves no validation image (each class rounds its share; a larger val= or more images needed)");
  if (d.n > 0) {
    std::vector<int64_t> cls(static_cast<size_t>(all.num_classes));
    for (size_t i = 0; i < cls.size(); ++i) cls[i] = int64_t(i);
    tr = data::select_classes(tr, cls, d.n, seed);
    tr.class_names = all.class_names;
  }
  return {tr, va};
}

double evaluate(nn::VisionTransformer& m, const data::ImageSet& set, const std::vector<double>& mean,
                const std::vector<double>& std, int64_t batch) {
  NoGradGuard ng;
  const bool was = m.training();
  m.eval();
  data::LoaderOptions o;
  o.batch = batch, o.shuffle = false, o.mean = mean, o.std = std;
  data::DataLoader dl(set, o);
  int64_t correct = 0;
  Device dev = m.pos_embed.device();
  for (int64_t s = 0; s < dl.batches_per_epoch(); ++s) {
    data::Batch b = dl.make_batch(0, s);
    std::vector<double> pred = argmax(m(b.images.to(dev)), 1).to_vector(), lab = b.labels.to_vector();
    for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == lab[i];
  }
  m.train(was);
  return double(correct) / double(std::max<int64_t>(set.size(), 1));
}

Trainer::Trainer(const RunConfig& cfg, const data::ImageSet& tr, const data::ImageSet& va)
    : cfg_(cfg), train_set_(tr), val_set_(va) {
  nn::ViTConfig mc = nn::load_vit_config(cfg.model_config);
  DG_CHECK(tr.num_classes > 0, "trainer: the training set has no classes");
  mc.num_classes = tr.num_classes;
  DG_CHECK(tr.images.size(1) == mc.in_chans && tr.images.size(2) == mc.img_size, "trainer: images ",
           shape_str(tr.images.shape()), " do not fit the model (", mc.in_chans, " channels, ", mc.img_size, " px)");
  model_ = std::make_unique<nn::VisionTransformer>(mc);
  model_->init_weights(cfg.seed);
  model_->set_recompute_mlp(cfg.recompute_mlp);
  if (!cfg.model.empty()) {
    SafeTensors st = load_safetensors(cfg.model);
    nn::LoadReport r = nn::load_state_dict(*model_, st.tensors, "'" + cfg.model + "'");
    if (!r.head_loaded) model_->reset_head(cfg.seed + 1);
  }
  peft_ = std::make_unique<peft::PeftModel>(*model_, peft::parse_peft_config(cfg.peft, "peft config"), cfg.seed + 2);
  if (cfg.device == "cuda") {
    DG_CHECK(backend_available(Device::CUDA), "--device cuda: ", "no CUDA device, or a build without CUDA");
    peft_->to(Device::CUDA);
  }
}

void Trainer::save_checkpoint(const std::string& path, nn::Optimizer& opt, int64_t epoch, int64_t step) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, p] : peft_->trainable_parameters()) t["param." + n] = p;
  for (auto& [k, v] : opt.state_dict()) t["optim." + k] = v;
  const Generator& g = default_generator();
  save_safetensors(path, t,
                   {{"epoch", std::to_string(epoch)}, {"step", std::to_string(step)},
                    {"gen_seed", std::to_string(g.seed())}, {"gen_offset", std::to_string(g.offset())},
                    {"run_config", to_json(cfg_).dump()}});
}

// One line of progress: a bar on a terminal, plain lines otherwise (CI, pipes).
static void progress(const RunConfig& c, int64_t epoch, int64_t step, int64_t steps, double loss, double acc,
                     double ips, double eta, bool end) {
  if (c.quiet) return;
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

void check_finite_gradients(const nn::NamedTensors& params, int64_t epoch, int64_t step, const std::string& ckpt) {
  for (auto& [n, p] : params)
    if (p.grad().defined()) {
      const double ss = backend_of(p).sum_squares(p.grad());  // NaN or Inf anywhere makes it non-finite
      DG_CHECK(std::isfinite(ss), "training stopped: the gradient of '", n, "' is not finite at epoch ", epoch + 1,
               " step ", step, " (the last good checkpoint is ", ckpt, ")");
    }
}

TrainResult Trainer::fit(bool resume) {
  fs::create_directories(cfg_.out);
  write_file_atomic(cfg_.out + "/run_config.json", to_json(cfg_).dump(2) + "\n");
  const std::string ckpt = cfg_.out + "/checkpoint.safetensors";
  const nn::ViTConfig& mc = model_->cfg;
  data::LoaderOptions lo;
  lo.batch = cfg_.batch, lo.shuffle = true, lo.pad = cfg_.pad, lo.hflip = cfg_.hflip, lo.seed = cfg_.seed;
  lo.mean = mc.mean, lo.std = mc.std;
  data::DataLoader loader(train_set_, lo);
  const int64_t spe = loader.batches_per_epoch(), total = spe * cfg_.epochs;
  auto params = peft_->trainable_parameters();
  nn::AdamW opt(params, cfg_.lr, cfg_.weight_decay);
  for (auto& [n, m] : peft_->masks()) opt.set_mask(n, m);
  default_generator().manual_seed(cfg_.seed + 3);
  int64_t epoch0 = 0, step0 = 0;
  TrainResult res;
  if (resume) {
    SafeTensors st = load_safetensors(ckpt);
    std::map<std::string, Tensor> optim;
    for (auto& [k, t] : st.tensors)
      if (k.rfind("optim.", 0) == 0) optim[k.substr(6)] = t;
    NoGradGuard ng;
    for (auto& [n, p] : params) {
      auto it = st.tensors.find("param." + n);
      DG_CHECK(it != st.tensors.end(), "checkpoint '", ckpt, "': missing 'param.", n, "'");
      Tensor dst = p;
      dst.copy_(it->second);
    }
    opt.load_state_dict(optim);
    epoch0 = std::stoll(st.metadata.at("epoch"));
    step0 = std::stoll(st.metadata.at("step"));
    default_generator().set_state(std::stoull(st.metadata.at("gen_seed")), std::stoull(st.metadata.at("gen_offset")));
  }
  res.trainable_params = 0;
  for (auto& [n, p] : params) {
    auto it = peft_->masks().find(n);
    if (it == peft_->masks().end()) res.trainable_params += p.numel();
    else for (double v : it->second.to_vector()) res.trainable_params += v != 0;
  }
  res.total_params = peft_->base_parameter_count();
  std::ofstream csv(cfg_.out + "/metrics.csv", resume ? std::ios::app : std::ios::trunc);
  if (!resume) csv << "kind,epoch,step,loss,acc,lr,val_acc\n";
  Device dev = cfg_.device == "cuda" ? Device::CUDA : Device::CPU;
  const auto t0 = std::chrono::steady_clock::now();
  g_stop = false;
  loader.start(epoch0, step0);
  AutocastGuard autocast(parse_precision(cfg_.precision, "run config: key 'precision'"));  // f32: off
  for (int64_t epoch = epoch0; epoch < cfg_.epochs; ++epoch) {
    model_->train();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    const auto te = std::chrono::steady_clock::now();
    double ips = 0;
    for (int64_t step = epoch == epoch0 ? step0 : 0; step < spe; ++step) {
      data::Batch b = loader.next();
      const int64_t gstep = epoch * spe + step;
      const double lr = nn::cosine_lr(gstep, total, cfg_.lr, cfg_.warmup_steps, cfg_.min_lr);
      opt.set_lr(lr);
      Tensor logits = peft_->forward(b.images.to(dev));
      Tensor loss = cross_entropy(logits, b.labels.to(dev), cfg_.label_smoothing);
      const double lv = loss.item();
      DG_CHECK(std::isfinite(lv), "training stopped: the loss is ", lv, " at epoch ", epoch + 1, " step ", step,
               " (the last good checkpoint is ", ckpt, ")");
      backward(loss);
      peft_->mask_gradients();
      check_finite_gradients(params, epoch, step, ckpt);
      if (cfg_.clip_grad > 0) nn::clip_grad_norm(params, cfg_.clip_grad);
      opt.step();
      opt.zero_grad();
      std::vector<double> pred = argmax(logits, 1).to_vector(), lab = b.labels.to_vector();
      for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == lab[i];
      seen += int64_t(pred.size());
      loss_sum += lv * double(pred.size());
      res.step_losses.push_back(lv);
      csv << "step," << epoch + 1 << "," << gstep << "," << lv << ",," << lr << ",\n";
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      ips = double(seen) / std::max(dt, 1e-9);
      const double eta = double(total - gstep - 1) * double(cfg_.batch) / std::max(ips, 1e-9);
      progress(cfg_, epoch, step + 1, spe, loss_sum / double(seen), double(correct) / double(seen), ips, eta, false);
      if (g_stop || (cfg_.max_steps > 0 && int64_t(res.step_losses.size()) >= cfg_.max_steps)) {
        save_checkpoint(ckpt, opt, step + 1 == spe ? epoch + 1 : epoch, (step + 1) % spe);
        if (!cfg_.quiet) std::printf("\ninterrupted: checkpoint written to %s\n", ckpt.c_str());
        res.interrupted = true;
        res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return res;
      }
    }
    const bool do_eval = (epoch + 1) % std::max<int64_t>(cfg_.eval_every, 1) == 0 || epoch + 1 == cfg_.epochs;
    EpochResult er{epoch + 1, loss_sum / double(std::max<int64_t>(seen, 1)),
                   double(correct) / double(std::max<int64_t>(seen, 1)),
                   do_eval ? evaluate(*model_, val_set_, mc.mean, mc.std) : -1.0};
    res.epochs.push_back(er);
    csv << "epoch," << er.epoch << "," << (epoch + 1) * spe << "," << er.train_loss << "," << er.train_acc << ","
        << opt.lr() << "," << er.val_acc << "\n";
    csv.flush();
    if (!cfg_.quiet) {
      progress(cfg_, epoch, spe, spe, er.train_loss, er.train_acc, ips, 0, true);
      if (do_eval)
        std::printf("epoch %lld: train loss %.4f, train acc %.1f%%, val acc %.2f%%\n", (long long)er.epoch,
                    er.train_loss, 100 * er.train_acc, 100 * er.val_acc);
    }
    save_checkpoint(ckpt, opt, epoch + 1, 0);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  peft_->save(cfg_.out + "/deltas.safetensors");
  std::vector<double> all_losses;
  {
    std::ifstream in(cfg_.out + "/metrics.csv");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("step,", 0) == 0) {
        size_t a = line.find(',', 5), b2 = line.find(',', a + 1), c2 = line.find(',', b2 + 1);
        all_losses.push_back(std::stod(line.substr(b2 + 1, c2 - b2 - 1)));
      }
  }
  std::vector<EpochResult> all_epochs;
  {
    std::ifstream in(cfg_.out + "/metrics.csv");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("epoch,", 0) == 0) {
        std::vector<std::string> f;
        size_t s = 0, e;
        while ((e = line.find(',', s)) != std::string::npos) f.push_back(line.substr(s, e - s)), s = e + 1;
        f.push_back(line.substr(s));
        all_epochs.push_back({std::stoll(f[1]), std::stod(f[3]), std::stod(f[4]), std::stod(f[6])});
      }
  }
  write_curves_svg(cfg_.out + "/curves.svg", all_losses, all_epochs);
  return res;
}

void write_curves_svg(const std::string& path, const std::vector<double>& losses, const std::vector<EpochResult>& epochs) {
  const double W = 640, H = 320, L = 50, R = 50, T = 20, B = 40;
  double lmax = 1e-9;
  for (double l : losses) lmax = std::max(lmax, l);
  std::string s = str("<svg xmlns='http://www.w3.org/2000/svg' width='", W, "' height='", H,
                      "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n");
  s += str("<line x1='", L, "' y1='", H - B, "' x2='", W - R, "' y2='", H - B, "' stroke='black'/>\n");
  s += str("<line x1='", L, "' y1='", T, "' x2='", L, "' y2='", H - B, "' stroke='black'/>\n");
  auto X = [&](double f) { return L + f * (W - L - R); };
  auto Y = [&](double f) { return H - B - f * (H - T - B); };
  if (!losses.empty()) {
    s += "<polyline fill='none' stroke='#1f77b4' stroke-width='1' points='";
    for (size_t i = 0; i < losses.size(); ++i)
      s += str(X(double(i) / double(std::max<size_t>(losses.size() - 1, 1))), ",", Y(losses[i] / lmax), " ");
    s += "'/>\n";
  }
  if (!epochs.empty()) {
    s += "<polyline fill='none' stroke='#d62728' stroke-width='2' points='";
    for (const EpochResult& e : epochs)
      if (e.val_acc >= 0) s += str(X(double(e.epoch) / double(epochs.back().epoch)), ",", Y(e.val_acc), " ");
    s += "'/>\n";
  }
  s += str("<text x='", L, "' y='", H - 10, "'>step</text>");
  s += str("<text x='", L + 5, "' y='", T + 12, "' fill='#1f77b4'>train loss (max ", lmax, ")</text>");
  s += str("<text x='", W - R - 160, "' y='", T + 12, "' fill='#d62728'>val accuracy (0-1)</text>\n</svg>\n");
  write_file_atomic(path, s);
}

}  // namespace dg::train

#include "train/lt_sft.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "autograd/ops.h"
#include "nn/glob.h"
#include "nn/vit_config.h"
#include "peft/sensitivity.h"

namespace dg::train {

using nlohmann::json;
namespace fs = std::filesystem;

// Every option, listed once: parsing and the sweep's record both walk it.
template <class Options, class Visit>
static void visit_options(Options& o, Visit&& v) {
  v("maskable", o.maskable), v("ft_params_proportion", o.ft_params_proportion), v("ft_params_num", o.ft_params_num);
  v("full_ft_epochs", o.full_ft_epochs), v("sparse_ft_epochs", o.sparse_ft_epochs), v("full_lr", o.full_lr);
  v("sparse_lr", o.sparse_lr), v("full_l1_reg", o.full_l1_reg), v("sparse_l1_reg", o.sparse_l1_reg);
  v("apply_reg_to_sparse_only", o.apply_reg_to_sparse_only), v("freeze_layer_norm", o.freeze_layer_norm);
}

json lt_sft_options_to_json(const LtSftOptions& o) {
  json j = json::object();
  visit_options(o, [&](const char* key, const auto& field) { j[key] = field; });
  return j;
}

LtSftOptions lt_sft_options_from_json(const json& j, const std::string& where) {
  DG_CHECK(j.is_object(), where, ": LT-SFT options must be a JSON object, got ", j.dump());
  json all = lt_sft_options_to_json(LtSftOptions{});
  for (auto it = j.begin(); it != j.end(); ++it) {
    DG_CHECK(all.contains(it.key()), where, ": unknown LT-SFT option '", it.key(), "' (known: ", all.dump(), ")");
    all[it.key()] = it.value();
  }
  LtSftOptions o;
  try {
    visit_options(o, [&](const char* key, auto& field) { field = all[key].get<std::decay_t<decltype(field)>>(); });
  } catch (const json::exception& e) {
    throw Error(str(where, ": LT-SFT options: ", e.what()));
  }
  DG_CHECK(o.ft_params_proportion > 0 && o.ft_params_proportion <= 1, where,
           ": ft_params_proportion must be in (0, 1], got ", o.ft_params_proportion);
  DG_CHECK(o.ft_params_num >= 0 && o.full_ft_epochs >= 1 && o.sparse_ft_epochs >= 1, where,
           ": ft_params_num must be >= 0 and the epochs of each phase >= 1");
  for (double v : {o.full_lr, o.sparse_lr})
    DG_CHECK(std::isfinite(v) && v > 0, where, ": the learning rates must be positive, got ", v);
  for (double v : {o.full_l1_reg, o.sparse_l1_reg})
    DG_CHECK(std::isfinite(v) && v >= 0, where, ": full_l1_reg and sparse_l1_reg must be >= 0, got ", v);
  return o;
}

std::map<std::string, Tensor> most_changed_masks(const std::map<std::string, Tensor>& scores, int64_t k,
                                                 double* threshold) {
  std::vector<float> all;
  for (const auto& [n, s] : scores) {
    const std::vector<float> v = s.to_float_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  DG_CHECK(k >= 1 && k <= int64_t(all.size()), "LT-SFT: asked to keep ", k, " weights of ", all.size());
  // np.partition(diffs, n - k)[n - k]: the k-th largest
  const auto nth = all.begin() + (int64_t(all.size()) - k);
  std::nth_element(all.begin(), nth, all.end());
  const float thresh = *nth;
  if (threshold) *threshold = thresh;
  std::map<std::string, Tensor> masks;
  for (const auto& [n, s] : scores) {
    std::vector<float> v = s.to_float_vector();
    for (float& x : v) x = x >= thresh ? 1.0f : 0.0f;
    masks[n] = Tensor::from_vector(v, s.shape());
  }
  return masks;
}

int64_t lt_sft_k(const LtSftOptions& o, int64_t maskable_params) {
  const int64_t k = o.ft_params_num > 0 ? o.ft_params_num : int64_t(o.ft_params_proportion * double(maskable_params));
  DG_CHECK(k >= 1 && k <= maskable_params, "LT-SFT: k = ", k, " weights to keep (ft_params_num ", o.ft_params_num,
           ", ft_params_proportion ", o.ft_params_proportion, ") must be in [1, ", maskable_params,
           "], the maskable parameters");
  return k;
}

// The authors' freeze_layer_norm tests 'LayerNorm' in a Hugging Face name; timm names them norm,
// norm1, norm2, fc_norm, q_norm, k_norm.
static bool is_layer_norm(const std::string& name) {
  size_t i = 0;
  for (size_t j; (j = name.find('.', i)) != std::string::npos; i = j + 1)
    if (name.substr(i, j - i).find("norm") != std::string::npos) return true;
  return false;
}

std::vector<std::string> maskable_tensors(nn::VisionTransformer& model, const LtSftOptions& o) {
  std::vector<std::string> names;
  for (auto& [n, t] : model.named_parameters(false)) {
    const bool eligible = o.maskable.empty() ? !nn::glob_match("head.*", n) : nn::glob_match_any(o.maskable, n);
    if (eligible && !(o.freeze_layer_norm && is_layer_norm(n))) names.push_back(n);
  }
  DG_CHECK(!names.empty(), "LT-SFT: the maskable globs ", json(o.maskable).dump(), " match no base tensor",
           o.freeze_layer_norm ? " that is not a LayerNorm" : "");
  return names;
}

LtSftResult run_lt_sft(const RunConfig& rc, const LtSftOptions& o, const data::ImageSet& train_set,
                       const data::ImageSet& val_set, bool resume) {
  LtSftResult res;
  const std::string masks_path = fs::absolute(rc.out + "/sft_masks.safetensors").string();
  fs::create_directories(rc.out);
  std::vector<std::string> maskable, all;
  {
    nn::VisionTransformer probe(nn::load_vit_config(rc.model_config));  // names only
    maskable = maskable_tensors(probe, o);
    for (auto& [n, t] : probe.named_parameters(false))
      if (!(o.freeze_layer_norm && is_layer_norm(n))) all.push_back(n);
  }
  const std::vector<std::string> reg_tensors = o.apply_reg_to_sparse_only ? maskable : std::vector<std::string>{};

  if (!(resume && fs::exists(masks_path))) {  // phase 1: every tensor (but frozen LayerNorms)
    RunConfig full = rc;
    full.out = rc.out + "/full", full.epochs = o.full_ft_epochs, full.lr = o.full_lr;
    full.l1_reg = o.full_l1_reg, full.l1_reg_tensors = reg_tensors;
    full.peft = {{"trainable", o.freeze_layer_norm ? json(all) : json::array({"*"})}};
    Trainer t(full, train_set, val_set);
    std::map<std::string, Tensor> before, scores;
    for (auto& [n, p] : t.model().named_parameters(false))
      if (std::find(maskable.begin(), maskable.end(), n) != maskable.end()) before[n] = p.detach().to(Device::CPU).clone();
    res.full = t.fit(resume && fs::exists(full.out + "/checkpoint.safetensors"));
    if (res.full.interrupted) return res.interrupted = true, res;
    for (auto& [n, p] : t.model().named_parameters(false))
      if (before.count(n)) scores[n] = abs(sub(p.detach().to(Device::CPU), before[n]));
    for (auto& [n, s] : scores) res.maskable_params += s.numel();
    res.k = lt_sft_k(o, res.maskable_params);
    auto masks = most_changed_masks(scores, res.k, &res.threshold);
    char thresh[32];
    std::snprintf(thresh, sizeof thresh, "%.9g", res.threshold);  // str() printed a 1e-4 threshold as 0
    peft::save_mask_file(masks_path, masks,
                         {{"generator", "deltagrad LT-SFT"}, {"criterion", "|theta_1 - theta_0| >= threshold"},
                          {"k", std::to_string(res.k)}, {"threshold", thresh}});
  }

  // phase 2: a fresh Trainer reloads the base (theta_0) and makes the same head, a fresh optimizer
  RunConfig sparse = rc;
  sparse.epochs = o.sparse_ft_epochs, sparse.lr = o.sparse_lr;
  sparse.l1_reg = o.sparse_l1_reg, sparse.l1_reg_tensors = reg_tensors;
  json masks = json::array();
  for (const std::string& n : maskable) masks.push_back({{"tensor", n}, {"from", masks_path}});
  sparse.peft = {{"masks", masks}, {"trainable", {"head.*"}}};
  Trainer t(sparse, train_set, val_set);
  for (auto& [n, m] : t.peft().masks()) res.kept += int64_t(std::llround(sum(m).item()));
  res.sparse = t.fit(resume && fs::exists(rc.out + "/checkpoint.safetensors"));
  res.interrupted = res.sparse.interrupted;
  return res;
}

}  // namespace dg::train

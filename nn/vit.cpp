#include "nn/vit.h"

#include <cmath>

#include "autograd/ops.h"
#include "core/random.h"

namespace dg::nn {

VisionTransformer::VisionTransformer(const ViTConfig& c) : cfg(c) {
  const int64_t D = c.embed_dim;
  patch_embed = register_module("patch_embed", std::make_shared<PatchEmbed>(c.img_size, c.patch_size, c.in_chans, D));
  if (c.class_token) cls_token = register_parameter("cls_token", Tensor::zeros({1, 1, D}));
  pos_embed = register_parameter("pos_embed", Tensor::zeros({1, c.num_prefix_tokens() + c.num_patches(), D}));
  pos_drop = register_module("pos_drop", std::make_shared<Dropout>(c.drop_rate));
  for (int64_t i = 0; i < c.depth; ++i) {
    // stochastic depth grows linearly with depth (timm's decay rule)
    const double dp = c.depth > 1 ? c.drop_path_rate * double(i) / double(c.depth - 1) : 0.0;
    blocks.push_back(register_module(
        "blocks." + std::to_string(i),
        std::make_shared<Block>(D, c.num_heads, c.mlp_ratio, c.qkv_bias, c.drop_rate, c.attn_drop_rate, dp,
                                c.init_values, c.norm_eps)));
  }
  const bool avg = c.global_pool == "avg";
  norm = avg ? std::shared_ptr<Module>(register_module("norm", std::make_shared<Identity>()))
             : std::shared_ptr<Module>(register_module("norm", std::make_shared<LayerNorm>(D, c.norm_eps)));
  fc_norm = avg ? std::shared_ptr<Module>(register_module("fc_norm", std::make_shared<LayerNorm>(D, c.norm_eps)))
                : std::shared_ptr<Module>(register_module("fc_norm", std::make_shared<Identity>()));
  head_drop = register_module("head_drop", std::make_shared<Dropout>(c.drop_rate));
  head = c.num_classes > 0 ? std::shared_ptr<Module>(register_module("head", std::make_shared<Linear>(D, c.num_classes)))
                           : std::shared_ptr<Module>(register_module("head", std::make_shared<Identity>()));
  init_weights(0);
  freeze_all();  // trainability is decided by the caller (filters, PEFT config)
}

Tensor VisionTransformer::forward_features(const Tensor& images) { return features(images, false); }

bool VisionTransformer::pooled_row_only_ok() {
  if (cfg.global_pool != "token" || !cfg.class_token || blocks.empty()) return false;
  // the last block's own Pre deltas act on its input, whose rows are all computed
  for (auto& [site, d] : blocks.back()->all_deltas())
    if (d->enabled && !d->row_wise() && !(site.empty() && d->position() == Delta::Position::Pre)) return false;
  for (auto& [site, d] : norm->all_deltas())
    if (d->enabled && !d->row_wise()) return false;
  return true;
}

Tensor VisionTransformer::features(const Tensor& images, bool pooled_row_only) {
  DG_CHECK(images.dim() == 4 && images.size(2) == cfg.img_size && images.size(3) == cfg.img_size, "ViT: images ",
           images.desc(), ", expected [B, ", cfg.in_chans, ", ", cfg.img_size, ", ", cfg.img_size, "]");
  const int64_t B = images.size(0), D = cfg.embed_dim;
  Tensor x = (*patch_embed)(images);  // [B, N, D]
  if (cfg.class_token) x = concat({expand(cls_token, {B, 1, D}), x}, 1);
  x = add(x, pos_embed);
  x = (*pos_drop)(x);
  // The hints hold for this forward only (a later call may have other deltas enabled), so they
  // are cleared however it ends.
  struct ClearHints {
    std::vector<std::shared_ptr<Block>>& blocks;
    ~ClearHints() {
      for (auto& b : blocks) {
        b->dropped_rows = {0, 0};
        b->attn->skip_queries = {};
        if (Delta* d = b->first_pre_delta()) d->unread_rows_absent = false;
      }
    }
  } clear{blocks};
  for (size_t i = 0; i < blocks.size(); ++i) {
    Delta* next = i + 1 < blocks.size() ? blocks[i + 1]->first_pre_delta() : nullptr;
    const auto rows = next ? next->unread_input_rows() : std::pair<int64_t, int64_t>{0, 0};
    const bool drop = skip_unread_rows && rows.second > rows.first && blocks[i]->can_drop_rows();
    blocks[i]->dropped_rows = drop ? rows : std::pair<int64_t, int64_t>{0, 0};
    if (next) next->unread_rows_absent = drop;
    // The pool reads the class token only: the last block computes its row alone (its input's
    // row count is known only after the block's own Pre deltas, so the range runs "to the end").
    if (i + 1 == blocks.size() && pooled_row_only && skip_unread_rows) blocks[i]->dropped_rows = {1, Block::kToLastRow};
    x = (*blocks[i])(x);
  }
  return (*norm)(x);
}

Tensor VisionTransformer::forward_head(const Tensor& x) {
  Tensor pooled = cfg.global_pool == "avg" ? mean(slice(x, 1, cfg.num_prefix_tokens(), x.size(1)), {1})
                                           : squeeze(slice(x, 1, 0, 1), 1);  // [B, D]
  pooled = (*fc_norm)(pooled);
  return (*head)((*head_drop)(pooled));
}

Tensor VisionTransformer::forward(const Tensor& images) {
  return forward_head(features(images, pooled_row_only_ok()));
}

void VisionTransformer::init_weights(uint64_t seed) {
  Generator g(seed);
  NoGradGuard ng;
  for (auto& [name, t] : named_parameters(false)) {
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (name == "pos_embed") {
      g.trunc_normal_(t, 0.02, -2.0, 2.0);  // timm: absolute bounds [-2, 2]
    } else if (name == "cls_token") {
      g.normal_(t, 0.0, 1e-6);
    } else if (name == "patch_embed.proj.weight" || name == "patch_embed.proj.bias") {
      // PyTorch's Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
      const double bound = 1.0 / std::sqrt(double(cfg.in_chans * cfg.patch_size * cfg.patch_size));
      g.uniform_(t, -bound, bound);
    } else if (name.find("norm") != std::string::npos || name.find(".ls") != std::string::npos) {
      continue;  // LayerNorm ones/zeros, LayerScale init_values: set at construction
    } else if (is_bias) {
      Tensor(t).fill_(0.0);
    } else {
      g.trunc_normal_(t, 0.02, -2.0, 2.0);  // Linear weights
    }
  }
}

void VisionTransformer::reset_head(uint64_t seed) {
  auto lin = std::dynamic_pointer_cast<Linear>(head);
  if (!lin) return;
  Generator g(seed);
  NoGradGuard ng;
  g.trunc_normal_(lin->weight, 0.02, -2.0, 2.0);
  Tensor(lin->bias).fill_(0.0);
}

std::map<std::string, Tensor> state_dict(Module& m) {
  std::map<std::string, Tensor> out;
  for (auto& [n, t] : m.named_parameters(false)) out[n] = t;
  return out;
}

Tensor resample_pos_embed(const Tensor& pe, int64_t prefix, int64_t g1) {
  const int64_t D = pe.size(2), n0 = pe.size(1) - prefix, g0 = int64_t(std::llround(std::sqrt(double(n0))));
  DG_CHECK(g0 * g0 == n0, "pos_embed ", pe.desc(), ": ", n0, " patch positions do not form a square grid");
  std::vector<double> src = pe.to_vector(), dst(size_t((prefix + g1 * g1) * D));
  std::copy(src.begin(), src.begin() + prefix * D, dst.begin());
  // align_corners=False bilinear, as F.interpolate(mode='bilinear') in timm's resample
  const double s = double(g0) / double(g1);
  for (int64_t y = 0; y < g1; ++y)
    for (int64_t x = 0; x < g1; ++x) {
      double fy = std::max((y + 0.5) * s - 0.5, 0.0), fx = std::max((x + 0.5) * s - 0.5, 0.0);
      int64_t y0 = std::min(int64_t(fy), g0 - 1), x0 = std::min(int64_t(fx), g0 - 1);
      int64_t y1 = std::min(y0 + 1, g0 - 1), x1 = std::min(x0 + 1, g0 - 1);
      double wy = fy - double(y0), wx = fx - double(x0);
      for (int64_t d = 0; d < D; ++d) {
        auto at = [&](int64_t yy, int64_t xx) { return src[size_t((prefix + yy * g0 + xx) * D + d)]; };
        dst[size_t((prefix + y * g1 + x) * D + d)] = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) +
                                                     wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
      }
    }
  return Tensor::from_vector(dst, {1, prefix + g1 * g1, D}).to(pe.dtype());
}

LoadReport load_state_dict(VisionTransformer& m, const std::map<std::string, Tensor>& sd, const std::string& what) {
  LoadReport rep;
  auto mine = state_dict(m);
  for (const auto& [name, t] : sd)
    DG_CHECK(mine.count(name), what, ": unexpected tensor '", name, "' ", shape_str(t.shape()),
             " (not in the model; check the model config)");
  NoGradGuard ng;
  for (auto& [name, p] : mine) {
    auto it = sd.find(name);
    if (it == sd.end()) {
      if (name.rfind("head.", 0) == 0) {
        rep.head_loaded = false;
        continue;
      }
      throw Error(str(what, ": missing tensor '", name, "' (expected shape ", shape_str(p.shape()), ")"));
    }
    Tensor src = it->second;
    if (name == "pos_embed" && src.shape() != p.shape() && src.dim() == 3 && src.size(2) == p.size(2)) {
      src = resample_pos_embed(src, m.cfg.num_prefix_tokens(), m.cfg.grid());
      rep.pos_embed_resampled = true;
    }
    if (name.rfind("head.", 0) == 0 && src.shape() != p.shape()) {  // another task's head: start fresh
      rep.head_loaded = false;
      continue;
    }
    DG_CHECK(src.shape() == p.shape(), what, ": tensor '", name, "' has shape ", shape_str(src.shape()),
             ", expected ", shape_str(p.shape()));
    DG_CHECK(is_float(src.dtype()), what, ": tensor '", name, "' has dtype ", dtype_name(src.dtype()),
             ", expected a float type");
    for (double v : src.to_vector())
      DG_CHECK(std::isfinite(v), what, ": tensor '", name, "' contains NaN or Inf");
    Tensor dst = p;
    dst.copy_(src);
  }
  if (!rep.head_loaded) m.reset_head(1);
  return rep;
}

}  // namespace dg::nn

// The ViT's building blocks, with timm's parameter names. Shapes beside each buffer.
#pragma once
#include <cstdint>
#include <memory>

#include "core/backend.h"
#include "nn/module.h"

namespace dg::nn {

// y = x W^T + b;  weight [out, in], bias [out]
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  int64_t in_features, out_features;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-6);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;  // [dim]
  double eps;
  // Keep the input for backward even where the output would do (autograd/ops/layer_norm.cpp):
  // set by the block when a delta also reads this LayerNorm's input.
  bool keep_input = false;
};

// Inverted dropout; masks come from the default generator (reproducible by seed).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.0) : p(p) {}
  Tensor forward(const Tensor& x) override;
  double p;
};

// Stochastic depth: drops the whole residual branch per sample with probability p.
class DropPath : public Module {
 public:
  explicit DropPath(double p = 0.0) : p(p) {}
  Tensor forward(const Tensor& x) override;
  double p;
};
Tensor drop_path(const Tensor& x, double p, bool training);  // x [B, ...]

class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
};

// x * gamma (timm's LayerScale, `ls1.gamma`)
class LayerScale : public Module {
 public:
  LayerScale(int64_t dim, double init);
  Tensor forward(const Tensor& x) override;
  Tensor gamma;  // [dim]
};

class Mlp : public Module {
 public:
  Mlp(int64_t dim, int64_t hidden, double drop);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<GELU> act;
  std::shared_ptr<Dropout> drop1, drop2;
  // Save fc1's input instead of its 4x wider output and redo the fc1 GEMM in backward
  // (applies while fc1 and act carry no deltas; VisionTransformer::set_recompute_mlp).
  bool recompute = false;
};

// Multi-head self-attention with timm's fused qkv: qkv(x) [B,N,3D] -> [3,B,H,N,hd]
// (rows ordered [q|k|v], head-major), softmax(q k^T * hd^-0.5) v, then proj.
class Attention : public Module {
 public:
  Attention(int64_t dim, int64_t heads, bool qkv_bias, double attn_drop, double proj_drop);
  Tensor forward(const Tensor& x) override;  // [B, N, D] -> [B, N - skip_queries.skipped(), D]
  std::shared_ptr<Linear> qkv, proj;
  std::shared_ptr<Dropout> attn_drop, proj_drop;
  int64_t heads, head_dim;
  double scale;
  // Rows that are keys and values only (set by the block for rows nobody reads downstream).
  AttnRows skip_queries;
};

// Pre-norm block: x = x + drop_path(ls1(attn(norm1(x)))); x = x + drop_path(ls2(mlp(norm2(x)))).
// Inner points for deltas: "attn_branch" (input x, output the attention branch before the
// residual add) and "mlp_branch" (input the MLP sub-block's residual input, output its branch).
//
// dropped_rows [first, second): output rows that nobody reads (VPT-deep: the next block's prompt
// replaces them), set per forward by VisionTransformer::forward_features. They still serve as
// keys and values of the attention, but get no query, proj, residual, norm2 or MLP, and the
// output lacks them: [B, N, D] -> [B, N - (second - first), D]. Ignored while a dropout inside
// the block is active (its masks would be drawn over other shapes; can_drop_rows()).
class Block : public Module {
 public:
  Block(int64_t dim, int64_t heads, double mlp_ratio, bool qkv_bias, double drop, double attn_drop,
        double drop_path, double init_values, double eps);
  Tensor forward(const Tensor& x) override;
  bool can_drop_rows() const;
  static constexpr int64_t kToLastRow = INT64_MAX;
  std::pair<int64_t, int64_t> dropped_rows{0, 0};
  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<Mlp> mlp;
  std::shared_ptr<Module> ls1, ls2;  // LayerScale or Identity
  std::shared_ptr<DropPath> drop_path1, drop_path2;
};

// Conv with stride = kernel = p, computed as patchify + one GEMM. proj.weight [D, C, p, p].
class PatchEmbed : public Module {
 public:
  PatchEmbed(int64_t img, int64_t patch, int64_t in_chans, int64_t dim);
  Tensor forward(const Tensor& x) override;  // [B,C,H,W] -> [B, N, D]
  std::shared_ptr<Module> proj;               // holds weight/bias under "proj."
  Tensor weight, bias;
  int64_t patch, in_chans, dim;
};

}  // namespace dg::nn

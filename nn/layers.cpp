#include "nn/layers.h"

#include <algorithm>
#include <cmath>

#include "autograd/ops.h"
#include "core/random.h"

namespace dg::nn {

namespace {
// A parameter holder with no forward of its own (patch_embed.proj).
struct ParamHolder : Module {
  Tensor forward(const Tensor& x) override { return x; }
  using Module::register_parameter;
};
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  weight = register_parameter("weight", Tensor::zeros({out, in}));
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({out}));
}
Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

LayerNorm::LayerNorm(int64_t dim, double e) : eps(e) {
  weight = register_parameter("weight", Tensor::ones({dim}));
  bias = register_parameter("bias", Tensor::zeros({dim}));
}
Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, eps, keep_input); }

Tensor Dropout::forward(const Tensor& x) {
  if (!training() || p == 0) return x;
  return dropout(x, p, true, default_generator().next_key());
}

Tensor drop_path(const Tensor& x, double p, bool training) {
  if (!training || p == 0) return x;
  const int64_t B = x.size(0);
  Shape ms(size_t(x.dim()), 1);
  ms[0] = B;
  // keep_b = (u_b >= p) / (1 - p): one draw per sample, broadcast over the rest
  Tensor u = Tensor::empty({B}, x.dtype(), Device::CPU);
  default_generator().uniform_(u);
  std::vector<double> uv = u.to_vector(), mv(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) mv[size_t(b)] = uv[size_t(b)] >= p ? 1.0 / (1.0 - p) : 0.0;
  Tensor mask = Tensor::from_vector(mv, ms).to(x.dtype()).to(x.device());
  return mul(x, mask);
}
Tensor DropPath::forward(const Tensor& x) { return drop_path(x, p, training()); }

Tensor GELU::forward(const Tensor& x) { return gelu(x); }

LayerScale::LayerScale(int64_t dim, double init) { gamma = register_parameter("gamma", Tensor::full({dim}, init)); }
Tensor LayerScale::forward(const Tensor& x) { return mul(x, gamma); }

Mlp::Mlp(int64_t dim, int64_t hidden, double drop) {
  fc1 = register_module("fc1", std::make_shared<Linear>(dim, hidden));
  act = register_module("act", std::make_shared<GELU>());
  drop1 = register_module("drop1", std::make_shared<Dropout>(drop));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, dim));
  drop2 = register_module("drop2", std::make_shared<Dropout>(drop));
}
Tensor Mlp::forward(const Tensor& x) {
  Tensor h = recompute && fc1->deltas().empty() && act->deltas().empty()
                 ? linear_gelu(x, fc1->weight, fc1->bias, true)
                 : (*act)((*fc1)(x));
  return (*drop2)((*fc2)((*drop1)(h)));
}

Attention::Attention(int64_t dim, int64_t h, bool qkv_bias, double ad, double pd) : heads(h) {
  DG_CHECK(dim % h == 0, "Attention: dim ", dim, " is not divisible by num_heads ", h);
  head_dim = dim / h;
  scale = 1.0 / std::sqrt(double(head_dim));
  qkv = register_module("qkv", std::make_shared<Linear>(dim, 3 * dim, qkv_bias));
  attn_drop = register_module("attn_drop", std::make_shared<Dropout>(ad));
  proj = register_module("proj", std::make_shared<Linear>(dim, dim));
  proj_drop = register_module("proj_drop", std::make_shared<Dropout>(pd));
}

Tensor Attention::forward(const Tensor& x) {
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), Nq = N - skip_queries.skipped();
  Tensor t = (*qkv)(x);  // [B, N, 3D]: every row is a key and a value
  Tensor o;              // [B, Nq, D]: the rows that are queries
  // The probabilities must exist for dropout on them or a delta attached at attn_drop;
  // otherwise the fused op never materialises them.
  if ((attn_drop->training() && attn_drop->p > 0) || !attn_drop->deltas().empty()) {
    t = contiguous(permute(reshape(t, {B, N, 3, heads, head_dim}), {2, 0, 3, 1, 4}));  // [3, B, H, N, hd]
    Tensor q = squeeze(slice(t, 0, 0, 1), 0), k = squeeze(slice(t, 0, 1, 2), 0), v = squeeze(slice(t, 0, 2, 3), 0);
    q = without_range(q, 2, skip_queries.skip_begin, skip_queries.skip_end);
    Tensor a = (*attn_drop)(softmax(matmul(q, k, false, true, scale), -1));  // [B, H, Nq, N]
    o = reshape(transpose(matmul(a, v), 1, 2), {B, Nq, D});
  } else {
    o = attention(t, heads, scale, true, skip_queries);  // fused where the backend has it
  }
  return (*proj_drop)((*proj)(o));
}

Block::Block(int64_t dim, int64_t heads, double mlp_ratio, bool qkv_bias, double drop, double attn_drop_p,
             double dp, double init_values, double eps) {
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(dim, eps));
  attn = register_module("attn", std::make_shared<Attention>(dim, heads, qkv_bias, attn_drop_p, drop));
  ls1 = init_values > 0 ? std::shared_ptr<Module>(register_module("ls1", std::make_shared<LayerScale>(dim, init_values)))
                        : std::shared_ptr<Module>(register_module("ls1", std::make_shared<Identity>()));
  drop_path1 = register_module("drop_path1", std::make_shared<DropPath>(dp));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(dim, eps));
  mlp = register_module("mlp", std::make_shared<Mlp>(dim, int64_t(double(dim) * mlp_ratio), drop));
  ls2 = init_values > 0 ? std::shared_ptr<Module>(register_module("ls2", std::make_shared<LayerScale>(dim, init_values)))
                        : std::shared_ptr<Module>(register_module("ls2", std::make_shared<Identity>()));
  drop_path2 = register_module("drop_path2", std::make_shared<DropPath>(dp));
  declare_point("attn_branch");
  declare_point("mlp_branch");
}

bool Block::can_drop_rows() const {
  auto active = [](const Dropout& d) { return d.training() && d.p > 0; };
  return !active(*attn->attn_drop) && !active(*attn->proj_drop) && !active(*mlp->drop1) && !active(*mlp->drop2);
}

Tensor Block::forward(const Tensor& x) {
  const int64_t d0 = dropped_rows.first, d1 = std::min(dropped_rows.second, x.size(1));
  const bool drop = d1 > d0 && can_drop_rows();
  // a delta reading a branch point's input reads what the LayerNorm reads: share that buffer
  // (with dropped rows that input is the kept rows, a buffer of its own)
  norm1->keep_input = point_reads_input("attn_branch") && !drop;
  norm2->keep_input = point_reads_input("mlp_branch");
  attn->skip_queries = drop ? AttnRows{d0, d1} : AttnRows{};
  Tensor xk = drop ? without_range(x, 1, d0, d1) : x;  // the residual stream's kept rows
  // the attention branch is not held through the MLP (where the forward's working set peaks)
  Tensor y = add(xk, point("attn_branch", xk, (*drop_path1)((*ls1)((*attn)((*norm1)(x))))));
  Tensor m = (*drop_path2)((*ls2)((*mlp)((*norm2)(y))));
  return add(y, point("mlp_branch", y, m));
}

PatchEmbed::PatchEmbed(int64_t img, int64_t p, int64_t c, int64_t d) : patch(p), in_chans(c), dim(d) {
  DG_CHECK(img % p == 0, "PatchEmbed: image size ", img, " is not divisible by patch size ", p);
  auto holder = std::make_shared<ParamHolder>();
  weight = holder->register_parameter("weight", Tensor::zeros({d, c, p, p}));
  bias = holder->register_parameter("bias", Tensor::zeros({d}));
  proj = register_module("proj", std::shared_ptr<Module>(holder));
}

Tensor PatchEmbed::forward(const Tensor& x) {
  DG_CHECK(x.dim() == 4 && x.size(1) == in_chans, "PatchEmbed: input ", x.desc(), ", expected [B, ", in_chans,
           ", H, W]");
  return linear(patchify(x, patch), reshape(weight, {dim, -1}), bias);
}

}  // namespace dg::nn

#include "peft/deltas.h"

#include <cmath>

#include "autograd/ops.h"
#include "core/backend.h"

namespace dg::peft {

// ---- Scale ----
Scale::Scale(const ScaleConfig& c, int64_t channels) : cfg(c) {
  if (c.kind == ScaleConfig::Kind::None) return;
  value = Tensor::full({c.kind == ScaleConfig::Kind::Channel ? channels : 1}, c.init);
  value.set_requires_grad(c.trainable);
}
Tensor Scale::apply(const Tensor& branch) const { return value.defined() ? mul(branch, value) : branch; }
Tensor Scale::fold_rows(const Tensor& w, int64_t row0) const {
  if (!value.defined() || !w.defined()) return w;
  Tensor s = value.numel() == 1 ? value : slice(value, 0, row0, row0 + w.size(0));  // [1] broadcasts
  return w.dim() == 1 ? mul(w, s) : mul(w, unsqueeze(s, 1));
}
void Scale::add_to(std::vector<std::pair<std::string, Tensor>>& out) const {
  if (value.defined()) out.emplace_back("scale", value);
}

namespace {
Tensor trainable(Tensor t) {
  t.set_requires_grad(true);
  return t;
}
// kaiming_uniform_(a=sqrt(5)) as PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
Tensor kaiming(Generator& g, int64_t out, int64_t in) {
  Tensor t = Tensor::empty({out, in});
  const double b = 1.0 / std::sqrt(double(in));
  g.uniform_(t, -b, b);
  return t;
}
}  // namespace

// ---- LoRA ----
LoraDelta::LoraDelta(const std::string& n, const LoraConfig& c, const ScaleConfig& sc, nn::Linear& base, bool fused_qkv,
                     Generator& gen)
    : cfg(c), scale(sc, base.out_features), base_(base) {
  name = n;
  const int64_t in = base.in_features, out = base.out_features;
  auto make_part = [&](const std::string& id, int64_t rows, int64_t row0) {
    Tensor A = kaiming(gen, c.r, in), B = Tensor::zeros({rows, c.r});
    if (c.init == "random") gen.normal_(B, 0.0, 0.02);  // non-zero B: for tests and parity checks
    else if (c.bits == 1) gen.trunc_normal_(B, 0.001, -0.002, 0.002);  // a zero tensor has no signs: the authors' init
    parts.push_back({id, trainable(A), trainable(B), row0});
    if (c.bits == 1) bits_.names.insert({id.empty() ? "lora_A" : id + ".lora_A", id.empty() ? "lora_B" : id + ".lora_B"});
  };
  if (fused_qkv && c.qkv_mode == "separate") {
    DG_CHECK(out == 3 * in, "lora '", n, "': qkv_mode 'separate' needs a fused qkv Linear [3D, D], got [", out, ", ",
             in, "]");
    for (const std::string& p : c.qkv_parts) make_part(p, in, p == "q" ? 0 : p == "k" ? in : 2 * in);
  } else {
    make_part("", out, 0);
  }
}

double LoraDelta::scaling() const { return cfg.use_rslora ? cfg.lora_alpha / std::sqrt(double(cfg.r)) : cfg.lora_alpha / double(cfg.r); }

Tensor LoraDelta::low_rank_update(const Tensor& xd, const Tensor& y) const {
  // scaling * B (A x), the scalar applied to the rank-r middle [..., r] rather than to the
  // [..., out] result: the same product, and a pass over the wide tensor less in forward and
  // in backward (out/r = 72x fewer elements on a ViT-Tiny qkv with r = 8)
  auto low_rank = [&](const Part& p) {
    return linear(mul_scalar(linear(xd, A_of(p)), scaling()), B_of(p));
  };
  if (parts.size() == 1 && parts[0].id.empty()) return low_rank(parts[0]);  // [..., out]
  // one low-rank update per projection, zeros for projections without one
  const int64_t D = base_.in_features;
  std::vector<Tensor> cols;
  for (const char* id : {"q", "k", "v"}) {
    const Part* p = nullptr;
    for (const Part& q : parts)
      if (q.id == id) p = &q;
    if (p) {
      cols.push_back(low_rank(*p));
    } else {
      Shape s = y.shape();
      s.back() = D;
      cols.push_back(Tensor::zeros(s, y.dtype(), y.device()));
    }
  }
  return concat(cols, -1);
}

Tensor LoraDelta::apply(const Tensor& x, const Tensor& y) {
  if (merged_) return y;
  Tensor xd = training ? dropout(x, cfg.lora_dropout, true, default_generator().next_key()) : x;
  // each part's B product accumulates into its rows of the base output (scaling as the GEMM's
  // alpha, s folded into B's rows): no [..., out] update tensor, add pass, zeros or concat.
  // y goes on as the argument, not into a local copy: lowrank_add sees the only handle on
  // the base output and writes into it (Module discards y for the result)
  std::vector<LowRankTerm> terms;
  for (const Part& p : parts) terms.push_back({linear(xd, A_of(p)), scale.fold_rows(B_of(p), p.row0), p.row0});
  return terms.empty() ? y : lowrank_add(y, terms, scaling());
}

std::vector<std::pair<std::string, Tensor>> LoraDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Part& p : parts) {
    const std::string pre = p.id.empty() ? "" : p.id + ".";
    out.emplace_back(pre + "lora_A", p.A);
    out.emplace_back(pre + "lora_B", p.B);
  }
  scale.add_to(out);
  return out;
}

Tensor LoraDelta::update_weight() const {
  NoGradGuard ng;
  const int64_t out = base_.out_features, in = base_.in_features;
  Tensor dw = Tensor::zeros({out, in}, base_.weight.dtype(), base_.weight.device());
  for (const Part& p : parts) {
    Tensor ba = mul_scalar(matmul(B_of(p), A_of(p)), scaling());  // [rows, in]
    backend_of(ba).copy(ba, view::slice(dw, 0, p.row0, p.row0 + p.B.size(0)));
  }
  return dw;
}

Tensor LoraDelta::delta_weight() const {
  NoGradGuard ng;
  Tensor dw = update_weight();
  if (scale.value.defined()) dw = mul(dw, view::unsqueeze(scale.value, 1));  // s scales output rows
  return dw;
}

void LoraDelta::merge() {
  DG_CHECK(!merged_, method(), " '", name, "': already merged");
  NoGradGuard ng;
  originals_.keep({base_.weight});
  base_.weight.copy_(add(base_.weight, delta_weight()));
  merged_ = true;
}

void LoraDelta::unmerge() {
  DG_CHECK(merged_, method(), " '", name, "': not merged");
  NoGradGuard ng;
  originals_.restore({base_.weight});  // exact: the pre-merge weights, not W - BA
  merged_ = false;
}

// ---- bottleneck adapters ----
AdapterDelta::AdapterDelta(const std::string& n, const AdapterConfig& c, const ScaleConfig& sc, int64_t D, bool ri,
                           double eps, Generator& g)
    : cfg(c), scale(sc, D), reads_input(ri), norm_eps(eps) {
  name = n;
  const int64_t d = c.dim;
  down_w = Tensor::empty({d, D});
  up_w = Tensor::empty({D, d});
  if (c.init == "houlsby" || c.init == "zero") {  // trunc normal std .01 in [-2std, 2std]
    g.trunc_normal_(down_w, 0.01, -0.02, 0.02);
    if (c.init == "houlsby") g.trunc_normal_(up_w, 0.01, -0.02, 0.02);
    else up_w.fill_(0.0);  // zero-init: the adapted model starts equal to the base
  } else if (c.init == "lora") {
    down_w = kaiming(g, d, D);
    up_w.fill_(0.0);
  } else {  // bert
    g.normal_(down_w, 0.0, 0.02);
    g.normal_(up_w, 0.0, 0.02);
  }
  if (c.bits == 1) {
    // the authors' init of a 1-bit up projection: a zero tensor has no signs (and std 0)
    if (c.init == "zero" || c.init == "lora") g.trunc_normal_(up_w, 0.001, -0.002, 0.002);
    bits_.names = {"down.weight", "up.weight"};
  }
  trainable(down_w);
  trainable(up_w);
  if (c.bias) {
    down_b = Tensor::zeros({d});
    up_b = Tensor::zeros({D});
    if (c.init == "lora") {
      const double b = 1.0 / std::sqrt(double(D));
      g.uniform_(down_b, -b, b);
    }
    trainable(down_b);
    trainable(up_b);
  }
  if (c.norm_layer) {
    norm_w = trainable(Tensor::ones({D}));
    norm_b = trainable(Tensor::zeros({D}));
  }
}

Tensor AdapterDelta::apply(const Tensor& input, const Tensor& output) {
  Tensor u = reads_input ? input : output;
  if (cfg.norm_layer) u = layer_norm(u, norm_w, norm_b, norm_eps);
  Tensor h = linear(u, bits_.weight("down.weight", down_w), down_b);
  if (cfg.act_layer) h = gelu(h);
  if (training && cfg.dropout > 0) h = dropout(h, cfg.dropout, true, default_generator().next_key());
  // s * DropPath(up(h)) = DropPath(h (s W)^T + s b): drop_path scales whole samples
  h = linear(h, scale.fold_rows(bits_.weight("up.weight", up_w)), scale.fold_rows(up_b));
  h = nn::drop_path(h, cfg.drop_path, training);
  return add(output, h);
}

std::vector<std::pair<std::string, Tensor>> AdapterDelta::named_parameters() {
  std::vector<std::pair<std::string, Tensor>> out{{"down.weight", down_w}};
  if (down_b.defined()) out.emplace_back("down.bias", down_b);
  out.emplace_back("up.weight", up_w);
  if (up_b.defined()) out.emplace_back("up.bias", up_b);
  if (norm_w.defined()) {
    out.emplace_back("norm.weight", norm_w);
    out.emplace_back("norm.bias", norm_b);
  }
  scale.add_to(out);
  return out;
}

// ---- VPT prompts ----
PromptDelta::PromptDelta(const std::string& n, const PromptConfig& c, int64_t D, double bound, bool insert, Generator& g)
    : cfg(c), insert_(insert) {
  name = n;
  prompt = Tensor::empty({c.num_tokens, D});
  g.uniform_(prompt, -bound, bound);
  trainable(prompt);
  prompt.set_no_weight_decay(true);  // token embeddings, like pos_embed and cls_token: no weight decay
}

Tensor PromptDelta::apply(const Tensor& input, const Tensor& output) {
  const Tensor& x = insert_ ? output : input;  // [B, T, D], the cls token first
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), p = cfg.num_tokens;
  Tensor pr = expand(unsqueeze(prompt, 0), {B, p, D});
  if (training && cfg.dropout > 0) pr = dropout(pr, cfg.dropout, true, default_generator().next_key());
  // deep: the previous layer's prompt rows are replaced, or absent (the block before skipped them)
  const int64_t rest = insert_ || unread_rows_absent ? 1 : 1 + p;
  DG_CHECK(T >= rest, "vpt '", name, "': ", T, " tokens, expected at least ", rest);
  return concat({slice(x, 1, 0, 1), pr, slice(x, 1, rest, T)}, 1);
}

}  // namespace dg::peft

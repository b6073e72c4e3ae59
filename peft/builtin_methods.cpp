// The first-wave methods' registrations: LoRA (LoraDelta), the four bottleneck adapter
// placements (AdapterDelta) and VPT shallow/deep (PromptDelta), with their option parsers
// (peft's names for LoRA, adapter-plus's for adapters, VPT's for prompts).
#include <cmath>
#include <set>

#include "autograd/ops.h"
#include "core/backend.h"
#include "nn/glob.h"
#include "peft/deltas.h"
#include "peft/method_registry.h"

namespace dg::peft {

using nlohmann::json;

void parse_lora_options(OptionReader& r, DeltaConfig& d) {
  LoraConfig& c = d.lora;
  r.get("r", c.r);
  r.get("lora_alpha", c.lora_alpha);
  r.get("lora_dropout", c.lora_dropout);
  r.get("target_modules", c.target_modules);
  r.get("use_rslora", c.use_rslora);
  r.get("qkv_mode", c.qkv_mode);
  r.get("qkv_parts", c.qkv_parts);
  r.get("init", c.init);
  DG_CHECK(c.r >= 1, r.where, ": r must be >= 1, got ", c.r);
  DG_CHECK(c.lora_dropout >= 0 && c.lora_dropout < 1, r.where, ": lora_dropout must be in [0, 1)");
  DG_CHECK(!c.target_modules.empty(), r.where, ": target_modules is empty");
  DG_CHECK(c.qkv_mode == "joint" || c.qkv_mode == "separate", r.where, ": qkv_mode must be joint or separate, got '",
           c.qkv_mode, "'");
  for (const std::string& p : c.qkv_parts)
    DG_CHECK(p == "q" || p == "k" || p == "v", r.where, ": qkv_parts entries must be q, k or v, got '", p, "'");
  DG_CHECK(c.init == "kaiming" || c.init == "random", r.where, ": init must be kaiming or random");
}

namespace {

// adapter-plus's `scaling`: a number (fixed), "learned" (trainable scalar), "channel".
ScaleConfig scaling_to_scale(const json& v, const std::string& where) {
  ScaleConfig s;
  if (v.is_number()) {
    s.init = v.get<double>();
    s.trainable = false;
    s.kind = s.init == 1.0 ? ScaleConfig::Kind::None : ScaleConfig::Kind::Scalar;
  } else if (v == "learned") {
    s.kind = ScaleConfig::Kind::Scalar;
  } else if (v == "channel") {
    s.kind = ScaleConfig::Kind::Channel;
  } else {
    throw Error(str(where, ": 'scaling' must be a number, \"learned\" or \"channel\", got ", v.dump()));
  }
  return s;
}

void parse_adapter(OptionReader& r, DeltaConfig& d) {
  AdapterConfig& c = d.adapter;
  r.get("config", c.config);
  r.get("act_layer", c.act_layer);
  r.get("norm_layer", c.norm_layer);
  r.get("bias", c.bias);
  r.get("init", c.init);
  r.get("dim", c.dim);
  r.get("attn_adapter", c.attn_adapter);
  r.get("dropout", c.dropout);
  r.get("drop_path", c.drop_path);
  r.get("blocks", c.blocks);
  r.get("bits", c.bits);
  r.used.insert("scaling");
  if (r.has("scaling")) {
    DG_CHECK(!r.has("scale"), r.where, ": give either adapter-plus's 'scaling' or a 'scale' object, not both");
    d.scale = scaling_to_scale(r.j.at("scaling"), r.where);
  }
  static const std::set<std::string> configs{"post", "houlsby", "parallel", "intermediate"};
  DG_CHECK(configs.count(c.config), r.where, ": config '", c.config,
           "' is not one of post, houlsby, parallel, intermediate");
  static const std::set<std::string> inits{"houlsby", "lora", "bert", "zero"};
  DG_CHECK(inits.count(c.init), r.where, ": init '", c.init, "' is not one of houlsby, lora, bert, zero");
  DG_CHECK(c.dim >= 1, r.where, ": dim must be >= 1");
  DG_CHECK(c.bits == 1 || c.bits == 32, r.where, ": bits must be 1 (1-bit weights) or 32, got ", c.bits);
  DG_CHECK(c.dropout >= 0 && c.dropout < 1 && c.drop_path >= 0 && c.drop_path < 1, r.where,
           ": dropout and drop_path must be in [0, 1)");
}

void attach_adapters(const DeltaConfig& d, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
  const nn::ViTConfig& vc = base.cfg;
  const AdapterConfig& a = d.adapter;
  for (int64_t i = 0; i < vc.depth; ++i) {
    const std::string blk = "blocks." + std::to_string(i);
    if (!nn::glob_match_any(a.blocks, blk)) continue;
    auto make = [&](bool reads_input) {
      return std::make_shared<AdapterDelta>(d.name, a, d.scale, vc.embed_dim, reads_input, vc.norm_eps, gen);
    };
    if (a.config == "post") {
      add(blk, make(false));
    } else if (a.config == "houlsby") {
      if (a.attn_adapter) add(blk + ".attn_branch", make(false));
      add(blk + ".mlp_branch", make(false));
    } else if (a.config == "intermediate") {
      add(blk + ".mlp_branch", make(false));
    } else {  // parallel
      add(blk + ".mlp_branch", make(true));
    }
  }
}

void attach_prompts(const DeltaConfig& d, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
  const nn::ViTConfig& vc = base.cfg;
  DG_CHECK(vc.class_token, "vpt '", d.name, "': needs a model with a class token");
  const double bound = std::sqrt(6.0 / double(vc.in_chans * vc.patch_size * vc.patch_size + vc.embed_dim));
  add("pos_drop", std::make_shared<PromptDelta>(d.name, d.prompt, vc.embed_dim, bound, true, gen));
  if (d.prompt.deep)
    for (int64_t i = 1; i < vc.depth; ++i)
      add("blocks." + std::to_string(i), std::make_shared<PromptDelta>(d.name, d.prompt, vc.embed_dim, bound, false, gen));
}

void parse_prompt(OptionReader& r, DeltaConfig& d) {
  d.prompt.deep = d.method == "vpt_deep";
  r.get("num_tokens", d.prompt.num_tokens);
  r.get("dropout", d.prompt.dropout);
  DG_CHECK(d.prompt.num_tokens >= 1, r.where, ": num_tokens must be >= 1");
  DG_CHECK(d.prompt.dropout >= 0 && d.prompt.dropout < 1, r.where, ": dropout must be in [0, 1)");
}

}  // namespace

// Separate q/k/v LoRAs export exactly as one joint LoRA of rank k r (A stacked, B placed
// block-diagonally at each projection's rows), times the conditioning scale.
void lora_hf_export(const Attachments& list, HfAdapter& out) {
  NoGradGuard ng;
  int64_t r_total = 0;
  double alpha = 0, dropout_p = 0;
  for (const auto& [site, d] : list) {
    auto& l = static_cast<const LoraDelta&>(*d);
    DG_CHECK(l.cfg.bits == 32, "export_hf: lora '", l.name, "' has 1-bit weights (bits: 1), which peft's LORA format cannot hold");
    const int64_t r = l.cfg.r, k = int64_t(l.parts.size()), in = l.parts[0].A.size(1);
    const int64_t rows = l.parts.size() == 1 && l.parts[0].id.empty() ? l.parts[0].B.size(0) : 3 * in;
    Tensor A = Tensor::zeros({k * r, in}), B = Tensor::zeros({rows, k * r});
    for (int64_t i = 0; i < k; ++i) {
      const auto& p = l.parts[size_t(i)];
      backend_of(A).copy(p.A.to(DType::F32), view::slice(A, 0, i * r, (i + 1) * r));
      backend_of(B).copy(p.B.to(DType::F32),
                         view::slice(view::slice(B, 0, p.row0, p.row0 + p.B.size(0)), 1, i * r, (i + 1) * r));
    }
    if (l.scale.value.defined()) B = mul(B, view::unsqueeze(view::expand(l.scale.value, {rows}), 1));
    out.tensors["base_model.model." + site + ".lora_A.weight"] = A;
    out.tensors["base_model.model." + site + ".lora_B.weight"] = B;
    out.targets.push_back(site);
    r_total = k * r;
    alpha = l.scaling() * double(r_total);  // peft's scaling is lora_alpha / r: choose alpha so that it equals ours
    dropout_p = l.cfg.lora_dropout;
  }
  out.config = {{"peft_type", "LORA"},  {"r", r_total},       {"lora_alpha", alpha},
                {"lora_dropout", dropout_p}, {"bias", "none"}, {"use_rslora", false},
                {"fan_in_fan_out", false}, {"init_lora_weights", true}, {"layers_to_transform", nullptr},
                {"layers_pattern", nullptr}, {"rank_pattern", json::object()}, {"alpha_pattern", json::object()}};
}

namespace {

json with(json a, const json& b) {
  a.update(b);
  return a;
}
json one(json delta) { return {{"deltas", json::array({std::move(delta)})}}; }
json adapter_case(const char* name, const char* method) {
  return {{"name", name}, {"method", method}, {"dim", 4}, {"init", "bert"}};
}

}  // namespace

DG_REGISTER_METHOD(lora) {
  MethodDef d;
  d.name = "lora";
  d.order = 10;
  d.summary = "Post on each matching Linear: y + s * scaling * B(A(dropout(x)))";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    parse_lora_options(r, dc);
    bool use_dora = false;
    r.get("use_dora", use_dora);
    r.get("bits", dc.lora.bits);
    DG_CHECK(dc.lora.bits == 1 || dc.lora.bits == 32, r.where, ": bits must be 1 (1-bit A and B) or 32, got ",
             dc.lora.bits);
    DG_CHECK(!use_dora || dc.lora.bits == 32, r.where, ": bits: 1 is for LoRA, not DoRA (use_dora)");
    if (use_dora) dc.method = "dora";  // peft's LoraConfig(use_dora=True)
  };
  d.attach = [](const DeltaConfig& dc, nn::VisionTransformer& base, Generator& gen, const AttachFn& add) {
    for (auto& [path, lin] : linear_targets(base, dc.lora.target_modules, "lora '" + dc.name + "'"))
      add(path, std::make_shared<LoraDelta>(dc.name, dc.lora, dc.scale, *lin, is_fused_qkv(path), gen));
  };
  d.merges = true;
  d.hf_peft_type = "LORA";
  d.hf_export = lora_hf_export;
  d.hf_import = [](const HfAdapter& a) { return lora_family_hf_import(a, false); };
  d.golden = {{"lora_joint", one({{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"lora_alpha", 16}})},
              {"lora_separate", one({{"name", "qv"}, {"method", "lora"}, {"r", 2}, {"lora_alpha", 8},
                                     {"qkv_mode", "separate"}, {"qkv_parts", {"q", "v"}}})},
              // Bi-LoRA (binary_adapter/lora.py: lora_q and lora_v), scripts/make_peft_bits_golden.py
              {"lora_bits1", one({{"name", "bl"}, {"method", "lora"}, {"r", 2}, {"lora_alpha", 4}, {"bits", 1},
                                  {"qkv_mode", "separate"}, {"qkv_parts", {"q", "v"}}})}};
  d.examples = {{{"method", "lora"}, {"r", 4}, {"lora_alpha", 8}},
                {{"method", "lora"}, {"r", 2}, {"qkv_mode", "separate"}},
                {{"method", "lora"}, {"r", 4}, {"lora_alpha", 8}, {"bits", 1}}};
  d.demo = DemoRow{"LoRA r=8 (qkv)", {{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}}, 3e-3};
  return d;
}

DG_REGISTER_METHOD(houlsby) {
  MethodDef d;
  d.name = "houlsby";
  d.order = 20;
  d.summary = "blocks.i.attn_branch and .mlp_branch: b + s * DropPath(up(GELU(down(b))))";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    dc.adapter.config = "houlsby";
    dc.adapter.attn_adapter = true;
    dc.adapter.drop_path = 0.1;
    parse_adapter(r, dc);
  };
  d.attach = attach_adapters;
  d.golden = {{"houlsby", one(adapter_case("houlsby", "houlsby"))}};
  d.examples = {{{"method", "houlsby"}, {"dim", 4}}};
  d.demo = DemoRow{"Houlsby d=8", {{"name", "houlsby"}, {"method", "houlsby"}, {"dim", 8}}, 3e-3};
  return d;
}

DG_REGISTER_METHOD(pfeiffer) {
  MethodDef d;
  d.name = "pfeiffer";
  d.order = 30;
  d.summary = "blocks.i (the block output): z + s * A(LN(z))";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    dc.adapter.config = "post";  // z + A(norm(z)) after the block: see README "Adapters"
    dc.adapter.norm_layer = true;
    dc.adapter.drop_path = 0.1;
    parse_adapter(r, dc);
  };
  d.attach = attach_adapters;
  d.golden = {{"pfeiffer", one(adapter_case("pf", "pfeiffer"))}};
  d.examples = {{{"method", "pfeiffer"}, {"dim", 4}}};
  return d;
}

DG_REGISTER_METHOD(parallel) {
  MethodDef d;
  d.name = "parallel";
  d.order = 40;
  d.summary = "blocks.i.mlp_branch: reads the MLP sub-block's input y, adds s * A(y) to its branch";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    dc.adapter.config = "parallel";
    dc.adapter.drop_path = 0.1;
    parse_adapter(r, dc);
  };
  d.attach = attach_adapters;
  d.golden = {{"two_scaled", {{"deltas",
                               {with(adapter_case("post", "adapter_plus"), {{"scale", {{"kind", "scalar"}}}}),
                                with(adapter_case("par", "parallel"),
                                     {{"scale", {{"kind", "channel"}, {"init", 1.0}, {"trainable", true}}}})}}}},
              // Bi-AdaptFormer's place (binary_adapter/adaptformer.py), scripts/make_peft_bits_golden.py
              {"parallel_bits1", one(with(adapter_case("bi", "parallel"), {{"bias", false}, {"bits", 1}, {"scaling", 0.5}}))}};
  d.examples = {{{"method", "parallel"}, {"dim", 4}, {"scaling", 0.1}},
                {{"method", "parallel"}, {"dim", 4}, {"bias", false}, {"bits", 1}}};
  return d;
}

DG_REGISTER_METHOD(adapter_plus) {
  MethodDef d;
  d.name = "adapter_plus";
  d.order = 50;
  d.summary = "blocks.i (post): z + s * DropPath(up(GELU(down(z)))), channel-wise s";
  d.parse = [](OptionReader& r, DeltaConfig& dc) {
    dc.adapter.config = "post";
    dc.adapter.drop_path = 0.1;
    dc.scale.kind = ScaleConfig::Kind::Channel;  // Adapter+: channel-wise scaling, ones
    parse_adapter(r, dc);
  };
  d.attach = attach_adapters;
  d.golden = {{"adapter_plus", one(adapter_case("aplus", "adapter_plus"))}};
  d.examples = {{{"method", "adapter_plus"}, {"dim", 4}}};
  d.demo = DemoRow{"Adapter+ d=8", {{"name", "adapter_plus"}, {"method", "adapter_plus"}, {"dim", 8}}, 3e-3};
  return d;
}

DG_REGISTER_METHOD(vpt_shallow) {
  MethodDef d;
  d.name = "vpt_shallow";
  d.order = 60;
  d.summary = "Post on pos_drop: prompt tokens inserted after the cls token";
  d.no_scale = "prompts take no 'scale'";
  d.parse = parse_prompt;
  d.attach = attach_prompts;
  d.golden = {{"vpt_shallow", one({{"name", "vpt"}, {"method", "vpt_shallow"}, {"num_tokens", 5}})}};
  d.examples = {{{"method", "vpt_shallow"}, {"num_tokens", 4}}};
  return d;
}

DG_REGISTER_METHOD(vpt_deep) {
  MethodDef d;
  d.name = "vpt_deep";
  d.order = 70;
  d.summary = "pos_drop, then Pre on blocks.i (i >= 1): each block's own prompt rows";
  d.no_scale = "prompts take no 'scale'";
  d.parse = parse_prompt;
  d.attach = attach_prompts;
  d.golden = {{"vpt_deep", one({{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 5}})}};
  d.examples = {{{"method", "vpt_deep"}, {"num_tokens", 4}}};
  d.demo = DemoRow{"VPT-deep 10", {{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 10}}, 1e-2};
  return d;
}

}  // namespace dg::peft

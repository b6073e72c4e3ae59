// Delta files (format deltagrad.delta/1): a safetensors file holding a PeftModel's delta
// tensors, trained and kept base tensors and masks, with the PEFT config, the base's identity
// and per-delta metadata in __metadata__, so a file alone rebuilds its deltas on the right base.
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/safetensors.h"
#include "peft/packed_bits.h"
#include "peft/peft_model.h"
#include "peft/sparse_delta.h"

namespace dg::peft {

using nlohmann::json;

std::string base_identity(nn::Module& base) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  };
  for (auto& [n, t] : base.named_parameters(false)) mix(n + shape_str(t.shape()) + ";");
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void PeftModel::save(const std::string& path) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, p] : trainable_parameters()) t[n] = p;
  for (auto& [n, p] : base_.named_parameters(false))
    if (kept_.count(n)) t[n] = p;
  for (const auto& [name, list] : deltas_)  // fixed (non-trainable) delta tensors too, e.g. a fixed scale
    for (const auto& [site, d] : list)
      for (auto& [pn, p] : d->named_parameters()) t[site + "." + name + "." + pn] = p;
  for (const auto& [name, list] : deltas_)  // a delta stored as other tensors (MoSA: its merged adapter)
    for (const auto& [site, d] : list)
      if (auto ft = static_cast<const MethodDelta&>(*d).file_tensors(); !ft.empty()) {
        for (auto& [pn, p] : d->named_parameters()) t.erase(site + "." + name + "." + pn);
        for (auto& [k, v] : ft) t[site + "." + name + "." + k] = v;
      }
  for (const auto& [n, m] : masks_) {  // a masked tensor: its trained elements only (sparse_delta.h)
    const Tensor pos = mask_positions(m);
    put_sparse(t, n, pos, gather_positions(t.at(n), pos));
    t.erase(n);
  }
  pack_binary_tensors(deltas_, t);  // bits: 1 weights as packed signs + [mean, std] (packed_bits.h)
  std::map<std::string, std::string> meta{{"format", "deltagrad.delta/1"},
                                          {"peft_config", cfg_.raw.dump()},
                                          {"base_identity", base_identity(base_)},
                                          {"model_config", nn::to_json(base_.cfg).dump()}};
  if (json dm = delta_metadata(); !dm.empty()) meta["delta_metadata"] = dm.dump();
  save_safetensors(path, t, meta);
}

json PeftModel::delta_metadata() const {
  json out = json::object();
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list)
      if (json m = static_cast<const MethodDelta&>(*d).file_metadata(); !m.is_null()) out[site + "." + name] = m;
  return out;
}

void PeftModel::load(const std::string& path) {
  SafeTensors st = load_safetensors(path);
  auto meta = [&](const char* k) {
    auto it = st.metadata.find(k);
    DG_CHECK(it != st.metadata.end(), "delta file '", path, "': no '", k, "' in its metadata (not a deltagrad delta file)");
    return it->second;
  };
  DG_CHECK(meta("format") == "deltagrad.delta/1", "delta file '", path, "': unknown format '", meta("format"), "'");
  const std::string id = base_identity(base_);
  if (const json want = delta_metadata(); !want.empty()) {  // e.g. VeRA's regenerated projections
    auto it = st.metadata.find("delta_metadata");
    const json got = it == st.metadata.end() ? json::object() : json::parse(it->second, nullptr, false);
    for (auto e = want.begin(); e != want.end(); ++e) {
      const std::string& k = e.key();
      const json& v = e.value();
      const bool found = got.is_object() && got.contains(k);
      DG_CHECK(found && got.at(k) == v, "delta file '", path, "': delta_metadata of '", k, "' is ",
               found ? got.at(k).dump() : std::string("missing"), ", this build rebuilds it as ", v.dump(),
               " (a file made by another generator, config or version of deltagrad)");
    }
  }
  DG_CHECK(meta("base_identity") == id, "delta file '", path, "' was made for a different base model (identity ",
           meta("base_identity"), ", this base ", id, "): tensor names or shapes differ");
  std::map<std::string, Tensor> mine;
  for (auto& [n, p] : trainable_parameters()) mine[n] = p;
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list)
      for (auto& [pn, p] : d->named_parameters()) mine[site + "." + name + "." + pn] = p;
  load_file_tensors(st, mine, path);
  // Masked tensors: positions + values (sparse_delta.h), or, in files before 2026-12-02, the
  // dense tensor and a dense "mask.<name>".
  NoGradGuard ng;
  for (const std::string& n : sparse_names(st.tensors)) {
    auto it = masks_.find(n);
    DG_CHECK(it != masks_.end(), "delta file '", path, "': '", n, kSparseIndices,
             "' stores a sparse tensor, but this PEFT config masks no tensor '", n, "'");
    Tensor p = mine.at(n);
    const Tensor pos = checked_positions(st.tensors.at(n + kSparseIndices), p.numel(), "delta file '" + path + "'", n);
    auto v = st.tensors.find(n + kSparseValues);
    DG_CHECK(v != st.tensors.end(), "delta file '", path, "': '", n, kSparseIndices, "' has no '", n, kSparseValues, "'");
    DG_CHECK(v->second.dim() == 1 && v->second.numel() == pos.numel(), "delta file '", path, "': '", n, kSparseValues,
             "' has shape ", shape_str(v->second.shape()), ", expected [", pos.numel(), "] (one value a position)");
    for (double x : v->second.to_vector()) DG_CHECK(std::isfinite(x), "delta file '", path, "': '", n, kSparseValues, "' contains NaN or Inf");
    it->second = positions_mask(pos, p.shape()).to(p.dtype()).to(p.device());
    scatter_positions(p, pos, v->second);
    mine.erase(n);
    st.tensors.erase(n + kSparseIndices);
    st.tensors.erase(n + kSparseValues);
  }
  for (const auto& [n, m] : masks_)
    if (mine.count(n)) mine["mask." + n] = m;  // not stored sparsely: the old dense pair must be there
  for (const std::string& k : unpack_binary_tensors(deltas_, st.tensors, path)) mine.erase(k);
  std::map<std::string, Tensor> base_tensors;  // a frozen base tensor the file keeps (keep_base_tensor)
  for (auto& [n, p] : base_.named_parameters(false)) base_tensors[n] = p;
  for (const auto& [n, t] : st.tensors) {
    if (!mine.count(n) && base_tensors.count(n)) mine[n] = base_tensors[n], kept_.insert(n);
    DG_CHECK(mine.count(n), "delta file '", path, "': tensor '", n, "' has no place in this PEFT model");
  }
  for (auto& [n, p] : mine) {
    auto it = st.tensors.find(n);
    DG_CHECK(it != st.tensors.end(), "delta file '", path, "': missing tensor '", n, "'");
    DG_CHECK(it->second.shape() == p.shape(), "delta file '", path, "': '", n, "' has shape ",
             shape_str(it->second.shape()), ", expected ", shape_str(p.shape()));
    for (double v : it->second.to_vector()) DG_CHECK(std::isfinite(v), "delta file '", path, "': '", n, "' contains NaN or Inf");
    Tensor dst = p;
    dst.copy_(it->second);
  }
}

// Deltas stored as other tensors than their own (MethodDelta::file_tensors, e.g. MoSA's merged
// adapter): each takes its file tensors, checked, and its own tensors are no longer expected.
void PeftModel::load_file_tensors(SafeTensors& st, std::map<std::string, Tensor>& mine, const std::string& path) {
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list) {
      auto& md = static_cast<MethodDelta&>(*d);
      const std::map<std::string, Tensor> want = md.file_tensors();
      if (want.empty()) continue;
      const std::string pre = site + "." + name + ".";
      std::map<std::string, Tensor> got;
      for (const auto& [k, v] : want) {
        auto it = st.tensors.find(pre + k);
        DG_CHECK(it != st.tensors.end(), "delta file '", path, "': missing tensor '", pre + k, "'");
        DG_CHECK(it->second.shape() == v.shape(), "delta file '", path, "': '", pre + k, "' has shape ",
                 shape_str(it->second.shape()), ", expected ", shape_str(v.shape()));
        for (double x : it->second.to_vector()) DG_CHECK(std::isfinite(x), "delta file '", path, "': '", pre + k, "' contains NaN or Inf");
        got[k] = it->second;
        st.tensors.erase(it);
      }
      for (auto& [pn, p] : d->named_parameters()) mine.erase(pre + pn);
      md.load_file_tensors(got, path);
    }
}

std::unique_ptr<PeftModel> PeftModel::from_file(nn::VisionTransformer& base, const std::string& path) {
  SafeTensors st = load_safetensors(path);
  auto it = st.metadata.find("peft_config");
  DG_CHECK(it != st.metadata.end(), "delta file '", path, "': no peft_config in its metadata");
  json j = json::parse(it->second, nullptr, false);
  DG_CHECK(!j.is_discarded(), "delta file '", path, "': peft_config metadata is not valid JSON");
  // VeRA files written before the seed-only format (2026-12-02) hold vera_A and vera_B and
  // have no save_projection key (it now defaults to false): read them as they were written.
  if (j.is_object() && j.contains("deltas") && j["deltas"].is_array())
    for (json& d : j["deltas"]) {
      if (!d.is_object() || !d.contains("method") || d["method"] != "vera" || d.contains("save_projection")) continue;
      const std::string suffix = "." + (d.contains("name") && d["name"].is_string() ? d["name"].get<std::string>()
                                                                                    : std::string("vera")) + ".vera_A";
      for (const auto& [n, t] : st.tensors)
        if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
          d["save_projection"] = true;
          break;
        }
    }
  // The file holds every masked tensor's mask (its trained elements' positions, or before
  // 2026-12-02 a dense "mask.<name>"), and load() takes it from there: where training chose the
  // mask (a mask file, which may be gone or moved, a selection over data) is not needed again.
  if (j.is_object() && j.contains("masks") && j["masks"].is_array())
    for (json& mc : j["masks"])
      if (mc.is_object() && mc.contains("tensor")) mc = json{{"tensor", mc["tensor"]}, {"density", 1.0}};
  auto m = std::make_unique<PeftModel>(base, parse_peft_config(j, "peft_config in '" + path + "'"));
  m->load(path);
  return m;
}

void add_sparse_differences(nn::VisionTransformer& base, const std::vector<std::string>& delta_files) {
  std::map<std::string, Tensor> live, base0;  // the base as it was: every file's difference is against it
  for (auto& [n, t] : base.named_parameters(false)) live[n] = t, base0[n] = t.detach().clone();
  const std::string id = base_identity(base);
  std::map<std::string, Tensor> sum;  // per tensor, the summed differences (float64, CPU)
  for (const std::string& path : delta_files) {
    SafeTensors st = load_safetensors(path);
    auto it = st.metadata.find("base_identity");
    DG_CHECK(it != st.metadata.end() && it->second == id, "compose: delta file '", path,
             "' was not made for this base model (base_identity differs or is missing)");
    const json cfg = json::parse(st.metadata.at("peft_config"), nullptr, false);
    DG_CHECK(!cfg.is_object() || !cfg.contains("deltas") || cfg["deltas"].empty(), "compose: delta file '", path,
             "' holds deltas of a method; only sparse or dense base-tensor differences compose by addition");
    for (const std::string& n : sparse_names(st.tensors)) {
      DG_CHECK(live.count(n), "compose: delta file '", path, "': the base has no tensor '", n, "'");
      const Tensor pos = checked_positions(st.tensors.at(n + kSparseIndices), live[n].numel(), "delta file '" + path + "'", n);
      auto v = st.tensors.find(n + kSparseValues);
      DG_CHECK(v != st.tensors.end() && v->second.numel() == pos.numel(), "delta file '", path, "': '", n, kSparseValues,
               "' is missing or has not one value a position");
      const std::vector<double> p = pos.to_vector(), val = v->second.to_vector(), w0 = base0[n].to_vector();
      if (!sum.count(n)) sum[n] = Tensor::zeros(live[n].shape(), DType::F64);
      double* s = sum[n].data<double>();
      for (size_t i = 0; i < p.size(); ++i) s[size_t(p[i])] += val[i] - w0[size_t(p[i])];
      st.tensors.erase(n + kSparseIndices), st.tensors.erase(n + kSparseValues);
    }
    for (const auto& [n, t] : st.tensors) {  // dense trained base tensors: the whole difference
      DG_CHECK(live.count(n) && t.shape() == live[n].shape(), "compose: delta file '", path, "': tensor '", n,
               "' is not a base tensor of this model's shape");
      if (!sum.count(n)) sum[n] = Tensor::zeros(live[n].shape(), DType::F64);
      const std::vector<double> val = t.to_vector(), w0 = base0[n].to_vector();
      double* s = sum[n].data<double>();
      for (size_t i = 0; i < val.size(); ++i) s[i] += val[i] - w0[i];
    }
  }
  NoGradGuard ng;
  for (auto& [n, d] : sum) {
    const std::vector<double> w0 = base0[n].to_vector();
    std::vector<double> out(w0.size());
    const double* s = d.data<double>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = w0[i] + s[i];
    live[n].copy_(Tensor::from_vector(out, live[n].shape()).to(live[n].dtype()).to(live[n].device()));
  }
}

}  // namespace dg::peft

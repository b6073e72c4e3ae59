#include "peft/sensitivity.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/error.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "peft/sparse_delta.h"

namespace dg::peft {

Criterion parse_criterion(const std::string& s, const std::string& where) {
  if (s == "grad") return Criterion::Grad;
  if (s == "taylor") return Criterion::Taylor;
  if (s == "fisher") return Criterion::Fisher;
  if (s == "magnitude") return Criterion::Magnitude;
  if (s == "random") return Criterion::Random;
  throw Error(str(where, ": unknown criterion '", s, "' (known: grad, taylor, fisher, magnitude, random)"));
}

bool needs_gradients(Criterion c) { return c == Criterion::Grad || c == Criterion::Taylor || c == Criterion::Fisher; }

std::map<std::string, Tensor> sensitivity_scores(nn::VisionTransformer& m, const std::vector<std::string>& names,
                                                 Criterion c, int64_t batches, const BatchSource& data, uint64_t seed) {
  std::map<std::string, Tensor> params;
  for (auto& [n, t] : m.named_parameters(false)) params[n] = t;
  std::map<std::string, std::vector<double>> acc;
  for (const std::string& n : names) {
    DG_CHECK(params.count(n), "sensitivity: the model has no tensor '", n, "'");
    acc[n].assign(size_t(params[n].numel()), 0.0);
  }
  if (c == Criterion::Magnitude) {
    for (auto& [n, a] : acc) {
      const std::vector<double> w = params[n].to_vector();
      for (size_t i = 0; i < a.size(); ++i) a[i] = std::abs(w[i]);
    }
  } else if (c == Criterion::Random) {
    for (auto& [n, a] : acc) {  // one stream per tensor: adding a tensor does not change the others' choice
      Tensor u = Tensor::empty(params[n].shape());
      Generator(seed ^ std::hash<std::string>{}(n)).uniform_(u);
      a = u.to_vector();
    }
  } else {
    DG_CHECK(batches > 0, "sensitivity: criterion needs at least one batch, got ", batches);
    const bool was_training = m.training();
    std::map<std::string, bool> flags;  // every tensor's, deltas' too: only the scored ones get a gradient
    std::map<std::string, Tensor> all;
    for (auto& [n, t] : m.named_parameters(true)) all[n] = t;
    for (auto& [n, t] : all) flags[n] = t.requires_grad(), Tensor(t).set_requires_grad(acc.count(n) > 0), Tensor(t).zero_grad();
    m.eval();
    for (int64_t b = 0; b < batches; ++b) {
      auto [x, y] = data(b);
      tape().clear();
      backward(cross_entropy(m(x), y));
      for (auto& [n, a] : acc) {
        Tensor g = params[n].grad();
        DG_CHECK(g.defined(), "sensitivity: '", n, "' got no gradient (it does not reach the loss)");
        const std::vector<double> gv = g.to_vector(), w = params[n].to_vector();
        for (size_t i = 0; i < a.size(); ++i)
          a[i] += c == Criterion::Grad ? std::abs(gv[i]) : c == Criterion::Taylor ? std::abs(gv[i] * w[i]) : gv[i] * gv[i];
        Tensor(params[n]).zero_grad();
      }
    }
    tape().clear();
    for (auto& [n, t] : all) Tensor(t).set_requires_grad(flags[n]), Tensor(t).zero_grad();
    if (was_training) m.train();
  }
  std::map<std::string, Tensor> out;
  for (auto& [n, a] : acc) out[n] = Tensor::from_vector(a, params[n].shape());
  return out;
}

std::map<std::string, Tensor> top_k_masks(const std::map<std::string, Tensor>& scores, double budget, bool global) {
  DG_CHECK(budget > 0 && budget <= 1, "sensitivity: budget must be in (0, 1], got ", budget);
  // the k largest of `s` (ties: the earlier index) as positions into s
  auto top = [](const std::vector<double>& s, int64_t k) {
    std::vector<int64_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    auto before = [&](int64_t a, int64_t b) { return s[size_t(a)] > s[size_t(b)] || (s[size_t(a)] == s[size_t(b)] && a < b); };
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
    idx.resize(size_t(k));
    return idx;
  };
  std::map<std::string, Tensor> out;
  for (auto& [n, s] : scores) out[n] = Tensor::zeros(s.shape());
  if (global) {
    std::vector<double> all;
    std::vector<std::pair<std::string, size_t>> start;
    for (auto& [n, s] : scores) {
      start.emplace_back(n, all.size());
      for (double v : s.to_vector()) all.push_back(v);
    }
    for (int64_t i : top(all, std::llround(budget * double(all.size())))) {
      auto it = std::upper_bound(start.begin(), start.end(), size_t(i), [](size_t v, const auto& e) { return v < e.second; });
      --it;
      out[it->first].data<float>()[size_t(i) - it->second] = 1.0f;
    }
  } else {
    for (auto& [n, s] : scores)
      for (int64_t i : top(s.to_vector(), std::llround(budget * double(s.numel())))) out[n].data<float>()[i] = 1.0f;
  }
  return out;
}

void save_mask_file(const std::string& path, const std::map<std::string, Tensor>& masks,
                    const std::map<std::string, std::string>& metadata) {
  std::map<std::string, Tensor> t;
  nlohmann::json shapes = nlohmann::json::object();
  for (auto& [n, m] : masks) {
    put_sparse(t, n, mask_positions(m));
    shapes[n] = m.shape();
  }
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "deltagrad.masks/1";
  meta["shapes"] = shapes.dump();
  save_safetensors(path, t, meta);
}

Tensor mask_from_file(const std::map<std::string, Tensor>& file, const std::string& path, const std::string& name,
                      const Shape& shape) {
  const std::string what = "mask file '" + path + "'";
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (auto it = file.find(name + kSparseIndices); it != file.end())
    return positions_mask(checked_positions(it->second, numel, what, name), shape);
  auto it = file.find(name);
  DG_CHECK(it != file.end(), what, " has no tensor '", name, "' (nor '", name, kSparseIndices, "')");
  DG_CHECK(it->second.shape() == shape, what, ": '", name, "' has shape ", shape_str(it->second.shape()), ", expected ",
           shape_str(shape));
  Tensor mask = it->second.to(DType::F32);
  for (double v : mask.to_vector()) DG_CHECK(v == 0.0 || v == 1.0, what, ": '", name, "' must hold only 0 and 1");
  return mask;
}

}  // namespace dg::peft

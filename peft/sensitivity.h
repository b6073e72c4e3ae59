// Which base weights to train: per-element scores of frozen base tensors and a top-k at a
// budget, written as a mask (sparse_delta.h's positions). The scores, each summed over N batches
// where it needs gradients:
//   grad      |g|          (SHiRA-Grad's gradient mask)
//   taylor    |g * w|      (first-order Taylor importance; SHiRA-SNIP's |w * g|)
//   fisher    g^2          (empirical Fisher; SPT's code, ziplab/SPT engine.py get_sensitivity)
//   magnitude |w|          (SHiRA-WM; needs no data)
//   random    uniform in [0, 1), seeded (SHiRA-Rand; needs no data)
// Gradients come from one forward/backward per batch in eval mode (dropout off, so the scores
// are deterministic) with only the scored tensors made to require a gradient: no optimizer
// exists, so no optimizer state is allocated, and the flags are restored after.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/vit.h"

namespace dg::peft {

enum class Criterion { Grad, Taylor, Fisher, Magnitude, Random };
Criterion parse_criterion(const std::string& s, const std::string& where);
bool needs_gradients(Criterion c);

// Images (normalised, [B, C, H, W]) and labels of batch i.
using BatchSource = std::function<std::pair<Tensor, Tensor>(int64_t i)>;

// The scores (F64, each tensor's shape) of the named base tensors of `m`.
std::map<std::string, Tensor> sensitivity_scores(nn::VisionTransformer& m, const std::vector<std::string>& names,
                                                 Criterion c, int64_t batches, const BatchSource& data, uint64_t seed);

// The top round(budget * n) elements by score as 0/1 masks (F32): over all tensors together
// (global, SPT's choice) or round(budget * numel) in each. Ties go to the earlier element (tensors
// in name order, then row-major), so the choice is a function of the scores.
std::map<std::string, Tensor> top_k_masks(const std::map<std::string, Tensor>& scores, double budget, bool global);

// Mask files: `<name>.sparse_indices` per tensor (sparse_delta.h), shapes in the metadata.
void save_mask_file(const std::string& path, const std::map<std::string, Tensor>& masks,
                    const std::map<std::string, std::string>& metadata);
// The mask of tensor `name` (shape `shape`) from a mask file: sparse positions, or a dense 0/1
// tensor of that name (older files). Errors name the file and the tensor.
Tensor mask_from_file(const std::map<std::string, Tensor>& file, const std::string& path, const std::string& name,
                      const Shape& shape);

}  // namespace dg::peft

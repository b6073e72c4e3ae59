// 1-bit delta weights (Jie, Wang, Deng, "Revisiting the Parameter Efficiency of Adapters from
// the Perspective of Precision Redundancy", ICCV 2023; JieShibo/PETL-ViT binary_adapter):
// `bits: 1` on an adapter or LoRA trains each projection weight quantisation-aware, as the
// authors' QLinear: the whole tensor is standardised by its mean and unbiased std, its sign
// taken (code +-c, c = Phi^-1(0.75), their 1-bit code) with a straight-through gradient, and
// scaled back: w_q = q((w - mean) / (std + 1e-5)) * std + mean. Biases, norms and scales stay
// in float32, as the authors' bias-free QLinear leaves nothing else to quantise.
// A delta file stores each such weight as its packed sign bits (32 per I32 word) and
// [mean, std] in float32: about 1/32 of the dense size. Loading dequantises to exactly the
// values the in-memory model used (the same ops on the same float32 numbers), and the loaded
// delta then uses those values instead of re-quantising its latent weight.
#pragma once
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/delta.h"

namespace dg::peft {

inline constexpr double kOneBitCode = 0.6744897501960817;  // norm.ppf(0.75): the authors' 1-bit code +-c

// w_q as the authors' QLinear forward: differentiable (sign_ste), a whole-tensor group.
Tensor binarize(const Tensor& w);

// The quantised weights of one delta, by its local (named_parameters) names.
class BinaryWeights {
 public:
  std::set<std::string> names;           // empty: the delta is not quantised
  std::map<std::string, Tensor> loaded;  // dequantised values read from a packed delta file
  std::map<std::string, std::pair<Tensor, Tensor>> packed;  // and the bits and [mean, std] they came from
  // What the forward uses for `latent`: the loaded values, binarize(latent), or latent itself.
  Tensor weight(const std::string& name, const Tensor& latent) const;
};

// The deltas of a PeftModel: (delta name, [(site, delta)]).
using DeltaList = std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::shared_ptr<nn::Delta>>>>>;

// Saving: each quantised tensor "<site>.<delta>.<name>" of `file` becomes "<...>.bits" (I32
// words, bit i of word j the sign of element 32 j + i, 1 = positive) and "<...>.mean_std".
void pack_binary_tensors(const DeltaList& deltas, std::map<std::string, Tensor>& file);
// Loading: takes the packed entries out of `file`, dequantises them into each delta's
// BinaryWeights::loaded, and returns the latent tensors' keys they stand for.
std::set<std::string> unpack_binary_tensors(const DeltaList& deltas, std::map<std::string, Tensor>& file,
                                            const std::string& path);

}  // namespace dg::peft

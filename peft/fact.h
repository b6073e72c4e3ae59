// FacT (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer",
// AAAI 2023; the JieShibo/PETL-ViT code, FacT/fact_tt.py and fact_tk.py). The increments of
// every block's q, k, v, o (timm's fused qkv and proj) and fc1, fc2 are one tensor of shape
// [12 * depth, C, C] (an MLP matrix counts as 4 C x C slices), factorised with factors shared
// by all blocks: a down projection U (FacTu, [dim, C]) and an up projection V (FacTv, [C, dim],
// zeros at init). Each matrix's increment is dW = s * V_big core U_big, where U_big and V_big
// apply U and V to each C-wide slice of the input and output, and the core [b*dim, a*dim] is
//   fact_tt: the matrix's own Linear(s) (q_FacTs, k_FacTs, v_FacTs, proj_FacTs [dim, dim],
//            fc1_FacTs [4 dim, dim], fc2_FacTs [dim, 4 dim]; torch's default Linear init)
//   fact_tk: slices of FacTc [dim, dim, dim] times columns of FacTp [dim, 12 * depth]
//            (both xavier-uniform; block i uses columns 12 i .. 12 i + 11: q, k, v, o, then
//            4 for fc1 and 4 for fc2, the authors' order)
// and dropout (the code's fixed p = 0.1) sits between the core and V, in training only:
//   y' = y + s * V_big(dropout(core(U_big x)))
// The authors' code works on the 768-wide ViT-B with an MLP ratio of 4; here C is the model's
// width and an MLP ratio k (hidden = k C) gives k slices (fact_tk: 4 + 2k columns per block).
// Merged per block: W += dW; unmerge restores W bit-exactly.
#pragma once
#include <memory>

#include "peft/config.h"
#include "peft/method_registry.h"

namespace dg::peft {

struct FactOptions : MethodOptions {
  int64_t dim = 8;       // the factors' rank (the code's `dim`, its configs' `rank`)
  double scale = 1.0;    // s (the code's `scale`)
  double dropout = 0.1;  // the code's nn.Dropout(0.1)
  bool tk = false;       // fact_tk (else fact_tt)
};

// The factors every attachment of one delta shares.
struct FactShared {
  Tensor FacTu, FacTv;  // [dim, C], [C, dim]
  Tensor FacTc, FacTp;  // fact_tk only: [dim, dim, dim], [dim, cols_per_block * depth]
};

// One matrix of one block: which slice layout it has and where its core comes from.
struct FactSite {
  int64_t in_slices = 1, out_slices = 1;  // a, b: the matrix is [b C, a C]
  int64_t column = 0;                     // fact_tk: its first FacTp column
  enum class Kind { Qkv, Proj, Fc1, Fc2 } kind = Kind::Proj;
};

class FactDelta : public MethodDelta {
 public:
  // `owns`: this attachment lists the shared tensors (the delta's first one)
  FactDelta(const std::string& name, const FactOptions& o, nn::Linear& base, const FactSite& site,
            std::shared_ptr<FactShared> shared, bool owns, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return opts_.tk ? "fact_tk" : "fact_tt"; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  // fact_tt's own cores, by the code's names (q/k/v_FacTs on the qkv site)
  std::vector<std::pair<std::string, Tensor>> cores;

 private:
  Tensor core_weight() const;                            // [b dim, a dim], on the tape
  Tensor branch(const Tensor& x, bool drop) const;       // s * V_big(dropout(core(U_big x)))
  FactOptions opts_;
  nn::Linear& base_;
  FactSite site_;
  std::shared_ptr<FactShared> shared_;
  bool owns_, merged_ = false;
  MergeOriginals originals_;
};

}  // namespace dg::peft

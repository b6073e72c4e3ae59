// VeRA (Kopiczko et al., ICLR 2024) as Hugging Face peft computes it (tuners/vera): frozen
// random projections A [r, max_in] and B [max_out, r] shared by every targeted Linear of one
// delta (sized to the largest target, each Linear uses the top-left slice, peft's _find_dim),
// and per Linear two trained vectors:
//   y' = y + s * lambda_b * (B_s (lambda_d * (A_s dropout(x)))),   A_s = A[:, :in], B_s = B[:out, :]
// peft's init: A, B kaiming-uniform from a generator seeded by projection_prng_key (ours is
// deltagrad's Philox generator, so the values differ from torch's for the same key), lambda_b
// zeros, lambda_d = d_initial. A delta file holds only the vectors: its metadata records the
// key, the generator and the shapes, and loading regenerates A and B (checking that record).
// save_projection: true keeps A and B in the file instead, with the first attachment: the
// projections of a peft VeRA (drawn by torch's generator) arrive so through import-peft.
// Merged: W += s * diag(lambda_b) B_s diag(lambda_d) A_s.
#pragma once
#include <memory>

#include "peft/config.h"
#include "peft/method_registry.h"
#include "peft/deltas.h"

namespace dg::peft {

struct VeraOptions : MethodOptions {
  int64_t r = 256;  // peft's default
  std::vector<std::string> target_modules = {"blocks.*.attn.qkv"};
  uint64_t projection_prng_key = 0;
  double vera_dropout = 0.0;
  double d_initial = 0.1;
  bool init_weights = true;  // false: lambda_b ones, lambda_d standard normal (peft's values before its reset)
  bool save_projection = false;  // true: A and B are delta tensors (in the file), not regenerated
};

struct VeraProjections {
  Tensor A, B;  // [r, max_in], [max_out, r]; frozen
};
// The projections our generator draws for `key`, as peft's _kaiming_init bounds them.
VeraProjections vera_projections(uint64_t key, int64_t r, int64_t max_in, int64_t max_out);

class VeraDelta : public MethodDelta {
 public:
  // `owns`: the delta's first attachment: it lists A and B among its tensors (save_projection)
  // or records how to regenerate them (file_metadata)
  VeraDelta(const std::string& name, const VeraOptions& o, const ScaleConfig& sc, nn::Linear& base,
            std::shared_ptr<VeraProjections> proj, bool owns, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "vera"; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  nlohmann::json file_metadata() const override;
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  Tensor lambda_b, lambda_d;  // [out], [r]
  const VeraOptions& options() const { return opts_; }
  const VeraProjections& projections() const { return *proj_; }
  Scale scale;

 private:
  Tensor sliced_A() const;  // [r, in]
  Tensor sliced_B() const;  // [out, r]
  VeraOptions opts_;
  nn::Linear& base_;
  std::shared_ptr<VeraProjections> proj_;
  bool owns_, merged_ = false;
  MergeOriginals originals_;
};

}  // namespace dg::peft

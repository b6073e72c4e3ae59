// Sparse storage of a masked or sparse delta: the flat (row-major) positions of the trained
// elements and their values, so a file's size follows the budget, not the tensor. Positions are
// int32 (safetensors I32), sorted ascending, no duplicates: 4 bytes each, so a delta of density d
// costs about 2d of the dense file with float32 values (a 1% delta: ~2%). Delta-coded uint8/uint16
// gaps would be smaller still, but core has no 8/16-bit integer dtypes; int32 also bounds a
// tensor at 2^31 elements, which the checks below enforce.
//
// In a file, tensor `<name>` is stored as `<name>.sparse_indices` (I32 [K]) and
// `<name>.sparse_values` ([K], the tensor's dtype). Mask files (`deltagrad sensitivity`) hold only
// `<name>.sparse_indices`.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dg::peft {

inline const std::string kSparseIndices = ".sparse_indices";
inline const std::string kSparseValues = ".sparse_values";

// The positions where `mask` is non-zero, as an I32 tensor [K] (sorted, CPU).
Tensor mask_positions(const Tensor& mask);
// The 0/1 mask (F32, `shape`) of positions.
Tensor positions_mask(const Tensor& positions, const Shape& shape);
// The positions of a file, checked: 1-D, an integer dtype, each in [0, numel), strictly
// increasing (sorted, no duplicates). Errors name `what` (the file) and `name` (the tensor).
Tensor checked_positions(const Tensor& positions, int64_t numel, const std::string& what, const std::string& name);
// `values` [K] of `dense` at `positions` (CPU copy, dense's dtype).
Tensor gather_positions(const Tensor& dense, const Tensor& positions);
// dense[positions] = values, in place (no autograd): restores the trained elements bit-exactly.
void scatter_positions(Tensor& dense, const Tensor& positions, const Tensor& values);

// Writes `<name>.sparse_indices` and, when `values` is defined, `<name>.sparse_values` into `out`.
void put_sparse(std::map<std::string, Tensor>& out, const std::string& name, const Tensor& positions,
                const Tensor& values = Tensor());
// The tensor names a file stores sparsely (those with a `.sparse_indices` entry).
std::vector<std::string> sparse_names(const std::map<std::string, Tensor>& file);

}  // namespace dg::peft

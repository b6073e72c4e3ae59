// Walk the elements of an N-d shape in row-major order while tracking the element
// offsets of several strided operands. The innermost dimension is handed to a
// callback as (count, offsets, inner strides) so loops over it stay tight.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dg::cpu {

template <size_t K, class F>
void for_each_strided(const Shape& shape, const std::array<const Shape*, K>& strides, F&& inner) {
  const size_t nd = shape.size();
  if (shape_numel(shape) == 0) return;
  if (nd == 0) {
    std::array<int64_t, K> off{}, st{};
    inner(int64_t(1), off, st);
    return;
  }
  const int64_t n_inner = shape[nd - 1];
  std::array<int64_t, K> st{};
  for (size_t k = 0; k < K; ++k) st[k] = (*strides[k])[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  std::array<int64_t, K> off{};
  const int64_t outer = shape_numel(shape) / n_inner;
  for (int64_t o = 0; o < outer; ++o) {
    inner(n_inner, off, st);
    // increment the multi-index over dims [0, nd-1)
    for (int64_t d = int64_t(nd) - 2; d >= 0; --d) {
      if (++idx[size_t(d)] < shape[size_t(d)]) {
        for (size_t k = 0; k < K; ++k) off[k] += (*strides[k])[size_t(d)];
        break;
      }
      for (size_t k = 0; k < K; ++k) off[k] -= (*strides[k])[size_t(d)] * (shape[size_t(d)] - 1);
      idx[size_t(d)] = 0;
    }
  }
}

}  // namespace dg::cpu

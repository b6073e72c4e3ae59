// Walk the elements of an N-d shape in row-major order while tracking the element
// offsets of several strided operands. The innermost dimension is handed to a
// callback as (count, offsets, inner strides) so loops over it stay tight.
// parallel_for_each_strided splits the outer rows over the OpenMP threads (each callback
// call then writes only its own rows of a contiguous output).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/tensor.h"

namespace dg::cpu {

namespace detail {
// Walk rows [r0, r1) of the outer dimensions [0, nd-1).
template <size_t K, class F>
void walk_rows(const Shape& shape, const std::array<const Shape*, K>& strides, int64_t r0, int64_t r1, F& inner) {
  const size_t nd = shape.size();
  const int64_t n_inner = shape[nd - 1];
  std::array<int64_t, K> st{}, off{};
  for (size_t k = 0; k < K; ++k) st[k] = (*strides[k])[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t d = int64_t(nd) - 2, r = r0; d >= 0; --d) {  // multi-index of row r0
    idx[size_t(d)] = r % shape[size_t(d)];
    r /= shape[size_t(d)];
    for (size_t k = 0; k < K; ++k) off[k] += idx[size_t(d)] * (*strides[k])[size_t(d)];
  }
  for (int64_t o = r0; o < r1; ++o) {
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
}  // namespace detail

template <size_t K, class F>
void for_each_strided(const Shape& shape, const std::array<const Shape*, K>& strides, F&& inner) {
  if (shape_numel(shape) == 0) return;
  if (shape.empty()) {
    std::array<int64_t, K> off{}, st{};
    inner(int64_t(1), off, st);
    return;
  }
  detail::walk_rows<K>(shape, strides, 0, shape_numel(shape) / shape.back(), inner);
}

// Above `min_parallel` elements, blocks of rows per thread; below, the plain walk.
template <size_t K, class F>
void parallel_for_each_strided(const Shape& shape, const std::array<const Shape*, K>& strides, F&& inner,
                               int64_t min_parallel = 65536) {
  const int64_t numel = shape_numel(shape);
  if (shape.size() < 2 || numel < min_parallel) return for_each_strided<K>(shape, strides, inner);
  const int64_t outer = numel / shape.back();
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
    detail::walk_rows<K>(shape, strides, outer * t / nt, outer * (t + 1) / nt, inner);
  }
}

}  // namespace dg::cpu

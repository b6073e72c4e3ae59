// The fused attention kernels of cuda/cuda_attention.cu (see there for the algorithm), in a
// header of their own so that tests/test_cuda_attention_host.cpp can also run them on the host
// under tests/cuda_host_emulation.h: they use only thread/block indices, __shared__ arrays and
// __syncthreads(), which the emulation provides (one block at a time, one std::thread per CUDA
// thread). Compiled by nvcc for the GPU, by g++ for that test.
#pragma once

#ifndef __CUDACC__
#include <cmath>
#endif

#ifdef __CUDACC__
#define DG_UNROLL _Pragma("unroll")
#else
#define DG_UNROLL  // g++ (the host emulation) has no #pragma unroll
#endif

namespace dg::cuda::attn {

#ifndef __CUDACC__
using std::exp;  // on the host these, not dg::exp(Tensor), are the exp and log below
using std::log;
#endif

constexpr int TILE = 32;

template <class T, int HD>
__device__ __forceinline__ T dot(const T* a, const T* b) {
  T s = 0;
DG_UNROLL
  for (int d = 0; d < HD; ++d) s += a[d] * b[d];
  return s;
}

// Skipped query rows [sb, sb + sn): query i (of N - sn) is the row query_row(i, sb, sn) of qkv.
// Those rows are keys and values only (VPT-deep's prompt rows that the next block replaces).
__device__ __forceinline__ int query_row(int i, int sb, int sn) { return i < sb ? i : i + sn; }

// Stage rows [j0, j0 + TILE) of the column block `col` (q: 0, k: D, v: 2D) into sh; zeros past N.
// With sn > 0 the rows are queries: j counts the N kept queries, mapped by query_row.
template <class T, int HD>
__device__ __forceinline__ void stage(T (*sh)[HD], const T* base, long long rs, int col, int j0, int N, int sb = 0,
                                      int sn = 0) {
  for (int e = threadIdx.x; e < TILE * HD; e += blockDim.x) {
    const int r = e / HD, d = e % HD, j = j0 + r;
    sh[r][d] = j < N ? base[(long long)query_row(j, sb, sn) * rs + col + d] : T(0);
  }
}

// grid (ceil(Nq / TILE), B * H), TILE threads: one kept query row each (Nq = N - sn).
// out [B, Nq, D], lse [B, H, Nq].
template <class T, int HD>
__global__ void attn_fwd_kernel(const T* qkv, T* out, T* lse, int N, int H, T scale, int sb = 0, int sn = 0) {
  __shared__ T ks[TILE][HD], vs[TILE][HD];
  const int p = blockIdx.y, b = p / H, h = p % H, D = H * HD, i = blockIdx.x * TILE + threadIdx.x, Nq = N - sn;
  const long long rs = 3LL * D;
  const T* base = qkv + (long long)b * N * rs + h * HD;
  const bool valid = i < Nq;
  const long long qi = query_row(valid ? i : 0, sb, sn);
  T q[HD], o[HD];
DG_UNROLL
  for (int d = 0; d < HD; ++d) q[d] = valid ? base[qi * rs + d] * scale : T(0), o[d] = 0;
  T m = T(-INFINITY), l = 0;
  for (int j0 = 0; j0 < N; j0 += TILE) {
    stage<T, HD>(ks, base, rs, D, j0, N);
    stage<T, HD>(vs, base, rs, 2 * D, j0, N);
    __syncthreads();
    T s[TILE], tm = m;
DG_UNROLL
    for (int r = 0; r < TILE; ++r) {
      s[r] = j0 + r < N ? dot<T, HD>(q, ks[r]) : T(-INFINITY);
      tm = s[r] > tm ? s[r] : tm;
    }
    const T corr = exp(m - tm);  // rescale what the earlier tiles summed (0 on the first tile)
    l *= corr;
DG_UNROLL
    for (int d = 0; d < HD; ++d) o[d] *= corr;
DG_UNROLL
    for (int r = 0; r < TILE; ++r) {
      const T pr = exp(s[r] - tm);
      l += pr;
DG_UNROLL
      for (int d = 0; d < HD; ++d) o[d] += pr * vs[r][d];
    }
    m = tm;
    __syncthreads();
  }
  if (!valid) return;
  T* orow = out + ((long long)b * Nq + i) * D + h * HD;
DG_UNROLL
  for (int d = 0; d < HD; ++d) orow[d] = o[d] / l;
  lse[(long long)p * Nq + i] = m + log(l);
}

// dq, and Drow[i] = sum_j P_ij dP_ij (= rowsum(do * o)) for the dk/dv pass.
// grid (ceil(N / TILE), B * H), TILE threads: one row of qkv each; two sweeps over the keys. A
// skipped row (not a query) writes dq = 0. gout [B, Nq, D], lse and Drow [B, H, Nq].
template <class T, int HD>
__global__ void attn_bwd_dq_kernel(const T* qkv, const T* lse, const T* gout, T* gqkv, T* Drow, int N, int H,
                                   T scale, int sb = 0, int sn = 0) {
  __shared__ T ks[TILE][HD], vs[TILE][HD];
  const int p = blockIdx.y, b = p / H, h = p % H, D = H * HD, i = blockIdx.x * TILE + threadIdx.x, Nq = N - sn;
  const long long rs = 3LL * D;
  const T* base = qkv + (long long)b * N * rs + h * HD;
  const bool skipped = i >= sb && i < sb + sn, valid = i < N && !skipped;
  const int iq = i < sb ? i : i - sn;  // this row's index among the queries (when valid)
  T q[HD], go[HD], dq[HD];
  const T* grow = gout + ((long long)b * Nq + (valid ? iq : 0)) * D + h * HD;
DG_UNROLL
  for (int d = 0; d < HD; ++d) q[d] = valid ? base[i * rs + d] : T(0), go[d] = valid ? grow[d] : T(0), dq[d] = 0;
  const T li = valid ? lse[(long long)p * Nq + iq] : T(0);
  T Di = 0;
  for (int sweep = 0; sweep < 2; ++sweep) {
    for (int j0 = 0; j0 < N; j0 += TILE) {
      stage<T, HD>(ks, base, rs, D, j0, N);
      stage<T, HD>(vs, base, rs, 2 * D, j0, N);
      __syncthreads();
      for (int r = 0; r < TILE && j0 + r < N; ++r) {
        const T P = exp(scale * dot<T, HD>(q, ks[r]) - li), dP = dot<T, HD>(go, vs[r]);
        if (sweep == 0) {
          Di += P * dP;
        } else {
          const T dS = P * (dP - Di) * scale;
DG_UNROLL
          for (int d = 0; d < HD; ++d) dq[d] += dS * ks[r][d];
        }
      }
      __syncthreads();
    }
  }
  if (i >= N) return;
  T* gq = gqkv + ((long long)b * N + i) * rs + h * HD;
DG_UNROLL
  for (int d = 0; d < HD; ++d) gq[d] = dq[d];  // 0 for a skipped row
  if (valid) Drow[(long long)p * Nq + iq] = Di;
}

// dk, dv. grid (ceil(N / TILE), B * H), TILE threads: one key row each; one sweep over the Nq
// kept queries.
template <class T, int HD>
__global__ void attn_bwd_dkv_kernel(const T* qkv, const T* lse, const T* gout, const T* Drow, T* gqkv, int N, int H,
                                    T scale, int sb = 0, int sn = 0) {
  __shared__ T qs[TILE][HD], gos[TILE][HD];
  __shared__ T ls[TILE], Ds[TILE];
  const int p = blockIdx.y, b = p / H, h = p % H, D = H * HD, j = blockIdx.x * TILE + threadIdx.x, Nq = N - sn;
  const long long rs = 3LL * D;
  const T* base = qkv + (long long)b * N * rs + h * HD;
  const T* gbase = gout + (long long)b * Nq * D + h * HD;
  const bool valid = j < N;
  T k[HD], v[HD], dk[HD], dv[HD];
DG_UNROLL
  for (int d = 0; d < HD; ++d) {
    k[d] = valid ? base[j * rs + D + d] : T(0);
    v[d] = valid ? base[j * rs + 2 * D + d] : T(0);
    dk[d] = 0, dv[d] = 0;
  }
  for (int i0 = 0; i0 < Nq; i0 += TILE) {
    stage<T, HD>(qs, base, rs, 0, i0, Nq, sb, sn);
    for (int e = threadIdx.x; e < TILE * HD; e += blockDim.x) {
      const int r = e / HD, d = e % HD, i = i0 + r;
      gos[r][d] = i < Nq ? gbase[(long long)i * D + d] : T(0);
    }
    if (threadIdx.x < TILE) {
      const int i = i0 + threadIdx.x;
      ls[threadIdx.x] = i < Nq ? lse[(long long)p * Nq + i] : T(0);
      Ds[threadIdx.x] = i < Nq ? Drow[(long long)p * Nq + i] : T(0);
    }
    __syncthreads();
    for (int r = 0; r < TILE && i0 + r < Nq; ++r) {
      const T P = exp(scale * dot<T, HD>(qs[r], k) - ls[r]), dP = dot<T, HD>(gos[r], v);
      const T dS = P * (dP - Ds[r]) * scale;
DG_UNROLL
      for (int d = 0; d < HD; ++d) dv[d] += P * gos[r][d], dk[d] += dS * qs[r][d];
    }
    __syncthreads();
  }
  if (!valid) return;
  T* g = gqkv + ((long long)b * N + j) * rs + h * HD;
DG_UNROLL
  for (int d = 0; d < HD; ++d) g[D + d] = dk[d], g[2 * D + d] = dv[d];
}

}  // namespace dg::cuda::attn

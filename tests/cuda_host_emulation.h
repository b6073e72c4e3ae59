// Runs simple CUDA kernels on the host, for testing their logic where no GPU is present: the
// kernel source is compiled by g++ with CUDA's keywords defined away, each block runs on its own
// (one after another), each of its threads is a std::thread, __shared__ arrays are the kernel's
// function-local statics (one block at a time, so they are that block's shared memory) and
// __syncthreads() is a std::barrier. A thread that returns leaves the barrier, as on sm_70+.
// Enough for kernels that use only threadIdx / blockIdx / blockDim / gridDim, __shared__ and
// __syncthreads (cuda/attention_kernels.cuh); no warp intrinsics, atomics or streams.
#pragma once
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;

// kernel<<<grid, block>>>(args...), synchronously.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  grid_dim = grid;
  block_dim = block;
  const unsigned nt = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(nt);
        block_barrier = &bar;
        std::vector<std::thread> threads;
        threads.reserve(nt);
        for (unsigned t = 0; t < nt; ++t)
          threads.emplace_back([&, t] {
            block_idx = dim3(bx, by, bz);
            thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            kernel(args...);
            bar.arrive_and_drop();  // an exited thread no longer holds up __syncthreads
          });
        for (std::thread& th : threads) th.join();
        block_barrier = nullptr;
      }
}
}  // namespace cuda_emu

#define threadIdx (::cuda_emu::thread_idx)
#define blockIdx (::cuda_emu::block_idx)
#define blockDim (::cuda_emu::block_dim)
#define gridDim (::cuda_emu::grid_dim)
inline void __syncthreads() { ::cuda_emu::block_barrier->arrive_and_wait(); }

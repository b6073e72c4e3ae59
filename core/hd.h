// DG_HD marks a function that compiles for the host and, under nvcc, for the device too:
// the formulas shared by core/cpu and cuda/ (philox.h, elementwise_math.h).
#pragma once
#if defined(__CUDACC__)
#define DG_HD __host__ __device__ __forceinline__
#else
#define DG_HD inline
#endif

// What the rest of the program may ask of the CUDA backend (safe to include without CUDA:
// every function exists and answers "no GPU" when the backend is not built).
#pragma once
#include <cstddef>

namespace dg::cuda {

bool device_present();       // a usable GPU and a backend built for it
size_t bytes_in_use();       // caching allocator: bytes handed out now
size_t peak_bytes();         // ... and the most at any time since reset_peak()
size_t bytes_cached();       // free blocks kept for reuse
void reset_peak();
void set_tf32(bool on);      // TF32 tensor-core GEMMs for f32 (off by default)
// linear()'s bias added in cuBLASLt's GEMM epilogue (off by default: not yet measured on a GPU;
// DG_CUDA_LT_EPILOGUE=1 turns it on at start-up)
void set_lt_epilogue(bool on);
bool lt_epilogue();
const char* device_name();   // e.g. "NVIDIA H100 80GB HBM3", or "none"

}  // namespace dg::cuda

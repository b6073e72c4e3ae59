// cuda/cuda_api.h for builds without CUDA: every answer is "no GPU".
#include "cuda/cuda_api.h"

namespace dg::cuda {

bool device_present() { return false; }
size_t bytes_in_use() { return 0; }
size_t peak_bytes() { return 0; }
size_t bytes_cached() { return 0; }
void reset_peak() {}
void set_tf32(bool) {}
void set_lt_epilogue(bool) {}
bool lt_epilogue() { return false; }
const char* device_name() { return "none"; }

}  // namespace dg::cuda

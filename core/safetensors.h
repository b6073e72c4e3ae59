// safetensors read/write (Hugging Face's format): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}},
// then the packed data. Everything is validated before it is trusted: a corrupt or
// truncated file gives an error naming the file and the tensor, never a crash or a huge
// allocation. Writes are atomic (temp file, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"

namespace dg {

struct SafeTensors {
  std::map<std::string, Tensor> tensors;        // CPU; F16/BF16 converted to F32 on load
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

SafeTensors load_safetensors(const std::string& path);
SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what);
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Write bytes to path atomically (also used for JSON and checkpoint side files).
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace dg

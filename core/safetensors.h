// safetensors read/write (Hugging Face's format): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}},
// then the packed data (offsets relative to the buffer start). Everything is validated
// before it is trusted: a corrupt or truncated file, overlapping or non-covering offsets,
// duplicate names or unsupported dtypes give a dg::Error naming the file and the tensor,
// never a crash or an allocation larger than the file. Writes are atomic (temp file,
// fsync, rename), tensors sorted by name and packed, header space-padded to 8 bytes.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"

namespace dg {

struct SafeTensors {
  std::map<std::string, Tensor> tensors;        // CPU; F16/BF16 become F32, others keep their dtype
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

SafeTensors load_safetensors(const std::string& path);
// `what` names the source in error messages (load_safetensors passes the quoted path).
SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what);
// Any device/strides (made contiguous on the CPU first); dtypes are stored as they are.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Write bytes to path atomically: path + ".tmp.<pid>", fsync, rename over path; the temp
// file is removed on failure. Also used for JSON and checkpoint side files.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace dg

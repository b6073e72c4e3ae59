// libFuzzer harness: the IDX reader (plain and gzip) on arbitrary bytes, through a temp file
// because the reader takes a path (as the CLI does). The first byte picks images or labels;
// a gzip magic in the data exercises the zlib path. dg::Error is a clean refusal.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "data/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const std::string path = "/tmp/dg_fuzz_idx_" + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data + 1, 1, size - 1, f);
  std::fclose(f);
  try {
    dg::Tensor t = data[0] & 1 ? dg::data::read_idx_labels(path) : dg::data::read_idx_images(path);
    (void)t.numel();
  } catch (const dg::Error&) {
  }
  return 0;
}

// libFuzzer harness: the safetensors parser on arbitrary bytes. A dg::Error is the parser
// refusing bad input (expected); anything else (a crash, a sanitizer report, another
// exception type, an allocation past -malloc_limit_mb) is a finding.
#include <cstdint>

#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    dg::SafeTensors st = dg::parse_safetensors(data, size, "fuzz input");
    for (auto& [name, t] : st.tensors) (void)t.numel();
  } catch (const dg::Error&) {
  }
  return 0;
}

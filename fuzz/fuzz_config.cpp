// libFuzzer harness: the JSON configs a user writes (PEFT config, model config, run config)
// on arbitrary text. JSON syntax errors and dg::Error are clean refusals.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/vit_config.h"
#include "peft/config.h"
#include "train/trainer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    dg::peft::parse_peft_config(j);
  } catch (const dg::Error&) {
  }
  try {
    dg::nn::vit_config_from_json(j);
  } catch (const dg::Error&) {
  }
  try {
    dg::train::run_config_from_json(j);
  } catch (const dg::Error&) {
  }
  return 0;
}

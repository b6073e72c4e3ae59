// Small inputs shared by the bad-input tests (tests/test_cli_inputs.cpp, tests/test_input_checks.cpp):
// an image folder, a ViT config and a PEFT config that train in a second, and string helpers.
#pragma once
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <stb_image_write.h>

#include "tests/test_util.h"

namespace dg::test {

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
inline doctest::Contains has(const std::string& part) { return doctest::Contains(part.c_str()); }

// A small gray image folder (classes a and b, `per_class` 8x8 PNGs each) and a ViT config for it.
inline std::filesystem::path make_folder(const std::filesystem::path& root, int per_class = 4,
                                         const std::vector<std::string>& classes = {"a", "b"}) {
  for (size_t k = 0; k < classes.size(); ++k) {
    std::filesystem::create_directories(root / classes[k]);
    for (int i = 0; i < per_class; ++i) {
      std::vector<unsigned char> px(64, static_cast<unsigned char>(40 + 150 * k + 5 * i));
      REQUIRE(stbi_write_png((root / classes[k] / (std::to_string(i) + ".png")).string().c_str(), 8, 8, 1, px.data(), 8));
    }
  }
  return root;
}
inline std::filesystem::path write_model_config(const std::filesystem::path& p) {
  std::ofstream(p) << nlohmann::json{{"img_size", 8}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16},
                                     {"depth", 1}, {"num_heads", 2}, {"num_classes", 2}, {"mean", {0.5}},
                                     {"std", {0.5}}}
                          .dump();
  return p;
}
inline std::filesystem::path write_peft_config(const std::filesystem::path& p) {
  std::ofstream(p) << R"({"deltas": [{"name": "lora", "method": "lora", "r": 2}], "trainable": ["head.*"]})";
  return p;
}

}  // namespace dg::test

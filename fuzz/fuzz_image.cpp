// libFuzzer harness: the image folder loader (stb_image decode, channel conversion,
// bilinear resize) on one arbitrary file in root/cls/x.png. A dg::Error (e.g. "the class
// folder has no readable images") is a clean refusal; unreadable images are skipped.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "data/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  namespace fs = std::filesystem;
  static const fs::path root = fs::temp_directory_path() / ("dg_fuzz_img_" + std::to_string(::getpid()));
  static const bool made = fs::create_directories(root / "cls") || true;
  (void)made;
  FILE* f = std::fopen((root / "cls" / "x.png").c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data + 1, 1, size - 1, f);
  std::fclose(f);
  try {
    // first byte: output channels (1 or 3) and size (4..35)
    dg::data::ImageSet s = dg::data::load_image_folder(root.string(), 4 + (data[0] >> 3), data[0] & 1 ? 3 : 1);
    (void)s.size();
  } catch (const dg::Error&) {
  }
  return 0;
}

#include "tools/chart.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"

#include <stb_image_write.h>
#include <stb_easy_font.h>

namespace dg::cli {

std::string summary_markdown(const std::vector<SummaryRow>& rows, double total) {
  std::string s = "| method | trainable params | % of model | test accuracy | train time |\n|---|---:|---:|---:|---:|\n";
  char line[256];
  for (const SummaryRow& r : rows) {
    std::snprintf(line, sizeof line, "| %s | %lld | %.2f%% | %.2f%% | %.1fs |\n", r.method.c_str(), (long long)r.trainable,
                  r.percent, 100 * r.accuracy, r.seconds);
    s += line;
  }
  std::snprintf(line, sizeof line, "\nTotal wall time %.0fs.\n", total);
  return s + line;
}

namespace {
struct Canvas {
  int w, h;
  std::vector<unsigned char> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_ * h_ * 3), 255) {}
  void rect(int x0, int y0, int x1, int y1, unsigned char r, unsigned char g, unsigned char b) {
    for (int y = std::max(0, y0); y < std::min(h, y1); ++y)
      for (int x = std::max(0, x0); x < std::min(w, x1); ++x) {
        unsigned char* p = &px[size_t((y * w + x) * 3)];
        p[0] = r, p[1] = g, p[2] = b;
      }
  }
  // stb_easy_font emits axis-aligned quads (4 vertices of x, y, z, color): fill each
  void text(int x, int y, const std::string& s, int scale = 1) {
    static char buf[60000];
    const int quads = stb_easy_font_print(0, 0, const_cast<char*>(s.c_str()), nullptr, buf, sizeof buf);
    const float* v = reinterpret_cast<const float*>(buf);
    for (int q = 0; q < quads; ++q) {
      const float* a = v + q * 16;  // 4 vertices * 4 floats (x, y, z, rgba packed)
      rect(x + int(a[0]) * scale, y + int(a[1]) * scale, x + int(a[8]) * scale, y + int(a[9]) * scale, 30, 30, 30);
    }
  }
};
}  // namespace

void write_bar_chart_png(const std::string& path, const std::vector<SummaryRow>& rows) {
  const int bar = 34, gap = 14, left = 190, top = 40, width = 420;
  Canvas c(left + width + 90, top + int(rows.size()) * (bar + gap) + 20);
  c.text(10, 12, "Fashion-MNIST 5-9, 1000 training images: test accuracy by method", 1);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int y = top + int(i) * (bar + gap);
    c.text(10, y + bar / 2 - 4, rows[i].method);
    const int len = int(rows[i].accuracy * width);
    c.rect(left, y, left + len, y + bar, 31, 119, 180);
    char lab[64];
    std::snprintf(lab, sizeof lab, "%.1f%%  (%.2f%% params)", 100 * rows[i].accuracy, rows[i].percent);
    c.text(left + len + 6, y + bar / 2 - 4, lab);
  }
  c.rect(left, top - 4, left + 1, top + int(rows.size()) * (bar + gap), 0, 0, 0);
  const std::string tmp = path + ".tmp.png";
  DG_CHECK(stbi_write_png(tmp.c_str(), c.w, c.h, 3, c.px.data(), c.w * 3), "cannot write '", tmp, "'");
  DG_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot replace '", path, "'");
}

}  // namespace dg::cli

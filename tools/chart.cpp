#include "tools/chart.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "train/figure.h"

namespace dg::cli {

std::string summary_markdown(const std::vector<SummaryRow>& rows, double total) {
  std::string s = "| method | trainable params | % of model | delta file | test accuracy | train time |\n"
      "|---|---:|---:|---:|---:|---:|\n";
  char line[256];
  for (const SummaryRow& r : rows) {
    std::snprintf(line, sizeof line, "| %s | %lld | %.2f%% | %lld B | %.2f%% | %.1fs |\n", r.method.c_str(),
                  (long long)r.trainable, r.percent, (long long)r.delta_bytes, 100 * r.accuracy, r.seconds);
    s += line;
  }
  std::snprintf(line, sizeof line, "\nTotal wall time %.0fs.\n", total);
  return s + line;
}

// Drawn by the rasteriser the run curves use (train/figure.h), at one pixel a unit.
void write_bar_chart_png(const std::string& path, const std::vector<SummaryRow>& rows) {
  const double bar = 34, gap = 14, left = 190, top = 40, width = 420;
  train::Figure f(left + width + 90, top + double(rows.size()) * (bar + gap) + 20);
  f.text(10, 19, "Fashion-MNIST 5-9, 1000 training images: test accuracy by method");
  for (size_t i = 0; i < rows.size(); ++i) {
    const double y = top + double(i) * (bar + gap), len = rows[i].accuracy * width;
    f.text(10, y + bar / 2 + 3, rows[i].method);
    f.rect(left, y, len, bar, "#1f77b4");
    char lab[64];
    std::snprintf(lab, sizeof lab, "%.1f%%  (%.2f%% params)", 100 * rows[i].accuracy, rows[i].percent);
    f.text(left + len + 6, y + bar / 2 + 3, lab);
  }
  f.rect(left, top - 4, 1, double(rows.size()) * (bar + gap) + 4, "#000000");
  train::write_png(path, train::rasterize(f, 1));
}

}  // namespace dg::cli

// The demo's outputs: a markdown table and a bar chart PNG (train/figure.h's rasteriser).
#pragma once
#include <string>
#include <vector>

namespace dg::cli {

struct SummaryRow {
  std::string method;
  int64_t trainable;
  double percent, accuracy, seconds;
  int64_t delta_bytes;  // the run's deltas.safetensors: what a task costs to store and ship
};

std::string summary_markdown(const std::vector<SummaryRow>& rows, double total_seconds);
void write_bar_chart_png(const std::string& path, const std::vector<SummaryRow>& rows);

}  // namespace dg::cli

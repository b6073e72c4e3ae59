// curves.svg and curves.png: a run's training loss and validation accuracy, in two panels that share the
// epoch axis, each with its own numbered y axis, so neither squeezes the other.
#include <algorithm>
#include <cmath>
#include <string>

#include "train/figure.h"
#include "train/trainer.h"

namespace dg::train {

namespace {

// One panel: a frame at (x0, y0) of w x h, x over [0, xmax] epochs, y over [ylo, yhi].
struct Panel {
  double x0, y0, w, h, xmax, ylo, yhi;
  double X(double x) const { return x0 + w * x / xmax; }
  double Y(double y) const { return y0 + h - h * (y - ylo) / std::max(yhi - ylo, 1e-12); }
  void frame(Figure& f, const std::string& ylabel, const std::string& color) const {
    f.rect(x0, y0, w, h, "", "#444444");
    for (double t : nice_ticks(0, xmax, 5)) {
      f.line(X(t), y0 + h, X(t), y0 + h + 4, "#444444");
      f.text(X(t), y0 + h + 16, tick_label(t), Figure::Anchor::Middle);
    }
    for (double t : nice_ticks(ylo, yhi, 4)) {
      f.line(x0 - 4, Y(t), x0 + w, Y(t), "#dddddd");
      f.text(x0 - 6, Y(t) + 4, tick_label(t), Figure::Anchor::End);
    }
    f.text(x0 + w / 2, y0 + h + 32, "epoch", Figure::Anchor::Middle);
    f.text(x0 - 42, y0 + h / 2, ylabel, Figure::Anchor::Middle, 11, color, true);
  }
};

}  // namespace

Figure curves_figure(const std::vector<double>& losses, const std::vector<EpochResult>& epochs, int64_t steps_per_epoch,
                     const std::string& title) {
  const double W = 760, H = 320, top = 40, ph = H - top - 50, pw = 290;
  const double spe = double(std::max<int64_t>(steps_per_epoch, 1));
  const double xmax = std::max({1.0, double(losses.size()) / spe, epochs.empty() ? 0.0 : double(epochs.back().epoch)});
  double lmax = 0;
  for (double l : losses) lmax = std::max(lmax, l);
  const Panel loss{60, top, pw, ph, xmax, 0, lmax > 0 ? lmax * 1.05 : 1}, acc{W - pw - 20, top, pw, ph, xmax, 0, 1};
  Figure f(W, H);
  f.text(W / 2, 18, title, Figure::Anchor::Middle, 14);
  loss.frame(f, "train loss (per step)", "#1f77b4");
  acc.frame(f, "validation accuracy", "#d62728");
  if (losses.size() == 1) {
    f.circle(loss.X(1 / spe), loss.Y(losses[0]), 3, "#1f77b4");
  } else if (!losses.empty()) {
    std::vector<std::pair<double, double>> pts;
    for (size_t i = 0; i < losses.size(); ++i) pts.push_back({loss.X(double(i + 1) / spe), loss.Y(losses[i])});
    f.polyline(pts, "#1f77b4", 1);
  }
  std::vector<std::pair<double, double>> pts;
  for (const EpochResult& e : epochs)
    if (e.val_acc >= 0) {
      pts.push_back({acc.X(double(e.epoch)), acc.Y(e.val_acc)});
      f.circle(pts.back().first, pts.back().second, 3, "#d62728");
    }
  if (pts.size() > 1) f.polyline(pts, "#d62728", 2);
  return f;
}

void write_curves_svg(const std::string& path, const std::vector<double>& losses, const std::vector<EpochResult>& epochs,
                      int64_t steps_per_epoch, const std::string& title) {
  write_svg(path, curves_figure(losses, epochs, steps_per_epoch, title));
}

void write_curves_png(const std::string& path, const std::vector<double>& losses, const std::vector<EpochResult>& epochs,
                      int64_t steps_per_epoch, const std::string& title) {
  write_png(path, rasterize(curves_figure(losses, epochs, steps_per_epoch, title)));
}

}  // namespace dg::train

// curves.svg: a run's training loss and validation accuracy, in two panels that share the
// epoch axis, each with its own numbered y axis, so neither squeezes the other.
#include <algorithm>
#include <cmath>
#include <string>

#include "core/safetensors.h"
#include "train/trainer.h"

namespace dg::train {

namespace {

// About `n` round tick values over [lo, hi] (steps of 1, 2 or 5 times a power of ten).
std::vector<double> ticks(double lo, double hi, int n) {
  const double raw = (hi - lo) / std::max(n, 1), mag = std::pow(10.0, std::floor(std::log10(std::max(raw, 1e-12))));
  const double step = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step) t.push_back(std::abs(v) < 1e-12 ? 0 : v);
  return t;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : c == '\'' ? "&apos;" : std::string(1, c);
  return o;
}

// One panel: a frame at (x0, y0) of w x h, x over [0, xmax] epochs, y over [ylo, yhi].
struct Panel {
  double x0, y0, w, h, xmax, ylo, yhi;
  double X(double x) const { return x0 + w * x / xmax; }
  double Y(double y) const { return y0 + h - h * (y - ylo) / std::max(yhi - ylo, 1e-12); }
  std::string frame(const std::string& ylabel, const std::string& color) const {
    std::string s = str("<rect x='", x0, "' y='", y0, "' width='", w, "' height='", h, "' fill='none' stroke='#444'/>\n");
    for (double t : ticks(0, xmax, 5))
      s += str("<line x1='", X(t), "' y1='", y0 + h, "' x2='", X(t), "' y2='", y0 + h + 4, "' stroke='#444'/><text x='",
               X(t), "' y='", y0 + h + 16, "' text-anchor='middle'>", num(t), "</text>\n");
    for (double t : ticks(ylo, yhi, 4))
      s += str("<line x1='", x0 - 4, "' y1='", Y(t), "' x2='", x0 + w, "' y2='", Y(t), "' stroke='#ddd'/><text x='",
               x0 - 6, "' y='", Y(t) + 4, "' text-anchor='end'>", num(t), "</text>\n");
    s += str("<text x='", x0 + w / 2, "' y='", y0 + h + 32, "' text-anchor='middle'>epoch</text>\n");
    s += str("<text transform='translate(", x0 - 42, ",", y0 + h / 2, ") rotate(-90)' text-anchor='middle' fill='", color,
             "'>", ylabel, "</text>\n");
    return s;
  }
};

}  // namespace

void write_curves_svg(const std::string& path, const std::vector<double>& losses, const std::vector<EpochResult>& epochs,
                      int64_t steps_per_epoch, const std::string& title) {
  const double W = 760, H = 320, top = 40, ph = H - top - 50, pw = 290;
  const double spe = double(std::max<int64_t>(steps_per_epoch, 1));
  const double xmax = std::max({1.0, double(losses.size()) / spe, epochs.empty() ? 0.0 : double(epochs.back().epoch)});
  double lmax = 0;
  for (double l : losses) lmax = std::max(lmax, l);
  const Panel loss{60, top, pw, ph, xmax, 0, lmax > 0 ? lmax * 1.05 : 1}, acc{W - pw - 20, top, pw, ph, xmax, 0, 1};
  std::string s = str("<svg xmlns='http://www.w3.org/2000/svg' width='", W, "' height='", H,
                      "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n");
  s += str("<text x='", W / 2, "' y='18' text-anchor='middle' font-size='14'>", escape(title), "</text>\n");
  s += loss.frame("train loss (per step)", "#1f77b4") + acc.frame("validation accuracy", "#d62728");
  if (losses.size() == 1) {
    s += str("<circle cx='", loss.X(1 / spe), "' cy='", loss.Y(losses[0]), "' r='3' fill='#1f77b4'/>\n");
  } else if (!losses.empty()) {
    s += "<polyline fill='none' stroke='#1f77b4' stroke-width='1' points='";
    for (size_t i = 0; i < losses.size(); ++i) s += str(loss.X(double(i + 1) / spe), ",", loss.Y(losses[i]), " ");
    s += "'/>\n";
  }
  std::string pts;
  for (const EpochResult& e : epochs)
    if (e.val_acc >= 0) {
      pts += str(acc.X(double(e.epoch)), ",", acc.Y(e.val_acc), " ");
      s += str("<circle cx='", acc.X(double(e.epoch)), "' cy='", acc.Y(e.val_acc), "' r='3' fill='#d62728'/>\n");
    }
  if (!pts.empty()) s += "<polyline fill='none' stroke='#d62728' stroke-width='2' points='" + pts + "'/>\n";
  write_file_atomic(path, s + "</svg>\n");
}

}  // namespace dg::train

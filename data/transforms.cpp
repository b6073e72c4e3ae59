#include "data/transforms.h"

#include <vector>

#include "core/error.h"

namespace dg::data {

namespace {

double filter_support(Interpolation f) { return f == Interpolation::Bicubic ? 2.0 : 1.0; }

// PIL's filters (libImaging/Resample.c): triangle, and Keys' cubic with a = -0.5.
double filter(Interpolation f, double x) {
  x = std::abs(x);
  if (f == Interpolation::Bilinear) return x < 1 ? 1 - x : 0;
  constexpr double a = -0.5;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// One axis of PIL's resize with a box: output pixel i (of `out`) reads input pixels
// first[i] .. first[i] + weights[i].size() - 1 of `in`, with normalised weights. The box starts
// at `in0` and is `span` input pixels long.
struct AxisWeights {
  std::vector<int64_t> first;
  std::vector<std::vector<double>> weights;
};
AxisWeights axis_weights(int64_t in, double in0, double span, int64_t out, Interpolation f) {
  const double scale = span / double(out), stretch = std::max(scale, 1.0), support = filter_support(f) * stretch;
  AxisWeights a;
  for (int64_t i = 0; i < out; ++i) {
    const double centre = in0 + (double(i) + 0.5) * scale;
    // PIL truncates toward zero (a C cast), then clips to the image
    const int64_t lo = std::max<int64_t>(int64_t(centre - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(int64_t(centre + support + 0.5), in);
    std::vector<double> w;
    double sum = 0;
    for (int64_t j = lo; j < hi; ++j) {
      w.push_back(filter(f, (double(j) - centre + 0.5) / stretch));
      sum += w.back();
    }
    for (double& v : w) v = sum != 0 ? v / sum : 0;
    a.first.push_back(lo);
    a.weights.push_back(std::move(w));
  }
  return a;
}

// Horizontal pass, then vertical (PIL's order), on one plane.
void resample_plane(const float* src, int64_t w, const AxisWeights& ys, const AxisWeights& xs, float* dst) {
  const int64_t out_h = int64_t(ys.first.size()), out_w = int64_t(xs.first.size());
  const int64_t y_lo = ys.first.front();
  int64_t y_hi = 0;
  for (size_t i = 0; i < ys.first.size(); ++i) y_hi = std::max<int64_t>(y_hi, ys.first[i] + int64_t(ys.weights[i].size()));
  std::vector<double> rows(size_t((y_hi - y_lo) * out_w));  // the rows the vertical pass reads
  for (int64_t y = y_lo; y < y_hi; ++y)
    for (int64_t x = 0; x < out_w; ++x) {
      double v = 0;
      const auto& wx = xs.weights[size_t(x)];
      for (size_t k = 0; k < wx.size(); ++k) v += wx[k] * double(src[y * w + xs.first[size_t(x)] + int64_t(k)]);
      rows[size_t((y - y_lo) * out_w + x)] = std::clamp(v, 0.0, 1.0);  // PIL clips each pass (bicubic overshoots)
    }
  for (int64_t y = 0; y < out_h; ++y) {
    const auto& wy = ys.weights[size_t(y)];
    for (int64_t x = 0; x < out_w; ++x) {
      double v = 0;
      for (size_t k = 0; k < wy.size(); ++k) v += wy[k] * rows[size_t((ys.first[size_t(y)] + int64_t(k) - y_lo) * out_w + x)];
      dst[y * out_w + x] = float(std::clamp(v, 0.0, 1.0));
    }
  }
}

}  // namespace

Interpolation parse_interpolation(const std::string& name, const std::string& what) {
  if (name == "bilinear") return Interpolation::Bilinear;
  if (name == "bicubic") return Interpolation::Bicubic;
  throw Error(str(what, ": interpolation '", name, "' is not bilinear or bicubic"));
}

ResizeCrop eval_resize_crop(int64_t h, int64_t w, const EvalGeometry& g) {
  // timm: scale_size = floor(img_size / crop_pct); torchvision's Resize(int) sets the short side
  // to it and the long side to int(scale_size * long / short)
  const auto scale = int64_t(std::floor(double(g.size) / g.crop_pct));
  ResizeCrop r{};
  if (h <= w) r.resized_h = scale, r.resized_w = int64_t(double(scale) * double(w) / double(h));
  else r.resized_w = scale, r.resized_h = int64_t(double(scale) * double(h) / double(w));
  // Python's round(): halves to even (nearbyint in the default rounding mode)
  r.top = int64_t(std::nearbyint(double(r.resized_h - g.size) / 2.0));
  r.left = int64_t(std::nearbyint(double(r.resized_w - g.size) / 2.0));
  return r;
}

void resample_region(const float* src, int64_t channels, int64_t h, int64_t w, double top, double left, double height,
                     double width, int64_t out_h, int64_t out_w, Interpolation interp, float* dst) {
  const AxisWeights ys = axis_weights(h, top, height, out_h, interp), xs = axis_weights(w, left, width, out_w, interp);
  for (int64_t c = 0; c < channels; ++c) resample_plane(src + c * h * w, w, ys, xs, dst + c * out_h * out_w);
}

void resize_center_crop(const uint8_t* src, int64_t h, int64_t w, int64_t channels, const EvalGeometry& g, float* dst) {
  DG_CHECK(g.crop_pct > 0 && g.crop_pct <= 1, "crop_pct must be in (0, 1], got ", g.crop_pct);
  const ResizeCrop r = eval_resize_crop(h, w, g);
  DG_CHECK(r.top >= 0 && r.left >= 0, "image of ", w, " x ", h, " pixels is too narrow to resize and crop to ", g.size);
  std::vector<float> planar(size_t(channels * h * w));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < h * w; ++i) planar[size_t(c * h * w + i)] = float(src[i * channels + c]) / 255.0f;
  // Output pixel (y, x) is pixel (top + y, left + x) of the image resized to (rh, rw): only the
  // cropped pixels are computed, each from the whole image (the filter may reach past the crop).
  const double sy = double(h) / double(r.resized_h), sx = double(w) / double(r.resized_w);
  resample_region(planar.data(), channels, h, w, double(r.top) * sy, double(r.left) * sx, double(g.size) * sy,
                  double(g.size) * sx, g.size, g.size, g.interpolation, dst);
}

}  // namespace dg::data

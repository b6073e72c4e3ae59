// Image geometry as timm does it (timm.data.transforms_factory), on planar float images:
//   eval:  Resize(floor(size / crop_pct)) of the short side, then CenterCrop(size)
//   train: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip
// Resampling is PIL's (Image.resize: separable, the filter widened by the scale factor when
// shrinking, so downscaling averages instead of skipping pixels), computed in float as
// torchvision does on tensors with antialias=True, without PIL's rounding to 8 bits per pass (each
// pass is clipped to [0, 1] as PIL clips to 0..255). Values are in [0, 1].
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace dg::data {

// "bilinear" (triangle, support 1) or "bicubic" (Keys a = -0.5, support 2), PIL's filters.
enum class Interpolation { Bilinear, Bicubic };
Interpolation parse_interpolation(const std::string& name, const std::string& what);

struct EvalGeometry {
  int64_t size = 224;       // the square the model takes
  double crop_pct = 1.0;    // the short side is resized to floor(size / crop_pct) before the centre crop
  Interpolation interpolation = Interpolation::Bilinear;
};

// Where timm's eval transform takes the crop from: the resized image (rh, rw) and the crop's
// top-left corner in it (torchvision's CenterCrop: round((rh - size) / 2), round((rw - size) / 2), halves to even).
struct ResizeCrop {
  int64_t resized_h, resized_w, top, left;
};
ResizeCrop eval_resize_crop(int64_t h, int64_t w, const EvalGeometry& g);

// timm's eval transform of an interleaved u8 image src [h, w, channels] to planar floats
// dst [channels, size, size] in [0, 1].
void resize_center_crop(const uint8_t* src, int64_t h, int64_t w, int64_t channels, const EvalGeometry& g, float* dst);

// The region (top, left, height, width) of a planar float image src [channels, h, w] resampled
// to dst [channels, out_h, out_w] (PIL's resize with a box: the filter reads pixels past the box
// where the image has them; RandomResizedCrop, which crops first, passes the cropped image).
void resample_region(const float* src, int64_t channels, int64_t h, int64_t w, double top, double left, double height,
                     double width, int64_t out_h, int64_t out_w, Interpolation interp, float* dst);

// torchvision's RandomResizedCrop.get_params on an h x w image, drawing from `uniform(k)` (a
// value in [0, 1) per draw k): up to 10 tries of an area in scale (0.08, 1) of the image and a
// log-uniform aspect ratio in (3/4, 4/3), else the centre crop clamped to that ratio.
struct CropBox {
  int64_t top, left, height, width;
};
template <class Uniform>
CropBox random_resized_crop_box(int64_t h, int64_t w, Uniform uniform) {
  const double area = double(h) * double(w), lo = std::log(3.0 / 4.0), hi = std::log(4.0 / 3.0);
  for (int k = 0; k < 10; ++k) {
    const double target = area * (0.08 + (1.0 - 0.08) * uniform(3 * k));
    const double ratio = std::exp(lo + (hi - lo) * uniform(3 * k + 1));
    const auto cw = int64_t(std::nearbyint(std::sqrt(target * ratio)));  // Python's round: halves to even
    const auto ch = int64_t(std::nearbyint(std::sqrt(target / ratio)));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
      const auto top = int64_t(uniform(3 * k + 2) * double(h - ch + 1));
      const auto left = int64_t(uniform(3 * k + 2 + 30) * double(w - cw + 1));
      return {std::min(top, h - ch), std::min(left, w - cw), ch, cw};
    }
  }
  const double in_ratio = double(w) / double(h);  // fallback: the whole image, cut to the ratio range
  int64_t cw = w, ch = h;
  if (in_ratio < 3.0 / 4.0) ch = int64_t(std::nearbyint(double(w) / (3.0 / 4.0)));
  else if (in_ratio > 4.0 / 3.0) cw = int64_t(std::nearbyint(double(h) * (4.0 / 3.0)));
  return {(h - ch) / 2, (w - cw) / 2, ch, cw};
}

}  // namespace dg::data

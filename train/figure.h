// A chart as a list of shapes, written as SVG or rasterised to PNG from the same list, so the
// two files of one chart show the same thing. The rasteriser is deliberately small: hard-edged
// rectangles, lines, filled discs and text in stb_easy_font's built-in bitmap font (printable
// ASCII; other bytes are drawn as '?'), written with stb_image_write. No plotting library.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dg::train {

struct Figure {
  enum class Kind { Rect, Line, Polyline, Circle, Text };
  enum class Anchor { Start, Middle, End };
  struct Shape {
    Kind kind;
    std::vector<std::pair<double, double>> pts;  // Rect: corner and (width, height); Circle: centre; Text: baseline
    std::string fill, stroke;                    // "#rrggbb", "white", or "" for none
    double width = 1;                            // stroke width; Circle: radius; Text: font size (SVG px)
    std::string text;
    Anchor anchor = Anchor::Start;
    bool vertical = false;  // text turned 90 degrees counter-clockwise (a y axis label)
  };
  double w, h;
  std::vector<Shape> shapes;

  Figure(double width, double height) : w(width), h(height) {}
  void rect(double x, double y, double rw, double rh, const std::string& fill, const std::string& stroke = "");
  void line(double x1, double y1, double x2, double y2, const std::string& stroke, double width = 1);
  void polyline(const std::vector<std::pair<double, double>>& pts, const std::string& stroke, double width = 1);
  void circle(double cx, double cy, double r, const std::string& fill);
  void text(double x, double y, const std::string& s, Anchor anchor = Anchor::Start, double size = 11,
            const std::string& color = "#222222", bool vertical = false);

  std::string svg() const;
};

// An RGB image, 3 bytes a pixel, rows top to bottom.
struct RgbImage {
  int w = 0, h = 0;
  std::vector<unsigned char> px;
  const unsigned char* at(int x, int y) const { return &px[(size_t(y) * size_t(w) + size_t(x)) * 3]; }
};

// The figure drawn at `scale` pixels per SVG unit (2: sharp on today's screens; the bitmap
// font's 7-pixel capitals become 14).
RgbImage rasterize(const Figure& f, int scale = 2);

// Atomic writes (a temporary file renamed over the target).
void write_svg(const std::string& path, const Figure& f);
void write_png(const std::string& path, const RgbImage& img);

// A heat map of a [rows, cols] matrix of non-negative scores (a sensitivity map): log-scaled
// between the smallest positive score and the largest, black -> red -> yellow -> white, each
// element a `cell` x `cell` block.
RgbImage heat_map(const std::vector<double>& values, int rows, int cols, int cell = 1);

// About `n` round tick values over [lo, hi] (steps of 1, 2 or 5 times a power of ten).
std::vector<double> nice_ticks(double lo, double hi, int n);
// A tick label: "%g".
std::string tick_label(double v);

}  // namespace dg::train

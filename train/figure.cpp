#include "train/figure.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <new>

#include "core/error.h"
#include "core/safetensors.h"

#include <stb_easy_font.h>
#include <stb_image_write.h>

namespace dg::train {

void Figure::rect(double x, double y, double rw, double rh, const std::string& fill, const std::string& stroke) {
  shapes.push_back({Kind::Rect, {{x, y}, {rw, rh}}, fill, stroke, 1, "", Anchor::Start, false});
}
void Figure::line(double x1, double y1, double x2, double y2, const std::string& stroke, double width) {
  shapes.push_back({Kind::Line, {{x1, y1}, {x2, y2}}, "", stroke, width, "", Anchor::Start, false});
}
void Figure::polyline(const std::vector<std::pair<double, double>>& pts, const std::string& stroke, double width) {
  shapes.push_back({Kind::Polyline, pts, "", stroke, width, "", Anchor::Start, false});
}
void Figure::circle(double cx, double cy, double r, const std::string& fill) {
  shapes.push_back({Kind::Circle, {{cx, cy}}, fill, "", r, "", Anchor::Start, false});
}
void Figure::text(double x, double y, const std::string& s, Anchor anchor, double size, const std::string& color,
                  bool vertical) {
  shapes.push_back({Kind::Text, {{x, y}}, color, "", size, s, anchor, vertical});
}

std::vector<double> nice_ticks(double lo, double hi, int n) {
  const double raw = (hi - lo) / std::max(n, 1), mag = std::pow(10.0, std::floor(std::log10(std::max(raw, 1e-12))));
  const double step = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step) t.push_back(std::abs(v) < 1e-12 ? 0 : v);
  return t;
}

std::string tick_label(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

namespace {

std::string escape_xml(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : c == '\'' ? "&apos;" : std::string(1, c);
  return o;
}

std::string paint(const std::string& c) { return c.empty() ? "none" : c; }

}  // namespace

std::string Figure::svg() const {
  std::string s = str("<svg xmlns='http://www.w3.org/2000/svg' width='", w, "' height='", h,
                      "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n");
  for (const Shape& e : shapes) {
    const auto [x, y] = e.pts.empty() ? std::pair<double, double>{0, 0} : e.pts[0];
    switch (e.kind) {
      case Kind::Rect:
        s += str("<rect x='", x, "' y='", y, "' width='", e.pts[1].first, "' height='", e.pts[1].second, "' fill='",
                 paint(e.fill), "' stroke='", paint(e.stroke), "'/>\n");
        break;
      case Kind::Line:
        s += str("<line x1='", x, "' y1='", y, "' x2='", e.pts[1].first, "' y2='", e.pts[1].second, "' stroke='", e.stroke,
                 "' stroke-width='", e.width, "'/>\n");
        break;
      case Kind::Polyline: {
        s += str("<polyline fill='none' stroke='", e.stroke, "' stroke-width='", e.width, "' points='");
        for (const auto& [px, py] : e.pts) s += str(px, ",", py, " ");
        s += "'/>\n";
        break;
      }
      case Kind::Circle: s += str("<circle cx='", x, "' cy='", y, "' r='", e.width, "' fill='", e.fill, "'/>\n"); break;
      case Kind::Text: {
        const char* anchor = e.anchor == Anchor::Start ? "start" : e.anchor == Anchor::Middle ? "middle" : "end";
        const std::string at = e.vertical ? str("transform='translate(", x, ",", y, ") rotate(-90)'")
                                          : str("x='", x, "' y='", y, "'");
        s += str("<text ", at, " text-anchor='", anchor, "' font-size='", e.width, "' fill='", e.fill, "'>",
                 escape_xml(e.text), "</text>\n");
        break;
      }
    }
  }
  return s + "</svg>\n";
}

namespace {

struct Rgb {
  unsigned char r, g, b;
};

// "#rrggbb" or "white"; false for none.
bool parse_colour(const std::string& c, Rgb& out) {
  if (c.empty() || c == "none") return false;
  if (c == "white") return out = {255, 255, 255}, true;
  unsigned v = 0;
  DG_CHECK(c.size() == 7 && c[0] == '#' && std::sscanf(c.c_str() + 1, "%6x", &v) == 1, "figure: colour '", c,
           "' is not #rrggbb");
  out = {static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
  return true;
}

struct Raster {
  RgbImage img;
  // pixels [x0, x1) x [y0, y1), clipped to the image
  void fill(double x0, double y0, double x1, double y1, Rgb c) {
    const int a = std::max(0, int(std::lround(x0))), b = std::min(img.w, int(std::lround(x1)));
    const int top = std::max(0, int(std::lround(y0))), bottom = std::min(img.h, int(std::lround(y1)));
    for (int y = top; y < bottom; ++y)
      for (int x = a; x < b; ++x) {
        unsigned char* p = &img.px[(size_t(y) * size_t(img.w) + size_t(x)) * 3];
        p[0] = c.r, p[1] = c.g, p[2] = c.b;
      }
  }
  // a square pen of side `t` stepped along the segment in half-pixel steps
  void segment(double x1, double y1, double x2, double y2, double t, Rgb c) {
    const int n = std::max(1, int(std::ceil(2 * std::hypot(x2 - x1, y2 - y1))));
    for (int i = 0; i <= n; ++i) {
      const double x = x1 + (x2 - x1) * i / n, y = y1 + (y2 - y1) * i / n;
      fill(x - t / 2, y - t / 2, x + t / 2, y + t / 2, c);
    }
  }
  void disc(double cx, double cy, double r, Rgb c) {
    for (int y = std::max(0, int(cy - r)); y <= std::min(img.h - 1, int(cy + r)); ++y)
      for (int x = std::max(0, int(cx - r)); x <= std::min(img.w - 1, int(cx + r)); ++x)
        if (std::hypot(x + 0.5 - cx, y + 0.5 - cy) <= r) fill(x, y, x + 1, y + 1, c);
  }
  // stb_easy_font draws a glyph's capitals in rows 0..6 (the baseline at 7) as axis-aligned
  // quads; each becomes a rectangle of glyph pixels `g` wide, turned for vertical text.
  void text(double x, double y, const std::string& s, Figure::Anchor anchor, int g, bool vertical, Rgb c) {
    std::string ascii = s;
    for (char& ch : ascii)
      if (ch < 32 || ch > 126) ch = '?';  // the font's table covers printable ASCII only
    std::vector<char> buf(ascii.size() * 64 * 32 + 64);  // 64 bytes a quad; no glyph has 32 quads
    const int quads = stb_easy_font_print(0, 0, ascii.data(), nullptr, buf.data(), int(buf.size()));
    const double width = double(stb_easy_font_width(ascii.data()) - 1) * g;
    const double u0 = anchor == Figure::Anchor::Start ? 0 : anchor == Figure::Anchor::Middle ? -width / 2 : -width;
    const float* v = reinterpret_cast<const float*>(buf.data());
    for (int q = 0; q < quads; ++q) {
      const float* quad = v + q * 16;  // 4 vertices of (x, y, z, packed colour); corners 0 and 2 span it
      const double qa = u0 + quad[0] * g, qb = u0 + quad[8] * g, va = (quad[1] - 7) * g, vb = (quad[9] - 7) * g;
      if (vertical) fill(x + va, y - qb, x + vb, y - qa, c);
      else fill(x + qa, y + va, x + qb, y + vb, c);
    }
  }
};

}  // namespace

RgbImage rasterize(const Figure& f, int scale) {
  DG_CHECK(scale >= 1 && f.w > 0 && f.h > 0, "figure: empty size or scale");
  Raster r;
  r.img.w = int(std::lround(f.w * scale)), r.img.h = int(std::lround(f.h * scale));
  r.img.px.assign(size_t(r.img.w) * size_t(r.img.h) * 3, 255);
  const double s = scale;
  for (const Figure::Shape& e : f.shapes) {
    Rgb fill{}, stroke{};
    const bool has_fill = parse_colour(e.fill, fill), has_stroke = parse_colour(e.stroke, stroke);
    const double pen = std::max(1.0, std::round(e.width * s));
    switch (e.kind) {
      case Figure::Kind::Rect: {
        const double x0 = e.pts[0].first * s, y0 = e.pts[0].second * s;
        const double x1 = x0 + e.pts[1].first * s, y1 = y0 + e.pts[1].second * s;
        if (has_fill) r.fill(x0, y0, x1, y1, fill);
        if (has_stroke)
          for (auto [a, b, c, d] : {std::array<double, 4>{x0, y0, x1, y0}, {x1, y0, x1, y1}, {x1, y1, x0, y1}, {x0, y1, x0, y0}})
            r.segment(a, b, c, d, s, stroke);
        break;
      }
      case Figure::Kind::Line:
      case Figure::Kind::Polyline:
        if (has_stroke)
          for (size_t i = 1; i < e.pts.size(); ++i)
            r.segment(e.pts[i - 1].first * s, e.pts[i - 1].second * s, e.pts[i].first * s, e.pts[i].second * s, pen, stroke);
        break;
      case Figure::Kind::Circle:
        if (has_fill) r.disc(e.pts[0].first * s, e.pts[0].second * s, e.width * s, fill);
        break;
      case Figure::Kind::Text: {
        // an 11-unit SVG font: 2 glyph pixels a font pixel at scale 2 (capitals 14 px high)
        const int g = std::max(1, int(std::lround(e.width * s / 11)));
        if (has_fill) r.text(e.pts[0].first * s, e.pts[0].second * s, e.text, e.anchor, g, e.vertical, fill);
        break;
      }
    }
  }
  return std::move(r.img);
}

void write_svg(const std::string& path, const Figure& f) { write_file_atomic(path, f.svg()); }

void write_png(const std::string& path, const RgbImage& img) {
  std::string bytes;
  auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), size_t(size));
  };
  // stb fails only when an allocation does (the sizes are ours): it returns 0, or its allocator
  // throws (data/stb_impl.cpp), or appending to `bytes` does
  bool ok = false;
  try {
    ok = stbi_write_png_to_func(append, &bytes, img.w, img.h, 3, img.px.data(), img.w * 3) != 0;
  } catch (const std::bad_alloc&) {
  }
  if (!ok) throw OutOfMemory(str("encoding the PNG for '", path, "' (", img.w, " x ", img.h, " pixels)"));
  write_file_atomic(path, bytes);
}

RgbImage heat_map(const std::vector<double>& values, int rows, int cols, int cell) {
  DG_CHECK(rows > 0 && cols > 0 && cell > 0 && values.size() == size_t(rows) * size_t(cols), "heat_map: ",
           values.size(), " values for ", rows, " x ", cols);
  double lo = 0, hi = 0;
  for (double v : values)
    if (v > 0) lo = lo == 0 ? v : std::min(lo, v), hi = std::max(hi, v);
  // scores span decades (squared gradients): a log scale shows their structure, a linear one a few dots
  const double llo = lo > 0 ? std::log(lo) : 0, span = hi > lo ? std::log(hi) - llo : 1;
  RgbImage img;
  img.w = cols * cell, img.h = rows * cell;
  img.px.assign(size_t(img.w) * size_t(img.h) * 3, 0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double v = values[size_t(r) * size_t(cols) + size_t(c)];
      const double t = v > 0 ? std::clamp((std::log(v) - llo) / span, 0.0, 1.0) : 0.0;
      const unsigned char rgb[3] = {static_cast<unsigned char>(255 * std::min(1.0, 3 * t)),
                                    static_cast<unsigned char>(255 * std::clamp(3 * t - 1, 0.0, 1.0)),
                                    static_cast<unsigned char>(255 * std::clamp(3 * t - 2, 0.0, 1.0))};
      for (int y = r * cell; y < (r + 1) * cell; ++y)
        for (int x = c * cell; x < (c + 1) * cell; ++x)
          std::copy(rgb, rgb + 3, &img.px[(size_t(y) * size_t(img.w) + size_t(x)) * 3]);
    }
  return img;
}

}  // namespace dg::train

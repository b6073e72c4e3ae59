// The chart rasteriser (train/figure.h): curves.png must show what curves.svg shows. Each check
// looks for pixels where the figure's geometry puts them (and their absence where it does not),
// so a shape drawn in the wrong place, a missing curve or text, or a broken PNG fails.
#include <algorithm>
#include <filesystem>

#include "data/dataset.h"
#include "tests/test_util.h"
#include "train/figure.h"
#include "train/trainer.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {

struct Box {
  int x0, y0, x1, y1;  // inclusive pixel bounds
};

// The pixels of colour (r, g, b) inside `b`: their count and bounding box.
struct Found {
  int count = 0, xmin = 1 << 30, xmax = -1, ymin = 1 << 30, ymax = -1;
};
Found find_colour(const train::RgbImage& img, Box b, unsigned char r, unsigned char g, unsigned char bl) {
  Found f;
  for (int y = std::max(0, b.y0); y <= std::min(img.h - 1, b.y1); ++y)
    for (int x = std::max(0, b.x0); x <= std::min(img.w - 1, b.x1); ++x) {
      const unsigned char* p = img.at(x, y);
      if (p[0] == r && p[1] == g && p[2] == bl)
        ++f.count, f.xmin = std::min(f.xmin, x), f.xmax = std::max(f.xmax, x), f.ymin = std::min(f.ymin, y),
            f.ymax = std::max(f.ymax, y);
    }
  return f;
}
Box around(double x, double y, int r) { return {int(x) - r, int(y) - r, int(x) + r, int(y) + r}; }

}  // namespace

TEST_CASE("figure: curves.png draws the loss path, the evaluated point, the axis labels and the title where the SVG has them") {
  // curves.cpp's layout: 760 x 320 units; loss panel at x 60, accuracy panel at x 450, both at
  // y 40 and 290 x 230; x over [0, 2] epochs (4 steps, 2 a epoch); loss y over [0, 1.05].
  const std::vector<double> losses = {1.0, 0.8, 0.6, 0.5};
  const std::vector<train::EpochResult> epochs = {{1, 0.9, 0.5, -1.0}, {2, 0.55, 0.7, 0.625}};
  const train::Figure f = train::curves_figure(losses, epochs, 2, "lora on <data>");
  const train::RgbImage img = train::rasterize(f, 2);
  REQUIRE(img.w == 1520);
  REQUIRE(img.h == 640);
  auto LX = [](double epoch) { return 2 * (60 + 290 * epoch / 2); };
  auto LY = [](double loss) { return 2 * (40 + 230 - 230 * loss / 1.05); };
  // the loss polyline (#1f77b4) passes through each step's point and the middles between them
  for (size_t i = 0; i < losses.size(); ++i) {
    const double x = LX(double(i + 1) / 2), y = LY(losses[i]);
    CHECK_MESSAGE(find_colour(img, around(x, y, 2), 31, 119, 180).count > 0, "loss point ", i);
    if (i + 1 < losses.size()) {
      const double mx = (x + LX(double(i + 2) / 2)) / 2, my = (y + LY(losses[i + 1])) / 2;
      CHECK_MESSAGE(find_colour(img, around(mx, my, 2), 31, 119, 180).count > 0, "loss segment ", i);
    }
  }
  // nothing of the curve's colour inside the loss panel far from the path (upper left quarter,
  // away from the frame and the first point)
  CHECK(find_colour(img, {2 * 70, 2 * 45, 2 * 120, 2 * 90}, 31, 119, 180).count == 0);
  // the one evaluated epoch (2, 0.625) is a filled red disc of radius 3 units; epoch 1 has none
  const double ax = 2 * (450 + 290), ay = 2 * (40 + 230 - 230 * 0.625);
  CHECK(find_colour(img, around(ax, ay, 1), 214, 39, 40).count == 9);
  CHECK(find_colour(img, {2 * 455, 2 * 45, 2 * 700, 2 * 265}, 214, 39, 40).count == 0);
  // "epoch" under the loss panel: dark text centred on the panel's middle (x 205, baseline y 302)
  const Found epoch_label = find_colour(img, {2 * 205 - 60, 2 * 302 - 20, 2 * 205 + 60, 2 * 302 + 6}, 0x22, 0x22, 0x22);
  CHECK(epoch_label.count > 40);
  CHECK(std::abs((epoch_label.xmin + epoch_label.xmax) / 2 - 2 * 205) <= 3);
  CHECK(epoch_label.xmax - epoch_label.xmin > 30);  // five glyphs, not a dot
  CHECK(find_colour(img, {2 * 70, 2 * 302 - 20, 2 * 90, 2 * 302 + 6}, 0x22, 0x22, 0x22).count == 0);
  // the loss axis label runs upwards in the loss colour left of the panel (x 18, centred at y 155):
  // taller than wide
  const Found ylabel = find_colour(img, {0, 2 * 40, 2 * 30, 2 * 270}, 31, 119, 180);
  CHECK(ylabel.count > 100);
  CHECK(ylabel.ymax - ylabel.ymin > 4 * (ylabel.xmax - ylabel.xmin));
  CHECK(std::abs((ylabel.ymin + ylabel.ymax) / 2 - 2 * 155) <= 3);
  // the y tick "1" of the loss axis, right-aligned at x 54 on the tick line y = LY(1)
  CHECK(find_colour(img, {2 * 40, int(LY(1.0)) - 16, 2 * 55, int(LY(1.0)) + 8}, 0x22, 0x22, 0x22).count > 0);
  // the title, centred at the top
  const Found title = find_colour(img, {0, 0, img.w - 1, 2 * 22}, 0x22, 0x22, 0x22);
  CHECK(title.count > 100);
  CHECK(std::abs((title.xmin + title.xmax) / 2 - 760) <= 4);

  // the PNG decodes to the same pixels
  const fs::path d = test::fresh_dir("figure", "png");
  train::write_curves_png((d / "c.png").string(), losses, epochs, 2, "lora on <data>");
  data::DecodedImage png;
  REQUIRE(data::decode_image((d / "c.png").string(), 3, png) == "");
  CHECK(png.w == 1520);
  CHECK(png.h == 640);
  CHECK(png.pixels == img.px);
}

TEST_CASE("figure: a single loss value is a point; text outside printable ASCII is drawn, not read out of the font table") {
  const train::Figure f = train::curves_figure({0.7}, {{1, 0.7, 0.5, 0.5}}, 1, "caf\xc3\xa9 \xc2\xb1");
  const train::RgbImage img = train::rasterize(f, 1);
  const double x = 60 + 290, y = 40 + 230 - 230 * 0.7 / (0.7 * 1.05);
  CHECK(find_colour(img, around(x, y, 1), 31, 119, 180).count == 9);
  // every glyph of a long label is drawn: "8080808080" has five times the ink of "80"
  auto ink = [](const std::string& text) {
    train::Figure t(200, 20);
    t.text(2, 14, text);
    return find_colour(train::rasterize(t, 1), {0, 0, 199, 19}, 0x22, 0x22, 0x22).count;
  };
  CHECK(ink("80") > 10);
  CHECK(ink("8080808080") == 5 * ink("80"));
  // an unknown colour is an error naming it
  train::Figure bad(10, 10);
  bad.rect(0, 0, 5, 5, "blue");
  CHECK_THROWS_WITH(train::rasterize(bad), doctest::Contains("'blue'"));
}

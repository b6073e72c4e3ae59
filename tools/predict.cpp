// deltagrad predict: the top-k classes of images under a delta file's model, by class name.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "tools/commands.h"
#include "tools/model_args.h"

namespace dg::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Every image file under `dir` (recursively), sorted by path.
std::vector<std::string> images_under(const std::string& dir) {
  DG_CHECK(fs::is_directory(dir), "--data '", dir, "': not a directory");
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied))
    if (data::has_image_file_name(e.path().string()) && e.is_regular_file()) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  DG_CHECK(!files.empty(), "--data '", dir, "': no images (.png, .jpg, .jpeg, .bmp) in it or its subfolders");
  return files;
}

struct Prediction {
  std::string image;
  std::vector<std::pair<int64_t, double>> top;  // (class index, probability), best first
};

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

int cmd_predict(int argc, char** argv) {
  const char* help =
      "deltagrad predict --deltas D.safetensors [--model W.safetensors] [--model-config C]\n"
      "                  (--images IMG [IMG...] | --data DIR) [--topk K] [--batch B] [--out FILE.csv|FILE.json]\n"
      "  The top K (default 5) classes of each image, with their probabilities and the class names the\n"
      "  delta file's model config records (train saves its dataset's). --data DIR takes every image\n"
      "  under DIR, recursively. Images are resized and centre-cropped as in eval. Without --out the\n"
      "  table goes to stdout; --out writes CSV (image,rank,class_index,class_name,probability) or JSON.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"deltas", "model", "model-config", "images", "data", "topk", "batch", "out"});
  a.need("deltas");
  std::vector<std::string> files;
  if (a.has("images") == a.has("data")) throw UsageError("give --images IMG [IMG...] or --data DIR (one of them)");
  if (a.has("images")) {
    files.push_back(a.get("images"));
    files.insert(files.end(), a.positional.begin(), a.positional.end());
  } else {
    if (!a.positional.empty()) throw UsageError(str("unexpected argument '", a.positional[0], "' (--data takes one DIR)"));
    files = images_under(a.get("data"));
  }
  const std::string out = a.get("out");
  const bool as_json = out.size() > 5 && out.substr(out.size() - 5) == ".json";
  if (!out.empty() && !as_json && !(out.size() > 4 && out.substr(out.size() - 4) == ".csv"))
    throw UsageError(str("--out '", out, "': expected a file name ending in .csv or .json"));

  const nn::ViTConfig mc = model_config_for(a);
  const int64_t k = std::min<int64_t>(a.integer("topk", 5, 1), mc.num_classes), batch = a.integer("batch", 32, 1);
  auto m = load_model(a, mc);
  auto pm = attach_peft(*m, a);
  m->eval();
  data::EvalGeometry g;
  g.size = mc.img_size, g.crop_pct = mc.crop_pct;
  g.interpolation = data::parse_interpolation(mc.interpolation, "model config");
  std::vector<Prediction> preds;
  NoGradGuard ng;
  for (size_t b0 = 0; b0 < files.size(); b0 += size_t(batch)) {
    const size_t n = std::min(files.size() - b0, size_t(batch));
    Tensor x = Tensor::empty({int64_t(n), mc.in_chans, mc.img_size, mc.img_size});
    const int64_t per = mc.in_chans * mc.img_size * mc.img_size;
    for (size_t i = 0; i < n; ++i) {
      Tensor img = data::load_image(files[b0 + i], mc.in_chans, g);
      const float* s = img.data<float>();
      float* d = x.data<float>() + int64_t(i) * per;
      for (int64_t j = 0; j < per; ++j) {
        const int64_t c = j / (mc.img_size * mc.img_size);
        d[j] = float((double(s[j]) - mc.mean[size_t(c)]) / mc.std[size_t(c)]);
      }
    }
    std::vector<double> p = softmax((*m)(x), 1).to_vector();
    for (size_t i = 0; i < n; ++i) {
      std::vector<int64_t> idx(size_t(mc.num_classes));
      std::iota(idx.begin(), idx.end(), 0);
      const double* row = p.data() + i * size_t(mc.num_classes);
      std::stable_sort(idx.begin(), idx.end(), [&](int64_t u, int64_t v) { return row[u] > row[v]; });
      Prediction pr{files[b0 + i], {}};
      for (int64_t r = 0; r < k; ++r) pr.top.emplace_back(idx[size_t(r)], row[idx[size_t(r)]]);
      preds.push_back(std::move(pr));
    }
  }
  auto name = [&](int64_t c) { return mc.class_names.empty() ? str(c) : mc.class_names[size_t(c)]; };
  if (out.empty()) {
    for (const Prediction& p : preds) {
      std::printf("%s", printable(p.image).c_str());
      for (auto [c, prob] : p.top) std::printf("  %s %.4f", printable(name(c)).c_str(), prob);
      std::printf("\n");
    }
    return 0;
  }
  std::ostringstream os;
  if (as_json) {
    json j = json::array();
    for (const Prediction& p : preds) {
      json top = json::array();
      for (auto [c, prob] : p.top) top.push_back({{"class_index", c}, {"class_name", valid_utf8(name(c))}, {"probability", prob}});
      j.push_back({{"image", valid_utf8(p.image)}, {"top", top}});
    }
    os << j.dump(1) << "\n";
  } else {
    os << "image,rank,class_index,class_name,probability\n";
    for (const Prediction& p : preds)
      for (size_t r = 0; r < p.top.size(); ++r)
        os << csv_field(p.image) << "," << r + 1 << "," << p.top[r].first << "," << csv_field(name(p.top[r].first)) << ","
           << str(p.top[r].second) << "\n";
  }
  write_file_atomic(out, os.str());
  std::printf("wrote the top %lld classes of %zu images to %s\n", (long long)k, preds.size(), out.c_str());
  return 0;
}

}  // namespace dg::cli

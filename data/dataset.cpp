// Selecting and splitting ImageSets, and the --data spec. Readers: data/idx.cpp (IDX,
// Fashion-MNIST) and data/image_folder.cpp (ImageFolder layout).
#include "data/dataset.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/random.h"

namespace dg::data {

ImageSet subset(const ImageSet& s, const std::vector<int64_t>& idx) {
  DG_CHECK(s.images.dim() == 4 && s.labels.dim() == 1 && s.labels.size(0) == s.size(),
           "subset: expected images [N, C, H, W] and labels [N], got ", s.images.desc(), " and ", s.labels.desc());
  ImageSet o = s;
  const int64_t N = s.size(), per = s.images.numel() / std::max<int64_t>(N, 1);
  Shape sh = s.images.shape();
  sh[0] = int64_t(idx.size());
  o.images = Tensor::empty(sh);
  const float* src = s.images.data<float>();
  float* dst = o.images.data<float>();
  std::vector<int64_t> lab(idx.size());
  const int64_t* sl = s.labels.data<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i) {
    DG_CHECK(idx[i] >= 0 && idx[i] < N, "subset: index ", idx[i], " out of range for ", N, " images");
    std::copy(src + idx[i] * per, src + (idx[i] + 1) * per, dst + int64_t(i) * per);
    lab[i] = sl[idx[i]];
  }
  o.labels = Tensor::from_vector(lab, {int64_t(idx.size())});
  if (!s.files.empty()) {
    o.files.resize(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) o.files[i] = s.files[size_t(idx[i])];
  }
  return o;
}

// Fisher-Yates with the counter-based generator: the same seed, the same order.
static void shuffle(std::vector<int64_t>& v, uint64_t seed) {
  if (v.size() < 2) return;
  Generator g(seed);
  Tensor u = Tensor::empty({int64_t(v.size())}, DType::F64);
  g.uniform_(u);
  const double* p = u.data<double>();
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[std::min(size_t(p[i - 1] * double(i)), i - 1)]);
}

ImageSet select_classes(const ImageSet& s, const std::vector<int64_t>& classes, int64_t n, uint64_t seed) {
  DG_CHECK(!classes.empty(), "select_classes: no classes given");
  DG_CHECK(n == -1 || n > 0, "select_classes: n must be -1 (all) or positive, got ", n);
  for (size_t k = 0; k < classes.size(); ++k)
    DG_CHECK(std::find(classes.begin(), classes.begin() + int64_t(k), classes[k]) == classes.begin() + int64_t(k),
             "select_classes: class ", classes[k], " is listed twice");
  std::vector<std::vector<int64_t>> by(classes.size());  // image indices per selected class
  const int64_t* l = s.labels.data<int64_t>();
  for (int64_t i = 0; i < s.size(); ++i) {
    const auto it = std::find(classes.begin(), classes.end(), l[i]);
    if (it != classes.end()) by[size_t(it - classes.begin())].push_back(i);
  }
  int64_t avail = 0;
  for (size_t k = 0; k < classes.size(); ++k) {
    DG_CHECK(!by[k].empty(), "select_classes: class ", classes[k], " has no images (", s.num_classes, " classes)");
    shuffle(by[k], seed + k);
    avail += int64_t(by[k].size());
  }
  // How many of each class: all, or n spread evenly (the first n % k classes get one more);
  // a class with too few images gives its share to the others, so the total is exactly n.
  const int64_t K = int64_t(classes.size());
  std::vector<int64_t> take(classes.size());
  if (n < 0) {
    for (size_t k = 0; k < by.size(); ++k) take[k] = int64_t(by[k].size());
  } else {
    DG_CHECK(n <= avail, "select_classes: asked for ", n, " images but the ", K, " classes have only ", avail);
    int64_t left = n;
    for (size_t k = 0; k < by.size(); ++k) {
      take[k] = std::min<int64_t>(int64_t(by[k].size()), n / K + (int64_t(k) < n % K));
      left -= take[k];
    }
    while (left > 0)
      for (size_t k = 0; k < by.size() && left > 0; ++k)
        if (take[k] < int64_t(by[k].size())) ++take[k], --left;
  }
  std::vector<int64_t> idx;
  for (size_t k = 0; k < by.size(); ++k) idx.insert(idx.end(), by[k].begin(), by[k].begin() + take[k]);
  std::sort(idx.begin(), idx.end());  // keep the source order: subsets of subsets stay predictable
  ImageSet o = subset(s, idx);
  int64_t* ol = o.labels.data<int64_t>();
  for (int64_t i = 0; i < o.size(); ++i) ol[i] = std::find(classes.begin(), classes.end(), ol[i]) - classes.begin();
  o.num_classes = K;
  o.class_names.clear();
  for (int64_t c : classes)
    o.class_names.push_back(c >= 0 && size_t(c) < s.class_names.size() ? s.class_names[size_t(c)] : str(c));
  return o;
}

std::pair<ImageSet, ImageSet> split(const ImageSet& s, double val_fraction, uint64_t seed) {
  DG_CHECK(val_fraction >= 0 && val_fraction < 1, "split: val fraction must be in [0, 1), got ", val_fraction);
  std::vector<std::vector<int64_t>> by(size_t(std::max<int64_t>(s.num_classes, 0)));
  const int64_t* l = s.labels.data<int64_t>();
  for (int64_t i = 0; i < s.size(); ++i) {
    DG_CHECK(l[i] >= 0 && l[i] < s.num_classes, "split: label ", l[i], " of image ", i, " is not in 0..",
             s.num_classes - 1);
    by[size_t(l[i])].push_back(i);
  }
  // Per class (stratified): round(fraction * count) to val, the rest to train.
  std::vector<int64_t> tr, va;
  for (size_t k = 0; k < by.size(); ++k) {
    shuffle(by[k], seed + k);
    const size_t nv = std::min(by[k].size(), size_t(double(by[k].size()) * val_fraction + 0.5));
    va.insert(va.end(), by[k].begin(), by[k].begin() + int64_t(nv));
    tr.insert(tr.end(), by[k].begin() + int64_t(nv), by[k].end());
  }
  DG_CHECK(!tr.empty(), "split: no training images left after holding out ", val_fraction, " for validation");
  std::sort(tr.begin(), tr.end());
  std::sort(va.begin(), va.end());
  return {subset(s, tr), subset(s, va)};
}

namespace {

// A whole non-negative decimal integer ("12"; not "1.5", "-1", "1e3", " 2" or "99999999999999999999").
bool parse_count(const std::string& v, int64_t& out) {
  if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos) return false;
  out = std::stoll(v);
  return true;
}

}  // namespace

DataSpec parse_data_spec(const std::string& spec) {
  DataSpec d;
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  DG_CHECK(!parts.empty() && !parts[0].empty(), "--data: empty spec (expected fashion-mnist[:classes=A-B][:n=N] or ",
           "an image folder path[:val=F][:n=N])");
  const bool mnist = parts[0] == "fashion-mnist";
  d.kind = mnist ? "fashion-mnist" : "folder";
  d.path = mnist ? default_fashion_mnist_dir() : parts[0];
  // Every problem names the spec: a run config may hold it, far from the command line.
  auto fail = [&](const std::string& why) { return Error(str("--data '", spec, "': ", why)); };
  const char* keys = mnist ? "classes=A-B, n=N, dir=PATH" : "val=F, n=N, train=SPLIT, eval=SPLIT";
  std::set<std::string> seen;
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto eq = parts[i].find('=');
    if (eq == std::string::npos) throw fail(str("'", parts[i], "' is not key=value (keys: ", keys, ")"));
    const std::string k = parts[i].substr(0, eq), v = parts[i].substr(eq + 1);
    if (!seen.insert(k).second) throw fail(str("'", k, "' is given twice"));
    if (k == "classes" && mnist) {
      // Fashion-MNIST's classes are 0-9; a reversed range selected nothing and silently meant all ten.
      const auto dash = v.find('-');
      int64_t a = 0, b = 0;
      if (dash == std::string::npos || !parse_count(v.substr(0, dash), a) || !parse_count(v.substr(dash + 1), b))
        throw fail(str("classes='", v, "': expected A-B, two class numbers (e.g. classes=5-9)"));
      if (a > b) throw fail(str("classes=", v, " is a reversed range (expected A-B with A <= B)"));
      if (b >= kFashionMnistClasses)
        throw fail(str("classes=", v, ": Fashion-MNIST has classes 0-", kFashionMnistClasses - 1));
      for (int64_t c = a; c <= b; ++c) d.classes.push_back(c);
    } else if (k == "n") {
      if (!parse_count(v, d.n) || d.n < 1) throw fail(str("n=", v, ": expected a whole number of images >= 1"));
    } else if (k == "val" && !mnist) {
      // 0: nothing held out (eval scores the whole folder; train refuses it, having nothing to validate on)
      char* end = nullptr;
      d.val_fraction = std::strtod(v.c_str(), &end);
      d.val_given = true;
      if (v.empty() || *end || !(d.val_fraction >= 0 && d.val_fraction < 1))
        throw fail(str("val=", v, ": expected the held-out fraction, a number from 0 (none) up to but not 1"));
    } else if ((k == "train" || k == "eval") && !mnist) {
      if (v.empty() || v.find('/') != std::string::npos || v == "." || v == "..")
        throw fail(str(k, "=", v, ": expected the name of a split folder inside ", parts[0]));
      (k == "train" ? d.train_split : d.eval_split) = v;
    } else if (k == "dir" && mnist) {
      if (v.empty()) throw fail("dir= needs a directory");
      d.path = v;
    } else {
      throw fail(str("unknown key '", k, "' for ", mnist ? "fashion-mnist" : "an image folder", " (keys: ", keys,
                     mnist ? "; Fashion-MNIST's validation set is its test set)" : ")"));
    }
  }
  return d;
}

namespace {

// A split folder holds class folders (a flat ImageFolder's class folder holds images).
bool is_split(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::is_directory(p, ec)) return false;
  for (const auto& e : std::filesystem::directory_iterator(p, ec))
    if (e.is_directory(ec)) return true;
  return false;
}

}  // namespace

SplitLayout find_split_layout(const DataSpec& d, const std::string& spec) {
  namespace fs = std::filesystem;
  const fs::path root(d.path);
  auto found = [&] {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec))
      if (is_split(e.path())) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s.empty() ? std::string("none: a flat folder of class folders") : s;
  };
  auto need = [&](const std::string& name, const char* key) {
    if (!is_split(root / name))
      throw Error(str("--data '", spec, "': ", key, "=", name, ": no split folder '", (root / name).string(),
                      "' holding class folders (splits found: ", found(), ")"));
    return name;
  };
  auto first = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (is_split(root / n)) return std::string(n);
    return std::string();
  };
  SplitLayout l;
  l.train = d.train_split.empty() ? first({"train", "train800val200"}) : need(d.train_split, "train");
  if (l.train.empty()) {
    if (!d.eval_split.empty()) need(d.eval_split, "eval");  // eval= on a flat folder: say what is there
    return l;
  }
  if (!d.eval_split.empty()) l.eval = need(d.eval_split, "eval");
  else if (l.train == "train800val200") l.eval = first({"test"});
  else if (l.train == "train800") l.eval = first({"val200", "test"});
  else l.eval = first({"val", "validation", "test"});
  if (l.eval == l.train) throw Error(str("--data '", spec, "': train= and eval= name the same split '", l.train, "'"));
  return l;
}

}  // namespace dg::data

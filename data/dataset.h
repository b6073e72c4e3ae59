// Datasets as the trainer sees them: images F32 [N, C, H, W] in [0, 1] and labels I64 [N].
// Readers: IDX (MNIST / Fashion-MNIST, gzip or plain; data/idx.cpp) and image folders in
// torchvision's ImageFolder layout (root/<class>/*.png|jpg|jpeg|bmp), decoded with stb_image
// (data/image_folder.cpp). Selection and splits: data/dataset.cpp. Normalisation by the
// model's mean/std happens per batch in the DataLoader (data/loader.h).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/transforms.h"

namespace dg::data {

struct ImageSet {
  Tensor images;  // F32 [N, C, H, W], values in [0, 1]
  Tensor labels;  // I64 [N]
  int64_t num_classes = 0;
  std::vector<std::string> class_names;
  int64_t skipped = 0;  // unreadable entries skipped while loading
  // Each image's source file (image folders; empty for IDX data): training's random-resized-crop
  // decodes the original again and crops it, as timm does (data/loader.h).
  std::vector<std::string> files;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// IDX files (magic 0x00000803 images u8 [n, rows, cols]; 0x00000801 labels u8 [n]), gzip or
// plain. Refused with an error naming the file: a wrong magic, a header claiming more than 1e9
// elements (before allocating), fewer data bytes than the dims need (expected vs found),
// trailing bytes, corrupt gzip data.
Tensor read_idx_images(const std::string& path);  // F32 [n, 1, rows, cols] in [0, 1]
Tensor read_idx_labels(const std::string& path);  // I64 [n]
// Fashion-MNIST from Debian's dataset-fashion-mnist (default dir /usr/share/datasets/fashion-mnist).
ImageSet load_fashion_mnist(const std::string& dir, bool train);
const char* default_fashion_mnist_dir();

// Keep only `classes` (relabelled 0..k-1 in the given order); if n > 0, a seeded subset of
// exactly n images balanced over the classes (VTAB-1k style: 1000 training images; a class
// with too few images gives its share to the others). Kept images stay in source order.
ImageSet select_classes(const ImageSet& s, const std::vector<int64_t>& classes, int64_t n = -1, uint64_t seed = 0);
// Rows idx of a set.
ImageSet subset(const ImageSet& s, const std::vector<int64_t>& idx);
// Seeded split into (train, val) with round(val_fraction * count) of each class in val.
std::pair<ImageSet, ImageSet> split(const ImageSet& s, double val_fraction, uint64_t seed);

// ImageFolder: every image converted to `channels` (1 or 3), its short side resized to size
// and the centre square kept (timm's eval transform with crop_pct 1, bilinear). Classes are the sorted folder names, files are read in sorted order.
// Unreadable images are reported on stderr by path and skipped (counted in `skipped`), as are
// images over 8192 x 8192 pixels, dangling symlinks, and entries with an image extension that
// are not regular files; no class folders, or a class folder without (readable) images, is an
// error naming it.
ImageSet load_image_folder(const std::string& root, int64_t size, int64_t channels);
// The same with timm's eval geometry (short side resized by crop_pct, centre crop; transforms.h).
// With `known_classes` (another split's classes), every class folder must be one of them and
// labels index into them: a val split may lack a class of the training split.
ImageSet load_image_folder(const std::string& root, int64_t channels, const EvalGeometry& g,
                           const std::vector<std::string>& known_classes = {});

// The class folder names of an ImageFolder root, sorted (its labels 0..k-1), without reading images.
std::vector<std::string> class_folders(const std::string& root);

// The file name ends in .png, .jpg, .jpeg or .bmp (any case): the files the loaders read.
bool has_image_file_name(const std::string& path);

// One decoded image: interleaved u8 [h, w, channels].
struct DecodedImage {
  std::vector<uint8_t> pixels;
  int64_t h = 0, w = 0, channels = 0;
};
// Decode a PNG, JPEG or BMP file to `channels` (1 or 3): "" when done, else why it cannot be
// read (the folder loader skips such files). Out of memory throws OutOfMemory.
std::string decode_image(const std::string& path, int64_t channels, DecodedImage& out);
// One image with the eval geometry: F32 [channels, size, size] in [0, 1]; an unreadable file
// throws, naming it and why.
Tensor load_image(const std::string& path, int64_t channels, const EvalGeometry& g);
// Bilinear resize (align_corners = false) of an interleaved u8 image src [h, w, channels]
// to planar floats dst [channels, out_h, out_w] in [0, 1].
void resize_bilinear(const uint8_t* src, int64_t h, int64_t w, int64_t channels, int64_t out_h, int64_t out_w,
                     float* dst);

// Parse a --data spec: "fashion-mnist[:classes=5-9][:n=1000][:dir=PATH]" or a folder path
// "root[:val=0.1][:n=1000][:train=NAME][:eval=NAME]". Checked in full before anything is loaded,
// each refusal naming the spec: unknown or repeated keys, keys of the other kind, classes=A-B
// reversed or outside 0-9, n < 1 or not a whole number, val outside [0, 1).
constexpr int64_t kFashionMnistClasses = 10;
struct DataSpec {
  std::string kind = "fashion-mnist";  // or "folder"
  std::string path;
  std::vector<int64_t> classes;  // empty: all
  int64_t n = -1;                // training subset size (-1: all)
  double val_fraction = 0.1;     // flat folders: the held-out split (0: every image is evaluated)
  bool val_given = false;        // val= was in the spec
  std::string train_split, eval_split;  // folders of splits: the subfolders named by train= / eval=
};
DataSpec parse_data_spec(const std::string& spec);

// A folder of splits, as researchers keep datasets: root/train with root/val and/or root/test
// beside it, or VTAB-1k's root/train800val200, train800, val200 and test; each split holds class
// folders. Defaults: train on train (else train800val200), evaluate on val (else test); VTAB-1k
// evaluates train800val200 on test and train800 on val200. train= and eval= name others.
// `train` is empty for a flat ImageFolder (root/<class>/...). Throws, listing the splits found,
// when train= or eval= names a split that does not exist.
struct SplitLayout {
  std::string train, eval;  // subfolder names; eval empty: none found (hold out from train)
};
SplitLayout find_split_layout(const DataSpec& d, const std::string& spec);

}  // namespace dg::data

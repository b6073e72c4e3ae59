// Bad input and exhausted memory as a careless user meets them (issue 14, items 8-12): each ends
// in one printable line that names the file, tensor or option, with exit code 2 (bad input) or 3
// (out of memory), never in a hang. CLI runs are child processes killed after a timeout, so a
// regression to a hang fails a check instead of stalling the suite. DG_CLI=path runs them against
// another build of the CLI.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <stb_image_write.h>
#include <zlib.h>

#include "core/safetensors.h"
#include "core/user_files.h"
#include "data/dataset.h"
#include "nn/vit_config.h"
#include "peft/config.h"
#include "tests/test_util.h"
#include "train/trainer.h"

using namespace dg;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

fs::path tmpdir(const std::string& name) { return test::fresh_dir("cli_inputs", name); }

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct CliRun {
  int code = -1;  // exit status, or 128 + signal
  bool timed_out = false;
  std::string out, err;
};

// Runs the CLI with `args` in a child process (stdout and stderr to files), with an address-space
// limit when `as_limit` > 0 (bytes), killed after `timeout_s` seconds.
CliRun run_cli(const std::vector<std::string>& args, double timeout_s = 120, uint64_t as_limit = 0) {
  static int runs = 0;
  const fs::path dir = tmpdir("run" + std::to_string(runs++));
  const std::string out = (dir / "out").string(), err = (dir / "err").string();
  const char* env = std::getenv("DG_CLI");
  std::vector<std::string> all{env ? env : DG_BUILD_DIR "/tools/deltagrad"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the child: async-signal-safe calls only, then exec
    if (as_limit > 0) {
      const struct rlimit rl = {as_limit, as_limit};
      ::setrlimit(RLIMIT_AS, &rl);
    }
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1), ::dup2(e, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  CliRun r;
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    ::usleep(20000);
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out), r.err = read_text(err);
  fs::remove_all(dir);
  return r;
}

// One line of printable ASCII (the messages here quote no legitimate non-ASCII text).
bool one_printable_line(const std::string& s) {
  if (s.empty() || s.back() != '\n') return false;
  for (size_t i = 0; i + 1 < s.size(); ++i)
    if (static_cast<unsigned char>(s[i]) < 0x20 || static_cast<unsigned char>(s[i]) > 0x7e) return false;
  return true;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
doctest::Contains has(const std::string& part) { return doctest::Contains(part.c_str()); }

// A small gray image folder (classes a and b, `per_class` 8x8 PNGs each) and a ViT config for it.
fs::path make_folder(const fs::path& root, int per_class = 4, const std::vector<std::string>& classes = {"a", "b"}) {
  for (size_t k = 0; k < classes.size(); ++k) {
    fs::create_directories(root / classes[k]);
    for (int i = 0; i < per_class; ++i) {
      std::vector<unsigned char> px(64, static_cast<unsigned char>(40 + 150 * k + 5 * i));
      REQUIRE(stbi_write_png((root / classes[k] / (std::to_string(i) + ".png")).string().c_str(), 8, 8, 1, px.data(), 8));
    }
  }
  return root;
}
fs::path write_model_config(const fs::path& p) {
  std::ofstream(p) << json{{"img_size", 8}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16}, {"depth", 1},
                           {"num_heads", 2}, {"num_classes", 2}, {"mean", {0.5}}, {"std", {0.5}}}
                          .dump();
  return p;
}

fs::path write_peft_config(const fs::path& p) {
  std::ofstream(p) << R"({"deltas": [{"name": "lora", "method": "lora", "r": 2}], "trainable": ["head.*"]})";
  return p;
}

// What load_image_folder writes to stderr (the entries it skips, and why).
std::string folder_warnings(const fs::path& root, data::ImageSet& s) {
  const fs::path err = root.parent_path() / "stderr.txt";
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(fd, 2);
  ::close(fd);
  try {
    s = data::load_image_folder(root.string(), 8, 1);
  } catch (...) {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    throw;
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  return read_text(err);
}

}  // namespace

TEST_CASE("cli inputs: out of memory under an address-space limit is one clear line and exit code 3, never a hang") {
  if (kAddressSanitizer) {
    test::skip("AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be tested under it");
    return;
  }
  // OpenBLAS retried a failed mmap of its work buffer forever (ulimit -v 1000000 spun at 100% CPU).
  // Where a limit lands depends on the libraries this build maps and the core count, so limits
  // climb in 64 MiB steps until training fits: every step below must fail fast and clearly, and at
  // least one must get as far as our code running out of memory.
  const fs::path d = tmpdir("oom");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string peft = write_peft_config(d / "peft.json").string();
  int out_of_memory = 0;
  bool trained = false;
  for (uint64_t mib = 256; mib <= 8192 && !trained; mib += 64) {
    CAPTURE(mib);
    const CliRun r = run_cli({"train", "--model-config", model, "--peft", peft, "--data", folder + ":val=0.25", "--batch", "8",
                              "--epochs", "1", "--quiet", "--out", (d / ("run" + std::to_string(mib))).string()},
                             120, mib << 20);
    CAPTURE(r.err);
    REQUIRE(!r.timed_out);
    if (r.code == 0) {
      trained = true;
    } else if (r.code == 127 && contains(r.err, "error while loading shared libraries")) {
      continue;  // the dynamic loader could not map a library: before any of our code ran
    } else {
      ++out_of_memory;
      REQUIRE(r.code == 3);
      CHECK(contains(r.err, "deltagrad train: out of memory"));
      // and it names what was being allocated
      CHECK((contains(r.err, "tensor of shape") || contains(r.err, "OpenBLAS's work buffers") ||
             contains(r.err, "a C++ allocation") || contains(r.err, "decoding image") || contains(r.err, "image folder")));
    }
  }
  CHECK(trained);
  CHECK(out_of_memory >= 1);
  fs::remove_all(d);
}

TEST_CASE("cli inputs: a tensor too large for memory is named with its shape and size") {
  // 2^62 bytes cannot be allocated anywhere: the message says which tensor was asked for. (ASan
  // stops the process on such a request instead of failing it.)
  if (!kAddressSanitizer)
    CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 30, int64_t(1) << 30}),
                       has("allocating a f32 tensor of shape [1073741824, 1073741824] (4398046511104.0 MiB)"),
                       OutOfMemory);
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 40, int64_t(1) << 40}),
                       has("more bytes than an address space holds"), OutOfMemory);
}

TEST_CASE("cli inputs: a FIFO, a directory or a missing file given as a config is refused by name, without blocking") {
  const fs::path d = tmpdir("fifo");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string fifo = (d / "pipe.json").string(), dir = (d / "adir").string(), missing = (d / "none.json").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  fs::create_directories(dir);
  fs::create_directories(d / "resume_fifo");
  REQUIRE(::mkfifo((d / "resume_fifo" / "run_config.json").c_str(), 0644) == 0);
  const std::string data = folder, out = (d / "run").string();
  struct Case {
    std::vector<std::string> args;  // after "train"
    std::string path, says;
  };
  const std::vector<Case> cases = {
      {{"--model-config", model, "--peft", fifo, "--data", data, "--out", out}, fifo, "not a regular file (a FIFO)"},
      {{"--model-config", fifo, "--data", data, "--out", out}, fifo, "not a regular file (a FIFO)"},
      {{"--config", fifo}, fifo, "not a regular file (a FIFO)"},
      {{"--resume", (d / "resume_fifo").string()}, (d / "resume_fifo" / "run_config.json").string(), "(a FIFO)"},
      {{"--model-config", model, "--peft", dir, "--data", data, "--out", out}, dir, "not a regular file (a directory)"},
      {{"--model-config", dir, "--data", data, "--out", out}, dir, "not a regular file (a directory)"},
      {{"--config", dir}, dir, "not a regular file (a directory)"},
      {{"--model-config", model, "--peft", missing, "--data", data, "--out", out}, missing, "no such file"},
      {{"--config", missing}, missing, "no such file"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"train"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CAPTURE(c.path);
    const CliRun r = run_cli(args, 60);
    CAPTURE(r.err);
    REQUIRE(!r.timed_out);  // open() on a FIFO used to wait for a writer forever
    CHECK(r.code == 2);
    CHECK(one_printable_line(r.err));
    CHECK(contains(r.err, "'" + c.path + "'"));
    CHECK(contains(r.err, c.says));
  }
  // The library readers themselves, one by one: the same refusal, naming what the file was for.
  CHECK_THROWS_WITH_AS(peft::load_peft_config(dir), has("peft config '" + dir + "': not a regular file"), Error);
  CHECK_THROWS_WITH_AS(nn::load_vit_config(dir), has("model config '" + dir + "': not a regular file"), Error);
  CHECK_THROWS_WITH_AS(load_safetensors(fifo), has("'" + fifo + "': not a regular file (a FIFO)"), Error);
  CHECK_THROWS_WITH_AS(read_json_file(fifo, "run config"), has("run config '" + fifo + "'"), Error);
  CHECK_THROWS_WITH_AS(check_regular_file(missing, "IDX file"), has("IDX file '" + missing + "': no such file"),
                       Error);
  fs::remove_all(d);
}

TEST_CASE("cli inputs: printable() escapes control bytes and broken UTF-8 and keeps valid text") {
  CHECK(printable("plain text, 100%") == "plain text, 100%");
  CHECK(printable("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(printable(std::string("a\0b", 3)) == "a\\x00b");
  CHECK(printable("\x1b[31mred\n\t") == "\\x1b[31mred\\n\\t");
  CHECK(printable("\x89PNG\xff") == "\\x89PNG\\xff");
  CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");                 // overlong '/'
  CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");        // a UTF-16 surrogate
  CHECK(printable("\xe2\x82") == "\\xe2\\x82");                 // cut short
  CHECK(printable("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  CHECK(printable("\x7f") == "\\x7f");
}

TEST_CASE("cli inputs: a config or checkpoint of binary garbage gives one printable line naming the file") {
  const fs::path d = tmpdir("garbage");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string garbage = "{\"deltas\": \x89\xff\xfe\x1b[2J\x01\n\x80 PNG";
  const std::string bad_json = (d / "bad.json").string(), bad_st = (d / "bad.safetensors").string();
  std::ofstream(bad_json, std::ios::binary) << garbage;
  // a safetensors file whose JSON header holds bytes that are not UTF-8
  const std::string header = "{\"w\xff\x1b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
  std::string st(8, '\0');
  for (int i = 0; i < 8; ++i) st[size_t(i)] = char((header.size() >> (8 * i)) & 0xff);
  std::ofstream(bad_st, std::ios::binary) << st + header + std::string(4, '\0');
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"train", "--model-config", model, "--peft", bad_json, "--data", folder}, bad_json},
      {{"train", "--model-config", bad_json, "--data", folder}, bad_json},
      {{"train", "--config", bad_json}, bad_json},
      {{"inspect", bad_st}, bad_st},
  };
  for (const auto& [args, file] : cases) {
    CAPTURE(file);
    const CliRun r = run_cli(args, 60);
    CAPTURE(printable(r.err));
    REQUIRE(!r.timed_out);
    CHECK(r.code == 2);
    CHECK(one_printable_line(r.err));  // no raw bytes, no terminal escapes, no broken lines
    CHECK(contains(r.err, file));
  }
  fs::remove_all(d);
}

TEST_CASE("cli inputs: data specs are checked in full before anything loads, naming the spec") {
  using data::parse_data_spec;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"fashion-mnist:classes=9-5", "'fashion-mnist:classes=9-5': classes=9-5 is a reversed range"},
      {"fashion-mnist:classes=0-99999999999", "classes=0-99999999999: Fashion-MNIST has classes 0-9"},
      {"fashion-mnist:classes=0-10", "Fashion-MNIST has classes 0-9"},
      {"fashion-mnist:classes=a-b", "classes='a-b': expected A-B"},
      {"fashion-mnist:classes=-1-3", "expected A-B"},
      {"fashion-mnist:classes=5", "expected A-B"},
      {"fashion-mnist:n=0", "n=0: expected a whole number of images >= 1"},
      {"fashion-mnist:n=-5", "n=-5: expected a whole number"},
      {"fashion-mnist:n=1.5", "n=1.5: expected a whole number"},
      {"fashion-mnist:n=10:n=20", "'n' is given twice"},
      {"fashion-mnist:val=0.1", "unknown key 'val' for fashion-mnist"},
      {"fashion-mnist:size=3", "unknown key 'size' for fashion-mnist"},
      {"fashion-mnist:classes", "'classes' is not key=value"},
      {"root:val=0", "'root:val=0': val=0: expected the held-out fraction, a number strictly between 0 and 1"},
      {"root:val=1", "val=1: expected the held-out fraction"},
      {"root:val=-0.2", "val=-0.2: expected"},
      {"root:val=0.1x", "val=0.1x: expected"},
      {"root:val=nan", "val=nan: expected"},
      {"root:classes=0-3", "unknown key 'classes' for an image folder"},
      {"", "--data: empty spec"},
  };
  for (const auto& [spec, says] : bad) {
    CAPTURE(spec);
    CHECK_THROWS_WITH_AS(parse_data_spec(spec), has(says), Error);
  }
  data::DataSpec s = parse_data_spec("fashion-mnist:classes=5-9:n=1000");
  CHECK(s.classes == std::vector<int64_t>{5, 6, 7, 8, 9});
  CHECK(s.n == 1000);
  s = parse_data_spec("some/folder:val=0.2:n=10");
  CHECK(s.kind == "folder");
  CHECK(s.path == "some/folder");
  CHECK(s.val_fraction == 0.2);
  CHECK(s.n == 10);

  // A folder whose share for validation rounds to no image at all: refused now, not after an epoch.
  const fs::path d = tmpdir("spec");
  const fs::path folder = make_folder(d / "imgs", 2);
  const nn::ViTConfig mc = nn::load_vit_config(write_model_config(d / "model.json").string());
  CHECK_THROWS_WITH_AS(train::load_data(folder.string() + ":val=0.1", mc, 0),
                       has("holding out 0.1 of 4 images leaves no validation image"), Error);
  auto [tr, va] = train::load_data(folder.string() + ":val=0.5", mc, 0);
  CHECK(tr.size() == 2);
  CHECK(va.size() == 2);
  fs::remove_all(d);
}

TEST_CASE("cli inputs: a one-class dataset is refused for training, naming the folder") {
  const fs::path d = tmpdir("oneclass");
  const fs::path folder = make_folder(d / "imgs", 4, {"only"});
  const nn::ViTConfig mc = nn::load_vit_config(write_model_config(d / "model.json").string());
  CHECK_THROWS_WITH_AS(train::load_data(folder.string(), mc, 0),
                       has("image folder '" + folder.string() + "' has 1 class; training and evaluation need at least 2"),
                       Error);
  // a one-class selection of Fashion-MNIST, refused before its files are read
  CHECK_THROWS_WITH_AS(train::load_data("fashion-mnist:classes=3-3:dir=/nonexistent", mc, 0),
                       has("the selection has 1 class"), Error);
  fs::remove_all(d);
}

TEST_CASE("cli inputs: model config values out of range are refused naming the key and the range") {
  const std::vector<std::tuple<std::string, json, std::string>> bad = {
      {"mlp_ratio", -1, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 0, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 1e9, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 0.001, "key 'mlp_ratio' must be in (0, 64] with embed_dim * mlp_ratio >= 1"},
      {"norm_eps", 0, "key 'norm_eps' must be in (0, 1]"},
      {"norm_eps", -1e-6, "key 'norm_eps' must be in (0, 1]"},
      {"drop_rate", 1, "key 'drop_rate' must be a probability in [0, 1)"},
      {"attn_drop_rate", -0.1, "key 'attn_drop_rate' must be a probability in [0, 1)"},
      {"drop_path_rate", 2, "key 'drop_path_rate' must be a probability in [0, 1)"},
      {"init_values", -1, "key 'init_values' must be finite and >= 0"},
      {"std", json::array({0.0}), "key 'std' must be finite and > 0 in every channel, got 0"},
      {"depth", 0, "key 'depth' must be at least 1, got 0"},
      {"embed_dim", 0, "key 'embed_dim' must be at least 1"},
      {"img_size", 8192, "key 'img_size' must be at most 4096"},
  };
  for (const auto& [key, value, says] : bad) {
    CAPTURE(key);
    json j = {{"img_size", 8}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16}, {"depth", 1},
              {"num_heads", 2}, {"num_classes", 2}, {"mean", {0.5}}, {"std", {0.5}}};
    j[key] = value;
    CHECK_THROWS_WITH_AS(nn::vit_config_from_json(j, "model config 'm.json'"),
                         has("model config 'm.json': " + says), Error);
  }
}

TEST_CASE("cli inputs: negative or fractional integer options are usage errors, in options and run configs") {
  const fs::path d = tmpdir("ints");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string peft = write_peft_config(d / "peft.json").string();  // all else valid: only the option is wrong
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--seed", "-1"}, "option --seed: '-1' is not a whole number >= 0"},
      {{"--seed", "1.5"}, "option --seed: '1.5' is not a whole number"},
      {{"--seed", "1e3"}, "option --seed: '1e3' is not a whole number"},
      {{"--epochs", "1.5"}, "option --epochs: '1.5' is not a whole number >= 1"},
      {{"--batch", "0"}, "option --batch: '0' is not a whole number >= 1"},
      {{"--warmup", "-3"}, "option --warmup: '-3' is not a whole number >= 0"},
  };
  for (const auto& [opt, says] : cases) {
    CAPTURE(opt[0]);
    std::vector<std::string> args = {"train", "--model-config", model, "--peft", peft, "--data", folder + ":val=0.25", "--quiet",
                                     "--out", (d / "run").string()};
    args.insert(args.end(), opt.begin(), opt.end());
    const CliRun r = run_cli(args, 60);
    CAPTURE(r.err);
    REQUIRE(!r.timed_out);
    CHECK(r.code == 2);
    CHECK(contains(r.err, says));
  }
  CHECK_THROWS_WITH_AS(train::run_config_from_json(json{{"seed", -1}}),
                       has("run config: key 'seed' must be a whole number >= 0, got -1"), Error);
  CHECK_THROWS_WITH_AS(train::run_config_from_json(json{{"warmup_steps", -5}}),
                       has("key 'warmup_steps' must be a whole number >= 0"), Error);
  CHECK(train::run_config_from_json(json{{"seed", 7}}).seed == 7);
  CHECK_THROWS_WITH_AS(
      peft::parse_peft_config(json{{"masks", {{{"tensor", "head.weight"}, {"density", 0.5}, {"seed", -1}}}}}),
      has("key 'seed' must be >= 0, got -1"), Error);
  fs::remove_all(d);
}

namespace {
// A valid PNG of w x h black RGB pixels, built without holding its 3 w h bytes: each row is deflated
// with a full flush, which resets the compressor, so one row's blocks repeated h times are the
// stream of h rows; the Adler-32 of all rows is combined from one row's.
std::string black_png(uint32_t w, uint32_t h) {
  auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  auto chunk = [&](const std::string& type, const std::string& data) {
    const uLong crc = crc32(crc32(0, reinterpret_cast<const Bytef*>(type.data()), uInt(type.size())),
                            reinterpret_cast<const Bytef*>(data.data()), uInt(data.size()));
    return be32(uint32_t(data.size())) + type + data + be32(uint32_t(crc));
  };
  std::vector<Bytef> row(size_t(3) * w + 1, 0), buf(compressBound(uLong(row.size())) + 64);  // filter 0, then pixels
  z_stream z{};
  REQUIRE(deflateInit(&z, 9) == Z_OK);
  auto pump = [&](Bytef* in, size_t n, int flush) {
    z.next_in = in, z.avail_in = uInt(n), z.next_out = buf.data(), z.avail_out = uInt(buf.size());
    REQUIRE(deflate(&z, flush) != Z_STREAM_ERROR);
    REQUIRE(z.avail_in == 0);
    return std::string(buf.begin(), buf.begin() + long(buf.size() - z.avail_out));
  };
  const std::string first = pump(row.data(), row.size(), Z_FULL_FLUSH);  // the 2-byte zlib header + row 1
  const std::string again = pump(row.data(), row.size(), Z_FULL_FLUSH);  // any later row
  std::string tail = pump(nullptr, 0, Z_FINISH);                          // an empty last block + Adler-32
  deflateEnd(&z);
  const uLong row_adler = adler32(1, row.data(), uInt(row.size()));
  uLong adler = row_adler;
  for (uint32_t i = 1; i < h; ++i) adler = adler32_combine(adler, row_adler, z_off_t(row.size()));
  std::string idat = first;
  for (uint32_t i = 1; i < h; ++i) idat += again;
  idat += tail.substr(0, tail.size() - 4) + be32(uint32_t(adler));
  const std::string ihdr = be32(w) + be32(h) + std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  return "\x89PNG\r\n\x1a\n" + chunk("IHDR", ihdr) + chunk("IDAT", idat) + chunk("IEND", "");
}
}  // namespace

TEST_CASE("cli inputs: an image over the pixel limit is reported with its size and the limit") {
  const fs::path d = tmpdir("huge");
  const fs::path folder = make_folder(d / "imgs", 2);
  std::ofstream(folder / "a" / "huge.png", std::ios::binary) << black_png(20000, 20000);
  // the same way, a small one stb decodes: the construction above makes valid PNGs
  std::ofstream(folder / "b" / "small.png", std::ios::binary) << black_png(5, 3);
  data::ImageSet s;
  const std::string warnings = folder_warnings(folder, s);
  CAPTURE(warnings);
  CHECK(contains(warnings, "huge.png': 20000 x 20000 pixels is more than the limit of 67108864 pixels (8192 x 8192) per image"));
  CHECK(s.skipped == 1);
  CHECK(s.size() == 5);  // 2 + 2 made, and small.png
  fs::remove_all(d);
}

TEST_CASE("cli inputs: dangling symlinks and other unreadable entries of an image folder are reported by path") {
  const fs::path d = tmpdir("links");
  const fs::path folder = make_folder(d / "imgs", 2);
  fs::create_symlink(d / "nowhere.png", folder / "a" / "gone.png");
  fs::create_symlink(d / "nowhere", folder / "ghost_class");
  REQUIRE(::mkfifo((folder / "b" / "pipe.png").c_str(), 0644) == 0);
  fs::create_directories(folder / "b" / "folder.png" / "x");
  std::ofstream(folder / "b" / "notes.txt") << "not an image: ignored without a word";
  data::ImageSet s;
  const std::string warnings = folder_warnings(folder, s);
  CAPTURE(warnings);
  CHECK(contains(warnings, "gone.png': a dangling symbolic link"));
  CHECK(contains(warnings, "ghost_class': a dangling symbolic link"));
  CHECK(contains(warnings, "pipe.png': not a regular file (a FIFO, socket or device)"));
  CHECK(contains(warnings, "folder.png': a directory, not an image file"));
  CHECK(!contains(warnings, "notes.txt"));
  CHECK(s.skipped == 4);
  CHECK(s.size() == 4);
  CHECK(s.num_classes == 2);
  fs::remove_all(d);
}

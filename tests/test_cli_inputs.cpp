// Bad input and exhausted memory at the command line (issue 14, items 8-12): each ends in one
// printable line that names the file, tensor or option, with exit code 2 (bad input) or 3 (out of
// memory), never in a hang. CLI runs are child processes killed after a timeout, so a regression
// to a hang fails a check instead of stalling the suite. DG_CLI=path runs them against another
// build of the CLI. The library-side checks are in tests/test_input_checks.cpp.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_select.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "nn/vit_config.h"
#include "peft/config.h"
#include "tests/input_fixtures.h"
#include "train/trainer.h"

using namespace dg;
using namespace dg::test;
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

struct CliRun {
  int code = -1;  // exit status, or 128 + signal
  bool timed_out = false;
  std::string out, err;
};

// Runs the CLI with `args` in a child process (stdout and stderr to files), with an address-space
// limit when `as_limit` > 0 (bytes), killed after `timeout_s` seconds.
CliRun run_cli(const std::vector<std::string>& args, double timeout_s = 120, uint64_t as_limit = 0,
               const std::vector<std::string>& extra_env = {}) {
  static int runs = 0;
  const fs::path dir = tmpdir("run" + std::to_string(runs++));
  const std::string out = (dir / "out").string(), err = (dir / "err").string();
  const char* env = std::getenv("DG_CLI");
  std::vector<std::string> all{env ? env : DG_BUILD_DIR "/tools/deltagrad"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings(extra_env);  // NAME=value, ahead of the inherited ones
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
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
    ::execve(argv[0], argv.data(), envp.data());
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

}  // namespace

TEST_CASE("cli inputs: out of memory under an address-space limit is one clear line and exit code 3, never a hang") {
  if (kAddressSanitizer) {
    test::skip("AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be tested under it");
    return;
  }
  // OpenBLAS retried a failed mmap of its work buffer forever (ulimit -v 1000000 spun at 100% CPU).
  // Where a limit lands depends on the libraries this build maps and the core count, so limits
  // climb in small steps until training fits: every step below must fail fast and clearly, and at
  // least one must get as far as our code running out of memory.
  const fs::path d = tmpdir("oom");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string peft = write_peft_config(d / "peft.json").string();
  int out_of_memory = 0, before_main = 0;
  bool trained = false;
  // 8 MiB steps up to 1 GiB: a build without CUDA trains within 128 MiB, one with CUDA near 768, and the windows where
  // a thread or a library mapping fails first are narrow (a hang at 108-112 MiB was missed by 64 MiB steps)
  for (uint64_t mib = 64; mib <= 8192 && !trained; mib += mib < 1024 ? 8 : 64) {
    CAPTURE(mib);
    // LD_DEBUG=files: the dynamic loader says which library's constructor it calls, and
    // "transferring control" just before main, so a failure before any of our code ran is told apart
    const CliRun r = run_cli({"train", "--model-config", model, "--peft", peft, "--data", folder + ":val=0.25", "--batch", "8",
                              "--epochs", "1", "--quiet", "--out", (d / ("run" + std::to_string(mib))).string()},
                             120, mib << 20, {"LD_DEBUG=files"});
    CAPTURE(r.err.substr(r.err.size() > 2000 ? r.err.size() - 2000 : 0));
    REQUIRE(!r.timed_out);
    if (r.code == 0) {
      trained = true;
    } else if (!contains(r.err, "transferring control:")) {
      // Before main: the loader could not map a library (127), or a library's load-time
      // constructor failed (cuBLAS and cuBLASLt crash with SIGSEGV under some limits, at random
      // with address-space layout). Not our code; the last "calling init:" names the library.
      const size_t at = r.err.rfind("calling init: ");
      if (r.code >= 128)
        MESSAGE("limit ", mib, " MiB: signal ", r.code - 128, " before main",
                at == std::string::npos ? std::string() : ", in " + r.err.substr(at + 14, r.err.find('\n', at) - at - 14));
      ++before_main;
    } else {
      ++out_of_memory;
      REQUIRE(r.code == 3);
      CHECK(contains(r.err, "deltagrad train: out of memory"));
      // and it names what was being allocated
      CHECK((contains(r.err, "tensor of shape") || contains(r.err, "OpenBLAS's work buffers") ||
             contains(r.err, "a C++ allocation") || contains(r.err, "cannot start a thread") || contains(r.err, "decoding image") || contains(r.err, "image folder") ||
             contains(r.err, "encoding the PNG")));
    }
  }
  MESSAGE(before_main, " limits ended before main (loading libraries), ", out_of_memory, " in our code, cleanly");
  CHECK(trained);
  CHECK(out_of_memory >= 1);
  fs::remove_all(d);
}

TEST_CASE("cli inputs: a thread a library cannot start ends the run with one line and exit code 3, never a hang") {
  if (kAddressSanitizer) {
    test::skip("AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be tested under it");
    return;
  }
  // libgomp calls exit(1) when it cannot start a thread; the exit handlers then ran OpenBLAS's,
  // which joins threads that spin forever on a failed mapping under a memory limit (seen: a
  // train under a 108 MiB limit hung at 100% CPU). An 8 GiB OpenMP stack under a 4 GiB limit
  // makes every thread start fail, deterministically.
  const fs::path d = tmpdir("thread_start");
  const std::string folder = make_folder(d / "imgs").string(), model = write_model_config(d / "model.json").string();
  const std::string peft = write_peft_config(d / "peft.json").string();
  const CliRun r = run_cli({"train", "--model-config", model, "--peft", peft, "--data", folder + ":val=0.25", "--batch", "8",
                            "--epochs", "1", "--quiet", "--out", (d / "run").string()},
                           120, uint64_t(4) << 30, {"OMP_STACKSIZE=8G", "OMP_NUM_THREADS=2"});
  CAPTURE(r.err);
  REQUIRE(!r.timed_out);
  CHECK(r.code == 3);
  CHECK(contains(r.err, "deltagrad train: out of memory or threads: a library ended the process with status 1"));
  CHECK(contains(r.err, "cannot start a thread"));
  fs::remove_all(d);
}

TEST_CASE("cli inputs: OpenBLAS is opened when a product needs it, not linked to start before main") {
  // Linked, libopenblas started its thread pool in its load-time constructor: under a memory
  // limit a build without CUDA died before main (SIGINT from OpenBLAS at 86-92 MiB, an abort in
  // static initialisation at 94-140 MiB). Now it is opened by dlopen when a product needs it.
  if (!cpu::have_openblas()) {
    test::skip("OpenBLAS is not built in or cannot be opened here: " + cpu::openblas_load_error());
    return;
  }
  // LD_DEBUG=libs makes the dynamic loader name every library it loads, dlopen included.
  const CliRun help = run_cli({"--help"}, 60, 0, {"LD_DEBUG=libs"});
  REQUIRE(help.code == 0);
  CHECK(contains(help.err, "libstdc++"));  // the loader's trace is there...
  CHECK(!contains(help.err, "libopenblas"));  // ...and OpenBLAS is not in it
  const CliRun version = run_cli({"--version"}, 60, 0, {"LD_DEBUG=libs", "DG_CPU_GEMM=openblas"});
  REQUIRE(version.code == 0);
  CHECK(contains(version.err, "libopenblas"));  // opened for the products and its kernel name
  CHECK(contains(version.out, "OpenBLAS core: "));
  CHECK(contains(version.out, "CPU GEMM: openblas"));
}

TEST_CASE("cli inputs: --version with the GEMM choice cached opens no OpenBLAS where it is not the choice") {
  // The cache key names OpenBLAS by its file (openblas_file_identity), so a process whose cached
  // choice is another library never opens it (it cost 2.3 MB of RSS only to read its version).
  if (cpu::openblas_file_identity().empty()) {
    test::skip("no libopenblas.so.0 in the usual directories: the key cannot name it without loading it");
    return;
  }
  const fs::path d = tmpdir("cached_choice");
  const std::string lib = cpu::have_onednn() ? "onednn" : "eigen";  // not OpenBLAS
#ifdef _OPENMP
  const std::string threads = std::to_string(omp_get_max_threads());
#else
  const std::string threads = "1";
#endif
  const std::string cache = (d / "deltagrad" / "cpu_gemm.tsv").string();
  // the child's key is this process's: same CPU, libraries and (set below) thread count
  REQUIRE(cpu::write_gemm_cache(cache, cpu::gemm_cache_key(), {lib + ";" + lib + "," + lib + "," + lib + "," + lib, "test"}));
  const std::vector<std::string> env{"LD_DEBUG=libs", "XDG_CACHE_HOME=" + d.string(), "OMP_NUM_THREADS=" + threads};
  const CliRun version = run_cli({"--version"}, 60, 0, env);
  CAPTURE(version.out);
  REQUIRE(version.code == 0);
  CHECK(contains(version.out, "CPU GEMM: " + lib + " (cached in"));  // the cached entry was the one read...
  CHECK(contains(version.err, "libstdc++"));                         // ...the loader's trace is there...
  CHECK(!contains(version.err, "libopenblas"));                      // ...and OpenBLAS is not in it
  CHECK(contains(version.out, "OpenBLAS: not loaded (not chosen for any product): OpenBLAS file "));
  // forced to OpenBLAS, the same cache directory opens it (the trace would show it)
  const std::vector<std::string> forced{"LD_DEBUG=libs", "XDG_CACHE_HOME=" + d.string(), "DG_CPU_GEMM=openblas"};
  if (cpu::have_openblas()) CHECK(contains(run_cli({"--version"}, 60, 0, forced).err, "libopenblas"));
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
  // ... and a valid file whose tensor name and metadata hold terminal escapes: inspect prints them escaped
  const std::string escapes = (d / "escapes.safetensors").string();
  save_safetensors(escapes, {{"w\x1b[2J", Tensor::zeros({1})}}, {{"note", "\x1b[31mred\x07"}});
  const CliRun listed = run_cli({"inspect", escapes}, 60);
  CHECK(listed.code == 0);
  CHECK(contains(listed.out, "w\\x1b[2J"));
  CHECK(contains(listed.out, "metadata note = \\x1b[31mred\\x07"));
  CHECK(std::all_of(listed.out.begin(), listed.out.end(), [](char ch) { return ch == '\n' || (ch >= 0x20 && ch < 0x7f); }));
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
                       has("run config: key 'seed' must be an integer >= 0, got -1"), Error);
  CHECK_THROWS_WITH_AS(train::run_config_from_json(json{{"warmup_steps", -5}}),
                       has("key 'warmup_steps' must be an integer >= 0"), Error);
  CHECK(train::run_config_from_json(json{{"seed", 7}}).seed == 7);
  CHECK_THROWS_WITH_AS(
      peft::parse_peft_config(json{{"masks", {{{"tensor", "head.weight"}, {"density", 0.5}, {"seed", -1}}}}}),
      has("key 'seed' must be >= 0, got -1"), Error);
  fs::remove_all(d);
}

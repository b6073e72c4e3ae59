// deltagrad: the command-line front end. `deltagrad <command> --help` for each command.
//
// Exit codes: 0 done, 2 bad input (options, files, configs), 3 out of memory, 130 stopped by
// Ctrl-C. Every error is one line on stderr, escaped by dg::printable: messages quote file
// contents, and a terminal should never receive raw bytes from a corrupt file.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <system_error>

#include "core/comm.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
#include "core/error.h"
#include "peft/method_registry.h"
#include "tools/commands.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
const char* kUsage =
    "usage: deltagrad <command> [options]\n"
    "commands:\n"
    "  demo          pretrain a small ViT on Fashion-MNIST 0-4, fine-tune on 5-9 with every method, print the table\n"
    "  train         fine-tune a ViT with a PEFT config on a dataset\n"
    "  sweep         train every task x method x seed, then a table of mean +- std accuracy and a chart\n"
    "  eval          accuracy of a model (+ deltas) on a dataset\n"
    "  predict       top-k classes of images, by class name, with a delta file\n"
    "  grads         one deterministic forward/backward: logits, loss and every trainable gradient\n"
    "  cost          what one training step costs per delta: parameters, gradient, optimizer and activation bytes, FLOPs\n"
    "  sensitivity   score base weights on data (grad, taylor, fisher, magnitude, random), write the top share as masks\n"
    "  sft           LT-SFT: full fine-tune, keep the most changed weights, reset, retrain only those (a sparse delta)\n"
    "  inspect       list tensors of a checkpoint or model: shapes, dtypes, trainable or frozen\n"
    "  merge         fold mergeable deltas into the base weights (a plain timm-layout checkpoint)\n"
    "  export-peft   write a delta in Hugging Face peft's format\n"
    "  import-peft   read a Hugging Face peft adapter (LoRA, DoRA, IA3, VeRA, LoHa, LoKr) into a delta file\n"
    "  --version     version, the CPU and its vector ISA, the CPU GEMM in use and why\n";

// What a performance question needs first: which CPU, which kernels run on it, and why.
int print_version() {
  using namespace dg::cpu;
  const CpuInfo& c = cpu_info();
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif
  std::printf("deltagrad %s\n", DG_VERSION);
  std::printf("CPU: %s, %s, %d OpenMP threads\n", c.vendor.c_str(), cpu_identity(c).c_str(), threads);
  std::printf("ISA: %s\n", isa_summary(c).c_str());
  std::printf("GEMM libraries: %s\n", gemm_library_versions().c_str());
  const std::string lib = gemm_library();  // settles the choice (may calibrate, well under a second)
  std::printf("CPU GEMM: %s (%s)\n", lib.c_str(), gemm_choice_reason().c_str());
  std::printf("bf16 GEMM: %s\n", bf16_gemm_kind().c_str());
  // OpenBLAS is opened for its kernel name only where it runs products (else the key named its file)
  if (gemm_uses_openblas() && have_openblas()) {
    const std::string core = openblas_corename(), warn = openblas_kernel_warning(core, c.avx2, c.avx512f);
    std::printf("OpenBLAS core: %s%s%s\n", core.c_str(), warn.empty() ? "" : " -- warning: ", warn.c_str());
  } else if (!gemm_uses_openblas() && !openblas_file_identity().empty()) {
    std::printf("OpenBLAS: not loaded (not chosen for any product): %s\n", openblas_file_identity().c_str());
  } else if (openblas_load_error() != "built without OpenBLAS") {
    std::printf("OpenBLAS: not used: %s\n", openblas_load_error().c_str());
  }
  return 0;
}

constexpr int kExitBadInput = 2, kExitOutOfMemory = 3;
std::string g_cmd = "?";

void report(const std::string& msg) { std::fprintf(stderr, "deltagrad %s: %s\n", g_cmd.c_str(), dg::printable(msg).c_str()); }

// Out of memory ends with _exit: a library's exit handler may wait for threads stuck on a failed
// mapping (OpenBLAS's did, when it was linked and ran its own pool), so a normal exit after
// running out of memory could hang there. Nothing else is left to flush.
[[noreturn]] void exit_out_of_memory() {
  std::fflush(nullptr);
  ::_exit(kExitOutOfMemory);
}

// A library that ends the process itself (libgomp calls exit(1) when it cannot start a thread,
// e.g. its stack cannot be mapped under a memory limit) would run the exit handlers, where
// OpenBLAS joins server threads that may spin forever on a failed mapping: a hang, after a line
// that does not say which command failed. So an exit() that is not ours ends here: one line,
// exit code 3 (the normal end of main() is _exit and never comes here).
#if !defined(__SANITIZE_ADDRESS__)
void on_library_exit(int status, void*) {
  if (status != 0)
    std::fprintf(stderr,
                 "deltagrad %s: out of memory or threads: a library ended the process with status %d (its message is "
                 "above; libgomp does so when it cannot start a thread)\n",
                 g_cmd.c_str(), status);
  std::fflush(nullptr);
  ::_exit(status == 0 ? 0 : kExitOutOfMemory);
}
#endif

// An exception that escapes where it cannot be caught (an OpenMP parallel region, a noexcept
// function) ends in std::terminate: still one line and an exit code, not an abort's core dump.
// Memory may be exhausted here, so this line is written without allocating (bytes outside
// printable ASCII as \xNN).
void put_escaped(const char* s) {
  for (; *s; ++s) {
    const auto b = static_cast<unsigned char>(*s);
    if (b >= 0x20 && b < 0x7f) std::fputc(b, stderr);
    else std::fprintf(stderr, "\\x%02x", b);
  }
}
[[noreturn]] void on_terminate() {
  int code = 1;
  std::fprintf(stderr, "deltagrad %s: ", g_cmd.c_str());
  try {
    if (std::exception_ptr e = std::current_exception()) std::rethrow_exception(e);
    std::fputs("internal error: terminate without an exception", stderr);
  } catch (const dg::OutOfMemory& e) {
    std::fputs("out of memory: ", stderr), put_escaped(e.what()), code = kExitOutOfMemory;
  } catch (const std::bad_alloc&) {
    std::fputs("out of memory (a C++ allocation failed)", stderr), code = kExitOutOfMemory;
  } catch (const std::exception& e) {
    std::fputs("internal error: ", stderr), put_escaped(e.what());
  } catch (...) {
    std::fputs("internal error: unknown exception", stderr);
  }
  std::fputc('\n', stderr);
  std::fflush(nullptr);
  ::_exit(code);
}
}  // namespace

namespace {
int run(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    FILE* out = argc < 2 ? stderr : stdout;
    std::fputs(kUsage, out);
    std::fputs("PEFT methods (a delta's \"method\" in the --peft config):\n", out);
    for (const dg::peft::MethodDef* m : dg::peft::all_methods())
      std::fprintf(out, "  %-13s %s\n", m->name.c_str(), m->summary.c_str());
    return argc < 2 ? kExitBadInput : 0;
  }
  const std::string cmd = g_cmd = argv[1];
  std::set_terminate(on_terminate);
  try {
    if (cmd == "--version" || cmd == "version") return print_version();
    if (cmd == "train") return dg::cli::cmd_train(argc, argv);
    if (cmd == "eval") return dg::cli::cmd_eval(argc, argv);
    if (cmd == "grads") return dg::cli::cmd_grads(argc, argv);
    if (cmd == "inspect") return dg::cli::cmd_inspect(argc, argv);
    if (cmd == "merge") return dg::cli::cmd_merge(argc, argv);
    if (cmd == "export-peft") return dg::cli::cmd_export_peft(argc, argv);
    if (cmd == "import-peft") return dg::cli::cmd_import_peft(argc, argv);
    if (cmd == "demo") return dg::cli::cmd_demo(argc, argv);
    if (cmd == "predict") return dg::cli::cmd_predict(argc, argv);
    if (cmd == "sweep") return dg::cli::cmd_sweep(argc, argv);
    if (cmd == "cost") return dg::cli::cmd_cost(argc, argv);
    if (cmd == "sensitivity") return dg::cli::cmd_sensitivity(argc, argv);
    if (cmd == "sft") return dg::cli::cmd_sft(argc, argv);
    std::fprintf(stderr, "deltagrad: unknown command '%s' (see deltagrad --help)\n", dg::printable(cmd).c_str());
    return kExitBadInput;
  } catch (const dg::cli::UsageError& e) {
    report(std::string(e.what()) + " (see deltagrad " + cmd + " --help)");
    return kExitBadInput;
  } catch (const dg::OutOfMemory& e) {
    report(std::string("out of memory: ") + e.what());
    exit_out_of_memory();
  } catch (const std::bad_alloc&) {
    report("out of memory (a C++ allocation failed; a smaller --batch or model needs less)");
    exit_out_of_memory();
  } catch (const std::system_error& e) {
    // a thread that cannot start (its stack cannot be mapped) under a memory limit: out of memory
    if (e.code() != std::errc::resource_unavailable_try_again) {
      report(e.what());
      return kExitBadInput;
    }
    report(std::string("out of memory: cannot start a thread (") + e.what() + ")");
    exit_out_of_memory();
  } catch (const std::exception& e) {
    report(e.what());
    return kExitBadInput;
  }
}
}  // namespace

int main(int argc, char** argv) {
#if !defined(__SANITIZE_ADDRESS__)
  ::on_exit(on_library_exit, nullptr);
#endif
  const int code = run(argc, argv);
  // Data parallel (train under mpirun): a rank that failed (its message is printed) ends every
  // rank, which may be waiting in a collective for it; a clean end finalises MPI on each rank.
  if (dg::Comm* w = dg::world_if_started(); w && w->size() > 1 && code != 0 && code != 130)
    w->abort_all(dg::str("deltagrad ", g_cmd, ": rank ", w->rank(), " failed (exit status ", code, ")"), code);
  dg::finalize_world();
#if defined(__SANITIZE_ADDRESS__)
  return code;  // LeakSanitizer checks at a normal exit (and no memory limit runs under ASan)
#else
  // Not a normal exit: under a memory limit OpenBLAS's server threads, started when the library
  // loads, may spin forever on a failed mapping of their buffers (when OpenBLAS is not the GEMM in
  // use, nothing reserved them), and its exit handler joins them. Every file is written and closed
  // by now; stdio is flushed here.
  std::fflush(nullptr);
  ::_exit(code);
#endif
}

// deltagrad: the command-line front end. `deltagrad <command> --help` for each command.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
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
    "  eval          accuracy of a model (+ deltas) on a dataset\n"
    "  grads         one deterministic forward/backward: logits, loss and every trainable gradient\n"
    "  inspect       list tensors of a checkpoint or model: shapes, dtypes, trainable or frozen\n"
    "  merge         fold LoRA deltas into the base weights (a plain timm-layout checkpoint)\n"
    "  export-peft   write LoRA deltas in Hugging Face peft's format\n"
    "  import-peft   read a Hugging Face peft LoRA into a deltagrad delta file\n"
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
  if (have_openblas()) {
    const std::string core = openblas_corename(), warn = openblas_kernel_warning(core, c.avx2, c.avx512f);
    std::printf("OpenBLAS core: %s%s%s\n", core.c_str(), warn.empty() ? "" : " -- warning: ", warn.c_str());
  }
  return 0;
}
}

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
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
    std::fprintf(stderr, "deltagrad: unknown command '%s' (see deltagrad --help)\n", cmd.c_str());
    return 2;
  } catch (const dg::cli::UsageError& e) {
    std::fprintf(stderr, "deltagrad %s: %s (see deltagrad %s --help)\n", cmd.c_str(), e.what(), cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltagrad %s: %s\n", cmd.c_str(), e.what());
    return 2;
  }
}

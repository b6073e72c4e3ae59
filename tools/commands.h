// The `deltagrad` commands; each returns the process exit code.
#pragma once
#include "tools/args.h"

namespace dg::cli {

// Prints `text` and returns true when the options ask for --help / -h.
bool wants_help(int argc, char** argv, const char* text);

int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_grads(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_merge(int argc, char** argv);
int cmd_export_peft(int argc, char** argv);
int cmd_import_peft(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_predict(int argc, char** argv);  // tools/predict.cpp
int cmd_sweep(int argc, char** argv);    // tools/sweep.cpp
int cmd_cost(int argc, char** argv);     // tools/cost.cpp
int cmd_sensitivity(int argc, char** argv);  // tools/sensitivity.cpp
int cmd_sft(int argc, char** argv);          // tools/sft.cpp

}  // namespace dg::cli

// The model a command runs, from its options: the model config (--model-config, or the one a
// delta file carries), the base weights (--model) and the deltas (--deltas or a fresh --peft).
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "data/dataset.h"
#include "nn/vit.h"
#include "peft/peft_model.h"
#include "tools/args.h"

namespace dg::cli {

// The model config a delta file recorded (train, import-peft and every save write one), or none.
std::optional<nn::ViTConfig> delta_model_config(const std::string& path);

// With --deltas, the delta file's model config (its head's classes and class names); a
// --model-config given too must describe the same backbone, else the error lists each key that
// differs and how to fix it. Without --deltas, --model-config (required).
nn::ViTConfig model_config_for(const Args& a);

// The model of config `c`, with --model's weights if given (a checkpoint without a head for
// c's classes keeps a fresh one).
std::unique_ptr<nn::VisionTransformer> load_model(const Args& a, const nn::ViTConfig& c);
inline std::unique_ptr<nn::VisionTransformer> load_model(const Args& a) { return load_model(a, model_config_for(a)); }

// --deltas (loaded) or --peft (freshly initialised) on the model; nullptr with neither.
std::unique_ptr<peft::PeftModel> attach_peft(nn::VisionTransformer& m, const Args& a);

// Data scored with a delta file's head must have its classes: the same count, and the same
// names in the same order where both are named. Throws, saying what differs and what to do.
void check_data_classes(const data::ImageSet& set, const std::string& data_spec, const nn::ViTConfig& c,
                        const std::string& delta_file);

// Paths recorded in run configs are absolute, so a run dir resumes from any working directory:
// `p` made absolute when it is a file (else as given: a preset name), and a data SPEC's path part
// (before the first ':') made absolute when it exists.
std::string absolute_if_file(const std::string& p);
std::string absolute_data_path(const std::string& spec);

// "a, b, c" (at most `max` names, then "...").
std::string list_names(const std::vector<std::string>& names, size_t max = 8);

}  // namespace dg::cli

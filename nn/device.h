// Move a model (base parameters, buffers and delta parameters) to a device in place.
#pragma once
#include "nn/module.h"

namespace dg::nn {

inline void move_to(Module& m, Device dev) {
  for (auto& [n, t] : m.named_parameters(true)) Tensor(t).move_to_(dev);
  for (auto& [n, t] : m.named_buffers()) Tensor(t).move_to_(dev);
}

}  // namespace dg::nn

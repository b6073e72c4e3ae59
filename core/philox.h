// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator. The value for
// (seed, counter) needs no state, so the CPU and the GPU draw identical streams and a
// dropout mask can be regenerated instead of stored. Shared by core/cpu and cuda/.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/hd.h"

namespace dg::philox {

struct U4 { uint32_t x, y, z, w; };

DG_HD uint32_t mulhi(uint32_t a, uint32_t b) { return uint32_t((uint64_t(a) * b) >> 32); }

// Four 32-bit random words for counter `ctr` under key `seed`.
DG_HD U4 draw(uint64_t seed, uint64_t ctr) {
  U4 c{uint32_t(ctr), uint32_t(ctr >> 32), 0u, 0u};
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0 = mulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    uint32_t hi1 = mulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = U4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// Element i of a stream: word (i % 4) of counter (i / 4), mapped to [0, 1).
DG_HD float uniform(uint64_t seed, uint64_t i) {
  U4 r = draw(seed, i >> 2);
  uint32_t w = (i & 3) == 0 ? r.x : (i & 3) == 1 ? r.y : (i & 3) == 2 ? r.z : r.w;
  return float(w >> 8) * (1.0f / 16777216.0f);
}

// Standard normal for element i (Box-Muller on the counter's first two words).
DG_HD float normal(uint64_t seed, uint64_t i) {
  U4 r = draw(seed, i ^ 0x8000000000000000ull);
  float u1 = (float(r.x >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  float u2 = float(r.y >> 8) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

}  // namespace dg::philox

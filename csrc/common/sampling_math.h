// Sampling math shared by the CPU and CUDA kernels: a counter-based random generator and the
// noise of the exponential race. Torch-free, host and device.
#pragma once

#include <cmath>
#include <cstdint>

#include "logit_math.h"

namespace logitops {

// Filter orders (logitops/ops/sampling.py keeps the same codes).
enum FilterOrder : int64_t { kOrderHf = 0, kOrderVllm = 1, kOrderJoint = 2 };

// Relative slack of the top-p and min-p comparisons: a token whose cumulative mass lands within
// 2^-20 of the cut is treated as on it, as HF's float32 softmax and cumsum do (their canonical
// case [.5, .3, .1, .1] with p = .8 keeps 2 tokens even though float rounding of the logits puts
// the exact cumulative mass a hair below .8).
constexpr double kSamplingBoundarySlack = 0x1.0p-20;

// Philox4x32-10 (Salmon et al., SC'11): four 32-bit outputs from a 128-bit counter and a 64-bit
// key. Stateless, so a token's noise depends only on (key, counter), never on which thread or
// which batch position computed it.
struct Philox4x32 {
  uint32_t v[4];
};

LOGITOPS_HD uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

LOGITOPS_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mul_hi_u32(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = mul_hi_u32(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// Exp(1) noise of token `index` for a row keyed by (seed, stream): -log(u) with u uniform in
// (0, 1) at 2^-53 resolution, in double, so even tokens of probability 1e-12 stay reachable
// (fp32 noise floors at 2^-24; vLLM #43150).
LOGITOPS_HD double exponential_noise(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 r = philox4x32_10(
      static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
      static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32 | r.v[1]) >> 11;  // 53 bits
  const double u = (static_cast<double>(bits) + 0.5) * 0x1.0p-53;
  return -std::log(u);
}

// Race score of a kept token: argmax_j (z_j - log E_j), E_j ~ Exp(1), picks j with probability
// softmax(z)_j (the Gumbel-max trick written with exponential noise).
LOGITOPS_HD double race_score(double z, double noise) { return z - std::log(noise); }

}  // namespace logitops

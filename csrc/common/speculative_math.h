// Chain speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the decisions and the
// noise shared by the CPU and CUDA kernels. Torch-free, host and device.
//
// Per row, draft tokens d_0 .. d_{S-1} proposed from the draft distributions q_i are verified
// against the target distributions p_0 .. p_S: d_i is accepted when u_i * q_i(d_i) < p_i(d_i),
// u_i uniform in (0, 1) (that is u_i < min(1, p_i(d_i) / q_i(d_i)) without a division: q = 0
// accepts when p > 0 and rejects when p = 0). At the first rejection, position `pos`, a token is
// drawn from max(p_pos - q_pos, 0) (normalized), or from p_S when every draft is accepted (the
// bonus token). The emitted tokens then follow the target distributions exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "logit_math.h"
#include "sampling_math.h"

namespace logitops {

// What a random number is for: its counter holds the purpose next to the row's stream, so the
// acceptance uniforms, the residual race's noise and sample()'s noise (whose counter has zero
// there) never share a counter for one key.
enum SpeculativeNoise : uint32_t {
  kAcceptNoise = 1,    // u_i of position i
  kResidualNoise = 2,  // E_j of token j in the race at the resampled position
};

// 53 random bits keyed by (seed; stream, purpose, position, index): stream is the row's index for
// a seed shared by the batch and 0 for per-row seeds (batch invariance), index < 2^32 (the
// vocabulary is checked), position < 2^32, stream < 2^56.
LOGITOPS_HD uint64_t speculative_bits(uint64_t seed, uint64_t stream, SpeculativeNoise purpose,
                                      uint64_t position, uint64_t index) {
  const uint32_t hi = static_cast<uint32_t>(stream >> 32) & 0x00ffffffu;
  const Philox4x32 r =
      philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(position),
                    static_cast<uint32_t>(stream), hi | (static_cast<uint32_t>(purpose) << 24),
                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.v[0]) << 32 | r.v[1]) >> 11;
}

// Uniform in (0, 1): never 0, so -log(u) is finite, and never 1.
LOGITOPS_HD double uniform_from_bits(uint64_t bits) {
  return (static_cast<double>(bits) + 0.5) * 0x1.0p-53;
}

// u_i of position i.
LOGITOPS_HD double acceptance_uniform(uint64_t seed, uint64_t stream, uint64_t position) {
  return uniform_from_bits(speculative_bits(seed, stream, kAcceptNoise, position, 0));
}

// E_j ~ Exp(1) of token j for the race at position `position`.
LOGITOPS_HD double residual_noise(uint64_t seed, uint64_t stream, uint64_t position,
                                  uint64_t index) {
  return -std::log(
      uniform_from_bits(speculative_bits(seed, stream, kResidualNoise, position, index)));
}

// The acceptance test, in double. NaN operands are caught before (the row is invalid).
LOGITOPS_HD bool draft_accepted(double u, double p_target, double p_draft) {
  return u * p_draft < p_target;
}

// The residual's unnormalized mass max(p - q, 0). The race below needs no normalization: for
// E_j ~ Exp(1) independent, E_j / r_j ~ Exp(r_j), and the smallest of independent exponentials is
// the one of rate r_j with probability r_j / sum r; scaling every r_j by one constant does not
// change which is smallest. So argmax_j r_j / E_j draws j with probability r_j / sum_k r_k, in one
// pass and without the sum.
LOGITOPS_HD double residual_mass(double p_target, double p_draft) {
  const double r = p_target - p_draft;
  return r > 0 ? r : 0.0;
}

// Race score of a candidate with mass r > 0 (only those take part).
LOGITOPS_HD double residual_score(double r, double noise) { return r / noise; }

// Whether (score a, index i) beats (score b, index j): larger score, then the lower index.
LOGITOPS_HD bool race_beats(double a, int64_t i, double b, int64_t j) {
  return a > b || (a == b && i < j);
}

// Online log-sum-exp of one value, in double: NaN and +inf are flagged by the caller (they make
// the row invalid) and skipped here, -inf adds nothing. The CPU pushes values in index order, a
// CUDA thread its share, merged with lse_merge.
LOGITOPS_HD void lse_push_finite(LseState<double>& s, double x) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (!(x > -kInf) || !(x < kInf)) return;
  if (x > s.max) {
    s.sum = s.sum * exp_shift(s.max, x) + 1.0;
    s.max = x;
  } else {
    s.sum += std::exp(x - s.max);
  }
}

}  // namespace logitops

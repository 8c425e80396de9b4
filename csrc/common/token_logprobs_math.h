// Per-token log-probabilities and entropies of a softmax at temperature T, the row math shared by
// the CPU and CUDA kernels of token_logprobs_forward / _backward (torch-free, like logit_math.h).
//
// With z = logits / T, lse = log sum_j exp(z_j), lp_j = z_j - lse and p_j = exp(lp_j), per row with
// target y:
//   logprob  = lp_y
//   entropy  H = -sum_j p_j lp_j                      (a p_j of 0 adds 0, even for z_j = -inf)
//   d logprob / d z_j = [j == y] - p_j
//   d H / d z_j       = -p_j (z_j - sum_k p_k z_k) = -p_j (lp_j + H)
// so for upstream gradients a (of the logprob) and b (of the entropy)
//   d / d z_j = a [j == y] - p_j (a + b (lp_j + H)),   d / d logits_j = (d / d z_j) / T.
// Every term of H is >= 0, so its sum cancels nothing.
#pragma once

#include <cstdint>
#include <limits>

#include "host_device.h"
#include "logit_math.h"

namespace logitops {

// The target's log-probability from the row's state and its (divided) logit z_y, the max and
// log(sum) kept apart: (z_y - max) - log(sum) (rounding the lse first would cost the digits that
// it shares with z_y). NaN for a row of all -inf, or with +inf or NaN, as log_softmax gives.
template <typename acc_t>
LOGITOPS_HD acc_t token_logprob(LseState<acc_t> state, acc_t target_logit) {
  if (!lse_state_is_finite(state)) return std::numeric_limits<acc_t>::quiet_NaN();
  return (target_logit - state.max) - std::log(state.sum);
}

// One pass for both the log-sum-exp and the entropy: the running state of sum_j e^{z_j} =
// sum * e^max and shifted = sum_j e^{z_j - max} (z_j - max), merged like LseState (every term of
// shifted is <= 0, so neither the sums nor the rescaling cancel anything). Then
// lse = max + log(sum) and H = log(sum) - shifted / sum (entropy_finalize).
template <typename acc_t>
struct EntropyState {
  acc_t max;
  acc_t sum;
  acc_t shifted;
};

template <typename acc_t>
LOGITOPS_HD EntropyState<acc_t> entropy_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0), acc_t(0)};
}

// The log-sum-exp part of the state.
template <typename acc_t>
LOGITOPS_HD LseState<acc_t> entropy_lse_state(EntropyState<acc_t> s) {
  return {s.max, s.sum};
}

// (sum, shifted) of a state's terms taken relative to a finite m >= s.max; nothing for an empty
// state or one that underflows entirely (no 0 * inf from a far-away max).
template <typename acc_t>
LOGITOPS_HD EntropyState<acc_t> entropy_rescaled(EntropyState<acc_t> s, acc_t m) {
  if (s.sum == acc_t(0)) return {m, acc_t(0), acc_t(0)};
  const acc_t d = s.max - m;
  const acc_t f = std::exp(d);
  if (f == acc_t(0)) return {m, acc_t(0), acc_t(0)};
  return {m, s.sum * f, f * (s.shifted + d * s.sum)};
}

// Merge two partial states (any order; the order changes only rounding). NaN in either makes the
// state NaN; a +inf max makes it {+inf, 1, NaN}; both empty stays empty.
template <typename acc_t>
LOGITOPS_HD EntropyState<acc_t> entropy_merge(EntropyState<acc_t> a, EntropyState<acc_t> b) {
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  if (a.max != a.max || b.max != b.max) return {nan, nan, nan};
  const acc_t m = a.max > b.max ? a.max : b.max;
  if (m == inf) return {m, acc_t(1), nan};
  if (m == -inf) return entropy_empty<acc_t>();
  const EntropyState<acc_t> ra = entropy_rescaled(a, m), rb = entropy_rescaled(b, m);
  return {m, ra.sum + rb.sum, ra.shifted + rb.shifted};
}

// Adds one value: one exp, and a rescale only when the max grows (entropy_merge's rules for NaN
// and +inf).
template <typename acc_t>
LOGITOPS_HD void entropy_push(EntropyState<acc_t>& s, acc_t z) {
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  if (z <= s.max) {
    // +inf: decided; -inf: z is -inf too and adds nothing.
    if (!(s.max < inf) || s.max == -inf) return;
    const acc_t d = z - s.max;
    const acc_t e = std::exp(d);
    s.sum += e;
    if (e > acc_t(0)) s.shifted += e * d;
  } else if (z < inf && s.max == s.max) {  // a larger finite max (or the first finite value)
    s = entropy_rescaled(s, z);
    s.sum += acc_t(1);  // the new value: e^0, and (z - max) = 0 adds nothing to shifted
  } else {
    s = entropy_merge(s, EntropyState<acc_t>{z, acc_t(1), acc_t(0)});
  }
}

// H = log(sum) - shifted / sum; NaN unless the state is finite.
template <typename acc_t>
LOGITOPS_HD acc_t entropy_finalize(EntropyState<acc_t> s) {
  if (!lse_state_is_finite(entropy_lse_state(s))) return std::numeric_limits<acc_t>::quiet_NaN();
  return std::log(s.sum) - s.shifted / s.sum;
}

// p_j (a + b (lp_j + H)), the part of d / d z_j every element has; 0 where p_j = 0. The entropy
// terms are left out when b = 0, so a row whose entropy was not computed (or is NaN) does not
// reach the logprob's gradient.
template <typename acc_t>
LOGITOPS_HD acc_t token_logprob_prob_grad(acc_t lp, acc_t grad_logprob, acc_t grad_entropy,
                                          acc_t entropy) {
  const acc_t p = prob_from_log(lp);
  if (!(p > acc_t(0))) return p == p ? acc_t(0) : p;  // NaN stays NaN
  const acc_t coef =
      grad_entropy == acc_t(0) ? grad_logprob : grad_logprob + grad_entropy * (lp + entropy);
  return p * coef;
}

// d / d logits_j of a * logprob + b * entropy: (a [j == y] - p_j (a + b (lp_j + H))) / T, with
// inv_temperature = 1 / T.
template <typename acc_t>
LOGITOPS_HD acc_t token_logprob_grad(acc_t lp, bool is_target, acc_t grad_logprob,
                                     acc_t grad_entropy, acc_t entropy, acc_t inv_temperature) {
  acc_t g = -token_logprob_prob_grad(lp, grad_logprob, grad_entropy, entropy);
  if (is_target) g += grad_logprob;
  return g * inv_temperature;
}

// Whether a row's gradient follows the formula: a target in range and a finite saved lse. Any
// other row that is not zero (token_logprob_grad_is_zero) is NaN throughout, as log_softmax's
// gradient of a row with +inf, NaN or only -inf logits.
template <typename acc_t>
LOGITOPS_HD bool token_logprob_grad_is_defined(bool valid_target, acc_t lse) {
  return valid_target && lse > -std::numeric_limits<acc_t>::infinity() &&
         lse < std::numeric_limits<acc_t>::infinity();
}

// Whether a row's gradient is zero whatever its logits: an ignored row, or zero upstream
// gradients (the zero of d / d logits for a NaN row too, as an unused output's).
template <typename acc_t>
LOGITOPS_HD bool token_logprob_grad_is_zero(bool ignored, acc_t grad_logprob, acc_t grad_entropy) {
  return ignored || (grad_logprob == acc_t(0) && grad_entropy == acc_t(0));
}

}  // namespace logitops

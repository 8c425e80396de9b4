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

// The log-softmax of one row from its log-sum-exp state, the max and log(sum) kept apart (as
// LogSoftmaxPair does for two rows): lp(z) = (z - max) - log(sum). A non-finite state (all -inf,
// +inf or NaN) folds into max and leaves log(sum) at 0, so lp = z - lse (NaN or -inf).
template <typename acc_t>
struct TokenLogSoftmax {
  acc_t max, log_sum;

  LOGITOPS_HD acc_t lp(acc_t z) const { return (z - max) - log_sum; }
};

template <typename acc_t>
LOGITOPS_HD TokenLogSoftmax<acc_t> token_log_softmax(LseState<acc_t> state) {
  const bool finite = lse_state_is_finite(state);
  return {finite ? state.max : lse_finalize(state), finite ? std::log(state.sum) : acc_t(0)};
}

// -p lp, the element's share of the entropy: 0 where p = 0 (a -inf logit is not a NaN).
template <typename acc_t>
LOGITOPS_HD acc_t token_entropy_term(acc_t lp) {
  const acc_t p = prob_from_log(lp);
  return p > acc_t(0) ? -p * lp : acc_t(0);
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

// Whether a row's gradient is zero whatever its logits: an ignored row, or zero upstream
// gradients (the zero of d / d logits for a NaN row too, as an unused output's).
template <typename acc_t>
LOGITOPS_HD bool token_logprob_grad_is_zero(bool ignored, acc_t grad_logprob, acc_t grad_entropy) {
  return ignored || (grad_logprob == acc_t(0) && grad_entropy == acc_t(0));
}

}  // namespace logitops

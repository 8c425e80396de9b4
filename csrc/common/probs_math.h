// Math of the probability ops (sampling from probabilities, renormalized probabilities, the
// temperature softmax) and of the top-N log-probabilities, shared by the CPU and CUDA kernels.
// Torch-free, host and device.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.h"

namespace logitops {

// The probability ops run the logit filters and the exponential race on z = log(p): top-k,
// top-p and min-p only compare p / p_max and sums of it, and argmax(log p - log E) draws from p /
// sum(p), so none of them needs the row to be normalized. log is taken in double and rounded
// once, so that every backend (CPU, GPU, emulator) gets the same z and the same tokens. A
// negative, NaN or +inf probability gives NaN: the row is then invalid (token -1, NaN row), as a
// NaN logit makes a logit row invalid. A probability of 0 gives -inf, never kept, never drawn.
template <typename acc_t>
LOGITOPS_HD acc_t probability_log(double p) {
  if (!(p >= 0.0) || p == std::numeric_limits<double>::infinity()) {
    return std::numeric_limits<acc_t>::quiet_NaN();
  }
  return static_cast<acc_t>(std::log(p));
}

// softmax_j = exp(z_j - lse). Rows with a +inf (lse = +inf), a NaN or only -inf (lse = -inf, so
// z - lse is NaN) have no distribution: NaN everywhere, as torch.softmax gives.
template <typename acc_t>
LOGITOPS_HD acc_t softmax_value(acc_t z, acc_t lse) {
  if (lse == std::numeric_limits<acc_t>::infinity()) {
    return std::numeric_limits<acc_t>::quiet_NaN();
  }
  return std::exp(z - lse);
}

// The order of the top-N log-probabilities: larger value first, then lower token id (so the
// result is deterministic, where torch.topk leaves ties in no specified order).
template <typename acc_t>
LOGITOPS_HD bool top_ranks_before(acc_t a, int64_t i, acc_t b, int64_t j) {
  return a > b || (a == b && i < j);
}

// vLLM's rank of a token (vllm/v1/sample/ops/logprobs.py batched_count_greater_than): the number
// of tokens whose log-probability is >= the token's own, itself included, so 1 is the most
// likely and ties count against the token. Counted on z = logits / temperature, whose order is
// the log-probabilities' exact order (vLLM compares float32 log_softmax values, whose rounding
// can merge values z keeps apart).
template <typename acc_t>
LOGITOPS_HD bool counts_toward_rank(acc_t z, acc_t token_z) {
  return z >= token_z;
}

}  // namespace logitops

// Checks shared by the CPU and CUDA launchers of the probability ops (csrc/cpu/probs.cpp,
// csrc/cuda/probs.cu) and the top-N log-probabilities (logprobs.cpp / logprobs.cu). The public
// functions (logitops/functional) validate first, with messages naming the arguments; these keep
// a direct call of an op from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace logitops {

// Rows of at most this many top log-probabilities per call (CUDA collects them in shared
// memory; the CPU keeps the same limit, so that the op has one contract).
constexpr int64_t kMaxTopLogprobs = 1024;

inline void check_probability_rows(const at::Tensor& probs, const char* op) {
  TORCH_CHECK_VALUE(probs.dim() == 2, "logitops.", op, ": probs must be 2-D [batch, vocab], got ",
                    probs.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(probs.scalar_type()), "logitops.", op,
                   ": probs must be floating point, got ", probs.scalar_type());
}

inline void check_probs_filters(const at::Tensor& probs, const at::Tensor& top_k,
                                const at::Tensor& top_p, const at::Tensor& min_p, const char* op) {
  check_probability_rows(probs, op);
  const int64_t rows = probs.size(0);
  TORCH_CHECK_VALUE(top_k.dim() == 1 && top_k.size(0) == rows && top_k.scalar_type() == at::kLong,
                    "logitops.", op, ": per-row top_k must be int64 [", rows, "]");
  for (const at::Tensor* t : {&top_p, &min_p}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == rows && t->scalar_type() == at::kDouble,
                      "logitops.", op, ": per-row top_p / min_p must be float64 [", rows, "]");
  }
}

inline void check_row_seeds(const at::Tensor& seeds, int64_t rows, const char* op) {
  TORCH_CHECK_VALUE(seeds.dim() == 1 && seeds.size(0) == rows && seeds.scalar_type() == at::kLong,
                    "logitops.", op, ": seed must be int64 [", rows, "]");
}

inline void check_row_temperature(const at::Tensor& temperature, int64_t rows, const char* op) {
  TORCH_CHECK_VALUE(temperature.dim() == 1 && temperature.size(0) == rows &&
                        temperature.scalar_type() == at::kDouble,
                    "logitops.", op, ": temperature must be float64 [", rows, "]");
}

inline void check_top_logprobs_inputs(const at::Tensor& logits, const at::Tensor& temperature,
                                      const std::optional<at::Tensor>& token,
                                      int64_t num_logprobs) {
  TORCH_CHECK_VALUE(
      logits.dim() == 2 && logits.size(1) >= 1,
      "logitops.top_logprobs: logits must be 2-D [batch, vocab] with vocab >= 1, got ",
      logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops.top_logprobs: logits must be floating point, got ",
                   logits.scalar_type());
  const int64_t rows = logits.size(0);
  check_row_temperature(temperature, rows, "top_logprobs");
  if (token.has_value()) {
    TORCH_CHECK_VALUE(
        token->dim() == 1 && token->size(0) == rows && token->scalar_type() == at::kLong,
        "logitops.top_logprobs: token must be int64 [", rows, "]");
  }
  TORCH_CHECK_VALUE(num_logprobs >= 0, "logitops.top_logprobs: num_logprobs must be >= 0, got ",
                    num_logprobs);
  TORCH_CHECK_VALUE(std::min(num_logprobs, logits.size(1)) <= kMaxTopLogprobs,
                    "logitops.top_logprobs: at most ", kMaxTopLogprobs,
                    " top log-probabilities per row, got ", num_logprobs);
}

}  // namespace logitops

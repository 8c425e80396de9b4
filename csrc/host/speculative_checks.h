// Argument checks of speculative_sample, shared by its CPU and CUDA launchers (header-only so the
// family stays in its own files).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace logitops {

// target [B, S + 1, V] floating, V >= 1 and V < 2^32 (the noise's counter holds the token index
// in 32 bits); draft absent or [B, S, V] of the target's dtype; draft_token_ids int64 [B, S];
// temperature float64 [B]; seed int64 [B]. Draft id values are not checked here (that needs a
// host sync on CUDA): the kernels reject an out-of-range draft id without reading anything for it.
inline void check_speculative_inputs(const at::Tensor& target,
                                     const std::optional<at::Tensor>& draft,
                                     const at::Tensor& draft_token_ids,
                                     const at::Tensor& temperature, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(target.dim() == 3 && target.size(1) >= 1 && target.size(2) >= 1,
                    "logitops.speculative_sample: target must be [batch, num_drafts + 1, vocab] "
                    "with vocab >= 1, got ",
                    target.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()),
                   "logitops.speculative_sample: target must be floating point, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.size(2) < int64_t(std::numeric_limits<uint32_t>::max()),
                    "logitops.speculative_sample: vocabularies must be below 2^32, got ",
                    target.size(2));
  const int64_t rows = target.size(0), drafts = target.size(1) - 1, vocab = target.size(2);
  if (draft.has_value()) {
    TORCH_CHECK_TYPE(draft->scalar_type() == target.scalar_type(),
                     "logitops.speculative_sample: draft must have the target's dtype ",
                     target.scalar_type(), ", got ", draft->scalar_type());
    TORCH_CHECK_VALUE(draft->dim() == 3 && draft->size(0) == rows && draft->size(1) == drafts &&
                          draft->size(2) == vocab,
                      "logitops.speculative_sample: draft must be [", rows, ", ", drafts, ", ",
                      vocab, "], got ", draft->sizes());
  }
  TORCH_CHECK_VALUE(draft_token_ids.scalar_type() == at::kLong && draft_token_ids.dim() == 2 &&
                        draft_token_ids.size(0) == rows && draft_token_ids.size(1) == drafts,
                    "logitops.speculative_sample: draft_token_ids must be int64 [", rows, ", ",
                    drafts, "], got ", draft_token_ids.scalar_type(), " ", draft_token_ids.sizes());
  TORCH_CHECK_VALUE(temperature.dim() == 1 && temperature.size(0) == rows &&
                        temperature.scalar_type() == at::kDouble,
                    "logitops.speculative_sample: temperature must be float64 [", rows, "]");
  TORCH_CHECK_VALUE(seed.dim() == 1 && seed.size(0) == rows && seed.scalar_type() == at::kLong,
                    "logitops.speculative_sample: seed must be int64 [", rows, "]");
}

}  // namespace logitops

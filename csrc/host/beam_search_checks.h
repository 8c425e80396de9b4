// Argument checks of beam_search_step, shared by its CPU and CUDA launchers (header-only so the
// family stays in its own files).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "../common/beam_search_math.h"
#include "operands.h"

namespace logitops {

// Candidates the step returns per batch item: num_candidates, or all num_beams * V when fewer.
struct BeamSearchShape {
  int64_t batch, num_beams, vocab, per_row, width;
};

// logits [batch * num_beams, V >= 1] floating, beam_scores [batch * num_beams] in the
// accumulation dtype on the logits' device, 1 <= num_candidates <= kMaxBeamCandidates.
inline BeamSearchShape check_beam_search_inputs(const at::Tensor& logits,
                                                const at::Tensor& beam_scores, int64_t num_beams,
                                                int64_t num_candidates) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 1,
                    "logitops.beam_search_step: logits must be 2-D [batch * num_beams, vocab] "
                    "with vocab >= 1, got ",
                    logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops.beam_search_step: logits must be floating point, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(num_beams >= 1 && logits.size(0) % num_beams == 0,
                    "logitops.beam_search_step: num_beams must be >= 1 and divide the ",
                    logits.size(0), " rows of logits, got ", num_beams);
  TORCH_CHECK_VALUE(num_candidates >= 1 && num_candidates <= kMaxBeamCandidates,
                    "logitops.beam_search_step: num_candidates must be in [1, ", kMaxBeamCandidates,
                    "], got ", num_candidates);
  const at::ScalarType acc = accumulation_dtype(logits.scalar_type());
  TORCH_CHECK_VALUE(beam_scores.dim() == 1 && beam_scores.size(0) == logits.size(0) &&
                        beam_scores.scalar_type() == acc,
                    "logitops.beam_search_step: beam_scores must be ", acc, " [", logits.size(0),
                    "], got ", beam_scores.scalar_type(), " ", beam_scores.sizes());
  TORCH_CHECK_VALUE(beam_scores.device() == logits.device(),
                    "logitops.beam_search_step: beam_scores are on ", beam_scores.device(),
                    " but logits on ", logits.device());
  const int64_t vocab = logits.size(1);
  const int64_t per_row = std::min(num_candidates, vocab);
  // num_beams * vocab may not fit int64 only for absurd shapes; per_row bounds what is kept.
  const int64_t width = std::min(num_candidates, num_beams * per_row);
  return {logits.size(0) / num_beams, num_beams, vocab, per_row, width};
}

}  // namespace logitops

// Argument checks of calibration_row_stats, shared by its CPU and CUDA launchers (header-only so
// the family stays in its own files).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace logitops {

// logits [N, C] floating with C >= 1, int64 labels [N] on the logits' device. Label values are
// not checked here (that needs a host sync on CUDA): out-of-range labels give NaN nll / brier.
inline void check_calibration_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK_VALUE(logits.dim() == 2,
                    "logitops.calibration_row_stats: logits must be 2-D [rows, classes], got ",
                    logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops.calibration_row_stats: logits must be floating point, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1,
                    "logitops.calibration_row_stats: logits must have at least one class");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong,
                   "logitops.calibration_row_stats: labels must be int64 class indices, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == logits.size(0),
                    "logitops.calibration_row_stats: labels must have shape [", logits.size(0),
                    "], got ", labels.sizes());
  TORCH_CHECK_VALUE(labels.device() == logits.device(),
                    "logitops.calibration_row_stats: labels are on ", labels.device(),
                    " but logits on ", logits.device());
}

}  // namespace logitops

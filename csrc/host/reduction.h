// The reductions "none" / "mean" / "sum" around the kernels, for the CPU and CUDA launchers: the
// per-row losses reduced into the op's output, and the upstream gradient spread back over the
// rows (or elements) the backward kernels read.
#pragma once

#include <ATen/core/Tensor.h>

#include "../common/modes.h"

namespace logitops {

// Turns per-row losses (accumulation dtype) into the op's output in the logits' dtype: the losses
// themselves for reduction "none", else their sum (divided by total_weight for "mean"; on the CPU
// summed in row order in double, the same bits for any thread count).
at::Tensor reduce_row_loss(const at::Tensor& row_loss, const at::Tensor& total_weight,
                           Reduction reduction, at::ScalarType out_dtype);

// Upstream gradient of each row's loss, in the accumulation dtype: grad_loss itself for
// reduction "none", broadcast for "sum", divided by the total weight for "mean".
at::Tensor upstream_per_row(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                            Reduction reduction, int64_t num_rows, at::ScalarType acc_dtype);

// The upstream gradient of bce_with_logits_backward as a [rows, cols] operand in the
// accumulation dtype: grad_loss itself (unit column stride) for reduction "none", else the scalar
// (divided by rows * cols for "mean") expanded with stride 0. Never synchronizes.
at::Tensor bce_upstream(const at::Tensor& grad_loss, int64_t rows, int64_t cols,
                        Reduction reduction, at::ScalarType acc_dtype);

}  // namespace logitops

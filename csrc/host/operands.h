// What the CPU and CUDA launchers make of their tensor arguments before a kernel reads them: the
// accumulation dtype, rows of unit stride, and the per-row operands of the backward ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace logitops {

// fp32 for bf16 / fp16 / fp32 logits, fp64 for fp64 logits.
at::ScalarType accumulation_dtype(at::ScalarType logits_dtype);

// The kernels read rows with any stride but need unit stride along the vocabulary.
at::Tensor rows_with_unit_stride(const at::Tensor& logits);

// Checks that a per-row operand of a backward op is [rows] of the accumulation dtype on the
// logits' device, and returns it contiguous.
at::Tensor per_row_operand(const at::Tensor& t, const at::Tensor& logits, const char* name,
                           const char* op);

// The saved lse and the optional grad_lse of a cross-entropy backward (`op` names it in the
// messages): each on the logits' device with one value per row (the kernels read one per row;
// checked rather than read out of bounds), returned contiguous in the accumulation dtype.
// grad_lse is undefined when absent.
struct LseOperands {
  at::Tensor lse;
  at::Tensor grad_lse;
};
LseOperands lse_operands(const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse,
                         const at::Tensor& logits, const char* op);

}  // namespace logitops

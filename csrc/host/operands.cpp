#include "operands.h"

namespace logitops {

at::ScalarType accumulation_dtype(at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor rows_with_unit_stride(const at::Tensor& logits) {
  return (logits.size(1) <= 1 || logits.stride(1) == 1) ? logits : logits.contiguous();
}

namespace {

void check_on_logits_device(const at::Tensor& t, const at::Tensor& logits, const char* name,
                            const char* op) {
  TORCH_CHECK_VALUE(t.device() == logits.device(), "logitops.", op, ": ", name, " is on ",
                    t.device(), " but logits on ", logits.device());
}

// One value per row of `logits`, in the accumulation dtype, contiguous.
at::Tensor one_per_row(const at::Tensor& t, const at::Tensor& logits, const char* name,
                       const char* op) {
  check_on_logits_device(t, logits, name, op);
  const at::Tensor out = t.to(accumulation_dtype(logits.scalar_type())).contiguous();
  TORCH_CHECK_VALUE(out.numel() == logits.size(0), "logitops.", op, ": ", name, " must have ",
                    logits.size(0), " elements, got ", out.numel());
  return out;
}

}  // namespace

at::Tensor per_row_operand(const at::Tensor& t, const at::Tensor& logits, const char* name,
                           const char* op) {
  const auto acc = accumulation_dtype(logits.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0), "logitops.", op, ": ", name,
                    " must have shape [", logits.size(0), "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, "logitops.", op, ": ", name, " must be ", acc, ", got ",
                   t.scalar_type());
  check_on_logits_device(t, logits, name, op);
  return t.contiguous();
}

LseOperands lse_operands(const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse,
                         const at::Tensor& logits, const char* op) {
  LseOperands out;
  out.lse = one_per_row(lse, logits, "lse", op);
  if (grad_lse.has_value() && grad_lse->defined()) {
    out.grad_lse = one_per_row(*grad_lse, logits, "grad_lse", op);
  }
  return out;
}

}  // namespace logitops

#include "reduction.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/util/irange.h>

#include "../common/logit_math.h"
#include "operands.h"

namespace logitops {

at::Tensor reduce_row_loss(const at::Tensor& row_loss, const at::Tensor& total_weight,
                           Reduction reduction, at::ScalarType out_dtype) {
  if (reduction == kReductionNone) return row_loss.to(out_dtype);
  at::Tensor total;
  if (row_loss.is_cpu()) {
    // In row order, in double: the same bits for any thread count.
    total = at::empty({}, row_loss.options());
    AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "reduce_row_loss", [&] {
      const scalar_t* x = row_loss.const_data_ptr<scalar_t>();
      double sum = 0;
      for (const auto i : c10::irange(row_loss.numel())) sum += x[i];
      total.fill_(sum);
    });
  } else {
    total = row_loss.sum();
  }
  if (reduction == kReductionMean) total = at::div(total, total_weight);
  return total.to(out_dtype);
}

at::Tensor upstream_per_row(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                            Reduction reduction, int64_t num_rows, at::ScalarType acc_dtype) {
  at::Tensor g = grad_loss.to(acc_dtype);
  if (reduction == kReductionNone) {
    TORCH_CHECK_VALUE(g.dim() == 1 && g.size(0) == num_rows,
                      "logitops.cross_entropy_backward: grad_loss must have shape [", num_rows,
                      "], got ", g.sizes());
    return g.contiguous();
  }
  TORCH_CHECK_VALUE(g.numel() == 1, "logitops.cross_entropy_backward: grad_loss must be a scalar");
  if (reduction == kReductionMean) g = at::div(g, total_weight.to(acc_dtype));
  return g.reshape({1}).expand({num_rows}).contiguous();
}

at::Tensor bce_upstream(const at::Tensor& grad_loss, int64_t rows, int64_t cols,
                        Reduction reduction, at::ScalarType acc_dtype) {
  at::Tensor upstream = grad_loss.to(acc_dtype);
  if (reduction == kReductionNone) {
    TORCH_CHECK_VALUE(upstream.dim() == 2 && upstream.size(0) == rows && upstream.size(1) == cols,
                      "logitops.bce_with_logits_backward: grad_loss must have shape [", rows, ", ",
                      cols, "], got ", upstream.sizes());
    return rows_with_unit_stride(upstream);
  }
  TORCH_CHECK_VALUE(upstream.numel() == 1,
                    "logitops.bce_with_logits_backward: grad_loss must be a scalar");
  if (reduction == kReductionMean) upstream = at::div(upstream, double(rows) * double(cols));
  return upstream.reshape({1, 1}).expand({rows, cols});
}

}  // namespace logitops

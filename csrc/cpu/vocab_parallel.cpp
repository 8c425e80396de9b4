// Vocabulary-parallel cross-entropy on the CPU: the per-rank halves around the collective.
//
// The forward reads each row of a rank's slice once (the row sweep of ce_rows.h) for its partial
// log-sum-exp, its target logit (when the target class is in the slice) and its logit sum;
// logitops/distributed.py combines those across ranks. The backward is the row gradient of
// ce_rows.h from the global lse, with the coefficients of cross_entropy_row over all classes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/logit_math.h"
#include "../host/checks.h"
#include "../host/operands.h"
#include "allocator.h"
#include "ce_rows.h"
#include "vec_utils.h"

namespace logitops {
namespace {

// A rank's slice [N, V_local] as the rows of a cross-entropy without class weights or soft-cap.
// Its coefficients count the global classes and its target columns are shifted by vocab_start, so
// the callers pass both to row_grad (row_coefficients and target_logit are not for slices).
template <typename scalar_t, typename acc_t>
CrossEntropyRows<scalar_t, acc_t> slice_rows(const at::Tensor& logits) {
  CrossEntropyRows<scalar_t, acc_t> rows{};
  rows.num_classes = logits.size(1);
  rows.row_stride = logits.stride(0);
  rows.logits = logits.const_data_ptr<scalar_t>();
  rows.target = nullptr;
  rows.weight = nullptr;
  rows.weight_total = acc_t(rows.num_classes);
  rows.softcap = acc_t(0);
  return rows;
}

at::Tensor vocab_parallel_cross_entropy_stats_cpu(const at::Tensor& logits_in,
                                                  const at::Tensor& target_in,
                                                  int64_t vocab_start) {
  check_vocab_parallel_inputs(logits_in, target_in, vocab_start, -1,
                              "vocab_parallel_cross_entropy_stats");
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t local_classes = logits.size(1);
  // Float64 whatever the logits: the ranks' statistics are combined into lse - z_target, which
  // would cancel the digits of an lse rounded to float32.
  at::Tensor stats = at::empty({3, num_rows}, logits.options().dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "vocab_parallel_cross_entropy_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto rows = slice_rows<scalar_t, acc_t>(logits);
        const int64_t* t = target.const_data_ptr<int64_t>();
        double* lse_out = stats.mutable_data_ptr<double>();
        double* target_out = lse_out + num_rows;
        double* sum_out = target_out + num_rows;
        at::parallel_for(0, num_rows, grain_rows(local_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, local_classes));
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = rows.logits + i * rows.row_stride;
            // sum_j z_j = sum_j (z_j - shift) + n * shift: small terms in acc_t, the rest in
            // double.
            const acc_t shift =
                local_classes > 0 ? logit_sum_shift(static_cast<acc_t>(row[0])) : acc_t(0);
            const auto [state, shifted_sum] = rows.row_lse<double>(i, shift, true, buf.data());
            lse_out[i] = lse_finalize_wide(state);
            const int64_t local = t[i] - vocab_start;
            target_out[i] =
                local >= 0 && local < local_classes ? static_cast<double>(row[local]) : 0.0;
            sum_out[i] = double(shift) * double(local_classes) + shifted_sum;
          }
        });
      });
  return stats;
}

at::Tensor vocab_parallel_cross_entropy_backward_cpu(const at::Tensor& grad_rows_in,
                                                     const at::Tensor& logits_in,
                                                     const at::Tensor& target_in,
                                                     const at::Tensor& lse_in, int64_t vocab_start,
                                                     int64_t num_classes, int64_t ignore_index,
                                                     double label_smoothing, double z_loss) {
  constexpr const char* kOp = "vocab_parallel_cross_entropy_backward";
  check_vocab_parallel_inputs(logits_in, target_in, vocab_start, num_classes, kOp);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const at::Tensor grad_rows = per_row_operand(grad_rows_in, logits, "grad_rows", kOp);
  const at::Tensor lse = per_row_operand(lse_in, logits, "lse", kOp);
  const int64_t num_rows = logits.size(0);
  const int64_t local_classes = logits.size(1);
  at::Tensor grad = empty_cpu_output({num_rows, local_classes}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "vocab_parallel_cross_entropy_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto rows = slice_rows<scalar_t, acc_t>(logits);
        const int64_t* t = target.const_data_ptr<int64_t>();
        const acc_t* up = grad_rows.const_data_ptr<acc_t>();
        const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        const acc_t eps = static_cast<acc_t>(label_smoothing);
        const acc_t z = static_cast<acc_t>(z_loss);
        at::parallel_for(0, num_rows, grain_rows(local_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, local_classes));
          for (int64_t i = begin; i < end; ++i) {
            // Without class weights W = C, and the target's weight is 1.
            const auto coef = t[i] == ignore_index
                                  ? cross_entropy_ignored_row<acc_t>()
                                  : cross_entropy_row(lse_ptr[i], acc_t(1), acc_t(num_classes), eps,
                                                      num_classes, z);
            rows.row_grad(i, t[i] - vocab_start, lse_ptr[i], coef, up[i], acc_t(0),
                          grad_out + i * local_classes, buf.data());
          }
        });
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("vocab_parallel_cross_entropy_stats", &vocab_parallel_cross_entropy_stats_cpu);
  m.impl("vocab_parallel_cross_entropy_backward", &vocab_parallel_cross_entropy_backward_cpu);
}

}  // namespace logitops

// Vocabulary-parallel cross-entropy on the CPU: the per-rank halves around the collective.
//
// The forward reads each row of a rank's slice once for its partial log-sum-exp, its target logit
// (when the target class is in the slice) and its logit sum; logitops/distributed.py combines
// those across ranks. The backward recomputes p_j = exp(z_j - lse) from the global lse and writes
// the slice of the full gradient with the formulas of cross_entropy_row / cross_entropy_grad.
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
#include "vec_math.h"
#include "vec_utils.h"

namespace logitops {
namespace {

constexpr int64_t kBlock = 2048;

// Row i's block [start, start + n) as acc_t: the row itself for fp32 / fp64, else widened into buf.
template <typename scalar_t, typename acc_t>
const acc_t* acc_block(const scalar_t* row, int64_t start, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row + start;
  } else {
    load_as_acc(row + start, buf, n);
    return buf;
  }
}

// Where a block's gradient is computed: in place for fp32 / fp64, in buf for bf16 / fp16 (then
// rounded into the output).
template <typename scalar_t, typename acc_t>
acc_t* acc_output(scalar_t* out, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return out;
  } else {
    return buf;
  }
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
        const scalar_t* data = logits.const_data_ptr<scalar_t>();
        const int64_t* t = target.const_data_ptr<int64_t>();
        const int64_t row_stride = logits.stride(0);
        double* lse_out = stats.mutable_data_ptr<double>();
        double* target_out = lse_out + num_rows;
        double* sum_out = target_out + num_rows;
        at::parallel_for(0, num_rows, grain_rows(local_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kBlock, local_classes));
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = data + i * row_stride;
            LseState<acc_t> state = lse_empty<acc_t>();
            // sum_j z_j = sum_j (z_j - shift) + n * shift: small terms in acc_t, the rest in
            // double.
            const acc_t shift =
                local_classes > 0 ? logit_sum_shift(static_cast<acc_t>(row[0])) : acc_t(0);
            double sum = double(shift) * double(local_classes);
            for (int64_t start = 0; start < local_classes; start += kBlock) {
              const int64_t n = std::min(kBlock, local_classes - start);
              const acc_t* z = acc_block(row, start, n, buf.data());
              state = lse_block(z, n, state);
              sum += weighted_sum_block<acc_t>(z, nullptr, n, shift);
            }
            lse_out[i] = lse_finalize_wide(state);
            const int64_t local = t[i] - vocab_start;
            target_out[i] =
                local >= 0 && local < local_classes ? static_cast<double>(row[local]) : 0.0;
            sum_out[i] = sum;
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
        using Vec = Vectorized<acc_t>;
        const scalar_t* data = logits.const_data_ptr<scalar_t>();
        const int64_t* t = target.const_data_ptr<int64_t>();
        const acc_t* up = grad_rows.const_data_ptr<acc_t>();
        const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        const int64_t row_stride = logits.stride(0);
        const acc_t eps = static_cast<acc_t>(label_smoothing);
        const acc_t z = static_cast<acc_t>(z_loss);
        at::parallel_for(0, num_rows, grain_rows(local_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kBlock, local_classes));
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = data + i * row_stride;
            scalar_t* out_row = grad_out + i * local_classes;
            const acc_t row_lse = lse_ptr[i];
            // Without class weights W = C, and the target's weight is 1.
            const auto coef =
                t[i] == ignore_index
                    ? cross_entropy_ignored_row<acc_t>()
                    : cross_entropy_row(row_lse, acc_t(1), acc_t(num_classes), eps, num_classes, z);
            if (cross_entropy_row_grad_is_zero(coef, up[i], acc_t(0))) {
              std::fill(out_row, out_row + local_classes, scalar_t(0));
              continue;
            }
            if (row_lse != row_lse || std::isinf(row_lse)) {
              // NaN, +inf or an all -inf row (globally): the softmax is undefined.
              std::fill(out_row, out_row + local_classes, scalar_t(NAN));
              continue;
            }
            const int64_t local_target = t[i] - vocab_start;
            const Vec vscale(cross_entropy_prob_scale(coef, up[i], acc_t(0))),
                vsmooth(upstream_scaled(up[i], coef.smooth_coef));
            for (int64_t start = 0; start < local_classes; start += kBlock) {
              const int64_t n = std::min(kBlock, local_classes - start);
              const acc_t* zb = acc_block(row, start, n, buf.data());
              acc_t* out = acc_output(out_row + start, buf.data());
              int64_t j = 0;
              for (; j + Vec::size() <= n; j += Vec::size()) {
                simd::cross_entropy_grad(simd::exp_shift(Vec::loadu(zb + j), row_lse), vscale,
                                         vsmooth)
                    .store(out + j);
              }
              for (; j < n; ++j) {
                out[j] = cross_entropy_grad(coef, up[i], acc_t(0), exp_shift(zb[j], row_lse), false,
                                            acc_t(1));
              }
              if (local_target >= start && local_target < start + n &&
                  coef.target_coef != acc_t(0)) {
                out[local_target - start] -= up[i] * coef.target_coef;
              }
              if (out == buf.data()) store_from_acc(buf.data(), out_row + start, n);
            }
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

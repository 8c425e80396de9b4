// Distillation divergences (forward / reverse KL, generalized JSD) between the softmaxes of a
// teacher's and a student's logits at temperature T, on the CPU.
//
// Per row: pass 1 computes both log-sum-exps with the online merge (blocks in L1); pass 2 the
// loss and S = sum q g (divergence_term of logit_math.h); pass 3 the student's gradient
// q (g - S) / T. The forward KL knows S = -1 up front and writes its gradient in pass 2.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/logit_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/reduction.h"
#include "allocator.h"
#include "vec_math.h"
#include "vec_utils.h"

namespace logitops {
namespace {

constexpr int64_t kDistillBlock = 2048;

// The weights of the two terms: loss = hard (cross-entropy at T = 1) + soft (divergence at T).
struct DistillWeights {
  double hard, soft;
};

template <typename scalar_t, typename acc_t>
struct DistillContext {
  const scalar_t* student;
  const scalar_t* teacher;
  int64_t student_stride, teacher_stride, num_classes;
  const int64_t* target;  // nullptr: every row counts
  int64_t ignore_index;
  acc_t inv_temperature;
  DivergenceKind kind;
  acc_t beta;
  bool soft, hard;  // which terms are on (a weight of 0 drops its term)
  // T == 1: the hard term's softmax is the soft term's student softmax (s / 1 is s exactly).
  bool hard_shares_softmax;

  // soft + hard, or soft alone as before the hard term existed (not soft + 0: -0 stays -0).
  acc_t combine_losses(acc_t soft_loss, acc_t hard_term) const {
    return hard ? soft_loss + hard_term : soft_loss;
  }

  bool ignored(int64_t i) const { return target != nullptr && target[i] == ignore_index; }

  // Columns [start, start + n) of row i divided by T, into s and t; the student's raw values
  // into h too when h is not null (the hard term at temperature 1).
  void load(int64_t i, int64_t start, int64_t n, acc_t* s, acc_t* t, acc_t* h) const {
    acc_t* raw = h != nullptr ? h : s;
    load_as_acc(student + i * student_stride + start, raw, n);
    load_as_acc(teacher + i * teacher_stride + start, t, n);
    using Vec = Vectorized<acc_t>;
    const Vec inv(inv_temperature);
    int64_t j = 0;
    for (; j + Vec::size() <= n; j += Vec::size()) {
      (Vec::loadu(raw + j) * inv).store(s + j);
      (Vec::loadu(t + j) * inv).store(t + j);
    }
    for (; j < n; ++j) {
      s[j] = raw[j] * inv_temperature;
      t[j] *= inv_temperature;
    }
  }

  // The buffer of raw student values that load fills, or nullptr when the hard term reads s.
  acc_t* raw_buffer(acc_t* h) const { return hard && !hard_shares_softmax ? h : nullptr; }

  // The hard term's loss (before its weight) from the student's lse state at temperature 1.
  acc_t hard_loss(int64_t i, LseState<acc_t> state_h) const {
    return lse_minus(state_h, static_cast<acc_t>(student[i * student_stride + target[i]]));
  }

  // Returns the row's loss; writes the gradient (d loss / d student times the row's upstream,
  // whose scales are `scales`) when grad is not null.
  acc_t row(int64_t i, DistillScales<acc_t> scales, acc_t soft_weight, acc_t hard_weight,
            scalar_t* grad, acc_t* s, acc_t* t, acc_t* h, acc_t* g) const {
    if (!soft) return hard_row(i, scales.hard, hard_weight, grad, h, g);
    acc_t* raw = raw_buffer(h);
    LseState<acc_t> state_s = lse_empty<acc_t>(), state_t = lse_empty<acc_t>();
    LseState<acc_t> state_h = lse_empty<acc_t>();
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t, raw);
      state_s = lse_block(s, n, state_s);
      state_t = lse_block(t, n, state_t);
      if (raw != nullptr) state_h = lse_block(raw, n, state_h);
    }
    if (hard && hard_shares_softmax) state_h = state_s;
    const auto logs = log_softmax_pair(state_t, state_s);
    const auto hard_logs = log_softmax_row(state_h);
    const acc_t hard_term = hard ? hard_weight * hard_loss(i, state_h) : acc_t(0);
    // The vector body needs finite states (fast_exp does not propagate NaN); a row with a NaN or
    // infinite logit takes the scalar terms below, which handle every kind.
    if (kind == kForwardKl && lse_state_is_finite(state_t) && lse_state_is_finite(state_s) &&
        (!hard || lse_state_is_finite(state_h))) {
      const acc_t soft_loss = forward_kl_row(i, logs, hard_logs, scales, grad, s, t, raw, g);
      return combine_losses(soft_weight * soft_loss, hard_term);
    }
    const int64_t y = hard ? target[i] : -1;
    auto term_at = [&](acc_t tj, acc_t sj) {
      return divergence_term(kind, beta, logs.lp(tj), logs.lq(sj), logs.lp_minus_lq(tj, sj));
    };
    // Sums of up to V terms, one element at a time: in double, or they lose digits at V = 128K.
    double loss = 0, row_s = 0;
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t, raw);
      for (int64_t j = 0; j < n; ++j) {
        const auto term = term_at(t[j], s[j]);
        loss += term.loss;
        row_s += term.q_g;
      }
    }
    const acc_t row_loss = combine_losses(soft_weight * acc_t(loss), hard_term);
    if (grad == nullptr) return row_loss;
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t, raw);
      const acc_t* hs = raw != nullptr ? raw : s;
      for (int64_t j = 0; j < n; ++j) {
        g[j] = divergence_grad(term_at(t[j], s[j]), acc_t(row_s), scales.soft);
        if (hard) {
          g[j] += distill_hard_grad(prob_from_log(hard_logs.log_prob(hs[j])), start + j == y,
                                    scales.hard);
        }
      }
      store_from_acc(g, grad + start, n);
    }
    return row_loss;
  }

  // The forward KL, vectorized: S = -1 is known, so loss and gradient come in one more pass.
  // Elements with p = 0 add nothing to the loss (a -inf teacher logit is not a NaN). Returns the
  // divergence; the gradient carries both terms.
  acc_t forward_kl_row(int64_t i, const LogSoftmaxPair<acc_t>& logs,
                       const LogSoftmaxRow<acc_t>& hard_logs, DistillScales<acc_t> scales,
                       scalar_t* grad, acc_t* s, acc_t* t, acc_t* raw, acc_t* g) const {
    using Vec = Vectorized<acc_t>;
    const simd::LogSoftmaxPair<acc_t> vlogs(logs);
    const Vec vscale(scales.soft), vhard_scale(scales.hard);
    const Vec vhard_max(hard_logs.max), vhard_log_sum(hard_logs.log_sum);
    const int64_t y = hard ? target[i] : -1;
    CompensatedSum<Vec> vloss;
    double loss = 0;
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t, raw);
      const acc_t* hs = raw != nullptr ? raw : s;
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        const Vec tj = Vec::loadu(t + j), sj = Vec::loadu(s + j);
        const Vec p = simd::prob_from_log(vlogs.lp(tj));
        vloss.add(simd::forward_kl_term(p, vlogs.lp_minus_lq(tj, sj)));
        // q only for the gradient: a forward alone saves one exp per element.
        if (grad != nullptr) {
          const Vec q = simd::prob_from_log(vlogs.lq(sj));
          Vec gj = simd::forward_kl_grad(p, q, vscale);
          if (hard) {
            // T == 1: the hard term's softmax is q.
            const Vec ph =
                raw != nullptr
                    ? simd::prob_from_log((Vec::loadu(hs + j) - vhard_max) - vhard_log_sum)
                    : q;
            gj = gj + vhard_scale * ph;
          }
          gj.store(g + j);
        }
      }
      for (; j < n; ++j) {
        const auto term =
            divergence_term(kind, beta, logs.lp(t[j]), logs.lq(s[j]), logs.lp_minus_lq(t[j], s[j]));
        loss += term.loss;
        g[j] = divergence_grad(term, acc_t(-1), scales.soft);
        if (hard) g[j] += scales.hard * prob_from_log(hard_logs.log_prob(hs[j]));
      }
      if (grad != nullptr) {
        // The target's -1 of the hard term, once per row.
        if (y >= start && y < start + n) g[y - start] -= scales.hard;
        store_from_acc(g, grad + start, n);
      }
    }
    return acc_t(loss + vloss.total());
  }

  // The hard term alone (soft_weight 0): the cross-entropy at temperature 1, two passes over the
  // student row; the teacher is not read.
  acc_t hard_row(int64_t i, acc_t hard_scale, acc_t hard_weight, scalar_t* grad, acc_t* h,
                 acc_t* g) const {
    const scalar_t* row = student + i * student_stride;
    LseState<acc_t> state = lse_empty<acc_t>();
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load_as_acc(row + start, h, n);
      state = lse_block(h, n, state);
    }
    const acc_t loss = hard_weight * hard_loss(i, state);
    if (grad == nullptr) return loss;
    const auto logs = log_softmax_row(state);
    const int64_t y = target[i];
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load_as_acc(row + start, h, n);
      for (int64_t j = 0; j < n; ++j) {
        g[j] = distill_hard_grad(prob_from_log(logs.log_prob(h[j])), start + j == y, hard_scale);
      }
      store_from_acc(g, grad + start, n);
    }
    return loss;
  }
};

template <typename scalar_t, typename acc_t>
DistillContext<scalar_t, acc_t> make_distill_context(const at::Tensor& student,
                                                     const at::Tensor& teacher,
                                                     const at::Tensor& target, int64_t ignore_index,
                                                     double temperature, DivergenceKind kind,
                                                     double beta, const DistillWeights& weights) {
  return {student.const_data_ptr<scalar_t>(),
          teacher.const_data_ptr<scalar_t>(),
          student.stride(0),
          teacher.stride(0),
          student.size(1),
          target.defined() ? target.const_data_ptr<int64_t>() : nullptr,
          ignore_index,
          static_cast<acc_t>(1.0 / temperature),
          kind,
          static_cast<acc_t>(beta),
          weights.soft != 0,
          weights.hard != 0,
          static_cast<acc_t>(1.0 / temperature) == acc_t(1)};
}

// The rows batchmean divides by (those whose target is not ignore_index). With the hard term on,
// every target must be a class index or ignore_index, as for cross_entropy.
int64_t counted_rows(const at::Tensor& target, int64_t rows, int64_t num_classes,
                     int64_t ignore_index, bool hard) {
  if (!target.defined()) return rows;
  const int64_t* t = target.const_data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < rows; ++i) {
    TORCH_CHECK_INDEX(!hard || target_is_valid(t[i], num_classes, ignore_index),
                      "distillation_loss: target[", i, "] = ", t[i],
                      " is out of range; expected a class index in [0, ", num_classes,
                      ") or ignore_index (", ignore_index, ")");
    count += t[i] != ignore_index;
  }
  return count;
}

// The per-row upstream gradient of the reduced loss (batchmean is reduction "mean" over the
// counted rows).
double row_upstream(Reduction reduction, double count) {
  return reduction == kReductionMean ? 1.0 / count : 1.0;
}

// Fills every row of [b, e): its loss when loss_out is not null, its gradient (for the row's
// upstream from upstream(i)) when grad_out is not null.
template <typename scalar_t, typename acc_t, typename Upstream>
void distill_rows(const DistillContext<scalar_t, acc_t>& ctx, const DistillWeights& weights,
                  int64_t rows, int64_t cols, acc_t* loss_out, scalar_t* grad_out,
                  Upstream&& scales_of) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / cols), [&](int64_t b, int64_t e) {
    const int64_t n = std::min(kDistillBlock, cols);
    std::vector<acc_t> s(n), t(n), h(n), g(n);
    for (int64_t i = b; i < e; ++i) {
      if (ctx.ignored(i)) {
        if (loss_out != nullptr) loss_out[i] = 0;
        if (grad_out != nullptr)
          std::fill(grad_out + i * cols, grad_out + (i + 1) * cols, scalar_t(0));
        continue;
      }
      const acc_t loss = ctx.row(i, scales_of(i), acc_t(weights.soft), acc_t(weights.hard),
                                 grad_out != nullptr ? grad_out + i * cols : nullptr, s.data(),
                                 t.data(), h.data(), g.data());
      if (loss_out != nullptr) loss_out[i] = loss;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_forward_cpu(
    const at::Tensor& student_in, const at::Tensor& teacher_in,
    const std::optional<at::Tensor>& target_in, int64_t ignore_index, double temperature,
    c10::string_view kind_name, double beta, double hard_weight, double soft_weight,
    c10::string_view reduction_name, bool compute_grad) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta, hard_weight,
                       soft_weight);
  const DistillWeights weights{hard_weight, soft_weight};
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const double count = double(counted_rows(target, rows, cols, ignore_index, weights.hard != 0));
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? empty_cpu_output({rows, cols}, student.options())
                                 : at::empty({0}, student.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_distill_context<scalar_t, acc_t>(
            student, teacher, target, ignore_index, temperature, kind, beta, weights);
        // The gradient of the reduced loss for an upstream of 1, the same for every row.
        const auto scales = distill_scales<acc_t, double>(row_upstream(reduction, count),
                                                          soft_weight, hard_weight, temperature);
        distill_rows(ctx, weights, rows, cols, row_loss.mutable_data_ptr<acc_t>(),
                     compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                     [&](int64_t) { return scales; });
      });
  const at::Tensor row_count = at::empty({}, student.options().dtype(acc_dtype)).fill_(count);
  // batchmean divides the sum by the counted rows: the same normalizer as reduction "mean".
  return {reduce_row_loss(row_loss, row_count, reduction, student.scalar_type()), row_count, grad};
}

at::Tensor distillation_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student_in,
                                     const at::Tensor& teacher_in,
                                     const std::optional<at::Tensor>& target_in,
                                     int64_t ignore_index, double temperature,
                                     c10::string_view kind_name, double beta, double hard_weight,
                                     double soft_weight, c10::string_view reduction_name,
                                     const at::Tensor& row_count) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta, hard_weight,
                       soft_weight);
  const DistillWeights weights{hard_weight, soft_weight};
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  if (weights.hard != 0) counted_rows(target, rows, cols, ignore_index, true);  // range check
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const at::Tensor upstream = upstream_per_row(grad_loss, row_count, reduction, rows, acc_dtype);
  at::Tensor grad = empty_cpu_output({rows, cols}, student.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_distill_context<scalar_t, acc_t>(
            student, teacher, target, ignore_index, temperature, kind, beta, weights);
        const acc_t* up = upstream.const_data_ptr<acc_t>();
        distill_rows(ctx, weights, rows, cols, static_cast<acc_t*>(nullptr),
                     grad.mutable_data_ptr<scalar_t>(), [&](int64_t i) {
                       return distill_scales<acc_t, acc_t>(up[i], acc_t(soft_weight),
                                                           acc_t(hard_weight), acc_t(temperature));
                     });
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("distillation_forward", &distillation_forward_cpu);
  m.impl("distillation_backward", &distillation_backward_cpu);
}

}  // namespace logitops

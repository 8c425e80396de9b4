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

  bool ignored(int64_t i) const { return target != nullptr && target[i] == ignore_index; }

  // Columns [start, start + n) of row i divided by T, into s and t.
  void load(int64_t i, int64_t start, int64_t n, acc_t* s, acc_t* t) const {
    load_as_acc(student + i * student_stride + start, s, n);
    load_as_acc(teacher + i * teacher_stride + start, t, n);
    using Vec = Vectorized<acc_t>;
    const Vec inv(inv_temperature);
    int64_t j = 0;
    for (; j + Vec::size() <= n; j += Vec::size()) {
      (Vec::loadu(s + j) * inv).store(s + j);
      (Vec::loadu(t + j) * inv).store(t + j);
    }
    for (; j < n; ++j) {
      s[j] *= inv_temperature;
      t[j] *= inv_temperature;
    }
  }

  // Returns the row's loss; writes the gradient (scale * dloss/dstudent) when grad is not null.
  acc_t row(int64_t i, acc_t scale, scalar_t* grad, acc_t* s, acc_t* t, acc_t* g) const {
    LseState<acc_t> state_s = lse_empty<acc_t>(), state_t = lse_empty<acc_t>();
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t);
      state_s = lse_block(s, n, state_s);
      state_t = lse_block(t, n, state_t);
    }
    const auto logs = log_softmax_pair(state_t, state_s);
    // The vector body needs finite states (fast_exp does not propagate NaN); a row with a NaN or
    // infinite logit takes the scalar terms below, which handle every kind.
    if (kind == kForwardKl && lse_state_is_finite(state_t) && lse_state_is_finite(state_s)) {
      return forward_kl_row(i, logs, scale, grad, s, t, g);
    }
    auto term_at = [&](acc_t tj, acc_t sj) {
      return divergence_term(kind, beta, logs.lp(tj), logs.lq(sj), logs.lp_minus_lq(tj, sj));
    };
    // Sums of up to V terms, one element at a time: in double, or they lose digits at V = 128K.
    double loss = 0, row_s = 0;
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t);
      for (int64_t j = 0; j < n; ++j) {
        const auto term = term_at(t[j], s[j]);
        loss += term.loss;
        row_s += term.q_g;
      }
    }
    if (grad == nullptr) return acc_t(loss);
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t);
      for (int64_t j = 0; j < n; ++j) {
        g[j] = divergence_grad(term_at(t[j], s[j]), acc_t(row_s), scale);
      }
      store_from_acc(g, grad + start, n);
    }
    return acc_t(loss);
  }

  // The forward KL, vectorized: S = -1 is known, so loss and gradient come in one more pass.
  // Elements with p = 0 add nothing to the loss (a -inf teacher logit is not a NaN).
  acc_t forward_kl_row(int64_t i, const LogSoftmaxPair<acc_t>& logs, acc_t scale, scalar_t* grad,
                       acc_t* s, acc_t* t, acc_t* g) const {
    using Vec = Vectorized<acc_t>;
    const simd::LogSoftmaxPair<acc_t> vlogs(logs);
    const Vec vscale(scale);
    CompensatedSum<Vec> vloss;
    double loss = 0;
    for (int64_t start = 0; start < num_classes; start += kDistillBlock) {
      const int64_t n = std::min(kDistillBlock, num_classes - start);
      load(i, start, n, s, t);
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        const Vec tj = Vec::loadu(t + j), sj = Vec::loadu(s + j);
        const Vec p = simd::prob_from_log(vlogs.lp(tj));
        vloss.add(simd::forward_kl_term(p, vlogs.lp_minus_lq(tj, sj)));
        // q only for the gradient: a forward alone saves one exp per element.
        if (grad != nullptr) {
          simd::forward_kl_grad(p, simd::prob_from_log(vlogs.lq(sj)), vscale).store(g + j);
        }
      }
      for (; j < n; ++j) {
        const auto term =
            divergence_term(kind, beta, logs.lp(t[j]), logs.lq(s[j]), logs.lp_minus_lq(t[j], s[j]));
        loss += term.loss;
        g[j] = divergence_grad(term, acc_t(-1), scale);
      }
      if (grad != nullptr) store_from_acc(g, grad + start, n);
    }
    return acc_t(loss + vloss.total());
  }
};

template <typename scalar_t, typename acc_t>
DistillContext<scalar_t, acc_t> make_distill_context(const at::Tensor& student,
                                                     const at::Tensor& teacher,
                                                     const at::Tensor& target, int64_t ignore_index,
                                                     double temperature, DivergenceKind kind,
                                                     double beta) {
  return {student.const_data_ptr<scalar_t>(),
          teacher.const_data_ptr<scalar_t>(),
          student.stride(0),
          teacher.stride(0),
          student.size(1),
          target.defined() ? target.const_data_ptr<int64_t>() : nullptr,
          ignore_index,
          static_cast<acc_t>(1.0 / temperature),
          kind,
          static_cast<acc_t>(beta)};
}

int64_t counted_rows(const at::Tensor& target, int64_t rows, int64_t ignore_index) {
  if (!target.defined()) return rows;
  const int64_t* t = target.const_data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < rows; ++i) count += t[i] != ignore_index;
  return count;
}

// The per-row upstream gradient of the reduced loss (batchmean is reduction "mean" over the
// counted rows).
double row_upstream(Reduction reduction, double count) {
  return reduction == kReductionMean ? 1.0 / count : 1.0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_forward_cpu(
    const at::Tensor& student_in, const at::Tensor& teacher_in,
    const std::optional<at::Tensor>& target_in, int64_t ignore_index, double temperature,
    c10::string_view kind_name, double beta, c10::string_view reduction_name, bool compute_grad) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta);
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const double count = double(counted_rows(target, rows, ignore_index));
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? empty_cpu_output({rows, cols}, student.options())
                                 : at::empty({0}, student.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_distill_context<scalar_t, acc_t>(
            student, teacher, target, ignore_index, temperature, kind, beta);
        // d loss / d student = upstream * d loss / d (student / T) / T.
        const acc_t scale = acc_t(row_upstream(reduction, count) / temperature);
        acc_t* loss_out = row_loss.mutable_data_ptr<acc_t>();
        scalar_t* grad_out = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / cols), [&](int64_t b, int64_t e) {
          const int64_t n = std::min(kDistillBlock, cols);
          std::vector<acc_t> s(n), t(n), g(n);
          for (int64_t i = b; i < e; ++i) {
            if (ctx.ignored(i)) {
              loss_out[i] = 0;
              if (grad_out != nullptr)
                std::fill(grad_out + i * cols, grad_out + (i + 1) * cols, scalar_t(0));
              continue;
            }
            loss_out[i] = ctx.row(i, scale, grad_out != nullptr ? grad_out + i * cols : nullptr,
                                  s.data(), t.data(), g.data());
          }
        });
      });
  const at::Tensor row_count = at::empty({}, student.options().dtype(acc_dtype)).fill_(count);
  // batchmean divides the sum by the counted rows: the same normalizer as reduction "mean".
  return {reduce_row_loss(row_loss, row_count, reduction, student.scalar_type()), row_count, grad};
}

at::Tensor distillation_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student_in,
                                     const at::Tensor& teacher_in,
                                     const std::optional<at::Tensor>& target_in,
                                     int64_t ignore_index, double temperature,
                                     c10::string_view kind_name, double beta,
                                     c10::string_view reduction_name, const at::Tensor& row_count) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta);
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const at::Tensor upstream = upstream_per_row(grad_loss, row_count, reduction, rows, acc_dtype);
  at::Tensor grad = empty_cpu_output({rows, cols}, student.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_distill_context<scalar_t, acc_t>(
            student, teacher, target, ignore_index, temperature, kind, beta);
        const acc_t* up = upstream.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / cols), [&](int64_t b, int64_t e) {
          const int64_t n = std::min(kDistillBlock, cols);
          std::vector<acc_t> s(n), t(n), g(n);
          for (int64_t i = b; i < e; ++i) {
            if (ctx.ignored(i)) {
              std::fill(grad_out + i * cols, grad_out + (i + 1) * cols, scalar_t(0));
              continue;
            }
            ctx.row(i, up[i] / acc_t(temperature), grad_out + i * cols, s.data(), t.data(),
                    g.data());
          }
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

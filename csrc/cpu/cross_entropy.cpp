// Cross-entropy on the CPU, with class-index and with class-probability targets: the row sweep of
// ce_rows.h, vectorized and parallel over rows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/logit_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/reduction.h"
#include "allocator.h"
#include "ce_rows.h"
#include "vec_math.h"
#include "vec_utils.h"

namespace logitops {
namespace {

using at::vec::Vectorized;

struct CrossEntropyArgs {
  int64_t ignore_index;
  double label_smoothing;
  double z_loss;
  double softcap;
};

template <typename scalar_t, typename acc_t>
CrossEntropyRows<scalar_t, acc_t> make_context(const at::Tensor& logits, const at::Tensor& target,
                                               const at::Tensor& weight_acc,
                                               const CrossEntropyArgs& a) {
  CrossEntropyRows<scalar_t, acc_t> ctx;
  ctx.num_classes = logits.size(1);
  ctx.row_stride = logits.stride(0);
  ctx.logits = logits.const_data_ptr<scalar_t>();
  ctx.target = target.defined() ? target.const_data_ptr<int64_t>() : nullptr;
  ctx.weight = weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr;
  ctx.weight_total = acc_t(ctx.num_classes);
  if (ctx.weight != nullptr) {
    double total = 0;
    for (const auto c : c10::irange(ctx.num_classes)) total += ctx.weight[c];
    ctx.weight_total = static_cast<acc_t>(total);
  }
  ctx.label_smoothing = static_cast<acc_t>(a.label_smoothing);
  ctx.z_loss = static_cast<acc_t>(a.z_loss);
  ctx.softcap = static_cast<acc_t>(a.softcap);
  ctx.ignore_index = a.ignore_index;
  return ctx;
}

// Validates every target (one O(N) sweep) and returns sum of w[target] over non-ignored rows:
// the normalizer of reduction="mean". Summed in double, in row order, so it is reproducible.
template <typename acc_t>
double validate_and_total_weight(const at::Tensor& target, const acc_t* weight, int64_t num_classes,
                                 int64_t ignore_index) {
  const int64_t* t = target.const_data_ptr<int64_t>();
  double total = 0;
  for (const auto i : c10::irange(target.size(0))) {
    TORCH_CHECK_INDEX(target_is_valid(t[i], num_classes, ignore_index), "cross_entropy: target[", i,
                      "] = ", t[i], " is out of range; expected a class index in [0, ", num_classes,
                      ") or ignore_index (", ignore_index, ")");
    if (t[i] != ignore_index) total += weight != nullptr ? double(weight[t[i]]) : 1.0;
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    double z_loss, double softcap, c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_inputs(logits_in, target_in, weight);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();

  at::Tensor lse = at::empty({num_rows}, logits.options().dtype(acc_dtype));
  at::Tensor total_weight = at::empty({}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? empty_cpu_output({num_rows, num_classes}, logits.options())
                                 : at::empty({0}, logits.options());
  at::Tensor row_loss = at::empty({num_rows}, logits.options().dtype(acc_dtype));
  const CrossEntropyArgs args{ignore_index, label_smoothing, z_loss, softcap};

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_context<scalar_t, acc_t>(logits, target, weight_acc, args);
        const double total =
            validate_and_total_weight<acc_t>(target, ctx.weight, num_classes, ignore_index);
        total_weight.fill_(total);
        // The fused gradient is that of the reduced loss for an upstream gradient of 1.
        const acc_t upstream = reduction == kReductionMean ? acc_t(1.0 / total) : acc_t(1);
        acc_t* lse_out = lse.mutable_data_ptr<acc_t>();
        acc_t* loss_out = row_loss.mutable_data_ptr<acc_t>();
        scalar_t* grad_out = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, num_rows, grain_rows(num_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, num_classes));
          for (int64_t i = begin; i < end; ++i) {
            const acc_t target_logit = ctx.target_logit(i);
            const acc_t shift = logit_sum_shift(target_logit);
            const auto [state, shifted_weighted_sum] =
                ctx.row_lse(i, shift, ctx.label_smoothing != acc_t(0), buf.data());
            const acc_t row_lse = lse_finalize(state);
            lse_out[i] = row_lse;
            const auto row = ctx.row_coefficients(i, row_lse);
            loss_out[i] = ctx.target[i] == ignore_index
                              ? acc_t(0)
                              : cross_entropy_row_loss(row, state, target_logit, ctx.weight_total,
                                                       shifted_weighted_sum, shift, ctx.z_loss);
            if (grad_out != nullptr) {
              ctx.row_grad(i, ctx.target[i], row_lse, row, upstream, acc_t(0),
                           grad_out + i * num_classes, buf.data());
            }
          }
        });
      });

  at::Tensor loss = reduce_row_loss(row_loss, total_weight, reduction, logits.scalar_type());
  return {loss, lse, total_weight, grad};
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_loss_in,
                                      const std::optional<at::Tensor>& grad_lse_in,
                                      const at::Tensor& logits_in, const at::Tensor& target_in,
                                      const std::optional<at::Tensor>& weight,
                                      const at::Tensor& lse_in, const at::Tensor& total_weight,
                                      int64_t ignore_index, double label_smoothing, double z_loss,
                                      double softcap, c10::string_view reduction_name) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_inputs(logits_in, target_in, weight);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor grad_loss =
      upstream_per_row(grad_loss_in, total_weight, reduction, num_rows, acc_dtype);
  const LseOperands lse_ops = lse_operands(lse_in, grad_lse_in, logits, "cross_entropy_backward");
  const at::Tensor& lse = lse_ops.lse;
  const at::Tensor& grad_lse = lse_ops.grad_lse;
  at::Tensor grad = empty_cpu_output({num_rows, num_classes}, logits.options());
  const CrossEntropyArgs args{ignore_index, label_smoothing, z_loss, softcap};

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_context<scalar_t, acc_t>(logits, target, weight_acc, args);
        validate_and_total_weight<acc_t>(target, ctx.weight, num_classes, ignore_index);
        const acc_t* up = grad_loss.const_data_ptr<acc_t>();
        const acc_t* up_lse = grad_lse.defined() ? grad_lse.const_data_ptr<acc_t>() : nullptr;
        const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, num_rows, grain_rows(num_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, num_classes));
          for (int64_t i = begin; i < end; ++i) {
            const auto row = ctx.row_coefficients(i, lse_ptr[i]);
            ctx.row_grad(i, ctx.target[i], lse_ptr[i], row, up[i],
                         up_lse != nullptr ? up_lse[i] : acc_t(0), grad_out + i * num_classes,
                         buf.data());
          }
        });
      });
  return grad;
}

// --- class-probability targets --------------------------------------------------------------

// Rows of logits and of probability targets (same dtype), read together block by block.
template <typename scalar_t, typename acc_t>
struct SoftRowContext {
  CrossEntropyRows<scalar_t, acc_t> logits;  // its label_smoothing is 0: the smoothing lives in a_c
  const scalar_t* target;
  int64_t target_stride;
  acc_t label_smoothing;

  // a_c of columns [start, start + n) into `coef`.
  void coefficients(int64_t i, int64_t start, int64_t n, acc_t* coef) const {
    using Vec = Vectorized<acc_t>;
    load_as_acc(target + i * target_stride + start, coef, n);
    const acc_t* w = logits.weight != nullptr ? logits.weight + start : nullptr;
    const Vec keep(acc_t(1) - label_smoothing),
        uniform(label_smoothing / acc_t(logits.num_classes));
    int64_t j = 0;
    for (; j + Vec::size() <= n; j += Vec::size()) {
      const Vec t = Vec::loadu(coef + j);
      (w != nullptr ? simd::soft_target_coef(t, Vec::loadu(w + j), keep, uniform)
                    : simd::soft_target_coef(t, keep, uniform))
          .store(coef + j);
    }
    for (; j < n; ++j) {
      coef[j] = soft_target_coef(coef[j], w != nullptr ? w[j] : acc_t(1), label_smoothing,
                                 logits.num_classes);
    }
  }

  // The shift of row i's weighted logit sum: its first (capped) logit when finite.
  acc_t row_shift(int64_t i) const {
    return logit_sum_shift(
        softcap_value(static_cast<acc_t>(logits.logits[i * logits.row_stride]), logits.softcap));
  }

  // (A, B) = (sum_c a_c, sum_c a_c (z_c - shift)) of row i, and its lse state when `lse` is not
  // null. Both sums are compensated (Kahan) in the vector lanes: the loss A * (lse - shift) - B
  // multiplies A's rounding error by lse - shift, which is large for widely spread logits.
  std::pair<acc_t, acc_t> sums(int64_t i, acc_t shift, acc_t* buf, acc_t* coef,
                               LseState<acc_t>* lse) const {
    using Vec = Vectorized<acc_t>;
    LseState<acc_t> state = lse_empty<acc_t>();
    CompensatedSum<Vec> va, vb;
    double a_sum = 0, b_sum = 0;
    const Vec vshift(shift);
    logits.for_each_block(i, buf, [&](const acc_t* z, int64_t start, int64_t n) {
      if (lse != nullptr) state = lse_block(z, n, state);
      coefficients(i, start, n, coef);
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        const Vec a = Vec::loadu(coef + j);
        va.add(a);
        vb.add(simd::soft_target_term(a, Vec::loadu(z + j), vshift));
      }
      for (; j < n; ++j) {
        a_sum += coef[j];
        b_sum += soft_target_term(coef[j], z[j], shift);
      }
    });
    a_sum += va.total();
    b_sum += vb.total();
    if (lse != nullptr) *lse = state;
    return {acc_t(a_sum), acc_t(b_sum)};
  }

  void row_grad(int64_t i, acc_t lse, acc_t a_sum, acc_t upstream, acc_t upstream_lse,
                scalar_t* grad_row, acc_t* buf, acc_t* coef) const {
    using Vec = Vectorized<acc_t>;
    const int64_t num_classes = logits.num_classes;
    if (lse != lse || lse == std::numeric_limits<acc_t>::infinity()) {
      std::fill(grad_row, grad_row + num_classes, scalar_t(NAN));
      return;
    }
    const acc_t z_loss = logits.z_loss, cap = logits.softcap, inv_cap = acc_t(1) / cap;
    const Vec vup(upstream), vinv_cap(inv_cap),
        vscale(soft_target_prob_scale(a_sum, lse, z_loss, upstream, upstream_lse));
    logits.for_each_block(i, buf, [&](const acc_t* z, int64_t start, int64_t n) {
      coefficients(i, start, n, coef);
      acc_t* out = buf;  // z may alias buf: each element is read before it is overwritten
      if constexpr (std::is_same_v<scalar_t, acc_t>) out = grad_row + start;
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        const Vec zj = Vec::loadu(z + j);
        Vec g = simd::soft_target_grad(simd::exp_shift(zj, lse), Vec::loadu(coef + j), vscale, vup);
        if (cap != acc_t(0)) g = g * simd::softcap_derivative_from_capped(zj, vinv_cap);
        g.store(out + j);
      }
      for (; j < n; ++j) {
        acc_t g = soft_target_grad(exp_shift(z[j], lse), coef[j], a_sum, lse, z_loss, upstream,
                                   upstream_lse);
        if (cap != acc_t(0)) g *= softcap_derivative_from_capped(z[j], inv_cap);
        out[j] = g;
      }
      if constexpr (!std::is_same_v<scalar_t, acc_t>) store_from_acc(buf, grad_row + start, n);
    });
  }
};

template <typename scalar_t, typename acc_t>
SoftRowContext<scalar_t, acc_t> make_soft_context(const at::Tensor& logits,
                                                  const at::Tensor& target,
                                                  const at::Tensor& weight_acc,
                                                  double label_smoothing, double z_loss,
                                                  double softcap) {
  // The dummy index target is never read: only load_block and the weights are used.
  const CrossEntropyArgs args{-100, 0.0, z_loss, softcap};
  auto base = make_context<scalar_t, acc_t>(logits, at::Tensor(), weight_acc, args);
  return {base, target.const_data_ptr<scalar_t>(), target.stride(0),
          static_cast<acc_t>(label_smoothing)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_probs_forward_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, double label_smoothing, double z_loss, double softcap,
    c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_probs_inputs(logits_in, target_in, weight);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t num_rows = logits.size(0), num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  at::Tensor lse = at::empty({num_rows}, logits.options().dtype(acc_dtype));
  at::Tensor row_loss = at::empty({num_rows}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? empty_cpu_output({num_rows, num_classes}, logits.options())
                                 : at::empty({0}, logits.options());
  const at::Tensor count = at::empty({}, logits.options().dtype(acc_dtype)).fill_(double(num_rows));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_probs_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_soft_context<scalar_t, acc_t>(logits, target, weight_acc,
                                                            label_smoothing, z_loss, softcap);
        const acc_t upstream =
            reduction == kReductionMean ? acc_t(1.0 / double(num_rows)) : acc_t(1);
        acc_t* lse_out = lse.mutable_data_ptr<acc_t>();
        acc_t* loss_out = row_loss.mutable_data_ptr<acc_t>();
        scalar_t* grad_out = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, num_rows, grain_rows(num_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, num_classes)), coef(buf.size());
          for (int64_t i = begin; i < end; ++i) {
            LseState<acc_t> state;
            const acc_t shift = ctx.row_shift(i);
            const auto [a_sum, b_sum] = ctx.sums(i, shift, buf.data(), coef.data(), &state);
            const acc_t row_lse = lse_finalize(state);
            lse_out[i] = row_lse;
            loss_out[i] = soft_target_loss(state, a_sum, b_sum, shift, ctx.logits.z_loss);
            if (grad_out != nullptr) {
              ctx.row_grad(i, row_lse, a_sum, upstream, acc_t(0), grad_out + i * num_classes,
                           buf.data(), coef.data());
            }
          }
        });
      });
  return {reduce_row_loss(row_loss, count, reduction, logits.scalar_type()), lse, grad};
}

at::Tensor cross_entropy_probs_backward_cpu(
    const at::Tensor& grad_loss_in, const std::optional<at::Tensor>& grad_lse_in,
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse_in, double label_smoothing,
    double z_loss, double softcap, c10::string_view reduction_name) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_probs_inputs(logits_in, target_in, weight);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t num_rows = logits.size(0), num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor count = at::empty({}, logits.options().dtype(acc_dtype)).fill_(double(num_rows));
  const at::Tensor grad_loss =
      upstream_per_row(grad_loss_in, count, reduction, num_rows, acc_dtype);
  const LseOperands lse_ops =
      lse_operands(lse_in, grad_lse_in, logits, "cross_entropy_probs_backward");
  const at::Tensor& lse = lse_ops.lse;
  const at::Tensor& grad_lse = lse_ops.grad_lse;
  at::Tensor grad = empty_cpu_output({num_rows, num_classes}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_probs_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx = make_soft_context<scalar_t, acc_t>(logits, target, weight_acc,
                                                            label_smoothing, z_loss, softcap);
        const acc_t* up = grad_loss.const_data_ptr<acc_t>();
        const acc_t* up_lse = grad_lse.defined() ? grad_lse.const_data_ptr<acc_t>() : nullptr;
        const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, num_rows, grain_rows(num_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kRowBlock, num_classes)), coef(buf.size());
          for (int64_t i = begin; i < end; ++i) {
            const acc_t a_sum = ctx.sums(i, acc_t(0), buf.data(), coef.data(), nullptr).first;
            ctx.row_grad(i, lse_ptr[i], a_sum, up[i], up_lse != nullptr ? up_lse[i] : acc_t(0),
                         grad_out + i * num_classes, buf.data(), coef.data());
          }
        });
      });
  return grad;
}

}  // namespace

namespace {

// grad *= scale in place unless scale is 1 (as the CUDA kernel: the product in the accumulation
// dtype, rounded once). Reading the scale costs nothing on the CPU.
void scale_gradient_cpu(at::Tensor& grad, const at::Tensor& scale) {
  check_scale_gradient_inputs(grad, scale);
  const double factor = scale.to(at::kDouble).item<double>();
  if (factor != 1.0 && grad.numel() > 0) grad.mul_(factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("scale_gradient_", &scale_gradient_cpu);
  m.impl("cross_entropy_forward", &cross_entropy_forward_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
  m.impl("cross_entropy_probs_forward", &cross_entropy_probs_forward_cpu);
  m.impl("cross_entropy_probs_backward", &cross_entropy_probs_backward_cpu);
}

}  // namespace logitops

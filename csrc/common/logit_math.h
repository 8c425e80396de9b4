// Math shared by the CPU and CUDA kernels. Torch-free on purpose: nvcc compiles it without ATen,
// and the CPU tests exercise exactly the formulas the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.h"
#include "modes.h"

namespace logitops {

// Running state of a log-sum-exp: sum_i exp(x_i) = sum * exp(max).
// An empty state (or a row of -inf) has max = -inf and sum = 0.
template <typename acc_t>
struct LseState {
  acc_t max;
  acc_t sum;
};

template <typename acc_t>
LOGITOPS_HD LseState<acc_t> lse_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
}

// exp(a - b) where a <= b, defined as 0 when both are -inf (instead of exp(NaN)).
template <typename acc_t>
LOGITOPS_HD acc_t exp_shift(acc_t a, acc_t b) {
  return (b == -std::numeric_limits<acc_t>::infinity()) ? acc_t(0) : std::exp(a - b);
}

// Merge two partial states (Milakov & Gimelshein 2018). Used to combine lanes, blocks of a row,
// warps, thread blocks or ranks: the order of merges changes only rounding.
template <typename acc_t>
LOGITOPS_HD LseState<acc_t> lse_merge(LseState<acc_t> a, LseState<acc_t> b) {
  // NaN in either max must survive: comparisons with NaN are false, so test explicitly.
  if (a.max != a.max || b.max != b.max) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    return {nan, nan};
  }
  const acc_t m = a.max > b.max ? a.max : b.max;
  if (m == std::numeric_limits<acc_t>::infinity()) return {m, acc_t(1)};
  return {m, a.sum * exp_shift(a.max, m) + b.sum * exp_shift(b.max, m)};
}

template <typename acc_t>
LOGITOPS_HD LseState<acc_t> lse_push(LseState<acc_t> s, acc_t x) {
  return lse_merge(s, LseState<acc_t>{x, acc_t(1)});
}

// log(sum_i exp(x_i)); -inf for an empty or all -inf row; +inf if any x is +inf.
template <typename acc_t>
LOGITOPS_HD acc_t lse_finalize(LseState<acc_t> s) {
  if (s.max == -std::numeric_limits<acc_t>::infinity()) return s.max;
  if (s.max == std::numeric_limits<acc_t>::infinity()) return s.max;
  return s.max + std::log(s.sum);
}

// lse - z, with the max and log(sum) kept apart: (max - z) + log(sum). Rounding the lse to one
// number first would lose the digits that lse and z share (a row whose logits all lie near its
// lse, such as a row of -1e4: fp32's lse there is only good to 1e-3).
template <typename acc_t>
LOGITOPS_HD bool lse_state_is_finite(LseState<acc_t> s) {
  return s.max > -std::numeric_limits<acc_t>::infinity() &&
         s.max < std::numeric_limits<acc_t>::infinity();
}

template <typename acc_t>
LOGITOPS_HD acc_t lse_minus(LseState<acc_t> s, acc_t z) {
  if (!lse_state_is_finite(s)) return lse_finalize(s) - z;  // -inf, +inf or NaN: no digits
  return (s.max - z) + std::log(s.sum);
}

// The offset subtracted from every logit in a weighted logit sum sum_c a_c (z_c - shift): a
// finite logit of the row (the target's, or the first), so that A * (lse - shift) -
// sum_c a_c (z_c - shift) does not cancel a large A * lse against sum_c a_c z_c. 0 when that
// logit is not finite.
template <typename acc_t>
LOGITOPS_HD acc_t logit_sum_shift(acc_t logit) {
  return (logit > -std::numeric_limits<acc_t>::infinity() &&
          logit < std::numeric_limits<acc_t>::infinity())
             ? logit
             : acc_t(0);
}

// The log-sum-exp in double, max + log(sum) rounded once: a statistic that is combined later
// (across ranks) keeps the digits that rounding the lse to acc_t would lose.
template <typename acc_t>
LOGITOPS_HD double lse_finalize_wide(LseState<acc_t> s) {
  if (!lse_state_is_finite(s)) return double(lse_finalize(s));
  return double(s.max) + std::log(double(s.sum));
}

// Logit soft-capping (Gemma 2): cap * tanh(z / cap). cap <= 0 disables it.
template <typename acc_t>
LOGITOPS_HD acc_t softcap_value(acc_t z, acc_t cap) {
  return cap > acc_t(0) ? cap * std::tanh(z / cap) : z;
}

// d softcap_value / dz = 1 - tanh^2(z / cap).
template <typename acc_t>
LOGITOPS_HD acc_t softcap_derivative(acc_t z, acc_t cap) {
  if (!(cap > acc_t(0))) return acc_t(1);
  const acc_t t = std::tanh(z / cap);
  return acc_t(1) - t * t;
}

// The same derivative from the capped value c = softcap_value(z, cap): tanh(z / cap) = c / cap,
// so 1 - (c * inv_cap)^2 with inv_cap = 1 / cap, which saves a second tanh. For a cap that is on:
// the caller keeps the factor 1 of a cap that is off.
template <typename acc_t>
LOGITOPS_HD acc_t softcap_derivative_from_capped(acc_t capped, acc_t inv_cap) {
  const acc_t t = capped * inv_cap;
  return acc_t(1) - t * t;
}

// Per-row coefficients of the cross-entropy with class-index targets.
//
// With p = softmax(z), weight w (all ones when absent), smoothing eps over C classes and target y:
//   loss = (1 - eps) * w_y * (lse - z_y) + eps / C * (W * lse - sum_c w_c z_c) + z_loss * lse^2
//   dloss/dz_j = p_j * A - b_j,   A = (1 - eps) * w_y + eps / C * W + 2 * z_loss * lse,
//                                 b_j = (1 - eps) * w_y * [j == y] + eps / C * w_j
// where W = sum_c w_c. This is PyTorch's label-smoothed, weighted loss (LossNLL.cpp) per row,
// plus the z-loss of PaLM. Both kernels evaluate exactly these expressions.
template <typename acc_t>
struct CrossEntropyRow {
  acc_t target_coef;  // (1 - eps) * w_y
  acc_t smooth_coef;  // eps / C
  acc_t grad_scale;   // A above
};

// An ignored row contributes no loss and no gradient, smoothing and z-loss included.
template <typename acc_t>
LOGITOPS_HD CrossEntropyRow<acc_t> cross_entropy_ignored_row() {
  return {acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
LOGITOPS_HD CrossEntropyRow<acc_t> cross_entropy_row(acc_t lse, acc_t target_weight,
                                                     acc_t weight_total, acc_t label_smoothing,
                                                     int64_t num_classes, acc_t z_loss) {
  CrossEntropyRow<acc_t> row;
  row.target_coef = (acc_t(1) - label_smoothing) * target_weight;
  row.smooth_coef = label_smoothing / acc_t(num_classes);
  row.grad_scale = row.target_coef + row.smooth_coef * weight_total + acc_t(2) * z_loss * lse;
  return row;
}

// Loss of one row from its log-sum-exp state. target_logit and shifted_weighted_sum
// (sum_c w_c (z_c - shift), shift = logit_sum_shift(target_logit), or 0) are of the capped
// logits. The smoothing term is skipped when eps == 0 so that a -inf logit elsewhere cannot turn
// the loss into 0 * inf = NaN.
template <typename acc_t>
LOGITOPS_HD acc_t cross_entropy_row_loss(const CrossEntropyRow<acc_t>& row, LseState<acc_t> state,
                                         acc_t target_logit, acc_t weight_total,
                                         acc_t shifted_weighted_sum, acc_t shift, acc_t z_loss) {
  acc_t loss = row.target_coef * lse_minus(state, target_logit);
  if (row.smooth_coef != acc_t(0)) {
    loss += row.smooth_coef * (weight_total * lse_minus(state, shift) - shifted_weighted_sum);
  }
  if (z_loss != acc_t(0)) {
    const acc_t lse = lse_finalize(state);
    loss += z_loss * lse * lse;
  }
  return loss;
}

// upstream * coef, except that a zero coefficient stays zero for an infinite upstream (a mean
// over no rows divides by 0): how every coefficient of a cross-entropy gradient is scaled.
template <typename acc_t>
LOGITOPS_HD acc_t upstream_scaled(acc_t upstream, acc_t coef) {
  return coef == acc_t(0) ? acc_t(0) : upstream * coef;
}

// The factor of p_j in a row's gradient: g * A + g_lse, with g the upstream gradient of the row's
// loss and g_lse that of its lse.
template <typename acc_t>
LOGITOPS_HD acc_t cross_entropy_prob_scale(const CrossEntropyRow<acc_t>& row, acc_t upstream,
                                           acc_t upstream_lse) {
  return upstream_scaled(upstream, row.grad_scale) + upstream_lse;
}

// Whether a row's gradient is zero whatever its logits (an ignored row, or one whose upstream
// gradients are zero), with the zero coefficients of upstream_scaled. Every kernel decides with
// this, so an ignored row with a NaN or +inf logit gets zeros on every device.
template <typename acc_t>
LOGITOPS_HD bool cross_entropy_row_grad_is_zero(const CrossEntropyRow<acc_t>& row, acc_t upstream,
                                                acc_t upstream_lse) {
  return cross_entropy_prob_scale(row, upstream, upstream_lse) == acc_t(0) &&
         upstream_scaled(upstream, row.smooth_coef) == acc_t(0) && row.target_coef == acc_t(0);
}

// Gradient of one element of the capped logits: p_j * (g * A + g_lse) - g * b_j, with
// p_j = exp(z_j - lse). The caller multiplies by the soft-cap's derivative when it is on.
template <typename acc_t>
LOGITOPS_HD acc_t cross_entropy_grad(const CrossEntropyRow<acc_t>& row, acc_t upstream,
                                     acc_t upstream_lse, acc_t prob, bool is_target,
                                     acc_t class_weight) {
  acc_t b = row.smooth_coef * class_weight;
  if (is_target) b += row.target_coef;
  return prob * cross_entropy_prob_scale(row, upstream, upstream_lse) -
         upstream_scaled(upstream, b);
}

// Class-probability targets t (PyTorch's cross_entropy_loss_prob_target), per row, with
// a_c = w_c * ((1 - eps) * t_c + eps / C) (w all ones when absent):
//   loss = sum_c a_c (lse - z_c) + z_loss * lse^2 = A * lse - B + z_loss * lse^2 (formed with the
//          logits shifted, see soft_target_loss),
//   dloss/dz_j = p_j * (A + 2 * z_loss * lse) - a_j,   A = sum_c a_c,  B = sum_c a_c z_c,
// where a_c = 0 contributes nothing to B even for z_c = -inf (PyTorch gives NaN there).
template <typename acc_t>
LOGITOPS_HD acc_t soft_target_coef(acc_t prob, acc_t class_weight, acc_t label_smoothing,
                                   int64_t num_classes) {
  return class_weight *
         ((acc_t(1) - label_smoothing) * prob + label_smoothing / acc_t(num_classes));
}

// a_c (z_c - shift), shift = logit_sum_shift(the row's first logit): B is accumulated shifted.
template <typename acc_t>
LOGITOPS_HD acc_t soft_target_term(acc_t coef, acc_t z, acc_t shift) {
  return coef == acc_t(0) ? acc_t(0) : coef * (z - shift);
}

// A * (lse - shift) - sum_c a_c (z_c - shift) + z_loss lse^2, lse - shift by lse_minus.
template <typename acc_t>
LOGITOPS_HD acc_t soft_target_loss(LseState<acc_t> state, acc_t coef_sum,
                                   acc_t shifted_weighted_sum, acc_t shift, acc_t z_loss) {
  acc_t loss = coef_sum * lse_minus(state, shift) - shifted_weighted_sum;
  if (z_loss != acc_t(0)) {
    const acc_t lse = lse_finalize(state);
    loss += z_loss * lse * lse;
  }
  return loss;
}

// The factor of p_j in a row's gradient: g * (A + 2 z_loss lse) + g_lse.
template <typename acc_t>
LOGITOPS_HD acc_t soft_target_prob_scale(acc_t coef_sum, acc_t lse, acc_t z_loss, acc_t upstream,
                                         acc_t upstream_lse) {
  return upstream * (coef_sum + acc_t(2) * z_loss * lse) + upstream_lse;
}

// p_j * (g * (A + 2 z_loss lse) + g_lse) - g * a_j, before the soft-cap factor.
template <typename acc_t>
LOGITOPS_HD acc_t soft_target_grad(acc_t prob, acc_t coef, acc_t coef_sum, acc_t lse, acc_t z_loss,
                                   acc_t upstream, acc_t upstream_lse) {
  return prob * soft_target_prob_scale(coef_sum, lse, z_loss, upstream, upstream_lse) -
         upstream * coef;
}

// Distillation divergences between P = softmax(t) (teacher) and Q = softmax(s) (student), both
// already divided by the temperature, for one element j with lp = t_j - lse_t, lq = s_j - lse_s:
//   forward KL(P || Q):   term = p (lp - lq)
//   reverse KL(Q || P):   term = q (lq - lp)
//   JSD_beta:             term = beta p (lp - lm) + (1 - beta) q (lq - lm), M = beta P + (1 - beta)
//   Q,
//                         lm = log M_j computed in log space (no log of an underflowed mixture).
// The row's loss is sum_j term. Its gradient with respect to s is q_j (g_j - S), S = sum_i q_i g_i,
// where q g is: -p (forward; then S = -1), q (lq - lp) (reverse), (1 - beta) q (lq - lm) (JSD).
// beta = 0 and 1 are the forward and reverse KL exactly (the JSD formula tends to 0 there).
// The kind is a DivergenceKind (modes.h).

template <typename acc_t>
struct DivergenceTerm {
  acc_t loss;  // the element's share of the row's divergence
  acc_t q_g;   // q_j * g_j
  acc_t q;     // q_j
};

// The log-softmax of a teacher row t and a student row s from their log-sum-exp states, with
// the max and log(sum) of each kept apart (as PyTorch's log_softmax), and lp - lq as
// ((t - max_t) - (s - max_s)) - log(sum_t / sum_s): the divergences weigh lp - lq, whose digits
// a difference of two rounded lse (or of two logits far apart) would cost.
template <typename acc_t>
struct LogSoftmaxPair {
  acc_t max_t, log_sum_t, max_s, log_sum_s, log_sum_ratio;

  LOGITOPS_HD acc_t lp(acc_t t) const { return (t - max_t) - log_sum_t; }
  LOGITOPS_HD acc_t lq(acc_t s) const { return (s - max_s) - log_sum_s; }
  LOGITOPS_HD acc_t lp_minus_lq(acc_t t, acc_t s) const {
    return ((t - max_t) - (s - max_s)) - log_sum_ratio;
  }
};

template <typename acc_t>
LOGITOPS_HD LogSoftmaxPair<acc_t> log_softmax_pair(LseState<acc_t> teacher,
                                                   LseState<acc_t> student) {
  LogSoftmaxPair<acc_t> out;
  const bool finite_t = lse_state_is_finite(teacher), finite_s = lse_state_is_finite(student);
  // A non-finite state (all -inf, +inf or NaN) folds into max and leaves log(sum) at 0, so
  // lp = t - lse as before.
  out.max_t = finite_t ? teacher.max : lse_finalize(teacher);
  out.log_sum_t = finite_t ? std::log(teacher.sum) : acc_t(0);
  out.max_s = finite_s ? student.max : lse_finalize(student);
  out.log_sum_s = finite_s ? std::log(student.sum) : acc_t(0);
  out.log_sum_ratio =
      (finite_t && finite_s) ? std::log(teacher.sum / student.sum) : out.log_sum_t - out.log_sum_s;
  return out;
}

// log(e^a + e^b) from the larger term, so nothing overflows or underflows.
template <typename acc_t>
LOGITOPS_HD acc_t log_add_exp(acc_t a, acc_t b) {
  const acc_t hi = a > b ? a : b, lo = a > b ? b : a;
  if (hi == -std::numeric_limits<acc_t>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

// A probability from its log: exp(lp), exactly 0 for lp = -inf.
template <typename acc_t>
LOGITOPS_HD acc_t prob_from_log(acc_t lp) {
  return lp == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(lp);
}

// p d, the forward KL's term: 0 where p = 0, so a -inf teacher logit (d = -inf) is not a NaN.
template <typename acc_t>
LOGITOPS_HD acc_t forward_kl_term(acc_t p, acc_t d) {
  return p > acc_t(0) ? p * d : acc_t(0);
}

// One element's term from lp, lq and d = lp - lq (from LogSoftmaxPair). For the JSD,
// lp - lm = -log(beta + (1 - beta) e^-d) and lq - lm = -log(beta e^d + (1 - beta)), in log space:
// functions of d alone, so no log M of an underflowed mixture and no lost digits.
template <typename acc_t>
LOGITOPS_HD DivergenceTerm<acc_t> divergence_term(DivergenceKind kind, acc_t beta, acc_t lp,
                                                  acc_t lq, acc_t d) {
  const acc_t p = prob_from_log(lp);
  const acc_t q = prob_from_log(lq);
  DivergenceTerm<acc_t> out{acc_t(0), acc_t(0), q};
  if (kind == kForwardKl) {
    out.loss = forward_kl_term(p, d);
    out.q_g = -p;
  } else if (kind == kReverseKl) {
    if (q > acc_t(0)) out.loss = -q * d;
    out.q_g = out.loss;
  } else {
    const acc_t log_beta = std::log(beta), log_rest = std::log(acc_t(1) - beta);
    const acc_t from_p = p > acc_t(0) ? -beta * p * log_add_exp(log_beta, log_rest - d) : acc_t(0);
    const acc_t from_q =
        q > acc_t(0) ? -(acc_t(1) - beta) * q * log_add_exp(log_beta + d, log_rest) : acc_t(0);
    out.loss = from_p + from_q;
    out.q_g = from_q;
  }
  return out;
}

// The row's S = sum_i q_i g_i for the gradient: -1 for the forward KL, else the accumulated sum.
template <typename acc_t>
LOGITOPS_HD acc_t divergence_grad(const DivergenceTerm<acc_t>& term, acc_t row_s, acc_t scale) {
  return scale * (term.q_g - term.q * row_s);
}

// Distillation's hard term: hard_weight times the cross-entropy at temperature 1 of the student
// row s against the target y, beside the soft term (the divergence at T, weighted by
// soft_weight). Per row, loss = hard_weight (lse(s) - s_y) + soft_weight divergence; per element,
// d loss / d s_j = hard_weight (softmax(s)_j - [j == y]) + soft_weight / T d divergence / d (s_j /
// T). A weight of 0 drops its term outright (no 0 * inf = NaN from the other softmax's row).
//
// The student's log-softmax at temperature 1, max and log(sum) kept apart (LogSoftmaxPair's rule).
template <typename acc_t>
struct LogSoftmaxRow {
  acc_t max, log_sum;

  LOGITOPS_HD acc_t log_prob(acc_t z) const { return (z - max) - log_sum; }
};

template <typename acc_t>
LOGITOPS_HD LogSoftmaxRow<acc_t> log_softmax_row(LseState<acc_t> state) {
  const bool finite = lse_state_is_finite(state);
  return {finite ? state.max : lse_finalize(state), finite ? std::log(state.sum) : acc_t(0)};
}

// The hard term's gradient at one element, hard_scale = upstream * hard_weight: hard_scale (p_j -
// [j == y]), p_j the student's softmax at temperature 1.
template <typename acc_t>
LOGITOPS_HD acc_t distill_hard_grad(acc_t prob, bool is_target, acc_t hard_scale) {
  return hard_scale * (is_target ? prob - acc_t(1) : prob);
}

// The row's scales of the two terms' gradients from its upstream gradient: the soft term's
// upstream * soft_weight / T (d / d s = d / d (s / T) / T) and the hard term's upstream *
// hard_weight, computed in math_t and rounded once: the forward's in double, the backward's in
// acc_t. With soft_weight 1 the soft scale is exactly the upstream / T of the divergence alone.
template <typename acc_t>
struct DistillScales {
  acc_t soft;
  acc_t hard;
};

template <typename acc_t, typename math_t>
LOGITOPS_HD DistillScales<acc_t> distill_scales(math_t upstream, math_t soft_weight,
                                                math_t hard_weight, math_t temperature) {
  return {static_cast<acc_t>(upstream * soft_weight / temperature),
          static_cast<acc_t>(upstream * hard_weight)};
}

// A class-index target is valid when it is ignore_index or in [0, num_classes).
LOGITOPS_HD bool target_is_valid(int64_t target, int64_t num_classes, int64_t ignore_index) {
  return target == ignore_index || (target >= 0 && target < num_classes);
}

// Binary cross-entropy with logits of one element, in the stable form of PyTorch's
// BCEWithLogitsLoss: with l_w = 1 + (pos_weight - 1) * y and softplus(-z) = log1p(e) + max(-z, 0),
// e = exp(-|z|),
//   loss  = (1 - y) * z + l_w * softplus(-z)
//   dloss/dz = (1 - y) - l_w * sigmoid(-z)
// Finite for any finite z (no exp of a positive number, no log of 0). pos_weight = 1 is "none".
template <typename acc_t>
struct BceTerms {
  acc_t loss;
  acc_t grad;
};

// e = exp(-|z|): never the exp of a positive number.
template <typename acc_t>
LOGITOPS_HD acc_t exp_neg_abs(acc_t z) {
  return std::exp(-std::fabs(z));
}

// softplus(-z) = log(1 + exp(-z)) = log1p(e) + max(-z, 0) from e = exp_neg_abs(z).
template <typename acc_t>
LOGITOPS_HD acc_t softplus_neg(acc_t z, acc_t e) {
  return std::log1p(e) + (z < acc_t(0) ? -z : acc_t(0));
}

// l_w = 1 + (pos_weight - 1) * y.
template <typename acc_t>
LOGITOPS_HD acc_t bce_log_weight(acc_t y, acc_t pos_weight) {
  return acc_t(1) + (pos_weight - acc_t(1)) * y;
}

// The loss from z, y, l_w and softplus = softplus_neg(z, e).
template <typename acc_t>
LOGITOPS_HD acc_t bce_loss(acc_t z, acc_t y, acc_t log_weight, acc_t softplus) {
  return (acc_t(1) - y) * z + log_weight * softplus;
}

// The gradient from z, y, l_w and e = exp_neg_abs(z): sigmoid(-z) = e / (1 + e) for z >= 0, else
// 1 / (1 + e). A NaN logit gives a NaN gradient.
template <typename acc_t>
LOGITOPS_HD acc_t bce_grad(acc_t z, acc_t y, acc_t log_weight, acc_t e) {
  const acc_t r = acc_t(1) / (acc_t(1) + e);
  const acc_t sigmoid_neg = z >= acc_t(0) ? e * r : r;
  return (z != z) ? z : (acc_t(1) - y) - log_weight * sigmoid_neg;
}

template <typename acc_t>
LOGITOPS_HD BceTerms<acc_t> bce_with_logits(acc_t z, acc_t y, acc_t pos_weight) {
  const acc_t e = exp_neg_abs(z);
  // softplus before bce_grad's division: in the other order the float64 CUDA kernel spills.
  const acc_t softplus = softplus_neg(z, e);
  const acc_t log_weight = bce_log_weight(y, pos_weight);
  const acc_t grad = bce_grad(z, y, log_weight, e);
  return {bce_loss(z, y, log_weight, softplus), grad};
}

// d loss / d y, for targets that require grad: -z + (pos_weight - 1) * softplus(-z).
template <typename acc_t>
LOGITOPS_HD acc_t bce_with_logits_target_grad(acc_t z, acc_t pos_weight) {
  return -z + (pos_weight - acc_t(1)) * softplus_neg(z, exp_neg_abs(z));
}

}  // namespace logitops

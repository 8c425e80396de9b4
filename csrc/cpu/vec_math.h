// Vector twins of the per-element formulas of common/logit_math.h, for the SIMD bodies of the CPU
// kernels. Each function here has the name of its scalar twin (logitops::simd::f mirrors
// logitops::f) and evaluates the same expression on a vector of elements, with the factors that
// are the same for a whole row passed in once; the kernels run the scalar twin on the elements of
// a row that do not fill a vector. The two agree up to rounding: fast_exp and log1p_unit stand
// for exp and log1p, division by a cap is multiplication by its inverse, and products may be
// formed in another order. tests/cpu/vec_math_test.cpp holds each twin to its scalar formula on
// random and edge inputs (-inf, +inf, NaN, huge, 0).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <limits>

#include "../common/logit_math.h"
#include "vec_utils.h"

namespace logitops {
namespace simd {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

// --- soft-capping ------------------------------------------------------------------------------

// softcap_value for a cap that is on: cap * tanh(z * inv_cap).
template <typename acc_t>
Vec<acc_t> softcap_value(const Vec<acc_t>& z, const Vec<acc_t>& cap, const Vec<acc_t>& inv_cap) {
  return cap * (z * inv_cap).tanh();
}

// softcap_derivative_from_capped: 1 - (capped * inv_cap)^2.
template <typename acc_t>
Vec<acc_t> softcap_derivative_from_capped(const Vec<acc_t>& capped, const Vec<acc_t>& inv_cap) {
  const Vec<acc_t> t = capped * inv_cap;
  return Vec<acc_t>(acc_t(1)) - t * t;
}

// --- probabilities -----------------------------------------------------------------------------

// exp_shift(a, b) for a b shared by the vector (a row's lse): exp(a - b), exactly 0 for b = -inf.
// a - b must not be NaN (fast_exp does not propagate it): a NaN logit makes the row's lse NaN,
// which the kernels handle before.
template <typename acc_t>
Vec<acc_t> exp_shift(const Vec<acc_t>& a, acc_t b) {
  if (b == -std::numeric_limits<acc_t>::infinity()) return Vec<acc_t>(acc_t(0));
  return fast_exp(a - Vec<acc_t>(b));
}

// prob_from_log: exp(lp), 0 for lp = -inf. lp must not be NaN, as for exp_shift.
template <typename acc_t>
Vec<acc_t> prob_from_log(const Vec<acc_t>& lp) {
  return fast_exp(lp);
}

// --- cross-entropy with class-index targets ----------------------------------------------------

// cross_entropy_grad for a class other than the target: p_j * prob_scale - smooth_weight_j, from
// the row's prob_scale = cross_entropy_prob_scale(row, g, g_lse) and
// smooth_weight_j = upstream_scaled(g, eps / C) * w_j (w_j = 1 without class weights; the scalar
// twin rounds g * (eps / C * w_j)). The caller subtracts the target's g (1 - eps) w_y.
template <typename acc_t>
Vec<acc_t> cross_entropy_grad(const Vec<acc_t>& prob, const Vec<acc_t>& prob_scale,
                              const Vec<acc_t>& smooth_weight) {
  return prob * prob_scale - smooth_weight;
}

// --- cross-entropy with class-probability targets ----------------------------------------------

// soft_target_coef without class weights, from keep = 1 - eps and uniform = eps / C:
// prob * keep + uniform.
template <typename acc_t>
Vec<acc_t> soft_target_coef(const Vec<acc_t>& prob, const Vec<acc_t>& keep,
                            const Vec<acc_t>& uniform) {
  return prob * keep + uniform;
}

// soft_target_coef with class weights: (prob * keep + uniform) * w.
template <typename acc_t>
Vec<acc_t> soft_target_coef(const Vec<acc_t>& prob, const Vec<acc_t>& class_weight,
                            const Vec<acc_t>& keep, const Vec<acc_t>& uniform) {
  return soft_target_coef(prob, keep, uniform) * class_weight;
}

// soft_target_term: coef * (z - shift), 0 where coef = 0 (not 0 * -inf = NaN).
template <typename acc_t>
Vec<acc_t> soft_target_term(const Vec<acc_t>& coef, const Vec<acc_t>& z, const Vec<acc_t>& shift) {
  const Vec<acc_t> zero(acc_t(0));
  return Vec<acc_t>::blendv(coef * (z - shift), zero, coef == zero);
}

// soft_target_grad from the row's prob_scale = soft_target_prob_scale(A, lse, z_loss, g, g_lse):
// p_j * prob_scale - g * a_j.
template <typename acc_t>
Vec<acc_t> soft_target_grad(const Vec<acc_t>& prob, const Vec<acc_t>& coef,
                            const Vec<acc_t>& prob_scale, const Vec<acc_t>& upstream) {
  return prob * prob_scale - upstream * coef;
}

// --- distillation ------------------------------------------------------------------------------

// LogSoftmaxPair's lp, lq and lp - lq on vectors, from the row's scalar pair.
template <typename acc_t>
struct LogSoftmaxPair {
  Vec<acc_t> max_t, log_sum_t, max_s, log_sum_s, log_sum_ratio;

  explicit LogSoftmaxPair(const logitops::LogSoftmaxPair<acc_t>& row)
      : max_t(row.max_t),
        log_sum_t(row.log_sum_t),
        max_s(row.max_s),
        log_sum_s(row.log_sum_s),
        log_sum_ratio(row.log_sum_ratio) {}

  Vec<acc_t> lp(const Vec<acc_t>& t) const { return (t - max_t) - log_sum_t; }
  Vec<acc_t> lq(const Vec<acc_t>& s) const { return (s - max_s) - log_sum_s; }
  Vec<acc_t> lp_minus_lq(const Vec<acc_t>& t, const Vec<acc_t>& s) const {
    return ((t - max_t) - (s - max_s)) - log_sum_ratio;
  }
};

// forward_kl_term: p * d where p > 0, else 0.
template <typename acc_t>
Vec<acc_t> forward_kl_term(const Vec<acc_t>& p, const Vec<acc_t>& d) {
  const Vec<acc_t> zero(acc_t(0));
  return Vec<acc_t>::blendv(zero, p * d, p > zero);
}

// divergence_grad of the forward KL (q_g = -p, S = -1): scale * (q - p).
template <typename acc_t>
Vec<acc_t> forward_kl_grad(const Vec<acc_t>& p, const Vec<acc_t>& q, const Vec<acc_t>& scale) {
  return scale * (q - p);
}

// --- binary cross-entropy with logits ----------------------------------------------------------

// exp_neg_abs: exp(-|z|).
template <typename acc_t>
Vec<acc_t> exp_neg_abs(const Vec<acc_t>& z) {
  return fast_exp(Vec<acc_t>(acc_t(0)) - z.abs());
}

// softplus_neg: log1p(e) + max(-z, 0) (NaN for a NaN z, as its e = exp_neg_abs(z) is).
template <typename acc_t>
Vec<acc_t> softplus_neg(const Vec<acc_t>& z, const Vec<acc_t>& e) {
  const Vec<acc_t> zero(acc_t(0));
  return log1p_unit(e) + at::vec::maximum(zero - z, zero);
}

// bce_log_weight: 1 + (pos_weight - 1) * y.
template <typename acc_t>
Vec<acc_t> bce_log_weight(const Vec<acc_t>& y, const Vec<acc_t>& pos_weight) {
  const Vec<acc_t> one(acc_t(1));
  return one + (pos_weight - one) * y;
}

// bce_loss: (1 - y) * z + l_w * softplus, softplus = softplus_neg(z, e).
template <typename acc_t>
Vec<acc_t> bce_loss(const Vec<acc_t>& z, const Vec<acc_t>& y, const Vec<acc_t>& log_weight,
                    const Vec<acc_t>& softplus) {
  return (Vec<acc_t>(acc_t(1)) - y) * z + log_weight * softplus;
}

// bce_grad: (1 - y) - l_w * sigmoid(-z), NaN for a NaN z.
template <typename acc_t>
Vec<acc_t> bce_grad(const Vec<acc_t>& z, const Vec<acc_t>& y, const Vec<acc_t>& log_weight,
                    const Vec<acc_t>& e) {
  const Vec<acc_t> one(acc_t(1)), zero(acc_t(0));
  const Vec<acc_t> r = one / (one + e);
  const Vec<acc_t> sigmoid_neg = Vec<acc_t>::blendv(r, e * r, z >= zero);
  const Vec<acc_t> g = (one - y) - log_weight * sigmoid_neg;
  return Vec<acc_t>::blendv(g, z, z != z);
}

}  // namespace simd
}  // namespace logitops

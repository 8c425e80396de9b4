// Holds each vector twin of csrc/cpu/vec_math.h to its scalar formula of csrc/common/logit_math.h,
// lane by lane, on random inputs and on edge values (-inf, +inf, NaN, huge, 0), in float and
// double. Built and run by tests/test_vec_math.py with the CPU kernels' instruction set. Prints one
// line per mismatch and exits with 1 if there is any.
#include "../../csrc/cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using logitops::simd::Vec;

int g_failures = 0;

// A vector lane against the scalar formula: NaN where it is NaN, the same infinity, or within
// rtol of `magnitude` (the size of the terms the result is formed from, at least |scalar|) plus
// atol.
template <typename acc_t>
bool agrees(acc_t vec, acc_t scalar, double rtol, double atol, double magnitude) {
  if (std::isnan(scalar)) return std::isnan(vec);
  if (std::isinf(scalar)) return vec == scalar;
  if (!std::isfinite(vec)) return false;
  const double m = std::max(std::fabs(double(scalar)), magnitude);
  return std::fabs(double(vec) - double(scalar)) <= atol + rtol * m;
}

// Runs `vector_fn(k)` on consecutive vectors of n inputs and compares lane j with
// `scalar_fn(k + j)`; `magnitude(i)` as in agrees.
template <typename acc_t, typename VectorFn, typename ScalarFn, typename Magnitude>
void check(const char* name, size_t n, double rtol, double atol, const VectorFn& vector_fn,
           const ScalarFn& scalar_fn, const Magnitude& magnitude) {
  constexpr int W = Vec<acc_t>::size();
  int bad = 0;
  for (size_t k = 0; k + W <= n; k += W) {
    acc_t lanes[W];
    vector_fn(k).store(lanes);
    for (int j = 0; j < W; ++j) {
      const acc_t expected = scalar_fn(k + j);
      if (!agrees(lanes[j], expected, rtol, atol, magnitude(k + j))) {
        if (++bad <= 5) {
          std::printf("FAIL %s<%s> element %zu: vector %.17g, scalar %.17g\n", name,
                      sizeof(acc_t) == 4 ? "float" : "double", k + j, double(lanes[j]),
                      double(expected));
        }
      }
    }
  }
  g_failures += bad;
  std::printf("%s %s<%s>: %zu elements\n", bad == 0 ? "ok" : "FAILED", name,
              sizeof(acc_t) == 4 ? "float" : "double", n);
}

auto no_magnitude = [](size_t) { return 0.0; };

// n inputs: the edge values first, then uniform random ones in [lo, hi], padded to whole vectors.
template <typename acc_t>
std::vector<acc_t> inputs(std::mt19937_64& rng, std::vector<acc_t> edges, double lo, double hi,
                          size_t n = 4096) {
  std::uniform_real_distribution<double> uniform(lo, hi);
  while (edges.size() < n) edges.push_back(acc_t(uniform(rng)));
  return edges;
}

template <typename acc_t>
Vec<acc_t> load(const std::vector<acc_t>& x, size_t k) {
  return Vec<acc_t>::loadu(x.data() + k);
}

template <typename acc_t>
void run_all() {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  constexpr acc_t kHuge = std::numeric_limits<acc_t>::max() / acc_t(4);
  constexpr double eps = std::numeric_limits<acc_t>::epsilon();
  // fast_exp is ATen's exp_u20 for float (a few ulp; 0 below the smallest normal).
  const double exp_rtol = std::is_same_v<acc_t, float> ? 64 * eps : 8 * eps;
  const double exp_atol = 2 * double(std::numeric_limits<acc_t>::min());
  std::mt19937_64 rng(18);
  using V = Vec<acc_t>;
  namespace simd = logitops::simd;

  // Soft-capping.
  for (const acc_t cap : {acc_t(0.5), acc_t(30)}) {
    const auto z =
        inputs<acc_t>(rng, {0, -0.0, kInf, -kInf, kNaN, kHuge, -kHuge, 1e-30}, -200, 200);
    check<acc_t>(
        "softcap_value", z.size(), 8 * eps, 0,
        [&](size_t k) { return simd::softcap_value(load(z, k), V(cap), V(acc_t(1) / cap)); },
        [&](size_t i) { return logitops::softcap_value(z[i], cap); }, no_magnitude);
    std::vector<acc_t> capped(z.size());
    for (size_t i = 0; i < z.size(); ++i) capped[i] = logitops::softcap_value(z[i], cap);
    // 1 - t^2 cancels near |t| = 1: compare to the terms' size, 1.
    check<acc_t>(
        "softcap_derivative_from_capped", capped.size(), 8 * eps, 0,
        [&](size_t k) {
          return simd::softcap_derivative_from_capped(load(capped, k), V(acc_t(1) / cap));
        },
        [&](size_t i) {
          return logitops::softcap_derivative_from_capped(capped[i], acc_t(1) / cap);
        },
        [](size_t) { return 1.0; });
    // ... and it is the derivative of the cap.
    check<acc_t>(
        "softcap_derivative", capped.size(), 8 * eps, 0,
        [&](size_t k) {
          return simd::softcap_derivative_from_capped(load(capped, k), V(acc_t(1) / cap));
        },
        [&](size_t i) { return logitops::softcap_derivative(z[i], cap); },
        [](size_t) { return 1.0; });
  }

  // Probabilities (the arguments are never NaN: the kernels handle NaN rows before).
  const auto a = inputs<acc_t>(rng, {0, -kInf, -kHuge, -1e-30, -80, -90, -700}, -120, 0);
  for (const acc_t b : {acc_t(0), acc_t(3.5), acc_t(-2), -kInf}) {
    check<acc_t>(
        "exp_shift", a.size(), exp_rtol, exp_atol,
        [&](size_t k) { return simd::exp_shift(load(a, k) + V(std::isinf(b) ? acc_t(0) : b), b); },
        [&](size_t i) { return logitops::exp_shift(a[i] + (std::isinf(b) ? acc_t(0) : b), b); },
        no_magnitude);
  }
  check<acc_t>(
      "prob_from_log", a.size(), exp_rtol, exp_atol,
      [&](size_t k) { return simd::prob_from_log(load(a, k)); },
      [&](size_t i) { return logitops::prob_from_log(a[i]); }, no_magnitude);

  // Cross-entropy with class-index targets, for rows of every kind (weighted, smoothed, z-loss,
  // ignored, and an infinite upstream over zero coefficients).
  {
    const auto prob = inputs<acc_t>(rng, {0, 1, 1e-30, 0.5}, 0, 1);
    const auto weight = inputs<acc_t>(rng, {0, 1, 2, 1e-3}, 0, 3);
    struct RowCase {
      logitops::CrossEntropyRow<acc_t> row;
      acc_t upstream, upstream_lse;
    };
    const acc_t lse = acc_t(7.25);
    std::vector<RowCase> rows = {
        {logitops::cross_entropy_row(lse, acc_t(1), acc_t(1000), acc_t(0), 1000, acc_t(0)), 1, 0},
        {logitops::cross_entropy_row(lse, acc_t(0.7), acc_t(800), acc_t(0.1), 1000, acc_t(1e-3)),
         acc_t(0.25), acc_t(-0.5)},
        {logitops::cross_entropy_ignored_row<acc_t>(), kInf, 0},
        {logitops::cross_entropy_ignored_row<acc_t>(), 1, acc_t(2)},
        {logitops::cross_entropy_row(lse, acc_t(2), acc_t(3), acc_t(0.9), 3, acc_t(0)), kHuge, 0},
    };
    for (const auto& c : rows) {
      const acc_t prob_scale =
          logitops::cross_entropy_prob_scale(c.row, c.upstream, c.upstream_lse);
      const acc_t smooth = logitops::upstream_scaled(c.upstream, c.row.smooth_coef);
      check<acc_t>(
          "cross_entropy_grad", prob.size(), 4 * eps, 0,
          [&](size_t k) {
            return simd::cross_entropy_grad(load(prob, k), V(prob_scale),
                                            V(smooth) * load(weight, k));
          },
          [&](size_t i) {
            return logitops::cross_entropy_grad(c.row, c.upstream, c.upstream_lse, prob[i], false,
                                                weight[i]);
          },
          [&](size_t i) {
            return std::fabs(double(prob[i]) * prob_scale) + std::fabs(double(smooth) * weight[i]);
          });
    }
  }

  // Cross-entropy with class-probability targets.
  {
    const auto target = inputs<acc_t>(rng, {0, 1, 1e-30}, 0, 1);
    const auto weight = inputs<acc_t>(rng, {0, 1, 1e-3}, 0, 3);
    for (const acc_t eps_smooth : {acc_t(0), acc_t(0.2)}) {
      const int64_t classes = 1000;
      const V keep(acc_t(1) - eps_smooth), uniform(eps_smooth / acc_t(classes));
      check<acc_t>(
          "soft_target_coef", target.size(), 4 * eps, 0,
          [&](size_t k) { return simd::soft_target_coef(load(target, k), keep, uniform); },
          [&](size_t i) {
            return logitops::soft_target_coef(target[i], acc_t(1), eps_smooth, classes);
          },
          no_magnitude);
      check<acc_t>(
          "soft_target_coef (weighted)", target.size(), 4 * eps, 0,
          [&](size_t k) {
            return simd::soft_target_coef(load(target, k), load(weight, k), keep, uniform);
          },
          [&](size_t i) {
            return logitops::soft_target_coef(target[i], weight[i], eps_smooth, classes);
          },
          no_magnitude);
    }
    const auto coef = inputs<acc_t>(rng, {0, 0, 0, 1, 0, 1, 1e-30, 0.5}, 0, 2);
    const auto z = inputs<acc_t>(rng, {-kInf, kInf, kNaN, kNaN, kHuge, -kHuge, 0, 3}, -50, 50);
    const acc_t shift = acc_t(1.5);
    check<acc_t>(
        "soft_target_term", coef.size(), 2 * eps, 0,
        [&](size_t k) { return simd::soft_target_term(load(coef, k), load(z, k), V(shift)); },
        [&](size_t i) { return logitops::soft_target_term(coef[i], z[i], shift); },
        [&](size_t i) { return std::fabs(double(coef[i]) * z[i]) + std::fabs(double(coef[i])); });
    const auto prob = inputs<acc_t>(rng, {0, 1, 1e-30}, 0, 1);
    const acc_t a_sum = acc_t(1.25), lse = acc_t(-3.5), z_loss = acc_t(1e-3);
    for (const acc_t upstream : {acc_t(1), acc_t(1e-4), acc_t(0)}) {
      const acc_t prob_scale =
          logitops::soft_target_prob_scale(a_sum, lse, z_loss, upstream, acc_t(0.5));
      check<acc_t>(
          "soft_target_grad", prob.size(), 4 * eps, 0,
          [&](size_t k) {
            return simd::soft_target_grad(load(prob, k), load(coef, k), V(prob_scale), V(upstream));
          },
          [&](size_t i) {
            return logitops::soft_target_grad(prob[i], coef[i], a_sum, lse, z_loss, upstream,
                                              acc_t(0.5));
          },
          [&](size_t i) {
            return std::fabs(double(prob[i]) * prob_scale) + std::fabs(double(upstream) * coef[i]);
          });
    }
  }

  // Distillation: the log-softmax pair and the forward KL's terms.
  {
    const auto t = inputs<acc_t>(rng, {-kInf, 0, kHuge, -kHuge, kNaN, 1e-30}, -30, 30);
    const auto s = inputs<acc_t>(rng, {0, -kInf, -kHuge, kHuge, 2, kNaN}, -30, 30);
    const logitops::LseState<acc_t> state_t{acc_t(12.5), acc_t(3.25)},
        state_s{acc_t(-4), acc_t(1.75)};
    const auto pair = logitops::log_softmax_pair(state_t, state_s);
    const simd::LogSoftmaxPair<acc_t> vpair(pair);
    check<acc_t>(
        "LogSoftmaxPair::lp", t.size(), 2 * eps, 0, [&](size_t k) { return vpair.lp(load(t, k)); },
        [&](size_t i) { return pair.lp(t[i]); }, no_magnitude);
    check<acc_t>(
        "LogSoftmaxPair::lq", s.size(), 2 * eps, 0, [&](size_t k) { return vpair.lq(load(s, k)); },
        [&](size_t i) { return pair.lq(s[i]); }, no_magnitude);
    check<acc_t>(
        "LogSoftmaxPair::lp_minus_lq", t.size(), 2 * eps, 0,
        [&](size_t k) { return vpair.lp_minus_lq(load(t, k), load(s, k)); },
        [&](size_t i) { return pair.lp_minus_lq(t[i], s[i]); },
        [&](size_t i) { return std::fabs(double(t[i])) + std::fabs(double(s[i])) + 20; });
    const auto p = inputs<acc_t>(rng, {0, 0, 1, kNaN, 0, 1e-30, 0.5, 0}, 0, 1);
    const auto d = inputs<acc_t>(rng, {kInf, -kInf, kInf, 1, kNaN, -kHuge, 0, 0}, -20, 20);
    check<acc_t>(
        "forward_kl_term", p.size(), 2 * eps, 0,
        [&](size_t k) { return simd::forward_kl_term(load(p, k), load(d, k)); },
        [&](size_t i) { return logitops::forward_kl_term(p[i], d[i]); }, no_magnitude);
    const auto q = inputs<acc_t>(rng, {1, 0, 0, 0.5, kNaN}, 0, 1);
    for (const acc_t scale : {acc_t(1), acc_t(0.5), acc_t(1e-6)}) {
      check<acc_t>(
          "forward_kl_grad", p.size(), 2 * eps, 0,
          [&](size_t k) { return simd::forward_kl_grad(load(p, k), load(q, k), V(scale)); },
          [&](size_t i) {
            const logitops::DivergenceTerm<acc_t> term{0, -p[i], q[i]};
            return logitops::divergence_grad(term, acc_t(-1), scale);
          },
          [&](size_t i) {
            return double(scale) * (std::fabs(double(p[i])) + std::fabs(double(q[i])));
          });
    }
  }

  // Binary cross-entropy with logits, piece by piece and as the kernels chain the pieces.
  {
    const auto z = inputs<acc_t>(
        rng, {0, -0.0, kInf, -kInf, kHuge, -kHuge, 1e-30, -1e-30, 100, -100}, -30, 30);
    const auto y = inputs<acc_t>(rng, {1, 0, 0.5, 1, 0, 0.25, 1, 0, 1, 0}, 0, 1);
    const auto pos_weight = inputs<acc_t>(rng, {1, 3, 0.5, 0, 1, 2, 1, 1, 1, 1}, 0, 4);
    check<acc_t>(
        "exp_neg_abs", z.size(), exp_rtol, exp_atol,
        [&](size_t k) { return simd::exp_neg_abs(load(z, k)); },
        [&](size_t i) { return logitops::exp_neg_abs(z[i]); }, no_magnitude);
    auto with_nan = z;
    with_nan[10] = with_nan[11] = kNaN;  // after the edge values
    std::vector<acc_t> e(with_nan.size());
    for (size_t i = 0; i < e.size(); ++i) e[i] = logitops::exp_neg_abs(with_nan[i]);
    // (log1p_unit is exact to rounding for normal e, and within the smallest normal below.)
    check<acc_t>(
        "softplus_neg", e.size(), 8 * eps, exp_atol,
        [&](size_t k) { return simd::softplus_neg(load(with_nan, k), load(e, k)); },
        [&](size_t i) { return logitops::softplus_neg(with_nan[i], e[i]); }, no_magnitude);
    check<acc_t>(
        "bce_log_weight", y.size(), 2 * eps, 0,
        [&](size_t k) { return simd::bce_log_weight(load(y, k), load(pos_weight, k)); },
        [&](size_t i) { return logitops::bce_log_weight(y[i], pos_weight[i]); },
        [&](size_t i) { return 1.0 + std::fabs(double(pos_weight[i])); });
    // The chain of the kernel's vector body (NaN logits included) against bce_with_logits.
    auto vector_terms = [&](size_t k) {
      const V zk = load(with_nan, k), yk = load(y, k);
      const V lw = simd::bce_log_weight(yk, load(pos_weight, k));
      const V ek = simd::exp_neg_abs(zk);
      return std::make_pair(simd::bce_loss(zk, yk, lw, simd::softplus_neg(zk, ek)),
                            simd::bce_grad(zk, yk, lw, ek));
    };
    auto bce_magnitude = [&](size_t i) {
      const double zi = std::fabs(double(with_nan[i]));
      return zi + (1.0 + std::fabs(double(pos_weight[i]))) * (zi + 1.0);
    };
    check<acc_t>(
        "bce_loss", with_nan.size(), 16 * eps, 0, [&](size_t k) { return vector_terms(k).first; },
        [&](size_t i) { return logitops::bce_with_logits(with_nan[i], y[i], pos_weight[i]).loss; },
        bce_magnitude);
    check<acc_t>(
        "bce_grad", with_nan.size(), 16 * eps, exp_atol,
        [&](size_t k) { return vector_terms(k).second; },
        [&](size_t i) { return logitops::bce_with_logits(with_nan[i], y[i], pos_weight[i]).grad; },
        [&](size_t i) { return 1.0 + std::fabs(double(pos_weight[i])); });
  }
}

}  // namespace

int main() {
  run_all<float>();
  run_all<double>();
  std::printf("%d mismatches\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}

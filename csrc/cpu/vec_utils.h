// Vectorized load / store / exp helpers shared by the CPU kernels.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../common/logit_math.h"

namespace logitops {

using at::vec::Vectorized;

// Copy n elements into an accumulation-type buffer (bf16 / fp16 widen to fp32).
template <typename scalar_t, typename acc_t>
void load_as_acc(const scalar_t* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(dst, src, n * sizeof(acc_t));
  } else {
    using bVec = Vectorized<scalar_t>;
    using fVec = Vectorized<float>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(bVec::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + fVec::size());
    }
    for (; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
  }
}

// Store n accumulation-type values, rounding to nearest even for bf16 / fp16.
template <typename scalar_t, typename acc_t>
void store_from_acc(const acc_t* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(dst, src, n * sizeof(acc_t));
  } else {
    using bVec = Vectorized<scalar_t>;
    using fVec = Vectorized<float>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      auto out = at::vec::convert_from_float<scalar_t>(fVec::loadu(src + i),
                                                       fVec::loadu(src + i + fVec::size()));
      out.store(dst + i);
    }
    for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

// exp for the hot loops: ATen's polynomial exp_u20 for fp32 (a few ULP, several times cheaper than
// Sleef's; callers keep NaN out of it, which it does not propagate), the exact one for fp64.
template <typename acc_t>
inline Vectorized<acc_t> fast_exp(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// log1p(x) for 0 <= x <= 1 (the softplus of BCE, x = exp(-|z|)). fp32: log1p(x) =
// 2 atanh(s) = 2 s (1 + s^2/3 + ... + s^12/13) with s = x / (2 + x) in [0, 1/3]; the next term is
// below 2^-26 of the sum, so the error is that of a few roundings (no cancellation for small x,
// unlike log(1 + x)), at a fraction of Sleef's log1p cost. fp64 keeps Sleef's.
template <typename acc_t>
inline Vectorized<acc_t> log1p_unit(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    using Vec = Vectorized<float>;
    const Vec s = x / (Vec(2.0f) + x);
    const Vec s2 = s * s;
    Vec p(1.0f / 13.0f);
    p = at::vec::fmadd(p, s2, Vec(1.0f / 11.0f));
    p = at::vec::fmadd(p, s2, Vec(1.0f / 9.0f));
    p = at::vec::fmadd(p, s2, Vec(1.0f / 7.0f));
    p = at::vec::fmadd(p, s2, Vec(1.0f / 5.0f));
    p = at::vec::fmadd(p, s2, Vec(1.0f / 3.0f));
    p = at::vec::fmadd(p, s2, Vec(1.0f));
    return Vec(2.0f) * s * p;
  } else {
    return x.log1p();
  }
}

// sum_c w_c * (z_c - shift) over a block (w == nullptr means all ones).
template <typename acc_t>
acc_t weighted_sum_block(const acc_t* z, const acc_t* w, int64_t n, acc_t shift = acc_t(0)) {
  using Vec = Vectorized<acc_t>;
  const Vec vshift(shift);
  Vec vsum(acc_t(0));
  int64_t i = 0;
  if (w != nullptr) {
    for (; i + Vec::size() <= n; i += Vec::size()) {
      vsum += (Vec::loadu(z + i) - vshift) * Vec::loadu(w + i);
    }
  } else {
    for (; i + Vec::size() <= n; i += Vec::size()) vsum += Vec::loadu(z + i) - vshift;
  }
  acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; i < n; ++i) sum += w != nullptr ? (z[i] - shift) * w[i] : z[i] - shift;
  return sum;
}

// A Kahan-compensated sum in each vector lane, totalled in double. Where a lane's sum is not
// finite (an infinite term) the plain sum is used, since the compensation turns inf into NaN.
template <typename Vec>
struct CompensatedSum {
  using value_t = typename Vec::value_type;
  Vec sum{value_t(0)}, compensation{value_t(0)}, plain{value_t(0)};

  void add(const Vec& x) {
    const Vec y = x - compensation;
    const Vec t = sum + y;
    compensation = (t - sum) - y;
    sum = t;
    plain += x;
  }

  double total() const {
    alignas(64) value_t lanes[Vec::size()], plains[Vec::size()];
    sum.store(lanes);
    plain.store(plains);
    double out = 0;
    for (int k = 0; k < Vec::size(); ++k) {
      out += std::isfinite(plains[k]) ? double(lanes[k]) : double(plains[k]);
    }
    return out;
  }
};

// Rows per at::parallel_for task for rows of num_classes elements: about 32K elements a task.
inline int64_t grain_rows(int64_t num_classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, num_classes));
}

// Running log-sum-exp of a block, merged into `state`.
template <typename acc_t>
LseState<acc_t> lse_block(const acc_t* z, int64_t n, LseState<acc_t> state) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  Vec vmax(kNegInf);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(z + i));
  acc_t block_max =
      at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  for (int64_t j = i; j < n; ++j) {
    // NaN-propagating scalar max, like at::vec::maximum.
    if (z[j] != z[j] || z[j] > block_max) block_max = z[j];
  }
  if (block_max == kNegInf || block_max != block_max || block_max == -kNegInf) {
    return lse_merge(state, LseState<acc_t>{block_max, acc_t(0)});
  }
  const Vec vm(block_max);
  Vec vsum(acc_t(0));
  for (i = 0; i + Vec::size() <= n; i += Vec::size()) vsum += fast_exp(Vec::loadu(z + i) - vm);
  acc_t block_sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; i < n; ++i) block_sum += std::exp(z[i] - block_max);
  return lse_merge(state, LseState<acc_t>{block_max, block_sum});
}

}  // namespace logitops

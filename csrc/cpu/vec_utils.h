// Vectorized load / store / exp helpers shared by the CPU kernels.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstring>
#include <type_traits>

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

}  // namespace logitops

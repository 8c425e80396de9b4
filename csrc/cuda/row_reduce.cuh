// Row-reduction primitives shared by the CUDA kernel families that give one thread block to one
// row: the launch bound, a cheap exp, a NaN-keeping max and the online log-sum-exp of a few values
// at a time, with the per-thread partial state that block_reduce (cuda_utils.cuh) combines.
// Torch-free, like the kernels that include it.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "cuda_utils.cuh"

namespace logitops {
namespace cuda {

// kMaxBlockThreads (512) threads at most, and __launch_bounds__ asking for two blocks per SM (64
// registers): while one block reduces its row at a barrier, the other keeps loading.
constexpr int kMinBlocksPerSm = 2;

// exp of arguments <= 0 (up to rounding). __expf is a few ulp there, like the CPU kernels'
// exp_u20, and several times cheaper than expf; fp64 keeps the exact exp.
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }

// max that returns NaN when either argument is NaN (fmax would drop it).
template <typename acc_t>
__device__ __forceinline__ acc_t nan_max(acc_t a, acc_t b) {
  return (a > b || a != a) ? a : b;
}

// Online log-sum-exp of a few values: one exp per value, plus a rescale (lse_merge) only when the
// running max grows. Equal to lse_push of each value up to rounding, NaN / +inf rules included.
template <typename acc_t, int N>
__device__ __forceinline__ void lse_push_values(LseState<acc_t>& state, const acc_t (&x)[N]) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  acc_t values_max = x[0];
#pragma unroll
  for (int k = 1; k < N; ++k) values_max = nan_max(values_max, x[k]);
  if (!(values_max <= state.max)) {
    if (values_max < kInf && state.max == state.max) {
      // A larger finite max: rescale the sum (exp(-inf) = 0 when the state was empty).
      state.sum *= fast_exp(state.max - values_max);
      state.max = values_max;
    } else {
      // NaN or +inf: lse_merge makes the state NaN, or +inf, for good.
      state = lse_merge(state, LseState<acc_t>{values_max, acc_t(0)});
    }
  }
  // max = -inf: every value so far is -inf (sum stays 0). max = +inf or NaN: the lse is decided.
  if (state.max > -kInf && state.max < kInf) {
#pragma unroll
    for (int k = 0; k < N; ++k) state.sum += fast_exp(x[k] - state.max);
  }
}

// A thread's share of one row: the log-sum-exp of its values and a plain sum beside it (the
// cross-entropy forward's smoothing term sum_c w_c (z_c - shift), the vocab-parallel logit sum).
template <typename acc_t>
struct RowPartial {
  LseState<acc_t> lse;
  acc_t weighted_sum;
};

template <typename acc_t>
__device__ __forceinline__ RowPartial<acc_t> merge_partials(const RowPartial<acc_t>& a,
                                                            const RowPartial<acc_t>& b) {
  return {lse_merge(a.lse, b.lse), a.weighted_sum + b.weighted_sum};
}

}  // namespace cuda
}  // namespace logitops

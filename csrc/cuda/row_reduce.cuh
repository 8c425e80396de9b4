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

// 16-byte vectors each thread loads before using them. fp64 has the heaviest math per vector and
// loads one at a time, which keeps its kernels within 64 registers.
template <typename acc_t>
constexpr int unroll_for() {
  return sizeof(acc_t) == 8 ? 1 : 2;
}

// Calls fn(values, j) on this thread's share of row[0, n): values are the N consecutive elements
// from j (a `const scalar_t (&)[N]`), N = 1 for the elements before the row's first 16-byte
// boundary and after its last one, a 16-byte vector for the rest, kUnroll vectors loaded before
// any is used (the loops are bound by memory latency). Rows rarely start on a boundary (vocab
// sizes such as 50257), hence the peeling.
template <int kUnroll, typename scalar_t, typename Fn>
__device__ __forceinline__ void stream_row(const scalar_t* __restrict__ row, int64_t n, Fn&& fn) {
  constexpr int kVec = vector_size<scalar_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t threads = blockDim.x;
  const int64_t head = unaligned_head(row, n);
  const int64_t num_vectors = (n - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  auto one = [&](int64_t j) {
    const scalar_t value[1] = {load_element(row + j)};
    fn(value, j);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) one(j);
  for (int64_t j = tail + threadIdx.x; j < n; j += threads) one(j);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
    Vector batch[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      batch[u] = load_vector<scalar_t, kVec>(row + head + (v + u * threads) * kVec, true);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) fn(batch[u].val, head + (v + u * threads) * kVec);
  }
  for (; v < num_vectors; v += threads) {
    const Vector last = load_vector<scalar_t, kVec>(row + head + v * kVec, true);
    fn(last.val, head + v * kVec);
  }
}

// Writes out[0, n) = element_grad(logit_j, j) (in acc_t), reading the logits and writing out by
// 16-byte vectors (the input by vectors too when it has the output's offset from a 16-byte
// boundary); a constant_row is `constant` everywhere and reads nothing. Uniform across the
// block; no barrier.
template <typename scalar_t, typename acc_t, typename ElementGrad>
__device__ __forceinline__ void write_row(const scalar_t* __restrict__ logits,
                                          scalar_t* __restrict__ out, int64_t n, bool constant_row,
                                          acc_t constant, ElementGrad&& element_grad) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t threads = blockDim.x;
  const int64_t head = unaligned_head(out, n);
  const int64_t num_vectors = (n - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  const bool vector_loads = same_alignment(logits, out);
  auto value = [&](acc_t raw, int64_t j) { return constant_row ? constant : element_grad(raw, j); };
  auto write_one = [&](int64_t j) {
    const acc_t raw = constant_row ? acc_t(0) : to_acc<acc_t>(load_element(logits + j));
    store_element(out + j, from_acc<scalar_t>(value(raw, j)));
  };
  auto load = [&](int64_t j) -> Vector {
    if (constant_row) return Vector{};  // nothing to read
    return load_vector<scalar_t, kVec>(logits + j, vector_loads);
  };
  auto store = [&](int64_t j, const Vector& raw) {
    Vector result;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      result.val[k] = from_acc<scalar_t>(value(to_acc<acc_t>(raw.val[k]), j + k));
    }
    store_vector<scalar_t, kVec>(out + j, result, true);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) write_one(j);
  for (int64_t j = tail + threadIdx.x; j < n; j += threads) write_one(j);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
    Vector batch[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) batch[u] = load(head + (v + u * threads) * kVec);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) store(head + (v + u * threads) * kVec, batch[u]);
  }
  for (; v < num_vectors; v += threads) store(head + v * kVec, load(head + v * kVec));
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

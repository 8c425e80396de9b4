// Kernels of the probability ops for CUDA: the temperature softmax, renormalized top-k / top-p /
// min-p probabilities and sampling from probabilities. Torch-free. Same semantics as
// csrc/cpu/probs.cpp: the filters and the race run on z = log(p) (probs_math.h), with the
// block-wide searches and the shared decision procedure of sampling_kernels.cuh, recomputing z
// from the probabilities on every pass (the passes after the first read the row from L2), so
// there is no workspace.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "../common/probs_math.h"
#include "../common/sampling_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"
#include "sampling_kernels.cuh"

namespace logitops {
namespace cuda {

// z_j = log(p_j) of one row of probabilities (probability_log), with the interface of
// sampling_kernels.cuh's ScaledRow that its searches take.
template <typename scalar_t, typename acc_t>
struct LogProbRow {
  const scalar_t* __restrict__ p;

  __device__ __forceinline__ acc_t operator()(int64_t j) const {
    return probability_log<acc_t>(double(to_acc<acc_t>(load_element(p + j))));
  }

  template <typename Fn>
  __device__ __forceinline__ void for_each(int64_t n, Fn&& fn) const {
    stream_row<1>(p, n, [&](const auto& raw, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
      for (int k = 0; k < N; ++k) fn(probability_log<acc_t>(double(to_acc<acc_t>(raw[k]))), j + k);
    });
  }
};

// What the probability kernels read that does not change from row to row.
template <typename scalar_t>
struct ProbsArgs {
  const scalar_t* probs;  // [num_rows, vocab], unit stride along the vocabulary
  int64_t row_stride;     // in elements
  int64_t num_rows;
  int64_t vocab;  // < 2^32: histogram counts are 32-bit
  const int64_t* top_k;
  const double* top_p;
  const double* min_p;
  FilterOrder order;
};

template <typename scalar_t>
__device__ __forceinline__ RowFilter probs_row_filter(const ProbsArgs<scalar_t>& args,
                                                      int64_t row) {
  return {1.0, args.top_k[row], args.top_p[row], args.min_p[row]};
}

// A thread's best race score so far and its token (kNoIndex: none yet).
struct RaceBest {
  double score;
  int64_t index;
};

// probs_sample: per row, the kept token maximizing log(p) - log(E) with the exponential noise of
// (seed[row], per_row_seeds ? 0 : row, token), as sample_kernel races logits; -1 for a row with
// an invalid probability (NaN z) or nothing to draw (all zero).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kSampleMinBlocksPerSm)
    probs_sample_kernel(const ProbsArgs<scalar_t> args, const int64_t* __restrict__ seeds,
                        bool per_row_seeds, int64_t* __restrict__ tokens) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  __shared__ RadixScratch scratch;
  const int64_t n = args.vocab;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const LogProbRow<scalar_t, acc_t> z{args.probs + row * args.row_stride};
    const RowScan<acc_t> scan = scan_row<acc_t>(z, n);
    if (scan.has_nan) {
      if (threadIdx.x == 0) tokens[row] = -1;
      continue;
    }
    const acc_t tau =
        block_row_threshold(z, n, scan.max, probs_row_filter(args, row), args.order, 1, scratch);
    const uint64_t key = static_cast<uint64_t>(seeds[row]);
    const uint64_t stream = per_row_seeds ? 0 : static_cast<uint64_t>(row);
    double best_score = -std::numeric_limits<double>::infinity();
    int64_t best = kNoIndex;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const acc_t v = z(j);
      if (!(v >= tau) || v == kNegInf) continue;
      const double score =
          race_score(double(v), exponential_noise(key, stream, static_cast<uint64_t>(j)));
      if (ranks_before(score, j, best_score, best)) {
        best_score = score;
        best = j;
      }
    }
    const RaceBest winner = block_reduce(
        RaceBest{best_score, best}, RaceBest{-std::numeric_limits<double>::infinity(), kNoIndex},
        [](const RaceBest& a, const RaceBest& b) {
          return ranks_before(b.score, b.index, a.score, a.index) ? b : a;
        });
    if (threadIdx.x == 0) tokens[row] = winner.index == kNoIndex ? -1 : winner.index;
  }
}

// probs_renorm: out = p / (sum of the kept p) on the kept tokens, 0 elsewhere; a whole NaN row
// for a row with an invalid probability or nothing kept. out is contiguous [num_rows, vocab].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, filter_min_blocks_per_sm<acc_t>())
    probs_renorm_kernel(const ProbsArgs<scalar_t> args, scalar_t* __restrict__ out) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  __shared__ RadixScratch scratch;
  const int64_t n = args.vocab;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ p = args.probs + row * args.row_stride;
    const LogProbRow<scalar_t, acc_t> z{p};
    scalar_t* __restrict__ y = out + row * n;
    const RowScan<acc_t> scan = scan_row<acc_t>(z, n);
    acc_t tau = kNegInf;
    double total = 0;
    if (!scan.has_nan) {
      tau =
          block_row_threshold(z, n, scan.max, probs_row_filter(args, row), args.order, 1, scratch);
      double mine = 0;
      stream_row<1>(p, n, [&](const auto& raw, int64_t j) {
        constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const double pk = double(to_acc<acc_t>(raw[k]));
          const acc_t v = probability_log<acc_t>(pk);
          if (v >= tau && v > kNegInf) mine += pk;
        }
      });
      total = block_all_reduce(mine, 0.0, [](double a, double b) { return a + b; });
    }
    const bool invalid = scan.has_nan || !(total > 0);  // block-uniform
    const double scale = invalid ? 0.0 : 1.0 / total;
    write_row(p, y, n, invalid, std::numeric_limits<acc_t>::quiet_NaN(),
              [&](acc_t raw, int64_t) -> acc_t {
                const double pk = double(raw);
                const acc_t v = probability_log<acc_t>(pk);
                return v >= tau && v > kNegInf ? static_cast<acc_t>(pk * scale) : acc_t(0);
              });
  }
}

// Writes out[0, n) (acc_t, contiguous) = value(z_j, j) over a row streamed by stream_row: 16-byte
// stores where out + j sits on a 16-byte boundary (the output is acc_t, wider than bf16 / fp16
// inputs, so one input vector is one or two output vectors), element stores elsewhere.
template <typename acc_t, typename Row, typename Value>
__device__ __forceinline__ void write_acc_row(const Row& z, int64_t n, acc_t* __restrict__ out,
                                              Value&& value) {
  z.for_each_vector(n, [&](const auto& values, int64_t j) {
    constexpr int N = sizeof(values) / sizeof(values[0]);
    constexpr int kOut = kVectorBytes / int(sizeof(acc_t));
    if constexpr (N % kOut == 0) {
      if (reinterpret_cast<uintptr_t>(out + j) % kVectorBytes == 0) {
#pragma unroll
        for (int c = 0; c < N / kOut; ++c) {
          AlignedVector<acc_t, kOut> v;
#pragma unroll
          for (int k = 0; k < kOut; ++k) v.val[k] = value(values[c * kOut + k]);
          store_vector<acc_t, kOut>(out + j + c * kOut, v, true);
        }
        return;
      }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) store_element(out + j + k, value(values[k]));
  });
}

// z = logits / temperature of one row, handed to callers a vector at a time (write_acc_row).
template <typename scalar_t, typename acc_t>
struct TemperatureRow {
  const scalar_t* __restrict__ x;
  acc_t temperature;
  bool divide;

  __device__ __forceinline__ acc_t scale(scalar_t raw) const {
    const acc_t v = to_acc<acc_t>(raw);
    return divide ? v / temperature : v;
  }

  template <typename Fn>
  __device__ __forceinline__ void for_each_vector(int64_t n, Fn&& fn) const {
    stream_row<unroll_for<acc_t>()>(x, n, [&](const auto& raw, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
      acc_t values[N];
#pragma unroll
      for (int k = 0; k < N; ++k) values[k] = scale(raw[k]);
      fn(values, j);
    });
  }
};

// softmax: out[row] = exp(z - lse(z)), z = logits[row] / temperature[row], in acc_t. Two reads
// of the row (the second from L2) and one write.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    softmax_kernel(const scalar_t* __restrict__ logits, int64_t row_stride, int64_t num_rows,
                   int64_t n, const double* __restrict__ temperature, acc_t* __restrict__ out) {
  for (int64_t row = blockIdx.x; row < num_rows; row += gridDim.x) {
    const acc_t t = static_cast<acc_t>(temperature[row]);
    const TemperatureRow<scalar_t, acc_t> z{logits + row * row_stride, t, t != acc_t(1)};
    LseState<acc_t> mine = lse_empty<acc_t>();
    z.for_each_vector(n, [&](const auto& values, int64_t) { lse_push_values(mine, values); });
    const LseState<acc_t> state = block_all_reduce(
        mine, lse_empty<acc_t>(),
        [](const LseState<acc_t>& a, const LseState<acc_t>& b) { return lse_merge(a, b); });
    const acc_t lse = lse_finalize(state);
    write_acc_row(z, n, out + row * n, [&](acc_t v) { return softmax_value(v, lse); });
  }
}

}  // namespace cuda
}  // namespace logitops

// Top-N log-probabilities on CUDA (the semantics of csrc/cpu/logprobs.cpp). Torch-free. One
// block per row: a first pass gives the log-sum-exp, NaN and the token's rank; for N > 0, the N-th
// largest z is found by sampling_kernels.cuh's radix search, the values above it are collected
// into shared memory, the ties at it are taken in index order, and the N (value, id) pairs are
// ordered there by counting. The passes after the first read the row from L2. No sort of the
// vocabulary, no workspace.
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

// The shared-memory slots that collect one row's top values (probs_checks.h's kMaxTopLogprobs).
constexpr int kTopLogprobSlots = 1024;

template <typename scalar_t, typename acc_t>
struct TopLogprobsArgs {
  const scalar_t* logits;  // [num_rows, vocab], unit stride along the vocabulary
  int64_t row_stride;
  int64_t num_rows;
  int64_t vocab;
  const double* temperature;  // [num_rows]
  const int64_t* token;       // [num_rows] or nullptr
  int64_t num_logprobs;       // N: the output's columns
  acc_t* values;              // [num_rows, N]
  int64_t* ids;               // [num_rows, N]
  acc_t* lse;                 // [num_rows]
  acc_t* token_value;         // [num_rows], or [0] without token
  int64_t* token_rank;
};

// A thread's share of the first pass: the online log-sum-exp of its finite or +inf values,
// whether it saw NaN, and how many of its values count toward the token's rank.
template <typename acc_t>
struct RankScan {
  LseState<acc_t> lse;
  int has_nan;
  int64_t rank;
};

template <typename acc_t>
__device__ __forceinline__ void lse_push_one(LseState<acc_t>& s, acc_t v) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  // One exp per value: -inf adds nothing, and once the max is +inf the lse is +inf.
  if (v == -kInf || s.max == kInf) return;
  if (v > s.max) {
    s.sum = (s.max == -kInf ? acc_t(0) : s.sum * fast_exp(s.max - v)) + acc_t(1);
    s.max = v;
    if (v == kInf) s.sum = acc_t(1);
  } else {
    s.sum += fast_exp(v - s.max);
  }
}

// Exclusive prefix count of `flag` over the block in thread order, and the block's total. Every
// thread must call it.
__device__ __forceinline__ unsigned block_exclusive_count(bool flag, unsigned& total) {
  __shared__ unsigned warp_counts[kMaxBlockThreads / kWarpSize];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const unsigned ballot = __ballot_sync(kFullWarp, flag);
  __syncthreads();  // the previous call's readers are done with warp_counts
  if (lane == 0) warp_counts[warp] = unsigned(__popc(ballot));
  __syncthreads();
  unsigned before = unsigned(__popc(ballot & ((1u << lane) - 1u)));
  total = 0;
  for (int w = 0; w < int(blockDim.x / kWarpSize); ++w) {
    if (w < warp) before += warp_counts[w];
    total += warp_counts[w];
  }
  return before;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    top_logprobs_kernel(const TopLogprobsArgs<scalar_t, acc_t> args) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  __shared__ RadixScratch scratch;
  __shared__ acc_t slot_value[kTopLogprobSlots];
  __shared__ int64_t slot_index[kTopLogprobSlots];
  __shared__ unsigned slots_used;
  const int64_t n = args.vocab, cols = args.num_logprobs;
  const int64_t top = cols < n ? cols : n;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const acc_t t = static_cast<acc_t>(args.temperature[row]);
    const ScaledRow<scalar_t, acc_t> z{args.logits + row * args.row_stride, nullptr, t,
                                       t != acc_t(1)};
    acc_t* __restrict__ values = args.values + row * cols;
    int64_t* __restrict__ ids = args.ids + row * cols;
    for (int64_t c = top + threadIdx.x; c < cols; c += blockDim.x) {
      values[c] = kNegInf;
      ids[c] = -1;
    }
    const int64_t target = args.token != nullptr ? args.token[row] : -1;
    const bool valid_token = target >= 0 && target < n;  // block-uniform
    const acc_t own = valid_token ? z(target) : kNaN;

    RankScan<acc_t> mine{lse_empty<acc_t>(), 0, 0};
    z.for_each(n, [&](acc_t v, int64_t) {
      if (v != v) {
        mine.has_nan = 1;
        return;
      }
      lse_push_one(mine.lse, v);
      mine.rank += counts_toward_rank(v, own);
    });
    const RankScan<acc_t> scan = block_all_reduce(
        mine, RankScan<acc_t>{lse_empty<acc_t>(), 0, 0},
        [](const RankScan<acc_t>& a, const RankScan<acc_t>& b) {
          return RankScan<acc_t>{lse_merge(a.lse, b.lse), a.has_nan | b.has_nan, a.rank + b.rank};
        });
    if (scan.has_nan) {
      // Documented: a row with NaN has no log-probabilities.
      for (int64_t c = threadIdx.x; c < top; c += blockDim.x) {
        values[c] = kNaN;
        ids[c] = -1;
      }
      if (threadIdx.x == 0) {
        args.lse[row] = kNaN;
        if (args.token != nullptr) {
          args.token_value[row] = kNaN;
          args.token_rank[row] = -1;
        }
      }
      continue;
    }
    if (threadIdx.x == 0) {
      args.lse[row] = lse_finalize(scan.lse);
      if (args.token != nullptr) {
        args.token_value[row] = own;
        args.token_rank[row] = valid_token ? scan.rank : -1;
      }
    }
    if (top == 0) continue;

    const acc_t tau = block_kth_largest<acc_t>(z, n, top, scratch);
    // Fewer than `top` values lie above the top-th largest: they all take a slot, in any order.
    if (threadIdx.x == 0) slots_used = 0;
    __syncthreads();
    z.for_each(n, [&](acc_t v, int64_t j) {
      if (v > tau) {
        const unsigned slot = atomicAdd(&slots_used, 1u);
        slot_value[slot] = v;
        slot_index[slot] = j;
      }
    });
    __syncthreads();
    // The ties at tau fill the rest, lowest ids first: the row in blocks of consecutive ids.
    const unsigned above = slots_used;
    const unsigned need = unsigned(top) - above;
    unsigned taken = 0;
    for (int64_t base = 0; base < n && taken < need; base += blockDim.x) {
      const int64_t j = base + threadIdx.x;
      const bool tie = j < n && z(j) == tau;
      unsigned total;
      const unsigned before = block_exclusive_count(tie, total);
      if (tie && taken + before < need) {
        slot_value[above + taken + before] = tau;
        slot_index[above + taken + before] = j;
      }
      taken += total;
    }
    __syncthreads();
    // Each pair's place is the number of pairs that rank before it.
    for (int64_t i = threadIdx.x; i < top; i += blockDim.x) {
      const acc_t v = slot_value[i];
      const int64_t id = slot_index[i];
      int64_t place = 0;
      for (int64_t k = 0; k < top; ++k) {
        place += top_ranks_before(slot_value[k], slot_index[k], v, id);
      }
      values[place] = v;
      ids[place] = id;
    }
    __syncthreads();  // the slots are refilled for the next row
  }
}

}  // namespace cuda
}  // namespace logitops

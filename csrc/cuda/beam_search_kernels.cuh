// Beam-search step kernels for CUDA, with the semantics of csrc/cpu/beam_search.cpp (the order and
// the row rules are csrc/common/beam_search_math.h's). Torch-free.
//
// beam_row_kernel: one block per row streams the row once (16-byte loads), each thread keeping
// its online log-sum-exp and its own best `per_row` logits in a small sorted list; the block
// merges the log-sum-exps, then pops the block-wide best `per_row` entries of the threads' lists
// one round at a time (one reduction each), and writes them scored to a [rows, per_row] workspace.
// beam_merge_kernel: one block per batch item ranks its num_beams * per_row scored candidates
// (rank = the number of candidates ranking before it, a total order, so every slot is written
// exactly once) and writes the best `width` in order.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/beam_search_math.h"
#include "../common/logit_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about one element each for small rows (as the sampling kernels).
inline int beam_row_block_threads(int64_t vocab) { return threads_for(vocab, 1); }
// Threads per batch item: one candidate each, up to a block.
inline int beam_merge_block_threads(int64_t candidates) { return threads_for(candidates, 1); }

// Rounds a capacity up to the list sizes the kernels are compiled for.
inline int beam_list_capacity(int64_t per_row) {
  int capacity = 1;
  while (capacity < per_row) capacity *= 2;
  return capacity;
}

template <typename acc_t>
struct BeamSlot {
  acc_t value;
  int64_t index;  // kNoBeamIndex: an empty slot, ranks after everything
};

constexpr int64_t kNoBeamIndex = std::numeric_limits<int64_t>::max();

template <typename acc_t>
__device__ __forceinline__ BeamSlot<acc_t> better_slot(const BeamSlot<acc_t>& a,
                                                       const BeamSlot<acc_t>& b) {
  if (a.index == kNoBeamIndex) return b;
  if (b.index == kNoBeamIndex) return a;
  return beam_ranks_before(a.value, a.index, b.value, b.index) ? a : b;
}

template <typename scalar_t, typename acc_t>
struct BeamRowArgs {
  const scalar_t* logits;    // [num_rows, vocab], unit stride along the vocabulary
  int64_t row_stride;        // in elements
  const acc_t* beam_scores;  // [num_rows]
  int64_t num_rows;
  int64_t vocab;
  int per_row;                              // min(num_candidates, vocab) <= kCapacity
  BeamCandidate<acc_t>* __restrict__ kept;  // [num_rows, per_row] workspace: score, token id
};

// kCapacity >= args.per_row: the size of each thread's list.
template <typename scalar_t, typename acc_t, int kCapacity>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    beam_row_kernel(const BeamRowArgs<scalar_t, acc_t> args) {
  const int64_t n = args.vocab;
  // 1 <= per_row <= kCapacity (the launcher's choice); the clamp lets the compiler see it.
  const int per_row = args.per_row < 1 ? 1 : (args.per_row < kCapacity ? args.per_row : kCapacity);
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ x = args.logits + row * args.row_stride;
    LseState<acc_t> lse = lse_empty<acc_t>();
    BeamCandidate<acc_t> list[kCapacity];
    int size = 0;
    stream_row<unroll_for<acc_t>()>(x, n, [&](const auto& raw, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
      acc_t v[N];
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = to_acc<acc_t>(raw[k]);
      lse_push_values(lse, v);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        // Most values lose to the list's worst entry at once. The full order decides (stream_row
        // does not visit a thread's elements in index order).
        beam_insert(list, &size, per_row, BeamCandidate<acc_t>{v[k], j + k});
      }
    });
    lse = block_all_reduce(
        lse, lse_empty<acc_t>(),
        [](const LseState<acc_t>& a, const LseState<acc_t>& b) { return lse_merge(a, b); });
    const BeamRow<acc_t> beam_row_state =
        beam_row(lse, args.beam_scores[row]);  // every thread reads the same value
    BeamCandidate<acc_t>* __restrict__ out = args.kept + row * per_row;
    acc_t constant;
    if (beam_row_constant(beam_row_state, &constant)) {
      for (int k = threadIdx.x; k < per_row; k += blockDim.x) out[k] = {constant, k};
      __syncthreads();  // the next row's reductions reuse the shared slots
      continue;
    }
    int next = 0;
    for (int k = 0; k < per_row; ++k) {
      const BeamSlot<acc_t> mine = next < size ? BeamSlot<acc_t>{list[next].value, list[next].index}
                                               : BeamSlot<acc_t>{acc_t(0), kNoBeamIndex};
      const BeamSlot<acc_t> best = block_all_reduce(
          mine, BeamSlot<acc_t>{acc_t(0), kNoBeamIndex},
          [](const BeamSlot<acc_t>& a, const BeamSlot<acc_t>& b) { return better_slot(a, b); });
      // Token ids are unique, so exactly one thread owns the winner.
      if (mine.index == best.index) ++next;
      if (threadIdx.x == 0) out[k] = {beam_score_of(beam_row_state, best.value), best.index};
    }
  }
}

template <typename acc_t>
struct BeamMergeArgs {
  const BeamCandidate<acc_t>* __restrict__ kept;  // [batch * num_beams, per_row]
  int64_t batch;
  int64_t num_beams;
  int64_t vocab;
  int per_row;
  int64_t width;
  acc_t* __restrict__ scores;    // [batch, width]
  int64_t* __restrict__ beams;   // [batch, width]
  int64_t* __restrict__ tokens;  // [batch, width]
};

template <typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads)
    beam_merge_kernel(const BeamMergeArgs<acc_t> args) {
  const int64_t count = args.num_beams * args.per_row;
  for (int64_t item = blockIdx.x; item < args.batch; item += gridDim.x) {
    const BeamCandidate<acc_t>* __restrict__ kept = args.kept + item * count;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      const BeamCandidate<acc_t> c = kept[i];
      const int64_t flat = (i / args.per_row) * args.vocab + c.index;
      int64_t rank = 0;
      for (int64_t j = 0; j < count && rank < args.width; ++j) {
        const BeamCandidate<acc_t> d = kept[j];
        const int64_t other = (j / args.per_row) * args.vocab + d.index;
        rank += beam_ranks_before(d.value, other, c.value, flat) ? 1 : 0;
      }
      if (rank < args.width) {
        const int64_t slot = item * args.width + rank;
        args.scores[slot] = c.value;
        args.beams[slot] = i / args.per_row;
        args.tokens[slot] = c.index;
      }
    }
  }
}

}  // namespace cuda
}  // namespace logitops

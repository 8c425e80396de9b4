// Vocabulary-parallel cross-entropy kernels for CUDA: the per-rank halves around the collective,
// with the same semantics as csrc/cpu/vocab_parallel.cpp. One thread block per row, with the
// cross-entropy kernels' row machinery: the 16-byte vector stream with peeled head and tail
// (stream_row), the online log-sum-exp and block reduction, and the gradient row writer.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "cross_entropy_kernels.cuh"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about four 16-byte vectors each, as the cross-entropy kernels.
template <typename scalar_t>
inline int vocab_parallel_block_threads(int64_t local_classes) {
  return block_threads_for<scalar_t>(local_classes);
}

template <typename scalar_t>
struct VocabSliceArgs {
  const scalar_t* logits;  // [num_rows, local_classes], unit stride along classes
  int64_t row_stride;      // in elements
  int64_t num_rows;
  int64_t local_classes;
  const int64_t* target;  // [num_rows], global class ids
  int64_t vocab_start;    // global id of the slice's first class
};

// stats [3, num_rows], float64: the slice's lse, the target's logit (0 when on another rank), the
// logit sum (accumulated relative to the slice's first logit, the shift added back in double).
// One read of the slice.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    vocab_parallel_stats_kernel(const VocabSliceArgs<scalar_t> args, double* __restrict__ stats) {
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    RowPartial<acc_t> part{lse_empty<acc_t>(), acc_t(0)};
    const acc_t shift =
        args.local_classes > 0 ? logit_sum_shift(to_acc<acc_t>(logits[0])) : acc_t(0);
    stream_row<unroll_for<acc_t>()>(logits, args.local_classes, [&](const auto& raw, int64_t) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
      acc_t z[N];
#pragma unroll
      for (int k = 0; k < N; ++k) z[k] = to_acc<acc_t>(raw[k]);
      lse_push_values(part.lse, z);
#pragma unroll
      for (int k = 0; k < N; ++k) part.weighted_sum += z[k] - shift;
    });
    part = block_reduce(part, RowPartial<acc_t>{lse_empty<acc_t>(), acc_t(0)},
                        [](const RowPartial<acc_t>& a, const RowPartial<acc_t>& b) {
                          return merge_partials(a, b);
                        });
    if (threadIdx.x == 0) {
      const int64_t local = args.target[row] - args.vocab_start;
      stats[row] = lse_finalize_wide(part.lse);
      stats[args.num_rows + row] =
          local >= 0 && local < args.local_classes ? double(to_acc<acc_t>(logits[local])) : 0.0;
      stats[2 * args.num_rows + row] =
          double(part.weighted_sum) + double(shift) * double(args.local_classes);
    }
  }
}

// grad [num_rows, local_classes] (contiguous) = upstream[row] * dloss/dz over the slice, with the
// global lse and num_classes global classes: one read of the slice, one write, by vectors. Rows
// whose lse is not finite are NaN unless they have nothing to propagate (0). fp64 at one block of
// 512 per SM: its 64-bit target offsets do not fit 64 registers beside the math.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, sizeof(acc_t) == 8 ? 1 : kMinBlocksPerSm)
    vocab_parallel_backward_kernel(const VocabSliceArgs<scalar_t> args,
                                   const acc_t* __restrict__ upstream,
                                   const acc_t* __restrict__ lse_in, int64_t num_classes,
                                   int64_t ignore_index, acc_t label_smoothing, acc_t z_loss,
                                   scalar_t* __restrict__ grad) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const int64_t t = args.target[row];
    const acc_t lse = lse_in[row];
    const acc_t up = upstream[row];
    const auto coef = t == ignore_index ? cross_entropy_ignored_row<acc_t>()
                                        : cross_entropy_row(lse, acc_t(1), acc_t(num_classes),
                                                            label_smoothing, num_classes, z_loss);
    const bool zero = cross_entropy_row_grad_is_zero(coef, up, acc_t(0));
    const bool undefined = !zero && !(lse > -kInf && lse < kInf);
    write_cross_entropy_grad_row(
        args.logits + row * args.row_stride, grad + row * args.local_classes, args.local_classes,
        t - args.vocab_start, lse, coef, up, acc_t(0), static_cast<const acc_t*>(nullptr), acc_t(0),
        zero || undefined, zero ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN());
  }
}

}  // namespace cuda
}  // namespace logitops

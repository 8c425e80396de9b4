// Vocabulary-parallel cross-entropy kernels for CUDA: the per-rank halves around the collective,
// with the same semantics as csrc/cpu/vocab_parallel.cpp. One thread block per row, like the
// cross-entropy kernels whose online log-sum-exp and block reduction they reuse.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about four elements each.
inline int vocab_parallel_block_threads(int64_t local_classes) {
  return threads_for(local_classes, 4);
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
// Elements are read one at a time: these rows are slices of a sharded vocabulary and rarely start
// on a 16-byte boundary, and the loop is bound by memory either way.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    vocab_parallel_stats_kernel(const VocabSliceArgs<scalar_t> args, double* __restrict__ stats) {
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    RowPartial<acc_t> part{lse_empty<acc_t>(), acc_t(0)};
    const acc_t shift =
        args.local_classes > 0 ? logit_sum_shift(to_acc<acc_t>(logits[0])) : acc_t(0);
    for (int64_t j = threadIdx.x; j < args.local_classes; j += blockDim.x) {
      const acc_t z[1] = {to_acc<acc_t>(logits[j])};
      lse_push_values(part.lse, z);
      part.weighted_sum += z[0] - shift;
    }
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
// global lse and num_classes global classes.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    vocab_parallel_backward_kernel(const VocabSliceArgs<scalar_t> args,
                                   const acc_t* __restrict__ upstream,
                                   const acc_t* __restrict__ lse_in, int64_t num_classes,
                                   int64_t ignore_index, acc_t label_smoothing, acc_t z_loss,
                                   scalar_t* __restrict__ grad) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    scalar_t* __restrict__ out = grad + row * args.local_classes;
    const int64_t t = args.target[row];
    const acc_t lse = lse_in[row];
    const acc_t up = upstream[row];
    const auto coef = t == ignore_index ? cross_entropy_ignored_row<acc_t>()
                                        : cross_entropy_row(lse, acc_t(1), acc_t(num_classes),
                                                            label_smoothing, num_classes, z_loss);
    const bool zero = cross_entropy_row_grad_is_zero(coef, up, acc_t(0));
    const bool undefined = !zero && !(lse > -kInf && lse < kInf);
    const int64_t local_target = t - args.vocab_start;
    for (int64_t j = threadIdx.x; j < args.local_classes; j += blockDim.x) {
      acc_t g = acc_t(0);
      if (undefined) {
        g = std::numeric_limits<acc_t>::quiet_NaN();
      } else if (!zero) {
        const acc_t prob = fast_exp(to_acc<acc_t>(logits[j]) - lse);
        g = cross_entropy_grad(coef, up, acc_t(0), prob, j == local_target, acc_t(1));
      }
      out[j] = from_acc<scalar_t>(g);
    }
  }
}

}  // namespace cuda
}  // namespace logitops

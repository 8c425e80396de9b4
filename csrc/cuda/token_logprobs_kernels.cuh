// Per-token log-probability and entropy kernels for CUDA (softmax(logits / T)). Torch-free: the
// row math is common/token_logprobs_math.h, shared with the CPU kernels.
//
// One thread block per row, with the row machinery of the cross-entropy kernels: 16-byte vector
// loads with peeled head and tail (stream_row), the block reduction, and a gradient row writer
// that reads the logits and writes the gradient by vectors. Forward: one read of the row (the
// log-sum-exp, or with the entropy the EntropyState: one exp per element for both); backward:
// one read and one write, from the saved lse and entropy. Ignored rows (target == ignore_index)
// get logprob 0, entropy 0, lse 0 and a zero gradient, and read nothing; a target out of range
// gives NaN for its row (never an out-of-bounds read).
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "../common/token_logprobs_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about four 16-byte vectors each, as the cross-entropy kernels.
template <typename scalar_t>
inline int token_logprobs_block_threads(int64_t num_classes) {
  return threads_for(vector_count<scalar_t>(num_classes), 4);
}

template <typename scalar_t, typename acc_t>
struct TokenLogprobArgs {
  const scalar_t* logits;  // [num_rows, num_classes], unit stride along classes
  int64_t stride;          // in elements
  int64_t num_rows;
  int64_t num_classes;
  const int64_t* target;  // [num_rows], contiguous
  int64_t ignore_index;
  acc_t inv_temperature;
};

// Forward: logprob_out, lse_out and (when entropy_out is not nullptr) entropy_out, one value per
// row in the accumulation dtype. blockDim.x from token_logprobs_block_threads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    token_logprobs_forward_kernel(const TokenLogprobArgs<scalar_t, acc_t> args,
                                  acc_t* __restrict__ logprob_out, acc_t* __restrict__ entropy_out,
                                  acc_t* __restrict__ lse_out) {
  const int64_t num_classes = args.num_classes;
  const acc_t inv_t = args.inv_temperature;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const int64_t y = args.target[row];
    // Uniform across the block, so the early exit skips no barrier that others wait at.
    if (y == args.ignore_index) {
      if (threadIdx.x == 0) {
        logprob_out[row] = lse_out[row] = acc_t(0);
        if (entropy_out != nullptr) entropy_out[row] = acc_t(0);
      }
      continue;
    }
    const scalar_t* __restrict__ logits = args.logits + row * args.stride;
    const bool valid = target_is_valid(y, num_classes, args.ignore_index);
    LseState<acc_t> state;
    if (entropy_out != nullptr) {
      // One read for both: the log-sum-exp and entropy state (token_logprobs_math.h).
      EntropyState<acc_t> part = entropy_empty<acc_t>();
      stream_row<unroll_for<acc_t>()>(logits, num_classes, [&](const auto& raw, int64_t) {
        constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
        for (int k = 0; k < N; ++k) entropy_push(part, to_acc<acc_t>(raw[k]) * inv_t);
      });
      const EntropyState<acc_t> full =
          block_all_reduce(part, entropy_empty<acc_t>(),
                           [](const EntropyState<acc_t>& a, const EntropyState<acc_t>& b) {
                             return entropy_merge(a, b);
                           });
      state = entropy_lse_state(full);
      if (threadIdx.x == 0) entropy_out[row] = valid ? entropy_finalize(full) : nan;
    } else {
      LseState<acc_t> part = lse_empty<acc_t>();
      stream_row<unroll_for<acc_t>()>(logits, num_classes, [&](const auto& raw, int64_t) {
        constexpr int N = sizeof(raw) / sizeof(raw[0]);
        acc_t z[N];
#pragma unroll
        for (int k = 0; k < N; ++k) z[k] = to_acc<acc_t>(raw[k]) * inv_t;
        lse_push_values(part, z);
      });
      state = block_all_reduce(
          part, lse_empty<acc_t>(),
          [](const LseState<acc_t>& a, const LseState<acc_t>& b) { return lse_merge(a, b); });
    }
    if (threadIdx.x == 0) {
      lse_out[row] = lse_finalize(state);
      // The target's logit again: one element, just read (L1 / L2).
      logprob_out[row] =
          valid ? token_logprob(state, to_acc<acc_t>(load_element(logits + y)) * inv_t) : nan;
    }
  }
}

// Backward: grad[row, :] = d (a logprob + b entropy) / d logits with a = grad_logprob[row] and
// b = grad_entropy[row] (either may be nullptr: 0), from the saved lse and entropy. grad is
// contiguous [num_rows, num_classes]. Rows with nothing to propagate are 0 and rows whose
// gradient is undefined (token_logprob_grad_is_defined) NaN, without reading their logits.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    token_logprobs_backward_kernel(const TokenLogprobArgs<scalar_t, acc_t> args,
                                   const acc_t* __restrict__ grad_logprob,
                                   const acc_t* __restrict__ grad_entropy,
                                   const acc_t* __restrict__ lse, const acc_t* __restrict__ entropy,
                                   scalar_t* __restrict__ grad) {
  const int64_t num_classes = args.num_classes;
  const acc_t inv_t = args.inv_temperature;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const int64_t y = args.target[row];
    const acc_t a = grad_logprob != nullptr ? grad_logprob[row] : acc_t(0);
    const acc_t b = grad_entropy != nullptr ? grad_entropy[row] : acc_t(0);
    const bool zero = token_logprob_grad_is_zero(y == args.ignore_index, a, b);
    const acc_t row_lse = zero ? acc_t(0) : lse[row];
    const bool undefined =
        !zero &&
        !token_logprob_grad_is_defined(target_is_valid(y, num_classes, args.ignore_index), row_lse);
    const acc_t h = grad_entropy != nullptr && !zero ? entropy[row] : acc_t(0);
    write_row(args.logits + row * args.stride, grad + row * num_classes, num_classes,
              zero || undefined, zero ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN(),
              [&](acc_t raw, int64_t j) {
                return token_logprob_grad(raw * inv_t - row_lse, j == y, a, b, h, inv_t);
              });
  }
}

}  // namespace cuda
}  // namespace logitops

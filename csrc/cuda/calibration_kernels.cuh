// calibration_row_stats kernel for CUDA, with the semantics of csrc/cpu/calibration.cpp: one
// thread block per row, each thread pushing its share of the row (16-byte vectors, stream_row)
// into the online state of csrc/common/calibration_math.h, the shares merged by block_reduce. The
// row is read once; the label's logit is read once more by thread 0.
#pragma once

#include <cstdint>

#include "../common/calibration_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about eight classes each (one exp per class, bound by memory).
inline int calibration_block_threads(int64_t num_classes) { return threads_for(num_classes, 8); }

template <typename scalar_t>
struct CalibrationArgs {
  const scalar_t* logits;  // [num_rows, num_classes], unit stride along classes
  int64_t row_stride;      // in elements
  int64_t num_rows;
  int64_t num_classes;
  const int64_t* labels;  // [num_rows]
};

// stats [3, num_rows] float64 (confidence, nll, brier) and prediction [num_rows] int64.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    calibration_row_stats_kernel(const CalibrationArgs<scalar_t> args, double* __restrict__ stats,
                                 int64_t* __restrict__ prediction) {
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    const int64_t label = args.labels[row];
    auto state = calibration_state_empty<acc_t>();
    stream_row<unroll_for<acc_t>()>(logits, args.num_classes, [&](const auto& raw, int64_t j0) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        calibration_push(state, to_acc<acc_t>(raw[k]), j0 + k, j0 + k != label);
      }
    });
    state =
        block_reduce(state, calibration_state_empty<acc_t>(),
                     [](const CalibrationRowState<acc_t>& a, const CalibrationRowState<acc_t>& b) {
                       return calibration_merge(a, b);
                     });
    if (threadIdx.x == 0) {
      const bool label_ok = label >= 0 && label < args.num_classes;
      const acc_t label_logit = label_ok ? to_acc<acc_t>(logits[label]) : acc_t(0);
      const auto out = calibration_finalize(state, label_logit, label_ok);
      stats[row] = double(out.confidence);
      stats[args.num_rows + row] = double(out.nll);
      stats[2 * args.num_rows + row] = double(out.brier);
      prediction[row] = out.prediction;
    }
  }
}

}  // namespace cuda
}  // namespace logitops

// Distillation-divergence kernels for CUDA (forward / reverse KL, generalized JSD between
// softmax(teacher / T) and softmax(student / T)). Torch-free: the per-element math is
// divergence_term / divergence_grad of logit_math.h, shared with the CPU kernels.
//
// One thread block per row, scalar loads. Per row: pass 1 computes both log-sum-exps with the
// online merge; pass 2 the loss and S = sum_j q_j g_j (forward KL: S = -1, and its gradient is
// written in pass 2); pass 3 the gradient scale * q_j (g_j - S). Ignored rows (target ==
// ignore_index) have loss 0 and gradient 0.
#pragma once

#include <cstdint>

#include "../common/logit_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about eight elements each.
inline int distill_block_threads(int64_t num_classes) { return threads_for(num_classes, 8); }

// Everything both kernels read that does not change from row to row.
template <typename scalar_t, typename acc_t>
struct DistillArgs {
  const scalar_t* student;  // [num_rows, num_classes], unit stride along classes
  const scalar_t* teacher;  // same shape, unit stride along classes
  int64_t student_stride;   // in elements
  int64_t teacher_stride;
  int64_t num_rows;
  int64_t num_classes;
  const int64_t* target;  // [num_rows], contiguous; nullptr: every row counts
  int64_t ignore_index;
  acc_t inv_temperature;
  DivergenceKind kind;
  acc_t beta;
};

template <typename acc_t>
struct DistillLse {
  LseState<acc_t> student;
  LseState<acc_t> teacher;
};

template <typename acc_t>
struct DistillSums {
  acc_t loss;
  acc_t row_s;  // sum_j q_j g_j
};

// Computes one row with the whole block (every thread must call it; the row is not ignored).
// Returns the row's loss in thread 0 (unspecified elsewhere). Writes the gradient
// scale * dloss/d(student / T) into grad_row (contiguous) unless it is nullptr. need_loss false
// (the backward: grad_row must not be nullptr) lets the forward KL skip the loss.
template <typename scalar_t, typename acc_t>
__device__ acc_t distill_row(const DistillArgs<scalar_t, acc_t>& args, int64_t row, bool need_loss,
                             acc_t scale, scalar_t* __restrict__ grad_row) {
  __shared__ LogSoftmaxPair<acc_t> shared_logs;
  __shared__ acc_t shared_s;
  const int64_t num_classes = args.num_classes;
  const int64_t threads = blockDim.x;
  const acc_t inv_t = args.inv_temperature;
  const scalar_t* __restrict__ student = args.student + row * args.student_stride;
  const scalar_t* __restrict__ teacher = args.teacher + row * args.teacher_stride;

  // Pass 1: both log-sum-exps of the logits divided by T.
  DistillLse<acc_t> part{lse_empty<acc_t>(), lse_empty<acc_t>()};
  for (int64_t j = threadIdx.x; j < num_classes; j += threads) {
    const acc_t s[1] = {to_acc<acc_t>(load_element(student + j)) * inv_t};
    const acc_t t[1] = {to_acc<acc_t>(load_element(teacher + j)) * inv_t};
    lse_push_values(part.student, s);
    lse_push_values(part.teacher, t);
  }
  part = block_reduce(part, DistillLse<acc_t>{lse_empty<acc_t>(), lse_empty<acc_t>()},
                      [](const DistillLse<acc_t>& a, const DistillLse<acc_t>& b) {
                        return DistillLse<acc_t>{lse_merge(a.student, b.student),
                                                 lse_merge(a.teacher, b.teacher)};
                      });
  if (threadIdx.x == 0) shared_logs = log_softmax_pair(part.teacher, part.student);
  __syncthreads();
  const LogSoftmaxPair<acc_t> logs = shared_logs;

  const DivergenceKind kind = args.kind;
  const acc_t beta = args.beta;
  auto term_at = [&](int64_t j) {
    const acc_t s = to_acc<acc_t>(load_element(student + j)) * inv_t;
    const acc_t t = to_acc<acc_t>(load_element(teacher + j)) * inv_t;
    return divergence_term(kind, beta, logs.lp(t), logs.lq(s), logs.lp_minus_lq(t, s));
  };

  // Pass 2: the loss and S; the forward KL knows S = -1 and writes its gradient here.
  const bool forward_kl = kind == kForwardKl;
  DistillSums<acc_t> sums{acc_t(0), acc_t(0)};
  if (forward_kl && !need_loss) {
    for (int64_t j = threadIdx.x; j < num_classes; j += threads) {
      store_element(grad_row + j,
                    from_acc<scalar_t>(divergence_grad(term_at(j), acc_t(-1), scale)));
    }
    return acc_t(0);
  }
  for (int64_t j = threadIdx.x; j < num_classes; j += threads) {
    const auto term = term_at(j);
    sums.loss += term.loss;
    sums.row_s += term.q_g;
    if (forward_kl && grad_row != nullptr) {
      store_element(grad_row + j, from_acc<scalar_t>(divergence_grad(term, acc_t(-1), scale)));
    }
  }
  sums = block_reduce(sums, DistillSums<acc_t>{acc_t(0), acc_t(0)},
                      [](const DistillSums<acc_t>& a, const DistillSums<acc_t>& b) {
                        return DistillSums<acc_t>{a.loss + b.loss, a.row_s + b.row_s};
                      });
  if (forward_kl || grad_row == nullptr) return sums.loss;

  // Pass 3: the gradient q_j (g_j - S), scaled.
  if (threadIdx.x == 0) shared_s = sums.row_s;
  __syncthreads();
  const acc_t row_s = shared_s;
  for (int64_t j = threadIdx.x; j < num_classes; j += threads) {
    store_element(grad_row + j, from_acc<scalar_t>(divergence_grad(term_at(j), row_s, scale)));
  }
  return sums.loss;
}

template <typename scalar_t>
__device__ __forceinline__ void zero_row(scalar_t* __restrict__ grad_row, int64_t num_classes) {
  for (int64_t j = threadIdx.x; j < num_classes; j += blockDim.x) {
    store_element(grad_row + j, from_acc<scalar_t>(0.0f));
  }
}

// Forward: loss_out[row] (accumulation dtype) and, when grad is not nullptr, the gradient of the
// reduced loss for an upstream gradient of 1: 1 / row_count (a device scalar) per row for
// batchmean (`mean`), 1 otherwise. grad is contiguous [num_rows, num_classes]. One block per
// row; blockDim.x from distill_block_threads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    distill_forward_kernel(const DistillArgs<scalar_t, acc_t> args,
                           const acc_t* __restrict__ row_count, bool mean, double temperature,
                           acc_t* __restrict__ loss_out, scalar_t* __restrict__ grad) {
  const int64_t num_classes = args.num_classes;
  acc_t scale = acc_t(0);
  if (grad != nullptr) {
    // As the CPU kernel: in double, upstream / T, rounded once.
    const double upstream = mean ? 1.0 / double(*row_count) : 1.0;
    scale = static_cast<acc_t>(upstream / temperature);
  }
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    scalar_t* grad_row = grad != nullptr ? grad + row * num_classes : nullptr;
    // Uniform across the block, so the early exit skips no barrier that others wait at.
    if (args.target != nullptr && args.target[row] == args.ignore_index) {
      if (threadIdx.x == 0) loss_out[row] = acc_t(0);
      if (grad_row != nullptr) zero_row(grad_row, num_classes);
      continue;
    }
    const acc_t loss = distill_row(args, row, true, scale, grad_row);
    if (threadIdx.x == 0) loss_out[row] = loss;
  }
}

// Backward: grad[row, :] = upstream[row] / T * dloss/d(student / T); ignored rows are 0.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    distill_backward_kernel(const DistillArgs<scalar_t, acc_t> args,
                            const acc_t* __restrict__ upstream, acc_t temperature,
                            scalar_t* __restrict__ grad) {
  const int64_t num_classes = args.num_classes;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    scalar_t* grad_row = grad + row * num_classes;
    if (args.target != nullptr && args.target[row] == args.ignore_index) {
      zero_row(grad_row, num_classes);
      continue;
    }
    distill_row(args, row, false, upstream[row] / temperature, grad_row);
  }
}

}  // namespace cuda
}  // namespace logitops

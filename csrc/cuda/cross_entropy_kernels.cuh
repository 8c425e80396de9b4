// Cross-entropy kernels for CUDA. Torch-free: only the math of logit_math.h, shared with the CPU
// kernels, and CUDA headers, so that the device code compiles without ATen.
//
// Both kernels give one thread block to one row and stream the row through 16-byte vectors. A row
// pointer is rarely 16-byte aligned for every row (vocab sizes such as 50257), so each row peels
// the few elements before its first 16-byte boundary and after its last one, and loads the rest as
// whole vectors.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row of both cross-entropy families: about four vectors each.
template <typename scalar_t>
inline int block_threads_for(int64_t num_classes) {
  return threads_for(vector_count<scalar_t>(num_classes), 4);
}

// Everything both kernels read that does not change from row to row.
template <typename scalar_t, typename acc_t>
struct CrossEntropyArgs {
  const scalar_t* logits;  // [num_rows, num_classes], unit stride along classes
  int64_t row_stride;      // in elements
  int64_t num_rows;
  int64_t num_classes;
  const int64_t* target;      // [num_rows], contiguous
  const acc_t* weight;        // [num_classes], contiguous; nullptr when absent
  const acc_t* weight_total;  // device scalar, sum of weight; nullptr means num_classes
  int64_t ignore_index;
  acc_t label_smoothing;
  acc_t z_loss;
  acc_t softcap;  // <= 0 when off
};

// Loads N logits as acc_t, soft-capped when the cap is on.
template <typename scalar_t, typename acc_t, int N>
__device__ __forceinline__ void capped_values(const scalar_t (&raw)[N], acc_t cap, acc_t (&z)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) z[k] = softcap_value(to_acc<acc_t>(raw[k]), cap);
}

// Writes out[0, n) = up * dloss/dz_j + up_lse * dlse/dz_j from the row's coefficients
// (logit_math.h's cross_entropy_row), recomputing p_j = exp(z_j - lse) from the logits: one read of
// the row, one write, by 16-byte vectors. A constant_row is `constant` everywhere and reads
// nothing. t is the target's index in the row (outside [0, n) when it lies elsewhere); class_weight
// may be nullptr. Every argument is uniform across the block; no barrier. Shared by the
// cross-entropy and the vocabulary-parallel backwards.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void write_cross_entropy_grad_row(
    const scalar_t* __restrict__ logits, scalar_t* __restrict__ out, int64_t n, int64_t t,
    acc_t lse, const CrossEntropyRow<acc_t>& coef, acc_t up, acc_t up_lse,
    const acc_t* __restrict__ class_weight, acc_t cap, bool constant_row, acc_t constant) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const acc_t inv_cap = cap > acc_t(0) ? acc_t(1) / cap : acc_t(0);
  // Gradient of one element from its raw logit (the cap's derivative from the capped value).
  write_row(logits, out, n, constant_row, constant, [&](acc_t raw, int64_t j) -> acc_t {
    const acc_t z = softcap_value(raw, cap);
    const acc_t prob = lse == -kInf ? acc_t(0) : fast_exp(z - lse);
    acc_t g = cross_entropy_grad(coef, up, up_lse, prob, j == t,
                                 class_weight != nullptr ? class_weight[j] : acc_t(1));
    if (cap > acc_t(0)) g *= softcap_derivative_from_capped(z, inv_cap);
    return g;
  });
}

// Writes one row of the gradient, grad_row[j] = up * dloss/dz_j + up_lse * dlse/dz_j. Rows with
// an invalid target, or whose lse is NaN / +inf, are NaN; rows with nothing to propagate
// (ignored, no lse gradient) are 0 whatever their logits, and read nothing. Every argument is
// uniform across the block; no barrier.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void cross_entropy_row_grad(
    const CrossEntropyArgs<scalar_t, acc_t>& args, const scalar_t* __restrict__ logits, int64_t t,
    acc_t lse, acc_t up, acc_t up_lse, acc_t weight_total, scalar_t* __restrict__ out) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const int64_t num_classes = args.num_classes;
  bool constant_row = true;
  acc_t constant = std::numeric_limits<acc_t>::quiet_NaN();
  CrossEntropyRow<acc_t> coef = cross_entropy_ignored_row<acc_t>();
  if (target_is_valid(t, num_classes, args.ignore_index)) {
    if (t != args.ignore_index) {
      const acc_t target_weight = args.weight != nullptr ? args.weight[t] : acc_t(1);
      coef = cross_entropy_row(lse, target_weight, weight_total, args.label_smoothing, num_classes,
                               args.z_loss);
    }
    if (cross_entropy_row_grad_is_zero(coef, up, up_lse)) {
      constant = acc_t(0);
    } else if (lse < kInf) {  // false for NaN / +inf: the softmax is undefined
      constant_row = false;
    }
  }
  // Per-class weights matter only through the smoothing term.
  const acc_t* __restrict__ class_weight = coef.smooth_coef != acc_t(0) ? args.weight : nullptr;
  write_cross_entropy_grad_row(logits, out, num_classes, t, lse, coef, up, up_lse, class_weight,
                               args.softcap, constant_row, constant);
}

// Forward: per row, the lse of the (capped) logits, the row's loss and the weight its target
// adds to the mean's denominator (w[target], 0 when ignored, NaN for an invalid target so that
// the total shows it). One block per row; blockDim.x from block_threads_for.
//
// Fused (cross_entropy_fused_kernel, the training path), the block then writes its row's
// gradient for the upstream gradient grad_upstream[row] (that of the reduced loss for an upstream
// of 1, from the total weight computed ahead): it reads the row a second time right after the
// first, so that the second read comes from L2 (the launcher bounds the rows in flight by the
// L2's size: l2_resident_row_grid), and the logits cross HBM once each way: 1 read + 1 write of
// N x V.
template <bool kFused, typename scalar_t, typename acc_t>
__device__ __forceinline__ void cross_entropy_forward_rows(
    const CrossEntropyArgs<scalar_t, acc_t>& args, acc_t* __restrict__ lse_out,
    acc_t* __restrict__ loss_out, acc_t* __restrict__ row_weight_out,
    const acc_t* __restrict__ grad_upstream, scalar_t* __restrict__ grad) {
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const int64_t num_classes = args.num_classes;
  const bool smoothing = args.label_smoothing != acc_t(0);

  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    RowPartial<acc_t> part{lse_empty<acc_t>(), acc_t(0)};
    // The smoothing sum is taken relative to the target's logit (one cached load per thread).
    // fp64 has digits to spare, and without the shift its kernel fits 64 registers.
    acc_t shift = acc_t(0);
    if (sizeof(acc_t) == 4 && smoothing) {
      const int64_t t = args.target[row];
      if (t != args.ignore_index && target_is_valid(t, num_classes, args.ignore_index)) {
        shift = logit_sum_shift(softcap_value(to_acc<acc_t>(logits[t]), args.softcap));
      }
    }

    // Adds N consecutive logits starting at class j.
    auto accumulate = [&](const auto& raw, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
      acc_t z[N];
      capped_values(raw, args.softcap, z);
      lse_push_values(part.lse, z);
      if (smoothing) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const acc_t shifted = z[k] - shift;
          part.weighted_sum += args.weight != nullptr ? args.weight[j + k] * shifted : shifted;
        }
      }
    };

    stream_row<unroll_for<acc_t>()>(logits, num_classes, accumulate);

    const auto merge = [](const RowPartial<acc_t>& a, const RowPartial<acc_t>& b) {
      return merge_partials(a, b);
    };
    const RowPartial<acc_t> empty{lse_empty<acc_t>(), acc_t(0)};
    // The fused gradient needs the lse in every thread; the loss needs thread 0 only.
    part = kFused ? block_all_reduce(part, empty, merge) : block_reduce(part, empty, merge);
    if (threadIdx.x == 0) {
      const acc_t lse = lse_finalize(part.lse);
      lse_out[row] = lse;
      const int64_t t = args.target[row];
      acc_t loss = acc_t(0);
      acc_t row_weight = acc_t(0);
      if (!target_is_valid(t, num_classes, args.ignore_index)) {
        loss = kNaN;
        row_weight = kNaN;
      } else if (t != args.ignore_index) {
        const acc_t weight_total =
            args.weight_total != nullptr ? *args.weight_total : acc_t(num_classes);
        row_weight = args.weight != nullptr ? args.weight[t] : acc_t(1);
        const auto coef = cross_entropy_row(lse, row_weight, weight_total, args.label_smoothing,
                                            num_classes, args.z_loss);
        const acc_t target_logit = softcap_value(to_acc<acc_t>(logits[t]), args.softcap);
        loss = cross_entropy_row_loss(coef, part.lse, target_logit, weight_total, part.weighted_sum,
                                      shift, args.z_loss);
      }
      loss_out[row] = loss;
      row_weight_out[row] = row_weight;
    }
    // After the loss, so that the loss's operands are dead during the gradient's pass.
    if constexpr (kFused) {
      const acc_t weight_total =
          args.weight_total != nullptr ? *args.weight_total : acc_t(num_classes);
      cross_entropy_row_grad(args, logits, args.target[row], lse_finalize(part.lse),
                             grad_upstream[row], acc_t(0), weight_total, grad + row * num_classes);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_forward_kernel(const CrossEntropyArgs<scalar_t, acc_t> args,
                                 acc_t* __restrict__ lse_out, acc_t* __restrict__ loss_out,
                                 acc_t* __restrict__ row_weight_out) {
  cross_entropy_forward_rows<false, scalar_t, acc_t>(args, lse_out, loss_out, row_weight_out,
                                                     nullptr, nullptr);
}

// The fused variant at one resident block of 512 threads per SM: up to 128 registers, since the
// loss's pass and the gradient's back to back do not fit 64 without spilling; its grid keeps few
// rows in flight for the L2 anyway (l2_resident_row_grid).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    cross_entropy_fused_kernel(const CrossEntropyArgs<scalar_t, acc_t> args,
                               acc_t* __restrict__ lse_out, acc_t* __restrict__ loss_out,
                               acc_t* __restrict__ row_weight_out,
                               const acc_t* __restrict__ grad_upstream,
                               scalar_t* __restrict__ grad) {
  cross_entropy_forward_rows<true, scalar_t, acc_t>(args, lse_out, loss_out, row_weight_out,
                                                    grad_upstream, grad);
}

// Backward: grad[row, j] = upstream[row] * dloss/dz_j + upstream_lse[row] * dlse/dz_j (see
// cross_entropy_row_grad). grad is contiguous [num_rows, num_classes]. upstream_lse may be
// nullptr (no lse gradient). Reads the logits once, writes the gradient once.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_backward_kernel(const CrossEntropyArgs<scalar_t, acc_t> args,
                                  const acc_t* __restrict__ lse_in,
                                  const acc_t* __restrict__ upstream,
                                  const acc_t* __restrict__ upstream_lse,
                                  scalar_t* __restrict__ grad) {
  const acc_t weight_total =
      args.weight_total != nullptr ? *args.weight_total : acc_t(args.num_classes);
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    cross_entropy_row_grad(args, args.logits + row * args.row_stride, args.target[row], lse_in[row],
                           upstream[row], upstream_lse != nullptr ? upstream_lse[row] : acc_t(0),
                           weight_total, grad + row * args.num_classes);
  }
}

// The weight each row's target adds to the mean's denominator, as the forward kernel writes it
// (w[target], 0 when ignored, NaN for an invalid target), ahead of the fused forward, whose
// gradient needs the total before any row is done. One thread per row.
template <typename acc_t>
__global__ void cross_entropy_row_weight_kernel(const int64_t* __restrict__ target,
                                                const acc_t* __restrict__ weight, int64_t num_rows,
                                                int64_t num_classes, int64_t ignore_index,
                                                acc_t* __restrict__ row_weight_out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < num_rows;
       row += stride) {
    const int64_t t = target[row];
    acc_t w = std::numeric_limits<acc_t>::quiet_NaN();
    if (t == ignore_index) {
      w = acc_t(0);
    } else if (target_is_valid(t, num_classes, ignore_index)) {
      w = weight != nullptr ? weight[t] : acc_t(1);
    }
    row_weight_out[row] = w;
  }
}

// grad *= *scale, in place, unless *scale is 1: then every block returns after reading it, so
// that the usual upstream gradient of 1 costs a launch and nothing else (no host sync to find
// out). n elements, contiguous; vectorized from the first 16-byte boundary.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads)
    scale_gradient_kernel(scalar_t* __restrict__ grad, int64_t n, const acc_t* __restrict__ scale) {
  constexpr int kVec = vector_size<scalar_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const acc_t factor = *scale;
  if (factor == acc_t(1)) return;
  const int64_t head = unaligned_head(grad, n);
  const int64_t num_vectors = (n - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  auto scaled = [&](scalar_t x) { return from_acc<scalar_t>(to_acc<acc_t>(x) * factor); };
  for (int64_t j = first; j < head; j += stride)
    store_element(grad + j, scaled(load_element(grad + j)));
  for (int64_t j = tail + first; j < n; j += stride) {
    store_element(grad + j, scaled(load_element(grad + j)));
  }
  for (int64_t v = first; v < num_vectors; v += stride) {
    Vector x = load_vector<scalar_t, kVec>(grad + head + v * kVec, true);
#pragma unroll
    for (int k = 0; k < kVec; ++k) x.val[k] = scaled(x.val[k]);
    store_vector<scalar_t, kVec>(grad + head + v * kVec, x, true);
  }
}

}  // namespace cuda
}  // namespace logitops

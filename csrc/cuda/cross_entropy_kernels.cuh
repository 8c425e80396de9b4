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

// 16-byte vectors each thread loads before using them. fp64 has the heaviest math per vector and
// loads one at a time, which keeps it within 64 registers.
template <typename acc_t>
constexpr int unroll_for() {
  return sizeof(acc_t) == 8 ? 1 : 2;
}

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

// Forward: per row, the lse of the (capped) logits, the row's loss and the weight its target
// adds to the mean's denominator (w[target], 0 when ignored, NaN for an invalid target so that
// the total shows it). One block per row; blockDim.x from block_threads_for.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_forward_kernel(const CrossEntropyArgs<scalar_t, acc_t> args,
                                 acc_t* __restrict__ lse_out, acc_t* __restrict__ loss_out,
                                 acc_t* __restrict__ row_weight_out) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const int64_t num_classes = args.num_classes;
  const bool smoothing = args.label_smoothing != acc_t(0);
  const int64_t threads = blockDim.x;

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

    const int64_t head = unaligned_head(logits, num_classes);
    const int64_t num_vectors = (num_classes - head) / kVec;
    const int64_t tail = head + num_vectors * kVec;
    auto accumulate_one = [&](int64_t j) {
      const scalar_t raw[1] = {logits[j]};
      accumulate(raw, j);
    };
    for (int64_t j = threadIdx.x; j < head; j += threads) accumulate_one(j);
    for (int64_t j = tail + threadIdx.x; j < num_classes; j += threads) accumulate_one(j);
    const auto vectors = vector_pointer<const Vector>(logits + head);
    // kUnroll loads in flight per thread before any math: the loop is bound by memory latency.
    int64_t v = threadIdx.x;
    for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
      Vector batch[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) batch[u] = vectors[v + u * threads];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) accumulate(batch[u].val, head + (v + u * threads) * kVec);
    }
    for (; v < num_vectors; v += threads) {
      const Vector last = vectors[v];
      accumulate(last.val, head + v * kVec);
    }

    part = block_reduce(part, RowPartial<acc_t>{lse_empty<acc_t>(), acc_t(0)},
                        [](const RowPartial<acc_t>& a, const RowPartial<acc_t>& b) {
                          return merge_partials(a, b);
                        });
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
  }
}

// Backward: grad[row, j] = upstream[row] * dloss/dz_j + upstream_lse[row] * dlse/dz_j, recomputing
// p_j = exp(z_j - lse[row]). grad is contiguous [num_rows, num_classes]. upstream_lse may be
// nullptr (no lse gradient). Rows with an invalid target, or whose lse is NaN / +inf, are NaN;
// rows with nothing to propagate (ignored, no lse gradient) are 0 whatever their logits.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_backward_kernel(const CrossEntropyArgs<scalar_t, acc_t> args,
                                  const acc_t* __restrict__ lse_in,
                                  const acc_t* __restrict__ upstream,
                                  const acc_t* __restrict__ upstream_lse,
                                  scalar_t* __restrict__ grad) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const int64_t num_classes = args.num_classes;
  const int64_t threads = blockDim.x;
  const acc_t cap = args.softcap;
  const acc_t inv_cap = cap > acc_t(0) ? acc_t(1) / cap : acc_t(0);
  const acc_t weight_total = args.weight_total != nullptr ? *args.weight_total : acc_t(num_classes);

  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.row_stride;
    scalar_t* __restrict__ out = grad + row * num_classes;
    const int64_t t = args.target[row];
    const acc_t lse = lse_in[row];
    const acc_t up = upstream[row];
    const acc_t up_lse = upstream_lse != nullptr ? upstream_lse[row] : acc_t(0);

    // Rows whose every element is one value (uniform across the block) skip the loads.
    bool constant_row = true;
    acc_t constant = std::numeric_limits<acc_t>::quiet_NaN();
    CrossEntropyRow<acc_t> coef = cross_entropy_ignored_row<acc_t>();
    if (target_is_valid(t, num_classes, args.ignore_index)) {
      if (t != args.ignore_index) {
        const acc_t target_weight = args.weight != nullptr ? args.weight[t] : acc_t(1);
        coef = cross_entropy_row(lse, target_weight, weight_total, args.label_smoothing,
                                 num_classes, args.z_loss);
      }
      if (cross_entropy_row_grad_is_zero(coef, up, up_lse)) {
        constant = acc_t(0);
      } else if (lse < kInf) {  // false for NaN / +inf: the softmax is undefined
        constant_row = false;
      }
    }
    // Per-class weights matter only through the smoothing term.
    const acc_t* __restrict__ class_weight = coef.smooth_coef != acc_t(0) ? args.weight : nullptr;

    // Gradient of one element from its raw logit (the cap's derivative from the capped value).
    auto element_grad = [&](acc_t raw, int64_t j) -> acc_t {
      if (constant_row) return constant;
      const acc_t z = softcap_value(raw, cap);
      const acc_t prob = lse == -kInf ? acc_t(0) : fast_exp(z - lse);
      acc_t g = cross_entropy_grad(coef, up, up_lse, prob, j == t,
                                   class_weight != nullptr ? class_weight[j] : acc_t(1));
      if (cap > acc_t(0)) g *= softcap_derivative_from_capped(z, inv_cap);
      return g;
    };

    // Vectors are aligned on the output; the input is read by vectors too when it has the same
    // offset from a 16-byte boundary (as contiguous logits starting on a boundary do).
    const int64_t head = unaligned_head(out, num_classes);
    const int64_t num_vectors = (num_classes - head) / kVec;
    const int64_t tail = head + num_vectors * kVec;
    const bool vector_loads = same_alignment(logits, out);
    auto write_one = [&](int64_t j) {
      out[j] = from_acc<scalar_t>(element_grad(to_acc<acc_t>(logits[j]), j));
    };
    auto load = [&](int64_t j) -> Vector {
      if (constant_row) return Vector{};  // nothing to read
      return load_vector<scalar_t, kVec>(logits + j, vector_loads);
    };
    auto store = [&](int64_t j, const Vector& raw) {
      Vector result;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        result.val[k] = from_acc<scalar_t>(element_grad(to_acc<acc_t>(raw.val[k]), j + k));
      }
      *vector_pointer<Vector>(out + j) = result;
    };
    for (int64_t j = threadIdx.x; j < head; j += threads) write_one(j);
    for (int64_t j = tail + threadIdx.x; j < num_classes; j += threads) write_one(j);
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
}

}  // namespace cuda
}  // namespace logitops

// Cross-entropy kernels for class-probability targets on CUDA. Torch-free, like the class-index
// kernels whose design they share: one thread block per row, 16-byte vectors with the unaligned
// head and tail of each row peeled, a per-thread online lse and a fixed-order block reduction.
//
// Targets have the logits' dtype and shape, so every class costs two loads instead of one. The
// math per element is that of the soft_target_* helpers of logit_math.h, shared with the CPU
// kernels.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "cross_entropy_kernels.cuh"
#include "cuda_utils.cuh"

namespace logitops {
namespace cuda {

// Everything both kernels read that does not change from row to row.
template <typename scalar_t, typename acc_t>
struct SoftTargetArgs {
  const scalar_t* logits;  // [num_rows, num_classes], unit stride along classes
  const scalar_t* target;  // same shape, unit stride along classes, its own row stride
  int64_t logits_stride;   // in elements
  int64_t target_stride;   // in elements
  int64_t num_rows;
  int64_t num_classes;
  const acc_t* weight;  // [num_classes], contiguous; nullptr when absent
  acc_t label_smoothing;
  acc_t z_loss;
  acc_t softcap;  // <= 0 when off
};

// a_c of N consecutive classes starting at j.
template <typename scalar_t, typename acc_t, int N>
__device__ __forceinline__ void target_coefs(const SoftTargetArgs<scalar_t, acc_t>& args,
                                             const scalar_t (&prob)[N], int64_t j,
                                             acc_t (&coef)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    coef[k] = soft_target_coef(to_acc<acc_t>(prob[k]),
                               args.weight != nullptr ? args.weight[j + k] : acc_t(1),
                               args.label_smoothing, args.num_classes);
  }
}

// A thread's share of one row in the forward pass.
template <typename acc_t>
struct SoftRowPartial {
  LseState<acc_t> lse;
  acc_t coef_sum;            // A: sum_c a_c
  acc_t weighted_logit_sum;  // B: sum_c a_c (z_c - shift), shift from logit_sum_shift
};

// Writes one row of the gradient, grad_row[j] = up * dloss/dz_j + up_lse * dlse/dz_j, recomputing
// p_j = exp(z_j - lse) and a_j from the logits and the target (one read of each row, one write),
// with A = coef_sum. A row whose lse is NaN or +inf is NaN and reads nothing. Every argument is
// uniform across the block; no barrier.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void cross_entropy_probs_row_grad(
    const SoftTargetArgs<scalar_t, acc_t>& args, const scalar_t* __restrict__ logits,
    const scalar_t* __restrict__ target, acc_t lse, acc_t coef_sum, acc_t up, acc_t up_lse,
    scalar_t* __restrict__ out) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const int64_t num_classes = args.num_classes;
  const int64_t threads = blockDim.x;
  const acc_t cap = args.softcap;
  const acc_t inv_cap = cap > acc_t(0) ? acc_t(1) / cap : acc_t(0);
  const bool finite_row = lse < kInf;  // false for NaN / +inf: the softmax is undefined

  // Gradient of one element from its raw logit and target (the cap's derivative from the capped
  // value).
  auto element_grad = [&](acc_t raw, scalar_t prob, int64_t j) -> acc_t {
    if (!finite_row) return kNaN;
    const acc_t z = softcap_value(raw, cap);
    const acc_t p = lse == -kInf ? acc_t(0) : fast_exp(z - lse);
    const acc_t coef =
        soft_target_coef(to_acc<acc_t>(prob), args.weight != nullptr ? args.weight[j] : acc_t(1),
                         args.label_smoothing, num_classes);
    acc_t g = soft_target_grad(p, coef, coef_sum, lse, args.z_loss, up, up_lse);
    if (cap > acc_t(0)) g *= softcap_derivative_from_capped(z, inv_cap);
    return g;
  };

  // Vectors are aligned on the output; each input is read by vectors too when it has the same
  // offset from a 16-byte boundary.
  const int64_t head = unaligned_head(out, num_classes);
  const int64_t num_vectors = (num_classes - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  const bool logits_vectors = same_alignment(logits, out);
  const bool target_vectors = same_alignment(target, out);
  auto write_one = [&](int64_t j) {
    const acc_t g = finite_row ? element_grad(to_acc<acc_t>(load_element(logits + j)),
                                              load_element(target + j), j)
                               : kNaN;
    store_element(out + j, from_acc<scalar_t>(g));
  };
  auto store = [&](int64_t j, const Vector& raw, const Vector& prob) {
    Vector result;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      result.val[k] =
          from_acc<scalar_t>(element_grad(to_acc<acc_t>(raw.val[k]), prob.val[k], j + k));
    }
    store_vector<scalar_t, kVec>(out + j, result, true);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) write_one(j);
  for (int64_t j = tail + threadIdx.x; j < num_classes; j += threads) write_one(j);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
    Vector raw[kUnroll], prob[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = head + (v + u * threads) * kVec;
      raw[u] = Vector{};
      prob[u] = Vector{};
      if (finite_row) {  // a NaN row needs no inputs
        raw[u] = load_vector<scalar_t, kVec>(logits + j, logits_vectors);
        prob[u] = load_vector<scalar_t, kVec>(target + j, target_vectors);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) store(head + (v + u * threads) * kVec, raw[u], prob[u]);
  }
  for (; v < num_vectors; v += threads) {
    const int64_t j = head + v * kVec;
    Vector raw{}, prob{};
    if (finite_row) {
      raw = load_vector<scalar_t, kVec>(logits + j, logits_vectors);
      prob = load_vector<scalar_t, kVec>(target + j, target_vectors);
    }
    store(j, raw, prob);
  }
}

// Forward: per row, the lse of the (capped) logits and the row's loss. One block per row;
// blockDim.x from block_threads_for.
//
// Fused (cross_entropy_probs_fused_kernel, the training path), the block then writes its row's
// gradient for the upstream gradient grad_upstream[row], from its lse and A: it reads both rows a
// second time right after the first, from L2 (the launcher bounds the rows in flight,
// l2_resident_row_grid), so that HBM sees 2 reads (logits, target) + 1 write of N x V.
template <bool kFused, typename scalar_t, typename acc_t>
__device__ __forceinline__ void cross_entropy_probs_forward_rows(
    const SoftTargetArgs<scalar_t, acc_t>& args, acc_t* __restrict__ lse_out,
    acc_t* __restrict__ loss_out, const acc_t* __restrict__ grad_upstream,
    scalar_t* __restrict__ grad) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t num_classes = args.num_classes;
  const int64_t threads = blockDim.x;

  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.logits_stride;
    const scalar_t* __restrict__ target = args.target + row * args.target_stride;
    SoftRowPartial<acc_t> part{lse_empty<acc_t>(), acc_t(0), acc_t(0)};
    // B relative to the row's first logit (one cached load per thread). fp64 has digits to
    // spare, and without the shift its kernel fits the 64 registers of __launch_bounds__.
    const acc_t shift =
        sizeof(acc_t) == 8 ? acc_t(0)
                           : logit_sum_shift(softcap_value(to_acc<acc_t>(logits[0]), args.softcap));

    // Adds N consecutive classes starting at j.
    auto accumulate = [&](const auto& raw, const auto& prob, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
      acc_t z[N];
      capped_values(raw, args.softcap, z);
      lse_push_values(part.lse, z);
      acc_t coef[N];
      target_coefs(args, prob, j, coef);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        part.coef_sum += coef[k];
        part.weighted_logit_sum += soft_target_term(coef[k], z[k], shift);
      }
    };

    // Vectorized on the logits; the target rides along by vectors only at the same alignment.
    const int64_t head = unaligned_head(logits, num_classes);
    const int64_t num_vectors = (num_classes - head) / kVec;
    const int64_t tail = head + num_vectors * kVec;
    const bool target_vectors = same_alignment(logits, target);
    auto accumulate_one = [&](int64_t j) {
      const scalar_t raw[1] = {load_element(logits + j)};
      const scalar_t prob[1] = {load_element(target + j)};
      accumulate(raw, prob, j);
    };
    for (int64_t j = threadIdx.x; j < head; j += threads) accumulate_one(j);
    for (int64_t j = tail + threadIdx.x; j < num_classes; j += threads) accumulate_one(j);
    // kUnroll vectors of each operand in flight per thread before any math: the loop is bound by
    // memory latency.
    int64_t v = threadIdx.x;
    for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
      Vector raw[kUnroll], prob[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = head + (v + u * threads) * kVec;
        raw[u] = load_vector<scalar_t, kVec>(logits + j, true);
        prob[u] = load_vector<scalar_t, kVec>(target + j, target_vectors);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        accumulate(raw[u].val, prob[u].val, head + (v + u * threads) * kVec);
      }
    }
    for (; v < num_vectors; v += threads) {
      const int64_t j = head + v * kVec;
      const Vector raw = load_vector<scalar_t, kVec>(logits + j, true);
      const Vector prob = load_vector<scalar_t, kVec>(target + j, target_vectors);
      accumulate(raw.val, prob.val, j);
    }

    const auto merge = [](const SoftRowPartial<acc_t>& a, const SoftRowPartial<acc_t>& b) {
      return SoftRowPartial<acc_t>{lse_merge(a.lse, b.lse), a.coef_sum + b.coef_sum,
                                   a.weighted_logit_sum + b.weighted_logit_sum};
    };
    const SoftRowPartial<acc_t> empty{lse_empty<acc_t>(), acc_t(0), acc_t(0)};
    // The fused gradient needs lse and A in every thread; the loss needs thread 0 only.
    part = kFused ? block_all_reduce(part, empty, merge) : block_reduce(part, empty, merge);
    if (threadIdx.x == 0) {
      lse_out[row] = lse_finalize(part.lse);
      loss_out[row] =
          soft_target_loss(part.lse, part.coef_sum, part.weighted_logit_sum, shift, args.z_loss);
    }
    // After the loss, so that the loss's operands are dead during the gradient's pass.
    if constexpr (kFused) {
      cross_entropy_probs_row_grad(args, logits, target, lse_finalize(part.lse), part.coef_sum,
                                   grad_upstream[row], acc_t(0), grad + row * num_classes);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_probs_forward_kernel(const SoftTargetArgs<scalar_t, acc_t> args,
                                       acc_t* __restrict__ lse_out, acc_t* __restrict__ loss_out) {
  cross_entropy_probs_forward_rows<false, scalar_t, acc_t>(args, lse_out, loss_out, nullptr,
                                                           nullptr);
}

// The fused variant at one resident block of 512 threads per SM: up to 128 registers, since the
// loss's pass and the gradient's back to back do not fit 64 without spilling; its grid keeps few
// rows in flight for the L2 anyway (l2_resident_row_grid).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, 1)
    cross_entropy_probs_fused_kernel(const SoftTargetArgs<scalar_t, acc_t> args,
                                     acc_t* __restrict__ lse_out, acc_t* __restrict__ loss_out,
                                     const acc_t* __restrict__ grad_upstream,
                                     scalar_t* __restrict__ grad) {
  cross_entropy_probs_forward_rows<true, scalar_t, acc_t>(args, lse_out, loss_out, grad_upstream,
                                                          grad);
}

// A = sum_c a_c of one target row, valid in every thread. Every thread of the block must call it.
template <typename scalar_t, typename acc_t>
__device__ acc_t row_coef_sum(const SoftTargetArgs<scalar_t, acc_t>& args,
                              const scalar_t* __restrict__ target) {
  constexpr int kVec = vector_size<scalar_t>();
  constexpr int kUnroll = unroll_for<acc_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t num_classes = args.num_classes;
  const int64_t threads = blockDim.x;
  acc_t sum = acc_t(0);

  auto accumulate = [&](const auto& prob, int64_t j) {
    constexpr int N = sizeof(prob) / sizeof(prob[0]);
    acc_t coef[N];
    target_coefs(args, prob, j, coef);
#pragma unroll
    for (int k = 0; k < N; ++k) sum += coef[k];
  };
  // Only the target is read here, so it is vectorized on its own alignment.
  const int64_t head = unaligned_head(target, num_classes);
  const int64_t num_vectors = (num_classes - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  auto accumulate_one = [&](int64_t j) {
    const scalar_t prob[1] = {load_element(target + j)};
    accumulate(prob, j);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) accumulate_one(j);
  for (int64_t j = tail + threadIdx.x; j < num_classes; j += threads) accumulate_one(j);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
    Vector batch[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      batch[u] = load_vector<scalar_t, kVec>(target + head + (v + u * threads) * kVec, true);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) accumulate(batch[u].val, head + (v + u * threads) * kVec);
  }
  for (; v < num_vectors; v += threads) {
    const Vector last = load_vector<scalar_t, kVec>(target + head + v * kVec, true);
    accumulate(last.val, head + v * kVec);
  }

  return block_all_reduce(sum, acc_t(0), [](acc_t a, acc_t b) { return a + b; });
}

// Backward: grad[row, j] = upstream[row] * dloss/dz_j + upstream_lse[row] * dlse/dz_j (see
// cross_entropy_probs_row_grad). grad is contiguous [num_rows, num_classes]. upstream_lse may be
// nullptr (no lse gradient). A is summed from the target row first (a third read of it), since
// the recomputing backward has no saved A.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
    cross_entropy_probs_backward_kernel(const SoftTargetArgs<scalar_t, acc_t> args,
                                        const acc_t* __restrict__ lse_in,
                                        const acc_t* __restrict__ upstream,
                                        const acc_t* __restrict__ upstream_lse,
                                        scalar_t* __restrict__ grad) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const scalar_t* __restrict__ logits = args.logits + row * args.logits_stride;
    const scalar_t* __restrict__ target = args.target + row * args.target_stride;
    const acc_t lse = lse_in[row];
    // Uniform across the block, so the block reduction inside row_coef_sum is reached by every
    // thread or by none.
    const acc_t coef_sum = lse < kInf ? row_coef_sum(args, target) : acc_t(0);
    cross_entropy_probs_row_grad(args, logits, target, lse, coef_sum, upstream[row],
                                 upstream_lse != nullptr ? upstream_lse[row] : acc_t(0),
                                 grad + row * args.num_classes);
  }
}

}  // namespace cuda
}  // namespace logitops

// The row sweep of the CPU cross-entropy kernels (cpu/cross_entropy.cpp and the vocabulary-parallel
// slices of cpu/vocab_parallel.cpp): a row is read in blocks small enough to stay in L1, widened to
// the accumulation type and soft-capped on the way; per block, its max, then the sum of
// exp(z - block_max), merged into the row's running (max, sum) state; when the gradient is wanted,
// a second sweep over the same row (now in L2) writes p * A - b.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "../common/logit_math.h"
#include "vec_math.h"
#include "vec_utils.h"

namespace logitops {

// Columns a row is swept in.
constexpr int64_t kRowBlock = 2048;

// z <- cap * tanh(z / cap), in place.
template <typename acc_t>
void apply_softcap(acc_t* z, int64_t n, acc_t cap) {
  using Vec = at::vec::Vectorized<acc_t>;
  const Vec vcap(cap), vinv(acc_t(1) / cap);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    simd::softcap_value(Vec::loadu(z + i), vcap, vinv).store(z + i);
  }
  for (; i < n; ++i) z[i] = softcap_value(z[i], cap);
}

// The rows of a logits tensor [rows, num_classes] (unit column stride) and what a sweep over them
// needs that does not change from row to row. A vocabulary-parallel slice is such a tensor of
// local classes, without class weights or soft-cap.
template <typename scalar_t, typename acc_t>
struct CrossEntropyRows {
  int64_t num_classes;  // columns of this tensor
  int64_t row_stride;
  const scalar_t* logits;
  const int64_t* target;  // class index per row; nullptr when the caller has its own
  const acc_t* weight;    // contiguous, acc_t; nullptr when absent
  acc_t weight_total;     // sum of weight, or num_classes
  acc_t label_smoothing;
  acc_t z_loss;
  acc_t softcap;  // 0 when off
  int64_t ignore_index;

  CrossEntropyRow<acc_t> row_coefficients(int64_t i, acc_t lse) const {
    const int64_t t = target[i];
    if (t == ignore_index) return cross_entropy_ignored_row<acc_t>();
    const acc_t wt = weight != nullptr ? weight[t] : acc_t(1);
    return cross_entropy_row(lse, wt, weight_total, label_smoothing, num_classes, z_loss);
  }

  // Loads a block of row i into buf (capped when soft-capping is on) and returns the values to
  // read: buf, or the row itself when no conversion is needed.
  const acc_t* load_block(int64_t i, int64_t start, int64_t n, acc_t* buf) const {
    const scalar_t* src = logits + i * row_stride + start;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (softcap == acc_t(0)) return src;
    }
    load_as_acc(src, buf, n);
    if (softcap != acc_t(0)) apply_softcap(buf, n, softcap);
    return buf;
  }

  // Calls visit(z, start, n) for each block [start, start + n) of row i, z its loaded values.
  template <typename Visit>
  void for_each_block(int64_t i, acc_t* buf, const Visit& visit) const {
    for (int64_t start = 0; start < num_classes; start += kRowBlock) {
      const int64_t n = std::min(kRowBlock, num_classes - start);
      visit(load_block(i, start, n, buf), start, n);
    }
  }

  // log-sum-exp state of row i and, when `logit_sum`, sum_c w_c (z_c - shift) (both of the capped
  // logits; shift from logit_sum_shift), each block's sum added in sum_t.
  template <typename sum_t = acc_t>
  std::pair<LseState<acc_t>, sum_t> row_lse(int64_t i, acc_t shift, bool logit_sum,
                                            acc_t* buf) const {
    LseState<acc_t> state = lse_empty<acc_t>();
    sum_t shifted_weighted_sum = 0;
    for_each_block(i, buf, [&](const acc_t* z, int64_t start, int64_t n) {
      state = lse_block(z, n, state);
      if (logit_sum) {
        shifted_weighted_sum +=
            weighted_sum_block(z, weight != nullptr ? weight + start : nullptr, n, shift);
      }
    });
    return {state, shifted_weighted_sum};
  }

  // The capped logit of row i's target; 0 for an ignored row.
  acc_t target_logit(int64_t i) const {
    if (target[i] == ignore_index) return acc_t(0);
    return softcap_value(static_cast<acc_t>(logits[i * row_stride + target[i]]), softcap);
  }

  // Writes the gradient of row i: upstream * dloss/dz + upstream_lse * dlse/dz, with the target in
  // column target_col (none when outside [0, num_classes)).
  void row_grad(int64_t i, int64_t target_col, acc_t lse, const CrossEntropyRow<acc_t>& row,
                acc_t upstream, acc_t upstream_lse, scalar_t* grad_row, acc_t* buf) const {
    using Vec = at::vec::Vectorized<acc_t>;
    if (cross_entropy_row_grad_is_zero(row, upstream, upstream_lse)) {
      std::fill(grad_row, grad_row + num_classes, scalar_t(0));
      return;
    }
    if (lse != lse || lse == std::numeric_limits<acc_t>::infinity()) {
      // A NaN or +inf logit makes the whole row's softmax undefined. (A row of -inf has p = 0,
      // and its coefficients are NaN unless it is ignored.)
      std::fill(grad_row, grad_row + num_classes, scalar_t(NAN));
      return;
    }
    const acc_t prob_scale = cross_entropy_prob_scale(row, upstream, upstream_lse);
    const acc_t smooth = upstream_scaled(upstream, row.smooth_coef);
    const acc_t inv_cap = acc_t(1) / softcap;
    const Vec vscale(prob_scale), vsmooth(smooth), vinv_cap(inv_cap);
    for_each_block(i, buf, [&](const acc_t* z, int64_t start, int64_t n) {
      const acc_t* w = weight != nullptr ? weight + start : nullptr;
      // Class weights matter only through the smoothing term.
      const acc_t* smooth_w = smooth != acc_t(0) ? w : nullptr;
      // fp32 / fp64 gradients are written in place; bf16 / fp16 go through buf and are rounded.
      acc_t* out = buf;
      if constexpr (std::is_same_v<scalar_t, acc_t>) out = grad_row + start;
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        const Vec zj = Vec::loadu(z + j);
        const Vec smooth_weight =
            smooth_w != nullptr ? vsmooth * Vec::loadu(smooth_w + j) : vsmooth;
        Vec g = simd::cross_entropy_grad(simd::exp_shift(zj, lse), vscale, smooth_weight);
        if (softcap != acc_t(0)) g = g * simd::softcap_derivative_from_capped(zj, vinv_cap);
        g.store(out + j);
      }
      for (; j < n; ++j) {
        const acc_t prob = exp_shift(z[j], lse);
        acc_t g = cross_entropy_grad(row, upstream, upstream_lse, prob, false,
                                     w != nullptr ? w[j] : acc_t(1));
        if (softcap != acc_t(0)) g *= softcap_derivative_from_capped(z[j], inv_cap);
        out[j] = g;
      }
      if (target_col >= start && target_col < start + n && row.target_coef != acc_t(0)) {
        // z may alias out: take the cap's derivative from the raw logit.
        const acc_t raw = static_cast<acc_t>(logits[i * row_stride + target_col]);
        out[target_col - start] -= upstream * row.target_coef * softcap_derivative(raw, softcap);
      }
      if constexpr (!std::is_same_v<scalar_t, acc_t>) store_from_acc(buf, grad_row + start, n);
    });
  }
};

}  // namespace logitops

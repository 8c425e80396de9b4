// Per-token log-probabilities and entropies of softmax(logits / T), on the CPU (the row math is
// common/token_logprobs_math.h, shared with the CUDA kernels).
//
// Forward, per row, one read of the logits: the log-sum-exp with the online merge (blocks in L1,
// lse_block), or with the entropy, the EntropyState of token_logprobs_math.h (one exp per element
// for both); the target's log-probability from it. Backward, per
// row, one pass from the saved lse and entropy: (a [j == y] - p_j (a + b (lp_j + H))) / T.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/logit_math.h"
#include "../common/token_logprobs_math.h"
#include "../host/checks.h"
#include "../host/operands.h"
#include "allocator.h"
#include "vec_math.h"
#include "vec_utils.h"

namespace logitops {
namespace {

constexpr int64_t kTokenBlock = 2048;

template <typename scalar_t, typename acc_t>
struct TokenRows {
  const scalar_t* logits;
  int64_t stride, num_classes;
  const int64_t* target;
  int64_t ignore_index;
  acc_t inv_temperature;

  // Columns [start, start + n) of row i divided by T, into z.
  void load(int64_t i, int64_t start, int64_t n, acc_t* z) const {
    load_as_acc(logits + i * stride + start, z, n);
    if (inv_temperature == acc_t(1)) return;
    using Vec = Vectorized<acc_t>;
    const Vec inv(inv_temperature);
    int64_t j = 0;
    for (; j + Vec::size() <= n; j += Vec::size()) (Vec::loadu(z + j) * inv).store(z + j);
    for (; j < n; ++j) z[j] *= inv_temperature;
  }

  acc_t logit(int64_t i, int64_t j) const {
    return static_cast<acc_t>(logits[i * stride + j]) * inv_temperature;
  }

  LseState<acc_t> lse_state(int64_t i, acc_t* z) const {
    LseState<acc_t> state = lse_empty<acc_t>();
    for (int64_t start = 0; start < num_classes; start += kTokenBlock) {
      const int64_t n = std::min(kTokenBlock, num_classes - start);
      load(i, start, n, z);
      state = lse_block(z, n, state);
    }
    return state;
  }

  // The log-sum-exp and entropy state of row i in one read: per block of L1 the block's max,
  // then one exp per element for both sums, merged into the row's state.
  EntropyState<acc_t> entropy_state(int64_t i, acc_t* z) const {
    using Vec = Vectorized<acc_t>;
    constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
    EntropyState<acc_t> state = entropy_empty<acc_t>();
    for (int64_t start = 0; start < num_classes; start += kTokenBlock) {
      const int64_t n = std::min(kTokenBlock, num_classes - start);
      load(i, start, n, z);
      Vec vmax(-kInf);
      int64_t j = 0;
      for (; j + Vec::size() <= n; j += Vec::size()) {
        vmax = at::vec::maximum(vmax, Vec::loadu(z + j));
      }
      acc_t m = at::vec::vec_reduce_all<acc_t>(
          [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
      for (; j < n; ++j) {
        if (z[j] != z[j] || z[j] > m) m = z[j];  // NaN-propagating, like at::vec::maximum
      }
      if (!(m > -kInf && m < kInf)) {  // all -inf (adds nothing), +inf or NaN
        state = entropy_merge(state,
                              EntropyState<acc_t>{m, m == -kInf ? acc_t(0) : acc_t(1), acc_t(0)});
        continue;
      }
      const Vec vm(m), zero(acc_t(0));
      Vec vsum(acc_t(0)), vshifted(acc_t(0));
      for (j = 0; j + Vec::size() <= n; j += Vec::size()) {
        const Vec d = Vec::loadu(z + j) - vm;
        const Vec e = fast_exp(d);
        vsum += e;
        vshifted += Vec::blendv(e * d, zero, e == zero);  // a -inf logit adds 0, not 0 * -inf
      }
      const auto add = [](Vec& a, Vec& b) { return a + b; };
      EntropyState<acc_t> block{m, at::vec::vec_reduce_all<acc_t>(add, vsum),
                                at::vec::vec_reduce_all<acc_t>(add, vshifted)};
      for (; j < n; ++j) entropy_push(block, z[j]);
      state = entropy_merge(state, block);
    }
    return state;
  }

  // Row i of the gradient for upstream a (logprob) and b (entropy), from the saved lse and H.
  void grad_row(int64_t i, acc_t a, acc_t b, acc_t lse, acc_t entropy, scalar_t* out,
                acc_t* z) const {
    using Vec = Vectorized<acc_t>;
    const int64_t y = target[i];
    const bool valid =
        token_logprob_grad_is_defined(target_is_valid(y, num_classes, ignore_index), lse);
    // The vector body needs finite operands (fast_exp does not propagate NaN); a NaN entropy
    // takes the scalar formula, which does.
    const bool vector_ok = valid && entropy == entropy;
    const Vec vlse(lse), va(a), vb(b), vh(entropy), vinv(inv_temperature), zero(acc_t(0));
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    for (int64_t start = 0; start < num_classes; start += kTokenBlock) {
      const int64_t n = std::min(kTokenBlock, num_classes - start);
      load(i, start, n, z);
      int64_t j = 0;
      if (vector_ok) {
        for (; j + Vec::size() <= n; j += Vec::size()) {
          const Vec lp = Vec::loadu(z + j) - vlse;
          const Vec p = simd::prob_from_log(lp);
          Vec coef = va;
          if (b != acc_t(0)) coef = coef + vb * (lp + vh);
          // p = 0 contributes 0, even where lp + H = -inf.
          const Vec g = Vec::blendv(p * coef, zero, p == zero);
          (zero - g * vinv).store(z + j);
        }
      }
      for (; j < n; ++j) {
        z[j] = valid
                   ? token_logprob_grad(z[j] - lse, start + j == y, a, b, entropy, inv_temperature)
                   : nan;
      }
      if (valid && y >= start && y < start + n && vector_ok) {
        // The vector body left the target's own term out (the scalar tail includes it).
        if (y - start < n - (n % Vec::size())) z[y - start] += a * inv_temperature;
      }
      store_from_acc(z, out + start, n);
    }
  }
};

template <typename scalar_t, typename acc_t>
TokenRows<scalar_t, acc_t> make_token_rows(const at::Tensor& logits, const at::Tensor& target,
                                           int64_t ignore_index, double temperature) {
  return {
      logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.size(1),
      target.const_data_ptr<int64_t>(),  ignore_index,     static_cast<acc_t>(1.0 / temperature)};
}

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_logprobs_forward_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, double temperature,
    int64_t ignore_index, bool return_entropy) {
  check_token_logprobs_inputs(logits_in, target_in, temperature);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t rows = logits.size(0), cols = logits.size(1);
  const auto acc_options = logits.options().dtype(accumulation_dtype(logits.scalar_type()));
  at::Tensor logprob = at::empty({rows}, acc_options);
  at::Tensor entropy = at::empty({return_entropy ? rows : 0}, acc_options);
  at::Tensor lse = at::empty({rows}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx =
            make_token_rows<scalar_t, acc_t>(logits, target, ignore_index, temperature);
        acc_t* lp_out = logprob.mutable_data_ptr<acc_t>();
        acc_t* h_out = return_entropy ? entropy.mutable_data_ptr<acc_t>() : nullptr;
        acc_t* lse_out = lse.mutable_data_ptr<acc_t>();
        const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
        at::parallel_for(0, rows, row_grain(cols), [&](int64_t b, int64_t e) {
          std::vector<acc_t> z(std::min(kTokenBlock, cols));
          for (int64_t i = b; i < e; ++i) {
            const int64_t y = ctx.target[i];
            if (y == ignore_index) {
              lp_out[i] = lse_out[i] = acc_t(0);
              if (h_out != nullptr) h_out[i] = acc_t(0);
              continue;
            }
            const bool valid = target_is_valid(y, cols, ignore_index);
            LseState<acc_t> state;
            if (h_out != nullptr) {
              const EntropyState<acc_t> full = ctx.entropy_state(i, z.data());
              state = entropy_lse_state(full);
              h_out[i] = valid ? entropy_finalize(full) : nan;
            } else {
              state = ctx.lse_state(i, z.data());
            }
            lse_out[i] = lse_finalize(state);
            lp_out[i] = valid ? token_logprob(state, ctx.logit(i, y)) : nan;
          }
        });
      });
  return {logprob, entropy, lse};
}

at::Tensor token_logprobs_backward_cpu(const std::optional<at::Tensor>& grad_logprob_in,
                                       const std::optional<at::Tensor>& grad_entropy_in,
                                       const at::Tensor& logits_in, const at::Tensor& target_in,
                                       const at::Tensor& lse_in, const at::Tensor& entropy_in,
                                       double temperature, int64_t ignore_index) {
  constexpr const char* op = "token_logprobs_backward";
  check_token_logprobs_inputs(logits_in, target_in, temperature);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const at::Tensor lse = per_row_operand(lse_in, logits, "lse", op);
  const at::Tensor grad_logprob =
      grad_logprob_in.has_value() ? per_row_operand(*grad_logprob_in, logits, "grad_logprob", op)
                                  : at::Tensor();
  at::Tensor grad_entropy, entropy;
  if (grad_entropy_in.has_value()) {
    grad_entropy = per_row_operand(*grad_entropy_in, logits, "grad_entropy", op);
    entropy = per_row_operand(entropy_in, logits, "entropy", op);
  }
  const int64_t rows = logits.size(0), cols = logits.size(1);
  at::Tensor grad = empty_cpu_output({rows, cols}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto ctx =
            make_token_rows<scalar_t, acc_t>(logits, target, ignore_index, temperature);
        const acc_t* g_lp = grad_logprob.defined() ? grad_logprob.const_data_ptr<acc_t>() : nullptr;
        const acc_t* g_h = grad_entropy.defined() ? grad_entropy.const_data_ptr<acc_t>() : nullptr;
        const acc_t* h = entropy.defined() ? entropy.const_data_ptr<acc_t>() : nullptr;
        const acc_t* lse_rows = lse.const_data_ptr<acc_t>();
        scalar_t* grad_out = grad.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, rows, row_grain(cols), [&](int64_t b, int64_t e) {
          std::vector<acc_t> z(std::min(kTokenBlock, cols));
          for (int64_t i = b; i < e; ++i) {
            const acc_t a = g_lp != nullptr ? g_lp[i] : acc_t(0);
            const acc_t bh = g_h != nullptr ? g_h[i] : acc_t(0);
            scalar_t* row = grad_out + i * cols;
            if (token_logprob_grad_is_zero(ctx.target[i] == ignore_index, a, bh)) {
              std::fill(row, row + cols, scalar_t(0));
              continue;
            }
            ctx.grad_row(i, a, bh, lse_rows[i], h != nullptr ? h[i] : acc_t(0), row, z.data());
          }
        });
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("token_logprobs_forward", &token_logprobs_forward_cpu);
  m.impl("token_logprobs_backward", &token_logprobs_backward_cpu);
}

}  // namespace logitops

// Top-N log-probabilities, a given token's log-probability and its rank (vLLM's), per row of
// logits at a temperature, on the CPU: one read of each row, which is scaled once into a buffer
// that stays in cache; a bounded heap keeps the N best (value, id) pairs. No sort of the
// vocabulary.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../common/probs_math.h"
#include "../common/sampling_math.h"
#include "../host/operands.h"
#include "../host/probs_checks.h"

namespace logitops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> top_logprobs_cpu(
    const at::Tensor& logits_in, const at::Tensor& temperature_in,
    const std::optional<at::Tensor>& token_in, int64_t num_logprobs) {
  check_top_logprobs_inputs(logits_in, temperature_in, token_in, num_logprobs);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor temperature = temperature_in.contiguous();
  const at::Tensor token = token_in.has_value() ? token_in->contiguous() : at::Tensor();
  const int64_t rows = logits.size(0), n = logits.size(1);
  const int64_t top = std::min(num_logprobs, n);  // the rest of the N columns is padding
  const auto acc = logits.options().dtype(accumulation_dtype(logits.scalar_type()));
  at::Tensor values = at::empty({rows, num_logprobs}, acc);
  at::Tensor ids = at::empty({rows, num_logprobs}, logits.options().dtype(at::kLong));
  at::Tensor lse = at::empty({rows}, acc);
  // Without a token, its outputs are [0].
  const int64_t token_rows = token.defined() ? rows : 0;
  at::Tensor token_value = at::empty({token_rows}, acc);
  at::Tensor token_rank = at::empty({token_rows}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "top_logprobs_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
        constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const double* t = temperature.const_data_ptr<double>();
        const int64_t* tok = token.defined() ? token.const_data_ptr<int64_t>() : nullptr;
        acc_t* vals = values.mutable_data_ptr<acc_t>();
        int64_t* idx = ids.mutable_data_ptr<int64_t>();
        acc_t* row_lse = lse.mutable_data_ptr<acc_t>();
        acc_t* tv = token_value.mutable_data_ptr<acc_t>();
        int64_t* rank = token_rank.mutable_data_ptr<int64_t>();
        using Entry = std::pair<acc_t, int64_t>;
        // The heap's top is the entry that ranks last, the first to leave.
        auto heap_order = [](const Entry& a, const Entry& b) {
          return top_ranks_before(a.first, a.second, b.first, b.second);
        };
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> z(n);
          std::vector<Entry> heap;
          for (int64_t i = begin; i < end; ++i) {
            const acc_t temp = static_cast<acc_t>(t[i]);
            const bool divide = temp != acc_t(1);
            const scalar_t* xi = x + i * n;
            acc_t row_max = kNegInf;
            bool has_nan = false;
            for (int64_t j = 0; j < n; ++j) {
              z[j] = scaled_logit(static_cast<acc_t>(xi[j]), static_cast<const acc_t*>(nullptr), j,
                                  temp, divide);
              has_nan |= z[j] != z[j];
              row_max = std::max(row_max, z[j]);
            }
            const int64_t target = tok != nullptr ? tok[i] : -1;
            const bool valid_token = target >= 0 && target < n;
            acc_t* vi = vals + i * num_logprobs;
            int64_t* ii = idx + i * num_logprobs;
            std::fill(vi + top, vi + num_logprobs, kNegInf);
            std::fill(ii + top, ii + num_logprobs, int64_t(-1));
            if (has_nan) {
              // Documented: a row with NaN has no log-probabilities.
              std::fill(vi, vi + top, kNaN);
              std::fill(ii, ii + top, int64_t(-1));
              row_lse[i] = kNaN;
              if (tok != nullptr) {
                tv[i] = kNaN;
                rank[i] = -1;
              }
              continue;
            }
            double sum = 0;
            if (row_max > kNegInf && row_max < std::numeric_limits<acc_t>::infinity()) {
              for (int64_t j = 0; j < n; ++j) sum += std::exp(double(z[j]) - double(row_max));
            }
            row_lse[i] = row_max > kNegInf && row_max < std::numeric_limits<acc_t>::infinity()
                             ? static_cast<acc_t>(double(row_max) + std::log(sum))
                             : row_max;
            if (valid_token) {
              const acc_t own = z[target];
              int64_t count = 0;
              for (int64_t j = 0; j < n; ++j) count += counts_toward_rank(z[j], own);
              tv[i] = own;
              rank[i] = count;
            } else if (tok != nullptr) {
              tv[i] = kNaN;
              rank[i] = -1;
            }
            if (top == 0) continue;
            heap.clear();
            for (int64_t j = 0; j < n; ++j) {
              if (int64_t(heap.size()) < top) {
                heap.emplace_back(z[j], j);
                std::push_heap(heap.begin(), heap.end(), heap_order);
              } else if (top_ranks_before(z[j], j, heap.front().first, heap.front().second)) {
                std::pop_heap(heap.begin(), heap.end(), heap_order);
                heap.back() = Entry(z[j], j);
                std::push_heap(heap.begin(), heap.end(), heap_order);
              }
            }
            std::sort_heap(heap.begin(), heap.end(), heap_order);
            for (int64_t r = 0; r < top; ++r) {
              vi[r] = heap[r].first;
              ii[r] = heap[r].second;
            }
          }
        });
      });
  return {values, ids, lse, token_value, token_rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) { m.impl("top_logprobs", &top_logprobs_cpu); }

}  // namespace logitops

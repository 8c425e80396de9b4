// The probability ops on the CPU: the temperature softmax, renormalized top-k / top-p / min-p
// probabilities and sampling from probabilities.
//
// Renormalizing and sampling run the logit filters (filter_logits) and the seeded race (sample)
// on z = log(p) (probs_math.h's probability_log), through the dispatcher: one decision procedure
// for logits and probabilities, so sampling from softmax(x) draws what sample(x) draws, ties and
// seeds included. The softmax is its own two-pass kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/logit_math.h"
#include "../common/probs_math.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/probs_checks.h"

namespace logitops {
namespace {

// z = log(p) in the accumulation dtype (float32; float64 for float64 probabilities).
at::Tensor log_probabilities(const at::Tensor& probs) {
  const at::Tensor p = probs.contiguous();
  const int64_t rows = p.size(0), n = p.size(1);
  at::Tensor z = at::empty({rows, n}, p.options().dtype(accumulation_dtype(p.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.scalar_type(), "log_probs", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = p.const_data_ptr<scalar_t>();
    acc_t* out = z.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows * n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) out[j] = probability_log<acc_t>(double(in[j]));
    });
  });
  return z;
}

// filter_logits' and sample's trailing optional arguments (penalties, warpers).
using OptionalTensor = const std::optional<at::Tensor>&;

at::Tensor filtered_log_probabilities(const at::Tensor& z, const at::Tensor& top_k,
                                      const at::Tensor& top_p, const at::Tensor& min_p,
                                      c10::string_view order) {
  static const auto filter =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("logitops::filter_logits", "")
          .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            c10::string_view, double, int64_t, OptionalTensor, OptionalTensor,
                            OptionalTensor, OptionalTensor, OptionalTensor, bool, OptionalTensor,
                            OptionalTensor, OptionalTensor)>();
  const at::Tensor ones = at::ones({z.size(0)}, z.options().dtype(at::kDouble));
  // No penalties and no warpers (the schema's trailing optional arguments).
  return filter.call(z, std::nullopt, ones, top_k, top_p, min_p, order,
                     -std::numeric_limits<double>::infinity(), 1, std::nullopt, std::nullopt,
                     std::nullopt, std::nullopt, std::nullopt, false, std::nullopt, std::nullopt,
                     std::nullopt);
}

at::Tensor probs_renorm_cpu(const at::Tensor& probs_in, const at::Tensor& top_k,
                            const at::Tensor& top_p, const at::Tensor& min_p,
                            c10::string_view order) {
  (void)parse_filter_order(order);  // its ValueError before any work
  check_probs_filters(probs_in, top_k, top_p, min_p, "probs_renorm");
  const at::Tensor probs = probs_in.contiguous();
  const int64_t rows = probs.size(0), n = probs.size(1);
  at::Tensor out = at::empty({rows, n}, probs.options());
  if (rows == 0 || n == 0) return out;
  const at::Tensor kept = filtered_log_probabilities(log_probabilities(probs), top_k.contiguous(),
                                                     top_p.contiguous(), min_p.contiguous(), order);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, probs.scalar_type(), "probs_renorm_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* p = probs.const_data_ptr<scalar_t>();
        const acc_t* z = kept.const_data_ptr<acc_t>();
        scalar_t* y = out.mutable_data_ptr<scalar_t>();
        constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* pi = p + i * n;
            const acc_t* zi = z + i * n;
            scalar_t* yi = y + i * n;
            // The kept tokens are those the filters left above -inf; their probabilities are
            // summed as given, not as exp(log p).
            double total = 0;
            bool invalid = false;
            for (int64_t j = 0; j < n; ++j) {
              invalid |= zi[j] != zi[j];
              if (zi[j] > kNegInf) total += double(pi[j]);
            }
            // A NaN row (an invalid probability) or one with nothing kept (all zero): NaN.
            if (invalid || !(total > 0)) {
              std::fill(yi, yi + n, static_cast<scalar_t>(NAN));
              continue;
            }
            const double scale = 1.0 / total;
            for (int64_t j = 0; j < n; ++j) {
              yi[j] = static_cast<scalar_t>(zi[j] > kNegInf ? double(pi[j]) * scale : 0.0);
            }
          }
        });
      });
  return out;
}

at::Tensor probs_sample_cpu(const at::Tensor& probs, const at::Tensor& top_k,
                            const at::Tensor& top_p, const at::Tensor& min_p,
                            c10::string_view order, const at::Tensor& seeds, bool per_row_seeds) {
  (void)parse_filter_order(order);
  check_probs_filters(probs, top_k, top_p, min_p, "probs_sample");
  check_row_seeds(seeds, probs.size(0), "probs_sample");
  static const auto sample =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("logitops::sample", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
              const at::Tensor&, bool, OptionalTensor, OptionalTensor, OptionalTensor,
              OptionalTensor, OptionalTensor, bool, OptionalTensor, OptionalTensor,
              OptionalTensor)>();
  const at::Tensor z = log_probabilities(probs);
  const at::Tensor ones = at::ones({z.size(0)}, z.options().dtype(at::kDouble));
  return std::get<0>(sample.call(z, std::nullopt, ones, top_k, top_p, min_p, order, seeds,
                                 per_row_seeds, std::nullopt, std::nullopt, std::nullopt,
                                 std::nullopt, std::nullopt, false, std::nullopt, std::nullopt,
                                 std::nullopt));
}

at::Tensor softmax_cpu(const at::Tensor& logits_in, const at::Tensor& temperature_in) {
  check_probability_rows(logits_in, "softmax");
  check_row_temperature(temperature_in, logits_in.size(0), "softmax");
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor temperature = temperature_in.contiguous();
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out =
      at::empty({rows, n}, logits.options().dtype(accumulation_dtype(logits.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "softmax_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const double* t = temperature.const_data_ptr<double>();
        acc_t* y = out.mutable_data_ptr<acc_t>();
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const acc_t temp = static_cast<acc_t>(t[i]);
            const bool divide = temp != acc_t(1);
            const scalar_t* xi = x + i * n;
            acc_t* yi = y + i * n;
            // z is written to the output and rescaled in place: the row is read once.
            acc_t row_max = -std::numeric_limits<acc_t>::infinity();
            bool has_nan = false;
            for (int64_t j = 0; j < n; ++j) {
              const acc_t z = divide ? static_cast<acc_t>(xi[j]) / temp : static_cast<acc_t>(xi[j]);
              yi[j] = z;
              has_nan |= z != z;
              row_max = std::max(row_max, z);
            }
            double sum = 0;
            if (row_max > -std::numeric_limits<acc_t>::infinity() &&
                row_max < std::numeric_limits<acc_t>::infinity()) {
              for (int64_t j = 0; j < n; ++j) sum += double(std::exp(yi[j] - row_max));
            }
            acc_t lse = has_nan ? std::numeric_limits<acc_t>::quiet_NaN()
                        : row_max == std::numeric_limits<acc_t>::infinity()
                            ? row_max
                            : static_cast<acc_t>(double(row_max) + std::log(sum));
            if (row_max == -std::numeric_limits<acc_t>::infinity()) lse = row_max;
            for (int64_t j = 0; j < n; ++j) yi[j] = softmax_value(yi[j], lse);
          }
        });
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("softmax", &softmax_cpu);
  m.impl("probs_renorm", &probs_renorm_cpu);
  m.impl("probs_sample", &probs_sample_cpu);
}

}  // namespace logitops

// calibration_row_stats on the CPU: one read of each row of logits for the top-1 confidence, the
// prediction, the NLL and the Brier score of the row (csrc/common/calibration_math.h), which the
// calibration metrics (logitops/calibration.py) bin and sum. Rows are split across threads; each
// row is read in blocks of kBlock classes, whose states (vector max, then vector exp sums over the
// classes other than the label) are merged with the shared calibration_merge.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "../common/calibration_math.h"
#include "../host/calibration_checks.h"
#include "../host/operands.h"
#include "vec_utils.h"

namespace logitops {
namespace {

// Classes per block: a block is loaded into an accumulation-type buffer (L1-resident), swept once
// for its max and once for its sums, and merged into the row's state (calibration_merge).
constexpr int64_t kBlock = 1024;

// sum_j exp(z_j - m) and sum_j exp(2 (z_j - m)) over z[begin, end), in vector lanes.
template <typename acc_t>
void exp_sums(const acc_t* z, int64_t begin, int64_t end, acc_t m, acc_t& sum, acc_t& sq) {
  using Vec = Vectorized<acc_t>;
  const Vec vm(m);
  Vec vsum(acc_t(0)), vsq(acc_t(0));
  int64_t j = begin;
  for (; j + Vec::size() <= end; j += Vec::size()) {
    const Vec e = fast_exp(Vec::loadu(z + j) - vm);
    vsum += e;
    vsq += e * e;
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  sum += at::vec::vec_reduce_all<acc_t>(add, vsum);
  sq += at::vec::vec_reduce_all<acc_t>(add, vsq);
  for (; j < end; ++j) {
    const acc_t e = std::exp(z[j] - m);
    sum += e;
    sq += e * e;
  }
}

// The state of one block z[0, n) of a row, whose first class is `first` and whose label is at
// `label` within the block (-1 when the label is elsewhere): the same state as pushing each
// logit with calibration_push, up to rounding.
template <typename acc_t>
CalibrationRowState<acc_t> calibration_block(const acc_t* z, int64_t n, int64_t first,
                                             int64_t label) {
  using Vec = Vectorized<acc_t>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  Vec vmax(-kInf);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(z + j));
  acc_t m =
      at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  for (; j < n; ++j) {
    if (z[j] != z[j] || z[j] > m) m = z[j];  // NaN-propagating, like at::vec::maximum
  }
  CalibrationRowState<acc_t> state = calibration_state_empty<acc_t>();
  if (m != m || m == kInf) {
    state.max = std::numeric_limits<acc_t>::quiet_NaN();
    return state;
  }
  state.max = m;
  state.arg = first;
  if (m == -kInf) return state;  // every logit -inf: sums 0, the first index
  for (j = 0; z[j] != m; ++j) {
  }
  state.arg = first + j;
  acc_t sum_sq = acc_t(0);
  if (label >= 0) {
    exp_sums(z, 0, label, m, state.other_sum, sum_sq);
    exp_sums(z, label + 1, n, m, state.other_sum, sum_sq);
    state.other_sq = sum_sq;
    state.sum = state.other_sum + calibration_scale(z[label], m);
  } else {
    exp_sums(z, 0, n, m, state.other_sum, sum_sq);
    state.other_sq = sum_sq;
    state.sum = state.other_sum;
  }
  return state;
}

std::tuple<at::Tensor, at::Tensor> calibration_row_stats_cpu(const at::Tensor& logits_in,
                                                             const at::Tensor& labels_in) {
  check_calibration_inputs(logits_in, labels_in);
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor labels = labels_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  at::Tensor stats = at::empty({3, num_rows}, logits.options().dtype(at::kDouble));
  at::Tensor prediction = at::empty({num_rows}, logits.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "calibration_row_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* base = logits.const_data_ptr<scalar_t>();
        const int64_t row_stride = logits.stride(0);
        const int64_t* y = labels.const_data_ptr<int64_t>();
        double* confidence_out = stats.mutable_data_ptr<double>();
        double* nll_out = confidence_out + num_rows;
        double* brier_out = nll_out + num_rows;
        int64_t* prediction_out = prediction.mutable_data_ptr<int64_t>();
        at::parallel_for(0, num_rows, grain_rows(num_classes), [&](int64_t begin, int64_t end) {
          std::vector<acc_t> buf(std::min(kBlock, num_classes));
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = base + i * row_stride;
            const int64_t label = y[i];
            const bool label_ok = label >= 0 && label < num_classes;
            auto state = calibration_state_empty<acc_t>();
            for (int64_t start = 0; start < num_classes; start += kBlock) {
              const int64_t n = std::min(kBlock, num_classes - start);
              load_as_acc(row + start, buf.data(), n);
              const int64_t local =
                  label_ok && label >= start && label < start + n ? label - start : int64_t(-1);
              state = calibration_merge(state, calibration_block(buf.data(), n, start, local));
            }
            const acc_t label_logit = label_ok ? static_cast<acc_t>(row[label]) : acc_t(0);
            const auto out = calibration_finalize(state, label_logit, label_ok);
            confidence_out[i] = static_cast<double>(out.confidence);
            nll_out[i] = static_cast<double>(out.nll);
            brier_out[i] = static_cast<double>(out.brier);
            prediction_out[i] = out.prediction;
          }
        });
      });
  return {stats, prediction};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("calibration_row_stats", &calibration_row_stats_cpu);
}

}  // namespace logitops

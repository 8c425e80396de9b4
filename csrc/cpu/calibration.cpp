// calibration_row_stats on the CPU: one sweep over each row of logits for the top-1 confidence,
// the prediction, the NLL and the Brier score of the row (csrc/common/calibration_math.h), which
// the calibration metrics (logitops/calibration.py) bin and sum. Rows are split across threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/calibration_math.h"
#include "../host/calibration_checks.h"
#include "../host/operands.h"
#include "vec_utils.h"

namespace logitops {
namespace {

constexpr int64_t kBlock = 1024;
constexpr int kLanes = 8;

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
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = base + i * row_stride;
            const int64_t label = y[i];
            const bool label_ok = label >= 0 && label < num_classes;
            // kLanes interleaved states per block of kBlock classes, merged at the end of each
            // block: the rounding error of the sums grows with kBlock / kLanes + C / kBlock
            // instead of C, and the lanes are independent chains for the CPU.
            auto state = calibration_state_empty<acc_t>();
            for (int64_t start = 0; start < num_classes; start += kBlock) {
              const int64_t stop = std::min(num_classes, start + kBlock);
              CalibrationRowState<acc_t> lanes[kLanes];
              for (auto& lane : lanes) lane = calibration_state_empty<acc_t>();
              for (int64_t j = start; j < stop; ++j) {
                calibration_push(lanes[j % kLanes], static_cast<acc_t>(row[j]), j, j != label);
              }
              for (const auto& lane : lanes) state = calibration_merge(state, lane);
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

// calibration_row_stats on CUDA: the launcher of calibration_kernels.cuh. Nothing here waits for
// the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../host/calibration_checks.h"
#include "../host/operands.h"
#include "calibration_kernels.cuh"
#include "device_api.h"

namespace logitops {
namespace {

using cuda::CudaType;

std::tuple<at::Tensor, at::Tensor> calibration_row_stats_cuda(const at::Tensor& logits_in,
                                                              const at::Tensor& labels_in) {
  check_calibration_inputs(logits_in, labels_in);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor labels = labels_in.contiguous();
  const int64_t num_rows = logits.size(0);
  at::Tensor stats = at::empty({3, num_rows}, logits.options().dtype(at::kDouble));
  at::Tensor prediction = at::empty({num_rows}, logits.options().dtype(at::kLong));
  if (num_rows == 0) return {stats, prediction};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "calibration_row_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::CalibrationArgs<cuda_t> args;
        args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
        args.row_stride = logits.stride(0);
        args.num_rows = num_rows;
        args.num_classes = logits.size(1);
        args.labels = labels.const_data_ptr<int64_t>();
        cuda::launch_kernel(
            "calibration_row_stats_kernel", cuda::calibration_row_stats_kernel<cuda_t, acc_t>,
            cuda::row_grid(num_rows), cuda::calibration_block_threads(args.num_classes), 0,
            cuda::current_stream(), args, stats.mutable_data_ptr<double>(),
            prediction.mutable_data_ptr<int64_t>());
        LOGITOPS_CHECK_LAUNCH();
      });
  return {stats, prediction};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("calibration_row_stats", &calibration_row_stats_cuda);
}

}  // namespace logitops

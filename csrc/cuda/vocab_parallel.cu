// Vocabulary-parallel cross-entropy on CUDA: launchers for vocab_parallel_kernels.cuh. Nothing here
// waits for the device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../host/checks.h"
#include "../host/operands.h"
#include "device_api.h"
#include "vocab_parallel_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;
using cuda::row_grid;

template <typename scalar_t>
cuda::VocabSliceArgs<typename CudaType<scalar_t>::type> slice_args(const at::Tensor& logits,
                                                                   const at::Tensor& target,
                                                                   int64_t vocab_start) {
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::VocabSliceArgs<cuda_t> args;
  args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
  args.row_stride = logits.stride(0);
  args.num_rows = logits.size(0);
  args.local_classes = logits.size(1);
  args.target = target.const_data_ptr<int64_t>();
  args.vocab_start = vocab_start;
  return args;
}

at::Tensor vocab_parallel_cross_entropy_stats_cuda(const at::Tensor& logits_in,
                                                   const at::Tensor& target_in,
                                                   int64_t vocab_start) {
  check_vocab_parallel_inputs(logits_in, target_in, vocab_start, -1,
                              "vocab_parallel_cross_entropy_stats");
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  // Float64 whatever the logits: the ranks' statistics are combined into lse - z_target, which
  // would cancel the digits of an lse rounded to float32.
  at::Tensor stats = at::empty({3, num_rows}, logits.options().dtype(at::kDouble));
  if (num_rows == 0) return stats;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "vocab_parallel_cross_entropy_stats", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel(
            "vocab_parallel_stats_kernel", cuda::vocab_parallel_stats_kernel<cuda_t, acc_t>,
            row_grid(num_rows), cuda::vocab_parallel_block_threads<cuda_t>(logits.size(1)), 0,
            cuda::current_stream(), slice_args<scalar_t>(logits, target, vocab_start),
            stats.mutable_data_ptr<double>());
        LOGITOPS_CHECK_LAUNCH();
      });
  return stats;
}

at::Tensor vocab_parallel_cross_entropy_backward_cuda(const at::Tensor& grad_rows_in,
                                                      const at::Tensor& logits_in,
                                                      const at::Tensor& target_in,
                                                      const at::Tensor& lse_in, int64_t vocab_start,
                                                      int64_t num_classes, int64_t ignore_index,
                                                      double label_smoothing, double z_loss) {
  constexpr const char* kOp = "vocab_parallel_cross_entropy_backward";
  check_vocab_parallel_inputs(logits_in, target_in, vocab_start, num_classes, kOp);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const at::Tensor grad_rows = per_row_operand(grad_rows_in, logits, "grad_rows", kOp);
  const at::Tensor lse = per_row_operand(lse_in, logits, "lse", kOp);
  const int64_t num_rows = logits.size(0);
  at::Tensor grad = at::empty({num_rows, logits.size(1)}, logits.options());
  if (num_rows == 0 || logits.size(1) == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "vocab_parallel_cross_entropy_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel(
            "vocab_parallel_backward_kernel", cuda::vocab_parallel_backward_kernel<cuda_t, acc_t>,
            row_grid(num_rows), cuda::vocab_parallel_block_threads<cuda_t>(logits.size(1)), 0,
            cuda::current_stream(), slice_args<scalar_t>(logits, target, vocab_start),
            grad_rows.const_data_ptr<acc_t>(), lse.const_data_ptr<acc_t>(), num_classes,
            ignore_index, static_cast<acc_t>(label_smoothing), static_cast<acc_t>(z_loss),
            reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
        LOGITOPS_CHECK_LAUNCH();
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("vocab_parallel_cross_entropy_stats", &vocab_parallel_cross_entropy_stats_cuda);
  m.impl("vocab_parallel_cross_entropy_backward", &vocab_parallel_cross_entropy_backward_cuda);
}

}  // namespace logitops

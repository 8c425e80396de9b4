// BCE-with-logits on CUDA: launchers for the kernels of bce_with_logits_kernels.cuh, with the same
// semantics as csrc/cpu/bce_with_logits.cpp. Nothing here waits for the device: a scalar upstream
// gradient stays a device scalar, and a mean or sum is reduced on the device in two deterministic
// stages (per-tile partials in double, then one block summing them in order).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "../common/logit_math.h"
#include "../common/tiling.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/reduction.h"
#include "bce_with_logits_kernels.cuh"
#include "device_api.h"

namespace logitops {
namespace {

using cuda::CudaType;

template <typename acc_t>
cuda::StridedOperand<acc_t> strided(const at::Tensor& t) {
  if (!t.defined()) return {nullptr, 0, 0};
  return {t.const_data_ptr<acc_t>(), t.stride(0), t.stride(1)};
}

template <typename acc_t>
cuda::StridedOperand<acc_t> strided(const std::optional<at::Tensor>& t) {
  return t.has_value() ? strided<acc_t>(*t) : strided<acc_t>(at::Tensor());
}

// Runs the elementwise kernel over [rows, cols] (rows * cols > 0) on the current stream. loss,
// grad and partials may be undefined; upstream is undefined in the forward.
template <typename scalar_t>
void launch_bce(const at::Tensor& input, const at::Tensor& target,
                const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& pos_weight, const at::Tensor& upstream,
                const at::Tensor& upstream_elements, double grad_scale, const Tiling& tiling,
                at::Tensor& loss, at::Tensor& grad, at::Tensor& partials) {
  using acc_t = at::opmath_type<scalar_t>;
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::BceArgs<cuda_t, acc_t> args;
  args.input = reinterpret_cast<const cuda_t*>(input.const_data_ptr<scalar_t>());
  args.target = reinterpret_cast<const cuda_t*>(target.const_data_ptr<scalar_t>());
  args.input_stride = input.stride(0);
  args.target_stride = target.stride(0);
  args.weight = strided<acc_t>(weight);
  args.pos_weight = strided<acc_t>(pos_weight);
  args.upstream = strided<acc_t>(upstream);
  args.upstream_elements =
      upstream_elements.defined()
          ? reinterpret_cast<const cuda_t*>(upstream_elements.const_data_ptr<scalar_t>())
          : nullptr;
  args.upstream_stride = upstream_elements.defined() ? upstream_elements.stride(0) : 0;
  args.grad_scale = static_cast<acc_t>(grad_scale);
  args.tiling = tiling;
  args.group_shift = cuda::bce_group_shift<cuda_t>(tiling.col_tile);

  // One wave of resident blocks, each looping over tiles: a grid of several waves would leave SMs
  // idle during a partial last one. A host-side query of the kernel's attributes; no device sync.
  const int blocks_per_sm =
      cuda::max_active_blocks(cuda::bce_with_logits_kernel<cuda_t, acc_t>, cuda::kBceThreads, 0);
  const int64_t sms = cuda::sm_count();
  const int64_t blocks = std::min<int64_t>(
      {tiling.num_tiles(), sms * std::max(blocks_per_sm, 1), std::numeric_limits<int>::max()});
  cuda::launch_kernel(
      "bce_with_logits_kernel", cuda::bce_with_logits_kernel<cuda_t, acc_t>,
      static_cast<unsigned>(blocks), cuda::kBceThreads, 0, cuda::current_stream(), args,
      loss.defined() ? reinterpret_cast<cuda_t*>(loss.mutable_data_ptr<scalar_t>()) : nullptr,
      grad.defined() ? reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()) : nullptr,
      partials.defined() ? partials.mutable_data_ptr<double>() : nullptr);
  LOGITOPS_CHECK_LAUNCH();
}

std::tuple<at::Tensor, at::Tensor> bce_with_logits_forward_cuda(
    const at::Tensor& input_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
    c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_bce_inputs(input_in, target_in, weight, pos_weight);
  const cuda::DeviceGuard device_guard(input_in.device());
  const at::Tensor input = rows_with_unit_stride(input_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t rows = input.size(0), cols = input.size(1);
  const double numel = double(rows) * double(cols);
  at::Tensor grad =
      compute_grad ? at::empty({rows, cols}, input.options()) : at::empty({0}, input.options());
  at::Tensor loss = reduction == kReductionNone ? at::empty({rows, cols}, input.options())
                                                : at::empty({}, input.options());
  if (rows * cols == 0) {
    // Nothing to launch; the CPU kernel's empty sum is 0 and its mean 0 / 0 = NaN.
    if (reduction != kReductionNone) {
      loss.fill_(reduction == kReductionMean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    }
    return {loss, grad};
  }

  const Tiling tiling = make_tiling(rows, cols, cuda::kBceTileElems);
  at::Tensor partials = reduction == kReductionNone
                            ? at::Tensor()
                            : at::empty({tiling.num_tiles()}, input.options().dtype(at::kDouble));
  at::Tensor elementwise_loss = reduction == kReductionNone ? loss : at::Tensor();
  at::Tensor grad_out = compute_grad ? grad : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "bce_with_logits_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        // The fused gradient is that of the reduced loss for an upstream gradient of 1.
        const double grad_scale = reduction == kReductionMean ? 1.0 / numel : 1.0;
        launch_bce<scalar_t>(input, target, weight, pos_weight, at::Tensor(), at::Tensor(),
                             grad_scale, tiling, elementwise_loss, grad_out, partials);
        if (reduction != kReductionNone) {
          cuda::launch_kernel("bce_with_logits_finish_kernel",
                              cuda::bce_with_logits_finish_kernel<cuda_t, acc_t>, 1,
                              cuda::kBceFinishThreads, 0, cuda::current_stream(),
                              partials.const_data_ptr<double>(), partials.numel(),
                              reduction == kReductionMean ? numel : 1.0,
                              reinterpret_cast<cuda_t*>(loss.mutable_data_ptr<scalar_t>()));
          LOGITOPS_CHECK_LAUNCH();
        }
      });
  return {loss, grad};
}

at::Tensor bce_with_logits_backward_cuda(const at::Tensor& grad_loss_in, const at::Tensor& input_in,
                                         const at::Tensor& target_in,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& pos_weight,
                                         c10::string_view reduction_name) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_bce_inputs(input_in, target_in, weight, pos_weight);
  const cuda::DeviceGuard device_guard(input_in.device());
  // The kernel dereferences it: a CPU tensor here would be a host pointer on the device.
  TORCH_CHECK_VALUE(grad_loss_in.device() == input_in.device(),
                    "logitops.bce_with_logits_backward: grad_loss is on ", grad_loss_in.device(),
                    " but input on ", input_in.device());
  const at::Tensor input = rows_with_unit_stride(input_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t rows = input.size(0), cols = input.size(1);
  const auto acc_dtype = accumulation_dtype(input.scalar_type());
  // "none": read by the kernel in the input's dtype, rows with unit stride (no float32 copy of a
  // half-precision upstream). "mean" / "sum": a device scalar, read with stride 0.
  at::Tensor upstream, upstream_elements;
  if (reduction == kReductionNone) {
    TORCH_CHECK_VALUE(
        grad_loss_in.dim() == 2 && grad_loss_in.size(0) == rows && grad_loss_in.size(1) == cols,
        "logitops.bce_with_logits_backward: grad_loss must have shape [", rows, ", ", cols,
        "], got ", grad_loss_in.sizes());
    upstream_elements = rows_with_unit_stride(grad_loss_in.to(input.scalar_type()));
  } else {
    upstream = bce_upstream(grad_loss_in, rows, cols, reduction, acc_dtype);
  }
  at::Tensor grad = at::empty({rows, cols}, input.options());
  if (rows * cols == 0) return grad;

  const Tiling tiling = make_tiling(rows, cols, cuda::kBceTileElems);
  at::Tensor no_loss, no_partials;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "bce_with_logits_backward_cuda", [&] {
        launch_bce<scalar_t>(input, target, weight, pos_weight, upstream, upstream_elements, 1.0,
                             tiling, no_loss, grad, no_partials);
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("bce_with_logits_forward", &bce_with_logits_forward_cuda);
  m.impl("bce_with_logits_backward", &bce_with_logits_backward_cuda);
}

}  // namespace logitops

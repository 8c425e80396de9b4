// Cross-entropy on CUDA: launchers for the kernels of cross_entropy_kernels.cuh (class-index
// targets) and cross_entropy_probs_kernels.cuh (class-probability targets), with the same
// semantics as csrc/cpu/cross_entropy.cpp. Nothing here waits for the device: the mean's
// denominator stays a device scalar, summed deterministically (no atomics) by ATen.
//
// Where the CPU kernels raise for an out-of-range target, these write NaN (loss, gradient row and
// total weight) instead: checking would need a copy to the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../common/logit_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/reduction.h"
#include "cross_entropy_kernels.cuh"
#include "cross_entropy_probs_kernels.cuh"
#include "device_api.h"

namespace logitops {
namespace {

using cuda::CudaType;
using cuda::row_grid;

// sum of the class weights (the W of logit_math.h) as a device scalar; undefined without weights.
at::Tensor class_weight_total(const at::Tensor& weight_acc, at::ScalarType acc_dtype) {
  if (!weight_acc.defined()) return at::Tensor();
  return at::sum(weight_acc, at::kDouble).to(acc_dtype);  // in double, like the CPU kernel
}

template <typename scalar_t, typename acc_t>
cuda::CrossEntropyArgs<typename CudaType<scalar_t>::type, acc_t> make_args(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& weight_acc,
    const at::Tensor& weight_total, int64_t ignore_index, double label_smoothing, double z_loss,
    double softcap) {
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::CrossEntropyArgs<cuda_t, acc_t> args;
  args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
  args.row_stride = logits.stride(0);
  args.num_rows = logits.size(0);
  args.num_classes = logits.size(1);
  args.target = target.const_data_ptr<int64_t>();
  args.weight = weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr;
  args.weight_total = weight_total.defined() ? weight_total.const_data_ptr<acc_t>() : nullptr;
  args.ignore_index = ignore_index;
  args.label_smoothing = static_cast<acc_t>(label_smoothing);
  args.z_loss = static_cast<acc_t>(z_loss);
  args.softcap = softcap > 0 ? static_cast<acc_t>(softcap) : acc_t(0);
  return args;
}

// Writes grad (contiguous [rows, classes]) on the current stream; upstream_lse may be undefined.
template <typename scalar_t, typename acc_t>
void launch_backward(const cuda::CrossEntropyArgs<typename CudaType<scalar_t>::type, acc_t>& args,
                     const at::Tensor& lse, const at::Tensor& upstream,
                     const at::Tensor& upstream_lse, at::Tensor& grad) {
  using cuda_t = typename CudaType<scalar_t>::type;
  if (args.num_rows == 0) return;
  const int threads = cuda::block_threads_for<cuda_t>(args.num_classes);
  cuda::launch_kernel("cross_entropy_backward_kernel",
                      cuda::cross_entropy_backward_kernel<cuda_t, acc_t>, row_grid(args.num_rows),
                      threads, 0, cuda::current_stream(), args, lse.const_data_ptr<acc_t>(),
                      upstream.const_data_ptr<acc_t>(),
                      upstream_lse.defined() ? upstream_lse.const_data_ptr<acc_t>() : nullptr,
                      reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
  LOGITOPS_CHECK_LAUNCH();
}

void check_on_device(const at::Tensor& t, const at::Tensor& logits, const char* name,
                     const char* op = "cross_entropy_backward") {
  TORCH_CHECK_VALUE(t.device() == logits.device(), "logitops.", op, ": ", name, " is on ",
                    t.device(), " but logits on ", logits.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    double z_loss, double softcap, c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_inputs(logits_in, target_in, weight);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const auto acc_options = logits.options().dtype(acc_dtype);
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor weight_total = class_weight_total(weight_acc, acc_dtype);

  at::Tensor lse = at::empty({num_rows}, acc_options);
  at::Tensor row_loss = at::empty({num_rows}, acc_options);
  at::Tensor row_weight = at::empty({num_rows}, acc_options);  // each row's share of total_weight
  at::Tensor grad = compute_grad ? at::empty({num_rows, num_classes}, logits.options())
                                 : at::empty({0}, logits.options());
  at::Tensor total_weight;
  at::Tensor grad_upstream;  // per row, that of the reduced loss for an upstream gradient of 1
  if (compute_grad && num_rows > 0) {
    // The fused gradient needs the mean's denominator before any row is done: the row weights
    // first (O(rows), from the targets alone), then the one pass over the logits.
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_row_weight_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          constexpr int kThreads = 256;
          const int64_t blocks = std::min<int64_t>((num_rows + kThreads - 1) / kThreads, 65535);
          cuda::launch_kernel("cross_entropy_row_weight_kernel",
                              cuda::cross_entropy_row_weight_kernel<acc_t>, dim3(unsigned(blocks)),
                              kThreads, 0, cuda::current_stream(), target.const_data_ptr<int64_t>(),
                              weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr,
                              num_rows, num_classes, ignore_index,
                              row_weight.mutable_data_ptr<acc_t>());
          LOGITOPS_CHECK_LAUNCH();
        });
    total_weight = at::sum(row_weight, at::kDouble).to(acc_dtype);  // in double, as the CPU's
    const at::Tensor one =
        reduction == kReductionNone ? at::ones({num_rows}, acc_options) : at::ones({}, acc_options);
    grad_upstream = upstream_per_row(one, total_weight, reduction, num_rows, acc_dtype);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        if (num_rows == 0) return;
        const auto args =
            make_args<scalar_t, acc_t>(logits, target, weight_acc, weight_total, ignore_index,
                                       label_smoothing, z_loss, softcap);
        const int threads = cuda::block_threads_for<cuda_t>(num_classes);
        if (compute_grad) {
          const auto kernel = cuda::cross_entropy_fused_kernel<cuda_t, acc_t>;
          const int64_t row_bytes = num_classes * int64_t(sizeof(cuda_t));
          cuda::launch_kernel("cross_entropy_fused_kernel", kernel,
                              cuda::l2_resident_row_grid(kernel, threads, num_rows, row_bytes),
                              threads, 0, cuda::current_stream(), args,
                              lse.mutable_data_ptr<acc_t>(), row_loss.mutable_data_ptr<acc_t>(),
                              row_weight.mutable_data_ptr<acc_t>(),
                              grad_upstream.const_data_ptr<acc_t>(),
                              reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
        } else {
          cuda::launch_kernel("cross_entropy_forward_kernel",
                              cuda::cross_entropy_forward_kernel<cuda_t, acc_t>, row_grid(num_rows),
                              threads, 0, cuda::current_stream(), args,
                              lse.mutable_data_ptr<acc_t>(), row_loss.mutable_data_ptr<acc_t>(),
                              row_weight.mutable_data_ptr<acc_t>());
        }
        LOGITOPS_CHECK_LAUNCH();
      });

  // In double, like the CPU kernel; ATen's CUDA sum is deterministic.
  if (!total_weight.defined()) total_weight = at::sum(row_weight, at::kDouble).to(acc_dtype);
  at::Tensor loss = reduce_row_loss(row_loss, total_weight, reduction, logits.scalar_type());
  return {loss, lse, total_weight, grad};
}

at::Tensor cross_entropy_backward_cuda(const at::Tensor& grad_loss_in,
                                       const std::optional<at::Tensor>& grad_lse_in,
                                       const at::Tensor& logits_in, const at::Tensor& target_in,
                                       const std::optional<at::Tensor>& weight,
                                       const at::Tensor& lse_in, const at::Tensor& total_weight,
                                       int64_t ignore_index, double label_smoothing, double z_loss,
                                       double softcap, c10::string_view reduction_name) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_inputs(logits_in, target_in, weight);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor weight_total = class_weight_total(weight_acc, acc_dtype);
  check_on_device(grad_loss_in, logits, "grad_loss");
  const at::Tensor upstream =
      upstream_per_row(grad_loss_in, total_weight, reduction, num_rows, acc_dtype);
  // The kernel reads one value per row of each: checked rather than read out of bounds.
  const LseOperands lse_ops = lse_operands(lse_in, grad_lse_in, logits, "cross_entropy_backward");
  const at::Tensor& lse = lse_ops.lse;
  const at::Tensor& grad_lse = lse_ops.grad_lse;
  at::Tensor grad = at::empty({num_rows, num_classes}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto args =
            make_args<scalar_t, acc_t>(logits, target, weight_acc, weight_total, ignore_index,
                                       label_smoothing, z_loss, softcap);
        launch_backward<scalar_t, acc_t>(args, lse, upstream, grad_lse, grad);
      });
  return grad;
}

// --- class-probability targets --------------------------------------------------------------

template <typename scalar_t, typename acc_t>
cuda::SoftTargetArgs<typename CudaType<scalar_t>::type, acc_t> make_soft_args(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& weight_acc,
    double label_smoothing, double z_loss, double softcap) {
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::SoftTargetArgs<cuda_t, acc_t> args;
  args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
  args.target = reinterpret_cast<const cuda_t*>(target.const_data_ptr<scalar_t>());
  args.logits_stride = logits.stride(0);
  args.target_stride = target.stride(0);
  args.num_rows = logits.size(0);
  args.num_classes = logits.size(1);
  args.weight = weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr;
  args.label_smoothing = static_cast<acc_t>(label_smoothing);
  args.z_loss = static_cast<acc_t>(z_loss);
  args.softcap = softcap > 0 ? static_cast<acc_t>(softcap) : acc_t(0);
  return args;
}

// Writes grad (contiguous [rows, classes]) on the current stream; upstream_lse may be undefined.
template <typename scalar_t, typename acc_t>
void launch_probs_backward(
    const cuda::SoftTargetArgs<typename CudaType<scalar_t>::type, acc_t>& args,
    const at::Tensor& lse, const at::Tensor& upstream, const at::Tensor& upstream_lse,
    at::Tensor& grad) {
  using cuda_t = typename CudaType<scalar_t>::type;
  if (args.num_rows == 0) return;
  const int threads = cuda::block_threads_for<cuda_t>(args.num_classes);
  cuda::launch_kernel("cross_entropy_probs_backward_kernel",
                      cuda::cross_entropy_probs_backward_kernel<cuda_t, acc_t>,
                      row_grid(args.num_rows), threads, 0, cuda::current_stream(), args,
                      lse.const_data_ptr<acc_t>(), upstream.const_data_ptr<acc_t>(),
                      upstream_lse.defined() ? upstream_lse.const_data_ptr<acc_t>() : nullptr,
                      reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
  LOGITOPS_CHECK_LAUNCH();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_probs_forward_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, double label_smoothing, double z_loss, double softcap,
    c10::string_view reduction_name, bool compute_grad) {
  const Reduction reduction = parse_reduction(reduction_name);
  check_cross_entropy_probs_inputs(logits_in, target_in, weight);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const auto acc_options = logits.options().dtype(acc_dtype);
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  // The mean's denominator, as a device scalar so that nothing waits for the device.
  const at::Tensor count = at::full({}, double(num_rows), acc_options);

  at::Tensor lse = at::empty({num_rows}, acc_options);
  at::Tensor row_loss = at::empty({num_rows}, acc_options);
  at::Tensor grad = compute_grad ? at::empty({num_rows, num_classes}, logits.options())
                                 : at::empty({0}, logits.options());

  if (num_rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_probs_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using cuda_t = typename CudaType<scalar_t>::type;
          const auto args = make_soft_args<scalar_t, acc_t>(logits, target, weight_acc,
                                                            label_smoothing, z_loss, softcap);
          const int threads = cuda::block_threads_for<cuda_t>(num_classes);
          if (compute_grad) {
            // The fused gradient is that of the reduced loss for an upstream gradient of 1.
            const at::Tensor one = reduction == kReductionNone ? at::ones({num_rows}, acc_options)
                                                               : at::ones({}, acc_options);
            const at::Tensor grad_upstream =
                upstream_per_row(one, count, reduction, num_rows, acc_dtype);
            const auto kernel = cuda::cross_entropy_probs_fused_kernel<cuda_t, acc_t>;
            // Both rows, logits and target, are read twice.
            const int64_t row_bytes = 2 * num_classes * int64_t(sizeof(cuda_t));
            cuda::launch_kernel("cross_entropy_probs_fused_kernel", kernel,
                                cuda::l2_resident_row_grid(kernel, threads, num_rows, row_bytes),
                                threads, 0, cuda::current_stream(), args,
                                lse.mutable_data_ptr<acc_t>(), row_loss.mutable_data_ptr<acc_t>(),
                                grad_upstream.const_data_ptr<acc_t>(),
                                reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
          } else {
            cuda::launch_kernel("cross_entropy_probs_forward_kernel",
                                cuda::cross_entropy_probs_forward_kernel<cuda_t, acc_t>,
                                row_grid(num_rows), threads, 0, cuda::current_stream(), args,
                                lse.mutable_data_ptr<acc_t>(), row_loss.mutable_data_ptr<acc_t>());
          }
          LOGITOPS_CHECK_LAUNCH();
        });
  }

  return {reduce_row_loss(row_loss, count, reduction, logits.scalar_type()), lse, grad};
}

at::Tensor cross_entropy_probs_backward_cuda(
    const at::Tensor& grad_loss_in, const std::optional<at::Tensor>& grad_lse_in,
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse_in, double label_smoothing,
    double z_loss, double softcap, c10::string_view reduction_name) {
  const Reduction reduction = parse_reduction(reduction_name);
  constexpr const char* kOp = "cross_entropy_probs_backward";
  check_cross_entropy_probs_inputs(logits_in, target_in, weight);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = rows_with_unit_stride(target_in);
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const auto acc_dtype = accumulation_dtype(logits.scalar_type());
  const auto acc_options = logits.options().dtype(acc_dtype);
  const at::Tensor weight_acc =
      weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  check_on_device(grad_loss_in, logits, "grad_loss", kOp);
  const at::Tensor count = at::full({}, double(num_rows), acc_options);
  const at::Tensor upstream = upstream_per_row(grad_loss_in, count, reduction, num_rows, acc_dtype);
  // The kernel reads one value per row of each: checked rather than read out of bounds.
  const LseOperands lse_ops = lse_operands(lse_in, grad_lse_in, logits, kOp);
  const at::Tensor& lse = lse_ops.lse;
  const at::Tensor& grad_lse = lse_ops.grad_lse;
  at::Tensor grad = at::empty({num_rows, num_classes}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "cross_entropy_probs_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto args = make_soft_args<scalar_t, acc_t>(logits, target, weight_acc,
                                                          label_smoothing, z_loss, softcap);
        launch_probs_backward<scalar_t, acc_t>(args, lse, upstream, grad_lse, grad);
      });
  return grad;
}

// grad *= scale in place (scale a 0-dim tensor, read on the device: nothing waits for it), free
// when scale is 1. The backward of the fused forwards applies the upstream gradient with it.
void scale_gradient_cuda(at::Tensor& grad, const at::Tensor& scale) {
  check_scale_gradient_inputs(grad, scale);
  const cuda::DeviceGuard device_guard(grad.device());
  const int64_t n = grad.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, grad.scalar_type(), "scale_gradient_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        const at::Tensor factor =
            scale.to(grad.options().dtype(accumulation_dtype(grad.scalar_type())));
        const auto kernel = cuda::scale_gradient_kernel<cuda_t, acc_t>;
        constexpr int kThreads = 256;
        const int64_t vectors = cuda::vector_count<cuda_t>(n);
        const int64_t wanted = (vectors + kThreads - 1) / kThreads;
        const int64_t resident =
            int64_t(cuda::sm_count()) * std::max(1, cuda::max_active_blocks(kernel, kThreads, 0));
        const int64_t blocks = std::max<int64_t>(1, std::min(wanted, resident));
        cuda::launch_kernel("scale_gradient_kernel", kernel, dim3(unsigned(blocks)), kThreads, 0,
                            cuda::current_stream(),
                            reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()), n,
                            factor.const_data_ptr<acc_t>());
        LOGITOPS_CHECK_LAUNCH();
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("scale_gradient_", &scale_gradient_cuda);
  m.impl("cross_entropy_forward", &cross_entropy_forward_cuda);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cuda);
  m.impl("cross_entropy_probs_forward", &cross_entropy_probs_forward_cuda);
  m.impl("cross_entropy_probs_backward", &cross_entropy_probs_backward_cuda);
}

}  // namespace logitops

// Distillation divergences on CUDA: launchers for the kernels of distillation_kernels.cuh, with the
// same semantics as csrc/cpu/distillation.cpp. Nothing here waits for the device: the count of
// rows that batchmean divides by stays a device scalar, which the kernels and upstream_per_row
// read from device memory.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "../common/logit_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/reduction.h"
#include "device_api.h"
#include "distillation_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;

// The bytes of a row that the kernels re-read after their first pass (student and teacher): what
// l2_resident_row_grid keeps in L2 for the rows in flight.
int64_t pass_bytes(int64_t cols, size_t element_size) { return 2 * cols * int64_t(element_size); }

template <typename scalar_t, typename acc_t>
cuda::DistillArgs<typename CudaType<scalar_t>::type, acc_t> make_distill_args(
    const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& target,
    int64_t ignore_index, double temperature, DivergenceKind kind, double beta, double hard_weight,
    double soft_weight) {
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::DistillArgs<cuda_t, acc_t> args;
  args.student = reinterpret_cast<const cuda_t*>(student.const_data_ptr<scalar_t>());
  args.teacher = reinterpret_cast<const cuda_t*>(teacher.const_data_ptr<scalar_t>());
  args.student_stride = student.stride(0);
  args.teacher_stride = teacher.stride(0);
  args.num_rows = student.size(0);
  args.num_classes = student.size(1);
  args.target = target.defined() ? target.const_data_ptr<int64_t>() : nullptr;
  args.ignore_index = ignore_index;
  args.inv_temperature = static_cast<acc_t>(1.0 / temperature);
  args.kind = kind;
  args.beta = static_cast<acc_t>(beta);
  args.soft_weight = static_cast<acc_t>(soft_weight);
  args.hard_weight = static_cast<acc_t>(hard_weight);
  return args;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_forward_cuda(
    const at::Tensor& student_in, const at::Tensor& teacher_in,
    const std::optional<at::Tensor>& target_in, int64_t ignore_index, double temperature,
    c10::string_view kind_name, double beta, double hard_weight, double soft_weight,
    c10::string_view reduction_name, bool compute_grad) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta, hard_weight,
                       soft_weight);
  const cuda::DeviceGuard device_guard(student_in.device());
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const auto acc_options = student.options().dtype(acc_dtype);
  // Counted in int64 and rounded once, like the CPU kernel; a device scalar (no host sync).
  const at::Tensor row_count = target.defined() ? at::ne(target, ignore_index).sum().to(acc_dtype)
                                                : at::full({}, double(rows), acc_options);
  at::Tensor row_loss = at::empty({rows}, acc_options);
  at::Tensor grad =
      compute_grad ? at::empty({rows, cols}, student.options()) : at::empty({0}, student.options());

  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using cuda_t = typename CudaType<scalar_t>::type;
          const auto args =
              make_distill_args<scalar_t, acc_t>(student, teacher, target, ignore_index,
                                                 temperature, kind, beta, hard_weight, soft_weight);
          const int threads = cuda::distill_block_threads(cols);
          const auto kernel = cuda::distill_forward_kernel<cuda_t, acc_t>;
          cuda::launch_kernel(
              "distill_forward_kernel", kernel,
              cuda::l2_resident_row_grid(kernel, threads, rows, pass_bytes(cols, sizeof(cuda_t))),
              threads, 0, cuda::current_stream(), args, row_count.const_data_ptr<acc_t>(),
              reduction == kReductionMean, temperature, soft_weight, hard_weight,
              row_loss.mutable_data_ptr<acc_t>(),
              compute_grad ? reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>())
                           : nullptr);
          LOGITOPS_CHECK_LAUNCH();
        });
  }

  // batchmean divides the sum by the counted rows: the same normalizer as reduction "mean".
  return {reduce_row_loss(row_loss, row_count, reduction, student.scalar_type()), row_count, grad};
}

at::Tensor distillation_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student_in,
                                      const at::Tensor& teacher_in,
                                      const std::optional<at::Tensor>& target_in,
                                      int64_t ignore_index, double temperature,
                                      c10::string_view kind_name, double beta, double hard_weight,
                                      double soft_weight, c10::string_view reduction_name,
                                      const at::Tensor& row_count) {
  const DivergenceKind kind = parse_divergence_kind(kind_name);
  const Reduction reduction = parse_distillation_reduction(reduction_name);
  check_distill_inputs(student_in, teacher_in, target_in, temperature, kind, beta, hard_weight,
                       soft_weight);
  TORCH_CHECK_VALUE(grad_loss.device() == student_in.device(),
                    "logitops.distillation_backward: grad_loss is on ", grad_loss.device(),
                    " but the logits on ", student_in.device());
  const cuda::DeviceGuard device_guard(student_in.device());
  const at::Tensor student = rows_with_unit_stride(student_in);
  const at::Tensor teacher = rows_with_unit_stride(teacher_in);
  const at::Tensor target = target_in.has_value() ? target_in->contiguous() : at::Tensor();
  const int64_t rows = student.size(0), cols = student.size(1);
  const auto acc_dtype = accumulation_dtype(student.scalar_type());
  const at::Tensor upstream = upstream_per_row(grad_loss, row_count, reduction, rows, acc_dtype);
  at::Tensor grad = at::empty({rows, cols}, student.options());

  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, student.scalar_type(), "distillation_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using cuda_t = typename CudaType<scalar_t>::type;
          const auto args =
              make_distill_args<scalar_t, acc_t>(student, teacher, target, ignore_index,
                                                 temperature, kind, beta, hard_weight, soft_weight);
          const int threads = cuda::distill_block_threads(cols);
          const auto kernel = cuda::distill_backward_kernel<cuda_t, acc_t>;
          cuda::launch_kernel(
              "distill_backward_kernel", kernel,
              cuda::l2_resident_row_grid(kernel, threads, rows, pass_bytes(cols, sizeof(cuda_t))),
              threads, 0, cuda::current_stream(), args, upstream.const_data_ptr<acc_t>(),
              static_cast<acc_t>(temperature), static_cast<acc_t>(soft_weight),
              static_cast<acc_t>(hard_weight),
              reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
          LOGITOPS_CHECK_LAUNCH();
        });
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("distillation_forward", &distillation_forward_cuda);
  m.impl("distillation_backward", &distillation_backward_cuda);
}

}  // namespace logitops

// Per-token log-probabilities and entropies on CUDA: launchers for the kernels of
// token_logprobs_kernels.cuh, with the semantics of csrc/cpu/token_logprobs.cpp. No host sync.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../host/checks.h"
#include "../host/operands.h"
#include "device_api.h"
#include "token_logprobs_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;
using cuda::row_grid;

template <typename scalar_t, typename acc_t>
cuda::TokenLogprobArgs<typename CudaType<scalar_t>::type, acc_t> make_token_args(
    const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index, double temperature) {
  using cuda_t = typename CudaType<scalar_t>::type;
  cuda::TokenLogprobArgs<cuda_t, acc_t> args;
  args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
  args.stride = logits.stride(0);
  args.num_rows = logits.size(0);
  args.num_classes = logits.size(1);
  args.target = target.const_data_ptr<int64_t>();
  args.ignore_index = ignore_index;
  args.inv_temperature = static_cast<acc_t>(1.0 / temperature);
  return args;
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_logprobs_forward_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in, double temperature,
    int64_t ignore_index, bool return_entropy) {
  check_token_logprobs_inputs(logits_in, target_in, temperature);
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor target = target_in.contiguous();
  const int64_t rows = logits.size(0), cols = logits.size(1);
  const auto acc_options = logits.options().dtype(accumulation_dtype(logits.scalar_type()));
  at::Tensor logprob = at::empty({rows}, acc_options);
  at::Tensor entropy = at::empty({return_entropy ? rows : 0}, acc_options);
  at::Tensor lse = at::empty({rows}, acc_options);
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using cuda_t = typename CudaType<scalar_t>::type;
          const auto args =
              make_token_args<scalar_t, acc_t>(logits, target, ignore_index, temperature);
          cuda::launch_kernel("token_logprobs_forward_kernel",
                              cuda::token_logprobs_forward_kernel<cuda_t, acc_t>, row_grid(rows),
                              cuda::token_logprobs_block_threads<scalar_t>(cols), 0,
                              cuda::current_stream(), args, logprob.mutable_data_ptr<acc_t>(),
                              return_entropy ? entropy.mutable_data_ptr<acc_t>() : nullptr,
                              lse.mutable_data_ptr<acc_t>());
          LOGITOPS_CHECK_LAUNCH();
        });
  }
  return {logprob, entropy, lse};
}

at::Tensor token_logprobs_backward_cuda(const std::optional<at::Tensor>& grad_logprob_in,
                                        const std::optional<at::Tensor>& grad_entropy_in,
                                        const at::Tensor& logits_in, const at::Tensor& target_in,
                                        const at::Tensor& lse_in, const at::Tensor& entropy_in,
                                        double temperature, int64_t ignore_index) {
  constexpr const char* op = "token_logprobs_backward";
  check_token_logprobs_inputs(logits_in, target_in, temperature);
  const cuda::DeviceGuard device_guard(logits_in.device());
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
  at::Tensor grad = at::empty({rows, cols}, logits.options());
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, logits.scalar_type(), "token_logprobs_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          using cuda_t = typename CudaType<scalar_t>::type;
          const auto args =
              make_token_args<scalar_t, acc_t>(logits, target, ignore_index, temperature);
          cuda::launch_kernel("token_logprobs_backward_kernel",
                              cuda::token_logprobs_backward_kernel<cuda_t, acc_t>, row_grid(rows),
                              cuda::token_logprobs_block_threads<scalar_t>(cols), 0,
                              cuda::current_stream(), args, data_or_null<acc_t>(grad_logprob),
                              data_or_null<acc_t>(grad_entropy), lse.const_data_ptr<acc_t>(),
                              data_or_null<acc_t>(entropy),
                              reinterpret_cast<cuda_t*>(grad.mutable_data_ptr<scalar_t>()));
          LOGITOPS_CHECK_LAUNCH();
        });
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("token_logprobs_forward", &token_logprobs_forward_cuda);
  m.impl("token_logprobs_backward", &token_logprobs_backward_cuda);
}

}  // namespace logitops

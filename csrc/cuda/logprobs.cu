// Top-N log-probabilities on CUDA: the launcher of logprobs_kernels.cuh, with the semantics of
// csrc/cpu/logprobs.cpp. No host sync, no workspace.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../host/operands.h"
#include "../host/probs_checks.h"
#include "device_api.h"
#include "logprobs_kernels.cuh"

namespace logitops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> top_logprobs_cuda(
    const at::Tensor& logits_in, const at::Tensor& temperature_in,
    const std::optional<at::Tensor>& token_in, int64_t num_logprobs) {
  check_top_logprobs_inputs(logits_in, temperature_in, token_in, num_logprobs);
  TORCH_CHECK_VALUE(cuda::on_kernel_device(logits_in),
                    "logitops.top_logprobs: logits must be on a CUDA device, got ",
                    logits_in.device());
  TORCH_CHECK_VALUE(temperature_in.device() == logits_in.device() &&
                        (!token_in.has_value() || token_in->device() == logits_in.device()),
                    "logitops.top_logprobs: temperature and token must be on the logits' device ",
                    logits_in.device());
  TORCH_CHECK_VALUE(logits_in.size(1) <= int64_t(std::numeric_limits<uint32_t>::max()),
                    "logitops.top_logprobs: the CUDA kernels support vocabularies below 2^32, got ",
                    logits_in.size(1));
  static_assert(cuda::kTopLogprobSlots == kMaxTopLogprobs, "one limit for every backend");
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor temperature = temperature_in.contiguous();
  const at::Tensor token = token_in.has_value() ? token_in->contiguous() : at::Tensor();
  const int64_t rows = logits.size(0), n = logits.size(1);
  const auto acc = logits.options().dtype(accumulation_dtype(logits.scalar_type()));
  at::Tensor values = at::empty({rows, num_logprobs}, acc);
  at::Tensor ids = at::empty({rows, num_logprobs}, logits.options().dtype(at::kLong));
  at::Tensor lse = at::empty({rows}, acc);
  // Without a token, its outputs are [0].
  const int64_t token_rows = token.defined() ? rows : 0;
  at::Tensor token_value = at::empty({token_rows}, acc);
  at::Tensor token_rank = at::empty({token_rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return {values, ids, lse, token_value, token_rank};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "top_logprobs_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename cuda::CudaType<scalar_t>::type;
        cuda::TopLogprobsArgs<cuda_t, acc_t> args{
            reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>()),
            logits.stride(0),
            rows,
            n,
            temperature.const_data_ptr<double>(),
            token.defined() ? token.const_data_ptr<int64_t>() : nullptr,
            num_logprobs,
            values.mutable_data_ptr<acc_t>(),
            ids.mutable_data_ptr<int64_t>(),
            lse.mutable_data_ptr<acc_t>(),
            token_value.mutable_data_ptr<acc_t>(),
            token_rank.mutable_data_ptr<int64_t>()};
        cuda::launch_kernel("top_logprobs_kernel", cuda::top_logprobs_kernel<cuda_t, acc_t>,
                            cuda::row_grid(rows), cuda::sampling_block_threads(n), 0,
                            cuda::current_stream(), args);
        LOGITOPS_CHECK_LAUNCH();
      });
  return {values, ids, lse, token_value, token_rank};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("top_logprobs", &top_logprobs_cuda);
}

}  // namespace logitops

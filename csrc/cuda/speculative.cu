// Chain speculative sampling on CUDA: the launcher of speculative_kernels.cuh, with the same
// semantics as csrc/cpu/speculative.cpp. No host sync and no workspace: graph-capturable.
// Draft ids are not checked here (that would need a host sync); the kernel rejects an
// out-of-range one without reading anything for it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "../host/speculative_checks.h"
#include "device_api.h"
#include "speculative_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;

std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_sample_cuda(
    const at::Tensor& target_in, const std::optional<at::Tensor>& draft_in,
    const at::Tensor& draft_token_ids, const at::Tensor& temperature, bool logits,
    const at::Tensor& seeds, bool per_row_seeds) {
  check_speculative_inputs(target_in, draft_in, draft_token_ids, temperature, seeds);
  TORCH_CHECK_VALUE(cuda::on_kernel_device(target_in),
                    "logitops.speculative_sample: target must be on a CUDA device, got ",
                    target_in.device());
  for (const at::Tensor* t : {&draft_token_ids, &temperature, &seeds}) {
    TORCH_CHECK_VALUE(t->device() == target_in.device(),
                      "logitops.speculative_sample: every tensor must be on the target's device ",
                      target_in.device(), ", got ", t->device());
  }
  if (draft_in.has_value()) {
    TORCH_CHECK_VALUE(draft_in->device() == target_in.device(),
                      "logitops.speculative_sample: draft is on ", draft_in->device(),
                      " but target on ", target_in.device());
  }
  const cuda::DeviceGuard device_guard(target_in.device());
  const at::Tensor target = target_in.contiguous();
  const at::Tensor draft = draft_in.has_value() ? draft_in->contiguous() : at::Tensor();
  const at::Tensor ids = draft_token_ids.contiguous();
  const at::Tensor temp = temperature.contiguous();
  const at::Tensor seed = seeds.contiguous();
  const int64_t rows = target.size(0), drafts = target.size(1) - 1;
  const auto index_options = target.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({rows, drafts + 1}, index_options);
  at::Tensor accepted = at::empty({rows}, index_options);
  at::Tensor emitted = at::empty({rows}, index_options);
  if (rows == 0) return {tokens, accepted, emitted};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, target.scalar_type(), "speculative_sample_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::SpeculativeArgs<cuda_t> args;
        args.target = reinterpret_cast<const cuda_t*>(target.const_data_ptr<scalar_t>());
        args.draft = draft.defined()
                         ? reinterpret_cast<const cuda_t*>(draft.const_data_ptr<scalar_t>())
                         : nullptr;
        args.draft_token_ids = ids.const_data_ptr<int64_t>();
        args.temperature = temp.const_data_ptr<double>();
        args.seeds = seed.const_data_ptr<int64_t>();
        args.per_row_seeds = per_row_seeds;
        args.logits = logits;
        args.num_rows = rows;
        args.num_drafts = drafts;
        args.vocab = target.size(2);
        args.tokens = tokens.mutable_data_ptr<int64_t>();
        args.accepted = accepted.mutable_data_ptr<int64_t>();
        args.emitted = emitted.mutable_data_ptr<int64_t>();
        cuda::launch_kernel("speculative_sample_kernel",
                            cuda::speculative_sample_kernel<cuda_t, acc_t>, cuda::row_grid(rows),
                            cuda::speculative_block_threads(target.size(2)), 0,
                            cuda::current_stream(), args);
        LOGITOPS_CHECK_LAUNCH();
      });
  return {tokens, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("speculative_sample", &speculative_sample_cuda);
}

}  // namespace logitops

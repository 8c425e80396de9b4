// beam_search_step on CUDA: the launcher of beam_search_kernels.cuh, with the semantics of
// csrc/cpu/beam_search.cpp. Nothing waits for the device; the one workspace (per_row scored
// candidates per row) comes from the caching allocator, so the step can be captured in a graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/beam_search_math.h"
#include "../host/beam_search_checks.h"
#include "../host/operands.h"
#include "beam_search_kernels.cuh"
#include "device_api.h"

namespace logitops {
namespace {

using cuda::CudaType;

template <typename cuda_t, typename acc_t, int kCapacity>
void launch_rows(const cuda::BeamRowArgs<cuda_t, acc_t>& args) {
  cuda::launch_kernel("beam_row_kernel", cuda::beam_row_kernel<cuda_t, acc_t, kCapacity>,
                      cuda::row_grid(args.num_rows), cuda::beam_row_block_threads(args.vocab), 0,
                      cuda::current_stream(), args);
  LOGITOPS_CHECK_LAUNCH();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_step_cuda(const at::Tensor& logits_in,
                                                                     const at::Tensor& beam_scores,
                                                                     int64_t num_beams,
                                                                     int64_t num_candidates) {
  const BeamSearchShape shape =
      check_beam_search_inputs(logits_in, beam_scores, num_beams, num_candidates);
  TORCH_CHECK_VALUE(cuda::on_kernel_device(logits_in),
                    "logitops.beam_search_step: logits must be on a CUDA device, got ",
                    logits_in.device());
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor beam = beam_scores.contiguous();
  const auto acc = accumulation_dtype(logits.scalar_type());
  const int64_t rows = logits.size(0);
  at::Tensor scores = at::empty({shape.batch, shape.width}, logits.options().dtype(acc));
  at::Tensor beams = at::empty({shape.batch, shape.width}, logits.options().dtype(at::kLong));
  at::Tensor tokens = at::empty({shape.batch, shape.width}, logits.options().dtype(at::kLong));
  if (rows == 0) return {scores, beams, tokens};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "beam_search_step_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        static_assert(sizeof(BeamCandidate<acc_t>) % sizeof(acc_t) == 0, "packed candidates");
        // Workspace of BeamCandidate<acc_t> records, allocated as raw bytes.
        at::Tensor workspace =
            at::empty({int64_t(rows * shape.per_row * sizeof(BeamCandidate<acc_t>))},
                      logits.options().dtype(at::kByte));
        auto* kept = reinterpret_cast<BeamCandidate<acc_t>*>(workspace.mutable_data_ptr<uint8_t>());
        cuda::BeamRowArgs<cuda_t, acc_t> row_args;
        row_args.logits = reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>());
        row_args.row_stride = logits.stride(0);
        row_args.beam_scores = beam.const_data_ptr<acc_t>();
        row_args.num_rows = rows;
        row_args.vocab = shape.vocab;
        row_args.per_row = static_cast<int>(shape.per_row);
        row_args.kept = kept;
        switch (cuda::beam_list_capacity(shape.per_row)) {
          case 1:
            launch_rows<cuda_t, acc_t, 1>(row_args);
            break;
          case 2:
            launch_rows<cuda_t, acc_t, 2>(row_args);
            break;
          case 4:
            launch_rows<cuda_t, acc_t, 4>(row_args);
            break;
          case 8:
            launch_rows<cuda_t, acc_t, 8>(row_args);
            break;
          case 16:
            launch_rows<cuda_t, acc_t, 16>(row_args);
            break;
          case 32:
            launch_rows<cuda_t, acc_t, 32>(row_args);
            break;
          default:
            launch_rows<cuda_t, acc_t, kMaxBeamCandidates>(row_args);
            break;
        }
        cuda::BeamMergeArgs<acc_t> merge_args;
        merge_args.kept = kept;
        merge_args.batch = shape.batch;
        merge_args.num_beams = num_beams;
        merge_args.vocab = shape.vocab;
        merge_args.per_row = static_cast<int>(shape.per_row);
        merge_args.width = shape.width;
        merge_args.scores = scores.mutable_data_ptr<acc_t>();
        merge_args.beams = beams.mutable_data_ptr<int64_t>();
        merge_args.tokens = tokens.mutable_data_ptr<int64_t>();
        cuda::launch_kernel("beam_merge_kernel", cuda::beam_merge_kernel<acc_t>,
                            cuda::row_grid(shape.batch),
                            cuda::beam_merge_block_threads(num_beams * shape.per_row), 0,
                            cuda::current_stream(), merge_args);
        LOGITOPS_CHECK_LAUNCH();
      });
  return {scores, beams, tokens};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("beam_search_step", &beam_search_step_cuda);
}

}  // namespace logitops

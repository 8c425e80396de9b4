// The probability ops on CUDA: launchers for the kernels of probs_kernels.cuh, with the semantics
// of csrc/cpu/probs.cpp. No host sync, no workspace: graph-capturable.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "../common/sampling_math.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "../host/probs_checks.h"
#include "device_api.h"
#include "probs_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;
using cuda::row_grid;

void check_devices(const at::Tensor& rows, std::initializer_list<const at::Tensor*> per_row,
                   const char* op) {
  TORCH_CHECK_VALUE(cuda::on_kernel_device(rows), "logitops.", op,
                    ": the input must be on a CUDA device, got ", rows.device());
  for (const at::Tensor* t : per_row) {
    TORCH_CHECK_VALUE(t->device() == rows.device(), "logitops.", op,
                      ": per-row parameters must be on the input's device ", rows.device(),
                      ", got ", t->device());
  }
  TORCH_CHECK_VALUE(rows.size(1) <= int64_t(std::numeric_limits<uint32_t>::max()), "logitops.", op,
                    ": the CUDA kernels support vocabularies below 2^32, got ", rows.size(1));
}

template <typename scalar_t>
cuda::ProbsArgs<typename CudaType<scalar_t>::type> probs_args(const at::Tensor& probs,
                                                              const at::Tensor& top_k,
                                                              const at::Tensor& top_p,
                                                              const at::Tensor& min_p,
                                                              FilterOrder order) {
  using cuda_t = typename CudaType<scalar_t>::type;
  return {reinterpret_cast<const cuda_t*>(probs.const_data_ptr<scalar_t>()),
          probs.stride(0),
          probs.size(0),
          probs.size(1),
          top_k.const_data_ptr<int64_t>(),
          top_p.const_data_ptr<double>(),
          min_p.const_data_ptr<double>(),
          order};
}

at::Tensor probs_renorm_cuda(const at::Tensor& probs_in, const at::Tensor& top_k_in,
                             const at::Tensor& top_p_in, const at::Tensor& min_p_in,
                             c10::string_view order_name) {
  const FilterOrder order = parse_filter_order(order_name);
  check_probs_filters(probs_in, top_k_in, top_p_in, min_p_in, "probs_renorm");
  check_devices(probs_in, {&top_k_in, &top_p_in, &min_p_in}, "probs_renorm");
  const cuda::DeviceGuard device_guard(probs_in.device());
  const at::Tensor probs = rows_with_unit_stride(probs_in);
  const at::Tensor top_k = top_k_in.contiguous(), top_p = top_p_in.contiguous(),
                   min_p = min_p_in.contiguous();
  const int64_t rows = probs.size(0), n = probs.size(1);
  at::Tensor out = at::empty({rows, n}, probs.options());
  if (rows == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, probs.scalar_type(), "probs_renorm_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel("probs_renorm_kernel", cuda::probs_renorm_kernel<cuda_t, acc_t>,
                            row_grid(rows), cuda::sampling_block_threads(n), 0,
                            cuda::current_stream(),
                            probs_args<scalar_t>(probs, top_k, top_p, min_p, order),
                            reinterpret_cast<cuda_t*>(out.mutable_data_ptr<scalar_t>()));
        LOGITOPS_CHECK_LAUNCH();
      });
  return out;
}

at::Tensor probs_sample_cuda(const at::Tensor& probs_in, const at::Tensor& top_k_in,
                             const at::Tensor& top_p_in, const at::Tensor& min_p_in,
                             c10::string_view order_name, const at::Tensor& seeds_in,
                             bool per_row_seeds) {
  const FilterOrder order = parse_filter_order(order_name);
  check_probs_filters(probs_in, top_k_in, top_p_in, min_p_in, "probs_sample");
  check_row_seeds(seeds_in, probs_in.size(0), "probs_sample");
  check_devices(probs_in, {&top_k_in, &top_p_in, &min_p_in, &seeds_in}, "probs_sample");
  const cuda::DeviceGuard device_guard(probs_in.device());
  const at::Tensor probs = rows_with_unit_stride(probs_in);
  const at::Tensor top_k = top_k_in.contiguous(), top_p = top_p_in.contiguous(),
                   min_p = min_p_in.contiguous(), seeds = seeds_in.contiguous();
  const int64_t rows = probs.size(0);
  at::Tensor tokens = at::empty({rows}, probs.options().dtype(at::kLong));
  if (rows == 0) return tokens;
  // An empty vocabulary still gets a launch: its rows come back as -1.
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, probs.scalar_type(), "probs_sample_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel(
            "probs_sample_kernel", cuda::probs_sample_kernel<cuda_t, acc_t>, row_grid(rows),
            cuda::sampling_block_threads(probs.size(1)), 0, cuda::current_stream(),
            probs_args<scalar_t>(probs, top_k, top_p, min_p, order),
            seeds.const_data_ptr<int64_t>(), per_row_seeds, tokens.mutable_data_ptr<int64_t>());
        LOGITOPS_CHECK_LAUNCH();
      });
  return tokens;
}

at::Tensor softmax_cuda(const at::Tensor& logits_in, const at::Tensor& temperature_in) {
  check_probability_rows(logits_in, "softmax");
  check_row_temperature(temperature_in, logits_in.size(0), "softmax");
  check_devices(logits_in, {&temperature_in}, "softmax");
  const cuda::DeviceGuard device_guard(logits_in.device());
  const at::Tensor logits = rows_with_unit_stride(logits_in);
  const at::Tensor temperature = temperature_in.contiguous();
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out =
      at::empty({rows, n}, logits.options().dtype(accumulation_dtype(logits.scalar_type())));
  if (rows == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "softmax_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel(
            "softmax_kernel", cuda::softmax_kernel<cuda_t, acc_t>, row_grid(rows),
            cuda::threads_for(cuda::vector_count<scalar_t>(n), 1), 0, cuda::current_stream(),
            reinterpret_cast<const cuda_t*>(logits.const_data_ptr<scalar_t>()), logits.stride(0),
            rows, n, temperature.const_data_ptr<double>(), out.mutable_data_ptr<acc_t>());
        LOGITOPS_CHECK_LAUNCH();
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("softmax", &softmax_cuda);
  m.impl("probs_renorm", &probs_renorm_cuda);
  m.impl("probs_sample", &probs_sample_cuda);
}

}  // namespace logitops

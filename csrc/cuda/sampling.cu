// Filtering and sampling on CUDA: launchers for the kernels of sampling_kernels.cuh, with the same
// semantics as csrc/cpu/sampling.cpp. Nothing here waits for the device or allocates anything but
// the outputs (no workspace), so both ops can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../common/sampling_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "../host/operands.h"
#include "device_api.h"
#include "sampling_kernels.cuh"

namespace logitops {
namespace {

using cuda::CudaType;
using cuda::row_grid;

// The kernels read every tensor from the device; the checks shared with the CPU are done.
void check_sampling_devices(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                            std::initializer_list<const at::Tensor*> per_row) {
  TORCH_CHECK_VALUE(cuda::on_kernel_device(logits),
                    "logitops: logits must be on a CUDA device, got ", logits.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->device() == logits.device(), "logitops: logit_bias is on ",
                      bias->device(), " but logits on ", logits.device());
  }
  for (const at::Tensor* t : per_row) {
    TORCH_CHECK_VALUE(t->device() == logits.device(),
                      "logitops: per-row parameters must be on the logits' device ",
                      logits.device(), ", got ", t->device());
  }
  // Histogram counts of one row are 32-bit.
  TORCH_CHECK_VALUE(logits.size(1) <= int64_t(std::numeric_limits<uint32_t>::max()),
                    "logitops: the CUDA kernels support vocabularies below 2^32, got ",
                    logits.size(1));
}

struct SamplingTensors {
  at::Tensor logits, bias, temperature, top_k, top_p, min_p;
  at::Tensor typical_p, epsilon_cutoff, eta_cutoff;  // undefined when off
};

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

const double* optional_data(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<double>() : nullptr;
}

SamplingTensors prepare(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                        const at::Tensor& temperature, const at::Tensor& top_k,
                        const at::Tensor& top_p, const at::Tensor& min_p,
                        const std::optional<at::Tensor>& typical_p,
                        const std::optional<at::Tensor>& epsilon_cutoff,
                        const std::optional<at::Tensor>& eta_cutoff) {
  return {rows_with_unit_stride(logits),
          bias.has_value() ? rows_with_unit_stride(*bias) : at::Tensor(),
          temperature.contiguous(),
          top_k.contiguous(),
          top_p.contiguous(),
          min_p.contiguous(),
          optional_contiguous(typical_p),
          optional_contiguous(epsilon_cutoff),
          optional_contiguous(eta_cutoff)};
}

template <typename scalar_t>
cuda::SamplingArgs<typename CudaType<scalar_t>::type, at::opmath_type<scalar_t>> make_args(
    const SamplingTensors& in, FilterOrder order) {
  using cuda_t = typename CudaType<scalar_t>::type;
  using acc_t = at::opmath_type<scalar_t>;
  cuda::SamplingArgs<cuda_t, acc_t> args;
  args.logits = reinterpret_cast<const cuda_t*>(in.logits.const_data_ptr<scalar_t>());
  args.row_stride = in.logits.stride(0);
  // The bias is in acc_t (float32; float64 for float64 logits): check_sampling_inputs.
  args.bias = in.bias.defined() ? in.bias.const_data_ptr<acc_t>() : nullptr;
  args.bias_row_stride = in.bias.defined() && in.bias.size(0) > 1 ? in.bias.stride(0) : 0;
  args.num_rows = in.logits.size(0);
  args.vocab = in.logits.size(1);
  args.temperature = in.temperature.const_data_ptr<double>();
  args.top_k = in.top_k.const_data_ptr<int64_t>();
  args.top_p = in.top_p.const_data_ptr<double>();
  args.min_p = in.min_p.const_data_ptr<double>();
  args.order = order;
  args.typical_p = optional_data(in.typical_p);
  args.epsilon_cutoff = optional_data(in.epsilon_cutoff);
  args.eta_cutoff = optional_data(in.eta_cutoff);
  return args;
}

// Penalties on CUDA: the biased logits are copied into an acc_t [B, V] buffer (one extra column
// that absorbs the history's skipped entries) and penalised there by torch ops over the [B, M]
// history only (gather, sampling_math.h's penalized_logit written elementwise, scatter), all on
// the device and without a sync; the kernels then filter / sample that buffer with no bias. Each
// entry gets the float operations of penalized_logit in its order, so the values are the CPU
// kernel's. This costs one [B, V] write and read more than the fused CPU path; the single-pass
// design (a shared-memory bitmap of the row's history consulted by ScaledRow) is not built yet.
at::Tensor penalized_logits(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& ids_in,
                            const std::optional<at::Tensor>& counts_in,
                            const std::optional<at::Tensor>& repetition,
                            const std::optional<at::Tensor>& presence,
                            const std::optional<at::Tensor>& frequency, bool output_only) {
  const at::ScalarType acc = accumulation_dtype(logits.scalar_type());
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor z = at::empty({rows, n + 1}, logits.options().dtype(acc));
  at::Tensor body = z.narrow(1, 0, n);
  body.copy_(logits);
  if (bias.has_value()) body.add_(*bias);
  z.select(1, n).zero_();
  const at::Tensor& ids = *ids_in;
  const at::Tensor idx = at::where(ids.ge(0).logical_and_(ids.lt(n)), ids, n);
  at::Tensor v = z.gather(1, idx);
  const at::Tensor counts = *counts_in;
  const at::Tensor rep = repetition->to(acc).unsqueeze(1);
  const at::Tensor scaled = at::where(v.lt(0), v.mul(rep), v.div(rep));
  v = output_only ? at::where(counts.gt(0), scaled, v) : scaled;
  const at::Tensor penalised = v.sub(frequency->to(acc).unsqueeze(1).mul(counts.to(acc)))
                                   .sub(presence->to(acc).unsqueeze(1));
  v = at::where(counts.gt(0), penalised, v);
  z.scatter_(1, idx, v);
  return body;
}

at::Tensor filter_logits_cuda(
    const at::Tensor& logits, const std::optional<at::Tensor>& bias, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& min_p,
    c10::string_view order_name, double filter_value, int64_t min_tokens_to_keep,
    const std::optional<at::Tensor>& penalty_ids, const std::optional<at::Tensor>& penalty_counts,
    const std::optional<at::Tensor>& repetition_penalty,
    const std::optional<at::Tensor>& presence_penalty,
    const std::optional<at::Tensor>& frequency_penalty, bool repetition_output_only,
    const std::optional<at::Tensor>& typical_p, const std::optional<at::Tensor>& epsilon_cutoff,
    const std::optional<at::Tensor>& eta_cutoff) {
  const FilterOrder order = parse_filter_order(order_name);
  check_sampling_inputs(logits, bias, temperature, top_k, top_p, min_p);
  const bool penalised = check_penalty_inputs(
      logits, penalty_ids, penalty_counts, repetition_penalty, presence_penalty, frequency_penalty);
  check_warper_inputs(logits, typical_p, epsilon_cutoff, eta_cutoff);
  check_sampling_devices(logits, bias, {&temperature, &top_k, &top_p, &min_p});
  const cuda::DeviceGuard device_guard(logits.device());
  const int64_t rows = logits.size(0), n = logits.size(1);
  if (penalised && rows > 0 && n > 0) {
    // The fill is rounded to the logits' dtype first, as without penalties; the acc_t result is
    // rounded once to that dtype.
    double fill_value = filter_value;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "fill", [&] {
      fill_value = double(static_cast<scalar_t>(filter_value));
    });
    const at::Tensor z =
        penalized_logits(logits, bias, penalty_ids, penalty_counts, repetition_penalty,
                         presence_penalty, frequency_penalty, repetition_output_only);
    return filter_logits_cuda(z, std::nullopt, temperature, top_k, top_p, min_p, order_name,
                              fill_value, min_tokens_to_keep, std::nullopt, std::nullopt,
                              std::nullopt, std::nullopt, std::nullopt, false, typical_p,
                              epsilon_cutoff, eta_cutoff)
        .to(logits.scalar_type());
  }
  const SamplingTensors in = prepare(logits, bias, temperature, top_k, top_p, min_p, typical_p,
                                     epsilon_cutoff, eta_cutoff);
  at::Tensor out = at::empty({rows, n}, logits.options());  // contiguous, whatever the input
  if (rows == 0 || n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "filter_logits_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        // Rounded to the logits' dtype on the host, as the CPU kernel rounds it.
        const acc_t fill = static_cast<acc_t>(static_cast<scalar_t>(filter_value));
        cuda::launch_kernel("filter_logits_kernel", cuda::filter_logits_kernel<cuda_t, acc_t>,
                            row_grid(rows), cuda::sampling_block_threads(n), 0,
                            cuda::current_stream(), make_args<scalar_t>(in, order), fill,
                            min_tokens_to_keep,
                            reinterpret_cast<cuda_t*>(out.mutable_data_ptr<scalar_t>()));
        LOGITOPS_CHECK_LAUNCH();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_cuda(
    const at::Tensor& logits, const std::optional<at::Tensor>& bias, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& min_p,
    c10::string_view order_name, const at::Tensor& seeds, bool per_row_seeds,
    const std::optional<at::Tensor>& penalty_ids, const std::optional<at::Tensor>& penalty_counts,
    const std::optional<at::Tensor>& repetition_penalty,
    const std::optional<at::Tensor>& presence_penalty,
    const std::optional<at::Tensor>& frequency_penalty, bool repetition_output_only,
    const std::optional<at::Tensor>& typical_p, const std::optional<at::Tensor>& epsilon_cutoff,
    const std::optional<at::Tensor>& eta_cutoff) {
  const FilterOrder order = parse_filter_order(order_name);
  check_sampling_inputs(logits, bias, temperature, top_k, top_p, min_p);
  const bool penalised = check_penalty_inputs(
      logits, penalty_ids, penalty_counts, repetition_penalty, presence_penalty, frequency_penalty);
  check_warper_inputs(logits, typical_p, epsilon_cutoff, eta_cutoff);
  const int64_t rows = logits.size(0);
  TORCH_CHECK_VALUE(seeds.dim() == 1 && seeds.size(0) == rows && seeds.scalar_type() == at::kLong,
                    "logitops.sample: seed must be int64 [", rows, "]");
  check_sampling_devices(logits, bias, {&temperature, &top_k, &top_p, &min_p, &seeds});
  const cuda::DeviceGuard device_guard(logits.device());
  if (penalised && rows > 0 && logits.size(1) > 0) {
    const at::Tensor z =
        penalized_logits(logits, bias, penalty_ids, penalty_counts, repetition_penalty,
                         presence_penalty, frequency_penalty, repetition_output_only);
    return sample_cuda(z, std::nullopt, temperature, top_k, top_p, min_p, order_name, seeds,
                       per_row_seeds, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
                       std::nullopt, false, typical_p, epsilon_cutoff, eta_cutoff);
  }
  const SamplingTensors in = prepare(logits, bias, temperature, top_k, top_p, min_p, typical_p,
                                     epsilon_cutoff, eta_cutoff);
  const at::Tensor seed = seeds.contiguous();
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({rows}, logits.options().dtype(at::kFloat));
  if (rows == 0) return {tokens, logprobs};
  // An empty vocabulary still gets a launch: its rows come back as -1 (log-prob NaN).
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "sample_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using cuda_t = typename CudaType<scalar_t>::type;
        cuda::launch_kernel("sample_kernel", cuda::sample_kernel<cuda_t, acc_t>, row_grid(rows),
                            cuda::sampling_block_threads(logits.size(1)), 0, cuda::current_stream(),
                            make_args<scalar_t>(in, order), seed.const_data_ptr<int64_t>(),
                            per_row_seeds, tokens.mutable_data_ptr<int64_t>(),
                            logprobs.mutable_data_ptr<float>());
        LOGITOPS_CHECK_LAUNCH();
      });
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, LOGITOPS_CUDA_DISPATCH_KEY, m) {
  m.impl("filter_logits", &filter_logits_cuda);
  m.impl("sample", &sample_cuda);
}

}  // namespace logitops

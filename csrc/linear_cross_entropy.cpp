// Fused linear + cross-entropy: the [N, V] logits never exist at once.
//
// Device-generic (CompositeExplicitAutograd): per chunk of tokens, the logits tile with at::linear
// (cuBLAS / oneDNN), the loss and its gradient with our cross-entropy ops (through the dispatcher,
// so the CPU or CUDA kernel), and that chunk's share of the gradients of the input, the weight and
// the bias. Being one op, it is one opaque node under torch.compile: the number of chunks, which
// depends on N, never enters a traced graph.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/logit_math.h"
#include "host/modes.h"
#include "host/operands.h"

namespace logitops {
namespace {

using CrossEntropyForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double, double,
    double, c10::string_view, bool);
using CrossEntropyBackwardFn = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                          const at::Tensor&, const at::Tensor&,
                                          const std::optional<at::Tensor>&, const at::Tensor&,
                                          const at::Tensor&, int64_t, double, double, double,
                                          c10::string_view);

const auto& cross_entropy_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("logitops::cross_entropy_forward", "")
                             .typed<CrossEntropyForwardFn>();
  return op;
}

const auto& cross_entropy_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("logitops::cross_entropy_backward", "")
                             .typed<CrossEntropyBackwardFn>();
  return op;
}

void check_linear_inputs(const at::Tensor& input, const at::Tensor& linear_weight,
                         const std::optional<at::Tensor>& linear_bias, const at::Tensor& target,
                         int64_t chunk_size) {
  TORCH_CHECK_VALUE(input.dim() == 2, "logitops.linear_cross_entropy: input must be 2-D [N, H], ",
                    "got ", input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "logitops.linear_cross_entropy: input must be floating point, got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(linear_weight.dim() == 2 && linear_weight.size(1) == input.size(1),
                    "logitops.linear_cross_entropy: linear_weight must be [V, ", input.size(1),
                    "], got ", linear_weight.sizes());
  TORCH_CHECK_TYPE(linear_weight.scalar_type() == input.scalar_type(),
                   "logitops.linear_cross_entropy: linear_weight must have the input's dtype ",
                   input.scalar_type(), ", got ", linear_weight.scalar_type());
  TORCH_CHECK_VALUE(linear_weight.device() == input.device(),
                    "logitops.linear_cross_entropy: linear_weight is on ", linear_weight.device(),
                    " but input on ", input.device());
  if (linear_bias.has_value()) {
    TORCH_CHECK_VALUE(linear_bias->dim() == 1 && linear_bias->size(0) == linear_weight.size(0),
                      "logitops.linear_cross_entropy: linear_bias must be [", linear_weight.size(0),
                      "], got ", linear_bias->sizes());
    TORCH_CHECK_TYPE(linear_bias->scalar_type() == input.scalar_type(),
                     "logitops.linear_cross_entropy: linear_bias must have the input's dtype");
    TORCH_CHECK_VALUE(linear_bias->device() == input.device(),
                      "logitops.linear_cross_entropy: linear_bias is on ", linear_bias->device(),
                      " but input on ", input.device());
  }
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == input.size(0),
                    "logitops.linear_cross_entropy: target must have shape [", input.size(0),
                    "], got ", target.sizes());
  TORCH_CHECK_VALUE(chunk_size >= 1, "logitops.linear_cross_entropy: chunk_size must be >= 1, got ",
                    chunk_size);
}

// Rows of the weight gradient computed per matmul on the CPU's half-precision path: the product
// is rounded to the input's dtype, so it is formed a block at a time and added to the float32
// accumulator while in cache, instead of as a second [V, H] tensor.
constexpr int64_t kWeightRowBlock = 8192;

// The gradients of the linear layer, filled chunk by chunk from the logits' gradient times
// `scale`; weight and bias accumulate in the accumulation dtype (float32 for half-precision
// inputs). The first chunk writes rather than adds, so nothing is zero-filled first.
struct LinearGradients {
  at::Tensor input, weight, bias;
  bool first = true;

  LinearGradients(const at::Tensor& in, const at::Tensor& linear_weight, bool with_bias) {
    const auto acc = linear_weight.options().dtype(accumulation_dtype(in.scalar_type()));
    input = at::empty_like(in, at::MemoryFormat::Contiguous);
    // No chunk at all (N = 0) leaves zeros.
    weight = in.size(0) == 0 ? at::zeros(linear_weight.sizes(), acc)
                             : at::empty(linear_weight.sizes(), acc);
    bias = with_bias ? at::zeros({linear_weight.size(0)}, acc) : at::empty({0}, acc);
  }

  // Adds a chunk's share for its logits' gradient times `scale` (a host scalar) and, when
  // defined, times `device_scale` (a 0-dim device tensor, applied to the input's rows here and to
  // the weight and bias by finish()).
  void add(int64_t start, const at::Tensor& x, const at::Tensor& linear_weight,
           const at::Tensor& grad_logits, double scale, const at::Tensor& device_scale) {
    auto rows = input.narrow(0, start, x.size(0));
    at::mm_out(rows, grad_logits, linear_weight);
    if (scale != 1.0) rows.mul_(scale);
    if (device_scale.defined()) rows.mul_(device_scale);
    const at::Tensor grad_t = grad_logits.t();
    const double beta = first ? 0.0 : 1.0;  // beta = 0 ignores the uninitialized accumulator
    if (grad_logits.scalar_type() == weight.scalar_type()) {
      weight.addmm_(grad_t, x, beta, scale);
    } else if (grad_logits.is_cuda()) {
      // cuBLAS multiplies half-precision operands into the float32 accumulator directly.
      at::addmm_out(weight, weight, grad_t, x, weight.scalar_type(), beta, scale);
    } else {
      // The CPU's half-precision matmul accumulates in float32 and rounds once per chunk: twice
      // as fast as upcasting both operands, and the sum over chunks stays in float32.
      const int64_t vocab = weight.size(0);
      for (int64_t v = 0; v < vocab; v += kWeightRowBlock) {
        const int64_t n = std::min(kWeightRowBlock, vocab - v);
        const at::Tensor product = at::mm(grad_t.narrow(0, v, n), x);
        auto block = weight.narrow(0, v, n);
        if (first) {
          block.copy_(product);
          if (scale != 1.0) block.mul_(scale);
        } else {
          block.add_(product, scale);
        }
      }
    }
    if (bias.numel() > 0) bias.add_(at::sum(grad_logits, {0}, false, bias.scalar_type()), scale);
    first = false;
  }

  // The weight and bias gradients in `dtype`, times device_scale when defined: one pass over
  // each float32 accumulator, which is freed with this object.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(at::ScalarType dtype,
                                                        const at::Tensor& device_scale) {
    auto convert = [&](const at::Tensor& acc) {
      if (!device_scale.defined()) return acc.to(dtype);
      at::Tensor out = at::empty(acc.sizes(), acc.options().dtype(dtype));
      return at::mul_out(out, acc, device_scale);  // computed in float32, rounded once
    };
    return {input, convert(weight), convert(bias)};
  }
};

// sum of the class weights of the non-ignored targets (their count without class weights): the
// normalizer of the mean, known before any chunk. Out-of-range targets are left for the
// cross-entropy kernel to report; here they only must not be read out of bounds.
at::Tensor target_weight_total(const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               int64_t ignore_index, int64_t num_classes,
                               at::ScalarType acc_dtype) {
  const at::Tensor kept = (target != ignore_index) & (target >= 0) & (target < num_classes);
  if (!weight.has_value()) return kept.sum(at::kDouble).to(acc_dtype);
  const at::Tensor safe = at::where(kept, target, at::zeros_like(target));
  const at::Tensor w = weight->to(at::kDouble).index_select(0, safe);
  return at::where(kept, w, at::zeros_like(w)).sum().to(acc_dtype);
}

// The logits tile of a chunk: in the operands' dtype, or, for the float32_logits overloads
// (autocast: the matmul in the autocast dtype, cross-entropy a float32 op), converted to the
// accumulation dtype, so the per-row losses and the logits' gradient are float32 as well.
at::Tensor chunk_logits(const at::Tensor& x, const at::Tensor& linear_weight,
                        const std::optional<at::Tensor>& linear_bias, bool float32_logits) {
  at::Tensor logits = at::linear(x, linear_weight, linear_bias);
  return float32_logits ? logits.to(accumulation_dtype(x.scalar_type())) : logits;
}

using ForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ForwardResult linear_cross_entropy_forward_impl(
    const at::Tensor& input_in, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    double z_loss, double softcap, Reduction reduction, int64_t chunk_size, bool compute_grad,
    bool float32_logits) {
  check_linear_inputs(input_in, linear_weight, linear_bias, target_in, chunk_size);
  TORCH_CHECK_VALUE(!(compute_grad && reduction == kReductionNone),
                    "logitops.linear_cross_entropy_forward: compute_grad needs a scalar reduction "
                    "(with reduction none the upstream gradient is per row)");
  const at::Tensor input = input_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = input.size(0);
  const auto acc_dtype = accumulation_dtype(input.scalar_type());
  const auto acc_options = input.options().dtype(acc_dtype);
  // Each chunk's forward writes its logits' gradient in the same sweep (on CUDA one fused kernel:
  // the chunk's logits cross memory once each way).
  const bool chunk_compute_grad = compute_grad;
  const at::Tensor total_weight =
      target_weight_total(target, weight, ignore_index, linear_weight.size(0), acc_dtype);
  // The chunks' gradients are of their summed loss (an upstream gradient of 1 per row). The
  // mean's 1 / total stays out of the half-precision logit gradient, where it could underflow:
  // on the CPU it is folded into the matmuls (alpha, a host scalar); on CUDA it scales the rows of
  // the input's gradient and the float32 accumulators as a device scalar (no sync). A mean over
  // no target weight has gradient 0, as cross_entropy's.
  double host_scale = 1.0;
  at::Tensor device_scale;
  if (compute_grad && reduction == kReductionMean) {
    if (input.device().is_cpu()) {
      const double total = total_weight.item<double>();  // a CPU tensor: no device sync
      host_scale = total != 0.0 ? 1.0 / total : 0.0;
    } else {
      device_scale =
          at::where(total_weight != 0, at::reciprocal(total_weight), at::zeros_like(total_weight));
    }
  }

  at::Tensor lse = at::empty({num_rows}, acc_options);
  // The loss is returned in the accumulation dtype (the Python layer rounds it to the input's
  // dtype, except under autocast, whose cross-entropy is a float32 op): a scalar loss keeps the
  // float32 sum's digits.
  at::Tensor row_loss =
      reduction == kReductionNone ? at::empty({num_rows}, acc_options) : at::Tensor();
  at::Tensor loss_sum = at::zeros({}, acc_options);
  std::optional<LinearGradients> grads;
  if (compute_grad) grads.emplace(input, linear_weight, linear_bias.has_value());
  const at::Tensor one = at::ones({}, acc_options);

  for (int64_t start = 0; start < num_rows; start += chunk_size) {
    const int64_t n = std::min(chunk_size, num_rows - start);
    const at::Tensor x = input.narrow(0, start, n);
    const at::Tensor t = target.narrow(0, start, n);
    const at::Tensor logits = chunk_logits(x, linear_weight, linear_bias, float32_logits);
    // Per-row losses, summed here in the accumulation dtype: a chunk's sum in fp16 could
    // overflow, and in bf16 would lose digits.
    auto [loss, chunk_lse, chunk_total, grad] = cross_entropy_forward_op().call(
        logits, t, weight, ignore_index, label_smoothing, z_loss, softcap,
        kReductionNames[kReductionNone], chunk_compute_grad);
    lse.narrow(0, start, n).copy_(chunk_lse);
    if (reduction == kReductionNone) {
      row_loss.narrow(0, start, n).copy_(loss);
    } else {
      loss_sum.add_(at::sum(loss, acc_dtype));
    }
    if (compute_grad) {
      if (!chunk_compute_grad) {
        grad = cross_entropy_backward_op().call(one, std::nullopt, logits, t, weight, chunk_lse,
                                                chunk_total, ignore_index, label_smoothing, z_loss,
                                                softcap, kReductionNames[kReductionSum]);
      }
      // float32 logits: their gradient is rounded to the operands' dtype for the matmuls.
      grads->add(start, x, linear_weight, grad.to(input.scalar_type()), host_scale, device_scale);
    }
  }

  at::Tensor loss;
  if (reduction == kReductionNone) {
    loss = row_loss;
  } else {
    loss = reduction == kReductionMean ? loss_sum / total_weight : loss_sum;
  }
  if (!compute_grad) {
    return {loss,
            lse,
            total_weight,
            at::empty({0}, input.options()),
            at::empty({0}, linear_weight.options()),
            at::empty({0}, input.options())};
  }
  // Rounded once to the parameters' dtypes; the float32 accumulators are freed here.
  auto [grad_input, grad_weight, grad_bias] = grads->finish(input.scalar_type(), device_scale);
  return {loss, lse, total_weight, grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_impl(
    const at::Tensor& grad_rows, const at::Tensor& input_in, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse_in, int64_t ignore_index,
    double label_smoothing, double z_loss, double softcap, int64_t chunk_size,
    bool float32_logits) {
  check_linear_inputs(input_in, linear_weight, linear_bias, target_in, chunk_size);
  const at::Tensor input = input_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t num_rows = input.size(0);
  const auto acc_dtype = accumulation_dtype(input.scalar_type());
  TORCH_CHECK_VALUE(grad_rows.dim() == 1 && grad_rows.size(0) == num_rows,
                    "logitops.linear_cross_entropy_backward: grad_rows must have shape [", num_rows,
                    "], got ", grad_rows.sizes());
  TORCH_CHECK_VALUE(lse_in.dim() == 1 && lse_in.size(0) == num_rows,
                    "logitops.linear_cross_entropy_backward: lse must have shape [", num_rows,
                    "], got ", lse_in.sizes());
  const at::Tensor upstream = grad_rows.to(acc_dtype).contiguous();
  const at::Tensor lse = lse_in.to(acc_dtype).contiguous();
  const at::Tensor unused_total = at::zeros({}, input.options().dtype(acc_dtype));
  LinearGradients grads(input, linear_weight, linear_bias.has_value());
  for (int64_t start = 0; start < num_rows; start += chunk_size) {
    const int64_t n = std::min(chunk_size, num_rows - start);
    const at::Tensor x = input.narrow(0, start, n);
    const at::Tensor logits = chunk_logits(x, linear_weight, linear_bias, float32_logits);
    const at::Tensor grad = cross_entropy_backward_op().call(
        upstream.narrow(0, start, n), std::nullopt, logits, target.narrow(0, start, n), weight,
        lse.narrow(0, start, n), unused_total, ignore_index, label_smoothing, z_loss, softcap,
        kReductionNames[kReductionNone]);
    grads.add(start, x, linear_weight, grad.to(input.scalar_type()), 1.0, at::Tensor());
  }
  return {grads.input, grads.weight, grads.bias};
}

template <bool Float32Logits>
ForwardResult linear_cross_entropy_forward(const at::Tensor& input, const at::Tensor& linear_weight,
                                           const std::optional<at::Tensor>& linear_bias,
                                           const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t ignore_index, double label_smoothing,
                                           double z_loss, double softcap,
                                           c10::string_view reduction, int64_t chunk_size,
                                           bool compute_grad) {
  return linear_cross_entropy_forward_impl(
      input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, z_loss,
      softcap, parse_reduction(reduction), chunk_size, compute_grad, Float32Logits);
}

template <bool Float32Logits>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_rows, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t ignore_index,
    double label_smoothing, double z_loss, double softcap, int64_t chunk_size) {
  return linear_cross_entropy_backward_impl(grad_rows, input, linear_weight, linear_bias, target,
                                            weight, lse, ignore_index, label_smoothing, z_loss,
                                            softcap, chunk_size, Float32Logits);
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CompositeExplicitAutograd, m) {
  m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward<false>);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward<false>);
  m.impl("linear_cross_entropy_forward.float32_logits", &linear_cross_entropy_forward<true>);
  m.impl("linear_cross_entropy_backward.float32_logits", &linear_cross_entropy_backward<true>);
}

}  // namespace logitops

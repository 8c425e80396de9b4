// Argument checks of each op family: what a direct caller of torch.ops.logitops.* gets instead of
// a crash. The CPU and CUDA launchers of a family call the same check first.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../common/modes.h"

namespace logitops {

// cross_entropy_*: logits [N, C] floating with C >= 1, int64 target [N], optional weight [C],
// all on one device.
void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight);

// scale_gradient_: a floating contiguous grad and a 0-dim floating scale on its device.
void check_scale_gradient_inputs(const at::Tensor& grad, const at::Tensor& scale);

// cross_entropy_probs_*: the same, with class-probability targets [N, C] of the logits' dtype.
void check_cross_entropy_probs_inputs(const at::Tensor& logits, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight);

// vocab_parallel_cross_entropy_*: logits [N, V_local] floating, int64 target [N] on the logits'
// device, 0 <= vocab_start, and (for the backward, with num_classes >= 0)
// vocab_start + V_local <= num_classes; `op` names the op in the message.
void check_vocab_parallel_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 int64_t vocab_start, int64_t num_classes, const char* op);

// bce_with_logits_*: input [N, C] floating, target of its shape and dtype, weight / pos_weight
// expanded to its shape in the accumulation dtype, all on one device.
void check_bce_inputs(const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight);

// distillation_forward / _backward: student and teacher [N, V] of one floating dtype and device,
// optional int64 target [N], temperature > 0, kind, JSD beta in (0, 1), finite term weights
// (the hard one non-zero only with a target).
void check_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& target, double temperature,
                          DivergenceKind kind, double beta, double hard_weight, double soft_weight);

// filter_logits and sample: logits [B, V], logit_bias [1 or B, V] in float32 (float64 for float64
// logits), per-row float64 temperature / top_p / min_p and int64 top_k.
void check_sampling_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                           const at::Tensor& temperature, const at::Tensor& top_k,
                           const at::Tensor& top_p, const at::Tensor& min_p);

// filter_logits and sample's penalties: all of penalty_ids / penalty_counts (int64 [B, M]) and
// the per-row float64 [B] repetition / presence / frequency penalties, or none of them, on the
// logits' device. Returns whether they are given.
bool check_penalty_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& ids,
                          const std::optional<at::Tensor>& counts,
                          const std::optional<at::Tensor>& repetition,
                          const std::optional<at::Tensor>& presence,
                          const std::optional<at::Tensor>& frequency);

// filter_logits and sample's HF-only warpers: each absent or float64 [B] on the logits' device.
void check_warper_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& typical_p,
                         const std::optional<at::Tensor>& epsilon_cutoff,
                         const std::optional<at::Tensor>& eta_cutoff);

// token_logprobs_forward / _backward: logits [N, V] floating with V >= 1, int64 target [N] on the
// logits' device, temperature finite and > 0.
void check_token_logprobs_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 double temperature);

}  // namespace logitops

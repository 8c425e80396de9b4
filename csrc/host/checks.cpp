#include "checks.h"

#include <cmath>

#include "../common/logit_math.h"
#include "../common/sampling_math.h"
#include "operands.h"

namespace logitops {

namespace {

// What both cross-entropy variants require of the logits and the class weights.
void check_cross_entropy_common(const at::Tensor& logits, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK_VALUE(logits.dim() == 2,
                    "logitops.cross_entropy: logits must be 2-D [rows, classes], got ",
                    logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops.cross_entropy: logits must be floating point, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.size(1) >= 1,
                    "logitops.cross_entropy: logits must have at least one class");
  if (weight.has_value()) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == logits.size(1),
                      "logitops.cross_entropy: weight must have shape [", logits.size(1), "], got ",
                      weight->sizes());
    TORCH_CHECK_VALUE(weight->device() == logits.device(), "logitops.cross_entropy: weight is on ",
                      weight->device(), " but logits on ", logits.device());
  }
}

}  // namespace

void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight) {
  check_cross_entropy_common(logits, weight);
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong,
                   "logitops.cross_entropy: target must be int64 class indices, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0),
                    "logitops.cross_entropy: target must have shape [", logits.size(0), "], got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "logitops.cross_entropy: target is on ",
                    target.device(), " but logits on ", logits.device());
}

void check_scale_gradient_inputs(const at::Tensor& grad, const at::Tensor& scale) {
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()),
                   "logitops.scale_gradient_: grad must be floating, got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.is_contiguous(), "logitops.scale_gradient_: grad must be contiguous");
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()),
                   "logitops.scale_gradient_: scale must be floating, got ", scale.scalar_type());
  TORCH_CHECK_VALUE(scale.dim() == 0, "logitops.scale_gradient_: scale must be 0-dim, got shape ",
                    scale.sizes());
  TORCH_CHECK_VALUE(scale.device() == grad.device(), "logitops.scale_gradient_: scale is on ",
                    scale.device(), " but grad on ", grad.device());
}

void check_cross_entropy_probs_inputs(const at::Tensor& logits, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight) {
  check_cross_entropy_common(logits, weight);
  TORCH_CHECK_VALUE(target.sizes() == logits.sizes(),
                    "logitops.cross_entropy: probability target must have the logits' shape ",
                    logits.sizes(), ", got ", target.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == logits.scalar_type(),
                   "logitops.cross_entropy: probability target must have the logits' dtype ",
                   logits.scalar_type(), ", got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "logitops.cross_entropy: target is on ",
                    target.device(), " but logits on ", logits.device());
}

void check_vocab_parallel_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 int64_t vocab_start, int64_t num_classes, const char* op) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logitops.", op,
                    ": logits must be 2-D [rows, local classes], got ", logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), "logitops.", op,
                   ": logits must be floating point, got ", logits.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "logitops.", op,
                   ": target must be int64 class indices, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0), "logitops.", op,
                    ": target must have shape [", logits.size(0), "], got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "logitops.", op, ": target is on ",
                    target.device(), " but logits on ", logits.device());
  TORCH_CHECK_VALUE(vocab_start >= 0, "logitops.", op, ": vocab_start must be >= 0, got ",
                    vocab_start);
  if (num_classes >= 0) {
    TORCH_CHECK_VALUE(vocab_start + logits.size(1) <= num_classes, "logitops.", op, ": the slice [",
                      vocab_start, ", ", vocab_start + logits.size(1),
                      ") does not fit in num_classes = ", num_classes);
  }
}

void check_bce_inputs(const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight) {
  TORCH_CHECK_VALUE(input.dim() == 2, "logitops.bce_with_logits: input must be 2-D, got ",
                    input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "logitops.bce_with_logits: input must be floating point, got ",
                   input.scalar_type());
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(),
                    "logitops.bce_with_logits: target must have the input's shape ", input.sizes(),
                    ", got ", target.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(),
                   "logitops.bce_with_logits: target must have the input's dtype ",
                   input.scalar_type(), ", got ", target.scalar_type());
  const auto acc = accumulation_dtype(input.scalar_type());
  for (const auto* opt : {&weight, &pos_weight}) {
    if (!opt->has_value()) continue;
    const char* name = opt == &weight ? "weight" : "pos_weight";
    TORCH_CHECK_VALUE((*opt)->sizes() == input.sizes(), "logitops.bce_with_logits: ", name,
                      " must be expanded to the input's shape ", input.sizes(), ", got ",
                      (*opt)->sizes());
    TORCH_CHECK_TYPE((*opt)->scalar_type() == acc, "logitops.bce_with_logits: ", name, " must be ",
                     acc, ", got ", (*opt)->scalar_type());
    TORCH_CHECK_VALUE((*opt)->device() == input.device(), "logitops.bce_with_logits: ", name,
                      " is on ", (*opt)->device(), " but input on ", input.device());
  }
  TORCH_CHECK_VALUE(target.device() == input.device(), "logitops.bce_with_logits: target is on ",
                    target.device(), " but input on ", input.device());
}

void check_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& target, double temperature,
                          DivergenceKind kind, double beta, double hard_weight,
                          double soft_weight) {
  TORCH_CHECK_VALUE(student.dim() == 2 && student.size(1) >= 1,
                    "logitops.kl_div_with_logits: student_logits must be 2-D [rows, classes], got ",
                    student.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(student.scalar_type()),
                   "logitops.kl_div_with_logits: student_logits must be floating point");
  TORCH_CHECK_VALUE(teacher.sizes() == student.sizes() &&
                        teacher.scalar_type() == student.scalar_type() &&
                        teacher.device() == student.device(),
                    "logitops.kl_div_with_logits: teacher_logits must match student_logits in "
                    "shape, dtype and device");
  if (target.has_value()) {
    TORCH_CHECK_VALUE(target->dim() == 1 && target->size(0) == student.size(0) &&
                          target->scalar_type() == at::kLong &&
                          target->device() == student.device(),
                      "logitops.kl_div_with_logits: target must be int64 [", student.size(0),
                      "] on the logits' device");
  }
  TORCH_CHECK_VALUE(temperature > 0, "logitops.kl_div_with_logits: temperature must be > 0");
  TORCH_CHECK_VALUE(kind != kJsd || (beta > 0 && beta < 1),
                    "logitops.kl_div_with_logits: JSD beta must be in (0, 1)");
  TORCH_CHECK_VALUE(std::isfinite(hard_weight) && std::isfinite(soft_weight),
                    "logitops.distillation_loss: hard_weight and soft_weight must be finite");
  TORCH_CHECK_VALUE(hard_weight == 0 || target.has_value(),
                    "logitops.distillation_loss: the hard term (hard_weight != 0) needs a target");
}

void check_sampling_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                           const at::Tensor& temperature, const at::Tensor& top_k,
                           const at::Tensor& top_p, const at::Tensor& min_p) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logitops: logits must be 2-D [batch, vocab], got ",
                    logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops: logits must be floating point, got ", logits.scalar_type());
  const int64_t rows = logits.size(0);
  if (bias.has_value()) {
    // The filters compute in float32 (float64 for float64 logits), the bias included.
    const at::ScalarType acc = accumulation_dtype(logits.scalar_type());
    TORCH_CHECK_VALUE(bias->scalar_type() == acc, "logitops: logit_bias must be ", acc, " for ",
                      logits.scalar_type(), " logits");
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(1) == logits.size(1) &&
                          (bias->size(0) == rows || bias->size(0) == 1),
                      "logitops: logit_bias must be [1 or batch, vocab], got ", bias->sizes());
  }
  for (const auto* t : {&temperature, &top_p, &min_p}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == rows && t->scalar_type() == at::kDouble,
                      "logitops: per-row temperature / top_p / min_p must be float64 [", rows, "]");
  }
  TORCH_CHECK_VALUE(top_k.dim() == 1 && top_k.size(0) == rows && top_k.scalar_type() == at::kLong,
                    "logitops: per-row top_k must be int64 [", rows, "]");
}

bool check_penalty_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& ids,
                          const std::optional<at::Tensor>& counts,
                          const std::optional<at::Tensor>& repetition,
                          const std::optional<at::Tensor>& presence,
                          const std::optional<at::Tensor>& frequency) {
  const int given = int(ids.has_value()) + int(counts.has_value()) + int(repetition.has_value()) +
                    int(presence.has_value()) + int(frequency.has_value());
  if (given == 0) return false;
  TORCH_CHECK_VALUE(given == 5,
                    "logitops: penalty_ids, penalty_counts and the repetition / presence / "
                    "frequency penalties go together (all or none)");
  const int64_t rows = logits.size(0);
  TORCH_CHECK_VALUE(ids->dim() == 2 && ids->size(0) == rows && ids->scalar_type() == at::kLong,
                    "logitops: penalty_ids must be int64 [", rows, ", M], got ", ids->scalar_type(),
                    " ", ids->sizes());
  TORCH_CHECK_VALUE(counts->sizes() == ids->sizes() && counts->scalar_type() == at::kLong,
                    "logitops: penalty_counts must be int64 of penalty_ids' shape ", ids->sizes());
  for (const auto* t : {&*repetition, &*presence, &*frequency}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == rows && t->scalar_type() == at::kDouble,
                      "logitops: per-row repetition / presence / frequency penalties must be "
                      "float64 [",
                      rows, "]");
  }
  for (const auto* t : {&*ids, &*counts, &*repetition, &*presence, &*frequency}) {
    TORCH_CHECK_VALUE(t->device() == logits.device(),
                      "logitops: penalty tensors must be on the logits' device ", logits.device(),
                      ", got ", t->device());
  }
  return true;
}

void check_warper_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& typical_p,
                         const std::optional<at::Tensor>& epsilon_cutoff,
                         const std::optional<at::Tensor>& eta_cutoff) {
  const int64_t rows = logits.size(0);
  for (const auto* t : {&typical_p, &epsilon_cutoff, &eta_cutoff}) {
    if (!t->has_value()) continue;
    TORCH_CHECK_VALUE((*t)->dim() == 1 && (*t)->size(0) == rows &&
                          (*t)->scalar_type() == at::kDouble && (*t)->device() == logits.device(),
                      "logitops: per-row typical_p / epsilon_cutoff / eta_cutoff must be float64 [",
                      rows, "] on the logits' device");
  }
}

void check_token_logprobs_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 double temperature) {
  TORCH_CHECK_VALUE(
      logits.dim() == 2 && logits.size(1) >= 1,
      "logitops.token_logprobs: logits must be 2-D [rows, vocab] with vocab >= 1, got ",
      logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logitops.token_logprobs: logits must be floating point, got ",
                   logits.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong,
                   "logitops.token_logprobs: target must be int64 token ids, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0),
                    "logitops.token_logprobs: target must have shape [", logits.size(0), "], got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "logitops.token_logprobs: target is on ",
                    target.device(), " but logits on ", logits.device());
  TORCH_CHECK_VALUE(temperature > 0 && temperature < std::numeric_limits<double>::infinity(),
                    "logitops.token_logprobs: temperature must be finite and > 0, got ",
                    temperature);
}

}  // namespace logitops

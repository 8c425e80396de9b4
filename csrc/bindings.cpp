// Every op schema of logitops, a short comment each; docs/ops.md has each op's full contract.
// Kernels register their CPU / CUDA impls beside their code (csrc/cpu, csrc/cuda); fake kernels
// and autograd live in logitops/ops. Mode arguments are names (csrc/common/modes.h).
#include <Python.h>
#include <torch/library.h>

// `import logitops._C` (or `logitops._C_emulation`, the CUDA emulation build) loads this library,
// which runs the registrations below.
#ifdef LOGITOPS_CUDA_EMULATION
#define LOGITOPS_MODULE_NAME "_C_emulation"
#define LOGITOPS_MODULE_INIT PyInit__C_emulation
#else
#define LOGITOPS_MODULE_NAME "_C"
#define LOGITOPS_MODULE_INIT PyInit__C
#endif
extern "C" {
PyMODINIT_FUNC LOGITOPS_MODULE_INIT(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, LOGITOPS_MODULE_NAME, nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(logitops, m) {
  // Cross-entropy of logits [N, C] with int64 class-index targets [N] (loss, lse, total weight,
  // and the gradient for an upstream of 1 when compute_grad).
  m.def(
      "cross_entropy_forward(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, float z_loss, float softcap, str reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor lse, Tensor total_weight, Tensor grad)");
  // Gradient of cross_entropy_forward's loss (and optionally its lse) with respect to logits.
  m.def(
      "cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor logits, Tensor target, "
      "Tensor? weight, Tensor lse, Tensor total_weight, int ignore_index, float label_smoothing, "
      "float z_loss, float softcap, str reduction) -> Tensor");
  // grad *= scale in place (scale 0-dim, read on the device; free when it is 1): how the
  // backwards of the fused forwards (compute_grad) apply the upstream gradient.
  m.def("scale_gradient_(Tensor(a!) grad, Tensor scale) -> ()");
  // Cross-entropy of logits [N, C] with class-probability targets [N, C].
  m.def(
      "cross_entropy_probs_forward(Tensor logits, Tensor target, Tensor? weight, "
      "float label_smoothing, float z_loss, float softcap, str reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor lse, Tensor grad)");
  // Gradient of cross_entropy_probs_forward's loss (and optionally its lse) w.r.t. logits.
  m.def(
      "cross_entropy_probs_backward(Tensor grad_loss, Tensor? grad_lse, Tensor logits, "
      "Tensor target, Tensor? weight, Tensor lse, float label_smoothing, float z_loss, "
      "float softcap, str reduction) -> Tensor");
  // Distillation per row of student and teacher logits: soft_weight times the divergence (kind
  // forward / reverse / jsd) at temperature T plus hard_weight times the cross-entropy at T = 1.
  m.def(
      "distillation_forward(Tensor student, Tensor teacher, Tensor? target, int ignore_index, "
      "float temperature, str kind, float beta, float hard_weight, float soft_weight, "
      "str reduction, bool compute_grad) -> (Tensor loss, Tensor row_count, Tensor grad)");
  // Gradient of distillation_forward's loss with respect to the student logits.
  m.def(
      "distillation_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor? target, "
      "int ignore_index, float temperature, str kind, float beta, float hard_weight, "
      "float soft_weight, str reduction, Tensor row_count) -> Tensor");
  // Binary cross-entropy with logits of input [R, C] and same-shaped target.
  m.def(
      "bce_with_logits_forward(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "str reduction, bool compute_grad) -> (Tensor loss, Tensor grad)");
  // Gradient of bce_with_logits_forward's loss with respect to input.
  m.def(
      "bce_with_logits_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, str reduction) -> Tensor");
  // Fused linear + cross-entropy in chunks of tokens: the [N, V] logits never exist.
  m.def(
      "linear_cross_entropy_forward(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, int ignore_index, float label_smoothing, float z_loss, "
      "float softcap, str reduction, int chunk_size, bool compute_grad) -> (Tensor loss, "
      "Tensor lse, Tensor total_weight, Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Gradients of linear_cross_entropy_forward's per-row losses, recomputing chunk by chunk.
  m.def(
      "linear_cross_entropy_backward(Tensor grad_rows, Tensor input, Tensor linear_weight, "
      "Tensor? linear_bias, Tensor target, Tensor? weight, Tensor lse, int ignore_index, "
      "float label_smoothing, float z_loss, float softcap, int chunk_size) -> (Tensor grad_input, "
      "Tensor grad_weight, Tensor grad_bias)");
  // The float32_logits overloads, for torch.autocast: each chunk's logits in float32 before the
  // cross-entropy, as F.linear then F.cross_entropy (an autocast float32 op) compute them.
  m.def(
      "linear_cross_entropy_forward.float32_logits(Tensor input, Tensor linear_weight, "
      "Tensor? linear_bias, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, float z_loss, float softcap, str reduction, int chunk_size, "
      "bool compute_grad) -> (Tensor loss, Tensor lse, Tensor total_weight, Tensor grad_input, "
      "Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_cross_entropy_backward.float32_logits(Tensor grad_rows, Tensor input, "
      "Tensor linear_weight, Tensor? linear_bias, Tensor target, Tensor? weight, Tensor lse, "
      "int ignore_index, float label_smoothing, float z_loss, float softcap, int chunk_size) -> "
      "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // Per-row statistics [3, N] (lse, target logit, logit sum) of one rank's vocabulary slice.
  m.def(
      "vocab_parallel_cross_entropy_stats(Tensor logits, Tensor target, int vocab_start) "
      "-> Tensor");
  // Gradient of the vocabulary-parallel cross-entropy with respect to one rank's slice.
  m.def(
      "vocab_parallel_cross_entropy_backward(Tensor grad_rows, Tensor logits, Tensor target, "
      "Tensor lse, int vocab_start, int num_classes, int ignore_index, float label_smoothing, "
      "float z_loss) -> Tensor");

  // Per-row top-1 confidence, NLL and Brier score [3, N] (float64) and prediction [N] of logits
  // [N, C] with int64 labels [N], for the calibration metrics.
  m.def("calibration_row_stats(Tensor logits, Tensor labels) -> (Tensor stats, Tensor prediction)");

  // Filters logits [B, V]: bias, penalties, temperature, then top-k / top-p / min-p in the given
  // order.
  m.def(
      "filter_logits(Tensor logits, Tensor? logit_bias, Tensor temperature, Tensor top_k, "
      "Tensor top_p, Tensor min_p, str order, float filter_value, int min_tokens_to_keep, "
      // Penalties (penalty_ids: distinct ids per row, any outside [0, V) skipped; penalty_counts:
      // their output counts): all or none. Then the warpers (typical, epsilon, eta).
      "Tensor? penalty_ids=None, Tensor? penalty_counts=None, Tensor? repetition_penalty=None, "
      "Tensor? presence_penalty=None, Tensor? frequency_penalty=None, "
      "bool repetition_output_only=False, Tensor? typical_p=None, Tensor? epsilon_cutoff=None, "
      "Tensor? eta_cutoff=None) -> Tensor");
  // Samples one token per row of the filtered softmax, seeded per row (tokens and logprobs).
  m.def(
      "sample(Tensor logits, Tensor? logit_bias, Tensor temperature, Tensor top_k, Tensor top_p, "
      "Tensor min_p, str order, Tensor seed, bool per_row_seeds, "
      "Tensor? penalty_ids=None, Tensor? penalty_counts=None, Tensor? repetition_penalty=None, "
      "Tensor? presence_penalty=None, Tensor? frequency_penalty=None, "
      "bool repetition_output_only=False, Tensor? typical_p=None, Tensor? epsilon_cutoff=None, "
      "Tensor? eta_cutoff=None) -> (Tensor tokens, Tensor logprobs)");

  // Chain speculative sampling: verifies draft tokens [B, S] against the target's [B, S + 1, V]
  // (and the draft's [B, S, V]) probabilities or logits; tokens [B, S + 1] (-1 after the first
  // rejection), accepted and emitted draft counts [B].
  m.def(
      "speculative_sample(Tensor target, Tensor? draft, Tensor draft_token_ids, "
      "Tensor temperature, bool logits, Tensor seed, bool per_row_seeds) -> (Tensor tokens, "
      "Tensor accepted, Tensor emitted)");

  // One beam-search step: log_softmax(logits [B * K, V]) + beam_scores [B * K], and the best
  // num_candidates (beam, token) pairs of each batch item over its K x V (scores, beams, tokens).
  m.def(
      "beam_search_step(Tensor logits, Tensor beam_scores, int num_beams, int num_candidates) "
      "-> (Tensor scores, Tensor beam_indices, Tensor tokens)");

  // Log-probability of target[i] under softmax(logits[i] / temperature), the per-row lse and
  // (when return_entropy, else [0]) the entropy; ignored rows give 0.
  m.def(
      "token_logprobs_forward(Tensor logits, Tensor target, float temperature, int ignore_index, "
      "bool return_entropy) -> (Tensor logprob, Tensor entropy, Tensor lse)");
  // Gradient of grad_logprob . logprob + grad_entropy . entropy with respect to the logits.
  m.def(
      "token_logprobs_backward(Tensor? grad_logprob, Tensor? grad_entropy, Tensor logits, "
      "Tensor target, Tensor lse, Tensor entropy, float temperature, int ignore_index) -> Tensor");

  // softmax(logits[i] / temperature[i]) per row [B, V], in float32 (float64 for float64 logits).
  m.def("softmax(Tensor logits, Tensor temperature) -> Tensor");
  // Probabilities [B, V] (any scale) renormalized over what top-k / top-p / min-p keep of them.
  m.def(
      "probs_renorm(Tensor probs, Tensor top_k, Tensor top_p, Tensor min_p, str order) "
      "-> Tensor");
  // One token per row drawn from probabilities [B, V] after top-k / top-p / min-p, seeded per
  // row as sample.
  m.def(
      "probs_sample(Tensor probs, Tensor top_k, Tensor top_p, Tensor min_p, str order, "
      "Tensor seed, bool per_row_seeds) -> Tensor");
  // Per row of z = logits / temperature: the num_logprobs largest z [B, N] with their ids, the
  // log-sum-exp, and token's z and vLLM rank ([0] without token; log-probabilities: z - lse).
  m.def(
      "top_logprobs(Tensor logits, Tensor temperature, Tensor? token, int num_logprobs) -> "
      "(Tensor values, Tensor ids, Tensor lse, Tensor token_value, Tensor token_rank)");
}

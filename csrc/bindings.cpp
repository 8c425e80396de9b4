// Every op schema of logitops, one comment line each. Kernels register their CPU / CUDA impls
// beside their code (csrc/cpu, csrc/cuda); fake kernels and autograd live in logitops/ops.
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
  // Cross-entropy of logits [N, C] with int64 class-index targets [N]. Returns the loss (reduced
  // by `reduction`: 0 none, 1 mean, 2 sum; logits' dtype), the per-row log-sum-exp of the
  // (soft-capped) logits and the sum of target weights (accumulation dtype), and, when
  // compute_grad, the gradient of the loss for an upstream gradient of 1 ([0] otherwise).
  m.def(
      "cross_entropy_forward(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, float z_loss, float softcap, int reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor lse, Tensor total_weight, Tensor grad)");
  // Gradient of cross_entropy_forward's loss (and optionally its lse) with respect to logits.
  m.def(
      "cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor logits, Tensor target, "
      "Tensor? weight, Tensor lse, Tensor total_weight, int ignore_index, float label_smoothing, "
      "float z_loss, float softcap, int reduction) -> Tensor");

  // Cross-entropy of logits [N, C] with class-probability targets [N, C] (any floating dtype).
  // `mean` divides by N. Returns the loss, the per-row lse and, when compute_grad, the gradient
  // for an upstream gradient of 1 ([0] otherwise).
  m.def(
      "cross_entropy_probs_forward(Tensor logits, Tensor target, Tensor? weight, "
      "float label_smoothing, float z_loss, float softcap, int reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor lse, Tensor grad)");
  // Gradient of cross_entropy_probs_forward's loss (and optionally its lse) w.r.t. logits.
  m.def(
      "cross_entropy_probs_backward(Tensor grad_loss, Tensor? grad_lse, Tensor logits, "
      "Tensor target, Tensor? weight, Tensor lse, float label_smoothing, float z_loss, "
      "float softcap, int reduction) -> Tensor");

  // Distillation divergence per row of [N, V] logits between softmax(teacher / T) and
  // softmax(student / T): kind 0 forward KL(P_teacher || Q_student), 1 reverse KL, 2 generalized
  // JSD(beta) (beta 0 / 1 are the forward / reverse KL exactly). Rows whose target (optional
  // int64 [N]) equals ignore_index contribute 0 and are not counted. reduction: 0 none,
  // 1 batchmean (sum over the counted rows), 2 sum. Returns the loss (logits' dtype), the count
  // of rows (accumulation dtype, 0-dim) and, when compute_grad, the gradient with respect to the
  // student logits for an upstream gradient of 1 ([0] otherwise). The teacher gets no gradient.
  m.def(
      "kl_div_logits_forward(Tensor student, Tensor teacher, Tensor? target, int ignore_index, "
      "float temperature, int kind, float beta, int reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor row_count, Tensor grad)");
  // Gradient of kl_div_logits_forward's loss with respect to the student logits.
  m.def(
      "kl_div_logits_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor? target, "
      "int ignore_index, float temperature, int kind, float beta, int reduction, "
      "Tensor row_count) -> Tensor");

  // Binary cross-entropy with logits of input [R, C] and same-shaped target. weight and
  // pos_weight are in the accumulation dtype, expanded to [R, C] (stride-0 broadcast, never
  // materialized). Returns the loss (reduced by `reduction`) and, when compute_grad, the gradient
  // for an upstream gradient of 1 ([0] otherwise).
  m.def(
      "bce_with_logits_forward(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "int reduction, bool compute_grad) -> (Tensor loss, Tensor grad)");
  // Gradient of bce_with_logits_forward's loss with respect to input.
  m.def(
      "bce_with_logits_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, int reduction) -> Tensor");

  // Fused linear + cross-entropy of input [N, H], linear_weight [V, H] and optional linear_bias
  // [V] (the input's dtype) with class-index targets [N], in chunks of chunk_size tokens: the
  // [N, V] logits never exist. Options as cross_entropy_forward. Returns the loss, the per-row
  // lse and the total target weight, and, when compute_grad (scalar reductions only), the
  // gradients of the reduced loss for an upstream gradient of 1 with respect to input,
  // linear_weight and linear_bias (the input's dtype, accumulated in float32 for half precision;
  // [0] without a bias).
  m.def(
      "linear_cross_entropy_forward(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, int ignore_index, float label_smoothing, float z_loss, "
      "float softcap, int reduction, int chunk_size, bool compute_grad) -> (Tensor loss, "
      "Tensor lse, Tensor total_weight, Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Gradients of linear_cross_entropy_forward's per-row losses for per-row upstream gradients
  // grad_rows [N], recomputing the logits chunk by chunk from the saved lse [N].
  m.def(
      "linear_cross_entropy_backward(Tensor grad_rows, Tensor input, Tensor linear_weight, "
      "Tensor? linear_bias, Tensor target, Tensor? weight, Tensor lse, int ignore_index, "
      "float label_smoothing, float z_loss, float softcap, int chunk_size) -> (Tensor grad_input, "
      "Tensor grad_weight, Tensor grad_bias)");

  // Per-row statistics of one rank's slice [N, V_local] of vocabulary-parallel logits, whose
  // columns are the global classes [vocab_start, vocab_start + V_local): a [3, N] tensor in the
  // accumulation dtype holding the slice's log-sum-exp, the logit of target[i] (int64 global
  // class ids; 0 when that class is on another rank) and the sum of the slice's logits.
  m.def(
      "vocab_parallel_cross_entropy_stats(Tensor logits, Tensor target, int vocab_start) "
      "-> Tensor");
  // Gradient of the vocabulary-parallel cross-entropy over num_classes global classes with respect
  // to one rank's slice: grad_rows [N] is each row's upstream gradient and lse [N] the row's
  // global log-sum-exp (both accumulation dtype). Ignored rows get 0.
  m.def(
      "vocab_parallel_cross_entropy_backward(Tensor grad_rows, Tensor logits, Tensor target, "
      "Tensor lse, int vocab_start, int num_classes, int ignore_index, float label_smoothing, "
      "float z_loss) -> Tensor");

  // Filters logits [B, V]: adds logit_bias ([1 or B, V]), divides by temperature, then keeps the
  // tokens that top-k / top-p / min-p keep (per-row [B] parameters; order 0 hf, 1 vllm, 2 joint)
  // and writes filter_value elsewhere. Rows containing NaN come back as NaN.
  m.def(
      "filter_logits(Tensor logits, Tensor? logit_bias, Tensor temperature, Tensor top_k, "
      "Tensor top_p, Tensor min_p, int order, float filter_value, int min_tokens_to_keep) "
      "-> Tensor");
  // Samples one token per row from the filtered softmax (temperature <= 0: greedy argmax) with
  // noise keyed by seed[b] (and the row index unless per_row_seeds). Returns int64 token ids [B]
  // (-1 for a NaN row or one with nothing to sample) and their float32 log-probabilities.
  m.def(
      "sample(Tensor logits, Tensor? logit_bias, Tensor temperature, Tensor top_k, Tensor top_p, "
      "Tensor min_p, int order, Tensor seed, bool per_row_seeds) -> (Tensor tokens, "
      "Tensor logprobs)");
}

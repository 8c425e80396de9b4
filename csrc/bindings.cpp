// Every op schema of logitops, one comment line each. Kernels register their CPU / CUDA impls
// beside their code (csrc/cpu, csrc/cuda); fake kernels and autograd live in logitops/ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import logitops._C` loads this library, which runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
}

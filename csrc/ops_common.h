// Host-side helpers shared by the CPU and CUDA launchers: argument checks, layout, reductions.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace logitops {

// fp32 for bf16 / fp16 / fp32 logits, fp64 for fp64 logits.
at::ScalarType accumulation_dtype(at::ScalarType logits_dtype);

// The kernels read rows with any stride but need unit stride along the vocabulary.
at::Tensor rows_with_unit_stride(const at::Tensor& logits);

// Checks that direct callers of torch.ops.logitops.cross_entropy_* get instead of a crash.
void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& target,
                                const std::optional<at::Tensor>& weight, int64_t reduction);

// Checks that direct callers of torch.ops.logitops.bce_with_logits_* get instead of a crash.
void check_bce_inputs(const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& pos_weight, int64_t reduction);

// Checks of the arguments filter_logits and sample share (logits [B, V], logit_bias [1 or B, V]
// in float32 (float64 for float64 logits), per-row float64 temperature / top_p / min_p and int64
// top_k, order code).
void check_sampling_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                           const at::Tensor& temperature, const at::Tensor& top_k,
                           const at::Tensor& top_p, const at::Tensor& min_p, int64_t order);

// Checks of the arguments kl_div_logits_forward and kl_div_logits_backward share (student and
// teacher [N, V] of one floating dtype and device, optional int64 target [N], temperature > 0,
// kind, JSD beta in (0, 1), reduction code 0 / 1 / 2).
void check_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& target, double temperature, int64_t kind,
                          double beta, int64_t reduction);

// Checks of the arguments the vocab_parallel_cross_entropy_* ops share: logits [N, V_local]
// floating, int64 target [N] on the logits' device, 0 <= vocab_start, and (for the backward, with
// num_classes >= 0) vocab_start + V_local <= num_classes; `op` names the op in the message.
void check_vocab_parallel_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 int64_t vocab_start, int64_t num_classes, const char* op);

// Checks that a per-row operand of a backward op is [rows] of the accumulation dtype on the
// logits' device, and returns it contiguous.
at::Tensor per_row_operand(const at::Tensor& t, const at::Tensor& logits, const char* name,
                           const char* op);

// at::empty for CPU outputs, except that large ones are backed by transparent huge pages: a fresh
// [N, C] gradient otherwise costs one page fault per 4 KiB, which on the machines we measured
// takes longer than computing it.
at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same for class-probability targets: target [N, C] floating, of the logits' dtype.
void check_cross_entropy_probs_inputs(const at::Tensor& logits, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, int64_t reduction);

// Upstream gradient of each row's loss, in the accumulation dtype: grad_loss itself for
// reduction "none", broadcast for "sum", divided by the total weight for "mean".
at::Tensor upstream_per_row(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                            int64_t reduction, int64_t num_rows, at::ScalarType acc_dtype);

// The upstream gradient of bce_with_logits_backward as a [rows, cols] operand in the
// accumulation dtype: grad_loss itself (unit column stride) for reduction "none", else the scalar
// (divided by rows * cols for "mean") expanded with stride 0. Never synchronizes.
at::Tensor bce_upstream(const at::Tensor& grad_loss, int64_t rows, int64_t cols, int64_t reduction,
                        at::ScalarType acc_dtype);

// Turns per-row losses (accumulation dtype) into the op's output in the logits' dtype.
at::Tensor reduce_row_loss(const at::Tensor& row_loss, const at::Tensor& total_weight,
                           int64_t reduction, at::ScalarType out_dtype);

}  // namespace logitops

// The ops' mode arguments: the enums the kernels branch on and, beside each, the one table of its
// names. The schemas take the names (`str reduction`, `str kind`, `str order`, spelled as the
// public functions and torch's losses spell them); csrc/host/modes.cpp parses them. Torch-free:
// the kernels include it.
#pragma once

#include <cstdint>

namespace logitops {

// How per-row losses become the op's loss: the rows themselves, their mean, their sum.
enum Reduction : int64_t { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };
inline constexpr const char* kReductionNames[] = {"none", "mean", "sum"};
// The distillation ops' mean is over the counted rows: kl_div's "batchmean".
inline constexpr const char* kDistillationReductionNames[] = {"none", "batchmean", "sum"};

// The divergence between the teacher's P and the student's Q: KL(P || Q), KL(Q || P), JSD(beta).
enum DivergenceKind : int64_t { kForwardKl = 0, kReverseKl = 1, kJsd = 2 };
inline constexpr const char* kDivergenceKindNames[] = {"forward", "reverse", "jsd"};

// How top-k, top-p and min-p combine: each on the previous result (transformers' warper chain),
// top-k then top-p and min-p on the top-k set (vLLM), or all on the full distribution (joint).
enum FilterOrder : int64_t { kOrderHf = 0, kOrderVllm = 1, kOrderJoint = 2 };
inline constexpr const char* kFilterOrderNames[] = {"hf", "vllm", "joint"};

}  // namespace logitops

// The per-row statistics of the calibration metrics, shared by the CPU and CUDA kernels of
// calibration_row_stats. Torch-free: nvcc compiles it without ATen, and the CPU tests exercise the
// formulas the GPU runs.
//
// One read of a row of logits z (C classes, label y) gives, with p = softmax(z):
//   confidence = max_j p_j = 1 / sum_j exp(z_j - max)          (the top-1 probability)
//   prediction = the first j with z_j = max                     (torch.argmax's choice)
//   nll        = lse - z_y = (max - z_y) + log(sum_j exp(z_j - max))   (log1p when z_y = max)
//   brier      = sum_j (p_j - [j == y])^2 = (1 - p_y)^2 + sum_{j != y} p_j^2
// The Brier score is formed from sums over the classes other than y, 1 - p_y = S_other / S, so a
// confident correct row (p_y near 1) keeps its small score to full relative precision instead of
// cancelling 1 - 2 p_y + sum p^2.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.h"

namespace logitops {

// Running state over part of a row: sums relative to the running max.
template <typename acc_t>
struct CalibrationRowState {
  acc_t max;        // max of the logits pushed; -inf when empty or all -inf; NaN after a NaN
  acc_t sum;        // sum_j exp(z_j - max)
  acc_t other_sum;  // the same over j != y
  acc_t other_sq;   // sum_{j != y} exp(2 (z_j - max))
  int64_t arg;      // first index where z_j == max; kNoIndex when empty
};

constexpr int64_t kCalibrationNoIndex = std::numeric_limits<int64_t>::max();

template <typename acc_t>
LOGITOPS_HD CalibrationRowState<acc_t> calibration_state_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0), acc_t(0), acc_t(0),
          kCalibrationNoIndex};
}

// exp(a - m) for a <= m, 0 when a is -inf (also when m is, instead of exp(NaN)).
template <typename acc_t>
LOGITOPS_HD acc_t calibration_scale(acc_t a, acc_t m) {
  return a == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(a - m);
}

// Pushes logit z of class j (other: j != y), in any order of j. One exp per logit, and a rescale
// of the sums only when the max grows. A NaN logit makes the state NaN for good; +inf makes every
// probability undefined, so it does too (the caller reports both).
template <typename acc_t>
LOGITOPS_HD void calibration_push(CalibrationRowState<acc_t>& s, acc_t z, int64_t j, bool other) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  if (s.max != s.max) return;
  if (z != z || z == kInf) {
    s.max = std::numeric_limits<acc_t>::quiet_NaN();
    return;
  }
  if (z > s.max) {
    const acc_t f = calibration_scale(s.max, z);
    s.sum *= f;
    s.other_sum *= f;
    s.other_sq *= f * f;
    s.max = z;
    s.arg = j;
  } else if (z == s.max && j < s.arg) {
    s.arg = j;  // the first index among equal maxima, whatever order the logits come in (and
                // the first index of a row of -inf only, as torch's argmax)
  }
  const acc_t e = calibration_scale(z, s.max);
  s.sum += e;
  if (other) {
    s.other_sum += e;
    s.other_sq += e * e;
  }
}

// Merges the states of two disjoint parts of a row (threads of a block, in any order: the first
// index among equal maxima wins, as in one left-to-right sweep).
template <typename acc_t>
LOGITOPS_HD CalibrationRowState<acc_t> calibration_merge(const CalibrationRowState<acc_t>& a,
                                                         const CalibrationRowState<acc_t>& b) {
  if (a.max != a.max) return a;
  if (b.max != b.max) return b;
  CalibrationRowState<acc_t> out;
  out.max = a.max > b.max ? a.max : b.max;
  if (a.max > b.max) {
    out.arg = a.arg;
  } else if (b.max > a.max) {
    out.arg = b.arg;
  } else {
    out.arg = a.arg < b.arg ? a.arg : b.arg;
  }
  const acc_t fa = calibration_scale(a.max, out.max);
  const acc_t fb = calibration_scale(b.max, out.max);
  out.sum = a.sum * fa + b.sum * fb;
  out.other_sum = a.other_sum * fa + b.other_sum * fb;
  out.other_sq = a.other_sq * (fa * fa) + b.other_sq * (fb * fb);
  return out;
}

// What one row gives the metrics. A NaN or +inf logit, or a row of -inf only, leaves confidence,
// nll and brier NaN (prediction 0 for the all -inf row, -1 after a NaN / +inf); an out-of-range
// label leaves nll and brier NaN.
template <typename acc_t>
struct CalibrationRowStats {
  acc_t confidence;
  acc_t nll;
  acc_t brier;
  int64_t prediction;
};

// label_logit is z_y (read once more, after the sweep), label_ok whether 0 <= y < C.
template <typename acc_t>
LOGITOPS_HD CalibrationRowStats<acc_t> calibration_finalize(const CalibrationRowState<acc_t>& s,
                                                            acc_t label_logit, bool label_ok) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  if (s.max != s.max) return {nan, nan, nan, int64_t(-1)};
  const int64_t prediction = s.arg == kCalibrationNoIndex ? int64_t(0) : s.arg;
  if (!(s.max > -kInf)) return {nan, nan, nan, prediction};
  const acc_t inv = acc_t(1) / s.sum;
  const acc_t confidence = inv;  // exp(max - max) / sum
  if (!label_ok) return {confidence, nan, nan, prediction};
  // lse - z_y with max and log(sum) apart (+inf for a label logit of -inf). When the label holds
  // the max, sum = 1 + other_sum and log1p keeps a confident row's tiny NLL (log(sum) would round
  // it to 0 in float32 below 6e-8).
  const acc_t log_sum = label_logit == s.max ? std::log1p(s.other_sum) : std::log(s.sum);
  const acc_t nll = (s.max - label_logit) + log_sum;
  const acc_t miss = s.other_sum * inv;  // 1 - p_y
  const acc_t brier = miss * miss + s.other_sq * (inv * inv);
  return {confidence, nll, brier, prediction};
}

}  // namespace logitops

// Beam-search step math shared by csrc/cpu/beam_search.cpp and csrc/cuda/beam_search_kernels.cuh.
// Torch-free.
//
// A candidate is (beam b, token t) of one batch item, its flattened index b * V + t, and its score
// log_softmax(logits[b])[t] + beam_scores[b] in acc_t. Candidates are ranked by score, highest
// first, NaN after every number; equal scores by flattened index, lowest first. That is one total
// order, so the selection is deterministic whatever the order of the reduction.
//
// The log-softmax's per-row constant does not change the order within a row, so a row is
// streamed once: its online log-sum-exp and its best candidates by raw logit are kept side by
// side, and scores are formed only for those few (beam_search_merge). Rows whose scores are all
// equal (non-finite log-sum-exp or beam score: beam_row_constant) offer their first tokens.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "host_device.h"
#include "logit_math.h"

namespace logitops {

// Most candidates one step selects per batch item (2 x 32 beams): the kernels keep that many per
// row in registers / local memory.
constexpr int64_t kMaxBeamCandidates = 64;

template <typename acc_t>
struct BeamCandidate {
  acc_t value;    // a raw logit (per-row lists) or a score (merged lists)
  int64_t index;  // token id (per-row lists) or flattened beam * V + token (merged lists)
};

// a ranks before b: higher value first, NaN after every number, then lower index first.
template <typename acc_t>
LOGITOPS_HD bool beam_ranks_before(acc_t a_value, int64_t a_index, acc_t b_value, int64_t b_index) {
  const bool a_nan = a_value != a_value, b_nan = b_value != b_value;
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a_value != b_value) return a_value > b_value;
  return a_index < b_index;
}

template <typename acc_t>
LOGITOPS_HD bool beam_ranks_before(const BeamCandidate<acc_t>& a, const BeamCandidate<acc_t>& b) {
  return beam_ranks_before(a.value, a.index, b.value, b.index);
}

// The row's log-softmax as (max, log of the shifted sum): log_prob = (x - max) - log_sum, the
// order of operations of torch.log_softmax.
template <typename acc_t>
struct BeamRow {
  acc_t max;
  acc_t log_sum;
  acc_t beam_score;
};

template <typename acc_t>
LOGITOPS_HD BeamRow<acc_t> beam_row(LseState<acc_t> state, acc_t beam_score) {
  return {state.max, std::log(state.sum), beam_score};
}

// Whether every candidate of the row has the same score, returned in *score: a row of all -inf
// logits gives -inf (not log_softmax's NaN), a row with NaN or +inf gives NaN (as log_softmax),
// and so does a NaN or +inf beam score; a -inf beam score gives -inf. Such rows offer their
// lowest token ids.
template <typename acc_t>
LOGITOPS_HD bool beam_row_constant(const BeamRow<acc_t>& row, acc_t* score) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const bool lse_finite = row.max > -kInf && row.max < kInf && row.log_sum == row.log_sum;
  const bool beam_finite = row.beam_score > -kInf && row.beam_score < kInf;
  if (lse_finite && beam_finite) return false;
  const bool nan = row.max != row.max || row.max == kInf || row.log_sum != row.log_sum ||
                   !(row.beam_score < kInf);  // NaN or +inf
  *score = nan ? std::numeric_limits<acc_t>::quiet_NaN() : -kInf;
  return true;
}

// Score of a kept logit of a row that is not constant.
template <typename acc_t>
LOGITOPS_HD acc_t beam_score_of(const BeamRow<acc_t>& row, acc_t logit) {
  return ((logit - row.max) - row.log_sum) + row.beam_score;
}

// Inserts c into list[0, *size) (sorted by beam_ranks_before, capacity `capacity`) if it ranks
// among the best `capacity`; the worst entry falls off a full list.
template <typename acc_t>
LOGITOPS_HD void beam_insert(BeamCandidate<acc_t>* list, int* size, int capacity,
                             BeamCandidate<acc_t> c) {
  // (*size <= capacity always; the clamp shows it to the compiler's bounds analysis.)
  int pos = *size < capacity ? *size : capacity;
  if (pos == capacity) {
    if (!beam_ranks_before(c, list[capacity - 1])) return;
    --pos;
  } else {
    ++*size;
  }
  while (pos > 0 && beam_ranks_before(c, list[pos - 1])) {
    list[pos] = list[pos - 1];
    --pos;
  }
  list[pos] = c;
}

}  // namespace logitops

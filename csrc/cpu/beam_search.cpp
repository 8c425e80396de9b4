// One beam-search step on the CPU: log_softmax of each row, plus its running beam score, and the
// best num_candidates (beam, token) pairs of each batch item (csrc/common/beam_search_math.h has
// the order). Each row is read once: its online log-sum-exp and its best logits are kept side by
// side, then each batch item ranks the few scored candidates of its beams.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/beam_search_math.h"
#include "../host/beam_search_checks.h"
#include "../host/operands.h"

namespace logitops {
namespace {

// The row's online log-sum-exp and its best `capacity` logits (by beam_ranks_before), scored.
template <typename scalar_t, typename acc_t>
void scan_row(const scalar_t* x, int64_t n, acc_t beam_score, int capacity,
              BeamCandidate<acc_t>* out) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  // One running sum over the whole row: in double, or a 128k-token fp32 row would lose ~1e-5.
  acc_t max = -kInf;
  double sum = 0;
  bool nan = false;
  int size = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(x[j]);
    if (v <= max) {
      if (max > -kInf && max < kInf) sum += double(std::exp(v - max));
    } else if (v != v) {
      nan = true;
    } else {
      // A new max (-inf rows never get here: -inf <= -inf). exp(-inf) = 0 for the first one.
      sum = (max > -kInf ? sum * double(std::exp(max - v)) : 0.0) + 1.0;
      max = v;
    }
    // Scanned in index order, so an equal logit never displaces an earlier one.
    if (size == capacity && !(v > out[capacity - 1].value)) continue;
    beam_insert(out, &size, capacity, BeamCandidate<acc_t>{v, j});
  }
  if (nan) max = std::numeric_limits<acc_t>::quiet_NaN();
  const BeamRow<acc_t> row = beam_row(LseState<acc_t>{max, static_cast<acc_t>(sum)}, beam_score);
  acc_t constant;
  if (beam_row_constant(row, &constant)) {
    for (int k = 0; k < capacity; ++k) out[k] = {constant, k};
    return;
  }
  for (int k = 0; k < capacity; ++k) out[k].value = beam_score_of(row, out[k].value);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> beam_search_step_cpu(const at::Tensor& logits,
                                                                    const at::Tensor& beam_scores,
                                                                    int64_t num_beams,
                                                                    int64_t num_candidates) {
  const BeamSearchShape shape =
      check_beam_search_inputs(logits, beam_scores, num_beams, num_candidates);
  const at::Tensor x = rows_with_unit_stride(logits);
  const at::Tensor beam = beam_scores.contiguous();
  const auto acc = accumulation_dtype(logits.scalar_type());
  const int64_t rows = logits.size(0), n = shape.vocab, width = shape.width;
  const int per_row = static_cast<int>(shape.per_row);
  at::Tensor scores = at::empty({shape.batch, width}, logits.options().dtype(acc));
  at::Tensor beams = at::empty({shape.batch, width}, logits.options().dtype(at::kLong));
  at::Tensor tokens = at::empty({shape.batch, width}, logits.options().dtype(at::kLong));
  if (rows == 0) return {scores, beams, tokens};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "beam_search_step_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        std::vector<BeamCandidate<acc_t>> kept(size_t(rows) * per_row);
        const scalar_t* base = x.const_data_ptr<scalar_t>();
        const acc_t* beam_score = beam.const_data_ptr<acc_t>();
        const int64_t stride = x.stride(0);
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            scan_row(base + r * stride, n, beam_score[r], per_row, kept.data() + r * per_row);
          }
        });
        acc_t* score_out = scores.mutable_data_ptr<acc_t>();
        int64_t* beam_out = beams.mutable_data_ptr<int64_t>();
        int64_t* token_out = tokens.mutable_data_ptr<int64_t>();
        at::parallel_for(0, shape.batch, 1, [&](int64_t begin, int64_t end) {
          std::vector<BeamCandidate<acc_t>> merged(size_t(num_beams) * per_row);
          for (int64_t b = begin; b < end; ++b) {
            for (int64_t k = 0; k < num_beams; ++k) {
              for (int c = 0; c < per_row; ++c) {
                const BeamCandidate<acc_t>& kc = kept[(b * num_beams + k) * per_row + c];
                merged[k * per_row + c] = {kc.value, k * n + kc.index};
              }
            }
            std::partial_sort(merged.begin(), merged.begin() + width, merged.end(),
                              [](const BeamCandidate<acc_t>& p, const BeamCandidate<acc_t>& q) {
                                return beam_ranks_before(p, q);
                              });
            for (int64_t c = 0; c < width; ++c) {
              score_out[b * width + c] = merged[c].value;
              beam_out[b * width + c] = merged[c].index / n;
              token_out[b * width + c] = merged[c].index % n;
            }
          }
        });
      });
  return {scores, beams, tokens};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) { m.impl("beam_search_step", &beam_search_step_cpu); }

}  // namespace logitops

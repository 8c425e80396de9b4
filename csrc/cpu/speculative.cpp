// Chain speculative sampling on the CPU (speculative_math.h has the algorithm): one row of the
// batch at a time, its decisions and sums in double.
//
// With probabilities, a row reads the 2S gathered probabilities of its drafts and the one or two
// rows it resamples from. With logits, every position's log-sum-exp is needed for the acceptance
// counts, so every row is read once, and the resampled rows once more (from cache).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../common/speculative_math.h"
#include "../host/speculative_checks.h"

namespace logitops {
namespace {

// One distribution of a row: probabilities as given, or softmax(logits / temperature) with the
// scaled logit in acc_t (scaled_logit, as sample() computes it) and the rest in double.
template <typename scalar_t>
struct Distribution {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;  // [V]
  bool logits;
  acc_t temperature;
  bool divide;
  double lse;  // logits only

  acc_t z(int64_t j) const {
    return scaled_logit(static_cast<acc_t>(x[j]), static_cast<const acc_t*>(nullptr), j,
                        temperature, divide);
  }
  double prob(int64_t j) const {
    if (!logits) return double(static_cast<acc_t>(x[j]));
    return std::exp(double(z(j)) - lse);
  }
};

// A logits row's log-sum-exp of z (or, greedy, the first index of its max), and whether it can
// be used: no NaN, and a finite log-sum-exp (sampling) or a finite-or-+inf max (greedy).
struct RowScan {
  double lse;
  int64_t argmax;
  bool valid;
};

template <typename scalar_t>
RowScan scan_logits(const Distribution<scalar_t>& d, int64_t n, bool greedy) {
  LseState<double> s = lse_empty<double>();
  double best = -std::numeric_limits<double>::infinity();
  int64_t argmax = -1;
  bool nan = false, pos_inf = false;
  for (int64_t j = 0; j < n; ++j) {
    const double v = double(d.z(j));
    if (v != v) {
      nan = true;
      continue;
    }
    if (v == std::numeric_limits<double>::infinity()) pos_inf = true;
    if (v > best) {
      best = v;
      argmax = j;
    }
    lse_push_finite(s, v);
  }
  if (greedy) return {0.0, argmax, !nan && argmax >= 0};
  const double lse = s.max + std::log(s.sum);
  const bool finite = !nan && !pos_inf && s.max > -std::numeric_limits<double>::infinity();
  return {lse, argmax, finite};
}

// The race over r_j = max(p_j - q_j, 0) of one position (q = 0 without a draft row: the bonus
// token, or the fallback when the residual is empty). q_j is the draft row's probability, or
// the point mass on point_token when the drafts came without probabilities.
struct RaceResult {
  int64_t token;  // -1: no positive mass
  bool nan;
};

template <typename scalar_t>
RaceResult residual_race(const Distribution<scalar_t>& p, const Distribution<scalar_t>* q,
                         bool point_draft, int64_t point_token, int64_t n, uint64_t key,
                         uint64_t stream, int64_t position) {
  double best_score = 0;
  int64_t best = -1;
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    const double pj = p.prob(j);
    const double qj = q != nullptr ? q->prob(j) : (point_draft && j == point_token ? 1.0 : 0.0);
    if (pj != pj || qj != qj) {
      nan = true;
      continue;
    }
    const double r = residual_mass(pj, qj);
    if (!(r > 0)) continue;
    const double score = residual_score(
        r, residual_noise(key, stream, static_cast<uint64_t>(position), static_cast<uint64_t>(j)));
    if (best < 0 || race_beats(score, j, best_score, best)) {
      best_score = score;
      best = j;
    }
  }
  return {best, nan};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_sample_cpu(
    const at::Tensor& target_in, const std::optional<at::Tensor>& draft_in,
    const at::Tensor& draft_token_ids, const at::Tensor& temperature, bool logits,
    const at::Tensor& seeds, bool per_row_seeds) {
  check_speculative_inputs(target_in, draft_in, draft_token_ids, temperature, seeds);
  const at::Tensor target = target_in.contiguous();
  const at::Tensor draft = draft_in.has_value() ? draft_in->contiguous() : at::Tensor();
  const at::Tensor ids = draft_token_ids.contiguous();
  const at::Tensor temp = temperature.contiguous();
  const at::Tensor seed = seeds.contiguous();
  const int64_t rows = target.size(0), drafts = target.size(1) - 1, n = target.size(2);
  const auto index_options = target.options().dtype(at::kLong);
  at::Tensor tokens = at::empty({rows, drafts + 1}, index_options);
  at::Tensor accepted = at::empty({rows}, index_options);
  at::Tensor emitted = at::empty({rows}, index_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, target.scalar_type(), "speculative_sample_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* t_base = target.const_data_ptr<scalar_t>();
        const scalar_t* d_base = draft.defined() ? draft.const_data_ptr<scalar_t>() : nullptr;
        const int64_t* id_base = ids.const_data_ptr<int64_t>();
        const double* temps = temp.const_data_ptr<double>();
        const int64_t* s = seed.const_data_ptr<int64_t>();
        int64_t* out_tokens = tokens.mutable_data_ptr<int64_t>();
        int64_t* out_accepted = accepted.mutable_data_ptr<int64_t>();
        int64_t* out_emitted = emitted.mutable_data_ptr<int64_t>();
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          std::vector<RowScan> target_scan(drafts + 1), draft_scan(drafts);
          for (int64_t b = begin; b < end; ++b) {
            int64_t* out = out_tokens + b * (drafts + 1);
            // Documented: an invalid row gives -1 everywhere and counts of 0.
            for (int64_t i = 0; i <= drafts; ++i) out[i] = -1;
            out_accepted[b] = 0;
            out_emitted[b] = 0;
            const bool greedy = logits && !(temps[b] > 0);
            const acc_t t = static_cast<acc_t>(greedy || !logits ? 1.0 : temps[b]);
            const bool divide = t != acc_t(1);
            const int64_t* row_ids = id_base + b * drafts;
            const scalar_t* t_row = t_base + b * (drafts + 1) * n;
            const scalar_t* d_row = d_base != nullptr ? d_base + b * drafts * n : nullptr;
            const uint64_t key = static_cast<uint64_t>(s[b]);
            const uint64_t stream = per_row_seeds ? 0 : static_cast<uint64_t>(b);
            auto target_at = [&](int64_t i) {
              return Distribution<scalar_t>{t_row + i * n, logits, t, divide,
                                            logits ? target_scan[i].lse : 0.0};
            };
            auto draft_at = [&](int64_t i) {
              return Distribution<scalar_t>{d_row + i * n, logits, t, divide,
                                            logits ? draft_scan[i].lse : 0.0};
            };

            bool valid = true;
            if (logits) {
              for (int64_t i = 0; i <= drafts; ++i) {
                target_scan[i] = scan_logits(target_at(i), n, greedy);
                valid &= target_scan[i].valid;
              }
              if (!greedy && d_row != nullptr) {
                for (int64_t i = 0; i < drafts; ++i) {
                  draft_scan[i] = scan_logits(draft_at(i), n, false);
                  valid &= draft_scan[i].valid;
                }
              }
            }
            if (!valid) continue;

            // Every position is tested (FlashInfer's accepted count); the first rejection is
            // where the chain stops.
            int64_t pos = drafts, num_accepted = 0;
            for (int64_t i = 0; i < drafts && valid; ++i) {
              const int64_t d = row_ids[i];
              const bool in_range = d >= 0 && d < n;
              bool ok = false;
              if (greedy) {
                ok = in_range && d == target_scan[i].argmax;
              } else if (in_range) {
                const double pt = target_at(i).prob(d);
                const double pd = d_row != nullptr ? draft_at(i).prob(d) : 1.0;
                if (pt != pt || pd != pd) {
                  valid = false;
                  break;
                }
                ok = draft_accepted(acceptance_uniform(key, stream, static_cast<uint64_t>(i)), pt,
                                    pd);
              }
              num_accepted += ok;
              if (!ok && pos == drafts) pos = i;
            }
            if (!valid) continue;

            int64_t token;
            if (greedy) {
              token = target_scan[pos].argmax;
            } else {
              const auto p = target_at(pos);
              const bool has_draft = pos < drafts;
              const Distribution<scalar_t> q =
                  has_draft && d_row != nullptr ? draft_at(pos) : Distribution<scalar_t>{};
              RaceResult r = residual_race(p, has_draft && d_row != nullptr ? &q : nullptr,
                                           has_draft && d_row == nullptr,
                                           has_draft ? row_ids[pos] : -1, n, key, stream, pos);
              if (!r.nan && r.token < 0 && has_draft) {
                // Nothing left of p - q (p <= q everywhere): draw from p itself.
                r = residual_race(p, static_cast<const Distribution<scalar_t>*>(nullptr), false, -1,
                                  n, key, stream, pos);
              }
              if (r.nan) continue;
              token = r.token;
            }
            for (int64_t i = 0; i < pos; ++i) out[i] = row_ids[i];
            out[pos] = token;
            out_accepted[b] = num_accepted;
            out_emitted[b] = pos;
          }
        });
      });
  return {tokens, accepted, emitted};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) { m.impl("speculative_sample", &speculative_sample_cpu); }

}  // namespace logitops

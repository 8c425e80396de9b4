// Logit filtering (bias, penalties, temperature, top-k, top-p, min-p) and seeded sampling on the
// CPU.
//
// Every filter is a threshold on the row's scaled logits z: a token is kept when z >= tau. Top-k's
// tau is the k-th largest value (ties kept, as HF); min-p's is the smallest z with
// exp(z - max) >= min_p; top-p's comes from the few tokens that can hold the top p of the mass,
// found with a histogram of z and sorted: no sort of the vocabulary. Sampling races the kept
// tokens with Exp(1) noise from a counter-based generator keyed per row.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/sampling_math.h"
#include "../host/checks.h"
#include "../host/modes.h"
#include "vec_utils.h"

namespace logitops {
namespace {

// Top-p's histogram: 1024 buckets of 1/32 nat span probability ratios down to e^-32 (the rest
// share one more bucket).
constexpr int kHistogramBuckets = 1024;
constexpr double kBucketWidth = 1.0 / 32;

template <typename acc_t>
acc_t kth_largest(const acc_t* z, int64_t n, int64_t k, std::vector<acc_t>& scratch) {
  if (k <= 256) {
    // Most values fail the first comparison against the heap's minimum: one pass, little work.
    std::priority_queue<acc_t, std::vector<acc_t>, std::greater<acc_t>> heap;
    for (int64_t j = 0; j < n; ++j) {
      if (int64_t(heap.size()) < k) {
        heap.push(z[j]);
      } else if (z[j] > heap.top()) {
        heap.pop();
        heap.push(z[j]);
      }
    }
    return heap.top();
  }
  scratch.assign(z, z + n);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                   std::greater<acc_t>());
  return scratch[k - 1];
}

// Smallest z with exp(z - row_max) >= min_p (min_p rounded to acc_t), +inf when none.
template <typename acc_t>
acc_t min_p_threshold(const acc_t* z, int64_t n, double row_max, double min_p) {
  const double cut = min_p_cut<acc_t>(min_p);
  acc_t tau = std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    if (z[j] < tau && min_p_keeps(std::exp(double(z[j]) - row_max), cut)) tau = z[j];
  }
  return tau;
}

// Top-p over the tokens with z >= lower, renormalized over them: removes each group of equal
// values whose tail (the mass of the candidates <= it, itself included) is <= (1 - p) times the
// candidates' total (transformers: remove where the ascending cumulative probability is
// <= 1 - p; see top_p_removal_mass). Returns the smallest kept value.
//
// A histogram of the mass by distance from the row's max finds the one bucket the cut falls in:
// tokens in buckets above it are kept, below it removed, and only that bucket's tokens are
// sorted, walking up from the mass of the buckets below it.
template <typename acc_t>
acc_t top_p_threshold(const acc_t* z, int64_t n, double row_max, double p, acc_t lower,
                      std::vector<acc_t>& scratch) {
  std::vector<double> bucket_mass(kHistogramBuckets + 1, 0.0);
  auto bucket_of = [&](double gap) {
    return gap < kHistogramBuckets * kBucketWidth ? int(gap * (1.0 / kBucketWidth))
                                                  : kHistogramBuckets;
  };
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (!(z[j] >= lower)) continue;
    const double gap = row_max - double(z[j]);
    const double mass = std::exp(-gap);
    total += mass;
    bucket_mass[bucket_of(gap)] += mass;
  }
  const double removal = top_p_removal_mass<acc_t>(p, total);
  if (!top_p_cuts_inside(removal, total)) return acc_t(row_max);
  // The lowest bucket whose mass, added to the mass below it, exceeds the removal mass (bucket 0,
  // which holds the max, if rounding of the bucket sums leaves none).
  double below = 0;
  int cut_bucket = 0;
  for (int b = kHistogramBuckets; b >= 0; --b) {
    if (top_p_keeps(below + bucket_mass[b], removal)) {
      cut_bucket = b;
      break;
    }
    below += bucket_mass[b];
  }
  if (cut_bucket == 0) {
    below = 0;
    for (int b = kHistogramBuckets; b > 0; --b) below += bucket_mass[b];
  }
  scratch.clear();
  for (int64_t j = 0; j < n; ++j) {
    if (z[j] >= lower && bucket_of(row_max - double(z[j])) == cut_bucket) scratch.push_back(z[j]);
  }
  std::sort(scratch.begin(), scratch.end());
  acc_t tau = scratch.empty() ? acc_t(row_max) : scratch.back();
  for (size_t i = 0; i < scratch.size();) {
    const acc_t value = scratch[i];
    const double mass = std::exp(double(value) - row_max);
    for (; i < scratch.size() && scratch[i] == value; ++i) below += mass;
    if (top_p_keeps(below, removal)) {
      tau = value;
      break;
    }
  }
  return tau;
}

// The row's keep threshold (sampling_math.h's row_threshold over this file's searches). z must be
// NaN-free and row_max its max.
template <typename acc_t>
acc_t keep_threshold(const acc_t* z, int64_t n, double row_max, const RowFilter& f,
                     FilterOrder order, int64_t min_tokens_to_keep, std::vector<acc_t>& scratch) {
  return row_threshold(
      n, acc_t(row_max), f, order, min_tokens_to_keep,
      [&](int64_t k) { return kth_largest(z, n, k, scratch); },
      [&](double min_p) { return min_p_threshold(z, n, row_max, min_p); },
      [&](double top_p, acc_t lower) {
        return top_p_threshold(z, n, row_max, top_p, lower, scratch);
      });
}

// Typical's distance cut (warper_range's distance_cut): an MSB-first radix search over the
// order-preserving bits of the distances (non-negative, so their IEEE bits are ordered), on a
// compacted copy of the range's (distance, mass) pairs that shrinks to one 8-bit digit's bucket
// per pass: no sort.
template <typename acc_t>
acc_t distance_cut(const acc_t* z, int64_t n, double row_max, const KeepRange<acc_t>& r, acc_t c,
                   double target) {
  using key_t = std::conditional_t<sizeof(acc_t) == 8, uint64_t, uint32_t>;
  constexpr int kKeyBits = int(sizeof(key_t)) * 8;
  std::vector<std::pair<key_t, double>> cand;
  for (int64_t j = 0; j < n; ++j) {
    if (!in_range(z[j], r)) continue;
    const acc_t d = typical_distance(z[j], c) + acc_t(0);  // + 0: -0 becomes +0
    key_t key;
    std::memcpy(&key, &d, sizeof(key));
    cand.emplace_back(key, std::exp(double(z[j]) - row_max));
  }
  double below = 0;  // mass of the distances under the current bucket range
  key_t prefix = 0;
  for (int shift = kKeyBits - 8; shift >= 0; shift -= 8) {
    double mass[256] = {};
    bool nonempty[256] = {};
    for (const auto& [key, m] : cand) {
      const int digit = int((key >> shift) & 0xff);
      mass[digit] += m;
      nonempty[digit] = true;
    }
    int chosen = -1, last = -1;
    double chosen_below = 0, last_below = 0, run = below;
    for (int digit = 0; digit < 256; ++digit) {
      if (!nonempty[digit]) continue;
      last = digit;
      last_below = run;
      if (run + mass[digit] >= target) {
        chosen = digit;
        chosen_below = run;
        break;
      }
      run += mass[digit];
    }
    if (chosen < 0) {
      // Nothing reaches the target: over the whole range, keep everything (transformers clamps
      // to the last position); inside a bucket only rounding of the re-summed masses does this.
      if (shift == kKeyBits - 8) return std::numeric_limits<acc_t>::infinity();
      chosen = last;
      chosen_below = last_below;
    }
    below = chosen_below;
    prefix |= key_t(chosen) << shift;
    size_t kept = 0;
    for (const auto& e : cand) {
      if (int((e.first >> shift) & 0xff) == chosen) cand[kept++] = e;
    }
    cand.resize(kept);
  }
  acc_t d;
  std::memcpy(&d, &prefix, sizeof(d));
  return d;
}

template <typename acc_t>
RangeStats<acc_t> range_stats(const acc_t* z, int64_t n, double row_max,
                              const KeepRange<acc_t>& r) {
  RangeStats<acc_t> st{0.0, 0.0, -std::numeric_limits<acc_t>::infinity(), 0};
  for (int64_t j = 0; j < n; ++j) {
    if (!in_range(z[j], r)) continue;
    const double y = double(z[j]) - row_max;
    const double m = std::exp(y);
    st.total += m;
    st.weighted += m * y;
    st.max = std::max(st.max, z[j]);
    ++st.count;
  }
  return st;
}

// The row's kept range: keep_threshold, then warper_range over this file's searches.
template <typename acc_t>
KeepRange<acc_t> keep_range(const acc_t* z, int64_t n, double row_max, const RowFilter& f,
                            FilterOrder order, int64_t min_tokens_to_keep,
                            std::vector<acc_t>& scratch) {
  const acc_t tau = keep_threshold(z, n, row_max, f, order, min_tokens_to_keep, scratch);
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  using Range = KeepRange<acc_t>;
  return warper_range(
      tau, acc_t(row_max), f, min_tokens_to_keep,
      [&](const Range& r) { return range_stats(z, n, row_max, r); },
      [&](const Range& r, acc_t c, double target) {
        return distance_cut(z, n, row_max, r, c, target);
      },
      [&](const Range& r, acc_t c, int64_t k) {
        scratch.clear();
        for (int64_t j = 0; j < n; ++j) {
          if (in_range(z[j], r)) scratch.push_back(typical_distance(z[j], c));
        }
        std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end());
        return scratch[k - 1];
      },
      [&](const Range& r, acc_t c, acc_t d) {
        Range out{kInf, -kInf};
        for (int64_t j = 0; j < n; ++j) {
          if (in_range(z[j], r) && typical_distance(z[j], c) <= d) {
            out.lo = std::min(out.lo, z[j]);
            out.hi = std::max(out.hi, z[j]);
          }
        }
        return out;
      },
      [&](const Range& r, double lse, double cut) {
        acc_t t = kInf;
        for (int64_t j = 0; j < n; ++j) {
          if (in_range(z[j], r) && z[j] < t && std::exp(double(z[j]) - lse) >= cut) t = z[j];
        }
        return t;
      },
      [&](const Range& r, int64_t k) {
        scratch.clear();
        for (int64_t j = 0; j < n; ++j) {
          if (in_range(z[j], r)) scratch.push_back(z[j]);
        }
        std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                         std::greater<acc_t>());
        return scratch[k - 1];
      });
}

// z_j = (x_j + bias_j) / temperature in acc_t (scaled_logit: float32 for bf16 / fp16 logits,
// never rounded back to their dtype), also the row's max. Returns false when the row holds a NaN.
template <typename scalar_t, typename acc_t>
bool scaled_row(const scalar_t* x, const acc_t* bias, double temperature, int64_t n, acc_t* z,
                double& row_max) {
  const acc_t t = static_cast<acc_t>(temperature);
  const bool divide = t != acc_t(1);
  using Vec = at::vec::Vectorized<acc_t>;
  // IEEE add and divide round the same in vector and scalar form.
  const Vec vt(t);
  Vec vmax(-std::numeric_limits<acc_t>::infinity());
  auto scale = [&](Vec v, int64_t j) {
    if (bias != nullptr) v = v + Vec::loadu(bias + j);
    if (divide) v = v / vt;
    v.store(z + j);
    vmax = at::vec::maximum(vmax, v);  // propagates NaN
  };
  int64_t j = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; j + Vec::size() <= n; j += Vec::size()) scale(Vec::loadu(x + j), j);
  } else {
    using bVec = at::vec::Vectorized<scalar_t>;
    for (; j + bVec::size() <= n; j += bVec::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(bVec::loadu(x + j));
      scale(lo, j);
      scale(hi, j + Vec::size());
    }
  }
  double m =
      at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  bool has_nan = m != m;
  for (; j < n; ++j) {
    const acc_t v = scaled_logit(static_cast<acc_t>(x[j]), bias, j, t, divide);
    has_nan |= v != v;
    m = std::max(m, double(v));
    z[j] = v;
  }
  row_max = m;
  return !has_nan;
}

// The row's penalties over z from scaled_row: each of the m history entries (distinct ids; ids
// outside [0, n) skipped) is recomputed from x as penalized_logit(x + b) / temperature, the same
// roundings as z's other entries, so the row costs O(m) more, not another pass. row_max follows;
// it is rescanned only when an entry that held it went down. Returns false when a penalty made a
// NaN (+inf minus an overflowed frequency term).
template <typename scalar_t, typename acc_t>
bool penalize_row(const scalar_t* x, const acc_t* bias, double temperature, const int64_t* ids,
                  const int64_t* counts, int64_t m, const RowPenalty<acc_t>& p, int64_t n, acc_t* z,
                  double& row_max) {
  const acc_t t = static_cast<acc_t>(temperature);
  const bool divide = t != acc_t(1);
  bool lost_max = false;
  double new_max = row_max;
  for (int64_t e = 0; e < m; ++e) {
    const int64_t j = ids[e];
    if (j < 0 || j >= n) continue;
    acc_t v = static_cast<acc_t>(x[j]);
    if (bias != nullptr) v = v + bias[j];
    v = penalized_logit(v, counts[e], p);
    if (divide) v = v / t;
    if (v != v) return false;
    if (double(z[j]) == row_max && v < z[j]) lost_max = true;
    new_max = std::max(new_max, double(v));
    z[j] = v;
  }
  if (lost_max) {
    new_max = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) new_max = std::max(new_max, double(z[j]));
  }
  row_max = new_max;
  return true;
}

// y_j = z_j where tau <= z_j <= hi, else fill.
template <typename scalar_t, typename acc_t>
void write_filtered(const acc_t* z, int64_t n, acc_t tau, acc_t hi, scalar_t fill, scalar_t* y) {
  int64_t j = 0;
  if (hi < std::numeric_limits<acc_t>::infinity()) {
    for (; j < n; ++j) y[j] = z[j] >= tau && z[j] <= hi ? static_cast<scalar_t>(z[j]) : fill;
    return;
  }
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using Vec = at::vec::Vectorized<acc_t>;
    const Vec vtau(tau), vfill(fill);
    for (; j + Vec::size() <= n; j += Vec::size()) {
      const Vec v = Vec::loadu(z + j);
      Vec::blendv(vfill, v, v >= vtau).store(y + j);
    }
  }
  for (; j < n; ++j) y[j] = z[j] >= tau ? static_cast<scalar_t>(z[j]) : fill;
}

struct SamplingInputs {
  const at::Tensor logits;
  const at::Tensor bias;                              // [V] or [B, V] or undefined
  const at::Tensor temperature, top_k, top_p, min_p;  // [B] each (float64; top_k int64)
  // HF-only warpers: [B] float64 each, or undefined (off).
  const at::Tensor typical_p, epsilon_cutoff, eta_cutoff;
};

// The penalties' operands, contiguous (undefined when absent).
struct PenaltyInputs {
  at::Tensor ids, counts;                      // int64 [B, M]
  at::Tensor repetition, presence, frequency;  // float64 [B]
  bool repetition_output_only;

  bool defined() const { return ids.defined(); }
  int64_t history() const { return ids.size(1); }
  template <typename acc_t>
  RowPenalty<acc_t> row(int64_t i) const {
    return {static_cast<acc_t>(repetition.const_data_ptr<double>()[i]),
            static_cast<acc_t>(presence.const_data_ptr<double>()[i]),
            static_cast<acc_t>(frequency.const_data_ptr<double>()[i]), repetition_output_only};
  }
};

PenaltyInputs penalty_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& ids,
                             const std::optional<at::Tensor>& counts,
                             const std::optional<at::Tensor>& repetition,
                             const std::optional<at::Tensor>& presence,
                             const std::optional<at::Tensor>& frequency, bool output_only) {
  if (!check_penalty_inputs(logits, ids, counts, repetition, presence, frequency)) return {};
  return {ids->contiguous(),      counts->contiguous(),    repetition->contiguous(),
          presence->contiguous(), frequency->contiguous(), output_only};
}

// scaled_row, then the row's penalties when there are any.
template <typename scalar_t, typename acc_t>
bool penalized_scaled_row(const scalar_t* x, const acc_t* bias, double temperature, int64_t n,
                          const PenaltyInputs& pen, int64_t i, acc_t* z, double& row_max) {
  if (!scaled_row(x, bias, temperature, n, z, row_max)) return false;
  if (!pen.defined()) return true;
  const int64_t m = pen.history();
  return penalize_row(x, bias, temperature, pen.ids.const_data_ptr<int64_t>() + i * m,
                      pen.counts.const_data_ptr<int64_t>() + i * m, m, pen.row<acc_t>(i), n, z,
                      row_max);
}

double optional_at(const at::Tensor& t, int64_t i) {
  return t.defined() ? t.const_data_ptr<double>()[i] : 0.0;
}

RowFilter row_filter(const SamplingInputs& in, int64_t i) {
  return {in.temperature.const_data_ptr<double>()[i],
          in.top_k.const_data_ptr<int64_t>()[i],
          in.top_p.const_data_ptr<double>()[i],
          in.min_p.const_data_ptr<double>()[i],
          optional_at(in.typical_p, i),
          optional_at(in.epsilon_cutoff, i),
          optional_at(in.eta_cutoff, i)};
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

at::Tensor filter_logits_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& bias_in,
    const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
    const at::Tensor& min_p, c10::string_view order_name, double filter_value,
    int64_t min_tokens_to_keep, const std::optional<at::Tensor>& penalty_ids,
    const std::optional<at::Tensor>& penalty_counts,
    const std::optional<at::Tensor>& repetition_penalty,
    const std::optional<at::Tensor>& presence_penalty,
    const std::optional<at::Tensor>& frequency_penalty, bool repetition_output_only,
    const std::optional<at::Tensor>& typical_p, const std::optional<at::Tensor>& epsilon_cutoff,
    const std::optional<at::Tensor>& eta_cutoff) {
  const FilterOrder order = parse_filter_order(order_name);
  check_sampling_inputs(logits_in, bias_in, temperature, top_k, top_p, min_p);
  const PenaltyInputs pen =
      penalty_inputs(logits_in, penalty_ids, penalty_counts, repetition_penalty, presence_penalty,
                     frequency_penalty, repetition_output_only);
  check_warper_inputs(logits_in, typical_p, epsilon_cutoff, eta_cutoff);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const SamplingInputs in{logits,
                          bias,
                          temperature.contiguous(),
                          top_k.contiguous(),
                          top_p.contiguous(),
                          min_p.contiguous(),
                          optional_contiguous(typical_p),
                          optional_contiguous(epsilon_cutoff),
                          optional_contiguous(eta_cutoff)};
  const int64_t rows = logits.size(0), n = logits.size(1);
  at::Tensor out = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "filter_logits_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const acc_t* b = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
        const int64_t bias_stride = bias.defined() && bias.size(0) > 1 ? n : 0;
        scalar_t* y = out.mutable_data_ptr<scalar_t>();
        const auto fill = static_cast<scalar_t>(filter_value);
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> z(n), scratch;
          for (int64_t i = begin; i < end; ++i) {
            const RowFilter f = row_filter(in, i);
            scalar_t* yi = y + i * n;
            double row_max;
            if (!penalized_scaled_row(x + i * n, b != nullptr ? b + i * bias_stride : nullptr,
                                      f.temperature, n, pen, i, z.data(), row_max)) {
              std::fill(yi, yi + n, static_cast<scalar_t>(NAN));  // documented: NaN in, NaN out
              continue;
            }
            const KeepRange<acc_t> keep =
                keep_range(z.data(), n, row_max, f, order, min_tokens_to_keep, scratch);
            write_filtered(z.data(), n, keep.lo, keep.hi, fill, yi);
          }
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_cpu(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& bias_in,
    const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
    const at::Tensor& min_p, c10::string_view order_name, const at::Tensor& seeds,
    bool per_row_seeds, const std::optional<at::Tensor>& penalty_ids,
    const std::optional<at::Tensor>& penalty_counts,
    const std::optional<at::Tensor>& repetition_penalty,
    const std::optional<at::Tensor>& presence_penalty,
    const std::optional<at::Tensor>& frequency_penalty, bool repetition_output_only,
    const std::optional<at::Tensor>& typical_p, const std::optional<at::Tensor>& epsilon_cutoff,
    const std::optional<at::Tensor>& eta_cutoff) {
  const FilterOrder order = parse_filter_order(order_name);
  check_sampling_inputs(logits_in, bias_in, temperature, top_k, top_p, min_p);
  const PenaltyInputs pen =
      penalty_inputs(logits_in, penalty_ids, penalty_counts, repetition_penalty, presence_penalty,
                     frequency_penalty, repetition_output_only);
  check_warper_inputs(logits_in, typical_p, epsilon_cutoff, eta_cutoff);
  const int64_t rows = logits_in.size(0), n = logits_in.size(1);
  TORCH_CHECK_VALUE(seeds.dim() == 1 && seeds.size(0) == rows && seeds.scalar_type() == at::kLong,
                    "logitops.sample: seed must be int64 [", rows, "]");
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const SamplingInputs in{logits,
                          bias,
                          temperature.contiguous(),
                          top_k.contiguous(),
                          top_p.contiguous(),
                          min_p.contiguous(),
                          optional_contiguous(typical_p),
                          optional_contiguous(epsilon_cutoff),
                          optional_contiguous(eta_cutoff)};
  const at::Tensor seed = seeds.contiguous();
  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({rows}, logits.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, logits.scalar_type(), "sample_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* x = logits.const_data_ptr<scalar_t>();
        const acc_t* b = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
        const int64_t bias_stride = bias.defined() && bias.size(0) > 1 ? n : 0;
        const int64_t* s = seed.const_data_ptr<int64_t>();
        int64_t* tok = tokens.mutable_data_ptr<int64_t>();
        float* lp = logprobs.mutable_data_ptr<float>();
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> z(n), scratch;
          for (int64_t i = begin; i < end; ++i) {
            const RowFilter f = row_filter(in, i);
            const bool greedy = !(f.temperature > 0);
            tok[i] = -1;  // documented: a NaN row, or one with nothing to sample, gives -1
            lp[i] = NAN;
            double row_max;
            if (!penalized_scaled_row(x + i * n, b != nullptr ? b + i * bias_stride : nullptr,
                                      greedy ? 1.0 : f.temperature, n, pen, i, z.data(), row_max)) {
              continue;
            }
            if (greedy) {
              // argmax of the biased logits, first index on ties (torch.argmax); log-prob 0 of
              // the point mass it samples from. A row of -inf has nothing to pick: -1, NaN.
              if (row_max == -std::numeric_limits<double>::infinity()) continue;
              int64_t best = 0;
              for (int64_t j = 1; j < n; ++j) {
                if (z[j] > z[best]) best = j;
              }
              tok[i] = best;
              lp[i] = 0.f;
              continue;
            }
            const KeepRange<acc_t> keep = keep_range(z.data(), n, row_max, f, order, 1, scratch);
            const acc_t tau = keep.lo;
            const uint64_t key = static_cast<uint64_t>(s[i]);
            const uint64_t stream = per_row_seeds ? 0 : static_cast<uint64_t>(i);
            double best_score = -std::numeric_limits<double>::infinity();
            int64_t best = -1;
            LseState<double> kept = lse_empty<double>();
            for (int64_t j = 0; j < n; ++j) {
              if (!(z[j] >= tau) || z[j] > keep.hi ||
                  z[j] == -std::numeric_limits<acc_t>::infinity()) {
                continue;
              }
              kept = lse_push(kept, double(z[j]));
              const double score = race_score(double(z[j]), exponential_noise(key, stream, j));
              if (score > best_score) {
                best_score = score;
                best = j;
              }
            }
            if (best >= 0) {
              tok[i] = best;
              lp[i] = static_cast<float>(double(z[best]) - lse_finalize(kept));
            }
          }
        });
      });
  return {tokens, logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(logitops, CPU, m) {
  m.impl("filter_logits", &filter_logits_cpu);
  m.impl("sample", &sample_cpu);
}

}  // namespace logitops

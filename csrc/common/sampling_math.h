// Sampling math shared by the CPU and CUDA kernels: the filters' decisions, a counter-based random
// generator and the noise of the exponential race. Torch-free, host and device.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "logit_math.h"

namespace logitops {

// A row's filter parameters.
struct RowFilter {
  double temperature;  // > 0; <= 0 (or NaN) means greedy (sample only)
  int64_t top_k;       // >= the vocabulary: off
  double top_p;        // >= 1: off
  double min_p;        // <= 0: off
  // transformers' HF-only warpers (TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper);
  // zero (what the brace initializers of the older call sites leave) means off.
  double typical_p;  // off unless 0 < typical_p < 1
  double epsilon;    // epsilon_cutoff, off unless > 0
  double eta;        // eta_cutoff, off unless > 0
};

// The filtering arithmetic. Whatever the logits' dtype, z_j = (x_j + bias_j) / temperature is
// computed in acc_t (float32; float64 for float64 logits) and never rounded back to the logits'
// dtype: transformers' generate() upcasts logits to float32 before its warpers, and vLLM samples
// in float32, so rounding z to bf16 / fp16 would create ties (and fp16 overflows) they do not have.
// bias is nullptr when absent; divide is temperature != 1 (no division then, NaN included).
template <typename acc_t>
LOGITOPS_HD acc_t scaled_logit(acc_t x, const acc_t* bias, int64_t j, acc_t temperature,
                               bool divide) {
  if (bias != nullptr) x = x + bias[j];
  return divide ? x / temperature : x;
}

// Penalties (repetition, frequency, presence) of one row. They act on the biased logit v = x + b,
// before the temperature, where transformers' generate() (RepetitionPenaltyLogitsProcessor among
// the processors, TemperatureLogitsWarper among the later warpers) and vLLM's sampler
// (apply_penalties, then the temperature) apply them. The values are rounded to acc_t, as
// torch's float32 arithmetic with a Python number or vLLM's float32 tensors round them.
template <typename acc_t>
struct RowPenalty {
  acc_t repetition;             // 1: off
  acc_t presence;               // 0: off
  acc_t frequency;              // 0: off
  bool repetition_output_only;  // SGLang: only tokens with an output count are scaled
};

// a * b rounded on its own: never fused into a following add (an FMA, which GCC with -mfma and
// nvcc form by default), so v - frequency * count rounds twice, as vLLM's two torch ops do.
template <typename acc_t>
LOGITOPS_HD acc_t unfused_product(acc_t a, acc_t b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(acc_t) == 8) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  volatile acc_t product = a * b;
  return product;
#endif
}

// v penalised for a token of the row's history with `count` occurrences in the output (0 for a
// prompt-only token): repetition first (a negative v multiplied, any other divided, once per
// distinct token), then v - frequency * count, then v - presence, each rounded in acc_t, in
// vLLM's order (transformers has the repetition penalty only). A token with count 0 gets no
// frequency or presence term (vLLM subtracts frequency * 0 and presence * 0: the same values).
template <typename acc_t>
LOGITOPS_HD acc_t penalized_logit(acc_t v, int64_t count, const RowPenalty<acc_t>& p) {
  if (!p.repetition_output_only || count > 0)
    v = v < acc_t(0) ? v * p.repetition : v / p.repetition;
  if (count > 0) {
    v = v - unfused_product(p.frequency, static_cast<acc_t>(count));
    v = v - p.presence;
  }
  return v;
}

// Top-p on the tail (transformers' TopPLogitsWarper: sort ascending, cumulative softmax, remove
// where it is <= 1 - p). With m_j = exp(z_j - max) in double over the candidates and T their
// total, a group of equal values v is removed when its tail, the mass of the candidates <= v (v's
// group included), is <= removal = (1 - p) * T; 1 - p is rounded to acc_t as transformers'
// comparison of its float32 cumsum with the Python number 1 - p rounds it. The tail is summed
// directly (not T minus the mass above), so its double rounding error is relative to the tail
// itself, ~1e-16 * (its length) against float32's 6e-8: the decision is the exact one for the
// float32 z, and transformers' float32 cumsum disagrees only where the tail lies within its own
// float32 rounding (a few ulp) of 1 - p.
template <typename acc_t>
LOGITOPS_HD double top_p_removal_mass(double top_p, double total) {
  return double(static_cast<acc_t>(1.0 - top_p)) * total;
}

// Whether top-p cuts anything but the top group: false for p <= 0 (every tail is <= T) and for a
// NaN total (+inf logits); then only the row's largest group survives.
LOGITOPS_HD bool top_p_cuts_inside(double removal, double total) { return removal < total; }

// A group with tail `tail` (its own mass included) is kept.
LOGITOPS_HD bool top_p_keeps(double tail, double removal) { return tail > removal; }

// Min-p (transformers' MinPLogitsWarper: keep probs >= min_p * max prob): keep exp(z - max) >= the
// cut, min_p rounded to acc_t as transformers' float32 product rounds it; the ratio is computed in
// double, so the decision is the exact one (transformers' float32 softmax can differ within a few
// ulp of the cut).
template <typename acc_t>
LOGITOPS_HD double min_p_cut(double min_p) {
  return double(static_cast<acc_t>(min_p));
}

LOGITOPS_HD bool min_p_keeps(double ratio, double cut) { return ratio >= cut; }

// The row's keep threshold tau for the given order (a token is kept when z >= tau; -inf keeps
// everything): the decision of which filter cuts where, shared by the CPU and CUDA kernels. Each
// backend finds the filters' own thresholds its own way (CPU: heap, nth_element, histogram; CUDA:
// block-wide radix searches) and passes them in as callables over the row's NaN-free z:
//   kth_largest(k)                 the k-th largest z, ties counted (1 <= k <= n);
//   min_p_threshold(min_p)         the smallest z with min_p_keeps(exp(z - row_max),
//                                  min_p_cut<acc_t>(min_p)), +inf when none;
//   top_p_threshold(top_p, lower)  the smallest value top-p keeps among the candidates z >= lower
//                                  (lower <= row_max), renormalized over them (top_p_removal_mass).
// n is the row's length, row_max its max. Branches depend only on the arguments and on the
// callables' results, so on CUDA a block whose threads agree on those takes them together.
template <typename acc_t, typename KthLargest, typename MinPThreshold, typename TopPThreshold>
LOGITOPS_HD acc_t row_threshold(int64_t n, acc_t row_max, const RowFilter& f, FilterOrder order,
                                int64_t min_tokens_to_keep, const KthLargest& kth_largest,
                                const MinPThreshold& min_p_threshold,
                                const TopPThreshold& top_p_threshold) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  auto smaller = [](acc_t a, acc_t b) { return b < a ? b : a; };
  auto larger = [](acc_t a, acc_t b) { return a < b ? b : a; };
  if (row_max == kNegInf) return kNegInf;  // nothing to rank (also n == 0)

  int64_t keep_at_least = min_tokens_to_keep > 1 ? min_tokens_to_keep : 1;
  if (keep_at_least > n) keep_at_least = n;
  // The min_tokens_to_keep-th largest value: no filter cuts above it.
  const acc_t floor_keep = keep_at_least > 1 ? kth_largest(keep_at_least) : row_max;

  acc_t tau_k = kNegInf;
  const int64_t k = f.top_k > keep_at_least ? f.top_k : keep_at_least;
  if (k < n) tau_k = kth_largest(k);

  acc_t tau_min_p = kNegInf;
  if (f.min_p > 0) tau_min_p = smaller(min_p_threshold(f.min_p), floor_keep);

  acc_t tau_p = kNegInf;
  if (f.top_p < 1) {
    // What top-p renormalizes over: top-k's survivors (hf), top-k's and min-p's (vllm), or the
    // whole distribution (joint).
    acc_t lower = kNegInf;
    if (order == kOrderHf) lower = tau_k;
    if (order == kOrderVllm) lower = larger(tau_k, tau_min_p);
    tau_p = smaller(top_p_threshold(f.top_p, lower), floor_keep);
  }
  return larger(larger(tau_k, tau_min_p), tau_p);
}

// The HF-only warpers: typical, epsilon, eta, in transformers' order after temperature, top-k,
// top-p and min-p, each measured on the previous one's survivors (renormalized over them). With
// every order ("hf", "vllm", "joint") they apply after that order's top-k / top-p / min-p stage,
// on its survivors: vLLM and SGLang have no such warpers, so the HF chain is the one definition.
// Typical may remove the most likely tokens, so the kept set is an interval of z, lo <= z <= hi.
template <typename acc_t>
struct KeepRange {
  acc_t lo, hi;
};

// Over the finite z of a range: the mass sum exp(z - row_max), sum exp(z - row_max) (z - row_max)
// (for the mean of z and the entropy), the largest z and the count.
template <typename acc_t>
struct RangeStats {
  double total;
  double weighted;
  acc_t max;
  int64_t count;
};

template <typename acc_t>
LOGITOPS_HD bool in_range(acc_t z, const KeepRange<acc_t>& r) {
  return z >= r.lo && z <= r.hi && z > -std::numeric_limits<acc_t>::infinity();
}

// Typical's distance of a token from the entropy: |-log p - H| = |E_p[z] - z| (both sides
// shifted by the log-normalizer), in acc_t, as transformers' float32 shifted_scores; c = E_p[z].
template <typename acc_t>
LOGITOPS_HD acc_t typical_distance(acc_t z, acc_t c) {
  const acc_t d = z - c;
  return d < acc_t(0) ? -d : d;
}

LOGITOPS_HD bool warpers_active(const RowFilter& f) {
  return (f.typical_p > 0 && f.typical_p < 1) || f.epsilon > 0 || f.eta > 0;
}

// The kept range: row_threshold's tau (tau), then the warpers, with the callables of the backend
// (each over the finite z of a range r, r.lo >= tau):
//   range_stats(r)                   RangeStats of r;
//   distance_cut(r, c, target)       the smallest distance g = typical_distance(z, c) of a z in r
//                                    with sum over r's z at distance <= g of exp(z - row_max)
//                                    >= target; +inf when none (rounding: keep all);
//   kth_smallest_distance(r, c, k)   the k-th smallest distance in r, ties counted (k <= count);
//   distance_bounds(r, c, d)         min and max z of r at distance <= d (d >= the smallest);
//   prob_threshold(r, lse, cut)      the smallest z of r with exp(z - lse) >= cut, +inf if none;
//   kth_largest_in(r, k)             the k-th largest z of r, ties counted (k <= count).
// Transformers' exact rules: typical keeps the distances <= the distance of the first sorted
// position whose cumulative mass reaches typical_p (rounded to acc_t) and the min_tokens_to_keep
// most typical tokens (ties at those cuts kept together); epsilon keeps p >= epsilon (rounded to
// acc_t); eta keeps p >= min(e, sqrt(e) exp(-H)), e = eta_cutoff rounded to float32 (its tensor)
// and the result to acc_t; both keep the min_tokens_to_keep largest survivors and their ties. A
// +inf max (NaN softmax) skips the warpers.
template <typename acc_t, typename RangeStatsFn, typename DistanceCut, typename KthSmallestDistance,
          typename DistanceBounds, typename ProbThreshold, typename KthLargestIn>
LOGITOPS_HD KeepRange<acc_t> warper_range(
    acc_t tau, acc_t row_max, const RowFilter& f, int64_t min_tokens_to_keep,
    const RangeStatsFn& range_stats, const DistanceCut& distance_cut,
    const KthSmallestDistance& kth_smallest_distance, const DistanceBounds& distance_bounds,
    const ProbThreshold& prob_threshold, const KthLargestIn& kth_largest_in) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  KeepRange<acc_t> r{tau, kInf};
  if (!warpers_active(f) || !(row_max < kInf) || row_max == -kInf) return r;
  const int64_t m = min_tokens_to_keep > 1 ? min_tokens_to_keep : 1;
  if (f.typical_p > 0 && f.typical_p < 1) {
    const RangeStats<acc_t> st = range_stats(r);
    if (st.count > 0 && st.total > 0) {
      const acc_t c = static_cast<acc_t>(double(row_max) + st.weighted / st.total);
      const double target = double(static_cast<acc_t>(f.typical_p)) * st.total;
      acc_t d = distance_cut(r, c, target);
      if (m > 1 && d < kInf) {
        const acc_t dm = st.count > m ? kth_smallest_distance(r, c, m) : kInf;
        d = d < dm ? dm : d;
      }
      if (d < kInf) r = distance_bounds(r, c, d);
    }
  }
  // Epsilon then eta: a probability cut over the survivors, lowered to keep the m largest.
  for (int stage = 0; stage < 2; ++stage) {
    const double cutoff = stage == 0 ? f.epsilon : f.eta;
    if (!(cutoff > 0)) continue;
    const RangeStats<acc_t> st = range_stats(r);
    if (st.count == 0 || !(st.total > 0)) continue;
    const double log_total = std::log(st.total);
    const double lse = double(row_max) + log_total;
    double cut;
    if (stage == 0) {
      cut = double(static_cast<acc_t>(cutoff));
    } else {
      const double e = double(static_cast<float>(cutoff));
      const double entropy = log_total - st.weighted / st.total;
      const double scaled = std::sqrt(e) * std::exp(-entropy);
      cut = double(static_cast<acc_t>(scaled < e ? scaled : e));
    }
    const acc_t t = prob_threshold(r, lse, cut);
    acc_t floor_keep = st.max;
    if (m > 1) floor_keep = st.count > m ? kth_largest_in(r, m) : -kInf;
    const acc_t lo = t < floor_keep ? t : floor_keep;
    if (r.lo < lo) r.lo = lo;
  }
  return r;
}

// Philox4x32-10 (Salmon et al., SC'11): four 32-bit outputs from a 128-bit counter and a 64-bit
// key. Stateless, so a token's noise depends only on (key, counter), never on which thread or
// which batch position computed it.
struct Philox4x32 {
  uint32_t v[4];
};

LOGITOPS_HD uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

LOGITOPS_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mul_hi_u32(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = mul_hi_u32(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// Exp(1) noise of token `index` for a row keyed by (seed, stream): -log(u) with u uniform in
// (0, 1) at 2^-53 resolution, in double, so even tokens of probability 1e-12 stay reachable
// (fp32 noise floors at 2^-24; vLLM #43150).
LOGITOPS_HD double exponential_noise(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 r =
      philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                    static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32 | r.v[1]) >> 11;  // 53 bits
  const double u = (static_cast<double>(bits) + 0.5) * 0x1.0p-53;
  return -std::log(u);
}

// Race score of a kept token: argmax_j (z_j - log E_j), E_j ~ Exp(1), picks j with probability
// softmax(z)_j (the Gumbel-max trick written with exponential noise).
LOGITOPS_HD double race_score(double z, double noise) { return z - std::log(noise); }

}  // namespace logitops

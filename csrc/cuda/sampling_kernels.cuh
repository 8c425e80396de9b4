// Filtering and sampling kernels for CUDA. Torch-free. Every filter is a per-row threshold tau on
// the scaled logits z, and a token is kept when z >= tau; which filter cuts where is decided by
// sampling_math.h's row_threshold, shared with csrc/cpu/sampling.cpp. This file finds the
// filters' own thresholds, by block-wide searches.
//
// One thread block owns one row and recomputes z = (x + bias) / T (in acc_t, never rounded to the
// logits' dtype: sampling_math.h's scaled_logit) from the logits on every pass
// (a few flops per element; the passes after the first read the row from L2), so no workspace is
// needed and nothing depends on the data but the work inside the block. No sort: the k-th largest
// value and the top-p cut are both found by an MSB-first radix search over the order-preserving
// integer image of z (8-bit digits: 4 passes for fp32 z, 8 for fp64), each pass a shared-memory
// histogram of the candidates that share the digits chosen so far. The trip counts are fixed, so
// NaN or adversarial rows cannot make a loop spin.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "../common/sampling_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Up to kMaxBlockThreads threads; two blocks per SM (64 registers each) keep one block loading
// while the other sits at a barrier of its radix passes. fp64 rows, and the sampling kernel (the
// searches and the race in one), take one (up to 128 registers): their 16-byte passes do not fit
// 64 without spilling, and decoding batches put about one row per SM anyway.
template <typename acc_t>
constexpr int filter_min_blocks_per_sm() {
  return sizeof(acc_t) == 8 ? 1 : 2;
}
constexpr int kSampleMinBlocksPerSm = 1;

constexpr int kRadixBits = 8;
constexpr int kRadixBuckets = 1 << kRadixBits;
// Warp 0 picks a digit from a histogram, each lane owning this many consecutive buckets.
constexpr int kBucketsPerLane = kRadixBuckets / kWarpSize;
constexpr unsigned kFullWarp = 0xffffffffu;
// Digit of an element outside the current search range (not a valid digit).
constexpr unsigned kNoDigit = 0xffffffffu;
// Index of "no token yet": larger than any real index, so it loses every tie.
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();

// Threads per row: about one element each for small rows.
inline int sampling_block_threads(int64_t vocab) { return threads_for(vocab, 1); }

// Order-preserving unsigned image of a float: a < b exactly when key(a) < key(b), over all
// non-NaN values including +-inf. -0 and +0 share a key, being one value to the comparisons
// that use the thresholds.
template <typename acc_t>
struct OrderedKey;
template <>
struct OrderedKey<float> {
  using type = uint32_t;
};
template <>
struct OrderedKey<double> {
  using type = uint64_t;
};

__device__ __forceinline__ uint32_t ordered_key(float x) {
  const uint32_t bits = __float_as_uint(x == 0.f ? 0.f : x);
  return (bits >> 31) != 0 ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ uint64_t ordered_key(double x) {
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(x == 0.0 ? 0.0 : x));
  return (bits >> 63) != 0 ? ~bits : (bits | (uint64_t(1) << 63));
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key >> 31) != 0 ? (key & 0x7fffffffu) : ~key);
}

__device__ __forceinline__ double key_value(uint64_t key) {
  const uint64_t bits = (key >> 63) != 0 ? (key & ~(uint64_t(1) << 63)) : ~key;
  return __longlong_as_double(static_cast<long long>(bits));
}

// Everything the kernels read that does not change from row to row.
template <typename scalar_t, typename acc_t>
struct SamplingArgs {
  const scalar_t* logits;   // [num_rows, vocab], unit stride along the vocabulary
  int64_t row_stride;       // in elements
  const acc_t* bias;        // [1 or num_rows, vocab] in acc_t, unit stride; nullptr if absent
  int64_t bias_row_stride;  // 0 when one bias row is broadcast
  int64_t num_rows;
  int64_t vocab;              // < 2^32: histogram counts are 32-bit
  const double* temperature;  // [num_rows] each, contiguous
  const int64_t* top_k;
  const double* top_p;
  const double* min_p;
  FilterOrder order;
  // HF-only warpers: [num_rows] each, or nullptr (off).
  const double* typical_p;
  const double* epsilon_cutoff;
  const double* eta_cutoff;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RowFilter row_filter(const SamplingArgs<scalar_t, acc_t>& args,
                                                int64_t row) {
  return {args.temperature[row],
          args.top_k[row],
          args.top_p[row],
          args.min_p[row],
          args.typical_p != nullptr ? args.typical_p[row] : 0.0,
          args.epsilon_cutoff != nullptr ? args.epsilon_cutoff[row] : 0.0,
          args.eta_cutoff != nullptr ? args.eta_cutoff[row] : 0.0};
}

// z_j of one row in acc_t (sampling_math.h's scaled_logit). Cheap enough to recompute on every
// pass.
template <typename scalar_t, typename acc_t>
struct ScaledRow {
  const scalar_t* __restrict__ x;
  const acc_t* __restrict__ bias;  // nullptr when absent
  acc_t temperature;
  bool divide;  // temperature != 1 (scaled_logit skips the division otherwise, NaN included)

  __device__ __forceinline__ acc_t operator()(int64_t j) const {
    return scaled_logit(to_acc<acc_t>(load_element(x + j)), bias, j, temperature, divide);
  }

  // Calls fn(z_j, j) on this thread's share of the row, read by 16-byte vectors (stream_row: in
  // no particular order, so every reduction over it breaks ties by index).
  template <typename Fn>
  __device__ __forceinline__ void for_each(int64_t n, Fn&& fn) const {
    stream_row<1>(x, n, [&](const auto& raw, int64_t j) {
      constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        fn(scaled_logit(to_acc<acc_t>(raw[k]), bias, j + k, temperature, divide), j + k);
      }
    });
  }
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ ScaledRow<scalar_t, acc_t> scaled_row(
    const SamplingArgs<scalar_t, acc_t>& args, int64_t row, double temperature) {
  const acc_t t = static_cast<acc_t>(temperature);
  return {args.logits + row * args.row_stride,
          args.bias != nullptr ? args.bias + row * args.bias_row_stride : nullptr, t,
          t != acc_t(1)};
}

// First pass over a row: max (and its first index, torch.argmax's choice) and whether it holds NaN.
template <typename acc_t>
struct RowScan {
  acc_t max;
  int64_t argmax;  // kNoIndex for an empty row
  int has_nan;
};

// Whether (value a, index i) ranks before (value b, index j): larger value, then lower index.
template <typename acc_t>
__device__ __forceinline__ bool ranks_before(acc_t a, int64_t i, acc_t b, int64_t j) {
  return a > b || (a == b && i < j);
}

template <typename acc_t, typename Row>
__device__ RowScan<acc_t> scan_row(const Row& z, int64_t n) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  RowScan<acc_t> s{kNegInf, kNoIndex, 0};
  z.for_each(n, [&](acc_t v, int64_t j) {
    if (v != v) {
      s.has_nan = 1;
    } else if (ranks_before(v, j, s.max, s.argmax)) {
      s.max = v;
      s.argmax = j;
    }
  });
  return block_all_reduce(s, RowScan<acc_t>{kNegInf, kNoIndex, 0},
                          [](const RowScan<acc_t>& a, const RowScan<acc_t>& b) {
                            RowScan<acc_t> r =
                                ranks_before(b.max, b.argmax, a.max, a.argmax) ? b : a;
                            r.has_nan = a.has_nan | b.has_nan;
                            return r;
                          });
}

// Shared memory of the radix searches. The histograms are rebuilt for every pass; warp 0 writes
// the chosen digit (and what the next pass needs) for the whole block to read.
struct RadixScratch {
  unsigned count[kRadixBuckets];
  double mass[kRadixBuckets];          // top-p only: sum of exp(z - max) per bucket
  double lane_mass[kMaxBlockThreads];  // add_digit_mass: each lane's value, read by its leader
  unsigned digit;                      // kNoDigit: top-p stops at the row's max
  unsigned rank;                       // k-th largest: rank left inside the chosen bucket
  double below;                        // top-p: mass of the candidates below the chosen bucket
  double removal;                      // top-p: top_p_removal_mass of the candidates' total
};

__device__ __forceinline__ void clear_histogram(RadixScratch& s) {
  for (int d = threadIdx.x; d < kRadixBuckets; d += blockDim.x) {
    s.count[d] = 0;
    s.mass[d] = 0;
  }
  __syncthreads();
}

// Lanes with the same digit add to its bucket once together (__match_any_sync, sm_70 and later;
// the emulator too): logits crowd into a few top digits, and one atomic per lane would serialize
// on them.
#if defined(LOGITOPS_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700)
#define LOGITOPS_WARP_AGGREGATED_HISTOGRAM 1
#endif

// Adds one to count[digit] (nothing for kNoDigit).
__device__ __forceinline__ void count_digit(unsigned* count, unsigned digit) {
#ifdef LOGITOPS_WARP_AGGREGATED_HISTOGRAM
  const unsigned peers = __match_any_sync(__activemask(), digit);
  if (digit != kNoDigit && int(threadIdx.x % kWarpSize) == __ffs(peers) - 1) {
    atomicAdd(&count[digit], unsigned(__popc(peers)));
  }
#else
  if (digit != kNoDigit) atomicAdd(&count[digit], 1u);
#endif
}

// Adds value to s.mass[digit] (nothing for kNoDigit). A shared-memory double atomicAdd is a
// compare-and-swap loop (ATOMS.CAST.SPIN.64) that serializes the lanes of a crowded digit: here
// the lowest lane of each digit sums its peers' values, in lane order, and adds once.
__device__ __forceinline__ void add_digit_mass(RadixScratch& s, unsigned digit, double value) {
#ifdef LOGITOPS_WARP_AGGREGATED_HISTOGRAM
  const unsigned active = __activemask();
  const unsigned peers = __match_any_sync(active, digit);
  const int lane = threadIdx.x % kWarpSize;
  double* warp_values = s.lane_mass + (threadIdx.x - lane);
  warp_values[lane] = value;
  __syncwarp(active);
  if (digit != kNoDigit && lane == __ffs(peers) - 1) {
    double sum = 0;
    for (unsigned rest = peers; rest != 0; rest &= rest - 1) sum += warp_values[__ffs(rest) - 1];
    if (sum != 0) atomicAdd(&s.mass[digit], sum);
  }
  __syncwarp(active);  // the slots are rewritten by the next call
#else
  if (digit != kNoDigit && value != 0) atomicAdd(&s.mass[digit], value);
#endif
}

// Inclusive prefix sum over warp 0's lanes, lane 0 first. All 32 lanes must call it.
template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T x) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const T y = __shfl_up_sync(kFullWarp, x, offset);
    if (lane >= offset) x += y;
  }
  return x;
}

// Warp 0, after a histogram of the candidates: the bucket that holds the rank-th largest one
// (1-based), and the rank left inside it. Lane l owns buckets 255 - 8l down to 248 - 8l, so lane
// order is descending value order. 1 <= rank <= the candidates' count, so exactly one lane finds
// it.
__device__ __forceinline__ void select_rank_digit(RadixScratch& s, unsigned rank) {
  const int lane = threadIdx.x % kWarpSize;
  const int top = kRadixBuckets - 1 - kBucketsPerLane * lane;
  unsigned local = 0;
#pragma unroll
  for (int i = 0; i < kBucketsPerLane; ++i) local += s.count[top - i];
  const unsigned inclusive = warp_inclusive_scan(local);
  unsigned run = __shfl_up_sync(kFullWarp, inclusive, 1);
  if (lane == 0) run = 0;
  if (run < rank && rank <= inclusive) {
    for (int i = 0; i < kBucketsPerLane; ++i) {
      const unsigned c = s.count[top - i];
      if (rank <= run + c) {
        s.digit = unsigned(top - i);
        s.rank = rank - run;
        break;
      }
      run += c;
    }
  }
}

// The k-th largest z of the row (1 <= k <= n), ties counted: row_threshold's kth_largest. Every
// thread must call it; the result is the same in all.
template <typename acc_t, typename Row>
__device__ acc_t block_kth_largest(const Row& z, int64_t n, int64_t k, RadixScratch& s) {
  using key_t = typename OrderedKey<acc_t>::type;
  constexpr int kKeyBits = int(sizeof(key_t)) * 8;
  key_t prefix = 0, fixed = 0;  // the digits chosen so far, and their mask
  unsigned rank = static_cast<unsigned>(k);
#pragma unroll 1
  for (int shift = kKeyBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    clear_histogram(s);
    z.for_each(n, [&](acc_t v, int64_t) {
      const key_t key = ordered_key(v);
      count_digit(s.count, (key & fixed) == prefix ? unsigned(key >> shift) & (kRadixBuckets - 1)
                                                   : kNoDigit);
    });
    __syncthreads();
    if (threadIdx.x < kWarpSize) select_rank_digit(s, rank);
    __syncthreads();
    prefix |= key_t(s.digit) << shift;
    fixed |= key_t(kRadixBuckets - 1) << shift;
    rank = s.rank;
  }
  return key_value(prefix);
}

// Smallest z with exp(z - max) >= min_p (min_p_cut), +inf when none: row_threshold's
// min_p_threshold. Every thread must call it.
template <typename acc_t, typename Row>
__device__ acc_t block_min_p_threshold(const Row& z, int64_t n, double row_max, double min_p) {
  const double cut = min_p_cut<acc_t>(min_p);
  acc_t tau = std::numeric_limits<acc_t>::infinity();
  z.for_each(n, [&](acc_t v, int64_t) {
    if (v < tau && min_p_keeps(exp(double(v) - row_max), cut)) tau = v;
  });
  return block_all_reduce(tau, std::numeric_limits<acc_t>::infinity(),
                          [](acc_t a, acc_t b) { return b < a ? b : a; });
}

// Warp 0, after a histogram of the top-p candidates: with B(u) the mass of the candidates whose
// key is at most u (u's tail), the cut is the smallest candidate key u with B(u) > removal
// (top_p_keeps; B is monotone, and B(max) is the total). It lies in the lowest non-empty bucket
// whose mass, added to `below` (the mass of the candidates under the current range) and to the
// buckets under it, exceeds removal. Lane l owns buckets 8l up to 8l + 7, so lane order is
// ascending value order. On the first pass the histogram holds every candidate, which gives the
// total and the removal mass.
template <typename acc_t>
__device__ __forceinline__ void select_mass_digit(RadixScratch& s, bool first_pass, double top_p,
                                                  double below) {
  const int lane = threadIdx.x % kWarpSize;
  const int first = kBucketsPerLane * lane;
  double local = 0;
#pragma unroll
  for (int i = 0; i < kBucketsPerLane; ++i) local += s.mass[first + i];
  const double inclusive = warp_inclusive_scan(local);
  double excl = __shfl_up_sync(kFullWarp, inclusive, 1);
  if (lane == 0) excl = 0;
  double removal;
  if (first_pass) {
    const double total = __shfl_sync(kFullWarp, inclusive, kWarpSize - 1);
    removal = top_p_removal_mass<acc_t>(top_p, total);
    // p <= 0, or a NaN total (+inf logits): only the top group survives.
    if (!top_p_cuts_inside(removal, total)) {
      if (lane == 0) {
        s.digit = kNoDigit;
        s.below = 0;  // read (unused) by the caller before it sees kNoDigit
      }
      return;
    }
  } else {
    removal = s.removal;
  }
  // The first bucket of this lane that crosses, and its last non-empty one (the fallback when
  // rounding of the re-summed bucket masses leaves no bucket crossing: the range's top).
  double run = below + excl;
  int found = -1, last = -1;
  double found_below = 0, last_below = 0;
  for (int i = 0; i < kBucketsPerLane; ++i) {
    const int d = first + i;
    if (s.count[d] == 0) continue;
    const double next = run + s.mass[d];
    if (found < 0 && top_p_keeps(next, removal)) {
      found = d;
      found_below = run;
    }
    last = d;
    last_below = run;
    run = next;
  }
  const unsigned crossing = __ballot_sync(kFullWarp, found >= 0);
  const unsigned nonempty = __ballot_sync(kFullWarp, last >= 0);
  int digit;
  double digit_below;
  if (crossing != 0) {
    const int src = __ffs(crossing) - 1;  // lowest values win
    digit = __shfl_sync(kFullWarp, found, src);
    digit_below = __shfl_sync(kFullWarp, found_below, src);
  } else {
    const int src = nonempty != 0 ? kWarpSize - 1 - __clz(nonempty) : 0;  // highest values
    digit = __shfl_sync(kFullWarp, last, src);
    digit_below = __shfl_sync(kFullWarp, last_below, src);
  }
  if (lane == 0) {
    s.digit = digit >= 0 ? unsigned(digit) : kNoDigit;
    s.below = digit_below;
    s.removal = removal;
  }
}

// Top-p over the candidates z >= lower, renormalized over them: the smallest kept value, each
// group of equal values removed while its tail (its own mass and the mass below it) is <= the
// removal mass: row_threshold's top_p_threshold. row_max is the row's max (a candidate:
// lower <= max).
// Every thread must call it.
template <typename acc_t, typename Row>
__device__ acc_t block_top_p_threshold(const Row& z, int64_t n, acc_t row_max, double top_p,
                                       acc_t lower, RadixScratch& s) {
  using key_t = typename OrderedKey<acc_t>::type;
  constexpr int kKeyBits = int(sizeof(key_t)) * 8;
  const double max_d = double(row_max);
  key_t prefix = 0, fixed = 0;
  double below = 0;
#pragma unroll 1
  for (int shift = kKeyBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    clear_histogram(s);
    z.for_each(n, [&](acc_t v, int64_t) {
      unsigned digit = kNoDigit;
      if (v >= lower) {
        const key_t key = ordered_key(v);
        if ((key & fixed) == prefix) digit = unsigned(key >> shift) & (kRadixBuckets - 1);
      }
      count_digit(s.count, digit);
      add_digit_mass(s, digit, digit != kNoDigit ? exp(double(v) - max_d) : 0.0);
    });
    __syncthreads();
    if (threadIdx.x < kWarpSize) select_mass_digit<acc_t>(s, fixed == 0, top_p, below);
    __syncthreads();
    const unsigned digit = s.digit;
    below = s.below;
    if (digit == kNoDigit) return row_max;  // block-uniform
    prefix |= key_t(digit) << shift;
    fixed |= key_t(kRadixBuckets - 1) << shift;
  }
  return key_value(prefix);
}

// The row's keep threshold: sampling_math.h's row_threshold over the block-wide searches above.
// z must be NaN-free and row_max its max. Every thread must call it; the result is the same in all
// (each search returns the same value in every thread, so all take the same branches).
template <typename acc_t, typename Row>
__device__ acc_t block_row_threshold(const Row& z, int64_t n, acc_t row_max, const RowFilter& f,
                                     FilterOrder order, int64_t min_tokens_to_keep,
                                     RadixScratch& s) {
  return row_threshold(
      n, row_max, f, order, min_tokens_to_keep,
      [&](int64_t k) { return block_kth_largest<acc_t>(z, n, k, s); },
      [&](double min_p) { return block_min_p_threshold<acc_t>(z, n, double(row_max), min_p); },
      [&](double top_p, acc_t lower) {
        return block_top_p_threshold(z, n, row_max, top_p, lower, s);
      });
}

// The warpers' searches (sampling_math.h's warper_range), each over the finite z of a range.

template <typename acc_t, typename Row>
__device__ RangeStats<acc_t> block_range_stats(const Row& z, int64_t n, double row_max,
                                               const KeepRange<acc_t>& r) {
  const RangeStats<acc_t> none{0.0, 0.0, -std::numeric_limits<acc_t>::infinity(), 0};
  RangeStats<acc_t> st = none;
  z.for_each(n, [&](acc_t v, int64_t) {
    if (!in_range(v, r)) return;
    const double y = double(v) - row_max;
    const double m = exp(y);
    st.total += m;
    st.weighted += m * y;
    st.max = st.max < v ? v : st.max;
    ++st.count;
  });
  return block_all_reduce(st, none, [](const RangeStats<acc_t>& a, const RangeStats<acc_t>& b) {
    return RangeStats<acc_t>{a.total + b.total, a.weighted + b.weighted,
                             a.max < b.max ? b.max : a.max, a.count + b.count};
  });
}

// Typical's distance cut: the smallest distance whose cumulative mass (distances ascending, ties
// together) reaches target, by an MSB-first radix search over the distances' bits (non-negative:
// their IEEE bits are ordered), as block_top_p_threshold searches z. +inf when the whole range
// does not reach it. Every thread must call it.
template <typename acc_t, typename Row>
__device__ acc_t block_distance_cut(const Row& z, int64_t n, double row_max,
                                    const KeepRange<acc_t>& r, acc_t c, double target,
                                    RadixScratch& s) {
  using key_t = typename OrderedKey<acc_t>::type;
  constexpr int kKeyBits = int(sizeof(key_t)) * 8;
  key_t prefix = 0, fixed = 0;
  double below = 0;
#pragma unroll 1
  for (int shift = kKeyBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    clear_histogram(s);
    z.for_each(n, [&](acc_t v, int64_t) {
      unsigned digit = kNoDigit;
      if (in_range(v, r)) {
        const key_t key = ordered_key(typical_distance(v, c));
        if ((key & fixed) == prefix) digit = unsigned(key >> shift) & (kRadixBuckets - 1);
      }
      count_digit(s.count, digit);
      add_digit_mass(s, digit, digit != kNoDigit ? exp(double(v) - row_max) : 0.0);
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      // 256 buckets walked by one thread: this search runs only for rows with typical_p.
      int chosen = -1, last = -1;
      double run = below, chosen_below = 0, last_below = 0;
      for (int d = 0; d < kRadixBuckets; ++d) {
        if (s.count[d] == 0) continue;
        last = d;
        last_below = run;
        if (run + s.mass[d] >= target) {
          chosen = d;
          chosen_below = run;
          break;
        }
        run += s.mass[d];
      }
      if (chosen < 0 && fixed != 0) {
        chosen = last;  // rounding of the re-summed masses inside a bucket
        chosen_below = last_below;
      }
      s.digit = chosen >= 0 ? unsigned(chosen) : kNoDigit;
      s.below = chosen_below;
    }
    __syncthreads();
    const unsigned digit = s.digit;
    below = s.below;
    if (digit == kNoDigit) return std::numeric_limits<acc_t>::infinity();  // block-uniform
    prefix |= key_t(digit) << shift;
    fixed |= key_t(kRadixBuckets - 1) << shift;
  }
  return key_value(prefix);
}

// The k-th largest key(v) over the values with valid(v) (1 <= k <= their count), ties counted, as
// block_kth_largest. Every thread must call it.
template <typename acc_t, typename Row, typename Valid, typename Key>
__device__ typename OrderedKey<acc_t>::type block_kth_largest_key(const Row& z, int64_t n,
                                                                  int64_t k, const Valid& valid,
                                                                  const Key& key_of,
                                                                  RadixScratch& s) {
  using key_t = typename OrderedKey<acc_t>::type;
  constexpr int kKeyBits = int(sizeof(key_t)) * 8;
  key_t prefix = 0, fixed = 0;
  unsigned rank = static_cast<unsigned>(k);
#pragma unroll 1
  for (int shift = kKeyBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    clear_histogram(s);
    z.for_each(n, [&](acc_t v, int64_t) {
      unsigned digit = kNoDigit;
      if (valid(v)) {
        const key_t key = key_of(v);
        if ((key & fixed) == prefix) digit = unsigned(key >> shift) & (kRadixBuckets - 1);
      }
      count_digit(s.count, digit);
    });
    __syncthreads();
    if (threadIdx.x < kWarpSize) select_rank_digit(s, rank);
    __syncthreads();
    prefix |= key_t(s.digit) << shift;
    fixed |= key_t(kRadixBuckets - 1) << shift;
    rank = s.rank;
  }
  return prefix;
}

// The row's kept range: block_row_threshold, then sampling_math.h's warper_range over the
// block-wide searches above. Every thread must call it; the result is the same in all.
template <typename acc_t, typename Row>
__device__ KeepRange<acc_t> block_keep_range(const Row& z, int64_t n, acc_t row_max,
                                             const RowFilter& f, FilterOrder order,
                                             int64_t min_tokens_to_keep, RadixScratch& s) {
  using Range = KeepRange<acc_t>;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  const acc_t tau = block_row_threshold(z, n, row_max, f, order, min_tokens_to_keep, s);
  if (!warpers_active(f)) return Range{tau, kInf};
  const double max_d = double(row_max);
  return warper_range(
      tau, row_max, f, min_tokens_to_keep,
      [&](const Range& r) { return block_range_stats(z, n, max_d, r); },
      [&](const Range& r, acc_t c, double target) {
        return block_distance_cut(z, n, max_d, r, c, target, s);
      },
      [&](const Range& r, acc_t c, int64_t k) {
        // The k-th smallest distance: the k-th largest complemented key.
        const auto key = block_kth_largest_key<acc_t>(
            z, n, k, [&](acc_t v) { return in_range(v, r); },
            [&](acc_t v) { return ~ordered_key(typical_distance(v, c)); }, s);
        return key_value(static_cast<decltype(key)>(~key));
      },
      [&](const Range& r, acc_t c, acc_t d) {
        Range mine{kInf, -kInf};
        z.for_each(n, [&](acc_t v, int64_t) {
          if (in_range(v, r) && typical_distance(v, c) <= d) {
            mine.lo = v < mine.lo ? v : mine.lo;
            mine.hi = mine.hi < v ? v : mine.hi;
          }
        });
        return block_all_reduce(mine, Range{kInf, -kInf}, [](const Range& a, const Range& b) {
          return Range{b.lo < a.lo ? b.lo : a.lo, a.hi < b.hi ? b.hi : a.hi};
        });
      },
      [&](const Range& r, double lse, double cut) {
        acc_t t = kInf;
        z.for_each(n, [&](acc_t v, int64_t) {
          if (in_range(v, r) && v < t && exp(double(v) - lse) >= cut) t = v;
        });
        return block_all_reduce(t, kInf, [](acc_t a, acc_t b) { return b < a ? b : a; });
      },
      [&](const Range& r, int64_t k) {
        return key_value(block_kth_largest_key<acc_t>(
            z, n, k, [&](acc_t v) { return in_range(v, r); },
            [](acc_t v) { return ordered_key(v); }, s));
      });
}

// filter_logits: out[row, j] = z_j if z_j >= tau else fill; whole NaN rows for rows with NaN.
// out is contiguous [num_rows, vocab]. One block per row, blockDim.x from sampling_block_threads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, filter_min_blocks_per_sm<acc_t>())
    filter_logits_kernel(const SamplingArgs<scalar_t, acc_t> args, acc_t fill,
                         int64_t min_tokens_to_keep, scalar_t* __restrict__ out) {
  __shared__ RadixScratch scratch;
  const int64_t n = args.vocab;
  const scalar_t fill_value = from_acc<scalar_t>(fill);
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const RowFilter f = row_filter(args, row);
    const auto z = scaled_row(args, row, f.temperature);
    scalar_t* __restrict__ y = out + row * n;
    const RowScan<acc_t> scan = scan_row<acc_t>(z, n);
    if (scan.has_nan) {
      const scalar_t nan = from_acc<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) store_element(y + j, nan);
      continue;
    }
    const KeepRange<acc_t> keep =
        block_keep_range(z, n, scan.max, f, args.order, min_tokens_to_keep, scratch);
    z.for_each(n, [&](acc_t v, int64_t j) {
      store_element(y + j, v >= keep.lo && v <= keep.hi ? from_acc<scalar_t>(v) : fill_value);
    });
  }
}

// A thread's share of the race: its best token so far and the log-sum-exp of its kept tokens.
struct RaceState {
  double score;
  int64_t index;  // kNoIndex: none yet
  LseState<double> lse;
};

// sample: token and float32 log-probability per row. Greedy rows (temperature <= 0 or NaN) take
// the first argmax of the biased logits with log-prob 0; the others race the kept tokens with the
// exponential noise of (seed[row], per_row_seeds ? 0 : row, token). -1 (log-prob NaN) for a NaN
// row or one with nothing to sample, greedy or not (a row of -inf).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kSampleMinBlocksPerSm)
    sample_kernel(const SamplingArgs<scalar_t, acc_t> args, const int64_t* __restrict__ seeds,
                  bool per_row_seeds, int64_t* __restrict__ tokens, float* __restrict__ logprobs) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  __shared__ RadixScratch scratch;
  const int64_t n = args.vocab;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    const RowFilter f = row_filter(args, row);
    const bool greedy = !(f.temperature > 0);
    const auto z = scaled_row(args, row, greedy ? 1.0 : f.temperature);
    const RowScan<acc_t> scan = scan_row<acc_t>(z, n);
    if (scan.has_nan) {
      if (threadIdx.x == 0) {
        tokens[row] = -1;
        logprobs[row] = std::numeric_limits<float>::quiet_NaN();
      }
      continue;
    }
    if (greedy) {
      if (threadIdx.x == 0) {
        // A row of -inf (or an empty vocabulary) has nothing to pick: -1, NaN, as on the CPU.
        const bool none = scan.max == kNegInf || scan.argmax == kNoIndex;
        tokens[row] = none ? -1 : scan.argmax;
        logprobs[row] = none ? std::numeric_limits<float>::quiet_NaN() : 0.f;
      }
      continue;
    }
    const KeepRange<acc_t> keep = block_keep_range(z, n, scan.max, f, args.order, 1, scratch);
    const acc_t tau = keep.lo;

    // The row's max is always kept, so it is the max of every thread's log-sum-exp state; adding
    // exp(z - max) then needs no rescaling. A +inf max makes the lse +inf through lse_merge.
    const double max_d = double(scan.max);
    const bool finite_max = max_d < std::numeric_limits<double>::infinity();
    const uint64_t key = static_cast<uint64_t>(seeds[row]);
    const uint64_t stream = per_row_seeds ? 0 : static_cast<uint64_t>(row);
    RaceState mine{-std::numeric_limits<double>::infinity(), kNoIndex, {max_d, 0.0}};
    // Element by element: the race's Philox and double math on a whole vector at a time would not
    // fit 64 registers.
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const acc_t v = z(j);
      if (!(v >= tau) || v > keep.hi || v == kNegInf) continue;
      if (finite_max) mine.lse.sum += exp(double(v) - max_d);
      const double score =
          race_score(double(v), exponential_noise(key, stream, static_cast<uint64_t>(j)));
      // The first index wins ties, as on the CPU.
      if (ranks_before(score, j, mine.score, mine.index)) {
        mine.score = score;
        mine.index = j;
      }
    }
    const RaceState best = block_reduce(
        mine, RaceState{-std::numeric_limits<double>::infinity(), kNoIndex, lse_empty<double>()},
        [](const RaceState& a, const RaceState& b) {
          RaceState r = ranks_before(b.score, b.index, a.score, a.index) ? b : a;
          r.lse = lse_merge(a.lse, b.lse);
          return r;
        });
    if (threadIdx.x == 0) {
      if (best.index == kNoIndex) {
        tokens[row] = -1;
        logprobs[row] = std::numeric_limits<float>::quiet_NaN();
      } else {
        tokens[row] = best.index;
        logprobs[row] = static_cast<float>(double(z(best.index)) - lse_finalize(best.lse));
      }
    }
  }
}

}  // namespace cuda
}  // namespace logitops

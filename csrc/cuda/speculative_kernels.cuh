// Chain speculative sampling kernel for CUDA (speculative_math.h has the algorithm; the same
// semantics as csrc/cpu/speculative.cpp). Torch-free.
//
// One thread block owns one row of the batch and walks its positions in order; every decision
// (accept, the first rejection, validity) is made from block-wide reductions or from values
// every thread reads alike, so the block takes every branch together. Nothing waits for the host
// and nothing but the outputs is written: no workspace, graph-capturable. The resampled
// distribution max(p - q, 0) is raced with Exp(1) noise, which needs no normalization
// (residual_mass in speculative_math.h says why): one pass over the two rows it reads.
#pragma once

#include <cstdint>
#include <limits>

#include "../common/logit_math.h"
#include "../common/speculative_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Double math and Philox per element; decoding batches give about one row per SM anyway.
constexpr int kSpeculativeMinBlocksPerSm = 1;
// "No token": larger than any index, so it loses every tie.
constexpr int64_t kNoToken = std::numeric_limits<int64_t>::max();

inline int speculative_block_threads(int64_t vocab) { return threads_for(vocab, 1); }

template <typename scalar_t>
struct SpeculativeArgs {
  const scalar_t* target;          // [num_rows, num_drafts + 1, vocab], contiguous
  const scalar_t* draft;           // [num_rows, num_drafts, vocab], contiguous; nullptr if absent
  const int64_t* draft_token_ids;  // [num_rows, num_drafts]
  const double* temperature;       // [num_rows]; logits only
  const int64_t* seeds;            // [num_rows]
  bool per_row_seeds;              // stream 0 (batch invariant) rather than the row index
  bool logits;                     // target / draft hold logits, else probabilities
  int64_t num_rows, num_drafts, vocab;
  int64_t* tokens;    // [num_rows, num_drafts + 1]
  int64_t* accepted;  // [num_rows]
  int64_t* emitted;   // [num_rows]
};

// One distribution: probabilities as given, or softmax(logits / temperature) with the scaled
// logit in acc_t (sampling_math.h's scaled_logit) and the rest in double, as on the CPU.
template <typename scalar_t, typename acc_t>
struct DeviceDistribution {
  const scalar_t* __restrict__ x;  // [vocab]
  bool logits;
  acc_t temperature;
  bool divide;
  double lse;  // logits only

  __device__ __forceinline__ acc_t z_of(scalar_t raw, int64_t j) const {
    return scaled_logit(to_acc<acc_t>(raw), static_cast<const acc_t*>(nullptr), j, temperature,
                        divide);
  }
  __device__ __forceinline__ double prob_of(scalar_t raw, int64_t j) const {
    return logits ? exp(double(z_of(raw, j)) - lse) : double(to_acc<acc_t>(raw));
  }
  __device__ __forceinline__ double prob(int64_t j) const {
    return prob_of(load_element(x + j), j);
  }
};

// A logits row's log-sum-exp of z and the first index of its max (a thread's share, then the
// block's), with NaN / +inf flags.
struct LogitsScan {
  LseState<double> lse;
  double max;
  int64_t argmax;  // kNoToken: none
  int nan;
  int pos_inf;
};

__device__ __forceinline__ LogitsScan merge_scans(const LogitsScan& a, const LogitsScan& b) {
  LogitsScan r = (b.max > a.max || (b.max == a.max && b.argmax < a.argmax)) ? b : a;
  r.lse = lse_merge(a.lse, b.lse);
  r.nan = a.nan | b.nan;
  r.pos_inf = a.pos_inf | b.pos_inf;
  return r;
}

// Every thread must call it; the result is the same in all.
template <typename scalar_t, typename acc_t>
__device__ LogitsScan scan_logits(const DeviceDistribution<scalar_t, acc_t>& d, int64_t n) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const LogitsScan empty{lse_empty<double>(), kNegInf, kNoToken, 0, 0};
  LogitsScan s = empty;
  stream_row<1>(d.x, n, [&](const auto& raw, int64_t j) {
    constexpr int N = sizeof(raw) / sizeof(raw[0]);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const double v = double(d.z_of(raw[k], j + k));
      if (v != v) {
        s.nan = 1;
        continue;
      }
      if (v == std::numeric_limits<double>::infinity()) s.pos_inf = 1;
      // stream_row visits in no particular order: the lower index wins ties.
      if (v > s.max || (v == s.max && v > kNegInf && j + k < s.argmax)) {
        s.max = v;
        s.argmax = j + k;
      }
      lse_push_finite(s.lse, v);
    }
  });
  return block_all_reduce(
      s, empty, [](const LogitsScan& a, const LogitsScan& b) { return merge_scans(a, b); });
}

struct ScanResult {
  double lse;
  int64_t argmax;
  bool valid;
};

// As the CPU's scan_logits: greedy needs a max (no NaN, not all -inf); sampling a finite lse.
__device__ __forceinline__ ScanResult finish_scan(const LogitsScan& s, bool greedy) {
  if (greedy) return {0.0, s.argmax, !s.nan && s.argmax != kNoToken};
  const bool finite = !s.nan && !s.pos_inf && s.lse.max > -std::numeric_limits<double>::infinity();
  return {s.lse.max + log(s.lse.sum), s.argmax, finite};
}

// Calls fn(raw_a, raw_b, j) on this thread's share of a[0, n) and b[0, n) (b may be nullptr: then
// raw_b is raw_a), by 16-byte vectors of a from its first 16-byte boundary, b by vectors too when
// it has a's offset from a boundary (rows of one tensor do when the row length keeps them
// aligned), else element by element.
template <typename scalar_t, typename Fn>
__device__ __forceinline__ void stream_two_rows(const scalar_t* __restrict__ a,
                                                const scalar_t* __restrict__ b, int64_t n,
                                                Fn&& fn) {
  constexpr int kVec = vector_size<scalar_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t threads = blockDim.x;
  const int64_t head = unaligned_head(a, n);
  const int64_t num_vectors = (n - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  const bool b_vectors = b != nullptr && same_alignment(a, b);
  auto one = [&](int64_t j) {
    const scalar_t ra = load_element(a + j);
    fn(ra, b != nullptr ? load_element(b + j) : ra, j);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) one(j);
  for (int64_t j = tail + threadIdx.x; j < n; j += threads) one(j);
  for (int64_t v = threadIdx.x; v < num_vectors; v += threads) {
    const int64_t j = head + v * kVec;
    const Vector va = load_vector<scalar_t, kVec>(a + j, true);
    const Vector vb = b != nullptr ? load_vector<scalar_t, kVec>(b + j, b_vectors) : va;
#pragma unroll
    for (int k = 0; k < kVec; ++k) fn(va.val[k], vb.val[k], j + k);
  }
}

// A thread's best candidate of the residual race, and whether it met a NaN.
struct ResidualRace {
  double score;
  int64_t token;  // kNoToken: no positive mass yet
  int nan;
};

// The race over r_j = max(p_j - q_j, 0) at `position` (speculative_math.h): q is the draft row,
// or the point mass on point_token (point_draft), or 0. Every thread must call it; the result is
// the same in all.
template <typename scalar_t, typename acc_t>
__device__ ResidualRace race_residual(const DeviceDistribution<scalar_t, acc_t>& p,
                                      const DeviceDistribution<scalar_t, acc_t>* q,
                                      bool point_draft, int64_t point_token, int64_t n,
                                      uint64_t key, uint64_t stream, int64_t position) {
  const ResidualRace none{0.0, kNoToken, 0};
  ResidualRace mine = none;
  stream_two_rows(p.x, q != nullptr ? q->x : nullptr, n, [&](scalar_t rp, scalar_t rq, int64_t j) {
    const double pj = p.prob_of(rp, j);
    const double qj =
        q != nullptr ? q->prob_of(rq, j) : (point_draft && j == point_token ? 1.0 : 0.0);
    if (pj != pj || qj != qj) {
      mine.nan = 1;
      return;
    }
    const double r = residual_mass(pj, qj);
    if (!(r > 0)) return;
    const double score = residual_score(
        r, residual_noise(key, stream, static_cast<uint64_t>(position), static_cast<uint64_t>(j)));
    if (race_beats(score, j, mine.score, mine.token)) {
      mine.score = score;
      mine.token = j;
    }
  });
  return block_all_reduce(mine, none, [](const ResidualRace& a, const ResidualRace& b) {
    ResidualRace r = race_beats(b.score, b.token, a.score, a.token) ? b : a;
    r.nan = a.nan | b.nan;
    return r;
  });
}

// speculative_sample: per row, the accepted drafts, the token at the first rejection (or the
// bonus token) and -1 after it; accepted = positions whose test passes (each on its own, as
// FlashInfer counts), emitted = drafts before the first rejection. An invalid row (NaN or, with
// logits, a non-finite log-sum-exp) gives -1 everywhere and counts of 0. An out-of-range draft
// id is rejected without reading anything for it. One block per row, blockDim.x from
// speculative_block_threads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kSpeculativeMinBlocksPerSm)
    speculative_sample_kernel(const SpeculativeArgs<scalar_t> args) {
  const int64_t n = args.vocab, drafts = args.num_drafts;
  for (int64_t b = blockIdx.x; b < args.num_rows; b += gridDim.x) {
    const double temperature = args.temperature[b];
    const bool greedy = args.logits && !(temperature > 0);
    const acc_t t = static_cast<acc_t>(greedy || !args.logits ? 1.0 : temperature);
    const bool divide = t != acc_t(1);
    const int64_t* row_ids = args.draft_token_ids + b * drafts;
    const scalar_t* t_row = args.target + b * (drafts + 1) * n;
    const scalar_t* d_row = args.draft != nullptr ? args.draft + b * drafts * n : nullptr;
    const uint64_t key = static_cast<uint64_t>(args.seeds[b]);
    const uint64_t stream = args.per_row_seeds ? 0 : static_cast<uint64_t>(b);
    const bool scan_drafts = args.logits && !greedy && d_row != nullptr;

    bool valid = true;
    int64_t pos = drafts, num_accepted = 0, pos_argmax = kNoToken;
    double pos_lse_t = 0, pos_lse_d = 0;
    // Positions in order; the scans are block-wide, the gathered probabilities read alike by
    // every thread, so every branch below is block-uniform.
    for (int64_t i = 0; i <= drafts && valid; ++i) {
      ScanResult st{0.0, kNoToken, true}, sd{0.0, kNoToken, true};
      if (args.logits) {
        DeviceDistribution<scalar_t, acc_t> target{t_row + i * n, true, t, divide, 0.0};
        st = finish_scan(scan_logits(target, n), greedy);
        valid &= st.valid;
      }
      if (i == drafts) {  // the bonus row
        if (pos == drafts) {
          pos_lse_t = st.lse;
          pos_argmax = st.argmax;
        }
        break;
      }
      if (scan_drafts) {
        DeviceDistribution<scalar_t, acc_t> draft{d_row + i * n, true, t, divide, 0.0};
        sd = finish_scan(scan_logits(draft, n), false);
        valid &= sd.valid;
      }
      if (!valid) break;
      const int64_t d = row_ids[i];
      const bool in_range = d >= 0 && d < n;
      bool ok = false;
      if (greedy) {
        ok = in_range && d == st.argmax;
      } else if (in_range) {
        const DeviceDistribution<scalar_t, acc_t> target{t_row + i * n, args.logits, t, divide,
                                                         st.lse};
        const double pt = target.prob(d);
        double pd = 1.0;
        if (d_row != nullptr) {
          const DeviceDistribution<scalar_t, acc_t> draft{d_row + i * n, args.logits, t, divide,
                                                          sd.lse};
          pd = draft.prob(d);
        }
        if (pt != pt || pd != pd) {
          valid = false;
          break;
        }
        ok = draft_accepted(acceptance_uniform(key, stream, static_cast<uint64_t>(i)), pt, pd);
      }
      num_accepted += ok;
      if (!ok && pos == drafts) {
        pos = i;
        pos_lse_t = st.lse;
        pos_lse_d = sd.lse;
        pos_argmax = st.argmax;
      }
    }

    int64_t token = -1;
    if (valid) {
      if (greedy) {
        token = pos_argmax;
      } else {
        const bool has_draft = pos < drafts;
        const DeviceDistribution<scalar_t, acc_t> p{t_row + pos * n, args.logits, t, divide,
                                                    pos_lse_t};
        const DeviceDistribution<scalar_t, acc_t> q{
            has_draft && d_row != nullptr ? d_row + pos * n : nullptr, args.logits, t, divide,
            pos_lse_d};
        ResidualRace r = race_residual(p, has_draft && d_row != nullptr ? &q : nullptr,
                                       has_draft && d_row == nullptr, has_draft ? row_ids[pos] : -1,
                                       n, key, stream, pos);
        if (!r.nan && r.token == kNoToken && has_draft) {
          // Nothing left of p - q (p <= q everywhere): draw from p itself.
          r = race_residual(p, static_cast<const DeviceDistribution<scalar_t, acc_t>*>(nullptr),
                            false, -1, n, key, stream, pos);
        }
        valid = !r.nan;
        token = r.token == kNoToken ? -1 : r.token;
      }
    }

    int64_t* out = args.tokens + b * (drafts + 1);
    for (int64_t i = threadIdx.x; i <= drafts; i += blockDim.x) {
      int64_t value = -1;
      if (valid) value = i < pos ? row_ids[i] : (i == pos ? token : -1);
      out[i] = value;
    }
    if (threadIdx.x == 0) {
      args.accepted[b] = valid ? num_accepted : 0;
      args.emitted[b] = valid ? pos : 0;
    }
  }
}

}  // namespace cuda
}  // namespace logitops

// Distillation kernels for CUDA: soft_weight times a divergence (forward / reverse KL,
// generalized JSD) between softmax(teacher / T) and softmax(student / T), plus hard_weight times
// the student's cross-entropy at temperature 1 against the target. Torch-free: the per-element
// math is divergence_term / divergence_grad / distill_hard_grad of logit_math.h, shared with the
// CPU kernels.
//
// One thread block per row, 16-byte vector loads of both rows (the teacher's by vectors too when
// it sits at the student's offset from a 16-byte boundary). Per row: pass 1 computes the three
// log-sum-exps (student and teacher at T, the student at 1 unless T == 1 makes it the same one)
// with the online merge; pass 2 the loss and S = sum_j q_j g_j (forward KL: S = -1, and its
// gradient is written in pass 2); pass 3 the gradient. The launchers bound the rows in flight by
// the L2's size (l2_resident_row_grid), so that passes 2 and 3 read the rows from L2: the
// student and the teacher cross HBM once, the gradient once. Ignored rows (target ==
// ignore_index) have loss 0 and gradient 0 and read nothing.
#pragma once

#include <cstdint>

#include "../common/logit_math.h"
#include "cuda_utils.cuh"
#include "row_reduce.cuh"

namespace logitops {
namespace cuda {

// Threads per row: about eight elements each.
// One block per SM at the most threads: the fused row (student and teacher lse at T, the student's
// at 1, and the pass sums) needs more than the 64 registers two blocks of 512 would leave, and
// ptxas spilled there (sm_80 / sm_90, fp16 / bf16 / fp64); the grid comes from
// l2_resident_row_grid, which counts the blocks that fit.
constexpr int kDistillMinBlocksPerSm = 1;

inline int distill_block_threads(int64_t num_classes) { return threads_for(num_classes, 8); }

// Everything the kernels read that does not change from row to row.
template <typename scalar_t, typename acc_t>
struct DistillArgs {
  const scalar_t* student;  // [num_rows, num_classes], unit stride along classes
  const scalar_t* teacher;  // same shape, unit stride along classes
  int64_t student_stride;   // in elements
  int64_t teacher_stride;
  int64_t num_rows;
  int64_t num_classes;
  const int64_t* target;  // [num_rows], contiguous; nullptr: every row counts
  int64_t ignore_index;
  acc_t inv_temperature;
  DivergenceKind kind;
  acc_t beta;
  acc_t soft_weight;  // 0: no divergence term (the teacher is not read)
  acc_t hard_weight;  // 0: no cross-entropy term; else target is not nullptr
};

// The per-thread (then block) log-sum-exp states of one row.
template <typename acc_t>
struct DistillLse {
  LseState<acc_t> student;  // of student / T
  LseState<acc_t> teacher;  // of teacher / T
  LseState<acc_t> hard;     // of the student at temperature 1 (when T != 1)
};

template <typename acc_t>
struct DistillSums {
  acc_t loss;
  acc_t row_s;  // sum_j q_j g_j
};

// Stores N values at p: one 16-byte store when they are a whole vector and p is aligned, else
// element by element.
template <typename scalar_t, int N>
__device__ __forceinline__ void store_values(scalar_t* p, const scalar_t (&values)[N],
                                             bool aligned) {
  if constexpr (N == vector_size<scalar_t>()) {
    AlignedVector<scalar_t, N> out;
#pragma unroll
    for (int k = 0; k < N; ++k) out.val[k] = values[k];
    store_vector<scalar_t, N>(p, out, aligned);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) store_element(p + k, values[k]);
  }
}

// Calls fn(s, t, j) on this thread's share of columns [0, n) of a student and a teacher row: s
// and t the N consecutive elements from j of each (`const scalar_t (&)[N]`), by 16-byte vectors
// of the student (stream_row's peeling), the teacher's loaded by vectors when teacher_aligned,
// not loaded at all (zeros) unless read_teacher.
template <int kUnroll, typename scalar_t, typename Fn>
__device__ __forceinline__ void stream_row_pair(const scalar_t* __restrict__ student,
                                                const scalar_t* __restrict__ teacher, int64_t n,
                                                bool read_teacher, bool teacher_aligned, Fn&& fn) {
  constexpr int kVec = vector_size<scalar_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const int64_t threads = blockDim.x;
  const int64_t head = unaligned_head(student, n);
  const int64_t num_vectors = (n - head) / kVec;
  const int64_t tail = head + num_vectors * kVec;
  auto one = [&](int64_t j) {
    const scalar_t s[1] = {load_element(student + j)};
    const scalar_t t[1] = {read_teacher ? load_element(teacher + j) : scalar_t{}};
    fn(s, t, j);
  };
  auto teacher_vector = [&](int64_t j) -> Vector {
    if (!read_teacher) return Vector{};
    return load_vector<scalar_t, kVec>(teacher + j, teacher_aligned);
  };
  for (int64_t j = threadIdx.x; j < head; j += threads) one(j);
  for (int64_t j = tail + threadIdx.x; j < n; j += threads) one(j);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * threads < num_vectors; v += kUnroll * threads) {
    Vector s_batch[kUnroll], t_batch[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = head + (v + u * threads) * kVec;
      s_batch[u] = load_vector<scalar_t, kVec>(student + j, true);
      t_batch[u] = teacher_vector(j);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      fn(s_batch[u].val, t_batch[u].val, head + (v + u * threads) * kVec);
    }
  }
  for (; v < num_vectors; v += threads) {
    const int64_t j = head + v * kVec;
    const Vector s_last = load_vector<scalar_t, kVec>(student + j, true);
    const Vector t_last = teacher_vector(j);
    fn(s_last.val, t_last.val, j);
  }
}

// Computes one row with the whole block (every thread must call it; the row is not ignored).
// Returns the row's loss in thread 0 (unspecified elsewhere). Writes the gradient (scales: the
// row's upstream times each term's weight, the soft one over T) into grad_row (contiguous) unless
// it is nullptr. need_loss false (the backward: grad_row must not be nullptr) lets the forward KL
// skip the loss.
template <typename scalar_t, typename acc_t>
__device__ acc_t distill_row(const DistillArgs<scalar_t, acc_t>& args, int64_t row, bool need_loss,
                             DistillScales<acc_t> scales, scalar_t* __restrict__ grad_row) {
  constexpr int kUnroll = unroll_for<acc_t>();
  const int64_t num_classes = args.num_classes;
  const acc_t inv_t = args.inv_temperature;
  const bool soft = args.soft_weight != acc_t(0), hard = args.hard_weight != acc_t(0);
  // T == 1: the hard term's softmax is the soft term's student softmax (s * 1 is s exactly).
  const bool hard_own_lse = hard && !(soft && inv_t == acc_t(1));
  const scalar_t* __restrict__ student = args.student + row * args.student_stride;
  const scalar_t* __restrict__ teacher = args.teacher + row * args.teacher_stride;
  const bool teacher_aligned = same_alignment(student, teacher);
  const bool grad_aligned = grad_row != nullptr && same_alignment(student, grad_row);

  // Pass 1: the log-sum-exps.
  const DistillLse<acc_t> empty{lse_empty<acc_t>(), lse_empty<acc_t>(), lse_empty<acc_t>()};
  DistillLse<acc_t> part = empty;
  stream_row_pair<kUnroll>(student, teacher, num_classes, soft, teacher_aligned,
                           [&](const auto& s_raw, const auto& t_raw, int64_t) {
                             constexpr int N = sizeof(s_raw) / sizeof(s_raw[0]);
                             acc_t x[N];
                             if (soft) {
#pragma unroll
                               for (int k = 0; k < N; ++k) x[k] = to_acc<acc_t>(s_raw[k]) * inv_t;
                               lse_push_values(part.student, x);
#pragma unroll
                               for (int k = 0; k < N; ++k) x[k] = to_acc<acc_t>(t_raw[k]) * inv_t;
                               lse_push_values(part.teacher, x);
                             }
                             if (hard_own_lse) {
#pragma unroll
                               for (int k = 0; k < N; ++k) x[k] = to_acc<acc_t>(s_raw[k]);
                               lse_push_values(part.hard, x);
                             }
                           });
  part = block_all_reduce(part, empty, [](const DistillLse<acc_t>& a, const DistillLse<acc_t>& b) {
    return DistillLse<acc_t>{lse_merge(a.student, b.student), lse_merge(a.teacher, b.teacher),
                             lse_merge(a.hard, b.hard)};
  });
  const LogSoftmaxPair<acc_t> logs = log_softmax_pair(part.teacher, part.student);
  const LseState<acc_t> hard_state = hard_own_lse ? part.hard : part.student;
  const LogSoftmaxRow<acc_t> hard_logs = log_softmax_row(hard_state);
  const int64_t y = hard ? args.target[row] : int64_t(-1);
  acc_t hard_loss = acc_t(0);
  if (hard && threadIdx.x == 0) {
    hard_loss = args.hard_weight * lse_minus(hard_state, to_acc<acc_t>(student[y]));
  }

  const DivergenceKind kind = args.kind;
  const acc_t beta = args.beta;
  auto term_at = [&](acc_t s_raw, acc_t t_raw) {
    const acc_t s = s_raw * inv_t, t = t_raw * inv_t;
    return divergence_term(kind, beta, logs.lp(t), logs.lq(s), logs.lp_minus_lq(t, s));
  };
  // One element's gradient, from its term when the divergence is on.
  auto element_grad = [&](acc_t s_raw, const DivergenceTerm<acc_t>& term, acc_t row_s, int64_t j) {
    acc_t g = soft ? divergence_grad(term, row_s, scales.soft) : acc_t(0);
    if (hard) {
      const acc_t p = hard_own_lse ? prob_from_log(hard_logs.log_prob(s_raw)) : term.q;
      g += distill_hard_grad(p, j == y, scales.hard);
    }
    return g;
  };
  // Writes the gradient of the N elements from j.
  auto write = [&](const auto& s_raw, const auto& t_raw, int64_t j, acc_t row_s) {
    constexpr int N = sizeof(s_raw) / sizeof(s_raw[0]);
    scalar_t out[N];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const acc_t s = to_acc<acc_t>(s_raw[k]);
      const DivergenceTerm<acc_t> term =
          soft ? term_at(s, to_acc<acc_t>(t_raw[k])) : DivergenceTerm<acc_t>{};
      out[k] = from_acc<scalar_t>(element_grad(s, term, row_s, j + k));
    }
    store_values(grad_row + j, out, grad_aligned);
  };

  // The cross-entropy alone, or a forward KL's gradient without its loss: one more pass writes
  // the gradient (S = -1 for the forward KL).
  if (!soft || (kind == kForwardKl && !need_loss)) {
    if (grad_row != nullptr) {
      stream_row_pair<kUnroll>(student, teacher, num_classes, soft, teacher_aligned,
                               [&](const auto& s_raw, const auto& t_raw, int64_t j) {
                                 write(s_raw, t_raw, j, acc_t(-1));
                               });
    }
    return hard_loss;
  }

  // Pass 2: the loss and S; the forward KL knows S = -1 and writes its gradient here.
  const bool forward_kl = kind == kForwardKl;
  DistillSums<acc_t> sums{acc_t(0), acc_t(0)};
  stream_row_pair<kUnroll>(student, teacher, num_classes, true, teacher_aligned,
                           [&](const auto& s_raw, const auto& t_raw, int64_t j) {
                             constexpr int N = sizeof(s_raw) / sizeof(s_raw[0]);
                             scalar_t out[N];
#pragma unroll
                             for (int k = 0; k < N; ++k) {
                               const acc_t s = to_acc<acc_t>(s_raw[k]);
                               const auto term = term_at(s, to_acc<acc_t>(t_raw[k]));
                               sums.loss += term.loss;
                               sums.row_s += term.q_g;
                               if (forward_kl)
                                 out[k] =
                                     from_acc<scalar_t>(element_grad(s, term, acc_t(-1), j + k));
                             }
                             if (forward_kl && grad_row != nullptr)
                               store_values(grad_row + j, out, grad_aligned);
                           });
  sums = block_all_reduce(sums, DistillSums<acc_t>{acc_t(0), acc_t(0)},
                          [](const DistillSums<acc_t>& a, const DistillSums<acc_t>& b) {
                            return DistillSums<acc_t>{a.loss + b.loss, a.row_s + b.row_s};
                          });
  // soft + hard, or the divergence alone as before the hard term existed (-0 stays -0).
  const acc_t soft_loss = args.soft_weight * sums.loss;
  const acc_t loss = hard ? soft_loss + hard_loss : soft_loss;
  if (forward_kl || grad_row == nullptr) return loss;

  // Pass 3: the gradient q_j (g_j - S), scaled, plus the hard term's.
  stream_row_pair<kUnroll>(
      student, teacher, num_classes, true, teacher_aligned,
      [&](const auto& s_raw, const auto& t_raw, int64_t j) { write(s_raw, t_raw, j, sums.row_s); });
  return loss;
}

template <typename scalar_t>
__device__ __forceinline__ void zero_row(scalar_t* __restrict__ grad_row, int64_t num_classes) {
  for (int64_t j = threadIdx.x; j < num_classes; j += blockDim.x) {
    store_element(grad_row + j, from_acc<scalar_t>(0.0f));
  }
}

// Forward: loss_out[row] (accumulation dtype) and, when grad is not nullptr, the gradient of the
// reduced loss for an upstream gradient of 1: 1 / row_count (a device scalar) per row for
// batchmean (`mean`), 1 otherwise. grad is contiguous [num_rows, num_classes]. Blocks loop over
// rows; blockDim.x from distill_block_threads. A target out of range (with the hard term on)
// makes its row's loss and gradient NaN.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kDistillMinBlocksPerSm)
    distill_forward_kernel(const DistillArgs<scalar_t, acc_t> args,
                           const acc_t* __restrict__ row_count, bool mean, double temperature,
                           double soft_weight, double hard_weight, acc_t* __restrict__ loss_out,
                           scalar_t* __restrict__ grad) {
  const int64_t num_classes = args.num_classes;
  DistillScales<acc_t> scales{acc_t(0), acc_t(0)};
  if (grad != nullptr) {
    // As the CPU kernel: in double, rounded once.
    const double upstream = mean ? 1.0 / double(*row_count) : 1.0;
    scales = distill_scales<acc_t, double>(upstream, soft_weight, hard_weight, temperature);
  }
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    scalar_t* grad_row = grad != nullptr ? grad + row * num_classes : nullptr;
    const int64_t t = args.target != nullptr ? args.target[row] : int64_t(0);
    // Uniform across the block, so the early exits skip no barrier that others wait at.
    if (args.target != nullptr && t == args.ignore_index) {
      if (threadIdx.x == 0) loss_out[row] = acc_t(0);
      if (grad_row != nullptr) zero_row(grad_row, num_classes);
      continue;
    }
    if (args.hard_weight != acc_t(0) && !target_is_valid(t, num_classes, args.ignore_index)) {
      constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
      if (threadIdx.x == 0) loss_out[row] = kNaN;
      if (grad_row != nullptr) {
        for (int64_t j = threadIdx.x; j < num_classes; j += blockDim.x) {
          store_element(grad_row + j, from_acc<scalar_t>(kNaN));
        }
      }
      continue;
    }
    const acc_t loss = distill_row(args, row, true, scales, grad_row);
    if (threadIdx.x == 0) loss_out[row] = loss;
  }
}

// Backward: grad[row, :] = d loss_row / d student times upstream[row]; ignored rows are 0, rows
// with a target out of range (with the hard term on) NaN.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxBlockThreads, kDistillMinBlocksPerSm)
    distill_backward_kernel(const DistillArgs<scalar_t, acc_t> args,
                            const acc_t* __restrict__ upstream, acc_t temperature,
                            acc_t soft_weight, acc_t hard_weight, scalar_t* __restrict__ grad) {
  const int64_t num_classes = args.num_classes;
  for (int64_t row = blockIdx.x; row < args.num_rows; row += gridDim.x) {
    scalar_t* grad_row = grad + row * num_classes;
    const int64_t t = args.target != nullptr ? args.target[row] : int64_t(0);
    if (args.target != nullptr && t == args.ignore_index) {
      zero_row(grad_row, num_classes);
      continue;
    }
    if (args.hard_weight != acc_t(0) && !target_is_valid(t, num_classes, args.ignore_index)) {
      for (int64_t j = threadIdx.x; j < num_classes; j += blockDim.x) {
        store_element(grad_row + j, from_acc<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN()));
      }
      continue;
    }
    distill_row(args, row, false,
                distill_scales<acc_t, acc_t>(upstream[row], soft_weight, hard_weight, temperature),
                grad_row);
  }
}

}  // namespace cuda
}  // namespace logitops

// BCE-with-logits kernels for CUDA. Torch-free: the math is bce_with_logits() of logit_math.h,
// shared with the CPU kernel.
//
// Work is split by the Tiling of tiling.h: one tile per block iteration, a fixed partition of
// [rows, cols] that depends only on the shape. A reduction writes one partial per tile and a
// single block sums the partials in order, so a mean or sum is the same bits on any GPU and for
// any grid size, without atomics.
//
// Inside a tile the block is split into groups of a power-of-two number of threads, one row at a
// time per group, so that narrow rows (a few dozen classes) still keep every thread busy. A group
// streams its row segment through 16-byte vectors, peeling the elements before the input's first
// 16-byte boundary and after its last one.
#pragma once

#include <cstdint>

#include "../common/logit_math.h"
#include "../common/tiling.h"
#include "cuda_utils.cuh"

namespace logitops {
namespace cuda {

// Threads of the elementwise kernel. A tile of kBceTileElems elements gives each thread a few
// vectors; small tiles keep a few million elements spread over every SM.
constexpr int kBceThreads = 256;
constexpr int64_t kBceTileElems = 4096;
// The final sum of the partials runs in one block.
constexpr int kBceFinishThreads = kMaxBlockThreads;

// A [rows, cols] operand in the accumulation dtype read through any strides; stride 0 broadcasts
// (a per-class weight expanded over rows, or a scalar upstream gradient over everything).
template <typename acc_t>
struct StridedOperand {
  const acc_t* data;  // nullptr when absent
  int64_t row_stride, col_stride;
};

template <typename scalar_t, typename acc_t>
struct BceArgs {
  const scalar_t* input;   // [rows, cols], unit column stride
  const scalar_t* target;  // [rows, cols], unit column stride
  int64_t input_stride, target_stride;
  StridedOperand<acc_t> weight;      // data nullptr: all ones
  StridedOperand<acc_t> pos_weight;  // data nullptr: all ones
  // Upstream gradient of each element's loss for the backward; data nullptr in the forward, where
  // grad_scale (1, or 1 / numel for a mean) takes its place. For reduction "none" it is read in
  // the input's dtype instead, from upstream_elements (unit column stride), without a copy.
  StridedOperand<acc_t> upstream;
  const scalar_t* upstream_elements;  // nullptr unless "none"
  int64_t upstream_stride;
  acc_t grad_scale;
  Tiling tiling;
  int group_shift;  // log2 of the threads that share a row
};

// log2 of the threads sharing one row segment of a tile: a power of two in [1, kBceThreads] with
// about two vectors each.
template <typename scalar_t>
inline int bce_group_shift(int64_t col_tile) {
  const int group_threads = threads_for(vector_count<scalar_t>(col_tile), 2, 1, kBceThreads);
  int shift = 0;
  while ((1 << shift) < group_threads) ++shift;
  return shift;
}

// One row of a StridedOperand from the tile's first column on. The row offset is taken once per
// row and columns are indexed from the tile (int), which keeps the vector loop within 80 registers.
template <typename acc_t>
struct RowOperand {
  const acc_t* p;  // nullptr when the operand is absent
  int64_t col_stride;

  __device__ __forceinline__ RowOperand(const StridedOperand<acc_t>& o, int64_t r, int64_t c0)
      : p(o.data != nullptr ? o.data + r * o.row_stride + c0 * o.col_stride : nullptr),
        col_stride(o.col_stride) {}
  __device__ __forceinline__ acc_t at(int j, acc_t absent) const {
    return p != nullptr ? load_element(p + j * col_stride) : absent;
  }
};

// One pass over input and target. Writes, each when its pointer is not null: the elementwise loss
// (reduction "none"), the gradient, and one partial loss sum per tile (a mean or sum). loss and
// grad are contiguous [rows, cols]. blockDim.x must be kBceThreads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBceThreads)
    bce_with_logits_kernel(const BceArgs<scalar_t, acc_t> args, scalar_t* __restrict__ loss,
                           scalar_t* __restrict__ grad, double* __restrict__ partials) {
  constexpr int kVec = vector_size<scalar_t>();
  using Vector = AlignedVector<scalar_t, kVec>;
  const Tiling& tiling = args.tiling;
  const int64_t cols = tiling.cols;
  const int group_threads = 1 << args.group_shift;
  const int lane = threadIdx.x & (group_threads - 1);
  const int group = threadIdx.x >> args.group_shift;
  const int num_groups = kBceThreads >> args.group_shift;

  for (int64_t tile = blockIdx.x; tile < tiling.num_tiles(); tile += gridDim.x) {
    const int64_t row_tile = tile / tiling.col_tiles;
    const int64_t r0 = row_tile * tiling.row_tile;
    const int64_t r1 = r0 + tiling.row_tile < tiling.rows ? r0 + tiling.row_tile : tiling.rows;
    const int64_t c0 = (tile - row_tile * tiling.col_tiles) * tiling.col_tile;
    // Columns of this tile; at most kBceTileElems, so offsets inside a row segment fit an int.
    const int n = static_cast<int>(c0 + tiling.col_tile < cols ? tiling.col_tile : cols - c0);
    // A thread's share of the tile's loss; few enough elements that acc_t is accurate.
    acc_t sum = acc_t(0);

    for (int64_t r = r0 + group; r < r1; r += num_groups) {
      const scalar_t* __restrict__ z = args.input + r * args.input_stride + c0;
      const scalar_t* __restrict__ y = args.target + r * args.target_stride + c0;
      scalar_t* __restrict__ loss_row = loss != nullptr ? loss + r * cols + c0 : nullptr;
      scalar_t* __restrict__ grad_row = grad != nullptr ? grad + r * cols + c0 : nullptr;

      const RowOperand<acc_t> weight(args.weight, r, c0);
      const RowOperand<acc_t> pos_weight(args.pos_weight, r, c0);
      const RowOperand<acc_t> upstream(args.upstream, r, c0);
      const scalar_t* __restrict__ up_row =
          args.upstream_elements != nullptr ? args.upstream_elements + r * args.upstream_stride + c0
                                            : nullptr;

      // Loss and gradient of column c0 + j, weighted, the gradient times its upstream. The same
      // order of products as the CPU kernel: (grad * w) * upstream.
      auto element = [&](acc_t zj, acc_t yj, acc_t upj, int j) {
        BceTerms<acc_t> t = bce_with_logits(zj, yj, pos_weight.at(j, acc_t(1)));
        if (weight.p != nullptr) {
          const acc_t w = weight.at(j, acc_t(1));
          t.loss *= w;
          t.grad *= w;
        }
        t.grad *= up_row != nullptr ? upj : upstream.at(j, args.grad_scale);
        sum += t.loss;
        return t;
      };
      auto scalar_element = [&](int j) {
        const acc_t upj = up_row != nullptr ? to_acc<acc_t>(load_element(up_row + j)) : acc_t(0);
        const BceTerms<acc_t> t =
            element(to_acc<acc_t>(load_element(z + j)), to_acc<acc_t>(load_element(y + j)), upj, j);
        if (loss_row != nullptr) store_element(loss_row + j, from_acc<scalar_t>(t.loss));
        if (grad_row != nullptr) store_element(grad_row + j, from_acc<scalar_t>(t.grad));
      };

      // Vectors are aligned on the input; every other operand with the same offset from a
      // 16-byte boundary (all of them, for contiguous tensors whose row starts line up) is read or
      // written by vectors too, the rest element by element.
      const int head = static_cast<int>(unaligned_head(z, n));
      const int num_vectors = (n - head) / kVec;
      const int tail = head + num_vectors * kVec;
      const bool y_aligned = same_alignment(y, z);
      const bool loss_aligned = same_alignment(loss_row, z);
      const bool grad_aligned = same_alignment(grad_row, z);
      const bool up_aligned = same_alignment(up_row, z);

      for (int j = lane; j < head; j += group_threads) scalar_element(j);
      for (int j = tail + lane; j < n; j += group_threads) scalar_element(j);
      for (int v = lane; v < num_vectors; v += group_threads) {
        const int j = head + v * kVec;
        const Vector zv = load_vector<scalar_t, kVec>(z + j, true);
        const Vector yv = load_vector<scalar_t, kVec>(y + j, y_aligned);
        const Vector uv =
            up_row != nullptr ? load_vector<scalar_t, kVec>(up_row + j, up_aligned) : Vector{};
        Vector loss_v, grad_v;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const BceTerms<acc_t> t = element(to_acc<acc_t>(zv.val[k]), to_acc<acc_t>(yv.val[k]),
                                            to_acc<acc_t>(uv.val[k]), j + k);
          loss_v.val[k] = from_acc<scalar_t>(t.loss);
          grad_v.val[k] = from_acc<scalar_t>(t.grad);
        }
        if (loss_row != nullptr) store_vector<scalar_t, kVec>(loss_row + j, loss_v, loss_aligned);
        if (grad_row != nullptr) store_vector<scalar_t, kVec>(grad_row + j, grad_v, grad_aligned);
      }
    }

    if (partials != nullptr) {
      const double total =
          block_reduce(static_cast<double>(sum), 0.0, [](double a, double b) { return a + b; });
      if (threadIdx.x == 0) partials[tile] = total;
    }
  }
}

// Sums the per-tile partials in a fixed order (each thread a fixed strided subset, then the
// block's fixed tree), divides by divisor (numel for a mean, 1 for a sum) in double and writes
// the 0-dim loss rounded through acc_t, as the CPU kernel does. One block of kBceFinishThreads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBceFinishThreads)
    bce_with_logits_finish_kernel(const double* __restrict__ partials, int64_t num_partials,
                                  double divisor, scalar_t* __restrict__ out) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < num_partials; i += blockDim.x) sum += partials[i];
  sum = block_reduce(sum, 0.0, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) out[0] = from_acc<scalar_t>(static_cast<acc_t>(sum / divisor));
}

}  // namespace cuda
}  // namespace logitops

// Generic helpers shared by the CUDA kernels and their launchers: launch shapes, element types,
// conversions, 16-byte vectors and a deterministic block reduction. Torch-free, like the kernels
// that include it.
#pragma once

#ifdef LOGITOPS_CUDA_EMULATION
#include "../emulation/cuda_emulation.h"  // the toolkit's headers, and the device side on the host
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Declared rather than included so that this header stays torch-free; only the names are used.
namespace c10 {
struct BFloat16;
struct Half;
}  // namespace c10

namespace logitops {
namespace cuda {

constexpr int kVectorBytes = 16;
constexpr int kWarpSize = 32;
// Largest block that block_reduce supports.
constexpr int kMaxBlockThreads = 512;

// Grid of one block per row for the row kernels; past 2^31 - 1 rows they loop over rows.
inline dim3 row_grid(int64_t num_rows) {
  const int64_t blocks = num_rows < 2147483647 ? num_rows : 2147483647;
  return dim3(static_cast<unsigned>(blocks));
}

// Threads for `items` units of work (elements, vectors) at about `per_thread` each: the smallest
// power of two in [min_threads, max_threads] that covers them. The default minimum is one warp,
// since block_reduce relies on whole warps.
inline int threads_for(int64_t items, int per_thread, int min_threads = kWarpSize,
                       int max_threads = kMaxBlockThreads) {
  int threads = min_threads;
  while (threads < max_threads && int64_t(threads) * per_thread < items) threads *= 2;
  return threads;
}

// ATen's element types and the CUDA ones the kernels use (same size and bits).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};

// Elements of scalar_t in one 16-byte load or store.
template <typename scalar_t>
constexpr int vector_size() {
  return kVectorBytes / static_cast<int>(sizeof(scalar_t));
}

// 16-byte vectors that n elements of scalar_t span, the last one possibly partial.
template <typename scalar_t>
constexpr int64_t vector_count(int64_t n) {
  return (n + vector_size<scalar_t>() - 1) / vector_size<scalar_t>();
}

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

// Whether a and b are equally far from their previous 16-byte boundary, so that peeling the head
// of one aligns the other as well. Rows of tensors from the caching allocator usually are.
template <typename A, typename B>
__device__ __forceinline__ bool same_alignment(const A* a, const B* b) {
  return reinterpret_cast<uintptr_t>(a) % kVectorBytes ==
         reinterpret_cast<uintptr_t>(b) % kVectorBytes;
}

// Every access of a kernel to the rows it streams (logits, targets, gradients, losses) goes
// through the four helpers below: the emulator counts their bytes (cuda_emulation.h) and checks
// the alignment of each vector access (a misaligned one is an error on the GPU).
template <typename T>
__device__ __forceinline__ T load_element(const T* p) {
#ifdef LOGITOPS_CUDA_EMULATION
  emulation::record_access(p, sizeof(T), false);
#endif
  return *p;
}

template <typename T>
__device__ __forceinline__ void store_element(T* p, T value) {
#ifdef LOGITOPS_CUDA_EMULATION
  emulation::record_access(p, sizeof(T), true);
#endif
  *p = value;
}

#ifdef LOGITOPS_CUDA_EMULATION
template <typename Vector>
void check_vector_address(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(Vector) != 0) {
    emulation::fail("misaligned " + std::to_string(sizeof(Vector)) + "-byte vector access");
  }
}
#endif

// N elements starting at p: one 16-byte access when `aligned` (p sits at the offset the caller
// vectorized on, see same_alignment), else N scalar ones.
template <typename T, int N>
__device__ __forceinline__ AlignedVector<T, N> load_vector(const T* p, bool aligned) {
  using Vector = AlignedVector<T, N>;
  if (aligned) {
#ifdef LOGITOPS_CUDA_EMULATION
    check_vector_address<Vector>(p);
    emulation::record_access(p, sizeof(Vector), false);
#endif
    return *reinterpret_cast<const Vector*>(p);
  }
  Vector v;
#pragma unroll
  for (int k = 0; k < N; ++k) v.val[k] = load_element(p + k);
  return v;
}

// The aligned store is one 128-bit streaming store (st.global.cs.v4): written through the four
// words, because a store of the struct itself may be split into one store per element (it was,
// for the cross-entropy gradient), and evict-first, because each output is written once.
template <typename T, int N>
__device__ __forceinline__ void store_vector(T* p, const AlignedVector<T, N>& v, bool aligned) {
  using Vector = AlignedVector<T, N>;
  static_assert(sizeof(Vector) == kVectorBytes, "store_vector writes 16-byte vectors");
  if (aligned) {
#ifdef LOGITOPS_CUDA_EMULATION
    check_vector_address<Vector>(p);
    emulation::record_access(p, sizeof(Vector), true);
    *reinterpret_cast<Vector*>(p) = v;
#else
    uint4 words;
    memcpy(&words, &v, sizeof(words));
    __stcs(reinterpret_cast<uint4*>(p), words);
#endif
    return;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) store_element(p + k, v.val[k]);
}

// Launches kernel<<<grid, block, shared_memory, stream>>>(args...). Under emulation it runs on the
// host, and `name` names the kernel in the emulator's errors.
template <typename... Params, typename... Args>
inline void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                          size_t shared_memory, cudaStream_t stream, Args&&... args) {
#ifdef LOGITOPS_CUDA_EMULATION
  (void)stream;
  emulation::launch(name, grid, block, shared_memory, [&] { kernel(args...); });
#else
  (void)name;
  // clang-format does not know the launch syntax.
  // clang-format off
  kernel<<<grid, block, shared_memory, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

// ATen compiles CUDA code with the implicit __half / __nv_bfloat16 conversions disabled, so
// conversions are spelled out. Narrowing rounds to nearest even, like c10::BFloat16 / c10::Half.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t to_acc(scalar_t x) {
  if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else if constexpr (std::is_same_v<scalar_t, __half>) {
    return __half2float(x);
  } else {
    return static_cast<acc_t>(x);
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t from_acc(acc_t x) {
  if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else if constexpr (std::is_same_v<scalar_t, __half>) {
    return __float2half_rn(x);
  } else {
    return static_cast<scalar_t>(x);
  }
}

// Number of leading elements of p[0, n) to handle one by one before p reaches a 16-byte
// boundary; all n when p is not even aligned to its element size (then it never will be).
template <typename scalar_t>
__device__ __forceinline__ int64_t unaligned_head(const scalar_t* p, int64_t n) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  if (address % sizeof(scalar_t) != 0) return n;
  const int64_t head =
      int64_t((kVectorBytes - address % kVectorBytes) % kVectorBytes) / int64_t(sizeof(scalar_t));
  return head < n ? head : n;
}

// __shfl_xor_sync of any trivially copyable value, 32 bits at a time.
template <typename T>
__device__ __forceinline__ T shfl_xor(T value, int lane_mask) {
  static_assert(sizeof(T) % sizeof(unsigned) == 0, "shuffled types are whole 32-bit words");
  unsigned words[sizeof(T) / sizeof(unsigned)];
  memcpy(words, &value, sizeof(T));
#pragma unroll
  for (auto& word : words) word = __shfl_xor_sync(0xffffffffu, word, lane_mask);
  memcpy(&value, words, sizeof(T));
  return value;
}

// Combines `value` over the block in a fixed order (deterministic); the result is valid in
// thread 0. blockDim.x must be a multiple of 32 and at most kMaxBlockThreads. Every thread of the
// block must call it.
template <typename T, typename Combine>
__device__ T block_reduce(T value, T identity, Combine combine) {
  __shared__ T warp_values[kMaxBlockThreads / kWarpSize];
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = combine(value, shfl_xor(value, offset));
  }
  __syncthreads();  // warp 0 may still be reading warp_values of the previous call
  if (lane == 0) warp_values[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < int(blockDim.x / kWarpSize) ? warp_values[lane] : identity;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value = combine(value, shfl_xor(value, offset));
    }
  }
  return value;
}

// block_reduce, with the result broadcast to every thread. Every thread must call it. One barrier
// after the write suffices: the next write to `result` (a later call of the same instantiation)
// comes after the barriers inside that call's block_reduce, which every thread reaches only once
// it has read this value.
template <typename T, typename Combine>
__device__ __forceinline__ T block_all_reduce(T value, T identity, Combine combine) {
  __shared__ T result;
  value = block_reduce(value, identity, combine);
  if (threadIdx.x == 0) result = value;
  __syncthreads();
  return result;
}

}  // namespace cuda
}  // namespace logitops

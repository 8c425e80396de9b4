// Generic helpers shared by the CUDA kernels: element types, conversions, 16-byte vectors and a
// deterministic block reduction. Torch-free, like the kernels that include it.
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

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

// p viewed as 16-byte vectors. Every vector access of the kernels goes through it, so that the
// emulator can check the alignment of each access (a misaligned one is an error on the GPU);
// forming a pointer that is never dereferenced is fine, as on the GPU.
#ifdef LOGITOPS_CUDA_EMULATION
template <typename Vector>
struct CheckedVectors {
  Vector* base;
  Vector& operator[](int64_t i) const { return *check(base + i); }
  Vector& operator*() const { return *check(base); }
  static Vector* check(Vector* p) {
    if (reinterpret_cast<uintptr_t>(p) % alignof(Vector) != 0) {
      emulation::fail("misaligned " + std::to_string(sizeof(Vector)) + "-byte vector access");
    }
    return p;
  }
};

template <typename Vector, typename T>
CheckedVectors<Vector> vector_pointer(T* p) {
  return {reinterpret_cast<Vector*>(p)};
}
#else
template <typename Vector, typename T>
__device__ __forceinline__ Vector* vector_pointer(T* p) {
  return reinterpret_cast<Vector*>(p);
}
#endif

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

}  // namespace cuda
}  // namespace logitops

// What the launchers need from the CUDA runtime and ATen's CUDA layer (stream, device guard,
// launch check, device properties, dispatch key), in one place, so that the same launcher source
// builds for the GPU and for the CUDA emulator (csrc/emulation), which runs it on CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda_utils.cuh"

#ifdef LOGITOPS_CUDA_EMULATION

// The emulated kernels take CPU tensors, so their ops are the CPU kernels of this library.
#define LOGITOPS_CUDA_DISPATCH_KEY CPU
// Launches run synchronously and throw on failure (naming the kernel), so there is nothing left
// to check after one.
#define LOGITOPS_CHECK_LAUNCH() \
  do {                          \
  } while (false)

namespace logitops {
namespace cuda {

inline cudaStream_t current_stream() { return nullptr; }

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

inline int sm_count() { return emulation::kSmCount; }

inline int64_t l2_cache_bytes() { return emulation::kL2CacheBytes; }

template <typename Kernel>
int max_active_blocks(Kernel, int block_threads, size_t dynamic_shared_memory) {
  return emulation::max_active_blocks(block_threads, dynamic_shared_memory);
}

inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }

}  // namespace cuda
}  // namespace logitops

#else

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#define LOGITOPS_CUDA_DISPATCH_KEY CUDA
#define LOGITOPS_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace logitops {
namespace cuda {

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

using DeviceGuard = c10::cuda::CUDAGuard;

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline int64_t l2_cache_bytes() { return at::cuda::getCurrentDeviceProperties()->l2CacheSize; }

// Resident blocks per SM for this kernel and block size: a host-side query, no device sync.
template <typename Kernel>
int max_active_blocks(Kernel kernel, int block_threads, size_t dynamic_shared_memory) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, block_threads,
                                                               dynamic_shared_memory));
  return blocks;
}

inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }

}  // namespace cuda
}  // namespace logitops

#endif

namespace logitops {
namespace cuda {

// Grid of a row kernel that reads each row twice in a row (a pass for its statistics, then one
// that writes from them): few enough blocks that the rows in flight, one per resident block, fit
// in half the L2, so that the second read hits it; at least one block per SM; every row's block
// when residency alone keeps the rows in flight under that. The blocks loop over rows.
template <typename Kernel>
dim3 l2_resident_row_grid(Kernel kernel, int block_threads, int64_t num_rows, int64_t row_bytes) {
  const int64_t sms = sm_count();
  const int64_t resident = sms * std::max(1, max_active_blocks(kernel, block_threads, 0));
  const int64_t fitting = l2_cache_bytes() / 2 / std::max<int64_t>(row_bytes, 1);
  if (fitting >= resident) return row_grid(num_rows);
  return row_grid(std::min(num_rows, std::max(sms, fitting)));
}

}  // namespace cuda
}  // namespace logitops

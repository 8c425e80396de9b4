// What the launchers need from the CUDA runtime and ATen's CUDA layer (stream, device guard,
// launch check, device properties, dispatch key), in one place, so that the same launcher source
// builds for the GPU and for the CUDA emulator (csrc/emulation), which runs it on CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

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

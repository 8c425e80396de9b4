// CUDA emulation: compiles the CUDA kernels (csrc/cuda/*.cuh) and their launchers (*.cu) as host
// C++ and runs them on CPU memory, so that CI, which has no GPU, executes the real device code.
// The idea of Numba's CUDA simulator and of nvcc's old device emulation, kept small.
//
// Execution model (csrc/emulation/emulator.cpp):
// - One block at a time, so a `__shared__` variable (a function-local static here) is the block's.
// - The threads of a block are fibers on one OS thread, switched only at the synchronization
//   points of the CUDA programming model: __syncthreads and the warp intrinsics. That is a valid
//   schedule of a real GPU, and a deterministic one. __syncthreads is a real barrier: a block whose
//   threads cannot all reach the same barrier (some exited, others wait) is reported as a deadlock
//   naming the kernel, never a hang.
// - Warp intrinsics (__shfl*_sync, __ballot_sync, __match_any_sync) exchange values between the
//   lanes of a warp; every lane named in the mask must take part, and the caller must be in it.
// - Atomics go through std::atomic_ref. 16-byte vector accesses made through as_vectors()
//   (csrc/cuda/cuda_utils.cuh) are checked for alignment, and launches for the limits of an H100
//   (block size, whole warps, dynamic shared memory, grid size).
// - Under ThreadSanitizer, fibers are announced to it without implied synchronization, and the
//   barriers and warp exchanges publish happens-before edges: a read of shared memory that no
//   barrier orders after another thread's write is reported as a data race.
//
// - Memory traffic: while a log is open (start_traffic_log), each launch sums the bytes of the
//   global-memory accesses the kernels make through their load / store helpers (cuda_utils.cuh),
//   all accesses and distinct bytes, reads and writes apart. Per-row scalars (a row's target,
//   lse or upstream gradient) are read directly and not counted: they are O(rows).
//
// What it does not prove: speed, the memory model's finer points (weak ordering between blocks,
// caches), register and static shared-memory limits, or anything that depends on two blocks
// running at once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

// The toolkit's host_defines.h turns these into attributes a host compiler ignores; here they
// mean host code (and __shared__ one variable for the block running now).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)

namespace logitops {
namespace emulation {

// H100 SXM, what the launchers may ask for.
constexpr int kSmCount = 132;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxBlocksPerSm = 32;
constexpr size_t kSharedMemoryPerSm = 228 * 1024;
constexpr size_t kSharedMemoryPerBlock = 48 * 1024;
constexpr int64_t kL2CacheBytes = 50 * 1024 * 1024;
constexpr unsigned kWarpLanes = 32;

// By value: under ThreadSanitizer, the emulator's own bookkeeping is invisible to it.
uint3 thread_index();
uint3 block_index();
dim3 block_dim();
dim3 grid_dim();

// The block barrier (__syncthreads).
void sync_block();

// The calling lane's index in its warp.
unsigned lane_id();

// One warp exchange: every lane of `mask` deposits 8 bytes; each gets a view of all 32 lanes'
// deposits (lanes outside the mask read as 0) and of the lanes that took part, valid until the
// lane's next warp operation. `what` names the intrinsic for errors.
struct WarpView {
  const uint64_t* deposits;
  unsigned arrived;
};
WarpView warp_exchange(unsigned mask, uint64_t deposit, const char* what);

// The lanes of the calling warp that have not exited (what __activemask can promise here).
unsigned active_lanes();

// Throws an emulation error naming the running kernel.
[[noreturn]] void fail(const std::string& message);

// Runs `body` as a kernel of `grid` x `block` threads; errors name `kernel_name`.
void launch(const char* kernel_name, dim3 grid, dim3 block, size_t dynamic_shared_memory,
            const std::function<void()>& body);

// The global-memory traffic of one launch (see the header comment): bytes accessed, and distinct
// bytes (what a cache that kept the whole launch's working set would fetch or write back).
struct LaunchTraffic {
  std::string kernel;
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t distinct_read = 0, distinct_written = 0;
};

// Opens the traffic log (clearing it); stop_traffic_log closes it and returns one entry per launch
// since. Off by default: recording keeps every access until the launch ends.
void start_traffic_log();
std::vector<LaunchTraffic> stop_traffic_log();
// Called by the kernels' load / store helpers for each global access.
void record_access(const void* address, size_t bytes, bool write);

// Blocks per SM an H100 would keep resident for this block size (threads and block limits).
int max_active_blocks(int block_threads, size_t dynamic_shared_memory);

template <typename T>
uint64_t to_word(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t word = 0;
  std::memcpy(&word, &value, sizeof(T));
  return word;
}

template <typename T>
T from_word(uint64_t word) {
  T value;
  std::memcpy(&value, &word, sizeof(T));
  return value;
}

}  // namespace emulation
}  // namespace logitops

#define threadIdx (::logitops::emulation::thread_index())
#define blockIdx (::logitops::emulation::block_index())
#define blockDim (::logitops::emulation::block_dim())
#define gridDim (::logitops::emulation::grid_dim())

inline void __syncthreads() { ::logitops::emulation::sync_block(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  namespace emu = ::logitops::emulation;
  const uint64_t* lanes = emu::warp_exchange(mask, emu::to_word(value), "__shfl_sync").deposits;
  const unsigned lane = emu::lane_id();
  const unsigned src = (lane & ~unsigned(width - 1)) + (unsigned(src_lane) % unsigned(width));
  if (!(mask >> src & 1u)) emu::fail("__shfl_sync reads a lane outside its mask");
  return emu::from_word<T>(lanes[src]);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  namespace emu = ::logitops::emulation;
  const uint64_t* lanes = emu::warp_exchange(mask, emu::to_word(value), "__shfl_up_sync").deposits;
  const unsigned lane = emu::lane_id();
  const unsigned in_segment = lane % unsigned(width);
  const unsigned src = in_segment >= delta ? lane - delta : lane;
  if (!(mask >> src & 1u)) emu::fail("__shfl_up_sync reads a lane outside its mask");
  return emu::from_word<T>(lanes[src]);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  namespace emu = ::logitops::emulation;
  const uint64_t* lanes = emu::warp_exchange(mask, emu::to_word(value), "__shfl_xor_sync").deposits;
  const unsigned lane = emu::lane_id();
  unsigned src = lane ^ unsigned(lane_mask);
  if (src / unsigned(width) != lane / unsigned(width)) src = lane;
  if (!(mask >> src & 1u)) emu::fail("__shfl_xor_sync reads a lane outside its mask");
  return emu::from_word<T>(lanes[src]);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  namespace emu = ::logitops::emulation;
  const uint64_t* lanes = emu::warp_exchange(mask, predicate != 0, "__ballot_sync").deposits;
  unsigned bits = 0;
  for (unsigned k = 0; k < emu::kWarpLanes; ++k) {
    if ((mask >> k & 1u) && lanes[k] != 0) bits |= 1u << k;
  }
  return bits;
}

template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  namespace emu = ::logitops::emulation;
  const uint64_t word = emu::to_word(value);
  const uint64_t* lanes = emu::warp_exchange(mask, word, "__match_any_sync").deposits;
  unsigned bits = 0;
  for (unsigned k = 0; k < emu::kWarpLanes; ++k) {
    if ((mask >> k & 1u) && lanes[k] == word) bits |= 1u << k;
  }
  return bits;
}

inline unsigned __activemask() { return ::logitops::emulation::active_lanes(); }

inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline float __expf(float x) { return std::exp(x); }
inline unsigned __float_as_uint(float x) {
  return ::logitops::emulation::from_word<unsigned>(::logitops::emulation::to_word(x));
}
inline float __uint_as_float(unsigned x) {
  return ::logitops::emulation::from_word<float>(::logitops::emulation::to_word(x));
}
inline long long __double_as_longlong(double x) {
  return ::logitops::emulation::from_word<long long>(::logitops::emulation::to_word(x));
}
inline double __longlong_as_double(long long x) {
  return ::logitops::emulation::from_word<double>(::logitops::emulation::to_word(x));
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

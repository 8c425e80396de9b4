#include "allocator.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace logitops {

namespace {

// One freed huge-page buffer kept for the next allocation of the same size. A training loop
// allocates a same-sized gradient every step; reusing it skips the kernel zeroing fresh pages,
// which costs as much as the kernel itself. LOGITOPS_CPU_BUFFER_CACHE=0 turns it off.
class HugePageBufferCache {
 public:
  static HugePageBufferCache& instance() {
    static HugePageBufferCache cache;
    return cache;
  }

  void* acquire(size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ != nullptr && cached_bytes_ == nbytes) {
        void* data = cached_;
        cached_ = nullptr;
        return data;
      }
    }
    void* data = std::aligned_alloc(kHugePage, nbytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (data != nullptr) madvise(data, nbytes, MADV_HUGEPAGE);  // advisory: failure costs speed
#endif
    return data;
  }

  void release(void* data, size_t nbytes) {
    void* evicted = data;
    if (enabled_) {
      std::lock_guard<std::mutex> lock(mutex_);
      std::swap(evicted, cached_);
      cached_bytes_ = nbytes;
    }
    std::free(evicted);
  }

  static constexpr size_t kHugePage = size_t(2) << 20;

 private:
  HugePageBufferCache() {
    const char* env = std::getenv("LOGITOPS_CPU_BUFFER_CACHE");
    enabled_ = env == nullptr || std::string(env) != "0";
  }
  ~HugePageBufferCache() = default;  // leaked at exit on purpose: tensors may outlive statics

  std::mutex mutex_;
  void* cached_ = nullptr;
  size_t cached_bytes_ = 0;
  bool enabled_ = true;
};

}  // namespace

at::Tensor empty_cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr size_t kHugePage = HugePageBufferCache::kHugePage;
  size_t nbytes = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  for (const auto s : sizes) nbytes *= static_cast<size_t>(s);
  if (nbytes < 4 * kHugePage) return at::empty(sizes, options);
  const size_t padded = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  void* data = HugePageBufferCache::instance().acquire(padded);
  if (data == nullptr) return at::empty(sizes, options);
  return at::from_blob(
      data, sizes, [padded](void* p) { HugePageBufferCache::instance().release(p, padded); },
      options.device(at::kCPU));
}

}  // namespace logitops
